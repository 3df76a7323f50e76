use streams_core::prelude::*;

#[record]
pub struct Hit {
    pub hits: i64,
    pub user: String,
}

#[agent]
async fn nowhere(hits: Stream<(), Hit>) {
    let _ = hits;
}

fn main() {
    // Registered: the macro's errors are the only ones (no follow-on error here).
    let _ = App::new("app").agent(nowhere);
}

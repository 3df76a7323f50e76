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

fn main() {}

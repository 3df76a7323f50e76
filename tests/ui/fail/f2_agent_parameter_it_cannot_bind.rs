use streams_core::prelude::*;

#[record]
pub struct Hit {
    pub hits: i64,
    pub user: String,
}

const HITS: Topic<(), Hit> = Topic::new("hits");

#[agent(topic = HITS)]
async fn count(hits: Stream<(), Hit>, limit: usize) {
    let _ = (hits, limit);
}

#[agent(topic = HITS)]
async fn nothing() {}

fn main() {
    // Registered: the macro's errors are the only ones (no follow-on error here).
    let _ = App::new("app").agent(count).agent(nothing);
}

use streams_core::prelude::*;

#[record]
pub struct Hit {
    pub hits: i64,
    pub user: String,
}

const HITS: Topic<(), Hit> = Topic::new("hits");

#[agent(topcs = HITS)]
async fn misspelt(hits: Stream<(), Hit>) {
    let _ = hits;
}

#[agent(topic = HITS, topic = HITS)]
async fn twice(hits: Stream<(), Hit>) {
    let _ = hits;
}

fn main() {
    // Registered: the macro's errors are the only ones (no follow-on error here).
    let _ = App::new("app").agent(misspelt).agent(twice);
}

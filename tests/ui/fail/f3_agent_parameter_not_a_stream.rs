use streams_core::prelude::*;

#[record]
pub struct Hit {
    pub hits: i64,
    pub user: String,
}

const HITS: Topic<(), Hit> = Topic::new("hits");

#[agent(topic = HITS)]
async fn count(hits: Vec<Hit>) {
    let _ = hits;
}

fn main() {
    let _ = App::new("app").agent(count);
}

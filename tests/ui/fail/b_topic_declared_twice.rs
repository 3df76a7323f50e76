use streams_core::prelude::*;

#[record]
pub struct Hit {
    pub hits: i64,
    pub user: String,
}

#[record]
pub struct Click {
    pub x: i64,
}

#[topic]
const HITS: Topic<(), Hit> = Topic::new("hits");

#[topic]
const CLICKS: Topic<(), Click> = Topic::new("hits");

fn main() {
    let _ = (HITS, CLICKS);
}

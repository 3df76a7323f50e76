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

const HITS: Topic<(), Hit> = Topic::new("hits");

#[agent(topic = HITS)]
async fn clicks(mut clicks: Stream<(), Click>) {
    while let Some(click) = clicks.next().await {
        println!("{}", click.x);
    }
}

fn main() {
    let _ = App::new("app").agent(clicks);
}

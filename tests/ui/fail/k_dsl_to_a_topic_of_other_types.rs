use streams_core::prelude::*;

#[record]
pub struct Hit {
    pub hits: i64,
    pub user: String,
}

const HITS: Topic<(), Hit> = Topic::new("hits");
const TOTALS: Topic<String, i64> = Topic::new("totals");

fn main() {
    let _ = App::new("app").pipeline("p", |builder| {
        // The stream's keys are `()` and its values `Hit`: not the topic's.
        builder.stream(HITS).filter(|_, hit| hit.hits > 20).to(TOTALS);
    });
}

use std::time::Duration;

use streams_core::prelude::*;

const CLICKS: Topic<String, i64> = Topic::new("clicks");
const IMPRESSIONS: Topic<u64, i64> = Topic::new("impressions");
const OUT: Topic<String, i64> = Topic::new("out");

fn main() {
    let _ = App::new("app").pipeline("p", |builder| {
        let impressions = builder.stream(IMPRESSIONS);
        builder
            .stream(CLICKS)
            .join_windowed(
                impressions,
                "clicks-impressions",
                JoinWindows::of_time_difference_without_grace(Duration::from_secs(30)),
                |_, click, impression| click - impression,
            )
            .to(OUT);
    });
}

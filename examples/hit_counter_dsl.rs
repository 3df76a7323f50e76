//! The seed's Faust "hit counter" as one DSL pipeline: the hits of `hit_count` with more
//! than 20 hits, re-keyed by user through a repartition topic and counted into the table
//! `major-count` (changelog `hit_counter_dsl-major-count-changelog`).
//!
//! ```text
//! cargo run --example hit_counter_dsl -- broker --port 9092 --partitions 4 &
//! cargo run --example hit_producer -- --broker localhost:9092 --count 10000
//! cargo run --example hit_counter_dsl -- worker -l info --broker localhost:9092
//! cargo run --example hit_counter_dsl -- table major-count
//! ```
use streams_core::prelude::*;

/// A page-hit report, as the seed's producer writes it.
#[record]
#[derive(Debug, Clone, PartialEq)]
pub struct HitCount {
    pub hits: i64,
    pub timestamp: f64,
    #[serde(rename = "userId")]
    pub user_id: String,
}

/// The seed's input topic; its records carry no key.
pub const HIT_COUNT: Topic<(), HitCount> = Topic::new("hit_count");
/// Major hits per user.
pub const MAJOR_COUNT: Table<String, i64> = Table::new("major-count");

/// The app: id `hit_counter_dsl`, one pipeline.
pub fn app() -> App {
    App::new("hit_counter_dsl").pipeline("major-hits", |builder| {
        builder
            .stream(HIT_COUNT)
            .filter(|_, hit| hit.hits > 20)
            .group_by("by-user", |_, hit| hit.user_id.clone())
            .count(MAJOR_COUNT);
    })
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    app().main()
}

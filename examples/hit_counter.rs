//! The seed's Faust "hit counter", in Rust.
//!
//! ```text
//! cargo run --example hit_counter -- broker --port 9092 &          # or a real Kafka
//! cargo run --example hit_producer -- --broker localhost:9092 --count 10000
//! cargo run --example hit_counter -- worker -l info --broker localhost:9092
//! cargo run --example hit_counter -- table major-count
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
#[topic]
pub const HIT_COUNT: Topic<(), HitCount> = Topic::new("hit_count");
/// Internal topic of the major hits, keyed by user so each user's hits meet in one partition.
#[topic]
pub const COUNT_TOPIC: Topic<String, HitCount> = Topic::new("count_topic").internal();
/// Major hits per user (Faust: `app.Table("major-count", key_type=str, value_type=int, default=int)`).
pub const MAJOR_COUNT: Table<String, i64> = Table::new("major-count");

/// Sends the records with more than 20 hits to `count_topic`, keyed by user.
#[agent(topic = HIT_COUNT, sends = [COUNT_TOPIC])]
pub async fn find_major_hits(mut hits: Stream<(), HitCount>) -> Result<()> {
    while let Some(hit) = hits.next().await {
        if hit.hits > 20 {
            COUNT_TOPIC.send(&hit.user_id, &hit).await?;
        }
    }
    Ok(())
}

/// Counts major hits per user.
#[agent(topic = COUNT_TOPIC, tables = [MAJOR_COUNT])]
pub async fn count_hits(mut hits: Stream<String, HitCount>) -> Result<()> {
    while let Some(hit) = hits.next().await {
        MAJOR_COUNT.update(&hit.user_id, |count| *count += 1).await?;
    }
    Ok(())
}

/// The app: id `hit_counter`, both agents.
pub fn app() -> App {
    App::new("hit_counter").agent(find_major_hits).agent(count_hits)
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    app().main()
}

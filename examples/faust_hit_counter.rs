//! The seed's hit counter, declared Faust-compatible: it takes over from the seed's Faust app
//! in place (same app id and consumer group, same topics, the table restored from the
//! changelog Faust wrote) and hands back to it the same way.
//!
//! Contract: app id `hit_counter`; input `hit_count` (the seed producer's JSON, no key);
//! `count_topic` keyed by user id, values in Faust's record format
//! (`{"hits": .., "timestamp": .., "userId": .., "__faust": {"ns": "hit_counter.hitCount"}}`);
//! table `major-count` on `hit_counter-major-count-changelog` in Faust's encoding (keys and
//! values JSON: `"user-1"` → `3`).
//!
//! ```text
//! # stop every Faust worker of hit_counter, then:
//! cargo run --example faust_hit_counter -- worker -l info --broker localhost:9092
//! cargo run --example faust_hit_counter -- table major-count
//! ```
use streams_core::prelude::*;

/// The seed's `hitCount` record; Faust knows it as `hit_counter.hitCount` (module, class).
#[record(faust = "hit_counter.hitCount")]
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
/// The major hits, keyed by user, in Faust's record format (a Faust worker reads them too).
#[topic]
pub const COUNT_TOPIC: Topic<String, HitCount> = Topic::new("count_topic").internal().faust();
/// Major hits per user, in Faust's changelog encoding
/// (Faust: `app.Table("major-count", key_type=str, value_type=int, default=int)`).
pub const MAJOR_COUNT: Table<String, i64> = Table::new("major-count").faust();

/// Sends the records with more than 20 hits to `count_topic`, keyed by user.
#[agent(topic = HIT_COUNT, sends = [COUNT_TOPIC])]
pub async fn count_hits(mut hits: Stream<(), HitCount>) -> Result<()> {
    while let Some(hit) = hits.next().await {
        if hit.hits > 20 {
            COUNT_TOPIC.send(&hit.user_id, &hit).await?;
        }
    }
    Ok(())
}

/// Counts major hits per user.
#[agent(topic = COUNT_TOPIC, tables = [MAJOR_COUNT])]
pub async fn increment_count(mut hits: Stream<String, HitCount>) -> Result<()> {
    while let Some(hit) = hits.next().await {
        MAJOR_COUNT.update(&hit.user_id, |count| *count += 1).await?;
    }
    Ok(())
}

/// The app: id `hit_counter` (Faust's app id is its consumer group), the seed's two agents
/// under the names the seed's Faust app gives them.
pub fn app() -> App {
    App::new("hit_counter").agent(count_hits).agent(increment_count)
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    app().main()
}

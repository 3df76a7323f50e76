//! The seed's hit counter on Avro records in the Schema Registry's wire format: the same two
//! agents, reading `{hits: long, timestamp: double, userId: string}` from `hit_count_avro`
//! (as Confluent's Avro serializers write it, e.g. Python's `AvroSerializer`) and counting
//! the major hits per user into `major-count`.
//!
//! ```text
//! cargo run -p streams-tests --bin test-registry -- 8081 &     # or a real Schema Registry
//! cargo run --example avro_hits -- broker --port 9092 &         # or a real Kafka
//! cargo run --example avro_hits -- worker -l info --broker localhost:9092 \
//!     --schema-registry-url http://localhost:8081
//! cargo run --example avro_hits -- table major-count
//! ```
use streams_core::prelude::*;

/// A page-hit report. `#[record(avro)]` derives its Avro schema (a record `HitCount` with
/// fields `hits`, `timestamp` and `userId`, serde's names), which is registered under
/// `{topic}-value` when a record is sent.
#[record(avro)]
#[derive(Debug, Clone, PartialEq)]
pub struct HitCount {
    pub hits: i64,
    pub timestamp: f64,
    #[serde(rename = "userId")]
    pub user_id: String,
}

/// The input topic: Avro values, no key.
#[topic]
pub const HIT_COUNT_AVRO: Topic<(), HitCount> = Topic::new("hit_count_avro").values(ValueCodec::avro());
/// Major hits keyed by user, in Avro too.
#[topic]
pub const COUNT_TOPIC_AVRO: Topic<String, HitCount> =
    Topic::new("count_topic_avro").internal().values(ValueCodec::avro());
/// Major hits per user.
pub const MAJOR_COUNT: Table<String, i64> = Table::new("major-count");

/// Sends the records with more than 20 hits on, keyed by user.
#[agent(topic = HIT_COUNT_AVRO, sends = [COUNT_TOPIC_AVRO])]
pub async fn find_major_hits(mut hits: Stream<(), HitCount>) -> Result<()> {
    while let Some(hit) = hits.next().await {
        if hit.hits > 20 {
            COUNT_TOPIC_AVRO.send(&hit.user_id, &hit).await?;
        }
    }
    Ok(())
}

/// Counts major hits per user.
#[agent(topic = COUNT_TOPIC_AVRO, tables = [MAJOR_COUNT])]
pub async fn count_hits(mut hits: Stream<String, HitCount>) -> Result<()> {
    while let Some(hit) = hits.next().await {
        MAJOR_COUNT.update(&hit.user_id, |count| *count += 1).await?;
    }
    Ok(())
}

/// The app: id `avro_hits`, both agents.
pub fn app() -> App {
    App::new("avro_hits").agent(find_major_hits).agent(count_hits)
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    app().main()
}

//! The seed's hit counter in every supported form of the macros.
use streams_core::prelude::*;

#[record]
#[derive(Debug, Clone)]
pub struct HitCount {
    pub hits: i64,
    pub timestamp: f64,
    #[serde(rename = "userId")]
    pub user_id: String,
}

#[topic]
pub const HIT_COUNT: Topic<(), HitCount> = Topic::new("hit_count");
#[topic]
pub const COUNT_TOPIC: Topic<String, HitCount> = Topic::new("count_topic").partitions(4).internal();
pub const MAJOR_COUNT: Table<String, i64> = Table::new("major-count");
pub const LAST_SEEN: Table<String, f64> = Table::new("last-seen").default_value(|| -1.0);

/// Filters, with a `Result` return and one topic in `sends`.
#[agent(topic = HIT_COUNT, sends = [COUNT_TOPIC])]
pub async fn find_major_hits(mut hits: Stream<(), HitCount>) -> Result<()> {
    while let Some(hit) = hits.next().await {
        if hit.hits > 20 {
            COUNT_TOPIC.send(&hit.user_id, &hit).await?;
        }
    }
    Ok(())
}

/// Counts, with two tables and events (key and origin).
#[agent(topic = COUNT_TOPIC, tables = [MAJOR_COUNT, LAST_SEEN])]
async fn count_hits(mut hits: Stream<String, HitCount>) -> Result<(), String> {
    while let Some(event) = hits.next_event().await {
        MAJOR_COUNT.update(&event.key, |n| *n += 1).await.map_err(|e| e.to_string())?;
        LAST_SEEN.set(&event.key, event.value.timestamp).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A topic named by a string; the stream gives its types and shares the agent's name. Returns `()`.
#[agent(topic = "audit")]
async fn audit(mut audit: Stream<Option<String>, serde_json::Value>) {
    while let Some(record) = audit.next().await {
        println!("{record}");
    }
}

fn main() {
    let app = App::new("hit_counter").agent(find_major_hits).agent(count_hits).agent(audit);
    let topology = app.topology();
    assert!(topology.text().contains("agent count_hits"));
    assert_eq!(app.agents().len(), 3);
}

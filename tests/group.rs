//! Two workers of the seed app in one group on the embedded broker: the waits that the
//! group tests (standby copies, static membership) share.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use streams_core::{EmbeddedBroker, Metrics};

use crate::hit_counter::app;
use crate::{create_app_topics, wait_caught_up, wait_until};

/// The seed app's group.
pub const GROUP: &str = "hit_counter";
/// The seed app's input and re-keyed topics.
pub const TOPICS: [&str; 2] = ["hit_count", "count_topic"];

/// The embedded broker with the seed app's topics, its input empty.
///
/// Input is produced once both workers hold their partitions. The mock cluster refuses
/// offset commits while its group is joining (Kafka accepts them from the current
/// generation until the members have rejoined), so a worker that processed input before
/// the group settled cannot commit it in its revoke and, at-least-once, it is counted
/// again by the next owner: correct, but not the exact counts these tests compare.
pub fn broker() -> EmbeddedBroker {
    streams_core::init_logging(&std::env::var("STREAMS_TEST_LOG").unwrap_or_else(|_| "error".into()));
    let broker = EmbeddedBroker::start().expect("broker");
    broker.create_topic("hit_count", 4).expect("topic");
    create_app_topics(&broker, &app());
    broker
}

/// Waits up to two minutes for `condition`, off the async executor's threads.
pub async fn blocking(what: &'static str, condition: impl Fn() -> bool + Send + 'static) {
    tokio::task::spawn_blocking(move || wait_until(what, Duration::from_secs(120), condition))
        .await
        .expect("wait");
}

/// Waits until the group has committed everything on its topics.
pub async fn caught_up(broker: &EmbeddedBroker) {
    let bootstrap = broker.bootstrap_servers().to_string();
    tokio::task::spawn_blocking(move || wait_caught_up(&bootstrap, GROUP, &TOPICS, Duration::from_secs(180)))
        .await
        .expect("wait");
}

/// Both workers hold partitions, all 12 between them.
pub async fn both_holding(a: &Arc<Metrics>, b: &Arc<Metrics>) {
    let (a, b) = (Arc::clone(a), Arc::clone(b));
    blocking("both workers holding partitions", move || {
        let (held_a, held_b) = (a.assigned.load(Ordering::Relaxed), b.assigned.load(Ordering::Relaxed));
        held_a > 0 && held_b > 0 && held_a + held_b == 12
    })
    .await;
}

//! Stream time reaches a partition's next owner through the committed offsets' metadata and
//! the changelog, on the embedded broker (`windows.rs` shows the same through the test
//! driver): a window closed and sent by one worker is not sent again by the next. The
//! metadata carries the task's stream time and the aggregation's own, which records filtered
//! out before it do not move (as in Kafka Streams).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use streams_core::prelude::*;
use streams_core::{EmbeddedBroker, Worker};
use streams_tests::{create_app_topics, produce_at, read_all, wait_caught_up, worker_options};

const EVENTS: Topic<String, i64> = Topic::new("st-events").partitions(1);
const FINALS: Topic<Windowed<String>, i64> = Topic::new("st-finals").partitions(1);
const PER_WINDOW: WindowedTable<String, i64> = WindowedTable::new("st-per-window");

fn app() -> App {
    App::new("st").pipeline("count", |builder| {
        builder
            .stream(EVENTS)
            .filter(|_, value| *value != 1)
            .group_by_key()
            // Kept a minute: no expiry writes a changelog record either.
            .windowed_by(TimeWindows::of(Duration::from_secs(10)).retention(Duration::from_secs(60)))
            .emit_final()
            .count(PER_WINDOW)
            .to_stream()
            .to(FINALS);
    })
}

fn event(value: i64, time: i64) -> (String, Option<Vec<u8>>, i64) {
    ("a".to_string(), Some(value.to_string().into_bytes()), time)
}

/// The metadata of the group's committed offset of `st-events[0]`.
fn committed_metadata(bootstrap: &str) -> String {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "st")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition("st-events", 0);
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed");
    committed.elements()[0].metadata().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_sent_by_one_worker_is_not_sent_again_by_the_next() {
    let broker = EmbeddedBroker::start().expect("broker");
    create_app_topics(&broker, &app());
    let bootstrap = broker.bootstrap_servers().to_string();
    produce_at(&bootstrap, "st-events", &[event(0, 1_000)]);
    let first = tempfile::tempdir().expect("dir");
    let worker = Worker::start(app(), worker_options(first.path(), &broker))
        .await
        .expect("worker");
    let caught_up = |bootstrap: String| async move {
        tokio::task::spawn_blocking(move || wait_caught_up(&bootstrap, "st", &["st-events"], Duration::from_secs(60)))
            .await
            .expect("wait")
    };
    caught_up(bootstrap.clone()).await;
    // The aggregation's stream time moves to 15 s: [0, 10 s) closes and is sent. The record
    // at 30 s is filtered out: it moves the task's stream time only.
    produce_at(&bootstrap, "st-events", &[event(0, 15_000), event(1, 30_000)]);
    caught_up(bootstrap.clone()).await;
    worker.stop().await.expect("stops");
    let metadata = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || committed_metadata(&bootstrap)
    })
    .await
    .expect("metadata");
    assert_eq!(metadata, "streams.stream.time=30000;streams.clock.st-per-window=15000");

    // Another worker, on an empty data directory: its stores come from the changelog. The
    // record at 2 s is late; the one at 12 s is not (the window [10 s, 20 s) is open at the
    // aggregation's 15 s); 40 s closes it.
    produce_at(
        &bootstrap,
        "st-events",
        &[event(0, 2_000), event(0, 12_000), event(0, 40_000)],
    );
    let second = tempfile::tempdir().expect("dir");
    let worker = Worker::start(app(), worker_options(second.path(), &broker))
        .await
        .expect("worker");
    caught_up(bootstrap.clone()).await;
    let metrics = worker.stop().await.expect("stops");
    let finals: Vec<(Vec<u8>, Vec<u8>)> = read_all(&bootstrap, "st-finals")
        .into_iter()
        .map(|r| (r.key.unwrap_or_default(), r.value.unwrap_or_default()))
        .collect();
    let window = |start: i64, end: i64| {
        let mut key = b"a".to_vec();
        key.extend_from_slice(&start.to_be_bytes());
        key.extend_from_slice(&end.to_be_bytes());
        key
    };
    assert_eq!(
        finals,
        vec![
            (window(0, 10_000), b"1".to_vec()),
            (window(10_000, 20_000), b"2".to_vec())
        ],
        "[0, 10 s) sent once, with 1; [10 s, 20 s) with 15 s and 12 s"
    );
    assert_eq!(metrics.late.load(std::sync::atomic::Ordering::Relaxed), 1);
}

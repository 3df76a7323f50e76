//! The seed's hit counter end to end against the embedded broker: exact counts, clean
//! restarts that restore nothing, restores from the changelog onto an empty data dir,
//! malformed input to the dead-letter topic, and records from a non-Rust client.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use streams_core::{EmbeddedBroker, Worker};
use streams_examples::seed;
use streams_tests::hit_counter::{app, MAJOR_COUNT};
use streams_tests::{produce, read_all, record_count, unkeyed, wait_caught_up, worker_options};

const GROUP: &str = "hit_counter";
const TOPICS: [&str; 2] = ["hit_count", "count_topic"];
const DLQ: &str = "hit_counter-find_major_hits-dlq";

fn counts(dir: &Path) -> BTreeMap<String, i64> {
    MAJOR_COUNT.read_local(dir, "hit_counter").expect("read table")
}

fn broker_with_input() -> EmbeddedBroker {
    let broker = EmbeddedBroker::start().expect("embedded broker");
    broker.create_topic("hit_count", 4).expect("create hit_count");
    broker
}

/// Runs a worker until the group has committed everything, stops it, returns (restored, records).
async fn run_until_caught_up(broker: &EmbeddedBroker, dir: &Path) -> (u64, u64) {
    let options = worker_options(dir, broker);
    let worker = Worker::start(app(), options).await.expect("worker starts");
    let metrics = worker.metrics();
    // All 12 partitions (hit_count: 4, count_topic: 8) restored and running.
    wait_for(
        || metrics.assigned.load(Ordering::Relaxed) == 12,
        "all partitions assigned",
    )
    .await;
    let bootstrap = broker.bootstrap_servers().to_string();
    tokio::task::spawn_blocking(move || wait_caught_up(&bootstrap, GROUP, &TOPICS, Duration::from_secs(120)))
        .await
        .expect("wait");
    let metrics = worker.stop().await.expect("worker stops cleanly");
    (
        metrics.restored.load(Ordering::Relaxed),
        metrics.records.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_and_survive_restarts() {
    streams_core::init_logging(&std::env::var("STREAMS_TEST_LOG").unwrap_or_else(|_| "error".into()));
    let broker = broker_with_input();
    let records = seed::hits(42, 10_000);
    let expected = seed::expected_counts(&records);
    produce(broker.bootstrap_servers(), "hit_count", &unkeyed(&records));

    let dir = tempfile::tempdir().expect("tempdir");
    let (_, processed) = run_until_caught_up(&broker, dir.path()).await;
    assert!(processed >= 10_000, "processed {processed}");
    assert_eq!(counts(dir.path()), expected, "first run");
    assert_eq!(
        partitions_of(&broker, "hit_counter-major-count-changelog"),
        partitions_of(&broker, "count_topic")
    );

    // A clean restart on the same data dir restores nothing and changes nothing.
    let (restored, _) = run_until_caught_up(&broker, dir.path()).await;
    assert_eq!(restored, 0, "a clean restart restores nothing");
    assert_eq!(counts(dir.path()), expected, "after a clean restart");

    // An empty data dir is rebuilt from the changelog, exactly.
    let empty = tempfile::tempdir().expect("tempdir");
    let (restored, _) = run_until_caught_up(&broker, empty.path()).await;
    assert!(restored > 0, "the changelog was restored");
    assert_eq!(counts(empty.path()), expected, "restored from the changelog");
}

async fn wait_for(condition: impl Fn() -> bool, what: &str) {
    for _ in 0..600 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting: {what}");
}

fn partitions_of(broker: &EmbeddedBroker, topic: &str) -> i32 {
    streams_tests::partitions(broker.bootstrap_servers(), topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_go_to_the_dead_letter_topic() {
    streams_core::init_logging("error");
    let broker = broker_with_input();
    let records = seed::hits(7, 10_000);
    let expected = seed::expected_counts(&records);
    let bad: [&[u8]; 4] = [
        b"{\"hits\": 30, \"timestamp\": ",                                   // malformed JSON
        b"{\"hits\": \"many\", \"timestamp\": 1.0, \"userId\": \"user-1\"}", // wrong field type
        b"{\"hits\": 30, \"timestamp\": 1.0}",                               // missing field
        b"",                                                                 // empty value
    ];
    let mut input = Vec::new();
    for (i, record) in records.iter().enumerate() {
        input.push((None, record.to_string().into_bytes()));
        if i % 50 == 25 {
            input.push((Some(format!("bad-{i}")), bad[(i / 50) % bad.len()].to_vec()));
        }
    }
    assert_eq!(input.len(), 10_200);
    produce(broker.bootstrap_servers(), "hit_count", &input);

    let dir = tempfile::tempdir().expect("tempdir");
    let options = worker_options(dir.path(), &broker);
    let worker = Worker::start(app(), options).await.expect("worker starts");
    let bootstrap = broker.bootstrap_servers().to_string();
    tokio::task::spawn_blocking(move || wait_caught_up(&bootstrap, GROUP, &TOPICS, Duration::from_secs(120)))
        .await
        .expect("wait");
    let metrics = worker.metrics();
    assert!(metrics.fatal().is_none(), "worker still running: {:?}", metrics.fatal());
    assert_eq!(metrics.dead_lettered.load(Ordering::Relaxed), 200);
    assert_eq!(
        record_count(broker.bootstrap_servers(), DLQ),
        200,
        "exactly 200 records on the DLQ"
    );

    let dead = read_all(broker.bootstrap_servers(), DLQ);
    assert_eq!(dead.len(), 200);
    for record in &dead {
        let key = String::from_utf8(record.key.clone().expect("key kept")).expect("utf8 key");
        assert!(key.starts_with("bad-"), "{key}");
        let value = record.value.clone().unwrap_or_default();
        assert!(bad.contains(&value.as_slice()), "value copied unchanged: {value:?}");
        assert_eq!(record.headers["streams.dlq.topic"], "hit_count");
        assert!(record.headers["streams.dlq.offset"].parse::<i64>().is_ok());
        assert!(!record.headers["streams.dlq.error"].is_empty());
    }
    worker.stop().await.expect("worker stops cleanly");
    assert_eq!(counts(dir.path()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_kcat_are_counted() {
    let broker = broker_with_input();
    let records = seed::hits(3, 500);
    let expected = seed::expected_counts(&records);
    let lines: String = records.iter().map(|r| format!("{r}\n")).collect();
    let mut kcat = std::process::Command::new("kcat")
        .args(["-P", "-b", broker.bootstrap_servers(), "-t", "hit_count"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kcat is installed (make test installs it: apt-get install kcat)");
    {
        use std::io::Write;
        let mut stdin = kcat.stdin.take().expect("stdin");
        stdin.write_all(lines.as_bytes()).expect("write to kcat");
    }
    assert!(kcat.wait().expect("kcat").success(), "kcat failed");
    assert_eq!(record_count(broker.bootstrap_servers(), "hit_count"), 500);

    let dir = tempfile::tempdir().expect("tempdir");
    run_until_caught_up(&broker, dir.path()).await;
    assert_eq!(counts(dir.path()), expected);
}

//! Exactly-once processing. Through the test driver (whose topics model transactions: records
//! of an aborted transaction are never read, as by a `read_committed` consumer) and on the
//! embedded broker (librdkafka's mock cluster runs the transactional protocol but shows
//! aborted records to every reader, so there the flow is checked: one transaction per round,
//! offsets only through transactions, aborts leave the stores at their committed state,
//! fencing). The end-to-end proof against a real Kafka is `real_kafka_*`, run when
//! `STREAMS_TEST_KAFKA=host:port` is set.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use streams_core::app::ProcessingGuarantee;
use streams_core::broker::{RDKafkaApiKey, RDKafkaRespErr};
use streams_core::prelude::*;
use streams_core::testing::TestDriver;
use streams_core::{EmbeddedBroker, Worker, WorkerOptions};
use streams_examples::seed;
use streams_tests::hit_counter::{self, HitCount, COUNT_TOPIC, HIT_COUNT, MAJOR_COUNT};
use streams_tests::{produce, read_all, unkeyed};

fn exactly_once() -> App {
    hit_counter::app().processing_guarantee(ProcessingGuarantee::ExactlyOnce)
}

fn hit(hits: i64, user: &str) -> HitCount {
    HitCount {
        hits,
        timestamp: 1.0,
        user_id: user.into(),
    }
}

/// The seed app under exactly-once: a round of cuts is one transaction; when one aborts,
/// the tasks start again from the committed state, and a `read_committed` reader of
/// `count_topic` sees each qualifying input once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_transaction_is_undone_and_its_input_processed_again() {
    let mut driver = TestDriver::with_partitions(exactly_once(), &[("hit_count", 2)]).expect("driver");
    for i in 0..100 {
        driver
            .pipe(&HIT_COUNT, &(), &hit(30, &format!("u{}", i % 5)))
            .expect("pipe");
    }
    driver.run().await.expect("run");
    let committed: BTreeMap<String, i64> = driver.table(&MAJOR_COUNT).expect("table");
    assert_eq!(committed.values().sum::<i64>(), 100);

    // The next transactions abort: the run stops with an error, the tables hold the
    // committed state, what was sent is aborted.
    driver.fail_commits(true);
    for i in 0..50 {
        driver
            .pipe(&HIT_COUNT, &(), &hit(30, &format!("u{}", i % 5)))
            .expect("pipe");
    }
    let error = driver.run().await.expect_err("aborted").to_string();
    assert!(error.contains("abort"), "{error}");
    assert_eq!(
        driver.table(&MAJOR_COUNT).expect("table"),
        committed,
        "the committed state"
    );
    assert!(driver.metrics().aborts.load(Ordering::Relaxed) >= 1);
    let aborted = driver.raw_records("count_topic").iter().filter(|r| r.aborted).count();
    assert!(
        aborted > 0,
        "records of the aborted transaction are in the log, marked aborted"
    );

    // Commits work again: the input since the last commit is processed again, once.
    driver.fail_commits(false);
    driver.run().await.expect("run");
    let table = driver.table(&MAJOR_COUNT).expect("table");
    assert_eq!(table.values().sum::<i64>(), 150);
    assert_eq!(
        driver.records(&COUNT_TOPIC).expect("records").len(),
        150,
        "read committed: each once"
    );
    assert_eq!(
        driver.committed("hit_count", 0).unwrap_or(0) + driver.committed("hit_count", 1).unwrap_or(0),
        150
    );
}

/// The worker's options for a test on the embedded broker.
fn options(dir: &Path, broker: &EmbeddedBroker, id: &str) -> WorkerOptions {
    WorkerOptions::new(dir)
        .embedded(broker)
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
        .worker_id(id)
}

/// Waits until `table` of app `app` in `dir` equals `expected`; on a timeout the failure
/// shows the worker's metrics (positions, lag, restores, aborts) to tell a stall from a loss.
async fn wait_for_table(
    table: Table<String, i64>,
    (dir, app, worker): (&Path, &str, &streams_core::WorkerHandle),
    expected: &BTreeMap<String, i64>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = table.read_local(dir, app).unwrap_or_default();
        if &counts == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "counts {counts:?}, expected {expected:?}; the worker's metrics:\n{}",
            worker.metrics().prometheus()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn broker_with(records: &[serde_json::Value]) -> EmbeddedBroker {
    streams_core::init_logging(&std::env::var("STREAMS_TEST_LOG").unwrap_or_else(|_| "error".into()));
    let broker = EmbeddedBroker::start().expect("broker");
    broker.create_topic("hit_count", 4).expect("topic");
    if !records.is_empty() {
        produce(broker.bootstrap_servers(), "hit_count", &unkeyed(records));
    }
    broker
}

/// On the embedded broker: one transaction per round, the source offsets only through
/// transactions (`TxnOffsetCommit`, never a plain `OffsetCommit`), and the counts exact. (The
/// mock cluster acknowledges `TxnOffsetCommit` without storing the offsets in the group, so
/// the group's committed offsets cannot be read back there; a real Kafka stores them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_go_only_through_transactions() {
    let records = seed::hits(5, 5_000);
    let expected = seed::expected_counts(&records);
    let broker = broker_with(&records);
    broker.track_requests().expect("track");
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = Worker::start(exactly_once(), options(dir.path(), &broker, "w1"))
        .await
        .expect("worker");
    wait_for_table(
        MAJOR_COUNT,
        (dir.path(), "hit_counter", &worker),
        &expected,
        Duration::from_secs(120),
    )
    .await;
    let metrics = worker.stop().await.expect("stops");
    let count = |api| broker.requests(api).expect("requests");
    assert_eq!(count(RDKafkaApiKey::OffsetCommit), 0, "no plain offset commit");
    assert!(count(RDKafkaApiKey::TxnOffsetCommit) > 0, "offsets in transactions");
    let (ends, commits) = (
        count(RDKafkaApiKey::EndTxn),
        metrics.commits.load(Ordering::Relaxed) as usize,
    );
    assert!(
        ends > 0 && ends <= commits,
        "one EndTxn per round that sent something: {ends} for {commits}"
    );
    assert!(metrics.commits.load(Ordering::Relaxed) > 0);
    assert_eq!(metrics.aborts.load(Ordering::Relaxed), 0);
    let sent = read_all(broker.bootstrap_servers(), "count_topic").len() as i64;
    assert_eq!(
        sent,
        expected.values().sum::<i64>(),
        "no abort, so each qualifying input once"
    );
}

const USER_HITS: Topic<String, HitCount> = Topic::new("user-hits");
const PER_USER: Table<String, i64> = Table::new("hits-per-user");

/// Counts every hit per user (one stage: its input is never transactional, so a restart
/// after an abort reads exactly what a real Kafka would give it again).
#[agent(topic = USER_HITS, tables = [PER_USER])]
async fn count_all(mut hits: Stream<String, HitCount>) -> Result<()> {
    while let Some(hit) = hits.next().await {
        PER_USER.update(&hit.user_id, |n| *n += 1).await?;
    }
    Ok(())
}

fn counting_app() -> App {
    App::new("counting")
        .agent(count_all)
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
}

/// The records keyed by their user, on `user-hits`.
fn produce_keyed(broker: &EmbeddedBroker, records: &[serde_json::Value]) {
    let keyed: Vec<(Option<String>, Vec<u8>)> = records
        .iter()
        .map(|r| (r["userId"].as_str().map(str::to_string), r.to_string().into_bytes()))
        .collect();
    produce(broker.bootstrap_servers(), "user-hits", &keyed);
}

fn keyed_broker(records: &[serde_json::Value]) -> EmbeddedBroker {
    let broker = broker_with(&[]);
    broker.create_topic("user-hits", 4).expect("topic");
    produce_keyed(&broker, records);
    broker
}

fn per_user(records: &[serde_json::Value]) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for record in records {
        *counts
            .entry(record["userId"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    counts
}

/// Starts the counting app as worker `w1` on `dir` and waits until it has counted `records`.
async fn start_counting(
    broker: &EmbeddedBroker,
    dir: &Path,
    records: &[serde_json::Value],
) -> streams_core::WorkerHandle {
    let worker = Worker::start(counting_app(), options(dir, broker, "w1"))
        .await
        .expect("worker");
    wait_for_table(
        PER_USER,
        (dir, "counting", &worker),
        &per_user(records),
        Duration::from_secs(120),
    )
    .await;
    worker
}

/// A commit that fails aborts its transaction: the stores stay at the committed state (the
/// aborted round's changelog records are skipped by the restore as changes of uncommitted
/// input), the partitions start again from the last committed round, and the counts end
/// exact: nothing lost, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_aborts_and_the_counts_stay_exact() {
    let first = seed::hits(6, 3_000);
    let broker = keyed_broker(&first);
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = start_counting(&broker, dir.path(), &first).await;
    // The next commit fails (EndTxn answered with an error librdkafka does not retry), and
    // so does the first try of its abort.
    broker
        .fail_requests(
            RDKafkaApiKey::EndTxn,
            vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN; 2],
        )
        .expect("inject");
    let second = seed::hits(7, 3_000);
    produce_keyed(&broker, &second);
    let mut all = first.clone();
    all.extend(second);
    wait_for_table(
        PER_USER,
        (dir.path(), "counting", &worker),
        &per_user(&all),
        Duration::from_secs(120),
    )
    .await;
    let metrics = worker.stop().await.expect("stops");
    assert!(metrics.aborts.load(Ordering::Relaxed) >= 1, "a transaction was aborted");
}

/// Abort after abort, every partition starts again and catches up: after each abort the
/// counts reach every input so far. Three workers (each on its own broker) abort side by
/// side, so that librdkafka's threads interleave in many ways. (An abort's restart once
/// re-assigned the partitions and paused the restoring ones at once; librdkafka could then
/// drop the fetch start of a partition, which stayed silent for good: 1 run in ~15 of the
/// test above lost a partition's input that way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_one_after_another_never_stall_a_partition() {
    tokio::join!(abort_rounds(10, 12), abort_rounds(20, 12), abort_rounds(30, 12));
}

/// `rounds` aborts on a worker of its own: each round fails a commit (every other round the
/// first try of its abort too), adds input, and waits for the counts to be exact.
async fn abort_rounds(seed: u64, rounds: u64) {
    let mut all = seed::hits(seed, 1_000);
    let broker = keyed_broker(&all);
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = start_counting(&broker, dir.path(), &all).await;
    let metrics = worker.metrics();
    for round in 0..rounds {
        let aborts = metrics.aborts.load(Ordering::Relaxed);
        let failures = 1 + (round % 2) as usize;
        broker
            .fail_requests(
                RDKafkaApiKey::EndTxn,
                vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN; failures],
            )
            .expect("inject");
        let more = seed::hits(seed * 1_000 + round, 300);
        produce_keyed(&broker, &more);
        all.extend(more);
        let deadline = Instant::now() + Duration::from_secs(60);
        while metrics.aborts.load(Ordering::Relaxed) == aborts {
            assert!(Instant::now() < deadline, "worker {seed}, round {round}: no abort");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        wait_for_table(
            PER_USER,
            (dir.path(), "counting", &worker),
            &per_user(&all),
            Duration::from_secs(60),
        )
        .await;
    }
    let metrics = worker.stop().await.expect("stops");
    assert!(metrics.aborts.load(Ordering::Relaxed) >= rounds);
}

/// A worker whose producer is fenced stops without committing anything more and drops its
/// partitions. On Kafka the fencing comes from a second worker with the same identity (its
/// transactional id); librdkafka's mock cluster gives every producer a fresh producer id
/// instead of bumping the epoch of the id's, so it never fences: the test injects the
/// answer Kafka gives a fenced producer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_worker_stops_without_committing() {
    let records = seed::hits(8, 3_000);
    let broker = keyed_broker(&records);
    broker.track_requests().expect("track");
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = Worker::start(counting_app(), options(dir.path(), &broker, "same"))
        .await
        .expect("worker");
    wait_for_table(
        PER_USER,
        (dir.path(), "counting", &worker),
        &per_user(&records),
        Duration::from_secs(120),
    )
    .await;
    let before = PER_USER.read_local(dir.path(), "counting").expect("table");
    broker
        .fail_requests(
            RDKafkaApiKey::EndTxn,
            vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
        )
        .expect("inject");
    produce_keyed(&broker, &seed::hits(9, 2_000));
    let error = tokio::time::timeout(Duration::from_secs(120), worker.wait())
        .await
        .expect("the worker stops")
        .expect_err("fenced");
    assert!(error.to_string().to_lowercase().contains("fenced"), "{error}");
    let ends = broker.requests(RDKafkaApiKey::EndTxn).expect("requests");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        broker.requests(RDKafkaApiKey::EndTxn).expect("requests"),
        ends,
        "nothing more committed"
    );
    assert_eq!(
        PER_USER.read_local(dir.path(), "counting").expect("table"),
        before,
        "the stores hold only what was committed"
    );
}

/// Against a real Kafka (`STREAMS_TEST_KAFKA=host:port`, e.g. `docker-compose up -d`): the
/// seed app with exactly-once on three workers with their own ids, killed with SIGKILL and
/// started again (once on an empty data directory: a takeover), one frozen past its session
/// and thawed (a zombie the broker must fence, KIP-447), during 50,000 inputs; a
/// `read_committed` reader of `count_topic` sees each qualifying input exactly once and the
/// table's changelog is exact.
#[test]
fn real_kafka_takeover_and_fencing_each_input_once() {
    let Ok(bootstrap) = std::env::var("STREAMS_TEST_KAFKA") else {
        eprintln!("skipped: set STREAMS_TEST_KAFKA=host:port to run this test against a real Kafka");
        return;
    };
    real_kafka::run(&bootstrap);
}

mod real_kafka {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use streams_examples::seed;
    use streams_tests::{produce, spawn_hit_counter_worker, unkeyed};

    /// Every record of `topic` as a `read_committed` consumer reads it, to its end.
    fn read_committed(bootstrap: &str, topic: &str) -> Vec<Vec<u8>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("streams-test-reader-{}", std::process::id()))
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let mut out = Vec::new();
        let mut idle = 0;
        while idle < 50 {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    idle = 0;
                    out.push(message.payload().unwrap_or_default().to_vec());
                }
                _ => idle += 1,
            }
        }
        out
    }

    /// The last value of every key of a changelog, read committed.
    fn table(bootstrap: &str, changelog: &str, prefix: &str) -> BTreeMap<String, i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("streams-test-table-{}", std::process::id()))
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[changelog]).expect("subscribe");
        let mut table = BTreeMap::new();
        let mut idle = 0;
        while idle < 50 {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    idle = 0;
                    let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                    if !key.starts_with(prefix) {
                        continue;
                    }
                    match message
                        .payload()
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                    {
                        Some(count) => table.insert(key, count),
                        None => table.remove(&key),
                    };
                }
                _ => idle += 1,
            }
        }
        table
    }

    fn signal(child: &streams_tests::Child, signal: &str) {
        let _ = std::process::Command::new("kill")
            .args([signal, &child.process.id().to_string()])
            .status();
    }

    /// Three workers with their own ids and data directories while 50,000 inputs arrive:
    /// killed with SIGKILL and started again (on their directory, or on an empty one: another
    /// machine taking over), and one frozen past its session (SIGSTOP) and thawed (SIGCONT) —
    /// a zombie whose partitions went to others, whose commits the broker must refuse
    /// (KIP-447). A read_committed reader of `count_topic` then sees each qualifying input
    /// exactly once, and the table's changelog is exact.
    pub fn run(bootstrap: &str) {
        // Users of this run only: the topics may hold earlier runs' records.
        let run_id = std::process::id();
        let prefix = format!("run{run_id}-");
        let mut records = seed::hits(u64::from(run_id), 50_000);
        for record in &mut records {
            let user = record["userId"].as_str().unwrap_or_default().to_string();
            record["userId"] = serde_json::Value::String(format!("{prefix}{user}"));
        }
        let truth = seed::expected_counts(&records);
        let dirs: Vec<tempfile::TempDir> = (0..6).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let worker = |dir: &std::path::Path, id: usize| {
            // A killed member's partitions move after its session: keep it short.
            let id = format!("{run_id}-worker-{id}");
            let extra = [
                "--processing-guarantee",
                "exactly-once",
                "--worker-id",
                id.as_str(),
                "--consumer-config",
                "session.timeout.ms=6000",
            ];
            spawn_hit_counter_worker(bootstrap, dir, &extra)
        };
        let mut workers: Vec<streams_tests::Child> = (0..3).map(|n| worker(dirs[n].path(), n)).collect();
        workers[0].wait_for_line("assigned", Duration::from_secs(120));
        let chunks: Vec<&[serde_json::Value]> = records.chunks(records.len() / 8).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            produce(bootstrap, "hit_count", &unkeyed(chunk));
            std::thread::sleep(Duration::from_secs(2));
            match n {
                // SIGKILL, started again on its own directory.
                1 | 5 => {
                    let victim = n % 3;
                    signal(&workers[victim], "-KILL");
                    let _ = workers[victim].process.wait();
                    workers[victim] = worker(dirs[victim].path(), victim);
                }
                // SIGKILL, started again elsewhere: an empty directory, its stores restored from
                // the changelogs another worker wrote meanwhile.
                3 => {
                    signal(&workers[1], "-KILL");
                    let _ = workers[1].process.wait();
                    workers[1] = worker(dirs[4].path(), 1);
                }
                // Frozen past its session: the group gives its partitions to the others; thawed,
                // it is a zombie of an older generation, whose commits are refused.
                6 => {
                    signal(&workers[2], "-STOP");
                    std::thread::sleep(Duration::from_secs(10));
                    signal(&workers[2], "-CONT");
                }
                _ => {}
            }
        }
        // Until every qualifying input has come through (or the time is up): never more
        // than once on the way.
        let total: i64 = truth.values().sum();
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        let seen = loop {
            let mut seen: BTreeMap<String, i64> = BTreeMap::new();
            for value in read_committed(bootstrap, "count_topic") {
                let hit: serde_json::Value = serde_json::from_slice(&value).expect("json");
                let user = hit["userId"].as_str().unwrap_or_default();
                if user.starts_with(&prefix) {
                    *seen.entry(user.to_string()).or_default() += 1;
                }
            }
            let count: i64 = seen.values().sum();
            assert!(
                count <= total,
                "more than once: {count} records for {total} qualifying inputs"
            );
            if count == total || std::time::Instant::now() > deadline {
                break seen;
            }
            std::thread::sleep(Duration::from_secs(5));
        };
        assert_eq!(seen, truth, "each qualifying input exactly once on count_topic");
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let table = table(bootstrap, "hit_counter-major-count-changelog", &prefix);
            if table == truth {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the table's changelog is not exact: {table:?}"
            );
            std::thread::sleep(Duration::from_secs(5));
        }
        for child in &workers {
            child.terminate();
        }
        for child in &mut workers {
            let _ = child.wait(Duration::from_secs(60));
        }
    }
}

const FORWARDED: Topic<String, HitCount> = Topic::new("forwarded");

/// Sends every hit on, as it comes.
#[agent(topic = USER_HITS, sends = [FORWARDED])]
async fn forward_all(mut hits: Stream<String, HitCount>) -> Result<()> {
    while let Some(event) = hits.next_event().await {
        FORWARDED.send(&event.key, &event.value).await?;
    }
    Ok(())
}

/// A worker that fails with records in its open transaction aborts it before it stops
/// (Kafka Streams closes its tasks dirty the same way): downstream read_committed readers
/// go on at once rather than wait at the open transaction until the broker times it out.
/// No round commits before the failure here (a 10-minute commit interval), so the one
/// `EndTxn` is the abort; before, the worker stopped without any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_aborts_its_open_transaction() {
    let broker = keyed_broker(&seed::hits(11, 2_000));
    broker.track_requests().expect("track");
    let app = App::new("forwarding")
        .agent(forward_all)
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
        .commit_interval(Duration::from_secs(600))
        .on_deserialization_error(streams_core::OnError::Fail);
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = Worker::start(app, options(dir.path(), &broker, "w1"))
        .await
        .expect("worker");
    // The bad record once forwarded records are in the transaction on the broker.
    let count = |api| broker.requests(api).expect("requests");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(RDKafkaApiKey::Produce) == 0 {
        assert!(Instant::now() < deadline, "nothing forwarded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    produce(
        broker.bootstrap_servers(),
        "user-hits",
        &[(Some("bad".to_string()), b"not json".to_vec())],
    );
    let error = tokio::time::timeout(Duration::from_secs(120), worker.wait())
        .await
        .expect("the worker stops")
        .expect_err("the bad record stops it");
    assert!(error.to_string().contains("user-hits["), "{error}");
    assert!(
        count(RDKafkaApiKey::AddPartitionsToTxn) > 0,
        "records went into the transaction"
    );
    assert_eq!(count(RDKafkaApiKey::TxnOffsetCommit), 0, "nothing committed");
    assert_eq!(count(RDKafkaApiKey::EndTxn), 1, "the open transaction is aborted");
}

/// A broker with `records` on `user-hits` that answers its next `answers` requests for a
/// group's offsets UNSTABLE_OFFSET_COMMIT (held back by an open transaction); its requests
/// are tracked.
fn holding_back(records: &[serde_json::Value], answers: usize) -> EmbeddedBroker {
    let broker = keyed_broker(records);
    broker.track_requests().expect("track");
    broker
        .fail_requests(
            RDKafkaApiKey::OffsetFetch,
            vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNSTABLE_OFFSET_COMMIT; answers],
        )
        .expect("inject");
    broker
}

/// Offsets held back by an open transaction (UNSTABLE_OFFSET_COMMIT: on Kafka, a worker
/// killed between its round's offsets and its commit leaves one until the broker times it
/// out) are waited for: the worker starts once they come, and counts exactly. Thirty such
/// answers outlast one of the worker's 10-s reads (librdkafka asks again until the read
/// times out); a minute of them outlasted the five reads it made before, and it stopped
/// (the policy's own test, in `consumer.rs`, covers the full wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_held_back_by_an_open_transaction_are_waited_for() {
    let records = seed::hits(12, 1_000);
    let broker = holding_back(&records, 30);
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = start_counting(&broker, dir.path(), &records).await;
    assert!(
        broker.requests(RDKafkaApiKey::OffsetFetch).expect("requests") > 30,
        "the held-back answers were asked again"
    );
    let metrics = worker.stop().await.expect("stops");
    assert_eq!(metrics.aborts.load(Ordering::Relaxed), 0);
}

/// A stop while the offsets are held back ends the wait within one read of them (10 s),
/// and the worker stops cleanly, not as a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_the_wait_for_held_back_offsets() {
    let broker = holding_back(&seed::hits(13, 100), 5_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = Worker::start(counting_app(), options(dir.path(), &broker, "w1"))
        .await
        .expect("worker");
    let deadline = Instant::now() + Duration::from_secs(60);
    while broker.requests(RDKafkaApiKey::OffsetFetch).expect("requests") == 0 {
        assert!(Instant::now() < deadline, "no offsets asked for");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let began = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(60), worker.stop())
        .await
        .expect("the stop ends the wait");
    assert!(
        began.elapsed() < Duration::from_secs(25),
        "stopped after {:?}",
        began.elapsed()
    );
    assert!(stopped.is_ok(), "{:?}", stopped.err());
}

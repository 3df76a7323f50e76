//! State that survives: restores that agree with committed input, a large restore, the
//! broker going away mid-stream, and workers crashing, joining and leaving.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use streams_core::{EmbeddedBroker, Worker, WorkerHandle, WorkerOptions};
use streams_examples::seed;
use streams_tests::hit_counter::{app, MAJOR_COUNT};
use streams_tests::{
    committed, create_app_topics, produce, produce_raw, read_all, table_from_changelog, unkeyed, wait_caught_up,
    wait_until, worker_options, Child, Raw,
};

const GROUP: &str = "hit_counter";
const TOPICS: [&str; 2] = ["hit_count", "count_topic"];
const CHANGELOG: &str = "hit_counter-major-count-changelog";

fn log() {
    streams_core::init_logging(&std::env::var("STREAMS_TEST_LOG").unwrap_or_else(|_| "error".into()));
}

async fn start(broker: &EmbeddedBroker, dir: &Path) -> WorkerHandle {
    Worker::start(app(), worker_options(dir, broker))
        .await
        .expect("worker starts")
}

async fn caught_up(broker: &EmbeddedBroker) {
    let bootstrap = broker.bootstrap_servers().to_string();
    tokio::task::spawn_blocking(move || wait_caught_up(&bootstrap, GROUP, &TOPICS, Duration::from_secs(180)))
        .await
        .expect("wait");
}

async fn all_assigned(worker: &WorkerHandle, partitions: u64) {
    let metrics = worker.metrics();
    tokio::task::spawn_blocking(move || {
        wait_until("all partitions assigned", Duration::from_secs(120), || {
            metrics.assigned.load(Ordering::Relaxed) == partitions
        })
    })
    .await
    .expect("wait");
}

/// An embedded broker with `hit_count` (4 partitions) and every topic the app creates.
fn broker_with_app_topics() -> EmbeddedBroker {
    let broker = EmbeddedBroker::start().expect("broker");
    broker.create_topic("hit_count", 4).expect("topic");
    create_app_topics(&broker, &app());
    broker
}

/// The header of a changelog record written at a cut that had processed `count_topic` up to
/// `offset`.
fn cut_header(partition: i32, offset: i64) -> Vec<(String, String)> {
    vec![(
        "streams.cut".into(),
        format!("source=count_topic/{partition}/{offset};time=1"),
    )]
}

/// The headers earlier versions wrote instead of [`cut_header`]'s (still read).
fn source_headers(partition: i32, offset: i64) -> Vec<(String, String)> {
    vec![
        ("streams.source.topic".into(), "count_topic".into()),
        ("streams.source.partition".into(), partition.to_string()),
        ("streams.source.offset".into(), offset.to_string()),
    ]
}

/// A crash after a changelog write but before the offset commit leaves changelog records of
/// input the group never committed. A restore must skip them (that input is processed again)
/// and apply everything from committed input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_skips_changes_from_uncommitted_input() {
    log();
    let broker = EmbeddedBroker::start().expect("broker");
    broker.create_topic("hit_count", 4).expect("topic");
    let records = seed::hits(5, 5_000);
    let expected = seed::expected_counts(&records);
    let bootstrap = broker.bootstrap_servers().to_string();
    produce(&bootstrap, "hit_count", &unkeyed(&records));
    let first = tempfile::tempdir().expect("tempdir");
    let worker = start(&broker, first.path()).await;
    caught_up(&broker).await;
    worker.stop().await.expect("stop");

    // Where user-0 lives, and how far the group committed there.
    let partition = read_all(&bootstrap, CHANGELOG)
        .iter()
        .find(|r| r.key.as_deref() == Some(b"user-0".as_slice()))
        .map(|r| r.partition)
        .expect("user-0 has a changelog record");
    let committed_offset = committed(&bootstrap, GROUP, "count_topic", partition);
    assert!(committed_offset > 0);
    produce_raw(
        &bootstrap,
        CHANGELOG,
        &[
            // From input at the committed offset and past it: never committed.
            Raw {
                partition,
                key: "user-0".into(),
                value: "999999".into(),
                headers: source_headers(partition, committed_offset),
            },
            Raw {
                partition,
                key: "ghost".into(),
                value: "5".into(),
                headers: source_headers(partition, committed_offset + 10),
            },
            // From committed input: applied.
            Raw {
                partition,
                key: "from-committed-input".into(),
                value: "7".into(),
                headers: source_headers(partition, committed_offset - 1),
            },
            // The same, with the one header of today's cuts.
            Raw {
                partition,
                key: "user-0".into(),
                value: "888888".into(),
                headers: cut_header(partition, committed_offset + 1),
            },
            Raw {
                partition,
                key: "ghost-of-a-cut".into(),
                value: "5".into(),
                headers: cut_header(partition, committed_offset),
            },
            Raw {
                partition,
                key: "from-a-committed-cut".into(),
                value: "8".into(),
                headers: cut_header(partition, committed_offset - 1),
            },
        ],
    );

    let empty = tempfile::tempdir().expect("tempdir");
    let worker = start(&broker, empty.path()).await;
    all_assigned(&worker, 12).await;
    let metrics = worker.stop().await.expect("stop");
    let mut want = expected.clone();
    want.insert("from-committed-input".into(), 7);
    want.insert("from-a-committed-cut".into(), 8);
    assert_eq!(MAJOR_COUNT.read_local(empty.path(), GROUP).expect("table"), want);
    assert!(metrics.restored.load(Ordering::Relaxed) >= expected.len() as u64);
}

/// 200,000 changelog records restored into an empty data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_200k_changelog_records() {
    log();
    const RECORDS: usize = 200_000;
    let broker = broker_with_app_topics();
    let bootstrap = broker.bootstrap_servers().to_string();
    produce_raw(&bootstrap, CHANGELOG, &numbered_changelog(RECORDS));
    assert_eq!(streams_tests::record_count(&bootstrap, CHANGELOG), RECORDS as i64);

    let dir = tempfile::tempdir().expect("tempdir");
    let began = Instant::now();
    let worker = start(&broker, dir.path()).await;
    all_assigned(&worker, 12).await;
    let seconds = began.elapsed().as_secs_f64();
    let metrics = worker.stop().await.expect("stop");
    let restored = metrics.restored.load(Ordering::Relaxed);
    let restoring = metrics.restore_micros.load(Ordering::Relaxed) as f64 / 1e6;
    println!(
        "restored {restored} changelog records into an empty data dir: {restoring:.2}s restoring, {:.0} records/s \
         ({seconds:.2}s from worker start to all partitions ready, group join included)",
        restored as f64 / restoring
    );
    assert_eq!(restored, RECORDS as u64);
    let table = MAJOR_COUNT.read_local(dir.path(), GROUP).expect("table");
    assert_eq!(table.len(), RECORDS);
    assert_eq!(table["key-123456"], 123456);
}

/// A restore that takes longer than `max.poll.interval.ms` does not get the worker evicted:
/// the worker keeps polling while its paused partitions are restored, so it stays in its
/// group (one assignment, not an eviction and a second one) and the table is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_longer_than_the_poll_interval_keeps_the_worker_in_its_group() {
    log();
    let broker = broker_with_app_topics();
    let expected = slow_changelog(&broker, 1);

    let dir = tempfile::tempdir().expect("tempdir");
    let options = worker_options(dir.path(), &broker).consumer_config("max.poll.interval.ms", "6000");
    let worker = Worker::start(app(), options).await.expect("worker starts");
    let metrics = worker.metrics();
    let first = Arc::clone(&metrics);
    let member = tokio::task::spawn_blocking(move || {
        wait_until("the first assignment", Duration::from_secs(60), || {
            first.assignments.load(Ordering::Relaxed) > 0
        });
        first.member_id()
    })
    .await
    .expect("wait")
    .expect("a member id");
    all_assigned(&worker, 12).await;
    // The restore took longer than the poll interval and librdkafka's check of it (twice a
    // second: a member that stopped polling is out within 6.5 s), so a member that stopped
    // polling for it would have been evicted by now (librdkafka leaves the group, and forgets
    // its member id, as soon as the interval is exceeded). Two restore threads take the 8
    // partitions in ~8 s.
    let restoring = Duration::from_micros(metrics.restore_micros.load(Ordering::Relaxed));
    assert!(
        restoring > Duration::from_secs(7),
        "the restore took only {restoring:?}"
    );
    assert_eq!(
        metrics.member_id().as_deref(),
        Some(member.as_str()),
        "the worker's member id changed: it was evicted and joined again"
    );
    assert_eq!(
        metrics.assignments.load(Ordering::Relaxed),
        1,
        "the worker was assigned more than once"
    );
    let metrics = worker.stop().await.expect("stop");
    assert_eq!(metrics.restored.load(Ordering::Relaxed), expected.len() as u64);
    assert_eq!(MAJOR_COUNT.read_local(dir.path(), GROUP).expect("table"), expected);
}

/// Changelog records of `records` keys over the changelog's 8 partitions: `key-i` = i.
fn numbered_changelog(records: usize) -> Vec<Raw> {
    (0..records)
        .map(|i| Raw {
            partition: (i % 8) as i32,
            key: format!("key-{i:06}"),
            value: i.to_string(),
            headers: Vec::new(),
        })
        .collect()
}

/// The changelog of the tests below: 8,000 keys, produced in `rounds` (at least one batch
/// per partition each), then the broker slowed down.
fn slow_changelog(broker: &EmbeddedBroker, rounds: usize) -> BTreeMap<String, i64> {
    const RECORDS: usize = 8_000;
    let changelog = numbered_changelog(RECORDS);
    for round in changelog.chunks(RECORDS / rounds) {
        produce_raw(broker.bootstrap_servers(), CHANGELOG, round);
    }
    // Every response half a second late: restoring 8 partitions one after another takes
    // longer than a 6 s poll interval.
    broker
        .round_trip_time(1, Duration::from_millis(500))
        .expect("round trip time");
    changelog
        .into_iter()
        .map(|r| (r.key, r.value.parse().expect("number")))
        .collect()
}

/// A worker that joins while another restores is not kept waiting for that restore: the
/// restoring worker keeps polling, so the group rebalances at once (the restore of the
/// partitions that move stops, the rest goes on), and together they hold the whole table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joining_during_a_restore_is_not_kept_waiting() {
    log();
    let broker = broker_with_app_topics();
    let expected = slow_changelog(&broker, 10);

    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    // The first worker fetches one small batch per round trip: its restore takes ~10 round
    // trips per partition, far longer than the second worker needs to start and join.
    let options = worker_options(dir_a.path(), &broker).client_config("max.partition.fetch.bytes", "1024");
    let a = Worker::start(app(), options).await.expect("worker starts");
    let a_metrics = a.metrics();
    let assigned = Arc::clone(&a_metrics);
    tokio::task::spawn_blocking(move || {
        wait_until("the first worker's assignment", Duration::from_secs(60), || {
            assigned.assignments.load(Ordering::Relaxed) > 0
        })
    })
    .await
    .expect("wait");
    let b = start(&broker, dir_b.path()).await;
    let b_metrics = b.metrics();
    let restored_by_a_when_b_was_assigned = tokio::task::spawn_blocking({
        let (a_metrics, b_metrics) = (Arc::clone(&a_metrics), Arc::clone(&b_metrics));
        move || {
            wait_until("the second worker's assignment", Duration::from_secs(120), || {
                b_metrics.assignments.load(Ordering::Relaxed) > 0
            });
            a_metrics.restored.load(Ordering::Relaxed)
        }
    })
    .await
    .expect("wait");
    assert!(
        restored_by_a_when_b_was_assigned < expected.len() as u64,
        "the group waited for the first worker's whole restore ({restored_by_a_when_b_was_assigned} records)"
    );
    tokio::task::spawn_blocking(move || {
        wait_until(
            "all 12 partitions restored and running",
            Duration::from_secs(120),
            || a_metrics.assigned.load(Ordering::Relaxed) + b_metrics.assigned.load(Ordering::Relaxed) == 12,
        )
    })
    .await
    .expect("wait");
    streams_tests::stop_in_turn(vec![a, b], 12).await;

    let mut table = MAJOR_COUNT.read_local(dir_a.path(), GROUP).expect("table");
    for (key, value) in MAJOR_COUNT.read_local(dir_b.path(), GROUP).expect("table") {
        let previous = table.insert(key.clone(), value);
        assert!(previous.is_none_or(|p| p == value), "{key}: {previous:?} vs {value}");
    }
    assert_eq!(table, expected);
}

fn produce_steadily(
    bootstrap: String,
    records: Vec<serde_json::Value>,
    per_second: f64,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let began = Instant::now();
        for (i, chunk) in records.chunks(250).enumerate() {
            let due = began + Duration::from_secs_f64((i * 250) as f64 / per_second);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            produce(&bootstrap, "hit_count", &unkeyed(chunk));
        }
    })
}

fn report(truth: &BTreeMap<String, i64>, counted: &BTreeMap<String, i64>) -> i64 {
    let mut below = Vec::new();
    let mut over = 0;
    for (user, want) in truth {
        let got = counted.get(user).copied().unwrap_or(0);
        if got < *want {
            below.push(format!("{user}: {got} < {want}"));
        }
        over += (got - want).max(0);
    }
    assert!(below.is_empty(), "counts below the truth (lost input): {below:?}");
    assert!(counted.keys().all(|k| truth.contains_key(k)), "unknown users counted");
    over
}

/// The broker down for 10 s mid-stream: workers warn and retry, then go on; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_for_ten_seconds() {
    log();
    let broker = EmbeddedBroker::start().expect("broker");
    broker.create_topic("hit_count", 4).expect("topic");
    let bootstrap = broker.bootstrap_servers().to_string();
    let records = seed::hits(21, 20_000);
    let truth = seed::expected_counts(&records);
    let dirs = [tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir")];
    let options = |dir: &Path| {
        WorkerOptions::new(dir)
            .embedded(&broker)
            .consumer_config("session.timeout.ms", "30000")
            .consumer_config("heartbeat.interval.ms", "500")
    };
    let a = Worker::start(app(), options(dirs[0].path())).await.expect("worker a");
    let b = Worker::start(app(), options(dirs[1].path())).await.expect("worker b");
    let producer = produce_steadily(bootstrap.clone(), records, 2_000.0);
    let (a_metrics, b_metrics) = (a.metrics(), b.metrics());
    tokio::task::spawn_blocking(move || {
        wait_until("both workers processing", Duration::from_secs(120), || {
            a_metrics.records.load(Ordering::Relaxed) > 0 && b_metrics.records.load(Ordering::Relaxed) > 0
        })
    })
    .await
    .expect("wait");
    let errors =
        || a.metrics().client_errors.load(Ordering::Relaxed) + b.metrics().client_errors.load(Ordering::Relaxed);
    let before = errors();
    broker.broker_down(1).expect("down");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        a.is_running() && b.is_running(),
        "workers keep running while the broker is down"
    );
    assert!(
        errors() > before,
        "the workers' Kafka clients reported no error: the broker was not down"
    );
    broker.broker_up(1).expect("up");
    tokio::task::spawn_blocking(move || producer.join().expect("producer"))
        .await
        .expect("join");
    caught_up(&broker).await;
    assert!(a.is_running() && b.is_running(), "every worker still running");
    assert!(a.metrics().fatal().is_none() && b.metrics().fatal().is_none());
    streams_tests::stop_in_turn(vec![a, b], 12).await;
    let counted = table_from_changelog(&bootstrap, CHANGELOG);
    let over = report(&truth, &counted);
    println!("broker down 10 s: no user below the truth; over-count {over} (re-processed after the outage)");
}

fn spawn_worker(bootstrap: &str, dir: &Path) -> Child {
    streams_tests::spawn_hit_counter_worker(bootstrap, dir, &[])
}

fn kill_9(child: &mut Child) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &child.process.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let _ = child.process.wait();
}

/// Three worker processes on 8 partitions while 50,000 records arrive at a steady rate: one
/// is killed with SIGKILL twice and restarted (once onto an empty data dir), a fourth joins,
/// a third leaves. No user's count may be below the truth.
#[test]
fn workers_crash_join_and_leave() {
    log();
    let broker = EmbeddedBroker::start().expect("broker");
    broker.create_topic("hit_count", 8).expect("topic");
    create_app_topics(&broker, &app());
    let bootstrap = broker.bootstrap_servers().to_string();
    let records = seed::hits(99, 50_000);
    let truth = seed::expected_counts(&records);
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().expect("dir")).collect();

    let mut w1 = spawn_worker(&bootstrap, dirs[0].path());
    let _w2 = spawn_worker(&bootstrap, dirs[1].path());
    let mut w3 = spawn_worker(&bootstrap, dirs[2].path());
    w1.wait_for_line("assigned", Duration::from_secs(60));
    let producer = produce_steadily(bootstrap.clone(), records, 2_500.0);

    std::thread::sleep(Duration::from_secs(3));
    kill_9(&mut w1);
    let mut w1 = spawn_worker(&bootstrap, dirs[0].path()); // same data dir
    std::thread::sleep(Duration::from_secs(5));
    kill_9(&mut w1);
    let last_kill = std::time::Instant::now();
    let _w1 = spawn_worker(&bootstrap, dirs[3].path()); // an empty data dir
    std::thread::sleep(Duration::from_secs(3));
    let mut w4 = spawn_worker(&bootstrap, dirs[4].path());
    // w3 leaves once w4 has joined (the embedded broker refuses commits while its group
    // rebalances, so a worker leaving mid-rebalance would exit 1, its last commit refused).
    // Nor while the killed worker's session (6 s) has yet to expire: that is a rebalance too.
    w4.wait_for_line("assigned", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1).max(Duration::from_secs(9).saturating_sub(last_kill.elapsed())));
    w3.terminate();
    assert_eq!(
        w3.wait(Duration::from_secs(60)),
        Some(0),
        "a worker that leaves exits 0: {}",
        w3.seen.join("\n")
    );

    producer.join().expect("producer");
    wait_caught_up(&bootstrap, GROUP, &TOPICS, Duration::from_secs(240));
    let counted = table_from_changelog(&bootstrap, CHANGELOG);
    let over = report(&truth, &counted);
    let total: i64 = truth.values().sum();
    println!("crash/join/leave: no user below the truth; over-count {over} of {total} counted records");

    // Co-partitioning: every change in partition p of the table is of a key that Kafka's
    // partitioner puts in partition p of count_topic (where its records are), and was made
    // by the worker that owned partition p of count_topic at the time: its cut's header
    // names that partition and an offset that exists there.
    let source_ends: Vec<i64> = (0..8)
        .map(|p| streams_tests::high_watermark(&bootstrap, "count_topic", p))
        .collect();
    for record in read_all(&bootstrap, CHANGELOG) {
        let key = record.key.as_deref().expect("changelog records have keys");
        assert_eq!(
            streams_core::testing::kafka_partition(key, 8),
            record.partition,
            "{} in changelog partition {}",
            String::from_utf8_lossy(key),
            record.partition
        );
        let headers = record.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
        let cut = streams_core::changelog::CutPosition::of_headers(headers).expect("the cut's header");
        assert_eq!(record.headers.len(), 1, "one header: {:?}", record.headers);
        let [(topic, partition, source_offset)] = &cut.sources[..] else {
            panic!("one source: {cut:?}");
        };
        assert_eq!(topic, "count_topic");
        assert_eq!(*partition, record.partition);
        let source_offset = *source_offset;
        assert!(
            (0..source_ends[record.partition as usize]).contains(&source_offset),
            "source offset {source_offset} is not in count_topic[{}]",
            record.partition
        );
    }
}

/// Slows `count_events` down by this many milliseconds per record.
static SLOW_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Records `count_events` processed while slowed down.
static SLOW_RECORDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

const EVENTS: streams_core::Topic<String, i64> = streams_core::Topic::new("events");
const EVENT_COUNTS: streams_core::Table<String, i64> = streams_core::Table::new("event-counts");

/// Counts records per key.
#[streams_core::agent(topic = EVENTS, tables = [EVENT_COUNTS])]
async fn count_events(mut events: streams_core::Stream<String, i64>) -> streams_core::Result<()> {
    while let Some(event) = events.next_event().await {
        let pause = SLOW_MS.load(Ordering::Relaxed);
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        EVENT_COUNTS.update(&event.key, |n| *n += 1).await?;
        if pause > 0 {
            SLOW_RECORDS.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn events_app() -> streams_core::App {
    streams_core::App::new("returning").agent(count_events)
}

fn produce_events(bootstrap: &str, count: usize) {
    let records: Vec<(Option<String>, Vec<u8>)> = (0..count).map(|_| (Some("k".to_string()), b"1".to_vec())).collect();
    produce(bootstrap, "events", &records);
}

async fn wait_committed(bootstrap: &str, offset: i64) {
    let bootstrap = bootstrap.to_string();
    tokio::task::spawn_blocking(move || {
        wait_until(
            &format!("events[0] committed at {offset}"),
            Duration::from_secs(120),
            || committed(&bootstrap, "returning", "events", 0) == offset,
        )
    })
    .await
    .expect("wait");
}

/// The scenario of a lost update, with real workers: worker A processes past a commit that
/// fails (its store is ahead of the group); worker B takes the partition, processes part of
/// that input again and commits; A gets the partition back. A's restore applies B's changes,
/// so A must start at B's commit: starting after its own checkpoint loses the input between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_returning_to_an_earlier_owner_loses_no_update() {
    use streams_core::broker::{RDKafkaApiKey, RDKafkaRespErr};
    log();
    let broker = EmbeddedBroker::start().expect("broker");
    broker.create_topic("events", 1).expect("topic");
    create_app_topics(&broker, &events_app());
    let bootstrap = broker.bootstrap_servers().to_string();
    let (dir_a, dir_b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));

    produce_events(&bootstrap, 800);
    let a = Worker::start(events_app(), worker_options(dir_a.path(), &broker))
        .await
        .expect("worker a");
    wait_committed(&bootstrap, 800).await;

    // A processes 200 more, and none of its commits gets through.
    broker
        .fail_requests(
            RDKafkaApiKey::OffsetCommit,
            vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_COMMIT_OFFSET_SIZE; 100_000],
        )
        .expect("fail commits");
    produce_events(&bootstrap, 200);
    let metrics = a.metrics();
    tokio::task::spawn_blocking(move || {
        wait_until("A processed 1000 records", Duration::from_secs(60), || {
            metrics.records.load(Ordering::Relaxed) >= 1000
        })
    })
    .await
    .expect("wait");
    let error = a.stop().await.expect_err("A's last commit failed: its stop says so");
    assert!(error.to_string().contains("last commit failed"), "{error}");
    broker
        .fail_requests(RDKafkaApiKey::OffsetCommit, Vec::new())
        .expect("commits succeed again");
    assert_eq!(committed(&bootstrap, "returning", "events", 0), 800);

    // B, slowed down, re-processes part of 800..999 and leaves with a clean commit.
    SLOW_MS.store(25, Ordering::Relaxed);
    let b = Worker::start(events_app(), worker_options(dir_b.path(), &broker))
        .await
        .expect("worker b");
    tokio::task::spawn_blocking(move || {
        wait_until("B processed 40 records", Duration::from_secs(60), || {
            SLOW_RECORDS.load(Ordering::Relaxed) >= 40
        })
    })
    .await
    .expect("wait");
    b.stop().await.expect("B stops cleanly");
    SLOW_MS.store(0, Ordering::Relaxed);
    let by_b = committed(&bootstrap, "returning", "events", 0);
    assert!(
        (840..1000).contains(&by_b),
        "B committed {by_b}: the scenario needs a commit between 840 and 999"
    );

    // A again, on its own data dir, and one more record.
    let a = Worker::start(events_app(), worker_options(dir_a.path(), &broker))
        .await
        .expect("worker a again");
    produce_events(&bootstrap, 1);
    wait_committed(&bootstrap, 1001).await;
    a.stop().await.expect("A stops cleanly");
    let counts = EVENT_COUNTS.read_local(dir_a.path(), "returning").expect("table");
    assert_eq!(counts["k"], 1001, "every record counted once (B committed at {by_b})");
}

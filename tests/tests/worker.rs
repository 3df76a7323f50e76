//! What a worker promises beyond counting: it refuses topics that do not fit its
//! declarations, drops lost partitions without committing, keeps a bad record's headers
//! on the dead-letter topic, and hands each record to its own partition's task, in order.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use streams_core::broker::{RDKafkaApiKey, RDKafkaRespErr};
use streams_core::prelude::*;
use streams_core::{EmbeddedBroker, Worker};
use streams_tests::{committed, create_app_topics, produce, produce_raw, read_all, wait_until, worker_options, Raw};

fn log() {
    streams_core::init_logging(&std::env::var("STREAMS_TEST_LOG").unwrap_or_else(|_| "error".into()));
}

#[record]
struct Reading {
    celsius: f64,
}

const READINGS: Topic<String, Reading> = Topic::new("readings").partitions(4);
const LAST: Table<String, f64> = Table::new("last-reading");

/// Keeps each probe's last reading; a reading below absolute zero removes the probe.
#[agent(topic = READINGS, tables = [LAST])]
async fn keep_last(mut readings: Stream<String, Reading>) -> Result<()> {
    while let Some(event) = readings.next_event().await {
        if event.value.celsius < -273.15 {
            LAST.delete(&event.key).await?;
        } else {
            LAST.set(&event.key, event.value.celsius).await?;
        }
    }
    Ok(())
}

fn app() -> App {
    App::new("thermo").agent(keep_last)
}

/// A topic that exists with another partition count than declared stops the worker at
/// start, with a message naming the topic and both counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_another_partition_count_is_refused_at_start() {
    log();
    let broker = EmbeddedBroker::start().expect("broker");
    broker.create_topic("readings", 2).expect("topic");
    let dir = tempfile::tempdir().expect("dir");
    let error = match Worker::start(app(), worker_options(dir.path(), &broker)).await {
        Ok(worker) => {
            let _ = worker.stop().await;
            panic!("the worker started although `readings` has 2 partitions, not 4");
        }
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("`readings` has 2 partitions on the broker but is declared with 4"),
        "{error}"
    );
}

/// A table partition whose store cannot be opened (here a file stands where its directory
/// goes) fails the worker with an error naming the store, once its opens are retried (the
/// stores of an assignment are opened side by side); the worker does not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_opened_fails_the_worker_naming_it() {
    log();
    let broker = EmbeddedBroker::start().expect("broker");
    broker.create_topic("readings", 4).expect("topic");
    create_app_topics(&broker, &app());
    let dir = tempfile::tempdir().expect("dir");
    let tables = dir.path().join("thermo").join("tables").join("last-reading");
    std::fs::create_dir_all(&tables).expect("tables dir");
    std::fs::write(tables.join("2"), b"not a store").expect("file");
    let worker = Worker::start(app(), worker_options(dir.path(), &broker))
        .await
        .expect("the worker starts");
    let outcome = tokio::time::timeout(Duration::from_secs(60), worker.wait())
        .await
        .expect("the worker stops on its own");
    let error = match outcome {
        Ok(_) => panic!("the worker ended without an error"),
        Err(error) => error.to_string(),
    };
    let path = tables.join("2");
    assert!(
        error.contains("cannot take over partitions") && error.contains(&path.display().to_string()),
        "{error}"
    );
}

/// A record that cannot be decoded goes to the dead-letter topic with its own headers
/// kept, the origin and error headers added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_keeps_the_original_headers() {
    log();
    let broker = EmbeddedBroker::start().expect("broker");
    create_app_topics(&broker, &app());
    let bootstrap = broker.bootstrap_servers().to_string();
    produce_raw(
        &bootstrap,
        "readings",
        &[Raw {
            partition: 1,
            key: "probe-7".into(),
            value: "{\"celsius\": \"warm\"}".into(),
            headers: vec![
                ("trace-id".into(), "abc-123".into()),
                ("source".into(), "probe firmware 2.1".into()),
            ],
        }],
    );
    let dir = tempfile::tempdir().expect("dir");
    let worker = Worker::start(app(), worker_options(dir.path(), &broker))
        .await
        .expect("worker");
    let dlq = "thermo-keep_last-dlq".to_string();
    let probe = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("the dead letter", Duration::from_secs(60), || {
            streams_tests::record_count(&probe, &dlq) == 1
        })
    })
    .await
    .expect("wait");
    worker.stop().await.expect("stop");
    let dead = read_all(&bootstrap, "thermo-keep_last-dlq");
    let headers = &dead[0].header_list;
    assert_eq!(
        &headers[..2],
        &[
            ("trace-id".to_string(), "abc-123".to_string()),
            ("source".to_string(), "probe firmware 2.1".to_string())
        ],
        "the original headers come first, unchanged"
    );
    assert_eq!(dead[0].headers["streams.dlq.topic"], "readings");
    assert_eq!(dead[0].headers["streams.dlq.partition"], "1");
    let error = &dead[0].headers["streams.dlq.error"];
    assert!(error.contains("invalid JSON") && error.contains("warm"), "{error}");
    assert_eq!(dead[0].value.as_deref(), Some(b"{\"celsius\": \"warm\"}".as_slice()));
}

/// When the group goes on without the worker (its coordinator no longer knows the member,
/// as after a session timeout), its partitions are lost: dropped without a commit, so the
/// records it processed meanwhile are processed again once it has rejoined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_partitions_are_dropped_without_a_commit() {
    log();
    let broker = EmbeddedBroker::start().expect("broker");
    // A long commit interval: the only commits would be those of revoked partitions.
    let app = app().commit_interval(Duration::from_secs(3600));
    create_app_topics(&broker, &app);
    let bootstrap = broker.bootstrap_servers().to_string();
    let readings: Vec<(Option<String>, Vec<u8>)> = (0..100)
        .map(|i| (Some(format!("probe-{i}")), format!("{{\"celsius\": {i}}}").into_bytes()))
        .collect();
    produce(&bootstrap, "readings", &readings);

    let dir = tempfile::tempdir().expect("dir");
    let worker = Worker::start(app, worker_options(dir.path(), &broker))
        .await
        .expect("worker");
    let metrics = worker.metrics();
    let seen = std::sync::Arc::clone(&metrics);
    tokio::task::spawn_blocking(move || {
        wait_until("100 records", Duration::from_secs(60), || {
            seen.records.load(Ordering::Relaxed) >= 100
        })
    })
    .await
    .expect("wait");
    assert_eq!(metrics.lost.load(Ordering::Relaxed), 0);

    // The coordinator forgets the member: librdkafka treats the assignment as lost.
    broker
        .fail_requests(
            RDKafkaApiKey::Heartbeat,
            vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID],
        )
        .expect("fail a heartbeat");
    let seen = std::sync::Arc::clone(&metrics);
    tokio::task::spawn_blocking(move || {
        wait_until("the lost partitions processed again", Duration::from_secs(60), || {
            seen.lost.load(Ordering::Relaxed) == 4 && seen.records.load(Ordering::Relaxed) >= 200
        })
    })
    .await
    .expect("wait");
    for partition in 0..4 {
        assert_eq!(
            committed(&bootstrap, "thermo", "readings", partition),
            0,
            "readings[{partition}] was committed although it was lost"
        );
    }
    worker.stop().await.expect("stop");
    let total: i64 = (0..4).map(|p| committed(&bootstrap, "thermo", "readings", p)).sum();
    assert_eq!(total, 100, "the clean stop commits every partition");
    assert_eq!(LAST.read_local(dir.path(), "thermo").expect("table").len(), 100);
}

/// A deleted key is a tombstone in the changelog, and a worker that restores the table from
/// it (an empty data dir) does not have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_stays_deleted_after_a_restore_from_kafka() {
    log();
    let broker = EmbeddedBroker::start().expect("broker");
    create_app_topics(&broker, &app());
    let bootstrap = broker.bootstrap_servers().to_string();
    let reading = |probe: &str, celsius: f64| {
        (
            Some(probe.to_string()),
            format!("{{\"celsius\": {celsius}}}").into_bytes(),
        )
    };
    produce(
        &bootstrap,
        "readings",
        &[reading("probe-1", 20.0), reading("probe-2", 30.0)],
    );
    produce(&bootstrap, "readings", &[reading("probe-1", -300.0)]);
    let first = tempfile::tempdir().expect("dir");
    let worker = Worker::start(app(), worker_options(first.path(), &broker))
        .await
        .expect("worker");
    let probe = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        streams_tests::wait_caught_up(&probe, "thermo", &["readings"], Duration::from_secs(60))
    })
    .await
    .expect("wait");
    worker.stop().await.expect("stop");
    let changelog = read_all(&bootstrap, "thermo-last-reading-changelog");
    assert!(
        changelog
            .iter()
            .any(|r| r.key.as_deref() == Some(b"probe-1".as_slice()) && r.value.is_none()),
        "a tombstone for probe-1"
    );

    let empty = tempfile::tempdir().expect("dir");
    let worker = Worker::start(app(), worker_options(empty.path(), &broker))
        .await
        .expect("worker");
    let metrics = worker.metrics();
    tokio::task::spawn_blocking(move || {
        wait_until("restored and running", Duration::from_secs(60), || {
            metrics.assigned.load(Ordering::Relaxed) == 4
        })
    })
    .await
    .expect("wait");
    let metrics = worker.stop().await.expect("stop");
    // probe-2 and the tombstone of probe-1, and probe-1's first value when a cut fell
    // between its two readings (the first worker may take them in two fetches).
    let count = |key: &[u8], tombstone: bool| {
        changelog
            .iter()
            .filter(|r| r.key.as_deref() == Some(key) && r.value.is_none() == tombstone)
            .count()
    };
    assert_eq!(
        (
            count(b"probe-2", false),
            count(b"probe-1", true),
            count(b"probe-2", true)
        ),
        (1, 1, 0)
    );
    assert!(count(b"probe-1", false) <= 1);
    assert_eq!(
        changelog.len(),
        2 + count(b"probe-1", false),
        "nothing else, nothing twice"
    );
    assert_eq!(
        metrics.restored.load(Ordering::Relaxed),
        changelog.len() as u64,
        "every changelog record restored"
    );
    let table = LAST.read_local(empty.path(), "thermo").expect("table");
    assert_eq!(table.get("probe-1"), None, "deleted after the restore");
    assert_eq!(table.get("probe-2"), Some(&30.0));
}

const BULK: Topic<String, Reading> = Topic::new("bulk-readings").partitions(16);
const LATEST: Table<String, f64> = Table::new("latest-bulk");

/// Keeps each probe's last reading (many probes, long names).
#[agent(topic = BULK, tables = [LATEST])]
async fn keep_latest(mut readings: Stream<String, Reading>) -> Result<()> {
    while let Some(event) = readings.next_event().await {
        LATEST.set(&event.key, event.value.celsius).await?;
    }
    Ok(())
}

/// The RocksDB stores of a worker share one memory budget (`--state-memory`): 16 partitions
/// of a table given ~26 MB of keys keep their block cache and memtables, all together, near
/// 16 MiB (each partition's memtables alone may take 8 MiB without it), the memtables are
/// counted in it, and no key is lost. The bound is RocksDB's: a store flushes its memtables
/// at its next write once the total is over, so a budget must hold what one round of commits
/// writes, and the memtables that wait for their flush: the budget holds once they are
/// written, and on the way within twice the budget. The table caches in front of the stores are sized from it too, with the default
/// `table_cache_bytes` (1 MiB each): the 16 partitions share a sixteenth of the budget, 64 KiB
/// each (each cache would hold ~2.7 MB of these keys by the end without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_share_one_memory_budget() {
    log();
    let broker = EmbeddedBroker::start().expect("broker");
    let app = || App::new("bulk").agent(keep_latest);
    create_app_topics(&broker, &app());
    let bootstrap = broker.bootstrap_servers().to_string();
    let name = "x".repeat(90);
    let records: Vec<(Option<String>, Vec<u8>)> = (0..200_000)
        .map(|i| {
            (
                Some(format!("probe-{i:07}-{name}")),
                format!("{{\"celsius\": {i}.5}}").into_bytes(),
            )
        })
        .collect();
    produce(&bootstrap, "bulk-readings", &records);
    let dir = tempfile::tempdir().expect("dir");
    let budget = 16 << 20;
    let options = worker_options(dir.path(), &broker).state_memory(budget);
    let worker = Worker::start(app(), options).await.expect("worker");
    let metrics = worker.metrics();
    let probe = bootstrap.clone();
    let caught_up = tokio::task::spawn_blocking(move || {
        streams_tests::wait_caught_up(&probe, "bulk", &["bulk-readings"], Duration::from_secs(120))
    });
    let mut peak = 0;
    while !caught_up.is_finished() {
        peak = peak.max(metrics.state_memory_bytes.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    caught_up.await.expect("wait");
    peak = peak.max(metrics.state_memory_bytes.load(Ordering::Relaxed));
    // Once the memtables waiting for their flush are written, what is left holds within the
    // budget (without its flushes the memtables would keep all ~26 MB of keys).
    let mut settled = (metrics.state_memory_bytes.load(Ordering::Relaxed), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(60);
    while settled.1.elapsed() < Duration::from_secs(2) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = metrics.state_memory_bytes.load(Ordering::Relaxed);
        if now != settled.0 {
            settled = (now, Instant::now());
        }
    }
    assert_eq!(metrics.state_memory_limit_bytes.load(Ordering::Relaxed), budget as u64);
    assert!(peak >= 1 << 20, "the memtables are counted in the budget: {peak} bytes");
    assert!(
        settled.0 <= budget as u64,
        "{} bytes in RocksDB's shared memory, settled, for a budget of {budget}",
        settled.0
    );
    // On the way the bound is soft: besides a round of commits' writes, memtables waiting
    // for their flush count until written, which a disk busy with another program's syncs
    // delays (peaks of 1.0x-1.65x the budget here with `dd ... conv=fsync` in a loop; 1.30x
    // in a `make test` of a fresh clone).
    assert!(
        peak <= budget as u64 * 2,
        "{peak} bytes in RocksDB's shared memory for a budget of {budget}"
    );
    // A cache is at its largest at a cut: up to its budget of dirty and clean entries, the
    // pinned entries of the cut before, and the record that passed the budget.
    let share = (budget / 16 / 16) as u64;
    let cache_peak = metrics.cache_peak_bytes.load(Ordering::Relaxed);
    assert!(cache_peak > 0, "the caches were used");
    assert!(
        cache_peak <= 2 * share + 1024,
        "a table partition's cache reached {cache_peak} bytes; its share of the budget is {share}"
    );
    worker.stop().await.expect("stop");
    assert_eq!(
        LATEST.read_local(dir.path(), "bulk").expect("table").len(),
        200_000,
        "every key kept"
    );
}

/// A record as the routing test writes it: the partition it was written to and its place
/// there.
#[record]
struct Mark {
    partition: i32,
    seq: i64,
}

const LEFT: Topic<String, Mark> = Topic::new("left").partitions(1);
const RIGHT: Topic<String, Mark> = Topic::new("right").partitions(4);
const ROUTES: Topic<String, String> = Topic::new("routes").partitions(1);

/// What a task saw: `{topic} {its partition} {the record's partition} {seq} {offset}`.
async fn route(stream: &mut Stream<String, Mark>, topic: &str) -> Result<()> {
    while let Some(event) = stream.next_event().await {
        let line = format!(
            "{topic} {} {} {} {}",
            event.origin.partition, event.value.partition, event.value.seq, event.origin.offset
        );
        ROUTES
            .send(&format!("{topic}/{}", event.origin.partition), &line)
            .await?;
    }
    Ok(())
}

#[agent(topic = LEFT, sends = [ROUTES])]
async fn route_left(mut marks: Stream<String, Mark>) -> Result<()> {
    route(&mut marks, "left").await
}

#[agent(topic = RIGHT, sends = [ROUTES])]
async fn route_right(mut marks: Stream<String, Mark>) -> Result<()> {
    route(&mut marks, "right").await
}

/// One consumer takes the records of two topics, one with one partition and one with four
/// (partition 0 in both): each record reaches the task of its own topic and partition,
/// once, in the partition's order. (How a take's records are put into their partitions'
/// batches is checked on every kind of take by the property test in `worker/runs.rs`; here,
/// which records a fetch brings together is up to librdkafka.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_taken_together_reach_their_partitions_tasks_in_order() {
    log();
    let broker = EmbeddedBroker::start().expect("broker");
    let app = App::new("routing").agent(route_left).agent(route_right);
    create_app_topics(&broker, &app);
    let bootstrap = broker.bootstrap_servers().to_string();
    // Partitions in turn, a few records each (from 1 to 7), sent in four rounds while the
    // worker runs.
    const PER_PARTITION: i64 = 300;
    const PARTITIONS: [i32; 2] = [1, 4];
    let mut marks: Vec<Vec<Raw>> = vec![Vec::new(), Vec::new()];
    let mut next = [[0i64; 4]; 2];
    let mut turn = 0usize;
    while (0..2).any(|t| next[t][..PARTITIONS[t] as usize].iter().any(|n| *n < PER_PARTITION)) {
        let topic = turn % 2;
        let partition = (turn / 2) as i32 % PARTITIONS[topic];
        for _ in 0..=(turn % 7) {
            let seq = &mut next[topic][partition as usize];
            if *seq < PER_PARTITION {
                marks[topic].push(Raw {
                    partition,
                    key: format!("k{seq}"),
                    value: format!("{{\"partition\": {partition}, \"seq\": {seq}}}"),
                    headers: Vec::new(),
                });
                *seq += 1;
            }
        }
        turn += 1;
    }
    let dir = tempfile::tempdir().expect("dir");
    let worker = Worker::start(app, worker_options(dir.path(), &broker))
        .await
        .expect("worker");
    for chunk in 0..4 {
        for (topic, name) in ["left", "right"].iter().enumerate() {
            let part = marks[topic].len() / 4;
            let end = if chunk == 3 {
                marks[topic].len()
            } else {
                part * (chunk + 1)
            };
            produce_raw(&bootstrap, name, &marks[topic][part * chunk..end]);
        }
    }
    let total = (5 * PER_PARTITION) as u64;
    let metrics = worker.metrics();
    tokio::task::spawn_blocking(move || {
        wait_until("every record", Duration::from_secs(60), || {
            metrics.records.load(Ordering::Relaxed) >= total
        })
    })
    .await
    .expect("wait");
    worker.stop().await.expect("stop");
    // By topic and task partition: each record's own partition, its seq and its offset.
    type Seen = Vec<(i32, i64, i64)>;
    let mut seen: std::collections::BTreeMap<(String, i32), Seen> = Default::default();
    for read in read_all(&bootstrap, "routes") {
        let line: String = serde_json::from_slice(&read.value.expect("a value")).expect("a JSON string");
        let fields: Vec<&str> = line.split(' ').collect();
        let number = |i: usize| fields[i].parse::<i64>().expect("a number");
        seen.entry((fields[0].to_string(), number(1) as i32))
            .or_default()
            .push((number(2) as i32, number(3), number(4)));
    }
    assert_eq!(seen.len(), 5, "every partition's task saw records: {:?}", seen.keys());
    for ((topic, partition), records) in &seen {
        let expected: Vec<(i32, i64, i64)> = (0..PER_PARTITION).map(|n| (*partition, n, n)).collect();
        assert_eq!(
            records, &expected,
            "{topic}[{partition}]: each record of the partition once, in order, and no other's"
        );
    }
}

const LINGER_IN: Topic<String, i64> = Topic::new("linger-in").partitions(1);

/// Reads its stream to its end, then goes on a long while holding it.
#[agent(topic = LINGER_IN)]
async fn linger(mut numbers: Stream<String, i64>) -> Result<()> {
    // Slower than the consumer: its queue fills.
    while numbers.next_event().await.is_some() {
        std::thread::sleep(Duration::from_micros(200));
    }
    tokio::time::sleep(Duration::from_secs(300)).await;
    Ok(())
}

/// A record that stops the worker (`OnError::Fail`) ends its agent's stream; an agent that
/// goes on after its stream ended, holding it, does not keep the worker from stopping: the
/// task's queue is closed, so the records still coming for it do not hold the consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stops_at_a_bad_record_though_its_agent_lingers() {
    log();
    let app = || {
        App::new("lingering")
            .agent(linger)
            .on_deserialization_error(OnError::Fail)
    };
    let broker = EmbeddedBroker::start().expect("broker");
    create_app_topics(&broker, &app());
    let bootstrap = broker.bootstrap_servers().to_string();
    // The bad record halfway: the poll thread has filled the task's queue by then, and waits
    // for room in it.
    let good = |n: i32| (Some(format!("k{n}")), n.to_string().into_bytes());
    let mut records: Vec<_> = (0..20_000).map(good).collect();
    records.push((Some("bad".to_string()), b"not a number".to_vec()));
    records.extend((20_000..120_000).map(good));
    produce(&bootstrap, "linger-in", &records);
    let dir = tempfile::tempdir().expect("dir");
    let worker = Worker::start(app(), worker_options(dir.path(), &broker))
        .await
        .expect("worker");
    let ended = tokio::time::timeout(Duration::from_secs(60), worker.wait())
        .await
        .expect("the worker stops though its agent lingers");
    let error = ended.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("linger-in[0]@20000"), "{error}");
    let committed = committed(&bootstrap, "lingering", "linger-in", 0);
    assert!(committed <= 20_000, "committed past the bad record: {committed}");
}

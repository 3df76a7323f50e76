//! The peers `make bench` measures against, on the same inputs and the same kind of broker
//! (tansu, one of its own per case), one after the other: **(p)** Faust running the seed
//! pipeline (`hit_counter.py`), beside (c); **(q)** Quix Streams running `hits_per_window`
//! (`hits_per_window_quix.py`), beside (f).
//!
//! A peer runs in a process of its own, from a Python venv set up once per machine (PyPI).
//! Its CPU (user + sys of all its threads, from `/proc`) is counted from the moment its
//! input begins to be produced, once it has started and gone idle, to the end of its last
//! busy quarter second after it has processed everything, less what it uses idle over that
//! time (measured before). Our cases count from their first record to their last: both
//! leave out start-up and the group join.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use streams_examples::tools::{build_dir, venv, FAUST, QUIX_STREAMS};

use super::{
    check_minutes_closed_by, free_port, produce, produce_spread, read_topic, start_broker_with, Figure, PARTITIONS,
};

/// How long a peer may take to start, and to process its input.
const START_WAIT: Duration = Duration::from_secs(180);
const PROCESS_WAIT: Duration = Duration::from_secs(1200);
/// How often the peer's CPU is sampled, and how long it must be quiet once done.
const SAMPLE: Duration = Duration::from_millis(250);
const QUIET: Duration = Duration::from_secs(3);
/// Above its idle rate by this much of a core, a sample counts as busy.
const BUSY: f64 = 0.05;

/// The peers' programs: this folder.
fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// A peer's process, its output in a log file; killed when dropped.
struct Peer {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// Starts `command`, its stdout and stderr to a log in a folder of its own (which it
    /// gets as `data`, for its state).
    fn start(mut command: Command, data: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log = dir.path().join("peer.log");
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        command
            .env(data, dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command.spawn().map_err(|e| format!("{command:?}: {e}"))?;
        Ok(Self { child, log, _dir: dir })
    }

    /// Its output so far.
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its output's last lines, for an error.
    fn tail(&self) -> String {
        let output = self.output();
        let lines: Vec<&str> = output.lines().rev().take(15).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// An error if it has exited.
    fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("it exited ({status}):\n{}", self.tail())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// CPU seconds (user + sys) it has used so far, all its threads.
    fn cpu(&self) -> Result<f64, String> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        Ok(super::stat_cpu_seconds(&stat))
    }

    /// Waits until its output has `line`.
    fn wait_for(&mut self, line: &str) -> Result<(), String> {
        let deadline = Instant::now() + START_WAIT;
        while !self.output().contains(line) {
            self.alive()?;
            if Instant::now() > deadline {
                return Err(format!("no `{line}` within {START_WAIT:?}:\n{}", self.tail()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Waits until it uses less than [`BUSY`] of a core over a second; then its CPU per
    /// second idle, over two seconds.
    fn idle_rate(&mut self) -> Result<f64, String> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            self.alive()?;
            let before = self.cpu()?;
            std::thread::sleep(Duration::from_secs(1));
            if self.cpu()? - before < BUSY {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("still busy {START_WAIT:?} after it started:\n{}", self.tail()));
            }
        }
        let (began, before) = (Instant::now(), self.cpu()?);
        std::thread::sleep(Duration::from_secs(2));
        Ok((self.cpu()? - before) / began.elapsed().as_secs_f64())
    }

    /// Samples its CPU until `done` holds (asked at most once a second) and it has been
    /// quiet for [`QUIET`] since: the time and CPU from `start` to the end of its last busy
    /// sample, less `idle` per second over that time.
    fn measure(
        &mut self,
        start: (Instant, f64),
        idle: f64,
        mut done: impl FnMut() -> Result<bool, String>,
    ) -> Result<(f64, f64), String> {
        let (began, cpu_then) = start;
        let mut last = (began, cpu_then);
        let mut busy_until = last;
        let mut finished = false;
        let mut asked = Instant::now();
        loop {
            self.alive()?;
            std::thread::sleep(SAMPLE);
            let now = (Instant::now(), self.cpu()?);
            let rate = (now.1 - last.1) / now.0.duration_since(last.0).as_secs_f64();
            if rate > idle + BUSY {
                busy_until = now;
            }
            last = now;
            if !finished && asked.elapsed() >= Duration::from_secs(1) {
                asked = Instant::now();
                finished = done()?;
            }
            if finished && busy_until.0.elapsed() >= QUIET {
                break;
            }
            if began.elapsed() > PROCESS_WAIT {
                return Err(format!("not done within {PROCESS_WAIT:?}:\n{}", self.tail()));
            }
        }
        let seconds = busy_until.0.duration_since(began).as_secs_f64();
        Ok((seconds, busy_until.1 - cpu_then - idle * seconds))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A venv's Python, or why the peer is skipped (no Python, or PyPI out of reach).
fn python(venv_name: &str, package: &str) -> Result<PathBuf, String> {
    venv(&build_dir().join(venv_name), &[package])
}

/// (p) Faust running the seed pipeline (`faust -A hit_counter worker`) on `records`, as
/// (c) does: the input on 8 partitions, `count_topic` and the table's changelog on 8. Done
/// when its table holds every user's count (`GET /counts/`). `None`: skipped (no Python
/// with Faust, or no tansu).
pub(super) fn faust_seed(records: &[serde_json::Value]) -> Result<Option<Figure>, String> {
    let python = match python("faust-venv", FAUST) {
        Ok(python) => python,
        Err(why) => {
            println!("(p) skipped: {why}");
            return Ok(None);
        }
    };
    let broker = start_broker_with(true, &[("hit_count", PARTITIONS)])?;
    if !broker.tansu {
        println!("(p) skipped: Faust runs on tansu here (the embedded broker creates no topic on request)");
        return Ok(None);
    }
    println!("running (p) Faust: the seed pipeline");
    let port = free_port();
    let mut command = Command::new(python.with_file_name("faust"));
    command
        .args(["-A", "hit_counter", "worker", "-l", "info"])
        .current_dir(peers_dir())
        .env("PYTHONPATH", peers_dir())
        .env("FAUST_BROKER", format!("kafka://{}", broker.bootstrap))
        .env("FAUST_WEB_PORT", port.to_string())
        .env("FAUST_PARTITIONS", PARTITIONS.to_string());
    let mut faust = Peer::start(command, "FAUST_DATADIR").map_err(|e| format!("(p) Faust: {e}"))?;
    faust
        .wait_for("[^Worker]: Ready")
        .map_err(|e| format!("(p) Faust did not start: {e}"))?;
    let idle = faust.idle_rate().map_err(|e| format!("(p) Faust: {e}"))?;
    let start = (Instant::now(), faust.cpu()?);
    let produced = produce(
        &broker.bootstrap,
        "hit_count",
        records.iter().map(|r| (None, r.to_string())),
    )?;
    let wanted = streams_examples::seed::expected_counts(records);
    let (seconds, cpu) = faust
        .measure(start, idle, || Ok(faust_counts(port).as_ref() == Some(&wanted)))
        .map_err(|e| format!("(p) Faust: {e}"))?;
    println!(
        "(p) Faust's table on {}: every user's count exact; idle it used {:.2} ms of CPU per second",
        broker.name,
        idle * 1e3
    );
    Ok(Some(Figure {
        name: "(p) Faust: the seed pipeline (peer of (c))",
        records: produced,
        seconds,
        cpu,
    }))
}

/// Faust's table, from its web page (`None` while it does not answer).
fn faust_counts(port: u16) -> Option<BTreeMap<String, i64>> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream
        .write_all(b"GET /counts/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then_some(())?;
    serde_json::from_str(body).ok()
}

/// (q) Quix Streams running `hits_per_window` on (f)'s input (`hits`, as `inputs`), on one
/// partition as (f). Done when its group has committed the whole input; its closed minutes
/// are then checked as (f)'s, each user's closed by that user's last record (its rule). `None`: skipped (no Python with Quix Streams, or no tansu).
pub(super) fn quix_windows(
    hits: &[(String, i64, i64)],
    inputs: &[String],
    failures: &mut Vec<String>,
) -> Result<Option<Figure>, String> {
    let python = match python("quix-venv", QUIX_STREAMS) {
        Ok(python) => python,
        Err(why) => {
            println!("(q) skipped: {why}");
            return Ok(None);
        }
    };
    let broker = start_broker_with(true, &[("hit_count", 1)])?;
    if !broker.tansu {
        println!("(q) skipped: Quix Streams runs on tansu here (the embedded broker creates no topic on request)");
        return Ok(None);
    }
    println!("running (q) Quix Streams: hits_per_window");
    let mut command = Command::new(python);
    command
        .arg(peers_dir().join("hits_per_window_quix.py"))
        .env("QUIX_BROKER", &broker.bootstrap);
    let mut quix = Peer::start(command, "QUIX_STATE_DIR").map_err(|e| format!("(q) Quix Streams: {e}"))?;
    quix.wait_for("is now processing incoming messages")
        .map_err(|e| format!("(q) Quix Streams did not start: {e}"))?;
    let idle = quix.idle_rate().map_err(|e| format!("(q) Quix Streams: {e}"))?;
    let start = (Instant::now(), quix.cpu()?);
    let produced = produce_spread(
        &broker.bootstrap,
        "hit_count",
        1,
        inputs.iter().map(|v| (None, v.clone())),
    )?;
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "quix_hits_per_window")
        .create()
        .map_err(|e| e.to_string())?;
    let (seconds, cpu) = quix
        .measure(start, idle, || Ok(committed(&group, "hit_count")? >= produced as i64))
        .map_err(|e| format!("(q) Quix Streams: {e}"))?;
    // Its default closes a key's windows at that key's next record, not as the partition's
    // stream time passes them (`closing_strategy="partition"`, Kafka Streams' rule, makes it
    // scan every key's windows at each record).
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (user, _, time) in hits {
        let slot = last.entry(user.as_str()).or_insert(*time);
        *slot = (*slot).max(*time);
    }
    let sent = read_topic(&broker.bootstrap, "hits-per-minute")?;
    let (wrong, extra, closed) = check_minutes_closed_by(hits, sent, |user| last.get(user).copied().unwrap_or(0))?;
    println!(
        "(q) Quix Streams' windows on {}: {wrong} of {closed} closed minute windows wrong, {extra} sent that \
         should not be; idle it used {:.2} ms of CPU per second",
        broker.name,
        idle * 1e3
    );
    if wrong + extra > 0 {
        failures.push(format!(
            "(q) Quix Streams sent other minutes than (f) must: {wrong} wrong or missing, {extra} extra (the \
             comparison does not hold)"
        ));
    }
    Ok(Some(Figure {
        name: "(q) Quix Streams: hits_per_window (peer of (f))",
        records: produced,
        seconds,
        cpu,
    }))
}

/// The offset `group`'s group has committed on partition 0 of `topic` (0 before any).
fn committed(group: &BaseConsumer, topic: &str) -> Result<i64, String> {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, 0);
    let committed = group
        .committed_offsets(list, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Ok(committed
        .elements()
        .first()
        .and_then(|element| match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        })
        .unwrap_or(0))
}

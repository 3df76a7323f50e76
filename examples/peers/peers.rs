//! The peers `make bench` measures against, on the same inputs and the same kind of broker
//! (tansu, one of its own per case), one after the other: **(p)** Faust running the seed
//! pipeline (`hit_counter.py`), beside (c); **(q)** Quix Streams running `hits_per_window`
//! (`hits_per_window_quix.py`), beside (f).
//!
//! A peer runs in a process of its own, from a Python venv set up once per machine (PyPI).
//! Its CPU (user + sys of all its threads, from `/proc`) is counted from the moment its
//! input begins to be produced, once it holds its partitions (Faust: its "Ready"; Quix
//! Streams: its assignment) and has gone idle, to the end of its last busy quarter second
//! after it has processed everything, less what it uses idle over that time (measured
//! before). Our cases count from their first record to their last: neither counts start-up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use streams_examples::tools::{build_dir, faust_counts, set_up_venv, VenvError, FAUST, QUIX_STREAMS};

use super::{
    check_minutes_closed_by, free_port, produce, produce_spread, read_topic, start_broker_with, tansu_wanted, Figure,
    PARTITIONS,
};

/// How long a peer may take to start; to process its input, this and [`PER_RECORD`] each.
const START_WAIT: Duration = Duration::from_secs(180);
const PER_RECORD: Duration = Duration::from_millis(10);
/// How often the peer's CPU is sampled, and how long it must be quiet once done.
const SAMPLE: Duration = Duration::from_millis(250);
const QUIET: Duration = Duration::from_secs(3);
/// Above its idle rate by this much of a core, a sample counts as busy.
const BUSY: f64 = 0.05;

/// When, and a peer's CPU then: in ticks ([`Peer::cpu`]) and to the nanosecond
/// ([`Peer::cpu_fine`]).
type Sample = (Instant, f64, f64);

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

    /// Starts `command` as [`Peer::start`] does, waits until its output has `line` (it holds
    /// its partitions) and it has gone idle: the peer, its idle CPU per second, and the
    /// sample its measurement starts from. `name` names the case in errors.
    fn ready(command: Command, data: &str, line: &str, name: &str) -> Result<(Self, f64, Sample), String> {
        let mut peer = Self::start(command, data).map_err(|e| format!("{name}: {e}"))?;
        peer.wait_for(line).map_err(|e| format!("{name} did not start: {e}"))?;
        let idle = peer.idle_rate().map_err(|e| format!("{name}: {e}"))?;
        let start = peer.sample()?;
        Ok((peer, idle, start))
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

    /// CPU seconds (user + sys) it has used so far, all its threads, those that ended too
    /// (in ticks of 10 ms).
    fn cpu(&self) -> Result<f64, String> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        Ok(super::stat_cpu_seconds(&stat))
    }

    /// CPU seconds its live threads have used so far, to the nanosecond (to tell idle from
    /// busy, where [`Peer::cpu`]'s ticks are too coarse); [`Peer::cpu`] where the kernel
    /// keeps no scheduler statistics.
    fn cpu_fine(&self) -> Result<f64, String> {
        let path = format!("/proc/{}/task", self.child.id());
        let threads = std::fs::read_dir(&path).map_err(|e| format!("{path}: {e}"))?;
        let nanos: Option<u64> = threads
            .filter_map(|thread| std::fs::read_to_string(thread.ok()?.path().join("schedstat")).ok())
            .map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        match nanos {
            Some(nanos) if nanos > 0 => Ok(nanos as f64 / 1e9),
            _ => self.cpu(),
        }
    }

    /// Now, and its CPU both ways.
    fn sample(&self) -> Result<Sample, String> {
        Ok((Instant::now(), self.cpu()?, self.cpu_fine()?))
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
    /// second idle, over three seconds.
    fn idle_rate(&mut self) -> Result<f64, String> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            self.alive()?;
            let before = self.cpu_fine()?;
            std::thread::sleep(Duration::from_secs(1));
            if self.cpu_fine()? - before < BUSY {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("still busy {START_WAIT:?} after it started:\n{}", self.tail()));
            }
        }
        let (began, before) = (Instant::now(), self.cpu_fine()?);
        std::thread::sleep(Duration::from_secs(3));
        Ok((self.cpu_fine()? - before) / began.elapsed().as_secs_f64())
    }

    /// Samples its CPU until `done` holds (asked at most once a second; an error ends the
    /// case) and it has been quiet for [`QUIET`] since: the time and CPU from `start` to
    /// the end of its last busy sample, less `idle` per second over that time. It may take
    /// [`START_WAIT`] and [`PER_RECORD`] for each of `records`.
    fn measure(
        &mut self,
        start: Sample,
        idle: f64,
        records: usize,
        mut done: impl FnMut() -> Result<bool, String>,
    ) -> Result<(f64, f64), String> {
        let wait = START_WAIT + PER_RECORD * u32::try_from(records).unwrap_or(u32::MAX);
        let (began, cpu_then, _) = start;
        let mut last = start;
        let mut busy_until = None;
        let mut finished = false;
        let mut asked = Instant::now();
        loop {
            self.alive()?;
            std::thread::sleep(SAMPLE);
            let now = self.sample()?;
            let rate = (now.2 - last.2) / now.0.duration_since(last.0).as_secs_f64();
            if rate > idle + BUSY {
                busy_until = Some(now);
            }
            last = now;
            if !finished && asked.elapsed() >= Duration::from_secs(1) {
                asked = Instant::now();
                finished = done()?;
            }
            if finished && busy_until.is_none_or(|(when, ..)| when.elapsed() >= QUIET) {
                break;
            }
            if began.elapsed() > wait {
                return Err(format!("not done within {wait:?}:\n{}", self.tail()));
            }
        }
        let Some((until, cpu_until, _)) = busy_until else {
            return Err("done, but never busy: too little input to measure".into());
        };
        let seconds = until.duration_since(began).as_secs_f64();
        let cpu = cpu_until - cpu_then - idle * seconds;
        if cpu <= 0.0 {
            return Err(format!(
                "{cpu:.3} s of CPU over {seconds:.1} s: too little input to measure"
            ));
        }
        Ok((seconds, cpu))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A peer's Python, from the venv `venv_name` with `package`: `Ok(None)` when the case is
/// skipped (not on tansu, or no Python or PyPI here), an error when its set-up failed.
fn python(case: &str, venv_name: &str, package: &str) -> Result<Option<PathBuf>, String> {
    if !tansu_wanted() {
        println!("{case} skipped: the peers run on tansu here (the embedded broker creates no topic on request)");
        return Ok(None);
    }
    match set_up_venv(&build_dir().join(venv_name), &[package]) {
        Ok(python) => Ok(Some(python)),
        Err(VenvError::Unavailable(why)) => {
            println!("{case} skipped: {why}");
            Ok(None)
        }
        Err(VenvError::Failed(error)) => Err(error),
    }
}

/// (p) Faust running the seed pipeline (`faust -A hit_counter worker`) on `records`, as
/// (c) does: the input on 8 partitions, `count_topic` and the table's changelog on 8. Done
/// when its table holds every user's count (`GET /counts/`) and its group has committed the
/// whole input. `None`: skipped (no Python with Faust, or no tansu).
pub(super) fn faust_seed(records: &[serde_json::Value]) -> Result<Option<Figure>, String> {
    let Some(python) = python("(p)", "faust-venv", FAUST)? else {
        return Ok(None);
    };
    let broker = start_broker_with(true, &[("hit_count", PARTITIONS)])?;
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
    let (mut faust, idle, start) = Peer::ready(command, "FAUST_DATADIR", "[^Worker]: Ready", "(p) Faust")?;
    let produced = produce(
        &broker.bootstrap,
        "hit_count",
        records.iter().map(|r| (None, r.to_string())),
    )?;
    let wanted = streams_examples::seed::expected_counts(records);
    // `produce` spreads the input evenly, record n to partition n % PARTITIONS.
    let per_partition: Vec<i64> = (0..PARTITIONS as usize)
        .map(|p| (produced / PARTITIONS as usize + usize::from(p < produced % PARTITIONS as usize)) as i64)
        .collect();
    let group = consumer_of(&broker.bootstrap, "hit_counter")?;
    let done = || {
        let Some(counts) = faust_counts(port) else {
            return Ok(false);
        };
        if let Some((user, count)) = counts
            .iter()
            .find(|(user, count)| wanted.get(*user).is_none_or(|w| *count > w))
        {
            return Err(format!(
                "its table counts {count} for {user}, more than the input holds"
            ));
        }
        Ok(counts == wanted && committed(&group, "hit_count", PARTITIONS)? == per_partition)
    };
    let (seconds, cpu) = faust
        .measure(start, idle, produced, done)
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

/// (q) Quix Streams running `hits_per_window` on (f)'s input (`hits`, as `inputs`), on one
/// partition as (f). Done when its group has committed the whole input; its closed minutes
/// are then checked as (f)'s, each user's closed by that user's last record (its rule). `None`: skipped (no Python with Quix Streams, or no tansu).
pub(super) fn quix_windows(
    hits: &[(String, i64, i64)],
    inputs: &[String],
    failures: &mut Vec<String>,
) -> Result<Option<Figure>, String> {
    let Some(python) = python("(q)", "quix-venv", QUIX_STREAMS)? else {
        return Ok(None);
    };
    let broker = start_broker_with(true, &[("hit_count", 1)])?;
    println!("running (q) Quix Streams: hits_per_window");
    let mut command = Command::new(python);
    command
        .arg(peers_dir().join("hits_per_window_quix.py"))
        .env("QUIX_BROKER", &broker.bootstrap);
    let (mut quix, idle, start) = Peer::ready(command, "QUIX_STATE_DIR", "partitions assigned", "(q) Quix Streams")?;
    let produced = produce_spread(
        &broker.bootstrap,
        "hit_count",
        1,
        inputs.iter().map(|v| (None, v.clone())),
    )?;
    let group = consumer_of(&broker.bootstrap, "quix_hits_per_window")?;
    let (seconds, cpu) = quix
        .measure(start, idle, produced, || {
            Ok(committed(&group, "hit_count", 1)? == [produced as i64])
        })
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

/// A client of `group` that reads what the group committed (it does not join it).
fn consumer_of(bootstrap: &str, group: &str) -> Result<BaseConsumer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .map_err(|e| e.to_string())
}

/// The offsets `group`'s group has committed on the `partitions` partitions of `topic` (0
/// where none).
fn committed(group: &BaseConsumer, topic: &str, partitions: i32) -> Result<Vec<i64>, String> {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = group
        .committed_offsets(list, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut offsets = vec![0; usize::try_from(partitions).unwrap_or(0)];
    for element in committed.elements() {
        if let (Offset::Offset(offset), Ok(at)) = (element.offset(), usize::try_from(element.partition())) {
            if let Some(slot) = offsets.get_mut(at) {
                *slot = offset;
            }
        }
    }
    Ok(offsets)
}

//! Timers on the wall clock (every interval, cron patterns) and punctuation on stream time
//! (agents and DSL processors), through the test driver's two clocks, and a timer on a real
//! worker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use streams_core::prelude::*;
use streams_core::testing::TestDriver;
use streams_core::EmbeddedBroker;
use streams_tests::read_all;

const EVENTS: Topic<String, i64> = Topic::new("events").partitions(1);
const SEEN: Topic<String, i64> = Topic::new("seen").partitions(1);
const HEARTBEATS: Topic<String, i64> = Topic::new("heartbeats").partitions(1);

/// An app needs a task: this one copies `events` to `seen`.
fn copier(id: &str) -> App {
    App::new(id).pipeline("copy", |builder| {
        builder.stream(EVENTS).to(SEEN);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_run_on_the_drivers_clock_each_time_they_are_due() {
    static FAILURES: AtomicU64 = AtomicU64::new(0);
    let app = copier("clock")
        .timer(
            Timer::every("heartbeat", Duration::from_secs(10), |tick: Tick| async move {
                HEARTBEATS.send("beat", &tick.time).await
            })
            .sends(HEARTBEATS),
        )
        .timer(
            Timer::cron("five-minutes", "*/5 * * * *", |tick: Tick| async move {
                HEARTBEATS.send("cron", &tick.time).await
            })
            .sends(HEARTBEATS),
        )
        .timer(Timer::every(
            "flaky",
            Duration::from_secs(60),
            |tick: Tick| async move {
                FAILURES.fetch_add(1, Ordering::Relaxed);
                if tick.time == 60_000 {
                    panic!("the first run panics");
                }
                Err::<(), _>("and the others fail")
            },
        ));
    let mut driver = TestDriver::new(app).expect("driver");
    driver.run().await.expect("run");
    assert!(driver.raw_records("heartbeats").is_empty(), "nothing is due at 0");
    driver.advance_time(Duration::from_secs(35));
    driver.run().await.expect("run");
    let beats = |driver: &TestDriver, key: &str| -> Vec<i64> {
        driver
            .records(&HEARTBEATS)
            .expect("records")
            .into_iter()
            .filter(|(k, _)| k == key)
            .map(|(_, t)| t)
            .collect()
    };
    assert_eq!(beats(&driver, "beat"), vec![10_000, 20_000, 30_000]);
    // What a timer sends carries its due time.
    let stamps: Vec<i64> = driver.raw_records("heartbeats").iter().map(|r| r.timestamp).collect();
    assert_eq!(stamps, vec![10_000, 20_000, 30_000]);
    driver.advance_time(Duration::from_secs(16 * 60 - 35));
    driver.run().await.expect("run");
    assert_eq!(beats(&driver, "beat").len(), 96);
    assert_eq!(beats(&driver, "cron"), vec![300_000, 600_000, 900_000]);
    // A timer that panics or fails is logged and keeps its schedule.
    assert_eq!(FAILURES.load(Ordering::Relaxed), 16);
}

#[test]
fn a_cron_pattern_that_does_not_parse_stops_the_app_naming_it() {
    let app = copier("bad").timer(Timer::cron("report", "at noon", |_: Tick| async {}));
    let error = app.validate().expect_err("refused").to_string();
    assert!(error.contains("report") && error.contains("at noon"), "{error}");
    let twice = copier("twice")
        .timer(Timer::every("t", Duration::from_secs(1), |_: Tick| async {}))
        .timer(Timer::every("t", Duration::from_secs(2), |_: Tick| async {}));
    assert!(twice.validate().is_err());
}

#[record]
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    at: i64,
    value: i64,
}

const READINGS: Topic<String, Reading> = Topic::new("readings").partitions(1).event_time(|r| r.at);
const MINUTE_MAX: Topic<String, i64> = Topic::new("minute-max").partitions(1);

/// Keeps the largest value per key and sends them every minute of stream time.
#[agent(topic = READINGS, sends = [MINUTE_MAX])]
async fn minute_max(readings: Stream<String, Reading>) -> Result<()> {
    let mut readings = readings.punctuate(Duration::from_secs(60));
    let mut max: BTreeMap<String, i64> = BTreeMap::new();
    while let Some(next) = readings.next_event().await {
        match next {
            Next::Record(event) => {
                let slot = max.entry(event.key).or_insert(i64::MIN);
                *slot = (*slot).max(event.value.value);
            }
            Next::Tick(stream_time) => {
                for (key, value) in std::mem::take(&mut max) {
                    MINUTE_MAX.send(&key, &value).await?;
                }
                MINUTE_MAX.send("tick", &stream_time).await?;
            }
        }
    }
    Ok(())
}

fn reading(at: i64, value: i64) -> Reading {
    Reading { at, value }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_punctuates_on_stream_time() {
    let mut driver = TestDriver::new(App::new("maxima").agent(minute_max)).expect("driver");
    // Stream time: 10 s, 50 s, 61 s (passes 60 s: a tick after it), 30 s (late: stream time
    // stays), 130 s (passes 120 s: one tick, not one per minute skipped), 140 s.
    for (key, at, value) in [
        ("a", 10_000, 1),
        ("b", 50_000, 5),
        ("a", 61_000, 7),
        ("a", 30_000, 9),
        ("b", 130_000, 2),
        ("a", 140_000, 3),
    ] {
        driver.pipe(&READINGS, key, &reading(at, value)).expect("pipe");
    }
    driver.run().await.expect("run");
    let sent = driver.records(&MINUTE_MAX).expect("records");
    assert_eq!(
        sent,
        vec![
            ("a".to_string(), 7),
            ("b".to_string(), 5),
            ("tick".to_string(), 61_000),
            ("a".to_string(), 9),
            ("b".to_string(), 2),
            ("tick".to_string(), 130_000),
        ]
    );
}

/// Sums each key's values and sends the sums every minute of stream time.
#[derive(Default)]
struct MinuteSums(BTreeMap<String, i64>);

impl Processor<String, Reading> for MinuteSums {
    type Key = String;
    type Value = i64;
    fn process(&mut self, key: String, value: Reading, out: &mut Forward<'_, '_, String, i64>) {
        if value.value < 0 {
            out.forward(format!("negative {key}"), value.value);
        }
        *self.0.entry(key).or_default() += value.value;
    }
    fn punctuation(&self) -> Option<Duration> {
        Some(Duration::from_secs(60))
    }
    fn punctuate(&mut self, _stream_time: i64, out: &mut Forward<'_, '_, String, i64>) {
        for (key, sum) in std::mem::take(&mut self.0) {
            out.forward(key, sum);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_processor_forwards_and_punctuates_per_task() {
    const SUMS: Topic<String, i64> = Topic::new("sums").partitions(1);
    let app = App::new("sums").pipeline("sums", |builder| {
        builder
            .stream(READINGS)
            .process("minute-sums", MinuteSums::default)
            .to(SUMS);
    });
    assert!(app.topology().text().contains("minute-sums"));
    let mut driver = TestDriver::new(app).expect("driver");
    for (key, at, value) in [("a", 1_000, 1), ("b", 2_000, 2), ("a", 59_000, -3), ("a", 60_500, 10)] {
        driver.pipe(&READINGS, key, &reading(at, value)).expect("pipe");
    }
    driver.run().await.expect("run");
    let sent = driver.records(&SUMS).expect("records");
    assert_eq!(
        sent,
        vec![
            ("negative a".to_string(), -3),
            ("a".to_string(), 8),
            ("b".to_string(), 2),
        ],
        "the sums up to 60.5 s, sent after the record that passed 60 s"
    );
    let stamps: Vec<i64> = driver.raw_records("sums").iter().map(|r| r.timestamp).collect();
    assert_eq!(stamps, vec![59_000, 60_500, 60_500]);
}

#[test]
fn a_timer_runs_on_a_worker_and_what_it_sends_is_delivered() {
    streams_core::init_logging("error");
    let broker = EmbeddedBroker::start().expect("broker");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let app = copier("ticker").timer(
        Timer::every("heartbeat", Duration::from_millis(200), |tick: Tick| async move {
            HEARTBEATS.send("beat", &tick.time).await
        })
        .sends(HEARTBEATS),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let options = streams_tests::worker_options(dir.path(), &broker);
    runtime.block_on(async {
        let worker = streams_core::Worker::start(app, options).await.expect("worker");
        tokio::time::sleep(Duration::from_secs(3)).await;
        worker.stop().await.expect("stops");
    });
    let beats = read_all(broker.bootstrap_servers(), "heartbeats");
    assert!(beats.len() >= 5, "{} heartbeats in 3 s", beats.len());
    let times: Vec<i64> = beats
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().expect("value")).expect("a number"))
        .collect();
    // Due every 200 ms (a run late by more than that on this shared machine skips a time).
    assert!(
        times.windows(2).all(|w| w[1] > w[0] && (w[1] - w[0]) % 200 == 0),
        "{times:?}"
    );
}

/// Counts records per key and sends the counts every second of the wall clock, records or not.
#[derive(Default)]
struct CountsEverySecond(BTreeMap<String, i64>, i64);

impl Processor<String, i64> for CountsEverySecond {
    type Key = String;
    type Value = i64;
    fn process(&mut self, key: String, _: i64, _: &mut Forward<'_, '_, String, i64>) {
        *self.0.entry(key).or_default() += 1;
    }
    fn wall_clock_punctuation(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
    fn punctuate_wall_clock(&mut self, wall_time: i64, out: &mut Forward<'_, '_, String, i64>) {
        self.1 += 1;
        out.forward(format!("run {} at {wall_time}", self.1), 0);
        for (key, count) in &self.0 {
            out.forward(key.clone(), *count);
        }
    }
}

fn counting(id: &str) -> App {
    App::new(id).pipeline("counts", |builder| {
        builder
            .stream(EVENTS)
            .process("counts-every-second", CountsEverySecond::default)
            .to(SEEN);
    })
}

/// Wall-clock punctuation in a pipeline's processor, on the driver's clock: it runs when
/// the clock has passed the next whole second, at the driver's next run, without any record;
/// missed seconds are not made up; what it forwards carries the task's stream time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_processor_punctuates_on_the_wall_clock() {
    let mut driver = TestDriver::new(counting("wall")).expect("driver");
    let start = driver.now();
    driver.pipe_at(&EVENTS, "a", &1, 5_000).expect("pipe");
    driver.pipe_at(&EVENTS, "a", &1, 7_000).expect("pipe");
    driver.run().await.expect("run");
    assert!(driver.records(&SEEN).expect("records").is_empty(), "not due yet");
    // Past the next whole second, no record: it runs at this run.
    driver.advance_time(Duration::from_millis(1_000));
    driver.run().await.expect("run");
    let first_due = (start / 1_000 + 1) * 1_000;
    let sent = driver.records(&SEEN).expect("records");
    assert_eq!(
        sent,
        vec![(format!("run 1 at {}", start + 1_000), 0), ("a".to_string(), 2)],
        "due at {first_due}"
    );
    let stamps: Vec<i64> = driver.raw_records("seen").iter().map(|r| r.timestamp).collect();
    assert_eq!(stamps, vec![7_000, 7_000], "the task's stream time, not the wall time");
    // Five seconds later: once, not five times.
    driver.advance_time(Duration::from_secs(5));
    driver.run().await.expect("run");
    driver.run().await.expect("run");
    assert_eq!(driver.records(&SEEN).expect("records").len(), 4, "one more run");
}

/// On a worker, an idle task wakes for its processor's wall-clock punctuation by itself:
/// with one record in, the counts keep going out every second, though the task commits only
/// every minute.
#[test]
fn an_idle_worker_punctuates_on_the_wall_clock() {
    // The group forms within a few seconds; then nothing comes but the clock.
    let app = counting("idle-wall").commit_interval(Duration::from_secs(60));
    let broker = run_after_one_event(app, Duration::from_secs(9), |_| {});
    let sent = read_all(broker.bootstrap_servers(), "seen");
    let runs = sent
        .iter()
        .filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(b"run ")))
        .count();
    let counts: Vec<&[u8]> = sent
        .iter()
        .filter(|r| r.key.as_deref() == Some(b"a".as_slice()))
        .filter_map(|r| r.value.as_deref())
        .collect();
    assert!(runs >= 3, "{runs} runs in the seconds after the record");
    assert!(counts.iter().all(|v| *v == b"1"), "{counts:?}");
}

/// Punctuates on the wall clock twice, then says it no longer does: counts how often it was
/// asked.
struct TwiceThenNever(u32);

static ASKED: AtomicU64 = AtomicU64::new(0);

impl Processor<String, i64> for TwiceThenNever {
    type Key = String;
    type Value = i64;
    fn process(&mut self, _: String, _: i64, _: &mut Forward<'_, '_, String, i64>) {}
    fn wall_clock_punctuation(&self) -> Option<Duration> {
        ASKED.fetch_add(1, Ordering::Relaxed);
        (self.0 < 2).then_some(Duration::from_millis(300))
    }
    fn punctuate_wall_clock(&mut self, _: i64, out: &mut Forward<'_, '_, String, i64>) {
        self.0 += 1;
        out.forward("run".to_string(), i64::from(self.0));
    }
}

/// A processor that stops punctuating (its interval becomes `None`) leaves its task idle:
/// the task does not keep waking for a time that has passed (it would spin, asking the
/// processor again and again).
#[test]
fn a_processor_that_stops_punctuating_leaves_its_task_idle() {
    let app = App::new("stops")
        .commit_interval(Duration::from_secs(60))
        .pipeline("twice", |builder| {
            builder.stream(EVENTS).process("twice", || TwiceThenNever(0)).to(SEEN);
        });
    let broker = run_after_one_event(app, Duration::from_secs(8), |_| {});
    let runs = read_all(broker.bootstrap_servers(), "seen").len();
    assert_eq!(runs, 2, "two runs, then none");
    let asked = ASKED.load(Ordering::Relaxed);
    assert!(asked < 100, "asked {asked} times for its interval: the task spun");
}

/// Sends 1 under every key it was given, every 300 ms of the wall clock.
#[derive(Default)]
struct Beats(Vec<streams_core::dsl::Kept<String>>);

impl streams_core::dsl::ValueProcessor<String, i64> for Beats {
    type Value = i64;
    fn process(&mut self, _: &String, _: i64, out: &mut streams_core::dsl::ForwardValues<'_, '_, '_, String, i64>) {
        self.0.push(out.keep());
    }
    fn wall_clock_punctuation(&self) -> Option<Duration> {
        Some(Duration::from_millis(300))
    }
    fn punctuate_wall_clock(&mut self, _: i64, out: &mut streams_core::dsl::ForwardKept<'_, '_, '_, String, i64>) {
        for kept in &self.0 {
            out.forward(kept, 1);
        }
    }
}

/// What wall-clock punctuation changes in a table is committed at the task's commit points
/// though no record comes: the table's changelog keeps up while the worker runs.
#[test]
fn what_punctuation_changes_is_committed_without_input() {
    const BEATS: Table<String, i64> = Table::new("beats");
    let app = App::new("beating")
        .commit_interval(Duration::from_secs(1))
        .pipeline("beats", |builder| {
            builder
                .stream(EVENTS)
                .process_values("beats", Beats::default)
                .group_by_key()
                .count(BEATS);
        });
    let changelog = BEATS.spec().changelog_topic("beating");
    // Read while the worker runs: its last commit point (at the stop) does not count.
    run_after_one_event(app, Duration::from_secs(9), |broker| {
        let committed = read_all(broker.bootstrap_servers(), &changelog);
        let latest: i64 = committed
            .last()
            .and_then(|r| r.value.as_deref())
            .and_then(|v| serde_json::from_slice(v).ok())
            .unwrap_or(0);
        assert!(latest >= 5, "the changelog has the beats counted up to {latest}");
    });
}

/// Runs `app` on a worker of the embedded broker for `time` after one record (key "a") in
/// `events`; `at_the_end` looks at the broker while the worker still runs.
fn run_after_one_event(app: App, time: Duration, at_the_end: impl FnOnce(&EmbeddedBroker)) -> EmbeddedBroker {
    streams_core::init_logging("error");
    let broker = EmbeddedBroker::start().expect("broker");
    broker.create_topic("events", 1).expect("topic");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let options = streams_tests::worker_options(dir.path(), &broker);
    streams_tests::produce(
        broker.bootstrap_servers(),
        "events",
        &[(Some("a".to_string()), b"1".to_vec())],
    );
    runtime.block_on(async {
        let worker = streams_core::Worker::start(app, options).await.expect("worker");
        tokio::time::sleep(time).await;
        at_the_end(&broker);
        worker.stop().await.expect("stops");
    });
    broker
}

/// Forwards what it gets; its punctuation every second, on the wall clock or on stream time,
/// panics with `message`, counting its failures in `breaks` where it has one (tests run
/// side by side: one counter each).
struct Broken {
    wall_clock: bool,
    message: &'static str,
    breaks: Option<&'static AtomicU64>,
}

impl Broken {
    fn on_wall_clock(message: &'static str) -> Self {
        Self {
            wall_clock: true,
            message,
            breaks: None,
        }
    }

    fn on_stream_time(message: &'static str) -> Self {
        Self {
            wall_clock: false,
            ..Self::on_wall_clock(message)
        }
    }

    fn counted(self, breaks: &'static AtomicU64) -> Self {
        Self {
            breaks: Some(breaks),
            ..self
        }
    }

    fn fail(&self) {
        if let Some(breaks) = self.breaks {
            breaks.fetch_add(1, Ordering::SeqCst);
        }
        panic!("{}", self.message);
    }
}

impl Processor<String, i64> for Broken {
    type Key = String;
    type Value = i64;
    fn process(&mut self, key: String, value: i64, out: &mut Forward<'_, '_, String, i64>) {
        out.forward(key, value);
    }
    fn punctuation(&self) -> Option<Duration> {
        (!self.wall_clock).then_some(Duration::from_secs(1))
    }
    fn punctuate(&mut self, _: i64, _: &mut Forward<'_, '_, String, i64>) {
        self.fail();
    }
    fn wall_clock_punctuation(&self) -> Option<Duration> {
        self.wall_clock.then_some(Duration::from_secs(1))
    }
    fn punctuate_wall_clock(&mut self, _: i64, _: &mut Forward<'_, '_, String, i64>) {
        self.fail();
    }
}

static WORKER_CLOCK_BREAKS: AtomicU64 = AtomicU64::new(0);

/// A wall-clock punctuation that fails has no record to blame: it is logged and the task goes
/// on; under `OnError::Fail` for processing errors the worker stops, and the commit point
/// it failed at is not committed (Kafka Streams' processing handler takes punctuations'
/// exceptions too, KIP-1033).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_wall_clock_punctuation_is_logged_or_stops_the_worker_with_fail() {
    for fail in [false, true] {
        let app = App::new("broken-clock").pipeline("clock", |builder| {
            builder
                .stream(EVENTS)
                .process("broken", || Broken::on_wall_clock("the clock broke"))
                .to(SEEN);
        });
        let app = fail_if(app, fail);
        let mut driver = TestDriver::new(app).expect("driver");
        driver.pipe_at(&EVENTS, "a", &1, 5_000).expect("pipe");
        driver.run().await.expect("run");
        assert_eq!(driver.committed("events", 0), Some(1), "fail: {fail}");
        driver.advance_time(Duration::from_millis(1_000));
        driver.pipe_at(&EVENTS, "b", &2, 6_000).expect("pipe");
        let _ = driver.run().await;
        let fatal = driver.metrics().fatal();
        if fail {
            let fatal = fatal.unwrap_or_default();
            assert!(fatal.contains("the clock broke"), "{fatal}");
            assert_eq!(
                driver.committed("events", 0),
                Some(1),
                "the commit point it failed at is not committed"
            );
            // The app has failed: its task takes nothing more, and a run says why.
            let seen = driver.records(&SEEN).expect("records").len();
            driver.pipe_at(&EVENTS, "c", &3, 7_000).expect("pipe");
            let error = driver.run().await.expect_err("the app failed").to_string();
            assert!(error.contains("the clock broke"), "{error}");
            assert_eq!(
                driver.records(&SEEN).expect("records").len(),
                seen,
                "the task took nothing more"
            );
        } else {
            assert_eq!(fatal, None);
            driver.run().await.expect("run");
            assert_eq!(driver.committed("events", 0), Some(2), "the task goes on");
        }
    }
}

/// Forwards what it gets, keeping its keys; its wall-clock punctuation forwards 1 under each
/// key it kept, then panics.
#[derive(Default)]
struct TickThenBreak(Vec<streams_core::dsl::Kept<String>>);

impl streams_core::dsl::ValueProcessor<String, i64> for TickThenBreak {
    type Value = i64;
    fn process(&mut self, _: &String, value: i64, out: &mut streams_core::dsl::ForwardValues<'_, '_, '_, String, i64>) {
        self.0.push(out.keep());
        out.forward(value);
    }
    fn wall_clock_punctuation(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
    fn punctuate_wall_clock(&mut self, _: i64, out: &mut streams_core::dsl::ForwardKept<'_, '_, '_, String, i64>) {
        for kept in &self.0 {
            out.forward(kept, 1);
        }
        panic!("the clock broke after a tick");
    }
}

/// A punctuation that fails under `OnError::Fail` leaves what it changed out of every
/// changelog: the commit point it failed at is not made at all (its changelog records would
/// carry the positions committed before, and a restore would take them as committed).
/// Without `Fail` the commit point goes on and takes what the punctuation did before it
/// failed, as Kafka Streams' log-and-continue does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_punctuation_under_fail_leaves_its_changes_out_of_the_changelog() {
    const TICKS: Table<String, i64> = Table::new("ticks");
    for fail in [false, true] {
        let app = App::new("tick-then-break").pipeline("ticks", |builder| {
            builder
                .stream(EVENTS)
                .process_values("tick", TickThenBreak::default)
                .group_by_key()
                .count(TICKS);
        });
        let app = fail_if(app, fail);
        let changelog = TICKS.spec().changelog_topic("tick-then-break");
        let mut driver = TestDriver::new(app).expect("driver");
        let counts = |driver: &TestDriver| -> Vec<(String, String)> {
            driver
                .raw_records(&changelog)
                .iter()
                .map(|r| {
                    let text =
                        |b: &Option<Vec<u8>>| String::from_utf8_lossy(b.as_deref().unwrap_or_default()).into_owned();
                    (text(&r.key), text(&r.value))
                })
                .collect()
        };
        let first = vec![("a".to_string(), "1".to_string())];
        driver.pipe_at(&EVENTS, "a", &1, 5_000).expect("pipe");
        driver.run().await.expect("run");
        assert_eq!(counts(&driver), first, "fail: {fail}");
        driver.advance_time(Duration::from_millis(1_000));
        let _ = driver.run().await;
        let fatal = driver.metrics().fatal();
        if fail {
            let fatal = fatal.unwrap_or_default();
            assert!(fatal.contains("the clock broke after a tick"), "{fatal}");
            assert_eq!(
                counts(&driver),
                first,
                "the failed commit point's tick reached the changelog"
            );
        } else {
            assert_eq!(fatal, None);
            let mut both = first.clone();
            both.push(("a".to_string(), "2".to_string()));
            assert_eq!(counts(&driver), both, "the tick before the failure is committed");
        }
        assert_eq!(driver.committed("events", 0), Some(1), "fail: {fail}");
    }
}

/// A punctuation on stream time that a record sets off, and that fails, is not the record's
/// fault: the record was processed (its output goes on) and does not go to the dead-letter
/// topic; the failure is logged, or stops the worker under `OnError::Fail`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_punctuation_a_record_set_off_is_not_that_records_dead_letter() {
    for fail in [false, true] {
        let app = App::new("stream-clock").pipeline("clock", |builder| {
            builder
                .stream(EVENTS)
                .process("broken", || Broken::on_stream_time("stream time broke"))
                .to(SEEN);
        });
        let app = fail_if(app, fail);
        let mut driver = TestDriver::new(app).expect("driver");
        driver.pipe_at(&EVENTS, "a", &1, 1_000).expect("pipe");
        // Past the next second of stream time: the punctuation runs, and fails.
        driver.pipe_at(&EVENTS, "b", &2, 2_500).expect("pipe");
        let _ = driver.run().await;
        let metrics = driver.metrics();
        assert_eq!(metrics.dead_lettered.load(Ordering::Relaxed), 0, "fail: {fail}");
        if fail {
            let fatal = metrics.fatal().unwrap_or_default();
            assert!(fatal.contains("stream time broke"), "{fatal}");
            assert_eq!(
                driver.committed("events", 0),
                None,
                "nothing committed from the failure on"
            );
        } else {
            assert_eq!(metrics.fatal(), None);
            let seen: Vec<String> = driver
                .records(&SEEN)
                .expect("records")
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(seen, ["a", "b"], "both processed, neither dead-lettered");
            assert_eq!(driver.committed("events", 0), Some(2));
        }
    }
}

/// On a worker, wall-clock punctuation runs between records, not at a commit point: one that
/// fails is logged and the task goes on taking records; under `OnError::Fail` the worker
/// stops at the first, and nothing from then on is committed (not even at the stop): the
/// record taken before it is read again at the next start.
#[test]
fn a_failing_wall_clock_punctuation_on_a_worker_is_logged_or_stops_it_with_fail() {
    streams_core::init_logging("error");
    let app = |id: &str, fail: bool| {
        let app = App::new(id)
            // No commit point comes by the clock while the test runs: only the stop's.
            .commit_interval(Duration::from_secs(600))
            .pipeline("clock", |builder| {
                builder
                    .stream(EVENTS)
                    .process("broken", || {
                        Broken::on_wall_clock("the clock broke").counted(&WORKER_CLOCK_BREAKS)
                    })
                    .to(SEEN);
            });
        fail_if(app, fail)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for fail in [false, true] {
        let id = if fail { "broken-clock-fail" } else { "broken-clock-log" };
        let broker = EmbeddedBroker::start().expect("broker");
        broker.create_topic("events", 1).expect("topic");
        let bootstrap = broker.bootstrap_servers().to_string();
        let dir = tempfile::tempdir().expect("tempdir");
        let start = |fail: bool| {
            let options = streams_tests::worker_options(dir.path(), &broker);
            runtime
                .block_on(streams_core::Worker::start(app(id, fail), options))
                .expect("worker")
        };
        let event = |key: &str, value: &[u8]| {
            streams_tests::produce(&bootstrap, "events", &[(Some(key.to_string()), value.to_vec())]);
        };
        let seen = |key: &str| {
            read_all(&bootstrap, "seen")
                .iter()
                .filter(|r| r.key.as_deref() == Some(key.as_bytes()))
                .count()
        };
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !done() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        event("a", b"1");
        let breaks = WORKER_CLOCK_BREAKS.load(Ordering::SeqCst);
        let worker = start(fail);
        if fail {
            let ended = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(60), worker.wait()).await })
                .expect("the worker stops at its first punctuation");
            let error = ended.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains("the clock broke"), "{error}");
            assert_eq!(
                WORKER_CLOCK_BREAKS.load(Ordering::SeqCst) - breaks,
                1,
                "it stopped at the first"
            );
            assert!(seen("a") <= 1);
            assert_eq!(
                streams_tests::committed(&bootstrap, id, "events", 0),
                0,
                "nothing is committed after the failure, at the stop neither"
            );
            // Started again without `Fail`: the record is read again.
            let before = seen("a");
            let worker = start(false);
            wait("`a` was not read again", &|| seen("a") > before);
            runtime.block_on(worker.stop()).expect("stops");
            assert_eq!(streams_tests::committed(&bootstrap, id, "events", 0), 1);
        } else {
            wait("`a` never went on", &|| seen("a") == 1);
            wait("no punctuation failed twice", &|| {
                WORKER_CLOCK_BREAKS.load(Ordering::SeqCst) >= breaks + 2
            });
            event("b", b"2");
            wait("the task took nothing after the failures", &|| seen("b") == 1);
            runtime
                .block_on(worker.stop())
                .expect("the worker ran on and stops cleanly");
            assert_eq!(streams_tests::committed(&bootstrap, id, "events", 0), 2);
        }
    }
}

/// `app`, stopping at processing errors (`OnError::Fail`) when `fail`.
fn fail_if(app: App, fail: bool) -> App {
    if fail {
        app.on_processing_error(OnError::Fail)
    } else {
        app
    }
}

//! `KTable::suppress(until_time_limit)` through the test driver, against a reference model
//! of Kafka Streams' semantics: a count per key, suppressed, sent to a topic. Generated
//! records (hot keys, times out of order), time limits, buffer bounds, partition counts,
//! cache budgets (the default, zero and 200 bytes), commit points, partition moves and
//! (exactly-once) crashes; the model is told where the commit points fall, since a table's
//! changes reach the suppression coalesced per key at each of them.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use streams_core::app::ProcessingGuarantee;
use streams_core::dsl::{BufferConfig, Suppressed};
use streams_core::prelude::*;
use streams_core::testing::{kafka_partition, TestDriver};

const CLICKS: Topic<String, i64> = Topic::new("clicks");
const COUNTS: Table<String, i64> = Table::new("counts");
/// One partition: what every task sends, in the order each sent it.
const LIMITED: Topic<String, i64> = Topic::new("counts-limited").partitions(1);

fn app(limit_ms: u64, max_records: Option<usize>, cache_bytes: Option<usize>, exactly_once: bool) -> App {
    let mut app = App::new("suppress-test");
    if let Some(bytes) = cache_bytes {
        app = app.table_cache_bytes(bytes);
    }
    if exactly_once {
        app = app.processing_guarantee(ProcessingGuarantee::ExactlyOnce);
    }
    let buffer = match max_records {
        Some(records) => BufferConfig::max_records(records),
        None => BufferConfig::unbounded(),
    };
    limited(
        app,
        Suppressed::until_time_limit(Duration::from_millis(limit_ms), buffer),
    )
}

/// `app` with the pipeline under test: clicks counted per key, the counts suppressed.
fn limited(app: App, suppressed: Suppressed) -> App {
    app.pipeline("limited", move |builder| {
        builder
            .stream(CLICKS)
            .group_by_key()
            .count(COUNTS)
            .suppress("limit", suppressed)
            .to(LIMITED);
    })
}

/// A click: its key and its time.
type Click = (String, i64);

#[derive(Debug, Clone)]
enum Group {
    /// Each click piped and run on its own: a commit point after each.
    OneByOne(Vec<Click>),
    /// The clicks piped, then one run: one commit point for all (the default cache only:
    /// a small one makes commit points of its own).
    Together(Vec<Click>),
    /// One by one, then a partition moves to a worker (`worker-{n}`; worker 1 owns every
    /// partition at first): one that held it before takes its stores back.
    Move(Vec<Click>, i32, u8),
    /// Exactly-once: the clicks processed without a commit, then a partition's worker is
    /// killed; everything not committed is processed again with the next group's first
    /// commit point.
    Crash(Vec<Click>, i32, u8),
}

/// One partition of Kafka Streams' suppression, as a model: the counts, the held-back keys
/// (first time, value, latest time) and stream time.
#[derive(Default)]
struct Model {
    counts: BTreeMap<String, i64>,
    held: BTreeMap<String, (i64, i64, i64)>,
    clock: Option<i64>,
    sent: Vec<(String, i64, i64)>,
}

impl Model {
    /// A commit point's clicks: the count's changes, one per key with the time of its last
    /// click, then what goes on.
    fn commit_point(&mut self, clicks: &[Click], limit: i64, max_records: Option<usize>) {
        let mut changes: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (key, time) in clicks {
            let count = self.counts.entry(key.clone()).or_default();
            *count += 1;
            changes.insert(key.clone(), (*count, *time));
        }
        for (key, (count, time)) in changes {
            self.clock = Some(self.clock.map_or(time, |c| c.max(time)));
            let held = self.held.entry(key).or_insert((time, count, time));
            held.1 = count;
            held.2 = time;
        }
        let Some(now) = self.clock else { return };
        while let Some(key) = self.oldest().filter(|(since, _)| *since <= now - limit).map(|(_, k)| k) {
            self.release(&key);
        }
        while max_records.is_some_and(|max| self.held.len() > max) {
            let Some((_, key)) = self.oldest() else { break };
            self.release(&key);
        }
    }

    fn oldest(&self) -> Option<(i64, String)> {
        self.held.iter().map(|(k, (since, _, _))| (*since, k.clone())).min()
    }

    fn release(&mut self, key: &str) {
        if let Some((_, value, time)) = self.held.remove(key) {
            self.sent.push((key.to_string(), value, time));
        }
    }
}

#[derive(Clone)]
struct Knobs {
    partitions: i32,
    limit_ms: u64,
    max_records: Option<usize>,
    cache_bytes: Option<usize>,
    exactly_once: bool,
}

fn run(groups: &[Group], knobs: &Knobs) -> Result<(), TestCaseError> {
    let partitions = knobs.partitions;
    let run = async {
        let app = app(knobs.limit_ms, knobs.max_records, knobs.cache_bytes, knobs.exactly_once);
        let mut driver =
            TestDriver::with_partitions(app, &[("clicks", partitions), ("counts-limited", 1)]).expect("driver");
        let mut models: Vec<Model> = (0..partitions).map(|_| Model::default()).collect();
        let limit = i64::try_from(knobs.limit_ms).unwrap_or(i64::MAX);
        // Clicks processed but not at a commit point yet (after a crash: all since the last).
        let mut pending: Vec<Click> = Vec::new();
        let commit_point = |pending: &mut Vec<Click>, models: &mut Vec<Model>| {
            for (partition, model) in models.iter_mut().enumerate() {
                let mine: Vec<Click> = pending
                    .iter()
                    .filter(|(key, _)| kafka_partition(key.as_bytes(), partitions) == partition as i32)
                    .cloned()
                    .collect();
                if !mine.is_empty() {
                    model.commit_point(&mine, limit, knobs.max_records);
                }
            }
            pending.clear();
        };
        for group in groups {
            match group {
                Group::OneByOne(clicks) | Group::Move(clicks, _, _) => {
                    for (key, time) in clicks {
                        driver.pipe_at(&CLICKS, key, &1, *time).expect("pipe");
                        pending.push((key.clone(), *time));
                        driver.run().await.expect("run");
                        commit_point(&mut pending, &mut models);
                    }
                    if let Group::Move(_, partition, owner) = group {
                        driver
                            .move_partition("clicks", partition % partitions, &format!("worker-{owner}"))
                            .await
                            .expect("move");
                    }
                }
                Group::Together(clicks) => {
                    for (key, time) in clicks {
                        driver.pipe_at(&CLICKS, key, &1, *time).expect("pipe");
                        pending.push((key.clone(), *time));
                    }
                    driver.run().await.expect("run");
                    commit_point(&mut pending, &mut models);
                }
                Group::Crash(clicks, partition, owner) => {
                    for (key, time) in clicks {
                        driver.pipe_at(&CLICKS, key, &1, *time).expect("pipe");
                        pending.push((key.clone(), *time));
                    }
                    driver.process().await.expect("process");
                    driver
                        .crash_partition("clicks", partition % partitions, &format!("worker-{owner}"))
                        .await
                        .expect("crash");
                }
            }
        }
        driver.run().await.expect("run");
        commit_point(&mut pending, &mut models);
        let mut sent: Vec<Vec<(String, i64, i64)>> = vec![Vec::new(); partitions as usize];
        for record in driver.raw_records("counts-limited") {
            if record.aborted {
                continue;
            }
            let key = String::from_utf8(record.key.unwrap_or_default()).expect("key");
            let value: i64 = serde_json::from_slice(&record.value.unwrap_or_default()).expect("value");
            // The task that sent it: the one of the key's partition of the input.
            let partition = kafka_partition(key.as_bytes(), partitions) as usize;
            sent[partition].push((key, value, record.timestamp));
        }
        for (partition, model) in models.iter().enumerate() {
            prop_assert_eq!(&sent[partition], &model.sent, "partition {}", partition);
        }
        Ok(())
    };
    streams_tests::run_case(Duration::from_secs(20), run)
        .ok_or_else(|| TestCaseError::fail("the driver did not finish within 20 s"))?
}

fn clicks() -> impl Strategy<Value = Vec<Click>> {
    // Hot keys (k0 most of the time); times moving forward with some out of order.
    let click = (prop_oneof![3 => Just(0u8), 2 => 1u8..5], -40i64..100);
    proptest::collection::vec(click, 1..8).prop_map(|clicks| {
        clicks
            .into_iter()
            .map(|(key, step)| (format!("k{key}"), step))
            .collect()
    })
}

fn group(together: bool, crash: bool) -> impl Strategy<Value = Group> {
    let mut groups: Vec<(u32, BoxedStrategy<Group>)> = vec![
        (4, clicks().prop_map(Group::OneByOne).boxed()),
        (
            2,
            (clicks(), 0i32..3, 1u8..4)
                .prop_map(|(c, p, o)| Group::Move(c, p, o))
                .boxed(),
        ),
    ];
    if together {
        groups.push((2, clicks().prop_map(Group::Together).boxed()));
    }
    if crash {
        groups.push((
            2,
            (clicks(), 0i32..3, 1u8..4)
                .prop_map(|(c, p, o)| Group::Crash(c, p, o))
                .boxed(),
        ));
    }
    proptest::strategy::Union::new_weighted(groups)
}

/// Knobs, then groups fitting them.
fn case() -> impl Strategy<Value = (Knobs, Vec<Group>)> {
    (
        1i32..3,
        prop_oneof![Just(0u64), Just(50), 1u64..400],
        prop_oneof![Just(None), (1usize..4).prop_map(Some)],
        prop_oneof![Just(None), Just(Some(0usize)), Just(Some(200))],
        any::<bool>(),
    )
        .prop_flat_map(|(partitions, limit_ms, max_records, cache_bytes, exactly_once)| {
            let knobs = Knobs {
                partitions,
                limit_ms,
                max_records,
                cache_bytes,
                exactly_once,
            };
            // Several clicks at one commit point only where no cut of the cache's comes
            // between them; crashes only where nothing is sent twice.
            let together = cache_bytes.is_none();
            let crash = together && exactly_once;
            (Just(knobs), proptest::collection::vec(group(together, crash), 1..12))
        })
        .prop_map(|(knobs, groups)| {
            // Times: each group's steps from a clock moving forward.
            let mut clock = 1_000i64;
            let mut timed = |clicks: &[Click]| -> Vec<Click> {
                clicks
                    .iter()
                    .map(|(key, step)| {
                        clock += step.max(&0) / 4;
                        (key.clone(), clock + step.min(&0))
                    })
                    .collect()
            };
            let groups = groups
                .iter()
                .map(|g| match g {
                    Group::OneByOne(c) => Group::OneByOne(timed(c)),
                    Group::Together(c) => Group::Together(timed(c)),
                    Group::Move(c, p, o) => Group::Move(timed(c), *p, *o),
                    Group::Crash(c, p, o) => Group::Crash(timed(c), *p, *o),
                })
                .collect();
            (knobs, groups)
        })
}

impl std::fmt::Debug for Knobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partitions {}, limit {} ms, max records {:?}, cache {:?}, exactly once {}",
            self.partitions, self.limit_ms, self.max_records, self.cache_bytes, self.exactly_once
        )
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// What goes on is what Kafka Streams' suppression sends for the same changes: each key
    /// at most once per time limit after its first held change, with its latest value and
    /// that value's time, the oldest first when the buffer is full — across moves and
    /// crashes (the buffer and the suppression's stream time are restored).
    #[test]
    fn a_suppression_sends_what_kafka_streams_would((knobs, groups) in case()) {
        run(&groups, &knobs)?;
    }
}

/// The example from Kafka Streams' documentation, by hand: with a 100 ms limit, a key's
/// changes within 100 ms of its first go on once, as the latest, when stream time passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_within_the_limit_go_on_once_as_the_latest() {
    let mut driver = TestDriver::new(app(100, None, None, false)).expect("driver");
    let a = "a".to_string();
    let b = "b".to_string();
    for (key, time) in [(&a, 1_000), (&a, 1_050), (&b, 1_060), (&a, 1_099)] {
        driver.pipe_at(&CLICKS, key, &1, time).expect("pipe");
        driver.run().await.expect("run");
    }
    assert!(
        driver.records(&LIMITED).expect("records").is_empty(),
        "nothing is due yet"
    );
    // Stream time reaches a's first change + 100: a goes on, with its latest count.
    driver.pipe_at(&CLICKS, &b, &1, 1_100).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(driver.records(&LIMITED).expect("records"), vec![(a.clone(), 3)]);
    // b's first held change was at 1060: due at 1160, with its count then.
    driver.pipe_at(&CLICKS, &a, &1, 1_160).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(
        driver.records(&LIMITED).expect("records"),
        vec![(a.clone(), 3), (b.clone(), 2)]
    );
    let sent = driver.raw_records("counts-limited");
    assert_eq!(
        sent[1].timestamp, 1_100,
        "b's latest value carries the time of its change"
    );
}

/// A join after a suppression would read the table's unsuppressed values: refused when the
/// app is made.
#[test]
fn a_join_on_a_suppressed_table_is_refused() {
    const OTHER: Topic<String, i64> = Topic::new("other");
    const JOINED: Table<String, i64> = Table::new("joined");
    let app = App::new("refused").pipeline("p", |builder| {
        let limited = builder.stream(CLICKS).group_by_key().count(COUNTS).suppress(
            "limit",
            Suppressed::until_time_limit(Duration::from_secs(1), BufferConfig::unbounded()),
        );
        builder.stream(OTHER).join(&limited, |_, a, b| a + b).to(LIMITED);
        let _ = JOINED;
    });
    let error = app.validate().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("after `suppress`"), "{error}");
}

/// Drawn as an operation named by the user between the table and the topic; its buffer is a
/// table of the task, with a changelog.
#[test]
fn a_suppression_is_drawn_and_keeps_its_buffer_in_a_table() {
    let app = app(100, Some(10), None, false);
    let topology = app.topology();
    let mermaid = topology.mermaid();
    let edge = |from: &str, to: &str| {
        topology
            .edges
            .iter()
            .any(|(f, t, _)| f.ends_with(from) && t.ends_with(to))
    };
    assert!(edge("counts", "limit"), "{mermaid}");
    assert!(edge("limit", "counts-limited"), "{mermaid}");
    let tables: Vec<&str> = app.tasks()[0].tables.iter().map(|table| table.name).collect();
    assert_eq!(tables, vec!["counts", "limit-suppress-store"]);
}

/// Told to shut down when full, a full buffer stops the worker instead of sending a key on
/// before its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_told_to_shut_down_stops_the_worker() {
    let strict = BufferConfig::max_records(1).shut_down_when_full();
    let app = limited(
        App::new("strict"),
        Suppressed::until_time_limit(Duration::from_secs(60), strict),
    );
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe_at(&CLICKS, "a", &1, 1_000).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(driver.metrics().fatal(), None, "one key fits");
    driver.pipe_at(&CLICKS, "b", &1, 1_001).expect("pipe");
    let _ = driver.run().await;
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(fatal.contains("suppression `limit-suppress-store` is full"), "{fatal}");
    assert!(
        driver.records(&LIMITED).expect("records").is_empty(),
        "nothing went on early"
    );
}

/// What goes on at the end of a commit point — a suppression's keys, a window's final
/// result — into a later table of the same task reaches that table's own downstream too
/// (at that commit point), with the time of the change that went on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_goes_on_into_a_later_table_goes_on_from_it_too() {
    const LATEST: Table<String, i64> = Table::new("latest-limited");
    const FROM_LATEST: Topic<String, i64> = Topic::new("from-latest");
    const WINDOWS: WindowedTable<String, i64> = WindowedTable::new("per-window");
    const FINALS: Table<Windowed<String>, i64> = Table::new("finals");
    const FROM_FINALS: Topic<Windowed<String>, i64> = Topic::new("from-finals");
    let app = App::new("chained").pipeline("chained", |builder| {
        let clicks = builder.stream(CLICKS);
        clicks
            .clone()
            .group_by_key()
            .count(COUNTS)
            .suppress(
                "limit",
                Suppressed::until_time_limit(Duration::from_millis(100), BufferConfig::unbounded()),
            )
            .to_stream()
            .group_by_key()
            .reduce(LATEST, |_, latest| latest)
            .to(FROM_LATEST);
        clicks
            .group_by_key()
            .windowed_by(TimeWindows::of(Duration::from_millis(100)))
            .emit_final()
            .count(WINDOWS)
            .to_stream()
            .group_by_key()
            .reduce(FINALS, |_, last| last)
            .to(FROM_FINALS);
    });
    assert_eq!(app.tasks().len(), 1, "one task: the later tables are its own");
    let mut driver = TestDriver::new(app).expect("driver");
    let (a, b) = ("a".to_string(), "b".to_string());
    for (key, time) in [(&a, 1_000), (&a, 1_010), (&b, 1_150)] {
        driver.pipe_at(&CLICKS, key, &1, time).expect("pipe");
        driver.run().await.expect("run");
    }
    // At 1150, a (held since 1000) is due, with its latest count, made at 1010.
    assert_eq!(driver.records(&FROM_LATEST).expect("records"), vec![(a.clone(), 2)]);
    let sent = driver.raw_records("from-latest");
    assert_eq!(sent[0].timestamp, 1_010, "the time of the change that went on");
    let finals: Vec<i64> = driver
        .records(&FROM_FINALS)
        .expect("records")
        .into_iter()
        .map(|(_, count)| count)
        .collect();
    assert_eq!(finals, vec![2], "the window [1000, 1100) closed with 2");
}

/// A deletion is held back like any change and goes on as one: a tombstone with `to`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_goes_on_as_a_tombstone() {
    const PRICES: Topic<String, i64> = Topic::new("prices").partitions(1);
    const LATEST: Table<String, i64> = Table::new("prices-latest");
    let app = App::new("prices").pipeline("prices", |builder| {
        builder
            .table(PRICES, LATEST)
            .suppress(
                "limit",
                Suppressed::until_time_limit(Duration::from_millis(100), BufferConfig::unbounded()),
            )
            .to(LIMITED);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe_at(&PRICES, "a", &5, 1_000).expect("pipe");
    driver.run().await.expect("run");
    driver.pipe_raw_at("prices", Some(b"a"), None, 1_050);
    driver.run().await.expect("run");
    driver.pipe_at(&PRICES, "b", &7, 1_100).expect("pipe");
    driver.run().await.expect("run");
    let sent: Vec<(String, Option<Vec<u8>>)> = driver
        .raw_records("counts-limited")
        .into_iter()
        .map(|r| (String::from_utf8(r.key.unwrap_or_default()).expect("key"), r.value))
        .collect();
    assert_eq!(
        sent,
        vec![("a".to_string(), None)],
        "a's latest change, its deletion, went on"
    );
}

/// Windows leaving the store (sliding windows as they close, others past their retention)
/// leave their changelog with tombstones, but nothing downstream hears of it: their results
/// stay on the output topic (Kafka Streams sends no deletion for them either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_windows_send_no_deletion_downstream() {
    const SLIDING: WindowedTable<String, i64> = WindowedTable::new("sliding-counts");
    const SLIDING_OUT: Topic<Windowed<String>, i64> = Topic::new("sliding-out");
    let app = App::new("expiry").pipeline("expiry", |builder| {
        builder
            .stream(CLICKS)
            .group_by_key()
            .windowed_by(SlidingWindows::with_time_difference(Duration::from_millis(50)))
            .count(SLIDING)
            .to(SLIDING_OUT);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    for time in [1_000, 1_020, 2_000, 3_000] {
        driver.pipe_at(&CLICKS, "a", &1, time).expect("pipe");
        driver.run().await.expect("run");
    }
    let tombstones = driver
        .raw_records("sliding-out")
        .into_iter()
        .filter(|r| r.value.is_none())
        .count();
    assert_eq!(tombstones, 0);
    let changelog_tombstones = driver
        .raw_records("expiry-sliding-counts-changelog")
        .into_iter()
        .filter(|r| r.value.is_none())
        .count();
    assert!(changelog_tombstones > 0, "the expired windows left the store");
}

/// `clicks` counted, suppressed for a second, then a closure that panics on the first count of
/// `bad`, then `sent-on`.
fn failing_on_bad(app: App, cache: Option<usize>) -> App {
    let app = match cache {
        Some(bytes) => app.table_cache_bytes(bytes),
        None => app,
    };
    app.pipeline("held", |builder| {
        builder
            .stream(CLICKS)
            .group_by_key()
            .count(COUNTS)
            .suppress(
                "limit",
                Suppressed::until_time_limit(Duration::from_millis(1_000), BufferConfig::unbounded()),
            )
            .to_stream()
            .map(|key, count| {
                assert!(!(key == "bad" && count == 1), "the first count of `bad`");
                (key, count)
            })
            .to(SENT_ON);
    })
}

const SENT_ON: Topic<String, i64> = Topic::new("sent-on").partitions(1);

/// A held-back change whose way on fails (a closure downstream panics) goes to the
/// dead-letter topic with the value the suppression holds, as a window's final result does;
/// the other keys' changes go on at the same commit point, and the key's next change is held
/// and goes on as any other. With no cache and with the default one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_change_that_fails_on_its_way_goes_to_the_dead_letter_topic() {
    for cache in [Some(0), None] {
        let app = failing_on_bad(App::new("held"), cache);
        let mut driver = TestDriver::with_partitions(app, &[("clicks", 1)]).expect("driver");
        for (key, time) in [("bad", 0), ("good", 0), ("x", 2_000), ("bad", 3_000), ("y", 5_000)] {
            driver.pipe_at(&CLICKS, &key.to_string(), &1, time).expect("pipe");
            driver.run().await.expect("run");
        }
        let sent = driver.records(&SENT_ON).expect("records");
        assert_eq!(
            sent,
            vec![("good".to_string(), 1), ("x".to_string(), 1), ("bad".to_string(), 2)],
            "cache {cache:?}"
        );
        let dead = driver.raw_records("held-held-dlq");
        assert_eq!(dead.len(), 1, "cache {cache:?}: {dead:?}");
        assert_eq!(dead[0].key.as_deref(), Some(&b"bad"[..]));
        assert_eq!(dead[0].value.as_deref(), Some(&b"1"[..]), "the held value");
        assert_eq!(
            dead[0].header("streams.dlq.table"),
            Some("limit-suppress-store"),
            "the table holding it"
        );
        assert!(
            dead[0]
                .header("streams.dlq.error")
                .is_some_and(|e| e.contains("the first count of `bad`")),
            "{:?}",
            dead[0]
        );
    }
}

/// With `OnError::Fail` for processing errors, a held-back change whose way on fails stops
/// the worker: the commit point that released it is not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_change_that_fails_on_its_way_stops_the_worker_with_fail() {
    let app = failing_on_bad(App::new("held").on_processing_error(OnError::Fail), None);
    let mut driver = TestDriver::with_partitions(app, &[("clicks", 1)]).expect("driver");
    for (key, time) in [("bad", 0), ("good", 0)] {
        driver.pipe_at(&CLICKS, &key.to_string(), &1, time).expect("pipe");
        driver.run().await.expect("run");
    }
    driver.pipe_at(&CLICKS, &"x".to_string(), &1, 2_000).expect("pipe");
    let _ = driver.run().await;
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(fatal.contains("the first count of `bad`"), "{fatal}");
    assert_eq!(driver.committed("clicks", 0), Some(2), "the commit before it stays");
    assert!(driver.raw_records("held-held-dlq").is_empty());
}

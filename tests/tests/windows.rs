//! Time and windows through the test driver: event time from values, window boundaries,
//! grace and late records, hopping, sliding and session windows against models written
//! out by hand, final results once, windowed stores restored mid-window, retention, and the
//! `hits_per_window` example against its contract.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use streams_core::prelude::*;
use streams_core::testing::TestDriver;
use streams_tests::hits_per_window::{self, MinuteHits, UserSession};
use streams_tests::{spread_hits, window_model};

const EVENTS: Topic<String, i64> = Topic::new("events").partitions(1);
// One partition each, so that the order of their records is the order they were sent.
const COUNTS: Topic<Windowed<String>, i64> = Topic::new("window-counts").partitions(1);
const LATE: Topic<String, i64> = Topic::new("late-events").partitions(1);
const PER_WINDOW: WindowedTable<String, i64> = WindowedTable::new("per-window");

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `(key, window, value)` of every record on `topic`, in order.
fn windowed(driver: &TestDriver, topic: &Topic<Windowed<String>, i64>) -> Vec<(String, i64, i64, i64)> {
    driver
        .records(topic)
        .expect("records")
        .into_iter()
        .map(|(w, v)| (w.key, w.window.start, w.window.end, v))
        .collect()
}

fn counting(windows: TimeWindows, final_only: bool) -> App {
    App::new("windows").pipeline("count", move |builder| {
        let windowed = builder.stream(EVENTS).group_by_key().windowed_by(windows);
        let windowed = if final_only { windowed.emit_final() } else { windowed };
        windowed.late_records_to(LATE).count(PER_WINDOW).to_stream().to(COUNTS);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_at_a_windows_end_belongs_to_the_next_one() {
    // A long grace period keeps the windows open (and in the table) for the lookups.
    let windows = TimeWindows::of(ms(10)).grace(ms(1000));
    let mut driver = TestDriver::new(counting(windows, false)).expect("driver");
    for time in [0, 9, 10, 19, 20] {
        driver.pipe_at(&EVENTS, "a", &1, time).expect("pipe");
    }
    driver.run().await.expect("run");
    let table = driver.windowed_table(&PER_WINDOW).expect("table");
    let counts: Vec<(i64, i64, i64)> = table.iter().map(|(w, n)| (w.window.start, w.window.end, *n)).collect();
    assert_eq!(counts, vec![(0, 10, 2), (10, 20, 2), (20, 30, 1)]);
    // Every change, coalesced per commit (one run is one commit here): one per window.
    let mut sent = windowed(&driver, &COUNTS);
    sent.sort();
    assert_eq!(
        sent,
        vec![("a".into(), 0, 10, 2), ("a".into(), 10, 20, 2), ("a".into(), 20, 30, 1)]
    );
    // Lookups by key and start time, both ends inclusive.
    let starts = |from, to| -> Vec<i64> {
        driver
            .windows(&PER_WINDOW, "a", from, to)
            .expect("windows")
            .into_iter()
            .map(|(w, _)| w.start)
            .collect()
    };
    assert_eq!(starts(0, 20), vec![0, 10, 20]);
    assert_eq!(starts(1, 10), vec![10]);
    assert_eq!(starts(21, 100), Vec::<i64>::new());
    assert!(driver.windows(&PER_WINDOW, "b", 0, 100).expect("windows").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_are_counted_within_grace_and_dropped_after_it_and_finals_go_once() {
    let windows = TimeWindows::of(ms(10)).grace(ms(5));
    let mut driver = TestDriver::new(counting(windows, true)).expect("driver");
    // (time, value); stream time is the largest time so far.
    for (time, value) in [(1, 1), (12, 1), (3, 1), (15, 1), (4, 7), (30, 1)] {
        driver.pipe_at(&EVENTS, "a", &value, time).expect("pipe");
    }
    driver.run().await.expect("run");
    // 3 arrives at stream time 12: [0, 10) closes at 10 + 5 = 15, so it counts. 4 arrives at
    // 15: that window has closed, so it is late. [10, 20) closes at 25, [30, 40) is open.
    assert_eq!(
        windowed(&driver, &COUNTS),
        vec![("a".into(), 0, 10, 2), ("a".into(), 10, 20, 2)]
    );
    assert_eq!(driver.metrics().late.load(Ordering::Relaxed), 1);
    assert_eq!(driver.records(&LATE).expect("late"), vec![("a".to_string(), 7)]);
    // Later records close the next window; the closed ones are not sent again.
    driver.pipe_at(&EVENTS, "a", &1, 46).expect("pipe");
    driver.run().await.expect("run");
    driver.run().await.expect("run");
    assert_eq!(
        windowed(&driver, &COUNTS),
        vec![("a".into(), 0, 10, 2), ("a".into(), 10, 20, 2), ("a".into(), 30, 40, 1)]
    );
    // Closed windows stay in the table for lookups: a day by default, as in Kafka Streams.
    let left = |driver: &TestDriver| -> Vec<i64> {
        driver
            .windowed_table(&PER_WINDOW)
            .expect("table")
            .keys()
            .map(|w| w.window.start)
            .collect()
    };
    assert_eq!(left(&driver), vec![0, 10, 30, 40]);
    assert_eq!(
        starts_of(&driver, "a", 0, 20),
        vec![0, 10],
        "closed windows can be looked up"
    );
    // A day after a window's start (stream time), it leaves the table.
    let day = streams_core::window::DEFAULT_RETENTION_MS;
    driver.pipe_at(&EVENTS, "a", &1, day + 15).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(left(&driver), vec![30, 40, day + 10]);
    driver.pipe_at(&EVENTS, "a", &1, day + 60).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(left(&driver), vec![day + 10, day + 60]);
}

fn starts_of(driver: &TestDriver, key: &str, from: i64, to: i64) -> Vec<i64> {
    driver
        .windows(&PER_WINDOW, key, from, to)
        .expect("windows")
        .into_iter()
        .map(|(w, _)| w.start)
        .collect()
}

const BIG: Topic<String, i64> = Topic::new("big-events").partitions(1);

/// As in Kafka Streams, a windowed aggregation keeps its own stream time, moved by the
/// records that reach it: a record filtered out before it, or sent down another branch,
/// closes no window and makes no later record late, whatever its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_do_not_reach_a_window_do_not_close_it() {
    let app = App::new("windows").pipeline("count", |builder| {
        // Values of 100 and more go another way, 1 is filtered out.
        builder
            .stream(EVENTS)
            .split("size")
            .branch("big", |_, v| *v >= 100, |big| big.to(BIG))
            .default_branch("small", |small| {
                small
                    .filter(|_, v| *v != 1)
                    .group_by_key()
                    .windowed_by(TimeWindows::of(ms(10)))
                    .emit_final()
                    .count(PER_WINDOW)
                    .to_stream()
                    .to(COUNTS)
            });
    });
    let mut driver = TestDriver::new(app).expect("driver");
    for (value, time) in [(0, 5), (1, 1_000), (100, 2_000), (0, 7)] {
        driver.pipe_at(&EVENTS, "a", &value, time).expect("pipe");
    }
    driver.run().await.expect("run");
    assert_eq!(driver.metrics().late.load(Ordering::Relaxed), 0, "7 is not late");
    assert!(windowed(&driver, &COUNTS).is_empty(), "[0, 10) is still open");
    assert_eq!(driver.records(&BIG).expect("big"), vec![("a".to_string(), 100)]);
    // A record that reaches the aggregation closes it.
    driver.pipe_at(&EVENTS, "a", &0, 10).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(windowed(&driver, &COUNTS), vec![("a".into(), 0, 10, 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_windows_count_each_record_in_every_window_that_holds_it() {
    let windows = TimeWindows::of(ms(10)).advance_by(ms(4)).grace(ms(1000));
    let mut driver = TestDriver::new(counting(windows, false)).expect("driver");
    let times = [0, 3, 4, 7, 9, 11, 16, 25, 2];
    for time in times {
        driver.pipe_at(&EVENTS, "a", &1, time).expect("pipe");
    }
    driver.run().await.expect("run");
    let mut expected: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for time in times {
        let mut start = 0;
        while start <= time {
            if time < start + 10 {
                *expected.entry((start, start + 10)).or_default() += 1;
            }
            start += 4;
        }
    }
    let table: BTreeMap<(i64, i64), i64> = driver
        .windowed_table(&PER_WINDOW)
        .expect("table")
        .into_iter()
        .map(|(w, n)| ((w.window.start, w.window.end), n))
        .collect();
    assert_eq!(table, expected);
}

const SESSIONS: WindowedTable<String, i64> = WindowedTable::new("sessions");
const SESSION_COUNTS: Topic<Windowed<String>, i64> = Topic::new("session-counts").partitions(1);

fn sessions_app(gap: u64, grace: u64, final_only: bool) -> App {
    App::new("sessions").pipeline("sessions", move |builder| {
        let windowed = builder
            .stream(EVENTS)
            .group_by_key()
            .windowed_by(SessionWindows::with_inactivity_gap(ms(gap)).grace(ms(grace)));
        let windowed = if final_only { windowed.emit_final() } else { windowed };
        windowed.count(SESSIONS).to_stream().to(SESSION_COUNTS);
    })
}

/// Each session: key, start, end, records.
type KeyedSessions = Vec<(String, i64, i64, i64)>;

/// The sessions in the `SESSIONS` table, in key order.
fn sessions(driver: &TestDriver) -> KeyedSessions {
    driver
        .windowed_table(&SESSIONS)
        .expect("table")
        .into_iter()
        .map(|(w, n)| (w.key, w.window.start, w.window.end, n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_between_two_sessions_merges_them() {
    let mut driver = TestDriver::new(sessions_app(10, 1000, false)).expect("driver");
    for (key, time) in [("a", 0), ("a", 20), ("b", 5), ("a", 25)] {
        driver.pipe_at(&EVENTS, key, &1, time).expect("pipe");
    }
    driver.run().await.expect("run");
    assert_eq!(
        sessions(&driver),
        vec![("a".into(), 0, 0, 1), ("a".into(), 20, 25, 2), ("b".into(), 5, 5, 1)]
    );
    // 10 is within the gap of both of a's sessions: one session from 0 to 25.
    driver.pipe_at(&EVENTS, "a", &1, 10).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(sessions(&driver), vec![("a".into(), 0, 25, 4), ("b".into(), 5, 5, 1)]);
    // The merged-away sessions are gone from the changelog too (tombstones).
    let changelog = driver.raw_records("sessions-sessions-changelog");
    let last_of = |start: i64, end: i64| {
        let key = Windowed::new("a".to_string(), Window::new(start, end)).encode_key();
        changelog.iter().rev().find(|r| r.key == key).map(|r| r.value.is_some())
    };
    assert_eq!(last_of(0, 0), Some(false));
    assert_eq!(last_of(20, 25), Some(false));
    assert_eq!(last_of(0, 25), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_grown_between_commit_points_leaves_no_trace_of_its_earlier_shapes() {
    // Each record grows a's session ([0, 0], [0, 1], …): every shape has a key of its own,
    // and all but the last lived only between two commit points. Only the last reaches the
    // changelog and the listeners (Kafka Streams' cache forwards no deletion of a session
    // it never sent either); a session that reached them is deleted from both (the test
    // above). The table goes to the topic as it changes, deletions included (tombstones).
    let app = App::new("sessions").pipeline("sessions", |builder| {
        let windowed = builder
            .stream(EVENTS)
            .group_by_key()
            .windowed_by(SessionWindows::with_inactivity_gap(ms(10)).grace(ms(1000)));
        windowed.count(SESSIONS).to(SESSION_COUNTS);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    for time in 0..10 {
        driver.pipe_at(&EVENTS, "a", &1, time).expect("pipe");
    }
    driver.run().await.expect("run");
    let changelog = driver.raw_records("sessions-sessions-changelog");
    let session = |start: i64, end: i64| Windowed::new("a".to_string(), Window::new(start, end)).encode_key();
    let shapes: Vec<(Option<Vec<u8>>, bool)> = changelog.iter().map(|r| (r.key.clone(), r.value.is_some())).collect();
    assert_eq!(shapes, vec![(session(0, 9), true)]);
    let sent = driver.raw_records("session-counts");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(windowed(&driver, &SESSION_COUNTS), vec![("a".into(), 0, 9, 10)]);
    // The next commit point grows the session again: the shape it had reached the
    // changelog and the listeners, so both are told it is gone.
    driver.pipe_at(&EVENTS, "a", &1, 12).expect("pipe");
    driver.run().await.expect("run");
    let changelog = driver.raw_records("sessions-sessions-changelog");
    let last: Vec<(Option<Vec<u8>>, bool)> = changelog
        .iter()
        .skip(1)
        .map(|r| (r.key.clone(), r.value.is_some()))
        .collect();
    assert_eq!(last.len(), 2, "{last:?}");
    assert!(last.contains(&(session(0, 9), false)), "{last:?}");
    assert!(last.contains(&(session(0, 12), true)), "{last:?}");
    let sent: Vec<(Option<Vec<u8>>, bool)> = driver
        .raw_records("session-counts")
        .iter()
        .map(|r| (r.key.clone(), r.value.is_some()))
        .collect();
    // One commit point's changes go in no particular order.
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[0], (session(0, 9), true));
    assert!(sent[1..].contains(&(session(0, 9), false)), "{sent:?}");
    assert!(sent[1..].contains(&(session(0, 12), true)), "{sent:?}");
}

/// The table caches a test runs under: none (every read from the store), and the default a
/// user gets without setting one.
const CACHES: [Option<usize>; 2] = [Some(0), None];

/// `app` with table caches of `cache` bytes, or the default for `None`.
fn with_cache(app: App, cache: Option<usize>) -> App {
    match cache {
        Some(bytes) => app.table_cache_bytes(bytes),
        None => app,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_beside_a_closed_one_with_the_same_start_keeps_its_own_place() {
    for cache in CACHES {
        a_session_beside_a_closed_one(cache).await;
    }
}

/// Closed sessions are final: a record near one makes a session of its own, which can start
/// where the closed one starts. Both are in the table, and each must stay what it is until
/// it expires (the index once knew a key's sessions by their start only: the closed one's
/// expiry took the other's place, whose next record then started a session of its own).
async fn a_session_beside_a_closed_one(cache: Option<usize>) {
    let app = with_cache(App::new("sessions"), cache).pipeline("sessions", |builder| {
        let windowed = builder.stream(EVENTS).group_by_key().windowed_by(
            SessionWindows::with_inactivity_gap(ms(10))
                .grace(ms(0))
                .retention(ms(15)),
        );
        windowed.count(SESSIONS).to_stream().to(SESSION_COUNTS);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    let steps: [(&[(&str, i64)], KeyedSessions); 4] = [
        (&[("a", 0), ("a", 5)], vec![("a".into(), 0, 5, 2)]),
        // b moves stream time to 16: [0, 5] is closed. a at 11, 5 and 0: [0, 11] beside it.
        (
            &[("b", 16), ("a", 11), ("a", 5), ("a", 0)],
            vec![("a".into(), 0, 5, 2), ("a".into(), 0, 11, 3), ("b".into(), 16, 16, 1)],
        ),
        // Stream time 21: [0, 5] expires (retention 15 ms); [0, 11] is still open.
        (&[("b", 21)], vec![("a".into(), 0, 11, 3), ("b".into(), 16, 21, 2)]),
        (&[("a", 12)], vec![("a".into(), 0, 12, 4), ("b".into(), 16, 21, 2)]),
    ];
    for (n, (records, expected)) in steps.into_iter().enumerate() {
        for (key, time) in records {
            driver.pipe_at(&EVENTS, *key, &1, *time).expect("pipe");
        }
        driver.run().await.expect("run");
        assert_eq!(sessions(&driver), expected, "cache {cache:?} B, step {n}");
    }
}

/// A key's sessions: start, end, records.
type Sessions = Vec<(i64, i64, i64)>;

/// Sessions the way the issue defines them, record by record: the final results, in the
/// order they close.
fn session_model(records: &[(&str, i64)], gap: i64, grace: i64) -> Vec<(String, i64, i64, i64)> {
    let mut now = i64::MIN;
    let mut open: BTreeMap<String, Vec<(i64, i64, i64)>> = BTreeMap::new();
    let mut emitted = Vec::new();
    let mut closed_through = i64::MIN;
    let mut close = |open: &mut BTreeMap<String, Vec<(i64, i64, i64)>>, through: i64, emitted: &mut Vec<_>| {
        let mut closing: Vec<(i64, String, i64, i64)> = Vec::new();
        for (key, sessions) in open.iter() {
            for (start, end, count) in sessions {
                if *end > closed_through && *end <= through {
                    closing.push((*end, key.clone(), *start, *count));
                }
            }
        }
        closing.sort();
        for (end, key, start, count) in closing {
            emitted.push((key, start, end, count));
        }
        closed_through = closed_through.max(through);
    };
    for (key, time) in records {
        now = now.max(*time);
        let through = now - gap - grace - 1;
        let sessions = open.entry(key.to_string()).or_default();
        let (near, far): (Sessions, Sessions) = sessions
            .iter()
            .partition(|(start, end, _)| *end > through && *start <= time + gap && *end >= time - gap);
        let start = near.iter().map(|s| s.0).min().unwrap_or(*time).min(*time);
        let end = near.iter().map(|s| s.1).max().unwrap_or(*time).max(*time);
        if end <= through {
            continue; // late
        }
        let count = near.iter().map(|s| s.2).sum::<i64>() + 1;
        let mut kept: Vec<(i64, i64, i64)> = far;
        kept.push((start, end, count));
        *sessions = kept;
        close(&mut open, through, &mut emitted);
    }
    close(&mut open, now - gap - grace - 1, &mut emitted);
    emitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_finals_match_the_model_and_go_once() {
    let records: Vec<(&str, i64)> = vec![
        ("a", 0),
        ("b", 3),
        ("a", 8),
        ("a", 30),
        ("b", 12),
        ("a", 19),
        ("c", 40),
        ("b", 60),
        ("a", 45),
        ("a", 55),
        ("b", 49),
        ("c", 120),
        ("a", 70),
        ("b", 200),
    ];
    let expected = session_model(&records, 10, 0);
    assert!(expected.len() >= 4, "{expected:?}");
    let mut driver = TestDriver::new(sessions_app(10, 0, true)).expect("driver");
    for (key, time) in &records {
        driver.pipe_at(&EVENTS, *key, &1, *time).expect("pipe");
    }
    driver.run().await.expect("run");
    assert_eq!(windowed(&driver, &SESSION_COUNTS), expected);
}

const SLIDING: WindowedTable<String, i64> = WindowedTable::new("sliding");
const SLIDING_SUMS: WindowedTable<String, i64> = WindowedTable::new("sliding-sums");

/// Kafka Streams' sliding windows of `difference` for `times`: a window ending at each
/// record and one starting just after each record when later records fall in it; each
/// holds the records in `[start, end]`.
fn sliding_model(times: &[(i64, i64)], difference: i64) -> BTreeMap<(i64, i64), (i64, i64)> {
    let mut windows = BTreeMap::new();
    let contents = |start: i64, end: i64| -> (i64, i64) {
        let inside: Vec<i64> = times
            .iter()
            .filter(|(t, _)| *t >= start && *t <= end)
            .map(|(_, v)| *v)
            .collect();
        (inside.len() as i64, inside.iter().sum())
    };
    for (time, _) in times {
        // Records before `difference` share [0, difference].
        let left = if *time < difference {
            (0, difference)
        } else {
            (time - difference, *time)
        };
        windows.insert(left, contents(left.0, left.1));
        let right = (time + 1, time + 1 + difference);
        let content = contents(right.0, right.1);
        if content.0 > 0 {
            windows.insert(right, content);
        }
    }
    windows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_windows_hold_exactly_the_records_of_each_distinct_window() {
    let difference = 10;
    let app = App::new("sliding").pipeline("sliding", move |builder| {
        let grouped = builder.stream(EVENTS);
        let windows = SlidingWindows::with_time_difference(ms(difference as u64)).grace(ms(1000));
        grouped.clone().group_by_key().windowed_by(windows).count(SLIDING);
        grouped
            .group_by_key()
            .windowed_by(windows)
            .reduce(SLIDING_SUMS, |a, b| a + b);
    });
    // In order, with equal times, out of order, and far apart.
    let times: Vec<(i64, i64)> = vec![
        (20, 1),
        (23, 2),
        (28, 3),
        (35, 4),
        (36, 5),
        (50, 6),
        (31, 7),
        (36, 8),
        (51, 9),
        (12, 10),
    ];
    let mut driver = TestDriver::new(app).expect("driver");
    for (time, value) in &times {
        driver.pipe_at(&EVENTS, "a", value, *time).expect("pipe");
    }
    driver.run().await.expect("run");
    let expected = sliding_model(&times, difference);
    let read = |table: &WindowedTable<String, i64>| -> BTreeMap<(i64, i64), i64> {
        driver
            .windowed_table(table)
            .expect("table")
            .into_iter()
            .map(|(w, n)| ((w.window.start, w.window.end), n))
            .collect()
    };
    let counts: BTreeMap<(i64, i64), i64> = expected.iter().map(|(w, (n, _))| (*w, *n)).collect();
    let sums: BTreeMap<(i64, i64), i64> = expected.iter().map(|(w, (_, s))| (*w, *s)).collect();
    assert_eq!(read(&SLIDING), counts);
    assert_eq!(read(&SLIDING_SUMS), sums);
}

/// Kafka Streams' sliding windows near time 0 and at the edge of lateness: records earlier
/// than the time difference share the window [0, difference] (there is no window ending at
/// each); a window closes once its end is before stream time - grace, and a record is late
/// only when even the window starting just after it has closed (t + 1 + difference <= stream
/// time - grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_windows_begin_with_one_window_from_zero_and_drop_late_records_as_kafka_streams() {
    let difference = 10;
    let app = |grace: u64| {
        App::new("sliding").pipeline("sliding", move |builder| {
            builder
                .stream(EVENTS)
                .group_by_key()
                .windowed_by(SlidingWindows::with_time_difference(ms(difference as u64)).grace(ms(grace)))
                .count(SLIDING)
                .to_stream()
                .to(COUNTS);
        })
    };
    let times: Vec<(i64, i64)> = vec![(2, 1), (5, 1), (8, 1), (14, 1), (40, 1)];
    let mut driver = TestDriver::new(app(1000)).expect("driver");
    for (time, value) in &times {
        driver.pipe_at(&EVENTS, "a", value, *time).expect("pipe");
    }
    driver.run().await.expect("run");
    let table: BTreeMap<(i64, i64), i64> = driver
        .windowed_table(&SLIDING)
        .expect("table")
        .into_iter()
        .map(|(w, n)| ((w.window.start, w.window.end), n))
        .collect();
    let expected: BTreeMap<(i64, i64), i64> = [
        ((0, 10), 3),  // 2, 5 and 8
        ((3, 13), 2),  // after 2: 5 and 8
        ((4, 14), 3),  // ending at 14: 5, 8, 14
        ((6, 16), 2),  // after 5: 8 and 14
        ((9, 19), 1),  // after 8: 14
        ((30, 40), 1), // ending at 40
    ]
    .into_iter()
    .collect();
    assert_eq!(table, expected);
    assert_eq!(
        expected,
        sliding_model(&times, difference)
            .into_iter()
            .map(|(w, (n, _))| (w, n))
            .collect()
    );

    // No grace: at stream time 30, a record at 19 is late (19 + 1 + 10 <= 30); one at 20
    // is not: [20, 30] is still open (its end is not before 30) and takes it, and the window
    // just after it, [21, 31], holds 30.
    let mut driver = TestDriver::new(app(0)).expect("driver");
    for time in [30, 19, 20] {
        driver.pipe_at(&EVENTS, "a", &1, time).expect("pipe");
    }
    driver.run().await.expect("run");
    let mut sent = windowed(&driver, &COUNTS);
    sent.sort();
    assert_eq!(sent, vec![("a".into(), 20, 30, 2), ("a".into(), 21, 31, 1)]);
    assert_eq!(driver.metrics().late.load(Ordering::Relaxed), 1);
}

/// A sliding window starting just after a record stays open a millisecond longer than any
/// window holding that record: the record must stay in the aggregation's buffer that long,
/// or a later record in the window (out of order) does not find the window (time
/// difference 10, grace 5: at stream time 20, [5, 15], the window just after the record at
/// 4, is still open, and the record at 9 belongs in it, as Kafka Streams puts it there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sliding_window_just_after_a_record_takes_out_of_order_records_until_it_closes() {
    let app = App::new("sliding").pipeline("sliding", move |builder| {
        builder
            .stream(EVENTS)
            .group_by_key()
            .windowed_by(SlidingWindows::with_time_difference(ms(10)).grace(ms(5)))
            .count(SLIDING)
            .to_stream()
            .to(COUNTS);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    for time in [4, 8, 20] {
        driver.pipe_at(&EVENTS, "a", &1, time).expect("pipe");
    }
    // A commit point: what stream time (20) has passed leaves the buffer.
    driver.run().await.expect("run");
    driver.pipe_at(&EVENTS, "a", &1, 9).expect("pipe");
    driver.run().await.expect("run");
    let last: BTreeMap<(i64, i64), i64> = windowed(&driver, &COUNTS)
        .into_iter()
        .map(|(_, start, end, n)| ((start, end), n))
        .collect();
    assert_eq!(last.get(&(5, 15)), Some(&2), "[5, 15] holds 8 and 9: {last:?}");
    assert_eq!(driver.metrics().late.load(Ordering::Relaxed), 0);
}

const RETAINED: WindowedTable<String, i64> = WindowedTable::new("retained");
const RETAINED_FINALS: Topic<Windowed<String>, i64> = Topic::new("retained-finals").partitions(1);

fn retained_app() -> App {
    App::new("retained").pipeline("retained", |builder| {
        builder
            .stream(EVENTS)
            .group_by_key()
            .windowed_by(TimeWindows::of(ms(10)).retention(ms(100)))
            .emit_final()
            .count(RETAINED)
            .to_stream()
            .to(RETAINED_FINALS);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_store_is_restored_mid_window_and_its_stream_time_with_it() {
    let mut driver = TestDriver::new(retained_app()).expect("driver");
    for time in [1, 2, 3] {
        driver.pipe_at(&EVENTS, "a", &1, time).expect("pipe");
    }
    driver.run().await.expect("run");
    // The partition moves mid-window (after the run's commit; a crash, so no last cut of
    // its own): the new worker restores [0, 10) with 3 records from the changelog and goes on
    // counting into it.
    driver.crash_partition("events", 0, "worker-2").await.expect("crash");
    for time in [4, 5] {
        driver.pipe_at(&EVENTS, "a", &1, time).expect("pipe");
    }
    driver.pipe_at(&EVENTS, "a", &1, 12).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(windowed(&driver, &RETAINED_FINALS), vec![("a".into(), 0, 10, 5)]);
    // Kept for 100 ms: the closed window is still in the table. Once more to another
    // worker: its stream time (12) comes back with the store, so [0, 10) is known to be
    // closed and its final result is not sent again.
    driver.crash_partition("events", 0, "worker-3").await.expect("crash");
    driver.pipe_at(&EVENTS, "a", &1, 25).expect("pipe");
    driver.run().await.expect("run");
    // Back to the first worker, whose own store is behind: the same.
    driver.move_partition("events", 0, "worker-2").await.expect("move");
    driver.pipe_at(&EVENTS, "a", &1, 31).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(
        windowed(&driver, &RETAINED_FINALS),
        vec![("a".into(), 0, 10, 5), ("a".into(), 10, 20, 1), ("a".into(), 20, 30, 1)]
    );
    let kept: Vec<i64> = driver
        .windowed_table(&RETAINED)
        .expect("table")
        .keys()
        .map(|w| w.window.start)
        .collect();
    assert_eq!(kept, vec![0, 10, 20, 30], "closed windows are kept for their retention");
    // Past the retention (from a window's start), windows leave the table and the changelog.
    driver.pipe_at(&EVENTS, "a", &1, 125).expect("pipe");
    driver.run().await.expect("run");
    let kept: Vec<i64> = driver
        .windowed_table(&RETAINED)
        .expect("table")
        .keys()
        .map(|w| w.window.start)
        .collect();
    assert_eq!(kept, vec![30, 120]);
    let changelog = driver.raw_records("retained-retained-changelog");
    let first = Windowed::new("a".to_string(), Window::new(0, 10)).encode_key();
    let last = changelog
        .iter()
        .rev()
        .find(|r| r.key == first)
        .expect("in the changelog");
    assert!(last.value.is_none(), "a tombstone");
    assert_eq!(last.cut().and_then(|cut| cut.stream_time), Some(125));
}

#[record]
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    at: i64,
    value: i64,
}

const READINGS: Topic<String, Reading> = Topic::new("readings").partitions(1).event_time(|r| r.at);
const READINGS_PER_WINDOW: WindowedTable<String, i64> = WindowedTable::new("readings-per-window");
const TIMES: Topic<String, i64> = Topic::new("times");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_time_comes_from_the_value_and_travels_with_what_it_causes() {
    let app = App::new("readings").pipeline("readings", |builder| {
        let readings = builder.stream(READINGS);
        readings.clone().map_values(|_, r| r.value).to(TIMES);
        readings
            .group_by_key()
            .windowed_by(TimeWindows::of(ms(1000)).grace(ms(10_000)))
            .count(READINGS_PER_WINDOW);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    driver.advance_time(Duration::from_secs(3600));
    for at in [5_000, 5_999, 6_000] {
        driver.pipe(&READINGS, "s", &Reading { at, value: at }).expect("pipe");
    }
    driver
        .pipe(&READINGS, "s", &Reading { at: -1, value: 0 })
        .expect("pipe");
    driver.run().await.expect("run");
    let windows: Vec<(i64, i64)> = driver
        .windowed_table(&READINGS_PER_WINDOW)
        .expect("table")
        .into_iter()
        .map(|(w, n)| (w.window.start, n))
        .collect();
    assert_eq!(
        windows,
        vec![(5_000, 2), (6_000, 1)],
        "by the value's time, not the driver's clock"
    );
    let stamps: Vec<i64> = driver.raw_records("times").iter().map(|r| r.timestamp).collect();
    assert_eq!(stamps, vec![5_000, 5_999, 6_000]);
    let dead = driver.raw_records("readings-readings-dlq");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .header("streams.dlq.error")
            .is_some_and(|e| e.contains("negative")),
        "{:?}",
        dead[0]
    );
}

const FAILING_COUNTS: WindowedTable<String, i64> = WindowedTable::new("failing-counts");
const COUNTED: Topic<String, i64> = Topic::new("counted");

/// A closed window whose final result fails downstream goes to the dead-letter topic with
/// its key and the value the table holds, whether the window is still cached or only in the
/// store (no cache, a commit point between its records and its close); the other windows'
/// results go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_result_that_fails_goes_to_the_dead_letter_topic_with_the_windows_value() {
    for cache in CACHES {
        a_final_result_that_fails(cache).await;
    }
}

async fn a_final_result_that_fails(cache: Option<usize>) {
    let app = with_cache(App::new("finals"), cache).pipeline("finals", |builder| {
        builder
            .stream(READINGS)
            .group_by_key()
            .windowed_by(TimeWindows::of(ms(1000)).grace(ms(0)))
            .emit_final()
            .count(FAILING_COUNTS)
            .to_stream()
            .map(|window, count| {
                assert!(count != 2, "two readings in the window from {}", window.window.start);
                (window.key, count)
            })
            .to(COUNTED);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    for at in [0, 500] {
        driver.pipe(&READINGS, "s", &Reading { at, value: at }).expect("pipe");
    }
    driver.run().await.expect("run");
    for at in [1_500, 5_000] {
        driver.pipe(&READINGS, "s", &Reading { at, value: at }).expect("pipe");
    }
    driver.run().await.expect("run");
    let sent = driver.records(&COUNTED).expect("records");
    assert_eq!(sent, vec![("s".to_string(), 1)], "the window from 1,000 ms");
    let dead = driver.raw_records("finals-finals-dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0].key,
        Windowed::new("s".to_string(), Window::new(0, 1_000)).encode_key()
    );
    assert_eq!(dead[0].value.as_deref(), Some(&b"2"[..]), "the table's value");
    assert!(
        dead[0]
            .header("streams.dlq.error")
            .is_some_and(|e| e.contains("two readings in the window from 0")),
        "{:?}",
        dead[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_per_window_sends_each_minute_and_session_once_as_its_contract_says() {
    let hits = spread_hits(400);
    let (minutes, sessions) = window_model(&hits);
    assert!(
        minutes.len() > 20 && sessions.len() > 4,
        "{} {}",
        minutes.len(),
        sessions.len()
    );
    let mut driver = TestDriver::with_partitions(hits_per_window::app(), &[("hit_count", 1)]).expect("driver");
    for (n, hit) in hits.iter().enumerate() {
        driver.pipe(&hits_per_window::HIT_COUNT, &(), hit).expect("pipe");
        if n % 97 == 0 {
            driver.run().await.expect("run"); // commits in between
        }
    }
    driver.run().await.expect("run");
    // Each partition of the output topics has its records in the order their windows
    // closed; across partitions there is no order.
    let minutes_sent = driver.records(&hits_per_window::HITS_PER_MINUTE).expect("minutes");
    let sessions_sent = driver.records(&hits_per_window::USER_SESSIONS).expect("sessions");
    for (user, _) in &minutes_sent {
        let sent: Vec<&MinuteHits> = minutes_sent.iter().filter(|(u, _)| u == user).map(|(_, m)| m).collect();
        let model: Vec<&MinuteHits> = minutes.iter().filter(|(u, _)| u == user).map(|(_, m)| m).collect();
        assert_eq!(sent, model, "{user}");
    }
    assert_eq!(minutes_sent.len(), minutes.len());
    for (user, _) in &sessions_sent {
        let sent: Vec<&UserSession> = sessions_sent
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, s)| s)
            .collect();
        let model: Vec<&UserSession> = sessions.iter().filter(|(u, _)| u == user).map(|(_, s)| s).collect();
        assert_eq!(sent, model, "{user}");
    }
    assert_eq!(sessions_sent.len(), sessions.len());
    assert!(
        driver.metrics().late.load(Ordering::Relaxed) > 0,
        "the data has late records"
    );
    // The wire format of the contract.
    let raw = driver.raw_records("hits-per-minute");
    let first: serde_json::Value = serde_json::from_slice(raw[0].value.as_deref().expect("value")).expect("json");
    let fields: Vec<&str> = first.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(fields, vec!["count", "end", "hits", "start"]);
    assert!(raw[0].key.as_deref().is_some_and(|k| k.starts_with(b"user-")));
    let raw = driver.raw_records("user-sessions");
    let first: serde_json::Value = serde_json::from_slice(raw[0].value.as_deref().expect("value")).expect("json");
    let fields: Vec<&str> = first.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(fields, vec!["count", "end", "start"]);
}

/// The aggregation's stream time reaches the next owner of the partition (with the
/// changelog's headers and the committed offsets' metadata), as in Kafka Streams: a window
/// closed and sent by one worker stays closed on the next, a record late on the first is late
/// on the second, and a record filtered out before the window moves neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_time_moves_with_the_committed_offsets() {
    let app = App::new("handover").pipeline("count", |builder| {
        builder
            .stream(EVENTS)
            .filter(|_, value| *value != 1)
            .group_by_key()
            // Kept a minute: the window's expiry writes no changelog record at 15 s.
            .windowed_by(TimeWindows::of(ms(10_000)).retention(ms(60_000)))
            .emit_final()
            .late_records_to(LATE)
            .count(PER_WINDOW)
            .to_stream()
            .to(COUNTS);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe_at(&EVENTS, "a", &0, 1_000).expect("pipe");
    driver.run().await.expect("run");
    // The aggregation's stream time moves to 15 s: the window [0, 10 s) closes and is sent.
    driver.pipe_at(&EVENTS, "a", &0, 15_000).expect("pipe");
    // Filtered out: the task's stream time moves to 30 s, the aggregation's does not.
    driver.pipe_at(&EVENTS, "a", &1, 30_000).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(windowed(&driver, &COUNTS), vec![("a".into(), 0, 10_000, 1)]);
    // Another worker takes the partition: its stores come from the changelog.
    driver.move_partition("events", 0, "worker-2").await.expect("move");
    driver.pipe_at(&EVENTS, "a", &0, 2_000).expect("pipe");
    driver.pipe_at(&EVENTS, "a", &0, 12_000).expect("pipe");
    driver.pipe_at(&EVENTS, "a", &0, 40_000).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(
        windowed(&driver, &COUNTS),
        vec![("a".into(), 0, 10_000, 1), ("a".into(), 10_000, 20_000, 2)],
        "the window closed at 15 s is not sent again, the record at 2 s is late, the one at 12 s is not"
    );
    assert_eq!(driver.records(&LATE).expect("late"), vec![("a".to_string(), 0)]);
    assert_eq!(driver.metrics().late.load(Ordering::Relaxed), 1);
}

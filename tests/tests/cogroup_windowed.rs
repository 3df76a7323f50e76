//! Windowed cogroups (Kafka Streams' `CogroupedKStream.windowedBy`) through the test driver:
//! clicks and purchases of two value types aggregated per user and window into one windowed
//! table, against a model of a windowed aggregation (one stream time for the cogroup, taken
//! from both streams, where Kafka Streams keeps one per stream; windows closing at end +
//! grace, sliding windows, whose end is in them, 1 ms later; late records dropped), after
//! every commit point, over generated records (hot keys, times out of order, some from 0),
//! tumbling, hopping and sliding windows, grace periods, partition counts, cache budgets (the
//! default, zero and 200 bytes) and partition moves; then sessions and sliding windows by
//! hand.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use streams_core::dsl::{CogroupWindowsOf, CogroupedTimeWindowedKStream};
use streams_core::prelude::*;
use streams_core::testing::{kafka_partition, TestDriver};

const CLICKS: Topic<String, String> = Topic::new("clicks");
const PURCHASES: Topic<String, i64> = Topic::new("purchases");
const ACTIVITY: WindowedTable<String, Activity> = WindowedTable::new("activity-per-window");

#[record]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Activity {
    clicks: i64,
    spent: i64,
    /// What went in, in the order the task took it (sliding windows: in order of event time,
    /// then of arrival).
    events: Vec<String>,
}

fn on_click(mut activity: Activity, page: String) -> Activity {
    activity.clicks += 1;
    activity.events.push(format!("click {page}"));
    activity
}

fn on_purchase(mut activity: Activity, amount: i64) -> Activity {
    activity.spent += amount;
    activity.events.push(format!("buy {amount}"));
    activity
}

fn app<W>(windows: W, cache_bytes: Option<usize>) -> App
where
    W: CogroupWindowsOf<String, Activity, Stream = CogroupedTimeWindowedKStream<String, Activity>> + Send + 'static,
{
    let mut app = App::new("cogroup-windowed-test");
    if let Some(bytes) = cache_bytes {
        app = app.table_cache_bytes(bytes);
    }
    let windows = std::sync::Mutex::new(Some(windows));
    app.pipeline("activity", move |builder| {
        let Some(windows) = windows.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        let clicks = builder.stream(CLICKS).group_by_key();
        let purchases = builder.stream(PURCHASES).group_by_key();
        clicks
            .cogroup(|_, page, activity: Activity| on_click(activity, page))
            .cogroup(purchases, |_, amount, activity| on_purchase(activity, amount))
            .windowed_by(windows)
            .aggregate(ACTIVITY, Activity::default);
    })
}

/// An input record: a click or a purchase, its user and its time.
#[derive(Debug, Clone)]
enum Event {
    Click(String, i64),
    Buy(String, i64, i64),
}

#[derive(Debug, Clone)]
enum Step {
    Event(Event),
    /// A partition (of both inputs) moves to worker `worker-{n}`.
    Move(i32, u8),
}

#[derive(Debug, Clone)]
struct Knobs {
    partitions: i32,
    size: i64,
    advance: i64,
    grace: i64,
    cache_bytes: Option<usize>,
    /// Sliding windows with `size` as their time difference, instead of time windows.
    sliding: bool,
}

/// One partition of Kafka Streams' windowed aggregation, as a model.
#[derive(Default)]
struct Model {
    now: Option<i64>,
    windows: BTreeMap<(String, i64, i64), Activity>,
    /// Sliding windows: each key's records taken (not late), in the order taken.
    taken: BTreeMap<String, Vec<Event>>,
}

fn apply(activity: Activity, event: &Event) -> Activity {
    match event {
        Event::Click(_, time) => on_click(activity, format!("p{time}")),
        Event::Buy(_, _, amount) => on_purchase(activity, *amount),
    }
}

fn time_of(event: &Event) -> i64 {
    match event {
        Event::Click(_, time) | Event::Buy(_, time, _) => *time,
    }
}

impl Model {
    fn take(&mut self, event: &Event, knobs: &Knobs) {
        let (key, time) = match event {
            Event::Click(key, time) | Event::Buy(key, time, _) => (key, *time),
        };
        let now = self.now.map_or(time, |now| now.max(time));
        self.now = Some(now);
        if knobs.sliding {
            self.slide(key, event, knobs);
            return;
        }
        // The windows [start, start + size) holding `time`, starts at multiples of advance.
        let mut start = (time - knobs.size + knobs.advance).max(0) / knobs.advance * knobs.advance;
        while start <= time {
            let end = start + knobs.size;
            if time < end && end + knobs.grace > now {
                let activity = self.windows.remove(&(key.clone(), start, end)).unwrap_or_default();
                let activity = match event {
                    Event::Click(_, time) => on_click(activity, format!("p{time}")),
                    Event::Buy(_, _, amount) => on_purchase(activity, *amount),
                };
                self.windows.insert((key.clone(), start, end), activity);
            }
            start += knobs.advance;
        }
    }

    /// Sliding windows of time difference `size`, by their definition: the key's windows are
    /// one ending at each record taken (`[0, size]` for those before `size`) and one starting
    /// just after each record when a later record falls in it; every open one is made again of
    /// its records in order of time (and of arrival, for equal times), a closed one keeps what
    /// it had. Late when the window just after the record ends at or before stream time -
    /// grace.
    fn slide(&mut self, key: &str, event: &Event, knobs: &Knobs) {
        let (now, difference, time) = (self.now.unwrap_or(0), knobs.size, time_of(event));
        if time + 1 + difference <= now - knobs.grace {
            return;
        }
        let taken = self.taken.entry(key.to_string()).or_default();
        taken.push(event.clone());
        let holds = |(start, end): (i64, i64), t: i64| start <= t && t <= end;
        let mut all = std::collections::BTreeSet::new();
        for other in taken.iter() {
            let t = time_of(other);
            all.insert(if t < difference {
                (0, difference)
            } else {
                (t - difference, t)
            });
            let after = (t + 1, t + 1 + difference);
            if taken.iter().any(|later| holds(after, time_of(later))) {
                all.insert(after);
            }
        }
        let mut ordered: Vec<(i64, usize, &Event)> =
            taken.iter().enumerate().map(|(n, e)| (time_of(e), n, e)).collect();
        ordered.sort_by_key(|(t, n, _)| (*t, *n));
        for (start, end) in all {
            if end < now - knobs.grace {
                continue;
            }
            let activity = ordered
                .iter()
                .filter(|(t, _, _)| holds((start, end), *t))
                .fold(Activity::default(), |activity, (_, _, e)| apply(activity, e));
            self.windows.insert((key.to_string(), start, end), activity);
        }
    }

    /// What the windowed table holds after a commit point: sliding windows leave it when
    /// they close.
    fn table(&self, knobs: &Knobs) -> BTreeMap<(String, i64, i64), Activity> {
        let mut windows = self.windows.clone();
        if let (true, Some(now)) = (knobs.sliding, self.now) {
            windows.retain(|(_, _, end), _| *end >= now - knobs.grace);
        }
        windows
    }
}

fn run(steps: &[Step], knobs: &Knobs) -> Result<(), TestCaseError> {
    let partitions = knobs.partitions;
    let run = async {
        let (size, grace) = (
            Duration::from_millis(knobs.size as u64),
            Duration::from_millis(knobs.grace as u64),
        );
        let app = if knobs.sliding {
            app(
                SlidingWindows::with_time_difference(size).grace(grace),
                knobs.cache_bytes,
            )
        } else {
            app(
                TimeWindows::of(size)
                    .advance_by(Duration::from_millis(knobs.advance as u64))
                    .grace(grace),
                knobs.cache_bytes,
            )
        };
        let existing = [("clicks", partitions), ("purchases", partitions)];
        let mut driver = TestDriver::with_partitions(app, &existing).expect("driver");
        let mut models: Vec<Model> = (0..partitions).map(|_| Model::default()).collect();
        for step in steps {
            match step {
                Step::Event(event) => {
                    let key = match event {
                        Event::Click(key, time) => {
                            driver.pipe_at(&CLICKS, key, &format!("p{time}"), *time).expect("pipe");
                            key
                        }
                        Event::Buy(key, time, amount) => {
                            driver.pipe_at(&PURCHASES, key, amount, *time).expect("pipe");
                            key
                        }
                    };
                    driver.run().await.expect("run");
                    models[kafka_partition(key.as_bytes(), partitions) as usize].take(event, knobs);
                    // After each commit point, not only at the end: sliding windows leave the
                    // table when they close.
                    compare(&driver, &models, knobs)?;
                }
                Step::Move(partition, owner) => {
                    for topic in ["clicks", "purchases"] {
                        driver
                            .move_partition(topic, partition % partitions, &format!("worker-{owner}"))
                            .await
                            .expect("move");
                    }
                }
            }
        }
        driver.run().await.expect("run");
        compare(&driver, &models, knobs)
    };
    streams_tests::run_case(Duration::from_secs(20), run)
        .ok_or_else(|| TestCaseError::fail("the driver did not finish within 20 s"))?
}

/// The windowed table against the partitions' models.
fn compare(driver: &TestDriver, models: &[Model], knobs: &Knobs) -> Result<(), TestCaseError> {
    let table: BTreeMap<(String, i64, i64), Activity> = driver
        .windowed_table(&ACTIVITY)
        .expect("table")
        .into_iter()
        .map(|(windowed, activity)| ((windowed.key, windowed.window.start, windowed.window.end), activity))
        .collect();
    let mut expected = BTreeMap::new();
    for model in models {
        expected.extend(model.table(knobs));
    }
    prop_assert_eq!(table, expected);
    Ok(())
}

/// Steps with times from `start` on (none before 0).
fn steps(start: i64) -> impl Strategy<Value = Vec<Step>> {
    let key = prop_oneof![3 => Just(0u8), 2 => 1u8..4].prop_map(|k| format!("u{k}"));
    let step = prop_oneof![
        4 => (key.clone(), -60i64..80).prop_map(|(key, step)| (0u8, key, step, 0)),
        4 => (key, -60i64..80, 1i64..9).prop_map(|(key, step, amount)| (1u8, key, step, amount)),
        1 => (0i32..3, 1u8..4).prop_map(|(partition, owner)| (2u8, format!("{partition}"), i64::from(owner), 0)),
    ];
    proptest::collection::vec(step, 1..40).prop_map(move |raw| {
        let mut clock = start;
        raw.into_iter()
            .map(|(kind, key, step, amount)| match kind {
                0 | 1 => {
                    clock += step.max(0) / 4;
                    let time = (clock + step.min(0)).max(0);
                    Step::Event(if kind == 0 {
                        Event::Click(key, time)
                    } else {
                        Event::Buy(key, time, amount)
                    })
                }
                _ => Step::Move(key.parse().unwrap_or(0), step as u8),
            })
            .collect()
    })
}

fn case() -> impl Strategy<Value = (Knobs, Vec<Step>)> {
    (
        1i32..3,
        prop_oneof![Just(20i64), Just(50), 1i64..100],
        1i64..=3,
        prop_oneof![Just(0i64), Just(10), 0i64..60],
        prop_oneof![Just(None), Just(Some(0usize)), Just(Some(200))],
        proptest::bool::weighted(0.35),
    )
        .prop_map(|(partitions, size, hops, grace, cache_bytes, sliding)| Knobs {
            partitions,
            size,
            // Tumbling (one hop) or hopping windows.
            advance: (size / hops).max(1),
            grace,
            cache_bytes,
            sliding,
        })
        // Mostly far from 0; sometimes at it (sliding windows' records before their time
        // difference share one window).
        .prop_flat_map(|knobs| {
            (
                Just(knobs),
                prop_oneof![3 => Just(1_000i64), 1 => Just(10)].prop_flat_map(steps),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// After every commit point, the windowed table holds what a windowed aggregation of
    /// both streams holds (Kafka Streams' windows, grace and lateness, with one stream time
    /// for the cogroup, moved by the records of either stream — Kafka Streams keeps one per
    /// stream): every record in each of its windows still open, through its stream's adder,
    /// in the order the task took them (sliding windows: in order of event time); late
    /// records nowhere — across moves and cache budgets.
    #[test]
    fn a_windowed_cogroup_agrees_with_its_model((knobs, steps) in case()) {
        run(&steps, &knobs)?;
    }
}

/// Sessions: a click and a purchase of one user within the gap are one session; a record
/// between two sessions merges them, their aggregates combined by the merger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cogrouped_sessions_merge() {
    const SESSIONS: WindowedTable<String, Activity> = WindowedTable::new("activity-sessions");
    let app = App::new("cogroup-sessions").pipeline("activity", |builder| {
        let clicks = builder.stream(CLICKS).group_by_key();
        let purchases = builder.stream(PURCHASES).group_by_key();
        clicks
            .cogroup(|_, page, activity: Activity| on_click(activity, page))
            .cogroup(purchases, |_, amount, activity| on_purchase(activity, amount))
            .windowed_by(SessionWindows::with_inactivity_gap(Duration::from_millis(200)).grace(Duration::from_secs(1)))
            .aggregate(SESSIONS, Activity::default, |_, mut a, b| {
                a.clicks += b.clicks;
                a.spent += b.spent;
                a.events.extend(b.events);
                a
            });
    });
    let mut driver = TestDriver::new(app).expect("driver");
    let ann = "ann".to_string();
    driver.pipe_at(&CLICKS, &ann, &"home".to_string(), 1_000).expect("pipe");
    driver.run().await.expect("run");
    driver.pipe_at(&PURCHASES, &ann, &5, 1_300).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(
        driver.windowed_table(&SESSIONS).expect("table").len(),
        2,
        "two sessions"
    );
    // 300 ms apart, more than the gap; a click at 1 150 is within the gap of both: one
    // session [1 000, 1 300].
    driver.pipe_at(&CLICKS, &ann, &"cart".to_string(), 1_150).expect("pipe");
    driver.run().await.expect("run");
    let sessions: Vec<(i64, i64, Activity)> = driver
        .windowed_table(&SESSIONS)
        .expect("table")
        .into_iter()
        .map(|(w, a)| (w.window.start, w.window.end, a))
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let (start, end, activity) = &sessions[0];
    assert_eq!((*start, *end), (1_000, 1_300));
    assert_eq!((activity.clicks, activity.spent), (2, 5));
}

/// Sliding windows keep the records they may need again: a cogroup's, of both value types,
/// read back from that table give the same aggregates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cogrouped_sliding_windows_aggregate_both_streams() {
    let mut driver = TestDriver::new(app(
        // Sliding windows leave the table when they close: a grace period keeps them here.
        SlidingWindows::with_time_difference(Duration::from_millis(100)).grace(Duration::from_secs(1)),
        Some(0),
    ))
    .expect("driver");
    let bob = "bob".to_string();
    driver.pipe_at(&CLICKS, &bob, &"a".to_string(), 1_000).expect("pipe");
    driver.pipe_at(&PURCHASES, &bob, &7, 1_050).expect("pipe");
    driver.run().await.expect("run");
    let windows: Vec<(i64, i64, i64, i64)> = driver
        .windowed_table(&ACTIVITY)
        .expect("table")
        .into_iter()
        .map(|(w, a)| (w.window.start, w.window.end, a.clicks, a.spent))
        .collect();
    assert_eq!(
        windows,
        vec![(900, 1_000, 1, 0), (950, 1_050, 1, 7), (1_001, 1_101, 0, 7)],
        "each record's own window and the one after the click"
    );
}

//! Tables with a time to live (`Table::ttl`) through the test driver: a count per key whose
//! entries go once not updated for a while of stream time, against a model, over generated
//! keys (hot ones), times out of order, TTLs, cache budgets (the default, zero, 200 bytes)
//! and partition moves to new and earlier owners (the times are restored with the stores);
//! an agent's table; the wall clock.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use streams_core::prelude::*;
use streams_core::testing::TestDriver;

const CLICKS: Topic<String, i64> = Topic::new("clicks").partitions(2);
const COUNTS_OUT: Topic<String, i64> = Topic::new("counts-out");

fn app(ttl_ms: u64, cache_bytes: Option<usize>, exactly_once: bool) -> App {
    // A table declared at run time here (the TTL varies); users declare theirs as constants.
    let counts: Table<String, i64> = Table::new("counts").ttl(Duration::from_millis(ttl_ms));
    let mut app = App::new("ttl-test");
    if exactly_once {
        app = app.processing_guarantee(streams_core::app::ProcessingGuarantee::ExactlyOnce);
    }
    if let Some(bytes) = cache_bytes {
        app = app.table_cache_bytes(bytes);
    }
    app.pipeline("counts", move |builder| {
        builder.stream(CLICKS).group_by_key().count(counts).to(COUNTS_OUT);
    })
}

#[derive(Debug, Clone)]
enum Step {
    /// A click at a time, processed and committed on its own.
    Click(u8, i64),
    /// Partition `p` moves to `worker-{n}`.
    Move(i32, u8),
}

/// One partition as a model: counts, the time of each key's last update, stream time; and
/// what the output topic's latest record per key is.
#[derive(Default)]
struct Model {
    counts: BTreeMap<String, (i64, i64)>,
    stream_time: Option<i64>,
}

impl Model {
    fn click(&mut self, key: &str, time: i64, ttl: i64, latest: &mut BTreeMap<String, Option<i64>>) {
        // A key's time is the latest of its updates' (a late click does not age it).
        let (count, at) = self.counts.get(key).map_or((0, time), |(c, at)| (*c, time.max(*at)));
        let count = count + 1;
        self.counts.insert(key.to_string(), (count, at));
        latest.insert(key.to_string(), Some(count));
        let now = self.stream_time.map_or(time, |t| t.max(time));
        self.stream_time = Some(now);
        let gone: Vec<String> = self
            .counts
            .iter()
            .filter(|(_, (_, at))| *at <= now - ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.counts.remove(&key);
            latest.insert(key, None);
        }
    }
}

fn run(steps: &[Step], ttl_ms: u64, cache_bytes: Option<usize>, exactly_once: bool) -> Result<(), TestCaseError> {
    let run = async {
        let mut driver = TestDriver::new(app(ttl_ms, cache_bytes, exactly_once)).expect("driver");
        let mut models: Vec<Model> = vec![Model::default(), Model::default()];
        let mut latest: BTreeMap<String, Option<i64>> = BTreeMap::new();
        let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        for step in steps {
            match step {
                Step::Click(key, time) => {
                    let key = format!("k{key}");
                    let (partition, _) = driver.pipe_at(&CLICKS, &key, &1, *time).expect("pipe");
                    driver.run().await.expect("run");
                    models[partition as usize].click(&key, *time, ttl, &mut latest);
                }
                Step::Move(partition, owner) => {
                    driver
                        .move_partition("clicks", *partition, &format!("worker-{owner}"))
                        .await
                        .expect("move");
                }
            }
        }
        let expected: BTreeMap<String, i64> = models
            .iter()
            .flat_map(|m| m.counts.iter().map(|(k, (c, _))| (k.clone(), *c)))
            .collect();
        let counts: Table<String, i64> = Table::new("counts");
        prop_assert_eq!(driver.table(&counts).expect("table"), expected);
        // The output topic's latest record per key: the count, or a tombstone once it went.
        let mut sent: BTreeMap<String, Option<i64>> = BTreeMap::new();
        for record in driver.raw_records("counts-out") {
            let key = String::from_utf8(record.key.unwrap_or_default()).expect("key");
            let value = record.value.map(|v| serde_json::from_slice::<i64>(&v).expect("count"));
            sent.insert(key, value);
        }
        prop_assert_eq!(sent, latest);
        Ok(())
    };
    streams_tests::run_case(Duration::from_secs(20), run)
        .ok_or_else(|| TestCaseError::fail("the driver did not finish within 20 s"))?
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        8 => (prop_oneof![3 => Just(0u8), 2 => 1u8..6], -30i64..60).prop_map(|(k, t)| Step::Click(k, t)),
        1 => (0i32..2, 1u8..4).prop_map(|(p, o)| Step::Move(p, o)),
    ];
    proptest::collection::vec(step, 1..60).prop_map(|steps| {
        // Times from a clock moving forward, some out of order.
        let mut clock = 1_000i64;
        steps
            .into_iter()
            .map(|step| match step {
                Step::Click(key, jitter) => {
                    clock += jitter.max(0);
                    Step::Click(key, clock + jitter.min(0))
                }
                other => other,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The table holds exactly the keys updated within the TTL of stream time, with their
    /// counts (a key that went starts again from zero), and the output topic's latest record
    /// of each key says the same (a tombstone for a key that went).
    #[test]
    fn entries_go_once_not_updated_for_their_ttl(
        steps in steps(),
        ttl_ms in prop_oneof![Just(1u64), 20u64..300],
        cache_bytes in prop_oneof![Just(None), Just(Some(0usize)), Just(Some(200))],
        exactly_once in any::<bool>(),
    ) {
        run(&steps, ttl_ms, cache_bytes, exactly_once)?;
    }
}

const SEEN: Table<String, i64> = Table::new("seen").ttl(Duration::from_millis(100));
const VISITS: Topic<String, i64> = Topic::new("visits").partitions(1);

#[agent(topic = VISITS, tables = [SEEN])]
async fn remember(mut visits: Stream<String, i64>) -> Result<()> {
    while let Some(event) = visits.next_event().await {
        if event.value == 0 {
            SEEN.delete(&event.key).await?;
        } else {
            SEEN.update(&event.key, |seen| *seen += event.value).await?;
        }
    }
    Ok(())
}

/// An agent's table too; its times table is the task's, with a changelog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_table_forgets_keys_not_updated_for_the_ttl() {
    let app = App::new("visits").agent(remember);
    let tables: Vec<&str> = app.tasks()[0].tables.iter().map(|t| t.name).collect();
    assert_eq!(tables, vec!["seen", "seen-ttl"]);
    let mut driver = TestDriver::new(app).expect("driver");
    let visit = |driver: &mut TestDriver, key: &str, time: i64| {
        driver.pipe_at(&VISITS, key, &1, time).expect("pipe");
    };
    visit(&mut driver, "a", 1_000);
    visit(&mut driver, "b", 1_050);
    driver.run().await.expect("run");
    visit(&mut driver, "b", 1_120);
    driver.run().await.expect("run");
    // Stream time 1120: a (1000) is past 100 ms, b (updated at 1120) is not.
    let seen = driver.table(&SEEN).expect("table");
    assert_eq!(seen, BTreeMap::from([("b".to_string(), 2)]));
    assert!(driver
        .raw_records("visits-seen-changelog")
        .iter()
        .any(|r| r.key.as_deref() == Some(b"a") && r.value.is_none()));
    // After a move, the times are the new owner's too.
    driver.move_partition("visits", 0, "worker-2").await.expect("move");
    visit(&mut driver, "c", 1_230);
    driver.run().await.expect("run");
    let seen = driver.table(&SEEN).expect("table");
    assert_eq!(seen, BTreeMap::from([("c".to_string(), 1)]));
    // A key the agent deletes loses its time too.
    driver.pipe_at(&VISITS, "c", &0, 1_240).expect("pipe");
    driver.run().await.expect("run");
    let times = driver.raw_records("visits-seen-ttl-changelog");
    let last_of_c = times.iter().rev().find(|r| r.key.as_deref() == Some(b"c"));
    assert_eq!(last_of_c.map(|r| r.value.is_none()), Some(true), "{times:?}");
}

/// On the wall clock: an entry goes at the first commit point past its TTL after the one
/// that took its last update, whatever the records' times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_wall_clock_entries_go_by_the_time_of_day() {
    const FRESH: Table<String, i64> = Table::new("fresh").ttl_on_wall_clock(Duration::from_secs(2));
    let app = App::new("fresh").pipeline("fresh", |builder| {
        builder.stream(VISITS).group_by_key().count(FRESH);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe_at(&VISITS, "a", &1, 1).expect("pipe");
    driver.run().await.expect("run");
    driver.pipe_at(&VISITS, "b", &1, 1_000_000).expect("pipe");
    driver.run().await.expect("run");
    let fresh = driver.table(&FRESH).expect("table");
    assert_eq!(fresh.len(), 2, "stream time does not matter: {fresh:?}");
    // The driver's wall clock (no real time passes: the stream's times do not matter).
    driver.advance_time(Duration::from_millis(1_900));
    driver.pipe_at(&VISITS, "b", &1, 1_000_001).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(driver.table(&FRESH).expect("table").len(), 2, "1.9 s: both stay");
    driver.advance_time(Duration::from_millis(400));
    driver.pipe_at(&VISITS, "c", &1, 2).expect("pipe");
    driver.run().await.expect("run");
    let fresh = driver.table(&FRESH).expect("table");
    assert_eq!(
        fresh,
        BTreeMap::from([("b".to_string(), 2), ("c".to_string(), 1)]),
        "a went 2 s after its update; b was updated 0.4 s ago"
    );
}

/// A table written at commit points (a table–table join's result) gets its entries' times
/// too, and a late update does not age an entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_result_table_expires_and_late_records_do_not_age_entries() {
    const LEFT: Topic<String, i64> = Topic::new("left").partitions(1);
    const RIGHT: Topic<String, i64> = Topic::new("right").partitions(1);
    const LEFT_T: Table<String, i64> = Table::new("left-t");
    const RIGHT_T: Table<String, i64> = Table::new("right-t");
    const SUMS: Table<String, i64> = Table::new("sums").ttl(Duration::from_millis(100));
    let app = App::new("sums").pipeline("sums", |builder| {
        let right = builder.table(RIGHT, RIGHT_T);
        builder.table(LEFT, LEFT_T).join(&right, SUMS, |_, a, b| a + b);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe_at(&LEFT, "k", &1, 1_000).expect("pipe");
    driver.pipe_at(&RIGHT, "k", &2, 1_000).expect("pipe");
    driver.run().await.expect("run");
    driver.pipe_at(&LEFT, "k", &5, 1_050).expect("pipe");
    driver.run().await.expect("run");
    // A late record at 900 changes the sum, but its entry stays as fresh as 1050.
    driver.pipe_at(&LEFT, "k", &7, 900).expect("pipe");
    driver.pipe_at(&LEFT, "other", &1, 1_120).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(driver.table(&SUMS).expect("table").get("k"), Some(&9));
    driver.pipe_at(&LEFT, "other", &1, 1_150).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(driver.table(&SUMS).expect("table").get("k"), None, "1050 + 100 <= 1150");
}

/// A table named like another's times table is refused, naming why.
#[test]
fn a_table_named_like_a_ttl_tables_times_is_refused() {
    const S: Table<String, i64> = Table::new("s").ttl(Duration::from_secs(1));
    const S_TTL: Table<String, i64> = Table::new("s-ttl");
    let app = App::new("clash").pipeline("p", |builder| {
        let counts = builder.stream(VISITS).group_by_key();
        counts.count(S);
        builder.table(CLICKS, S_TTL);
    });
    let error = app.validate().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("s-ttl") && error.contains("TTL"), "{error}");
}

/// The topology says which tables expire entries, and on which clock.
#[test]
fn a_tables_ttl_is_drawn() {
    const FRESH: Table<String, i64> = Table::new("fresh").ttl_on_wall_clock(Duration::from_secs(2));
    let app = App::new("drawn").pipeline("drawn", |builder| {
        builder.stream(VISITS).group_by_key().count(SEEN);
    });
    let topology = app.topology();
    assert!(
        topology.text().contains("TTL 100ms of stream time"),
        "{}",
        topology.text()
    );
    assert!(
        topology.mermaid().contains("TTL 100ms of stream time"),
        "{}",
        topology.mermaid()
    );
    let app = App::new("drawn").pipeline("drawn", |builder| {
        builder.stream(VISITS).group_by_key().count(FRESH);
    });
    assert!(
        app.topology().text().contains("TTL 2s of wall clock"),
        "{}",
        app.topology().text()
    );
}

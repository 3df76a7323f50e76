//! Tables read their own writes at every cache budget: a change handed to the committer by
//! a cut is seen by every later read, whether or not the store has it yet (issue: a hot key
//! lost most of its updates once its partition's cache went over budget).

use std::collections::BTreeMap;
use std::time::Duration;

use streams_core::prelude::*;
use streams_core::testing::TestDriver;

const HITS: Topic<String, i64> = Topic::new("hits").partitions(1);
const COUNTS: Table<String, i64> = Table::new("counts");

#[agent(topic = HITS, tables = [COUNTS])]
async fn count(mut hits: Stream<String, i64>) -> Result<()> {
    while let Some(event) = hits.next_event().await {
        COUNTS.update(&event.key, |n| *n += 1).await?;
    }
    Ok(())
}

/// Every other record is for `hot`, the others each for a key seen once: the once-seen keys
/// push the cache over its budget again and again, and `hot` must keep every update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_keeps_every_update_at_every_cache_budget() {
    for (budget, pairs) in [(0, 300), (1_000, 2_000), (64 << 10, 5_000), (1 << 20, 20_000)] {
        let app = App::new("cache").table_cache_bytes(budget).agent(count);
        let mut driver = TestDriver::new(app).expect("driver");
        // A broker's round trip: the committer writes the stores after the tasks went on.
        driver.ack_latency(Duration::from_millis(2));
        for i in 0..pairs {
            driver.pipe(&HITS, "hot", &1).expect("pipe");
            driver.pipe(&HITS, &format!("user-{i:06}"), &1).expect("pipe");
        }
        driver.run().await.expect("run");
        let table = driver.table(&COUNTS).expect("table");
        assert_eq!(table.get("hot"), Some(&(pairs as i64)), "budget {budget}");
        assert_eq!(table.len(), pairs + 1, "budget {budget}");
        assert!(table.values().filter(|n| **n == 1).count() == pairs, "budget {budget}");
        // The changelog's last record of `hot` holds the count too.
        let last = driver
            .raw_records("cache-counts-changelog")
            .into_iter()
            .rev()
            .find(|r| r.key.as_deref() == Some(b"hot".as_slice()))
            .expect("hot in the changelog");
        assert_eq!(last.value, Some(pairs.to_string().into_bytes()), "budget {budget}");
        assert!(
            driver
                .metrics()
                .cache_evictions
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
                || budget >= 1 << 20
        );
    }
}

#[record]
#[derive(Debug, Clone, PartialEq)]
struct Hit {
    user: String,
    time: i64,
}

const TIMED_HITS: Topic<String, Hit> = Topic::new("timed-hits").partitions(1).event_time(|hit| hit.time);
const PER_MINUTE: WindowedTable<String, i64> = WindowedTable::new("per-minute");
const MINUTES: Topic<Windowed<String>, i64> = Topic::new("minutes");

/// Closed windows' final results, with a small cache: every window sent once, exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_finals_are_exact_with_a_small_cache() {
    let app = App::new("windows")
        .table_cache_bytes(2_000)
        .pipeline("minutes", |builder| {
            builder
                .stream(TIMED_HITS)
                .group_by_key()
                .windowed_by(TimeWindows::of(Duration::from_secs(60)))
                .emit_final()
                .count(PER_MINUTE)
                .to_stream()
                .to(MINUTES);
        });
    let mut driver = TestDriver::new(app).expect("driver");
    driver.ack_latency(Duration::from_millis(1));
    let mut expected: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let mut time = 0;
    for i in 0..6_000u64 {
        // 30 users, one busy; a record every 1.3 s: about 46 per minute.
        let user = if i % 3 == 0 {
            "busy".to_string()
        } else {
            format!("user-{}", i % 29)
        };
        time += 1_300;
        driver
            .pipe_at(
                &TIMED_HITS,
                &user,
                &Hit {
                    user: user.clone(),
                    time,
                },
                time,
            )
            .expect("pipe");
        *expected.entry((user, time / 60_000 * 60_000)).or_default() += 1;
    }
    driver.run().await.expect("run");
    // Windows that closed: those ending at or before the last record's time.
    expected.retain(|(_, start), _| start + 60_000 <= time);
    let mut finals: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for (window, count) in driver.records(&MINUTES).expect("minutes") {
        let before = finals.insert((window.key.clone(), window.window.start), count);
        assert_eq!(before, None, "{window:?} sent twice");
    }
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(window, count)| finals.get(*window) != Some(*count))
        .map(|(window, count)| (window.clone(), *count, finals.get(window).copied()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} windows wrong (window, expected, sent): {:?}",
        wrong.len(),
        expected.len(),
        &wrong[..wrong.len().min(10)]
    );
    assert_eq!(finals.len(), expected.len(), "no window sent that did not close");
}

/// The memory bound holds when the keys changed again and again outnumber the budget: 100
/// hot keys in no order (each entry about 110 bytes: some 11 kB, against a budget of 2,000
/// bytes) with a new key now and then. The cache never holds more than about twice its
/// budget (one cut's changes on their way to the store, the budget besides), and every count
/// is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_stays_within_twice_its_budget_when_a_large_hot_set_keeps_changing() {
    const BUDGET: usize = 2_000;
    const HOT: usize = 100;
    let app = App::new("bound").table_cache_bytes(BUDGET).agent(count);
    let mut driver = TestDriver::new(app).expect("driver");
    driver.ack_latency(Duration::from_millis(1));
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    for i in 0..6_000 {
        // A hot key picked at random (from a fixed seed), a new key now and then.
        let pick: usize = rand::Rng::random_range(&mut rng, 0..HOT);
        let key = if i % 100 == 99 {
            format!("new-{i}")
        } else {
            format!("hot-{pick:03}")
        };
        driver.pipe(&HITS, &key, &1).expect("pipe");
        *expected.entry(key).or_default() += 1;
    }
    driver.run().await.expect("run");
    assert_eq!(driver.table(&COUNTS).expect("table"), expected);
    let peak = driver
        .metrics()
        .cache_peak_bytes
        .load(std::sync::atomic::Ordering::Relaxed) as usize;
    assert!(peak > BUDGET, "the cache went over budget at all ({peak} bytes)");
    // Twice the budget, and one record's entry over each half.
    assert!(
        peak <= 2 * (BUDGET + 120),
        "the cache held {peak} bytes with a budget of {BUDGET}"
    );
}

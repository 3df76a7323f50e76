//! The system test, like Kafka Streams' smoke test: three worker processes of the `smoke`
//! example (a count per user, a sum per product through a repartition topic, counts per
//! user in tumbling, session and sliding windows, a stream–table join; table caches of
//! 1 MiB, 0 and 2,000 bytes) on the
//! embedded broker, killed with SIGKILL and
//! started again at random points (on their data directory or an empty one) while orders
//! flow. Then a verifier that knows nothing of the library — it decodes the topics itself and
//! computes the truth from the orders it sent — checks, under at-least-once:
//! - the count per user and the counts per tumbling window and per session (tables of the
//!   task that reads the input) exactly: a restore skips the changes of input processed
//!   again, so a crash never counts twice there (the sessions exactly in their changelog,
//!   where the embedded broker's retention has not cut it short; downstream, every session
//!   with its count, and at most earlier shapes of them that a killed worker sent);
//! - the sliding windows' final results (`emit_final`) exactly: every window that closed, by
//!   its definition, sent with its count (again after a crash, never with another), and none
//!   that did not close;
//! - the sum per product never below the truth (records processed again after a crash may
//!   count twice downstream of a repartition topic);
//! - every order enriched with its user's region, at least once.
//!
//! `STREAMS_SMOKE_SEED=…` replays a run's choices (kills, restarts, data); the seed is printed.
//! `STREAMS_SMOKE_LOGS=<dir>` runs the workers at `info` and keeps each one's output there
//! (`worker-<n>-<start>.log`), for a failure that does not come again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streams_core::EmbeddedBroker;
use streams_tests::{create_app_topics, example_binary, produce_at, read_all, wait_caught_up, Child, Read};

const WORKERS: usize = 3;
const USERS: u32 = 40;
const PRODUCTS: u32 = 15;
const ORDERS: u64 = 24_000;
/// Orders are sent in batches this far apart: about 40 s of input.
const BATCH: u64 = 300;
const BATCH_EVERY: Duration = Duration::from_millis(500);
/// Event time: orders 5 ms apart, up to 1 s out of order (the windows' grace is 5 s).
const START: i64 = 1_764_000_000_000;

/// A record to produce: key, value, timestamp.
type Timed = (String, Option<Vec<u8>>, i64);

struct Order {
    id: u64,
    user: String,
    product: String,
    amount: i64,
    time: i64,
}

fn orders(rng: &mut StdRng) -> Vec<Order> {
    (0..ORDERS)
        .map(|id| {
            // A hot user and a long tail.
            let user = if rng.random_bool(0.3) {
                0
            } else {
                rng.random_range(0..USERS)
            };
            Order {
                id,
                user: format!("user-{user}"),
                product: format!("product-{}", rng.random_range(0..PRODUCTS)),
                amount: rng.random_range(1..100),
                time: START + id as i64 * 5 + rng.random_range(0..1_000),
            }
        })
        .collect()
}

fn region(user: &str) -> String {
    format!(
        "region-{}",
        user.len() % 3 + user.bytes().map(u32::from).sum::<u32>() as usize % 4
    )
}

struct Worker {
    dir: PathBuf,
    process: Option<Child>,
    /// Restarts so far (the running process is the `starts`th, from 0).
    starts: usize,
}

/// Starts worker `n`: the first with the default table cache, the second with none (every
/// change a cut of its own), the third with a small one (over budget all the time).
fn spawn(bootstrap: &str, dir: &std::path::Path, n: usize) -> Child {
    let cache = ["1048576", "0", "2000"][n % 3];
    let level = if logs().is_some() { "info" } else { "warn" };
    Child::spawn(
        &example_binary("smoke"),
        &[
            "worker",
            "-l",
            level,
            "--broker",
            bootstrap,
            "--data-dir",
            dir.to_str().expect("utf8"),
            "--table-cache-bytes",
            cache,
        ],
    )
}

/// Where workers' output is kept (`STREAMS_SMOKE_LOGS`).
fn logs() -> Option<PathBuf> {
    std::env::var_os("STREAMS_SMOKE_LOGS").map(PathBuf::from)
}

/// Keeps the output of worker `n`'s `start`th process, when asked to.
fn keep_log(process: &mut Child, n: usize, start: usize) {
    if let Some(dir) = logs() {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("worker-{n}-{start}.log")), process.output());
    }
}

/// The last value of every key of an integer-valued topic, and its largest.
fn last_and_max(records: &[Read]) -> (BTreeMap<Vec<u8>, i64>, BTreeMap<Vec<u8>, i64>) {
    let (mut last, mut max) = (BTreeMap::new(), BTreeMap::new());
    for record in records {
        let Some(key) = record.key.clone() else { continue };
        let value = record
            .value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
        match value {
            Some(value) => {
                last.insert(key.clone(), value);
                let slot = max.entry(key).or_insert(value);
                *slot = (*slot).max(value);
            }
            None => {
                last.remove(&key);
            }
        }
    }
    (last, max)
}

/// A windowed key's user, start and end (`Windowed<String>`: the key, then start and end as
/// 8 big-endian bytes each).
fn window_of(key: &[u8]) -> (String, i64, i64) {
    let at = key.len() - 16;
    let start = i64::from_be_bytes(key[at..at + 8].try_into().expect("start"));
    let end = i64::from_be_bytes(key[at + 8..].try_into().expect("end"));
    (text(&key[..at]), start, end)
}

/// Fails naming the first few windows that differ, and how many do.
fn expect_same(
    got: &BTreeMap<(String, i64, i64), i64>,
    truth: &BTreeMap<(String, i64, i64), i64>,
    what: &str,
    seed: u64,
) {
    let keys: BTreeSet<&(String, i64, i64)> = got.keys().chain(truth.keys()).collect();
    let wrong: Vec<_> = keys
        .into_iter()
        .filter(|k| got.get(*k) != truth.get(*k))
        .map(|k| (k.clone(), got.get(k).copied(), truth.get(k).copied()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} {what} wrong (window, got, truth), e.g. {:?} (seed {seed})",
        wrong.len(),
        truth.len(),
        &wrong[..wrong.len().min(5)]
    );
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn workers_killed_at_random_never_lose_a_record() {
    let seed: u64 = std::env::var("STREAMS_SMOKE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_millis() as u64)
        });
    println!("smoke test seed {seed} (replay: STREAMS_SMOKE_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let broker = EmbeddedBroker::start().expect("broker");
    let bootstrap = broker.bootstrap_servers().to_string();
    broker.create_topic("smoke-orders", 4).expect("topic");
    broker.create_topic("smoke-users", 4).expect("topic");
    create_app_topics(&broker, &streams_tests::smoke::app());

    // The users first, before any order in event time: every order finds its user.
    let users: Vec<Timed> = (0..USERS)
        .map(|u| {
            let user = format!("user-{u}");
            let value = serde_json::to_vec(&region(&user)).expect("json");
            (user, Some(value), START - 60_000)
        })
        .collect();
    produce_at(&bootstrap, "smoke-users", &users);
    let orders = orders(&mut rng);

    let dirs: Vec<tempfile::TempDir> = (0..WORKERS * 4).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut spare = dirs.iter().skip(WORKERS).map(|d| d.path().to_path_buf());
    let mut workers: Vec<Worker> = dirs
        .iter()
        .take(WORKERS)
        .enumerate()
        .map(|(n, d)| Worker {
            dir: d.path().to_path_buf(),
            process: Some(spawn(&bootstrap, d.path(), n)),
            starts: 0,
        })
        .collect();

    // Orders flow from another thread while workers are killed and started again here.
    let producer = {
        let bootstrap = bootstrap.clone();
        let batches: Vec<Vec<Timed>> = orders
            .chunks(BATCH as usize)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|o| {
                        let value = serde_json::json!({
                            "id": o.id, "user": o.user, "product": o.product, "amount": o.amount, "time": o.time
                        });
                        (o.user.clone(), Some(value.to_string().into_bytes()), o.time)
                    })
                    .collect()
            })
            .collect();
        std::thread::spawn(move || {
            for batch in batches {
                produce_at(&bootstrap, "smoke-orders", &batch);
                std::thread::sleep(BATCH_EVERY);
            }
        })
    };
    let mut kills = 0;
    let mut fresh = 0;
    while !producer.is_finished() {
        std::thread::sleep(Duration::from_millis(rng.random_range(3_000..8_000)));
        if producer.is_finished() {
            break;
        }
        let n = rng.random_range(0..WORKERS);
        let worker = &mut workers[n];
        if let Some(mut process) = worker.process.take() {
            let _ = process.process.kill();
            let _ = process.process.wait();
            keep_log(&mut process, n, worker.starts);
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..2_000)));
        // Sometimes on another machine: an empty data directory, restored from the changelogs.
        if rng.random_bool(0.3) {
            if let Some(dir) = spare.next() {
                worker.dir = dir;
                fresh += 1;
            }
        }
        worker.process = Some(spawn(&bootstrap, &worker.dir, n));
        worker.starts += 1;
    }
    producer.join().expect("producer");
    println!("smoke test: {kills} workers killed, {fresh} of them started again on an empty data directory");
    wait_caught_up(
        &bootstrap,
        "smoke",
        &["smoke-orders", "smoke-users", "smoke-by-product-repartition"],
        Duration::from_secs(240),
    );
    for worker in &workers {
        if let Some(process) = &worker.process {
            process.terminate();
        }
    }
    for (n, worker) in workers.iter_mut().enumerate() {
        if let Some(process) = &mut worker.process {
            process.wait(Duration::from_secs(120));
            keep_log(process, n, worker.starts);
        }
    }

    // The truth, from the orders alone.
    let mut per_user: BTreeMap<String, i64> = BTreeMap::new();
    let mut per_product: BTreeMap<String, i64> = BTreeMap::new();
    let mut per_window: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let size = streams_tests::smoke::WINDOW.as_millis() as i64;
    for o in &orders {
        *per_user.entry(o.user.clone()).or_default() += 1;
        *per_product.entry(o.product.clone()).or_default() += o.amount;
        *per_window.entry((o.user.clone(), o.time - o.time % size)).or_default() += 1;
    }

    // Counts per user: exact, in the table's changelog and in what was sent.
    let (changelog, _) = last_and_max(&read_all(&bootstrap, "smoke-orders-per-user-changelog"));
    let changelog: BTreeMap<String, i64> = changelog.into_iter().map(|(k, v)| (text(&k), v)).collect();
    assert_eq!(changelog, per_user, "count per user, in its changelog (seed {seed})");
    let (sent, _) = last_and_max(&read_all(&bootstrap, "smoke-user-counts"));
    let sent: BTreeMap<String, i64> = sent.into_iter().map(|(k, v)| (text(&k), v)).collect();
    assert_eq!(sent, per_user, "count per user, as sent (seed {seed})");

    // Sums per product: never below.
    let (changelog, _) = last_and_max(&read_all(&bootstrap, "smoke-amount-per-product-changelog"));
    let mut above = 0;
    for (product, truth) in &per_product {
        let got = changelog.get(product.as_bytes()).copied().unwrap_or(0);
        assert!(got >= *truth, "{product}: {got} < {truth} (seed {seed})");
        above += i64::from(got > *truth);
    }
    println!(
        "smoke test: {above} of {} products above the truth (records processed again)",
        per_product.len()
    );

    // Counts per window: the largest value sent for each.
    let (_, max) = last_and_max(&read_all(&bootstrap, "smoke-user-windows"));
    let mut windows: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for (key, value) in max {
        let (user, start, _) = window_of(&key);
        let slot = windows.entry((user, start)).or_default();
        *slot = (*slot).max(value);
    }
    // The windows are kept by the task that reads the input too: exact, like the counts.
    for (window, truth) in &per_window {
        let got = windows.get(window).copied().unwrap_or(0);
        assert_eq!(got, *truth, "window {window:?} (seed {seed})");
    }
    assert_eq!(
        windows.len(),
        per_window.len(),
        "windows sent that never had an order (seed {seed})"
    );

    // Each user's order times, in order, and the partition its orders went to.
    let mut times: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for o in &orders {
        times.entry(o.user.clone()).or_default().push(o.time);
    }
    for t in times.values_mut() {
        t.sort_unstable();
    }
    let partition: BTreeMap<String, i32> = read_all(&bootstrap, "smoke-orders")
        .into_iter()
        .map(|r| (text(&r.key.unwrap_or_default()), r.partition))
        .collect();

    // Sessions, kept by the task that reads the input (no order is late: the disorder, 1 s, is
    // within the grace period). Their changelog, the last value of each session, those merged
    // into another deleted, holds exactly the sessions of each user's orders: a restore skips
    // the changes of input processed again and writes those keys' valid values again.
    let gap = streams_tests::smoke::SESSION_GAP.as_millis() as i64;
    let mut truth: BTreeMap<(String, i64, i64), i64> = BTreeMap::new();
    for (user, t) in &times {
        let mut start = 0;
        for i in 1..=t.len() {
            if i == t.len() || t[i] - t[i - 1] > gap {
                truth.insert((user.clone(), t[start], t[i - 1]), (i - start) as i64);
                start = i;
            }
        }
    }
    let sessions = truth.len();
    let log = read_all(&bootstrap, "smoke-orders-per-session-changelog");
    // The embedded broker drops a partition's oldest batches while it holds more than 5 MiB
    // (or 100,000 batches): a changelog partition whose first record is not at offset 0 has
    // lost its oldest changes, and with them the last value of sessions that ended early.
    // What it still holds must be right; sessions missing from it are checked downstream only.
    let mut first: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &log {
        let slot = first.entry(r.partition).or_insert(r.offset);
        *slot = (*slot).min(r.offset);
    }
    let (last, _) = last_and_max(&log);
    let stored: BTreeMap<(String, i64, i64), i64> = last.iter().map(|(k, v)| (window_of(k), *v)).collect();
    let whole = |user: &str| first.get(&partition[user]).is_none_or(|offset| *offset == 0);
    let expected: BTreeMap<(String, i64, i64), i64> = truth
        .iter()
        .filter(|(session, _)| whole(&session.0) || stored.contains_key(*session))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    expect_same(&stored, &expected, "sessions in their changelog", seed);
    let cut_short: Vec<_> = first.iter().filter(|(_, offset)| **offset > 0).collect();
    if !cut_short.is_empty() {
        println!(
            "smoke test: session changelog partitions cut short by the broker's retention (partition, first offset): {cut_short:?}; {} sessions checked downstream only",
            truth.len() - expected.len()
        );
    }
    // What was sent holds every session with its count, and at most a few more: a killed
    // worker may have sent a shape of a session whose changelog record it did not (the two go
    // out together, unacknowledged until the commit point is flushed). Its input is processed again,
    // with other commit points, so that shape may be made and merged away between two of them
    // and never deleted downstream (at-least-once; Kafka Streams is the same). Such a shape
    // lies inside a session of its user and counts some of that session's orders.
    let (last, _) = last_and_max(&read_all(&bootstrap, "smoke-user-sessions"));
    let sessions_sent: BTreeMap<(String, i64, i64), i64> = last.iter().map(|(k, v)| (window_of(k), *v)).collect();
    let missing: Vec<_> = truth
        .iter()
        .filter(|(session, count)| sessions_sent.get(*session) != Some(*count))
        .map(|(session, count)| (session.clone(), sessions_sent.get(session).copied(), *count))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} sessions not sent with their count (session, sent, truth), e.g. {:?} (seed {seed})",
        missing.len(),
        truth.len(),
        &missing[..missing.len().min(5)]
    );
    let stale: Vec<_> = sessions_sent
        .iter()
        .filter(|(session, _)| !truth.contains_key(*session))
        .collect();
    for ((user, start, end), count) in &stale {
        let inside = truth
            .range((user.clone(), i64::MIN, i64::MIN)..=(user.clone(), *start, i64::MAX))
            .next_back()
            .is_some_and(|((_, s, e), _)| s <= start && end <= e);
        let t = &times[user];
        let within = (t.partition_point(|x| x <= end) - t.partition_point(|x| x < start)) as i64;
        assert!(
            inside && (1..=within).contains(count),
            "session ({user}, {start}, {end}) sent with {count}: not a shape of one of {user}'s sessions (seed {seed})"
        );
    }

    // Sliding windows, sent when they close: by definition, a window ending at each
    // order of a user and one starting just after it when a later order falls in it; each
    // counts the user's orders in it. Those that closed (end + grace before the stream time
    // of their partition, the largest time in it) are sent, with their final count; no other.
    let difference = streams_tests::smoke::SLIDE.as_millis() as i64;
    let grace = streams_tests::smoke::GRACE.as_millis() as i64;
    let mut now: BTreeMap<i32, i64> = BTreeMap::new();
    for (user, t) in &times {
        let slot = now.entry(partition[user]).or_insert(i64::MIN);
        *slot = (*slot).max(*t.last().expect("orders"));
    }
    let mut truth: BTreeMap<(String, i64, i64), i64> = BTreeMap::new();
    for (user, t) in &times {
        let count =
            |start: i64, end: i64| (t.partition_point(|x| *x <= end) - t.partition_point(|x| *x < start)) as i64;
        let mut windows = BTreeSet::new();
        for &time in t {
            windows.insert((time - difference, time));
            if count(time + 1, time + 1 + difference) > 0 {
                windows.insert((time + 1, time + 1 + difference));
            }
        }
        for (start, end) in windows {
            if end + grace < now[&partition[user]] {
                truth.insert((user.clone(), start, end), count(start, end));
            }
        }
    }
    let sent = read_all(&bootstrap, "smoke-user-sliding");
    let mut sliding: BTreeMap<(String, i64, i64), i64> = BTreeMap::new();
    for record in &sent {
        let window = window_of(record.key.as_deref().expect("key"));
        let value = record
            .value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
        let value = value.unwrap_or_else(|| panic!("sliding window {window:?}: no count (seed {seed})"));
        // At least once: a result sent again after a crash is the same result.
        if let Some(before) = sliding.insert(window.clone(), value) {
            assert_eq!(
                before, value,
                "sliding window {window:?} sent with two counts (seed {seed})"
            );
        }
    }
    expect_same(&sliding, &truth, "sliding windows", seed);
    println!(
        "smoke test: {} sessions ({} earlier shapes left downstream), {} sliding windows closed ({} results sent)",
        sessions,
        stale.len(),
        sliding.len(),
        sent.len()
    );

    // Every order enriched, with its user's region.
    let mut enriched: BTreeSet<u64> = BTreeSet::new();
    for record in read_all(&bootstrap, "smoke-enriched") {
        let value: serde_json::Value = serde_json::from_slice(&record.value.unwrap_or_default()).expect("json");
        let id = value["id"].as_u64().expect("id");
        let user = text(&record.key.unwrap_or_default());
        assert_eq!(value["region"].as_str(), Some(region(&user).as_str()), "order {id}");
        enriched.insert(id);
    }
    let missing: Vec<u64> = (0..ORDERS).filter(|id| !enriched.contains(id)).take(10).collect();
    assert!(
        missing.is_empty(),
        "orders never enriched, e.g. {missing:?} (seed {seed})"
    );
}

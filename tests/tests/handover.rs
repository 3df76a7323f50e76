//! Partitions moving between workers, through the test driver: the same restore and the
//! same choice of where to start as a worker makes, with commits that fail on demand. No
//! update may be lost, whichever way a partition travels.

use streams_core::prelude::*;
use streams_core::testing::{TestDriver, FIRST_OWNER};

const EVENTS: Topic<String, i64> = Topic::new("events").partitions(1);
const COUNTS: Table<String, i64> = Table::new("event-counts");

/// Counts records per key; a negative value deletes the key.
#[agent(topic = EVENTS, tables = [COUNTS])]
async fn count_events(mut events: Stream<String, i64>) -> Result<()> {
    while let Some(event) = events.next_event().await {
        if event.value < 0 {
            COUNTS.delete(&event.key).await?;
        } else {
            COUNTS.update(&event.key, |n| *n += 1).await?;
        }
    }
    Ok(())
}

fn driver() -> TestDriver {
    TestDriver::new(App::new("owners").agent(count_events)).expect("driver")
}

fn pipe(driver: &mut TestDriver, key: &str, count: usize) {
    for _ in 0..count {
        driver.pipe(&EVENTS, &key.to_string(), &1).expect("pipe");
    }
}

/// Worker 1 processes a partition past a commit that failed; worker 2 takes it, processes
/// part of that input again and commits; the partition returns to worker 1, whose store is
/// ahead of that commit. Worker 1's restore applies worker 2's changes (which reflect less
/// input than its own store), so it must start at worker 2's commit, not after its own
/// checkpoint: otherwise the input between the two is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_returning_to_an_earlier_owner_loses_no_update() {
    let mut driver = driver();
    pipe(&mut driver, "k", 1000);
    driver.run_to("events", 0, 800).await.expect("run");
    assert_eq!(driver.committed("events", 0), Some(800));

    // Worker 1 processes 800..999; its commits fail (its store is written at each cut).
    driver.fail_commits(true);
    driver.run().await.expect("run");
    assert_eq!(driver.committed("events", 0), Some(800));
    assert_eq!(driver.table(&COUNTS).expect("table")["k"], 1000);

    // Worker 2 takes over (worker 1's last commit fails too): it restores without worker
    // 1's uncommitted changes, starts at 800, and commits after 900.
    driver.move_partition("events", 0, "worker-2").await.expect("move");
    driver.fail_commits(false);
    driver.run_to("events", 0, 901).await.expect("run");
    assert_eq!(driver.committed("events", 0), Some(901));
    assert_eq!(driver.table(&COUNTS).expect("table")["k"], 901);

    // Back to worker 1.
    driver.move_partition("events", 0, FIRST_OWNER).await.expect("move");
    assert_eq!(driver.owner("events", 0), Some(FIRST_OWNER));
    driver.run().await.expect("run");
    assert_eq!(
        driver.table(&COUNTS).expect("table")["k"],
        1000,
        "every record counted once"
    );
    assert_eq!(driver.committed("events", 0), Some(1000));
}

/// A worker that returns to a partition nobody else changed meanwhile resumes after its own
/// checkpoint, even though its last commit failed: nothing is counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_ahead_of_a_failed_commit_resumes_after_itself() {
    let mut driver = driver();
    pipe(&mut driver, "k", 100);
    driver.run_to("events", 0, 50).await.expect("run");
    driver.fail_commits(true);
    driver.run().await.expect("run");
    // A restart of the same worker (its last commit fails too): its own store, nothing new
    // in the changelog.
    driver.move_partition("events", 0, FIRST_OWNER).await.expect("move");
    driver.fail_commits(false);
    assert_eq!(driver.committed("events", 0), Some(50));
    pipe(&mut driver, "k", 10);
    driver.run().await.expect("run");
    assert_eq!(driver.table(&COUNTS).expect("table")["k"], 110);
    assert_eq!(driver.committed("events", 0), Some(110));
}

/// A worker killed after its commits failed: the next owner restores only what committed
/// input caused and processes the rest again, so the counts are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_failed_commits_is_repaired_by_the_next_owner() {
    let mut driver = driver();
    pipe(&mut driver, "a", 30);
    pipe(&mut driver, "b", 20);
    driver.run().await.expect("run");
    driver.fail_commits(true);
    pipe(&mut driver, "a", 5);
    driver.run().await.expect("run");
    driver.fail_commits(false);
    driver.crash_partition("events", 0, "worker-2").await.expect("crash");
    driver.run().await.expect("run");
    let table = driver.table(&COUNTS).expect("table");
    assert_eq!((table["a"], table["b"]), (35, 20));
    assert!(
        driver
            .raw_records("owners-event-counts-changelog")
            .iter()
            .filter(|r| r.key.as_deref() == Some(b"a".as_slice()))
            .count()
            >= 3,
        "worker 1's uncommitted change of `a` is in the changelog, and was skipped"
    );
}

/// A deleted key is a tombstone in the changelog, and stays deleted when another worker
/// restores the table from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_stays_deleted_after_a_restore() {
    let mut driver = driver();
    pipe(&mut driver, "kept", 2);
    pipe(&mut driver, "gone", 3);
    driver.run().await.expect("run");
    driver.pipe(&EVENTS, &"gone".to_string(), &-1).expect("pipe");
    driver.run().await.expect("run");
    let tombstones: Vec<_> = driver
        .raw_records("owners-event-counts-changelog")
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(b"gone".as_slice()) && r.value.is_none())
        .collect();
    assert_eq!(tombstones.len(), 1, "one tombstone for `gone`");

    driver.move_partition("events", 0, "worker-2").await.expect("move");
    let table = driver.table(&COUNTS).expect("table");
    assert_eq!(table.get("gone"), None, "deleted after the restore");
    assert_eq!(table.get("kept"), Some(&2));
    assert!(driver.metrics().restored.load(std::sync::atomic::Ordering::Relaxed) >= 3);
}

const SCORES: Topic<String, i64> = Topic::new("scores").partitions(1);
const BEST: Table<String, i64> = Table::new("best").default_value(|| 100);

/// Keeps the best score per player, starting from 100.
#[agent(topic = SCORES, tables = [BEST])]
async fn keep_best(mut scores: Stream<String, i64>) -> Result<()> {
    while let Some(event) = scores.next_event().await {
        let best = BEST.get(&event.key).await?;
        if event.value > best {
            BEST.set(&event.key, event.value).await?;
        } else {
            BEST.update(&event.key, |_| {}).await?;
        }
    }
    Ok(())
}

/// Missing keys read as the table's `default_value`, in `get` and in `update`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_keys_read_as_the_declared_default() {
    let mut driver = TestDriver::new(App::new("scores").agent(keep_best)).expect("driver");
    driver.pipe(&SCORES, &"ann".to_string(), &40).expect("pipe");
    driver.pipe(&SCORES, &"bob".to_string(), &250).expect("pipe");
    driver.run().await.expect("run");
    let best = driver.table(&BEST).expect("table");
    assert_eq!(best["ann"], 100, "40 < the default 100");
    assert_eq!(best["bob"], 250);
}

/// A change that a restore skipped (its input was never committed) stays in the changelog
/// after the valid value of its key. Once the group commits past its source offset, a later
/// restore must still not take it for a committed change: the worker that skipped it writes
/// the key's valid value again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_uncommitted_input_is_never_applied_later() {
    let mut driver = driver();
    pipe(&mut driver, "x", 10);
    driver.run().await.expect("run");
    driver.fail_commits(true);
    pipe(&mut driver, "k", 10);
    driver.run().await.expect("run"); // worker-1: k = 10 at offset 19, the group at 10
    driver.move_partition("events", 0, "worker-2").await.expect("move");
    driver.run_to("events", 0, 15).await.expect("run"); // worker-2: k = 5 at offset 14
    driver.move_partition("events", 0, FIRST_OWNER).await.expect("move"); // skips k = 5
    driver.fail_commits(false);
    pipe(&mut driver, "y", 5);
    driver.run().await.expect("run");
    assert_eq!(driver.committed("events", 0), Some(25));
    // A worker with no store restores everything; every change there is now below 25.
    driver.move_partition("events", 0, "worker-3").await.expect("move");
    let table = driver.table(&COUNTS).expect("table");
    assert_eq!((table["x"], table["k"], table["y"]), (10, 10, 5));
}

/// The same, with the worker that skipped the change killed before its first cut: what it
/// was to write again is lost with it, so its store must not count the skipped change as
/// seen. The restore after the crash skips it, and writes the valid value again, once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restate_lost_in_a_crash_is_made_again() {
    let mut driver = driver();
    pipe(&mut driver, "x", 10);
    driver.run().await.expect("run");
    driver.fail_commits(true);
    pipe(&mut driver, "k", 10);
    driver.run().await.expect("run"); // worker-1: k = 10 at offset 19, the group at 10
    driver.move_partition("events", 0, "worker-2").await.expect("move");
    driver.run_to("events", 0, 15).await.expect("run"); // worker-2: k = 5 at offset 14
    driver.move_partition("events", 0, FIRST_OWNER).await.expect("move"); // skips k = 5
                                                                          // Killed before its first cut: the restate of k is lost.
    driver.crash_partition("events", 0, FIRST_OWNER).await.expect("crash");
    driver.fail_commits(false);
    pipe(&mut driver, "y", 5);
    driver.run().await.expect("run");
    assert_eq!(driver.committed("events", 0), Some(25));
    driver.move_partition("events", 0, "worker-3").await.expect("move");
    let table = driver.table(&COUNTS).expect("table");
    assert_eq!((table["x"], table["k"], table["y"]), (10, 10, 5));
}

/// A worker whose store is ahead of the group's commit gets its partition back after another
/// owner committed part of that input again: its store holds its own effects of input the
/// partition now processes again, for keys the other owner did not touch too. It rebuilds its
/// stores from the changelog, so no key is counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_owner_counts_no_key_twice() {
    let mut driver = driver();
    pipe(&mut driver, "a", 800);
    pipe(&mut driver, "k1", 100); // 800..899
    pipe(&mut driver, "k2", 100); // 900..999
    driver.run_to("events", 0, 800).await.expect("run");
    driver.fail_commits(true);
    driver.run().await.expect("run");
    driver.move_partition("events", 0, "worker-2").await.expect("move");
    driver.fail_commits(false);
    driver.run_to("events", 0, 851).await.expect("run"); // worker-2 commits k1 = 51
    driver.move_partition("events", 0, FIRST_OWNER).await.expect("move");
    driver.run().await.expect("run");
    let table = driver.table(&COUNTS).expect("table");
    assert_eq!((table["a"], table["k1"], table["k2"]), (800, 100, 100));
}

//! Exactly-once against Kafka's real behaviour, proven through the test driver, whose
//! transactions behave as Kafka's do where the embedded broker's do not: a committed
//! transaction's markers written after its offsets (its records invisible to read_committed
//! readers until then), aborted records never read, delivery failures and commits whose
//! outcome is unknown injected on demand, the group's generation checked at commit.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use streams_core::app::ProcessingGuarantee;
use streams_core::prelude::*;
use streams_core::testing::TestDriver;
use streams_core::OnError;

const NUMBERS: Topic<String, i64> = Topic::new("numbers").partitions(1);
const SUMS: Table<String, i64> = Table::new("sums");
const TOTALS: Topic<String, i64> = Topic::new("totals").partitions(1);

#[agent(topic = NUMBERS, tables = [SUMS], sends = [TOTALS])]
async fn sum(mut numbers: Stream<String, i64>) -> Result<()> {
    while let Some(event) = numbers.next_event().await {
        let total = SUMS.update(&event.key, |s| *s += event.value).await?;
        TOTALS.send(&event.key, &total).await?;
    }
    Ok(())
}

/// The totals a read_committed reader sees, in order.
fn totals(driver: &TestDriver) -> Vec<i64> {
    driver
        .records(&TOTALS)
        .expect("totals")
        .into_iter()
        .map(|(_, t)| t)
        .collect()
}

fn app() -> App {
    App::new("txn")
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
        .agent(sum)
}

/// KAFKA-10167: the previous owner's last round has committed — the group's offsets include
/// it — but its markers are not yet written on the changelog. A restore that stopped at the
/// last stable offset would miss the round's changes, and the new owner would start after the
/// round without them. The restore reads to the end, waiting for the markers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_waits_for_the_markers_of_a_committed_round() {
    let mut driver = TestDriver::new(app()).expect("driver");
    driver.marker_latency(Duration::from_millis(300));
    for _ in 0..100 {
        driver.pipe(&NUMBERS, "k", &1).expect("pipe");
    }
    // Processed, not committed: the hand-over's last round commits the changes, and worker-2
    // restores while that round's markers are pending.
    driver.process().await.expect("process");
    driver.move_partition("numbers", 0, "worker-2").await.expect("move");
    driver.pipe(&NUMBERS, "k", &1).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(driver.table(&SUMS).expect("table")["k"], 101);
    let totals: Vec<i64> = totals(&driver);
    assert_eq!(
        totals,
        (1..=101).collect::<Vec<i64>>(),
        "read committed: each total once, in order"
    );
}

/// Runs `driver` with a bound: a worker that aborts the same transaction forever would
/// keep the run going.
async fn run_bounded(driver: &mut TestDriver) -> streams_core::Result<()> {
    tokio::time::timeout(Duration::from_secs(60), driver.run())
        .await
        .unwrap_or_else(|_| panic!("the run did not end within 60 s (an abort loop?)"))
}

/// The broker refuses totals of three digits (a topic whose `max.message.bytes` is smaller
/// than the records): under exactly-once each round with one aborts, and the same record is
/// sent again. By default the worker stops, naming the topic and the broker's answer, rather
/// than abort forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_broker_refuses_stops_the_worker_by_default() {
    for guarantee in [ProcessingGuarantee::ExactlyOnce, ProcessingGuarantee::AtLeastOnce] {
        let mut driver = TestDriver::new(app().processing_guarantee(guarantee)).expect("driver");
        driver.refuse_records("totals", 2);
        for _ in 0..50 {
            driver.pipe(&NUMBERS, "k", &1).expect("pipe");
        }
        run_bounded(&mut driver).await.expect("the first 50 commit");
        for _ in 0..100 {
            driver.pipe(&NUMBERS, "k", &1).expect("pipe");
        }
        let error = run_bounded(&mut driver).await.expect_err("refused").to_string();
        assert!(error.contains("totals"), "{guarantee:?}: {error}");
        assert!(error.contains("Message size too large"), "{guarantee:?}: {error}");
        let totals: Vec<i64> = totals(&driver);
        assert!(totals.iter().all(|t| *t < 100), "{guarantee:?}: {totals:?}");
        if guarantee == ProcessingGuarantee::ExactlyOnce {
            // Nothing of the refused round is visible to a read_committed reader: the totals
            // are those of the committed rounds, 1 to the last committed sum, as is the
            // changelog's last committed value.
            let last = *totals.last().expect("rounds before the refused one committed");
            assert_eq!(totals, (1..=last).collect::<Vec<i64>>(), "{totals:?}");
            assert_eq!(last, 50, "the first run's round committed, nothing of the refused one");
            let sums: Vec<i64> = driver
                .raw_records("txn-sums-changelog")
                .into_iter()
                .filter(|r| !r.aborted)
                .filter_map(|r| serde_json::from_slice(r.value.as_deref()?).ok())
                .collect();
            assert_eq!(sums.last(), Some(&last), "{sums:?}");
        }
    }
}

/// With `OnError::DeadLetter`, a refused record goes to the dead-letter topic, with where it
/// was going and why, and the worker goes on; everything else is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_broker_refuses_goes_to_the_dead_letter_topic_when_asked() {
    for guarantee in [ProcessingGuarantee::ExactlyOnce, ProcessingGuarantee::AtLeastOnce] {
        let app = app()
            .processing_guarantee(guarantee)
            .on_production_error(OnError::DeadLetter);
        let mut driver = TestDriver::new(app).expect("driver");
        driver.refuse_records("totals", 2);
        for _ in 0..150 {
            driver.pipe(&NUMBERS, "k", &1).expect("pipe");
        }
        run_bounded(&mut driver).await.expect("run");
        assert_eq!(driver.table(&SUMS).expect("table")["k"], 150, "{guarantee:?}");
        let totals: Vec<i64> = totals(&driver);
        assert_eq!(totals, (1..100).collect::<Vec<i64>>(), "{guarantee:?}");
        let dead: Vec<_> = driver
            .raw_records("txn-dlq")
            .into_iter()
            .filter(|r| !r.aborted)
            .collect();
        let values: Vec<String> = dead
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect();
        assert_eq!(
            values,
            (100..=150).map(|n| n.to_string()).collect::<Vec<_>>(),
            "{guarantee:?}"
        );
        assert!(dead.iter().all(|r| r.header("streams.dlq.topic") == Some("totals")));
        assert!(dead.iter().all(|r| r
            .header("streams.dlq.error")
            .is_some_and(|e| e.contains("Message size too large"))));
    }
}

/// The dead-letter topic of refused records: the app's own when it names one
/// (`App::dead_letter_topic`), or the one `App::production_dead_letter_topic` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_go_to_the_dead_letter_topic_the_app_names() {
    for (app, topic) in [
        (app().dead_letter_topic("everything-bad"), "everything-bad"),
        (
            app()
                .dead_letter_topic("everything-bad")
                .production_dead_letter_topic("refused"),
            "refused",
        ),
    ] {
        let app = app.on_production_error(OnError::DeadLetter);
        let mut driver = TestDriver::new(app).expect("driver");
        driver.refuse_records("totals", 2);
        for _ in 0..120 {
            driver.pipe(&NUMBERS, "k", &1).expect("pipe");
        }
        run_bounded(&mut driver).await.expect("run");
        let dead = driver.raw_records(topic).into_iter().filter(|r| !r.aborted).count();
        assert_eq!(dead, 21, "{topic}");
        assert!(driver.raw_records("txn-dlq").is_empty(), "{topic}");
    }
}

/// A commit that times out: whether the transaction committed is not known. The worker makes
/// its transactional producer anew and starts again from what the group has committed:
/// exact either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_outcome_is_unknown_makes_the_producer_anew() {
    for committed in [false, true] {
        let mut driver = TestDriver::new(app()).expect("driver");
        for _ in 0..10 {
            driver.pipe(&NUMBERS, "k", &1).expect("pipe");
        }
        run_bounded(&mut driver).await.expect("run");
        driver.time_out_commits(1, committed);
        for _ in 0..10 {
            driver.pipe(&NUMBERS, "k", &1).expect("pipe");
        }
        run_bounded(&mut driver).await.expect("run");
        assert_eq!(driver.transactional_producers(), 2, "committed: {committed}");
        assert_eq!(driver.table(&SUMS).expect("table")["k"], 20, "committed: {committed}");
        let totals: Vec<i64> = totals(&driver);
        assert_eq!(totals, (1..=20).collect::<Vec<i64>>(), "committed: {committed}");
    }
}

const SLOW: Topic<String, i64> = Topic::new("slow").partitions(1);
const SLOW_OUT: Topic<String, i64> = Topic::new("slow-out").partitions(1);
static STUCK_ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Sends each value on; the first time it sees -1, it hangs (as a task stuck in a call that
/// never returns).
#[agent(topic = SLOW, sends = [SLOW_OUT])]
async fn forward(mut values: Stream<String, i64>) -> Result<()> {
    while let Some(event) = values.next_event().await {
        SLOW_OUT.send(&event.key, &event.value).await?;
        if event.value == -1 && STUCK_ONCE.swap(false, std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
    Ok(())
}

/// A revoked task that does not finish in time is dropped without its cut: what it sent
/// since the last round must not commit (the next owner processes that input again), so the
/// round aborts; a read_committed reader sees each record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_dropped_without_its_cut_aborts_the_round() {
    let app = App::new("slow")
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
        .agent(forward);
    let mut driver = TestDriver::new(app).expect("driver");
    driver.finish_timeout(Duration::from_millis(500));
    for value in [1, 2, 3, -1, 4] {
        driver.pipe(&SLOW, "k", &value).expect("pipe");
    }
    // Processed up to the stuck record (its sends in the open transaction), not committed.
    driver.process().await.expect("process");
    driver.move_partition("slow", 0, "worker-2").await.expect("move");
    run_bounded(&mut driver).await.expect("run");
    let seen: Vec<i64> = driver
        .records(&SLOW_OUT)
        .expect("out")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(seen, vec![1, 2, 3, -1, 4], "each once");
}

/// A worker that fails (here at a record it cannot read, under `OnError::Fail`) aborts its
/// open transaction at once, as Kafka Streams closes its tasks dirty: what it sent since
/// the last round is marked aborted, so that read_committed readers downstream neither see
/// it nor wait at it until the broker times the transaction out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_fails_aborts_its_open_transaction() {
    let mut driver = TestDriver::new(app().on_deserialization_error(OnError::Fail)).expect("driver");
    for _ in 0..20 {
        driver.pipe(&NUMBERS, "k", &1).expect("pipe");
    }
    run_bounded(&mut driver).await.expect("the first 20 commit");
    for _ in 0..30 {
        driver.pipe(&NUMBERS, "k", &1).expect("pipe");
    }
    driver.pipe_raw("numbers", Some(b"k"), Some(b"not a number"));
    let error = run_bounded(&mut driver).await.expect_err("fails").to_string();
    assert!(error.contains("numbers[0]@50"), "{error}");
    // The 30 totals of the failed round were sent.
    wait_for_the_abort(&driver, "totals", 50, 20).await;
    assert_eq!(totals(&driver), (1..=20).collect::<Vec<i64>>());
    // The abort counts among the worker's aborts (counted right after it ends).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while driver.metrics().aborts.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(driver.metrics().aborts.load(Ordering::Relaxed), 1);
}

/// Waits (10 s at most) until `topic` holds `sent` records, the first `committed` of them
/// committed and the rest aborted: the failed round's transaction ends aborted (the
/// committer aborts it on its own thread, right after the failure).
async fn wait_for_the_abort(driver: &TestDriver, topic: &str, sent: usize, committed: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let raw = driver.raw_records(topic);
        assert_eq!(raw.len(), sent, "every record sent");
        let open = raw[committed..].iter().filter(|r| !r.aborted).count();
        if open == 0 {
            assert!(raw[..committed].iter().all(|r| !r.aborted), "the committed round stays");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} of the failed round's records are still in an open transaction"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const PAIRS: Topic<String, i64> = Topic::new("pairs").partitions(2);
const PAIRS_OUT: Topic<String, i64> = Topic::new("pairs-out").partitions(1);

/// Sends each value on; at -1 its task hangs (busy in a call that never returns).
#[agent(topic = PAIRS, sends = [PAIRS_OUT])]
async fn relay(mut values: Stream<String, i64>) -> Result<()> {
    while let Some(event) = values.next_event().await {
        PAIRS_OUT.send(&event.key, &event.value).await?;
        if event.value == -1 {
            std::future::pending::<()>().await;
        }
    }
    Ok(())
}

/// A key of `PAIRS` that goes to `partition`.
fn key_of(partition: i32) -> String {
    (0..)
        .map(|n| format!("k{n}"))
        .find(|key| streams_core::testing::kafka_partition(key.as_bytes(), 2) == partition)
        .unwrap_or_default()
}

/// The failed worker's open transaction is aborted even while another task is busy in its
/// agent and never cuts for the round: once the worker has failed nothing more commits, so
/// the committer waits for no task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_worker_aborts_without_waiting_for_a_busy_task() {
    let app = App::new("relay")
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
        .on_deserialization_error(OnError::Fail)
        .agent(relay);
    let mut driver = TestDriver::new(app).expect("driver");
    driver.finish_timeout(Duration::from_millis(500));
    let (failing, busy) = (key_of(0), key_of(1));
    for value in 1..=10 {
        driver.pipe(&PAIRS, failing.as_str(), &value).expect("pipe");
        driver.pipe(&PAIRS, busy.as_str(), &value).expect("pipe");
    }
    run_bounded(&mut driver).await.expect("the first 20 commit");
    // Partition 1's task sends 11 to 15 and -1, and hangs (processed, nothing committed).
    for value in 11..=15 {
        driver.pipe(&PAIRS, busy.as_str(), &value).expect("pipe");
    }
    driver.pipe(&PAIRS, busy.as_str(), &-1).expect("pipe");
    driver.process().await.expect("process");
    for value in 11..=15 {
        driver.pipe(&PAIRS, failing.as_str(), &value).expect("pipe");
    }
    let (partition, _) = driver.pipe_raw("pairs", Some(failing.as_bytes()), Some(b"not a number"));
    assert_eq!(partition, 0);
    let error = run_bounded(&mut driver).await.expect_err("fails").to_string();
    assert!(error.contains("pairs[0]@15"), "{error}");
    wait_for_the_abort(&driver, "pairs-out", 31, 20).await;
}

const TALLIED: Topic<String, i64> = Topic::new("tallied").partitions(1);
const TALLIES: Topic<String, i64> = Topic::new("tallies").partitions(1);

/// Counts the records it takes and, when its stream ends, sends the count (code after its
/// loop, like a buffer flushed at the end).
#[agent(topic = TALLIED, sends = [TALLIES])]
async fn tally(mut values: Stream<String, i64>) -> Result<()> {
    let mut taken = 0;
    while values.next_event().await.is_some() {
        taken += 1;
    }
    TALLIES.send("taken", &taken).await?;
    Ok(())
}

/// An agent's stream ends when its round's transaction aborts: what it took since the last
/// commit is undone and taken again by the task that replaces it. What the agent sends after
/// its loop then is refused: it would go into the next transaction, a duplicate of the
/// replay's. After a hand-over (the stream ends with its last round committed) it goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sends_nothing_after_its_transaction_aborted() {
    let app = App::new("tally")
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
        .agent(tally);
    let mut driver = TestDriver::new(app).expect("driver");
    for value in 0..10 {
        driver.pipe(&TALLIED, "k", &value).expect("pipe");
    }
    run_bounded(&mut driver).await.expect("the first 10 commit");
    // The next round aborts: the task that took 15 records ends and its replacement takes
    // the 5 again.
    driver.fail_commits(true);
    for value in 10..15 {
        driver.pipe(&TALLIED, "k", &value).expect("pipe");
    }
    run_bounded(&mut driver).await.expect_err("the round aborts");
    driver.fail_commits(false);
    run_bounded(&mut driver).await.expect("the 5 commit");
    let tallies = |driver: &TestDriver| -> Vec<i64> {
        let records = driver.records(&TALLIES).expect("tallies");
        records.into_iter().map(|(_, taken)| taken).collect()
    };
    assert_eq!(
        tallies(&driver),
        Vec::<i64>::new(),
        "the aborted agent's tally (of 15 records, 5 of them undone) is not sent"
    );
    // A hand-over: the replacement's stream ends after its last round committed, and its
    // tally of the 5 goes out with the next round.
    driver.move_partition("tallied", 0, "worker-2").await.expect("move");
    driver.pipe(&TALLIED, "k", &15).expect("pipe");
    run_bounded(&mut driver).await.expect("run");
    assert_eq!(tallies(&driver), vec![5]);
}

const TICKED: Topic<String, i64> = Topic::new("ticked").partitions(1);
const TICK_SUMS: Table<String, i64> = Table::new("tick-sums");
const TICK_TOTALS: Topic<String, i64> = Topic::new("tick-totals").partitions(1);
const TICKS: Topic<String, i64> = Topic::new("ticks").partitions(1);

/// Sums per key like `sum`, but awaits its stream inside `select!` beside a timer of a
/// millisecond (how an agent does something on the wall clock between records), which
/// sends a record: the timer's branch drops the pending `next_event` call wherever it
/// waits, and sends while the task's cut may wait for its round.
#[agent(topic = TICKED, tables = [TICK_SUMS], sends = [TICK_TOTALS, TICKS])]
async fn ticking_sum(mut numbers: Stream<String, i64>) -> Result<()> {
    loop {
        tokio::select! {
            event = numbers.next_event() => {
                let Some(event) = event else { break };
                let total = TICK_SUMS.update(&event.key, |s| *s += event.value).await?;
                TICK_TOTALS.send(&event.key, &total).await?;
            }
            () = tokio::time::sleep(Duration::from_millis(1)) => TICKS.send("tick", &0).await?,
        }
    }
    Ok(())
}

/// `Stream::next_event` is cancel-safe: an agent that awaits it in `select!` beside a timer
/// drops it while a cut waits for its round's commit, and the next call takes up where
/// that one stopped; what the timer's branch sends meanwhile waits for the round's end.
/// Each total goes out once, in order, and nothing is sent into a transaction while it
/// commits (the driver's runs fail on that), through an abort as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_awaited_in_select_keeps_exactly_once() {
    let app = App::new("ticking")
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
        .commit_interval(Duration::from_millis(5))
        .agent(ticking_sum);
    let mut driver = TestDriver::new(app).expect("driver");
    driver.ack_latency(Duration::from_millis(3));
    let mut piped = 0;
    for batch in 0..6 {
        for _ in 0..300 {
            driver.pipe(&TICKED, "k", &1).expect("pipe");
            piped += 1;
        }
        driver.fail_commits(batch == 3);
        let outcome = run_bounded(&mut driver).await;
        if batch == 3 {
            outcome.expect_err("the round aborts");
            driver.fail_commits(false);
            run_bounded(&mut driver).await.expect("after the abort");
        } else {
            outcome.expect("run");
        }
    }
    assert_eq!(driver.table(&TICK_SUMS).expect("table")["k"], piped);
    let totals: Vec<i64> = driver
        .records(&TICK_TOTALS)
        .expect("totals")
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(
        totals,
        (1..=piped).collect::<Vec<i64>>(),
        "read committed: each total once, in order"
    );
}

const COUNTED: Topic<String, i64> = Topic::new("counted").partitions(1);
const COUNTED_SUMS: Table<String, i64> = Table::new("counted-sums");
const TICK_COUNT: Table<String, i64> = Table::new("tick-count");
const TICKS_COUNTED: Topic<String, i64> = Topic::new("ticks-counted").partitions(1);

/// Whether `counting_ticks`'s timer still counts.
static COUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Sums its input per key; beside it, every millisecond, counts a tick in a table and sends
/// the count: a table change and a send that belong to one transaction.
#[agent(topic = COUNTED, tables = [COUNTED_SUMS, TICK_COUNT], sends = [TICKS_COUNTED])]
async fn counting_ticks(mut numbers: Stream<String, i64>) -> Result<()> {
    loop {
        tokio::select! {
            event = numbers.next_event() => {
                let Some(event) = event else { break };
                COUNTED_SUMS.update(&event.key, |s| *s += event.value).await?;
            }
            () = tokio::time::sleep(Duration::from_millis(1)), if COUNTING.load(Ordering::SeqCst) => {
                let ticks = TICK_COUNT.update("ticks", |n| *n += 1).await?;
                TICKS_COUNTED.send("ticks", &ticks).await?;
            }
        }
    }
    Ok(())
}

/// A cut whose changelog records wait for room in a full producer queue has taken its
/// table changes already: what the agent's other branch changes and sends meanwhile belongs
/// to the next round, both of it. Each committed transaction that holds ticks sent holds
/// the tick count's change to the last of them, and no later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_while_a_cut_waits_for_room_goes_with_its_table_change() {
    let app = App::new("counting")
        .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
        .commit_interval(Duration::from_millis(5))
        .agent(counting_ticks);
    let mut driver = TestDriver::new(app).expect("driver");
    for round in 0..6 {
        for _ in 0..100 {
            driver.pipe(&COUNTED, "k", &1).expect("pipe");
        }
        if round == 5 {
            // The last run commits every tick counted.
            COUNTING.store(false, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            driver.full_queue_at_next_cut(Duration::from_millis(20));
        }
        let began = std::time::Instant::now();
        run_bounded(&mut driver).await.expect("run");
        if round < 5 {
            assert!(
                began.elapsed() >= Duration::from_millis(20),
                "the run's cut waited for room"
            );
        }
    }
    assert_eq!(driver.table(&COUNTED_SUMS).expect("table")["k"], 600);
    let by_transaction = |topic: &str| {
        let mut values: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
        for record in driver.raw_records(topic) {
            assert!(!record.aborted, "nothing aborts here");
            let value: i64 = serde_json::from_slice(record.value.as_deref().expect("a value")).expect("a count");
            values
                .entry(record.transaction.expect("exactly-once"))
                .or_default()
                .push(value);
        }
        values
    };
    let sent = by_transaction("ticks-counted");
    let logged = by_transaction("counting-tick-count-changelog");
    let first_logged = *logged.keys().next().expect("the tick count is logged");
    let ticks = sent.values().map(Vec::len).sum::<usize>() as i64;
    assert!(ticks >= 5, "the timer ticked in each run ({ticks} ticks)");
    assert_eq!(driver.table(&TICK_COUNT).expect("table")["ticks"], ticks);
    // Ticks sent before the first input count in the first round that has positions to
    // log: checked from there. Each transaction sends exactly the ticks whose counts it logs
    // (the cache keeps a cut's last count).
    let mut counted = sent
        .range(..first_logged)
        .flat_map(|(_, sent)| sent.last())
        .max()
        .copied()
        .unwrap_or(0);
    let transactions: std::collections::BTreeSet<u64> = sent.keys().chain(logged.keys()).copied().collect();
    for transaction in transactions.range(first_logged..) {
        let now = logged
            .get(transaction)
            .and_then(|values| values.last())
            .copied()
            .unwrap_or(counted);
        assert_eq!(
            sent.get(transaction).cloned().unwrap_or_default(),
            ((counted + 1)..=now).collect::<Vec<i64>>(),
            "transaction {transaction} logged the tick count's changes {:?}",
            logged.get(transaction)
        );
        counted = now;
    }
}

const ONCE_IN: Topic<String, i64> = Topic::new("once-in").partitions(1);
const ONCE_SUMS: Table<String, i64> = Table::new("once-sums");

/// Whether `returns_once` has returned.
static RETURNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sums per key, awaiting its stream in `select!` beside a timer; the first time the timer
/// fires (its stream waiting for input) it returns, dropping the call that waits.
#[agent(topic = ONCE_IN, tables = [ONCE_SUMS])]
async fn returns_once(mut numbers: Stream<String, i64>) -> Result<()> {
    loop {
        tokio::select! {
            event = numbers.next_event() => {
                let Some(event) = event else { break };
                ONCE_SUMS.update(&event.key, |s| *s += event.value).await?;
            }
            () = tokio::time::sleep(Duration::from_millis(1)), if !RETURNED.load(Ordering::SeqCst) => {
                RETURNED.store(true, Ordering::SeqCst);
                return Ok(());
            }
        }
    }
    Ok(())
}

/// An agent that returns while a dropped call to `next_event` waits for input gets its
/// stream back at once and is started again (after a second): the records that come later
/// are all processed by the new run. (A record the dropped call's work takes after the
/// agent ended goes back to its queue: `a_record_the_left_work_took_goes_back_to_its_queue`
/// in `task/input.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_taken_by_a_dropped_call_is_processed_by_the_next_run() {
    let mut driver = TestDriver::new(App::new("once").agent(returns_once)).expect("driver");
    driver.pipe(&ONCE_IN, "k", &1).expect("pipe");
    run_bounded(&mut driver).await.expect("run");
    // The agent returned (its timer fired while its stream waited for input).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !RETURNED.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "the timer never fired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..9 {
        driver.pipe(&ONCE_IN, "k", &1).expect("pipe");
    }
    run_bounded(&mut driver).await.expect("run");
    assert_eq!(driver.table(&ONCE_SUMS).expect("table")["k"], 10);
}

const IDLE_IN: Topic<String, i64> = Topic::new("idle-in").partitions(1);

/// Whether `fails_on_its_timer` has taken a record.
static TOOK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Awaits its stream in `select!` beside a timer; once it has taken a record, the timer's
/// branch fails (its stream waiting for input then).
#[agent(topic = IDLE_IN)]
async fn fails_on_its_timer(mut numbers: Stream<String, i64>) -> Result<()> {
    loop {
        tokio::select! {
            event = numbers.next_event() => {
                if event.is_none() {
                    break;
                }
                TOOK.store(true, Ordering::SeqCst);
            }
            () = tokio::time::sleep(Duration::from_millis(1)), if TOOK.load(Ordering::SeqCst) => {
                return Err(streams_core::Error::Config("the timer's work failed".into()));
            }
        }
    }
    Ok(())
}

/// An agent that fails outside a record while a dropped call to its `next_event` waits for
/// input fails at once, as one that held no such call does: under `OnError::Fail` the
/// worker stops without waiting for more input (which may never come).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_failing_while_its_stream_waits_for_input_fails_at_once() {
    let app = App::new("idle")
        .on_processing_error(OnError::Fail)
        .agent(fails_on_its_timer);
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe(&IDLE_IN, "k", &1).expect("pipe");
    run_bounded(&mut driver).await.expect("run");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !driver.metrics().failed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent's failure is not seen while its stream waits for input"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(fatal.contains("the timer's work failed"), "{fatal}");
}

//! The app's error handlers (Kafka Streams' deserialization, processing and production
//! exception handlers, KIP-1033/1034) through the test driver, for a pipeline and an agent:
//! the dead-letter topic (the default, here, and one named for the whole app), dropping the
//! record, or stopping the worker before it.

use streams_core::prelude::*;
use streams_core::testing::TestDriver;

const NUMBERS: Topic<String, i64> = Topic::new("numbers").partitions(1);
const INVERSES: Topic<String, i64> = Topic::new("inverses");

/// A pipeline that fails on zero (a panic: a processing error) and on text that is not a
/// number (a deserialization error).
fn inverse(app: App) -> App {
    app.pipeline("inverse", |builder| {
        builder.stream(NUMBERS).map_values(|_, n| 1000 / n).to(INVERSES);
    })
}

/// 4 (processed and committed on its own), then a zero, text that does not decode, and 8;
/// what the second run said.
async fn run(app: App) -> (TestDriver, streams_core::Result<()>) {
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe(&NUMBERS, "n", &4).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(driver.committed("numbers", 0), Some(1));
    driver.pipe(&NUMBERS, "n", &0).expect("pipe");
    driver.pipe_raw("numbers", Some(b"n"), Some(b"not a number"));
    driver.pipe(&NUMBERS, "n", &8).expect("pipe");
    let outcome = driver.run().await;
    (driver, outcome)
}

fn inverses(driver: &TestDriver) -> Vec<i64> {
    driver
        .records(&INVERSES)
        .expect("records")
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

fn skipped(driver: &TestDriver) -> u64 {
    driver.metrics().skipped.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_both_go_to_the_dead_letter_topic_with_their_stage() {
    let (driver, outcome) = run(inverse(App::new("math"))).await;
    outcome.expect("run");
    assert_eq!(inverses(&driver), vec![250, 125]);
    let dead = driver.raw_records("math-inverse-dlq");
    let stages: Vec<&str> = dead.iter().filter_map(|r| r.header("streams.dlq.stage")).collect();
    assert_eq!(stages, vec!["processing", "deserialization"]);
    assert_eq!(driver.metrics().fatal(), None);
    assert_eq!(driver.committed("numbers", 0), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_letter_topic_named_for_the_app_takes_them() {
    let app = inverse(App::new("math").dead_letter_topic("math-errors"));
    assert!(app.tasks().iter().all(|t| t.dead_letter_topic == "math-errors"));
    assert!(app.topology().mermaid().contains("math-errors"));
    let (driver, outcome) = run(app).await;
    outcome.expect("run");
    assert_eq!(driver.raw_records("math-errors").len(), 2);
    assert!(driver.raw_records("math-inverse-dlq").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn told_to_continue_they_are_dropped_and_counted() {
    let app = inverse(
        App::new("math")
            .on_deserialization_error(OnError::Continue)
            .on_processing_error(OnError::Continue),
    );
    let (driver, outcome) = run(app).await;
    outcome.expect("run");
    assert_eq!(inverses(&driver), vec![250, 125]);
    assert!(driver.raw_records("math-inverse-dlq").is_empty());
    assert_eq!(skipped(&driver), 2);
    assert_eq!(
        driver.committed("numbers", 0),
        Some(4),
        "processed: the partition goes on"
    );
}

/// Each handler alone: the other kind still goes to the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deserialization_stops_the_worker_before_the_record() {
    let app = inverse(App::new("math").on_deserialization_error(OnError::Fail));
    let (driver, _) = run(app).await;
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(
        fatal.contains("numbers[0]@2") && fatal.contains("deserialization"),
        "{fatal}"
    );
    // The zero before it went to the dead-letter topic; nothing after it was processed, and
    // nothing from it on is committed: the next owner meets the record again.
    assert_eq!(inverses(&driver), vec![250]);
    assert_eq!(driver.raw_records("math-inverse-dlq").len(), 1);
    assert_eq!(driver.committed("numbers", 0), Some(1), "the commit before it stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_processing_stops_the_worker_before_the_record() {
    let app = inverse(App::new("math").on_processing_error(OnError::Fail));
    let (driver, _) = run(app).await;
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(
        fatal.contains("numbers[0]@1") && fatal.contains("processing") && fatal.contains("divide by zero"),
        "{fatal}"
    );
    assert_eq!(inverses(&driver), vec![250]);
    assert!(driver.raw_records("math-inverse-dlq").is_empty());
    assert_eq!(driver.committed("numbers", 0), Some(1), "the commit before it stays");
}

#[agent(topic = NUMBERS, sends = [INVERSES])]
async fn invert(mut numbers: Stream<String, i64>) -> Result<()> {
    while let Some(event) = numbers.next_event().await {
        if event.value == 0 {
            return Err(streams_core::Error::Config("zero has no inverse".into()));
        }
        INVERSES.send(&event.key, &(1000 / event.value)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_takes_the_same_handlers() {
    let (driver, outcome) = run(App::new("math").agent(invert)).await;
    outcome.expect("run");
    let dead = driver.raw_records("math-invert-dlq");
    let stages: Vec<&str> = dead.iter().filter_map(|r| r.header("streams.dlq.stage")).collect();
    assert_eq!(stages, vec!["processing", "deserialization"]);
    assert_eq!(inverses(&driver), vec![250, 125]);

    let app = App::new("math")
        .agent(invert)
        .on_deserialization_error(OnError::Continue);
    let (driver, outcome) = run(app).await;
    outcome.expect("run");
    assert_eq!(skipped(&driver), 1, "the text skipped");
    assert_eq!(driver.raw_records("math-invert-dlq").len(), 1, "the zero dead-lettered");
    assert_eq!(inverses(&driver), vec![250, 125]);
    assert_eq!(driver.committed("numbers", 0), Some(4));

    let app = App::new("math").agent(invert).on_processing_error(OnError::Fail);
    let (driver, _) = run(app).await;
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(
        fatal.contains("numbers[0]@1") && fatal.contains("zero has no inverse"),
        "{fatal}"
    );
    assert_eq!(inverses(&driver), vec![250]);
    assert_eq!(driver.committed("numbers", 0), Some(1), "the commit before it stays");
}

/// KIP-1033's production handler told to continue: a record the broker refuses is dropped,
/// and the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_told_to_continue_is_dropped() {
    const WORDS: Topic<String, String> = Topic::new("words").partitions(1);
    const ECHO: Topic<String, String> = Topic::new("echo");
    let app = App::new("echo")
        .on_production_error(OnError::Continue)
        .pipeline("echo", |builder| builder.stream(WORDS).to(ECHO));
    let mut driver = TestDriver::new(app).expect("driver");
    driver.refuse_records("echo", 10);
    for word in ["short", "much too long for the topic", "fine"] {
        driver.pipe(&WORDS, "w", &word.to_string()).expect("pipe");
    }
    driver.run().await.expect("run");
    let echoed: Vec<String> = driver
        .records(&ECHO)
        .expect("records")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(echoed, vec!["short".to_string(), "fine".to_string()]);
    assert!(driver.raw_records("echo-dlq").is_empty());
    assert_eq!(driver.metrics().fatal(), None);
}

/// The same under exactly-once: the round the record was in never commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_record_under_exactly_once_stops_the_worker_before_it() {
    let app = inverse(
        App::new("math")
            .processing_guarantee(streams_core::app::ProcessingGuarantee::ExactlyOnce)
            .on_deserialization_error(OnError::Fail),
    );
    let (driver, _) = tokio::time::timeout(std::time::Duration::from_secs(20), run(app))
        .await
        .expect("the driver returns");
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(fatal.contains("numbers[0]@2"), "{fatal}");
    // (What the round sent is in its transaction, which the failed worker aborts.)
    assert_eq!(
        driver.committed("numbers", 0),
        Some(1),
        "the round with it never commits"
    );
}

/// A global table's records take the deserialization handler too, and the app's dead-letter
/// topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_tables_bad_record_takes_the_same_handler() {
    const RATES: Topic<String, i64> = Topic::new("rates");
    const RATES_TABLE: Table<String, i64> = Table::new("rates-table");
    let app = |handling: OnError| {
        App::new("fx")
            .dead_letter_topic("fx-errors")
            .on_deserialization_error(handling)
            .pipeline("convert", |builder| {
                let rates = builder.global_table(RATES, RATES_TABLE);
                builder
                    .stream(NUMBERS)
                    .join_global(&rates, |_, _| "eur".to_string(), |_, n, rate| n * rate)
                    .to(INVERSES);
            })
    };
    for (handling, dead, skipped_records) in [(OnError::DeadLetter, 1, 0), (OnError::Continue, 0, 1)] {
        let mut driver = TestDriver::new(app(handling)).expect("driver");
        driver.pipe_raw("rates", Some(b"eur"), Some(b"not a rate"));
        driver.pipe(&RATES, "eur", &2).expect("pipe");
        driver.pipe(&NUMBERS, "n", &21).expect("pipe");
        driver.run().await.expect("run");
        assert_eq!(inverses(&driver), vec![42]);
        let letters = driver.raw_records("fx-errors");
        assert_eq!(letters.len(), dead, "{handling:?}");
        assert!(letters
            .iter()
            .all(|r| r.header("streams.dlq.stage") == Some("deserialization")));
        assert_eq!(skipped(&driver), skipped_records);
    }
}

/// Starts of `never_ready` and of `never_ready_told_to_fail`.
static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static STARTS_TOLD_TO_FAIL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[agent(topic = NUMBERS)]
async fn never_ready(numbers: Stream<String, i64>) -> Result<()> {
    STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    drop(numbers);
    Err(streams_core::Error::Config("not ready".into()))
}

/// `never_ready`, counted apart (the first's task goes on restarting once its test has
/// moved on: nothing ends an agent that never reads its input).
#[agent(topic = NUMBERS)]
async fn never_ready_told_to_fail(numbers: Stream<String, i64>) -> Result<()> {
    STARTS_TOLD_TO_FAIL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    drop(numbers);
    Err(streams_core::Error::Config("not ready".into()))
}

/// An agent that fails before it takes a record has no record to send to the dead-letter
/// topic or to skip: it is started again a second later (as one that returns early), not at
/// once in a loop that never yields its thread; with `OnError::Fail` the worker stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_failing_outside_a_record_is_started_again_after_a_pause_or_stops_with_fail() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let mut driver = TestDriver::new(App::new("math").agent(never_ready)).expect("driver");
    driver.pipe(&NUMBERS, "n", &4).expect("pipe");
    let ran = tokio::time::timeout(Duration::from_millis(2_500), driver.run()).await;
    assert!(ran.is_err(), "the record is never taken: the run waits");
    let starts = STARTS.swap(0, Ordering::Relaxed);
    // A start, then one a second: 3 in 2.5 s (a slow machine makes fewer, never more).
    assert!((2..=4).contains(&starts), "{starts} starts in 2.5 s");
    assert!(driver.metrics().fatal().is_none());
    drop(driver);

    let app = App::new("math")
        .agent(never_ready_told_to_fail)
        .on_processing_error(OnError::Fail);
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe(&NUMBERS, "n", &4).expect("pipe");
    let ran = tokio::time::timeout(Duration::from_secs(30), driver.run()).await;
    assert!(ran.is_ok(), "the run ends: the worker stopped");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(STARTS_TOLD_TO_FAIL.load(Ordering::Relaxed), 1, "not started again");
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(
        fatal.contains("never_ready_told_to_fail") && fatal.contains("not ready"),
        "{fatal}"
    );
}

/// With `OnError::Fail`, a global table's record that does not decode stops the driver's run
/// as it stops a worker: nothing after it is taken into the table, no task is fed, and the
/// next run stops at it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_tables_bad_record_stops_the_run_with_fail() {
    const RATES: Topic<String, i64> = Topic::new("rates").partitions(1);
    const RATES_TABLE: Table<String, i64> = Table::new("rates-table");
    let app = App::new("fx")
        .on_deserialization_error(OnError::Fail)
        .pipeline("convert", |builder| {
            let rates = builder.global_table(RATES, RATES_TABLE);
            builder
                .stream(NUMBERS)
                .join_global(&rates, |_, _| "eur".to_string(), |_, n, rate| n * rate)
                .to(INVERSES);
        });
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe_raw("rates", Some(b"eur"), Some(b"not a rate"));
    driver.pipe(&RATES, "eur", &2).expect("pipe");
    driver.pipe(&NUMBERS, "n", &21).expect("pipe");
    for run in ["first", "second"] {
        let error = driver.run().await.expect_err("the run stops").to_string();
        assert!(error.contains("rates[0]@0"), "{run} run: {error}");
        assert!(inverses(&driver).is_empty(), "{run} run: nothing converted");
    }
    assert!(driver.metrics().fatal().is_some_and(|f| f.contains("rates-table")));
}

/// [`invert`] with an error of its own: the log test below counts its lines in the log of the
/// whole test process, where `invert`'s error is logged by the tests running beside it.
#[agent(topic = NUMBERS, sends = [INVERSES])]
async fn superstitious(mut numbers: Stream<String, i64>) -> Result<()> {
    while let Some(event) = numbers.next_event().await {
        if event.value == 13 {
            return Err(streams_core::Error::Config("thirteen brings bad luck".into()));
        }
        INVERSES.send(&event.key, &(1000 / event.value)).await?;
    }
    Ok(())
}

/// A record an agent fails on goes to the dead-letter topic and is logged once, at warn (as
/// the README's table of topics says), not also at error level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_record_is_logged_once_at_warn() {
    let logged = streams_tests::Logged::start();
    let mut driver = TestDriver::new(App::new("luck").agent(superstitious)).expect("driver");
    driver.pipe(&NUMBERS, "n", &13).expect("pipe");
    driver.pipe(&NUMBERS, "n", &4).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(driver.raw_records("luck-superstitious-dlq").len(), 1);
    assert_eq!(inverses(&driver), vec![250]);
    let lines: Vec<String> = logged
        .lines()
        .into_iter()
        .filter(|line| line.contains("thirteen brings bad luck"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(" WARN "), "{lines:#?}");
}

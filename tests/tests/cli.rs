//! The command line of the seed app, run as a separate process the way users run it.

use std::collections::BTreeMap;
use std::time::Duration;

use streams_core::EmbeddedBroker;
use streams_examples::seed;
use streams_tests::hit_counter::app;
use streams_tests::{create_app_topics, example_binary, free_port, produce, unkeyed, wait_caught_up, Child};

fn hit_counter() -> std::path::PathBuf {
    example_binary("hit_counter")
}

fn broker() -> EmbeddedBroker {
    let broker = EmbeddedBroker::start().expect("embedded broker");
    broker.create_topic("hit_count", 4).expect("hit_count");
    create_app_topics(&broker, &app());
    broker
}

#[test]
fn unknown_flags_get_usage() {
    let mut child = Child::spawn(&hit_counter(), &["worker", "--topcs", "x"]);
    assert_eq!(child.wait(Duration::from_secs(30)), Some(2));
    let output = child.seen.join("\n");
    assert!(output.contains("unexpected argument '--topcs'"), "{output}");
    assert!(output.contains("Usage:"), "{output}");
}

#[test]
fn an_unreachable_broker_is_named_and_retried() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8");
    let mut child = Child::spawn(&hit_counter(), &["worker", "--broker", &address, "--data-dir", data]);
    let first = child.wait_for_line("is unreachable", Duration::from_secs(30));
    assert!(first.contains(&address), "the message names the broker: {first}");
    assert!(first.contains("WARN"), "logged at warn: {first}");
    child.seen.clear();
    child.wait_for_line("is unreachable", Duration::from_secs(30));
    assert!(
        child.process.try_wait().expect("try_wait").is_none(),
        "still retrying, not exited"
    );
}

#[test]
fn a_second_worker_on_the_same_data_dir_exits_saying_why() {
    let broker = broker();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8");
    let args = [
        "worker",
        "-l",
        "info",
        "--broker",
        broker.bootstrap_servers(),
        "--data-dir",
        data,
    ];
    let mut first = Child::spawn(&hit_counter(), &args);
    first.wait_for_line("worker of hit_counter started", Duration::from_secs(60));
    let mut second = Child::spawn(&hit_counter(), &args);
    assert_eq!(second.wait(Duration::from_secs(30)), Some(1));
    let output = second.seen.join("\n");
    assert!(output.contains("in use by another worker"), "{output}");

    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"a file").expect("write");
    let path = blocked.to_str().expect("utf8");
    let mut third = Child::spawn(
        &hit_counter(),
        &["worker", "--broker", broker.bootstrap_servers(), "--data-dir", path],
    );
    assert_eq!(third.wait(Duration::from_secs(30)), Some(1));
    let output = third.seen.join("\n");
    assert!(output.contains("cannot create the data directory"), "{output}");
}

#[test]
fn send_worker_sigterm_and_table() {
    let broker = broker();
    let bootstrap = broker.bootstrap_servers().to_string();
    let records = seed::hits(11, 2_000);
    let mut expected = seed::expected_counts(&records);
    produce(&bootstrap, "hit_count", &unkeyed(&records));

    let mut send = Child::spawn(
        &hit_counter(),
        &[
            "send",
            "hit_count",
            r#"{"hits": 99, "timestamp": 1.5, "userId": "sent-by-cli"}"#,
            "--broker",
            &bootstrap,
        ],
    );
    assert_eq!(send.wait(Duration::from_secs(30)), Some(0), "{}", send.seen.join("\n"));
    expected.insert("sent-by-cli".to_string(), 1);

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8");
    let mut worker = Child::spawn(
        &hit_counter(),
        &[
            "worker",
            "-l",
            "info",
            "--broker",
            &bootstrap,
            "--data-dir",
            data,
            "--consumer-config",
            "session.timeout.ms=6000",
        ],
    );
    wait_caught_up(
        &bootstrap,
        "hit_counter",
        &["hit_count", "count_topic"],
        Duration::from_secs(120),
    );
    // At -l info the worker shows records arriving and table increments.
    worker.wait_for_line("find_major_hits <- hit_count[", Duration::from_secs(10));
    worker.wait_for_line("major-count[", Duration::from_secs(10));
    worker.terminate();
    assert_eq!(worker.wait(Duration::from_secs(60)), Some(0), "exit 0 after SIGTERM");
    assert!(
        worker.seen.iter().any(|l| l.contains("committed and released")),
        "{}",
        worker.seen.join("\n")
    );

    let mut table = Child::spawn(&hit_counter(), &["table", "major-count", "--data-dir", data]);
    assert_eq!(table.wait(Duration::from_secs(30)), Some(0));
    let printed: BTreeMap<String, i64> = table
        .seen
        .iter()
        .filter_map(|line| {
            let (key, value) = line.split_once('\t')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect();
    assert_eq!(printed, expected);
}

#[test]
fn the_broker_command_hosts_the_embedded_broker() {
    let port = free_port();
    let mut broker = Child::spawn(
        &hit_counter(),
        &["broker", "--port", &port.to_string(), "--partitions", "4"],
    );
    broker.wait_for_line("embedded broker listening", Duration::from_secs(30));
    let output = std::process::Command::new("kcat")
        .args(["-L", "-b", &format!("127.0.0.1:{port}"), "-t", "hit_count"])
        .output()
        .expect("kcat is installed (make test installs it)");
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(listing.contains("topic \"hit_count\" with 4 partitions"), "{listing}");
}

#[test]
fn topology_is_printed_without_a_broker() {
    // No broker anywhere: the command must not try to connect.
    let mut text = Child::spawn(&hit_counter(), &["topology"]);
    assert_eq!(text.wait(Duration::from_secs(30)), Some(0));
    let output = text.seen.join("\n");
    for line in [
        "agent find_major_hits",
        "<- reads       source topic `hit_count` <(), HitCount>",
        "-> sends       internal topic `count_topic` <String, HitCount>",
        "-> updates     table `major-count` <String, i64>",
        "changelog topic `hit_counter-major-count-changelog`",
        "-> bad records dead-letter topic `hit_counter-count_hits-dlq`",
    ] {
        assert!(output.contains(line), "missing {line:?} in\n{output}");
    }
    let mut mermaid = Child::spawn(&hit_counter(), &["topology", "--format", "mermaid"]);
    assert_eq!(mermaid.wait(Duration::from_secs(30)), Some(0));
    let output = mermaid.seen.join("\n");
    assert!(output.starts_with("flowchart LR"), "{output}");
    assert!(output.contains("count_hits -->|updates| t_major_count"), "{output}");
    let mut dot = Child::spawn(&hit_counter(), &["topology", "--format", "dot"]);
    assert_eq!(dot.wait(Duration::from_secs(30)), Some(0));
    assert!(dot
        .seen
        .join("\n")
        .contains("\"count_topic\" -> \"count_hits\" [label=\"reads\"];"));
}

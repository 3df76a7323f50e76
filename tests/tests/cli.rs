//! The command line of the seed app, run as a separate process the way users run it.

use std::collections::BTreeMap;
use std::time::Duration;

use streams_core::EmbeddedBroker;
use streams_examples::seed;
use streams_tests::hit_counter::app;
use streams_tests::{
    committed, create_app_topics, example_binary, free_port, produce, read_all, spawn_hit_counter_worker, unkeyed,
    wait_caught_up, Child,
};

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
    let mut worker = spawn_hit_counter_worker(&bootstrap, dir.path(), &[]);
    wait_caught_up(
        &bootstrap,
        "hit_counter",
        &["hit_count", "count_topic"],
        Duration::from_secs(120),
    );
    // At -l info the worker shows records arriving and table increments.
    worker.wait_for_line("find_major_hits <- hit_count[", Duration::from_secs(10));
    worker.wait_for_line("major-count[", Duration::from_secs(10));
    // The table can be read while the worker holds its stores.
    let mut live = Child::spawn(&hit_counter(), &["table", "major-count", "--data-dir", data]);
    assert_eq!(live.wait(Duration::from_secs(30)), Some(0), "{}", live.seen.join("\n"));
    assert!(
        live.seen
            .iter()
            .any(|l| l.starts_with("major-count (") && !l.contains("(0 keys)")),
        "{}",
        live.seen.join("\n")
    );
    worker.terminate();
    assert_eq!(worker.wait(Duration::from_secs(60)), Some(0), "exit 0 after SIGTERM");
    assert!(
        worker.seen.iter().any(|l| l.contains("committed and released")),
        "{}",
        worker.seen.join("\n")
    );

    assert_eq!(printed_table(data), expected);
}

/// The `table major-count` command's output, as counts.
fn printed_table(data: &str) -> BTreeMap<String, i64> {
    let mut table = Child::spawn(&hit_counter(), &["table", "major-count", "--data-dir", data]);
    assert_eq!(
        table.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        table.seen.join("\n")
    );
    table
        .seen
        .iter()
        .filter_map(|line| {
            let (key, value) = line.split_once('\t')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
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

#[test]
fn a_signal_during_start_up_stops_the_worker_promptly() {
    let address = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8");
    let mut child = Child::spawn(&hit_counter(), &["worker", "--broker", &address, "--data-dir", data]);
    child.wait_for_line("is unreachable", Duration::from_secs(30));
    let signalled = std::time::Instant::now();
    child.terminate();
    assert_eq!(
        child.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        child.seen.join("\n")
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        signalled.elapsed()
    );
    let output = child.seen.join("\n");
    assert!(output.contains("signal received during start-up"), "{output}");
}

#[test]
fn idle_exit_counts_from_the_start_when_no_record_ever_arrives() {
    let broker = broker();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8");
    let mut child = Child::spawn(
        &hit_counter(),
        &[
            "worker",
            "-l",
            "info",
            "--broker",
            broker.bootstrap_servers(),
            "--data-dir",
            data,
            "--idle-exit",
            "2",
        ],
    );
    assert_eq!(
        child.wait(Duration::from_secs(90)),
        Some(0),
        "{}",
        child.seen.join("\n")
    );
    let output = child.seen.join("\n");
    assert!(output.contains("no records for 2s; stopping"), "{output}");
}

/// `--config` reaches every client of the worker: with `--broker` pointing nowhere and
/// `bootstrap.servers` set through `--config`, the metadata client, the admin client, the
/// group consumer, the producer and the restore consumer all reach the broker.
#[test]
fn config_settings_reach_every_client() {
    let broker = broker();
    let bootstrap = broker.bootstrap_servers().to_string();
    let records = seed::hits(5, 500);
    produce(&bootstrap, "hit_count", &unkeyed(&records));
    let nowhere = format!("127.0.0.1:{}", free_port());
    let setting = format!("bootstrap.servers={bootstrap}");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8");
    let mut worker = Child::spawn(
        &hit_counter(),
        &[
            "worker",
            "--broker",
            &nowhere,
            "--config",
            &setting,
            "--data-dir",
            data,
            "--idle-exit",
            "3",
        ],
    );
    assert_eq!(
        worker.wait(Duration::from_secs(120)),
        Some(0),
        "{}",
        worker.seen.join("\n")
    );
    wait_caught_up(
        &bootstrap,
        "hit_counter",
        &["hit_count", "count_topic"],
        Duration::from_secs(10),
    );
}

/// SIGTERM while input still arrives: the worker finishes its records and commits them
/// before it exits, so the committed offsets are exactly what it processed — on both sides
/// of the internal topic.
#[test]
fn sigterm_mid_stream_commits_exactly_what_was_processed() {
    let broker = broker();
    let bootstrap = broker.bootstrap_servers().to_string();
    let records = seed::hits(17, 30_000);
    let producer = {
        let bootstrap = bootstrap.clone();
        let records = records.clone();
        std::thread::spawn(move || {
            for chunk in records.chunks(300) {
                produce(&bootstrap, "hit_count", &unkeyed(chunk));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut worker = spawn_hit_counter_worker(&bootstrap, dir.path(), &[]);
    worker.wait_for_line("records/s", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    worker.terminate();
    assert_eq!(
        worker.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        worker.seen.join("\n")
    );
    producer.join().expect("producer");

    // hit_count: the major hits of every committed input are on count_topic, and nothing else.
    let committed_input: Vec<i64> = (0..4)
        .map(|p| committed(&bootstrap, "hit_counter", "hit_count", p))
        .collect();
    let produced: i64 = (0..4)
        .map(|p| streams_tests::high_watermark(&bootstrap, "hit_count", p))
        .sum();
    let done: i64 = committed_input.iter().sum();
    assert!(
        0 < done && done < produced,
        "the signal came mid-stream: {done} of {produced} committed"
    );
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for record in read_all(&bootstrap, "hit_count") {
        if record.offset >= committed_input[record.partition as usize] {
            continue;
        }
        let hit: serde_json::Value = serde_json::from_slice(&record.value.unwrap_or_default()).expect("json");
        if hit["hits"].as_i64().unwrap_or(0) > 20 {
            *expected
                .entry(hit["userId"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    let forwarded = read_all(&bootstrap, "count_topic");
    let mut sent: BTreeMap<String, i64> = BTreeMap::new();
    for record in &forwarded {
        *sent
            .entry(String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned())
            .or_default() += 1;
    }
    assert_eq!(
        sent, expected,
        "count_topic holds the major hits of the committed input, once each"
    );

    // count_topic: the table counts exactly the committed records.
    let committed_counts: Vec<i64> = (0..8)
        .map(|p| committed(&bootstrap, "hit_counter", "count_topic", p))
        .collect();
    let mut counted: BTreeMap<String, i64> = BTreeMap::new();
    for record in &forwarded {
        if record.offset < committed_counts[record.partition as usize] {
            *counted
                .entry(String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned())
                .or_default() += 1;
        }
    }
    let table = streams_tests::hit_counter::MAJOR_COUNT
        .read_local(dir.path(), "hit_counter")
        .expect("table");
    assert_eq!(
        table, counted,
        "the table reflects exactly the committed count_topic records"
    );
}

/// The README's by-hand sequence, twice in a row: `broker`, the producer, a worker with
/// `--idle-exit`, and again. The second worker is assigned its partitions within seconds
/// (it knows it is on the embedded broker and uses short sessions), and says what it waits
/// for meanwhile.
#[test]
fn the_by_hand_sequence_runs_twice_without_long_waits() {
    let port = free_port().to_string();
    let address = format!("127.0.0.1:{port}");
    let mut broker = Child::spawn(&hit_counter(), &["broker", "--port", &port, "--partitions", "4"]);
    broker.wait_for_line("embedded broker listening", Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8");
    for round in 0..2 {
        let seed = (round + 1).to_string();
        let mut producer = Child::spawn(
            &example_binary("hit_producer"),
            &["--broker", &address, "--count", "2000", "--seed", &seed],
        );
        assert_eq!(
            producer.wait(Duration::from_secs(60)),
            Some(0),
            "{}",
            producer.seen.join("\n")
        );
        let started = std::time::Instant::now();
        let mut worker = Child::spawn(
            &hit_counter(),
            &[
                "worker",
                "-l",
                "info",
                "--broker",
                &address,
                "--data-dir",
                data,
                "--idle-exit",
                "3",
            ],
        );
        worker.wait_for_line("sessions of 6000 ms", Duration::from_secs(30));
        worker.wait_for_line("assigned hit_count[", Duration::from_secs(60));
        let to_assignment = started.elapsed();
        assert_eq!(
            worker.wait(Duration::from_secs(120)),
            Some(0),
            "{}",
            worker.seen.join("\n")
        );
        println!("run {}: assigned after {to_assignment:?}", round + 1);
        assert!(
            to_assignment < Duration::from_secs(15),
            "run {}: {to_assignment:?} to assignment\n{}",
            round + 1,
            worker.seen.join("\n")
        );
        if round == 1 && to_assignment > Duration::from_secs(5) {
            assert!(
                worker
                    .seen
                    .iter()
                    .any(|l| l.contains("waiting for group `hit_counter` to assign partitions")),
                "a worker that waits says so\n{}",
                worker.seen.join("\n")
            );
        }
        assert!(
            worker.seen.iter().all(|l| !l.contains('\u{1b}')),
            "no colour codes when stderr is not a terminal"
        );
    }
    let mut expected = seed::expected_counts(&seed::hits(1, 2000));
    for (user, n) in seed::expected_counts(&seed::hits(2, 2000)) {
        *expected.entry(user).or_default() += n;
    }
    assert_eq!(printed_table(data), expected);
    broker.terminate();
    assert_eq!(broker.wait(Duration::from_secs(30)), Some(0));
    let output = broker.seen.join("\n");
    assert!(
        output.contains("created topics (partitions): hit_count (4)"),
        "{output}"
    );
    assert!(
        output.contains("connect to the cluster's own address 127.0.0.1:"),
        "{output}"
    );
    assert!(
        output.contains(&format!("embedded broker on {address} stopped")),
        "{output}"
    );
}

/// `send` checks the key and value against the topic's types when the app declares the
/// topic, refuses what does not decode (saying why), and sends anything with `--raw`.
#[test]
fn send_checks_values_against_the_topic_type() {
    let broker = broker();
    let bootstrap = broker.bootstrap_servers().to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["send"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--broker", &bootstrap]);
        let mut child = Child::spawn(&hit_counter(), &all);
        let code = child.wait(Duration::from_secs(30));
        (code, child.seen.join("\n"))
    };
    let (code, output) = run(&["hit_count", "{\"hits\": 3}"]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("the value is not of type"), "{output}");
    assert!(output.contains("missing field `timestamp`"), "{output}");
    assert!(output.contains("--raw"), "{output}");
    let (code, output) = run(&["hit_count", "not json at all"]);
    assert_eq!(code, Some(1), "{output}");
    let (code, output) = run(&["hit_count", "not json at all", "--raw"]);
    assert_eq!(code, Some(0), "{output}");
    // count_topic has String keys: a record without one is refused.
    let hit = r#"{"hits": 30, "timestamp": 1.0, "userId": "ann"}"#;
    let (code, output) = run(&["count_topic", hit]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("a key of type"), "{output}");
    let (code, output) = run(&["count_topic", hit, "--key", "ann"]);
    assert_eq!(code, Some(0), "{output}");
    // A topic the app does not declare is sent as it is.
    let (code, output) = run(&["elsewhere", "anything", "--key", "k"]);
    assert_eq!(code, Some(0), "{output}");
}

/// `tail` prints a topic's records decoded with the app's types, and a dead-letter topic's
/// records with their headers.
#[test]
fn tail_prints_records_and_dead_letters() {
    let broker = broker();
    let bootstrap = broker.bootstrap_servers().to_string();
    let mut records = unkeyed(&seed::hits(3, 20));
    records.push((Some("bad".into()), b"{\"hits\": ".to_vec()));
    produce(&bootstrap, "hit_count", &records);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8");
    let mut worker = Child::spawn(
        &hit_counter(),
        &["worker", "--broker", &bootstrap, "--data-dir", data, "--idle-exit", "2"],
    );
    assert_eq!(
        worker.wait(Duration::from_secs(90)),
        Some(0),
        "{}",
        worker.seen.join("\n")
    );
    let tail = |topic: &str| {
        let mut child = Child::spawn(
            &hit_counter(),
            &[
                "tail",
                topic,
                "--from-beginning",
                "--exit-at-end",
                "--broker",
                &bootstrap,
            ],
        );
        assert_eq!(
            child.wait(Duration::from_secs(30)),
            Some(0),
            "{}",
            child.seen.join("\n")
        );
        child.seen.join("\n")
    };
    let input = tail("hit_count");
    assert_eq!(input.matches("hit_count[").count(), 21, "{input}");
    // Reaching the end is how `--exit-at-end` ends, not an error.
    assert!(!input.contains("PartitionEOF"), "{input}");
    assert!(!input.contains("ERROR"), "{input}");
    assert!(input.contains("key=- value={\"hits\":"), "{input}");
    assert!(
        input.contains("key=bad value={\"hits\":  (not a value of the topic's type"),
        "{input}"
    );
    let dead = tail("hit_counter-find_major_hits-dlq");
    assert!(dead.contains("key=bad"), "{dead}");
    assert!(dead.contains("streams.dlq.error = invalid JSON"), "{dead}");
    let limited = {
        let mut child = Child::spawn(
            &hit_counter(),
            &[
                "tail",
                "hit_count",
                "--from-beginning",
                "--limit",
                "5",
                "--broker",
                &bootstrap,
            ],
        );
        assert_eq!(child.wait(Duration::from_secs(30)), Some(0));
        child.seen.join("\n")
    };
    assert_eq!(limited.matches("hit_count[").count(), 5, "{limited}");
}

/// A worker that waits for its group says what it waits for, every few seconds: here two
/// workers with 10-second sessions (set by the user), so that the second one waits ~9 s.
#[test]
fn a_worker_waiting_for_its_group_says_so() {
    let broker = broker();
    let bootstrap = broker.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8");
    let run = || {
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
                "--idle-exit",
                "1",
                "--consumer-config",
                "session.timeout.ms=10000",
            ],
        );
        assert_eq!(
            worker.wait(Duration::from_secs(120)),
            Some(0),
            "{}",
            worker.seen.join("\n")
        );
        worker.seen.join("\n")
    };
    let first = run();
    assert!(first.contains("sessions of 10000 ms (set by you)"), "{first}");
    let second = run();
    assert!(
        second.contains("waiting for group `hit_counter` to assign partitions"),
        "{second}"
    );
    assert!(
        second.contains("the embedded broker completes a join up to session.timeout.ms - 1 s"),
        "{second}"
    );
}

/// `agents` and `tables` list what the app declares, without a broker.
#[test]
fn agents_and_tables_are_listed() {
    let mut agents = Child::spawn(&hit_counter(), &["agents"]);
    assert_eq!(agents.wait(Duration::from_secs(30)), Some(0));
    let lines: Vec<String> = agents.seen.clone();
    assert!(
        lines.contains(&"find_major_hits\thit_count\tcount_topic\t-".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"count_hits\tcount_topic\t-\tmajor-count".to_string()),
        "{lines:?}"
    );
    let mut tables = Child::spawn(&hit_counter(), &["tables"]);
    assert_eq!(tables.wait(Duration::from_secs(30)), Some(0));
    let row = "major-count\tString\ti64\thit_counter-major-count-changelog\tcount_hits";
    assert!(tables.seen.contains(&row.to_string()), "{:?}", tables.seen);
    let mut faust = Child::spawn(&example_binary("faust_hit_counter"), &["tables"]);
    assert_eq!(faust.wait(Duration::from_secs(30)), Some(0));
    let output = faust.seen.join("\n");
    assert!(
        output.contains("hit_counter-major-count-changelog (Faust's encoding)"),
        "{output}"
    );
}

/// `--config-file`: librdkafka settings from a properties file, its `bootstrap.servers` the
/// broker when `--broker` is not given; a malformed line is named.
#[test]
fn a_config_file_configures_the_clients() {
    let broker = broker();
    let bootstrap = broker.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("app.properties");
    std::fs::write(
        &file,
        format!("# the cluster\nbootstrap.servers={bootstrap}\nclient.id = from-the-file\n"),
    )
    .expect("write");
    let file = file.to_str().expect("utf8");
    let hit = r#"{"hits": 30, "timestamp": 1.0, "userId": "ann"}"#;
    let mut send = Child::spawn(&hit_counter(), &["send", "hit_count", hit, "--config-file", file]);
    assert_eq!(send.wait(Duration::from_secs(30)), Some(0), "{}", send.seen.join("\n"));
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf8");
    let mut worker = Child::spawn(
        &hit_counter(),
        &["worker", "--config-file", file, "--data-dir", data, "--idle-exit", "3"],
    );
    assert_eq!(
        worker.wait(Duration::from_secs(120)),
        Some(0),
        "{}",
        worker.seen.join("\n")
    );
    assert_eq!(printed_table(data), BTreeMap::from([("ann".to_string(), 1)]));

    // The file's settings reach the clients (an invalid one stops the worker, named), and
    // `--config` overrides them.
    let invalid = dir.path().join("invalid.properties");
    std::fs::write(
        &invalid,
        format!("bootstrap.servers={bootstrap}\nqueue.buffering.max.ms=soon\n"),
    )
    .expect("write");
    let invalid = invalid.to_str().expect("utf8");
    let mut worker = Child::spawn(
        &hit_counter(),
        &["worker", "--config-file", invalid, "--data-dir", data],
    );
    assert_eq!(worker.wait(Duration::from_secs(60)), Some(1));
    let output = worker.seen.join("\n");
    assert!(output.contains("queue.buffering.max.ms"), "{output}");
    let mut worker = Child::spawn(
        &hit_counter(),
        &[
            "worker",
            "--config-file",
            invalid,
            "--config",
            "queue.buffering.max.ms=5",
            "--data-dir",
            data,
            "--idle-exit",
            "2",
        ],
    );
    assert_eq!(
        worker.wait(Duration::from_secs(120)),
        Some(0),
        "{}",
        worker.seen.join("\n")
    );

    let bad = dir.path().join("bad.properties");
    std::fs::write(&bad, "bootstrap.servers=x\nsasl.password: s3cret\n").expect("write");
    let mut worker = Child::spawn(
        &hit_counter(),
        &[
            "worker",
            "--config-file",
            bad.to_str().expect("utf8"),
            "--data-dir",
            data,
        ],
    );
    assert_eq!(worker.wait(Duration::from_secs(30)), Some(1));
    let output = worker.seen.join("\n");
    assert!(
        output.contains("bad.properties, line 2: not KEY=VALUE (the line starts `sasl.password`)"),
        "{output}"
    );
    assert!(!output.contains("s3cret"), "{output}");
    let mut command = std::process::Command::new(hit_counter());
    command
        .args(["tail", "hit_count"])
        .env_remove("STREAMS_BROKER")
        .env_remove("STREAMS_CONFIG_FILE");
    let mut tail = Child::spawn_command(command);
    assert_eq!(tail.wait(Duration::from_secs(30)), Some(1));
    assert!(tail.seen.join("\n").contains("no broker"), "{:?}", tail.seen);
}

/// `worker` runs its web server on the port asked (`--web-port`), on loopback; a port in use
/// stops a second worker's start with a message naming it; `--no-web` runs none.
#[test]
fn the_worker_serves_its_web_pages_where_asked() {
    let broker = broker();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf8");
    let port = free_port();
    let port_text = port.to_string();
    let worker_args = |data: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "worker",
            "-l",
            "info",
            "--broker",
            broker.bootstrap_servers(),
            "--data-dir",
            data,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let args = worker_args(data, &["--web-port", &port_text]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut worker = Child::spawn(&hit_counter(), &args);
    worker.wait_for_line(
        &format!("web server on http://127.0.0.1:{port}"),
        Duration::from_secs(60),
    );
    streams_tests::wait_until("the worker is ready", Duration::from_secs(60), || {
        streams_tests::http_get(port, "/ready").0 == 200
    });
    let (status, body) = streams_tests::http_get(port, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""app":"hit_counter""#), "{body}");
    produce(broker.bootstrap_servers(), "hit_count", &unkeyed(&seed::hits(5, 300)));
    let expected = seed::expected_counts(&seed::hits(5, 300));
    let (user, count) = expected.iter().next().expect("a user");
    streams_tests::wait_until("the lookup answers the count", Duration::from_secs(60), || {
        streams_tests::http_get(port, &format!("/tables/major-count/{user}")) == (200, count.to_string())
    });

    // The same port for a second worker: it stops, saying why and what to do.
    let other = tempfile::tempdir().expect("tempdir");
    let args = worker_args(other.path().to_str().expect("utf8"), &["--web-port", &port_text]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut second = Child::spawn(&hit_counter(), &args);
    assert_eq!(second.wait(Duration::from_secs(30)), Some(1));
    let output = second.seen.join("\n");
    assert!(
        output.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{output}"
    );
    assert!(output.contains("--no-web"), "{output}");
    worker.terminate();
    assert_eq!(worker.wait(Duration::from_secs(60)), Some(0));

    // --no-web: nothing listens.
    let args = worker_args(data, &["--no-web", "--web-port", &port_text, "--idle-exit", "2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut quiet = Child::spawn(&hit_counter(), &args);
    quiet.wait_for_line("worker of hit_counter started", Duration::from_secs(60));
    assert_eq!(
        streams_tests::http_get(port, "/health").0,
        0,
        "something listens on {port}"
    );
    assert_eq!(quiet.wait(Duration::from_secs(60)), Some(0));
    assert!(!quiet.seen.join("\n").contains("web server on"));
}

/// What each worker wrote, for a failure's message.
fn outputs(workers: &[Child]) -> String {
    workers
        .iter()
        .enumerate()
        .map(|(n, worker)| format!("--- worker {n}:\n{}", worker.seen.join("\n")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Three workers of one app started on one machine with default options (no `--web-port`),
/// as the README's scaling section says: the first takes 6066 (unless something else has
/// it), the others any free port, each saying which; all three run, and a lookup sent to
/// any of them reaches the worker that holds the key, whatever its port.
#[test]
fn three_workers_with_default_options_run_side_by_side() {
    let broker = broker();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut workers = Vec::new();
    let mut ports = Vec::new();
    for dir in &dirs {
        let mut command = std::process::Command::new(hit_counter());
        command
            .args([
                "worker",
                "-l",
                "info",
                "--broker",
                broker.bootstrap_servers(),
                "--data-dir",
            ])
            .arg(dir.path())
            // The defaults, not the test helpers' any-port setting.
            .env_remove("STREAMS_WEB_PORT");
        let mut worker = Child::spawn_command(command);
        let line = worker.wait_for_line("web server on http://127.0.0.1:", Duration::from_secs(60));
        let port: u16 = line
            .rsplit("http://127.0.0.1:")
            .next()
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        ports.push(port);
        workers.push(worker);
    }
    let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "ports {ports:?}");
    if ports[0] == 6066 {
        for worker in &workers[1..] {
            assert!(
                worker.seen.join("\n").contains("port 6066 is in use"),
                "{}",
                worker.seen.join("\n")
            );
        }
    }
    // At-least-once counts exactly only where no partition moves while records are in
    // flight: produce once the group has settled, every worker ready and every source
    // partition held by one of them.
    let sources = i64::from(streams_tests::partitions(broker.bootstrap_servers(), "hit_count"))
        + i64::from(streams_tests::partitions(broker.bootstrap_servers(), "count_topic"));
    wait_settled(&ports, sources, &workers);
    let records = seed::hits(11, 600);
    produce(broker.bootstrap_servers(), "hit_count", &unkeyed(&records));
    let expected = seed::expected_counts(&records);
    for port in &ports {
        let mut differing = Vec::new();
        let answered = streams_tests::poll_until(Duration::from_secs(120), || {
            differing = expected
                .iter()
                .map(|(user, count)| {
                    let answer = streams_tests::http_get(*port, &format!("/tables/major-count/{user}"));
                    (user, count.to_string(), answer)
                })
                .filter(|(_, count, answer)| *answer != (200, count.clone()))
                .map(|(user, count, answer)| format!("{user}: want {count}, got {answer:?}"))
                .collect();
            differing.is_empty()
        });
        assert!(
            answered,
            "the worker on port {port} answers wrongly: {differing:?}\n{}",
            outputs(&workers)
        );
    }
    // One after another, each once the others hold every partition again: the embedded
    // broker refuses the last commit of a worker that stops mid-rebalance (Kafka accepts it).
    for n in 0..workers.len() {
        workers[n].terminate();
        assert_eq!(
            workers[n].wait(Duration::from_secs(90)),
            Some(0),
            "{}",
            workers[n].seen.join("\n")
        );
        // "Ready" alone is not enough: a worker learns of a rebalance at its next heartbeat.
        if n + 1 < workers.len() {
            wait_settled(&ports[n + 1..], sources, &workers[n + 1..]);
        }
    }
}

/// Waits until the workers on `ports` are all ready and hold the app's `sources` source
/// partitions between them: the group has settled.
fn wait_settled(ports: &[u16], sources: i64, workers: &[Child]) {
    let mut ready = String::new();
    let settled = streams_tests::poll_until(Duration::from_secs(120), || {
        let answers: Vec<(u16, String)> = ports
            .iter()
            .map(|port| streams_tests::http_get(*port, "/ready"))
            .collect();
        let held: i64 = answers
            .iter()
            .filter_map(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
            .filter_map(|body| body["assigned_partitions"].as_i64())
            .sum();
        ready = format!("{answers:?}");
        answers.iter().all(|(status, _)| *status == 200) && held == sources
    });
    assert!(
        settled,
        "the group never settled on {sources} partitions: {ready}\n{}",
        outputs(workers)
    );
}

/// A worker told to stop while its broker cannot be reached does not wait for it forever:
/// past `--shutdown-timeout` it exits 1, saying that it did not stop in time (before, it was
/// still running after a minute: its last cut, its consumer's close and its producers'
/// flushes all wait for the broker).
#[test]
fn a_stop_is_bounded_when_the_broker_is_unreachable() {
    let broker = broker();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut worker =
        streams_tests::spawn_hit_counter_worker(broker.bootstrap_servers(), dir.path(), &["--shutdown-timeout", "5"]);
    worker.wait_for_line("restored; processing", Duration::from_secs(120));
    produce(broker.bootstrap_servers(), "hit_count", &unkeyed(&seed::hits(3, 200)));
    let bootstrap = broker.bootstrap_servers().to_string();
    streams_tests::wait_until("a commit", Duration::from_secs(60), || {
        (0..4).any(|p| streams_tests::committed(&bootstrap, "hit_counter", "hit_count", p) > 0)
    });
    broker.broker_down(1).expect("broker down");
    let asked = std::time::Instant::now();
    worker.terminate();
    assert_eq!(
        worker.wait(Duration::from_secs(60)),
        Some(1),
        "{}",
        worker.seen.join("\n")
    );
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(30), "stopped after {took:?}");
    let output = worker.seen.join("\n");
    assert!(output.contains("did not stop within 5 s"), "{output}");
    broker.broker_up(1).expect("broker up");
}

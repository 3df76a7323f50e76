//! The worker's web server on the embedded broker: table lookups answered by either of two
//! workers (forwarded to the owner), during and after a rebalance; metrics scraped and
//! parsed as Prometheus text; health and readiness while a worker restores its tables.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use streams_core::web::WebOptions;
use streams_core::{EmbeddedBroker, Worker, WorkerHandle};
use streams_examples::seed;
use streams_tests::hit_counter;
use streams_tests::*;

/// Partitions of the hit counter's two source topics, as its workers create them (8 each).
const SOURCE_PARTITIONS: u64 = 16;

/// Produces `records` to `hit_count` (unkeyed) and waits until `group` has committed all of
/// `topics`.
async fn produce_and_wait(
    bootstrap: &str,
    records: Vec<serde_json::Value>,
    group: &'static str,
    topics: &'static [&'static str],
) {
    let bootstrap = bootstrap.to_string();
    tokio::task::spawn_blocking(move || {
        produce(&bootstrap, "hit_count", &unkeyed(&records));
        wait_caught_up(&bootstrap, group, topics, Duration::from_secs(180));
    })
    .await
    .expect("produce");
}

async fn start(broker: &EmbeddedBroker, dir: &std::path::Path) -> WorkerHandle {
    streams_core::init_logging(&std::env::var("STREAMS_TEST_LOG").unwrap_or_else(|_| "error".into()));
    let options = worker_options(dir, broker).web(WebOptions::default().port(0));
    Worker::start(hit_counter::app(), options).await.expect("worker starts")
}

fn url(worker: &WorkerHandle) -> String {
    worker.web_url().expect("a web server").to_string()
}

/// Waits until the workers hold every partition between them, each some.
///
/// Each of them holds some: input produced before the group settles could be counted twice,
/// since the embedded broker refuses a commit while its group rebalances (Kafka accepts it)
/// and the partitions' next owner processes again what was not committed (at-least-once).
async fn wait_assigned(workers: &[&WorkerHandle]) {
    let metrics: Vec<_> = workers.iter().map(|w| w.metrics()).collect();
    tokio::task::spawn_blocking(move || {
        wait_until(
            "each worker holding partitions, every partition held",
            Duration::from_secs(120),
            || {
                let held: Vec<u64> = metrics.iter().map(|m| m.assigned.load(Ordering::Relaxed)).collect();
                held.iter().all(|&h| h > 0) && held.iter().sum::<u64>() == SOURCE_PARTITIONS
            },
        )
    })
    .await
    .expect("wait");
}

/// Every user's count asked of every worker: the right value, whichever worker holds it.
/// Returns how many answers came from a worker other than the one asked.
async fn check_every_key(client: &reqwest::Client, workers: &[String], expected: &BTreeMap<String, i64>) -> usize {
    let mut forwarded = 0;
    for worker in workers {
        for (user, count) in expected {
            let answer = get(client, &format!("{worker}/tables/major-count/{user}")).await;
            assert_eq!(answer.status, 200, "{worker}: {user}: {:?}", answer.body);
            assert_eq!(answer.body, serde_json::json!(count), "{worker}: {user}");
            let served_by = answer.header("x-streams-served-by").expect("served by");
            if served_by != worker {
                forwarded += 1;
            }
        }
    }
    forwarded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lookups_are_answered_by_either_worker_during_and_after_a_rebalance() {
    let broker = EmbeddedBroker::start().expect("broker");
    let bootstrap = broker.bootstrap_servers().to_string();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let a = start(&broker, dirs[0].path()).await;
    let b = start(&broker, dirs[1].path()).await;
    wait_assigned(&[&a, &b]).await;
    let records = seed::hits(7, 6_000);
    let expected = seed::expected_counts(&records);
    assert_eq!(expected.len(), seed::USERS as usize);
    produce_and_wait(&bootstrap, records, "hit_counter", &["hit_count", "count_topic"]).await;
    let client = client();
    let (url_a, url_b) = (url(&a), url(&b));
    assert_ne!(url_a, url_b);
    assert!(url_a.starts_with("http://127.0.0.1:"), "{url_a}");

    // Both workers hold partitions, and each answers every key: those it does not hold by
    // asking the other.
    let forwarded = check_every_key(&client, &[url_a.clone(), url_b.clone()], &expected).await;
    assert!(forwarded > 0, "no lookup was forwarded");
    assert!(forwarded < 2 * expected.len(), "every lookup was forwarded");

    // `?local=true`: a key held elsewhere is 404, naming its owner.
    let mut saw_owner = false;
    for user in expected.keys() {
        let answer = get(&client, &format!("{url_a}/tables/major-count/{user}?local=true")).await;
        match answer.status {
            200 => assert_eq!(answer.header("x-streams-served-by"), Some(url_a.as_str())),
            404 => {
                assert_eq!(answer.body["owner"], serde_json::json!(url_b), "{:?}", answer.body);
                assert_eq!(answer.header("x-streams-owner"), Some(url_b.as_str()));
                saw_owner = true;
            }
            other => panic!("{user}: status {other}: {:?}", answer.body),
        }
    }
    assert!(saw_owner);

    // A key nobody counted: 404 from either worker; a key of the wrong type: 400; an unknown
    // table: 404 naming the tables.
    for worker in [&url_a, &url_b] {
        let answer = get(&client, &format!("{worker}/tables/major-count/nobody")).await;
        assert_eq!(answer.status, 404, "{:?}", answer.body);
        let answer = get(&client, &format!("{worker}/tables/no-such-table/x")).await;
        assert_eq!(answer.status, 404);
        assert!(answer.body["error"].as_str().expect("error").contains("major-count"));
    }

    // Listings: each worker lists the keys of its partitions; together, every key once.
    let mut listed = BTreeMap::new();
    for worker in [&url_a, &url_b] {
        let answer = get(&client, &format!("{worker}/tables/major-count?limit=1000")).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.body["truncated"], serde_json::json!(false));
        for entry in answer.body["entries"].as_array().expect("entries") {
            let key = entry["key"].as_str().expect("key").to_string();
            let previous = listed.insert(key.clone(), entry["value"].as_i64().expect("value"));
            assert!(previous.is_none(), "{key} listed by both workers");
        }
    }
    assert_eq!(listed, expected);
    let answer = get(&client, &format!("{url_a}/tables/major-count?prefix=user-1&limit=1000")).await;
    for entry in answer.body["entries"].as_array().expect("entries") {
        assert!(entry["key"].as_str().expect("key").starts_with("user-1"), "{entry}");
    }
    let answer = get(&client, &format!("{url_b}/tables/major-count?limit=2")).await;
    assert_eq!(answer.body["entries"].as_array().expect("entries").len(), 2);
    assert_eq!(answer.body["truncated"], serde_json::json!(true));
    let answer = get(&client, &format!("{url_a}/tables")).await;
    assert_eq!(answer.body["tables"][0]["name"], serde_json::json!("major-count"));
    assert_eq!(answer.body["tables"][0]["partitions"], serde_json::json!(8));

    // A third worker joins while records keep coming: partitions move while every key is
    // asked of all workers. Each answer is 503 with Retry-After or a count between the one
    // before the rebalance (all of it was committed) and the final one; never 404.
    let more = seed::hits(8, 4_000);
    let mut all = seed::hits(7, 6_000);
    all.extend(more.iter().cloned());
    let finally = seed::expected_counts(&all);
    let feeding = {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            for chunk in more.chunks(200) {
                produce(&bootstrap, "hit_count", &unkeyed(chunk));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let c = start(&broker, dirs[2].path()).await;
    let url_c = url(&c);
    let assignments_before = a.metrics().assignments.load(Ordering::Relaxed);
    let began = Instant::now();
    let (mut answered, mut unavailable) = (0, 0);
    let mut seen: Vec<(String, String, i64)> = Vec::new();
    loop {
        for worker in [&url_a, &url_b, &url_c] {
            for (user, count) in &expected {
                let answer = get(&client, &format!("{worker}/tables/major-count/{user}")).await;
                match answer.status {
                    200 => {
                        let value = answer.body.as_i64().expect("a count");
                        assert!(value >= *count, "{worker}: {user}: {value} below {count}");
                        seen.push((worker.to_string(), user.clone(), value));
                        answered += 1;
                    }
                    503 => {
                        assert_eq!(answer.header("retry-after"), Some("1"), "{:?}", answer.body);
                        unavailable += 1;
                    }
                    other => panic!(
                        "{worker}: {user}: status {other} during the rebalance: {:?}",
                        answer.body
                    ),
                }
            }
        }
        let moved = a.metrics().assignments.load(Ordering::Relaxed) > assignments_before;
        let held: u64 = [&a, &b, &c]
            .iter()
            .map(|w| w.metrics().assigned.load(Ordering::Relaxed))
            .sum();
        let c_holds = c.metrics().assigned.load(Ordering::Relaxed) > 0;
        if moved && c_holds && held == SOURCE_PARTITIONS {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(120), "the rebalance did not end");
    }
    eprintln!("during the rebalance: {answered} lookups answered, {unavailable} answered 503");
    assert!(unavailable > 0, "no lookup fell in the rebalance");
    feeding.await.expect("produce");
    {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            wait_caught_up(
                &bootstrap,
                "hit_counter",
                &["hit_count", "count_topic"],
                Duration::from_secs(120),
            );
        })
        .await
        .expect("caught up");
    }
    // At least once: a stage whose offset commit the embedded broker refused during the
    // rebalance (Kafka accepts it; see the README's limits) sends what it processed since its
    // last commit again, so `count_topic` may hold some records twice. None is lost, and the
    // counting stage counts each of its input records exactly once: the table is the count of
    // `count_topic`'s records.
    let forwarded = {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || read_all(&bootstrap, "count_topic"))
            .await
            .expect("read count_topic")
    };
    // Each record by its fields: every major hit of the input is there, at least once, and
    // nothing else is.
    let fields = |hit: &serde_json::Value| {
        (
            hit["userId"].to_string(),
            hit["hits"].to_string(),
            hit["timestamp"].to_string(),
        )
    };
    let mut wanted: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for hit in all.iter().filter(|hit| hit["hits"].as_i64().unwrap_or(0) > 20) {
        *wanted.entry(fields(hit)).or_default() += 1;
    }
    let mut got: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    let mut sent: BTreeMap<String, i64> = BTreeMap::new();
    for record in &forwarded {
        let hit: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().unwrap_or_default()).expect("a hit");
        *got.entry(fields(&hit)).or_default() += 1;
        *sent
            .entry(String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned())
            .or_default() += 1;
    }
    for (hit, n) in &wanted {
        assert!(
            got.get(hit).is_some_and(|m| m >= n),
            "{hit:?}: {:?} sent, {n} expected",
            got.get(hit)
        );
    }
    for hit in got.keys() {
        assert!(wanted.contains_key(hit), "{hit:?} sent but not in the input");
    }
    let resent: i64 = sent.values().sum::<i64>() - finally.values().sum::<i64>();
    eprintln!("records sent to count_topic again after refused commits: {resent}");
    // What was answered during the rebalance: between the count before and the final one.
    for (worker, user, value) in &seen {
        assert!(
            value <= &sent[user],
            "{worker}: {user}: {value} above the final {}",
            sent[user]
        );
    }
    let expected = sent;
    // After it, once every worker is ready: every key from every worker.
    for worker in [&url_a, &url_b, &url_c] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(&client, &format!("{worker}/ready")).await.status != 200 {
            assert!(Instant::now() < deadline, "{worker} never ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The directory may lag a moment behind the assignment: 503s until it catches up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for worker in [&url_a, &url_b, &url_c] {
            for user in expected.keys() {
                if get(&client, &format!("{worker}/tables/major-count/{user}"))
                    .await
                    .status
                    != 200
                {
                    all = false;
                }
            }
        }
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lookups still unanswered after the rebalance"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check_every_key(&client, &[url_a, url_b, url_c], &expected).await;
    stop_in_turn(vec![a, b, c], SOURCE_PARTITIONS).await;
}

/// One sample of Prometheus' text format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses Prometheus' text format (OpenMetrics), strictly: every sample belongs to a family
/// declared with `# TYPE`, label values are quoted, values are numbers, the text ends with
/// `# EOF`. Returns the families' types and the samples.
fn parse_prometheus(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    let mut ended = false;
    for line in text.lines() {
        assert!(!ended, "a line after # EOF: {line}");
        if line == "# EOF" {
            ended = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "info", "unknown"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("not a number: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels not closed: {line}"));
                let mut labels = BTreeMap::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (key, quoted) = pair.split_once('=').unwrap_or_else(|| panic!("label: {line}"));
                    let value = quoted
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("label value not quoted: {line}"));
                    labels.insert(key.to_string(), value.to_string());
                }
                (name.to_string(), labels)
            }
        };
        let family = ["_total", "_bucket", "_count", "_sum", "_created", "_info"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| types.contains_key(*f)))
            .unwrap_or(&name);
        assert!(types.contains_key(family), "sample of an undeclared family: {line}");
        samples.push((name, labels, value));
    }
    assert!(ended, "no # EOF at the end");
    (types, samples)
}

fn sum(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| n == name && label.is_none_or(|(k, v)| labels.get(k).map(String::as_str) == Some(v)))
        .map(|(_, _, value)| value)
        .sum()
}

/// Metrics scraped from a worker are Prometheus text that says what it did; health and
/// readiness follow a second worker through the restore of its tables; a key is 503 with
/// Retry-After while its partition is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_parse_as_prometheus_text_and_ready_follows_a_restore() {
    let broker = EmbeddedBroker::start().expect("broker");
    let bootstrap = broker.bootstrap_servers().to_string();
    let first_dir = tempfile::tempdir().expect("dir");
    let first = start(&broker, first_dir.path()).await;
    wait_assigned(&[&first]).await;
    // Many users: a changelog long enough that its restore can be watched.
    let users = 40_000;
    let records: Vec<serde_json::Value> = (0..users)
        .map(|i| serde_json::json!({"hits": 30, "timestamp": 1.0, "userId": format!("u{i}")}))
        .collect();
    produce_and_wait(&bootstrap, records, "hit_counter", &["hit_count", "count_topic"]).await;
    let client = client();
    let url_first = url(&first);
    // Lag is read once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let scrape = get(&client, &format!("{url_first}/metrics")).await;
    assert_eq!(scrape.status, 200);
    assert!(
        scrape
            .header("content-type")
            .expect("content type")
            .starts_with("application/openmetrics-text"),
        "{:?}",
        scrape.headers
    );
    let (types, samples) = parse_prometheus(scrape.body.as_str().expect("text"));
    for (family, kind) in [
        ("streams_records_in", "counter"),
        ("streams_records_out", "counter"),
        ("streams_consumer_lag", "gauge"),
        ("streams_commit_seconds", "histogram"),
        ("streams_flush_seconds", "histogram"),
        ("streams_restored_records", "counter"),
        ("streams_restore_remaining_records", "gauge"),
        ("streams_dead_letters", "counter"),
        ("streams_late_records", "counter"),
        ("streams_table_cache_hits", "counter"),
        ("streams_table_cache_evictions", "counter"),
        ("streams_rebalances", "counter"),
        ("streams_assigned_partitions", "gauge"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(kind), "{family}");
    }
    let users_f = f64::from(users);
    assert_eq!(
        sum(&samples, "streams_records_in_total", Some(("topic", "hit_count"))),
        users_f
    );
    assert_eq!(
        sum(&samples, "streams_records_in_total", Some(("topic", "count_topic"))),
        users_f
    );
    // Every record went to count_topic, and one change per user to the changelog.
    assert_eq!(
        sum(&samples, "streams_records_out_total", Some(("topic", "count_topic"))),
        users_f
    );
    assert_eq!(
        sum(
            &samples,
            "streams_records_out_total",
            Some(("topic", "hit_counter-major-count-changelog"))
        ),
        users_f
    );
    let partitions: Vec<&Sample> = samples
        .iter()
        .filter(|(n, l, _)| n == "streams_records_in_total" && l["topic"] == "hit_count")
        .collect();
    assert_eq!(partitions.len(), 8, "one series per partition");
    assert_eq!(sum(&samples, "streams_consumer_lag", None), 0.0);
    assert!(sum(&samples, "streams_commit_seconds_count", None) > 0.0);
    assert!(sum(&samples, "streams_flush_seconds_count", None) > 0.0);
    assert_eq!(sum(&samples, "streams_assigned_partitions", None), 16.0);
    assert_eq!(sum(&samples, "streams_dead_letters_total", None), 0.0);
    assert!(sum(&samples, "streams_rebalances_total", None) >= 1.0);
    assert!(sum(&samples, "streams_table_cache_misses_total", None) >= users_f);

    // The first worker stops; a second, on an empty data directory, restores the table from
    // its changelog. Health is up from the start; ready only once the restore is done; a
    // key meanwhile is 503.
    first.stop().await.expect("stops");
    // A slower broker: the restore takes seconds, long enough to be watched.
    broker
        .round_trip_time(1, Duration::from_millis(150))
        .expect("round trip time");
    let second_dir = tempfile::tempdir().expect("dir");
    let second = start(&broker, second_dir.path()).await;
    let url_second = url(&second);
    let mut states = Vec::new();
    let mut key_unavailable = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let health = get(&client, &format!("{url_second}/health")).await;
        assert_eq!(health.status, 200, "{:?}", health.body);
        let ready = get(&client, &format!("{url_second}/ready")).await;
        let state = if ready.status == 200 {
            "ready".to_string()
        } else {
            assert_eq!(ready.status, 503);
            assert_eq!(ready.header("retry-after"), Some("1"));
            ready.body["reason"].as_str().expect("reason").to_string()
        };
        if state.contains("restoring") {
            let answer = get(&client, &format!("{url_second}/tables/major-count/u1?local=true")).await;
            if answer.status == 503 {
                key_unavailable += 1;
            }
        }
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        if state == "ready" {
            broker.round_trip_time(1, Duration::ZERO).expect("round trip time");
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {states:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("readiness went: {states:?}");
    assert!(
        states.iter().any(|s| s.contains("restoring")),
        "no restore seen: {states:?}"
    );
    assert!(key_unavailable > 0, "no lookup during the restore was answered 503");
    assert_eq!(states.last().map(String::as_str), Some("ready"));
    let answer = get(&client, &format!("{url_second}/tables/major-count/u1")).await;
    assert_eq!(answer.body, serde_json::json!(1));
    let (_, samples) = parse_prometheus(
        get(&client, &format!("{url_second}/metrics"))
            .await
            .body
            .as_str()
            .expect("text"),
    );
    assert_eq!(sum(&samples, "streams_restored_records_total", None), users_f);
    assert_eq!(sum(&samples, "streams_restore_remaining_records", None), 0.0);
    second.stop().await.expect("stops");
}

/// Chromium from Debian's packages (`make test` installs it).
fn chromium() -> std::path::PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let path = std::path::Path::new(dir).join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!("no chromium on PATH: `make deps` installs Debian's package (apt-get install chromium)");
}

/// The page at `url` as a headless Chromium leaves it after running its scripts for
/// `budget_ms` of virtual time.
fn rendered_dom(url: &str, budget_ms: u64) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let output = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The topology page in a real browser (headless Chromium): Mermaid draws the app's topics,
/// agents and table, with this worker's rates on the edges; the rates are live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_topology_page_draws_the_app_with_live_rates_in_a_browser() {
    let broker = EmbeddedBroker::start().expect("broker");
    let bootstrap = broker.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().expect("dir");
    let worker = start(&broker, dir.path()).await;
    wait_assigned(&[&worker]).await;
    let base = url(&worker);
    let client = client();

    // Rates while records flow: two drawings a second apart.
    let _ = get(&client, &format!("{base}/topology/graph")).await;
    let producing = {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            for round in 0..30 {
                produce(&bootstrap, "hit_count", &unkeyed(&seed::hits(round, 500)));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let graph = get(&client, &format!("{base}/topology/graph")).await;
    let graph = graph.body.as_str().expect("mermaid text").to_string();
    producing.await.expect("produce");
    assert!(graph.starts_with("flowchart LR"), "{graph}");
    let reads = graph
        .lines()
        .find(|l| l.contains("topic_hit_count -->|reads "))
        .unwrap_or_else(|| panic!("no rate on hit_count's edge: {graph}"));
    let rate: f64 = reads
        .split("reads ")
        .nth(1)
        .and_then(|r| r.split("/s").next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {reads}"));
    assert!(rate > 0.0, "{reads}");

    let dom = tokio::task::spawn_blocking(move || rendered_dom(&format!("{base}/topology"), 8_000))
        .await
        .expect("chromium");
    let graph_at = dom.find("id=\"graph\"").expect("the graph's element");
    // The drawing only: the page's scripts, after it, name rates too.
    let scripts_at = dom[graph_at..].find("<script").map_or(dom.len(), |at| graph_at + at);
    let drawn = &dom[graph_at..scripts_at];
    assert!(drawn.contains("<svg"), "no drawing: {dom}");
    assert!(dom.contains("data-drawn="), "the page never drew: {dom}");
    for name in [
        "hit_count",
        "find_major_hits",
        "count_topic",
        "count_hits",
        "major-count",
    ] {
        assert!(drawn.contains(name), "`{name}` not in the drawing: {drawn}");
    }
    assert!(drawn.contains("reads "), "no edge labels: {drawn}");
    assert!(drawn.contains("/s"), "no rates on the edges: {drawn}");
    worker.stop().await.expect("stops");
}

/// A windowed table answers a key's windows, `?from=` and `?to=` choosing them by start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_windowed_table_answers_a_keys_windows() {
    use streams_tests::hits_per_window;
    let broker = EmbeddedBroker::start().expect("broker");
    let bootstrap = broker.bootstrap_servers().to_string();
    let dir = tempfile::tempdir().expect("dir");
    let options = worker_options(dir.path(), &broker).web(WebOptions::default().port(0));
    let worker = Worker::start(hits_per_window::app(), options)
        .await
        .expect("worker starts");
    let metrics = worker.metrics();
    tokio::task::spawn_blocking(move || {
        wait_until("the worker holds its partitions", Duration::from_secs(120), || {
            metrics.assigned.load(Ordering::Relaxed) == 16
        })
    })
    .await
    .expect("wait");
    // Minute [0, 60 s): 3 records, 12 hits; minute [60 s, 120 s): 1 record, 4 hits. Stream
    // time ends at 65 s: both are still open (grace 10 s).
    let hits: Vec<serde_json::Value> = [(10.0, 5), (20.0, 4), (30.0, 3), (65.0, 4)]
        .iter()
        .map(|(at, hits)| serde_json::json!({"hits": hits, "timestamp": at, "userId": "u"}))
        .collect();
    produce_and_wait(
        &bootstrap,
        hits,
        "hits_per_window",
        &["hit_count", "hits_per_window-by-user-repartition"],
    )
    .await;
    let client = client();
    let base = url(&worker);
    // A rebalance of the embedded broker's group (its sessions are short) is 503 meanwhile.
    let get = |url: String| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let answer = get(&client, &url).await;
                if answer.status != 503 || Instant::now() > deadline {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let first = serde_json::json!({"start": 0, "end": 60_000, "value": {"count": 3, "hits": 12}});
    let second = serde_json::json!({"start": 60_000, "end": 120_000, "value": {"count": 1, "hits": 4}});
    let answer = get(format!("{base}/tables/minute-totals/u")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body, serde_json::json!([first, second]));
    let answer = get(format!("{base}/tables/minute-totals/u?from=1&to=60000")).await;
    assert_eq!(answer.body, serde_json::json!([second]));
    let answer = get(format!("{base}/tables/minute-totals/u?to=59999")).await;
    assert_eq!(answer.body, serde_json::json!([first]));
    for query in ["?from=120000", "?to=-1", "?from=120000&to=60000"] {
        let answer = get(format!("{base}/tables/minute-totals/u{query}")).await;
        assert_eq!(answer.status, 404, "{query}: {:?}", answer.body);
    }
    let answer = get(format!("{base}/tables/minute-totals/nobody")).await;
    assert_eq!(answer.status, 404);
    let answer = get(format!("{base}/tables")).await;
    let tables = answer.body["tables"].as_array().expect("tables");
    let minute = tables
        .iter()
        .find(|t| t["name"] == "minute-totals")
        .expect("minute-totals");
    assert_eq!(minute["windowed"], serde_json::json!(true));
    worker.stop().await.expect("stops");
}

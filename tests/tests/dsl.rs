//! The DSL through the test driver: every operation, the seed app and word count as
//! pipelines, repartition topics and sub-topologies, codecs, dead letters, and a pipeline
//! beside agents in one app.

use std::collections::BTreeMap;

use streams_core::codec::ValueCodec;
use streams_core::prelude::*;
use streams_core::testing::TestDriver;
use streams_examples::seed;
use streams_tests::{hit_counter, hit_counter_dsl, word_count};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_pipeline_counts_like_the_agents() {
    let records = seed::hits(42, 10_000);
    let expected = seed::expected_counts(&records);
    let mut driver = TestDriver::with_partitions(hit_counter_dsl::app(), &[("hit_count", 4)]).expect("driver");
    for record in &records {
        driver.pipe_raw("hit_count", None, Some(record.to_string().as_bytes()));
    }
    driver.run().await.expect("run");
    assert_eq!(driver.table(&hit_counter_dsl::MAJOR_COUNT).expect("table"), expected);

    // Re-keyed through the repartition topic: every user's records in one of its partitions.
    let repartitioned = driver.raw_records("hit_counter_dsl-by-user-repartition");
    assert_eq!(repartitioned.len() as i64, expected.values().sum::<i64>());
    assert_eq!(
        driver.partitions("hit_counter_dsl-by-user-repartition"),
        4,
        "like its source"
    );
    for user in expected.keys() {
        let partitions: std::collections::BTreeSet<i32> = repartitioned
            .iter()
            .filter(|r| r.key.as_deref() == Some(user.as_bytes()))
            .map(|r| r.partition)
            .collect();
        assert_eq!(partitions.len(), 1, "{user} in {partitions:?}");
    }
    // The table's changelog, and both sub-topologies' commits.
    let changelog = driver.raw_records("hit_counter_dsl-major-count-changelog");
    for (user, count) in &expected {
        let last = changelog
            .iter()
            .rev()
            .find(|r| r.key.as_deref() == Some(user.as_bytes()))
            .expect("in the changelog");
        assert_eq!(last.value.as_deref(), Some(count.to_string().as_bytes()));
        let sources = last.cut().expect("the cut's header").sources;
        assert_eq!(sources.len(), 1, "{sources:?}");
        assert_eq!(sources[0].0, "hit_counter_dsl-by-user-repartition");
    }
    let committed: i64 = (0..4).map(|p| driver.committed("hit_count", p).unwrap_or(0)).sum();
    assert_eq!(committed, 10_000);

    // The same input through the agents gives the same table.
    let mut agents = TestDriver::with_partitions(hit_counter::app(), &[("hit_count", 4)]).expect("driver");
    for record in &records {
        agents.pipe_raw("hit_count", None, Some(record.to_string().as_bytes()));
    }
    agents.run().await.expect("run");
    assert_eq!(agents.table(&hit_counter::MAJOR_COUNT).expect("table"), expected);
}

/// Word count by hand, as the example defines it.
fn count_words(lines: &[&str]) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for line in lines {
        for word in word_count::words(line) {
            *counts.entry(word).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_counts_words_and_sends_every_change() {
    let lines = [
        "To be, or not to be: that is the question.",
        "Whether 'tis nobler in the mind to suffer",
        "ÉTÉ été Été — 2024 et 2024!",
        "",
    ];
    let mut driver = TestDriver::with_partitions(word_count::app(), &[("text-lines", 3)]).expect("driver");
    for line in lines {
        driver.pipe_raw("text-lines", Some(b"ignored key"), Some(line.as_bytes()));
    }
    driver.pipe_raw("text-lines", None, Some(&[0xff, 0xfe, b'a']));
    driver.run().await.expect("run");

    let expected = count_words(&lines);
    assert_eq!(expected["to"], 3);
    assert_eq!(expected["été"], 3);
    assert_eq!(driver.table(&word_count::WORD_COUNTS_STORE).expect("table"), expected);
    // Every change went to word-counts: the last record of each word is its count.
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for (word, count) in driver.records(&word_count::WORD_COUNTS).expect("word-counts") {
        last.insert(word, count);
    }
    assert_eq!(last, expected);
    let raw = driver.raw_records("word-counts");
    assert!(raw
        .iter()
        .all(|r| r.value.as_deref().is_some_and(|v| v.iter().all(u8::is_ascii_digit))));
    // The line that is not UTF-8 is a dead letter, named by its topic and offset.
    let dead = driver.raw_records("word_count-words-dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0]
        .header("streams.dlq.error")
        .is_some_and(|e| e.contains("not UTF-8")));
    assert_eq!(dead[0].header("streams.dlq.topic"), Some("text-lines"));
    assert_eq!(dead[0].header("streams.dlq.agent"), Some("words/text-lines"));

    // More lines later: the counts go on from the table.
    driver.pipe_raw("text-lines", None, Some(b"to be continued"));
    driver.run().await.expect("run");
    let table = driver.table(&word_count::WORD_COUNTS_STORE).expect("table");
    assert_eq!((table["to"], table["be"], table["continued"]), (4, 3, 1));
}

#[record]
#[derive(Debug, Clone, PartialEq)]
struct Order {
    id: u32,
    customer: String,
    amount: i64,
}

const ORDERS: Topic<String, Order> = Topic::new("orders").partitions(2);
const REFUNDS: Topic<String, Order> = Topic::new("refunds").partitions(2);
const BIG: Topic<String, Order> = Topic::new("big-orders");
const SMALL: Topic<String, Order> = Topic::new("small-orders");
const TOTALS: Topic<String, i64> = Topic::new("totals");
const ITEMS: Topic<u32, String> = Topic::new("order-items").utf8_values();
const TOTAL_PER_CUSTOMER: Table<String, i64> = Table::new("total-per-customer");
const LARGEST: Table<String, Order> = Table::with_default("largest-order", || Order {
    id: 0,
    customer: String::new(),
    amount: 0,
});
const ORDER_COUNT: Table<String, i64> = Table::new("orders-per-customer");

fn order(id: u32, customer: &str, amount: i64) -> Order {
    Order {
        id,
        customer: customer.into(),
        amount,
    }
}

static PEEKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static FOR_EACH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One pipeline that uses every stateless operation and every aggregation.
fn shop() -> App {
    App::new("shop").pipeline("orders", |builder| {
        let orders = builder
            .stream(ORDERS)
            .merge(builder.stream(REFUNDS).map_values(|_, refund| Order {
                amount: -refund.amount,
                ..refund
            }))
            .peek(|_, _| {
                PEEKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .named("all-orders");
        // Used three times: its records are copied.
        orders
            .clone()
            .filter_not(|_, order| order.amount == 0)
            .split("size")
            .branch("big", |_, order| order.amount >= 100, |big| big.to(BIG))
            .default_branch("small", |small| small.to(SMALL));
        orders
            .clone()
            .flat_map(|_, order| {
                (0..order.id % 3).map(move |n| (order.id * 10 + n, format!("item {n} of order {}", order.id)))
            })
            .to(ITEMS);
        orders.clone().for_each(|_, _| {
            FOR_EACH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let by_customer = orders
            .select_key(|_, order| order.customer.clone())
            .repartition("by-customer");
        by_customer
            .clone()
            .map_values(|_, order| order.amount)
            .group_by_key()
            .reduce(TOTAL_PER_CUSTOMER, |total, amount| total + amount)
            .to_stream()
            .filter(|_, total| *total != 0)
            .to(TOTALS);
        by_customer.clone().group_by_key().aggregate(
            LARGEST,
            || order(0, "", i64::MIN),
            |_, order, largest| if order.amount > largest.amount { order } else { largest },
        );
        by_customer
            .flat_map_values(|_, order| if order.amount > 0 { vec![order] } else { vec![] })
            .group_by_key()
            .count(ORDER_COUNT);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation() {
    let mut driver = TestDriver::new(shop()).expect("driver");
    let orders = [
        order(1, "ann", 250),
        order(2, "bob", 40),
        order(3, "ann", 60),
        order(4, "cid", 0),
        order(5, "bob", 500),
    ];
    for o in &orders {
        driver.pipe(&ORDERS, &format!("order-{}", o.id), o).expect("pipe");
    }
    driver.pipe(&REFUNDS, "refund-1", &order(6, "ann", 60)).expect("pipe");
    driver.run().await.expect("run");

    // merge + map_values: 6 records passed peek and for_each.
    assert_eq!(PEEKED.load(std::sync::atomic::Ordering::Relaxed), 6);
    assert_eq!(FOR_EACH.load(std::sync::atomic::Ordering::Relaxed), 6);
    // filter_not + split: the zero order is dropped, the refund (-60) is small.
    let ids = |topic: &Topic<String, Order>| -> Vec<u32> {
        let mut ids: Vec<u32> = driver
            .records(topic)
            .expect("records")
            .into_iter()
            .map(|(_, o)| o.id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&BIG), vec![1, 5]);
    assert_eq!(ids(&SMALL), vec![2, 3, 6]);
    // flat_map: order n gives n % 3 items, keyed by u32, values UTF-8 text.
    let items = driver.records(&ITEMS).expect("items");
    assert_eq!(items.len(), 6, "1 + 2 + 0 + 1 + 2 items for orders 1..5");
    assert!(items.contains(&(51, "item 1 of order 5".to_string())));
    assert_eq!(
        driver.raw_records("order-items")[0]
            .value
            .as_deref()
            .map(|v| v.starts_with(b"item")),
        Some(true)
    );
    // repartition + reduce + to_stream + filter: totals per customer.
    let totals: BTreeMap<String, i64> = driver.table(&TOTAL_PER_CUSTOMER).expect("table");
    assert_eq!(
        totals,
        BTreeMap::from([("ann".into(), 250), ("bob".into(), 540), ("cid".into(), 0)])
    );
    let sent: BTreeMap<String, i64> = driver.records(&TOTALS).expect("totals").into_iter().collect();
    assert_eq!(sent, BTreeMap::from([("ann".into(), 250), ("bob".into(), 540)]));
    // aggregate: the largest order per customer.
    let largest = driver.table(&LARGEST).expect("table");
    assert_eq!((largest["ann"].id, largest["bob"].id, largest["cid"].id), (1, 5, 4));
    // flat_map_values + count.
    let counts = driver.table(&ORDER_COUNT).expect("table");
    assert_eq!(counts, BTreeMap::from([("ann".into(), 2), ("bob".into(), 2)]));
    // Output records carry the time of the input that caused them.
    driver.advance_time(std::time::Duration::from_secs(60));
    driver.pipe(&ORDERS, "order-7", &order(7, "dan", 1000)).expect("pipe");
    driver.run().await.expect("run");
    let big = driver.raw_records("big-orders");
    let last = big.iter().max_by_key(|r| r.timestamp).expect("big orders");
    assert_eq!(last.timestamp, 60_000);
    let repartitioned = driver.raw_records("shop-by-customer-repartition");
    assert!(repartitioned.iter().any(|r| r.timestamp == 60_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_splits_at_repartition_topics() {
    let app = shop();
    let pipeline = &app.pipelines()[0];
    assert_eq!(pipeline.tasks.len(), 2);
    let names: Vec<&str> = pipeline.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["orders/orders", "orders/by-customer"]);
    let sources: Vec<Vec<&str>> = pipeline
        .tasks
        .iter()
        .map(|t| t.sources.iter().map(|s| &*s.name).collect())
        .collect();
    assert_eq!(
        sources,
        vec![vec!["orders", "refunds"], vec!["shop-by-customer-repartition"]]
    );
    let text = app.topology().text();
    for line in [
        "pipeline orders",
        "sub-topology orders/orders",
        "reads topic `orders`",
        "reads topic `refunds`",
        "all-orders",
        "size-big",
        "sends to topic `shop-by-customer-repartition`",
        "sub-topology orders/by-customer",
        "table `total-per-customer` (changelog `shop-total-per-customer-changelog`)",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let mermaid = app.topology().mermaid();
    assert!(mermaid.contains("subgraph"), "{mermaid}");
    assert!(app.topology().dot().contains("cluster_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_that_panics_sends_its_record_to_the_dead_letter_topic() {
    const NUMBERS: Topic<String, i64> = Topic::new("numbers").partitions(1);
    const INVERSES: Topic<String, i64> = Topic::new("inverses");
    let app = App::new("math").pipeline("inverse", |builder| {
        builder.stream(NUMBERS).map_values(|_, n| 1000 / n).to(INVERSES);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    for n in [4, 0, 8] {
        driver.pipe(&NUMBERS, "n", &n).expect("pipe");
    }
    driver.pipe_raw("numbers", Some(b"n"), Some(b"not a number"));
    driver.run().await.expect("run");
    let inverses: Vec<i64> = driver
        .records(&INVERSES)
        .expect("records")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(inverses, vec![250, 125]);
    let dead = driver.raw_records("math-inverse-dlq");
    let errors: Vec<&str> = dead.iter().filter_map(|r| r.header("streams.dlq.error")).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("panic") && errors[0].contains("divide by zero"),
        "{errors:?}"
    );
    assert!(errors[1].contains("invalid JSON"), "{errors:?}");
    assert_eq!(driver.committed("numbers", 0), Some(4));
}

const USERS: Topic<String, String> = Topic::new("user-names").partitions(2);
const NAMES: Table<String, String> = Table::new("names");
const RENAMES: Topic<String, String> = Topic::new("renames");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_read_as_a_table_keeps_the_latest_value_and_deletes_on_tombstones() {
    let app = App::new("directory").pipeline("names", |builder| {
        builder.table(USERS, NAMES).to_stream().to(RENAMES);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe(&USERS, "u1", &"Ann".to_string()).expect("pipe");
    driver.pipe(&USERS, "u2", &"Bob".to_string()).expect("pipe");
    driver.pipe(&USERS, "u1", &"Anna".to_string()).expect("pipe");
    driver.pipe_raw("user-names", Some(b"u2"), None);
    driver.run().await.expect("run");
    let names = driver.table(&NAMES).expect("table");
    assert_eq!(names, BTreeMap::from([("u1".into(), "Anna".into())]));
    // Changes coalesced per key within a commit interval: one record for u1, none for the
    // deleted u2.
    let renames = driver.records(&RENAMES).expect("records");
    assert_eq!(renames, vec![("u1".to_string(), "Anna".to_string())]);
}

const NAMES_COPY: Topic<String, String> = Topic::new("user-names-copy").partitions(1);

/// `KTable::to` sends the table's changes with deletions as tombstones: a copy of the topic,
/// compacted, is the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_sent_to_a_topic_sends_deletions_as_tombstones() {
    let app = App::new("directory").pipeline("names", |builder| {
        builder.table(USERS, NAMES).to(NAMES_COPY);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe(&USERS, "u1", &"Ann".to_string()).expect("pipe");
    driver.pipe(&USERS, "u2", &"Bob".to_string()).expect("pipe");
    driver.run().await.expect("run");
    driver.pipe_raw("user-names", Some(b"u2"), None);
    driver.pipe(&USERS, "u1", &"Anna".to_string()).expect("pipe");
    driver.run().await.expect("run");
    let mut copy: Vec<(String, Option<String>)> = driver
        .raw_records("user-names-copy")
        .into_iter()
        .map(|r| {
            let key = String::from_utf8(r.key.unwrap_or_default()).expect("utf8");
            let value = r.value.map(|v| serde_json::from_slice::<String>(&v).expect("json"));
            (key, value)
        })
        .collect();
    copy[..2].sort();
    copy[2..].sort();
    assert_eq!(
        copy,
        vec![
            ("u1".to_string(), Some("Ann".to_string())),
            ("u2".to_string(), Some("Bob".to_string())),
            ("u1".to_string(), Some("Anna".to_string())),
            ("u2".to_string(), None),
        ]
    );
}

/// Names become topic and node names: a repartition name a topic cannot have, or two
/// operations of one name, are refused at start.
#[test]
fn bad_or_repeated_names_are_refused() {
    let bad = App::new("bad").pipeline("p", |builder| {
        builder
            .stream(ORDERS)
            .group_by("by customer!", |_, o| o.customer.clone())
            .count(ORDER_COUNT);
    });
    let error = bad.validate().expect_err("bad name").to_string();
    assert!(error.contains("repartition name `by customer!`"), "{error}");
    let twice = App::new("twice").pipeline("p", |builder| {
        let orders = builder.stream(ORDERS);
        orders.clone().filter(|_, o| o.amount > 0).named("keep").to(BIG);
        orders.filter(|_, o| o.amount < 0).named("keep").to(SMALL);
    });
    let error = twice.validate().expect_err("named twice").to_string();
    assert!(error.contains("names two operations `keep`"), "{error}");
}

const RAW_IN: Topic<Vec<u8>, Vec<u8>> = Topic::new("raw-in").partitions(1).values(ValueCodec::bytes());
const RAW_OUT: Topic<Vec<u8>, Vec<u8>> = Topic::new("raw-out").values(ValueCodec::bytes());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bytes_pass_unchanged() {
    let app = App::new("bytes").pipeline("copy", |builder| {
        builder
            .stream(RAW_IN)
            .map_values(|_, mut bytes| {
                bytes.reverse();
                bytes
            })
            .to(RAW_OUT);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe_raw("raw-in", Some(&[0, 255]), Some(&[1, 2, 0xff]));
    driver.run().await.expect("run");
    let out = driver.raw_records("raw-out");
    assert_eq!(out[0].key.as_deref(), Some([0u8, 255].as_slice()));
    assert_eq!(out[0].value.as_deref(), Some([0xffu8, 2, 1].as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_and_agents_in_one_app() {
    let app = hit_counter::app().pipeline("long-words", |builder| {
        builder
            .stream(word_count::TEXT_LINES)
            .flat_map_values(|_, line| word_count::words(&line))
            .filter(|_, word| word.chars().count() > 6)
            .group_by("long-words", |_, word| word.clone())
            .count(word_count::WORD_COUNTS_STORE);
    });
    let mut driver = TestDriver::with_partitions(app, &[("hit_count", 2), ("text-lines", 2)]).expect("driver");
    driver
        .pipe(
            &hit_counter::HIT_COUNT,
            &(),
            &hit_counter::HitCount {
                hits: 30,
                timestamp: 1.0,
                user_id: "ann".into(),
            },
        )
        .expect("pipe");
    driver.pipe_raw("text-lines", None, Some(b"wonderful wonderful day"));
    driver.run().await.expect("run");
    assert_eq!(driver.table(&hit_counter::MAJOR_COUNT).expect("table")["ann"], 1);
    assert_eq!(
        driver.table(&word_count::WORD_COUNTS_STORE).expect("table"),
        BTreeMap::from([("wonderful".into(), 2)])
    );
}

#[test]
fn a_topic_read_twice_or_a_table_kept_twice_is_refused() {
    let twice = App::new("twice").pipeline("p", |builder| {
        builder.stream(ORDERS).to(BIG);
        builder.stream(ORDERS).to(SMALL);
    });
    let error = twice.validate().expect_err("read twice").to_string();
    assert!(error.contains("reads topic `orders` twice"), "{error}");
    let kept = App::new("kept").pipeline("p", |builder| {
        let by_key = builder.stream(ORDERS).map_values(|_, o| o.amount).group_by_key();
        by_key.count(ORDER_COUNT);
        builder
            .stream(REFUNDS)
            .map_values(|_, o| o.amount)
            .group_by_key()
            .count(ORDER_COUNT);
    });
    let error = kept.validate().expect_err("kept twice").to_string();
    assert!(error.contains("keeps table `orders-per-customer` twice"), "{error}");
}

const READINGS: Topic<String, i64> = Topic::new("readings").partitions(1);
const SCALED: Topic<String, i64> = Topic::new("scaled");
const COPIED: Topic<String, i64> = Topic::new("copied");
const POSITIVE: Topic<String, i64> = Topic::new("positive");
const PER_SENSOR: Table<String, i64> = Table::new("per-sensor");
const PER_LABEL: Table<Option<String>, i64> = Table::new("per-label");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_branch_does_not_keep_a_record_from_the_others() {
    let app = App::new("sensors").pipeline("scale", |builder| {
        let readings = builder.stream(READINGS);
        // First child panics on 0; the second must still get every record.
        readings.clone().map_values(|_, n| 1000 / n).to(SCALED);
        readings.to(COPIED);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    for n in [5, 0, 10] {
        driver.pipe(&READINGS, "s1", &n).expect("pipe");
    }
    driver.run().await.expect("run");
    let values = |topic| -> Vec<i64> {
        driver
            .records(topic)
            .expect("records")
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    };
    assert_eq!(values(&SCALED), vec![200, 100]);
    assert_eq!(
        values(&COPIED),
        vec![5, 0, 10],
        "the copy is not held back by the panic"
    );
    let dead = driver.raw_records("sensors-scale-dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].header("streams.dlq.offset"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_split_without_default_and_group_by_key_without_repartition() {
    let app = App::new("sensors").pipeline("split", |builder| {
        let readings = builder.stream(READINGS);
        readings
            .clone()
            .split("sign")
            .branch("positive", |_, n| *n > 0, |s| s.to(POSITIVE))
            .no_default_branch();
        // Grouped by the key the topic is partitioned by: no repartition topic.
        readings.clone().group_by_key().reduce(PER_SENSOR, |a, b| a + b);
        // A key change that may give no key: such records cannot be counted.
        readings
            .map(|sensor, n| ((n != 0).then(|| format!("{sensor}-{}", n.signum())), n))
            .repartition("by-label")
            .group_by_key()
            .count(PER_LABEL);
    });
    assert_eq!(app.pipelines()[0].tasks.len(), 2, "one repartition topic only");
    let mut driver = TestDriver::new(app).expect("driver");
    for (sensor, n) in [("a", 3), ("a", -1), ("b", 0), ("b", 7), ("a", 2)] {
        driver.pipe(&READINGS, sensor, &n).expect("pipe");
    }
    driver.run().await.expect("run");
    let positive: Vec<(String, i64)> = driver.records(&POSITIVE).expect("records");
    assert_eq!(
        positive,
        vec![("a".into(), 3), ("b".into(), 7), ("a".into(), 2)],
        "non-positive readings are dropped"
    );
    assert_eq!(
        driver.table(&PER_SENSOR).expect("table"),
        BTreeMap::from([("a".into(), 4), ("b".into(), 7)])
    );
    assert_eq!(
        driver.table(&PER_LABEL).expect("table"),
        BTreeMap::from([
            (Some("a-1".into()), 2),
            (Some("a--1".into()), 1),
            (Some("b-1".into()), 1)
        ])
    );
    // The keyless record (b, 0) is kept in the dead-letter topic, not counted under no key.
    let dead = driver.raw_records("sensors-split-dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0].header("streams.dlq.topic"),
        Some("sensors-by-label-repartition")
    );
    assert!(dead[0]
        .header("streams.dlq.error")
        .is_some_and(|e| e.contains("without a key") && e.contains("per-label")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_fails_after_to_stream_goes_to_the_dead_letter_topic() {
    let app = App::new("sensors").pipeline("totals", |builder| {
        builder
            .stream(READINGS)
            .group_by_key()
            .reduce(PER_SENSOR, |a, b| a + b)
            .to_stream()
            .map_values(|sensor, total| {
                assert!(sensor != "bad", "no totals for bad sensors");
                total
            })
            .to(SCALED);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    driver.pipe(&READINGS, "good", &1).expect("pipe");
    driver.pipe(&READINGS, "bad", &2).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(driver.records(&SCALED).expect("records"), vec![("good".to_string(), 1)]);
    let dead = driver.raw_records("sensors-totals-dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].key.as_deref(), Some(b"bad".as_slice()));
    assert_eq!(dead[0].value.as_deref(), Some(b"2".as_slice()), "the table's value");
    assert_eq!(dead[0].header("streams.dlq.table"), Some("per-sensor"));
    assert!(dead[0]
        .header("streams.dlq.error")
        .is_some_and(|e| e.contains("no totals for bad sensors")));
    assert_eq!(
        driver
            .metrics()
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The table itself is unaffected.
    assert_eq!(driver.table(&PER_SENSOR).expect("table")["bad"], 2);
}

mod co_partitioning {
    use std::collections::HashMap;

    use streams_core::prelude::*;

    #[record]
    #[derive(Clone)]
    struct Visit {
        user: String,
        customer: String,
    }

    const VISITS: Topic<String, Visit> = Topic::new("visits");
    const USERS: Topic<String, String> = Topic::new("users");
    const USERS_STORE: Table<String, String> = Table::new("users-store");
    const CUSTOMERS: Topic<String, String> = Topic::new("customers");
    const CUSTOMERS_STORE: Table<String, String> = Table::new("customers-store");
    const VISITS_BY_CUSTOMER: Table<String, i64> = Table::new("visits-by-customer");
    const NAMED: Table<String, String> = Table::new("named");
    const SEEN: Topic<String, String> = Topic::new("seen");

    fn partitions(app: &App, existing: &[(&str, i32)], topic: &str) -> i32 {
        let existing: HashMap<String, i32> = existing.iter().map(|(t, p)| (t.to_string(), *p)).collect();
        let plan = app.plan(&existing).unwrap_or_else(|e| panic!("{e}"));
        plan.iter()
            .find(|t| t.name == topic)
            .unwrap_or_else(|| panic!("{topic} in the plan"))
            .partitions
    }

    /// A re-keyed stream joined with a table of another partition count: its repartition
    /// topic is sized like the table's topic (as Kafka Streams does), not like its source.
    #[test]
    fn a_repartition_topic_is_sized_like_the_topics_it_is_joined_with() {
        let app = App::new("shop").pipeline("p", |builder| {
            let users = builder.table(USERS, USERS_STORE);
            builder
                .stream(VISITS)
                .select_key(|_, visit| visit.user.clone())
                .repartition("by-user")
                .join(&users, |_, visit, name| format!("{} {name}", visit.customer))
                .to(SEEN);
        });
        let existing = [("visits", 3), ("users", 8)];
        assert_eq!(partitions(&app, &existing, "shop-by-user-repartition"), 8);
        // Alone, it keeps its source's count.
        let alone = App::new("shop").pipeline("p", |builder| {
            builder
                .stream(VISITS)
                .group_by("by-user", |_, visit| visit.user.clone())
                .count(VISITS_BY_CUSTOMER);
        });
        assert_eq!(partitions(&alone, &existing, "shop-by-user-repartition"), 3);
    }

    /// A foreign-key join on an aggregated table: its response topic is partitioned like the
    /// repartition topic the table is read from, which is partitioned like its source — no
    /// loop between them.
    #[test]
    fn a_foreign_key_join_on_an_aggregated_table_plans() {
        let app = App::new("shop").pipeline("p", |builder| {
            let customers = builder.table(CUSTOMERS, CUSTOMERS_STORE);
            builder
                .stream(VISITS)
                .group_by("by-customer", |_, visit| visit.customer.clone())
                .count(VISITS_BY_CUSTOMER)
                .join_foreign(
                    &customers,
                    "visit-customer",
                    |_| Some("c".to_string()),
                    NAMED,
                    |_, n, name| format!("{name}: {n}"),
                );
        });
        let existing = [("visits", 3), ("customers", 2)];
        assert_eq!(partitions(&app, &existing, "shop-by-customer-repartition"), 3);
        assert_eq!(
            partitions(&app, &existing, "shop-visit-customer-subscription-response-topic"),
            3
        );
        assert_eq!(
            partitions(&app, &existing, "shop-visit-customer-subscription-registration-topic"),
            2
        );
    }
}

/// `process_values` keeps the keys: the stream is still partitioned by them, so
/// `group_by_key` reads it in the same task (no repartition topic), and what the processor
/// forwards when it punctuates goes under keys it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_values_keeps_keys_and_punctuates_under_kept_ones() {
    use std::collections::BTreeMap;
    use streams_core::dsl::{ForwardKept, ForwardValues, Kept, ValueProcessor};

    /// Forwards each running total at once, and every key's total again each 100 ms of
    /// stream time, as a negative number (to tell the two apart).
    #[derive(Default)]
    struct Totals(BTreeMap<String, (Kept<String>, i64)>);

    impl ValueProcessor<String, i64> for Totals {
        type Value = i64;
        fn process(&mut self, key: &String, value: i64, out: &mut ForwardValues<'_, '_, '_, String, i64>) {
            let kept = out.keep();
            let total = self.0.entry(key.clone()).or_insert((kept, 0));
            total.1 += value;
            out.forward(total.1);
        }
        fn punctuation(&self) -> Option<std::time::Duration> {
            Some(std::time::Duration::from_millis(100))
        }
        fn punctuate(&mut self, _: i64, out: &mut ForwardKept<'_, '_, '_, String, i64>) {
            for (kept, total) in self.0.values() {
                out.forward(kept, -total);
            }
        }
    }

    const AMOUNTS: Topic<String, i64> = Topic::new("amounts").partitions(1);
    const SEEN: Table<String, i64> = Table::new("totals-seen");
    const TOTALS: Topic<String, i64> = Topic::new("totals");
    let app = App::new("totals").pipeline("totals", |builder| {
        let totals = builder.stream(AMOUNTS).process_values("totals", Totals::default);
        totals.clone().to(TOTALS);
        totals.group_by_key().count(SEEN);
    });
    assert_eq!(app.tasks().len(), 1, "no repartition topic");
    let mut driver = TestDriver::new(app).expect("driver");
    for (key, amount, time) in [("a", 5, 1_000), ("b", 1, 1_020), ("a", 2, 1_050), ("b", 3, 1_130)] {
        driver.pipe_at(&AMOUNTS, key, &amount, time).expect("pipe");
        driver.run().await.expect("run");
    }
    // The totals as processed; at 1130 stream time passed 1100: every kept key's total again.
    let sent: Vec<(String, i64)> = driver.records(&TOTALS).expect("records");
    let expected: Vec<(String, i64)> = [("a", 5), ("b", 1), ("a", 7), ("b", 4), ("a", -7), ("b", -4)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(sent, expected);
    let counts = driver.table(&SEEN).expect("table");
    assert_eq!(counts, BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 3)]));
}

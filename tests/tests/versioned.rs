//! Versioned tables and timestamped stream–table joins (KIP-889/914/923) through the test
//! driver, against a reference model of Kafka Streams' semantics: a versioned table of
//! prices (updates out of order, deletions, some older than the history), orders joined with
//! it without and with a grace period, and the table's own changes. Generated inputs (hot
//! keys, times out of order), history and grace periods, partition counts, cache budgets
//! (the default, zero and 200 bytes) and partition moves (the history, the buffer and both
//! stream times are restored).

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use streams_core::prelude::*;
use streams_core::testing::{kafka_partition, TestDriver};

const PRICES: Topic<String, i64> = Topic::new("prices");
const PRICE_STORE: Table<String, i64> = Table::new("prices-store");
const ORDERS: Topic<String, i64> = Topic::new("orders");
/// One partition each: what every task sends, in the order each sent it.
const JOINED: Topic<String, String> = Topic::new("orders-joined").partitions(1);
const GRACED: Topic<String, String> = Topic::new("orders-graced").partitions(1);
const CHANGES: Topic<String, i64> = Topic::new("price-changes").partitions(1);

fn app(history_ms: u64, grace_ms: u64, cache_bytes: Option<usize>) -> App {
    let mut app = App::new("versioned-test");
    if let Some(bytes) = cache_bytes {
        app = app.table_cache_bytes(bytes);
    }
    app.pipeline("priced", move |builder| {
        let prices = builder.versioned_table(PRICES, PRICE_STORE, Duration::from_millis(history_ms));
        let orders = builder.stream(ORDERS);
        orders
            .clone()
            .join(&prices, |_, quantity, price| format!("{quantity}x{price}"))
            .to(JOINED);
        orders
            .left_join_with_grace(
                &prices,
                "priced",
                Duration::from_millis(grace_ms),
                |_, quantity, price| format!("{quantity}x{price:?}"),
            )
            .to(GRACED);
        prices.into_table().to_stream().to(CHANGES);
    })
}

/// An input record: a price (`Some` value, or `None` to delete) or an order.
#[derive(Debug, Clone)]
enum Event {
    Price(String, i64, Option<i64>),
    Order(String, i64, i64),
}

impl Event {
    fn key(&self) -> &str {
        match self {
            Event::Price(key, _, _) | Event::Order(key, _, _) => key,
        }
    }
}

/// What went to a topic: key, value, time.
type Sent = (String, String, i64);

/// One partition of Kafka Streams' versioned table and joins, as a model.
#[derive(Default)]
struct Model {
    versions: BTreeMap<String, BTreeMap<i64, Option<i64>>>,
    /// The table's stream time (the latest time put into it).
    table_time: Option<i64>,
    /// The grace join's stream time, and its buffer by time, key and arrival (Kafka Streams'
    /// time-ordered buffer keys its records by time, key bytes and a sequence number).
    join_time: Option<i64>,
    buffer: BTreeMap<(i64, String, usize), i64>,
    arrivals: usize,
    joined: Vec<Sent>,
    graced: Vec<Sent>,
    changes: Vec<Sent>,
}

impl Model {
    fn as_of(&self, key: &str, time: i64, history: i64) -> Option<i64> {
        if self.table_time.is_some_and(|now| time < now - history) {
            return None;
        }
        self.versions
            .get(key)
            .and_then(|versions| versions.range(..=time).next_back())
            .and_then(|(_, value)| *value)
    }

    fn take(&mut self, event: &Event, history: i64, grace: i64) {
        match event {
            Event::Price(key, time, value) => {
                let now = self.table_time.map_or(*time, |t| t.max(*time));
                self.table_time = Some(now);
                if *time < now - history {
                    return;
                }
                let versions = self.versions.entry(key.clone()).or_default();
                let latest = versions.keys().next_back().is_none_or(|last| time >= last);
                versions.insert(*time, *value);
                if let (true, Some(value)) = (latest, value) {
                    self.changes.push((key.clone(), value.to_string(), *time));
                }
            }
            Event::Order(key, time, quantity) => {
                if let Some(price) = self.as_of(key, *time, history) {
                    self.joined.push((key.clone(), format!("{quantity}x{price}"), *time));
                }
                let now = self.join_time.map_or(*time, |t| t.max(*time));
                self.join_time = Some(now);
                if *time < now - grace {
                    let price = self.as_of(key, *time, history);
                    self.graced.push((key.clone(), format!("{quantity}x{price:?}"), *time));
                } else {
                    self.buffer.insert((*time, key.clone(), self.arrivals), *quantity);
                    self.arrivals += 1;
                }
                while let Some(entry) = self.buffer.first_entry() {
                    if entry.key().0 > now - grace {
                        break;
                    }
                    let ((due, key, _), quantity) = entry.remove_entry();
                    let price = self.as_of(&key, due, history);
                    self.graced.push((key, format!("{quantity}x{price:?}"), due));
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Event(Event),
    /// A partition (of both inputs) moves to worker `worker-{n}`.
    Move(i32, u8),
}

#[derive(Debug, Clone)]
struct Knobs {
    partitions: i32,
    history_ms: u64,
    grace_ms: u64,
    cache_bytes: Option<usize>,
}

fn run(steps: &[Step], knobs: &Knobs) -> Result<(), TestCaseError> {
    let partitions = knobs.partitions;
    let (history, grace) = (knobs.history_ms as i64, knobs.grace_ms as i64);
    let run = async {
        let app = app(knobs.history_ms, knobs.grace_ms, knobs.cache_bytes);
        let existing = [
            ("prices", partitions),
            ("orders", partitions),
            ("orders-joined", 1),
            ("orders-graced", 1),
            ("price-changes", 1),
        ];
        let mut driver = TestDriver::with_partitions(app, &existing).expect("driver");
        let mut models: Vec<Model> = (0..partitions).map(|_| Model::default()).collect();
        for step in steps {
            match step {
                Step::Event(event) => {
                    match event {
                        Event::Price(key, time, Some(price)) => driver.pipe_at(&PRICES, key, price, *time).map(|_| ()),
                        Event::Price(key, time, None) => {
                            driver.pipe_raw_at("prices", Some(key.as_bytes()), None, *time);
                            Ok(())
                        }
                        Event::Order(key, time, quantity) => driver.pipe_at(&ORDERS, key, quantity, *time).map(|_| ()),
                    }
                    .expect("pipe");
                    driver.run().await.expect("run");
                    let partition = kafka_partition(event.key().as_bytes(), partitions) as usize;
                    models[partition].take(event, history, grace);
                }
                Step::Move(partition, owner) => {
                    let partition = partition % partitions;
                    for topic in ["prices", "orders"] {
                        driver
                            .move_partition(topic, partition, &format!("worker-{owner}"))
                            .await
                            .expect("move");
                    }
                }
            }
        }
        driver.run().await.expect("run");
        for (topic, pick) in [("orders-joined", 0usize), ("orders-graced", 1), ("price-changes", 2)] {
            let mut sent: Vec<Vec<Sent>> = vec![Vec::new(); partitions as usize];
            for record in driver.raw_records(topic) {
                let key = String::from_utf8(record.key.unwrap_or_default()).expect("key");
                let value: serde_json::Value =
                    serde_json::from_slice(&record.value.unwrap_or_default()).expect("value");
                let value = match value {
                    serde_json::Value::String(text) => text,
                    other => other.to_string(),
                };
                let partition = kafka_partition(key.as_bytes(), partitions) as usize;
                sent[partition].push((key, value, record.timestamp));
            }
            for (partition, model) in models.iter().enumerate() {
                let expected = match pick {
                    0 => &model.joined,
                    1 => &model.graced,
                    _ => &model.changes,
                };
                prop_assert_eq!(&sent[partition], expected, "{} of partition {}", topic, partition);
            }
        }
        // The table holds each key's latest value by time.
        let table = driver.table(&PRICE_STORE).expect("table");
        let mut latest = BTreeMap::new();
        for model in &models {
            for (key, versions) in &model.versions {
                if let Some((_, Some(value))) = versions.iter().next_back() {
                    latest.insert(key.clone(), *value);
                }
            }
        }
        prop_assert_eq!(table, latest, "the table's latest values");
        Ok(())
    };
    streams_tests::run_case(Duration::from_secs(20), run)
        .ok_or_else(|| TestCaseError::fail("the driver did not finish within 20 s"))?
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    // Hot keys (k0 most of the time); times moving forward, some out of order.
    let key = prop_oneof![3 => Just(0u8), 2 => 1u8..4].prop_map(|k| format!("k{k}"));
    let step = prop_oneof![
        4 => (key.clone(), -60i64..80, proptest::option::weighted(0.85, 1i64..9))
            .prop_map(|(key, step, price)| (0u8, key, step, price.unwrap_or(0), price.is_some())),
        4 => (key, -60i64..80, 1i64..5).prop_map(|(key, step, quantity)| (1u8, key, step, quantity, true)),
        1 => (0i32..3, 1u8..4).prop_map(|(partition, owner)| (2u8, format!("{partition}"), i64::from(owner), 0, true)),
    ];
    proptest::collection::vec(step, 1..40).prop_map(|raw| {
        let mut clock = 1_000i64;
        raw.into_iter()
            .map(|(kind, key, step, value, present)| match kind {
                0 | 1 => {
                    clock += step.max(0) / 4;
                    let time = clock + step.min(0);
                    Step::Event(if kind == 0 {
                        Event::Price(key, time, present.then_some(value))
                    } else {
                        Event::Order(key, time, value)
                    })
                }
                _ => Step::Move(key.parse().unwrap_or(0), step as u8),
            })
            .collect()
    })
}

fn case() -> impl Strategy<Value = (Knobs, Vec<Step>)> {
    (
        1i32..3,
        prop_oneof![Just(0u64), Just(30), Just(120), Just(100_000)],
        0u64..=2,
        prop_oneof![Just(None), Just(Some(0usize)), Just(Some(200))],
    )
        .prop_map(|(partitions, history_ms, grace_part, cache_bytes)| Knobs {
            partitions,
            history_ms,
            // None, half or all of the history (a grace period past it is refused).
            grace_ms: history_ms.min(1_000) * grace_part / 2,
            cache_bytes,
        })
        .prop_flat_map(|knobs| (Just(knobs), steps()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The table, the plain and the grace-period joins and the table's changes are what
    /// Kafka Streams sends for the same input: each order meets the price of its own time
    /// (none past the history), orders held for the grace period go on in time order, and
    /// updates out of order change nothing downstream — across moves and cache budgets.
    #[test]
    fn versioned_tables_and_their_joins_agree_with_kafka_streams((knobs, steps) in case()) {
        run(&steps, &knobs)?;
    }
}

/// The example of KIP-914, by hand: an order meets the price of its own time, even when
/// the price changed since; an update out of order goes into the history only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_meets_the_price_of_its_time() {
    let mut driver = TestDriver::new(app(10_000, 0, None)).expect("driver");
    let apple = "apple".to_string();
    for (price, time) in [(3, 1_000), (5, 2_000)] {
        driver.pipe_at(&PRICES, &apple, &price, time).expect("pipe");
        driver.run().await.expect("run");
    }
    // Out of order: the price from 1 500 on was 4; the table's latest stays 5.
    driver.pipe_at(&PRICES, &apple, &4, 1_500).expect("pipe");
    driver.run().await.expect("run");
    for time in [1_200, 1_700, 2_100, 900] {
        driver.pipe_at(&ORDERS, &apple, &2, time).expect("pipe");
        driver.run().await.expect("run");
    }
    let joined: Vec<String> = driver
        .records(&JOINED)
        .expect("records")
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    assert_eq!(joined, vec!["2x3", "2x4", "2x5"], "nothing before the first price");
    assert_eq!(
        driver.table(&PRICE_STORE).expect("table").get("apple"),
        Some(&5),
        "the latest by time"
    );
    let changes: Vec<i64> = driver
        .records(&CHANGES)
        .expect("records")
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    assert_eq!(changes, vec![3, 5], "the update out of order went on nowhere");
}

/// KIP-923: an order waits for the grace period, so a price that arrives late, for a time
/// before the order's, is the one it meets; without a grace period it meets the older one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grace_period_lets_a_late_price_reach_an_earlier_order() {
    let mut driver = TestDriver::new(app(10_000, 100, None)).expect("driver");
    let apple = "apple".to_string();
    driver.pipe_at(&PRICES, &apple, &3, 1_000).expect("pipe");
    driver.pipe_at(&ORDERS, &apple, &2, 1_200).expect("pipe");
    driver.run().await.expect("run");
    assert!(driver.records(&GRACED).expect("records").is_empty(), "the order waits");
    // The price of 1 100 arrives after the order of 1 200.
    driver.pipe_at(&PRICES, &apple, &4, 1_100).expect("pipe");
    driver.run().await.expect("run");
    // Stream time of the join passes 1 200 + 100: the order goes on, with the late price.
    driver.pipe_at(&ORDERS, &apple, &1, 1_300).expect("pipe");
    driver.run().await.expect("run");
    let graced = driver.records(&GRACED).expect("records");
    assert_eq!(graced, vec![(apple.clone(), "2xSome(4)".to_string())]);
    let joined = driver.records(&JOINED).expect("records");
    assert_eq!(joined[0], (apple, "2x3".to_string()), "no grace: the price known then");
}

/// A record without a key meets no row: the inner join drops it, the left join with a grace
/// period sends it on at once with `None` (KIP-962), ahead of the records held back, and it
/// moves the join's stream time like any record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_without_a_key_goes_on_at_once_through_the_left_join() {
    // One partition: a record without a key may go to any.
    const PRICES_BY: Topic<Option<String>, i64> = Topic::new("prices").partitions(1);
    const STORE_BY: Table<Option<String>, i64> = Table::new("prices-store");
    const ORDERS_BY: Topic<Option<String>, i64> = Topic::new("orders").partitions(1);
    const GRACED_BY: Topic<Option<String>, String> = Topic::new("orders-graced").partitions(1);
    const JOINED_BY: Topic<Option<String>, String> = Topic::new("orders-joined").partitions(1);
    let app = App::new("versioned-test").pipeline("priced", |builder| {
        let prices = builder.versioned_table(PRICES_BY, STORE_BY, Duration::from_secs(10));
        let orders = builder.stream(ORDERS_BY);
        orders
            .clone()
            .join(&prices, |_, quantity, price| format!("{quantity}x{price}"))
            .to(JOINED_BY);
        orders
            .left_join_with_grace(&prices, "priced", Duration::from_millis(100), |_, quantity, price| {
                format!("{quantity}x{price:?}")
            })
            .to(GRACED_BY);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    let apple = Some("apple".to_string());
    driver.pipe_at(&PRICES_BY, &apple, &3, 1_000).expect("pipe");
    driver.pipe_at(&ORDERS_BY, &apple, &2, 1_100).expect("pipe");
    driver.run().await.expect("run");
    driver.pipe_at(&ORDERS_BY, &None, &7, 1_250).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(
        driver.records(&GRACED_BY).expect("records"),
        vec![(None, "7xNone".to_string()), (apple, "2xSome(3)".to_string())],
        "the keyless order at once, then the held one its time let go"
    );
    assert_eq!(
        driver.records(&JOINED_BY).expect("records").len(),
        1,
        "the inner join drops it"
    );
}

/// A held order that fails when it is joined (here the joiner panics on 13) goes to the
/// dead-letter topic on its own, as the buffer held it; the orders released with it go on,
/// and the order being processed when they were released is not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_order_that_fails_goes_to_the_dead_letter_topic_alone() {
    let app = App::new("versioned-test").pipeline("priced", |builder| {
        let prices = builder.versioned_table(PRICES, PRICE_STORE, Duration::from_secs(10));
        builder
            .stream(ORDERS)
            .join_with_grace(&prices, "priced", Duration::from_millis(100), |_, quantity, price| {
                assert_ne!(*quantity, 13, "unlucky");
                format!("{quantity}x{price:?}")
            })
            .to(GRACED);
    });
    let mut driver = TestDriver::with_partitions(app, &[("prices", 1), ("orders", 1)]).expect("driver");
    let apple = "apple".to_string();
    driver.pipe_at(&PRICES, &apple, &3, 1_000).expect("pipe");
    driver.pipe_at(&ORDERS, &apple, &13, 1_100).expect("pipe");
    driver.pipe_at(&ORDERS, &apple, &2, 1_150).expect("pipe");
    driver.run().await.expect("run");
    driver.pipe_at(&ORDERS, &apple, &1, 1_300).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(
        driver.records(&GRACED).expect("records"),
        vec![(apple, "2x3".to_string())],
        "the other held order went on; the current one waits"
    );
    let dead = driver.raw_records("versioned-test-priced-dlq");
    let dead: Vec<(Option<String>, Option<&str>)> = dead
        .iter()
        .map(|r| {
            (
                r.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                r.header("streams.dlq.table"),
            )
        })
        .collect();
    assert_eq!(dead, vec![(Some("13".to_string()), Some("priced-grace-join-store"))]);
}

/// A grace period longer than the table's history is refused when the app is made (the
/// order would be joined after the version of its time is gone).
#[test]
fn a_grace_period_past_the_history_is_refused() {
    let app = app(100, 200, None);
    let error = TestDriver::new(app).err().expect("refused").to_string();
    assert!(error.contains("longer than the table keeps its history"), "{error}");
}

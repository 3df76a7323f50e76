//! The `order_enrichment` example as users run it, on the embedded broker and on tansu: its
//! inputs produced before the worker starts (orders on 4 partitions, customers on 2), with
//! orders moving between customers, customers and orders deleted; the latest record of each
//! key of `orders-enriched` must be the join of the latest orders and customers.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use streams_core::{EmbeddedBroker, Record};
use streams_tests::order_enrichment::{self, Customer, EnrichedOrder, Order};
use streams_tests::{create_app_topics, example_binary, read_all, tools, Child};

/// tansu reports a partition's high watermark as its last batch's base offset + 1: the
/// worker writes one record per batch there, so that reading the output to its end (and the
/// worker's changelog checkpoints) see every record.
const ONE_PER_BATCH: &str = "--config=batch.num.messages=1";

type Rows = Vec<(String, Option<Vec<u8>>, i64)>;

/// Produces `rows` with `partitioner`. `customers` needs Kafka's default (murmur2 of the key,
/// as Java clients and Kafka Streams use; librdkafka's own default, `consistent_random`,
/// differs): the join sends each subscription to the partition of `customers` that holds its
/// customer, found that way. `orders` may use any: answers go back to the partition each
/// order was read from.
fn produce_at(bootstrap: &str, topic: &str, rows: &Rows, partitioner: &str) {
    // One record per batch: tansu reports a partition's end as its last batch's start + 1.
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", partitioner)
        .set("batch.num.messages", "1")
        .create()
        .expect("producer");
    for (key, value, timestamp) in rows {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .key(key.as_bytes())
            .timestamp(*timestamp);
        if let Some(value) = value {
            record = record.payload(value.as_slice());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

fn json<T: Record>(value: &T) -> Vec<u8> {
    value.encode().expect("json")
}

/// Customers c0..c19, orders o0..o199 over them, then changes: customers re-tiered, orders
/// moved (some to missing customers), customers and orders deleted, a deleted customer back.
/// Returns (customers, orders, the expected join).
fn inputs() -> (Rows, Rows, BTreeMap<String, EnrichedOrder>) {
    let mut customers: Rows = Vec::new();
    let mut orders: Rows = Vec::new();
    let mut customer_rows: BTreeMap<String, Customer> = BTreeMap::new();
    let mut order_rows: BTreeMap<String, Order> = BTreeMap::new();
    let mut time = 1_764_000_000_000i64;
    let put_customer =
        |rows: &mut Rows, table: &mut BTreeMap<String, Customer>, id: String, row: Option<Customer>, time: i64| {
            rows.push((id.clone(), row.as_ref().map(json), time));
            match row {
                Some(row) => table.insert(id, row),
                None => table.remove(&id),
            };
        };
    for c in 0..20 {
        let row = Customer {
            name: format!("name-{c}"),
            tier: "basic".into(),
        };
        put_customer(&mut customers, &mut customer_rows, format!("c{c}"), Some(row), time);
        time += 1;
    }
    let put_order =
        |rows: &mut Rows, table: &mut BTreeMap<String, Order>, id: String, row: Option<Order>, time: i64| {
            rows.push((id.clone(), row.as_ref().map(json), time));
            match row {
                Some(row) => table.insert(id, row),
                None => table.remove(&id),
            };
        };
    for o in 0..200 {
        let row = Order {
            customer_id: format!("c{}", o % 20),
            amount: o,
        };
        put_order(&mut orders, &mut order_rows, format!("o{o}"), Some(row), time);
        time += 1;
    }
    for round in 0..5 {
        for c in (round..20).step_by(3) {
            let row = Customer {
                name: format!("name-{c}"),
                tier: format!("tier-{round}"),
            };
            put_customer(&mut customers, &mut customer_rows, format!("c{c}"), Some(row), time);
            time += 1;
        }
        for o in (round..200).step_by(7) {
            // Some to customers that never exist (c20..c24).
            let row = Order {
                customer_id: format!("c{}", (o + round * 3) % 25),
                amount: o * 10 + round,
            };
            put_order(&mut orders, &mut order_rows, format!("o{o}"), Some(row), time);
            time += 1;
        }
        put_customer(
            &mut customers,
            &mut customer_rows,
            format!("c{}", round * 4),
            None,
            time,
        );
        put_order(&mut orders, &mut order_rows, format!("o{}", round * 40 + 1), None, time);
        time += 1;
    }
    // A deleted customer comes back.
    let row = Customer {
        name: "back".into(),
        tier: "gold".into(),
    };
    put_customer(&mut customers, &mut customer_rows, "c4".into(), Some(row), time);
    let expected = order_rows
        .iter()
        .filter_map(|(id, order)| {
            let customer = customer_rows.get(&order.customer_id)?;
            Some((id.clone(), order_enrichment::enrich(order, customer)))
        })
        .collect();
    (customers, orders, expected)
}

/// The latest record of each key of `orders-enriched`.
fn latest(bootstrap: &str) -> BTreeMap<String, EnrichedOrder> {
    let mut out = BTreeMap::new();
    for record in read_all(bootstrap, "orders-enriched") {
        let key = String::from_utf8(record.key.expect("key")).expect("utf8");
        match record.value {
            Some(value) => {
                out.insert(key, serde_json::from_slice(&value).expect("an enriched order"));
            }
            None => {
                out.remove(&key);
            }
        }
    }
    out
}

/// The keys where `got` and `expected` differ, with both sides.
fn differences(
    got: &BTreeMap<String, EnrichedOrder>,
    expected: &BTreeMap<String, EnrichedOrder>,
) -> Vec<(String, Option<EnrichedOrder>, Option<EnrichedOrder>)> {
    let keys: std::collections::BTreeSet<&String> = got.keys().chain(expected.keys()).collect();
    keys.into_iter()
        .filter(|k| got.get(*k) != expected.get(*k))
        .map(|k| (k.clone(), got.get(k).cloned(), expected.get(k).cloned()))
        .collect()
}

/// Runs the example's worker until it has had no record for `idle` seconds; returns the
/// last lines of its log (for a failure's message).
fn run_worker(bootstrap: &str, idle: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec![
        "worker",
        "-l",
        "info",
        "--broker",
        bootstrap,
        "--data-dir",
        dir.path().to_str().expect("utf8"),
    ];
    args.extend_from_slice(&["--idle-exit", idle]);
    args.extend_from_slice(extra);
    let mut worker = Child::spawn(&example_binary("order_enrichment"), &args);
    assert_eq!(
        worker.wait(Duration::from_secs(240)),
        Some(0),
        "{}",
        worker.seen.join("\n")
    );
    let from = worker.seen.len().saturating_sub(40);
    worker.seen[from..].join("\n")
}

#[test]
fn order_enrichment_on_the_embedded_broker() {
    streams_core::init_logging("error");
    let broker = EmbeddedBroker::start().expect("broker");
    broker.create_topic("orders", 4).expect("topic");
    broker.create_topic("customers", 2).expect("topic");
    create_app_topics(&broker, &order_enrichment::app());
    let bootstrap = broker.bootstrap_servers().to_string();
    let (customers, orders, expected) = inputs();
    assert!(expected.len() > 100, "most orders have a customer: {}", expected.len());
    // Orders first: their customers arrive after them.
    produce_at(&bootstrap, "orders", &orders, "consistent_random");
    produce_at(&bootstrap, "customers", &customers, "murmur2_random");
    let log = run_worker(&bootstrap, "8", &[]);
    let got = latest(&bootstrap);
    assert!(
        got == expected,
        "(key, got, expected): {:?}\nthe worker's last lines:\n{log}",
        differences(&got, &expected)
    );
}

/// On tansu, a separate Kafka-compatible server. It used to miss the results of one or two
/// order partitions in about 2 runs of 5: a join's task that held its orders back for the
/// other input (KIP-695) while a commit point came found nothing processed, went quiet, and
/// slept a minute after processing them, so their subscriptions went out only when the
/// worker stopped (fixed in `StreamCore::cut_with`; 10 of 10 runs pass since).
#[test]
fn order_enrichment_on_tansu() {
    let tansu = match tools::tansu() {
        Ok(tansu) => tansu,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let (_broker, bootstrap) = tools::start_tansu(&tansu);
    tools::create_topic(&bootstrap, "orders", 4);
    tools::create_topic(&bootstrap, "customers", 2);
    let (customers, orders, expected) = inputs();
    produce_at(&bootstrap, "orders", &orders, "consistent_random");
    produce_at(&bootstrap, "customers", &customers, "murmur2_random");
    // The worker's own records (subscriptions, answers) reach it later on tansu than on the
    // embedded broker (seconds, after an empty fetch): a longer idle time before it stops.
    let log = run_worker(&bootstrap, "15", &[ONE_PER_BATCH]);
    let got = latest(&bootstrap);
    assert!(
        got == expected,
        "(key, got, expected): {:?}\nthe worker's last lines:\n{log}",
        differences(&got, &expected)
    );
}

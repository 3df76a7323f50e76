//! Foreign-key table–table joins (Kafka Streams' KIP-213) through the test driver: the
//! `order_enrichment` example against a reference join of the latest orders and customers,
//! over generated changes (orders moving between customers, customers deleted and back,
//! orders deleted, hot keys), with the inputs on different partition counts and the driver's
//! runs (commit points) at generated places; the left join; and which results a change
//! touches.

use std::collections::BTreeMap;

use proptest::prelude::*;
use streams_core::prelude::*;
use streams_core::testing::TestDriver;
use streams_tests::order_enrichment::{self, Customer, EnrichedOrder, Order, CUSTOMERS, ORDERS};

#[derive(Debug, Clone)]
enum Change {
    Order {
        id: u8,
        customer: u8,
        amount: i64,
    },
    DeleteOrder {
        id: u8,
    },
    Customer {
        id: u8,
        tier: u8,
    },
    DeleteCustomer {
        id: u8,
    },
    /// A commit point: the driver runs what was piped so far.
    Run,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (0u8..6, 0u8..4, 0i64..100).prop_map(|(id, customer, amount)| Change::Order { id, customer, amount }),
        1 => (0u8..6).prop_map(|id| Change::DeleteOrder { id }),
        3 => (0u8..4, 0u8..3).prop_map(|(id, tier)| Change::Customer { id, tier }),
        1 => (0u8..4).prop_map(|id| Change::DeleteCustomer { id }),
        1 => Just(Change::Run),
    ]
}

fn customer(id: u8, tier: u8) -> Customer {
    Customer {
        name: format!("name-{id}"),
        tier: format!("tier-{tier}"),
    }
}

/// The latest record of each key of `topic`, tombstones taking the key out.
fn latest(driver: &TestDriver, topic: &str) -> BTreeMap<String, EnrichedOrder> {
    let mut out = BTreeMap::new();
    for record in driver.raw_records(topic) {
        let key = String::from_utf8(record.key.expect("a key")).expect("utf8");
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

fn run(changes: &[Change], orders_partitions: i32, customers_partitions: i32) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut driver = TestDriver::with_partitions(
            order_enrichment::app(),
            &[("orders", orders_partitions), ("customers", customers_partitions)],
        )
        .expect("driver");
        let mut orders: BTreeMap<String, Order> = BTreeMap::new();
        let mut customers: BTreeMap<String, Customer> = BTreeMap::new();
        for change in changes {
            match change {
                Change::Order { id, customer, amount } => {
                    let order = Order {
                        customer_id: format!("c{customer}"),
                        amount: *amount,
                    };
                    driver.pipe(&ORDERS, &format!("o{id}"), &order).expect("pipe");
                    orders.insert(format!("o{id}"), order);
                }
                Change::DeleteOrder { id } => {
                    driver.pipe_raw("orders", Some(format!("o{id}").as_bytes()), None);
                    orders.remove(&format!("o{id}"));
                }
                Change::Customer { id, tier } => {
                    let row = customer(*id, *tier);
                    driver.pipe(&CUSTOMERS, &format!("c{id}"), &row).expect("pipe");
                    customers.insert(format!("c{id}"), row);
                }
                Change::DeleteCustomer { id } => {
                    driver.pipe_raw("customers", Some(format!("c{id}").as_bytes()), None);
                    customers.remove(&format!("c{id}"));
                }
                Change::Run => driver.run().await.expect("run"),
            }
        }
        driver.run().await.expect("run");
        let expected: BTreeMap<String, EnrichedOrder> = orders
            .iter()
            .filter_map(|(id, order)| {
                let customer = customers.get(&order.customer_id)?;
                Some((id.clone(), order_enrichment::enrich(order, customer)))
            })
            .collect();
        let got = latest(&driver, "orders-enriched");
        prop_assert_eq!(&got, &expected);
        // The result table holds the same.
        let table = driver.table(&order_enrichment::ENRICHED_STORE).expect("table");
        prop_assert_eq!(table, expected);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The latest record per key of `orders-enriched` is the join of the latest orders and
    /// customers, whatever the changes and wherever the commit points fall; the orders and
    /// the customers on different partition counts.
    #[test]
    fn order_enrichment_is_the_join_of_the_latest_rows(
        changes in proptest::collection::vec(change(), 1..80),
        (orders_partitions, customers_partitions) in (1i32..5, 1i32..4),
    ) {
        run(&changes, orders_partitions, customers_partitions)?;
    }
}

/// The contract's cases one by one: a customer's change reaches exactly its orders; an order
/// that moves to a missing customer, and the orders of a deleted customer, get tombstones;
/// a deleted order gets one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_updates_exactly_the_results_it_affects() {
    let mut driver =
        TestDriver::with_partitions(order_enrichment::app(), &[("orders", 3), ("customers", 2)]).expect("driver");
    let order = |customer: &str, amount: i64| Order {
        customer_id: customer.to_string(),
        amount,
    };
    driver.pipe(&CUSTOMERS, "c1", &customer(1, 0)).expect("pipe");
    driver.pipe(&CUSTOMERS, "c2", &customer(2, 0)).expect("pipe");
    driver.pipe(&ORDERS, "o1", &order("c1", 10)).expect("pipe");
    driver.pipe(&ORDERS, "o2", &order("c1", 20)).expect("pipe");
    driver.pipe(&ORDERS, "o3", &order("c2", 30)).expect("pipe");
    driver.pipe(&ORDERS, "o4", &order("c9", 40)).expect("pipe"); // no such customer
    driver.run().await.expect("run");
    let sent = |driver: &TestDriver| -> Vec<(String, Option<String>)> {
        driver
            .raw_records("orders-enriched")
            .into_iter()
            .map(|r| {
                let key = String::from_utf8(r.key.expect("key")).expect("utf8");
                let tier = r.value.map(|v| {
                    let e: EnrichedOrder = serde_json::from_slice(&v).expect("json");
                    format!("{}:{}", e.customer_id, e.tier)
                });
                (key, tier)
            })
            .collect()
    };
    // What a run sent: the records now beyond those before it, per partition (the driver
    // lists a topic partition by partition).
    let by_partition = |driver: &TestDriver| -> BTreeMap<i32, Vec<(String, Option<String>)>> {
        let mut out: BTreeMap<i32, Vec<(String, Option<String>)>> = BTreeMap::new();
        for (record, shown) in driver.raw_records("orders-enriched").into_iter().zip(sent(driver)) {
            out.entry(record.partition).or_default().push(shown);
        }
        out
    };
    let since = |before: &BTreeMap<i32, Vec<(String, Option<String>)>>, driver: &TestDriver| {
        let mut new: Vec<(String, Option<String>)> = Vec::new();
        for (partition, records) in by_partition(driver) {
            let seen = before.get(&partition).map_or(0, Vec::len);
            new.extend(records.into_iter().skip(seen));
        }
        new.sort();
        new
    };
    let mut first = sent(&driver);
    first.sort();
    assert_eq!(
        first,
        vec![
            ("o1".to_string(), Some("c1:tier-0".to_string())),
            ("o2".to_string(), Some("c1:tier-0".to_string())),
            ("o3".to_string(), Some("c2:tier-0".to_string())),
        ]
    );
    // A customer's change: its two orders, nothing else.
    let before = by_partition(&driver);
    driver.pipe(&CUSTOMERS, "c1", &customer(1, 1)).expect("pipe");
    driver.run().await.expect("run");
    let next = since(&before, &driver);
    assert_eq!(
        next,
        vec![
            ("o1".to_string(), Some("c1:tier-1".to_string())),
            ("o2".to_string(), Some("c1:tier-1".to_string())),
        ]
    );
    // o1 moves to a missing customer, c2 is deleted, o2 is deleted: three tombstones.
    let before = by_partition(&driver);
    driver.pipe(&ORDERS, "o1", &order("c7", 10)).expect("pipe");
    driver.pipe_raw("customers", Some(b"c2"), None);
    driver.pipe_raw("orders", Some(b"o2"), None);
    driver.run().await.expect("run");
    let next = since(&before, &driver);
    assert_eq!(
        next,
        vec![
            ("o1".to_string(), None),
            ("o2".to_string(), None),
            ("o3".to_string(), None)
        ]
    );
    // The missing customers arrive: c7 for o1, c9 for o4.
    let before = by_partition(&driver);
    driver.pipe(&CUSTOMERS, "c7", &customer(7, 2)).expect("pipe");
    driver.pipe(&CUSTOMERS, "c9", &customer(9, 2)).expect("pipe");
    driver.run().await.expect("run");
    let next = since(&before, &driver);
    assert_eq!(
        next,
        vec![
            ("o1".to_string(), Some("c7:tier-2".to_string())),
            ("o4".to_string(), Some("c9:tier-2".to_string())),
        ]
    );
    // The topology draws the two internal topics.
    let mermaid = order_enrichment::app().topology().mermaid();
    assert!(mermaid.contains("order_enrichment-order-customer-subscription-registration-topic"));
    assert!(mermaid.contains("order_enrichment-order-customer-subscription-response-topic"));
}

const ORDERS_STORE: Table<String, Order> = Table::new("orders-store");
const CUSTOMERS_STORE: Table<String, Customer> = Table::new("customers-store");
const LEFT: Table<String, String> = Table::new("orders-left");

/// The left join: every order has a result, with `None` while its customer is missing or it
/// names none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_left_foreign_key_join_keeps_every_row() {
    let app = App::new("left-fk").pipeline("left", |builder| {
        let orders = builder.table(ORDERS, ORDERS_STORE);
        let customers = builder.table(CUSTOMERS, CUSTOMERS_STORE);
        orders.left_join_foreign(
            &customers,
            "left",
            |order| (!order.customer_id.is_empty()).then(|| order.customer_id.clone()),
            LEFT,
            |_, order, customer| format!("{} {}", order.amount, customer.map_or("-", |c| c.tier.as_str())),
        );
    });
    let mut driver = TestDriver::with_partitions(app, &[("orders", 2), ("customers", 3)]).expect("driver");
    let order = |customer: &str, amount: i64| Order {
        customer_id: customer.to_string(),
        amount,
    };
    driver.pipe(&ORDERS, "o1", &order("c1", 1)).expect("pipe");
    driver.pipe(&ORDERS, "o2", &order("", 2)).expect("pipe"); // no foreign key
    driver.run().await.expect("run");
    let table = |driver: &TestDriver| driver.table(&LEFT).expect("table");
    let map = |entries: &[(&str, &str)]| -> BTreeMap<String, String> {
        entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    assert_eq!(table(&driver), map(&[("o1", "1 -"), ("o2", "2 -")]));
    driver.pipe(&CUSTOMERS, "c1", &customer(1, 4)).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(table(&driver), map(&[("o1", "1 tier-4"), ("o2", "2 -")]));
    driver.pipe_raw("customers", Some(b"c1"), None);
    driver.run().await.expect("run");
    assert_eq!(table(&driver), map(&[("o1", "1 -"), ("o2", "2 -")]));
    driver.pipe_raw("orders", Some(b"o1"), None);
    driver.run().await.expect("run");
    assert_eq!(table(&driver), map(&[("o2", "2 -")]));
}

/// A customer's change reaches its orders when it is committed at a rebalance: the
/// customers' task that takes it over starts with its subscriptions in its store only (not in
/// its cache), and its last commit, as the partition moves again, still answers them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_as_its_partition_moves_reaches_every_subscriber() {
    let mut driver =
        TestDriver::with_partitions(order_enrichment::app(), &[("orders", 1), ("customers", 1)]).expect("driver");
    driver.pipe(&CUSTOMERS, "c1", &customer(1, 0)).expect("pipe");
    for id in 0..5 {
        let order = Order {
            customer_id: "c1".into(),
            amount: id,
        };
        driver.pipe(&ORDERS, &format!("o{id}"), &order).expect("pipe");
    }
    driver.run().await.expect("run");
    driver.move_partition("customers", 0, "worker-2").await.expect("move");
    driver.pipe(&CUSTOMERS, "c1", &customer(1, 7)).expect("pipe");
    driver.process().await.expect("process");
    driver.move_partition("customers", 0, "worker-3").await.expect("move");
    driver.run().await.expect("run");
    let tiers: Vec<String> = latest(&driver, "orders-enriched")
        .into_values()
        .map(|e| e.tier)
        .collect();
    assert_eq!(tiers, vec!["tier-7"; 5]);
}

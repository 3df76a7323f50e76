//! Joins through the test driver: stream–table (inner, left), global tables, table–table
//! (inner, left, outer) and stream–stream windowed joins (inner, left, outer), with Kafka
//! Streams' semantics, and the `page_views` example's contract.

use std::collections::BTreeMap;
use std::time::Duration;

use streams_core::prelude::*;
use streams_core::testing::TestDriver;
use streams_tests::page_views::{self, AdEvent, Attributed, PageView, User};

fn user(region: &str) -> User {
    User { region: region.into() }
}

fn view(page: &str, ts: i64) -> PageView {
    PageView { page: page.into(), ts }
}

fn ad(user: &str, ts: i64) -> AdEvent {
    AdEvent { user: user.into(), ts }
}

const VIEWS: Topic<String, PageView> = Topic::new("views").partitions(1).event_time(|view| view.ts);
const USERS: Topic<String, User> = Topic::new("users").partitions(1);
const USERS_STORE: Table<String, User> = Table::new("users-store");
const ENRICHED: Topic<String, String> = Topic::new("enriched").partitions(1);

fn enrich(left: bool) -> App {
    App::new("enrich").pipeline("enrich", move |builder| {
        let users = builder.table(USERS, USERS_STORE);
        let views = builder.stream(VIEWS);
        if left {
            views
                .left_join(&users, |_, view, user| {
                    format!("{} {}", view.page, user.map_or("none", |u| u.region.as_str()))
                })
                .to(ENRICHED);
        } else {
            views
                .join(&users, |_, view, user| format!("{} {}", view.page, user.region))
                .to(ENRICHED);
        }
    })
}

/// Each view meets its user's row as it stands at the view's time; updates of the table
/// emit nothing; a deleted row is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_joins_a_table_as_it_stands_at_each_record() {
    for left in [false, true] {
        let mut driver = TestDriver::new(enrich(left)).expect("driver");
        // The view at 200 is piped before the row at 100 it needs: time order decides.
        driver.pipe_at(&VIEWS, "ann", &view("/a", 200), 200).expect("pipe");
        driver.pipe_at(&USERS, "ann", &user("emea"), 100).expect("pipe");
        driver.pipe_at(&VIEWS, "bob", &view("/b", 300), 300).expect("pipe");
        driver.run().await.expect("run");
        let got: Vec<(String, String)> = driver.records(&ENRICHED).expect("records");
        let mut expected = vec![("ann".to_string(), "/a emea".to_string())];
        if left {
            expected.push(("bob".into(), "/b none".into()));
        }
        assert_eq!(got, expected, "left join: {left}");

        // A table update emits nothing; the next view sees it. A deleted row is gone.
        driver.pipe_at(&USERS, "ann", &user("apac"), 400).expect("pipe");
        driver.run().await.expect("run");
        assert_eq!(driver.records(&ENRICHED).expect("records").len(), expected.len());
        driver.pipe_at(&VIEWS, "ann", &view("/c", 500), 500).expect("pipe");
        driver.run().await.expect("run");
        driver.pipe_raw("users", Some(b"ann"), None);
        driver.run().await.expect("run");
        driver.pipe_at(&VIEWS, "ann", &view("/d", 700), 700).expect("pipe");
        driver.run().await.expect("run");
        let got: Vec<String> = driver
            .records(&ENRICHED)
            .expect("records")
            .into_iter()
            .map(|(_, v)| v)
            .skip(expected.len())
            .collect();
        let after = if left {
            vec!["/c apac", "/d none"]
        } else {
            vec!["/c apac"]
        };
        assert_eq!(got, after, "left join: {left}");
    }
}

/// Many records on both sides, across several fetch-sized batches: every view is joined
/// with the row its user had at the view's time, whichever batch arrived first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_order_holds_across_batches_of_both_inputs() {
    let mut driver = TestDriver::new(enrich(true)).expect("driver");
    // All views first (times 1, 3, 5, …), then all rows (times 0, 2, 4, …): each row
    // changes the region of the one user; each view must see the row just before it.
    for i in 0..3000i64 {
        driver
            .pipe_at(&VIEWS, "u", &view(&format!("/{i}"), 2 * i + 1), 2 * i + 1)
            .expect("pipe");
    }
    for i in 0..3000i64 {
        driver
            .pipe_at(&USERS, "u", &user(&format!("r{i}")), 2 * i)
            .expect("pipe");
    }
    driver.run().await.expect("run");
    let got: Vec<String> = driver
        .records(&ENRICHED)
        .expect("records")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let expected: Vec<String> = (0..3000).map(|i| format!("/{i} r{i}")).collect();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
}

/// The order across inputs is by event time as the topics' extractors give it, not by the
/// records' Kafka timestamps: a view whose `ts` is after the row's time meets the row even
/// when its Kafka timestamp is before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_order_follows_the_extractor_not_the_kafka_timestamp() {
    let mut driver = TestDriver::new(enrich(true)).expect("driver");
    driver.pipe_at(&VIEWS, "ann", &view("/a", 200), 0).expect("pipe");
    driver.pipe_at(&USERS, "ann", &user("emea"), 100).expect("pipe");
    driver.run().await.expect("run");
    let got: Vec<String> = driver
        .records(&ENRICHED)
        .expect("records")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(got, vec!["/a emea"]);
}

/// A stream and a table whose topics have other partition counts are refused at start,
/// naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_of_topics_with_other_partition_counts_is_refused() {
    let error = TestDriver::with_partitions(page_views::app(), &[("users", 2), ("page-views", 4)])
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("`users` (2 partitions)") && error.contains("`page-views` (4 partitions)"),
        "{error}"
    );
}

#[record]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Product {
    name: String,
}

#[record]
#[derive(Debug, Clone, PartialEq, Eq)]
struct Order {
    product: String,
    amount: i64,
}

const PRODUCTS: Topic<String, Product> = Topic::new("products").partitions(3);
const PRODUCTS_STORE: Table<String, Product> = Table::new("products-store");
const ORDERS: Topic<String, Order> = Topic::new("orders").partitions(2);
const NAMED: Topic<String, String> = Topic::new("orders-named").partitions(1);

fn shop() -> App {
    App::new("shop").pipeline("name-orders", |builder| {
        let products = builder.global_table(PRODUCTS, PRODUCTS_STORE);
        let orders = builder.stream(ORDERS);
        orders
            .clone()
            .join_global(
                &products,
                |_, order| order.product.clone(),
                |_, order, product| format!("{} x {}", order.amount, product.name),
            )
            .to(NAMED);
        orders
            .filter(|_, order| order.amount > 100)
            .left_join_global(
                &products,
                |_, order| order.product.clone(),
                |_, order, product| format!("big: {} x {}", order.amount, product.map_or("?", |p| p.name.as_str())),
            )
            .to(NAMED);
    })
}

/// A global table is a copy of its whole topic on every worker: a stream of another
/// partition count joins it by a key taken from each record; it follows its topic; records
/// of its topic that do not decode go to the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_table_joins_by_a_key_taken_from_each_record() {
    let mut driver = TestDriver::new(shop()).expect("driver");
    assert_eq!((driver.partitions("products"), driver.partitions("orders")), (3, 2));
    for (id, name) in [("p1", "tea"), ("p2", "cups"), ("p3", "pot")] {
        driver
            .pipe(&PRODUCTS, id, &Product { name: name.into() })
            .expect("pipe");
    }
    driver.pipe_raw("products", Some(b"p9"), Some(b"not json"));
    for (customer, product, amount) in [("c1", "p1", 2), ("c2", "p3", 1), ("c3", "p7", 500), ("c4", "p2", 200)] {
        driver
            .pipe(
                &ORDERS,
                customer,
                &Order {
                    product: product.into(),
                    amount,
                },
            )
            .expect("pipe");
    }
    driver.run().await.expect("run");
    let mut got: Vec<String> = driver
        .records(&NAMED)
        .expect("records")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec!["1 x pot", "2 x tea", "200 x cups", "big: 200 x cups", "big: 500 x ?"]
    );
    assert_eq!(
        driver.dead_letters("name-orders").len(),
        1,
        "the record that does not decode"
    );
    // The table follows its topic.
    driver
        .pipe(&PRODUCTS, "p7", &Product { name: "kettle".into() })
        .expect("pipe");
    driver.pipe_raw("products", Some(b"p1"), None);
    driver.run().await.expect("run");
    for (customer, product) in [("c5", "p7"), ("c6", "p1")] {
        driver
            .pipe(
                &ORDERS,
                customer,
                &Order {
                    product: product.into(),
                    amount: 1,
                },
            )
            .expect("pipe");
    }
    driver.run().await.expect("run");
    let got: Vec<String> = driver
        .records(&NAMED)
        .expect("records")
        .into_iter()
        .map(|(_, v)| v)
        .skip(5)
        .collect();
    assert_eq!(got, vec!["1 x kettle"], "p1 was deleted");
}

const NAMES: Topic<String, String> = Topic::new("names");
const EMAILS: Topic<String, String> = Topic::new("emails");
const NAMES_STORE: Table<String, String> = Table::new("names-store");
const EMAILS_STORE: Table<String, String> = Table::new("emails-store");
const INNER: Table<String, String> = Table::new("inner");
const LEFT: Table<String, String> = Table::new("left");
const OUTER: Table<String, String> = Table::new("outer");
const INNER_TOPIC: Topic<String, String> = Topic::new("inner-changes").partitions(1);

fn contacts() -> App {
    App::new("contacts").pipeline("contacts", |builder| {
        let names = builder.table(NAMES, NAMES_STORE);
        let emails = builder.table(EMAILS, EMAILS_STORE);
        names
            .join(&emails, INNER, |_, name, email| format!("{name} <{email}>"))
            .to_stream()
            .to(INNER_TOPIC);
        names.left_join(&emails, LEFT, |_, name, email| {
            format!("{name} <{}>", email.map_or("-", String::as_str))
        });
        names.outer_join(&emails, OUTER, |_, name, email| {
            format!(
                "{} <{}>",
                name.map_or("-", String::as_str),
                email.map_or("-", String::as_str)
            )
        });
    })
}

fn table(driver: &TestDriver, table: &Table<String, String>) -> BTreeMap<String, String> {
    driver.table(table).expect("table")
}

fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Table–table joins: the result is a table, recomputed when either side changes, losing a
/// key when the rows it needs go, and sent on with `to_stream()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_join_into_tables_that_follow_both_sides() {
    let mut driver = TestDriver::new(contacts()).expect("driver");
    driver.pipe(&NAMES, "1", &"Ann".to_string()).expect("pipe");
    driver.pipe(&NAMES, "2", &"Bob".to_string()).expect("pipe");
    driver.pipe(&EMAILS, "2", &"bob@x".to_string()).expect("pipe");
    driver.pipe(&EMAILS, "3", &"cy@x".to_string()).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(table(&driver, &INNER), map(&[("2", "Bob <bob@x>")]));
    assert_eq!(table(&driver, &LEFT), map(&[("1", "Ann <->"), ("2", "Bob <bob@x>")]));
    assert_eq!(
        table(&driver, &OUTER),
        map(&[("1", "Ann <->"), ("2", "Bob <bob@x>"), ("3", "- <cy@x>")])
    );
    // Either side changes the result; a deleted row takes the key out where it must.
    driver.pipe(&EMAILS, "1", &"ann@x".to_string()).expect("pipe");
    driver.pipe_raw("names", Some(b"2"), None);
    driver.run().await.expect("run");
    assert_eq!(table(&driver, &INNER), map(&[("1", "Ann <ann@x>")]));
    assert_eq!(table(&driver, &LEFT), map(&[("1", "Ann <ann@x>")]));
    assert_eq!(
        table(&driver, &OUTER),
        map(&[("1", "Ann <ann@x>"), ("2", "- <bob@x>"), ("3", "- <cy@x>")])
    );
    let changes: Vec<(String, String)> = driver.records(&INNER_TOPIC).expect("records");
    assert_eq!(
        changes,
        vec![
            ("2".to_string(), "Bob <bob@x>".to_string()),
            ("1".to_string(), "Ann <ann@x>".to_string())
        ]
    );
    let tombstones = driver
        .raw_records("contacts-inner-changelog")
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(b"2".as_slice()) && r.value.is_none())
        .count();
    assert_eq!(tombstones, 1, "the inner join's row for 2 is deleted in its changelog");
}

/// A table–table join's result carries the later of its two rows' times, as in Kafka
/// Streams (a deletion too, while the other row is there); a row alone in a left or outer
/// join carries its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_join_result_carries_the_later_of_its_rows_times() {
    let mut driver = TestDriver::new(contacts()).expect("driver");
    let steps: [(&str, Option<&str>, i64); 5] = [
        ("names", Some("Ann"), 5_000),
        ("emails", Some("ann@x"), 1_000), // the result: 5 000, the name's time
        ("emails", Some("ann@y"), 7_000), // 7 000
        ("names", Some("Anne"), 6_000),   // 7 000, the email's time
        ("names", None, 6_500),           // deleted: 7 000 still
    ];
    for (topic, value, time) in steps {
        driver.pipe_raw_at(
            topic,
            Some(b"1"),
            value.map(|v| format!("\"{v}\"")).as_deref().map(str::as_bytes),
            time,
        );
        driver.run().await.expect("run");
    }
    let times = |topic: &str| -> Vec<(Option<String>, i64)> {
        driver
            .raw_records(topic)
            .into_iter()
            .map(|r| (r.value.map(|v| String::from_utf8_lossy(&v).into_owned()), r.timestamp))
            .collect()
    };
    let row = |v: &str, t: i64| (Some(format!("\"{v}\"")), t);
    assert_eq!(
        times("contacts-inner-changelog"),
        vec![
            row("Ann <ann@x>", 5_000),
            row("Ann <ann@y>", 7_000),
            row("Anne <ann@y>", 7_000),
            (None, 7_000)
        ]
    );
    assert_eq!(
        times("contacts-left-changelog"),
        vec![
            row("Ann <->", 5_000),
            row("Ann <ann@x>", 5_000),
            row("Ann <ann@y>", 7_000),
            row("Anne <ann@y>", 7_000),
            (None, 7_000)
        ]
    );
    // The outer join keeps the email alone, at its own time.
    assert_eq!(times("contacts-outer-changelog").last(), Some(&row("- <ann@y>", 7_000)));
}

const CLICKS: Topic<String, AdEvent> = Topic::new("clicks").event_time(|e| e.ts);
const IMPRESSIONS: Topic<String, AdEvent> = Topic::new("impressions").event_time(|e| e.ts);
const PAIRS: Topic<String, String> = Topic::new("pairs").partitions(1);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Inner,
    Left,
    Outer,
}

fn show(side: Option<&AdEvent>) -> String {
    side.map_or_else(|| "-".to_string(), |e| format!("{}@{}", e.user, e.ts))
}

/// The joined values sent to `pairs`, in the order they were produced.
fn pair_values(driver: &TestDriver) -> Vec<String> {
    driver
        .records(&PAIRS)
        .expect("records")
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

fn pairs(kind: Kind) -> App {
    pairs_within(
        kind,
        JoinWindows::of_time_difference_and_grace(Duration::from_millis(100), Duration::from_millis(50)),
    )
}

fn pairs_within(kind: Kind, windows: JoinWindows) -> App {
    App::new("pairs").pipeline("pairs", move |builder| {
        let impressions = builder.stream(IMPRESSIONS);
        let clicks = builder.stream(CLICKS);
        let joined = match kind {
            Kind::Inner => clicks.join_windowed(impressions, "pairs", windows, |_, c, i| {
                format!("{} {}", show(Some(c)), show(Some(i)))
            }),
            Kind::Left => clicks.left_join_windowed(impressions, "pairs", windows, |_, c, i| {
                format!("{} {}", show(Some(c)), show(i))
            }),
            Kind::Outer => clicks.outer_join_windowed(impressions, "pairs", windows, |_, c, i| {
                format!("{} {}", show(c), show(i))
            }),
        };
        joined.to(PAIRS);
    })
}

/// Stream–stream windowed joins: pairs within the time difference (both ends inclusive) as
/// soon as the second arrives, at the later time; sides out of order within grace still
/// meet; late records meet what the other side still buffers and, in an outer join, go on
/// alone at once when they meet nothing (as in Kafka Streams); left and outer
/// results for records that met nothing come once, when their window closes, never for
/// records that met one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_join_within_a_time_difference_and_grace() {
    for kind in [Kind::Inner, Kind::Left, Kind::Outer] {
        let mut driver = TestDriver::new(pairs(kind)).expect("driver");
        let click =
            |d: &mut TestDriver, user: &str, ts: i64| d.pipe_at(&CLICKS, "ad", &ad(user, ts), ts).expect("pipe");
        let impression =
            |d: &mut TestDriver, user: &str, ts: i64| d.pipe_at(&IMPRESSIONS, "ad", &ad(user, ts), ts).expect("pipe");
        impression(&mut driver, "i1", 1000);
        click(&mut driver, "c1", 1100); // exactly 100 after i1: a match
        click(&mut driver, "c2", 1101); // 101 after i1: none (yet)
        impression(&mut driver, "i2", 1200); // within 100 of c1 (100) and c2 (99)
        click(&mut driver, "c3", 2000); // alone
        driver.run().await.expect("run");
        // Stream time is 2000: i1's window closed (1000 + 100 + 50 < 2000), c3's is open.
        // An impression at 1140 is within grace of nothing open: 1140 + 150 < 2000, late.
        impression(&mut driver, "late", 1140);
        // One at 1900 is out of order but within c3's window and grace.
        impression(&mut driver, "i3", 1900);
        driver.run().await.expect("run");
        let mut got: Vec<String> = pair_values(&driver);
        let mut expected = vec![
            "c1@1100 i1@1000",
            "c1@1100 i2@1200",
            "c2@1101 i2@1200",
            "c3@2000 i3@1900",
        ];
        if let Kind::Outer = kind {
            // The late impression meets nothing left in the clicks' buffer.
            expected.push("- late@1140");
        }
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "{kind:?}");
        // The late impression is not too old for the impressions' buffer (its time is
        // 1200): kept, so not counted.
        assert_eq!(
            driver.metrics().late.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "{kind:?}"
        );
        // Time moves on: c4 at 3000 closes c3's and i3's windows (both met), and gives c4 a
        // window of its own; a click at 5000 then closes c4's, which met nothing.
        click(&mut driver, "c4", 3000);
        driver.run().await.expect("run");
        let before = driver.records(&PAIRS).expect("records").len();
        let sent = if let Kind::Outer = kind { 5 } else { 4 };
        assert_eq!(before, sent, "{kind:?}: nothing goes alone before its window closes");
        click(&mut driver, "c5", 5000);
        impression(&mut driver, "i4", 5000);
        driver.run().await.expect("run");
        let after: Vec<String> = driver
            .records(&PAIRS)
            .expect("records")
            .into_iter()
            .map(|(_, v)| v)
            .skip(before)
            .collect();
        let expected: Vec<&str> = match kind {
            Kind::Inner => vec!["c5@5000 i4@5000"],
            Kind::Left | Kind::Outer => vec!["c4@3000 -", "c5@5000 i4@5000"],
        };
        assert_eq!(after, expected, "{kind:?}");
    }
}

/// Windows reaching only after a record of this stream (`before(0)`): a click meets the
/// impressions up to 100 ms after it, none before it; each side's window closes by its own
/// reach (an impression's right away, a click's 100 ms later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_window_can_reach_after_a_record_only() {
    let windows = JoinWindows::of_time_difference_without_grace(Duration::from_millis(100)).before(Duration::ZERO);
    for kind in [Kind::Inner, Kind::Outer] {
        let mut driver = TestDriver::new(pairs_within(kind, windows)).expect("driver");
        for (side, user, ts) in [
            (&IMPRESSIONS, "i0", 950), // 50 before c1: not in its window
            (&CLICKS, "c1", 1000),
            (&IMPRESSIONS, "i1", 1050), // 50 after c1: a pair
            (&IMPRESSIONS, "i2", 1101), // 101 after c1: none
            (&CLICKS, "c2", 1200),      // 99 after i2, but i2 is before it: none
            (&CLICKS, "c3", 5000),
        ] {
            driver.pipe_at(side, "ad", &ad(user, ts), ts).expect("pipe");
            driver.run().await.expect("run");
        }
        let got: Vec<String> = pair_values(&driver);
        let expected = match kind {
            Kind::Inner => vec!["c1@1000 i1@1050"],
            _ => vec!["- i0@950", "c1@1000 i1@1050", "- i2@1101", "c2@1200 -"],
        };
        assert_eq!(got, expected, "{kind:?}");
        // The same records with the window the other way round (`after(0)`): a click meets
        // the impressions up to 100 ms before it.
        let backwards = JoinWindows::of_time_difference_without_grace(Duration::from_millis(100)).after(Duration::ZERO);
        let mut driver = TestDriver::new(pairs_within(kind, backwards)).expect("driver");
        for (side, user, ts) in [
            (&IMPRESSIONS, "i0", 950),
            (&CLICKS, "c1", 1000),
            (&IMPRESSIONS, "i2", 1101),
            (&CLICKS, "c2", 1200),
        ] {
            driver.pipe_at(side, "ad", &ad(user, ts), ts).expect("pipe");
            driver.run().await.expect("run");
        }
        let mut got: Vec<String> = pair_values(&driver);
        got.sort();
        assert_eq!(got, vec!["c1@1000 i0@950", "c2@1200 i2@1101"], "{kind:?}");
    }
}

/// An outer join sends records of the other side that met nothing too, once their window
/// closes, at their own time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outer_join_sends_either_side_alone_once_its_window_closes() {
    let mut driver = TestDriver::new(pairs(Kind::Outer)).expect("driver");
    driver.pipe_at(&IMPRESSIONS, "a", &ad("i", 100), 100).expect("pipe");
    driver.pipe_at(&CLICKS, "b", &ad("c", 150), 150).expect("pipe");
    driver.pipe_at(&CLICKS, "a", &ad("later", 1000), 1000).expect("pipe");
    driver.run().await.expect("run");
    let got: Vec<(String, String)> = driver.records(&PAIRS).expect("records");
    assert_eq!(
        got,
        vec![
            ("a".to_string(), "- i@100".to_string()),
            ("b".to_string(), "c@150 -".to_string())
        ]
    );
    let times: Vec<i64> = driver.raw_records("pairs").iter().map(|r| r.timestamp).collect();
    assert_eq!(times, vec![100, 150]);
}

/// Kafka Streams' stream–stream join takes a late record (its window and grace are behind
/// the join's stream time) rather than dropping it: it meets the other side's records still
/// buffered, is buffered itself while its side's buffer keeps that time, and in a left join
/// goes on alone at once when it meets nothing. 100 ms each way, 50 ms grace: each side's
/// buffer keeps 250 ms behind its own stream time (the latest time put into it), as Kafka
/// Streams' window stores do; a record too old for its buffer is counted as late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_record_still_joins_what_is_buffered_and_goes_alone_at_once() {
    for kind in [Kind::Inner, Kind::Left] {
        let mut driver = TestDriver::new(pairs(kind)).expect("driver");
        for (side, user, ts) in [
            (&IMPRESSIONS, "i1", 1000),
            // Stream time 1300; c1 meets nothing (impressions in [1200, 1400]).
            (&CLICKS, "c1", 1300),
            // Late (1140 + 100 + 50 < 1300), but kept: 1140 is within 250 ms of 1300.
            (&IMPRESSIONS, "x", 1140),
            // Late too; meets x, which is buffered, and not i1, which is 140 ms before it.
            (&CLICKS, "c2", 1140),
            // Too old for the clicks' buffer (1000 <= 1300 - 250 - 1): not kept, counted;
            // it still meets i1, which the impressions' buffer keeps (its time is 1140).
            (&CLICKS, "c3", 1000),
            // Too old for the clicks' buffer and meets nothing: alone at once (left join).
            (&CLICKS, "c5", 800),
        ] {
            driver.pipe_at(side, "ad", &ad(user, ts), ts).expect("pipe");
            driver.run().await.expect("run");
        }
        let got = pair_values(&driver);
        let expected = match kind {
            Kind::Inner => vec!["c2@1140 x@1140", "c3@1000 i1@1000"],
            _ => vec!["c2@1140 x@1140", "c3@1000 i1@1000", "c5@800 -"],
        };
        assert_eq!(got, expected, "{kind:?}");
        assert_eq!(
            driver.metrics().late.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "{kind:?}"
        );
        // c1's window closes at 1300 + 100 + 50: it goes alone (left) once stream time is past.
        driver.pipe_at(&CLICKS, "ad", &ad("c4", 1451), 1451).expect("pipe");
        driver.run().await.expect("run");
        let alone: Vec<String> = pair_values(&driver).into_iter().skip(expected.len()).collect();
        let expected: Vec<&str> = match kind {
            Kind::Inner => vec![],
            _ => vec!["c1@1300 -"],
        };
        assert_eq!(alone, expected, "{kind:?}");
    }
}

const MAYBE_CLICKS: Topic<Option<String>, AdEvent> = Topic::new("maybe-clicks").event_time(|e| e.ts);
const MAYBE_IMPRESSIONS: Topic<Option<String>, AdEvent> = Topic::new("maybe-impressions").event_time(|e| e.ts);
const MAYBE_PAIRS: Topic<Option<String>, String> = Topic::new("maybe-pairs").partitions(1);

/// KIP-962 (Kafka Streams 3.7): a record without a key meets nothing; a left join (for its
/// left side) and an outer join (for either side) send it on alone at once, an inner join
/// drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_a_key_goes_alone_through_left_and_outer_joins() {
    for kind in [Kind::Inner, Kind::Left, Kind::Outer] {
        let app = App::new("maybe").pipeline("maybe", move |builder| {
            let impressions = builder.stream(MAYBE_IMPRESSIONS);
            let clicks = builder.stream(MAYBE_CLICKS);
            let windows = JoinWindows::of_time_difference_without_grace(Duration::from_millis(100));
            let joined = match kind {
                Kind::Inner => clicks.join_windowed(impressions, "maybe", windows, |_, c, i| {
                    format!("{} {}", show(Some(c)), show(Some(i)))
                }),
                Kind::Left => clicks.left_join_windowed(impressions, "maybe", windows, |_, c, i| {
                    format!("{} {}", show(Some(c)), show(i))
                }),
                Kind::Outer => clicks.outer_join_windowed(impressions, "maybe", windows, |_, c, i| {
                    format!("{} {}", show(c), show(i))
                }),
            };
            joined.to(MAYBE_PAIRS);
        });
        let mut driver = TestDriver::new(app).expect("driver");
        let keyed = Some("ad".to_string());
        driver
            .pipe_at(&MAYBE_IMPRESSIONS, &keyed, &ad("i", 1000), 1000)
            .expect("pipe");
        driver
            .pipe_at(&MAYBE_CLICKS, &None, &ad("c-none", 1000), 1000)
            .expect("pipe");
        driver
            .pipe_at(&MAYBE_IMPRESSIONS, &None, &ad("i-none", 1010), 1010)
            .expect("pipe");
        driver
            .pipe_at(&MAYBE_CLICKS, &keyed, &ad("c", 1020), 1020)
            .expect("pipe");
        driver.run().await.expect("run");
        // Sorted: records with and without a key are on different partitions, in tasks of
        // their own.
        let mut got: Vec<(Option<String>, String)> = driver.records(&MAYBE_PAIRS).expect("records");
        got.sort();
        let ad_key = Some("ad".to_string());
        let mut expected: Vec<(Option<String>, String)> = match kind {
            Kind::Inner => vec![(ad_key, "c@1020 i@1000".into())],
            Kind::Left => vec![(None, "c-none@1000 -".into()), (ad_key, "c@1020 i@1000".into())],
            Kind::Outer => vec![
                (None, "c-none@1000 -".into()),
                (None, "- i-none@1010".into()),
                (ad_key, "c@1020 i@1000".into()),
            ],
        };
        expected.sort();
        assert_eq!(got, expected, "{kind:?}");
    }
}

/// The `page_views` example's contract: views counted per region (users not in the table
/// count for "unknown"), and each click with each impression of its ad within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_views_counts_per_region_and_attributes_clicks() {
    let mut driver = TestDriver::with_partitions(
        page_views::app(),
        &[("users", 4), ("page-views", 4), ("ad-impressions", 2), ("ad-clicks", 2)],
    )
    .expect("driver");
    let t0 = 1_764_000_000_000;
    driver
        .pipe_at(&page_views::USERS, "u1", &user("emea"), t0)
        .expect("pipe");
    driver
        .pipe_at(&page_views::USERS, "u2", &user("apac"), t0)
        .expect("pipe");
    for (n, who) in ["u1", "u2", "u1", "u3"].iter().enumerate() {
        let ts = t0 + 1000 * (n as i64 + 1);
        driver
            .pipe_at(&page_views::PAGE_VIEWS, *who, &view("/", ts), ts)
            .expect("pipe");
    }
    driver.pipe_raw_at("users", Some(b"u2"), None, t0 + 5000);
    let ts = t0 + 10_000;
    driver
        .pipe_at(&page_views::PAGE_VIEWS, "u2", &view("/x", ts), ts)
        .expect("pipe");
    // Ads: an impression, a click 20 s later (a match), one 31 s later (none).
    driver
        .pipe_at(&page_views::AD_IMPRESSIONS, "ad1", &ad("u1", t0), t0)
        .expect("pipe");
    driver
        .pipe_at(&page_views::AD_CLICKS, "ad1", &ad("u9", t0 + 20_000), t0 + 20_000)
        .expect("pipe");
    driver
        .pipe_at(&page_views::AD_CLICKS, "ad1", &ad("u8", t0 + 31_000), t0 + 31_000)
        .expect("pipe");
    driver.run().await.expect("run");
    let counts = driver.table(&page_views::REGION_COUNTS).expect("table");
    let expected: BTreeMap<String, i64> = [("emea", 2), ("apac", 1), ("unknown", 2)]
        .into_iter()
        .map(|(r, n)| (r.to_string(), n))
        .collect();
    assert_eq!(counts, expected);
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for (region, count) in driver.records(&page_views::VIEWS_PER_REGION).expect("records") {
        last.insert(region, count);
    }
    assert_eq!(last, expected, "every change goes to views-per-region");
    let raw = driver.raw_records("views-per-region");
    assert!(raw
        .iter()
        .all(|r| serde_json::from_slice::<i64>(r.value.as_deref().unwrap_or_default()).is_ok()));
    let attributed = driver.records(&page_views::AD_CLICKS_ATTRIBUTED).expect("records");
    assert_eq!(
        attributed,
        vec![(
            "ad1".to_string(),
            Attributed {
                impression_ts: t0,
                click_ts: t0 + 20_000,
                user: "u9".into()
            }
        )]
    );
    let json: serde_json::Value = serde_json::from_slice(
        driver.raw_records("ad-clicks-attributed")[0]
            .value
            .as_deref()
            .unwrap_or_default(),
    )
    .expect("json");
    assert_eq!(
        json,
        serde_json::json!({"impression_ts": t0, "click_ts": t0 + 20_000, "user": "u9"})
    );
}

/// A record that met nothing and whose result fails when its window closes (the joiner
/// panics) takes the processing error handler (the dead-letter topic, with the record as the
/// join buffers it); the other records closing with it still go on alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmatched_record_whose_result_fails_goes_to_the_dead_letter_topic() {
    let app = App::new("pairs").pipeline("pairs", |builder| {
        let impressions = builder.stream(IMPRESSIONS);
        let windows = JoinWindows::of_time_difference_and_grace(Duration::from_millis(100), Duration::from_millis(50));
        builder
            .stream(CLICKS)
            .outer_join_windowed(impressions, "pairs", windows, |_, c, i| {
                assert!(i.is_none_or(|i| i.user != "boom"), "a boom met nothing");
                format!("{} {}", show(c), show(i))
            })
            .to(PAIRS);
    });
    // One partition each: the three close together, in one task.
    let mut driver = TestDriver::with_partitions(app, &[("clicks", 1), ("impressions", 1)]).expect("driver");
    driver.pipe_at(&IMPRESSIONS, "a", &ad("i", 100), 100).expect("pipe");
    driver.pipe_at(&IMPRESSIONS, "z", &ad("boom", 120), 120).expect("pipe");
    driver.pipe_at(&CLICKS, "b", &ad("c", 150), 150).expect("pipe");
    driver.run().await.expect("run");
    driver.pipe_at(&CLICKS, "a", &ad("later", 1000), 1000).expect("pipe");
    driver.run().await.expect("run");
    let got: Vec<(String, String)> = driver.records(&PAIRS).expect("records");
    assert_eq!(
        got,
        vec![
            ("a".to_string(), "- i@100".to_string()),
            ("b".to_string(), "c@150 -".to_string())
        ]
    );
    let dead = driver.raw_records("pairs-pairs-dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].key.as_deref(), Some(&b"z"[..]));
    let value = String::from_utf8_lossy(dead[0].value.as_deref().unwrap_or_default()).to_string();
    assert!(value.contains("boom"), "the record as buffered: {value}");
    assert!(
        dead[0]
            .header("streams.dlq.error")
            .is_some_and(|e| e.contains("a boom met nothing")),
        "{:?}",
        dead[0]
    );
}

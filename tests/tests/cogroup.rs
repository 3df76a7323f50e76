//! Cogroup (Kafka Streams' KIP-150) through the test driver: three grouped streams of three
//! value types — two read as they are, one re-keyed through a repartition topic — aggregated
//! into one table, against a reference fold of each key's records, over generated records
//! (hot keys), partition counts, cache budgets (the default, zero and 200 bytes), commit points and partition
//! moves, under either guarantee.

use std::collections::BTreeMap;

use proptest::prelude::*;
use streams_core::app::ProcessingGuarantee;
use streams_core::prelude::*;
use streams_core::testing::TestDriver;
use streams_core::topology::NodeKind;

#[record]
#[derive(Clone)]
struct Click {
    page: String,
}

#[record]
#[derive(Clone)]
struct Purchase {
    amount: i64,
}

/// A refund names its user in the value: it is re-keyed by it before the cogroup.
#[record]
#[derive(Clone)]
struct Refund {
    user: String,
    amount: i64,
}

#[record]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Activity {
    clicks: i64,
    spent: i64,
    refunded: i64,
    /// The last few clicks and purchases, oldest first: the order the task took them in.
    recent: Vec<String>,
}

const CLICKS: Topic<String, Click> = Topic::new("clicks");
const PURCHASES: Topic<String, Purchase> = Topic::new("purchases");
const REFUNDS: Topic<String, Refund> = Topic::new("refunds");
const ACTIVITY: Table<String, Activity> = Table::new("activity");
const ACTIVITY_TOPIC: Topic<String, Activity> = Topic::new("activity-updates");

const RECENT: usize = 4;

fn remember(activity: &mut Activity, event: String) {
    activity.recent.push(event);
    if activity.recent.len() > RECENT {
        activity.recent.remove(0);
    }
}

fn on_click(activity: &mut Activity, click: Click) {
    activity.clicks += 1;
    remember(activity, format!("click {}", click.page));
}

fn on_purchase(activity: &mut Activity, purchase: Purchase) {
    activity.spent += purchase.amount;
    remember(activity, format!("buy {}", purchase.amount));
}

fn on_refund(activity: &mut Activity, refund: Refund) {
    // Re-keyed: its order among the others is the repartition topic's, so what it does
    // must not depend on it.
    activity.refunded += refund.amount;
}

/// `cache_bytes`: the table cache's budget; `None` leaves the default a user runs with.
fn app(cache_bytes: Option<usize>, exactly_once: bool) -> App {
    let mut app = App::new("cogroup-test");
    if let Some(bytes) = cache_bytes {
        app = app.table_cache_bytes(bytes);
    }
    if exactly_once {
        app = app.processing_guarantee(ProcessingGuarantee::ExactlyOnce);
    }
    app.pipeline("activity", |builder| {
        let clicks = builder.stream(CLICKS).group_by_key();
        let purchases = builder.stream(PURCHASES).group_by_key();
        let refunds = builder
            .stream(REFUNDS)
            .group_by("refunds-by-user", |_, refund| refund.user.clone());
        clicks
            .cogroup(|_, click, mut activity: Activity| {
                on_click(&mut activity, click);
                activity
            })
            .cogroup(purchases, |_, purchase, mut activity| {
                on_purchase(&mut activity, purchase);
                activity
            })
            .cogroup(refunds, |_, refund, mut activity| {
                on_refund(&mut activity, refund);
                activity
            })
            .aggregate(ACTIVITY, Activity::default)
            .to_stream()
            .to(ACTIVITY_TOPIC);
    })
}

#[derive(Debug, Clone)]
enum Step {
    Click {
        user: u8,
        page: u8,
    },
    Purchase {
        user: u8,
        amount: i64,
    },
    Refund {
        user: u8,
        amount: i64,
    },
    /// A commit point: the driver runs what was piped so far.
    Run,
    /// A clean handover of a partition to another worker.
    Move {
        partition: i32,
    },
}

fn user() -> impl Strategy<Value = u8> {
    // Hot keys: user 0 most of the time.
    prop_oneof![3 => Just(0u8), 2 => 1u8..6]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (user(), 0u8..5).prop_map(|(user, page)| Step::Click { user, page }),
        3 => (user(), 1i64..100).prop_map(|(user, amount)| Step::Purchase { user, amount }),
        2 => (user(), 1i64..50).prop_map(|(user, amount)| Step::Refund { user, amount }),
        1 => Just(Step::Run),
        1 => (0i32..4).prop_map(|partition| Step::Move { partition }),
    ]
}

fn run(steps: &[Step], partitions: i32, cache_bytes: Option<usize>, exactly_once: bool) -> Result<(), TestCaseError> {
    let run = async {
        let mut driver = TestDriver::with_partitions(
            app(cache_bytes, exactly_once),
            &[("clicks", partitions), ("purchases", partitions), ("refunds", 3)],
        )
        .expect("driver");
        let mut expected: BTreeMap<String, Activity> = BTreeMap::new();
        let mut owners = 0u32;
        // Increasing times: the task takes the records of its two topics in time order.
        let mut time = 1_000;
        for step in steps {
            time += 10;
            match step {
                Step::Click { user, page } => {
                    let click = Click {
                        page: format!("p{page}"),
                    };
                    driver
                        .pipe_at(&CLICKS, &format!("u{user}"), &click, time)
                        .expect("pipe");
                    on_click(expected.entry(format!("u{user}")).or_default(), click);
                }
                Step::Purchase { user, amount } => {
                    let purchase = Purchase { amount: *amount };
                    driver
                        .pipe_at(&PURCHASES, &format!("u{user}"), &purchase, time)
                        .expect("pipe");
                    on_purchase(expected.entry(format!("u{user}")).or_default(), purchase);
                }
                Step::Refund { user, amount } => {
                    let refund = Refund {
                        user: format!("u{user}"),
                        amount: *amount,
                    };
                    // Keyed by something else: the cogroup sees it under its user.
                    driver
                        .pipe_at(&REFUNDS, &format!("r{time}"), &refund, time)
                        .expect("pipe");
                    on_refund(expected.entry(format!("u{user}")).or_default(), refund);
                }
                Step::Run => driver.run().await.expect("run"),
                Step::Move { partition } => {
                    owners += 1;
                    driver
                        .move_partition("clicks", partition % partitions, &format!("worker-{owners}"))
                        .await
                        .expect("move");
                }
            }
        }
        driver.run().await.expect("run");
        let table = driver.table(&ACTIVITY).expect("table");
        prop_assert_eq!(&table, &expected);
        // The latest record of each key sent on is the table's row.
        let mut latest: BTreeMap<String, Activity> = BTreeMap::new();
        for (key, activity) in driver.records(&ACTIVITY_TOPIC).expect("records") {
            latest.insert(key, activity);
        }
        prop_assert_eq!(latest, expected);
        Ok(())
    };
    streams_tests::run_case(std::time::Duration::from_secs(20), run)
        .ok_or_else(|| TestCaseError::fail("the driver did not finish within 20 s"))?
}

fn cache_bytes() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![Just(None), Just(Some(0usize)), Just(Some(200))]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Each key's aggregate is the fold of its records of all three streams, in the order
    /// the records were written (the two direct streams' records in time order), whatever
    /// the partition counts, the cache budget, the commit points and moves.
    #[test]
    fn a_cogroup_folds_every_stream_into_one_aggregate(
        steps in proptest::collection::vec(step(), 1..90),
        partitions in 1i32..4,
        cache_bytes in cache_bytes(),
        exactly_once in any::<bool>(),
    ) {
        run(&steps, partitions, cache_bytes, exactly_once)?;
    }
}

/// One store and one changelog for the three streams, drawn as one operation with three
/// parents; the two direct streams are read by one sub-topology.
#[test]
fn a_cogroup_is_one_operation_over_one_store() {
    let app = app(None, false);
    let topology = app.topology();
    let mermaid = topology.mermaid();
    let cogroup = topology
        .nodes
        .iter()
        .find(|node| node.kind == NodeKind::Operation && node.name.contains("cogroup"))
        .unwrap_or_else(|| panic!("a cogroup node in {mermaid}"));
    let parents = topology.edges.iter().filter(|(_, to, _)| *to == cogroup.name).count();
    assert_eq!(parents, 3, "{mermaid}");
    let tables: Vec<&str> = app
        .tasks()
        .iter()
        .flat_map(|task| task.tables.iter().map(|table| table.name))
        .collect();
    assert_eq!(tables, vec!["activity"]);
    // The task that keeps it reads the three streams, partition p of each.
    let tasks = app.tasks();
    let task = tasks
        .iter()
        .find(|task| task.tables.iter().any(|table| table.name == "activity"))
        .expect("the aggregating task");
    let mut sources: Vec<&str> = task.sources.iter().map(|topic| &*topic.name).collect();
    sources.sort_unstable();
    assert_eq!(
        sources,
        vec!["clicks", "cogroup-test-refunds-by-user-repartition", "purchases"]
    );
}

/// The exact updates, in order, for one user across the streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_of_each_stream_updates_the_aggregate() {
    let mut driver = TestDriver::new(app(None, false)).expect("driver");
    driver
        .pipe_at(&CLICKS, "ada", &Click { page: "home".into() }, 10)
        .expect("pipe");
    driver
        .pipe_at(&PURCHASES, "ada", &Purchase { amount: 30 }, 20)
        .expect("pipe");
    driver
        .pipe_at(&CLICKS, "ada", &Click { page: "cart".into() }, 30)
        .expect("pipe");
    driver.run().await.expect("run");
    let table = driver.table(&ACTIVITY).expect("table");
    assert_eq!(
        table.get("ada"),
        Some(&Activity {
            clicks: 2,
            spent: 30,
            refunded: 0,
            recent: vec!["click home".into(), "buy 30".into(), "click cart".into()],
        })
    );
    driver
        .pipe_at(
            &REFUNDS,
            "r1",
            &Refund {
                user: "ada".into(),
                amount: 5,
            },
            40,
        )
        .expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(driver.table(&ACTIVITY).expect("table")["ada"].refunded, 5);
}

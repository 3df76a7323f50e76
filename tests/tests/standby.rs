//! Standby replicas (`--standby-replicas`): each worker keeps warm copies of the table
//! partitions the other holds, current with what the group has committed, so that a
//! failover restores nothing it already had; without them the same failover restores the
//! whole half of the table that moves. A lookup that accepts a stale value is answered from
//! a copy, marked so; any other lookup is answered by the partition's owner.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use streams_core::web::WebOptions;
use streams_core::{EmbeddedBroker, Metrics, Worker, WorkerHandle};
use streams_examples::seed;
use streams_tests::group::{blocking, both_holding, broker, caught_up, GROUP};
use streams_tests::hit_counter::{app, MAJOR_COUNT};
use streams_tests::{client, get, produce, unkeyed, worker_options};

/// The partitions of `count_topic`, whose task keeps the table.
const TABLE_PARTITIONS: u64 = 8;

async fn start(broker: &EmbeddedBroker, dir: &Path, standbys: usize) -> WorkerHandle {
    Worker::start(app(), worker_options(dir, broker).standby_replicas(standbys))
        .await
        .expect("worker starts")
}

/// Both workers' standby copies hold every partition the other worker holds, and are behind
/// by nothing, as a pass that began after this was called found them (a pass ended since
/// then may have begun before the input's last changes).
async fn copies_current(a: &Arc<Metrics>, b: &Arc<Metrics>) {
    let (a, b) = (Arc::clone(a), Arc::clone(b));
    let passes = |m: &Metrics| m.standby_passes.load(Ordering::Relaxed);
    let (from_a, from_b) = (passes(&a), passes(&b));
    blocking("standby copies of every partition, behind by nothing", move || {
        passes(&a) >= from_a + 2
            && passes(&b) >= from_b + 2
            && a.standby_partitions.load(Ordering::Relaxed) + b.standby_partitions.load(Ordering::Relaxed)
                == TABLE_PARTITIONS
            && a.standby_lag.load(Ordering::Relaxed) == 0
            && b.standby_lag.load(Ordering::Relaxed) == 0
    })
    .await;
}

/// Two workers count hits (the input in two parts, the second while both run); the first
/// stops and the second takes over its partitions. Returns the changelog records the second
/// restored when it took them over, the counts it then holds, and the true counts.
async fn failover(standbys: usize) -> (u64, BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let records = seed::hits(400, 12_000);
    let (first, second) = records.split_at(6_000);
    let broker = broker();
    let bootstrap = broker.bootstrap_servers().to_string();

    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = start(&broker, dir_a.path(), standbys).await;
    let b = start(&broker, dir_b.path(), standbys).await;
    let (a_metrics, b_metrics) = (a.metrics(), b.metrics());
    both_holding(&a_metrics, &b_metrics).await;
    produce(&bootstrap, "hit_count", &unkeyed(first));
    caught_up(&broker).await;
    if standbys > 0 {
        copies_current(&a_metrics, &b_metrics).await;
    }
    // More input while both run: the copies follow the owners' changes.
    produce(&bootstrap, "hit_count", &unkeyed(second));
    caught_up(&broker).await;
    if standbys > 0 {
        copies_current(&a_metrics, &b_metrics).await;
    } else {
        assert_eq!(a_metrics.standby_partitions.load(Ordering::Relaxed), 0);
        assert_eq!(b_metrics.standby_records.load(Ordering::Relaxed), 0);
    }

    let restored_before = b_metrics.restored.load(Ordering::Relaxed);
    a.stop().await.expect("the first worker stops");
    {
        let b = Arc::clone(&b_metrics);
        blocking("the second worker holding every partition", move || {
            b.assigned.load(Ordering::Relaxed) == 12
        })
        .await;
    }
    let restored = b_metrics.restored.load(Ordering::Relaxed) - restored_before;
    b.stop().await.expect("the second worker stops");
    let counted = MAJOR_COUNT.read_local(dir_b.path(), GROUP).expect("table");
    (restored, counted, seed::expected_counts(&records))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_standby_copy_restores_nothing() {
    let (restored, counted, expected) = failover(1).await;
    assert_eq!(counted, expected, "the copies' counts, taken over");
    assert_eq!(restored, 0, "the copies were current: nothing to restore");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_standby_copies_the_same_failover_restores_what_moves() {
    let (restored, counted, expected) = failover(0).await;
    assert_eq!(counted, expected);
    assert!(restored > 0, "the moved partitions were restored from their changelogs");
}

/// Two workers with web servers and a copy each of the other's partitions: a lookup with
/// `?stale=true` of a key the asked worker does not hold is answered by that worker from its
/// copy (marked stale, with the copy's lag), with the right count; without it, by the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lookup_is_answered_from_a_copy_only_when_asked() {
    let records = seed::hits(60, 3_000);
    let broker = broker();
    let expected = seed::expected_counts(&records);
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let options = |dir: &Path| {
        worker_options(dir, &broker)
            .standby_replicas(1)
            .web(WebOptions::default().port(0))
    };
    let a = Worker::start(app(), options(dir_a.path()))
        .await
        .expect("worker starts");
    let b = Worker::start(app(), options(dir_b.path()))
        .await
        .expect("worker starts");
    let (a_metrics, b_metrics) = (a.metrics(), b.metrics());
    both_holding(&a_metrics, &b_metrics).await;
    produce(broker.bootstrap_servers(), "hit_count", &unkeyed(&records));
    caught_up(&broker).await;
    copies_current(&a_metrics, &b_metrics).await;

    let client = client();
    let asked = a.web_url().expect("a web server").to_string();
    let mut stale = 0;
    for (user, count) in &expected {
        let answer = get(&client, &format!("{asked}/tables/major-count/{user}")).await;
        assert_eq!(
            (answer.status, &answer.body),
            (200, &serde_json::json!(count)),
            "{user}"
        );
        assert_eq!(answer.header("x-streams-stale"), None, "{user}: only when asked");
        let owner = answer.header("x-streams-served-by").expect("served by").to_string();

        let answer = get(&client, &format!("{asked}/tables/major-count/{user}?stale=true")).await;
        assert_eq!(
            (answer.status, &answer.body),
            (200, &serde_json::json!(count)),
            "{user}, stale"
        );
        if owner == asked {
            assert_eq!(answer.header("x-streams-stale"), None, "{user}: held here, current");
        } else {
            assert_eq!(answer.header("x-streams-stale"), Some("true"), "{user}: from the copy");
            assert_eq!(answer.header("x-streams-served-by"), Some(asked.as_str()));
            assert_eq!(
                answer.header("x-streams-standby-lag"),
                Some("0"),
                "{user}: the copy is current"
            );
            stale += 1;
        }
    }
    assert!(stale > 0, "some keys are held by the other worker");
    streams_tests::stop_in_turn(vec![a, b], 12).await;
}

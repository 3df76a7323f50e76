//! Static membership (`--static-membership`, KIP-345): a worker that stops keeps its place in
//! the group for its session, so that a restart with the same worker id takes back the same
//! partitions and restores nothing; a worker that stops and leaves (or stops idle) hands its
//! partitions over at once; the command line maps SIGTERM to the first and SIGINT to the
//! second.
//!
//! The embedded broker (librdkafka's mock cluster) keys members by member id only: a
//! restarted static member is a new member there, and its predecessor stays in the group
//! until its session times out (Kafka replaces it at once, without a rebalance). So the
//! restart here comes 4 s into a 10-s session: late enough for the predecessor to have timed
//! out before the group's join completes (`session.timeout.ms` − 1 s after the restart), and
//! well within the session; the assignment is then made over the same instance ids as before,
//! which the range assignor orders by instance id. So on this broker the restart is a
//! rebalance that gives each worker what it had, where Kafka makes none.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use streams_core::{EmbeddedBroker, Metrics, Worker, WorkerHandle};
use streams_examples::seed;
use streams_tests::group::{blocking, both_holding, broker, caught_up, GROUP};
use streams_tests::hit_counter::{app, MAJOR_COUNT};
use streams_tests::{produce, unkeyed, worker_options};

/// The embedded broker's sessions for these workers: long enough that a check 4 s after a
/// stop comes well before the session's end.
const SESSION_MS: &str = "10000";

async fn start(broker: &EmbeddedBroker, dir: &Path, id: &str) -> WorkerHandle {
    let options = worker_options(dir, broker)
        .worker_id(id)
        .static_membership(true)
        .consumer_config("session.timeout.ms", SESSION_MS);
    Worker::start(app(), options).await.expect("worker starts")
}

/// Two static members, `a` and `b`, each with a data directory of its own.
struct Pair {
    dirs: (tempfile::TempDir, tempfile::TempDir),
    a: WorkerHandle,
    b: WorkerHandle,
    metrics: (Arc<Metrics>, Arc<Metrics>),
}

/// Starts two static members and waits until they hold the 12 partitions between them.
async fn two_workers(broker: &EmbeddedBroker) -> Pair {
    let dirs = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = start(broker, dirs.0.path(), "a").await;
    let b = start(broker, dirs.1.path(), "b").await;
    let metrics = (a.metrics(), b.metrics());
    both_holding(&metrics.0, &metrics.1).await;
    Pair { dirs, a, b, metrics }
}

/// Waits until `b` has been revoked since it counted `revoked` revocations, and asserts it
/// happened within 5 s of `since`: far sooner than the 10-s session of a member that did not
/// leave.
async fn revoked_soon(b: &Arc<Metrics>, revoked: u64, since: std::time::Instant, after: &str) {
    {
        let b = Arc::clone(b);
        blocking("the other worker revoked", move || {
            b.revocations.load(Ordering::Relaxed) > revoked
        })
        .await;
    }
    assert!(
        since.elapsed() < Duration::from_secs(5),
        "revoked {:?} after {after} (the session is 10 s)",
        since.elapsed()
    );
}

/// The table partitions a worker has ever held: their stores in its data directory.
fn stores(dir: &Path) -> BTreeSet<String> {
    let tables = dir.join(GROUP).join("tables").join("major-count");
    std::fs::read_dir(&tables)
        .unwrap_or_else(|e| panic!("{}: {e}", tables.display()))
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// A stop without a leave keeps the group as it is (the other worker sees no rebalance); the
/// worker started again with the same id within its session gets the same partitions back:
/// no store of the other's partitions is ever opened on either side, nothing is restored,
/// and the counts are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarted_within_its_session_takes_back_its_partitions() {
    let records = seed::hits(300, 8_000);
    let (first, second) = records.split_at(4_000);
    let broker = broker();
    let bootstrap = broker.bootstrap_servers().to_string();
    let Pair {
        dirs: (dir_a, dir_b),
        a,
        b,
        metrics: (_, b_metrics),
    } = two_workers(&broker).await;
    produce(&bootstrap, "hit_count", &unkeyed(first));
    caught_up(&broker).await;
    let (held_a, held_b) = (stores(dir_a.path()), stores(dir_b.path()));
    assert!(held_a.is_disjoint(&held_b), "{held_a:?} / {held_b:?}");
    assert_eq!(held_a.len() + held_b.len(), 8, "{held_a:?} / {held_b:?}");

    let revoked = b_metrics.revocations.load(Ordering::Relaxed);
    let restored_b = b_metrics.restored.load(Ordering::Relaxed);
    let held_by_b = b_metrics.assigned.load(Ordering::Relaxed);
    a.stop().await.expect("the first worker stops");
    // Within the session (which runs from the close): the group waits for the member,
    // nothing moves to the other.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        b_metrics.revocations.load(Ordering::Relaxed),
        revoked,
        "a static member's stop does not rebalance the group"
    );
    assert_eq!(b_metrics.assigned.load(Ordering::Relaxed), held_by_b);

    let a = start(&broker, dir_a.path(), "a").await;
    let a_metrics = a.metrics();
    both_holding(&a_metrics, &b_metrics).await;
    produce(&bootstrap, "hit_count", &unkeyed(second));
    caught_up(&broker).await;
    assert_eq!(
        a_metrics.restored.load(Ordering::Relaxed),
        0,
        "the restart restores nothing"
    );
    assert_eq!(
        b_metrics.restored.load(Ordering::Relaxed),
        restored_b,
        "the other worker restores nothing"
    );
    a.stop().await.expect("stops");
    b.stop().await.expect("stops");
    assert_eq!(stores(dir_a.path()), held_a, "the same partitions, and no other");
    assert_eq!(stores(dir_b.path()), held_b, "the same partitions, and no other");
    let mut counted: BTreeMap<String, i64> = MAJOR_COUNT.read_local(dir_a.path(), GROUP).expect("table");
    counted.extend(MAJOR_COUNT.read_local(dir_b.path(), GROUP).expect("table"));
    assert_eq!(counted, seed::expected_counts(&records));
}

/// A static member that stops and leaves (`stop_and_leave`; the command line's SIGINT)
/// starts the rebalance at once: the other worker is revoked within a heartbeat or two,
/// far sooner than the session, and takes every partition with the exact counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_that_leaves_hands_its_partitions_over_at_once() {
    let records = seed::hits(200, 3_000);
    let broker = broker();
    let Pair {
        dirs: (dir_a, dir_b),
        a,
        b,
        metrics: (_, b_metrics),
    } = two_workers(&broker).await;
    produce(broker.bootstrap_servers(), "hit_count", &unkeyed(&records));
    caught_up(&broker).await;

    let revoked = b_metrics.revocations.load(Ordering::Relaxed);
    a.stop_and_leave().await.expect("the first worker stops and leaves");
    revoked_soon(&b_metrics, revoked, std::time::Instant::now(), "the leave").await;
    {
        let b = Arc::clone(&b_metrics);
        blocking("the other worker holding every partition", move || {
            b.assigned.load(Ordering::Relaxed) == 12
        })
        .await;
    }
    b.stop().await.expect("stops");
    let mut counted: BTreeMap<String, i64> = MAJOR_COUNT.read_local(dir_a.path(), GROUP).expect("table");
    counted.extend(MAJOR_COUNT.read_local(dir_b.path(), GROUP).expect("table"));
    assert_eq!(counted, seed::expected_counts(&records));
}

/// A static member that stops on `idle_exit` is not coming back either: it leaves the group,
/// and the other worker is revoked at once rather than after the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_that_stops_idle_leaves() {
    let broker = broker();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let options = worker_options(dir_a.path(), &broker)
        .worker_id("a")
        .static_membership(true)
        .consumer_config("session.timeout.ms", SESSION_MS)
        .idle_exit(Duration::from_secs(15));
    let a = Worker::start(app(), options).await.expect("worker starts");
    let b = start(&broker, dir_b.path(), "b").await;
    let (a_metrics, b_metrics) = (a.metrics(), b.metrics());
    both_holding(&a_metrics, &b_metrics).await;
    let revoked = b_metrics.revocations.load(Ordering::Relaxed);
    a.wait().await.expect("the first worker stops on its own");
    revoked_soon(&b_metrics, revoked, std::time::Instant::now(), "the idle stop").await;
    b.stop().await.expect("stops");
}

/// How many lines of `child`'s output so far contain `text`.
fn count(child: &mut streams_tests::Child, text: &str) -> usize {
    child.output().lines().filter(|line| line.contains(text)).count()
}

/// Sends `signal` (`-INT`, `-TERM`) to `child`.
fn signal(child: &streams_tests::Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.process.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// The command line, as users run it (`hit_counter worker --static-membership`): SIGTERM
/// stops the worker without leaving (the other worker releases nothing), SIGINT stops it and
/// leaves (the other worker is revoked at once, within a heartbeat rather than the 6-s
/// session of the embedded broker's workers).
#[test]
fn the_command_line_keeps_the_place_on_sigterm_and_leaves_on_sigint() {
    use streams_tests::spawn_hit_counter_worker;
    let broker = broker();
    let bootstrap = broker.bootstrap_servers().to_string();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let args = |id| ["--static-membership", "--worker-id", id];
    let mut a = spawn_hit_counter_worker(&bootstrap, dir_a.path(), &args("a"));
    a.wait_for_line(
        "static member of group hit_counter: group.instance.id hit_counter-a",
        Duration::from_secs(60),
    );
    a.wait_for_line("assigned", Duration::from_secs(60));
    let mut b = spawn_hit_counter_worker(&bootstrap, dir_b.path(), &args("b"));
    b.wait_for_line("assigned", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));

    // A revoke logs "committed and released" (or, with a commit refused, "released; its
    // last commit failed"): no input is produced here, so either counts.
    let released = "released";
    let before = count(&mut b, released);
    signal(&a, "-TERM");
    assert_eq!(a.wait(Duration::from_secs(60)), Some(0), "{}", a.output());
    let first_exit = std::time::Instant::now();
    assert!(
        a.output().contains("its partitions wait for its restart"),
        "{}",
        a.output()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(&mut b, released), before, "SIGTERM: no rebalance\n{}", b.output());

    let mut a = spawn_hit_counter_worker(&bootstrap, dir_a.path(), &args("a"));
    a.wait_for_line("assigned", Duration::from_secs(60));
    // Past the first instance's session (6 s from its close) and the rebalance it may still
    // cause here (up to 5 s more: the embedded broker keeps it as a member until then).
    std::thread::sleep(Duration::from_secs(14).saturating_sub(first_exit.elapsed()));
    let before = count(&mut b, released);
    signal(&a, "-INT");
    assert_eq!(a.wait(Duration::from_secs(60)), Some(0), "{}", a.output());
    let exited = std::time::Instant::now();
    assert!(
        streams_tests::poll_until(Duration::from_secs(4), || count(&mut b, released) > before),
        "SIGINT: the other worker was not revoked within 4 s of the exit\n{}",
        b.output()
    );
    assert!(exited.elapsed() < Duration::from_secs(4));
    signal(&b, "-TERM");
    assert_eq!(b.wait(Duration::from_secs(60)), Some(0), "{}", b.output());
}

/// A worker stopped while its group forms again (revoked, its next assignment still to
/// come) stops cleanly: the assignment that reaches it during its stop is not taken. (It
/// failed the worker: "cannot take over partitions: the worker is stopping", exit 1.)
async fn stop_while_the_group_forms(static_member: bool) {
    let broker = broker();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let options = |i: usize, on: bool| {
        worker_options(dirs[i].path(), &broker)
            .worker_id(["a", "b", "c"][i])
            .static_membership(on)
    };
    let a = Worker::start(app(), options(0, false)).await.expect("worker starts");
    let b = Worker::start(app(), options(1, static_member))
        .await
        .expect("worker starts");
    let (a_metrics, b_metrics) = (a.metrics(), b.metrics());
    both_holding(&a_metrics, &b_metrics).await;
    let revoked = b_metrics.revocations.load(Ordering::Relaxed);
    // A third worker joins: the group rebalances, and the second waits for its next
    // assignment (the embedded broker completes the join seconds later).
    let c = Worker::start(app(), options(2, false)).await.expect("worker starts");
    {
        let b = Arc::clone(&b_metrics);
        blocking("the second worker revoked", move || {
            b.revocations.load(Ordering::Relaxed) > revoked && b.assigned.load(Ordering::Relaxed) == 0
        })
        .await;
    }
    b.stop()
        .await
        .unwrap_or_else(|e| panic!("static membership {static_member}: a stop while the group forms: {e}"));
    c.stop().await.expect("stops");
    a.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_while_its_group_forms_stops_cleanly() {
    stop_while_the_group_forms(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_stopped_while_its_group_forms_stops_cleanly() {
    stop_while_the_group_forms(true).await;
}

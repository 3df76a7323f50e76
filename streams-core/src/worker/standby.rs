//! Standby replicas (`--standby-replicas N`, Kafka Streams' `num.standby.replicas`): warm
//! copies of the table partitions other workers hold, kept current from their changelogs, so
//! that a partition that comes here after a failover restores only the tail its copy had not
//! read yet.
//!
//! A copy lives where this worker would keep the partition's stores if it held it, and is
//! caught up the way a restore brings stores up to date ([`restore::restore_stores`]): only
//! changes of input the group has committed are applied, so a copy is never ahead of the
//! group's commit, and the restore that takes it over is an ordinary restore from its
//! checkpoint. A pass over every copy runs every [`PASS`]; a partition assigned here stops its
//! copy's pass and takes the stores over.
//!
//! Placement: librdkafka's assignors carry no user data, so the workers cannot negotiate
//! where copies go as Kafka Streams' assignor does. Each worker decides for itself from the
//! directory of workers (kept when workers have web servers, see `web/directory.rs`): the
//! copies of a partition go to the `N` workers after its owner in the directory's order.
//! Without a directory, or where it does not know the owner or this worker, a worker keeps a
//! copy of every table partition it does not hold: at least `N` copies, more in groups larger
//! than `N + 1` workers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::{Shared, TaskKey};
use super::restore::{self, Quiet, Restorer};
use crate::store::StateStore;

/// How often the copies are caught up.
pub(crate) const PASS: Duration = Duration::from_millis(500);

/// How long a partition assigned here waits for its copy's pass to stop.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// One copy's stores, each with its changelog.
type Copy = Vec<(Arc<dyn StateStore>, Arc<str>)>;

/// A worker's standby copies, shared by the thread that keeps them and the poll thread, which
/// takes a copy over when its partition is assigned here.
pub(crate) struct Standbys {
    replicas: usize,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Partitions this worker holds itself: never copied here.
    held: HashSet<TaskKey>,
    /// The copies open, the one being caught up too.
    open: HashMap<TaskKey, Copy>,
    /// How many changelog records each copy was behind after its last pass.
    lags: HashMap<TaskKey, u64>,
    /// The copy being caught up now, with the flag that stops its pass.
    busy: Option<(TaskKey, Arc<AtomicBool>)>,
    stopped: bool,
}

impl Standbys {
    /// Copies for `replicas` standby replicas (0: none are kept).
    pub(crate) fn new(replicas: usize) -> Self {
        Self {
            replicas,
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    /// How many copies of each partition the app asks for.
    pub(crate) fn replicas(&self) -> usize {
        self.replicas
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The partition `key` is assigned here: its copy's pass stops, and its stores close, before
    /// this returns (the task opens them next).
    pub(crate) fn hold(&self, key: TaskKey) {
        let mut state = self.state();
        state.held.insert(key);
        if let Some((busy, cancel)) = &state.busy {
            if *busy == key {
                cancel.store(true, Ordering::Relaxed);
            }
        }
        let deadline = Instant::now() + HANDOVER_TIMEOUT;
        while state.busy.as_ref().is_some_and(|(busy, _)| *busy == key) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    "the standby copy of partition {} did not stop within {HANDOVER_TIMEOUT:?}; its stores may \
                     still be open",
                    key.1
                );
                break;
            }
            state = match self.changed.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        let copy = state.open.remove(&key);
        state.lags.remove(&key);
        drop(state);
        // A stale lookup may still read the copy: its stores close when it is done (a read
        // of one key), before the task opens them.
        if let Some(copy) = copy {
            let deadline = Instant::now() + Duration::from_secs(5);
            while copy.iter().any(|(store, _)| Arc::strong_count(store) > 1) {
                if Instant::now() >= deadline {
                    tracing::warn!(
                        "the standby copy of partition {} is still read after 5 s; its task opens its stores once \
                         it is not",
                        key.1
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// The store of table `index` of the copy of `key`, with how many changelog records the
    /// copy was behind after its last pass; `None` when no copy is kept here (or its first
    /// pass has not ended).
    pub(crate) fn copy(&self, key: TaskKey, index: usize) -> Option<(Arc<dyn StateStore>, u64)> {
        let state = self.state();
        let lag = *state.lags.get(&key)?;
        let (store, _) = state.open.get(&key)?.get(index)?;
        Some((Arc::clone(store), lag))
    }

    /// The partition `key` is no longer held here: it may be copied here from the next pass.
    pub(crate) fn release(&self, key: TaskKey) {
        self.state().held.remove(&key);
    }

    /// The worker stops: the pass in progress stops, and the thread closes every copy.
    pub(crate) fn stop(&self) {
        let mut state = self.state();
        state.stopped = true;
        if let Some((_, cancel)) = &state.busy {
            cancel.store(true, Ordering::Relaxed);
        }
        self.changed.notify_all();
    }
}

/// Whether the worker `me` keeps a copy of a partition that `owner` holds, given the `workers`
/// that own partitions as the directory says and the `replicas` wanted: the `replicas` workers after the owner in the
/// list's order (from its start again after its end) keep one. When the owner or `me` is not
/// listed, or the group is no larger than `replicas + 1`, every worker but the owner keeps one.
pub(crate) fn placed_here(me: &str, owner: Option<&str>, workers: &[String], replicas: usize) -> bool {
    if owner == Some(me) {
        return false;
    }
    let (Some(owner), Some(mine)) = (owner, workers.iter().position(|w| w == me)) else {
        return true;
    };
    let Some(theirs) = workers.iter().position(|w| w == owner) else {
        return true;
    };
    if workers.len() <= replicas + 1 {
        return true;
    }
    let after = (mine + workers.len() - theirs) % workers.len();
    (1..=replicas).contains(&after)
}

/// A partition this worker keeps a copy of: its task's sources and its stores' tables.
struct Wanted {
    key: TaskKey,
    sources: Vec<String>,
    tables: Vec<(&'static str, Arc<str>)>,
}

/// Keeps the copies current until the worker stops; runs on a thread of its own, with a
/// restorer (its consumers) and a consumer of the group's committed offsets.
pub(crate) fn run(
    standbys: &Standbys,
    shared: &Shared,
    restorer: &Restorer,
    offsets: &BaseConsumer,
    partitions: &HashMap<String, i32>,
) {
    let metrics = &shared.metrics;
    // Whether the last pass could not read the group's offsets (said once).
    let mut failing = false;
    loop {
        // Not before the group's first assignment: until then every partition looks like
        // another worker's, and copies of the ones assigned here would be made for nothing.
        let wanted = if metrics.assignments.load(Ordering::Relaxed) > 0 {
            wanted(standbys, shared, partitions)
        } else {
            Vec::new()
        };
        {
            let mut state = standbys.state();
            if state.stopped {
                break;
            }
            let keep: HashSet<TaskKey> = wanted.iter().map(|w| w.key).collect();
            let State { open, held, lags, .. } = &mut *state;
            open.retain(|key, _| keep.contains(key) && !held.contains(key));
            lags.retain(|key, _| open.contains_key(key));
        }
        let mut lag = 0u64;
        let mut kept = 0u64;
        let committed = if wanted.is_empty() {
            // No copy to keep: the restorer lets go of its clients until one is wanted.
            restorer.release_unused();
            Ok(HashMap::new())
        } else {
            committed(offsets, &wanted)
        };
        match committed {
            Ok(committed) => {
                failing = false;
                for copy in &wanted {
                    if let Some(behind) = catch_up(standbys, shared, restorer, copy, &committed) {
                        lag += behind;
                        kept += 1;
                    }
                }
                metrics.standby_partitions.store(kept, Ordering::Relaxed);
                metrics.standby_lag.store(lag, Ordering::Relaxed);
                metrics.standby_passes.fetch_add(1, Ordering::Relaxed);
            }
            // The copies stay as they are (and their figures with them) until it can.
            Err(error) if !std::mem::replace(&mut failing, true) => tracing::warn!(
                "standby copies: cannot read the group's committed offsets ({error}); retrying every {PASS:?}"
            ),
            Err(_) => {}
        }
        let state = standbys.state();
        if state.stopped {
            break;
        }
        let _ = standbys.changed.wait_timeout(state, PASS);
    }
    let copies = {
        let mut state = standbys.state();
        state.lags.clear();
        std::mem::take(&mut state.open)
    };
    drop(copies);
    metrics.standby_partitions.store(0, Ordering::Relaxed);
}

/// The partitions this worker keeps copies of now.
fn wanted(standbys: &Standbys, shared: &Shared, partitions: &HashMap<String, i32>) -> Vec<Wanted> {
    let directory = shared.directory.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let tasks: Vec<(usize, &str, i32)> = shared
        .task_specs()
        .iter()
        .enumerate()
        .filter(|(_, task)| !task.tables.is_empty())
        .filter_map(|(index, task)| {
            let first = task.sources.first()?;
            Some((index, &*first.name, partitions.get(&*first.name).copied().unwrap_or(0)))
        })
        .collect();
    // Each table partition's owner as the directory says. The directory also lists workers
    // that crashed (until their record grows stale) and a worker restarted on the same URL
    // twice, neither of which is a place for copies: the workers are taken from the owners.
    let owners: HashMap<(usize, i32), String> = match &directory {
        Some(directory) => tasks
            .iter()
            .flat_map(|&(index, topic, count)| {
                (0..count).filter_map(move |p| Some(((index, p), directory.owner(topic, p)?)))
            })
            .collect(),
        None => HashMap::new(),
    };
    // The workers: those that own some partition of any source topic (a worker holding only
    // a stateless task's partitions counts, so that it is a place for copies too).
    let mut workers: Vec<String> = match &directory {
        Some(directory) => shared
            .task_specs()
            .iter()
            .flat_map(|task| task.sources.iter())
            .flat_map(|source| {
                let count = partitions.get(&*source.name).copied().unwrap_or(0);
                (0..count).filter_map(move |p| directory.owner(&source.name, p))
            })
            .collect(),
        None => Vec::new(),
    };
    workers.sort();
    workers.dedup();
    let held = standbys.state().held.clone();
    let mut wanted = Vec::new();
    for (index, _, count) in tasks {
        let task = &shared.task_specs()[index];
        for partition in 0..count {
            let key = (index, partition);
            if held.contains(&key) {
                continue;
            }
            if let Some(directory) = &directory {
                let owner = owners.get(&key).map(String::as_str);
                if !placed_here(directory.url(), owner, &workers, standbys.replicas) {
                    continue;
                }
            }
            wanted.push(Wanted {
                key,
                sources: task.sources.iter().map(|s| s.name.to_string()).collect(),
                tables: task
                    .tables
                    .iter()
                    .map(|t| (t.name, Arc::from(t.changelog_topic(&shared.app_id))))
                    .collect(),
            });
        }
    }
    wanted
}

/// The group's committed offsets of the wanted copies' sources.
fn committed(offsets: &BaseConsumer, wanted: &[Wanted]) -> crate::Result<HashMap<(String, i32), i64>> {
    let mut list = TopicPartitionList::new();
    for copy in wanted {
        for topic in &copy.sources {
            list.add_partition(topic, copy.key.1);
        }
    }
    let list = offsets
        .committed_offsets(list, Duration::from_secs(10))
        .map_err(|e| crate::Error::kafka("reading committed offsets", e))?;
    Ok(list
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some(((e.topic().to_string(), e.partition()), offset)),
            _ => None,
        })
        .collect())
}

/// One pass of one copy; returns how many changelog records it is behind after it, `None`
/// when it was not kept (its partition was assigned here, or its stores are still open
/// elsewhere in this process).
fn catch_up(
    standbys: &Standbys,
    shared: &Shared,
    restorer: &Restorer,
    copy: &Wanted,
    committed: &HashMap<(String, i32), i64>,
) -> Option<u64> {
    let (key, partition) = (copy.key, copy.key.1);
    let cancel = Arc::new(AtomicBool::new(false));
    let open = {
        let mut state = standbys.state();
        if state.stopped || state.held.contains(&key) {
            return None;
        }
        state.busy = Some((key, Arc::clone(&cancel)));
        state.open.get(&key).cloned()
    };
    let stores = match open {
        Some(stores) => Some(stores),
        None => {
            let mut stores = Vec::with_capacity(copy.tables.len());
            for (table, changelog) in &copy.tables {
                match shared.open_store_once(table, partition) {
                    Ok(store) => stores.push((store, Arc::clone(changelog))),
                    Err(error) => {
                        // The task that held it here is still closing it: the next pass.
                        tracing::debug!("standby copy of {table}[{partition}] not opened yet: {error}");
                        break;
                    }
                }
            }
            (stores.len() == copy.tables.len()).then_some(stores)
        }
    };
    let mut behind = None;
    if let Some(stores) = &stores {
        let offsets: Vec<(String, Option<i64>)> = copy
            .sources
            .iter()
            .map(|topic| (topic.clone(), committed.get(&(topic.clone(), partition)).copied()))
            .collect();
        let label = copy.sources.join("+");
        // A panic ends this pass of this copy, not the thread (`busy` must be cleared).
        let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            restore::restore_stores(stores, &label, partition, &offsets, restorer, Quiet::Standby(&cancel))
                .map(|restored| restored.and_then(|_| lag(restorer, stores, partition, &cancel)))
        }))
        .unwrap_or_else(|panic| Err(format!("the pass panicked: {}", crate::error::panic_text(&*panic))));
        match pass {
            Ok(lag) => behind = lag,
            Err(error) => tracing::warn!("standby copy of {label}[{partition}]: {error}"),
        }
    }
    let mut state = standbys.state();
    let keep = !cancel.load(Ordering::Relaxed) && !state.held.contains(&key) && !state.stopped;
    match stores {
        Some(stores) if keep => {
            state.open.insert(key, stores);
            match behind {
                Some(behind) => state.lags.insert(key, behind),
                None => state.lags.remove(&key),
            };
        }
        // Closed before the hand-over goes on (`Standbys::hold` waits for `busy`), unless a
        // stale lookup still reads them.
        stores => {
            let kept = state.open.remove(&key);
            state.lags.remove(&key);
            drop((stores, kept));
        }
    }
    state.busy = None;
    standbys.changed.notify_all();
    behind.filter(|_| keep)
}

/// How many changelog records a copy's stores are behind their changelogs' ends.
fn lag(restorer: &Restorer, stores: &Copy, partition: i32, cancel: &AtomicBool) -> Option<u64> {
    let mut behind = 0u64;
    for (store, changelog) in stores {
        let (low, high) = restorer.watermarks(changelog, partition, cancel)?;
        let next = store
            .checkpoint()
            .ok()
            .and_then(|c| c.changelog_offset)
            .map_or(low, |offset| (offset + 1).max(low));
        behind += u64::try_from(high - next).unwrap_or(0);
    }
    Some(behind)
}

#[cfg(test)]
mod tests {
    use super::placed_here;

    fn workers(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn copies_go_to_the_workers_after_the_owner() {
        let all = workers(&["a", "b", "c", "d"]);
        let keeping = |owner: &str, replicas: usize| -> Vec<&str> {
            ["a", "b", "c", "d"]
                .into_iter()
                .filter(|me| placed_here(me, Some(owner), &all, replicas))
                .collect()
        };
        assert_eq!(keeping("a", 1), vec!["b"]);
        assert_eq!(keeping("d", 1), vec!["a"], "from the start again");
        assert_eq!(keeping("c", 2), vec!["a", "d"]);
        assert_eq!(keeping("b", 3), vec!["a", "c", "d"], "every other worker");
        assert_eq!(keeping("b", 5), vec!["a", "c", "d"], "never the owner");
    }

    #[test]
    fn without_knowing_the_owner_every_worker_keeps_a_copy() {
        let all = workers(&["a", "b", "c"]);
        assert!(placed_here("a", None, &all, 1));
        assert!(placed_here("a", Some("gone"), &all, 1));
        assert!(placed_here("new", Some("b"), &all, 1), "a worker not listed yet");
        assert!(
            !placed_here("b", Some("b"), &[], 1),
            "the owner keeps no copy of its own"
        );
    }
}

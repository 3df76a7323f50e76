//! The group consumer and its rebalance handling. One thread polls; rebalances run in
//! its callback, so that state is safe before partitions move (ARCHITECTURE.md §3):
//! - assign: partition p of a task's sources starts the task on p (an agent, or a
//!   sub-topology of a pipeline); a task with tables stays paused while the restore thread
//!   brings its stores up to date from their changelogs and decides where it starts (see
//!   `restore.rs`), and is resumed after;
//! - revoke: each task finishes its record and makes a last cut, which is flushed, written
//!   and committed before the callback returns; stores close after.
//! - lost: the tasks are dropped without committing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::message::{Keep, Message, RawMessage, Spent};
use crate::metrics::Metrics;
use crate::store::{RocksDbStore, StateMemory, StateStore};
use crate::task::commit::{Cut, OffsetCommit, SourceOffset};
use crate::task::input::{Input, StreamCore};
use crate::task::run::{run_partition, TaskKind, TaskSpec};
use crate::task::sink::Sink;
use crate::task::tables::TableState;
use crate::task::TaskContext;
use crate::worker::restore::{self, RestoreJob, RestoreProgress, Restorer};
use crate::worker::runs;
use crate::{Error, Result};

/// How often a worker tells the directory again what it holds.
const DIRECTORY_REFRESH: Duration = Duration::from_secs(30);
/// How often a worker waiting for its group says so.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(4);
/// Batches buffered per partition between the poll thread and the agent.
const QUEUE: usize = 2;
/// Records the poll thread takes from librdkafka before handing them over.
const BURST: usize = 1024;
/// How long a revoked partition's agent may take to finish its record.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

struct Running {
    ctx: Arc<TaskContext>,
    tx: mpsc::Sender<Input>,
    join: tokio::task::JoinHandle<()>,
    /// The task's source partitions held here: each topic with its index among the sources.
    sources: Vec<(String, usize)>,
    /// Where each of those starts (`None`: from the beginning), until the consumer has a
    /// position there.
    starts: Vec<Option<i64>>,
    /// While the task's stores are restored: the restore, and records that arrived before
    /// its partitions were paused (handed over once the restore is done).
    restoring: Option<(Arc<RestoreProgress>, Vec<Parked>)>,
}

/// Records of one source (by index) that arrived while the task's stores were restored.
type Parked = (usize, Vec<Message>);

/// How revoked partitions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// A last cut, committed.
    Commit,
    /// Lost to the group (another member may hold them already): no commit.
    Lost,
    /// The worker failed: no commit.
    Drop,
}

/// A running task: its spec (by index) and partition.
pub(crate) type TaskKey = (usize, i32);

/// How many stores an assignment opens side by side.
const OPEN_THREADS: usize = 4;

/// A table's store in a task's partition: the task's partition and the table's position in
/// the task.
type StoreKey = (TaskKey, usize);

/// Everything the poll thread and the rebalance callback share.
pub(crate) struct Shared {
    pub app_id: String,
    tasks: Vec<Arc<TaskSpec>>,
    /// Each source topic's task and index among that task's sources.
    by_topic: HashMap<String, (usize, usize)>,
    pub data_dir: PathBuf,
    pub runtime: tokio::runtime::Handle,
    pub sink: Arc<dyn Sink>,
    pub cuts: Mutex<Option<std::sync::mpsc::Sender<Cut>>>,
    pub metrics: Arc<Metrics>,
    /// Jobs for the restore thread.
    restores: std::sync::mpsc::Sender<Arc<RestoreProgress>>,
    pub commit_interval: Duration,
    /// What each table partition's cache may hold (`App::table_cache_bytes`, within
    /// `--state-memory` when it is set).
    pub cache_budget: Arc<crate::task::cache_budget::CacheBudget>,
    running: Mutex<HashMap<TaskKey, Running>>,
    /// Polled records not yet handed over, one batch per (topic, partition), in order.
    pending: Mutex<runs::Batches<Message>>,
    /// Since when the worker waits for the group to give it partitions (from its start, and
    /// from each revoke until the next assignment).
    waiting: Mutex<Option<std::time::Instant>>,
    /// Whether the broker is the embedded broker (its joins are slow, see `worker/mod.rs`).
    pub on_embedded: bool,
    /// The worker's global tables.
    globals: crate::task::Globals,
    /// Exactly-once: the worker's rounds of cuts (`None` at-least-once).
    pub rounds: Option<Arc<crate::task::round::Rounds>>,
    /// Each table's task (by index) and its index among the task's tables.
    table_tasks: HashMap<&'static str, (usize, usize)>,
    /// Where the worker says which partitions it holds (with a web server).
    pub directory: Mutex<Option<Arc<crate::web::directory::Directory>>>,
    /// The partitions whose lag was last published (`streams_consumer_lag`).
    lag_published: Mutex<Vec<crate::metrics::TopicPartition>>,
    /// The memory budget the worker's stores share.
    memory: StateMemory,
    /// What the web server sees of `running`: each task held here, with its context once
    /// restored (`None` while restoring). Its own lock, never held while waiting: the poll
    /// thread keeps `running` locked while it waits for a task's queue, and lookups must
    /// not wait for that.
    held: Mutex<HashMap<TaskKey, Option<Arc<TaskContext>>>>,
    /// When the directory was last told what this worker holds.
    published: Mutex<std::time::Instant>,
    /// When partitions were last assigned, revoked, resumed or started again (see
    /// [`Shared::keep_resumed`]).
    moved: Mutex<std::time::Instant>,
    /// Records the tasks are done with, freed by the poll thread (see [`Spent`]).
    pub spent: Arc<Spent>,
    /// Standby copies of partitions other workers hold (`--standby-replicas`).
    pub standbys: Arc<super::standby::Standbys>,
    /// Where the assigned partitions' records go, read a batch at a time by the poll
    /// thread (opened once the consumer exists, closed before it is dropped).
    pub records: Arc<crate::message::queue::Records>,
    /// Set when the worker is asked to stop.
    stop: Arc<AtomicBool>,
    /// How long an assignment waits for committed offsets the broker holds back.
    held_back_wait: Duration,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        app_id: String,
        tasks: Vec<TaskSpec>,
        data_dir: PathBuf,
        runtime: tokio::runtime::Handle,
        sink: Arc<dyn Sink>,
        cuts: std::sync::mpsc::Sender<Cut>,
        metrics: Arc<Metrics>,
        restorers: Vec<Restorer>,
        commit_interval: Duration,
        cache_budget: Arc<crate::task::cache_budget::CacheBudget>,
        on_embedded: bool,
        globals: crate::task::Globals,
        rounds: Option<Arc<crate::task::round::Rounds>>,
        memory: StateMemory,
        standbys: Arc<super::standby::Standbys>,
        stop: Arc<AtomicBool>,
        max_poll_interval: Duration,
    ) -> Result<Self> {
        let records: Arc<crate::message::queue::Records> = Arc::default();
        let restores = {
            let records = Arc::clone(&records);
            // A restore's end ends the poll thread's wait: the partition resumes at once
            // rather than at the wait's end (up to `IDLE_WAIT` later).
            restore::spawn(restorers, Arc::clone(&metrics), move || records.wake())?
        };
        let mut by_topic = HashMap::new();
        let mut table_tasks = HashMap::new();
        for (index, task) in tasks.iter().enumerate() {
            for (source, topic) in task.sources.iter().enumerate() {
                by_topic.insert(topic.name.to_string(), (index, source));
            }
            for (position, table) in task.tables.iter().enumerate() {
                table_tasks.insert(table.name, (index, position));
            }
        }
        Ok(Self {
            app_id,
            tasks: tasks.into_iter().map(Arc::new).collect(),
            by_topic,
            data_dir,
            runtime,
            sink,
            cuts: Mutex::new(Some(cuts)),
            metrics,
            restores,
            commit_interval,
            cache_budget,
            running: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            waiting: Mutex::new(Some(std::time::Instant::now())),
            on_embedded,
            globals,
            rounds,
            table_tasks,
            directory: Mutex::new(None),
            lag_published: Mutex::new(Vec::new()),
            memory,
            held: Mutex::new(HashMap::new()),
            published: Mutex::new(std::time::Instant::now()),
            moved: Mutex::new(std::time::Instant::now()),
            spent: Arc::default(),
            standbys,
            records,
            stop,
            held_back_wait: held_back_wait(max_poll_interval),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, Option<Arc<TaskContext>>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The source partitions of every task held here (restored or not).
    pub(crate) fn held_sources(&self) -> Vec<(String, i32)> {
        self.running()
            .iter()
            .flat_map(|((_, partition), task)| task.sources.iter().map(move |(topic, _)| (topic.clone(), *partition)))
            .collect()
    }

    /// Tells the directory (if the worker has a web server) what the worker holds now.
    fn publish_held(&self, member: Option<String>) {
        let directory = self.directory.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(directory) = directory {
            directory.publish(member, self.held_sources());
            *self.published.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        }
    }

    /// Tells the directory again what this worker holds, every 30 s (a record lost on its
    /// way, or compacted under a reader that started late, is made good so).
    fn republish_held(&self, consumer: &BaseConsumer<WorkerContext>) {
        let due = self.published.lock().unwrap_or_else(|p| p.into_inner()).elapsed() >= DIRECTORY_REFRESH;
        if due && self.waiting_since().is_none() {
            self.publish_held(member_id(consumer));
        }
    }

    /// Sets `streams_consumer_lag` of every held partition: the broker's end offset
    /// (as the last fetch response had it) less the consumer's position; partitions no
    /// longer assigned lose theirs. Called by the poll thread.
    fn update_lag(&self, consumer: &BaseConsumer<WorkerContext>) {
        let positions = {
            let running = self.running();
            let held = running
                .iter()
                .flat_map(|((_, partition), task)| task.sources.iter().map(|(topic, _)| (topic.as_str(), *partition)));
            positions(consumer.client(), held)
        };
        let lag = &self.metrics.families.lag;
        let mut now = Vec::new();
        for element in positions.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let Some((_, high)) = cached_watermarks(consumer, topic, partition) else {
                continue;
            };
            let Offset::Offset(position) = element.offset() else {
                continue;
            };
            let labels = crate::metrics::TopicPartition::new(topic, partition);
            lag.get_or_create(&labels).set((high - position).max(0));
            now.push(labels);
        }
        let mut published = self.lag_published.lock().unwrap_or_else(|p| p.into_inner());
        for gone in published.iter().filter(|labels| !now.contains(labels)) {
            lag.remove(gone);
        }
        *published = now;
    }

    /// Publishes what the stores' shared memory holds (`streams_state_memory_bytes`).
    fn update_state_memory(&self) {
        let metrics = &self.metrics;
        metrics
            .state_memory_bytes
            .store(self.memory.used() as u64, Ordering::Relaxed);
        metrics
            .state_memory_limit_bytes
            .store(self.memory.limit() as u64, Ordering::Relaxed);
    }

    /// Resumes, again, the partitions of every task that is not restoring (called once a
    /// second, for [`KEEP_RESUMING`] after partitions were last assigned, revoked, resumed
    /// or started again). Nothing else pauses them, so this changes nothing unless a resume
    /// was lost: librdkafka can drop a resume issued while a fresh assignment restarts the
    /// partition's fetch (it counts as an outdated op, and `resume` still returns Ok), which
    /// would leave a restored partition paused for good. Resuming a partition that is not
    /// paused is a no-op there, but not free: each resume is an op for librdkafka's main
    /// thread and a reply, most of that thread's wake-ups on an idle worker — so the guard
    /// ends once the partitions have stayed put long enough for any such race to be over.
    ///
    /// Routes every held partition's records to the batch queue again, too (see
    /// [`crate::message::queue::Records::forward`]).
    fn keep_resumed(&self, consumer: &BaseConsumer<WorkerContext>) {
        if self.moved.lock().unwrap_or_else(|p| p.into_inner()).elapsed() > KEEP_RESUMING {
            return;
        }
        let mut list = TopicPartitionList::new();
        let mut held = Vec::new();
        for ((_, partition), task) in self.running().iter() {
            for (topic, _) in &task.sources {
                held.push((topic.clone(), *partition));
                if task.restoring.is_none() {
                    list.add_partition(topic, *partition);
                }
            }
        }
        let held: Vec<(&str, i32)> = held
            .iter()
            .map(|(topic, partition)| (topic.as_str(), *partition))
            .collect();
        self.records.forward(consumer.client(), &held);
        if list.count() > 0 {
            if let Err(error) = consumer.resume(&list) {
                tracing::debug!("resuming processed partitions again: {error}");
            }
        }
    }

    /// The source topics of every task (what the consumer subscribes to).
    pub(crate) fn source_topics(&self) -> Vec<String> {
        self.by_topic.keys().cloned().collect()
    }

    /// Partitions were assigned, revoked, resumed or started again: [`Shared::keep_resumed`]
    /// guards them for a while.
    fn moved(&self) {
        *self.moved.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    }

    fn set_waiting(&self, waiting: bool) {
        let mut since = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        *since = waiting.then(|| since.unwrap_or_else(std::time::Instant::now));
    }

    fn waiting_since(&self) -> Option<std::time::Instant> {
        *self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Directory of the store of `table`'s partition `partition`.
    pub(crate) fn store_dir(&self, table: &str, partition: i32) -> PathBuf {
        crate::store::partition_dir(&self.data_dir, table, partition)
    }

    /// Keeps a polled record until [`Shared::hand_over`], in its partition's batch.
    /// `consumer` keeps the consumer alive while the record is (see [`Message::from_kafka`]).
    fn buffer(&self, message: BorrowedMessage<'_>, consumer: &Keep) {
        use rdkafka::message::Message as _;
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let index = runs::batch_of(&mut pending, message.topic(), message.partition());
        pending[index].2.push(Message::from_kafka(message, consumer));
    }

    /// Keeps records taken in a batch until [`Shared::hand_over`], each in its partition's
    /// batch, in order (leaving `taken` empty). Consumer errors among them are logged
    /// (`last_error`: when one last was). Returns how many records there were.
    fn buffer_taken(&self, taken: &mut Vec<RawMessage>, consumer: &Keep, last_error: &mut std::time::Instant) -> usize {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let skip = |message: RawMessage| {
            if last_error.elapsed() > Duration::from_secs(5) {
                tracing::warn!(
                    "consumer: {} ({}[{}])",
                    message.error_text(),
                    message.topic(),
                    message.partition()
                );
                *last_error = std::time::Instant::now();
            }
        };
        runs::into_batches(&mut pending, taken, skip, |message| {
            Message::from_batch(message, consumer)
        })
    }

    /// Hands buffered records to their tasks, one batch per partition, in order, waiting
    /// while a queue is full. Runs before every rebalance, so no record fetched under an old
    /// assignment reaches a task of a new one.
    pub(crate) fn hand_over(&self) {
        let batches = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batches.is_empty() {
            return;
        }
        let mut running = self.running();
        for (topic, partition, batch) in batches {
            let Some(&(task, source)) = self.by_topic.get(&topic) else {
                continue;
            };
            let Some(running) = running.get_mut(&(task, partition)) else {
                tracing::debug!("records for unassigned partition {topic}[{partition}] ignored");
                continue;
            };
            if let Some((_, parked)) = &mut running.restoring {
                parked.push((source, batch));
                continue;
            }
            if running.tx.blocking_send(Input::Records(source, batch)).is_err() {
                tracing::debug!("task ended; records will be read again by its next owner");
            }
        }
    }

    /// The tasks of the app, by index.
    pub(crate) fn task_specs(&self) -> &[Arc<TaskSpec>] {
        &self.tasks
    }

    /// Opens the store of `table`'s partition `partition` once: an error when it is open
    /// elsewhere in this process.
    pub(crate) fn open_store_once(&self, table: &str, partition: i32) -> Result<Arc<dyn StateStore>> {
        Ok(Arc::new(RocksDbStore::open_in(
            &self.store_dir(table, partition),
            &self.memory,
        )?))
    }

    fn open_store(&self, table: &str, partition: i32) -> Result<Arc<dyn StateStore>> {
        let dir = self.store_dir(table, partition);
        let mut attempt = 0;
        loop {
            match RocksDbStore::open_in(&dir, &self.memory) {
                Ok(store) => return Ok(Arc::new(store)),
                // The previous owner of this partition (in this process) may still be closing it.
                Err(error) if attempt < 50 => {
                    attempt += 1;
                    tracing::debug!("store {} busy ({error}); retrying", dir.display());
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Opens the stores of `wanted` (each a task's partition, the table's position in the
    /// task, its name) on up to [`OPEN_THREADS`] threads; the first failure fails them all.
    fn open_stores(&self, wanted: &[(TaskKey, usize, &'static str)]) -> Result<HashMap<StoreKey, Arc<dyn StateStore>>> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        // Once an open fails the assignment fails: nothing more is opened (each open may
        // retry a busy store for seconds).
        let failed = AtomicBool::new(false);
        let open = || {
            let mut opened = Vec::new();
            while !failed.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(key, position, name)) = wanted.get(n) else {
                    break;
                };
                let store = self.open_store(name, key.1);
                if store.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                opened.push(((key, position), store));
            }
            opened
        };
        let helpers = wanted.len().min(OPEN_THREADS).saturating_sub(1);
        let results: Vec<(StoreKey, Result<Arc<dyn StateStore>>)> = std::thread::scope(|scope| {
            // This thread opens stores too; helpers that cannot be started leave it more.
            let handles: Vec<_> = (0..helpers)
                .filter_map(|_| {
                    std::thread::Builder::new()
                        .name("store-open".into())
                        .spawn_scoped(scope, open)
                        .ok()
                })
                .collect();
            let mut all = open();
            for handle in handles {
                match handle.join() {
                    Ok(opened) => all.extend(opened),
                    Err(panic) => all.push((
                        ((usize::MAX, -1), 0),
                        Err(Error::Config(format!(
                            "opening a store panicked: {}",
                            crate::error::panic_text(&*panic)
                        ))),
                    )),
                }
            }
            all
        });
        results
            .into_iter()
            .map(|(key, store)| store.map(|store| (key, store)))
            .collect()
    }

    /// Whether the worker is stopping: its last cuts are made (the cuts' channel is gone),
    /// so it takes no partitions any more.
    fn stopping(&self) -> bool {
        self.cuts.lock().map_or(true, |cuts| cuts.is_none())
    }

    /// Whether the worker holds its partitions: it was given an assignment and none of its
    /// tasks is being restored.
    fn settled(&self) -> bool {
        self.metrics.assignments.load(Ordering::Relaxed) > 0 && self.running().values().all(|t| t.restoring.is_none())
    }

    /// Starts the tasks of newly assigned partitions; sets in `list` the offset each source
    /// partition starts from. Returns the partitions whose tasks' stores are being restored:
    /// they must be paused.
    fn assign(
        &self,
        consumer: &BaseConsumer<WorkerContext>,
        list: &mut TopicPartitionList,
        known: &HashMap<(String, i32), i64>,
    ) -> Result<TopicPartitionList> {
        let mut restoring = TopicPartitionList::new();
        let Committed {
            offsets: mut committed,
            stream_times,
            clocks,
        } = committed_offsets(consumer, list, self.held_back_wait, &|| {
            self.stop.load(Ordering::Relaxed) || self.metrics.failed() || self.stopping()
        })?;
        // Offsets this worker committed itself (in its transactions) count too.
        for (partition, next) in known {
            let slot = committed.entry(partition.clone()).or_insert(*next);
            *slot = (*slot).max(*next);
        }
        // The assigned partitions by task: partition p of each of a task's sources.
        let mut groups: std::collections::BTreeMap<TaskKey, Vec<(String, usize)>> = Default::default();
        for element in list.elements() {
            let topic = element.topic().to_string();
            let Some(&(task, source)) = self.by_topic.get(&topic) else {
                continue;
            };
            groups
                .entry((task, element.partition()))
                .or_default()
                .push((topic, source));
        }
        // The stores of the tasks with tables, opened side by side (an open is mostly file
        // I/O: one after the other, 32 partitions took a quarter of a second). A standby copy
        // of a partition kept here closes first: its stores are the task's, caught up as far
        // as the group had committed.
        let mut wanted = Vec::new();
        for (&(index, partition), sources) in &groups {
            let spec = &self.tasks[index];
            if spec.tables.is_empty() || sources.len() < spec.sources.len() {
                continue;
            }
            self.standbys.hold((index, partition));
            for (position, table) in spec.tables.iter().enumerate() {
                wanted.push(((index, partition), position, table.name));
            }
        }
        if self.stopping() {
            return Err(Error::Stopping);
        }
        let mut opened = self.open_stores(&wanted)?;
        for ((index, partition), mut sources) in groups {
            sources.sort_by_key(|(_, source)| *source);
            let spec = Arc::clone(&self.tasks[index]);
            if sources.len() < spec.sources.len() {
                let what = if spec.kind == TaskKind::Agent {
                    "agent"
                } else {
                    "pipeline"
                };
                let missing = format!(
                    "{what} `{}`: only {} of its {} sources' partition {partition} are assigned here \
                     (do all workers of the group run the same version of the app?)",
                    spec.name,
                    sources.len(),
                    spec.sources.len()
                );
                if !spec.tables.is_empty() {
                    // Its tables' partition would have two writers: the worker that holds the
                    // other sources updates the same changelog partition.
                    return Err(crate::Error::Config(format!(
                        "{missing}; its tables need all of them on one worker"
                    )));
                }
                tracing::warn!("{missing}");
            }
            let mut tables = Vec::new();
            for (position, table) in spec.tables.iter().enumerate() {
                let Some(store) = opened.remove(&((index, partition), position)) else {
                    return Err(Error::Config(format!(
                        "table `{}` of partition {partition}: its store was not opened",
                        table.name
                    )));
                };
                tables.push(TableState::new(
                    table,
                    table.changelog_topic(&self.app_id),
                    store,
                    self.cache_budget.share(),
                ));
            }
            let stores: Vec<(Arc<dyn StateStore>, Arc<str>)> = tables
                .iter()
                .map(|t| (Arc::clone(&t.store), Arc::clone(&t.changelog)))
                .collect();
            let mut starts = Vec::with_capacity(sources.len());
            for (topic, _) in &sources {
                let start = committed.get(&(topic.clone(), partition)).copied();
                // From the committed offset (or the beginning): once the stores are restored,
                // the restore may move the start further (`Starts`).
                let offset = match start {
                    Some(start) => Offset::Offset(start),
                    None if !stores.is_empty() => Offset::Beginning,
                    None => Offset::Invalid,
                };
                if offset != Offset::Invalid {
                    list.set_partition_offset(topic, partition, offset)
                        .map_err(|e| Error::kafka("assign", e))?;
                }
                starts.push((topic.clone(), start));
            }
            let cuts = self.cuts.lock().ok().and_then(|c| c.clone()).ok_or(Error::Stopping)?;
            let ctx = Arc::new(TaskContext::new(
                &spec,
                partition,
                tables,
                Arc::clone(&self.sink),
                cuts,
                Arc::clone(&self.metrics),
                Arc::clone(&self.globals),
            ));
            // Stream time as the last commit of these sources left it (its stores may know a
            // later one: the restore takes the larger).
            let committed_time = sources
                .iter()
                .filter_map(|(topic, _)| stream_times.get(&(topic.clone(), partition)).copied())
                .max();
            ctx.restore_stream_time(committed_time);
            for (topic, _) in &sources {
                if let Some(clocks) = clocks.get(&(topic.clone(), partition)) {
                    ctx.restore_clocks(clocks);
                }
            }
            let (tx, rx) = mpsc::channel(QUEUE * spec.sources.len().max(1));
            let job = (!stores.is_empty()).then(|| RestoreJob {
                topic: sources.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join("+"),
                partition,
                tables: stores,
                committed: starts.clone(),
                ctx: Arc::clone(&ctx),
            });
            let core =
                StreamCore::new(Arc::clone(&ctx), rx, self.commit_interval).with_returns(Arc::clone(&self.spent));
            let core = match &self.rounds {
                Some(rounds) => core.with_rounds(Arc::clone(rounds)),
                None => core,
            };
            let join = self.runtime.spawn(run_partition(Arc::clone(&spec), core));
            let label = sources
                .iter()
                .map(|(topic, _)| format!("{topic}[{partition}]"))
                .collect::<Vec<_>>()
                .join(", ");
            let committed_text = starts
                .iter()
                .map(|(_, start)| start.map_or_else(|| "none".to_string(), |s| s.to_string()))
                .collect::<Vec<_>>()
                .join(", ");
            let restoring_progress = match job {
                Some(job) => {
                    let progress = RestoreProgress::of(job);
                    self.restores.send(Arc::clone(&progress)).map_err(|_| {
                        Error::Config("the restore threads have ended: no store can be restored".into())
                    })?;
                    for (topic, _) in &sources {
                        restoring.add_partition(topic, partition);
                    }
                    tracing::info!(
                        "assigned {label} to {} (committed offset {committed_text}); restoring its tables",
                        spec.name
                    );
                    Some((progress, Vec::new()))
                }
                None => {
                    tracing::info!("assigned {label} to {} (committed offset {committed_text})", spec.name);
                    self.metrics.assigned.fetch_add(sources.len() as u64, Ordering::Relaxed);
                    None
                }
            };
            let serving = restoring_progress.is_none().then(|| Arc::clone(&ctx));
            self.held().insert((index, partition), serving);
            self.running().insert(
                (index, partition),
                Running {
                    ctx,
                    tx,
                    join,
                    starts: starts.iter().map(|(_, start)| *start).collect(),
                    sources: sources.clone(),
                    restoring: restoring_progress,
                },
            );
        }
        Ok(restoring)
    }

    /// Resumes the tasks whose restores are done, records that arrived meanwhile first. A
    /// restore that failed stops the worker. Called by the poll thread.
    fn resume_restored(&self, consumer: &BaseConsumer<WorkerContext>) {
        let mut running = self.running();
        for ((index, partition), task) in running.iter_mut() {
            let index = *index;
            let Some(outcome) = task.restoring.as_ref().and_then(|(progress, _)| progress.outcome()) else {
                continue;
            };
            let starts = match outcome {
                Ok(starts) => starts,
                Err(error) => {
                    self.metrics.fail(error);
                    continue;
                }
            };
            let Some((_, mut parked)) = task.restoring.take() else {
                continue;
            };
            self.held().insert((index, *partition), Some(Arc::clone(&task.ctx)));
            for (n, (topic, source)) in task.sources.iter().enumerate() {
                let Some(start) = starts.offsets.iter().find(|(t, _)| t == topic).map(|(_, s)| *s) else {
                    continue;
                };
                if let Some(slot) = task.starts.get_mut(n) {
                    *slot = Some(start);
                }
                if starts.moved {
                    // Fetch from the decided start. Records fetched before it are dropped (the
                    // seek discards what librdkafka had prefetched); if the seek fails, the
                    // task skips records before the start instead.
                    match consumer.seek(topic, *partition, Offset::Offset(start), Duration::from_secs(10)) {
                        Ok(()) => parked.retain(|(s, _)| s != source),
                        Err(error) => {
                            tracing::warn!(
                                "cannot seek {topic}[{partition}] to {start} ({error}); skipping records up to it"
                            )
                        }
                    }
                }
                if task.tx.blocking_send(Input::StartAt(*source, start)).is_err() {
                    tracing::debug!("task ended before its start");
                }
            }
            for (source, batch) in parked {
                if task.tx.blocking_send(Input::Records(source, batch)).is_err() {
                    tracing::debug!("task ended; records will be read again by its next owner");
                }
            }
            let mut list = TopicPartitionList::new();
            for (topic, _) in &task.sources {
                list.add_partition(topic, *partition);
            }
            self.moved();
            match consumer.resume(&list) {
                Ok(()) => tracing::info!("{} on partition {partition} restored; processing", task.ctx.name),
                Err(error) => self.metrics.fail(format!(
                    "cannot resume partition {partition} of {}: {error}",
                    task.ctx.name
                )),
            }
            self.metrics
                .assigned
                .fetch_add(task.sources.len() as u64, Ordering::Relaxed);
        }
    }

    /// Exactly-once, after a transaction was aborted: every task dropped what it did since
    /// the last committed round; they all start again on the same partitions, from the
    /// committed offsets and their stores (which hold only committed state). Called by the
    /// poll thread.
    fn restart_tasks(&self, consumer: &BaseConsumer<WorkerContext>) {
        self.moved();
        let mut list = match consumer.assignment() {
            Ok(list) => list,
            Err(error) => {
                self.metrics.fail(format!(
                    "cannot read the assignment to start again after an abort: {error}"
                ));
                return;
            }
        };
        self.hand_over();
        // Where each task's last committed round left its sources: what this worker's own
        // transactions committed (the group's offsets say the same on Kafka) — unless the
        // last round's outcome is unknown: then only the group knows (its offsets are
        // fetched as stable, after that transaction's end).
        let unknown = self.rounds.as_ref().is_some_and(|rounds| rounds.take_unknown());
        let mut known: HashMap<(String, i32), i64> = HashMap::new();
        for task in self.running().values().filter(|_| !unknown) {
            for (topic, last) in task.ctx.committed_positions() {
                known.insert((topic.to_string(), task.ctx.partition), last + 1);
            }
        }
        let _ = self.revoke(None, Release::Drop);
        tracing::info!(
            "starting {} partitions again from their last committed state",
            list.count()
        );
        let restoring = match self.assign(consumer, &mut list, &known) {
            Ok(restoring) => restoring,
            Err(Error::Stopping) => {
                // The worker stops (or failed) meanwhile: nothing to start again.
                tracing::debug!("the worker stops: its partitions are not started again after the abort");
                return;
            }
            Err(error) => {
                self.metrics.fail(format!("cannot start partitions again: {error}"));
                return;
            }
        };
        // The partitions stay assigned; this thread pauses them and seeks each to its start
        // (a seek drops what was fetched before it). Assigning them again would stop and
        // start their fetchers, and librdkafka starts a re-assigned partition on its own
        // thread once the stop is done: a pause from here in between can outdate that start,
        // and the partition then never fetches again (an abort lost a partition's input so,
        // 1 run in ~15).
        if restoring.count() > 0 {
            if let Err(error) = consumer.pause(&restoring) {
                self.metrics
                    .fail(format!("cannot pause partitions while restoring: {error}"));
                return;
            }
        }
        let mut starts = TopicPartitionList::new();
        for element in list.elements() {
            let start = match element.offset() {
                offset @ (Offset::Offset(_) | Offset::Beginning | Offset::End) => offset,
                // No committed offset and no store: librdkafka's `auto.offset.reset` decides,
                // as it did at the assignment.
                _ => Offset::Invalid,
            };
            if let Err(error) = starts.add_partition_offset(element.topic(), element.partition(), start) {
                self.metrics.fail(format!("cannot start partitions again: {error}"));
                return;
            }
        }
        if starts.count() == 0 {
            // Nothing assigned (the group took the partitions, which caused the abort).
            return;
        }
        // A seek can be outdated by an operation of librdkafka's own on the partition (a
        // rebalance starting): those seeks are made again, a moment later.
        let mut refused = Vec::new();
        for attempt in 0..3_u64 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 * attempt * attempt));
            }
            refused.clear();
            let mut again = TopicPartitionList::new();
            match consumer.seek_partitions(starts.clone(), Duration::from_secs(10)) {
                Ok(result) => {
                    for element in result.elements() {
                        match element.error() {
                            Ok(()) => {}
                            // Not started yet (its committed offset is still being fetched,
                            // or its previous fetcher is still stopping): nothing was fetched
                            // from it, and it starts where the assignment says.
                            Err(KafkaError::OffsetFetch(
                                rdkafka::error::RDKafkaErrorCode::State
                                | rdkafka::error::RDKafkaErrorCode::PreviousInProgress,
                            )) => {}
                            Err(error) => {
                                refused.push(format!("{}[{}]: {error}", element.topic(), element.partition()));
                                let _ =
                                    again.add_partition_offset(element.topic(), element.partition(), element.offset());
                            }
                        }
                    }
                }
                Err(error) => {
                    refused.push(error.to_string());
                    again = starts.clone();
                }
            }
            if refused.is_empty() {
                return;
            }
            starts = again;
        }
        // A partition left where it was would skip the aborted round's input.
        self.metrics.fail(format!(
            "cannot start partitions again from their committed offsets after an abort ({}); \
             stopping: their next owner starts from the committed state",
            refused.join(", ")
        ));
    }

    /// Tells each task with several sources which of them have records on the broker that
    /// it has not been given (KIP-695): the broker's end offset (as the last fetch response
    /// had it) past the consumer's position there. Called by the poll thread after it hands
    /// records over.
    fn update_unread(&self, consumer: &BaseConsumer<WorkerContext>) {
        let running = self.running();
        if running.values().all(|task| task.sources.len() < 2) {
            return;
        }
        let held = running
            .iter()
            .filter(|(_, task)| task.sources.len() >= 2 && task.restoring.is_none())
            .flat_map(|((_, partition), task)| task.sources.iter().map(|(topic, _)| (topic.as_str(), *partition)));
        let positions: HashMap<(String, i32), i64> = positions(consumer.client(), held)
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some(((e.topic().to_string(), e.partition()), offset)),
                _ => None,
            })
            .collect();
        for ((_, partition), task) in running.iter() {
            if task.sources.len() < 2 || task.restoring.is_some() {
                continue;
            }
            for (n, (topic, source)) in task.sources.iter().enumerate() {
                let unread = match cached_watermarks(consumer, topic, *partition) {
                    Some((low, high)) if high >= 0 => {
                        let start = task.starts.get(n).copied().flatten().unwrap_or(low);
                        let at = positions.get(&(topic.clone(), *partition)).copied().unwrap_or(start);
                        at < high
                    }
                    // Not known yet (no fetch response): as if there were.
                    _ => true,
                };
                task.ctx.set_unread(*source, unread);
            }
        }
    }

    /// Finishes the tasks of `partitions` (all when `None`): a last cut committed before this
    /// returns (or, when the partitions were lost or the worker failed, nothing committed).
    /// Returns the tasks whose last commit failed, with why.
    pub(crate) fn revoke(&self, partitions: Option<&[(String, i32)]>, release: Release) -> Vec<String> {
        let mut failed = Vec::new();
        if release == Release::Lost {
            // Exactly-once: the open transaction holds what the lost tasks sent; it must not
            // commit (Kafka Streams aborts it too), and the other tasks start again after it.
            if let Some(rounds) = &self.rounds {
                rounds.request_abort();
            }
        }
        let mut finishing = Vec::new();
        {
            let mut running = self.running();
            let mut selected: Vec<TaskKey> = match partitions {
                Some(list) => list
                    .iter()
                    .filter_map(|(topic, partition)| Some((self.by_topic.get(topic)?.0, *partition)))
                    .collect(),
                None => running.keys().copied().collect(),
            };
            selected.sort_unstable();
            selected.dedup();
            // Restores of revoked tasks stop first, all of them, before any is waited for.
            for key in &selected {
                if let Some((progress, _)) = running.get(key).and_then(|task| task.restoring.as_ref()) {
                    progress.cancel();
                }
            }
            for key in selected {
                let Some(task) = running.remove(&key) else { continue };
                self.held().remove(&key);
                // From the next pass, a standby copy may be kept here (once the task has
                // closed the stores).
                self.standbys.release(key);
                // A lookup's scan of its stores stops: they close with the task.
                task.ctx.finishing.store(true, Ordering::Relaxed);
                let label = format!("{}[{}]", task.ctx.name, key.1);
                match &task.restoring {
                    // Revoked while restoring: wait until the restore lets go of the stores
                    // (records parked meanwhile were never processed).
                    Some((progress, _)) => progress.wait_released(FINISH_TIMEOUT),
                    None => {
                        self.metrics
                            .assigned
                            .fetch_sub(task.sources.len() as u64, Ordering::Relaxed);
                    }
                }
                match release {
                    Release::Commit => {}
                    Release::Lost => {
                        tracing::warn!("{label} was lost; dropped without committing");
                        self.metrics
                            .lost
                            .fetch_add(task.sources.len() as u64, Ordering::Relaxed);
                        task.join.abort();
                        task.ctx.written.close();
                        continue;
                    }
                    Release::Drop => {
                        tracing::warn!("{label} dropped without committing");
                        task.join.abort();
                        task.ctx.written.close();
                        continue;
                    }
                }
                let (ack, acked) = std::sync::mpsc::channel();
                task.ctx.request_finish();
                if task.tx.blocking_send(Input::Finish(ack)).is_err() {
                    tracing::warn!("{label}: its task had already stopped");
                }
                let partitions: Vec<String> = task
                    .sources
                    .iter()
                    .map(|(topic, _)| format!("{topic}[{}]", key.1))
                    .collect();
                finishing.push((partitions.join(", "), acked, task.join, Arc::clone(&task.ctx.written)));
            }
        }
        for (label, acked, join, written) in finishing {
            match acked.recv_timeout(FINISH_TIMEOUT) {
                Ok(Ok(())) => tracing::info!("{label} committed and released"),
                Ok(Err(error)) => {
                    tracing::warn!("{label} released; its last commit failed: {error}");
                    failed.push(format!("{label}: {error}"));
                }
                Err(gone) => {
                    let why = match gone {
                        std::sync::mpsc::RecvTimeoutError::Timeout => {
                            format!("its task did not finish within {FINISH_TIMEOUT:?}")
                        }
                        std::sync::mpsc::RecvTimeoutError::Disconnected => "its task had ended".to_string(),
                    };
                    tracing::error!("{label}: {why}; released without a commit");
                    failed.push(format!("{label}: {why}"));
                    // Exactly-once: what it sent since the last round is in the open
                    // transaction without its offsets; the next owner processes that input
                    // again, so the transaction must not commit.
                    if let Some(rounds) = &self.rounds {
                        rounds.request_abort();
                    }
                    join.abort();
                    written.close();
                }
            }
            let abort = join.abort_handle();
            let ended = self
                .runtime
                .block_on(async move { tokio::time::timeout(Duration::from_secs(10), join).await });
            if ended.is_err() {
                // Its commit is made (or reported failed): what it still does is dropped.
                tracing::warn!("{label}: its task did not end within 10 s of its last commit; aborted");
                abort.abort();
            }
        }
        failed
    }
}

/// The worker as its web server sees it; gone once the worker has stopped.
pub(crate) struct WebView(pub std::sync::Weak<Shared>);

impl crate::web::Local for WebView {
    fn held(&self, table: &str, partition: i32) -> crate::web::Held {
        use crate::web::Held;
        let Some(shared) = self.0.upgrade() else {
            return Held::NotHere;
        };
        let Some(&(task, index)) = shared.table_tasks.get(table) else {
            return Held::NotHere;
        };
        let held = shared.held();
        match held.get(&(task, partition)) {
            None => Held::NotHere,
            Some(None) => Held::Restoring,
            Some(Some(ctx)) => Held::Here(Arc::clone(ctx), index),
        }
    }

    fn rebalancing(&self) -> bool {
        self.0.upgrade().is_none_or(|shared| shared.waiting_since().is_some())
    }

    fn standby(&self, table: &str, partition: i32) -> Option<(Arc<dyn StateStore>, u64)> {
        let shared = self.0.upgrade()?;
        let &(task, index) = shared.table_tasks.get(table)?;
        shared.standbys.copy((task, partition), index)
    }

    fn restoring(&self) -> usize {
        self.0
            .upgrade()
            .map_or(0, |shared| shared.held().values().filter(|ctx| ctx.is_none()).count())
    }
}

/// What the group has committed for some partitions.
#[derive(Default)]
struct Committed {
    /// The next offset to read.
    offsets: HashMap<(String, i32), i64>,
    /// The stream time of the task that committed it (from the offset's metadata).
    stream_times: HashMap<(String, i32), i64>,
    /// Its operations' stream times (from the offset's metadata).
    clocks: HashMap<(String, i32), crate::task::Clocks>,
}

/// How long an assignment waits at most for the group's committed offsets while the broker
/// holds them back (see [`held_back_wait`]).
const HELD_BACK_WAIT: Duration = Duration::from_secs(240);

/// How long an assignment waits for the group's committed offsets while the broker holds
/// them back, with `max_poll_interval`: [`HELD_BACK_WAIT`], and at least a minute less than
/// the poll interval (the wait is inside the rebalance callback, which counts against it).
///
/// The group consumer reads offsets as stable (read_committed, librdkafka's default):
/// offsets in a transaction still open are answered UNSTABLE_OFFSET_COMMIT, which
/// librdkafka asks again until the call times out. A worker killed between its round's
/// offsets and its commit leaves such a transaction until the broker times it out
/// (`transaction.timeout.ms`, a minute by default), or until a worker with its id starts
/// again; the partitions' next owner waits that long rather than stop. An unreachable
/// coordinator looks the same (the call times out), and is waited for as long.
pub(crate) fn held_back_wait(max_poll_interval: Duration) -> Duration {
    HELD_BACK_WAIT.min(max_poll_interval.saturating_sub(Duration::from_secs(60)))
}

/// Whether a failed read of the committed offsets is worth waiting out: offsets held back
/// by an open transaction, or a call that timed out (librdkafka's retries of such an answer
/// end that way).
fn held_back(error: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode::{OperationTimedOut, RequestTimedOut, UnstableOffsetCommit};
    matches!(
        error.rdkafka_error_code(),
        Some(UnstableOffsetCommit | OperationTimedOut | RequestTimedOut)
    )
}

/// Whether to read the committed offsets again after attempt `attempt` failed, `waited`
/// after the first began: five attempts, or as long as `wait` while the broker holds them
/// back.
fn try_again(attempt: u32, waited: Duration, held_back: bool, wait: Duration) -> bool {
    attempt < 5 || (held_back && waited < wait)
}

/// The partitions whose committed offsets one read could not give.
#[derive(Default)]
struct FailedPartitions {
    /// The error to report, and whether it is held back: a permanent one stays, whatever
    /// follows (the wait would not end it).
    error: Option<(String, bool)>,
    /// Whether every partition that failed is held back: only then is the read waited out.
    all_held_back: bool,
}

impl FailedPartitions {
    fn add(&mut self, error: String, held_back: bool) {
        self.all_held_back = held_back && (self.error.is_none() || self.all_held_back);
        if self.error.as_ref().is_none_or(|(_, held)| *held) {
            self.error = Some((error, held_back));
        }
    }
}

/// The group's committed offsets of `list` (absent: nothing committed). Retried (see
/// [`try_again`]); a failure is an error rather than "nothing committed": that would start
/// partitions from their beginning and restore their tables without the changes of
/// committed input. [`Error::Stopping`] once `stopping` says so.
fn committed_offsets(
    consumer: &BaseConsumer<WorkerContext>,
    list: &TopicPartitionList,
    wait: Duration,
    stopping: &dyn Fn() -> bool,
) -> Result<Committed> {
    let mut last_error = String::new();
    let began = std::time::Instant::now();
    for attempt in 1.. {
        // A stop needs no offsets: not one more read (each may take 10 s).
        if stopping() {
            return Err(Error::Stopping);
        }
        let holding = match consumer.committed_offsets(list.clone(), Duration::from_secs(10)) {
            Ok(committed) => {
                let mut out = Committed::default();
                let mut failed = FailedPartitions::default();
                for (index, element) in committed.elements().iter().enumerate() {
                    if let Err(error) = element.error() {
                        let what = format!("{}[{}]: {error}", element.topic(), element.partition());
                        failed.add(what, held_back(&error));
                    }
                    let partition = (element.topic().to_string(), element.partition());
                    if let Offset::Offset(offset) = element.offset() {
                        out.offsets.insert(partition.clone(), offset);
                    }
                    let metadata = metadata_bytes(&committed, index);
                    let text = std::str::from_utf8(&metadata).unwrap_or_default();
                    if let Some(time) = crate::task::commit::stream_time_of_metadata(text) {
                        out.stream_times.insert(partition.clone(), time);
                    }
                    let clocks = crate::task::commit::clocks_of_metadata(text);
                    if !clocks.is_empty() {
                        out.clocks.insert(partition, clocks);
                    }
                }
                match failed.error {
                    None => return Ok(out),
                    Some((error, _)) => {
                        last_error = error;
                        failed.all_held_back
                    }
                }
            }
            Err(error) => {
                last_error = error.to_string();
                held_back(&error)
            }
        };
        if stopping() {
            return Err(Error::Stopping);
        }
        if !try_again(attempt, began.elapsed(), holding, wait) {
            break;
        }
        if holding {
            tracing::warn!(
                "the group's committed offsets are held back ({last_error}; attempt {attempt}, {} s): an open \
                 transaction (a worker that stopped in the middle of a commit) ends when the broker times it \
                 out",
                began.elapsed().as_secs()
            );
        } else {
            tracing::warn!("cannot read the group's committed offsets (attempt {attempt} of 5): {last_error}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(Error::Config(format!(
        "cannot read the group's committed offsets ({last_error}); stopping rather than guessing where to start"
    )))
}

/// The metadata of element `index` of `list`, as bytes: rdkafka's `metadata()` panics on
/// metadata that is not UTF-8, and any client of the group may have committed such.
fn metadata_bytes(list: &TopicPartitionList, index: usize) -> Vec<u8> {
    // SAFETY: `list.ptr()` is the live list `list` owns, read only while `list` is borrowed;
    // `index` is checked against its count; librdkafka keeps an element's `metadata` null or
    // pointing at `metadata_size` bytes it owns.
    unsafe {
        let raw = &*list.ptr();
        if index >= usize::try_from(raw.cnt).unwrap_or(0) || raw.elems.is_null() {
            return Vec::new();
        }
        let element = &*raw.elems.add(index);
        if element.metadata.is_null() || element.metadata_size == 0 {
            return Vec::new();
        }
        std::slice::from_raw_parts(element.metadata.cast::<u8>(), element.metadata_size).to_vec()
    }
}

/// The consumer's context: rebalances go through [`Shared`].
pub(crate) struct WorkerContext {
    pub shared: Arc<Shared>,
}

impl ClientContext for WorkerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.metrics.client_error("consumer", &error, reason);
    }
}

/// The watermarks of a partition as the consumer's last fetch response had them, without
/// asking the broker (rdkafka has no wrapper for `rd_kafka_get_watermark_offsets`); `None`
/// when not known.
fn cached_watermarks(consumer: &BaseConsumer<WorkerContext>, topic: &str, partition: i32) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client handle is live for `consumer`'s lifetime, `topic` is a valid C string
    // for the call, and the two out-pointers point at locals.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (error == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && low >= 0 && high >= 0).then_some((low, high))
}

/// The consumer's position in each of `partitions`, read where librdkafka keeps it. (rdkafka's
/// `Consumer::position` first asks librdkafka's main thread for the assignment, a request and
/// a reply between threads each time.)
pub(crate) fn positions<'a, C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    partitions: impl IntoIterator<Item = (&'a str, i32)>,
) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, partition);
    }
    // SAFETY: a live client and list; librdkafka sets each element's offset (or error).
    unsafe { rdkafka::bindings::rd_kafka_position(client.native_ptr(), list.ptr()) };
    list
}

/// The consumer's member id in its group (librdkafka keeps it; rdkafka has no accessor).
/// A request to librdkafka's main thread, with no time limit: one made while a close ends the
/// group's handler is never answered, so not to be made once a close may be ending it (after
/// the close's unassign).
fn member_id(consumer: &BaseConsumer<WorkerContext>) -> Option<String> {
    let client = consumer.client().native_ptr();
    // SAFETY: `client` is the live handle of `consumer`. rd_kafka_memberid returns NULL or
    // a NUL-terminated string that the caller owns and frees with rd_kafka_mem_free.
    unsafe {
        let id = rdkafka::bindings::rd_kafka_memberid(client);
        if id.is_null() {
            return None;
        }
        let text = std::ffi::CStr::from_ptr(id).to_string_lossy().into_owned();
        rdkafka::bindings::rd_kafka_mem_free(client, id.cast());
        (!text.is_empty()).then_some(text)
    }
}

/// How long a stop waits for librdkafka to send its LeaveGroup (see [`leave_group`]).
const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// Leaves the group before the consumer closes, so that the others take its partitions at
/// the rebalance this starts. librdkafka sends the LeaveGroup only once the revoke that
/// `unsubscribe` asks for is served, and a close marks the consumer as terminating first,
/// when a static member (KIP-345) sends none: so this serves the revoke itself (the tasks
/// have ended; records polled meanwhile are dropped, to be processed by the next owner) until
/// librdkafka forgets its member id, at most [`LEAVE_WAIT`]. It forgets it as it leaves: with
/// a LeaveGroup request to the coordinator (which the close then waits for), or without one
/// when no coordinator is known then (a broker outage) — best effort, as a dynamic member's
/// leave on close is. `static_member`: only the leave of a static member is lost to a close
/// that comes first (a dynamic member's close leaves by itself).
pub(crate) fn leave_group(consumer: &BaseConsumer<WorkerContext>, static_member: bool) {
    consumer.unsubscribe();
    let began = std::time::Instant::now();
    while member_id(consumer).is_some() {
        if began.elapsed() >= LEAVE_WAIT {
            if static_member {
                tracing::warn!(
                    "the group was not left within {LEAVE_WAIT:?}; closing: its partitions wait for this member's \
                     session to time out"
                );
            }
            return;
        }
        drop(consumer.poll(Duration::from_millis(20)));
    }
}

impl ConsumerContext for WorkerContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, list: &mut TopicPartitionList) {
        self.shared.hand_over();
        self.shared.moved();
        match err {
            // An assignment served by the stop's own polls (the leave's, or the close's when
            // librdkafka hands a queued one over then): the worker takes nothing — no store
            // is opened, no offset asked for, no fetch started. The partitions go to the
            // others once this member has left the group (a static member stopped without
            // leaving: once its session ends or it is back).
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS if self.shared.stopping() => {
                tracing::debug!("an assignment while stopping: not taken");
                if let Err(error) = consumer.assign(&TopicPartitionList::new()) {
                    tracing::debug!("an empty assignment while stopping: {error}");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Read before the assignment is handed back (see the revoke below).
                let member = member_id(consumer);
                self.shared.metrics.set_member_id(member.clone());
                self.shared.metrics.assignments.fetch_add(1, Ordering::Relaxed);
                let restoring = match self.shared.assign(consumer, list, &HashMap::new()) {
                    Ok(restoring) => restoring,
                    // The stop began while the assignment was being taken (see above).
                    Err(Error::Stopping) => {
                        tracing::debug!("an assignment while stopping: not taken");
                        if let Err(error) = consumer.assign(&TopicPartitionList::new()) {
                            tracing::debug!("an empty assignment while stopping: {error}");
                        }
                        return;
                    }
                    Err(error) => {
                        self.shared
                            .metrics
                            .fail(format!("cannot take over partitions: {error}"));
                        TopicPartitionList::new()
                    }
                };
                let unpaused = route_and_pause(consumer, &self.shared.records, list, &restoring);
                if let Err(error) = consumer.assign(list) {
                    // Its tasks would wait for records that never come.
                    self.shared
                        .metrics
                        .fail(format!("cannot take over partitions: the assignment failed ({error})"));
                }
                // The guard's time counts from the assignment itself (taking the partitions
                // over can take a while).
                self.shared.moved();
                // Partitions librdkafka did not know before the assignment (none once they
                // are routed, unless routing failed).
                if unpaused.count() > 0 {
                    if let Err(error) = consumer.pause(&unpaused) {
                        self.shared
                            .metrics
                            .fail(format!("cannot pause partitions while restoring: {error}"));
                    }
                }
                self.shared.publish_held(member);
                // Only now, with every assigned task in place (restoring or not): until here
                // readiness and lookups see a rebalance.
                self.shared.set_waiting(false);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.shared.set_waiting(true);
                let partitions: Vec<(String, i32)> = list
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                let release = if consumer.assignment_lost() {
                    Release::Lost
                } else {
                    Release::Commit
                };
                // Read before the unassign, never after: in a close, the unassign lets
                // librdkafka end the group's handler at once, and a member id asked for while
                // it ends is never answered (`rd_kafka_memberid` waits without a limit).
                let member = member_id(consumer);
                self.shared.metrics.set_member_id(member.clone());
                let _ = self.shared.revoke(Some(&partitions), release);
                if let Err(error) = consumer.unassign() {
                    tracing::warn!("unassign failed: {error}");
                }
                // Counted once released (the member rejoins its group next, unless it is
                // stopping); what the revoke changed is seen by whoever sees the count.
                self.shared.metrics.revocations.fetch_add(1, Ordering::Release);
                self.shared.publish_held(member);
            }
            other => {
                self.shared.set_waiting(true);
                tracing::error!("rebalance error: {other:?}; releasing all partitions");
                self.shared.metrics.set_member_id(member_id(consumer));
                let _ = self.shared.revoke(None, Release::Lost);
                let _ = consumer.unassign();
            }
        }
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {}
}

/// Commits through a consumer that may be gone (then the commit is skipped).
pub(crate) struct GroupCommit(pub Weak<BaseConsumer<WorkerContext>>);

/// The offsets to commit as a list, each with its stream time in its metadata.
fn offset_list(offsets: &[SourceOffset]) -> std::result::Result<TopicPartitionList, String> {
    let mut list = TopicPartitionList::new();
    for offset in offsets {
        list.add_partition_offset(&offset.topic, offset.partition, Offset::Offset(offset.next))
            .map_err(|e| e.to_string())?;
        if let Some(mut element) = list.find_partition(&offset.topic, offset.partition) {
            element.set_metadata(crate::task::commit::offset_metadata(offset.stream_time, &offset.clocks));
        }
    }
    Ok(list)
}

impl OffsetCommit for GroupCommit {
    fn commit(&self, offsets: &[SourceOffset]) -> Result<(), String> {
        let consumer = self.0.upgrade().ok_or("the consumer is closed")?;
        let list = offset_list(offsets)?;
        consumer
            .commit(&list, rdkafka::consumer::CommitMode::Sync)
            .map_err(|e| e.to_string())
    }
}

/// Exactly-once: transactions on the worker's producer, with source offsets sent through the
/// group consumer's metadata (KIP-447), so that a commit from a member of an older generation
/// (a zombie whose partitions went elsewhere) is refused by the broker.
pub(crate) struct KafkaTransactions {
    pub sink: Arc<crate::worker::producer::KafkaSink>,
    pub consumer: Weak<BaseConsumer<WorkerContext>>,
}

/// How long a transaction call may take before the broker is deemed away.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a failed worker's abort of its open transaction may hold its stop.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(10);

fn txn_error(what: &str, error: KafkaError) -> crate::task::commit::TxnError {
    use crate::task::commit::TxnError;
    let text = format!("{what}: {error}");
    match &error {
        KafkaError::Transaction(e) if e.is_fatal() => TxnError::Fatal(text),
        KafkaError::Transaction(e)
            if matches!(
                e.code(),
                rdkafka::error::RDKafkaErrorCode::IllegalGeneration
                    | rdkafka::error::RDKafkaErrorCode::UnknownMemberId
                    | rdkafka::error::RDKafkaErrorCode::RebalanceInProgress
            ) =>
        {
            TxnError::Rebalanced(text)
        }
        KafkaError::Transaction(e) if e.txn_requires_abort() => TxnError::Abortable(text),
        // Retriable: the call timed out, and whether the transaction committed is not known.
        KafkaError::Transaction(e) if e.is_retriable() => TxnError::Unknown(text),
        _ => TxnError::Abortable(text),
    }
}

impl crate::task::commit::Transactions for KafkaTransactions {
    fn generation(&self) -> crate::task::commit::Generation {
        Box::new(self.consumer.upgrade().and_then(|consumer| consumer.group_metadata()))
    }

    fn commit(
        &self,
        offsets: &[SourceOffset],
        generation: &crate::task::commit::Generation,
    ) -> std::result::Result<(), crate::task::commit::TxnError> {
        use crate::task::commit::TxnError;
        use rdkafka::producer::Producer;
        let producer = self.sink.producer();
        if !offsets.is_empty() {
            // The group's metadata as the round's cuts were made: a commit after the group
            // moved on is refused (KIP-447), as a zombie's must be.
            let metadata = generation
                .downcast_ref::<Option<rdkafka::consumer::ConsumerGroupMetadata>>()
                .and_then(Option::as_ref)
                .ok_or_else(|| TxnError::Abortable("the consumer had no group metadata for the round".into()))?;
            let list = offset_list(offsets).map_err(TxnError::Abortable)?;
            producer
                .send_offsets_to_transaction(&list, metadata, TXN_TIMEOUT)
                .map_err(|e| txn_error("adding the offsets to the transaction", e))?;
        }
        producer
            .commit_transaction(TXN_TIMEOUT)
            .map_err(|e| txn_error("committing the transaction", e))
    }

    fn abort(&self) -> std::result::Result<(), String> {
        use rdkafka::producer::Producer;
        // An abort the broker refuses is tried again (librdkafka starts it over); a fatal
        // error ends it.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.sink.producer().abort_transaction(TXN_TIMEOUT) {
                Ok(()) => {
                    self.sink.forget_failures();
                    return Ok(());
                }
                Err(KafkaError::Transaction(error)) if !error.is_fatal() && attempt < 5 => {
                    tracing::warn!("aborting the transaction (attempt {attempt} of 5): {error}");
                    std::thread::sleep(Duration::from_millis(100 * attempt));
                }
                Err(error) => return Err(error.to_string()),
            }
        }
    }

    fn abandon(&self) -> std::result::Result<bool, String> {
        use rdkafka::producer::Producer;
        match self.sink.producer().abort_transaction(ABANDON_TIMEOUT) {
            Ok(()) => Ok(true),
            // No transaction in progress: a failed store write or begin after a commit.
            Err(KafkaError::Transaction(error))
                if !error.is_fatal() && error.code() == rdkafka::error::RDKafkaErrorCode::State =>
            {
                Ok(false)
            }
            Err(error) => Err(error.to_string()),
        }
    }

    fn begin(&self) -> std::result::Result<(), String> {
        use rdkafka::producer::Producer;
        self.sink.producer().begin_transaction().map_err(|e| e.to_string())
    }

    fn reinit(&self) -> std::result::Result<(), String> {
        self.sink.reinit().map_err(|e| e.to_string())
    }
}

/// Before an assignment: routes its partitions' records to the batch queue, and pauses
/// those to be restored first; returns those it could not pause.
///
/// The records are routed before the assignment starts their fetch, so that none reaches
/// the consumer queue first (see `message/queue.rs`); routing a partition makes librdkafka
/// know it. Nothing is fetched for the restoring ones until their stores are restored, and
/// they are paused before they are assigned (a pause outlives assignments there):
/// librdkafka starts an assigned partition's fetch on its own thread (later, if the
/// partition is still being stopped); a pause after the assignment outdates that start's
/// offset query, which librdkafka retries only 500 ms later, and a pause racing with the
/// start can outdate it for good.
fn route_and_pause<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    records: &crate::message::queue::Records,
    assigned: &TopicPartitionList,
    restoring: &TopicPartitionList,
) -> TopicPartitionList {
    let elements = assigned.elements();
    let partitions: Vec<(&str, i32)> = elements.iter().map(|e| (e.topic(), e.partition())).collect();
    records.forward(consumer.client(), &partitions);
    pause_each(consumer, restoring)
}

/// Pauses `partitions`; returns those it could not pause (librdkafka has no state for a
/// partition it never saw, so a partition neither assigned nor routed may be among them).
fn pause_each<X: ConsumerContext, C: Consumer<X>>(consumer: &C, partitions: &TopicPartitionList) -> TopicPartitionList {
    let mut unpaused = TopicPartitionList::new();
    if partitions.count() == 0 {
        return unpaused;
    }
    // librdkafka writes each partition's outcome into the list it is given.
    let outcome = partitions.clone();
    if consumer.pause(&outcome).is_err() {
        return partitions.clone();
    }
    for element in outcome.elements() {
        if element.error().is_err() {
            unpaused.add_partition(element.topic(), element.partition());
        }
    }
    unpaused
}

/// How long a stop waits for librdkafka's close of the group consumer once the records it
/// fetched are freed. The close hands the assignment back through the rebalance callback
/// (the tasks made their last commits before: nothing is left to commit) and ends the
/// consumer's part in the group; with a coordinator that answers, it takes milliseconds. A
/// coordinator that holds the member's requests back (a rebalance under way on a slow broker;
/// a broker gone) keeps it waiting for librdkafka's request timeouts, longer than a stop may
/// take: past this wait the stop goes on, and the close ends in the background.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// How long a stop waits for the records the consumer fetched to be freed.
const RECORDS_WAIT: Duration = Duration::from_secs(5);

/// Closes the consumer once the records it fetched are freed (they are librdkafka's and keep
/// it alive; see [`Message::from_kafka`]), on a thread of its own, and waits for that close:
/// for the records at most [`RECORDS_WAIT`] (the tasks have ended, so their records are on
/// their way back; a task that has not ended, an agent stuck in its own code, keeps the
/// consumer open until it ends), then for librdkafka's close at most [`CLOSE_WAIT`]. `keep`
/// is dropped once the consumer is closed (the data directory's lock: the global tables'
/// stores close with the consumer). Returns whether the consumer closed within the waits.
pub(crate) fn close<C: Send + Sync + 'static, K: Send + 'static>(
    consumer: Arc<C>,
    spent: &Arc<Spent>,
    keep: K,
) -> bool {
    close_within(consumer, spent, keep, RECORDS_WAIT, CLOSE_WAIT)
}

/// What the thread that closes the consumer has got to.
enum Closing {
    /// The records are back; librdkafka's close begins.
    Began,
    /// The consumer is closed.
    Done,
}

/// Takes the consumer out of its `Arc` once every other holder (a task's record, the
/// committer's `Weak` upgraded for a commit) has let go: from then on none can take it
/// again, so the drop that follows is the close. Frees spent records meanwhile, soon after
/// the tasks end and then once in a while (a task still running); `records_wait` is the
/// time after which it checks less often.
fn sole_owner<C>(mut consumer: Arc<C>, spent: &Spent, records_wait: Duration) -> C {
    let waiting = std::time::Instant::now();
    spent.free();
    loop {
        match Arc::try_unwrap(consumer) {
            Ok(consumer) => return consumer,
            Err(shared) => consumer = shared,
        }
        let pause = if waiting.elapsed() < records_wait { 5 } else { 100 };
        std::thread::sleep(Duration::from_millis(pause));
        spent.free();
    }
}

fn close_within<C: Send + Sync + 'static, K: Send + 'static>(
    consumer: Arc<C>,
    spent: &Arc<Spent>,
    keep: K,
    records_wait: Duration,
    close_wait: Duration,
) -> bool {
    let (tell, told) = std::sync::mpsc::channel();
    // The consumer goes to the thread once it runs: a thread that cannot start leaves it here.
    let (hand, handed) = std::sync::mpsc::channel::<(Arc<C>, K)>();
    let closing = {
        let spent = Arc::clone(spent);
        std::thread::Builder::new()
            .name("consumer-close".into())
            .spawn(move || {
                let Ok((consumer, keep)) = handed.recv() else { return };
                let consumer = sole_owner(consumer, &spent, records_wait);
                let _ = tell.send(Closing::Began);
                drop(consumer);
                drop(keep);
                let _ = tell.send(Closing::Done);
            })
    };
    if let Err(error) = closing {
        tracing::warn!("cannot start the thread that closes the consumer ({error}); closing it here");
        drop(sole_owner(consumer, spent, records_wait));
        drop(keep);
        return true;
    }
    if hand.send((consumer, keep)).is_err() {
        // The thread ended before it was given the consumer (the channel is gone with it, and
        // the consumer with the channel's message): nothing to wait for.
        return false;
    }
    match told.recv_timeout(records_wait) {
        Ok(Closing::Began) => {}
        Ok(Closing::Done) => return true,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            tracing::warn!(
                "a task that has not ended holds records of the consumer; it closes when the task ends, and the data \
                 directory stays locked until then"
            );
            return false;
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            tracing::warn!("the thread that closes the consumer ended early (it panicked)");
            return false;
        }
    }
    match told.recv_timeout(close_wait) {
        Ok(_) => true,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            tracing::warn!(
                "the consumer's close did not end within {close_wait:?} (its coordinator holds its requests back, or \
                 cannot be reached); it goes on in the background, and the data directory stays locked until it ends"
            );
            false
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            tracing::warn!("the consumer's close panicked (in a rebalance callback)");
            false
        }
    }
}

/// How often the poll thread reads the worker's member id between rebalances.
const MEMBERSHIP_READ: Duration = Duration::from_secs(30);

/// How long [`Shared::keep_resumed`] goes on after partitions last moved: a resume lost to
/// an assignment's fetch restart is lost within librdkafka's handling of that restart, which
/// takes milliseconds (its main thread serves both).
const KEEP_RESUMING: Duration = Duration::from_secs(30);

/// How long the poll thread waits for records before it looks after the rest (restores
/// done, the member id, lag) while the worker is not settled (a restore runs, or it waits
/// for the group): each wait costs a wake-up.
const IDLE_WAIT: Duration = Duration::from_millis(250);

/// The same wait once the worker holds its partitions, restored. A record, a rebalance, a
/// stop asked of the worker ([`crate::WorkerHandle::request_stop`]), a failure and an
/// aborted round end it early; what it leaves to the next round is once-a-second work (lag,
/// the directory) and noticing a stop flag set by other means.
const SETTLED_WAIT: Duration = Duration::from_secs(1);

/// The worker's batch queue, open while it lives.
struct RecordsOpen<'a>(&'a crate::message::queue::Records);

impl<'a> RecordsOpen<'a> {
    fn new(records: &'a crate::message::queue::Records, consumer: &BaseConsumer<WorkerContext>) -> Self {
        if !records.open(consumer.client()) {
            tracing::warn!("librdkafka gave no queue for records; polling them one at a time");
        }
        Self(records)
    }
}

impl Drop for RecordsOpen<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Polls until `stop` is set, the worker failed, or it has been idle for `idle_exit`; then
/// makes the last cuts. A last cut that could not be committed fails the worker. Returns
/// whether it stopped idle (neither asked to stop nor failed).
pub(crate) fn poll_loop(
    consumer: &Arc<BaseConsumer<WorkerContext>>,
    shared: &Shared,
    stop: &AtomicBool,
    idle_exit: Option<Duration>,
) -> bool {
    let mut idle_exited = false;
    // Idle time counts while the worker holds its (restored) partitions and no record
    // arrives: a worker given no records at all stops too.
    let mut quiet_since = std::time::Instant::now();
    let mut last_error = std::time::Instant::now() - Duration::from_secs(60);
    let mut membership_read = std::time::Instant::now();
    let mut lag_read = std::time::Instant::now();
    let mut waiting_logged = std::time::Instant::now();
    let keep: Keep = Arc::clone(consumer) as Keep;
    // The batch queue lives while this loop runs (librdkafka's queues must be released
    // before their client).
    let _records = RecordsOpen::new(&shared.records, consumer);
    // The consumer queue, to see whether it holds anything (`None`: poll it once a round).
    let consumer_queue = crate::message::queue::Queue::consumer_of(consumer.client());
    let mut batch = Vec::with_capacity(BURST);
    while !stop.load(Ordering::Relaxed) && !shared.metrics.failed() {
        if let Some(since) = shared.waiting_since() {
            if waiting_logged.elapsed() >= WAITING_LOG_EVERY {
                waiting_logged = std::time::Instant::now();
                let hint = if shared.on_embedded {
                    "; the embedded broker completes a join up to session.timeout.ms - 1 s after the previous member left"
                } else {
                    "; the coordinator waits for every member to rejoin, up to their max.poll.interval.ms"
                };
                tracing::info!(
                    "waiting for group `{}` to assign partitions ({}s so far){hint}",
                    shared.app_id,
                    since.elapsed().as_secs()
                );
            }
        }
        // The member id as librdkafka has it now. Each rebalance reads it (librdkafka forgets
        // it when it leaves the group, and that revokes the partitions); this is for a change
        // no rebalance announced. Each read is a request to librdkafka's main thread.
        if membership_read.elapsed() >= MEMBERSHIP_READ {
            membership_read = std::time::Instant::now();
            shared.metrics.set_member_id(member_id(consumer));
        }
        // Rebalances, errors and commits come by the consumer queue (and a record, if one
        // was fetched before its partition's records were routed to the batch queue).
        let mut taken = 0;
        let mut served = 0;
        while served < BURST && consumer_queue.as_ref().is_none_or(|queue| queue.len() > 0) {
            served += 1;
            match consumer.poll(Duration::ZERO) {
                Some(Ok(message)) => {
                    taken += 1;
                    shared.buffer(message, &keep);
                }
                Some(Err(error)) if last_error.elapsed() > Duration::from_secs(5) => {
                    tracing::warn!("consumer: {error}");
                    last_error = std::time::Instant::now();
                }
                Some(Err(_)) => {}
                None if consumer_queue.is_none() => break,
                None => {}
            }
        }
        // Records left there come before the batch queue's (later ones): those wait.
        let drained = served < BURST || consumer_queue.as_ref().is_some_and(|queue| queue.len() == 0);
        // The records: what is ready (up to BURST), else the first to come within the
        // wait — which an event on the consumer queue ends early.
        let wait = if taken > 0 {
            Duration::ZERO
        } else if shared.settled() && shared.waiting_since().is_none() {
            SETTLED_WAIT
        } else {
            IDLE_WAIT
        };
        match drained.then(|| shared.records.take_ready(wait, BURST, &mut batch)) {
            Some(Some(_)) => taken += shared.buffer_taken(&mut batch, &keep, &mut last_error),
            None => {}
            // No batch queue (librdkafka gave none, or it is closed): records come by polls.
            Some(None) => {
                if let Some(Ok(message)) = consumer.poll(wait) {
                    taken += 1;
                    shared.buffer(message, &keep);
                }
            }
        }
        shared.hand_over();
        shared.spent.free();
        if shared.rounds.as_ref().is_some_and(|rounds| rounds.take_aborted()) {
            shared.restart_tasks(consumer);
        }
        shared.resume_restored(consumer);
        shared.update_unread(consumer);
        if lag_read.elapsed() >= Duration::from_secs(1) {
            lag_read = std::time::Instant::now();
            shared.keep_resumed(consumer);
            shared.update_lag(consumer);
            shared.update_state_memory();
            shared.republish_held(consumer);
        }
        if let Some(idle) = idle_exit {
            // Counted while the worker holds its partitions: not while it waits for the
            // group between a revoke and the next assignment.
            if taken > 0 || !shared.settled() || shared.waiting_since().is_some() {
                quiet_since = std::time::Instant::now();
            } else if quiet_since.elapsed() >= idle {
                tracing::info!("no records for {idle:?}; stopping");
                idle_exited = true;
                break;
            }
        }
    }
    let release = if shared.metrics.failed() {
        Release::Drop
    } else {
        Release::Commit
    };
    let failed = shared.revoke(None, release);
    if !failed.is_empty() && !shared.metrics.failed() {
        shared.metrics.fail(format!(
            "the last commit failed for {}; their input since the last successful commit will be processed again by their next owner",
            failed.join("; ")
        ));
    }
    idle_exited && !stop.load(Ordering::Relaxed) && !shared.metrics.failed()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    use rdkafka::{Offset, TopicPartitionList};

    use super::{close_within, pause_each, route_and_pause};
    use crate::broker::EmbeddedBroker;
    use crate::message::queue::Records;
    use crate::message::{RawMessage, Spent};

    const WAIT: Duration = Duration::from_secs(5);

    /// Stands for the consumer: says when it is dropped (closed), and on which thread.
    struct Consumer(Arc<AtomicBool>, Arc<Mutex<Option<String>>>);

    impl Consumer {
        fn new(closed: &Arc<AtomicBool>) -> (Self, Arc<Mutex<Option<String>>>) {
            let thread = Arc::new(Mutex::new(None));
            (Self(Arc::clone(closed), Arc::clone(&thread)), thread)
        }
    }

    impl Drop for Consumer {
        fn drop(&mut self) {
            *self.1.lock().expect("lock") = std::thread::current().name().map(str::to_string);
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A consumer whose close (librdkafka's, waiting for its coordinator) ends when the test
    /// says so.
    struct SlowToClose(Mutex<Receiver<()>>, Arc<AtomicBool>);

    impl SlowToClose {
        fn new(closed: &Arc<AtomicBool>) -> (Self, Sender<()>) {
            let (release, released) = channel();
            (Self(Mutex::new(released), Arc::clone(closed)), release)
        }
    }

    impl Drop for SlowToClose {
        fn drop(&mut self) {
            let _ = self.0.lock().expect("lock").recv();
            self.1.store(true, Ordering::SeqCst);
        }
    }

    /// Stands for the data directory's lock: says when it is released, and whether the
    /// consumer was closed by then.
    struct Lock(Arc<AtomicBool>, Arc<Mutex<Option<bool>>>);

    impl Lock {
        fn new(closed: &Arc<AtomicBool>) -> (Self, Arc<Mutex<Option<bool>>>) {
            let released = Arc::new(Mutex::new(None));
            (Self(Arc::clone(closed), Arc::clone(&released)), released)
        }
    }

    impl Drop for Lock {
        fn drop(&mut self) {
            *self.1.lock().expect("lock") = Some(self.0.load(Ordering::SeqCst));
        }
    }

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let waiting = std::time::Instant::now();
        while !done() {
            assert!(waiting.elapsed() < WAIT, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A close that takes longer than its wait holds the stop no longer than that wait; it
    /// goes on in the background, and what it keeps (the data directory's lock) is released
    /// only once it has ended.
    #[test]
    fn a_close_past_its_wait_ends_in_the_background_and_keeps_the_lock_until_then() {
        let closed = Arc::new(AtomicBool::new(false));
        let (lock, released) = Lock::new(&closed);
        let (consumer, release) = SlowToClose::new(&closed);
        let began = std::time::Instant::now();
        let spent = Arc::new(Spent::default());
        let in_time = close_within(Arc::new(consumer), &spent, lock, WAIT, Duration::from_millis(200));
        let waited = began.elapsed();
        assert!(!in_time, "the close did not end within its wait");
        assert!(waited >= Duration::from_millis(200), "waited {waited:?}");
        assert!(waited < WAIT, "waited {waited:?}");
        assert!(!closed.load(Ordering::SeqCst));
        assert_eq!(
            *released.lock().expect("lock"),
            None,
            "the lock is kept while the close goes on"
        );
        release.send(()).expect("the close waits");
        wait_for("the lock released", || released.lock().expect("lock").is_some());
        assert_eq!(
            *released.lock().expect("lock"),
            Some(true),
            "the lock is released once the consumer has closed, not before"
        );
    }

    /// A close within its wait is waited for, and the lock released with it.
    #[test]
    fn a_close_within_its_wait_is_waited_for() {
        let closed = Arc::new(AtomicBool::new(false));
        let (lock, released) = Lock::new(&closed);
        let (consumer, release) = SlowToClose::new(&closed);
        let releasing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let _ = release.send(());
        });
        assert!(close_within(
            Arc::new(consumer),
            &Arc::new(Spent::default()),
            lock,
            WAIT,
            WAIT
        ));
        assert!(closed.load(Ordering::SeqCst));
        assert_eq!(*released.lock().expect("lock"), Some(true));
        releasing.join().expect("thread");
    }

    #[test]
    fn the_consumer_closes_once_the_last_record_is_back_and_not_before() {
        let closed = Arc::new(AtomicBool::new(false));
        let (consumer, _) = Consumer::new(&closed);
        let consumer = Arc::new(consumer);
        // A task still holding a record (its `Keep`) for 300 ms.
        let record = Arc::clone(&consumer);
        let task = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(record);
        });
        let in_time = close_within(consumer, &Arc::new(Spent::default()), (), WAIT, WAIT);
        assert!(in_time, "closed within the waits");
        assert!(closed.load(Ordering::SeqCst), "closed once the record was back");
        task.join().expect("task");
    }

    /// A record held past the wait: the stop goes on, and the consumer closes (and the lock
    /// is released) once the record is dropped, not before.
    #[test]
    fn a_record_held_past_the_wait_closes_the_consumer_when_it_is_dropped() {
        let closed = Arc::new(AtomicBool::new(false));
        let (lock, released) = Lock::new(&closed);
        let (consumer, _) = Consumer::new(&closed);
        let consumer = Arc::new(consumer);
        let record = Arc::clone(&consumer);
        let spent = Arc::new(Spent::default());
        let in_time = close_within(consumer, &spent, lock, Duration::from_millis(50), WAIT);
        assert!(!in_time);
        assert!(!closed.load(Ordering::SeqCst), "not closed while a record is held");
        assert_eq!(
            *released.lock().expect("lock"),
            None,
            "the lock is kept while a record is held"
        );
        drop(record);
        wait_for("closed by its own thread once the record was dropped", || {
            closed.load(Ordering::SeqCst)
        });
        wait_for("the lock released", || released.lock().expect("lock").is_some());
        assert_eq!(*released.lock().expect("lock"), Some(true));
    }

    /// Another holder that takes the consumer for a moment again and again (the committer,
    /// upgrading its `Weak` for a commit) never ends up closing it: the close is the close
    /// thread's, which the stop waits for.
    #[test]
    fn the_close_is_the_close_threads_even_with_a_weak_holder_upgrading() {
        let closed = Arc::new(AtomicBool::new(false));
        let (consumer, thread) = Consumer::new(&closed);
        let consumer = Arc::new(consumer);
        let weak = Arc::downgrade(&consumer);
        let record = Arc::clone(&consumer);
        let upgrading = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                while let Some(held) = weak.upgrade() {
                    drop(held);
                    std::hint::spin_loop();
                }
            })
            .expect("thread");
        let task = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(record);
        });
        assert!(close_within(consumer, &Arc::new(Spent::default()), (), WAIT, WAIT));
        assert!(closed.load(Ordering::SeqCst));
        assert_eq!(thread.lock().expect("lock").as_deref(), Some("consumer-close"));
        upgrading.join().expect("thread");
        task.join().expect("task");
    }

    /// A new worker's partitions that have stores to restore are paused before they are
    /// assigned: librdkafka does not know a partition before its assignment, but does once
    /// it is routed to the batch queue. Paused from then on, none of its records comes until
    /// it is resumed. (Paused after the assignment instead, librdkafka would retry the
    /// partition's start 500 ms later: a new worker's first records came a second late.)
    #[test]
    fn partitions_to_restore_are_paused_before_their_first_assignment() {
        const RECORDS: i64 = 200;
        let broker = EmbeddedBroker::start().expect("broker");
        broker.create_topic("restoring", 2).expect("topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .create()
            .expect("producer");
        for n in 0..RECORDS {
            let payload = n.to_string();
            let record = BaseRecord::<(), str>::to("restoring")
                .partition((n % 2) as i32)
                .payload(&payload);
            producer.send(record).map_err(|(error, _)| error).expect("send");
        }
        producer.flush(WAIT).expect("flush");
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("group.id", "pause-test")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let records = Records::default();
        assert!(records.open(consumer.client()));
        let mut assigned = TopicPartitionList::new();
        for partition in 0..2 {
            assigned
                .add_partition_offset("restoring", partition, Offset::Beginning)
                .expect("list");
        }
        let mut restoring = TopicPartitionList::new();
        restoring.add_partition("restoring", 1);
        assert_eq!(
            pause_each(&consumer, &restoring).count(),
            1,
            "librdkafka knows no partition before its assignment"
        );

        let unpaused = route_and_pause(&consumer, &records, &assigned, &restoring);
        assert_eq!(unpaused.count(), 0, "paused before the assignment");
        consumer.assign(&assigned).expect("assign");
        let take = |records: &Records, until: usize, limit: Duration| {
            let (mut all, mut batch) = (Vec::<RawMessage>::new(), Vec::new());
            let began = std::time::Instant::now();
            while all.len() < until && began.elapsed() < limit {
                records.take_ready(Duration::from_millis(100), 1024, &mut batch);
                all.append(&mut batch);
            }
            all
        };
        // The other partition's records, then a second more: the paused one sends none.
        let mut first = take(&records, RECORDS as usize / 2, WAIT);
        first.extend(take(&records, 1, Duration::from_secs(1)));
        assert_eq!(
            first.len() as i64,
            RECORDS / 2,
            "the restoring partition's records wait"
        );
        assert!(first.iter().all(|m| m.partition() == 0));

        consumer.resume(&restoring).expect("resume");
        let rest = take(&records, RECORDS as usize / 2, WAIT);
        assert_eq!(rest.len() as i64, RECORDS / 2, "they come once it is resumed");
        assert!(rest.iter().all(|m| m.partition() == 1));
        drop((first, rest));
        records.close();
    }

    /// A failed worker's abort (`abandon`) aborts the open transaction, and says so; with
    /// none open (after a commit whose next begin failed) there is nothing to abort, which
    /// is not an error.
    #[test]
    fn abandoning_aborts_the_open_transaction_and_knows_when_none_is_open() {
        use crate::task::commit::Transactions as _;
        let broker = EmbeddedBroker::start().expect("broker");
        let config = crate::broker::client_config(broker.bootstrap_servers(), &[]);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let sink = crate::worker::producer::KafkaSink::transactional(config, metrics, "abandon-test")
            .expect("a transactional producer, its first transaction begun");
        let transactions = super::KafkaTransactions {
            sink: Arc::new(sink),
            consumer: std::sync::Weak::new(),
        };
        assert_eq!(transactions.abandon(), Ok(true), "the open one aborted");
        assert_eq!(transactions.abandon(), Ok(false), "none open");
        transactions.begin().expect("begin");
        assert_eq!(transactions.abandon(), Ok(true), "the next one aborted");
    }

    /// Offsets held back by an open transaction (a worker killed in the middle of a commit)
    /// are waited for well past five attempts, up to `HELD_BACK_WAIT` and a minute less than
    /// `max.poll.interval.ms`; other failures give up after five (the worker stops rather
    /// than guess where to start).
    #[test]
    fn offsets_held_back_by_an_open_transaction_are_waited_for() {
        use super::{held_back, held_back_wait, try_again, HELD_BACK_WAIT};
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        for code in [
            RDKafkaErrorCode::UnstableOffsetCommit,
            RDKafkaErrorCode::OperationTimedOut,
        ] {
            assert!(held_back(&KafkaError::OffsetFetch(code)), "{code:?}");
        }
        assert!(!held_back(&KafkaError::OffsetFetch(
            RDKafkaErrorCode::GroupAuthorizationFailed
        )));
        let wait = held_back_wait(Duration::from_secs(300));
        assert_eq!(wait, HELD_BACK_WAIT, "the default poll interval");
        assert_eq!(held_back_wait(Duration::from_secs(120)), Duration::from_secs(60));
        assert_eq!(held_back_wait(Duration::from_secs(30)), Duration::ZERO);
        // A minute and a half of UNSTABLE_OFFSET_COMMIT: a transaction left open for the
        // default minute, and the broker's time to notice.
        assert!(try_again(9, Duration::from_secs(90), true, wait));
        assert!(!try_again(9, wait, true, wait), "not past the wait");
        assert!(
            !try_again(5, Duration::from_secs(1), true, Duration::ZERO),
            "no wait: five attempts"
        );
        assert!(try_again(4, Duration::from_secs(1), false, wait));
        assert!(
            !try_again(5, Duration::from_secs(1), false, wait),
            "five attempts otherwise"
        );
    }

    /// A read of the committed offsets is waited out only when every partition that failed
    /// is held back, and its error names a partition whose failure is permanent, if any.
    #[test]
    fn a_permanent_failure_is_named_before_a_held_back_one() {
        use super::FailedPartitions;
        let mut failed = FailedPartitions::default();
        failed.add("t[0]: held back".into(), true);
        failed.add("t[1]: held back".into(), true);
        assert!(failed.all_held_back);
        assert_eq!(failed.error.as_ref().map(|(e, _)| e.as_str()), Some("t[1]: held back"));
        failed.add("t[2]: not authorised".into(), false);
        failed.add("t[3]: held back".into(), true);
        assert!(!failed.all_held_back);
        assert_eq!(
            failed.error.as_ref().map(|(e, _)| e.as_str()),
            Some("t[2]: not authorised"),
            "the permanent failure, not the held-back one after it"
        );
        let mut failed = FailedPartitions::default();
        failed.add("t[0]: not authorised".into(), false);
        failed.add("t[1]: held back".into(), true);
        assert!(!failed.all_held_back);
        assert_eq!(failed.error.map(|(e, _)| e), Some("t[0]: not authorised".into()));
    }
}

//! Tasks: what runs on partition *p* of its source topics — an agent, or a sub-topology of a
//! pipeline — with its per-partition context: its input ([`input`]), its tables
//! ([`tables`]), where its records go ([`sink`]) and its cuts ([`commit`]).
//!
//! This layer lies under both the public handles (`Topic::send`, `Table::update`, an agent's
//! `Stream`, the DSL's nodes), which reach the running task through [`TaskContext`], and the
//! worker and the test driver, which feed tasks records and make their cuts durable. It
//! knows nothing of Kafka, of typed topics or of the DSL.

pub(crate) mod cache_budget;
pub(crate) mod commit;
pub(crate) mod input;
pub(crate) mod round;
pub(crate) mod run;
pub(crate) mod sink;
pub(crate) mod tables;
pub(crate) mod ttl;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use self::commit::{Cut, Written};
use self::run::TaskSpec;
use self::sink::{enqueue, enqueue_when_room, OutRecord, Sink, SinkError};
use self::tables::TableState;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::{Error, Result};

/// What a running task reaches: its partition's tables and sinks, its counters and flags.
pub(crate) struct TaskContext {
    /// The agent's name, or the pipeline sub-topology's.
    pub name: Arc<str>,
    /// The task's source topics, in order (agents have one).
    pub sources: Vec<Arc<str>>,
    pub partition: i32,
    pub dead_letter_topic: Arc<str>,
    /// What becomes of a record that does not decode, and of one whose processing fails.
    pub on_deserialization_error: sink::OnError,
    pub on_processing_error: sink::OnError,
    /// The topics the task may send to.
    sends: Vec<Arc<str>>,
    tables: Mutex<Vec<TableState>>,
    pub(crate) sink: Arc<dyn Sink>,
    committer: std::sync::mpsc::Sender<Cut>,
    /// How far the committer has written this task's cuts (see [`Written`]).
    pub(crate) written: Arc<Written>,
    /// The number of the task's last cut.
    cuts: AtomicU64,
    pub metrics: Arc<Metrics>,
    /// Set when the table cache is over budget: the stream makes a cut before the next record.
    pub cut_wanted: AtomicBool,
    /// The change pass table changes are made in now, and the latest one any change was
    /// made in (see [`TaskContext::next_change_pass`]).
    change_pass: AtomicU64,
    pub(crate) last_change_pass: AtomicU64,
    /// Set when the partition is revoked or the worker stops: the stream stops at the next
    /// record boundary, leaving records it has not started for the next owner (see
    /// [`TaskContext::request_finish`]).
    pub finishing: AtomicBool,
    /// Exactly-once: set when the task's round was aborted or the worker failed. What the
    /// task did since its last committed round is undone and its input is processed again,
    /// so what its agent sends after its stream ended (code after its loop) is refused
    /// ([`Error::Aborted`]): sent, it would go into the next transaction, a duplicate of what
    /// the replay sends.
    aborted: AtomicBool,
    /// Exactly-once: closed from the moment the task's cut takes its table changes until
    /// its round's answer (see [`round::Gate`]).
    pub(crate) gate: Arc<round::Gate>,
    /// Set while the task's agent has ended and its core finishes what a dropped call to
    /// `next` left: waiting for input, that work returns at once (see `input::Home`).
    released: AtomicBool,
    release_wake: tokio::sync::Notify,
    /// Event time (ms) of the record being processed: table changes and outputs carry it.
    event_time: AtomicI64,
    /// Stream time (ms): the largest event time the task has processed ([`NO_TIME`] before
    /// any). Windows close by it; it is kept with the stores and restored with them.
    stream_time: AtomicI64,
    /// Per table: the stream time of the operation that keeps it, where the operation has
    /// its own (a windowed aggregation, a windowed join): the largest event time of the
    /// records that reached it, as Kafka Streams keeps per processor. [`NO_TIME`]: none.
    clocks: Box<[AtomicI64]>,
    /// `clocks` as the task's stores had them when it started.
    start_clocks: Box<[AtomicI64]>,
    /// Per table: whether its operation keeps a stream time ([`crate::spec::TableSpec::keeps_time`]).
    keeps_time: Box<[bool]>,
    /// Per table: a versioned table's history, whose stream time starts with its first
    /// record, not at the task's (see [`TaskContext::seed_clocks`]).
    histories: Box<[bool]>,
    /// The tables whose entries live for a while ([`crate::Table::ttl`]).
    ttl_tables: Box<[ttl::TtlTable]>,
    /// Whether the restored state said what the operations' stream times were (even that
    /// none had one yet): state written before operations kept their own says nothing.
    clocks_known: AtomicBool,
    /// What operations keep per task beside tables (a DSL processor's instance), by the
    /// operation's id.
    locals: Mutex<std::collections::HashMap<usize, Box<dyn std::any::Any + Send>>>,
    /// The clock wall-clock punctuation reads (the test driver's; this machine's if unset).
    clock: std::sync::OnceLock<WallClock>,
    /// This partition's counts not yet added to the shared [`Metrics`] (counting into the
    /// shared counters for every record would bounce their cache line between threads).
    pub(crate) counts: Counts,
    /// The worker's counters of records in, one per source (`streams_records_in`).
    records_in: Vec<prometheus_client::metrics::counter::Counter>,
    /// The worker's global tables (a full copy each, shared by every task).
    globals: Globals,
    /// Per source: whether the broker holds records of it that the task has not been given
    /// yet (set by the worker or the test driver; unknown counts as yes). A task with several
    /// sources does not run ahead of one that has such records (KIP-695).
    unread: Box<[AtomicBool]>,
    /// Signalled when a source's `unread` clears.
    unread_cleared: tokio::sync::Notify,
    /// Exactly-once: the source positions of the task's last committed round.
    committed: Mutex<Vec<(Arc<str>, i64)>>,
    /// Per source: the event time its extractor takes from a value, if it has one.
    pub(crate) source_times: Vec<Option<crate::spec::EventTimeOf>>,
}

/// A worker's global tables by name: the store of each, kept current from its topic.
pub(crate) type Globals = Arc<std::collections::HashMap<&'static str, Arc<dyn crate::store::StateStore>>>;

/// Stream time before a task has processed anything.
pub(crate) const NO_TIME: i64 = i64::MIN;

pub(crate) use crate::changelog::{merge_clocks, Clocks};

fn no_clocks(tables: usize) -> Box<[AtomicI64]> {
    (0..tables).map(|_| AtomicI64::new(NO_TIME)).collect()
}

/// Adds one to a partition's count. Only the partition's task writes its counts (and takes
/// them in `report`), so a plain load and store do: no locked instruction per record.
pub(crate) fn bump(count: &AtomicU64) {
    count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

#[derive(Default)]
pub(crate) struct Counts {
    pub records: AtomicU64,
    pub sends: AtomicU64,
    pub table_updates: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_evictions: AtomicU64,
    /// Records per source, since the last report.
    pub per_source: Box<[AtomicU64]>,
}

impl Counts {
    fn new(sources: usize) -> Self {
        Self {
            per_source: (0..sources).map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        }
    }
}

tokio::task_local! {
    static CONTEXT: Arc<TaskContext>;
}

impl TaskContext {
    pub(crate) fn new(
        spec: &TaskSpec,
        partition: i32,
        tables: Vec<TableState>,
        sink: Arc<dyn Sink>,
        committer: std::sync::mpsc::Sender<Cut>,
        metrics: Arc<Metrics>,
        globals: Globals,
    ) -> Self {
        let records_in = spec
            .sources
            .iter()
            .map(|t| {
                let labels = crate::metrics::TopicPartition::new(&t.name, partition);
                metrics.families.records_in.get_or_create_owned(&labels)
            })
            .collect();
        let table_count = tables.len();
        let keeps_time = tables
            .iter()
            .map(|table| spec.tables.iter().any(|t| t.name == table.name && t.keeps_time))
            .collect();
        let histories = tables
            .iter()
            .map(|table| {
                spec.tables
                    .iter()
                    .any(|t| t.name == table.name && t.value_type == crate::spec::HISTORY_VALUE_TYPE)
            })
            .collect();
        let names: Vec<&str> = tables.iter().map(|t| t.name).collect();
        let ttl_tables = ttl::ttl_tables(&names, &spec.tables);
        Self {
            name: spec.name.as_str().into(),
            sources: spec.sources.iter().map(|t| Arc::from(&*t.name)).collect(),
            partition,
            dead_letter_topic: spec.dead_letter_topic.as_str().into(),
            on_deserialization_error: spec.on_deserialization_error,
            on_processing_error: spec.on_processing_error,
            sends: spec.sends.iter().map(|t| Arc::from(&*t.name)).collect(),
            tables: Mutex::new(tables),
            sink,
            committer,
            written: Arc::default(),
            cuts: AtomicU64::new(0),
            metrics,
            cut_wanted: AtomicBool::new(false),
            change_pass: AtomicU64::new(0),
            last_change_pass: AtomicU64::new(0),
            finishing: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            gate: Arc::default(),
            released: AtomicBool::new(false),
            release_wake: tokio::sync::Notify::new(),
            event_time: AtomicI64::new(0),
            stream_time: AtomicI64::new(NO_TIME),
            clocks: no_clocks(table_count),
            start_clocks: no_clocks(table_count),
            keeps_time,
            histories,
            ttl_tables,
            clocks_known: AtomicBool::new(false),
            locals: Mutex::default(),
            clock: std::sync::OnceLock::new(),
            counts: Counts::new(spec.sources.len()),
            records_in,
            globals,
            unread: spec.sources.iter().map(|_| AtomicBool::new(true)).collect(),
            unread_cleared: tokio::sync::Notify::new(),
            committed: Mutex::default(),
            source_times: spec.sources.iter().map(|s| s.codecs.event_time.clone()).collect(),
        }
    }

    /// Exactly-once: the task's round with these source positions was committed.
    pub(crate) fn set_committed(&self, positions: Vec<(Arc<str>, i64)>) {
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = positions;
    }

    /// Exactly-once: the source positions (last offsets processed) of the task's last
    /// committed round.
    pub(crate) fn committed_positions(&self) -> Vec<(Arc<str>, i64)> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Says whether the broker holds records of source `source` not handed to the task yet.
    /// Call it after handing the task what was read: a task that sees the flag cleared then
    /// finds those records in its queue.
    pub(crate) fn set_unread(&self, source: usize, unread: bool) {
        if let Some(flag) = self.unread.get(source) {
            if flag.swap(unread, Ordering::AcqRel) && !unread {
                self.unread_cleared.notify_one();
            }
        }
    }

    /// Whether source `source` has records on the broker that the task was not given yet.
    pub(crate) fn has_unread(&self, source: usize) -> bool {
        self.unread.get(source).is_some_and(|flag| flag.load(Ordering::Acquire))
    }

    /// [`TaskContext::has_unread`] of the first 64 sources, a bit each. Read it before
    /// draining the task's queue: what was handed over before a flag cleared is then in it.
    pub(crate) fn unread_flags(&self) -> u64 {
        self.unread.iter().take(64).enumerate().fold(0, |flags, (index, flag)| {
            flags | (u64::from(flag.load(Ordering::Acquire)) << index)
        })
    }

    /// Waits until a source's `unread` clears.
    pub(crate) async fn unread_cleared(&self) {
        self.unread_cleared.notified().await;
    }

    /// The value of `key` in the global table `name` (from memory where the store can
    /// answer so, else a blocking read announced to the runtime).
    pub(crate) fn global_get(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let store = self
            .globals
            .get(name)
            .ok_or_else(|| Error::Config(format!("global table `{name}` is not kept by this worker")))?;
        tables::read_blocking(&**store, key)
    }

    /// A context for work outside any partition (a timer): it may send to `sends`, has no
    /// tables and no input, and makes no cuts (its sends are flushed with the worker's).
    pub(crate) fn standalone(
        name: &str,
        sends: &[crate::spec::TopicSpec],
        sink: Arc<dyn Sink>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (committer, _) = std::sync::mpsc::channel();
        Self {
            name: name.into(),
            sources: Vec::new(),
            partition: -1,
            dead_letter_topic: Arc::from(""),
            on_deserialization_error: sink::OnError::DeadLetter,
            on_processing_error: sink::OnError::DeadLetter,
            sends: sends.iter().map(|t| Arc::from(&*t.name)).collect(),
            tables: Mutex::new(Vec::new()),
            sink,
            committer,
            written: Arc::default(),
            cuts: AtomicU64::new(0),
            metrics,
            cut_wanted: AtomicBool::new(false),
            change_pass: AtomicU64::new(0),
            last_change_pass: AtomicU64::new(0),
            finishing: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            gate: Arc::default(),
            released: AtomicBool::new(false),
            release_wake: tokio::sync::Notify::new(),
            event_time: AtomicI64::new(0),
            stream_time: AtomicI64::new(NO_TIME),
            clocks: Box::default(),
            start_clocks: Box::default(),
            keeps_time: Box::default(),
            histories: Box::default(),
            ttl_tables: Box::default(),
            clocks_known: AtomicBool::new(false),
            locals: Mutex::default(),
            clock: std::sync::OnceLock::new(),
            counts: Counts::default(),
            records_in: Vec::new(),
            globals: Globals::default(),
            unread: Box::default(),
            unread_cleared: tokio::sync::Notify::new(),
            committed: Mutex::default(),
            source_times: Vec::new(),
        }
    }

    /// Takes what operation `id` keeps for this task out (to put it back when done, so that
    /// operations after it can take theirs meanwhile).
    pub(crate) fn take_local<S: std::any::Any + Send>(&self, id: usize) -> Option<Box<S>> {
        let mut locals = self.locals.lock().unwrap_or_else(|p| p.into_inner());
        let local = locals.remove(&id)?;
        local.downcast::<S>().ok()
    }

    /// Puts what operation `id` keeps for this task back.
    pub(crate) fn put_local<S: std::any::Any + Send>(&self, id: usize, local: Box<S>) {
        let mut locals = self.locals.lock().unwrap_or_else(|p| p.into_inner());
        locals.insert(id, local);
    }

    /// Adds this partition's counts to the worker's metrics.
    pub(crate) fn report(&self) {
        let take = |count: &AtomicU64| {
            let n = count.load(Ordering::Relaxed);
            count.store(0, Ordering::Relaxed);
            n
        };
        let metrics = &self.metrics;
        for (local, shared) in [
            (&self.counts.records, &metrics.records),
            (&self.counts.sends, &metrics.sends),
            (&self.counts.table_updates, &metrics.table_updates),
            (&self.counts.cache_hits, &metrics.cache_hits),
            (&self.counts.cache_misses, &metrics.cache_misses),
            (&self.counts.cache_evictions, &metrics.cache_evictions),
        ] {
            let n = take(local);
            if n > 0 {
                shared.fetch_add(n, Ordering::Relaxed);
            }
        }
        for (local, counter) in self.counts.per_source.iter().zip(&self.records_in) {
            let n = take(local);
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    pub(crate) fn tables(&self) -> MutexGuard<'_, Vec<TableState>> {
        // User code can run while this lock is held (an aggregate's `add`, a value's
        // `Deserialize`): a panic there poisons it, and the tables are taken back as they are.
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A record of source `source` is handed to the task. Its time is observed separately
    /// ([`TaskContext::observe_time`]): it may come from its value.
    pub(crate) fn record_started(&self, source: usize, message: &Message) {
        bump(&self.counts.records);
        if let Some(count) = self.counts.per_source.get(source) {
            bump(count);
        }
        let topic = self.sources.get(source).map_or("?", |t| &**t);
        self.metrics.record_in(&self.name, topic, self.partition, message);
    }

    /// The record being processed happened at `time` (ms): its outputs and changes carry
    /// it, and stream time moves up to it.
    pub(crate) fn observe_time(&self, time: i64) {
        self.event_time.store(time, Ordering::Relaxed);
        if time > self.stream_time.load(Ordering::Relaxed) {
            self.stream_time.store(time, Ordering::Relaxed);
        }
    }

    /// Stream time: the largest event time processed ([`NO_TIME`] before any).
    /// Makes wall-clock punctuation read `clock` (ms since the epoch) instead of this
    /// machine's clock: the test driver's, which its tests move by hand.
    pub(crate) fn use_clock(&self, clock: WallClock) {
        let _ = self.clock.set(clock);
    }

    /// Whether the task reads this machine's clock (it then wakes for wall-clock punctuation
    /// by itself; under the test driver's clock it punctuates at the driver's runs only).
    pub(crate) fn on_machine_clock(&self) -> bool {
        self.clock.get().is_none()
    }

    /// The wall clock's time (ms since the epoch) as the task's punctuation sees it.
    pub(crate) fn wall_time(&self) -> i64 {
        match self.clock.get() {
            Some(clock) => clock(),
            None => wall_clock_ms(),
        }
    }

    pub(crate) fn stream_time(&self) -> i64 {
        self.stream_time.load(Ordering::Relaxed)
    }

    /// Stream time as restored with the task's stores (before the first record).
    pub(crate) fn restore_stream_time(&self, time: Option<i64>) {
        if let Some(time) = time {
            self.stream_time.fetch_max(time, Ordering::Relaxed);
        }
    }

    /// A record at `time` reached the operation that keeps table `table`: its stream time
    /// moves up to it. Returns the operation's stream time.
    pub(crate) fn advance_clock(&self, table: usize, time: i64) -> i64 {
        match self.clocks.get(table) {
            Some(clock) => {
                let now = clock.load(Ordering::Relaxed);
                if time > now {
                    clock.store(time, Ordering::Relaxed);
                    time
                } else {
                    now
                }
            }
            None => NO_TIME,
        }
    }

    /// The stream time of the operation that keeps table `table` ([`NO_TIME`]: none yet).
    pub(crate) fn clock(&self, table: usize) -> i64 {
        self.clocks.get(table).map_or(NO_TIME, |c| c.load(Ordering::Relaxed))
    }

    /// [`TaskContext::clock`] as the task's restored state had it, before any record of
    /// this run: windows that ended by then were closed by an earlier owner.
    pub(crate) fn start_clock(&self, table: usize) -> i64 {
        self.start_clocks
            .get(table)
            .map_or(NO_TIME, |c| c.load(Ordering::Relaxed))
    }

    /// The operations' stream times, by their tables' names ([`NO_TIME`]: no record reached
    /// the operation yet): kept with the stores, in the changelog's headers and in the
    /// committed offsets, like stream time. Every operation that keeps one is listed, set or
    /// not: a restore then tells state that has no record at an operation from state
    /// written before operations kept stream times of their own.
    pub(crate) fn clocks(&self) -> Clocks {
        let mut clocks = Clocks::new();
        for (index, clock) in self.clocks.iter().enumerate() {
            let time = clock.load(Ordering::Relaxed);
            if self.keeps_time.get(index).copied().unwrap_or(false) {
                if let Some(table) = self.tables().get(index) {
                    clocks.push((table.name.to_string(), time));
                }
            }
        }
        clocks
    }

    /// After a restore: state written before operations kept stream times of their own
    /// has the task's stream time and no clocks at all. Each operation then starts from the
    /// task's stream time, which is what closed its windows then (without it, windows
    /// closed and sent before an upgrade would be sent again). A versioned table's history
    /// is new then: its stream time starts with its first record (seeded, the table's
    /// topic read from its start would be dropped as older than the history).
    pub(crate) fn seed_clocks(&self) {
        let time = self.stream_time();
        let unknown = !self.clocks_known.load(Ordering::Relaxed)
            && self.clocks.iter().all(|c| c.load(Ordering::Relaxed) == NO_TIME);
        if time == NO_TIME || !unknown {
            return;
        }
        let clocks = self.clocks.iter().zip(self.start_clocks.iter());
        for (index, ((clock, start), keeps_time)) in clocks.zip(self.keeps_time.iter()).enumerate() {
            if *keeps_time && !self.histories.get(index).copied().unwrap_or(false) {
                clock.store(time, Ordering::Relaxed);
                start.store(time, Ordering::Relaxed);
            }
        }
    }

    /// The operations' stream times as restored (before the first record); names of
    /// tables the task does not have are ignored.
    pub(crate) fn restore_clocks(&self, clocks: &[(String, i64)]) {
        if clocks.is_empty() {
            return;
        }
        let tables = self.tables();
        for (name, time) in clocks {
            if let Some(index) = tables.iter().position(|t| t.name == name) {
                if self.keeps_time.get(index).copied().unwrap_or(false) {
                    self.clocks_known.store(true, Ordering::Relaxed);
                }
                if let (Some(clock), Some(start)) = (self.clocks.get(index), self.start_clocks.get(index)) {
                    clock.fetch_max(*time, Ordering::Relaxed);
                    start.fetch_max(*time, Ordering::Relaxed);
                }
            }
        }
    }

    /// Event time (ms) of the record being processed.
    pub(crate) fn event_time(&self) -> i64 {
        self.event_time.load(Ordering::Relaxed)
    }

    /// Sets the event time that outputs and table changes carry (a cut's emissions carry
    /// the time of the change they report).
    pub(crate) fn set_event_time(&self, timestamp: i64) {
        self.event_time.store(timestamp, Ordering::Relaxed);
    }

    /// Hands a record to the sink, waiting while the producer's queue is full.
    pub(crate) async fn emit(&self, record: OutRecord) {
        if let Err(error) = enqueue(&*self.sink, record).await {
            self.metrics.fail(error);
        }
    }

    /// Hands a copy of a record to the sink (see `Sink::enqueue_copy`), waiting while its
    /// queue is full.
    pub(crate) async fn emit_copy(&self, record: &OutRecord) {
        if let Err(error) = sink::enqueue_copy(&*self.sink, record).await {
            self.metrics.fail(error);
        }
    }

    /// Exactly-once: what the task did since its last committed round is undone (see
    /// [`TaskContext::aborted`]); it sends nothing more.
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
    }

    /// Whether [`TaskContext::abort`] was called.
    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// The task's agent has ended (`true`), or runs again (`false`): see
    /// [`TaskContext::released`].
    pub(crate) fn release(&self, released: bool) {
        self.released.store(released, Ordering::Release);
        if released {
            self.release_wake.notify_waiters();
        }
    }

    /// Resolves once [`TaskContext::release`] says the agent has ended.
    pub(crate) async fn released(&self) {
        loop {
            let notified = self.release_wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.released.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Exactly-once: what the task's agent sends while its cut is under way (its code runs
    /// then when it awaits its stream in `select!`) waits for the round's answer: sent at
    /// once, it would go into the cut's transaction, without the offsets of the input that
    /// caused it and without the table changes made beside it. A round that did not commit
    /// ends the task (see [`TaskContext::abort`]).
    async fn round_gate(&self) {
        if !self.gate.pass().await {
            self.abort();
        }
    }

    /// Hands a record the task sends to the sink; a full queue gives the record back.
    pub(crate) fn send_now(&self, record: OutRecord) -> std::result::Result<(), SinkError> {
        self.sink.enqueue(record)?;
        bump(&self.counts.sends);
        Ok(())
    }

    /// Hands a record back from [`TaskContext::send_now`] to the sink once it has room.
    pub(crate) async fn send_when_room(&self, record: OutRecord) -> std::result::Result<(), String> {
        enqueue_when_room(&*self.sink, record).await?;
        bump(&self.counts.sends);
        Ok(())
    }

    /// How many cuts the task has made.
    pub(crate) fn cuts_made(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }

    /// The change pass table changes are marked with now.
    pub(crate) fn change_pass(&self) -> u64 {
        self.change_pass.load(Ordering::Relaxed)
    }

    /// Starts a new change pass: changes from now on are told apart from earlier ones (at a
    /// commit point, those that operations make at its end — a suppression sending a key
    /// on into a later table — go to that table's listeners too). Returns its number.
    pub(crate) fn next_change_pass(&self) -> u64 {
        self.change_pass.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether any table changed in change pass `pass` or later.
    pub(crate) fn changed_since_pass(&self, pass: u64) -> bool {
        self.last_change_pass.load(Ordering::Relaxed) >= pass
    }

    /// The number of the task's next cut (from 1).
    pub(crate) fn next_cut(&self) -> u64 {
        self.cuts.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Exactly-once: tells the committer at once that the task stopped after the worker
    /// failed (an empty cut, which commits nothing), so that it aborts the open transaction
    /// now rather than at its next round (the test driver's come only at its barriers).
    pub(crate) fn wake_committer(&self) {
        let wake = Cut {
            partition: self.partition,
            positions: Vec::new(),
            stream_time: None,
            clocks: Default::default(),
            writes: Vec::new(),
            acks: Vec::new(),
            ticket: None,
            seq: 0,
            written: Arc::clone(&self.written),
            stored: false,
            settled: false,
        };
        // A committer that is gone has nothing open.
        let _ = self.committer.send(wake);
    }

    pub(crate) fn commit(&self, cut: Cut) {
        if self.committer.send(cut).is_err() {
            tracing::debug!(task = &*self.name, "committer is gone; cut dropped");
            self.written.fail();
        }
    }

    /// Asks the stream to finish at the next record boundary, before the records still
    /// queued (an `Input::Finish` follows in the queue, carrying the acknowledgement).
    pub(crate) fn request_finish(&self) {
        self.finishing.store(true, Ordering::Relaxed);
        self.cut_wanted.store(true, Ordering::Relaxed);
    }

    /// Runs `future` with this task as the current one (what `Topic::send` and table calls
    /// reach).
    pub(crate) async fn scope<F: std::future::Future>(self: &Arc<Self>, future: F) -> F::Output {
        CONTEXT.scope(Arc::clone(self), future).await
    }
}

/// Runs `f` with the current task's context (without touching its reference count: this
/// runs for every send and table call).
pub(crate) fn with_current<T>(what: impl FnOnce() -> String, f: impl FnOnce(&Arc<TaskContext>) -> T) -> Result<T> {
    CONTEXT.try_with(f).map_err(|_| Error::NoAgentContext(what()))
}

/// `Topic::send` from inside an agent.
pub(crate) async fn send_from_agent(topic: &'static str, key: Option<Vec<u8>>, value: Vec<u8>) -> Result<()> {
    // Exactly-once: not while the task's cut waits for its round (rare: checked first).
    if let Ok(Some(ctx)) = CONTEXT.try_with(|ctx| ctx.gate.closed().then(|| Arc::clone(ctx))) {
        ctx.round_gate().await;
    }
    // Enqueued at once in the common case; a full producer queue is waited for outside.
    let full = with_current(
        || format!("topic `{topic}`"),
        |ctx| {
            if ctx.is_aborted() {
                return Err(Error::Aborted {
                    task: ctx.name.to_string(),
                    partition: ctx.partition,
                });
            }
            let Some(name) = ctx.sends.iter().find(|declared| &***declared == topic) else {
                return Err(Error::NotDeclared {
                    agent: ctx.name.to_string(),
                    what: "topic",
                    key: "sends",
                    name: topic.to_string(),
                });
            };
            let record = OutRecord {
                topic: Arc::clone(name),
                partition: None,
                key,
                value: Some(value),
                headers: Default::default(),
                timestamp: Some(ctx.event_time()),
                changelog: false,
            };
            match ctx.send_now(record) {
                Ok(()) => Ok(None),
                Err(SinkError::Full(record)) => Ok(Some((Arc::clone(ctx), record))),
                Err(SinkError::Failed(error)) => Err(Error::Config(error)),
            }
        },
    )??;
    if let Some((ctx, record)) = full {
        Box::pin(agent_send_when_room(ctx, record)).await?;
    }
    Ok(())
}

/// [`send_from_agent`] once the producer's queue has room. The gate is asked before each
/// try: the task's cut may have gone to its round meanwhile (its `next` runs beside this
/// send when the agent awaits both in `select!`).
async fn agent_send_when_room(ctx: Arc<TaskContext>, mut record: OutRecord) -> Result<()> {
    let mut full = sink::FullQueue::new();
    loop {
        full.wait().await;
        if ctx.gate.closed() {
            ctx.round_gate().await;
        }
        if ctx.is_aborted() {
            return Err(Error::Aborted {
                task: ctx.name.to_string(),
                partition: ctx.partition,
            });
        }
        match ctx.send_now(record) {
            Ok(()) => return Ok(()),
            Err(SinkError::Full(back)) => record = back,
            Err(SinkError::Failed(error)) => return Err(Error::Config(error)),
        }
    }
}

/// A clock other than this machine's (the test driver's): ms since the epoch.
pub(crate) type WallClock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Milliseconds since the Unix epoch, by this machine's clock (0 before 1970).
pub(crate) fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}

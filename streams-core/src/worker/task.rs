//! One agent instance on one partition: its context (what the agent's sends and table
//! calls reach through a task-local), and the loop that restarts it after a failure.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;

use crate::agent::AgentSpec;
use crate::message::Message;
use crate::store::StateStore;
use crate::stream::{RawStream, StreamCore};
use crate::worker::commit::Cut;
use crate::worker::metrics::Metrics;
use crate::{Error, Result};

/// What one cached entry costs beyond its key and value bytes: two `Vec`s, the hash
/// table's slot, and the allocator's headers.
const ENTRY_OVERHEAD: usize = 96;

fn entry_bytes(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD
}

/// A record on its way out: to a topic the agent sends to, a changelog or a dead-letter topic.
#[derive(Debug, Clone)]
pub(crate) struct OutRecord {
    pub topic: Arc<str>,
    /// `None`: the partitioner picks by key.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// A changelog record: its acknowledged offset becomes the store's checkpoint.
    pub changelog: bool,
}

/// Why a record could not be handed over.
pub(crate) enum SinkError {
    /// The producer's queue is full: try again shortly.
    Full(OutRecord),
    /// The record can never be produced.
    Failed(String),
}

/// Where records go: the Kafka producer in a worker.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Hands a record over without waiting for the broker.
    fn enqueue(&self, record: OutRecord) -> Result<(), SinkError>;
    /// Waits until every record handed over so far is acknowledged; an error if any failed.
    fn flush(&self) -> Result<(), String>;
    /// Offset of the last acknowledged record of a changelog partition.
    fn changelog_offset(&self, topic: &str, partition: i32) -> Option<i64>;
}

/// A table partition as one agent instance sees it.
pub(crate) struct TableState {
    pub name: &'static str,
    pub changelog: Arc<str>,
    pub store: Arc<dyn StateStore>,
    cache: HashMap<Vec<u8>, Entry, foldhash::fast::RandomState>,
    /// Estimated memory of `cache`, see [`entry_bytes`].
    cache_bytes: usize,
    /// Budget for `cache` (`App::table_cache_bytes`): past it, changed entries are committed
    /// early (a cut) and unchanged ones dropped.
    cache_limit: usize,
    dirty: usize,
}

struct Entry {
    value: Option<Vec<u8>>,
    dirty: bool,
}

impl TableState {
    pub(crate) fn new(name: &'static str, changelog: String, store: Arc<dyn StateStore>, cache_limit: usize) -> Self {
        Self {
            name,
            changelog: changelog.into(),
            store,
            cache: HashMap::default(),
            cache_bytes: 0,
            cache_limit,
            dirty: 0,
        }
    }

    /// Keeps the cache within budget after clean entries were added: drops it when nothing
    /// in it waits for a cut; otherwise returns `true`, a cut is needed first.
    fn evict_clean(&mut self) -> bool {
        if self.cache_bytes <= self.cache_limit {
            return false;
        }
        if self.dirty == 0 {
            self.cache = HashMap::default();
            self.cache_bytes = 0;
            return false;
        }
        true
    }
}

/// Changes of one table since the last cut: (changelog topic, store, entries).
pub(crate) type DirtyTable = (Arc<str>, Arc<dyn StateStore>, Vec<(Vec<u8>, Option<Vec<u8>>)>);

/// What an agent instance reaches while it runs.
pub(crate) struct TaskContext {
    pub agent: &'static str,
    pub topic: Arc<str>,
    pub partition: i32,
    pub dead_letter_topic: Arc<str>,
    /// The topics the agent declared in `sends`, by their static names.
    sends: Vec<(&'static str, Arc<str>)>,
    tables: Mutex<Vec<TableState>>,
    sink: Arc<dyn Sink>,
    committer: std::sync::mpsc::Sender<Cut>,
    pub metrics: Arc<Metrics>,
    /// Set when the table cache is over budget: the stream makes a cut before the next record.
    pub cut_wanted: std::sync::atomic::AtomicBool,
    /// Set when the partition is revoked or the worker stops: the stream stops at the next
    /// record boundary, leaving records it has not started for the next owner (see
    /// [`TaskContext::request_finish`]).
    pub finishing: std::sync::atomic::AtomicBool,
    /// This partition's counts not yet added to the shared [`Metrics`] (counting into the
    /// shared counters for every record would bounce their cache line between threads).
    counts: Counts,
}

/// Adds one to a partition's count. Only the partition's task writes its counts (and takes
/// them in `report`), so a plain load and store do: no locked instruction per record.
fn bump(count: &AtomicU64) {
    count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

#[derive(Default)]
struct Counts {
    records: AtomicU64,
    sends: AtomicU64,
    table_updates: AtomicU64,
}

tokio::task_local! {
    static CONTEXT: Arc<TaskContext>;
}

impl TaskContext {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        spec: &AgentSpec,
        app_id: &str,
        partition: i32,
        tables: Vec<TableState>,
        sink: Arc<dyn Sink>,
        committer: std::sync::mpsc::Sender<Cut>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            agent: spec.name,
            topic: spec.source.name.into(),
            partition,
            dead_letter_topic: spec.dead_letter_topic(app_id).into(),
            sends: spec.sends.iter().map(|t| (t.name, Arc::from(t.name))).collect(),
            tables: Mutex::new(tables),
            sink,
            committer,
            metrics,
            cut_wanted: std::sync::atomic::AtomicBool::new(false),
            finishing: std::sync::atomic::AtomicBool::new(false),
            counts: Counts::default(),
        }
    }

    /// Writes `entries` of table number `index` again at the next cut (see
    /// `changelog::Restoration::restate`). Called before the partition processes anything.
    pub(crate) fn restate(&self, index: usize, entries: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
        let mut tables = self.tables();
        let Some(state) = tables.get_mut(index) else { return };
        for (key, value) in entries {
            state.cache_bytes += entry_bytes(&key, value.as_deref());
            let old = state.cache.insert(key, Entry { value, dirty: true });
            if let Some(old) = &old {
                state.cache_bytes = state.cache_bytes.saturating_sub(old.value.as_ref().map_or(0, Vec::len));
            }
            if !old.is_some_and(|old| old.dirty) {
                state.dirty += 1;
            }
        }
    }

    /// Asks the stream to finish at the next record boundary, before the records still
    /// queued (an `Input::Finish` follows in the queue, carrying the acknowledgement).
    pub(crate) fn request_finish(&self) {
        self.finishing.store(true, Ordering::Relaxed);
        self.cut_wanted.store(true, Ordering::Relaxed);
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
        ] {
            let n = take(local);
            if n > 0 {
                shared.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn tables(&self) -> MutexGuard<'_, Vec<TableState>> {
        // A panic in user code never happens while this lock is held; recover regardless.
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn record_started(&self, message: &Message) {
        bump(&self.counts.records);
        self.metrics.record_in(self, message);
    }

    /// Hands a record to the sink, waiting while the producer's queue is full.
    pub(crate) async fn emit(&self, record: OutRecord) {
        if let Err(error) = enqueue(&*self.sink, record).await {
            self.metrics.fail(error);
        }
    }

    pub(crate) fn commit(&self, cut: Cut) {
        if self.committer.send(cut).is_err() {
            tracing::debug!(agent = self.agent, "committer is gone; cut dropped");
        }
    }

    /// The changes of every table of the partition since the last cut (empty for tables
    /// without changes).
    pub(crate) fn take_changes(&self) -> Vec<DirtyTable> {
        let mut tables = self.tables();
        let mut out = Vec::new();
        for table in tables.iter_mut() {
            if table.dirty == 0 {
                out.push((table.changelog.clone(), Arc::clone(&table.store), Vec::new()));
                continue;
            }
            let mut entries = Vec::with_capacity(table.dirty);
            if table.cache_bytes > table.cache_limit {
                // Over budget: the entries move out (no copies) and the cache starts afresh.
                for (key, entry) in std::mem::take(&mut table.cache) {
                    if entry.dirty {
                        entries.push((key, entry.value));
                    }
                }
                table.cache_bytes = 0;
            } else {
                for (key, entry) in table.cache.iter_mut() {
                    if entry.dirty {
                        entry.dirty = false;
                        entries.push((key.clone(), entry.value.clone()));
                    }
                }
            }
            table.dirty = 0;
            out.push((table.changelog.clone(), Arc::clone(&table.store), entries));
        }
        out
    }
}

async fn enqueue(sink: &dyn Sink, record: OutRecord) -> Result<(), String> {
    // The common case, without reading the clock; waiting is boxed to keep this future small.
    match sink.enqueue(record) {
        Ok(()) => Ok(()),
        Err(SinkError::Full(back)) => Box::pin(enqueue_when_room(sink, back)).await,
        Err(SinkError::Failed(error)) => Err(error),
    }
}

async fn enqueue_when_room(sink: &dyn Sink, mut record: OutRecord) -> Result<(), String> {
    let began = std::time::Instant::now();
    let mut warned = began;
    loop {
        tokio::time::sleep(Duration::from_millis(1)).await;
        match sink.enqueue(record) {
            Ok(()) => return Ok(()),
            Err(SinkError::Full(back)) => {
                record = back;
                if warned.elapsed() >= Duration::from_secs(10) {
                    warned = std::time::Instant::now();
                    tracing::warn!(
                        "producer queue full for {}s; waiting for the broker to acknowledge records",
                        began.elapsed().as_secs()
                    );
                }
            }
            Err(SinkError::Failed(error)) => return Err(error),
        }
    }
}

/// Runs `f` with the current agent's context (without touching its reference count: this
/// runs for every send and table call).
fn with_current<T>(what: impl FnOnce() -> String, f: impl FnOnce(&Arc<TaskContext>) -> T) -> Result<T> {
    CONTEXT.try_with(f).map_err(|_| Error::NoAgentContext(what()))
}

/// `Topic::send` from inside an agent.
pub(crate) async fn send_from_agent(topic: &'static str, key: Option<Vec<u8>>, value: Vec<u8>) -> Result<()> {
    // Enqueued at once in the common case; a full producer queue is waited for outside.
    let full = with_current(
        || format!("topic `{topic}`"),
        |ctx| {
            let Some((_, name)) = ctx.sends.iter().find(|(declared, _)| *declared == topic) else {
                return Err(Error::NotDeclared {
                    agent: ctx.agent.to_string(),
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
                headers: Vec::new(),
                changelog: false,
            };
            match ctx.sink.enqueue(record) {
                Ok(()) => {
                    bump(&ctx.counts.sends);
                    Ok(None)
                }
                Err(SinkError::Full(record)) => Ok(Some((Arc::clone(ctx), record))),
                Err(SinkError::Failed(error)) => Err(Error::Config(error)),
            }
        },
    )??;
    if let Some((ctx, record)) = full {
        Box::pin(enqueue_when_room(&*ctx.sink, record))
            .await
            .map_err(Error::Config)?;
        bump(&ctx.counts.sends);
    }
    Ok(())
}

fn not_bound(ctx: &TaskContext, table: &str) -> Error {
    Error::NotDeclared {
        agent: ctx.agent.to_string(),
        what: "table",
        key: "tables",
        name: table.to_string(),
    }
}

/// Reads a table key of the current partition and hands its bytes to `read`: the cache
/// first, then the store (off the async executor threads, in a boxed future so that the
/// common case, a cached key, keeps the future small).
pub(crate) async fn table_get<T, R>(table: &'static str, key: &[u8], read: R) -> Result<T>
where
    R: FnOnce(Option<&[u8]>) -> T,
{
    type Miss<R> = (Arc<TaskContext>, Arc<dyn StateStore>, R);
    let lookup = with_current(
        || format!("table `{table}`"),
        |ctx| -> Result<std::result::Result<T, Miss<R>>> {
            let tables = ctx.tables();
            let state = tables
                .iter()
                .find(|t| t.name == table)
                .ok_or_else(|| not_bound(ctx, table))?;
            Ok(match state.cache.get(key) {
                Some(entry) => Ok(read(entry.value.as_deref())),
                None => Err((Arc::clone(ctx), Arc::clone(&state.store), read)),
            })
        },
    )??;
    match lookup {
        Ok(value) => Ok(value),
        Err((ctx, store, read)) => {
            let value = Box::pin(table_load(&ctx, table, store, key.to_vec(), true)).await?;
            Ok(read(value.as_deref()))
        }
    }
}

/// Reads a key from the store: from its memory when it can answer without the disk, else
/// on a blocking thread. With `keep`, the value is cached (clean).
async fn table_load(
    ctx: &TaskContext,
    table: &'static str,
    store: Arc<dyn StateStore>,
    lookup: Vec<u8>,
    keep: bool,
) -> Result<Option<Vec<u8>>> {
    let (lookup, value) = match store.get_in_memory(&lookup)? {
        Some(value) => (lookup, value),
        None => {
            let (lookup, value) = tokio::task::spawn_blocking(move || {
                let value = store.get(&lookup);
                (lookup, value)
            })
            .await
            .map_err(|e| Error::Config(format!("table `{table}`: store read failed: {e}")))?;
            (lookup, value?)
        }
    };
    if !keep {
        return Ok(value);
    }
    let mut tables = ctx.tables();
    if let Some(state) = tables.iter_mut().find(|t| t.name == table) {
        if !state.cache.contains_key(&lookup) {
            state.cache_bytes += entry_bytes(&lookup, value.as_deref());
            state.cache.insert(
                lookup,
                Entry {
                    value: value.clone(),
                    dirty: false,
                },
            );
            if state.evict_clean() {
                ctx.cut_wanted.store(true, Ordering::Relaxed);
            }
        }
    }
    Ok(value)
}

/// Changes a table key of the current partition in place: `change` gets the stored bytes
/// (`None`: missing) and rewrites them, reusing their buffer. The store is read (off the
/// executor, boxed) only when the key is not cached.
pub(crate) async fn table_update<T, F>(table: &'static str, key: &[u8], change: F) -> Result<T>
where
    F: FnOnce(&mut Option<Vec<u8>>) -> Result<T>,
{
    type Miss<F> = (Arc<TaskContext>, Arc<dyn StateStore>, F);
    let attempt = with_current(
        || format!("table `{table}`"),
        |ctx| -> Result<std::result::Result<T, Miss<F>>> {
            let mut tables = ctx.tables();
            let state = tables
                .iter_mut()
                .find(|t| t.name == table)
                .ok_or_else(|| not_bound(ctx, table))?;
            match change_cached(ctx, state, key, change) {
                Ok(out) => Ok(Ok(out?)),
                Err(change) => Ok(Err((Arc::clone(ctx), Arc::clone(&state.store), change))),
            }
        },
    )??;
    match attempt {
        Ok(out) => Ok(out),
        Err((ctx, store, change)) => {
            let mut value = Box::pin(table_load(&ctx, table, store, key.to_vec(), false)).await?;
            let out = change(&mut value)?;
            put(&ctx, table, key.to_vec(), value)?;
            Ok(out)
        }
    }
}

/// Writes a table key of the current partition (made durable at the next cut).
pub(crate) fn table_put(table: &'static str, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<()> {
    with_current(|| format!("table `{table}`"), |ctx| put(ctx, table, key, value))?
}

fn put(ctx: &TaskContext, table: &'static str, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<()> {
    let mut tables = ctx.tables();
    let state = tables
        .iter_mut()
        .find(|t| t.name == table)
        .ok_or_else(|| not_bound(ctx, table))?;
    // The key is usually cached: changed by reference, since `insert` would consume it.
    let mut value = Some(value);
    if change_cached(ctx, state, &key, |slot| {
        *slot = value.take().flatten();
        Ok(())
    })
    .is_ok()
    {
        return Ok(());
    }
    let value = value.flatten();
    state.cache_bytes += entry_bytes(&key, value.as_deref());
    ctx.metrics.table_update(table, &key, value.as_deref());
    state.cache.insert(key, Entry { value, dirty: true });
    state.dirty += 1;
    changed(ctx, state);
    Ok(())
}

/// Applies `change` to the cached entry of `key` and accounts for it; gives `change` back
/// when the key is not cached.
fn change_cached<T, F>(
    ctx: &TaskContext,
    state: &mut TableState,
    key: &[u8],
    change: F,
) -> std::result::Result<Result<T>, F>
where
    F: FnOnce(&mut Option<Vec<u8>>) -> Result<T>,
{
    let Some(entry) = state.cache.get_mut(key) else {
        return Err(change);
    };
    let before = entry.value.as_ref().map_or(0, Vec::len);
    let out = match change(&mut entry.value) {
        Ok(out) => out,
        Err(error) => return Ok(Err(error)),
    };
    let after = entry.value.as_ref().map_or(0, Vec::len);
    if !entry.dirty {
        entry.dirty = true;
        state.dirty += 1;
    }
    state.cache_bytes = (state.cache_bytes + after).saturating_sub(before);
    ctx.metrics.table_update(state.name, key, entry.value.as_deref());
    changed(ctx, state);
    Ok(Ok(out))
}

/// Counts a table change; past the cache budget, asks the stream for a cut.
fn changed(ctx: &TaskContext, state: &TableState) {
    bump(&ctx.counts.table_updates);
    if state.cache_bytes > state.cache_limit {
        ctx.cut_wanted.store(true, Ordering::Relaxed);
    }
}

/// Runs an agent on one partition until its stream ends. An agent that fails (returns an
/// error or panics) has the record it was processing sent to its dead-letter topic and is
/// started again on the next record: one bad record never stops a partition.
pub(crate) async fn run_partition(spec: AgentSpec, core: StreamCore) {
    let ctx = Arc::clone(&core.ctx);
    let home = Arc::new(Mutex::new(Some(Box::new(core))));
    loop {
        let Some(raw) = RawStream::new(Arc::clone(&home)) else {
            break;
        };
        let run = CONTEXT.scope(Arc::clone(&ctx), (spec.run)(raw));
        let outcome = AssertUnwindSafe(run).catch_unwind().await;
        let taken = home.lock().ok().and_then(|mut slot| slot.take());
        let Some(mut core) = taken else {
            tracing::error!(
                agent = spec.name,
                partition = ctx.partition,
                "the agent kept its stream; partition stopped"
            );
            break;
        };
        match outcome {
            Ok(Ok(())) if core.ended => break,
            Ok(Ok(())) => {
                tracing::warn!(
                    agent = spec.name,
                    partition = ctx.partition,
                    "agent returned before its stream ended; starting it again in 1s"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(Err(error)) => {
                tracing::error!(agent = spec.name, partition = ctx.partition, "agent failed: {error}");
                core.fail_current(&error).await;
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_string());
                tracing::error!(
                    agent = spec.name,
                    partition = ctx.partition,
                    "agent panicked: {message}"
                );
                core.fail_current(&format!("panic: {message}")).await;
            }
        }
        if core.ended {
            break;
        }
        if let Ok(mut slot) = home.lock() {
            *slot = Some(core);
        }
    }
}

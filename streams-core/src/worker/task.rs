//! One agent instance on one partition: its context (what the agent's sends and table
//! calls reach through a task-local), and the loop that restarts it after a failure.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::message::{Message, OwnedMessage};

use crate::agent::AgentSpec;
use crate::store::StateStore;
use crate::stream::{RawStream, StreamCore};
use crate::worker::commit::Cut;
use crate::worker::metrics::Metrics;
use crate::{Error, Result};

/// Clean table entries kept in memory per table partition before the cache is dropped.
const CACHE_LIMIT: usize = 10_000;

/// A record on its way out: to a topic the agent sends to, a changelog or a dead-letter topic.
#[derive(Debug, Clone)]
pub(crate) struct OutRecord {
    pub topic: String,
    /// `None`: the partitioner picks by key.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
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
    pub changelog: String,
    pub store: Arc<dyn StateStore>,
    cache: HashMap<Vec<u8>, Entry>,
    dirty: usize,
}

struct Entry {
    value: Option<Vec<u8>>,
    dirty: bool,
}

impl TableState {
    pub(crate) fn new(name: &'static str, changelog: String, store: Arc<dyn StateStore>) -> Self {
        Self {
            name,
            changelog,
            store,
            cache: HashMap::new(),
            dirty: 0,
        }
    }
}

/// Changes of one table since the last cut: (changelog topic, store, entries).
pub(crate) type DirtyTable = (String, Arc<dyn StateStore>, Vec<(Vec<u8>, Option<Vec<u8>>)>);

/// What an agent instance reaches while it runs.
pub(crate) struct TaskContext {
    pub agent: &'static str,
    pub topic: String,
    pub partition: i32,
    pub dead_letter_topic: String,
    sends: Vec<&'static str>,
    tables: Mutex<Vec<TableState>>,
    sink: Arc<dyn Sink>,
    committer: std::sync::mpsc::Sender<Cut>,
    pub metrics: Arc<Metrics>,
    current_offset: AtomicI64,
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
            topic: spec.source.name.to_string(),
            partition,
            dead_letter_topic: spec.dead_letter_topic(app_id),
            sends: spec.sends.iter().map(|t| t.name).collect(),
            tables: Mutex::new(tables),
            sink,
            committer,
            metrics,
            current_offset: AtomicI64::new(-1),
        }
    }

    fn tables(&self) -> MutexGuard<'_, Vec<TableState>> {
        // A panic in user code never happens while this lock is held; recover regardless.
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn record_started(&self, message: &OwnedMessage) {
        self.current_offset.store(message.offset(), Ordering::Relaxed);
        self.metrics.record_in(self.agent, message);
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

    pub(crate) fn take_dirty(&self) -> Vec<DirtyTable> {
        let mut tables = self.tables();
        let mut out = Vec::new();
        for table in tables.iter_mut() {
            if table.dirty == 0 {
                continue;
            }
            let mut entries = Vec::with_capacity(table.dirty);
            for (key, entry) in table.cache.iter_mut() {
                if entry.dirty {
                    entry.dirty = false;
                    entries.push((key.clone(), entry.value.clone()));
                }
            }
            table.dirty = 0;
            if table.cache.len() > CACHE_LIMIT {
                table.cache.clear();
            }
            out.push((table.changelog.clone(), Arc::clone(&table.store), entries));
        }
        out
    }
}

async fn enqueue(sink: &dyn Sink, record: OutRecord) -> Result<(), String> {
    // The common case, without reading the clock.
    let mut record = match sink.enqueue(record) {
        Ok(()) => return Ok(()),
        Err(SinkError::Full(back)) => back,
        Err(SinkError::Failed(error)) => return Err(error),
    };
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

fn current(what: impl FnOnce() -> String) -> Result<Arc<TaskContext>> {
    CONTEXT.try_with(Arc::clone).map_err(|_| Error::NoAgentContext(what()))
}

/// `Topic::send` from inside an agent.
pub(crate) async fn send_from_agent(topic: &'static str, record: OutRecord) -> Result<()> {
    let ctx = current(|| format!("topic `{topic}`"))?;
    if !ctx.sends.contains(&topic) {
        return Err(Error::NotDeclared {
            agent: ctx.agent.to_string(),
            what: "topic",
            key: "sends",
            name: topic.to_string(),
        });
    }
    enqueue(&*ctx.sink, record).await.map_err(Error::Config)?;
    ctx.metrics.sends.fetch_add(1, Ordering::Relaxed);
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

/// Reads a table key of the current partition: the cache first, then the store (off the
/// async executor threads).
pub(crate) async fn table_get(table: &'static str, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
    let ctx = current(|| format!("table `{table}`"))?;
    let store = {
        let tables = ctx.tables();
        let state = tables
            .iter()
            .find(|t| t.name == table)
            .ok_or_else(|| not_bound(&ctx, table))?;
        if let Some(entry) = state.cache.get(&key) {
            return Ok(entry.value.clone());
        }
        Arc::clone(&state.store)
    };
    let lookup = key.clone();
    let value = tokio::task::spawn_blocking(move || store.get(&lookup))
        .await
        .map_err(|e| Error::Config(format!("table `{table}`: store read failed: {e}")))??;
    let mut tables = ctx.tables();
    if let Some(state) = tables.iter_mut().find(|t| t.name == table) {
        state.cache.entry(key).or_insert(Entry {
            value: value.clone(),
            dirty: false,
        });
    }
    Ok(value)
}

/// Writes a table key of the current partition (made durable at the next cut).
pub(crate) async fn table_put(table: &'static str, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<()> {
    let ctx = current(|| format!("table `{table}`"))?;
    let mut tables = ctx.tables();
    let state = tables
        .iter_mut()
        .find(|t| t.name == table)
        .ok_or_else(|| not_bound(&ctx, table))?;
    ctx.metrics.table_update(table, &key, value.as_deref());
    let entry = state.cache.entry(key).or_insert(Entry {
        value: None,
        dirty: false,
    });
    if !entry.dirty {
        entry.dirty = true;
        state.dirty += 1;
    }
    entry.value = value;
    Ok(())
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

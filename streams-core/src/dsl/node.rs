//! The nodes a pipeline is made of at run time. A record goes down a sub-topology's nodes
//! synchronously, from its source to its sinks and tables, in the task that read it: no
//! allocation or await per node. Nodes are shared by every task of the sub-topology; what a
//! task owns (its tables, its producer) they reach through [`Cx`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use crate::codec::{Key, ValueCodec};
use crate::message::Message;
use crate::task::sink::{OnError, OutRecord, SinkError};
use crate::task::TaskContext;
use crate::topic::TopicReader;

/// What a record carries down the nodes besides its key and value.
pub(crate) struct Cx<'a> {
    pub(crate) ctx: &'a Arc<TaskContext>,
    /// The record's event time (ms): what it sends carries it.
    pub(crate) timestamp: i64,
    /// Records the producer could not take yet: sent, in order, before the next record.
    pub(crate) backlog: &'a mut Vec<OutRecord>,
    /// Set by a source node once the record is decoded: an error before is a
    /// deserialization error, after it a processing error (the app handles them apart).
    pub(crate) decoded: bool,
    /// Set by a source node when the record could not be decoded for want of something
    /// outside it (the schema registry): the worker stops before the record instead of
    /// sending it to the dead-letter topic.
    pub(crate) unavailable: bool,
    /// [`crate::error::outages`] when the work began.
    pub(crate) outages: u64,
}

impl Cx<'_> {
    /// Whether something outside the record (the schema registry) was unavailable during
    /// this work: its failure is then not the record's, and the worker stops before it.
    pub(crate) fn outage(&self) -> bool {
        self.unavailable || crate::error::outages() != self.outages
    }
}

/// A table change whose processing failed with `error`: to the dead-letter topic, as the app
/// says; or, when something outside it was unavailable, the worker stops (nothing more is
/// committed, and the input that made the change is processed again at the next start).
pub(crate) fn change_failed_in(
    cx: &mut Cx<'_>,
    table: &str,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    time: i64,
    error: &str,
) {
    if cx.outage() {
        cx.ctx.metrics.fail(format!(
            "task `{}`: a change of table `{table}`: {error}; the worker stops, nothing more is committed",
            cx.ctx.name
        ));
    } else {
        let records = change_failed(cx.ctx, table, key, value, time, error);
        cx.backlog.extend(records);
    }
}

/// What failed at a commit point or in a punctuation has no input record to send to the
/// dead-letter topic or skip (a punctuation a record's time set off is not that record's
/// doing either): it is logged; under `OnError::Fail` (processing errors) the worker stops,
/// the task takes nothing more and no cut is made from then on, as Kafka Streams' processing
/// handler (KIP-1033) stops on a punctuation's exception.
pub(crate) fn failed_without_a_record(ctx: &TaskContext, what: &str, error: &str) {
    let partition = ctx.partition;
    if ctx.on_processing_error == OnError::Fail {
        ctx.metrics.fail(format!(
            "task `{}` (partition {partition}): {what}: {error}; the worker stops, as App::on_processing_error says",
            ctx.name
        ));
    } else {
        tracing::error!(task = &*ctx.name, partition, "{what}: {error}");
    }
}

/// What a commit point sends could not be encoded for want of something outside it (the
/// schema registry): the worker stops, and nothing from this commit point on is committed
/// (the input that caused it is processed again at the next start).
pub(crate) fn stop_unavailable(ctx: &TaskContext, error: &str) {
    ctx.metrics.fail(format!(
        "task `{}`: at a commit point: {error}; the worker stops, nothing more is committed",
        ctx.name
    ));
}

/// A node's encoding of `what` for `topic`: the error as text, noting in `cx` whether it was
/// [`crate::EncodeError::unavailable`].
pub(crate) fn encoding<T>(
    cx: &mut Cx<'_>,
    what: &str,
    topic: &str,
    result: Result<T, crate::EncodeError>,
) -> Result<T, String> {
    result.map_err(|error| {
        cx.unavailable |= error.is_unavailable();
        format!("cannot encode {what} for topic `{topic}`: {error}")
    })
}

/// A source node's decoding of a record's key (`what` = "key") or value (`what` empty): the
/// error as text, noting in `cx` whether it was [`crate::DecodeError::unavailable`].
pub(crate) fn decoding<T>(cx: &mut Cx<'_>, what: &str, result: Result<T, crate::DecodeError>) -> Result<T, String> {
    result.map_err(|error| {
        cx.unavailable |= error.is_unavailable();
        if what.is_empty() {
            error.to_string()
        } else {
            format!("{what}: {error}")
        }
    })
}

/// A node's outcome: an error sends the input record to the dead-letter topic.
pub(crate) type Outcome = Result<(), String>;

/// A node that takes records with keys `K` and values `V`.
pub(crate) trait Node<K, V>: Send + Sync {
    fn push(&self, cx: &mut Cx<'_>, key: K, value: V) -> Outcome;
}

impl<K, V, F> Node<K, V> for F
where
    F: Fn(&mut Cx<'_>, K, V) -> Outcome + Send + Sync,
{
    fn push(&self, cx: &mut Cx<'_>, key: K, value: V) -> Outcome {
        self(cx, key, value)
    }
}

/// Runs `push`, turning a panic into an error: one branch of a record that panics does not
/// keep its other branches from running.
pub(crate) fn guarded(push: impl FnOnce() -> Outcome) -> Outcome {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(push))
        .unwrap_or_else(|panic| Err(format!("panic: {}", crate::error::panic_text(&*panic))))
}

/// Something built that must be frozen before it runs.
pub(crate) trait Freeze {
    fn freeze(&self);
}

type Copier<K, V> = fn(&K, &V) -> (K, V);
/// A fanout once built: its children, and how to copy a record for all but the last.
type Frozen<K, V> = (Box<[Arc<dyn Node<K, V>>]>, Option<Copier<K, V>>);

/// Where a node sends its records: the nodes after it. Filled while the pipeline is built,
/// frozen before it runs (then reading it costs one atomic load).
pub(crate) struct Fanout<K, V> {
    building: Mutex<Vec<Arc<dyn Node<K, V>>>>,
    copier: Mutex<Option<Copier<K, V>>>,
    frozen: OnceLock<Frozen<K, V>>,
}

impl<K, V> Fanout<K, V> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            building: Mutex::new(Vec::new()),
            copier: Mutex::new(None),
            frozen: OnceLock::new(),
        })
    }

    pub(crate) fn add(&self, child: Arc<dyn Node<K, V>>) {
        self.building.lock().unwrap_or_else(|p| p.into_inner()).push(child);
    }

    /// Lets records be copied to several children (a stream that is used twice).
    pub(crate) fn allow_copies(&self, copier: Copier<K, V>) {
        *self.copier.lock().unwrap_or_else(|p| p.into_inner()) = Some(copier);
    }

    /// Hands a record to every child (copies to all but the last). A child that fails does
    /// not keep the record from the others: the first error is returned once all had it.
    pub(crate) fn push(&self, cx: &mut Cx<'_>, key: K, value: V) -> Outcome {
        let Some((children, copier)) = self.frozen.get() else {
            return Err("the pipeline was not built".into());
        };
        match children.len() {
            0 => Ok(()),
            1 => children[0].push(cx, key, value),
            n => {
                let copy = copier.ok_or("a stream used twice cannot copy its records")?;
                let mut outcome = Ok(());
                for child in &children[..n - 1] {
                    let (key, value) = copy(&key, &value);
                    outcome = outcome.and(guarded(|| child.push(cx, key, value)));
                }
                outcome.and(guarded(|| children[n - 1].push(cx, key, value)))
            }
        }
    }
}

impl<K: Send, V: Send> Freeze for Fanout<K, V> {
    fn freeze(&self) {
        let children = std::mem::take(&mut *self.building.lock().unwrap_or_else(|p| p.into_inner()));
        let copier = *self.copier.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.frozen.set((children.into_boxed_slice(), copier));
    }
}

/// Where a table is among its task's tables, known once the pipeline is built.
#[derive(Clone, Default)]
pub(crate) struct TableSlot(Arc<OnceLock<usize>>);

impl TableSlot {
    pub(crate) fn set(&self, index: usize) {
        let _ = self.0.set(index);
    }

    pub(crate) fn get(&self) -> Result<usize, String> {
        self.0
            .get()
            .copied()
            .ok_or_else(|| "the pipeline was not built".to_string())
    }
}

/// The first node of a sub-topology for one of its source topics: decodes a record.
pub(crate) trait SourceNode: Send + Sync {
    fn push_message(&self, cx: &mut Cx<'_>, message: &Message) -> Outcome;
}

/// A stream source: the record's key and value, decoded, go down the pipeline.
pub(crate) struct StreamSource<K, V> {
    pub(crate) reader: TopicReader<V>,
    pub(crate) next: Arc<Fanout<K, V>>,
}

impl<K: Key, V: Send + Sync> SourceNode for StreamSource<K, V> {
    fn push_message(&self, cx: &mut Cx<'_>, message: &Message) -> Outcome {
        let key = decoding(cx, "key", K::decode_key(message.key()))?;
        let value = decoding(cx, "", self.reader.values.decode(message.payload().unwrap_or_default()))?;
        observe_time(cx, self.reader.time_of(&value, message)?);
        cx.decoded = true;
        self.next.push(cx, key, value)
    }
}

/// The record being processed happened at `time`: what it causes carries that time, and
/// the task's stream time moves up to it.
pub(crate) fn observe_time(cx: &mut Cx<'_>, time: Option<i64>) {
    if let Some(time) = time {
        cx.timestamp = time;
        cx.ctx.observe_time(time);
    }
}

/// Runs `f` with what it causes carrying `time` (records sent, table changes), as when an
/// operation sends on at a commit point what an earlier record made (a window's final
/// result, a suppressed change, a join's record without a match).
pub(crate) fn at_time<T>(cx: &mut Cx<'_>, time: i64, f: impl FnOnce(&mut Cx<'_>) -> T) -> T {
    let (before, event_time) = (cx.timestamp, cx.ctx.event_time());
    cx.timestamp = time;
    cx.ctx.set_event_time(time);
    let out = f(cx);
    cx.timestamp = before;
    cx.ctx.set_event_time(event_time);
    out
}

/// Hands a record to the producer, after any that wait for room (so that records keep
/// their order).
pub(crate) fn send(cx: &mut Cx<'_>, record: OutRecord) -> Outcome {
    if !cx.backlog.is_empty() {
        cx.backlog.push(record);
        return Ok(());
    }
    match cx.ctx.send_now(record) {
        Ok(()) => Ok(()),
        Err(SinkError::Full(record)) => {
            cx.backlog.push(record);
            Ok(())
        }
        Err(SinkError::Failed(error)) => Err(error),
    }
}

/// A node that sends records to `topic`, encoded with `values`.
pub(crate) fn sink<K: Key, V: Send + Sync + 'static>(topic: Arc<str>, values: ValueCodec<V>) -> Arc<dyn Node<K, V>> {
    Arc::new(move |cx: &mut Cx<'_>, key: K, value: V| {
        let key = encoding(cx, "a key", &topic, key.try_encode_key())?;
        let value = encoding(cx, "a value", &topic, values.encode(&value))?;
        let record = OutRecord {
            topic: Arc::clone(&topic),
            partition: None,
            key,
            value: Some(value),
            headers: Default::default(),
            timestamp: Some(cx.timestamp),
            changelog: false,
        };
        send(cx, record)
    })
}

/// Work a node does at each cut, after the tables' changes went on (a windowed aggregation
/// closes and expires its windows).
pub(crate) trait Tick: Send + Sync {
    fn tick(&self, cx: &mut Cx<'_>) -> Outcome;

    /// When (the task's wall time, ms) this node's wall-clock punctuation is due next, if
    /// it has one: the task cuts then, and the cut's tick runs it.
    fn wall_clock_due(&self, ctx: &Arc<TaskContext>) -> Option<i64> {
        let _ = ctx;
        None
    }

    /// Runs this node's wall-clock punctuation if it is due (between records).
    fn wall_clock(&self, cx: &mut Cx<'_>) -> Outcome {
        let _ = cx;
        Ok(())
    }
}

/// Receives the changes of a table at each cut (a `KTable::to_stream`).
pub(crate) trait ChangeListener: Send + Sync {
    fn change(&self, cx: &mut Cx<'_>, key: &[u8], value: Option<&[u8]>) -> Outcome;
}

/// Where an operation that makes changes of its own out of a table's (a suppression) sends
/// them: the listeners added while the pipeline is built, frozen before it runs.
pub(crate) struct ChangeFanout {
    building: Mutex<Vec<Arc<dyn ChangeListener>>>,
    frozen: OnceLock<Box<[Arc<dyn ChangeListener>]>>,
}

impl ChangeFanout {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            building: Mutex::new(Vec::new()),
            frozen: OnceLock::new(),
        })
    }

    pub(crate) fn add(&self, listener: Arc<dyn ChangeListener>) {
        self.building.lock().unwrap_or_else(|p| p.into_inner()).push(listener);
    }

    /// Hands a change to every listener; one that fails does not keep it from the others:
    /// the first error is returned once all had it.
    pub(crate) fn change(&self, cx: &mut Cx<'_>, key: &[u8], value: Option<&[u8]>) -> Outcome {
        let Some(listeners) = self.frozen.get() else {
            return Err("the pipeline was not built".into());
        };
        let mut outcome = Ok(());
        for listener in listeners.iter() {
            outcome = outcome.and(guarded(|| listener.change(cx, key, value)));
        }
        outcome
    }
}

impl Freeze for ChangeFanout {
    fn freeze(&self) {
        let listeners = std::mem::take(&mut *self.building.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = self.frozen.set(listeners.into_boxed_slice());
    }
}

/// A change of a table that failed on its way on (after `to_stream`, or a window's final
/// result), handled as the app says of processing errors (`App::on_processing_error`): the
/// record for the dead-letter topic, or none (dropped, or the worker stops).
pub(crate) fn change_failed(
    ctx: &TaskContext,
    table: &str,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    timestamp: i64,
    error: &str,
) -> Option<OutRecord> {
    match ctx.on_processing_error {
        OnError::DeadLetter => Some(dead_letter_change(ctx, table, key, value, timestamp, error)),
        OnError::Continue => {
            tracing::warn!(
                task = &*ctx.name,
                "a change of table `{table}` (key {}) could not go on: {error}; skipped",
                String::from_utf8_lossy(&key)
            );
            ctx.metrics.skipped.fetch_add(1, Ordering::Relaxed);
            None
        }
        OnError::Fail => {
            ctx.metrics.fail(format!(
                "task `{}`: a change of table `{table}` (key {}) could not go on: {error}; the worker stops, as \
                 App::on_processing_error says",
                ctx.name,
                String::from_utf8_lossy(&key)
            ));
            None
        }
    }
}

/// A change of a table that failed on its way on, for the dead-letter topic as the table
/// holds it, with headers naming the table and the error.
fn dead_letter_change(
    ctx: &TaskContext,
    table: &str,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    timestamp: i64,
    error: &str,
) -> OutRecord {
    let dlq = Arc::clone(&ctx.dead_letter_topic);
    tracing::warn!(
        task = &*ctx.name,
        "a change of table `{table}` (key {}) could not go on: {error}; copied to dead-letter topic {dlq}",
        String::from_utf8_lossy(&key)
    );
    ctx.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
    OutRecord {
        topic: dlq,
        partition: None,
        key: Some(key),
        value,
        headers: vec![
            ("streams.dlq.table".into(), table.as_bytes().to_vec()),
            ("streams.dlq.agent".into(), ctx.name.as_bytes().to_vec()),
            ("streams.dlq.stage".into(), b"processing".to_vec()),
            ("streams.dlq.error".into(), error.as_bytes().to_vec()),
        ]
        .into(),
        timestamp: Some(timestamp),
        changelog: false,
    }
}

//! Streams: what an agent iterates over — one partition's records, decoded, in order.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::Headers;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::codec::Key;
use crate::message::Message;
use crate::record::Record;
use crate::worker::commit::{Ack, Cut, TableWrite};
use crate::worker::task::{OutRecord, TaskContext};
use crate::{DecodeError, Origin};

/// One record as an agent sees it: decoded key and value plus where it came from.
#[derive(Debug, Clone)]
pub struct Event<K, V> {
    /// The record's key.
    pub key: K,
    /// The record's value.
    pub value: V,
    /// Topic, partition and offset of the record.
    pub origin: Origin,
    /// The record's timestamp in milliseconds since the epoch, when it has one.
    pub timestamp: Option<i64>,
}

/// The records of one partition of an agent's source topic, decoded into `V` with keys `K`.
///
/// `next()` returns the next value; calling it again marks the previous record as processed
/// (its sends and table updates belong to it). Records that do not decode never reach the
/// agent: they are logged with topic/partition/offset and copied to the agent's dead-letter
/// topic, and the stream moves on.
///
/// ```ignore
/// #[agent(topic = HIT_COUNT)]
/// async fn print_hits(mut hits: Stream<(), HitCount>) {
///     while let Some(hit) = hits.next().await {
///         println!("{} had {} hits", hit.user_id, hit.hits);
///     }
/// }
/// ```
pub struct Stream<K, V> {
    raw: RawStream,
    _types: PhantomData<fn() -> (K, V)>,
}

/// A stream before its types are applied; the runtime hands it to the agent function.
pub struct RawStream {
    core: Option<Box<StreamCore>>,
    home: Arc<Mutex<Option<Box<StreamCore>>>>,
}

impl RawStream {
    pub(crate) fn new(home: Arc<Mutex<Option<Box<StreamCore>>>>) -> Option<Self> {
        let core = home.lock().ok()?.take()?;
        Some(Self { core: Some(core), home })
    }
}

impl Drop for RawStream {
    fn drop(&mut self) {
        // The core outlives one run of the agent: give it back so that a restarted agent
        // continues where this one stopped.
        if let Some(core) = self.core.take() {
            if let Ok(mut home) = self.home.lock() {
                *home = Some(core);
            }
        }
    }
}

/// A type an agent can take as its stream. Implemented by [`Stream`].
#[diagnostic::on_unimplemented(
    message = "an agent's first parameter must be its stream, `Stream<K, V>`, not `{Self}`",
    note = "K and V are the key and value types of the agent's topic"
)]
pub trait StreamParam: Send + 'static {
    /// Key type of the records.
    type Key: Key;
    /// Value type of the records.
    type Value: Record;
    /// Applies the types to the runtime's stream.
    fn from_raw(raw: RawStream) -> Self;
}

impl<K: Key, V: Record> StreamParam for Stream<K, V> {
    type Key = K;
    type Value = V;
    fn from_raw(raw: RawStream) -> Self {
        Stream {
            raw,
            _types: PhantomData,
        }
    }
}

impl<K: Key, V: Record> Stream<K, V> {
    /// The next value, or `None` when the partition was revoked or the worker stops.
    pub async fn next(&mut self) -> Option<V> {
        let core = self.raw.core.as_mut()?;
        loop {
            let message = core.next_message().await?;
            // The key is decoded (and checked) even when only the value is wanted: a record
            // whose key does not decode goes to the dead-letter topic either way.
            let checked = K::check_key(message.key()).map_err(|e| DecodeError::new(format!("key: {e}")));
            match checked.and_then(|()| V::decode(message.payload().unwrap_or_default())) {
                Ok(value) => {
                    core.begin(message);
                    return Some(value);
                }
                Err(error) => core.dead_letter(message, &error.to_string()).await,
            }
        }
    }

    /// The next record with its key and origin.
    pub async fn next_event(&mut self) -> Option<Event<K, V>> {
        let core = self.raw.core.as_mut()?;
        loop {
            let message = core.next_message().await?;
            let decoded =
                decode_key::<K>(&message).and_then(|key| Ok((key, V::decode(message.payload().unwrap_or_default())?)));
            match decoded {
                Ok((key, value)) => {
                    let event = Event {
                        key,
                        value,
                        origin: core.origin(message.offset()),
                        timestamp: message.timestamp(),
                    };
                    core.begin(message);
                    return Some(event);
                }
                Err(error) => core.dead_letter(message, &error.to_string()).await,
            }
        }
    }

    /// Where the record last returned by `next` came from.
    pub fn origin(&self) -> Option<Origin> {
        let core = self.raw.core.as_ref()?;
        Some(core.origin(core.current.as_ref()?.offset()))
    }
}

fn decode_key<K: Key>(message: &Message) -> Result<K, DecodeError> {
    K::decode_key(message.key()).map_err(|e| DecodeError::new(format!("key: {e}")))
}

/// What the worker puts into a partition's queue.
pub(crate) enum Input {
    /// Records to process, in order (one wake-up for many records).
    Records(Vec<Message>),
    /// Where processing starts, decided once the partition's stores are restored: records
    /// before it were read from an earlier position and are skipped (their effects are in
    /// the stores already). The partition counts as processed up to it: its first cut
    /// commits it, with whatever the restore left to write again.
    StartAt(i64),
    /// Finish: make a last cut, acknowledge it once committed, and end the stream.
    Finish(Ack),
    /// Make a cut now and acknowledge it once committed; the stream goes on.
    Flush(Ack),
}

/// The state of one partition's stream that survives restarts of the agent.
pub(crate) struct StreamCore {
    pub(crate) ctx: Arc<TaskContext>,
    rx: mpsc::Receiver<Input>,
    /// The batch being processed (batches are taken one at a time, when this one is done).
    batch: std::vec::IntoIter<Message>,
    pub(crate) current: Option<Message>,
    /// Records before this offset are skipped (see [`Input::StartAt`]).
    floor: i64,
    processed: Option<i64>,
    last_cut: Option<i64>,
    next_cut: Instant,
    commit_interval: Duration,
    since_clock: u32,
    pub(crate) ended: bool,
}

impl StreamCore {
    pub(crate) fn new(ctx: Arc<TaskContext>, rx: mpsc::Receiver<Input>, commit_interval: Duration) -> Self {
        Self {
            ctx,
            rx,
            batch: Vec::new().into_iter(),
            current: None,
            floor: i64::MIN,
            processed: None,
            last_cut: None,
            next_cut: Instant::now() + commit_interval,
            commit_interval,
            since_clock: 0,
            ended: false,
        }
    }

    fn origin(&self, offset: i64) -> Origin {
        Origin {
            topic: Arc::clone(&self.ctx.topic),
            partition: self.ctx.partition,
            offset,
        }
    }

    fn begin(&mut self, message: Message) {
        self.ctx.record_started(&message);
        self.current = Some(message);
    }

    /// The record the agent was given last is done.
    fn finish_current(&mut self) {
        if let Some(message) = self.current.take() {
            self.processed = Some(message.offset());
        }
    }

    /// The next message. The common case (records are queued and no clock check is due)
    /// is synchronous; everything else runs in a boxed future, so the future an agent awaits
    /// for every record stays small (awaiting moves it, byte by byte).
    async fn next_message(&mut self) -> Option<Message> {
        self.finish_current();
        if !self.ended && self.since_clock + 1 < 256 && !self.ctx.cut_wanted.load(Ordering::Relaxed) {
            if let Some(message) = self.batch.next() {
                self.since_clock += 1;
                if message.offset() >= self.floor {
                    return Some(message);
                }
            }
        }
        loop {
            let message = Box::pin(self.next_message_slow()).await?;
            if message.offset() >= self.floor {
                return Some(message);
            }
        }
    }

    async fn next_message_slow(&mut self) -> Option<Message> {
        loop {
            if self.ended {
                return None;
            }
            if self.ctx.finishing.load(Ordering::Relaxed) {
                self.finish_now().await;
                return None;
            }
            if self.ctx.cut_wanted.swap(false, Ordering::Relaxed) {
                self.cut(None).await;
            }
            // Reading the clock for every record costs more than the record: look at it every
            // 256 records, and whenever the queue is empty.
            self.since_clock += 1;
            if self.since_clock >= 256 {
                self.since_clock = 0;
                self.ctx.report();
                if Instant::now() >= self.next_cut {
                    self.cut(None).await;
                }
            }
            if let Some(message) = self.batch.next() {
                return Some(message);
            }
            let input = match self.rx.try_recv() {
                Ok(input) => Some(input),
                Err(mpsc::error::TryRecvError::Empty) => {
                    self.since_clock = 0;
                    self.ctx.report();
                    if Instant::now() >= self.next_cut {
                        self.cut(None).await;
                    }
                    tokio::select! {
                        biased;
                        input = self.rx.recv() => input,
                        _ = tokio::time::sleep_until(self.next_cut) => continue,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            match input {
                Some(Input::Records(messages)) => self.batch = messages.into_iter(),
                Some(Input::StartAt(start)) => {
                    self.floor = start;
                    if self.processed.is_none() && start > 0 {
                        self.processed = Some(start - 1);
                    }
                }
                Some(Input::Finish(ack)) => {
                    self.cut(Some(ack)).await;
                    self.ended = true;
                }
                Some(Input::Flush(ack)) => self.cut(Some(ack)).await,
                None => self.ended = true,
            }
        }
    }

    /// Finishes at this record boundary: records not started yet are dropped (the next
    /// owner reads them again), the last cut is made and acknowledged, the stream ends.
    async fn finish_now(&mut self) {
        self.batch = Vec::new().into_iter();
        loop {
            let input = match self.rx.try_recv() {
                Ok(input) => Some(input),
                Err(mpsc::error::TryRecvError::Empty) => self.rx.recv().await,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            match input {
                Some(Input::Records(_) | Input::StartAt(_)) => {}
                Some(Input::Flush(ack)) => self.cut(Some(ack)).await,
                Some(Input::Finish(ack)) => {
                    self.cut(Some(ack)).await;
                    break;
                }
                None => break,
            }
        }
        self.ended = true;
    }

    /// The agent failed on the current record: it goes to the dead-letter topic.
    pub(crate) async fn fail_current(&mut self, error: &str) {
        if let Some(message) = self.current.take() {
            self.dead_letter(message, &format!("agent `{}` failed: {error}", self.ctx.agent))
                .await;
        }
    }

    /// Copies a record that cannot be processed to the dead-letter topic, unchanged, with
    /// headers naming its origin and the error; it then counts as processed.
    async fn dead_letter(&mut self, message: Message, error: &str) {
        let origin = self.origin(message.offset());
        let dlq = self.ctx.dead_letter_topic.clone();
        tracing::warn!(
            agent = self.ctx.agent,
            "cannot process record {origin}: {error}; copied to dead-letter topic {dlq}"
        );
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers.push((header.key.to_string(), header.value.unwrap_or_default().to_vec()));
            }
        }
        headers.push(("streams.dlq.topic".into(), origin.topic.as_bytes().to_vec()));
        headers.push((
            "streams.dlq.partition".into(),
            origin.partition.to_string().into_bytes(),
        ));
        headers.push(("streams.dlq.offset".into(), origin.offset.to_string().into_bytes()));
        headers.push(("streams.dlq.agent".into(), self.ctx.agent.as_bytes().to_vec()));
        headers.push(("streams.dlq.error".into(), error.as_bytes().to_vec()));
        let record = OutRecord {
            topic: dlq,
            partition: None,
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
            changelog: false,
        };
        self.ctx.emit(record).await;
        self.ctx
            .metrics
            .dead_lettered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.processed = Some(origin.offset);
    }

    /// A commit point for this partition: the changelog records of every table change since
    /// the last cut are handed to the producer, and the store writes and the source offset
    /// go to the committer, which makes them durable in the order of ARCHITECTURE.md §1.
    pub(crate) async fn cut(&mut self, ack: Option<Ack>) {
        self.ctx.report();
        self.next_cut = Instant::now() + self.commit_interval;
        if self.processed == self.last_cut && ack.is_none() {
            return;
        }
        let ctx = Arc::clone(&self.ctx);
        let mut writes: Vec<TableWrite> = Vec::new();
        let positions: Vec<(Arc<str>, i64)> = self
            .processed
            .map(|offset| (Arc::clone(&ctx.topic), offset))
            .into_iter()
            .collect();
        if !positions.is_empty() {
            // Every store of the partition gets the cut's positions, changed or not: a
            // store's positions say how far its state reflects the input.
            let headers = crate::changelog::source_headers(&positions, ctx.partition);
            for (changelog, store, entries) in ctx.take_changes() {
                for (key, value) in &entries {
                    let record = OutRecord {
                        topic: changelog.clone(),
                        partition: Some(ctx.partition),
                        key: Some(key.clone()),
                        value: value.clone(),
                        headers: headers.clone(),
                        changelog: true,
                    };
                    ctx.emit(record).await;
                }
                writes.push(TableWrite {
                    changelog,
                    store,
                    entries,
                });
            }
        }
        let cut = Cut {
            partition: ctx.partition,
            positions,
            writes,
            ack,
        };
        self.last_cut = self.processed;
        ctx.commit(cut);
    }
}

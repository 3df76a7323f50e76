//! Streams: what an agent iterates over — one partition's records, decoded, in order.

use std::marker::PhantomData;

use crate::codec::Key;
use crate::message::Message;
use crate::record::Record;
pub use crate::task::input::RawStream;
use crate::task::input::Rejected;
use crate::topic::TopicReader;
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
    /// The record's event time in milliseconds since the epoch: its timestamp, or what the
    /// topic's extractor took from its value ([`crate::Topic::event_time`]).
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
    reader: TopicReader<V>,
    _key: PhantomData<fn() -> K>,
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
    /// Applies the types to the runtime's stream, whose records `reader` reads.
    fn from_raw(raw: RawStream, reader: TopicReader<Self::Value>) -> Self;
}

impl<K: Key, V: Record> StreamParam for Stream<K, V> {
    type Key = K;
    type Value = V;
    fn from_raw(raw: RawStream, reader: TopicReader<V>) -> Self {
        Stream {
            raw,
            reader,
            _key: PhantomData,
        }
    }
}

impl<K: Key, V: Record> Stream<K, V> {
    /// The next value, or `None` when the partition was revoked or the worker stops.
    ///
    /// Cancel-safe: awaited in `tokio::select!` and dropped while it waits (for input, or
    /// for its commit point's round to commit), it leaves that work to the next call, which
    /// finishes it and returns its record. Under exactly-once, a send from another branch
    /// while that round commits waits for its end.
    ///
    /// ```ignore
    /// #[agent(topic = HITS, sends = [BATCHES])]
    /// async fn batch(mut hits: Stream<String, Hit>) -> Result<()> {
    ///     let mut tick = tokio::time::interval(Duration::from_secs(1));
    ///     loop {
    ///         tokio::select! {
    ///             hit = hits.next() => match hit {
    ///                 Some(hit) => { /* process it */ }
    ///                 None => break,
    ///             },
    ///             _ = tick.tick() => { /* act on the wall clock */ }
    ///         }
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub async fn next(&mut self) -> Option<V> {
        loop {
            let (source, message) = self.raw.next_message().await?;
            let core = self.raw.core.as_mut()?;
            // The key is decoded (and checked) even when only the value is wanted: a record
            // whose key does not decode goes to the dead-letter topic either way.
            let checked = K::check_key(message.key()).map_err(|e| e.prefixed("key: "));
            let reader = self.reader;
            let read = checked
                .and_then(|()| reader.values.decode_fast(message.payload().unwrap_or_default()))
                .map_err(Unread::from)
                .and_then(|value| Ok((reader.time_of(&value, &message)?, value)));
            match read {
                Ok((time, value)) => {
                    core.begin_at(source, message, time);
                    return Some(value);
                }
                Err(unread) => self.raw.rejected = unread.handle(core, source, message),
            }
        }
    }

    /// The next record with its key and origin. Cancel-safe, as [`Stream::next`].
    pub async fn next_event(&mut self) -> Option<Event<K, V>> {
        loop {
            let (source, message) = self.raw.next_message().await?;
            let core = self.raw.core.as_mut()?;
            let reader = self.reader;
            let decoded = decode_key::<K>(&message)
                .and_then(|key| Ok((key, reader.values.decode_fast(message.payload().unwrap_or_default())?)))
                .map_err(Unread::from)
                .and_then(|(key, value)| Ok((reader.time_of(&value, &message)?, key, value)));
            match decoded {
                Ok((time, key, value)) => {
                    let event = Event {
                        key,
                        value,
                        origin: core.origin(source, message.offset()),
                        timestamp: time,
                    };
                    core.begin_at(source, message, time);
                    return Some(event);
                }
                Err(unread) => self.raw.rejected = unread.handle(core, source, message),
            }
        }
    }

    /// This stream with punctuation on stream time every `every` (Kafka Streams'
    /// `STREAM_TIME` punctuation): [`Punctuated::next`] gives [`Next::Tick`] each time the
    /// partition's stream time (the largest event time it has processed) passes a multiple
    /// of `every`, right after the record that moved it there.
    ///
    /// ```ignore
    /// #[agent(topic = READINGS, sends = [MINUTE_MAX])]
    /// async fn minute_max(readings: Stream<String, Reading>) -> Result<()> {
    ///     let mut readings = readings.punctuate(Duration::from_secs(60));
    ///     let mut max = HashMap::new();
    ///     while let Some(next) = readings.next_event().await {
    ///         match next {
    ///             Next::Record(event) => { /* keep the max per key */ }
    ///             Next::Tick(stream_time) => { /* send the maxima, clear them */ }
    ///         }
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn punctuate(self, every: std::time::Duration) -> Punctuated<K, V> {
        Punctuated {
            stream: self,
            every: i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1),
            next_tick: None,
        }
    }

    /// Where the record last returned by `next` came from.
    pub fn origin(&self) -> Option<Origin> {
        let core = self.raw.core.as_ref()?;
        let (source, message) = core.current()?;
        Some(core.origin(source, message.offset()))
    }
}

fn decode_key<K: Key>(message: &Message) -> Result<K, DecodeError> {
    K::decode_key(message.key()).map_err(|e| e.prefixed("key: "))
}

/// Why a record could not be read: a [`DecodeError`] (the record's fault, or something it
/// needs unavailable), or an event time the topic's extractor refuses.
struct Unread {
    error: String,
    unavailable: bool,
}

impl From<DecodeError> for Unread {
    fn from(error: DecodeError) -> Self {
        Self {
            unavailable: error.is_unavailable(),
            error: error.to_string(),
        }
    }
}

impl From<String> for Unread {
    fn from(error: String) -> Self {
        Self {
            error,
            unavailable: false,
        }
    }
}

impl Unread {
    /// When what the record needs is unavailable, the worker stops before it; otherwise it
    /// goes where the app's deserialization handler says, on the way to the next record
    /// (see [`RawStream::next_message`]).
    fn handle(self, core: &mut crate::task::input::StreamCore, source: usize, message: Message) -> Option<Rejected> {
        if self.unavailable {
            core.halt(source, &message, &self.error);
            return None;
        }
        Some(Rejected {
            source,
            message,
            error: self.error,
        })
    }
}

/// What a [`Punctuated`] stream gives: a record, or a punctuation.
#[derive(Debug, Clone, PartialEq)]
pub enum Next<T> {
    /// The next record.
    Record(T),
    /// Stream time (ms) passed a multiple of the interval; this is the stream time.
    Tick(i64),
}

/// A stream with punctuation on stream time (see [`Stream::punctuate`]).
pub struct Punctuated<K, V> {
    stream: Stream<K, V>,
    every: i64,
    next_tick: Option<i64>,
}

impl<K: Key, V: Record> Punctuated<K, V> {
    /// A punctuation when one is due, else the next value.
    pub async fn next(&mut self) -> Option<Next<V>> {
        if let Some(time) = self.due() {
            return Some(Next::Tick(time));
        }
        self.stream.next().await.map(Next::Record)
    }

    /// A punctuation when one is due, else the next record with its key and origin.
    pub async fn next_event(&mut self) -> Option<Next<Event<K, V>>> {
        if let Some(time) = self.due() {
            return Some(Next::Tick(time));
        }
        self.stream.next_event().await.map(Next::Record)
    }

    /// The stream time, when it passed the next multiple of the interval.
    fn due(&mut self) -> Option<i64> {
        let core = self.stream.raw.core.as_ref()?;
        let now = core.ctx.stream_time();
        if now == crate::task::NO_TIME {
            return None;
        }
        let next_multiple = now.div_euclid(self.every).saturating_add(1).saturating_mul(self.every);
        match self.next_tick {
            None => {
                self.next_tick = Some(next_multiple);
                None
            }
            Some(due) if now >= due => {
                self.next_tick = Some(next_multiple);
                Some(now)
            }
            Some(_) => None,
        }
    }

    /// The stream underneath.
    pub fn stream(&mut self) -> &mut Stream<K, V> {
        &mut self.stream
    }
}

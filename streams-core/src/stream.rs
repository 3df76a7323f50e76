//! Streams: what an agent iterates over — one partition's records, decoded, in order.

use std::marker::PhantomData;

use crate::codec::Key;
use crate::message::Message;
use crate::record::Record;
pub use crate::task::input::RawStream;
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
    pub async fn next(&mut self) -> Option<V> {
        let core = self.raw.core.as_mut()?;
        loop {
            let (source, message) = core.next_message().await?;
            // The key is decoded (and checked) even when only the value is wanted: a record
            // whose key does not decode goes to the dead-letter topic either way.
            let checked = K::check_key(message.key()).map_err(|e| DecodeError::new(format!("key: {e}")));
            let reader = self.reader;
            let read = checked
                .and_then(|()| reader.values.decode_fast(message.payload().unwrap_or_default()))
                .map_err(|e| e.to_string())
                .and_then(|value| Ok((reader.time_of(&value, &message)?, value)));
            match read {
                Ok((time, value)) => {
                    core.begin_at(source, message, time);
                    return Some(value);
                }
                Err(error) => core.dead_letter(source, message, &error).await,
            }
        }
    }

    /// The next record with its key and origin.
    pub async fn next_event(&mut self) -> Option<Event<K, V>> {
        let core = self.raw.core.as_mut()?;
        loop {
            let (source, message) = core.next_message().await?;
            let reader = self.reader;
            let decoded = decode_key::<K>(&message)
                .and_then(|key| Ok((key, reader.values.decode_fast(message.payload().unwrap_or_default())?)))
                .map_err(|e| e.to_string())
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
                Err(error) => core.dead_letter(source, message, &error).await,
            }
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
    K::decode_key(message.key()).map_err(|e| DecodeError::new(format!("key: {e}")))
}

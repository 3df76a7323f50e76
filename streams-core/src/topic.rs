//! Typed topics: declared once with their key and value types, used by agents to send.

use std::marker::PhantomData;

use crate::codec::{AsKey, Key, ValueCodec};
use crate::record::Record;
pub use crate::spec::{TopicCodecs, TopicSpec};
use crate::task;
use crate::{Error, Result};

/// A Kafka topic whose records have keys of type `K` and values of type `V`.
///
/// Declare topics once, as constants; agents read them (`#[agent(topic = HIT_COUNT)]`) and
/// send to them (`COUNT_TOPIC.send(..)`, after naming them in `#[agent(sends = [...])]`).
/// Topics are created at startup when missing; a topic that exists with another partition
/// count than declared stops the worker with a message naming both numbers.
///
/// ```
/// use streams_core::prelude::*;
///
/// #[record]
/// struct Hit { hits: i64 }
///
/// /// Records arrive without a key: `()`.
/// const HITS: Topic<(), Hit> = Topic::new("hit_count");
/// /// An internal topic keyed by user id, 8 partitions.
/// const BY_USER: Topic<String, Hit> = Topic::new("hits-by-user").partitions(8).internal();
///
/// assert_eq!(BY_USER.name(), "hits-by-user");
/// assert_eq!(BY_USER.spec().partitions, Some(8));
/// ```
pub struct Topic<K, V> {
    name: &'static str,
    partitions: Option<i32>,
    internal: bool,
    values: ValueCodec<V>,
    event_time: Option<fn(&V) -> i64>,
    _key: PhantomData<fn() -> K>,
}

/// How a task reads a topic's records: its value codec, and where a record's event time
/// comes from (the record's timestamp, or the topic's extractor).
pub struct TopicReader<V> {
    pub(crate) values: ValueCodec<V>,
    pub(crate) event_time: Option<fn(&V) -> i64>,
}

impl<V> Clone for TopicReader<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for TopicReader<V> {}

impl<V> TopicReader<V> {
    /// The event time (ms) of a record with this value: the extractor's, or the record's
    /// timestamp. An extractor that gives a negative time makes the record bad input.
    pub(crate) fn time_of(
        &self,
        value: &V,
        message: &crate::message::Message,
    ) -> std::result::Result<Option<i64>, String> {
        match self.event_time {
            Some(extract) => match extract(value) {
                time if time >= 0 => Ok(Some(time)),
                time => Err(format!(
                    "its event time is negative ({time} ms, from the topic's extractor)"
                )),
            },
            None => Ok(message.timestamp()),
        }
    }
}

impl<K, V> Clone for Topic<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Topic<K, V> {}

/// The codecs of a topic with keys `K` and values `V`.
pub(crate) fn codecs_of<K: Key, V: 'static>(values: ValueCodec<V>) -> TopicCodecs {
    TopicCodecs {
        check_key: K::check_key,
        check_value: std::sync::Arc::new(move |bytes: &[u8]| values.decode(bytes).map(drop)),
        parse_key: |text| {
            let key = K::parse_key(text).map_err(|e| e.to_string())?;
            key.try_encode_key().map_err(|e| e.to_string())
        },
        show_key: K::display_key,
        event_time: None,
    }
}

impl<K, V: Record> Topic<K, V> {
    /// A topic with this name, its values in their type's own encoding (JSON for
    /// `#[record]` types; see [`Topic::values`]); the partition count is taken from the
    /// cluster (or the app's default when the topic has to be created).
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            partitions: None,
            internal: false,
            values: ValueCodec::record(),
            event_time: None,
            _key: PhantomData,
        }
    }
}

impl<K, V: crate::faust::FaustRecord> Topic<K, V> {
    /// Values in Faust's record format (`.values(ValueCodec::faust())`), for topics a Faust
    /// app reads: see [`crate::faust`].
    pub const fn faust(self) -> Self {
        self.values(ValueCodec::faust())
    }
}

impl<K> Topic<K, String> {
    /// Values are UTF-8 text (not JSON strings): `.values(ValueCodec::utf8())`.
    pub const fn utf8_values(self) -> Self {
        self.values(ValueCodec::utf8())
    }
}

impl<K, V> Topic<K, V> {
    /// A topic whose values go through `values` (see [`ValueCodec`]).
    pub const fn with_values(name: &'static str, values: ValueCodec<V>) -> Self {
        Self {
            name,
            partitions: None,
            internal: false,
            values: values.for_topic(name),
            event_time: None,
            _key: PhantomData,
        }
    }

    /// Sets how values become bytes and back.
    pub const fn values(mut self, values: ValueCodec<V>) -> Self {
        self.values = values.for_topic(self.name);
        self
    }

    /// How values become bytes and back.
    pub const fn value_codec(&self) -> ValueCodec<V> {
        self.values
    }

    /// Takes each record's event time (ms since the epoch) from its value instead of its
    /// Kafka timestamp (Kafka Streams' `TimestampExtractor`). Windows, stream time and the
    /// timestamps of what a record causes follow it. A negative time makes the record bad
    /// input: it goes to the dead-letter topic.
    ///
    /// ```
    /// use streams_core::prelude::*;
    ///
    /// #[record]
    /// struct Hit { hits: i64, timestamp: f64 }
    ///
    /// // The seed's `timestamp`: seconds since the epoch, as a float.
    /// const HITS: Topic<(), Hit> = Topic::new("hit_count").event_time(|hit| (hit.timestamp * 1000.0) as i64);
    /// # let _ = HITS;
    /// ```
    pub const fn event_time(mut self, extract: fn(&V) -> i64) -> Self {
        self.event_time = Some(extract);
        self
    }

    /// How tasks read the topic: its codec and its event time.
    pub const fn reader(&self) -> TopicReader<V> {
        TopicReader {
            values: self.values,
            event_time: self.event_time,
        }
    }

    /// Declares the partition count.
    pub const fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Marks the topic as internal to the app (created by it, fed by its agents).
    pub const fn internal(mut self) -> Self {
        self.internal = true;
        self
    }

    /// The topic's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<K: Key, V: Send + Sync + 'static> Topic<K, V> {
    /// The untyped description the runtime works with.
    pub fn spec(&self) -> TopicSpec {
        TopicSpec {
            name: std::borrow::Cow::Borrowed(self.name),
            partitions: self.partitions,
            internal: self.internal,
            partitions_of: None,
            key_type: std::any::type_name::<K>(),
            value_type: std::any::type_name::<V>(),
            value_format: self.values.name(),
            codecs: TopicCodecs {
                event_time: self.event_time.map(|extract| {
                    let values = self.values;
                    std::sync::Arc::new(move |bytes: &[u8]| values.decode(bytes).ok().map(|value| extract(&value)))
                        as crate::spec::EventTimeOf
                }),
                ..codecs_of::<K, V>(self.values)
            },
        }
    }

    /// Sends a record from inside an agent. The record is handed to the producer and this
    /// returns without waiting for the broker; the worker makes sure every send is
    /// acknowledged before it commits the input that caused it.
    ///
    /// The partition follows from the key (murmur2, as Kafka's Java clients do), so the
    /// same key always lands in the same partition.
    ///
    /// The key may be a borrowed form of `K` (`&str` for `String` keys).
    pub async fn send<Q: AsKey<K> + ?Sized>(&self, key: &Q, value: &V) -> Result<()> {
        let encode = |source| Error::Encode {
            what: format!("topic `{}`", self.name),
            source,
        };
        let key = key.as_key().map_err(encode)?;
        let value = self.values.encode(value).map_err(encode)?;
        task::send_from_agent(self.name, key, value).await
    }
}

//! Typed topics: declared once with their key and value types, used by agents to send.

use std::marker::PhantomData;

use crate::codec::{AsKey, Key};
use crate::record::Record;
use crate::worker::task;
use crate::{DecodeError, Error, Result};

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
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Topic<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Topic<K, V> {}

/// What the runtime needs to know of a topic, without its types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name.
    pub name: &'static str,
    /// Declared partition count; `None` takes the existing count or the app's default.
    pub partitions: Option<i32>,
    /// Whether the app owns the topic (internal topics are the app's own intermediate data).
    pub internal: bool,
    /// Name of the key type.
    pub key_type: &'static str,
    /// Name of the value type.
    pub value_type: &'static str,
    /// The topic's key and value types at work on bytes (for the command line).
    pub codecs: TopicCodecs,
}

/// A topic's key and value types at work on bytes, without the types: checks what the
/// command line sends, and shows what it reads.
#[derive(Clone, Copy)]
pub struct TopicCodecs {
    check_key: fn(Option<&[u8]>) -> Result<(), DecodeError>,
    check_value: fn(&[u8]) -> Result<(), DecodeError>,
    parse_key: fn(&str) -> Result<Option<Vec<u8>>, String>,
    show_key: fn(&[u8]) -> String,
}

impl TopicCodecs {
    fn of<K: Key, V: Record>() -> Self {
        Self {
            check_key: K::check_key,
            check_value: |bytes| V::decode(bytes).map(drop),
            parse_key: |text| {
                let key = K::parse_key(text).map_err(|e| e.to_string())?;
                key.try_encode_key().map_err(|e| e.to_string())
            },
            show_key: K::display_key,
        }
    }

    /// Whether `key` is a key of the topic's key type.
    pub fn check_key(&self, key: Option<&[u8]>) -> Result<(), DecodeError> {
        (self.check_key)(key)
    }

    /// Whether `value` is a value of the topic's value type.
    pub fn check_value(&self, value: &[u8]) -> Result<(), DecodeError> {
        (self.check_value)(value)
    }

    /// The key bytes of a key given as text (see [`Key::parse_key`]).
    pub fn parse_key(&self, text: &str) -> Result<Option<Vec<u8>>, String> {
        (self.parse_key)(text)
    }

    /// Key bytes as readable text.
    pub fn show_key(&self, key: &[u8]) -> String {
        (self.show_key)(key)
    }
}

impl std::fmt::Debug for TopicCodecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TopicCodecs")
    }
}

/// Codecs follow from the types, which [`TopicSpec`] compares by name.
impl PartialEq for TopicCodecs {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for TopicCodecs {}

impl<K, V> Topic<K, V> {
    /// A topic with this name; the partition count is taken from the cluster (or the app's
    /// default when the topic has to be created).
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            partitions: None,
            internal: false,
            _types: PhantomData,
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

impl<K: Key, V: Record> Topic<K, V> {
    /// The untyped description the runtime works with.
    pub fn spec(&self) -> TopicSpec {
        TopicSpec {
            name: self.name,
            partitions: self.partitions,
            internal: self.internal,
            key_type: std::any::type_name::<K>(),
            value_type: std::any::type_name::<V>(),
            codecs: TopicCodecs::of::<K, V>(),
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
        let value = value.encode().map_err(|e| encode(e.into()))?;
        task::send_from_agent(self.name, key, value).await
    }
}

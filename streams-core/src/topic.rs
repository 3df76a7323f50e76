//! Typed topics: declared once with their key and value types, used by agents to send.

use std::marker::PhantomData;

use crate::codec::Key;
use crate::record::Record;
use crate::worker::task;
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
}

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

    /// The untyped description the runtime works with.
    pub fn spec(&self) -> TopicSpec {
        TopicSpec {
            name: self.name,
            partitions: self.partitions,
            internal: self.internal,
            key_type: std::any::type_name::<K>(),
            value_type: std::any::type_name::<V>(),
        }
    }
}

impl<K: Key, V: Record> Topic<K, V> {
    /// Sends a record from inside an agent. The record is handed to the producer and this
    /// returns without waiting for the broker; the worker makes sure every send is
    /// acknowledged before it commits the input that caused it.
    ///
    /// The partition follows from the key (murmur2, as Kafka's Java clients do), so the
    /// same key always lands in the same partition.
    pub async fn send(&self, key: &K, value: &V) -> Result<()> {
        let value = value.encode().map_err(|source| Error::Encode {
            what: format!("topic `{}`", self.name),
            source,
        })?;
        task::send_from_agent(self.name, key.encode_key(), value).await
    }
}

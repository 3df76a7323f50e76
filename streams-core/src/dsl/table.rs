//! [`KTable`]: a table in a pipeline — an aggregation's result or a topic read as a table.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::builder::{Graph, NodeKind};
use super::node::{observe_time, send, ChangeFanout, ChangeListener, Cx, Fanout, Outcome, SourceNode, TableSlot};
use super::stream::{KStream, Keyed};
use super::versioned::Versions;
use crate::codec::{json, Key};
use crate::message::Message;
use crate::table::Table;
use crate::task::sink::OutRecord;
use crate::topic::Topic;
use crate::topic::TopicReader;

/// A table in a pipeline (Kafka Streams' `KTable`): one value per key, kept in a store with
/// a changelog like every table.
pub struct KTable<K, V> {
    pub(crate) graph: Rc<RefCell<Graph>>,
    pub(crate) name: &'static str,
    pub(crate) slot: TableSlot,
    pub(crate) group: usize,
    pub(crate) node: usize,
    /// A windowed aggregation that emits final results: they, not the table's changes, are
    /// its stream.
    finals: Option<Arc<Fanout<K, V>>>,
    /// A suppression's table: what goes on are the changes it lets through, not the
    /// table's own (see [`KTable::suppress`](super::suppress)).
    emitter: Option<Arc<ChangeFanout>>,
    /// A versioned table's history: a stream joined with it meets the value its key had at
    /// each record's time (see [`VersionedKTable`](super::versioned::VersionedKTable)).
    pub(crate) versions: Option<Versions>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> KTable<K, V>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub(crate) fn new(
        graph: Rc<RefCell<Graph>>,
        name: &'static str,
        slot: TableSlot,
        group: usize,
        node: usize,
    ) -> Self {
        Self {
            graph,
            name,
            slot,
            group,
            node,
            finals: None,
            emitter: None,
            versions: None,
            _types: PhantomData,
        }
    }

    /// A table whose changes are those `emitter` sends (a suppression's).
    pub(crate) fn with_emitter(mut self, emitter: Arc<ChangeFanout>) -> Self {
        self.emitter = Some(emitter);
        self
    }

    /// Makes `listener` receive the table's changes at each cut (a suppression's: those it
    /// lets through).
    pub(crate) fn listen(&self, graph: &mut Graph, listener: Arc<dyn ChangeListener>) {
        match &self.emitter {
            Some(emitter) => emitter.add(listener),
            None => graph.listen(self.group, self.slot.clone(), listener),
        }
    }

    /// Refuses a join that reads the table's values when they are not what its changes say
    /// (a suppression's table holds the table before the suppression).
    pub(crate) fn check_joinable(&self, graph: &mut Graph, op: &str) {
        if self.emitter.is_some() {
            let error = format!(
                "pipeline `{}`: `{op}` reads table `{}` after `suppress`, which only holds back its changes (its \
                 values are those of the table before it); join the table before suppressing, or send the \
                 suppressed changes on with `to_stream` and read them as a table",
                graph.pipeline, self.name
            );
            graph.errors.push(error);
        }
    }

    /// A windowed table whose stream is its windows' final results.
    pub(crate) fn with_finals(mut self, finals: Arc<Fanout<K, V>>) -> Self {
        self.finals = Some(finals);
        self
    }

    /// The table's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The table's changes as a stream: at each commit interval, every key that changed
    /// since the last one, with its new value (coalesced per key, like Kafka Streams' record
    /// cache) and the time of the record that changed it. Deleted keys are not sent on.
    ///
    /// For a windowed aggregation with [`emit_final`](super::TimeWindowedKStream::emit_final),
    /// the stream is each window's final result instead, once, when the window closes.
    pub fn to_stream(self) -> KStream<K, V, Keyed> {
        let (next, node) = {
            let mut graph = self.graph.borrow_mut();
            let node = graph.node("to_stream", NodeKind::Operation, vec![self.node], self.group);
            let next = match &self.finals {
                Some(finals) => Arc::clone(finals),
                None => {
                    let next = graph.fanout::<K, V>();
                    let listener = Changes {
                        name: self.name,
                        next: Arc::clone(&next),
                    };
                    self.listen(&mut graph, Arc::new(listener));
                    next
                }
            };
            (next, node)
        };
        KStream::new(self.graph, next, self.group, node)
    }
}

impl<K, V> KTable<K, V>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Sends every change of the table to `topic`, whose key and value types must be the
    /// table's: at each commit interval, every key that changed with its new value (coalesced
    /// per key) and every deleted key as a tombstone, a record without a value (Kafka
    /// Streams' `table.toStream().to(topic)`). A compacted topic then holds the table, and
    /// reading it back as a table (`builder.table`) deletes what the table deleted. For a
    /// windowed aggregation with `emit_final`, its windows' final results go instead.
    ///
    /// ```
    /// use streams_core::prelude::*;
    ///
    /// const PRICES: Topic<String, i64> = Topic::new("prices");
    /// const LATEST: Table<String, i64> = Table::new("latest-prices");
    /// const COPY: Topic<String, i64> = Topic::new("prices-copy");
    ///
    /// let app = App::new("copy").pipeline("copy", |builder| {
    ///     builder.table(PRICES, LATEST).to(COPY);
    /// });
    /// assert_eq!(app.tasks()[0].sends[0].name, "prices-copy");
    /// ```
    pub fn to(self, topic: Topic<K, V>) {
        if self.finals.is_some() {
            self.to_stream().to(topic);
            return;
        }
        let mut graph = self.graph.borrow_mut();
        graph.sink_node(self.group, topic.spec(), self.node);
        let listener: ToTopic<K, V> = ToTopic {
            name: self.name,
            topic: Arc::from(topic.name()),
            values: topic.value_codec(),
            _key: PhantomData,
        };
        self.listen(&mut graph, Arc::new(listener));
    }
}

/// Sends a table's changes to a topic, deletions as tombstones.
struct ToTopic<K, V> {
    name: &'static str,
    topic: Arc<str>,
    values: crate::codec::ValueCodec<V>,
    _key: PhantomData<fn() -> K>,
}

impl<K, V> ChangeListener for ToTopic<K, V>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn change(&self, cx: &mut Cx<'_>, key: &[u8], value: Option<&[u8]>) -> Outcome {
        let decoded = K::decode_key(Some(key)).map_err(|e| {
            cx.unavailable |= e.is_unavailable();
            format!("a key of table `{}`: {e}", self.name)
        })?;
        let key = super::node::encoding(cx, "a key", &self.topic, decoded.try_encode_key())?;
        let value = match value {
            None => None,
            Some(bytes) => {
                let value: V = json::decode(bytes).map_err(|e| format!("a value of table `{}`: {e}", self.name))?;
                let encoded = super::node::encoding(cx, "a value", &self.topic, self.values.encode(&value))?;
                Some(encoded)
            }
        };
        let record = OutRecord {
            topic: Arc::clone(&self.topic),
            partition: None,
            key,
            value,
            headers: Default::default(),
            timestamp: Some(cx.timestamp),
            changelog: false,
        };
        send(cx, record)
    }
}

/// Sends a table's changes on (decoded).
struct Changes<K, V> {
    name: &'static str,
    next: Arc<Fanout<K, V>>,
}

impl<K, V> ChangeListener for Changes<K, V>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn change(&self, cx: &mut Cx<'_>, key: &[u8], value: Option<&[u8]>) -> Outcome {
        let Some(value) = value else { return Ok(()) };
        let key = K::decode_key(Some(key)).map_err(|e| format!("a key of table `{}`: {e}", self.name))?;
        let value: V = json::decode(value).map_err(|e| format!("a value of table `{}`: {e}", self.name))?;
        self.next.push(cx, key, value)
    }
}

/// A topic read as a table: each record sets its key's value, a record without a value
/// deletes it.
pub(crate) struct TableSource<K, V> {
    pub(crate) reader: TopicReader<V>,
    pub(crate) store: Table<K, V>,
    pub(crate) slot: TableSlot,
}

impl<K, V> SourceNode for TableSource<K, V>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn push_message(&self, cx: &mut Cx<'_>, message: &Message) -> Outcome {
        let index = self.slot.get()?;
        let (key, value) = table_entry(cx, message, &self.reader, &self.store)?;
        cx.ctx.put_at(index, key, value).map_err(|e| e.to_string())
    }
}

/// A record of a topic read as a table (into `store`): its key's bytes and its value as the
/// store keeps it (`None`: a deletion). The record's time becomes the event time.
pub(crate) fn table_entry<K, V>(
    cx: &mut Cx<'_>,
    message: &Message,
    reader: &TopicReader<V>,
    store: &Table<K, V>,
) -> Result<(Vec<u8>, Option<Vec<u8>>), String>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let key = super::node::decoding(cx, "key", K::decode_key(message.key()))?;
    let value = match message.payload() {
        None => None,
        Some(bytes) => {
            let value = super::node::decoding(cx, "", reader.values.decode(bytes))?;
            let time = reader.time_of(&value, message)?;
            Some((value, time))
        }
    };
    cx.decoded = true;
    if key.is_null() {
        return Err(format!(
            "a record without a key cannot go into table `{}`",
            store.name()
        ));
    }
    let key = key
        .key_bytes()
        .map_err(|e| format!("cannot encode a key of table `{}`: {e}", store.name()))?
        .into_owned();
    let value = match value {
        None => {
            observe_time(cx, message.timestamp());
            None
        }
        Some((value, time)) => {
            observe_time(cx, time);
            Some(store.encode(&value).map_err(|e| e.to_string())?)
        }
    };
    Ok((key, value))
}

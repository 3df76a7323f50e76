//! [`KGroupedStream`]: records grouped by key, on their way into a table.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::builder::{Graph, NodeKind};
use super::node::{Cx, Fanout, TableSlot};
use super::table::KTable;
use super::windowed::WindowsOf;
use crate::codec::{json, Key};
use crate::table::Table;

/// What a grouped stream is made of: its graph, its fanout, its group and its node.
pub(crate) type Parts<K, V> = (Rc<RefCell<Graph>>, Arc<Fanout<K, V>>, usize, usize);

/// A stream grouped by key, partitioned by it (Kafka Streams' `KGroupedStream`): what it
/// aggregates goes into a table, one value per key.
#[must_use = "a grouped stream does nothing until it is aggregated (`count`, `reduce`, `aggregate`)"]
pub struct KGroupedStream<K, V> {
    graph: Rc<RefCell<Graph>>,
    fanout: Arc<Fanout<K, V>>,
    group: usize,
    node: usize,
}

impl<K: Key, V: Send + Sync + 'static> KGroupedStream<K, V> {
    pub(crate) fn new(graph: Rc<RefCell<Graph>>, fanout: Arc<Fanout<K, V>>, group: usize, node: usize) -> Self {
        Self {
            graph,
            fanout,
            group,
            node,
        }
    }

    /// What the grouped stream is made of.
    pub(crate) fn into_parts(self) -> Parts<K, V> {
        (self.graph, self.fanout, self.group, self.node)
    }

    /// The grouped records in windows of event time (Kafka Streams' `windowedBy`):
    /// [`TimeWindows`](crate::window::TimeWindows) (tumbling or hopping),
    /// [`SlidingWindows`](crate::window::SlidingWindows) or
    /// [`SessionWindows`](crate::window::SessionWindows). See [`super::TimeWindowedKStream`].
    pub fn windowed_by<W: WindowsOf<K, V>>(self, windows: W) -> W::Stream {
        windows.window(self)
    }

    /// Adds the aggregation into `table`: `change` turns the stored value (`None`: none yet)
    /// and a record into the new value.
    fn aggregate_with<A>(
        self,
        op: &str,
        table: Table<K, A>,
        change: impl Fn(&K, Option<A>, V) -> A + Send + Sync + 'static,
    ) -> KTable<K, A>
    where
        A: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let (slot, node) = aggregation_nodes(&mut self.graph.borrow_mut(), self.group, op, vec![self.node], &table);
        aggregate_into(&self.fanout, slot.clone(), table.name(), change);
        KTable::new(self.graph, table.name(), slot, self.group, node)
    }

    /// Counts the records of each key into `table` (Kafka Streams' `count`).
    pub fn count(self, table: Table<K, i64>) -> KTable<K, i64> {
        self.aggregate_with("count", table, |_, count, _| count.unwrap_or(0) + 1)
    }

    /// Combines the records of each key into `table`: the first value as it is, then
    /// `reducer(aggregate, value)` (Kafka Streams' `reduce`).
    pub fn reduce(self, table: Table<K, V>, reducer: impl Fn(V, V) -> V + Send + Sync + 'static) -> KTable<K, V>
    where
        V: Serialize + DeserializeOwned,
    {
        self.aggregate_with("reduce", table, move |_, aggregate, value| match aggregate {
            Some(aggregate) => reducer(aggregate, value),
            None => value,
        })
    }

    /// Folds the records of each key into `table`, starting from `init()`:
    /// `adder(key, value, aggregate)` is the new aggregate (Kafka Streams' `aggregate`).
    pub fn aggregate<A>(
        self,
        table: Table<K, A>,
        init: impl Fn() -> A + Send + Sync + 'static,
        adder: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
    ) -> KTable<K, A>
    where
        A: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.aggregate_with("aggregate", table, move |key, aggregate, value| {
            adder(key, value, aggregate.unwrap_or_else(&init))
        })
    }
}

/// Adds aggregation `op` of `parents` into `table` to the sub-topology of `group`: the
/// table's slot and its node.
pub(crate) fn aggregation_nodes<K, A>(
    graph: &mut Graph,
    group: usize,
    op: &str,
    parents: Vec<usize>,
    table: &Table<K, A>,
) -> (TableSlot, usize)
where
    K: Key,
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let slot = graph.table(group, table.spec());
    let changelog = table.spec().changelog_topic(&graph.app_id);
    let aggregation = graph.node(op, NodeKind::Operation, parents, group);
    let node = graph.node(
        table.name(),
        NodeKind::Table {
            table: table.name().to_string(),
            changelog,
        },
        vec![aggregation],
        group,
    );
    (slot, node)
}

/// Makes `fanout`'s records update table `name` (at `slot`): `change` turns the stored value
/// (`None`: none yet) and a record into the new value.
pub(crate) fn aggregate_into<K, V, A>(
    fanout: &Fanout<K, V>,
    slot: TableSlot,
    name: &'static str,
    change: impl Fn(&K, Option<A>, V) -> A + Send + Sync + 'static,
) where
    K: Key,
    V: Send + Sync + 'static,
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fanout.add(Arc::new(move |cx: &mut Cx<'_>, key: K, value: V| {
        let index = slot.get()?;
        if key.is_null() {
            // Kafka Streams drops these; here they are kept, in the dead-letter topic.
            return Err(format!(
                "a record without a key cannot be aggregated into table `{name}`"
            ));
        }
        let bytes = key
            .key_bytes()
            .map_err(|e| format!("cannot encode a key of table `{name}`: {e}"))?;
        cx.ctx
            .update_now(index, &bytes, |stored| {
                let old = read_value::<A>(stored.as_deref(), name)?;
                write_value(stored, &change(&key, old, value), name)
            })
            .map_err(|e| e.to_string())
    }));
}

/// A table's stored value, decoded (`None`: none stored).
pub(crate) fn read_value<A: DeserializeOwned>(stored: Option<&[u8]>, table: &str) -> crate::Result<Option<A>> {
    stored
        .map(|bytes| {
            json::decode::<A>(bytes).map_err(|source| crate::Error::Decode {
                what: format!("a value of table `{table}`"),
                source,
            })
        })
        .transpose()
}

/// Stores `value` in a table's slot, reusing its buffer ([`json::encode_into`]); a value
/// that fails to encode leaves the slot as it was.
pub(crate) fn write_value<A: Serialize>(stored: &mut Option<Vec<u8>>, value: &A, table: &str) -> crate::Result<()> {
    json::encode_into(stored, value).map_err(|source| crate::Error::Encode {
        what: format!("table `{table}`"),
        source: source.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value JSON cannot encode: a map whose keys are not strings.
    fn unencodable() -> std::collections::BTreeMap<(i32, i32), i32> {
        std::collections::BTreeMap::from([((1, 2), 3)])
    }

    #[test]
    fn a_value_is_written_whole_and_a_failed_one_leaves_the_slot_as_it_was() {
        let mut slot = None;
        write_value(&mut slot, &serde_json::json!({"count": 1}), "t").expect("new");
        assert_eq!(slot.as_deref(), Some(&br#"{"count":1}"#[..]));
        let exact = slot.as_ref().map(Vec::capacity);
        assert_eq!(exact, Some(11), "a new value's bytes are allocated at their size");
        write_value(&mut slot, &serde_json::json!({"count": 12345}), "t").expect("longer");
        assert_eq!(slot.as_deref(), Some(&br#"{"count":12345}"#[..]));
        write_value(&mut slot, &7, "t").expect("shorter");
        assert_eq!(slot.as_deref(), Some(&b"7"[..]));
        assert!(write_value(&mut slot, &unencodable(), "t").is_err());
        assert_eq!(slot.as_deref(), Some(&b"7"[..]), "a failed value leaves the old one");
        let mut empty = None;
        assert!(write_value(&mut empty, &unencodable(), "t").is_err());
        assert_eq!(empty, None, "and no value where there was none");
        // The thread's buffer holds nothing of the failed value.
        write_value(&mut empty, &[1, 2], "t").expect("after a failure");
        assert_eq!(empty.as_deref(), Some(&b"[1,2]"[..]));
    }
}

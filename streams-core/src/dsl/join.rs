//! Joins, with Kafka Streams' semantics: a stream with a table ([`KStream::join`],
//! [`KStream::left_join`]), with a global table ([`KStream::join_global`]), two tables
//! ([`KTable::join`], [`KTable::left_join`], [`KTable::outer_join`]) and two streams within a
//! time window ([`KStream::join_windowed`] and its left and outer forms).
//!
//! The two sides of a join (but a global table) run in one task: the join reads partition
//! *p* of both inputs, so their keys must be of one type (the compiler sees to that) and
//! their topics must have equal partition counts (checked at start). The task takes its
//! records in timestamp order across both inputs, and does not run ahead of an input that is
//! known to have unread records (Kafka Streams' KIP-695), so a result does not depend on
//! which fetch arrived first.

use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::buffer::{show_record_key, split_record_key, RecordBuffer};
use super::builder::{Graph, NodeKind};
use super::grouped::{read_value, write_value};
use super::node::{at_time, change_failed_in, guarded, ChangeListener, Cx, Fanout, Node, Outcome, TableSlot, Tick};
use super::same_key::SameKey;
use super::stream::{KStream, Keyed, PartitionedByKey};
use super::table::KTable;
use super::versioned::{value_as_of, Versions};
use crate::codec::{json, Key};
use crate::spec::{KeyDisplay, TableSpec};
use crate::table::Table;
use crate::task::NO_TIME;

fn failed(error: impl std::fmt::Display) -> String {
    error.to_string()
}

/// A table's value of `key` now, decoded (`None`: none).
fn table_value<VT: DeserializeOwned>(
    cx: &Cx<'_>,
    slot: &TableSlot,
    table: &str,
    key: &[u8],
) -> Result<Option<VT>, String> {
    let index = slot.get()?;
    let stored = cx.ctx.get_now(index, key).map_err(failed)?;
    read_value::<VT>(stored.as_deref(), table).map_err(failed)
}

/// The row a stream record at `time` meets in a table: the key's value now, or in a
/// versioned table the one it had at `time`.
pub(crate) fn row_at<VT: DeserializeOwned>(
    cx: &Cx<'_>,
    (slot, versions): (&TableSlot, Option<&Versions>),
    table: &str,
    key: &[u8],
    time: i64,
) -> Result<Option<VT>, String> {
    match versions {
        None => table_value(cx, slot, table, key),
        Some(versions) => {
            let stored = value_as_of(cx, (slot, versions), key, time)?;
            read_value::<VT>(stored.as_deref(), table).map_err(failed)
        }
    }
}

/// Sends on what the joiner makes of a record and the row it found (nothing for an inner
/// join without a row).
pub(crate) fn forward_joined<K, V, VT, VR>(
    cx: &mut Cx<'_>,
    key: K,
    value: V,
    row: Option<&VT>,
    joiner: &StreamTableJoiner<K, V, VT, VR>,
    next: &Fanout<K, VR>,
) -> Outcome {
    match joiner(&key, &value, row) {
        Some(joined) => next.push(cx, key, joined),
        None => Ok(()),
    }
}

pub(crate) type StreamTableJoiner<K, V, VT, VR> = dyn Fn(&K, &V, Option<&VT>) -> Option<VR> + Send + Sync;

/// A stream record joined with its key's value in a table of the same task.
struct TableJoin<K, V, VT, VR> {
    table: &'static str,
    slot: TableSlot,
    /// A versioned table's history: the record meets the row of its time.
    versions: Option<Versions>,
    joiner: Box<StreamTableJoiner<K, V, VT, VR>>,
    next: Arc<Fanout<K, VR>>,
}

impl<K, V, VT, VR> Node<K, V> for TableJoin<K, V, VT, VR>
where
    K: Key,
    V: Send + Sync + 'static,
    VT: DeserializeOwned + Send + Sync + 'static,
    VR: Send + Sync + 'static,
{
    fn push(&self, cx: &mut Cx<'_>, key: K, value: V) -> Outcome {
        // A record without a key has no row to meet (Kafka Streams: no match).
        let found: Option<VT> = if key.is_null() {
            None
        } else {
            let bytes = key
                .key_bytes()
                .map_err(|e| format!("cannot encode a key of table `{}`: {e}", self.table))?;
            row_at(
                cx,
                (&self.slot, self.versions.as_ref()),
                self.table,
                &bytes,
                cx.timestamp,
            )?
        };
        forward_joined(cx, key, value, found.as_ref(), &*self.joiner, &self.next)
    }
}

impl<K, V, P> KStream<K, V, P>
where
    K: Key,
    V: Send + Sync + 'static,
{
    /// Adds a node reading `table` after this stream: both go into one sub-topology.
    fn with_table<VT, VR>(
        self,
        op: &str,
        table: &KTable<K, VT>,
        joiner: Box<StreamTableJoiner<K, V, VT, VR>>,
    ) -> KStream<K, VR, Keyed>
    where
        VT: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Send + Sync + 'static,
    {
        let (next, group, node) = {
            let mut graph = self.graph.borrow_mut();
            table.check_joinable(&mut graph, op);
            let group = graph.union(self.group, table.group);
            let next = graph.fanout::<K, VR>();
            let node = graph.node(op, NodeKind::Operation, vec![self.node, table.node], group);
            (next, group, node)
        };
        self.fanout.add(Arc::new(TableJoin {
            table: table.name,
            slot: table.slot.clone(),
            versions: table.versions.clone(),
            joiner,
            next: Arc::clone(&next),
        }));
        KStream::new(self.graph, next, group, node)
    }

    /// Joins each record with the value of its key in `table` at that moment (Kafka
    /// Streams' stream–table `join`): `joiner(key, value, row)` for records whose key has a
    /// row; the others are dropped. Updates of the table emit nothing.
    ///
    /// The stream and the table are *co-partitioned*: their keys are of one type (another
    /// type does not compile) and their topics have the same partition count (checked when
    /// the worker starts, naming both). A stream whose key was changed goes through a named
    /// repartition topic first. The task takes the records of both in timestamp order, so a
    /// record sees the rows written before its time.
    ///
    /// ```
    /// use streams_core::prelude::*;
    ///
    /// #[record]
    /// #[derive(Clone)]
    /// struct View { page: String }
    /// #[record]
    /// #[derive(Clone, Default)]
    /// struct User { region: String }
    ///
    /// const VIEWS: Topic<String, View> = Topic::new("views");
    /// const USERS: Topic<String, User> = Topic::new("users");
    /// const USERS_STORE: Table<String, User> = Table::new("users-store");
    /// const VIEWS_BY_REGION: Topic<String, String> = Topic::new("views-with-region");
    ///
    /// let app = App::new("enrich").pipeline("enrich", |builder| {
    ///     let users = builder.table(USERS, USERS_STORE);
    ///     builder
    ///         .stream(VIEWS)
    ///         .join(&users, |_, view, user| format!("{} in {}", view.page, user.region))
    ///         .to(VIEWS_BY_REGION);
    /// });
    /// assert_eq!(app.tasks().len(), 1, "one task reads both topics");
    /// ```
    pub fn join<KT, VT, VR>(
        self,
        table: &KTable<KT, VT>,
        joiner: impl Fn(&K, &V, &VT) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR, Keyed>
    where
        KT: SameKey<K>,
        P: PartitionedByKey,
        VT: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Send + Sync + 'static,
    {
        self.with_table(
            "join",
            KT::table(table),
            Box::new(move |key, value, row| row.map(|row| joiner(key, value, row))),
        )
    }

    /// Like [`KStream::join`], but every record goes on: `joiner(key, value, row)` with
    /// `None` where its key has no row (Kafka Streams' stream–table `leftJoin`).
    pub fn left_join<KT, VT, VR>(
        self,
        table: &KTable<KT, VT>,
        joiner: impl Fn(&K, &V, Option<&VT>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR, Keyed>
    where
        KT: SameKey<K>,
        P: PartitionedByKey,
        VT: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Send + Sync + 'static,
    {
        self.with_table(
            "left_join",
            KT::table(table),
            Box::new(move |key, value, row| Some(joiner(key, value, row))),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Global tables.

/// A table copied whole to every worker from its topic (Kafka Streams' `GlobalKTable`):
/// filled from the topic at start, before any record is processed, kept current by a
/// consumer of its own, with no changelog (the topic is its changelog). A stream joins it by
/// a key taken from each record, so the two need not be co-partitioned. Made by
/// [`StreamsBuilder::global_table`](super::StreamsBuilder::global_table).
pub struct GlobalKTable<K, V> {
    pub(crate) name: &'static str,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> GlobalKTable<K, V> {
    pub(crate) fn new(name: &'static str) -> Self {
        Self {
            name,
            _types: PhantomData,
        }
    }

    /// The table's name (its store's).
    pub fn name(&self) -> &'static str {
        self.name
    }
}

type GlobalJoiner<K, V, VT, VR> = dyn Fn(&K, &V, Option<&VT>) -> Option<VR> + Send + Sync;
type KeyOf<K, V, GK> = dyn Fn(&K, &V) -> GK + Send + Sync;

/// A stream record joined with a global table's value of a key taken from it.
struct GlobalJoin<K, V, GK, VT, VR> {
    table: &'static str,
    key: Box<KeyOf<K, V, GK>>,
    joiner: Box<GlobalJoiner<K, V, VT, VR>>,
    next: Arc<Fanout<K, VR>>,
}

impl<K, V, GK, VT, VR> Node<K, V> for GlobalJoin<K, V, GK, VT, VR>
where
    K: Key,
    V: Send + Sync + 'static,
    GK: Key,
    VT: DeserializeOwned + Send + Sync + 'static,
    VR: Send + Sync + 'static,
{
    fn push(&self, cx: &mut Cx<'_>, key: K, value: V) -> Outcome {
        let lookup = (self.key)(&key, &value);
        let found: Option<VT> = if lookup.is_null() {
            None
        } else {
            let bytes = lookup
                .key_bytes()
                .map_err(|e| format!("cannot encode a key of global table `{}`: {e}", self.table))?;
            let stored = cx.ctx.global_get(self.table, &bytes).map_err(failed)?;
            read_value::<VT>(stored.as_deref(), self.table).map_err(failed)?
        };
        forward_joined(cx, key, value, found.as_ref(), &*self.joiner, &self.next)
    }
}

impl<K, V, P> KStream<K, V, P>
where
    K: Key,
    V: Send + Sync + 'static,
{
    fn with_global<GK, VT, VR>(
        self,
        op: &str,
        table: &GlobalKTable<GK, VT>,
        key: Box<KeyOf<K, V, GK>>,
        joiner: Box<GlobalJoiner<K, V, VT, VR>>,
    ) -> KStream<K, VR, P>
    where
        GK: Key,
        VT: DeserializeOwned + Send + Sync + 'static,
        VR: Send + Sync + 'static,
    {
        let (next, node) = {
            let mut graph = self.graph.borrow_mut();
            let next = graph.fanout::<K, VR>();
            let mut parents = vec![self.node];
            parents.extend(graph.global_node(table.name, self.group));
            let node = graph.node(op, NodeKind::Operation, parents, self.group);
            (next, node)
        };
        self.fanout.add(Arc::new(GlobalJoin {
            table: table.name,
            key,
            joiner,
            next: Arc::clone(&next),
        }));
        KStream::new(self.graph, next, self.group, node)
    }

    /// Joins each record with the value that `table` (a global table) holds for
    /// `key(record key, value)` (Kafka Streams' `join` with a `GlobalKTable`): `joiner(key,
    /// value, row)`; records without a row are dropped. The stream keeps its key and its
    /// partitioning.
    pub fn join_global<GK, VT, VR>(
        self,
        table: &GlobalKTable<GK, VT>,
        key: impl Fn(&K, &V) -> GK + Send + Sync + 'static,
        joiner: impl Fn(&K, &V, &VT) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR, P>
    where
        GK: Key,
        VT: DeserializeOwned + Send + Sync + 'static,
        VR: Send + Sync + 'static,
    {
        self.with_global(
            "join_global",
            table,
            Box::new(key),
            Box::new(move |key, value, row| row.map(|row| joiner(key, value, row))),
        )
    }

    /// Like [`KStream::join_global`], but every record goes on, with `None` where the global
    /// table has no row.
    pub fn left_join_global<GK, VT, VR>(
        self,
        table: &GlobalKTable<GK, VT>,
        key: impl Fn(&K, &V) -> GK + Send + Sync + 'static,
        joiner: impl Fn(&K, &V, Option<&VT>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR, P>
    where
        GK: Key,
        VT: DeserializeOwned + Send + Sync + 'static,
        VR: Send + Sync + 'static,
    {
        self.with_global(
            "left_join_global",
            table,
            Box::new(key),
            Box::new(move |key, value, row| Some(joiner(key, value, row))),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Table–table joins.

/// Which rows of a table–table join have a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Keys in both tables.
    Inner,
    /// Keys in the left table.
    Left,
    /// Keys in either table.
    Outer,
}

type TableJoiner<K, V1, V2, VR> = dyn Fn(&K, Option<&V1>, Option<&V2>) -> VR + Send + Sync;

/// The result of a table–table join, kept in its own table: a change of either side
/// recomputes its key. The result carries the later of the two rows' times, as in Kafka
/// Streams; the tables keep values only, so the join keeps each key's two row times in a
/// table of its own (`{result}-join-times`).
struct TableTableJoin<K, V1, V2, VR> {
    rows: Rows,
    left: (&'static str, TableSlot),
    right: (&'static str, TableSlot),
    result: (&'static str, TableSlot),
    times: (&'static str, TableSlot),
    joiner: Box<TableJoiner<K, V1, V2, VR>>,
}

/// A key's row times in the two tables of a table–table join (16 bytes: left then right,
/// big-endian; `i64::MIN` where the table has no row).
fn read_times(stored: Option<&[u8]>) -> [Option<i64>; 2] {
    let at = |n: usize| {
        stored
            .and_then(|bytes| bytes.get(n * 8..n * 8 + 8))
            .and_then(|b| b.try_into().ok())
            .map(i64::from_be_bytes)
            .filter(|t| *t != i64::MIN)
    };
    [at(0), at(1)]
}

fn write_times(times: [Option<i64>; 2]) -> Option<Vec<u8>> {
    if times == [None, None] {
        return None;
    }
    let mut bytes = Vec::with_capacity(16);
    for time in times {
        bytes.extend_from_slice(&time.unwrap_or(i64::MIN).to_be_bytes());
    }
    Some(bytes)
}

impl<K, V1, V2, VR> TableTableJoin<K, V1, V2, VR>
where
    K: Key,
    V1: DeserializeOwned + Send + Sync + 'static,
    V2: DeserializeOwned + Send + Sync + 'static,
    VR: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Side `side` (0 left, 1 right) of `key` changed at `cx.timestamp` (`deleted`: it
    /// lost its row): recomputes the key from both tables as they are now.
    fn recompute(&self, cx: &mut Cx<'_>, key_bytes: &[u8], side: usize, deleted: bool) -> Outcome {
        let times_index = self.times.1.get()?;
        let mut times = read_times(cx.ctx.get_now(times_index, key_bytes).map_err(failed)?.as_deref());
        let time = cx.timestamp;
        times[side] = (!deleted).then_some(time);
        let stored_times = write_times(times);
        if cx.ctx.get_now(times_index, key_bytes).map_err(failed)? != stored_times {
            cx.ctx
                .put_at(times_index, key_bytes.to_vec(), stored_times)
                .map_err(failed)?;
        }
        // Kafka Streams: the later of this change's time and the other side's row's.
        let result_time = times[1 - side].map_or(time, |other| other.max(time));
        let before = cx.ctx.event_time();
        cx.ctx.set_event_time(result_time);
        let outcome = self.put_result(cx, key_bytes);
        cx.ctx.set_event_time(before);
        outcome
    }

    /// Writes `key`'s row of the result (or its deletion) from both tables as they are now.
    fn put_result(&self, cx: &mut Cx<'_>, key_bytes: &[u8]) -> Outcome {
        let left: Option<V1> = table_value(cx, &self.left.1, self.left.0, key_bytes)?;
        let right: Option<V2> = table_value(cx, &self.right.1, self.right.0, key_bytes)?;
        let has_row = match self.rows {
            Rows::Inner => left.is_some() && right.is_some(),
            Rows::Left => left.is_some(),
            Rows::Outer => left.is_some() || right.is_some(),
        };
        let index = self.result.1.get()?;
        if !has_row {
            // A key that had a row loses it (a tombstone); one that never had one stays away.
            if cx.ctx.get_now(index, key_bytes).map_err(failed)?.is_some() {
                cx.ctx.put_at(index, key_bytes.to_vec(), None).map_err(failed)?;
            }
            return Ok(());
        }
        let key = K::decode_key(Some(key_bytes)).map_err(|e| format!("a key of table `{}`: {e}", self.left.0))?;
        let joined = guarded_value(|| (self.joiner)(&key, left.as_ref(), right.as_ref()))?;
        let mut stored = None;
        write_value(&mut stored, &joined, self.result.0).map_err(failed)?;
        cx.ctx.put_at(index, key_bytes.to_vec(), stored).map_err(failed)
    }
}

/// Runs a user's function, turning a panic into an error.
fn guarded_value<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let mut out = None;
    guarded(|| {
        out = Some(f());
        Ok(())
    })?;
    out.ok_or_else(|| "the function gave no value".to_string())
}

/// Listens to one side (0 left, 1 right) of a table–table join.
struct Side<K, V1, V2, VR>(Arc<TableTableJoin<K, V1, V2, VR>>, usize);

impl<K, V1, V2, VR> ChangeListener for Side<K, V1, V2, VR>
where
    K: Key,
    V1: DeserializeOwned + Send + Sync + 'static,
    V2: DeserializeOwned + Send + Sync + 'static,
    VR: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn change(&self, cx: &mut Cx<'_>, key: &[u8], value: Option<&[u8]>) -> Outcome {
        self.0.recompute(cx, key, self.1, value.is_none())
    }
}

impl<K, V1> KTable<K, V1>
where
    K: Key,
    V1: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn join_tables<V2, VR>(
        &self,
        op: &str,
        rows: Rows,
        other: &KTable<K, V2>,
        store: Table<K, VR>,
        joiner: Box<TableJoiner<K, V1, V2, VR>>,
    ) -> KTable<K, VR>
    where
        V2: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let graph = Rc::clone(&self.graph);
        let mut g = graph.borrow_mut();
        self.check_joinable(&mut g, op);
        other.check_joinable(&mut g, op);
        let group = g.union(self.group, other.group);
        let slot = g.table(group, store.spec());
        let join_node = g.node(op, NodeKind::Operation, vec![self.node, other.node], group);
        let changelog = store.spec().changelog_topic(&g.app_id);
        let node = g.node(
            store.name(),
            NodeKind::Table {
                table: store.name().to_string(),
                changelog,
            },
            vec![join_node],
            group,
        );
        let times: &'static str = Box::leak(format!("{}-join-times", store.name()).into_boxed_str());
        let times_spec = TableSpec {
            name: times,
            key_type: std::any::type_name::<K>(),
            value_type: "row times",
            show_key: KeyDisplay(K::display_key),
            faust: false,
            windowed: false,
            lookup: None,
            keeps_time: false,
            ttl: None,
        };
        let times_slot = g.table(group, times_spec);
        let join = Arc::new(TableTableJoin {
            rows,
            left: (self.name, self.slot.clone()),
            right: (other.name, other.slot.clone()),
            result: (store.name(), slot.clone()),
            times: (times, times_slot),
            joiner,
        });
        // Both sides' changes recompute their keys at each commit point, before the
        // result's own changes go on (listeners run in the order they were added).
        g.listen(group, self.slot.clone(), Arc::new(Side(Arc::clone(&join), 0)));
        g.listen(group, other.slot.clone(), Arc::new(Side(join, 1)));
        drop(g);
        KTable::new(graph, store.name(), slot, group, node)
    }

    /// Joins two tables on their key (Kafka Streams' table–table `join`): the result is a
    /// table, kept in `store`, with `joiner(key, left, right)` for each key both tables
    /// hold, recomputed when either side changes (at each commit point, as the changes of
    /// any table go on), and deleted when either side loses the key. Send it on with
    /// `to_stream()`. The tables are co-partitioned, as for [`KStream::join`].
    ///
    /// ```
    /// use streams_core::prelude::*;
    ///
    /// const NAMES: Topic<String, String> = Topic::new("names");
    /// const EMAILS: Topic<String, String> = Topic::new("emails");
    /// const NAMES_STORE: Table<String, String> = Table::new("names-store");
    /// const EMAILS_STORE: Table<String, String> = Table::new("emails-store");
    /// const CONTACTS: Table<String, String> = Table::new("contacts");
    /// const CONTACTS_TOPIC: Topic<String, String> = Topic::new("contacts");
    ///
    /// let app = App::new("contacts").pipeline("contacts", |builder| {
    ///     let names = builder.table(NAMES, NAMES_STORE);
    ///     let emails = builder.table(EMAILS, EMAILS_STORE);
    ///     names
    ///         .join(&emails, CONTACTS, |_, name, email| format!("{name} <{email}>"))
    ///         .to_stream()
    ///         .to(CONTACTS_TOPIC);
    /// });
    /// assert_eq!(app.tasks().len(), 1);
    /// ```
    pub fn join<K2, V2, VR>(
        &self,
        other: &KTable<K2, V2>,
        store: Table<K, VR>,
        joiner: impl Fn(&K, &V1, &V2) -> VR + Send + Sync + 'static,
    ) -> KTable<K, VR>
    where
        K2: SameKey<K>,
        V2: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let other = K2::table(other);
        self.join_tables(
            "join",
            Rows::Inner,
            other,
            store,
            Box::new(move |key, left, right| match (left, right) {
                (Some(left), Some(right)) => joiner(key, left, right),
                // Only called for keys both tables hold.
                _ => unreachable_row(),
            }),
        )
    }

    /// Like [`KTable::join`], for every key of this table: `joiner(key, left, right)` with
    /// `None` where the other table has no row (Kafka Streams' table–table `leftJoin`).
    pub fn left_join<K2, V2, VR>(
        &self,
        other: &KTable<K2, V2>,
        store: Table<K, VR>,
        joiner: impl Fn(&K, &V1, Option<&V2>) -> VR + Send + Sync + 'static,
    ) -> KTable<K, VR>
    where
        K2: SameKey<K>,
        V2: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let other = K2::table(other);
        self.join_tables(
            "left_join",
            Rows::Left,
            other,
            store,
            Box::new(move |key, left, right| match left {
                Some(left) => joiner(key, left, right),
                None => unreachable_row(),
            }),
        )
    }

    /// Like [`KTable::join`], for every key of either table: `joiner(key, left, right)`,
    /// each side `None` where its table has no row (Kafka Streams' `outerJoin`).
    pub fn outer_join<K2, V2, VR>(
        &self,
        other: &KTable<K2, V2>,
        store: Table<K, VR>,
        joiner: impl Fn(&K, Option<&V1>, Option<&V2>) -> VR + Send + Sync + 'static,
    ) -> KTable<K, VR>
    where
        K2: SameKey<K>,
        V2: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let other = K2::table(other);
        self.join_tables("outer_join", Rows::Outer, other, store, Box::new(joiner))
    }
}

/// A joiner called for a key without the row its join needs: never, by construction
/// ([`TableTableJoin::recompute`] checks the rows first).
pub(super) fn unreachable_row<T>() -> T {
    panic!("a table join was asked for a key without its rows")
}

// ---------------------------------------------------------------------------------------
// Stream–stream windowed joins.

/// The window of a stream–stream join (Kafka Streams' `JoinWindows`): a record of this
/// stream at time `t` meets the other stream's records from `t - before` to `t + after`
/// (both ends inclusive); `of_time_difference_*` makes both sides the same difference. Each
/// side's buffer keeps records `before + after + grace` behind the latest time put into it;
/// a record older than that is not kept, and counted (`Metrics::late`), but still meets what
/// the other side holds, as in Kafka Streams.
///
/// ```
/// use std::time::Duration;
/// use streams_core::prelude::*;
///
/// let windows = JoinWindows::of_time_difference_and_grace(Duration::from_secs(30), Duration::from_secs(10));
/// assert_eq!((windows.before_ms(), windows.after_ms()), (30_000, 30_000));
/// assert_eq!(windows.grace_ms(), 10_000);
///
/// // A payment within 10 minutes after its order, never before it.
/// let after_only = JoinWindows::of_time_difference_without_grace(Duration::from_secs(600)).before(Duration::ZERO);
/// assert_eq!((after_only.before_ms(), after_only.after_ms()), (0, 600_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinWindows {
    before: i64,
    after: i64,
    grace: i64,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl JoinWindows {
    /// Records within `difference` of each other meet; records up to `grace` late still
    /// count.
    pub fn of_time_difference_and_grace(difference: Duration, grace: Duration) -> Self {
        Self {
            before: millis(difference),
            after: millis(difference),
            grace: millis(grace),
        }
    }

    /// Records within `difference` of each other meet; no record is admitted late.
    pub fn of_time_difference_without_grace(difference: Duration) -> Self {
        Self::of_time_difference_and_grace(difference, Duration::ZERO)
    }

    /// How far before a record of this stream the other stream's records may be, the
    /// window's after-side kept (Kafka Streams' `JoinWindows::before`).
    pub fn before(mut self, before: Duration) -> Self {
        self.before = millis(before);
        self
    }

    /// How far after a record of this stream the other stream's records may be, the
    /// window's before-side kept (Kafka Streams' `JoinWindows::after`).
    pub fn after(mut self, after: Duration) -> Self {
        self.after = millis(after);
        self
    }

    /// The larger of [`before_ms`](Self::before_ms) and [`after_ms`](Self::after_ms): the
    /// time difference of symmetric windows.
    pub fn difference(&self) -> i64 {
        self.before.max(self.after)
    }

    /// How far before a record of this stream its matches may be (ms).
    pub fn before_ms(&self) -> i64 {
        self.before
    }

    /// How far after a record of this stream its matches may be (ms).
    pub fn after_ms(&self) -> i64 {
        self.after
    }

    /// The grace period (ms).
    pub fn grace_ms(&self) -> i64 {
        self.grace
    }

    /// The times of the other side's records that a record of `which` side at `time` meets.
    fn reach(&self, which: Which, time: i64) -> (i64, i64) {
        let (before, after) = self.sides(which);
        (time.saturating_sub(before), time.saturating_add(after))
    }

    /// (before, after) as seen from `which` side: the other side sees them reversed.
    fn sides(&self, which: Which) -> (i64, i64) {
        match which {
            Which::This => (self.before, self.after),
            Which::Other => (self.after, self.before),
        }
    }

    /// Records of `which` side at or before this have closed windows at stream time `now`.
    fn closed_through(&self, which: Which, now: i64) -> i64 {
        now.saturating_sub(self.sides(which).1)
            .saturating_sub(self.grace)
            .saturating_sub(1)
    }

    /// Records at or before this can meet no record still to come (one that is not late).
    fn expired_through(&self, now: i64) -> i64 {
        now.saturating_sub(self.before)
            .saturating_sub(self.after)
            .saturating_sub(self.grace)
            .saturating_sub(1)
    }
}

/// Which side of a windowed join a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    This,
    Other,
}

type PairJoiner<K, V1, V2, VR> = dyn Fn(&K, Option<&V1>, Option<&V2>) -> VR + Send + Sync;

/// What both sides of a windowed join share: the buffers of both sides, the records still
/// without a match (left and outer joins), the windows and the joiner.
struct WindowedJoin<K, V1, V2, VR> {
    name: String,
    windows: JoinWindows,
    this: (&'static str, TableSlot),
    other: (&'static str, TableSlot),
    /// Records that have met nothing yet, by side (a first byte 0 or 1, then the record's
    /// key in its side's buffer); `None` for inner joins.
    unmatched: Option<(&'static str, TableSlot)>,
    /// Whether records of this side (left joins), or of either side (outer joins), go on
    /// without a match once their window closes.
    outer_this: bool,
    outer_other: bool,
    joiner: Box<PairJoiner<K, V1, V2, VR>>,
    next: Arc<Fanout<K, VR>>,
}

fn side_byte(which: Which) -> u8 {
    match which {
        Which::This => 0,
        Which::Other => 1,
    }
}

impl<K, V1, V2, VR> WindowedJoin<K, V1, V2, VR>
where
    K: Key,
    V1: Serialize + DeserializeOwned + Send + Sync + 'static,
    V2: Serialize + DeserializeOwned + Send + Sync + 'static,
    VR: Send + Sync + 'static,
{
    fn buffer<T>(&self, cx: &Cx<'_>, which: Which, work: impl FnOnce(&mut RecordBuffer) -> T) -> Result<T, String> {
        let slot = match which {
            Which::This => &self.this.1,
            Which::Other => &self.other.1,
        };
        cx.ctx
            .with_extension(slot.get()?, RecordBuffer::load, work)
            .map_err(failed)
    }

    /// Emits the join of a record of `which` with a record of the other side, at the later
    /// of their times.
    fn emit(&self, cx: &mut Cx<'_>, key: &K, which: Which, mine: &[u8], theirs: &[u8], time: i64) -> Outcome {
        let (this, other) = match which {
            Which::This => (mine, theirs),
            Which::Other => (theirs, mine),
        };
        let this: V1 = json::decode(this).map_err(|e| format!("join `{}`: {e}", self.name))?;
        let other: V2 = json::decode(other).map_err(|e| format!("join `{}`: {e}", self.name))?;
        let joined = guarded_value(|| (self.joiner)(key, Some(&this), Some(&other)))?;
        let before = cx.timestamp;
        cx.timestamp = time;
        let outcome = self.next.push(cx, key.clone(), joined);
        cx.timestamp = before;
        outcome
    }

    /// The records without a match whose window has closed go on alone (left and outer
    /// joins), in order of their time; buffered records no future record can meet leave.
    fn expire(&self, cx: &mut Cx<'_>) -> Outcome {
        if let Some((table, slot)) = &self.unmatched {
            let index = slot.get()?;
            // The join's own stream time, shared by its sides (kept on this table).
            let now = cx.ctx.clock(index);
            // Closed: time + its side's reach after it + grace < now. The buffer holds both
            // sides, each closing by its own reach.
            if now == NO_TIME {
                return self.expire_buffers(cx);
            }
            let this_through = self.windows.closed_through(Which::This, now);
            let other_through = self.windows.closed_through(Which::Other, now);
            let closed = cx
                .ctx
                .with_extension(index, RecordBuffer::load, |buffer: &mut RecordBuffer| {
                    buffer.expire_where(this_through.max(other_through), |bytes, time| {
                        let this = split_record_key(bytes)
                            .and_then(|(tagged, _, _)| tagged.first().copied())
                            .is_some_and(|side| side == side_byte(Which::This));
                        time <= if this { this_through } else { other_through }
                    })
                })
                .map_err(failed)?;
            for (bytes, value) in closed {
                cx.ctx.expire_at(index, bytes.to_vec()).map_err(failed)?;
                let Some((tagged, time, _)) = split_record_key(&bytes) else {
                    continue;
                };
                let Some((&side, key_bytes)) = tagged.split_first() else {
                    continue;
                };
                let this = side == side_byte(Which::This);
                let alone = |cx: &mut Cx<'_>| -> Outcome {
                    let key = K::decode_key(Some(key_bytes)).map_err(|e| format!("a key of table `{table}`: {e}"))?;
                    let joined = if this {
                        let this: V1 = json::decode(&value).map_err(|e| format!("join `{}`: {e}", self.name))?;
                        guarded_value(|| (self.joiner)(&key, Some(&this), None))?
                    } else {
                        let other: V2 = json::decode(&value).map_err(|e| format!("join `{}`: {e}", self.name))?;
                        guarded_value(|| (self.joiner)(&key, None, Some(&other)))?
                    };
                    at_time(cx, time, |cx| guarded(|| self.next.push(cx, key, joined)))
                };
                // One that fails takes the processing error handler, as the table of
                // records that met nothing holds it; the others closing with it go on.
                if let Err(error) = alone(cx) {
                    change_failed_in(cx, table, key_bytes.to_vec(), Some(value.to_vec()), time, &error);
                }
            }
        }
        self.expire_buffers(cx)
    }

    /// Each side's buffered records that no record still to come can meet leave, by the
    /// side's own stream time (as Kafka Streams' window stores keep theirs).
    fn expire_buffers(&self, cx: &mut Cx<'_>) -> Outcome {
        for which in [Which::This, Which::Other] {
            let index = self.side_slot(which)?;
            let now = cx.ctx.clock(index);
            if now == NO_TIME {
                continue;
            }
            let through = self.windows.expired_through(now);
            let gone = self.buffer(cx, which, |buffer| buffer.expire(through))?;
            for bytes in gone {
                cx.ctx.expire_at(index, bytes.into_vec()).map_err(failed)?;
            }
        }
        Ok(())
    }

    /// The table of `which` side's buffer.
    fn side_slot(&self, which: Which) -> Result<usize, String> {
        match which {
            Which::This => self.this.1.get(),
            Which::Other => self.other.1.get(),
        }
    }

    /// Sends a record of `which` side on alone (left and outer joins), at `time`.
    fn emit_alone(&self, cx: &mut Cx<'_>, key: K, which: Which, value: &[u8], time: i64) -> Outcome {
        let joined = match which {
            Which::This => {
                let this: V1 = json::decode(value).map_err(|e| format!("join `{}`: {e}", self.name))?;
                guarded_value(|| (self.joiner)(&key, Some(&this), None))?
            }
            Which::Other => {
                let other: V2 = json::decode(value).map_err(|e| format!("join `{}`: {e}", self.name))?;
                guarded_value(|| (self.joiner)(&key, None, Some(&other)))?
            }
        };
        let before = cx.timestamp;
        cx.timestamp = time;
        let outcome = self.next.push(cx, key, joined);
        cx.timestamp = before;
        outcome
    }

    /// A record of side `which`, as Kafka Streams' stream–stream join takes it: the join's
    /// stream time (shared by its sides) moves up to it; it meets the other side's buffered
    /// records within its reach; it is buffered itself while a record still to come can
    /// meet it. Without a match in a left or outer join it goes on alone: at once when its
    /// reach is already behind stream time (a late record too), else when its window closes.
    fn push(&self, cx: &mut Cx<'_>, which: Which, key: K, value: Vec<u8>) -> Outcome {
        let time = cx.timestamp;
        // The join's stream time, shared by its sides: what closes windows of records
        // without a match (left and outer joins keep it on their unmatched table).
        let now = match &self.unmatched {
            Some((_, slot)) => cx.ctx.advance_clock(slot.get()?, time),
            None => NO_TIME,
        };
        let goes_alone = match which {
            Which::This => self.outer_this,
            Which::Other => self.outer_other,
        };
        if key.is_null() {
            if goes_alone {
                // KIP-962: a left or outer join lets a record without a key through, unjoined.
                return self.emit_alone(cx, key, which, &value, time);
            }
            tracing::debug!(
                task = &*cx.ctx.name,
                "join `{}`: a record without a key meets nothing and is dropped",
                self.name
            );
            return Ok(());
        }
        // This side's buffer keeps a stream time of its own, moved by the keyed records put
        // into it, as Kafka Streams' window stores do.
        let buffer_now = cx.ctx.advance_clock(self.side_slot(which)?, time);
        // Results of records whose window closed before this one go first.
        self.expire(cx)?;
        // No record still to come can meet one at or before this: it is not buffered (Kafka
        // Streams' window store drops it, and counts it), but still meets what the other
        // side holds.
        let buffered = time > self.windows.expired_through(buffer_now);
        if !buffered {
            cx.ctx.metrics.late.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                task = &*cx.ctx.name,
                "join `{}`: a record at {time} ms is older than its buffer keeps (its stream time is {buffer_now} \
                 ms): not buffered; it meets what the other side still buffers, and goes on alone at once if it \
                 meets nothing in a left or outer join",
                self.name
            );
        }
        let key_bytes = key
            .key_bytes()
            .map_err(|e| format!("cannot encode a key of join `{}`: {e}", self.name))?
            .into_owned();
        let theirs = match which {
            Which::This => Which::Other,
            Which::Other => Which::This,
        };
        let (from, to) = self.windows.reach(which, time);
        let mine = if buffered {
            Some(self.buffer(cx, which, |buffer| buffer.add(&key_bytes, time, value.clone()))?)
        } else {
            None
        };
        let matches = self.buffer(cx, theirs, |buffer| buffer.records_keyed(&key_bytes, from, to))?;
        if let Some(mine) = &mine {
            let index = self.side_slot(which)?;
            cx.ctx
                .put_at(index, mine.clone(), Some(value.clone()))
                .map_err(failed)?;
        }
        let mut outcome = Ok(());
        for (their_key, their_time, their_value) in &matches {
            outcome = outcome.and(guarded(|| {
                self.emit(cx, &key, which, &value, their_value, time.max(*their_time))
            }));
            // The other record has met one now: it goes on no more alone.
            if let Some((_, slot)) = &self.unmatched {
                let unmatched = slot.get()?;
                let tagged = tag(theirs, their_key);
                let was = cx
                    .ctx
                    .with_extension(unmatched, RecordBuffer::load, |buffer: &mut RecordBuffer| {
                        buffer.remove(&tagged)
                    })
                    .map_err(failed)?;
                if was {
                    cx.ctx.put_at(unmatched, tagged, None).map_err(failed)?;
                }
            }
        }
        if matches.is_empty() && goes_alone {
            match (&mine, &self.unmatched) {
                // Its reach is behind stream time: Kafka Streams sends it on at once.
                _ if to < now => outcome = outcome.and(guarded(|| self.emit_alone(cx, key, which, &value, time))),
                (Some(mine), Some((_, slot))) => {
                    let unmatched = slot.get()?;
                    let tagged = tag(which, mine);
                    cx.ctx
                        .with_extension(unmatched, RecordBuffer::load, |buffer: &mut RecordBuffer| {
                            buffer.insert(&tagged, value.clone())
                        })
                        .map_err(failed)?;
                    cx.ctx.put_at(unmatched, tagged, Some(value)).map_err(failed)?;
                }
                _ => outcome = outcome.and(guarded(|| self.emit_alone(cx, key, which, &value, time))),
            }
        }
        outcome
    }
}

/// A record's key in the buffer of records without a match: its side, then its key in its
/// side's buffer.
fn tag(which: Which, record_key: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(record_key.len() + 1);
    bytes.push(side_byte(which));
    bytes.extend_from_slice(record_key);
    bytes
}

/// One side's entry into a windowed join.
struct JoinSide<K, V1, V2, VR, V> {
    join: Arc<WindowedJoin<K, V1, V2, VR>>,
    which: Which,
    _value: PhantomData<fn(V)>,
}

impl<K, V1, V2, VR, V> Node<K, V> for JoinSide<K, V1, V2, VR, V>
where
    K: Key,
    V: Serialize + Send + Sync + 'static,
    V1: Serialize + DeserializeOwned + Send + Sync + 'static,
    V2: Serialize + DeserializeOwned + Send + Sync + 'static,
    VR: Send + Sync + 'static,
{
    fn push(&self, cx: &mut Cx<'_>, key: K, value: V) -> Outcome {
        let bytes = json::encode(&value).map_err(|e| format!("join `{}`: {e}", self.join.name))?;
        self.join.push(cx, self.which, key, bytes)
    }
}

impl<K, V1, V2, VR> Tick for WindowedJoin<K, V1, V2, VR>
where
    K: Key,
    V1: Serialize + DeserializeOwned + Send + Sync + 'static,
    V2: Serialize + DeserializeOwned + Send + Sync + 'static,
    VR: Send + Sync + 'static,
{
    fn tick(&self, cx: &mut Cx<'_>) -> Outcome {
        self.expire(cx)
    }
}

/// A windowed join's buffer table, named after the join (`{name}-{what}-join-store`); the
/// name lives as long as the app.
fn buffer_table<K: Key>(graph: &mut Graph, group: usize, name: &str, what: &str) -> (&'static str, TableSlot) {
    let table: &'static str = Box::leak(format!("{name}-{what}-join-store").into_boxed_str());
    let spec = TableSpec {
        name: table,
        key_type: std::any::type_name::<K>(),
        value_type: "json",
        show_key: KeyDisplay(show_record_key::<K>),
        faust: false,
        windowed: false,
        lookup: None,
        keeps_time: true,
        ttl: None,
    };
    (table, graph.table(group, spec))
}

impl<K, V1, P> KStream<K, V1, P>
where
    K: Key,
    V1: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    #[allow(clippy::too_many_arguments)]
    fn join_streams<V2, P2, VR>(
        self,
        op: &str,
        other: KStream<K, V2, P2>,
        name: &str,
        windows: JoinWindows,
        (outer_this, outer_other): (bool, bool),
        joiner: Box<PairJoiner<K, V1, V2, VR>>,
    ) -> KStream<K, VR, Keyed>
    where
        V2: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Send + Sync + 'static,
    {
        let graph = Rc::clone(&self.graph);
        let (join, group, node) = {
            let mut g = graph.borrow_mut();
            let group = g.union(self.group, other.group);
            check_join_name(&mut g, name, windows);
            let this = buffer_table::<K>(&mut g, group, name, "this");
            let theirs = buffer_table::<K>(&mut g, group, name, "other");
            let unmatched = (outer_this || outer_other).then(|| buffer_table::<K>(&mut g, group, name, "outer"));
            let next = g.fanout::<K, VR>();
            let node = g.node(op, NodeKind::Operation, vec![self.node, other.node], group);
            g.rename(node, name);
            let join = Arc::new(WindowedJoin {
                name: name.to_string(),
                windows,
                this,
                other: theirs,
                unmatched,
                outer_this,
                outer_other,
                joiner,
                next,
            });
            g.tick(group, Arc::clone(&join) as Arc<dyn Tick>);
            (join, group, node)
        };
        self.fanout.add(Arc::new(JoinSide::<K, V1, V2, VR, V1> {
            join: Arc::clone(&join),
            which: Which::This,
            _value: PhantomData,
        }));
        other.fanout.add(Arc::new(JoinSide::<K, V1, V2, VR, V2> {
            join: Arc::clone(&join),
            which: Which::Other,
            _value: PhantomData,
        }));
        KStream::new(graph, Arc::clone(&join.next), group, node)
    }

    /// Joins the records of two streams whose keys are equal and whose event times differ
    /// by at most the window's time difference (Kafka Streams' stream–stream `join` with
    /// `JoinWindows`): `joiner(key, this, other)` for every such pair, at the later of the
    /// two times, as soon as the second of them arrives. Both sides are kept in windowed
    /// stores (`{name}-this-join-store`, `{name}-other-join-store`, with changelogs) for the
    /// window's before + after plus the grace period. The streams are co-partitioned, as for
    /// [`KStream::join`]; `name` names the join and its stores.
    ///
    /// ```
    /// use std::time::Duration;
    /// use streams_core::prelude::*;
    ///
    /// const IMPRESSIONS: Topic<String, i64> = Topic::new("impressions");
    /// const CLICKS: Topic<String, i64> = Topic::new("clicks");
    /// const ATTRIBUTED: Topic<String, String> = Topic::new("attributed");
    ///
    /// let app = App::new("ads").pipeline("attribution", |builder| {
    ///     let impressions = builder.stream(IMPRESSIONS);
    ///     builder
    ///         .stream(CLICKS)
    ///         .join_windowed(
    ///             impressions,
    ///             "click-impression",
    ///             JoinWindows::of_time_difference_and_grace(Duration::from_secs(30), Duration::from_secs(10)),
    ///             |_, click, impression| format!("click at {click}, impression at {impression}"),
    ///         )
    ///         .to(ATTRIBUTED);
    /// });
    /// assert_eq!(app.tasks().len(), 1);
    /// ```
    pub fn join_windowed<K2, V2, P2, VR>(
        self,
        other: KStream<K2, V2, P2>,
        name: &str,
        windows: JoinWindows,
        joiner: impl Fn(&K, &V1, &V2) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR, Keyed>
    where
        K2: SameKey<K>,
        P: PartitionedByKey,
        P2: PartitionedByKey,
        V2: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Send + Sync + 'static,
    {
        self.join_streams(
            "join",
            K2::stream(other),
            name,
            windows,
            (false, false),
            Box::new(move |key, this, other| match (this, other) {
                (Some(this), Some(other)) => joiner(key, this, other),
                _ => unreachable_row(),
            }),
        )
    }

    /// Like [`KStream::join_windowed`], and a record of this stream that met no record of the
    /// other by the time its window closes goes on alone, `joiner(key, this, None)`, once —
    /// not at once, as Kafka Streams did before 3.1 (Kafka Streams' `leftJoin`); one whose
    /// reach is already behind the join's stream time when it arrives, or that has no key,
    /// goes on alone at once, as in Kafka Streams 3.7.
    pub fn left_join_windowed<K2, V2, P2, VR>(
        self,
        other: KStream<K2, V2, P2>,
        name: &str,
        windows: JoinWindows,
        joiner: impl Fn(&K, &V1, Option<&V2>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR, Keyed>
    where
        K2: SameKey<K>,
        P: PartitionedByKey,
        P2: PartitionedByKey,
        V2: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Send + Sync + 'static,
    {
        self.join_streams(
            "left_join",
            K2::stream(other),
            name,
            windows,
            (true, false),
            Box::new(move |key, this, other| match this {
                Some(this) => joiner(key, this, other),
                None => unreachable_row(),
            }),
        )
    }

    /// Like [`KStream::left_join_windowed`], for the records of both streams:
    /// `joiner(key, this, other)`, with `None` for the side a record that met nothing lacks
    /// (Kafka Streams' `outerJoin`).
    pub fn outer_join_windowed<K2, V2, P2, VR>(
        self,
        other: KStream<K2, V2, P2>,
        name: &str,
        windows: JoinWindows,
        joiner: impl Fn(&K, Option<&V1>, Option<&V2>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR, Keyed>
    where
        K2: SameKey<K>,
        P: PartitionedByKey,
        P2: PartitionedByKey,
        V2: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Send + Sync + 'static,
    {
        self.join_streams(
            "outer_join",
            K2::stream(other),
            name,
            windows,
            (true, true),
            Box::new(joiner),
        )
    }
}

/// Records what is wrong with a join's name or windows (refused at start).
fn check_join_name(graph: &mut Graph, name: &str, windows: JoinWindows) {
    let pipeline = graph.pipeline.clone();
    if !super::builder::valid_name(name) {
        graph.errors.push(format!(
            "pipeline `{pipeline}`: join name `{name}` names its stores and changelog topics: use letters, \
             digits, `.`, `_` and `-`"
        ));
    }
    if windows.before < 0 || windows.after < 0 || windows.grace < 0 {
        graph.errors.push(format!(
            "pipeline `{pipeline}`: join `{name}` needs a time difference and grace of at least 0"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_windows_close_after_the_difference_and_grace() {
        let windows = JoinWindows::of_time_difference_and_grace(Duration::from_millis(30), Duration::from_millis(10));
        // A record at 100 has its window closed once stream time is past 140.
        assert_eq!(windows.closed_through(Which::This, 141), 100);
        assert_eq!(windows.closed_through(Which::Other, 140), 99);
        // A record at 59 can still meet one at 89, which is on time until stream time 129.
        assert_eq!(windows.expired_through(130), 59);
    }

    #[test]
    fn uneven_join_windows_reach_each_side_by_its_own_difference() {
        // This side meets the other's records 0 ms before and 30 ms after it.
        let windows = JoinWindows::of_time_difference_and_grace(Duration::from_millis(30), Duration::from_millis(10))
            .before(Duration::ZERO);
        assert_eq!(windows.reach(Which::This, 100), (100, 130));
        assert_eq!(windows.reach(Which::Other, 100), (70, 100));
        assert_eq!(windows.closed_through(Which::This, 141), 100);
        assert_eq!(windows.closed_through(Which::Other, 111), 100);
        assert_eq!(windows.closed_through(Which::Other, 110), 99);
        // A record of this side at 60 meets the other's up to 90, on time until 100.
        assert_eq!(windows.expired_through(100), 59);
    }
}

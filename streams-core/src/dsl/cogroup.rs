//! [`CogroupedKStream`]: several grouped streams aggregated into one table through one store
//! (Kafka Streams' `cogroup`, KIP-150).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::builder::{Graph, NodeKind};
use super::cogroup_windowed::{wire, Adder, CoRecord, CogroupWindowsOf, CogroupedRecords, Wire};
use super::grouped::{aggregate_into, aggregation_nodes, KGroupedStream};
use super::node::TableSlot;
use super::table::KTable;
use crate::codec::Key;
use crate::table::Table;

/// Makes a grouped stream's records update the aggregate, once its table is known: its slot,
/// its name and the initializer.
type Attach<A> = Box<dyn FnOnce(&TableSlot, &'static str, Arc<Init<A>>)>;

/// An aggregate's initial value.
type Init<A> = dyn Fn() -> A + Send + Sync;

/// Several grouped streams, each with its own value type and adder, on their way into one
/// table (Kafka Streams' `CogroupedKStream`): start with [`KGroupedStream::cogroup`], add
/// streams with [`CogroupedKStream::cogroup`], end with [`CogroupedKStream::aggregate`].
///
/// The streams must be partitioned alike (their key types are equal, which the compiler
/// checks); they are read by one task per partition, like the two sides of a join, and
/// every record updates the one aggregate of its key, in the order the task takes them.
#[must_use = "a cogrouped stream does nothing until it is aggregated (`aggregate`)"]
pub struct CogroupedKStream<K, A> {
    graph: Rc<RefCell<Graph>>,
    group: usize,
    nodes: Vec<usize>,
    attach: Vec<Attach<A>>,
    /// The same streams' way into a windowed aggregate ([`CogroupedKStream::windowed_by`]).
    wires: Vec<Wire<K, A>>,
    _key: std::marker::PhantomData<fn() -> K>,
}

impl<K, V> KGroupedStream<K, V>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Starts a cogroup (Kafka Streams' `cogroup`, KIP-150): this stream's records update an
    /// aggregate of type `A` through `adder(key, value, aggregate)`; the other streams'
    /// records join in with [`CogroupedKStream::cogroup`], each with an adder of its own, and
    /// [`CogroupedKStream::aggregate`] says where the aggregate is kept. One store, one
    /// changelog, one result for all, where aggregating each stream and joining the tables
    /// would keep one of each per stream.
    ///
    /// ```
    /// use streams_core::prelude::*;
    ///
    /// #[record]
    /// struct Click { page: String }
    /// #[record]
    /// struct Purchase { amount: i64 }
    /// #[record]
    /// #[derive(Default)]
    /// struct Activity { clicks: i64, spent: i64 }
    ///
    /// const CLICKS: Topic<String, Click> = Topic::new("clicks");
    /// const PURCHASES: Topic<String, Purchase> = Topic::new("purchases");
    /// const ACTIVITY: Table<String, Activity> = Table::new("activity");
    ///
    /// let app = App::new("activity").pipeline("activity", |builder| {
    ///     let clicks = builder.stream(CLICKS).group_by_key();
    ///     let purchases = builder.stream(PURCHASES).group_by_key();
    ///     clicks
    ///         .cogroup(|_, _click, mut activity: Activity| {
    ///             activity.clicks += 1;
    ///             activity
    ///         })
    ///         .cogroup(purchases, |_, purchase, mut activity| {
    ///             activity.spent += purchase.amount;
    ///             activity
    ///         })
    ///         .aggregate(ACTIVITY, Activity::default);
    /// });
    /// // One task per partition reads both topics.
    /// assert_eq!(app.tasks().len(), 1);
    /// ```
    pub fn cogroup<A>(self, adder: impl Fn(&K, V, A) -> A + Send + Sync + 'static) -> CogroupedKStream<K, A>
    where
        A: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let (graph, fanout, group, node) = self.into_parts();
        let adder = Arc::new(adder);
        CogroupedKStream {
            graph,
            group,
            nodes: vec![node],
            attach: vec![attach(Arc::clone(&fanout), adder.clone())],
            wires: vec![wire(fanout, adder)],
            _key: std::marker::PhantomData,
        }
    }
}

/// How `fanout`'s records update the aggregate through `adder`.
fn attach<K, V, A>(fanout: Arc<super::node::Fanout<K, V>>, adder: Arc<Adder<K, V, A>>) -> Attach<A>
where
    K: Key,
    V: Send + Sync + 'static,
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    Box::new(move |slot: &TableSlot, name: &'static str, init: Arc<Init<A>>| {
        aggregate_into(&fanout, slot.clone(), name, move |key, aggregate, value| {
            adder(key, value, aggregate.unwrap_or_else(|| init()))
        });
    })
}

impl<K, A> CogroupedKStream<K, A>
where
    K: Key,
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Adds `other`'s records to the aggregate, through `adder(key, value, aggregate)` (Kafka
    /// Streams' `CogroupedKStream.cogroup`). `other` is keyed like the others: a stream of
    /// another key type is a compile error.
    pub fn cogroup<V2>(
        mut self,
        other: KGroupedStream<K, V2>,
        adder: impl Fn(&K, V2, A) -> A + Send + Sync + 'static,
    ) -> Self
    where
        V2: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let (_, fanout, group, node) = other.into_parts();
        self.group = self.graph.borrow_mut().union(self.group, group);
        self.nodes.push(node);
        let adder = Arc::new(adder);
        self.attach.push(attach(Arc::clone(&fanout), adder.clone()));
        self.wires.push(wire(fanout, adder));
        self
    }

    /// The cogrouped records in windows of event time (Kafka Streams'
    /// `CogroupedKStream.windowedBy`): [`TimeWindows`](crate::window::TimeWindows) (tumbling
    /// or hopping), [`SlidingWindows`](crate::window::SlidingWindows) or
    /// [`SessionWindows`](crate::window::SessionWindows); then `aggregate` into a
    /// [`WindowedTable`](crate::WindowedTable). One windowed aggregation takes the records
    /// of every stream, each through its adder: the same windows, grace, closing,
    /// `emit_final` and retention as a single stream's.
    ///
    /// ```
    /// use std::time::Duration;
    /// use streams_core::prelude::*;
    ///
    /// #[record]
    /// struct Click { page: String }
    /// #[record]
    /// struct Purchase { amount: i64 }
    /// #[record]
    /// #[derive(Default)]
    /// struct Activity { clicks: i64, spent: i64 }
    ///
    /// const CLICKS: Topic<String, Click> = Topic::new("clicks");
    /// const PURCHASES: Topic<String, Purchase> = Topic::new("purchases");
    /// const PER_MINUTE: WindowedTable<String, Activity> = WindowedTable::new("activity-per-minute");
    ///
    /// let app = App::new("activity").pipeline("activity", |builder| {
    ///     let clicks = builder.stream(CLICKS).group_by_key();
    ///     let purchases = builder.stream(PURCHASES).group_by_key();
    ///     clicks
    ///         .cogroup(|_, _click, mut activity: Activity| {
    ///             activity.clicks += 1;
    ///             activity
    ///         })
    ///         .cogroup(purchases, |_, purchase, mut activity| {
    ///             activity.spent += purchase.amount;
    ///             activity
    ///         })
    ///         .windowed_by(TimeWindows::of(Duration::from_secs(60)))
    ///         .aggregate(PER_MINUTE, Activity::default);
    /// });
    /// assert_eq!(app.tasks().len(), 1);
    /// ```
    pub fn windowed_by<W: CogroupWindowsOf<K, A>>(self, windows: W) -> W::Stream {
        let (merged, node) = {
            let mut graph = self.graph.borrow_mut();
            let merged = graph.fanout::<K, CoRecord>();
            let node = graph.node("cogroup", NodeKind::Operation, self.nodes, self.group);
            (merged, node)
        };
        let adders = self
            .wires
            .into_iter()
            .enumerate()
            .map(|(stream, wire)| wire(&merged, stream))
            .collect();
        let grouped = KGroupedStream::new(self.graph, merged, self.group, node);
        windows.window_cogroup(CogroupedRecords::new(grouped, adders))
    }

    /// Keeps the aggregate in `table`, starting each key from `init()` (Kafka Streams'
    /// `CogroupedKStream.aggregate`): a table like any aggregation's, changed by every record
    /// of every cogrouped stream.
    pub fn aggregate(self, table: Table<K, A>, init: impl Fn() -> A + Send + Sync + 'static) -> KTable<K, A> {
        let (slot, node) = aggregation_nodes(&mut self.graph.borrow_mut(), self.group, "cogroup", self.nodes, &table);
        let init: Arc<Init<A>> = Arc::new(init);
        for attach in self.attach {
            attach(&slot, table.name(), Arc::clone(&init));
        }
        KTable::new(self.graph, table.name(), slot, self.group, node)
    }
}

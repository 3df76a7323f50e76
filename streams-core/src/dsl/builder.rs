//! Building a pipeline: [`StreamsBuilder`] keeps the graph of nodes as the typed handles
//! grow it, and [`Pipeline`] is the result — its sub-topologies as tasks, and its graph for
//! the topology.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::join::GlobalKTable;
use super::node::{ChangeFanout, ChangeListener, Fanout, Freeze, SourceNode, StreamSource, TableSlot, Tick};
use super::run::{run_fn, SubTopology};
use super::stream::{KStream, Keyed};
use super::table::{KTable, TableSource};
use crate::codec::Key;
use crate::spec::{GlobalTableSpec, TableSpec, TopicSpec};
use crate::table::Table;
use crate::task::run::{TaskKind, TaskSpec};
use crate::topic::Topic;

/// What a node of a pipeline is, for the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// Reads a topic.
    Source {
        /// The topic.
        topic: String,
    },
    /// A stateless operation (`filter`, `map_values`, …).
    Operation,
    /// Sends to a topic.
    Sink {
        /// The topic.
        topic: String,
    },
    /// A global table: a full copy of a topic on every worker.
    GlobalTable {
        /// The table.
        table: String,
        /// The topic it copies.
        topic: String,
    },
    /// Keeps a table (an aggregation, or a topic read as a table).
    Table {
        /// The table.
        table: String,
        /// Its changelog topic.
        changelog: String,
    },
}

/// A node of a pipeline, for the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name: what it does, numbered in the pipeline (`filter-2`), or the name
    /// given with `.named(..)`.
    pub name: String,
    /// What it is.
    pub kind: NodeKind,
    /// The nodes before it.
    pub parents: Vec<usize>,
    /// The sub-topology it belongs to (an index into [`Pipeline::subtopologies`]).
    pub subtopology: usize,
}

/// What a builder records.
pub(crate) struct Graph {
    pub(crate) app_id: String,
    pub(crate) pipeline: String,
    /// Union-find of node groups: a group is a sub-topology in the making.
    group_parent: Vec<usize>,
    pub(crate) nodes: Vec<(NodeInfo, usize)>,
    sources: Vec<SourceEntry>,
    sinks: Vec<(usize, TopicSpec)>,
    tables: Vec<TableEntry>,
    listeners: Vec<(usize, TableSlot, Arc<dyn ChangeListener>)>,
    ticks: Vec<(usize, Arc<dyn Tick>)>,
    fanouts: Vec<Arc<dyn Freeze>>,
    /// Global tables, each with its node once a join uses it.
    globals: Vec<(GlobalTableSpec, Option<usize>)>,
    pub(crate) errors: Vec<String>,
}

struct SourceEntry {
    topic: TopicSpec,
    /// The name the sub-topology is known by (the repartition's name for repartition topics).
    display: String,
    group: usize,
    node: Arc<dyn SourceNode>,
}

struct TableEntry {
    spec: TableSpec,
    group: usize,
    slot: TableSlot,
}

impl Graph {
    fn find(&mut self, group: usize) -> usize {
        let mut root = group;
        while self.group_parent[root] != root {
            root = self.group_parent[root];
        }
        self.group_parent[group] = root;
        root
    }

    /// Makes two groups one sub-topology.
    pub(crate) fn union(&mut self, a: usize, b: usize) -> usize {
        let (a, b) = (self.find(a), self.find(b));
        self.group_parent[b] = a;
        a
    }

    fn new_group(&mut self) -> usize {
        self.group_parent.push(self.group_parent.len());
        self.group_parent.len() - 1
    }

    /// Adds a node to the topology; returns its id.
    pub(crate) fn node(&mut self, op: &str, kind: NodeKind, parents: Vec<usize>, group: usize) -> usize {
        let id = self.nodes.len();
        let name = match &kind {
            NodeKind::Operation => format!("{op}-{id}"),
            _ => op.to_string(),
        };
        self.nodes.push((
            NodeInfo {
                name,
                kind,
                parents,
                subtopology: 0,
            },
            group,
        ));
        id
    }

    /// Gives node `id` a name of the user's.
    pub(crate) fn rename(&mut self, id: usize, name: &str) {
        let taken = self
            .nodes
            .iter()
            .enumerate()
            .any(|(other, (node, _))| other != id && node.kind == NodeKind::Operation && node.name == name);
        if taken {
            // Two operations of one name would be one node of the topology.
            self.errors.push(format!(
                "pipeline `{}` names two operations `{name}`; give each its own name",
                self.pipeline
            ));
        }
        if let Some((node, _)) = self.nodes.get_mut(id) {
            node.name = name.to_string();
        }
    }

    pub(crate) fn fanout<K: Send + 'static, V: Send + 'static>(&mut self) -> Arc<Fanout<K, V>> {
        let fanout = Fanout::new();
        self.fanouts.push(Arc::clone(&fanout) as Arc<dyn Freeze>);
        fanout
    }

    pub(crate) fn change_fanout(&mut self) -> Arc<ChangeFanout> {
        let fanout = ChangeFanout::new();
        self.fanouts.push(Arc::clone(&fanout) as Arc<dyn Freeze>);
        fanout
    }

    /// Starts a sub-topology at `topic`; returns its group.
    pub(crate) fn source(&mut self, topic: TopicSpec, display: String, node: Arc<dyn SourceNode>) -> usize {
        if let Some(other) = self.sources.iter().find(|s| s.topic.name == topic.name) {
            self.errors.push(format!(
                "pipeline `{}` reads topic `{}` twice ({} and {}); read it once and use the stream it gives \
                 twice (`.clone()`)",
                self.pipeline, topic.name, other.display, display
            ));
        }
        let group = self.new_group();
        self.sources.push(SourceEntry {
            topic,
            display,
            group,
            node,
        });
        group
    }

    pub(crate) fn sink(&mut self, group: usize, topic: TopicSpec) {
        self.sinks.push((group, topic));
    }

    /// A node sending to `topic` after node `parent` of `group`'s sub-topology, which then
    /// sends to it; returns the node.
    pub(crate) fn sink_node(&mut self, group: usize, topic: TopicSpec, parent: usize) -> usize {
        let name = topic.name.to_string();
        self.sink(group, topic);
        self.node(&name, NodeKind::Sink { topic: name.clone() }, vec![parent], group)
    }

    /// Gives `table` to the sub-topology of `group`; its slot says where it is among the
    /// task's tables once the pipeline is built.
    pub(crate) fn table(&mut self, group: usize, spec: TableSpec) -> TableSlot {
        let slot = TableSlot::default();
        self.table_at(group, spec, slot.clone());
        slot
    }

    /// Gives `table` to the sub-topology of `group`, at `slot`.
    pub(crate) fn table_at(&mut self, group: usize, spec: TableSpec, slot: TableSlot) {
        if self.tables.iter().any(|t| t.spec.name == spec.name) {
            self.errors.push(format!(
                "pipeline `{}` keeps table `{}` twice; a table is kept by one aggregation",
                self.pipeline, spec.name
            ));
        }
        if spec.faust {
            self.errors.push(format!(
                "pipeline `{}` keeps table `{}`, declared `.faust()`: Faust's encoding is for tables \
                 agents update (a Faust app's tables); declare the DSL's table without it",
                self.pipeline, spec.name
            ));
        }
        self.tables.push(TableEntry { spec, group, slot });
    }

    pub(crate) fn listen(&mut self, group: usize, slot: TableSlot, listener: Arc<dyn ChangeListener>) {
        self.listeners.push((group, slot, listener));
    }

    /// Runs `tick` in the sub-topology of `group` at each cut.
    pub(crate) fn tick(&mut self, group: usize, tick: Arc<dyn Tick>) {
        self.ticks.push((group, tick));
    }

    /// The first source topic of a group's sub-topology (what its repartition topics are
    /// partitioned like).
    pub(crate) fn first_source(&mut self, group: usize) -> Option<String> {
        let root = self.find(group);
        let groups: Vec<usize> = self.sources.iter().map(|s| s.group).collect();
        for (index, g) in groups.into_iter().enumerate() {
            if self.find(g) == root {
                return Some(self.sources[index].topic.name.to_string());
            }
        }
        None
    }

    /// The node of global table `name` in the topology, made in `group`'s sub-topology the
    /// first time a join uses it.
    pub(crate) fn global_node(&mut self, name: &str, group: usize) -> Option<usize> {
        let index = self.globals.iter().position(|(spec, _)| spec.table.name == name)?;
        if let Some(node) = self.globals[index].1 {
            return Some(node);
        }
        let kind = NodeKind::GlobalTable {
            table: name.to_string(),
            topic: self.globals[index].0.topic.name.to_string(),
        };
        let node = self.node(name, kind, Vec::new(), group);
        self.globals[index].1 = Some(node);
        Some(node)
    }

    /// The repartition topic named `name`: `{app}-{name}-repartition`.
    pub(crate) fn repartition_topic(&mut self, name: &str) -> String {
        if !valid_name(name) {
            self.errors.push(format!(
                "pipeline `{}`: repartition name `{name}` names the topic `{}-{name}-repartition`: use letters, \
                 digits, `.`, `_` and `-`",
                self.pipeline, self.app_id
            ));
        }
        format!("{}-{name}-repartition", self.app_id)
    }
}

/// Whether `name` can name a topic or a store: letters, digits, `.`, `_` and `-`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Builds a pipeline: start streams from topics, tables from topics, and chain operations
/// on them. [`crate::App::pipeline`] gives you one.
///
/// ```
/// use streams_core::prelude::*;
///
/// #[record]
/// #[derive(Clone)]
/// struct Hit { hits: i64, user: String }
///
/// const HITS: Topic<(), Hit> = Topic::new("hits");
/// const PER_USER: Table<String, i64> = Table::new("hits-per-user");
///
/// let app = App::new("counter").pipeline("count", |builder| {
///     builder
///         .stream(HITS)
///         .filter(|_, hit| hit.hits > 20)
///         .group_by("by-user", |_, hit| hit.user.clone())
///         .count(PER_USER);
/// });
/// assert_eq!(app.tasks().len(), 2, "split at the repartition topic");
/// ```
pub struct StreamsBuilder {
    pub(crate) graph: Rc<RefCell<Graph>>,
}

impl StreamsBuilder {
    pub(crate) fn new(app_id: &str, pipeline: &str) -> Self {
        Self {
            graph: Rc::new(RefCell::new(Graph {
                app_id: app_id.to_string(),
                pipeline: pipeline.to_string(),
                group_parent: Vec::new(),
                nodes: Vec::new(),
                sources: Vec::new(),
                sinks: Vec::new(),
                tables: Vec::new(),
                listeners: Vec::new(),
                ticks: Vec::new(),
                fanouts: Vec::new(),
                globals: Vec::new(),
                errors: Vec::new(),
            })),
        }
    }

    /// The records of `topic` as a global table kept in `store`: a full copy on every
    /// worker (Kafka Streams' `GlobalKTable`), filled from the topic before the worker
    /// processes anything and kept current by a consumer of its own, with no changelog. The
    /// latest value of each key counts; a record without a value deletes its key. Streams
    /// join it by a key taken from their records ([`KStream::join_global`]), whatever their
    /// partitioning.
    ///
    /// ```
    /// use streams_core::prelude::*;
    ///
    /// #[record]
    /// #[derive(Clone, Default)]
    /// struct Product { name: String }
    /// #[record]
    /// #[derive(Clone)]
    /// struct Order { product: String, amount: i64 }
    ///
    /// const PRODUCTS: Topic<String, Product> = Topic::new("products");
    /// const PRODUCTS_STORE: Table<String, Product> = Table::new("products-store");
    /// const ORDERS: Topic<String, Order> = Topic::new("orders");
    /// const NAMED: Topic<String, String> = Topic::new("orders-named");
    ///
    /// let app = App::new("shop").pipeline("name-orders", |builder| {
    ///     let products = builder.global_table(PRODUCTS, PRODUCTS_STORE);
    ///     builder
    ///         .stream(ORDERS)
    ///         .left_join_global(&products, |_, order| order.product.clone(), |_, order, product| {
    ///             format!("{} x {}", order.amount, product.map_or("?", |p| p.name.as_str()))
    ///         })
    ///         .to(NAMED);
    /// });
    /// assert_eq!(app.global_tables().len(), 1);
    /// ```
    pub fn global_table<K, V>(&self, topic: Topic<K, V>, store: Table<K, V>) -> GlobalKTable<K, V>
    where
        K: Key,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let mut graph = self.graph.borrow_mut();
        if graph.globals.iter().any(|(spec, _)| spec.table.name == store.name()) {
            let error = format!(
                "pipeline `{}` declares global table `{}` twice",
                graph.pipeline,
                store.name()
            );
            graph.errors.push(error);
        }
        if store.spec().ttl.is_some() {
            let error = format!(
                "pipeline `{}`: global table `{}` has a TTL; a global table is a copy of its topic (use the \
                 topic's retention or compaction instead)",
                graph.pipeline,
                store.name()
            );
            graph.errors.push(error);
        }
        if store.is_faust() {
            let error = format!(
                "pipeline `{}` keeps global table `{}`, declared `.faust()`: Faust's encoding is for \
                 tables agents update (a Faust app's tables); declare the store without it",
                graph.pipeline,
                store.name()
            );
            graph.errors.push(error);
        }
        let reader = topic.reader();
        let name = store.name();
        let entry: crate::spec::GlobalEntry = Arc::new(move |key: Option<&[u8]>, value: Option<&[u8]>| {
            let key = K::decode_key(key).map_err(|e| format!("key: {e}"))?;
            if key.is_null() {
                return Err(format!("a record without a key cannot go into global table `{name}`"));
            }
            let key = key
                .key_bytes()
                .map_err(|e| format!("cannot encode a key of global table `{name}`: {e}"))?
                .into_owned();
            let value = match value {
                None => None,
                Some(bytes) => {
                    let value = reader.values.decode(bytes).map_err(|e| e.to_string())?;
                    Some(store.encode(&value).map_err(|e| e.to_string())?)
                }
            };
            Ok((key, value))
        });
        let dead_letter_topic = format!("{}-{}-dlq", graph.app_id, graph.pipeline);
        graph.globals.push((
            GlobalTableSpec {
                table: store.spec(),
                topic: topic.spec(),
                dead_letter_topic,
                on_deserialization_error: crate::task::sink::OnError::DeadLetter,
                entry,
            },
            None,
        ));
        GlobalKTable::new(name)
    }

    /// The records of `topic` as a stream, partitioned by their key.
    pub fn stream<K: Key, V: Send + Sync + 'static>(&self, topic: Topic<K, V>) -> KStream<K, V, Keyed> {
        let mut graph = self.graph.borrow_mut();
        let next = graph.fanout::<K, V>();
        let source = StreamSource {
            reader: topic.reader(),
            next: Arc::clone(&next),
        };
        let group = graph.source(topic.spec(), topic.name().to_string(), Arc::new(source));
        let node = graph.node(
            topic.name(),
            NodeKind::Source {
                topic: topic.name().to_string(),
            },
            Vec::new(),
            group,
        );
        KStream::new(Rc::clone(&self.graph), next, group, node)
    }

    /// The records of `topic` as a table kept in `store`: the latest value of each key (a
    /// record without a value deletes its key). The store's key and value types are the
    /// topic's.
    pub fn table<K, V>(&self, topic: Topic<K, V>, store: Table<K, V>) -> KTable<K, V>
    where
        K: Key,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let reader = topic.reader();
        self.source_table(topic, store, |slot| {
            Arc::new(TableSource {
                reader,
                store,
                slot: slot.clone(),
            })
        })
    }

    /// A table read from `topic` into `store` by the source node `source` makes (given the
    /// store's slot).
    pub(crate) fn source_table<K, V>(
        &self,
        topic: Topic<K, V>,
        store: Table<K, V>,
        source: impl FnOnce(&TableSlot) -> Arc<dyn SourceNode>,
    ) -> KTable<K, V>
    where
        K: Key,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let mut graph = self.graph.borrow_mut();
        let slot = TableSlot::default();
        let group = graph.source(topic.spec(), topic.name().to_string(), source(&slot));
        let source_node = graph.node(
            topic.name(),
            NodeKind::Source {
                topic: topic.name().to_string(),
            },
            Vec::new(),
            group,
        );
        graph.table_at(group, store.spec(), slot.clone());
        let changelog = store.spec().changelog_topic(&graph.app_id);
        let node = graph.node(
            store.name(),
            NodeKind::Table {
                table: store.name().to_string(),
                changelog,
            },
            vec![source_node],
            group,
        );
        KTable::new(Rc::clone(&self.graph), store.name(), slot, group, node)
    }

    /// Finishes the pipeline: freezes its nodes and splits it into sub-topologies, one task
    /// kind each.
    pub(crate) fn build(self) -> Pipeline {
        let mut graph = self.graph.borrow_mut();
        for fanout in &graph.fanouts {
            fanout.freeze();
        }
        // Sub-topologies: the groups that remain after merges, in the order of their first
        // source (so that names and order do not depend on hashing).
        let groups: Vec<usize> = graph.sources.iter().map(|s| s.group).collect();
        let mut roots: Vec<usize> = Vec::new();
        for group in groups {
            let root = graph.find(group);
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
        let subtopology_of = |graph: &mut Graph, group: usize| -> usize {
            let root = graph.find(group);
            roots.iter().position(|r| *r == root).unwrap_or(0)
        };
        let mut subtopologies: Vec<Subtopology> = roots
            .iter()
            .map(|_| Subtopology {
                sources: Vec::new(),
                nodes: Vec::new(),
                sinks: Vec::new(),
                tables: Vec::new(),
                listeners: Vec::new(),
                ticks: Vec::new(),
                display: String::new(),
            })
            .collect();
        for index in 0..graph.sources.len() {
            let group = graph.sources[index].group;
            let sub = subtopology_of(&mut graph, group);
            let entry = &graph.sources[index];
            if subtopologies[sub].display.is_empty() {
                subtopologies[sub].display = entry.display.clone();
            }
            subtopologies[sub]
                .sources
                .push((entry.topic.clone(), Arc::clone(&entry.node)));
        }
        co_partition_repartition_topics(&mut subtopologies);
        for index in 0..graph.sinks.len() {
            let group = graph.sinks[index].0;
            let sub = subtopology_of(&mut graph, group);
            let mut topic = graph.sinks[index].1.clone();
            // Partitioned as its readers' sub-topology decided.
            if let Some((read, _)) = subtopologies
                .iter()
                .flat_map(|s| &s.sources)
                .find(|(read, _)| read.name == topic.name)
            {
                topic.partitions_of = read.partitions_of.clone();
            }
            if !subtopologies[sub]
                .sinks
                .iter()
                .any(|t: &TopicSpec| t.name == topic.name)
            {
                subtopologies[sub].sinks.push(topic);
            }
        }
        for index in 0..graph.tables.len() {
            let group = graph.tables[index].group;
            let sub = subtopology_of(&mut graph, group);
            let entry = &graph.tables[index];
            entry.slot.set(subtopologies[sub].tables.len());
            subtopologies[sub].tables.push(entry.spec.clone());
        }
        for index in 0..graph.listeners.len() {
            let group = graph.listeners[index].0;
            let sub = subtopology_of(&mut graph, group);
            let (_, slot, listener) = &graph.listeners[index];
            subtopologies[sub].listeners.push((slot.clone(), Arc::clone(listener)));
        }
        for index in 0..graph.ticks.len() {
            let group = graph.ticks[index].0;
            let sub = subtopology_of(&mut graph, group);
            let tick = Arc::clone(&graph.ticks[index].1);
            subtopologies[sub].ticks.push(tick);
        }
        let mut nodes: Vec<NodeInfo> = Vec::with_capacity(graph.nodes.len());
        for index in 0..graph.nodes.len() {
            let group = graph.nodes[index].1;
            let sub = subtopology_of(&mut graph, group);
            let mut node = graph.nodes[index].0.clone();
            node.subtopology = sub;
            subtopologies[sub].nodes.push(index);
            nodes.push(node);
        }
        let dead_letter_topic = format!("{}-{}-dlq", graph.app_id, graph.pipeline);
        let tasks = subtopologies
            .iter()
            .map(|sub| {
                let run = run_fn(Arc::new(SubTopology {
                    sources: sub.sources.iter().map(|(_, node)| Arc::clone(node)).collect(),
                    listeners: sub.listeners.clone(),
                    ticks: sub.ticks.clone(),
                }));
                TaskSpec {
                    name: format!("{}/{}", graph.pipeline, sub.display),
                    kind: TaskKind::Pipeline,
                    sources: sub.sources.iter().map(|(topic, _)| topic.clone()).collect(),
                    sends: sub.sinks.clone(),
                    tables: sub.tables.clone(),
                    dead_letter_topic: dead_letter_topic.clone(),
                    on_deserialization_error: crate::task::sink::OnError::DeadLetter,
                    on_processing_error: crate::task::sink::OnError::DeadLetter,
                    run,
                }
            })
            .collect();
        Pipeline {
            name: graph.pipeline.clone(),
            tasks,
            nodes,
            subtopologies: subtopologies.iter().map(|s| s.nodes.clone()).collect(),
            globals: graph.globals.iter().map(|(spec, _)| spec.clone()).collect(),
            errors: graph.errors.clone(),
        }
    }
}

/// A repartition topic read with other topics by one sub-topology (a join, a cogroup) is
/// partitioned like them, as Kafka Streams sizes repartition topics by the topics they are
/// co-partitioned with: like the sub-topology's first topic of its own (one no other topic's
/// count decides). A sub-topology that reads only internal topics keeps their counts.
fn co_partition_repartition_topics(subtopologies: &mut [Subtopology]) {
    for sub in subtopologies.iter_mut() {
        // Only a topic partitioned by itself: pointing at an internal topic could make a
        // loop (a foreign-key join's response topic is partitioned like its table's source).
        let Some(anchor) = sub
            .sources
            .iter()
            .find(|(topic, _)| topic.partitions_of.is_none())
            .map(|(topic, _)| topic.name.clone())
        else {
            continue;
        };
        for (topic, _) in &mut sub.sources {
            if topic.partitions_of.is_some() {
                topic.partitions_of = Some(anchor.clone());
            }
        }
    }
}

struct Subtopology {
    sources: Vec<(TopicSpec, Arc<dyn SourceNode>)>,
    nodes: Vec<usize>,
    sinks: Vec<TopicSpec>,
    tables: Vec<TableSpec>,
    listeners: Vec<(TableSlot, Arc<dyn ChangeListener>)>,
    ticks: Vec<Arc<dyn Tick>>,
    display: String,
}

/// A built pipeline: its sub-topologies as tasks, and its graph.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// The pipeline's name.
    pub name: String,
    /// One task kind per sub-topology.
    pub tasks: Vec<TaskSpec>,
    /// Every node, by id.
    pub nodes: Vec<NodeInfo>,
    /// The nodes of each sub-topology.
    pub subtopologies: Vec<Vec<usize>>,
    /// The global tables it declares.
    pub globals: Vec<GlobalTableSpec>,
    /// What does not fit (a topic read twice, a table kept twice): refused at start.
    pub errors: Vec<String>,
}

/// A topic spec for a repartition topic: internal, partitioned like `like`, JSON values.
pub(crate) fn repartition_spec<K: Key, V: crate::Record>(name: String, like: Option<String>) -> TopicSpec {
    TopicSpec {
        name: Cow::Owned(name),
        partitions: None,
        internal: true,
        partitions_of: like.map(Cow::Owned),
        key_type: std::any::type_name::<K>(),
        value_type: std::any::type_name::<V>(),
        value_format: "json",
        codecs: crate::topic::codecs_of::<K, V>(crate::codec::ValueCodec::record()),
    }
}

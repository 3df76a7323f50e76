//! [`KStream`]: a stream of records in a pipeline, with Kafka Streams' operations.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use super::builder::{repartition_spec, Graph, NodeKind};
use super::grouped::KGroupedStream;
use super::node::{guarded, sink, Cx, Fanout, Node, StreamSource, Tick};
use super::process::{KeyKept, ProcessNode, Processor, ValueProcessor};
use crate::codec::{Key, ValueCodec};
use crate::record::Record;
use crate::topic::Topic;
use crate::topic::TopicReader;

/// Type state of a stream whose records are partitioned by their key: they can be grouped
/// by it (and joined) as they are.
#[derive(Debug, Clone, Copy)]
pub struct Keyed;

/// Type state of a stream whose keys were changed (`map`, `select_key`, `flat_map`): its
/// records are not partitioned by their key any more, so grouping or joining by it goes
/// through a named repartition topic first (`.repartition("name")`, or `group_by`).
#[derive(Debug, Clone, Copy)]
pub struct Rekeyed;

/// A stream of records with keys `K` and values `V` in a pipeline (Kafka Streams'
/// `KStream`). Operations consume the stream and return the next one; a stream used twice is
/// `.clone()`d (its records are then copied, so `K` and `V` must be `Clone`).
///
/// `P` says how the records are partitioned: [`Keyed`] by their key, or [`Rekeyed`] after a
/// key change. The compiler keeps track of it, so that grouping by a changed key without a
/// repartition topic is an error where you write it.
///
/// ```
/// use streams_core::prelude::*;
///
/// #[record]
/// #[derive(Clone)]
/// struct Hit { hits: i64, user: String }
///
/// const HITS: Topic<(), Hit> = Topic::new("hits");
/// const MAJOR: Topic<String, Hit> = Topic::new("major-hits");
///
/// let app = App::new("major").pipeline("route", |builder| {
///     builder
///         .stream(HITS)
///         .filter(|_, hit| hit.hits > 20)
///         .select_key(|_, hit| hit.user.clone())
///         .to(MAJOR);
/// });
/// ```
#[must_use = "a stream does nothing until it ends in `to`, `for_each`, an aggregation, …"]
pub struct KStream<K, V, P = Keyed> {
    pub(crate) graph: Rc<RefCell<Graph>>,
    pub(crate) fanout: Arc<Fanout<K, V>>,
    pub(crate) group: usize,
    pub(crate) node: usize,
    _partitioning: PhantomData<P>,
}

fn copy_pair<K: Clone, V: Clone>(key: &K, value: &V) -> (K, V) {
    (key.clone(), value.clone())
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static, P> Clone for KStream<K, V, P> {
    fn clone(&self) -> Self {
        self.fanout.allow_copies(copy_pair::<K, V>);
        Self {
            graph: Rc::clone(&self.graph),
            fanout: Arc::clone(&self.fanout),
            group: self.group,
            node: self.node,
            _partitioning: PhantomData,
        }
    }
}

impl<K, V, P> KStream<K, V, P>
where
    K: Key,
    V: Send + Sync + 'static,
{
    pub(crate) fn new(graph: Rc<RefCell<Graph>>, fanout: Arc<Fanout<K, V>>, group: usize, node: usize) -> Self {
        Self {
            graph,
            fanout,
            group,
            node,
            _partitioning: PhantomData,
        }
    }

    /// Adds an operation node after this stream: `make` gets the next stream's fanout and
    /// returns the node that feeds it.
    fn then<K2, V2, P2>(
        self,
        op: &str,
        make: impl FnOnce(Arc<Fanout<K2, V2>>) -> Arc<dyn Node<K, V>>,
    ) -> KStream<K2, V2, P2>
    where
        K2: Key,
        V2: Send + Sync + 'static,
    {
        let (next, node) = {
            let mut graph = self.graph.borrow_mut();
            let next = graph.fanout::<K2, V2>();
            let node = graph.node(op, NodeKind::Operation, vec![self.node], self.group);
            (next, node)
        };
        self.fanout.add(make(Arc::clone(&next)));
        KStream::new(self.graph, next, self.group, node)
    }

    /// Names the operation that made this stream (in the topology); operations are named
    /// after what they do otherwise (`filter-3`).
    pub fn named(self, name: &str) -> Self {
        self.graph.borrow_mut().rename(self.node, name);
        self
    }

    /// Keeps the records for which `keep` holds.
    pub fn filter(self, keep: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        self.then("filter", |next| {
            Arc::new(move |cx: &mut Cx<'_>, key: K, value: V| {
                if keep(&key, &value) {
                    next.push(cx, key, value)
                } else {
                    Ok(())
                }
            })
        })
    }

    /// Drops the records for which `drop` holds.
    pub fn filter_not(self, drop: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Self {
        self.then("filter_not", |next| {
            Arc::new(move |cx: &mut Cx<'_>, key: K, value: V| {
                if drop(&key, &value) {
                    Ok(())
                } else {
                    next.push(cx, key, value)
                }
            })
        })
    }

    /// A new key and value for each record. The key changes, so grouping by it needs a
    /// repartition topic.
    pub fn map<K2: Key, V2: Send + Sync + 'static>(
        self,
        f: impl Fn(K, V) -> (K2, V2) + Send + Sync + 'static,
    ) -> KStream<K2, V2, Rekeyed> {
        self.then("map", |next| {
            Arc::new(move |cx: &mut Cx<'_>, key: K, value: V| {
                let (key, value) = f(key, value);
                next.push(cx, key, value)
            })
        })
    }

    /// A new value for each record; the key stays.
    pub fn map_values<V2: Send + Sync + 'static>(
        self,
        f: impl Fn(&K, V) -> V2 + Send + Sync + 'static,
    ) -> KStream<K, V2, P> {
        self.then("map_values", |next| {
            Arc::new(move |cx: &mut Cx<'_>, key: K, value: V| {
                let value = f(&key, value);
                next.push(cx, key, value)
            })
        })
    }

    /// Any number of records for each record, with new keys.
    pub fn flat_map<K2: Key, V2: Send + Sync + 'static, I>(
        self,
        f: impl Fn(K, V) -> I + Send + Sync + 'static,
    ) -> KStream<K2, V2, Rekeyed>
    where
        I: IntoIterator<Item = (K2, V2)>,
    {
        self.then("flat_map", |next| {
            Arc::new(move |cx: &mut Cx<'_>, key: K, value: V| {
                // A record that fails further down does not keep the others from going on.
                let mut outcome = Ok(());
                for (key, value) in f(key, value) {
                    outcome = outcome.and(guarded(|| next.push(cx, key, value)));
                }
                outcome
            })
        })
    }

    /// Any number of values for each record, each with the record's key.
    pub fn flat_map_values<V2: Send + Sync + 'static, I>(
        self,
        f: impl Fn(&K, V) -> I + Send + Sync + 'static,
    ) -> KStream<K, V2, P>
    where
        I: IntoIterator<Item = V2>,
    {
        self.then("flat_map_values", |next| {
            Arc::new(move |cx: &mut Cx<'_>, key: K, value: V| {
                let mut outcome = Ok(());
                for value in f(&key, value) {
                    outcome = outcome.and(guarded(|| next.push(cx, key.clone(), value)));
                }
                outcome
            })
        })
    }

    /// A new key for each record, from its key and value.
    pub fn select_key<K2: Key>(self, f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static) -> KStream<K2, V, Rekeyed> {
        self.then("select_key", |next| {
            Arc::new(move |cx: &mut Cx<'_>, key: K, value: V| {
                let key = f(&key, &value);
                next.push(cx, key, value)
            })
        })
    }

    /// Runs a [`Processor`] on each record (Kafka Streams' `process`): one instance per
    /// task, made by `make`, forwarding any records it likes, with punctuation on stream
    /// time. Its keys may differ from the input's: the stream is re-keyed. `name` names it
    /// in the topology.
    pub fn process<Proc>(
        self,
        name: &str,
        make: impl Fn() -> Proc + Send + Sync + 'static,
    ) -> KStream<Proc::Key, Proc::Value, Rekeyed>
    where
        Proc: Processor<K, V>,
    {
        let group = self.group;
        let graph = Rc::clone(&self.graph);
        let mut tick: Option<Arc<dyn Tick>> = None;
        let stream = self.then("process", |next| {
            let node = Arc::new(ProcessNode::new(make, next));
            tick = Some(Arc::clone(&node) as Arc<dyn Tick>);
            node
        });
        if let Some(tick) = tick {
            graph.borrow_mut().tick(group, tick);
        }
        stream.named(name)
    }

    /// Runs a [`ValueProcessor`](super::ValueProcessor) on each record: one instance per
    /// task, made by `make`, forwarding values under the record's key (or, when it
    /// punctuates, under keys it kept). The keys are the input's, so the stream keeps its
    /// partitioning (Kafka Streams' `processValues`). `name` names it in the topology.
    pub fn process_values<Proc>(
        self,
        name: &str,
        make: impl Fn() -> Proc + Send + Sync + 'static,
    ) -> KStream<K, Proc::Value, P>
    where
        Proc: ValueProcessor<K, V>,
    {
        let group = self.group;
        let graph = Rc::clone(&self.graph);
        let mut tick: Option<Arc<dyn Tick>> = None;
        let stream = self.then("process_values", |next| {
            let node = Arc::new(ProcessNode::new(
                move || KeyKept(make(), std::marker::PhantomData),
                next,
            ));
            tick = Some(Arc::clone(&node) as Arc<dyn Tick>);
            node
        });
        if let Some(tick) = tick {
            graph.borrow_mut().tick(group, tick);
        }
        stream.named(name)
    }

    /// Looks at each record as it passes.
    pub fn peek(self, f: impl Fn(&K, &V) + Send + Sync + 'static) -> Self {
        self.then("peek", |next| {
            Arc::new(move |cx: &mut Cx<'_>, key: K, value: V| {
                f(&key, &value);
                next.push(cx, key, value)
            })
        })
    }

    /// Does something with each record; the stream ends here.
    pub fn for_each(self, f: impl Fn(K, V) + Send + Sync + 'static) {
        let _: KStream<K, V, P> = self.then("for_each", |_next| {
            Arc::new(move |_: &mut Cx<'_>, key: K, value: V| {
                f(key, value);
                Ok(())
            })
        });
    }

    /// The records of both streams, as they come.
    pub fn merge(self, other: KStream<K, V, P>) -> KStream<K, V, P> {
        let (next, node, group) = {
            let mut graph = self.graph.borrow_mut();
            let group = graph.union(self.group, other.group);
            let next = graph.fanout::<K, V>();
            let node = graph.node("merge", NodeKind::Operation, vec![self.node, other.node], group);
            (next, node, group)
        };
        for fanout in [&self.fanout, &other.fanout] {
            let next = Arc::clone(&next);
            fanout.add(Arc::new(move |cx: &mut Cx<'_>, key: K, value: V| {
                next.push(cx, key, value)
            }));
        }
        KStream::new(self.graph, next, group, node)
    }

    /// Splits the stream into named branches: each record goes to the first branch whose
    /// predicate holds (or to the default branch).
    ///
    /// ```
    /// # use streams_core::prelude::*;
    /// # const AMOUNTS: Topic<String, i64> = Topic::new("amounts");
    /// # const BIG: Topic<String, i64> = Topic::new("big");
    /// # const SMALL: Topic<String, i64> = Topic::new("small");
    /// App::new("sorter").pipeline("sort", |builder| {
    ///     builder
    ///         .stream(AMOUNTS)
    ///         .split("size")
    ///         .branch("big", |_, amount| *amount >= 1000, |big| big.to(BIG))
    ///         .default_branch("small", |small| small.to(SMALL));
    /// });
    /// ```
    pub fn split(self, name: &str) -> BranchedKStream<K, V, P> {
        BranchedKStream {
            stream: Some(self),
            name: name.to_string(),
            branches: Vec::new(),
            default: None,
        }
    }

    /// Sends every record to `topic`, whose key and value types must be the stream's.
    pub fn to(self, topic: Topic<K, V>) {
        self.graph.borrow_mut().sink_node(self.group, topic.spec(), self.node);
        self.fanout
            .add(sink::<K, V>(Arc::from(topic.name()), topic.value_codec()));
    }
}

impl<K, V, P> KStream<K, V, P>
where
    K: Key,
    V: Record,
{
    /// Sends the records through the repartition topic `{app}-{name}-repartition`, so that
    /// they are partitioned by their (new) key; the stream goes on from there, in another
    /// sub-topology. The name is required: it names the topic, which must not change when the
    /// pipeline does (Kafka Streams made it mandatory in KIP-1111).
    pub fn repartition(self, name: &str) -> KStream<K, V, Keyed> {
        let (topic, like) = {
            let mut graph = self.graph.borrow_mut();
            (graph.repartition_topic(name), graph.first_source(self.group))
        };
        let spec = repartition_spec::<K, V>(topic.clone(), like);
        let graph = Rc::clone(&self.graph);
        let (next, group, node) = {
            let mut g = graph.borrow_mut();
            g.sink(self.group, spec.clone());
            let sink_node = g.node(
                &topic,
                NodeKind::Sink { topic: topic.clone() },
                vec![self.node],
                self.group,
            );
            let next = g.fanout::<K, V>();
            // Records carry their event time as their timestamp: no extractor here.
            let source = StreamSource {
                reader: TopicReader {
                    values: ValueCodec::<V>::record(),
                    event_time: None,
                },
                next: Arc::clone(&next),
            };
            let group = g.source(spec, name.to_string(), Arc::new(source));
            let node = g.node(
                &topic,
                NodeKind::Source { topic: topic.clone() },
                vec![sink_node],
                group,
            );
            (next, group, node)
        };
        self.fanout
            .add(sink::<K, V>(Arc::from(topic.as_str()), ValueCodec::<V>::record()));
        KStream::new(graph, next, group, node)
    }

    /// Groups the records by a key taken from each record, through the repartition topic
    /// `{app}-{name}-repartition` (see [`KStream::repartition`]).
    pub fn group_by<K2: Key>(
        self,
        name: &str,
        key: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
    ) -> KGroupedStream<K2, V> {
        self.select_key(key).repartition(name).group_by_key()
    }
}

/// How a stream is partitioned: [`Keyed`] streams are partitioned by their key.
#[diagnostic::on_unimplemented(
    message = "this stream's key was changed, so its records are not partitioned by it",
    label = "needs records partitioned by their key",
    note = "send them through a named repartition topic first, `.repartition(\"name\")`, then group or join \
            them; or group them with `.group_by(\"name\", |key, value| ...)`"
)]
pub trait PartitionedByKey {}

impl PartitionedByKey for Keyed {}

impl<K, V, P> KStream<K, V, P>
where
    K: Key,
    V: Send + Sync + 'static,
{
    /// Groups the records by their key, as they are partitioned (no repartition topic):
    /// only for a stream whose key was not changed.
    pub fn group_by_key(self) -> KGroupedStream<K, V>
    where
        P: PartitionedByKey,
    {
        KGroupedStream::new(self.graph, self.fanout, self.group, self.node)
    }
}

type Predicate<K, V> = Arc<dyn Fn(&K, &V) -> bool + Send + Sync>;
type Branch<K, V> = (Predicate<K, V>, Arc<Fanout<K, V>>);

/// A stream being split into branches (see [`KStream::split`]). The branches take effect
/// when it ends (`default_branch`, `no_default_branch`, or going out of scope).
#[must_use = "a split takes effect with `default_branch` or `no_default_branch`"]
pub struct BranchedKStream<K: Key, V: Send + Sync + 'static, P> {
    stream: Option<KStream<K, V, P>>,
    name: String,
    branches: Vec<Branch<K, V>>,
    default: Option<Arc<Fanout<K, V>>>,
}

impl<K: Key, V: Send + Sync + 'static, P> BranchedKStream<K, V, P> {
    /// The branch `name` (shown as `{split}-{name}`): records for which `when` holds, handed
    /// to `then` as a stream.
    pub fn branch(
        mut self,
        name: &str,
        when: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
        then: impl FnOnce(KStream<K, V, P>),
    ) -> Self {
        let Some(branch) = self.branch_stream(name) else {
            return self;
        };
        self.branches.push((Arc::new(when), Arc::clone(&branch.fanout)));
        then(branch);
        self
    }

    /// The records no branch took, handed to `then` as a stream; the split ends here.
    pub fn default_branch(mut self, name: &str, then: impl FnOnce(KStream<K, V, P>)) {
        if let Some(branch) = self.branch_stream(name) {
            self.default = Some(Arc::clone(&branch.fanout));
            then(branch);
        }
    }

    /// The records no branch took are dropped; the split ends here.
    pub fn no_default_branch(self) {}

    fn branch_stream(&mut self, name: &str) -> Option<KStream<K, V, P>> {
        let stream = self.stream.as_ref()?;
        let mut graph = stream.graph.borrow_mut();
        let next = graph.fanout::<K, V>();
        let node = graph.node(
            &format!("{}-{name}", self.name),
            NodeKind::Operation,
            vec![stream.node],
            stream.group,
        );
        graph.rename(node, &format!("{}-{name}", self.name));
        Some(KStream::new(Rc::clone(&stream.graph), next, stream.group, node))
    }
}

impl<K: Key, V: Send + Sync + 'static, P> Drop for BranchedKStream<K, V, P> {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else { return };
        let branches = std::mem::take(&mut self.branches);
        let default = self.default.take();
        stream.fanout.add(Arc::new(move |cx: &mut Cx<'_>, key: K, value: V| {
            for (when, branch) in &branches {
                if when(&key, &value) {
                    return branch.push(cx, key, value);
                }
            }
            match &default {
                Some(branch) => branch.push(cx, key, value),
                None => Ok(()),
            }
        }));
    }
}

//! Foreign-key table–table joins (Kafka Streams' KIP-213): each row of the left table joins
//! the row of the right table whose key its value names. The two tables need not be
//! co-partitioned: the join goes through two internal topics, as in Kafka Streams.
//!
//! - The left table's task sends, for each changed row, a *subscription* to
//!   `{app}-{name}-subscription-registration-topic`, keyed (and so partitioned) by the
//!   foreign key, like the right table: "row `k`, whose value hashes to `h`, wants `fk`". A row
//!   whose foreign key moved, or that was deleted, first unsubscribes from the old one. The
//!   task keeps each row's subscribed foreign key in `{name}-subscription-fk-store`.
//! - The right table's task keeps the subscriptions by foreign key in
//!   `{name}-subscription-store` and answers each with a *response* to
//!   `{app}-{name}-subscription-response-topic`, keyed by the row's key, on the partition the
//!   subscription came from (so the left table's topic may be written with any partitioner that keeps each key on
//!   one partition):
//!   "for the row whose value hashed to `h`, `fk`'s row is `vo`". A change of a right row
//!   answers every row subscribed to it. The right table's topic must be partitioned by
//!   Kafka's default partitioner (murmur2 of the key), as Kafka Streams also requires.
//! - The left table's task takes a response only if the row still hashes to `h` (an older
//!   response is dropped: a newer one is on its way), and writes the joined row, or its
//!   deletion, to the result table.
//!
//! A deleted left row deletes its result without a round trip (at the next commit point). So the result table always converges to
//! the join of the latest rows of both tables.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::builder::NodeKind;
use super::grouped::{read_value, write_value};
use super::join::unreachable_row;
use super::node::{observe_time, send, ChangeListener, Cx, Outcome, SourceNode, TableSlot};
use super::table::KTable;
use crate::codec::{json, Key, ValueCodec};
use crate::message::Message;
use crate::spec::{KeyDisplay, TableSpec, TopicSpec};
use crate::table::Table;
use crate::task::sink::OutRecord;

type ForeignKey<V, KO> = dyn Fn(&V) -> Option<KO> + Send + Sync;
type ForeignJoiner<K, V, VO, VR> = dyn Fn(&K, &V, Option<&VO>) -> VR + Send + Sync;

/// A subscription's instruction.
const SUBSCRIBE: u8 = 1;
const UNSUBSCRIBE: u8 = 2;
/// The first byte of every internal record of the join: its format's version.
const FORMAT: u8 = 1;

/// FNV-1a (64 bits) of a left row's stored value: what a subscription and its response
/// carry, so that the left side can tell a response to its row's current value from an
/// older one. Fixed, so that it survives restarts and upgrades.
fn row_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A subscription: instruction, hash, the partition of the left row (its response goes
/// there, whatever partitioner wrote the left table's topic), the left row's key.
fn subscription(op: u8, hash: u64, partition: i32, key: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(14 + key.len());
    bytes.push(FORMAT);
    bytes.push(op);
    bytes.extend_from_slice(&hash.to_be_bytes());
    bytes.extend_from_slice(&partition.to_be_bytes());
    bytes.extend_from_slice(key);
    bytes
}

/// A subscription's parts: instruction, hash, partition, key.
type Subscription<'a> = (u8, u64, i32, &'a [u8]);

fn read_subscription(bytes: &[u8]) -> Result<Subscription<'_>, String> {
    match bytes {
        [FORMAT, op, rest @ ..] if rest.len() >= 12 => {
            let (hash, rest) = rest.split_at(8);
            let (partition, key) = rest.split_at(4);
            let hash = u64::from_be_bytes(hash.try_into().map_err(|_| "a short subscription")?);
            let partition = i32::from_be_bytes(partition.try_into().map_err(|_| "a short subscription")?);
            Ok((*op, hash, partition, key))
        }
        _ => Err("not a subscription of this version".into()),
    }
}

/// A response: hash, then the right row's value (none: no row).
fn response(hash: u64, value: Option<&[u8]>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(10 + value.map_or(0, <[u8]>::len));
    bytes.push(FORMAT);
    bytes.extend_from_slice(&hash.to_be_bytes());
    if let Some(value) = value {
        bytes.push(1);
        bytes.extend_from_slice(value);
    } else {
        bytes.push(0);
    }
    bytes
}

fn read_response(bytes: &[u8]) -> Result<(u64, Option<&[u8]>), String> {
    match bytes {
        [FORMAT, rest @ ..] if rest.len() >= 9 => {
            let (hash, rest) = rest.split_at(8);
            let hash = u64::from_be_bytes(hash.try_into().map_err(|_| "a short response")?);
            match rest {
                [0] => Ok((hash, None)),
                [1, value @ ..] => Ok((hash, Some(value))),
                _ => Err("a response with a bad value flag".into()),
            }
        }
        _ => Err("not a response of this version".into()),
    }
}

/// A subscription's key in the right side's store: the foreign key's length (u32,
/// big-endian), the foreign key, the left row's key. The rows subscribed to one foreign key
/// are a range.
fn subscription_key(foreign: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4 + foreign.len() + key.len());
    bytes.extend_from_slice(&(foreign.len() as u32).to_be_bytes());
    bytes.extend_from_slice(foreign);
    bytes.extend_from_slice(key);
    bytes
}

/// The first key after every key starting with `prefix` (`None`: none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn failed(error: impl std::fmt::Display) -> String {
    error.to_string()
}

/// What both sides of a foreign-key join share.
struct ForeignJoin<K, V, KO, VO, VR> {
    name: String,
    /// Left join: a row without a right row (or without a foreign key) joins `None`.
    left: bool,
    this: (&'static str, TableSlot),
    other: (&'static str, TableSlot),
    /// Left side: each row's subscribed foreign key.
    subscribed: (&'static str, TableSlot),
    /// Right side: the subscriptions, by foreign key.
    subscriptions: (&'static str, TableSlot),
    result: (&'static str, TableSlot),
    registration_topic: Arc<str>,
    response_topic: Arc<str>,
    foreign_key: Box<ForeignKey<V, KO>>,
    joiner: Box<ForeignJoiner<K, V, VO, VR>>,
}

impl<K, V, KO, VO, VR> ForeignJoin<K, V, KO, VO, VR>
where
    K: Key,
    V: DeserializeOwned + Send + Sync + 'static,
    KO: Key,
    VO: DeserializeOwned + Send + Sync + 'static,
    VR: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Sends an internal record: to `partition`, or by its key's partition (`None`).
    fn send(&self, cx: &mut Cx<'_>, topic: &Arc<str>, partition: Option<i32>, key: Vec<u8>, value: Vec<u8>) -> Outcome {
        send(
            cx,
            OutRecord {
                topic: Arc::clone(topic),
                partition,
                key: Some(key),
                value: Some(value),
                headers: Default::default(),
                timestamp: Some(cx.timestamp),
                changelog: false,
            },
        )
    }

    /// Writes `key`'s result row, or deletes it (`None`), unless it is so already.
    fn put_result(&self, cx: &mut Cx<'_>, key: &[u8], value: Option<VR>) -> Outcome {
        let index = self.result.1.get()?;
        let stored = match value {
            Some(value) => {
                let mut stored = None;
                write_value(&mut stored, &value, self.result.0).map_err(failed)?;
                stored
            }
            None => None,
        };
        if cx.ctx.get_now(index, key).map_err(failed)? != stored {
            cx.ctx.put_at(index, key.to_vec(), stored).map_err(failed)?;
        }
        Ok(())
    }

    /// The joined row of `key` for its left value and `other` (the right row, or none).
    fn joined(&self, key: &[u8], value: &V, other: Option<&VO>) -> Result<Option<VR>, String> {
        if other.is_none() && !self.left {
            return Ok(None);
        }
        let key = K::decode_key(Some(key)).map_err(|e| format!("a key of table `{}`: {e}", self.this.0))?;
        let mut out = None;
        super::node::guarded(|| {
            out = Some((self.joiner)(&key, value, other));
            Ok(())
        })?;
        Ok(out)
    }

    /// A left row changed (`stored`: its new value; `None`: deleted).
    fn left_changed(&self, cx: &mut Cx<'_>, key: &[u8], stored: Option<&[u8]>) -> Outcome {
        let subscribed_index = self.subscribed.1.get()?;
        let before = cx.ctx.get_now(subscribed_index, key).map_err(failed)?;
        let value: Option<V> = read_value(stored, self.this.0).map_err(failed)?;
        let foreign = match &value {
            Some(value) => {
                let mut out = None;
                super::node::guarded(|| {
                    out = Some((self.foreign_key)(value));
                    Ok(())
                })?;
                match out.flatten() {
                    Some(foreign) if !foreign.is_null() => Some(
                        foreign
                            .key_bytes()
                            .map_err(|e| format!("join `{}`: cannot encode a foreign key: {e}", self.name))?
                            .into_owned(),
                    ),
                    _ => None,
                }
            }
            None => None,
        };
        if let Some(old) = &before {
            if foreign.as_ref() != Some(old) {
                let partition = cx.ctx.partition;
                let unsubscribe = subscription(UNSUBSCRIBE, 0, partition, key);
                self.send(cx, &self.registration_topic.clone(), None, old.clone(), unsubscribe)?;
            }
        }
        if before != foreign {
            cx.ctx
                .put_at(subscribed_index, key.to_vec(), foreign.clone())
                .map_err(failed)?;
        }
        match (value, foreign, stored) {
            // Deleted: so is the result, without a round trip.
            (None, _, _) | (_, _, None) => self.put_result(cx, key, None),
            // No foreign key: a left join's row joins nothing.
            (Some(value), None, _) => {
                let joined = self.joined(key, &value, None)?;
                self.put_result(cx, key, joined)
            }
            (Some(_), Some(foreign), Some(stored)) => {
                let subscribe = subscription(SUBSCRIBE, row_hash(stored), cx.ctx.partition, key);
                self.send(cx, &self.registration_topic.clone(), None, foreign, subscribe)
            }
        }
    }

    /// A subscription reached the right side.
    fn subscription(&self, cx: &mut Cx<'_>, foreign: &[u8], bytes: &[u8]) -> Outcome {
        let (op, hash, partition, key) = read_subscription(bytes).map_err(|e| format!("join `{}`: {e}", self.name))?;
        let index = self.subscriptions.1.get()?;
        let stored_key = subscription_key(foreign, key);
        match op {
            UNSUBSCRIBE => cx.ctx.put_at(index, stored_key, None).map_err(failed),
            SUBSCRIBE => {
                // The subscription keeps the hash and where to answer.
                let mut stored = hash.to_be_bytes().to_vec();
                stored.extend_from_slice(&partition.to_be_bytes());
                cx.ctx.put_at(index, stored_key, Some(stored)).map_err(failed)?;
                let row = cx.ctx.get_now(self.other.1.get()?, foreign).map_err(failed)?;
                let answer = response(hash, row.as_deref());
                self.send(cx, &self.response_topic.clone(), Some(partition), key.to_vec(), answer)
            }
            other => Err(format!("join `{}`: a subscription with instruction {other}", self.name)),
        }
    }

    /// A right row changed: every row subscribed to it hears of it.
    fn right_changed(&self, cx: &mut Cx<'_>, foreign: &[u8], value: Option<&[u8]>) -> Outcome {
        let index = self.subscriptions.1.get()?;
        let mut prefix = (foreign.len() as u32).to_be_bytes().to_vec();
        prefix.extend_from_slice(foreign);
        let end = prefix_end(&prefix);
        // Not cut short at a revocation: this may be the task's last commit.
        let scan = || cx.ctx.scan_in_task(index, &prefix, end.as_deref());
        let subscribers = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(scan),
            _ => scan(),
        }
        .map_err(failed)?;
        for (stored_key, stored) in subscribers {
            let Some(key) = stored_key.strip_prefix(prefix.as_slice()) else {
                continue;
            };
            let (Some(hash), Some(partition)) = (stored.first_chunk::<8>(), stored.get(8..12)) else {
                continue;
            };
            let hash = u64::from_be_bytes(*hash);
            let partition = partition.try_into().map(i32::from_be_bytes).ok();
            self.send(
                cx,
                &self.response_topic.clone(),
                partition,
                key.to_vec(),
                response(hash, value),
            )?;
        }
        Ok(())
    }

    /// A response reached the left side.
    fn response(&self, cx: &mut Cx<'_>, key: &[u8], bytes: &[u8]) -> Outcome {
        let (hash, other) = read_response(bytes).map_err(|e| format!("join `{}`: {e}", self.name))?;
        let stored = cx.ctx.get_now(self.this.1.get()?, key).map_err(failed)?;
        let Some(stored) = stored else {
            // The row is gone, and its result with it.
            return Ok(());
        };
        if row_hash(&stored) != hash {
            // An answer to an older value of the row: the answer to its current one follows.
            return Ok(());
        }
        let value: V = json::decode(&stored).map_err(|e| format!("a value of table `{}`: {e}", self.this.0))?;
        let other: Option<VO> = match other {
            Some(bytes) => Some(json::decode(bytes).map_err(|e| format!("a value of table `{}`: {e}", self.other.0))?),
            None => None,
        };
        let joined = self.joined(key, &value, other.as_ref())?;
        self.put_result(cx, key, joined)
    }
}

/// The left table's changes: (un)subscriptions.
struct LeftSide<K, V, KO, VO, VR>(Arc<ForeignJoin<K, V, KO, VO, VR>>);

impl<K, V, KO, VO, VR> ChangeListener for LeftSide<K, V, KO, VO, VR>
where
    K: Key,
    V: DeserializeOwned + Send + Sync + 'static,
    KO: Key,
    VO: DeserializeOwned + Send + Sync + 'static,
    VR: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn change(&self, cx: &mut Cx<'_>, key: &[u8], value: Option<&[u8]>) -> Outcome {
        self.0.left_changed(cx, key, value)
    }
}

/// The right table's changes: responses to the rows subscribed to them.
struct RightSide<K, V, KO, VO, VR>(Arc<ForeignJoin<K, V, KO, VO, VR>>);

impl<K, V, KO, VO, VR> ChangeListener for RightSide<K, V, KO, VO, VR>
where
    K: Key,
    V: DeserializeOwned + Send + Sync + 'static,
    KO: Key,
    VO: DeserializeOwned + Send + Sync + 'static,
    VR: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn change(&self, cx: &mut Cx<'_>, key: &[u8], value: Option<&[u8]>) -> Outcome {
        self.0.right_changed(cx, key, value)
    }
}

/// The registration topic, read by the right table's task.
struct Subscriptions<K, V, KO, VO, VR>(Arc<ForeignJoin<K, V, KO, VO, VR>>);

impl<K, V, KO, VO, VR> SourceNode for Subscriptions<K, V, KO, VO, VR>
where
    K: Key,
    V: DeserializeOwned + Send + Sync + 'static,
    KO: Key,
    VO: DeserializeOwned + Send + Sync + 'static,
    VR: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn push_message(&self, cx: &mut Cx<'_>, message: &Message) -> Outcome {
        observe_time(cx, message.timestamp());
        let (Some(foreign), Some(bytes)) = (message.key(), message.payload()) else {
            return Err(format!(
                "join `{}`: a subscription without a key or a value",
                self.0.name
            ));
        };
        cx.decoded = true;
        self.0.subscription(cx, foreign, bytes)
    }
}

/// The response topic, read by the left table's task.
struct Responses<K, V, KO, VO, VR>(Arc<ForeignJoin<K, V, KO, VO, VR>>);

impl<K, V, KO, VO, VR> SourceNode for Responses<K, V, KO, VO, VR>
where
    K: Key,
    V: DeserializeOwned + Send + Sync + 'static,
    KO: Key,
    VO: DeserializeOwned + Send + Sync + 'static,
    VR: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn push_message(&self, cx: &mut Cx<'_>, message: &Message) -> Outcome {
        observe_time(cx, message.timestamp());
        let (Some(key), Some(bytes)) = (message.key(), message.payload()) else {
            return Err(format!("join `{}`: a response without a key or a value", self.0.name));
        };
        cx.decoded = true;
        self.0.response(cx, key, bytes)
    }
}

/// An internal topic of the join: keys of type `KX`, values of the join's own format,
/// partitioned like `like`.
fn internal_topic<KX: Key>(name: String, like: Option<String>, what: &'static str) -> TopicSpec {
    TopicSpec {
        name: std::borrow::Cow::Owned(name),
        partitions: None,
        internal: true,
        partitions_of: like.map(std::borrow::Cow::Owned),
        key_type: std::any::type_name::<KX>(),
        value_type: what,
        value_format: "bytes",
        codecs: crate::topic::codecs_of::<KX, Vec<u8>>(ValueCodec::bytes()),
    }
}

/// A subscription store's key, readable: the foreign key, then the row's key.
fn show_subscription(bytes: &[u8]) -> String {
    let Some((length, rest)) = bytes.split_first_chunk::<4>() else {
        return String::from_utf8_lossy(bytes).into_owned();
    };
    let length = u32::from_be_bytes(*length) as usize;
    match (rest.get(..length), rest.get(length..)) {
        (Some(foreign), Some(key)) => format!("{}/{}", String::from_utf8_lossy(foreign), String::from_utf8_lossy(key)),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// An internal table of the join (`{name}-{what}`).
fn internal_table<KX: Key>(name: &str, what: &str, show_key: fn(&[u8]) -> String) -> (&'static str, TableSpec) {
    let table: &'static str = Box::leak(format!("{name}-{what}").into_boxed_str());
    let spec = TableSpec {
        name: table,
        key_type: std::any::type_name::<KX>(),
        value_type: "bytes",
        show_key: KeyDisplay(show_key),
        faust: false,
        windowed: false,
        lookup: None,
        keeps_time: false,
        ttl: None,
    };
    (table, spec)
}

impl<K, V> KTable<K, V>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    #[allow(clippy::too_many_arguments)]
    fn join_by_foreign_key<KO, VO, VR>(
        &self,
        op: &str,
        left: bool,
        other: &KTable<KO, VO>,
        name: &str,
        foreign_key: Box<ForeignKey<V, KO>>,
        store: Table<K, VR>,
        joiner: Box<ForeignJoiner<K, V, VO, VR>>,
    ) -> KTable<K, VR>
    where
        KO: Key,
        VO: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let graph = std::rc::Rc::clone(&self.graph);
        let mut g = graph.borrow_mut();
        self.check_joinable(&mut g, op);
        other.check_joinable(&mut g, op);
        if !super::builder::valid_name(name) {
            let error = format!(
                "pipeline `{}`: the foreign-key join's name `{name}` names its topics and stores: use letters, \
                 digits, `.`, `_` and `-`",
                g.pipeline
            );
            g.errors.push(error);
        }
        let registration = format!("{}-{name}-subscription-registration-topic", g.app_id);
        let response = format!("{}-{name}-subscription-response-topic", g.app_id);
        let like_this = g.first_source(self.group);
        let like_other = g.first_source(other.group);
        let registration_spec = internal_topic::<KO>(registration.clone(), like_other, "subscription");
        let response_spec = internal_topic::<K>(response.clone(), like_this, "subscription response");
        let (subscribed, subscribed_spec) = internal_table::<K>(name, "subscription-fk-store", K::display_key);
        let (subscriptions, subscriptions_spec) = internal_table::<KO>(name, "subscription-store", show_subscription);
        let subscribed_slot = g.table(self.group, subscribed_spec);
        let subscriptions_slot = g.table(other.group, subscriptions_spec);
        let result_slot = g.table(self.group, store.spec());
        let join = Arc::new(ForeignJoin {
            name: name.to_string(),
            left,
            this: (self.name, self.slot.clone()),
            other: (other.name, other.slot.clone()),
            subscribed: (subscribed, subscribed_slot),
            subscriptions: (subscriptions, subscriptions_slot),
            result: (store.name(), result_slot.clone()),
            registration_topic: Arc::from(registration.as_str()),
            response_topic: Arc::from(response.as_str()),
            foreign_key,
            joiner,
        });
        // The left table's task: subscribes its rows.
        g.listen(self.group, self.slot.clone(), Arc::new(LeftSide(Arc::clone(&join))));
        let join_node = g.node(op, NodeKind::Operation, vec![self.node], self.group);
        g.rename(join_node, name);
        let registration_sink = g.sink_node(self.group, registration_spec.clone(), join_node);
        // The right table's task: keeps the subscriptions, answers them and its changes.
        let registrations = g.source(
            registration_spec,
            registration.clone(),
            Arc::new(Subscriptions(Arc::clone(&join))),
        );
        let other_group = g.union(other.group, registrations);
        let registration_source = g.node(
            &registration,
            NodeKind::Source {
                topic: registration.clone(),
            },
            vec![registration_sink],
            other_group,
        );
        g.listen(other_group, other.slot.clone(), Arc::new(RightSide(Arc::clone(&join))));
        let subscriptions_changelog = format!("{}-{subscriptions}-changelog", g.app_id);
        let subscriptions_node = g.node(
            subscriptions,
            NodeKind::Table {
                table: subscriptions.to_string(),
                changelog: subscriptions_changelog,
            },
            vec![registration_source, other.node],
            other_group,
        );
        let response_sink = g.sink_node(other_group, response_spec.clone(), subscriptions_node);
        // The left table's task again: resolves the responses into the result.
        let responses = g.source(response_spec, response.clone(), Arc::new(Responses(join)));
        let this_group = g.union(self.group, responses);
        let response_source = g.node(
            &response,
            NodeKind::Source {
                topic: response.clone(),
            },
            vec![response_sink],
            this_group,
        );
        let changelog = store.spec().changelog_topic(&g.app_id);
        let result_node = g.node(
            store.name(),
            NodeKind::Table {
                table: store.name().to_string(),
                changelog,
            },
            vec![join_node, response_source],
            this_group,
        );
        drop(g);
        KTable::new(graph, store.name(), result_slot, this_group, result_node)
    }

    /// Joins each row of this table with the row of `other` whose key `foreign_key` takes
    /// from the row's value (Kafka Streams' foreign-key join, KIP-213): the result is a
    /// table keyed like this one, kept in `store`, with `joiner(key, value, other_value)`
    /// for each row whose foreign key `other` holds. A change on either side updates
    /// exactly the rows it affects: a row whose foreign key moves joins its new row (or, in
    /// an inner join, loses its result if there is none); a deleted row of `other` deletes
    /// the results of the rows that named it; a deleted row deletes its result without a round trip (at the next commit point).
    ///
    /// The tables need not be co-partitioned: the join goes through two internal topics,
    /// `{app}-{name}-subscription-registration-topic` (partitioned like `other`) and
    /// `{app}-{name}-subscription-response-topic` (partitioned like this table), and keeps
    /// `{name}-subscription-fk-store` beside this table and `{name}-subscription-store` beside
    /// `other` (KIP-1111: you name them). The foreign key's type is `other`'s key type: a
    /// `foreign_key` that takes another type does not compile.
    ///
    /// ```
    /// use streams_core::prelude::*;
    ///
    /// #[record]
    /// #[derive(Clone, Default)]
    /// struct Order { customer_id: String, amount: i64 }
    /// #[record]
    /// #[derive(Clone, Default)]
    /// struct Customer { name: String }
    ///
    /// const ORDERS: Topic<String, Order> = Topic::new("orders");
    /// const CUSTOMERS: Topic<String, Customer> = Topic::new("customers");
    /// const ORDERS_STORE: Table<String, Order> = Table::new("orders-store");
    /// const CUSTOMERS_STORE: Table<String, Customer> = Table::new("customers-store");
    /// const NAMED: Table<String, String> = Table::new("orders-named");
    ///
    /// let app = App::new("shop").pipeline("name-orders", |builder| {
    ///     let orders = builder.table(ORDERS, ORDERS_STORE);
    ///     let customers = builder.table(CUSTOMERS, CUSTOMERS_STORE);
    ///     orders.join_foreign(
    ///         &customers,
    ///         "order-customer",
    ///         |order| Some(order.customer_id.clone()),
    ///         NAMED,
    ///         |_, order, customer| format!("{} for {}", order.amount, customer.name),
    ///     );
    /// });
    /// assert_eq!(app.tasks().len(), 2, "the orders' task and the customers'");
    /// ```
    pub fn join_foreign<KO, VO, VR>(
        &self,
        other: &KTable<KO, VO>,
        name: &str,
        foreign_key: impl Fn(&V) -> Option<KO> + Send + Sync + 'static,
        store: Table<K, VR>,
        joiner: impl Fn(&K, &V, &VO) -> VR + Send + Sync + 'static,
    ) -> KTable<K, VR>
    where
        KO: Key,
        VO: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.join_by_foreign_key(
            "join_foreign",
            false,
            other,
            name,
            Box::new(foreign_key),
            store,
            Box::new(move |key, value, other| match other {
                Some(other) => joiner(key, value, other),
                // Only called with a row of `other` in an inner join.
                None => unreachable_row(),
            }),
        )
    }

    /// Like [`KTable::join_foreign`], for every row of this table: `joiner(key, value,
    /// other_value)` with `None` where `other` has no row for the foreign key, or the row
    /// has no foreign key (Kafka Streams' foreign-key `leftJoin`).
    pub fn left_join_foreign<KO, VO, VR>(
        &self,
        other: &KTable<KO, VO>,
        name: &str,
        foreign_key: impl Fn(&V) -> Option<KO> + Send + Sync + 'static,
        store: Table<K, VR>,
        joiner: impl Fn(&K, &V, Option<&VO>) -> VR + Send + Sync + 'static,
    ) -> KTable<K, VR>
    where
        KO: Key,
        VO: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.join_by_foreign_key(
            "left_join_foreign",
            true,
            other,
            name,
            Box::new(foreign_key),
            store,
            Box::new(joiner),
        )
    }
}

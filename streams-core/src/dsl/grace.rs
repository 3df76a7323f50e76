//! Stream–table joins with a grace period (Kafka Streams' KIP-923): stream records wait in
//! a buffer until the join's stream time is the grace period past them, so that table
//! updates arriving late (out of order) are in the versioned table when they are joined,
//! each at its own time.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use std::collections::BTreeMap;

use super::builder::{valid_name, NodeKind};
use super::join::{forward_joined, row_at, StreamTableJoiner};
use super::node::{at_time, change_failed_in, guarded, Cx, Fanout, Node, Outcome, TableSlot};
use super::same_key::SameKey;
use super::stream::{KStream, Keyed, PartitionedByKey};
use super::versioned::{VersionedKTable, Versions};
use crate::codec::{json, Key};
use crate::spec::{KeyDisplay, TableSpec};
use crate::store::StateStore;

/// The records a grace join holds, in the order they go on: by time, then key bytes, then
/// arrival (Kafka Streams' time-ordered buffer keys them by time, key and a sequence
/// number). In their table each is keyed by its time and arrival number (8 bytes each,
/// big-endian), then its key's bytes; its value is the record's, as JSON.
#[derive(Default)]
struct Waiting {
    records: BTreeMap<Place, Box<[u8]>>,
    next: u64,
}

/// Where a held record stands in the order: time, key bytes, arrival.
type Place = (i64, Box<[u8]>, u64);

fn waiting_key(time: i64, arrival: u64, key: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16 + key.len());
    bytes.extend_from_slice(&time.to_be_bytes());
    bytes.extend_from_slice(&arrival.to_be_bytes());
    bytes.extend_from_slice(key);
    bytes
}

fn split_waiting_key(bytes: &[u8]) -> Option<(i64, u64, &[u8])> {
    let time = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let arrival = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((time, arrival, bytes.get(16..)?))
}

/// A held record's key in its table as text: the key, `@` its time, `#` its arrival.
fn show_waiting_key<K: Key>(bytes: &[u8]) -> String {
    match split_waiting_key(bytes) {
        Some((time, arrival, key)) => format!("{}@{time}#{arrival}", K::display_key(key)),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

impl Waiting {
    fn load(store: &dyn StateStore) -> crate::Result<Self> {
        let mut waiting = Self::default();
        crate::store::for_each_blocking(store, &mut |bytes, _| {
            if let Some((time, arrival, key)) = split_waiting_key(bytes) {
                waiting.records.insert((time, key.into(), arrival), bytes.into());
                waiting.next = waiting.next.max(arrival.saturating_add(1));
            }
        })?;
        Ok(waiting)
    }

    /// Holds a record of `key` at `time`; returns its key in the table.
    fn add(&mut self, key: &[u8], time: i64) -> Vec<u8> {
        let arrival = self.next;
        self.next = self.next.saturating_add(1);
        let bytes = waiting_key(time, arrival, key);
        self.records
            .insert((time, key.into(), arrival), bytes.clone().into_boxed_slice());
        bytes
    }

    /// Takes out the records at or before `through`, in order; their keys in the table.
    fn due(&mut self, through: i64) -> Vec<Box<[u8]>> {
        let mut due = Vec::new();
        while let Some(entry) = self.records.first_entry() {
            if entry.key().0 > through {
                break;
            }
            due.push(entry.remove());
        }
        due
    }
}

/// A stream–table join whose stream records wait for the grace period.
struct GraceJoin<K, V, VT, VR> {
    name: String,
    /// The buffer of stream records (by key, time and sequence), with the join's stream time.
    buffer: (&'static str, TableSlot),
    grace: i64,
    table: &'static str,
    slot: TableSlot,
    versions: Versions,
    joiner: Box<StreamTableJoiner<K, V, VT, VR>>,
    next: Arc<Fanout<K, VR>>,
}

impl<K, V, VT, VR> GraceJoin<K, V, VT, VR>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    VT: DeserializeOwned + Send + Sync + 'static,
    VR: Send + Sync + 'static,
{
    /// Joins a record with the row its key had at `time`, and sends the result on at that time.
    fn join(&self, cx: &mut Cx<'_>, key: K, value: V, time: i64) -> Outcome {
        let found: Option<VT> = if key.is_null() {
            None
        } else {
            let bytes = key
                .key_bytes()
                .map_err(|e| format!("cannot encode a key of table `{}`: {e}", self.table))?;
            row_at(cx, (&self.slot, Some(&self.versions)), self.table, &bytes, time)?
        };
        at_time(cx, time, |cx| {
            forward_joined(cx, key, value, found.as_ref(), &*self.joiner, &self.next)
        })
    }

    /// Joins the buffered records the grace period has passed (at or before `through`), in
    /// order, each with the row of its time. A held record that fails (it does not decode,
    /// the joiner panics, what follows fails) is handled as the app says of processing
    /// errors, on its own: it goes to the dead-letter topic as the buffer held it, and the
    /// others go on (the record being processed has no part in it).
    fn release(&self, cx: &mut Cx<'_>, through: i64) -> Outcome {
        let index = self.buffer.1.get()?;
        let due = cx
            .ctx
            .with_extension(index, Waiting::load, |waiting: &mut Waiting| waiting.due(through))
            .map_err(|e| e.to_string())?;
        for bytes in due {
            let held = cx.ctx.get_now(index, &bytes).map_err(|e| e.to_string())?;
            cx.ctx.expire_at(index, bytes.to_vec()).map_err(|e| e.to_string())?;
            let Some((time, _, key)) = split_waiting_key(&bytes) else {
                continue;
            };
            let joined = guarded(|| {
                let value = held.as_deref().ok_or("the held record is missing from its table")?;
                let key = K::decode_key(Some(key)).map_err(|e| format!("a key of table `{}`: {e}", self.buffer.0))?;
                let value: V = json::decode(value).map_err(|e| format!("join `{}`: {e}", self.name))?;
                self.join(cx, key, value, time)
            });
            if let Err(error) = joined {
                change_failed_in(cx, self.buffer.0, key.to_vec(), held, time, &error);
            }
        }
        Ok(())
    }
}

impl<K, V, VT, VR> Node<K, V> for GraceJoin<K, V, VT, VR>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    VT: DeserializeOwned + Send + Sync + 'static,
    VR: Send + Sync + 'static,
{
    /// As Kafka Streams does: the join's stream time moves up to the record; a record the
    /// grace period has already passed (or without a key) is joined at once; the others
    /// wait; then every record the grace period has passed is joined, oldest first.
    fn push(&self, cx: &mut Cx<'_>, key: K, value: V) -> Outcome {
        let time = cx.timestamp;
        let index = self.buffer.1.get()?;
        let now = cx.ctx.advance_clock(index, time);
        let through = now.saturating_sub(self.grace);
        if key.is_null() || time < through {
            self.join(cx, key, value, time)?;
        } else {
            let key_bytes = key
                .key_bytes()
                .map_err(|e| format!("cannot encode a key of join `{}`: {e}", self.name))?
                .into_owned();
            let bytes = json::encode(&value).map_err(|e| format!("join `{}`: {e}", self.name))?;
            let record = cx
                .ctx
                .with_extension(index, Waiting::load, |waiting: &mut Waiting| {
                    waiting.add(&key_bytes, time)
                })
                .map_err(|e| e.to_string())?;
            cx.ctx.put_at(index, record, Some(bytes)).map_err(|e| e.to_string())?;
        }
        self.release(cx, through)
    }
}

impl<K, V, P> KStream<K, V, P>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn with_grace<VT, VR>(
        self,
        op: &str,
        (table, name, grace): (&VersionedKTable<K, VT>, &str, Duration),
        joiner: Box<StreamTableJoiner<K, V, VT, VR>>,
    ) -> KStream<K, VR, Keyed>
    where
        VT: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Send + Sync + 'static,
    {
        let graph = std::rc::Rc::clone(&self.graph);
        let mut g = graph.borrow_mut();
        table.check_joinable(&mut g, op);
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        if !valid_name(name) {
            let error = format!(
                "pipeline `{}`: the join's name `{name}` names its store: use letters, digits, `.`, `_` and `-`",
                g.pipeline
            );
            g.errors.push(error);
        }
        if grace > table.history() {
            let error = format!(
                "pipeline `{}`: join `{name}` waits {grace:?} for table `{}`, longer than the table keeps its \
                 history ({:?}): a record would be joined after the version of its time is gone; make the grace \
                 period at most the history",
                g.pipeline,
                table.name,
                table.history()
            );
            g.errors.push(error);
        }
        let versions = table.versions.clone();
        let group = g.union(self.group, table.group);
        let store = crate::spec::static_name(format!("{name}-grace-join-store"));
        let spec = TableSpec {
            name: store,
            key_type: std::any::type_name::<K>(),
            value_type: "json",
            show_key: KeyDisplay(show_waiting_key::<K>),
            faust: false,
            windowed: false,
            lookup: None,
            keeps_time: true,
            ttl: None,
        };
        let slot = g.table(group, spec);
        let next = g.fanout::<K, VR>();
        let node = g.node(op, NodeKind::Operation, vec![self.node, table.node], group);
        g.rename(node, name);
        drop(g);
        self.fanout.add(Arc::new(GraceJoin {
            name: name.to_string(),
            buffer: (store, slot),
            grace: grace_ms,
            table: table.name,
            slot: table.slot.clone(),
            versions,
            joiner,
            next: Arc::clone(&next),
        }));
        KStream::new(graph, next, group, node)
    }

    /// Joins each record with the value its key had in a versioned `table` at the record's
    /// time, after waiting up to `grace` of stream time for late table updates (Kafka
    /// Streams' stream–table `join` with `Joined.withGracePeriod`, KIP-923).
    ///
    /// - A record waits in the buffer `{name}-grace-join-store` (with its changelog) until
    ///   the join's stream time (the latest record time it took) is `grace` past it; then
    ///   it is joined, and goes on at its own time. Records go on in order of their times.
    /// - A record already `grace` behind the join's stream time is joined at once.
    /// - `joiner(key, value, row)` for records whose key had a row then; the others are dropped.
    ///
    /// Only a versioned table can be given (a [`KTable`](super::KTable) does not compile):
    /// without a history, a record held back would meet the table of a later time. The
    /// grace period is at most the table's history (checked when the app is made).
    ///
    /// ```
    /// use std::time::Duration;
    /// use streams_core::prelude::*;
    ///
    /// const ORDERS: Topic<String, i64> = Topic::new("orders");
    /// const PRICES: Topic<String, i64> = Topic::new("prices");
    /// const PRICE_STORE: Table<String, i64> = Table::new("prices-store");
    /// const TOTALS: Topic<String, i64> = Topic::new("order-totals");
    ///
    /// let app = App::new("shop").pipeline("totals", |builder| {
    ///     let prices = builder.versioned_table(PRICES, PRICE_STORE, Duration::from_secs(3600));
    ///     builder
    ///         .stream(ORDERS)
    ///         .join_with_grace(&prices, "order-price", Duration::from_secs(10), |_, quantity, price| {
    ///             quantity * price
    ///         })
    ///         .to(TOTALS);
    /// });
    /// assert!(app.tasks()[0].tables.iter().any(|t| t.name == "order-price-grace-join-store"));
    /// ```
    pub fn join_with_grace<KT, VT, VR>(
        self,
        table: &VersionedKTable<KT, VT>,
        name: &str,
        grace: Duration,
        joiner: impl Fn(&K, &V, &VT) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR, Keyed>
    where
        KT: SameKey<K>,
        P: PartitionedByKey,
        VT: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Send + Sync + 'static,
    {
        self.with_grace(
            "join_with_grace",
            (KT::versioned(table), name, grace),
            Box::new(move |key, value, row| row.map(|row| joiner(key, value, row))),
        )
    }

    /// Like [`KStream::join_with_grace`], but every record goes on: `joiner(key, value,
    /// row)` with `None` where its key had no row at its time (Kafka Streams' stream–table
    /// `leftJoin` with a grace period).
    pub fn left_join_with_grace<KT, VT, VR>(
        self,
        table: &VersionedKTable<KT, VT>,
        name: &str,
        grace: Duration,
        joiner: impl Fn(&K, &V, Option<&VT>) -> VR + Send + Sync + 'static,
    ) -> KStream<K, VR, Keyed>
    where
        KT: SameKey<K>,
        P: PartitionedByKey,
        VT: Serialize + DeserializeOwned + Send + Sync + 'static,
        VR: Send + Sync + 'static,
    {
        self.with_grace(
            "left_join_with_grace",
            (KT::versioned(table), name, grace),
            Box::new(move |key, value, row| Some(joiner(key, value, row))),
        )
    }
}

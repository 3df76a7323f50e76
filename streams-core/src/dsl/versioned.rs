//! Versioned tables (Kafka Streams' versioned key-value stores, KIP-889 and KIP-914): a
//! topic read as a table that also keeps each key's earlier values for a time, so that a
//! stream joined with it meets the value its key had *at each record's time*.
//!
//! The table itself (the store the user names) holds each key's latest value by timestamp,
//! as every reader expects — lookups, table joins, `to_stream`. An update older than its
//! key's latest (out of order) goes into the history only: the table does not change and
//! nothing goes downstream (KIP-914). The history is the table `{store}-versions`, with its
//! changelog: each key's versions (time, value or deletion) within the history retention,
//! plus the one in force at its start. Its stream time (the latest time put into it) is kept
//! with the task's state, as windows keep theirs.

use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::builder::StreamsBuilder;
use super::node::{Cx, Outcome, SourceNode, TableSlot};
use super::table::{table_entry, KTable};
use crate::codec::Key;
use crate::message::Message;
use crate::spec::{KeyDisplay, TableSpec};
use crate::table::Table;
use crate::task::NO_TIME;
use crate::topic::{Topic, TopicReader};

/// A versioned table's history: its table, and how long before its stream time the values
/// it held can still be asked for.
#[derive(Clone)]
pub(crate) struct Versions {
    pub(crate) table: &'static str,
    pub(crate) slot: TableSlot,
    pub(crate) history: i64,
}

/// A key's versions, oldest first: each one's time and value (`None`: deleted then).
type VersionList = Vec<(i64, Option<Vec<u8>>)>;

/// A key's versions as the history table keeps them: per version its time (8 bytes,
/// big-endian), 1 if it has a value, then the value's length (4 bytes, big-endian) and bytes.
fn encode_versions(versions: &[(i64, Option<Vec<u8>>)]) -> Vec<u8> {
    let size: usize = versions.iter().map(|(_, v)| 13 + v.as_ref().map_or(0, Vec::len)).sum();
    let mut bytes = Vec::with_capacity(size);
    for (time, value) in versions {
        bytes.extend_from_slice(&time.to_be_bytes());
        match value {
            Some(value) => {
                bytes.push(1);
                // Kafka's records are far smaller (its sizes are signed 32-bit numbers).
                let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.extend_from_slice(value);
            }
            None => bytes.push(0),
        }
    }
    bytes
}

/// The versions [`encode_versions`] wrote (`None`: the bytes are not such a list).
fn decode_versions(mut bytes: &[u8]) -> Option<VersionList> {
    let mut versions = Vec::new();
    while !bytes.is_empty() {
        let time = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let present = *bytes.get(8)?;
        bytes = &bytes[9..];
        let value = if present == 1 {
            let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
            let value = bytes.get(4..4 + len)?.to_vec();
            bytes = &bytes[4 + len..];
            Some(value)
        } else {
            None
        };
        versions.push((time, value));
    }
    Some(versions)
}

/// Drops the versions no question from `bound` on can reach: those replaced at or before
/// `bound` (the latest always stays).
fn prune(versions: &mut VersionList, bound: i64) {
    let gone = versions.windows(2).take_while(|pair| pair[1].0 <= bound).count();
    versions.drain(..gone);
}

/// The value `key` had in a versioned table at `time` (its bytes, as the table keeps them):
/// the latest version at or before it. `None` when the key had none then, was deleted then,
/// or `time` is older than the history keeps (its stream time less the retention: Kafka
/// Streams answers nothing there too). `table` is the table's own slot.
pub(crate) fn value_as_of(
    cx: &Cx<'_>,
    (table, versions): (&TableSlot, &Versions),
    key: &[u8],
    time: i64,
) -> Result<Option<Vec<u8>>, String> {
    let now = cx.ctx.clock(versions.slot.get()?);
    if now != NO_TIME && time < now.saturating_sub(versions.history) {
        return Ok(None);
    }
    let list = history_of(cx, (table, versions), key)?;
    Ok(list
        .into_iter()
        .rev()
        .find(|(at, _)| *at <= time)
        .and_then(|(_, value)| value))
}

/// A key's versions. A key the table holds without a history (a table that was not
/// versioned before) has its value, of a time unknown, as its only version, from the start.
fn history_of(cx: &Cx<'_>, (table, versions): (&TableSlot, &Versions), key: &[u8]) -> Result<VersionList, String> {
    match cx.ctx.get_now(versions.slot.get()?, key).map_err(|e| e.to_string())? {
        Some(bytes) => decode_versions(&bytes)
            .ok_or_else(|| format!("table `{}` holds a damaged list of versions", versions.table)),
        None => {
            let value = cx.ctx.get_now(table.get()?, key).map_err(|e| e.to_string())?;
            Ok(value.map(|value| vec![(i64::MIN, Some(value))]).unwrap_or_default())
        }
    }
}

/// A versioned table in a pipeline, made by [`StreamsBuilder::versioned_table`]: a
/// [`KTable`] (it derefs to one: every join and lookup takes it) whose stream–table joins
/// are *timestamped* — a record meets the value its key had at the record's time, not the
/// latest — and which can hold stream records back for late table updates
/// ([`KStream::join_with_grace`](super::KStream::join_with_grace)).
pub struct VersionedKTable<K, V> {
    table: KTable<K, V>,
    pub(crate) versions: Versions,
    history: Duration,
}

impl<K, V> VersionedKTable<K, V> {
    /// How long before its stream time the table answers for (its history retention).
    pub fn history(&self) -> Duration {
        self.history
    }

    /// The table, for the operations that consume one (`to_stream`, `to`, `group_by`, …):
    /// they see its latest values, as for any table.
    pub fn into_table(self) -> KTable<K, V> {
        self.table
    }
}

impl<K, V> Deref for VersionedKTable<K, V> {
    type Target = KTable<K, V>;

    fn deref(&self) -> &KTable<K, V> {
        &self.table
    }
}

impl StreamsBuilder {
    /// The records of `topic` as a *versioned* table kept in `store` (Kafka Streams'
    /// versioned key-value store, KIP-889/914): like [`StreamsBuilder::table`], and each
    /// key's earlier values are kept for `history` of the table's stream time (the latest
    /// record time it took), in the table `{store}-versions` with its changelog.
    ///
    /// - A stream joined with it ([`KStream::join`](super::KStream::join),
    ///   [`left_join`](super::KStream::left_join), [`join_with_grace`](super::KStream::join_with_grace))
    ///   meets the value its key had at the record's time; records older than the history
    ///   meet nothing.
    /// - The table's value of a key is its latest by timestamp. An update older than that
    ///   (out of order) only goes into the history: no change goes downstream (KIP-914).
    /// - An update older than the history (its time before stream time less `history`) is
    ///   dropped and counted as late.
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
    ///         .join(&prices, |_, quantity, price| quantity * price)
    ///         .to(TOTALS);
    /// });
    /// assert!(app.tasks()[0].tables.iter().any(|t| t.name == "prices-store-versions"));
    /// ```
    pub fn versioned_table<K, V>(
        &self,
        topic: Topic<K, V>,
        store: Table<K, V>,
        history: Duration,
    ) -> VersionedKTable<K, V>
    where
        K: Key,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let versions = Versions {
            table: crate::spec::static_name(format!("{}-versions", store.name())),
            slot: TableSlot::default(),
            history: i64::try_from(history.as_millis()).unwrap_or(i64::MAX),
        };
        let reader = topic.reader();
        let source_versions = versions.clone();
        let mut table = self.source_table(topic, store, |slot| {
            Arc::new(VersionedSource {
                reader,
                store,
                slot: slot.clone(),
                versions: source_versions,
            })
        });
        {
            let mut graph = table.graph.borrow_mut();
            let spec = store.spec();
            if spec.ttl.is_some() {
                let error = format!(
                    "pipeline `{}`: versioned table `{}` is declared with a TTL; a versioned table keeps its \
                     history by its own retention: declare the store without `.ttl(..)`",
                    graph.pipeline,
                    store.name()
                );
                graph.errors.push(error);
            }
            let history = TableSpec {
                name: versions.table,
                key_type: spec.key_type,
                value_type: crate::spec::HISTORY_VALUE_TYPE,
                show_key: KeyDisplay(spec.show_key.0),
                faust: false,
                windowed: false,
                lookup: None,
                keeps_time: true,
                ttl: None,
            };
            graph.table_at(table.group, history, versions.slot.clone());
        }
        table.versions = Some(versions.clone());
        VersionedKTable {
            table,
            versions,
            history,
        }
    }
}

/// A topic read as a versioned table: each record goes into its key's history, and into
/// the table when it is the key's latest by time.
struct VersionedSource<K, V> {
    reader: TopicReader<V>,
    store: Table<K, V>,
    slot: TableSlot,
    versions: Versions,
}

impl<K, V> SourceNode for VersionedSource<K, V>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn push_message(&self, cx: &mut Cx<'_>, message: &Message) -> Outcome {
        let (index, history_index) = (self.slot.get()?, self.versions.slot.get()?);
        let (key, value) = table_entry(cx, message, &self.reader, &self.store)?;
        let time = cx.timestamp;
        let now = cx.ctx.advance_clock(history_index, time);
        let bound = now.saturating_sub(self.versions.history);
        if time < bound {
            cx.ctx.metrics.late.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                task = &*cx.ctx.name,
                "versioned table `{}`: an update at {time} ms is older than its history ({} ms before its stream \
                 time, {now} ms): dropped",
                self.store.name(),
                self.versions.history
            );
            return Ok(());
        }
        let mut list = history_of(cx, (&self.slot, &self.versions), &key)?;
        // The key's latest by time: an update at or after it (Kafka Streams: a later or
        // equal timestamp) is the table's value; an earlier one only history.
        let latest = list.last().is_none_or(|(at, _)| time >= *at);
        match list.binary_search_by_key(&time, |(at, _)| *at) {
            Ok(found) => list[found].1 = value.clone(),
            Err(at) => list.insert(at, (time, value.clone())),
        }
        prune(&mut list, bound);
        // A key deleted before the history's start has nothing left to answer.
        let gone = matches!(list.as_slice(), [(at, None)] if *at <= bound);
        let kept = (!gone).then(|| encode_versions(&list));
        cx.ctx
            .put_at(history_index, key.clone(), kept)
            .map_err(|e| e.to_string())?;
        if latest {
            cx.ctx.put_at(index, key, value).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lists_round_trip_and_prune_what_no_question_reaches() {
        let list: VersionList = vec![(1, Some(b"a".to_vec())), (5, None), (9, Some(Vec::new()))];
        assert_eq!(decode_versions(&encode_versions(&list)), Some(list.clone()));
        assert_eq!(decode_versions(&[0, 1, 2]), None, "too short");
        let mut pruned = list.clone();
        prune(&mut pruned, 4);
        assert_eq!(pruned, list, "the version in force at 4 stays");
        prune(&mut pruned, 5);
        assert_eq!(pruned, list[1..].to_vec(), "replaced at 5: gone");
        prune(&mut pruned, 100);
        assert_eq!(pruned, list[2..].to_vec(), "the latest always stays");
    }
}

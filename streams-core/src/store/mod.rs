//! State stores: where a table partition's data lives on a worker. Stores know nothing of
//! agents or Kafka; they keep bytes and a checkpoint.

mod budget;
mod memory;
mod rocksdb;

pub use self::budget::{parse_size, StateMemory, DEFAULT_STATE_MEMORY, MIN_STATE_MEMORY};
pub use self::memory::MemoryStore;
pub use self::rocksdb::RocksDbStore;

use crate::Result;

/// How far a store is: the last changelog offset its data includes and, for each source
/// topic of the partition's task, the last source offset whose effects it holds. Written in
/// the same batch as the data.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Last changelog offset applied (`None`: none, or unchanged when writing).
    pub changelog_offset: Option<i64>,
    /// Last offset processed in each source topic (same partition as the store). Read: the
    /// stored list (empty when none). Written: `None` leaves the stored list as it is,
    /// `Some` replaces it (`Some(vec![])` clears it).
    pub sources: Option<Vec<(String, i64)>>,
    /// The task's stream time (ms) at the cut: the largest event time it had processed.
    /// `None`: none, or unchanged when writing.
    pub stream_time: Option<i64>,
    /// The stream times of the task's operations that keep their own (windowed aggregations
    /// and joins, which Kafka Streams times by the records that reach them), by the name
    /// of the table each keeps. Empty: none, or unchanged when writing.
    pub clocks: Vec<(String, i64)>,
}

impl Checkpoint {
    /// The last offset processed in `topic`, if the checkpoint has one.
    pub fn source(&self, topic: &str) -> Option<i64> {
        self.sources.as_ref()?.iter().find(|(t, _)| t == topic).map(|(_, o)| *o)
    }
}

/// Source positions as bytes: for each, the topic's length (u32, big-endian), the topic,
/// the offset (i64, big-endian).
pub(crate) fn encode_sources(sources: &[(String, i64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (topic, offset) in sources {
        out.extend_from_slice(&(topic.len() as u32).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
    }
    out
}

/// The positions [`encode_sources`] wrote; `None` when the bytes are not such a list.
pub(crate) fn decode_sources(mut bytes: &[u8]) -> Option<Vec<(String, i64)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let topic = std::str::from_utf8(bytes.get(4..4 + len)?).ok()?.to_string();
        let offset = i64::from_be_bytes(bytes.get(4 + len..12 + len)?.try_into().ok()?);
        out.push((topic, offset));
        bytes = &bytes[12 + len..];
    }
    Some(out)
}

/// A key and its value (`None`: deleted), as stores write them.
pub type Entry = (Vec<u8>, Option<Vec<u8>>);

/// A key-value store for one table partition.
pub trait StateStore: Send + Sync + 'static {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// The value of `key` if it can be read without waiting for the disk (from memory or a
    /// cache); `None` when only [`StateStore::get`] can tell. Agents read through this on the
    /// executor and fall back to `get` on a blocking thread.
    fn get_in_memory(&self, key: &[u8]) -> Result<Option<Option<Vec<u8>>>> {
        let _ = key;
        Ok(None)
    }
    /// Writes entries (`None` deletes) and the checkpoint atomically. `None` fields of the
    /// checkpoint leave the stored ones as they are.
    fn write(&self, entries: &[(Vec<u8>, Option<Vec<u8>>)], checkpoint: &Checkpoint) -> Result<()>;
    /// The stored checkpoint.
    fn checkpoint(&self) -> Result<Checkpoint>;
    /// Whether a large restore is writing into the store (`true` before its first write,
    /// `false` after its last): a store may defer work until then (RocksDB compacts its newest
    /// files later). Nothing by default.
    fn bulk_load(&self, on: bool) -> Result<()> {
        let _ = on;
        Ok(())
    }
    /// Removes every entry and the checkpoint (the store is rebuilt from its changelog).
    fn clear(&self) -> Result<()>;
    /// Calls `visit` with every key and value.
    fn for_each(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()>;
    /// Calls `visit` with every key from `from` up to `to` (excluded; `None`: to the end),
    /// in bytewise order, with its value, until `visit` returns `false`.
    fn scan(&self, from: &[u8], to: Option<&[u8]>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let mut going = true;
        self.for_each(&mut |key, value| {
            if going && key >= from && to.is_none_or(|to| key < to) {
                going = visit(key, value);
            }
        })
    }
    /// Calls `visit` with every key in `from..to` (bytewise order) and its value, in order.
    fn range(&self, from: &[u8], to: &[u8], visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        self.for_each(&mut |key, value| {
            if key >= from && key < to {
                visit(key, value);
            }
        })
    }
}

/// Directory of the store of `table`'s partition `partition` under a worker's table directory.
pub(crate) fn partition_dir(tables_dir: &std::path::Path, table: &str, partition: i32) -> std::path::PathBuf {
    tables_dir.join(table).join(partition.to_string())
}

/// The stores of `table` found under `{data_dir}/{app_id}/tables`, by partition.
pub fn local_partitions(data_dir: &std::path::Path, app_id: &str, table: &str) -> Vec<(i32, std::path::PathBuf)> {
    let dir = data_dir.join(app_id).join("tables").join(table);
    let mut found: Vec<(i32, std::path::PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path())))
        .collect();
    found.sort();
    found
}

/// Visits every entry of a store from a task: a blocking read, so off the runtime's worker
/// thread where it can be (an index of a table in memory is loaded so, once per task).
pub(crate) fn for_each_blocking(store: &dyn StateStore, visit: &mut dyn FnMut(&[u8], &[u8])) -> crate::Result<()> {
    let mut scan = || store.for_each(visit);
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(scan),
        _ => scan(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_positions_round_trip() {
        let sources = vec![("hits".to_string(), 41), ("clicks-by-user".to_string(), -1)];
        assert_eq!(decode_sources(&encode_sources(&sources)), Some(sources));
        assert_eq!(decode_sources(&[]), Some(vec![]));
        assert_eq!(decode_sources(&[0, 0, 0, 9, b'x']), None);
    }
}

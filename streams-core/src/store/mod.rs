//! State stores: where a table partition's data lives on a worker. Stores know nothing of
//! agents or Kafka; they keep bytes and a checkpoint.

mod memory;
mod rocksdb;

pub use self::memory::MemoryStore;
pub use self::rocksdb::RocksDbStore;

use crate::Result;

/// How far a store is: the last changelog offset its data includes and the last source
/// offset whose effects it holds. Written in the same batch as the data.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Last changelog offset applied (`None`: none, or unchanged when writing).
    pub changelog_offset: Option<i64>,
    /// Last source offset processed (`None`: none, or unchanged when writing).
    pub source_offset: Option<i64>,
}

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
    fn write(&self, entries: &[(Vec<u8>, Option<Vec<u8>>)], checkpoint: Checkpoint) -> Result<()>;
    /// The stored checkpoint.
    fn checkpoint(&self) -> Result<Checkpoint>;
    /// Calls `visit` with every key and value.
    fn for_each(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()>;
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

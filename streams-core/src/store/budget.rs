//! The memory budget a worker's RocksDB stores share (`--state-memory`).

use std::sync::OnceLock;

use rocksdb::{Cache, WriteBufferManager};

/// What the stores of a worker share when no budget is set: 128 MiB.
pub const DEFAULT_STATE_MEMORY: usize = 128 << 20;

/// The smallest budget taken: below it RocksDB would flush memtables almost at every write.
pub const MIN_STATE_MEMORY: usize = 8 << 20;

/// One memory budget for many RocksDB stores: one block cache, which also carries the
/// memtables (a write-buffer manager charges them to it, up to half of the budget), so that
/// 64 partitions of a table take one budget rather than 64 times RocksDB's per-database
/// defaults. Kafka Streams users build the same with a `RocksDBConfigSetter`
/// ("bounded memory"); here it is one setting: `--state-memory`,
/// [`WorkerOptions::state_memory`](crate::WorkerOptions::state_memory).
///
/// The bound is RocksDB's own accounting (data blocks, index and filter blocks, memtables);
/// iterators being read and RocksDB's per-database structures come on top.
///
/// ```
/// use streams_core::store::{RocksDbStore, StateMemory, StateStore, Checkpoint};
///
/// let memory = StateMemory::new(16 << 20);
/// let dir = tempfile::tempdir().unwrap();
/// let a = RocksDbStore::open_in(&dir.path().join("a"), &memory).unwrap();
/// let b = RocksDbStore::open_in(&dir.path().join("b"), &memory).unwrap();
/// a.write(&[(b"k".to_vec(), Some(vec![0; 1 << 20]))], &Checkpoint::default()).unwrap();
/// b.write(&[(b"k".to_vec(), Some(vec![0; 1 << 20]))], &Checkpoint::default()).unwrap();
/// assert_eq!(memory.limit(), 16 << 20);
/// // Both stores' memtables are counted in the one budget.
/// assert!(memory.used() >= 1 << 20, "{}", memory.used());
/// ```
#[derive(Clone)]
pub struct StateMemory {
    cache: Cache,
    buffers: WriteBufferManager,
    limit: usize,
}

impl StateMemory {
    /// A budget of `bytes` (at least [`MIN_STATE_MEMORY`]) for the block cache and the
    /// memtables together; memtables take about half of it (RocksDB flushes a store's
    /// memtables at its next write once they are over; see [`StateMemory`]).
    pub fn new(bytes: usize) -> Self {
        if bytes < MIN_STATE_MEMORY {
            tracing::warn!(
                "a state memory budget of {bytes} bytes is below the least taken; taking {MIN_STATE_MEMORY}"
            );
        }
        let limit = bytes.max(MIN_STATE_MEMORY);
        let cache = Cache::new_lru_cache(limit);
        let buffers = WriteBufferManager::new_write_buffer_manager_with_cache(limit / 2, false, cache.clone());
        Self { cache, buffers, limit }
    }

    /// The budget stores opened without one share ([`RocksDbStore::open`](super::RocksDbStore::open)):
    /// [`DEFAULT_STATE_MEMORY`], one for the process.
    pub fn process_default() -> &'static Self {
        static DEFAULT: OnceLock<StateMemory> = OnceLock::new();
        DEFAULT.get_or_init(|| Self::new(DEFAULT_STATE_MEMORY))
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// What the stores sharing this budget use now, in bytes: the block cache's usage, which
    /// includes the memtables.
    pub fn used(&self) -> usize {
        self.cache.get_usage()
    }

    pub(crate) fn cache(&self) -> &Cache {
        &self.cache
    }

    pub(crate) fn buffers(&self) -> &WriteBufferManager {
        &self.buffers
    }
}

/// Reads a size as `--state-memory` takes it: bytes, or a number with a unit — `KB`, `MB`,
/// `GB` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024), any case, a space allowed.
///
/// ```
/// use streams_core::store::parse_size;
///
/// assert_eq!(parse_size("256MB"), Ok(256_000_000));
/// assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
/// assert_eq!(parse_size("4096"), Ok(4096));
/// assert!(parse_size("lots").is_err());
/// assert!(parse_size("-1").is_err());
/// assert!(parse_size("512m").is_err(), "say MB or MiB");
/// ```
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    if number.is_empty() {
        return Err(format!(
            "`{text}` is not a size: a number first (e.g. 256MB, 1GiB, 4096)"
        ));
    }
    let factor: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("`{text}`: unknown unit `{other}` (KB, MB, GB, KiB, MiB, GiB)")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 256MB, 1GiB, 4096)"))?;
    let bytes = value * factor;
    if !bytes.is_finite() || bytes < 0.0 || bytes > usize::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(bytes.round() as usize)
}

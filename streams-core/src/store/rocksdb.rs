//! The RocksDB store: data in the default column family, the checkpoint in `streams-meta`.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, ErrorKind, IteratorMode, Options, ReadOptions, ReadTier, WriteBatch, DB,
};

use super::{Checkpoint, StateMemory, StateStore};
use crate::{Error, Result};

const META: &str = "streams-meta";
const CHANGELOG_OFFSET: &[u8] = b"changelog_offset";
const SOURCES: &[u8] = b"sources";
const STREAM_TIME: &[u8] = b"stream_time";
const CLOCKS: &[u8] = b"clocks";

/// Level-0 files (flushed memtables) at which RocksDB merges them into the next level, slows
/// writes, and stops them: its defaults.
const LEVEL0: Level0 = Level0 {
    compaction: 4,
    slowdown: 20,
    stop: 36,
};

/// The same while a large restore writes ([`StateStore::bulk_load`]): a restore of up to 16
/// files' worth has them merged once, after it, rather than four at a time into a level that
/// grows with each merge; past that, merges run while the later files come, with room
/// before writes slow down.
const BULK_LEVEL0: Level0 = Level0 {
    compaction: 16,
    slowdown: 48,
    stop: 64,
};

struct Level0 {
    compaction: i32,
    slowdown: i32,
    stop: i32,
}

/// A table partition in RocksDB.
///
/// ```
/// use streams_core::store::{Checkpoint, RocksDbStore, StateStore};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = RocksDbStore::open(dir.path()).unwrap();
/// let checkpoint = Checkpoint { changelog_offset: Some(7), sources: Some(vec![("hits".into(), 41)]), stream_time: Some(60_000), clocks: vec![] };
/// store.write(&[(b"u1".to_vec(), Some(b"3".to_vec()))], &checkpoint).unwrap();
/// assert_eq!(store.get(b"u1").unwrap(), Some(b"3".to_vec()));
/// assert_eq!(store.checkpoint().unwrap(), checkpoint);
/// // Just written, so in a memtable: readable without the disk.
/// assert_eq!(store.get_in_memory(b"u1").unwrap(), Some(Some(b"3".to_vec())));
/// store.write(&[(b"u2".to_vec(), Some(b"1".to_vec()))], &Checkpoint::default()).unwrap();
/// store.clear().unwrap();
/// assert_eq!((store.get(b"u1").unwrap(), store.get(b"u2").unwrap()), (None, None));
/// assert_eq!(store.checkpoint().unwrap(), Checkpoint { changelog_offset: None, sources: Some(vec![]), stream_time: None, clocks: vec![] });
/// ```
pub struct RocksDbStore {
    db: DB,
    path: PathBuf,
}

fn store_error(path: &Path, source: rocksdb::Error) -> Error {
    Error::Store {
        path: path.display().to_string(),
        source,
    }
}

impl RocksDbStore {
    /// Opens (or creates) the store at `path`, within the process's default memory budget
    /// ([`StateMemory::process_default`]).
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_in(path, StateMemory::process_default())
    }

    /// Opens (or creates) the store at `path`, its block cache and memtables within `memory`
    /// (shared with the other stores opened in it).
    pub fn open_in(path: &Path, memory: &StateMemory) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_keep_log_file_num(2);
        options.set_write_buffer_manager(memory.buffers());
        // The data's column family: small memtables, the shared block cache, and a bloom
        // filter so that looking up a key the table does not have rarely reads the disk.
        let mut data = Options::default();
        data.set_write_buffer_size(4 << 20);
        data.set_max_write_buffer_number(2);
        data.set_level_zero_file_num_compaction_trigger(LEVEL0.compaction);
        data.set_level_zero_slowdown_writes_trigger(LEVEL0.slowdown);
        data.set_level_zero_stop_writes_trigger(LEVEL0.stop);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(memory.cache());
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        data.set_block_based_table_factory(&table);
        let mut meta = Options::default();
        meta.set_write_buffer_size(64 << 10);
        meta.set_block_based_table_factory(&table);
        let families = vec![
            ColumnFamilyDescriptor::new("default", data),
            ColumnFamilyDescriptor::new(META, meta),
        ];
        let db = DB::open_cf_descriptors(&options, path, families).map_err(|e| store_error(path, e))?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing store for reading while a worker may hold it.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let options = Options::default();
        let db =
            DB::open_cf_for_read_only(&options, path, ["default", META], false).map_err(|e| store_error(path, e))?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    fn meta(&self) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(META)
            .ok_or_else(|| Error::Config(format!("store {} has no {META} column family", self.path.display())))
    }

    fn read_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.meta()?, key)
            .map_err(|e| store_error(&self.path, e))
    }
}

impl StateStore for RocksDbStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(|e| store_error(&self.path, e))
    }

    fn get_in_memory(&self, key: &[u8]) -> Result<Option<Option<Vec<u8>>>> {
        // RocksDB's "block cache tier": memtables and cached blocks only; a read that would
        // need the disk returns `Incomplete` instead of blocking.
        let mut options = ReadOptions::default();
        options.set_read_tier(ReadTier::BlockCache);
        match self.db.get_opt(key, &options) {
            Ok(value) => Ok(Some(value)),
            Err(error) if error.kind() == ErrorKind::Incomplete => Ok(None),
            Err(error) => Err(store_error(&self.path, error)),
        }
    }

    fn write(&self, entries: &[(Vec<u8>, Option<Vec<u8>>)], checkpoint: &Checkpoint) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (key, value) in entries {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
        }
        let meta = self.meta()?;
        if let Some(offset) = checkpoint.changelog_offset {
            batch.put_cf(meta, CHANGELOG_OFFSET, offset.to_be_bytes());
        }
        if let Some(sources) = &checkpoint.sources {
            batch.put_cf(meta, SOURCES, super::encode_sources(sources));
        }
        if let Some(time) = checkpoint.stream_time {
            batch.put_cf(meta, STREAM_TIME, time.to_be_bytes());
        }
        if !checkpoint.clocks.is_empty() {
            batch.put_cf(meta, CLOCKS, super::encode_sources(&checkpoint.clocks));
        }
        self.db.write(batch).map_err(|e| store_error(&self.path, e))
    }

    fn bulk_load(&self, on: bool) -> Result<()> {
        let level0 = if on { &BULK_LEVEL0 } else { &LEVEL0 };
        let (compaction, slowdown, stop) = (
            level0.compaction.to_string(),
            level0.slowdown.to_string(),
            level0.stop.to_string(),
        );
        self.db
            .set_options(&[
                ("level0_file_num_compaction_trigger", compaction.as_str()),
                ("level0_slowdown_writes_trigger", slowdown.as_str()),
                ("level0_stop_writes_trigger", stop.as_str()),
            ])
            .map_err(|e| store_error(&self.path, e))
    }

    fn checkpoint(&self) -> Result<Checkpoint> {
        let changelog_offset = self
            .read_meta(CHANGELOG_OFFSET)?
            .and_then(|bytes| bytes.try_into().ok())
            .map(i64::from_be_bytes);
        let sources = match self.read_meta(SOURCES)? {
            None => Vec::new(),
            Some(bytes) => super::decode_sources(&bytes).ok_or_else(|| {
                Error::Config(format!(
                    "store {}: its checkpoint's source positions are unreadable",
                    self.path.display()
                ))
            })?,
        };
        let stream_time = self
            .read_meta(STREAM_TIME)?
            .and_then(|bytes| bytes.try_into().ok())
            .map(i64::from_be_bytes);
        let clocks = match self.read_meta(CLOCKS)? {
            None => Vec::new(),
            Some(bytes) => super::decode_sources(&bytes).ok_or_else(|| {
                Error::Config(format!(
                    "store {}: its checkpoint's stream times are unreadable",
                    self.path.display()
                ))
            })?,
        };
        Ok(Checkpoint {
            changelog_offset,
            sources: Some(sources),
            stream_time,
            clocks,
        })
    }

    fn clear(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        let first = self.db.iterator(IteratorMode::Start).next();
        let last = self.db.iterator(IteratorMode::End).next();
        if let (Some(first), Some(last)) = (first, last) {
            let (first, _) = first.map_err(|e| store_error(&self.path, e))?;
            let (last, _) = last.map_err(|e| store_error(&self.path, e))?;
            // The range's end is exclusive: the last key goes on its own.
            batch.delete_range(&first, &last);
            batch.delete(&last);
        }
        let meta = self.meta()?;
        batch.delete_cf(meta, CHANGELOG_OFFSET);
        batch.delete_cf(meta, SOURCES);
        batch.delete_cf(meta, STREAM_TIME);
        batch.delete_cf(meta, CLOCKS);
        self.db.write(batch).map_err(|e| store_error(&self.path, e))
    }

    fn for_each(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        for item in self.db.iterator(IteratorMode::Start) {
            let (key, value) = item.map_err(|e| store_error(&self.path, e))?;
            visit(&key, &value);
        }
        Ok(())
    }

    fn scan(&self, from: &[u8], to: Option<&[u8]>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let mut options = ReadOptions::default();
        if let Some(to) = to {
            options.set_iterate_upper_bound(to.to_vec());
        }
        let start = IteratorMode::From(from, rocksdb::Direction::Forward);
        for item in self.db.iterator_opt(start, options) {
            let (key, value) = item.map_err(|e| store_error(&self.path, e))?;
            if !visit(&key, &value) {
                break;
            }
        }
        Ok(())
    }

    fn range(&self, from: &[u8], to: &[u8], visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(to.to_vec());
        let start = IteratorMode::From(from, rocksdb::Direction::Forward);
        for item in self.db.iterator_opt(start, options) {
            let (key, value) = item.map_err(|e| store_error(&self.path, e))?;
            visit(&key, &value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_at_level0(store: &RocksDbStore) -> u64 {
        store
            .db
            .property_int_value("rocksdb.num-files-at-level0")
            .ok()
            .flatten()
            .unwrap_or(u64::MAX)
    }

    /// Writes `batches` batches of 100 keys, each flushed to a file of its own.
    fn write_flushed(store: &RocksDbStore, batches: u32) {
        for batch in 0..batches {
            let entries: Vec<_> = (0..100u32)
                .map(|i| (format!("k{batch:03}-{i:03}").into_bytes(), Some(b"v".to_vec())))
                .collect();
            store.write(&entries, &Checkpoint::default()).unwrap();
            store.db.flush().unwrap();
        }
    }

    /// While bulk loading, flushed files wait at level 0 (16 before a merge); back to the
    /// normal settings, they are merged (from 4).
    #[test]
    fn bulk_loading_defers_the_merge_of_new_files_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksDbStore::open_in(dir.path(), &StateMemory::new(16 << 20)).unwrap();
        store.bulk_load(true).unwrap();
        write_flushed(&store, 6);
        // Whatever merges the files would start have ended.
        store
            .db
            .wait_for_compact(&rocksdb::WaitForCompactOptions::default())
            .unwrap();
        assert_eq!(files_at_level0(&store), 6, "no merge while bulk loading");
        store.bulk_load(false).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while files_at_level0(&store) >= 4 {
            assert!(std::time::Instant::now() < deadline, "the files were never merged");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The same writes without bulk loading are merged as they come.
        let other = tempfile::tempdir().unwrap();
        let normal = RocksDbStore::open_in(other.path(), &StateMemory::new(16 << 20)).unwrap();
        write_flushed(&normal, 6);
        normal
            .db
            .wait_for_compact(&rocksdb::WaitForCompactOptions::default())
            .unwrap();
        assert!(files_at_level0(&normal) < 4, "merged from 4 files");
        assert_eq!(store.get(b"k005-099").unwrap(), Some(b"v".to_vec()));
    }
}

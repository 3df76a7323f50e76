//! A task's tables: each table partition is a store with a byte-budgeted cache in front.
//! Reads and changes of cached keys never touch the store; changes wait in the cache until
//! the next cut, which writes them to the changelog and the store (coalesced per key, like
//! Kafka Streams' record cache). Past the budget the partition cuts early.
//!
//! **Read your own writes.** A cut's store writes happen later, on the committer (after the
//! producer's flush, or after the transaction's commit), so the store may be behind the
//! cache. The rule that keeps every read right: *a key the cache does not hold has its
//! latest value in the store.* A change stays in the cache after its cut (clean, no longer
//! dirty) until the committer has written that cut ([`Written`](super::commit::Written));
//! clean entries are dropped only when every cut that took changes of the table is written.
//!
//! **The budget.** The cache's entries are *dirty* (changed since the last cut), *pinned*
//! (taken by a cut the store does not hold yet) or *clean* (in the store too). The budget
//! counts the dirty and clean ones: past it, the partition cuts early. That cut first drops
//! the clean entries — waiting, if it must, for the task's earlier cuts to be written, which
//! had a budget's worth of records to get there — then takes the changes, which become the
//! pinned part. A pinned entry changed again is dirty again and counts against the budget. So
//! the cache holds at most about twice the budget: one cut's changes on their way to the
//! store, and up to the budget besides.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::cache_budget::CacheShare;
use super::{bump, with_current, TaskContext};
use crate::spec::TableSpec;
use crate::store::{Entry as StoreEntry, StateStore};
use crate::{Error, Result};

/// What one cached entry costs beyond its key and value bytes: two `Vec`s, the hash
/// table's slot, and the allocator's headers.
const ENTRY_OVERHEAD: usize = 104;

/// Adds `n` to a partition's count (see [`bump`]).
fn add(count: &std::sync::atomic::AtomicU64, n: u64) {
    count.store(count.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

fn entry_bytes(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD
}

/// A table partition as its task sees it.
pub(crate) struct TableState {
    pub name: &'static str,
    /// Key bytes as readable text, for logs (a windowed key as `key@start..end`).
    show_key: fn(&[u8]) -> String,
    pub changelog: Arc<str>,
    pub store: Arc<dyn StateStore>,
    cache: HashMap<Vec<u8>, Entry, foldhash::fast::RandomState>,
    /// Estimated memory of `cache`, see [`entry_bytes`].
    cache_bytes: usize,
    /// Budget for `cache` (`App::table_cache_bytes`, or less under `--state-memory`): past
    /// it, changed entries are committed early (a cut) and unchanged ones dropped once the
    /// store has them.
    cache_share: CacheShare,
    dirty: usize,
    /// The number of the last cut that took changes of this table (0: none): the cache's
    /// clean entries may be dropped once the committer has written it.
    last_cut: u64,
    /// Bytes of the pinned entries (taken by cuts the store may not hold yet): the budget
    /// counts the others. An estimate from above: entries of cuts written since the last
    /// cut stay counted until the next one.
    pinned: usize,
    /// What an operation keeps beside the table for this partition (a windowed
    /// aggregation's index of its windows), made at its first use.
    extension: Option<Box<dyn std::any::Any + Send>>,
}

struct Entry {
    value: Option<Vec<u8>>,
    dirty: bool,
    /// Event time of the record that made the last change.
    timestamp: i64,
    /// The cut that took the entry's last change (0: none; read from the store).
    cut: u64,
    /// The change pass of its last change (see [`TaskContext::next_change_pass`]).
    pass: u64,
    /// Made by [`TaskContext::put_new_at`] in change pass `Some(n)`, for a key with no
    /// value anywhere else (not in the store, not in a cut the store may not hold yet), and
    /// changed in no other pass since. A pass ends when the table's listeners are given its
    /// changes (which a cut takes next), so while the pass lasts nobody has seen the entry:
    /// deleting it leaves no trace (no tombstone for the changelog or the listeners).
    /// `None` for every other entry.
    fresh: Option<u64>,
}

/// A change of a table since the last cut: key, value (`None`: deleted) and the event time
/// of the record that made it.
pub(crate) type Change = (Vec<u8>, Option<Vec<u8>>, i64);

/// Visits a change: key, value (`None`: deleted), event time.
pub(crate) type ChangeVisitor<'a> = dyn FnMut(&[u8], Option<&[u8]>, i64) + 'a;

/// Changes of one table since the last cut: (changelog topic, store, changes).
pub(crate) type DirtyTable = (Arc<str>, Arc<dyn StateStore>, Vec<Change>);

impl TableState {
    pub(crate) fn new(
        table: &TableSpec,
        changelog: String,
        store: Arc<dyn StateStore>,
        cache_share: CacheShare,
    ) -> Self {
        Self {
            name: table.name,
            show_key: table.show_key.0,
            changelog: changelog.into(),
            store,
            cache: HashMap::default(),
            cache_bytes: 0,
            cache_share,
            dirty: 0,
            last_cut: 0,
            pinned: 0,
            extension: None,
        }
    }

    /// Whether the cache's dirty and clean entries are over its budget.
    fn wants_cut(&self) -> bool {
        self.cache_bytes.saturating_sub(self.pinned) > self.cache_share.limit()
    }

    /// Keeps the cache within budget after clean entries were added: drops it when nothing
    /// in it waits for a cut or for the store (`written`: the task's last cut in the
    /// store); otherwise returns `true`, a cut is needed first.
    fn evict_clean(&mut self, written: u64, evictions: &std::sync::atomic::AtomicU64) -> bool {
        if !self.wants_cut() {
            return false;
        }
        if self.dirty == 0 && written >= self.last_cut {
            add(evictions, self.cache.len() as u64);
            self.cache = HashMap::default();
            self.cache_bytes = 0;
            self.pinned = 0;
            return false;
        }
        true
    }

    /// At a cut, over budget and with every cut that took changes of the table written
    /// (`written`): drops the clean entries, keeping the changes this cut takes.
    fn evict_written(&mut self, written: u64, evictions: &std::sync::atomic::AtomicU64) {
        if self.cache_bytes <= self.cache_share.limit() || written < self.last_cut {
            return;
        }
        let before = self.cache.len();
        if self.dirty == 0 {
            self.cache = HashMap::default();
        } else {
            self.cache.retain(|_, entry| entry.dirty);
        }
        add(evictions, (before - self.cache.len()) as u64);
        self.cache_bytes = self
            .cache
            .iter()
            .map(|(key, entry)| entry_bytes(key, entry.value.as_deref()))
            .sum();
        self.pinned = 0;
    }

    /// The changes since the last cut, for cut number `cut` (`written`: the task's last cut
    /// in the store): they stay in the cache, pinned, until that cut is written.
    fn take(&mut self, cut: u64, written: u64) -> Vec<Change> {
        let mut changes = Vec::with_capacity(self.dirty);
        if self.dirty == 0 {
            return changes;
        }
        if written >= self.last_cut {
            // What earlier cuts pinned is in the store.
            self.pinned = 0;
        }
        // In key order: the store's memory table finds each key's place from the last one's
        // (RocksDB's insert hint), and the changelog gets a cut's changes in an order that
        // does not depend on the cache's hashing. Sorted as references, then copied.
        // Compared by their first 16 bytes as a number first (a windowed key's: the key and
        // most of its window's start), without a call, then by their bytes.
        let mut dirty: Vec<(u128, &Vec<u8>, &mut Entry)> = self
            .cache
            .iter_mut()
            .filter(|(_, entry)| entry.dirty)
            .map(|(key, entry)| (order_prefix(key), key, entry))
            .collect();
        dirty.sort_unstable_by(in_key_order);
        for (_, key, entry) in dirty {
            entry.dirty = false;
            entry.fresh = None;
            entry.cut = cut;
            self.pinned += entry_bytes(key, entry.value.as_deref());
            changes.push((key.clone(), entry.value.clone(), entry.timestamp));
        }
        self.dirty = 0;
        self.last_cut = cut;
        changes
    }

    /// Visits the changes since the last cut made in change pass `from` or later, without
    /// taking them.
    pub(crate) fn for_each_change(&self, from: u64, visit: &mut ChangeVisitor<'_>) {
        if self.dirty == 0 {
            return;
        }
        for (key, entry) in &self.cache {
            if entry.dirty && entry.pass >= from {
                visit(key, entry.value.as_deref(), entry.timestamp);
            }
        }
    }
}

/// A key's first 16 bytes (padded with zeros) as a number: keys whose numbers differ are in
/// the numbers' order, bytewise; keys whose numbers are equal are compared by their bytes.
fn order_prefix(key: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let len = key.len().min(16);
    bytes[..len].copy_from_slice(&key[..len]);
    u128::from_be_bytes(bytes)
}

/// The order of keys with their [`order_prefix`]: bytewise.
fn in_key_order<T>(a: &(u128, &Vec<u8>, T), b: &(u128, &Vec<u8>, T)) -> std::cmp::Ordering {
    a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1))
}

impl TaskContext {
    /// The index of table `name` among the task's tables.
    pub(crate) fn table_index(&self, name: &str) -> Option<usize> {
        self.tables().iter().position(|t| t.name == name)
    }

    /// The changes of every table of the partition since the last cut, for cut number
    /// `cut` (empty for tables without changes).
    pub(crate) fn take_changes(&self, cut: u64) -> Vec<DirtyTable> {
        self.tables()
            .iter_mut()
            .map(|table| {
                let changes = table.take(cut, self.written.through());
                (table.changelog.clone(), Arc::clone(&table.store), changes)
            })
            .collect()
    }

    /// The last cut that the stores must hold before the caches over budget can drop their
    /// clean entries (`None`: no cache is over budget, or nothing to wait for). Notes the
    /// largest cache for `Metrics::cache_peak_bytes` on the way (a cache is at its largest
    /// at a cut, before it drops anything).
    pub(crate) fn cut_to_evict(&self) -> Option<u64> {
        let written = self.written.through();
        let tables = self.tables();
        let largest = tables.iter().map(|table| table.cache_bytes).max().unwrap_or(0);
        if largest as u64 > self.metrics.cache_peak_bytes.load(Ordering::Relaxed) {
            self.metrics
                .cache_peak_bytes
                .fetch_max(largest as u64, Ordering::Relaxed);
        }
        tables
            .iter()
            .filter(|table| table.wants_cut() && table.last_cut > written)
            .map(|table| table.last_cut)
            .max()
    }

    /// Drops the clean entries of the caches over budget whose cuts are all written.
    /// Whether a table's cache is over its budget (clean entries wait to be dropped).
    pub(crate) fn over_budget(&self) -> bool {
        self.tables().iter().any(TableState::wants_cut)
    }

    pub(crate) fn evict_written(&self) {
        let written = self.written.through();
        for table in self.tables().iter_mut() {
            table.evict_written(written, &self.counts.cache_evictions);
        }
    }

    /// Writes `entries` of table number `index` again at the next cut (see
    /// `changelog::Restoration::restate`). Called before the partition processes anything.
    pub(crate) fn restate(&self, index: usize, entries: Vec<StoreEntry>) {
        let mut tables = self.tables();
        let Some(state) = tables.get_mut(index) else { return };
        // Nothing was processed yet, so no record's time applies. The value's own time is
        // not kept; the task's restored stream time is the latest it can be (the wall clock
        // only where there is none: a backfill's joins and windows must not jump to now).
        let now = match (self.stream_time(), self.event_time()) {
            (stream_time, _) if stream_time != super::NO_TIME => stream_time,
            (_, 0) => super::wall_clock_ms(),
            (_, time) => time,
        };
        for (key, value) in entries {
            let key_len = key.len();
            state.cache_bytes += entry_bytes(&key, value.as_deref());
            let old = state.cache.insert(
                key,
                Entry {
                    value,
                    dirty: true,
                    timestamp: now,
                    cut: 0,
                    pass: self.change_pass(),
                    fresh: None,
                },
            );
            if let Some(old) = &old {
                let replaced = key_len + old.value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD;
                state.cache_bytes = state.cache_bytes.saturating_sub(replaced);
            }
            if !old.is_some_and(|old| old.dirty) {
                state.dirty += 1;
            }
        }
    }

    /// Changes `key` of table `index` in place, now: from the cache, the store's memory, or
    /// the store's disk (the only blocking step, moved off the async executor's hands with
    /// `block_in_place` where the runtime can).
    pub(crate) fn update_now<T>(
        &self,
        index: usize,
        key: &[u8],
        change: impl FnOnce(&mut Option<Vec<u8>>) -> Result<T>,
    ) -> Result<T> {
        let (store, change) = {
            let mut tables = self.tables();
            let state = self.table_at_mut(&mut tables, index)?;
            match change_cached(self, state, key, change) {
                Ok(out) => {
                    bump(&self.counts.cache_hits);
                    return out;
                }
                Err(change) => {
                    bump(&self.counts.cache_misses);
                    (Arc::clone(&state.store), change)
                }
            }
        };
        let mut value = read_blocking(&*store, key)?;
        let out = change(&mut value)?;
        self.put_at(index, key.to_vec(), value)?;
        Ok(out)
    }

    fn table_at_mut<'t>(&self, tables: &'t mut [TableState], index: usize) -> Result<&'t mut TableState> {
        let name = &self.name;
        tables
            .get_mut(index)
            .ok_or_else(|| Error::Config(format!("task `{name}` has no table number {index}")))
    }

    /// Caches a value read from the store (clean).
    fn keep_clean(&self, index: usize, key: Vec<u8>, value: Option<Vec<u8>>) {
        let mut tables = self.tables();
        let Some(state) = tables.get_mut(index) else { return };
        if state.cache.contains_key(&key) {
            return;
        }
        state.cache_bytes += entry_bytes(&key, value.as_deref());
        state.cache.insert(
            key,
            Entry {
                value,
                dirty: false,
                timestamp: 0,
                cut: 0,
                pass: 0,
                fresh: None,
            },
        );
        if state.evict_clean(self.written.through(), &self.counts.cache_evictions) {
            self.cut_wanted.store(true, Ordering::Relaxed);
        }
    }

    /// The value of `key` in table `index`, now: from the cache, else from the store (a
    /// blocking read where it must, see [`TaskContext::update_now`]); not cached.
    pub(crate) fn get_now(&self, index: usize, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.cached(index, key)? {
            Ok(value) => Ok(value),
            Err(store) => read_blocking(&*store, key),
        }
    }

    /// `read` applied to the value of `key` in table `index` as [`TaskContext::get_now`]
    /// finds it, without copying a cached value. Blocks on the store: call off the async
    /// executor.
    pub(crate) fn read_now<T>(&self, index: usize, key: &[u8], read: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        let store = {
            let mut tables = self.tables();
            let state = self.table_at_mut(&mut tables, index)?;
            match state.cache.get(key) {
                Some(entry) => return Ok(entry.value.as_deref().map(read)),
                None => Arc::clone(&state.store),
            }
        };
        Ok(read_blocking(&*store, key)?.as_deref().map(read))
    }

    /// The cached value of `key` in table `index`, or the store to read it from.
    fn cached(&self, index: usize, key: &[u8]) -> Result<Cached> {
        let mut tables = self.tables();
        let state = self.table_at_mut(&mut tables, index)?;
        Ok(match state.cache.get(key) {
            Some(entry) => Ok(entry.value.clone()),
            None => Err(Arc::clone(&state.store)),
        })
    }

    /// Runs `work` on what an operation keeps beside table `index` for this partition,
    /// made by `make` from the table's store at the first call. `work` must not use the
    /// task's tables (they are locked meanwhile).
    pub(crate) fn with_extension<S: std::any::Any + Send, T>(
        &self,
        index: usize,
        make: impl FnOnce(&dyn StateStore) -> Result<S>,
        work: impl FnOnce(&mut S) -> T,
    ) -> Result<T> {
        let mut tables = self.tables();
        let state = self.table_at_mut(&mut tables, index)?;
        if state.extension.is_none() {
            let made = make(&*state.store)?;
            state.extension = Some(Box::new(made));
        }
        let name = state.name;
        let extension = state
            .extension
            .as_mut()
            .and_then(|e| e.downcast_mut::<S>())
            .ok_or_else(|| Error::Config(format!("table `{name}` is kept by two kinds of operation")))?;
        Ok(work(extension))
    }

    /// Writes `key` of table `index` (made durable at the next cut).
    pub(crate) fn put_at(&self, index: usize, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<()> {
        let mut tables = self.tables();
        let state = self.table_at_mut(&mut tables, index)?;
        put(self, state, key, value);
        Ok(())
    }

    /// Writes `key` of table `index`, a key the caller knows has no value in the table
    /// (an operation's index of its keys says so: a new session's window). Deleted again
    /// before anyone saw it (see [`Entry::fresh`]), it leaves no trace: a session grown by
    /// every record between two commit points sends one record to its changelog, not one
    /// tombstone per record.
    pub(crate) fn put_new_at(&self, index: usize, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        let mut tables = self.tables();
        let state = self.table_at_mut(&mut tables, index)?;
        if state.cache.contains_key(&key) {
            // A deletion not yet in the store: the key has had a value.
            put(self, state, key, Some(value));
        } else {
            let pass = self.change_pass();
            insert_dirty(self, state, key, Some(value), Some(pass));
        }
        Ok(())
    }

    /// Deletes `key` of table `index` as housekeeping at a commit point (an expired window,
    /// a buffered record no longer needed): the changelog gets its tombstone, but the
    /// table's listeners are not told (Kafka Streams sends no deletion for those either).
    pub(crate) fn expire_at(&self, index: usize, key: Vec<u8>) -> Result<()> {
        let mut tables = self.tables();
        let state = self.table_at_mut(&mut tables, index)?;
        let last = self.last_change_pass.load(Ordering::Relaxed);
        put(self, state, key.clone(), None);
        // Marked as made before any pass of this commit point: no listener gets it.
        if let Some(entry) = state.cache.get_mut(&key) {
            entry.pass = 0;
        }
        self.last_change_pass.store(last, Ordering::Relaxed);
        Ok(())
    }
}

/// A key's cached value, or (not cached) the store to read it from.
type Cached = std::result::Result<Option<Vec<u8>>, Arc<dyn StateStore>>;

/// Entries a scan found, in key order, and whether there were more past its limit.
pub(crate) type Scanned = (Vec<(Vec<u8>, Vec<u8>)>, bool);

impl TaskContext {
    /// The value of `key` in table `index` as it is now (changes not yet committed
    /// included): from the cache, else from the store. Blocks on the store: call off the
    /// async executor.
    pub(crate) fn lookup(&self, index: usize, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.cached(index, key)? {
            Ok(value) => Ok(value),
            Err(store) => store.get(key),
        }
    }

    /// The entries of table `index` with keys from `from` up to `to` (excluded; `None`:
    /// to the end) that `keep` accepts, as they are now, in key order, at most `limit`, and
    /// whether there were more. Blocks on the store: call off the async executor. The cache
    /// is copied first (the task goes on meanwhile), then the store is read in order, as far
    /// as the first `limit` entries need, and the copy laid over it. Stops early (with what
    /// it found) once the partition is revoked, so that its store can close.
    pub(crate) fn scan(
        &self,
        index: usize,
        from: &[u8],
        to: Option<&[u8]>,
        keep: &dyn Fn(&[u8]) -> bool,
        limit: usize,
    ) -> Result<Scanned> {
        self.scan_until(index, from, to, keep, limit, true)
    }

    /// Every entry of table `index` with keys from `from` up to `to` (excluded), as they
    /// are now, in key order, for the task's own work: unlike [`TaskContext::scan`] (for
    /// lookups from outside), it is not cut short when the partition is revoked, since the
    /// task's last commit may need it, and its store stays open until the task ends.
    pub(crate) fn scan_in_task(&self, index: usize, from: &[u8], to: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self.scan_until(index, from, to, &|_| true, usize::MAX, false)?.0)
    }

    fn scan_until(
        &self,
        index: usize,
        from: &[u8],
        to: Option<&[u8]>,
        keep: &dyn Fn(&[u8]) -> bool,
        limit: usize,
        stop_when_finishing: bool,
    ) -> Result<Scanned> {
        use std::collections::BTreeMap;
        let within = |key: &[u8]| key >= from && to.is_none_or(|to| key < to) && keep(key);
        let (store, cached) = {
            let mut tables = self.tables();
            let state = self.table_at_mut(&mut tables, index)?;
            let cached: BTreeMap<Vec<u8>, Option<Vec<u8>>> = state
                .cache
                .iter()
                .filter(|(key, _)| within(key))
                .map(|(key, entry)| (key.clone(), entry.value.clone()))
                .collect();
            (Arc::clone(&state.store), cached)
        };
        // The first `limit` entries of the whole are among the first `limit` of the store's
        // entries the cache does not replace, and the cache's: one more tells whether more.
        let mut found: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut from_store = 0usize;
        store.scan(from, to, &mut |key, value| {
            if stop_when_finishing && self.finishing.load(Ordering::Relaxed) {
                return false;
            }
            if !cached.contains_key(key) && keep(key) {
                from_store += 1;
                found.insert(key.to_vec(), value.to_vec());
            }
            from_store <= limit
        })?;
        for (key, value) in cached {
            if let Some(value) = value {
                found.insert(key, value);
            }
        }
        let more = found.len() > limit;
        Ok((found.into_iter().take(limit).collect(), more))
    }
}

/// Reads `key` from `store` where the caller stands: from memory when the store can answer
/// without the disk; else a blocking read, announced to a multi-threaded runtime.
pub(crate) fn read_blocking(store: &dyn StateStore, key: &[u8]) -> Result<Option<Vec<u8>>> {
    if let Some(value) = store.get_in_memory(key)? {
        return Ok(value);
    }
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| store.get(key)),
        _ => store.get(key),
    }
}

fn not_bound(ctx: &TaskContext, table: &str) -> Error {
    Error::NotDeclared {
        agent: ctx.name.to_string(),
        what: "table",
        key: "tables",
        name: table.to_string(),
    }
}

/// Reads a table key of the current partition and hands its bytes to `read`: the cache
/// first, then the store (off the async executor threads, in a boxed future so that the
/// common case, a cached key, keeps the future small).
pub(crate) async fn table_get<T, R>(table: &'static str, key: &[u8], read: R) -> Result<T>
where
    R: FnOnce(Option<&[u8]>) -> T,
{
    type Miss<R> = (Arc<TaskContext>, usize, Arc<dyn StateStore>, R);
    let lookup = with_current(
        || format!("table `{table}`"),
        |ctx| -> Result<std::result::Result<T, Miss<R>>> {
            let tables = ctx.tables();
            let index = tables
                .iter()
                .position(|t| t.name == table)
                .ok_or_else(|| not_bound(ctx, table))?;
            let state = &tables[index];
            Ok(match state.cache.get(key) {
                Some(entry) => {
                    bump(&ctx.counts.cache_hits);
                    Ok(read(entry.value.as_deref()))
                }
                None => {
                    bump(&ctx.counts.cache_misses);
                    Err((Arc::clone(ctx), index, Arc::clone(&state.store), read))
                }
            })
        },
    )??;
    match lookup {
        Ok(value) => Ok(value),
        Err((ctx, index, store, read)) => {
            let value = Box::pin(load(table, store, key.to_vec())).await?;
            ctx.keep_clean(index, key.to_vec(), value.clone());
            Ok(read(value.as_deref()))
        }
    }
}

/// Reads a key from the store: from its memory when it can answer without the disk, else
/// on a blocking thread.
async fn load(table: &'static str, store: Arc<dyn StateStore>, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
    if let Some(value) = store.get_in_memory(&key)? {
        return Ok(value);
    }
    tokio::task::spawn_blocking(move || store.get(&key))
        .await
        .map_err(|e| Error::Config(format!("table `{table}`: store read failed: {e}")))?
}

/// Changes a table key of the current partition in place: `change` gets the stored bytes
/// (`None`: missing) and rewrites them, reusing their buffer. The store is read (off the
/// executor, boxed) only when the key is not cached.
pub(crate) async fn table_update<T, F>(table: &'static str, key: &[u8], change: F) -> Result<T>
where
    F: FnOnce(&mut Option<Vec<u8>>) -> Result<T>,
{
    type Miss<F> = (Arc<TaskContext>, usize, Arc<dyn StateStore>, F);
    let attempt = with_current(
        || format!("table `{table}`"),
        |ctx| -> Result<std::result::Result<T, Miss<F>>> {
            let mut tables = ctx.tables();
            let index = tables
                .iter()
                .position(|t| t.name == table)
                .ok_or_else(|| not_bound(ctx, table))?;
            let state = &mut tables[index];
            match change_cached(ctx, state, key, change) {
                Ok(out) => {
                    bump(&ctx.counts.cache_hits);
                    Ok(Ok(out?))
                }
                Err(change) => {
                    bump(&ctx.counts.cache_misses);
                    Ok(Err((Arc::clone(ctx), index, Arc::clone(&state.store), change)))
                }
            }
        },
    )??;
    match attempt {
        Ok(out) => Ok(out),
        Err((ctx, index, store, change)) => {
            let mut value = Box::pin(load(table, store, key.to_vec())).await?;
            let out = change(&mut value)?;
            ctx.put_at(index, key.to_vec(), value)?;
            Ok(out)
        }
    }
}

/// Writes a table key of the current partition (made durable at the next cut).
pub(crate) fn table_put(table: &'static str, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<()> {
    with_current(
        || format!("table `{table}`"),
        |ctx| {
            let index = ctx.table_index(table).ok_or_else(|| not_bound(ctx, table))?;
            ctx.put_at(index, key, value)
        },
    )?
}

fn put(ctx: &TaskContext, state: &mut TableState, key: Vec<u8>, value: Option<Vec<u8>>) {
    // The key is usually cached: changed by reference, since `insert` would consume it.
    let mut value = Some(value);
    if change_cached(ctx, state, &key, |slot| {
        *slot = value.take().flatten();
        Ok(())
    })
    .is_ok()
    {
        return;
    }
    insert_dirty(ctx, state, key, value.flatten(), None);
}

/// Caches a change of `key`, which the cache does not hold.
fn insert_dirty(ctx: &TaskContext, state: &mut TableState, key: Vec<u8>, value: Option<Vec<u8>>, fresh: Option<u64>) {
    state.cache_bytes += entry_bytes(&key, value.as_deref());
    ctx.metrics
        .table_update(state.name, state.show_key, &key, value.as_deref());
    state.cache.insert(
        key,
        Entry {
            value,
            dirty: true,
            timestamp: ctx.event_time(),
            cut: 0,
            pass: ctx.change_pass(),
            fresh,
        },
    );
    state.dirty += 1;
    changed(ctx, state);
}

/// Applies `change` to the cached entry of `key` and accounts for it; gives `change` back
/// when the key is not cached.
fn change_cached<T, F>(
    ctx: &TaskContext,
    state: &mut TableState,
    key: &[u8],
    change: F,
) -> std::result::Result<Result<T>, F>
where
    F: FnOnce(&mut Option<Vec<u8>>) -> Result<T>,
{
    let Some(entry) = state.cache.get_mut(key) else {
        return Err(change);
    };
    let before = entry.value.as_ref().map_or(0, Vec::len);
    let out = match change(&mut entry.value) {
        Ok(out) => out,
        Err(error) => return Ok(Err(error)),
    };
    let after = entry.value.as_ref().map_or(0, Vec::len);
    let pass = ctx.change_pass();
    if entry.value.is_none() && entry.fresh == Some(pass) {
        // Made and deleted in this pass, seen by nobody (see `Entry::fresh`): gone.
        state.cache.remove(key);
        state.dirty = state.dirty.saturating_sub(1);
        state.cache_bytes = state.cache_bytes.saturating_sub(key.len() + before + ENTRY_OVERHEAD);
        ctx.metrics.table_update(state.name, state.show_key, key, None);
        bump(&ctx.counts.table_updates);
        return Ok(Ok(out));
    }
    if entry.fresh.is_some_and(|made| made != pass) {
        entry.fresh = None;
    }
    entry.timestamp = ctx.event_time();
    entry.pass = pass;
    if !entry.dirty {
        entry.dirty = true;
        state.dirty += 1;
        if entry.cut > ctx.written.through() {
            // Pinned until now: a change again, counted against the budget.
            state.pinned = state.pinned.saturating_sub(key.len() + before + ENTRY_OVERHEAD);
        }
    }
    state.cache_bytes = (state.cache_bytes + after).saturating_sub(before);
    ctx.metrics
        .table_update(state.name, state.show_key, key, entry.value.as_deref());
    changed(ctx, state);
    Ok(Ok(out))
}

/// Counts a table change; past the cache budget, asks the stream for a cut.
fn changed(ctx: &TaskContext, state: &TableState) {
    bump(&ctx.counts.table_updates);
    ctx.last_change_pass.fetch_max(ctx.change_pass(), Ordering::Relaxed);
    if state.wants_cut() {
        ctx.cut_wanted.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::{in_key_order, order_prefix};
    use proptest::prelude::*;

    proptest! {
        /// Sorted by their prefixes' numbers, then their bytes, keys are in bytewise order:
        /// keys of any length from 0 to 46 bytes, sharing prefixes, zero bytes included (a
        /// key and the same key followed by zeros pad to the same number).
        #[test]
        fn keys_sorted_by_prefix_then_bytes_are_in_bytewise_order(
            keys in proptest::collection::vec(
                (proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(255u8), any::<u8>()], 0..24), 0..24usize),
                0..60,
            ),
        ) {
            // Each key a shared stem (a window key's user) and a tail of its own.
            let stem = [b'u', 0, 0, 7, 255, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 0, 0, 0, 0, 0, 0];
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .map(|(tail, stem_len)| stem[..stem_len].iter().copied().chain(tail).collect())
                .collect();
            let mut by_prefix: Vec<(u128, &Vec<u8>, ())> = keys.iter().map(|k| (order_prefix(k), k, ())).collect();
            by_prefix.sort_unstable_by(in_key_order);
            let mut bytewise: Vec<&Vec<u8>> = keys.iter().collect();
            bytewise.sort();
            let sorted: Vec<&Vec<u8>> = by_prefix.into_iter().map(|(_, k, _)| k).collect();
            prop_assert_eq!(sorted, bytewise);
        }
    }
}

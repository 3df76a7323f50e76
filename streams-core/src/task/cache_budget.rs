//! What each table partition's cache may hold: `App::table_cache_bytes` for each, and, under
//! `--state-memory`, a total sized from it for all of a worker's table partitions together.
//!
//! Kafka Streams gives its record caches one total for an instance
//! (`statestore.cache.max.bytes`, split over its threads); here each table partition has a
//! cache of its own, so the total grew with the partitions a worker holds (64 partitions of
//! 1 MiB are 64 MiB of budget, and a cache holds up to twice its budget, see
//! `task/tables.rs`). Under a state memory budget the caches together get [`CACHE_SHARE`] of
//! it (beside RocksDB's, which is the whole budget), split evenly over the table partitions
//! held now, each at most `table_cache_bytes`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The table caches' part of `--state-memory`: a sixteenth (16 MiB of 256 MiB). A cache holds
/// up to twice its budget (see `task/tables.rs`), and the memory around it (the cut on its
/// way to the store, the allocator's own) as much again or more: measured with 64 partitions
/// under 256 MiB, the caches took ~80 MiB more than caches of 64 KiB (BENCHMARKS.md).
pub(crate) const CACHE_SHARE: usize = 16;

/// A share below this is said once in the log: changes coalesce less per key, and a
/// partition commits more often.
const SMALL_SHARE: usize = 64 << 10;

/// The budget of a worker's table caches (one per worker; the test driver's is per partition
/// only).
#[derive(Debug)]
pub(crate) struct CacheBudget {
    /// The most one table partition's cache may hold (`App::table_cache_bytes`).
    each: usize,
    /// What all of them together may hold (`None`: no bound over the partitions).
    total: Option<usize>,
    /// Table partitions holding a [`CacheShare`] now.
    held: AtomicUsize,
    /// Whether a share below [`SMALL_SHARE`] was logged.
    told: AtomicBool,
}

impl CacheBudget {
    /// `each` for every table partition, however many.
    pub(crate) fn per_partition(each: usize) -> Arc<Self> {
        Arc::new(Self {
            each,
            total: None,
            held: AtomicUsize::new(0),
            told: AtomicBool::new(false),
        })
    }

    /// `each` at most, and [`CACHE_SHARE`] of `state_memory` for all table partitions.
    pub(crate) fn within(each: usize, state_memory: usize) -> Arc<Self> {
        Arc::new(Self {
            each,
            total: Some(state_memory / CACHE_SHARE),
            held: AtomicUsize::new(0),
            told: AtomicBool::new(false),
        })
    }

    /// A table partition's share, counted until it is dropped.
    pub(crate) fn share(self: &Arc<Self>) -> CacheShare {
        let held = self.held.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = self.limit();
        if let Some(total) = self.total {
            if limit < SMALL_SHARE.min(self.each) && !self.told.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "table caches of {limit} bytes per table partition: their total ({total} bytes, a sixteenth of \
                     --state-memory) over the {held} table partitions this worker holds; a larger --state-memory gives \
                     them more (below 64 KiB, changes coalesce less and partitions commit more often)"
                );
            }
        }
        CacheShare(Arc::clone(self))
    }

    /// What each table partition's cache may hold now.
    fn limit(&self) -> usize {
        match self.total {
            None => self.each,
            Some(total) => self.each.min(total / self.held.load(Ordering::Relaxed).max(1)),
        }
    }
}

/// One table partition's part of a [`CacheBudget`]: smaller as the worker takes more table
/// partitions, larger as it gives them up.
#[derive(Debug)]
pub(crate) struct CacheShare(Arc<CacheBudget>);

impl CacheShare {
    /// The bytes this partition's cache may hold now.
    pub(crate) fn limit(&self) -> usize {
        self.0.limit()
    }
}

impl Drop for CacheShare {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_state_memory_budget_each_partition_gets_its_own() {
        let budget = CacheBudget::per_partition(1 << 20);
        let shares: Vec<CacheShare> = (0..64).map(|_| budget.share()).collect();
        assert!(shares.iter().all(|share| share.limit() == 1 << 20));
    }

    #[test]
    fn under_a_state_memory_budget_the_partitions_share_a_sixteenth_of_it() {
        let budget = CacheBudget::within(1 << 20, 256 << 20);
        // Few partitions: each gets its whole cache (16 MiB over 4 is more than 1 MiB).
        let mut shares: Vec<CacheShare> = (0..4).map(|_| budget.share()).collect();
        assert!(shares.iter().all(|share| share.limit() == 1 << 20));
        // 64 partitions: 16 MiB over 64.
        shares.extend((0..60).map(|_| budget.share()));
        assert!(shares.iter().all(|share| share.limit() == 256 << 10));
        assert_eq!(shares.iter().map(CacheShare::limit).sum::<usize>(), 16 << 20);
        // Given back: the others' shares grow again.
        shares.truncate(32);
        assert!(shares.iter().all(|share| share.limit() == 512 << 10));
        drop(shares);
        assert_eq!(budget.held.load(Ordering::Relaxed), 0);
        assert_eq!(budget.share().limit(), 1 << 20);
    }
}

//! Tables whose entries live for a while after their last update ([`crate::Table::ttl`]).
//!
//! Each such table has a table of its own, `{name}-ttl`, with its changelog: a key's time of
//! last update (8 bytes, big-endian ms), so that the times survive restarts and moves like
//! the entries. At each commit point, before the task's changes go on, the changes since the
//! last one record their times and the entries past their time are deleted (tombstones in
//! the changelog, and deletions for whatever listens to the table); after the changes went
//! on, the changes they made are recorded too.

use std::collections::{BTreeSet, HashMap};

use super::TaskContext;
use crate::spec::Ttl;
use crate::store::StateStore;
use crate::Result;

/// A TTL table's times in memory, by time: what tells which entries go next.
#[derive(Default)]
struct Times {
    by_key: HashMap<Box<[u8]>, i64>,
    by_time: BTreeSet<(i64, Box<[u8]>)>,
}

impl Times {
    /// The times of the entries of `table` from its times table `store`. An entry without
    /// one (state from before the table had a TTL) gets `since`; a time whose entry is gone
    /// (the TTL was off meanwhile) is left out.
    fn load(store: &dyn StateStore, table: &dyn StateStore, since: i64) -> Result<Self> {
        let mut kept: HashMap<Box<[u8]>, i64> = HashMap::new();
        crate::store::for_each_blocking(store, &mut |key, value| {
            if let Some(time) = time_of(value) {
                kept.insert(key.into(), time);
            }
        })?;
        let mut times = Self::default();
        crate::store::for_each_blocking(table, &mut |key, _| {
            times.set(key, kept.get(key).copied().unwrap_or(since));
        })?;
        Ok(times)
    }

    /// The time of `key`'s last update: the latest of its updates' times (a late record
    /// does not make an entry older).
    fn update(&mut self, key: &[u8], time: i64) -> i64 {
        let time = self.by_key.get(key).map_or(time, |old| time.max(*old));
        self.set(key, time);
        time
    }

    fn set(&mut self, key: &[u8], time: i64) {
        if let Some(old) = self.by_key.insert(key.into(), time) {
            self.by_time.remove(&(old, key.into()));
        }
        self.by_time.insert((time, key.into()));
    }

    /// Forgets `key`; whether it was known.
    fn remove(&mut self, key: &[u8]) -> bool {
        match self.by_key.remove(key) {
            Some(time) => {
                self.by_time.remove(&(time, key.into()));
                true
            }
            None => false,
        }
    }

    /// Takes out the keys whose time is `through` or before.
    fn expire(&mut self, through: i64) -> Vec<Box<[u8]>> {
        let mut gone = Vec::new();
        while let Some((time, _)) = self.by_time.first() {
            if *time > through {
                break;
            }
            if let Some((_, key)) = self.by_time.pop_first() {
                self.by_key.remove(&key);
                gone.push(key);
            }
        }
        gone
    }
}

fn time_of(value: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(value.try_into().ok()?))
}

/// A TTL table of a task: its index, its times table's index, and its TTL.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TtlTable {
    pub table: usize,
    pub times: usize,
    pub ttl: Ttl,
}

/// The task's TTL tables, given its tables' names and specs.
pub(crate) fn ttl_tables(names: &[&str], specs: &[crate::spec::TableSpec]) -> Box<[TtlTable]> {
    specs
        .iter()
        .filter_map(|spec| {
            let ttl = spec.ttl?;
            let table = names.iter().position(|n| *n == spec.name)?;
            let times_name = spec.ttl_table_name();
            let times = names.iter().position(|n| **n == *times_name)?;
            Some(TtlTable { table, times, ttl })
        })
        .collect()
}

impl TaskContext {
    /// At a commit point: records the times of the TTL tables' changes since the last one,
    /// and, with `expire`, deletes the entries past their time.
    pub(crate) fn keep_ttls(&self, expire: bool) -> Result<()> {
        for ttl_table in self.ttl_tables.iter() {
            self.keep_ttl(ttl_table, expire)?;
        }
        Ok(())
    }

    fn keep_ttl(&self, t: &TtlTable, expire: bool) -> Result<()> {
        let mut changes: Vec<(Vec<u8>, bool, i64)> = Vec::new();
        let mut store = None;
        if let Some(table) = self.tables().get(t.table) {
            store = Some(std::sync::Arc::clone(&table.store));
            table.for_each_change(0, &mut |key, value, timestamp| {
                changes.push((key.to_vec(), value.is_some(), timestamp));
            });
        }
        let Some(store) = store else { return Ok(()) };
        // The task's wall clock: this machine's, or the test driver's (`advance_time`).
        let wall_clock = self.wall_time();
        // Entries restored without a time start their TTL now.
        let since = match self.stream_time() {
            _ if t.ttl.wall_clock => wall_clock,
            super::NO_TIME => 0,
            time => time,
        };
        let load = |times: &dyn StateStore| Times::load(times, &*store, since);
        for (key, present, timestamp) in changes {
            let time = if t.ttl.wall_clock { wall_clock } else { timestamp };
            let (known, time) = self.with_extension(t.times, load, |times: &mut Times| {
                if present {
                    (true, times.update(&key, time))
                } else {
                    (times.remove(&key), time)
                }
            })?;
            if present {
                self.put_at(t.times, key, Some(time.to_be_bytes().to_vec()))?;
            } else if known {
                self.put_at(t.times, key, None)?;
            }
        }
        if !expire {
            return Ok(());
        }
        let now = if t.ttl.wall_clock {
            wall_clock
        } else {
            self.stream_time()
        };
        if now == super::NO_TIME {
            return Ok(());
        }
        let through = now.saturating_sub(t.ttl.after_ms);
        let gone = self.with_extension(t.times, load, |times: &mut Times| times.expire(through))?;
        if gone.is_empty() {
            return Ok(());
        }
        // The deletions carry the task's stream time (never the time of day: what reads them
        // downstream keeps event time).
        let event_time = self.event_time();
        let stream_time = self.stream_time();
        if stream_time != super::NO_TIME {
            self.set_event_time(stream_time);
        }
        let deleted = gone.into_iter().try_for_each(|key| {
            self.put_at(t.table, key.to_vec(), None)?;
            self.put_at(t.times, key.into_vec(), None)
        });
        self.set_event_time(event_time);
        deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_move_with_updates_and_expire_in_order() {
        let mut times = Times::default();
        times.update(b"a", 10);
        times.update(b"b", 5);
        assert_eq!(times.update(b"a", 30), 30);
        assert_eq!(times.update(b"a", 20), 30, "a late update does not age a key");
        assert_eq!(times.expire(10), vec![Box::from(&b"b"[..])], "a's time moved to 30");
        assert!(times.remove(b"a"));
        assert!(!times.remove(b"a"));
        assert!(times.expire(i64::MAX).is_empty());
        assert_eq!(time_of(&7i64.to_be_bytes()), Some(7));
        assert_eq!(time_of(b"short"), None);
    }

    #[test]
    fn entries_restored_without_a_time_get_one_and_times_of_gone_entries_are_left_out() {
        use crate::store::{Checkpoint, MemoryStore};
        let (times, table) = (MemoryStore::default(), MemoryStore::default());
        let write = |store: &MemoryStore, entries: Vec<(&[u8], Vec<u8>)>| {
            let entries: Vec<_> = entries.into_iter().map(|(k, v)| (k.to_vec(), Some(v))).collect();
            store.write(&entries, &Checkpoint::default()).expect("write");
        };
        write(&table, vec![(b"a", b"1".to_vec()), (b"b", b"2".to_vec())]);
        write(
            &times,
            vec![
                (b"a", 10i64.to_be_bytes().to_vec()),
                (b"gone", 5i64.to_be_bytes().to_vec()),
            ],
        );
        let mut loaded = Times::load(&times, &table, 99).expect("load");
        assert_eq!(
            loaded.expire(i64::MAX),
            vec![Box::from(&b"a"[..]), Box::from(&b"b"[..])]
        );
        let mut loaded = Times::load(&times, &table, 99).expect("load");
        assert_eq!(
            loaded.expire(98),
            vec![Box::from(&b"a"[..])],
            "b starts at 99; `gone` is not loaded"
        );
    }
}

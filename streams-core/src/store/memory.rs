//! The in-memory store: a sorted map and a checkpoint, for the test driver.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::{Checkpoint, StateStore};
use crate::Result;

/// A table partition in memory.
///
/// ```
/// use streams_core::store::{Checkpoint, MemoryStore, StateStore};
///
/// let store = MemoryStore::default();
/// let checkpoint = Checkpoint { changelog_offset: Some(0), sources: Some(vec![("hits".into(), 9)]), stream_time: Some(1_000), clocks: vec![] };
/// store.write(&[(b"k".to_vec(), Some(b"1".to_vec()))], &checkpoint).unwrap();
/// assert_eq!(store.get(b"k").unwrap(), Some(b"1".to_vec()));
/// assert_eq!(store.checkpoint().unwrap(), checkpoint);
/// assert_eq!(store.checkpoint().unwrap().source("hits"), Some(9));
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

type State = (BTreeMap<Vec<u8>, Vec<u8>>, Checkpoint);

impl MemoryStore {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StateStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.state().0.get(key).cloned())
    }

    fn get_in_memory(&self, key: &[u8]) -> Result<Option<Option<Vec<u8>>>> {
        self.get(key).map(Some)
    }

    fn write(&self, entries: &[(Vec<u8>, Option<Vec<u8>>)], checkpoint: &Checkpoint) -> Result<()> {
        let mut state = self.state();
        for (key, value) in entries {
            match value {
                Some(value) => state.0.insert(key.clone(), value.clone()),
                None => state.0.remove(key),
            };
        }
        if checkpoint.changelog_offset.is_some() {
            state.1.changelog_offset = checkpoint.changelog_offset;
        }
        if let Some(sources) = &checkpoint.sources {
            state.1.sources = Some(sources.clone());
        }
        if checkpoint.stream_time.is_some() {
            state.1.stream_time = checkpoint.stream_time;
        }
        if !checkpoint.clocks.is_empty() {
            state.1.clocks = checkpoint.clocks.clone();
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<Checkpoint> {
        let mut checkpoint = self.state().1.clone();
        checkpoint.sources.get_or_insert_with(Vec::new);
        Ok(checkpoint)
    }

    fn clear(&self) -> Result<()> {
        *self.state() = State::default();
        Ok(())
    }

    fn for_each(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        for (key, value) in self.state().0.iter() {
            visit(key, value);
        }
        Ok(())
    }

    fn scan(&self, from: &[u8], to: Option<&[u8]>, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        if to.is_some_and(|to| from >= to) {
            return Ok(());
        }
        let state = self.state();
        let upper = match to {
            Some(to) => std::ops::Bound::Excluded(to),
            None => std::ops::Bound::Unbounded,
        };
        for (key, value) in state.0.range::<[u8], _>((std::ops::Bound::Included(from), upper)) {
            if !visit(key, value) {
                break;
            }
        }
        Ok(())
    }

    fn range(&self, from: &[u8], to: &[u8], visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        let state = self.state();
        for (key, value) in state
            .0
            .range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Excluded(to)))
        {
            visit(key, value);
        }
        Ok(())
    }
}

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
/// store.write(&[(b"k".to_vec(), Some(b"1".to_vec()))], Checkpoint { changelog_offset: Some(0), source_offset: None }).unwrap();
/// assert_eq!(store.get(b"k").unwrap(), Some(b"1".to_vec()));
/// assert_eq!(store.checkpoint().unwrap().changelog_offset, Some(0));
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

    fn write(&self, entries: &[(Vec<u8>, Option<Vec<u8>>)], checkpoint: Checkpoint) -> Result<()> {
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
        if checkpoint.source_offset.is_some() {
            state.1.source_offset = checkpoint.source_offset;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<Checkpoint> {
        Ok(self.state().1)
    }

    fn for_each(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        for (key, value) in self.state().0.iter() {
            visit(key, value);
        }
        Ok(())
    }
}

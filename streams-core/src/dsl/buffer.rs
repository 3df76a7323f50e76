//! A table of records by key and event time: what sliding windows and windowed joins keep of
//! their input, in a table with a changelog like any other, and an index of it in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::codec::Key;
use crate::store::StateStore;

/// Records kept for a while by event time, per key (sliding windows keep those of the last
/// time difference + grace + 1 ms; windowed joins each side's of the join window + grace): their
/// key in a records table is the key's bytes, the event time and a sequence number (8 and
/// 4 bytes, big-endian), their value the record's value as JSON.
#[derive(Default)]
pub(crate) struct RecordBuffer {
    by_key: HashMap<Box<[u8]>, Records>,
    by_time: BTreeSet<(i64, Box<[u8]>)>,
}

pub(crate) fn record_key(key: &[u8], time: i64, seq: u32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(key.len() + 12);
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&time.to_be_bytes());
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes
}

pub(crate) fn split_record_key(bytes: &[u8]) -> Option<(&[u8], i64, u32)> {
    let at = bytes.len().checked_sub(12)?;
    let (key, rest) = bytes.split_at(at);
    let time = i64::from_be_bytes(rest[..8].try_into().ok()?);
    let seq = u32::from_be_bytes(rest[8..].try_into().ok()?);
    Some((key, time, seq))
}

/// A records-table key as text: the key, `@` the event time, `#` the sequence number.
pub(crate) fn show_record_key<K: Key>(bytes: &[u8]) -> String {
    match split_record_key(bytes) {
        Some((key, time, seq)) => format!("{}@{time}#{seq}", K::display_key(key)),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

impl RecordBuffer {
    pub(crate) fn load(store: &dyn StateStore) -> crate::Result<Self> {
        let mut buffer = Self::default();
        crate::store::for_each_blocking(store, &mut |bytes, value| {
            if let Some((key, time, seq)) = split_record_key(bytes) {
                buffer
                    .by_key
                    .entry(key.into())
                    .or_default()
                    .insert((time, seq), value.to_vec());
                buffer.by_time.insert((time, bytes.into()));
            }
        })?;
        Ok(buffer)
    }

    /// Adds a record; returns its key in the records table.
    pub(crate) fn add(&mut self, key: &[u8], time: i64, value: Vec<u8>) -> Vec<u8> {
        let records = self.by_key.entry(key.into()).or_default();
        let seq = records
            .range((time, 0)..=(time, u32::MAX))
            .next_back()
            .map_or(0, |((_, seq), _)| seq.saturating_add(1));
        records.insert((time, seq), value);
        let bytes = record_key(key, time, seq);
        self.by_time.insert((time, bytes.clone().into_boxed_slice()));
        bytes
    }

    /// The records of `key` with event times in `from..=to`, in order.
    pub(crate) fn records(&self, key: &[u8], from: i64, to: i64) -> Vec<(i64, Vec<u8>)> {
        self.by_key
            .get(key)
            .map(|records| {
                records
                    .range((from, 0)..=(to, u32::MAX))
                    .map(|((time, _), value)| (*time, value.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The records of `key` with event times in `from..=to`, in order, each with its key
    /// in the records table.
    pub(crate) fn records_keyed(&self, key: &[u8], from: i64, to: i64) -> Vec<(Vec<u8>, i64, Vec<u8>)> {
        self.by_key
            .get(key)
            .map(|records| {
                records
                    .range((from, 0)..=(to, u32::MAX))
                    .map(|((time, seq), value)| (record_key(key, *time, *seq), *time, value.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adds a record under its key in the records table (as [`RecordBuffer::add`] made it).
    pub(crate) fn insert(&mut self, bytes: &[u8], value: Vec<u8>) {
        if let Some((key, time, seq)) = split_record_key(bytes) {
            self.by_key.entry(key.into()).or_default().insert((time, seq), value);
            self.by_time.insert((time, bytes.into()));
        }
    }

    /// Takes the record with this key in the records table out; whether it was there.
    pub(crate) fn remove(&mut self, bytes: &[u8]) -> bool {
        let Some((key, time, seq)) = split_record_key(bytes) else {
            return false;
        };
        let Some(records) = self.by_key.get_mut(key) else {
            return false;
        };
        let was = records.remove(&(time, seq)).is_some();
        if records.is_empty() {
            self.by_key.remove(key);
        }
        self.by_time.remove(&(time, Box::from(bytes)));
        was
    }

    /// Takes the records at or before `through` for which `closed(bytes, time)` holds out of
    /// the buffer, with their values, in order of their time; the others stay where they are.
    pub(crate) fn expire_where(
        &mut self,
        through: i64,
        closed: impl Fn(&[u8], i64) -> bool,
    ) -> Vec<(Box<[u8]>, Vec<u8>)> {
        let chosen: Vec<(i64, Box<[u8]>)> = self
            .by_time
            .iter()
            .take_while(|(time, _)| *time <= through)
            .filter(|(time, bytes)| closed(bytes, *time))
            .cloned()
            .collect();
        let mut gone = Vec::with_capacity(chosen.len());
        for (time, bytes) in chosen {
            self.by_time.remove(&(time, bytes.clone()));
            if let Some((key, time, seq)) = split_record_key(&bytes) {
                if let Some(records) = self.by_key.get_mut(key) {
                    if let Some(value) = records.remove(&(time, seq)) {
                        gone.push((bytes.clone(), value));
                    }
                    if records.is_empty() {
                        self.by_key.remove(key);
                    }
                }
            }
        }
        gone
    }

    /// Takes the records at or before `through` out of the buffer, with their values, in
    /// order of their time.
    #[cfg(test)]
    pub(crate) fn expire_with_values(&mut self, through: i64) -> Vec<(Box<[u8]>, Vec<u8>)> {
        self.expire_where(through, |_, _| true)
    }

    /// Takes the records at or before `through` out of the buffer.
    pub(crate) fn expire(&mut self, through: i64) -> Vec<Box<[u8]>> {
        let mut gone = Vec::new();
        while self.by_time.first().is_some_and(|(time, _)| *time <= through) {
            if let Some((_, bytes)) = self.by_time.pop_first() {
                if let Some((key, time, seq)) = split_record_key(&bytes) {
                    if let Some(records) = self.by_key.get_mut(key) {
                        records.remove(&(time, seq));
                        if records.is_empty() {
                            self.by_key.remove(key);
                        }
                    }
                }
                gone.push(bytes);
            }
        }
        gone
    }
}

/// One key's records: by event time and sequence number, their values as JSON.
type Records = BTreeMap<(i64, u32), Vec<u8>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_buffer_numbers_records_of_one_time_and_expires_by_time() {
        let mut buffer = RecordBuffer::default();
        let first = buffer.add(b"k", 5, b"1".to_vec());
        let second = buffer.add(b"k", 5, b"2".to_vec());
        assert_eq!(split_record_key(&first), Some((&b"k"[..], 5, 0)));
        assert_eq!(split_record_key(&second), Some((&b"k"[..], 5, 1)));
        buffer.add(b"k", 9, b"3".to_vec());
        assert_eq!(buffer.records(b"k", 0, 6).len(), 2);
        assert_eq!(buffer.expire(5).len(), 2);
        assert_eq!(buffer.records(b"k", 0, 100), vec![(9, b"3".to_vec())]);
        assert_eq!(show_record_key::<String>(&record_key(b"k", 9, 0)), "k@9#0");
        let keyed = buffer.records_keyed(b"k", 9, 9);
        assert_eq!(keyed, vec![(record_key(b"k", 9, 0), 9, b"3".to_vec())]);
        assert!(buffer.remove(&keyed[0].0));
        assert!(!buffer.remove(&keyed[0].0), "removed once");
        buffer.insert(&record_key(b"j", 4, 7), b"4".to_vec());
        assert_eq!(
            buffer.expire_with_values(4),
            vec![(record_key(b"j", 4, 7).into_boxed_slice(), b"4".to_vec())]
        );
        assert!(buffer.records(b"j", 0, 100).is_empty());
    }
}

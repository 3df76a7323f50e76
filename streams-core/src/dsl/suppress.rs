//! [`KTable::suppress`]: a table's changes held back and sent on at most once per time
//! limit of stream time per key (Kafka Streams' `suppress(Suppressed.untilTimeLimit(..))`).
//!
//! A change goes into a buffer table (with a changelog, like every table: a new owner goes on
//! with what was held back). A key keeps the time of its first change since it last went on;
//! later changes replace its value, not its place. Once the suppression's stream time (the
//! latest time of the changes that reached it) is `limit` past that first time, the key's
//! latest value goes on, with the time of the change that made it. A full buffer sends its
//! oldest keys on early, or stops the worker, as chosen.
//!
//! A table's changes come at each commit point, coalesced per key, in no set order; so
//! what goes on is decided once all of a commit point's changes are in (a tick), not
//! change by change as Kafka Streams' processor does with each record: the outcome does not
//! depend on their order, and a value replaced in the same commit interval never goes on. The
//! buffer's bound is enforced there too, so it may be passed by one commit interval's
//! changes (which the table cache's budget bounds) until then.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::builder::NodeKind;
use super::node::{at_time, change_failed_in, guarded, ChangeFanout, ChangeListener, Cx, Outcome, TableSlot, Tick};
use super::table::KTable;
use crate::codec::Key;
use crate::spec::{KeyDisplay, TableSpec};
use crate::store::StateStore;
use crate::task::NO_TIME;

/// How a suppression holds back a table's changes ([`KTable::suppress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    limit: Duration,
    buffer: BufferConfig,
}

impl Suppressed {
    /// Each key goes on at most once per `limit` of stream time, with its latest value
    /// (Kafka Streams' `untilTimeLimit`): its first change since it last went on waits until
    /// the suppression's stream time is `limit` past it. `buffer` bounds what is held back.
    pub fn until_time_limit(limit: Duration, buffer: BufferConfig) -> Self {
        Self { limit, buffer }
    }
}

/// What a suppression may hold back, and what it does when that is full (Kafka Streams'
/// `BufferConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferConfig {
    max_records: Option<usize>,
    max_bytes: Option<usize>,
    shut_down_when_full: bool,
}

impl BufferConfig {
    /// No bound: every key changed within the time limit is held back.
    pub fn unbounded() -> Self {
        Self {
            max_records: None,
            max_bytes: None,
            shut_down_when_full: false,
        }
    }

    /// At most `records` keys held back; when one more comes, the oldest go on early.
    pub fn max_records(records: usize) -> Self {
        Self::unbounded().with_max_records(records)
    }

    /// At most `bytes` of keys and values held back; past it, the oldest go on early.
    pub fn max_bytes(bytes: usize) -> Self {
        Self::unbounded().with_max_bytes(bytes)
    }

    /// Bounds the keys held back as well.
    pub fn with_max_records(mut self, records: usize) -> Self {
        self.max_records = Some(records);
        self
    }

    /// Bounds the bytes held back as well.
    pub fn with_max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// When full, the oldest keys go on before their time (the default).
    pub fn emit_early_when_full(mut self) -> Self {
        self.shut_down_when_full = false;
        self
    }

    /// When full, the worker stops with an error rather than send a key on before its time
    /// (Kafka Streams' `shutDownWhenFull`): for results that must never come early.
    pub fn shut_down_when_full(mut self) -> Self {
        self.shut_down_when_full = true;
        self
    }

    fn full(&self, records: usize, bytes: usize) -> bool {
        self.max_records.is_some_and(|max| records > max) || self.max_bytes.is_some_and(|max| bytes > max)
    }
}

impl<K, V> KTable<K, V>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Holds back the table's changes (Kafka Streams' `suppress`): what goes on downstream
    /// (`to_stream`, `to`) is each key's latest value at most once per time limit of stream
    /// time, deletions included. The buffer is the table `{name}-suppress-store`, with its
    /// changelog. The table's own values are not suppressed: join the table before
    /// `suppress`, not after (that is refused when the app is made).
    ///
    /// ```
    /// use std::time::Duration;
    /// use streams_core::dsl::{BufferConfig, Suppressed};
    /// use streams_core::prelude::*;
    ///
    /// const CLICKS: Topic<String, i64> = Topic::new("clicks");
    /// const COUNTS: Table<String, i64> = Table::new("click-counts");
    /// const EVERY_MINUTE: Topic<String, i64> = Topic::new("click-counts-per-minute");
    ///
    /// let app = App::new("clicks").pipeline("clicks", |builder| {
    ///     builder
    ///         .stream(CLICKS)
    ///         .group_by_key()
    ///         .count(COUNTS)
    ///         .suppress(
    ///             "per-minute",
    ///             Suppressed::until_time_limit(Duration::from_secs(60), BufferConfig::max_records(10_000)),
    ///         )
    ///         .to(EVERY_MINUTE);
    /// });
    /// assert!(app.tasks()[0].tables.iter().any(|t| t.name == "per-minute-suppress-store"));
    /// ```
    pub fn suppress(self, name: &str, suppressed: Suppressed) -> KTable<K, V> {
        let graph = std::rc::Rc::clone(&self.graph);
        let mut g = graph.borrow_mut();
        if !super::builder::valid_name(name) {
            let error = format!(
                "pipeline `{}`: the suppression's name `{name}` names its store: use letters, digits, `.`, `_` and `-`",
                g.pipeline
            );
            g.errors.push(error);
        }
        let store: &'static str = Box::leak(format!("{name}-suppress-store").into_boxed_str());
        let spec = TableSpec {
            name: store,
            key_type: std::any::type_name::<K>(),
            value_type: "suppression buffer",
            show_key: KeyDisplay(K::display_key),
            faust: false,
            windowed: false,
            lookup: None,
            keeps_time: true,
            ttl: None,
        };
        let slot = g.table(self.group, spec);
        let node = g.node("suppress", NodeKind::Operation, vec![self.node], self.group);
        g.rename(node, name);
        let emitter = g.change_fanout();
        let limit = i64::try_from(suppressed.limit.as_millis()).unwrap_or(i64::MAX);
        let suppression = Suppression {
            store,
            slot,
            limit,
            buffer: suppressed.buffer,
            next: Arc::clone(&emitter),
        };
        let suppression = Arc::new(suppression);
        self.listen(&mut g, Arc::clone(&suppression) as Arc<dyn ChangeListener>);
        g.tick(self.group, suppression);
        drop(g);
        KTable::new(graph, self.name, self.slot.clone(), self.group, node).with_emitter(emitter)
    }
}

/// A buffered change as the buffer table keeps it: the time of the key's first change since
/// it last went on, the time of its latest, whether it has a value (a deletion has none),
/// then the value's bytes.
fn entry(since: i64, time: i64, value: Option<&[u8]>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(17 + value.map_or(0, <[u8]>::len));
    bytes.extend_from_slice(&since.to_be_bytes());
    bytes.extend_from_slice(&time.to_be_bytes());
    bytes.push(u8::from(value.is_some()));
    bytes.extend_from_slice(value.unwrap_or_default());
    bytes
}

/// The parts of a buffered change ([`entry`]): first time, latest time, value.
fn split_entry(bytes: &[u8]) -> Option<(i64, i64, Option<&[u8]>)> {
    let since = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let time = i64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    let value = bytes.get(17..)?;
    Some((since, time, (*bytes.get(16)? != 0).then_some(value)))
}

/// The buffer's keys in memory, by the time of their first change (the values stay in the
/// table): what tells which go on next.
#[derive(Default)]
struct Held {
    by_key: HashMap<Box<[u8]>, (i64, usize)>,
    by_time: BTreeSet<(i64, Box<[u8]>)>,
    bytes: usize,
}

impl Held {
    fn load(store: &dyn StateStore) -> crate::Result<Self> {
        let mut held = Self::default();
        crate::store::for_each_blocking(store, &mut |key, value| {
            if let Some((since, _, _)) = split_entry(value) {
                held.insert(key, since, key.len() + value.len());
            }
        })?;
        Ok(held)
    }

    /// Holds `key` back; a key already held keeps its first time. Returns that time.
    fn insert(&mut self, key: &[u8], since: i64, size: usize) -> i64 {
        match self.by_key.get_mut(key) {
            Some((first, held)) => {
                self.bytes = self.bytes - *held + size;
                *held = size;
                *first
            }
            None => {
                self.by_key.insert(key.into(), (since, size));
                self.by_time.insert((since, key.into()));
                self.bytes += size;
                since
            }
        }
    }

    /// The key held longest, with its first time.
    fn oldest(&self) -> Option<(i64, Box<[u8]>)> {
        self.by_time.first().cloned()
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some((since, size)) = self.by_key.remove(key) {
            self.by_time.remove(&(since, key.into()));
            self.bytes -= size;
        }
    }
}

/// The suppression: listens to a table's changes, holds them back in its buffer table and
/// sends them on to `next`.
struct Suppression {
    store: &'static str,
    slot: TableSlot,
    limit: i64,
    buffer: BufferConfig,
    next: Arc<ChangeFanout>,
}

impl Suppression {
    /// Sends the held-back change of `key` on and forgets it. A change whose way on fails
    /// (a closure downstream panics, a value cannot be encoded) takes the app's processing
    /// error handler, with the value held (the dead-letter topic by default), as a window's
    /// final result does: it is forgotten either way, and the others go on.
    fn release(&self, cx: &mut Cx<'_>, index: usize, key: &[u8]) -> Outcome {
        let failed = |e: crate::Error| format!("suppression `{}`: {e}", self.store);
        let stored = cx.ctx.get_now(index, key).map_err(failed)?;
        cx.ctx
            .with_extension(index, Held::load, |held: &mut Held| held.remove(key))
            .map_err(failed)?;
        let Some((_, time, value)) = stored.as_deref().and_then(split_entry) else {
            return Ok(());
        };
        // What it changes downstream carries the time of the change that goes on.
        let outcome = at_time(cx, time, |cx| guarded(|| self.next.change(cx, key, value)));
        cx.ctx.expire_at(index, key.to_vec()).map_err(failed)?;
        if let Err(error) = outcome {
            change_failed_in(cx, self.store, key.to_vec(), value.map(<[u8]>::to_vec), time, &error);
        }
        Ok(())
    }
}

impl ChangeListener for Suppression {
    /// Holds the change back: the key's latest value, at its first time while held.
    fn change(&self, cx: &mut Cx<'_>, key: &[u8], value: Option<&[u8]>) -> Outcome {
        let index = self.slot.get()?;
        let failed = |e: crate::Error| format!("suppression `{}`: {e}", self.store);
        cx.ctx.advance_clock(index, cx.timestamp);
        let size = key.len() + 17 + value.map_or(0, <[u8]>::len);
        let since = cx
            .ctx
            .with_extension(index, Held::load, |held: &mut Held| {
                held.insert(key, cx.timestamp, size)
            })
            .map_err(failed)?;
        cx.ctx
            .put_at(index, key.to_vec(), Some(entry(since, cx.timestamp, value)))
            .map_err(failed)
    }
}

impl Tick for Suppression {
    /// Once every change of the cut is in (whatever their order): the keys whose time is up
    /// go on, the longest held first; then, over the bound, the oldest go on early (or the
    /// worker stops).
    fn tick(&self, cx: &mut Cx<'_>) -> Outcome {
        let index = self.slot.get()?;
        let failed = |e: crate::Error| format!("suppression `{}`: {e}", self.store);
        let now = cx.ctx.clock(index);
        if now == NO_TIME {
            return Ok(());
        }
        let expired = now.saturating_sub(self.limit);
        let mut outcome = Ok(());
        loop {
            let due = cx
                .ctx
                .with_extension(index, Held::load, |held: &mut Held| {
                    held.oldest().filter(|(since, _)| *since <= expired)
                })
                .map_err(failed)?;
            let Some((_, key)) = due else { break };
            outcome = outcome.and(self.release(cx, index, &key));
        }
        loop {
            let oldest = cx
                .ctx
                .with_extension(index, Held::load, |held: &mut Held| {
                    self.buffer
                        .full(held.by_key.len(), held.bytes)
                        .then(|| held.oldest())
                        .flatten()
                })
                .map_err(failed)?;
            let Some((_, key)) = oldest else { break };
            if self.buffer.shut_down_when_full {
                let error = format!(
                    "suppression `{}` is full ({:?}) and was told to shut down when full rather than send changes \
                     on early",
                    self.store, self.buffer
                );
                cx.ctx.metrics.fail(error.clone());
                return Err(error);
            }
            outcome = outcome.and(self.release(cx, index, &key));
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffered_change_reads_back() {
        assert_eq!(split_entry(&entry(5, 9, Some(b"12"))), Some((5, 9, Some(&b"12"[..]))));
        assert_eq!(split_entry(&entry(-3, 7, None)), Some((-3, 7, None)));
        assert_eq!(split_entry(b"short"), None);
    }

    #[test]
    fn a_key_keeps_its_first_time_and_the_bytes_follow_its_latest_size() {
        let mut held = Held::default();
        assert_eq!(held.insert(b"a", 10, 20), 10);
        assert_eq!(held.insert(b"b", 5, 30), 5);
        assert_eq!(held.insert(b"a", 40, 25), 10, "not reset by a later change");
        assert_eq!(held.bytes, 55);
        assert_eq!(held.oldest().map(|(t, k)| (t, k.to_vec())), Some((5, b"b".to_vec())));
        held.remove(b"b");
        assert_eq!(held.bytes, 25);
        assert_eq!(held.oldest().map(|(t, _)| t), Some(10));
    }

    #[test]
    fn a_buffer_is_full_past_either_bound() {
        assert!(!BufferConfig::unbounded().full(usize::MAX, usize::MAX));
        assert!(BufferConfig::max_records(2).full(3, 0));
        assert!(!BufferConfig::max_records(2).full(2, 1 << 30));
        assert!(BufferConfig::max_records(2).with_max_bytes(10).full(1, 11));
    }
}

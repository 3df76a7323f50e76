//! Windowed aggregations (Kafka Streams' `windowedBy`): a grouped stream's records, per key
//! and per window of event time, aggregated into a [`WindowedTable`].
//!
//! Each record goes into the windows its event time falls in, unless they have closed: a
//! window closes once the aggregation's stream time (the largest event time of the records
//! that reached it, as Kafka Streams keeps per processor) is past its end by the grace period. A record whose windows have all closed is late: it is
//! dropped, counted (`Metrics::late`), logged at debug, and sent to the topic given with
//! `late_records_to`. Results go on either at every change (coalesced per commit interval,
//! like any table's `to_stream`) or once per window when it closes (`emit_final`). Windows
//! leave the table, as tombstones in its changelog, once past their retention (by default a
//! day; sliding windows when they close), at the next commit point.
//!
//! What a task keeps beside its windowed table: an index of the windows in it (by end, to
//! close and expire them in order; the open ones by key, to tell a fixed window that is new
//! to the table and to find the sessions a record joins), made from
//! the store at the task's first record, and, for
//! sliding windows, the records of the last time difference + grace + 1 ms (a second table,
//! `{table}-records`, with its own changelog), from which each window's result is computed.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;

use smallvec::SmallVec;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::buffer::{show_record_key, RecordBuffer};
use super::builder::{Graph, NodeKind};
use super::grouped::{read_value, write_value, KGroupedStream};
use super::node::{at_time, change_failed_in, guarded, sink, Cx, Fanout, Node, Outcome, TableSlot, Tick};
use super::table::KTable;
use crate::codec::{json, Key};
use crate::spec::{KeyDisplay, TableSpec};
use crate::store::StateStore;
use crate::table::WindowedTable;
use crate::task::NO_TIME;
use crate::topic::Topic;
use crate::window::{
    split_window_key, window_key, window_key_buffer, SessionWindows, SlidingWindows, TimeWindows, Window, Windowed,
};

/// The windows of an aggregation.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Fixed(TimeWindows),
    Sliding(SlidingWindows),
    Session(SessionWindows),
}

impl Kind {
    /// Windows ending at or before this are closed when stream time is `now`.
    fn closed_through(self, now: i64) -> i64 {
        if now == NO_TIME {
            return NO_TIME;
        }
        match self {
            // [start, end): closed once end + grace <= now.
            Kind::Fixed(w) => now.saturating_sub(w.grace),
            // [start, end]: closed once end + grace < now, as in Kafka Streams (a window is
            // updated while its end is at or past stream time - grace).
            Kind::Sliding(w) => now.saturating_sub(w.grace).saturating_sub(1),
            // Sessions: closed once end + gap + grace < now (a record within the gap would
            // still extend them).
            Kind::Session(w) => now.saturating_sub(w.gap).saturating_sub(w.grace).saturating_sub(1),
        }
    }

    /// Windows ending at or before this leave the table when stream time is `now`.
    fn expired_through(self, now: i64) -> i64 {
        if now == NO_TIME {
            return NO_TIME;
        }
        match self {
            // Kept `retention` from their start.
            Kind::Fixed(w) => now.saturating_sub(w.retention_ms()).saturating_add(w.size),
            Kind::Sliding(_) => self.closed_through(now),
            // Kept `retention` after their end.
            Kind::Session(w) => now.saturating_sub(w.retention_ms()).saturating_sub(1),
        }
    }

    /// What the topology calls these windows.
    fn name(self) -> &'static str {
        match self {
            Kind::Fixed(w) if w.advance == w.size => "tumbling",
            Kind::Fixed(_) => "hopping",
            Kind::Sliding(_) => "sliding",
            Kind::Session(_) => "session",
        }
    }

    fn check(self) -> Option<String> {
        match self {
            Kind::Fixed(w) => w.check(),
            Kind::Sliding(w) => w.check(),
            Kind::Session(w) => w.check(),
        }
    }
}

/// The windows in a windowed table partition: the open ones by key (to tell a fixed window
/// that is new to the table, and to find the sessions a record joins) and by end (to close
/// them in order), and the closed ones by end (to expire them in order). A closed window is
/// final and no record joins it, so it leaves `by_key` when it closes: a record's lookup
/// costs the key's open windows (a few), not every window the table keeps for its retention
/// (a day by default). For the same reason the closed windows wait apart from the open ones,
/// in order of their end, for their expiry.
///
/// The open windows by end are a heap, not an ordered set: a window enters it with a
/// comparison or two, and one that leaves before it closes (a session merged into a new
/// one) is only taken out of `by_key`; its entry in the heap is dropped when it comes up
/// (`by_key` no longer has it), or when such entries outnumber the open windows. A window
/// that leaves and comes back has two entries: the first to come up closes it, the other is
/// dropped.
struct WindowIndex {
    /// The open windows in order of their end (and key), first on top, with the entries of
    /// windows that left since and second entries of windows that came back (see above).
    /// Each ends after `closed_through`.
    open: BinaryHeap<Reverse<ByEnd>>,
    /// The closed windows, in order of their end (and key).
    closed: VecDeque<ByEnd>,
    /// The open windows of each key, as (start, end), in order. A key has a few (one or two
    /// of tumbling windows and sessions, about (size + grace) / advance of hopping ones, and
    /// of sliding windows two per record of the last time difference and grace, which close
    /// from the front).
    by_key: HashMap<Box<[u8]>, VecDeque<(i64, i64)>, foldhash::fast::RandomState>,
    /// How many windows `by_key` holds: `open` holds an entry for each, and those left
    /// behind.
    live: usize,
    /// Windows ending at or before this have closed (their final results went on).
    closed_through: i64,
}

impl WindowIndex {
    fn new(closed_through: i64) -> Self {
        Self {
            open: BinaryHeap::new(),
            closed: VecDeque::new(),
            by_key: HashMap::default(),
            live: 0,
            closed_through,
        }
    }

    fn load(store: &dyn StateStore, closed_through: i64) -> crate::Result<Self> {
        let mut index = Self::new(closed_through);
        // The store's order is the key's, not the end's: the closed ones are sorted once.
        let mut closed = Vec::new();
        let mut scan = || {
            store.for_each(&mut |key, _| match split_window_key(key) {
                Some((_, window)) if window.end <= closed_through => closed.push(ByEnd(window.end, key.into())),
                _ => index.insert(key),
            })
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(scan)?,
            _ => scan()?,
        }
        closed.sort_unstable();
        index.closed = closed.into();
        Ok(index)
    }

    /// Enters the window `window_key` (taken as it is where it is a `Vec` or a box).
    fn insert(&mut self, window_key: impl AsRef<[u8]> + Into<Box<[u8]>>) {
        let Some((key, window)) = split_window_key(window_key.as_ref()) else {
            return;
        };
        if window.end <= self.closed_through {
            // Not made by a record (its windows are open): kept in order all the same.
            if let Err(at) = self.find_closed(window.end, window_key.as_ref()) {
                self.closed.insert(at, ByEnd(window.end, window_key.into()));
            }
            return;
        }
        let range = (window.start, window.end);
        // Most windows are of a key the index knows: its bytes are copied only once.
        match self.by_key.get_mut(key) {
            Some(windows) => match windows.binary_search(&range) {
                Ok(_) => return,
                Err(at) => windows.insert(at, range),
            },
            None => {
                self.by_key.insert(key.into(), VecDeque::from([range]));
            }
        }
        self.live += 1;
        self.open.push(Reverse(ByEnd(window.end, window_key.into())));
    }

    /// Where the closed window `window_key` ending at `end` is, or would go.
    fn find_closed(&self, end: i64, window_key: &[u8]) -> Result<usize, usize> {
        self.closed
            .binary_search_by(|ByEnd(e, k)| (*e, &**k).cmp(&(end, window_key)))
    }

    fn remove(&mut self, window_key: &[u8]) {
        let Some((key, window)) = split_window_key(window_key) else {
            return;
        };
        if window.end <= self.closed_through {
            if let Ok(at) = self.find_closed(window.end, window_key) {
                self.closed.remove(at);
            }
            return;
        }
        if self.forget_open(key, window) {
            self.drop_left_entries();
        }
    }

    /// Takes `window` of `key` out of the index, as [`WindowIndex::remove`].
    fn remove_window(&mut self, key: &[u8], window: Window) {
        if window.end <= self.closed_through {
            self.remove(&window_key(key, window));
        } else if self.forget_open(key, window) {
            self.drop_left_entries();
        }
    }

    /// Makes the heap of open windows again without the entries of windows that left it
    /// (each once), when they outnumber the open windows: a key's long-lived session, merged
    /// into a new one at each record, would otherwise leave its entries behind until their
    /// ends close (with a long grace period, a day's). Each entry is made again at most once
    /// per entry left behind since the last time.
    fn drop_left_entries(&mut self) {
        if self.open.len() <= 2 * self.live + LEFT_ENTRIES_SLACK {
            return;
        }
        let mut entries = std::mem::take(&mut self.open).into_vec();
        entries.sort_unstable();
        entries.dedup();
        let by_key = &self.by_key;
        entries.retain(|Reverse(ByEnd(_, window_key))| match split_window_key(window_key) {
            Some((key, window)) => by_key
                .get(key)
                .is_some_and(|windows| windows.binary_search(&(window.start, window.end)).is_ok()),
            None => false,
        });
        self.open = entries.into();
    }

    /// Whether the table holds the window `window_key`, ending at `end`.
    fn knows(&self, end: i64, window_key: &[u8]) -> bool {
        if end <= self.closed_through {
            return self.find_closed(end, window_key).is_ok();
        }
        split_window_key(window_key).is_some_and(|(key, window)| {
            window.end == end
                && self
                    .by_key
                    .get(key)
                    .is_some_and(|windows| windows.binary_search(&(window.start, end)).is_ok())
        })
    }

    /// How many windows the table holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.live + self.closed.len()
    }

    /// Takes `window` of `key` out of the open windows by key; whether it was there.
    fn forget_open(&mut self, key: &[u8], window: Window) -> bool {
        let Some(windows) = self.by_key.get_mut(key) else {
            return false;
        };
        let Ok(at) = windows.binary_search(&(window.start, window.end)) else {
            return false;
        };
        windows.remove(at);
        if windows.is_empty() {
            self.by_key.remove(key);
        }
        self.live -= 1;
        true
    }

    /// Takes the next open window ending at or before `through` out of the open windows
    /// (passing the entries of those that left).
    fn next_open_through(&mut self, through: i64) -> Option<ByEnd> {
        while self.open.peek().is_some_and(|Reverse(ByEnd(end, _))| *end <= through) {
            let Reverse(window) = self.open.pop()?;
            if let Some((key, range)) = split_window_key(&window.1) {
                if self.forget_open(key, range) {
                    return Some(window);
                }
            }
        }
        None
    }

    /// The windows that closed since the last call, in order of their end (and key), when
    /// `collect`; either way they count as closed from now on.
    fn close(&mut self, through: i64, collect: bool) -> Vec<Box<[u8]>> {
        if through <= self.closed_through {
            return Vec::new();
        }
        self.closed_through = through;
        let mut collected = Vec::new();
        while let Some(window) = self.next_open_through(through) {
            if collect {
                collected.push(window.1.clone());
            }
            // Every closed window ends before every one closing now.
            self.closed.push_back(window);
        }
        self.drop_left_entries();
        collected
    }

    /// Takes the windows ending at or before `through` out of the index.
    fn expire(&mut self, through: i64) -> Vec<Box<[u8]>> {
        let mut gone = Vec::new();
        while self.closed.front().is_some_and(|ByEnd(end, _)| *end <= through) {
            if let Some(ByEnd(_, key)) = self.closed.pop_front() {
                gone.push(key);
            }
        }
        // Expired before it closed only with a retention shorter than the grace.
        while let Some(ByEnd(_, key)) = self.next_open_through(through) {
            gone.push(key);
        }
        self.drop_left_entries();
        gone
    }

    /// The open windows of `key` with a start at most `last_start` and an end at least
    /// `first_end`, in order of their start.
    fn overlapping(&self, key: &[u8], first_end: i64, last_start: i64) -> SmallVec<[Window; 2]> {
        self.by_key
            .get(key)
            .map(|windows| {
                windows
                    .iter()
                    .take_while(|(start, _)| *start <= last_start)
                    .filter(|(_, end)| *end >= first_end)
                    .map(|(start, end)| Window::new(*start, *end))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The windows a record made, as window keys (mostly one).
type Created = SmallVec<[Vec<u8>; 1]>;

/// How many entries of windows that left the heap of open windows may outnumber the open
/// windows by before it is made again (few in tests, to make it often).
const LEFT_ENTRIES_SLACK: usize = if cfg!(test) { 1 } else { 64 };

/// A window in the index's order: by end, then window key.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ByEnd(i64, Box<[u8]>);

type Add<K, V, A> = dyn Fn(&K, Option<A>, V) -> A + Send + Sync;
type Merge<K, A> = dyn Fn(&K, A, A) -> A + Send + Sync;

/// A windowed aggregation at work: the node its records reach, and what closes and expires
/// its windows at each commit point.
struct Aggregation<K, V, A> {
    table: &'static str,
    slot: TableSlot,
    /// Sliding windows: the records table.
    records: Option<(&'static str, TableSlot)>,
    kind: Kind,
    emit_final: bool,
    add: Box<Add<K, V, A>>,
    /// Sessions: combines two sessions' aggregates when a record merges them.
    merge: Option<Box<Merge<K, A>>>,
    finals: Arc<Fanout<Windowed<K>, A>>,
    late: Arc<Fanout<K, V>>,
}

fn failed(error: impl std::fmt::Display) -> String {
    error.to_string()
}

impl<K, V, A> Aggregation<K, V, A>
where
    K: Key,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Runs `work` on the task's index of this table's windows.
    fn with_index<T>(&self, cx: &Cx<'_>, index: usize, work: impl FnOnce(&mut WindowIndex) -> T) -> Result<T, String> {
        let closed = self.kind.closed_through(cx.ctx.start_clock(index));
        cx.ctx
            .with_extension(index, |store| WindowIndex::load(store, closed), work)
            .map_err(failed)
    }

    /// A record all of whose windows have closed.
    fn late(&self, cx: &mut Cx<'_>, key: K, value: V, time: i64) -> Outcome {
        cx.ctx.metrics.late.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            task = &*cx.ctx.name,
            "late record dropped from table `{}`: its event time {time} ms is past its windows' end and grace \
             period (stream time {} ms)",
            self.table,
            self.slot.get().map_or(NO_TIME, |index| cx.ctx.clock(index))
        );
        self.late.push(cx, key, value)
    }

    /// Enters the windows a record created (and drops those it merged away) into the index,
    /// and sends on the final results of the windows that closed meanwhile.
    /// `removed`: windows of the record's key (`key_bytes`).
    fn settle(&self, cx: &mut Cx<'_>, index: usize, created: Created, key_bytes: &[u8], removed: &[Window]) -> Outcome {
        let closed = self.kind.closed_through(cx.ctx.clock(index));
        let emit = self.emit_final;
        let closing = self.with_index(cx, index, |windows| {
            if removed.is_empty() {
                // Every record of fixed and sliding windows, a session's first record or one
                // within a session, a commit point's closing: nothing to sort out.
                for key in created {
                    windows.insert(key);
                }
                return windows.close(closed, emit);
            }
            // The new windows first: a session that grows stays known by its key throughout
            // (its key's entry is not dropped and made again).
            let made = |window: &Window| {
                created
                    .iter()
                    .any(|key| split_window_key(key) == Some((key_bytes, *window)))
            };
            let removed = removed.iter().filter(|window| !made(window)).copied();
            let removed: SmallVec<[Window; 2]> = removed.collect();
            for key in created {
                windows.insert(key);
            }
            for window in removed {
                windows.remove_window(key_bytes, window);
            }
            windows.close(closed, emit)
        })?;
        for window in closing {
            self.emit(cx, index, &window);
        }
        Ok(())
    }

    /// Sends a closed window's result on; one that fails goes to the dead-letter topic.
    fn emit(&self, cx: &mut Cx<'_>, index: usize, window_key: &[u8]) {
        // Decoded where it is (a copy of the stored bytes only for a result that fails).
        let value = match cx
            .ctx
            .read_now(index, window_key, |stored| json::decode::<A>(stored).map_err(failed))
        {
            Ok(Some(value)) => value,
            Ok(None) => return,
            Err(error) => {
                cx.ctx.metrics.fail(format!("table `{}`: {error}", self.table));
                return;
            }
        };
        let decoded = Windowed::<K>::decode_key(Some(window_key))
            .map_err(failed)
            .and_then(|key| Ok((key, value?)));
        let time = match (self.kind, split_window_key(window_key)) {
            // [start, end): the last moment in the window.
            (Kind::Fixed(_), Some((_, window))) => window.end - 1,
            (_, Some((_, window))) => window.end,
            (_, None) => cx.timestamp,
        };
        let outcome =
            decoded.and_then(|(key, value)| at_time(cx, time, |cx| guarded(|| self.finals.push(cx, key, value))));
        if let Err(error) = outcome {
            // What the table holds: nothing downstream of its results changes it.
            match cx.ctx.get_now(index, window_key) {
                Ok(stored) => change_failed_in(cx, self.table, window_key.to_vec(), stored, time, &error),
                Err(read) => cx
                    .ctx
                    .metrics
                    .fail(format!("table `{}`: {read} (after: {error})", self.table)),
            }
        }
    }

    /// Puts `value` into the window `window_key`, with `change`; whether it is new.
    fn update(
        &self,
        cx: &Cx<'_>,
        index: usize,
        window_key: &[u8],
        change: impl FnOnce(Option<A>) -> A,
    ) -> Result<bool, String> {
        let mut created = false;
        let table = self.table;
        cx.ctx
            .update_now(index, window_key, |stored| {
                created = stored.is_none();
                let old = read_value::<A>(stored.as_deref(), table)?;
                write_value(stored, &change(old), table)
            })
            .map_err(failed)?;
        Ok(created)
    }

    fn push_fixed(
        &self,
        cx: &mut Cx<'_>,
        index: usize,
        windows: TimeWindows,
        key: &K,
        key_bytes: &[u8],
        value: V,
    ) -> Outcome {
        let time = cx.timestamp;
        let closed = self.kind.closed_through(cx.ctx.clock(index));
        // A record of tumbling windows has one open window: a list only for the others.
        let (mut first, mut more) = (None, Vec::new());
        windows.each_window(time, |window| {
            if window.end > closed {
                match first {
                    None => first = Some(window),
                    Some(_) => more.push(window),
                }
            }
        });
        let Some(first) = first else {
            return self.late(cx, key.clone(), value, time);
        };
        let mut created = Created::new();
        let last = more.len();
        let mut value = Some(value);
        for (n, window) in std::iter::once(first).chain(more).enumerate() {
            let value = if n == last { value.take() } else { value.clone() };
            let Some(value) = value else { break };
            // On the stack: most records change a window the table has (owned only when new).
            let window_key = window_key_buffer(key_bytes, window);
            if self.with_index(cx, index, |windows| windows.knows(window.end, &window_key))? {
                self.update(cx, index, &window_key, |old| (self.add)(key, old, value))?;
            } else {
                // The index holds every window of the table: a window it does not know has no
                // value to read (on a cache miss, the store would be asked for nothing).
                debug_assert!(
                    cx.ctx.get_now(index, &window_key).ok().flatten().is_none(),
                    "a window of table `{}` the index does not know has a value",
                    self.table
                );
                let mut stored = None;
                write_value(&mut stored, &(self.add)(key, None, value), self.table).map_err(failed)?;
                cx.ctx
                    .put_new_at(index, window_key.to_vec(), stored.unwrap_or_default())
                    .map_err(failed)?;
                created.push(window_key.to_vec());
            }
        }
        self.settle(cx, index, created, key_bytes, &[])
    }

    fn push_session(
        &self,
        cx: &mut Cx<'_>,
        index: usize,
        sessions: SessionWindows,
        key: &K,
        key_bytes: &[u8],
        value: V,
    ) -> Outcome {
        let time = cx.timestamp;
        let closed = self.kind.closed_through(cx.ctx.clock(index));
        // Closed sessions are final: a record near one starts a session of its own.
        let near = self.with_index(cx, index, |windows| {
            windows.overlapping(
                key_bytes,
                time.saturating_sub(sessions.gap).max(closed.saturating_add(1)),
                time.saturating_add(sessions.gap),
            )
        })?;
        let merged = near.iter().fold(Window::new(time, time), |merged, session| {
            Window::new(merged.start.min(session.start), merged.end.max(session.end))
        });
        if merged.end <= closed {
            return self.late(cx, key.clone(), value, time);
        }
        let merged_key = window_key(key_bytes, merged);
        if let [only] = near.as_slice() {
            if *only == merged {
                // Within one session: it changes in place.
                self.update(cx, index, &merged_key, |old| (self.add)(key, old, value))?;
                return self.settle(cx, index, Created::new(), key_bytes, &[]);
            }
        }
        let mut aggregate: Option<A> = None;
        for session in &near {
            let session_key = window_key_buffer(key_bytes, *session);
            // Read and deleted in one operation: the merged session replaces it.
            let table = self.table;
            let stored = cx
                .ctx
                .update_now(index, &session_key, |slot| {
                    let value = read_value::<A>(slot.as_deref(), table)?;
                    *slot = None;
                    Ok(value)
                })
                .map_err(failed)?;
            if let Some(value) = stored {
                aggregate = Some(match (aggregate, &self.merge) {
                    (Some(before), Some(merge)) => merge(key, before, value),
                    (_, _) => value,
                });
            }
        }
        let new = (self.add)(key, aggregate, value);
        let mut stored = None;
        write_value(&mut stored, &new, self.table).map_err(failed)?;
        // The index holds every session of the table: this one is new to it.
        cx.ctx
            .put_new_at(index, merged_key.clone(), stored.unwrap_or_default())
            .map_err(failed)?;
        self.settle(cx, index, smallvec::smallvec![merged_key], key_bytes, &near)
    }

    fn push_sliding(
        &self,
        cx: &mut Cx<'_>,
        index: usize,
        windows: SlidingWindows,
        key: &K,
        key_bytes: &[u8],
        value: V,
    ) -> Outcome {
        let time = cx.timestamp;
        let difference = windows.difference;
        let closed = self.kind.closed_through(cx.ctx.clock(index));
        // The last window this record can change, the one starting just after it, ends
        // `difference` + 1 after it: late, as in Kafka Streams, when that window ends at or
        // before stream time - grace (t + 1 + difference <= stream time - grace; every window
        // holding the record has closed by then).
        if time.saturating_add(difference).saturating_add(1) <= closed.saturating_add(1) {
            return self.late(cx, key.clone(), value, time);
        }
        let Some((records_table, records_slot)) = &self.records else {
            return Err("sliding windows without their records table".into());
        };
        let records_index = records_slot.get()?;
        let bytes = serde_json::to_vec(&value).map_err(|e| format!("table `{records_table}`: {e}"))?;
        // Every window this record changes lies within `difference` of it.
        let nearby = cx
            .ctx
            .with_extension(records_index, RecordBuffer::load, |buffer: &mut RecordBuffer| {
                let stored = buffer.add(key_bytes, time, bytes.clone());
                let nearby = buffer.records(
                    key_bytes,
                    time.saturating_sub(difference),
                    time.saturating_add(difference).saturating_add(1),
                );
                (stored, nearby)
            })
            .map_err(failed)?;
        let (stored_key, nearby) = nearby;
        cx.ctx.put_at(records_index, stored_key, Some(bytes)).map_err(failed)?;
        // The windows that hold this record, or that it makes: its own (ending at it), those
        // of the records after it that reach back to it, those starting just after the
        // records before it that reach up to it, and the one starting just after it.
        let mut changed: BTreeSet<Window> = BTreeSet::new();
        // A record earlier than `difference` has no window ending at it: as in Kafka Streams,
        // the records in [0, difference] share that one window.
        let left = |end: i64| {
            if end < difference {
                Window::new(0, difference)
            } else {
                Window::new(end.saturating_sub(difference), end)
            }
        };
        let right = |after: i64| Window::new(after + 1, after + 1 + difference);
        changed.insert(left(time));
        for (other, _) in &nearby {
            if *other >= time && *other <= time + difference {
                changed.insert(left(*other));
            }
            if *other < time && *other >= time - difference - 1 {
                changed.insert(right(*other));
            }
        }
        if nearby
            .iter()
            .any(|(other, _)| *other > time && *other <= time + 1 + difference)
        {
            changed.insert(right(time));
        }
        let mut created = Created::new();
        for window in changed {
            if window.end <= closed {
                continue;
            }
            let mut aggregate: Option<A> = None;
            for (other, bytes) in &nearby {
                if *other < window.start || *other > window.end {
                    continue;
                }
                let value: V = json::decode(bytes).map_err(|e| format!("table `{records_table}`: {e}"))?;
                aggregate = Some((self.add)(key, aggregate, value));
            }
            let Some(aggregate) = aggregate else { continue };
            let window_key = window_key(key_bytes, window);
            if self.update(cx, index, &window_key, |_| aggregate)? {
                created.push(window_key);
            }
        }
        self.settle(cx, index, created, key_bytes, &[])
    }
}

impl<K, V, A> Node<K, V> for Aggregation<K, V, A>
where
    K: Key,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn push(&self, cx: &mut Cx<'_>, key: K, value: V) -> Outcome {
        let index = self.slot.get()?;
        if key.is_null() {
            return Err(format!(
                "a record without a key cannot be aggregated into table `{}`",
                self.table
            ));
        }
        // Like Kafka Streams' window processors, the aggregation keeps its own stream time:
        // records filtered out before it, or sent down another branch, do not close windows.
        cx.ctx.advance_clock(index, cx.timestamp);
        // Borrowed from the key where it is bytes already (a `String`'s).
        let key_bytes = key
            .key_bytes()
            .map_err(|e| format!("cannot encode a key of table `{}`: {e}", self.table))?;
        match self.kind {
            Kind::Fixed(windows) => self.push_fixed(cx, index, windows, &key, &key_bytes, value),
            Kind::Session(sessions) => self.push_session(cx, index, sessions, &key, &key_bytes, value),
            Kind::Sliding(windows) => self.push_sliding(cx, index, windows, &key, &key_bytes, value),
        }
    }
}

impl<K, V, A> Tick for Aggregation<K, V, A>
where
    K: Key,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// At a commit point, after the table's changes went on: closes the windows the
    /// aggregation's stream time has passed, and takes the expired ones out of the table
    /// (tombstones in this commit's changelog records).
    fn tick(&self, cx: &mut Cx<'_>) -> Outcome {
        let index = self.slot.get()?;
        self.settle(cx, index, Created::new(), &[], &[])?;
        let now = cx.ctx.clock(index);
        let expired = self.kind.expired_through(now);
        let gone = self.with_index(cx, index, |windows| windows.expire(expired))?;
        for window in gone {
            cx.ctx.expire_at(index, window.into_vec()).map_err(failed)?;
        }
        if let (Kind::Sliding(windows), Some((_, records_slot))) = (self.kind, &self.records) {
            // A record is needed while a window that holds it is open, and while the window
            // starting just after it is: that one ends last, at the record's time + the time
            // difference + 1, and a record that comes later into it (out of order) finds it
            // by this record. So a record stays until stream time is past it by the time
            // difference, the grace period and 1 ms.
            let through = now
                .saturating_sub(windows.difference)
                .saturating_sub(windows.grace)
                .saturating_sub(2);
            if now != NO_TIME {
                let records_index = records_slot.get()?;
                let gone = cx
                    .ctx
                    .with_extension(records_index, RecordBuffer::load, |buffer: &mut RecordBuffer| {
                        buffer.expire(through)
                    })
                    .map_err(failed)?;
                for record in gone {
                    cx.ctx.expire_at(records_index, record.into_vec()).map_err(failed)?;
                }
            }
        }
        Ok(())
    }
}

/// What a windowed stream is made of, whatever its windows.
struct Windowing<K, V> {
    graph: Rc<RefCell<Graph>>,
    fanout: Arc<Fanout<K, V>>,
    group: usize,
    node: usize,
    kind: Kind,
    emit_final: bool,
    late: Arc<Fanout<K, V>>,
}

impl<K, V> Windowing<K, V>
where
    K: Key,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn new(grouped: KGroupedStream<K, V>, kind: Kind) -> Self {
        let (graph, fanout, group, node) = grouped.into_parts();
        let late = graph.borrow_mut().fanout::<K, V>();
        if let Some(error) = kind.check() {
            let mut graph = graph.borrow_mut();
            let error = format!("pipeline `{}`: {error}", graph.pipeline);
            graph.errors.push(error);
        }
        Self {
            graph,
            fanout,
            group,
            node,
            kind,
            emit_final: false,
            late,
        }
    }

    fn late_records_to(self, topic: Topic<K, V>) -> Self {
        self.graph.borrow_mut().sink_node(self.group, topic.spec(), self.node);
        self.late
            .add(sink::<K, V>(Arc::from(topic.name()), topic.value_codec()));
        self
    }

    fn aggregate_into<A>(
        self,
        op: &str,
        table: WindowedTable<K, A>,
        add: Box<Add<K, V, A>>,
        merge: Option<Box<Merge<K, A>>>,
    ) -> KTable<Windowed<K>, A>
    where
        A: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let (slot, records, table_node, finals) = {
            let mut graph = self.graph.borrow_mut();
            let spec = table.spec();
            let slot = graph.table(self.group, spec.clone());
            let records = match self.kind {
                Kind::Sliding(_) => {
                    // Named once per pipeline build; the name lives as long as the app.
                    let name: &'static str = Box::leak(format!("{}-records", table.name()).into_boxed_str());
                    let records = TableSpec {
                        name,
                        key_type: std::any::type_name::<K>(),
                        value_type: std::any::type_name::<V>(),
                        show_key: KeyDisplay(show_record_key::<K>),
                        faust: false,
                        windowed: false,
                        lookup: None,
                        keeps_time: false,
                        ttl: None,
                    };
                    Some((name, graph.table(self.group, records)))
                }
                _ => None,
            };
            let changelog = spec.changelog_topic(&graph.app_id);
            let op = format!("{}-{op}", self.kind.name());
            let aggregation = graph.node(&op, NodeKind::Operation, vec![self.node], self.group);
            let table_node = graph.node(
                table.name(),
                NodeKind::Table {
                    table: table.name().to_string(),
                    changelog,
                },
                vec![aggregation],
                self.group,
            );
            (slot, records, table_node, graph.fanout::<Windowed<K>, A>())
        };
        let aggregation = Arc::new(Aggregation {
            table: table.name(),
            slot: slot.clone(),
            records,
            kind: self.kind,
            emit_final: self.emit_final,
            add,
            merge,
            finals: Arc::clone(&finals),
            late: self.late,
        });
        self.fanout.add(Arc::clone(&aggregation) as Arc<dyn Node<K, V>>);
        self.graph.borrow_mut().tick(self.group, aggregation);
        let table = KTable::new(self.graph, table.name(), slot, self.group, table_node);
        if self.emit_final {
            table.with_finals(finals)
        } else {
            table
        }
    }
}

/// Windows a grouped stream can be aggregated in: [`TimeWindows`] and [`SlidingWindows`]
/// give a [`TimeWindowedKStream`], [`SessionWindows`] a [`SessionWindowedKStream`].
pub trait WindowsOf<K, V> {
    /// The windowed stream.
    type Stream;
    /// The grouped stream in these windows.
    fn window(self, grouped: KGroupedStream<K, V>) -> Self::Stream;
}

impl<K, V> WindowsOf<K, V> for TimeWindows
where
    K: Key,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Stream = TimeWindowedKStream<K, V>;
    fn window(self, grouped: KGroupedStream<K, V>) -> Self::Stream {
        TimeWindowedKStream(Windowing::new(grouped, Kind::Fixed(self)))
    }
}

impl<K, V> WindowsOf<K, V> for SlidingWindows
where
    K: Key,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Stream = TimeWindowedKStream<K, V>;
    fn window(self, grouped: KGroupedStream<K, V>) -> Self::Stream {
        TimeWindowedKStream(Windowing::new(grouped, Kind::Sliding(self)))
    }
}

impl<K, V> WindowsOf<K, V> for SessionWindows
where
    K: Key,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Stream = SessionWindowedKStream<K, V>;
    fn window(self, grouped: KGroupedStream<K, V>) -> Self::Stream {
        SessionWindowedKStream(Windowing::new(grouped, Kind::Session(self)))
    }
}

/// A grouped stream in time windows, tumbling, hopping or sliding (Kafka Streams'
/// `TimeWindowedKStream`): aggregate it into a [`WindowedTable`].
///
/// ```
/// use std::time::Duration;
/// use streams_core::prelude::*;
///
/// #[record]
/// #[derive(Clone)]
/// struct Hit { hits: i64, user: String, timestamp: f64 }
///
/// const HITS: Topic<(), Hit> = Topic::new("hits").event_time(|hit| (hit.timestamp * 1000.0) as i64);
/// const PER_MINUTE: WindowedTable<String, i64> = WindowedTable::new("hits-per-minute");
/// const MINUTES: Topic<Windowed<String>, i64> = Topic::new("hits-per-minute");
///
/// let app = App::new("minutes").pipeline("count", |builder| {
///     builder
///         .stream(HITS)
///         .group_by("by-user", |_, hit| hit.user.clone())
///         .windowed_by(TimeWindows::of(Duration::from_secs(60)).grace(Duration::from_secs(10)))
///         .emit_final()
///         .aggregate(PER_MINUTE, || 0, |_, hit, total| total + hit.hits)
///         .to_stream()
///         .to(MINUTES);
/// });
/// # assert!(app.pipelines()[0].errors.is_empty());
/// ```
#[must_use = "a windowed stream does nothing until it is aggregated (`count`, `reduce`, `aggregate`)"]
pub struct TimeWindowedKStream<K, V>(Windowing<K, V>);

impl<K, V> TimeWindowedKStream<K, V>
where
    K: Key,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Sends each window's result on once, when it closes (Kafka Streams' emit strategy
    /// `onWindowClose`, or `suppress(untilWindowCloses)`), instead of at every change. After
    /// a crash, at-least-once may send a final result again; it never loses one.
    pub fn emit_final(mut self) -> Self {
        self.0.emit_final = true;
        self
    }

    /// Sends late records (those whose windows have all closed) to `topic`, besides
    /// counting them.
    pub fn late_records_to(self, topic: Topic<K, V>) -> Self {
        Self(self.0.late_records_to(topic))
    }

    /// Counts the records of each key and window.
    pub fn count(self, table: WindowedTable<K, i64>) -> KTable<Windowed<K>, i64> {
        self.0
            .aggregate_into("count", table, Box::new(|_, count, _| count.unwrap_or(0) + 1), None)
    }

    /// Combines the records of each key and window: the first value as it is, then
    /// `reducer(aggregate, value)`.
    pub fn reduce(
        self,
        table: WindowedTable<K, V>,
        reducer: impl Fn(V, V) -> V + Send + Sync + 'static,
    ) -> KTable<Windowed<K>, V> {
        self.0.aggregate_into(
            "reduce",
            table,
            Box::new(move |_, aggregate, value| match aggregate {
                Some(aggregate) => reducer(aggregate, value),
                None => value,
            }),
            None,
        )
    }

    /// Folds the records of each key and window, starting from `init()`:
    /// `adder(key, value, aggregate)` is the new aggregate.
    pub fn aggregate<A>(
        self,
        table: WindowedTable<K, A>,
        init: impl Fn() -> A + Send + Sync + 'static,
        adder: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
    ) -> KTable<Windowed<K>, A>
    where
        A: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.0.aggregate_into(
            "aggregate",
            table,
            Box::new(move |key, aggregate, value| adder(key, value, aggregate.unwrap_or_else(&init))),
            None,
        )
    }
}

/// A grouped stream in session windows (Kafka Streams' `SessionWindowedKStream`): aggregate
/// it into a [`WindowedTable`] whose windows are sessions, `[first record, last record]`.
///
/// ```
/// use std::time::Duration;
/// use streams_core::prelude::*;
///
/// #[record]
/// #[derive(Clone)]
/// struct Click { user: String }
///
/// const CLICKS: Topic<String, Click> = Topic::new("clicks");
/// const SESSIONS: WindowedTable<String, i64> = WindowedTable::new("click-sessions");
///
/// let app = App::new("sessions").pipeline("sessions", |builder| {
///     builder
///         .stream(CLICKS)
///         .group_by_key()
///         .windowed_by(SessionWindows::with_inactivity_gap(Duration::from_secs(30)))
///         .count(SESSIONS);
/// });
/// # assert!(app.pipelines()[0].errors.is_empty());
/// ```
#[must_use = "a windowed stream does nothing until it is aggregated (`count`, `reduce`, `aggregate`)"]
pub struct SessionWindowedKStream<K, V>(Windowing<K, V>);

impl<K, V> SessionWindowedKStream<K, V>
where
    K: Key,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Sends each session's result on once, when it closes (see
    /// [`TimeWindowedKStream::emit_final`]).
    pub fn emit_final(mut self) -> Self {
        self.0.emit_final = true;
        self
    }

    /// Sends late records (those that fall in no open session) to `topic`, besides
    /// counting them.
    pub fn late_records_to(self, topic: Topic<K, V>) -> Self {
        Self(self.0.late_records_to(topic))
    }

    /// Counts the records of each session.
    pub fn count(self, table: WindowedTable<K, i64>) -> KTable<Windowed<K>, i64> {
        self.0.aggregate_into(
            "count",
            table,
            Box::new(|_, count, _| count.unwrap_or(0) + 1),
            Some(Box::new(|_, a, b| a + b)),
        )
    }

    /// Combines the records of each session: the first value as it is, then
    /// `reducer(aggregate, value)`; merged sessions combine with it too.
    pub fn reduce(
        self,
        table: WindowedTable<K, V>,
        reducer: impl Fn(V, V) -> V + Send + Sync + 'static,
    ) -> KTable<Windowed<K>, V> {
        let reducer = Arc::new(reducer);
        let merger = Arc::clone(&reducer);
        self.0.aggregate_into(
            "reduce",
            table,
            Box::new(move |_, aggregate, value| match aggregate {
                Some(aggregate) => reducer(aggregate, value),
                None => value,
            }),
            Some(Box::new(move |_, a, b| merger(a, b))),
        )
    }

    /// Folds the records of each session, starting from `init()`: `adder(key, value,
    /// aggregate)`; when a record merges two sessions, `merger(key, a, b)` combines their
    /// aggregates first (Kafka Streams' session `aggregate`).
    pub fn aggregate<A>(
        self,
        table: WindowedTable<K, A>,
        init: impl Fn() -> A + Send + Sync + 'static,
        adder: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        merger: impl Fn(&K, A, A) -> A + Send + Sync + 'static,
    ) -> KTable<Windowed<K>, A>
    where
        A: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.0.aggregate_into(
            "aggregate",
            table,
            Box::new(move |key, aggregate, value| adder(key, value, aggregate.unwrap_or_else(&init))),
            Some(Box::new(merger)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str, start: i64, end: i64) -> Vec<u8> {
        window_key(k.as_bytes(), Window::new(start, end))
    }

    #[test]
    fn the_index_closes_each_window_once_in_order_and_expires_the_oldest() {
        let mut index = WindowIndex::new(NO_TIME);
        for (k, s, e) in [("b", 0, 10), ("a", 0, 10), ("a", 10, 20), ("a", 25, 30)] {
            index.insert(key(k, s, e));
        }
        let closing: Vec<Vec<u8>> = index.close(10, true).into_iter().map(Vec::from).collect();
        assert_eq!(closing, vec![key("a", 0, 10), key("b", 0, 10)]);
        assert!(index.close(10, true).is_empty(), "closed once");
        assert!(index.close(5, true).is_empty(), "stream time does not go back");
        assert_eq!(index.close(25, true).len(), 1);
        assert_eq!(
            index.overlapping(b"a", 15, 100).to_vec(),
            vec![Window::new(25, 30)],
            "a closed window is final: no record finds it"
        );
        let gone: Vec<Vec<u8>> = index.expire(10).into_iter().map(Vec::from).collect();
        assert_eq!(gone, vec![key("a", 0, 10), key("b", 0, 10)]);
        assert_eq!(index.overlapping(b"b", 0, 100).to_vec(), vec![]);
        index.remove(&key("a", 10, 20));
        assert_eq!(index.overlapping(b"a", 0, 100).to_vec(), vec![Window::new(25, 30)]);
    }

    /// Closed windows wait for their expiry apart from the open ones, in order of their end
    /// and key, however they came: closed by stream time, loaded from the store (in the
    /// store's order, by key), or entered closed.
    #[test]
    fn closed_windows_are_known_and_expire_in_order_wherever_they_came_from() {
        use crate::store::{Checkpoint, MemoryStore};
        let fixed = |k: &str, start: i64| key(k, start, start + 10);
        let mut index = WindowIndex::new(NO_TIME);
        for (k, start) in [("b", 0), ("a", 10), ("a", 0), ("c", 20), ("b", 10)] {
            index.insert(fixed(k, start));
        }
        assert!(index.close(20, false).is_empty(), "not collected");
        assert_eq!((index.live, index.closed.len()), (1, 4));
        for (k, start) in [("a", 0), ("b", 0), ("a", 10), ("b", 10), ("c", 20)] {
            assert!(index.knows(start + 10, &fixed(k, start)), "{k} {start}");
        }
        assert!(!index.knows(10, &fixed("c", 0)));
        // Entered closed, out of order; removed closed.
        index.insert(fixed("c", 0));
        index.insert(fixed("c", 0));
        index.remove(&fixed("b", 10));
        assert!(!index.knows(20, &fixed("b", 10)));
        let expected = vec![
            fixed("a", 0),
            fixed("b", 0),
            fixed("c", 0),
            fixed("a", 10),
            fixed("c", 20),
        ];
        let store = MemoryStore::default();
        let entries: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            expected.iter().map(|k| (k.clone(), Some(b"1".to_vec()))).collect();
        store.write(&entries, &Checkpoint::default()).expect("write");
        let mut loaded = WindowIndex::load(&store, 20).expect("load");
        assert_eq!((loaded.live, loaded.closed.len()), (1, 4));
        for index in [&mut index, &mut loaded] {
            let gone: Vec<Vec<u8>> = index.expire(i64::MAX).into_iter().map(Vec::from).collect();
            assert_eq!(gone, expected, "by end, then key: the open one last");
            assert_eq!(index.len(), 0);
        }
    }

    #[test]
    fn two_sessions_of_a_key_with_one_start_are_both_known_until_each_expires() {
        let mut index = WindowIndex::new(NO_TIME);
        index.insert(key("a", 0, 5));
        index.insert(key("a", 0, 8));
        assert!(index.knows(5, &key("a", 0, 5)) && index.knows(8, &key("a", 0, 8)));
        assert!(!index.knows(8, &key("a", 0, 5)) && !index.knows(5, &key("b", 0, 5)));
        assert_eq!(
            index.overlapping(b"a", 0, 10).to_vec(),
            vec![Window::new(0, 5), Window::new(0, 8)]
        );
        assert_eq!(index.expire(5), vec![Box::from(key("a", 0, 5))]);
        assert_eq!(index.overlapping(b"a", 0, 10).to_vec(), vec![Window::new(0, 8)]);
        index.remove(&key("a", 0, 8));
        assert!(index.overlapping(b"a", 0, 10).is_empty());
        assert!(index.by_key.is_empty());
        assert!(index.len() == 0 && !index.knows(8, &key("a", 0, 8)));
    }

    #[test]
    fn a_keys_closed_sessions_leave_its_lookup_when_they_close_and_after_a_restart() {
        let mut index = WindowIndex::new(NO_TIME);
        // A day of one user's sessions, one every 10 minutes: all kept for the retention.
        for n in 0..144 {
            index.insert(key("a", n * 600_000, n * 600_000 + 60_000));
        }
        let closed = index.close(143 * 600_000, true);
        assert_eq!(closed.len(), 143);
        assert_eq!(index.len(), 144, "kept until they expire");
        assert_eq!(
            index.by_key[&b"a"[..]].len(),
            1,
            "a record's lookup sees the open session only"
        );
        assert_eq!(
            index.overlapping(b"a", 0, i64::MAX).to_vec(),
            vec![Window::new(143 * 600_000, 143 * 600_000 + 60_000)]
        );
        // Loaded again (a restart): the closed ones are not keyed either.
        let mut again = WindowIndex::new(143 * 600_000);
        let open = index.open.iter().map(|Reverse(window)| window);
        for ByEnd(_, window_key) in index.closed.iter().chain(open) {
            again.insert(&**window_key);
        }
        assert_eq!(again.by_key[&b"a"[..]].len(), 1);
        assert_eq!(
            again.close(143 * 600_000 + 60_000, true),
            vec![Box::from(key("a", 143 * 600_000, 143 * 600_000 + 60_000))],
            "only the open one closes after the restart"
        );
        assert!(again.by_key.is_empty());
        // Not emitting final results, closing still takes them out.
        let mut quiet = WindowIndex::new(NO_TIME);
        quiet.insert(key("a", 0, 10));
        quiet.insert(key("a", 50, 60));
        assert!(quiet.close(10, false).is_empty());
        assert_eq!(quiet.overlapping(b"a", 0, 100).to_vec(), vec![Window::new(50, 60)]);
    }

    /// What the index does, written plainly: every window in one ordered set.
    #[derive(Default)]
    struct Model {
        /// (end, window key, key, start): the index's order is by end, then window key.
        windows: BTreeSet<(i64, Vec<u8>, Vec<u8>, i64)>,
        closed_through: i64,
    }

    #[derive(Debug, Clone)]
    enum Step {
        Insert(u8, i64, i64),
        Remove(u8, i64, i64),
        Close(i64, bool),
        Expire(i64),
        /// The index made again from the store, as after a restart.
        Restart,
        /// A window the table holds grows by some (a session a record extends): the new
        /// window enters, the old one leaves.
        Grow(proptest::sample::Index, i64),
        /// The last window that left enters again.
        Again,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..3u8, 0..40i64, 0..6i64).prop_map(|(k, start, len)| Step::Insert(k, start, start + len)),
            2 => (0..3u8, 0..40i64, 0..6i64).prop_map(|(k, start, len)| Step::Remove(k, start, start + len)),
            1 => (0..50i64, any::<bool>()).prop_map(|(through, collect)| Step::Close(through, collect)),
            1 => (0..50i64).prop_map(Step::Expire),
            1 => Just(Step::Restart),
            3 => (any::<proptest::sample::Index>(), 1..4i64).prop_map(|(at, by)| Step::Grow(at, by)),
            1 => Just(Step::Again),
        ]
    }

    proptest::proptest! {
        /// Whatever windows come and go, the index closes, expires, knows and finds (by key)
        /// exactly what the plain model does, in the same order; and its lookup by key holds
        /// the open windows only.
        #[test]
        fn the_index_agrees_with_a_plain_ordered_set(steps in proptest::collection::vec(step(), 0..80)) {
            let mut index = WindowIndex::new(NO_TIME);
            let mut model = Model { closed_through: NO_TIME, ..Model::default() };
            // Keys of different lengths, one a prefix of another.
            let name = |k: u8| vec![b'k'; usize::from(k) + 1];
            let mut left = None;
            for step in steps {
                match step {
                    Step::Grow(at, by) => {
                        let Some(old) = model.windows.iter().nth(at.index(model.windows.len().max(1))).cloned() else {
                            continue;
                        };
                        let (end, old_key, key, start) = old;
                        let grown = window_key(&key, Window::new(start, end + by));
                        index.insert(grown.clone());
                        model.windows.insert((end + by, grown, key.clone(), start));
                        // As a record's session leaves: by its key and window.
                        index.remove_window(&key, Window::new(start, end));
                        model.windows.remove(&(end, old_key.clone(), key, start));
                        left = Some(old_key);
                    }
                    Step::Again => {
                        if let Some(window_key) = left.take() {
                            if let Some((key, window)) = split_window_key(&window_key) {
                                model.windows.insert((window.end, window_key.clone(), key.to_vec(), window.start));
                            }
                            index.insert(window_key);
                        }
                    }
                    Step::Insert(k, start, end) => {
                        let window_key = window_key(&name(k), Window::new(start, end));
                        index.insert(window_key.clone());
                        model.windows.insert((end, window_key, name(k), start));
                    }
                    Step::Remove(k, start, end) => {
                        let window_key = window_key(&name(k), Window::new(start, end));
                        index.remove(&window_key);
                        model.windows.remove(&(end, window_key.clone(), name(k), start));
                        left = Some(window_key);
                    }
                    Step::Close(through, collect) => {
                        let closing: Vec<Vec<u8>> =
                            index.close(through, collect).into_iter().map(Vec::from).collect();
                        let mut expected = Vec::new();
                        if through > model.closed_through {
                            if collect {
                                expected = model
                                    .windows
                                    .iter()
                                    .filter(|(end, ..)| *end > model.closed_through && *end <= through)
                                    .map(|(_, window_key, ..)| window_key.clone())
                                    .collect();
                            }
                            model.closed_through = through;
                        }
                        proptest::prop_assert_eq!(closing, expected);
                    }
                    Step::Expire(through) => {
                        let gone: Vec<Vec<u8>> = index.expire(through).into_iter().map(Vec::from).collect();
                        // The closed ones in order, then any open ones (a short retention).
                        let (mut closed, mut open) = (Vec::new(), Vec::new());
                        for (end, window_key, ..) in &model.windows {
                            if *end <= through {
                                let to = if *end <= model.closed_through { &mut closed } else { &mut open };
                                to.push(window_key.clone());
                            }
                        }
                        model.windows.retain(|(end, ..)| *end > through);
                        closed.extend(open);
                        proptest::prop_assert_eq!(gone, closed);
                    }
                    Step::Restart => {
                        use crate::store::{Checkpoint, MemoryStore};
                        let store = MemoryStore::default();
                        let entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = model
                            .windows
                            .iter()
                            .map(|(_, window_key, ..)| (window_key.clone(), Some(b"1".to_vec())))
                            .collect();
                        proptest::prop_assert!(store.write(&entries, &Checkpoint::default()).is_ok());
                        match WindowIndex::load(&store, model.closed_through) {
                            Ok(loaded) => index = loaded,
                            Err(error) => proptest::prop_assert!(false, "load: {error}"),
                        }
                    }
                }
                proptest::prop_assert_eq!(index.len(), model.windows.len());
                for k in 0..3u8 {
                    for start in 0..40 {
                        for end in start..start + 6 {
                            let window_key = window_key(&name(k), Window::new(start, end));
                            let known = model.windows.contains(&(end, window_key.clone(), name(k), start));
                            proptest::prop_assert_eq!(index.knows(end, &window_key), known);
                        }
                    }
                    {
                        let (first_end, last_start) = (10, 30);
                        let mut expected: Vec<Window> = model
                            .windows
                            .iter()
                            .filter(|(end, _, key, start)| {
                                *key == name(k)
                                    && *end > model.closed_through
                                    && *start <= last_start
                                    && *end >= first_end
                            })
                            .map(|(end, _, _, start)| Window::new(*start, *end))
                            .collect();
                        expected.sort_by_key(|w| (w.start, w.end));
                        proptest::prop_assert_eq!(index.overlapping(&name(k), first_end, last_start).to_vec(), expected);
                    }
                }
                let open: usize = index.by_key.values().map(VecDeque::len).sum();
                proptest::prop_assert_eq!(open, index.live);
                // The heap: an entry for each open window, the others within bounds, none closed.
                let entries: BTreeSet<&[u8]> = index.open.iter().map(|Reverse(ByEnd(_, key))| &**key).collect();
                for (key, windows) in &index.by_key {
                    for (start, end) in windows {
                        let window_key = window_key(key, Window::new(*start, *end));
                        proptest::prop_assert!(entries.contains(&window_key[..]), "no heap entry: {window_key:?}");
                    }
                }
                proptest::prop_assert!(index.open.len() <= 2 * index.live + LEFT_ENTRIES_SLACK);
                proptest::prop_assert!(index.open.iter().all(|Reverse(ByEnd(end, _))| *end > index.closed_through));
            }
        }
    }

    #[test]
    fn thresholds_follow_each_kind_of_window() {
        let fixed = Kind::Fixed(
            TimeWindows::of(std::time::Duration::from_millis(60)).grace(std::time::Duration::from_millis(10)),
        );
        assert_eq!(fixed.closed_through(100), 90, "end + grace <= now");
        let day = crate::window::DEFAULT_RETENTION_MS;
        assert_eq!(
            fixed.expired_through(day + 100),
            160,
            "by default a day after they start"
        );
        let kept_briefly = Kind::Fixed(
            TimeWindows::of(std::time::Duration::from_millis(60))
                .grace(std::time::Duration::from_millis(10))
                .retention(std::time::Duration::from_millis(70)),
        );
        assert_eq!(kept_briefly.expired_through(100), 90, "at the least when they close");
        let session = Kind::Session(SessionWindows::with_inactivity_gap(std::time::Duration::from_millis(
            30,
        )));
        assert_eq!(session.closed_through(100), 69, "end + gap + grace < now");
        assert_eq!(fixed.closed_through(NO_TIME), NO_TIME);
        let sliding = Kind::Sliding(
            SlidingWindows::with_time_difference(std::time::Duration::from_millis(30))
                .grace(std::time::Duration::from_millis(10)),
        );
        assert_eq!(
            sliding.closed_through(100),
            89,
            "end + grace < now, as in Kafka Streams (updated while end >= now - grace)"
        );
    }
}

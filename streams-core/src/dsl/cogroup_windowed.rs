//! Windowed cogroups (Kafka Streams' `CogroupedKStream.windowedBy`): several grouped
//! streams aggregated per key and per window into one windowed table.
//!
//! The streams' records meet in one windowed aggregation, the same as a single stream's
//! (same windows, grace, closing, emit-final and retention), as records that say which
//! stream they came from and carry their value as JSON: the streams' value types differ, and
//! sliding windows keep the records they may need again in a table. Unlike Kafka Streams,
//! which runs one window processor per stream, each with its own stream time, the cogroup
//! has one stream time, moved by the records of every stream (what `emit_final` needs).

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::grouped::KGroupedStream;
use super::node::{Cx, Fanout};
use super::table::KTable;
use super::windowed::{SessionWindowedKStream, TimeWindowedKStream, WindowsOf};
use crate::codec::Key;
use crate::table::WindowedTable;
use crate::window::{SessionWindows, SlidingWindows, TimeWindows, Windowed};

/// A record of one of a cogroup's streams on its way into the windowed aggregate.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct CoRecord {
    stream: usize,
    value: serde_json::Value,
}

/// One stream's adder: `adder(key, value, aggregate)` is the new aggregate.
pub(crate) type Adder<K, V, A> = dyn Fn(&K, V, A) -> A + Send + Sync;

/// One stream's adder, on its record as JSON.
pub(crate) type CoAdder<K, A> = Arc<dyn Fn(&K, &serde_json::Value, A) -> A + Send + Sync>;

/// Connects one cogrouped stream to the merged stream (as stream number `n`) and gives its
/// adder.
pub(crate) type Wire<K, A> = Box<dyn FnOnce(&Arc<Fanout<K, CoRecord>>, usize) -> CoAdder<K, A>>;

/// How a stream of values `V` with `adder` joins a windowed cogroup.
pub(crate) fn wire<K, V, A>(fanout: Arc<Fanout<K, V>>, adder: Arc<Adder<K, V, A>>) -> Wire<K, A>
where
    K: Key,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    A: 'static,
{
    Box::new(move |merged: &Arc<Fanout<K, CoRecord>>, stream: usize| {
        let merged = Arc::clone(merged);
        fanout.add(Arc::new(move |cx: &mut Cx<'_>, key: K, value: V| {
            let value = serde_json::to_value(&value).map_err(|e| format!("a cogrouped value: {e}"))?;
            // It must read back (the adder takes it from JSON): checked before any window
            // changes, so a value that does not fails alone, as the app's handler says.
            V::deserialize(&value).map_err(|e| format!("a cogrouped value does not read back from its JSON: {e}"))?;
            merged.push(cx, key, CoRecord { stream, value })
        }));
        Arc::new(move |key: &K, value: &serde_json::Value, aggregate: A| {
            match V::deserialize(value) {
                Ok(value) => adder(key, value, aggregate),
                // Its own JSON does not read back as its type (a Serialize/Deserialize pair that
                // do not agree): the record fails, and goes where the app's handler says.
                Err(error) => panic!("a cogrouped value does not read back from its JSON: {error}"),
            }
        })
    })
}

/// A cogroup's streams merged, on their way into windows: made by
/// [`CogroupedKStream::windowed_by`](super::CogroupedKStream::windowed_by) for
/// [`CogroupWindowsOf`].
pub struct CogroupedRecords<K, A> {
    grouped: KGroupedStream<K, CoRecord>,
    adders: Arc<Vec<CoAdder<K, A>>>,
}

impl<K, A> CogroupedRecords<K, A> {
    pub(crate) fn new(grouped: KGroupedStream<K, CoRecord>, adders: Vec<CoAdder<K, A>>) -> Self {
        Self {
            grouped,
            adders: Arc::new(adders),
        }
    }
}

/// The adders as one, by the stream each record came from.
fn dispatch<K, A>(adders: Arc<Vec<CoAdder<K, A>>>) -> impl Fn(&K, CoRecord, A) -> A + Send + Sync + 'static
where
    K: 'static,
    A: 'static,
{
    move |key: &K, record: CoRecord, aggregate: A| match adders.get(record.stream) {
        Some(adder) => adder(key, &record.value, aggregate),
        // A record kept (sliding windows) by a build of the app with more streams: the
        // record fails, as the app's handler says, rather than count for another stream.
        None => panic!(
            "a cogrouped record of stream {} of a cogroup of {} streams (the app's cogroup changed)",
            record.stream,
            adders.len()
        ),
    }
}

/// Windows a cogroup can be aggregated in: [`TimeWindows`] and [`SlidingWindows`] give a
/// [`CogroupedTimeWindowedKStream`], [`SessionWindows`] a [`CogroupedSessionWindowedKStream`].
pub trait CogroupWindowsOf<K, A> {
    /// The windowed cogroup.
    type Stream;
    /// The cogroup in these windows.
    fn window_cogroup(self, records: CogroupedRecords<K, A>) -> Self::Stream;
}

impl<K: Key, A> CogroupWindowsOf<K, A> for TimeWindows {
    type Stream = CogroupedTimeWindowedKStream<K, A>;
    fn window_cogroup(self, records: CogroupedRecords<K, A>) -> Self::Stream {
        CogroupedTimeWindowedKStream {
            inner: WindowsOf::<K, CoRecord>::window(self, records.grouped),
            adders: records.adders,
        }
    }
}

impl<K: Key, A> CogroupWindowsOf<K, A> for SlidingWindows {
    type Stream = CogroupedTimeWindowedKStream<K, A>;
    fn window_cogroup(self, records: CogroupedRecords<K, A>) -> Self::Stream {
        CogroupedTimeWindowedKStream {
            inner: WindowsOf::<K, CoRecord>::window(self, records.grouped),
            adders: records.adders,
        }
    }
}

impl<K: Key, A> CogroupWindowsOf<K, A> for SessionWindows {
    type Stream = CogroupedSessionWindowedKStream<K, A>;
    fn window_cogroup(self, records: CogroupedRecords<K, A>) -> Self::Stream {
        CogroupedSessionWindowedKStream {
            inner: WindowsOf::<K, CoRecord>::window(self, records.grouped),
            adders: records.adders,
        }
    }
}

/// A cogroup in time windows, tumbling, hopping or sliding (Kafka Streams'
/// `TimeWindowedCogroupedKStream`): aggregate it into a [`WindowedTable`].
#[must_use = "a windowed cogroup does nothing until it is aggregated (`aggregate`)"]
pub struct CogroupedTimeWindowedKStream<K, A> {
    inner: TimeWindowedKStream<K, CoRecord>,
    adders: Arc<Vec<CoAdder<K, A>>>,
}

impl<K, A> CogroupedTimeWindowedKStream<K, A>
where
    K: Key,
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Sends each window's result on once, when it closes (see
    /// [`TimeWindowedKStream::emit_final`]).
    pub fn emit_final(mut self) -> Self {
        self.inner = self.inner.emit_final();
        self
    }

    /// Folds the records of every cogrouped stream, per key and window, starting from
    /// `init()`, each through its stream's adder.
    pub fn aggregate(
        self,
        table: WindowedTable<K, A>,
        init: impl Fn() -> A + Send + Sync + 'static,
    ) -> KTable<Windowed<K>, A> {
        self.inner.aggregate(table, init, dispatch(self.adders))
    }
}

/// A cogroup in session windows (Kafka Streams' `SessionWindowedCogroupedKStream`):
/// aggregate it into a [`WindowedTable`] whose windows are sessions.
#[must_use = "a windowed cogroup does nothing until it is aggregated (`aggregate`)"]
pub struct CogroupedSessionWindowedKStream<K, A> {
    inner: SessionWindowedKStream<K, CoRecord>,
    adders: Arc<Vec<CoAdder<K, A>>>,
}

impl<K, A> CogroupedSessionWindowedKStream<K, A>
where
    K: Key,
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Sends each session's result on once, when it closes.
    pub fn emit_final(mut self) -> Self {
        self.inner = self.inner.emit_final();
        self
    }

    /// Folds the records of every cogrouped stream, per key and session, starting from
    /// `init()`, each through its stream's adder; when a record merges two sessions,
    /// `merger(key, a, b)` combines their aggregates first.
    pub fn aggregate(
        self,
        table: WindowedTable<K, A>,
        init: impl Fn() -> A + Send + Sync + 'static,
        merger: impl Fn(&K, A, A) -> A + Send + Sync + 'static,
    ) -> KTable<Windowed<K>, A> {
        self.inner.aggregate(table, init, dispatch(self.adders), merger)
    }
}

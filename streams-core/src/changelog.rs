//! Changelogs: every table change is a record on `{app}-{table}-changelog` (key: the table
//! key, value: the encoded value, no value: deleted), carrying in headers the position in
//! the source topics of the cut that produced it. A store is restored from its changelog,
//! starting after its checkpoint and skipping changes made by input the group never
//! committed (ARCHITECTURE.md §3), so a crash between a changelog write and an offset commit
//! cannot count twice; then the partition starts where its restored state agrees with the
//! input (`start_offsets`).
//!
//! Nothing here knows about Kafka: the worker reads changelogs with a consumer
//! (`worker/restore.rs`), the test driver from its in-memory topics; both apply records
//! with `Apply`.

use crate::store::{Checkpoint, StateStore};
use crate::Result;

/// Header of a changelog record made at a cut: where the cut stood, as text of `;`-separated
/// parts — `source=TOPIC/PARTITION/OFFSET` for each source topic the task has read from (the
/// last offset processed there), then `time=MS`, the task's stream time, when it has one, and
/// `clock=TABLE=MS` for each operation that keeps its own (windowed aggregations and joins;
/// `MS` empty while none). [`CutPosition`] reads it. One header, where earlier versions wrote
/// five (the headers below, still read): librdkafka allocates every header of every record.
///
/// ```text
/// streams.cut: source=hit_count/3/1041;time=1764000060000;clock=minute-totals=1764000060000
/// ```
pub const CUT: &str = "streams.cut";
/// Header of changelog records written before [`CUT`]: a source topic of the cut that caused
/// a change (one per source, each followed by its partition and offset headers). Still read.
pub const SOURCE_TOPIC: &str = "streams.source.topic";
/// Header of changelog records written before [`CUT`]: the partition of the source topic
/// named just before. Still read.
pub const SOURCE_PARTITION: &str = "streams.source.partition";
/// Header of changelog records written before [`CUT`]: the last offset processed in the
/// source topic named just before. Still read.
pub const SOURCE_OFFSET: &str = "streams.source.offset";
/// Header of changelog records written before [`CUT`]: the task's stream time (ms) at the
/// cut. Still read.
pub const STREAM_TIME: &str = "streams.stream.time";
/// Header of changelog records written before [`CUT`]: the stream times of the task's
/// operations that keep their own, as `table=ms` pairs. Still read.
pub const STREAM_CLOCKS: &str = "streams.stream.clocks";

/// Stream times per operation, by the name of the table that keeps it (see
/// `TaskContext::clocks`).
pub(crate) type Clocks = Vec<(String, i64)>;

/// Merges `from` into `into`: a name in both gets `pick` of the two times.
pub(crate) fn merge_clocks(into: &mut Clocks, from: &[(String, i64)], pick: fn(i64, i64) -> i64) {
    for (name, time) in from {
        merge_clock(into, name, *time, pick);
    }
}

/// Merges one operation's stream time into `into` (see [`merge_clocks`]); its name is
/// copied only when `into` has none of it.
fn merge_clock(into: &mut Clocks, name: &str, time: i64, pick: fn(i64, i64) -> i64) {
    match into.iter_mut().find(|(n, _)| n == name) {
        Some((_, mine)) => *mine = pick(*mine, time),
        None => into.push((name.to_string(), time)),
    }
}

/// Clocks as text: `name=time` pairs, comma-separated (table names have no `=`, `,` or `;`),
/// as [`STREAM_CLOCKS`] headers carried them.
#[cfg(test)]
pub(crate) fn clocks_text(clocks: &[(String, i64)]) -> String {
    let pairs: Vec<String> = clocks
        .iter()
        .map(|(name, time)| format!("{name}={}", clock_text(*time)))
        .collect();
    pairs.join(",")
}

/// One operation's stream time as text: empty while it has none (`i64::MIN`).
pub(crate) fn clock_text(time: i64) -> String {
    if time == i64::MIN {
        String::new()
    } else {
        time.to_string()
    }
}

/// One operation's stream time from [`clock_text`]; `None` when it does not parse.
pub(crate) fn clock_of_text(text: &str) -> Option<i64> {
    if text.is_empty() {
        Some(i64::MIN)
    } else {
        text.parse().ok()
    }
}

/// Clocks from [`clocks_text`]; pairs that do not parse are skipped.
pub(crate) fn clocks_of_text(text: &str) -> Clocks {
    text.split(',')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (name, time) = pair.split_once('=')?;
            Some((name.to_string(), clock_of_text(time)?))
        })
        .collect()
}

/// Each source topic of a task with the offset the group committed for it: the next offset
/// to read. Where the group has committed nothing, the partition's first offset (its low
/// watermark) stands in: changes made by input that can still be read are then treated as
/// uncommitted (that input is processed again), and changes made by input that retention
/// has deleted are kept (it cannot be processed again).
pub(crate) type Committed = [(String, i64)];

/// The headers of a changelog record made at a cut: one, [`CUT`] (none when it would say
/// nothing).
pub(crate) fn cut_headers(
    positions: &[(std::sync::Arc<str>, i64)],
    partition: i32,
    stream_time: Option<i64>,
    clocks: &[(String, i64)],
) -> Vec<(String, Vec<u8>)> {
    use std::fmt::Write;
    let mut text = String::new();
    // (Writing to a `String` cannot fail.)
    for (topic, offset) in positions {
        let _ = write!(text, ";source={topic}/{partition}/{offset}");
    }
    if let Some(time) = stream_time {
        let _ = write!(text, ";time={time}");
    }
    for (name, time) in clocks {
        let _ = write!(text, ";clock={name}={}", clock_text(*time));
    }
    match text.strip_prefix(';') {
        Some(text) => vec![(CUT.to_string(), text.as_bytes().to_vec())],
        None => Vec::new(),
    }
}

/// One part of a [`CUT`] header.
#[cfg_attr(test, derive(Debug, PartialEq))]
enum Part<'a> {
    /// A source topic, its partition and the last offset processed there.
    Source(&'a str, i32, i64),
    /// The task's stream time.
    Time(i64),
    /// An operation's stream time (`i64::MIN`: none yet).
    Clock(&'a str, i64),
}

/// The parts of a [`CUT`] header's value; parts that do not parse (or that a later version
/// adds) are skipped. A value that is not UTF-8 has none.
///
/// Read by bytes: the separators are ASCII, and found byte by byte a part costs a few
/// instructions a byte (`str::split` on a `char` cost ~150 a call), which a restore pays for
/// every record.
fn parts(value: &[u8]) -> impl Iterator<Item = Part<'_>> {
    let mut rest = Some(std::str::from_utf8(value).unwrap_or_default());
    std::iter::from_fn(move || loop {
        let text = rest?;
        let (part, after) = split_at_byte(text, b';').map_or((text, None), |(part, after)| (part, Some(after)));
        rest = after;
        if let Some(part) = part_of(part) {
            return Some(part);
        }
    })
}

/// One part of a [`CUT`] header: `source=TOPIC/PARTITION/OFFSET` (the topic may hold `/`),
/// `time=MS` or `clock=TABLE=MS`.
fn part_of(text: &str) -> Option<Part<'_>> {
    let (kind, rest) = split_at_byte(text, b'=')?;
    match kind {
        "source" => {
            let (head, offset) = rsplit_at_byte(rest, b'/')?;
            let (topic, partition) = rsplit_at_byte(head, b'/')?;
            Some(Part::Source(topic, partition.parse().ok()?, offset.parse().ok()?))
        }
        "time" => Some(Part::Time(rest.parse().ok()?)),
        "clock" => {
            let (name, time) = split_at_byte(rest, b'=')?;
            Some(Part::Clock(name, clock_of_text(time)?))
        }
        _ => None,
    }
}

/// `text` before and after its first `byte` (ASCII), when it has one.
fn split_at_byte(text: &str, byte: u8) -> Option<(&str, &str)> {
    let at = text.bytes().position(|b| b == byte)?;
    Some((text.get(..at)?, text.get(at + 1..)?))
}

/// `text` before and after its last `byte` (ASCII), when it has one.
fn rsplit_at_byte(text: &str, byte: u8) -> Option<(&str, &str)> {
    let at = text.bytes().rposition(|b| b == byte)?;
    Some((text.get(..at)?, text.get(at + 1..)?))
}

/// Where a cut stood, as its changelog records' headers say: [`CUT`], or the five headers
/// of records that earlier versions wrote.
///
/// ```
/// use streams_core::changelog::{CutPosition, CUT};
///
/// let value = b"source=hit_count/3/1041;time=1764000060000;clock=minute-totals=";
/// let cut = CutPosition::of_headers([(CUT, &value[..])]).expect("a cut's record");
/// assert_eq!(cut.sources, vec![("hit_count".to_string(), 3, 1041)]);
/// assert_eq!(cut.stream_time, Some(1_764_000_060_000));
/// assert_eq!(cut.clocks, vec![("minute-totals".to_string(), None)]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CutPosition {
    /// Each source topic the task had read from: its name, the partition and the last
    /// offset processed there (the partition -1 for a record of an earlier version that
    /// lacks it).
    pub sources: Vec<(String, i32, i64)>,
    /// The task's stream time (ms), when it had one.
    pub stream_time: Option<i64>,
    /// The stream times (ms) of the operations that keep their own, by the name of the table
    /// that keeps each (`None`: no record had reached it).
    pub clocks: Vec<(String, Option<i64>)>,
}

impl CutPosition {
    /// The position that `headers` (name, value) carry; `None` for a record without them.
    pub fn of_headers<'h>(headers: impl IntoIterator<Item = (&'h str, &'h [u8])>) -> Option<Self> {
        let mut cut = Self::default();
        let mut found = false;
        let mut topic: Option<&str> = None;
        let mut partition: Option<i32> = None;
        let number = |value: &[u8]| std::str::from_utf8(value).ok()?.parse::<i64>().ok();
        for (name, value) in headers {
            match name {
                CUT => {
                    found = true;
                    for part in parts(value) {
                        match part {
                            Part::Source(topic, partition, offset) => {
                                cut.sources.push((topic.to_string(), partition, offset))
                            }
                            Part::Time(time) => {
                                cut.stream_time.get_or_insert(time);
                            }
                            Part::Clock(name, time) => cut
                                .clocks
                                .push((name.to_string(), Some(time).filter(|t| *t != i64::MIN))),
                        }
                    }
                }
                SOURCE_TOPIC => {
                    found = true;
                    topic = std::str::from_utf8(value).ok();
                    partition = None;
                }
                SOURCE_PARTITION => partition = number(value).and_then(|p| i32::try_from(p).ok()),
                SOURCE_OFFSET => {
                    if let (Some(topic), Some(offset)) = (topic.take(), number(value)) {
                        cut.sources.push((topic.to_string(), partition.unwrap_or(-1), offset));
                    }
                }
                STREAM_TIME => {
                    found = true;
                    // The first that parses, as a restore reads it.
                    if let (None, Some(time)) = (cut.stream_time, number(value)) {
                        cut.stream_time = Some(time);
                    }
                }
                STREAM_CLOCKS => {
                    found = true;
                    let text = std::str::from_utf8(value).unwrap_or_default();
                    let clocks = clocks_of_text(text).into_iter();
                    cut.clocks
                        .extend(clocks.map(|(name, time)| (name, Some(time).filter(|t| *t != i64::MIN))));
                }
                _ => {}
            }
        }
        found.then_some(cut)
    }
}

/// What a restore reads in a changelog record's headers, in one pass over them (a [`CUT`]
/// header is parsed once): whether the record was made by input the group never committed,
/// the stream time and the operations' stream times it carries.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RecordCut<'h> {
    /// Some source it names is not committed as far as the record's offset there (sources
    /// that are not the task's are ignored; a record that names no source counts as
    /// committed).
    pub(crate) uncommitted: bool,
    /// The first stream time the headers carry.
    pub(crate) stream_time: Option<i64>,
    /// The operations' stream times of the first header that carries them ([`CUT`] or
    /// [`STREAM_CLOCKS`]; `i64::MIN`: none yet), their names borrowed from a [`CUT`] header.
    pub(crate) clocks: smallvec::SmallVec<[(std::borrow::Cow<'h, str>, i64); 2]>,
}

impl<'h> RecordCut<'h> {
    /// Reads `headers` against the group's `committed` offsets: [`CUT`], or the five headers
    /// of earlier versions.
    pub(crate) fn read(headers: impl Iterator<Item = (&'h str, &'h [u8])>, committed: &Committed) -> Self {
        let uncommitted = |name: &[u8], offset: i64| {
            committed
                .iter()
                .any(|(topic, next)| topic.as_bytes() == name && offset >= *next)
        };
        let mut cut = Self::default();
        // Whether a header gave the clocks (the first that carries them does, even empty).
        let mut clocked = false;
        // Legacy headers: the source topic named last, until its offset comes.
        let mut topic: Option<&[u8]> = None;
        let number = |value: &[u8]| std::str::from_utf8(value).ok()?.parse::<i64>().ok();
        for (key, value) in headers {
            match key {
                CUT => {
                    let mut time = None;
                    for part in parts(value) {
                        match part {
                            Part::Source(topic, _, offset) => cut.uncommitted |= uncommitted(topic.as_bytes(), offset),
                            Part::Time(t) => {
                                time.get_or_insert(t);
                            }
                            Part::Clock(name, t) if !clocked => cut.clocks.push((name.into(), t)),
                            Part::Clock(..) => {}
                        }
                    }
                    cut.stream_time = cut.stream_time.or(time);
                    clocked = true;
                }
                SOURCE_TOPIC => topic = Some(value),
                SOURCE_OFFSET => {
                    if let (Some(name), Some(offset)) = (topic.take(), number(value)) {
                        cut.uncommitted |= uncommitted(name, offset);
                    }
                }
                STREAM_TIME => cut.stream_time = cut.stream_time.or_else(|| number(value)),
                STREAM_CLOCKS if !clocked => {
                    clocked = true;
                    let text = std::str::from_utf8(value).unwrap_or_default();
                    cut.clocks
                        .extend(clocks_of_text(text).into_iter().map(|(name, t)| (name.into(), t)));
                }
                _ => {}
            }
        }
        cut
    }
}

/// The stream time a changelog record's headers carry (what [`RecordCut::read`] reads, in
/// a pass of its own: the model its test compares it with).
#[cfg(test)]
fn stream_time_of<'h>(headers: impl Iterator<Item = (&'h str, &'h [u8])>) -> Option<i64> {
    headers.into_iter().find_map(|(key, value)| match key {
        CUT => parts(value).find_map(|part| match part {
            Part::Time(time) => Some(time),
            _ => None,
        }),
        STREAM_TIME => std::str::from_utf8(value).ok()?.parse().ok(),
        _ => None,
    })
}

/// The operations' stream times a changelog record's headers carry (a model, as above).
#[cfg(test)]
fn clocks_of<'h>(headers: impl Iterator<Item = (&'h str, &'h [u8])>) -> Clocks {
    for (key, value) in headers {
        match key {
            CUT => {
                return parts(value)
                    .filter_map(|part| match part {
                        Part::Clock(name, time) => Some((name.to_string(), time)),
                        _ => None,
                    })
                    .collect()
            }
            STREAM_CLOCKS => return std::str::from_utf8(value).map(clocks_of_text).unwrap_or_default(),
            _ => {}
        }
    }
    Vec::new()
}

/// Whether a changelog record with these headers was made by input the group never
/// committed (a model, as above).
#[cfg(test)]
fn from_uncommitted_input<'h>(headers: impl Iterator<Item = (&'h str, &'h [u8])>, committed: &Committed) -> bool {
    let uncommitted = |name: &[u8], offset: i64| {
        committed
            .iter()
            .any(|(topic, next)| topic.as_bytes() == name && offset >= *next)
    };
    let mut topic: Option<&[u8]> = None;
    for (key, value) in headers {
        match key {
            CUT => {
                let mut sources = parts(value).filter_map(|part| match part {
                    Part::Source(topic, _, offset) => Some((topic, offset)),
                    _ => None,
                });
                if sources.any(|(topic, offset)| uncommitted(topic.as_bytes(), offset)) {
                    return true;
                }
            }
            SOURCE_TOPIC => topic = Some(value),
            SOURCE_OFFSET => {
                let Some(name) = topic.take() else { continue };
                let Some(offset) = std::str::from_utf8(value).ok().and_then(|v| v.parse::<i64>().ok()) else {
                    continue;
                };
                if uncommitted(name, offset) {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// How a restore went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Restored {
    /// Changelog records applied to the store.
    pub applied: u64,
    /// Changelog records skipped because their input was never committed.
    pub skipped: u64,
    /// The keys of the skipped records.
    pub skipped_keys: std::collections::BTreeSet<Vec<u8>>,
    /// The largest stream time among the applied records.
    pub stream_time: Option<i64>,
    /// The largest stream time of each operation among the applied records.
    pub clocks: Clocks,
    /// A probing pass (see [`Apply::new`]) found a record to apply and stopped there,
    /// writing nothing.
    pub found_foreign: bool,
}

const BATCH: usize = 10_000;

/// Applies changelog records to a store in batches, each with its checkpoint.
pub(crate) struct Apply<'a> {
    store: &'a dyn StateStore,
    committed: &'a Committed,
    /// The source positions the store holds once it has another owner's changes.
    agreed: Vec<(String, i64)>,
    batch: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Offset of the last record seen.
    last: Option<i64>,
    /// Offset of the first record skipped: the checkpoint stays before it (see
    /// [`Apply::flush`]).
    first_skipped: Option<i64>,
    /// Stop at the first record to apply, writing nothing (the store is ahead of the
    /// group's commit: it is rebuilt instead).
    probe: bool,
    pub restored: Restored,
}

impl<'a> Apply<'a> {
    /// Applies records to `store`, skipping those from input not in `committed`. `agreed`:
    /// the source positions the store holds once another owner's changes are in it (see
    /// [`start_offsets`]); they are written with the first of those changes, in one batch,
    /// so that a store never holds such changes with its own, later, positions.
    ///
    /// `probe`: the store holds effects of input past the group's commit. A change of
    /// another owner must then not be applied on top of them (the state would hold both, and
    /// a crash before the rebuild would leave it so with the committed positions): the pass
    /// stops at the first such change, writes nothing, and says so
    /// ([`Restored::found_foreign`]); the caller rebuilds the store.
    pub(crate) fn new(
        store: &'a dyn StateStore,
        committed: &'a Committed,
        agreed: Vec<(String, i64)>,
        expected: u64,
        probe: bool,
    ) -> Self {
        Self {
            store,
            committed,
            agreed,
            batch: Vec::with_capacity((expected as usize).min(BATCH)),
            last: None,
            first_skipped: None,
            probe,
            restored: Restored::default(),
        }
    }

    /// Whether the pass is over before the changelog's end (a probe found a change to
    /// apply): the reader stops reading.
    pub(crate) fn done(&self) -> bool {
        self.restored.found_foreign
    }

    /// The changelog record at `offset`.
    pub(crate) fn record<'h>(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    ) -> Result<()> {
        if self.done() {
            return Ok(());
        }
        self.last = Some(offset);
        let Some(key) = key else { return Ok(()) };
        let cut = RecordCut::read(headers, self.committed);
        if cut.uncommitted {
            self.restored.skipped += 1;
            self.restored.skipped_keys.insert(key.to_vec());
            self.first_skipped.get_or_insert(offset);
            return Ok(());
        }
        if self.probe {
            self.restored.found_foreign = true;
            return Ok(());
        }
        if let Some(time) = cut.stream_time {
            self.restored.stream_time = Some(self.restored.stream_time.map_or(time, |t| t.max(time)));
        }
        for (name, time) in &cut.clocks {
            merge_clock(&mut self.restored.clocks, name, *time, i64::max);
        }
        self.batch.push((key.to_vec(), value.map(<[u8]>::to_vec)));
        self.restored.applied += 1;
        if self.batch.len() >= BATCH {
            self.flush(offset)?;
        }
        Ok(())
    }

    /// Writes the batch with the checkpoint at `through` — or just before the first skipped
    /// record, when there is one: what makes that skip safe later (the key's valid value
    /// written again after it, [`Restoration::restate`]) is only durable once the task's
    /// first cut is, and until then a restore of this store must see the skipped record
    /// again (and skip, and restate it, again).
    fn flush(&mut self, through: i64) -> Result<()> {
        let through = match self.first_skipped {
            Some(skipped) => through.min(skipped - 1),
            None => through,
        };
        let checkpoint = Checkpoint {
            changelog_offset: Some(through),
            sources: (self.restored.applied > 0).then(|| self.agreed.clone()),
            stream_time: self.restored.stream_time,
            clocks: self.restored.clocks.clone(),
        };
        // The store ends the same with one write per key, its last (the batch is one
        // atomic write); in key order, RocksDB's memtable inserts each entry next to the one
        // before instead of searching its skip list from the top (RocksDB's bulk-load advice).
        self.batch.sort_by(|a, b| a.0.cmp(&b.0));
        self.batch.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
        self.store.write(&self.batch, &checkpoint)?;
        self.batch.clear();
        Ok(())
    }

    /// Writes what is left, with the checkpoint at `end` (the changelog's last offset when
    /// it was read to its end; records past the last one seen may have been compacted away).
    pub(crate) fn finish(mut self, end: Option<i64>) -> Result<Restored> {
        if self.done() {
            return Ok(self.restored);
        }
        if let Some(end) = end.or(self.last) {
            self.flush(end)?;
        }
        Ok(self.restored)
    }
}

/// Where a task starts reading each of its sources, given what the group committed, the
/// checkpoints its stores had before the restore, and whether the restore applied records
/// written after those checkpoints (`foreign`: changes another owner made since).
///
/// A store's own source position is only valid while the changelog holds nothing after its
/// checkpoint: then the state reflects exactly the input up to that position, which may be
/// ahead of the group's commit (a commit that failed after the store was written), and the
/// partition starts after it. Once changes of another owner were applied, the state agrees
/// with the committed input instead (those changes come from committed input only), and the
/// partition starts at the committed offset — after a rebuild of the stores when they were
/// ahead of it ([`must_rebuild`]).
pub(crate) fn start_offsets(committed: &Committed, stores: &[Checkpoint], foreign: bool) -> Vec<(String, i64)> {
    committed
        .iter()
        .map(|(topic, committed)| {
            let start = match store_position(topic, stores) {
                Some(store) if !foreign => store.max(*committed),
                _ => *committed,
            };
            (topic.clone(), start)
        })
        .collect()
}

/// The next offset the stores reflect in `topic`: one past the least of their positions. A
/// store without a position there while another has one reflects none of that input (the
/// first cut that reached it was cut short by a crash before its write, or the table is
/// new). `None` when no store has a position. Stores at different positions past the
/// commit are rebuilt rather than started from here ([`stores_split`]).
fn store_position(topic: &str, stores: &[Checkpoint]) -> Option<i64> {
    if stores.iter().all(|c| c.source(topic).is_none()) {
        return None;
    }
    stores
        .iter()
        .map(|c| c.source(topic).unwrap_or(-1))
        .min()
        .map(|o| o + 1)
}

/// Whether stores that took another owner's changes must be rebuilt: some store holds its
/// own effects of input past the group's commit, which the partition processes again from
/// the committed offset. Their changelog holds those effects as changes of uncommitted
/// input, so a restore from the beginning leaves them out.
pub(crate) fn must_rebuild(committed: &Committed, stores: &[Checkpoint]) -> bool {
    committed.iter().any(|(topic, committed)| {
        stores
            .iter()
            .filter_map(|c| c.source(topic))
            .any(|position| position >= *committed)
    })
}

/// Whether the stores, as they are, reflect different input past where the task would
/// start: one cut writes its stores one after another, and a worker killed between two of
/// those writes leaves some stores with the cut's positions and the others with the cut
/// before's. The task would start after the lesser ([`start_offsets`]) and process the
/// cut's input again on top of the stores that already hold its effects — counting it
/// twice there. Such stores are rebuilt from their changelogs instead, which leaves out the
/// cut's changes (their input is not committed), and the task starts at the committed
/// offset.
///
/// Positions that differ only before the committed offset are no split. A store behind the
/// commit has its changes up to the commit in its changelog, and the restore applies them
/// (starting the task at the committed offset); a store whose changelog holds nothing after
/// its position simply had no changes there.
pub(crate) fn stores_split(committed: &Committed, stores: &[Checkpoint]) -> bool {
    let starts = start_offsets(committed, stores, false);
    starts.iter().any(|(topic, start)| {
        stores
            .iter()
            .filter_map(|c| c.source(topic))
            .any(|position| position >= *start)
    })
}

/// The source positions a store holds once it agrees with the committed input (written by
/// a restore that applies changes of another owner).
pub(crate) fn committed_positions(committed: &Committed) -> Vec<(String, i64)> {
    committed
        .iter()
        .map(|(topic, next)| (topic.clone(), next - 1))
        .collect()
}

/// A changelog record's headers, name and value (a cut's record has one; up to two are kept
/// without an allocation).
pub(crate) type Headers<'a> = smallvec::SmallVec<[(&'a str, &'a [u8]); 2]>;

/// What reading a changelog partition gives next.
pub(crate) enum Fetched<'a> {
    /// A record. Reading is read committed: records of aborted transactions and control
    /// records are skipped.
    Record {
        offset: i64,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        headers: Headers<'a>,
    },
    /// No record now; every offset before this one is read or skipped. A position before the
    /// partition's end is its last stable offset: a transaction after it has not ended yet.
    At(i64),
    /// Nothing known now.
    Nothing,
}

/// A changelog partition as a restore reads it: Kafka through a consumer, the test driver's
/// in-memory topics.
pub(crate) trait ChangelogLog {
    /// Where the partition's records begin and end, committed or not (Kafka's log start
    /// offset and high watermark as a read_uncommitted reader sees them); `None` when the
    /// restore was cancelled.
    fn bounds(&mut self) -> Result<Option<(i64, i64)>>;
    /// Reads on from `offset`.
    fn seek(&mut self, offset: i64) -> Result<()>;
    /// The next record, waiting up to `wait` for one.
    fn fetch(&mut self, wait: std::time::Duration) -> Result<Fetched<'_>>;
    /// Whether the restore was cancelled (the partition was revoked).
    fn cancelled(&self) -> bool;
    /// Names the partition in messages.
    fn label(&self) -> String;
}

/// Applies a changelog partition to `store` from its checkpoint to the partition's end —
/// the end as a read_uncommitted reader sees it, not the last stable offset (Kafka's
/// KAFKA-10167): records of a transaction that has committed but whose markers are not yet
/// written would be missing otherwise, while the group's offsets (fetched as stable) already
/// include the round that wrote them. Reading is read committed, so the restore waits there
/// until those transactions have ended (a transaction's timeout bounds the wait). `None` when
/// cancelled (what was applied stays, with its checkpoint). `on_record(offset, end)` is told
/// of every record read.
pub(crate) fn read_changelog(
    log: &mut dyn ChangelogLog,
    store: &dyn StateStore,
    committed: &Committed,
    agreed: Vec<(String, i64)>,
    probe: bool,
    on_record: &mut dyn FnMut(i64, i64),
) -> Result<Option<Restored>> {
    let checkpoint = store.checkpoint()?;
    let Some((low, end)) = log.bounds()? else {
        return Ok(None);
    };
    let start = checkpoint.changelog_offset.map_or(low, |offset| (offset + 1).max(low));
    if start >= end {
        return Ok(Some(Restored::default()));
    }
    // A large restore writes with the store's bulk-loading settings, and normal ones after
    // (however it ends, a panic included). Not for a probe: it stops at its first record.
    let _bulk = (!probe && end - start >= BULK_LOAD_RECORDS).then(|| BulkLoad::begin(store, &log.label()));
    apply_changelog(log, store, committed, agreed, probe, on_record, (start, end))
}

/// A store's bulk-loading settings while it lives ([`StateStore::bulk_load`]). They are
/// tuning only: a switch that fails is logged, and the restore goes on.
struct BulkLoad<'a> {
    store: &'a dyn StateStore,
    label: String,
}

impl<'a> BulkLoad<'a> {
    fn begin(store: &'a dyn StateStore, label: &str) -> Self {
        if let Err(error) = store.bulk_load(true) {
            tracing::warn!("restore of {label}: cannot switch its store to bulk loading ({error}); restoring without");
        }
        // Switched back even so: a store may apply a setting and still fail to record it.
        Self {
            store,
            label: label.to_string(),
        }
    }
}

impl Drop for BulkLoad<'_> {
    fn drop(&mut self) {
        if let Err(error) = self.store.bulk_load(false) {
            tracing::warn!(
                "restore of {}: cannot switch its store back from bulk loading ({error}); it merges its files \
                 later until it is opened again",
                self.label
            );
        }
    }
}

/// Restores of at least this many records write with the store's bulk-loading settings
/// ([`StateStore::bulk_load`]): each switch costs RocksDB an options file.
const BULK_LOAD_RECORDS: i64 = 100_000;

/// [`read_changelog`] from `start` (the store's checkpoint) to `end` (the partition's).
fn apply_changelog(
    log: &mut dyn ChangelogLog,
    store: &dyn StateStore,
    committed: &Committed,
    agreed: Vec<(String, i64)>,
    probe: bool,
    on_record: &mut dyn FnMut(i64, i64),
    (start, end): (i64, i64),
) -> Result<Option<Restored>> {
    log.seek(start)?;
    let label = log.label();
    let mut apply = Apply::new(store, committed, agreed, (end - start) as u64, probe);
    // Every offset up to `last` is read or skipped.
    let mut last = start - 1;
    // Since when no record came (read only when none does: a clock read per record showed in
    // a restore's profile).
    let mut waiting: Option<std::time::Instant> = None;
    loop {
        if log.cancelled() {
            apply.finish((last >= start).then_some(last))?;
            return Ok(None);
        }
        match log.fetch(std::time::Duration::from_millis(200))? {
            Fetched::Record {
                offset,
                key,
                value,
                headers,
            } => {
                last = offset;
                waiting = None;
                on_record(offset, end);
                apply.record(offset, key, value, headers.iter().copied())?;
                if apply.done() || offset + 1 >= end {
                    break;
                }
            }
            Fetched::At(position) if position >= end => {
                last = end - 1;
                break;
            }
            fetched => {
                let since = *waiting.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= std::time::Duration::from_secs(10) {
                    waiting = Some(std::time::Instant::now());
                    match fetched {
                        Fetched::At(position) => tracing::warn!(
                            "restore of {}: waiting for the transactions before offset {end} to end (their records \
                             are read once they have; stable up to offset {position})",
                            label
                        ),
                        _ => tracing::warn!(
                            "restore of {} waiting: at offset {} of {end}; the broker is not sending records",
                            label,
                            last + 1
                        ),
                    }
                }
            }
        }
    }
    apply.finish(Some(last)).map(Some)
}

/// Reads a changelog partition into a store (the worker reads Kafka, the test driver its
/// in-memory topics).
pub(crate) trait ChangelogReader {
    /// Applies `changelog[partition]` to `store` from its checkpoint to the end (see
    /// [`Apply`], and [`Apply::new`] for `probe`); `None` when the restore was cancelled.
    fn restore(
        &self,
        store: &dyn StateStore,
        changelog: &str,
        partition: i32,
        committed: &Committed,
        agreed: Vec<(String, i64)>,
        probe: bool,
    ) -> Result<Option<Restored>>;
}

/// What restoring a task's stores decided.
#[derive(Debug, Default)]
pub(crate) struct Restoration {
    /// Where each source starts.
    pub starts: Vec<(String, i64)>,
    /// Per table (in the task's order): entries to write again at the task's first cut.
    /// A restore that skipped a change of uncommitted input leaves it in the changelog after
    /// the valid value of its key; once the group commits past its source offset, a later
    /// restore would take it for a committed change. Writing the key's value again puts a
    /// valid change after it.
    pub restate: Vec<Vec<crate::store::Entry>>,
    /// Changelog records applied.
    pub applied: u64,
    /// Whether the stores were rebuilt from the beginning of their changelogs.
    pub rebuilt: bool,
    /// The task's stream time as its restored state knows it: the stores' own (the least of
    /// their checkpoints, like their positions) or, once another owner's changes were
    /// applied, the latest those changes carry.
    pub stream_time: Option<i64>,
    /// The operations' stream times, taken as `stream_time` is.
    pub clocks: Clocks,
}

/// Restores the stores of one task (`stores`: each table's store and changelog), decides
/// where its sources start, and what must be written again. `None` when cancelled.
pub(crate) fn restore_task(
    reader: &dyn ChangelogReader,
    stores: &[(std::sync::Arc<dyn StateStore>, std::sync::Arc<str>)],
    partition: i32,
    committed: &Committed,
) -> Result<Option<Restoration>> {
    let checkpoints = stores
        .iter()
        .map(|(store, _)| store.checkpoint())
        .collect::<Result<Vec<_>>>()?;
    let agreed = committed_positions(committed);
    // Stores ahead of the commit (any of them) are only probed first: another owner's
    // changes are not applied on top of their own later effects (they are rebuilt instead).
    let ahead = must_rebuild(committed, &checkpoints);
    let restore_all = |probe: bool| -> Result<Option<Vec<Restored>>> {
        let mut all = Vec::with_capacity(stores.len());
        for (store, changelog) in stores {
            match reader.restore(&**store, changelog, partition, committed, agreed.clone(), probe)? {
                Some(restored) => {
                    let found = restored.found_foreign;
                    all.push(restored);
                    if found {
                        break;
                    }
                }
                None => return Ok(None),
            }
        }
        Ok(Some(all))
    };
    let Some(mut restored) = restore_all(ahead)? else {
        return Ok(None);
    };
    let foreign = restored.iter().any(|r| r.applied > 0 || r.found_foreign);
    let mut applied: u64 = restored.iter().map(|r| r.applied).sum();
    // Stores that took nothing from their changelogs keep their own states; when a crash
    // came between the writes of one cut's stores, those reflect different inputs, and no
    // start agrees with all of them (see [`stores_split`]).
    // Both cases need a store ahead of the commit (a split store is at or past the start,
    // which is at or past the commit). Under exactly-once no store is ahead, except when the
    // group's offsets are gone and the low watermark stands in for them: then a split is
    // rebuilt too, and input from there is processed again (as Kafka Streams does when its
    // offsets are reset).
    let rebuilt = ahead && (foreign || stores_split(committed, &checkpoints));
    if rebuilt {
        for (store, _) in stores {
            store.clear()?;
        }
        restored = match restore_all(false)? {
            Some(again) => again,
            None => return Ok(None),
        };
        applied += restored.iter().map(|r| r.applied).sum::<u64>();
    }
    // Rebuilt or with another owner's changes, the state agrees with the committed input.
    let foreign = foreign || rebuilt;
    let starts = start_offsets(committed, &checkpoints, foreign);
    let stream_time = if foreign {
        restored.iter().filter_map(|r| r.stream_time).max()
    } else {
        checkpoints.iter().filter_map(|c| c.stream_time).min()
    };
    let mut clocks = Clocks::new();
    if foreign {
        for r in &restored {
            merge_clocks(&mut clocks, &r.clocks, i64::max);
        }
    } else {
        for c in &checkpoints {
            merge_clocks(&mut clocks, &c.clocks, i64::min);
        }
    }
    let mut restate = Vec::with_capacity(stores.len());
    for ((store, _), restored) in stores.iter().zip(&restored) {
        let mut entries = Vec::with_capacity(restored.skipped_keys.len());
        for key in &restored.skipped_keys {
            entries.push((key.clone(), store.get(key)?));
        }
        restate.push(entries);
    }
    Ok(Some(Restoration {
        starts,
        restate,
        applied,
        rebuilt,
        stream_time,
        clocks,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_merge_by_name_and_read_back_from_text() {
        let mut clocks: Clocks = vec![("a".into(), 5), ("b".into(), 9)];
        merge_clocks(&mut clocks, &[("b".into(), 7), ("c".into(), 1)], i64::max);
        assert_eq!(clocks, vec![("a".into(), 5), ("b".into(), 9), ("c".into(), 1)]);
        merge_clocks(&mut clocks, &[("b".into(), 7)], i64::min);
        assert_eq!(clocks[1], ("b".into(), 7));
        let text = clocks_text(&clocks);
        assert_eq!(text, "a=5,b=7,c=1");
        assert_eq!(clocks_of_text(&text), clocks);
        assert!(clocks_of_text("").is_empty());
        assert_eq!(clocks_of_text("x=1,broken,y=z"), vec![("x".to_string(), 1)]);
        // An operation no record reached yet is listed without a time.
        let unset: Clocks = vec![("a".into(), i64::MIN), ("b".into(), -3)];
        assert_eq!(clocks_text(&unset), "a=,b=-3");
        assert_eq!(clocks_of_text("a=,b=-3"), unset);
    }

    fn headers(sources: &[(&str, i64)]) -> Vec<(String, Vec<u8>)> {
        let positions: Vec<(std::sync::Arc<str>, i64)> = sources.iter().map(|(t, o)| (Arc::from(*t), *o)).collect();
        cut_headers(&positions, 3, None, &[])
    }
    use std::sync::Arc;

    /// The headers that versions before [`CUT`] wrote for a cut.
    fn legacy_headers(
        sources: &[(&str, i64)],
        partition: i32,
        stream_time: Option<i64>,
        clocks: &[(String, i64)],
    ) -> Vec<(String, Vec<u8>)> {
        let mut headers = Vec::new();
        for (topic, offset) in sources {
            headers.push((SOURCE_TOPIC.to_string(), topic.as_bytes().to_vec()));
            headers.push((SOURCE_PARTITION.to_string(), partition.to_string().into_bytes()));
            headers.push((SOURCE_OFFSET.to_string(), offset.to_string().into_bytes()));
        }
        if let Some(time) = stream_time {
            headers.push((STREAM_TIME.to_string(), time.to_string().into_bytes()));
        }
        if !clocks.is_empty() {
            headers.push((STREAM_CLOCKS.to_string(), clocks_text(clocks).into_bytes()));
        }
        headers
    }

    fn pairs(headers: &[(String, Vec<u8>)]) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Whether a change with these sources is uncommitted, read from a [`CUT`] header and
    /// from the headers of earlier versions (which must agree).
    fn uncommitted(sources: &[(&str, i64)], committed: &[(&str, i64)]) -> bool {
        let committed: Vec<(String, i64)> = committed.iter().map(|(t, o)| (t.to_string(), *o)).collect();
        let now = from_uncommitted_input(pairs(&headers(sources)), &committed);
        let before = from_uncommitted_input(pairs(&legacy_headers(sources, 3, None, &[])), &committed);
        assert_eq!(now, before, "the two forms disagree on {sources:?}");
        for headers in [headers(sources), legacy_headers(sources, 3, None, &[])] {
            assert_eq!(RecordCut::read(pairs(&headers), &committed).uncommitted, now);
        }
        now
    }

    #[test]
    fn a_cut_is_one_header_that_reads_back_as_the_five_of_earlier_versions() {
        let positions: Vec<(Arc<str>, i64)> = vec![(Arc::from("hit_count"), 1041), (Arc::from("a.b-c_d"), 0)];
        let clocks: Clocks = vec![
            ("minute-totals".into(), 1_764_000_060_000),
            ("sessions".into(), i64::MIN),
        ];
        let headers = cut_headers(&positions, 3, Some(-5), &clocks);
        assert_eq!(
            headers,
            vec![(
                CUT.to_string(),
                b"source=hit_count/3/1041;source=a.b-c_d/3/0;time=-5;clock=minute-totals=1764000060000;clock=sessions="
                    .to_vec()
            )]
        );
        let legacy = legacy_headers(&[("hit_count", 1041), ("a.b-c_d", 0)], 3, Some(-5), &clocks);
        let cut = CutPosition::of_headers(pairs(&headers)).expect("a cut");
        assert_eq!(
            cut.sources,
            vec![("hit_count".to_string(), 3, 1041), ("a.b-c_d".to_string(), 3, 0)]
        );
        assert_eq!(cut.stream_time, Some(-5));
        assert_eq!(
            cut.clocks,
            vec![
                ("minute-totals".to_string(), Some(1_764_000_060_000)),
                ("sessions".to_string(), None)
            ]
        );
        assert_eq!(CutPosition::of_headers(pairs(&legacy)), Some(cut));
        for headers in [&headers, &legacy] {
            assert_eq!(stream_time_of(pairs(headers)), Some(-5));
            assert_eq!(clocks_of(pairs(headers)), clocks);
            let read = RecordCut::read(pairs(headers), &[]);
            assert_eq!(read.stream_time, Some(-5));
            let read_clocks: Clocks = read
                .clocks
                .iter()
                .map(|(name, time)| (name.to_string(), *time))
                .collect();
            assert_eq!(read_clocks, clocks, "an operation without a time reads as i64::MIN");
        }
        // Nothing to say, no header; a record without one is no cut's.
        assert!(cut_headers(&[], 0, None, &[]).is_empty());
        assert_eq!(CutPosition::of_headers(pairs(&[("other".into(), b"x".to_vec())])), None);
        // Parts that do not parse, or that a later version adds, are skipped.
        let odd = vec![(
            CUT.to_string(),
            b"source=a/1;source=b/x/2;source=c/1/7;new=1;time=;clock=t;clock=u=9".to_vec(),
        )];
        let cut = CutPosition::of_headers(pairs(&odd)).expect("a cut");
        assert_eq!(cut.sources, vec![("c".to_string(), 1, 7)]);
        assert_eq!((cut.stream_time, cut.clocks), (None, vec![("u".to_string(), Some(9))]));
        let committed = [("a".to_string(), 0), ("b".to_string(), 0), ("c".to_string(), 8)];
        assert!(!from_uncommitted_input(pairs(&odd), &committed));
        let read = RecordCut::read(pairs(&odd), &committed);
        assert!(!read.uncommitted);
        assert_eq!(
            (read.stream_time, read.clocks.as_slice()),
            (None, &[("u".into(), 9)][..])
        );
    }

    /// Offsets near each other (a source's and its committed one meet) or anywhere.
    fn offset() -> impl proptest::strategy::Strategy<Value = i64> {
        proptest::prop_oneof![0..4i64, proptest::prelude::any::<i64>()]
    }

    proptest::proptest! {
        /// Whatever a cut holds — sources (topics of any legal name, any offsets), a stream
        /// time or none, operations' clocks set or not — its one header says the same as the
        /// five of earlier versions, to every reader: what is uncommitted, the stream time,
        /// the clocks.
        #[test]
        fn the_cut_header_and_the_earlier_ones_say_the_same(
            sources in proptest::collection::vec(("[a-zA-Z0-9._-]{1,12}|[a-c]", offset()), 0..4),
            partition in 0..10_000i32,
            stream_time in proptest::option::of(proptest::prelude::any::<i64>()),
            clocks in proptest::collection::vec(("[a-z][a-z0-9_-]{0,9}", proptest::prelude::any::<i64>()), 0..3),
            committed in proptest::collection::vec(("[a-c]", offset()), 0..4),
        ) {
            let positions: Vec<(Arc<str>, i64)> = sources.iter().map(|(t, o)| (Arc::from(t.as_str()), *o)).collect();
            let borrowed: Vec<(&str, i64)> = sources.iter().map(|(t, o)| (t.as_str(), *o)).collect();
            let headers = cut_headers(&positions, partition, stream_time, &clocks);
            let legacy = legacy_headers(&borrowed, partition, stream_time, &clocks);
            proptest::prop_assert!(headers.len() <= 1);
            let cut = CutPosition::of_headers(pairs(&headers));
            proptest::prop_assert_eq!(&cut, &CutPosition::of_headers(pairs(&legacy)));
            if let Some(cut) = &cut {
                let want: Vec<(String, i32, i64)> = sources.iter().map(|(t, o)| (t.clone(), partition, *o)).collect();
                proptest::prop_assert_eq!(&cut.sources, &want);
                proptest::prop_assert_eq!(cut.stream_time, stream_time);
            }
            proptest::prop_assert_eq!(stream_time_of(pairs(&headers)), stream_time);
            proptest::prop_assert_eq!(stream_time_of(pairs(&legacy)), stream_time);
            proptest::prop_assert_eq!(&clocks_of(pairs(&headers)), &clocks);
            proptest::prop_assert_eq!(&clocks_of(pairs(&legacy)), &clocks);
            let committed: Vec<(String, i64)> = committed;
            let model = sources
                .iter()
                .any(|(topic, offset)| committed.iter().any(|(t, next)| t == topic && offset >= next));
            proptest::prop_assert_eq!(from_uncommitted_input(pairs(&headers), &committed), model);
            proptest::prop_assert_eq!(from_uncommitted_input(pairs(&legacy), &committed), model);
            for headers in [&headers, &legacy] {
                let read = RecordCut::read(pairs(headers), &committed);
                proptest::prop_assert_eq!(read.uncommitted, model);
                proptest::prop_assert_eq!(read.stream_time, stream_time);
                let read_clocks: Clocks = read.clocks.iter().map(|(name, time)| (name.to_string(), *time)).collect();
                proptest::prop_assert_eq!(&read_clocks, &clocks);
            }
        }
    }

    /// A header a changelog record may carry: [`CUT`] (its parts well formed or not), one
    /// of the five of earlier versions, or another; values that do not parse included.
    fn any_header() -> impl proptest::strategy::Strategy<Value = (String, Vec<u8>)> {
        use proptest::prelude::*;
        let number = prop_oneof![
            offset().prop_map(|n| n.to_string()),
            Just(String::new()),
            "[0-9x-]{1,3}"
        ];
        let part = prop_oneof![
            ("[a-c]", 0..3i32, number.clone()).prop_map(|(t, p, o)| format!("source={t}/{p}/{o}")),
            number.clone().prop_map(|t| format!("time={t}")),
            ("[a-c]", number.clone()).prop_map(|(c, t)| format!("clock={c}={t}")),
            "[a-z=/;]{0,6}",
        ];
        let cut = prop_oneof![
            proptest::collection::vec(part, 0..5).prop_map(|parts| parts.join(";").into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ];
        let clocks = proptest::collection::vec(("[a-c]", number.clone()), 0..3).prop_map(|pairs| {
            pairs
                .iter()
                .map(|(c, t)| format!("{c}={t}"))
                .collect::<Vec<_>>()
                .join(",")
        });
        // Sources and their offsets often, so that their order matters (an offset without
        // a topic before it, two after one topic).
        prop_oneof![
            3 => cut.prop_map(|value| (CUT.to_string(), value)),
            3 => "[a-c]".prop_map(|t| (SOURCE_TOPIC.to_string(), t.into_bytes())),
            1 => number.clone().prop_map(|p| (SOURCE_PARTITION.to_string(), p.into_bytes())),
            4 => offset().prop_map(|o| (SOURCE_OFFSET.to_string(), o.to_string().into_bytes())),
            1 => number.clone().prop_map(|o| (SOURCE_OFFSET.to_string(), o.into_bytes())),
            2 => number.prop_map(|t| (STREAM_TIME.to_string(), t.into_bytes())),
            2 => clocks.prop_map(|c| (STREAM_CLOCKS.to_string(), c.into_bytes())),
            1 => ("[a-z.]{0,8}", proptest::collection::vec(any::<u8>(), 0..4)),
        ]
    }

    /// The parts of a [`CUT`] header's value as `str`'s own splits find them (how they were
    /// read before [`parts`] read bytes): the model its test compares it with.
    fn parts_by_str(value: &[u8]) -> Vec<Part<'_>> {
        std::str::from_utf8(value)
            .unwrap_or_default()
            .split(';')
            .filter_map(|part| match part.split_once('=')? {
                ("source", source) => {
                    let mut fields = source.rsplitn(3, '/');
                    let offset = fields.next()?.parse().ok()?;
                    let partition = fields.next()?.parse().ok()?;
                    Some(Part::Source(fields.next()?, partition, offset))
                }
                ("time", time) => Some(Part::Time(time.parse().ok()?)),
                ("clock", clock) => {
                    let (name, time) = clock.split_once('=')?;
                    Some(Part::Clock(name, clock_of_text(time)?))
                }
                _ => None,
            })
            .collect()
    }

    /// A cut header's value made of parts well formed or not: topics and names holding `/`,
    /// `=` or non-ASCII text, numbers out of range, empty fields, unknown parts.
    fn cut_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let part = prop_oneof![
            ("[a-zé/=]{0,6}", "[0-9/-]{0,4}", "-?[0-9]{0,20}").prop_map(|(t, p, o)| format!("source={t}/{p}/{o}")),
            "-?[0-9]{0,20}x?".prop_map(|t| format!("time={t}")),
            ("[a-zé/=]{0,6}", "-?[0-9]{0,20}").prop_map(|(c, t)| format!("clock={c}={t}")),
            "[a-z=/;é]{0,8}",
            // Near misses: kinds a letter or a space off, values with spaces.
            (
                prop_oneof!["source", "time", "clock", "sources", "clocks", " time", "time ", "tim"],
                "[ 0-9a-z=/é-]{0,10}"
            )
                .prop_map(|(kind, value)| format!("{kind}={value}")),
        ];
        (proptest::collection::vec(part, 0..6), "[ ;]{0,2}", "[ ;]{0,2}")
            .prop_map(|(parts, before, after)| format!("{before}{}{after}", parts.join(";")))
    }

    proptest::proptest! {
        /// A cut header's parts, read by bytes, are those `str`'s splits find, in any header
        /// (see [`cut_text`]) and in any bytes.
        #[test]
        fn a_cut_headers_parts_read_by_bytes_are_those_read_as_text(
            text in cut_text(),
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
        ) {
            proptest::prop_assert_eq!(parts(text.as_bytes()).collect::<Vec<_>>(), parts_by_str(text.as_bytes()));
            proptest::prop_assert_eq!(parts(&junk).collect::<Vec<_>>(), parts_by_str(&junk));
        }
    }

    proptest::proptest! {
        // Cheap cases, many: an order that matters (two offsets after one topic) is rare.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        /// A restore reads a record's headers once: it learns what three passes over them
        /// (one per question) learn, whatever the headers — a cut's, those of earlier
        /// versions, both, several, none, values that do not parse.
        #[test]
        fn one_pass_over_a_records_headers_reads_what_three_did(
            headers in proptest::collection::vec(any_header(), 0..9),
            committed in proptest::collection::vec(("[a-c]", offset()), 0..4),
        ) {
            let committed: Vec<(String, i64)> = committed;
            let cut = RecordCut::read(pairs(&headers), &committed);
            proptest::prop_assert_eq!(cut.uncommitted, from_uncommitted_input(pairs(&headers), &committed));
            proptest::prop_assert_eq!(cut.stream_time, stream_time_of(pairs(&headers)));
            let clocks: Clocks = cut.clocks.into_iter().map(|(name, time)| (name.into_owned(), time)).collect();
            proptest::prop_assert_eq!(clocks, clocks_of(pairs(&headers)));
        }
    }

    #[test]
    fn a_change_is_uncommitted_when_any_of_its_sources_is() {
        assert!(!uncommitted(&[("a", 9)], &[("a", 10)]));
        assert!(uncommitted(&[("a", 10)], &[("a", 10)]));
        assert!(!uncommitted(&[("a", 5), ("b", 7)], &[("a", 6), ("b", 8)]));
        assert!(uncommitted(&[("a", 5), ("b", 8)], &[("a", 6), ("b", 8)]));
        assert!(!uncommitted(&[("other", 99)], &[("a", 1)]), "not a source of the task");
        assert!(!uncommitted(&[], &[("a", 1)]), "no source named");
    }

    fn checkpoint(sources: &[(&str, i64)]) -> Checkpoint {
        Checkpoint {
            changelog_offset: Some(0),
            sources: Some(sources.iter().map(|(t, o)| (t.to_string(), *o)).collect()),
            stream_time: None,
            clocks: Vec::new(),
        }
    }

    /// A changelog in memory: records with their source offset; the `cancel_after`-th
    /// restore (and those after it) is cancelled, as a revoke would.
    struct Log {
        records: Vec<(Vec<u8>, Vec<u8>, i64)>,
        calls: std::cell::Cell<usize>,
        cancel_after: usize,
    }

    impl ChangelogReader for Log {
        fn restore(
            &self,
            store: &dyn StateStore,
            _: &str,
            _: i32,
            committed: &Committed,
            agreed: Vec<(String, i64)>,
            probe: bool,
        ) -> Result<Option<Restored>> {
            self.calls.set(self.calls.get() + 1);
            if self.calls.get() > self.cancel_after {
                return Ok(None);
            }
            let from = store.checkpoint()?.changelog_offset.map_or(0, |o| o + 1);
            let mut apply = Apply::new(store, committed, agreed, 0, probe);
            for (offset, (key, value, source)) in self.records.iter().enumerate().skip(from as usize) {
                let headers = headers(&[("a", *source)]);
                let headers = headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
                apply.record(offset as i64, Some(key), Some(value), headers)?;
                if apply.done() {
                    break;
                }
            }
            Ok(Some(apply.finish(Some(self.records.len() as i64 - 1))?))
        }
    }

    /// A store whose `clear` fails, as a worker killed at that moment would stop there.
    struct NoClear(crate::store::MemoryStore);

    impl StateStore for NoClear {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.0.get(key)
        }
        fn write(&self, entries: &[crate::store::Entry], checkpoint: &Checkpoint) -> Result<()> {
            self.0.write(entries, checkpoint)
        }
        fn checkpoint(&self) -> Result<Checkpoint> {
            self.0.checkpoint()
        }
        fn clear(&self) -> Result<()> {
            Err(crate::Error::Config("killed".into()))
        }
        fn for_each(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
            self.0.for_each(visit)
        }
    }

    /// A store ahead of the group's commit, returning after another owner's changes: those
    /// are not applied on top of its own before it is rebuilt, so a crash between the two
    /// leaves it as it was (still ahead, still to be rebuilt) rather than with both under
    /// the committed positions (which would count its own effects again).
    #[test]
    fn a_store_ahead_takes_no_foreign_change_before_its_rebuild() {
        let store: Arc<dyn StateStore> = Arc::new(NoClear(crate::store::MemoryStore::default()));
        // Its own: k = 3 from input up to 9 (changelog offset 0), the group at 7.
        let own = Checkpoint {
            changelog_offset: Some(0),
            sources: Some(vec![("a".into(), 9)]),
            stream_time: None,
            clocks: Vec::new(),
        };
        store.write(&[(b"k".to_vec(), Some(b"3".to_vec()))], &own).unwrap();
        let log = Log {
            records: vec![
                (b"k".to_vec(), b"3".to_vec(), 9), // its own, uncommitted
                (b"k".to_vec(), b"2".to_vec(), 6), // another owner's, committed
            ],
            calls: std::cell::Cell::new(0),
            cancel_after: 9,
        };
        let committed = vec![("a".to_string(), 7)];
        let stores = vec![(Arc::clone(&store), Arc::<str>::from("log"))];
        // The probe finds the other owner's change; the worker dies before the rebuild.
        assert!(restore_task(&log, &stores, 0, &committed).is_err());
        assert_eq!(store.checkpoint().unwrap(), own, "its own checkpoint, untouched");
        assert_eq!(store.get(b"k").unwrap(), Some(b"3".to_vec()));
        // Restored with a store that can be cleared: rebuilt, from the committed offset.
        let fresh: Arc<dyn StateStore> = Arc::new(crate::store::MemoryStore::default());
        fresh.write(&[(b"k".to_vec(), Some(b"3".to_vec()))], &own).unwrap();
        let stores = vec![(Arc::clone(&fresh), Arc::<str>::from("log"))];
        let restoration = restore_task(&log, &stores, 0, &committed).unwrap().unwrap();
        assert!(restoration.rebuilt);
        assert_eq!(restoration.starts, vec![("a".into(), 7)]);
        assert_eq!(fresh.get(b"k").unwrap(), Some(b"2".to_vec()));
    }

    /// A skipped record keeps the checkpoint before it until the task's first cut has made
    /// the key's valid value durable after it.
    #[test]
    fn the_checkpoint_stays_before_a_skipped_change() {
        use crate::store::MemoryStore;
        let store = MemoryStore::default();
        let committed = vec![("a".to_string(), 5)];
        let mut apply = Apply::new(&store, &committed, committed_positions(&committed), 0, false);
        for (offset, source) in [(0, 1), (1, 7), (2, 3)] {
            let headers = headers(&[("a", source)]);
            let headers = headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
            apply.record(offset, Some(b"k"), Some(b"1"), headers).unwrap();
        }
        let restored = apply.finish(Some(2)).unwrap();
        assert_eq!((restored.applied, restored.skipped), (2, 1));
        assert_eq!(store.checkpoint().unwrap().changelog_offset, Some(0));
    }

    /// A restore writes each batch sorted by key, one entry per key: the store ends as if
    /// every record was applied in order (repeated keys, deletions, keys that are prefixes
    /// of others, across several batches).
    #[test]
    fn a_restore_ends_with_each_keys_last_change() {
        use crate::store::MemoryStore;
        let store = MemoryStore::default();
        let committed = vec![("a".to_string(), i64::MAX)];
        let mut apply = Apply::new(&store, &committed, committed_positions(&committed), 0, false);
        let mut model = std::collections::BTreeMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let records = 2 * BATCH as i64 + 3;
        for offset in 0..records {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let key = format!("k{}", seed % 23).into_bytes();
            let value = (!seed.is_multiple_of(5)).then(|| offset.to_string().into_bytes());
            apply
                .record(offset, Some(&key), value.as_deref(), std::iter::empty())
                .unwrap();
            match value {
                Some(value) => model.insert(key, value),
                None => model.remove(&key),
            };
        }
        let restored = apply.finish(Some(records - 1)).unwrap();
        assert_eq!(restored.applied, records as u64);
        let mut held = std::collections::BTreeMap::new();
        store
            .for_each(&mut |key, value| {
                held.insert(key.to_vec(), value.to_vec());
            })
            .unwrap();
        assert_eq!(held, model);
        assert_eq!(store.checkpoint().unwrap().changelog_offset, Some(records - 1));
    }

    /// A worker killed between the writes of one cut's two stores: the first holds the
    /// cut's effects, the second the cut before's. Starting after the lesser position would
    /// count the cut's input twice in the first; both are rebuilt from their changelogs
    /// (without the cut's changes, whose input is not committed) and the task starts at the
    /// committed offset. The smoke test found this (a count per user above the truth).
    #[test]
    fn stores_split_by_a_crash_between_their_writes_are_rebuilt() {
        use crate::store::MemoryStore;
        let at = |changelog_offset: i64, source: i64| Checkpoint {
            changelog_offset: Some(changelog_offset),
            sources: Some(vec![("a".into(), source)]),
            stream_time: None,
            clocks: Vec::new(),
        };
        // The changelogs (both alike here): k = 4 from input up to 900, k = 5 from the cut
        // up to 999.
        let log = || Log {
            records: vec![(b"k".to_vec(), b"4".to_vec(), 900), (b"k".to_vec(), b"5".to_vec(), 999)],
            calls: std::cell::Cell::new(0),
            cancel_after: 9,
        };
        // Committed right after the cut before (901), or further back (801: the stores are
        // then ahead of the commit, and probed first).
        for (committed_at, value) in [(901, Some(b"4".to_vec())), (801, None)] {
            let written: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
            written
                .write(&[(b"k".to_vec(), Some(b"5".to_vec()))], &at(1, 999))
                .unwrap();
            let behind: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
            behind
                .write(&[(b"k".to_vec(), Some(b"4".to_vec()))], &at(0, 900))
                .unwrap();
            let committed = vec![("a".to_string(), committed_at)];
            let stores = vec![
                (Arc::clone(&written), Arc::<str>::from("written")),
                (Arc::clone(&behind), Arc::<str>::from("behind")),
            ];
            let restoration = restore_task(&log(), &stores, 0, &committed).unwrap().unwrap();
            assert_eq!(
                restoration.starts,
                vec![("a".into(), committed_at)],
                "committed {committed_at}"
            );
            assert!(restoration.rebuilt, "committed {committed_at}");
            // Both agree with the input before the start.
            assert_eq!(written.get(b"k").unwrap(), value, "committed {committed_at}");
            assert_eq!(behind.get(b"k").unwrap(), value, "committed {committed_at}");
            // The cut's change was skipped: its key is written again at the first cut.
            assert_eq!(restoration.restate[0], vec![(b"k".to_vec(), value.clone())]);
        }
    }

    #[test]
    fn the_start_agrees_with_the_restored_state() {
        let committed = vec![("a".to_string(), 801)];
        let ahead = [checkpoint(&[("a", 999)])];
        // The store is ahead of a failed commit and nothing came after it: resume after it.
        assert_eq!(start_offsets(&committed, &ahead, false), vec![("a".into(), 1000)]);
        // Another owner's changes were applied: the state agrees with the committed input
        // (once rebuilt, as it is ahead).
        assert_eq!(start_offsets(&committed, &ahead, true), vec![("a".into(), 801)]);
        assert!(must_rebuild(&committed, &ahead));
        // Behind the commit: the committed offset, no rebuild.
        let behind = [checkpoint(&[("a", 10)])];
        assert_eq!(start_offsets(&committed, &behind, false), vec![("a".into(), 801)]);
        assert!(!must_rebuild(&committed, &behind));
        // Two stores, one left behind by a crash between their writes: no start agrees with
        // both (the restore rebuilds them).
        let stores = [checkpoint(&[("a", 999)]), checkpoint(&[("a", 900)])];
        assert!(stores_split(&committed, &stores));
        assert!(!stores_split(&committed, &ahead));
        // Apart only before the committed offset: they agree from there on.
        let apart = [checkpoint(&[("a", 700)]), checkpoint(&[("a", 10)])];
        assert!(!stores_split(&committed, &apart));
        assert_eq!(start_offsets(&committed, &apart, false), vec![("a".into(), 801)]);
        let one_at_the_commit = [checkpoint(&[("a", 800)]), checkpoint(&[("a", 10)])];
        assert!(!stores_split(&committed, &one_at_the_commit));
        let one_past = [checkpoint(&[("a", 801)]), checkpoint(&[("a", 10)])];
        assert!(stores_split(&committed, &one_past));
        assert!(must_rebuild(&committed, &one_past), "one store ahead is enough");
        // A store without a position reflects none of the input (the first cut that reached
        // it was cut short): the task cannot start after the other's.
        let first_cut_short = [checkpoint(&[("a", 900)]), checkpoint(&[])];
        assert_eq!(
            start_offsets(&committed, &first_cut_short, false),
            vec![("a".into(), 801)]
        );
        assert!(stores_split(&committed, &first_cut_short));
        let nothing_committed = vec![("a".to_string(), 0)];
        assert_eq!(
            start_offsets(&nothing_committed, &first_cut_short, false),
            vec![("a".into(), 0)]
        );
        assert!(stores_split(&nothing_committed, &first_cut_short));
        // No position (an empty store): the committed offset.
        assert_eq!(start_offsets(&committed, &[], false), vec![("a".into(), 801)]);
        assert_eq!(committed_positions(&committed), vec![("a".into(), 800)]);
    }

    /// A changelog in memory: `records` from offset 0; cancelled once `cancel_at` records
    /// were read.
    struct VecLog {
        records: Vec<(Vec<u8>, Vec<u8>)>,
        next: usize,
        cancel_at: Option<usize>,
    }

    impl ChangelogLog for VecLog {
        fn bounds(&mut self) -> Result<Option<(i64, i64)>> {
            Ok(Some((0, self.records.len() as i64)))
        }
        fn seek(&mut self, offset: i64) -> Result<()> {
            self.next = offset as usize;
            Ok(())
        }
        fn fetch(&mut self, _: std::time::Duration) -> Result<Fetched<'_>> {
            let offset = self.next;
            let Some((key, value)) = self.records.get(offset) else {
                return Ok(Fetched::At(offset as i64));
            };
            self.next += 1;
            Ok(Fetched::Record {
                offset: offset as i64,
                key: Some(key),
                value: Some(value),
                headers: Headers::new(),
            })
        }
        fn cancelled(&self) -> bool {
            self.cancel_at.is_some_and(|at| self.next >= at)
        }
        fn label(&self) -> String {
            "log[0]".into()
        }
    }

    /// A store that notes its bulk-loading switches and its writes (`W` while bulk loading,
    /// `w` otherwise); its writes fail from the `fail_from`th on.
    #[derive(Default)]
    struct Noting {
        store: crate::store::MemoryStore,
        bulk: std::sync::atomic::AtomicBool,
        notes: std::sync::Mutex<String>,
        fail_from: Option<usize>,
        /// Its bulk-loading switches apply, then fail (as RocksDB's can, when it cannot
        /// record the options).
        bulk_fails: bool,
    }

    impl Noting {
        fn notes(&self) -> String {
            let notes = self.notes.lock().unwrap().clone();
            // Runs of writes as one letter each.
            let mut squeezed = String::new();
            for c in notes.chars() {
                if !(matches!(c, 'w' | 'W') && squeezed.ends_with(c)) {
                    squeezed.push(c);
                }
            }
            squeezed
        }
    }

    impl StateStore for Noting {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.store.get(key)
        }
        fn write(&self, entries: &[crate::store::Entry], checkpoint: &Checkpoint) -> Result<()> {
            let mut notes = self.notes.lock().unwrap();
            let writes = notes.chars().filter(|c| matches!(c, 'w' | 'W')).count();
            if self.fail_from.is_some_and(|from| writes >= from) {
                return Err(crate::Error::Config("disk full".into()));
            }
            notes.push(if self.bulk.load(std::sync::atomic::Ordering::Relaxed) {
                'W'
            } else {
                'w'
            });
            self.store.write(entries, checkpoint)
        }
        fn bulk_load(&self, on: bool) -> Result<()> {
            self.bulk.store(on, std::sync::atomic::Ordering::Relaxed);
            self.notes.lock().unwrap().push(if on { '[' } else { ']' });
            if self.bulk_fails {
                return Err(crate::Error::Config("cannot write OPTIONS".into()));
            }
            Ok(())
        }
        fn checkpoint(&self) -> Result<Checkpoint> {
            self.store.checkpoint()
        }
        fn clear(&self) -> Result<()> {
            self.store.clear()
        }
        fn for_each(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
            self.store.for_each(visit)
        }
    }

    fn restore_into(store: &Noting, records: usize, cancel_at: Option<usize>) -> Result<Option<Restored>> {
        let mut log = VecLog {
            records: (0..records)
                .map(|i| (format!("k{i}").into_bytes(), b"1".to_vec()))
                .collect(),
            next: 0,
            cancel_at,
        };
        let committed = vec![("a".to_string(), 0)];
        read_changelog(
            &mut log,
            store,
            &committed,
            committed_positions(&committed),
            false,
            &mut |_, _| {},
        )
    }

    /// A large restore writes every batch with the store's bulk-loading settings and
    /// switches back after its last, however it ends; a small one does not switch.
    #[test]
    fn a_large_restore_writes_bulk_loading_and_switches_back_however_it_ends() {
        let large = BULK_LOAD_RECORDS as usize;
        let store = Noting::default();
        let restored = restore_into(&store, large, None).unwrap().unwrap();
        assert_eq!(restored.applied, large as u64);
        assert_eq!(store.notes(), "[W]");
        assert_eq!(
            store.get(format!("k{}", large - 1).as_bytes()).unwrap(),
            Some(b"1".to_vec())
        );

        let store = Noting::default();
        restore_into(&store, large - 1, None).unwrap().unwrap();
        assert_eq!(store.notes(), "w", "below the threshold: normal settings");

        // Cancelled (the partition was revoked): what was applied stays, settings back.
        let store = Noting::default();
        assert_eq!(restore_into(&store, large, Some(3 * BATCH + 5)).unwrap(), None);
        assert_eq!(store.notes(), "[W]");

        // A write that fails: the restore fails with it, settings back.
        let store = Noting {
            fail_from: Some(2),
            ..Noting::default()
        };
        let error = restore_into(&store, large, None).unwrap_err();
        assert!(error.to_string().contains("disk full"), "{error}");
        assert_eq!(store.notes(), "[W]");

        // Switches that fail are tuning lost, not a restore lost; the switch back is tried
        // even when the first one failed.
        let store = Noting {
            bulk_fails: true,
            ..Noting::default()
        };
        let restored = restore_into(&store, large, None).unwrap().unwrap();
        assert_eq!(restored.applied, large as u64);
        assert_eq!(store.notes(), "[W]");
    }
}

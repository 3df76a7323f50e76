//! The broker-free test driver, in the spirit of Kafka Streams' `TopologyTestDriver` and
//! Faust's `agent.test_context()`: the app's real agents run in-process on the same task code
//! as a worker — only the source of records (an in-memory log) and the sink of outputs differ,
//! and stores are in memory. Deterministic and fast; no broker, no disk.
//!
//! ```
//! use streams_core::prelude::*;
//! use streams_core::testing::TestDriver;
//!
//! #[record]
//! #[derive(Debug, PartialEq)]
//! struct Hit { hits: i64, user: String }
//!
//! const HITS: Topic<(), Hit> = Topic::new("hits");
//! const MAJOR: Topic<String, Hit> = Topic::new("major").internal();
//! const COUNTS: Table<String, i64> = Table::new("counts");
//!
//! #[agent(topic = HITS, sends = [MAJOR])]
//! async fn filter(mut hits: Stream<(), Hit>) -> Result<()> {
//!     while let Some(hit) = hits.next().await {
//!         if hit.hits > 20 {
//!             MAJOR.send(&hit.user, &hit).await?;
//!         }
//!     }
//!     Ok(())
//! }
//!
//! #[agent(topic = MAJOR, tables = [COUNTS])]
//! async fn count(mut hits: Stream<String, Hit>) -> Result<()> {
//!     while let Some(event) = hits.next_event().await {
//!         COUNTS.update(&event.key, |n| *n += 1).await?;
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> streams_core::Result<()> {
//! let mut driver = TestDriver::new(App::new("test").agent(filter).agent(count))?;
//! driver.pipe(&HITS, &(), &Hit { hits: 30, user: "ann".into() })?;
//! driver.pipe(&HITS, &(), &Hit { hits: 5, user: "bob".into() })?;
//! driver.pipe_raw("hits", None, Some(b"not json"));
//! driver.run().await?;
//!
//! assert_eq!(driver.records(&MAJOR)?, vec![("ann".to_string(), Hit { hits: 30, user: "ann".into() })]);
//! assert_eq!(driver.table(&COUNTS)?.get("ann"), Some(&1));
//! assert_eq!(driver.dead_letters("filter").len(), 1);
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::codec::{AsKey, Key};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::store::{MemoryStore, StateStore};
use crate::table::{Table, WindowedTable};
use crate::task::commit::{self, OffsetCommit};
use crate::task::input::{Input, StreamCore};
use crate::task::run::{run_partition, TaskSpec};
use crate::task::sink::{FlushError, Headers, OutRecord, Refused, Sink, SinkError};
use crate::task::tables::TableState;
use crate::task::TaskContext;
use crate::timer::{Tick, Timer};
use crate::topic::Topic;
use crate::window::{Window, Windowed};
use crate::{App, Error, Result};

/// A record as it sits in a topic of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRecord {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Headers, as text.
    pub headers: Vec<(String, String)>,
    /// Timestamp (ms) on the driver's clock.
    pub timestamp: i64,
    /// Sent in a transaction that was aborted (exactly-once): a `read_committed` reader never
    /// sees it ([`TestDriver::records`] skips it; [`TestDriver::raw_records`] shows it).
    pub aborted: bool,
    /// Exactly-once: the transaction it was sent in, numbered in the order they began
    /// (records sent together atomically share it); `None` outside transactions.
    pub transaction: Option<u64>,
}

impl TestRecord {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Where the cut that wrote this changelog record stood: its
    /// [`CUT`](crate::changelog::CUT) header (or the headers earlier versions wrote), read
    /// as a restore reads it; `None` for other records.
    ///
    /// ```
    /// use streams_core::prelude::*;
    /// use streams_core::testing::{TestDriver, TestRecord};
    ///
    /// const WORDS: Topic<String, String> = Topic::new("words");
    /// const SEEN: Table<String, i64> = Table::new("seen");
    ///
    /// #[agent(topic = WORDS, tables = [SEEN])]
    /// async fn count(mut words: Stream<String, String>) -> Result<()> {
    ///     while let Some(event) = words.next_event().await {
    ///         SEEN.update(&event.key, |n| *n += 1).await?;
    ///     }
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> streams_core::Result<()> {
    /// let mut driver = TestDriver::new(App::new("test").agent(count))?;
    /// driver.pipe(&WORDS, &"to".to_string(), &"to".to_string())?;
    /// driver.pipe(&WORDS, &"be".to_string(), &"be".to_string())?;
    /// driver.run().await?;
    ///
    /// // The table's last change was made by a cut that had processed `words` to offset 1.
    /// let changelog = driver.raw_records("test-seen-changelog");
    /// let cut = changelog.last().and_then(TestRecord::cut).expect("a cut's record");
    /// assert_eq!(cut.sources, vec![("words".to_string(), 0, 1)]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn cut(&self) -> Option<crate::changelog::CutPosition> {
        crate::changelog::CutPosition::of_headers(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
    }
}

pub use crate::partitioner::{kafka_partition, murmur2};

/// One partition of a driver topic. The records' bytes sit in one buffer, in order, as in
/// a fetch response: reading a partition touches memory in order.
#[derive(Default, Clone)]
struct PartitionLog {
    data: Vec<u8>,
    records: Vec<Stored>,
    /// The first record of a transaction that has not ended (or whose markers are not
    /// written yet), if any: the partition's last stable offset.
    first_pending: Option<usize>,
}

#[derive(Clone)]
struct Stored {
    /// Where the key (then the value) starts in `data`.
    start: usize,
    key_len: Option<usize>,
    value_len: Option<usize>,
    /// Shared by the records whose headers were one list (a cut's changelog records).
    headers: TextHeaders,
    timestamp: i64,
    state: Visibility,
    /// Its place among every record appended to any topic: the order they were produced in.
    seq: u64,
    /// The transaction it was sent in, if any.
    txn: Option<u64>,
}

/// Where a record stands with its transaction (exactly-once; others are committed at once).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Visibility {
    Committed,
    /// In transaction number `n`, not ended (or its markers not written yet): it and what
    /// follows it are not read yet (the partition's last stable offset is before it).
    Pending(u64),
    Aborted,
}

impl PartitionLog {
    fn len(&self) -> usize {
        self.records.len()
    }

    /// Appends a record; returns its offset.
    fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: TextHeaders,
        timestamp: i64,
        state: Visibility,
        seq: u64,
    ) -> i64 {
        let start = self.data.len();
        self.data.extend_from_slice(key.unwrap_or_default());
        self.data.extend_from_slice(value.unwrap_or_default());
        self.records.push(Stored {
            start,
            key_len: key.map(<[u8]>::len),
            value_len: value.map(<[u8]>::len),
            headers,
            timestamp,
            state,
            seq,
            txn: match state {
                Visibility::Pending(txn) => Some(txn),
                _ => None,
            },
        });
        if matches!(state, Visibility::Pending(_)) {
            self.first_pending.get_or_insert(self.records.len() - 1);
        }
        self.records.len() as i64 - 1
    }

    /// The end of what a `read_committed` reader reads: the first record of the open
    /// transaction, or the end.
    fn stable_end(&self) -> usize {
        self.first_pending.unwrap_or(self.records.len())
    }

    /// Whether the record at `offset` belongs to an aborted transaction.
    fn is_aborted(&self, offset: usize) -> bool {
        self.records.get(offset).is_some_and(|r| r.state == Visibility::Aborted)
    }

    /// Transaction `txn`'s markers are written: its records become committed or aborted.
    fn settle(&mut self, txn: u64, committed: bool) {
        let Some(first) = self.first_pending else { return };
        let mut still = None;
        for (offset, record) in self.records.iter_mut().enumerate().skip(first) {
            match record.state {
                Visibility::Pending(n) if n == txn => {
                    record.state = if committed {
                        Visibility::Committed
                    } else {
                        Visibility::Aborted
                    };
                }
                Visibility::Pending(_) => {
                    still.get_or_insert(offset);
                }
                _ => {}
            }
        }
        self.first_pending = still;
    }

    fn parts(&self, stored: &Stored) -> (Option<&[u8]>, Option<&[u8]>) {
        let value_start = stored.start + stored.key_len.unwrap_or(0);
        let key = stored.key_len.map(|len| &self.data[stored.start..stored.start + len]);
        let value = stored.value_len.map(|len| &self.data[value_start..value_start + len]);
        (key, value)
    }

    /// The record at `offset` as the stream gets it.
    fn message(&self, offset: usize) -> Message {
        let stored = &self.records[offset];
        let (key, value) = self.parts(stored);
        let headers = (!stored.headers.is_empty()).then(|| {
            stored
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |headers, (key, value)| {
                    headers.insert(Header {
                        key,
                        value: Some(value.as_bytes()),
                    })
                })
        });
        Message::new(offset as i64, Some(stored.timestamp), key, value, headers)
    }

    /// The record at `offset`, for inspection.
    fn record(&self, partition: i32, offset: usize) -> TestRecord {
        let stored = &self.records[offset];
        let (key, value) = self.parts(stored);
        TestRecord {
            partition,
            offset: offset as i64,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: stored.headers.to_vec(),
            timestamp: stored.timestamp,
            aborted: stored.state == Visibility::Aborted,
            transaction: stored.txn,
        }
    }
}

#[derive(Default)]
struct Log {
    topics: HashMap<String, Vec<PartitionLog>, foldhash::fast::RandomState>,
    round_robin: HashMap<String, usize, foldhash::fast::RandomState>,
    /// Records appended so far, to any topic (the next one's [`Stored::seq`]).
    appended: u64,
    clock: i64,
    /// Exactly-once: what the app sends belongs to the open transaction.
    transactional: bool,
    /// The open transaction's number.
    txn: u64,
    /// Transactions committed whose markers are not written yet (see
    /// [`TestDriver::marker_latency`]).
    unmarked: usize,
    /// How long after a transaction's commit its markers are written.
    marker_latency: Duration,
    /// Topics whose larger records the broker refuses: (topic, largest value in bytes).
    refusing: Vec<(String, usize)>,
    /// Records refused since the last flush.
    refused: Vec<Refused>,
    /// Exactly-once: records not taken since the last flush because a refused record
    /// doomed the transaction (librdkafka takes no more records into a transaction that can
    /// only abort).
    not_taken: usize,
    /// How long a flush waits, as for a broker's acknowledgements (see
    /// [`TestDriver::ack_latency`]).
    ack_latency: Duration,
    /// Exactly-once: the open transaction is being committed (from the round's flush until
    /// its commit or abort): a record sent now would go into a transaction that commits
    /// without its source offsets.
    sealed: bool,
    /// Exactly-once: a transaction has begun and not ended (the producer takes records).
    open: bool,
    /// Records sent while the transaction was sealed, or while none was open: an
    /// exactly-once violation of the engine, which the driver's runs report.
    slipped: Vec<String>,
    /// Exactly-once: whether the tasks sent records into the open transaction since the
    /// committer last asked ([`Sink::take_sent`]).
    sent: bool,
    /// The last headers made text, and their text: the changelog records of a cut share
    /// one list, made text once (per record, it was a tenth of a windowed app's run or more).
    last_headers: Option<(Headers, TextHeaders)>,
    /// How long the producer's queue is full from the next changelog record offered (see
    /// [`TestDriver::full_queue_at_next_cut`]).
    full_at_cut: Option<Duration>,
    /// Until when the producer's queue is full: nothing is taken.
    full_until: Option<std::time::Instant>,
}

/// A record's headers as text.
type TextHeaders = Arc<[(String, String)]>;

impl Log {
    /// Transaction `txn`'s markers are written, on every partition.
    fn settle(&mut self, txn: u64, committed: bool) {
        for parts in self.topics.values_mut() {
            for part in parts {
                part.settle(txn, committed);
            }
        }
    }
}

/// Unit tests: what runs when a pass of the driver's feed found nothing to hand over.
#[cfg(test)]
type IdleHook = Box<dyn FnMut(&Topics) + Send>;

/// The driver's topics: the source of records and the sink of outputs.
#[derive(Clone, Default)]
struct Topics(Arc<Mutex<Log>>);

impl Topics {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, record: OutRecord) -> (i32, i64) {
        self.append_as(&record, Visibility::Committed)
    }

    fn append_as(&self, record: &OutRecord, state: Visibility) -> (i32, i64) {
        self.log().append(record, state)
    }
}

impl Log {
    fn append(&mut self, record: &OutRecord, state: Visibility) -> (i32, i64) {
        let log = self;
        let clock = log.clock;
        let partitions = log.topics.get(&*record.topic).map_or(1, |p| p.len()) as i32;
        let partition = match (record.partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(key)) => kafka_partition(key, partitions),
            (None, None) => {
                let next = log.round_robin.entry(record.topic.to_string()).or_default();
                *next += 1;
                ((*next - 1) % partitions as usize) as i32
            }
        };
        let seq = log.appended;
        log.appended += 1;
        let headers = log.text_headers(&record.headers);
        let parts = match log.topics.get_mut(&*record.topic) {
            Some(parts) => parts,
            None => log
                .topics
                .entry(record.topic.to_string())
                .or_insert_with(|| vec![PartitionLog::default()]),
        };
        let index = (partition.max(0) as usize).min(parts.len() - 1);
        let timestamp = record.timestamp.unwrap_or(clock);
        let offset = parts[index].push(
            record.key.as_deref(),
            record.value.as_deref(),
            headers,
            timestamp,
            state,
            seq,
        );
        (index as i32, offset)
    }
}

impl Log {
    /// `headers` as text; the same list as the last record's is made text once.
    fn text_headers(&mut self, headers: &Headers) -> TextHeaders {
        if let Some((last, text)) = &self.last_headers {
            if last.same(headers) {
                return Arc::clone(text);
            }
        }
        let text: TextHeaders = headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        self.last_headers = Some((headers.clone(), Arc::clone(&text)));
        text
    }
}

impl Topics {
    /// Takes a record the tasks send: appended (its bytes copied into the partition's
    /// log), or refused as a broker would. `false`: not taken, the producer's queue is full
    /// (see [`TestDriver::full_queue_at_next_cut`]).
    fn take(&self, record: &OutRecord, outside: bool) -> bool {
        // One lock for the choice of the record's transaction and its append: a commit in
        // between would leave it in a transaction that has ended.
        let mut log = self.log();
        // Exactly-once: the tasks' records belong to the open transaction.
        let in_txn = log.transactional && !outside;
        if !outside && (log.full_at_cut.is_some() || log.full_until.is_some()) {
            if record.changelog {
                if let Some(full) = log.full_at_cut.take() {
                    log.full_until = Some(std::time::Instant::now() + full);
                }
            }
            match log.full_until {
                Some(until) if std::time::Instant::now() < until => return false,
                Some(_) => log.full_until = None,
                None => {}
            }
        }
        if in_txn && log.sealed {
            let what = format!(
                "a record to `{}` was sent while transaction {} was being committed: it goes into that \
                 transaction without its source offsets",
                record.topic, log.txn
            );
            log.slipped.push(what);
        } else if in_txn && !log.open {
            let what = format!(
                "a record to `{}` was sent between the end of transaction {} and the beginning of the next: \
                 librdkafka refuses it",
                record.topic,
                log.txn.wrapping_sub(1)
            );
            log.slipped.push(what);
        }
        let size = record.value.as_ref().map_or(0, Vec::len);
        let refused = log
            .refusing
            .iter()
            .any(|(topic, largest)| **topic == *record.topic && size > *largest);
        if in_txn && !log.refused.is_empty() {
            // The transaction can only abort: the record is not taken, and made again
            // when the input is processed again.
            log.not_taken += 1;
            return true;
        }
        if refused {
            // As a broker answers a record over the topic's `max.message.bytes`.
            log.refused.push(Refused {
                record: record.clone(),
                error: "Broker: Message size too large".into(),
            });
            return true;
        }
        let state = if in_txn {
            log.sent = true;
            Visibility::Pending(log.txn)
        } else {
            Visibility::Committed
        };
        log.append(record, state);
        true
    }
}

impl Sink for Topics {
    fn enqueue(&self, record: OutRecord) -> Result<(), SinkError> {
        if self.take(&record, false) {
            Ok(())
        } else {
            Err(SinkError::Full(record))
        }
    }

    fn enqueue_copy(&self, record: &OutRecord) -> Result<(), SinkError> {
        if self.take(record, false) {
            Ok(())
        } else {
            Err(SinkError::Full(record.clone()))
        }
    }

    fn flush(&self) -> Result<(), FlushError> {
        let latency = {
            let mut log = self.log();
            // Exactly-once: only the committer flushes, as the round's transaction commits.
            log.sealed = log.transactional;
            log.ack_latency
        };
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        let mut log = self.log();
        let refused = std::mem::take(&mut log.refused);
        let not_taken = std::mem::take(&mut log.not_taken);
        if !refused.is_empty() {
            Err(FlushError { refused, other: None })
        } else if not_taken > 0 {
            Err(FlushError::other(format!(
                "{not_taken} records were not taken: the transaction can only abort"
            )))
        } else {
            Ok(())
        }
    }

    fn changelog_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        let log = self.log();
        let records = log.topics.get(topic)?.get(partition as usize)?;
        records.len().checked_sub(1).map(|last| last as i64)
    }

    fn take_sent(&self) -> bool {
        std::mem::take(&mut self.log().sent)
    }
}

/// Exactly-once: the driver's topics as a producer outside the tasks' transactions (a
/// worker's timers then have one of their own): what it sends is committed at once.
struct Outside(Topics);

impl Sink for Outside {
    fn enqueue(&self, record: OutRecord) -> Result<(), SinkError> {
        self.0.take(&record, true);
        Ok(())
    }

    fn flush(&self) -> Result<(), FlushError> {
        Ok(())
    }

    fn changelog_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.changelog_offset(topic, partition)
    }
}

#[derive(Default)]
struct Offsets {
    /// The next offset to read of each source partition, and its metadata (the stream time
    /// of the task that committed it).
    committed: Mutex<HashMap<(String, i32), (i64, String)>>,
    /// Set by [`TestDriver::fail_commits`].
    failing: std::sync::atomic::AtomicBool,
    /// The group's generation: one more at every move or crash of a partition (a rebalance).
    generation: std::sync::atomic::AtomicU64,
    /// Transactional commits still to time out (see [`TestDriver::time_out_commits`]), and
    /// whether they commit before they do.
    timeouts: Mutex<(usize, bool)>,
    /// Transactional producers made: the first, and one after each commit whose outcome was
    /// not known.
    producers: std::sync::atomic::AtomicU64,
}

impl OffsetCommit for Offsets {
    fn commit(&self, offsets: &[commit::SourceOffset]) -> Result<(), String> {
        if self.failing.load(Ordering::Relaxed) {
            return Err("the test driver fails offset commits (TestDriver::fail_commits)".into());
        }
        let mut committed = self.committed.lock().map_err(|_| "poisoned")?;
        for offset in offsets {
            committed.insert(
                (offset.topic.clone(), offset.partition),
                (offset.next, commit::offset_metadata(offset.stream_time, &offset.clocks)),
            );
        }
        Ok(())
    }
}

/// Exactly-once in the driver: a transaction commits its offsets to the driver's group, or
/// aborts while [`TestDriver::fail_commits`] is set. (The driver's topics keep what was sent
/// either way: a reader of them reads uncommitted, like the embedded broker's.)
struct DriverTransactions(Arc<Offsets>, Topics);

impl commit::Transactions for DriverTransactions {
    fn generation(&self) -> commit::Generation {
        Box::new(self.0.generation.load(Ordering::Acquire))
    }

    /// The offsets are committed (visible to the group at once); the markers on the data
    /// partitions follow after the marker latency, as Kafka writes them: between the two, a
    /// read_committed reader does not see the transaction's records yet. A round cut in an
    /// earlier generation of the group is refused, as Kafka refuses a zombie's (KIP-447).
    fn commit(
        &self,
        offsets: &[commit::SourceOffset],
        generation: &commit::Generation,
    ) -> std::result::Result<(), commit::TxnError> {
        let now = self.0.generation.load(Ordering::Acquire);
        let cut_in = generation.downcast_ref::<u64>().copied();
        if !offsets.is_empty() && cut_in != Some(now) {
            return Err(commit::TxnError::Rebalanced(format!(
                "the group is in generation {now}, the round was cut in {cut_in:?}: its offsets are refused \
                 (ILLEGAL_GENERATION)"
            )));
        }
        let timeout = {
            let mut timeouts = self.0.timeouts.lock().unwrap_or_else(|p| p.into_inner());
            (timeouts.0 > 0).then(|| {
                timeouts.0 -= 1;
                timeouts.1
            })
        };
        if timeout == Some(false) {
            return Err(commit::TxnError::Unknown(
                "committing the transaction timed out (test driver; it did not commit)".into(),
            ));
        }
        self.0.commit(offsets).map_err(commit::TxnError::Abortable)?;
        let (txn, latency) = {
            let mut log = self.1.log();
            let txn = log.txn;
            log.txn += 1;
            log.sealed = false;
            log.open = false;
            let latency = log.marker_latency;
            if latency.is_zero() {
                log.settle(txn, true);
            } else {
                log.unmarked += 1;
            }
            (txn, latency)
        };
        if !latency.is_zero() {
            let topics = self.1.clone();
            std::thread::spawn(move || {
                std::thread::sleep(latency);
                let mut log = topics.log();
                log.settle(txn, true);
                log.unmarked -= 1;
            });
        }
        if timeout == Some(true) {
            return Err(commit::TxnError::Unknown(
                "committing the transaction timed out (test driver; it committed)".into(),
            ));
        }
        Ok(())
    }
    fn abort(&self) -> std::result::Result<(), String> {
        let mut log = self.1.log();
        let txn = log.txn;
        log.txn += 1;
        log.sealed = false;
        log.open = false;
        log.settle(txn, false);
        // What failed belonged to the aborted transaction.
        log.refused.clear();
        log.not_taken = 0;
        Ok(())
    }
    fn begin(&self) -> std::result::Result<(), String> {
        self.1.log().open = true;
        Ok(())
    }
    fn abandon(&self) -> std::result::Result<bool, String> {
        if !self.1.log().open {
            // The last round committed and the next did not begin.
            return Ok(false);
        }
        self.abort().map(|()| true)
    }
    /// A new producer's initialisation aborts what the old one left open; it begins the
    /// next transaction, as the worker's does.
    fn reinit(&self) -> std::result::Result<(), String> {
        self.0.producers.fetch_add(1, Ordering::Relaxed);
        self.abort()?;
        self.begin()
    }
}

/// The driver's topics as a [`crate::changelog::ChangelogReader`]: the worker's restore
/// ([`crate::changelog::read_changelog`]) on the in-memory topics.
struct DriverReader<'a> {
    topics: &'a Topics,
    metrics: &'a Metrics,
}

impl crate::changelog::ChangelogReader for DriverReader<'_> {
    fn restore(
        &self,
        store: &dyn StateStore,
        changelog: &str,
        partition: i32,
        committed: &crate::changelog::Committed,
        agreed: Vec<(String, i64)>,
        probe: bool,
    ) -> Result<Option<crate::changelog::Restored>> {
        let mut log = DriverLog {
            topics: self.topics,
            topic: changelog,
            partition,
            at: 0,
            record: None,
        };
        let restored = crate::changelog::read_changelog(&mut log, store, committed, agreed, probe, &mut |_, _| {})?;
        if let Some(restored) = &restored {
            self.metrics.restored.fetch_add(restored.applied, Ordering::Relaxed);
        }
        Ok(restored)
    }
}

/// A partition of the driver's topics as a restore reads it: read committed, up to its
/// last stable offset (the first record of a transaction that has not ended, or whose markers
/// are not written yet).
struct DriverLog<'a> {
    topics: &'a Topics,
    topic: &'a str,
    partition: i32,
    /// The next offset to read.
    at: usize,
    /// The record last read (its data is lent to the restore).
    record: Option<TestRecord>,
}

impl crate::changelog::ChangelogLog for DriverLog<'_> {
    fn bounds(&mut self) -> Result<Option<(i64, i64)>> {
        let log = self.topics.log();
        let end = log
            .topics
            .get(self.topic)
            .and_then(|parts| parts.get(self.partition as usize))
            .map_or(0, PartitionLog::len);
        Ok(Some((0, end as i64)))
    }

    fn seek(&mut self, offset: i64) -> Result<()> {
        self.at = usize::try_from(offset).unwrap_or(0);
        Ok(())
    }

    fn fetch(&mut self, wait: Duration) -> Result<crate::changelog::Fetched<'_>> {
        use crate::changelog::Fetched;
        let found = {
            let log = self.topics.log();
            let Some(part) = log
                .topics
                .get(self.topic)
                .and_then(|parts| parts.get(self.partition as usize))
            else {
                return Ok(Fetched::At(self.at as i64));
            };
            let stable = part.stable_end();
            while self.at < stable && part.is_aborted(self.at) {
                self.at += 1;
            }
            (self.at < stable).then(|| part.record(self.partition, self.at))
        };
        let Some(record) = found else {
            // Up to the last stable offset: a transaction's markers may come (they are
            // written on a thread of their own, see `marker_latency`).
            std::thread::sleep(wait.min(Duration::from_millis(1)));
            return Ok(Fetched::At(self.at as i64));
        };
        self.at += 1;
        let record = self.record.insert(record);
        Ok(Fetched::Record {
            offset: record.offset,
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: record.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect(),
        })
    }

    fn cancelled(&self) -> bool {
        false
    }

    fn label(&self) -> String {
        format!("{}[{}]", self.topic, self.partition)
    }
}

/// Where a driver keeps its tables.
#[derive(Debug, Clone, Default)]
pub enum Stores {
    /// In memory (the default): fast, nothing on disk.
    #[default]
    Memory,
    /// RocksDB under this directory, as a worker keeps them.
    RocksDb(std::path::PathBuf),
}

struct Task {
    ctx: Arc<TaskContext>,
    spec: Arc<TaskSpec>,
    partition: i32,
    /// The worker that runs the task (see [`TestDriver::move_partition`]).
    owner: String,
    tx: mpsc::Sender<Input>,
    join: tokio::task::JoinHandle<()>,
    /// For each source, the next offset to hand over.
    delivered: Vec<usize>,
}

/// The worker that owns every partition when a driver starts.
pub const FIRST_OWNER: &str = "worker-1";

/// Runs an app's agents in-process with no broker. See the [module docs](self).
pub struct TestDriver {
    app: App,
    topics: Topics,
    offsets: Arc<Offsets>,
    tasks: Vec<Task>,
    /// Stores by (owner, table, partition): a worker keeps its stores when a partition
    /// moves away, and finds them again when it comes back.
    stores: HashMap<(String, String, i32), Arc<dyn StateStore>>,
    store_kind: Stores,
    /// Partitions delivered only up to an offset (see [`TestDriver::run_to`]).
    limits: HashMap<(String, i32), usize>,
    metrics: Arc<Metrics>,
    /// The app's timers: each with its context and when it is next due (driver's clock).
    timers: Vec<(Timer, Arc<TaskContext>, Option<i64>)>,
    /// The app's global tables: each with its store and how far each partition of its
    /// topic is applied.
    globals: Vec<(crate::table::GlobalTableSpec, Arc<dyn StateStore>, Vec<usize>)>,
    global_stores: crate::task::Globals,
    /// Exactly-once: the rounds of cuts (each one transaction).
    rounds: Option<Arc<crate::task::round::Rounds>>,
    /// Records handed to a task at once, per source (see [`TestDriver::batch_size`]).
    batch: usize,
    /// Tasks also cut on this timer (see [`TestDriver::commit_interval`]).
    interval: Option<Duration>,
    /// Unit tests: runs when a pass of the feed found nothing to hand over, before it decides
    /// whether the feed is done.
    #[cfg(test)]
    idle: Option<IdleHook>,
    /// How long a moved task may take to finish (see [`TestDriver::finish_timeout`]).
    finish_timeout: Duration,
    /// Where tasks send: the topics, with records the broker refused diverted (see
    /// `App::on_production_error`).
    sink: Arc<dyn Sink>,
    _committer: std::sync::mpsc::Sender<commit::Cut>,
}

static DRIVERS: AtomicUsize = AtomicUsize::new(0);

impl TestDriver {
    /// A driver for `app`; topics get their declared partition counts (or the app's default).
    /// Must be called inside a tokio runtime.
    pub fn new(app: App) -> Result<Self> {
        Self::with_partitions(app, &[])
    }

    /// A driver where the given topics exist with these partition counts.
    pub fn with_partitions(app: App, existing: &[(&str, i32)]) -> Result<Self> {
        Self::with_stores(app, existing, Stores::Memory)
    }

    /// A driver where the given topics exist with these partition counts, keeping its
    /// tables in `stores`.
    pub fn with_stores(app: App, existing: &[(&str, i32)], stores: Stores) -> Result<Self> {
        let existing: HashMap<String, i32> = existing.iter().map(|(t, p)| (t.to_string(), *p)).collect();
        let plan = app.plan(&existing)?;
        let topics = Topics::default();
        {
            let mut log = topics.log();
            for topic in &plan {
                log.topics.insert(
                    topic.name.clone(),
                    vec![PartitionLog::default(); topic.partitions.max(1) as usize],
                );
            }
        }
        let offsets = Arc::new(Offsets::default());
        let metrics = Arc::new(Metrics::default());
        let (cuts, cut_rx) = std::sync::mpsc::channel();
        let rounds = (app.guarantee() == crate::app::ProcessingGuarantee::ExactlyOnce)
            .then(|| Arc::new(crate::task::round::Rounds::at_barriers()));
        // Records the broker refused go to the dead-letter topic when sent again, if the app
        // says so (see `App::on_production_error`).
        let errors = Arc::new(app.production_errors());
        let sink: Arc<dyn Sink> = Arc::new(crate::task::sink::Guarded {
            inner: Arc::new(topics.clone()),
            errors: Arc::clone(&errors),
        });
        offsets.producers.store(1, Ordering::Relaxed);
        {
            let committer = commit::Committer {
                sink: Arc::clone(&sink),
                metrics: Arc::clone(&metrics),
                errors,
            };
            let rounds = rounds.clone();
            let offsets = Arc::clone(&offsets);
            let topics = topics.clone();
            {
                // Exactly-once: the producer begins its first transaction as it starts.
                let mut log = topics.log();
                log.transactional = rounds.is_some();
                log.open = true;
            }
            std::thread::Builder::new()
                .name(format!("test-committer-{}", DRIVERS.fetch_add(1, Ordering::Relaxed)))
                .spawn(move || match rounds {
                    // Rounds only at the driver's barriers: runs stay deterministic.
                    Some(rounds) => commit::run_rounds(
                        cut_rx,
                        committer,
                        Arc::new(DriverTransactions(offsets, topics)),
                        rounds,
                        Duration::from_secs(365 * 24 * 3600),
                    ),
                    None => commit::run(cut_rx, committer, offsets as Arc<dyn OffsetCommit>),
                })
                .map_err(|e| Error::io("starting the test committer", e))?;
        }
        let start = topics.log().clock;
        let timers = app
            .timers()
            .iter()
            .map(|timer| {
                let sink: Arc<dyn Sink> = if rounds.is_some() {
                    Arc::new(Outside(topics.clone()))
                } else {
                    // At-least-once, a worker's timers share the tasks' producer.
                    Arc::new(topics.clone())
                };
                let name = format!("timer {}", timer.name());
                let ctx = TaskContext::standalone(&name, &timer.sends, sink, Arc::clone(&metrics));
                (timer.clone(), Arc::new(ctx), timer.next_after(start))
            })
            .collect();
        let mut globals = Vec::new();
        let mut global_stores: HashMap<&'static str, Arc<dyn StateStore>> = HashMap::new();
        for global in app.global_tables() {
            let store: Arc<dyn StateStore> = match &stores {
                Stores::Memory => Arc::new(MemoryStore::default()),
                Stores::RocksDb(dir) => Arc::new(crate::store::RocksDbStore::open(
                    &dir.join("global").join(global.table.name),
                )?),
            };
            global_stores.insert(global.table.name, Arc::clone(&store));
            let partitions = topics.log().topics.get(&*global.topic.name).map_or(1, Vec::len);
            globals.push((global, store, vec![0; partitions]));
        }
        let mut driver = Self {
            app,
            topics,
            offsets,
            tasks: Vec::new(),
            stores: HashMap::new(),
            store_kind: stores,
            limits: HashMap::new(),
            metrics,
            timers,
            globals,
            global_stores: Arc::new(global_stores),
            rounds,
            batch: 1024,
            interval: None,
            #[cfg(test)]
            idle: None,
            finish_timeout: Duration::from_secs(60),
            sink,
            _committer: cuts,
        };
        driver.apply_globals()?;
        for spec in driver.app.tasks() {
            let spec = Arc::new(spec);
            let partitions = spec.sources.first().map_or(1, |s| driver.partitions(&s.name));
            for partition in 0..partitions {
                let task = driver.start_task(Arc::clone(&spec), partition, FIRST_OWNER)?;
                driver.tasks.push(task);
            }
        }
        Ok(driver)
    }

    /// The store of `owner` for `table`'s partition, created empty the first time.
    fn store(&mut self, owner: &str, table: &str, partition: i32) -> Result<Arc<dyn StateStore>> {
        let key = (owner.to_string(), table.to_string(), partition);
        if let Some(store) = self.stores.get(&key) {
            return Ok(Arc::clone(store));
        }
        let store: Arc<dyn StateStore> = match &self.store_kind {
            Stores::Memory => Arc::new(MemoryStore::default()),
            Stores::RocksDb(dir) => Arc::new(crate::store::RocksDbStore::open(&crate::store::partition_dir(
                &dir.join(owner),
                table,
                partition,
            ))?),
        };
        self.stores.insert(key, Arc::clone(&store));
        Ok(store)
    }

    /// Starts `agent` on `partition` for `owner`, as a worker does on assignment: the
    /// owner's stores are restored from their changelogs, and the partition starts where
    /// its restored state agrees with the input.
    fn start_task(&mut self, spec: Arc<TaskSpec>, partition: i32, owner: &str) -> Result<Task> {
        // The driver's topics keep every record: nothing committed means offset 0.
        let committed: Vec<(String, i64)> = spec
            .sources
            .iter()
            .map(|s| (s.name.to_string(), self.committed(&s.name, partition).unwrap_or(0)))
            .collect();
        let mut tables = Vec::new();
        for table in &spec.tables {
            let store = self.store(owner, table.name, partition)?;
            tables.push(TableState::new(
                table,
                table.changelog_topic(self.app.id()),
                store,
                crate::task::cache_budget::CacheBudget::per_partition(self.app.table_cache_bytes_value()).share(),
            ));
        }
        let stores: Vec<(Arc<dyn StateStore>, Arc<str>)> = tables
            .iter()
            .map(|t| (Arc::clone(&t.store), Arc::clone(&t.changelog)))
            .collect();
        let restoration = if stores.is_empty() {
            None
        } else {
            let reader = DriverReader {
                topics: &self.topics,
                metrics: &self.metrics,
            };
            crate::changelog::restore_task(&reader, &stores, partition, &committed)?
        };
        let sink = Arc::clone(&self.sink);
        let ctx = Arc::new(TaskContext::new(
            &spec,
            partition,
            tables,
            sink,
            self._committer.clone(),
            Arc::clone(&self.metrics),
            Arc::clone(&self.global_stores),
        ));
        // Wall-clock punctuation reads the driver's clock (`advance_time`).
        let topics = self.topics.clone();
        ctx.use_clock(Arc::new(move || topics.log().clock));
        // Stream time as the last commit left it, as a worker takes it from the offsets'
        // metadata (the restore may know a later one).
        let committed_time = spec
            .sources
            .iter()
            .filter_map(|s| self.committed_stream_time(&s.name, partition))
            .max();
        ctx.restore_stream_time(committed_time);
        for source in &spec.sources {
            ctx.restore_clocks(&self.committed_clocks(&source.name, partition));
        }
        let (tx, rx) = mpsc::channel(1024);
        let mut delivered: Vec<i64> = committed.iter().map(|(_, offset)| *offset).collect();
        if let Some(restoration) = restoration {
            ctx.restore_stream_time(restoration.stream_time);
            ctx.restore_clocks(&restoration.clocks);
            for (index, entries) in restoration.restate.into_iter().enumerate() {
                ctx.restate(index, entries);
            }
            // Like a worker, which seeks there: the records before it are not handed over.
            for (source, (_, start)) in restoration.starts.iter().enumerate() {
                delivered[source] = *start;
                tx.try_send(Input::StartAt(source, *start))
                    .map_err(|_| Error::Config("test driver: a new task's queue is full".into()))?;
            }
        }
        ctx.seed_clocks();
        // Cuts happen at the driver's barriers, never on a timer: runs are deterministic.
        let core = StreamCore::new(Arc::clone(&ctx), rx, Duration::from_secs(365 * 24 * 3600));
        let core = match &self.rounds {
            Some(rounds) => core.with_rounds(Arc::clone(rounds)),
            None => core,
        };
        if let Some(interval) = self.interval {
            tx.try_send(Input::Interval(interval))
                .map_err(|_| Error::Config("test driver: a new task's queue is full".into()))?;
        }
        let join = tokio::spawn(run_partition(Arc::clone(&spec), core));
        Ok(Task {
            ctx,
            spec,
            partition,
            owner: owner.to_string(),
            tx,
            join,
            delivered: delivered.into_iter().map(|d| usize::try_from(d).unwrap_or(0)).collect(),
        })
    }

    fn task_index(&self, topic: &str, partition: i32) -> Result<usize> {
        self.tasks
            .iter()
            .position(|t| t.partition == partition && t.spec.source_index(topic).is_some())
            .ok_or_else(|| Error::Config(format!("test driver: nothing reads {topic}[{partition}]")))
    }

    /// Moves `topic[partition]` to the worker `owner`, as a rebalance does: the current owner
    /// finishes its records and makes a last cut (committed unless commits fail, see
    /// [`TestDriver::fail_commits`]); then `owner` takes the partition with the stores it
    /// kept from the last time it held it (empty the first time), restores them from their
    /// changelogs and starts where its restored state agrees with the input.
    ///
    /// ```
    /// # use streams_core::prelude::*;
    /// # use streams_core::testing::TestDriver;
    /// # const NUMBERS: Topic<String, i64> = Topic::new("numbers").partitions(1);
    /// # const SUMS: Table<String, i64> = Table::new("sums");
    /// # #[agent(topic = NUMBERS, tables = [SUMS])]
    /// # async fn sum(mut numbers: Stream<String, i64>) -> Result<()> {
    /// #     while let Some(event) = numbers.next_event().await {
    /// #         SUMS.update(&event.key, |s| *s += event.value).await?;
    /// #     }
    /// #     Ok(())
    /// # }
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> streams_core::Result<()> {
    /// let mut driver = TestDriver::new(App::new("sums").agent(sum))?;
    /// driver.pipe(&NUMBERS, &"a".to_string(), &2)?;
    /// driver.run().await?;
    /// driver.move_partition("numbers", 0, "worker-2").await?; // restores from the changelog
    /// driver.pipe(&NUMBERS, &"a".to_string(), &3)?;
    /// driver.run().await?;
    /// assert_eq!(driver.table(&SUMS)?["a"], 5);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn move_partition(&mut self, topic: &str, partition: i32, owner: &str) -> Result<()> {
        let index = self.task_index(topic, partition)?;
        let (ack, acked) = std::sync::mpsc::channel();
        self.tasks[index].ctx.request_finish();
        let sent = self.tasks[index].tx.send(Input::Finish(ack)).await.is_ok();
        let mut others = Vec::new();
        if self.rounds.is_some() {
            // Exactly-once: the last cut is part of a round, which every task cuts for (a
            // worker's tasks cut when a round is asked for; the driver's at its barriers).
            for (n, task) in self.tasks.iter().enumerate() {
                let (ack, acked) = std::sync::mpsc::channel();
                if n != index && task.tx.send(Input::Flush(ack)).await.is_ok() {
                    others.push(acked);
                }
            }
        }
        let timeout = self.finish_timeout;
        let finished = sent
            && tokio::task::spawn_blocking(move || acked.recv_timeout(timeout).is_ok())
                .await
                .unwrap_or(false);
        if sent && !finished {
            // As a worker does with a revoked task that does not finish in time: dropped
            // without its cut, so what it sent since the last round must not commit.
            tracing::warn!("test driver: {topic}[{partition}] did not finish within {timeout:?}; dropped");
            if let Some(rounds) = &self.rounds {
                rounds.request_abort();
            }
            self.tasks[index].join.abort();
            self.tasks[index].ctx.written.close();
        } else if !sent {
            // Its task took nothing more (the app failed): an agent still at work after its
            // stream ended is not waited for.
            self.tasks[index].join.abort();
        }
        let _ = tokio::task::spawn_blocking(move || {
            for acked in others {
                let _ = acked.recv_timeout(timeout);
            }
        })
        .await;
        self.offsets.generation.fetch_add(1, Ordering::AcqRel);
        self.replace_task(index, owner).await
    }

    /// Moves `topic[partition]` to the worker `owner` as if its owner was killed: no last
    /// cut, so what it did since its last commit is lost with it (its stores keep what was
    /// written at its last cut) and is processed again by `owner`.
    pub async fn crash_partition(&mut self, topic: &str, partition: i32, owner: &str) -> Result<()> {
        let index = self.task_index(topic, partition)?;
        // Exactly-once: what the crashed task sent since the last round is in the open
        // transaction without its offsets; the group fences the worker that is gone, so that
        // transaction never commits (its records are aborted).
        if let Some(rounds) = &self.rounds {
            rounds.request_abort();
        }
        self.tasks[index].join.abort();
        // Its cuts still with the committer die with it.
        self.tasks[index].ctx.written.close();
        self.offsets.generation.fetch_add(1, Ordering::AcqRel);
        self.replace_task(index, owner).await
    }

    /// Moves `topic[partition]` to the worker `owner` as if its owner was killed while
    /// writing a cut's stores (at-least-once). A worker writes each of a task's stores on
    /// its own, one after another (in the order the pipeline declares its tables), after the
    /// cut's changelog records and outputs are acknowledged and before the input offsets are
    /// committed. Here the partition's task cuts what it processed, the first
    /// `stores_written` of its stores are written, and the worker dies there: the other
    /// stores keep the cut before, and the offsets are not committed (with `stores_written`
    /// at or above the number of stores, every store is written and only the commit is
    /// lost). If a cut of the task was already waiting to be written, that one is torn
    /// instead. Then as [`crash_partition`](Self::crash_partition).
    ///
    /// A task that has ended has no cut to tear: it crashes as with `crash_partition`.
    /// Errors under exactly-once (whose stores are written after the transaction commits,
    /// so a tear there is not this one), and when no cut of the task was written within the
    /// finish timeout (the kill did not happen; nothing is crashed).
    ///
    /// ```
    /// # use streams_core::prelude::*;
    /// # use streams_core::testing::TestDriver;
    /// const CLICKS: Topic<String, i64> = Topic::new("clicks").partitions(1);
    /// const COUNTS: Table<String, i64> = Table::new("counts");
    /// const SUMS: Table<String, i64> = Table::new("sums");
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> streams_core::Result<()> {
    /// let app = App::new("clicks").pipeline("clicks", |builder| {
    ///     let clicks = builder.stream(CLICKS);
    ///     clicks.clone().group_by_key().count(COUNTS);
    ///     clicks.group_by_key().reduce(SUMS, |a, b| a + b);
    /// });
    /// let mut driver = TestDriver::new(app)?;
    /// driver.pipe(&CLICKS, &"ann".to_string(), &1)?;
    /// driver.run().await?;
    /// driver.pipe(&CLICKS, &"ann".to_string(), &2)?;
    /// driver.process().await?;
    /// // Killed with `counts` written and `sums` not, and started again on the same stores:
    /// // the click counts once all the same.
    /// driver.crash_partition_while_writing("clicks", 0, "worker-1", 1).await?;
    /// driver.run().await?;
    /// assert_eq!(driver.table(&COUNTS)?["ann"], 2);
    /// assert_eq!(driver.table(&SUMS)?["ann"], 3);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn crash_partition_while_writing(
        &mut self,
        topic: &str,
        partition: i32,
        owner: &str,
        stores_written: usize,
    ) -> Result<()> {
        if self.rounds.is_some() {
            return Err(Error::Config(
                "test driver: crash_partition_while_writing is for at-least-once (exactly-once writes stores after its transaction commits)".into(),
            ));
        }
        let index = self.task_index(topic, partition)?;
        let written = std::sync::Arc::clone(&self.tasks[index].ctx.written);
        written.kill_during_next_write(stores_written);
        let (ack, acked) = std::sync::mpsc::channel();
        if self.tasks[index].tx.send(Input::Flush(ack)).await.is_err() {
            // The task has ended: it has no cut left to tear.
            written.cancel_kill();
            return self.crash_partition(topic, partition, owner).await;
        }
        let timeout = self.finish_timeout;
        let _ = tokio::task::spawn_blocking(move || acked.recv_timeout(timeout)).await;
        if written.cancel_kill() {
            return Err(Error::Config(format!(
                "test driver: no cut of {topic}[{partition}] was written within the finish timeout; nothing crashed"
            )));
        }
        self.crash_partition(topic, partition, owner).await
    }

    /// Exactly-once: the next `count` commits time out, as when the broker does not answer
    /// in time — having committed (`committed`) or not. Either way the worker cannot know:
    /// it makes its transactional producer anew and starts its partitions again from what the
    /// group has committed.
    pub fn time_out_commits(&mut self, count: usize, committed: bool) {
        *self.offsets.timeouts.lock().unwrap_or_else(|p| p.into_inner()) = (count, committed);
    }

    /// How many transactional producers the driver's worker has made: the first, and one
    /// after each commit whose outcome was not known.
    pub fn transactional_producers(&self) -> u64 {
        self.offsets.producers.load(Ordering::Relaxed)
    }

    /// How long a moved partition's task may take to finish its record and make its last
    /// cut (60 s by default, as a worker's revoked tasks): past it, it is dropped without
    /// its cut, as a worker drops it.
    pub fn finish_timeout(&mut self, timeout: Duration) {
        self.finish_timeout = timeout;
    }

    async fn replace_task(&mut self, index: usize, owner: &str) -> Result<()> {
        let old = &mut self.tasks[index];
        let join = std::mem::replace(&mut old.join, tokio::spawn(async {}));
        let _ = join.await;
        let (spec, partition) = (Arc::clone(&old.spec), old.partition);
        let task = self.start_task(spec, partition, owner)?;
        self.tasks[index] = task;
        Ok(())
    }

    /// Makes every flush of the driver's producer wait `latency` before the records count
    /// as acknowledged, as a broker's round trip does: commits (and the store writes that
    /// follow them) lag behind the tasks, which go on meanwhile, as on a worker.
    pub fn ack_latency(&mut self, latency: Duration) {
        self.topics.log().ack_latency = latency;
    }

    /// Makes the producer's queue full for `duration` from the next changelog record a cut
    /// offers, as when the broker is slow to acknowledge what a worker sends: the cut, and
    /// everything the app sends meanwhile, waits for room (a millisecond between tries).
    pub fn full_queue_at_next_cut(&mut self, duration: Duration) {
        self.topics.log().full_at_cut = Some(duration);
    }

    /// Makes the driver's broker refuse the records of `topic` whose value is larger than
    /// `largest` bytes, as a topic with a smaller `max.message.bytes` does: the flush that
    /// waits for them fails, naming them (see `App::on_production_error`).
    pub fn refuse_records(&mut self, topic: &str, largest: usize) {
        self.topics.log().refusing.push((topic.to_string(), largest));
    }

    /// Exactly-once: writes a transaction's markers on the data partitions (outputs,
    /// repartition topics, changelogs) `latency` after its commit, as Kafka does after the
    /// coordinator has logged the commit, while the offsets it committed are the group's at
    /// once. Meanwhile a read_committed reader stops before the transaction's records (their
    /// partition's last stable offset is before them): a restore must wait for them, or it
    /// misses changes of input the group has committed (Kafka's KAFKA-10167).
    pub fn marker_latency(&mut self, latency: Duration) {
        self.topics.log().marker_latency = latency;
    }

    /// While `failing`, offset commits fail (as a broker refuses them during a rebalance):
    /// stores are written at each cut, but the group's offsets stay where they are.
    pub fn fail_commits(&mut self, failing: bool) {
        self.offsets.failing.store(failing, Ordering::Relaxed);
    }

    /// The worker that owns `topic[partition]` (see [`TestDriver::move_partition`]).
    pub fn owner(&self, topic: &str, partition: i32) -> Option<&str> {
        let index = self.task_index(topic, partition).ok()?;
        Some(&self.tasks[index].owner)
    }

    /// Partition count of `topic` in the driver (1 for topics the app does not know).
    pub fn partitions(&self, topic: &str) -> i32 {
        self.topics.log().topics.get(topic).map_or(1, |p| p.len() as i32)
    }

    /// Appends a record to a topic, as a producer would (the partition follows the key).
    pub fn pipe<K: Key, V, Q: AsKey<K> + ?Sized>(
        &mut self,
        topic: &Topic<K, V>,
        key: &Q,
        value: &V,
    ) -> Result<(i32, i64)> {
        let encode = |source| Error::Encode {
            what: format!("topic `{}`", topic.name()),
            source,
        };
        let key = key.as_key().map_err(encode)?;
        let value = topic.value_codec().encode(value).map_err(encode)?;
        Ok(self.pipe_raw(topic.name(), key.as_deref(), Some(&value)))
    }

    /// [`TestDriver::pipe`] with the record's timestamp (ms) given, as a producer may set it:
    /// for event time out of order, without moving the driver's clock.
    pub fn pipe_at<K: Key, V, Q: AsKey<K> + ?Sized>(
        &mut self,
        topic: &Topic<K, V>,
        key: &Q,
        value: &V,
        timestamp: i64,
    ) -> Result<(i32, i64)> {
        let encode = |source| Error::Encode {
            what: format!("topic `{}`", topic.name()),
            source,
        };
        let key = key.as_key().map_err(encode)?;
        let value = topic.value_codec().encode(value).map_err(encode)?;
        Ok(self.topics.append(OutRecord {
            topic: topic.name().into(),
            partition: None,
            key,
            value: Some(value),
            headers: Default::default(),
            timestamp: Some(timestamp),
            changelog: false,
        }))
    }

    /// Appends raw bytes to a topic (for malformed input); returns partition and offset.
    pub fn pipe_raw(&mut self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> (i32, i64) {
        self.append_raw(topic, key, value, None)
    }

    fn append_raw(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: Option<i64>,
    ) -> (i32, i64) {
        self.topics.append(OutRecord {
            topic: topic.into(),
            partition: None,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: Default::default(),
            timestamp,
            changelog: false,
        })
    }

    /// [`TestDriver::pipe_raw`] with the record's timestamp (ms) given: a tombstone
    /// (`value: None`) at its place in event time, say.
    pub fn pipe_raw_at(&mut self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>, timestamp: i64) -> (i32, i64) {
        self.append_raw(topic, key, value, Some(timestamp))
    }

    /// Runs every timer that is due on the driver's clock, each time it was due, in order
    /// (what they send is processed by the run that follows).
    async fn fire_timers(&mut self) {
        let now = self.now();
        loop {
            let due = self
                .timers
                .iter()
                .enumerate()
                .filter_map(|(n, (_, _, next))| next.filter(|t| *t <= now).map(|t| (t, n)))
                .min();
            let Some((time, index)) = due else { break };
            let (timer, ctx, next) = &mut self.timers[index];
            if let Err(error) = timer.fire(Arc::clone(ctx), Tick { time }).await {
                tracing::warn!("timer `{}` failed at {time}: {error}", timer.name());
            }
            *next = timer.next_after(time);
        }
    }

    /// Moves the driver's clock forward: records piped afterwards carry the later timestamp,
    /// and timers due by then run at the next [`TestDriver::run`].
    pub fn advance_time(&mut self, by: Duration) {
        self.topics.log().clock += i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
    }

    /// The driver's clock, in milliseconds.
    pub fn now(&self) -> i64 {
        self.topics.log().clock
    }

    /// Processes every record in every topic an agent reads, including what agents send to
    /// one another, until nothing is left; then every partition has made a cut and it is
    /// committed (tables and offsets are up to date).
    pub async fn run(&mut self) -> Result<()> {
        self.fire_timers().await;
        loop {
            let fed = self.feed().await?;
            self.barrier().await?;
            if self.rounds.as_ref().is_some_and(|rounds| rounds.take_aborted()) {
                // Exactly-once: the aborted round's work is gone; every partition starts again
                // from its last committed state, as on a worker (from the group's offsets:
                // after a commit whose outcome is unknown too).
                if let Some(rounds) = &self.rounds {
                    rounds.take_unknown();
                }
                for index in 0..self.tasks.len() {
                    let owner = self.tasks[index].owner.clone();
                    self.replace_task(index, &owner).await?;
                }
                if self.offsets.failing.load(Ordering::Relaxed) {
                    // Commits keep failing: nothing more can be done in this run.
                    return Err(Error::Config(
                        "test driver: transactions abort (TestDriver::fail_commits)".into(),
                    ));
                }
                continue;
            }
            if fed == 0 {
                break;
            }
        }
        self.outcome()
    }

    /// Processes every record like [`TestDriver::run`], but commits nothing at its end: what
    /// the tasks did since their last cut stays uncommitted, as on a worker between two
    /// commit points (a cut still happens where a table's cache goes over its budget). A
    /// [`TestDriver::crash_partition`] after it loses that work, as a crash would.
    ///
    /// ```
    /// # use streams_core::prelude::*;
    /// # use streams_core::testing::TestDriver;
    /// # const NUMBERS: Topic<String, i64> = Topic::new("numbers").partitions(1);
    /// # const SUMS: Table<String, i64> = Table::new("sums");
    /// # #[agent(topic = NUMBERS, tables = [SUMS])]
    /// # async fn sum(mut numbers: Stream<String, i64>) -> Result<()> {
    /// #     while let Some(event) = numbers.next_event().await {
    /// #         SUMS.update(&event.key, |s| *s += event.value).await?;
    /// #     }
    /// #     Ok(())
    /// # }
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> streams_core::Result<()> {
    /// let mut driver = TestDriver::new(App::new("sums").agent(sum))?;
    /// driver.pipe(&NUMBERS, "a", &2)?;
    /// driver.run().await?; // committed
    /// driver.pipe(&NUMBERS, "a", &3)?;
    /// driver.process().await?; // processed, not committed
    /// assert_eq!(driver.committed("numbers", 0), Some(1));
    /// driver.crash_partition("numbers", 0, "worker-2").await?;
    /// driver.run().await?; // the record at offset 1 is processed again, once
    /// assert_eq!(driver.table(&SUMS)?["a"], 5);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn process(&mut self) -> Result<()> {
        self.fire_timers().await;
        while self.feed().await? > 0 {
            self.settle().await?;
        }
        // The cuts made on the way (caches over budget) are committed before this returns.
        for task in &self.tasks {
            task.ctx.written.wait_for(task.ctx.cuts_made()).await;
        }
        self.outcome()
    }

    /// Makes every task also cut on a timer, every `interval` of the wall clock, as a
    /// worker's tasks do at its commit interval (at-least-once; exactly-once rounds stay at the
    /// driver's barriers). Off by default: cuts then happen only at the end of a run and where
    /// a table's cache goes over budget, so runs are deterministic.
    pub async fn commit_interval(&mut self, interval: Duration) {
        self.interval = Some(interval);
        for task in &self.tasks {
            let _ = task.tx.send(Input::Interval(interval)).await;
        }
    }

    /// Hands each task at most `records` at a time, per source (1024 by default): the
    /// batches a consumer's fetches would bring.
    pub fn batch_size(&mut self, records: usize) {
        self.batch = records.max(1);
    }

    /// How a run ended: the worker's failure, or an exactly-once violation the driver's
    /// broker saw (a record sent into a transaction being committed, or while none was
    /// open).
    fn outcome(&self) -> Result<()> {
        let slipped = std::mem::take(&mut self.topics.log().slipped);
        if let Some(error) = self.metrics.fatal() {
            return Err(Error::Config(error));
        }
        match slipped.first() {
            Some(first) => Err(Error::Config(format!(
                "test driver: {} records were sent while a transaction was being committed or none was open; \
                 the first: {first}",
                slipped.len()
            ))),
            None => Ok(()),
        }
    }

    /// Hands every task the records it was not given yet, in batches; returns how many.
    async fn feed(&mut self) -> Result<usize> {
        // Global tables take what their topics got first, as a worker's copies are kept
        // current apart from its tasks.
        self.apply_globals()?;
        let mut fed = 0usize;
        // One batch per partition in turn, as a consumer's fetches arrive: one wake-up for
        // many records, and only a batch per partition in memory at a time.
        loop {
            // Each task knows which of its sources have records it was not given yet (a
            // task with several sources waits for those, as on a worker).
            self.mark_unread();
            // Committed transactions whose markers are not written yet, counted before the
            // pass: their records may become readable while it runs (after the partition
            // was looked at), and only a count taken before tells that another pass is due.
            let unmarked = self.topics.log().unmarked;
            let mut progressed = false;
            for index in 0..self.tasks.len() {
                for source in 0..self.tasks[index].spec.sources.len() {
                    // Read committed: up to the open transaction, skipping aborted ones.
                    let (batch, scanned): (Vec<Message>, usize) = {
                        let log = self.topics.log();
                        let task = &self.tasks[index];
                        let topic = &task.spec.sources[source].name;
                        let limit = self.limits.get(&(topic.to_string(), task.partition)).copied();
                        log.topics
                            .get(&**topic)
                            .and_then(|parts| parts.get(task.partition as usize))
                            .map(|log| {
                                let stable = log.stable_end();
                                let end = limit.map_or(stable, |limit| limit.min(stable));
                                let from = task.delivered[source].min(end);
                                let to = end.min(from + self.batch);
                                let batch = (from..to)
                                    .filter(|offset| !log.is_aborted(*offset))
                                    .map(|offset| log.message(offset))
                                    .collect();
                                (batch, to - from)
                            })
                            .unwrap_or_default()
                    };
                    if scanned == 0 {
                        continue;
                    }
                    progressed = true;
                    let task = &mut self.tasks[index];
                    task.delivered[source] += scanned;
                    fed += scanned;
                    if batch.is_empty() {
                        continue;
                    }
                    let metrics = &self.metrics;
                    task.tx.send(Input::Records(source, batch)).await.map_err(|_| {
                        // Tasks stop when the app fails: that failure is the run's error.
                        match metrics.fatal() {
                            Some(fatal) => Error::Config(fatal),
                            None => Error::Config(format!(
                                "{} on partition {} has stopped",
                                task.spec.name, task.partition
                            )),
                        }
                    })?;
                }
            }
            if !progressed {
                #[cfg(test)]
                if let Some(idle) = &mut self.idle {
                    idle(&self.topics);
                }
                if unmarked > 0 {
                    // Committed transactions whose markers are not written yet: their records
                    // are read once they are (see `marker_latency`).
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                self.mark_unread();
                return Ok(fed);
            }
        }
    }

    /// Tells every task which of its sources have records it was not given yet.
    fn mark_unread(&self) {
        let log = self.topics.log();
        for task in &self.tasks {
            for (source, spec) in task.spec.sources.iter().enumerate() {
                let limit = self.limits.get(&(spec.name.to_string(), task.partition)).copied();
                let end = log
                    .topics
                    .get(&*spec.name)
                    .and_then(|parts| parts.get(task.partition as usize))
                    .map_or(0, |log| {
                        limit.map_or(log.stable_end(), |limit| limit.min(log.stable_end()))
                    });
                let delivered = task.delivered.get(source).copied().unwrap_or(0);
                task.ctx.set_unread(source, delivered < end);
            }
        }
    }

    /// Brings every global table up to date with its topic; records that do not decode go
    /// to the dead-letter topic, or are skipped, or (`OnError::Fail`) stop the driver as they
    /// stop a worker: the table's position stays before the record, and `run` fails.
    fn apply_globals(&mut self) -> Result<()> {
        for (spec, store, applied) in &mut self.globals {
            let mut entries = Vec::new();
            let mut dead = Vec::new();
            let mut failed = None;
            {
                let log = self.topics.log();
                let Some(parts) = log.topics.get(&*spec.topic.name) else {
                    continue;
                };
                for (partition, part) in parts.iter().enumerate() {
                    let Some(from) = applied.get_mut(partition) else {
                        continue;
                    };
                    let end = part.stable_end();
                    for offset in *from..end {
                        if part.is_aborted(offset) {
                            continue;
                        }
                        let record = part.record(partition as i32, offset);
                        match (spec.entry)(record.key.as_deref(), record.value.as_deref()) {
                            Ok(entry) => entries.push(entry),
                            Err(error) if spec.on_deserialization_error == crate::task::sink::OnError::Fail => {
                                failed = Some(format!(
                                    "global table `{}`: cannot take record {}[{partition}]@{offset}: {error}; the \
                                     worker stops, as App::on_deserialization_error says",
                                    spec.table.name, spec.topic.name
                                ));
                                *from = offset;
                                break;
                            }
                            Err(error) => dead.push((record, error)),
                        }
                        *from = offset + 1;
                    }
                    if failed.is_some() {
                        break;
                    }
                    *from = end;
                }
            }
            store.write(&entries, &crate::store::Checkpoint::default())?;
            if let Some(error) = failed {
                self.metrics.fail(error.clone());
                return Err(crate::Error::Config(error));
            }
            for (record, error) in dead {
                match spec.on_deserialization_error {
                    crate::task::sink::OnError::DeadLetter => {}
                    crate::task::sink::OnError::Continue => {
                        self.metrics.skipped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // Stopped at above, before the record.
                    crate::task::sink::OnError::Fail => continue,
                }
                let mut headers: Vec<(String, Vec<u8>)> = record
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                    .collect();
                headers.push(("streams.dlq.topic".into(), spec.topic.name.as_bytes().to_vec()));
                headers.push((
                    "streams.dlq.partition".into(),
                    record.partition.to_string().into_bytes(),
                ));
                headers.push(("streams.dlq.offset".into(), record.offset.to_string().into_bytes()));
                headers.push(("streams.dlq.table".into(), spec.table.name.as_bytes().to_vec()));
                headers.push(("streams.dlq.stage".into(), b"deserialization".to_vec()));
                headers.push(("streams.dlq.error".into(), error.into_bytes()));
                self.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.topics.append(OutRecord {
                    topic: Arc::from(spec.dead_letter_topic.as_str()),
                    partition: None,
                    key: record.key,
                    value: record.value,
                    headers: headers.into(),
                    timestamp: Some(record.timestamp),
                    changelog: false,
                });
            }
        }
        Ok(())
    }

    /// Like [`TestDriver::run`], but `topic[partition]` is processed only up to `end`
    /// (exclusive): its later records wait for a later run.
    pub async fn run_to(&mut self, topic: &str, partition: i32, end: i64) -> Result<()> {
        self.limits
            .insert((topic.to_string(), partition), usize::try_from(end).unwrap_or(0));
        let result = self.run().await;
        self.limits.remove(&(topic.to_string(), partition));
        result
    }

    /// Every partition finishes what it was given and commits.
    async fn barrier(&self) -> Result<()> {
        self.ask_every_task(Input::Flush).await
    }

    /// Puts `input` (with an acknowledgement) into every task's queue after what it was
    /// given, and waits for every acknowledgement.
    async fn ask_every_task(&self, input: fn(commit::Ack) -> Input) -> Result<()> {
        let mut acks = Vec::new();
        for task in &self.tasks {
            let (ack, acked) = std::sync::mpsc::channel();
            if task.tx.send(input(ack)).await.is_ok() {
                acks.push(acked);
            }
        }
        let timeout = self.finish_timeout;
        tokio::task::spawn_blocking(move || {
            for acked in acks {
                let _ = acked.recv_timeout(timeout);
            }
        })
        .await
        .map_err(|e| Error::Config(format!("test driver: {e}")))
    }

    /// Every partition has processed what it was given (no cut, no commit).
    async fn settle(&self) -> Result<()> {
        self.ask_every_task(Input::Processed).await
    }

    /// Every record in `topic`, raw, in partition and offset order.
    pub fn raw_records(&self, topic: &str) -> Vec<TestRecord> {
        self.topics
            .log()
            .topics
            .get(topic)
            .map(|parts| {
                parts
                    .iter()
                    .enumerate()
                    .flat_map(|(partition, log)| (0..log.len()).map(move |offset| log.record(partition as i32, offset)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every record in `topic`, decoded, in the order they were produced (across
    /// partitions, as Kafka Streams' `TopologyTestDriver` gives an output topic's records).
    /// [`TestDriver::records_by_partition`] gives them partition by partition, as consumers
    /// of the partitions read them.
    ///
    /// Under exactly-once, as a `read_committed` consumer reads them: records of aborted
    /// transactions are skipped.
    pub fn records<K: Key, V>(&self, topic: &Topic<K, V>) -> Result<Vec<(K, V)>> {
        let mut raw: Vec<(u64, TestRecord)> = {
            let log = self.topics.log();
            log.topics
                .get(topic.name())
                .map(|parts| {
                    parts
                        .iter()
                        .enumerate()
                        .flat_map(|(partition, log)| {
                            log.records
                                .iter()
                                .enumerate()
                                .map(move |(offset, stored)| (stored.seq, log.record(partition as i32, offset)))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        raw.sort_by_key(|(seq, _)| *seq);
        Self::decoded(topic, raw.into_iter().map(|(_, record)| record))
    }

    /// Every record in `topic`, decoded, partition by partition (each in offset order).
    ///
    /// Under exactly-once, records of aborted transactions are skipped.
    pub fn records_by_partition<K: Key, V>(&self, topic: &Topic<K, V>) -> Result<Vec<(K, V)>> {
        Self::decoded(topic, self.raw_records(topic.name()).into_iter())
    }

    fn decoded<K: Key, V>(topic: &Topic<K, V>, raw: impl Iterator<Item = TestRecord>) -> Result<Vec<(K, V)>> {
        raw.filter(|r| !r.aborted)
            .map(|r| {
                let key = K::decode_key(r.key.as_deref()).map_err(|source| Error::Decode {
                    what: format!("a key of {}", topic.name()),
                    source,
                })?;
                let value = topic
                    .value_codec()
                    .decode(r.value.as_deref().unwrap_or_default())
                    .map_err(|source| Error::Decode {
                        what: format!("a value of {}", topic.name()),
                        source,
                    })?;
                Ok((key, value))
            })
            .collect()
    }

    /// The records `agent` copied to its dead-letter topic.
    pub fn dead_letters(&self, agent: &str) -> Vec<TestRecord> {
        self.raw_records(&format!("{}-{agent}-dlq", self.app.id()))
    }

    /// A table's contents, all partitions merged (as of the last [`TestDriver::run`]).
    ///
    /// A table that no agent of the app uses is an error naming the app's agents (a table is
    /// only ever filled by the agent that lists it).
    pub fn table<K: Key + Ord, V: DeserializeOwned>(&self, table: &Table<K, V>) -> Result<BTreeMap<K, V>> {
        self.app.knows_table(table.name())?;
        let mut out = BTreeMap::new();
        for store in self.stores_of(table.name()) {
            table.read_store(store, &mut out)?;
        }
        Ok(out)
    }

    /// A windowed table's contents, every key and window, all partitions merged (as of the
    /// last [`TestDriver::run`]).
    pub fn windowed_table<K: Key + Ord, V: DeserializeOwned>(
        &self,
        table: &WindowedTable<K, V>,
    ) -> Result<BTreeMap<Windowed<K>, V>> {
        self.app.knows_table(table.name())?;
        let mut out = BTreeMap::new();
        for store in self.stores_of(table.name()) {
            crate::table::read_entries(table.name(), store, &mut out)?;
        }
        Ok(out)
    }

    /// The windows of `key` in a windowed table that start between `from` and `to` (ms, both
    /// inclusive), earliest first, with their values: the lookup of
    /// [`WindowedTable::fetch`] on the partition that holds the key.
    pub fn windows<K: Key, V: DeserializeOwned, Q: AsKey<K> + ?Sized>(
        &self,
        table: &WindowedTable<K, V>,
        key: &Q,
        from: i64,
        to: i64,
    ) -> Result<Vec<(Window, V)>> {
        self.app.knows_table(table.name())?;
        let mut out = Vec::new();
        for store in self.stores_of(table.name()) {
            out.extend(table.fetch(store, key, from, to)?);
        }
        out.sort_by_key(|(window, _)| *window);
        Ok(out)
    }

    /// The current stores of table `name`, one per partition.
    fn stores_of(&self, name: &str) -> Vec<&dyn StateStore> {
        let mut stores = Vec::new();
        for task in &self.tasks {
            let uses = task.spec.tables.iter().any(|t| t.name == name);
            let key = (task.owner.clone(), name.to_string(), task.partition);
            if let Some(store) = self.stores.get(&key).filter(|_| uses) {
                stores.push(&**store);
            }
        }
        stores
    }

    /// The offset the app committed for `topic[partition]` (the next one to read).
    pub fn committed(&self, topic: &str, partition: i32) -> Option<i64> {
        let committed = self.offsets.committed.lock().ok()?;
        committed.get(&(topic.to_string(), partition)).map(|(next, _)| *next)
    }

    /// The stream time committed with `topic[partition]`'s offset.
    fn committed_stream_time(&self, topic: &str, partition: i32) -> Option<i64> {
        let committed = self.offsets.committed.lock().ok()?;
        let (_, metadata) = committed.get(&(topic.to_string(), partition))?;
        commit::stream_time_of_metadata(metadata)
    }

    /// The operations' stream times committed with `topic[partition]`'s offset.
    fn committed_clocks(&self, topic: &str, partition: i32) -> crate::task::Clocks {
        let Ok(committed) = self.offsets.committed.lock() else {
            return Vec::new();
        };
        committed
            .get(&(topic.to_string(), partition))
            .map(|(_, metadata)| commit::clocks_of_metadata(metadata))
            .unwrap_or_default()
    }

    /// The driver's counters (records, sends, table updates, dead letters).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::TestDriver;
    use crate::app::ProcessingGuarantee;
    use crate::prelude::*;

    const WORDS: Topic<String, i64> = Topic::new("words").partitions(1);
    const PASSED: Topic<String, i64> = Topic::new("passed").partitions(1).internal();
    const COUNTS: Table<String, i64> = Table::new("counts");

    #[agent(topic = WORDS, sends = [PASSED])]
    async fn pass(mut words: Stream<String, i64>) -> Result<()> {
        while let Some(event) = words.next_event().await {
            PASSED.send(&event.key, &event.value).await?;
        }
        Ok(())
    }

    #[agent(topic = PASSED, tables = [COUNTS])]
    async fn count(mut passed: Stream<String, i64>) -> Result<()> {
        while let Some(event) = passed.next_event().await {
            COUNTS.update(&event.key, |n| *n += event.value).await?;
        }
        Ok(())
    }

    /// Exactly-once with markers written after the commit: a feed that found a committed
    /// transaction's records not readable yet, and whose markers came while it looked
    /// elsewhere, passes again instead of ending the run without them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_waits_for_markers_written_while_the_feed_looked() -> crate::Result<()> {
        let app = App::new("markers")
            .processing_guarantee(ProcessingGuarantee::ExactlyOnce)
            .agent(pass)
            .agent(count);
        let mut driver = TestDriver::new(app)?;
        // Long enough that the feed after the commit always looks before the markers come.
        driver.marker_latency(Duration::from_millis(150));
        // Every idle pass: the markers are written before the feed decides.
        driver.idle = Some(Box::new(|topics| {
            while topics.log().unmarked > 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }));
        driver.pipe(&WORDS, "ann", &1)?;
        driver.run().await?;
        assert_eq!(driver.table(&COUNTS)?.get("ann"), Some(&1));
        Ok(())
    }

    /// A cut's changes go to the changelog (and the store) in key order, whatever order
    /// the records came in and however the cache hashes their keys.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cuts_changes_go_out_in_key_order() -> crate::Result<()> {
        let app = App::new("sorted").agent(pass).agent(count);
        let mut driver = TestDriver::new(app)?;
        for n in 0..50 {
            driver.pipe(&WORDS, &format!("w{:02}", (n * 37) % 50), &1)?;
        }
        driver.run().await?;
        assert_eq!(driver.table(&COUNTS)?.len(), 50);
        let keys: Vec<Vec<u8>> = driver
            .raw_records(&COUNTS.spec().changelog_topic("sorted"))
            .into_iter()
            .filter_map(|record| record.key)
            .collect();
        assert_eq!(keys.len(), 50, "one cut, one change per key");
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        Ok(())
    }
}

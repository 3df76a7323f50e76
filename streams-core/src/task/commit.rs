//! The commit point (ARCHITECTURE.md §1). Partition tasks hand over cuts; the committer
//! makes each durable in the order that gives at-least-once:
//! 1. flush the producer: every output and changelog record of the cut is acknowledged;
//! 2. write the store batch with the changelog and source offsets (one RocksDB write batch);
//! 3. commit the source offsets to the group.
//!
//! Exactly-once ([`run_rounds`]) replaces 1 and 3 with a Kafka transaction per round of
//! cuts (every task of the worker cuts in each round, see `round.rs`): the records sent
//! since the last round, the changelog records and the source offsets commit together or
//! not at all; the store batches are written only after the transaction committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use super::round::Rounds;
use super::sink::Sink;
use crate::metrics::{timed, Metrics};
use crate::store::{Checkpoint, Entry, StateStore};

/// Signals that a cut is durable, or why it could not be made so.
pub(crate) type Ack = Sender<Result<(), String>>;

/// Changes of one table partition since the last cut.
pub(crate) struct TableWrite {
    pub changelog: Arc<str>,
    pub store: Arc<dyn StateStore>,
    pub entries: Vec<Entry>,
}

/// One partition's state at a record boundary.
pub(crate) struct Cut {
    pub partition: i32,
    /// The last offset processed in each source topic read so far (the next offset to read
    /// is one past it).
    pub positions: Vec<(Arc<str>, i64)>,
    /// The task's stream time at the cut, when it has one.
    pub stream_time: Option<i64>,
    pub writes: Vec<TableWrite>,
    /// Who waits for the cut to be durable.
    pub acks: Vec<Ack>,
    /// Exactly-once: the round this cut is part of (the task waits for its end).
    pub ticket: Option<super::round::Ticket>,
    /// The cut's number among its task's cuts (from 1), and where the committer says that
    /// the cut's store writes are done (see [`Written`]).
    pub seq: u64,
    pub written: Arc<Written>,
    /// Set once the cut's store batches are written.
    pub stored: bool,
    /// Set once the task was told how the cut ended (see [`Cut::settle`]); a cut dropped
    /// before (a committer that panicked) tells it the cut will never be written.
    pub settled: bool,
}

/// How far the committer has written a task's cuts into its stores.
///
/// Reads of a table go to its cache first and to its store for keys the cache does not
/// hold. A cut hands its changes to the committer, which writes the store only after the
/// producer's flush (at-least-once) or the transaction's commit (exactly-once): until then
/// the store is behind. So a task keeps every change in its cache until the cut that took it
/// is written, and drops clean entries only once [`Written::through`] has reached its last
/// cut (Kafka Streams gets the same rule by writing its cache into the store on the stream
/// thread before it commits; here the store write stays off the task, after the flush, so
/// that a store never holds a change whose changelog record and outputs are not acknowledged).
#[derive(Default)]
pub(crate) struct Written {
    through: AtomicU64,
    failed: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Written {
    /// The last cut whose store writes are done (every cut before it too).
    pub(crate) fn through(&self) -> u64 {
        self.through.load(Ordering::Acquire)
    }

    /// The stores hold cut `seq` and every cut before it.
    pub(crate) fn advance(&self, seq: u64) {
        self.through.fetch_max(seq, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// A cut of the task will never be written (the worker failed, the round aborted, the
    /// committer is gone): nobody waits for it any more.
    pub(crate) fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Waits until cut `seq` is written; `false` if it never will be.
    pub(crate) async fn wait_for(&self, seq: u64) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.through() >= seq {
                return true;
            }
            if self.failed.load(Ordering::Acquire) {
                return false;
            }
            changed.await;
        }
    }
}

impl Cut {
    /// Tells the task how its cut ended: written, or never to be.
    fn settle(&mut self) {
        self.settled = true;
        if self.stored {
            self.written.advance(self.seq);
        } else {
            self.written.fail();
        }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        if !self.settled {
            // Nobody waits for a cut that will never be written.
            self.written.fail();
        }
    }
}

/// A source partition's position to commit: the next offset to read, and the stream time
/// of the task that reads it, as far as it has read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceOffset {
    pub topic: String,
    pub partition: i32,
    pub next: i64,
    pub stream_time: Option<i64>,
}

/// What a committed offset's metadata says: the stream time of the task that committed
/// it. Kafka Streams keeps stream time in the commit metadata too: windows closed and sent
/// by one owner stay closed for the next, even when the records that moved stream time
/// changed no table (and so wrote no changelog record to carry it).
pub(crate) fn offset_metadata(stream_time: Option<i64>) -> String {
    match stream_time {
        Some(time) => format!("{STREAM_TIME_METADATA}{time}"),
        None => String::new(),
    }
}

/// The stream time a committed offset's metadata carries (see [`offset_metadata`]).
pub(crate) fn stream_time_of_metadata(metadata: &str) -> Option<i64> {
    metadata.strip_prefix(STREAM_TIME_METADATA)?.parse().ok()
}

const STREAM_TIME_METADATA: &str = "streams.stream.time=";

/// Commits source offsets to the consumer group.
pub(crate) trait OffsetCommit: Send + Sync + 'static {
    fn commit(&self, offsets: &[SourceOffset]) -> Result<(), String>;
}

/// Runs the committer on the calling thread until every sender is gone.
pub(crate) fn run(cuts: Receiver<Cut>, sink: Arc<dyn Sink>, offsets: Arc<dyn OffsetCommit>, metrics: Arc<Metrics>) {
    let mut committed = Committed::new();
    while let Ok(first) = cuts.recv() {
        let mut batch = vec![first];
        batch.extend(cuts.try_iter());
        let outcome = commit_batch(&mut batch, &*sink, &*offsets, &metrics, &mut committed);
        for mut cut in batch {
            cut.settle();
            for ack in std::mem::take(&mut cut.acks) {
                let _ = ack.send(outcome.clone());
            }
        }
    }
}

/// The offsets this committer has committed, by topic partition: a cut that moved nowhere
/// since (a partition's last cut on revoke or shutdown, after a periodic one) commits
/// nothing again. A group refuses commits while it rebalances; re-committing what it
/// holds already would fail a clean shutdown for nothing.
type Committed = HashMap<(String, i32), i64>;

fn commit_batch(
    batch: &mut [Cut],
    sink: &dyn Sink,
    offsets: &dyn OffsetCommit,
    metrics: &Metrics,
    committed: &mut Committed,
) -> Result<(), String> {
    if let Some(error) = metrics.fatal() {
        return Err(format!("not committed: the worker failed ({error})"));
    }
    // 1. Every record sent so far, including this batch's changelog records, is acknowledged.
    let flushed = timed(&metrics.families.flush_seconds, || sink.flush());
    if let Err(error) = flushed {
        let error = format!("records were not acknowledged by the broker, offsets not committed: {error}");
        metrics.fail(error.clone());
        return Err(error);
    }
    // 2. Store batches, each with its checkpoint.
    write_stores(batch, sink, metrics)?;
    // 3. Source offsets.
    let mut latest = next_offsets(batch);
    latest.retain(|partition, (next, _)| committed.get(partition) != Some(next));
    if latest.is_empty() {
        return Ok(());
    }
    let list = source_offsets(&latest);
    let outcome = timed(&metrics.families.commit_seconds, || offsets.commit(&list));
    match outcome {
        Ok(()) => {
            metrics.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            committed.extend(latest.into_iter().map(|(partition, (next, _))| (partition, next)));
            Ok(())
        }
        Err(error) => {
            // The stores hold the state with its source positions: a worker that takes the
            // partition with these stores resumes after them; any other owner processes the
            // input since the last commit again (at-least-once).
            tracing::warn!("offset commit failed: {error}");
            Err(format!("offset commit failed: {error}"))
        }
    }
}

/// The next offset to read of every source partition the cuts reached, with the stream
/// time of its task there.
fn next_offsets(batch: &[Cut]) -> HashMap<(String, i32), (i64, Option<i64>)> {
    let mut latest: HashMap<(String, i32), (i64, Option<i64>)> = HashMap::new();
    for cut in batch.iter() {
        for (topic, offset) in &cut.positions {
            let next = offset + 1;
            let slot = latest
                .entry((topic.to_string(), cut.partition))
                .or_insert((next, cut.stream_time));
            if next >= slot.0 {
                *slot = (next, cut.stream_time.max(slot.1));
            }
        }
    }
    latest
}

fn source_offsets(latest: &HashMap<(String, i32), (i64, Option<i64>)>) -> Vec<SourceOffset> {
    latest
        .iter()
        .map(|((topic, partition), (next, stream_time))| SourceOffset {
            topic: topic.clone(),
            partition: *partition,
            next: *next,
            stream_time: *stream_time,
        })
        .collect()
}

/// Writes each cut's store batches, each with its checkpoint.
fn write_stores(batch: &mut [Cut], sink: &dyn Sink, metrics: &Metrics) -> Result<(), String> {
    for cut in batch.iter_mut() {
        let sources: Vec<(String, i64)> = cut.positions.iter().map(|(t, o)| (t.to_string(), *o)).collect();
        for write in cut.writes.drain(..) {
            // Without changes in this cut, the changelog offset stays as stored: the
            // producer's offsets may be from an earlier ownership of the partition, older
            // than what a restore has brought the store to since.
            let changelog_offset = if write.entries.is_empty() {
                None
            } else {
                sink.changelog_offset(&write.changelog, cut.partition)
            };
            let checkpoint = Checkpoint {
                changelog_offset,
                sources: Some(sources.clone()),
                stream_time: cut.stream_time,
            };
            if let Err(error) = write.store.write(&write.entries, &checkpoint) {
                let error = format!("cannot write the store of {}: {error}", write.changelog);
                metrics.fail(error.clone());
                return Err(error);
            }
        }
        cut.stored = true;
    }
    Ok(())
}

/// Why a transaction did not commit.
pub(crate) enum TxnError {
    /// The transaction was aborted (or must be): the round's work is undone, and the tasks
    /// start again from the last committed state.
    Abortable(String),
    /// The producer cannot go on (fenced by another producer with the same transactional id):
    /// the worker stops without committing anything more.
    Fatal(String),
}

/// A worker's transactions: one open at a time, holding everything sent since it began.
pub(crate) trait Transactions: Send + Sync + 'static {
    /// Adds the source offsets (the next to read) to the open transaction and commits it.
    fn commit(&self, offsets: &[SourceOffset]) -> Result<(), TxnError>;
    /// Aborts the open transaction.
    fn abort(&self) -> Result<(), String>;
    /// Begins the next transaction.
    fn begin(&self) -> Result<(), String>;
}

/// How long the committer waits between looks at a round's members.
const ROUND_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Exactly-once: runs rounds of cuts on the calling thread, one transaction each, at every
/// `interval` or when a task asks for one (a revoke, a full table cache, the driver's
/// barrier), until every sender is gone and no task is left.
pub(crate) fn run_rounds(
    cuts: Receiver<Cut>,
    sink: Arc<dyn Sink>,
    transactions: Arc<dyn Transactions>,
    rounds: Arc<Rounds>,
    metrics: Arc<Metrics>,
    interval: std::time::Duration,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut pending: Vec<Cut> = Vec::new();
    let mut committed = Committed::new();
    let mut next = std::time::Instant::now() + interval;
    let mut open = true;
    while open {
        let wait = next.saturating_duration_since(std::time::Instant::now());
        match cuts.recv_timeout(wait) {
            Ok(cut) => pending.push(cut),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        // A round: asked for now, or the one a task has opened.
        let round = rounds.request();
        loop {
            pending.extend(cuts.try_iter());
            // A pending cut counts for this round whatever round its task cut for (one that
            // joined while the last round committed cut for that one): it is answered at this
            // round's end, and its task sends nothing until then.
            for cut in &pending {
                if let Some(ticket) = &cut.ticket {
                    rounds.delivered(ticket.member, ticket.round.max(round));
                }
            }
            if rounds.complete(round) {
                break;
            }
            match cuts.recv_timeout(ROUND_POLL) {
                Ok(cut) => pending.push(cut),
                Err(RecvTimeoutError::Timeout) => {}
                // The last sender went while members remain (their tasks are ending).
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(ROUND_POLL),
            }
        }
        let outcome = commit_round(&mut pending, &*sink, &*transactions, &rounds, &metrics, &mut committed);
        // The tasks learn that their cuts are in the stores before they go on.
        for cut in &mut pending {
            cut.settle();
        }
        rounds.finish(round, outcome.is_err() && !metrics.failed());
        for mut cut in pending.drain(..) {
            for ack in std::mem::take(&mut cut.acks) {
                let _ = ack.send(outcome.clone());
            }
            if let Some(ticket) = cut.ticket.take() {
                let _ = ticket.done.send(outcome.clone());
            }
        }
        next = std::time::Instant::now() + interval;
    }
}

/// Commits one round: its records are acknowledged, its offsets go into the transaction,
/// the transaction commits, then the stores are written; the next transaction begins.
fn commit_round(
    batch: &mut [Cut],
    sink: &dyn Sink,
    transactions: &dyn Transactions,
    rounds: &Rounds,
    metrics: &Metrics,
    committed: &mut Committed,
) -> Result<(), String> {
    if let Some(error) = metrics.fatal() {
        return Err(format!("not committed: the worker failed ({error})"));
    }
    let aborted = |why: String| -> String {
        tracing::warn!("transaction aborted: {why}");
        metrics.aborts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(error) = transactions.abort() {
            metrics.fail(format!("cannot abort the transaction: {error}"));
        } else if let Err(error) = transactions.begin() {
            metrics.fail(format!("cannot begin a transaction: {error}"));
        }
        format!("transaction aborted: {why}")
    };
    if rounds.take_abort_request() {
        // Partitions were lost: what their tasks sent is in this transaction without their
        // offsets, and their next owner processes that input again.
        return Err(aborted("partitions were lost to the group".into()));
    }
    let flushed = timed(&metrics.families.flush_seconds, || sink.flush());
    if let Err(error) = flushed {
        return Err(aborted(format!("records were not acknowledged by the broker: {error}")));
    }
    // Offsets that moved since the last committed round (an idle worker's rounds send none).
    let mut latest = next_offsets(batch);
    latest.retain(|partition, (next, _)| committed.get(partition) != Some(next));
    let offsets = source_offsets(&latest);
    // A cut that changed nothing and moved nowhere leaves its stores as they are.
    for cut in batch.iter_mut() {
        let moved = cut
            .positions
            .iter()
            .any(|(topic, offset)| committed.get(&(topic.to_string(), cut.partition)) != Some(&(offset + 1)));
        if !moved && cut.writes.iter().all(|w| w.entries.is_empty()) {
            cut.writes.clear();
        }
    }
    let changed = !offsets.is_empty() || batch.iter().any(|cut| !cut.writes.is_empty());
    let outcome = timed(&metrics.families.commit_seconds, || transactions.commit(&offsets));
    match outcome {
        Ok(()) => {}
        Err(TxnError::Abortable(why)) => return Err(aborted(why)),
        Err(TxnError::Fatal(why)) => {
            let error = format!("the transaction cannot commit: {why}; nothing more is committed");
            metrics.fail(error.clone());
            return Err(error);
        }
    }
    if changed {
        metrics.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    committed.extend(latest.into_iter().map(|(partition, (next, _))| (partition, next)));
    // The changelog is the truth from here: a crash before the stores are written is
    // repaired by their restore.
    write_stores(batch, sink, metrics)?;
    transactions.begin().map_err(|error| {
        let error = format!("cannot begin a transaction: {error}");
        metrics.fail(error.clone());
        error
    })
}

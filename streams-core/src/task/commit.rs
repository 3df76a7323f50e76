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
use super::sink::{FlushError, OnError, ProductionErrors, Sink, SinkError};
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
    /// Its operations' stream times at the cut ([`super::TaskContext::clocks`]).
    pub clocks: super::Clocks,
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
///
/// A task dropped without finishing (killed, lost, past its finish timeout) is
/// [`closed`](Written::close): its cuts still with the committer are never written to its
/// stores. The partition's next owner may be this same worker, restoring the same stores
/// from the changelog meanwhile; a late write of the dropped task's cut would put older
/// values (and a checkpoint past changes it never saw) over what the restore brought.
#[derive(Default)]
pub(crate) struct Written {
    through: AtomicU64,
    failed: AtomicBool,
    changed: tokio::sync::Notify,
    /// Held while the committer writes a cut of the task; `true` once the task is dropped.
    closed: std::sync::Mutex<bool>,
    /// The test driver's kill in the middle of a cut's store writes: one more than how many
    /// of the next cut's stores are written before the worker dies (0: no kill).
    kill_after: std::sync::atomic::AtomicUsize,
}

impl Written {
    /// The task was dropped without finishing: none of its cuts is written from now on.
    /// Returns once a write of one already under way is done.
    pub(crate) fn close(&self) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.fail();
    }

    /// The test driver: the worker dies while writing the task's next cut, once `stores`
    /// of its stores are written (each a write of its own, as on a worker) and before
    /// anything else of the task — no other store, no offset commit. The task is dropped
    /// (closed) there.
    pub(crate) fn kill_during_next_write(&self, stores: usize) {
        self.kill_after.store(stores.saturating_add(1), Ordering::Release);
    }

    /// Calls off a kill set by [`kill_during_next_write`](Self::kill_during_next_write):
    /// `true` when it had not happened yet (no cut of the task was written since).
    pub(crate) fn cancel_kill(&self) -> bool {
        self.kill_after.swap(0, Ordering::AcqRel) != 0
    }

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
    /// The task's operations' stream times there ([`super::TaskContext::clocks`]).
    pub clocks: super::Clocks,
}

/// What a committed offset's metadata says: the stream time of the task that committed
/// it, then its operations' own (`;streams.clock.{table}={ms}` each). Kafka Streams keeps
/// stream time in the commit metadata too: windows closed and sent by one owner stay closed
/// for the next, even when the records that moved stream time changed no table (and so
/// wrote no changelog record to carry it).
pub(crate) fn offset_metadata(stream_time: Option<i64>, clocks: &[(String, i64)]) -> String {
    let mut text = match stream_time {
        Some(time) => format!("{STREAM_TIME_METADATA}{time}"),
        None => String::new(),
    };
    // Set clocks first: when the budget runs out, unset ones are what is left out.
    let set = clocks.iter().filter(|(_, time)| *time != i64::MIN);
    let unset = clocks.iter().filter(|(_, time)| *time == i64::MIN);
    for (name, time) in set.chain(unset) {
        let clock = format!(";{CLOCK_METADATA}{name}={}", crate::changelog::clock_text(*time));
        if text.len() + clock.len() > METADATA_BUDGET {
            // Brokers refuse metadata past `offset.metadata.max.bytes` (4096 by default);
            // the stores and the changelog keep the rest.
            tracing::debug!("offset metadata is full: the stream time of `{name}` is kept with its store only");
            continue;
        }
        text.push_str(&clock);
    }
    text
}

/// What a committed offset's metadata may take (Kafka's `offset.metadata.max.bytes` is
/// 4096 by default).
const METADATA_BUDGET: usize = 3_000;

/// The stream time a committed offset's metadata carries (see [`offset_metadata`]).
pub(crate) fn stream_time_of_metadata(metadata: &str) -> Option<i64> {
    metadata
        .split(';')
        .find_map(|part| part.strip_prefix(STREAM_TIME_METADATA)?.parse().ok())
}

/// The operations' stream times a committed offset's metadata carries.
pub(crate) fn clocks_of_metadata(metadata: &str) -> super::Clocks {
    metadata
        .split(';')
        .filter_map(|part| {
            let (name, time) = part.strip_prefix(CLOCK_METADATA)?.split_once('=')?;
            Some((name.to_string(), crate::changelog::clock_of_text(time)?))
        })
        .collect()
}

const STREAM_TIME_METADATA: &str = "streams.stream.time=";
const CLOCK_METADATA: &str = "streams.clock.";

/// Commits source offsets to the consumer group.
pub(crate) trait OffsetCommit: Send + Sync + 'static {
    fn commit(&self, offsets: &[SourceOffset]) -> Result<(), String>;
}

/// What the committer works with, besides its cuts: the sink to flush, the metrics, and how
/// records the broker refuses are handled.
pub(crate) struct Committer {
    pub sink: Arc<dyn Sink>,
    pub metrics: Arc<Metrics>,
    pub errors: Arc<ProductionErrors>,
}

/// Runs the committer on the calling thread until every sender is gone.
pub(crate) fn run(cuts: Receiver<Cut>, committer: Committer, offsets: Arc<dyn OffsetCommit>) {
    let mut committed = Committed::new();
    while let Ok(first) = cuts.recv() {
        let mut batch = vec![first];
        batch.extend(cuts.try_iter());
        let outcome = commit_batch(&mut batch, &committer, &*offsets, &mut committed);
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
    committer: &Committer,
    offsets: &dyn OffsetCommit,
    committed: &mut Committed,
) -> Result<(), String> {
    let (sink, metrics) = (&*committer.sink, &*committer.metrics);
    if let Some(error) = metrics.fatal() {
        return Err(format!("not committed: the worker failed ({error})"));
    }
    // 1. Every record sent so far, including this batch's changelog records, is acknowledged
    // (those the broker refused sent to the dead-letter topic instead, where the app says so).
    let flushed = timed(&metrics.families.flush_seconds, || sink.flush())
        .or_else(|error| dead_letter_refused(sink, &committer.errors, error));
    if let Err(error) = flushed {
        let error = format!(
            "records were refused by the broker or not acknowledged ({error}); offsets not committed, the worker \
             stops (App::on_production_error chooses)"
        );
        metrics.fail(error.clone());
        return Err(error);
    }
    // 2. Store batches, each with its checkpoint.
    write_stores(batch, sink, metrics)?;
    // 3. Source offsets, of the cuts written to their stores. A cut that was not (its task
    // was dropped meanwhile) commits nothing: a cut of the same batch before it may have
    // put its stores' checkpoints past its changelog records (a checkpoint takes the
    // producer's last acknowledged offset), and a restore would not read them; its input
    // is processed again instead.
    let mut latest = next_offsets(batch.iter().filter(|cut| cut.stored));
    latest.retain(|partition, (next, _, _)| committed.get(partition) != Some(next));
    if latest.is_empty() {
        return Ok(());
    }
    let list = source_offsets(&latest);
    let outcome = timed(&metrics.families.commit_seconds, || offsets.commit(&list));
    match outcome {
        Ok(()) => {
            metrics.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            committed.extend(latest.into_iter().map(|(partition, (next, _, _))| (partition, next)));
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

/// After a flush that failed on records the broker refused: where the app chose so, sends
/// them to the dead-letter topic and flushes again; otherwise, or when that fails too, the
/// error.
fn dead_letter_refused(sink: &dyn Sink, errors: &ProductionErrors, error: FlushError) -> Result<(), FlushError> {
    if error.other.is_some() || !errors.dead_letters(&error.refused) {
        return Err(error);
    }
    for refused in &error.refused {
        if errors.handler == OnError::Continue {
            tracing::warn!(
                "the broker refused a record to {} ({}); it is dropped",
                refused.record.topic,
                refused.error
            );
            continue;
        }
        tracing::warn!(
            "the broker refused a record to {} ({}); it goes to the dead-letter topic {}",
            refused.record.topic,
            refused.error,
            errors.dead_letter_topic
        );
        let mut record = errors.dead_letter(refused);
        loop {
            match sink.enqueue(record) {
                Ok(()) => break,
                Err(SinkError::Full(back)) => {
                    record = back;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(SinkError::Failed(failed)) => return Err(FlushError::other(failed)),
            }
        }
    }
    sink.flush()
}

/// Where a source partition's commit stands: the next offset to read, and the stream times
/// of its task there.
type Next = (i64, Option<i64>, super::Clocks);

/// The next offset to read of every source partition the cuts reached, with the stream
/// times of its task there.
fn next_offsets<'c>(batch: impl IntoIterator<Item = &'c Cut>) -> HashMap<(String, i32), Next> {
    let mut latest: HashMap<(String, i32), Next> = HashMap::new();
    for cut in batch {
        for (topic, offset) in &cut.positions {
            let next = offset + 1;
            let slot = latest
                .entry((topic.to_string(), cut.partition))
                .or_insert_with(|| (next, cut.stream_time, cut.clocks.clone()));
            if next >= slot.0 {
                slot.0 = next;
                slot.1 = cut.stream_time.max(slot.1);
                super::merge_clocks(&mut slot.2, &cut.clocks, i64::max);
            }
        }
    }
    latest
}

fn source_offsets(latest: &HashMap<(String, i32), Next>) -> Vec<SourceOffset> {
    latest
        .iter()
        .map(|((topic, partition), (next, stream_time, clocks))| SourceOffset {
            topic: topic.clone(),
            partition: *partition,
            next: *next,
            stream_time: *stream_time,
            clocks: clocks.clone(),
        })
        .collect()
}

/// Writes each cut's store batches, each with its checkpoint.
fn write_stores(batch: &mut [Cut], sink: &dyn Sink, metrics: &Metrics) -> Result<(), String> {
    for cut in batch.iter_mut() {
        let written = Arc::clone(&cut.written);
        let mut closed = written.closed.lock().unwrap_or_else(|p| p.into_inner());
        if *closed {
            // Dropped: its stores are the next owner's to restore (see [`Written`]).
            cut.writes.clear();
            continue;
        }
        let sources: Vec<(String, i64)> = cut.positions.iter().map(|(t, o)| (t.to_string(), *o)).collect();
        let kill_after = match written.kill_after.swap(0, Ordering::AcqRel) {
            0 => None,
            stores => Some(stores - 1),
        };
        for (n, write) in cut.writes.drain(..).enumerate() {
            if kill_after == Some(n) {
                break;
            }
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
                clocks: cut.clocks.clone(),
            };
            if let Err(error) = write.store.write(&write.entries, &checkpoint) {
                let error = format!("cannot write the store of {}: {error}", write.changelog);
                metrics.fail(error.clone());
                return Err(error);
            }
        }
        if kill_after.is_some() {
            // The test driver's kill: what is written stays, nothing else of the task
            // happens (its offsets are not committed: the cut is not stored). The other
            // tasks' cuts go on, as other workers would.
            *closed = true;
            cut.writes.clear();
            continue;
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
    /// The group moved on since the round's cuts (a rebalance: ILLEGAL_GENERATION, an unknown
    /// member): the round aborts, and this does not count toward giving up, however often
    /// it happens (a rolling restart moves the group many times).
    Rebalanced(String),
    /// Whether the transaction committed is not known (a commit that timed out): the
    /// producer is made anew (which ends the transaction either way, fencing what the old
    /// one still had in flight, as the Jepsen analyses of Kafka's transactions advise), and
    /// the tasks start again from what the group has committed.
    Unknown(String),
    /// The producer cannot go on (fenced by another producer with the same transactional id):
    /// the worker stops without committing anything more.
    Fatal(String),
}

/// The group's generation as the consumer saw it when a round's cuts were all in (KIP-447):
/// its commit carries it, so that the broker refuses the round once the group has moved on
/// (a zombie's partitions belong to someone else by then).
pub(crate) type Generation = Box<dyn std::any::Any + Send>;

/// A worker's transactions: one open at a time, holding everything sent since it began.
pub(crate) trait Transactions: Send + Sync + 'static {
    /// The group's generation now (see [`Generation`]).
    fn generation(&self) -> Generation;
    /// Adds the source offsets (the next to read) to the open transaction, with the group's
    /// generation of the round, and commits it.
    fn commit(&self, offsets: &[SourceOffset], generation: &Generation) -> Result<(), TxnError>;
    /// Aborts the open transaction.
    fn abort(&self) -> Result<(), String>;
    /// The worker failed: aborts the open transaction once, without trying again, so that
    /// read_committed readers need not wait for the broker to time it out. `Ok(false)`: no
    /// transaction was open (the last round committed and the next did not begin).
    fn abandon(&self) -> Result<bool, String> {
        self.abort().map(|()| true)
    }
    /// Begins the next transaction.
    fn begin(&self) -> Result<(), String>;
    /// Makes the transactional producer anew (after [`TxnError::Unknown`]): the new one's
    /// initialisation ends what the old one left open, and fences it.
    fn reinit(&self) -> Result<(), String>;
}

/// Aborts in a row for the same cause after which the worker stops (rebalances excepted).
const MAX_ABORTS: u32 = 3;

/// How the abort of a round the group's movement undid begins its cause.
const GROUP_MOVED: &str = "the group moved on";

/// How the abort of a round begins its cause when records the broker refused for the first
/// time go to the dead-letter topic when the round is made again.
const DIVERTED: &str = "refused records go to the dead-letter topic";

/// How long the committer waits between looks at a round's members.
const ROUND_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Exactly-once: runs rounds of cuts on the calling thread, one transaction each, at every
/// `interval` or when a task asks for one (a revoke, a full table cache, the driver's
/// barrier), until every sender is gone and no task is left.
pub(crate) fn run_rounds(
    cuts: Receiver<Cut>,
    committer: Committer,
    transactions: Arc<dyn Transactions>,
    rounds: Arc<Rounds>,
    interval: std::time::Duration,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let metrics = Arc::clone(&committer.metrics);
    let mut pending: Vec<Cut> = Vec::new();
    let mut committed = Committed::new();
    // The last abort's cause, and how many rounds in a row aborted for it.
    let mut aborts: Option<(String, u32)> = None;
    let mut next = std::time::Instant::now() + interval;
    let mut open = true;
    // Whether the open transaction was abandoned after the worker failed.
    let mut abandoned = false;
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
            // Once the worker has failed nothing more commits: no member is waited for.
            if rounds.complete(round) || metrics.failed() {
                break;
            }
            match cuts.recv_timeout(ROUND_POLL) {
                Ok(cut) => pending.push(cut),
                Err(RecvTimeoutError::Timeout) => {}
                // The last sender went while members remain (their tasks are ending).
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(ROUND_POLL),
            }
        }
        // The generation the round's cuts were made in: a commit after the group moved on is
        // refused (read here, not at commit time, when a quick rejoin may have renewed it).
        let generation = transactions.generation();
        let outcome = commit_round(
            &mut pending,
            &committer,
            &*transactions,
            &rounds,
            generation,
            &mut committed,
        );
        if metrics.failed() && !abandoned {
            abandoned = true;
            abandon(&*transactions, &committer);
        }
        match &outcome {
            Ok(()) => aborts = None,
            // Rebalances abort rounds without limit: they are the group's doing, and pass.
            Err(cause) if cause.contains(GROUP_MOVED) => {}
            // Progress: the records go elsewhere next time.
            Err(cause) if cause.contains(DIVERTED) => aborts = None,
            Err(cause) if !metrics.failed() => {
                let count = match &aborts {
                    Some((last, count)) if last == cause => count + 1,
                    _ => 1,
                };
                if count >= MAX_ABORTS {
                    metrics.fail(format!(
                        "{count} transactions in a row aborted for the same cause, giving up: {cause}"
                    ));
                }
                aborts = Some((cause.clone(), count));
            }
            Err(_) => {}
        }
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
                ticket.answer(outcome.clone());
            }
        }
        next = std::time::Instant::now() + interval;
    }
}

/// After the worker failed: what it sent since its last round will never commit, so its
/// transaction is aborted now, as Kafka Streams closes a failed thread's tasks dirty.
/// Left open, it would hold every read_committed reader of the partitions it wrote (the
/// app's own repartition topics included) at its first record until the broker times it
/// out (`transaction.timeout.ms`, a minute by default). One attempt: a producer that
/// failed for good (fenced) cannot abort, and the broker ends the transaction anyway.
fn abandon(transactions: &dyn Transactions, committer: &Committer) {
    // Counted among the aborts when it holds records (not an empty one begun after the
    // abort of the round that failed).
    let holds_records = committer.sink.take_sent();
    match transactions.abandon() {
        Ok(true) => {
            if holds_records {
                committer
                    .metrics
                    .aborts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tracing::info!("the worker failed: its open transaction is aborted");
        }
        Ok(false) => tracing::debug!("the worker failed with no transaction open"),
        Err(error) => tracing::warn!(
            "the worker failed, and its open transaction could not be aborted ({error}); the broker ends \
             it (at once when another producer with its transactional id fenced this one, else after \
             transaction.timeout.ms)"
        ),
    }
}

/// Commits one round: its records are acknowledged, its offsets go into the transaction,
/// the transaction commits, then the stores are written; the next transaction begins.
fn commit_round(
    batch: &mut [Cut],
    committer: &Committer,
    transactions: &dyn Transactions,
    rounds: &Rounds,
    generation: Generation,
    committed: &mut Committed,
) -> Result<(), String> {
    let (sink, metrics) = (&*committer.sink, &*committer.metrics);
    if let Some(error) = metrics.fatal() {
        return Err(format!("not committed: the worker failed ({error})"));
    }
    let aborted = |why: String| -> String {
        tracing::warn!("transaction aborted: {why}");
        metrics.aborts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(error) = transactions.abort() {
            metrics.fail(format!("cannot abort the transaction: {error}"));
            return format!("transaction aborted: {why}");
        }
        // The records sent are gone with it: the next transaction holds what is sent from now.
        let _ = sink.take_sent();
        if let Err(error) = transactions.begin() {
            metrics.fail(format!("cannot begin a transaction: {error}"));
        }
        format!("transaction aborted: {why}")
    };
    if rounds.take_abort_request() {
        // Partitions were lost: what their tasks sent is in this transaction without their
        // offsets, and their next owner processes that input again.
        return Err(aborted(format!("{GROUP_MOVED}: partitions were lost")));
    }
    let flushed = timed(&metrics.families.flush_seconds, || sink.flush());
    if let Err(error) = flushed {
        let errors = &committer.errors;
        if error.other.is_none() && errors.dead_letters(&error.refused) {
            // Sent again after the abort, they go to the dead-letter topic. Each refused
            // record dooms its transaction (Kafka takes no more records into it), so a run
            // of them costs an abort each: those do not count toward giving up while each
            // brings a record not refused before.
            if errors.remember(&error.refused) {
                return Err(aborted(format!("{DIVERTED}: {error}")));
            }
        } else if error.other.is_none() {
            let error =
                format!("the broker refused records ({error}); the worker stops (App::on_production_error chooses)");
            let _ = aborted(error.clone());
            metrics.fail(error.clone());
            return Err(error);
        }
        return Err(aborted(format!("records were not acknowledged by the broker: {error}")));
    }
    if rounds.take_abort_request() {
        // Partitions were lost while the round's records were flushed.
        return Err(aborted(format!("{GROUP_MOVED}: partitions were lost")));
    }
    // The offsets that moved since the last committed round: an idle worker's rounds send
    // none. A round whose transaction holds records sends every cut's, moved or not: its
    // commit must carry offsets for the broker to check the group's generation (KIP-447),
    // or a zombie's wall-clock punctuations and expiries, sent after its partitions went to
    // another worker, would commit (with no input, nothing moved).
    let sent = sink.take_sent();
    let mut latest = next_offsets(batch.iter());
    if !sent {
        latest.retain(|partition, (next, _, _)| committed.get(partition) != Some(next));
    }
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
    let outcome = timed(&metrics.families.commit_seconds, || {
        transactions.commit(&offsets, &generation)
    });
    match outcome {
        Ok(()) => {}
        Err(TxnError::Abortable(why)) => return Err(aborted(why)),
        Err(TxnError::Rebalanced(why)) => return Err(aborted(format!("{GROUP_MOVED}: {why}"))),
        Err(TxnError::Unknown(why)) => {
            tracing::warn!("the transaction's outcome is unknown ({why}); making the producer anew");
            metrics.aborts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rounds.outcome_unknown();
            if let Err(error) = transactions.reinit() {
                metrics.fail(format!("cannot make the transactional producer anew: {error}"));
            }
            return Err(format!("the transaction's outcome is unknown: {why}"));
        }
        Err(TxnError::Fatal(why)) => {
            let error = format!("the transaction cannot commit: {why}; nothing more is committed");
            metrics.fail(error.clone());
            return Err(error);
        }
    }
    if changed {
        metrics.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    committed.extend(latest.into_iter().map(|(partition, (next, _, _))| (partition, next)));
    // The changelog is the truth from here: a crash before the stores are written is
    // repaired by their restore.
    write_stores(batch, sink, metrics)?;
    transactions.begin().map_err(|error| {
        let error = format!("cannot begin a transaction: {error}");
        metrics.fail(error.clone());
        error
    })
}

#[cfg(test)]
mod tests {
    //! The exactly-once committer against a double of Kafka's transactions: a flush that
    //! waits while the test makes something happen (a loss, a rejoin), and a broker that
    //! refuses a round's offsets when the group's generation has moved on since the round's
    //! cuts (KIP-447).

    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::store::{MemoryStore, StateStore};
    use crate::task::round::{Rounds, Ticket};

    #[test]
    fn offset_metadata_carries_stream_time_and_the_operations_own() {
        let clocks = vec![
            ("per-window".to_string(), 15_000),
            ("pairs-this-join-store".to_string(), -3),
        ];
        let text = offset_metadata(Some(30_000), &clocks);
        assert_eq!(
            text,
            "streams.stream.time=30000;streams.clock.per-window=15000;streams.clock.pairs-this-join-store=-3"
        );
        assert_eq!(stream_time_of_metadata(&text), Some(30_000));
        assert_eq!(clocks_of_metadata(&text), clocks);
        // What earlier versions wrote still reads.
        assert_eq!(stream_time_of_metadata("streams.stream.time=7"), Some(7));
        assert!(clocks_of_metadata("streams.stream.time=7").is_empty());
        assert_eq!(offset_metadata(None, &[]), "");
        // Within the broker's limit, however many clocks.
        let many: Vec<(String, i64)> = (0..500).map(|n| (format!("table-{n}"), n)).collect();
        let text = offset_metadata(Some(1), &many);
        assert!(text.len() <= METADATA_BUDGET, "{}", text.len());
        assert!(clocks_of_metadata(&text).len() > 50);
        assert_eq!(stream_time_of_metadata("something else"), None);
        // An operation no record reached yet is listed without a time.
        let unset = vec![("win".to_string(), i64::MIN)];
        let text = offset_metadata(Some(1), &unset);
        assert_eq!(text, "streams.stream.time=1;streams.clock.win=");
        assert_eq!(clocks_of_metadata(&text), unset);
    }
    use crate::task::sink::{OutRecord, ProductionErrors, Sink, SinkError};

    /// A sink whose flush says it has begun, then waits to be let go.
    struct HeldFlush {
        begun: Mutex<mpsc::Sender<()>>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Sink for HeldFlush {
        fn enqueue(&self, _: OutRecord) -> std::result::Result<(), SinkError> {
            Ok(())
        }
        fn flush(&self) -> std::result::Result<(), FlushError> {
            let _ = self.begun.lock().unwrap_or_else(|p| p.into_inner()).send(());
            let _ = self.release.lock().unwrap_or_else(|p| p.into_inner()).recv();
            Ok(())
        }
        fn changelog_offset(&self, _: &str, _: i32) -> Option<i64> {
            Some(0)
        }
    }

    /// Kafka's transactions as far as the committer sees them: the group's generation, and
    /// offsets refused when the round's generation is not the group's.
    #[derive(Default)]
    struct Broker {
        generation: AtomicU64,
        commits: AtomicU64,
        aborts: AtomicU64,
        /// Every commit finds the group moved on (a long rolling restart).
        always_moved: bool,
    }

    impl Transactions for Broker {
        fn generation(&self) -> Generation {
            Box::new(self.generation.load(Ordering::SeqCst))
        }
        /// Counts the commits of offsets (a round without any commits nothing to refuse).
        fn commit(&self, offsets: &[SourceOffset], generation: &Generation) -> std::result::Result<(), TxnError> {
            if offsets.is_empty() {
                return Ok(());
            }
            if self.always_moved || generation.downcast_ref::<u64>() != Some(&self.generation.load(Ordering::SeqCst)) {
                return Err(TxnError::Rebalanced("ILLEGAL_GENERATION".into()));
            }
            self.commits.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn abort(&self) -> std::result::Result<(), String> {
            self.aborts.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn begin(&self) -> std::result::Result<(), String> {
            Ok(())
        }
        fn reinit(&self) -> std::result::Result<(), String> {
            Ok(())
        }
    }

    /// One task's round through the committer: `during_flush` happens while its records are
    /// flushed. Returns the round's outcome, the task's store and the broker.
    fn one_round(
        during_flush: impl FnOnce(&Rounds, &Broker),
    ) -> (std::result::Result<(), String>, Arc<MemoryStore>, Arc<Broker>) {
        let (begun_tx, begun) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let sink = Arc::new(HeldFlush {
            begun: Mutex::new(begun_tx),
            release: Mutex::new(release_rx),
        });
        let broker = Arc::new(Broker::default());
        let rounds = Arc::new(Rounds::default());
        let (member, _) = rounds.join();
        let (cuts, cut_rx) = mpsc::channel();
        let committer = Committer {
            sink,
            metrics: Arc::new(Metrics::default()),
            errors: Arc::new(ProductionErrors::new(OnError::Fail, "dlq")),
        };
        let thread = {
            let (broker, rounds) = (Arc::clone(&broker), Arc::clone(&rounds));
            std::thread::spawn(move || {
                run_rounds(cut_rx, committer, broker, rounds, std::time::Duration::from_secs(3600))
            })
        };
        let store = Arc::new(MemoryStore::default());
        let round = rounds.request();
        let (done, finished) = tokio::sync::oneshot::channel();
        cuts.send(Cut {
            partition: 0,
            positions: vec![(Arc::from("in"), 9)],
            stream_time: None,
            clocks: Vec::new(),
            writes: vec![TableWrite {
                changelog: Arc::from("changelog"),
                store: Arc::clone(&store) as Arc<dyn StateStore>,
                entries: vec![(b"k".to_vec(), Some(b"1".to_vec()))],
            }],
            acks: Vec::new(),
            ticket: Some(Ticket::without_gate(member, round, done)),
            seq: 1,
            written: Arc::default(),
            stored: false,
            settled: false,
        })
        .expect("cut");
        begun.recv().expect("the flush begins");
        during_flush(&rounds, &broker);
        release.send(()).expect("release");
        let outcome = finished.blocking_recv().expect("the round ends");
        rounds.leave(member);
        // The committer's last round (its cuts are gone) flushes too: nothing holds it.
        drop(release);
        drop(cuts);
        thread.join().expect("committer");
        (outcome, store, broker)
    }

    #[test]
    fn a_round_commits_its_cuts_and_then_writes_the_stores() {
        let (outcome, store, broker) = one_round(|_, _| {});
        assert_eq!(outcome, Ok(()));
        assert_eq!(broker.commits.load(Ordering::SeqCst), 1);
        assert_eq!(store.get(b"k").expect("get"), Some(b"1".to_vec()));
    }

    /// Partitions lost while a round's records are flushed: what their tasks sent is in the
    /// round without their offsets, so the round aborts rather than commits.
    #[test]
    fn partitions_lost_during_the_flush_abort_the_round() {
        let (outcome, store, broker) = one_round(|rounds, _| rounds.request_abort());
        assert!(outcome.as_ref().is_err_and(|e| e.contains("lost")), "{outcome:?}");
        assert_eq!(broker.commits.load(Ordering::SeqCst), 0);
        assert_eq!(broker.aborts.load(Ordering::SeqCst), 1);
        assert_eq!(
            store.get(b"k").expect("get"),
            None,
            "the stores keep the committed state"
        );
    }

    /// KIP-447: the group moves on (a quick rejoin) while the round is flushed. The round's
    /// commit carries the generation its cuts were made in, and the broker refuses it: the
    /// zombie's round does not commit and its stores are not written.
    #[test]
    fn a_round_from_an_older_generation_is_refused_and_writes_no_store() {
        let (outcome, store, broker) = one_round(|_, broker| {
            broker.generation.fetch_add(1, Ordering::SeqCst);
        });
        assert!(
            outcome.as_ref().is_err_and(|e| e.contains("ILLEGAL_GENERATION")),
            "{outcome:?}"
        );
        assert_eq!(broker.commits.load(Ordering::SeqCst), 0);
        assert_eq!(store.get(b"k").expect("get"), None);
    }

    /// A sink that says whether records were sent (under exactly-once: whether the open
    /// transaction holds any), and whose flush moves the group on when told (the round is
    /// then a zombie's: its cuts were made in the generation before).
    #[derive(Default)]
    struct Sending {
        sent: AtomicBool,
        move_group: AtomicBool,
        broker: Arc<Broker>,
    }

    impl Sink for Sending {
        fn enqueue(&self, _: OutRecord) -> std::result::Result<(), SinkError> {
            Ok(())
        }
        fn flush(&self) -> std::result::Result<(), FlushError> {
            if self.move_group.swap(false, Ordering::SeqCst) {
                self.broker.generation.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }
        fn changelog_offset(&self, _: &str, _: i32) -> Option<i64> {
            Some(0)
        }
        fn take_sent(&self) -> bool {
            self.sent.swap(false, Ordering::SeqCst)
        }
    }

    /// KIP-447 without input: a zombie's round whose offsets did not move, but whose
    /// transaction holds records (a wall-clock punctuation's output, expired entries' tombstones),
    /// carries the offsets anyway, so the broker refuses it. An idle round (nothing sent,
    /// nothing moved) carries none: there is nothing to refuse.
    #[test]
    fn a_zombies_round_without_input_is_refused_when_it_sent_records() {
        let broker = Arc::new(Broker::default());
        let sink = Arc::new(Sending {
            broker: Arc::clone(&broker),
            ..Sending::default()
        });
        let rounds = Arc::new(Rounds::default());
        let (member, _) = rounds.join();
        let (cuts, cut_rx) = mpsc::channel();
        let committer = Committer {
            sink: Arc::clone(&sink) as Arc<dyn Sink>,
            metrics: Arc::new(Metrics::default()),
            errors: Arc::new(ProductionErrors::new(OnError::Fail, "dlq")),
        };
        let thread = {
            let (broker, rounds) = (Arc::clone(&broker) as Arc<dyn Transactions>, Arc::clone(&rounds));
            std::thread::spawn(move || {
                run_rounds(cut_rx, committer, broker, rounds, std::time::Duration::from_secs(3600))
            })
        };
        let mut seq = 0;
        let mut round_at = |offset: i64| {
            seq += 1;
            let (cut, finished) = cut_for_a_round(&rounds, member, offset, seq);
            cuts.send(cut).expect("cut");
            finished.blocking_recv().expect("the round ends")
        };
        sink.sent.store(true, Ordering::SeqCst);
        assert_eq!(round_at(9), Ok(()));
        assert_eq!(broker.commits.load(Ordering::SeqCst), 1);
        // Idle: no offsets go with the round, whatever the group did meanwhile.
        sink.move_group.store(true, Ordering::SeqCst);
        assert_eq!(round_at(9), Ok(()));
        assert_eq!(broker.commits.load(Ordering::SeqCst), 1, "no offsets committed");
        // Records sent, nothing moved, the group gone on: refused.
        sink.sent.store(true, Ordering::SeqCst);
        sink.move_group.store(true, Ordering::SeqCst);
        let outcome = round_at(9);
        assert!(
            outcome.as_ref().is_err_and(|e| e.contains("ILLEGAL_GENERATION")),
            "{outcome:?}"
        );
        assert_eq!(broker.aborts.load(Ordering::SeqCst), 1);
        rounds.leave(member);
        drop(cuts);
        thread.join().expect("committer");
    }

    /// Member `member`'s cut number `seq` for the round asked for now, at `offset` of
    /// `in[0]`, writing nothing; the round's outcome comes on the receiver.
    fn cut_for_a_round(
        rounds: &Rounds,
        member: u64,
        offset: i64,
        seq: u64,
    ) -> (Cut, tokio::sync::oneshot::Receiver<std::result::Result<(), String>>) {
        let round = rounds.request();
        let (done, finished) = tokio::sync::oneshot::channel();
        let cut = Cut {
            partition: 0,
            positions: vec![(Arc::from("in"), offset)],
            stream_time: None,
            clocks: Vec::new(),
            writes: Vec::new(),
            acks: Vec::new(),
            ticket: Some(Ticket::without_gate(member, round, done)),
            seq,
            written: Arc::default(),
            stored: false,
            settled: false,
        };
        (cut, finished)
    }

    /// A sink whose flush always fails with a failure of the producer's own.
    #[derive(Default)]
    struct Unacknowledged {
        /// Whether the open transaction holds records: each round's do, by its flush.
        sent: AtomicBool,
    }

    impl Sink for Unacknowledged {
        fn enqueue(&self, _: OutRecord) -> std::result::Result<(), SinkError> {
            self.sent.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn flush(&self) -> std::result::Result<(), FlushError> {
            self.sent.store(true, Ordering::SeqCst);
            Err(FlushError::other("Local: Message timed out"))
        }
        fn changelog_offset(&self, _: &str, _: i32) -> Option<i64> {
            Some(0)
        }
        fn take_sent(&self) -> bool {
            self.sent.swap(false, Ordering::SeqCst)
        }
    }

    /// Sends one cut a round for `rounds` rounds (or until the worker fails); the metrics.
    fn rounds_against(sink: Arc<dyn Sink>, broker: Broker, count: i64) -> Arc<Metrics> {
        let broker = Arc::new(broker);
        let rounds = Arc::new(Rounds::default());
        let (member, _) = rounds.join();
        let (cuts, cut_rx) = mpsc::channel();
        let metrics = Arc::new(Metrics::default());
        let committer = Committer {
            sink,
            metrics: Arc::clone(&metrics),
            errors: Arc::new(ProductionErrors::new(OnError::Fail, "dlq")),
        };
        let thread = {
            let rounds = Arc::clone(&rounds);
            let broker = Arc::clone(&broker) as Arc<dyn Transactions>;
            std::thread::spawn(move || run_rounds(cut_rx, committer, broker, rounds, std::time::Duration::ZERO))
        };
        for offset in 0..count {
            if metrics.failed() {
                break;
            }
            let seq = u64::try_from(offset + 1).unwrap_or_default();
            let (cut, finished) = cut_for_a_round(&rounds, member, offset, seq);
            cuts.send(cut).expect("cut");
            let _ = finished.blocking_recv();
        }
        rounds.leave(member);
        drop(cuts);
        thread.join().expect("committer");
        metrics
    }

    /// A cut of a task dropped meanwhile (killed, lost) is not written: its stores may be
    /// restored by the partition's next owner on this worker, and the cut's older values
    /// must not land on top.
    #[test]
    fn a_dropped_tasks_cut_is_never_written() {
        let (sink, _) = held_open();
        let metrics = Metrics::default();
        let (live, dropped) = (Arc::new(Written::default()), Arc::new(Written::default()));
        let (mine, theirs) = (Arc::new(MemoryStore::default()), Arc::new(MemoryStore::default()));
        dropped.close();
        let mut batch = vec![
            cut_to(&live, 0, 3, &[&mine], b"1"),
            cut_to(&dropped, 0, 3, &[&theirs], b"2"),
        ];
        write_stores(&mut batch, &*sink, &metrics).expect("written");
        assert_eq!(mine.get(b"k").expect("get"), Some(b"1".to_vec()));
        assert_eq!(
            theirs.get(b"k").expect("get"),
            None,
            "the dropped task's cut is not written"
        );
        assert_eq!(theirs.checkpoint().expect("checkpoint").changelog_offset, None);
        assert!(batch[0].stored && !batch[1].stored);
    }

    /// A cut of `written`'s task at input offset `offset` of partition `partition`, writing
    /// `value` under `k` to each of `stores`.
    fn cut_to(written: &Arc<Written>, partition: i32, offset: i64, stores: &[&Arc<MemoryStore>], value: &[u8]) -> Cut {
        Cut {
            partition,
            positions: vec![(Arc::from("in"), offset)],
            stream_time: None,
            clocks: Vec::new(),
            writes: stores
                .iter()
                .map(|store| TableWrite {
                    changelog: Arc::from("changelog"),
                    store: Arc::clone(store) as Arc<dyn StateStore>,
                    entries: vec![(b"k".to_vec(), Some(value.to_vec()))],
                })
                .collect(),
            acks: Vec::new(),
            ticket: None,
            seq: 1,
            written: Arc::clone(written),
            stored: false,
            settled: false,
        }
    }

    /// The test driver's kill between a cut's store writes: the stores before it are
    /// written with the cut's position, the rest keep theirs, the cut is not stored, and
    /// the task is dropped there (its next cut is not written either).
    #[test]
    fn a_kill_between_store_writes_leaves_the_rest_unwritten() {
        let (sink, _) = held_open();
        let metrics = Metrics::default();
        let task = Arc::new(Written::default());
        let stores = [0, 1, 2].map(|_| Arc::new(MemoryStore::default()));
        let all: Vec<&Arc<MemoryStore>> = stores.iter().collect();
        let mut first = vec![cut_to(&task, 0, 3, &all, b"1")];
        write_stores(&mut first, &*sink, &metrics).expect("written");
        assert!(first[0].stored);
        task.kill_during_next_write(1);
        let mut torn = vec![cut_to(&task, 0, 7, &all, b"2"), cut_to(&task, 0, 9, &all, b"3")];
        write_stores(&mut torn, &*sink, &metrics).expect("written");
        assert_eq!(stores[0].get(b"k").expect("get"), Some(b"2".to_vec()));
        assert_eq!(stores[1].get(b"k").expect("get"), Some(b"1".to_vec()));
        assert_eq!(stores[2].get(b"k").expect("get"), Some(b"1".to_vec()));
        let positions: Vec<_> = stores
            .iter()
            .map(|s| s.checkpoint().expect("checkpoint").source("in"))
            .collect();
        assert_eq!(positions, vec![Some(7), Some(3), Some(3)]);
        assert!(
            !torn[0].stored && !torn[1].stored,
            "neither the torn cut nor the next is stored"
        );
        assert!(!task.cancel_kill(), "the kill happened");
    }

    /// Records the offsets committed.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<(String, i32, i64)>>);

    impl OffsetCommit for Recorded {
        fn commit(&self, offsets: &[SourceOffset]) -> std::result::Result<(), String> {
            let mut recorded = self.0.lock().expect("recorded");
            recorded.extend(offsets.iter().map(|o| (o.topic.clone(), o.partition, o.next)));
            Ok(())
        }
    }

    /// At-least-once commits the offsets of the cuts written to their stores only: a cut
    /// not written (its task dropped, or killed while writing) commits nothing, even after a
    /// written cut of the same partition in the same batch.
    #[test]
    fn only_the_offsets_of_stored_cuts_are_committed() {
        let (sink, _) = held_open();
        let committer = Committer {
            sink,
            metrics: Arc::new(Metrics::default()),
            errors: Arc::new(ProductionErrors::new(OnError::Fail, "dlq")),
        };
        let (live, torn) = (Arc::new(Written::default()), Arc::new(Written::default()));
        let (a, b) = (Arc::new(MemoryStore::default()), Arc::new(MemoryStore::default()));
        let mut batch = vec![
            cut_to(&live, 0, 3, &[&a], b"1"),
            cut_to(&torn, 1, 5, &[&b], b"1"),
            cut_to(&live, 0, 8, &[&a], b"2"),
        ];
        // Partition 1's task is killed once its first cut's (only) store is written, before
        // anything else of it; partition 0's task goes on.
        torn.kill_during_next_write(1);
        batch.push(cut_to(&torn, 1, 6, &[&b], b"2"));
        let recorded = Recorded::default();
        let mut committed = Committed::new();
        commit_batch(&mut batch, &committer, &recorded, &mut committed).expect("committed");
        let offsets = recorded.0.lock().expect("recorded").clone();
        assert_eq!(offsets, vec![("in".to_string(), 0, 9)], "partition 1 commits nothing");
        assert_eq!(b.checkpoint().expect("checkpoint").source("in"), Some(5));
    }

    /// A round that aborts for the same cause again and again gives up on the third. The
    /// transaction begun after that abort, empty, is aborted as the worker stops, and not
    /// counted: three aborts.
    #[test]
    fn the_same_cause_three_times_in_a_row_stops_the_worker() {
        let metrics = rounds_against(Arc::new(Unacknowledged::default()), Broker::default(), 10);
        let fatal = metrics.fatal().unwrap_or_default();
        assert!(fatal.contains("3 transactions in a row aborted"), "{fatal}");
        assert!(fatal.contains("Message timed out"), "{fatal}");
        assert_eq!(metrics.aborts.load(Ordering::SeqCst), 3, "each abort counted once");
    }

    /// Rebalances abort rounds as often as they come, without giving up.
    #[test]
    fn rounds_the_group_undoes_never_stop_the_worker() {
        let (sink, _) = held_open();
        let broker = Broker {
            always_moved: true,
            ..Broker::default()
        };
        let metrics = rounds_against(sink, broker, 6);
        assert_eq!(metrics.fatal(), None);
        assert_eq!(metrics.aborts.load(Ordering::SeqCst), 6);
    }

    /// A [`HeldFlush`] whose flushes are never held (its release always open).
    fn held_open() -> (Arc<dyn Sink>, mpsc::Receiver<()>) {
        let (begun_tx, begun) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        for _ in 0..64 {
            let _ = release.send(());
        }
        let sink = Arc::new(HeldFlush {
            begun: Mutex::new(begun_tx),
            release: Mutex::new(release_rx),
        });
        (sink, begun)
    }
}

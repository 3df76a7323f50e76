//! The commit point (ARCHITECTURE.md §1). Partition tasks hand over cuts; the committer
//! makes each durable in the order that gives at-least-once:
//! 1. flush the producer: every output and changelog record of the cut is acknowledged;
//! 2. write the store batch with the changelog and source offsets (one RocksDB write batch);
//! 3. commit the source offsets to the group.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use super::sink::Sink;
use crate::metrics::Metrics;
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
}

/// Commits source offsets to the consumer group.
pub(crate) trait OffsetCommit: Send + Sync + 'static {
    fn commit(&self, offsets: &[(String, i32, i64)]) -> Result<(), String>;
}

/// Runs the committer on the calling thread until every sender is gone.
pub(crate) fn run(cuts: Receiver<Cut>, sink: Arc<dyn Sink>, offsets: Arc<dyn OffsetCommit>, metrics: Arc<Metrics>) {
    let mut committed = Committed::new();
    while let Ok(first) = cuts.recv() {
        let mut batch = vec![first];
        batch.extend(cuts.try_iter());
        let outcome = commit_batch(&mut batch, &*sink, &*offsets, &metrics, &mut committed);
        for cut in batch {
            for ack in cut.acks {
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
    if let Err(error) = sink.flush() {
        let error = format!("records were not acknowledged by the broker, offsets not committed: {error}");
        metrics.fail(error.clone());
        return Err(error);
    }
    // 2. Store batches, each with its checkpoint.
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
    }
    // 3. Source offsets.
    let mut latest: HashMap<(String, i32), i64> = HashMap::new();
    for cut in batch.iter() {
        for (topic, offset) in &cut.positions {
            let next = offset + 1;
            let slot = latest.entry((topic.to_string(), cut.partition)).or_insert(next);
            *slot = (*slot).max(next);
        }
    }
    latest.retain(|partition, offset| committed.get(partition) != Some(offset));
    if latest.is_empty() {
        return Ok(());
    }
    let list: Vec<(String, i32, i64)> = latest.iter().map(|((t, p), o)| (t.clone(), *p, *o)).collect();
    match offsets.commit(&list) {
        Ok(()) => {
            metrics.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            committed.extend(latest);
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

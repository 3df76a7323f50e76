//! The commit point (ARCHITECTURE.md §1). Partition tasks hand over cuts; the committer
//! makes each durable in the order that gives at-least-once:
//! 1. flush the producer: every output and changelog record of the cut is acknowledged;
//! 2. write the store batch with the changelog and source offsets (one RocksDB write batch);
//! 3. commit the source offsets to the group.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use crate::store::{Checkpoint, StateStore};
use crate::worker::metrics::Metrics;
use crate::worker::task::Sink;

/// Signals that a cut is durable (`true`) or could not be made so (`false`).
pub(crate) type Ack = Sender<bool>;

/// Changes of one table partition since the last cut.
pub(crate) struct TableWrite {
    pub changelog: Arc<str>,
    pub store: Arc<dyn StateStore>,
    pub entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// One partition's state at a record boundary.
pub(crate) struct Cut {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The next offset to read: everything before it is processed. `None`: nothing yet.
    pub next_offset: Option<i64>,
    pub writes: Vec<TableWrite>,
    pub ack: Option<Ack>,
}

/// Commits source offsets to the consumer group.
pub(crate) trait OffsetCommit: Send + Sync + 'static {
    fn commit(&self, offsets: &[(String, i32, i64)]) -> Result<(), String>;
}

/// Runs the committer on the calling thread until every sender is gone.
pub(crate) fn run(cuts: Receiver<Cut>, sink: Arc<dyn Sink>, offsets: Arc<dyn OffsetCommit>, metrics: Arc<Metrics>) {
    while let Ok(first) = cuts.recv() {
        let mut batch = vec![first];
        batch.extend(cuts.try_iter());
        let ok = commit_batch(&mut batch, &*sink, &*offsets, &metrics);
        for cut in batch {
            if let Some(ack) = cut.ack {
                let _ = ack.send(ok);
            }
        }
    }
}

fn commit_batch(batch: &mut [Cut], sink: &dyn Sink, offsets: &dyn OffsetCommit, metrics: &Metrics) -> bool {
    if metrics.fatal().is_some() {
        return false;
    }
    // 1. Every record sent so far, including this batch's changelog records, is acknowledged.
    if let Err(error) = sink.flush() {
        metrics.fail(format!(
            "records were not acknowledged by the broker, offsets not committed: {error}"
        ));
        return false;
    }
    // 2. Store batches, each with its checkpoint.
    for cut in batch.iter_mut() {
        let source_offset = cut.next_offset.map(|next| next - 1);
        for write in cut.writes.drain(..) {
            let checkpoint = Checkpoint {
                changelog_offset: sink.changelog_offset(&write.changelog, cut.partition),
                source_offset,
            };
            if let Err(error) = write.store.write(&write.entries, checkpoint) {
                metrics.fail(format!("cannot write the store of {}: {error}", write.changelog));
                return false;
            }
        }
    }
    // 3. Source offsets.
    let mut latest: HashMap<(String, i32), i64> = HashMap::new();
    for cut in batch.iter() {
        if let Some(next) = cut.next_offset {
            let slot = latest.entry((cut.topic.to_string(), cut.partition)).or_insert(next);
            *slot = (*slot).max(next);
        }
    }
    if latest.is_empty() {
        return true;
    }
    let list: Vec<(String, i32, i64)> = latest.into_iter().map(|((t, p), o)| (t, p, o)).collect();
    match offsets.commit(&list) {
        Ok(()) => {
            metrics.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            true
        }
        Err(error) => {
            // The stores hold the state and its source offsets: on the next assignment the
            // worker resumes from there, so nothing is counted twice.
            tracing::warn!("offset commit failed (will resume from the stores' checkpoints): {error}");
            false
        }
    }
}

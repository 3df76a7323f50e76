//! Restores off the poll thread. An assigned partition with tables is paused while this
//! thread reads its changelogs into its stores; the poll thread keeps polling, so the worker
//! takes part in the next rebalance at once instead of after the restore, and resumes the
//! partition when its restore is done (Kafka Streams restores the same way).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::changelog::Restorer;
use crate::store::StateStore;
use crate::worker::metrics::Metrics;
use crate::{Error, Result};

/// The stores of one partition to restore.
pub(crate) struct RestoreJob {
    pub topic: String,
    pub partition: i32,
    /// Each table's store and changelog topic.
    pub tables: Vec<(Arc<dyn StateStore>, Arc<str>)>,
    /// Changelog records whose source offset is at or past this come from uncommitted input.
    pub skip_from: Option<i64>,
    pub progress: Arc<RestoreProgress>,
}

/// How a restore stands, shared by the poll thread and the restore thread.
#[derive(Default)]
pub(crate) struct RestoreProgress {
    cancelled: AtomicBool,
    started: AtomicBool,
    outcome: Mutex<Option<std::result::Result<(), String>>>,
    finished: Condvar,
}

impl RestoreProgress {
    /// The partition was revoked: stop at the next record (what is restored so far stays,
    /// with its checkpoint).
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_cancelled(&self) -> &AtomicBool {
        &self.cancelled
    }

    /// `None` while restoring; then whether the restore succeeded.
    pub(crate) fn outcome(&self) -> Option<std::result::Result<(), String>> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until the restore thread has let go of the stores (at once when it never took
    /// them up).
    pub(crate) fn wait_released(&self, timeout: Duration) {
        if !self.started.load(Ordering::Relaxed) {
            return;
        }
        let outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .finished
            .wait_timeout_while(outcome, timeout, |outcome| outcome.is_none());
    }

    fn finish(&self, outcome: std::result::Result<(), String>) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        self.finished.notify_all();
    }
}

/// Starts the restore thread; it ends when the returned sender is dropped.
pub(crate) fn spawn(restorer: Restorer, metrics: Arc<Metrics>) -> Result<Sender<RestoreJob>> {
    let (jobs, inbox) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("restore".into())
        .spawn(move || run(&inbox, &restorer, &metrics))
        .map_err(|e| Error::io("starting the restore thread", e))?;
    Ok(jobs)
}

fn run(jobs: &Receiver<RestoreJob>, restorer: &Restorer, metrics: &Metrics) {
    for job in jobs {
        let progress = Arc::clone(&job.progress);
        if progress.is_cancelled().load(Ordering::Relaxed) {
            progress.finish(Ok(()));
            continue;
        }
        progress.started.store(true, Ordering::Relaxed);
        let outcome = restore(job, restorer, metrics);
        // The job (and its stores) is dropped by now: a waiting revoke may close them.
        progress.finish(outcome);
    }
}

fn restore(job: RestoreJob, restorer: &Restorer, metrics: &Metrics) -> std::result::Result<(), String> {
    for (store, changelog) in &job.tables {
        if job.progress.is_cancelled().load(Ordering::Relaxed) {
            break;
        }
        let began = Instant::now();
        let restored = restorer
            .restore(
                &**store,
                changelog,
                job.partition,
                job.skip_from,
                job.progress.is_cancelled(),
            )
            .map_err(|e| format!("cannot restore {changelog}[{}] for {}: {e}", job.partition, job.topic))?;
        metrics.restored.fetch_add(restored, Ordering::Relaxed);
        let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        metrics.restore_micros.fetch_add(micros, Ordering::Relaxed);
    }
    Ok(())
}

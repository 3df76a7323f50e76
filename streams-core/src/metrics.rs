//! Counters of a worker, and the once-a-second summary that `-l info` shows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::message::Message;

/// What a worker has done so far. Read it from [`crate::WorkerHandle::metrics`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// Records handed to agents.
    pub records: AtomicU64,
    /// Records copied to dead-letter topics.
    pub dead_lettered: AtomicU64,
    /// Records a windowed aggregation dropped because every window they belong to had
    /// closed (stream time was past its end and grace period).
    pub late: AtomicU64,
    /// Records agents sent to topics.
    pub sends: AtomicU64,
    /// Table updates.
    pub table_updates: AtomicU64,
    /// Changelog records restored into stores.
    pub restored: AtomicU64,
    /// Time spent restoring stores, in microseconds.
    pub restore_micros: AtomicU64,
    /// Commits of source offsets (under exactly-once: transactions committed).
    pub commits: AtomicU64,
    /// Transactions aborted (exactly-once): the partitions started again from their last
    /// committed state.
    pub aborts: AtomicU64,
    /// Partitions assigned to this worker right now (each restored and running).
    pub assigned: AtomicU64,
    /// Assignments the group has given this worker so far (one per rebalance that gave it
    /// partitions).
    pub assignments: AtomicU64,
    /// Partitions lost (the group went on without this worker, e.g. its session expired)
    /// and dropped without a commit.
    pub lost: AtomicU64,
    /// Errors the Kafka clients reported (an unreachable broker, a failed request): each is
    /// logged at warn, and the clients retry.
    pub client_errors: AtomicU64,
    member_id: Mutex<Option<String>>,
    want_record_sample: AtomicBool,
    want_table_sample: AtomicBool,
    samples: Mutex<Vec<String>>,
    fatal: Mutex<Option<String>>,
    failed: AtomicBool,
}

fn text(bytes: &[u8], limit: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.len() > limit {
        let mut end = limit;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.into_owned()
    }
}

/// Clears a flag that is set once a second; reading before swapping keeps the cache line
/// shared between the threads that check it for every record.
fn take_flag(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed) && flag.swap(false, Ordering::Relaxed)
}

impl Metrics {
    /// Logs a record a task is given (at debug level, or as the once-a-second sample).
    /// Counting is the task's: see `TaskContext::report`.
    pub(crate) fn record_in(&self, task: &str, topic: &str, partition: i32, message: &Message) {
        let show = || {
            format!(
                "{task} <- {topic}[{partition}]@{}: {}",
                message.offset(),
                text(message.payload().unwrap_or_default(), 120)
            )
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!("{}", show());
        }
        if take_flag(&self.want_record_sample) {
            self.push_sample(show());
        }
    }

    /// Logs a table update (at debug level, or as the once-a-second sample).
    pub(crate) fn table_update(&self, table: &str, key: &[u8], value: Option<&[u8]>) {
        let show = || {
            let value = value.map(|v| text(v, 60)).unwrap_or_else(|| "(deleted)".into());
            format!("{table}[{}] = {value}", text(key, 60))
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!("{}", show());
        }
        if take_flag(&self.want_table_sample) {
            self.push_sample(show());
        }
    }

    fn push_sample(&self, sample: String) {
        if let Ok(mut samples) = self.samples.lock() {
            samples.push(sample);
        }
    }

    /// A failure the worker cannot go on from (a record the broker never acknowledged).
    pub(crate) fn fail(&self, error: String) {
        tracing::error!("{error}");
        if let Ok(mut fatal) = self.fatal.lock() {
            fatal.get_or_insert(error);
        }
        self.failed.store(true, Ordering::Relaxed);
    }

    /// The worker's member id in its consumer group, as of its last assignment.
    pub fn member_id(&self) -> Option<String> {
        self.member_id.lock().ok().and_then(|m| m.clone())
    }

    pub(crate) fn set_member_id(&self, id: Option<String>) {
        if let Ok(mut member) = self.member_id.lock() {
            *member = id;
        }
    }

    /// Counts an error a Kafka client reported, and logs it at warn.
    pub(crate) fn client_error(&self, client: &str, error: &dyn std::fmt::Display, reason: &str) {
        self.client_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("{client}: {error}: {reason}");
    }

    /// Whether a failure stopped the worker.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// The failure that stopped the worker, if any.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([
            ("records", self.records.load(Ordering::Relaxed)),
            ("sends", self.sends.load(Ordering::Relaxed)),
            ("table updates", self.table_updates.load(Ordering::Relaxed)),
            ("dead-lettered", self.dead_lettered.load(Ordering::Relaxed)),
            ("late records dropped", self.late.load(Ordering::Relaxed)),
        ])
    }

    /// Logs, once a second, what changed: counts per second and a sample record and table
    /// update (every record is logged at debug level instead).
    pub(crate) async fn report_every_second(self: std::sync::Arc<Self>) {
        let mut last = self.snapshot();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.tick().await;
        loop {
            self.want_record_sample.store(true, Ordering::Relaxed);
            self.want_table_sample.store(true, Ordering::Relaxed);
            tick.tick().await;
            let now = self.snapshot();
            let changes: Vec<String> = now
                .iter()
                .filter_map(|(name, value)| {
                    let delta = value - last.get(name).copied().unwrap_or(0);
                    (delta > 0).then(|| format!("{delta} {name}/s"))
                })
                .collect();
            last = now;
            let samples = self
                .samples
                .lock()
                .map(|mut s| std::mem::take(&mut *s))
                .unwrap_or_default();
            if !changes.is_empty() {
                tracing::info!("{}", changes.join(", "));
                for sample in samples {
                    tracing::info!("  {sample}");
                }
            }
        }
    }
}

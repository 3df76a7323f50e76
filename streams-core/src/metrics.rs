//! Counters of a worker, the once-a-second summary that `-l info` shows, and the same in
//! Prometheus' text format (the web server's `/metrics`, made with `prometheus-client`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::TypedMetric;

use crate::message::Message;

/// A topic partition, as the labels of a metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub(crate) fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
        }
    }
}

/// Metrics per topic partition, and latencies, kept as `prometheus-client` metrics.
#[derive(Debug)]
pub(crate) struct Families {
    /// Records handed to tasks, by source partition (added at each task's report).
    pub records_in: Family<TopicPartition, Counter>,
    /// Records the broker acknowledged, by the partition they went to (changelogs too).
    pub records_out: Family<TopicPartition, Counter>,
    /// Records on the broker past the consumer's position, by assigned partition.
    pub lag: Family<TopicPartition, Gauge>,
    /// Changelog records restored into stores, by changelog partition.
    pub restored: Family<TopicPartition, Counter>,
    /// Changelog records still to restore, by changelog partition (0 once restored).
    pub restore_remaining: Family<TopicPartition, Gauge>,
    /// How long committing source offsets (or a transaction) took.
    pub commit_seconds: Histogram,
    /// How long waiting for the broker to acknowledge what was sent took, per commit.
    pub flush_seconds: Histogram,
}

/// Runs `work` and observes how long it took, in seconds, in `histogram`.
pub(crate) fn timed<T>(histogram: &Histogram, work: impl FnOnce() -> T) -> T {
    let began = std::time::Instant::now();
    let out = work();
    histogram.observe(began.elapsed().as_secs_f64());
    out
}

impl Default for Families {
    fn default() -> Self {
        Self {
            records_in: Family::default(),
            records_out: Family::default(),
            lag: Family::default(),
            restored: Family::default(),
            restore_remaining: Family::default(),
            // 0.25 ms to 8 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            flush_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
        }
    }
}

/// The worker's counters and gauges that are plain atomics, encoded at each scrape.
#[derive(Debug)]
struct Totals(Vec<(&'static str, &'static str, u64, bool)>);

impl prometheus_client::collector::Collector for Totals {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        for &(name, help, value, counter) in &self.0 {
            if counter {
                let metric = ConstCounter::new(value);
                metric.encode(encoder.encode_descriptor(name, help, None, ConstCounter::<u64>::TYPE)?)?;
            } else {
                let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                metric.encode(encoder.encode_descriptor(name, help, None, ConstGauge::<i64>::TYPE)?)?;
            }
        }
        Ok(())
    }
}

/// What a worker has done so far. Read it from [`crate::WorkerHandle::metrics`], or in
/// Prometheus' text format from [`Metrics::prometheus`] (the web server's `/metrics`).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Records handed to agents.
    pub records: AtomicU64,
    /// Records copied to dead-letter topics.
    pub dead_lettered: AtomicU64,
    /// Records that failed and were dropped, as the app chose (`OnError::Continue`).
    pub skipped: AtomicU64,
    /// Records a windowed aggregation dropped because every window they belong to had
    /// closed (stream time was past its end and grace period), and records a stream–stream
    /// join did not keep in its buffer because they were older than it keeps (they were
    /// still joined with what the other side holds, as in Kafka Streams).
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
    /// Transactions aborted (exactly-once): after a failed round the partitions start again
    /// from their last committed state; a worker that failed aborts its open one as it stops
    /// (counted when it holds records).
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
    /// Reads of table keys answered from the table's cache.
    pub cache_hits: AtomicU64,
    /// Reads of table keys that went to the store.
    pub cache_misses: AtomicU64,
    /// Entries dropped from table caches to keep them within their budget.
    pub cache_evictions: AtomicU64,
    /// The largest estimated size of one table partition's cache seen at a commit point, in
    /// bytes (see `App::table_cache_bytes`).
    pub cache_peak_bytes: AtomicU64,
    /// Rebalances that took partitions from this worker (revocations and losses), counted once
    /// the worker has released them (it rejoins its group next, unless it is stopping).
    pub revocations: AtomicU64,
    /// What the worker's RocksDB stores hold in their shared memory (block cache and
    /// memtables), in bytes, read once a second.
    pub state_memory_bytes: AtomicU64,
    /// The stores' shared memory budget, in bytes (`--state-memory`).
    pub state_memory_limit_bytes: AtomicU64,
    /// Standby copies of other workers' table partitions kept here (`--standby-replicas`).
    pub standby_partitions: AtomicU64,
    /// Changelog records applied to standby copies.
    pub standby_records: AtomicU64,
    /// Changelog records the standby copies are behind their changelogs' ends, as of their
    /// last pass (a change of input the group has not committed yet waits until it has).
    pub standby_lag: AtomicU64,
    /// Passes over the standby copies completed (one every half second).
    pub standby_passes: AtomicU64,
    pub(crate) families: Families,
    member_id: Mutex<Option<String>>,
    want_record_sample: AtomicBool,
    want_table_sample: AtomicBool,
    samples: Mutex<Vec<String>>,
    fatal: Mutex<Option<String>>,
    failed: AtomicBool,
    /// Wakes what waits for a failure ([`Metrics::failure`]).
    failure: tokio::sync::Notify,
    /// Told of a failure (see [`Metrics::on_failure`]).
    on_failure: FailureHook,
}

/// Who to tell when the worker fails: the poll thread's wake.
#[derive(Default)]
struct FailureHook(std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>);

impl std::fmt::Debug for FailureHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "FailureHook(set)"
        } else {
            "FailureHook"
        })
    }
}

fn text(bytes: &[u8], limit: usize) -> String {
    shorten(String::from_utf8_lossy(bytes).into_owned(), limit)
}

/// `s` cut to at most `limit` bytes (at a character's boundary), `…` marking a cut.
fn shorten(mut s: String, limit: usize) -> String {
    if s.len() > limit {
        let mut end = limit;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
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
    pub(crate) fn table_update(&self, table: &str, show_key: fn(&[u8]) -> String, key: &[u8], value: Option<&[u8]>) {
        let show = || {
            let value = value.map(|v| text(v, 60)).unwrap_or_else(|| "(deleted)".into());
            format!("{table}[{}] = {value}", shorten(show_key(key), 60))
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
        self.failure.notify_waiters();
        if let Some(tell) = self.on_failure.0.get() {
            tell();
        }
    }

    /// Calls `tell` after each failure (once set, for good): the worker's poll thread stops
    /// at once rather than after its wait.
    pub(crate) fn on_failure(&self, tell: impl Fn() + Send + Sync + 'static) {
        if self.on_failure.0.set(Box::new(tell)).is_err() {
            tracing::debug!("metrics: who to tell of a failure was set already");
        }
    }

    /// Resolves once the worker has failed (at once if it has).
    pub(crate) async fn failure(&self) {
        loop {
            // Listening before looking: a failure in between is not missed.
            let notified = self.failure.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.failed() {
                return;
            }
            notified.await;
        }
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

    /// Everything in Prometheus' text format (OpenMetrics), every name prefixed `streams_`:
    /// records in and out per topic partition, consumer lag per partition, commit and flush
    /// latency histograms, restore progress per changelog partition, and the worker's
    /// totals (dead letters, late records, table cache hits and evictions, rebalances,
    /// assigned partitions, ...).
    ///
    /// ```
    /// let metrics = streams_core::Metrics::default();
    /// let text = metrics.prometheus();
    /// assert!(text.contains("# TYPE streams_dead_letters counter"));
    /// assert!(text.contains("streams_dead_letters_total 0"));
    /// assert!(text.ends_with("# EOF\n"));
    /// ```
    pub fn prometheus(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::with_prefix("streams");
        let f = &self.families;
        registry.register(
            "records_in",
            "Records handed to agents and pipelines, by source topic partition",
            f.records_in.clone(),
        );
        registry.register(
            "records_out",
            "Records the broker acknowledged, by topic partition (changelogs included)",
            f.records_out.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records on the broker past the consumer's position, by assigned topic partition",
            f.lag.clone(),
        );
        registry.register(
            "restored_records",
            "Changelog records restored into stores, by changelog partition",
            f.restored.clone(),
        );
        registry.register(
            "restore_remaining_records",
            "Changelog records still to restore, by changelog partition",
            f.restore_remaining.clone(),
        );
        registry.register(
            "commit_seconds",
            "Time to commit source offsets (exactly-once: the transaction)",
            f.commit_seconds.clone(),
        );
        registry.register(
            "flush_seconds",
            "Time to have every record sent acknowledged, per commit",
            f.flush_seconds.clone(),
        );
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        registry.register_collector(Box::new(Totals(vec![
            ("records", "Records processed", load(&self.records), true),
            ("sends", "Records agents sent", load(&self.sends), true),
            ("table_updates", "Table updates", load(&self.table_updates), true),
            (
                "dead_letters",
                "Records copied to dead-letter topics",
                load(&self.dead_lettered),
                true,
            ),
            (
                "skipped_records",
                "Records that failed and were dropped, as the app chose (OnError::Continue)",
                load(&self.skipped),
                true,
            ),
            (
                "late_records",
                "Records dropped because every window they belong to had closed (joins: not buffered)",
                load(&self.late),
                true,
            ),
            (
                "commits",
                "Commits of source offsets (or transactions)",
                load(&self.commits),
                true,
            ),
            ("aborts", "Transactions aborted", load(&self.aborts), true),
            (
                "table_cache_hits",
                "Table reads answered by the cache",
                load(&self.cache_hits),
                true,
            ),
            (
                "table_cache_misses",
                "Table reads that went to the store",
                load(&self.cache_misses),
                true,
            ),
            (
                "table_cache_evictions",
                "Entries dropped from table caches to stay within budget",
                load(&self.cache_evictions),
                true,
            ),
            (
                "table_cache_peak_bytes",
                "The largest table partition cache seen at a commit point, in bytes",
                load(&self.cache_peak_bytes),
                false,
            ),
            (
                "state_memory_bytes",
                "What the RocksDB stores hold in their shared memory (block cache and memtables), in bytes",
                load(&self.state_memory_bytes),
                false,
            ),
            (
                "state_memory_limit_bytes",
                "The RocksDB stores' shared memory budget (--state-memory), in bytes",
                load(&self.state_memory_limit_bytes),
                false,
            ),
            (
                "standby_partitions",
                "Standby copies of other workers' table partitions kept here (--standby-replicas)",
                load(&self.standby_partitions),
                false,
            ),
            (
                "standby_records",
                "Changelog records applied to standby copies",
                load(&self.standby_records),
                true,
            ),
            (
                "standby_lag_records",
                "Changelog records the standby copies are behind, as of their last pass",
                load(&self.standby_lag),
                false,
            ),
            (
                "standby_passes",
                "Passes over the standby copies completed",
                load(&self.standby_passes),
                true,
            ),
            (
                "rebalances",
                "Assignments the group gave this worker",
                load(&self.assignments),
                true,
            ),
            (
                "revocations",
                "Rebalances that took partitions from this worker",
                load(&self.revocations),
                true,
            ),
            (
                "lost_partitions",
                "Partitions lost to the group without a commit",
                load(&self.lost),
                true,
            ),
            (
                "client_errors",
                "Errors the Kafka clients reported",
                load(&self.client_errors),
                true,
            ),
            (
                "restore_seconds",
                "Time spent restoring stores, in whole seconds",
                load(&self.restore_micros) / 1_000_000,
                true,
            ),
            (
                "assigned_partitions",
                "Source partitions assigned, restored and processing",
                load(&self.assigned),
                false,
            ),
            (
                "failed",
                "1 once a failure stopped the worker",
                u64::from(self.failed()),
                false,
            ),
        ])));
        let mut text = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([
            ("records", self.records.load(Ordering::Relaxed)),
            ("sends", self.sends.load(Ordering::Relaxed)),
            ("table updates", self.table_updates.load(Ordering::Relaxed)),
            ("dead-lettered", self.dead_lettered.load(Ordering::Relaxed)),
            ("skipped", self.skipped.load(Ordering::Relaxed)),
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

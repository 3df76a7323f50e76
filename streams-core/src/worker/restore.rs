//! Restores off the poll thread. An assigned partition with tables is paused while a
//! restore thread reads its changelogs into its stores (the partitions of an assignment side
//! by side, on up to `--restore-threads` threads); the poll thread keeps polling, so the worker
//! takes part in the next rebalance at once instead of after the restore, and resumes the
//! partition when its restore is done (Kafka Streams restores the same way). The restore
//! also decides where the partition starts ([`crate::changelog::start_offsets`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::changelog::{self, ChangelogReader, Restored};
use crate::message::queue::Queue;
use crate::message::RawMessage;
use crate::metrics::Metrics;
use crate::store::StateStore;
use crate::task::TaskContext;
use crate::{Error, Result};

/// The stores of one partition to restore.
pub(crate) struct RestoreJob {
    pub topic: String,
    pub partition: i32,
    /// Each table's store and changelog topic.
    pub tables: Vec<(Arc<dyn StateStore>, Arc<str>)>,
    /// The task's sources with their committed offsets (`None`: nothing committed).
    pub committed: Vec<(String, Option<i64>)>,
    /// The task: changes to write again at its first cut go into its tables' caches.
    pub ctx: Arc<TaskContext>,
}

/// Where a restored partition starts: each source's offset, and whether that differs from
/// the offset it was assigned at (the committed offset, or its beginning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Starts {
    pub offsets: Vec<(String, i64)>,
    pub moved: bool,
}

/// How a restore stands, shared by the poll thread and the restore threads. It holds its job
/// until a restore thread takes it up, so that a job revoked while it waits for a thread
/// lets go of its stores at once.
pub(crate) struct RestoreProgress {
    cancelled: AtomicBool,
    job: Handoff<RestoreJob>,
    outcome: Mutex<Option<std::result::Result<Starts, String>>>,
    finished: Condvar,
}

impl RestoreProgress {
    /// The progress of `job`, which waits in it for a restore thread.
    pub(crate) fn of(job: RestoreJob) -> Arc<Self> {
        Arc::new(Self {
            cancelled: AtomicBool::new(false),
            job: Handoff::new(job),
            outcome: Mutex::new(None),
            finished: Condvar::new(),
        })
    }

    /// The partition was revoked: stop at the next record (what is restored so far stays,
    /// with its checkpoint); a job no thread has taken up yet is dropped, with its stores.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        if let Some(job) = self.job.withdraw() {
            drop(job);
            self.finish(Err("revoked before its restore".into()));
        }
    }

    pub(crate) fn is_cancelled(&self) -> &AtomicBool {
        &self.cancelled
    }

    /// `None` while restoring; then where the partition starts, or why it cannot.
    pub(crate) fn outcome(&self) -> Option<std::result::Result<Starts, String>> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until the restore thread has let go of the stores (at once when it never took
    /// them up).
    pub(crate) fn wait_released(&self, timeout: Duration) {
        if !self.job.taken_up() {
            return;
        }
        let outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        let waited = self
            .finished
            .wait_timeout_while(outcome, timeout, |outcome| outcome.is_none());
        let timed_out = match waited {
            Ok((_, result)) => result.timed_out(),
            Err(_) => true,
        };
        if timed_out {
            tracing::warn!(
                "a revoked partition's restore did not stop within {timeout:?}; its stores close when it does"
            );
        }
    }

    fn finish(&self, outcome: std::result::Result<Starts, String>) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        self.finished.notify_all();
    }
}

/// A value handed from one thread to another exactly once: taken up by the one, or withdrawn
/// (and dropped) by the other, never both. Whether it was taken up is known afterwards.
struct Handoff<T> {
    /// The value until it is taken up or withdrawn; whether it was taken up.
    slot: Mutex<(Option<T>, bool)>,
}

impl<T> Handoff<T> {
    fn new(value: T) -> Self {
        Self {
            slot: Mutex::new((Some(value), false)),
        }
    }

    /// The value, unless it was withdrawn first.
    fn take_up(&self) -> Option<T> {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        let value = slot.0.take();
        slot.1 |= value.is_some();
        value
    }

    /// The value, unless it was taken up first.
    fn withdraw(&self) -> Option<T> {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.1 {
            return None;
        }
        slot.0.take()
    }

    fn taken_up(&self) -> bool {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

/// How long the restore threads wait without a job before their restorers let go of their
/// consumers (made again by the next restore): an idle client still wakes every second in
/// librdkafka's threads. The partitions of one assignment come at once, well within it.
const QUIET: Duration = Duration::from_secs(10);

/// Starts the restore threads, one per restorer (each reads changelogs through consumers of
/// its own): they take the jobs in turn, so the partitions of an assignment restore side by
/// side, and end when the returned sender is dropped. After [`QUIET`] without a job, the
/// restorers not at work release their consumers. `finished` is called as each restore ends
/// (the poll thread's wait ends there, so that the partition resumes at once).
pub(crate) fn spawn(
    restorers: Vec<Restorer>,
    metrics: Arc<Metrics>,
    finished: impl Fn() + Send + Sync + 'static,
) -> Result<Sender<Arc<RestoreProgress>>> {
    let busy = Arc::new(Busy::default());
    pool(
        restorers,
        QUIET,
        move |progress: Arc<RestoreProgress>, restorer: &Restorer| {
            run(&progress, restorer, &metrics, &busy);
            finished();
        },
        Restorer::release_unused,
    )
}

/// Threads, one per `state`, that hand each job sent to the returned sender to `work` with
/// their state, whichever thread is free first; they end when the sender is dropped. When
/// no job came for `quiet`, every state is given to `idle` (those of threads at work too:
/// `idle` must leave a state in use alone).
fn pool<J, S, F, I>(states: Vec<S>, quiet: Duration, work: F, idle: I) -> Result<Sender<J>>
where
    J: Send + 'static,
    S: Send + Sync + 'static,
    F: Fn(J, &S) + Send + Sync + 'static,
    I: Fn(&S) + Send + Sync + 'static,
{
    use std::sync::mpsc::RecvTimeoutError;
    let (jobs, inbox) = std::sync::mpsc::channel::<J>();
    let inbox = Arc::new(Mutex::new(inbox));
    let (work, idle) = (Arc::new(work), Arc::new(idle));
    let states: Arc<[S]> = states.into();
    for n in 0..states.len() {
        let (inbox, work, idle, states) = (
            Arc::clone(&inbox),
            Arc::clone(&work),
            Arc::clone(&idle),
            Arc::clone(&states),
        );
        std::thread::Builder::new()
            .name(format!("restore-{n}"))
            .spawn(move || loop {
                // One thread waits for the next job while the others work (or wait for the
                // lock): the waiting one sees the quiet spells.
                let job = inbox.lock().unwrap_or_else(|p| p.into_inner()).recv_timeout(quiet);
                match job {
                    Ok(job) => work(job, &states[n]),
                    Err(RecvTimeoutError::Timeout) => states.iter().for_each(|state| idle(state)),
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|e| Error::io("starting a restore thread", e))?;
    }
    Ok(jobs)
}

/// The wall time during which any restore runs (`Metrics::restore_micros`): restores side by
/// side count once, and the time is added as each restore ends.
#[derive(Default)]
struct Busy {
    /// Restores running, and since when the time is not yet counted.
    running: Mutex<(usize, Option<Instant>)>,
}

impl Busy {
    /// Counts a restore as running until the returned guard is dropped (a panic included).
    fn enter<'a>(&'a self, metrics: &'a Metrics) -> Running<'a> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.0 == 0 {
            running.1 = Some(Instant::now());
        }
        running.0 += 1;
        Running { busy: self, metrics }
    }
}

/// A restore counted as running by [`Busy`].
struct Running<'a> {
    busy: &'a Busy,
    metrics: &'a Metrics,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut running = self.busy.running.lock().unwrap_or_else(|p| p.into_inner());
        running.0 = running.0.saturating_sub(1);
        if let Some(since) = running.1.take() {
            let micros = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.metrics.restore_micros.fetch_add(micros, Ordering::Relaxed);
        }
        if running.0 > 0 {
            running.1 = Some(Instant::now());
        }
    }
}

fn run(progress: &RestoreProgress, restorer: &Restorer, metrics: &Metrics, busy: &Busy) {
    let Some(job) = progress.job.take_up() else {
        // Revoked while it waited: `cancel` said so.
        return;
    };
    let outcome = {
        let _running = busy.enter(metrics);
        // A panic ends this restore (the partition's task cannot start), not the thread.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            restore(job, progress.is_cancelled(), restorer, metrics)
        }))
        .unwrap_or_else(|panic| Err(format!("the restore panicked: {}", crate::error::panic_text(&*panic))))
    };
    // The job (and its stores) is dropped by now: a waiting revoke may close them.
    progress.finish(outcome);
}

fn restore(
    job: RestoreJob,
    cancel: &AtomicBool,
    restorer: &Restorer,
    metrics: &Metrics,
) -> std::result::Result<Starts, String> {
    let Some((restoration, committed)) = restore_stores(
        &job.tables,
        &job.topic,
        job.partition,
        &job.committed,
        restorer,
        Quiet::No(cancel),
    )?
    else {
        return Err("revoked during its restore".into());
    };
    metrics.restored.fetch_add(restoration.applied, Ordering::Relaxed);
    if restoration.rebuilt {
        tracing::info!(
            "{}[{}]: the stores were ahead of the group's commit and cannot resume there (another worker's \
             changes came after them, or a crash between one commit's store writes left them at different \
             positions); rebuilt them from their changelogs, starting at the committed offsets",
            job.topic,
            job.partition
        );
    }
    job.ctx.restore_stream_time(restoration.stream_time);
    job.ctx.restore_clocks(&restoration.clocks);
    job.ctx.seed_clocks();
    for (index, entries) in restoration.restate.into_iter().enumerate() {
        job.ctx.restate(index, entries);
    }
    let moved = restoration
        .starts
        .iter()
        .zip(&committed)
        .any(|((_, start), (_, assigned))| start != assigned);
    Ok(Starts {
        offsets: restoration.starts,
        moved,
    })
}

/// How a restore shows itself: a task's restore logs and counts as one
/// (`restored_records`, a progress bar), a standby copy's pass stays quiet (it runs every
/// half second; its records count as `standby_records`).
#[derive(Clone, Copy)]
pub(crate) enum Quiet<'a> {
    /// A task's restore, stopped by the flag.
    No(&'a AtomicBool),
    /// A standby copy's pass, stopped by the flag.
    Standby(&'a AtomicBool),
}

impl<'a> Quiet<'a> {
    fn cancel(self) -> &'a AtomicBool {
        match self {
            Quiet::No(cancel) | Quiet::Standby(cancel) => cancel,
        }
    }
}

/// A task's stores restored: the restoration, with the committed offsets it went by.
pub(crate) type RestoredTask = (changelog::Restoration, Vec<(String, i64)>);

/// Brings the stores of one task's partition (`tables`: each table's store and changelog)
/// up to their changelogs' ends, as far as the group has committed the input behind them
/// (`committed`: each source with its committed offset, `None` when nothing is), and decides
/// where the partition starts. `None` when cancelled; what was applied stays, with its
/// checkpoint. Returns the restoration with the committed offsets it went by.
pub(crate) fn restore_stores(
    tables: &[(Arc<dyn StateStore>, Arc<str>)],
    topic: &str,
    partition: i32,
    committed_offsets: &[(String, Option<i64>)],
    restorer: &Restorer,
    quiet: Quiet<'_>,
) -> std::result::Result<Option<RestoredTask>, String> {
    let cancel = quiet.cancel();
    let failed = |e: Error| format!("cannot restore the tables of {topic}[{partition}]: {e}");
    // Where nothing is committed, the partition's first offset stands in (see `Committed`).
    let mut committed: Vec<(String, i64)> = Vec::with_capacity(committed_offsets.len());
    for (topic, offset) in committed_offsets {
        let offset = match offset {
            Some(offset) => *offset,
            None => match restorer.watermarks(topic, partition, cancel) {
                Some((low, _)) => low,
                None => return Ok(None),
            },
        };
        committed.push((topic.clone(), offset));
    }
    // A store whose checkpoint is past its changelog's end holds changes the changelog does
    // not: the changelog was made anew (`reset` deletes it). Neither its entries nor the
    // source positions it keeps can be trusted; Kafka Streams wipes such a store too.
    let mut wiped = false;
    for (store, changelog) in tables {
        let Some(offset) = store.checkpoint().map_err(failed)?.changelog_offset else {
            continue;
        };
        let Some((_, high)) = restorer.watermarks(changelog, partition, cancel) else {
            return Ok(None);
        };
        if offset >= high {
            tracing::warn!(
                "{changelog}[{partition}]: the store's checkpoint (offset {offset}) is past the changelog's end ({high}): \
                 the changelog was made anew; restoring the store from scratch"
            );
            wiped = true;
        }
    }
    // The task's stores go together: the source positions any of them keeps say where the
    // task starts.
    if wiped {
        for (store, _) in tables {
            store.clear().map_err(failed)?;
        }
    }
    let reader = KafkaReader { restorer, quiet };
    let restoration = changelog::restore_task(&reader, tables, partition, &committed).map_err(failed)?;
    Ok(restoration.map(|restoration| (restoration, committed)))
}

/// The worker's restorer as a [`ChangelogReader`], stopping when the partition is revoked.
struct KafkaReader<'a> {
    restorer: &'a Restorer,
    quiet: Quiet<'a>,
}

impl ChangelogReader for KafkaReader<'_> {
    fn restore(
        &self,
        store: &dyn StateStore,
        changelog: &str,
        partition: i32,
        committed: &changelog::Committed,
        agreed: Vec<(String, i64)>,
        probe: bool,
    ) -> Result<Option<Restored>> {
        let restored = match self.quiet {
            Quiet::No(cancel) => self
                .restorer
                .restore(store, changelog, partition, committed, agreed, probe, cancel)?,
            Quiet::Standby(cancel) => self
                .restorer
                .catch_up(store, changelog, partition, committed, agreed, probe, cancel)?,
        };
        Ok((!self.quiet.cancel().load(Ordering::Relaxed)).then_some(restored))
    }
}

/// Shows how a restore goes: a progress bar when stderr is a terminal, else a log line
/// (records restored / total and the rate) every two seconds.
struct Progress {
    label: String,
    total: u64,
    began: Instant,
    logged: Instant,
    /// Records seen so far (the position counts offsets, which a compacted log skips).
    seen: u64,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(topic: &str, partition: i32, total: u64) -> Self {
        use std::io::IsTerminal;
        let label = format!("{topic}[{partition}]");
        let bar = std::io::stderr().is_terminal().then(|| {
            // Restores side by side show one bar each, one under another.
            static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();
            let bar = BARS
                .get_or_init(indicatif::MultiProgress::new)
                .add(indicatif::ProgressBar::new(total));
            let style = indicatif::ProgressStyle::with_template(
                "restoring {msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)",
            );
            if let Ok(style) = style {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.clone());
            bar
        });
        Self {
            label,
            total,
            began: Instant::now(),
            logged: Instant::now(),
            seen: 0,
            bar,
        }
    }

    fn at(&mut self, position: u64) {
        // Every 1024 records: a clock read per record showed in a restore's profile.
        self.seen += 1;
        if !self.seen.is_multiple_of(1024) {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(position);
        } else if self.logged.elapsed() >= Duration::from_secs(2) {
            self.logged = Instant::now();
            let rate = position as f64 / self.began.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(
                "restoring {}: {position}/{} records ({rate:.0}/s)",
                self.label,
                self.total
            );
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Records a restore takes from its consumer at once, at most.
const RESTORE_BATCH: usize = 1024;

/// Reads changelog partitions into stores. One per restore thread (and one for the standby
/// copies); not a member of any group. Its consumer is made when a read needs it, and let go
/// of by [`Restorer::release_unused`]: by the restore threads after [`QUIET`] without a job,
/// by the standby thread while it keeps no copy.
pub(crate) struct Restorer {
    /// The consumer's settings.
    config: ClientConfig,
    /// The consumer, while there is one; locked while a read uses it.
    client: Mutex<Option<Client>>,
    /// Asks for partitions' ends as a read_uncommitted reader sees them (the high
    /// watermark; a read_committed reader is told the last stable offset). Shared by the
    /// worker's restorers (see [`Ends`]).
    ends: Arc<Ends>,
    metrics: Arc<Metrics>,
}

/// A restorer's consumer, with its queue.
struct Client {
    /// `consumer`'s queue, read a batch at a time (`None`: the consumer is polled). Before
    /// `consumer`: it is released first.
    queue: Option<Queue>,
    /// Reads the changelogs, read committed.
    consumer: BaseConsumer,
}

impl Client {
    fn new(config: &ClientConfig) -> Result<Self> {
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| Error::kafka("creating the restore consumer", e))?;
        // It never joins its group (it assigns partitions), so no rebalance comes by its
        // consumer queue, which is read in batches (see `message/queue.rs`).
        let queue = Queue::consumer_of(consumer.client());
        Ok(Self { queue, consumer })
    }
}

/// The client that asks for changelog partitions' ends, for every restorer of a worker
/// (see [`Restorer::new`]): it only asks for watermarks, which librdkafka answers to several
/// threads at once. It joins no group (it reads nothing), so librdkafka runs no group
/// machinery for it. It is made at the first question and let go of after [`QUIET`] without
/// one (see [`Ends::release_if_quiet`]): each client of a worker costs an idle worker
/// wake-ups of its own.
pub(crate) struct Ends {
    config: ClientConfig,
    /// The client while there is one (a question under way holds it too), and when it was
    /// last asked.
    client: Mutex<(Option<Arc<BaseConsumer>>, Instant)>,
}

impl Ends {
    pub(crate) fn new(config: &ClientConfig) -> Arc<Self> {
        let mut config = config.clone();
        config.remove("group.id").set("isolation.level", "read_uncommitted");
        Arc::new(Self {
            config,
            client: Mutex::new((None, Instant::now())),
        })
    }

    /// The partition's watermarks, read uncommitted.
    fn fetch_watermarks(&self, topic: &str, partition: i32, timeout: Duration) -> Result<(i64, i64)> {
        let client = {
            let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
            slot.1 = Instant::now();
            match &slot.0 {
                Some(client) => Arc::clone(client),
                None => {
                    let client: BaseConsumer = self
                        .config
                        .create()
                        .map_err(|e| Error::kafka("creating the restores' watermark client", e))?;
                    Arc::clone(slot.0.insert(Arc::new(client)))
                }
            }
        };
        client
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| Error::kafka("reading watermarks", e))
    }

    /// Lets go of the client when nothing asked for `quiet` (a question under way keeps its
    /// own hold on it); the next question makes another.
    pub(crate) fn release_if_quiet(&self, quiet: Duration) {
        let released = {
            let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
            if slot.1.elapsed() < quiet {
                return;
            }
            slot.0.take()
        };
        drop(released);
    }

    #[cfg(test)]
    fn has_client(&self) -> bool {
        self.client.lock().unwrap_or_else(|p| p.into_inner()).0.is_some()
    }
}

/// What the restore threads' consumers may prefetch together, by default: each gets its share,
/// at most 16 MiB and at least 4 MiB (a user's `queued.max.messages.kbytes` stands).
const RESTORE_PREFETCH_KBYTES: usize = 64 << 10;

impl Restorer {
    /// A restorer that reads through a consumer of its own (made at its first read); `ends`
    /// answers where partitions end. `of` restorers share the prefetch budget
    /// ([`RESTORE_PREFETCH_KBYTES`]).
    pub(crate) fn new(config: &ClientConfig, metrics: Arc<Metrics>, ends: &Arc<Ends>, of: usize) -> Self {
        let mut config = config.clone();
        config
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "50")
            // Needed to assign partitions; nothing is ever committed in it.
            .set("group.id", "streams-restore")
            .set("isolation.level", "read_committed");
        if config.get("fetch.queue.backoff.ms").is_none() {
            // A restore applies records more slowly than the broker sends them, so its
            // prefetch fills; with librdkafka's 1-s backoff the restore then ran dry for most
            // of each second: 551-680k records/s for 5M records on 8 partitions on tansu,
            // 0.8-1.07M with 10 ms.
            config.set("fetch.queue.backoff.ms", super::FETCH_QUEUE_BACKOFF_MS);
        }
        if config.get("queued.max.messages.kbytes").is_none() {
            // One partition at a time per consumer: a smaller prefetch than librdkafka's
            // 64 MiB keeps several restore threads' buffers small. With 4 threads, 16 MiB each
            // restored 1.42–1.49M records/s, 8 MiB 1.31–1.41M (1M records, 32 partitions).
            let share = (RESTORE_PREFETCH_KBYTES / of.max(1)).clamp(4 << 10, 16 << 10);
            config.set("queued.max.messages.kbytes", share.to_string());
        }
        Self {
            config,
            client: Mutex::new(None),
            ends: Arc::clone(ends),
            metrics,
        }
    }

    /// Lets go of the consumer unless a read is using it (the next read makes another), and
    /// of the watermark client when it was not asked for [`QUIET`].
    pub(crate) fn release_unused(&self) {
        self.ends.release_if_quiet(QUIET);
        let released = match self.client.try_lock() {
            Ok(mut client) => client.take(),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner().take(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if released.is_some() {
            tracing::debug!("a restore consumer released after {QUIET:?} without a restore");
        }
    }

    /// Whether the restorer holds a consumer now.
    #[cfg(test)]
    fn has_client(&self) -> bool {
        self.client.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The partition's watermarks as a read_uncommitted reader sees them (its first offset
    /// and its end, transactions open or not), retried until the broker answers; `None`
    /// when cancelled.
    pub(crate) fn watermarks(&self, topic: &str, partition: i32, cancel: &AtomicBool) -> Option<(i64, i64)> {
        let mut attempt = 0u32;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            match self.ends.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
                Ok(marks) => return Some(marks),
                Err(error) => {
                    attempt += 1;
                    let wait = Duration::from_millis(200 * u64::from(attempt.min(25)));
                    tracing::warn!(
                        "restore of {topic}[{partition}]: cannot read its end offset ({error}); retrying in {wait:?}"
                    );
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// Restores `store` from `topic[partition]`, from its checkpoint to the end (see
    /// [`changelog::read_changelog`]; `probe`: see [`changelog::Apply::new`]). Stops early when `cancel`
    /// is set, keeping what it applied with its checkpoint.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restore(
        &self,
        store: &dyn StateStore,
        topic: &str,
        partition: i32,
        committed: &changelog::Committed,
        agreed: Vec<(String, i64)>,
        probe: bool,
        cancel: &AtomicBool,
    ) -> Result<Restored> {
        let labels = crate::metrics::TopicPartition::new(topic, partition);
        let remaining = self.metrics.families.restore_remaining.get_or_create_owned(&labels);
        let restored_count = self.metrics.families.restored.get_or_create_owned(&labels);
        let began = Instant::now();
        let mut progress: Option<(i64, Progress)> = None;
        let outcome = self.read(
            store,
            (topic, partition),
            committed,
            agreed,
            probe,
            cancel,
            &mut |offset, end| {
                let (start, shown) = progress.get_or_insert_with(|| {
                    tracing::info!(
                        "restoring {topic}[{partition}]: {} records from offset {offset}",
                        end - offset
                    );
                    (offset, Progress::new(topic, partition, (end - offset) as u64))
                });
                shown.at((offset - *start + 1) as u64);
                restored_count.inc();
                if (offset - *start).trailing_zeros() >= 10 {
                    remaining.set(end - 1 - offset);
                }
            },
        );
        if let Some((_, shown)) = &progress {
            shown.done();
        }
        let restored = match outcome? {
            Some(restored) => restored,
            None => {
                // The partition went elsewhere: this worker restores nothing of it any more.
                self.metrics.families.restore_remaining.remove(&labels);
                tracing::info!(
                    "restore of {topic}[{partition}] stopped (partition revoked); a restore here resumes from \
                     its checkpoint"
                );
                return Ok(Restored::default());
            }
        };
        remaining.set(0);
        if progress.is_some() {
            let seconds = began.elapsed().as_secs_f64();
            tracing::info!(
                "restored {topic}[{partition}]: {} records applied, {} from uncommitted input skipped, in {seconds:.2}s ({:.0} records/s)",
                restored.applied,
                restored.skipped,
                (restored.applied + restored.skipped) as f64 / seconds.max(1e-9)
            );
        } else {
            tracing::debug!("{topic}[{partition}]: store is up to date");
        }
        Ok(restored)
    }

    /// Reads `topic[partition]` into `store` with the restore consumer (see
    /// [`changelog::read_changelog`]), then lets go of the partition.
    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        store: &dyn StateStore,
        (topic, partition): (&str, i32),
        committed: &changelog::Committed,
        agreed: Vec<(String, i64)>,
        probe: bool,
        cancel: &AtomicBool,
        on_record: &mut dyn FnMut(i64, i64),
    ) -> Result<Option<Restored>> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let client = match slot.take() {
            Some(client) => slot.insert(client),
            None => slot.insert(Client::new(&self.config)?),
        };
        let mut log = KafkaLog {
            restorer: self,
            client,
            topic,
            partition,
            cancel,
            first: None,
            taken: std::collections::VecDeque::new(),
            current: None,
            read_to: ReadTo::default(),
        };
        let outcome = changelog::read_changelog(&mut log, store, committed, agreed, probe, on_record);
        drop(log);
        client.consumer.unassign().map_err(|e| Error::kafka("restore", e))?;
        outcome
    }

    /// [`Restorer::restore`] for a standby copy: quiet (its passes run every half second), its
    /// records counted as `standby_records`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn catch_up(
        &self,
        store: &dyn StateStore,
        topic: &str,
        partition: i32,
        committed: &changelog::Committed,
        agreed: Vec<(String, i64)>,
        probe: bool,
        cancel: &AtomicBool,
    ) -> Result<Restored> {
        let outcome = self.read(
            store,
            (topic, partition),
            committed,
            agreed,
            probe,
            cancel,
            &mut |_, _| {},
        );
        let restored = outcome?.unwrap_or_default();
        self.metrics
            .standby_records
            .fetch_add(restored.applied, Ordering::Relaxed);
        Ok(restored)
    }
}

/// A changelog partition read through the restorer's consumers.
struct KafkaLog<'a> {
    restorer: &'a Restorer,
    client: &'a Client,
    topic: &'a str,
    partition: i32,
    cancel: &'a AtomicBool,
    /// The record last polled (its data is lent to the restore).
    first: Option<rdkafka::message::BorrowedMessage<'a>>,
    /// Records taken in a batch, not yet given to the restore.
    taken: std::collections::VecDeque<RawMessage>,
    /// The record of a batch last given (its data is lent to the restore).
    current: Option<RawMessage>,
    /// How far the batches given so far reach.
    read_to: ReadTo,
}

/// How far a partition was read through batches: every offset before it was given to the
/// restore or skipped by the fetch. The consumer's position cannot say it: a batch read
/// moves the position past every message of the batch, a partition's end (or an error) at
/// offset X included, to X + 1 — one past a record not read yet when the end was the
/// last stable offset, with a transaction's last record at X still waiting for its marker.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct ReadTo(Option<i64>);

impl ReadTo {
    /// A record at `offset` was given.
    fn record(&mut self, offset: i64) {
        self.0 = Some(self.0.map_or(offset + 1, |to| to.max(offset + 1)));
    }

    /// The fetch reached the partition's end (its last stable offset) at `offset`.
    fn end(&mut self, offset: i64) {
        self.0 = Some(self.0.map_or(offset, |to| to.max(offset)));
    }

    /// What the restore is told when no record is there.
    fn fetched<'a>(self) -> changelog::Fetched<'a> {
        match self.0 {
            Some(to) => changelog::Fetched::At(to),
            None => changelog::Fetched::Nothing,
        }
    }
}

impl changelog::ChangelogLog for KafkaLog<'_> {
    fn bounds(&mut self) -> Result<Option<(i64, i64)>> {
        Ok(self.restorer.watermarks(self.topic, self.partition, self.cancel))
    }

    fn seek(&mut self, offset: i64) -> Result<()> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(self.topic, self.partition, Offset::Offset(offset))
            .map_err(|e| Error::kafka("restore", e))?;
        self.client
            .consumer
            .assign(&list)
            .map_err(|e| Error::kafka("restore", e))
    }

    fn fetch(&mut self, wait: Duration) -> Result<changelog::Fetched<'_>> {
        self.first = None;
        self.current = None;
        if let Some(queue) = &self.client.queue {
            if self.taken.is_empty() {
                let mut batch = Vec::new();
                queue.take_ready(wait, RESTORE_BATCH, &mut batch);
                self.taken.extend(batch);
            }
            let Some(message) = self.taken.pop_front() else {
                return Ok(self.read_to.fetched());
            };
            return Ok(self.batched(message));
        }
        match self.client.consumer.poll(wait) {
            Some(Ok(message)) => {
                let message = self.first.insert(message);
                let headers = message
                    .headers()
                    .map(|headers| headers.iter().map(|h| (h.key, h.value.unwrap_or_default())).collect())
                    .unwrap_or_default();
                Ok(changelog::Fetched::Record {
                    offset: message.offset(),
                    key: message.key(),
                    value: message.payload(),
                    headers,
                })
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => Ok(self.position()),
            Some(Err(error)) => {
                tracing::warn!("restore of {}[{}]: {error}", self.topic, self.partition);
                Ok(changelog::Fetched::Nothing)
            }
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn label(&self) -> String {
        format!("{}[{}]", self.topic, self.partition)
    }
}

impl KafkaLog<'_> {
    /// What a record (or consumer error) taken in a batch gives.
    fn batched(&mut self, message: RawMessage) -> changelog::Fetched<'_> {
        match message.error() {
            // Its offset is where the fetch stood: every offset before it is read or skipped
            // (records after it in the batch are not applied yet, so the consumer's position,
            // which counts the whole batch, would say too much).
            Some(RDKafkaErrorCode::PartitionEOF)
                if message.partition() == self.partition && message.topic_bytes() == self.topic.as_bytes() =>
            {
                self.read_to.end(message.offset());
                changelog::Fetched::At(message.offset())
            }
            // Another partition's end (one read before; dropped as outdated by librdkafka).
            Some(RDKafkaErrorCode::PartitionEOF) => changelog::Fetched::Nothing,
            Some(_) => {
                tracing::warn!(
                    "restore of {}[{}]: {}",
                    self.topic,
                    self.partition,
                    message.error_text()
                );
                changelog::Fetched::Nothing
            }
            // The topic compared as bytes: read as text, it was checked for every record.
            None if message.partition() != self.partition || message.topic_bytes() != self.topic.as_bytes() => {
                tracing::debug!(
                    "restore of {}[{}]: a record of {}[{}] ignored",
                    self.topic,
                    self.partition,
                    message.topic(),
                    message.partition()
                );
                changelog::Fetched::Nothing
            }
            None => {
                self.read_to.record(message.offset());
                let message = self.current.insert(message);
                changelog::Fetched::Record {
                    offset: message.offset(),
                    key: message.key(),
                    value: message.payload(),
                    headers: message.headers(),
                }
            }
        }
    }

    /// Where the consumer stands: every offset before it read or skipped.
    fn position<'f>(&self) -> changelog::Fetched<'f> {
        let list = super::consumer::positions(self.client.consumer.client(), [(self.topic, self.partition)]);
        let position = list.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        });
        match position {
            Some(position) => changelog::Fetched::At(position),
            None => changelog::Fetched::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier, Mutex};
    use std::time::Duration;

    use super::{pool, Handoff};

    /// A batch's end message moves the consumer's position one past the end's offset;
    /// the restore is told only what it was given.
    #[test]
    fn a_restore_reads_to_what_its_batches_gave() {
        use super::ReadTo;
        use crate::changelog::Fetched;
        let mut read = ReadTo::default();
        assert!(matches!(read.fetched(), Fetched::Nothing), "nothing known yet");
        read.record(7);
        assert!(matches!(read.fetched(), Fetched::At(8)));
        // The end at the last stable offset 9: offset 8 was an aborted record or a marker.
        read.end(9);
        assert!(
            matches!(read.fetched(), Fetched::At(9)),
            "not 10: offset 9 is not read yet"
        );
        read.record(9);
        assert!(matches!(read.fetched(), Fetched::At(10)));
        read.end(4);
        assert!(matches!(read.fetched(), Fetched::At(10)), "never back");
    }

    /// Jobs run side by side, one per thread: three jobs that each wait for the other two
    /// finish only on three threads at once.
    #[test]
    fn the_pool_runs_jobs_side_by_side() {
        let barrier = Arc::new(Barrier::new(3));
        let (done, finished) = std::sync::mpsc::channel();
        let jobs = pool(
            vec![(), (), ()],
            Duration::from_secs(60),
            move |n: u32, _: &()| {
                barrier.wait();
                let _ = done.send(n);
            },
            |_: &()| {},
        )
        .expect("pool");
        for n in 0..3 {
            jobs.send(n).expect("send");
        }
        let mut seen: Vec<u32> = (0..3)
            .map(|_| {
                finished
                    .recv_timeout(Duration::from_secs(10))
                    .expect("three jobs at once")
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2]);
    }

    /// A job revoked before a thread took it up is dropped at once (its stores close); one
    /// taken up stays with its thread, and the revoke knows to wait for it.
    #[test]
    fn a_handoff_goes_to_one_side_only() {
        let stores = Arc::new(());
        let waiting = Handoff::new(Arc::clone(&stores));
        assert!(waiting.withdraw().is_some());
        assert_eq!(Arc::strong_count(&stores), 1, "dropped with the withdrawal");
        assert!(waiting.take_up().is_none());
        assert!(!waiting.taken_up(), "nothing to wait for");

        let taken = Handoff::new(Arc::clone(&stores));
        let job = taken.take_up();
        assert!(job.is_some());
        assert!(taken.withdraw().is_none());
        assert!(taken.taken_up(), "the revoke waits for the restore");
    }

    /// One thread takes the jobs in the order sent; dropping the sender ends the threads.
    #[test]
    fn one_thread_takes_jobs_in_order_and_ends_with_the_sender() {
        let (done, finished) = std::sync::mpsc::channel();
        let jobs = pool(
            vec![()],
            Duration::from_secs(60),
            move |n: u32, _: &()| {
                let _ = done.send(n);
            },
            |_: &()| {},
        )
        .expect("pool");
        for n in 0..5 {
            jobs.send(n).expect("send");
        }
        drop(jobs);
        let seen: Vec<u32> = finished.iter().collect();
        assert_eq!(
            seen,
            vec![0, 1, 2, 3, 4],
            "in order, and the thread ended (the channel closed)"
        );
    }

    /// After a quiet spell every state is offered to `idle`, that of a thread at work too
    /// (`idle` must leave it alone); jobs coming one after another, closer than the spell,
    /// offer none.
    #[test]
    fn a_quiet_spell_offers_every_state_to_idle() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let offered: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let quiet = Duration::from_millis(500);
        let (done, finished) = std::sync::mpsc::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Mutex::new(held);
        let seen = Arc::clone(&offered);
        let jobs = pool(
            vec![0usize, 1],
            quiet,
            move |n: u32, _: &usize| {
                // Job 99 keeps its thread at work until released.
                if n == 99 {
                    let _ = held.lock().expect("lock").recv();
                }
                let _ = done.send(n);
            },
            move |state: &usize| {
                seen[*state].fetch_add(1, Ordering::SeqCst);
            },
        )
        .expect("pool");
        for n in 0..5 {
            jobs.send(n).expect("send");
            finished.recv_timeout(Duration::from_secs(10)).expect("job done");
            std::thread::sleep(Duration::from_millis(20));
        }
        let offered_count = || offered.iter().map(|n| n.load(Ordering::SeqCst)).collect::<Vec<_>>();
        assert_eq!(offered_count(), vec![0, 0], "jobs kept coming");
        jobs.send(99).expect("send");
        std::thread::sleep(quiet * 3);
        let after = offered_count();
        assert!(
            after.iter().all(|&n| n >= 1),
            "both offered after a quiet spell, the one at work too: {after:?}"
        );
        release.send(()).expect("release");
        assert_eq!(finished.recv_timeout(Duration::from_secs(10)).expect("job done"), 99);
    }

    /// The restore consumers share 64 MiB of prefetch, each at least 4 MiB and at most 16;
    /// a user's setting stands.
    /// The setting `key` of a restorer made from `config`, one of `of` restorers.
    fn restorer_setting(config: &rdkafka::config::ClientConfig, of: usize, key: &str) -> Option<String> {
        let ends = super::Ends::new(config);
        let restorer = super::Restorer::new(config, Arc::new(crate::metrics::Metrics::default()), &ends, of);
        restorer.config.get(key).map(str::to_string)
    }

    #[test]
    fn the_restorers_share_their_prefetch_and_a_users_setting_stands() {
        let mut config = rdkafka::config::ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:1");
        let prefetch = |config: &rdkafka::config::ClientConfig, of: usize| {
            restorer_setting(config, of, "queued.max.messages.kbytes")
        };
        assert_eq!(prefetch(&config, 1).as_deref(), Some("16384"));
        assert_eq!(prefetch(&config, 4).as_deref(), Some("16384"));
        assert_eq!(prefetch(&config, 8).as_deref(), Some("8192"));
        assert_eq!(prefetch(&config, 32).as_deref(), Some("4096"));
        config.set("queued.max.messages.kbytes", "1000");
        assert_eq!(prefetch(&config, 8).as_deref(), Some("1000"));
    }

    /// A restore consumer whose prefetch filled fetches again after 10 ms, not librdkafka's
    /// 1 s (which halved restores, `BENCHMARKS.md`); a user's setting stands.
    #[test]
    fn a_restore_consumer_fetches_again_soon_after_its_prefetch_filled() {
        let mut config = rdkafka::config::ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:1");
        let backoff = |config: &rdkafka::config::ClientConfig| restorer_setting(config, 4, "fetch.queue.backoff.ms");
        assert_eq!(backoff(&config).as_deref(), Some("10"));
        config.set("fetch.queue.backoff.ms", "250");
        assert_eq!(backoff(&config).as_deref(), Some("250"));
    }

    /// A restorer lets go of its consumer when asked, unless a read holds it; the next read
    /// makes another.
    #[test]
    fn a_restorer_releases_its_consumer_only_when_unused() {
        let mut config = rdkafka::config::ClientConfig::new();
        // Nothing listens there: the clients are made, never used.
        config.set("bootstrap.servers", "127.0.0.1:1");
        let ends = super::Ends::new(&config);
        let restorer = super::Restorer::new(&config, Arc::new(crate::metrics::Metrics::default()), &ends, 1);
        assert!(!restorer.has_client(), "made at the first read, not before");
        *restorer.client.lock().expect("lock") = Some(super::Client::new(&restorer.config).expect("client"));
        {
            let _reading = restorer.client.lock().expect("lock");
            restorer.release_unused();
        }
        assert!(restorer.has_client(), "kept while a read holds it");
        restorer.release_unused();
        assert!(!restorer.has_client(), "released once unused");
    }

    /// The watermark client is made at the first question and let go of only once nothing
    /// asked for the quiet spell.
    #[test]
    fn the_watermark_client_is_released_after_a_quiet_spell() {
        let mut config = rdkafka::config::ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:1");
        let ends = super::Ends::new(&config);
        assert!(!ends.has_client(), "made at the first question, not before");
        // Nothing listens: the question fails, but the client was made for it.
        assert!(ends.fetch_watermarks("t", 0, Duration::from_millis(100)).is_err());
        assert!(ends.has_client());
        ends.release_if_quiet(Duration::from_secs(60));
        assert!(ends.has_client(), "asked within the spell: kept");
        std::thread::sleep(Duration::from_millis(50));
        ends.release_if_quiet(Duration::from_millis(20));
        assert!(!ends.has_client(), "released after the spell");
    }
}

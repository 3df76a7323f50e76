//! The worker: the only place that knows about offsets, commits and rebalances.
//!
//! Start one with [`Worker::start`] (or the CLI's `worker` command). It locks its data
//! directory, waits for the cluster, creates the app's topics, joins the consumer group
//! named after the app, and runs agents on the partitions it is assigned.

pub(crate) mod consumer;
mod global;
pub(crate) mod producer;
pub(crate) mod restore;
mod runs;
mod standby;
mod timers;
mod topic_handles;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::app::{App, ProcessingGuarantee};
use crate::broker::{self, EmbeddedBroker};
use crate::metrics::Metrics;
use crate::task::cache_budget::CacheBudget;
use crate::task::commit;
use crate::task::sink::Sink;
use crate::task::TaskContext;
use crate::worker::restore::Restorer;
use crate::{Error, Result};

/// How to run a worker.
///
/// ```
/// use std::time::Duration;
/// let options = streams_core::WorkerOptions::new("/tmp/hit-counter-data")
///     .broker("localhost:9092")
///     .idle_exit(Duration::from_secs(5))
///     .client_config("session.timeout.ms", "10000");
/// assert_eq!(options.broker.as_deref(), Some("localhost:9092"));
/// ```
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Bootstrap servers; `None` starts the embedded broker in this process.
    pub broker: Option<String>,
    /// An embedded broker to use (its topics are created through it: the mock cluster has
    /// no CreateTopics API).
    pub embedded: Option<EmbeddedBroker>,
    /// Where the stores live (`{data_dir}/{app id}/`).
    pub data_dir: PathBuf,
    /// Stop after this long without records (for demos and batch-like runs).
    pub idle_exit: Option<Duration>,
    /// Extra librdkafka settings for every client (e.g. security settings).
    pub client_config: Vec<(String, String)>,
    /// Extra librdkafka settings for the group consumer only (e.g. `session.timeout.ms`).
    pub consumer_config: Vec<(String, String)>,
    /// Setting this flag stops the worker, and a start in progress (see
    /// [`WorkerOptions::stop_flag`]).
    pub stop: Option<Arc<AtomicBool>>,
    /// A flag that, set before the stop flag, makes the stop leave the group as
    /// [`WorkerHandle::stop_and_leave`] does (the command line sets it from SIGINT). Set the
    /// stop flag after it with `Ordering::Release`.
    pub leave_flag: Option<Arc<AtomicBool>>,
    /// The processing guarantee, overriding the app's (the command line's
    /// `--processing-guarantee`).
    pub guarantee: Option<ProcessingGuarantee>,
    /// The worker's identity under exactly-once (its transactional id is `{app}-{id}`) and
    /// under static membership (its `group.instance.id` is `{app}-{id}`). A worker started
    /// with the identity of one that still runs fences it (it stops). Default:
    /// an id made once and kept in the data directory (`{data_dir}/{app}/worker.id`), so that
    /// a worker restarted on its data directory fences what is left of its predecessor.
    pub worker_id: Option<String>,
    /// The worker's web server (table lookups, metrics, topology, health): `None` for none
    /// (the default here; the command line's workers have one on 127.0.0.1:6066).
    pub web: Option<crate::web::WebOptions>,
    /// The table cache's budget per table partition, overriding the app's
    /// (`App::table_cache_bytes`; the command line's `--table-cache-bytes`). Under
    /// `state_memory` a partition's cache may get less: the caches of all the worker's table
    /// partitions share a sixteenth of it.
    pub table_cache_bytes: Option<usize>,
    /// The memory every RocksDB store of the worker shares, in bytes: one block cache that
    /// also carries the memtables (the command line's `--state-memory`). It also bounds the
    /// table caches in front of the stores: together they get a sixteenth of it, split
    /// evenly over the table partitions the worker holds, each at most `table_cache_bytes`
    /// (so 64 partitions under 256 MiB get 256 KiB each, and 4 partitions their whole
    /// 1 MiB). `None`: the process's default budget, [`crate::store::DEFAULT_STATE_MEMORY`]
    /// (128 MiB), shared by every worker of the process, and a cache of `table_cache_bytes`
    /// for every table partition however many.
    pub state_memory: Option<usize>,
    /// How many partitions restore their stores side by side, each on a thread with a
    /// consumer of its own (the command line's `--restore-threads`; by default the
    /// machine's cores, at least 4 and at most 8).
    pub restore_threads: usize,
    /// Standby replicas: how many workers besides a table partition's owner keep a warm
    /// copy of it, caught up from its changelog every half second, so that a failover
    /// restores only the tail (the command line's `--standby-replicas`; 0 by default). See
    /// the README's "Standby replicas" for where copies go.
    pub standby_replicas: usize,
    /// How long a stop may take to finish its records and make its last commits (30 s by
    /// default): past it, [`WorkerHandle::stop`] gives up with an error, and the command
    /// line's worker exits 1 without them (a broker that cannot be reached would otherwise
    /// keep it waiting forever; an orchestrator would kill it anyway).
    pub shutdown_timeout: Duration,
    /// Static membership (KIP-345; the command line's `--static-membership`): the worker
    /// joins its group as `group.instance.id` `{app}-{worker id}` (see
    /// [`WorkerOptions::worker_id`]). A stop then leaves the group's assignment as it is for
    /// `session.timeout.ms`: a worker started again with the same id (and data directory)
    /// within it takes back the same partitions without a rebalance, and with its
    /// checkpoints restores nothing. A worker that is going away for good says so with
    /// [`WorkerHandle::stop_and_leave`] (the command line: SIGINT), so that the others take
    /// its partitions at once. Off by default, as in Kafka.
    pub static_membership: bool,
}

/// How many partitions restore side by side by default: the machine's cores, at least 4 and
/// at most 8. A restore waits for the broker much of its time (the partition's end, its
/// fetches; each partition starts with round trips), so threads beyond the cores fill those
/// waits: on 2 cores, 4 threads restored 1M records over 32 partitions at 1.34M records/s,
/// 2 threads at 0.92M (BENCHMARKS.md).
pub(crate) fn default_restore_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get().clamp(4, 8))
}

/// How long a stop may take by default (see [`WorkerOptions::shutdown_timeout`]).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

impl WorkerOptions {
    /// Options with a data directory and everything else at its default.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            broker: None,
            embedded: None,
            data_dir: data_dir.into(),
            idle_exit: None,
            client_config: Vec::new(),
            consumer_config: Vec::new(),
            stop: None,
            leave_flag: None,
            guarantee: None,
            worker_id: None,
            static_membership: false,
            web: None,
            table_cache_bytes: None,
            state_memory: None,
            restore_threads: default_restore_threads(),
            standby_replicas: 0,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    /// Gives each table partition's cache this budget, whatever the app's (see
    /// `App::table_cache_bytes`).
    ///
    /// ```
    /// let options = streams_core::WorkerOptions::new("/tmp/data").table_cache_bytes(64 << 10);
    /// assert_eq!(options.table_cache_bytes, Some(64 << 10));
    /// ```
    pub fn table_cache_bytes(mut self, bytes: usize) -> Self {
        self.table_cache_bytes = Some(bytes);
        self
    }

    /// Gives the worker's RocksDB stores, all of them together, this memory budget (see
    /// [`crate::store::StateMemory`]): one block cache, with the memtables charged to it.
    ///
    /// ```
    /// let options = streams_core::WorkerOptions::new("/tmp/data").state_memory(256 << 20);
    /// assert_eq!(options.state_memory, Some(256 << 20));
    /// ```
    pub fn state_memory(mut self, bytes: usize) -> Self {
        self.state_memory = Some(bytes);
        self
    }

    /// Restores up to `threads` partitions' stores side by side (at least 1).
    ///
    /// ```
    /// let options = streams_core::WorkerOptions::new("/tmp/data").restore_threads(8);
    /// assert_eq!(options.restore_threads, 8);
    /// ```
    pub fn restore_threads(mut self, threads: usize) -> Self {
        self.restore_threads = threads.max(1);
        self
    }

    /// Keeps warm copies of other workers' table partitions (see
    /// [`WorkerOptions::standby_replicas`]).
    ///
    /// ```
    /// let options = streams_core::WorkerOptions::new("/tmp/data").standby_replicas(1);
    /// assert_eq!(options.standby_replicas, 1);
    /// ```
    pub fn standby_replicas(mut self, replicas: usize) -> Self {
        self.standby_replicas = replicas;
        self
    }

    /// Bounds how long a stop may take (see [`WorkerOptions::shutdown_timeout`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = streams_core::WorkerOptions::new("/tmp/data").shutdown_timeout(Duration::from_secs(10));
    /// assert_eq!(options.shutdown_timeout, Duration::from_secs(10));
    /// ```
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Runs a web server with the worker (see [`crate::web`]).
    ///
    /// ```
    /// use streams_core::web::WebOptions;
    /// let options = streams_core::WorkerOptions::new("/tmp/data").web(WebOptions::default().port(0));
    /// assert_eq!(options.web.map(|w| w.port), Some(0));
    /// ```
    pub fn web(mut self, web: crate::web::WebOptions) -> Self {
        self.web = Some(web);
        self
    }

    /// Runs with this processing guarantee, whatever the app's.
    pub fn processing_guarantee(mut self, guarantee: ProcessingGuarantee) -> Self {
        self.guarantee = Some(guarantee);
        self
    }

    /// Joins the group as a static member (see [`WorkerOptions::static_membership`]).
    ///
    /// ```
    /// let options = streams_core::WorkerOptions::new("/tmp/data").worker_id("w1").static_membership(true);
    /// assert!(options.static_membership);
    /// ```
    pub fn static_membership(mut self, on: bool) -> Self {
        self.static_membership = on;
        self
    }

    /// Sets the worker's identity under exactly-once (see [`WorkerOptions::worker_id`]).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// A flag that stops the worker once set, as [`WorkerHandle::request_stop`] does; set
    /// while [`Worker::start`] still waits for the broker, it makes the start return
    /// [`Error::Stopping`]. The command line sets it from SIGINT and SIGTERM. A worker that
    /// holds its partitions and has no records sees the flag within a second;
    /// [`WorkerHandle::request_stop`] is seen at once.
    pub fn stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }

    /// A flag that, set before the stop flag, makes the stop leave the group at once (see
    /// [`WorkerOptions::leave_flag`]).
    pub fn leave_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.leave_flag = Some(flag);
        self
    }

    /// Connects to these bootstrap servers.
    pub fn broker(mut self, bootstrap: impl Into<String>) -> Self {
        self.broker = Some(bootstrap.into());
        self
    }

    /// Uses this embedded broker.
    pub fn embedded(mut self, broker: &EmbeddedBroker) -> Self {
        self.embedded = Some(broker.clone());
        self
    }

    /// Stops after `idle` without records.
    pub fn idle_exit(mut self, idle: Duration) -> Self {
        self.idle_exit = Some(idle);
        self
    }

    /// Adds a librdkafka setting for the group consumer.
    pub fn consumer_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.consumer_config.push((key.into(), value.into()));
        self
    }

    /// Adds a librdkafka setting for every client.
    pub fn client_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client_config.push((key.into(), value.into()));
        self
    }
}

/// A running worker.
pub struct WorkerHandle {
    stop: Arc<AtomicBool>,
    /// Set with the stop when a static member leaves its group for good.
    leave: Arc<AtomicBool>,
    /// Ends the poll thread's wait (a stop asked for is seen at once).
    poll_wake: Arc<crate::message::queue::Records>,
    metrics: Arc<Metrics>,
    done: tokio::sync::oneshot::Receiver<()>,
    finished: Arc<AtomicBool>,
    reporter: tokio::task::JoinHandle<()>,
    web: Option<crate::web::WebServer>,
    pub(crate) shutdown_timeout: Duration,
    /// The step of the stop the worker is in (named when a stop takes too long).
    step: ShutdownStep,
    _embedded: Option<EmbeddedBroker>,
}

/// Asks a worker to stop, as [`WorkerHandle::request_stop`] does, where the handle itself is
/// gone (waited on).
pub(crate) struct Stopper {
    flag: Arc<AtomicBool>,
    leave: Arc<AtomicBool>,
    poll_wake: Arc<crate::message::queue::Records>,
}

impl Stopper {
    /// Sets the stop flag and ends the poll thread's wait, so that it sees the flag now.
    pub(crate) fn stop(&self) {
        // Release: a leave flag set before (`stop_and_leave`, the command line's SIGINT) is
        // seen by the poll thread that sees this.
        self.flag.store(true, Ordering::Release);
        self.poll_wake.wake();
    }

    /// Stops, leaving the group at once even as a static member (see
    /// [`WorkerHandle::stop_and_leave`]).
    pub(crate) fn stop_and_leave(&self) {
        self.leave.store(true, Ordering::Relaxed);
        self.stop();
    }
}

/// Where a stopping worker is, for the error when its stop takes longer than allowed.
#[derive(Clone)]
pub(crate) struct ShutdownStep(Arc<std::sync::Mutex<&'static str>>);

impl Default for ShutdownStep {
    fn default() -> Self {
        Self(Arc::new(std::sync::Mutex::new(
            "finishing its tasks and their last commits",
        )))
    }
}

impl ShutdownStep {
    fn enter(&self, step: &'static str) {
        tracing::debug!("stopping: {step}");
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = step;
    }

    /// The step the stop is in.
    pub(crate) fn current(&self) -> &'static str {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WorkerHandle {
    /// The worker's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The URL of the worker's web server (`None` without one): its advertised URL, e.g.
    /// `http://127.0.0.1:6066`.
    pub fn web_url(&self) -> Option<&str> {
        self.web.as_ref().map(|web| web.url.as_str())
    }

    /// The address the web server listens on (with port 0, the port it was given).
    pub fn web_addr(&self) -> Option<std::net::SocketAddr> {
        self.web.as_ref().map(|web| web.local_addr)
    }

    /// Whether the worker is still running (it has not stopped, by request or by failure).
    pub fn is_running(&self) -> bool {
        !self.finished.load(Ordering::Relaxed)
    }

    /// Where its stop is (see [`ShutdownStep`]).
    pub(crate) fn shutdown_step(&self) -> ShutdownStep {
        self.step.clone()
    }

    /// Asks the worker to stop, without waiting: its partitions finish their records and are
    /// committed ([`WorkerHandle::stop`] asks and waits).
    pub fn request_stop(&self) {
        self.stopper().stop();
    }

    /// What asks the worker to stop, apart from the handle (see [`Stopper`]).
    pub(crate) fn stopper(&self) -> Stopper {
        Stopper {
            flag: Arc::clone(&self.stop),
            leave: Arc::clone(&self.leave),
            poll_wake: Arc::clone(&self.poll_wake),
        }
    }

    /// Waits for the worker to end; an error if it stopped because of a failure.
    pub async fn wait(self) -> Result<Arc<Metrics>> {
        let _ = self.done.await;
        self.reporter.abort();
        if let Some(web) = &self.web {
            web.shutdown();
        }
        match self.metrics.fatal() {
            Some(error) => Err(Error::Config(error)),
            None => Ok(self.metrics),
        }
    }

    /// Stops the worker and waits for it (see [`WorkerHandle::request_stop`]), at most its
    /// [`WorkerOptions::shutdown_timeout`]: past it, an error says that the last commits
    /// were not made (the worker's threads are left to the process's end).
    pub async fn stop(self) -> Result<Arc<Metrics>> {
        self.request_stop();
        self.stopped().await
    }

    /// Stops the worker as [`WorkerHandle::stop`] does, and leaves the consumer group at
    /// once: the other workers take its partitions now. The same as `stop` for a worker
    /// without [`WorkerOptions::static_membership`] (a dynamic member always leaves); a
    /// static member that stops without leaving keeps its partitions unassigned for the
    /// session timeout, waiting for its restart.
    ///
    /// ```no_run
    /// # async fn example(worker: streams_core::WorkerHandle) -> streams_core::Result<()> {
    /// worker.stop_and_leave().await?; // scaling down: not coming back
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stop_and_leave(self) -> Result<Arc<Metrics>> {
        self.stopper().stop_and_leave();
        self.stopped().await
    }

    /// Waits for a stop asked for, at most the shutdown timeout.
    async fn stopped(self) -> Result<Arc<Metrics>> {
        let timeout = self.shutdown_timeout;
        let step = self.step.clone();
        let reporter = self.reporter.abort_handle();
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(result) => result,
            Err(_) => {
                reporter.abort();
                Err(Error::Config(format!(
                    "the worker did not stop within {timeout:?} (it was {}; is the broker reachable?): its last \
                     commits may not have been made (the input since the last commit will then be processed again by the \
                     next owner); its threads end with the process, and its data directory stays locked until then",
                    step.current()
                )))
            }
        }
    }
}

/// `session.timeout.ms` of workers on the embedded broker (unless set otherwise).
const EMBEDDED_SESSION_MS: u64 = 6000;

/// How long the worker's consumers (its group's, the restores', the global tables') wait
/// before fetching a partition whose prefetch was full, unless set otherwise: librdkafka's
/// `fetch.queue.backoff.ms`, whose 1 s default leaves a consumer that is slower than its
/// fetches without records for most of each second.
pub(crate) const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// The worker's `heartbeat.interval.ms` unless one is set: a second, or a third of the
/// session (the one set in `consumer`, which wins, or in `config`) when that is shorter.
fn heartbeat_ms(config: &ClientConfig, consumer: &[(String, String)]) -> u64 {
    let session = consumer_ms(config, consumer, "session.timeout.ms").unwrap_or(45_000);
    (session / 3).clamp(1, HEARTBEAT_MS)
}

/// A setting in ms of the group consumer: the one set in `consumer`, which wins, or in
/// `config`.
fn consumer_ms(config: &ClientConfig, consumer: &[(String, String)], key: &str) -> Option<u64> {
    consumer
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, value)| value.as_str())
        .or_else(|| config.get(key))
        .and_then(|ms| ms.trim().parse::<u64>().ok())
}

/// `heartbeat.interval.ms` of workers (unless set otherwise, or a third of a shorter session).
const HEARTBEAT_MS: u64 = 1000;

/// Starts workers.
pub struct Worker;

fn lock_data_dir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create the data directory {}", dir.display()), e))?;
    let path = dir.join("worker.lock");
    let file = File::create(&path).map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Config(format!(
            "the data directory {} is in use by another worker; give each worker its own --data-dir",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(format!("cannot lock {}", path.display()), e)),
    }
}

impl Worker {
    /// Starts a worker for `app` and returns once it has joined the group (its partitions
    /// are assigned in the background). Must be called inside a multi-threaded tokio runtime.
    pub async fn start(app: App, options: WorkerOptions) -> Result<WorkerHandle> {
        // The options' guarantee (the command line's) is the app's from here: its default
        // commit interval follows it.
        let app = match options.guarantee {
            Some(guarantee) => app.processing_guarantee(guarantee),
            None => app,
        };
        let app = match options.table_cache_bytes {
            Some(bytes) => app.table_cache_bytes(bytes),
            None => app,
        };
        app.validate()?;
        let stop = options.stop.clone().unwrap_or_default();
        let stopping = || -> Result<()> {
            if stop.load(Ordering::Relaxed) {
                Err(Error::Stopping)
            } else {
                Ok(())
            }
        };
        let app_dir = options.data_dir.join(app.id());
        // File system calls: off the async executor.
        let lock = {
            let app_dir = app_dir.clone();
            tokio::task::spawn_blocking(move || lock_data_dir(&app_dir))
                .await
                .map_err(|e| Error::Config(format!("locking the data directory: {e}")))??
        };
        // The web server's port is taken first: a port in use fails the start at once.
        let web_listener = match &options.web {
            Some(web) => Some(crate::web::bind(web).await?),
            None => None,
        };
        let embedded = match (&options.embedded, &options.broker) {
            (Some(embedded), _) => Some(embedded.clone()),
            (None, Some(_)) => None,
            // Starting the cluster waits on its thread: off the async executor.
            (None, None) => Some(
                tokio::task::spawn_blocking(EmbeddedBroker::start)
                    .await
                    .map_err(|e| Error::Config(format!("starting the embedded broker: {e}")))??,
            ),
        };
        let bootstrap = match (&embedded, &options.broker) {
            (Some(embedded), _) => {
                tracing::info!("using the embedded broker at {}", embedded.bootstrap_servers());
                embedded.bootstrap_servers().to_string()
            }
            (None, Some(broker)) => broker.clone(),
            (None, None) => return Err(Error::Config("no broker".into())),
        };
        let config = broker::client_config(&bootstrap, &options.client_config);
        stopping()?;

        let cluster = {
            let (config, stop) = (config.clone(), Arc::clone(&stop));
            tokio::task::spawn_blocking(move || broker::describe_cluster(&config, &|| stop.load(Ordering::Relaxed)))
                .await
                .map_err(|e| Error::Config(format!("startup failed: {e}")))??
        };
        let on_embedded = embedded.is_some() || cluster.is_embedded();
        let mut plan = app.plan(&cluster.topics)?;
        if web_listener.is_some() {
            let name = crate::web::directory::topic_name(app.id());
            let exists = cluster.topics.contains_key(&name);
            // The embedded broker of another process takes no CreateTopics; it creates a
            // topic when the directory's producer first asks for it.
            if exists || embedded.is_some() || !cluster.is_embedded() {
                plan.push(crate::spec::PlannedTopic {
                    exists,
                    name,
                    partitions: 1,
                    compacted: true,
                });
            }
        }
        let partition_counts: std::collections::HashMap<String, i32> =
            plan.iter().map(|t| (t.name.clone(), t.partitions)).collect();
        stopping()?;
        broker::create_topics(&plan, &config, embedded.as_ref()).await?;
        let names: Vec<String> = plan.iter().map(|t| t.name.clone()).collect();
        wait_for_topics(&config, &names, Arc::clone(&stop)).await?;
        stopping()?;

        let metrics = Arc::new(Metrics::default());
        let exactly_once = app.guarantee() == ProcessingGuarantee::ExactlyOnce;
        // The worker's identity, where something needs it (exactly-once, static membership).
        let id = if exactly_once || options.static_membership {
            Some(match &options.worker_id {
                Some(id) => id.clone(),
                None => {
                    let app_dir = app_dir.clone();
                    tokio::task::spawn_blocking(move || worker_id(&app_dir))
                        .await
                        .map_err(|e| Error::Config(format!("reading the worker id: {e}")))??
                }
            })
        } else {
            None
        };
        let kafka_sink = Arc::new(if let (true, Some(id)) = (exactly_once, &id) {
            let transactional_id = format!("{}-{id}", app.id());
            tracing::info!("exactly-once: transactional id {transactional_id}");
            let (config, metrics) = (config.clone(), Arc::clone(&metrics));
            tokio::task::spawn_blocking(move || producer::KafkaSink::transactional(config, metrics, &transactional_id))
                .await
                .map_err(|e| Error::Config(format!("starting the transactional producer: {e}")))??
        } else {
            producer::KafkaSink::new(config.clone(), Arc::clone(&metrics))?
        });
        // Records the broker refused go to the dead-letter topic when sent again, if the app
        // says so (see `App::on_production_error`).
        let errors = Arc::new(app.production_errors());
        let sink: Arc<dyn Sink> = Arc::new(crate::task::sink::Guarded {
            inner: kafka_sink.clone(),
            errors: Arc::clone(&errors),
        });
        let rounds = exactly_once.then(|| Arc::new(crate::task::round::Rounds::default()));
        // What is sent outside the partitions' rounds (timers, dead letters of global tables)
        // goes through a producer of its own under exactly-once, at-least-once: the
        // transactional one only takes records between a round's begin and its commit. Under
        // at-least-once it goes through the tasks' producer. Each global table has a lane of
        // its own in it: its flush reports its own dead letters' failures only, and no other
        // flush takes them (see `producer::Lane`).
        let side_producer = if exactly_once {
            Arc::new(producer::KafkaSink::new(config.clone(), Arc::clone(&metrics))?)
        } else {
            Arc::clone(&kafka_sink)
        };
        let side_sink: Arc<dyn Sink> = if exactly_once {
            side_producer.clone()
        } else {
            Arc::clone(&sink)
        };
        let (memory, cache_budget) = match options.state_memory {
            Some(bytes) => {
                let memory = crate::store::StateMemory::new(bytes);
                let caches = CacheBudget::within(app.table_cache_bytes_value(), memory.limit());
                (memory, caches)
            }
            None => (
                crate::store::StateMemory::process_default().clone(),
                CacheBudget::per_partition(app.table_cache_bytes_value()),
            ),
        };
        // Global tables are filled before the worker joins its group: no task starts before
        // its lookups can be answered.
        let mut globals = {
            let (id, specs, config, dir) = (
                app.id().to_string(),
                app.global_tables(),
                config.clone(),
                app_dir.join("global"),
            );
            let (metrics, stop) = (Arc::clone(&metrics), Arc::clone(&stop));
            let (side_producer, errors) = (Arc::clone(&side_producer), Arc::clone(&errors));
            // As the tasks' records under at-least-once, what the app's production handler
            // diverted before is diverted again.
            let lane = move || -> Arc<dyn Sink> {
                let lane = Arc::new(producer::SideLane::new(&side_producer));
                if exactly_once {
                    lane
                } else {
                    Arc::new(crate::task::sink::Guarded {
                        inner: lane,
                        errors: Arc::clone(&errors),
                    })
                }
            };
            let memory = memory.clone();
            tokio::task::spawn_blocking(move || {
                global::start(&id, specs, &config, (&dir, &memory), &lane, &metrics, &stop)
            })
            .await
            .map_err(|e| Error::Config(format!("filling the global tables: {e}")))??
        };
        let (cuts_tx, cuts_rx) = std::sync::mpsc::channel();
        let tasks = app.tasks();
        // Restore threads (each with a consumer of its own while it restores, and one client
        // that asks where changelogs end for all of them) only for an app with tables.
        let restore_threads = if tasks.iter().any(|task| !task.tables.is_empty()) {
            options.restore_threads.max(1)
        } else {
            0
        };
        let (restorers, ends) = if restore_threads > 0 {
            let ends = restore::Ends::new(&config);
            let restorers = (0..restore_threads)
                .map(|_| Restorer::new(&config, Arc::clone(&metrics), &ends, restore_threads))
                .collect();
            (restorers, Some(ends))
        } else {
            (Vec::new(), None)
        };
        let shared = Arc::new(consumer::Shared::new(
            app.id().to_string(),
            tasks,
            app_dir.join("tables"),
            tokio::runtime::Handle::current(),
            Arc::clone(&sink),
            cuts_tx,
            Arc::clone(&metrics),
            restorers,
            app.commit_interval_value(),
            cache_budget,
            on_embedded,
            Arc::clone(&globals.stores),
            rounds.clone(),
            memory,
            Arc::new(standby::Standbys::new(options.standby_replicas)),
            Arc::clone(&stop),
            Duration::from_millis(
                consumer_ms(&config, &options.consumer_config, "max.poll.interval.ms").unwrap_or(300_000),
            ),
        )?);
        // An aborted round ends the poll thread's wait: it starts the tasks again.
        if let Some(rounds) = &rounds {
            let records = Arc::clone(&shared.records);
            rounds.on_abort(move || records.wake());
        }
        // So does a failure: the worker stops.
        {
            let records = Arc::clone(&shared.records);
            metrics.on_failure(move || records.wake());
        }
        let poll_wake = Arc::clone(&shared.records);
        let web = match web_listener {
            Some((listener, url)) => {
                let directory =
                    crate::web::directory::Directory::start(app.id(), &url, &config, Arc::clone(&side_sink))?;
                // Listed from its start, holding nothing yet (`reset` asks every listed worker).
                directory.publish(None, Vec::new());
                *shared.directory.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&directory));
                let state = web_state(&app, &url, &shared, &metrics, directory, partition_counts.clone())?;
                Some((crate::web::serve(listener, url, Arc::new(state.0))?, state.1))
            }
            None => None,
        };
        let (web, web_finished) = match web {
            Some((server, finished)) => (Some(server), Some(finished)),
            None => (None, None),
        };
        let mut consumer_config = config.clone();
        consumer_config
            .set("group.id", app.id())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "range")
            .set("enable.partition.eof", "false")
            // Records wait in at most two batches per partition on our side; librdkafka's
            // prefetch needs no more than this to keep partitions busy.
            .set("queued.max.messages.kbytes", "32768");
        if exactly_once {
            // Records of aborted transactions are never read (Kafka Streams does the same).
            consumer_config.set("isolation.level", "read_committed");
        }
        let chosen = |key: &str| {
            options
                .consumer_config
                .iter()
                .chain(&options.client_config)
                .any(|(k, _)| k == key)
        };
        if !chosen("fetch.queue.backoff.ms") {
            // Once the tasks fall behind the fetch, the prefetch fills and librdkafka stops
            // fetching for `fetch.queue.backoff.ms`, 1 s by default: the tasks ran dry for
            // most of it (a stateless agent on tansu: 232-239k records/s, 704-854k with
            // 10 ms, the same CPU per record).
            consumer_config.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
        }
        if on_embedded {
            // The mock cluster completes a join only `session.timeout.ms - 1s` after the
            // previous member left (45 s by default): short sessions make restarts quick.
            if !chosen("session.timeout.ms") {
                consumer_config.set("session.timeout.ms", EMBEDDED_SESSION_MS.to_string());
            }
            if !chosen("heartbeat.interval.ms") {
                consumer_config.set("heartbeat.interval.ms", "500");
            }
        } else if !chosen("heartbeat.interval.ms") {
            // A member learns of a rebalance (a worker joining, or one whose session ended)
            // at its next heartbeat: at most a second later, rather than librdkafka's 3 s, so
            // a failover takes the session timeout and little more. One small request a
            // second; never more than a third of the session.
            consumer_config.set(
                "heartbeat.interval.ms",
                heartbeat_ms(&consumer_config, &options.consumer_config).to_string(),
            );
        }
        if let (true, Some(id)) = (options.static_membership, &id) {
            // KIP-345: a restart with the same instance id takes the member's place (and its
            // partitions) without a rebalance.
            consumer_config.set("group.instance.id", format!("{}-{id}", app.id()));
        }
        for (key, value) in &options.consumer_config {
            consumer_config.set(key, value);
        }
        // A member with an instance id (ours, or one set in the options) leaves its group
        // on stop only when asked to.
        let static_member = consumer_config
            .get("group.instance.id")
            .is_some_and(|id| !id.is_empty());
        if let Some(instance) = consumer_config.get("group.instance.id").filter(|_| static_member) {
            tracing::info!("static member of group {}: group.instance.id {instance}", app.id());
        }
        let leave = options.leave_flag.clone().unwrap_or_default();
        if on_embedded {
            let session = consumer_config
                .get("session.timeout.ms")
                .unwrap_or("45000 (librdkafka's default)");
            if chosen("session.timeout.ms") {
                tracing::info!(
                    "the broker is the embedded broker (librdkafka's mock cluster): sessions of {session} ms \
                     (set by you); it completes a join up to that long after the previous member left"
                );
            } else {
                tracing::info!(
                    "the broker is the embedded broker (librdkafka's mock cluster): sessions of {session} ms, \
                     so that the group forms in seconds"
                );
            }
        }
        let mut consumer: BaseConsumer<consumer::WorkerContext> = consumer_config
            .create_with_context(consumer::WorkerContext {
                shared: Arc::clone(&shared),
            })
            .map_err(|e| Error::kafka("creating the consumer", e))?;
        {
            // A rebalance (or an error, a commit) ends the poll thread's wait for records.
            let shared = Arc::clone(&shared);
            consumer.set_nonempty_callback(move || shared.records.wake());
        }
        let consumer = Arc::new(consumer);
        let mut sources = shared.source_topics();
        sources.sort();
        let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
        consumer
            .subscribe(&sources)
            .map_err(|e| Error::kafka("subscribing", e))?;
        tracing::info!("worker of {} started; consuming {}", app.id(), sources.join(", "));

        let committer = {
            let committing = commit::Committer {
                sink: Arc::clone(&sink),
                metrics: Arc::clone(&metrics),
                errors,
            };
            let offsets = Arc::new(consumer::GroupCommit(Arc::downgrade(&consumer)));
            let interval = app.commit_interval_value();
            let (rounds, kafka_sink) = (rounds.clone(), Arc::clone(&kafka_sink));
            std::thread::Builder::new()
                .name("committer".into())
                .spawn(move || match rounds {
                    Some(rounds) => {
                        let transactions = Arc::new(consumer::KafkaTransactions {
                            sink: kafka_sink,
                            consumer: offsets.0.clone(),
                        });
                        commit::run_rounds(cuts_rx, committing, transactions, rounds, interval)
                    }
                    None => commit::run(cuts_rx, committing, offsets),
                })
                .map_err(|e| Error::io("starting the committer", e))?
        };
        // Late among the threads: a start that fails after it stops it (see below).
        let standbys = Arc::clone(&shared.standbys);
        let standby_thread = if let (Some(ends), true) = (&ends, options.standby_replicas > 0) {
            Some(start_standbys(
                &shared,
                &config,
                app.id(),
                exactly_once,
                partition_counts,
                ends,
            )?)
        } else {
            None
        };
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let finished = Arc::new(AtomicBool::new(false));
        let step = ShutdownStep::default();
        {
            let step = step.clone();
            let stop = Arc::clone(&stop);
            let finished = Arc::clone(&finished);
            let idle = options.idle_exit;
            let sink = Arc::clone(&side_sink);
            let global_threads = globals.hand_over_threads();
            let web_finished = web_finished.clone();
            let leave = Arc::clone(&leave);
            std::thread::Builder::new()
                .name("consumer".into())
                .spawn(move || {
                    let idle_exited = consumer::poll_loop(&consumer, &shared, &stop, idle);
                    // The leave flag is set before the stop flag (which the loop saw).
                    std::sync::atomic::fence(Ordering::Acquire);
                    if let Some(thread) = standby_thread {
                        step.enter("closing the standby copies");
                        shared.standbys.stop();
                        let _ = thread.join();
                    }
                    step.enter("closing the consumer");
                    let directory = shared.directory.lock().unwrap_or_else(|p| p.into_inner()).take();
                    // No new cuts: the committer ends once the last one is written.
                    if let Ok(mut cuts) = shared.cuts.lock() {
                        cuts.take();
                    }
                    let spent = Arc::clone(&shared.spent);
                    drop(shared);
                    // A static member that stops idle is not coming back either.
                    if !static_member || idle_exited || leave.load(Ordering::Relaxed) {
                        consumer::leave_group(&consumer, static_member);
                    } else {
                        // librdkafka's close sends no LeaveGroup for a static member: the
                        // group keeps its partitions for it until its session times out.
                        tracing::info!(
                            "static member: its partitions wait for its restart (same worker id) until its session times \
                             out; stop with a leave (SIGINT) when it is not coming back"
                        );
                    }
                    // The data directory stays locked until the consumer is closed (the
                    // global tables' stores close with it), however long that takes.
                    let lock = Arc::new(lock);
                    consumer::close(consumer, &spent, Arc::clone(&lock));
                    step.enter("waiting for the committer's last writes");
                    let _ = committer.join();
                    // What timers sent since the last commit point.
                    stop.store(true, Ordering::Relaxed);
                    step.enter("waiting for the global tables' threads");
                    for thread in global_threads {
                        let _ = thread.join();
                    }
                    // Out of the directory: lookups are no longer sent here.
                    if let Some(directory) = directory {
                        step.enter("leaving the directory of workers");
                        directory.withdraw();
                    }
                    if let Some(web_finished) = &web_finished {
                        web_finished.store(true, Ordering::Relaxed);
                    }
                    step.enter("flushing what timers sent");
                    if let Err(error) = sink.flush() {
                        tracing::warn!("records sent by timers were not acknowledged: {error}");
                    }
                    drop(lock);
                    finished.store(true, Ordering::Relaxed);
                    let _ = done_tx.send(());
                })
                .map_err(|e| {
                    // The standby thread ends with it (it would keep the worker's state).
                    standbys.stop();
                    Error::io("starting the consumer thread", e)
                })?;
        }
        let reporter = tokio::spawn(Arc::clone(&metrics).report_every_second());
        for timer in app.timers() {
            let name = format!("timer {}", timer.name());
            let ctx = TaskContext::standalone(&name, &timer.sends, Arc::clone(&side_sink), Arc::clone(&metrics));
            tokio::spawn(timers::run(timer.clone(), Arc::new(ctx), Arc::clone(&stop)));
            tracing::info!("timer `{}` runs {}", timer.name(), timer.describe());
        }
        Ok(WorkerHandle {
            stop,
            leave,
            poll_wake,
            metrics,
            done,
            finished,
            reporter,
            web,
            shutdown_timeout: options.shutdown_timeout,
            step,
            _embedded: embedded,
        })
    }
}

/// Starts the thread that keeps the worker's standby copies (see `standby.rs`), with a
/// restorer of its own and a consumer that reads the group's committed offsets.
fn start_standbys(
    shared: &Arc<consumer::Shared>,
    config: &ClientConfig,
    app_id: &str,
    exactly_once: bool,
    partitions: std::collections::HashMap<String, i32>,
    ends: &Arc<restore::Ends>,
) -> Result<std::thread::JoinHandle<()>> {
    let restorer = Restorer::new(config, Arc::clone(&shared.metrics), ends, 1);
    let mut offsets_config = config.clone();
    offsets_config
        .set("group.id", app_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    if exactly_once {
        // Offsets of transactions still open are not taken for committed.
        offsets_config.set("isolation.level", "read_committed");
    }
    let offsets: rdkafka::consumer::BaseConsumer = offsets_config
        .create()
        .map_err(|e| Error::kafka("creating the standby copies' consumer", e))?;
    let shared = Arc::clone(shared);
    tracing::info!(
        "standby replicas: {}; this worker keeps warm copies of table partitions other workers hold",
        shared.standbys.replicas()
    );
    std::thread::Builder::new()
        .name("standby".into())
        .spawn(move || standby::run(&shared.standbys, &shared, &restorer, &offsets, &partitions))
        .map_err(|e| Error::io("starting the standby thread", e))
}

/// What the web server needs of the worker, and the flag that says it has stopped.
fn web_state(
    app: &App,
    url: &str,
    shared: &Arc<consumer::Shared>,
    metrics: &Arc<Metrics>,
    directory: Arc<crate::web::directory::Directory>,
    partitions: std::collections::HashMap<String, i32>,
) -> Result<(crate::web::WebState, Arc<AtomicBool>)> {
    let tables = app
        .tasks()
        .into_iter()
        .flat_map(|task| {
            let source = task.sources.first().map(|s| s.name.to_string()).unwrap_or_default();
            let count = partitions.get(&source).copied().unwrap_or(1);
            let name = task.name.clone();
            task.tables.into_iter().map(move |spec| crate::web::TableInfo {
                spec,
                task: name.clone(),
                source: source.clone(),
                partitions: count,
            })
        })
        .collect();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| Error::Config(format!("creating the web server's client: {e}")))?;
    let finished = Arc::new(AtomicBool::new(false));
    let state = crate::web::WebState {
        app_id: app.id().to_string(),
        url: url.to_string(),
        tables,
        local: Arc::new(consumer::WebView(Arc::downgrade(shared))),
        metrics: Arc::clone(metrics),
        directory,
        client,
        topology: app.topology(),
        partitions,
        rates: std::sync::Mutex::default(),
        finished: Arc::clone(&finished),
        started: std::time::Instant::now(),
    };
    Ok((state, finished))
}

/// The worker id kept in `app_dir` (made the first time: 16 hex digits from the clock and
/// the process id).
fn worker_id(app_dir: &Path) -> Result<String> {
    let path = app_dir.join("worker.id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = format!("{:016x}", (nanos as u64) ^ (u64::from(std::process::id()) << 32));
    std::fs::write(&path, &id).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    tracing::info!("a new worker id, {id}, kept in {}", path.display());
    Ok(id)
}

/// Waits until the cluster's metadata shows every topic of the plan.
async fn wait_for_topics(config: &ClientConfig, names: &[String], stop: Arc<AtomicBool>) -> Result<()> {
    let config = config.clone();
    let names = names.to_vec();
    tokio::task::spawn_blocking(move || {
        for _ in 0..60 {
            let existing = broker::wait_for_cluster(&config, &|| stop.load(Ordering::Relaxed))?;
            if names.iter().all(|n| existing.contains_key(n)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(Error::Config(format!("topics {names:?} did not appear on the broker")))
    })
    .await
    .map_err(|e| Error::Config(format!("startup failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_is_a_second_or_a_third_of_a_shorter_session() {
        let none = ClientConfig::new();
        assert_eq!(heartbeat_ms(&none, &[]), 1000, "Kafka's 45-s default session");
        let mut short = ClientConfig::new();
        short.set("session.timeout.ms", "2400");
        assert_eq!(heartbeat_ms(&short, &[]), 800);
        // The consumer's own setting wins over the client's, the last one over earlier ones.
        let consumer = [
            ("session.timeout.ms".to_string(), "1500".to_string()),
            ("session.timeout.ms".to_string(), "30000".to_string()),
        ];
        assert_eq!(heartbeat_ms(&short, &consumer), 1000);
        assert_eq!(heartbeat_ms(&none, &consumer[..1]), 500);
        let mut odd = ClientConfig::new();
        odd.set("session.timeout.ms", "soon");
        assert_eq!(heartbeat_ms(&odd, &[]), 1000, "librdkafka refuses it anyway");
    }
}

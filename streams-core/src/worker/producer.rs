//! The worker's producer: records are enqueued without waiting, deliveries are checked at
//! the commit point (rdkafka issues #464 and #695: awaiting each send serialises them).

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::topic_handles::TopicHandles;
use crate::metrics::Metrics;
use crate::task::sink::{FlushError, OutRecord, Refused, Sink, SinkError};
use crate::{Error, Result};

/// A producer's context: its deliveries go to the sink's [`DeliveryState`] (which outlives
/// the producer when a transactional one is made anew).
pub(crate) struct Deliveries(Arc<DeliveryState>);

/// Tracks deliveries: failures since the last flush, and the last acknowledged offset of
/// every changelog partition (the stores' checkpoints).
pub(crate) struct DeliveryState {
    /// Whether the producer is transactional: only then are purged records (an abort's)
    /// of no concern.
    transactional: bool,
    /// Deliveries that failed since the last flush, by [`Lane`] (the tasks' first): a flush
    /// reports its own lane's only.
    failures: Mutex<Vec<Failures>>,
    metrics: Arc<Metrics>,
    /// What the deliveries tallied, by topic.
    tallies: Mutex<Tallies>,
}

/// What the delivery reports tally per topic: the records out (the worker's
/// `streams_records_out` counters) and the last acknowledged offset of each changelog
/// partition (the stores' checkpoints).
///
/// A report names its topic by librdkafka's handle of it. The handle's address finds the
/// topic (its name's bytes compared, in case another topic took the address since): read as
/// text and looked up by name for every report, the name cost more than the rest of a
/// report's tally.
#[derive(Default)]
struct Tallies {
    by_handle: HashMap<usize, usize, foldhash::fast::RandomState>,
    by_name: HashMap<String, usize, foldhash::fast::RandomState>,
    topics: Vec<TopicTally>,
}

/// One topic's tally.
struct TopicTally {
    name: String,
    /// The counters of records out, by partition: found without allocating for each
    /// delivery.
    out: Vec<Option<prometheus_client::metrics::counter::Counter>>,
    /// By partition, the last acknowledged offset of a changelog record (-1: none yet).
    changelog: Vec<i64>,
}

impl Tallies {
    /// The tally of a topic, by name.
    fn named(&mut self, name: &str) -> &mut TopicTally {
        let index = self.index(name);
        &mut self.topics[index]
    }

    /// Where the tally of a topic is, made at its first record.
    fn index(&mut self, name: &str) -> usize {
        if let Some(index) = self.by_name.get(name) {
            return *index;
        }
        self.topics.push(TopicTally {
            name: name.to_string(),
            out: Vec::new(),
            changelog: Vec::new(),
        });
        self.by_name.insert(name.to_string(), self.topics.len() - 1);
        self.topics.len() - 1
    }

    /// The tally of a delivered record's topic.
    fn of(&mut self, message: &BorrowedMessage<'_>) -> &mut TopicTally {
        // librdkafka gives every message it delivers the topic it was produced to (the
        // message holds a reference on it); none is never seen.
        let handle = message.topic_ptr();
        if handle.is_null() {
            return self.named("");
        }
        // SAFETY: the report's message, and so its topic, live through this call; a topic's
        // name is NUL-terminated and lives with the topic.
        let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(handle)) }.to_bytes();
        let index = self.at(handle as usize, name, || message.topic());
        &mut self.topics[index]
    }

    /// Where the tally is of the topic whose handle is at `handle` and whose name is `name`
    /// (`text`: the name as text, read only for a handle not seen, or seen with another name).
    fn at<'m>(&mut self, handle: usize, name: &[u8], text: impl FnOnce() -> &'m str) -> usize {
        if let Some(&index) = self.by_handle.get(&handle) {
            if self.topics[index].name.as_bytes() == name {
                return index;
            }
        }
        let index = self.index(text());
        self.by_handle.insert(handle, index);
        index
    }
}

impl TopicTally {
    /// A changelog record was acknowledged at `offset`.
    fn changelog_acknowledged(&mut self, partition: i32, offset: i64) {
        let Ok(index) = usize::try_from(partition) else { return };
        if self.changelog.len() <= index {
            self.changelog.resize(index + 1, -1);
        }
        self.changelog[index] = self.changelog[index].max(offset);
    }

    fn count_out(&mut self, partition: i32, metrics: &Metrics) {
        let Ok(index) = usize::try_from(partition) else { return };
        if self.out.len() <= index {
            self.out.resize(index + 1, None);
        }
        let counter = self.out[index].get_or_insert_with(|| {
            let labels = crate::metrics::TopicPartition::new(&self.name, partition);
            metrics.families.records_out.get_or_create_owned(&labels)
        });
        counter.inc();
    }
}

/// Who flushes a record, and so learns of its failure. The tasks' producer serves the tasks
/// (their cuts flush it before committing offsets, as do timers and the directory of workers
/// under at-least-once) and each global table (its thread flushes before writing its
/// positions past its dead letters); under exactly-once the global tables share the side
/// producer. Each flush takes its own lane's failures: the committer does not commit offsets
/// past a task's refused record because another flush took its failure, and a global table
/// does not write its position past a dead letter that failed for the same reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lane(usize);

impl Lane {
    /// The tasks' lane, every producer's first.
    pub(crate) const TASKS: Lane = Lane(0);
}

/// The delivery opaque of a record: whether it is a changelog record (only those need their
/// offsets), and its lane.
fn opaque(changelog: bool, lane: Lane) -> usize {
    usize::from(changelog) | lane.0 << 1
}

/// A record's changelog flag and lane from its delivery opaque.
fn from_opaque(opaque: usize) -> (bool, Lane) {
    (opaque & 1 == 1, Lane(opaque >> 1))
}

impl DeliveryState {
    /// What failed in `lane` since its last flush: `visit` sees it (the tasks' lane for an
    /// unknown one).
    fn failures_of<T>(&self, lane: Lane, visit: impl FnOnce(&mut Failures) -> T) -> Option<T> {
        let mut lanes = self.failures.lock().ok()?;
        let index = if lane.0 < lanes.len() { lane.0 } else { 0 };
        lanes.get_mut(index).map(visit)
    }
}

/// Refused records a flush reports at most (the first ones).
const MAX_REFUSED: usize = 100;

/// What failed since the last flush.
#[derive(Default)]
struct Failures {
    /// Records the broker refused, each for itself (at most [`MAX_REFUSED`] kept).
    refused: Vec<Refused>,
    /// Refused records past [`MAX_REFUSED`], not kept: they can go nowhere, so the flush
    /// fails whatever the app chose for refused records.
    more: usize,
    /// The first failure that is not a record's own (a timeout, a fenced producer).
    other: Option<String>,
    /// Records not taken because the transaction can only abort: the consequence of a
    /// refused record (which then says why), or of something the commit will report.
    not_taken: Option<String>,
}

impl Failures {
    fn take(&mut self) -> std::result::Result<(), FlushError> {
        let mut failures = std::mem::take(self);
        if failures.refused.is_empty() && failures.other.is_none() {
            failures.other = failures.not_taken.take();
        }
        let other = match (failures.more, failures.other) {
            (0, other) => other,
            (more, None) => Some(format!("{more} more records refused")),
            (more, Some(other)) => Some(format!("{more} more records refused; {other}")),
        };
        if failures.refused.is_empty() && other.is_none() {
            Ok(())
        } else {
            Err(FlushError {
                refused: failures.refused,
                other,
            })
        }
    }
}

/// Whether the broker refused this record for what it is (its size, its contents, its topic),
/// so that the same record would be refused again: those may go to a dead-letter topic. Other
/// failures (timeouts, a fenced producer, records purged by a transaction's abort) are the
/// producer's, not the record's.
/// A topic the worker may not write, or that does not exist, fails every record sent to it:
/// that stops the worker (a dead-letter topic would get the whole stream).
fn refuses_the_record(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            InvalidMessage
                | InvalidMessageSize
                | MessageSizeTooLarge
                | InvalidTimestamp
                | PolicyViolation
                | InvalidRecord
        )
    )
}

impl DeliveryState {
    /// The last acknowledged offset of a changelog partition, if any.
    fn changelog_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        let tallies = self.tallies.lock().ok()?;
        let tally = &tallies.topics[*tallies.by_name.get(topic)?];
        let offset = *tally.changelog.get(usize::try_from(partition).ok()?)?;
        (offset >= 0).then_some(offset)
    }
}

impl ClientContext for Deliveries {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.metrics.client_error("producer", &error, reason);
    }
}

impl ProducerContext for Deliveries {
    /// Whether it is a changelog record, and its lane (see [`opaque`]).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let state = &self.0;
        let (changelog, lane) = from_opaque(opaque);
        match result {
            Ok(message) => {
                let Ok(mut tallies) = state.tallies.lock() else { return };
                let tally = tallies.of(message);
                tally.count_out(message.partition(), &state.metrics);
                if changelog {
                    tally.changelog_acknowledged(message.partition(), message.offset());
                }
            }
            Err((error, _))
                if state.transactional
                    && matches!(
                        error.rdkafka_error_code(),
                        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                    ) =>
            {
                // Purged by an abort (or a producer made anew): their transaction is over and
                // its input is processed again.
                tracing::debug!("a record of an aborted transaction was purged");
            }
            Err((error, message)) => {
                if lane != Lane::TASKS {
                    // A global table's dead letter: its flush says so too, within 100 ms.
                    tracing::warn!("a dead letter of a global table to {} failed: {error}", message.topic());
                }
                state.failures_of(lane, |failures| {
                    if !refuses_the_record(error) {
                        failures
                            .other
                            .get_or_insert_with(|| format!("a record to {} failed: {error}", message.topic()));
                    } else if failures.refused.len() >= MAX_REFUSED {
                        failures.more += 1;
                    } else {
                        let headers = message
                            .headers()
                            .map(|headers| {
                                headers
                                    .iter()
                                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                    .collect::<Vec<_>>()
                            })
                            .unwrap_or_default()
                            .into();
                        failures.refused.push(Refused {
                            record: OutRecord {
                                topic: message.topic().into(),
                                partition: Some(message.partition()),
                                key: message.key().map(<[u8]>::to_vec),
                                value: message.payload().map(<[u8]>::to_vec),
                                headers,
                                timestamp: message.timestamp().to_millis(),
                                changelog,
                            },
                            error: error.to_string(),
                        });
                    }
                });
            }
        }
    }
}

/// How long one wait of the delivery reports' thread lasts when nothing ends it (a report
/// and a stop do).
const REPORT_WAIT: Duration = Duration::from_secs(30);

/// The wait of one read when librdkafka gives no handle on the producer's main queue.
const REPORT_POLL: Duration = Duration::from_secs(5);

/// The producer's `linger.ms` unless the user's settings (`--config`, the config file) name
/// one: how long records wait to fill a batch.
const DEFAULT_LINGER_MS: &str = "5";

/// A producer whose delivery reports a thread of its own serves.
///
/// rdkafka's `ThreadedProducer` polls in calls of 100 ms, and each call spins through its
/// last millisecond (a remaining wait under 1 ms is 0 ms for librdkafka, which returns at
/// once): measured, ~9 ms of CPU every second on an idle worker, most of its idle cost;
/// calls of 5 s still spun ~0.16 ms a second. This thread parks until the producer's main
/// queue holds something (a delivery report, an error) and then takes what it holds without
/// waiting; a stop unparks it too. The thread ends (and destroys the producer) at once after
/// a stop (within `REPORT_POLL` when librdkafka gives no handle on the queue); nothing
/// waits for it.
pub(crate) struct PolledProducer {
    /// Dropped before the producer (fields drop in order): handles on its client.
    topics: TopicHandles,
    producer: Arc<BaseProducer<Deliveries>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    reports: std::thread::Thread,
}

impl PolledProducer {
    fn create(config: &ClientConfig, state: &Arc<DeliveryState>) -> Result<Self> {
        let producer: BaseProducer<Deliveries> = config
            .create_with_context(Deliveries(Arc::clone(state)))
            .map_err(|e| Error::kafka("creating the producer", e))?;
        let producer = Arc::new(producer);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (polled, stopped) = (Arc::clone(&producer), Arc::clone(&stop));
        let reports = std::thread::Builder::new()
            .name("producer-reports".into())
            .spawn(move || serve_reports(&polled, &stopped))
            .map_err(|e| Error::Config(format!("cannot start the producer's thread: {e}")))?;
        Ok(Self {
            topics: TopicHandles::default(),
            producer,
            stop,
            reports: reports.thread().clone(),
        })
    }
}

/// Serves `producer`'s delivery reports until `stop` is set. The producer is dropped (and
/// destroyed) with the caller's handle on it, after its queue's.
fn serve_reports(producer: &BaseProducer<Deliveries>, stop: &std::sync::atomic::AtomicBool) {
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
    let Some(main) = crate::message::queue::Queue::main_of(producer.client()) else {
        tracing::debug!("librdkafka gave no handle on the producer's queue; reading it in timed waits");
        while !stopped() {
            producer.poll(REPORT_POLL);
        }
        return;
    };
    let main = main.unpark_on_arrival(std::thread::current());
    while !stopped() {
        // What came since the queue was last empty; each `poll` takes one event.
        loop {
            let waiting = main.len();
            if waiting == 0 || stopped() {
                break;
            }
            for _ in 0..waiting {
                producer.poll(Duration::ZERO);
            }
        }
        // An arrival after the queue was seen empty unparks this at once.
        std::thread::park_timeout(REPORT_WAIT);
    }
    drop(main);
}

impl std::ops::Deref for PolledProducer {
    type Target = BaseProducer<Deliveries>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl Drop for PolledProducer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.reports.unpark();
    }
}

/// The Kafka producer as a [`Sink`].
pub(crate) struct KafkaSink {
    /// The producer: made anew (under exactly-once) after a transaction whose outcome is
    /// not known.
    producer: std::sync::RwLock<Arc<PolledProducer>>,
    state: Arc<DeliveryState>,
    /// The settings to make it anew with.
    config: ClientConfig,
    /// Whether it is transactional (exactly-once).
    transactional: bool,
    /// Whether records were taken since the last [`Sink::take_sent`].
    sent: std::sync::atomic::AtomicBool,
}

impl KafkaSink {
    /// Exactly-once: a transactional producer (`transactional.id`), its transactions
    /// initialised (which fences an earlier producer with the same id) and the first begun.
    /// Blocks until the broker answers.
    pub(crate) fn transactional(
        mut config: ClientConfig,
        metrics: Arc<Metrics>,
        transactional_id: &str,
    ) -> Result<Self> {
        config.set("transactional.id", transactional_id);
        // A transaction's first request after the last one's commit is often answered
        // CONCURRENT_TRANSACTIONS while the broker writes the markers; librdkafka retries it
        // after `retry.backoff.ms` (100 ms by default), a whole commit interval. Kafka's Java
        // producer retries this case after 20 ms; so do we, unless set otherwise.
        if config.get("retry.backoff.ms").is_none() {
            config.set("retry.backoff.ms", "20");
        }
        let sink = Self::with(config, metrics, true)?;
        sink.start_transactions()?;
        Ok(sink)
    }

    /// The producer (exactly-once commits its transactions).
    pub(crate) fn producer(&self) -> Arc<PolledProducer> {
        Arc::clone(&self.producer.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn new(config: ClientConfig, metrics: Arc<Metrics>) -> Result<Self> {
        Self::with(config, metrics, false)
    }

    fn with(mut config: ClientConfig, metrics: Arc<Metrics>, transactional: bool) -> Result<Self> {
        // Idempotence keeps each partition's records in order through retries; the
        // partitioner is the Java clients' (a key goes where Kafka Streams would put it).
        config
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random");
        // (`queue.buffering.max.ms` is librdkafka's other name for it.)
        if config.get("linger.ms").is_none() && config.get("queue.buffering.max.ms").is_none() {
            config.set("linger.ms", DEFAULT_LINGER_MS);
        }
        let state = Arc::new(DeliveryState {
            transactional,
            failures: Mutex::new(vec![Failures::default()]),
            metrics,
            tallies: Mutex::new(Tallies::default()),
        });
        let producer = PolledProducer::create(&config, &state)?;
        Ok(Self {
            producer: std::sync::RwLock::new(Arc::new(producer)),
            state,
            config,
            transactional,
            sent: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Exactly-once, after a transaction whose outcome is unknown: a new producer with the
    /// same transactional id, its transactions initialised — which ends the old one's open
    /// transaction and fences whatever it still has in flight — and the next one begun.
    pub(crate) fn reinit(&self) -> Result<()> {
        let fresh = PolledProducer::create(&self.config, &self.state)?;
        let old = {
            let mut slot = self.producer.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *slot, Arc::new(fresh))
        };
        // What the old one had queued is dropped: the transaction it belonged to is over.
        old.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        drop(old);
        // The old producer's topics are gone: their addresses find nothing any more.
        if let Ok(mut tallies) = self.state.tallies.lock() {
            tallies.by_handle.clear();
        }
        self.start_transactions()?;
        self.forget_failures();
        Ok(())
    }

    /// Initialises the producer's transactions (fencing an earlier producer with the same
    /// id) and begins the first. Blocks until the broker answers.
    fn start_transactions(&self) -> Result<()> {
        let producer = self.producer();
        producer
            .init_transactions(Duration::from_secs(60))
            .map_err(|e| Error::kafka("initialising transactions", e))?;
        producer
            .begin_transaction()
            .map_err(|e| Error::kafka("beginning a transaction", e))?;
        Ok(())
    }

    /// After an abort: what failed belonged to the aborted transaction.
    pub(crate) fn forget_failures(&self) {
        if let Ok(mut lanes) = self.state.failures.lock() {
            lanes.iter_mut().for_each(|failures| *failures = Failures::default());
        }
    }

    /// A lane of its own (see [`Lane`]).
    fn new_lane(&self) -> Lane {
        let mut lanes = self.state.failures.lock().unwrap_or_else(|p| p.into_inner());
        lanes.push(Failures::default());
        Lane(lanes.len() - 1)
    }
}

impl KafkaSink {
    /// Produces `record` (librdkafka copies it); `Err(None)`: the producer's queue is full.
    fn produce(&self, record: &OutRecord, lane: Lane) -> Result<(), Option<SinkError>> {
        let producer = self.producer.read().unwrap_or_else(|p| p.into_inner());
        let opaque = opaque(record.changelog, lane);
        match producer.topics.produce(producer.client(), record, opaque) {
            Ok(()) => {
                // Read first: the flag's line is written once per round, not per record.
                if !self.sent.load(std::sync::atomic::Ordering::Relaxed) {
                    self.sent.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            }
            Err(RDKafkaErrorCode::QueueFull) => Err(None),
            Err(RDKafkaErrorCode::State) if self.transactional => {
                // The transaction can only abort now (a record of it was refused, or the
                // producer was fenced): librdkafka takes no more records into it. This one is
                // made again when the round's input is processed again after the abort; the
                // round's flush fails, naming the first cause.
                self.state.failures_of(lane, |failures| {
                    failures.not_taken.get_or_insert_with(|| {
                        format!(
                            "records to {} were not taken: the transaction can only abort",
                            record.topic
                        )
                    });
                });
                Ok(())
            }
            Err(error) => Err(Some(SinkError::Failed(format!(
                "cannot produce to {}: {}",
                record.topic,
                KafkaError::MessageProduction(error)
            )))),
        }
    }
}

impl KafkaSink {
    fn enqueue_in(&self, record: OutRecord, lane: Lane) -> Result<(), SinkError> {
        match self.produce(&record, lane) {
            Ok(()) => Ok(()),
            Err(None) => Err(SinkError::Full(record)),
            Err(Some(error)) => Err(error),
        }
    }

    fn enqueue_copy_in(&self, record: &OutRecord, lane: Lane) -> Result<(), SinkError> {
        match self.produce(record, lane) {
            Ok(()) => Ok(()),
            Err(None) => Err(SinkError::Full(record.clone())),
            Err(Some(error)) => Err(error),
        }
    }

    /// Waits until every record is acknowledged; an error if one of `lane`'s failed.
    fn flush_lane(&self, lane: Lane) -> Result<(), FlushError> {
        let mut waited = 0u64;
        loop {
            // librdkafka's own flush, which waits for the delivery reports' thread to serve
            // the reports and looks again every 10 ms. (rdkafka's `flush` waits in `poll` up
            // to 100 ms at a time, while the producer's own thread takes the reports: every
            // flush with records in flight took 100 ms, which every exactly-once commit
            // waits for.)
            // SAFETY: the handle is the live producer's, and rd_kafka_flush may be called from
            // any thread.
            let producer = self.producer();
            let error = unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), 10_000) };
            match RDKafkaErrorCode::from(error) {
                RDKafkaErrorCode::NoError => break,
                RDKafkaErrorCode::OperationTimedOut => {
                    waited += 10;
                    tracing::warn!(
                        "{} records not yet acknowledged after {waited}s; is the broker reachable?",
                        producer.in_flight_count()
                    );
                }
                error => return Err(FlushError::other(KafkaError::Flush(error).to_string())),
            }
        }
        if let Some((code, reason)) = self.producer().client().fatal_error() {
            // The producer cannot go on (its queue was purged): nothing it had is delivered.
            return Err(FlushError::other(format!(
                "the producer failed for good: {code}: {reason}"
            )));
        }
        self.state
            .failures_of(lane, Failures::take)
            .unwrap_or_else(|| Err(FlushError::other("the delivery state was poisoned")))
    }
}

/// The tasks' lane of the producer: what the committer flushes.
impl Sink for KafkaSink {
    fn enqueue(&self, record: OutRecord) -> Result<(), SinkError> {
        self.enqueue_in(record, Lane::TASKS)
    }

    fn enqueue_copy(&self, record: &OutRecord) -> Result<(), SinkError> {
        self.enqueue_copy_in(record, Lane::TASKS)
    }

    fn flush(&self) -> Result<(), FlushError> {
        self.flush_lane(Lane::TASKS)
    }

    fn changelog_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.state.changelog_offset(topic, partition)
    }

    /// Records of any lane: under exactly-once, each is in the open transaction.
    fn take_sent(&self) -> bool {
        self.sent.swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

/// A lane of a producer of its own (see [`Lane`]), for one sender outside the tasks (a
/// global table): its records go out with the others and its flush waits for all of them,
/// but reports the failures of its own records only.
pub(crate) struct SideLane {
    sink: Arc<KafkaSink>,
    lane: Lane,
}

impl SideLane {
    pub(crate) fn new(sink: &Arc<KafkaSink>) -> Self {
        Self {
            sink: Arc::clone(sink),
            lane: sink.new_lane(),
        }
    }
}

impl Sink for SideLane {
    fn enqueue(&self, record: OutRecord) -> Result<(), SinkError> {
        self.sink.enqueue_in(record, self.lane)
    }

    fn enqueue_copy(&self, record: &OutRecord) -> Result<(), SinkError> {
        self.sink.enqueue_copy_in(record, self.lane)
    }

    fn flush(&self) -> Result<(), FlushError> {
        self.sink.flush_lane(self.lane)
    }

    fn changelog_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.sink.changelog_offset(topic, partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DeliveryState {
        DeliveryState {
            transactional: false,
            failures: Mutex::new(vec![Failures::default()]),
            metrics: Arc::new(Metrics::default()),
            tallies: Mutex::new(Tallies::default()),
        }
    }

    #[test]
    fn the_users_linger_setting_is_kept_and_ours_fills_in_for_none() {
        let sink_with = |name: &str, linger: Option<&str>| {
            let mut config = ClientConfig::new();
            config.set("bootstrap.servers", "127.0.0.1:1");
            if let Some(linger) = linger {
                config.set(name, linger);
            }
            KafkaSink::new(config, Arc::new(Metrics::default())).expect("producer")
        };
        let sink = |linger: Option<&str>| sink_with("linger.ms", linger);
        assert_eq!(sink(Some("50")).config.get("linger.ms"), Some("50"));
        assert_eq!(sink(None).config.get("linger.ms"), Some(DEFAULT_LINGER_MS));
        // librdkafka's other name for it counts as the user's setting too.
        let alias = sink_with("queue.buffering.max.ms", Some("50"));
        assert_eq!(alias.config.get("linger.ms"), None);
        assert_eq!(alias.config.get("queue.buffering.max.ms"), Some("50"));
        // What keeps records in order and partitioned as Kafka's Java clients do stays.
        assert_eq!(sink(None).config.get("enable.idempotence"), Some("true"));
        assert_eq!(sink(None).config.get("partitioner"), Some("murmur2_random"));
    }

    /// A flush finds every report of what it flushed served (the changelog's offsets are
    /// the stores' checkpoints) while records keep coming, and a stop ends the reports'
    /// thread.
    #[test]
    fn a_flush_finds_every_report_served_and_a_stop_ends_the_reports_thread() {
        use crate::broker::EmbeddedBroker;
        use crate::task::sink::Headers;
        let broker = EmbeddedBroker::start().expect("broker");
        broker.create_topic("gathered-changelog", 1).expect("topic");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", broker.bootstrap_servers());
        let sink = KafkaSink::new(config, Arc::new(Metrics::default())).expect("producer");
        let record = |n: i64| OutRecord {
            topic: Arc::from("gathered-changelog"),
            partition: Some(0),
            key: Some(n.to_string().into_bytes()),
            value: Some(b"v".to_vec()),
            headers: Headers::default(),
            timestamp: None,
            changelog: true,
        };
        let mut sent = 0i64;
        for round in 0..20 {
            // Records in small groups a little apart: reports keep coming while the flush
            // begins.
            for _ in 0..10 {
                for _ in 0..5 {
                    sink.enqueue(record(sent)).map_err(|_| "enqueue").expect("enqueued");
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            sink.flush().expect("flushed");
            assert_eq!(
                sink.changelog_offset("gathered-changelog", 0),
                Some(sent - 1),
                "round {round}: every record flushed has its report served"
            );
        }
        // A stop ends the thread (which holds the producer) whatever it was doing.
        let producer = Arc::downgrade(&sink.producer().producer);
        drop(sink);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while producer.upgrade().is_some() {
            assert!(std::time::Instant::now() < deadline, "the reports' thread did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The tasks and the global tables' dead letters share one producer under at-least-once
    /// (the global tables share the side producer under exactly-once); each flush reports its
    /// own lane's failures only. A failure taken by another lane's flush would let the
    /// committer commit offsets past a task's refused record, or a global table write its
    /// position past a dead letter that never went out.
    #[test]
    fn a_flush_reports_the_failures_of_its_own_lane_only() {
        use crate::broker::{EmbeddedBroker, RDKafkaApiKey, RDKafkaRespErr};
        use crate::task::sink::Headers;
        let broker = EmbeddedBroker::start().expect("broker");
        broker.create_topic("lanes", 1).expect("topic");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", broker.bootstrap_servers());
        let tasks = Arc::new(KafkaSink::new(config, Arc::new(Metrics::default())).expect("producer"));
        // Two global tables' lanes.
        let (first, second) = (SideLane::new(&tasks), SideLane::new(&tasks));
        let lanes: [(&str, &dyn Sink); 3] = [("tasks", &*tasks), ("first", &first), ("second", &second)];
        let record = |key: &str| OutRecord {
            topic: Arc::from("lanes"),
            partition: Some(0),
            key: Some(key.as_bytes().to_vec()),
            value: Some(b"v".to_vec()),
            headers: Headers::default(),
            timestamp: None,
            changelog: false,
        };
        let refused_keys = |flushed: Result<(), FlushError>| -> Vec<Vec<u8>> {
            match flushed {
                Ok(()) => Vec::new(),
                Err(error) => {
                    assert!(error.other.is_none(), "{:?}", error.other);
                    error.refused.into_iter().filter_map(|r| r.record.key).collect()
                }
            }
        };
        for (name, refused_lane) in lanes {
            tasks.flush().expect("nothing pending");
            // The next produce request fails as a whole: its records are refused.
            broker
                .fail_requests(
                    RDKafkaApiKey::Produce,
                    vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
                )
                .expect("inject");
            refused_lane
                .enqueue(record(name))
                .map_err(|_| "enqueue")
                .expect("taken");
            // The other lanes flush first: they wait for the refused record too, and do not
            // take its failure.
            for (other, lane) in lanes.iter().filter(|(other, _)| *other != name) {
                assert_eq!(
                    refused_keys(lane.flush()),
                    Vec::<Vec<u8>>::new(),
                    "{other} after {name}'s"
                );
            }
            assert_eq!(
                refused_keys(refused_lane.flush()),
                vec![name.as_bytes().to_vec()],
                "{name}"
            );
            assert_eq!(
                refused_keys(refused_lane.flush()),
                Vec::<Vec<u8>>::new(),
                "{name}: reported once"
            );
        }
    }

    #[test]
    fn a_copy_handed_over_goes_out_as_it_was_and_a_full_queue_gives_it_back() {
        use crate::broker::EmbeddedBroker;
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers as _, Message as _};
        let broker = EmbeddedBroker::start().expect("broker");
        broker.create_topic("copies-changelog", 1).expect("topic");
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("queue.buffering.max.messages", "3")
            .set("linger.ms", "60000");
        let sink = KafkaSink::new(config, Arc::new(Metrics::default())).expect("producer");
        let headers: crate::task::sink::Headers = vec![("streams.cut".to_string(), b"source=t/0/7".to_vec())].into();
        let record = |n: i64| OutRecord {
            topic: Arc::from("copies-changelog"),
            partition: Some(0),
            key: Some(format!("k{n}").into_bytes()),
            value: (n != 1).then(|| format!("v{n}").into_bytes()),
            headers: headers.clone(),
            timestamp: Some(1_000 + n),
            changelog: true,
        };
        for n in 0..3 {
            sink.enqueue_copy(&record(n)).map_err(|_| "enqueue").expect("taken");
        }
        // The queue holds 3 (the linger keeps them there): the fourth comes back whole.
        let fourth = record(3);
        match sink.enqueue_copy(&fourth) {
            Err(SinkError::Full(back)) => {
                assert_eq!(back.key, fourth.key);
                assert_eq!(back.value, fourth.value);
                assert!(back.headers.same(&fourth.headers), "the same shared headers");
                assert_eq!(
                    (back.partition, back.timestamp, back.changelog),
                    (Some(0), Some(1_003), true)
                );
            }
            Ok(()) => panic!("a fourth record in a queue of three"),
            Err(SinkError::Failed(error)) => panic!("{error}"),
        }
        sink.flush().expect("flushed");
        sink.enqueue_copy(&fourth).map_err(|_| "enqueue").expect("taken");
        sink.flush().expect("flushed");
        assert_eq!(sink.changelog_offset("copies-changelog", 0), Some(3));
        // What went out is what was handed over.
        let mut read = ClientConfig::new();
        read.set("bootstrap.servers", broker.bootstrap_servers())
            .set("group.id", "copies-reader");
        let consumer: BaseConsumer = read.create().expect("consumer");
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset("copies-changelog", 0, rdkafka::Offset::Beginning)
            .expect("offset");
        consumer.assign(&list).expect("assign");
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while seen.len() < 4 && std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                let header = message.headers().map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect::<Vec<_>>()
                });
                seen.push((
                    message.key().map(<[u8]>::to_vec),
                    message.payload().map(<[u8]>::to_vec),
                    message.timestamp().to_millis(),
                    header,
                ));
            }
        }
        let want: Vec<_> = (0..4)
            .map(|n| {
                let r = record(n);
                let header = vec![("streams.cut".to_string(), Some(b"source=t/0/7".to_vec()))];
                (r.key, r.value, r.timestamp, Some(header))
            })
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_topic_is_found_by_its_handle_and_a_handle_another_topic_took_by_name() {
        let mut tallies = Tallies::default();
        let reads = std::cell::Cell::new(0);
        let at = |tallies: &mut Tallies, handle: usize, name: &'static str| {
            tallies.at(handle, name.as_bytes(), || {
                reads.set(reads.get() + 1);
                name
            })
        };
        let a = at(&mut tallies, 0x10, "app-a-changelog");
        tallies.topics[a].changelog_acknowledged(0, 5);
        assert_eq!(at(&mut tallies, 0x10, "app-a-changelog"), a);
        // Another topic at the same address (the first one gone, a producer made anew).
        let b = at(&mut tallies, 0x10, "app-b-changelog");
        assert_ne!(a, b);
        tallies.topics[b].changelog_acknowledged(0, 9);
        // The first topic at another address keeps its tally.
        assert_eq!(at(&mut tallies, 0x20, "app-a-changelog"), a);
        assert_eq!(tallies.topics[a].changelog, vec![5]);
        assert_eq!(tallies.topics[b].changelog, vec![9]);
        assert_eq!(at(&mut tallies, 0x10, "app-b-changelog"), b);
        assert_eq!(
            reads.get(),
            3,
            "the name read as text only for an address not known with it"
        );
    }

    #[test]
    fn a_changelog_partition_has_its_last_acknowledged_offset_or_none() {
        let state = state();
        assert_eq!(
            state.changelog_offset("app-t-changelog", 0),
            None,
            "nothing acknowledged"
        );
        let acknowledged = |partition: i32, offset: i64| {
            let mut tallies = state.tallies.lock().expect("tallies");
            tallies
                .named("app-t-changelog")
                .changelog_acknowledged(partition, offset);
        };
        acknowledged(3, 7);
        acknowledged(3, 5);
        assert_eq!(state.changelog_offset("app-t-changelog", 3), Some(7), "the largest");
        assert_eq!(
            state.changelog_offset("app-t-changelog", 1),
            None,
            "a partition below it"
        );
        assert_eq!(
            state.changelog_offset("app-t-changelog", 4),
            None,
            "a partition above it"
        );
        assert_eq!(state.changelog_offset("app-u-changelog", 3), None, "another topic");
        acknowledged(0, 0);
        assert_eq!(state.changelog_offset("app-t-changelog", 0), Some(0), "offset 0 counts");
        // A topic with records out but no changelog record acknowledged has none.
        let metrics = Metrics::default();
        state
            .tallies
            .lock()
            .expect("tallies")
            .named("app-out")
            .count_out(0, &metrics);
        assert_eq!(state.changelog_offset("app-out", 0), None, "not a changelog");
    }
}

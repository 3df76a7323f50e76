//! Global tables on a worker: each is a full copy of its topic in a RocksDB store of its
//! own (`{data_dir}/{app}/global/{table}`), filled from the topic before the worker joins its
//! group, then kept current by a consumer of its own on a thread of its own. No changelog:
//! the topic is one. The store's checkpoint holds the next offset of each partition, so a
//! restart reads only what it has not seen.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};

use crate::metrics::Metrics;
use crate::spec::GlobalTableSpec;
use crate::store::{Checkpoint, Entry, RocksDbStore, StateMemory, StateStore};
use crate::task::sink::OnError;
use crate::task::sink::{OutRecord, Sink, SinkError};
use crate::task::Globals;
use crate::{Error, Result};

/// Entries written to a global store per batch.
const BATCH: usize = 10_000;

/// One global table at work: its consumer, and what applies its records.
struct Copy {
    consumer: BaseConsumer<CopyContext>,
    table: Applier,
}

/// The context of a global table's consumer. It reads its partitions to their ends
/// (`enable.partition.eof`: how `fill` knows the table is filled), and librdkafka reports
/// each end reached as an error too, which rdkafka's default context logs at error level:
/// once for each record that brings the copy up to date. An end is not reported here; other
/// errors are, as the worker's other clients report theirs.
struct CopyContext {
    table: &'static str,
    metrics: Arc<Metrics>,
}

impl ClientContext for CopyContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            let client = format!("global table `{}`", self.table);
            self.metrics.client_error(&client, &error, reason);
        }
    }
}

impl ConsumerContext for CopyContext {}

/// Applies a global table's records to its store: how far it has read, what waits to be
/// written.
struct Applier {
    spec: GlobalTableSpec,
    store: Arc<dyn StateStore>,
    /// Next offset to read, by partition.
    next: BTreeMap<i32, i64>,
    batch: Vec<Entry>,
    /// Records went to the dead-letter topic since the last write.
    dead_lettered: bool,
    /// Records were taken since the last write (into the batch, or past it: dead-lettered,
    /// skipped): the positions moved.
    unwritten: bool,
    /// The dead-letter topic's name, made once: the producer knows a topic's handle by the
    /// name's address, so a name made per record would be a new topic to it each time.
    dead_letter_topic: Arc<str>,
    sink: Arc<dyn Sink>,
    metrics: Arc<Metrics>,
}

/// The worker's global tables, filled; the threads keeping them current end when `stop` is
/// set.
pub(crate) struct GlobalTables {
    pub stores: Globals,
    threads: Vec<JoinHandle<()>>,
    /// Set (and the threads joined) when the tables are dropped before their threads are
    /// handed over: a worker whose start fails after them leaves nothing running.
    abandon: Arc<AtomicBool>,
}

impl GlobalTables {
    /// The threads keeping the tables current, for the worker's stop to join (they end
    /// with its stop flag).
    pub(crate) fn hand_over_threads(&mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.threads)
    }
}

impl Drop for GlobalTables {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.abandon.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Fills every global table of the app from its topic (before the worker processes
/// anything), then keeps each current on a thread of its own until `stop` is set.
pub(crate) fn start(
    app_id: &str,
    specs: Vec<GlobalTableSpec>,
    config: &ClientConfig,
    (dir, memory): (&Path, &StateMemory),
    lane: &dyn Fn() -> Arc<dyn Sink>,
    metrics: &Arc<Metrics>,
    stop: &Arc<AtomicBool>,
) -> Result<GlobalTables> {
    let mut stores: HashMap<&'static str, Arc<dyn StateStore>> = HashMap::new();
    let mut threads = Vec::new();
    // The tables already followed stop (and close their stores) if a later one cannot start.
    let abandon = Arc::new(AtomicBool::new(false));
    for spec in specs {
        let name = spec.table.name;
        let started = (|| {
            let store: Arc<dyn StateStore> = Arc::new(RocksDbStore::open_in(&dir.join(name), memory)?);
            let mut copy = Copy::open(app_id, spec, Arc::clone(&store), config, &lane(), metrics)?;
            copy.fill(stop)?;
            let (stop, abandon) = (Arc::clone(stop), Arc::clone(&abandon));
            let thread = std::thread::Builder::new()
                .name(format!("global-{name}"))
                .spawn(move || copy.follow(&stop, &abandon))
                .map_err(|e| Error::io("starting a global table's thread", e))?;
            Ok::<_, Error>((store, thread))
        })();
        match started {
            Ok((store, thread)) => {
                stores.insert(name, store);
                threads.push(thread);
            }
            Err(error) => {
                // Dropped: the tables already followed stop (see `GlobalTables`'s drop).
                drop(GlobalTables {
                    stores: Arc::new(stores),
                    threads,
                    abandon,
                });
                return Err(error);
            }
        }
    }
    Ok(GlobalTables {
        stores: Arc::new(stores),
        threads,
        abandon,
    })
}

impl Copy {
    fn open(
        app_id: &str,
        spec: GlobalTableSpec,
        store: Arc<dyn StateStore>,
        config: &ClientConfig,
        sink: &Arc<dyn Sink>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self> {
        let mut config = config.clone();
        config
            // Never joins or commits to it: its position is the store's checkpoint.
            .set("group.id", format!("{app_id}-global-{}", spec.table.name))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed");
        if config.get("fetch.queue.backoff.ms").is_none() {
            // Its catch-up does not wait a second each time its prefetch fills.
            config.set("fetch.queue.backoff.ms", super::FETCH_QUEUE_BACKOFF_MS);
        }
        let context = CopyContext {
            table: spec.table.name,
            metrics: Arc::clone(metrics),
        };
        let consumer: BaseConsumer<CopyContext> = config
            .create_with_context(context)
            .map_err(|e| Error::kafka("creating a global table's consumer", e))?;
        let topic = spec.topic.name.to_string();
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(30))
            .map_err(|e| Error::kafka("reading a global table's topic", e))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len() as i32);
        if partitions == 0 {
            return Err(Error::Config(format!(
                "global table `{}`: topic `{topic}` has no partitions on the broker",
                spec.table.name
            )));
        }
        let checkpoint = store.checkpoint()?;
        let mut next = BTreeMap::new();
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            let stored = checkpoint.source(&partition.to_string());
            let offset = stored.map_or(Offset::Beginning, |last| Offset::Offset(last + 1));
            next.insert(partition, stored.map_or(0, |last| last + 1));
            list.add_partition_offset(&topic, partition, offset)
                .map_err(|e| Error::kafka("assigning a global table's topic", e))?;
        }
        consumer
            .assign(&list)
            .map_err(|e| Error::kafka("assigning a global table's topic", e))?;
        Ok(Self {
            consumer,
            table: Applier {
                dead_letter_topic: Arc::from(spec.dead_letter_topic.as_str()),
                spec,
                store,
                next,
                batch: Vec::new(),
                dead_lettered: false,
                unwritten: false,
                sink: Arc::clone(sink),
                metrics: Arc::clone(metrics),
            },
        })
    }

    /// Reads every partition up to its end as the broker has it now.
    fn fill(&mut self, stop: &AtomicBool) -> Result<()> {
        let began = Instant::now();
        let topic = self.table.spec.topic.name.to_string();
        let mut ends = BTreeMap::new();
        for &partition in self.table.next.keys() {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(30))
                .map_err(|e| Error::kafka("reading a global table's topic", e))?;
            ends.insert(partition, high);
        }
        let mut read = 0u64;
        let mut logged = Instant::now();
        let mut done: Vec<i32> = Vec::new();
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Stopping);
            }
            let behind: Vec<i32> = ends
                .iter()
                .filter(|(partition, high)| {
                    !done.contains(partition) && self.table.next.get(partition).is_some_and(|next| next < high)
                })
                .map(|(partition, _)| *partition)
                .collect();
            if behind.is_empty() {
                break;
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    read += 1;
                    let name = self.table.spec.table.name;
                    self.table
                        .take(&message)
                        .map_err(|error| Error::Config(format!("global table `{name}`: {error}")))?;
                }
                // The end of a partition (past transaction markers, which its end offset counts).
                Some(Err(KafkaError::PartitionEOF(partition))) => done.push(partition),
                Some(Err(error)) => tracing::warn!("global table `{}`: {error}", self.table.spec.table.name),
                None => {}
            }
            if logged.elapsed() >= Duration::from_secs(2) {
                logged = Instant::now();
                tracing::info!(
                    "filling global table `{}` from `{topic}`: {read} records so far",
                    self.table.spec.table.name
                );
            }
        }
        self.table.write()?;
        tracing::info!(
            "global table `{}` filled from `{topic}`: {read} records in {:.2}s",
            self.table.spec.table.name,
            began.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Keeps the table current until `stop` is set, then writes what it took; or until
    /// `abandon` is (the worker did not start), writing nothing more (what it took since
    /// its last write is read again at the next start; a write would wait for the broker).
    fn follow(mut self, stop: &AtomicBool, abandon: &AtomicBool) {
        let mut written = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if abandon.load(Ordering::Relaxed) {
                return;
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    if let Err(error) = self.table.take(&message) {
                        self.table
                            .metrics
                            .fail(format!("global table `{}`: {error}", self.table.spec.table.name));
                        return;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(error)) => tracing::warn!("global table `{}`: {error}", self.table.spec.table.name),
            }
            // A record that did not decode moves the positions as one that did: a position
            // left unwritten would send it to the dead-letter topic again after a crash.
            if self.table.unwritten
                && (self.table.batch.len() >= BATCH || written.elapsed() >= Duration::from_millis(100))
            {
                written = Instant::now();
                if let Err(error) = self.table.write() {
                    self.table
                        .metrics
                        .fail(format!("global table `{}`: {error}", self.table.spec.table.name));
                    return;
                }
            }
        }
        if let Err(error) = self.table.write() {
            tracing::warn!("global table `{}`: {error}", self.table.spec.table.name);
        }
    }
}

impl Applier {
    /// Takes a record of the topic into the batch; one that does not decode goes to the
    /// dead-letter topic, or is skipped, or (`OnError::Fail`) fails the take: the position
    /// stays before it, so that the next start reads it again.
    fn take(&mut self, message: &BorrowedMessage<'_>) -> Result<()> {
        let (partition, offset) = (message.partition(), message.offset());
        match (self.spec.entry)(message.key(), message.payload()) {
            Ok(entry) => self.batch.push(entry),
            Err(error) => match self.spec.on_deserialization_error {
                OnError::DeadLetter => self.dead_letter(message, &error)?,
                OnError::Continue => {
                    tracing::warn!(
                        "global table `{}`: cannot take record {}[{partition}]@{offset}: {error}; skipped",
                        self.spec.table.name,
                        message.topic()
                    );
                    self.metrics.skipped.fetch_add(1, Ordering::Relaxed);
                }
                OnError::Fail => {
                    return Err(Error::Config(format!(
                        "cannot take record {}[{partition}]@{offset}: {error}; the worker stops, as \
                         App::on_deserialization_error says",
                        message.topic()
                    )))
                }
            },
        }
        self.next.insert(partition, offset + 1);
        self.unwritten = true;
        if self.batch.len() >= BATCH {
            self.write()?;
        }
        Ok(())
    }

    /// Sends `message` to the dead-letter topic; an error if the producer refuses it (the
    /// position then stays before it).
    fn dead_letter(&mut self, message: &BorrowedMessage<'_>, error: &str) -> Result<()> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let dlq = &*self.dead_letter_topic;
        tracing::warn!(
            "global table `{}`: cannot take record {topic}[{partition}]@{offset}: {error}; copied to dead-letter topic {dlq}",
            self.spec.table.name
        );
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers.push((header.key.to_string(), header.value.unwrap_or_default().to_vec()));
            }
        }
        headers.push(("streams.dlq.topic".into(), topic.as_bytes().to_vec()));
        headers.push(("streams.dlq.partition".into(), partition.to_string().into_bytes()));
        headers.push(("streams.dlq.offset".into(), offset.to_string().into_bytes()));
        headers.push(("streams.dlq.table".into(), self.spec.table.name.as_bytes().to_vec()));
        headers.push(("streams.dlq.stage".into(), b"deserialization".to_vec()));
        headers.push(("streams.dlq.error".into(), error.as_bytes().to_vec()));
        let record = OutRecord {
            topic: Arc::clone(&self.dead_letter_topic),
            partition: None,
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: headers.into(),
            timestamp: message.timestamp().to_millis(),
            changelog: false,
        };
        let mut record = record;
        loop {
            match self.sink.enqueue(record) {
                Ok(()) => {
                    self.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    self.dead_lettered = true;
                    return Ok(());
                }
                // This thread is no task's: it waits for room by sleeping.
                Err(SinkError::Full(back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(SinkError::Failed(error)) => {
                    return Err(Error::Config(format!(
                        "cannot send record {topic}[{partition}]@{offset} to dead-letter topic {dlq}: {error}"
                    )))
                }
            }
        }
    }

    /// Writes the batch with the positions it reaches (once the records it sent to the
    /// dead-letter topic are acknowledged: the positions count them as done).
    fn write(&mut self) -> Result<()> {
        if std::mem::take(&mut self.dead_lettered) {
            self.sink
                .flush()
                .map_err(|e| Error::Config(format!("dead letters of global table `{}`: {e}", self.spec.table.name)))?;
        }
        let checkpoint = Checkpoint {
            changelog_offset: None,
            sources: Some(self.next.iter().map(|(p, next)| (p.to_string(), next - 1)).collect()),
            stream_time: None,
            clocks: Vec::new(),
        };
        self.store.write(&self.batch, &checkpoint)?;
        self.batch.clear();
        self.unwritten = false;
        Ok(())
    }
}

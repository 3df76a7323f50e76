//! The app's directory of workers: which worker's web server holds which partitions, so
//! that a lookup of a key held elsewhere is forwarded to its owner (Kafka Streams carries
//! `application.server` in the group's member metadata; librdkafka's assignors carry no
//! user data, so the workers say it in a topic of the app's own instead).
//!
//! The topic `{app}-workers` (compacted, one partition) holds one record per worker, keyed
//! by its web URL and an id made at its start: its URL and the source partitions it holds,
//! written when it starts, at every assignment and revocation and every 30 s, deleted when it
//! stops. Every worker reads it from the beginning. A partition
//! belongs to the worker whose latest record (by offset) names it: a worker that crashed
//! holding it is superseded by the one the group gave it to next. A stale answer costs a
//! 503 at worst: the worker a lookup is forwarded to answers only for partitions it holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::message::queue::{Queue, Records};
use crate::task::sink::{OutRecord, Sink, SinkError};
use crate::{Error, Result};

/// The directory topic of app `app_id`.
pub fn topic_name(app_id: &str) -> String {
    format!("{app_id}-workers")
}

/// One worker's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    url: String,
    member: Option<String>,
    /// Source partitions held: (topic, partition).
    partitions: Vec<(String, i32)>,
}

/// A worker's latest record, as read.
#[derive(Debug, Clone)]
struct Claim {
    url: String,
    /// The partitions it holds, each with the offset of the first record of this worker's
    /// that named it (since when it holds it, in the directory's order: a record that says
    /// again what a worker holds does not make its claims newer).
    held: Vec<((String, i32), i64)>,
    /// When this reader read it (a worker says what it holds every 30 s).
    seen: std::time::Instant,
}

/// How long a worker's record counts without being said again: a worker that crashed
/// without taking itself out of the directory drops out after this.
const STALE_AFTER: Duration = Duration::from_secs(100);

/// A worker's view of the directory, and its way to write its own record.
pub(crate) struct Directory {
    topic: Arc<str>,
    url: String,
    /// This worker's key in the directory: its URL and an id of this start (two workers
    /// given the same URL by mistake do not delete each other's records).
    key: Vec<u8>,
    sink: Arc<dyn Sink>,
    /// By worker URL: the offset of its latest record and what it holds.
    entries: Mutex<HashMap<Vec<u8>, Claim>>,
    stop: AtomicBool,
    reader: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The reader's queue: a stop ends its wait.
    records: Arc<Records>,
}

impl Directory {
    /// Starts reading the directory of `app_id` (a thread of its own) and returns it.
    pub(crate) fn start(app_id: &str, url: &str, config: &ClientConfig, sink: Arc<dyn Sink>) -> Result<Arc<Self>> {
        let topic = topic_name(app_id);
        let mut config = config.clone();
        config
            .set("group.id", format!("{app_id}-directory-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // An idle directory costs a fetch per wait: Kafka answers a fetch as soon as a
            // record comes, so the wait only sets how often an idle reader asks (librdkafka's
            // default; at 100 ms the reader's fetches were most of an idle worker's CPU). The
            // embedded broker holds a fetch the whole wait: updates come up to 0.5 s later there.
            .set("fetch.wait.max.ms", "500");
        let mut consumer: BaseConsumer = config
            .create()
            .map_err(|e| Error::kafka("creating the directory reader", e))?;
        // The records go to a queue of their own, read in batches; the consumer queue keeps
        // librdkafka's logs and errors, which `poll` hands to rdkafka (and so to tracing).
        // Either queue's arrivals end the reader's wait.
        let records = Arc::new(Records::default());
        if records.open(consumer.client()) {
            records.forward(consumer.client(), &[(topic.as_str(), 0)]);
        } else {
            tracing::debug!("directory: librdkafka gave no queue for records; polling them one at a time");
        }
        {
            let records = Arc::clone(&records);
            consumer.set_nonempty_callback(move || records.wake());
        }
        let events = Queue::consumer_of(consumer.client());
        let reader = Reader {
            records: Arc::clone(&records),
            events,
            consumer,
        };
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, Offset::Beginning)
            .map_err(|e| Error::kafka("reading the directory", e))?;
        reader
            .consumer
            .assign(&list)
            .map_err(|e| Error::kafka("reading the directory", e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let instance = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
        let directory = Arc::new(Self {
            topic: topic.into(),
            url: url.to_string(),
            key: format!("{url} {instance:016x}").into_bytes(),
            sink,
            entries: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            reader: Mutex::new(None),
            records: Arc::clone(&records),
        });
        let weak = Arc::downgrade(&directory);
        let thread = std::thread::Builder::new()
            .name("directory".into())
            .spawn(move || read(&reader, &weak))
            .map_err(|e| Error::io("starting the directory reader", e))?;
        *directory.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(directory)
    }

    /// Says which source partitions this worker holds now.
    pub(crate) fn publish(&self, member: Option<String>, mut partitions: Vec<(String, i32)>) {
        partitions.sort();
        let entry = Entry {
            url: self.url.clone(),
            member,
            partitions,
        };
        match serde_json::to_vec(&entry) {
            Ok(value) => self.send(Some(value)),
            Err(error) => tracing::warn!("directory: cannot encode this worker's record: {error}"),
        }
    }

    /// Takes this worker out of the directory (it stops), and stops reading it.
    pub(crate) fn withdraw(&self) {
        self.send(None);
        self.stop.store(true, Ordering::Relaxed);
        self.records.wake();
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(reader) = reader {
            let _ = reader.join();
        }
    }

    fn send(&self, value: Option<Vec<u8>>) {
        let record = OutRecord {
            topic: Arc::clone(&self.topic),
            partition: Some(0),
            key: Some(self.key.clone()),
            value,
            headers: Default::default(),
            timestamp: None,
            changelog: false,
        };
        match self.sink.enqueue(record) {
            Ok(()) => {}
            Err(SinkError::Full(_)) => tracing::warn!("directory: the producer's queue is full; record not written"),
            Err(SinkError::Failed(error)) => tracing::warn!("directory: {error}"),
        }
    }

    /// The web URL of the worker that holds `topic[partition]`, as far as the directory
    /// says.
    pub(crate) fn owner(&self, topic: &str, partition: i32) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .values()
            .filter(|claim| claim.seen.elapsed() < STALE_AFTER)
            .filter_map(|claim| {
                let (_, since) = claim.held.iter().find(|((t, p), _)| t == topic && *p == partition)?;
                Some((*since, &claim.url))
            })
            .max_by_key(|(since, _)| *since)
            .map(|(_, url)| url.clone())
    }

    /// This worker's web URL, as the directory lists it.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Every worker the directory knows, with the partitions it holds.
    pub(crate) fn workers(&self) -> Vec<(String, Vec<(String, i32)>)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut workers: Vec<_> = entries
            .values()
            .filter(|claim| claim.seen.elapsed() < STALE_AFTER)
            .map(|claim| (claim.url.clone(), claim.held.iter().map(|(tp, _)| tp.clone()).collect()))
            .collect();
        workers.sort();
        workers
    }

    fn apply(&self, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) {
        let Some(key) = key.map(<[u8]>::to_vec) else {
            return;
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match value {
            None => {
                entries.remove(&key);
            }
            Some(bytes) => match serde_json::from_slice::<Entry>(bytes) {
                Ok(entry) => {
                    let before = entries.get(&key).map(|claim| claim.held.clone()).unwrap_or_default();
                    let held = entry
                        .partitions
                        .into_iter()
                        .map(|tp| {
                            let since = before.iter().find(|(held, _)| *held == tp).map_or(offset, |(_, s)| *s);
                            (tp, since)
                        })
                        .collect();
                    let claim = Claim {
                        url: entry.url,
                        held,
                        seen: std::time::Instant::now(),
                    };
                    entries.insert(key, claim);
                }
                Err(error) => tracing::warn!("directory: record at offset {offset} ignored: {error}"),
            },
        }
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        // The reader ends once it sees the directory gone.
        self.records.wake();
    }
}

/// How long the reader waits for a record: a stop ends the wait ([`Records::wake`]), so
/// this only bounds a wait nothing ends.
const READ_WAIT: Duration = Duration::from_secs(30);

/// The reader's librdkafka handles, released in order however the reader ends (a stop, a
/// panic, a thread that never started): its records' queue, its consumer queue, then the
/// consumer (librdkafka's queues go before their client).
struct Reader {
    records: Arc<Records>,
    /// The consumer queue, to see whether it holds anything (`None`: poll it each round).
    events: Option<Queue>,
    consumer: BaseConsumer,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.records.close();
        self.events.take();
    }
}

impl Reader {
    /// Serves what the consumer queue holds: logs and errors, and records when they have no
    /// queue of their own (`polling`; then it waits up to 200 ms for one, which a stop
    /// cannot end).
    fn serve_events(&self, directory: &Directory, polling: bool) {
        let wait = if polling {
            Duration::from_millis(200)
        } else {
            Duration::ZERO
        };
        for _ in 0..64 {
            if !polling && self.events.as_ref().is_some_and(|queue| queue.len() == 0) {
                return;
            }
            match self.consumer.poll(wait) {
                Some(Ok(message)) => directory.apply(message.offset(), message.key(), message.payload()),
                Some(Err(error)) => tracing::debug!("directory: {error}"),
                None if polling || self.events.is_none() => return,
                None => {}
            }
        }
    }
}

/// Reads the directory until it is dropped or withdrawn.
fn read(reader: &Reader, directory: &std::sync::Weak<Directory>) {
    let mut batch = Vec::with_capacity(64);
    loop {
        let taken = reader.records.take_ready(READ_WAIT, 64, &mut batch);
        let Some(directory) = directory.upgrade() else { break };
        if directory.stop.load(Ordering::Relaxed) {
            break;
        }
        reader.serve_events(&directory, taken.is_none());
        for message in batch.drain(..) {
            match message.error() {
                None => directory.apply(message.offset(), message.key(), message.payload()),
                Some(_) => tracing::debug!("directory: {}", message.error_text()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nowhere;
    impl Sink for Nowhere {
        fn enqueue(&self, _: OutRecord) -> std::result::Result<(), SinkError> {
            Ok(())
        }
        fn flush(&self) -> std::result::Result<(), crate::task::sink::FlushError> {
            Ok(())
        }
        fn changelog_offset(&self, _: &str, _: i32) -> Option<i64> {
            None
        }
    }

    fn directory() -> Directory {
        Directory {
            topic: "app-workers".into(),
            url: "http://a".into(),
            key: b"http://a 1".to_vec(),
            sink: Arc::new(Nowhere),
            entries: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            reader: Mutex::new(None),
            records: Arc::new(Records::default()),
        }
    }

    fn entry(url: &str, partitions: &[i32]) -> Vec<u8> {
        let entry = Entry {
            url: url.into(),
            member: None,
            partitions: partitions.iter().map(|p| ("hits".to_string(), *p)).collect(),
        };
        serde_json::to_vec(&entry).unwrap()
    }

    #[test]
    fn the_latest_claim_of_a_partition_wins() {
        let d = directory();
        d.apply(0, Some(b"http://a"), Some(&entry("http://a", &[0, 1])));
        assert_eq!(d.owner("hits", 1).as_deref(), Some("http://a"));
        // A crashed without saying so; the group gave its partitions to B.
        d.apply(1, Some(b"http://b"), Some(&entry("http://b", &[1])));
        assert_eq!(d.owner("hits", 1).as_deref(), Some("http://b"));
        assert_eq!(d.owner("hits", 0).as_deref(), Some("http://a"));
        assert_eq!(d.owner("other", 0), None);
        // B stops: its record is deleted.
        d.apply(2, Some(b"http://b"), None);
        assert_eq!(d.owner("hits", 1).as_deref(), Some("http://a"));
        // A record that does not decode changes nothing.
        d.apply(3, Some(b"http://a"), Some(b"not json"));
        assert_eq!(d.owner("hits", 0).as_deref(), Some("http://a"));
        // A worker that says again what it holds (a zombie whose session expired unnoticed)
        // does not take back what was given to another since.
        d.apply(7, Some(b"http://a"), Some(&entry("http://a", &[0, 1])));
        assert_eq!(d.owner("hits", 0).as_deref(), Some("http://a"));
        d.apply(8, Some(b"http://d"), Some(&entry("http://d", &[0])));
        d.apply(9, Some(b"http://a"), Some(&entry("http://a", &[0, 1])));
        assert_eq!(d.owner("hits", 0).as_deref(), Some("http://d"));
        // Two workers given one URL by mistake keep their own records.
        d.apply(4, Some(b"http://c 1"), Some(&entry("http://c", &[5])));
        d.apply(5, Some(b"http://c 2"), Some(&entry("http://c", &[6])));
        d.apply(6, Some(b"http://c 1"), None);
        assert_eq!(d.owner("hits", 6).as_deref(), Some("http://c"));
        assert_eq!(d.owner("hits", 5), None);
    }

    /// The reader takes the records another worker writes, and a withdraw ends its wait at
    /// once (the wait itself is 30 s).
    #[test]
    fn the_reader_sees_other_workers_and_a_withdraw_ends_it_at_once() {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let broker = crate::broker::EmbeddedBroker::start().expect("broker");
        broker.create_topic(&topic_name("app"), 1).expect("topic");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", broker.bootstrap_servers());
        let directory = Directory::start("app", "http://a", &config, Arc::new(Nowhere)).expect("directory");
        let producer: BaseProducer = config.create().expect("producer");
        let value = entry("http://b", &[3]);
        producer
            .send(
                BaseRecord::to(&topic_name("app"))
                    .partition(0)
                    .key("http://b 2")
                    .payload(&value),
            )
            .map_err(|(error, _)| error)
            .expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
        let began = std::time::Instant::now();
        while directory.owner("hits", 3).is_none() && began.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(directory.owner("hits", 3).as_deref(), Some("http://b"));
        let began = std::time::Instant::now();
        directory.withdraw();
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the withdraw waited {:?} for the reader",
            began.elapsed()
        );
    }
}

//! The broker-free test driver, in the spirit of Kafka Streams' `TopologyTestDriver` and
//! Faust's `agent.test_context()`: the app's real agents run in-process on the same task code
//! as a worker — only the source of records (an in-memory log) and the sink of outputs differ,
//! and stores are in memory. Deterministic and fast; no broker, no disk.
//!
//! ```
//! use streams_core::prelude::*;
//! use streams_core::testing::TestDriver;
//!
//! #[record]
//! #[derive(Debug, PartialEq)]
//! struct Hit { hits: i64, user: String }
//!
//! const HITS: Topic<(), Hit> = Topic::new("hits");
//! const MAJOR: Topic<String, Hit> = Topic::new("major").internal();
//! const COUNTS: Table<String, i64> = Table::new("counts");
//!
//! #[agent(topic = HITS, sends = [MAJOR])]
//! async fn filter(mut hits: Stream<(), Hit>) -> Result<()> {
//!     while let Some(hit) = hits.next().await {
//!         if hit.hits > 20 {
//!             MAJOR.send(&hit.user, &hit).await?;
//!         }
//!     }
//!     Ok(())
//! }
//!
//! #[agent(topic = MAJOR, tables = [COUNTS])]
//! async fn count(mut hits: Stream<String, Hit>) -> Result<()> {
//!     while let Some(event) = hits.next_event().await {
//!         COUNTS.update(&event.key, |n| *n += 1).await?;
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> streams_core::Result<()> {
//! let mut driver = TestDriver::new(App::new("test").agent(filter).agent(count))?;
//! driver.pipe(&HITS, &(), &Hit { hits: 30, user: "ann".into() })?;
//! driver.pipe(&HITS, &(), &Hit { hits: 5, user: "bob".into() })?;
//! driver.pipe_raw("hits", None, Some(b"not json"));
//! driver.run().await?;
//!
//! assert_eq!(driver.records(&MAJOR)?, vec![("ann".to_string(), Hit { hits: 30, user: "ann".into() })]);
//! assert_eq!(driver.table(&COUNTS)?.get("ann"), Some(&1));
//! assert_eq!(driver.dead_letters("filter").len(), 1);
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::agent::AgentSpec;
use crate::codec::Key;
use crate::message::Message;
use crate::record::Record;
use crate::store::{MemoryStore, StateStore};
use crate::stream::{Input, StreamCore};
use crate::table::Table;
use crate::topic::Topic;
use crate::worker::commit::{self, OffsetCommit};
use crate::worker::metrics::Metrics;
use crate::worker::task::{self, OutRecord, Sink, SinkError, TableState, TaskContext};
use crate::{App, Error, Result};

/// A record as it sits in a topic of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRecord {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Headers, as text.
    pub headers: Vec<(String, String)>,
    /// Timestamp (ms) on the driver's clock.
    pub timestamp: i64,
}

impl TestRecord {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Kafka's default partitioner for keyed records (murmur2, as the Java clients and
/// librdkafka's `murmur2_random` compute it).
///
/// ```
/// // The same partitions Kafka's Java producer picks.
/// assert_eq!(streams_core::testing::kafka_partition(b"user-1", 8), streams_core::testing::kafka_partition(b"user-1", 8));
/// assert!(streams_core::testing::kafka_partition(b"", 3) < 3);
/// ```
pub fn kafka_partition(key: &[u8], partitions: i32) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let chunks = key.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// One partition of a driver topic. The records' bytes sit in one buffer, in order, as in
/// a fetch response: reading a partition touches memory in order.
#[derive(Default, Clone)]
struct PartitionLog {
    data: Vec<u8>,
    records: Vec<Stored>,
}

#[derive(Clone)]
struct Stored {
    /// Where the key (then the value) starts in `data`.
    start: usize,
    key_len: Option<usize>,
    value_len: Option<usize>,
    headers: Vec<(String, String)>,
    timestamp: i64,
}

impl PartitionLog {
    fn len(&self) -> usize {
        self.records.len()
    }

    /// Appends a record; returns its offset.
    fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Vec<(String, String)>,
        timestamp: i64,
    ) -> i64 {
        let start = self.data.len();
        self.data.extend_from_slice(key.unwrap_or_default());
        self.data.extend_from_slice(value.unwrap_or_default());
        self.records.push(Stored {
            start,
            key_len: key.map(<[u8]>::len),
            value_len: value.map(<[u8]>::len),
            headers,
            timestamp,
        });
        self.records.len() as i64 - 1
    }

    fn parts(&self, stored: &Stored) -> (Option<&[u8]>, Option<&[u8]>) {
        let value_start = stored.start + stored.key_len.unwrap_or(0);
        let key = stored.key_len.map(|len| &self.data[stored.start..stored.start + len]);
        let value = stored.value_len.map(|len| &self.data[value_start..value_start + len]);
        (key, value)
    }

    /// The record at `offset` as the stream gets it.
    fn message(&self, offset: usize) -> Message {
        let stored = &self.records[offset];
        let (key, value) = self.parts(stored);
        let headers = (!stored.headers.is_empty()).then(|| {
            stored
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |headers, (key, value)| {
                    headers.insert(Header {
                        key,
                        value: Some(value.as_bytes()),
                    })
                })
        });
        Message::new(offset as i64, Some(stored.timestamp), key, value, headers)
    }

    /// The record at `offset`, for inspection.
    fn record(&self, partition: i32, offset: usize) -> TestRecord {
        let stored = &self.records[offset];
        let (key, value) = self.parts(stored);
        TestRecord {
            partition,
            offset: offset as i64,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: stored.headers.clone(),
            timestamp: stored.timestamp,
        }
    }
}

#[derive(Default)]
struct Log {
    topics: HashMap<String, Vec<PartitionLog>, foldhash::fast::RandomState>,
    round_robin: HashMap<String, usize, foldhash::fast::RandomState>,
    clock: i64,
}

/// The driver's topics: the source of records and the sink of outputs.
#[derive(Clone, Default)]
struct Topics(Arc<Mutex<Log>>);

impl Topics {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, record: OutRecord) -> (i32, i64) {
        let mut log = self.log();
        let clock = log.clock;
        let partitions = log.topics.get(&*record.topic).map_or(1, |p| p.len()) as i32;
        let partition = match (record.partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(key)) => kafka_partition(key, partitions),
            (None, None) => {
                let next = log.round_robin.entry(record.topic.to_string()).or_default();
                *next += 1;
                ((*next - 1) % partitions as usize) as i32
            }
        };
        let parts = match log.topics.get_mut(&*record.topic) {
            Some(parts) => parts,
            None => log
                .topics
                .entry(record.topic.to_string())
                .or_insert_with(|| vec![PartitionLog::default()]),
        };
        let index = (partition.max(0) as usize).min(parts.len() - 1);
        let headers = record
            .headers
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let offset = parts[index].push(record.key.as_deref(), record.value.as_deref(), headers, clock);
        (index as i32, offset)
    }
}

impl Sink for Topics {
    fn enqueue(&self, record: OutRecord) -> Result<(), SinkError> {
        self.append(record);
        Ok(())
    }

    fn flush(&self) -> Result<(), String> {
        Ok(())
    }

    fn changelog_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        let log = self.log();
        let records = log.topics.get(topic)?.get(partition as usize)?;
        records.len().checked_sub(1).map(|last| last as i64)
    }
}

#[derive(Default)]
struct Offsets(Mutex<HashMap<(String, i32), i64>>);

impl OffsetCommit for Offsets {
    fn commit(&self, offsets: &[(String, i32, i64)]) -> Result<(), String> {
        let mut committed = self.0.lock().map_err(|_| "poisoned")?;
        for (topic, partition, offset) in offsets {
            committed.insert((topic.clone(), *partition), *offset);
        }
        Ok(())
    }
}

/// Where a driver keeps its tables.
#[derive(Debug, Clone, Default)]
pub enum Stores {
    /// In memory (the default): fast, nothing on disk.
    #[default]
    Memory,
    /// RocksDB under this directory, as a worker keeps them.
    RocksDb(std::path::PathBuf),
}

struct Task {
    topic: String,
    partition: i32,
    tx: mpsc::Sender<Input>,
    delivered: usize,
}

/// Runs an app's agents in-process with no broker. See the [module docs](self).
pub struct TestDriver {
    app: App,
    topics: Topics,
    offsets: Arc<Offsets>,
    tasks: Vec<Task>,
    stores: HashMap<(String, i32), Arc<dyn StateStore>>,
    store_kind: Stores,
    metrics: Arc<Metrics>,
    _committer: std::sync::mpsc::Sender<commit::Cut>,
}

static DRIVERS: AtomicUsize = AtomicUsize::new(0);

impl TestDriver {
    /// A driver for `app`; topics get their declared partition counts (or the app's default).
    /// Must be called inside a tokio runtime.
    pub fn new(app: App) -> Result<Self> {
        Self::with_partitions(app, &[])
    }

    /// A driver where the given topics exist with these partition counts.
    pub fn with_partitions(app: App, existing: &[(&str, i32)]) -> Result<Self> {
        Self::with_stores(app, existing, Stores::Memory)
    }

    /// A driver where the given topics exist with these partition counts, keeping its
    /// tables in `stores`.
    pub fn with_stores(app: App, existing: &[(&str, i32)], stores: Stores) -> Result<Self> {
        let existing: HashMap<String, i32> = existing.iter().map(|(t, p)| (t.to_string(), *p)).collect();
        let plan = app.plan(&existing)?;
        let topics = Topics::default();
        {
            let mut log = topics.log();
            for topic in &plan {
                log.topics.insert(
                    topic.name.clone(),
                    vec![PartitionLog::default(); topic.partitions.max(1) as usize],
                );
            }
        }
        let offsets = Arc::new(Offsets::default());
        let metrics = Arc::new(Metrics::default());
        let (cuts, cut_rx) = std::sync::mpsc::channel();
        {
            let sink: Arc<dyn Sink> = Arc::new(topics.clone());
            let offsets: Arc<dyn OffsetCommit> = offsets.clone();
            let metrics = Arc::clone(&metrics);
            std::thread::Builder::new()
                .name(format!("test-committer-{}", DRIVERS.fetch_add(1, Ordering::Relaxed)))
                .spawn(move || commit::run(cut_rx, sink, offsets, metrics))
                .map_err(|e| Error::io("starting the test committer", e))?;
        }
        let mut driver = Self {
            app,
            topics,
            offsets,
            tasks: Vec::new(),
            stores: HashMap::new(),
            store_kind: stores,
            metrics,
            _committer: cuts,
        };
        for agent in driver.app.agents().to_vec() {
            let partitions = driver.partitions(agent.source.name);
            for partition in 0..partitions {
                driver.start_task(&agent, partition)?;
            }
        }
        Ok(driver)
    }

    fn start_task(&mut self, agent: &AgentSpec, partition: i32) -> Result<()> {
        let mut tables = Vec::new();
        for table in &agent.tables {
            let store: Arc<dyn StateStore> = match &self.store_kind {
                Stores::Memory => Arc::new(MemoryStore::default()),
                Stores::RocksDb(dir) => Arc::new(crate::store::RocksDbStore::open(&crate::store::partition_dir(
                    dir, table.name, partition,
                ))?),
            };
            self.stores
                .insert((table.name.to_string(), partition), Arc::clone(&store));
            tables.push(TableState::new(
                table.name,
                table.changelog_topic(self.app.id()),
                store,
                self.app.table_cache_bytes_value(),
            ));
        }
        let sink: Arc<dyn Sink> = Arc::new(self.topics.clone());
        let ctx = TaskContext::new(
            agent,
            self.app.id(),
            partition,
            tables,
            sink,
            self._committer.clone(),
            Arc::clone(&self.metrics),
        );
        let (tx, rx) = mpsc::channel(1024);
        // Cuts happen at the driver's barriers, never on a timer: runs are deterministic.
        let core = StreamCore::new(Arc::new(ctx), rx, Duration::from_secs(365 * 24 * 3600));
        tokio::spawn(task::run_partition(agent.clone(), core));
        self.tasks.push(Task {
            topic: agent.source.name.to_string(),
            partition,
            tx,
            delivered: 0,
        });
        Ok(())
    }

    /// Partition count of `topic` in the driver (1 for topics the app does not know).
    pub fn partitions(&self, topic: &str) -> i32 {
        self.topics.log().topics.get(topic).map_or(1, |p| p.len() as i32)
    }

    /// Appends a record to a topic, as a producer would (the partition follows the key).
    pub fn pipe<K: Key, V: Record>(&mut self, topic: &Topic<K, V>, key: &K, value: &V) -> Result<(i32, i64)> {
        let value = value.encode().map_err(|source| Error::Encode {
            what: format!("topic `{}`", topic.name()),
            source,
        })?;
        Ok(self.pipe_raw(topic.name(), key.encode_key().as_deref(), Some(&value)))
    }

    /// Appends raw bytes to a topic (for malformed input); returns partition and offset.
    pub fn pipe_raw(&mut self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> (i32, i64) {
        self.topics.append(OutRecord {
            topic: topic.into(),
            partition: None,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: Vec::new(),
            changelog: false,
        })
    }

    /// Moves the driver's clock forward: records piped afterwards carry the later timestamp.
    pub fn advance_time(&mut self, by: Duration) {
        self.topics.log().clock += i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
    }

    /// The driver's clock, in milliseconds.
    pub fn now(&self) -> i64 {
        self.topics.log().clock
    }

    /// Processes every record in every topic an agent reads, including what agents send to
    /// one another, until nothing is left; then every partition has made a cut and it is
    /// committed (tables and offsets are up to date).
    pub async fn run(&mut self) -> Result<()> {
        loop {
            let mut fed = 0usize;
            // One batch per partition in turn, as a consumer's fetches arrive: one wake-up for
            // many records, and only a batch per partition in memory at a time.
            loop {
                let mut progressed = false;
                for index in 0..self.tasks.len() {
                    let batch: Vec<Message> = {
                        let log = self.topics.log();
                        let task = &self.tasks[index];
                        log.topics
                            .get(&task.topic)
                            .and_then(|parts| parts.get(task.partition as usize))
                            .map(|log| {
                                let from = task.delivered.min(log.len());
                                (from..log.len().min(from + 1024))
                                    .map(|offset| log.message(offset))
                                    .collect()
                            })
                            .unwrap_or_default()
                    };
                    if batch.is_empty() {
                        continue;
                    }
                    progressed = true;
                    let task = &mut self.tasks[index];
                    task.delivered += batch.len();
                    fed += batch.len();
                    task.tx.send(Input::Records(batch)).await.map_err(|_| {
                        Error::Config(format!("the agent on {}[{}] has stopped", task.topic, task.partition))
                    })?;
                }
                if !progressed {
                    break;
                }
            }
            self.barrier().await?;
            if fed == 0 {
                break;
            }
        }
        match self.metrics.fatal() {
            Some(error) => Err(Error::Config(error)),
            None => Ok(()),
        }
    }

    /// Every partition finishes what it was given and commits.
    async fn barrier(&self) -> Result<()> {
        let mut acks = Vec::new();
        for task in &self.tasks {
            let (ack, acked) = std::sync::mpsc::channel();
            if task.tx.send(Input::Flush(ack)).await.is_ok() {
                acks.push(acked);
            }
        }
        tokio::task::spawn_blocking(move || {
            for acked in acks {
                let _ = acked.recv_timeout(Duration::from_secs(60));
            }
        })
        .await
        .map_err(|e| Error::Config(format!("test driver: {e}")))
    }

    /// Every record in `topic`, raw, in partition and offset order.
    pub fn raw_records(&self, topic: &str) -> Vec<TestRecord> {
        self.topics
            .log()
            .topics
            .get(topic)
            .map(|parts| {
                parts
                    .iter()
                    .enumerate()
                    .flat_map(|(partition, log)| (0..log.len()).map(move |offset| log.record(partition as i32, offset)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every record in `topic`, decoded.
    pub fn records<K: Key, V: Record>(&self, topic: &Topic<K, V>) -> Result<Vec<(K, V)>> {
        self.raw_records(topic.name())
            .into_iter()
            .map(|r| {
                let key = K::decode_key(r.key.as_deref()).map_err(|source| Error::Decode {
                    what: format!("a key of {}", topic.name()),
                    source,
                })?;
                let value = V::decode(r.value.as_deref().unwrap_or_default()).map_err(|source| Error::Decode {
                    what: format!("a value of {}", topic.name()),
                    source,
                })?;
                Ok((key, value))
            })
            .collect()
    }

    /// The records `agent` copied to its dead-letter topic.
    pub fn dead_letters(&self, agent: &str) -> Vec<TestRecord> {
        self.raw_records(&format!("{}-{agent}-dlq", self.app.id()))
    }

    /// A table's contents, all partitions merged (as of the last [`TestDriver::run`]).
    pub fn table<K: Key + Ord, V: DeserializeOwned>(&self, table: &Table<K, V>) -> Result<BTreeMap<K, V>> {
        let mut out = BTreeMap::new();
        for ((name, _), store) in &self.stores {
            if name == table.name() {
                table.read_store(&**store, &mut out)?;
            }
        }
        Ok(out)
    }

    /// The offset the app committed for `topic[partition]` (the next one to read).
    pub fn committed(&self, topic: &str, partition: i32) -> Option<i64> {
        let committed = self.offsets.0.lock().ok()?;
        committed.get(&(topic.to_string(), partition)).copied()
    }

    /// The driver's counters (records, sends, table updates, dead letters).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }
}

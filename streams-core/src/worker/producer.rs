//! The worker's producer: records are enqueued without waiting, deliveries are checked at
//! the commit point (rdkafka issues #464 and #695: awaiting each send serialises them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::metrics::Metrics;
use crate::task::sink::{OutRecord, Sink, SinkError};
use crate::{Error, Result};

/// Tracks deliveries: failures since the last flush, and the last acknowledged offset of
/// every changelog partition (the stores' checkpoints).
pub(crate) struct Deliveries {
    changelog_offsets: Mutex<HashMap<(String, i32), i64>>,
    failures: Mutex<Vec<String>>,
    metrics: Arc<Metrics>,
    /// The worker's counters of records out (`streams_records_out`), by topic then
    /// partition: found without allocating for each delivery.
    out: Mutex<RecordsOut>,
}

/// Counters of records out by topic, then partition.
type RecordsOut =
    HashMap<String, Vec<Option<prometheus_client::metrics::counter::Counter>>, foldhash::fast::RandomState>;

impl Deliveries {
    fn count_out(&self, topic: &str, partition: i32) {
        let Ok(index) = usize::try_from(partition) else { return };
        let Ok(mut out) = self.out.lock() else { return };
        if !out.contains_key(topic) {
            out.insert(topic.to_string(), Vec::new());
        }
        let Some(partitions) = out.get_mut(topic) else { return };
        if partitions.len() <= index {
            partitions.resize(index + 1, None);
        }
        let counter = partitions[index].get_or_insert_with(|| {
            let labels = crate::metrics::TopicPartition::new(topic, partition);
            self.metrics.families.records_out.get_or_create_owned(&labels)
        });
        counter.inc();
    }
}

impl ClientContext for Deliveries {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.client_error("producer", &error, reason);
    }
}

impl ProducerContext for Deliveries {
    /// 1 for a changelog record (only those need their offsets), else 0.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, changelog: usize) {
        match result {
            Ok(message) => {
                self.count_out(message.topic(), message.partition());
                if changelog == 1 {
                    if let Ok(mut offsets) = self.changelog_offsets.lock() {
                        let slot = offsets
                            .entry((message.topic().to_string(), message.partition()))
                            .or_insert(message.offset());
                        *slot = (*slot).max(message.offset());
                    }
                }
            }
            Err((error, message)) => {
                if let Ok(mut failures) = self.failures.lock() {
                    if failures.len() < 10 {
                        failures.push(format!("{}[{}]: {error}", message.topic(), message.partition()));
                    }
                }
            }
        }
    }
}

/// The Kafka producer as a [`Sink`].
pub(crate) struct KafkaSink {
    producer: ThreadedProducer<Deliveries>,
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
        let sink = Self::new(config, metrics)?;
        sink.producer
            .init_transactions(Duration::from_secs(60))
            .map_err(|e| Error::kafka("initialising transactions", e))?;
        sink.producer
            .begin_transaction()
            .map_err(|e| Error::kafka("beginning a transaction", e))?;
        Ok(sink)
    }

    /// The producer (exactly-once commits its transactions).
    pub(crate) fn producer(&self) -> &ThreadedProducer<Deliveries> {
        &self.producer
    }

    pub(crate) fn new(mut config: ClientConfig, metrics: Arc<Metrics>) -> Result<Self> {
        config
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("partitioner", "murmur2_random");
        let context = Deliveries {
            changelog_offsets: Mutex::new(HashMap::new()),
            failures: Mutex::new(Vec::new()),
            metrics,
            out: Mutex::new(HashMap::default()),
        };
        let producer = config
            .create_with_context(context)
            .map_err(|e| Error::kafka("creating the producer", e))?;
        Ok(Self { producer })
    }
}

impl Sink for KafkaSink {
    fn enqueue(&self, record: OutRecord) -> Result<(), SinkError> {
        let mut base: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&record.topic, usize::from(record.changelog));
        // Headers are a native allocation in librdkafka: only for records that have some.
        if !record.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            base = base.headers(headers);
        }
        if let Some(key) = &record.key {
            base = base.key(key);
        }
        if let Some(value) = &record.value {
            base = base.payload(value);
        }
        if let Some(partition) = record.partition {
            base = base.partition(partition);
        }
        if let Some(timestamp) = record.timestamp {
            base = base.timestamp(timestamp);
        }
        match self.producer.send(base) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(SinkError::Full(record)),
            Err((error, _)) => Err(SinkError::Failed(format!(
                "cannot produce to {}: {error}",
                record.topic
            ))),
        }
    }

    fn flush(&self) -> Result<(), String> {
        let mut waited = 0u64;
        loop {
            // librdkafka's own flush, which serves delivery reports itself and looks again
            // every 10 ms. (rdkafka's `flush` waits in `poll` up to 100 ms at a time, while the
            // producer's own thread takes the reports: every flush with records in flight took
            // 100 ms, which every exactly-once commit waits for.)
            // SAFETY: the handle is the live producer's, and rd_kafka_flush may be called from
            // any thread.
            let error = unsafe { rdkafka::bindings::rd_kafka_flush(self.producer.client().native_ptr(), 10_000) };
            match RDKafkaErrorCode::from(error) {
                RDKafkaErrorCode::NoError => break,
                RDKafkaErrorCode::OperationTimedOut => {
                    waited += 10;
                    tracing::warn!(
                        "{} records not yet acknowledged after {waited}s; is the broker reachable?",
                        self.producer.in_flight_count()
                    );
                }
                error => return Err(KafkaError::Flush(error).to_string()),
            }
        }
        let failures = self
            .producer
            .context()
            .failures
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    fn changelog_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        let offsets = self.producer.context().changelog_offsets.lock().ok()?;
        offsets.get(&(topic.to_string(), partition)).copied()
    }
}

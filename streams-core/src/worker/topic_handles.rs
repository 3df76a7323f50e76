//! A producer's topic handles: librdkafka's `rd_kafka_topic_t` of each topic it sends to,
//! made at its first record and kept for the producer's life.
//!
//! rdkafka's `BaseProducer::send` names the topic of every record: a C copy of the name
//! (an allocation), then librdkafka finds the topic by name under the client's lock and
//! takes and drops a reference to it. Given the handle, `rd_kafka_producev` does none of
//! that. Records are otherwise produced as rdkafka does: copied (`RD_KAFKA_MSG_F_COPY`), the
//! delivery opaque a `usize` that rdkafka's delivery reports give back to
//! [`rdkafka::producer::ProducerContext::delivery`].

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::ptr::NonNull;
use std::sync::{Arc, RwLock};

use rdkafka::bindings as rd;
use rdkafka::bindings::rd_kafka_vtype_t::{
    RD_KAFKA_VTYPE_END, RD_KAFKA_VTYPE_HEADERS, RD_KAFKA_VTYPE_KEY, RD_KAFKA_VTYPE_MSGFLAGS, RD_KAFKA_VTYPE_OPAQUE,
    RD_KAFKA_VTYPE_PARTITION, RD_KAFKA_VTYPE_RKT, RD_KAFKA_VTYPE_TIMESTAMP, RD_KAFKA_VTYPE_VALUE,
};
use rdkafka::client::Client;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::task::sink::OutRecord;

/// One topic's handle (an application reference on librdkafka's topic).
struct Handle(NonNull<rd::rd_kafka_topic_t>);

// SAFETY: librdkafka's topic handles may be used and released from any thread.
unsafe impl Send for Handle {}
// SAFETY: as above; librdkafka locks what it changes in a topic.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: our reference, released once, while the client lives (see `TopicHandles`).
        unsafe { rd::rd_kafka_topic_destroy(self.0.as_ptr()) }
    }
}

/// The handles of the topics a producer sends to. It must be dropped before the producer's
/// client is destroyed.
#[derive(Default)]
pub(crate) struct TopicHandles(RwLock<Handles>);

/// How many names [`Handles::by_address`] keeps at most: records name their topic with the
/// `Arc` of the node or table that sends them (a few per topology); past this many (names
/// made per record), it starts again.
const ADDRESSES: usize = 1024;

#[derive(Default)]
struct Handles {
    /// By topic name: one handle per topic, kept as long as the `TopicHandles` (never
    /// removed: a pointer [`TopicHandles::handle`] gave out is used after its lock is let go).
    by_name: HashMap<Arc<str>, Arc<Handle>, foldhash::fast::RandomState>,
    /// By the address of the name a record carries: found without hashing or comparing the
    /// name. Each entry keeps its name, so no other name has that address while it lives.
    by_address: HashMap<usize, (Arc<str>, Arc<Handle>), foldhash::fast::RandomState>,
    /// How many handles were made.
    #[cfg(test)]
    made: usize,
}

/// Where `name` is: equal for two `Arc`s only when they share one allocation.
fn address(name: &Arc<str>) -> usize {
    Arc::as_ptr(name).cast::<u8>() as usize
}

impl TopicHandles {
    /// Enqueues `record` on `client`'s producer without waiting (librdkafka copies it); the
    /// delivery report carries `opaque`. An error is librdkafka's refusal (a full queue, a
    /// transaction that can only abort, an unknown partition, ...).
    pub(crate) fn produce<C: ClientContext>(
        &self,
        client: &Client<C>,
        record: &OutRecord,
        opaque: usize,
    ) -> Result<(), RDKafkaErrorCode> {
        let Some(topic) = self.handle(client, &record.topic) else {
            return Err(RDKafkaErrorCode::InvalidTopic);
        };
        let (key, key_len) = bytes(record.key.as_deref());
        let (value, value_len) = bytes(record.value.as_deref());
        let headers = native_headers(record);
        // SAFETY: a live client and topic handle (`Handles::by_name` keeps every handle while
        // `self` lives); key and value are copied before this returns (F_COPY); on success
        // librdkafka owns the headers, else they are ours.
        let error = unsafe {
            rd::rd_kafka_producev(
                client.native_ptr(),
                RD_KAFKA_VTYPE_RKT,
                topic,
                RD_KAFKA_VTYPE_PARTITION,
                // -1: librdkafka's partitioner picks (RD_KAFKA_PARTITION_UA).
                record.partition.unwrap_or(-1),
                RD_KAFKA_VTYPE_MSGFLAGS,
                rd::RD_KAFKA_MSG_F_COPY,
                RD_KAFKA_VTYPE_VALUE,
                value,
                value_len,
                RD_KAFKA_VTYPE_KEY,
                key,
                key_len,
                RD_KAFKA_VTYPE_OPAQUE,
                opaque as *mut c_void,
                RD_KAFKA_VTYPE_TIMESTAMP,
                record.timestamp.unwrap_or(0),
                RD_KAFKA_VTYPE_HEADERS,
                headers,
                RD_KAFKA_VTYPE_END,
            )
        };
        if error == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Ok(());
        }
        if !headers.is_null() {
            // SAFETY: refused, the headers are still ours.
            unsafe { rd::rd_kafka_headers_destroy(headers) };
        }
        Err(RDKafkaErrorCode::from(error))
    }

    /// The handle of `topic`, made at its first record; `None` if librdkafka makes none
    /// (a name with a NUL byte, or librdkafka's refusal, which it logs).
    fn handle<C: ClientContext>(&self, client: &Client<C>, topic: &Arc<str>) -> Option<*mut rd::rd_kafka_topic_t> {
        let at = address(topic);
        if let Some((_, handle)) = self.0.read().unwrap_or_else(|p| p.into_inner()).by_address.get(&at) {
            return Some(handle.0.as_ptr());
        }
        let mut handles = self.0.write().unwrap_or_else(|p| p.into_inner());
        let handle = match handles.by_name.get(&**topic) {
            Some(handle) => Arc::clone(handle),
            None => {
                let name = CString::new(topic.as_bytes()).ok()?;
                // SAFETY: a live client and a NUL-terminated name; no topic settings (the
                // client's).
                let made = unsafe { rd::rd_kafka_topic_new(client.native_ptr(), name.as_ptr(), std::ptr::null_mut()) };
                let handle = Arc::new(Handle(NonNull::new(made)?));
                #[cfg(test)]
                {
                    handles.made += 1;
                }
                handles.by_name.insert(Arc::clone(topic), Arc::clone(&handle));
                handle
            }
        };
        if handles.by_address.len() >= ADDRESSES {
            handles.by_address.clear();
        }
        let pointer = handle.0.as_ptr();
        handles.by_address.insert(at, (Arc::clone(topic), handle));
        Some(pointer)
    }

    /// How many handles it made, and how many names it keeps by address.
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let handles = self.0.read().unwrap_or_else(|p| p.into_inner());
        (handles.made, handles.by_address.len())
    }
}

fn bytes(bytes: Option<&[u8]>) -> (*mut c_void, usize) {
    bytes.map_or((std::ptr::null_mut(), 0), |b| (b.as_ptr().cast_mut().cast(), b.len()))
}

/// `record`'s headers as librdkafka's (null without headers: most records have none).
fn native_headers(record: &OutRecord) -> *mut rd::rd_kafka_headers_t {
    if record.headers.is_empty() {
        return std::ptr::null_mut();
    }
    let count = record.headers.len();
    // SAFETY: a new list, owned here until handed over or destroyed.
    let headers = unsafe { rd::rd_kafka_headers_new(count) };
    for (name, value) in record.headers.iter() {
        // SAFETY: a live list; name and value are copied, their lengths given (the name
        // needs no NUL).
        unsafe {
            rd::rd_kafka_header_add(
                headers,
                name.as_ptr().cast(),
                name.len() as isize,
                value.as_ptr().cast(),
                value.len() as isize,
            );
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::RDKafkaErrorCode;
    use rdkafka::message::{Headers, Message};
    use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
    use rdkafka::{ClientContext, Offset, TopicPartitionList};

    use super::{TopicHandles, ADDRESSES};
    use crate::broker::EmbeddedBroker;
    use crate::task::sink::OutRecord;

    /// Keeps each delivery's opaque and partition.
    #[derive(Clone, Default)]
    struct Reports(Arc<Mutex<Vec<(usize, i32)>>>);

    impl ClientContext for Reports {}

    impl ProducerContext for Reports {
        type DeliveryOpaque = usize;

        fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
            if let Ok(message) = result {
                self.0.lock().expect("lock").push((opaque, message.partition()));
            }
        }
    }

    fn record(topic: &Arc<str>, n: i64) -> OutRecord {
        OutRecord {
            topic: Arc::clone(topic),
            partition: (n % 2 == 0).then_some((n % 3) as i32),
            key: Some(format!("k{n}").into_bytes()),
            value: (n != 4).then(|| format!("v{n}").into_bytes()),
            headers: if n % 2 == 0 {
                vec![
                    ("a".to_string(), n.to_be_bytes().to_vec()),
                    ("empty".to_string(), Vec::new()),
                ]
                .into()
            } else {
                Vec::new().into()
            },
            timestamp: Some(1000 + n),
            changelog: n % 3 == 0,
        }
    }

    /// What `BaseProducer::send` would have sent: key, value (or none), headers, partition
    /// (or the partitioner's pick by key), timestamp, and the delivery opaque.
    #[test]
    fn records_go_out_whole_through_the_topics_handle() {
        let broker = EmbeddedBroker::start().expect("broker");
        broker.create_topic("handles", 3).expect("topic");
        let reports = Reports::default();
        let producer: BaseProducer<Reports> = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("partitioner", "murmur2_random")
            .set("message.max.bytes", "10000")
            .create_with_context(reports.clone())
            .expect("producer");
        let handles = TopicHandles::default();
        let topic: Arc<str> = "handles".into();
        let sent: Vec<OutRecord> = (0..12).map(|n| record(&topic, n)).collect();
        for out in &sent {
            handles
                .produce(producer.client(), out, usize::from(out.changelog))
                .expect("taken");
        }
        let too_large = OutRecord {
            value: Some(vec![b'x'; 20_000]),
            ..record(&topic, 0)
        };
        assert_eq!(
            handles.produce(producer.client(), &too_large, 0),
            Err(RDKafkaErrorCode::MessageSizeTooLarge),
            "refused, its headers freed"
        );
        producer.flush(Duration::from_secs(20)).expect("flush");
        producer.poll(Duration::ZERO);
        let mut delivered = reports.0.lock().expect("lock").clone();
        delivered.sort_unstable();
        let mut expected: Vec<(usize, i32)> = Vec::new();
        let consumer = reader(&broker, "handles", 3);
        let mut got = Vec::new();
        let began = Instant::now();
        while got.len() < sent.len() && began.elapsed() < Duration::from_secs(20) {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                got.push(message.detach());
            }
        }
        assert_eq!(got.len(), sent.len(), "every record came");
        for out in &sent {
            let key = out.key.as_deref();
            let message = got.iter().find(|m| m.key() == key).expect("the record");
            assert_eq!(message.payload(), out.value.as_deref());
            assert_eq!(message.timestamp().to_millis(), out.timestamp);
            if let Some(partition) = out.partition {
                assert_eq!(message.partition(), partition);
            }
            let headers: Vec<(String, Vec<u8>)> = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(headers, out.headers.iter().cloned().collect::<Vec<_>>());
            expected.push((usize::from(out.changelog), message.partition()));
        }
        expected.sort_unstable();
        assert_eq!(delivered, expected, "each delivery with its opaque");
        drop(handles);
    }

    /// A consumer of `topic`'s first `partitions` partitions, from their beginnings.
    fn reader(broker: &EmbeddedBroker, topic: &str, partitions: i32) -> BaseConsumer {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("group.id", "handles-test")
            .create()
            .expect("consumer");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(topic, partition, Offset::Beginning)
                .expect("list");
        }
        consumer.assign(&list).expect("assign");
        consumer
    }

    /// The keys of `topic[0]`'s first `count` records, in order.
    fn keys(broker: &EmbeddedBroker, topic: &str, count: usize) -> Vec<String> {
        let consumer = reader(broker, topic, 1);
        let mut keys = Vec::new();
        let began = Instant::now();
        while keys.len() < count && began.elapsed() < Duration::from_secs(30) {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                keys.push(String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned());
            }
        }
        keys
    }

    /// Records that name their topic with an `Arc` of their own, made for each record and
    /// dropped after it, past the bound on names kept by address (once they are let go, the
    /// allocator gives their addresses to other names), each go to their own topic; one
    /// handle is made per topic.
    #[test]
    fn records_naming_their_topic_with_names_of_their_own_go_to_that_topic() {
        let broker = EmbeddedBroker::start().expect("broker");
        broker.create_topic("ta", 1).expect("topic");
        broker.create_topic("tb", 1).expect("topic");
        let producer: BaseProducer<Reports> = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .create_with_context(Reports::default())
            .expect("producer");
        let handles = TopicHandles::default();
        let total = 2 * ADDRESSES + 10;
        let topic_of = |n: usize| if n.is_multiple_of(3) { "ta" } else { "tb" };
        let mut addresses = std::collections::HashSet::new();
        for n in 0..total {
            let name: Arc<str> = Arc::from(topic_of(n));
            addresses.insert(super::address(&name));
            let out = OutRecord {
                topic: name,
                partition: Some(0),
                key: Some(n.to_string().into_bytes()),
                value: Some(Vec::new()),
                headers: Vec::new().into(),
                timestamp: None,
                changelog: false,
            };
            handles.produce(producer.client(), &out, 0).expect("taken");
            let (made, by_address) = handles.sizes();
            assert!(
                made <= 2 && by_address <= ADDRESSES,
                "{made} handles made, {by_address} names kept"
            );
        }
        assert_eq!(handles.sizes().0, 2, "one handle per topic");
        assert!(
            addresses.len() < total,
            "no name was given an earlier one's address: nothing tested"
        );
        producer.flush(Duration::from_secs(20)).expect("flush");
        for topic in ["ta", "tb"] {
            let expected: Vec<String> = (0..total)
                .filter(|n| topic_of(*n) == topic)
                .map(|n| n.to_string())
                .collect();
            assert_eq!(
                keys(&broker, topic, expected.len()),
                expected,
                "{topic}: its records, in order"
            );
        }
        drop(handles);
    }
}

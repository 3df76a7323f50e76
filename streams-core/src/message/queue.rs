//! Fetch queues: where a consumer's fetched records wait, read a batch at a time.
//!
//! rust-rdkafka's `BaseConsumer::poll` returns one record per call; the batch read
//! (`rd_kafka_consume_batch_queue`) takes every record a queue holds at once. It must not
//! read a group member's consumer queue: that queue also carries the rebalances, and the
//! batch read serves a rebalance op by itself (it unassigns without asking the worker). So a
//! group member's records are routed to a queue of their own ([`Records`]): each assigned
//! partition's queue is forwarded to it, while `poll` keeps reading the consumer queue for
//! rebalances, errors and commits. A consumer that never joins a group (the restores) has no
//! rebalances, and its consumer queue is read in batches directly.
//!
//! A batch read drops records outdated by a seek, a pause or a new assignment (librdkafka's
//! version barriers), as `poll` does.
//!
//! A producer's main queue is here too ([`Queue::main_of`]): its arrivals unpark the
//! delivery reports' thread ([`Queue::unpark_on_arrival`]).

use std::ptr::NonNull;
use std::sync::RwLock;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::Client;
use rdkafka::ClientContext;

use crate::message::RawMessage;

/// A handle on a librdkafka queue, released when dropped.
pub(crate) struct Queue(NonNull<rd::rd_kafka_queue_t>);

// SAFETY: librdkafka's queues are thread-safe (every access takes the queue's lock).
unsafe impl Send for Queue {}
// SAFETY: see above.
unsafe impl Sync for Queue {}

impl Queue {
    /// A new queue of `client`'s, empty until something is forwarded to it. It must be
    /// dropped before the client is.
    pub(crate) fn new<C: ClientContext>(client: &Client<C>) -> Option<Self> {
        // SAFETY: a live client.
        NonNull::new(unsafe { rd::rd_kafka_queue_new(client.native_ptr()) }).map(Self)
    }

    /// `client`'s consumer queue (`None` for a client that is not a consumer of a group:
    /// set `group.id`). It must be dropped before the client is.
    pub(crate) fn consumer_of<C: ClientContext>(client: &Client<C>) -> Option<Self> {
        // SAFETY: a live client.
        NonNull::new(unsafe { rd::rd_kafka_queue_get_consumer(client.native_ptr()) }).map(Self)
    }

    /// `client`'s main queue (a producer's delivery reports and events). It must be dropped
    /// before the client is.
    pub(crate) fn main_of<C: ClientContext>(client: &Client<C>) -> Option<Self> {
        // SAFETY: a live client.
        NonNull::new(unsafe { rd::rd_kafka_queue_get_main(client.native_ptr()) }).map(Self)
    }

    /// Unparks `thread` each time this queue goes from empty to holding something, until the
    /// returned guard (which keeps the queue) is dropped: a thread can wait for the queue
    /// with `std::thread::park_timeout` (which, unlike a timed read of librdkafka's, does
    /// not spin through its last millisecond). One such guard per queue at a time: a second
    /// replaces the first's callback, and the first's drop would end both.
    pub(crate) fn unpark_on_arrival(self, thread: std::thread::Thread) -> Arrivals {
        unsafe extern "C" fn unpark(_: *mut rd::rd_kafka_t, opaque: *mut std::ffi::c_void) {
            // SAFETY: `opaque` is the guard's boxed thread, alive while the callback is set.
            let thread = unsafe { &*(opaque as *const std::thread::Thread) };
            thread.unpark();
        }
        let thread = Box::new(thread);
        let opaque = std::ptr::from_ref::<std::thread::Thread>(&thread).cast_mut().cast();
        // SAFETY: a live queue; the box outlives the callback (the guard unsets it first).
        unsafe { rd::rd_kafka_queue_cb_event_enable(self.0.as_ptr(), Some(unpark), opaque) };
        Arrivals {
            queue: self,
            _thread: thread,
        }
    }

    /// Takes up to `max` records (and consumer errors) into `into`, in the order they were
    /// fetched; waits up to `wait` for the first one, and no longer than that for more. The
    /// wait ends early when [`Queue::wake`] is called. Returns how many were taken.
    pub(crate) fn take(&self, wait: Duration, max: usize, into: &mut Vec<RawMessage>) -> usize {
        let max = max.max(1);
        let mut pointers: Vec<*mut rd::rd_kafka_message_t> = Vec::with_capacity(max);
        let wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: a live queue and room for `max` pointers.
        let taken = unsafe { rd::rd_kafka_consume_batch_queue(self.0.as_ptr(), wait_ms, pointers.as_mut_ptr(), max) };
        // A negative count is an error (the queue is not a consumer's): nothing was taken.
        let taken = usize::try_from(taken).unwrap_or(0).min(max);
        // SAFETY: the batch read wrote the first `taken` pointers.
        unsafe { pointers.set_len(taken) };
        into.extend(pointers.iter().filter_map(|&message| {
            // SAFETY: the batch read handed these over to us, each once.
            unsafe { RawMessage::from_ptr(message) }
        }));
        taken
    }

    /// Like [`Queue::take`], but returns as soon as one record is there: waits up to
    /// `wait` for one, then takes whatever else is ready (up to `max` in all). The wait
    /// comes first: a [`Queue::wake`] since the last call ends it at once (a read that
    /// finds the queue empty clears the wake, even one that does not wait).
    pub(crate) fn take_ready(&self, wait: Duration, max: usize, into: &mut Vec<RawMessage>) -> usize {
        match self.take(wait, 1, into) {
            0 => 0,
            first if max > 1 => first + self.take(Duration::ZERO, max - 1, into),
            first => first,
        }
    }

    /// Ends a wait in [`Queue::take`] now (or the next one at once, if none is waiting).
    pub(crate) fn wake(&self) {
        // SAFETY: a live queue.
        unsafe { rd::rd_kafka_queue_yield(self.0.as_ptr()) }
    }

    /// How many ops wait in the queue.
    pub(crate) fn len(&self) -> usize {
        // SAFETY: a live queue.
        unsafe { rd::rd_kafka_queue_length(self.0.as_ptr()) }
    }

    /// Sends `topic[partition]`'s fetched records to this queue from now on (with those it
    /// holds already). False if librdkafka does not know the partition.
    fn forward_partition<C: ClientContext>(&self, client: &Client<C>, topic: &str, partition: i32) -> bool {
        let Ok(name) = std::ffi::CString::new(topic) else {
            return false;
        };
        // SAFETY: a live client and a NUL-terminated name.
        let queue = unsafe { rd::rd_kafka_queue_get_partition(client.native_ptr(), name.as_ptr(), partition) };
        let Some(queue) = NonNull::new(queue).map(Self) else {
            return false;
        };
        // SAFETY: two live queues; forwarding keeps a reference to this one in the partition's.
        unsafe { rd::rd_kafka_queue_forward(queue.0.as_ptr(), self.0.as_ptr()) };
        true
    }
}

/// A queue whose arrivals unpark a thread while this lives (see [`Queue::unpark_on_arrival`]).
/// Forgetting it leaks the thread's handle with the callback still set, which stays sound.
pub(crate) struct Arrivals {
    queue: Queue,
    _thread: Box<std::thread::Thread>,
}

impl Arrivals {
    /// How many ops wait in the queue.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        // SAFETY: a live queue. librdkafka unsets the callback under the queue's lock, which
        // a running callback holds: none runs after this returns, and the thread can go.
        unsafe { rd::rd_kafka_queue_cb_event_enable(self.queue.0.as_ptr(), None, std::ptr::null_mut()) };
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: our handle, released once.
        unsafe { rd::rd_kafka_queue_destroy(self.0.as_ptr()) }
    }
}

/// A consumer's records queue, read in batches by one thread while others may end its wait
/// ([`Records::wake`]): a queue of its own, where every assigned partition's records go
/// (the consumer queue keeps rebalances, errors and logs). Closed (released) before the
/// consumer is; a closed queue takes nothing and forwards nothing.
#[derive(Default)]
pub(crate) struct Records(RwLock<Option<Queue>>);

impl Records {
    /// Opens the queue (see [`Queue::new`]); `false` if librdkafka gave none.
    pub(crate) fn open<C: ClientContext>(&self, client: &Client<C>) -> bool {
        let queue = Queue::new(client);
        let opened = queue.is_some();
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = queue;
        opened
    }

    /// Releases the queue (before the consumer is dropped).
    pub(crate) fn close(&self) {
        let queue = self.0.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(queue);
    }

    /// See [`Queue::take_ready`]; `None` when the queue is closed.
    pub(crate) fn take_ready(&self, wait: Duration, max: usize, into: &mut Vec<RawMessage>) -> Option<usize> {
        let queue = self.0.read().unwrap_or_else(|p| p.into_inner());
        queue.as_ref().map(|queue| queue.take_ready(wait, max, into))
    }

    /// Ends the reading thread's wait for records (something else needs it).
    pub(crate) fn wake(&self) {
        if let Some(queue) = self.0.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            queue.wake();
        }
    }

    /// Sends the records of `partitions` here. Called before they are assigned (an
    /// assignment that starts a partition's fetch then keeps the forward), and again once a
    /// second for a while after partitions move: stopping a partition's fetch (a
    /// revocation) ends its forward, and a stop still under way when the partition is
    /// assigned again can end the new one.
    pub(crate) fn forward<C: ClientContext>(&self, client: &Client<C>, partitions: &[(&str, i32)]) {
        let queue = self.0.read().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = queue.as_ref() else { return };
        for &(topic, partition) in partitions {
            if !queue.forward_partition(client, topic, partition) {
                tracing::debug!("cannot route {topic}[{partition}]'s records to the batch queue");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::RDKafkaErrorCode;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{Offset, TopicPartitionList};

    use super::{Queue, Records};
    use crate::broker::EmbeddedBroker;
    use crate::message::RawMessage;

    const RECORDS: i64 = 3000;

    /// A broker with `RECORDS` records in `topic[0]`: key `k{n}`, payload `v{n}`, a header
    /// `n` = n and `empty` with no value, timestamp 1000 + n.
    fn broker_with_records(topic: &str) -> EmbeddedBroker {
        let broker = EmbeddedBroker::start().expect("broker");
        broker.create_topic(topic, 1).expect("topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .create()
            .expect("producer");
        for n in 0..RECORDS {
            let (key, payload) = (format!("k{n}"), format!("v{n}"));
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "n",
                    value: Some(&n.to_be_bytes()[..]),
                })
                .insert(Header {
                    key: "empty",
                    value: None::<&[u8]>,
                });
            let record = BaseRecord::to(topic)
                .partition(0)
                .key(&key)
                .payload(&payload)
                .headers(headers)
                .timestamp(1000 + n);
            let mut record = Some(record);
            while let Some(r) = record.take() {
                if let Err((_, r)) = producer.send(r) {
                    producer.poll(Duration::from_millis(10));
                    record = Some(r);
                }
            }
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
        broker
    }

    fn consumer(broker: &EmbeddedBroker, eof: bool) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("group.id", "fetch-test")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", if eof { "true" } else { "false" })
            .create()
            .expect("consumer")
    }

    fn assign(consumer: &BaseConsumer, topic: &str, offset: i64) {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, 0, Offset::Offset(offset))
            .expect("list");
        consumer.assign(&list).expect("assign");
    }

    /// Takes records until `until` returns true for the last one or `limit` passes.
    fn take_until(
        take: &dyn Fn(&mut Vec<RawMessage>) -> usize,
        limit: Duration,
        until: &dyn Fn(&RawMessage) -> bool,
    ) -> (Vec<RawMessage>, usize) {
        let (mut all, mut largest) = (Vec::new(), 0);
        let began = Instant::now();
        while began.elapsed() < limit {
            let mut batch = Vec::new();
            largest = largest.max(take(&mut batch));
            let done = batch.last().is_some_and(until);
            all.extend(batch);
            if done {
                break;
            }
        }
        (all, largest)
    }

    #[test]
    fn a_batch_read_takes_every_record_in_order_with_its_parts_then_the_end() {
        let broker = broker_with_records("batch");
        let consumer = consumer(&broker, true);
        let queue = Queue::consumer_of(consumer.client()).expect("a group's consumer queue");
        assign(&consumer, "batch", 0);
        let (all, largest) = take_until(
            &|batch| queue.take_ready(Duration::from_millis(200), 1024, batch),
            Duration::from_secs(30),
            &|last| last.error().is_some(),
        );
        let (end, records) = all.split_last().expect("something taken");
        assert_eq!(
            end.error(),
            Some(RDKafkaErrorCode::PartitionEOF),
            "{}",
            end.error_text()
        );
        assert_eq!(end.offset(), RECORDS, "the end's offset is where the fetch stands");
        assert_eq!(records.len() as i64, RECORDS);
        for (n, record) in records.iter().enumerate() {
            let n = n as i64;
            assert_eq!((record.topic(), record.partition(), record.offset()), ("batch", 0, n));
            assert_eq!(record.key(), Some(format!("k{n}").as_bytes()));
            assert_eq!(record.payload(), Some(format!("v{n}").as_bytes()));
            assert_eq!(record.timestamp(), Some(1000 + n));
            assert_eq!(
                record.headers().as_slice(),
                [("n", &n.to_be_bytes()[..]), ("empty", &[][..])]
            );
            assert_eq!(record.headers_lossy().len(), 2);
            assert!(record.error().is_none());
        }
        assert!(largest > 1, "records come more than one at a time (at most {largest})");
    }

    #[test]
    fn a_wait_for_records_ends_when_woken() {
        let broker = EmbeddedBroker::start().expect("broker");
        let consumer = consumer(&broker, false);
        let records = std::sync::Arc::new(Records::default());
        assert!(records.open(consumer.client()));
        let waker = {
            let records = std::sync::Arc::clone(&records);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                records.wake();
            })
        };
        let began = Instant::now();
        let taken = records.take_ready(Duration::from_secs(20), 16, &mut Vec::new());
        assert_eq!(taken, Some(0));
        assert!(began.elapsed() < Duration::from_secs(10), "woken, not timed out");
        waker.join().expect("waker");
        records.close();
        assert_eq!(records.take_ready(Duration::ZERO, 16, &mut Vec::new()), None, "closed");
    }

    /// A wake that comes before the wait (an event on the consumer queue just after the
    /// poll thread looked there) still ends it at once.
    #[test]
    fn a_wake_before_the_wait_ends_it() {
        let broker = EmbeddedBroker::start().expect("broker");
        let consumer = consumer(&broker, false);
        let records = Records::default();
        assert!(records.open(consumer.client()));
        records.wake();
        let began = Instant::now();
        assert_eq!(
            records.take_ready(Duration::from_secs(20), 16, &mut Vec::new()),
            Some(0)
        );
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the wake was kept for the wait"
        );
        records.close();
    }

    /// librdkafka ends a partition's forward when it stops the partition's fetch (an
    /// unassignment), and does not restore it when the partition is assigned again: the
    /// worker forwards its partitions before each assignment and once a second for a while
    /// after.
    #[test]
    fn a_partition_assigned_again_sends_its_records_to_the_queue_once_forwarded_again() {
        let broker = broker_with_records("again");
        let consumer = consumer(&broker, false);
        let records = Records::default();
        assert!(records.open(consumer.client()));
        let take = |batch: &mut Vec<RawMessage>| {
            records
                .take_ready(Duration::from_millis(200), 1024, batch)
                .expect("open")
        };
        let last = |message: &RawMessage| message.offset() == RECORDS - 1;
        records.forward(consumer.client(), &[("again", 0)]);
        assign(&consumer, "again", 0);
        let (first, _) = take_until(&take, Duration::from_secs(30), &last);
        assert_eq!(first.len() as i64, RECORDS, "every record, by the batch queue");
        assert!(
            consumer.poll(Duration::from_millis(500)).is_none(),
            "none by the consumer queue"
        );

        consumer.unassign().expect("unassign");
        std::thread::sleep(Duration::from_millis(500));
        assign(&consumer, "again", 100);
        let (unforwarded, _) = take_until(&take, Duration::from_secs(2), &last);
        assert!(
            unforwarded.is_empty(),
            "the forward ended with the fetch: {} records came",
            unforwarded.len()
        );
        records.forward(consumer.client(), &[("again", 0)]);
        let (second, _) = take_until(&take, Duration::from_secs(30), &last);
        let offsets: Vec<i64> = second.iter().map(RawMessage::offset).collect();
        assert_eq!(
            offsets,
            (100..RECORDS).collect::<Vec<_>>(),
            "in order, from the new start"
        );
        records.close();
    }

    /// A producer's delivery report unparks the thread that waits for its main queue, and
    /// once the guard is gone nothing unparks it.
    #[test]
    fn a_delivery_report_unparks_the_thread_waiting_for_it() {
        let broker = EmbeddedBroker::start().expect("broker");
        broker.create_topic("reports", 1).expect("topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .create()
            .expect("producer");
        let main = Queue::main_of(producer.client())
            .expect("the main queue")
            .unpark_on_arrival(std::thread::current());
        // The queue empty (a report only then unparks), and no token left from before.
        while main.len() > 0 {
            producer.poll(Duration::ZERO);
        }
        assert_eq!(main.len(), 0);
        std::thread::park_timeout(Duration::ZERO);
        producer
            .send(BaseRecord::<(), str>::to("reports").partition(0).payload("report"))
            .map_err(|(error, _)| error)
            .expect("send");
        let began = Instant::now();
        while main.len() == 0 && began.elapsed() < Duration::from_secs(20) {
            std::thread::park_timeout(Duration::from_secs(20));
        }
        assert!(main.len() > 0, "the report came");
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "unparked by the report, not timed out"
        );
        producer.poll(Duration::ZERO);
        drop(main);
    }
}

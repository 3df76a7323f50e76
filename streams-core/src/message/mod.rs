//! Messages: one record of a partition as the poll thread hands it to the partition's
//! stream, still in bytes. The partition's task knows its topic and partition, so a message
//! carries neither.
//!
//! A record fetched from Kafka is not copied: the message keeps librdkafka's own (its key
//! and payload stay in the fetch buffer) and parses its headers only if they are asked for —
//! a copy and a header parse per record were most of the poll thread's cost (BENCHMARKS.md).
//! The test driver's records own their bytes. Records taken a batch at a time are
//! [`RawMessage`]s.

pub(crate) mod queue;
mod raw;

use std::sync::Arc;

pub(crate) use raw::RawMessage;

use rdkafka::message::{BorrowedMessage, Message as _, OwnedHeaders};

/// A record read from a partition, before decoding.
pub(crate) struct Message {
    offset: i64,
    timestamp: Option<i64>,
    body: Body,
}

enum Body {
    /// The test driver's records: key bytes followed by payload bytes.
    Owned {
        bytes: Vec<u8>,
        /// Length of the key within `bytes`; `None`: the record has no key.
        key_len: Option<usize>,
        has_payload: bool,
        headers: Option<OwnedHeaders>,
    },
    /// A record as librdkafka fetched it, polled alone.
    Fetched(Fetched),
    /// A record as librdkafka fetched it, taken in a batch.
    Taken(Taken),
}

/// What keeps a fetched record's consumer alive (librdkafka's records must not outlive their
/// client): the consumer itself, shared by the records of a poll.
pub(crate) type Keep = Arc<dyn std::any::Any + Send + Sync>;

/// Fetched records a task is done with, on their way back to the poll thread to be freed.
///
/// A fetched record's memory is librdkafka's, allocated by its broker thread: freeing it on
/// the tasks' threads made them contend for the allocator's lock with it (measured: a
/// quarter of the tasks' time went to freeing records). The poll thread frees them in
/// batches instead, as it did when it copied them.
///
/// Batches are handed over whole and their vectors come back emptied, for the tasks to fill
/// again: appended into one vector instead, a busy worker's records made it grow (and be
/// copied) anew between two frees, a few percent of the tasks' time in page faults.
#[derive(Default)]
pub(crate) struct Spent(std::sync::Mutex<Batches>);

/// The batches to free, and emptied vectors for the next ones.
#[derive(Default)]
struct Batches {
    full: Vec<Vec<Message>>,
    empty: Vec<Vec<Message>>,
}

/// Emptied vectors kept for reuse at most.
const SPARE_BATCHES: usize = 64;

impl Spent {
    /// Hands a task's done records over, leaving `batch` empty (with an emptied vector's
    /// room when one is spare).
    pub(crate) fn give(&self, batch: &mut Vec<Message>) {
        if batch.is_empty() {
            return;
        }
        let mut batches = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let spare = batches.empty.pop().unwrap_or_default();
        let done = std::mem::replace(batch, spare);
        batches.full.push(done);
    }

    /// Frees the records handed over so far (on the calling thread).
    pub(crate) fn free(&self) {
        let mut full = {
            let mut batches = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if batches.full.is_empty() {
                return;
            }
            std::mem::take(&mut batches.full)
        };
        for batch in &mut full {
            batch.clear();
        }
        let mut batches = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = SPARE_BATCHES.saturating_sub(batches.empty.len());
        batches.empty.extend(full.drain(..).take(room));
        // The outer vector's room is kept too.
        if batches.full.is_empty() {
            batches.full = full;
        }
    }
}

/// A fetched record and what keeps its consumer alive. Fields drop in order: the record
/// first.
struct Fetched {
    message: BorrowedMessage<'static>,
    _consumer: Keep,
}

/// A fetched record taken in a batch, and what keeps its consumer alive. Fields drop in
/// order: the record first.
struct Taken {
    message: RawMessage,
    _consumer: Keep,
}

impl Message {
    /// A message from its parts (the test driver's records).
    pub(crate) fn new(
        offset: i64,
        timestamp: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Self {
        let key_len = key.map(<[u8]>::len);
        let mut bytes = Vec::with_capacity(key_len.unwrap_or(0) + payload.map_or(0, <[u8]>::len));
        bytes.extend_from_slice(key.unwrap_or_default());
        bytes.extend_from_slice(payload.unwrap_or_default());
        Self {
            offset,
            timestamp,
            body: Body::Owned {
                bytes,
                key_len,
                has_payload: payload.is_some(),
                headers,
            },
        }
    }

    /// Takes a fetched record over without copying it; `consumer` is (or keeps alive) the
    /// consumer it was polled from.
    pub(crate) fn from_kafka(message: BorrowedMessage<'_>, consumer: &Keep) -> Self {
        let (offset, timestamp) = (message.offset(), message.timestamp().to_millis());
        // SAFETY: a `BorrowedMessage` borrows its consumer only to keep the consumer alive
        // while the record is (librdkafka frees a fetched record with the event it came in,
        // independently of the client, from any thread). `Fetched` keeps the consumer alive
        // by the `Keep` stored beside the record, which drops after it.
        let message = unsafe { std::mem::transmute::<BorrowedMessage<'_>, BorrowedMessage<'static>>(message) };
        Self {
            offset,
            timestamp,
            body: Body::Fetched(Fetched {
                message,
                _consumer: Arc::clone(consumer),
            }),
        }
    }

    /// Takes a record of a batch read over; `consumer` is (or keeps alive) the consumer
    /// it was read from.
    pub(crate) fn from_batch(message: RawMessage, consumer: &Keep) -> Self {
        Self {
            offset: message.offset(),
            timestamp: message.timestamp(),
            body: Body::Taken(Taken {
                message,
                _consumer: Arc::clone(consumer),
            }),
        }
    }

    /// Whether the record is librdkafka's (see [`Spent`]).
    pub(crate) fn is_fetched(&self) -> bool {
        matches!(self.body, Body::Fetched(_) | Body::Taken(_))
    }

    /// Offset of the record in its partition.
    pub(crate) fn offset(&self) -> i64 {
        self.offset
    }

    /// Timestamp in milliseconds since the epoch, when the record has one.
    pub(crate) fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// Key bytes.
    pub(crate) fn key(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Owned { bytes, key_len, .. } => key_len.map(|len| &bytes[..len]),
            Body::Fetched(fetched) => fetched.message.key(),
            Body::Taken(taken) => taken.message.key(),
        }
    }

    /// Payload bytes.
    pub(crate) fn payload(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Owned {
                bytes,
                key_len,
                has_payload,
                ..
            } => has_payload.then(|| &bytes[key_len.unwrap_or(0)..]),
            Body::Fetched(fetched) => fetched.message.payload(),
            Body::Taken(taken) => taken.message.payload(),
        }
    }

    /// The record's headers, in order (parsed now for a fetched record: only a record that
    /// goes to the dead-letter topic needs them).
    pub(crate) fn headers(&self) -> Vec<(String, Vec<u8>)> {
        fn pairs(headers: &impl rdkafka::message::Headers) -> Vec<(String, Vec<u8>)> {
            headers
                .iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        }
        match &self.body {
            Body::Owned { headers, .. } => headers.as_ref().map(pairs).unwrap_or_default(),
            Body::Fetched(fetched) => fetched.message.headers().map(pairs).unwrap_or_default(),
            Body::Taken(taken) => taken
                .message
                .headers_lossy()
                .into_iter()
                .map(|(key, value)| (key.into_owned(), value.to_vec()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Message, Spent};

    /// Handed-over batches are freed whole, and their vectors come back to the tasks with
    /// their room: a busy worker's batches need no new vectors.
    #[test]
    fn spent_batches_are_freed_and_their_vectors_reused() {
        let spent = Spent::default();
        let mut batch: Vec<Message> = Vec::with_capacity(256);
        let fill = |batch: &mut Vec<Message>| {
            for n in 0..256 {
                batch.push(Message::new(n, None, None, Some(b"v"), None));
            }
        };
        fill(&mut batch);
        spent.give(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(batch.capacity(), 0, "no emptied vector yet");
        batch.reserve(256);
        fill(&mut batch);
        spent.give(&mut batch);
        assert_eq!(spent.0.lock().expect("lock").full.len(), 2, "both batches wait");
        spent.free();
        {
            let batches = spent.0.lock().expect("lock");
            assert!(batches.full.is_empty(), "freed");
            assert_eq!(batches.empty.len(), 2);
            assert!(batches.empty.iter().all(|b| b.is_empty() && b.capacity() >= 256));
        }
        fill(&mut batch);
        spent.give(&mut batch);
        assert!(batch.is_empty());
        assert!(batch.capacity() >= 256, "an emptied vector with its room");
        spent.give(&mut batch);
        assert_eq!(
            spent.0.lock().expect("lock").full.len(),
            1,
            "an empty batch is not handed over"
        );
        spent.free();
        spent.free();
        assert_eq!(spent.0.lock().expect("lock").empty.len(), 2);
    }

    #[test]
    fn key_and_payload_share_one_buffer() {
        let message = Message::new(7, Some(1), Some(b"key"), Some(b"value"), None);
        assert_eq!(message.key(), Some(&b"key"[..]));
        assert_eq!(message.payload(), Some(&b"value"[..]));
        assert_eq!((message.offset(), message.timestamp()), (7, Some(1)));
        assert!(message.headers().is_empty());

        let bare = Message::new(0, None, None, Some(b""), None);
        assert_eq!((bare.key(), bare.payload()), (None, Some(&b""[..])));
        let tombstone = Message::new(0, None, Some(b""), None, None);
        assert_eq!((tombstone.key(), tombstone.payload()), (Some(&b""[..]), None));
    }
}

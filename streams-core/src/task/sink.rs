//! Where a task's records go: the producer in a worker, the in-memory topics in the test
//! driver. Records are handed over without waiting for the broker; a full queue is waited
//! out.

use std::sync::Arc;
use std::time::Duration;

/// A record on its way out: to a topic a task sends to, a changelog or a dead-letter topic.
#[derive(Debug, Clone)]
pub(crate) struct OutRecord {
    pub topic: Arc<str>,
    /// `None`: the partitioner picks by key.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Headers,
    /// The record's timestamp (ms): that of the input record that caused it, so that event
    /// time travels through the app's topics. `None`: the producer's clock.
    pub timestamp: Option<i64>,
    /// A changelog record: its acknowledged offset becomes the store's checkpoint.
    pub changelog: bool,
}

/// A record's headers, shared: the changelog records of a cut all carry one list (a copy
/// per record was a dozen allocations).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Headers(Option<Arc<[Header]>>);

/// One header: its name and value.
pub(crate) type Header = (String, Vec<u8>);

impl Headers {
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, (String, Vec<u8>)> {
        self.0.as_deref().unwrap_or_default().iter()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Whether these are `other`, the same shared list (or both none), not merely equal.
    pub(crate) fn same(&self, other: &Headers) -> bool {
        match (&self.0, &other.0) {
            (Some(mine), Some(theirs)) => Arc::ptr_eq(mine, theirs),
            (None, None) => true,
            _ => false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.as_deref().map_or(0, <[_]>::len)
    }

    pub(crate) fn to_vec(&self) -> Vec<(String, Vec<u8>)> {
        self.iter().cloned().collect()
    }
}

impl From<Vec<(String, Vec<u8>)>> for Headers {
    fn from(headers: Vec<(String, Vec<u8>)>) -> Self {
        Self((!headers.is_empty()).then(|| headers.into()))
    }
}

/// Why a record could not be handed over.
pub(crate) enum SinkError {
    /// The producer's queue is full: try again shortly.
    Full(OutRecord),
    /// The record can never be produced.
    Failed(String),
}

/// A record the broker refused for good (its retries spent, or an answer no retry mends:
/// too large for the topic, not allowed to write it, …).
#[derive(Debug, Clone)]
pub(crate) struct Refused {
    pub record: OutRecord,
    /// The broker's answer.
    pub error: String,
}

/// Why a flush failed: records refused, or something else (the producer itself).
#[derive(Debug, Clone, Default)]
pub(crate) struct FlushError {
    pub refused: Vec<Refused>,
    pub other: Option<String>,
}

impl FlushError {
    /// A failure that is not about records.
    pub(crate) fn other(error: impl Into<String>) -> Self {
        Self {
            refused: Vec::new(),
            other: Some(error.into()),
        }
    }
}

impl std::fmt::Display for FlushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .refused
            .iter()
            .take(5)
            .map(|r| match r.record.partition {
                Some(partition) => format!("{}[{partition}]: {}", r.record.topic, r.error),
                None => format!("{}: {}", r.record.topic, r.error),
            })
            .collect();
        if self.refused.len() > 5 {
            parts.push(format!("and {} more records", self.refused.len() - 5));
        }
        if let Some(other) = &self.other {
            parts.push(other.clone());
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// Where records go.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Hands a record over without waiting for the broker.
    fn enqueue(&self, record: OutRecord) -> Result<(), SinkError>;
    /// Hands over a record whose buffers the caller keeps (a cut's changelog records: their
    /// keys and values go on to the stores). A sink that copies what it is handed anyway
    /// (librdkafka does) makes no other copy; by default, a clone goes to [`Sink::enqueue`].
    /// A full queue gives back a clone, for [`enqueue_when_room`].
    fn enqueue_copy(&self, record: &OutRecord) -> Result<(), SinkError> {
        self.enqueue(record.clone())
    }
    /// Waits until every record handed over so far is acknowledged; an error if any failed.
    fn flush(&self) -> Result<(), FlushError>;
    /// Offset of the last acknowledged record of a changelog partition.
    fn changelog_offset(&self, topic: &str, partition: i32) -> Option<i64>;
    /// Whether records were handed over since the last call (exactly-once: whether the
    /// open transaction holds any). A sink that does not keep track says so every time.
    fn take_sent(&self) -> bool {
        true
    }
}

/// Hands a record to the sink, waiting while its queue is full.
pub(crate) async fn enqueue(sink: &dyn Sink, record: OutRecord) -> Result<(), String> {
    // The common case, without reading the clock; waiting is boxed to keep this future small.
    match sink.enqueue(record) {
        Ok(()) => Ok(()),
        Err(SinkError::Full(back)) => Box::pin(enqueue_when_room(sink, back)).await,
        Err(SinkError::Failed(error)) => Err(error),
    }
}

/// Hands a copy of a record to the sink (see [`Sink::enqueue_copy`]), waiting while its queue
/// is full.
pub(crate) async fn enqueue_copy(sink: &dyn Sink, record: &OutRecord) -> Result<(), String> {
    match sink.enqueue_copy(record) {
        Ok(()) => Ok(()),
        Err(SinkError::Full(back)) => Box::pin(enqueue_when_room(sink, back)).await,
        Err(SinkError::Failed(error)) => Err(error),
    }
}

/// Hands a record to the sink once its queue has room, warning every 10 s meanwhile.
pub(crate) async fn enqueue_when_room(sink: &dyn Sink, mut record: OutRecord) -> Result<(), String> {
    let mut full = FullQueue::new();
    loop {
        full.wait().await;
        match sink.enqueue(record) {
            Ok(()) => return Ok(()),
            Err(SinkError::Full(back)) => record = back,
            Err(SinkError::Failed(error)) => return Err(error),
        }
    }
}

/// A wait for room in the producer's queue: a millisecond between tries, a warning every
/// 10 s.
pub(crate) struct FullQueue {
    began: std::time::Instant,
    warned: std::time::Instant,
}

impl FullQueue {
    pub(crate) fn new() -> Self {
        let now = std::time::Instant::now();
        Self {
            began: now,
            warned: now,
        }
    }

    /// Waits before the next try.
    pub(crate) async fn wait(&mut self) {
        if self.warned.elapsed() >= Duration::from_secs(10) {
            self.warned = std::time::Instant::now();
            tracing::warn!(
                "producer queue full for {}s; waiting for the broker to acknowledge records",
                self.began.elapsed().as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub use crate::error::OnError;

/// The production errors' handling: the app's choice, the dead-letter topic, and the records
/// known to be refused (under exactly-once, a refused record aborts its transaction; sent
/// again after the abort, it goes to the dead-letter topic instead).
pub(crate) struct ProductionErrors {
    pub handler: OnError,
    pub dead_letter_topic: Arc<str>,
    /// Fingerprints of refused records, with the broker's answer.
    refused: std::sync::Mutex<std::collections::HashMap<u64, String>>,
    any_refused: std::sync::atomic::AtomicBool,
}

impl ProductionErrors {
    pub(crate) fn new(handler: OnError, dead_letter_topic: impl Into<Arc<str>>) -> Self {
        Self {
            handler,
            dead_letter_topic: dead_letter_topic.into(),
            refused: std::sync::Mutex::default(),
            any_refused: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether `refused` may go to the dead-letter topic: the app says so, and it is no
    /// changelog record (a table's state never goes missing from its changelog).
    pub(crate) fn dead_letters(&self, refused: &[Refused]) -> bool {
        matches!(self.handler, OnError::DeadLetter | OnError::Continue)
            && !refused.is_empty()
            && refused
                .iter()
                .all(|r| !r.record.changelog && r.record.topic != self.dead_letter_topic)
    }

    /// Records to divert to the dead-letter topic when they are sent again; whether any of
    /// them was not known yet (the next attempt gets further).
    pub(crate) fn remember(&self, refused: &[Refused]) -> bool {
        let mut known = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let mut new = false;
        for r in refused {
            new |= known.insert(fingerprint(&r.record), r.error.clone()).is_none();
        }
        self.any_refused.store(true, std::sync::atomic::Ordering::Release);
        new
    }

    /// `record` as the dead letter of a refused one.
    pub(crate) fn dead_letter(&self, refused: &Refused) -> OutRecord {
        let record = &refused.record;
        let mut headers = record.headers.to_vec();
        headers.push(("streams.dlq.topic".into(), record.topic.as_bytes().to_vec()));
        if let Some(partition) = record.partition {
            headers.push(("streams.dlq.partition".into(), partition.to_string().into_bytes()));
        }
        headers.push(("streams.dlq.stage".into(), b"production".to_vec()));
        headers.push(("streams.dlq.error".into(), refused.error.as_bytes().to_vec()));
        OutRecord {
            topic: Arc::clone(&self.dead_letter_topic),
            partition: None,
            key: record.key.clone(),
            value: record.value.clone(),
            headers: headers.into(),
            timestamp: record.timestamp,
            changelog: false,
        }
    }
}

fn fingerprint(record: &OutRecord) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    record.topic.hash(&mut hasher);
    record.key.hash(&mut hasher);
    record.value.hash(&mut hasher);
    hasher.finish()
}

/// A sink that sends records known to be refused to the dead-letter topic instead (see
/// [`ProductionErrors`]).
pub(crate) struct Guarded {
    pub inner: Arc<dyn Sink>,
    pub errors: Arc<ProductionErrors>,
}

impl Sink for Guarded {
    fn enqueue(&self, record: OutRecord) -> Result<(), SinkError> {
        if self.errors.any_refused.load(std::sync::atomic::Ordering::Acquire) && !record.changelog {
            let known = self
                .errors
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&fingerprint(&record))
                .cloned();
            if let Some(error) = known {
                if self.errors.handler == OnError::Continue {
                    tracing::warn!(
                        "a record to {} that the broker refused ({error}) is dropped",
                        record.topic
                    );
                    return Ok(());
                }
                tracing::warn!(
                    "a record to {} that the broker refused ({error}) goes to the dead-letter topic {}",
                    record.topic,
                    self.errors.dead_letter_topic
                );
                return self.inner.enqueue(self.errors.dead_letter(&Refused { record, error }));
            }
        }
        self.inner.enqueue(record)
    }

    fn enqueue_copy(&self, record: &OutRecord) -> Result<(), SinkError> {
        // Only records other than changelog records may be diverted (see `enqueue`).
        if record.changelog || !self.errors.any_refused.load(std::sync::atomic::Ordering::Acquire) {
            self.inner.enqueue_copy(record)
        } else {
            self.enqueue(record.clone())
        }
    }

    fn flush(&self) -> Result<(), FlushError> {
        self.inner.flush()
    }

    fn changelog_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.inner.changelog_offset(topic, partition)
    }

    fn take_sent(&self) -> bool {
        self.inner.take_sent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that notes how each record came (`copy` or `owned`), and whose queue is full
    /// for the first `full` records handed over.
    #[derive(Default)]
    struct Noted {
        taken: Mutex<Vec<(&'static str, OutRecord)>>,
        full: Mutex<usize>,
    }

    impl Noted {
        fn full_once(&self) -> bool {
            let mut full = self.full.lock().unwrap_or_else(|p| p.into_inner());
            let was = *full > 0;
            *full = full.saturating_sub(1);
            was
        }
        fn taken(&self) -> Vec<(&'static str, OutRecord)> {
            self.taken.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
    }

    impl Sink for Noted {
        fn enqueue(&self, record: OutRecord) -> Result<(), SinkError> {
            if self.full_once() {
                return Err(SinkError::Full(record));
            }
            self.taken
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(("owned", record));
            Ok(())
        }
        fn enqueue_copy(&self, record: &OutRecord) -> Result<(), SinkError> {
            if self.full_once() {
                return Err(SinkError::Full(record.clone()));
            }
            self.taken
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(("copy", record.clone()));
            Ok(())
        }
        fn flush(&self) -> Result<(), FlushError> {
            Ok(())
        }
        fn changelog_offset(&self, _: &str, _: i32) -> Option<i64> {
            None
        }
    }

    fn record(topic: &str, key: &str, changelog: bool) -> OutRecord {
        OutRecord {
            topic: Arc::from(topic),
            partition: Some(0),
            key: Some(key.as_bytes().to_vec()),
            value: Some(b"v".to_vec()),
            headers: Headers::default(),
            timestamp: Some(7),
            changelog,
        }
    }

    #[tokio::test]
    async fn a_copy_waits_for_room_and_goes_once() {
        let sink = Noted::default();
        *sink.full.lock().unwrap_or_else(|p| p.into_inner()) = 2;
        let sent = record("t-changelog", "k", true);
        enqueue_copy(&sink, &sent).await.expect("handed over");
        let taken = sink.taken();
        assert_eq!(taken.len(), 1, "{taken:?}");
        // Refused twice: the clone it gave back went once the queue had room.
        assert_eq!(taken[0].0, "owned");
        assert_eq!(taken[0].1.key, sent.key);
        assert_eq!(taken[0].1.value, sent.value);
    }

    #[test]
    fn a_guarded_copy_diverts_known_refusals_but_never_a_changelog_record() {
        let inner = Arc::new(Noted::default());
        let errors = Arc::new(ProductionErrors::new(OnError::DeadLetter, "app-dlq"));
        let guarded = Guarded {
            inner: Arc::clone(&inner) as Arc<dyn Sink>,
            errors: Arc::clone(&errors),
        };
        // Nothing refused yet: copies go through as copies.
        guarded
            .enqueue_copy(&record("out", "a", false))
            .map_err(|_| "full")
            .expect("taken");
        let refused = |r: OutRecord| Refused {
            record: r,
            error: "Broker: Message size too large".into(),
        };
        errors.remember(&[
            refused(record("out", "b", false)),
            refused(record("t-changelog", "c", true)),
        ]);
        guarded
            .enqueue_copy(&record("out", "b", false))
            .map_err(|_| "full")
            .expect("taken");
        guarded
            .enqueue_copy(&record("t-changelog", "c", true))
            .map_err(|_| "full")
            .expect("taken");
        guarded
            .enqueue_copy(&record("out", "d", false))
            .map_err(|_| "full")
            .expect("taken");
        let taken: Vec<(&str, String, String)> = inner
            .taken()
            .into_iter()
            .map(|(how, r)| {
                (
                    how,
                    r.topic.to_string(),
                    String::from_utf8_lossy(&r.key.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            taken,
            vec![
                ("copy", "out".to_string(), "a".to_string()),
                // A record known refused goes to the dead-letter topic instead.
                ("owned", "app-dlq".to_string(), "b".to_string()),
                // A changelog record never does: a table's state never goes missing.
                ("copy", "t-changelog".to_string(), "c".to_string()),
                ("owned", "out".to_string(), "d".to_string()),
            ]
        );
    }

    #[test]
    fn headers_are_shared_and_an_empty_list_is_none() {
        let empty = Headers::from(Vec::new());
        assert!(empty.is_empty() && empty.iter().next().is_none());
        assert_eq!(empty.len(), 0);
        assert_eq!(empty, Headers::default());
        let list = Headers::from(vec![("a".to_string(), b"1".to_vec()), ("b".to_string(), Vec::new())]);
        let copy = list.clone();
        assert_eq!((copy.len(), copy.to_vec()), (2, list.to_vec()));
        assert_eq!(copy.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }
}

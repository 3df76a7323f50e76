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
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record's timestamp (ms): that of the input record that caused it, so that event
    /// time travels through the app's topics. `None`: the producer's clock.
    pub timestamp: Option<i64>,
    /// A changelog record: its acknowledged offset becomes the store's checkpoint.
    pub changelog: bool,
}

/// Why a record could not be handed over.
pub(crate) enum SinkError {
    /// The producer's queue is full: try again shortly.
    Full(OutRecord),
    /// The record can never be produced.
    Failed(String),
}

/// Where records go.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Hands a record over without waiting for the broker.
    fn enqueue(&self, record: OutRecord) -> Result<(), SinkError>;
    /// Waits until every record handed over so far is acknowledged; an error if any failed.
    fn flush(&self) -> Result<(), String>;
    /// Offset of the last acknowledged record of a changelog partition.
    fn changelog_offset(&self, topic: &str, partition: i32) -> Option<i64>;
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

/// Hands a record to the sink once its queue has room, warning every 10 s meanwhile.
pub(crate) async fn enqueue_when_room(sink: &dyn Sink, mut record: OutRecord) -> Result<(), String> {
    let began = std::time::Instant::now();
    let mut warned = began;
    loop {
        tokio::time::sleep(Duration::from_millis(1)).await;
        match sink.enqueue(record) {
            Ok(()) => return Ok(()),
            Err(SinkError::Full(back)) => {
                record = back;
                if warned.elapsed() >= Duration::from_secs(10) {
                    warned = std::time::Instant::now();
                    tracing::warn!(
                        "producer queue full for {}s; waiting for the broker to acknowledge records",
                        began.elapsed().as_secs()
                    );
                }
            }
            Err(SinkError::Failed(error)) => return Err(error),
        }
    }
}

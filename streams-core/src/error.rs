//! Errors of the runtime and of user-facing operations.

use std::fmt;

/// Where a record came from: topic, partition and offset. Every error about a record names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Topic the record was read from (shared: every record of a partition names it).
    pub topic: std::sync::Arc<str>,
    /// Partition of that topic.
    pub partition: i32,
    /// Offset of the record in that partition.
    pub offset: i64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// How many [`DecodeError::unavailable`] and [`EncodeError::unavailable`] errors the process
/// has made. An error met while a record is processed, with this count moved since the
/// record began, may be one of them whatever became of its type on the way (turned into
/// text, wrapped by an agent's own error): the worker then stops before the record instead
/// of dead-lettering it. (An outage met by another task at the same moment stops it too: the
/// safe side.)
static OUTAGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn count_outage() {
    OUTAGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// See [`OUTAGES`].
pub(crate) fn outages() -> u64 {
    OUTAGES.load(std::sync::atomic::Ordering::Relaxed)
}

/// A record's bytes could not be turned into the declared type.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    message: String,
    unavailable: bool,
}

impl DecodeError {
    /// A decode error with a message saying what was wrong.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unavailable: false,
        }
    }

    /// Bytes that could not be decoded because something they need is unavailable (the
    /// schema registry cannot be reached): not the record's fault, so the record does not go
    /// to the dead-letter topic; the worker stops before it instead, and the record is read
    /// again when the worker (or the partition's next owner) starts.
    pub fn unavailable(message: impl Into<String>) -> Self {
        count_outage();
        Self {
            message: message.into(),
            unavailable: true,
        }
    }

    /// The same error, its message after `prefix`.
    pub(crate) fn prefixed(self, prefix: &str) -> Self {
        Self {
            message: format!("{prefix}{}", self.message),
            ..self
        }
    }

    /// Whether this is [`DecodeError::unavailable`].
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }
}

/// A value could not be turned into bytes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EncodeError {
    message: String,
    unavailable: bool,
}

impl EncodeError {
    /// An encode error with a message saying what was wrong.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unavailable: false,
        }
    }

    /// A value that could not be encoded because something it needs is unavailable (the
    /// schema registry cannot be reached): not the input record's fault, so the worker
    /// stops before the record instead of sending it to the dead-letter topic.
    pub fn unavailable(message: impl Into<String>) -> Self {
        count_outage();
        Self {
            message: message.into(),
            unavailable: true,
        }
    }

    /// Whether this is [`EncodeError::unavailable`].
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }
}

impl From<serde_json::Error> for EncodeError {
    fn from(error: serde_json::Error) -> Self {
        Self::new(error.to_string())
    }
}

/// Errors of the streams runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value could not be encoded.
    #[error("cannot encode a value for {what}: {source}")]
    Encode {
        /// What was being encoded (a topic or a table).
        what: String,
        /// The codec's error.
        source: EncodeError,
    },
    /// Bytes could not be decoded.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The codec's error.
        source: DecodeError,
    },
    /// A topic or table was used outside of an agent.
    #[error(
        "{0} was used outside of an agent; sends and table access work inside #[agent] functions (or the test driver)"
    )]
    NoAgentContext(String),
    /// An agent used a table or topic it did not declare in its attribute.
    #[error("agent `{agent}` uses {what} `{name}` without declaring it; add it to #[agent({key} = [...])]")]
    NotDeclared {
        /// The agent.
        agent: String,
        /// "table" or "topic".
        what: &'static str,
        /// `tables` or `sends`.
        key: &'static str,
        /// The table or topic name.
        name: String,
    },
    /// The Kafka client reported an error.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// A state store reported an error.
    #[error("state store {path}: {source}")]
    Store {
        /// Path of the store.
        path: String,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// A file-system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The app's declarations do not fit together or do not fit the cluster.
    #[error("{0}")]
    Config(String),
    /// The worker is shutting down or a partition was revoked.
    #[error("the worker is stopping")]
    Stopping,
    /// Exactly-once: an agent sent a record after its stream ended because its transaction
    /// was aborted (or the worker failed). What the agent did since the last commit is
    /// undone and its input is processed again, so the record is not sent: it would be a
    /// duplicate of what the replay sends.
    #[error(
        "task `{task}` (partition {partition}): not sent: its transaction was aborted, and its input is \
         processed again from the last commit"
    )]
    Aborted {
        /// The agent.
        task: String,
        /// Its partition.
        partition: i32,
    },
}

impl Error {
    pub(crate) fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Error::Kafka {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result with the streams [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message of a panic.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// What to do with a record that fails: one that does not decode, one whose processing
/// fails, one the broker refuses for good (Kafka Streams' exception handlers, KIP-1033/1034;
/// see `App::on_deserialization_error`, `App::on_processing_error`,
/// `App::on_production_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Stop the worker with an error naming the record (Kafka Streams' `LogAndFail`, and its
    /// default production handler). The record is not committed: the partition's next owner
    /// meets it again.
    #[default]
    Fail,
    /// Send the record to the dead-letter topic, with headers saying where it came from (or
    /// was going) and why, and go on.
    DeadLetter,
    /// Log it and go on without it (Kafka Streams' `LogAndContinue`): the record is dropped
    /// (a task's input records are counted in the `skipped_records` metric).
    Continue,
}

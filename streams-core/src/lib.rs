//! # streams
//!
//! Stream processing for Rust in the tradition of Faust and Kafka Streams. Mark records with
//! `#[record]`, declare typed topics and tables once, write agents as `async fn`s over a
//! stream, and run the app: a worker consumes Kafka topics, keeps per-partition state in
//! RocksDB backed by changelog topics, survives crashes and rebalances, and scales out by
//! starting more workers with the same app id.
//!
//! ```no_run
//! use streams_core::prelude::*;
//!
//! #[record]
//! pub struct HitCount {
//!     pub hits: i64,
//!     pub timestamp: f64,
//!     #[serde(rename = "userId")]
//!     pub user_id: String,
//! }
//!
//! const HIT_COUNT: Topic<(), HitCount> = Topic::new("hit_count");
//! const COUNT_TOPIC: Topic<String, HitCount> = Topic::new("count_topic").internal();
//! const MAJOR_COUNT: Table<String, i64> = Table::new("major-count");
//!
//! #[agent(topic = HIT_COUNT, sends = [COUNT_TOPIC])]
//! async fn find_major_hits(mut hits: Stream<(), HitCount>) -> Result<()> {
//!     while let Some(hit) = hits.next().await {
//!         if hit.hits > 20 {
//!             COUNT_TOPIC.send(&hit.user_id, &hit).await?;
//!         }
//!     }
//!     Ok(())
//! }
//!
//! #[agent(topic = COUNT_TOPIC, tables = [MAJOR_COUNT])]
//! async fn count_hits(mut hits: Stream<String, HitCount>) -> Result<()> {
//!     while let Some(hit) = hits.next().await {
//!         MAJOR_COUNT.update(&hit.user_id, |n| *n += 1).await?;
//!     }
//!     Ok(())
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     App::new("hit_counter").agent(find_major_hits).agent(count_hits).main()
//! }
//! ```
//!
//! Build it and run `hit_counter worker` (the embedded broker, no Kafka needed) or
//! `hit_counter worker --broker kafka:9092`; start the same binary again with another
//! `--data-dir` to scale out.
//!
//! # A guide
//!
//! **Records, topics and tables.** `#[record]` gives a type serde's derives and [`Record`]
//! (JSON on the wire by default; [`codec`] for other formats, [`schema`] for Avro, Protobuf
//! and JSON Schema with a Schema Registry). A [`Topic<K, V>`](Topic) is a
//! constant with the topic's key and value types (`()` for no key); `.internal()` marks the
//! app's own intermediate topics, which the worker creates. A [`Table<K, V>`](Table) is a
//! constant too: a key-value store per partition (RocksDB on a worker), its changes on the
//! changelog topic `{app}-{table}-changelog`.
//!
//! **Agents.** [`macro@agent`] turns an `async fn` over a [`Stream`] into a task per partition
//! of its topic. It reads records with [`Stream::next`] (values) or [`Stream::next_event`]
//! (key, value, timestamp and origin), sends with [`Topic::send`], and reads and changes
//! tables with [`Table::get`] and [`Table::update`]. The `sends` and `tables` it declares are
//! checked at compile time against what its body uses; a table's key type is its stream's,
//! so state always lives with its input's partition.
//!
//! **Pipelines.** The [`dsl`] is Kafka Streams' `StreamsBuilder`: [`App::pipeline`] builds
//! [`KStream`](dsl::KStream)s and [`KTable`](dsl::KTable)s with maps and filters, re-keying
//! (through repartition topics), aggregations, windows ([`window`]), suppression, and every
//! kind of join. [`App::topology`] describes the result before anything connects.
//!
//! **Running.** [`App::main`] is the command line (`worker`, `send`, `tail`, `tables`,
//! `topology`, `reset`; `--help` lists the options). In code, [`Worker::start`] with
//! [`WorkerOptions`] runs a worker and gives a [`WorkerHandle`] to stop it and read its
//! [`Metrics`]. Without a broker address a worker starts an [`EmbeddedBroker`].
//!
//! **State that survives.** On each commit point a task's table changes go to their
//! changelogs, its offsets are committed, and its stores are written with a checkpoint. A
//! partition that moves is restored on its new worker from the checkpoint of its store there
//! (restores run side by side, off the poll thread); changes of input the group had not
//! committed are skipped, so a crash cannot count twice in a table. All stores of a worker
//! share one RocksDB memory budget ([`WorkerOptions::state_memory`]). Standby replicas
//! ([`WorkerOptions::standby_replicas`]) keep warm copies on other workers, so that a
//! failover restores only the tail.
//!
//! **Guarantees.** At-least-once by default, in order per partition; exactly-once
//! ([`app::ProcessingGuarantee::ExactlyOnce`]) runs every commit round as one Kafka
//! transaction. Records that do not decode, or whose processing fails, go to a dead-letter
//! topic with their topic, partition, offset and the reason ([`OnError`] chooses otherwise).
//!
//! **Testing.** [`testing::TestDriver`] runs an app's real tasks on in-memory topics, with
//! no broker: pipe records in, run, read outputs and tables, and crash or move partitions,
//! fail commits or delay transaction markers to test what the app does then.
//!
//! **Operating.** Each worker serves table lookups (forwarded to the key's owner), Prometheus
//! metrics, health and readiness, and its live topology ([`web`]). [`faust`] reads and writes
//! Faust's formats, so that a Faust app's topics and tables carry on under this library.

// The macros emit `::streams_core::...` paths; this makes them work inside this crate too.
extern crate self as streams_core;

pub mod agent;
pub mod app;
pub mod broker;
pub mod changelog;
mod cli;
pub mod codec;
pub mod dsl;
mod error;
pub mod faust;
mod message;
mod metrics;
pub mod partitioner;
pub mod record;
mod reset;
pub mod schema;
mod spec;
pub mod store;
pub mod stream;
pub mod table;
mod tail;
mod task;
pub mod testing;
pub mod timer;
pub mod topic;
pub mod topology;
pub mod web;
pub mod window;
pub mod worker;

pub use agent::{Agent, AgentResult, AgentSpec};
pub use app::App;
pub use broker::EmbeddedBroker;
pub use cli::init_logging;
pub use codec::{AsKey, Json, Key};
pub use error::OnError;
pub use error::{DecodeError, EncodeError, Error, Origin, Result};
pub use metrics::Metrics;
pub use record::Record;
pub use stream::{Event, Next, Punctuated, Stream};
pub use table::{Table, TableSpec, WindowedTable};
pub use task::run::{TaskKind, TaskSpec};
pub use topic::{Topic, TopicSpec};
pub use topology::Topology;
pub use worker::{Worker, WorkerHandle, WorkerOptions};

/// `#[record]`: serde's derives plus [`Record`], for a struct or an enum.
/// `#[record(faust = "module.Class")]` adds [`faust::FaustRecord`], for Faust's format.
pub use streams_macros::record;

/// `#[agent(topic = T, sends = [..], tables = [..])]` on an `async fn(Stream<K, V>)`.
///
/// - `topic`: the source, a [`Topic`] constant or a topic name as a string (whose types
///   are then the stream's);
/// - `sends`: topics the agent sends to (constants);
/// - `tables`: tables the agent reads and updates (constants).
///
/// The function may return `()` or `Result<(), E>` with `E: Display`.
pub use streams_macros::agent;

/// `#[topic]` on a `const T: Topic<K, V> = Topic::new("name")…;` declaration: a second
/// `#[topic]` declaration of the same topic name in the module fails to compile.
pub use streams_macros::topic;

/// Everything an app needs: `use streams_core::prelude::*;`.
pub mod prelude {
    pub use crate::codec::ValueCodec;
    pub use crate::dsl::{
        Forward, GlobalKTable, JoinWindows, KGroupedStream, KStream, KTable, Processor, StreamsBuilder,
    };
    pub use crate::stream::Next;
    pub use crate::timer::{Tick, Timer};
    pub use crate::window::{SessionWindows, SlidingWindows, TimeWindows, Window, Windowed};
    pub use crate::{
        agent, record, topic, App, Event, Json, Key, OnError, Record, Result, Stream, Table, Topic, WindowedTable,
    };
    /// Windows, grace periods, intervals and timeouts are `Duration`s.
    pub use std::time::Duration;
}

/// What the macros' output calls. Not a public API: it changes without notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::agent::{source_of, table_of, Agent, AgentSpec};
    pub use crate::faust::FaustRecord;
    pub use crate::record::Record;
    pub use crate::stream::StreamParam;
    pub use crate::table::Table;
    pub use crate::topic::Topic;
    /// `#[record(avro)]` derives the type's Avro schema with this.
    #[cfg(feature = "avro")]
    pub use apache_avro::AvroSchema;
    pub use serde;
    pub use std::vec::Vec;
}

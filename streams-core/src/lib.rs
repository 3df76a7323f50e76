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
    pub use serde;
    pub use std::vec::Vec;
}

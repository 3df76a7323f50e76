//! The DSL: pipelines of typed streams and tables, in Kafka Streams' terms — `filter`,
//! `map_values`, `group_by`, `count`, `to_stream`, `to` — on the same runtime as agents.
//!
//! A pipeline is built once, when the app is made ([`crate::App::pipeline`]); it splits into
//! sub-topologies at its repartition topics, and each sub-topology runs as a task on
//! partition *p* of its source topics, exactly as an agent does: same stores, changelogs,
//! cuts, dead-letter topic, metrics and test driver. Types flow through the chain, so a
//! record sent to a topic of other types, or aggregated into a table of other types, is a
//! compile error where it is written.
//!
//! ```
//! use streams_core::prelude::*;
//!
//! #[record]
//! #[derive(Clone)]
//! struct HitCount {
//!     hits: i64,
//!     timestamp: f64,
//!     #[serde(rename = "userId")]
//!     user_id: String,
//! }
//!
//! const HIT_COUNT: Topic<(), HitCount> = Topic::new("hit_count");
//! const MAJOR_COUNT: Table<String, i64> = Table::new("major-count");
//!
//! fn app() -> App {
//!     App::new("hit_counter_dsl").pipeline("major-hits", |builder| {
//!         builder
//!             .stream(HIT_COUNT)
//!             .filter(|_, hit| hit.hits > 20)
//!             .group_by("by-user", |_, hit| hit.user_id.clone())
//!             .count(MAJOR_COUNT);
//!     })
//! }
//! # assert_eq!(app().tasks().len(), 2);
//! ```

mod buffer;
mod builder;
mod cogroup;
mod cogroup_windowed;
mod foreign;
mod grace;
mod grouped;
mod join;
mod node;
mod process;
mod run;
mod same_key;
mod stream;
mod suppress;
mod table;
mod versioned;
mod windowed;

pub use self::builder::{NodeInfo, NodeKind, Pipeline, StreamsBuilder};
pub use self::cogroup::CogroupedKStream;
pub use self::cogroup_windowed::{
    CogroupWindowsOf, CogroupedRecords, CogroupedSessionWindowedKStream, CogroupedTimeWindowedKStream,
};
pub use self::grouped::KGroupedStream;
pub use self::join::{GlobalKTable, JoinWindows};
pub use self::process::{Forward, ForwardKept, ForwardValues, Kept, Processor, ValueProcessor};
pub use self::same_key::SameKey;
pub use self::stream::{BranchedKStream, KStream, Keyed, PartitionedByKey, Rekeyed};
pub use self::suppress::{BufferConfig, Suppressed};
pub use self::table::KTable;
pub use self::versioned::VersionedKTable;
pub use self::windowed::{SessionWindowedKStream, TimeWindowedKStream, WindowsOf};

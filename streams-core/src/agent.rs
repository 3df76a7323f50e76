//! Agents: the user's async functions, fed one partition's records at a time.
//!
//! `#[agent(...)]` turns an `async fn(Stream<K, V>)` into a unit struct implementing
//! [`Agent`]; [`crate::App::agent`] registers it. The worker runs one instance of each agent
//! per assigned partition of its source topic; records of a partition reach the instance in
//! order, partitions run concurrently.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use crate::stream::{RawStream, StreamParam};
use crate::table::TableSpec;
use crate::task::run::{RunFn, TaskKind, TaskSpec};
use crate::topic::{Topic, TopicReader, TopicSpec};

/// Everything the runtime knows of an agent: its name, its source topic, the topics it
/// sends to, the tables it uses, and how to run it.
#[derive(Clone)]
pub struct AgentSpec {
    /// The agent's name (the function's name).
    pub name: &'static str,
    /// The topic the agent reads.
    pub source: TopicSpec,
    /// The topics the agent sends to.
    pub sends: Vec<TopicSpec>,
    /// The tables the agent reads and updates.
    pub tables: Vec<TableSpec>,
    pub(crate) run: RunFn,
}

impl std::fmt::Debug for AgentSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSpec")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("sends", &self.sends)
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

impl AgentSpec {
    /// Builds the spec of an agent whose function takes the stream `S`. Called by the code
    /// `#[agent]` generates.
    pub fn new<S, V: 'static, F, Fut>(
        name: &'static str,
        source: Source<V>,
        sends: Vec<TopicSpec>,
        tables: Vec<TableSpec>,
        function: F,
    ) -> Self
    where
        S: StreamParam<Value = V>,
        F: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: AgentResult,
    {
        let reader = source.reader;
        let run: RunFn = Arc::new(move |raw: RawStream| {
            let fut = function(S::from_raw(raw, reader));
            Box::pin(async move { fut.await.into_agent_result() })
        });
        Self {
            name,
            source: source.spec,
            sends,
            tables,
            run,
        }
    }

    /// The dead-letter topic of this agent in the app `app_id`: `{app}-{agent}-dlq`.
    pub fn dead_letter_topic(&self, app_id: &str) -> String {
        format!("{app_id}-{}-dlq", self.name)
    }

    /// What the runtime runs for this agent in the app `app_id`.
    pub fn task(&self, app_id: &str) -> TaskSpec {
        TaskSpec {
            name: self.name.to_string(),
            kind: TaskKind::Agent,
            sources: vec![self.source.clone()],
            sends: self.sends.clone(),
            tables: self.tables.clone(),
            dead_letter_topic: self.dead_letter_topic(app_id),
            on_deserialization_error: crate::task::sink::OnError::DeadLetter,
            on_processing_error: crate::task::sink::OnError::DeadLetter,
            run: Arc::clone(&self.run),
        }
    }
}

/// An agent, as `#[agent]` generates it (a function returning its [`AgentSpec`]).
/// Register it with [`crate::App::agent`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an agent",
    note = "put `#[agent(topic = ...)]` on an `async fn` that takes a `Stream<K, V>`"
)]
pub trait Agent {
    /// The agent's description.
    fn spec(&self) -> AgentSpec;
}

impl<F: Fn() -> AgentSpec> Agent for F {
    fn spec(&self) -> AgentSpec {
        self()
    }
}

/// What an agent function may return: `()` or `Result<(), E>` with a displayable error.
/// An error is logged with the record being processed, that record goes to the agent's
/// dead-letter topic, and the agent is started again on the next record.
#[diagnostic::on_unimplemented(
    message = "an agent must return `()` or `Result<(), E>` where `E: Display`, not `{Self}`"
)]
pub trait AgentResult {
    /// `Err` with the message when the agent failed.
    fn into_agent_result(self) -> Result<(), String>;
}

impl AgentResult for () {
    fn into_agent_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> AgentResult for Result<(), E> {
    fn into_agent_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// An agent's source topic, with how its records are read.
pub struct Source<V> {
    spec: TopicSpec,
    reader: TopicReader<V>,
}

/// The source topic of an agent whose stream is `S`: the stream's key and value types must
/// be the topic's. Called by the code `#[agent]` generates.
pub fn source_of<S: StreamParam>(topic: &Topic<S::Key, S::Value>) -> Source<S::Value> {
    Source {
        spec: topic.spec(),
        reader: topic.reader(),
    }
}

/// A table used by an agent whose stream is `S`: the table's key type must be the stream's
/// key type (a table is partitioned like the stream that updates it). Called by the code
/// `#[agent]` generates.
pub fn table_of<S: StreamParam, T: TableOf<S::Key>>(table: &T) -> TableSpec {
    table.table_spec()
}

/// A table keyed by `K`, as an agent whose stream has keys `K` can use it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not keyed like the agent's stream, whose keys are `{K}`",
    label = "this table's key type is not the stream's",
    note = "a table is partitioned like the stream that updates it: partition p of the table lives with \
            partition p of the stream, so its key type must be the stream's key type",
    note = "to keep state under another key, send the records keyed that way to an internal topic and \
            update the table from an agent on that topic"
)]
pub trait TableOf<K> {
    /// The table's description.
    fn table_spec(&self) -> TableSpec;
}

impl<K: crate::codec::Key, V> TableOf<K> for crate::table::Table<K, V> {
    fn table_spec(&self) -> TableSpec {
        self.spec()
    }
}

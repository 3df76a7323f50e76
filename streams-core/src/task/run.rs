//! What runs on a partition: a [`TaskSpec`] — an agent, or a sub-topology of a pipeline —
//! and the loop that runs it, starting it again when it fails.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use super::input::{Home, RawStream, StreamCore};
use super::sink::OnError;
use super::TaskContext;
use crate::spec::{TableSpec, TopicSpec};

pub(crate) type TaskFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
pub(crate) type RunFn = Arc<dyn Fn(RawStream) -> TaskFuture + Send + Sync>;

/// What the runtime runs on partition *p* of its sources: an agent, or a sub-topology of a
/// pipeline. The worker and the test driver run one instance per assigned partition.
#[derive(Clone)]
pub struct TaskSpec {
    /// The agent's name, or the sub-topology's (`{pipeline}/{source}`).
    pub name: String,
    /// Whether an agent or a pipeline runs here (for messages).
    pub kind: TaskKind,
    /// The topics the task reads; partition *p* of each belongs to the task of partition *p*.
    pub sources: Vec<TopicSpec>,
    /// The topics the task sends to.
    pub sends: Vec<TopicSpec>,
    /// The tables the task keeps.
    pub tables: Vec<TableSpec>,
    /// Where records it cannot process go.
    pub dead_letter_topic: String,
    /// What becomes of a record that does not decode (`App::on_deserialization_error`).
    pub on_deserialization_error: OnError,
    /// What becomes of a record whose processing fails (`App::on_processing_error`).
    pub on_processing_error: OnError,
    pub(crate) run: RunFn,
}

/// What runs in a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// An `#[agent]` function.
    Agent,
    /// A sub-topology of a DSL pipeline.
    Pipeline,
}

impl std::fmt::Debug for TaskSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("sources", &self.sources)
            .field("sends", &self.sends)
            .field("tables", &self.tables)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .finish_non_exhaustive()
    }
}

impl TaskSpec {
    /// The index of `topic` among the task's sources.
    pub fn source_index(&self, topic: &str) -> Option<usize> {
        self.sources.iter().position(|s| s.name == topic)
    }
}

/// Runs a task on one partition until its input ends. A task that fails (returns an error
/// or panics) has the record it was processing sent to its dead-letter topic and is started
/// again on the next record: one bad record never stops a partition.
pub(crate) async fn run_partition(spec: Arc<TaskSpec>, core: StreamCore) {
    let ctx = Arc::clone(&core.ctx);
    let home = Home::new(Box::new(core));
    loop {
        let Some(raw) = RawStream::new(Arc::clone(&home)) else {
            break;
        };
        let run = ctx.scope((spec.run)(raw));
        let outcome = AssertUnwindSafe(run).catch_unwind().await;
        let Some(mut core) = Home::take_core(&home).await else {
            tracing::error!(
                task = spec.name,
                partition = ctx.partition,
                "the task kept its stream; partition stopped"
            );
            break;
        };
        match outcome {
            Ok(Ok(())) if core.ended => break,
            Ok(Err(error)) if ctx.is_aborted() && !core.has_current() => {
                // Exactly-once, after an abort: most likely a send refused after the stream
                // ended (`Error::Aborted`); the partition starts again from its last commit.
                tracing::warn!(
                    task = spec.name,
                    partition = ctx.partition,
                    "task ended with an error after its transaction was aborted: {error}"
                );
                break;
            }
            Ok(Ok(())) => {
                tracing::warn!(
                    task = spec.name,
                    partition = ctx.partition,
                    "task returned before its input ended; starting it again in 1s"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(Err(error)) if !core.ended && !core.has_current() => {
                core.ended = failed_outside_a_record(&ctx, &spec.name, &error.to_string()).await;
            }
            Err(panic) if !core.ended && !core.has_current() => {
                let message = crate::error::panic_text(&*panic);
                core.ended = failed_outside_a_record(&ctx, &spec.name, &format!("panic: {message}")).await;
            }
            Ok(Err(error)) => {
                // The record it held takes the app's handler, which logs it (a dead letter
                // or a skipped record at warn, a stop at error).
                if !core.has_current() {
                    tracing::error!(task = spec.name, partition = ctx.partition, "task failed: {error}");
                }
                // Something outside the record (the schema registry) was unavailable while
                // the agent had it, whatever the agent made of that error: the worker stops
                // before the record (it is not at fault).
                if core.outage_since_begin() {
                    core.halt_current(&error);
                } else {
                    core.fail_current(&error).await;
                }
            }
            Err(panic) => {
                let message = crate::error::panic_text(&*panic);
                if !core.has_current() {
                    tracing::error!(task = spec.name, partition = ctx.partition, "task panicked: {message}");
                }
                core.fail_current(&format!("panic: {message}")).await;
            }
        }
        if core.ended {
            break;
        }
        Home::put(&home, core);
    }
}

/// A task that failed while its input went on and it held no record (before its first; a
/// record stays the task's until it asks for the next): there is none to send to the
/// dead-letter topic or to skip. It starts
/// again a second later, as a task that returned early does: at once, an agent that fails at
/// its start would fail again in a loop that never yields its thread. Under `OnError::Fail`
/// (processing errors) the worker stops and the task takes nothing more: `true`.
async fn failed_outside_a_record(ctx: &TaskContext, task: &str, error: &str) -> bool {
    let partition = ctx.partition;
    if ctx.on_processing_error == OnError::Fail {
        ctx.metrics.fail(format!(
            "task `{task}` (partition {partition}) failed outside a record: {error}; the worker stops, as \
             App::on_processing_error says"
        ));
        return true;
    }
    tracing::error!(
        task,
        partition,
        "task failed outside a record (none to send to the dead-letter topic): {error}; starting it again in 1s"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    false
}

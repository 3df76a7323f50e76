//! The app: an id (the consumer group and the prefix of its internal topics), its agents,
//! and settings. `App::main` gives it Faust's command line.

use std::collections::HashMap;
use std::time::Duration;

use crate::agent::{Agent, AgentSpec};
use crate::dsl::{Pipeline, StreamsBuilder};
use crate::spec::PlannedTopic;
use crate::table::TableSpec;
use crate::task::run::{TaskKind, TaskSpec};
use crate::timer::Timer;
use crate::topic::TopicSpec;
use crate::{Error, Result};

/// A stream-processing app.
///
/// ```
/// use streams_core::prelude::*;
///
/// #[record]
/// struct Hit { hits: i64 }
///
/// const HITS: Topic<(), Hit> = Topic::new("hits");
///
/// #[agent(topic = HITS)]
/// async fn print_hits(mut hits: Stream<(), Hit>) {
///     while let Some(hit) = hits.next().await {
///         println!("{}", hit.hits);
///     }
/// }
///
/// let app = App::new("printer").agent(print_hits);
/// assert_eq!(app.agents()[0].source.name, "hits");
/// ```
#[derive(Debug, Clone)]
pub struct App {
    id: String,
    agents: Vec<AgentSpec>,
    pipelines: Vec<Pipeline>,
    timers: Vec<Timer>,
    topic_partitions: i32,
    /// `None`: the guarantee's default (1 s at-least-once, 100 ms exactly-once).
    commit_interval: Option<Duration>,
    table_cache_bytes: usize,
    guarantee: ProcessingGuarantee,
    /// What to do with records the broker refuses for good.
    on_production_error: crate::task::sink::OnError,
    /// Where refused records go (`{app}-dlq` unless named).
    production_dead_letters: Option<String>,
    on_deserialization_error: crate::task::sink::OnError,
    on_processing_error: crate::task::sink::OnError,
    /// One dead-letter topic for every agent and pipeline, when named.
    dead_letters: Option<String>,
}

/// What a worker guarantees about the effects of each input record.
///
/// ```
/// use streams_core::app::ProcessingGuarantee;
/// use streams_core::App;
///
/// let app = App::new("payments").processing_guarantee(ProcessingGuarantee::ExactlyOnce);
/// assert_eq!(app.guarantee(), ProcessingGuarantee::ExactlyOnce);
/// assert_eq!(app.commit_interval_value(), std::time::Duration::from_millis(100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessingGuarantee {
    /// Every input record's effects happen at least once: after a crash, input since the last
    /// commit is processed again, and what it sent may be sent twice (the default).
    #[default]
    AtLeastOnce,
    /// Every input record's effects happen exactly once for readers with
    /// `isolation.level=read_committed`: each commit interval is one Kafka transaction holding
    /// the outputs, the changelog records and the source offsets (Kafka Streams'
    /// `exactly_once_v2`).
    ExactlyOnce,
}

impl std::str::FromStr for ProcessingGuarantee {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "at-least-once" | "at_least_once" => Ok(Self::AtLeastOnce),
            "exactly-once" | "exactly_once" | "exactly_once_v2" => Ok(Self::ExactlyOnce),
            other => Err(format!("`{other}` is not a guarantee: at-least-once or exactly-once")),
        }
    }
}

impl App {
    /// An app with this id: the consumer group's name and the prefix of its changelog and
    /// dead-letter topics.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            agents: Vec::new(),
            pipelines: Vec::new(),
            timers: Vec::new(),
            topic_partitions: 8,
            commit_interval: None,
            table_cache_bytes: 1 << 20,
            guarantee: ProcessingGuarantee::AtLeastOnce,
            on_production_error: crate::task::sink::OnError::Fail,
            production_dead_letters: None,
            on_deserialization_error: crate::task::sink::OnError::DeadLetter,
            on_processing_error: crate::task::sink::OnError::DeadLetter,
            dead_letters: None,
        }
    }

    /// What to do with a record that does not decode (its key or value, or a value's event
    /// time): [`OnError::DeadLetter`](crate::OnError::DeadLetter), the default, copies it
    /// unchanged to the dead-letter topic with `streams.dlq.{topic,partition,offset,stage,error}`
    /// headers and goes on; [`OnError::Continue`](crate::OnError::Continue) logs and drops it;
    /// [`OnError::Fail`](crate::OnError::Fail) stops the worker before it, with an error
    /// naming its topic, partition and offset (Kafka Streams' deserialization exception
    /// handler; its default is to fail, ours keeps bad input out of the way without losing
    /// it).
    ///
    /// ```
    /// use streams_core::{App, OnError};
    /// let app = App::new("orders").on_deserialization_error(OnError::Fail);
    /// assert_eq!(app.tasks().len(), 0);
    /// ```
    pub fn on_deserialization_error(mut self, handling: crate::task::sink::OnError) -> Self {
        self.on_deserialization_error = handling;
        self
    }

    /// What to do with a record whose processing fails (an agent that returns an error or
    /// panics on it, a DSL closure that panics, a value a table or topic cannot encode): the
    /// same choices as [`App::on_deserialization_error`], with the same default (KIP-1033's
    /// processing exception handler).
    ///
    /// ```
    /// use streams_core::{App, OnError};
    /// let app = App::new("orders").on_processing_error(OnError::Continue);
    /// # let _ = app;
    /// ```
    pub fn on_processing_error(mut self, handling: crate::task::sink::OnError) -> Self {
        self.on_processing_error = handling;
        self
    }

    /// One dead-letter topic for the records every agent and pipeline cannot process
    /// (KIP-1034's `errors.dead.letter.queue.topic.name`), instead of one per agent
    /// (`{app}-{agent}-dlq`) and pipeline (`{app}-{pipeline}-dlq`). The records' headers
    /// name the agent or sub-topology (`streams.dlq.agent`).
    ///
    /// ```
    /// use streams_core::App;
    /// let app = App::new("orders").dead_letter_topic("orders-dead-letters");
    /// # let _ = app;
    /// ```
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letters = Some(topic.into());
        self
    }

    /// The dead-letter topic of an agent or pipeline whose own is `own`.
    pub(crate) fn dead_letter_topic_for(&self, own: String) -> String {
        self.dead_letters.clone().unwrap_or(own)
    }

    /// What to do with a record the broker refuses for good (too large for its topic, a
    /// topic the worker may not write, …), as Kafka Streams' production exception handler:
    /// [`OnError::Fail`](crate::OnError::Fail) (the default) stops the worker with an error
    /// naming the record's topic and the broker's answer; [`OnError::DeadLetter`](crate::OnError::DeadLetter)
    /// sends the record to the dead-letter topic ([`App::production_dead_letter_topic`], or
    /// the app's [`App::dead_letter_topic`], or `{app}-dlq`) with headers saying where it was going and why,
    /// and goes on. Under exactly-once the refusal aborts the transaction; sent again after
    /// the abort, the record goes to the dead-letter topic. A table's changelog record is
    /// never dead-lettered: its refusal stops the worker either way.
    ///
    /// ```
    /// use streams_core::{App, OnError};
    /// let app = App::new("orders").on_production_error(OnError::DeadLetter);
    /// # let _ = app;
    /// ```
    pub fn on_production_error(mut self, handling: crate::task::sink::OnError) -> Self {
        self.on_production_error = handling;
        self
    }

    /// Where records the broker refused go with [`OnError::DeadLetter`](crate::OnError::DeadLetter)
    /// (default: the app's [`App::dead_letter_topic`] if it names one, else `{app}-dlq`).
    pub fn production_dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.production_dead_letters = Some(topic.into());
        self
    }

    /// How the app's workers handle records the broker refuses.
    pub(crate) fn production_errors(&self) -> crate::task::sink::ProductionErrors {
        crate::task::sink::ProductionErrors::new(self.on_production_error, self.production_dead_letter_topic_name())
    }

    fn production_dead_letter_topic_name(&self) -> String {
        self.production_dead_letters
            .clone()
            .or_else(|| self.dead_letters.clone())
            .unwrap_or_else(|| format!("{}-dlq", self.id))
    }

    /// Adds an agent (a function marked `#[agent]`).
    pub fn agent(mut self, agent: impl Agent) -> Self {
        self.agents.push(agent.spec());
        self
    }

    /// Adds a pipeline built with the DSL: `build` gets a [`StreamsBuilder`] and chains
    /// streams and tables on it. The name names the pipeline's tasks (`{name}/{source}`) and
    /// its dead-letter topic (`{app}-{name}-dlq`).
    ///
    /// ```
    /// use streams_core::prelude::*;
    ///
    /// const LINES: Topic<(), String> = Topic::new("text-lines").utf8_values();
    /// const LONG: Topic<(), String> = Topic::new("long-lines").utf8_values();
    ///
    /// let app = App::new("lines").pipeline("long", |builder| {
    ///     builder.stream(LINES).filter(|_, line| line.len() > 80).to(LONG);
    /// });
    /// assert_eq!(app.tasks()[0].name, "long/text-lines");
    /// ```
    pub fn pipeline(mut self, name: &str, build: impl FnOnce(&StreamsBuilder)) -> Self {
        let builder = StreamsBuilder::new(&self.id, name);
        build(&builder);
        self.pipelines.push(builder.build());
        self
    }

    /// The app's pipelines.
    pub fn pipelines(&self) -> &[Pipeline] {
        &self.pipelines
    }

    /// Adds a timer (see [`Timer`]): work on the wall clock, on every worker.
    pub fn timer(mut self, timer: Timer) -> Self {
        self.timers.push(timer);
        self
    }

    /// The app's timers.
    pub fn timers(&self) -> &[Timer] {
        &self.timers
    }

    /// Partition count of topics the app creates without a declared count (default 8, as in Faust).
    pub fn topic_partitions(mut self, partitions: i32) -> Self {
        self.topic_partitions = partitions;
        self
    }

    /// How often each partition's progress is committed (default 1 s; 100 ms under
    /// exactly-once, as in Kafka Streams).
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = Some(interval);
        self
    }

    /// The commit interval in effect.
    pub fn commit_interval_value(&self) -> Duration {
        self.commit_interval.unwrap_or(match self.guarantee {
            ProcessingGuarantee::AtLeastOnce => Duration::from_secs(1),
            ProcessingGuarantee::ExactlyOnce => Duration::from_millis(100),
        })
    }

    /// Sets the processing guarantee (default at-least-once); the command line's
    /// `worker --processing-guarantee` overrides it.
    pub fn processing_guarantee(mut self, guarantee: ProcessingGuarantee) -> Self {
        self.guarantee = guarantee;
        self
    }

    /// The processing guarantee.
    pub fn guarantee(&self) -> ProcessingGuarantee {
        self.guarantee
    }

    /// Memory for table entries per table partition (default 1 MiB), like Kafka Streams'
    /// `statestore.cache.max.bytes`. Reads and repeated updates of cached keys never touch
    /// the store; when a partition's entries pass this budget, it commits early (its changes
    /// go to the changelog and the store) and starts an empty cache, so memory stays bounded
    /// however many keys a commit interval touches. A worker with a state memory budget
    /// ([`WorkerOptions::state_memory`](crate::WorkerOptions::state_memory)) gives its table
    /// partitions together at most a sixteenth of it, so each may get less than this.
    ///
    /// ```
    /// # use streams_core::App;
    /// let app = App::new("counter").table_cache_bytes(8 << 20);
    /// ```
    pub fn table_cache_bytes(mut self, bytes: usize) -> Self {
        self.table_cache_bytes = bytes;
        self
    }

    pub(crate) fn table_cache_bytes_value(&self) -> usize {
        self.table_cache_bytes
    }

    /// The app's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The app's agents.
    pub fn agents(&self) -> &[AgentSpec] {
        &self.agents
    }

    /// What the runtime runs: one task per agent and per sub-topology of each pipeline.
    pub fn tasks(&self) -> Vec<TaskSpec> {
        let agents = self.agents.iter().map(|agent| agent.task(&self.id));
        let pipelines = self.pipelines.iter().flat_map(|p| p.tasks.iter().cloned());
        agents
            .chain(pipelines)
            .map(|mut task| {
                // A TTL table's times live in a table of their own, kept by the same task.
                let times: Vec<TableSpec> = task
                    .tables
                    .iter()
                    .filter(|table| table.ttl.is_some())
                    .map(|table| TableSpec {
                        name: crate::spec::static_name(table.ttl_table_name()),
                        value_type: "ttl times",
                        lookup: None,
                        ttl: None,
                        keeps_time: false,
                        windowed: false,
                        faust: false,
                        ..table.clone()
                    })
                    .collect();
                task.tables.extend(times);
                task.dead_letter_topic = self.dead_letter_topic_for(task.dead_letter_topic);
                task.on_deserialization_error = self.on_deserialization_error;
                task.on_processing_error = self.on_processing_error;
                task
            })
            .collect()
    }

    /// The global tables of the app's pipelines.
    pub fn global_tables(&self) -> Vec<crate::table::GlobalTableSpec> {
        self.pipelines
            .iter()
            .flat_map(|p| p.globals.iter().cloned())
            .map(|mut global| {
                global.dead_letter_topic = self.dead_letter_topic_for(global.dead_letter_topic);
                global.on_deserialization_error = self.on_deserialization_error;
                global
            })
            .collect()
    }

    /// Topics the app uses outside its tasks: what timers send to, what global tables copy.
    fn other_topics(&self) -> Vec<TopicSpec> {
        let timers = self.timers.iter().flat_map(|t| t.sends.iter().cloned());
        let globals = self
            .pipelines
            .iter()
            .flat_map(|p| p.globals.iter().map(|g| g.topic.clone()));
        timers.chain(globals).collect()
    }

    /// Every topic the app declares (sources and the topics its tasks send to), each once.
    pub fn topics(&self) -> Vec<TopicSpec> {
        let mut topics: Vec<TopicSpec> = Vec::new();
        let timers = self.other_topics();
        for task in self.tasks() {
            for topic in task.sources.into_iter().chain(task.sends) {
                if !topics.iter().any(|t| t.name == topic.name) {
                    topics.push(topic);
                }
            }
        }
        for topic in timers {
            if !topics.iter().any(|t| t.name == topic.name) {
                topics.push(topic);
            }
        }
        topics
    }

    /// Every table with the name of the task that keeps it.
    pub fn tables(&self) -> Vec<(TableSpec, String)> {
        self.tasks()
            .into_iter()
            .flat_map(|task| {
                let name = task.name;
                task.tables.into_iter().map(move |table| (table, name.clone()))
            })
            .collect()
    }

    /// Checks that the declarations fit together.
    pub fn validate(&self) -> Result<()> {
        if let Some(error) = self.pipelines.iter().flat_map(|p| p.errors.iter()).next() {
            return Err(Error::Config(error.clone()));
        }
        if let Some(error) = self.timers.iter().find_map(Timer::check) {
            return Err(Error::Config(error));
        }
        for (n, timer) in self.timers.iter().enumerate() {
            if self.timers[..n].iter().any(|t| t.name() == timer.name()) {
                return Err(Error::Config(format!("two timers are named `{}`", timer.name())));
            }
        }
        let globals = self.global_tables();
        let tables = self.tables();
        for (n, global) in globals.iter().enumerate() {
            let name = global.table.name;
            if globals[..n].iter().any(|g| g.table.name == name) || tables.iter().any(|(t, _)| t.name == name) {
                return Err(Error::Config(format!(
                    "table `{name}` is declared twice (a global table and another table of the app); give each its own name"
                )));
            }
        }
        let tasks = self.tasks();
        let all: Vec<&TableSpec> = tasks.iter().flat_map(|t| t.tables.iter()).collect();
        for table in all.iter().filter(|t| t.ttl.is_some()) {
            let times = table.ttl_table_name();
            if all.iter().filter(|t| t.name == times).count() > 1 {
                return Err(Error::Config(format!(
                    "table `{}` has a TTL, and its entries' times are kept in a table named `{times}`: another \
                     table has that name; give it another",
                    table.name
                )));
            }
        }
        for task in &tasks {
            for (n, table) in task.tables.iter().enumerate() {
                if task.tables[..n].iter().any(|t| t.name == table.name) {
                    return Err(Error::Config(format!(
                        "`{}` keeps two tables named `{}`; give each its own name",
                        task.name, table.name
                    )));
                }
            }
        }
        validate(&self.id, &tasks)
    }

    /// Checks that `table` is kept by one of the app's tasks (naming them when it is not).
    pub(crate) fn knows_table(&self, table: &str) -> Result<()> {
        let tasks = self.tasks();
        if tasks.iter().any(|t| t.tables.iter().any(|s| s.name == table)) {
            return Ok(());
        }
        let names: Vec<&str> = tasks.iter().map(|a| a.name.as_str()).collect();
        Err(Error::Config(format!(
            "table `{table}` is not used by any agent of app `{}` (agents: {}); list it in the \
             `tables = [..]` of the agent that updates it, and add that agent with App::agent",
            self.id,
            names.join(", ")
        )))
    }

    /// The topics the app needs, given the partition counts of the topics that exist.
    /// Fails when a topic exists with another partition count than declared, when the
    /// sources of one task have different partition counts, or when a changelog's partition
    /// count differs from its task's.
    pub fn plan(&self, existing: &HashMap<String, i32>) -> Result<Vec<PlannedTopic>> {
        self.validate()?;
        let tasks = self.tasks();
        let mut planned = plan(&self.id, &tasks, &self.other_topics(), existing, self.topic_partitions)?;
        if self.on_production_error == crate::task::sink::OnError::DeadLetter {
            let name = self.production_dead_letter_topic_name();
            if !planned.iter().any(|t| t.name == name) {
                planned.push(PlannedTopic {
                    exists: existing.contains_key(&name),
                    partitions: existing.get(&name).copied().unwrap_or(self.topic_partitions),
                    name,
                    compacted: false,
                });
            }
        }
        Ok(planned)
    }
}

fn kind(task: &TaskSpec) -> &'static str {
    match task.kind {
        TaskKind::Agent => "agent",
        TaskKind::Pipeline => "pipeline",
    }
}

fn validate(id: &str, tasks: &[TaskSpec]) -> Result<()> {
    if tasks.is_empty() {
        return Err(Error::Config(format!(
            "app `{id}` has no agents or pipelines; add them with App::agent or App::pipeline"
        )));
    }
    let mut names: HashMap<&str, ()> = HashMap::new();
    let mut by_source: HashMap<&str, &TaskSpec> = HashMap::new();
    let mut by_table: HashMap<&str, &TaskSpec> = HashMap::new();
    for task in tasks {
        if names.insert(task.name.as_str(), ()).is_some() {
            return Err(Error::Config(format!("{} `{}` is added twice", kind(task), task.name)));
        }
        for source in &task.sources {
            if let Some(other) = by_source.insert(&source.name, task) {
                let both = if other.kind == task.kind {
                    format!("{}s `{}` and `{}`", kind(task), other.name, task.name)
                } else {
                    format!("{} `{}` and {} `{}`", kind(other), other.name, kind(task), task.name)
                };
                return Err(Error::Config(format!(
                    "{both} both read topic `{}`; one agent per topic is supported (a pipeline reads \
                     a topic once: use the stream it gives for everything that reads it)",
                    source.name
                )));
            }
        }
        for table in &task.tables {
            if let Some(other) = by_table.insert(table.name, task) {
                if other.name != task.name {
                    return Err(Error::Config(format!(
                        "{}s `{}` and `{}` both use table `{}`; a table is updated by one {}",
                        kind(task),
                        other.name,
                        task.name,
                        table.name,
                        kind(task)
                    )));
                }
            }
        }
    }
    // An internal topic is the app's own intermediate data: something of the app must
    // read it (usually an agent that was written but not added).
    for task in tasks {
        for topic in task.sends.iter().filter(|t| t.internal) {
            if !by_source.contains_key(&*topic.name) {
                let senders: Vec<String> = tasks
                    .iter()
                    .filter(|t| t.sends.iter().any(|s| s.name == topic.name))
                    .map(|t| format!("`{}`", t.name))
                    .collect();
                return Err(Error::Config(format!(
                    "internal topic `{}` is sent to by {} but no agent of app `{id}` reads it; \
                     add the agent that reads it with App::agent (or drop `.internal()` if \
                     other apps read the topic)",
                    topic.name,
                    senders.join(" and ")
                )));
            }
        }
    }
    Ok(())
}

fn plan(
    id: &str,
    tasks: &[TaskSpec],
    timers: &[TopicSpec],
    existing: &HashMap<String, i32>,
    default: i32,
) -> Result<Vec<PlannedTopic>> {
    let mut declared: HashMap<&str, &TopicSpec> = HashMap::new();
    let tasks_topics = tasks.iter().flat_map(|t| t.sources.iter().chain(t.sends.iter()));
    for topic in tasks_topics.chain(timers) {
        match declared.get(&*topic.name) {
            Some(other)
                if other.partitions.is_some() && topic.partitions.is_some() && other.partitions != topic.partitions =>
            {
                return Err(Error::Config(format!(
                    "topic `{}` is declared with {} and with {} partitions",
                    topic.name,
                    other.partitions.unwrap_or_default(),
                    topic.partitions.unwrap_or_default()
                )));
            }
            Some(other) if other.partitions.is_some() || other.partitions_of.is_some() => {}
            _ => {
                declared.insert(&topic.name, topic);
            }
        }
    }
    // A topic's partitions: declared (and equal to what exists), else what exists, else
    // those of the topic it is partitioned like (a repartition topic: its pipeline's source),
    // else the app's default.
    let partitions_of = |name: &str| -> Result<i32> {
        let mut name = name;
        for _ in 0..=declared.len() {
            let spec = declared.get(name);
            let declared_count = spec.and_then(|t| t.partitions);
            match (declared_count, existing.get(name)) {
                (Some(declared), Some(&actual)) if declared != actual => {
                    return Err(Error::Config(format!(
                        "topic `{name}` has {actual} partitions on the broker but is declared with {declared}; \
                         change the declaration or recreate the topic"
                    )))
                }
                (Some(declared), _) => return Ok(declared),
                (None, Some(&actual)) => return Ok(actual),
                (None, None) => match spec.and_then(|t| t.partitions_of.as_deref()) {
                    Some(like) => name = like,
                    None => return Ok(default),
                },
            }
        }
        Err(Error::Config(format!(
            "topic `{name}` is partitioned like itself, through other topics"
        )))
    };
    let mut plan: Vec<PlannedTopic> = Vec::new();
    let mut add = |name: String, partitions: i32, compacted: bool| {
        if !plan.iter().any(|t| t.name == name) {
            let exists = existing.contains_key(&name);
            plan.push(PlannedTopic {
                name,
                partitions,
                compacted,
                exists,
            });
        }
    };
    for task in tasks {
        let mut task_partitions: Option<(i32, &str)> = None;
        for source in &task.sources {
            let partitions = partitions_of(&source.name)?;
            match task_partitions {
                Some((other, other_name)) if other != partitions => {
                    return Err(Error::Config(format!(
                        "{} `{}` reads `{other_name}` ({other} partitions) and `{}` ({partitions} partitions); \
                         a task reads partition p of each of its topics, so they must have the same \
                         partition count (repartition one of them)",
                        kind(task),
                        task.name,
                        source.name
                    )));
                }
                _ => task_partitions = Some((partitions, &source.name)),
            }
            add(source.name.to_string(), partitions, false);
        }
        let partitions = task_partitions.map_or(default, |(p, _)| p);
        for topic in &task.sends {
            add(topic.name.to_string(), partitions_of(&topic.name)?, false);
        }
        for table in &task.tables {
            let changelog = table.changelog_topic(id);
            if let Some(&actual) = existing.get(&changelog) {
                if actual != partitions {
                    let sources: Vec<&str> = task.sources.iter().map(|s| &*s.name).collect();
                    return Err(Error::Config(format!(
                        "changelog `{changelog}` has {actual} partitions but table `{}` is fed by `{}` with {partitions}; \
                         they must match so that partition p of both lives on the same worker",
                        table.name,
                        sources.join("`, `")
                    )));
                }
            }
            add(changelog, partitions, true);
        }
        add(task.dead_letter_topic.clone(), partitions, false);
    }
    for topic in timers {
        add(topic.name.to_string(), partitions_of(&topic.name)?, false);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    #[record]
    struct Hit {
        hits: i64,
        user: String,
    }

    const HITS: Topic<(), Hit> = Topic::new("hits").partitions(4);
    const BY_USER: Topic<String, Hit> = Topic::new("by-user").internal();
    const COUNTS: Table<String, i64> = Table::new("counts");

    #[agent(topic = HITS, sends = [BY_USER])]
    async fn route(mut hits: Stream<(), Hit>) -> Result<()> {
        while let Some(hit) = hits.next().await {
            BY_USER.send(&hit.user, &hit).await?;
        }
        Ok(())
    }

    #[agent(topic = BY_USER, tables = [COUNTS])]
    async fn count(mut hits: Stream<String, Hit>) -> Result<()> {
        while let Some(hit) = hits.next().await {
            COUNTS.update(&hit.user, |n| *n += hit.hits).await?;
        }
        Ok(())
    }

    fn app() -> App {
        App::new("test").agent(route).agent(count).topic_partitions(6)
    }

    fn existing(topics: &[(&str, i32)]) -> HashMap<String, i32> {
        topics.iter().map(|(n, p)| (n.to_string(), *p)).collect()
    }

    #[test]
    fn plans_every_topic_with_its_partitions() {
        let plan = app().plan(&existing(&[])).unwrap();
        let find = |name: &str| plan.iter().find(|t| t.name == name).cloned().unwrap();
        assert_eq!(find("hits").partitions, 4);
        assert_eq!(find("by-user").partitions, 6, "internal topic gets the app default");
        let changelog = find("test-counts-changelog");
        assert_eq!(
            (changelog.partitions, changelog.compacted),
            (6, true),
            "changelog follows its source"
        );
        assert_eq!(find("test-route-dlq").partitions, 4);
        assert_eq!(find("test-count-dlq").partitions, 6);
        assert!(plan.iter().all(|t| !t.exists));
    }

    #[test]
    fn existing_topics_keep_their_partitions() {
        let plan = app().plan(&existing(&[("by-user", 3)])).unwrap();
        let changelog = plan.iter().find(|t| t.name == "test-counts-changelog").unwrap();
        assert_eq!(changelog.partitions, 3);
        assert!(plan.iter().find(|t| t.name == "by-user").unwrap().exists);
    }

    #[test]
    fn a_declared_partition_count_that_differs_names_both_numbers() {
        let error = app().plan(&existing(&[("hits", 12)])).unwrap_err().to_string();
        assert!(
            error.contains("`hits` has 12 partitions") && error.contains("declared with 4"),
            "{error}"
        );
    }

    #[test]
    fn a_changelog_with_other_partitions_than_its_source_is_refused() {
        let error = app()
            .plan(&existing(&[("by-user", 6), ("test-counts-changelog", 2)]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("has 2 partitions") && error.contains("with 6"),
            "{error}"
        );
    }

    #[agent(topic = BY_USER)]
    async fn audit(mut hits: Stream<String, Hit>) {
        while hits.next().await.is_some() {}
    }

    const USERS: Topic<String, Hit> = Topic::new("users");

    #[agent(topic = USERS, tables = [COUNTS])]
    async fn recount(mut hits: Stream<String, Hit>) -> Result<()> {
        while let Some(hit) = hits.next().await {
            COUNTS.update(&hit.user, |n| *n += 1).await?;
        }
        Ok(())
    }

    #[test]
    fn two_agents_on_one_topic_are_refused() {
        let error = App::new("x")
            .agent(count)
            .agent(audit)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("agents `count` and `audit` both read topic `by-user`"),
            "{error}"
        );
    }

    #[test]
    fn two_agents_on_one_table_are_refused() {
        let error = App::new("x")
            .agent(count)
            .agent(recount)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("agents `count` and `recount` both use table `counts`"),
            "{error}"
        );
    }

    #[test]
    fn an_internal_topic_nobody_reads_is_refused() {
        let error = App::new("x").agent(route).validate().unwrap_err().to_string();
        assert!(
            error.contains("internal topic `by-user` is sent to by `route` but no agent of app `x` reads it"),
            "{error}"
        );
        assert!(App::new("x").agent(route).agent(count).validate().is_ok());
    }

    #[test]
    fn an_agent_added_twice_or_none_at_all_is_refused() {
        let error = App::new("x")
            .agent(route)
            .agent(route)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(error.contains("added twice"), "{error}");
        assert!(App::new("empty").validate().is_err());
    }
}

//! The app: an id (the consumer group and the prefix of its internal topics), its agents,
//! and settings. `App::main` gives it Faust's command line.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use crate::agent::{Agent, AgentSpec};
use crate::broker::PlannedTopic;
use crate::table::TableSpec;
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
    topic_partitions: i32,
    commit_interval: Duration,
    table_cache_bytes: usize,
}

impl App {
    /// An app with this id: the consumer group's name and the prefix of its changelog and
    /// dead-letter topics.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            agents: Vec::new(),
            topic_partitions: 8,
            commit_interval: Duration::from_secs(1),
            table_cache_bytes: 1 << 20,
        }
    }

    /// Adds an agent (a function marked `#[agent]`).
    pub fn agent(mut self, agent: impl Agent) -> Self {
        self.agents.push(agent.spec());
        self
    }

    /// Partition count of topics the app creates without a declared count (default 8, as in Faust).
    pub fn topic_partitions(mut self, partitions: i32) -> Self {
        self.topic_partitions = partitions;
        self
    }

    /// How often each partition's progress is committed (default 1 s).
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    pub(crate) fn commit_interval_value(&self) -> Duration {
        self.commit_interval
    }

    /// Memory for table entries per table partition (default 1 MiB), like Kafka Streams'
    /// `statestore.cache.max.bytes`. Reads and repeated updates of cached keys never touch
    /// the store; when a partition's entries pass this budget, it commits early (its changes
    /// go to the changelog and the store) and starts an empty cache, so memory stays bounded
    /// however many keys a commit interval touches.
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

    /// Every topic the app declares (sources and the topics agents send to), each once.
    pub fn topics(&self) -> Vec<&TopicSpec> {
        let mut topics: Vec<&TopicSpec> = Vec::new();
        for topic in self
            .agents
            .iter()
            .flat_map(|a| std::iter::once(&a.source).chain(a.sends.iter()))
        {
            if !topics.iter().any(|t| t.name == topic.name) {
                topics.push(topic);
            }
        }
        topics
    }

    /// Every table with the agent that updates it.
    pub fn tables(&self) -> impl Iterator<Item = (&TableSpec, &AgentSpec)> {
        self.agents.iter().flat_map(|a| a.tables.iter().map(move |t| (t, a)))
    }

    /// Checks that the declarations fit together.
    pub fn validate(&self) -> Result<()> {
        if self.agents.is_empty() {
            return Err(Error::Config(format!(
                "app `{}` has no agents; add them with App::agent",
                self.id
            )));
        }
        let mut by_source: HashMap<&str, &str> = HashMap::new();
        let mut by_table: HashMap<&str, &str> = HashMap::new();
        let mut names: HashMap<&str, ()> = HashMap::new();
        for agent in &self.agents {
            if names.insert(agent.name, ()).is_some() {
                return Err(Error::Config(format!("agent `{}` is added twice", agent.name)));
            }
            if let Some(other) = by_source.insert(agent.source.name, agent.name) {
                return Err(Error::Config(format!(
                    "agents `{other}` and `{}` both read topic `{}`; one agent per topic is supported",
                    agent.name, agent.source.name
                )));
            }
            for table in &agent.tables {
                if let Some(other) = by_table.insert(table.name, agent.name) {
                    if other != agent.name {
                        return Err(Error::Config(format!(
                            "agents `{other}` and `{}` both use table `{}`; a table is updated by one agent",
                            agent.name, table.name
                        )));
                    }
                }
            }
        }
        // An internal topic is the app's own intermediate data: something of the app must
        // read it (usually an agent that was written but not added).
        for agent in &self.agents {
            for topic in agent.sends.iter().filter(|t| t.internal) {
                if !by_source.contains_key(topic.name) {
                    let senders: Vec<String> = self
                        .agents
                        .iter()
                        .filter(|a| a.sends.iter().any(|t| t.name == topic.name))
                        .map(|a| format!("`{}`", a.name))
                        .collect();
                    return Err(Error::Config(format!(
                        "internal topic `{}` is sent to by {} but no agent of app `{}` reads it; \
                         add the agent that reads it with App::agent (or drop `.internal()` if \
                         other apps read the topic)",
                        topic.name,
                        senders.join(" and "),
                        self.id
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks that `table` is used by one of the app's agents (naming them when it is not).
    pub(crate) fn knows_table(&self, table: &str) -> Result<()> {
        if self.tables().any(|(t, _)| t.name == table) {
            return Ok(());
        }
        let agents: Vec<&str> = self.agents.iter().map(|a| a.name).collect();
        Err(Error::Config(format!(
            "table `{table}` is not used by any agent of app `{}` (agents: {}); list it in the \
             `tables = [..]` of the agent that updates it, and add that agent with App::agent",
            self.id,
            agents.join(", ")
        )))
    }

    /// The topics the app needs, given the partition counts of the topics that exist.
    /// Fails when a topic exists with another partition count than declared, or when a
    /// changelog's partition count differs from its table's source topic.
    pub fn plan(&self, existing: &HashMap<String, i32>) -> Result<Vec<PlannedTopic>> {
        self.validate()?;
        let mut plan: Vec<PlannedTopic> = Vec::new();
        let add = |plan: &mut Vec<PlannedTopic>, name: String, partitions: i32, compacted: bool| {
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
        let mut declared: HashMap<&str, &TopicSpec> = HashMap::new();
        for topic in self
            .agents
            .iter()
            .flat_map(|a| std::iter::once(&a.source).chain(a.sends.iter()))
        {
            match declared.get(topic.name) {
                Some(other)
                    if other.partitions.is_some()
                        && topic.partitions.is_some()
                        && other.partitions != topic.partitions =>
                {
                    return Err(Error::Config(format!(
                        "topic `{}` is declared with {} and with {} partitions",
                        topic.name,
                        other.partitions.unwrap_or_default(),
                        topic.partitions.unwrap_or_default()
                    )));
                }
                Some(other) if other.partitions.is_some() => {}
                _ => {
                    declared.insert(topic.name, topic);
                }
            }
        }
        let partitions_of = |topic: &TopicSpec| -> Result<i32> {
            let declared = declared.get(topic.name).and_then(|t| t.partitions);
            match (declared, existing.get(topic.name)) {
                (Some(declared), Some(&actual)) if declared != actual => Err(Error::Config(format!(
                    "topic `{}` has {actual} partitions on the broker but is declared with {declared}; \
                     change the declaration or recreate the topic",
                    topic.name
                ))),
                (Some(declared), _) => Ok(declared),
                (None, Some(&actual)) => Ok(actual),
                (None, None) => Ok(self.topic_partitions),
            }
        };
        for agent in &self.agents {
            let source_partitions = partitions_of(&agent.source)?;
            add(&mut plan, agent.source.name.to_string(), source_partitions, false);
            for topic in &agent.sends {
                add(&mut plan, topic.name.to_string(), partitions_of(topic)?, false);
            }
            for table in &agent.tables {
                let changelog = table.changelog_topic(&self.id);
                if let Some(&actual) = existing.get(&changelog) {
                    if actual != source_partitions {
                        return Err(Error::Config(format!(
                            "changelog `{changelog}` has {actual} partitions but table `{}` is fed by `{}` with {source_partitions}; \
                             they must match so that partition p of both lives on the same worker",
                            table.name, agent.source.name
                        )));
                    }
                }
                add(&mut plan, changelog, source_partitions, true);
            }
            add(&mut plan, agent.dead_letter_topic(&self.id), source_partitions, false);
        }
        Ok(plan)
    }

    /// The app's topology, from the declarations alone (no broker is contacted).
    pub fn topology(&self) -> crate::Topology {
        crate::Topology::of(self)
    }

    /// Runs the command line (`worker`, `send`, `broker`, `table`) and returns the exit code.
    pub fn main(self) -> ExitCode {
        crate::cli::main(self)
    }
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

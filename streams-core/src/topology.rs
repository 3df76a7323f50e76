//! The topology: what the macros know of the app — sources, agents, the topics they send to,
//! internal topics, tables and their changelogs, dead-letter topics — as a graph, printable
//! as text, Mermaid or DOT before any broker is contacted.

use std::fmt::Write;

use crate::app::App;
use crate::dsl::{NodeKind as DslKind, Pipeline};

/// What a node of the topology is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A topic the app reads that it does not own.
    Source,
    /// A topic the app sends to that it does not own.
    Sink,
    /// A topic the app owns (declared `.internal()`).
    Internal,
    /// An agent.
    Agent,
    /// A table.
    Table,
    /// A table's changelog topic.
    Changelog,
    /// An agent's or a pipeline's dead-letter topic.
    DeadLetter,
    /// An operation of a pipeline (`filter`, `group_by`, `count`, …).
    Operation,
}

/// A node: a topic, an agent or a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Name as it appears in Kafka or in the code.
    pub name: String,
    /// What it is.
    pub kind: NodeKind,
    /// Key and value types (topics and tables).
    pub types: Option<(String, String)>,
    /// The pipeline sub-topology an operation belongs to.
    pub subtopology: Option<String>,
}

/// A pipeline in the topology: its sub-topologies, each with its nodes in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineView {
    /// The pipeline's name.
    pub name: String,
    /// Each sub-topology's name and the lines that describe its nodes.
    pub subtopologies: Vec<(String, Vec<String>)>,
    /// Its dead-letter topic.
    pub dead_letter_topic: String,
}

/// The app's graph of topics, agents and tables.
///
/// ```
/// use streams_core::prelude::*;
///
/// #[record]
/// struct Hit { user: String }
/// const HITS: Topic<String, Hit> = Topic::new("hits");
/// const COUNTS: Table<String, i64> = Table::new("counts");
///
/// #[agent(topic = HITS, tables = [COUNTS])]
/// async fn count(mut hits: Stream<String, Hit>) -> Result<()> {
///     while let Some(event) = hits.next_event().await {
///         COUNTS.update(&event.key, |n| *n += 1).await?;
///     }
///     Ok(())
/// }
///
/// let topology = App::new("counter").agent(count).topology();
/// assert!(topology.mermaid().contains("count -->|updates| t_counts"));
/// println!("{}", topology.text());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The app's id.
    pub app_id: String,
    /// Every node once.
    pub nodes: Vec<Node>,
    /// Edges: (from, to, label).
    pub edges: Vec<(String, String, &'static str)>,
    /// The pipelines, sub-topology by sub-topology.
    pub pipelines: Vec<PipelineView>,
}

/// A type's name without its module paths: `alloc::string::String` → `String`.
pub(crate) fn short_type(type_name: &str) -> String {
    short(type_name)
}

fn short(type_name: &str) -> String {
    // `alloc::string::String` → `String`, `core::option::Option<alloc::string::String>` → `Option<String>`.
    let mut out = String::new();
    let mut word = String::new();
    for c in type_name.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            out.push_str(word.rsplit("::").next().unwrap_or_default());
            word.clear();
            out.push(c);
        }
    }
    out.push_str(word.rsplit("::").next().unwrap_or_default());
    out
}

impl App {
    /// The app's topology, from the declarations alone (no broker is contacted).
    pub fn topology(&self) -> Topology {
        Topology::of(self)
    }
}

impl Topology {
    pub(crate) fn of(app: &App) -> Self {
        let mut topology = Topology {
            app_id: app.id().to_string(),
            nodes: Vec::new(),
            edges: Vec::new(),
            pipelines: Vec::new(),
        };
        let tasks = app.tasks();
        let sent: Vec<String> = tasks
            .iter()
            .flat_map(|t| t.sends.iter().map(|s| s.name.to_string()))
            .collect();
        let read = |name: &str| tasks.iter().any(|t| t.sources.iter().any(|s| s.name == name));
        for agent in app.agents() {
            let source = &agent.source;
            let kind = if source.internal || sent.iter().any(|s| *s == source.name) {
                NodeKind::Internal
            } else {
                NodeKind::Source
            };
            topology.node(&source.name, kind, Some((source.key_type, source.value_type)));
            topology.node(agent.name, NodeKind::Agent, None);
            topology.edge(&source.name, agent.name, "reads");
            for topic in &agent.sends {
                let kind = if topic.internal || read(&topic.name) {
                    NodeKind::Internal
                } else {
                    NodeKind::Sink
                };
                topology.node(&topic.name, kind, Some((topic.key_type, topic.value_type)));
                topology.edge(agent.name, &topic.name, "sends");
            }
            for table in &agent.tables {
                let changelog = table.changelog_topic(app.id());
                topology.node(table.name, NodeKind::Table, Some((table.key_type, table.value_type)));
                let _ = topology.note_ttl(table.name, table.ttl);
                topology.node(&changelog, NodeKind::Changelog, None);
                topology.edge(agent.name, table.name, "updates");
                topology.edge(table.name, &changelog, "changelog");
            }
            let dlq = app.dead_letter_topic_for(agent.dead_letter_topic(app.id()));
            topology.node(&dlq, NodeKind::DeadLetter, None);
            topology.edge(agent.name, &dlq, "bad records");
        }
        for pipeline in app.pipelines() {
            let dlq = app.dead_letter_topic_for(pipeline.tasks.first().map_or_else(
                || format!("{}-{}-dlq", app.id(), pipeline.name),
                |t| t.dead_letter_topic.clone(),
            ));
            topology.add_pipeline(pipeline, dlq, &sent, &read);
        }
        topology
    }

    /// A pipeline's nodes and edges, and its view by sub-topology.
    fn add_pipeline(
        &mut self,
        pipeline: &Pipeline,
        dead_letter_topic: String,
        sent: &[String],
        read: &dyn Fn(&str) -> bool,
    ) {
        let spec_of = |topic: &str| {
            pipeline
                .tasks
                .iter()
                .flat_map(|t| t.sources.iter().chain(t.sends.iter()))
                .find(|s| s.name == topic)
        };
        // An operation's graph id: unique across pipelines.
        let id = |node: usize| format!("{}#{}", pipeline.name, pipeline.nodes[node].name);
        let mut view = PipelineView {
            name: pipeline.name.clone(),
            subtopologies: Vec::new(),
            dead_letter_topic,
        };
        for (sub, members) in pipeline.subtopologies.iter().enumerate() {
            let sub_name = pipeline.tasks.get(sub).map_or_else(String::new, |t| t.name.clone());
            let mut lines = Vec::new();
            for &index in members {
                let node = &pipeline.nodes[index];
                let parents: Vec<String> = node.parents.iter().map(|p| pipeline.nodes[*p].name.clone()).collect();
                let from = if parents.is_empty() {
                    String::new()
                } else {
                    format!(" <- {}", parents.join(", "))
                };
                match &node.kind {
                    DslKind::Source { topic } => {
                        let spec = spec_of(topic);
                        let internal = spec.is_some_and(|s| s.internal) || sent.iter().any(|s| s == topic);
                        let kind = if internal { NodeKind::Internal } else { NodeKind::Source };
                        self.node(topic, kind, spec.map(|s| (s.key_type, s.value_type)));
                        let types = spec.map_or_else(String::new, |s| {
                            format!(" <{}, {}> ({})", short(s.key_type), short(s.value_type), s.value_format)
                        });
                        lines.push(format!("reads topic `{topic}`{types}"));
                    }
                    DslKind::Sink { topic } => {
                        let spec = spec_of(topic);
                        let internal = spec.is_some_and(|s| s.internal) || read(topic);
                        let kind = if internal { NodeKind::Internal } else { NodeKind::Sink };
                        self.node(topic, kind, spec.map(|s| (s.key_type, s.value_type)));
                        for parent in &node.parents {
                            self.edge(&id(*parent), topic, "sends");
                        }
                        lines.push(format!("sends to topic `{topic}`{from}"));
                    }
                    DslKind::Operation => {
                        self.operation(&id(index), &node.name, &sub_name);
                        for parent in &node.parents {
                            self.edge_from(pipeline, *parent, &id(index), &id);
                        }
                        lines.push(format!("{}{from}", node.name));
                    }
                    DslKind::GlobalTable { table, topic } => {
                        let spec = app_global(pipeline, table);
                        self.node(
                            topic,
                            NodeKind::Source,
                            spec.map(|g| (g.topic.key_type, g.topic.value_type)),
                        );
                        self.node(
                            table,
                            NodeKind::Table,
                            spec.map(|g| (g.table.key_type, g.table.value_type)),
                        );
                        self.edge(topic, table, "global copy");
                        lines.push(format!(
                            "global table `{table}` (a copy of topic `{topic}` on every worker)"
                        ));
                    }
                    DslKind::Table { table, changelog } => {
                        let spec = pipeline
                            .tasks
                            .iter()
                            .flat_map(|t| t.tables.iter())
                            .find(|t| t.name == table);
                        self.node(table, NodeKind::Table, spec.map(|t| (t.key_type, t.value_type)));
                        let ttl = self.note_ttl(table, spec.and_then(|t| t.ttl));
                        self.node(changelog, NodeKind::Changelog, None);
                        for parent in &node.parents {
                            self.edge_from(pipeline, *parent, table, &id);
                        }
                        self.edge(table, changelog, "changelog");
                        lines.push(format!("table `{table}` (changelog `{changelog}`{ttl}){from}"));
                    }
                }
            }
            view.subtopologies.push((sub_name, lines));
        }
        self.node(&view.dead_letter_topic, NodeKind::DeadLetter, None);
        self.pipelines.push(view);
    }

    /// An edge from pipeline node `parent` (a topic, a table or an operation) to `to`.
    fn edge_from(&mut self, pipeline: &Pipeline, parent: usize, to: &str, id: &dyn Fn(usize) -> String) {
        let (from, label) = match &pipeline.nodes[parent].kind {
            DslKind::Source { topic } => (topic.clone(), "reads"),
            DslKind::Table { table, .. } => (table.clone(), "changes"),
            DslKind::GlobalTable { table, .. } => (table.clone(), "lookups"),
            _ => (id(parent), ""),
        };
        self.edge(&from, to, label);
    }

    fn operation(&mut self, id: &str, name: &str, subtopology: &str) {
        self.nodes.push(Node {
            name: id.to_string(),
            kind: NodeKind::Operation,
            types: Some((name.to_string(), String::new())),
            subtopology: Some(subtopology.to_string()),
        });
    }

    /// Adds a table's time to live to its drawing (after its value type); returns it as
    /// text (`; TTL 30s of stream time`, or nothing).
    fn note_ttl(&mut self, table: &str, ttl: Option<crate::spec::Ttl>) -> String {
        let Some(ttl) = ttl else { return String::new() };
        let clock = if ttl.wall_clock { "wall clock" } else { "stream time" };
        let after = std::time::Duration::from_millis(u64::try_from(ttl.after_ms).unwrap_or(0));
        let note = format!("; TTL {after:?} of {clock}");
        if let Some(node) = self
            .nodes
            .iter_mut()
            .find(|n| n.name == table && n.kind == NodeKind::Table)
        {
            if let Some((_, value)) = &mut node.types {
                value.push_str(&note);
            }
        }
        note
    }

    fn node(&mut self, name: &str, kind: NodeKind, types: Option<(&str, &str)>) {
        if let Some(existing) = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name && (n.kind == NodeKind::Agent) == (kind == NodeKind::Agent))
        {
            if kind == NodeKind::Internal {
                existing.kind = kind;
            }
            return;
        }
        self.nodes.push(Node {
            name: name.to_string(),
            kind,
            types: types.map(|(k, v)| (short(k), short(v))),
            subtopology: None,
        });
    }

    fn edge(&mut self, from: &str, to: &str, label: &'static str) {
        self.edges.push((from.to_string(), to.to_string(), label));
    }

    fn id(&self, name: &str) -> String {
        let node = self.nodes.iter().find(|n| n.name == name);
        let prefix = match node.map(|n| n.kind) {
            Some(NodeKind::Agent) => "",
            Some(NodeKind::Table) => "t_",
            Some(NodeKind::Operation) => "op_",
            _ => "topic_",
        };
        let clean: String = name
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { '_' })
            .collect();
        format!("{prefix}{clean}")
    }

    fn kind_name(kind: NodeKind) -> &'static str {
        match kind {
            NodeKind::Source => "source topic",
            NodeKind::Sink => "sink topic",
            NodeKind::Internal => "internal topic",
            NodeKind::Agent => "agent",
            NodeKind::Table => "table",
            NodeKind::Changelog => "changelog topic",
            NodeKind::DeadLetter => "dead-letter topic",
            NodeKind::Operation => "operation",
        }
    }

    /// Plain text: one paragraph per agent, then each pipeline by sub-topology.
    pub fn text(&self) -> String {
        let mut out = format!("app {}\n", self.app_id);
        for agent in self.nodes.iter().filter(|n| n.kind == NodeKind::Agent) {
            let _ = writeln!(out, "\nagent {}", agent.name);
            for (from, to, label) in &self.edges {
                let (other, arrow) = if *to == agent.name && *label == "reads" {
                    (from, "<-")
                } else if *from == agent.name {
                    (to, "->")
                } else {
                    continue;
                };
                let Some(node) = self.nodes.iter().find(|n| &n.name == other) else {
                    continue;
                };
                let types = node
                    .types
                    .as_ref()
                    .map(|(k, v)| format!(" <{k}, {v}>"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {arrow} {label:<11} {} `{}`{types}",
                    Self::kind_name(node.kind),
                    node.name
                );
                if node.kind == NodeKind::Table {
                    for (_, changelog, _) in self.edges.iter().filter(|(f, _, l)| f == other && *l == "changelog") {
                        let _ = writeln!(out, "       {:<11} changelog topic `{changelog}`", "");
                    }
                }
            }
        }
        for pipeline in &self.pipelines {
            let _ = writeln!(out, "\npipeline {}", pipeline.name);
            for (name, lines) in &pipeline.subtopologies {
                let _ = writeln!(out, "  sub-topology {name}");
                for line in lines {
                    let _ = writeln!(out, "    {line}");
                }
            }
            let _ = writeln!(
                out,
                "  records it cannot process go to dead-letter topic `{}`",
                pipeline.dead_letter_topic
            );
        }
        out
    }

    fn mermaid_node(&self, node: &Node) -> String {
        let id = self.id(&node.name);
        if node.kind == NodeKind::Operation {
            let label = node
                .types
                .as_ref()
                .map_or(node.name.as_str(), |(name, _)| name.as_str());
            return format!("{id}[\"{label}\"]");
        }
        let label = match &node.types {
            Some((k, v)) => format!("{}<br/><small>{k}, {v}</small>", node.name),
            None => node.name.clone(),
        };
        match node.kind {
            NodeKind::Agent => format!("{id}[[\"{label}\"]]"),
            NodeKind::Table => format!("{id}[(\"{label}\")]"),
            _ => format!("{id}>\"{label}\"]"),
        }
    }

    /// The sub-topologies' names, in order.
    fn subtopologies(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for node in &self.nodes {
            if let Some(name) = node.subtopology.as_deref() {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    /// A Mermaid flowchart; each pipeline sub-topology is a subgraph.
    pub fn mermaid(&self) -> String {
        self.mermaid_labelled(&|_, _, label| label.to_string())
    }

    /// [`Topology::mermaid`] with each edge's label made by `label(from, to, label)` (the
    /// web server's `/topology` adds live rates so).
    ///
    /// ```
    /// # use streams_core::prelude::*;
    /// # #[record] struct Hit { user: String }
    /// # const HITS: Topic<String, Hit> = Topic::new("hits");
    /// # #[agent(topic = HITS)]
    /// # async fn count(mut hits: Stream<String, Hit>) -> Result<()> { while hits.next_event().await.is_some() {} Ok(()) }
    /// let topology = App::new("counter").agent(count).topology();
    /// let drawn = topology.mermaid_labelled(&|from, _, label| {
    ///     if from == "hits" { format!("{label} 5/s") } else { label.to_string() }
    /// });
    /// assert!(drawn.contains("topic_hits -->|reads 5/s| count"));
    /// ```
    pub fn mermaid_labelled(&self, label_text: &dyn Fn(&str, &str, &str) -> String) -> String {
        let mut out = String::from("flowchart LR\n");
        for node in self.nodes.iter().filter(|n| n.subtopology.is_none()) {
            let _ = writeln!(out, "    {}", self.mermaid_node(node));
        }
        for (index, sub) in self.subtopologies().into_iter().enumerate() {
            let _ = writeln!(out, "    subgraph sub{index}[\"{sub}\"]");
            for node in self.nodes.iter().filter(|n| n.subtopology.as_deref() == Some(sub)) {
                let _ = writeln!(out, "        {}", self.mermaid_node(node));
            }
            let _ = writeln!(out, "    end");
        }
        for (from, to, label) in &self.edges {
            let label = label_text(from, to, label);
            if label.is_empty() {
                let _ = writeln!(out, "    {} --> {}", self.id(from), self.id(to));
            } else {
                let _ = writeln!(out, "    {} -->|{label}| {}", self.id(from), self.id(to));
            }
        }
        out
    }

    fn dot_node(node: &Node) -> String {
        let shape = match node.kind {
            NodeKind::Agent => "box",
            NodeKind::Table => "cylinder",
            NodeKind::Operation => "ellipse",
            _ => "cds",
        };
        let label = match (node.kind, &node.types) {
            (NodeKind::Operation, Some((name, _))) => format!(", label=\"{name}\""),
            _ => String::new(),
        };
        format!("\"{}\" [shape={shape}{label}];", node.name)
    }

    /// Graphviz DOT; each pipeline sub-topology is a cluster.
    pub fn dot(&self) -> String {
        let mut out = format!("digraph \"{}\" {{\n    rankdir=LR;\n", self.app_id);
        for node in self.nodes.iter().filter(|n| n.subtopology.is_none()) {
            let _ = writeln!(out, "    {}", Self::dot_node(node));
        }
        for (index, sub) in self.subtopologies().into_iter().enumerate() {
            let _ = writeln!(out, "    subgraph cluster_{index} {{\n        label=\"{sub}\";");
            for node in self.nodes.iter().filter(|n| n.subtopology.as_deref() == Some(sub)) {
                let _ = writeln!(out, "        {}", Self::dot_node(node));
            }
            let _ = writeln!(out, "    }}");
        }
        for (from, to, label) in &self.edges {
            let _ = writeln!(out, "    \"{from}\" -> \"{to}\" [label=\"{label}\"];");
        }
        out.push_str("}\n");
        out
    }
}

/// The global table `name` of a pipeline.
fn app_global<'p>(pipeline: &'p Pipeline, name: &str) -> Option<&'p crate::table::GlobalTableSpec> {
    pipeline.globals.iter().find(|g| g.table.name == name)
}

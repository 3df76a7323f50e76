//! The topology: what the macros know of the app — sources, agents, the topics they send to,
//! internal topics, tables and their changelogs, dead-letter topics — as a graph, printable
//! as text, Mermaid or DOT before any broker is contacted.

use std::fmt::Write;

use crate::app::App;

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
    /// An agent's dead-letter topic.
    DeadLetter,
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

impl Topology {
    pub(crate) fn of(app: &App) -> Self {
        let mut topology = Topology {
            app_id: app.id().to_string(),
            nodes: Vec::new(),
            edges: Vec::new(),
        };
        let sent: Vec<&str> = app
            .agents()
            .iter()
            .flat_map(|a| a.sends.iter().map(|t| t.name))
            .collect();
        for agent in app.agents() {
            let source = &agent.source;
            let kind = if source.internal || sent.contains(&source.name) {
                NodeKind::Internal
            } else {
                NodeKind::Source
            };
            topology.node(source.name, kind, Some((source.key_type, source.value_type)));
            topology.node(agent.name, NodeKind::Agent, None);
            topology.edge(source.name, agent.name, "reads");
            for topic in &agent.sends {
                let read = app.agents().iter().any(|a| a.source.name == topic.name);
                let kind = if topic.internal || read {
                    NodeKind::Internal
                } else {
                    NodeKind::Sink
                };
                topology.node(topic.name, kind, Some((topic.key_type, topic.value_type)));
                topology.edge(agent.name, topic.name, "sends");
            }
            for table in &agent.tables {
                let changelog = table.changelog_topic(app.id());
                topology.node(table.name, NodeKind::Table, Some((table.key_type, table.value_type)));
                topology.node(&changelog, NodeKind::Changelog, None);
                topology.edge(agent.name, table.name, "updates");
                topology.edge(table.name, &changelog, "changelog");
            }
            let dlq = agent.dead_letter_topic(app.id());
            topology.node(&dlq, NodeKind::DeadLetter, None);
            topology.edge(agent.name, &dlq, "bad records");
        }
        topology
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
        }
    }

    /// Plain text, one agent per paragraph.
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
        out
    }

    /// A Mermaid flowchart.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for node in &self.nodes {
            let id = self.id(&node.name);
            let label = match &node.types {
                Some((k, v)) => format!("{}<br/><small>{k}, {v}</small>", node.name),
                None => node.name.clone(),
            };
            let shape = match node.kind {
                NodeKind::Agent => format!("{id}[[\"{label}\"]]"),
                NodeKind::Table => format!("{id}[(\"{label}\")]"),
                _ => format!("{id}>\"{label}\"]"),
            };
            let _ = writeln!(out, "    {shape}");
        }
        for (from, to, label) in &self.edges {
            let _ = writeln!(out, "    {} -->|{label}| {}", self.id(from), self.id(to));
        }
        out
    }

    /// Graphviz DOT.
    pub fn dot(&self) -> String {
        let mut out = format!("digraph \"{}\" {{\n    rankdir=LR;\n", self.app_id);
        for node in &self.nodes {
            let shape = match node.kind {
                NodeKind::Agent => "box",
                NodeKind::Table => "cylinder",
                _ => "cds",
            };
            let _ = writeln!(out, "    \"{}\" [shape={shape}];", node.name);
        }
        for (from, to, label) in &self.edges {
            let _ = writeln!(out, "    \"{from}\" -> \"{to}\" [label=\"{label}\"];");
        }
        out.push_str("}\n");
        out
    }
}

//! The web server's pages: an index, and the topology drawn by Mermaid (vendored, so the
//! page needs no network) with this worker's live rates on its edges, redrawn every two
//! seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use super::WebState;
use crate::metrics::TopicPartition;
use crate::topology::NodeKind;

/// Mermaid 11 (`@mermaid-js/tiny`), see `assets/README.md`.
const MERMAID_JS: &str = include_str!("../../assets/mermaid.tiny.js");

/// Records in and out of each topic so far.
type Totals = HashMap<String, (u64, u64)>;

/// Records per second in and out of each topic, between the last two times the graph was
/// drawn (at least a second apart).
#[derive(Default)]
pub(crate) struct Rates {
    last: Option<(Instant, Totals)>,
    per_second: HashMap<String, (f64, f64)>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `GET /`: what the server offers.
pub(super) async fn index(State(state): State<Arc<WebState>>) -> Html<String> {
    let tables: String = state
        .tables
        .iter()
        .filter(|t| t.spec.lookup.is_some())
        .map(|t| format!("<li><a href=\"tables/{0}\">tables/{0}</a></li>", escape(t.spec.name)))
        .collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{app}</title></head><body>\
         <h1>{app}</h1><p>worker {url}</p><ul>\
         <li><a href=\"topology\">topology</a> (live)</li>\
         <li><a href=\"metrics\">metrics</a> (Prometheus)</li>\
         <li><a href=\"health\">health</a>, <a href=\"ready\">ready</a></li>\
         <li><a href=\"tables\">tables</a><ul>{tables}</ul></li></ul></body></html>",
        app = escape(&state.app_id),
        url = escape(&state.url),
    ))
}

/// `GET /topology`: the page; it draws `topology/graph` and draws it again every 2 s.
pub(super) async fn topology(State(state): State<Arc<WebState>>) -> Html<String> {
    Html(format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>{app}: topology</title>
<style>body{{font-family:sans-serif;margin:1.5em}} #status{{color:#666;font-size:90%}}</style>
</head><body>
<h1>{app}</h1>
<p id="status">drawing…</p>
<div id="graph"></div>
<script src="topology/mermaid.js"></script>
<script>
mermaid.initialize({{ startOnLoad: false, securityLevel: "strict" }});
let drawn = 0;
async function draw() {{
  const status = document.getElementById("status");
  try {{
    const answer = await fetch("topology/graph", {{ cache: "no-store" }});
    const text = await answer.text();
    const {{ svg }} = await mermaid.render("topology" + drawn++, text);
    document.getElementById("graph").innerHTML = svg;
    status.textContent = "worker {url}; rates in records/s, updated " + new Date().toLocaleTimeString();
    status.dataset.drawn = String(drawn);
  }} catch (error) {{
    status.textContent = "cannot draw the topology: " + error;
  }}
}}
draw();
setInterval(draw, 2000);
</script>
</body></html>
"#,
        app = escape(&state.app_id),
        url = escape(&state.url),
    ))
}

/// `GET /topology/mermaid.js`.
pub(super) async fn mermaid_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        MERMAID_JS,
    )
        .into_response()
}

/// Records in and out of `topic` so far, over its partitions.
fn totals(state: &WebState, topic: &str) -> (u64, u64) {
    let partitions = state.partitions.get(topic).copied().unwrap_or(0);
    let families = &state.metrics.families;
    let mut sum = (0, 0);
    for partition in 0..partitions {
        let labels = TopicPartition::new(topic, partition);
        sum.0 += families.records_in.get(&labels).map_or(0, |c| c.get());
        sum.1 += families.records_out.get(&labels).map_or(0, |c| c.get());
    }
    sum
}

fn is_topic(kind: NodeKind) -> bool {
    matches!(
        kind,
        NodeKind::Source | NodeKind::Sink | NodeKind::Internal | NodeKind::Changelog | NodeKind::DeadLetter
    )
}

/// `GET /topology/graph`: the topology in Mermaid, each edge out of a topic labelled with
/// the records/s this worker reads from it, each edge into one with the records/s it
/// writes there.
pub(super) async fn graph(State(state): State<Arc<WebState>>) -> Response {
    let topics: Vec<&str> = state
        .topology
        .nodes
        .iter()
        .filter(|n| is_topic(n.kind))
        .map(|n| n.name.as_str())
        .collect();
    let per_second = {
        let mut rates = state.rates.lock().unwrap_or_else(|p| p.into_inner());
        let due = rates
            .last
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed().as_secs_f64() >= 1.0);
        if due {
            let now: HashMap<String, (u64, u64)> = topics.iter().map(|t| (t.to_string(), totals(&state, t))).collect();
            if let Some((at, before)) = &rates.last {
                let seconds = at.elapsed().as_secs_f64().max(1e-3);
                let fresh = now
                    .iter()
                    .map(|(topic, (read, written))| {
                        let (read_before, written_before) = before.get(topic).copied().unwrap_or_default();
                        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
                        (
                            topic.clone(),
                            (rate(*read, read_before), rate(*written, written_before)),
                        )
                    })
                    .collect();
                rates.per_second = fresh;
            }
            rates.last = Some((Instant::now(), now));
        }
        rates.per_second.clone()
    };
    let show = |rate: f64| {
        if rate >= 100.0 {
            format!("{rate:.0}/s")
        } else {
            format!("{rate:.1}/s")
        }
    };
    let text = state.topology.mermaid_labelled(&|from, to, label| {
        let rate = if topics.contains(&from) {
            per_second.get(from).map(|(read, _)| *read)
        } else if topics.contains(&to) {
            per_second.get(to).map(|(_, written)| *written)
        } else {
            None
        };
        match rate {
            Some(rate) if label.is_empty() => show(rate),
            Some(rate) => format!("{label} {}", show(rate)),
            None if topics.contains(&from) || topics.contains(&to) => {
                if label.is_empty() {
                    "0/s".to_string()
                } else {
                    format!("{label} 0/s")
                }
            }
            None => label.to_string(),
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

//! The worker's web server (axum), as Faust gives every worker one: table lookups answered
//! wherever the key lives (interactive queries), Prometheus metrics, the live topology,
//! health and readiness.
//!
//! | route | answers |
//! |---|---|
//! | `GET /health` | 200 while the worker runs; 503 once it failed or stopped |
//! | `GET /ready` | 200 once every assigned partition is restored and processing; else 503 |
//! | `GET /metrics` | Prometheus text ([`crate::Metrics::prometheus`]) |
//! | `GET /tables` | the app's tables |
//! | `GET /tables/{name}/{key}` | the key's value as JSON, from the worker that holds its partition |
//! | `GET /tables/{name}?prefix=&limit=` | keys and values of the partitions this worker holds |
//! | `GET /topology` | the topology drawn by Mermaid, with live rates on its edges |
//!
//! Each worker says which partitions it holds in the app's directory topic
//! (`{app}-workers`); a lookup of a key held elsewhere is forwarded there. The server knows
//! the worker through a trait the worker implements: this module does not depend on it.

pub(crate) mod directory;
mod lookup;
mod page;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::spec::TableSpec;
use crate::task::TaskContext;
use crate::topology::Topology;
use crate::{Error, Result};

use self::directory::Directory;

/// Faust's web port, which the command line's workers listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 6066;

/// Where a worker's web server listens and how other workers reach it.
///
/// ```
/// let web = streams_core::web::WebOptions::default();
/// assert_eq!(web.bind.to_string(), "127.0.0.1");
/// assert_eq!(web.port, 6066);
/// // 6066 taken (another worker on this machine): any free port, said in the log.
/// assert!(web.any_port_if_taken);
/// // A port asked for is that port or a failed start; 0: any free port (see
/// // `WorkerHandle::web_url`).
/// let web = streams_core::web::WebOptions::default().port(0);
/// assert_eq!((web.port, web.any_port_if_taken), (0, false));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebOptions {
    /// The address to listen on: loopback unless asked (`0.0.0.0` for every interface).
    pub bind: IpAddr,
    /// The port; 0 takes any free port.
    pub port: u16,
    /// When `port` is taken, take any free port instead (and say which) rather than fail
    /// the start: the default's choice, so that several workers of one app (or several
    /// apps) start side by side on one machine with default options. Lookups find a worker
    /// through the app's directory, whatever its port. Off once a port or an advertised URL
    /// is given.
    pub any_port_if_taken: bool,
    /// The URL other workers forward lookups to (Kafka Streams' `application.server`).
    /// Default: `http://{bind}:{port}`, with the host's name when bound to every interface.
    pub advertised: Option<String>,
}

impl Default for WebOptions {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            any_port_if_taken: true,
            advertised: None,
        }
    }
}

impl WebOptions {
    /// Listens on this port (0: any free port); a port in use fails the worker's start.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self.any_port_if_taken = false;
        self
    }

    /// Listens on this address.
    pub fn bind(mut self, bind: IpAddr) -> Self {
        self.bind = bind;
        self
    }

    /// Advertises this URL to the other workers (the port is then the one asked for).
    pub fn advertised(mut self, url: impl Into<String>) -> Self {
        self.advertised = Some(url.into());
        self.any_port_if_taken = false;
        self
    }
}

/// How a table's partition stands on this worker.
pub(crate) enum Held {
    /// Held, restored and processing: the task's context and the table's index in it.
    Here(Arc<TaskContext>, usize),
    /// Held, its stores being restored.
    Restoring,
    /// Not held here.
    NotHere,
}

/// What the web server asks of its worker.
pub(crate) trait Local: Send + Sync + 'static {
    /// How partition `partition` of table `table` stands here.
    fn held(&self, table: &str, partition: i32) -> Held;
    /// Whether the worker waits for the group to give it partitions (a rebalance).
    fn rebalancing(&self) -> bool;
    /// How many of the worker's tasks are restoring their stores.
    fn restoring(&self) -> usize;
    /// The store of this worker's standby copy of partition `partition` of table `table`,
    /// with how many changelog records the copy was behind as of its last pass (see
    /// `worker/standby.rs`); `None` without one.
    fn standby(&self, table: &str, partition: i32) -> Option<(Arc<dyn crate::store::StateStore>, u64)>;
}

/// A table as the web server serves it.
pub(crate) struct TableInfo {
    pub spec: TableSpec,
    /// The task that keeps it, and that task's first source (the directory names held
    /// partitions by source topic).
    pub task: String,
    pub source: String,
    pub partitions: i32,
}

/// Everything the handlers share.
pub(crate) struct WebState {
    pub app_id: String,
    /// This worker's advertised URL.
    pub url: String,
    pub tables: Vec<TableInfo>,
    pub local: Arc<dyn Local>,
    pub metrics: Arc<Metrics>,
    pub directory: Arc<Directory>,
    pub client: reqwest::Client,
    pub topology: Topology,
    /// Partition counts of the app's topics (for the topology's rates).
    pub partitions: HashMap<String, i32>,
    pub rates: Mutex<page::Rates>,
    /// Set once the worker has stopped.
    pub finished: Arc<AtomicBool>,
    pub started: Instant,
}

/// A running web server: stops when [`WebServer::shutdown`] is called or it is dropped.
pub(crate) struct WebServer {
    pub url: String,
    pub local_addr: SocketAddr,
    stop: Arc<tokio::sync::Notify>,
}

impl WebServer {
    /// Stops accepting requests; those in flight finish.
    pub(crate) fn shutdown(&self) {
        self.stop.notify_one();
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds the server's socket (so that a taken port fails the worker's start), and the URL
/// it advertises.
pub(crate) async fn bind(options: &WebOptions) -> Result<(tokio::net::TcpListener, String)> {
    let address = SocketAddr::new(options.bind, options.port);
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e)
            if e.kind() == std::io::ErrorKind::AddrInUse
                && options.any_port_if_taken
                && options.advertised.is_none() =>
        {
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(options.bind, 0))
                .await
                .map_err(|e| Error::Config(format!("the web server cannot listen on {}: {e}", options.bind)))?;
            if let Ok(local) = listener.local_addr() {
                tracing::warn!(
                    "port {} is in use (another worker on this machine?); the web server listens on {local} instead \
                     (lookups reach it through the app's directory; --web-port asks for a port)",
                    options.port
                );
            }
            listener
        }
        Err(e) => {
            return Err(Error::Config(format!(
            "the web server cannot listen on {address}: {e}; give another --web-port (0: any free port), or --no-web"
        )))
        }
    };
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the web server's address", e))?;
    let url = match &options.advertised {
        Some(url) => url.trim_end_matches('/').to_string(),
        None if local.ip().is_unspecified() => format!("http://{}:{}", host_name(), local.port()),
        None => format!("http://{local}"),
    };
    if local.ip().is_loopback() && options.advertised.is_none() {
        tracing::info!(
            "the web server listens on loopback ({local}): workers on other machines cannot forward lookups \
             here; give --web-bind 0.0.0.0 (or --web-advertise URL) when the app runs on several machines"
        );
    }
    Ok((listener, url))
}

/// This machine's name, as other machines may reach it.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Serves `state` on `listener` until shut down.
pub(crate) fn serve(listener: tokio::net::TcpListener, url: String, state: Arc<WebState>) -> Result<WebServer> {
    let local_addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the web server's address", e))?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let router = Router::new()
        .route("/", get(page::index))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/tables", get(lookup::tables))
        .route("/tables/{name}", get(lookup::list))
        .route("/tables/{name}/{key}", get(lookup::get))
        .route("/topology", get(page::topology))
        .route("/topology/graph", get(page::graph))
        .route("/topology/mermaid.js", get(page::mermaid_js))
        .with_state(state);
    let stopped = Arc::clone(&stop);
    tokio::spawn(async move {
        let shutdown = async move { stopped.notified().await };
        if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
            tracing::warn!("web server: {error}");
        }
    });
    tracing::info!("web server on {url} (tables, metrics, topology, health, ready)");
    Ok(WebServer { url, local_addr, stop })
}

/// A JSON error body with `status`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, axum::Json(body)).into_response()
}

/// 503 with `Retry-After`: the answer is not known here right now.
pub(crate) fn unavailable(message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        axum::Json(body),
    )
        .into_response()
}

async fn health(axum::extract::State(state): axum::extract::State<Arc<WebState>>) -> Response {
    if let Some(error) = state.metrics.fatal() {
        return error_status(StatusCode::SERVICE_UNAVAILABLE, "failed", &error);
    }
    if state.finished.load(Ordering::Relaxed) {
        return error_status(StatusCode::SERVICE_UNAVAILABLE, "stopped", "the worker has stopped");
    }
    let body = serde_json::json!({
        "status": "ok",
        "app": state.app_id,
        "url": state.url,
        "member": state.metrics.member_id(),
        "uptime_seconds": state.started.elapsed().as_secs(),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn error_status(status: StatusCode, what: &str, why: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "status": what, "error": why }))).into_response()
}

/// Whether every assigned partition is restored and processing, and why not.
fn readiness(state: &WebState) -> std::result::Result<(), String> {
    if state.metrics.failed() || state.finished.load(Ordering::Relaxed) {
        return Err("the worker has stopped".into());
    }
    if state.metrics.assignments.load(Ordering::Relaxed) == 0 {
        return Err("waiting for the group's first assignment".into());
    }
    if state.local.rebalancing() {
        return Err("the group is rebalancing".into());
    }
    match state.local.restoring() {
        0 => Ok(()),
        1 => Err("1 partition is restoring its tables".into()),
        n => Err(format!("{n} partitions are restoring their tables")),
    }
}

async fn ready(axum::extract::State(state): axum::extract::State<Arc<WebState>>) -> Response {
    let assigned = state.metrics.assigned.load(Ordering::Relaxed);
    match readiness(&state) {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "ready": true, "assigned_partitions": assigned })),
        )
            .into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(serde_json::json!({ "ready": false, "reason": why, "assigned_partitions": assigned })),
        )
            .into_response(),
    }
}

async fn metrics(axum::extract::State(state): axum::extract::State<Arc<WebState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.prometheus(),
    )
        .into_response()
}

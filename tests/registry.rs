//! A test tool, not part of the library: a small Confluent-compatible Schema Registry, in
//! memory, with the REST subset that clients use (Confluent's Java, Python and Go clients,
//! and streams'):
//!
//! - `POST /subjects/{subject}/versions`: register a schema (`{"schema", "schemaType",
//!   "references"}`), answer its id (one id per distinct schema, shared by subjects);
//! - `POST /subjects/{subject}`: look a schema up under a subject;
//! - `GET /schemas/ids/{id}`: a schema by id;
//! - `GET /subjects/{subject}/versions/{version|latest}`, `GET /subjects`,
//!   `GET /subjects/{subject}/versions`.
//!
//! Errors come as Confluent's `{"error_code", "message"}` (40401 subject not found, 40402
//! version not found, 40403 schema not found). It checks no compatibility. It can require
//! HTTP basic auth, and can be made to fail every call (503) to test outages.
//!
//! `cargo run -p streams-tests --bin test-registry -- PORT` runs one on its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// One registered schema.
#[derive(Clone, PartialEq)]
struct Schema {
    schema: String,
    schema_type: String,
    references: Value,
}

#[derive(Default)]
struct Store {
    /// Schemas by id (from 1).
    schemas: Vec<Schema>,
    /// Each subject's versions (schema ids, oldest first).
    subjects: BTreeMap<String, Vec<usize>>,
}

struct Shared {
    store: Mutex<Store>,
    /// `Basic ...` value required of every call.
    auth: Option<String>,
    down: AtomicBool,
    /// Every call as `METHOD path`, for tests that check what a client asked.
    calls: Mutex<Vec<String>>,
}

/// A running registry; it stops with the process.
pub struct TestRegistry {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
}

fn error(status: StatusCode, code: i64, message: &str) -> Response {
    (status, Json(json!({"error_code": code, "message": message}))).into_response()
}

fn schema_type(body: &Value) -> String {
    body.get("schemaType")
        .and_then(Value::as_str)
        .unwrap_or("AVRO")
        .to_string()
}

fn schema_json(schema: &Schema) -> Value {
    let mut out = json!({"schema": schema.schema});
    if schema.schema_type != "AVRO" {
        out["schemaType"] = json!(schema.schema_type);
    }
    if schema.references.as_array().is_some_and(|r| !r.is_empty()) {
        out["references"] = schema.references.clone();
    }
    out
}

impl Shared {
    /// `Some(response)` when the call is refused (registry down, wrong credentials).
    fn refuse(&self, headers: &HeaderMap, call: String) -> Option<Response> {
        self.calls.lock().expect("calls").push(call);
        if self.down.load(Ordering::SeqCst) {
            return Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                50003,
                "the registry is down (test)",
            ));
        }
        let given = headers.get("authorization").and_then(|v| v.to_str().ok());
        match &self.auth {
            Some(auth) if given != Some(auth.as_str()) => Some(error(StatusCode::UNAUTHORIZED, 40101, "Unauthorized")),
            _ => None,
        }
    }
}

async fn register(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(refused) = shared.refuse(&headers, format!("POST /subjects/{subject}/versions")) {
        return refused;
    }
    let Some(text) = body.get("schema").and_then(Value::as_str) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "no schema");
    };
    let schema = Schema {
        schema: text.to_string(),
        schema_type: schema_type(&body),
        references: body.get("references").cloned().unwrap_or(json!([])),
    };
    let mut store = shared.store.lock().expect("store");
    let id = match store.schemas.iter().position(|s| *s == schema) {
        Some(index) => index + 1,
        None => {
            store.schemas.push(schema);
            store.schemas.len()
        }
    };
    let versions = store.subjects.entry(subject).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    Json(json!({"id": id})).into_response()
}

async fn lookup(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(refused) = shared.refuse(&headers, format!("POST /subjects/{subject}")) {
        return refused;
    }
    let store = shared.store.lock().expect("store");
    let Some(versions) = store.subjects.get(&subject) else {
        return error(StatusCode::NOT_FOUND, 40401, &format!("Subject '{subject}' not found."));
    };
    let wanted = (
        body.get("schema").and_then(Value::as_str).unwrap_or_default(),
        schema_type(&body),
    );
    for (version, id) in versions.iter().enumerate() {
        let schema = &store.schemas[id - 1];
        if (schema.schema.as_str(), schema.schema_type.clone()) == wanted {
            let mut out = schema_json(schema);
            out["subject"] = json!(subject);
            out["id"] = json!(id);
            out["version"] = json!(version + 1);
            return Json(out).into_response();
        }
    }
    error(StatusCode::NOT_FOUND, 40403, "Schema not found")
}

async fn by_id(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(refused) = shared.refuse(&headers, format!("GET /schemas/ids/{id}")) {
        return refused;
    }
    let store = shared.store.lock().expect("store");
    match id
        .parse::<usize>()
        .ok()
        .and_then(|id| store.schemas.get(id.wrapping_sub(1)))
    {
        Some(schema) => Json(schema_json(schema)).into_response(),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn version(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((subject, version)): Path<(String, String)>,
) -> Response {
    if let Some(refused) = shared.refuse(&headers, format!("GET /subjects/{subject}/versions/{version}")) {
        return refused;
    }
    let store = shared.store.lock().expect("store");
    let Some(versions) = store.subjects.get(&subject) else {
        return error(StatusCode::NOT_FOUND, 40401, &format!("Subject '{subject}' not found."));
    };
    let index = match version.as_str() {
        "latest" | "-1" => versions.len().checked_sub(1),
        number => number.parse::<usize>().ok().and_then(|n| n.checked_sub(1)),
    };
    let Some((index, id)) = index.and_then(|i| versions.get(i).map(|id| (i, *id))) else {
        return error(StatusCode::NOT_FOUND, 40402, "Version not found.");
    };
    let mut out = schema_json(&store.schemas[id - 1]);
    out["subject"] = json!(subject);
    out["id"] = json!(id);
    out["version"] = json!(index + 1);
    Json(out).into_response()
}

async fn versions(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(subject): Path<String>) -> Response {
    if let Some(refused) = shared.refuse(&headers, format!("GET /subjects/{subject}/versions")) {
        return refused;
    }
    let store = shared.store.lock().expect("store");
    match store.subjects.get(&subject) {
        Some(versions) => Json(json!((1..=versions.len()).collect::<Vec<_>>())).into_response(),
        None => error(StatusCode::NOT_FOUND, 40401, &format!("Subject '{subject}' not found.")),
    }
}

async fn subjects(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refused) = shared.refuse(&headers, "GET /subjects".into()) {
        return refused;
    }
    let store = shared.store.lock().expect("store");
    Json(json!(store.subjects.keys().collect::<Vec<_>>())).into_response()
}

impl TestRegistry {
    /// Starts a registry on a free port, on a thread and runtime of its own; with
    /// `auth = Some((user, password))`, every call must carry those credentials.
    pub fn start(auth: Option<(&str, &str)>) -> Self {
        Self::start_on(0, auth)
    }

    /// [`TestRegistry::start`] on `port` (0: any free port).
    pub fn start_on(port: u16, auth: Option<(&str, &str)>) -> Self {
        Self::serve(port, auth, None)
    }

    /// [`TestRegistry::start`] over HTTPS, with a certificate of its own for `localhost` and
    /// 127.0.0.1 (self-signed): the registry (its URL `https://localhost:PORT`) and the
    /// certificate's PEM, which a client trusts as its CA.
    pub fn start_tls(auth: Option<(&str, &str)>) -> (Self, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("certificate");
        let pem = certified.cert.pem();
        let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .expect("server config");
        let mut registry = Self::serve(0, auth, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))));
        registry.url = registry.url.replace("http://127.0.0.1", "https://localhost");
        (registry, pem)
    }

    fn serve(port: u16, auth: Option<(&str, &str)>, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        use base64::Engine;
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let shared = Arc::new(Shared {
            store: Mutex::default(),
            auth: auth.map(|(user, password)| format!("Basic {}", encode(&format!("{user}:{password}")))),
            down: AtomicBool::new(false),
            calls: Mutex::default(),
        });
        let router = Router::new()
            .route("/subjects", get(subjects))
            .route("/subjects/{subject}", post(lookup))
            .route("/subjects/{subject}/versions", post(register).get(versions))
            .route("/subjects/{subject}/versions/{version}", get(version))
            .route("/schemas/ids/{id}", get(by_id))
            .with_state(Arc::clone(&shared));
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the test registry");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        std::thread::Builder::new()
            .name("test-registry".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    match tls {
                        None => axum::serve(listener, router).await.expect("serve"),
                        Some(acceptor) => axum::serve(TlsListener { listener, acceptor }, router)
                            .await
                            .expect("serve"),
                    }
                });
            })
            .expect("thread");
        Self {
            url: format!("http://127.0.0.1:{port}"),
            shared,
        }
    }

    /// The registered subjects.
    pub fn subjects(&self) -> Vec<String> {
        self.shared
            .store
            .lock()
            .expect("store")
            .subjects
            .keys()
            .cloned()
            .collect()
    }

    /// The number of distinct schemas registered.
    pub fn schema_count(&self) -> usize {
        self.shared.store.lock().expect("store").schemas.len()
    }

    /// Registers `schema` (of type `AVRO`, `PROTOBUF` or `JSON`) under `subject` directly;
    /// its id.
    pub fn register(&self, subject: &str, schema: &str, schema_type: &str) -> usize {
        let schema = Schema {
            schema: schema.to_string(),
            schema_type: schema_type.to_string(),
            references: json!([]),
        };
        let mut store = self.shared.store.lock().expect("store");
        let id = match store.schemas.iter().position(|s| *s == schema) {
            Some(index) => index + 1,
            None => {
                store.schemas.push(schema);
                store.schemas.len()
            }
        };
        let versions = store.subjects.entry(subject.to_string()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        id
    }

    /// Makes every call fail with 503 (`true`) or answer again (`false`).
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Every call so far, as `METHOD path`.
    pub fn calls(&self) -> Vec<String> {
        self.shared.calls.lock().expect("calls").clone()
    }
}

/// Connections accepted over TLS (a handshake that fails drops the connection).
struct TlsListener {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.listener.accept().await else {
                continue;
            };
            if let Ok(stream) = self.acceptor.accept(stream).await {
                return (stream, address);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

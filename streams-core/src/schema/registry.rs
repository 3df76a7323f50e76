//! The schema registry client: the REST calls codecs need (a schema by id, a subject's id
//! for a schema, a subject's version), each answered once and then from a cache.
//!
//! Codecs are synchronous and run on the worker's runtime, so the HTTP calls run on a
//! runtime of the client's own; a caller waits for the answer (on a multi-threaded runtime
//! inside `block_in_place`, which hands the thread's other work elsewhere). Only a cache miss
//! waits: once per schema id and per schema a codec sends.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::settings::redact;
use super::RegistrySettings;

/// Why the registry gave no answer.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The registry answered that it does not have it (an unknown id or subject): the
    /// record's fault.
    Missing(String),
    /// The registry refused it (an incompatible or invalid schema).
    Refused(String),
    /// The registry could not be reached or failed (network, 5xx, timeout, no registry
    /// configured): nobody's fault, and no record's.
    Unavailable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Missing(what) | Failure::Refused(what) => f.write_str(what),
            Failure::Unavailable(what) => write!(f, "the schema registry is unavailable: {what}"),
        }
    }
}

impl Failure {
    pub(crate) fn into_decode(self) -> crate::DecodeError {
        match self {
            Failure::Unavailable(_) => crate::DecodeError::unavailable(self.to_string()),
            other => crate::DecodeError::new(other.to_string()),
        }
    }
}

impl From<Failure> for crate::EncodeError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Unavailable(_) => crate::EncodeError::unavailable(failure.to_string()),
            other => crate::EncodeError::new(other.to_string()),
        }
    }
}

/// A schema reference (a Protobuf import, an Avro named type of another subject).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Reference {
    pub name: String,
    pub subject: String,
    pub version: i32,
}

/// A schema as the registry keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Registered {
    pub schema: String,
    /// `AVRO` (the default, which the registry leaves out), `PROTOBUF` or `JSON`.
    #[serde(rename = "schemaType", default, skip_serializing_if = "Option::is_none")]
    pub schema_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error_code: Option<i64>,
    message: Option<String>,
}

/// The process's registry, set by [`install`].
static REGISTRY: RwLock<Option<Arc<Registry>>> = RwLock::new(None);

/// Makes `settings` the registry of every codec in the process.
pub(crate) fn install(settings: RegistrySettings) -> crate::Result<()> {
    let mut current = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    if current.as_ref().is_some_and(|registry| registry.settings == settings) {
        return Ok(());
    }
    let registry = Registry::new(settings)?;
    *current = Some(Arc::new(registry));
    Ok(())
}

/// The process's registry.
pub(crate) fn registry() -> Result<Arc<Registry>, Failure> {
    REGISTRY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| {
            Failure::Unavailable(
                "no schema registry is configured (give --schema-registry-url, schema.registry.url in \
                 --config-file, or call RegistrySettings::install)"
                    .into(),
            )
        })
}

/// A schema registry client with its caches.
pub(crate) struct Registry {
    settings: RegistrySettings,
    http: reqwest::Client,
    /// Runs the HTTP calls; shut down without waiting when the client goes.
    runtime: Option<tokio::runtime::Runtime>,
    by_id: RwLock<HashMap<u32, Arc<Registered>>>,
    /// Ids of schemas under subjects: (subject, schema text) → id.
    ids: RwLock<HashMap<(String, String), u32>>,
    /// Schemas of subjects' versions (references): (subject, version) → schema.
    versions: RwLock<HashMap<(String, i32), Arc<Registered>>>,
    /// What codecs made of schemas (parsed schemas, compiled validators), by id and kind.
    parsed: Mutex<HashMap<(u32, &'static str), Made>>,
}

/// Something a codec made of a schema.
type Made = Arc<dyn Any + Send + Sync>;

impl Drop for Registry {
    fn drop(&mut self) {
        // Dropped maybe on an async thread, where waiting is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How long one HTTP call may take.
const TIMEOUT: Duration = Duration::from_secs(10);

fn read_pem(path: &std::path::Path, what: &str) -> crate::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        crate::Error::Config(format!(
            "cannot read the schema registry's {what} {}: {e}",
            path.display()
        ))
    })
}

impl Registry {
    fn new(settings: RegistrySettings) -> crate::Result<Self> {
        let config = |what: String| crate::Error::Config(what);
        let mut http = reqwest::Client::builder().timeout(TIMEOUT).connect_timeout(TIMEOUT);
        if let Some(path) = &settings.ca_location {
            let pem = read_pem(path, "CA file")?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| config(format!("schema registry CA file {}: {e}", path.display())))?;
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        match (&settings.certificate_location, &settings.key_location) {
            (Some(certificate), Some(key)) => {
                let mut pem = read_pem(certificate, "certificate")?;
                pem.extend(read_pem(key, "key")?);
                let identity = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| config(format!("schema registry client certificate: {e}")))?;
                http = http.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(config(
                    "schema.registry.ssl.certificate.location and schema.registry.ssl.key.location go together".into(),
                ))
            }
        }
        let http = http
            .build()
            .map_err(|e| config(format!("schema registry client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("schema-registry")
            .enable_all()
            .build()
            .map_err(|e| config(format!("schema registry client's runtime: {e}")))?;
        Ok(Self {
            settings,
            http,
            runtime: Some(runtime),
            by_id: RwLock::default(),
            ids: RwLock::default(),
            versions: RwLock::default(),
            parsed: Mutex::default(),
        })
    }

    /// The schema with this id.
    pub(crate) fn schema(&self, id: u32) -> Result<Arc<Registered>, Failure> {
        if let Some(found) = self.by_id.read().unwrap_or_else(PoisonError::into_inner).get(&id) {
            return Ok(Arc::clone(found));
        }
        let answer: Registered = self.call(reqwest::Method::GET, &["schemas", "ids", &id.to_string()], None)?;
        let answer = Arc::new(answer);
        self.by_id
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::clone(&answer));
        Ok(answer)
    }

    /// A subject's version (`-1` for the latest), for references.
    pub(crate) fn version(&self, subject: &str, version: i32) -> Result<Arc<Registered>, Failure> {
        let key = (subject.to_string(), version);
        if version >= 0 {
            if let Some(found) = self.versions.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
                return Ok(Arc::clone(found));
            }
        }
        let which = if version < 0 {
            "latest".to_string()
        } else {
            version.to_string()
        };
        let answer: Registered = self.call(reqwest::Method::GET, &["subjects", subject, "versions", &which], None)?;
        let answer = Arc::new(answer);
        if version >= 0 {
            self.versions
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, Arc::clone(&answer));
        }
        Ok(answer)
    }

    /// The id of `schema` under `subject`: registered there when `register`, else looked up
    /// (and then it must be registered already).
    pub(crate) fn id_of(&self, subject: &str, schema: &Registered, register: bool) -> Result<u32, Failure> {
        let key = (subject.to_string(), schema.schema.clone());
        if let Some(id) = self.ids.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(*id);
        }
        let body = serde_json::to_value(schema).map_err(|e| Failure::Refused(e.to_string()))?;
        let answer: IdAnswer = if register {
            self.call(reqwest::Method::POST, &["subjects", subject, "versions"], Some(body))?
        } else {
            self.call(reqwest::Method::POST, &["subjects", subject], Some(body))
                .map_err(|failure| match failure {
                    Failure::Missing(what) => Failure::Missing(format!(
                        "the schema is not registered under subject `{subject}`, and the codec does not \
                         register schemas: {what}"
                    )),
                    other => other,
                })?
        };
        self.ids
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, answer.id);
        // Records this client writes read back without asking (a table's keys after a
        // restart, say, while the registry is away).
        self.by_id
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(answer.id)
            .or_insert_with(|| Arc::new(schema.clone()));
        Ok(answer.id)
    }

    /// What a codec made of schema `id` (kind names what it made), made once.
    pub(crate) fn parsed<T: Send + Sync + 'static>(
        &self,
        id: u32,
        kind: &'static str,
        make: impl FnOnce(&Registry, &Registered) -> Result<T, Failure>,
    ) -> Result<Arc<T>, Failure> {
        if let Some(found) = self
            .parsed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(id, kind))
        {
            if let Ok(found) = Arc::clone(found).downcast::<T>() {
                return Ok(found);
            }
        }
        let registered = self.schema(id)?;
        let made = Arc::new(make(self, &registered)?);
        self.parsed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((id, kind), Arc::clone(&made) as Made);
        Ok(made)
    }

    /// One REST call, tried at each URL in turn until one answers; when none does, tried
    /// again after 0.2, 0.4 and 0.8 s (a registry restarting, a connection dropped) before
    /// it counts as unavailable.
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<T, Failure> {
        let mut pause = Duration::from_millis(200);
        for _ in 0..3 {
            match self.call_once(method.clone(), path, body.as_ref()) {
                Err(Failure::Unavailable(what)) => {
                    tracing::warn!("schema registry: {what}; trying again in {pause:?}");
                    // Waited for as a call is (an async caller's thread is handed over).
                    if let Some(runtime) = &self.runtime {
                        wait(runtime.spawn(async move {
                            tokio::time::sleep(pause).await;
                            Ok(())
                        }))?;
                    }
                    pause *= 2;
                }
                answer => return answer,
            }
        }
        self.call_once(method, path, body.as_ref())
    }

    fn call_once<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &[&str],
        body: Option<&serde_json::Value>,
    ) -> Result<T, Failure> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| Failure::Unavailable("the client is shut down".into()))?;
        let mut last = Failure::Unavailable("no schema registry URL".into());
        for base in &self.settings.urls {
            let mut url = reqwest::Url::parse(base)
                .map_err(|e| Failure::Unavailable(format!("schema registry URL `{}`: {e}", redact(base))))?;
            url.path_segments_mut()
                .map_err(|()| {
                    Failure::Unavailable(format!("schema registry URL `{}` cannot have a path", redact(base)))
                })?
                .pop_if_empty()
                .extend(path);
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header("accept", "application/vnd.schemaregistry.v1+json, application/json");
            if let Some(auth) = &self.settings.basic_auth {
                let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
                request = request.basic_auth(user, Some(password));
            }
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/vnd.schemaregistry.v1+json")
                    .body(body.to_string());
            }
            let shown = {
                let mut shown = url.clone();
                let _ = shown.set_password(None);
                let _ = shown.set_username("");
                shown.to_string()
            };
            let answer = wait(runtime.spawn(async move {
                let response = request
                    .send()
                    .await
                    .map_err(|e| Failure::Unavailable(format!("{shown}: {e}")))?;
                let status = response.status();
                let text = response
                    .text()
                    .await
                    .map_err(|e| Failure::Unavailable(format!("{shown}: {e}")))?;
                Ok::<_, Failure>((status, text, shown))
            }));
            let (status, text, shown) = match answer {
                Ok(answer) => answer,
                Err(failure @ Failure::Unavailable(_)) => {
                    last = failure;
                    continue;
                }
                Err(other) => return Err(other),
            };
            if status.is_success() {
                return serde_json::from_str(&text).map_err(|e| {
                    Failure::Unavailable(format!("{shown} answered what is not a registry's answer: {e}"))
                });
            }
            let error: Option<ErrorAnswer> = serde_json::from_str(&text).ok();
            let what = match &error {
                Some(ErrorAnswer {
                    error_code,
                    message: Some(message),
                }) => format!("{message} (error {})", error_code.unwrap_or(i64::from(status.as_u16()))),
                _ => format!("HTTP {status}"),
            };
            let what = format!("{} {}: {what}", method, shown);
            // A 404 is the registry's answer only with its own error codes (40401 subject,
            // 40402 version, 40403 schema not found); any other 404 (a wrong path, a proxy)
            // says nothing of the record.
            let registry_code = error.as_ref().and_then(|e| e.error_code);
            match status.as_u16() {
                404 if registry_code.is_some_and(|code| (40400..40500).contains(&code)) => {
                    return Err(Failure::Missing(what))
                }
                409 | 422 => return Err(Failure::Refused(what)),
                // Wrong credentials are a setting to fix, not a record's fault.
                _ => last = Failure::Unavailable(what),
            }
        }
        Err(last)
    }
}

/// Waits for a call on the client's runtime, from any thread (an async one included).
fn wait<T: Send + 'static>(call: tokio::task::JoinHandle<Result<T, Failure>>) -> Result<T, Failure> {
    let join = || {
        futures::executor::block_on(call).unwrap_or_else(|e| Err(Failure::Unavailable(format!("the call failed: {e}"))))
    };
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(join),
        _ => join(),
    }
}

//! How to reach the schema registry: its URL, credentials and TLS files.

use std::path::PathBuf;

/// How to reach a Confluent-compatible Schema Registry. A worker takes it from
/// `--schema-registry-url` or from these keys of `--config-file` / `--config` (the names
/// Confluent's clients use), which never reach librdkafka:
///
/// | key | what |
/// |---|---|
/// | `schema.registry.url` | one URL, or several separated by commas (tried in turn) |
/// | `basic.auth.user.info` (or `schema.registry.basic.auth.user.info`) | `USER:PASSWORD` for HTTP basic auth |
/// | `schema.registry.ssl.ca.location` | PEM file of the CA that signed the registry's certificate |
/// | `schema.registry.ssl.certificate.location`, `schema.registry.ssl.key.location` | PEM files of a client certificate and its key (mutual TLS) |
///
/// ```
/// use streams_core::schema::RegistrySettings;
///
/// let settings = RegistrySettings::from_config(&[
///     ("schema.registry.url".to_string(), "https://registry:8081".to_string()),
///     ("basic.auth.user.info".to_string(), "app:secret".to_string()),
/// ])
/// .unwrap();
/// assert_eq!(settings.urls, ["https://registry:8081"]);
/// assert_eq!(settings.basic_auth.as_deref(), Some("app:secret"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// The registry's base URLs, tried in turn.
    pub urls: Vec<String>,
    /// `USER:PASSWORD` for HTTP basic auth.
    pub basic_auth: Option<String>,
    /// PEM file of the CA that signed the registry's certificate.
    pub ca_location: Option<PathBuf>,
    /// PEM file of a client certificate (mutual TLS), with [`RegistrySettings::key_location`].
    pub certificate_location: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_location: Option<PathBuf>,
}

/// Credentials stay out of logs.
impl std::fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("urls", &self.urls.iter().map(|url| redact(url)).collect::<Vec<_>>())
            .field("basic_auth", &self.basic_auth.as_ref().map(|_| "***"))
            .field("ca_location", &self.ca_location)
            .field("certificate_location", &self.certificate_location)
            .field("key_location", &self.key_location)
            .finish()
    }
}

impl RegistrySettings {
    /// A registry at `url` (several URLs separated by commas), without credentials.
    pub fn new(url: &str) -> Self {
        Self {
            urls: split_urls(url),
            ..Self::default()
        }
    }

    /// The settings named in a config file's (or `--config`'s) keys, later keys winning;
    /// `None` without `schema.registry.url`.
    pub fn from_config(settings: &[(String, String)]) -> Option<Self> {
        Self::from_config_and_url(settings, None)
    }

    /// [`RegistrySettings::from_config`], with the URL (when given) from the command line.
    pub(crate) fn from_config_and_url(settings: &[(String, String)], url: Option<&str>) -> Option<Self> {
        let mut out = Self::default();
        for (key, value) in settings {
            match key.as_str() {
                "schema.registry.url" => out.urls = split_urls(value),
                "basic.auth.user.info" | "schema.registry.basic.auth.user.info" => out.basic_auth = Some(value.clone()),
                "schema.registry.ssl.ca.location" => out.ca_location = Some(value.into()),
                "schema.registry.ssl.certificate.location" => out.certificate_location = Some(value.into()),
                "schema.registry.ssl.key.location" => out.key_location = Some(value.into()),
                _ => {}
            }
        }
        if let Some(url) = url {
            out.urls = split_urls(url);
        }
        (!out.urls.is_empty()).then_some(out)
    }

    /// Whether a config key is one of the registry's (and so not librdkafka's).
    pub fn is_registry_key(key: &str) -> bool {
        key.starts_with("schema.registry.") || key == "basic.auth.user.info" || key == "basic.auth.credentials.source"
    }

    /// Makes these the settings of every schema codec in this process (a worker does this
    /// with its own settings when it starts). Fails where no schema format was compiled in
    /// (the `avro`, `protobuf` and `json-schema` features) or a TLS file cannot be read.
    pub fn install(self) -> crate::Result<()> {
        #[cfg(feature = "schema-registry")]
        {
            super::registry::install(self)
        }
        #[cfg(not(feature = "schema-registry"))]
        {
            Err(crate::Error::Config(format!(
                "a schema registry is configured ({}), but streams-core was built without a \
                 schema format: enable its `avro`, `protobuf` or `json-schema` feature",
                self.urls.join(",")
            )))
        }
    }
}

/// A URL as it may be shown: credentials in it (`https://user:password@host`) hidden.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn split_urls(text: &str) -> Vec<String> {
    text.split(',')
        .map(|url| url.trim().trim_end_matches('/').to_string())
        .filter(|url| !url.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_config_keys_and_stay_out_of_logs() {
        let keys = [
            ("schema.registry.url", "http://a:8081/, http://b:8081"),
            ("schema.registry.basic.auth.user.info", "u:p"),
            ("schema.registry.ssl.ca.location", "/ca.pem"),
            ("acks", "all"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let settings = RegistrySettings::from_config(&keys).unwrap();
        assert_eq!(settings.urls, ["http://a:8081", "http://b:8081"]);
        assert_eq!(settings.basic_auth.as_deref(), Some("u:p"));
        assert_eq!(settings.ca_location, Some(PathBuf::from("/ca.pem")));
        assert!(!format!("{settings:?}").contains("u:p"));
        assert_eq!(redact("https://me:pw@host:1/x@y"), "https://***@host:1/x@y");
        assert_eq!(redact("http://host:1"), "http://host:1");
        let with_password = RegistrySettings::new("https://me:pw@host");
        assert!(!format!("{with_password:?}").contains("pw"), "{with_password:?}");
        assert!(RegistrySettings::from_config(&keys[1..]).is_none());
        let flagged = RegistrySettings::from_config_and_url(&keys[1..], Some("http://c:1")).unwrap();
        assert_eq!(flagged.urls, ["http://c:1"]);
        assert_eq!(
            flagged.basic_auth.as_deref(),
            Some("u:p"),
            "the file's credentials with the flag's URL"
        );
        assert!(RegistrySettings::is_registry_key("schema.registry.url"));
        assert!(RegistrySettings::is_registry_key("basic.auth.user.info"));
        assert!(!RegistrySettings::is_registry_key("acks"));
    }
}

//! JSON Schema records (`jsonschema`): JSON values checked against the type's schema when
//! sent, and against the writer's schema (the one their id names) when read.

use std::any::TypeId;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::registry::{self, Failure, Registered};
use super::{wire, Placement};
use crate::{DecodeError, EncodeError};

/// A type whose records are JSON documents of a JSON Schema: the schema's text. Its `title`
/// is the record's name, which [`super::SubjectName::Record`] and `TopicRecord` subjects and
/// keys ([`super::JsonSchemaKey`]) need.
///
/// ```
/// use streams_core::prelude::*;
/// use streams_core::schema::JsonSchemaRecord;
///
/// #[record]
/// struct Hit { hits: i64, user: String }
///
/// impl JsonSchemaRecord for Hit {
///     const SCHEMA: &'static str = r#"{
///         "title": "Hit", "type": "object",
///         "properties": { "hits": { "type": "integer" }, "user": { "type": "string" } },
///         "required": ["hits", "user"]
///     }"#;
/// }
///
/// const HITS: Topic<(), Hit> = Topic::new("hits-json").values(ValueCodec::json_schema());
/// # let _ = HITS;
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no JSON Schema",
    note = "implement `streams_core::schema::JsonSchemaRecord` for it: the schema's text"
)]
pub trait JsonSchemaRecord {
    /// The JSON Schema's text.
    const SCHEMA: &'static str;
}

struct Own {
    validator: jsonschema::Validator,
    registered: Registered,
    /// The schema's `title`: the record's name, which subjects by record name need.
    title: Option<String>,
}

fn own<V: JsonSchemaRecord + 'static>() -> Result<Arc<Own>, String> {
    super::own(TypeId::of::<V>(), "json-schema", || {
        let schema: serde_json::Value =
            serde_json::from_str(V::SCHEMA).map_err(|e| format!("the type's JSON Schema is not JSON: {e}"))?;
        let validator = jsonschema::validator_for(&schema).map_err(|e| format!("the type's JSON Schema: {e}"))?;
        let title = schema
            .get("title")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string);
        Ok(Own {
            validator,
            registered: Registered {
                schema: V::SCHEMA.to_string(),
                schema_type: Some("JSON".into()),
                references: Vec::new(),
            },
            title,
        })
    })
}

/// A value's bytes: schema id and JSON, after checking the JSON against the type's schema.
pub(crate) fn encode<V: JsonSchemaRecord + Serialize + 'static>(
    value: &V,
    placement: &Placement<'_>,
) -> Result<Vec<u8>, EncodeError> {
    let own = own::<V>().map_err(EncodeError::new)?;
    let json = serde_json::to_value(value)?;
    if let Err(error) = own.validator.validate(&json) {
        return Err(EncodeError::new(format!(
            "the value does not match the JSON Schema {}: {error}",
            own.title.as_deref().unwrap_or("of the type")
        )));
    }
    // The record's name: subjects by record name (and keys) need it, and take the title (a
    // type's path would change with the code).
    let record = match (&own.title, placement.subject, placement.key) {
        (Some(title), _, _) => title.as_str(),
        (None, super::SubjectName::Topic, false) => "",
        (None, _, _) => {
            return Err(EncodeError::new(
                "the type's JSON Schema has no `title`, which names the record for its subject",
            ))
        }
    };
    let id = super::schema_id(placement, record, &own.registered)?;
    Ok(wire::frame(id, &[], &serde_json::to_vec(&json)?))
}

/// A value of JSON bytes that match the schema their id names.
pub(crate) fn decode<V: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<V, DecodeError> {
    let (id, payload) = wire::unframe(bytes)?;
    let json: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| DecodeError::new(format!("invalid JSON: {e}")))?;
    let registry = registry::registry().map_err(Failure::into_decode)?;
    let validator = registry
        .parsed(id, "json-schema", |_, registered| writer_validator(id, registered))
        .map_err(Failure::into_decode)?;
    if let Err(error) = validator.validate(&json) {
        return Err(DecodeError::new(format!(
            "the value does not match its JSON Schema (id {id}): {error}"
        )));
    }
    serde_json::from_value(json)
        .map_err(|e| DecodeError::new(format!("JSON of schema id {id} does not fit the record type: {e}")))
}

fn writer_validator(id: u32, registered: &Registered) -> Result<jsonschema::Validator, Failure> {
    if registered.schema_type.as_deref() != Some("JSON") {
        return Err(Failure::Missing(format!(
            "schema id {id} is a {} schema, not a JSON Schema",
            registered.schema_type.as_deref().unwrap_or("AVRO")
        )));
    }
    let schema: serde_json::Value = serde_json::from_str(&registered.schema)
        .map_err(|e| Failure::Refused(format!("schema id {id} is not JSON: {e}")))?;
    jsonschema::validator_for(&schema)
        .map_err(|e| Failure::Refused(format!("schema id {id} is not a JSON Schema: {e}")))
}

impl<V: JsonSchemaRecord + serde::Serialize + serde::de::DeserializeOwned + 'static> crate::codec::ValueCodec<V> {
    /// JSON checked against a JSON Schema ([`JsonSchemaRecord`]), in the schema
    /// registry's wire format. Needs the `json-schema` feature and a registry (see
    /// [`crate::schema`]).
    pub const fn json_schema() -> Self {
        Self::registry("json-schema", encode::<V>, decode::<V>)
    }
}

//! Avro records (`apache-avro`): the type's schema from `AvroSchema` (derived), values through
//! serde, and a record written with another schema resolved against the type's (Avro's schema
//! resolution: new fields take their defaults, removed ones are skipped).

use std::any::TypeId;
use std::sync::Arc;

use apache_avro::{AvroSchema, Schema};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::registry::{self, Failure, Registered};
use super::{wire, Placement};
use crate::{DecodeError, EncodeError};

/// A type's own schema, and its registered form.
struct Own {
    schema: Schema,
    registered: Registered,
    name: String,
}

fn own<V: AvroSchema + 'static>() -> Result<Arc<Own>, String> {
    super::own(TypeId::of::<V>(), "avro", || {
        let schema = V::get_schema();
        let text = serde_json::to_string(&schema).map_err(|e| format!("the type's Avro schema: {e}"))?;
        let name = match &schema {
            Schema::Record(record) => record.name.fullname(None),
            Schema::Enum(record) => record.name.fullname(None),
            Schema::Fixed(record) => record.name.fullname(None),
            other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
        };
        Ok(Own {
            schema,
            registered: Registered {
                schema: text,
                schema_type: None,
                references: Vec::new(),
            },
            name,
        })
    })
}

/// A value's bytes: its schema's id (registered or looked up where `placement` says) and its
/// Avro encoding.
pub(crate) fn encode<V: AvroSchema + Serialize + 'static>(
    value: &V,
    placement: &Placement<'_>,
) -> Result<Vec<u8>, EncodeError> {
    let own = own::<V>().map_err(EncodeError::new)?;
    let id = super::schema_id(placement, &own.name, &own.registered)?;
    let value = apache_avro::to_value(value)
        .and_then(|value| value.resolve(&own.schema))
        .map_err(|e| EncodeError::new(format!("not a value of the Avro schema {}: {e}", own.name)))?;
    let payload = apache_avro::to_avro_datum(&own.schema, value)
        .map_err(|e| EncodeError::new(format!("Avro encoding of {}: {e}", own.name)))?;
    Ok(wire::frame(id, &[], &payload))
}

/// A value of bytes written with any schema the registry knows that resolves to `V`'s.
pub(crate) fn decode<V: AvroSchema + DeserializeOwned + 'static>(bytes: &[u8]) -> Result<V, DecodeError> {
    let (id, mut payload) = wire::unframe(bytes)?;
    let own = own::<V>().map_err(DecodeError::new)?;
    let registry = registry::registry().map_err(Failure::into_decode)?;
    let writer = registry
        .parsed(id, "avro", |registry, registered| parse(registry, id, registered))
        .map_err(Failure::into_decode)?;
    bound_allocations();
    let value = apache_avro::from_avro_datum_schemata(
        &writer.0,
        std::iter::once(&writer.0).chain(&writer.1).collect(),
        &mut payload,
        Some(&own.schema),
    )
    .map_err(|e| {
        DecodeError::new(format!(
            "Avro record of schema id {id} does not decode as {}: {e}",
            own.name
        ))
    })?;
    if !payload.is_empty() {
        return Err(DecodeError::new(format!(
            "Avro record of schema id {id} has {} bytes after its end",
            payload.len()
        )));
    }
    apache_avro::from_value::<V>(&value)
        .map_err(|e| DecodeError::new(format!("Avro record of schema id {id} does not fit {}: {e}", own.name)))
}

/// The most a record's length prefix may make the decoder allocate at once: a record picks
/// its writer's schema, so an array or string length in it is input, and apache-avro's own
/// limit (512 MiB, times the size of a value for arrays) would let one record abort the
/// process. Kafka's records are at most a few MiB.
const MAX_ALLOCATION: usize = 16 * 1024 * 1024;

fn bound_allocations() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION);
    });
}

/// A writer's schema, and the schemas it references.
type Writer = (Schema, Vec<Schema>);

fn parse(registry: &registry::Registry, id: u32, registered: &Registered) -> Result<Writer, Failure> {
    match registered.schema_type.as_deref() {
        None | Some("AVRO") => {}
        Some(other) => {
            return Err(Failure::Missing(format!(
                "schema id {id} is a {other} schema, not an Avro one"
            )))
        }
    }
    // References (and theirs), dependencies first.
    let mut texts: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    add_references(registry, &registered.references, &mut texts, &mut seen, 0)?;
    Schema::parse_str_with_list(&registered.schema, &texts)
        .map_err(|e| Failure::Refused(format!("schema id {id} is not an Avro schema: {e}")))
}

fn add_references(
    registry: &registry::Registry,
    references: &[registry::Reference],
    texts: &mut Vec<String>,
    seen: &mut std::collections::HashSet<(String, i32)>,
    depth: usize,
) -> Result<(), Failure> {
    if depth > 32 {
        return Err(Failure::Refused("schema references nest more than 32 deep".into()));
    }
    for reference in references {
        if !seen.insert((reference.subject.clone(), reference.version)) {
            continue;
        }
        let referenced = registry.version(&reference.subject, reference.version)?;
        add_references(registry, &referenced.references, texts, seen, depth + 1)?;
        texts.push(referenced.schema.clone());
    }
    Ok(())
}

impl<V: AvroSchema + serde::Serialize + serde::de::DeserializeOwned + 'static> crate::codec::ValueCodec<V> {
    /// Avro in the schema registry's wire format, with the type's schema (derived:
    /// `#[record(avro)]`). A record written with another schema of the registry is resolved
    /// against the type's (Avro's schema evolution); one that does not resolve goes to the
    /// dead-letter topic. Needs the `avro` feature and a registry (see [`crate::schema`]).
    ///
    /// ```
    /// use streams_core::prelude::*;
    ///
    /// #[record(avro)]
    /// struct Hit { hits: i64, timestamp: f64, #[serde(rename = "userId")] user_id: String }
    ///
    /// const HITS: Topic<(), Hit> = Topic::new("hit_count_avro").values(ValueCodec::avro());
    /// assert_eq!(HITS.spec().value_format, "avro");
    /// ```
    pub const fn avro() -> Self {
        Self::registry("avro", encode::<V>, decode::<V>)
    }
}

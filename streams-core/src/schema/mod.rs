//! Records in a Confluent-compatible Schema Registry's wire format: Avro, Protobuf and JSON
//! Schema codecs for values ([`crate::codec::ValueCodec::avro`],
//! [`crate::codec::ValueCodec::protobuf`], [`crate::codec::ValueCodec::json_schema`]) and keys
//! ([`AvroKey`], [`ProtobufKey`], [`JsonSchemaKey`]).
//!
//! Each record's bytes are a magic byte (0), the schema's id in the registry (4 bytes,
//! big-endian) and the payload; Protobuf adds the message's indexes in its file. A record is
//! decoded with the schema its id names (fetched once, then cached): resolved against the
//! type's own schema (Avro), its message met by field names (Protobuf), or checked against
//! that schema (JSON Schema). A record that does not decode
//! (another magic byte, an id the registry does not know, a schema that does not resolve)
//! goes to the dead-letter topic with the reason; a registry that cannot be reached stops the
//! worker instead, so that no record is lost to an outage.
//!
//! Each needs a cargo feature of `streams-core`: `avro`, `protobuf` or `json-schema`. The
//! registry's address comes from `--schema-registry-url` (or `schema.registry.url` in the
//! config file; [`RegistrySettings`] lists the other settings), or from
//! [`RegistrySettings::install`] in programs of your own.

#[cfg(feature = "schema-registry")]
use crate::EncodeError;

#[cfg(feature = "avro")]
pub(crate) mod avro;
#[cfg(feature = "json-schema")]
pub(crate) mod json_schema;
#[cfg(feature = "schema-registry")]
mod key;
#[cfg(feature = "protobuf")]
pub(crate) mod protobuf;
#[cfg(feature = "schema-registry")]
mod registry;
mod settings;
#[cfg(feature = "schema-registry")]
mod wire;

#[cfg(feature = "avro")]
pub use apache_avro::AvroSchema;
#[cfg(feature = "json-schema")]
pub use json_schema::JsonSchemaRecord;
#[cfg(feature = "avro")]
pub use key::AvroKey;
#[cfg(feature = "json-schema")]
pub use key::JsonSchemaKey;
#[cfg(feature = "protobuf")]
pub use key::ProtobufKey;
#[cfg(feature = "protobuf")]
pub use protobuf::ProtobufRecord;
pub use settings::RegistrySettings;

#[cfg(feature = "schema-registry")]
pub(crate) use crate::codec::Placement;
pub use crate::codec::SubjectName;

/// What codecs made of their types' own schemas (parsed, compiled, registered form), made
/// once per type and kind.
#[cfg(feature = "schema-registry")]
pub(crate) fn own<T: Send + Sync + 'static>(
    of: std::any::TypeId,
    kind: &'static str,
    make: impl FnOnce() -> Result<T, String>,
) -> Result<std::sync::Arc<T>, String> {
    use std::any::Any;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, PoisonError};
    type Made = Mutex<HashMap<(std::any::TypeId, &'static str), Arc<dyn Any + Send + Sync>>>;
    static MADE: std::sync::OnceLock<Made> = std::sync::OnceLock::new();
    let made = MADE.get_or_init(Made::default);
    if let Some(found) = made.lock().unwrap_or_else(PoisonError::into_inner).get(&(of, kind)) {
        if let Ok(found) = Arc::clone(found).downcast::<T>() {
            return Ok(found);
        }
    }
    let new = Arc::new(make()?);
    made.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert((of, kind), Arc::clone(&new) as Arc<dyn Any + Send + Sync>);
    Ok(new)
}

/// The id under which `schema` (of the record named `record`) goes where `placement` says.
#[cfg(feature = "schema-registry")]
pub(crate) fn schema_id(
    placement: &Placement<'_>,
    record: &str,
    schema: &registry::Registered,
) -> Result<u32, EncodeError> {
    if placement.topic.is_empty() && placement.subject != SubjectName::Record {
        return Err(EncodeError::new(
            "the codec does not know its topic, which names its schema's subject: declare it with Topic::values",
        ));
    }
    let subject = placement.subject.subject(placement.topic, record, placement.key);
    Ok(registry::registry()?.id_of(&subject, schema, placement.register)?)
}

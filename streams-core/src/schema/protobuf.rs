//! Protobuf records (`prost-reflect`, `.proto` files compiled by `protox`): a `#[record]` type
//! and a message of a `.proto` file meet by field names, so a value goes through the message's
//! JSON form (proto field names, 64-bit integers as numbers, fields at their defaults
//! included).

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::Arc;

use prost_reflect::prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use protox::file::{File, FileResolver, GoogleFileResolver};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::registry::{self, Failure, Reference, Registered};
use super::{wire, Placement};
use crate::{DecodeError, EncodeError};

/// A type whose records are a message of a `.proto` file: the file's text and the message's
/// full name. Fields meet by name: the message's field names are the type's serde names.
///
/// ```
/// use streams_core::prelude::*;
/// use streams_core::schema::ProtobufRecord;
///
/// #[record]
/// struct Hit { hits: i64, timestamp: f64, #[serde(rename = "userId")] user_id: String }
///
/// impl ProtobufRecord for Hit {
///     const PROTO: &'static str = r#"
///         syntax = "proto3";
///         package hits;
///         message Hit { int64 hits = 1; double timestamp = 2; string userId = 3; }
///     "#;
///     const MESSAGE: &'static str = "hits.Hit";
/// }
///
/// const HITS: Topic<(), Hit> = Topic::new("hits-proto").values(ValueCodec::protobuf());
/// # let _ = HITS;
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no Protobuf schema",
    note = "implement `streams_core::schema::ProtobufRecord` for it: the `.proto` file's text and the message's full name"
)]
pub trait ProtobufRecord {
    /// The `.proto` file's text (`proto3` or `proto2`; imports of Google's well-known types
    /// are resolved).
    const PROTO: &'static str;
    /// The message's full name (`package.Message`, or `package.Outer.Inner`).
    const MESSAGE: &'static str;
}

/// What a message needs to become bytes or a value.
struct Compiled {
    message: MessageDescriptor,
    /// The message's path in its file, as the wire format writes it.
    indexes: Vec<u8>,
    registered: Registered,
}

/// The name the type's own file has in its pool (and in its references' imports).
const OWN_FILE: &str = "record.proto";

fn own<V: ProtobufRecord + 'static>() -> Result<Arc<Compiled>, String> {
    super::own(TypeId::of::<V>(), "protobuf", || {
        let files = HashMap::from([(OWN_FILE.to_string(), V::PROTO.to_string())]);
        let pool = compile(&files, OWN_FILE).map_err(|e| format!("the .proto of {}: {e}", V::MESSAGE))?;
        let message = pool
            .get_message_by_name(V::MESSAGE)
            .ok_or_else(|| format!("the .proto has no message {}", V::MESSAGE))?;
        Ok(Compiled {
            indexes: wire::write_indexes(&path_of(&message)),
            message,
            registered: Registered {
                schema: V::PROTO.to_string(),
                schema_type: Some("PROTOBUF".into()),
                references: Vec::new(),
            },
        })
    })
}

/// Compiles `main` of `files` (name → text), with Google's well-known types.
fn compile(files: &HashMap<String, String>, main: &str) -> Result<DescriptorPool, String> {
    struct Files(HashMap<String, String>, GoogleFileResolver);
    impl FileResolver for Files {
        fn open_file(&self, name: &str) -> Result<File, protox::Error> {
            match self.0.get(name) {
                Some(text) => file_of(name, text),
                None => self.1.open_file(name),
            }
        }
    }
    let mut compiler = protox::Compiler::with_file_resolver(Files(files.clone(), GoogleFileResolver::new()));
    compiler.include_imports(true);
    compiler.open_file(main).map_err(|e| e.to_string())?;
    Ok(compiler.descriptor_pool())
}

/// A file from its text: `.proto` source, or (as some clients register it) a serialized
/// `FileDescriptorProto` in base64.
fn file_of(name: &str, text: &str) -> Result<File, protox::Error> {
    match File::from_source(name, text) {
        Ok(file) => Ok(file),
        Err(error) => {
            use base64::Engine;
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.trim()) else {
                return Err(error);
            };
            let mut descriptor =
                prost_reflect::prost_types::FileDescriptorProto::decode(bytes.as_slice()).map_err(|_| error)?;
            descriptor.name = Some(name.to_string());
            Ok(File::from_file_descriptor_proto(descriptor))
        }
    }
}

/// A message's path in its file: its index among the file's messages, then among its
/// parent's nested messages.
fn path_of(message: &MessageDescriptor) -> Vec<i32> {
    let mut path = Vec::new();
    let mut current = message.clone();
    loop {
        let siblings: Vec<MessageDescriptor> = match current.parent_message() {
            Some(parent) => parent.child_messages().collect(),
            None => current.parent_file().messages().collect(),
        };
        let index = siblings
            .iter()
            .position(|sibling| sibling.full_name() == current.full_name())
            .unwrap_or(0);
        path.push(index as i32);
        match current.parent_message() {
            Some(parent) => current = parent,
            None => break,
        }
    }
    path.reverse();
    path
}

const TO_JSON: SerializeOptions = SerializeOptions::new()
    .stringify_64_bit_integers(false)
    .use_proto_field_name(true)
    .skip_default_fields(false);

/// A value's bytes: schema id, message indexes, and the message.
pub(crate) fn encode<V: ProtobufRecord + Serialize + 'static>(
    value: &V,
    placement: &Placement<'_>,
) -> Result<Vec<u8>, EncodeError> {
    let own = own::<V>().map_err(EncodeError::new)?;
    let id = super::schema_id(placement, V::MESSAGE, &own.registered)?;
    let json = serde_json::to_value(value)?;
    let message = DynamicMessage::deserialize_with_options(
        own.message.clone(),
        json,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| EncodeError::new(format!("not a {} message: {e}", V::MESSAGE)))?;
    Ok(wire::frame(id, &own.indexes, &message.encode_to_vec()))
}

/// A value of bytes written with any message the registry knows whose fields fit `V`.
pub(crate) fn decode<V: ProtobufRecord + DeserializeOwned + 'static>(bytes: &[u8]) -> Result<V, DecodeError> {
    let (id, rest) = wire::unframe(bytes)?;
    let (indexes, payload) = wire::read_indexes(rest)?;
    let registry = registry::registry().map_err(Failure::into_decode)?;
    let file = registry
        .parsed(id, "protobuf", |registry, registered| {
            writer_file(registry, id, registered)
        })
        .map_err(Failure::into_decode)?;
    let message = message_at(&file, &indexes)
        .ok_or_else(|| DecodeError::new(format!("schema id {id} has no message at indexes {indexes:?}")))?;
    let name = message.full_name().to_string();
    let message = DynamicMessage::decode(message, payload)
        .map_err(|e| DecodeError::new(format!("not a {name} message (schema id {id}): {e}")))?;
    let json = message
        .serialize_with_options(serde_json::value::Serializer, &TO_JSON)
        .map_err(|e| DecodeError::new(format!("{name} message (schema id {id}): {e}")))?;
    serde_json::from_value(json).map_err(|e| {
        DecodeError::new(format!(
            "{name} message (schema id {id}) does not fit the record type: {e}"
        ))
    })
}

/// The file of a registered schema, with its references.
fn writer_file(
    registry: &registry::Registry,
    id: u32,
    registered: &Registered,
) -> Result<prost_reflect::FileDescriptor, Failure> {
    if registered.schema_type.as_deref() != Some("PROTOBUF") {
        return Err(Failure::Missing(format!(
            "schema id {id} is a {} schema, not a Protobuf one",
            registered.schema_type.as_deref().unwrap_or("AVRO")
        )));
    }
    let main = format!("schema-{id}.proto");
    let mut files = HashMap::from([(main.clone(), registered.schema.clone())]);
    add_references(registry, &registered.references, &mut files, 0)?;
    let pool = compile(&files, &main).map_err(|e| Failure::Refused(format!("schema id {id} does not compile: {e}")))?;
    pool.get_file_by_name(&main)
        .ok_or_else(|| Failure::Refused(format!("schema id {id} has no file")))
}

/// The texts of references (and of theirs) by import name.
fn add_references(
    registry: &registry::Registry,
    references: &[Reference],
    files: &mut HashMap<String, String>,
    depth: usize,
) -> Result<(), Failure> {
    if depth > 32 {
        return Err(Failure::Refused("schema references nest more than 32 deep".into()));
    }
    for reference in references {
        if files.contains_key(&reference.name) {
            continue;
        }
        let registered = registry.version(&reference.subject, reference.version)?;
        files.insert(reference.name.clone(), registered.schema.clone());
        add_references(registry, &registered.references, files, depth + 1)?;
    }
    Ok(())
}

fn message_at(file: &prost_reflect::FileDescriptor, indexes: &[i32]) -> Option<MessageDescriptor> {
    let (first, rest) = indexes.split_first()?;
    let mut message = file.messages().nth(usize::try_from(*first).ok()?)?;
    for index in rest {
        let child = message.child_messages().nth(usize::try_from(*index).ok()?)?;
        message = child;
    }
    Some(message)
}

impl<V: ProtobufRecord + serde::Serialize + serde::de::DeserializeOwned + 'static> crate::codec::ValueCodec<V> {
    /// Protobuf in the schema registry's wire format, with the message the type names
    /// ([`ProtobufRecord`]); fields meet by name. Needs the `protobuf` feature
    /// and a registry (see [`crate::schema`]).
    pub const fn protobuf() -> Self {
        Self::registry("protobuf", encode::<V>, decode::<V>)
    }
}

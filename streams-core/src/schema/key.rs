//! Keys in the registry's wire format: `AvroKey<T>`, `ProtobufKey<T>`, `JsonSchemaKey<T>`.
//!
//! A key type does not know its topic, so a key's schema is registered under its record name
//! ([`super::SubjectName::Record`]); reading a key needs no subject (its bytes carry the
//! schema's id), so keys written under `{topic}-key` by other clients read as well.

use crate::codec::Key;
use crate::{DecodeError, EncodeError};

use super::{Placement, SubjectName};

/// Where a key's schema is registered.
const KEYS: Placement<'static> = Placement {
    topic: "",
    subject: SubjectName::Record,
    register: true,
    key: true,
};

macro_rules! schema_key {
    ($(#[$doc:meta])* $name:ident, $feature:literal, $module:ident, $bound:path) => {
        $(#[$doc])*
        #[cfg(feature = $feature)]
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name<T>(pub T);

        #[cfg(feature = $feature)]
        impl<T> Key for $name<T>
        where
            T: $bound + serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
        {
            fn encode_key(&self) -> Option<Vec<u8>> {
                self.try_encode_key().ok().flatten()
            }
            fn try_encode_key(&self) -> Result<Option<Vec<u8>>, EncodeError> {
                super::$module::encode(&self.0, &KEYS).map(Some)
            }
            fn decode_key(bytes: Option<&[u8]>) -> Result<Self, DecodeError> {
                let bytes = bytes.ok_or_else(|| DecodeError::new("the record has no key"))?;
                super::$module::decode(bytes).map($name)
            }
            fn display_key(bytes: &[u8]) -> String {
                match Self::decode_key(Some(bytes)) {
                    Ok(key) => serde_json::to_string(&key.0).unwrap_or_else(|_| format!("{bytes:?}")),
                    Err(_) => format!("{bytes:?}"),
                }
            }
            /// A key given as JSON text.
            fn parse_key(text: &str) -> Result<Self, DecodeError> {
                crate::codec::json::decode(text.as_bytes()).map($name)
            }
        }
    };
}

schema_key!(
    /// A key in Avro (the registry's wire format), registered under its record's full name.
    ///
    /// ```
    /// use streams_core::prelude::*;
    /// use streams_core::schema::AvroKey;
    ///
    /// #[record(avro)]
    /// #[derive(Clone)]
    /// struct UserKey { user: String }
    ///
    /// const HITS: Topic<AvroKey<UserKey>, i64> = Topic::new("hits-by-user");
    /// # let _ = HITS;
    /// ```
    AvroKey, "avro", avro, apache_avro::AvroSchema
);
schema_key!(
    /// A key in Protobuf (the registry's wire format), registered under its message's full
    /// name. See [`super::ProtobufRecord`].
    ProtobufKey, "protobuf", protobuf, super::ProtobufRecord
);
schema_key!(
    /// A key in JSON Schema (the registry's wire format), registered under its schema's
    /// title. See [`super::JsonSchemaRecord`].
    JsonSchemaKey, "json-schema", json_schema, super::JsonSchemaRecord
);

//! Records: the typed values that travel on topics.
//!
//! A record is a serde type marked with [`Record`]; `#[record]` derives both. Records know
//! nothing of Kafka: [`crate::codec`] turns them into bytes and back.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value type that can travel on a topic.
///
/// Derive it with `#[record]` on a struct (it adds serde's derives and this impl):
///
/// ```
/// use streams_core::prelude::*;
///
/// #[record]
/// struct HitCount {
///     hits: i64,
///     timestamp: f64,
///     #[serde(rename = "userId")]
///     user_id: String,
/// }
///
/// let hit: HitCount = HitCount::decode(br#"{"hits": 3, "timestamp": 1.5, "userId": "u1"}"#).unwrap();
/// assert_eq!(hit.user_id, "u1");
/// assert!(HitCount::decode(b"{").is_err());
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a record",
    label = "not a record",
    note = "add `#[record]` to the declaration of `{Self}` (it derives serde and `streams_core::Record`)"
)]
pub trait Record: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Decodes a record from its wire form (JSON).
    fn decode(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        crate::codec::json::decode(bytes)
    }

    /// Encodes the record to its wire form (JSON).
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        crate::codec::json::encode(self)
    }
}

impl Record for String {}
/// Raw bytes, as they are (not a JSON array).
impl Record for Vec<u8> {
    fn decode(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        Ok(bytes.to_vec())
    }
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        Ok(self.clone())
    }
}
impl Record for serde_json::Value {}
impl Record for i64 {}
impl Record for u64 {}
impl Record for f64 {}

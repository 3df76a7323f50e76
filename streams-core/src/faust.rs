//! Faust's wire formats, for apps that take over from a Faust app or feed one.
//!
//! Read off faust-streaming 0.15 and confirmed against a running Faust worker:
//!
//! - **Records** (`faust.Record`) are JSON objects with one more field, `"__faust": {"ns":
//!   "<module>.<Class>"}`, written last. A Faust consumer with a typed topic takes them
//!   whatever the namespace; we write the record's own ([`FaustRecord`]) and ignore the
//!   field when reading (like any field the record does not declare).
//! - **Topic keys** of `str` are raw UTF-8 (Faust's default key serializer, `raw`): what
//!   `String` keys already are here.
//! - **Table changelogs** (`app.Table(..., key_type=str, value_type=int)`) carry JSON keys
//!   and JSON values (`"u1"` → `3`), a deletion is a record without a value, and Faust writes
//!   no headers (it ignores ours). Each change goes to the partition of the record that
//!   made it, as here. [`crate::Table::faust`] keeps a table's keys in that form.
//!
//! ```
//! use streams_core::prelude::*;
//!
//! #[record(faust = "hit_counter.hitCount")]
//! struct HitCount { hits: i64, #[serde(rename = "userId")] user_id: String }
//!
//! const COUNT_TOPIC: Topic<String, HitCount> = Topic::new("count_topic").faust();
//! let bytes = COUNT_TOPIC.value_codec().encode(&HitCount { hits: 3, user_id: "u1".into() }).unwrap();
//! assert_eq!(bytes, br#"{"hits":3,"userId":"u1","__faust":{"ns":"hit_counter.hitCount"}}"#);
//! // What Faust writes reads back, namespace and all.
//! let hit = COUNT_TOPIC.value_codec().decode(&bytes).unwrap();
//! assert_eq!(hit.user_id, "u1");
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{Key, ValueCodec};
use crate::record::Record;
use crate::{DecodeError, EncodeError};

/// A record Faust knows as a `faust.Record` of this namespace (`"<module>.<Class>"`, as
/// Faust writes in `__faust.ns`). Derived by `#[record(faust = "module.Class")]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no Faust namespace",
    label = "not declared as a Faust record",
    note = "declare it with its Faust model's namespace: `#[record(faust = \"module.Class\")]`"
)]
pub trait FaustRecord: Record {
    /// The namespace Faust names the model by: its module and class, `"hit_counter.hitCount"`.
    const NAMESPACE: &'static str;
}

impl<V: FaustRecord> ValueCodec<V> {
    /// Faust's record format: the record's JSON with `"__faust": {"ns": ...}` added, so that
    /// Faust consumers take it as their `faust.Record`. Reads Faust's records and plain JSON
    /// alike.
    pub const fn faust() -> Self {
        Self::custom("faust", encode_record::<V>, V::decode)
    }
}

/// The field Faust adds to a record, holding its namespace.
pub const BLESSED_KEY: &str = "__faust";

/// A record's JSON with Faust's namespace field added last, as Faust writes it.
pub(crate) fn encode_record<V: FaustRecord>(value: &V) -> Result<Vec<u8>, EncodeError> {
    let mut bytes = value.encode().map_err(EncodeError::from)?;
    let namespace = serde_json::to_string(V::NAMESPACE).map_err(EncodeError::from)?;
    if bytes.pop() != Some(b'}') || bytes.first() != Some(&b'{') {
        return Err(EncodeError::new(format!(
            "a Faust record is a JSON object; `{}` encodes as something else",
            std::any::type_name::<V>()
        )));
    }
    if bytes.len() > 1 {
        bytes.push(b',');
    }
    bytes.extend_from_slice(b"\"__faust\":{\"ns\":");
    bytes.extend_from_slice(namespace.as_bytes());
    bytes.extend_from_slice(b"}}");
    Ok(bytes)
}

/// A table key in Faust's form: the key as JSON (`"u1"` for a string), from its bytes here,
/// byte for byte as Python's `json.dumps` writes it (Faust's JSON codec unless orjson is
/// installed): ASCII only, every other character (and DEL) as `\uXXXX`, in UTF-16.
pub(crate) fn table_key<K: Key + Serialize>(native: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let key = K::decode_key(Some(native)).map_err(|e| EncodeError::new(e.to_string()))?;
    let json = serde_json::to_string(&key).map_err(EncodeError::from)?;
    Ok(ascii_json(&json).into_bytes())
}

/// JSON text with every character past `~` escaped as Python's `ensure_ascii` does (outside
/// strings JSON holds only ASCII, so escaping the whole text escapes the strings' contents).
fn ascii_json(json: &str) -> String {
    if json.bytes().all(|b| b < 0x7f) {
        return json.to_string();
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if (c as u32) < 0x7f {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// A table key from Faust's form.
pub(crate) fn decode_table_key<K: DeserializeOwned>(bytes: &[u8]) -> Result<K, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| DecodeError::new(format!("a Faust table key is JSON: {e}")))
}

/// A Faust table key as readable text: the key as it is shown here.
pub(crate) fn show_table_key<K: Key + DeserializeOwned>(bytes: &[u8]) -> String {
    match decode_table_key::<K>(bytes).ok().and_then(|key| key.encode_key()) {
        Some(native) => K::display_key(&native),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Hit {
        hits: i64,
        #[serde(rename = "userId")]
        user_id: String,
    }
    impl Record for Hit {}
    impl FaustRecord for Hit {
        const NAMESPACE: &'static str = "hit_counter.hitCount";
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Empty {}
    impl Record for Empty {}
    impl FaustRecord for Empty {
        const NAMESPACE: &'static str = "m.\"Q\"";
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Number(i64);
    impl Record for Number {}
    impl FaustRecord for Number {
        const NAMESPACE: &'static str = "m.Number";
    }

    #[test]
    fn records_carry_their_namespace_last() {
        let hit = Hit {
            hits: 3,
            user_id: "u1".into(),
        };
        let bytes = encode_record(&hit).unwrap();
        assert_eq!(
            bytes,
            br#"{"hits":3,"userId":"u1","__faust":{"ns":"hit_counter.hitCount"}}"#
        );
        assert_eq!(Hit::decode(&bytes).unwrap(), hit);
        // An empty object has no comma; a namespace is escaped as JSON.
        assert_eq!(encode_record(&Empty {}).unwrap(), br#"{"__faust":{"ns":"m.\"Q\""}}"#);
        assert!(encode_record(&Number(1))
            .unwrap_err()
            .to_string()
            .contains("JSON object"));
    }

    #[test]
    fn what_faust_writes_decodes_with_unknown_fields_ignored() {
        // Faust's own bytes, as a Faust worker wrote them to `count_topic`, with a field more.
        let faust = br#"{"hits": 21, "timestamp": 1.5, "userId": "u3", "extra": [1], "__faust": {"ns": "hit_counter.hitCount"}}"#;
        assert_eq!(
            Hit::decode(faust).unwrap(),
            Hit {
                hits: 21,
                user_id: "u3".into()
            }
        );
    }

    #[test]
    fn table_keys_are_json() {
        assert_eq!(table_key::<String>(b"u1").unwrap(), br#""u1""#);
        assert_eq!(table_key::<String>("a\"b".as_bytes()).unwrap(), br#""a\"b""#);
        assert_eq!(table_key::<i64>(&7i64.to_be_bytes()).unwrap(), b"7");
        // As Python's json.dumps writes them (what Faust's changelog holds without orjson).
        assert_eq!(table_key::<String>("café".as_bytes()).unwrap(), br#""caf\u00e9""#);
        assert_eq!(table_key::<String>("a\u{7f}b".as_bytes()).unwrap(), br#""a\u007fb""#);
        assert_eq!(table_key::<String>("😀".as_bytes()).unwrap(), br#""\ud83d\ude00""#);
        assert_eq!(table_key::<String>("\n\u{1}".as_bytes()).unwrap(), br#""\n\u0001""#);
        assert_eq!(decode_table_key::<String>(br#""caf\u00e9""#).unwrap(), "café");
        assert_eq!(decode_table_key::<String>(br#""u1""#).unwrap(), "u1");
        assert!(decode_table_key::<String>(b"u1").is_err());
        assert_eq!(show_table_key::<String>(br#""u1""#), "u1");
        assert_eq!(show_table_key::<String>(b"not json"), "not json");
    }
}

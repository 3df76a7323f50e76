//! Codecs: bytes to keys and values and back. Nothing here knows about Kafka.

use std::borrow::Cow;

use crate::{DecodeError, EncodeError};

/// JSON, the default value codec.
pub mod json {
    use crate::DecodeError;
    use serde::de::DeserializeOwned;

    /// Decodes JSON bytes into `T`, with a message that says what was wrong.
    pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::new("empty value (expected a JSON document)"));
        }
        // Checked as UTF-8 once, the document is read as text: serde_json then takes its
        // strings as they are, where reading bytes it checks each string again (a call per
        // field name and value). Bytes that are not UTF-8 are read as bytes, as before: the
        // outcome and the message are serde_json's either way.
        let outcome = match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(bytes),
        };
        outcome.map_err(|e| DecodeError::new(format!("invalid JSON: {e}")))
    }

    /// Encodes `value` as JSON. The buffer starts at the size of a typical small record,
    /// which saves the reallocations of growing from empty.
    pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(128);
        serde_json::to_writer(&mut out, value)?;
        Ok(out)
    }

    /// Encodes `value` as JSON into a table's slot, reusing the slot's buffer. The value is
    /// encoded into a buffer of the thread's first, then copied: a new value's bytes are
    /// allocated once, at their size (grown while encoding, they were allocated three or
    /// four times), and a value that fails to encode leaves the slot as it was.
    pub(crate) fn encode_into<T: serde::Serialize + ?Sized>(
        slot: &mut Option<Vec<u8>>,
        value: &T,
    ) -> Result<(), serde_json::Error> {
        thread_local! {
            static ENCODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        ENCODED.with(|encoded| {
            // Taken out, not borrowed: a value whose `Serialize` writes a table value itself
            // finds an empty buffer rather than a borrowed one.
            let mut buffer = encoded.take();
            buffer.clear();
            let outcome = serde_json::to_writer(&mut buffer, value);
            if outcome.is_ok() {
                match slot {
                    Some(bytes) => {
                        bytes.clear();
                        bytes.extend_from_slice(&buffer);
                    }
                    None => *slot = Some(buffer.as_slice().to_vec()),
                }
            }
            if buffer.capacity() <= 64 << 10 {
                // A buffer grown by a rare large value is not kept.
                encoded.replace(buffer);
            }
            outcome
        })
    }
}

/// How a topic's values become bytes and back: the value type's own encoding (JSON for
/// `#[record]` types), UTF-8 text, raw bytes, or functions of your own — Kafka Streams'
/// serdes. Choose it where the topic is declared:
///
/// ```
/// use streams_core::prelude::*;
/// use streams_core::codec::ValueCodec;
///
/// // Plain UTF-8 text, not JSON strings.
/// const LINES: Topic<(), String> = Topic::new("text-lines").values(ValueCodec::utf8());
/// assert_eq!(LINES.value_codec().decode(b"to be").unwrap(), "to be");
/// // The type's own encoding: JSON for strings too.
/// const NAMES: Topic<(), String> = Topic::new("names");
/// assert!(NAMES.value_codec().decode(b"to be").is_err());
/// // Raw bytes.
/// const BLOBS: Topic<(), Vec<u8>> = Topic::new("blobs").values(ValueCodec::bytes());
/// assert_eq!(BLOBS.value_codec().encode(&vec![0xff]).unwrap(), vec![0xff]);
/// ```
pub struct ValueCodec<V> {
    name: &'static str,
    encode: fn(&V) -> Result<Vec<u8>, EncodeError>,
    decode: fn(&[u8]) -> Result<V, DecodeError>,
    /// The type's own encoding ([`ValueCodec::record`]): callers that know the type decode
    /// with it directly, which lets the compiler inline it.
    own: bool,
    /// A codec in the schema registry's wire format (see [`crate::schema`]).
    schema: Option<SchemaCodec<V>>,
}

impl<V> Clone for ValueCodec<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for ValueCodec<V> {}

fn encode_record<V: crate::Record>(value: &V) -> Result<Vec<u8>, EncodeError> {
    value.encode().map_err(EncodeError::from)
}

impl<V: crate::Record> ValueCodec<V> {
    /// The value type's own encoding ([`crate::Record`]: JSON for `#[record]` types).
    pub const fn record() -> Self {
        Self {
            name: "json",
            encode: encode_record::<V>,
            decode: V::decode,
            own: true,
            schema: None,
        }
    }
}

impl ValueCodec<String> {
    /// UTF-8 text (Kafka Streams' `Serdes.String()`); bytes that are not UTF-8 do not decode.
    pub const fn utf8() -> Self {
        Self {
            own: false,
            schema: None,
            name: "utf-8",
            encode: |text| Ok(text.as_bytes().to_vec()),
            decode: |bytes| {
                std::str::from_utf8(bytes)
                    .map(str::to_string)
                    .map_err(|e| DecodeError::new(format!("value is not UTF-8: {e}")))
            },
        }
    }
}

impl ValueCodec<Vec<u8>> {
    /// Raw bytes, as they are (Kafka Streams' `Serdes.ByteArray()`).
    pub const fn bytes() -> Self {
        Self {
            own: false,
            schema: None,
            name: "bytes",
            encode: |bytes| Ok(bytes.clone()),
            decode: |bytes| Ok(bytes.to_vec()),
        }
    }
}

impl<V> ValueCodec<V> {
    /// A codec of your own: a name (for the topology) and the two functions.
    pub const fn custom(
        name: &'static str,
        encode: fn(&V) -> Result<Vec<u8>, EncodeError>,
        decode: fn(&[u8]) -> Result<V, DecodeError>,
    ) -> Self {
        Self {
            name,
            encode,
            decode,
            own: false,
            schema: None,
        }
    }

    /// The codec's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// A value's bytes.
    pub fn encode(&self, value: &V) -> Result<Vec<u8>, EncodeError> {
        match &self.schema {
            Some(schema) => schema.encode(value),
            None => (self.encode)(value),
        }
    }

    /// The value of some bytes.
    pub fn decode(&self, bytes: &[u8]) -> Result<V, DecodeError> {
        match &self.schema {
            Some(schema) => (schema.decode)(bytes),
            None => (self.decode)(bytes),
        }
    }

    /// The subject name strategy of a schema registry codec ([`ValueCodec::avro`],
    /// [`ValueCodec::protobuf`], [`ValueCodec::json_schema`]): under which subject sending
    /// finds or registers the schema ([`SubjectName::Topic`] by default). No effect on
    /// other codecs.
    ///
    /// [`SubjectName::Topic`]: SubjectName::Topic
    pub const fn subject_name(mut self, strategy: SubjectName) -> Self {
        if let Some(schema) = &mut self.schema {
            schema.subject = strategy;
        }
        self
    }

    /// Whether sending registers the schema under its subject (on by default, as
    /// Confluent's `auto.register.schemas`). Off, a send finds the schema's id among those
    /// registered under the subject, and fails when it is not there (for registries where
    /// schemas are registered by a deployment step, not by apps). No effect on codecs
    /// without a registry.
    pub const fn register_schemas(mut self, register: bool) -> Self {
        if let Some(schema) = &mut self.schema {
            schema.register = register;
        }
        self
    }

    /// The codec of records of `topic` (a schema registry codec names its subject after it).
    pub(crate) const fn for_topic(mut self, topic: &'static str) -> Self {
        if let Some(schema) = &mut self.schema {
            schema.topic = topic;
        }
        self
    }

    /// A codec in the schema registry's wire format.
    #[cfg(feature = "schema-registry")]
    pub(crate) const fn registry(
        format: &'static str,
        encode: fn(&V, &Placement<'_>) -> Result<Vec<u8>, EncodeError>,
        decode: fn(&[u8]) -> Result<V, DecodeError>,
    ) -> Self {
        Self {
            name: format,
            encode: |_| Err(EncodeError::new("a schema registry codec encodes with its schema")),
            decode,
            own: false,
            schema: Some(SchemaCodec {
                topic: "",
                subject: SubjectName::Topic,
                register: true,
                encode,
                decode,
            }),
        }
    }
}

impl<V: crate::Record> ValueCodec<V> {
    /// [`ValueCodec::decode`], with the type's own decoding called directly (inlined).
    #[inline]
    pub(crate) fn decode_fast(&self, bytes: &[u8]) -> Result<V, DecodeError> {
        if self.own {
            V::decode(bytes)
        } else {
            (self.decode)(bytes)
        }
    }
}

/// Under which subject a codec finds (or registers) its schema: Confluent's subject name
/// strategies. Decoding does not need one (a record names its schema by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectName {
    /// `{topic}-value` (or `{topic}-key`): Confluent's default, `TopicNameStrategy`.
    Topic,
    /// The record's full name (Avro's `namespace.name`, Protobuf's `package.Message`, JSON
    /// Schema's `title`): `RecordNameStrategy`, for topics that carry several record types.
    Record,
    /// `{topic}-{record name}`: `TopicRecordNameStrategy`.
    TopicRecord,
}

impl SubjectName {
    /// The subject of a record named `record` on `topic`.
    pub fn subject(self, topic: &str, record: &str, key: bool) -> String {
        match self {
            SubjectName::Topic => format!("{topic}-{}", if key { "key" } else { "value" }),
            SubjectName::Record => record.to_string(),
            SubjectName::TopicRecord => format!("{topic}-{record}"),
        }
    }
}

/// The part of a [`ValueCodec`] that works with a schema registry: its format
/// and where its schema is registered.
pub(crate) struct SchemaCodec<V> {
    /// The topic the codec's records go to (set by [`crate::Topic::values`]).
    pub(crate) topic: &'static str,
    pub(crate) subject: SubjectName,
    /// Whether sending registers the schema (Confluent's `auto.register.schemas`, on by
    /// default); when off, the schema must be registered under its subject already.
    pub(crate) register: bool,
    pub(crate) encode: fn(&V, &Placement<'_>) -> Result<Vec<u8>, EncodeError>,
    pub(crate) decode: fn(&[u8]) -> Result<V, DecodeError>,
}

impl<V> Clone for SchemaCodec<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for SchemaCodec<V> {}

/// Where an encoded record's schema goes: its topic, subject strategy, and whether it is a
/// key.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "schema-registry"), allow(dead_code))]
pub(crate) struct Placement<'a> {
    /// The topic (empty for keys, whose type does not know its topic).
    pub topic: &'a str,
    /// The subject name strategy.
    pub subject: SubjectName,
    /// Whether the schema may be registered.
    pub register: bool,
    /// Whether the record is a key.
    pub key: bool,
}

impl<V> SchemaCodec<V> {
    pub(crate) fn encode(&self, value: &V) -> Result<Vec<u8>, EncodeError> {
        let placement = Placement {
            topic: self.topic,
            subject: self.subject,
            register: self.register,
            key: false,
        };
        (self.encode)(value, &placement)
    }
}

/// A type that can be a record key or a table key.
///
/// Strings are UTF-8 bytes, integers are big-endian (as Kafka's Java serializers write
/// them), `Vec<u8>` is raw, `()` is "no key" and ignores whatever key a record carries.
/// Composite keys are tuples of keys or [`Json`] of a record. A tuple key's bytes are its
/// parts in order, each as its length (u32, big-endian) followed by its bytes, or
/// `0xFFFFFFFF` alone for a part without bytes (`None`).
///
/// ```
/// use streams_core::Key;
/// assert_eq!("user-1".to_string().encode_key(), Some(b"user-1".to_vec()));
/// assert_eq!(String::decode_key(Some(b"user-1")).unwrap(), "user-1");
/// assert_eq!(<()>::decode_key(Some(b"anything")).unwrap(), ());
/// assert_eq!(u64::parse_key("42").unwrap(), 42);
/// let pair = ("eu".to_string(), 7u32);
/// assert_eq!(<(String, u32)>::decode_key(pair.encode_key().as_deref()).unwrap(), pair);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a key",
    note = "keys are `String`, `Vec<u8>`, integers (`i32`, `i64`, `u32`, `u64`), `Option<K>` or `()` (no key)",
    note = "for a composite key use a tuple of keys, e.g. `(String, u32)`, or `Json<T>` with a `#[record]` type `T`"
)]
pub trait Key: Send + Sync + Clone + 'static {
    /// The key's bytes; `None` for no key. Keys whose encoding can fail (tuples and `Json`
    /// of serde types) give `None` on failure here: the runtime uses
    /// [`Key::try_encode_key`], which says why.
    fn encode_key(&self) -> Option<Vec<u8>>;
    /// The key's bytes, or why they cannot be made (only keys encoded by serde can fail).
    fn try_encode_key(&self) -> Result<Option<Vec<u8>>, EncodeError> {
        Ok(self.encode_key())
    }
    /// The key's bytes, borrowed when the key already is bytes (table lookups use this, so
    /// that reading a cached key allocates nothing); empty for no key.
    fn key_bytes(&self) -> Result<Cow<'_, [u8]>, EncodeError> {
        Ok(Cow::Owned(self.try_encode_key()?.unwrap_or_default()))
    }
    /// Whether this is no key at all (Kafka's null key: `()`, `None`), which a table cannot
    /// hold: an aggregation sends such records to the dead-letter topic.
    fn is_null(&self) -> bool {
        false
    }
    /// The key from a record's key bytes.
    fn decode_key(bytes: Option<&[u8]>) -> Result<Self, DecodeError>;
    /// Checks that `bytes` decode as this key type without keeping the key (a stream's
    /// `next()` checks keys it does not return). Override it when decoding allocates.
    fn check_key(bytes: Option<&[u8]>) -> Result<(), DecodeError> {
        Self::decode_key(bytes).map(drop)
    }
    /// Readable text of encoded key bytes (for logs, `tail` and the `table` command).
    fn display_key(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }
    /// The key from text, as `APP send --key TEXT` takes it: a string as it is, a number
    /// in decimal, a composite key as a JSON array or document.
    fn parse_key(text: &str) -> Result<Self, DecodeError> {
        Self::decode_key(Some(text.as_bytes()))
    }
}

/// A form of a key of type `K` that encodes to the same bytes, taken wherever a key is:
/// `&str` for `String` keys and `&[u8]` for `Vec<u8>` keys, as `HashMap::get` takes borrowed
/// forms.
///
/// ```
/// # use streams_core::prelude::*;
/// # const HITS: Topic<String, i64> = Topic::new("hits");
/// # async fn in_an_agent() -> Result<()> {
/// HITS.send("user-1", &1).await?; // a `&str` for a `String` key
/// # Ok(())
/// # }
/// ```
pub trait AsKey<K> {
    /// The key's bytes; `None` for no key.
    fn as_key(&self) -> Result<Option<Vec<u8>>, EncodeError>;
    /// The key's bytes, borrowed where possible; empty for no key.
    fn as_key_bytes(&self) -> Result<Cow<'_, [u8]>, EncodeError>;
}

impl<K: Key> AsKey<K> for K {
    fn as_key(&self) -> Result<Option<Vec<u8>>, EncodeError> {
        self.try_encode_key()
    }
    fn as_key_bytes(&self) -> Result<Cow<'_, [u8]>, EncodeError> {
        self.key_bytes()
    }
}

impl AsKey<String> for str {
    fn as_key(&self) -> Result<Option<Vec<u8>>, EncodeError> {
        Ok(Some(self.as_bytes().to_vec()))
    }
    fn as_key_bytes(&self) -> Result<Cow<'_, [u8]>, EncodeError> {
        Ok(Cow::Borrowed(self.as_bytes()))
    }
}

impl AsKey<String> for &str {
    fn as_key(&self) -> Result<Option<Vec<u8>>, EncodeError> {
        Ok(Some(self.as_bytes().to_vec()))
    }
    fn as_key_bytes(&self) -> Result<Cow<'_, [u8]>, EncodeError> {
        Ok(Cow::Borrowed(self.as_bytes()))
    }
}

impl<const N: usize> AsKey<Vec<u8>> for [u8; N] {
    fn as_key(&self) -> Result<Option<Vec<u8>>, EncodeError> {
        Ok(Some(self.to_vec()))
    }
    fn as_key_bytes(&self) -> Result<Cow<'_, [u8]>, EncodeError> {
        Ok(Cow::Borrowed(self))
    }
}

impl AsKey<Vec<u8>> for [u8] {
    fn as_key(&self) -> Result<Option<Vec<u8>>, EncodeError> {
        Ok(Some(self.to_vec()))
    }
    fn as_key_bytes(&self) -> Result<Cow<'_, [u8]>, EncodeError> {
        Ok(Cow::Borrowed(self))
    }
}

impl Key for String {
    fn encode_key(&self) -> Option<Vec<u8>> {
        Some(self.as_bytes().to_vec())
    }
    fn key_bytes(&self) -> Result<Cow<'_, [u8]>, EncodeError> {
        Ok(Cow::Borrowed(self.as_bytes()))
    }
    fn decode_key(bytes: Option<&[u8]>) -> Result<Self, DecodeError> {
        let bytes = bytes.ok_or_else(|| DecodeError::new("the record has no key"))?;
        String::from_utf8(bytes.to_vec()).map_err(|e| DecodeError::new(format!("key is not UTF-8: {e}")))
    }
    fn check_key(bytes: Option<&[u8]>) -> Result<(), DecodeError> {
        let bytes = bytes.ok_or_else(|| DecodeError::new("the record has no key"))?;
        std::str::from_utf8(bytes)
            .map(drop)
            .map_err(|e| DecodeError::new(format!("key is not UTF-8: {e}")))
    }
}

impl Key for Vec<u8> {
    fn encode_key(&self) -> Option<Vec<u8>> {
        Some(self.clone())
    }
    fn key_bytes(&self) -> Result<Cow<'_, [u8]>, EncodeError> {
        Ok(Cow::Borrowed(self))
    }
    fn decode_key(bytes: Option<&[u8]>) -> Result<Self, DecodeError> {
        bytes
            .map(<[u8]>::to_vec)
            .ok_or_else(|| DecodeError::new("the record has no key"))
    }
}

impl Key for () {
    fn encode_key(&self) -> Option<Vec<u8>> {
        None
    }
    fn is_null(&self) -> bool {
        true
    }
    fn decode_key(_: Option<&[u8]>) -> Result<Self, DecodeError> {
        Ok(())
    }
    fn parse_key(_: &str) -> Result<Self, DecodeError> {
        Err(DecodeError::new(
            "the topic's records have no key (its key type is `()`)",
        ))
    }
}

impl<K: Key> Key for Option<K> {
    fn encode_key(&self) -> Option<Vec<u8>> {
        self.as_ref().and_then(K::encode_key)
    }
    fn is_null(&self) -> bool {
        self.as_ref().is_none_or(K::is_null)
    }
    fn try_encode_key(&self) -> Result<Option<Vec<u8>>, EncodeError> {
        match self {
            Some(key) => key.try_encode_key(),
            None => Ok(None),
        }
    }
    fn decode_key(bytes: Option<&[u8]>) -> Result<Self, DecodeError> {
        bytes.map(|b| K::decode_key(Some(b))).transpose()
    }
    fn parse_key(text: &str) -> Result<Self, DecodeError> {
        K::parse_key(text).map(Some)
    }
}

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn encode_key(&self) -> Option<Vec<u8>> {
                Some(self.to_be_bytes().to_vec())
            }
            fn decode_key(bytes: Option<&[u8]>) -> Result<Self, DecodeError> {
                let bytes = bytes.ok_or_else(|| DecodeError::new("the record has no key"))?;
                let array = bytes.try_into().map_err(|_| {
                    DecodeError::new(format!(
                        "key has {} bytes, a {} key has {}",
                        bytes.len(),
                        stringify!($t),
                        std::mem::size_of::<$t>()
                    ))
                })?;
                Ok(<$t>::from_be_bytes(array))
            }
            fn display_key(bytes: &[u8]) -> String {
                match Self::decode_key(Some(bytes)) {
                    Ok(v) => v.to_string(),
                    Err(_) => format!("{bytes:?}"),
                }
            }
            fn parse_key(text: &str) -> Result<Self, DecodeError> {
                text.trim()
                    .parse()
                    .map_err(|e| DecodeError::new(format!("`{text}` is not a {} key: {e}", stringify!($t))))
            }
        }
    )*};
}
int_key!(i32, i64, u32, u64);

/// One part of a composite key: its length (u32, big-endian) and bytes, or `0xFFFFFFFF`
/// for a part without bytes.
fn write_part(out: &mut Vec<u8>, part: Option<Vec<u8>>) -> Result<(), EncodeError> {
    match part {
        Some(bytes) => {
            let len = u32::try_from(bytes.len())
                .ok()
                .filter(|len| *len != u32::MAX)
                .ok_or_else(|| EncodeError::new("a part of a composite key has 4 GiB or more"))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
    Ok(())
}

/// The next part of a composite key, and the rest.
fn read_part(bytes: &[u8]) -> Result<(Option<&[u8]>, &[u8]), DecodeError> {
    let short = || DecodeError::new("composite key is cut short");
    let (head, rest) = bytes.split_at_checked(4).ok_or_else(short)?;
    let len = u32::from_be_bytes(head.try_into().map_err(|_| short())?);
    if len == u32::MAX {
        return Ok((None, rest));
    }
    let len = usize::try_from(len).map_err(|_| short())?;
    let (part, rest) = rest.split_at_checked(len).ok_or_else(short)?;
    Ok((Some(part), rest))
}

/// One part of a composite key given as a JSON array element: a key type takes it as text
/// ([`Key::parse_key`]); strings without their quotes, `null` as "no key" for `Option`s.
fn parse_part<K: Key>(value: &serde_json::Value) -> Result<K, DecodeError> {
    match value {
        serde_json::Value::String(text) => K::parse_key(text).or_else(|_| K::parse_key(&value.to_string())),
        serde_json::Value::Null => K::decode_key(None).or_else(|_| K::parse_key("null")),
        other => K::parse_key(&other.to_string()),
    }
}

macro_rules! tuple_key {
    ($($name:ident $index:tt),+; $count:expr) => {
        impl<$($name: Key),+> Key for ($($name,)+) {
            fn encode_key(&self) -> Option<Vec<u8>> {
                self.try_encode_key().ok().flatten()
            }
            fn try_encode_key(&self) -> Result<Option<Vec<u8>>, EncodeError> {
                let mut out = Vec::new();
                $(write_part(&mut out, self.$index.try_encode_key()?)?;)+
                Ok(Some(out))
            }
            fn decode_key(bytes: Option<&[u8]>) -> Result<Self, DecodeError> {
                let rest = bytes.ok_or_else(|| DecodeError::new("the record has no key"))?;
                $(
                    let (part, rest) = read_part(rest)?;
                    #[allow(non_snake_case)]
                    let $name = $name::decode_key(part)?;
                )+
                if !rest.is_empty() {
                    return Err(DecodeError::new("composite key has bytes after its last part"));
                }
                Ok(($($name,)+))
            }
            fn display_key(bytes: &[u8]) -> String {
                let mut parts = Vec::new();
                let mut rest = bytes;
                $(
                    match read_part(rest) {
                        Ok((part, next)) => {
                            parts.push(match part {
                                Some(part) => $name::display_key(part),
                                None => "none".to_string(),
                            });
                            rest = next;
                        }
                        Err(_) => return format!("{bytes:?}"),
                    }
                )+
                if !rest.is_empty() {
                    return format!("{bytes:?}");
                }
                format!("({})", parts.join(", "))
            }
            fn parse_key(text: &str) -> Result<Self, DecodeError> {
                let parts: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| {
                    DecodeError::new(format!("a composite key is a JSON array of its {} parts: {e}", $count))
                })?;
                if parts.len() != $count {
                    return Err(DecodeError::new(format!(
                        "a composite key has {} parts, `{text}` has {}",
                        $count,
                        parts.len()
                    )));
                }
                Ok(($(parse_part::<$name>(&parts[$index])?,)+))
            }
        }
    };
}
tuple_key!(A 0, B 1; 2);
tuple_key!(A 0, B 1, C 2; 3);

/// A key encoded as JSON: any `#[record]` type (or serde type) as a composite key, e.g.
/// `Table<Json<UserRegion>, i64>`. Its bytes are the value's JSON, so fields and their order
/// must stay the same for a key to find its records and state again (a `HashMap` field
/// orders its entries differently from one process to the next: use a `BTreeMap`).
///
/// ```
/// use streams_core::prelude::*;
///
/// #[record]
/// #[derive(Clone, PartialEq, Debug)]
/// struct Place { country: String, city: String }
///
/// let key = Json(Place { country: "fr".into(), city: "Lyon".into() });
/// let bytes = key.encode_key().unwrap();
/// assert_eq!(bytes, br#"{"country":"fr","city":"Lyon"}"#.to_vec());
/// assert_eq!(Json::<Place>::decode_key(Some(&bytes)).unwrap(), key);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Json<T>(pub T);

impl<T> Key for Json<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    fn encode_key(&self) -> Option<Vec<u8>> {
        self.try_encode_key().ok().flatten()
    }
    fn try_encode_key(&self) -> Result<Option<Vec<u8>>, EncodeError> {
        Ok(Some(serde_json::to_vec(&self.0)?))
    }
    fn decode_key(bytes: Option<&[u8]>) -> Result<Self, DecodeError> {
        let bytes = bytes.ok_or_else(|| DecodeError::new("the record has no key"))?;
        json::decode(bytes).map(Json)
    }
    fn parse_key(text: &str) -> Result<Self, DecodeError> {
        json::decode(text.as_bytes()).map(Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(i64::decode_key(42i64.encode_key().as_deref()).unwrap(), 42);
        assert!(i64::decode_key(Some(b"abc")).is_err());
        assert!(String::decode_key(None).is_err());
        assert!(String::decode_key(Some(&[0xff, 0xfe])).is_err());
        assert!(String::check_key(Some(&[0xff, 0xfe])).is_err());
        assert!(String::check_key(None).is_err());
        assert!(String::check_key(Some(b"ok")).is_ok());
        assert!(i64::check_key(Some(b"abc")).is_err());
        assert_eq!(Option::<String>::decode_key(None).unwrap(), None);
    }

    #[test]
    fn composite_keys_round_trip_and_reject_bad_bytes() {
        let key = ("eu-west".to_string(), 42u64, None::<String>);
        let bytes = key.encode_key().unwrap();
        assert_eq!(<(String, u64, Option<String>)>::decode_key(Some(&bytes)).unwrap(), key);
        assert_eq!(
            <(String, u64, Option<String>)>::display_key(&bytes),
            "(eu-west, 42, none)"
        );
        assert!(<(String, u64)>::decode_key(Some(&bytes[..5])).is_err());
        assert!(
            <(String, u64)>::decode_key(Some(&bytes)).is_err(),
            "bytes after the last part"
        );
        assert_eq!(
            <(String, u32)>::parse_key(r#"["fr", 7]"#).unwrap(),
            ("fr".to_string(), 7)
        );
        assert!(<(String, u32)>::parse_key("fr").is_err());
        assert!(<()>::parse_key("x").is_err());
    }

    /// Documents that are UTF-8 but not what serde_json accepts in a string, read or
    /// skipped, give serde_json's own outcome and message, read as text as read as bytes.
    #[test]
    fn json_as_text_fails_as_serde_json_on_bytes() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct Named {
            name: String,
        }
        let documents: [&[u8]; 10] = [
            br#"{"name": "\ud800"}"#,
            br#"{"name": "\udc00x"}"#,
            br#"{"name": "\ud83d\ude00"}"#,
            br#"{"name": "a\u0000b"}"#,
            br#"{"name": "a", "skipped": "\u0000\ud800"}"#,
            br#"{"name": "\q"}"#,
            br#"{"name": "a", "skipped": "\x41"}"#,
            b"{\"name\": \"tab\there\"}",
            b"{\"name\": \"a\", \"skipped\": \"new\nline\"}",
            "{\"name\": \"\u{e9}\u{1F600}\"}".as_bytes(),
        ];
        for bytes in documents {
            let read = json::decode::<Named>(bytes).map_err(|e| e.to_string());
            let expected = serde_json::from_slice::<Named>(bytes).map_err(|e| format!("invalid JSON: {e}"));
            assert_eq!(read, expected, "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn json_errors_say_what_is_wrong() {
        let e = json::decode::<i64>(b"").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = json::decode::<i64>(b"\"x\"").unwrap_err();
        assert!(e.to_string().contains("invalid JSON"), "{e}");
    }
}

/// Codecs on arbitrary bytes: a value or an error, never a panic; and what they encode,
/// they decode back.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Hit {
        hits: i64,
        user: String,
        tags: Vec<String>,
    }
    impl crate::Record for Hit {}

    fn decodes_or_refuses<K: Key>(bytes: &[u8]) {
        let _ = K::decode_key(Some(bytes));
        let _ = K::check_key(Some(bytes));
        let _ = K::display_key(bytes);
        if let Ok(text) = std::str::from_utf8(bytes) {
            let _ = K::parse_key(text);
        }
    }

    proptest! {
        #[test]
        fn value_codecs_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ValueCodec::<Hit>::record().decode(&bytes);
            let _ = ValueCodec::<String>::record().decode(&bytes);
            let _ = ValueCodec::<i64>::record().decode(&bytes);
            let _ = ValueCodec::<serde_json::Value>::record().decode(&bytes);
            let _ = ValueCodec::<f64>::record().decode(&bytes);
            prop_assert_eq!(ValueCodec::<String>::utf8().decode(&bytes).is_ok(), std::str::from_utf8(&bytes).is_ok());
            prop_assert_eq!(ValueCodec::<Vec<u8>>::bytes().decode(&bytes).ok(), Some(bytes.clone()));
        }

        /// Read as text or as bytes, a document decodes to the same value or fails with the
        /// same message: JSON records with a byte changed, cut or inserted. (Bytes that are
        /// not UTF-8 are read as bytes either way: those cases only show that nothing panics.)
        #[test]
        fn json_decodes_as_serde_json_reads_bytes(
            hits in any::<i64>(),
            user in ".*",
            tags in proptest::collection::vec(".*", 0..3),
            extra in ".*",
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            edit in 0..4u8,
        ) {
            let mut bytes = serde_json::to_vec(&serde_json::json!({
                "hits": hits, "user": user, "tags": tags, "skipped": extra,
            })).unwrap();
            let at = at.index(bytes.len());
            match edit {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 => bytes.truncate(at),
                _ => {}
            }
            let read = json::decode::<Hit>(&bytes).map_err(|e| e.to_string());
            let expected = if bytes.is_empty() {
                read.clone()
            } else {
                serde_json::from_slice::<Hit>(&bytes).map_err(|e| format!("invalid JSON: {e}"))
            };
            prop_assert_eq!(read, expected);
        }

        #[test]
        fn key_codecs_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            decodes_or_refuses::<String>(&bytes);
            decodes_or_refuses::<Vec<u8>>(&bytes);
            decodes_or_refuses::<i32>(&bytes);
            decodes_or_refuses::<i64>(&bytes);
            decodes_or_refuses::<u32>(&bytes);
            decodes_or_refuses::<u64>(&bytes);
            decodes_or_refuses::<Option<String>>(&bytes);
            decodes_or_refuses::<(String, u64)>(&bytes);
            decodes_or_refuses::<(Vec<u8>, Option<String>, i32)>(&bytes);
            decodes_or_refuses::<Json<Hit>>(&bytes);
        }

        #[test]
        fn what_is_encoded_decodes_back(hits in any::<i64>(), user in ".*", tags in proptest::collection::vec(".*", 0..4), n in any::<u64>()) {
            let hit = Hit { hits, user: user.clone(), tags };
            let codec = ValueCodec::<Hit>::record();
            prop_assert_eq!(codec.decode(&codec.encode(&hit).unwrap()).unwrap(), hit.clone());
            prop_assert_eq!(ValueCodec::<String>::utf8().decode(user.as_bytes()).unwrap(), user.clone());
            let key = (user.clone(), n, Some(hit.user.clone()));
            let bytes = key.encode_key();
            prop_assert_eq!(<(String, u64, Option<String>)>::decode_key(bytes.as_deref()).unwrap(), key);
            let json = Json(hit.clone());
            prop_assert_eq!(Json::<Hit>::decode_key(json.encode_key().as_deref()).unwrap(), json);
            prop_assert_eq!(u64::decode_key(n.encode_key().as_deref()).unwrap(), n);
        }
    }
}

#[cfg(test)]
mod parsing {
    use super::*;

    #[test]
    fn keys_parse_from_text_as_send_takes_them() {
        assert_eq!(i32::parse_key(" -7 ").unwrap(), -7);
        assert!(u64::parse_key("seven").is_err());
        assert_eq!(String::parse_key("ann").unwrap(), "ann");
        assert_eq!(
            <(String, u32)>::parse_key(r#"["eu", 3]"#).unwrap(),
            ("eu".to_string(), 3)
        );
        assert_eq!(<(Option<String>, u64)>::parse_key(r#"[null, 9]"#).unwrap(), (None, 9));
        assert_eq!(
            <(Option<String>, u64)>::parse_key(r#"["x", 9]"#).unwrap(),
            (Some("x".to_string()), 9)
        );
        assert!(<(String, u32)>::parse_key(r#"["eu"]"#).is_err(), "a part missing");
        assert_eq!(Json::<Vec<u32>>::parse_key("[1, 2]").unwrap(), Json(vec![1, 2]));
    }
}

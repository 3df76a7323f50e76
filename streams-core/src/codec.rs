//! Codecs: bytes to keys and values and back. Nothing here knows about Kafka.

use crate::DecodeError;

/// JSON, the default value codec.
pub mod json {
    use super::DecodeError;
    use serde::de::DeserializeOwned;

    /// Decodes JSON bytes into `T`, with a message that says what was wrong.
    pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::new("empty value (expected a JSON document)"));
        }
        serde_json::from_slice(bytes).map_err(|e| DecodeError::new(format!("invalid JSON: {e}")))
    }

    /// Encodes `value` as JSON. The buffer starts at the size of a typical small record,
    /// which saves the reallocations of growing from empty.
    pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(128);
        serde_json::to_writer(&mut out, value)?;
        Ok(out)
    }
}

/// A type that can be a record key or a table key.
///
/// Strings are UTF-8 bytes, integers are big-endian (as Kafka's Java serializers write
/// them), `Vec<u8>` is raw, `()` is "no key" and ignores whatever key a record carries.
///
/// ```
/// use streams_core::Key;
/// assert_eq!("user-1".to_string().encode_key(), Some(b"user-1".to_vec()));
/// assert_eq!(String::decode_key(Some(b"user-1")).unwrap(), "user-1");
/// assert_eq!(<()>::decode_key(Some(b"anything")).unwrap(), ());
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a key",
    note = "keys are `String`, `Vec<u8>`, integers, `Option<K>` or `()` (no key)"
)]
pub trait Key: Send + Sync + Clone + 'static {
    /// The key's bytes; `None` for no key.
    fn encode_key(&self) -> Option<Vec<u8>>;
    /// The key's bytes, borrowed when the key already is bytes (table lookups use this, so
    /// that reading a cached key allocates nothing); empty for no key.
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(self.encode_key().unwrap_or_default())
    }
    /// The key from a record's key bytes.
    fn decode_key(bytes: Option<&[u8]>) -> Result<Self, DecodeError>;
    /// Checks that `bytes` decode as this key type without keeping the key (a stream's
    /// `next()` checks keys it does not return). Override it when decoding allocates.
    fn check_key(bytes: Option<&[u8]>) -> Result<(), DecodeError> {
        Self::decode_key(bytes).map(drop)
    }
    /// Readable text of encoded key bytes (for logs and the `table` command).
    fn display_key(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

impl Key for String {
    fn encode_key(&self) -> Option<Vec<u8>> {
        Some(self.as_bytes().to_vec())
    }
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.as_bytes())
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
    fn key_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self)
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
    fn decode_key(_: Option<&[u8]>) -> Result<Self, DecodeError> {
        Ok(())
    }
}

impl<K: Key> Key for Option<K> {
    fn encode_key(&self) -> Option<Vec<u8>> {
        self.as_ref().and_then(K::encode_key)
    }
    fn decode_key(bytes: Option<&[u8]>) -> Result<Self, DecodeError> {
        bytes.map(|b| K::decode_key(Some(b))).transpose()
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
        }
    )*};
}
int_key!(i32, i64, u32, u64);

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
    fn json_errors_say_what_is_wrong() {
        let e = json::decode::<i64>(b"").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = json::decode::<i64>(b"\"x\"").unwrap_err();
        assert!(e.to_string().contains("invalid JSON"), "{e}");
    }
}

//! Messages: one record of a partition as the poll thread hands it to the partition's
//! stream, still in bytes. The partition's task knows its topic and partition, so a message
//! carries neither; key and payload share one allocation.

use rdkafka::message::{BorrowedMessage, Message as _, OwnedHeaders};

/// A record read from a partition, before decoding.
pub(crate) struct Message {
    offset: i64,
    timestamp: Option<i64>,
    /// Key bytes followed by payload bytes.
    bytes: Vec<u8>,
    /// Length of the key within `bytes`; `None`: the record has no key.
    key_len: Option<usize>,
    has_payload: bool,
    headers: Option<OwnedHeaders>,
}

impl Message {
    /// A message from its parts (the test driver's records).
    pub(crate) fn new(
        offset: i64,
        timestamp: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Self {
        let key_len = key.map(<[u8]>::len);
        let mut bytes = Vec::with_capacity(key_len.unwrap_or(0) + payload.map_or(0, <[u8]>::len));
        bytes.extend_from_slice(key.unwrap_or_default());
        bytes.extend_from_slice(payload.unwrap_or_default());
        Self {
            offset,
            timestamp,
            bytes,
            key_len,
            has_payload: payload.is_some(),
            headers,
        }
    }

    /// Copies a message out of librdkafka's buffer.
    pub(crate) fn from_kafka(message: &BorrowedMessage<'_>) -> Self {
        Self::new(
            message.offset(),
            message.timestamp().to_millis(),
            message.key(),
            message.payload(),
            message.headers().map(|h| h.detach()),
        )
    }

    /// Offset of the record in its partition.
    pub(crate) fn offset(&self) -> i64 {
        self.offset
    }

    /// Timestamp in milliseconds since the epoch, when the record has one.
    pub(crate) fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// Key bytes.
    pub(crate) fn key(&self) -> Option<&[u8]> {
        self.key_len.map(|len| &self.bytes[..len])
    }

    /// Payload bytes.
    pub(crate) fn payload(&self) -> Option<&[u8]> {
        self.has_payload.then(|| &self.bytes[self.key_len.unwrap_or(0)..])
    }

    /// The record's headers, in order.
    pub(crate) fn headers(&self) -> Vec<(String, Vec<u8>)> {
        use rdkafka::message::Headers as _;
        self.headers
            .as_ref()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::Message;

    #[test]
    fn key_and_payload_share_one_buffer() {
        let message = Message::new(7, Some(1), Some(b"key"), Some(b"value"), None);
        assert_eq!(message.key(), Some(&b"key"[..]));
        assert_eq!(message.payload(), Some(&b"value"[..]));
        assert_eq!((message.offset(), message.timestamp()), (7, Some(1)));

        let bare = Message::new(0, None, None, Some(b""), None);
        assert_eq!((bare.key(), bare.payload()), (None, Some(&b""[..])));
        assert!(bare.headers().is_empty());
        let tombstone = Message::new(0, None, Some(b""), None, None);
        assert_eq!((tombstone.key(), tombstone.payload()), (Some(&b""[..]), None));
    }
}

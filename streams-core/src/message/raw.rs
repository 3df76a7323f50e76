//! Records taken from librdkafka a batch at a time (`rd_kafka_consume_batch_queue`).
//!
//! rust-rdkafka's consumers hand records over one poll at a time: each poll reads the clock
//! several times, wraps the record in an event and allocates a handle for it — per record,
//! most of the poll thread's cost (BENCHMARKS.md). A batch read takes every record a queue
//! holds under one call. A record so taken is ours: [`RawMessage`] reads it in place and
//! destroys it when dropped.

use std::ffi::CStr;
use std::ptr::NonNull;

use rdkafka::bindings as rd;

/// A record (or a consumer error) taken from a librdkafka queue, freed when dropped.
pub(crate) struct RawMessage(NonNull<rd::rd_kafka_message_t>);

// SAFETY: a message taken from a queue belongs to whoever holds the pointer: librdkafka reads
// and destroys it from any thread. `RawMessage` is not `Sync` (reading its headers parses
// them into the message).
unsafe impl Send for RawMessage {}

impl RawMessage {
    /// Takes a message from a batch read over (`None` for a null pointer).
    ///
    /// # Safety
    /// `message` is null or a message librdkafka handed over, owned by the caller, and not
    /// destroyed elsewhere; its client outlives it.
    pub(crate) unsafe fn from_ptr(message: *mut rd::rd_kafka_message_t) -> Option<Self> {
        NonNull::new(message).map(Self)
    }

    fn raw(&self) -> &rd::rd_kafka_message_t {
        // SAFETY: the pointer is valid while `self` lives (`from_ptr`).
        unsafe { self.0.as_ref() }
    }

    /// The consumer error this message stands for, if it is one (a partition's end when
    /// `enable.partition.eof` is on, a fetch error); `None` for a record.
    pub(crate) fn error(&self) -> Option<rdkafka::error::RDKafkaErrorCode> {
        let err = self.raw().err;
        (err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR).then(|| err.into())
    }

    /// The record's topic ("" if librdkafka gave none).
    pub(crate) fn topic(&self) -> &str {
        std::str::from_utf8(self.topic_bytes()).unwrap_or("")
    }

    /// The address of the record's topic handle: the records of one topic from one client
    /// share it (while one of them lives, no other topic's handle has it). Compared only,
    /// never read through.
    pub(crate) fn topic_address(&self) -> usize {
        self.raw().rkt as usize
    }

    /// The record's topic's name as bytes, unchecked as text: to compare with a known
    /// name (the check is a good part of a record's hand-over).
    pub(crate) fn topic_bytes(&self) -> &[u8] {
        let rkt = self.raw().rkt;
        if rkt.is_null() {
            return b"";
        }
        // SAFETY: a message's topic handle lives as long as the message; its name is a
        // NUL-terminated string owned by the handle.
        let name = unsafe { rd::rd_kafka_topic_name(rkt) };
        if name.is_null() {
            return b"";
        }
        // SAFETY: see above.
        unsafe { CStr::from_ptr(name) }.to_bytes()
    }

    /// The record's partition.
    pub(crate) fn partition(&self) -> i32 {
        self.raw().partition
    }

    /// The record's offset.
    pub(crate) fn offset(&self) -> i64 {
        self.raw().offset
    }

    /// Timestamp in milliseconds since the epoch, when the record has one.
    pub(crate) fn timestamp(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a valid message and a place for its type.
        let millis = unsafe { rd::rd_kafka_message_timestamp(self.0.as_ptr(), &mut kind) };
        (kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && millis != -1).then_some(millis)
    }

    /// Key bytes.
    pub(crate) fn key(&self) -> Option<&[u8]> {
        let raw = self.raw();
        // SAFETY: librdkafka's key pointer and length describe bytes the message owns.
        (!raw.key.is_null()).then(|| unsafe { std::slice::from_raw_parts(raw.key.cast::<u8>(), raw.key_len) })
    }

    /// Payload bytes (for a consumer error: its text).
    pub(crate) fn payload(&self) -> Option<&[u8]> {
        let raw = self.raw();
        // SAFETY: as for the key.
        (!raw.payload.is_null()).then(|| unsafe { std::slice::from_raw_parts(raw.payload.cast::<u8>(), raw.len) })
    }

    /// What a consumer error says, for messages.
    pub(crate) fn error_text(&self) -> String {
        match self.error() {
            Some(code) => {
                let detail = self.payload().map(String::from_utf8_lossy).unwrap_or_default();
                if detail.is_empty() {
                    code.to_string()
                } else {
                    format!("{code}: {detail}")
                }
            }
            None => String::new(),
        }
    }

    /// The record's headers, in order, a name that is not UTF-8 read lossily (for
    /// dead letters).
    pub(crate) fn headers_lossy(&self) -> Vec<(std::borrow::Cow<'_, str>, &[u8])> {
        let mut all = Vec::new();
        self.each_header(|name, value| all.push((name.to_string_lossy(), value)));
        all
    }

    /// The record's headers with UTF-8 names, in order (the library's own records' headers
    /// all are).
    pub(crate) fn headers(&self) -> smallvec::SmallVec<[(&str, &[u8]); 2]> {
        let mut all = smallvec::SmallVec::new();
        self.each_header(|name, value| {
            if let Ok(name) = name.to_str() {
                all.push((name, value));
            }
        });
        all
    }

    /// Calls `each` with every header, in order. Parses them on the first call (librdkafka
    /// keeps them in the message).
    fn each_header<'a>(&'a self, mut each: impl FnMut(&'a CStr, &'a [u8])) {
        let mut headers: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
        // SAFETY: a valid message; the headers stay owned by it.
        let err = unsafe { rd::rd_kafka_message_headers(self.0.as_ptr(), &mut headers) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
            return;
        }
        for index in 0.. {
            let mut name: *const std::ffi::c_char = std::ptr::null();
            let mut value: *const std::ffi::c_void = std::ptr::null();
            let mut size = 0usize;
            // SAFETY: valid headers and places for one header's parts.
            let err = unsafe { rd::rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut size) };
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                break;
            }
            // SAFETY: the name is NUL-terminated and the value `size` bytes, both owned by
            // the message's headers, which live as long as the message.
            let name = unsafe { CStr::from_ptr(name) };
            let value = if value.is_null() {
                &[][..]
            } else {
                // SAFETY: see above.
                unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }
            };
            each(name, value);
        }
    }
}

impl Drop for RawMessage {
    fn drop(&mut self) {
        // SAFETY: ours to destroy, once (`from_ptr`).
        unsafe { rd::rd_kafka_message_destroy(self.0.as_ptr()) }
    }
}

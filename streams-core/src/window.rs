//! Windows of event time: what a windowed aggregation groups records into, and the key of
//! a windowed table (a key in a window). Times are milliseconds since the epoch.
//!
//! - [`TimeWindows`]: fixed-size windows, tumbling (`TimeWindows::of(size)`) or hopping
//!   (`.advance_by(advance)`), `[start, end)`: a record at exactly `end` is in the next one.
//! - [`SlidingWindows`]: a window per distinct set of records no more than a time difference
//!   apart (Kafka Streams' `SlidingWindows`), `[start, end]`, both ends inclusive.
//! - [`SessionWindows`]: per key, records no more than an inactivity gap apart form a
//!   session `[first record, last record]`; a record that bridges two sessions merges them.
//!
//! Each has a grace period: a window closes once stream time (the largest event time the
//! task has processed) passes its end by the grace period; records for a closed window are
//! late and dropped (counted, logged at debug, and sent on where the pipeline says).

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec::Key;
use crate::{DecodeError, EncodeError};

/// A window of time: `start` and `end` in milliseconds since the epoch. Time windows hold
/// `[start, end)`; sliding windows and sessions `[start, end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    /// Start (ms, inclusive).
    pub start: i64,
    /// End (ms; exclusive for time windows, inclusive for sliding windows and sessions).
    pub end: i64,
}

impl Window {
    /// The window `[start, end)`.
    pub const fn new(start: i64, end: i64) -> Self {
        Self { start, end }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// A key in a window: the key of a windowed table, and of a windowed aggregation's results.
///
/// As a record key (or a table key) it is the key's bytes followed by the window's start and
/// end (8 bytes each, big-endian), so a table's windows of one key are stored together, in
/// order of their start.
///
/// ```
/// use streams_core::window::{Window, Windowed};
/// use streams_core::Key;
///
/// let key = Windowed::new("ann".to_string(), Window::new(60_000, 120_000));
/// let bytes = key.encode_key().unwrap();
/// assert_eq!(bytes.len(), 3 + 16);
/// assert_eq!(Windowed::<String>::decode_key(Some(&bytes)).unwrap(), key);
/// assert_eq!(Windowed::<String>::display_key(&bytes), "ann@60000..120000");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Windowed<K> {
    /// The key.
    pub key: K,
    /// The window.
    pub window: Window,
}

impl<K> Windowed<K> {
    /// `key` in `window`.
    pub const fn new(key: K, window: Window) -> Self {
        Self { key, window }
    }
}

/// A window key made to be looked up, on the stack when it is short.
pub(crate) type WindowKeyBuffer = smallvec::SmallVec<[u8; 64]>;

/// The bytes of `key` (already encoded) in `window`.
pub(crate) fn window_key(key: &[u8], window: Window) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(key.len() + 16);
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&window_times(window));
    bytes
}

/// [`window_key`] in a [`WindowKeyBuffer`]: no allocation for a key of up to 48 bytes.
pub(crate) fn window_key_buffer(key: &[u8], window: Window) -> WindowKeyBuffer {
    let len = key.len() + 16;
    let mut buffer = [0u8; 64];
    let Some(at) = buffer.get_mut(..len) else {
        return WindowKeyBuffer::from_vec(window_key(key, window));
    };
    // Written into an array in two copies (pushed onto a `SmallVec` a slice at a time, a
    // key cost about three times as much).
    let (front, times) = at.split_at_mut(key.len());
    front.copy_from_slice(key);
    times.copy_from_slice(&window_times(window));
    WindowKeyBuffer::from_buf_and_len(buffer, len)
}

/// A window's start and end as they end its key (big-endian).
fn window_times(window: Window) -> [u8; 16] {
    let mut times = [0u8; 16];
    times[..8].copy_from_slice(&window.start.to_be_bytes());
    times[8..].copy_from_slice(&window.end.to_be_bytes());
    times
}

/// A windowed key's bytes split into the key's bytes and its window.
pub(crate) fn split_window_key(bytes: &[u8]) -> Option<(&[u8], Window)> {
    let at = bytes.len().checked_sub(16)?;
    let (key, times) = bytes.split_at(at);
    let start = i64::from_be_bytes(times[..8].try_into().ok()?);
    let end = i64::from_be_bytes(times[8..].try_into().ok()?);
    Some((key, Window { start, end }))
}

impl<K: Key> Key for Windowed<K> {
    fn encode_key(&self) -> Option<Vec<u8>> {
        self.try_encode_key().ok().flatten()
    }
    fn try_encode_key(&self) -> Result<Option<Vec<u8>>, EncodeError> {
        let key = self.key.key_bytes()?;
        Ok(Some(window_key(&key, self.window)))
    }
    fn key_bytes(&self) -> Result<Cow<'_, [u8]>, EncodeError> {
        let key = self.key.key_bytes()?;
        Ok(Cow::Owned(window_key(&key, self.window)))
    }
    fn decode_key(bytes: Option<&[u8]>) -> Result<Self, DecodeError> {
        let bytes = bytes.ok_or_else(|| DecodeError::new("a windowed key is missing"))?;
        let (key, window) = split_window_key(bytes)
            .ok_or_else(|| DecodeError::new("a windowed key is shorter than its window (16 bytes)"))?;
        Ok(Self {
            key: K::decode_key(Some(key))?,
            window,
        })
    }
    fn display_key(bytes: &[u8]) -> String {
        match split_window_key(bytes) {
            Some((key, window)) => format!("{}@{window}", K::display_key(key)),
            None => String::from_utf8_lossy(bytes).into_owned(),
        }
    }
    fn parse_key(text: &str) -> Result<Self, DecodeError> {
        Err(DecodeError::new(format!(
            "`{text}`: windowed keys are made by windowed aggregations, not typed"
        )))
    }
}

/// How long windows stay in their table unless told otherwise: a day (Kafka Streams' default
/// retention), so lookups of windows closed today still find them.
pub const DEFAULT_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Fixed-size windows: tumbling (`TimeWindows::of(size)`: each record in exactly one) or
/// hopping (`.advance_by(advance)`: windows every `advance`, overlapping when it is smaller
/// than the size). Windows are `[start, end)` and start at multiples of the advance from
/// the epoch (windows that would start before the epoch are left out).
///
/// ```
/// use std::time::Duration;
/// use streams_core::window::{TimeWindows, Window};
///
/// let minutes = TimeWindows::of(Duration::from_secs(60)).grace(Duration::from_secs(10));
/// assert_eq!(minutes.windows_for(125_000), vec![Window::new(120_000, 180_000)]);
/// assert_eq!(minutes.windows_for(120_000), vec![Window::new(120_000, 180_000)], "the end is the next window's");
///
/// let hopping = TimeWindows::of(Duration::from_secs(60)).advance_by(Duration::from_secs(20));
/// assert_eq!(
///     hopping.windows_for(65_000),
///     vec![Window::new(20_000, 80_000), Window::new(40_000, 100_000), Window::new(60_000, 120_000)]
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindows {
    pub(crate) size: i64,
    pub(crate) advance: i64,
    pub(crate) grace: i64,
    pub(crate) retention: Option<i64>,
}

impl TimeWindows {
    /// Tumbling windows of `size`, no grace period.
    pub fn of(size: Duration) -> Self {
        let size = millis(size);
        Self {
            size,
            advance: size,
            grace: 0,
            retention: None,
        }
    }

    /// Hopping windows: one every `advance` (at most the size).
    pub fn advance_by(mut self, advance: Duration) -> Self {
        self.advance = millis(advance);
        self
    }

    /// How long after a window's end its records are still taken (default: none).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = millis(grace);
        self
    }

    /// How long windows are kept in their table, from their start, for lookups after they
    /// close (default: a day, or size + grace when that is longer, as Kafka Streams keeps
    /// them; minimum: size + grace, when they close). Shorter keeps the store smaller.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = Some(millis(retention));
        self
    }

    /// The windows a record at `time` belongs to, earliest first.
    pub fn windows_for(&self, time: i64) -> Vec<Window> {
        let mut windows = Vec::with_capacity(usize::try_from(self.size / self.advance.max(1)).unwrap_or(1));
        self.each_window(time, |window| windows.push(window));
        windows
    }

    pub(crate) fn each_window(&self, time: i64, mut visit: impl FnMut(Window)) {
        if self.advance <= 0 || self.size <= 0 || time < 0 {
            return;
        }
        let first = (time - self.size + self.advance).max(0);
        let mut start = first - first % self.advance;
        while start <= time {
            if start + self.size > time {
                visit(Window::new(start, start + self.size));
            }
            start += self.advance;
        }
    }

    /// What is wrong with these windows, if anything.
    pub(crate) fn check(&self) -> Option<String> {
        if self.size <= 0 {
            return Some("time windows need a size of at least 1 ms".into());
        }
        if self.advance <= 0 || self.advance > self.size {
            return Some(format!(
                "a hopping window's advance ({} ms) must be more than 0 and at most its size ({} ms)",
                self.advance, self.size
            ));
        }
        match self.retention {
            Some(retention) if retention < self.size + self.grace => Some(format!(
                "windows kept {retention} ms are gone before they close: keep them at least size + grace ({} ms)",
                self.size + self.grace
            )),
            _ => None,
        }
    }

    /// How long a window is kept from its start.
    pub(crate) fn retention_ms(&self) -> i64 {
        self.retention
            .unwrap_or((self.size + self.grace).max(DEFAULT_RETENTION_MS))
    }
}

/// Sliding windows (Kafka Streams' `SlidingWindows`): windows of a fixed time difference
/// `[start, start + difference]` (both ends inclusive), one for each distinct set of records
/// of a key that fit in one — a window ending at each record (records before `difference`
/// share `[0, difference]`), and one starting just after it when later records fall in it.
/// Each result is the aggregate of exactly the records in its window.
///
/// ```
/// use std::time::Duration;
/// use streams_core::window::SlidingWindows;
///
/// let five_minutes = SlidingWindows::with_time_difference(Duration::from_secs(300)).grace(Duration::from_secs(30));
/// # let _ = five_minutes;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindows {
    pub(crate) difference: i64,
    pub(crate) grace: i64,
}

impl SlidingWindows {
    /// Windows of records at most `difference` apart, no grace period.
    pub fn with_time_difference(difference: Duration) -> Self {
        Self {
            difference: millis(difference),
            grace: 0,
        }
    }

    /// How long after a window's end its records are still taken (default: none).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = millis(grace);
        self
    }

    pub(crate) fn check(&self) -> Option<String> {
        (self.difference <= 0).then(|| "sliding windows need a time difference of at least 1 ms".to_string())
    }
}

/// Session windows: per key, records at most `gap` apart form one session, from its first
/// record to its last (`[start, end]`, both inclusive); a record that falls between two
/// sessions within the gap of both merges them into one.
///
/// ```
/// use std::time::Duration;
/// use streams_core::window::SessionWindows;
///
/// let sessions = SessionWindows::with_inactivity_gap(Duration::from_secs(30)).grace(Duration::from_secs(10));
/// # let _ = sessions;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionWindows {
    pub(crate) gap: i64,
    pub(crate) grace: i64,
    pub(crate) retention: Option<i64>,
}

impl SessionWindows {
    /// Sessions that end after `gap` without records, no grace period.
    pub fn with_inactivity_gap(gap: Duration) -> Self {
        Self {
            gap: millis(gap),
            grace: 0,
            retention: None,
        }
    }

    /// How long after a session closes to new records by its gap its records are still
    /// taken (default: none).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = millis(grace);
        self
    }

    /// How long sessions are kept in their table after their end, for lookups after they
    /// close (default: a day, or gap + grace when that is longer; minimum: gap + grace, when
    /// they close). Shorter keeps the store smaller.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = Some(millis(retention));
        self
    }

    pub(crate) fn check(&self) -> Option<String> {
        if self.gap <= 0 {
            return Some("session windows need an inactivity gap of at least 1 ms".into());
        }
        match self.retention {
            Some(retention) if retention < self.gap + self.grace => Some(format!(
                "sessions kept {retention} ms are gone before they close: keep them at least gap + grace ({} ms)",
                self.gap + self.grace
            )),
            _ => None,
        }
    }

    pub(crate) fn retention_ms(&self) -> i64 {
        self.retention
            .unwrap_or((self.gap + self.grace).max(DEFAULT_RETENTION_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_windows_hold_their_start_not_their_end() {
        let w = TimeWindows::of(Duration::from_millis(10));
        assert_eq!(w.windows_for(0), vec![Window::new(0, 10)]);
        assert_eq!(w.windows_for(9), vec![Window::new(0, 10)]);
        assert_eq!(w.windows_for(10), vec![Window::new(10, 20)]);
        assert!(w.windows_for(-1).is_empty());
    }

    #[test]
    fn hopping_windows_start_at_multiples_of_the_advance_and_not_before_the_epoch() {
        let w = TimeWindows::of(Duration::from_millis(10)).advance_by(Duration::from_millis(3));
        assert_eq!(
            w.windows_for(4),
            vec![Window::new(0, 10), Window::new(3, 13)],
            "windows starting before 0 are left out"
        );
        assert_eq!(
            w.windows_for(12),
            vec![
                Window::new(3, 13),
                Window::new(6, 16),
                Window::new(9, 19),
                Window::new(12, 22)
            ]
        );
        for time in 0..100 {
            for window in w.windows_for(time) {
                assert!(window.start <= time && time < window.end && window.start % 3 == 0);
            }
            let all = (0..=time).step_by(3).filter(|s| s + 10 > time).count();
            assert_eq!(w.windows_for(time).len(), all, "at {time}");
        }
    }

    #[test]
    fn bad_windows_are_named() {
        assert!(TimeWindows::of(Duration::ZERO).check().is_some());
        let w = TimeWindows::of(Duration::from_secs(1)).advance_by(Duration::from_secs(2));
        assert!(w.check().is_some_and(|e| e.contains("advance")));
        let w = TimeWindows::of(Duration::from_secs(60))
            .grace(Duration::from_secs(10))
            .retention(Duration::from_secs(30));
        assert!(w.check().is_some_and(|e| e.contains("70000")));
        assert!(SessionWindows::with_inactivity_gap(Duration::ZERO).check().is_some());
        assert!(SlidingWindows::with_time_difference(Duration::ZERO).check().is_some());
    }

    #[test]
    fn windowed_keys_split_after_their_key() {
        let bytes = window_key(b"k", Window::new(1, 2));
        assert_eq!(split_window_key(&bytes), Some((&b"k"[..], Window::new(1, 2))));
        assert_eq!(split_window_key(b"short"), None);
        assert!(Windowed::<String>::decode_key(Some(b"short")).is_err());
    }

    #[test]
    fn windowed_keys_of_each_length_are_made_alike_on_the_stack_and_on_the_heap() {
        // Up to 48 key bytes a looked-up key is made on the stack, past them on the heap.
        for len in 0..=200 {
            let key = vec![b'x'; len];
            let window = Window::new(-5, i64::MAX);
            let bytes = window_key(&key, window);
            assert_eq!(bytes.len(), len + 16);
            let buffer = window_key_buffer(&key, window);
            assert_eq!(buffer.spilled(), len > 48, "key of {len} bytes");
            assert_eq!(&buffer[..], &bytes[..]);
            assert_eq!(split_window_key(&bytes), Some((&key[..], window)));
        }
    }
}

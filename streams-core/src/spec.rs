//! What the runtime knows of declarations, without their types: names, partition counts,
//! type names, and the functions that check and show their bytes. Topics and tables make
//! these from their typed constants; agents, pipelines, the worker and the test driver work
//! with them.

use crate::DecodeError;

/// What the runtime needs to know of a topic, without its types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name.
    pub name: std::borrow::Cow<'static, str>,
    /// Declared partition count; `None` takes the existing count or the app's default.
    pub partitions: Option<i32>,
    /// Whether the app owns the topic (internal topics are the app's own intermediate data).
    pub internal: bool,
    /// A topic whose partition count this one takes when it has to be created (a
    /// repartition topic takes its pipeline's source's).
    pub partitions_of: Option<std::borrow::Cow<'static, str>>,
    /// Name of the key type.
    pub key_type: &'static str,
    /// Name of the value type.
    pub value_type: &'static str,
    /// How values are encoded (`json`, `utf-8`, `bytes`, or a codec's own name).
    pub value_format: &'static str,
    /// The topic's key and value types at work on bytes (for the command line).
    pub codecs: TopicCodecs,
}

/// Whether some bytes are a value of a topic's type.
pub(crate) type ValueCheck = std::sync::Arc<dyn Fn(&[u8]) -> Result<(), DecodeError> + Send + Sync>;

/// A topic's key and value types at work on bytes, without the types: checks what the
/// command line sends, and shows what it reads.
#[derive(Clone)]
pub struct TopicCodecs {
    pub(crate) check_key: fn(Option<&[u8]>) -> Result<(), DecodeError>,
    pub(crate) check_value: ValueCheck,
    pub(crate) parse_key: fn(&str) -> Result<Option<Vec<u8>>, String>,
    pub(crate) show_key: fn(&[u8]) -> String,
    /// The event time the topic's extractor takes from a value's bytes (`None`: the topic
    /// has no extractor; the record's timestamp is its time). A task with several sources
    /// takes their records in this order.
    pub(crate) event_time: Option<EventTimeOf>,
}

/// The event time of a value's bytes, by a topic's extractor (`None` when it does not decode).
pub(crate) type EventTimeOf = std::sync::Arc<dyn Fn(&[u8]) -> Option<i64> + Send + Sync>;

impl TopicCodecs {
    /// Whether `key` is a key of the topic's key type.
    pub fn check_key(&self, key: Option<&[u8]>) -> Result<(), DecodeError> {
        (self.check_key)(key)
    }

    /// Whether `value` is a value of the topic's value type.
    pub fn check_value(&self, value: &[u8]) -> Result<(), DecodeError> {
        (self.check_value)(value)
    }

    /// The key bytes of a key given as text (see [`crate::Key::parse_key`]).
    pub fn parse_key(&self, text: &str) -> Result<Option<Vec<u8>>, String> {
        (self.parse_key)(text)
    }

    /// Key bytes as readable text.
    pub fn show_key(&self, key: &[u8]) -> String {
        (self.show_key)(key)
    }
}

impl std::fmt::Debug for TopicCodecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TopicCodecs")
    }
}

/// Codecs follow from the types, which [`TopicSpec`] compares by name.
impl PartialEq for TopicCodecs {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for TopicCodecs {}

/// What the runtime needs to know of a table, without its types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// The table's name.
    pub name: &'static str,
    /// Name of the key type.
    pub key_type: &'static str,
    /// Name of the value type.
    pub value_type: &'static str,
    /// Key bytes as readable text (for `table` and `tail`).
    pub show_key: KeyDisplay,
    /// Whether its keys are in Faust's form ([`crate::Table::faust`]).
    pub faust: bool,
    /// Whether it keeps windows of each key ([`crate::WindowedTable`]): a lookup of a key
    /// gives its windows.
    pub windowed: bool,
    /// How a key given as text is looked up; `None` for tables kept by an operation for
    /// itself (a join's buffers), which are not looked up.
    pub lookup: Option<KeyLookup>,
    /// Whether the operation that keeps it has a stream time of its own (a windowed
    /// aggregation, a stream–stream join's buffers), kept with the task's state.
    pub keeps_time: bool,
    /// Entries not updated for this long are deleted ([`crate::Table::ttl`]).
    pub ttl: Option<Ttl>,
}

/// The [`TableSpec::value_type`] of a versioned table's history (`{store}-versions`).
pub(crate) const HISTORY_VALUE_TYPE: &str = "versions";

/// How long a table's entries live without an update ([`crate::Table::ttl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl {
    /// Milliseconds since the entry's last update after which it is deleted.
    pub after_ms: i64,
    /// Measured on the wall clock (the time of the commit point that took the update)
    /// rather than stream time (the event time of the record that made it).
    pub wall_clock: bool,
}

/// A name made at run time that lives as long as the program (table names are `&'static
/// str`): each distinct name is allocated once, however often it is made.
pub(crate) fn static_name(name: String) -> &'static str {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = names.iter().find(|n| **n == name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.push(leaked);
    leaked
}

impl Ttl {
    /// A TTL of `after`, in ms (saturating: `Duration::MAX` is as good as forever).
    pub(crate) const fn of(after: std::time::Duration, wall_clock: bool) -> Self {
        let ms = after.as_millis();
        let after_ms = if ms > i64::MAX as u128 { i64::MAX } else { ms as i64 };
        Self { after_ms, wall_clock }
    }
}

impl TableSpec {
    /// The name of the table that keeps the times of a TTL table's entries.
    pub fn ttl_table_name(&self) -> String {
        format!("{}-ttl", self.name)
    }
}

/// A table key given as text (as `APP send --key` takes it) to its bytes twice: as records
/// carry it (its partition follows from these, see [`crate::partitioner`]) and as the store
/// keeps it (the same, but for [`crate::Table::faust`] tables).
#[derive(Clone, Copy)]
pub struct KeyLookup(pub LookupFn);

/// A key as text to its record bytes and its store bytes, or why it is not a key.
pub type LookupFn = fn(&str) -> Result<(Vec<u8>, Vec<u8>), String>;

impl std::fmt::Debug for KeyLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyLookup")
    }
}

impl PartialEq for KeyLookup {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for KeyLookup {}

/// [`KeyLookup`] of a key type whose store keys are its record keys.
pub(crate) fn lookup_key<K: crate::codec::Key>(text: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let key = K::parse_key(text).map_err(|e| e.to_string())?;
    match key.try_encode_key() {
        Ok(Some(bytes)) => Ok((bytes.clone(), bytes)),
        Ok(None) => Err("the table's keys are empty (its key type is `()`)".into()),
        Err(error) => Err(error.to_string()),
    }
}

/// Key bytes as readable text (compared by nothing: it follows from the key type).
#[derive(Clone, Copy)]
pub struct KeyDisplay(pub fn(&[u8]) -> String);

impl std::fmt::Debug for KeyDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyDisplay")
    }
}

impl PartialEq for KeyDisplay {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for KeyDisplay {}

impl TableSpec {
    /// The changelog topic of this table in the app `app_id`.
    pub fn changelog_topic(&self, app_id: &str) -> String {
        format!("{app_id}-{}-changelog", self.name)
    }
}

/// Turns a record of a global table's topic (key and value bytes) into the store's entry:
/// key bytes and value (`None`: deleted); an error for a record that does not decode.
pub(crate) type GlobalEntry =
    std::sync::Arc<dyn Fn(Option<&[u8]>, Option<&[u8]>) -> Result<(Vec<u8>, Option<Vec<u8>>), String> + Send + Sync>;

/// What the runtime needs to know of a global table: its store, the topic it copies, and
/// how a record of that topic becomes an entry of the store.
#[derive(Clone)]
pub struct GlobalTableSpec {
    /// The table (its store's name and types).
    pub table: TableSpec,
    /// The topic it is a copy of.
    pub topic: TopicSpec,
    /// Where records of the topic that do not decode go.
    pub dead_letter_topic: String,
    /// What becomes of a record of the topic that does not decode
    /// (`App::on_deserialization_error`).
    pub on_deserialization_error: crate::error::OnError,
    pub(crate) entry: GlobalEntry,
}

impl std::fmt::Debug for GlobalTableSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalTableSpec")
            .field("table", &self.table)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// A topic the app needs, with the partition count it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTopic {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Whether it is a compacted changelog.
    pub compacted: bool,
    /// Whether it exists already.
    pub exists: bool,
}

//! Tables: keyed state, partitioned like the stream that updates them, kept in a store per
//! partition and backed by a changelog topic.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{json, AsKey, Key};
pub use crate::spec::{GlobalTableSpec, TableSpec};
use crate::task::tables as task;
use crate::window::{Window, Windowed};
use crate::{Error, Result};

/// A table from `K` to `V`, in the spirit of Faust's `app.Table` and Kafka Streams'
/// `KTable`: each partition of the table lives in a RocksDB store of the worker that owns
/// the same partition of the agent's input, and every change is written to the changelog
/// topic `{app}-{table}-changelog`, from which the store is restored on another worker.
///
/// Missing keys read as the table's default (`V::default()` unless set with
/// [`Table::default_value`]), like Faust's `default=int`.
///
/// ```
/// use streams_core::prelude::*;
///
/// const MAJOR_COUNT: Table<String, i64> = Table::new("major-count");
/// const LAST_SEEN: Table<String, f64> = Table::new("last-seen").default_value(|| -1.0);
///
/// assert_eq!(MAJOR_COUNT.spec().changelog_topic("hit_counter"), "hit_counter-major-count-changelog");
/// assert_eq!(LAST_SEEN.default(), -1.0);
/// ```
///
/// Inside an agent that names it in `#[agent(tables = [MAJOR_COUNT])]`:
///
/// ```ignore
/// MAJOR_COUNT.update(&user_id, |n| *n += 1).await?;
/// let n = MAJOR_COUNT.get(&user_id).await?;
/// ```
pub struct Table<K, V> {
    name: &'static str,
    default: fn() -> V,
    faust: Option<FaustKeys<K>>,
    ttl: Option<crate::spec::Ttl>,
    _key: PhantomData<fn() -> K>,
}

/// How a table declared with [`Table::faust`] keeps its keys: in Faust's form (JSON), in
/// its store and its changelog alike, so that either app restores from the other's.
struct FaustKeys<K> {
    /// A key's bytes here to Faust's form.
    encode: fn(&[u8]) -> std::result::Result<Vec<u8>, crate::EncodeError>,
    /// A key from Faust's form.
    decode: fn(&[u8]) -> std::result::Result<K, crate::DecodeError>,
    /// Faust's form as readable text.
    show: fn(&[u8]) -> String,
    /// A key as text to its record bytes and Faust's form.
    lookup: crate::spec::LookupFn,
}

impl<K> Clone for FaustKeys<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K> Copy for FaustKeys<K> {}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Table<K, V> {}

/// A value type a table can give missing keys by itself: any type with `Default`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no `Default`: a table reads missing keys as a default value",
    note = "derive or implement `Default` for `{Self}`, or declare the table with its default: \
            `Table::with_default(\"name\", || ...)`"
)]
pub trait TableDefault: Sized {
    /// The value of a missing key.
    fn table_default() -> Self;
}

impl<T: Default> TableDefault for T {
    fn table_default() -> Self {
        T::default()
    }
}

impl<K, V: TableDefault> Table<K, V> {
    /// A table whose missing keys read as `V::default()`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            default: V::table_default,
            faust: None,
            ttl: None,
            _key: PhantomData,
        }
    }
}

impl<K, V> Table<K, V> {
    /// A table whose missing keys read as `default()` (for values without `Default`).
    ///
    /// ```
    /// # use streams_core::prelude::*;
    /// struct Range { low: f64, high: f64 }
    /// const RANGES: Table<String, Range> = Table::with_default("ranges", || Range { low: f64::MAX, high: f64::MIN });
    /// assert_eq!(RANGES.default().low, f64::MAX);
    /// ```
    pub const fn with_default(name: &'static str, default: fn() -> V) -> Self {
        Self {
            name,
            default,
            faust: None,
            ttl: None,
            _key: PhantomData,
        }
    }

    /// Sets the value that missing keys read as.
    pub const fn default_value(mut self, default: fn() -> V) -> Self {
        self.default = default;
        self
    }

    /// The table's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Deletes entries not updated for `after` of stream time: at each commit point, a key
    /// whose last update was made by records at least `after` older than the task's stream
    /// time (the latest of their times: a late record does not age a key) is deleted, with a tombstone in the changelog (and downstream, for a pipeline's
    /// table sent on with `to`). The times live in a table of their own
    /// (`{name}-ttl`, with its changelog), so they survive restarts and moves.
    ///
    /// ```
    /// # use streams_core::prelude::*;
    /// use std::time::Duration;
    /// const SESSIONS: Table<String, i64> = Table::new("sessions").ttl(Duration::from_secs(30 * 60));
    /// assert_eq!(SESSIONS.spec().ttl.map(|ttl| ttl.after_ms), Some(1_800_000));
    /// ```
    pub const fn ttl(mut self, after: std::time::Duration) -> Self {
        self.ttl = Some(crate::spec::Ttl::of(after, false));
        self
    }

    /// Like [`Table::ttl`], on the wall clock: an entry is deleted at the first commit point
    /// `after` past the commit point that took its last update. A partition without input
    /// makes no commit points: its entries go at its next record.
    pub const fn ttl_on_wall_clock(mut self, after: std::time::Duration) -> Self {
        self.ttl = Some(crate::spec::Ttl::of(after, true));
        self
    }

    /// The value a missing key reads as.
    pub fn default(&self) -> V {
        (self.default)()
    }

    /// The untyped description the runtime works with.
    pub fn spec(&self) -> TableSpec
    where
        K: Key,
    {
        TableSpec {
            name: self.name,
            key_type: std::any::type_name::<K>(),
            value_type: std::any::type_name::<V>(),
            show_key: crate::spec::KeyDisplay(match &self.faust {
                Some(faust) => faust.show,
                None => K::display_key,
            }),
            faust: self.faust.is_some(),
            windowed: false,
            lookup: Some(crate::spec::KeyLookup(match &self.faust {
                Some(faust) => faust.lookup,
                None => crate::spec::lookup_key::<K>,
            })),
            keeps_time: false,
            ttl: self.ttl,
        }
    }

    /// Whether the table keeps its keys in Faust's form ([`Table::faust`]).
    pub const fn is_faust(&self) -> bool {
        self.faust.is_some()
    }
}

impl<K: Key + Serialize + DeserializeOwned, V> Table<K, V> {
    /// Keeps the table in Faust's changelog encoding: keys as JSON (`"u1"`), values as JSON
    /// (as always), so that this app restores the table from the changelog of the Faust app
    /// it takes over from (same app id, same table name: `{app}-{table}-changelog`) and a
    /// Faust worker restores from the changes this app made. See [`crate::faust`].
    ///
    /// ```
    /// use streams_core::prelude::*;
    ///
    /// // Faust: app.Table("major-count", key_type=str, value_type=int, default=int)
    /// const MAJOR_COUNT: Table<String, i64> = Table::new("major-count").faust();
    /// assert!(MAJOR_COUNT.is_faust());
    /// // Shown as the key it is: `table major-count` prints `u1`, not `"u1"`.
    /// assert_eq!((MAJOR_COUNT.spec().show_key.0)(br#""u1""#), "u1");
    /// ```
    pub const fn faust(mut self) -> Self {
        self.faust = Some(FaustKeys {
            encode: crate::faust::table_key::<K>,
            decode: crate::faust::decode_table_key::<K>,
            show: crate::faust::show_table_key::<K>,
            lookup: faust_lookup::<K>,
        });
        self
    }
}

/// A key as text to its record bytes and its Faust form (see [`Table::faust`]).
fn faust_lookup<K: Key + Serialize>(text: &str) -> std::result::Result<(Vec<u8>, Vec<u8>), String> {
    let (native, _) = crate::spec::lookup_key::<K>(text)?;
    let faust = crate::faust::table_key::<K>(&native).map_err(|e| e.to_string())?;
    Ok((native, faust))
}

impl<K: Key, V: Serialize + DeserializeOwned + Send + 'static> Table<K, V> {
    pub(crate) fn decode(&self, bytes: Option<&[u8]>) -> Result<V> {
        match bytes {
            None => Ok(self.default()),
            Some(bytes) => json::decode(bytes).map_err(|source| Error::Decode {
                what: format!("a value of table `{}`", self.name),
                source,
            }),
        }
    }

    pub(crate) fn encode(&self, value: &V) -> Result<Vec<u8>> {
        crate::codec::json::encode(value).map_err(|source| Error::Encode {
            what: format!("table `{}`", self.name),
            source: source.into(),
        })
    }

    fn key<'k, Q: AsKey<K> + ?Sized>(&self, key: &'k Q) -> Result<std::borrow::Cow<'k, [u8]>> {
        let encoded = match key.as_key_bytes() {
            Ok(native) => match &self.faust {
                None => Ok(native),
                Some(faust) => (faust.encode)(&native).map(std::borrow::Cow::Owned),
            },
            Err(source) => Err(source),
        };
        encoded.map_err(|source| Error::Encode {
            what: format!("a key of table `{}`", self.name),
            source,
        })
    }

    /// The value for `key` in the current partition (the default when missing). Takes the
    /// key or a borrowed form of it (`&str` for `String` keys).
    pub async fn get<Q: AsKey<K> + ?Sized>(&self, key: &Q) -> Result<V> {
        task::table_get(self.name, &self.key(key)?, |bytes| self.decode(bytes)).await?
    }

    /// Sets `key` to `value`.
    pub async fn set<Q: AsKey<K> + ?Sized>(&self, key: &Q, value: V) -> Result<()> {
        let bytes = self.encode(&value)?;
        task::table_put(self.name, self.key(key)?.into_owned(), Some(bytes))
    }

    /// Removes `key` (a tombstone in the changelog); it reads as the default afterwards.
    pub async fn delete<Q: AsKey<K> + ?Sized>(&self, key: &Q) -> Result<()> {
        task::table_put(self.name, self.key(key)?.into_owned(), None)
    }

    /// Changes the value for `key` in place and returns the new value:
    /// `COUNTS.update(&user, |n| *n += 1).await?` is Faust's `counts[user] += 1`.
    pub async fn update<Q: AsKey<K> + ?Sized>(&self, key: &Q, change: impl FnOnce(&mut V)) -> Result<V> {
        task::table_update(self.name, &self.key(key)?, |slot| {
            let mut value = self.decode(slot.as_deref())?;
            change(&mut value);
            // The slot's buffer is reused; a value that fails to encode leaves the old bytes
            // as they were.
            match json::encode_into(slot, &value) {
                Ok(()) => Ok(value),
                Err(source) => Err(Error::Encode {
                    what: format!("table `{}`", self.name),
                    source: source.into(),
                }),
            }
        })
        .await
    }
}

/// Decodes every entry of one store of table `name` into `out`.
pub(crate) fn read_entries<K: Key + Ord, V: DeserializeOwned>(
    name: &str,
    store: &dyn crate::store::StateStore,
    out: &mut std::collections::BTreeMap<K, V>,
) -> Result<()> {
    read_entries_keyed(name, store, |key| K::decode_key(Some(key)), out)
}

/// [`read_entries`] with keys decoded by `decode_key`.
fn read_entries_keyed<K: Ord, V: DeserializeOwned>(
    name: &str,
    store: &dyn crate::store::StateStore,
    decode_key: impl Fn(&[u8]) -> std::result::Result<K, crate::DecodeError>,
    out: &mut std::collections::BTreeMap<K, V>,
) -> Result<()> {
    let mut failure = None;
    store.for_each(&mut |key, value| {
        let decoded = decode_key(key)
            .map_err(|e| e.to_string())
            .and_then(|k| json::decode::<V>(value).map(|v| (k, v)).map_err(|e| e.to_string()));
        match decoded {
            Ok((k, v)) => {
                out.insert(k, v);
            }
            Err(e) => failure = Some(e),
        }
    })?;
    match failure {
        Some(error) => Err(Error::Config(format!("table `{name}`: {error}"))),
        None => Ok(()),
    }
}

impl<K: Key + Ord, V: DeserializeOwned> Table<K, V> {
    /// Decodes every entry of one store of this table into `out`.
    pub(crate) fn read_store(
        &self,
        store: &dyn crate::store::StateStore,
        out: &mut std::collections::BTreeMap<K, V>,
    ) -> Result<()> {
        match &self.faust {
            Some(faust) => read_entries_keyed(self.name, store, faust.decode, out),
            None => read_entries(self.name, store, out),
        }
    }

    /// Reads every partition of this table that is stored under `data_dir` for the app
    /// `app_id` (works while a worker runs: the stores are opened read-only).
    pub fn read_local(&self, data_dir: &std::path::Path, app_id: &str) -> Result<std::collections::BTreeMap<K, V>> {
        let mut out = std::collections::BTreeMap::new();
        for (_, path) in crate::store::local_partitions(data_dir, app_id, self.name) {
            let store = crate::store::RocksDbStore::open_read_only(&path)?;
            self.read_store(&store, &mut out)?;
        }
        Ok(out)
    }
}

/// A windowed table: what a windowed aggregation keeps, one value per key and window
/// (Kafka Streams' window and session stores). Like every table it lives in a store per
/// partition with a changelog (`{app}-{table}-changelog`, keyed by [`Windowed`] keys), and
/// is restored on the worker that takes a partition over; windows leave it (and its
/// changelog, as tombstones) once they are past their retention.
///
/// ```
/// use streams_core::prelude::*;
///
/// const HITS_PER_MINUTE: WindowedTable<String, i64> = WindowedTable::new("hits-per-minute");
/// assert_eq!(HITS_PER_MINUTE.spec().changelog_topic("hits"), "hits-hits-per-minute-changelog");
/// ```
///
/// The test driver reads it ([`crate::testing::TestDriver::windows`]), and so does a store
/// opened by hand: [`WindowedTable::fetch`].
pub struct WindowedTable<K, V> {
    name: &'static str,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for WindowedTable<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for WindowedTable<K, V> {}

impl<K, V> WindowedTable<K, V> {
    /// A windowed table with this name.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            _types: PhantomData,
        }
    }

    /// The table's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The untyped description the runtime works with (its keys are `Windowed<K>`).
    pub fn spec(&self) -> TableSpec
    where
        K: Key,
    {
        TableSpec {
            name: self.name,
            key_type: std::any::type_name::<Windowed<K>>(),
            value_type: std::any::type_name::<V>(),
            show_key: crate::spec::KeyDisplay(<Windowed<K> as Key>::display_key),
            faust: false,
            windowed: true,
            lookup: Some(crate::spec::KeyLookup(crate::spec::lookup_key::<K>)),
            keeps_time: true,
            ttl: None,
        }
    }
}

impl<K: Key, V: DeserializeOwned> WindowedTable<K, V> {
    /// The windows of `key` that start between `from` and `to` (ms, both inclusive) in one
    /// store of this table, earliest first, with their values (Kafka Streams' `fetch`).
    pub fn fetch<Q: AsKey<K> + ?Sized>(
        &self,
        store: &dyn crate::store::StateStore,
        key: &Q,
        from: i64,
        to: i64,
    ) -> Result<Vec<(Window, V)>> {
        let key = key.as_key_bytes().map_err(|source| Error::Encode {
            what: format!("a key of table `{}`", self.name),
            source,
        })?;
        let mut out = Vec::new();
        let mut failure = None;
        // Windows never start or end before the epoch: an end of 0 is the least there is.
        let low = crate::window::window_key(&key, Window::new(from.max(0), 0));
        let high = match to.checked_add(1) {
            Some(after) => crate::window::window_key(&key, Window::new(after, 0)),
            None => {
                let mut high = key.to_vec();
                high.extend_from_slice(&[0xff; 17]);
                high
            }
        };
        store.range(&low, &high, &mut |bytes, value| {
            // Keys of other lengths belong to other keys that start with this one's bytes.
            let Some((found, window)) = crate::window::split_window_key(bytes) else {
                return;
            };
            if found != &*key {
                return;
            }
            match json::decode::<V>(value) {
                Ok(value) => out.push((window, value)),
                Err(error) => failure = Some(error.to_string()),
            }
        })?;
        match failure {
            Some(error) => Err(Error::Config(format!("table `{}`: {error}", self.name))),
            None => Ok(out),
        }
    }
}

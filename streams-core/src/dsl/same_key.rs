//! The key types of a join's two sides, checked where the other side is passed: a join of
//! streams or tables keyed by different types fails on that argument, naming both key types,
//! before anything else about the join (its joiner's parameter types) is looked at.

use super::stream::KStream;
use super::table::KTable;
use super::versioned::VersionedKTable;

/// The key type `K` of the stream or table a join is called on, as the other side's key
/// type `Self`: implemented only when they are the same type.
///
/// A join's other side is taken with its own key type and this bound, rather than with `K`
/// itself, so that a mistaken key type is the first error, on the argument, instead of a
/// joiner whose parameter types the compiler cannot infer.
#[diagnostic::on_unimplemented(
    message = "this join's other side is keyed by `{Self}`, but the stream or table it is joined to by `{K}`",
    label = "keyed by `{Self}`, not `{K}`",
    note = "a join matches records by key: give both sides the same key type (re-key one with `select_key` or `map`, or join a global table by a key taken from each record)"
)]
pub trait SameKey<K>: Sized {
    /// The other side's stream, as keyed by `K`.
    fn stream<V, P>(stream: KStream<Self, V, P>) -> KStream<K, V, P>;
    /// The other side's table, as keyed by `K`.
    fn table<V>(table: &KTable<Self, V>) -> &KTable<K, V>;
    /// The other side's versioned table, as keyed by `K`.
    fn versioned<V>(table: &VersionedKTable<Self, V>) -> &VersionedKTable<K, V>;
}

impl<K> SameKey<K> for K {
    fn stream<V, P>(stream: KStream<K, V, P>) -> KStream<K, V, P> {
        stream
    }

    fn table<V>(table: &KTable<K, V>) -> &KTable<K, V> {
        table
    }

    fn versioned<V>(table: &VersionedKTable<K, V>) -> &VersionedKTable<K, V> {
        table
    }
}

//! Procedural macros of streams. Use them through `streams_core` (`streams_core::record`,
//! `streams_core::agent`), which re-exports them; everything they emit calls
//! `::streams_core::__private`.

mod agent;
mod attrs;
mod record;
mod topic;

use proc_macro::TokenStream;

/// Makes a struct or enum a record: serde's `Serialize`/`Deserialize` (serde attributes such
/// as `#[serde(rename = "userId")]` pass through) plus `streams_core::Record`;
/// `#[record(faust = "module.Class")]` also names the Faust model it is (`FaustRecord`);
/// `#[record(avro)]` also derives its Avro schema (`apache_avro::AvroSchema`, which needs
/// `apache-avro` among the crate's dependencies and the `avro` feature of `streams-core`),
/// with serde's field and variant names.
#[proc_macro_attribute]
pub fn record(args: TokenStream, item: TokenStream) -> TokenStream {
    record::expand(args.into(), item.into()).into()
}

/// Turns an `async fn(Stream<K, V>)` into an agent: `#[agent(topic = T, sends = [..], tables = [..])]`.
#[proc_macro_attribute]
pub fn agent(args: TokenStream, item: TokenStream) -> TokenStream {
    agent::expand(args.into(), item.into()).into()
}

/// Declares a topic once: `#[topic] const HITS: Topic<K, V> = Topic::new("hits");`. A second
/// `#[topic]` declaration of the same name in the same module is a compile error.
#[proc_macro_attribute]
pub fn topic(args: TokenStream, item: TokenStream) -> TokenStream {
    topic::expand(args.into(), item.into()).into()
}

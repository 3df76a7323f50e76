//! Word count, the DSL way: lines of plain text in, a running count per word out.
//!
//! - reads `text-lines` (values are UTF-8 text, keys are ignored);
//! - splits each line into words: maximal runs of alphanumeric characters, lowercased;
//! - counts per word in the table `word-counts-store` (through the repartition topic
//!   `word_count-words-repartition`, so that each word meets its count on one partition);
//! - sends every change to `word-counts` (key: the word; value: its count, a JSON number).
//!
//! A line that is not UTF-8 goes to the dead-letter topic `word_count-words-dlq`.
//!
//! ```text
//! cargo run --example word_count -- broker --port 9092 &
//! cargo run --example word_count -- worker -l info --broker localhost:9092
//! cargo run --example word_count -- send text-lines 'to be or not to be' --broker localhost:9092
//! cargo run --example word_count -- table word-counts-store
//! ```
use streams_core::prelude::*;

/// Lines of text, as they are (not JSON).
pub const TEXT_LINES: Topic<(), String> = Topic::new("text-lines").utf8_values();
/// Every change of a word's count.
pub const WORD_COUNTS: Topic<String, i64> = Topic::new("word-counts");
/// The count of each word.
pub const WORD_COUNTS_STORE: Table<String, i64> = Table::new("word-counts-store");

/// The words of a line: maximal runs of alphanumeric characters, lowercased.
pub fn words(line: &str) -> Vec<String> {
    line.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The app: id `word_count`, one pipeline.
pub fn app() -> App {
    App::new("word_count").pipeline("words", |builder| {
        builder
            .stream(TEXT_LINES)
            .flat_map_values(|_, line| words(&line))
            .group_by("words", |_, word| word.clone())
            .count(WORD_COUNTS_STORE)
            .to_stream()
            .to(WORD_COUNTS);
    })
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    app().main()
}

//! A test app with a global table: numbers converted at the rate of a global table of rates
//! (`rates` → `rates-table`), written to `converted`; bad records to `fx-errors`.

use streams_core::prelude::*;

/// The rates: a global table's topic (key: a currency, value: a whole number).
pub const RATES: Topic<String, i64> = Topic::new("rates").partitions(2);
/// The rates' global table.
pub const RATES_TABLE: Table<String, i64> = Table::new("rates-table");
/// The numbers to convert.
pub const NUMBERS: Topic<String, i64> = Topic::new("numbers").partitions(4);
/// Each number times the rate of `eur`.
pub const CONVERTED: Topic<String, i64> = Topic::new("converted").partitions(4);
/// The app's dead-letter topic.
pub const DEAD_LETTERS: &str = "fx-errors";

/// The app: each number times the rate of `eur` (numbers without a rate are dropped).
pub fn app() -> App {
    App::new("fx")
        .dead_letter_topic(DEAD_LETTERS)
        .pipeline("convert", |builder| {
            let rates = builder.global_table(RATES, RATES_TABLE);
            builder
                .stream(NUMBERS)
                .join_global(&rates, |_, _| "eur".to_string(), |_, n, rate| n * rate)
                .to(CONVERTED);
        })
}

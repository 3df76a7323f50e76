use streams_core::prelude::*;

#[record]
pub struct Range {
    pub low: f64,
    pub high: f64,
}

const RANGES: Table<String, Range> = Table::new("ranges");

fn main() {
    let _ = RANGES.name();
}

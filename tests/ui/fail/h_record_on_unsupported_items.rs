use streams_core::prelude::*;

#[record]
fn not_a_type() {}

#[record]
type Alias = i64;

#[record]
pub struct Generic<T> {
    pub value: T,
}

fn main() {}

use streams_core::prelude::*;

#[record(faust = 7, serde = "camelCase")]
pub struct Wrong {
    pub hits: i64,
}

#[record]
pub struct Plain {
    pub hits: i64,
}

// Faust's record format needs the namespace Faust knows the record by.
const PLAIN: Topic<String, Plain> = Topic::new("plain").faust();

fn main() {
    let _ = PLAIN;
}

// A Faust record is a JSON object of named fields.
#[record(faust = "m.Kind")]
pub enum Kind {
    A,
    B,
}

use streams_core::dsl::{ForwardKept, ForwardValues, Kept, ValueProcessor};

struct Relabel;

impl ValueProcessor<String, i64> for Relabel {
    type Value = i64;
    fn process(&mut self, _key: &String, value: i64, out: &mut ForwardValues<'_, '_, '_, String, i64>) {
        // A value processor forwards values under the record's key: no key to give.
        out.forward("another key".to_string(), value);
    }
    fn punctuate(&mut self, _: i64, out: &mut ForwardKept<'_, '_, '_, String, i64>) {
        // Nor can it make a key up to forward under when it punctuates.
        out.forward(&Kept("made up".to_string()), 0);
    }
}

fn main() {}

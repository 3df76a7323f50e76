//! Wiring mistakes fail `cargo build` with a span on the user's token (compile-fail cases
//! with their `.stderr` snapshots), and every supported form compiles and runs (pass cases).
//! Regenerate snapshots with `TRYBUILD=overwrite cargo test -p streams-tests --test ui`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/fail/*.rs");
    cases.pass("ui/pass/*.rs");
}

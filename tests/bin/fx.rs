//! A test app with a global table (`streams_tests::fx`), as a program: `fx worker --broker ..`.

fn main() -> std::process::ExitCode {
    streams_tests::fx::app().main()
}

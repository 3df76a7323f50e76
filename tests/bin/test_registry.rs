//! A test tool: the in-memory schema registry of `streams_tests::registry`, on its own.
//!
//! ```text
//! cargo run -p streams-tests --bin test-registry -- 8081
//! ```

fn main() {
    let port = std::env::args()
        .nth(1)
        .map(|port| port.parse::<u16>().expect("the port is a number"))
        .unwrap_or(8081);
    let registry = streams_tests::registry::TestRegistry::start_on(port, None);
    println!("test schema registry at {}", registry.url);
    loop {
        std::thread::park();
    }
}

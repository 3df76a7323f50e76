//! The seed's producer: random `{"hits", "timestamp", "userId"}` JSON records to `hit_count`.
//!
//! `cargo run --example hit_producer -- --broker localhost:9092 --count 10000 --rate 5000 --seed 7`
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

#[derive(Parser, Debug)]
#[command(about = "Produce the seed's random hit records")]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "STREAMS_BROKER", default_value = "localhost:9092")]
    broker: String,
    /// Topic to produce to.
    #[arg(long, default_value = "hit_count")]
    topic: String,
    /// Number of records.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Records per second (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seed of the random data (the same seed gives the same records).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), KafkaError> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.broker)
        .set("linger.ms", "5")
        .create()?;
    let records = streams_examples::seed::hits(args.seed, args.count);
    let started = Instant::now();
    for (i, record) in records.iter().enumerate() {
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / args.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let payload = record.to_string();
        loop {
            match producer.send(BaseRecord::<(), String>::to(&args.topic).payload(&payload)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    println!(
        "produced {} records to {} in {:.2}s",
        args.count,
        args.topic,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

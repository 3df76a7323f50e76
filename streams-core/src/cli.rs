//! The command line every app gets from [`crate::App::main`], in Faust's spirit:
//! `app worker -l info`, `app send TOPIC VALUE`, plus `broker` (host the embedded broker)
//! and `table` (print a table from the local stores).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::app::App;
use crate::broker::EmbeddedBroker;
use crate::worker::{Worker, WorkerOptions};

#[derive(Parser, Debug)]
#[command(version, about = "A streams app: run workers, send records, inspect tables.")]
struct Cli {
    /// Log level: error, warn, info (records and table updates summarised each second) or
    /// debug (every record).
    #[arg(
        short = 'l',
        long = "loglevel",
        global = true,
        env = "STREAMS_LOG_LEVEL",
        default_value = "warn"
    )]
    loglevel: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a worker: consume the app's topics, run its agents, keep its tables.
    Worker {
        /// Kafka bootstrap servers (HOST:PORT[,...]). Without it, the embedded broker is
        /// started in this process.
        #[arg(long, env = "STREAMS_BROKER")]
        broker: Option<String>,
        /// Directory for the tables' stores [default: ./{app id}-data].
        #[arg(long, env = "STREAMS_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Stop after this many seconds without records.
        #[arg(long, value_name = "SECONDS")]
        idle_exit: Option<f64>,
        /// Extra librdkafka setting for every client, KEY=VALUE (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_setting)]
        config: Vec<(String, String)>,
        /// Extra librdkafka setting for the group consumer, KEY=VALUE (repeatable).
        #[arg(long = "consumer-config", value_name = "KEY=VALUE", value_parser = parse_setting)]
        consumer_config: Vec<(String, String)>,
    },
    /// Send one record to a topic (like `faust send`).
    Send {
        /// The topic.
        topic: String,
        /// The record's value, as it goes on the wire (JSON for records).
        value: String,
        /// The record's key (UTF-8).
        #[arg(long)]
        key: Option<String>,
        /// Kafka bootstrap servers.
        #[arg(long, env = "STREAMS_BROKER")]
        broker: String,
    },
    /// Host the embedded broker for other processes, with the app's topics created.
    Broker {
        /// Port to listen on (127.0.0.1).
        #[arg(long, default_value_t = 9092)]
        port: u16,
        /// Partition count of the app's source topics that declare none.
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// Print the app's topology (sources, agents, sinks, internal topics, tables, changelogs)
    /// without contacting any broker.
    Topology {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: TopologyFormat,
    },
    /// Print a table from this machine's stores (all partitions found under --data-dir).
    Table {
        /// The table's name.
        name: String,
        /// Directory of the stores [default: ./{app id}-data].
        #[arg(long, env = "STREAMS_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum TopologyFormat {
    Text,
    Mermaid,
    Dot,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    Ok((key.to_string(), value.to_string()))
}

/// Sets up logging at `level` ("info", "debug", ...) for a program. Safe to call twice.
pub fn init_logging(level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

pub(crate) fn main(app: App) -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.loglevel);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let default_dir = || PathBuf::from(format!("{}-data", app.id()));
    let result = match cli.command {
        Command::Worker {
            broker,
            data_dir,
            idle_exit,
            config,
            consumer_config,
        } => {
            let mut options = WorkerOptions::new(data_dir.unwrap_or_else(default_dir));
            options.broker = broker;
            options.idle_exit = idle_exit.map(Duration::from_secs_f64);
            options.client_config = config;
            options.consumer_config = consumer_config;
            runtime.block_on(run_worker(app, options))
        }
        Command::Send {
            topic,
            value,
            key,
            broker,
        } => runtime.block_on(send(&broker, &topic, key.as_deref(), &value)),
        Command::Broker { port, partitions } => host_broker(app, port, partitions),
        Command::Topology { format } => {
            let topology = app.topology();
            match format {
                TopologyFormat::Text => print!("{}", topology.text()),
                TopologyFormat::Mermaid => print!("{}", topology.mermaid()),
                TopologyFormat::Dot => print!("{}", topology.dot()),
            }
            Ok(())
        }
        Command::Table { name, data_dir } => print_table(&app, &name, &data_dir.unwrap_or_else(default_dir)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run_worker(app: App, options: WorkerOptions) -> crate::Result<()> {
    let worker = Worker::start(app, options).await?;
    let stop = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {},
                        _ = term.recv() => {},
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    let metrics = worker.metrics();
    let stop_flag = worker.stop_flag();
    let stopper = async {
        stop.await;
        tracing::info!("signal received: finishing records and committing");
    };
    tokio::pin!(stopper);
    let done = async {
        loop {
            if metrics.fatal().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // Either a signal asks to stop, or the worker ends by itself (idle exit or failure).
    let wait = worker.wait();
    tokio::pin!(wait);
    tokio::select! {
        result = &mut wait => return result.map(|_| ()),
        _ = &mut stopper => {},
        _ = done => {},
    }
    stop_flag.store(true, std::sync::atomic::Ordering::Relaxed);
    wait.await.map(|_| ())
}

async fn send(broker: &str, topic: &str, key: Option<&str>, value: &str) -> crate::Result<()> {
    let producer: FutureProducer = crate::broker::client_config(broker, &[])
        .create()
        .map_err(|e| crate::Error::kafka("creating a producer", e))?;
    let mut record = FutureRecord::to(topic).payload(value);
    if let Some(key) = key {
        record = record.key(key);
    }
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| crate::Error::kafka(format!("sending to {topic}"), e))?;
    println!("sent to {topic}[{}]@{}", delivery.partition, delivery.offset);
    Ok(())
}

fn host_broker(app: App, port: u16, partitions: Option<i32>) -> crate::Result<()> {
    let broker = EmbeddedBroker::start()?;
    let app = match partitions {
        Some(p) => app.topic_partitions(p),
        None => app,
    };
    for topic in app.plan(&Default::default())? {
        broker.create_topic(&topic.name, topic.partitions)?;
    }
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| crate::Error::io(format!("cannot listen on 127.0.0.1:{port}"), e))?;
    println!(
        "embedded broker listening on 127.0.0.1:{port} (cluster at {})",
        broker.bootstrap_servers()
    );
    broker
        .serve(listener)
        .map_err(|e| crate::Error::io("serving the embedded broker", e))
}

fn print_table(app: &App, name: &str, data_dir: &std::path::Path) -> crate::Result<()> {
    if !app.tables().any(|(t, _)| t.name == name) {
        let known: Vec<&str> = app.tables().map(|(t, _)| t.name).collect();
        return Err(crate::Error::Config(format!(
            "app `{}` has no table `{name}` (tables: {})",
            app.id(),
            known.join(", ")
        )));
    }
    let mut rows = std::collections::BTreeMap::new();
    for (_, path) in crate::store::local_partitions(data_dir, app.id(), name) {
        let store = crate::store::RocksDbStore::open_read_only(&path)?;
        crate::store::StateStore::for_each(&store, &mut |key, value| {
            rows.insert(
                String::from_utf8_lossy(key).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            );
        })?;
    }
    println!("{name} ({} keys)", rows.len());
    for (key, value) in rows {
        println!("{key}\t{value}");
    }
    Ok(())
}

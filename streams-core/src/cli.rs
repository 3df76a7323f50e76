//! The command line every app gets from [`crate::App::main`], in Faust's spirit:
//! `app worker -l info`, `app send TOPIC VALUE`, plus `broker` (host the embedded broker)
//! and `table` (print a table from the local stores).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    /// The schema registry's URL (several separated by commas), for Avro, Protobuf and JSON
    /// Schema topics [default: `schema.registry.url` of --config-file or --config].
    #[arg(long, global = true, value_name = "URL", env = "STREAMS_SCHEMA_REGISTRY_URL")]
    schema_registry_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a worker: consume the app's topics, run its agents, keep its tables.
    Worker {
        /// Kafka bootstrap servers (HOST:PORT[,...]) [default: `bootstrap.servers` of
        /// --config-file]. Without either, the embedded broker is started in this process.
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
        /// librdkafka settings for every client from a properties file (KEY=VALUE lines,
        /// `#` comments), e.g. SASL/SSL for a managed Kafka; `--config` overrides it.
        #[arg(long, value_name = "FILE", env = "STREAMS_CONFIG_FILE")]
        config_file: Option<PathBuf>,
        /// Extra librdkafka setting for the group consumer, KEY=VALUE (repeatable).
        #[arg(long = "consumer-config", value_name = "KEY=VALUE", value_parser = parse_setting)]
        consumer_config: Vec<(String, String)>,
        /// `at-least-once` or `exactly-once` (Kafka transactions) [default: the app's].
        #[arg(long, value_name = "GUARANTEE", env = "STREAMS_PROCESSING_GUARANTEE")]
        processing_guarantee: Option<crate::app::ProcessingGuarantee>,
        /// The worker's identity under exactly-once (its transactional id is `{app}-{ID}`)
        /// and static membership (its group.instance.id is `{app}-{ID}`) [default: one kept
        /// in the data directory].
        #[arg(long, value_name = "ID", env = "STREAMS_WORKER_ID")]
        worker_id: Option<String>,
        /// Joins the group as a static member (KIP-345): SIGTERM stops without leaving the
        /// group, so a restart with the same worker id within the session timeout takes back
        /// its partitions without a rebalance; SIGINT stops and leaves.
        #[arg(long, env = "STREAMS_STATIC_MEMBERSHIP")]
        static_membership: bool,
        /// Port of the worker's web server (table lookups, /metrics, /topology, /health,
        /// /ready); 0 takes any free port. A port given here that is in use fails the start
        /// [default: 6066, or any free port when 6066 is taken].
        #[arg(long, value_name = "PORT", env = "STREAMS_WEB_PORT")]
        web_port: Option<u16>,
        /// Address the web server listens on (0.0.0.0: every interface).
        #[arg(long, value_name = "ADDRESS", env = "STREAMS_WEB_BIND", default_value = "127.0.0.1")]
        web_bind: std::net::IpAddr,
        /// The URL other workers forward table lookups to (Kafka Streams'
        /// `application.server`) [default: http://{web-bind}:{web-port}].
        #[arg(long, value_name = "URL", env = "STREAMS_WEB_ADVERTISE")]
        web_advertise: Option<String>,
        /// No web server.
        #[arg(long)]
        no_web: bool,
        /// Bytes each table partition's cache may hold (changes wait there until the next
        /// commit, coalesced per key): bytes or e.g. 256KB, 1MiB [default: the app's, 1 MiB
        /// unless it says otherwise]; under --state-memory, at most a sixteenth of it split
        /// over the worker's table partitions.
        #[arg(long, value_name = "SIZE", env = "STREAMS_TABLE_CACHE_BYTES", value_parser = crate::store::parse_size)]
        table_cache_bytes: Option<usize>,
        /// Memory all the worker's RocksDB stores share (one block cache, memtables included),
        /// a sixteenth of which bounds its table caches together: bytes or e.g. 256MB, 1GiB
        /// [default: 128MiB for the stores, shared by the process, and no bound on the caches
        /// together].
        #[arg(long, value_name = "SIZE", env = "STREAMS_STATE_MEMORY", value_parser = crate::store::parse_size)]
        state_memory: Option<usize>,
        /// How many partitions restore their stores side by side [default: the machine's
        /// cores, at least 4 and at most 8].
        #[arg(long, value_name = "N", env = "STREAMS_RESTORE_THREADS")]
        restore_threads: Option<usize>,
        /// Workers besides each table partition's owner that keep a warm copy of it, so that
        /// a failover restores only the tail.
        #[arg(long, value_name = "N", env = "STREAMS_STANDBY_REPLICAS", default_value_t = 0)]
        standby_replicas: usize,
        /// Seconds a stop (SIGINT/SIGTERM) may take to finish the records and commit; past
        /// it the worker exits 1 without its last commits.
        #[arg(
            long,
            value_name = "SECONDS",
            env = "STREAMS_SHUTDOWN_TIMEOUT",
            default_value_t = 30.0
        )]
        shutdown_timeout: f64,
    },
    /// Send one record to a topic (like `faust send`). For a topic the app declares, the key
    /// and value are checked against its types first.
    Send {
        /// The topic.
        topic: String,
        /// The record's value, as it goes on the wire (JSON for records).
        value: String,
        /// The record's key: text for `String` keys, a number for integer keys, a JSON
        /// array for a tuple key, JSON for a `Json<T>` key.
        #[arg(long)]
        key: Option<String>,
        /// Send the key and value as they are (UTF-8 bytes), without checking them (an
        /// integer key sent so is text, which the app's agents cannot decode: it goes to
        /// their dead-letter topic).
        #[arg(long)]
        raw: bool,
        /// Kafka bootstrap servers [default: `bootstrap.servers` of --config-file].
        #[arg(long, env = "STREAMS_BROKER")]
        broker: Option<String>,
        /// Extra librdkafka setting, KEY=VALUE (repeatable), e.g. security settings.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_setting)]
        config: Vec<(String, String)>,
        /// librdkafka settings from a properties file (KEY=VALUE lines, `#` comments);
        /// `--config` overrides it.
        #[arg(long, value_name = "FILE", env = "STREAMS_CONFIG_FILE")]
        config_file: Option<PathBuf>,
    },
    /// Print a topic's records as they arrive (key, value, partition, offset, headers),
    /// decoded with the app's types when the app declares the topic.
    Tail {
        /// The topic (dead-letter and changelog topics too).
        topic: String,
        /// Start at the topic's first records instead of its end.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this many records.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Stop at the end of the topic instead of waiting for more.
        #[arg(long)]
        exit_at_end: bool,
        /// Kafka bootstrap servers [default: `bootstrap.servers` of --config-file].
        #[arg(long, env = "STREAMS_BROKER")]
        broker: Option<String>,
        /// Extra librdkafka setting, KEY=VALUE (repeatable), e.g. security settings.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_setting)]
        config: Vec<(String, String)>,
        /// librdkafka settings from a properties file (KEY=VALUE lines, `#` comments);
        /// `--config` overrides it.
        #[arg(long, value_name = "FILE", env = "STREAMS_CONFIG_FILE")]
        config_file: Option<PathBuf>,
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
    /// List the app's agents: the topic each reads, the topics it sends to, its tables.
    Agents,
    /// List the app's tables: key and value types, changelog topic, the agent that keeps it.
    Tables,
    /// Reset the app, as Kafka Streams' reset tool does: delete its internal topics
    /// (changelogs, repartition topics, internal topics named after the app), set its group's
    /// offsets on its input topics to the earliest, remove its local data directory. Refuses
    /// while workers of the app run.
    Reset {
        /// Do it (without, the reset is only described).
        #[arg(long)]
        yes: bool,
        /// Delete this internal topic too, though it is not named after the app (another app
        /// may read it) (repeatable).
        #[arg(long = "delete-topic", value_name = "TOPIC")]
        delete_topics: Vec<String>,
        /// Delete every internal topic of the app, whatever its name.
        #[arg(long)]
        all_internal_topics: bool,
        /// Directory of the stores [default: ./{app id}-data].
        #[arg(long, env = "STREAMS_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Kafka bootstrap servers [default: `bootstrap.servers` of --config-file].
        #[arg(long, env = "STREAMS_BROKER")]
        broker: Option<String>,
        /// Extra librdkafka setting, KEY=VALUE (repeatable), e.g. security settings.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_setting)]
        config: Vec<(String, String)>,
        /// librdkafka settings from a properties file (KEY=VALUE lines, `#` comments);
        /// `--config` overrides it.
        #[arg(long, value_name = "FILE", env = "STREAMS_CONFIG_FILE")]
        config_file: Option<PathBuf>,
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

/// The settings of a librdkafka properties file (as `kcat -F` reads them): `KEY=VALUE`
/// lines; blank lines and lines starting with `#` or `!` are skipped.
pub(crate) fn read_config_file(path: &std::path::Path) -> crate::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
    parse_config_file(&text)
        .map_err(|(line, what)| crate::Error::Config(format!("config file {}, line {line}: {what}", path.display())))
}

/// [`read_config_file`] of a file's text; an error names the line (from 1).
fn parse_config_file(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut settings = Vec::new();
    // A byte order mark (Windows editors write one) is not part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                settings.push((key.trim().to_string(), value.trim().to_string()));
            }
            _ => {
                // Only the line's first word: the rest may be a secret (`sasl.password: ...`).
                let first: String = line
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != ':' && *c != '=')
                    .collect();
                return Err((index + 1, format!("not KEY=VALUE (the line starts `{first}`)")));
            }
        }
    }
    Ok(settings)
}

/// librdkafka settings, in the order they apply (a later one wins).
type Settings = Vec<(String, String)>;

/// The broker and librdkafka settings of a command. The broker: `bootstrap.servers` of
/// `--config`, else `--broker` (or `STREAMS_BROKER`), else the config file's
/// `bootstrap.servers`. The settings: the file's, then `--config`'s, which win; without
/// `bootstrap.servers` (the broker is given on its own).
fn settings(
    broker: Option<String>,
    file: Option<&std::path::Path>,
    flags: Vec<(String, String)>,
) -> crate::Result<(Option<String>, Settings)> {
    let mut all = match file {
        Some(path) => read_config_file(path)?,
        None => Vec::new(),
    };
    let bootstrap = |settings: &Settings| {
        settings
            .iter()
            .rev()
            .find(|(key, _)| key == "bootstrap.servers")
            .map(|(_, value)| value.clone())
    };
    let broker = bootstrap(&flags).or(broker).or_else(|| bootstrap(&all));
    all.extend(flags);
    all.retain(|(key, _)| key != "bootstrap.servers");
    Ok((broker, all))
}

/// Takes the schema registry's settings out of `config` (they are not librdkafka's) and
/// makes them, with `url` from `--schema-registry-url` first, the process's registry.
fn registry(url: Option<&str>, mut config: Settings) -> crate::Result<Settings> {
    let registry = crate::schema::RegistrySettings::from_config_and_url(&config, url);
    config.retain(|(key, _)| !crate::schema::RegistrySettings::is_registry_key(key));
    if let Some(registry) = registry {
        registry.install()?;
    }
    Ok(config)
}

/// The broker of a command that needs one.
fn required(broker: Option<String>) -> crate::Result<String> {
    broker.ok_or_else(|| {
        crate::Error::Config(
            "no broker: give --broker HOST:PORT (or STREAMS_BROKER), or bootstrap.servers in --config-file".into(),
        )
    })
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    Ok((key.to_string(), value.to_string()))
}

/// Sets up logging at `level` ("info", "debug", ...) for a program: to stderr, in colour
/// only when stderr is a terminal (and `NO_COLOR` is not set). Safe to call twice.
pub fn init_logging(level: &str) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

impl App {
    /// Runs the command line (`worker`, `send`, `tail`, `broker`, `agents`, `tables`,
    /// `table`, `topology`, `reset`) and returns the exit code.
    pub fn main(self) -> ExitCode {
        main(self)
    }
}

fn main(app: App) -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.loglevel);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let default = PathBuf::from(format!("{}-data", app.id()));
    let default_dir = move || default;
    let registry_url = cli.schema_registry_url.clone();
    let result = match cli.command {
        Command::Worker {
            broker,
            data_dir,
            idle_exit,
            config,
            config_file,
            consumer_config,
            processing_guarantee,
            worker_id,
            static_membership,
            web_port,
            web_bind,
            web_advertise,
            no_web,
            table_cache_bytes,
            state_memory,
            restore_threads,
            standby_replicas,
            shutdown_timeout,
        } => settings(broker, config_file.as_deref(), config)
            .and_then(|(broker, config)| Ok((broker, registry(registry_url.as_deref(), config)?)))
            .and_then(|(broker, config)| {
                let mut options = WorkerOptions::new(data_dir.unwrap_or_else(default_dir));
                options.broker = broker;
                options.idle_exit = idle_exit.map(Duration::from_secs_f64);
                options.client_config = config;
                options.consumer_config = consumer_config;
                options.guarantee = processing_guarantee;
                options.worker_id = worker_id;
                options.static_membership = static_membership;
                options.table_cache_bytes = table_cache_bytes;
                options.state_memory = state_memory;
                if let Some(threads) = restore_threads {
                    options.restore_threads = threads.max(1);
                }
                options.standby_replicas = standby_replicas;
                options.shutdown_timeout = Duration::try_from_secs_f64(shutdown_timeout)
                    .map_err(|e| crate::Error::Config(format!("--shutdown-timeout {shutdown_timeout}: {e}")))?;
                options.web = (!no_web).then(|| {
                    let mut web = crate::web::WebOptions::default().bind(web_bind);
                    if let Some(port) = web_port {
                        web = web.port(port);
                    }
                    if let Some(url) = web_advertise {
                        web = web.advertised(url);
                    }
                    web
                });
                runtime.block_on(run_worker(app, options))
            }),
        Command::Send {
            topic,
            value,
            key,
            raw,
            broker,
            config,
            config_file,
        } => settings(broker, config_file.as_deref(), config)
            .and_then(|(broker, config)| Ok((broker, registry(registry_url.as_deref(), config)?)))
            .and_then(|(broker, config)| {
                let broker = required(broker)?;
                runtime.block_on(send(&app, &broker, &config, &topic, key.as_deref(), &value, raw))
            }),
        Command::Tail {
            topic,
            from_beginning,
            limit,
            exit_at_end,
            broker,
            config,
            config_file,
        } => settings(broker, config_file.as_deref(), config)
            .and_then(|(broker, config)| Ok((broker, registry(registry_url.as_deref(), config)?)))
            .and_then(|(broker, config)| {
                let broker = required(broker)?;
                crate::tail::tail(
                    &app,
                    &broker,
                    &config,
                    &topic,
                    crate::tail::Tail {
                        from_beginning,
                        limit,
                        exit_at_end,
                    },
                )
            }),
        Command::Agents => {
            print!("{}", agents_text(&app));
            Ok(())
        }
        Command::Tables => {
            print!("{}", tables_text(&app));
            Ok(())
        }
        Command::Broker { port, partitions } => host_broker(app, port, partitions, &runtime),
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
        Command::Reset {
            yes,
            delete_topics,
            all_internal_topics,
            data_dir,
            broker,
            config,
            config_file,
        } => settings(broker, config_file.as_deref(), config)
            .and_then(|(broker, config)| Ok((broker, registry(registry_url.as_deref(), config)?)))
            .and_then(|(broker, config)| {
                let broker = required(broker)?;
                let data_dir = data_dir.unwrap_or_else(default_dir);
                let options = crate::reset::ResetOptions {
                    yes,
                    delete: delete_topics,
                    all_internal: all_internal_topics,
                };
                runtime.block_on(crate::reset::reset(&app, &broker, &config, &data_dir, &options))
            }),
    };
    // A blocking call that is still waiting on the network (a metadata request to an
    // unreachable broker) does not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT and SIGTERM, registered when this is created (a signal from then on is caught).
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next signal: `true` for SIGINT (Ctrl-C), `false` for SIGTERM.
    async fn next(&mut self) -> bool {
        #[cfg(unix)]
        {
            let interrupt = async {
                match &mut self.interrupt {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            let terminate = async {
                match &mut self.terminate {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = interrupt => true,
                _ = terminate => false,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            true
        }
    }
}

async fn run_worker(app: App, options: WorkerOptions) -> crate::Result<()> {
    // Signals are handled from the first moment: a signal during start-up (which waits for
    // an unreachable broker as long as it takes) stops the start.
    let stop = Arc::new(AtomicBool::new(false));
    // SIGINT stops and leaves the group (a static member is not coming back); SIGTERM stops,
    // and a static member keeps its place for its restart.
    let leave = Arc::new(AtomicBool::new(false));
    let signalled = Arc::new(tokio::sync::Notify::new());
    let mut signals = Signals::new();
    {
        let (stop, leave, signalled) = (Arc::clone(&stop), Arc::clone(&leave), Arc::clone(&signalled));
        tokio::spawn(async move {
            if signals.next().await {
                leave.store(true, Ordering::Relaxed);
            }
            // Release: the worker that sees the stop sees the leave.
            stop.store(true, Ordering::Release);
            signalled.notify_one();
            // A second signal does not wait for the last commits.
            signals.next().await;
            eprintln!(
                "second signal: exiting now, without the last commits (input since the last commit will be processed again)"
            );
            std::process::exit(130);
        });
    }
    let options = options.stop_flag(Arc::clone(&stop)).leave_flag(leave);
    let worker = match Worker::start(app, options).await {
        Ok(worker) => worker,
        Err(crate::Error::Stopping) => {
            eprintln!("signal received during start-up: stopped before joining the group; nothing was processed");
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    let metrics = worker.metrics();
    let stopper = async {
        signalled.notified().await;
        tracing::info!("signal received: finishing records and committing");
    };
    tokio::pin!(stopper);
    let failed = metrics.failure();
    // Either a signal asks to stop, or the worker ends by itself (idle exit or failure).
    let stop_worker = worker.stopper();
    let timeout = worker.shutdown_timeout;
    let step = worker.shutdown_step();
    let wait = worker.wait();
    tokio::pin!(wait);
    tokio::select! {
        result = &mut wait => return result.map(|_| ()),
        _ = &mut stopper => {},
        _ = failed => {},
    }
    stop_worker.stop();
    match tokio::time::timeout(timeout, wait).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => Err(crate::Error::Config(format!(
            "the worker did not stop within {} s (--shutdown-timeout; it was {}; is the broker reachable?): exiting \
             without waiting for its last commits; the input since the last commit will be processed again by the \
             next owner",
            timeout.as_secs_f64(),
            step.current()
        ))),
    }
}

async fn send(
    app: &App,
    broker: &str,
    config: &[(String, String)],
    topic: &str,
    key: Option<&str>,
    value: &str,
    raw: bool,
) -> crate::Result<()> {
    let topics = app.topics();
    let key: Option<Vec<u8>> = match topics.iter().find(|t| t.name == topic) {
        Some(spec) if !raw => {
            let refuse = |what: &str, error: &dyn std::fmt::Display| {
                crate::Error::Config(format!(
                    "{what} for topic `{topic}`: {error} (send it unchecked with --raw)"
                ))
            };
            let key_type = crate::topology::short_type(spec.key_type);
            let value_type = crate::topology::short_type(spec.value_type);
            let key = match key {
                Some(text) => spec
                    .codecs
                    .parse_key(text)
                    .map_err(|e| refuse(&format!("`{text}` is not a key of type {key_type}"), &e))?,
                None => None,
            };
            spec.codecs
                .check_key(key.as_deref())
                .map_err(|e| refuse(&format!("a key of type {key_type} is needed (--key)"), &e))?;
            spec.codecs.check_value(value.as_bytes()).map_err(|e| {
                let hint = if value_type == "String" && spec.value_format == "json" {
                    "; its values are JSON strings: write them in quotes, '\"like this\"'"
                } else {
                    ""
                };
                refuse(&format!("the value is not of type {value_type}{hint}"), &e)
            })?;
            key
        }
        Some(_) => key.map(|k| k.as_bytes().to_vec()),
        None => {
            let known: Vec<&str> = topics.iter().map(|t| &*t.name).collect();
            let hint = suggestion(topic, &known)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            eprintln!(
                "note: app `{}` does not declare topic `{topic}`{hint}: sent unchecked",
                app.id()
            );
            key.map(|k| k.as_bytes().to_vec())
        }
    };
    let mut client = crate::broker::client_config(broker, config);
    // Keys go where the app's own producer puts them (Kafka's default partitioner, as the
    // Java clients), unless told otherwise.
    if !config.iter().any(|(key, _)| key == "partitioner") {
        client.set("partitioner", "murmur2_random");
    }
    let producer: FutureProducer = client
        .create()
        .map_err(|e| crate::Error::kafka("creating a producer", e))?;
    let mut record = FutureRecord::to(topic).payload(value);
    if let Some(key) = &key {
        record = record.key(key);
    }
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| crate::Error::kafka(format!("sending to {topic}"), e))?;
    println!("sent to {topic}[{}]@{}", delivery.partition, delivery.offset);
    Ok(())
}

fn host_broker(app: App, port: u16, partitions: Option<i32>, runtime: &tokio::runtime::Runtime) -> crate::Result<()> {
    // From the first moment: a signal during start-up stops the broker cleanly too.
    let mut signals = runtime.block_on(async { Signals::new() });
    let broker = EmbeddedBroker::start()?;
    let app = match partitions {
        Some(p) => app.topic_partitions(p),
        None => app,
    };
    let mut created = Vec::new();
    for topic in app.plan(&Default::default())? {
        broker.create_topic(&topic.name, topic.partitions)?;
        created.push(format!("{} ({})", topic.name, topic.partitions));
    }
    // The workers' directory (their web servers find each other there).
    let directory = crate::web::directory::topic_name(app.id());
    broker.create_topic(&directory, 1)?;
    created.push(format!("{directory} (1)"));
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| crate::Error::io(format!("cannot listen on 127.0.0.1:{port}"), e))?;
    println!("embedded broker listening on 127.0.0.1:{port}");
    println!(
        "  clients bootstrap there, then connect to the cluster's own address {} (from its metadata): \
         both must be reachable",
        broker.bootstrap_servers()
    );
    println!("  created topics (partitions): {}", created.join(", "));
    println!("  stop it with Ctrl-C; its topics live in memory and go with it");
    let (failed_tx, failed) = tokio::sync::oneshot::channel::<String>();
    {
        let broker = broker.clone();
        std::thread::Builder::new()
            .name("broker-listener".into())
            .spawn(move || {
                if let Err(error) = broker.serve(listener) {
                    let _ = failed_tx.send(error.to_string());
                }
            })
            .map_err(|e| crate::Error::io("starting the broker listener", e))?;
    }
    let failure = runtime.block_on(async {
        tokio::select! {
            _ = signals.next() => None,
            failure = failed => failure.ok(),
        }
    });
    if let Some(error) = failure {
        return Err(crate::Error::Config(format!(
            "the embedded broker stopped serving: {error}"
        )));
    }
    println!("embedded broker on 127.0.0.1:{port} stopped");
    Ok(())
}

/// Edit distance between two names (for "did you mean").
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The known name closest to `name`, when it is close enough to be a typo of it.
fn suggestion<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min()
        .map(|(_, k)| k)
}

fn print_table(app: &App, name: &str, data_dir: &std::path::Path) -> crate::Result<()> {
    let tables = app.tables();
    if !tables.iter().any(|(t, _)| t.name == name) {
        let known: Vec<&str> = tables.iter().map(|(t, _)| t.name).collect();
        let hint = suggestion(name, &known)
            .map(|k| format!("; did you mean `{k}`?"))
            .unwrap_or_default();
        return Err(crate::Error::Config(format!(
            "app `{}` has no table `{name}` (tables: {}){hint}",
            app.id(),
            known.join(", ")
        )));
    }
    let show_key = tables
        .iter()
        .find(|(t, _)| t.name == name)
        .map(|(t, _)| t.show_key.0)
        .unwrap_or(|bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned());
    // Rows by their key bytes: keys that are not text (integers, tuples) stay apart.
    let mut rows: std::collections::BTreeMap<Vec<u8>, String> = std::collections::BTreeMap::new();
    for (_, path) in crate::store::local_partitions(data_dir, app.id(), name) {
        let store = crate::store::RocksDbStore::open_read_only(&path)?;
        crate::store::StateStore::for_each(&store, &mut |key, value| {
            rows.insert(key.to_vec(), String::from_utf8_lossy(value).into_owned());
        })?;
    }
    println!("{name} ({} keys)", rows.len());
    for (key, value) in rows {
        println!("{}\t{value}", show_key(&key));
    }
    Ok(())
}

/// `APP agents`: each agent (and each pipeline's task) with what it reads, sends and keeps.
fn agents_text(app: &App) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let names = |specs: &mut dyn Iterator<Item = String>| {
        let all: Vec<String> = specs.collect();
        if all.is_empty() {
            "-".to_string()
        } else {
            all.join(", ")
        }
    };
    let _ = writeln!(out, "AGENT\tTOPIC\tSENDS\tTABLES");
    for agent in app.agents() {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}",
            agent.name,
            agent.source.name,
            names(&mut agent.sends.iter().map(|t| t.name.to_string())),
            names(&mut agent.tables.iter().map(|t| t.name.to_string())),
        );
    }
    for pipeline in app.pipelines() {
        for task in &pipeline.tasks {
            let _ = writeln!(
                out,
                "{} (pipeline)\t{}\t{}\t{}",
                task.name,
                names(&mut task.sources.iter().map(|t| t.name.to_string())),
                names(&mut task.sends.iter().map(|t| t.name.to_string())),
                names(&mut task.tables.iter().map(|t| t.name.to_string())),
            );
        }
    }
    out
}

/// `APP tables`: each table with its types, changelog and keeper.
fn tables_text(app: &App) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "TABLE\tKEY\tVALUE\tCHANGELOG\tKEPT BY");
    for (table, keeper) in app.tables() {
        let faust = if table.faust { " (Faust's encoding)" } else { "" };
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}{faust}\t{keeper}",
            table.name,
            crate::topology::short_type(table.key_type),
            crate::topology::short_type(table.value_type),
            table.changelog_topic(app.id()),
        );
    }
    for global in app.global_tables() {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t(global: a copy of {})\tevery worker",
            global.table.name,
            crate::topology::short_type(global.table.key_type),
            crate::topology::short_type(global.table.value_type),
            global.topic.name,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::suggestion;

    #[test]
    fn sizes_take_units() {
        use clap::Parser;
        let parsed = |args: &[&str]| match super::Cli::try_parse_from(args).map(|cli| cli.command) {
            Ok(super::Command::Worker {
                table_cache_bytes,
                state_memory,
                ..
            }) => (table_cache_bytes, state_memory),
            other => panic!("{other:?}"),
        };
        let worker = |extra: &[&'static str]| [&["app", "worker"], extra].concat();
        assert_eq!(
            parsed(&worker(&["--table-cache-bytes", "256KB", "--state-memory", "256MB"])),
            (Some(256_000), Some(256_000_000))
        );
        assert_eq!(
            parsed(&worker(&["--table-cache-bytes", "262144"])),
            (Some(262_144), None),
            "plain bytes as before"
        );
        assert_eq!(parsed(&worker(&["--table-cache-bytes", "0"])).0, Some(0));
        assert!(super::Cli::try_parse_from(worker(&["--table-cache-bytes", "lots"])).is_err());
    }

    #[test]
    fn config_files_are_key_value_lines() {
        let text = "# Confluent Cloud\nbootstrap.servers=pkc-1.aws.confluent.cloud:9092\n\n  security.protocol = SASL_SSL\n! also a comment\nsasl.password=a=b\n";
        assert_eq!(
            super::parse_config_file(text).unwrap(),
            vec![
                (
                    "bootstrap.servers".to_string(),
                    "pkc-1.aws.confluent.cloud:9092".to_string()
                ),
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
                ("sasl.password".to_string(), "a=b".to_string()),
            ]
        );
        assert_eq!(
            super::parse_config_file("a=1\nsasl.mechanisms\n").unwrap_err(),
            (2, "not KEY=VALUE (the line starts `sasl.mechanisms`)".to_string())
        );
        // The secret of a line in another syntax is not repeated.
        let error = super::parse_config_file("sasl.password: s3cret\n").unwrap_err();
        assert!(!error.1.contains("s3cret"), "{error:?}");
        // A byte order mark and CRLF line ends.
        assert_eq!(
            super::parse_config_file("\u{feff}# c\r\nclient.id=a\r\n").unwrap(),
            vec![("client.id".to_string(), "a".to_string())]
        );
        // The broker: --config's bootstrap.servers, --broker, the file's, in that order.
        let dir = std::env::temp_dir().join(format!("streams-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("app.properties");
        std::fs::write(&file, "bootstrap.servers=file:9092\nclient.id=f\n").unwrap();
        let flag = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let (broker, settings) = super::settings(None, Some(&file), flag("client.id", "g")).unwrap();
        assert_eq!(broker.as_deref(), Some("file:9092"));
        assert_eq!(
            settings,
            vec![
                ("client.id".to_string(), "f".to_string()),
                ("client.id".to_string(), "g".to_string())
            ]
        );
        let (broker, _) = super::settings(Some("flag:9092".into()), Some(&file), Vec::new()).unwrap();
        assert_eq!(broker.as_deref(), Some("flag:9092"));
        let (broker, settings) = super::settings(
            Some("flag:9092".into()),
            Some(&file),
            flag("bootstrap.servers", "config:9092"),
        )
        .unwrap();
        assert_eq!(broker.as_deref(), Some("config:9092"));
        assert!(settings.iter().all(|(k, _)| k != "bootstrap.servers"));
        let _ = std::fs::remove_dir_all(&dir);
        let missing = super::read_config_file(std::path::Path::new("/nonexistent/app.properties")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/app.properties"), "{missing}");
    }

    #[test]
    fn typos_get_a_suggestion() {
        let known = ["major-count", "last-seen"];
        assert_eq!(suggestion("major-cont", &known), Some("major-count"));
        assert_eq!(suggestion("major_count", &known), Some("major-count"));
        assert_eq!(suggestion("users", &known), None);
    }
}

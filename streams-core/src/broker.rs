//! Brokers: client configuration, the embedded broker (librdkafka's mock cluster) and the
//! creation of the app's topics.

use std::collections::HashMap;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
/// The requests of kind `api` a mock cluster has tracked.
fn count_requests(raw: *mut rdkafka::bindings::rd_kafka_mock_cluster_t, api: RDKafkaApiKey) -> usize {
    let mut count = 0usize;
    // SAFETY: `raw` is a live mock cluster; the array and its requests are ours to read
    // and then free with rd_kafka_mock_request_destroy_array.
    unsafe {
        let requests = rdkafka::bindings::rd_kafka_mock_get_requests(raw, &mut count);
        if requests.is_null() {
            return 0;
        }
        let wanted = api as i16;
        let matching = (0..count)
            .filter(|&i| rdkafka::bindings::rd_kafka_mock_request_api_key(*requests.add(i)) == wanted)
            .count();
        rdkafka::bindings::rd_kafka_mock_request_destroy_array(requests, count);
        matching
    }
}

/// Request kinds and error codes for [`EmbeddedBroker::fail_requests`].
pub use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

pub use crate::spec::PlannedTopic;
use crate::{Error, Result};

enum Command {
    CreateTopic(String, i32, mpsc::Sender<Result<(), String>>),
    BrokerDown(i32, mpsc::Sender<Result<(), String>>),
    BrokerUp(i32, mpsc::Sender<Result<(), String>>),
    RoundTripTime(i32, Duration, mpsc::Sender<Result<(), String>>),
    RequestErrors(RDKafkaApiKey, Vec<RDKafkaRespErr>, mpsc::Sender<Result<(), String>>),
    TrackRequests(mpsc::Sender<Result<(), String>>),
    CountRequests(RDKafkaApiKey, mpsc::Sender<Result<usize, String>>),
    Stop,
}

/// An in-process Kafka-compatible broker: librdkafka's mock cluster on its own thread.
/// Used by tests, by `make demo` and by a worker started without `--broker`.
///
/// ```no_run
/// let broker = streams_core::EmbeddedBroker::start().unwrap();
/// broker.create_topic("hit_count", 4).unwrap();
/// println!("bootstrap servers: {}", broker.bootstrap_servers());
/// ```
///
/// The handle is cheap to clone; the cluster stops when the last clone is dropped.
#[derive(Clone)]
pub struct EmbeddedBroker {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    bootstrap: String,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("bootstrap", &self.inner.bootstrap)
            .finish()
    }
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster.
    pub fn start() -> Result<Self> {
        let (commands, inbox) = mpsc::channel::<Command>();
        let (ready, started) = mpsc::channel::<Result<String, String>>();
        let thread = std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                // The cluster of a client made for it (librdkafka's `test.mock.num.brokers`):
                // its handle also serves the request tracking rdkafka does not wrap.
                let owner: BaseProducer = match ClientConfig::new().set("test.mock.num.brokers", "1").create() {
                    Ok(owner) => owner,
                    Err(error) => {
                        let _ = ready.send(Err(error.to_string()));
                        return;
                    }
                };
                let Some(cluster) = owner.client().mock_cluster() else {
                    let _ = ready.send(Err("the client has no mock cluster".into()));
                    return;
                };
                // SAFETY: `owner`'s handle is live for this thread's whole loop.
                let raw = unsafe { rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr()) };
                let _ = ready.send(Ok(cluster.bootstrap_servers()));
                for command in inbox {
                    match command {
                        Command::CreateTopic(name, partitions, reply) => {
                            let _ = reply.send(cluster.create_topic(&name, partitions, 1).map_err(|e| e.to_string()));
                        }
                        Command::BrokerDown(id, reply) => {
                            let _ = reply.send(cluster.broker_down(id).map_err(|e| e.to_string()));
                        }
                        Command::BrokerUp(id, reply) => {
                            let _ = reply.send(cluster.broker_up(id).map_err(|e| e.to_string()));
                        }
                        Command::RoundTripTime(id, delay, reply) => {
                            let _ = reply.send(cluster.broker_round_trip_time(id, delay).map_err(|e| e.to_string()));
                        }
                        Command::RequestErrors(api, errors, reply) => {
                            if errors.is_empty() {
                                cluster.clear_request_errors(api);
                            } else {
                                cluster.request_errors(api, &errors);
                            }
                            let _ = reply.send(Ok(()));
                        }
                        Command::TrackRequests(reply) => {
                            // SAFETY: `raw` is the live cluster of `owner`.
                            unsafe { rdkafka::bindings::rd_kafka_mock_start_request_tracking(raw) };
                            let _ = reply.send(Ok(()));
                        }
                        Command::CountRequests(api, reply) => {
                            let _ = reply.send(Ok(count_requests(raw, api)));
                        }
                        Command::Stop => break,
                    }
                }
            })
            .map_err(|e| Error::io("starting the embedded broker", e))?;
        let bootstrap = started
            .recv()
            .map_err(|_| Error::Config("the embedded broker did not start".into()))?
            .map_err(|e| Error::Config(format!("the embedded broker did not start: {e}")))?;
        Ok(Self {
            inner: std::sync::Arc::new(Inner {
                commands,
                bootstrap,
                thread: std::sync::Mutex::new(Some(thread)),
            }),
        })
    }

    /// From now on, the broker keeps a record of the requests it is sent (see
    /// [`EmbeddedBroker::requests`]).
    pub fn track_requests(&self) -> Result<()> {
        self.call(Command::TrackRequests)
    }

    /// How many requests of kind `api` the broker was sent since [`EmbeddedBroker::track_requests`].
    pub fn requests(&self, api: RDKafkaApiKey) -> Result<usize> {
        let (reply, answer) = mpsc::channel();
        self.inner
            .commands
            .send(Command::CountRequests(api, reply))
            .map_err(|_| Error::Config("the embedded broker has stopped".into()))?;
        answer
            .recv()
            .map_err(|_| Error::Config("the embedded broker has stopped".into()))?
            .map_err(Error::Config)
    }

    /// The address clients connect to.
    pub fn bootstrap_servers(&self) -> &str {
        &self.inner.bootstrap
    }

    fn call(&self, make: impl FnOnce(mpsc::Sender<Result<(), String>>) -> Command) -> Result<()> {
        let (reply, answer) = mpsc::channel();
        self.inner
            .commands
            .send(make(reply))
            .map_err(|_| Error::Config("the embedded broker has stopped".into()))?;
        answer
            .recv()
            .map_err(|_| Error::Config("the embedded broker has stopped".into()))?
            .map_err(Error::Config)
    }

    /// Creates a topic (the mock cluster has no CreateTopics API).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        self.call(|reply| Command::CreateTopic(name.to_string(), partitions, reply))
    }

    /// Takes broker `id` (1-based) down: clients see it as unreachable.
    pub fn broker_down(&self, id: i32) -> Result<()> {
        self.call(|reply| Command::BrokerDown(id, reply))
    }

    /// Brings broker `id` back up.
    pub fn broker_up(&self, id: i32) -> Result<()> {
        self.call(|reply| Command::BrokerUp(id, reply))
    }

    /// Delays every response of broker `id` by `delay` (a slow network or a busy broker).
    pub fn round_trip_time(&self, id: i32, delay: Duration) -> Result<()> {
        self.call(|reply| Command::RoundTripTime(id, delay, reply))
    }

    /// Makes the next requests of one kind fail: each of `errors` answers one request, in
    /// order (as a broker refuses offset commits during a rebalance, or a group coordinator
    /// forgets a member). An empty list clears what is left.
    ///
    /// ```no_run
    /// use streams_core::broker::{RDKafkaApiKey, RDKafkaRespErr};
    /// let broker = streams_core::EmbeddedBroker::start().unwrap();
    /// // The next 100 offset commits fail.
    /// broker.fail_requests(RDKafkaApiKey::OffsetCommit, vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_COMMIT_OFFSET_SIZE; 100]).unwrap();
    /// ```
    pub fn fail_requests(&self, api: RDKafkaApiKey, errors: Vec<RDKafkaRespErr>) -> Result<()> {
        self.call(|reply| Command::RequestErrors(api, errors, reply))
    }

    /// Accepts connections on `listener` and forwards them to the cluster, so that other
    /// processes can bootstrap from a known port (the cluster advertises its own loopback
    /// address, which clients then use directly). Runs until the process ends.
    pub fn serve(&self, listener: TcpListener) -> io::Result<()> {
        let target = self.inner.bootstrap.split(',').next().unwrap_or_default().to_string();
        for client in listener.incoming() {
            let client = client?;
            let target = target.clone();
            std::thread::spawn(move || {
                if let Err(error) = forward(client, &target) {
                    tracing::debug!("embedded broker connection ended: {error}");
                }
            });
        }
        Ok(())
    }
}

fn forward(client: TcpStream, target: &str) -> io::Result<()> {
    let server = TcpStream::connect(target)?;
    let (mut client_read, mut server_write) = (client.try_clone()?, server.try_clone()?);
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut client_read, &mut server_write);
        let _ = server_write.shutdown(std::net::Shutdown::Write);
    });
    let (mut server_read, mut client_write) = (server, client);
    let _ = io::copy(&mut server_read, &mut client_write);
    let _ = client_write.shutdown(std::net::Shutdown::Write);
    let _ = upstream.join();
    Ok(())
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

/// Base client configuration for `bootstrap` servers.
pub(crate) fn client_config(bootstrap: &str, extra: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in extra {
        config.set(key, value);
    }
    config
}

/// What the worker learns of the cluster before it starts.
pub(crate) struct Cluster {
    /// Partition counts of every topic.
    pub topics: HashMap<String, i32>,
    /// The cluster's id, when the broker reports one.
    pub id: Option<String>,
}

impl Cluster {
    /// Whether the cluster is librdkafka's mock cluster: the embedded broker, in this process
    /// or hosted by an app's `broker` command (its ids start with `mockCluster`).
    pub(crate) fn is_embedded(&self) -> bool {
        self.id.as_deref().is_some_and(|id| id.starts_with("mockCluster"))
    }
}

/// Partition counts of every topic on the cluster. Waits for the cluster while it is
/// unreachable, logging each attempt at warn with the error, with growing pauses.
pub(crate) fn wait_for_cluster(config: &ClientConfig, stopping: &dyn Fn() -> bool) -> Result<HashMap<String, i32>> {
    Ok(describe_cluster(config, stopping)?.topics)
}

/// The cluster's topics and id; waits for the cluster as [`wait_for_cluster`] does.
pub(crate) fn describe_cluster(config: &ClientConfig, stopping: &dyn Fn() -> bool) -> Result<Cluster> {
    let client: BaseConsumer = config
        .clone()
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| Error::kafka("creating a metadata client", e))?;
    let bootstrap = config.get("bootstrap.servers").unwrap_or_default().to_string();
    let mut pause = Duration::from_millis(500);
    loop {
        match client.fetch_metadata(None, Duration::from_secs(5)) {
            Ok(metadata) => {
                let topics = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .map(|t| (t.name().to_string(), t.partitions().len() as i32))
                    .collect();
                // Known from the metadata just fetched: no second round trip.
                let id = client.client().fetch_cluster_id(Duration::from_secs(5));
                return Ok(Cluster { topics, id });
            }
            Err(error) => {
                if stopping() {
                    return Err(Error::Stopping);
                }
                tracing::warn!("broker {bootstrap} is unreachable ({error}); retrying in {pause:?}");
                let until = std::time::Instant::now() + pause;
                while std::time::Instant::now() < until {
                    if stopping() {
                        return Err(Error::Stopping);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                pause = (pause * 2).min(Duration::from_secs(15));
            }
        }
    }
}

/// Creates the missing topics of `plan`.
pub(crate) async fn create_topics(
    plan: &[PlannedTopic],
    config: &ClientConfig,
    embedded: Option<&EmbeddedBroker>,
) -> Result<()> {
    let missing: Vec<&PlannedTopic> = plan.iter().filter(|t| !t.exists).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if let Some(broker) = embedded {
        // Each creation is a round trip to the cluster's thread: off the async executor.
        let broker = broker.clone();
        let missing: Vec<PlannedTopic> = missing.into_iter().cloned().collect();
        return tokio::task::spawn_blocking(move || {
            for topic in missing {
                broker.create_topic(&topic.name, topic.partitions)?;
                tracing::info!("created topic {} ({} partitions)", topic.name, topic.partitions);
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Config(format!("creating topics: {e}")))?;
    }
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| Error::kafka("creating the admin client", e))?;
    let topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            let topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(-1));
            if t.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(topics.iter(), &options)
        .await
        .map_err(|e| Error::kafka("creating topics", e))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!("created topic {name}"),
            Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!("topic {name} was created meanwhile")
            }
            Err((name, code)) => {
                return Err(Error::Config(format!(
                    "cannot create topic {name}: {code}; create it on the broker first"
                )))
            }
        }
    }
    Ok(())
}

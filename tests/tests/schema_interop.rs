//! Wire compatibility with Confluent's own clients: Python `confluent-kafka`'s Avro, Protobuf
//! and JSON Schema serializers and deserializers (PyPI), talking to the test registry, on
//! tansu. The `avro_hits` example counts the Avro hits Python wrote (its registry settings
//! from a config file, with basic auth); Python reads the Avro records the example wrote;
//! the library decodes Python's Protobuf and JSON Schema records, and Python decodes the
//! library's. Skipped, with a message, only where Python or PyPI is missing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};
use serde_json::Value;
use streams_core::prelude::*;
use streams_core::schema::{JsonSchemaRecord, ProtobufRecord, RegistrySettings};
use streams_tests::registry::TestRegistry;
use streams_tests::tools::{build_dir, create_topic, start_tansu, tansu, venv};
use streams_tests::{example_binary, Child};

const CLIENT: &str = "confluent-kafka[avro,json,protobuf,schemaregistry]==2.16.1";
const AUTH: &str = "interop:pa55";
/// One record per batch: tansu reports a partition's end as its last batch's start + 1.
const ONE_PER_BATCH: &str = "--config=batch.num.messages=1";

/// Python's `plant.Envelope.Reading` (a nested message: its records carry the indexes
/// [1, 0]), the same fields as JSON Schema.
#[record]
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    sensor: String,
    celsius: f64,
    count: i64,
    tags: Vec<String>,
}

impl ProtobufRecord for Reading {
    const PROTO: &'static str = r#"
        syntax = "proto3";
        package plant;
        message Other { string note = 1; }
        message Envelope {
            message Reading { string sensor = 1; double celsius = 2; int64 count = 3; repeated string tags = 4; }
        }
    "#;
    const MESSAGE: &'static str = "plant.Envelope.Reading";
}

impl JsonSchemaRecord for Reading {
    const SCHEMA: &'static str = r#"{"title": "Reading", "type": "object",
        "properties": {"sensor": {"type": "string"}, "celsius": {"type": "number"},
                       "count": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["sensor", "celsius", "count", "tags"]}"#;
}

const PROTO_RS: Topic<String, Reading> = Topic::new("readings-proto-rs").values(ValueCodec::protobuf());
const JSON_RS: Topic<String, Reading> = Topic::new("readings-json-rs").values(ValueCodec::json_schema());

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/schema_interop.py")
}

/// Runs the script; its JSON output.
fn python(python: &std::path::Path, args: &[&str]) -> Value {
    let output = Command::new(python)
        .arg(script())
        .args(args)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "schema_interop.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

/// Every record of partition 0 of `topic` (key, value bytes), read until nothing comes for
/// 5 s (tansu's high watermark cannot say where a partition ends).
fn read_to_end(bootstrap: &str, topic: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("interop-reader-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut partition = rdkafka::TopicPartitionList::new();
    partition
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .expect("offset");
    consumer.assign(&partition).expect("assign");
    let mut out = Vec::new();
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(5) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push((m.key().map(<[u8]>::to_vec), m.payload().unwrap_or_default().to_vec()));
            idle_since = Instant::now();
        }
    }
    out
}

fn produce(bootstrap: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("batch.num.messages", "1")
        .create()
        .expect("producer");
    for (key, value) in records {
        producer
            .send(BaseRecord::to(topic).key(key.as_bytes()).payload(value.as_slice()))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

fn reading(value: &Value) -> Reading {
    serde_json::from_value(value.clone()).expect("a reading")
}

#[test]
fn confluent_python_clients_and_streams_read_each_other() {
    let tools = venv(&build_dir().join("schema-interop-venv"), &[CLIENT]).and_then(|py| Ok((py, tansu()?)));
    let (py, tansu) = match tools {
        Ok(tools) => tools,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    streams_core::init_logging("error");
    let (user, password) = AUTH.split_once(':').expect("user:password");
    let registry = TestRegistry::start(Some((user, password)));
    let (_broker, bootstrap) = start_tansu(&tansu);
    create_topic(&bootstrap, "hit_count_avro", 2);
    for topic in [
        "readings-proto-py",
        "readings-json-py",
        "readings-proto-rs",
        "readings-json-rs",
    ] {
        create_topic(&bootstrap, topic, 1);
    }
    let sent = python(&py, &["produce", &bootstrap, &registry.url, AUTH, "2000"]);
    let hits = sent["hits"].as_array().expect("hits");
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for hit in hits.iter().filter(|hit| hit["hits"].as_i64() > Some(20)) {
        *expected
            .entry(hit["userId"].as_str().expect("user").to_string())
            .or_default() += 1;
    }
    assert!(expected.len() > 5, "{expected:?}");

    // 1. The example counts Python's Avro hits; its registry settings from a config file.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("client.properties");
    std::fs::write(
        &config,
        format!(
            "bootstrap.servers={bootstrap}\nschema.registry.url={}\nbasic.auth.user.info={AUTH}\n",
            registry.url
        ),
    )
    .expect("config file");
    let data = dir.path().join("data");
    let (config, data) = (config.to_str().expect("utf8"), data.to_str().expect("utf8"));
    let args = [
        "worker",
        "-l",
        "info",
        "--config-file",
        config,
        "--data-dir",
        data,
        "--idle-exit",
        "15",
        ONE_PER_BATCH,
    ];
    let mut worker = Child::spawn(&example_binary("avro_hits"), &args);
    assert_eq!(
        worker.wait(Duration::from_secs(240)),
        Some(0),
        "{}",
        worker.seen.join("\n")
    );
    let mut table = Child::spawn(
        &example_binary("avro_hits"),
        &["table", "major-count", "--data-dir", data],
    );
    assert_eq!(table.wait(Duration::from_secs(60)), Some(0));
    let counted: BTreeMap<String, i64> = table
        .seen
        .iter()
        .filter_map(|line| line.split_once('\t'))
        .map(|(user, count)| (user.to_string(), count.trim().parse().expect("a count")))
        .collect();
    assert_eq!(
        counted,
        expected,
        "the worker's last lines:\n{}",
        worker.seen.join("\n")
    );
    assert!(
        worker.seen.iter().all(|line| !line.contains("dead-letter")),
        "{}",
        worker.seen.join("\n")
    );

    // 2. Python reads the Avro records the example sent on (keyed by user).
    let major = hits.iter().filter(|hit| hit["hits"].as_i64() > Some(20)).count();
    let read = python(
        &py,
        &[
            "consume",
            &bootstrap,
            &registry.url,
            AUTH,
            "count_topic_avro",
            "avro",
            &major.to_string(),
        ],
    );
    let read = read.as_array().expect("records");
    assert_eq!(read.len(), major);
    let mut by_user: BTreeMap<String, i64> = BTreeMap::new();
    for record in read {
        let (key, value) = (record[0].as_str().expect("key"), &record[1]);
        assert_eq!(value["userId"].as_str(), Some(key), "{record}");
        assert!(
            value["hits"].as_i64() > Some(20) && value["timestamp"].is_f64(),
            "{record}"
        );
        *by_user.entry(key.to_string()).or_default() += 1;
    }
    assert_eq!(by_user, expected);

    // 3. The library reads Python's Protobuf and JSON Schema records.
    let mut settings = RegistrySettings::new(&registry.url);
    settings.basic_auth = Some(AUTH.to_string());
    settings.install().expect("install");
    let readings: Vec<Reading> = sent["readings"]
        .as_array()
        .expect("readings")
        .iter()
        .map(reading)
        .collect();
    for (topic, codec) in [
        (
            "readings-proto-py",
            Topic::<String, Reading>::new("readings-proto-py")
                .values(ValueCodec::protobuf())
                .value_codec(),
        ),
        (
            "readings-json-py",
            Topic::<String, Reading>::new("readings-json-py")
                .values(ValueCodec::json_schema())
                .value_codec(),
        ),
    ] {
        let got: Vec<Reading> = read_to_end(&bootstrap, topic)
            .iter()
            .map(|(_, value)| codec.decode(value).unwrap_or_else(|e| panic!("{topic}: {e}")))
            .collect();
        assert_eq!(got, readings, "{topic}");
    }

    // 4. Python reads the library's Protobuf and JSON Schema records.
    for (topic, codec, form) in [
        ("readings-proto-rs", PROTO_RS.value_codec(), "protobuf"),
        ("readings-json-rs", JSON_RS.value_codec(), "json"),
    ] {
        let records: Vec<(String, Vec<u8>)> = readings
            .iter()
            .map(|r| (r.sensor.clone(), codec.encode(r).expect("encode")))
            .collect();
        produce(&bootstrap, topic, &records);
        let read = python(
            &py,
            &[
                "consume",
                &bootstrap,
                &registry.url,
                AUTH,
                topic,
                form,
                &readings.len().to_string(),
            ],
        );
        let got: Vec<Reading> = read
            .as_array()
            .expect("records")
            .iter()
            .map(|r| reading(&r[1]))
            .collect();
        assert_eq!(got, readings, "{topic}");
    }
}

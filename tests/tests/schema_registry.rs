//! Avro, Protobuf and JSON Schema codecs with a schema registry (the test registry of
//! `streams_tests::registry`, which requires basic auth here): records decoded by the id they
//! carry, schema evolution, subjects and their strategies, keys, records that do not decode
//! (to the dead-letter topic, with the reason) and a registry that cannot be reached (the
//! worker stops before the record instead).

use std::sync::OnceLock;

use tokio::sync::{Mutex, MutexGuard};

use apache_avro::AvroSchema;
use streams_core::prelude::*;
use streams_core::schema::{AvroKey, JsonSchemaRecord, ProtobufRecord, RegistrySettings, SubjectName};
use streams_core::testing::TestDriver;
use streams_tests::avro_hits::{self, HitCount, HIT_COUNT_AVRO, MAJOR_COUNT};
use streams_tests::registry::TestRegistry;

const USER: &str = "streams";
const PASSWORD: &str = "s3cret";

/// The file's registry, installed with its credentials; tests take turns (they share it and
/// some stop it or change the credentials).
async fn registry() -> (&'static TestRegistry, MutexGuard<'static, ()>) {
    static REGISTRY: OnceLock<TestRegistry> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::const_new(());
    let turn = TURN.lock().await;
    let registry = REGISTRY.get_or_init(|| TestRegistry::start(Some((USER, PASSWORD))));
    registry.set_down(false);
    install(registry, PASSWORD);
    (registry, turn)
}

fn install(registry: &TestRegistry, password: &str) {
    let mut settings = RegistrySettings::new(&registry.url);
    settings.basic_auth = Some(format!("{USER}:{password}"));
    settings.install().expect("install");
}

/// Confluent's framing of an Avro datum written with `schema` (registered as `id`).
fn avro_bytes(id: usize, schema: &str, value: apache_avro::types::Value) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(schema).expect("schema");
    let mut bytes = vec![0];
    bytes.extend_from_slice(&(id as u32).to_be_bytes());
    bytes.extend(apache_avro::to_avro_datum(&schema, value).expect("datum"));
    bytes
}

fn hit(hits: i64, user: &str) -> HitCount {
    HitCount {
        hits,
        timestamp: 1_700_000_000.5,
        user_id: user.into(),
    }
}

fn dead_letter_errors(driver: &TestDriver, agent: &str) -> Vec<String> {
    driver
        .dead_letters(agent)
        .iter()
        .map(|r| r.header("streams.dlq.error").unwrap_or_default().to_string())
        .collect()
}

/// The Avro example in the test driver: records the library wrote, records of an evolved
/// schema, and three that do not decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_are_counted_and_those_that_do_not_decode_go_to_the_dead_letter_topic() {
    let (registry, _turn) = registry().await;
    let mut driver = TestDriver::new(avro_hits::app()).expect("driver");
    for (hits, user) in [(30, "ann"), (10, "bob"), (25, "ann"), (99, "bob")] {
        driver.pipe(&HIT_COUNT_AVRO, &(), &hit(hits, user)).expect("pipe");
    }
    // A producer with a newer schema (a field more, which the reader skips).
    let evolved = r#"{"type":"record","name":"HitCount","fields":[
        {"name":"hits","type":"long"},{"name":"timestamp","type":"double"},
        {"name":"userId","type":"string"},{"name":"page","type":"string"}]}"#;
    let evolved_id = registry.register("hit_count_avro-value", evolved, "AVRO");
    use apache_avro::types::Value;
    let record =
        |fields: Vec<(&str, Value)>| Value::Record(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    driver.pipe_raw(
        "hit_count_avro",
        None,
        Some(&avro_bytes(
            evolved_id,
            evolved,
            record(vec![
                ("hits", Value::Long(50)),
                ("timestamp", Value::Double(1.5)),
                ("userId", Value::String("cy".into())),
                ("page", Value::String("/home".into())),
            ]),
        )),
    );
    // Not in the wire format, an id the registry does not know, a schema that does not resolve.
    driver.pipe_raw("hit_count_avro", None, Some(br#"{"hits": 30, "userId": "dan"}"#));
    driver.pipe_raw("hit_count_avro", None, Some(&[0, 0, 0, 0x7f, 0xff, 2, 4]));
    let wrong = r#"{"type":"record","name":"HitCount","fields":[{"name":"hits","type":"string"}]}"#;
    let wrong_id = registry.register("hit_count_avro-value", wrong, "AVRO");
    driver.pipe_raw(
        "hit_count_avro",
        None,
        Some(&avro_bytes(
            wrong_id,
            wrong,
            record(vec![("hits", Value::String("many".into()))]),
        )),
    );
    driver.run().await.expect("run");

    let counts = driver.table(&MAJOR_COUNT).expect("table");
    let expected: std::collections::BTreeMap<String, i64> =
        [("ann".to_string(), 2), ("bob".to_string(), 1), ("cy".to_string(), 1)].into();
    assert_eq!(counts, expected);
    let errors = dead_letter_errors(&driver, "find_major_hits");
    assert_eq!(errors.len(), 3, "{errors:?}");
    // Unkeyed records spread over the partitions: the dead letters come in any order.
    let reasons = [
        "wrong magic byte 123".to_string(),
        "ids/32767: Schema not found (error 40403)".to_string(),
        format!("schema id {wrong_id} does not decode as HitCount"),
    ];
    for reason in &reasons {
        assert_eq!(
            errors.iter().filter(|e| e.contains(reason.as_str())).count(),
            1,
            "{reason} in {errors:?}"
        );
    }
    assert_eq!(driver.metrics().fatal(), None);
    let subjects = registry.subjects();
    for subject in ["hit_count_avro-value", "count_topic_avro-value"] {
        assert!(subjects.iter().any(|s| s == subject), "{subject} in {subjects:?}");
    }
    // The agents' internal records are Avro too, and read back as written.
    let sent = driver.records(&avro_hits::COUNT_TOPIC_AVRO).expect("records");
    assert_eq!(sent.len(), 4);
    assert!(sent.contains(&("ann".to_string(), hit(30, "ann"))), "{sent:?}");
}

/// A reading, in Protobuf (a nested message) and in JSON Schema.
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
        import "google/protobuf/timestamp.proto";
        message Other { google.protobuf.Timestamp at = 1; }
        message Envelope {
            message Reading { string sensor = 1; double celsius = 2; int64 count = 3; repeated string tags = 4; }
        }
    "#;
    const MESSAGE: &'static str = "plant.Envelope.Reading";
}

impl JsonSchemaRecord for Reading {
    const SCHEMA: &'static str = r#"{
        "title": "Reading",
        "type": "object",
        "properties": {
            "sensor": {"type": "string"},
            "celsius": {"type": "number", "minimum": -273.15},
            "count": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}}
        },
        "required": ["sensor", "celsius", "count", "tags"]
    }"#;
}

const READINGS_PROTO: Topic<String, Reading> = Topic::new("readings-proto").values(ValueCodec::protobuf());
const READINGS_JSON: Topic<String, Reading> = Topic::new("readings-json").values(ValueCodec::json_schema());

fn reading(sensor: &str, celsius: f64, count: i64) -> Reading {
    Reading {
        sensor: sensor.into(),
        celsius,
        count,
        tags: vec!["a".into(), format!("n{count}")],
    }
}

/// Protobuf in, JSON Schema out: values (64-bit integers, repeated fields, a nested message
/// of a file with an import) go through both; a message that does not decode and a value
/// its JSON Schema refuses go to the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_records_become_json_schema_records() {
    let (registry, _turn) = registry().await;
    let app = App::new("plant").pipeline("convert", |builder| {
        builder.stream(READINGS_PROTO).to(READINGS_JSON);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    let big = i64::MAX - 7;
    driver
        .pipe(&READINGS_PROTO, "s1", &reading("s1", 21.5, big))
        .expect("pipe");
    driver
        .pipe(&READINGS_PROTO, "s2", &reading("s2", -300.0, 1))
        .expect("pipe");
    driver
        .pipe(&READINGS_PROTO, "s3", &reading("s3", 0.0, 0))
        .expect("pipe");
    let first = driver.raw_records("readings-proto")[0].value.clone().expect("value");
    assert_eq!(
        &first[5..8],
        &[4, 2, 0],
        "the nested message's indexes [1, 0]: count 2, then 1 and 0"
    );
    let mut broken = first[..8].to_vec();
    broken.extend_from_slice(&[0xff, 0xff, 0xff]);
    driver.pipe_raw("readings-proto", Some(b"s4"), Some(&broken));
    driver.run().await.expect("run");

    let mut out = driver.records(&READINGS_JSON).expect("records");
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let sensors: Vec<(String, i64)> = out.iter().map(|(k, r)| (k.clone(), r.count)).collect();
    assert_eq!(sensors, vec![("s1".to_string(), big), ("s3".to_string(), 0)]);
    assert_eq!(out[0].1, reading("s1", 21.5, big));
    let errors = dead_letter_errors(&driver, "convert");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("-273.15")),
        "the JSON Schema's minimum: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("not a plant.Envelope.Reading message")),
        "{errors:?}"
    );
    let subjects = registry.subjects();
    assert!(subjects.contains(&"readings-proto-value".to_string()), "{subjects:?}");
    assert!(subjects.contains(&"readings-json-value".to_string()), "{subjects:?}");
}

/// Subject name strategies, sending without registering, and a codec without its topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_follow_the_strategy_and_unregistered_schemas_are_refused_when_asked() {
    let (registry, _turn) = registry().await;
    let value = hit(1, "ann");
    const BY_RECORD: Topic<(), HitCount> =
        Topic::new("strategy-record").values(ValueCodec::avro().subject_name(SubjectName::Record));
    const BY_TOPIC_RECORD: Topic<(), HitCount> =
        Topic::new("strategy-topic-record").values(ValueCodec::avro().subject_name(SubjectName::TopicRecord));
    const UNREGISTERED: Topic<(), HitCount> =
        Topic::new("not-registered").values(ValueCodec::avro().register_schemas(false));
    BY_RECORD.value_codec().encode(&value).expect("encode");
    BY_TOPIC_RECORD.value_codec().encode(&value).expect("encode");
    let subjects = registry.subjects();
    assert!(subjects.contains(&"HitCount".to_string()), "{subjects:?}");
    assert!(
        subjects.contains(&"strategy-topic-record-HitCount".to_string()),
        "{subjects:?}"
    );

    let error = UNREGISTERED.value_codec().encode(&value).unwrap_err().to_string();
    assert!(
        error.contains("not-registered-value") && error.contains("40401"),
        "{error}"
    );
    let schema = serde_json::to_string(&HitCount::get_schema()).expect("schema");
    let id = registry.register("not-registered-value", &schema, "AVRO");
    let bytes = UNREGISTERED.value_codec().encode(&value).expect("registered now");
    assert_eq!(&bytes[1..5], &(id as u32).to_be_bytes());
    assert_eq!(UNREGISTERED.value_codec().decode(&bytes).expect("decode"), value);

    let error = ValueCodec::<HitCount>::avro().encode(&value).unwrap_err().to_string();
    assert!(error.contains("does not know its topic"), "{error}");
}

#[record(avro)]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct UserKey {
    region: String,
    #[serde(rename = "userId")]
    user_id: i64,
}

const CLICKS: Topic<AvroKey<UserKey>, i64> = Topic::new("clicks");
const CLICK_TOTALS: Topic<AvroKey<UserKey>, i64> = Topic::new("click-totals");
const CLICK_SUMS: Table<AvroKey<UserKey>, i64> = Table::new("click-sums");

/// Avro keys: registered under their record name, grouped by in a pipeline, shown as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_keys_group_and_read_back() {
    let (registry, _turn) = registry().await;
    let app = App::new("clicks").pipeline("totals", |builder| {
        builder
            .stream(CLICKS)
            .group_by_key()
            .reduce(CLICK_SUMS, |a, b| a + b)
            .to_stream()
            .to(CLICK_TOTALS);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    let key = |user_id| {
        AvroKey(UserKey {
            region: "eu".into(),
            user_id,
        })
    };
    for (user, clicks) in [(1, 2), (2, 5), (1, 3)] {
        driver.pipe(&CLICKS, &key(user), &clicks).expect("pipe");
    }
    driver.run().await.expect("run");
    let totals = driver.records(&CLICK_TOTALS).expect("records");
    let last: std::collections::BTreeMap<i64, i64> = totals.iter().map(|(k, v)| (k.0.user_id, *v)).collect();
    assert_eq!(last, [(1, 5), (2, 5)].into());
    assert!(registry.subjects().contains(&"UserKey".to_string()));
    let bytes = key(7).encode_key().expect("bytes");
    assert_eq!(bytes[0], 0, "the wire format");
    assert_eq!(AvroKey::<UserKey>::display_key(&bytes), r#"{"region":"eu","userId":7}"#);
    assert_eq!(
        AvroKey::<UserKey>::parse_key(r#"{"region":"eu","userId":7}"#).expect("parse"),
        key(7)
    );
}

/// A registry that cannot be reached is nobody's fault: the worker stops before the record
/// (nothing to the dead-letter topic, nothing committed past it), and wrong credentials say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_stops_the_worker_before_the_record() {
    let (registry, _turn) = registry().await;
    let mut driver = TestDriver::new(avro_hits::app()).expect("driver");
    driver.pipe(&HIT_COUNT_AVRO, &(), &hit(30, "ann")).expect("pipe");
    driver.run().await.expect("run");
    assert_eq!(driver.committed("hit_count_avro", 0).map(|o| o > 0), Some(true));
    let committed: Vec<Option<i64>> = (0..driver.partitions("hit_count_avro"))
        .map(|p| driver.committed("hit_count_avro", p))
        .collect();
    // A schema this process has not met: its id must be fetched.
    let newer = r#"{"type":"record","name":"HitCount","fields":[
        {"name":"hits","type":"long"},{"name":"timestamp","type":"double"},
        {"name":"userId","type":"string"},{"name":"v","type":"int","default":0}]}"#;
    let id = registry.register("hit_count_avro-value", newer, "AVRO");
    use apache_avro::types::Value;
    let value = Value::Record(vec![
        ("hits".into(), Value::Long(40)),
        ("timestamp".into(), Value::Double(2.0)),
        ("userId".into(), Value::String("bob".into())),
        ("v".into(), Value::Int(1)),
    ]);
    registry.set_down(true);
    let (partition, offset) = driver.pipe_raw("hit_count_avro", None, Some(&avro_bytes(id, newer, value)));
    let _ = driver.run().await;
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(
        fatal.contains("unavailable") && fatal.contains(&format!("hit_count_avro[{partition}]@{offset}")),
        "{fatal}"
    );
    assert!(driver.dead_letters("find_major_hits").is_empty());
    assert_eq!(
        driver.committed("hit_count_avro", partition),
        committed[partition as usize]
    );
    registry.set_down(false);

    // A pipeline too: its source stops before the record instead of sending it on.
    let app = App::new("plant").pipeline("convert", |builder| {
        builder.stream(READINGS_PROTO).to(READINGS_JSON);
    });
    let mut driver = TestDriver::new(app).expect("driver");
    let other = r#"syntax = "proto3"; package plant; message Reading { string sensor = 1; double celsius = 2; int64 count = 3; repeated string tags = 4; int32 v = 5; }"#;
    let id = registry.register("readings-proto-value", other, "PROTOBUF");
    let mut bytes = vec![0];
    bytes.extend_from_slice(&(id as u32).to_be_bytes());
    bytes.extend_from_slice(&[0, 0x0a, 0x02, b's', b'9']);
    registry.set_down(true);
    let (partition, offset) = driver.pipe_raw("readings-proto", Some(b"s9"), Some(&bytes));
    let _ = driver.run().await;
    let fatal = driver.metrics().fatal().unwrap_or_default();
    assert!(
        fatal.contains("unavailable") && fatal.contains(&format!("readings-proto[{partition}]@{offset}")),
        "{fatal}"
    );
    assert!(driver.dead_letters("convert").is_empty());
    assert_eq!(driver.committed("readings-proto", partition), None);
    registry.set_down(false);

    install(registry, "wrong");
    const OTHER: Topic<(), HitCount> = Topic::new("auth-check").values(ValueCodec::avro());
    let error = OTHER.value_codec().encode(&hit(1, "x")).unwrap_err().to_string();
    assert!(
        error.contains("Unauthorized") && error.contains("unavailable"),
        "{error}"
    );
    install(registry, PASSWORD);
    OTHER
        .value_codec()
        .encode(&hit(1, "x"))
        .expect("with the right credentials");
}

/// The codecs on arbitrary bytes (framed with ids the registry may or may not know): a value
/// or an error, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_codecs_never_panic_on_arbitrary_bytes() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let (_registry, _turn) = registry().await;
    // Schemas of each kind, so that ids 1.. name real ones.
    HIT_COUNT_AVRO.value_codec().encode(&hit(1, "a")).expect("avro");
    READINGS_PROTO
        .value_codec()
        .encode(&reading("s", 1.0, 1))
        .expect("protobuf");
    READINGS_JSON.value_codec().encode(&reading("s", 1.0, 1)).expect("json");
    let bytes = (0..12u32, proptest::collection::vec(any::<u8>(), 0..48)).prop_map(|(id, payload)| {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend(payload);
        bytes
    });
    tokio::task::block_in_place(|| {
        TestRunner::new(Config::with_cases(300))
            .run(&bytes, |bytes| {
                let _ = HIT_COUNT_AVRO.value_codec().decode(&bytes);
                let _ = READINGS_PROTO.value_codec().decode(&bytes);
                let _ = READINGS_JSON.value_codec().decode(&bytes);
                let _ = AvroKey::<UserKey>::decode_key(Some(&bytes));
                Ok(())
            })
            .expect("no panic");
    });
}

/// HTTPS with the registry's CA from `schema.registry.ssl.ca.location`; without it, the
/// registry's certificate is not trusted and the registry is unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_over_https_is_reached_with_its_ca_file() {
    let (_plain, _turn) = registry().await;
    let (registry, pem) = TestRegistry::start_tls(None);
    assert!(registry.url.starts_with("https://localhost:"), "{}", registry.url);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).expect("ca file");
    const OVER_TLS: Topic<(), HitCount> = Topic::new("over-tls").values(ValueCodec::avro());
    let value = hit(3, "tls");

    RegistrySettings::new(&registry.url).install().expect("install");
    let error = OVER_TLS.value_codec().encode(&value).unwrap_err().to_string();
    assert!(error.contains("unavailable"), "an unknown CA: {error}");

    let settings = RegistrySettings::from_config(&[
        ("schema.registry.url".to_string(), registry.url.clone()),
        ("schema.registry.ssl.ca.location".to_string(), ca.display().to_string()),
    ])
    .expect("settings");
    settings.install().expect("install");
    let bytes = OVER_TLS.value_codec().encode(&value).expect("over https");
    assert_eq!(OVER_TLS.value_codec().decode(&bytes).expect("decode"), value);
    assert_eq!(registry.subjects(), vec!["over-tls-value".to_string()]);
}

/// Sending too: an agent's send and a pipeline's sink that cannot reach the registry stop the
/// worker before the record; the records read back once it is there again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_on_send_stops_the_worker_before_the_record() {
    let (registry, _turn) = registry().await;
    // A client of its own (caches empty): the inputs' schemas get known when they are piped,
    // the outputs' are not.
    install(registry, "other");
    install(registry, PASSWORD);
    let mut agents = TestDriver::new(avro_hits::app()).expect("driver");
    let (partition, offset) = agents.pipe(&HIT_COUNT_AVRO, &(), &hit(30, "ann")).expect("pipe");
    let app = App::new("plant").pipeline("convert", |builder| {
        builder.stream(READINGS_PROTO).to(READINGS_JSON);
    });
    let mut pipeline = TestDriver::new(app).expect("driver");
    let (proto_partition, proto_offset) = pipeline
        .pipe(&READINGS_PROTO, "s1", &reading("s1", 1.0, 1))
        .expect("pipe");

    registry.set_down(true);
    let _ = agents.run().await;
    let _ = pipeline.run().await;
    registry.set_down(false);
    // Each stopped at its output (the input's schema was known).
    for (driver, agent, at, output) in [
        (
            &agents,
            "find_major_hits",
            format!("hit_count_avro[{partition}]@{offset}"),
            "topic `count_topic_avro`",
        ),
        (
            &pipeline,
            "convert",
            format!("readings-proto[{proto_partition}]@{proto_offset}"),
            "topic `readings-json`",
        ),
    ] {
        let fatal = driver.metrics().fatal().unwrap_or_default();
        assert!(
            fatal.contains("unavailable") && fatal.contains(&at) && fatal.contains(output),
            "{agent}: {fatal}"
        );
        assert!(driver.dead_letters(agent).is_empty(), "{agent}");
    }
    assert_eq!(agents.committed("hit_count_avro", partition), None);
    assert_eq!(pipeline.committed("readings-proto", proto_partition), None);
    assert!(agents
        .records(&avro_hits::COUNT_TOPIC_AVRO)
        .expect("records")
        .is_empty());
    assert!(pipeline.records(&READINGS_JSON).expect("records").is_empty());
}

//! Broker-free engine throughput through the test driver (the runtime's real task loop):
//! the seed pipeline (decode, filter, send to the internal topic, decode again, count) with
//! the memory store and with RocksDB, on one core (a single-threaded runtime: the figure is
//! per core), written as agents and as a DSL pipeline (same work: the DSL's repartition topic
//! is the agents' internal topic). The seed has 20 users, so the counts live in the table
//! cache; the "every record a new key" case makes every count a store read and a store write.
//! Run with `make bench`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use streams_core::prelude::*;
use streams_core::testing::{Stores, TestDriver};
use streams_examples::seed;
use streams_tests::{hit_counter, hit_counter_dsl};

/// The seed's records with event time from their `timestamp` field.
const HITS: Topic<(), hit_counter_dsl::HitCount> =
    Topic::new("hit_count").event_time(|hit| (hit.timestamp * 1000.0) as i64);
const PER_USER: Table<String, i64> = Table::new("hits-per-user");
const PER_USER_MINUTE: WindowedTable<String, i64> = WindowedTable::new("hits-per-user-minute");

/// Every record counted per user (no filter): the plain count the windowed one is compared with.
fn plain_count() -> App {
    App::new("plain").pipeline("count", |builder| {
        builder
            .stream(HITS)
            .group_by("by-user", |_, hit| hit.user_id.clone())
            .count(PER_USER);
    })
}

/// Every record counted per user and minute of event time (tumbling windows, 10 s grace).
fn windowed_count() -> App {
    App::new("windowed").pipeline("count", |builder| {
        builder
            .stream(HITS)
            .group_by("by-user", |_, hit| hit.user_id.clone())
            .windowed_by(TimeWindows::of(Duration::from_secs(60)).grace(Duration::from_secs(10)))
            .count(PER_USER_MINUTE);
    })
}

const RECORDS: usize = 200_000;

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let seed_inputs: Vec<Vec<u8>> = seed::hits(1, RECORDS)
        .iter()
        .map(|r| r.to_string().into_bytes())
        .collect();
    let distinct_inputs: Vec<Vec<u8>> = (0..RECORDS)
        .map(|i| format!(r#"{{"hits":30,"timestamp":1.0,"userId":"u{i:07}"}}"#).into_bytes())
        .collect();
    let mut group = c.benchmark_group("seed pipeline, broker-free, one core");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let agents = hit_counter::app as fn() -> streams_core::App;
    let (plain_count, windowed_count) = (plain_count as fn() -> App, windowed_count as fn() -> App);
    let dsl = hit_counter_dsl::app as fn() -> streams_core::App;
    let cases = [
        ("agents, memory store", agents, false, &seed_inputs),
        ("DSL, memory store", dsl, false, &seed_inputs),
        ("agents, RocksDB store", agents, true, &seed_inputs),
        ("DSL, RocksDB store", dsl, true, &seed_inputs),
        (
            "agents, RocksDB store, every record a new key",
            agents,
            true,
            &distinct_inputs,
        ),
        (
            "DSL, RocksDB store, every record a new key",
            dsl,
            true,
            &distinct_inputs,
        ),
        ("count per user, RocksDB store", plain_count, true, &seed_inputs),
        (
            "count per user and minute (tumbling windows), RocksDB store",
            windowed_count,
            true,
            &seed_inputs,
        ),
    ];
    for (name, app, rocksdb, inputs) in cases {
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let stores = if rocksdb {
                        Stores::RocksDb(dir.path().to_path_buf())
                    } else {
                        Stores::Memory
                    };
                    total += runtime.block_on(async {
                        let mut driver = TestDriver::with_stores(app(), &[("hit_count", 4)], stores).expect("driver");
                        for input in inputs {
                            driver.pipe_raw("hit_count", None, Some(input));
                        }
                        let began = Instant::now();
                        driver.run().await.expect("run");
                        began.elapsed()
                    });
                }
                total
            })
        });
    }
    group.finish();
}

/// A user's row in the join's table.
#[record]
#[derive(Clone, Default)]
struct Region {
    region: String,
}

const USERS: Topic<String, Region> = Topic::new("users");
const USERS_STORE: Table<String, Region> = Table::new("users-store");
const VIEWS: Topic<String, hit_counter_dsl::HitCount> = Topic::new("views");
const ENRICHED: Topic<String, String> = Topic::new("views-with-region");

/// Each record joined with its user's row (a stream-table join), the region sent on.
fn join() -> App {
    App::new("join").pipeline("join", |builder| {
        let users = builder.table(USERS, USERS_STORE);
        builder
            .stream(VIEWS)
            .join(&users, |_, _, user| user.region.clone())
            .to(ENRICHED);
    })
}

/// A stream-table join with the RocksDB store: 10,000 users in the table, every record a
/// lookup of one of them.
fn stream_table_join(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    const USER_COUNT: usize = 10_000;
    let rows: Vec<(Vec<u8>, Vec<u8>)> = (0..USER_COUNT)
        .map(|u| {
            (
                format!("u{u}").into_bytes(),
                format!(r#"{{"region":"r{}"}}"#, u % 7).into_bytes(),
            )
        })
        .collect();
    let views: Vec<(Vec<u8>, Vec<u8>)> = (0..RECORDS)
        .map(|i| {
            let user = format!("u{}", (i * 7919) % USER_COUNT);
            let value = format!(r#"{{"hits":30,"timestamp":1.0,"userId":"{user}"}}"#);
            (user.into_bytes(), value.into_bytes())
        })
        .collect();
    let mut group = c.benchmark_group("stream-table join, broker-free, one core");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("join with a table of 10,000 users, RocksDB store", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let dir = tempfile::tempdir().expect("tempdir");
                let stores = Stores::RocksDb(dir.path().to_path_buf());
                total += runtime.block_on(async {
                    let partitions = [("users", 4), ("views", 4)];
                    let mut driver = TestDriver::with_stores(join(), &partitions, stores).expect("driver");
                    for (key, value) in &rows {
                        driver.pipe_raw_at("users", Some(key), Some(value), 0);
                    }
                    driver.run().await.expect("table");
                    for (key, value) in &views {
                        driver.pipe_raw_at("views", Some(key), Some(value), 1);
                    }
                    let began = Instant::now();
                    driver.run().await.expect("run");
                    began.elapsed()
                });
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline, stream_table_join);
criterion_main!(benches);

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

criterion_group!(benches, pipeline);
criterion_main!(benches);

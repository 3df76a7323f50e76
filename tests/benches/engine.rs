//! Broker-free engine throughput through the test driver (the runtime's real task loop):
//! the seed pipeline (decode, filter, send to the internal topic, decode again, count) with
//! the memory store and with RocksDB, on one core (a single-threaded runtime: the figure is
//! per core). The seed has 20 users, so the counts live in the table cache; the third case
//! gives every record its own user, so every count is a store read and a store write.
//! Run with `make bench`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use streams_core::testing::{Stores, TestDriver};
use streams_examples::seed;
use streams_tests::hit_counter::app;

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
    let cases = [
        ("memory store", false, &seed_inputs),
        ("RocksDB store", true, &seed_inputs),
        ("RocksDB store, every record a new key", true, &distinct_inputs),
    ];
    for (name, rocksdb, inputs) in cases {
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

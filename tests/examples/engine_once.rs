//! One run of the broker-free seed pipeline on a single-threaded runtime, for profilers
//! (`valgrind --tool=callgrind`, `perf record`):
//! `engine_once [records] [memory|rocksdb] [agents|dsl]`.
//! Prints the rate and the heap allocations per input record of the timed run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

use streams_core::testing::{Stores, TestDriver};
use streams_examples::seed;
use streams_tests::{hit_counter, hit_counter_dsl};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let records: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(200_000);
    let rocksdb = args.next().is_some_and(|s| s == "rocksdb");
    let dsl = args.next().is_some_and(|s| s == "dsl");
    let app = if dsl {
        hit_counter_dsl::app()
    } else {
        hit_counter::app()
    };
    let inputs: Vec<Vec<u8>> = seed::hits(1, records)
        .iter()
        .map(|r| r.to_string().into_bytes())
        .collect();
    let dir = tempfile::tempdir()?;
    let stores = if rocksdb {
        Stores::RocksDb(dir.path().to_path_buf())
    } else {
        Stores::Memory
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let elapsed = runtime.block_on(async {
        let mut driver = TestDriver::with_stores(app, &[("hit_count", 4)], stores)?;
        for input in &inputs {
            driver.pipe_raw("hit_count", None, Some(input));
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed);
        let began = Instant::now();
        driver.run().await?;
        Ok::<_, streams_core::Error>((began.elapsed(), ALLOCATIONS.load(Ordering::Relaxed) - allocations))
    })?;
    let (elapsed, allocations) = elapsed;
    println!(
        "{records} records in {:.3}s: {:.0} records/s on one thread ({}, {}), {:.1} allocations per record",
        elapsed.as_secs_f64(),
        records as f64 / elapsed.as_secs_f64(),
        if rocksdb { "RocksDB" } else { "memory" },
        if dsl { "DSL" } else { "agents" },
        allocations as f64 / records as f64
    );
    Ok(())
}

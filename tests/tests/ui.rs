//! Wiring mistakes fail `cargo build` with a span on the user's token (compile-fail cases
//! with their `.stderr` snapshots), and every supported form compiles and runs (pass cases).
//! Regenerate snapshots with `TRYBUILD=overwrite cargo test -p streams-tests --test ui`.
//!
//! trybuild builds its cases in a target folder of its own, so it would compile RocksDB's
//! C++ once more (unoptimised: ~13 minutes on 2 cores). It links the RocksDB library the
//! test build already made instead: `librocksdb-sys` takes a prebuilt library from
//! `ROCKSDB_LIB_DIR`. That folder holds a linker script named `librocksdb.so` which points
//! at the test build's `librocksdb.a` and adds the C++ runtime (the build script links it
//! only when it compiles RocksDB itself).

use std::path::{Path, PathBuf};

/// The `librocksdb.a` that the build of this test compiled, if it can be found.
fn built_rocksdb() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/{profile}/deps/ui-… → target/{profile}/build/librocksdb-sys-*/out/librocksdb.a
    let profile = exe.parent()?.parent()?;
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(profile.join("build"))
        .ok()?
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("librocksdb-sys-"))
        .map(|entry| entry.path().join("out").join("librocksdb.a"))
        .filter_map(|path| Some((path.metadata().ok()?.modified().ok()?, path)))
        .collect();
    found.sort();
    found.pop().map(|(_, path)| path)
}

/// A folder for `ROCKSDB_LIB_DIR` whose `librocksdb.so` links `archive` and the C++ runtime.
fn prebuilt_dir(archive: &Path) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?.parent()?.join("tests").join("trybuild-rocksdb");
    std::fs::create_dir_all(&dir).ok()?;
    let script = format!("INPUT({} -lstdc++)\n", archive.display());
    let path = dir.join("librocksdb.so");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(script.as_str()) {
        std::fs::write(&path, script).ok()?;
    }
    Some(dir)
}

#[test]
fn ui() {
    if cfg!(target_os = "linux") && std::env::var_os("ROCKSDB_LIB_DIR").is_none() {
        match built_rocksdb().and_then(|archive| prebuilt_dir(&archive)) {
            // Read by the build script of `librocksdb-sys` in trybuild's own build.
            Some(dir) => std::env::set_var("ROCKSDB_LIB_DIR", dir),
            None => eprintln!("ui: the test build's librocksdb.a was not found; trybuild compiles RocksDB itself"),
        }
    }
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/fail/*.rs");
    cases.pass("ui/pass/*.rs");
}

//! Shared pieces of the example apps: the seed's random data, reproducible by seed.

/// The seed producer's records: `{"hits": <int>, "timestamp": <unix float>, "userId": <id>}`.
pub mod seed {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::{json, Value};

    /// Users the generator picks from.
    pub const USERS: u32 = 20;

    /// `count` records from `seed`: hits uniform in 0..=50, users uniform among [`USERS`],
    /// timestamps one millisecond apart.
    pub fn hits(seed: u64, count: usize) -> Vec<Value> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..count)
            .map(|i| {
                json!({
                    "hits": rng.random_range(0..=50),
                    "timestamp": 1_764_000_000.0 + i as f64 / 1000.0,
                    "userId": format!("user-{}", rng.random_range(0..USERS)),
                })
            })
            .collect()
    }

    /// What the hit counter must hold for `records`: per user, the records with hits > 20.
    pub fn expected_counts(records: &[Value]) -> std::collections::BTreeMap<String, i64> {
        let mut counts = std::collections::BTreeMap::new();
        for record in records {
            if record["hits"].as_i64().unwrap_or(0) > 20 {
                if let Some(user) = record["userId"].as_str() {
                    *counts.entry(user.to_string()).or_insert(0) += 1;
                }
            }
        }
        counts
    }
}

/// Tools the tests and the benchmark set up once per machine: Python venvs (PyPI) for the
/// peers (Faust, Quix Streams) and the clients they talk to.
pub mod tools {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Faust, as the migration test and the benchmark run it (one venv for both).
    pub const FAUST: &str = "faust-streaming==0.15.3";
    /// Quix Streams, the benchmark's peer for windowed aggregations.
    pub const QUIX_STREAMS: &str = "quixstreams==3.28.1";

    /// The build folder (`CARGO_TARGET_DIR`, or the one this program is in).
    pub fn build_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
            return PathBuf::from(dir);
        }
        let exe = std::env::current_exe().expect("the program's path");
        // target/<profile>/deps/<test>, target/<profile>/examples/<example>
        exe.ancestors().nth(3).expect("target folder").to_path_buf()
    }

    /// Runs `command`; its stderr's last lines when it fails.
    pub fn run(command: &mut Command) -> Result<(), String> {
        let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        Err(format!(
            "{command:?} failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }

    /// Why a venv could not be set up.
    #[derive(Debug)]
    pub enum VenvError {
        /// Not on this machine: no Python, no venv module, or pip cannot get the packages
        /// (PyPI out of reach, or none for this Python).
        Unavailable(String),
        /// Anything else: a fault to see.
        Failed(String),
    }

    /// A venv at `dir` with `packages` installed (once: a marker file names what it holds);
    /// a venv that cannot be set up for want of Python or PyPI is [`VenvError::Unavailable`].
    pub fn set_up_venv(dir: &Path, packages: &[&str]) -> Result<PathBuf, VenvError> {
        let python = dir.join("bin").join("python");
        let marker = dir.join("streams-installed");
        let wanted = packages.join(" ");
        if std::fs::read_to_string(&marker).is_ok_and(|held| held == wanted) && python.exists() {
            return Ok(python);
        }
        let system = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(Command::new(&system).arg("--version"))
            .map_err(|_| VenvError::Unavailable(format!("no Python ({system}) on this machine")))?;
        eprintln!("setting up {} with {wanted} (once)", dir.display());
        run(Command::new(&system).args(["-m", "venv"]).arg(dir)).map_err(|error| {
            if ["ensurepip", "No module named venv"]
                .iter()
                .any(|sign| error.contains(sign))
            {
                VenvError::Unavailable(format!("{system} cannot make a venv (Debian: python3-venv): {error}"))
            } else {
                VenvError::Failed(error)
            }
        })?;
        let mut pip = Command::new(&python);
        pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(packages);
        if let Err(error) = run(&mut pip) {
            let offline = [
                "NewConnectionError",
                "Temporary failure in name resolution",
                "Network is unreachable",
                "No matching distribution",
                "Could not find a version",
            ];
            if offline.iter().any(|sign| error.contains(sign)) {
                return Err(VenvError::Unavailable(format!(
                    "pip cannot get {wanted} (PyPI out of reach, or none for this Python): {error}"
                )));
            }
            return Err(VenvError::Failed(format!("pip cannot install {wanted}: {error}")));
        }
        std::fs::write(&marker, &wanted).map_err(|e| VenvError::Failed(e.to_string()))?;
        Ok(python)
    }

    /// [`set_up_venv`] for a test: `Err` (skip) when Python or PyPI is not available; any
    /// other failure panics (a fault to see, not a reason to skip).
    pub fn venv(dir: &Path, packages: &[&str]) -> Result<PathBuf, String> {
        match set_up_venv(dir, packages) {
            Ok(python) => Ok(python),
            Err(VenvError::Unavailable(why)) => Err(why),
            Err(VenvError::Failed(error)) => panic!("{error}"),
        }
    }

    /// The table of the seed's Faust app (`examples/peers/hit_counter.py`), from its web page
    /// (`GET /counts/` on `port`): counts per user; `None` while it does not answer.
    pub fn faust_counts(port: u16) -> Option<std::collections::BTreeMap<String, i64>> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
        stream
            .write_all(b"GET /counts/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        (head.split(' ').nth(1) == Some("200")).then_some(())?;
        serde_json::from_str(body).ok()
    }
}

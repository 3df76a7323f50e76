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

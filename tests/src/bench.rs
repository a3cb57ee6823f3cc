//! What the alternated benchmarks (`benches/triggers.rs`, `protocols.rs`, `wasi_nn.rs`) share:
//! their settings from the environment, and the median of their rounds.

use std::time::Duration;

/// How long each run lasts (`EDGEPLUG_BENCH_SECS`, default 5 s) and how many rounds of the
/// alternated runs there are (`EDGEPLUG_BENCH_ROUNDS`, default 3).
pub fn settings() -> (Duration, usize) {
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    (
        Duration::from_secs(env("EDGEPLUG_BENCH_SECS", 5)),
        env("EDGEPLUG_BENCH_ROUNDS", 3) as usize,
    )
}

/// The median of one figure's rounds (the upper one of an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

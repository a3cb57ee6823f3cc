//! What the benchmarks share: their settings from the environment, the median of their
//! rounds, the server's runtime and where their JSON results go.

use std::path::PathBuf;
use std::process::Command;
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

/// The runtime a benchmarked gateway serves on: one tokio worker, plus the blocking pool that
/// runs wasm, as on a small edge box.
pub fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Writes a benchmark's results to `target/bench/FILE` (pretty JSON) and returns the path.
pub fn write_json(file: &str, value: &impl serde::Serialize) -> std::path::PathBuf {
    let dir = crate::repo().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    path
}

/// The `edgeplug` binary for benchmarks that run it as a process: `EDGEPLUG_BIN` (relative to
/// the repository's root), else
/// `target/release/edgeplug`, brought up to date with `cargo build --release -p edgeplug`
/// first.
pub fn edgeplug_binary() -> PathBuf {
    let repo = crate::repo();
    if let Some(binary) = std::env::var_os("EDGEPLUG_BIN") {
        return repo.join(binary);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "--release", "-p", "edgeplug"])
        .current_dir(repo)
        .status()
        .expect("cargo runs");
    let binary = repo.join("target/release/edgeplug");
    if !built.success() {
        assert!(
            binary.is_file(),
            "cargo build --release -p edgeplug failed and there is no {}",
            binary.display()
        );
        eprintln!(
            "warning: cargo build --release -p edgeplug failed; using the existing {}",
            binary.display()
        );
    }
    binary
}

//! wasi:nn throughput on one graph: the wasi:nn guest (tests/plugins/wasi-nn-classifier,
//! MobileNetV2) with 1 and 2 concurrent clients, with edgeplug's graphs (computes in parallel)
//! and with every compute under one lock, as the wasi-nn backends of wasmtime and WasmEdge
//! hold per graph. Two inputs: chelsea.png (the guest decodes and preprocesses it, ~2/3 of the
//! request) and the preprocessed tensor (the graph is nearly all of it). Requests/s and
//! p50/p99, in one run, alternated.
//!
//! `cargo bench -p edgeplug-tests --bench wasi_nn` (each run `EDGEPLUG_BENCH_SECS`, default 5 s;
//! `EDGEPLUG_BENCH_ROUNDS` rounds, default 3; medians printed, and written to
//! `target/bench/wasi_nn.json`). The clients call the runtime directly, one thread each, so the
//! figures are the plugin's own (preprocessing in the sandbox, the graph in the host).
//!
//! Each compute runs on one thread (`EDGEPLUG_INTRA_OP`, default 1): with more, a lone compute
//! borrows the idle core, so on a 2-core machine one locked compute already uses both cores
//! and the lock costs little; one thread per compute shows what the lock itself serializes.

use std::time::{Duration, Instant};

use edgeplug_runtime::{InferRequest, LoadedPlugin, PluginFiles};
use edgeplug_tests::{fixture, runtime};

fn plugin_dir() -> tempfile::TempDir {
    edgeplug_tests::gateway::wasi_nn_plugin_dir()
}

/// `clients` threads, each a closed loop of requests for `duration`: requests/s and the
/// sorted latencies.
fn load(
    plugin: &LoadedPlugin,
    request: &InferRequest,
    clients: usize,
    duration: Duration,
) -> (f64, Vec<Duration>) {
    let started = Instant::now();
    let latencies: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    while started.elapsed() < duration {
                        let sent = Instant::now();
                        let answer = plugin.infer(request.clone()).expect("the guest answers");
                        assert!(
                            answer.body.starts_with(b"{\"top5\":[{\"class\":285"),
                            "{}",
                            String::from_utf8_lossy(&answer.body)
                        );
                        mine.push(sent.elapsed());
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let elapsed = started.elapsed();
    let mut latencies = latencies;
    latencies.sort();
    (latencies.len() as f64 / elapsed.as_secs_f64(), latencies)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (duration, rounds) = edgeplug_tests::bench::settings();
    let intra_op: usize = std::env::var("EDGEPLUG_INTRA_OP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    edgeplug_models::native::parallel::set_intra_op_threads(intra_op);
    let dir = plugin_dir();
    let runtime = runtime();
    let plugin = runtime
        .load(&PluginFiles::from_dir(dir.path(), None).unwrap())
        .unwrap();
    let photo = InferRequest {
        content_type: "image/png".into(),
        body: std::fs::read(fixture("images/chelsea.png")).unwrap(),
        tensors: Vec::new(),
    };
    // Chelsea preprocessed as the image classifier does: the first row of the reference input.
    let tensor = match edgeplug_tests::npy("imagenet/mobilenetv2_input.npy").data {
        edgeplug_sdk::npy::NpyData::F32(v) => v[..3 * 224 * 224]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        _ => panic!("float32 expected"),
    };
    let tensor = InferRequest {
        content_type: "application/octet-stream".into(),
        body: tensor,
        tensors: Vec::new(),
    };
    let mut cases = Vec::new();
    for (input, request) in [("photo", &photo), ("tensor", &tensor)] {
        for (graph, lock) in [("parallel", false), ("one lock", true)] {
            for clients in [1, 2] {
                cases.push((input, request, graph, lock, clients));
            }
        }
    }
    for &(_, request, _, lock, clients) in &cases {
        edgeplug_runtime::wasi_nn::serialize_graphs(lock);
        load(&plugin, request, clients, Duration::from_secs(1));
    }
    let mut figures = vec![(Vec::new(), Vec::new(), Vec::new()); cases.len()];
    for _ in 0..rounds {
        for (case, figure) in cases.iter().zip(&mut figures) {
            edgeplug_runtime::wasi_nn::serialize_graphs(case.3);
            let (per_second, latencies) = load(&plugin, case.1, case.4, duration);
            let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
            figure.0.push(per_second);
            figure.1.push(quantile(0.5).as_secs_f64() * 1e3);
            figure.2.push(quantile(0.99).as_secs_f64() * 1e3);
        }
    }
    edgeplug_runtime::wasi_nn::serialize_graphs(false);
    println!(
        "wasi:nn MobileNetV2 on chelsea, {rounds} rounds of {duration:?} alternated, intra-op threads {intra_op}, medians:"
    );
    println!(
        "{:<8} {:<10} {:>8} {:>9} {:>9} {:>9}",
        "input", "graph", "clients", "req/s", "p50 ms", "p99 ms"
    );
    let mut json = Vec::new();
    for ((input, _, graph, _, clients), (per_second, p50, p99)) in cases.iter().zip(&mut figures) {
        let (per_second, p50, p99) = (
            edgeplug_tests::bench::median(per_second),
            edgeplug_tests::bench::median(p50),
            edgeplug_tests::bench::median(p99),
        );
        println!("{input:<8} {graph:<10} {clients:>8} {per_second:>9.1} {p50:>9.2} {p99:>9.2}");
        json.push(
            serde_json::json!({"input": input, "graph": graph, "clients": clients,
            "per_second": per_second, "p50_ms": p50, "p99_ms": p99}),
        );
    }
    edgeplug_tests::bench::write_json(
        "wasi_nn.json",
        &serde_json::json!({"intra_op_threads": intra_op, "cases": json}),
    );
}

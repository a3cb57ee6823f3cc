//! Intra-op threads through the gateway: the image classifier (MobileNetV2) on a photo, with
//! one model run allowed every core (`intra_op_threads = 0`, the default) against one thread
//! per request (`intra_op_threads = 1`), alternated in one run:
//!   * idle: one client, one request at a time: latency (a lone request borrows the idle core);
//!   * loaded: `LOADED` connections, closed loops: throughput (every core runs a request of its
//!     own, so nothing is borrowed; this must not drop below one thread per request).
//!
//! `cargo bench -p edgeplug-tests --bench intra_op` (each run `EDGEPLUG_BENCH_SECS`, default
//! 5 s; `EDGEPLUG_BENCH_ROUNDS` rounds, default 3; medians printed, and written to
//! `target/bench/intra_op.json`). The load comes from a child process.

use std::time::Duration;

use edgeplug_models::native::parallel;
use edgeplug_tests::gateway::{TestGateway, example_bundle};
use edgeplug_tests::load::{self, Target};
use hyper::body::Bytes;

/// Connections of the loaded case: twice the cores, so requests queue as under real load.
const LOADED: usize = 4;

fn main() {
    load::serve_child_load();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (duration, rounds) = edgeplug_tests::bench::settings();
    let server = edgeplug_tests::bench::server_runtime();
    let gw = server.block_on(async {
        let gw = TestGateway::start("").await;
        let bundle = example_bundle(
            &gw.key,
            "image-classifier",
            edgeplug_tests::IMAGE_CLASSIFIER_WASM,
        );
        assert_eq!(gw.push("image-classifier", bundle).await.status(), 200);
        gw
    });
    let photo = std::fs::read(edgeplug_tests::fixture("images/chelsea.png")).unwrap();
    let target = Target::post(
        gw.addr,
        "/v1/plugins/image-classifier/infer",
        "image/png",
        Bytes::from(photo),
    );
    // (intra_op_threads, connections)
    let cases = [(0, 1), (1, 1), (0, LOADED), (1, LOADED)];
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); cases.len()];
    // Warm-up: compiled, instantiated, caches and the helper pool started.
    parallel::set_intra_op_threads(0);
    load::run_in_child(&target, 1, Duration::from_secs(1));
    for _ in 0..rounds {
        for (i, &(threads, connections)) in cases.iter().enumerate() {
            parallel::set_intra_op_threads(threads);
            let result = load::run_in_child(&target, connections, duration);
            assert_eq!(result.failed(), 0, "failed requests: {:?}", result.statuses);
            samples[i].0.push(result.per_second());
            samples[i].1.push(result.quantile(0.5).as_secs_f64() * 1e3);
        }
    }
    println!(
        "image-classifier (MobileNetV2, {} cores), {rounds} rounds of {duration:?} alternated, medians:",
        parallel::cores()
    );
    println!(
        "{:<22} {:>12} {:>9} {:>9}",
        "intra_op_threads", "connections", "req/s", "p50 ms"
    );
    let mut json = Vec::new();
    for (&(threads, connections), (rps, p50)) in cases.iter().zip(&mut samples) {
        let (rps, p50) = (
            edgeplug_tests::bench::median(rps),
            edgeplug_tests::bench::median(p50),
        );
        let name = if threads == 0 {
            "0 (every idle core)".to_string()
        } else {
            threads.to_string()
        };
        println!("{name:<22} {connections:>12} {rps:>9.1} {p50:>9.2}");
        json.push(serde_json::json!({
            "intra_op_threads": threads, "connections": connections,
            "requests_per_s": rps, "p50_ms": p50,
        }));
    }
    edgeplug_tests::bench::write_json("intra_op.json", &json);
    drop(gw);
}

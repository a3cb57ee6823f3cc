//! Split inference, predicted against measured: MobileNetV2 cut at each place
//! `edgeplug bench --split` finds (one tensor crossing), its head on gateway A and its tail on
//! gateway B, the cut tensor sent by A's escalation (WIT `upstream`, Open Inference Protocol
//! v2 with binary tensors) through a relay that limits the link to a given rate each way.
//!
//! For each link rate: the prediction is `edgeplug bench MODEL --split --peer RELAY
//! --peer-plugin split` (the release binary: it times every head and tail and measures the
//! link through the relay itself); the measurement is a client's request to A (v2, binary
//! tensors, one kept connection), median of `EDGEPLUG_BENCH_ROUNDS` (default 5) after one
//! warm-up, for every cut (`EDGEPLUG_SPLIT_EVERY=k` measures every k-th). `bench --split`
//! predicts the time from the request's arrival at A to its answer; what the client's request
//! to A costs on top (sending the 600 KB input, decoding it, the plugin's instance) is the
//! same for every cut, and is measured once: the whole model on A (the `local` row), measured
//! minus predicted. Printed: prediction plus that, the measurement, and the relative error. Both gateways run in this process, so a cut's head and tail share its
//! two cores with the relay and the client, as they would not on two devices.
//!
//! `cargo bench -p edgeplug-tests --bench split` (a few minutes; results also in
//! `target/bench/split.json`).

use std::process::Command;
use std::time::Instant;

use edgeplug::client::{ChunkedBody, Connection};
use edgeplug_tests::bench::{edgeplug_binary, median, write_json};
use edgeplug_tests::gateway::{TOKEN, TestGateway, req, split_bundle};
use edgeplug_tests::relay::Relay;
use hyper::body::Bytes;
use serde_json::{Value, json};

/// The link rates, in Mbit/s each way.
const RATES_MBIT: [u64; 2] = [100, 20];

const MODEL: &str = "plugins/image-classifier/mobilenetv2.onnx";
const INPUT_SHAPE: [usize; 4] = [1, 3, 224, 224];

fn input_values() -> Vec<f32> {
    let n: usize = INPUT_SHAPE.iter().product();
    (0..n)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
        .collect()
}

/// A float32 `.npy` of `values` shaped [`INPUT_SHAPE`].
fn npy(values: &[f32]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}, {}, {}), }}",
        INPUT_SHAPE[0], INPUT_SHAPE[1], INPUT_SHAPE[2], INPUT_SHAPE[3]
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

async fn admin(gw: &TestGateway, method: &str, path: &str, body: Vec<u8>) -> u16 {
    gw.send(
        req(method, path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(ChunkedBody::new(body))
            .unwrap(),
    )
    .await
    .status()
    .as_u16()
}

/// Replaces the split plugin on `gw` with `bundle`.
async fn deploy(gw: &TestGateway, bundle: Vec<u8>) {
    admin(gw, "DELETE", "/v1/admin/plugins/split", Vec::new()).await;
    let status = admin(gw, "PUT", "/v1/admin/plugins/split", bundle).await;
    assert_eq!(status, 200, "push of the split plugin");
}

/// One v2 request to A with the input in the binary extension; its latency in ms.
async fn infer(connection: &mut Connection, values: &[f32]) -> f64 {
    let header = json!({
        "inputs": [{"name": "input", "shape": INPUT_SHAPE, "datatype": "FP32",
                    "parameters": {"binary_data_size": values.len() * 4}}],
        "parameters": {"binary_data_output": true},
    })
    .to_string();
    let mut body = header.as_bytes().to_vec();
    for v in values {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let started = Instant::now();
    let response = connection
        .send(
            req("POST", "/v2/models/split/infer")
                .header("content-type", "application/octet-stream")
                .header("inference-header-content-length", header.len())
                .body(ChunkedBody::new(Bytes::from(body)))
                .unwrap(),
        )
        .await
        .unwrap();
    let took = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(
        response.status(),
        200,
        "{}",
        String::from_utf8_lossy(response.body())
    );
    took
}

/// `edgeplug bench --split` against the relay: the predicted latency of every cut.
fn predict(peer: &str, input_npy: &std::path::Path) -> Value {
    let out = Command::new(edgeplug_binary())
        .current_dir(edgeplug_tests::repo())
        .args([
            "bench", MODEL, "--split", "--json", "--runs", "20", "--warmup", "3",
        ])
        .args(["--peer", peer, "--peer-plugin", "split", "--input"])
        .arg(input_npy)
        .output()
        .expect("edgeplug bench runs");
    assert!(
        out.status.success(),
        "edgeplug bench --split: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("EDGEPLUG_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let every: usize = std::env::var("EDGEPLUG_SPLIT_EVERY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let onnx = std::fs::read(edgeplug_tests::repo().join(MODEL)).unwrap();
        let values = input_values();
        let dir = tempfile::tempdir().unwrap();
        let input_npy = dir.path().join("input.npy");
        std::fs::write(&input_npy, npy(&values)).unwrap();

        let b = TestGateway::start("").await;
        let relay = Relay::start(b.addr);
        let a = TestGateway::start(&format!(
            "[upstreams.tail]\nurl = \"http://127.0.0.1:{}\"\ntimeout_ms = 30000\n",
            relay.port
        ))
        .await;
        let input =
            edgeplug_kernels::Tensor::from_f32(INPUT_SHAPE.to_vec(), values.clone()).unwrap();
        let points = edgeplug_models::split::cut_points(&onnx).unwrap();
        // The peer needs a split plugin for the link probe: the first cut's tail.
        let first = &points[0].tensor;
        let shape = edgeplug_models::split::tensor_shape(&onnx, first, &input).unwrap();
        let (_, tail) = edgeplug_models::split::split(&onnx, first, Some(&shape)).unwrap();
        deploy(&b, split_bundle(&b.key, "tail", &tail)).await;

        // The client's cost of a request to A: the whole model there, measured against the
        // model's own time that the prediction's `local` row holds.
        deploy(&a, split_bundle(&a.key, "tail", &onnx)).await;
        let mut connection = Connection::open(&a.url(), None).await.unwrap();
        infer(&mut connection, &values).await;
        let mut local = Vec::new();
        for _ in 0..rounds.max(5) {
            local.push(infer(&mut connection, &values).await);
        }
        let local_ms = median(&mut local);

        let mut report = Vec::new();
        for rate in RATES_MBIT {
            relay.limit_rate(rate * 1_000_000);
            let peer = format!("http://127.0.0.1:{}", relay.port);
            let input_npy = input_npy.clone();
            let prediction = tokio::task::spawn_blocking(move || predict(&peer, &input_npy))
                .await
                .unwrap();
            let link = &prediction["links"][0];
            println!(
                "link limited to {rate} Mbit/s: measured {:.1} Mbit/s, {:.2} ms per call",
                link["megabits_per_s"].as_f64().unwrap(),
                link["fixed_ms"].as_f64().unwrap()
            );
            println!(
                "{:>5} {:>10} {:>12} {:>12} {:>7}  cut",
                "nodes", "bytes", "predicted ms", "measured ms", "error"
            );
            let rows = prediction["rows"].as_array().unwrap();
            let client_ms = local_ms - rows[0]["predicted_ms"][0].as_f64().unwrap();
            println!(
                "the client's request to A: {client_ms:.2} ms (whole model on A: {local_ms:.2} ms measured)"
            );
            for (i, point) in points.iter().enumerate() {
                if i % every != 0 && i + 1 != points.len() {
                    continue;
                }
                let row = rows
                    .iter()
                    .find(|r| r["cut"] == point.tensor.as_str())
                    .expect("the prediction has every cut");
                let shape =
                    edgeplug_models::split::tensor_shape(&onnx, &point.tensor, &input).unwrap();
                let (head, tail) =
                    edgeplug_models::split::split(&onnx, &point.tensor, Some(&shape)).unwrap();
                deploy(&a, split_bundle(&a.key, "head", &head)).await;
                deploy(&b, split_bundle(&b.key, "tail", &tail)).await;
                let mut connection = Connection::open(&a.url(), None).await.unwrap();
                infer(&mut connection, &values).await;
                let mut times = Vec::new();
                for _ in 0..rounds {
                    times.push(infer(&mut connection, &values).await);
                }
                let measured = median(&mut times);
                let predicted = row["predicted_ms"][0].as_f64().unwrap() + client_ms;
                let error = (predicted - measured) / measured;
                println!(
                    "{:>5} {:>10} {predicted:>12.2} {measured:>12.2} {:>6.1}%  {}",
                    point.head_nodes,
                    row["bytes"],
                    error * 100.0,
                    point.tensor
                );
                report.push(json!({
                    "rate_mbit": rate, "cut": point.tensor, "head_nodes": point.head_nodes,
                    "bytes": row["bytes"], "predicted_ms": predicted, "measured_ms": measured,
                    "error": error,
                }));
            }
            let best = &prediction["best"][0];
            println!("predicted best cut at {rate} Mbit/s: {best}");
        }
        let errors: Vec<f64> = report
            .iter()
            .map(|r| r["error"].as_f64().unwrap().abs())
            .collect();
        let within = errors.iter().filter(|e| **e <= 0.15).count();
        println!(
            "{within} of {} cuts predicted within 15 % (largest error {:.1} %)",
            errors.len(),
            errors.iter().copied().fold(0.0, f64::max) * 100.0
        );
        let path = write_json("split.json", &report);
        println!("results in {}", path.display());
    });
}

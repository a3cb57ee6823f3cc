//! The same inference over the protocol's three forms, in one run, alternated: HTTP with JSON
//! tensors, HTTP with Triton's binary tensor data, and gRPC (raw contents). Two tensor sizes:
//! the digits input (FP32 1×1×16×16, 1 KiB) and an image tensor for the image classifier
//! (FP32 1×3×224×224, 588 KiB). Requests/s and p50/p99, closed loops with `OUTSTANDING`
//! requests in flight, each load from a child process on its own connection(s).
//!
//! `cargo bench -p edgeplug-tests --bench protocols` (each run `EDGEPLUG_BENCH_SECS`, default
//! 5 s; `EDGEPLUG_BENCH_ROUNDS` rounds, default 3; medians printed, and written to
//! `target/bench/protocols.json`). The gateway runs on one tokio worker plus the blocking pool
//! that runs wasm, as in the other gateway benchmarks.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use edgeplug_grpc::proto::ModelInferRequest;
use edgeplug_grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use edgeplug_grpc::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use edgeplug_tests::gateway::{TestGateway, digits_bundle, digits_tensor_input, example_bundle};
use edgeplug_tests::load::{self, LoadResult, Target};
use hyper::body::Bytes;
use prost::Message as _;

const OUTSTANDING: usize = 4;
const GRPC_CHILD: &str = "--edgeplug-grpc-load-child";

/// One workload: a model, its input tensor and the output asked for.
struct Workload {
    model: &'static str,
    output: &'static str,
    shape: Vec<i64>,
    values: Vec<f32>,
}

impl Workload {
    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "inputs": [{"name": "input", "shape": self.shape, "datatype": "FP32", "data": self.values}],
            "outputs": [{"name": self.output}],
        }))
        .unwrap()
    }

    /// The binary tensor data extension: a JSON header, then the tensor's bytes; the output
    /// comes back binary too. Returns the body and the header's length.
    fn binary(&self) -> (Vec<u8>, usize) {
        let raw: Vec<u8> = self.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut body = serde_json::to_vec(&serde_json::json!({
            "inputs": [{"name": "input", "shape": self.shape, "datatype": "FP32",
                        "parameters": {"binary_data_size": raw.len()}}],
            "outputs": [{"name": self.output, "parameters": {"binary_data": true}}],
        }))
        .unwrap();
        let header = body.len();
        body.extend_from_slice(&raw);
        (body, header)
    }

    fn grpc(&self) -> ModelInferRequest {
        ModelInferRequest {
            model_name: self.model.into(),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: self.shape.clone(),
                ..Default::default()
            }],
            outputs: vec![InferRequestedOutputTensor {
                name: self.output.into(),
                ..Default::default()
            }],
            raw_input_contents: vec![self.values.iter().flat_map(|v| v.to_le_bytes()).collect()],
            ..Default::default()
        }
    }
}

/// gRPC load from a child process, like the HTTP load: `connections` HTTP/2 connections,
/// each a closed loop of one call at a time.
fn grpc_in_child(
    addr: std::net::SocketAddr,
    request: &ModelInferRequest,
    connections: usize,
    duration: Duration,
) -> LoadResult {
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            GRPC_CHILD,
            &addr.to_string(),
            &connections.to_string(),
            &duration.as_nanos().to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&request.encode_to_vec())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the gRPC load child failed");
    load::decode(&output.stdout)
}

fn serve_grpc_child() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [flag, addr, connections, nanos] = &args[..] else {
        return;
    };
    if flag != GRPC_CHILD {
        return;
    }
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).unwrap();
    let request = ModelInferRequest::decode(bytes.as_slice()).unwrap();
    let connections: usize = connections.parse().unwrap();
    let duration = Duration::from_nanos(nanos.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(async {
        let url = format!("http://{addr}");
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = Vec::new();
        for _ in 0..connections {
            // The client's windows as large as the server's (HTTP/2's default is 64 KiB).
            let channel = tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .initial_stream_window_size(edgeplug_grpc::STREAM_WINDOW)
                .initial_connection_window_size(edgeplug_grpc::STREAM_WINDOW * 2)
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap();
            let mut client = GrpcInferenceServiceClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let mut part = LoadResult::default();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match client.model_infer(request.clone()).await {
                        Ok(_) => {
                            part.latencies.push(sent.elapsed());
                            *part.statuses.entry(200).or_default() += 1;
                        }
                        Err(status) => {
                            part.latencies.push(sent.elapsed());
                            *part.statuses.entry(500 + status.code() as u16).or_default() += 1;
                        }
                    }
                }
                part
            }));
        }
        let mut result = LoadResult::default();
        for task in tasks {
            let part = task.await.unwrap();
            result.latencies.extend(part.latencies);
            for (status, n) in part.statuses {
                *result.statuses.entry(status).or_default() += n;
            }
        }
        result.elapsed = started.elapsed();
        result.latencies.sort();
        result
    });
    std::io::stdout().write_all(&load::encode(&result)).unwrap();
    std::process::exit(0);
}

fn main() {
    load::serve_child_load();
    serve_grpc_child();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (duration, rounds) = edgeplug_tests::bench::settings();
    let server = edgeplug_tests::bench::server_runtime();
    let (gw, grpc) = server.block_on(async {
        let gw = TestGateway::start("").await;
        for (name, bundle) in [
            ("digits", digits_bundle(&gw.key, "1.0.0")),
            (
                "image-classifier",
                example_bundle(
                    &gw.key,
                    "image-classifier",
                    edgeplug_tests::IMAGE_CLASSIFIER_WASM,
                ),
            ),
        ] {
            assert_eq!(gw.push(name, bundle).await.status(), 200, "{name}");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = edgeplug_grpc::GrpcConfig {
            listen: listener.local_addr().unwrap(),
            max_concurrent_streams: 64,
        };
        let grpc = edgeplug_grpc::start(gw.gateway.clone(), &config, listener).unwrap();
        (gw, grpc)
    });
    let (pixels, _) = digits_tensor_input();
    let image = match edgeplug_tests::npy("imagenet/mobilenetv2_input.npy").data {
        edgeplug_sdk::npy::NpyData::F32(v) => v[..3 * 224 * 224].to_vec(),
        _ => panic!("float32 expected"),
    };
    let workloads = [
        Workload {
            model: "digits",
            output: "probs",
            shape: vec![1, 1, 16, 16],
            values: pixels,
        },
        Workload {
            model: "image-classifier",
            output: "logits",
            shape: vec![1, 3, 224, 224],
            values: image,
        },
    ];
    let mut json = serde_json::Map::new();
    println!("{OUTSTANDING} outstanding, {rounds} rounds of {duration:?} alternated, medians:");
    println!(
        "{:<18} {:<14} {:>9} {:>9} {:>9}",
        "model", "form", "req/s", "p50 ms", "p99 ms"
    );
    for workload in &workloads {
        let path = format!("/v2/models/{}/infer", workload.model);
        let json_target = Target::post(
            gw.addr,
            &path,
            "application/json",
            Bytes::from(workload.json()),
        );
        let (body, header) = workload.binary();
        let binary_target = Target::post(
            gw.addr,
            &path,
            "application/octet-stream",
            Bytes::from(body),
        )
        .with_header("inference-header-content-length", &header.to_string());
        let request = workload.grpc();
        let forms = ["HTTP/JSON", "HTTP/binary", "gRPC"];
        let run = |form: usize, duration: Duration| -> LoadResult {
            let result = match form {
                0 => load::run_in_child(&json_target, OUTSTANDING, duration),
                1 => load::run_in_child(&binary_target, OUTSTANDING, duration),
                _ => grpc_in_child(grpc.addr, &request, OUTSTANDING, duration),
            };
            assert_eq!(
                result.failed(),
                0,
                "{} {}: {:?}",
                workload.model,
                forms[form],
                result.statuses
            );
            result
        };
        for form in 0..3 {
            run(form, Duration::from_secs(1));
        }
        let mut figures = vec![(Vec::new(), Vec::new(), Vec::new()); 3];
        for _ in 0..rounds {
            for (form, figure) in figures.iter_mut().enumerate() {
                let result = run(form, duration);
                figure.0.push(result.per_second());
                figure.1.push(result.quantile(0.5).as_secs_f64() * 1e3);
                figure.2.push(result.quantile(0.99).as_secs_f64() * 1e3);
            }
        }
        let mut rows = serde_json::Map::new();
        for (form, (per_second, p50, p99)) in figures.iter_mut().enumerate() {
            let (per_second, p50, p99) = (
                edgeplug_tests::bench::median(per_second),
                edgeplug_tests::bench::median(p50),
                edgeplug_tests::bench::median(p99),
            );
            println!(
                "{:<18} {:<14} {per_second:>9.0} {p50:>9.3} {p99:>9.3}",
                workload.model, forms[form]
            );
            rows.insert(
                forms[form].into(),
                serde_json::json!({"per_second": per_second, "p50_ms": p50, "p99_ms": p99}),
            );
        }
        json.insert(workload.model.into(), serde_json::Value::Object(rows));
    }
    edgeplug_tests::bench::write_json("protocols.json", &json);
    server.block_on(grpc.stop());
    drop(gw);
}

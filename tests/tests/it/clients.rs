//! Standard clients against a gateway serving the example plugins unchanged: Triton's own
//! Python clients (`tritonclient.http` with its defaults, `tritonclient.grpc`) and KServe's
//! (`kserve`: REST and gRPC), all installed by `make test-setup`.

use std::process::Command;

use edgeplug_sdk::npy::NpyData;
use edgeplug_tests::gateway::{TestGateway, digits_bundle, example_bundle};
use edgeplug_tests::{IMAGE_CLASSIFIER_WASM, fixture, npy, repo};
use serde_json::Value;

use crate::classifier::MODELS;

/// Runs a client script from `tests/clients` against `address`; its JSON report.
fn run_client(script: &str, address: &str) -> Value {
    run_client_with(script, &[address])
}

/// Runs a client script from `tests/clients` with `addresses` and the fixtures directory.
fn run_client_with(script: &str, addresses: &[&str]) -> Value {
    let output = Command::new("python3")
        .arg(repo().join("tests/clients").join(script))
        .args(addresses)
        .arg(fixture(""))
        .output()
        .expect("python3 runs (make test-setup installs the clients)");
    assert!(
        output.status.success(),
        "{script} failed (are the clients installed? `make test-setup`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

pub async fn gateway_with_examples() -> TestGateway {
    let gateway = TestGateway::start("").await;
    for (name, bundle) in [
        ("digits", digits_bundle(&gateway.key, "1.0.0")),
        (
            "image-classifier",
            example_bundle(&gateway.key, "image-classifier", IMAGE_CLASSIFIER_WASM),
        ),
    ] {
        let pushed = gateway.push(name, bundle).await;
        assert_eq!(pushed.status(), 200, "{name}: {:?}", pushed.body());
    }
    gateway
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap()
}

fn f32s(path: &str) -> Vec<f32> {
    match npy(path).data {
        NpyData::F32(v) => v,
        other => panic!("{path} is {}, expected float32", other.dtype()),
    }
}

fn ints(value: &Value) -> Vec<usize> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

/// Every held-out digit's answer: the reference network's class, by tensor and by body.
fn check_digits(argmaxes: &Value, body_labels: &Value) {
    let reference = f32s("digits/digits_cnn_ref_out.npy");
    let expected: Vec<usize> = reference.chunks(10).map(argmax).collect();
    assert_eq!(expected.len(), 540);
    assert_eq!(ints(argmaxes), expected);
    // The body output came back too (binary, length-prefixed) and says the same.
    assert_eq!(ints(body_labels), expected);
}

/// A client's logits for the four reference tensors: onnxruntime's within 1e-3, and its
/// top-1.
fn check_reference_logits(rows: &Value, what: &str) {
    let reference = f32s(MODELS[0].reference);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{what}");
    for (row, logits) in rows.iter().enumerate() {
        let logits: Vec<f32> = logits
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let want = &reference[row * 1000..(row + 1) * 1000];
        let worst = logits
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-3,
            "{what} photo {row}: logits differ by {worst}"
        );
        assert_eq!(argmax(&logits), MODELS[0].top1[row], "{what} photo {row}");
    }
}

/// The photos, classified through the extension and as reference tensors.
fn check_photos(seen: &Value) {
    // The photos, encoded, as BYTES: the reference top-1 with its ImageNet label first.
    let labels: Vec<String> =
        std::fs::read_to_string(repo().join("plugins/image-classifier/imagenet_labels.txt"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
    let top1 = MODELS[0].top1;
    for (photo, classes) in seen["photos_top3"].as_array().unwrap().iter().enumerate() {
        let classes: Vec<&str> = classes
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(classes.len(), 3, "{classes:?}");
        let parts: Vec<&str> = classes[0].splitn(3, ':').collect();
        assert_eq!(
            parts[1].parse::<usize>().unwrap(),
            top1[photo],
            "{classes:?}"
        );
        assert_eq!(parts[2], labels[top1[photo]], "{classes:?}");
        let scores: Vec<f32> = classes
            .iter()
            .map(|c| c.split(':').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "best first: {classes:?}"
        );
    }

    check_reference_logits(&seen["tensor_logits"], "tensor");
}

#[tokio::test(flavor = "multi_thread")]
async fn tritonclient_http_with_its_defaults() {
    let gateway = gateway_with_examples().await;
    let seen = tokio::task::spawn_blocking({
        let address = gateway.addr.to_string();
        move || run_client("triton_http.py", &address)
    })
    .await
    .unwrap();

    assert_eq!(seen["live"], true);
    assert_eq!(seen["ready"], true);
    for extension in ["binary_tensor_data", "classification", "statistics"] {
        assert!(
            seen["extensions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == extension),
            "{extension} in {}",
            seen["extensions"]
        );
    }
    assert_eq!(seen["digits_ready"], true);
    assert_eq!(
        seen["digits_inputs"][0]["shape"],
        serde_json::json!([1, 1, 16, 16])
    );

    check_digits(&seen["digits_binary"], &seen["digits_body_labels"]);
    check_digits(&seen["digits_json"], &seen["digits_body_labels"]);
    check_photos(&seen);

    // Errors come back as tritonclient exceptions with our reason.
    let timeout = &seen["timeout_error"];
    assert_eq!(timeout["status"], "504", "{timeout}");
    assert!(
        timeout["message"].as_str().unwrap().contains("timeout"),
        "{timeout}"
    );
    let shape = &seen["shape_error"];
    assert_eq!(shape["status"], "400", "{shape}");
    let unknown = &seen["unknown_model_error"];
    assert_eq!(unknown["status"], "404", "{unknown}");
    assert!(
        unknown["message"].as_str().unwrap().contains("nope"),
        "{unknown}"
    );

    // Statistics count what ran: 2 × 540 digits, the refused shape, the timeout.
    let stats = &seen["digits_stats"];
    assert_eq!(stats["success"]["count"], 1080, "{stats}");
    assert_eq!(stats["inference_count"], 1080, "{stats}");
    assert_eq!(stats["fail"]["count"], 2, "{stats}");
    assert!(
        stats["compute_infer"]["ns"].as_u64().unwrap() > 0,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tritonclient_grpc() {
    let gateway = gateway_with_examples().await;
    let grpc = crate::grpc::grpc_for(&gateway).await;
    let seen = tokio::task::spawn_blocking({
        let address = grpc.addr.to_string();
        move || run_client("triton_grpc.py", &address)
    })
    .await
    .unwrap();
    assert_eq!(seen["live"], true);
    assert_eq!(seen["ready"], true);
    assert_eq!(seen["extensions"], serde_json::json!(["classification"]));
    assert_eq!(seen["digits_ready"], true);
    assert_eq!(seen["digits_inputs"][0]["datatype"], "FP32");
    assert_eq!(
        seen["digits_inputs"][0]["shape"],
        serde_json::json!(["1", "1", "16", "16"]),
        "int64 shapes print as strings in protobuf's JSON"
    );
    check_digits(&seen["digits"], &seen["digits_body_labels"]);
    check_photos(&seen);
    let timeout = &seen["timeout_error"];
    assert_eq!(
        timeout["status"], "StatusCode.DEADLINE_EXCEEDED",
        "{timeout}"
    );
    assert!(
        timeout["message"].as_str().unwrap().contains("timeout"),
        "{timeout}"
    );
    assert_eq!(seen["shape_error"]["status"], "StatusCode.INVALID_ARGUMENT");
    let unknown = &seen["unknown_model_error"];
    assert_eq!(unknown["status"], "StatusCode.NOT_FOUND", "{unknown}");
    assert!(
        unknown["message"].as_str().unwrap().contains("nope"),
        "{unknown}"
    );

    // gRPC calls show in the gateway's metrics, and its requests in the versions' own.
    let metrics = String::from_utf8(gateway.get("/metrics").await.into_body().to_vec()).unwrap();
    assert!(
        metrics.contains("edgeplug_grpc_calls_total{method=\"ModelInfer\",code=\"OK\"} 548"),
        "540 digits, 4 photos, 4 tensors:\n{metrics}"
    );
    assert!(
        metrics.contains("edgeplug_grpc_calls_total{method=\"ModelInfer\",code=\"NOT_FOUND\"} 1")
    );
    grpc.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kserve_python_clients_rest_and_grpc() {
    let gateway = gateway_with_examples().await;
    let grpc = crate::grpc::grpc_for(&gateway).await;
    let seen = tokio::task::spawn_blocking({
        let (http, grpc) = (gateway.addr.to_string(), grpc.addr.to_string());
        move || run_client_with("kserve_clients.py", &[&http, &grpc])
    })
    .await
    .unwrap();
    let reference = f32s("digits/digits_cnn_ref_out.npy");
    let expected: Vec<usize> = reference.chunks(10).map(argmax).collect();
    assert_eq!(ints(&seen["rest_digits"]), expected);
    assert_eq!(ints(&seen["grpc_digits"]), expected);
    for key in ["rest_logits", "grpc_logits"] {
        check_reference_logits(&seen[key], key);
    }
    grpc.stop().await;
}

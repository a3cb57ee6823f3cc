//! Escalation (issue 15, WIT 0.1.2's `upstream`): the `escalate` test plugin on an edge
//! gateway sends the digits it is unsure of to a center gateway serving `digits` (in a
//! process of its own), through a TCP relay the test cuts and slows, and then with the
//! center's process killed. With the center up, down and slower than the request's
//! deadline, every answer comes within the deadline, marked degraded exactly when the center
//! could not help; the grant is checked, and components of the older WIT still run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgeplug::client::{ChunkedBody, Connection};
use edgeplug_bundle::{self as bundle, BundleLimits, SecretKey};
use edgeplug_runtime::{InferRequest, InvokeError, PluginErrorCode, PluginFiles};
use edgeplug_tests::gateway::{TestGateway, assert_status, digits_bundle, header, json_of, req};
use edgeplug_tests::relay::Relay;
use edgeplug_tests::{fixture, repo, runtime, test_plugin_wasm};
use serde_json::{Value, json};

/// The escalate plugin's deadline (its manifest's `deadline_ms`).
const DEADLINE: Duration = Duration::from_millis(1000);

/// The plugin's directory with its component and the edge model (a fixture, kept once).
fn escalate_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = repo().join("tests/plugins/escalate");
    std::fs::copy(source.join("plugin.toml"), dir.path().join("plugin.toml")).unwrap();
    std::fs::create_dir(dir.path().join("selftest")).unwrap();
    for file in ["seven.json", "seven.expect.json"] {
        std::fs::copy(
            source.join("selftest").join(file),
            dir.path().join("selftest").join(file),
        )
        .unwrap();
    }
    std::fs::copy(
        fixture("models/digits_edge_lr.onnx"),
        dir.path().join("digits_edge_lr.onnx"),
    )
    .unwrap();
    std::fs::copy(test_plugin_wasm("escalate"), dir.path().join("plugin.wasm")).unwrap();
    dir
}

fn escalate_bundle(key: &SecretKey) -> Vec<u8> {
    let dir = escalate_dir();
    let limits = BundleLimits::default();
    let packed =
        bundle::pack_dir_with(dir.path(), &BTreeMap::<String, PathBuf>::new(), &limits).unwrap();
    bundle::sign_bundle(&packed.bytes, key, &limits).unwrap()
}

/// The test digits (8x8, 0..16) and their labels.
fn digits() -> (Vec<Vec<Vec<u8>>>, Vec<i64>) {
    let raw = match edgeplug_tests::npy("digits/digits_test_raw.npy").data {
        edgeplug_sdk::npy::NpyData::U8(v) => v,
        other => panic!("raw digits are {}", other.dtype()),
    };
    let labels = match edgeplug_tests::npy("digits/digits_test_labels.npy").data {
        edgeplug_sdk::npy::NpyData::I64(v) => v,
        other => panic!("labels are {}", other.dtype()),
    };
    let images = raw
        .chunks(64)
        .map(|d| d.chunks(8).map(<[u8]>::to_vec).collect())
        .collect();
    (images, labels)
}

fn request(image: &[Vec<u8>], threshold: f64) -> Vec<u8> {
    serde_json::to_vec(&json!({"image": image, "threshold": threshold})).unwrap()
}

/// A metric's value in a `/metrics` text, 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The center: a gateway serving `digits` in a process of its own (this test binary run again
/// for [`center_process`]), killed when dropped.
struct CenterProcess {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl CenterProcess {
    fn start() -> CenterProcess {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "escalation::center_process",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env("EDGEPLUG_CENTER_PORT_FILE", &port_file)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let addr = loop {
            if let Some(addr) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|a| a.trim().parse().ok())
            {
                break addr;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the center process did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        CenterProcess {
            child,
            addr,
            _dir: dir,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> hyper::Response<hyper::body::Bytes> {
        let url: hyper::Uri = format!("http://{}/", self.addr).parse().unwrap();
        let request = req("POST", path)
            .header("content-type", "application/json")
            .body(ChunkedBody::new(body))
            .unwrap();
        Connection::open(&url, None)
            .await
            .unwrap()
            .send(request)
            .await
            .unwrap()
    }
}

impl Drop for CenterProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Not a test of its own: the center process [`CenterProcess`] starts. Without its
/// environment variable it does nothing.
#[test]
#[ignore = "the escalation test's center process, started by that test"]
fn center_process() {
    let Some(port_file) = std::env::var_os("EDGEPLUG_CENTER_PORT_FILE") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let center = TestGateway::start("").await;
        assert_status(
            &center
                .push("digits", digits_bundle(&center.key, "1.0.0"))
                .await,
            200,
        );
        let written = PathBuf::from(&port_file).with_extension("tmp");
        std::fs::write(&written, center.addr.to_string()).unwrap();
        std::fs::rename(&written, &port_file).unwrap();
        // Serves until the test kills the process, or until the test's process is gone (a
        // killed test run must not leave a center behind).
        let parent = std::os::unix::process::parent_id();
        while std::os::unix::process::parent_id() == parent {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        std::process::exit(0);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_answers_within_the_deadline_with_the_center_up_down_and_slow() {
    let mut center = tokio::task::spawn_blocking(CenterProcess::start)
        .await
        .unwrap();
    let link = Relay::start(center.addr);
    // The upstream's own timeout is longer than the plugin's deadline: the deadline binds.
    let edge = TestGateway::start(&format!(
        "[upstreams.center]\nurl = \"http://127.0.0.1:{}\"\ntimeout_ms = 5000\n",
        link.port
    ))
    .await;
    assert_status(
        &edge.push("escalate", escalate_bundle(&edge.key)).await,
        200,
    );

    let (images, _) = digits();
    // 1.01: every digit escalates (a softmax probability never reaches it).
    let always = 1.01;
    let ask = |i: usize| {
        let edge = &edge;
        let body = request(&images[i], always);
        async move {
            let started = Instant::now();
            let response = edge
                .post("/v1/plugins/escalate/infer", "application/json", body)
                .await;
            (started.elapsed(), response)
        }
    };
    // What the center says on its own, for the answers that come from it.
    let center_label = |i: usize| {
        let center = &center;
        let image = images[i].clone();
        async move {
            let body = serde_json::to_vec(&image).unwrap();
            let answer = center.post("/v1/plugins/digits/infer", body).await;
            json_of(&answer)["label"].as_u64().unwrap()
        }
    };

    let mut escalated = 0;
    let mut degraded = 0;
    for round in 0..3 {
        for (state, digit) in [("up", round), ("down", round + 10), ("slow", round + 20)] {
            match state {
                "up" => link.restore(),
                "down" => link.cut(),
                _ => {
                    link.restore();
                    link.slow_down(Duration::from_secs(3));
                }
            }
            let (took, response) = ask(digit).await;
            eprintln!("center {state}: answered in {took:?}");
            assert_status(&response, 200);
            assert!(
                took < DEADLINE,
                "{state}: answered after {took:?}, the deadline is {DEADLINE:?}"
            );
            let answer = json_of(&response);
            escalated += 1;
            if state == "up" {
                assert_eq!(answer["source"], "center", "{answer}");
                assert_eq!(answer["degraded"], false, "{answer}");
                assert!(response.headers().get("x-edgeplug-degraded").is_none());
                link.restore();
                assert_eq!(answer["label"], center_label(digit).await, "{answer}");
            } else {
                degraded += 1;
                assert_eq!(answer["source"], "edge", "{state}: {answer}");
                assert_eq!(answer["degraded"], true, "{state}: {answer}");
                assert_eq!(header(&response, "x-edgeplug-degraded"), "true");
                if state == "slow" {
                    // Waited for the center until the reserve the plugin answers in.
                    assert!(took >= DEADLINE / 2, "gave up after only {took:?}");
                }
            }
        }
    }
    link.restore();

    // The center's process killed: connections through the link are refused.
    center.kill();
    let (took, response) = ask(30).await;
    eprintln!("center killed: answered in {took:?}");
    assert_status(&response, 200);
    assert!(took < DEADLINE, "answered after {took:?}");
    assert_eq!(json_of(&response)["degraded"], true);
    escalated += 1;
    degraded += 1;

    // A digit the edge model is sure of is not escalated at all.
    let sure = edge
        .post(
            "/v1/plugins/escalate/infer",
            "application/json",
            request(&images[0], 0.0),
        )
        .await;
    assert_eq!(json_of(&sure)["source"], "edge");

    let text = String::from_utf8(edge.get("/metrics").await.body().to_vec()).unwrap();
    let series = |s: &str| metric(&text, s);
    assert_eq!(
        series("edgeplug_escalations_total{plugin=\"escalate\",upstream=\"center\"}"),
        f64::from(escalated)
    );
    assert_eq!(
        series("edgeplug_degraded_answers_total{plugin=\"escalate\"}"),
        f64::from(degraded)
    );
    assert_eq!(
        series(
            "edgeplug_escalation_failures_total{plugin=\"escalate\",upstream=\"center\",reason=\"deadline\"}"
        ),
        3.0,
        "{text}"
    );
    // A cut link closes the connection, a killed center refuses it: no answer either way.
    let down = series(
        "edgeplug_escalation_failures_total{plugin=\"escalate\",upstream=\"center\",reason=\"connect\"}",
    );
    assert_eq!(down, 4.0, "{text}");
    assert_eq!(
        series("edgeplug_upstream_latency_seconds_count{upstream=\"center\"}"),
        3.0
    );
}

/// The 20 % row of the accuracy table (tests/benches/escalation_accuracy.py, computed offline
/// with onnxruntime) through the real path: the edge model on edgeplug's backend in the edge
/// gateway, the center's `digits` plugin in another, over HTTP. The threshold is the table's;
/// no edge confidence lies within 1e-3 of it, so backends' rounding cannot move a digit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_joint_answers_through_two_gateways_match_the_offline_table() {
    const THRESHOLD: f64 = 0.8345;
    let center = TestGateway::start("").await;
    assert_status(
        &center
            .push("digits", digits_bundle(&center.key, "1.0.0"))
            .await,
        200,
    );
    let edge = TestGateway::start(&format!(
        "[upstreams.center]\nurl = \"http://{}\"\n",
        center.addr
    ))
    .await;
    assert_status(
        &edge.push("escalate", escalate_bundle(&edge.key)).await,
        200,
    );
    let (images, labels) = digits();
    let center_reference = match edgeplug_tests::npy("digits/digits_cnn_ref_out.npy").data {
        edgeplug_sdk::npy::NpyData::F32(v) => v,
        other => panic!("reference outputs are {}", other.dtype()),
    };
    let (mut escalated, mut correct) = (0, 0);
    for (i, image) in images.iter().enumerate() {
        let response = edge
            .post(
                "/v1/plugins/escalate/infer",
                "application/json",
                request(image, THRESHOLD),
            )
            .await;
        assert_status(&response, 200);
        let answer = json_of(&response);
        assert_eq!(answer["degraded"], false, "digit {i}: {answer}");
        let label = answer["label"].as_i64().unwrap();
        if answer["source"] == "center" {
            escalated += 1;
            let row = &center_reference[i * 10..(i + 1) * 10];
            let expected = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            assert_eq!(label, expected as i64, "digit {i}: the center's answer");
        }
        correct += usize::from(label == labels[i]);
    }
    eprintln!("threshold {THRESHOLD}: {escalated}/540 escalated, {correct}/540 correct");
    assert_eq!((escalated, correct), (108, 537));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_the_upstream_answers_degraded() {
    let edge = TestGateway::start("").await;
    assert_status(
        &edge.push("escalate", escalate_bundle(&edge.key)).await,
        200,
    );
    let (images, _) = digits();
    let response = edge
        .post(
            "/v1/plugins/escalate/infer",
            "application/json",
            request(&images[3], 1.01),
        )
        .await;
    assert_status(&response, 200);
    let answer = json_of(&response);
    assert_eq!(answer["degraded"], true, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("no upstream \"center\""),
        "{answer}"
    );
    assert_eq!(header(&response, "x-edgeplug-degraded"), "true");
    // The Open Inference Protocol's answer is marked the same way.
    let body = String::from_utf8(request(&images[3], 1.01)).unwrap();
    let v2 = json!({"inputs": [{
        "name": "body", "shape": [1], "datatype": "BYTES", "data": [body],
        "parameters": {"content_type": "application/json"},
    }]});
    let response = edge
        .post(
            "/v2/models/escalate/infer",
            "application/json",
            serde_json::to_vec(&v2).unwrap(),
        )
        .await;
    assert_status(&response, 200);
    assert_eq!(header(&response, "x-edgeplug-degraded"), "true");
    let text = String::from_utf8(edge.get("/metrics").await.body().to_vec()).unwrap();
    assert!(text.contains("reason=\"not-configured\"} 2"), "{text}");
    assert!(
        text.contains("edgeplug_degraded_answers_total{plugin=\"escalate\"} 2"),
        "{text}"
    );
}

#[test]
fn an_upstream_the_manifest_does_not_grant_is_not_permitted() {
    let dir = escalate_dir();
    let mut files = PluginFiles::from_dir(dir.path(), None).unwrap();
    files.manifest.grants.upstream.clear();
    let plugin = runtime().load(&files).unwrap();
    let (images, _) = digits();
    let result = plugin.infer(InferRequest {
        content_type: "application/json".into(),
        body: request(&images[0], 1.01),
        tensors: Vec::new(),
    });
    match result {
        Err(InvokeError::Plugin { code, message }) => {
            assert_eq!(code, PluginErrorCode::NotPermitted, "{message}");
            assert!(
                message.contains("does not grant upstream \"center\""),
                "{message}"
            );
        }
        other => panic!("expected not-permitted, got {other:?}"),
    }
    // Granted, but a runtime without upstreams (`edgeplug run`): the plugin answers degraded.
    let granted = runtime()
        .load(&PluginFiles::from_dir(dir.path(), None).unwrap())
        .unwrap();
    let answer = granted
        .infer(InferRequest {
            content_type: "application/json".into(),
            body: request(&images[0], 1.01),
            tensors: Vec::new(),
        })
        .unwrap();
    assert!(answer.degraded);
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["degraded"], true);
}

#[test]
fn a_component_built_against_wit_0_1_1_runs_unchanged() {
    // The echo test plugin as built against 0.1.1, before 0.1.2 added `upstream`.
    let files = PluginFiles::from_dir(
        &repo().join("tests/plugins/echo"),
        Some(&fixture("components/echo-wit-0.1.1.wasm")),
    )
    .unwrap();
    let plugin = runtime().load(&files).unwrap();
    let answer = plugin
        .infer(InferRequest {
            content_type: "text/plain".into(),
            body: b"still here".to_vec(),
            tensors: Vec::new(),
        })
        .unwrap();
    assert_eq!(answer.body, b"still here");
    assert!(!answer.degraded);
}

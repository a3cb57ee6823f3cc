//! A plugin written in Python (issue 19): `tests/fixtures/python-stats/app.py`, built with
//! componentize-py against world `edgeplug:plugin/plugin` into the committed component
//! `tests/fixtures/components/python-stats.wasm` (how, in `tests/fixtures/README.md`). It
//! loads through the same runtime as a Rust plugin, computes on the host's ops, answers its
//! errors as WIT errors (HTTP 400 through the gateway), passes the conformance kit and stays
//! inside its memory limit.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use edgeplug_kernels::Tensor;
use edgeplug_runtime::{
    InferRequest, InvokeError, LoadedPlugin, PluginErrorCode, PluginFiles, Runtime,
};
use edgeplug_tests::gateway::{TestGateway, assert_status, dir_bundle, error_code, json_of};
use edgeplug_tests::{assert_conformance_passes, conformance_of, error_of, fixture, runtime};
use serde_json::{Value, json};

fn plugin_dir() -> PathBuf {
    fixture("python-stats")
}

fn component() -> PathBuf {
    fixture("components/python-stats.wasm")
}

fn files() -> PluginFiles {
    PluginFiles::from_dir(&plugin_dir(), Some(&component())).expect("python-stats files read")
}

/// One runtime and one loaded plugin for the tests of this module: compiling the 18 MB
/// component takes seconds, and the runtime's compile cache shares it with every other load
/// of the same bytes (another manifest, the conformance kit) while this one lives.
fn shared() -> &'static (Runtime, LoadedPlugin) {
    static SHARED: OnceLock<(Runtime, LoadedPlugin)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = runtime();
        let started = Instant::now();
        let plugin = runtime.load(&files()).expect("the Python component loads");
        println!("python-stats: load (compile) {:.2?}", started.elapsed());
        (runtime, plugin)
    })
}

fn json_request(body: &str) -> InferRequest {
    InferRequest {
        content_type: "application/json".into(),
        body: body.as_bytes().to_vec(),
        tensors: Vec::new(),
    }
}

fn stats(plugin: &LoadedPlugin, request: InferRequest) -> Value {
    let response = plugin.infer(request).expect("the plugin answers");
    assert_eq!(response.content_type, "application/json");
    serde_json::from_slice(&response.body).expect("the answer is JSON")
}

#[track_caller]
fn assert_close(got: &Value, want: f64) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("{got} is not a number"));
    assert!(
        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
        "{got} != {want}"
    );
}

/// What the plugin must answer for `values`, computed here in f64.
fn expected(values: &[f64]) -> [(&'static str, f64); 5] {
    let n = values.len() as f64;
    let sum: f64 = values.iter().sum();
    let mean = sum / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    [
        ("sum", sum),
        ("mean", mean),
        ("min", values.iter().copied().fold(f64::INFINITY, f64::min)),
        (
            "max",
            values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ),
        ("std", var.sqrt()),
    ]
}

#[test]
fn the_python_plugin_loads_and_computes_on_host_ops() {
    let (runtime, plugin) = shared();
    let info = plugin.info();
    assert_eq!(
        (info.name.as_str(), info.version.as_str()),
        ("python-stats", "0.1.0")
    );
    assert!(info.description.contains("Python"), "{}", info.description);

    // JSON in: every statistic against an f64 reference.
    let values: Vec<f64> = (0..100)
        .map(|i| ((i * 37) % 101) as f64 * 0.25 - 7.0)
        .collect();
    let answer = stats(plugin, json_request(&json!(values).to_string()));
    assert_eq!(answer["count"], 100);
    for (key, want) in expected(&values) {
        assert_close(&answer[key], want);
    }
    // The wrapped form and a one-element list (std 0).
    let answer = stats(plugin, json_request(r#"{"values": [3.5]}"#));
    assert_eq!(answer["count"], 1);
    for key in ["sum", "mean", "min", "max"] {
        assert_close(&answer[key], 3.5);
    }
    assert_close(&answer["std"], 0.0);

    // A float32 tensor of any shape is read whole (OIP v2 input), without JSON.
    let data: Vec<f32> = (1..=12).map(|i| i as f32).collect();
    let tensor = Tensor::from_f32(vec![3, 4], data.clone()).unwrap();
    let answer = stats(
        plugin,
        InferRequest {
            content_type: String::new(),
            body: Vec::new(),
            tensors: vec![("values".into(), tensor)],
        },
    );
    assert_eq!(answer["count"], 12);
    let data: Vec<f64> = data.iter().map(|&v| f64::from(v)).collect();
    for (key, want) in expected(&data) {
        assert_close(&answer[key], want);
    }

    // Figures for the report, not assertions: timings depend on the machine.
    let size = std::fs::metadata(component()).unwrap().len();
    let body = json!(values).to_string();
    let mut fresh = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        plugin.infer(json_request(&body)).unwrap();
        fresh.push(t.elapsed());
    }
    let (result, request_stats) = plugin.infer_with_stats(json_request(&body));
    result.unwrap();
    let mut kept_files = files();
    kept_files.manifest.limits.requests_per_instance = 1000;
    let kept_plugin = runtime.load(&kept_files).unwrap();
    kept_plugin.infer(json_request(&body)).unwrap();
    let mut kept = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        kept_plugin.infer(json_request(&body)).unwrap();
        kept.push(t.elapsed());
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "python-stats: component {:.1} MB; 100 values: {:.2?} per request on a fresh \
         instance, {:.2?} on a kept one; peak linear memory {:.1} MiB",
        size as f64 / 1e6,
        median(fresh),
        median(kept),
        request_stats.peak_memory_bytes as f64 / f64::from(1 << 20),
    );
}

#[test]
fn bad_input_is_the_plugins_invalid_argument_error() {
    let (_, plugin) = shared();
    for (body, says) in [
        ("not json", "not JSON"),
        ("[]", "no values"),
        (r#"[1, "two", 3]"#, "element 1 is not a number"),
        ("[1, true]", "element 1 is not a number"),
        (r#"{"numbers": [1]}"#, "expected a JSON list"),
        ("42", "expected a JSON list"),
    ] {
        let (code, message) = error_of(plugin, json_request(body));
        assert_eq!(code, PluginErrorCode::InvalidArgument, "{body}: {message}");
        assert!(message.contains(says), "{body}: {message}");
    }
    let (code, message) = error_of(
        plugin,
        InferRequest {
            content_type: "image/png".into(),
            body: b"[1]".to_vec(),
            tensors: Vec::new(),
        },
    );
    assert_eq!(code, PluginErrorCode::InvalidArgument);
    assert!(message.contains("image/png"), "{message}");
    let ints = Tensor::from_i64(vec![2], vec![1, 2]).unwrap();
    let (code, message) = error_of(
        plugin,
        InferRequest {
            content_type: String::new(),
            body: Vec::new(),
            tensors: vec![("values".into(), ints)],
        },
    );
    assert_eq!(code, PluginErrorCode::InvalidArgument);
    assert!(message.contains("float32"), "{message}");
}

#[test]
fn its_linear_memory_limit_holds_and_the_next_request_is_answered() {
    // The manifest's 2 MiB request limit keeps the plugin well inside its memory; with the
    // default 16 MiB, a body of 7.8 million zeros becomes a CPython list of 8 bytes a slot,
    // more than the manifest's 64 MiB of linear memory, which the runtime must stop.
    let (runtime, shipped) = shared();
    let mut files = files();
    files.manifest.limits.max_request_mib = 16;
    let plugin = runtime.load(&files).unwrap();
    let mut body = String::with_capacity(16 << 20);
    body.push('[');
    while body.len() < (15 << 20) {
        body.push_str("0,");
    }
    body.push_str("0]");
    match plugin.infer(json_request(&body)) {
        Err(InvokeError::MemoryExhausted { limit_bytes }) => assert_eq!(limit_bytes, 64 << 20),
        Err(other) => panic!("expected the memory limit, got {other}"),
        Ok(r) => panic!("answered {}", String::from_utf8_lossy(&r.body)),
    }
    let answer = stats(&plugin, json_request("[1, 2, 3]"));
    // As shipped, the same body is refused before the plugin sees it.
    match shipped.infer(json_request(&body)) {
        Err(InvokeError::RequestTooLarge { limit, .. }) => assert_eq!(limit, 2 << 20),
        Err(other) => panic!("expected the request limit, got {other}"),
        Ok(r) => panic!("answered {}", String::from_utf8_lossy(&r.body)),
    }
    assert_close(&answer["mean"], 2.0);
}

#[test]
fn the_python_plugin_passes_conformance() {
    let report = conformance_of(&shared().0, &plugin_dir(), &component());
    print!("{}", report.to_text());
    assert_conformance_passes(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_plugin_serves_through_the_gateway() {
    let gateway = TestGateway::start("").await;
    let signed = dir_bundle(&gateway.key, &plugin_dir(), &component());
    assert_status(&gateway.push("python-stats", signed).await, 200);

    let answer = gateway
        .post(
            "/v1/plugins/python-stats/infer",
            "application/json",
            "[2, 4, 4, 4, 5, 5, 7, 9]",
        )
        .await;
    assert_status(&answer, 200);
    let answer = json_of(&answer);
    assert_eq!(answer["count"], 8);
    assert_close(&answer["mean"], 5.0);
    assert_close(&answer["std"], 2.0);

    let bad = gateway
        .post(
            "/v1/plugins/python-stats/infer",
            "application/json",
            "[1, \"x\"]",
        )
        .await;
    assert_status(&bad, 400);
    assert_eq!(error_code(&bad), "invalid-argument");
    assert!(
        json_of(&bad)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("element 1 is not a number"),
        "{}",
        json_of(&bad)
    );
}

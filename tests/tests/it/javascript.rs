//! A plugin written in JavaScript (issue 19): `tests/fixtures/js-stats/app.js`, built with
//! ComponentizeJS against world `edgeplug:plugin/plugin` into the committed component
//! `tests/fixtures/components/js-stats.wasm` (how, in `tests/fixtures/README.md`). The same
//! statistics as the Python plugin of `python.rs`, checked the same way.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgeplug_runtime::{InferRequest, PluginErrorCode, PluginFiles};
use edgeplug_tests::gateway::{TestGateway, assert_status, dir_bundle, error_code, json_of};
use edgeplug_tests::{assert_conformance_passes, conformance_of, error_of, fixture, runtime};
use serde_json::{Value, json};

fn plugin_dir() -> PathBuf {
    fixture("js-stats")
}

fn component() -> PathBuf {
    fixture("components/js-stats.wasm")
}

fn files() -> PluginFiles {
    PluginFiles::from_dir(&plugin_dir(), Some(&component())).expect("js-stats files read")
}

fn json_request(body: &str) -> InferRequest {
    InferRequest {
        content_type: "application/json".into(),
        body: body.as_bytes().to_vec(),
        tensors: Vec::new(),
    }
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

#[test]
fn the_javascript_plugin_computes_on_host_ops_and_returns_wit_errors() {
    let runtime = runtime();
    let started = Instant::now();
    let plugin = runtime
        .load(&files())
        .expect("the JavaScript component loads");
    let load_time = started.elapsed();
    assert_eq!(plugin.info().name, "js-stats");

    let values: Vec<f64> = (0..100)
        .map(|i| ((i * 37) % 101) as f64 * 0.25 - 7.0)
        .collect();
    let body = json!(values).to_string();
    let response = plugin
        .infer(json_request(&body))
        .expect("the plugin answers");
    assert_eq!(response.content_type, "application/json");
    let answer: Value = serde_json::from_slice(&response.body).unwrap();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert_eq!(answer["count"], 100);
    assert_close(&answer["sum"], values.iter().sum());
    assert_close(&answer["mean"], mean);
    assert_close(&answer["min"], -7.0);
    assert_close(&answer["max"], 18.0);
    assert_close(&answer["std"], std);

    for (body, says) in [
        ("not json", "not JSON"),
        ("[]", "no values"),
        (r#"[1, "two"]"#, "element 1 is not a number"),
        ("42", "expected a JSON list"),
    ] {
        let (code, message) = error_of(&plugin, json_request(body));
        assert_eq!(code, PluginErrorCode::InvalidArgument, "{body}: {message}");
        assert!(message.contains(says), "{body}: {message}");
    }

    // Figures for the report, not assertions.
    let mut times: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            plugin.infer(json_request(&body)).unwrap();
            t.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "js-stats: component {:.1} MB, load (compile) {load_time:.2?}, 100 values: {:.2?} per \
         request on a fresh instance",
        std::fs::metadata(component()).unwrap().len() as f64 / 1e6,
        times[times.len() / 2],
    );
}

#[test]
fn the_javascript_plugin_passes_conformance() {
    let report = conformance_of(&runtime(), &plugin_dir(), &component());
    print!("{}", report.to_text());
    assert_conformance_passes(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_plugin_serves_through_the_gateway() {
    let gateway = TestGateway::start("").await;
    let signed = dir_bundle(&gateway.key, &plugin_dir(), &component());
    assert_status(&gateway.push("js-stats", signed).await, 200);

    let answer = gateway
        .post(
            "/v1/plugins/js-stats/infer",
            "application/json",
            "[2, 4, 4, 4, 5, 5, 7, 9]",
        )
        .await;
    assert_status(&answer, 200);
    let answer = json_of(&answer);
    assert_close(&answer["mean"], 5.0);
    assert_close(&answer["std"], 2.0);

    let bad = gateway
        .post("/v1/plugins/js-stats/infer", "application/json", "{}")
        .await;
    assert_status(&bad, 400);
    assert_eq!(error_code(&bad), "invalid-argument");
}

//! A guest written against the WASI-NN proposal alone (tests/plugins/wasi-nn-classifier: a
//! WASI command importing `wasi:nn`, nothing of edgeplug) runs unchanged: in the runtime, as a
//! bundle pushed to a gateway, and through the conformance kit.

use std::path::Path;

use edgeplug_bundle::{self as bundle, BundleLimits};
use edgeplug_runtime::conformance::{self, Options, Target};
use edgeplug_runtime::{InferRequest, InvokeError, PluginErrorCode, PluginFiles};
use edgeplug_tests::gateway::{TestGateway, assert_status};
use edgeplug_tests::{fixture, runtime};
use serde_json::Value;

use crate::classifier::{MODELS, PHOTOS};

/// The guest's plugin directory with the graph it loads by name and its built component.
fn plugin_dir() -> tempfile::TempDir {
    edgeplug_tests::gateway::wasi_nn_plugin_dir()
}

fn photo(name: &str) -> InferRequest {
    InferRequest {
        content_type: if name.ends_with(".jpg") {
            "image/jpeg"
        } else {
            "image/png"
        }
        .into(),
        body: std::fs::read(fixture("images").join(name)).unwrap(),
        tensors: Vec::new(),
    }
}

fn top1(body: &[u8]) -> u64 {
    let answer: Value = serde_json::from_slice(body).unwrap();
    answer["top5"][0]["class"].as_u64().unwrap()
}

#[test]
fn the_wasi_nn_guest_classifies_the_four_photos_and_refuses_a_bad_one() {
    let dir = plugin_dir();
    let runtime = runtime();
    let plugin = runtime
        .load(&PluginFiles::from_dir(dir.path(), None).unwrap())
        .unwrap();
    assert_eq!(plugin.info().name, "wasi-nn-classifier");
    for (photo_name, want) in PHOTOS.iter().zip(MODELS[0].top1) {
        let answer = plugin.infer(photo(photo_name)).unwrap();
        assert_eq!(answer.content_type, "application/json");
        assert_eq!(top1(&answer.body), want as u64, "{photo_name}");
    }
    // A bad photo is refused with a CGI Status header: a 400 with the command's reason.
    let bad = plugin
        .infer(InferRequest {
            content_type: "image/png".into(),
            body: b"not a png".to_vec(),
            tensors: Vec::new(),
        })
        .unwrap_err();
    match &bad {
        InvokeError::Plugin { code, message } => {
            assert_eq!(*code, PluginErrorCode::InvalidArgument);
            assert!(message.contains("not a photo"), "{message}");
        }
        other => panic!("expected the command's refusal, got {other:?}"),
    }
    assert_eq!(bad.http_status(), 400);
    // A command takes a body, not tensors.
    let tensors = plugin
        .infer(InferRequest {
            content_type: String::new(),
            body: Vec::new(),
            tensors: vec![(
                "input".into(),
                edgeplug_kernels::Tensor::from_f32(vec![1], vec![0.0]).unwrap(),
            )],
        })
        .unwrap_err();
    assert!(tensors.message().contains("WASI command"), "{tensors}");
}

#[test]
fn a_graph_the_manifest_does_not_grant_is_not_found() {
    let dir = plugin_dir();
    // The same guest, with its model granted under another name.
    let manifest = std::fs::read_to_string(dir.path().join("plugin.toml"))
        .unwrap()
        .replace("models = { mobilenetv2 =", "models = { other =");
    std::fs::write(dir.path().join("plugin.toml"), manifest).unwrap();
    let plugin = runtime()
        .load(&PluginFiles::from_dir(dir.path(), None).unwrap())
        .unwrap();
    let error = plugin.infer(photo("chelsea.png")).unwrap_err();
    let message = error.message();
    assert!(
        message.contains("load-by-name") && message.contains("NotFound"),
        "{message}"
    );
    assert!(
        message.contains("\"mobilenetv2\" is not granted"),
        "{message}"
    );
    assert_eq!(error.http_status(), 500);
}

#[test]
fn the_wasi_nn_guest_passes_conformance() {
    let dir = plugin_dir();
    let report = conformance::run(
        &runtime(),
        &Target::Dir {
            dir: dir.path().to_path_buf(),
            component: None,
        },
        &Options {
            latency_runs: 3,
            determinism_runs: 2,
            ..Options::default()
        },
    );
    assert!(report.passed(), "{}", report.to_text());
    assert!(report.checks.iter().any(|c| c.group == "self-test"));
    assert!(report.checks.iter().any(|c| c.group == "robustness"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasi_nn_guest_serves_through_the_gateway() {
    let gateway = TestGateway::start("").await;
    let dir = plugin_dir();
    let limits = BundleLimits::default();
    let packed = bundle::pack_dir(Path::new(dir.path()), &limits).unwrap();
    let signed = bundle::sign_bundle(&packed.bytes, &gateway.key, &limits).unwrap();
    assert_status(&gateway.push("wasi-nn-classifier", signed).await, 200);
    for (photo_name, want) in PHOTOS.iter().zip(MODELS[0].top1) {
        let request = photo(photo_name);
        let answer = gateway
            .post(
                "/v1/plugins/wasi-nn-classifier/infer",
                &request.content_type,
                request.body,
            )
            .await;
        assert_status(&answer, 200);
        assert_eq!(top1(answer.body()), want as u64, "{photo_name}");
    }
    let bad = gateway
        .post(
            "/v1/plugins/wasi-nn-classifier/infer",
            "image/png",
            b"junk".to_vec(),
        )
        .await;
    assert_status(&bad, 400);
}

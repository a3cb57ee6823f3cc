//! The runtime around a plugin: describe, tensors in and out, grants and limits.

use edgeplug_kernels::Tensor;
use edgeplug_runtime::{InferRequest, PluginErrorCode};
use edgeplug_tests::{DIGITS_WASM, load_example, runtime};

#[test]
fn describe_matches_the_manifest() {
    let runtime = runtime();
    let plugin = load_example(&runtime, "digits", DIGITS_WASM);
    let info = plugin.info();
    assert_eq!(info.name, "digits");
    assert_eq!(info.version, "0.2.0");
    assert_eq!(info.inputs.len(), 1);
    assert_eq!(info.inputs[0].shape, [1, 1, 16, 16]);
    assert_eq!(info.outputs[0].shape, [1, 10]);
}

#[test]
fn tensor_requests_are_checked_and_answered() {
    let runtime = runtime();
    let plugin = load_example(&runtime, "digits", DIGITS_WASM);
    let wrong = Tensor::from_f32(vec![1, 1, 8, 8], vec![0.0; 64]).unwrap();
    let err = plugin
        .infer(InferRequest {
            tensors: vec![("input".into(), wrong)],
            ..InferRequest::default()
        })
        .unwrap_err();
    assert!(
        matches!(
            &err,
            edgeplug_runtime::InvokeError::Plugin {
                code: PluginErrorCode::ShapeMismatch,
                ..
            }
        ),
        "{err}"
    );
    let blank = Tensor::from_f32(vec![1, 1, 16, 16], vec![0.0; 256]).unwrap();
    let response = plugin
        .infer(InferRequest {
            tensors: vec![("input".into(), blank)],
            ..InferRequest::default()
        })
        .unwrap();
    let probs = response.tensors[0].1.as_f32().unwrap();
    let sum: f32 = probs.iter().sum();
    assert!((sum - 1.0).abs() < 1e-5, "softmax sums to {sum}");
}

#[test]
fn oversized_request_is_refused_before_the_plugin_runs() {
    let runtime = runtime();
    let plugin = load_example(&runtime, "digits", DIGITS_WASM);
    let limit = plugin.shared().limits().request_bytes;
    let err = plugin
        .infer(InferRequest {
            content_type: "image/png".into(),
            body: vec![0; limit + 1],
            tensors: Vec::new(),
        })
        .unwrap_err();
    assert!(
        matches!(err, edgeplug_runtime::InvokeError::RequestTooLarge { .. }),
        "{err}"
    );
}

#[test]
fn shipped_weights_are_exactly_what_the_extractor_gives() {
    let root = edgeplug_tests::repo().join("plugins/digits");
    let onnx = std::fs::read(root.join("digits_cnn.onnx")).unwrap();
    let (bytes, nodes) = edgeplug_models::weights::extract_onnx_weights(&onnx).unwrap();
    assert_eq!(nodes.len(), 22, "digits_cnn has 22 nodes");
    let shipped = std::fs::read(root.join("weights.safetensors")).unwrap();
    assert!(
        bytes == shipped,
        "plugins/digits/weights.safetensors is stale: rerun `edgeplug weights`"
    );
}

/// What the `counter` test plugin answers: how many requests its instance has served.
fn served(plugin: &edgeplug_runtime::LoadedPlugin) -> u32 {
    served_after(plugin, b"{}")
}

/// The `counter` test plugin's count for a request with `body` (`grow N` grows it first).
fn served_after(plugin: &edgeplug_runtime::LoadedPlugin, body: &[u8]) -> u32 {
    let response = plugin
        .infer(InferRequest {
            content_type: "text/plain".into(),
            body: body.to_vec(),
            tensors: Vec::new(),
        })
        .expect("counter answers");
    let value: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    value["served"].as_u64().expect("a count") as u32
}

#[test]
fn an_instance_serves_as_many_requests_as_the_manifest_allows() {
    let runtime = runtime();
    let plugin = edgeplug_tests::load_test_plugin(&runtime, "counter").unwrap();
    assert_eq!(plugin.shared().limits().requests_per_instance, 3);
    // Three requests per instance, then a fresh one.
    let seen: Vec<u32> = (0..7).map(|_| served(&plugin)).collect();
    assert_eq!(seen, [1, 2, 3, 1, 2, 3, 1]);
    // A version that stops serving gives its kept instances back.
    plugin.release_kept_instances();
    assert_eq!(served(&plugin), 1);
}

#[test]
fn an_instance_that_trapped_is_never_kept() {
    let runtime = runtime();
    let plugin = edgeplug_tests::load_test_plugin(&runtime, "counter").unwrap();
    assert_eq!(served(&plugin), 1);
    let trapped = plugin.infer(InferRequest {
        content_type: "text/plain".into(),
        body: b"trap".to_vec(),
        tensors: Vec::new(),
    });
    match trapped {
        Err(edgeplug_runtime::InvokeError::Trap { stderr, .. }) => {
            assert!(stderr.contains("after 2 requests"), "{stderr}")
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(served(&plugin), 1, "a fresh instance after the trap");
}

#[test]
fn an_instance_whose_memory_grew_past_the_bound_is_not_kept() {
    let runtime = runtime();
    let plugin = edgeplug_tests::load_test_plugin(&runtime, "counter").unwrap();
    let grow = |mib: usize| served_after(&plugin, format!("grow {mib}").as_bytes());
    // Within the bound the instance is kept as usual.
    assert_eq!(grow(4), 1);
    assert_eq!(served(&plugin), 2);
    // Past it, the instance that answered is dropped: the next request gets a fresh one.
    plugin.release_kept_instances();
    let past = edgeplug_runtime::MAX_KEPT_MEMORY_BYTES >> 20;
    assert_eq!(grow(past + 1), 1);
    assert_eq!(
        served(&plugin),
        1,
        "a fresh instance after one grew past the bound"
    );
}

#[test]
fn the_host_cap_gives_every_request_a_fresh_instance() {
    let mut config = edgeplug_runtime::RuntimeConfig::default();
    config.limit_caps.requests_per_instance = 1;
    let runtime = edgeplug_runtime::Runtime::new(config).unwrap();
    let plugin = edgeplug_tests::load_test_plugin(&runtime, "counter").unwrap();
    assert_eq!(plugin.shared().limits().requests_per_instance, 1);
    let seen: Vec<u32> = (0..4).map(|_| served(&plugin)).collect();
    assert_eq!(seen, [1, 1, 1, 1]);
}

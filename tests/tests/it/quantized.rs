//! Quantized tensors and ops of WIT 0.1.5 (issue 17), through a real plugin: the `quantized`
//! test plugin runs onnxruntime's QOperator int8 digits CNN (`digits_cnn_int8_qop.onnx`)
//! layer by layer with `quantize`, `qconv2d` and `dequantize`, and its classifier also with
//! `qgemm`; its outputs must match onnxruntime's on the 540 held-out digits. And components
//! built against older 0.1.x, which know none of it, still link and run on this host.

use edgeplug_runtime::{InferRequest, PluginErrorCode, PluginFiles};
use edgeplug_sdk::npy::NpyData;
use edgeplug_tests::{
    assert_conformance_passes, conformance_of, digits_test_bodies, error_of, fixture,
    load_test_plugin, npy, repo, runtime, test_plugin_files, test_plugin_wasm,
};

/// `probs` against onnxruntime's QOperator outputs. Both sum each convolution exactly in
/// integers and requantize it with round half to even, so the nine layers' bytes agree; what
/// is left is the float head's summation order (measured: 3.6e-7; the bound is 30 times that).
const QOP_TOLERANCE: f32 = 1e-5;

/// `probs_int8` (the classifier quantized too) against onnxruntime's QOperator outputs, whose
/// classifier is float: the logits gain the rounding of the pooled features (half of a step of
/// 6 / 255) and of the logits themselves (half of a step of 0.11, `make_weights.py`);
/// measured: 0.031.
const INT8_TOLERANCE: f32 = 0.05;

fn f32_rows(path: &str) -> Vec<Vec<f32>> {
    let array = npy(path);
    let NpyData::F32(values) = array.data else {
        panic!("{path} is float32");
    };
    values.chunks(array.shape[1]).map(<[f32]>::to_vec).collect()
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn the_int8_digits_cnn_through_host_ops_matches_onnxruntime() {
    let plugin = load_test_plugin(&runtime(), "quantized").unwrap();
    let qop = f32_rows("models/digits_cnn_int8_qop_ref_out.npy");
    let float = f32_rows("models/digits_cnn_ref_out.npy");
    let bodies = digits_test_bodies();
    assert_eq!(bodies.len(), qop.len());
    let (mut worst_qop, mut worst_int8, mut worst_int8_float) = (0f32, 0f32, 0f32);
    let (mut correct, mut correct_int8, mut same_as_float) = (0, 0, 0);
    for (i, (body, label)) in bodies.into_iter().enumerate() {
        let answer = plugin
            .infer(InferRequest {
                content_type: "application/json".into(),
                body,
                tensors: Vec::new(),
            })
            .unwrap_or_else(|e| panic!("digit {i}: {e}"));
        let tensor = |name: &str| {
            let (_, t) = answer
                .tensors
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no output {name}"));
            assert_eq!(t.shape(), [1, 10]);
            t.as_f32().unwrap().to_vec()
        };
        let (probs, probs_int8) = (tensor("probs"), tensor("probs_int8"));
        let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(json["class"].as_u64(), Some(argmax(&probs) as u64));
        assert_eq!(
            json["class_int8"].as_u64(),
            Some(argmax(&probs_int8) as u64)
        );

        let diff = max_abs_diff(&probs, &qop[i]);
        assert!(
            diff <= QOP_TOLERANCE,
            "digit {i}: {probs:?} vs onnxruntime {:?}",
            qop[i]
        );
        assert_eq!(argmax(&probs), argmax(&qop[i]), "digit {i}");
        worst_qop = worst_qop.max(diff);
        let diff = max_abs_diff(&probs_int8, &qop[i]);
        assert!(
            diff <= INT8_TOLERANCE,
            "digit {i}: {probs_int8:?} vs onnxruntime {:?}",
            qop[i]
        );
        worst_int8 = worst_int8.max(diff);
        worst_int8_float = worst_int8_float.max(max_abs_diff(&probs_int8, &float[i]));
        correct += usize::from(argmax(&probs) == label as usize);
        correct_int8 += usize::from(argmax(&probs_int8) == label as usize);
        same_as_float += usize::from(argmax(&probs_int8) == argmax(&float[i]));
    }
    // onnxruntime's int8 model classifies 534 of the 540 right (tests/fixtures/README.md).
    assert_eq!(correct, 534, "the QOperator path's accuracy");
    // Measured: the all-int8 stack also gets 534 right and agrees with the float model's class
    // on all 540; one digit either way is allowed.
    assert!(correct_int8 >= 533, "all-int8 accuracy {correct_int8}/540");
    assert!(
        same_as_float >= 539,
        "all-int8 agrees with float on {same_as_float}/540"
    );
    eprintln!(
        "quantized digits: vs onnxruntime QOperator max |dprob| {worst_qop:.2e}, {correct}/540 \
         right; all-int8 (qgemm head) max |dprob| vs onnxruntime {worst_int8:.2e}, vs float \
         {worst_int8_float:.2e}, {correct_int8}/540 right, argmax = float on {same_as_float}/540"
    );
}

#[test]
fn a_plugin_misusing_the_quantized_ops_gets_wit_errors_not_traps() {
    let plugin = load_test_plugin(&runtime(), "quantized").unwrap();
    for (probe, code, says) in [
        (
            "zero-scale",
            PluginErrorCode::InvalidArgument,
            "scale 0 is not finite",
        ),
        (
            "zero-point-range",
            PluginErrorCode::InvalidArgument,
            "zero point 200",
        ),
        (
            "axis-count",
            PluginErrorCode::ShapeMismatch,
            "3 scales along axis 0",
        ),
        ("float-data", PluginErrorCode::Unsupported, "uint8 only"),
        (
            "uint8-weight",
            PluginErrorCode::Unsupported,
            "is 200, outside int8",
        ),
        (
            "sigmoid",
            PluginErrorCode::Unsupported,
            "activation Sigmoid",
        ),
        (
            "conv-channels",
            PluginErrorCode::ShapeMismatch,
            "qconv2d: input [1, 1, 2, 2]",
        ),
        (
            "gemm-shapes",
            PluginErrorCode::ShapeMismatch,
            "inner dimensions 3 and 2",
        ),
    ] {
        let body = serde_json::to_vec(&serde_json::json!({ "probe": probe })).unwrap();
        let (got, message) = error_of(
            &plugin,
            InferRequest {
                content_type: "application/json".into(),
                body,
                tensors: Vec::new(),
            },
        );
        assert_eq!(got, code, "{probe}: {message}");
        assert!(message.contains(says), "{probe}: {message}");
    }
    // Nothing above ended an instance: the next request is answered.
    let (body, _) = digits_test_bodies().swap_remove(7);
    plugin
        .infer(InferRequest {
            content_type: "application/json".into(),
            body,
            tensors: Vec::new(),
        })
        .unwrap();
}

#[test]
fn the_quantized_plugin_passes_its_self_test_and_the_conformance_kit() {
    let files = test_plugin_files("quantized");
    let rt = runtime();
    let plugin = rt.load(&files).unwrap();
    assert_eq!(edgeplug_runtime::selftest::run(&plugin, &files).unwrap(), 1);
    // Robustness (malformed bodies are errors, not traps), determinism and limits included.
    let report = conformance_of(
        &rt,
        &repo().join("tests/plugins/quantized"),
        std::path::Path::new(test_plugin_wasm("quantized")),
    );
    assert_conformance_passes(&report);
}

#[test]
fn components_built_against_older_wit_run_on_the_0_1_5_host() {
    // 0.1.5 added a resource to `types` and functions to `ops`; a component that imports the
    // 0.1.0, 0.1.4 ... interfaces links to them and answers its self-tests: echo as built
    // against 0.1.0 and 0.1.1, and python-stats, built against 0.1.4 (imports `types` and
    // `ops@0.1.4`, whose tensors and element types it lifts).
    let rt = runtime();
    for (dir, component) in [
        ("tests/plugins/echo", "components/echo-wit-0.1.0.wasm"),
        ("tests/plugins/echo", "components/echo-wit-0.1.1.wasm"),
        (
            "tests/fixtures/python-stats",
            "components/python-stats.wasm",
        ),
    ] {
        let files = PluginFiles::from_dir(&repo().join(dir), Some(&fixture(component))).unwrap();
        let plugin = rt
            .load(&files)
            .unwrap_or_else(|e| panic!("{component}: {e}"));
        let passed = edgeplug_runtime::selftest::run(&plugin, &files)
            .unwrap_or_else(|e| panic!("{component}: {e}"));
        assert!(passed >= 1, "{component}: no self-test ran");
    }
}

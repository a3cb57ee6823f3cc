//! Quantized models on the int8 kernels against onnxruntime's int8 outputs.

use std::path::PathBuf;

use crate::native::tests::{read_npy_f32, row, row_diff};
use crate::native::{NativeError, NativeModel, Precision};
use edgeplug_kernels::fast::Isa;

fn repo_file(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Runs the first `rows` rows of `input` through `model`; returns the
/// outputs, one `Vec` per row.
fn outputs(model: &NativeModel, input: &str, rows: usize) -> Vec<Vec<f32>> {
    let (xs, x) = read_npy_f32(&repo_file(input));
    (0..rows.min(xs[0]))
        .map(|i| {
            let y = model.run(&[&row(&xs, &x, i)]).unwrap();
            y[0].as_f32().unwrap().to_vec()
        })
        .collect()
}

/// Largest |difference| to the reference rows, and how many argmaxes agree.
fn compare(got: &[Vec<f32>], reference: &str) -> (f32, usize) {
    let (rs, r) = read_npy_f32(&repo_file(reference));
    let per: usize = rs[1..].iter().product();
    let mut max_diff = 0f32;
    let mut agree = 0;
    for (i, y) in got.iter().enumerate() {
        let (diff, same) = row_diff(y, &r[i * per..][..per]);
        max_diff = max_diff.max(diff);
        agree += usize::from(same);
    }
    (max_diff, agree)
}

/// The image classifiers' int8 logits are quantized with the graph's last
/// QuantizeLinear scale: onnxruntime and these kernels agree up to the
/// rounding of a requantization here and there, which moves a value by one
/// step and can carry into the next layers; the tolerance is two steps of
/// the logits' scale (the bound), and the top-1 must be the same.
#[test]
fn image_classifiers_in_int8_match_onnxruntime_within_two_steps() {
    for (model, input, reference, logit_scale) in [
        (
            "plugins/image-classifier/mobilenetv2_int8_qdq.onnx",
            "tests/fixtures/imagenet/mobilenetv2_input.npy",
            "tests/fixtures/imagenet/mobilenetv2_int8_qdq_ref_out.npy",
            0.117_249_34f32,
        ),
        (
            "plugins/image-classifier/efficientnet_lite0_int8_qdq.onnx",
            "tests/fixtures/imagenet/efficientnet_lite0_input.npy",
            "tests/fixtures/imagenet/efficientnet_lite0_int8_qdq_ref_out.npy",
            f32::NAN,
        ),
    ] {
        let bytes = repo_file(model);
        let native = NativeModel::load(&bytes).unwrap();
        assert_eq!(native.precision(), Precision::Int8, "{model}");
        let got = outputs(&native, input, 4);
        let (diff, agree) = compare(&got, reference);
        let step = if logit_scale.is_nan() {
            logits_scale(&got)
        } else {
            logit_scale
        };
        println!(
            "{model}: max |Δlogit| {diff} ({:.2} steps of {step}), top-1 {agree}/4",
            diff / step
        );
        assert!(
            diff <= 2.0 * step + 1e-6,
            "{model}: max |Δlogit| {diff} > 2 × {step}"
        );
        assert_eq!(agree, 4, "{model}: top-1 differs from onnxruntime int8");
    }
}

/// The smallest gap between distinct output values: the step of a quantized output.
fn logits_scale(rows: &[Vec<f32>]) -> f32 {
    let mut v: Vec<f32> = rows.iter().flatten().copied().collect();
    v.sort_by(f32::total_cmp);
    v.windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&d| d > 1e-6)
        .fold(f32::INFINITY, f32::min)
}

/// The digits CNN quantized (QDQ, Softmax in float): every test digit's
/// probabilities next to onnxruntime's, and its accuracy.
#[test]
fn digits_in_int8_matches_onnxruntime() {
    let bytes = repo_file("tests/fixtures/models/digits_cnn_int8_qdq.onnx");
    let native = NativeModel::load(&bytes).unwrap();
    assert_eq!(native.precision(), Precision::Int8);
    let got = outputs(&native, "tests/fixtures/models/digits_test.npy", 540);
    let (diff, agree) = compare(
        &got,
        "tests/fixtures/models/digits_cnn_int8_qdq_ref_out.npy",
    );
    println!("digits int8: max |Δprob| {diff}, argmax agrees {agree}/540");
    assert!(diff <= 0.02, "max |Δprob| {diff}");
    assert!(agree >= 538, "argmax agrees on {agree}/540");
}

/// Integer sums are exact and the requantization is the same arithmetic on
/// every path, so the VNNI and portable kernels give the same bytes.
#[test]
fn int8_paths_agree_exactly() {
    let bytes = repo_file("plugins/image-classifier/mobilenetv2_int8_qdq.onnx");
    let runs: Vec<(Isa, Vec<Vec<f32>>)> = Isa::all_available()
        .into_iter()
        .chain([Isa::Portable])
        .map(|isa| {
            let native = NativeModel::load_with_isa(&bytes, isa).unwrap();
            (
                isa,
                outputs(&native, "tests/fixtures/imagenet/mobilenetv2_input.npy", 2),
            )
        })
        .collect();
    for (isa, got) in &runs[1..] {
        assert_eq!(got, &runs[0].1, "{isa:?} differs from {:?}", runs[0].0);
    }
}

/// A QOperator graph (QLinearConv) is not compiled here: it is refused as
/// unsupported, which sends it to tract, as before.
#[test]
fn qoperator_graphs_fall_back() {
    let bytes = repo_file("tests/fixtures/models/digits_cnn_int8_qop.onnx");
    match NativeModel::load(&bytes) {
        Err(NativeError::Unsupported { op, .. }) => assert_eq!(op, "QLinearConv"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn int8_is_no_precision_to_ask_for() {
    let err = "int8".parse::<Precision>().unwrap_err();
    assert!(err.contains("comes with the model"), "{err}");
}

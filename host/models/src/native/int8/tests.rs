//! Quantized models on the int8 kernels against onnxruntime's int8 outputs.

use std::path::PathBuf;

use crate::native::tests::{argmax, read_npy_f32, read_npy_i64, row, row_diff};
use crate::native::{NativeError, NativeModel, Precision};
use edgeplug_kernels::Tensor;
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
        // The QOperator form (QLinearConv, QLinearAdd,
        // QLinearGlobalAveragePool, QGemm) of the same float model.
        (
            "tests/fixtures/imagenet/mobilenetv2_int8_qop.onnx",
            "tests/fixtures/imagenet/mobilenetv2_input.npy",
            "tests/fixtures/imagenet/mobilenetv2_int8_qop_ref_out.npy",
            f32::NAN,
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

/// onnxruntime's QOperator digits CNN (QLinearConv, dense, depthwise and
/// pointwise with per-channel weight scales; Clip between DequantizeLinear
/// and QuantizeLinear; pool and classifier left in float) runs on the int8
/// steps, and through `Model` it says so. The integer sums are exact and
/// every requantization is onnxruntime's arithmetic, so the bound is a
/// float one: 1e-5 on probabilities (the order of the float classifier's
/// sums), with the same argmax on all 540 digits and its accuracy on the labels.
#[test]
fn digits_qoperator_in_int8_matches_onnxruntime() {
    let bytes = repo_file("tests/fixtures/models/digits_cnn_int8_qop.onnx");
    let native = NativeModel::load(&bytes).unwrap();
    assert_eq!(native.precision(), Precision::Int8);
    let model = crate::model::Model::load("digits_qop", &bytes).unwrap();
    assert_eq!(
        (model.backend(), model.precision()),
        ("native", Precision::Int8)
    );
    let got = outputs(&native, "tests/fixtures/models/digits_test.npy", 540);
    let (diff, agree) = compare(
        &got,
        "tests/fixtures/models/digits_cnn_int8_qop_ref_out.npy",
    );
    let labels = read_npy_i64(&repo_file("tests/fixtures/digits/digits_test_labels.npy"));
    let right = got
        .iter()
        .zip(&labels)
        .filter(|(y, l)| argmax(y) as i64 == **l)
        .count();
    println!(
        "digits QOperator int8: max |Δprob| {diff}, argmax agrees {agree}/540, {right}/540 right"
    );
    assert!(diff <= 1e-5, "max |Δprob| {diff}");
    assert_eq!(agree, 540, "argmax differs from onnxruntime");
    assert!(right >= 530, "{right}/540 right");
}

/// The digits CNN in QOperator form with every operator but Softmax
/// quantized (QLinearGlobalAveragePool, a Flatten of `u8`, QGemm): its
/// logits are bytes, so the bound is one step of their scale through the
/// Softmax (measured: none), the argmax onnxruntime's on all 540 digits.
#[test]
fn digits_fully_qoperator_matches_onnxruntime() {
    let bytes = repo_file("tests/fixtures/models/digits_cnn_int8_qop_full.onnx");
    let native = NativeModel::load(&bytes).unwrap();
    assert_eq!(native.precision(), Precision::Int8);
    let got = outputs(&native, "tests/fixtures/models/digits_test.npy", 540);
    let (diff, agree) = compare(
        &got,
        "tests/fixtures/models/digits_cnn_int8_qop_full_ref_out.npy",
    );
    println!("digits full QOperator int8: max |Δprob| {diff}, argmax agrees {agree}/540");
    assert!(diff <= 1e-5, "max |Δprob| {diff}");
    assert_eq!(agree, 540, "argmax differs from onnxruntime");
}

/// A QOperator graph with `u8` (asymmetric, zero point 128) weights, which
/// the int8 GEMM does not take: refused as unsupported, so `Model` runs it
/// on tract, still reports int8, and gives onnxruntime's output within one
/// step of the output scale (0.05).
#[test]
fn qoperator_graphs_with_uint8_weights_fall_back() {
    let bytes = repo_file("tests/fixtures/models/qlinearconv_u8_weights.onnx");
    match NativeModel::load(&bytes) {
        Err(NativeError::Unsupported { op, .. }) => assert!(op.contains("asymmetric"), "{op}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let model = crate::model::Model::load("u8_weights", &bytes).unwrap();
    assert_eq!(
        (model.backend(), model.precision()),
        ("tract", Precision::Int8)
    );
    let (xs, x) = read_npy_f32(&repo_file(
        "tests/fixtures/models/qlinearconv_u8_weights_input.npy",
    ));
    let y = model.run(&[&row(&xs, &x, 0)]).unwrap();
    let (diff, _) = compare(
        &[y[0].as_f32().unwrap().to_vec()],
        "tests/fixtures/models/qlinearconv_u8_weights_ref_out.npy",
    );
    assert!(diff <= 0.05 + 1e-6, "max |Δ| {diff}");
}

/// QLinearMatMul ([3, 40] by int8 weights with a scale per column) against
/// onnxruntime: the sums are exact, so the bound is one step of the output
/// scale (0.04) for a requantization rounded the other way.
#[test]
fn qlinearmatmul_matches_onnxruntime() {
    let native = NativeModel::load(&repo_file("tests/fixtures/models/qlinearmatmul.onnx")).unwrap();
    assert_eq!(native.precision(), Precision::Int8);
    let (xs, x) = read_npy_f32(&repo_file("tests/fixtures/models/qlinearmatmul_input.npy"));
    assert_eq!(xs, [1, 3, 40]);
    let x = Tensor::from_f32(vec![3, 40], x).unwrap();
    let y = native.run(&[&x]).unwrap()[0].as_f32().unwrap().to_vec();
    let (diff, _) = compare(&[y], "tests/fixtures/models/qlinearmatmul_ref_out.npy");
    println!("QLinearMatMul: max |Δ| {diff}");
    assert!(diff <= 0.04 + 1e-6, "max |Δ| {diff}");
}

/// The QOperator and QDQ spellings of one operation compile to the same
/// steps: the digits CNN in either form lists the same int8 convolutions.
#[test]
fn qoperator_and_qdq_share_steps() {
    let kinds = |path: &str| -> Vec<String> {
        let m = NativeModel::load(&repo_file(path)).unwrap();
        let x = Tensor::zeros(vec![1, 1, 16, 16]).unwrap();
        m.profile(&[&x], 1)
            .unwrap()
            .into_iter()
            .map(|p| p.step)
            .filter(|d| d.starts_with("int8"))
            .collect()
    };
    let qop = kinds("tests/fixtures/models/digits_cnn_int8_qop.onnx");
    let qdq = kinds("tests/fixtures/models/digits_cnn_int8_qdq.onnx");
    assert_eq!(qop.len(), 9, "{qop:?}");
    assert_eq!(qop, qdq[..qop.len()], "{qop:?} vs {qdq:?}");
}

#[test]
fn int8_is_no_precision_to_ask_for() {
    let err = "int8".parse::<Precision>().unwrap_err();
    assert!(err.contains("comes with the model"), "{err}");
}

/// The QOperator digits CNN with its first QLinearConv damaged as a
/// careless exporter might: each is an error naming the problem, never a
/// panic, and never a silent run.
#[test]
fn malformed_qoperator_nodes_are_errors() {
    use prost::Message;
    use tract_onnx::prelude::Framework;
    let bytes = repo_file("tests/fixtures/models/digits_cnn_int8_qop.onnx");
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut std::io::Cursor::new(&bytes[..]))
        .unwrap();
    let damaged = |edit: &dyn Fn(&mut tract_onnx::pb::NodeProto)| {
        let mut p = proto.clone();
        let graph = p.graph.as_mut().unwrap();
        let conv = graph
            .node
            .iter_mut()
            .find(|n| n.op_type == "QLinearConv")
            .unwrap();
        edit(conv);
        NativeModel::load(&p.encode_to_vec())
    };
    // No output scale or zero point.
    match damaged(&|n| n.input.truncate(6)) {
        Err(NativeError::Unsupported { op, .. }) => assert!(op.contains("scale"), "{op}"),
        other => panic!("{other:?}"),
    }
    // The weights where the bias goes (int8, not int32).
    match damaged(&|n| n.input[8] = n.input[3].clone()) {
        Err(NativeError::Unsupported { op, .. }) => assert!(op.contains("int32"), "{op}"),
        other => panic!("{other:?}"),
    }
    // The input's quantized value where the weights go: not a constant.
    match damaged(&|n| n.input[3] = n.input[0].clone()) {
        Err(NativeError::Unsupported { op, .. }) => assert!(op.contains("not constant"), "{op}"),
        other => panic!("{other:?}"),
    }
    // A group count the weights do not fit.
    match damaged(&|n| {
        n.attribute
            .iter_mut()
            .find(|a| a.name == "group")
            .unwrap()
            .i = 3
    }) {
        Err(NativeError::Load(msg)) => assert!(msg.contains("groups"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

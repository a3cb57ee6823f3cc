//! `quantize_static` on the digits CNN: the QDQ graph it writes runs on the native int8
//! kernels and keeps the float model's answers.

use std::path::PathBuf;

use super::quantize_static;
use crate::native::tests::{argmax, read_npy_f32, read_npy_i64, row};
use crate::native::{NativeModel, Precision};

fn fixture(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_quantized_digits_cnn_runs_in_int8_and_keeps_its_accuracy() {
    let float_onnx = fixture("models/digits_cnn.onnx");
    let (cs, calib) = read_npy_f32(&fixture("models/digits_calib.npy"));
    let per: usize = cs[1..].iter().product();
    let samples: Vec<Vec<f32>> = calib.chunks_exact(per).map(<[f32]>::to_vec).collect();
    let q = quantize_static(&float_onnx, &samples).unwrap();
    // 9 convolutions and the classifier's Gemm.
    assert_eq!(q.weights, 10, "weights quantized");
    assert!(
        q.onnx.len() < float_onnx.len(),
        "{} -> {} bytes",
        float_onnx.len(),
        q.onnx.len()
    );

    let int8 = NativeModel::load(&q.onnx).unwrap();
    assert_eq!(int8.precision(), Precision::Int8);
    let float = NativeModel::load(&float_onnx).unwrap();
    let (xs, x) = read_npy_f32(&fixture("digits/digits_test.npy"));
    let labels = read_npy_i64(&fixture("digits/digits_test_labels.npy"));
    let (mut agree, mut correct_int8, mut correct_float, mut max_diff) = (0, 0, 0, 0f32);
    for (i, &label) in labels.iter().enumerate().take(xs[0]) {
        let input = row(&xs, &x, i);
        let a = float.run(&[&input]).unwrap()[0].as_f32().unwrap().to_vec();
        let b = int8.run(&[&input]).unwrap()[0].as_f32().unwrap().to_vec();
        agree += usize::from(argmax(&a) == argmax(&b));
        correct_float += usize::from(argmax(&a) as i64 == label);
        correct_int8 += usize::from(argmax(&b) as i64 == label);
        for (p, q) in a.iter().zip(&b) {
            max_diff = max_diff.max((p - q).abs());
        }
    }
    println!(
        "digits quantized: float {correct_float}/540, int8 {correct_int8}/540, same top-1 {agree}/540, max |dp| {max_diff}"
    );
    // onnxruntime's quantizer got 534/540 with this calibration set (models README).
    assert!(
        correct_int8 + 3 >= correct_float,
        "int8 {correct_int8} vs float {correct_float}"
    );
    assert!(agree >= 530, "same top-1 on {agree}/540");
}

#[test]
fn a_model_that_is_already_quantized_is_refused() {
    let err = quantize_static(
        &fixture("models/digits_cnn_int8_qdq.onnx"),
        &[vec![0.0; 256]],
    )
    .unwrap_err();
    assert!(err.to_string().contains("already quantized"), "{err}");
}

#[test]
fn calibration_inputs_of_the_wrong_size_are_refused() {
    let err = quantize_static(&fixture("models/digits_cnn.onnx"), &[vec![0.0; 255]]).unwrap_err();
    assert!(format!("{err:#}").contains("needs 256"), "{err:#}");
}

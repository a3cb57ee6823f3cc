//! The native backend on the fixture models, against onnxruntime's reference
//! outputs, plus graph-level checks (fusion, fallback, input validation).

use std::path::PathBuf;

use super::{NativeError, NativeModel};
use edgeplug_kernels::Tensor;
use edgeplug_kernels::fast::Isa;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

fn fixture_or_abs(name: &str) -> Vec<u8> {
    let p = fixture(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// The shape and body of a C-order `.npy` file whose values are `descr` (`<f4`, `<i8`).
fn npy_body<'a>(bytes: &'a [u8], descr: &str) -> (Vec<usize>, &'a [u8]) {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not an npy file");
    let (hlen, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).expect("ascii header");
    assert!(
        header.contains(&format!("'descr': '{descr}'")),
        "not {descr}: {header}"
    );
    assert!(
        header.contains("'fortran_order': False"),
        "not C order: {header}"
    );
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape");
    let shape: Vec<usize> = shape_str
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("dim"))
        .collect();
    (shape, &bytes[start + hlen..])
}

/// A little-endian `<f4` C-order `.npy` file: shape and values.
pub(crate) fn read_npy_f32(bytes: &[u8]) -> (Vec<usize>, Vec<f32>) {
    let (shape, body) = npy_body(bytes, "<f4");
    let data: Vec<f32> = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>(), "npy length");
    (shape, data)
}

/// A little-endian `<i8` (int64) C-order `.npy` file, such as class labels: its values.
pub(crate) fn read_npy_i64(bytes: &[u8]) -> Vec<i64> {
    let (shape, body) = npy_body(bytes, "<i8");
    let data: Vec<i64> = body
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>(), "npy length");
    data
}

/// Row `i` of an `[N, ...]` array as a batch-1 tensor.
pub(crate) fn row(shape: &[usize], data: &[f32], i: usize) -> Tensor {
    let per: usize = shape[1..].iter().product();
    let mut s = shape.to_vec();
    s[0] = 1;
    Tensor::from_f32(s, data[i * per..(i + 1) * per].to_vec()).unwrap()
}

pub(crate) fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

/// The largest |difference| between an output row and its reference, and
/// whether their argmaxes agree.
pub(crate) fn row_diff(y: &[f32], want: &[f32]) -> (f32, bool) {
    assert_eq!(y.len(), want.len());
    let mut max_diff = 0f32;
    for (a, b) in y.iter().zip(want) {
        assert!(a.is_finite(), "non-finite output");
        max_diff = max_diff.max((a - b).abs());
    }
    (max_diff, argmax(y) == argmax(want))
}

/// Runs `rows` rows of the fixture input and returns the max abs difference
/// to the reference and how many argmaxes agree.
fn check(model: &NativeModel, input: &str, reference: &str, rows: usize) -> (f32, usize) {
    let (xs, x) = read_npy_f32(&fixture_or_abs(input));
    let (rs, r) = read_npy_f32(&fixture_or_abs(reference));
    let per_out: usize = rs[1..].iter().product();
    let mut max_diff = 0f32;
    let mut agree = 0;
    for i in 0..rows.min(xs[0]) {
        let y = model.run(&[&row(&xs, &x, i)]).unwrap();
        assert_eq!(y.len(), 1);
        let y = y[0].as_f32().unwrap();
        let (diff, same) = row_diff(y, &r[i * per_out..(i + 1) * per_out]);
        max_diff = max_diff.max(diff);
        agree += usize::from(same);
    }
    (max_diff, agree)
}

#[test]
fn digits_matches_onnxruntime_on_every_isa() {
    let bytes = fixture_or_abs("digits_cnn.onnx");
    for isa in Isa::all_available() {
        let model = NativeModel::load_with_isa(&bytes, isa).unwrap();
        assert_eq!(model.inputs()[0].shape, [1, 1, 16, 16]);
        assert_eq!(model.outputs()[0].shape, [1, 10]);
        let (diff, agree) = check(&model, "digits_test.npy", "digits_cnn_ref_out.npy", 540);
        assert!(diff <= 1e-4, "{isa:?}: max |Δprob| {diff}");
        assert_eq!(agree, 540, "{isa:?}");
    }
}

#[test]
fn digits_graph_is_fused() {
    let model = NativeModel::load(&fixture_or_abs("digits_cnn.onnx")).unwrap();
    // 9 convs (clips fused): the stem, then four depthwise convs each merged
    // with the pointwise projection after it; mean, dense (+bias fused), softmax.
    assert_eq!(model.step_count(), 8, "{:#?}", model.float_program().steps);
    let merged = model
        .float_program()
        .steps
        .iter()
        .filter(|s| matches!(s, super::exec::Step::DwBlock { .. }))
        .count();
    assert_eq!(merged, 4, "{:#?}", model.float_program().steps);
}

#[test]
fn mobilenetv2_matches_onnxruntime() {
    let bytes = fixture_or_abs("mobilenetv2.onnx");
    for isa in Isa::all_available() {
        let model = NativeModel::load_with_isa(&bytes, isa).unwrap();
        let (diff, agree) = check(
            &model,
            "mobilenetv2_input.npy",
            "mobilenetv2_ref_out.npy",
            4,
        );
        assert!(diff <= 1e-3, "{isa:?}: max |Δlogit| {diff}");
        // The four photos' crops classify as onnxruntime's top-1.
        assert_eq!(agree, 4, "{isa:?}");
    }
}

/// bf16 GEMMs (`Precision::Bf16`) against onnxruntime's f32 logits on the
/// four photos: within 0.35 (logits span about ±20 here; bf16 keeps 8
/// significant bits of every weight and activation), and the same top-1
/// wherever f32's own top two are further apart than twice the measured
/// error; closer than that, the top-1 must still be one of f32's top two
/// (EfficientNet-Lite0's cat photo: tiger cat 282 over Egyptian cat 285 by
/// 0.0097). On AMX or AVX512-BF16 when the CPU has them; the portable emulation runs
/// the digits model on every CPU, within 2e-2 of the reference
/// probabilities.
#[test]
fn bf16_keeps_the_top1_and_logits_close() {
    use super::Precision;
    if Precision::Bf16.check(Isa::Avx512).is_ok() {
        for (file, input, reference) in [
            (
                "mobilenetv2.onnx",
                "mobilenetv2_input.npy",
                "mobilenetv2_ref_out.npy",
            ),
            (
                "efficientnet_lite0.onnx",
                "efficientnet_lite0_input.npy",
                "efficientnet_lite0_ref_out.npy",
            ),
        ] {
            let model = NativeModel::load_with(&fixture_or_abs(file), Isa::Avx512, Precision::Bf16)
                .unwrap();
            assert_eq!(model.precision(), Precision::Bf16);
            let (xs, x) = read_npy_f32(&fixture_or_abs(input));
            let (_, r) = read_npy_f32(&fixture_or_abs(reference));
            let logits: Vec<Vec<f32>> = (0..4)
                .map(|i| {
                    model.run(&[&row(&xs, &x, i)]).unwrap()[0]
                        .as_f32()
                        .unwrap()
                        .to_vec()
                })
                .collect();
            let want: Vec<&[f32]> = r.chunks(1000).take(4).collect();
            let diff = logits
                .iter()
                .zip(&want)
                .flat_map(|(y, w)| y.iter().zip(w.iter()).map(|(a, b)| (a - b).abs()))
                .fold(0f32, f32::max);
            let engine = Precision::Bf16.bf16_engine(Isa::Avx512).unwrap();
            println!("{file} bf16 on {}: max |Δlogit| {diff}", engine.name());
            assert!(diff <= 0.35, "{file}: max |Δlogit| {diff}");
            for (i, (y, w)) in logits.iter().zip(&want).enumerate() {
                let mut order: Vec<usize> = (0..w.len()).collect();
                order.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
                let margin = w[order[0]] - w[order[1]];
                let top = argmax(y);
                println!(
                    "  photo {i}: top-1 {top}, f32 {} (margin {margin})",
                    order[0]
                );
                if margin > 2.0 * diff {
                    assert_eq!(top, order[0], "{file} photo {i}");
                } else {
                    assert!(order[..2].contains(&top), "{file} photo {i}: {top}");
                }
            }
        }
    } else {
        println!(
            "bf16 hardware path not run: {}",
            Precision::Bf16.check(Isa::Avx512).unwrap_err()
        );
    }
    let model = NativeModel::load_with(
        &fixture_or_abs("digits_cnn.onnx"),
        Isa::Portable,
        Precision::Bf16,
    )
    .unwrap();
    let (diff, agree) = check(&model, "digits_test.npy", "digits_cnn_ref_out.npy", 60);
    println!("digits bf16 emulated: max |Δp| {diff}, argmax agrees on {agree}/60");
    assert!(diff <= 2e-2, "digits bf16: max |Δp| {diff}");
    assert!(agree >= 59, "{agree}/60");
}

#[test]
fn efficientnet_lite0_matches_onnxruntime() {
    let bytes = fixture_or_abs("efficientnet_lite0.onnx");
    for isa in Isa::all_available() {
        let model = NativeModel::load_with_isa(&bytes, isa).unwrap();
        let (diff, agree) = check(
            &model,
            "efficientnet_lite0_input.npy",
            "efficientnet_lite0_ref_out.npy",
            4,
        );
        assert!(diff <= 1e-3, "{isa:?}: max |Δlogit| {diff}");
        assert_eq!(agree, 4, "{isa:?}");
    }
}

/// Splitting steps into bands of rows over threads (intra-op) changes no
/// value: every output element is summed by one thread in the same order.
#[test]
fn runs_split_over_threads_are_bit_identical() {
    for file in [
        "mobilenetv2.onnx",
        "efficientnet_lite0.onnx",
        "digits_cnn.onnx",
    ] {
        let model = NativeModel::load(&fixture_or_abs(file)).unwrap();
        let input = model.float_program().inputs[0];
        let len = model.float_program().slot_len[input];
        let x: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut arena = model.float_program().new_arena();
        let one = model.float_program().run(model.isa, 1, &mut arena, &[&x]);
        for threads in [2, 3] {
            let split = model
                .float_program()
                .run(model.isa, threads, &mut arena, &[&x]);
            for (a, b) in one.iter().zip(&split) {
                assert_eq!(
                    a.as_f32().unwrap(),
                    b.as_f32().unwrap(),
                    "{file}, {threads} threads"
                );
            }
        }
    }
}

#[test]
fn repeated_and_concurrent_runs_agree() {
    let model = NativeModel::load(&fixture_or_abs("digits_cnn.onnx")).unwrap();
    let (xs, x) = read_npy_f32(&fixture_or_abs("digits_test.npy"));
    let first = model.run(&[&row(&xs, &x, 3)]).unwrap();
    std::thread::scope(|s| {
        for t in 0..2 {
            let (model, xs, x, first) = (&model, &xs, &x, &first);
            s.spawn(move || {
                for i in 0..20 {
                    let y = model.run(&[&row(xs, x, (i * 7 + t) % 540)]).unwrap();
                    assert_eq!(y[0].shape(), [1, 10]);
                }
                let again = model.run(&[&row(xs, x, 3)]).unwrap();
                assert_eq!(again[0].as_f32().unwrap(), first[0].as_f32().unwrap());
            });
        }
    });
}

#[test]
fn bad_bytes_and_bad_inputs_are_errors() {
    assert!(matches!(
        NativeModel::load(b"not onnx"),
        Err(NativeError::Load(_))
    ));
    let model = NativeModel::load(&fixture_or_abs("digits_cnn.onnx")).unwrap();
    let wrong = Tensor::zeros(vec![1, 1, 8, 8]).unwrap();
    assert!(matches!(
        model.run(&[&wrong]),
        Err(NativeError::Input { index: 0, .. })
    ));
    assert!(matches!(model.run(&[]), Err(NativeError::Input { .. })));
    let u8s = Tensor::from_u8(vec![1, 1, 16, 16], vec![0; 256]).unwrap();
    assert!(matches!(model.run(&[&u8s]), Err(NativeError::Input { .. })));
}

fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<NativeModel>();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

    /// A block run band by band (any band height, shared rows kept; with and
    /// without its expansion and projection) equals its stages run one after
    /// the other on whole images.
    #[test]
    fn a_block_in_bands_matches_its_stages_on_whole_images(
        c_in in 1usize..5, c in 1usize..20, c_out in 1usize..7, h in 1usize..14, w in 1usize..9,
        k in proptest::prop_oneof![proptest::strategy::Just(3usize), proptest::strategy::Just(5usize), 1usize..4],
        stride in 1usize..3, dil in 1usize..3, pads in [0usize..3, 0usize..3, 0usize..3, 0usize..3],
        per_band in 1usize..5, expand in proptest::prelude::any::<bool>(), project in proptest::prelude::any::<bool>(),
        with_res in proptest::prelude::any::<bool>(), seed in proptest::prelude::any::<u64>(),
    ) {
        use super::block::{DwBlock, Pointwise};
        use edgeplug_kernels::fast::{AlignedBuf, DwGeometry, Epilogue, PackedRhs, depthwise_nhwc, gemm_rows};
        use edgeplug_kernels::{Padding, testutil};
        let pad = Padding { top: pads[0], left: pads[1], bottom: pads[2], right: pads[3] };
        let span = |n: usize, a: usize, b: usize| (n + a + b).saturating_sub(1) / dil + 1;
        let k = k.min(span(h, pad.top, pad.bottom)).min(span(w, pad.left, pad.right));
        let g = DwGeometry::new(c, h, w, [k, k], [stride, stride], [dil, dil], pad).expect("fits");
        let c_in = if expand { c_in } else { c };
        let c_out = if project { c_out } else { c };
        let x = testutil::data(seed, h * w * c_in, 1.0);
        let block = DwBlock {
            batch: 1,
            expand: expand.then(|| Pointwise {
                w: PackedRhs::pack(&testutil::data(seed ^ 1, c_in * c, 1.0), c_in, c),
                bias: testutil::data(seed ^ 2, c, 1.0),
                lo: 0.0,
                hi: 6.0,
            }),
            geom: g,
            w: AlignedBuf::from(&testutil::data(seed ^ 3, k * k * c, 1.0)[..]),
            bias: testutil::data(seed ^ 4, c, 1.0),
            dw_lo: 0.0,
            dw_hi: 6.0,
            project: project.then(|| (
                PackedRhs::pack(&testutil::data(seed ^ 5, c * c_out, 1.0), c, c_out),
                testutil::data(seed ^ 6, c_out, 1.0),
            )),
        };
        let res = testutil::data(seed ^ 7, g.oh * g.ow * c_out, 1.0);
        let residual = with_res.then_some(&res[..]);
        let (lo, hi) = (f32::NEG_INFINITY, f32::INFINITY);
        let isa = edgeplug_kernels::fast::Isa::detect();
        // The stages one after the other.
        let mid = match &block.expand {
            Some(e) => {
                let mut mid = vec![0f32; h * w * c];
                let ep = Epilogue { bias: Some(&e.bias), residual: None, lo: e.lo, hi: e.hi };
                gemm_rows(isa, h * w, &x, c_in, &e.w, &mut mid, c, &ep);
                mid
            }
            None => x.clone(),
        };
        let mut dw = vec![0f32; g.oh * g.ow * c];
        let want = match &block.project {
            Some((pw, pb)) => {
                let ep = Epilogue { bias: Some(&block.bias), residual: None, lo: 0.0, hi: 6.0 };
                depthwise_nhwc(isa, &g, &mid, &block.w, &ep, &mut dw);
                let mut out = vec![0f32; g.oh * g.ow * c_out];
                let ep = Epilogue { bias: Some(pb), residual, lo, hi };
                gemm_rows(isa, g.oh * g.ow, &dw, c, pw, &mut out, c_out, &ep);
                out
            }
            None => {
                let ep = Epilogue { bias: Some(&block.bias), residual, lo, hi };
                depthwise_nhwc(isa, &g, &mid, &block.w, &ep, &mut dw);
                dw
            }
        };
        let (need_in, need_out) = block.scratch_len(per_band.min(g.oh));
        let mut band_in = vec![f32::NAN; need_in];
        let mut band_out = vec![f32::NAN; need_out];
        let mut got = vec![f32::NAN; g.oh * g.ow * c_out];
        // In two bands of rows, as two threads would run them.
        let mid = g.oh / 2;
        let (top, bottom) = got.split_at_mut(mid * g.ow * c_out);
        for (rows, out) in [(0..mid, top), (mid..g.oh, bottom)] {
            block.run(isa, &x, residual, lo, hi, rows, out, &mut band_in, &mut band_out, per_band.min(g.oh));
        }
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            proptest::prop_assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{i}: {a} vs {b}");
        }
    }
}

//! Every fast kernel against the naive references, on every ISA this CPU has
//! (the portable path always, AVX-512 when present).

use proptest::prelude::*;

use super::*;
use crate::testutil::{self, assert_close};
use crate::{Conv2dParams, Padding, Tensor, reference};

fn clamp_of(kind: u8) -> (f32, f32) {
    match kind % 3 {
        0 => (f32::NEG_INFINITY, f32::INFINITY),
        1 => (0.0, f32::INFINITY),
        _ => (0.0, 6.0),
    }
}

/// The geometry of a random convolution case, the kernel shrunk so that at
/// least one window fits the padded input. `pads` is `[top, left, bottom, right]`.
pub(crate) fn fitted_geometry(
    c: usize,
    [h, w]: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: [usize; 4],
) -> DwGeometry {
    let pad = Padding {
        top: pads[0],
        left: pads[1],
        bottom: pads[2],
        right: pads[3],
    };
    let fit = |k: usize, input: usize, pa: usize, pb: usize, d: usize| {
        k.min((input + pa + pb - 1) / d + 1)
    };
    let kh = fit(kernel[0], h, pad.top, pad.bottom, dilation[0]);
    let kw = fit(kernel[1], w, pad.left, pad.right, dilation[1]);
    DwGeometry::new(c, h, w, [kh, kw], stride, dilation, pad).expect("fits")
}

fn naive_gemm(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ldb: usize) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|c| f64::from(a[i * k + c]) * f64::from(b[c * ldb + j]))
                .sum();
        }
    }
    out
}

fn close(got: f32, want: f64) -> bool {
    (f64::from(got) - want).abs() <= 1e-4 * want.abs().max(1.0)
}

/// `out` (`m` rows at stride `ldo`) against the naive product `want` (`m × n`)
/// plus the epilogue, whose bias index for `(i, j)` is `bias_at(i, j)`; the
/// columns between `n` and `ldo` must be untouched (NaN).
fn check_gemm(
    out: &[f32],
    want: &[f64],
    (m, n, ldo): (usize, usize, usize),
    ep: &Epilogue<'_>,
    bias_at: impl Fn(usize, usize) -> usize,
) -> Result<(), String> {
    for i in 0..m {
        for j in 0..n {
            let mut v = want[i * n + j];
            if let Some(b) = ep.bias {
                v += f64::from(b[bias_at(i, j)]);
            }
            if let Some(r) = ep.residual {
                v += f64::from(r[i * ldo + j]);
            }
            let v = v.clamp(f64::from(ep.lo), f64::from(ep.hi));
            if !close(out[i * ldo + j], v) {
                return Err(format!("({i},{j}): {} vs {v}", out[i * ldo + j]));
            }
        }
        if let Some(j) = (n..ldo).find(|&j| !out[i * ldo + j].is_nan()) {
            return Err(format!("wrote outside the matrix at ({i},{j})"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn gemm_packed_matches_naive(
        m in 1usize..40, k in 0usize..70, n in 1usize..130, extra_ld in 0usize..5,
        with_bias in any::<bool>(), with_res in any::<bool>(), act in 0u8..3, seed in any::<u64>(),
    ) {
        let (ldb, ldo) = (n + extra_ld, n + 2 * extra_ld);
        let a = testutil::data(seed, m * k, 1.0);
        let b = testutil::data(seed ^ 1, k.max(1) * ldb, 1.0);
        let bias = testutil::data(seed ^ 2, m, 1.0);
        let res = testutil::data(seed ^ 3, m * ldo, 1.0);
        let (lo, hi) = clamp_of(act);
        let ep = Epilogue {
            bias: with_bias.then_some(&bias[..]),
            residual: with_res.then_some(&res[..]),
            lo,
            hi,
        };
        let want = naive_gemm(&a, &b, m, k, n, ldb);
        let packed = PackedLhs::pack(&a, m, k);
        for isa in Isa::all_available() {
            let mut out = vec![f32::NAN; m * ldo];
            gemm_packed(isa, &packed, &b, ldb, n, &mut out, ldo, &ep);
            check_gemm(&out, &want, (m, n, ldo), &ep, |i, _| i).map_err(|e| TestCaseError::fail(format!("{isa:?}: {e}")))?;
        }
    }

    #[test]
    fn matvec_matches_naive(
        m in 1usize..40, k in 0usize..100, with_bias in any::<bool>(), act in 0u8..3,
        seed in any::<u64>(),
    ) {
        let w = testutil::data(seed, m * k, 1.0);
        let x = testutil::data(seed ^ 1, k, 1.0);
        let bias = testutil::data(seed ^ 2, m, 1.0);
        let (lo, hi) = clamp_of(act);
        let ep = Epilogue { bias: with_bias.then_some(&bias[..]), residual: None, lo, hi };
        let want = naive_gemm(&w, &x, m, k, 1, 1);
        for isa in Isa::all_available() {
            let mut out = vec![0f32; m];
            matvec(isa, &w, m, k, &x, &mut out, &ep);
            for i in 0..m {
                let mut v = want[i];
                if with_bias { v += f64::from(bias[i]); }
                let v = v.clamp(f64::from(lo), f64::from(hi));
                prop_assert!(close(out[i], v), "{isa:?} row {i}: {} vs {v}", out[i]);
            }
        }
    }

    #[test]
    fn depthwise_matches_reference(
        c in 1usize..6, h in 1usize..24, w in 1usize..40,
        kernel in [prop_oneof![Just(3usize), Just(5usize), 1usize..6], prop_oneof![Just(3usize), Just(5usize), 1usize..6]],
        stride in [1usize..4, 1usize..4], dilation in [prop_oneof![Just(1usize), 1usize..3], prop_oneof![Just(1usize), 1usize..3]],
        pads in [0usize..4, 0usize..4, 0usize..4, 0usize..4],
        with_bias in any::<bool>(), with_res in any::<bool>(), act in 0u8..3, seed in any::<u64>(),
    ) {
        let case = DepthwiseCase::new(c, [h, w], [kernel, stride, dilation], pads, (with_bias, with_res, act), seed);
        let g = &case.g;
        let want = Tensor::from_f32(vec![1, c, g.oh, g.ow], case.want.clone()).unwrap();
        let ep = case.epilogue(&case.res);
        for isa in Isa::all_available() {
            let mut out = vec![f32::NAN; c * g.oh * g.ow];
            let mut scratch = Vec::new();
            depthwise(isa, g, case.x.as_f32().unwrap(), case.wt.as_f32().unwrap(), &ep, &mut out, &mut scratch);
            let got = Tensor::from_f32(vec![1, c, g.oh, g.ow], out).unwrap();
            assert_close(&got, &want).map_err(|e| TestCaseError::fail(format!("{isa:?}: {e}")))?;
        }
    }

    /// im2col + packed GEMM is a dense convolution.
    #[test]
    fn im2col_gemm_matches_reference(
        c in 1usize..6, o in 1usize..20, h in 1usize..16, w in 1usize..20,
        kernel in [1usize..5, 1usize..5], stride in [1usize..3, 1usize..3],
        dilation in [1usize..3, 1usize..3], pads in [0usize..3, 0usize..3, 0usize..3, 0usize..3],
        seed in any::<u64>(),
    ) {
        let g = fitted_geometry(c, [h, w], kernel, stride, dilation, pads);
        let (kh, kw, pad) = (g.kh, g.kw, g.pad);
        let x = testutil::tensor(seed, &[1, c, h, w], 1.0);
        let wt = testutil::tensor(seed ^ 1, &[o, c, kh, kw], 1.0);
        let b = testutil::tensor(seed ^ 2, &[o], 1.0);
        let p = Conv2dParams { stride, dilation, padding: pad, ..Conv2dParams::default() };
        let want = reference::conv2d(&x, &wt, Some(&b), &p).unwrap();
        let positions = g.oh * g.ow;
        let mut col = vec![f32::NAN; c * kh * kw * positions];
        im2col(&g, x.as_f32().unwrap(), &mut col);
        let packed = PackedLhs::pack(wt.as_f32().unwrap(), o, c * kh * kw);
        let ep = Epilogue { bias: Some(b.as_f32().unwrap()), ..Epilogue::default() };
        for isa in Isa::all_available() {
            let mut out = vec![0f32; o * positions];
            gemm_packed(isa, &packed, &col, positions, positions, &mut out, positions, &ep);
            let got = Tensor::from_f32(vec![1, o, g.oh, g.ow], out).unwrap();
            assert_close(&got, &want).map_err(|e| TestCaseError::fail(format!("{isa:?}: {e}")))?;
        }
    }
}

/// `[1, c, h, w]` → `[h, w, c]`.
fn to_nhwc(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; c * h * w];
    for ch in 0..c {
        for p in 0..h * w {
            out[p * c + ch] = x[ch * h * w + p];
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn gemm_rows_matches_naive(
        m in 1usize..40, k in 0usize..70, n in 1usize..130, extra_ld in 0usize..5,
        with_bias in any::<bool>(), with_res in any::<bool>(), act in 0u8..3, seed in any::<u64>(),
    ) {
        let (lda, ldb, ldo) = (k + extra_ld, n + extra_ld, n + 2 * extra_ld);
        let a = testutil::data(seed, m * lda, 1.0);
        let b = testutil::data(seed ^ 1, k.max(1) * ldb, 1.0);
        let bias = testutil::data(seed ^ 2, n, 1.0);
        let res = testutil::data(seed ^ 3, m * ldo, 1.0);
        let (lo, hi) = clamp_of(act);
        let ep = Epilogue {
            bias: with_bias.then_some(&bias[..]),
            residual: with_res.then_some(&res[..]),
            lo,
            hi,
        };
        let dense_a: Vec<f32> = (0..m).flat_map(|i| a[i * lda..][..k].to_vec()).collect();
        let want = naive_gemm(&dense_a, &b, m, k, n, ldb);
        let dense_b: Vec<f32> = (0..k).flat_map(|c| b[c * ldb..][..n].to_vec()).collect();
        let packed = PackedRhs::pack(&dense_b, k, n);
        for isa in Isa::all_available() {
            let mut out = vec![f32::NAN; m * ldo];
            gemm_rows(isa, m, &a, lda, &packed, &mut out, ldo, &ep);
            check_gemm(&out, &want, (m, n, ldo), &ep, |_, j| j).map_err(|e| TestCaseError::fail(format!("{isa:?}: {e}")))?;
        }
    }

    #[test]
    fn depthwise_nhwc_matches_reference(
        c in prop_oneof![1usize..6, 14usize..40], h in 1usize..20, w in 1usize..24,
        kernel in [prop_oneof![Just(3usize), Just(5usize), 1usize..6], prop_oneof![Just(3usize), Just(5usize), 1usize..6]],
        stride in [1usize..4, 1usize..4], dilation in [prop_oneof![Just(1usize), 1usize..3], prop_oneof![Just(1usize), 1usize..3]],
        pads in [0usize..4, 0usize..4, 0usize..4, 0usize..4],
        with_bias in any::<bool>(), with_res in any::<bool>(), act in 0u8..3, seed in any::<u64>(),
    ) {
        check_depthwise_nhwc(c, [h, w], [kernel, stride, dilation], pads, (with_bias, with_res, act), seed)?;
    }

    /// The shapes the slab kernel takes (square 3×3 and 5×5, stride 1 or 2, no
    /// dilation, up to 32 output columns), tall enough that an image spans
    /// several bands.
    #[test]
    fn depthwise_nhwc_slab_shapes_match_reference(
        c in prop_oneof![1usize..6, 14usize..40], h in 1usize..130, w in 1usize..36,
        k in prop_oneof![Just(3usize), Just(5usize)], s in 1usize..3,
        pads in [0usize..3, 0usize..3, 0usize..3, 0usize..3],
        with_bias in any::<bool>(), with_res in any::<bool>(), act in 0u8..3, seed in any::<u64>(),
    ) {
        check_depthwise_nhwc(c, [h, w], [[k, k], [s, s], [1, 1]], pads, (with_bias, with_res, act), seed)?;
    }
    /// Channels-last im2col rows, in chunks, + `gemm_rows` is a dense convolution.
    #[test]
    fn im2col_rows_gemm_matches_reference(
        c in 1usize..6, o in 1usize..40, h in 1usize..16, w in 1usize..20,
        kernel in [1usize..5, 1usize..5], stride in [1usize..3, 1usize..3],
        dilation in [1usize..3, 1usize..3], pads in [0usize..3, 0usize..3, 0usize..3, 0usize..3],
        chunk in 1usize..40, seed in any::<u64>(),
    ) {
        let g = fitted_geometry(c, [h, w], kernel, stride, dilation, pads);
        let (kh, kw, pad) = (g.kh, g.kw, g.pad);
        let x = testutil::tensor(seed, &[1, c, h, w], 1.0);
        let wt = testutil::tensor(seed ^ 1, &[o, c, kh, kw], 1.0);
        let b = testutil::tensor(seed ^ 2, &[o], 1.0);
        let p = Conv2dParams { stride, dilation, padding: pad, ..Conv2dParams::default() };
        let want = reference::conv2d(&x, &wt, Some(&b), &p).unwrap();
        let want = Tensor::from_f32(vec![1, g.oh, g.ow, o], to_nhwc(want.as_f32().unwrap(), o, g.oh, g.ow)).unwrap();
        // Weights as [(ky, kx, c), o].
        let k = kh * kw * c;
        let wsrc = wt.as_f32().unwrap();
        let mut wk = vec![0f32; k * o];
        for oc in 0..o { for ch in 0..c { for ky in 0..kh { for kx in 0..kw {
            wk[((ky * kw + kx) * c + ch) * o + oc] = wsrc[((oc * c + ch) * kh + ky) * kw + kx];
        }}}}
        let x_nhwc = to_nhwc(x.as_f32().unwrap(), c, h, w);
        let ep = Epilogue { bias: Some(b.as_f32().unwrap()), ..Epilogue::default() };
        let positions = g.oh * g.ow;
        let wk = PackedRhs::pack(&wk, k, o);
        for isa in Isa::all_available() {
            let mut out = vec![f32::NAN; positions * o];
            let mut col = vec![f32::NAN; chunk * k];
            for first in (0..positions).step_by(chunk) {
                let count = chunk.min(positions - first);
                im2col_rows(isa, &g, &x_nhwc, first, count, &mut col);
                gemm_rows(isa, count, &col, k, &wk, &mut out[first * o..], o, &ep);
            }
            let got = Tensor::from_f32(vec![1, g.oh, g.ow, o], out).unwrap();
            assert_close(&got, &want).map_err(|e| TestCaseError::fail(format!("{isa:?}: {e}")))?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Patches read in place from an NCHW image (border pixels through patch
    /// rows) is a dense convolution with channels-last output.
    #[test]
    fn conv_nchw_matches_reference(
        // Rows up to 40 wide: several full tiles (8 rows, 12 for a gather
        // with a constant step) and a tail per row.
        c in 1usize..5, o in 1usize..40, h in 1usize..16, w in 1usize..40,
        kernel in [1usize..5, 1usize..5], stride in [1usize..3, 1usize..3],
        dilation in [1usize..3, 1usize..3], pads in [0usize..3, 0usize..3, 0usize..3, 0usize..3],
        with_res in any::<bool>(), act in 0u8..3, seed in any::<u64>(),
    ) {
        let g = fitted_geometry(c, [h, w], kernel, stride, dilation, pads);
        let (kh, kw, pad) = (g.kh, g.kw, g.pad);
        let x = testutil::tensor(seed, &[1, c, h, w], 1.0);
        let wt = testutil::tensor(seed ^ 1, &[o, c, kh, kw], 1.0);
        let b = testutil::tensor(seed ^ 2, &[o], 1.0);
        let res = testutil::data(seed ^ 3, g.oh * g.ow * o, 1.0);
        let p = Conv2dParams { stride, dilation, padding: pad, ..Conv2dParams::default() };
        let want = reference::conv2d(&x, &wt, Some(&b), &p).unwrap();
        let (lo, hi) = clamp_of(act);
        let want: Vec<f32> = to_nhwc(want.as_f32().unwrap(), o, g.oh, g.ow).iter().zip(&res)
            .map(|(&v, &r)| (if with_res { v + r } else { v }).clamp(lo, hi)).collect();
        let want = Tensor::from_f32(vec![1, g.oh, g.ow, o], want).unwrap();
        let packed = PackedRhs::pack_transposed(wt.as_f32().unwrap(), o, c * kh * kw);
        let ep = Epilogue { bias: Some(b.as_f32().unwrap()), residual: with_res.then_some(&res[..]), lo, hi };
        for isa in Isa::all_available() {
            let mut out = vec![f32::NAN; g.oh * g.ow * o];
            let mut col = AlignedBuf::default();
            conv_nchw(isa, &g, x.as_f32().unwrap(), &packed, &ep, &mut out, &mut col);
            let got = Tensor::from_f32(vec![1, g.oh, g.ow, o], out).unwrap();
            assert_close(&got, &want).map_err(|e| TestCaseError::fail(format!("{isa:?}: {e}")))?;
        }
    }
}

#[test]
fn forcing_an_unavailable_isa_falls_back() {
    // Whatever the CPU, asking for AVX-512 must be safe and give the same result.
    let a = PackedLhs::pack(&[1.0, 2.0, 3.0, 4.0], 2, 2);
    let b = [1.0, 0.0, 0.0, 1.0];
    let mut out = [0f32; 4];
    gemm_packed(Isa::Avx512, &a, &b, 2, 2, &mut out, 2, &Epilogue::default());
    assert_eq!(out, [1.0, 2.0, 3.0, 4.0]);
    assert!(Isa::all_available().contains(&Isa::Portable));
}

/// A random depthwise convolution and its reference output (NCHW, epilogue
/// applied): window `[kernel, stride, dilation]`, epilogue `(bias, residual,
/// activation)`.
struct DepthwiseCase {
    g: DwGeometry,
    x: Tensor,
    wt: Tensor,
    bias: Option<Tensor>,
    /// NCHW, like the output.
    res: Vec<f32>,
    with_res: bool,
    lo: f32,
    hi: f32,
    want: Vec<f32>,
}

impl DepthwiseCase {
    fn new(
        c: usize,
        [h, w]: [usize; 2],
        [kernel, stride, dilation]: [[usize; 2]; 3],
        pads: [usize; 4],
        (with_bias, with_res, act): (bool, bool, u8),
        seed: u64,
    ) -> DepthwiseCase {
        let g = fitted_geometry(c, [h, w], kernel, stride, dilation, pads);
        let x = testutil::tensor(seed, &[1, c, h, w], 1.0);
        let wt = testutil::tensor(seed ^ 1, &[c, 1, g.kh, g.kw], 1.0);
        let bias = with_bias.then(|| testutil::tensor(seed ^ 2, &[c], 1.0));
        let res = testutil::data(seed ^ 3, c * g.oh * g.ow, 1.0);
        let p = Conv2dParams {
            stride,
            dilation,
            padding: g.pad,
            groups: c,
            ..Conv2dParams::default()
        };
        let want = reference::conv2d(&x, &wt, bias.as_ref(), &p).unwrap();
        assert_eq!(want.shape(), &[1, c, g.oh, g.ow]);
        let (lo, hi) = clamp_of(act);
        let want = want
            .as_f32()
            .unwrap()
            .iter()
            .zip(&res)
            .map(|(&v, &r)| (if with_res { v + r } else { v }).clamp(lo, hi))
            .collect();
        DepthwiseCase {
            g,
            x,
            wt,
            bias,
            res,
            with_res,
            lo,
            hi,
            want,
        }
    }

    /// The case's epilogue, its residual laid out as `res`.
    fn epilogue<'a>(&'a self, res: &'a [f32]) -> Epilogue<'a> {
        Epilogue {
            bias: self.bias.as_ref().map(|b| b.as_f32().unwrap()),
            residual: self.with_res.then_some(res),
            lo: self.lo,
            hi: self.hi,
        }
    }
}

/// `depthwise_nhwc` on every ISA against the reference convolution (see
/// [`DepthwiseCase`]).
fn check_depthwise_nhwc(
    c: usize,
    [h, w]: [usize; 2],
    window: [[usize; 2]; 3],
    pads: [usize; 4],
    epilogue: (bool, bool, u8),
    seed: u64,
) -> Result<(), TestCaseError> {
    let case = DepthwiseCase::new(c, [h, w], window, pads, epilogue, seed);
    let g = &case.g;
    let want =
        Tensor::from_f32(vec![1, g.oh, g.ow, c], to_nhwc(&case.want, c, g.oh, g.ow)).unwrap();
    // The residual is given channels-last, like the output.
    let res_nhwc = to_nhwc(&case.res, c, g.oh, g.ow);
    let ep = case.epilogue(&res_nhwc);
    let x_nhwc = to_nhwc(case.x.as_f32().unwrap(), c, h, w);
    let w_taps = depthwise_nhwc_weights(case.wt.as_f32().unwrap(), c, g.kh * g.kw);
    for isa in Isa::all_available() {
        let mut out = vec![f32::NAN; c * g.oh * g.ow];
        depthwise_nhwc(isa, g, &x_nhwc, &w_taps, &ep, &mut out);
        let got = Tensor::from_f32(vec![1, g.oh, g.ow, c], out).unwrap();
        assert_close(&got, &want).map_err(|e| TestCaseError::fail(format!("{isa:?}: {e}")))?;
    }
    Ok(())
}

/// Prints which SIMD paths the property tests above ran (each loops over
/// `Isa::all_available()`), so a CI log shows whether the AVX-512 kernels were
/// exercised or only the portable ones (`make test` runs it with `--nocapture`).
#[test]
fn simd_paths_under_test() {
    let paths = Isa::all_available();
    let bf16: Vec<&str> = [
        super::bf16::Engine::Portable,
        super::bf16::Engine::Avx512Bf16,
        super::bf16::Engine::Amx,
    ]
    .into_iter()
    .filter(|e| e.is_available())
    .map(|e| e.name())
    .collect();
    println!(
        "kernel property tests ran on: {paths:?} (requests use {:?}); bf16 GEMM on: {bf16:?}",
        Isa::detect()
    );
    assert_eq!(paths.first(), Some(&Isa::Portable));
    assert!(paths.contains(&Isa::detect()));
}

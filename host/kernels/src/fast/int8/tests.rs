//! The int8 kernels against the naive references, byte for byte, on every
//! ISA this CPU has (the portable path always, VNNI when present).

use proptest::prelude::*;

use super::*;
use crate::fast::tests::fitted_geometry as fitted;
use crate::testutil::bytes;

fn weights(seed: u64, n: usize) -> Vec<i8> {
    bytes(seed, n).into_iter().map(|b| b as i8).collect()
}

/// Multipliers that spread a sum of `k` products over the output range
/// (about ±64 steps), times `2^(spread - 2)` so some cases saturate.
fn scales(seed: u64, n: usize, k: usize, spread: u8) -> Vec<f32> {
    let base = 0.013 / (k.max(1) as f32).sqrt() * 2f32.powi(i32::from(spread) - 2);
    bytes(seed, n)
        .into_iter()
        .map(|b| base * (0.5 + f32::from(b) / 255.0))
        .collect()
}

fn biases(seed: u64, n: usize) -> Vec<i32> {
    bytes(seed, 2 * n)
        .chunks_exact(2)
        .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]])) * 4)
        .collect()
}

/// `(zero, lo, hi)`: none, ReLU (lo = zero), Clip(0, 6)-like (a band).
fn clamp_of(kind: u8, zero: u8) -> (u8, u8, u8) {
    match kind % 3 {
        0 => (zero, 0, 255),
        1 => (zero, zero, 255),
        _ => (zero, zero, zero.saturating_add(60)),
    }
}

struct Case {
    scale: Vec<f32>,
    bias: Vec<i32>,
    with_bias: bool,
    clamp: (u8, u8, u8),
}

impl Case {
    #[allow(clippy::too_many_arguments)]
    fn new(
        seed: u64,
        n: usize,
        k: usize,
        per_channel: bool,
        with_bias: bool,
        act: u8,
        zero: u8,
        spread: u8,
    ) -> Case {
        let mut scale = scales(seed ^ 7, n, k, spread);
        if !per_channel {
            scale.truncate(1);
        }
        Case {
            scale,
            bias: biases(seed ^ 8, n),
            with_bias,
            clamp: clamp_of(act, zero),
        }
    }

    fn rq(&self) -> Requant<'_> {
        let (zero, lo, hi) = self.clamp;
        Requant {
            scale: &self.scale,
            bias: self.with_bias.then_some(&self.bias[..]),
            zero,
            lo,
            hi,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn gemm_matches_reference(
        m in 1usize..30, k in 0usize..90, n in 1usize..150, extra in 0usize..6,
        a_zero in any::<u8>(), per_channel in any::<bool>(), with_bias in any::<bool>(),
        act in 0u8..3, zero in any::<u8>(), spread in 0u8..4, seed in any::<u64>(),
    ) {
        let (lda, ldo) = (k + extra, n + 2 * extra);
        let a = bytes(seed, m * lda);
        let w = weights(seed ^ 1, k * n);
        let case = Case::new(seed, n, k, per_channel, with_bias, act, zero, spread);
        let rq = case.rq();
        let want = reference::gemm_u8s8(m, k, n, &a, lda, a_zero, &w, &rq);
        let packed = PackedI8::pack(&w, k, n);
        let mut wt = vec![0i8; k * n];
        for c in 0..k {
            for j in 0..n {
                wt[j * k + c] = w[c * n + j];
            }
        }
        let packed_t = PackedI8::pack_transposed(&wt, n, k);
        let init = bytes(seed ^ 9, m * ldo);
        for isa in Isa::all_available() {
            for p in [&packed, &packed_t] {
                let mut out = init.clone();
                gemm_u8s8(isa, m, &a, lda, a_zero, p, &mut out, ldo, &rq);
                for i in 0..m {
                    prop_assert_eq!(&out[i * ldo..][..n], &want[i * n..][..n], "{:?} row {}", isa, i);
                    prop_assert_eq!(&out[i * ldo + n..][..ldo - n], &init[i * ldo + n..][..ldo - n],
                        "{:?} wrote past n in row {}", isa, i);
                }
            }
        }
    }

    #[test]
    fn depthwise_matches_reference(
        c in 1usize..40, h in 1usize..12, w in 1usize..20, kernel in (1usize..6, 1usize..6),
        stride in (1usize..4, 1usize..4), dilation in (1usize..3, 1usize..3),
        pads in [0usize..3, 0usize..3, 0usize..3, 0usize..3],
        a_zero in any::<u8>(), per_channel in any::<bool>(), with_bias in any::<bool>(),
        act in 0u8..3, zero in any::<u8>(), spread in 0u8..4, seed in any::<u64>(),
    ) {
        let g = fitted(c, [h, w], [kernel.0, kernel.1], [stride.0, stride.1],
            [dilation.0, dilation.1], pads);
        let taps = g.kh * g.kw;
        let x = bytes(seed, h * w * c);
        let wt = weights(seed ^ 1, c * taps);
        let case = Case::new(seed, c, taps, per_channel, with_bias, act, zero, spread);
        let rq = case.rq();
        let want = reference::conv_u8(&g, c, c, &x, a_zero, &wt, &rq);
        let tap_major = depthwise_u8_weights(&wt, c, taps);
        for isa in Isa::all_available() {
            let mut out = vec![0u8; g.oh * g.ow * c];
            depthwise_u8(isa, &g, &x, a_zero, &tap_major, &rq, &mut out);
            prop_assert_eq!(&out, &want, "{:?} {:?}", isa, g);
        }
    }

    #[test]
    fn im2col_conv_matches_reference(
        c in 1usize..12, o in 1usize..40, h in 1usize..10, w in 1usize..10,
        kernel in (1usize..4, 1usize..4), stride in (1usize..3, 1usize..3),
        dilation in (1usize..3, 1usize..3), pads in [0usize..2, 0usize..2, 0usize..2, 0usize..2],
        a_zero in any::<u8>(), per_channel in any::<bool>(), with_bias in any::<bool>(),
        act in 0u8..3, zero in any::<u8>(), seed in any::<u64>(),
    ) {
        let g = fitted(c, [h, w], [kernel.0, kernel.1], [stride.0, stride.1],
            [dilation.0, dilation.1], pads);
        let taps = g.kh * g.kw;
        let k = taps * c;
        let x = bytes(seed, h * w * c);
        let wt = weights(seed ^ 1, o * k);
        let case = Case::new(seed, o, k, per_channel, with_bias, act, zero, 2);
        let rq = case.rq();
        let want = reference::conv_u8(&g, 1, o, &x, a_zero, &wt, &rq);
        let packed = PackedI8::pack_transposed(&dense_weights_hwc(&wt, o, c, taps), o, k);
        let rows = g.oh * g.ow;
        let mut cols = vec![0u8; rows * k];
        im2col_u8(&g, &x, a_zero, &mut cols, k);
        for isa in Isa::all_available() {
            let mut out = vec![0u8; rows * o];
            gemm_u8s8(isa, rows, &cols, k, a_zero, &packed, &mut out, o, &rq);
            prop_assert_eq!(&out, &want, "{:?} {:?}", isa, g);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Within one step of the exact `f64` result (the `f32` sum of two
    /// products can round across a .5 boundary), and exact when either
    /// operand is at its zero point (then only one `f32` rounding happens).
    #[test]
    fn add_matches_reference(
        n in 0usize..300, a_zero in any::<u8>(), b_zero in any::<u8>(), zero in any::<u8>(),
        sa in 0.01f32..2.0, sb in 0.01f32..2.0, relu in any::<bool>(), seed in any::<u64>(),
    ) {
        let (a, b) = (bytes(seed, n), bytes(seed ^ 1, n));
        let q = AddQuant { a_scale: sa, a_zero, b_scale: sb, b_zero, zero, lo: if relu { zero } else { 0 }, hi: 255 };
        let want = reference::add_u8(&a, &b, &q);
        let mut out = vec![0u8; n];
        add_u8(Isa::Portable, &a, &b, &q, &mut out);
        // Every path does the same f32 operations in the same order.
        for isa in Isa::all_available() {
            let mut lanes = vec![0u8; n];
            add_u8(isa, &a, &b, &q, &mut lanes);
            prop_assert_eq!(&lanes, &out, "{:?}", isa);
        }
        for i in 0..n {
            let d = (i32::from(out[i]) - i32::from(want[i])).abs();
            prop_assert!(d <= 1, "{}: {} vs {}", i, out[i], want[i]);
            if a[i] == a_zero || b[i] == b_zero {
                prop_assert_eq!(out[i], want[i], "{}", i);
            }
        }
        prop_assert!(out.iter().all(|&v| v >= q.lo));
    }

    /// ONNX's QuantizeLinear in `f64` (exact for these magnitudes except at
    /// ties the `f32` division moves), and the same bytes on every path.
    #[test]
    fn quantize_matches_onnx_and_paths_agree(
        n in 0usize..300, zero in any::<u8>(), scale in 0.001f32..1.0, seed in any::<u64>(),
    ) {
        let x: Vec<f32> = bytes(seed, n)
            .iter()
            .zip(bytes(seed ^ 7, n))
            .map(|(&a, b)| (f32::from(a) - 128.0) * scale * 1.5 + f32::from(b) / 255.0 * scale)
            .chain([f32::NAN, f32::INFINITY, -f32::INFINITY])
            .collect();
        let mut out = vec![0u8; x.len()];
        quantize_u8(Isa::Portable, &x, scale, zero, &mut out);
        for (i, (&v, &q)) in x.iter().zip(&out).enumerate() {
            let want = if v.is_nan() {
                0.0
            } else {
                ((v / scale).round_ties_even() + f32::from(zero)).clamp(0.0, 255.0)
            };
            prop_assert_eq!(f32::from(q), want, "{}: {} -> {}", i, v, q);
        }
        for isa in Isa::all_available() {
            let mut lanes = vec![0u8; x.len()];
            quantize_u8(isa, &x, scale, zero, &mut lanes);
            prop_assert_eq!(&lanes, &out, "{:?}", isa);
        }
    }

    #[test]
    fn global_avg_pool_matches_reference(
        pixels in 1usize..60, c in 1usize..40, a_zero in any::<u8>(), zero in any::<u8>(),
        s in 0.1f32..3.0, seed in any::<u64>(),
    ) {
        let x = bytes(seed, pixels * c);
        let scale = s / pixels as f32;
        let want = reference::global_avg_pool_u8(&x, pixels, c, a_zero, scale, zero);
        let mut out = vec![0u8; c];
        global_avg_pool_u8(&x, pixels, c, a_zero, scale, zero, &mut out);
        for ch in 0..c {
            prop_assert!((i32::from(out[ch]) - i32::from(want[ch])).abs() <= 1, "{}: {} vs {}", ch, out[ch], want[ch]);
        }
    }
}

/// The shapes MobileNet-style depthwise layers have (3×3, stride 1 and 2,
/// padded, rows wider than one row-batch of the 3-tap kernel, channels not a
/// multiple of 16), which the random cases above reach only now and then.
#[test]
fn depthwise_3x3_rows_match_reference() {
    for (seed, (c, h, w, stride, pads)) in [
        (24, 9, 29, 1, [1, 1, 1, 1]),
        (40, 7, 17, 2, [1, 1, 1, 1]),
        (16, 5, 8, 1, [0, 0, 0, 0]),
        (7, 6, 23, 2, [0, 0, 1, 1]),
    ]
    .into_iter()
    .enumerate()
    {
        let g = fitted(c, [h, w], [3, 3], [stride, stride], [1, 1], pads);
        let x = bytes(seed as u64, h * w * c);
        let wt = weights(seed as u64 ^ 1, c * 9);
        let case = Case::new(seed as u64, c, 9, true, true, 1, 3, 2);
        let rq = case.rq();
        let want = reference::conv_u8(&g, c, c, &x, 17, &wt, &rq);
        let tap_major = depthwise_u8_weights(&wt, c, 9);
        for isa in Isa::all_available() {
            let mut out = vec![0u8; g.oh * g.ow * c];
            depthwise_u8(isa, &g, &x, 17, &tap_major, &rq, &mut out);
            assert_eq!(out, want, "{isa:?} {g:?}");
        }
    }
}

#[test]
fn quantize_rounds_half_to_even_then_offsets_and_clamps() {
    let rq = Requant {
        scale: &[0.5],
        bias: Some(&[1, -1]),
        zero: 10,
        lo: 5,
        hi: 200,
    };
    // (4 + 1)·0.5 = 2.5 -> 2; (8 - 1)·0.5 = 3.5 -> 4.
    assert_eq!(rq.quantize(0, 4), 12);
    assert_eq!(rq.quantize(1, 8), 14);
    assert_eq!(rq.quantize(0, -1000), 5);
    assert_eq!(rq.quantize(0, 1000), 200);
    assert_eq!(rq.quantize(0, i32::MAX - 1), 200);
    assert_eq!(rq.quantize(0, i32::MIN + 1), 5);
}

/// The largest sums int8 inputs can make (255 · -128 per product, thousands
/// deep) stay exact in `i32` on every path.
#[test]
fn extreme_sums_are_exact() {
    let (m, k, n) = (7, 4099, 33);
    let a = vec![255u8; m * k];
    let w = vec![-128i8; k * n];
    let scale = vec![1.0 / 4_000_000.0; n];
    let rq = Requant {
        scale: &scale,
        bias: None,
        zero: 128,
        lo: 0,
        hi: 255,
    };
    let want = reference::gemm_u8s8(m, k, n, &a, k, 0, &w, &rq);
    assert_eq!(want[0], 128 - 33, "-255·128·4099 / 4e6 = -33.45");
    let packed = PackedI8::pack(&w, k, n);
    for isa in Isa::all_available() {
        let mut out = vec![0u8; m * n];
        gemm_u8s8(isa, m, &a, k, 0, &packed, &mut out, n, &rq);
        assert_eq!(out, want, "{isa:?}");
    }
}

#[test]
fn vnni_peak_is_measured() {
    let gops = vnni_peak_gops(0.02);
    assert!(gops.is_finite() && gops > 0.0, "{gops}");
}

//! The steps the QOperator lowering added (a clamping requantization, and
//! the float pool and classifier a QOperator graph may leave in `f32`)
//! against the kernels crate's naive ONNX references.

use edgeplug_kernels::quant::{self, QTensor, QuantParams, QuantType};
use edgeplug_kernels::testutil::{assert_close, tensor};
use edgeplug_kernels::{GemmParams, Tensor, reference};
use proptest::prelude::*;

use super::program::{Qp, float_avg_pool, float_gemm, requantize_table};

proptest! {
    /// DequantizeLinear, a Clip to `[lo, hi]` in real values, QuantizeLinear
    /// (what onnxruntime runs for a QOperator graph's DequantizeLinear → Clip
    /// → QuantizeLinear) is the requantization with the clamp moved onto the
    /// output bytes, byte for byte.
    #[test]
    fn clamping_requantize_is_dequantize_clip_quantize(
        data in proptest::collection::vec(any::<u8>(), 1..300),
        from_scale in 1e-3f32..0.2, from_zero in any::<u8>(),
        to_scale in 1e-3f32..0.2, to_zero in any::<u8>(),
        lo in -3f32..1.0, width in 0f32..8.0,
    ) {
        let hi = lo + width;
        let (from, to) = (Qp { scale: from_scale, zero: from_zero }, Qp { scale: to_scale, zero: to_zero });
        // The byte bounds as the compiler derives them from a real clamp.
        let byte = |v: f32| ((v / to_scale).round_ties_even() + f32::from(to_zero)).clamp(0.0, 255.0) as u8;
        let table = requantize_table(from, to, byte(lo), byte(hi));
        let got: Vec<u8> = data.iter().map(|&v| table[usize::from(v)]).collect();

        let q = QTensor::new(vec![data.len()], QuantType::U8, data.clone(),
            QuantParams::per_tensor(from_scale, i32::from(from_zero))).unwrap();
        let real = quant::dequantize(&q).unwrap();
        let clipped: Vec<f32> = real.as_f32().unwrap().iter().map(|v| v.clamp(lo, hi)).collect();
        let clipped = Tensor::from_f32(vec![data.len()], clipped).unwrap();
        let want = quant::quantize(&clipped, QuantType::U8,
            QuantParams::per_tensor(to_scale, i32::from(to_zero))).unwrap();
        prop_assert_eq!(&got[..], want.data());
    }

    /// The float classifier step against the kernels' triple-loop Gemm.
    #[test]
    fn float_gemm_matches_the_reference(m in 1usize..5, k in 1usize..70, n in 1usize..20, seed in any::<u64>()) {
        let (x, w, b) = (tensor(seed, &[m, k], 1.0), tensor(seed ^ 1, &[k, n], 1.0), tensor(seed ^ 2, &[n], 1.0));
        let mut out = vec![0f32; m * n];
        float_gemm(x.as_f32().unwrap(), w.as_f32().unwrap(), k, n, b.as_f32().unwrap(), &mut out);
        let want = reference::gemm(&x, &w, Some(&b), &GemmParams::default()).unwrap();
        assert_close(&Tensor::from_f32(vec![m, n], out).unwrap(), &want)?;
    }

    /// The float global pool step against the kernels' naive one.
    #[test]
    fn float_avg_pool_matches_the_reference(n in 1usize..3, c in 1usize..9, h in 1usize..8, w in 1usize..8, seed in any::<u64>()) {
        let x = tensor(seed, &[n, c, h, w], 4.0);
        let mut out = vec![0f32; n * c];
        float_avg_pool(x.as_f32().unwrap(), h * w, &mut out);
        let want = reference::global_avg_pool(&x).unwrap();
        assert_close(&Tensor::from_f32(vec![n, c, 1, 1], out).unwrap(), &want)?;
    }
}

//! The quantized ops against naive ONNX-order references (byte for byte), against the float
//! ops on the dequantized operands (within one output step), and their refusals.

use proptest::prelude::*;

use super::*;
use crate::testutil::bytes;
use crate::{Activation, Conv2dParams, Padding, conv2d, testutil};

fn quant_type(i: u8) -> QuantType {
    if i.is_multiple_of(2) {
        QuantType::U8
    } else {
        QuantType::I8
    }
}

/// An activation operand of `shape`, per tensor.
fn activation_tensor(seed: u64, shape: &[usize], ty: QuantType) -> QTensor {
    let n = shape.iter().product();
    let (lo, hi) = ty.range();
    let zero = lo + i32::from(bytes(seed ^ 7, 1)[0]) % (hi - lo + 1);
    let scale = 0.01 + f32::from(bytes(seed ^ 8, 1)[0]) / 2000.0;
    QTensor::new(
        shape.to_vec(),
        ty,
        bytes(seed, n),
        QuantParams::per_tensor(scale, zero),
    )
    .unwrap()
}

/// A weight operand whose values less their zero points fit in `i8`: `i8` with zero points
/// in -8..8 and values drawn within reach, or `u8` with zero point 128 (any byte fits).
fn weight_tensor(
    seed: u64,
    shape: &[usize],
    ty: QuantType,
    axis: usize,
    per_channel: bool,
) -> QTensor {
    let channels = if per_channel { shape[axis] } else { 1 };
    let scales: Vec<f32> = bytes(seed ^ 3, channels)
        .into_iter()
        .map(|b| 0.002 + f32::from(b) / 20_000.0)
        .collect();
    let zero_points: Vec<i32> = match ty {
        QuantType::U8 => vec![128; channels],
        QuantType::I8 => bytes(seed ^ 4, channels)
            .into_iter()
            .map(|b| i32::from(b % 16) - 8)
            .collect(),
    };
    let params = QuantParams {
        scales,
        zero_points: zero_points.clone(),
        axis,
    };
    let index = params.index_of(shape);
    let data: Vec<u8> = bytes(seed, shape.iter().product())
        .into_iter()
        .enumerate()
        .map(|(i, b)| match ty {
            QuantType::U8 => b,
            // A value in -120..120 around a zero point in -8..8 stays in i8 after centering.
            QuantType::I8 => ((i32::from(b) % 240 - 120 + zero_points[index(i)]) as i8) as u8,
        })
        .collect();
    QTensor::new(shape.to_vec(), ty, data, params).unwrap()
}

fn biases(seed: u64, n: usize) -> Vec<i32> {
    bytes(seed, 2 * n)
        .chunks_exact(2)
        .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]])))
        .collect()
}

/// Output parameters that spread a sum of `k` products over the `u8` range.
fn requantize(seed: u64, x: &QTensor, w: &QTensor, k: usize) -> Requantize {
    let b = bytes(seed, 2);
    let typical = x.params.scales[0] * w.params.scales[0] * 100.0 * (k as f32).sqrt();
    Requantize {
        scale: typical / 64.0 * (0.5 + f32::from(b[0]) / 255.0),
        zero_point: b[1],
    }
}

/// The clamp of `activation` on an output quantized to `out`, as ONNX's Clip after the op.
fn clamp_of(activation: Activation, out: Requantize) -> (i32, i32) {
    let z = i32::from(out.zero_point);
    match activation {
        Activation::None => (0, 255),
        Activation::Relu => (z, 255),
        Activation::Relu6 => (z, ((6.0 / out.scale).round_ties_even() as i32 + z).min(255)),
        other => unreachable!("{other:?} is not generated"),
    }
}

/// ONNX's requantization of one exact sum: `clamp(round_half_even(acc · s_x · s_w / s_y) + z)`.
fn requant_one(acc: i64, multiplier: f32, out: Requantize, (lo, hi): (i32, i32)) -> u8 {
    let v = (acc as f32 * multiplier).round_ties_even() as i64 + i64::from(out.zero_point);
    v.clamp(i64::from(lo), i64::from(hi)) as u8
}

/// The stored value less its zero point, element `i` of `t`.
fn real_int(t: &QTensor, i: usize) -> i64 {
    let j = t.params.index_of(&t.shape)(i);
    i64::from(t.ty.value(t.data[i]) - t.params.zero_points[j])
}

fn scale_at(t: &QTensor, i: usize) -> f32 {
    t.params.scales[t.params.index_of(&t.shape)(i)]
}

/// QLinearConv read straight off ONNX's definition: NCHW, OIHW, every operand in its own
/// storage type, products summed in `i64`.
fn naive_qconv(
    x: &QTensor,
    w: &QTensor,
    bias: Option<&[i32]>,
    p: &Conv2dParams,
    out: Requantize,
) -> Vec<u8> {
    let [n, c, h, wd] = x.shape[..] else {
        unreachable!()
    };
    let [o, cg, kh, kw] = w.shape[..] else {
        unreachable!()
    };
    let og = o / p.groups;
    let oh =
        (h + p.padding.top + p.padding.bottom - p.dilation[0] * (kh - 1) - 1) / p.stride[0] + 1;
    let ow =
        (wd + p.padding.left + p.padding.right - p.dilation[1] * (kw - 1) - 1) / p.stride[1] + 1;
    let clamp = clamp_of(p.activation, out);
    let mut result = Vec::new();
    for b in 0..n {
        for oc in 0..o {
            let grp = oc / og;
            let w_first = oc * cg * kh * kw;
            let multiplier = x.params.scales[0] * scale_at(w, w_first) / out.scale;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0, |bs| i64::from(bs[oc]));
                    for ci in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let y = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                                    - p.padding.top as isize;
                                let xx = (ox * p.stride[1] + kx * p.dilation[1]) as isize
                                    - p.padding.left as isize;
                                if y < 0 || xx < 0 || y >= h as isize || xx >= wd as isize {
                                    continue;
                                }
                                let xi =
                                    ((b * c + grp * cg + ci) * h + y as usize) * wd + xx as usize;
                                let wi = ((oc * cg + ci) * kh + ky) * kw + kx;
                                acc += real_int(x, xi) * real_int(w, wi);
                            }
                        }
                    }
                    result.push(requant_one(acc, multiplier, out, clamp));
                }
            }
        }
    }
    result
}

fn activation_of(i: u8) -> Activation {
    [Activation::None, Activation::Relu, Activation::Relu6][usize::from(i % 3)]
}

/// A convolution case: (input, weight, bias, params, output).
#[allow(clippy::too_many_arguments)]
fn conv_case(
    seed: u64,
    n: usize,
    groups_kind: u8,
    c_per: usize,
    o_per: usize,
    [h, w]: [usize; 2],
    kernel: [usize; 2],
    stride: usize,
    pad: usize,
    dilation: usize,
    types: u8,
    act: u8,
) -> (QTensor, QTensor, Option<Vec<i32>>, Conv2dParams, Requantize) {
    // Dense, depthwise (one input channel per group, as many outputs as inputs) or grouped.
    let (groups, c, o) = match groups_kind % 3 {
        0 => (1, c_per, o_per),
        1 => (c_per, c_per, c_per),
        _ => (2, 2 * c_per, 2 * o_per),
    };
    let cg = c / groups;
    // Padding below each kernel's size keeps every window partly on the image.
    let kernel = [kernel[0].min(h + 2 * pad), kernel[1].min(w + 2 * pad)];
    let (dh, dw) = (
        if kernel[0] == 1 {
            1
        } else {
            dilation.min((h + 2 * pad - 1) / (kernel[0] - 1)).max(1)
        },
        if kernel[1] == 1 {
            1
        } else {
            dilation.min((w + 2 * pad - 1) / (kernel[1] - 1)).max(1)
        },
    );
    let x = activation_tensor(seed, &[n, c, h, w], quant_type(types));
    let wt = weight_tensor(
        seed ^ 11,
        &[o, cg, kernel[0], kernel[1]],
        quant_type(types >> 1),
        0,
        types & 4 != 0,
    );
    let bias = (types & 8 != 0).then(|| biases(seed ^ 12, o));
    let p = Conv2dParams {
        stride: [stride, stride],
        padding: Padding {
            top: pad,
            left: pad,
            bottom: pad,
            right: pad,
        },
        dilation: [dh, dw],
        groups,
        activation: activation_of(act),
    };
    let out = requantize(seed ^ 13, &x, &wt, cg * kernel[0] * kernel[1]);
    (x, wt, bias, p, out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn qconv2d_is_onnx_qlinearconv_byte_for_byte(
        seed in any::<u64>(), n in 1usize..3, groups_kind in 0u8..3, c_per in 1usize..6,
        o_per in 1usize..7, h in 1usize..9, w in 1usize..9, kh in 1usize..4, kw in 1usize..4,
        stride in 1usize..3, pad in 0usize..2, dilation in 1usize..3, types in 0u8..16,
        act in 0u8..3,
    ) {
        let (x, wt, bias, p, out) =
            conv_case(seed, n, groups_kind, c_per, o_per, [h, w], [kh, kw], stride, pad, dilation, types, act);
        let got = qconv2d(&x, &wt, bias.as_deref(), &p, out).unwrap();
        let want = naive_qconv(&x, &wt, bias.as_deref(), &p, out);
        prop_assert_eq!(got.data(), &want[..]);
        prop_assert_eq!(got.quant_type(), QuantType::U8);
        prop_assert_eq!(&got.params().scales, &vec![out.scale]);
    }

    #[test]
    fn qconv2d_is_the_float_conv_of_the_dequantized_operands_within_one_step(
        seed in any::<u64>(), groups_kind in 0u8..3, c_per in 1usize..5, o_per in 1usize..5,
        h in 2usize..8, w in 2usize..8, kh in 1usize..4, stride in 1usize..3, pad in 0usize..2,
        types in 0u8..16, act in 0u8..3,
    ) {
        let (x, wt, bias, p, out) =
            conv_case(seed, 1, groups_kind, c_per, o_per, [h, w], [kh, kh], stride, pad, 1, types, act);
        let got = dequantize(&qconv2d(&x, &wt, bias.as_deref(), &p, out).unwrap()).unwrap();
        // The float path: dequantize, convolve (bias as its real value), clamp to what the
        // output can hold; the integer path rounds once, so they differ by at most one step
        // plus the float sum's rounding.
        let o = wt.shape[0];
        let real_bias: Vec<f32> = (0..o)
            .map(|oc| {
                let b = bias.as_ref().map_or(0, |b| b[oc]) as f32;
                b * x.params.scales[0] * scale_at(&wt, oc * wt.data.len() / o)
            })
            .collect();
        let fp = Conv2dParams { activation: Activation::None, ..p };
        let want = conv2d(
            &dequantize(&x).unwrap(),
            &dequantize(&wt).unwrap(),
            Some(&Tensor::from_f32(vec![o], real_bias).unwrap()),
            &fp,
        )
        .unwrap();
        prop_assert_eq!(got.shape(), want.shape());
        let (lo, hi) = clamp_of(p.activation, out);
        let z = i32::from(out.zero_point);
        let (lo, hi) = ((lo - z) as f32 * out.scale, (hi - z) as f32 * out.scale);
        for (g, v) in got.as_f32().unwrap().iter().zip(want.as_f32().unwrap()) {
            let v = v.clamp(lo, hi);
            prop_assert!((g - v).abs() <= out.scale * 1.001 + 1e-5 * v.abs(), "{g} vs {v} (step {})", out.scale);
        }
    }

    #[test]
    fn qgemm_is_onnx_qgemm_byte_for_byte(
        seed in any::<u64>(), m in 1usize..9, k in 0usize..40, n in 1usize..40,
        trans_b in any::<bool>(), types in 0u8..16, act in 0u8..3,
    ) {
        let a = activation_tensor(seed, &[m, k], quant_type(types));
        let b_shape = if trans_b { [n, k] } else { [k, n] };
        let axis = if trans_b { 0 } else { 1 };
        let b = weight_tensor(seed ^ 1, &b_shape, quant_type(types >> 1), axis, types & 4 != 0);
        let bias = (types & 8 != 0).then(|| biases(seed ^ 2, n));
        let out = requantize(seed ^ 3, &a, &b, k.max(1));
        let activation = activation_of(act);
        let got = qgemm(&a, &b, bias.as_deref(), trans_b, activation, out).unwrap();
        prop_assert_eq!(got.shape(), &[m, n][..]);
        let clamp = clamp_of(activation, out);
        for i in 0..m {
            for j in 0..n {
                let mut acc = bias.as_ref().map_or(0, |bs| i64::from(bs[j]));
                for c in 0..k {
                    let bi = if trans_b { j * k + c } else { c * n + j };
                    acc += real_int(&a, i * k + c) * real_int(&b, bi);
                }
                let bj = if trans_b { j * k } else { j };
                let multiplier = a.params.scales[0] * scale_at(&b, bj) / out.scale;
                prop_assert_eq!(got.data()[i * n + j], requant_one(acc, multiplier, out, clamp), "({}, {})", i, j);
            }
        }
    }

    #[test]
    fn the_layout_transpose_moves_every_byte(seed in any::<u64>(), rows in 1usize..70, cols in 1usize..70) {
        let src = bytes(seed, rows * cols);
        let mut dst = vec![0u8; rows * cols];
        ops::transpose(&src, rows, cols, &mut dst);
        for i in 0..rows {
            for j in 0..cols {
                prop_assert_eq!(dst[j * rows + i], src[i * cols + j], "({}, {})", i, j);
            }
        }
    }

    #[test]
    fn quantize_is_onnx_quantizelinear_and_dequantize_inverts_it(
        seed in any::<u64>(), d0 in 1usize..5, d1 in 1usize..40, ty in 0u8..2,
        per_channel in any::<bool>(), axis in 0usize..2,
    ) {
        let ty = quant_type(ty);
        let shape = [d0, d1];
        let x = testutil::tensor(seed, &shape, 3.0);
        let channels = if per_channel { shape[axis] } else { 1 };
        let (lo, hi) = ty.range();
        let params = QuantParams {
            scales: bytes(seed ^ 1, channels).iter().map(|&b| 0.005 + f32::from(b) / 4000.0).collect(),
            zero_points: bytes(seed ^ 2, channels).iter().map(|&b| lo + i32::from(b) % (hi - lo + 1)).collect(),
            axis,
        };
        let q = quantize(&x, ty, params.clone()).unwrap();
        for (i, (&b, &v)) in q.data().iter().zip(x.as_f32().unwrap()).enumerate() {
            let j = if per_channel { if axis == 0 { i / d1 } else { i % d1 } } else { 0 };
            // ONNX: saturate(round_half_even(x / scale) + zero_point), here in f64.
            let want = ((f64::from(v) / f64::from(params.scales[j])).round_ties_even()
                + f64::from(params.zero_points[j]))
                .clamp(f64::from(lo), f64::from(hi));
            prop_assert_eq!(f64::from(ty.value(b)), want, "element {}: {}", i, v);
        }
        // Requantizing the dequantized values gives back the same bytes.
        let back = quantize(&dequantize(&q).unwrap(), ty, params).unwrap();
        prop_assert_eq!(back.data(), q.data());
    }
}

#[test]
fn dequantize_follows_onnx_per_channel() {
    let q = QTensor::new(
        vec![2, 3],
        QuantType::I8,
        [0u8, 1, 0xFF, 10, 0x80, 0x7F],
        QuantParams {
            scales: vec![0.5, 0.25],
            zero_points: vec![1, -2],
            axis: 0,
        },
    )
    .unwrap();
    let d = dequantize(&q).unwrap();
    assert_eq!(d.as_f32().unwrap(), [-0.5, 0.0, -1.0, 3.0, -31.5, 32.25]);
}

#[test]
fn a_nan_quantizes_to_the_lowest_value() {
    let x = Tensor::from_f32(vec![3], vec![f32::NAN, 1.0, -1.0]).unwrap();
    for ty in [QuantType::U8, QuantType::I8] {
        let q = quantize(&x, ty, QuantParams::per_tensor(0.5, 0)).unwrap();
        let values: Vec<i32> = q.data().iter().map(|&b| ty.value(b)).collect();
        assert_eq!(values[0], ty.range().0, "{ty:?}");
    }
}

#[test]
fn bad_parameters_are_errors_not_panics() {
    let data = vec![0u8; 6];
    let bad = |params: QuantParams| QTensor::new(vec![2, 3], QuantType::U8, data.clone(), params);
    assert!(matches!(
        bad(QuantParams::per_tensor(0.0, 0)),
        Err(TensorError::InvalidArgument(_))
    ));
    assert!(matches!(
        bad(QuantParams::per_tensor(f32::NAN, 0)),
        Err(TensorError::InvalidArgument(_))
    ));
    assert!(matches!(
        bad(QuantParams::per_tensor(1.0, 256)),
        Err(TensorError::InvalidArgument(_))
    ));
    let two = QuantParams {
        scales: vec![1.0; 2],
        zero_points: vec![0; 2],
        axis: 1,
    };
    assert!(matches!(
        bad(two.clone()),
        Err(TensorError::ShapeMismatch(_))
    ));
    assert!(matches!(
        bad(QuantParams { axis: 5, ..two }),
        Err(TensorError::ShapeMismatch(_))
    ));
    assert!(matches!(
        QTensor::new(
            vec![4],
            QuantType::U8,
            data.clone(),
            QuantParams::per_tensor(1.0, 0)
        ),
        Err(TensorError::ShapeMismatch(_))
    ));
    let f = Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap();
    assert!(matches!(
        QTensor::from_tensor(&f, QuantType::U8, QuantParams::per_tensor(1.0, 0)),
        Err(TensorError::UnsupportedType { .. })
    ));
}

#[test]
fn ops_refuse_what_the_engine_cannot_take() {
    let x = QTensor::new(
        vec![1, 1, 2, 2],
        QuantType::U8,
        [1u8, 2, 3, 4],
        QuantParams::per_tensor(0.1, 0),
    )
    .unwrap();
    let out = Requantize {
        scale: 0.1,
        zero_point: 0,
    };
    let p = Conv2dParams::default();
    // uint8 weights with zero point 0: 200 does not fit in int8.
    let w = QTensor::new(
        vec![1, 1, 1, 1],
        QuantType::U8,
        [200u8],
        QuantParams::per_tensor(0.1, 0),
    )
    .unwrap();
    assert!(matches!(
        qconv2d(&x, &w, None, &p, out),
        Err(TensorError::Unsupported(_))
    ));
    let w = QTensor::new(
        vec![1, 1, 1, 1],
        QuantType::I8,
        [3u8],
        QuantParams::per_tensor(0.1, 0),
    )
    .unwrap();
    let sigmoid = Conv2dParams {
        activation: Activation::Sigmoid,
        ..p
    };
    assert!(matches!(
        qconv2d(&x, &w, None, &sigmoid, out),
        Err(TensorError::Unsupported(_))
    ));
    assert!(matches!(
        qconv2d(&x, &w, Some(&[1, 2]), &p, out),
        Err(TensorError::ShapeMismatch(_))
    ));
    assert!(matches!(
        qconv2d(
            &x,
            &w,
            None,
            &p,
            Requantize {
                scale: -1.0,
                zero_point: 0
            }
        ),
        Err(TensorError::InvalidArgument(_))
    ));
    let big = QTensor::new(
        vec![1, 1, 3, 3],
        QuantType::I8,
        [0u8; 9],
        QuantParams::per_tensor(0.1, 0),
    )
    .unwrap();
    assert!(matches!(
        qconv2d(&x, &big, None, &p, out),
        Err(TensorError::InvalidArgument(_))
    ));
    assert!(matches!(
        qconv2d(&x, &x, None, &Conv2dParams { groups: 0, ..p }, out),
        Err(TensorError::ShapeMismatch(_))
    ));
    // A patch matrix past the tensor size limit is refused before anything is allocated:
    // 4096 x 4096 output pixels times a 127 x 127 window is 2^38 bytes.
    let wide = QTensor::new(
        vec![1, 1, 4096, 4096],
        QuantType::U8,
        vec![0u8; 4096 * 4096],
        QuantParams::per_tensor(0.1, 0),
    )
    .unwrap();
    let window = QTensor::new(
        vec![1, 1, 127, 127],
        QuantType::I8,
        vec![0u8; 127 * 127],
        QuantParams::per_tensor(0.1, 0),
    )
    .unwrap();
    let same = Conv2dParams {
        padding: Padding {
            top: 63,
            left: 63,
            bottom: 63,
            right: 63,
        },
        ..p
    };
    assert!(matches!(
        qconv2d(&wide, &window, None, &same, out),
        Err(TensorError::TooLarge(_))
    ));
    // Per-channel activations, and a gemm whose inner dimensions differ.
    let pc = QTensor::new(
        vec![2, 2],
        QuantType::U8,
        [1u8, 2, 3, 4],
        QuantParams {
            scales: vec![0.1, 0.2],
            zero_points: vec![0, 0],
            axis: 0,
        },
    )
    .unwrap();
    let w2 = QTensor::new(
        vec![2, 2],
        QuantType::I8,
        [1u8, 2, 3, 4],
        QuantParams::per_tensor(0.1, 0),
    )
    .unwrap();
    assert!(matches!(
        qgemm(&pc, &w2, None, false, Activation::None, out),
        Err(TensorError::Unsupported(_))
    ));
    let w3 = QTensor::new(
        vec![3, 2],
        QuantType::I8,
        [0u8; 6],
        QuantParams::per_tensor(0.1, 0),
    )
    .unwrap();
    assert!(matches!(
        qgemm(&w2, &w3, None, false, Activation::None, out),
        Err(TensorError::ShapeMismatch(_))
    ));
}

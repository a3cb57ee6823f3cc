//! QLinearConv and QGemm on the int8 engine of [`crate::fast::int8`]: the operands' checks,
//! the mapping of their storage types and zero points onto `u8 × i8`, the NCHW ↔ NHWC
//! layout change around the engine's channels-last kernels, and the requantization's
//! multipliers and clamps.

use std::borrow::Cow;

use super::{QTensor, QuantParams, QuantType};
use crate::fast::int8::{
    PackedI8, Requant, dense_weights_hwc, depthwise_u8, depthwise_u8_weights, gemm_u8s8, im2col_u8,
};
use crate::fast::{DwGeometry, Isa};
use crate::{Activation, Conv2dParams, TensorError, shape};

/// The longest reduction whose `i32` sum cannot overflow: each product `(a - z) · w` is at
/// most 255 · 128 in magnitude, and 2^31 / (255 · 128) is 65,793.
const MAX_REDUCTION: usize = 65_536;

/// The output of a quantized op: `u8`, per tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Requantize {
    /// Finite and positive.
    pub scale: f32,
    pub zero_point: u8,
}

/// An activation operand as the engine reads it: `u8` bytes with their zero point and scale.
struct Activations<'a> {
    bytes: Cow<'a, [u8]>,
    zero: u8,
    scale: f32,
}

fn activations<'a>(op: &str, x: &'a QTensor) -> Result<Activations<'a>, TensorError> {
    if !x.params.is_per_tensor() {
        return Err(TensorError::Unsupported(format!(
            "{op}: activations must have one scale and zero point (per tensor), got {}",
            x.params.scales.len()
        )));
    }
    let (scale, zero) = (x.params.scales[0], x.params.zero_points[0]);
    Ok(match x.ty {
        QuantType::U8 => Activations {
            bytes: Cow::Borrowed(&x.data),
            zero: zero as u8,
            scale,
        },
        // `x ^ 0x80` is `x + 128` read as `u8`; the zero point moves with it, so every real
        // value stays the same.
        QuantType::I8 => Activations {
            bytes: Cow::Owned(x.data.iter().map(|b| b ^ 0x80).collect()),
            zero: (zero + 128) as u8,
            scale,
        },
    })
}

/// The weights less their zero points, as `i8`, with the scale of each of the `channels`
/// output channels; `channel_axis` is the axis per-channel parameters must run along.
fn centered_weights(
    op: &str,
    w: &QTensor,
    channels: usize,
    channel_axis: usize,
) -> Result<(Vec<i8>, Vec<f32>), TensorError> {
    let p = &w.params;
    if !p.is_per_tensor() && p.axis != channel_axis {
        return Err(TensorError::Unsupported(format!(
            "{op}: weight scales run along axis {}, not the output channels' axis {channel_axis}",
            p.axis
        )));
    }
    let index = p.index_of(&w.shape);
    let mut centered = Vec::with_capacity(w.data.len());
    for (i, &b) in w.data.iter().enumerate() {
        let v = w.ty.value(b) - p.zero_points[index(i)];
        let v = i8::try_from(v).map_err(|_| {
            TensorError::Unsupported(format!(
                "{op}: weight {i} less its zero point is {v}, outside int8 (the int8 engine \
                 multiplies uint8 activations by int8 weights)"
            ))
        })?;
        centered.push(v);
    }
    let scales = if p.is_per_tensor() {
        vec![p.scales[0]; channels]
    } else {
        p.scales.clone()
    };
    Ok((centered, scales))
}

/// What [`Requant`] needs besides the bias: each channel's multiplier `s_x · s_w[j] / s_y`
/// and the clamp of the fused activation.
struct Output {
    multipliers: Vec<f32>,
    zero: u8,
    lo: u8,
    hi: u8,
}

fn output(
    op: &str,
    x_scale: f32,
    w_scales: &[f32],
    out: Requantize,
    activation: Activation,
) -> Result<Output, TensorError> {
    if !(out.scale.is_finite() && out.scale > 0.0) {
        return Err(TensorError::InvalidArgument(format!(
            "{op}: output scale {} is not finite and positive",
            out.scale
        )));
    }
    // The product first, then the division, as onnxruntime computes the multiplier.
    let multipliers: Vec<f32> = w_scales.iter().map(|&s| x_scale * s / out.scale).collect();
    if let Some(m) = multipliers.iter().find(|m| !m.is_finite()) {
        return Err(TensorError::InvalidArgument(format!(
            "{op}: requantization multiplier {m} is not finite (scales too far apart)"
        )));
    }
    let zero = out.zero_point;
    let (lo, hi) = match activation {
        Activation::None => (0, 255),
        Activation::Relu => (zero, 255),
        // Clip(0, 6): 6 is the nearest step above the zero point.
        Activation::Relu6 => {
            let six = (6.0 / out.scale).round_ties_even() + f32::from(zero);
            (zero, six.min(255.0) as u8)
        }
        other => {
            return Err(TensorError::Unsupported(format!(
                "{op}: activation {other:?} (only none, relu and relu6 are clamps of a \
                 quantized output)"
            )));
        }
    };
    Ok(Output {
        multipliers,
        zero,
        lo,
        hi,
    })
}

impl Output {
    /// The requantization of output channels `range` (a group's), with their biases.
    fn requant<'a>(
        &'a self,
        range: std::ops::Range<usize>,
        bias: Option<&'a [i32]>,
    ) -> Requant<'a> {
        Requant {
            scale: &self.multipliers[range.clone()],
            bias: bias.map(|b| &b[range]),
            zero: self.zero,
            lo: self.lo,
            hi: self.hi,
        }
    }
}

fn check_bias(op: &str, bias: Option<&[i32]>, n: usize) -> Result<(), TensorError> {
    match bias {
        Some(b) if b.len() != n => Err(TensorError::ShapeMismatch(format!(
            "{op}: bias has {} values, the output {n} channels",
            b.len()
        ))),
        _ => Ok(()),
    }
}

fn check_reduction(op: &str, k: usize) -> Result<(), TensorError> {
    if k > MAX_REDUCTION {
        return Err(TensorError::Unsupported(format!(
            "{op}: a reduction of {k} products could overflow the 32-bit sums (at most \
             {MAX_REDUCTION})"
        )));
    }
    Ok(())
}

/// ONNX QLinearConv: `input` [N, C, H, W] (activations, per tensor), `weight`
/// [O, C / groups, kH, kW] (per tensor or per output channel, axis 0), an optional `i32`
/// bias `[O]` in units of `s_x · s_w`, and `out`'s scale and zero point; `p.activation` is a
/// clamp of the output (none, ReLU, or ReLU6 as Clip(0, 6)). Returns `u8` [N, O, oH, oW].
pub fn qconv2d(
    input: &QTensor,
    weight: &QTensor,
    bias: Option<&[i32]>,
    p: &Conv2dParams,
    out: Requantize,
) -> Result<QTensor, TensorError> {
    const OP: &str = "qconv2d";
    let (&[n, c, h, w], &[o, cg, kh, kw]) = (input.shape(), weight.shape()) else {
        return Err(TensorError::ShapeMismatch(format!(
            "{OP}: input {:?} and weight {:?} must both be of rank 4 (NCHW, OIHW)",
            input.shape(),
            weight.shape()
        )));
    };
    let groups = p.groups;
    if groups == 0 || cg == 0 || o == 0 || c % groups != 0 || o % groups != 0 || c / groups != cg {
        return Err(TensorError::ShapeMismatch(format!(
            "{OP}: input {:?}, weight {:?} and {groups} groups do not fit (C and O positive and \
             divisible by groups, weight's second dimension C / groups)",
            input.shape(),
            weight.shape()
        )));
    }
    check_bias(OP, bias, o)?;
    let x = activations(OP, input)?;
    let (wc, w_scales) = centered_weights(OP, weight, o, 0)?;
    let rq = output(OP, x.scale, &w_scales, out, p.activation)?;
    let taps = kh * kw;
    check_reduction(OP, cg * taps)?;
    let g =
        DwGeometry::new(c, h, w, [kh, kw], p.stride, p.dilation, p.padding).ok_or_else(|| {
            TensorError::InvalidArgument(format!(
                "{OP}: no {kh}x{kw} window fits input {:?} with stride {:?}, dilation {:?} and \
             padding {:?} (or a parameter is 0)",
                input.shape(),
                p.stride,
                p.dilation,
                p.padding
            ))
        })?;
    let out_shape = vec![n, o, g.oh, g.ow];
    shape::num_elements(OP, &out_shape)?;
    let (pixels, og) = (g.oh * g.ow, o / groups);
    // The patch matrix of one group of one image, bounded like a tensor: a hostile shape must
    // be an error, not an allocation that aborts the host.
    shape::num_elements(OP, &[pixels, cg * taps])?;
    let isa = Isa::detect();
    let depthwise = groups == c && o == c;
    let kernel = if depthwise {
        Kernel::Depthwise(depthwise_u8_weights(&wc, c, taps))
    } else {
        // Per group, `[og, kh·kw·cg]` in im2col's (ky, kx, c) order, packed once.
        Kernel::Dense(
            wc.chunks_exact(og * cg * taps)
                .map(|gw| {
                    PackedI8::pack_transposed(&dense_weights_hwc(gw, og, cg, taps), og, cg * taps)
                })
                .collect(),
        )
    };
    let mut result = vec![0u8; n * o * pixels];
    let mut image = vec![0u8; h * w * c];
    let mut out_hwc = vec![0u8; pixels * o];
    let mut group_in = Vec::new();
    let mut cols = Vec::new();
    for (src, dst) in x
        .bytes
        .chunks_exact((c * h * w).max(1))
        .zip(result.chunks_exact_mut((o * pixels).max(1)))
    {
        transpose(src, c, h * w, &mut image);
        match &kernel {
            Kernel::Depthwise(dw) => depthwise_u8(
                isa,
                &g,
                &image,
                x.zero,
                dw,
                &rq.requant(0..o, bias),
                &mut out_hwc,
            ),
            Kernel::Dense(packed) => {
                for (gi, pw) in packed.iter().enumerate() {
                    let gg = DwGeometry { c: cg, ..g };
                    let group_image: &[u8] = if groups == 1 {
                        &image
                    } else {
                        group_in.clear();
                        group_in.extend(
                            image
                                .chunks_exact(c)
                                .flat_map(|px| &px[gi * cg..(gi + 1) * cg]),
                        );
                        &group_in
                    };
                    let k = cg * taps;
                    // A 1x1 convolution with stride 1 and no padding reads the image itself.
                    let pointwise =
                        taps == 1 && g.stride == [1, 1] && p.padding == Default::default();
                    let a: &[u8] = if pointwise {
                        group_image
                    } else {
                        cols.resize(pixels * k, 0);
                        im2col_u8(&gg, group_image, x.zero, &mut cols, k);
                        &cols
                    };
                    let range = gi * og..(gi + 1) * og;
                    gemm_u8s8(
                        isa,
                        pixels,
                        a,
                        k,
                        x.zero,
                        pw,
                        &mut out_hwc[range.start..],
                        o,
                        &rq.requant(range, bias),
                    );
                }
            }
        }
        transpose(&out_hwc, pixels, o, dst);
    }
    QTensor::new(
        out_shape,
        QuantType::U8,
        result,
        QuantParams::per_tensor(out.scale, i32::from(out.zero_point)),
    )
}

/// A convolution's weights, prepared for the engine once per call.
enum Kernel {
    /// `[kh·kw, c]`, one tap per row.
    Depthwise(Vec<i8>),
    /// One packed matrix per group.
    Dense(Vec<PackedI8>),
}

/// `dst[j][i] = src[i][j]` for `src` of `rows × cols`: the NCHW ↔ NHWC change around the
/// engine. A byte at a time it cost more than the pointwise GEMM it fed (each write a cache
/// line of its own), so whole 16 × 16 tiles go through SSE2 registers on x86-64.
///
/// # Panics
///
/// If `src` or `dst` is shorter than `rows * cols`.
pub(super) fn transpose(src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) {
    let (src, dst) = (&src[..rows * cols], &mut dst[..rows * cols]);
    let (full_rows, full_cols) = (rows / 16 * 16, cols / 16 * 16);
    #[cfg(target_arch = "x86_64")]
    for i0 in (0..full_rows).step_by(16) {
        for j0 in (0..full_cols).step_by(16) {
            // SAFETY: SSE2 is part of x86-64 (every such CPU has it); `i0 + 16 <= rows` and
            // `j0 + 16 <= cols`, so the tile's 16 rows of 16 bytes lie in `src` (`rows * cols`
            // long) and its 16 columns in `dst`.
            unsafe { sse2::tile(src, cols, dst, rows, i0, j0) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let (full_rows, full_cols) = (0, 0);
    // What the tiles left: the columns past them in the tiled rows, then the last rows.
    for i in 0..full_rows {
        for j in full_cols..cols {
            dst[j * rows + i] = src[i * cols + j];
        }
    }
    for (i, row) in src.chunks_exact(cols.max(1)).enumerate().skip(full_rows) {
        for (j, &v) in row.iter().enumerate() {
            dst[j * rows + i] = v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// Transposes the 16 × 16 tile of `src` (row stride `cols`) at row `i0`, column `j0` into
    /// `dst` (row stride `rows`) at row `j0`, column `i0`: four rounds of unpacks, each
    /// interleaving twice as many bytes as the last.
    ///
    /// # Safety
    ///
    /// `(i0 + 15) * cols + j0 + 16 <= src.len()` and `(j0 + 15) * rows + i0 + 16 <= dst.len()`.
    #[inline]
    #[target_feature(enable = "sse2")]
    pub(super) unsafe fn tile(
        src: &[u8],
        cols: usize,
        dst: &mut [u8],
        rows: usize,
        i0: usize,
        j0: usize,
    ) {
        debug_assert!((i0 + 15) * cols + j0 + 16 <= src.len());
        debug_assert!((j0 + 15) * rows + i0 + 16 <= dst.len());
        // SAFETY: each row's 16 bytes are in `src` (the caller's bound).
        let r: [__m128i; 16] = std::array::from_fn(|k| unsafe {
            _mm_loadu_si128(src.as_ptr().add((i0 + k) * cols + j0).cast())
        });
        // Rows 2k and 2k+1 interleaved byte by byte: columns 0..8, then 8..16.
        let mut a = [_mm_setzero_si128(); 16];
        for k in 0..8 {
            a[2 * k] = _mm_unpacklo_epi8(r[2 * k], r[2 * k + 1]);
            a[2 * k + 1] = _mm_unpackhi_epi8(r[2 * k], r[2 * k + 1]);
        }
        // Rows 4g..4g+4: columns 0..4, 4..8, 8..12, 12..16, four bytes (rows) each.
        let mut b = [_mm_setzero_si128(); 16];
        for g in 0..4 {
            let (lo, hi) = (4 * g, 4 * g + 2);
            b[4 * g] = _mm_unpacklo_epi16(a[lo], a[hi]);
            b[4 * g + 1] = _mm_unpackhi_epi16(a[lo], a[hi]);
            b[4 * g + 2] = _mm_unpacklo_epi16(a[lo + 1], a[hi + 1]);
            b[4 * g + 3] = _mm_unpackhi_epi16(a[lo + 1], a[hi + 1]);
        }
        // Rows 8h..8h+8: c[8h + m] holds columns 2m and 2m+1, eight bytes (rows) each.
        let mut c = [_mm_setzero_si128(); 16];
        for h in 0..2 {
            for q in 0..4 {
                let (x, y) = (b[8 * h + q], b[8 * h + 4 + q]);
                c[8 * h + 2 * q] = _mm_unpacklo_epi32(x, y);
                c[8 * h + 2 * q + 1] = _mm_unpackhi_epi32(x, y);
            }
        }
        for m in 0..8 {
            let columns = [
                _mm_unpacklo_epi64(c[m], c[8 + m]),
                _mm_unpackhi_epi64(c[m], c[8 + m]),
            ];
            for (d, column) in columns.into_iter().enumerate() {
                let j = j0 + 2 * m + d;
                // SAFETY: column `j`'s 16 bytes from `i0` are in `dst` (the caller's bound).
                unsafe { _mm_storeu_si128(dst.as_mut_ptr().add(j * rows + i0).cast(), column) };
            }
        }
    }
}

/// ONNX QGemm: `a` [M, K] (activations, per tensor) times `b` [K, N] (`trans_b`: [N, K];
/// per tensor or per column of the result), plus an optional `i32` bias `[N]` in units of
/// `s_a · s_b`, requantized to `out` with `activation` as a clamp. Returns `u8` [M, N].
pub fn qgemm(
    a: &QTensor,
    b: &QTensor,
    bias: Option<&[i32]>,
    trans_b: bool,
    activation: Activation,
    out: Requantize,
) -> Result<QTensor, TensorError> {
    const OP: &str = "qgemm";
    let (&[m, k], &[b0, b1]) = (a.shape(), b.shape()) else {
        return Err(TensorError::ShapeMismatch(format!(
            "{OP}: a {:?} and b {:?} must both be of rank 2",
            a.shape(),
            b.shape()
        )));
    };
    let (bk, n, channel_axis) = if trans_b { (b1, b0, 0) } else { (b0, b1, 1) };
    if bk != k {
        return Err(TensorError::ShapeMismatch(format!(
            "{OP}: a {:?} times b {:?}{}: inner dimensions {k} and {bk} differ",
            a.shape(),
            b.shape(),
            if trans_b { " transposed" } else { "" }
        )));
    }
    check_bias(OP, bias, n)?;
    check_reduction(OP, k)?;
    let x = activations(OP, a)?;
    let (wc, w_scales) = centered_weights(OP, b, n, channel_axis)?;
    let rq = output(OP, x.scale, &w_scales, out, activation)?;
    let out_shape = vec![m, n];
    shape::num_elements(OP, &out_shape)?;
    let packed = if trans_b {
        PackedI8::pack_transposed(&wc, n, k)
    } else {
        PackedI8::pack(&wc, k, n)
    };
    let mut result = vec![0u8; m * n];
    gemm_u8s8(
        Isa::detect(),
        m,
        &x.bytes,
        k,
        x.zero,
        &packed,
        &mut result,
        n,
        &rq.requant(0..n, bias),
    );
    QTensor::new(
        out_shape,
        QuantType::U8,
        result,
        QuantParams::per_tensor(out.scale, i32::from(out.zero_point)),
    )
}

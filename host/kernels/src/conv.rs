//! Fast 2-D convolution (NCHW input, OIHW weight).
//!
//! Three kernels, picked by shape:
//! - pointwise (1×1, stride 1, no padding): the NCHW planes already are the
//!   GEMM's right operand, so no copy at all;
//! - depthwise (`groups == C == O`): a direct loop, one output row at a time,
//!   whose inner loop runs over output x and only over in-bounds columns;
//! - everything else: im2col of a tile of output positions, then GEMM.
//!
//! Bias is written into the output before the products accumulate onto it,
//! and the activation runs over each output block while it is still hot.

mod pack;

use std::ops::Range;

use super::activation::Activation;
use super::gemm::{Mat, Product};
use super::window::{AxisSpec, Padding, WindowAxis};
use super::{Tensor, TensorData, TensorError, shape};

/// Parameters of [`conv2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// `[y, x]` step between windows; each >= 1.
    pub stride: [usize; 2],
    /// Zero padding around the input.
    pub padding: Padding,
    /// `[y, x]` spacing between kernel taps; each >= 1.
    pub dilation: [usize; 2],
    /// Number of channel groups; divides both C and O.
    pub groups: usize,
    /// Fused into the output.
    pub activation: Activation,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: [1, 1],
            padding: Padding::default(),
            dilation: [1, 1],
            groups: 1,
            activation: Activation::None,
        }
    }
}

/// A validated convolution, shared with the reference kernel.
pub(crate) struct ConvPlan<'a> {
    pub n: usize,
    pub c: usize,
    pub o: usize,
    pub groups: usize,
    /// Input channels per group.
    pub cpg: usize,
    /// Output channels per group.
    pub opg: usize,
    pub h: WindowAxis,
    pub w: WindowAxis,
    pub input: &'a [f32],
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub activation: Activation,
}

impl ConvPlan<'_> {
    pub fn out_shape(&self) -> Vec<usize> {
        vec![self.n, self.o, self.h.output, self.w.output]
    }
}

pub(crate) fn plan_conv2d<'a>(
    input: &'a Tensor,
    weight: &'a Tensor,
    bias: Option<&'a Tensor>,
    p: &Conv2dParams,
) -> Result<ConvPlan<'a>, TensorError> {
    const OP: &str = "conv2d";
    let x = input.f32_for(OP)?;
    let wt = weight.f32_for(OP)?;
    let &[n, c, h, w] = input.shape() else {
        return Err(shape::rank_error(OP, "input (NCHW)", input.shape(), 4));
    };
    let &[o, wc, kh, kw] = weight.shape() else {
        return Err(shape::rank_error(OP, "weight (OIHW)", weight.shape(), 4));
    };
    if n == 0 || c == 0 || o == 0 {
        return Err(TensorError::InvalidArgument(format!(
            "{OP}: batch, channels and output channels must be >= 1, got input {:?} and weight {:?}",
            input.shape(),
            weight.shape()
        )));
    }
    let groups = p.groups;
    if groups == 0 || !c.is_multiple_of(groups) || !o.is_multiple_of(groups) {
        return Err(TensorError::InvalidArgument(format!(
            "{OP}: groups {groups} must be >= 1 and divide both input channels {c} and output channels {o}"
        )));
    }
    if wc != c / groups {
        return Err(TensorError::ShapeMismatch(format!(
            "{OP}: weight {:?} must have C/groups = {c}/{groups} = {} input channels for input {:?}",
            weight.shape(),
            c / groups,
            input.shape()
        )));
    }
    let bias = match bias {
        None => None,
        Some(b) => {
            if b.shape() != [o] {
                return Err(TensorError::ShapeMismatch(format!(
                    "{OP}: bias must have shape [{o}] (one per output channel of weight {:?}), got {:?}",
                    weight.shape(),
                    b.shape()
                )));
            }
            Some(b.f32_for(OP)?)
        }
    };
    let ha = WindowAxis::new(
        OP,
        AxisSpec {
            name: "height",
            input: h,
            kernel: kh,
            stride: p.stride[0],
            dilation: p.dilation[0],
            pad_begin: p.padding.top,
            pad_end: p.padding.bottom,
            ceil_mode: false,
        },
    )?;
    let wa = WindowAxis::new(
        OP,
        AxisSpec {
            name: "width",
            input: w,
            kernel: kw,
            stride: p.stride[1],
            dilation: p.dilation[1],
            pad_begin: p.padding.left,
            pad_end: p.padding.right,
            ceil_mode: false,
        },
    )?;
    shape::num_elements(OP, &[n, o, ha.output, wa.output])?;
    Ok(ConvPlan {
        n,
        c,
        o,
        groups,
        cpg: c / groups,
        opg: o / groups,
        h: ha,
        w: wa,
        input: x,
        weight: wt,
        bias,
        activation: p.activation,
    })
}

/// 2-D convolution: input `[N, C, H, W]`, weight `[O, C/groups, kH, kW]`,
/// optional bias `[O]`; returns `[N, O, oH, oW]` with the activation applied.
pub fn conv2d(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: &Conv2dParams,
) -> Result<Tensor, TensorError> {
    let plan = plan_conv2d(input, weight, bias, p)?;
    // The plan took the weight's elements as f32; its storage keys the packed weights.
    let TensorData::F32(storage) = weight.data() else {
        return Err(TensorError::UnsupportedType {
            op: "conv2d",
            ty: weight.element_type(),
        });
    };
    let out_shape = plan.out_shape();
    let unit_window =
        |a: &WindowAxis| a.kernel == 1 && a.stride == 1 && a.pad_begin == 0 && a.pad_end == 0;
    Ok(Tensor::f32_output(out_shape, |out| {
        if unit_window(&plan.h) && unit_window(&plan.w) {
            pointwise_simd(&plan, storage, out);
        } else if plan.groups == plan.c && plan.groups == plan.o {
            depthwise_simd(&plan, out);
        } else if plan.groups == 1 {
            dense_simd(&plan, storage, out);
        } else {
            im2col_gemm(&plan, out, IM2COL_BUDGET);
        }
    }))
}

/// Fills each output channel plane of one image with its bias.
fn seed_bias(plan: &ConvPlan<'_>, out_image: &mut [f32], plane: usize) {
    match plan.bias {
        Some(bias) => {
            for (dst, &b) in out_image.chunks_exact_mut(plane).zip(bias) {
                dst.fill(b);
            }
        }
        None => out_image.fill(0.0),
    }
}

/// Per kernel column, the output columns that read inside the input.
fn column_hits(w: &WindowAxis) -> Vec<Range<usize>> {
    (0..w.kernel).map(|kx| w.outputs_hitting(kx)).collect()
}

/// `dst[i] += weight * row[first + i * stride]` over `dst`; the caller has
/// clipped `dst` to in-bounds columns, so no per-element padding test.
#[inline]
fn axpy_strided(dst: &mut [f32], row: &[f32], first: usize, stride: usize, weight: f32) {
    if stride == 1 {
        // Equal-length slices let LLVM drop bounds checks and vectorize.
        let src = &row[first..first + dst.len()];
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += weight * s;
        }
    } else {
        for (d, &s) in dst.iter_mut().zip(row[first..].iter().step_by(stride)) {
            *d += weight * s;
        }
    }
}

/// `dst[i] += Σ_t taps[t] * row[first + i + t * dilation]` for three taps.
#[inline]
fn fused_row3(dst: &mut [f32], row: &[f32], first: usize, dilation: usize, taps: &[f32]) {
    let n = dst.len();
    let a = &row[first..first + n];
    let b = &row[first + dilation..first + dilation + n];
    let c = &row[first + 2 * dilation..first + 2 * dilation + n];
    let (t0, t1, t2) = (taps[0], taps[1], taps[2]);
    for (((d, &x0), &x1), &x2) in dst.iter_mut().zip(a).zip(b).zip(c) {
        *d += t0 * x0 + t1 * x1 + t2 * x2;
    }
}

/// The clamp a fast kernel fuses into its stores for `activation`, and the activation left to
/// apply afterwards (sigmoid and tanh are not a clamp).
fn fused_clamp(activation: Activation) -> (f32, f32, Option<Activation>) {
    match activation {
        Activation::None => (f32::NEG_INFINITY, f32::INFINITY, None),
        Activation::Relu => (0.0, f32::INFINITY, None),
        Activation::Relu6 => (0.0, 6.0, None),
        other => (f32::NEG_INFINITY, f32::INFINITY, Some(other)),
    }
}

/// The plan's window as the fast kernels' geometry; `None` only if the two disagree on the
/// output size, which a valid plan never does.
fn kernel_geometry(plan: &ConvPlan<'_>) -> Option<super::fast::DwGeometry> {
    let (h, w) = (&plan.h, &plan.w);
    super::fast::DwGeometry::new(
        plan.c,
        h.input,
        w.input,
        [h.kernel, w.kernel],
        [h.stride, w.stride],
        [h.dilation, w.dilation],
        Padding {
            top: h.pad_begin,
            left: w.pad_begin,
            bottom: h.pad_end,
            right: w.pad_end,
        },
    )
    .filter(|g| g.oh == h.output && g.ow == w.output)
}

/// The whole-plan epilogue (bias per output channel, clamp fused) and the activation left to
/// apply afterwards.
fn fused_epilogue<'a>(plan: &ConvPlan<'a>) -> (super::fast::Epilogue<'a>, Option<Activation>) {
    let (lo, hi, after) = fused_clamp(plan.activation);
    let epilogue = super::fast::Epilogue {
        bias: plan.bias,
        residual: None,
        lo,
        hi,
    };
    (epilogue, after)
}

/// A 1×1 convolution on the native model backend's GEMM ([`super::fast::gemm_packed`]): per
/// image and group, `out (opg × HW) = W (opg × cpg) · X (cpg × HW)` straight on the NCHW planes,
/// bias and ReLU/ReLU6 fused into the stores. The weights (`storage`, the plan's weight) are
/// packed once per weight tensor that outlives the call ([`pack`]).
fn pointwise_simd(plan: &ConvPlan<'_>, storage: &std::sync::Arc<[f32]>, out: &mut [f32]) {
    use super::fast::{Epilogue, Isa, gemm_packed};
    let hw = plan.h.input * plan.w.input;
    let (cpg, opg) = (plan.cpg, plan.opg);
    let (lo, hi, after) = fused_clamp(plan.activation);
    let isa = Isa::detect();
    let packed = pack::pointwise(storage, plan.groups, opg, cpg);
    for (b, out_image) in out.chunks_exact_mut(plan.o * hw).enumerate() {
        let image = &plan.input[b * plan.c * hw..][..plan.c * hw];
        for (g, lhs) in packed.iter().enumerate() {
            let epilogue = Epilogue {
                bias: plan.bias.map(|bias| &bias[g * opg..][..opg]),
                residual: None,
                lo,
                hi,
            };
            gemm_packed(
                isa,
                lhs,
                &image[g * cpg * hw..][..cpg * hw],
                hw,
                hw,
                &mut out_image[g * opg * hw..][..opg * hw],
                hw,
                &epilogue,
            );
        }
        if let Some(activation) = after {
            activation.apply_slice(out_image);
        }
    }
}

/// A dense (one group) convolution on the native model backend's kernel for convolutions that
/// read an NCHW image ([`super::fast::conv_nchw`]: interior patches read in place, no patch
/// matrix), then its channels-last rows transposed back to NCHW planes. Falls back to
/// [`im2col_gemm`] only if the kernel's geometry disagrees with the plan's, which a valid plan
/// never does. The weights (`storage`, the plan's weight) are packed once per weight tensor
/// that outlives the call ([`pack`]).
fn dense_simd(plan: &ConvPlan<'_>, storage: &std::sync::Arc<[f32]>, out: &mut [f32]) {
    use super::fast::{AlignedBuf, Isa, conv_nchw, transpose};
    let (h, w) = (&plan.h, &plan.w);
    let geometry = kernel_geometry(plan);
    let Some(geometry) = geometry else {
        return im2col_gemm(plan, out, IM2COL_BUDGET);
    };
    let k = plan.c * h.kernel * w.kernel;
    let weights = pack::dense(storage, plan.o, k);
    let (epilogue, after) = fused_epilogue(plan);
    let isa = Isa::detect();
    let positions = h.output * w.output;
    let mut rows = AlignedBuf::zeroed(positions * plan.o);
    let mut col = AlignedBuf::zeroed(0);
    let in_image = plan.c * h.input * w.input;
    for (input, output) in plan
        .input
        .chunks_exact(in_image)
        .zip(out.chunks_exact_mut(plan.o * positions))
    {
        conv_nchw(
            isa, &geometry, input, &weights, &epilogue, &mut rows, &mut col,
        );
        transpose(&rows[..positions * plan.o], positions, plan.o, output);
        if let Some(activation) = after {
            activation.apply_slice(output);
        }
    }
}

/// Depthwise on the SIMD kernel of [`super::fast`] (the one the native model backend uses),
/// image by image, with ReLU/ReLU6 fused into its stores. Falls back to [`depthwise`] only if
/// the kernel's geometry disagrees with the plan's, which a valid plan never does.
fn depthwise_simd(plan: &ConvPlan<'_>, out: &mut [f32]) {
    use super::fast::Isa;
    let (h, w) = (&plan.h, &plan.w);
    let geometry = kernel_geometry(plan);
    let Some(geometry) = geometry else {
        return depthwise(plan, out);
    };
    let (epilogue, after) = fused_epilogue(plan);
    let isa = Isa::detect();
    let mut scratch = Vec::new();
    let (in_image, out_image) = (plan.c * h.input * w.input, plan.c * h.output * w.output);
    for (input, output) in plan
        .input
        .chunks_exact(in_image)
        .zip(out.chunks_exact_mut(out_image))
    {
        super::fast::depthwise(
            isa,
            &geometry,
            input,
            plan.weight,
            &epilogue,
            output,
            &mut scratch,
        );
        if let Some(activation) = after {
            activation.apply_slice(output);
        }
    }
}

fn depthwise(plan: &ConvPlan<'_>, out: &mut [f32]) {
    let (h, w) = (&plan.h, &plan.w);
    let (in_plane_len, out_plane_len) = (h.input * w.input, h.output * w.output);
    let (kh, kw) = (h.kernel, w.kernel);
    let hits = column_hits(w);
    for (plane, (out_plane, in_plane)) in out
        .chunks_exact_mut(out_plane_len)
        .zip(plan.input.chunks_exact(in_plane_len))
        .enumerate()
    {
        let ch = plane % plan.c;
        let kernel = &plan.weight[ch * kh * kw..][..kh * kw];
        let bias = plan.bias.map_or(0.0, |b| b[ch]);
        for (oy, out_row) in out_plane.chunks_exact_mut(w.output).enumerate() {
            out_row.fill(bias);
            for ky in h.taps_inside(oy) {
                let iy = oy * h.stride + ky * h.dilation - h.pad_begin;
                let in_row = &in_plane[iy * w.input..][..w.input];
                let taps = &kernel[ky * kw..][..kw];
                // Columns where all taps of the row are in bounds.
                let interior = hits.iter().fold(0..w.output, |acc, r| {
                    acc.start.max(r.start)..acc.end.min(r.end)
                });
                let mut skip = 0..0;
                if kw == 3 && w.stride == 1 && !interior.is_empty() {
                    // The MobileNet case: one pass with all three taps
                    // instead of three passes over the output row.
                    let first = interior.start - w.pad_begin;
                    fused_row3(
                        &mut out_row[interior.clone()],
                        in_row,
                        first,
                        w.dilation,
                        taps,
                    );
                    skip = interior;
                }
                for (kx, r) in hits.iter().enumerate() {
                    // The part of `r` outside `skip`, split into left and right.
                    let left = r.start..r.end.min(skip.start).max(r.start);
                    let right = r.start.max(skip.end).min(r.end)..r.end;
                    let parts = if skip.is_empty() {
                        [r.clone(), 0..0]
                    } else {
                        [left, right]
                    };
                    for part in parts {
                        if part.is_empty() {
                            continue;
                        }
                        let first = part.start * w.stride + kx * w.dilation - w.pad_begin;
                        axpy_strided(&mut out_row[part], in_row, first, w.stride, taps[kx]);
                    }
                }
            }
            plan.activation.apply_slice(out_row);
        }
    }
}

/// Upper bound on the im2col scratch, in floats (2 MiB): large enough that
/// the GEMM sees long rows, small enough to stay in cache-friendly territory
/// and to keep a huge-kernel request from allocating without bound.
const IM2COL_BUDGET: usize = 1 << 19;

/// `budget` bounds the scratch in floats (a parameter so tests can force
/// many small tiles).
fn im2col_gemm(plan: &ConvPlan<'_>, out: &mut [f32], budget: usize) {
    let (h, w) = (&plan.h, &plan.w);
    let (cpg, opg) = (plan.cpg, plan.opg);
    let k = cpg * h.kernel * w.kernel;
    let positions = h.output * w.output;
    let in_plane_len = h.input * w.input;
    let tile = (budget / k).clamp(1, positions);
    let mut col = vec![0f32; k * tile];
    let hits = column_hits(w);
    for (b, out_image) in out.chunks_exact_mut(plan.o * positions).enumerate() {
        seed_bias(plan, out_image, positions);
        for g in 0..plan.groups {
            let group_input =
                &plan.input[(b * plan.c + g * cpg) * in_plane_len..][..cpg * in_plane_len];
            let group_weight = &plan.weight[g * opg * k..][..opg * k];
            let mut p0 = 0;
            while p0 < positions {
                let cols = tile.min(positions - p0);
                let col = &mut col[..k * cols];
                im2col(plan, &hits, group_input, p0, cols, col);
                Product {
                    m: opg,
                    n: cols,
                    k,
                    lhs: Mat {
                        data: group_weight,
                        rs: k,
                        cs: 1,
                    },
                    rhs: Mat {
                        data: col,
                        rs: cols,
                        cs: 1,
                    },
                    alpha: 1.0,
                }
                .run(&mut out_image[g * opg * positions + p0..], positions, true);
                p0 += cols;
            }
        }
        plan.activation.apply_slice(out_image);
    }
}

/// Writes the `[cpg·kH·kW, cols]` patch matrix for output positions
/// `p0..p0 + cols` (row-major over oH×oW) of one group.
fn im2col(
    plan: &ConvPlan<'_>,
    hits: &[Range<usize>],
    group_input: &[f32],
    p0: usize,
    cols: usize,
    col: &mut [f32],
) {
    let (h, w) = (&plan.h, &plan.w);
    let in_plane_len = h.input * w.input;
    let mut rows = col.chunks_exact_mut(cols);
    for in_plane in group_input.chunks_exact(in_plane_len) {
        for ky in 0..h.kernel {
            for (kx, hit) in hits.iter().enumerate() {
                let Some(row) = rows.next() else { return };
                let mut p = p0;
                while p < p0 + cols {
                    let (oy, ox0) = (p / w.output, p % w.output);
                    let ox1 = w.output.min(ox0 + (p0 + cols - p));
                    let seg = &mut row[p - p0..p - p0 + (ox1 - ox0)];
                    match h.coord(oy, ky) {
                        None => seg.fill(0.0),
                        Some(iy) => {
                            let in_row = &in_plane[iy * w.input..][..w.input];
                            // In-bounds part of this segment; zeros around it.
                            let lo = hit.start.clamp(ox0, ox1);
                            let hi = hit.end.clamp(lo, ox1);
                            seg[..lo - ox0].fill(0.0);
                            seg[hi - ox0..].fill(0.0);
                            let dst = &mut seg[lo - ox0..hi - ox0];
                            if !dst.is_empty() {
                                let first = lo * w.stride + kx * w.dilation - w.pad_begin;
                                if w.stride == 1 {
                                    dst.copy_from_slice(&in_row[first..first + dst.len()]);
                                } else {
                                    for (d, &s) in
                                        dst.iter_mut().zip(in_row[first..].iter().step_by(w.stride))
                                    {
                                        *d = s;
                                    }
                                }
                            }
                        }
                    }
                    p += ox1 - ox0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{reference, testutil};
    use proptest::prelude::*;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec()).unwrap()
    }

    fn grid(channels: usize) -> Tensor {
        // Each channel: 1..=9 on a 3×3 grid, channel c offset by 10c.
        let v: Vec<f32> = (0..channels)
            .flat_map(|c| (1..=9).map(move |i| (i + 10 * c) as f32))
            .collect();
        t(&[1, channels, 3, 3], &v)
    }

    /// Runs the fast and the reference kernel and checks both against `want`.
    fn check(
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        p: &Conv2dParams,
        shape: &[usize],
        want: &[f32],
    ) {
        for (name, y) in [
            ("fast", conv2d(x, w, b, p).unwrap()),
            ("reference", reference::conv2d(x, w, b, p).unwrap()),
        ] {
            assert_eq!(y.shape(), shape, "{name}");
            assert_eq!(y.as_f32().unwrap(), want, "{name}");
        }
    }

    #[test]
    fn dense_by_hand() {
        let ones = t(&[1, 1, 2, 2], &[1.0; 4]);
        let p = Conv2dParams::default();
        check(
            &grid(1),
            &ones,
            None,
            &p,
            &[1, 1, 2, 2],
            &[12.0, 16.0, 24.0, 28.0],
        );
        // Dilation 2 makes the 2×2 kernel touch the corners 1, 3, 7, 9.
        let w = t(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let p = Conv2dParams {
            dilation: [2, 2],
            ..Conv2dParams::default()
        };
        check(&grid(1), &w, None, &p, &[1, 1, 1, 1], &[64.0]);
        // Asymmetric padding (one column on the left only) and stride 2.
        let p = Conv2dParams {
            padding: Padding {
                top: 0,
                left: 1,
                bottom: 0,
                right: 0,
            },
            stride: [2, 2],
            ..Conv2dParams::default()
        };
        // Windows at x = -1 and x = 1, rows 0-1: [0,1,0,4]·w and [2,3,5,6]·w.
        check(
            &grid(1),
            &w,
            None,
            &p,
            &[1, 1, 1, 2],
            &[18.0, 2.0 + 6.0 + 15.0 + 24.0],
        );
    }

    #[test]
    fn pointwise_bias_activation_by_hand() {
        // out = x0 + 10·x1 - 100, then relu6: channel 1 is 11..19.
        let w = t(&[1, 2, 1, 1], &[1.0, 10.0]);
        let b = t(&[1], &[-100.0]);
        let p = Conv2dParams {
            activation: Activation::Relu6,
            ..Conv2dParams::default()
        };
        let want: Vec<f32> = (1..=9)
            .map(|i| ((i + 10 * (i + 10)) as f32 - 100.0).clamp(0.0, 6.0))
            .collect();
        check(&grid(2), &w, Some(&b), &p, &[1, 1, 3, 3], &want);
        let p = Conv2dParams::default();
        let want: Vec<f32> = (1..=9)
            .map(|i| (i + 10 * (i + 10)) as f32 - 100.0)
            .collect();
        check(&grid(2), &w, Some(&b), &p, &[1, 1, 3, 3], &want);
    }

    #[test]
    fn depthwise_by_hand() {
        // Channel 0: 3×3 box sum with zero padding; channel 1: 2·centre + 1.
        let mut k = vec![1.0; 9];
        k.extend([0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
        let w = t(&[2, 1, 3, 3], &k);
        let b = t(&[2], &[0.0, 1.0]);
        let p = Conv2dParams {
            padding: Padding::uniform(1),
            groups: 2,
            ..Conv2dParams::default()
        };
        let mut want = vec![12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0];
        want.extend((11..=19).map(|i| 2.0 * i as f32 + 1.0));
        check(&grid(2), &w, Some(&b), &p, &[1, 2, 3, 3], &want);
    }

    #[test]
    fn grouped_by_hand() {
        // Two groups of one channel, 1×1 kernels, stride 2: scaled corners.
        let w = t(&[2, 1, 1, 1], &[2.0, -1.0]);
        let p = Conv2dParams {
            groups: 2,
            stride: [2, 2],
            ..Conv2dParams::default()
        };
        check(
            &grid(2),
            &w,
            None,
            &p,
            &[1, 2, 2, 2],
            &[2.0, 6.0, 14.0, 18.0, -11.0, -13.0, -17.0, -19.0],
        );
        // Depthwise with channel multiplier 2 (groups = C, O = 2C).
        let w = t(&[4, 1, 1, 1], &[1.0, 2.0, 3.0, 4.0]);
        let p = Conv2dParams {
            groups: 2,
            ..Conv2dParams::default()
        };
        let y = conv2d(&grid(2), &w, None, &p).unwrap();
        let r = reference::conv2d(&grid(2), &w, None, &p).unwrap();
        assert_eq!(y.as_f32().unwrap(), r.as_f32().unwrap());
        assert_eq!(y.as_f32().unwrap()[9..12], [2.0, 4.0, 6.0]);
        assert_eq!(y.as_f32().unwrap()[27..30], [44.0, 48.0, 52.0]);
    }

    fn err(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: &Conv2dParams) -> TensorError {
        let e = conv2d(x, w, b, p).unwrap_err();
        assert_eq!(reference::conv2d(x, w, b, p).unwrap_err(), e);
        e
    }

    #[test]
    fn errors() {
        let x = grid(2);
        let w = t(&[1, 2, 1, 1], &[1.0, 1.0]);
        let p = Conv2dParams::default();
        let bad_rank = t(&[2, 3, 3], &[0.0; 18]);
        assert!(
            matches!(err(&bad_rank, &w, None, &p), TensorError::ShapeMismatch(m) if m.contains("rank 4"))
        );
        assert!(
            matches!(err(&x, &bad_rank, None, &p), TensorError::ShapeMismatch(m) if m.contains("weight"))
        );
        let g3 = Conv2dParams { groups: 3, ..p };
        assert!(
            matches!(err(&x, &w, None, &g3), TensorError::InvalidArgument(m) if m.contains("groups 3"))
        );
        let g0 = Conv2dParams { groups: 0, ..p };
        assert!(matches!(
            err(&x, &w, None, &g0),
            TensorError::InvalidArgument(_)
        ));
        let g2 = Conv2dParams { groups: 2, ..p };
        assert!(
            matches!(err(&x, &w, None, &g2), TensorError::InvalidArgument(m) if m.contains("output channels 1"))
        );
        let w22 = t(&[2, 2, 1, 1], &[0.0; 4]);
        assert!(
            matches!(err(&x, &w22, None, &g2), TensorError::ShapeMismatch(m) if m.contains("C/groups"))
        );
        let big = t(&[1, 2, 4, 1], &[0.0; 8]);
        assert!(
            matches!(err(&x, &big, None, &p), TensorError::InvalidArgument(m) if m.contains("< 1"))
        );
        let dil = Conv2dParams {
            dilation: [1, 3],
            ..p
        };
        let w2 = t(&[1, 2, 1, 2], &[0.0; 4]);
        assert!(
            matches!(err(&x, &w2, None, &dil), TensorError::InvalidArgument(m) if m.contains("width"))
        );
        let s0 = Conv2dParams {
            stride: [0, 1],
            ..p
        };
        assert!(
            matches!(err(&x, &w, None, &s0), TensorError::InvalidArgument(m) if m.contains("stride"))
        );
        let bias = t(&[2], &[0.0; 2]);
        assert!(
            matches!(err(&x, &w, Some(&bias), &p), TensorError::ShapeMismatch(m) if m.contains("bias"))
        );
        let overflow = Conv2dParams {
            padding: Padding {
                top: usize::MAX,
                ..Padding::default()
            },
            ..p
        };
        assert!(matches!(
            err(&x, &w, None, &overflow),
            TensorError::TooLarge(_)
        ));
        let huge = Conv2dParams {
            padding: Padding::uniform(1 << 15),
            ..p
        };
        assert!(
            matches!(err(&x, &w, None, &huge), TensorError::TooLarge(m) if m.contains("limit"))
        );
        let empty = t(&[0, 2, 3, 3], &[]);
        assert!(matches!(
            err(&empty, &w, None, &p),
            TensorError::InvalidArgument(_)
        ));
        let u = Tensor::from_u8(vec![1, 2, 3, 3], vec![0; 18]).unwrap();
        assert!(matches!(
            err(&u, &w, None, &p),
            TensorError::UnsupportedType { op: "conv2d", .. }
        ));
    }

    fn divisors(n: usize) -> Vec<usize> {
        (1..=n).filter(|&d| n.is_multiple_of(d)).collect()
    }

    /// A valid convolution: kernel sizes are clipped so the output exists.
    fn case(
        shape: [usize; 4],
        groups: usize,
        o: usize,
        kernel: [usize; 2],
        geometry: ([usize; 2], [usize; 2], [usize; 4]),
        extras: (bool, u8, u64),
    ) -> (Tensor, Tensor, Option<Tensor>, Conv2dParams) {
        let [n, c, h, w] = shape;
        let (stride, dilation, pads) = geometry;
        let (with_bias, act, seed) = extras;
        let fit = |k: usize, input: usize, pa: usize, pb: usize, d: usize| {
            k.min((input + pa + pb - 1) / d + 1)
        };
        let kh = fit(kernel[0], h, pads[0], pads[2], dilation[0]);
        let kw = fit(kernel[1], w, pads[1], pads[3], dilation[1]);
        let p = Conv2dParams {
            stride,
            dilation,
            groups,
            padding: Padding {
                top: pads[0],
                left: pads[1],
                bottom: pads[2],
                right: pads[3],
            },
            activation: testutil::activation(act),
        };
        let x = testutil::tensor(seed, &[n, c, h, w], 1.0);
        let wt = testutil::tensor(seed ^ 1, &[o, c / groups, kh, kw], 1.0);
        let b = with_bias.then(|| testutil::tensor(seed ^ 2, &[o], 1.0));
        (x, wt, b, p)
    }

    prop_compose! {
        fn general()(
            n in 1usize..3, c in 1usize..17, h in 1usize..21, w in 1usize..21,
            group_pick in any::<prop::sample::Index>(), opg in 1usize..5,
            kernel in [1usize..6, 1usize..6], stride in [1usize..4, 1usize..4],
            dilation in [1usize..4, 1usize..4], pads in [0usize..4, 0usize..4, 0usize..4, 0usize..4],
            extras in (any::<bool>(), 0u8..5, any::<u64>()),
        ) -> (Tensor, Tensor, Option<Tensor>, Conv2dParams) {
            let groups = *group_pick.get(&divisors(c));
            let o = (groups * opg).min(16.max(groups));
            let o = o - o % groups;
            case([n, c, h, w], groups, o, kernel, (stride, dilation, pads), extras)
        }
    }

    prop_compose! {
        fn depthwise_case()(
            n in 1usize..3, c in 1usize..17, h in 1usize..21, w in 1usize..21,
            // Weighted toward 3×3 stride 1, which has its own fused path.
            kernel in [prop_oneof![Just(3usize), 1usize..6], prop_oneof![Just(3usize), 1usize..6]],
            stride in [prop_oneof![Just(1usize), 1usize..4], prop_oneof![Just(1usize), 1usize..4]],
            dilation in [1usize..4, 1usize..4], pads in [0usize..4, 0usize..4, 0usize..4, 0usize..4],
            extras in (any::<bool>(), 0u8..5, any::<u64>()),
        ) -> (Tensor, Tensor, Option<Tensor>, Conv2dParams) {
            case([n, c, h, w], c, c, kernel, (stride, dilation, pads), extras)
        }
    }

    prop_compose! {
        fn pointwise_case()(
            n in 1usize..3, c in 1usize..17, h in 1usize..21, w in 1usize..21,
            group_pick in any::<prop::sample::Index>(), opg in 1usize..9,
            extras in (any::<bool>(), 0u8..5, any::<u64>()),
        ) -> (Tensor, Tensor, Option<Tensor>, Conv2dParams) {
            let groups = *group_pick.get(&divisors(c));
            case([n, c, h, w], groups, groups * opg, [1, 1], ([1, 1], [1, 1], [0; 4]), extras)
        }
    }

    fn compare(
        (x, w, b, p): (Tensor, Tensor, Option<Tensor>, Conv2dParams),
    ) -> Result<(), TestCaseError> {
        let fast = conv2d(&x, &w, b.as_ref(), &p).unwrap();
        let slow = reference::conv2d(&x, &w, b.as_ref(), &p).unwrap();
        testutil::assert_close(&fast, &slow)
    }

    /// Like [`compare`], with the weight's storage shared as a plugin's weights are (its
    /// weights table holds it too): the first call packs and caches the weights, the second
    /// reads the cache, and both must match the reference.
    fn compare_shared(
        (x, w, b, p): (Tensor, Tensor, Option<Tensor>, Conv2dParams),
    ) -> Result<(), TestCaseError> {
        let table = w.clone();
        let slow = reference::conv2d(&x, &w, b.as_ref(), &p).unwrap();
        for _ in 0..2 {
            let fast = conv2d(&x, &table, b.as_ref(), &p).unwrap();
            testutil::assert_close(&fast, &slow)?;
        }
        Ok(())
    }

    #[test]
    fn shared_weights_are_packed_once_per_geometry() {
        let w = testutil::tensor(11, &[8, 4, 1, 1], 1.0);
        let TensorData::F32(storage) = w.data() else {
            panic!("f32 weights")
        };
        let storage = storage.clone();
        let x = testutil::tensor(12, &[1, 4, 5, 5], 1.0);
        // Held by `w` and `storage`: shared, so the packed form is kept.
        let first = conv2d(&x, &w, None, &Conv2dParams::default()).unwrap();
        let kept = pack::pointwise(&storage, 1, 8, 4);
        assert!(std::sync::Arc::ptr_eq(
            &kept,
            &pack::pointwise(&storage, 1, 8, 4)
        ));
        // Two groups is another packing of the same storage.
        let grouped = pack::pointwise(&storage, 2, 4, 2);
        assert!(!std::sync::Arc::ptr_eq(
            &grouped,
            &pack::pointwise(&storage, 1, 8, 4)
        ));
        assert!(std::sync::Arc::ptr_eq(
            &grouped,
            &pack::pointwise(&storage, 2, 4, 2)
        ));
        let again = conv2d(&x, &w, None, &Conv2dParams::default()).unwrap();
        assert_eq!(first.as_f32().unwrap(), again.as_f32().unwrap());
        let slow = reference::conv2d(&x, &w, None, &Conv2dParams::default()).unwrap();
        testutil::assert_close(&again, &slow).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn general_matches_reference(args in general()) {
            compare(args)?;
        }

        /// The cached packing path (pointwise and dense) against the reference.
        #[test]
        fn shared_weights_match_reference(args in prop_oneof![general(), pointwise_case()]) {
            compare_shared(args)?;
        }

        /// The im2col path on every kind of shape, with scratch budgets small
        /// enough to split the output positions into many tiles.
        #[test]
        fn tiled_im2col_matches_reference(
            args in prop_oneof![general(), depthwise_case(), pointwise_case()],
            budget in 1usize..200,
        ) {
            let (x, w, b, p) = args;
            let plan = plan_conv2d(&x, &w, b.as_ref(), &p).unwrap();
            let fast = Tensor::f32_output(plan.out_shape(), |out| im2col_gemm(&plan, out, budget));
            let slow = reference::conv2d(&x, &w, b.as_ref(), &p).unwrap();
            testutil::assert_close(&fast, &slow)?;
        }

        #[test]
        fn depthwise_matches_reference(args in depthwise_case()) {
            compare(args)?;
        }

        #[test]
        fn pointwise_matches_reference(args in pointwise_case()) {
            compare(args)?;
        }
    }

    /// Rough timing on the digits plugin's depthwise shapes, each kernel; prints, asserts
    /// nothing. `cargo test --release -p edgeplug-kernels -- --ignored --nocapture digits_dw`
    #[test]
    #[ignore]
    fn digits_dw_timing() {
        use std::time::Instant;
        for (c, hw, stride) in [(16, 16, 1), (32, 16, 2), (64, 8, 1), (64, 8, 2)] {
            let x = testutil::tensor(1, &[1, c, hw, hw], 1.0);
            let w = testutil::tensor(2, &[c, 1, 3, 3], 1.0);
            let b = testutil::tensor(3, &[c], 1.0);
            let p = Conv2dParams {
                stride: [stride, stride],
                padding: Padding::uniform(1),
                groups: c,
                activation: Activation::Relu6,
                ..Conv2dParams::default()
            };
            let plan = plan_conv2d(&x, &w, Some(&b), &p).unwrap();
            type Kernel = fn(&ConvPlan<'_>, &mut [f32]);
            let kernels: [(&str, Kernel); 2] = [("simd", depthwise_simd), ("direct", depthwise)];
            for (name, kernel) in kernels {
                let reps = 20000;
                let mut out = vec![0f32; plan.out_shape().iter().product()];
                let start = Instant::now();
                for _ in 0..reps {
                    kernel(&plan, &mut out);
                    std::hint::black_box(&mut out);
                }
                let per = start.elapsed() / reps;
                println!("depthwise c{c} {hw}x{hw} s{stride} {name:<8} {per:>10.2?}");
            }
        }
    }

    /// Rough timing on MobileNetV2 shapes; prints, asserts nothing.
    /// `cargo test --release -- --ignored --nocapture timing`
    #[test]
    #[ignore]
    fn timing() {
        use std::time::Instant;
        fn time(label: &str, reps: u32, f: impl Fn() -> Tensor) {
            f();
            let start = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(f());
            }
            let per = start.elapsed() / reps;
            println!("{label:<48} {per:>12.2?}");
        }
        let x = testutil::tensor(1, &[1, 32, 112, 112], 1.0);
        let dw = testutil::tensor(2, &[32, 1, 3, 3], 1.0);
        let b32 = testutil::tensor(3, &[32], 1.0);
        let pdw = Conv2dParams {
            padding: Padding::uniform(1),
            groups: 32,
            activation: Activation::Relu6,
            ..Conv2dParams::default()
        };
        time("depthwise 3x3 [1,32,112,112] fast", 20, || {
            conv2d(&x, &dw, Some(&b32), &pdw).unwrap()
        });
        time("depthwise 3x3 [1,32,112,112] reference", 2, || {
            reference::conv2d(&x, &dw, Some(&b32), &pdw).unwrap()
        });
        let pdw2 = Conv2dParams {
            stride: [2, 2],
            ..pdw
        };
        time("depthwise 3x3 s2 [1,32,112,112] fast", 20, || {
            conv2d(&x, &dw, Some(&b32), &pdw2).unwrap()
        });
        let pw = testutil::tensor(4, &[16, 32, 1, 1], 1.0);
        let b16 = testutil::tensor(5, &[16], 1.0);
        let ppw = Conv2dParams::default();
        time("pointwise 32->16 [1,32,112,112] fast", 20, || {
            conv2d(&x, &pw, Some(&b16), &ppw).unwrap()
        });
        time("pointwise 32->16 [1,32,112,112] reference", 2, || {
            reference::conv2d(&x, &pw, Some(&b16), &ppw).unwrap()
        });
        let img = testutil::tensor(6, &[1, 3, 224, 224], 1.0);
        let w3 = testutil::tensor(7, &[32, 3, 3, 3], 1.0);
        let p3 = Conv2dParams {
            stride: [2, 2],
            padding: Padding {
                top: 0,
                left: 0,
                bottom: 1,
                right: 1,
            },
            activation: Activation::Relu6,
            ..Conv2dParams::default()
        };
        time("dense 3x3 s2 [1,3,224,224]->32 fast", 20, || {
            conv2d(&img, &w3, Some(&b32), &p3).unwrap()
        });
        time("dense 3x3 s2 [1,3,224,224]->32 reference", 2, || {
            reference::conv2d(&img, &w3, Some(&b32), &p3).unwrap()
        });
        let x14 = testutil::tensor(8, &[1, 96, 14, 14], 1.0);
        let w14 = testutil::tensor(9, &[96, 96, 3, 3], 1.0);
        let p14 = Conv2dParams {
            padding: Padding::uniform(1),
            ..Conv2dParams::default()
        };
        time("dense 3x3 [1,96,14,14]->96 fast", 20, || {
            conv2d(&x14, &w14, None, &p14).unwrap()
        });
        time("dense 3x3 [1,96,14,14]->96 reference", 2, || {
            reference::conv2d(&x14, &w14, None, &p14).unwrap()
        });
    }
}

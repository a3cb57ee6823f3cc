//! The compiled program's vocabulary: slots, the steps that read and write
//! them, and what each step reports about itself (shape, FLOPs, reads).

use std::sync::Arc;

use super::block::DwBlock;
use super::recurrent::Recurrent;
use edgeplug_kernels::Pool2dParams;
#[cfg(doc)]
use edgeplug_kernels::fast;
use edgeplug_kernels::fast::{AlignedBuf, ColGeometry, DwGeometry, PackedLhs, PackedRhs};

/// Index of a logical buffer (one value, or several aliases of it).
pub(super) type Slot = usize;

/// What a kernel does to its outputs besides bias: add a residual slot,
/// then clamp.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ep {
    pub residual: Option<Slot>,
    pub lo: f32,
    pub hi: f32,
}

impl Default for Ep {
    fn default() -> Self {
        Ep {
            residual: None,
            lo: f32::NEG_INFINITY,
            hi: f32::INFINITY,
        }
    }
}

/// A step input: a slot, or a folded constant.
#[derive(Clone, Debug)]
pub(super) enum Operand {
    Slot(Slot),
    Const(Arc<[f32]>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum UnOp {
    Clamp(f32, f32),
    Sigmoid,
    Tanh,
    Exp,
    Ln,
    Abs,
    Neg,
    Sqrt,
    Rsqrt,
    Recip,
    Square,
    HardSwish,
    LeakyRelu(f32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RedOp {
    Sum,
    Max,
    Min,
}

/// One kernel call. Shapes are fixed at compile time.
#[derive(Debug)]
pub(super) enum Step {
    /// 1×1 stride-1 unpadded convolution on channels-last slots: one GEMM,
    /// `[pixels, k] · [k, n]`, the batch folded into the pixels.
    Pointwise {
        x: Slot,
        out: Slot,
        pixels: usize,
        /// `[k, n]`.
        w: PackedRhs,
        bias: Vec<f32>,
        ep: Ep,
    },
    /// Depthwise convolution on channels-last slots.
    Depthwise {
        x: Slot,
        out: Slot,
        batch: usize,
        geom: DwGeometry,
        /// Tap-major `[kh·kw, c]`.
        w: AlignedBuf,
        bias: Vec<f32>,
        ep: Ep,
    },
    /// Any other ungrouped convolution on channels-last slots: patch rows of
    /// [`CONV_ROWS`](super::exec::CONV_ROWS) pixels at a time, each batch then a GEMM.
    ConvRows {
        x: Slot,
        out: Slot,
        batch: usize,
        /// `geom.c` is the input channels.
        geom: ColGeometry,
        /// `[(ky, kx, c), n]`.
        w: PackedRhs,
        bias: Vec<f32>,
        ep: Ep,
    },
    /// An inverted-residual block (see [`DwBlock`]), made by merging a
    /// depthwise step with the pointwise steps around it that only it feeds
    /// or reads. `ep` finishes the last stage.
    DwBlock {
        x: Slot,
        out: Slot,
        block: Box<DwBlock>,
        ep: Ep,
    },
    /// An ungrouped convolution reading an NCHW value (typically the model
    /// input) and writing channels-last: patches read in place, no layout
    /// step and no patch matrix (see [`fast::conv_nchw`]).
    ConvNchw {
        x: Slot,
        out: Slot,
        batch: usize,
        /// `geom.c` is the input channels.
        geom: ColGeometry,
        /// `[(c, ky, kx), n]`.
        w: PackedRhs,
        bias: Vec<f32>,
        ep: Ep,
    },
    /// `[n, c, hw]` ↔ `[n, hw, c]`: into or out of the channels-last layout
    /// the convolutions work in.
    Layout {
        x: Slot,
        out: Slot,
        n: usize,
        c: usize,
        hw: usize,
        to_channels_last: bool,
    },
    /// A grouped (not depthwise) convolution on NCHW slots: im2col per
    /// group, then a packed GEMM.
    Im2col {
        x: Slot,
        out: Slot,
        batch: usize,
        /// Per group; `geom.c` is the input channels of one group.
        geom: ColGeometry,
        w: Vec<PackedLhs>,
        bias: Vec<f32>,
        ep: Ep,
    },
    /// `out[r, :] = W · x[r, :] + bias` for `rows` rows (fully connected).
    Dense {
        x: Slot,
        out: Slot,
        rows: usize,
        k: usize,
        n: usize,
        w: Vec<f32>,
        /// The same weights as bf16 pairs, when the model runs in bf16.
        w_bf16: Option<edgeplug_kernels::fast::bf16::Bf16Rows>,
        bias: Vec<f32>,
        ep: Ep,
    },
    Binary {
        op: BinOp,
        a: Operand,
        b: Operand,
        out: Slot,
        shape: Vec<usize>,
        a_strides: Vec<usize>,
        b_strides: Vec<usize>,
    },
    Unary {
        op: UnOp,
        x: Slot,
        out: Slot,
        len: usize,
    },
    Reduce {
        op: RedOp,
        x: Slot,
        out: Slot,
        outer: usize,
        len: usize,
        inner: usize,
        scale: f32,
    },
    Softmax {
        x: Slot,
        out: Slot,
        outer: usize,
        len: usize,
        inner: usize,
        log: bool,
    },
    Transpose {
        x: Slot,
        out: Slot,
        in_shape: Vec<usize>,
        perm: Vec<usize>,
    },
    /// Along an axis with `outer` blocks before it; each part contributes
    /// `chunk` contiguous values per block.
    Concat {
        parts: Vec<(Operand, usize)>,
        out: Slot,
        outer: usize,
    },
    /// `out[o, i, j] = x[o, start + i, j]` over `[outer, axis, inner]`.
    Slice {
        x: Slot,
        out: Slot,
        outer: usize,
        axis: usize,
        inner: usize,
        start: usize,
        len: usize,
    },
    Pool {
        x: Slot,
        out: Slot,
        in_shape: Vec<usize>,
        params: Pool2dParams,
        max: bool,
    },
    Pad {
        x: Slot,
        out: Slot,
        in_shape: Vec<usize>,
        pads: Vec<(usize, usize)>,
        value: f32,
    },
    /// An ONNX LSTM or GRU over the whole sequence; `out` holds its outputs
    /// and its scratch (see [`Recurrent`]).
    Recurrent {
        x: Slot,
        out: Slot,
        rec: Box<Recurrent>,
    },
}

impl Step {
    /// A short description (kind and shape) and the floating-point
    /// operations of one run (2 per multiply-add; 0 for data movement).
    pub fn describe(&self) -> (String, u64) {
        match self {
            Step::Pointwise { pixels, w, .. } => (
                format!("conv1x1 {}->{} @{pixels}", w.k(), w.n()),
                2 * (pixels * w.k() * w.n()) as u64,
            ),
            Step::ConvRows {
                batch, geom: g, w, ..
            }
            | Step::ConvNchw {
                batch, geom: g, w, ..
            } => {
                let n = w.n();
                (
                    format!(
                        "conv{}x{} s{} {}->{} {}x{}->{}x{}",
                        g.kh, g.kw, g.stride[0], g.c, n, g.h, g.w, g.oh, g.ow
                    ),
                    2 * (batch * n * g.oh * g.ow * g.c * g.kh * g.kw) as u64,
                )
            }
            Step::DwBlock { block, .. } => block.describe(),
            Step::Layout {
                c,
                hw,
                to_channels_last,
                ..
            } => (
                format!(
                    "layout {} c{c} @{hw}",
                    if *to_channels_last {
                        "nchw->nhwc"
                    } else {
                        "nhwc->nchw"
                    }
                ),
                0,
            ),
            Step::Depthwise { batch, geom: g, .. } => (
                format!(
                    "dw{}x{} s{} c{} {}x{}->{}x{}",
                    g.kh, g.kw, g.stride[0], g.c, g.h, g.w, g.oh, g.ow
                ),
                2 * (batch * g.c * g.oh * g.ow * g.kh * g.kw) as u64,
            ),
            Step::Im2col {
                batch, geom: g, w, ..
            } => {
                let o = w.len() * w[0].m();
                (
                    format!(
                        "conv{}x{} s{} g{} {}->{} {}x{}->{}x{}",
                        g.kh,
                        g.kw,
                        g.stride[0],
                        w.len(),
                        g.c * w.len(),
                        o,
                        g.h,
                        g.w,
                        g.oh,
                        g.ow
                    ),
                    2 * (batch * o * g.oh * g.ow * g.c * g.kh * g.kw) as u64,
                )
            }
            Step::Dense { rows, k, n, .. } => {
                (format!("dense {k}->{n} x{rows}"), 2 * (rows * k * n) as u64)
            }
            Step::Binary { op, shape, .. } => (format!("{op:?} {shape:?}"), 0),
            Step::Unary { op, len, .. } => (format!("{op:?} {len}"), 0),
            Step::Reduce {
                op,
                outer,
                len,
                inner,
                ..
            } => (format!("reduce {op:?} {outer}x{len}x{inner}"), 0),
            Step::Softmax {
                outer, len, inner, ..
            } => (format!("softmax {outer}x{len}x{inner}"), 0),
            Step::Transpose { in_shape, perm, .. } => {
                (format!("transpose {in_shape:?} {perm:?}"), 0)
            }
            Step::Concat { parts, .. } => (format!("concat {}", parts.len()), 0),
            Step::Slice { len, .. } => (format!("slice {len}"), 0),
            Step::Pool { in_shape, max, .. } => (
                format!("{} {in_shape:?}", if *max { "maxpool" } else { "avgpool" }),
                0,
            ),
            Step::Pad { in_shape, .. } => (format!("pad {in_shape:?}"), 0),
            Step::Recurrent { rec, .. } => rec.describe(),
        }
    }

    pub fn out(&self) -> Slot {
        match self {
            Step::Pointwise { out, .. }
            | Step::Depthwise { out, .. }
            | Step::ConvRows { out, .. }
            | Step::ConvNchw { out, .. }
            | Step::DwBlock { out, .. }
            | Step::Layout { out, .. }
            | Step::Im2col { out, .. }
            | Step::Dense { out, .. }
            | Step::Binary { out, .. }
            | Step::Unary { out, .. }
            | Step::Reduce { out, .. }
            | Step::Softmax { out, .. }
            | Step::Transpose { out, .. }
            | Step::Concat { out, .. }
            | Step::Slice { out, .. }
            | Step::Pool { out, .. }
            | Step::Pad { out, .. }
            | Step::Recurrent { out, .. } => *out,
        }
    }

    pub fn reads(&self) -> Vec<Slot> {
        let mut r = Vec::new();
        let ep_res = |ep: &Ep, r: &mut Vec<Slot>| r.extend(ep.residual);
        match self {
            Step::Pointwise { x, ep, .. }
            | Step::Depthwise { x, ep, .. }
            | Step::ConvRows { x, ep, .. }
            | Step::ConvNchw { x, ep, .. }
            | Step::DwBlock { x, ep, .. }
            | Step::Im2col { x, ep, .. }
            | Step::Dense { x, ep, .. } => {
                r.push(*x);
                ep_res(ep, &mut r);
            }
            Step::Binary { a, b, .. } => {
                for o in [a, b] {
                    if let Operand::Slot(s) = o {
                        r.push(*s);
                    }
                }
            }
            Step::Concat { parts, .. } => {
                for (o, _) in parts {
                    if let Operand::Slot(s) = o {
                        r.push(*s);
                    }
                }
            }
            Step::Unary { x, .. }
            | Step::Layout { x, .. }
            | Step::Reduce { x, .. }
            | Step::Softmax { x, .. }
            | Step::Transpose { x, .. }
            | Step::Slice { x, .. }
            | Step::Pool { x, .. }
            | Step::Pad { x, .. }
            | Step::Recurrent { x, .. } => r.push(*x),
        }
        r
    }

    /// The epilogue, for steps that have one (fusion targets).
    pub fn ep_mut(&mut self) -> Option<&mut Ep> {
        match self {
            Step::Pointwise { ep, .. }
            | Step::Depthwise { ep, .. }
            | Step::ConvRows { ep, .. }
            | Step::ConvNchw { ep, .. }
            | Step::DwBlock { ep, .. }
            | Step::Im2col { ep, .. }
            | Step::Dense { ep, .. } => Some(ep),
            _ => None,
        }
    }
}

//! The compiled int8 program: steps over byte and float slots, the plan that
//! maps byte slots onto reusable buffers, and the interpreter.

use edgeplug_kernels::Tensor;
use edgeplug_kernels::fast::int8::{self, AddQuant, PackedI8, Requant};
use edgeplug_kernels::fast::{DwGeometry, Isa};

/// A `u8` value (channels-last when it has rank 4).
pub(super) type ByteSlot = usize;
/// An `f32` value (the model's inputs and outputs, in their ONNX layout).
pub(super) type FloatSlot = usize;

/// `real = scale · (q - zero)` for a `u8` value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Qp {
    pub scale: f32,
    pub zero: u8,
}

/// A [`Requant`] that owns its multipliers and bias.
#[derive(Clone, Debug)]
pub(super) struct OwnedRequant {
    pub scale: Vec<f32>,
    pub bias: Vec<i32>,
    pub zero: u8,
    pub lo: u8,
    pub hi: u8,
}

impl OwnedRequant {
    fn get(&self) -> Requant<'_> {
        Requant {
            scale: &self.scale,
            bias: Some(&self.bias),
            zero: self.zero,
            lo: self.lo,
            hi: self.hi,
        }
    }
}

/// One step of an int8 program.
#[derive(Debug)]
pub(super) enum QStep {
    /// ONNX QuantizeLinear of an `f32` value; `[n, c, hw]` into `[n, hw, c]`
    /// (`c = 1` for values that are not images).
    Quantize {
        x: FloatSlot,
        out: ByteSlot,
        n: usize,
        c: usize,
        hw: usize,
        qp: Qp,
    },
    /// ONNX DequantizeLinear into an `f32` value; `[n, hw, c]` into `[n, c, hw]`,
    /// each value then clamped to `[lo, hi]` (a Relu or Clip left in float).
    Dequantize {
        x: ByteSlot,
        out: FloatSlot,
        n: usize,
        c: usize,
        hw: usize,
        qp: Qp,
        lo: f32,
        hi: f32,
    },
    /// `out = requant((x - a_zero) · W)`: a 1×1 convolution over every
    /// pixel of the batch, a Gemm or a MatMul.
    Gemm {
        x: ByteSlot,
        out: ByteSlot,
        m: usize,
        a_zero: u8,
        w: PackedI8,
        rq: OwnedRequant,
    },
    /// Any other ungrouped convolution: patch rows, then one GEMM per image.
    Conv {
        x: ByteSlot,
        out: ByteSlot,
        batch: usize,
        geom: DwGeometry,
        a_zero: u8,
        /// `[(ky, kx, c), o]`.
        w: PackedI8,
        rq: OwnedRequant,
    },
    /// A depthwise convolution.
    Depthwise {
        x: ByteSlot,
        out: ByteSlot,
        batch: usize,
        geom: DwGeometry,
        a_zero: u8,
        /// Tap-major `[kh·kw, c]`.
        w: Vec<i8>,
        rq: OwnedRequant,
    },
    /// Elementwise sum of two values of one shape.
    Add {
        a: ByteSlot,
        b: ByteSlot,
        out: ByteSlot,
        q: AddQuant,
    },
    /// Global average pool of `[batch, pixels, c]` into `[batch, c]`.
    AvgPool {
        x: ByteSlot,
        out: ByteSlot,
        batch: usize,
        pixels: usize,
        c: usize,
        a_zero: u8,
        scale: f32,
        zero: u8,
    },
    /// A value re-expressed in other quantization parameters, the result
    /// clamped (a Relu or Clip between the two): a byte-to-byte map, so a
    /// table of all 256 results ([`requantize_table`]).
    Requantize {
        x: ByteSlot,
        out: ByteSlot,
        table: Box<[u8; 256]>,
    },
    /// Global average pool of `f32` `[planes, hw]` (ONNX layout) into
    /// `[planes]`: a pool a QOperator graph leaves in float.
    FloatAvgPool {
        x: FloatSlot,
        out: FloatSlot,
        planes: usize,
        hw: usize,
    },
    /// `out = x · w + bias` in `f32`, `x` `[m, k]`, `w` `[k, n]`: a
    /// classifier a QOperator graph leaves in float.
    FloatGemm {
        x: FloatSlot,
        out: FloatSlot,
        m: usize,
        w: Vec<f32>,
        k: usize,
        n: usize,
        bias: Vec<f32>,
    },
    /// Softmax along the last axis of `[rows, cols]`.
    Softmax {
        x: FloatSlot,
        out: FloatSlot,
        rows: usize,
        cols: usize,
    },
}

impl QStep {
    /// The byte slots the step reads, and the one it writes.
    fn byte_io(&self) -> (Vec<ByteSlot>, Option<ByteSlot>) {
        match self {
            QStep::Quantize { out, .. } => (vec![], Some(*out)),
            QStep::Dequantize { x, .. } => (vec![*x], None),
            QStep::Gemm { x, out, .. }
            | QStep::Conv { x, out, .. }
            | QStep::Depthwise { x, out, .. }
            | QStep::AvgPool { x, out, .. }
            | QStep::Requantize { x, out, .. } => (vec![*x], Some(*out)),
            QStep::Add { a, b, out, .. } => (vec![*a, *b], Some(*out)),
            QStep::Softmax { .. } | QStep::FloatAvgPool { .. } | QStep::FloatGemm { .. } => {
                (vec![], None)
            }
        }
    }

    /// A short description and the operations per run (2 per multiply-add).
    pub fn describe(&self) -> (String, u64) {
        let mac = |m: usize, k: usize, n: usize| 2 * (m * k * n) as u64;
        match self {
            QStep::Quantize { n, c, hw, .. } => (format!("quantize {c}x{hw} x{n}"), 0),
            QStep::Dequantize { n, c, hw, .. } => (format!("dequantize {c}x{hw} x{n}"), 0),
            QStep::Gemm { m, w, .. } => (
                format!("int8 gemm {}->{} @{m}", w.k(), w.n()),
                mac(*m, w.k(), w.n()),
            ),
            QStep::Conv { batch, geom, w, .. } => (
                format!(
                    "int8 conv{}x{}/{} {}->{} @{}",
                    geom.kh,
                    geom.kw,
                    geom.stride[0],
                    geom.c,
                    w.n(),
                    geom.oh * geom.ow * batch
                ),
                mac(geom.oh * geom.ow * batch, w.k(), w.n()),
            ),
            QStep::Depthwise { batch, geom, .. } => (
                format!(
                    "int8 dw{}x{}/{} {} @{}",
                    geom.kh,
                    geom.kw,
                    geom.stride[0],
                    geom.c,
                    geom.oh * geom.ow * batch
                ),
                mac(geom.oh * geom.ow * batch, geom.kh * geom.kw, geom.c),
            ),
            QStep::Add { q: _, .. } => ("int8 add".to_string(), 0),
            QStep::AvgPool { pixels, c, .. } => (format!("int8 avgpool {c} @{pixels}"), 0),
            QStep::Requantize { .. } => ("requantize".to_string(), 0),
            QStep::Softmax { rows, cols, .. } => (format!("softmax {rows}x{cols}"), 0),
            QStep::FloatAvgPool { planes, hw, .. } => (format!("f32 avgpool {planes} @{hw}"), 0),
            QStep::FloatGemm { m, k, n, .. } => {
                (format!("f32 gemm {k}->{n} @{m}"), mac(*m, *k, *n))
            }
        }
    }
}

/// Where a model output comes from.
#[derive(Debug)]
pub(super) struct QOutput {
    pub slot: FloatSlot,
    pub shape: Vec<usize>,
}

/// Steps, slot sizes and the buffer plan of an int8 model.
#[derive(Debug)]
pub(crate) struct QProgram {
    steps: Vec<QStep>,
    /// Length of each float slot.
    float_len: Vec<usize>,
    pub(super) inputs: Vec<FloatSlot>,
    outputs: Vec<QOutput>,
    /// Length of each byte slot.
    byte_len: Vec<usize>,
    /// Buffer of each byte slot.
    phys: Vec<usize>,
    /// Length of each buffer.
    phys_len: Vec<usize>,
    /// Patch-matrix bytes the largest [`QStep::Conv`] needs.
    col_len: usize,
}

/// One run's buffers: reused across runs, so a steady run does not allocate.
#[derive(Debug, Default)]
pub(crate) struct QArena {
    bytes: Vec<Vec<u8>>,
    floats: Vec<Vec<f32>>,
    col: Vec<u8>,
}

impl QProgram {
    /// Plans buffers: a byte slot takes a free buffer when its step runs and
    /// gives it back after its last reader (after the step's own output is
    /// placed, so a step never writes a buffer it reads).
    pub(super) fn new(
        steps: Vec<QStep>,
        byte_len: Vec<usize>,
        float_len: Vec<usize>,
        inputs: Vec<FloatSlot>,
        outputs: Vec<QOutput>,
    ) -> QProgram {
        let mut last = vec![0usize; byte_len.len()];
        for (i, s) in steps.iter().enumerate() {
            for r in s.byte_io().0 {
                last[r] = last[r].max(i);
            }
        }
        let mut phys = vec![usize::MAX; byte_len.len()];
        let mut phys_len: Vec<usize> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            let (reads, write) = s.byte_io();
            if let Some(w) = write {
                // The smallest free buffer that fits, else the largest grown.
                let fits = free
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| phys_len[**b] >= byte_len[w])
                    .min_by_key(|(_, b)| phys_len[**b])
                    .map(|(at, _)| at);
                let at = fits.or_else(|| (0..free.len()).max_by_key(|&at| phys_len[free[at]]));
                let b = match at {
                    Some(at) => free.swap_remove(at),
                    None => {
                        phys_len.push(0);
                        phys_len.len() - 1
                    }
                };
                phys_len[b] = phys_len[b].max(byte_len[w]);
                phys[w] = b;
            }
            for r in reads {
                if last[r] == i && !free.contains(&phys[r]) {
                    free.push(phys[r]);
                }
            }
        }
        let col_len = steps
            .iter()
            .map(|s| match s {
                QStep::Conv { geom, w, .. } => geom.oh * geom.ow * w.k().next_multiple_of(4),
                // A plane of the input while it is quantized.
                QStep::Quantize { hw, .. } => *hw,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        QProgram {
            steps,
            float_len,
            inputs,
            outputs,
            byte_len,
            phys,
            phys_len,
            col_len,
        }
    }

    /// Number of steps.
    pub(crate) fn step_count(&self) -> usize {
        self.steps.len()
    }

    /// Each step's description and operations per run.
    pub(crate) fn describe(&self) -> Vec<(String, u64)> {
        self.steps.iter().map(QStep::describe).collect()
    }

    pub(crate) fn new_arena(&self) -> QArena {
        QArena {
            bytes: self.phys_len.iter().map(|&n| vec![0u8; n]).collect(),
            floats: self.float_len.iter().map(|&n| vec![0f32; n]).collect(),
            col: vec![0u8; self.col_len],
        }
    }

    /// Runs the program on `inputs` (already checked against the model's
    /// input shapes), adding each step's wall time (seconds) to `times`.
    pub(crate) fn run_timed(
        &self,
        isa: Isa,
        arena: &mut QArena,
        inputs: &[&[f32]],
        mut times: Option<&mut [f64]>,
    ) -> Vec<Tensor> {
        for (&slot, data) in self.inputs.iter().zip(inputs) {
            arena.floats[slot].copy_from_slice(data);
        }
        for (i, step) in self.steps.iter().enumerate() {
            let start = times.is_some().then(std::time::Instant::now);
            self.step(isa, arena, step);
            if let (Some(t), Some(start)) = (times.as_deref_mut(), start) {
                t[i] += start.elapsed().as_secs_f64();
            }
        }
        self.outputs
            .iter()
            .map(|o| {
                Tensor::from_f32(o.shape.clone(), arena.floats[o.slot].clone())
                    .expect("planned output shape")
            })
            .collect()
    }

    fn step(&self, isa: Isa, arena: &mut QArena, step: &QStep) {
        let (reads, write) = step.byte_io();
        // The output buffer is taken out while the step runs, so the inputs
        // (other buffers, by the plan) can be borrowed alongside it.
        let mut taken = write.map(|w| std::mem::take(&mut arena.bytes[self.phys[w]]));
        let out_buf = &mut taken;
        let bytes = &arena.bytes;
        let input = |s: ByteSlot| -> &[u8] { &bytes[self.phys[s]][..self.byte_len[s]] };
        let mut out_buf = out_buf
            .as_mut()
            .zip(write)
            .map(|(b, w)| &mut b[..self.byte_len[w]]);
        debug_assert!(
            reads
                .iter()
                .all(|&r| Some(self.phys[r]) != write.map(|w| self.phys[w]))
        );
        match step {
            QStep::Quantize {
                x, n, c, hw, qp, ..
            } => {
                let (x, out) = (&arena.floats[*x], out_buf.as_mut().expect("writes"));
                if *c == 1 || *hw == 1 {
                    int8::quantize_u8(isa, x, qp.scale, qp.zero, out);
                } else {
                    // Plane by plane (contiguous, vectorized), then
                    // interleaved into channels-last.
                    let plane = &mut arena.col[..*hw];
                    for b in 0..*n {
                        for ch in 0..*c {
                            int8::quantize_u8(
                                isa,
                                &x[(b * c + ch) * hw..][..*hw],
                                qp.scale,
                                qp.zero,
                                plane,
                            );
                            let image = &mut out[b * hw * c..][..hw * c];
                            for (px, &q) in image.chunks_exact_mut(*c).zip(plane.iter()) {
                                px[ch] = q;
                            }
                        }
                    }
                }
            }
            QStep::Dequantize {
                x,
                out,
                n,
                c,
                hw,
                qp,
                lo,
                hi,
            } => {
                let x = input(*x);
                let out = &mut arena.floats[*out];
                for b in 0..*n {
                    for p in 0..*hw {
                        for ch in 0..*c {
                            let q = i32::from(x[(b * hw + p) * c + ch]) - i32::from(qp.zero);
                            out[(b * c + ch) * hw + p] = (q as f32 * qp.scale).clamp(*lo, *hi);
                        }
                    }
                }
            }
            QStep::Gemm {
                x,
                m,
                a_zero,
                w,
                rq,
                ..
            } => {
                let out = out_buf.as_mut().expect("writes");
                int8::gemm_u8s8(isa, *m, input(*x), w.k(), *a_zero, w, out, w.n(), &rq.get());
            }
            QStep::Conv {
                x,
                batch,
                geom,
                a_zero,
                w,
                rq,
                ..
            } => {
                let out = out_buf.as_mut().expect("writes");
                let (ilen, rows) = (geom.h * geom.w * geom.c, geom.oh * geom.ow);
                // Patch rows padded to whole quads, which the GEMM then reads
                // as `i32`s (the padding meets zero weights).
                let ld = w.k().next_multiple_of(4);
                let col = &mut arena.col[..rows * ld];
                for b in 0..*batch {
                    int8::im2col_u8(geom, &input(*x)[b * ilen..][..ilen], *a_zero, col, ld);
                    let out = &mut out[b * rows * w.n()..][..rows * w.n()];
                    int8::gemm_u8s8(isa, rows, col, ld, *a_zero, w, out, w.n(), &rq.get());
                }
            }
            QStep::Depthwise {
                x,
                batch,
                geom,
                a_zero,
                w,
                rq,
                ..
            } => {
                let out = out_buf.as_mut().expect("writes");
                let (ilen, olen) = (geom.h * geom.w * geom.c, geom.oh * geom.ow * geom.c);
                for b in 0..*batch {
                    int8::depthwise_u8(
                        isa,
                        geom,
                        &input(*x)[b * ilen..][..ilen],
                        *a_zero,
                        w,
                        &rq.get(),
                        &mut out[b * olen..][..olen],
                    );
                }
            }
            QStep::Add { a, b, q, .. } => {
                // The three slots have one shape, so one length.
                let out = out_buf.as_mut().expect("writes");
                int8::add_u8(isa, input(*a), input(*b), q, out);
            }
            QStep::AvgPool {
                x,
                batch,
                pixels,
                c,
                a_zero,
                scale,
                zero,
                ..
            } => {
                let out = out_buf.as_mut().expect("writes");
                let x = input(*x);
                for b in 0..*batch {
                    int8::global_avg_pool_u8(
                        &x[b * pixels * c..][..pixels * c],
                        *pixels,
                        *c,
                        *a_zero,
                        *scale,
                        *zero,
                        &mut out[b * c..][..*c],
                    );
                }
            }
            QStep::Requantize { x, table, .. } => {
                let out = out_buf.as_mut().expect("writes");
                for (o, &v) in out.iter_mut().zip(input(*x)) {
                    *o = table[usize::from(v)];
                }
            }
            QStep::FloatAvgPool { x, out, planes, hw } => {
                let (x, out) = float_pair(&mut arena.floats, *x, *out);
                float_avg_pool(&x[..planes * hw], *hw, &mut out[..*planes]);
            }
            QStep::FloatGemm {
                x,
                out,
                m,
                w,
                k,
                n,
                bias,
            } => {
                let (x, out) = float_pair(&mut arena.floats, *x, *out);
                float_gemm(&x[..m * k], w, *k, *n, bias, &mut out[..m * n]);
            }
            QStep::Softmax { x, out, rows, cols } => {
                let (x, out) = float_pair(&mut arena.floats, *x, *out);
                let x = &x[..rows * cols];
                for (xr, or) in x.chunks_exact(*cols).zip(out.chunks_exact_mut(*cols)) {
                    let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (o, &v) in or.iter_mut().zip(xr) {
                        *o = (v - max).exp();
                        sum += *o;
                    }
                    or.iter_mut().for_each(|o| *o /= sum);
                }
            }
        }
        if let (Some(w), Some(buf)) = (write, taken) {
            arena.bytes[self.phys[w]] = buf;
        }
    }
}

/// ONNX's DequantizeLinear then QuantizeLinear of each byte (`from` to
/// `to`), the result clamped to bytes `[lo, hi]`, in onnxruntime's order of
/// `f32` operations (multiply by the one scale, divide by the other, round
/// half to even), so ties fall the same way.
pub(super) fn requantize_table(from: Qp, to: Qp, lo: u8, hi: u8) -> Box<[u8; 256]> {
    let (lo, hi) = (
        f32::from(lo) - f32::from(to.zero),
        f32::from(hi) - f32::from(to.zero),
    );
    let mut table = Box::new([0u8; 256]);
    for (v, o) in table.iter_mut().enumerate() {
        let real = (v as i32 - i32::from(from.zero)) as f32 * from.scale;
        let q = (real / to.scale).round_ties_even().clamp(lo, hi);
        *o = (q as i32 + i32::from(to.zero)) as u8;
    }
    table
}

/// The mean of each `hw` values of `x` (one plane of an NCHW image) into `out`.
pub(super) fn float_avg_pool(x: &[f32], hw: usize, out: &mut [f32]) {
    for (o, plane) in out.iter_mut().zip(x.chunks_exact(hw)) {
        *o = plane.iter().sum::<f32>() / hw as f32;
    }
}

/// `out[i, j] = bias[j] + Σ_p x[i, p] · w[p, j]` (`w` `[k, n]`), the sum
/// taken in order: a layer this small gains nothing from the tiled kernels.
pub(super) fn float_gemm(x: &[f32], w: &[f32], k: usize, n: usize, bias: &[f32], out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        or.copy_from_slice(bias);
        for (&a, wr) in xr.iter().zip(w.chunks_exact(n)) {
            for (o, &b) in or.iter_mut().zip(wr) {
                *o += a * b;
            }
        }
    }
}

/// Float slot `x` to read and a different slot `out` to write.
fn float_pair(floats: &mut [Vec<f32>], x: FloatSlot, out: FloatSlot) -> (&[f32], &mut [f32]) {
    assert_ne!(x, out, "a step reads and writes one float slot");
    if x < out {
        let (head, tail) = floats.split_at_mut(out);
        (&head[x], &mut tail[0])
    } else {
        let (head, tail) = floats.split_at_mut(x);
        (&tail[0], &mut head[out])
    }
}

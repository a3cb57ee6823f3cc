//! The compiled program: steps over buffer slots, the slot-to-buffer plan,
//! and the interpreter that runs it.

pub(super) use super::step::{BinOp, Ep, Operand, RedOp, Slot, Step, UnOp};

use edgeplug_kernels::Tensor;
use edgeplug_kernels::fast::{self, AlignedBuf, Epilogue, Isa};

use super::parallel;

/// Output pixels per patch-row batch of [`Step::ConvRows`]: the patch rows
/// stay in cache between im2col and the GEMM.
pub(super) const CONV_ROWS: usize = 256;

/// Floating-point operations below which a step is not split for another
/// thread: handing a band to a helper costs a few microseconds, which this
/// much work repays (~20 µs on one core).
const MIN_FLOPS_PER_THREAD: u64 = 2_000_000;

/// Row-band boundaries of a split GEMM fall on multiples of every register
/// tile's height (AVX-512 8 and 12, AVX2 6, NEON 8), so no band ends in a
/// partial tile that one thread would not have.
const BAND_ALIGN: usize = 24;

/// How many threads (up to `threads`) a step of `flops` operations uses.
fn parts_for(threads: usize, flops: u64) -> usize {
    threads.min((flops / MIN_FLOPS_PER_THREAD).max(1) as usize)
}

/// A helper thread's own scratch, like the arena's `col` and `band`.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    col: AlignedBuf,
    band: AlignedBuf,
}

/// Calls `f` on each image of a batch: its input (`ilen` values), its part
/// of the residual and its output (`olen` values each).
fn per_image<'a>(
    x: &'a [f32],
    residual: Option<&'a [f32]>,
    out: &mut [f32],
    batch: usize,
    ilen: usize,
    olen: usize,
    mut f: impl FnMut(&'a [f32], Option<&'a [f32]>, &mut [f32]),
) {
    for b in 0..batch {
        let residual = residual.map(|r| &r[b * olen..][..olen]);
        f(
            &x[b * ilen..][..ilen],
            residual,
            &mut out[b * olen..][..olen],
        );
    }
}

/// Where a model output comes from.
#[derive(Debug)]
pub(super) enum OutputSrc {
    Slot(Slot, Vec<usize>),
    Const(Tensor),
}

/// Steps, slot sizes and the plan mapping slots onto reusable buffers.
#[derive(Debug)]
pub(super) struct Program {
    pub steps: Vec<Step>,
    pub slot_len: Vec<usize>,
    pub inputs: Vec<Slot>,
    pub outputs: Vec<OutputSrc>,
    /// Physical buffer of each slot.
    phys: Vec<usize>,
    /// Length of each physical buffer.
    phys_len: Vec<usize>,
    col_len: usize,
    band_len: usize,
}

/// Per-run memory: every physical buffer and the kernels' scratch, allocated
/// once and reused by every run that borrows this arena.
#[derive(Debug)]
pub(super) struct Arena {
    bufs: Vec<AlignedBuf>,
    col: AlignedBuf,
    /// The depthwise output rows of a [`Step::DwBlock`] band.
    band: AlignedBuf,
    /// Scratch of the helper threads of a split step, one each.
    helpers: Vec<Scratch>,
}

impl Program {
    /// Plans buffers: a slot takes a free buffer when its step runs and gives
    /// it back after its last reader; model outputs are never given back.
    pub fn new(
        steps: Vec<Step>,
        slot_len: Vec<usize>,
        inputs: Vec<Slot>,
        outputs: Vec<OutputSrc>,
    ) -> Program {
        let slots = slot_len.len();
        let never = usize::MAX;
        let mut def = vec![never; slots];
        let mut last = vec![0usize; slots];
        for (i, step) in steps.iter().enumerate() {
            for r in step.reads() {
                last[r] = last[r].max(i);
            }
            let o = step.out();
            if def[o] == never {
                def[o] = i;
            }
            last[o] = last[o].max(i);
        }
        for o in &outputs {
            if let OutputSrc::Slot(s, _) = o {
                last[*s] = never;
            }
        }
        let mut phys = vec![never; slots];
        let mut phys_len: Vec<usize> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        for &s in &inputs {
            if phys[s] == never {
                take(s, &slot_len, &mut free, &mut phys, &mut phys_len);
            }
        }
        let mut by_last: Vec<Vec<Slot>> = vec![Vec::new(); steps.len()];
        for s in 0..slots {
            if last[s] != never && (def[s] != never || inputs.contains(&s)) {
                by_last[last[s].min(steps.len().saturating_sub(1))].push(s);
            }
        }
        let mut col_len = 0;
        let mut band_len = 0;
        let mut released = vec![false; slots];
        for (i, step) in steps.iter().enumerate() {
            let o = step.out();
            if phys[o] == never {
                let b = take(o, &slot_len, &mut free, &mut phys, &mut phys_len);
                debug_assert!(step.reads().iter().all(|&r| phys[r] != b));
            }
            match step {
                Step::ConvRows { geom, .. } => {
                    let rows = CONV_ROWS.min(geom.oh * geom.ow);
                    col_len = col_len.max(rows * geom.c * geom.kh * geom.kw);
                }
                Step::Im2col { geom, .. } => {
                    col_len = col_len.max(geom.c * geom.kh * geom.kw * geom.oh * geom.ow);
                }
                Step::DwBlock { block, .. } => {
                    let (input, output) = block.scratch_len(block.per_band());
                    col_len = col_len.max(input);
                    band_len = band_len.max(output);
                }
                _ => {}
            }
            for &s in &by_last[i] {
                if !released[s] {
                    released[s] = true;
                    // Aliases share a slot, so a buffer is released once.
                    if !free.contains(&phys[s]) {
                        free.push(phys[s]);
                    }
                }
            }
        }
        Program {
            steps,
            slot_len,
            inputs,
            outputs,
            phys,
            phys_len,
            col_len,
            band_len,
        }
    }

    /// Adds bf16 copies of every dense layer's weights (see
    /// [`fast::bf16::Bf16Rows`]).
    pub fn enable_bf16_dense(&mut self) {
        for step in &mut self.steps {
            if let Step::Dense {
                w, w_bf16, k, n, ..
            } = step
            {
                *w_bf16 = Some(fast::bf16::Bf16Rows::pack(w, *n, *k));
            }
        }
    }

    /// The packed weights of every GEMM that reads row-major activations
    /// (pointwise steps, dense convolutions, block stages): what bf16
    /// precision converts.
    pub fn gemm_weights_mut(&mut self) -> impl Iterator<Item = &mut fast::PackedRhs> {
        self.steps.iter_mut().flat_map(|step| {
            let weights: Vec<&mut fast::PackedRhs> = match step {
                Step::Pointwise { w, .. } | Step::ConvRows { w, .. } => vec![w],
                Step::DwBlock { block, .. } => {
                    let block = &mut **block;
                    block
                        .expand
                        .as_mut()
                        .map(|e| &mut e.w)
                        .into_iter()
                        .chain(block.project.as_mut().map(|(w, _)| w))
                        .collect()
                }
                _ => Vec::new(),
            };
            weights
        })
    }

    pub fn new_arena(&self) -> Arena {
        Arena {
            bufs: self
                .phys_len
                .iter()
                .map(|&n| AlignedBuf::zeroed(n))
                .collect(),
            col: AlignedBuf::zeroed(self.col_len),
            band: AlignedBuf::zeroed(self.band_len),
            helpers: Vec::new(),
        }
    }

    fn slot<'a>(&self, bufs: &'a [AlignedBuf], s: Slot) -> &'a [f32] {
        &bufs[self.phys[s]][..self.slot_len[s]]
    }

    /// Runs on checked inputs (one f32 slice per model input, right length),
    /// splitting heavy steps over up to `threads` threads.
    pub fn run(
        &self,
        isa: Isa,
        threads: usize,
        arena: &mut Arena,
        inputs: &[&[f32]],
    ) -> Vec<Tensor> {
        self.run_timed(isa, threads, arena, inputs, None)
    }

    /// [`Program::run`], adding each step's wall time (seconds) to `times`.
    pub fn run_timed(
        &self,
        isa: Isa,
        threads: usize,
        arena: &mut Arena,
        inputs: &[&[f32]],
        mut times: Option<&mut [f64]>,
    ) -> Vec<Tensor> {
        for (&slot, data) in self.inputs.iter().zip(inputs) {
            arena.bufs[self.phys[slot]][..data.len()].copy_from_slice(data);
        }
        let mut col = std::mem::take(&mut arena.col);
        let mut band = std::mem::take(&mut arena.band);
        let threads = threads.max(1);
        if arena.helpers.len() < threads - 1 {
            arena.helpers.resize_with(threads - 1, Scratch::default);
        }
        let helpers = &mut arena.helpers[..threads - 1];
        for (i, step) in self.steps.iter().enumerate() {
            let o = step.out();
            let mut out = std::mem::take(&mut arena.bufs[self.phys[o]]);
            let dst = &mut out[..self.slot_len[o]];
            let start = times.is_some().then(std::time::Instant::now);
            let scratch = Scratches {
                col: &mut col,
                band: &mut band,
                helpers: &mut *helpers,
            };
            exec(self, isa, step, &arena.bufs, dst, scratch);
            if let (Some(t), Some(start)) = (times.as_deref_mut(), start) {
                t[i] += start.elapsed().as_secs_f64();
            }
            arena.bufs[self.phys[o]] = out;
        }
        arena.col = col;
        arena.band = band;
        self.outputs
            .iter()
            .map(|o| match o {
                OutputSrc::Const(t) => t.clone(),
                OutputSrc::Slot(s, shape) => {
                    Tensor::from_f32(shape.clone(), self.slot(&arena.bufs, *s).to_vec())
                        .expect("planned output shape")
                }
            })
            .collect()
    }

    fn ep<'a>(&self, bufs: &'a [AlignedBuf], ep: &Ep, bias: &'a [f32]) -> Epilogue<'a> {
        Epilogue {
            bias: Some(bias),
            residual: ep.residual.map(|r| self.slot(bufs, r)),
            lo: ep.lo,
            hi: ep.hi,
        }
    }
}

/// Gives `slot` a free buffer (best fit, else the largest free one grown,
/// else a new one) and returns it.
fn take(
    slot: Slot,
    slot_len: &[usize],
    free: &mut Vec<usize>,
    phys: &mut [usize],
    phys_len: &mut Vec<usize>,
) -> usize {
    let len = slot_len[slot];
    let pick = free
        .iter()
        .enumerate()
        .filter(|(_, b)| phys_len[**b] >= len)
        .min_by_key(|(_, b)| phys_len[**b])
        .or_else(|| free.iter().enumerate().max_by_key(|(_, b)| phys_len[**b]))
        .map(|(i, _)| i);
    let b = match pick {
        Some(i) => free.swap_remove(i),
        None => {
            phys_len.push(0);
            phys_len.len() - 1
        }
    };
    phys_len[b] = phys_len[b].max(len);
    phys[slot] = b;
    b
}

/// The scratch of one step: the run's own, and one per helper thread (their
/// number is the threads a step may use, minus one).
struct Scratches<'a> {
    col: &'a mut AlignedBuf,
    band: &'a mut AlignedBuf,
    helpers: &'a mut [Scratch],
}

impl Scratches<'_> {
    fn threads(&self) -> usize {
        1 + self.helpers.len()
    }

    /// `(col, band)` of each of the first `n` threads.
    fn per_thread(&mut self, n: usize) -> Vec<(&mut AlignedBuf, &mut AlignedBuf)> {
        std::iter::once((&mut *self.col, &mut *self.band))
            .chain(self.helpers.iter_mut().map(|h| (&mut h.col, &mut h.band)))
            .take(n)
            .collect()
    }
}

/// Runs one step; `out` is the step's output slot, which no input shares.
fn exec(
    p: &Program,
    isa: Isa,
    step: &Step,
    bufs: &[AlignedBuf],
    out: &mut [f32],
    mut scratch: Scratches<'_>,
) {
    let threads = scratch.threads();
    match step {
        Step::Pointwise {
            x,
            pixels,
            w,
            bias,
            ep,
            ..
        } => {
            let x = p.slot(bufs, *x);
            let e = p.ep(bufs, ep, bias);
            let (k, n) = (w.k(), w.n());
            let flops = 2 * (*pixels * k * n) as u64;
            // A small image (a late layer's 7×7) splits evenly rather than on tile
            // boundaries: its cost is streaming the weights, not the last tile.
            let align = if *pixels >= 8 * BAND_ALIGN {
                BAND_ALIGN
            } else {
                1
            };
            let split = (parts_for(threads, flops), align);
            parallel::run_bands(
                out,
                *pixels,
                n,
                split,
                std::iter::repeat(()),
                |rows, out, ()| {
                    let e = Epilogue {
                        residual: e.residual.map(|r| &r[rows.start * n..][..rows.len() * n]),
                        ..e
                    };
                    fast::gemm_rows(isa, rows.len(), &x[rows.start * k..], k, w, out, n, &e);
                },
            );
        }
        Step::Depthwise {
            x,
            batch,
            geom,
            w,
            bias,
            ep,
            ..
        } => {
            let (ilen, olen) = (geom.c * geom.h * geom.w, geom.c * geom.oh * geom.ow);
            let e = p.ep(bufs, ep, bias);
            per_image(
                p.slot(bufs, *x),
                e.residual,
                out,
                *batch,
                ilen,
                olen,
                |x, residual, out| {
                    fast::depthwise_nhwc(isa, geom, x, w, &Epilogue { residual, ..e }, out);
                },
            );
        }
        Step::ConvRows {
            x,
            batch,
            geom,
            w,
            bias,
            ep,
            ..
        } => {
            let positions = geom.oh * geom.ow;
            let (k, n) = (w.k(), w.n());
            let (ilen, olen) = (geom.c * geom.h * geom.w, n * positions);
            let rows = CONV_ROWS.min(positions);
            let e = p.ep(bufs, ep, bias);
            let flops = 2 * (positions * k * n) as u64;
            let parts = parts_for(threads, flops);
            let mut cols = scratch.per_thread(parts);
            per_image(
                p.slot(bufs, *x),
                e.residual,
                out,
                *batch,
                ilen,
                olen,
                |x, residual, out| {
                    let split = (parts, BAND_ALIGN);
                    parallel::run_bands(
                        out,
                        positions,
                        n,
                        split,
                        cols.iter_mut(),
                        |band, out, (col, _)| {
                            col.ensure_len(rows * k);
                            for first in band.clone().step_by(rows) {
                                let count = rows.min(band.end - first);
                                fast::im2col_rows(isa, geom, x, first, count, col);
                                let part =
                                    (first - band.start) * n..(first - band.start + count) * n;
                                let e = Epilogue {
                                    residual: residual.map(|r| &r[first * n..][..count * n]),
                                    ..e
                                };
                                fast::gemm_rows(isa, count, col, k, w, &mut out[part], n, &e);
                            }
                        },
                    );
                },
            );
        }
        Step::ConvNchw {
            x,
            batch,
            geom,
            w,
            bias,
            ep,
            ..
        } => {
            let (ilen, olen) = (geom.c * geom.h * geom.w, w.n() * geom.oh * geom.ow);
            let e = p.ep(bufs, ep, bias);
            let flops = 2 * (geom.oh * geom.ow * w.k() * w.n()) as u64;
            let parts = parts_for(threads, flops);
            let mut cols = scratch.per_thread(parts);
            per_image(
                p.slot(bufs, *x),
                e.residual,
                out,
                *batch,
                ilen,
                olen,
                |x, residual, out| {
                    let e = Epilogue { residual, ..e };
                    let row_len = geom.ow * w.n();
                    parallel::run_bands(
                        out,
                        geom.oh,
                        row_len,
                        (parts, 1),
                        cols.iter_mut(),
                        |rows, out, (col, _)| {
                            fast::conv_nchw_rows(isa, geom, x, w, &e, rows, out, col);
                        },
                    );
                },
            );
        }
        Step::DwBlock { x, block, ep, .. } => {
            let g = &block.geom;
            let ilen = g.h * g.w * block.in_channels();
            let olen = g.oh * g.ow * block.out_channels();
            let per_band = block.per_band();
            let (input, output) = block.scratch_len(per_band);
            let residual = ep.residual.map(|r| p.slot(bufs, r));
            let x = p.slot(bufs, *x);
            let parts = parts_for(threads, block.flops() / block.batch as u64);
            let mut bands = scratch.per_thread(parts);
            for (col, band) in bands.iter_mut() {
                col.ensure_len(input);
                band.ensure_len(output);
            }
            let row_len = g.ow * block.out_channels();
            per_image(
                x,
                residual,
                out,
                block.batch,
                ilen,
                olen,
                |x, residual, out| {
                    parallel::run_bands(
                        out,
                        g.oh,
                        row_len,
                        (parts, 1),
                        bands.iter_mut(),
                        |rows, out, (col, band)| {
                            block.run(
                                isa, x, residual, ep.lo, ep.hi, rows, out, col, band, per_band,
                            );
                        },
                    );
                },
            );
        }
        Step::Layout {
            x,
            n,
            c,
            hw,
            to_channels_last,
            ..
        } => {
            let x = p.slot(bufs, *x);
            let plane = c * hw;
            for b in 0..*n {
                let (src, dst) = (&x[b * plane..][..plane], &mut out[b * plane..][..plane]);
                if *to_channels_last {
                    fast::transpose(src, *c, *hw, dst);
                } else {
                    fast::transpose(src, *hw, *c, dst);
                }
            }
        }
        Step::Im2col {
            x,
            batch,
            geom,
            w,
            bias,
            ep,
            ..
        } => {
            let x = p.slot(bufs, *x);
            let groups = w.len();
            let positions = geom.oh * geom.ow;
            let cpg = geom.c;
            let opg = w[0].m();
            let k = cpg * geom.kh * geom.kw;
            let (ilen, olen) = (groups * cpg * geom.h * geom.w, groups * opg * positions);
            {
                let col = &mut *scratch.col;
                col.ensure_len(k * positions);
                for b in 0..*batch {
                    for (g, wg) in w.iter().enumerate() {
                        let xin =
                            &x[b * ilen + g * cpg * geom.h * geom.w..][..cpg * geom.h * geom.w];
                        let col = &mut col[..k * positions];
                        fast::im2col(geom, xin, col);
                        let base = b * olen + g * opg * positions;
                        let e = Epilogue {
                            bias: Some(&bias[g * opg..][..opg]),
                            residual: ep
                                .residual
                                .map(|r| &p.slot(bufs, r)[base..][..opg * positions]),
                            lo: ep.lo,
                            hi: ep.hi,
                        };
                        fast::gemm_packed(
                            isa,
                            wg,
                            col,
                            positions,
                            positions,
                            &mut out[base..][..opg * positions],
                            positions,
                            &e,
                        );
                    }
                }
            }
        }
        Step::Dense {
            x,
            rows,
            k,
            n,
            w,
            w_bf16,
            bias,
            ep,
            ..
        } => {
            let x = p.slot(bufs, *x);
            let (k, n) = (*k, *n);
            // bf16 halves the bytes streamed; AVX512-BF16, else emulated (the
            // model refused bf16 at load on paths that have neither).
            let hardware = isa == Isa::Avx512;
            let parts = parts_for(threads, 2 * (k * n) as u64);
            for r in 0..*rows {
                let e = p.ep(bufs, ep, bias);
                let x = &x[r * k..][..k];
                let res = e.residual.map(|res| &res[r * n..][..n]);
                let out = &mut out[r * n..][..n];
                parallel::run_bands(
                    out,
                    n,
                    1,
                    (parts, 16),
                    std::iter::repeat(()),
                    |cols, out, ()| {
                        let e = Epilogue {
                            bias: e.bias.map(|b| &b[cols.start..]),
                            residual: res.map(|r| &r[cols.clone()]),
                            ..e
                        };
                        match w_bf16 {
                            Some(wb) => fast::bf16::matvec(hardware, wb, cols, x, out, &e),
                            None => {
                                fast::matvec(isa, &w[cols.start * k..], cols.len(), k, x, out, &e)
                            }
                        }
                    },
                );
            }
        }
        Step::Binary {
            op,
            a,
            b,
            shape,
            a_strides,
            b_strides,
            ..
        } => {
            binary(
                *op,
                operand(p, bufs, a),
                operand(p, bufs, b),
                out,
                shape,
                a_strides,
                b_strides,
            );
        }
        Step::Unary { op, x, len, .. } => {
            let x = &p.slot(bufs, *x)[..*len];
            unary(*op, x, out);
        }
        Step::Reduce {
            op,
            x,
            outer,
            len,
            inner,
            scale,
            ..
        } => {
            let x = p.slot(bufs, *x);
            if *inner == 1 {
                // Contiguous reductions (global pooling): one run per output.
                for (d, src) in out.iter_mut().zip(x.chunks_exact(*len)) {
                    let v = match op {
                        RedOp::Sum => src.iter().sum::<f32>(),
                        RedOp::Max => src.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                        RedOp::Min => src.iter().copied().fold(f32::INFINITY, f32::min),
                    };
                    *d = v * scale;
                }
                return;
            }
            for o in 0..*outer {
                let dst = &mut out[o * inner..][..*inner];
                let src = &x[o * len * inner..][..len * inner];
                dst.copy_from_slice(&src[..*inner]);
                for row in src.chunks_exact(*inner).skip(1) {
                    for (d, &v) in dst.iter_mut().zip(row) {
                        *d = match op {
                            RedOp::Sum => *d + v,
                            RedOp::Max => d.max(v),
                            RedOp::Min => d.min(v),
                        };
                    }
                }
                if *scale != 1.0 {
                    dst.iter_mut().for_each(|d| *d *= scale);
                }
            }
        }
        Step::Softmax {
            x,
            outer,
            len,
            inner,
            log,
            ..
        } => {
            let x = p.slot(bufs, *x);
            out.copy_from_slice(&x[..out.len()]);
            for o in 0..*outer {
                for i in 0..*inner {
                    let idx = |j: usize| (o * len + j) * inner + i;
                    let max = (0..*len)
                        .map(|j| out[idx(j)])
                        .fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for j in 0..*len {
                        let e = (out[idx(j)] - max).exp();
                        sum += e;
                        if !log {
                            out[idx(j)] = e;
                        }
                    }
                    for j in 0..*len {
                        if *log {
                            out[idx(j)] = out[idx(j)] - max - sum.ln();
                        } else {
                            out[idx(j)] /= sum;
                        }
                    }
                }
            }
        }
        Step::Transpose {
            x, in_shape, perm, ..
        } => {
            let x = p.slot(bufs, *x);
            let rank = in_shape.len();
            let mut in_strides = vec![1usize; rank];
            for d in (0..rank.saturating_sub(1)).rev() {
                in_strides[d] = in_strides[d + 1] * in_shape[d + 1];
            }
            let out_shape: Vec<usize> = perm.iter().map(|&a| in_shape[a]).collect();
            let strides: Vec<usize> = perm.iter().map(|&a| in_strides[a]).collect();
            let mut idx = vec![0usize; rank];
            for v in out.iter_mut() {
                let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
                *v = x[off];
                for d in (0..rank).rev() {
                    idx[d] += 1;
                    if idx[d] < out_shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        }
        Step::Concat { parts, outer, .. } => {
            let total: usize = parts.iter().map(|(_, c)| c).sum();
            let mut off = 0;
            for (o, chunk) in parts {
                let src = operand(p, bufs, o);
                for b in 0..*outer {
                    out[b * total + off..][..*chunk].copy_from_slice(&src[b * chunk..][..*chunk]);
                }
                off += chunk;
            }
        }
        Step::Slice {
            x,
            outer,
            axis,
            inner,
            start,
            len,
            ..
        } => {
            let x = p.slot(bufs, *x);
            for o in 0..*outer {
                out[o * len * inner..][..len * inner]
                    .copy_from_slice(&x[(o * axis + start) * inner..][..len * inner]);
            }
        }
        Step::Pool {
            x,
            in_shape,
            params,
            max,
            ..
        } => {
            let x = p.slot(bufs, *x);
            let n = in_shape.iter().product();
            let t = Tensor::from_f32(in_shape.clone(), x[..n].to_vec()).expect("planned shape");
            let y = if *max {
                edgeplug_kernels::max_pool2d(&t, params)
            } else {
                edgeplug_kernels::avg_pool2d(&t, params)
            }
            .expect("validated at compile time");
            out.copy_from_slice(y.as_f32().expect("f32"));
        }
        Step::Recurrent { x, rec, .. } => rec.run(isa, p.slot(bufs, *x), out),
        Step::Pad {
            x,
            in_shape,
            pads,
            value,
            ..
        } => {
            let x = p.slot(bufs, *x);
            out.fill(*value);
            let rank = in_shape.len();
            let out_shape: Vec<usize> = in_shape
                .iter()
                .zip(pads)
                .map(|(d, (a, b))| d + a + b)
                .collect();
            let mut out_strides = vec![1usize; rank];
            for d in (0..rank.saturating_sub(1)).rev() {
                out_strides[d] = out_strides[d + 1] * out_shape[d + 1];
            }
            let last = in_shape[rank - 1];
            let rows = x.len() / last.max(1);
            let mut idx = vec![0usize; rank.saturating_sub(1)];
            for r in 0..rows {
                let mut off = pads[rank - 1].0;
                for (d, &i) in idx.iter().enumerate() {
                    off += (i + pads[d].0) * out_strides[d];
                }
                out[off..off + last].copy_from_slice(&x[r * last..][..last]);
                for d in (0..idx.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < in_shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        }
    }
}

fn operand<'a>(p: &Program, bufs: &'a [AlignedBuf], o: &'a Operand) -> &'a [f32] {
    match o {
        Operand::Slot(s) => p.slot(bufs, *s),
        Operand::Const(c) => c,
    }
}

fn binary(
    op: BinOp,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    shape: &[usize],
    sa: &[usize],
    sb: &[usize],
) {
    let f = |x: f32, y: f32| match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div => x / y,
        BinOp::Max => x.max(y),
        BinOp::Min => x.min(y),
        BinOp::Pow => x.powf(y),
    };
    let rank = shape.len();
    if rank == 0 {
        out[0] = f(a[0], b[0]);
        return;
    }
    let inner = shape[rank - 1];
    let (ia, ib) = (sa[rank - 1], sb[rank - 1]);
    let rows = out.len() / inner.max(1);
    let mut idx = vec![0usize; rank - 1];
    for r in 0..rows {
        let (mut oa, mut ob) = (0, 0);
        for (d, &i) in idx.iter().enumerate() {
            oa += i * sa[d];
            ob += i * sb[d];
        }
        let dst = &mut out[r * inner..][..inner];
        match (ia, ib) {
            (1, 1) => {
                for ((d, &x), &y) in dst
                    .iter_mut()
                    .zip(&a[oa..oa + inner])
                    .zip(&b[ob..ob + inner])
                {
                    *d = f(x, y);
                }
            }
            (1, 0) => {
                let y = b[ob];
                for (d, &x) in dst.iter_mut().zip(&a[oa..oa + inner]) {
                    *d = f(x, y);
                }
            }
            (0, 1) => {
                let x = a[oa];
                for (d, &y) in dst.iter_mut().zip(&b[ob..ob + inner]) {
                    *d = f(x, y);
                }
            }
            _ => {
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = f(a[oa + j * ia], b[ob + j * ib]);
                }
            }
        }
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

fn unary(op: UnOp, x: &[f32], out: &mut [f32]) {
    let f = |v: f32| -> f32 {
        match op {
            UnOp::Clamp(lo, hi) => {
                let v = if v < lo { lo } else { v };
                if v > hi { hi } else { v }
            }
            UnOp::Sigmoid => 1.0 / (1.0 + (-v).exp()),
            UnOp::Tanh => v.tanh(),
            UnOp::Exp => v.exp(),
            UnOp::Ln => v.ln(),
            UnOp::Abs => v.abs(),
            UnOp::Neg => -v,
            UnOp::Sqrt => v.sqrt(),
            UnOp::Rsqrt => 1.0 / v.sqrt(),
            UnOp::Recip => 1.0 / v,
            UnOp::Square => v * v,
            UnOp::HardSwish => v * (v / 6.0 + 0.5).clamp(0.0, 1.0),
            UnOp::LeakyRelu(a) => {
                if v < 0.0 {
                    a * v
                } else {
                    v
                }
            }
        }
    };
    for (d, &v) in out.iter_mut().zip(x) {
        *d = f(v);
    }
}

//! An inverted-residual block, `[pointwise expansion →] depthwise →
//! [pointwise projection]`, run a band of output rows at a time
//! ([`Step::DwBlock`](super::exec::Step::DwBlock)). The expanded image and the
//! depthwise output, the largest values in a MobileNet-class network, then
//! only ever exist a few rows at a time, in cache. Input rows shared by
//! consecutive bands are kept, not recomputed.

use std::collections::HashMap;

use super::exec::{OutputSrc, Slot, Step};
use edgeplug_kernels::Padding;
use edgeplug_kernels::fast::{self, AlignedBuf, DwGeometry, Epilogue, Isa, PackedRhs};

/// Floats of expanded input rows one band may hold.
const BAND_FLOATS: usize = 96 * 1024;

/// A pointwise stage: `[c_in, c_out]` weights, bias and clamp.
#[derive(Debug)]
pub(super) struct Pointwise {
    pub w: PackedRhs,
    pub bias: Vec<f32>,
    pub lo: f32,
    pub hi: f32,
}

impl Pointwise {
    fn epilogue(&self) -> Epilogue<'_> {
        Epilogue {
            bias: Some(&self.bias),
            residual: None,
            lo: self.lo,
            hi: self.hi,
        }
    }
}

/// The stages of one block. The step that holds it carries the last stage's
/// residual and clamp (the projection's, else the depthwise's).
#[derive(Debug)]
pub(super) struct DwBlock {
    pub batch: usize,
    pub expand: Option<Pointwise>,
    /// `geom.c` is the expanded channels.
    pub geom: DwGeometry,
    /// Tap-major `[kh·kw, c]`.
    pub w: AlignedBuf,
    pub bias: Vec<f32>,
    /// The depthwise clamp, when a projection follows (its own is the step's).
    pub dw_lo: f32,
    pub dw_hi: f32,
    /// Weights `[c, c_out]` and bias; its clamp and residual are the step's.
    pub project: Option<(PackedRhs, Vec<f32>)>,
}

impl DwBlock {
    pub fn in_channels(&self) -> usize {
        self.expand.as_ref().map_or(self.geom.c, |e| e.w.k())
    }

    pub fn out_channels(&self) -> usize {
        self.project.as_ref().map_or(self.geom.c, |(w, _)| w.n())
    }

    /// Output rows per band: as many as fit [`BAND_FLOATS`] of input rows.
    pub fn per_band(&self) -> usize {
        let g = &self.geom;
        let row = (g.w * g.c).max(1);
        let reach = (g.kh - 1) * g.dilation[0] + 1;
        let fit = (BAND_FLOATS / row).saturating_sub(reach) / g.stride[0] + 1;
        fit.clamp(1, g.oh)
    }

    /// Scratch floats a run with `per_band` rows needs: expanded input rows
    /// (when expanding) and depthwise output rows (when projecting).
    pub fn scratch_len(&self, per_band: usize) -> (usize, usize) {
        let g = &self.geom;
        let rows = ((per_band - 1) * g.stride[0] + (g.kh - 1) * g.dilation[0] + 1).min(g.h);
        let input = if self.expand.is_some() {
            rows * g.w * g.c
        } else {
            0
        };
        let output = if self.project.is_some() {
            per_band * g.ow * g.c
        } else {
            0
        };
        (input, output)
    }

    /// Floating-point operations per run.
    pub fn flops(&self) -> u64 {
        let g = &self.geom;
        let mut flops = 2 * (self.batch * g.c * g.oh * g.ow * g.kh * g.kw) as u64;
        if let Some(e) = &self.expand {
            flops += 2 * (self.batch * g.h * g.w * e.w.k() * e.w.n()) as u64;
        }
        if let Some((w, _)) = &self.project {
            flops += 2 * (self.batch * g.oh * g.ow * w.k() * w.n()) as u64;
        }
        flops
    }

    /// Kind, shape and floating-point operations per run.
    pub fn describe(&self) -> (String, u64) {
        let g = &self.geom;
        let mut name = String::new();
        if let Some(e) = &self.expand {
            name += &format!("conv1x1 {}->{} + ", e.w.k(), e.w.n());
        }
        name += &format!(
            "dw{}x{} s{} c{} {}x{}->{}x{}",
            g.kh, g.kw, g.stride[0], g.c, g.h, g.w, g.oh, g.ow
        );
        if let Some((w, _)) = &self.project {
            name += &format!(" + conv1x1 {}->{}", w.k(), w.n());
        }
        (name, self.flops())
    }

    /// Output rows `oy` of one image: `x` is `[h, w, c_in]`, `out` those
    /// rows of the `[oh, ow, c_out]` output; `residual` (laid out like the
    /// whole output), `lo` and `hi` finish the last stage. `band_in` and
    /// `band_out` hold at least [`DwBlock::scratch_len`] floats. Threads that
    /// run disjoint row ranges each recompute the expanded rows they share.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        isa: Isa,
        x: &[f32],
        residual: Option<&[f32]>,
        lo: f32,
        hi: f32,
        oy: std::ops::Range<usize>,
        out: &mut [f32],
        band_in: &mut [f32],
        band_out: &mut [f32],
        per_band: usize,
    ) {
        let g = &self.geom;
        let (c_in, c, c_out) = (self.in_channels(), g.c, self.out_channels());
        let (row_in, row) = (g.w * c_in, g.w * c);
        let [s, d] = [g.stride[0], g.dilation[0]];
        let span = (g.kh - 1) * d + 1;
        let per_band = per_band.max(1);
        // Rows `have.0..have.1` of the expanded image are in `band_in`, from row 0.
        let mut have = (0usize, 0usize);
        for oy0 in oy.clone().step_by(per_band) {
            let oy1 = (oy0 + per_band).min(oy.end);
            let first = (oy0 * s).saturating_sub(g.pad.top).min(g.h);
            let last = ((oy1 - 1) * s + span)
                .saturating_sub(g.pad.top)
                .min(g.h)
                .max(first);
            let rows: &[f32] = match &self.expand {
                None => &x[first * row..last * row],
                Some(e) => {
                    // Keep the rows this band shares with the last one.
                    let kept = if first >= have.0 && first < have.1 {
                        band_in.copy_within((first - have.0) * row..(have.1 - have.0) * row, 0);
                        have.1 - first
                    } else {
                        0
                    };
                    let new = first + kept;
                    if last > new {
                        let n = last - new;
                        fast::gemm_rows(
                            isa,
                            n * g.w,
                            &x[new * row_in..][..n * row_in],
                            c_in,
                            &e.w,
                            &mut band_in[kept * row..][..n * row],
                            c,
                            &e.epilogue(),
                        );
                    }
                    have = (first, last);
                    &band_in[..(last - first) * row]
                }
            };
            let band = DwGeometry {
                h: last - first,
                pad: Padding {
                    // Zero once the band starts inside the image.
                    top: (g.pad.top + first).saturating_sub(oy0 * s),
                    ..g.pad
                },
                oh: oy1 - oy0,
                ..*g
            };
            let pixels = (oy1 - oy0) * g.ow;
            let residual = residual.map(|r| &r[oy0 * g.ow * c_out..][..pixels * c_out]);
            let base = (oy0 - oy.start) * g.ow * c_out;
            match &self.project {
                None => {
                    let ep = Epilogue {
                        bias: Some(&self.bias),
                        residual,
                        lo,
                        hi,
                    };
                    fast::depthwise_nhwc(
                        isa,
                        &band,
                        rows,
                        &self.w,
                        &ep,
                        &mut out[base..][..pixels * c],
                    );
                }
                Some((pw, pw_bias)) => {
                    let ep = Epilogue {
                        bias: Some(&self.bias),
                        residual: None,
                        lo: self.dw_lo,
                        hi: self.dw_hi,
                    };
                    let mid = &mut band_out[..pixels * c];
                    fast::depthwise_nhwc(isa, &band, rows, &self.w, &ep, mid);
                    let ep = Epilogue {
                        bias: Some(pw_bias),
                        residual,
                        lo,
                        hi,
                    };
                    let dst = &mut out[base..][..pixels * c_out];
                    fast::gemm_rows(isa, pixels, mid, c, pw, dst, c_out, &ep);
                }
            }
        }
    }
}

/// Merges each depthwise step with the pointwise step before it when that
/// only feeds it (the expansion), and with the one after it when that alone
/// reads its output (the projection): see [`DwBlock`].
pub(super) fn fuse(steps: Vec<Step>, outputs: &[OutputSrc]) -> Vec<Step> {
    let mut readers: HashMap<Slot, usize> = HashMap::new();
    for r in steps.iter().flat_map(Step::reads) {
        *readers.entry(r).or_default() += 1;
    }
    for o in outputs {
        if let OutputSrc::Slot(s, _) = o {
            *readers.entry(*s).or_default() += 1;
        }
    }
    let only_reader = |slot: &Slot| readers.get(slot) == Some(&1);
    let mut fused = Vec::with_capacity(steps.len());
    let mut it = steps.into_iter().peekable();
    while let Some(step) = it.next() {
        let expands = match (&step, it.peek()) {
            (Step::Pointwise { out, ep, .. }, Some(Step::Depthwise { x, .. })) => {
                ep.residual.is_none() && x == out && only_reader(out)
            }
            _ => false,
        };
        let (x, expand, dw) = match step {
            Step::Pointwise { x, w, bias, ep, .. } if expands => {
                let expand = Pointwise {
                    w,
                    bias,
                    lo: ep.lo,
                    hi: ep.hi,
                };
                (x, Some(expand), it.next().expect("peeked"))
            }
            Step::Depthwise { x, .. } => (x, None, step),
            other => {
                fused.push(other);
                continue;
            }
        };
        let Step::Depthwise {
            out: dw_out,
            batch,
            geom,
            w,
            bias,
            ep: dw_ep,
            ..
        } = dw
        else {
            unreachable!("a depthwise step")
        };
        let projects = dw_ep.residual.is_none()
            && only_reader(&dw_out)
            && matches!(it.peek(), Some(Step::Pointwise { x, .. }) if *x == dw_out);
        let (out, project, ep) = if projects {
            let Some(Step::Pointwise {
                out, w, bias, ep, ..
            }) = it.next()
            else {
                unreachable!("peeked")
            };
            (out, Some((w, bias)), ep)
        } else {
            (dw_out, None, dw_ep)
        };
        if expand.is_none() && project.is_none() {
            fused.push(Step::Depthwise {
                x,
                out,
                batch,
                geom,
                w,
                bias,
                ep,
            });
            continue;
        }
        let block = DwBlock {
            batch,
            expand,
            geom,
            w,
            bias,
            dw_lo: dw_ep.lo,
            dw_hi: dw_ep.hi,
            project,
        };
        fused.push(Step::DwBlock {
            x,
            out,
            block: Box::new(block),
            ep,
        });
    }
    fused
}

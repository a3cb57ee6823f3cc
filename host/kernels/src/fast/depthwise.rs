//! Depthwise convolution (`groups == C == O`) on NCHW planes.
//!
//! Each channel's plane is first copied into a zero-padded scratch whose
//! columns are split by phase (column `x` goes to phase `x % stride_x`), so
//! that every tap of every stride reads a contiguous run: output column `ox`
//! of tap `kx` is at phase `(kx·d) % s`, index `ox + (kx·d) / s`. The inner
//! loop is then 16 output columns × all taps in one register, with no bounds
//! tests and no gathers.

use super::super::window::Padding;
use super::{Epilogue, Isa};

const LANES: usize = 16;

/// Shape of a depthwise convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DwGeometry {
    /// Channels (planes).
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// `[y, x]` stride, each >= 1.
    pub stride: [usize; 2],
    /// `[y, x]` dilation, each >= 1.
    pub dilation: [usize; 2],
    /// Zero padding.
    pub pad: Padding,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl DwGeometry {
    /// Computes the output size; `None` if a parameter is 0 or no window fits.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c: usize,
        h: usize,
        w: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        pad: Padding,
    ) -> Option<DwGeometry> {
        let out = |input: usize, k: usize, s: usize, d: usize, pa: usize, pb: usize| {
            if k == 0 || s == 0 || d == 0 || input == 0 {
                return None;
            }
            let span = d.checked_mul(k - 1)? + 1;
            let padded = input.checked_add(pa)?.checked_add(pb)?;
            (padded >= span).then(|| (padded - span) / s + 1)
        };
        let oh = out(h, kernel[0], stride[0], dilation[0], pad.top, pad.bottom)?;
        let ow = out(w, kernel[1], stride[1], dilation[1], pad.left, pad.right)?;
        Some(DwGeometry {
            c,
            h,
            w,
            kh: kernel[0],
            kw: kernel[1],
            stride,
            dilation,
            pad,
            oh,
            ow,
        })
    }

    /// Padded rows actually read.
    fn rows(&self) -> usize {
        (self.oh - 1) * self.stride[0] + (self.kh - 1) * self.dilation[0] + 1
    }

    /// Length of one phase row of the scratch.
    fn phase_len(&self) -> usize {
        self.ow.next_multiple_of(LANES) + (self.kw - 1) * self.dilation[1] / self.stride[1] + 1
    }

    /// Floats of scratch one channel needs.
    pub fn scratch_len(&self) -> usize {
        self.rows() * self.stride[1] * self.phase_len()
    }
}

/// Depthwise convolution of `g.c` planes: `input` is `[c, h, w]`, `weight`
/// `[c, kh·kw]`, `out` `[c, oh, ow]`; the epilogue's bias is per channel and
/// its residual is laid out like `out`. `scratch` is reused across calls.
///
/// # Panics
///
/// If a slice is shorter than the geometry needs.
pub fn depthwise(
    isa: Isa,
    g: &DwGeometry,
    input: &[f32],
    weight: &[f32],
    ep: &Epilogue<'_>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (in_plane, out_plane, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    assert!(input.len() >= g.c * in_plane, "depthwise: input too short");
    assert!(weight.len() >= g.c * taps, "depthwise: weight too short");
    assert!(out.len() >= g.c * out_plane, "depthwise: out too short");
    if let Some(b) = ep.bias {
        assert!(b.len() >= g.c, "depthwise: bias too short");
    }
    if let Some(r) = ep.residual {
        assert!(r.len() >= g.c * out_plane, "depthwise: residual too short");
    }
    let need = g.scratch_len();
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let isa = isa.usable();
    let (tap_off, row_step) = tap_offsets(g);
    for ch in 0..g.c {
        let pad = &mut scratch[..need];
        fill_padded(isa, g, &input[ch * in_plane..][..in_plane], pad);
        let plane = Plane {
            g,
            pad,
            taps: &weight[ch * taps..][..taps],
            tap_off: &tap_off,
            row_step,
            bias: ep.bias.map_or(0.0, |b| b[ch]),
            residual: ep.residual.map(|r| &r[ch * out_plane..][..out_plane]),
            lo: ep.lo,
            hi: ep.hi,
        };
        let dst = &mut out[ch * out_plane..][..out_plane];
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F is present (`usable`); `Plane` spans are checked
            // by construction (see `avx512::plane`).
            Isa::Avx512 => unsafe { avx512::plane(&plane, dst) },
            _ => portable_plane(&plane, dst),
        }
    }
}

/// Copies one input plane into the padded, phase-split scratch.
fn fill_padded(isa: Isa, g: &DwGeometry, src: &[f32], pad: &mut [f32]) {
    let (sx, len) = (g.stride[1], g.phase_len());
    #[cfg(target_arch = "x86_64")]
    if sx == 2 && isa == Isa::Avx512 {
        // SAFETY: AVX-512F is present (the caller passed a `usable` ISA).
        unsafe { avx512::fill_stride2(g, src, pad) };
        return;
    }
    let _ = isa;
    for (py, prow) in pad.chunks_exact_mut(sx * len).enumerate() {
        let iy = py.checked_sub(g.pad.top).filter(|&iy| iy < g.h);
        let Some(iy) = iy else {
            prow.fill(0.0);
            continue;
        };
        let srow = &src[iy * g.w..][..g.w];
        for (p, phase) in prow.chunks_exact_mut(len).enumerate() {
            // Padded column of index i is i·sx + p; input column is that - left.
            let first = |col: usize| (col.saturating_sub(p)).div_ceil(sx).min(len);
            let lo = first(g.pad.left);
            let hi = first(g.pad.left + g.w).max(lo);
            phase[..lo].fill(0.0);
            phase[hi..].fill(0.0);
            if hi == lo {
                continue;
            }
            let x0 = lo * sx + p - g.pad.left;
            if sx == 1 {
                phase[lo..hi].copy_from_slice(&srow[x0..x0 + (hi - lo)]);
            } else {
                for (d, &s) in phase[lo..hi].iter_mut().zip(srow[x0..].iter().step_by(sx)) {
                    *d = s;
                }
            }
        }
    }
}

/// One channel, ready to convolve.
struct Plane<'a> {
    g: &'a DwGeometry,
    pad: &'a [f32],
    taps: &'a [f32],
    /// Scratch offset of each tap relative to the output row's base.
    tap_off: &'a [usize],
    /// Scratch distance between consecutive output rows.
    row_step: usize,
    bias: f32,
    residual: Option<&'a [f32]>,
    lo: f32,
    hi: f32,
}

/// Scratch offset of each tap (row-major over ky, kx) for output row 0,
/// column 0, and the scratch distance between output rows.
fn tap_offsets(g: &DwGeometry) -> (Vec<usize>, usize) {
    let (sx, len) = (g.stride[1], g.phase_len());
    let mut offs = Vec::with_capacity(g.kh * g.kw);
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let py = ky * g.dilation[0];
            let cx = kx * g.dilation[1];
            offs.push((py * sx + cx % sx) * len + cx / sx);
        }
    }
    (offs, g.stride[0] * sx * len)
}

fn portable_plane(p: &Plane<'_>, out: &mut [f32]) {
    let g = p.g;
    for oy in 0..g.oh {
        let row = oy * p.row_step;
        for x0 in (0..g.ow).step_by(LANES) {
            let mut acc = [p.bias; LANES];
            for (&w, &off) in p.taps.iter().zip(p.tap_off) {
                let src = &p.pad[row + off + x0..][..LANES];
                for (a, &s) in acc.iter_mut().zip(src) {
                    *a += w * s;
                }
            }
            let n = (g.ow - x0).min(LANES);
            let base = oy * g.ow + x0;
            for (j, &a) in acc.iter().enumerate().take(n) {
                let mut v = a;
                if let Some(r) = p.residual {
                    v += r[base + j];
                }
                let v = if v < p.lo { p.lo } else { v };
                out[base + j] = if v > p.hi { p.hi } else { v };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{DwGeometry, LANES, Plane};

    /// The stride-2 fill of `fill_padded`: zero rows and borders, and the
    /// input columns split into even (phase 0) and odd (phase 1) padded
    /// columns, 32 at a time with two permutes.
    ///
    /// # Safety
    ///
    /// AVX-512F; `src` holds `h·w` and `pad` `scratch_len()` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fill_stride2(g: &DwGeometry, src: &[f32], pad: &mut [f32]) {
        let len = g.phase_len();
        let even_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd_idx = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let split_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        for (py, prow) in pad.chunks_exact_mut(2 * len).enumerate() {
            prow.fill(0.0);
            let Some(iy) = py.checked_sub(g.pad.top).filter(|&iy| iy < g.h) else {
                continue;
            };
            let srow = &src[iy * g.w..][..g.w];
            let (ph0, ph1) = prow.split_at_mut(len);
            // Padded column j = x + left goes to phase j % 2, index j / 2.
            let left = g.pad.left;
            let mut x = 0;
            // Vector part: needs an even padded start so pairs stay aligned,
            // and its writes (16 per phase) must stay inside the phase rows.
            if left.is_multiple_of(2) {
                let base = left / 2;
                while x + 32 <= g.w && base + x / 2 + 16 <= len {
                    // SAFETY: x + 32 <= w reads inside `srow`; the two stores
                    // write indices base + x/2 .. +16 < len of each phase.
                    unsafe {
                        let a = _mm512_loadu_ps(srow.as_ptr().add(x));
                        let b = _mm512_loadu_ps(srow.as_ptr().add(x + 16));
                        let ev = _mm512_permutex2var_ps(a, even_idx, b);
                        let od = _mm512_permutex2var_ps(a, odd_idx, b);
                        _mm512_storeu_ps(ph0.as_mut_ptr().add(base + x / 2), ev);
                        _mm512_storeu_ps(ph1.as_mut_ptr().add(base + x / 2), od);
                    }
                    x += 32;
                }
                // The 16 columns a narrow plane (16, 24 or 31 wide: the late layers of small
                // networks) has left, with one permute; its two 8-wide halves are the phases.
                if x + 16 <= g.w && base + x / 2 + 8 <= len {
                    // SAFETY: x + 16 <= w reads inside `srow`; each 8-lane store writes
                    // indices base + x/2 .. +8 <= len of its phase.
                    unsafe {
                        let a = _mm512_loadu_ps(srow.as_ptr().add(x));
                        let split = _mm512_permutexvar_ps(split_idx, a);
                        _mm256_storeu_ps(
                            ph0.as_mut_ptr().add(base + x / 2),
                            _mm512_castps512_ps256(split),
                        );
                        _mm256_storeu_ps(
                            ph1.as_mut_ptr().add(base + x / 2),
                            // The upper half (AVX-512F only: extractf32x8 would need DQ).
                            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(split))),
                        );
                    }
                    x += 16;
                }
            }
            for (xx, &v) in srow.iter().enumerate().skip(x) {
                let j = xx + left;
                let i = j / 2;
                if i < len {
                    if j.is_multiple_of(2) {
                        ph0[i] = v;
                    } else {
                        ph1[i] = v;
                    }
                }
            }
        }
    }

    /// # Safety
    ///
    /// AVX-512F. `p.pad` holds `scratch_len()` floats, `p.taps` `kh·kw`,
    /// `out` and `p.residual` `oh·ow`: then every full load
    /// `offset(oy, ky, kx) + x0 .. + 16` stays inside the scratch (phase rows
    /// are padded to a multiple of 16 plus the tap reach) and the stores and
    /// residual loads are masked to the row.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn plane(p: &Plane<'_>, out: &mut [f32]) {
        let g = p.g;
        assert!(p.pad.len() >= g.scratch_len() && out.len() >= g.oh * g.ow);
        let lo = _mm512_set1_ps(p.lo);
        let hi = _mm512_set1_ps(p.hi);
        let bias = _mm512_set1_ps(p.bias);
        assert_eq!(p.taps.len(), p.tap_off.len());
        let pad = p.pad.as_ptr();
        for oy in 0..g.oh {
            let row = oy * p.row_step;
            let mut x0 = 0;
            while x0 < g.ow {
                let n = (g.ow - x0).min(LANES);
                let mask: __mmask16 = if n == LANES { 0xffff } else { (1u16 << n) - 1 };
                let mut acc = bias;
                for (&w, &off) in p.taps.iter().zip(p.tap_off) {
                    // SAFETY: see the function contract.
                    unsafe {
                        let s = _mm512_loadu_ps(pad.add(row + off + x0));
                        acc = _mm512_fmadd_ps(_mm512_set1_ps(w), s, acc);
                    }
                }
                let base = oy * g.ow + x0;
                // SAFETY: masked to the `n` columns left in this row.
                unsafe {
                    if let Some(r) = p.residual {
                        acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, r.as_ptr().add(base)));
                    }
                    acc = _mm512_min_ps(hi, _mm512_max_ps(lo, acc));
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(base), mask, acc);
                }
                x0 += LANES;
            }
        }
    }
}

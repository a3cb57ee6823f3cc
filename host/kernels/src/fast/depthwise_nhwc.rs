//! Depthwise convolution on channels-last (NHWC) images.
//!
//! With channels innermost, one 16-lane vector holds 16 channels of one
//! pixel, and every tap is one FMA of an input vector by that tap's weight
//! vector: no padding copy, no gathers, no lane waste on small images (a
//! 7×7 plane is as efficient as a 112×112 one). Output pixels whose window
//! lies inside the image run four at a time without bounds tests; only the
//! border columns test each tap.

use super::{DwGeometry, Epilogue, Isa};

#[cfg(target_arch = "x86_64")]
const LANES: usize = 16;

/// Weights `[c, kh·kw]` (ONNX order) rearranged tap-major, `[kh·kw, c]`, the
/// layout [`depthwise_nhwc`] reads.
pub fn depthwise_nhwc_weights(weight: &[f32], c: usize, taps: usize) -> Vec<f32> {
    let mut out = vec![0f32; c * taps];
    super::transpose(weight, c, taps, &mut out);
    out
}

/// Depthwise convolution of one image: `input` is `[h, w, c]`, `weight`
/// `[kh·kw, c]` (see [`depthwise_nhwc_weights`]), `out` `[oh, ow, c]`; the
/// epilogue's bias is per channel and its residual is laid out like `out`.
///
/// # Panics
///
/// If a slice is shorter than the geometry needs.
pub fn depthwise_nhwc(
    isa: Isa,
    g: &DwGeometry,
    input: &[f32],
    weight: &[f32],
    ep: &Epilogue<'_>,
    out: &mut [f32],
) {
    let taps = g.kh * g.kw;
    assert!(input.len() >= g.h * g.w * g.c, "depthwise: input too short");
    assert!(weight.len() >= taps * g.c, "depthwise: weight too short");
    assert!(out.len() >= g.oh * g.ow * g.c, "depthwise: out too short");
    if let Some(b) = ep.bias {
        assert!(b.len() >= g.c, "depthwise: bias too short");
    }
    if let Some(r) = ep.residual {
        assert!(
            r.len() >= g.oh * g.ow * g.c,
            "depthwise: residual too short"
        );
    }
    match isa.usable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present (`usable`) and the kernel covers `g`; the
        // asserts above cover every pixel and channel it touches.
        Isa::Avx512 if super::depthwise_slab::covers(g) => unsafe {
            super::depthwise_slab::run(g, input, weight, ep, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present (`usable`); the asserts above cover every
        // pixel and channel the kernel touches (see `avx512::run`).
        Isa::Avx512 => unsafe { avx512::run(g, &Columns::new(g), input, weight, ep, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if let Some(s) = super::simd::Avx2::new() => {
            let cols = Columns::new(g);
            // SAFETY: the asserts above cover every pixel and channel the
            // kernel touches; `cols` is computed from `g`.
            unsafe {
                super::generic::depthwise_nhwc(s, g, cols.lo, cols.hi, input, weight, ep, out)
            }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if let Some(s) = super::simd::Neon::new() => {
            let cols = Columns::new(g);
            // SAFETY: as for AVX2.
            unsafe {
                super::generic::depthwise_nhwc(s, g, cols.lo, cols.hi, input, weight, ep, out)
            }
        }
        _ => portable(g, input, weight, ep, out),
    }
}

/// Output columns `lo..hi` have every tap inside the image horizontally.
struct Columns {
    lo: usize,
    hi: usize,
}

impl Columns {
    fn new(g: &DwGeometry) -> Columns {
        let [_, sx] = g.stride;
        let reach = (g.kw - 1) * g.dilation[1];
        let lo = g.pad.left.div_ceil(sx).min(g.ow);
        // Largest ox with ox·sx - left + reach < w, plus one.
        let hi = (g.w + g.pad.left)
            .checked_sub(reach + 1)
            .map_or(0, |last| last / sx + 1)
            .clamp(lo, g.ow);
        Columns { lo, hi }
    }
}

/// Input rows (and their tap index `ky`) that output row `oy` reads.
pub(super) fn rows_of(g: &DwGeometry, oy: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    (0..g.kh).filter_map(move |ky| {
        (oy * g.stride[0] + ky * g.dilation[0])
            .checked_sub(g.pad.top)
            .filter(|&iy| iy < g.h)
            .map(|iy| (ky, iy))
    })
}

/// Input column of tap `kx` for output column `ox`, if inside the image.
#[inline(always)]
pub(super) fn col_of(g: &DwGeometry, ox: usize, kx: usize) -> Option<usize> {
    (ox * g.stride[1] + kx * g.dilation[1])
        .checked_sub(g.pad.left)
        .filter(|&ix| ix < g.w)
}

fn portable(g: &DwGeometry, input: &[f32], weight: &[f32], ep: &Epilogue<'_>, out: &mut [f32]) {
    let c = g.c;
    let mut acc = vec![0f32; c];
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            match ep.bias {
                Some(b) => acc.copy_from_slice(&b[..c]),
                None => acc.fill(0.0),
            }
            for (ky, iy) in rows_of(g, oy) {
                for kx in 0..g.kw {
                    let Some(ix) = col_of(g, ox, kx) else {
                        continue;
                    };
                    let x = &input[(iy * g.w + ix) * c..][..c];
                    let w = &weight[(ky * g.kw + kx) * c..][..c];
                    for ((a, &xv), &wv) in acc.iter_mut().zip(x).zip(w) {
                        *a += xv * wv;
                    }
                }
            }
            let base = (oy * g.ow + ox) * c;
            let dst = &mut out[base..][..c];
            for (j, d) in dst.iter_mut().enumerate() {
                let mut v = acc[j];
                if let Some(r) = ep.residual {
                    v += r[base + j];
                }
                *d = ep.clamp(v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Columns, DwGeometry, Epilogue, LANES, col_of, rows_of};

    /// Output pixels computed together in the interior.
    const PX: usize = 4;

    /// One output row's channel block: what every pixel of it shares.
    struct Block<'a> {
        g: &'a DwGeometry,
        input: *const f32,
        /// Weights of tap 0 at this block's first channel.
        w: *const f32,
        out: *mut f32,
        residual: Option<*const f32>,
        /// `(ky, iy)` of the input rows inside the image.
        rows: &'a [(usize, usize)],
        oy: usize,
        /// Offset of this output row's first pixel, this block's first channel.
        obase: usize,
        c0: usize,
        mask: __mmask16,
        bias: __m512,
        lo: __m512,
        hi: __m512,
    }

    /// # Safety
    ///
    /// AVX-512F; the slices cover the spans `depthwise_nhwc` asserts.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run(
        g: &DwGeometry,
        cols: &Columns,
        input: &[f32],
        weight: &[f32],
        ep: &Epilogue<'_>,
        out: &mut [f32],
    ) {
        let c = g.c;
        let mut rows: Vec<(usize, usize)> = Vec::with_capacity(g.kh);
        for oy in 0..g.oh {
            rows.clear();
            rows.extend(rows_of(g, oy));
            for c0 in (0..c).step_by(LANES) {
                let n = (c - c0).min(LANES);
                let mask: __mmask16 = if n == LANES { 0xffff } else { (1u16 << n) - 1 };
                let b = Block {
                    g,
                    input: input.as_ptr(),
                    w: weight.as_ptr().wrapping_add(c0),
                    out: out.as_mut_ptr(),
                    residual: ep.residual.map(|r| r.as_ptr()),
                    rows: &rows,
                    oy,
                    obase: oy * g.ow * c + c0,
                    c0,
                    mask,
                    bias: match ep.bias {
                        // SAFETY: channels `c0..c0+n` of the bias (masked tail).
                        Some(bv) => unsafe { _mm512_maskz_loadu_ps(mask, bv.as_ptr().add(c0)) },
                        None => _mm512_setzero_ps(),
                    },
                    lo: _mm512_set1_ps(ep.lo),
                    hi: _mm512_set1_ps(ep.hi),
                };
                // SAFETY: every pixel is inside the output and every tap read
                // is inside the image (`rows_of`, `col_of`, `Columns`); only
                // the block's `n` channel lanes are touched.
                unsafe {
                    match (g.kh, g.kw) {
                        (3, 3) => row_fixed::<3, 3>(&b, cols),
                        (5, 5) => row_fixed::<5, 5>(&b, cols),
                        _ => row_any(&b, cols),
                    }
                }
            }
        }
    }

    /// One output row's block, any kernel size.
    ///
    /// # Safety
    ///
    /// As `run`'s.
    #[target_feature(enable = "avx512f")]
    unsafe fn row_any(b: &Block<'_>, cols: &Columns) {
        let g = b.g;
        // SAFETY: as the caller's.
        unsafe {
            for ox in 0..cols.lo {
                border(b, ox);
            }
            let mut ox = cols.lo;
            while ox + PX <= cols.hi {
                interior(b, ox);
                ox += PX;
            }
            for ox in ox..g.ow {
                border(b, ox);
            }
        }
    }

    /// Bias was the accumulator's start; adds the residual, clamps, stores.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn finish(b: &Block<'_>, acc: __m512, ox: usize) {
        let o = b.obase + ox * b.g.c;
        // SAFETY: pixel `ox` of the block's row, its `n` lanes (caller).
        unsafe {
            let mut y = acc;
            if let Some(r) = b.residual {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(b.mask, r.add(o)));
            }
            y = _mm512_min_ps(b.hi, _mm512_max_ps(b.lo, y));
            _mm512_mask_storeu_ps(b.out.add(o), b.mask, y);
        }
    }

    /// One output pixel, testing each tap against the image's edges.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn border(b: &Block<'_>, ox: usize) {
        let g = b.g;
        let mut acc = b.bias;
        for &(ky, iy) in b.rows {
            for kx in 0..g.kw {
                if let Some(ix) = col_of(g, ox, kx) {
                    // SAFETY: (iy, ix) is inside the image.
                    unsafe {
                        let x = _mm512_maskz_loadu_ps(
                            b.mask,
                            b.input.add((iy * g.w + ix) * g.c + b.c0),
                        );
                        let w = _mm512_maskz_loadu_ps(b.mask, b.w.add((ky * g.kw + kx) * g.c));
                        acc = _mm512_fmadd_ps(x, w, acc);
                    }
                }
            }
        }
        // SAFETY: as the caller's.
        unsafe { finish(b, acc, ox) };
    }

    /// One output row's block for a `KH × KW` kernel: the taps' weights stay
    /// in registers for the whole row, rows outside the image load nothing
    /// (an empty mask), so every row has the same code; interior pixels go
    /// `PX` at a time and border pixels mask each column.
    ///
    /// # Safety
    ///
    /// As `run`'s.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn row_fixed<const KH: usize, const KW: usize>(b: &Block<'_>, cols: &Columns) {
        let g = b.g;
        let c = g.c;
        let xs = g.stride[1] * c;
        let xd = g.dilation[1] * c;
        let mut w = [[_mm512_setzero_ps(); KW]; KH];
        // Each row's base at channel c0 and its load mask: empty for a row
        // outside the image, whose base is then row 0 (in bounds, never read).
        let mut xrow = [(b.input, 0 as __mmask16); KH];
        for (ky, (wr, xr)) in w.iter_mut().zip(xrow.iter_mut()).enumerate() {
            let iy = (b.oy * g.stride[0] + ky * g.dilation[0])
                .checked_sub(g.pad.top)
                .filter(|&iy| iy < g.h);
            if let Some(iy) = iy {
                *xr = (b.input.wrapping_add(iy * g.w * c + b.c0), b.mask);
            }
            for (kx, wv) in wr.iter_mut().enumerate() {
                // SAFETY: tap (ky, kx) of the block's channels (masked tail).
                *wv = unsafe { _mm512_maskz_loadu_ps(b.mask, b.w.add((ky * KW + kx) * c)) };
            }
        }
        // One pixel, any column: a tap outside the image loads nothing (its
        // mask is empty; masked-off lanes are never accessed), so there is no
        // branch per tap.
        let pixel = |ox: usize| {
            let mut acc = b.bias;
            let base = (ox * g.stride[1]) as isize - g.pad.left as isize;
            for (wr, &(xr, row_mask)) in w.iter().zip(&xrow) {
                for (kx, &wv) in wr.iter().enumerate() {
                    let ix = base + (kx * g.dilation[1]) as isize;
                    let inside = ix >= 0 && (ix as usize) < g.w;
                    let mask = if inside { row_mask } else { 0 };
                    // SAFETY: with a non-empty mask, column ix of a row inside
                    // the image; with an empty one, no access.
                    let x =
                        unsafe { _mm512_maskz_loadu_ps(mask, xr.wrapping_offset(ix * c as isize)) };
                    acc = _mm512_fmadd_ps(x, wv, acc);
                }
            }
            acc
        };
        for ox in 0..cols.lo {
            // SAFETY: as the caller's.
            unsafe { finish(b, pixel(ox), ox) };
        }
        let mut ox = cols.lo;
        while ox + PX <= cols.hi {
            let x0 = (ox * g.stride[1] - g.pad.left) * c;
            let mut acc = [b.bias; PX];
            for (wr, &(xr, row_mask)) in w.iter().zip(&xrow) {
                for (kx, &wv) in wr.iter().enumerate() {
                    let xp = xr.wrapping_add(x0 + kx * xd);
                    for (p, a) in acc.iter_mut().enumerate() {
                        // SAFETY: every tap of pixels `ox..ox+PX` is inside
                        // the image horizontally (`Columns`); a row outside
                        // it has an empty mask and is not accessed.
                        let x = unsafe { _mm512_maskz_loadu_ps(row_mask, xp.wrapping_add(p * xs)) };
                        *a = _mm512_fmadd_ps(x, wv, *a);
                    }
                }
            }
            for (p, &a) in acc.iter().enumerate() {
                // SAFETY: as the caller's.
                unsafe { finish(b, a, ox + p) };
            }
            ox += PX;
        }
        for ox in ox..g.ow {
            // SAFETY: as the caller's.
            unsafe { finish(b, pixel(ox), ox) };
        }
    }

    /// `PX` output pixels from `ox` whose taps are all inside the image
    /// horizontally.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn interior(b: &Block<'_>, ox: usize) {
        let g = b.g;
        let c = g.c;
        let xs = g.stride[1] * c;
        let xd = g.dilation[1] * c;
        let mut acc = [b.bias; PX];
        let x0 = ox * g.stride[1] - g.pad.left;
        for &(ky, iy) in b.rows {
            let xrow = b.input.wrapping_add((iy * g.w + x0) * c + b.c0);
            let wrow = b.w.wrapping_add(ky * g.kw * c);
            for kx in 0..g.kw {
                // SAFETY: taps of pixels `ox..ox+PX` are inside the image.
                unsafe {
                    let w = _mm512_maskz_loadu_ps(b.mask, wrow.add(kx * c));
                    let xp = xrow.add(kx * xd);
                    for (p, a) in acc.iter_mut().enumerate() {
                        let x = _mm512_maskz_loadu_ps(b.mask, xp.add(p * xs));
                        *a = _mm512_fmadd_ps(x, w, *a);
                    }
                }
            }
        }
        for (p, &a) in acc.iter().enumerate() {
            // SAFETY: as the caller's.
            unsafe { finish(b, a, ox + p) };
        }
    }
}

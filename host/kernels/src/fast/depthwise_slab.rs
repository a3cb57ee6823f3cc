//! Depthwise 3×3 (stride 1) and 5×5 (stride 1 or 2) convolution on small
//! channels-last images, the AVX-512 kernel for the late layers of
//! MobileNet-class networks.
//!
//! Reading taps straight from an NHWC image puts `c` floats between pixels, a
//! stride known only at run time, so every (pixel, tap) load needs its own
//! address register: with 8 pixels in flight the compiler spills addresses
//! and the kernel ran at ~20 % of peak whatever the loop order. Instead each
//! block of 16 channels is first copied into a zero-padded slab, `[rows]
//! [cols][16]`, as MLAS and XNNPACK do: pixels are then 64 bytes apart, every
//! tap of a strip of pixels is a constant displacement from one row pointer,
//! and padding is just zeros, so border pixels run the same code as interior
//! ones. The copy is one load and store per pixel and block, against 9 or 25
//! FMAs.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::{DwGeometry, Epilogue};

const LANES: usize = 16;

/// Output pixels of one row computed together: enough independent FMA chains
/// to cover the FMA latency, few enough to keep accumulators, a weight and an
/// input in registers.
const STRIP: usize = 8;

/// The widest output rows this kernel takes (see [`covers`]).
const MAX_WIDTH: usize = 32;

/// Vectors of 16 channels one band's slab holds at most (128 KiB): in L2 with
/// the band's input and output.
const SLAB_VECTORS: usize = 2048;

/// Whether [`run`] handles this geometry.
///
/// Only where the copy pays. On images wider than [`MAX_WIDTH`] it streams a
/// large image through L2 once more, and the direct kernel, whose per-row
/// costs are spread over many pixels, is faster (3×3 c144 56×56: 39 against
/// 49 GFLOP/s; at 28×28 the slab wins, 70 against 55). A 3×3 window at stride
/// 2 copies four input pixels per output pixel for only 9 FMAs, which made
/// MobileNetV2's stride-2 blocks slower.
pub(super) fn covers(g: &DwGeometry) -> bool {
    let square = g.kh == g.kw && g.stride[0] == g.stride[1] && g.dilation == [1, 1];
    square && g.ow <= MAX_WIDTH && matches!((g.kh, g.stride[0]), (3, 1) | (5, 1) | (5, 2))
}

thread_local! {
    /// The slab, reused by each thread: a call per band must not pay for
    /// allocating it.
    static SLAB: RefCell<Vec<__m512>> = const { RefCell::new(Vec::new()) };
}

/// Depthwise convolution of one image; the arguments as for
/// `depthwise_nhwc`, whose asserts this relies on.
///
/// # Safety
///
/// AVX-512F; [`covers`]`(g)`; the slices cover the spans `depthwise_nhwc`
/// asserts.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn run(
    g: &DwGeometry,
    input: &[f32],
    weight: &[f32],
    ep: &Epilogue<'_>,
    out: &mut [f32],
) {
    // `DwGeometry::new` never gives an empty output, but the fields are public.
    if g.oh == 0 || g.ow == 0 {
        return;
    }
    // SAFETY: as the caller's; each arm's constants match `g`.
    unsafe {
        match (g.kh, g.stride[0]) {
            (3, 1) => run_fixed::<3, 1>(g, input, weight, ep, out),
            (5, 1) => run_fixed::<5, 1>(g, input, weight, ep, out),
            (5, 2) => run_fixed::<5, 2>(g, input, weight, ep, out),
            _ => unreachable!("covers() admits only these"),
        }
    }
}

/// `K × K` taps at stride `S`.
///
/// # Safety
///
/// As [`run`]'s, with `g.kh == g.kw == K` and `g.stride == [S, S]`.
#[target_feature(enable = "avx512f")]
unsafe fn run_fixed<const K: usize, const S: usize>(
    g: &DwGeometry,
    input: &[f32],
    weight: &[f32],
    ep: &Epilogue<'_>,
    out: &mut [f32],
) {
    let c = g.c;
    // A band of output rows at a time; its slab holds every input row and
    // column the band reads, padding included: output (oy, ox) reads slab
    // rows (oy - oy0)·S.. and columns ox·S... Bands keep the slab in L2 next
    // to the image and output; the rows two bands share are copied twice.
    let cols = (g.ow - 1) * S + K;
    let band = ((SLAB_VECTORS / cols).saturating_sub(K) / S + 1).clamp(1, g.oh);
    let rows = (band - 1) * S + K;
    SLAB.with(|slab| {
        let mut slab = slab.borrow_mut();
        if slab.len() < rows * cols {
            slab.resize(rows * cols, _mm512_setzero_ps());
        }
        let lo = _mm512_set1_ps(ep.lo);
        let hi = _mm512_set1_ps(ep.hi);
        for oy0 in (0..g.oh).step_by(band) {
            let oy1 = (oy0 + band).min(g.oh);
            let rows = (oy1 - oy0 - 1) * S + K;
            let slab = &mut slab[..rows * cols];
            for c0 in (0..c).step_by(LANES) {
                let n = (c - c0).min(LANES);
                let mask: __mmask16 = if n == LANES { 0xffff } else { (1u16 << n) - 1 };
                // SAFETY: the block's channels of the image (masked tail).
                unsafe { fill(g, input, c0, mask, oy0 * S, slab, cols) };
                // Masked-off lanes of the weights are zero, so a tail block's
                // extra lanes compute zeros that are never stored.
                let mut taps = [_mm512_setzero_ps(); 25];
                for (t, tap) in taps.iter_mut().take(K * K).enumerate() {
                    // SAFETY: tap t of the block's channels (masked tail).
                    *tap = unsafe { _mm512_maskz_loadu_ps(mask, weight.as_ptr().add(t * c + c0)) };
                }
                let bias = match ep.bias {
                    // SAFETY: the block's channels of the bias (masked tail).
                    Some(b) => unsafe { _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c0)) },
                    None => _mm512_setzero_ps(),
                };
                let mut store = |acc: __m512, pixel: usize| {
                    let o = pixel * c + c0;
                    // SAFETY: pixel < oh·ow, its block's lanes (masked tail).
                    unsafe {
                        let mut y = acc;
                        if let Some(r) = ep.residual {
                            y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, r.as_ptr().add(o)));
                        }
                        y = _mm512_min_ps(hi, _mm512_max_ps(lo, y));
                        _mm512_mask_storeu_ps(out.as_mut_ptr().add(o), mask, y);
                    }
                };
                for oy in oy0..oy1 {
                    let row = slab[(oy - oy0) * S * cols..].as_ptr();
                    let first = oy * g.ow;
                    let mut at = |ox: usize, acc: __m512| store(acc, first + ox);
                    // Strips of STRIP, then of 4, 2 and 1 for the rest of the row.
                    // SAFETY (every strip): pixels ox.. of row oy read slab
                    // rows (oy - oy0)·S.. +K and columns ox·S..(ox+N-1)·S+K,
                    // all inside the slab by its size.
                    let mut ox = 0;
                    while ox + STRIP <= g.ow {
                        // SAFETY: as above, for STRIP pixels from ox.
                        ox +=
                            unsafe { strip_to::<K, S, STRIP>(row, ox, cols, &taps, bias, &mut at) };
                    }
                    if g.ow - ox >= 4 {
                        // SAFETY: as above, for 4 pixels from ox.
                        ox += unsafe { strip_to::<K, S, 4>(row, ox, cols, &taps, bias, &mut at) };
                    }
                    if g.ow - ox >= 2 {
                        // SAFETY: as above, for 2 pixels from ox.
                        ox += unsafe { strip_to::<K, S, 2>(row, ox, cols, &taps, bias, &mut at) };
                    }
                    if ox < g.ow {
                        // SAFETY: as above, for the last pixel.
                        unsafe { strip_to::<K, S, 1>(row, ox, cols, &taps, bias, &mut at) };
                    }
                }
            }
        }
    });
}

/// Copies channels `c0..` (lanes `mask`) of the padded image's rows `sy0..`
/// into the slab, zeros where the window reaches past the image.
///
/// # Safety
///
/// AVX-512F; `input` covers the image.
#[target_feature(enable = "avx512f")]
unsafe fn fill(
    g: &DwGeometry,
    input: &[f32],
    c0: usize,
    mask: __mmask16,
    sy0: usize,
    slab: &mut [__m512],
    cols: usize,
) {
    let zero = _mm512_setzero_ps();
    for (i, line) in slab.chunks_exact_mut(cols).enumerate() {
        let Some(iy) = (sy0 + i).checked_sub(g.pad.top).filter(|&iy| iy < g.h) else {
            line.fill(zero);
            continue;
        };
        let left = g.pad.left.min(cols);
        let right = (g.pad.left + g.w).min(cols);
        line[..left].fill(zero);
        let src = input[(iy * g.w) * g.c + c0..].as_ptr();
        for (ix, v) in line[left..right].iter_mut().enumerate() {
            // SAFETY: pixel (iy, ix) of the image, the block's lanes.
            *v = unsafe { _mm512_maskz_loadu_ps(mask, src.add(ix * g.c)) };
        }
        line[right..].fill(zero);
    }
}

/// [`strip`] at output column `ox` of the slab row `row`, each of its `N`
/// pixels handed to `store` with its column; returns `N`.
///
/// # Safety
///
/// As [`strip`]'s.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn strip_to<const K: usize, const S: usize, const N: usize>(
    row: *const __m512,
    ox: usize,
    cols: usize,
    taps: &[__m512; 25],
    bias: __m512,
    store: &mut impl FnMut(usize, __m512),
) -> usize {
    // SAFETY: as the caller's.
    let acc = unsafe { strip::<K, S, N>(row.wrapping_add(ox * S), cols, taps, bias) };
    for (p, a) in acc.into_iter().enumerate() {
        store(ox + p, a);
    }
    N
}

/// `N` output pixels of one row: `row` points at the slab column of the first
/// pixel's window in the window's top row, `cols` is the slab's width.
///
/// # Safety
///
/// AVX-512F; the windows lie inside the slab.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn strip<const K: usize, const S: usize, const N: usize>(
    row: *const __m512,
    cols: usize,
    taps: &[__m512; 25],
    bias: __m512,
) -> [__m512; N] {
    let mut acc = [bias; N];
    // A loop the compiler cannot unroll: unrolled, it laid out each pixel's
    // K·K dependent FMAs one chain after another, too long for the
    // out-of-order window to overlap; a row at a time interleaves the pixels.
    for ky in 0..std::hint::black_box(K) {
        // SAFETY: as the caller's.
        let r = unsafe { row.add(ky * cols) };
        for kx in 0..K {
            let w = taps[ky * K + kx];
            for (p, a) in acc.iter_mut().enumerate() {
                // SAFETY: as the caller's; the slab is 64-byte aligned.
                let x = unsafe { _mm512_load_ps(r.add(p * S + kx) as *const f32) };
                *a = _mm512_fmadd_ps(x, w, *a);
            }
        }
    }
    acc
}

//! Int8 depthwise convolution on channels-last (NHWC) `u8` images.
//!
//! A depthwise tap is one multiply per channel with nothing to reduce along
//! channels, so `vpdpbusd`'s four-way sum does not fit; instead 16 channels
//! of a pixel are widened to `i32` lanes and multiplied by the tap's widened
//! weights with `vpdpbusd` (see `avx512::pixels`), exact in `i32`; the zero
//! point comes off once per output, as `z · Σ w` over the taps in the image.
//! Taps outside the image are skipped: a padded pixel holds the zero point,
//! real value 0.

use super::super::DwGeometry;
use super::{Isa, Requant, use_vnni};

#[cfg(target_arch = "x86_64")]
const LANES: usize = 16;

/// Weights `[c, kh·kw]` (ONNX order) rearranged tap-major, `[kh·kw, c]`, the
/// layout [`depthwise_u8`] reads.
///
/// # Panics
///
/// If `weight.len() != c * taps`.
pub fn depthwise_u8_weights(weight: &[i8], c: usize, taps: usize) -> Vec<i8> {
    assert_eq!(weight.len(), c * taps, "depthwise_u8_weights: length");
    let mut out = vec![0i8; c * taps];
    for ch in 0..c {
        for t in 0..taps {
            out[t * c + ch] = weight[ch * taps + t];
        }
    }
    out
}

/// Depthwise convolution of one image: `input` is `[h, w, c]` `u8` with zero
/// point `a_zero`, `weight` `[kh·kw, c]` (see [`depthwise_u8_weights`]),
/// `out` `[oh, ow, c]`, requantized per channel by `rq`.
///
/// # Panics
///
/// If a slice is shorter than the geometry needs, or `rq` has the wrong
/// number of scales or biases.
pub fn depthwise_u8(
    isa: Isa,
    g: &DwGeometry,
    input: &[u8],
    a_zero: u8,
    weight: &[i8],
    rq: &Requant<'_>,
    out: &mut [u8],
) {
    let taps = g.kh * g.kw;
    assert!(
        input.len() >= g.h * g.w * g.c,
        "depthwise_u8: input too short"
    );
    assert!(weight.len() >= taps * g.c, "depthwise_u8: weight too short");
    assert!(
        out.len() >= g.oh * g.ow * g.c,
        "depthwise_u8: out too short"
    );
    rq.check(g.c, "depthwise_u8");
    if use_vnni(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `use_vnni` checked AVX-512F/BW/VL/VNNI at run time; the asserts
        // above cover every pixel, tap and channel the kernel touches.
        unsafe {
            avx512::run(g, input, a_zero, weight, rq, out)
        };
        return;
    }
    portable(g, input, a_zero, weight, rq, out);
}

/// The taps `(ky range, kx range)` of output pixel `(oy, ox)` that land
/// inside the image, and the input pixel of tap (0, 0) (may be negative).
#[inline(always)]
fn window(g: &DwGeometry, oy: usize, ox: usize) -> ([usize; 2], [usize; 2], [isize; 2]) {
    let range = |o: usize, s: usize, pad: usize, d: usize, k: usize, size: usize| {
        let base = (o * s) as isize - pad as isize;
        // First tap with base + t·d >= 0, last with base + t·d < size.
        let first = if base >= 0 {
            0
        } else {
            ((-base) as usize).div_ceil(d)
        };
        let end = if base >= size as isize {
            0
        } else {
            ((size as isize - base - 1) as usize / d + 1).min(k)
        };
        ([first.min(end), end], base)
    };
    let (ky, by) = range(oy, g.stride[0], g.pad.top, g.dilation[0], g.kh, g.h);
    let (kx, bx) = range(ox, g.stride[1], g.pad.left, g.dilation[1], g.kw, g.w);
    (ky, kx, [by, bx])
}

fn portable(
    g: &DwGeometry,
    input: &[u8],
    a_zero: u8,
    weight: &[i8],
    rq: &Requant<'_>,
    out: &mut [u8],
) {
    let c = g.c;
    let za = i32::from(a_zero);
    let mut acc = vec![0i32; c];
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let (ky, kx, [by, bx]) = window(g, oy, ox);
            acc.fill(0);
            for ty in ky[0]..ky[1] {
                let y = (by + (ty * g.dilation[0]) as isize) as usize;
                for tx in kx[0]..kx[1] {
                    let x = (bx + (tx * g.dilation[1]) as isize) as usize;
                    let px = &input[(y * g.w + x) * c..][..c];
                    let wt = &weight[(ty * g.kw + tx) * c..][..c];
                    for ((s, &p), &wv) in acc.iter_mut().zip(px).zip(wt) {
                        *s += (i32::from(p) - za) * i32::from(wv);
                    }
                }
            }
            let o = &mut out[(oy * g.ow + ox) * c..][..c];
            for (ch, (dst, &s)) in o.iter_mut().zip(&acc).enumerate() {
                *dst = rq.quantize(ch, s);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{DwGeometry, LANES, Requant, window};

    /// What every pixel of a call shares.
    struct Ctx<'a> {
        g: &'a DwGeometry,
        inp: *const u8,
        wp: *const i8,
        outp: *mut u8,
        za: __m512i,
        rq: &'a Requant<'a>,
        bounds: super::super::simd::Bounds,
    }

    /// # Safety
    ///
    /// The CPU has AVX-512F/BW/VL/VNNI; `input`, `weight` and `out` are at
    /// least as long as `g` needs and `rq` was checked against `g.c`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn run(
        g: &DwGeometry,
        input: &[u8],
        a_zero: u8,
        weight: &[i8],
        rq: &Requant<'_>,
        out: &mut [u8],
    ) {
        let cx = Ctx {
            g,
            inp: input.as_ptr(),
            wp: weight.as_ptr(),
            outp: out.as_mut_ptr(),
            za: _mm512_set1_epi32(i32::from(a_zero)),
            rq,
            bounds: super::super::simd::Bounds::new(rq),
        };
        let full = [0, g.kw];
        let whole = |oy: usize, ox: usize, p: usize| {
            ox + p <= g.ow && window(g, oy, ox).1 == full && window(g, oy, ox + p - 1).1 == full
        };
        // 3-wide windows, undilated: a row of pixels loads each input pixel
        // once for the three taps that read it.
        let k3 = g.kw == 3 && g.dilation[1] == 1;
        for oy in 0..g.oh {
            let mut ox = 0;
            while ox < g.ow {
                if k3 && g.stride[1] == 1 && whole(oy, ox, 8) {
                    // SAFETY: pixels `ox..ox + 8` exist and their taps are
                    // inside the image horizontally; the caller's bounds hold.
                    unsafe { row_k3::<8, 1>(&cx, oy, ox) };
                    ox += 8;
                } else if k3 && g.stride[1] == 2 && whole(oy, ox, 4) {
                    // SAFETY: as above, for `ox..ox + 4`.
                    unsafe { row_k3::<4, 2>(&cx, oy, ox) };
                    ox += 4;
                } else if whole(oy, ox, 4) {
                    // Four output pixels whose windows are whole horizontally
                    // share each tap's weights; any other pixel runs alone.
                    // SAFETY: pixels `ox..ox + 4` exist and their taps are
                    // inside the image horizontally; the caller's bounds hold.
                    unsafe { pixels::<4>(&cx, oy, ox) };
                    ox += 4;
                } else {
                    // SAFETY: pixel `ox` exists; `window` bounds its taps.
                    unsafe { pixels::<1>(&cx, oy, ox) };
                    ox += 1;
                }
            }
        }
    }

    /// Channels `c0..c0 + 16` that exist.
    #[inline(always)]
    fn channel_mask(c: usize, c0: usize) -> __mmask16 {
        let cols = LANES.min(c - c0);
        if cols == LANES {
            !0
        } else {
            (1u16 << cols) - 1
        }
    }

    /// The bias of channels `c0..`, where the sums start.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    fn bias(cx: &Ctx<'_>, mask: __mmask16, c0: usize) -> __m512i {
        match cx.rq.bias {
            // SAFETY: `bias` has `c` values; the mask stops at `c`.
            Some(b) => unsafe { _mm512_maskz_loadu_epi32(mask, b.as_ptr().add(c0)) },
            None => _mm512_setzero_si512(),
        }
    }

    /// Channels `c0..` (as far as `mask`) of tap `tap`'s weights, sign-extended to `i32` lanes.
    ///
    /// # Safety
    ///
    /// As for [`run`]; `tap < kh·kw` and `mask` stops at `c`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tap_weights(cx: &Ctx<'_>, mask: __mmask16, tap: usize, c0: usize) -> __m512i {
        // SAFETY: the weights hold `kh·kw·c` bytes (the caller's bounds).
        let v = unsafe { _mm_maskz_loadu_epi8(mask, cx.wp.add(tap * cx.g.c + c0).cast()) };
        _mm512_cvtepi8_epi32(v)
    }

    /// Channels `c0..` (as far as `mask`) of input pixel `(y, x)`, zero-extended to `i32`
    /// lanes (the `u8` operand of `vpdpbusd`).
    ///
    /// # Safety
    ///
    /// As for [`run`]; `(y, x)` is inside the image and `mask` stops at `c`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn input_pixel(cx: &Ctx<'_>, mask: __mmask16, y: usize, x: usize, c0: usize) -> __m512i {
        let g = cx.g;
        // SAFETY: the input holds `h·w·c` bytes (the caller's bounds).
        let v = unsafe { _mm_maskz_loadu_epi8(mask, cx.inp.add((y * g.w + x) * g.c + c0).cast()) };
        _mm512_cvtepu8_epi32(v)
    }

    /// Takes the zero point's share (`a_zero · Σ w` over the taps used) off
    /// each pixel's sums, requantizes them and stores channels `c0..` of
    /// pixels `(oy, ox..ox + P)`.
    ///
    /// # Safety
    ///
    /// As for [`run`]; the pixels exist.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn store<const P: usize>(
        cx: &Ctx<'_>,
        acc: &[__m512i; P],
        wsum: __m512i,
        mask: __mmask16,
        c0: usize,
        oy: usize,
        ox: usize,
    ) {
        let (g, c) = (cx.g, cx.g.c);
        let zw = _mm512_mullo_epi32(wsum, cx.za);
        let scale = if cx.rq.scale.len() == 1 {
            _mm512_set1_ps(cx.rq.scale[0])
        } else {
            // SAFETY: `scale` has `c` values; the mask stops at `c`.
            unsafe { _mm512_maskz_loadu_ps(mask, cx.rq.scale.as_ptr().add(c0)) }
        };
        for (p, &a) in acc.iter().enumerate() {
            let q = cx.bounds.quantize(_mm512_sub_epi32(a, zw), scale);
            // SAFETY: pixel `(oy, ox + p)` of `out` has `c` bytes; the mask
            // stops at `c`.
            unsafe {
                _mm_mask_storeu_epi8(cx.outp.add((oy * g.ow + ox + p) * c + c0).cast(), mask, q)
            };
        }
    }

    /// Output pixels `(oy, ox..ox + P)` of a 3-wide undilated window with
    /// horizontal stride `S`, every channel: per kernel row, the
    /// `(P - 1)·S + 3` input pixels the row's taps read are loaded and
    /// widened once, not once per tap (`P + 2` instead of `3P` at stride 1).
    ///
    /// # Safety
    ///
    /// As for [`run`]; pixels `ox..ox + P` exist and their taps are inside
    /// the image horizontally.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn row_k3<const P: usize, const S: usize>(cx: &Ctx<'_>, oy: usize, ox: usize) {
        /// Input pixels of the widest row this is instantiated for.
        const MAX_SPAN: usize = 10;
        let span = (P - 1) * S + 3;
        debug_assert!(span <= MAX_SPAN);
        let g = cx.g;
        let c = g.c;
        let (ky, _, [by, bx]) = window(g, oy, ox);
        for c0 in (0..c).step_by(LANES) {
            let mask = channel_mask(c, c0);
            let mut acc = [bias(cx, mask, c0); P];
            let mut wsum = _mm512_setzero_si512();
            for ty in ky[0]..ky[1] {
                let y = (by + (ty * g.dilation[0]) as isize) as usize;
                let mut w = [_mm512_setzero_si512(); 3];
                for (tx, wt) in w.iter_mut().enumerate() {
                    // SAFETY: tap `ty·3 + tx` < taps.
                    *wt = unsafe { tap_weights(cx, mask, ty * 3 + tx, c0) };
                    wsum = _mm512_add_epi32(wsum, *wt);
                }
                let mut xs = [_mm512_setzero_si512(); MAX_SPAN];
                for (j, xv) in xs.iter_mut().enumerate().take(span) {
                    let x = (bx + j as isize) as usize;
                    // SAFETY: `(y, x)` is a tap of one of the pixels, inside
                    // the image (`window`, and the caller).
                    *xv = unsafe { input_pixel(cx, mask, y, x, c0) };
                }
                for (p, a) in acc.iter_mut().enumerate() {
                    for (tx, &wt) in w.iter().enumerate() {
                        // See `pixels` for why this is exactly `x · w`.
                        *a = _mm512_dpbusd_epi32(*a, xs[p * S + tx], wt);
                    }
                }
            }
            // SAFETY: pixels `(oy, ox..ox + P)` exist (the caller).
            unsafe { store(cx, &acc, wsum, mask, c0, oy, ox) };
        }
    }

    /// Output pixels `(oy, ox..ox + P)`, every channel. With `P > 1`, the
    /// taps of all `P` pixels are inside the image horizontally.
    ///
    /// # Safety
    ///
    /// As for [`run`], and the pixels exist.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn pixels<const P: usize>(cx: &Ctx<'_>, oy: usize, ox: usize) {
        let g = cx.g;
        let c = g.c;
        let (ky, kx, [by, bx]) = window(g, oy, ox);
        let sx = g.stride[1] as isize;
        for c0 in (0..c).step_by(LANES) {
            let mask = channel_mask(c, c0);
            let mut acc = [bias(cx, mask, c0); P];
            // `Σ (x - z)·w = Σ x·w - z·Σ w`: the taps' weight sum, once for
            // all `P` pixels, instead of a subtraction per pixel and tap.
            let mut wsum = _mm512_setzero_si512();
            for ty in ky[0]..ky[1] {
                let y = (by + (ty * g.dilation[0]) as isize) as usize;
                for tx in kx[0]..kx[1] {
                    // SAFETY: tap `ty·kw + tx` < taps.
                    let wv = unsafe { tap_weights(cx, mask, ty * g.kw + tx, c0) };
                    // `vpdpbusd` adds the four products of a lane's `u8`
                    // bytes of `x` and `s8` bytes of `w`: `x` is zero-extended
                    // (one byte, then three zeros), so whatever the weight's
                    // sign extension put in its upper bytes is multiplied by
                    // 0, and the lane gains exactly `x · w`. (Not `vpdpwssd`:
                    // LLVM's generic tuning splits it into two instructions.)
                    wsum = _mm512_add_epi32(wsum, wv);
                    for (p, a) in acc.iter_mut().enumerate() {
                        let x = (bx + p as isize * sx + (tx * g.dilation[1]) as isize) as usize;
                        // SAFETY: `(y, x)` is inside the image (`window`, and
                        // for `P > 1` the caller).
                        let px = unsafe { input_pixel(cx, mask, y, x, c0) };
                        *a = _mm512_dpbusd_epi32(*a, px, wv);
                    }
                }
            }
            // SAFETY: pixels `(oy, ox..ox + P)` exist (the caller).
            unsafe { store(cx, &acc, wsum, mask, c0, oy, ox) };
        }
    }
}

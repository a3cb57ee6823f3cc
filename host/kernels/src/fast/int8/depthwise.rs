//! Int8 depthwise convolution on channels-last (NHWC) `u8` images.
//!
//! A depthwise tap is one multiply per channel with nothing to reduce along
//! channels, so `vpdpbusd`'s four-way sum does not fit; instead 16 channels
//! of a pixel are widened to `i32` lanes, the zero point subtracted, and
//! multiplied by the tap's widened weights (`vpmulld`), exact in `i32`.
//! Taps outside the image are skipped: a padded pixel holds the zero point,
//! real value 0.

use super::super::DwGeometry;
use super::{Isa, Requant, use_vnni};

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
        // SAFETY: `use_vnni` checked AVX-512F/BW/VL at run time; the asserts
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

    /// # Safety
    ///
    /// The CPU has AVX-512F/BW/VL; `input`, `weight` and `out` are at least as
    /// long as `g` needs and `rq` was checked against `g.c`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn run(
        g: &DwGeometry,
        input: &[u8],
        a_zero: u8,
        weight: &[i8],
        rq: &Requant<'_>,
        out: &mut [u8],
    ) {
        let c = g.c;
        let za = _mm512_set1_epi32(i32::from(a_zero));
        let bounds = super::super::simd::Bounds::new(rq);
        let (inp, wp, outp) = (input.as_ptr(), weight.as_ptr(), out.as_mut_ptr());
        // Pixel by pixel, all channel blocks of a pixel together: the taps'
        // input rows stay in cache across blocks.
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let (ky, kx, [by, bx]) = window(g, oy, ox);
                for c0 in (0..c).step_by(LANES) {
                    let cols = LANES.min(c - c0);
                    let mask: __mmask16 = if cols == LANES {
                        !0
                    } else {
                        (1u16 << cols) - 1
                    };
                    let bias = match rq.bias {
                        // SAFETY: `bias` has `c` values; the mask stops at `c`.
                        Some(b) => unsafe { _mm512_maskz_loadu_epi32(mask, b.as_ptr().add(c0)) },
                        None => _mm512_setzero_si512(),
                    };
                    let scale = if rq.scale.len() == 1 {
                        _mm512_set1_ps(rq.scale[0])
                    } else {
                        // SAFETY: `scale` has `c` values; the mask stops at `c`.
                        unsafe { _mm512_maskz_loadu_ps(mask, rq.scale.as_ptr().add(c0)) }
                    };
                    let mut acc = bias;
                    for ty in ky[0]..ky[1] {
                        let y = (by + (ty * g.dilation[0]) as isize) as usize;
                        for tx in kx[0]..kx[1] {
                            let x = (bx + (tx * g.dilation[1]) as isize) as usize;
                            // SAFETY: `(y, x)` is inside the image (`window`)
                            // and the mask stops at channel `c`; tap
                            // `ty·kw + tx` < taps.
                            let (px, wv) = unsafe {
                                (
                                    _mm_maskz_loadu_epi8(
                                        mask,
                                        inp.add((y * g.w + x) * c + c0).cast(),
                                    ),
                                    _mm_maskz_loadu_epi8(
                                        mask,
                                        wp.add((ty * g.kw + tx) * c + c0).cast(),
                                    ),
                                )
                            };
                            let px = _mm512_sub_epi32(_mm512_cvtepu8_epi32(px), za);
                            let wv = _mm512_cvtepi8_epi32(wv);
                            acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(px, wv));
                        }
                    }
                    let q = bounds.quantize(acc, scale);
                    // SAFETY: pixel `(oy, ox)` of `out` has `c` bytes; the mask
                    // stops at `c`.
                    unsafe {
                        _mm_mask_storeu_epi8(outp.add((oy * g.ow + ox) * c + c0).cast(), mask, q)
                    };
                }
            }
        }
    }
}

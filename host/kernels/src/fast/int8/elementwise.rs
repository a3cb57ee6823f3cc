//! The int8 ops between convolutions in a quantized CNN: the residual `Add`
//! of two `u8` tensors with their own scales and zero points, the global
//! average pool before the classifier, and the QuantizeLinear of a float
//! input. They follow onnxruntime's QLinearAdd, QLinearGlobalAveragePool and
//! QuantizeLinear arithmetic: `f32` values, rounded half to even, offset and
//! clamped. The `Add` and the quantization have AVX-512 paths (the portable
//! loops round through a libm call per value on a baseline x86-64 build:
//! 1.1 ms for one MobileNetV2 residual add against 0.05 ms vectorized); the
//! lanes do the same `f32` operations in the same order as the scalar code,
//! so both paths give the same bytes.

use super::Isa;

/// Quantization of an int8 `Add`: `out = clamp(round(a_scale·(a - a_zero) +
/// b_scale·(b - b_zero)) + zero, lo, hi)`, with `a_scale = s_a / s_out` and
/// `b_scale = s_b / s_out`. A fused ReLU is `lo = zero`.
#[derive(Clone, Copy, Debug)]
pub struct AddQuant {
    /// `s_a / s_out`.
    pub a_scale: f32,
    /// Zero point of `a`.
    pub a_zero: u8,
    /// `s_b / s_out`.
    pub b_scale: f32,
    /// Zero point of `b`.
    pub b_zero: u8,
    /// Output zero point.
    pub zero: u8,
    /// Lower clamp (0 for none).
    pub lo: u8,
    /// Upper clamp (255 for none).
    pub hi: u8,
}

impl AddQuant {
    /// One output byte.
    #[inline(always)]
    pub fn add(&self, a: u8, b: u8) -> u8 {
        let x = (i32::from(a) - i32::from(self.a_zero)) as f32 * self.a_scale;
        let y = (i32::from(b) - i32::from(self.b_zero)) as f32 * self.b_scale;
        let z = f32::from(self.zero);
        // Clamped before rounding: the bounds are integers, so this equals
        // clamping after, and the conversion cannot overflow.
        let v = (x + y)
            .max(f32::from(self.lo) - z)
            .min(f32::from(self.hi) - z);
        (v.round_ties_even() as i32 + i32::from(self.zero)) as u8
    }
}

/// `out[i] = q.add(a[i], b[i])` (same shapes, same layout).
///
/// # Panics
///
/// If the slices differ in length or `lo > hi`.
pub fn add_u8(isa: Isa, a: &[u8], b: &[u8], q: &AddQuant, out: &mut [u8]) {
    assert!(
        a.len() == b.len() && a.len() == out.len(),
        "add_u8: lengths differ"
    );
    assert!(q.lo <= q.hi, "add_u8: clamp lo > hi");
    if use_avx512(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `use_avx512` checked AVX-512F/BW/VL at run time; the lengths are equal.
        unsafe {
            avx512::add(a, b, q, out)
        };
        return;
    }
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = q.add(x, y);
    }
}

/// ONNX QuantizeLinear to `u8`: `clamp(round_half_even(x / scale) + zero, 0, 255)`,
/// dividing as onnxruntime does (not multiplying by a reciprocal, which can
/// round differently). A NaN becomes 0.
///
/// # Panics
///
/// If `x` and `out` differ in length.
pub fn quantize_u8(isa: Isa, x: &[f32], scale: f32, zero: u8, out: &mut [u8]) {
    assert_eq!(x.len(), out.len(), "quantize_u8: lengths differ");
    if use_avx512(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `use_avx512` checked AVX-512F/BW/VL at run time; the lengths are equal.
        unsafe {
            avx512::quantize(x, scale, zero, out)
        };
        return;
    }
    let (lo, hi) = (-f32::from(zero), 255.0 - f32::from(zero));
    for (o, &v) in out.iter_mut().zip(x) {
        // Clamped before rounding, as the lanes do: the bounds are integers.
        let q = (v / scale).max(lo).min(hi).round_ties_even();
        *o = (q as i32 + i32::from(zero)) as u8;
    }
}

/// Whether a kernel asked to run on `isa` takes the AVX-512 path.
#[inline]
fn use_avx512(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa == Isa::Avx512
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::AddQuant;

    const LANES: usize = 16;

    /// Lanes `i..i + n` (n <= 16) of a mask.
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        if n >= LANES { !0 } else { (1u16 << n) - 1 }
    }

    /// Rounds half to even, adds the zero point and narrows to bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn to_bytes(v: __m512, zero: __m512i) -> __m128i {
        let q = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        _mm512_cvtepi32_epi8(_mm512_add_epi32(q, zero))
    }

    /// # Safety
    ///
    /// The CPU has AVX-512F/BW/VL; the slices have one length.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn add(a: &[u8], b: &[u8], q: &AddQuant, out: &mut [u8]) {
        let (za, zb) = (
            _mm512_set1_epi32(i32::from(q.a_zero)),
            _mm512_set1_epi32(i32::from(q.b_zero)),
        );
        let (sa, sb) = (_mm512_set1_ps(q.a_scale), _mm512_set1_ps(q.b_scale));
        let z = f32::from(q.zero);
        let lo = _mm512_set1_ps(f32::from(q.lo) - z);
        let hi = _mm512_set1_ps(f32::from(q.hi) - z);
        let zero = _mm512_set1_epi32(i32::from(q.zero));
        let real = |p: *const u8, m: __mmask16, zp: __m512i, s: __m512| {
            // SAFETY: the caller's lanes `..m` are inside the slice.
            let v = unsafe { _mm_maskz_loadu_epi8(m, p.cast()) };
            let v = _mm512_sub_epi32(_mm512_cvtepu8_epi32(v), zp);
            _mm512_mul_ps(_mm512_cvtepi32_ps(v), s)
        };
        for i in (0..a.len()).step_by(LANES) {
            let m = mask(a.len() - i);
            // SAFETY: `i < len` and the mask stops at `len` for all three slices.
            unsafe {
                let v = _mm512_add_ps(
                    real(a.as_ptr().add(i), m, za, sa),
                    real(b.as_ptr().add(i), m, zb, sb),
                );
                let v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
                _mm_mask_storeu_epi8(out.as_mut_ptr().add(i).cast(), m, to_bytes(v, zero));
            }
        }
    }

    /// # Safety
    ///
    /// The CPU has AVX-512F/BW/VL; the slices have one length.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn quantize(x: &[f32], scale: f32, zero: u8, out: &mut [u8]) {
        let s = _mm512_set1_ps(scale);
        let lo = _mm512_set1_ps(-f32::from(zero));
        let hi = _mm512_set1_ps(255.0 - f32::from(zero));
        let z = _mm512_set1_epi32(i32::from(zero));
        for i in (0..x.len()).step_by(LANES) {
            let m = mask(x.len() - i);
            // SAFETY: `i < len` and the mask stops at `len` for both slices.
            unsafe {
                let v = _mm512_div_ps(_mm512_maskz_loadu_ps(m, x.as_ptr().add(i)), s);
                // `vmaxps` gives its second operand for a NaN first: `lo`, as
                // `f32::max` does in the scalar loop.
                let v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
                _mm_mask_storeu_epi8(out.as_mut_ptr().add(i).cast(), m, to_bytes(v, z));
            }
        }
    }
}

/// Global average pool of a channels-last `[pixels, c]` image into `[c]`:
/// `out[ch] = clamp(round(scale · Σ_p (x[p][ch] - a_zero)) + zero, 0, 255)`
/// with `scale = s_in / (s_out · pixels)`.
///
/// # Panics
///
/// If `input.len() != pixels * c` or `out.len() != c`, or a sum could
/// overflow `i32` (more than 2^23 pixels).
pub fn global_avg_pool_u8(
    input: &[u8],
    pixels: usize,
    c: usize,
    a_zero: u8,
    scale: f32,
    zero: u8,
    out: &mut [u8],
) {
    assert!(
        input.len() == pixels * c && out.len() == c,
        "global_avg_pool_u8: lengths"
    );
    assert!(pixels < 1 << 23, "global_avg_pool_u8: too many pixels");
    let mut sums = vec![0i32; c];
    for px in input.chunks_exact(c.max(1)).take(pixels) {
        for (s, &x) in sums.iter_mut().zip(px) {
            *s += i32::from(x);
        }
    }
    let offset = i32::from(a_zero) * pixels as i32;
    let z = f32::from(zero);
    for (o, &s) in out.iter_mut().zip(&sums) {
        let v = ((s - offset) as f32 * scale).max(-z).min(255.0 - z);
        *o = (v.round_ties_even() as i32 + i32::from(zero)) as u8;
    }
}

//! Int8 kernels: `u8` activations times `s8` weights, accumulated exactly in
//! `i32`, and requantized back to `u8` in the store (the scheme of ONNX's
//! QLinearConv and of onnxruntime's static QDQ quantizer: activations
//! asymmetric `u8`, weights symmetric `s8`, per tensor or per output channel).
//!
//! [`Isa::Avx512`] runs AVX-512 VNNI (`vpdpbusd`: 64 `u8×s8` multiply-adds per
//! instruction, four times the f32 FMA rate) when the CPU has it
//! ([`vnni_available`]), else the portable path; [`Isa::Portable`] is plain
//! Rust. Both produce exactly the bytes [`reference`](mod@reference) does (integer
//! accumulation is exact and the requantization is the same `f32`
//! arithmetic), and the tests hold them to that.
//!
//! Activations stored as `s8` (onnxruntime's `QInt8` activations) run here
//! too: flipping the sign bit (`x ^ 0x80`) maps `s8` value `x` with zero point
//! `z` onto `u8` value `x + 128` with zero point `z + 128`, the same real value.

mod depthwise;
mod elementwise;
mod gemm;
mod im2col;
pub mod reference;
#[cfg(test)]
mod tests;

pub use depthwise::{depthwise_u8, depthwise_u8_weights};
pub use elementwise::{AddQuant, add_u8, global_avg_pool_u8, quantize_u8};
pub use gemm::{PackedI8, gemm_u8s8};
pub use im2col::{dense_weights_hwc, im2col_u8};

use super::Isa;

/// The requantizing store shared by the AVX-512 kernels, lane for lane what
/// [`Requant::quantize`] does.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// Per-call constants of a [`super::Requant`].
    #[derive(Clone, Copy)]
    pub(super) struct Bounds {
        zero: __m512i,
        lo: __m512,
        hi: __m512,
    }

    impl Bounds {
        #[inline]
        #[target_feature(enable = "avx512f")]
        pub(super) fn new(rq: &super::Requant<'_>) -> Bounds {
            let (lo, hi) = rq.bounds_f32();
            Bounds {
                zero: _mm512_set1_epi32(i32::from(rq.zero)),
                lo: _mm512_set1_ps(lo),
                hi: _mm512_set1_ps(hi),
            }
        }

        /// 16 sums (bias included) scaled, clamped, rounded half to even,
        /// offset by the zero point and narrowed to bytes.
        #[inline]
        #[target_feature(enable = "avx512f")]
        pub(super) fn quantize(&self, acc: __m512i, scale: __m512) -> __m128i {
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), scale);
            let v = _mm512_min_ps(_mm512_max_ps(v, self.lo), self.hi);
            let q =
                _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            _mm512_cvtepi32_epi8(_mm512_add_epi32(q, self.zero))
        }
    }
}

/// How an output channel's exact `i32` sum becomes a `u8`:
/// `clamp(round_half_even((acc + bias[j]) as f32 · scale[j]) + zero, lo, hi)`,
/// where `acc = Σ (a - a_zero) · w` and `scale = s_in · s_w[j] / s_out`.
/// ReLU is `lo = zero`; Clip(0, 6) is `lo = zero`, `hi = zero + 6 / s_out`.
#[derive(Clone, Copy, Debug)]
pub struct Requant<'a> {
    /// One multiplier (per tensor) or one per output channel.
    pub scale: &'a [f32],
    /// One per output channel, in accumulator units (scale `s_in · s_w[j]`),
    /// as onnxruntime's quantizer stores a Conv's bias.
    pub bias: Option<&'a [i32]>,
    /// Output zero point.
    pub zero: u8,
    /// Lower clamp (0 for none).
    pub lo: u8,
    /// Upper clamp (255 for none).
    pub hi: u8,
}

impl Requant<'_> {
    /// The multiplier of output channel `j`.
    #[inline(always)]
    pub fn scale_at(&self, j: usize) -> f32 {
        if self.scale.len() == 1 {
            self.scale[0]
        } else {
            self.scale[j]
        }
    }

    /// Output channel `j`'s byte for the exact sum `acc` (bias not yet added).
    #[inline(always)]
    pub fn quantize(&self, j: usize, acc: i32) -> u8 {
        let acc = acc.wrapping_add(self.bias.map_or(0, |b| b[j]));
        // Clamped in f32 to the output range minus the zero point: the
        // bounds are integers, so rounding after clamping equals clamping
        // after rounding, and the conversion cannot overflow. `max` then
        // `min`, as `vmaxps`/`vminps` do (a NaN becomes `lo`).
        let (lo, hi) = self.bounds_f32();
        let v = (acc as f32 * self.scale_at(j)).max(lo).min(hi);
        (v.round_ties_even() as i32 + i32::from(self.zero)) as u8
    }

    /// `lo - zero` and `hi - zero`, where the scaled sum is clamped.
    #[inline(always)]
    fn bounds_f32(&self) -> (f32, f32) {
        let z = f32::from(self.zero);
        (f32::from(self.lo) - z, f32::from(self.hi) - z)
    }

    /// Checks the lengths against `n` output channels.
    fn check(&self, n: usize, what: &str) {
        assert!(
            self.scale.len() == 1 || self.scale.len() >= n,
            "{what}: scale needs 1 or {n} values"
        );
        if let Some(b) = self.bias {
            assert!(b.len() >= n, "{what}: bias too short");
        }
        assert!(self.lo <= self.hi, "{what}: clamp lo > hi");
    }
}

/// Whether this CPU has what the VNNI kernels run: AVX-512 F, BW, VL and
/// VNNI. [`Isa::Avx512`] without them runs the int8 kernels' portable path.
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a kernel asked to run on `isa` takes the VNNI path.
#[inline]
fn use_vnni(isa: Isa) -> bool {
    isa == Isa::Avx512 && vnni_available()
}

/// The int8 GOP/s one core sustains here on independent `vpdpbusd`s (each
/// 64 multiply-adds, counted as 128 operations), measured for about `secs`
/// seconds: the peak the int8 kernels are compared against, the way
/// [`super::fma_peak_gflops`] is for FP32. Without VNNI, the portable
/// path's rate on the same pattern.
pub fn vnni_peak_gops(secs: f64) -> f64 {
    let start = std::time::Instant::now();
    let mut ops = 0u64;
    let mut sink = 0i64;
    while start.elapsed().as_secs_f64() < secs {
        let (o, s) = if use_vnni(Isa::Avx512) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `use_vnni` checked AVX-512F/BW/VL/VNNI at run time.
            unsafe {
                vnni_burst()
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("no VNNI off x86-64")
        } else {
            portable_dot_burst()
        };
        ops += o;
        sink = sink.wrapping_add(s);
    }
    std::hint::black_box(sink);
    ops as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Independent accumulators, enough to cover `vpdpbusd`'s latency on two ports.
const PEAK_CHAINS: usize = 12;
const PEAK_ITERS: usize = 100_000;

fn portable_dot_burst() -> (u64, i64) {
    let mut acc = [[0i32; 16]; PEAK_CHAINS];
    let a = std::hint::black_box([3u8; 64]);
    let b = std::hint::black_box([-2i8; 64]);
    for _ in 0..PEAK_ITERS / 10 {
        for chain in acc.iter_mut() {
            for (l, v) in chain.iter_mut().enumerate() {
                let s: i32 = (0..4)
                    .map(|q| i32::from(a[4 * l + q]) * i32::from(b[4 * l + q]))
                    .sum();
                *v = v.wrapping_add(s);
            }
        }
    }
    let ops = (PEAK_ITERS / 10 * PEAK_CHAINS * 64 * 2) as u64;
    (ops, acc.iter().flatten().map(|&v| i64::from(v)).sum())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn vnni_burst() -> (u64, i64) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_si512(); PEAK_CHAINS];
    let a = _mm512_set1_epi8(std::hint::black_box(3));
    let b = _mm512_set1_epi8(std::hint::black_box(-2));
    for _ in 0..PEAK_ITERS {
        for v in acc.iter_mut() {
            *v = _mm512_dpbusd_epi32(*v, a, b);
        }
    }
    let ops = (PEAK_ITERS * PEAK_CHAINS * 64 * 2) as u64;
    let sum = acc
        .iter()
        .map(|&v| i64::from(_mm512_reduce_add_epi32(v)))
        .sum();
    (ops, sum)
}

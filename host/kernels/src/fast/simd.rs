//! One ISA's f32 vectors, as the generic kernels ([`super::generic`]) see
//! them: AVX2 + FMA (8 lanes) and NEON (4 lanes) implement [`Simd`], so one
//! register-tiled GEMM and one depthwise kernel serve both instead of a
//! hand-written copy per ISA.
//!
//! A value of an implementing type is a token: it exists only where the CPU
//! was checked to have the ISA (see the constructors), which is what makes
//! the arithmetic methods safe to call. Memory access stays `unsafe`: the
//! caller vouches for the pointers.
//!
//! Masks select a prefix of lanes (a channel or column tail). A masked load
//! never touches memory of the lanes it leaves out, so an empty mask reads
//! nothing: the kernels use that to skip taps outside an image without a
//! branch.

/// An ISA's f32 vector operations; see the module docs.
///
/// # Safety
///
/// An implementor must only be constructible on a CPU that runs every
/// instruction its methods use, and a masked load or store must not access
/// the lanes outside its mask.
pub(crate) unsafe trait Simd: Copy {
    /// A vector of [`Self::LANES`] f32s.
    type V: Copy;
    /// Which lanes a masked access touches (a prefix).
    type Mask: Copy;
    /// f32 lanes per vector.
    const LANES: usize;
    /// Rows of the GEMM register tile (`ROWS × VECS` accumulators must fit
    /// the register file with room for the B vectors and a broadcast).
    const TILE_ROWS: usize;
    /// Vectors across the GEMM register tile.
    const TILE_VECS: usize;

    fn zero(self) -> Self::V;
    fn splat(self, x: f32) -> Self::V;
    /// `a · b + acc`, fused.
    fn fma(self, a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `max(a, b)` that returns `b` when `a` is NaN is not
    /// required: the kernels clamp as `min(hi, max(lo, y))`.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    fn sum(self, v: Self::V) -> f32;
    /// The first `n` lanes (`n <= LANES`).
    fn mask(self, n: usize) -> Self::Mask;

    /// # Safety
    ///
    /// `p` is valid for reading `LANES` values.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// Lanes outside `m` are zero and not read.
    ///
    /// # Safety
    ///
    /// `p` is valid for reading the lanes in `m`.
    unsafe fn load_masked(self, p: *const f32, m: Self::Mask) -> Self::V;
    /// # Safety
    ///
    /// `p` is valid for writing the lanes in `m`.
    unsafe fn store_masked(self, p: *mut f32, m: Self::Mask, v: Self::V);
    /// Runs `k` inside a function compiled with this ISA's target features,
    /// so [`Kernel::run`] (`#[inline(always)]`) and the vector methods it
    /// uses inline into it and become single instructions. (A closure would
    /// not do: LLVM may leave a large one out of line, compiled without the
    /// features, and then every vector method is a call; AVX2 GEMM ran 15×
    /// slower than portable that way.)
    fn vectorize<K: Kernel>(self, k: K) -> K::Out;
}

/// A kernel body for [`Simd::vectorize`]; implementations mark `run`
/// `#[inline(always)]`.
pub(crate) trait Kernel {
    type Out;
    fn run<S: Simd>(self, s: S) -> Self::Out;
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Kernel, Simd};

    /// AVX2 with FMA: 8 lanes, 16 vector registers.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(());

    impl Avx2 {
        /// The token, if this CPU has AVX2 and FMA.
        pub(crate) fn new() -> Option<Avx2> {
            (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
                .then_some(Avx2(()))
        }
    }

    /// `MASKS[8 - n..][..8]` has its first `n` lanes set.
    static MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    // SAFETY: `Avx2::new` is the only constructor and checks AVX2 and FMA;
    // `_mm256_maskload_ps`/`_mm256_maskstore_ps` do not access masked-off
    // lanes (Intel SDM: no faults from them either).
    unsafe impl Simd for Avx2 {
        type V = __m256;
        type Mask = __m256i;
        const LANES: usize = 8;
        // 6 × 2 accumulators leave four of sixteen registers for the two B
        // vectors and the broadcast.
        const TILE_ROWS: usize = 6;
        const TILE_VECS: usize = 2;

        #[inline(always)]
        fn zero(self) -> __m256 {
            // SAFETY: the token proves AVX (see the impl).
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        fn splat(self, x: f32) -> __m256 {
            // SAFETY: as `zero`.
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        fn fma(self, a: __m256, b: __m256, acc: __m256) -> __m256 {
            // SAFETY: the token proves FMA.
            unsafe { _mm256_fmadd_ps(a, b, acc) }
        }
        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: as `zero`.
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn max(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: as `zero`.
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        fn min(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: as `zero`.
            unsafe { _mm256_min_ps(a, b) }
        }
        #[inline(always)]
        fn sum(self, v: __m256) -> f32 {
            // SAFETY: as `zero`.
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        fn mask(self, n: usize) -> __m256i {
            debug_assert!(n <= 8);
            // SAFETY: `8 - n.min(8) + 8 <= 16` values of MASKS are read; AVX
            // as `zero`.
            unsafe { _mm256_loadu_si256(MASKS.as_ptr().add(8 - n.min(8)).cast()) }
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> __m256 {
            // SAFETY: the caller's contract.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_masked(self, p: *const f32, m: __m256i) -> __m256 {
            // SAFETY: the caller's contract; masked-off lanes are not read.
            unsafe { _mm256_maskload_ps(p, m) }
        }
        #[inline(always)]
        unsafe fn store_masked(self, p: *mut f32, m: __m256i, v: __m256) {
            // SAFETY: the caller's contract; masked-off lanes are not written.
            unsafe { _mm256_maskstore_ps(p, m, v) }
        }
        #[inline(always)]
        fn vectorize<K: Kernel>(self, k: K) -> K::Out {
            #[target_feature(enable = "avx2,fma")]
            fn with_avx2<K: Kernel>(s: Avx2, k: K) -> K::Out {
                k.run(s)
            }
            // SAFETY: the token proves AVX2 and FMA.
            unsafe { with_avx2(self, k) }
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) use neon::Neon;

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{Kernel, Simd};

    /// AArch64 Advanced SIMD: 4 lanes, 32 vector registers.
    #[derive(Clone, Copy)]
    pub(crate) struct Neon(());

    impl Neon {
        /// The token, if this CPU has NEON (every AArch64 Linux CPU does).
        pub(crate) fn new() -> Option<Neon> {
            std::arch::is_aarch64_feature_detected!("neon").then_some(Neon(()))
        }
    }

    // SAFETY: `Neon::new` is the only constructor and checks NEON; masked
    // accesses copy exactly the lanes in the mask through scalar loads and
    // stores.
    unsafe impl Simd for Neon {
        type V = float32x4_t;
        /// The number of leading lanes.
        type Mask = usize;
        const LANES: usize = 4;
        // 8 × 3 accumulators, three B vectors and a broadcast: 28 of 32.
        const TILE_ROWS: usize = 8;
        const TILE_VECS: usize = 3;

        #[inline(always)]
        fn zero(self) -> float32x4_t {
            // SAFETY: the token proves NEON.
            unsafe { vdupq_n_f32(0.0) }
        }
        #[inline(always)]
        fn splat(self, x: f32) -> float32x4_t {
            // SAFETY: as `zero`.
            unsafe { vdupq_n_f32(x) }
        }
        #[inline(always)]
        fn fma(self, a: float32x4_t, b: float32x4_t, acc: float32x4_t) -> float32x4_t {
            // SAFETY: as `zero`.
            unsafe { vfmaq_f32(acc, a, b) }
        }
        #[inline(always)]
        fn add(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: as `zero`.
            unsafe { vaddq_f32(a, b) }
        }
        #[inline(always)]
        fn max(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: as `zero`.
            unsafe { vmaxq_f32(a, b) }
        }
        #[inline(always)]
        fn min(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: as `zero`.
            unsafe { vminq_f32(a, b) }
        }
        #[inline(always)]
        fn sum(self, v: float32x4_t) -> f32 {
            // SAFETY: as `zero`.
            unsafe { vaddvq_f32(v) }
        }
        #[inline(always)]
        fn mask(self, n: usize) -> usize {
            n.min(4)
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> float32x4_t {
            // SAFETY: the caller's contract.
            unsafe { vld1q_f32(p) }
        }
        #[inline(always)]
        unsafe fn load_masked(self, p: *const f32, m: usize) -> float32x4_t {
            if m == 4 {
                // SAFETY: all four lanes are in the mask (caller's contract).
                return unsafe { vld1q_f32(p) };
            }
            let mut lanes = [0f32; 4];
            for (i, l) in lanes.iter_mut().enumerate().take(m) {
                // SAFETY: lane i < m is in the mask.
                *l = unsafe { *p.add(i) };
            }
            // SAFETY: `lanes` holds four values; NEON as `zero`.
            unsafe { vld1q_f32(lanes.as_ptr()) }
        }
        #[inline(always)]
        fn vectorize<K: Kernel>(self, k: K) -> K::Out {
            // NEON is in every AArch64 target's baseline features.
            k.run(self)
        }
        #[inline(always)]
        unsafe fn store_masked(self, p: *mut f32, m: usize, v: float32x4_t) {
            if m == 4 {
                // SAFETY: all four lanes are in the mask (caller's contract).
                return unsafe { vst1q_f32(p, v) };
            }
            let mut lanes = [0f32; 4];
            // SAFETY: `lanes` has room for four values; NEON as `zero`.
            unsafe { vst1q_f32(lanes.as_mut_ptr(), v) };
            for (i, &l) in lanes.iter().enumerate().take(m) {
                // SAFETY: lane i < m is in the mask.
                unsafe { *p.add(i) = l };
            }
        }
    }
}

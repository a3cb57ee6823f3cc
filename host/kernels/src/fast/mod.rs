//! SIMD kernels on raw slices, for the convolution fast paths and the native
//! model backend.
//!
//! Every kernel takes an [`Isa`]: [`Isa::Avx512`] runs hand-written AVX-512F
//! code, [`Isa::Avx2`] and [`Isa::Neon`] run the kernels written once over
//! their vector types (`generic`, `simd`), and [`Isa::Portable`] runs plain
//! Rust with the same blocking, which LLVM vectorizes for the baseline
//! target. Tests run every path the CPU has against the naive references. A
//! caller that asks for an ISA the CPU lacks gets the portable path, so no
//! input can reach an unsupported instruction.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod bf16;
mod conv_nchw;
mod depthwise;
mod depthwise_nhwc;
#[cfg(target_arch = "x86_64")]
mod depthwise_slab;
mod generic;
mod im2col;
pub mod int8;
mod pointwise;
mod simd;

pub use conv_nchw::{conv_nchw, conv_nchw_rows};
pub use depthwise::{DwGeometry, depthwise};
pub use depthwise_nhwc::{depthwise_nhwc, depthwise_nhwc_weights};
pub use im2col::{ColGeometry, im2col, im2col_rows};
pub use pointwise::{MR, PackedLhs, PackedRhs, gemm_gather, gemm_packed, gemm_rows, matvec};

use std::sync::OnceLock;

/// Instruction set a kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust; what CI exercises on any CPU.
    Portable,
    /// x86-64 AVX2 with FMA, 8 f32 lanes (Intel N100/N305, Atom x6000, most
    /// x86 gateways).
    Avx2,
    /// x86-64 AVX-512F, 16 f32 lanes.
    Avx512,
    /// AArch64 Advanced SIMD, 4 f32 lanes (Raspberry Pi 4/5, Jetson, i.MX 8).
    Neon,
}

/// The variable that forces an ISA: `EDGEPLUG_ISA=avx2|avx512|portable|neon`.
pub const ISA_ENV: &str = "EDGEPLUG_ISA";

impl Isa {
    /// Every ISA, in the order tests and benchmarks list them.
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// The ISA the kernels run with in this process: the one [`ISA_ENV`]
    /// names, else the best this CPU supports (decided once per process).
    /// A forced ISA this CPU lacks, or a name that is no ISA, leaves the
    /// best one in place; [`Isa::from_env`] reports those as errors, and the
    /// CLI checks it before it serves.
    pub fn detect() -> Isa {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        *CHOSEN.get_or_init(|| Isa::from_env().ok().flatten().unwrap_or_else(Isa::best))
    }

    /// The best ISA this CPU supports.
    pub fn best() -> Isa {
        [Isa::Avx512, Isa::Avx2, Isa::Neon]
            .into_iter()
            .find(|i| i.available())
            .unwrap_or(Isa::Portable)
    }

    /// The ISA [`ISA_ENV`] forces, if set; an error names what is wrong with
    /// its value.
    pub fn from_env() -> Result<Option<Isa>, String> {
        let Some(v) = std::env::var_os(ISA_ENV) else {
            return Ok(None);
        };
        let v = v.to_string_lossy();
        let isa = v.parse::<Isa>()?;
        isa.check_available()
            .map(Some)
            .map_err(|e| format!("{ISA_ENV}={v}: {e}"))
    }

    /// `self` if this CPU can run it, else an error naming the ISAs it can.
    pub fn check_available(self) -> Result<Isa, String> {
        if self.available() {
            return Ok(self);
        }
        let can: Vec<&str> = Isa::all_available().iter().map(|i| i.name()).collect();
        Err(format!(
            "this CPU cannot run {self}; it can run {}",
            can.join(", ")
        ))
    }

    /// The ISA's name, as [`ISA_ENV`] takes it and reports show it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// FP32 lanes per vector (1 for the portable path, which leaves the
    /// width to the compiler).
    pub fn lanes(self) -> usize {
        match self {
            Isa::Portable => 1,
            Isa::Avx2 => 8,
            Isa::Avx512 => 16,
            Isa::Neon => 4,
        }
    }

    /// Whether this CPU can run the ISA.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => simd::Avx2::new().is_some(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => simd::Neon::new().is_some(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// `self` if the CPU supports it, else [`Isa::Portable`].
    pub(crate) fn usable(self) -> Isa {
        if self.available() {
            self
        } else {
            Isa::Portable
        }
    }

    /// Every ISA this CPU can run, portable first (for tests and benches).
    pub fn all_available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.available()).collect()
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = String;
    fn from_str(s: &str) -> Result<Isa, String> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("{s:?} is no ISA: use avx2, avx512, portable or neon"))
    }
}

/// The FP32 GFLOP/s one core sustains here on independent fused multiply-adds
/// of the ISA's widest vectors, measured for about `secs` seconds: the peak
/// the benchmark compares kernels against, taken on the same machine in the
/// same run (clock speeds differ between machines and over time).
pub fn fma_peak_gflops(isa: Isa, secs: f64) -> f64 {
    let start = std::time::Instant::now();
    let mut flops = 0u64;
    let mut sink = 0f32;
    while start.elapsed().as_secs_f64() < secs {
        let (f, s) = match isa.usable() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `usable` checked that the CPU has AVX-512F.
            Isa::Avx512 => unsafe { avx512_fma_burst() },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if let Some(s) = simd::Avx2::new() => generic::fma_burst(s, PEAK_ITERS),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon if let Some(s) = simd::Neon::new() => generic::fma_burst(s, PEAK_ITERS),
            _ => portable_fma_burst(),
        };
        flops += f;
        sink += s;
    }
    std::hint::black_box(sink);
    flops as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Twelve independent accumulators: enough to cover the FMA latency.
const PEAK_CHAINS: usize = 12;
const PEAK_ITERS: usize = 100_000;

fn portable_fma_burst() -> (u64, f32) {
    let mut acc = [[1f32; 8]; PEAK_CHAINS];
    let (a, b) = (
        std::hint::black_box(0.999_99f32),
        std::hint::black_box(1e-6f32),
    );
    for _ in 0..PEAK_ITERS {
        for chain in acc.iter_mut() {
            for v in chain.iter_mut() {
                *v = v.mul_add(a, b);
            }
        }
    }
    let flops = (PEAK_ITERS * PEAK_CHAINS * 8 * 2) as u64;
    (flops, acc.iter().flatten().sum())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_fma_burst() -> (u64, f32) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(1.0); PEAK_CHAINS];
    let a = _mm512_set1_ps(std::hint::black_box(0.999_99));
    let b = _mm512_set1_ps(std::hint::black_box(1e-6));
    for _ in 0..PEAK_ITERS {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let flops = (PEAK_ITERS * PEAK_CHAINS * 16 * 2) as u64;
    (flops, acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum())
}

/// `dst[j][i] = src[i][j]` for a row-major `[rows, cols]` `src`, in square
/// tiles so both sides stay in cache: layout changes, and weights from
/// ONNX's out-channel-major order into the orders the kernels read.
///
/// # Panics
///
/// If `src` or `dst` is shorter than `rows * cols`.
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(
        src.len() >= rows * cols && dst.len() >= rows * cols,
        "transpose: slices too short"
    );
    const T: usize = 16;
    for i0 in (0..rows).step_by(T) {
        for j0 in (0..cols).step_by(T) {
            for i in i0..(i0 + T).min(rows) {
                for j in j0..(j0 + T).min(cols) {
                    dst[j * rows + i] = src[i * cols + j];
                }
            }
        }
    }
}

/// A zero-initialized `f32` buffer aligned to 64 bytes. The allocator only
/// promises 16, and then every 16-lane load or store straddles two cache
/// lines; with this alignment, one at an index that is a multiple of 16 never
/// does.
#[derive(Clone, Debug, Default)]
pub struct AlignedBuf {
    chunks: Vec<Chunk>,
    len: usize,
}

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Chunk([f32; 16]);

impl AlignedBuf {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> AlignedBuf {
        AlignedBuf {
            chunks: vec![Chunk([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    /// Grows to at least `len` values (new ones zero).
    pub fn ensure_len(&mut self, len: usize) {
        if len > self.len {
            self.chunks.resize(len.div_ceil(16), Chunk([0.0; 16]));
            self.len = len;
        }
    }
}

impl From<&[f32]> for AlignedBuf {
    fn from(v: &[f32]) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(v.len());
        b.copy_from_slice(v);
        b
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `Chunk` is `repr(C)` over `[f32; 16]` (size 64, no padding),
        // so the chunks are `16 * chunks.len() >= len` contiguous, initialized f32s.
        unsafe { std::slice::from_raw_parts(self.chunks.as_ptr().cast(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.chunks.as_mut_ptr().cast(), self.len) }
    }
}

/// What happens to each accumulated output value before it is stored:
/// `clamp(acc + bias[row] + residual[i], lo, hi)`.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// One value per output row (output channel).
    pub bias: Option<&'a [f32]>,
    /// Added element-wise; laid out like the output.
    pub residual: Option<&'a [f32]>,
    /// Lower clamp (`-inf` for none, `0` for ReLU).
    pub lo: f32,
    /// Upper clamp (`inf` for none, `6` for ReLU6).
    pub hi: f32,
}

impl Default for Epilogue<'_> {
    fn default() -> Self {
        Epilogue {
            bias: None,
            residual: None,
            lo: f32::NEG_INFINITY,
            hi: f32::INFINITY,
        }
    }
}

impl Epilogue<'_> {
    #[inline(always)]
    pub(crate) fn clamp(&self, v: f32) -> f32 {
        // max then min, like the SIMD path; NaN stays NaN here.
        let v = if v < self.lo { self.lo } else { v };
        if v > self.hi { self.hi } else { v }
    }
}

#[cfg(test)]
mod tests;

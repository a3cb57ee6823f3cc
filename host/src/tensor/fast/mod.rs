//! SIMD kernels on raw slices, for the convolution fast paths and the native
//! model backend.
//!
//! Every kernel takes an [`Isa`]: [`Isa::Avx512`] runs hand-written AVX-512F
//! code (checked at run time with `is_x86_feature_detected!`), and
//! [`Isa::Portable`] runs plain Rust with the same blocking, which LLVM
//! vectorizes for the baseline target. Tests run both against the naive
//! references. A caller that asks for an ISA the CPU lacks gets the portable
//! path, so no input can reach an unsupported instruction.

mod depthwise;
mod im2col;
mod pointwise;

pub use depthwise::{DwGeometry, depthwise};
pub use im2col::{ColGeometry, im2col};
pub use pointwise::{MR, PackedLhs, gemm_packed, matvec};

use std::sync::OnceLock;

/// Instruction set a kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust; what CI exercises on any CPU.
    Portable,
    /// x86-64 AVX-512F, 16 f32 lanes.
    Avx512,
}

impl Isa {
    /// The best ISA this CPU supports; `EDGEPLUG_FORCE_PORTABLE=1` forces the
    /// portable path (read once per process).
    pub fn detect() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let forced = std::env::var_os("EDGEPLUG_FORCE_PORTABLE").is_some_and(|v| v != "0");
            if !forced && Isa::Avx512.available() {
                Isa::Avx512
            } else {
                Isa::Portable
            }
        })
    }

    /// Whether this CPU can run the ISA.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 => false,
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
        [Isa::Portable, Isa::Avx512]
            .into_iter()
            .filter(|i| i.available())
            .collect()
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
    fn clamp(&self, v: f32) -> f32 {
        // max then min, like the SIMD path; NaN stays NaN here.
        let v = if v < self.lo { self.lo } else { v };
        if v > self.hi { self.hi } else { v }
    }
}

#[cfg(test)]
mod tests;

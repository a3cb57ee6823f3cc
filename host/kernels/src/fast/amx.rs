//! The bf16 GEMM on Intel AMX tiles (Sapphire Rapids and later): a tile
//! multiply (`tdpbf16ps`) takes 16 rows × 32 bf16 of activations and
//! 16 pairs × 16 columns of weights and adds 16 × 16 f32 products-of-pairs
//! into an accumulator tile, the work of 256 AVX-512 `vdpbf16ps`.
//!
//! One block of output is 16 rows × one weight panel (48 columns, three
//! accumulator tiles): per 16 reduction pairs, one activation tile and
//! three weight tiles are loaded and multiplied. The weights are the
//! AVX512-BF16 path's packed pairs ([`Bf16Rhs`]) as they are: a panel's
//! `[pair][NR]` rows are exactly the tile layout AMX wants for its second
//! operand, read with a row stride of `NR` pairs. The accumulators go to a
//! small buffer and through the same epilogue as the AVX512-BF16 path.
//!
//! Stable Rust has no AMX intrinsics, so the instructions are inline
//! assembly; the tile registers are invisible to the compiler, which never
//! emits AMX code itself, so their contents stay ours between the `asm!`
//! blocks of one call.
//!
//! Linux hands out AMX state only to a process that asks for it
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); [`available`]
//! asks once. `EDGEPLUG_AMX=off` keeps a process off AMX (the AVX512-BF16
//! path runs instead), for comparing the two.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::Epilogue;
use super::bf16::avx512::{convert, store_row};
use super::bf16::{Bf16Rhs, PAIR_BLOCK};
use super::pointwise::{NR, vectors_and_tail_mask};

/// Rows of activations (and output) one tile holds.
pub(super) const ROWS: usize = 16;

/// Accumulator tiles per block: one per 16 columns of a panel.
const COL_TILES: usize = NR / 16;

/// The environment variable that turns AMX off (`off` or `0`).
pub const AMX_ENV: &str = "EDGEPLUG_AMX";

/// Whether the bf16 GEMM runs on AMX tiles in this process: the CPU has
/// AMX-TILE and AMX-BF16, Linux granted the tile state, and [`AMX_ENV`]
/// does not turn it off. Decided once.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let off = std::env::var(AMX_ENV).is_ok_and(|v| v == "off" || v == "0");
        !off && super::bf16::bf16_hardware() && cpu_has_amx() && request_tile_state()
    })
}

/// CPUID leaf 7: AMX-BF16 is EDX bit 22, AMX-TILE bit 24. (Std's feature
/// detection for AMX is unstable.)
fn cpu_has_amx() -> bool {
    let leaf7 = __cpuid_count(7, 0);
    leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0
}

/// Asks Linux for permission to use the AMX tile data state (kernel 5.16+);
/// false when refused or not Linux.
fn request_tile_state() -> bool {
    #[cfg(target_os = "linux")]
    {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: arch_prctl only changes this process's permitted xsave
        // features; the syscall clobbers rcx and r11 and returns in rax.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// The tile configuration (palette 1): accumulators in tiles 0–2, the
/// activations in 3, the weights in 4–6, each 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..=6 {
            // Bytes per row (u16, little-endian) at 16 + 2t, rows at 48 + t.
            c[16 + 2 * t] = 64;
            c[48 + t] = ROWS as u8;
        }
        TileConfig(c)
    }
}

/// `out = epilogue(a · b)` for rows `0..m` of `a` (`k` values per row,
/// stride `lda`). Each block of 16 rows is converted to pairs into `pairs`
/// (16 rows of `b.stride()`, zero past the weights' pairs) right before its
/// tiles load it, so it is read from L1. A last block of fewer rows runs
/// the full tiles over whatever the scratch's other rows hold: a tile row
/// of the result depends only on the same row of activations, and those
/// rows are never stored.
///
/// # Safety
///
/// [`available`] returned true; `a` holds `m` rows; `pairs` is zeroed and
/// holds 16 rows of pairs; `out` and the residual hold rows `0..m` at
/// stride `ldo`, columns `0..n`; the bias `n` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    m: usize,
    a: &[f32],
    lda: usize,
    k: usize,
    b: &Bf16Rhs,
    n: usize,
    pairs: &mut [u32],
    out: &mut [f32],
    ldo: usize,
    ep: &Epilogue<'_>,
) {
    let stride = b.stride();
    debug_assert!(pairs.len() >= ROWS * stride);
    let config = TileConfig::new();
    let mut acc = [0f32; ROWS * NR];
    // SAFETY: AMX is available (caller); the configuration is valid.
    unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack)) };
    for i0 in (0..m).step_by(ROWS) {
        let rows = (m - i0).min(ROWS);
        // SAFETY: rows i0..i0+rows of `a` hold `k` values each (caller);
        // `pairs` holds 16 rows of `stride >= k/2` pairs.
        unsafe { convert(&a[i0 * lda..], lda, rows, k, stride, pairs) };
        for j0 in (0..n).step_by(NR) {
            let cols = (n - j0).min(NR);
            let (tiles, mask) = vectors_and_tail_mask(cols);
            let panel = b.panel(j0 / NR).as_ptr();
            // SAFETY: the 16 converted rows hold `stride` pairs each, the
            // panel `stride` rows of NR pairs; `acc` holds 16 rows of NR.
            unsafe { multiply(pairs.as_ptr(), stride, panel, tiles, &mut acc) };
            for r in 0..rows {
                let row = i0 + r;
                let bias = ep.bias.map(|bb| bb[j0..].as_ptr());
                let residual = ep.residual.map(|res| res[row * ldo + j0..].as_ptr());
                let dst = out[row * ldo + j0..].as_mut_ptr();
                let src = acc[r * NR..].as_ptr();
                // SAFETY: `src` is a row of NR accumulators; row < m and
                // columns j0..j0+cols (masked tail) are inside the output,
                // residual and bias.
                unsafe {
                    let v = |t: usize| _mm512_loadu_ps(src.add(16 * t));
                    match tiles {
                        3 => {
                            store_row(&[v(0), v(1), v(2)], mask, bias, residual, dst, ep.lo, ep.hi)
                        }
                        2 => store_row(&[v(0), v(1)], mask, bias, residual, dst, ep.lo, ep.hi),
                        _ => store_row(&[v(0)], mask, bias, residual, dst, ep.lo, ep.hi),
                    }
                }
            }
        }
    }
    // SAFETY: releases the tile state configured above.
    unsafe { asm!("tilerelease", options(nostack)) };
}

/// One block: `acc` (16 rows × NR) = the 16 rows of `a` times the panel,
/// in `tiles` accumulator tiles (the columns past them are left as they
/// were and never stored).
///
/// # Safety
///
/// The tiles are configured; `a` points at 16 rows of `stride` pairs, the
/// panel at `stride` rows of NR pairs, `stride` a multiple of 16.
#[inline(always)]
unsafe fn multiply(a: *const u32, stride: usize, panel: *const u32, tiles: usize, acc: &mut [f32]) {
    const _: () = assert!(COL_TILES == 3);
    let a_stride = stride * 4;
    let b_stride = NR * 4;
    // SAFETY: every load reads 16 rows of 64 bytes inside the caller's `a`
    // rows or panel (pairs kb·16.. of each, stride a multiple of 16); every
    // store writes 16 rows of 64 bytes inside `acc`.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            options(nostack)
        );
        for kb in (0..stride).step_by(PAIR_BLOCK) {
            let b = panel.add(kb * NR);
            asm!(
                "tileloadd tmm3, [{a} + {sa} * 1]",
                "tileloadd tmm4, [{b} + {sb} * 1]",
                "tdpbf16ps tmm0, tmm3, tmm4",
                a = in(reg) a.add(kb),
                b = in(reg) b,
                sa = in(reg) a_stride,
                sb = in(reg) b_stride,
                options(nostack, readonly),
            );
            if tiles >= 2 {
                asm!(
                    "tileloadd tmm5, [{b} + {sb} * 1]",
                    "tdpbf16ps tmm1, tmm3, tmm5",
                    b = in(reg) b.add(16),
                    sb = in(reg) b_stride,
                    options(nostack, readonly),
                );
            }
            if tiles >= 3 {
                asm!(
                    "tileloadd tmm6, [{b} + {sb} * 1]",
                    "tdpbf16ps tmm2, tmm3, tmm6",
                    b = in(reg) b.add(32),
                    sb = in(reg) b_stride,
                    options(nostack, readonly),
                );
            }
        }
        let c = acc.as_mut_ptr();
        let sc = NR * 4;
        asm!("tilestored [{c} + {sc} * 1], tmm0", c = in(reg) c, sc = in(reg) sc, options(nostack));
        if tiles >= 2 {
            asm!("tilestored [{c} + {sc} * 1], tmm1", c = in(reg) c.add(16), sc = in(reg) sc, options(nostack));
        }
        if tiles >= 3 {
            asm!("tilestored [{c} + {sc} * 1], tmm2", c = in(reg) c.add(32), sc = in(reg) sc, options(nostack));
        }
    }
}

//! The patch matrix of a dense (or grouped) convolution, for [`gemm_packed`](super::gemm_packed).

use super::{DwGeometry, Isa};

/// Geometry of one group's im2col: the same fields as a depthwise
/// convolution, `c` being the group's input channels.
pub type ColGeometry = DwGeometry;

/// Writes the `[c·kh·kw, oh·ow]` patch matrix of `input` (`[c, h, w]`) into
/// `col`, zeros where a tap falls in the padding.
///
/// # Panics
///
/// If `input` or `col` is shorter than the geometry needs.
pub fn im2col(g: &ColGeometry, input: &[f32], col: &mut [f32]) {
    let (plane, positions) = (g.h * g.w, g.oh * g.ow);
    assert!(input.len() >= g.c * plane, "im2col: input too short");
    assert!(
        col.len() >= g.c * g.kh * g.kw * positions,
        "im2col: col too short"
    );
    let [sy, sx] = g.stride;
    let [dy, dx] = g.dilation;
    let mut rows = col.chunks_exact_mut(positions.max(1));
    for ch in 0..g.c {
        let src = &input[ch * plane..][..plane];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = rows.next().expect("col sized above");
                // Output columns whose tap lands inside the input.
                let reach = kx * dx;
                let lo = g.pad.left.saturating_sub(reach).div_ceil(sx).min(g.ow);
                let hi = (g.pad.left + g.w)
                    .saturating_sub(reach)
                    .div_ceil(sx)
                    .clamp(lo, g.ow);
                for oy in 0..g.oh {
                    let dst = &mut row[oy * g.ow..][..g.ow];
                    let iy = (oy * sy + ky * dy)
                        .checked_sub(g.pad.top)
                        .filter(|&iy| iy < g.h);
                    let Some(iy) = iy else {
                        dst.fill(0.0);
                        continue;
                    };
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if hi > lo {
                        let srow = &src[iy * g.w..][..g.w];
                        let x0 = lo * sx + reach - g.pad.left;
                        if sx == 1 {
                            dst[lo..hi].copy_from_slice(&srow[x0..x0 + hi - lo]);
                        } else {
                            for (d, &s) in dst[lo..hi].iter_mut().zip(srow[x0..].iter().step_by(sx))
                            {
                                *d = s;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Writes patch rows `first..first + count` of a channels-last `input`
/// (`[h, w, c]`) into `col`: one row of `kh·kw·c` values per output pixel
/// (row-major over `oh, ow`), in `(ky, kx, c)` order, zeros where a tap falls
/// in the padding. The rows feed [`gemm_rows`](super::gemm_rows).
///
/// # Panics
///
/// If `input` or `col` is shorter than the geometry needs, or the rows run
/// past the output.
pub fn im2col_rows(
    isa: Isa,
    g: &ColGeometry,
    input: &[f32],
    first: usize,
    count: usize,
    col: &mut [f32],
) {
    match isa.usable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` checked that the CPU has AVX-512F.
        Isa::Avx512 if g.kw * g.c <= 16 => unsafe {
            im2col_rows_avx512(g, input, first, count, col)
        },
        _ => im2col_rows_with(g, input, first, count, col, copy_short),
    }
}

/// [`im2col_rows`] for runs of at most 16 floats (a stem convolution's are
/// 9): one masked load and store per run.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn im2col_rows_avx512(
    g: &ColGeometry,
    input: &[f32],
    first: usize,
    count: usize,
    col: &mut [f32],
) {
    use std::arch::x86_64::*;
    im2col_rows_with(
        g,
        input,
        first,
        count,
        col,
        |dst: &mut [f32], src: &[f32]| {
            let n = dst.len().min(src.len()).min(16);
            let mask: __mmask16 = ((1u32 << n) - 1) as u16;
            // SAFETY: the mask covers the first `n` floats of both slices.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, src.as_ptr());
                _mm512_mask_storeu_ps(dst.as_mut_ptr(), mask, v);
            }
        },
    )
}

#[inline(always)]
fn im2col_rows_with(
    g: &ColGeometry,
    input: &[f32],
    first: usize,
    count: usize,
    col: &mut [f32],
    copy_run: impl Fn(&mut [f32], &[f32]),
) {
    let c = g.c;
    let k = g.kh * g.kw * c;
    assert!(input.len() >= g.h * g.w * c, "im2col_rows: input too short");
    assert!(
        first + count <= g.oh * g.ow,
        "im2col_rows: rows past the output"
    );
    assert!(col.len() >= count * k, "im2col_rows: col too short");
    let run_len = g.kw * c;
    let (mut oy, mut ox) = (first / g.ow, first % g.ow);
    for row in col.chunks_exact_mut(k.max(1)).take(count) {
        // With unit dilation, a row of taps inside the image is one
        // contiguous run of `kw` pixels.
        let x0 = (ox * g.stride[1])
            .checked_sub(g.pad.left)
            .filter(|&x0| g.dilation[1] == 1 && x0 + g.kw <= g.w);
        for (ky, run) in row.chunks_exact_mut(run_len.max(1)).enumerate() {
            let iy = (oy * g.stride[0] + ky * g.dilation[0])
                .checked_sub(g.pad.top)
                .filter(|&iy| iy < g.h);
            let Some(iy) = iy else {
                run.fill(0.0);
                continue;
            };
            if let Some(x0) = x0 {
                copy_run(run, &input[(iy * g.w + x0) * c..][..run_len]);
                continue;
            }
            for (kx, dst) in run.chunks_exact_mut(c).enumerate() {
                let ix = (ox * g.stride[1] + kx * g.dilation[1])
                    .checked_sub(g.pad.left)
                    .filter(|&ix| ix < g.w);
                match ix {
                    Some(ix) => dst.copy_from_slice(&input[(iy * g.w + ix) * c..][..c]),
                    None => dst.fill(0.0),
                }
            }
        }
        ox += 1;
        if ox == g.ow {
            ox = 0;
            oy += 1;
        }
    }
}

/// `dst.copy_from_slice(src)` for the short runs of a patch row (a stem
/// convolution's are 9 floats): an inlined loop instead of a `memcpy` call
/// per run, which cost as much as the GEMM.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    if dst.len() > 64 {
        dst.copy_from_slice(src);
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s;
    }
}

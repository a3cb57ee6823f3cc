//! Dense convolution of an NCHW image into channels-last rows, for the
//! convolutions that read a network's input (few channels, NCHW as given):
//! interior pixels read their patches in place through
//! [`gemm_gather`](super::gemm_gather), so neither a layout change of the
//! input nor a patch matrix is needed; only border pixels get patch rows.

use super::{AlignedBuf, ColGeometry, Epilogue, Isa, PackedRhs, gemm_gather, gemm_rows};

/// Convolves one image: `input` is `[c, h, w]` (`g.c` channels), `w` the
/// `[(c, ky, kx), n]` weights (ONNX's `[n, c, kh, kw]` through
/// [`PackedRhs::pack_transposed`]), `out` `[oh·ow, n]` (channels-last), the epilogue's bias per output channel and
/// its residual laid out like `out`. `col` is scratch for the border
/// pixels' patch rows (grown as needed).
///
/// # Panics
///
/// If a slice is shorter than the geometry needs or `w` does not have
/// `c·kh·kw` rows.
pub fn conv_nchw(
    isa: Isa,
    g: &ColGeometry,
    input: &[f32],
    w: &PackedRhs,
    ep: &Epilogue<'_>,
    out: &mut [f32],
    col: &mut AlignedBuf,
) {
    conv_nchw_rows(isa, g, input, w, ep, 0..g.oh, out, col);
}

/// [`conv_nchw`] for output rows `rows` only: `out` holds those rows, the
/// residual is still laid out like the whole output. Threads that split an
/// image into bands of rows call this.
///
/// # Panics
///
/// As [`conv_nchw`], and if `rows` ends past the output.
#[allow(clippy::too_many_arguments)]
pub fn conv_nchw_rows(
    isa: Isa,
    g: &ColGeometry,
    input: &[f32],
    w: &PackedRhs,
    ep: &Epilogue<'_>,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
    col: &mut AlignedBuf,
) {
    let (plane, k, n) = (g.h * g.w, g.c * g.kh * g.kw, w.n());
    assert_eq!(w.k(), k, "conv_nchw: weights for another kernel");
    assert!(input.len() >= g.c * plane, "conv_nchw: input too short");
    assert!(rows.end <= g.oh, "conv_nchw: rows past the output");
    assert!(
        out.len() >= rows.len() * g.ow * n,
        "conv_nchw: out too short"
    );
    let [sy, sx] = g.stride;
    let [dy, dx] = g.dilation;
    // Each tap's position relative to its window's top-left pixel.
    let mut offsets = Vec::with_capacity(k);
    for ci in 0..g.c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                offsets.push(ci * plane + ky * dy * g.w + kx * dx);
            }
        }
    }
    // Output columns whose window lies inside the image horizontally.
    let reach_x = (g.kw - 1) * dx;
    let lo = g.pad.left.div_ceil(sx).min(g.ow);
    let hi = (g.w + g.pad.left)
        .checked_sub(reach_x + 1)
        .map_or(0, |last| last / sx + 1)
        .clamp(lo, g.ow);
    let reach_y = (g.kh - 1) * dy;
    let part = |first: usize, count: usize| Epilogue {
        residual: ep.residual.map(|r| &r[first * n..][..count * n]),
        ..*ep
    };
    for oy in rows.clone() {
        let top = (oy * sy)
            .checked_sub(g.pad.top)
            .filter(|&t| t + reach_y < g.h);
        let (a, b) = if top.is_some() { (lo, hi) } else { (0, 0) };
        // `row` indexes the whole output (the residual), `orow` this band.
        let (row, orow) = (oy * g.ow, (oy - rows.start) * g.ow);
        if let Some(top) = top
            && b > a
        {
            let base = top * g.w + a * sx - g.pad.left;
            let dst = &mut out[(orow + a) * n..][..(b - a) * n];
            let e = part(row + a, b - a);
            gemm_gather(isa, b - a, &input[base..], sx, &offsets, w, dst, n, &e);
        }
        for (x0, x1) in [(0, a), (b, g.ow)] {
            if x1 <= x0 {
                continue;
            }
            let count = x1 - x0;
            col.ensure_len(count * k);
            for (ox, patch) in (x0..x1).zip(col.chunks_exact_mut(k)) {
                patch_row(g, input, oy, ox, patch);
            }
            let dst = &mut out[(orow + x0) * n..][..count * n];
            let e = part(row + x0, count);
            gemm_rows(isa, count, &col[..count * k], k, w, dst, n, &e);
        }
    }
}

/// The `(c, ky, kx)` patch of output pixel `(oy, ox)`, zeros in the padding.
fn patch_row(g: &ColGeometry, input: &[f32], oy: usize, ox: usize, patch: &mut [f32]) {
    let plane = g.h * g.w;
    let mut taps = patch.iter_mut();
    for ci in 0..g.c {
        for ky in 0..g.kh {
            let iy = (oy * g.stride[0] + ky * g.dilation[0])
                .checked_sub(g.pad.top)
                .filter(|&iy| iy < g.h);
            for kx in 0..g.kw {
                let ix = (ox * g.stride[1] + kx * g.dilation[1])
                    .checked_sub(g.pad.left)
                    .filter(|&ix| ix < g.w);
                let v = match (iy, ix) {
                    (Some(iy), Some(ix)) => input[ci * plane + iy * g.w + ix],
                    _ => 0.0,
                };
                *taps.next().expect("patch holds c·kh·kw taps") = v;
            }
        }
    }
}

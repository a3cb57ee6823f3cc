//! The patch matrix of a dense (or grouped) convolution, for [`gemm_packed`](super::gemm_packed).

use super::DwGeometry;

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

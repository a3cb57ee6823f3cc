//! Patches of a channels-last `u8` image as the rows of a matrix, for a dense
//! convolution run as [`super::gemm_u8s8`]: row `oy·ow + ox` holds the
//! window of output pixel `(oy, ox)` in `(ky, kx, c)` order, so each tap is
//! one contiguous copy of `c` bytes. Taps in the padding hold the activation
//! zero point (real value 0).

use super::super::DwGeometry;

/// Fills `out` (`[oh·ow, kh·kw·c]`, rows at stride `ldo`) with the patches
/// of `input` (`[h, w, c]`); `g` is the convolution's geometry with `g.c`
/// the input channels.
///
/// # Panics
///
/// If `input` or `out` is too short, or `ldo < kh·kw·c`.
pub fn im2col_u8(g: &DwGeometry, input: &[u8], a_zero: u8, out: &mut [u8], ldo: usize) {
    let (c, taps) = (g.c, g.kh * g.kw);
    let k = taps * c;
    assert!(input.len() >= g.h * g.w * c, "im2col_u8: input too short");
    assert!(ldo >= k, "im2col_u8: ldo < kh·kw·c");
    let rows = g.oh * g.ow;
    if rows == 0 {
        return;
    }
    assert!(
        out.len() >= (rows - 1) * ldo + k,
        "im2col_u8: out too short"
    );
    for oy in 0..g.oh {
        let by = (oy * g.stride[0]) as isize - g.pad.top as isize;
        for ox in 0..g.ow {
            let bx = (ox * g.stride[1]) as isize - g.pad.left as isize;
            let row = &mut out[(oy * g.ow + ox) * ldo..][..k];
            for ky in 0..g.kh {
                let y = by + (ky * g.dilation[0]) as isize;
                // An undilated row of taps inside the image is one run of
                // `kw·c` bytes (9 for a 3×3 stem on RGB): one short copy.
                if g.dilation[1] == 1
                    && (0..g.h as isize).contains(&y)
                    && bx >= 0
                    && bx as usize + g.kw <= g.w
                {
                    let run = g.kw * c;
                    let src = (y as usize * g.w + bx as usize) * c;
                    copy_short(&mut row[ky * run..][..run], &input[src..src + run]);
                    continue;
                }
                for kx in 0..g.kw {
                    let x = bx + (kx * g.dilation[1]) as isize;
                    let dst = &mut row[(ky * g.kw + kx) * c..][..c];
                    if (0..g.h as isize).contains(&y) && (0..g.w as isize).contains(&x) {
                        let src = (y as usize * g.w + x as usize) * c;
                        copy_short(dst, &input[src..src + c]);
                    } else {
                        dst.fill(a_zero);
                    }
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` without a `memcpy` call for the few bytes a
/// patch row's pieces have: two overlapping fixed-size moves.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = dst.len();
    debug_assert_eq!(n, src.len());
    match n {
        8..=16 => {
            dst[..8].copy_from_slice(&src[..8]);
            dst[n - 8..].copy_from_slice(&src[n - 8..]);
        }
        4..=7 => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[n - 4..].copy_from_slice(&src[n - 4..]);
        }
        0..=3 => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s;
            }
        }
        _ => dst.copy_from_slice(src),
    }
}

/// ONNX dense convolution weights `[o, c, kh, kw]` reordered to
/// `[o, kh, kw, c]`, the `(ky, kx, c)` reduction order of [`im2col_u8`]; pack
/// the result with [`super::PackedI8::pack_transposed`]`(_, o, kh·kw·c)`.
///
/// # Panics
///
/// If `w.len() != o * c * taps`.
pub fn dense_weights_hwc(w: &[i8], o: usize, c: usize, taps: usize) -> Vec<i8> {
    assert_eq!(w.len(), o * c * taps, "dense_weights_hwc: length");
    let mut out = vec![0i8; w.len()];
    for oc in 0..o {
        for ch in 0..c {
            for t in 0..taps {
                out[(oc * taps + t) * c + ch] = w[(oc * c + ch) * taps + t];
            }
        }
    }
    out
}

//! Naive int8 kernels, the test oracles of the fast ones: one output at a
//! time, products summed in `i64` and checked to fit `i32`, weights read in
//! ONNX order, padding tested tap by tap.

use super::super::DwGeometry;
use super::Requant;

fn to_i32(acc: i64) -> i32 {
    i32::try_from(acc).expect("int8 reference: accumulator overflows i32")
}

/// `out[i][j] = rq(Σ_c (a[i*lda + c] - a_zero) · w[c*n + j], j)`, `m × n`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8s8(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    lda: usize,
    a_zero: u8,
    w: &[i8],
    rq: &Requant<'_>,
) -> Vec<u8> {
    let mut out = vec![0u8; m * n];
    for i in 0..m {
        for j in 0..n {
            let acc: i64 = (0..k)
                .map(|c| (i64::from(a[i * lda + c]) - i64::from(a_zero)) * i64::from(w[c * n + j]))
                .sum();
            out[i * n + j] = rq.quantize(j, to_i32(acc));
        }
    }
    out
}

/// Convolution of a channels-last `[h, w, c_in]` image by ONNX weights
/// `[o, c_in / groups, kh, kw]`; `g.c` is `c_in`. Returns `[oh, ow, o]`.
/// Depthwise is `groups == c_in == o`.
pub fn conv_u8(
    g: &DwGeometry,
    groups: usize,
    o: usize,
    input: &[u8],
    a_zero: u8,
    weight: &[i8],
    rq: &Requant<'_>,
) -> Vec<u8> {
    let (cg, og) = (g.c / groups, o / groups);
    let mut out = vec![0u8; g.oh * g.ow * o];
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            for oc in 0..o {
                let grp = oc / og;
                let mut acc = 0i64;
                for ci in 0..cg {
                    let ch = grp * cg + ci;
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let y = (oy * g.stride[0] + ky * g.dilation[0]) as isize
                                - g.pad.top as isize;
                            let x = (ox * g.stride[1] + kx * g.dilation[1]) as isize
                                - g.pad.left as isize;
                            if y < 0 || x < 0 || y >= g.h as isize || x >= g.w as isize {
                                continue;
                            }
                            let v = input[(y as usize * g.w + x as usize) * g.c + ch];
                            let wv = weight[((oc * cg + ci) * g.kh + ky) * g.kw + kx];
                            acc += (i64::from(v) - i64::from(a_zero)) * i64::from(wv);
                        }
                    }
                }
                out[(oy * g.ow + ox) * o + oc] = rq.quantize(oc, to_i32(acc));
            }
        }
    }
    out
}

/// The real value of each byte, added in `f64`, requantized: the int8 `Add`
/// as dequantize → add → quantize, independent of [`super::AddQuant::add`]'s
/// `f32` arithmetic (the tests allow one step where the two roundings differ).
pub fn add_u8(a: &[u8], b: &[u8], q: &super::AddQuant) -> Vec<u8> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let v = (f64::from(x) - f64::from(q.a_zero)) * f64::from(q.a_scale)
                + (f64::from(y) - f64::from(q.b_zero)) * f64::from(q.b_scale);
            (v.round_ties_even() + f64::from(q.zero)).clamp(f64::from(q.lo), f64::from(q.hi)) as u8
        })
        .collect()
}

/// The mean of each channel's real values in `f64`, requantized.
pub fn global_avg_pool_u8(
    input: &[u8],
    pixels: usize,
    c: usize,
    a_zero: u8,
    scale: f32,
    zero: u8,
) -> Vec<u8> {
    (0..c)
        .map(|ch| {
            let s: f64 = (0..pixels)
                .map(|p| f64::from(input[p * c + ch]) - f64::from(a_zero))
                .sum();
            ((s * f64::from(scale)).round_ties_even() + f64::from(zero)).clamp(0.0, 255.0) as u8
        })
        .collect()
}

//! Naive kernels with the same signatures as the fast ones: the oracle the
//! tests compare against.
//!
//! Each visits every output element and every tap with explicit index
//! arithmetic and bounds tests, and accumulates in f64, so that it is
//! obviously right rather than fast. They share only validation (and hence
//! output shapes) with the fast kernels; their hand-computed unit tests live
//! beside the fast kernels' tests. Public so that other crates' tests can use
//! them too; too slow for serving.

use super::conv::plan_conv2d;
use super::elementwise::validate_batch_norm;
use super::gemm::{plan_gemm, plan_matmul};
use super::pool::{plan_global_pool, plan_pool2d};
use super::reduce::{Reduction, plan_reduce};
use super::{Conv2dParams, GemmParams, Pool2dParams, Tensor, TensorError, shape};

/// Direct-loop [`conv2d`](super::conv2d).
pub fn conv2d(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: &Conv2dParams,
) -> Result<Tensor, TensorError> {
    let plan = plan_conv2d(input, weight, bias, p)?;
    let out_shape = plan.out_shape();
    let (n, c, o) = (plan.n, plan.c, plan.o);
    let (h, w) = (plan.h.input as i64, plan.w.input as i64);
    let (kh, kw) = (plan.h.kernel, plan.w.kernel);
    let (oh, ow) = (plan.h.output, plan.w.output);
    let mut out = Vec::with_capacity(out_shape.iter().product());
    for b in 0..n {
        for oc in 0..o {
            let g = oc / plan.opg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = plan.bias.map_or(0.0, |bias| f64::from(bias[oc]));
                    for icg in 0..plan.cpg {
                        let ic = g * plan.cpg + icg;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * p.stride[0] + ky * p.dilation[0]) as i64
                                    - p.padding.top as i64;
                                let ix = (ox * p.stride[1] + kx * p.dilation[1]) as i64
                                    - p.padding.left as i64;
                                if iy < 0 || iy >= h || ix < 0 || ix >= w {
                                    continue;
                                }
                                let xi = ((b * c + ic) as i64 * h + iy) * w + ix;
                                let wi = ((oc * plan.cpg + icg) * kh + ky) * kw + kx;
                                acc +=
                                    f64::from(plan.input[xi as usize]) * f64::from(plan.weight[wi]);
                            }
                        }
                    }
                    out.push(p.activation.apply(acc as f32));
                }
            }
        }
    }
    Ok(Tensor::from_f32_unchecked(out_shape, out))
}

/// Triple-loop [`gemm`](super::gemm).
pub fn gemm(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    p: &GemmParams,
) -> Result<Tensor, TensorError> {
    let plan = plan_gemm(a, b, c, p)?;
    let (m, n, k) = (plan.m, plan.n, plan.k);
    let (da, db) = (a.f32_for("gemm")?, b.f32_for("gemm")?);
    let a_at = |i: usize, kk: usize| {
        if p.trans_a {
            da[kk * m + i]
        } else {
            da[i * k + kk]
        }
    };
    let b_at = |kk: usize, j: usize| {
        if p.trans_b {
            db[j * k + kk]
        } else {
            db[kk * n + j]
        }
    };
    // C right-aligned against [M, N]; a size-1 (or missing) dimension repeats.
    let c_at = |i: usize, j: usize| {
        c.map_or(0.0, |c| {
            let cs = c.shape();
            let d = c.as_f32().unwrap_or(&[]);
            match cs.len() {
                0 => d[0],
                1 => d[if cs[0] == 1 { 0 } else { j }],
                _ => {
                    let ci = if cs[0] == 1 { 0 } else { i };
                    let cj = if cs[1] == 1 { 0 } else { j };
                    d[ci * cs[1] + cj]
                }
            }
        })
    };
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f64;
            for kk in 0..k {
                acc += f64::from(a_at(i, kk)) * f64::from(b_at(kk, j));
            }
            let y = f64::from(p.alpha) * acc + f64::from(p.beta) * f64::from(c_at(i, j));
            out.push(p.activation.apply(y as f32));
        }
    }
    Ok(Tensor::from_f32_unchecked(vec![m, n], out))
}

/// Maps a batch multi-index of the broadcast result to a row-major offset
/// (in matrices) of an operand with batch shape `own`.
fn batch_offset(idx: &[usize], own: &[usize]) -> usize {
    let lead = idx.len() - own.len();
    own.iter().enumerate().fold(0, |off, (d, &size)| {
        off * size + if size == 1 { 0 } else { idx[lead + d] }
    })
}

/// Multi-index of flat position `flat` in `shape` (row-major).
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = flat % shape[d];
        flat /= shape[d];
    }
    idx
}

/// Per-element [`matmul`](super::matmul).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    let plan = plan_matmul(a, b)?;
    let (da, db) = (a.f32_for("matmul")?, b.f32_for("matmul")?);
    let (m, n, k) = (plan.m, plan.n, plan.k);
    let a_batch = &plan.a_shape[..plan.a_shape.len() - 2];
    let b_batch = &plan.b_shape[..plan.b_shape.len() - 2];
    let batches: usize = plan.batch.iter().product();
    let mut out = Vec::with_capacity(batches * m * n);
    for bi in 0..batches {
        let idx = unravel(bi, &plan.batch);
        let oa = batch_offset(&idx, a_batch) * m * k;
        let ob = batch_offset(&idx, b_batch) * k * n;
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f64;
                for kk in 0..k {
                    acc += f64::from(da[oa + i * k + kk]) * f64::from(db[ob + kk * n + j]);
                }
                out.push(acc as f32);
            }
        }
    }
    Ok(Tensor::from_f32_unchecked(plan.out_shape, out))
}

/// Visits every tap of every pooling window, reporting in-bounds values and
/// how many taps fell inside the padded input.
fn pool_naive(
    op: &'static str,
    x: &Tensor,
    p: &Pool2dParams,
    reduce: impl Fn(&[f32], usize) -> f32,
) -> Result<Tensor, TensorError> {
    let plan = plan_pool2d(op, x, p)?;
    let planes = plan.out_shape[0] * plan.out_shape[1];
    let (oh, ow) = (plan.h.output, plan.w.output);
    let (h, w) = (plan.h.input as i64, plan.w.input as i64);
    let pad = p.padding;
    let mut out = Vec::with_capacity(plan.out_shape.iter().product());
    let mut window = Vec::new();
    for plane in 0..planes {
        for oy in 0..oh {
            for ox in 0..ow {
                window.clear();
                let mut in_padded = 0;
                for ky in 0..p.kernel[0] {
                    for kx in 0..p.kernel[1] {
                        let iy = (oy * p.stride[0] + ky * p.dilation[0]) as i64 - pad.top as i64;
                        let ix = (ox * p.stride[1] + kx * p.dilation[1]) as i64 - pad.left as i64;
                        if iy < h + pad.bottom as i64 && ix < w + pad.right as i64 {
                            in_padded += 1;
                        }
                        if iy >= 0 && iy < h && ix >= 0 && ix < w {
                            window.push(plan.input[((plane as i64 * h + iy) * w + ix) as usize]);
                        }
                    }
                }
                out.push(reduce(&window, in_padded));
            }
        }
    }
    Ok(Tensor::from_f32_unchecked(plan.out_shape, out))
}

/// Naive [`max_pool2d`](super::max_pool2d).
pub fn max_pool2d(x: &Tensor, p: &Pool2dParams) -> Result<Tensor, TensorError> {
    pool_naive("max_pool2d", x, p, |win, _| {
        win.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    })
}

/// Naive [`avg_pool2d`](super::avg_pool2d).
pub fn avg_pool2d(x: &Tensor, p: &Pool2dParams) -> Result<Tensor, TensorError> {
    pool_naive("avg_pool2d", x, p, |win, in_padded| {
        let sum: f64 = win.iter().map(|&v| f64::from(v)).sum();
        let count = if p.count_include_pad {
            in_padded
        } else {
            win.len()
        };
        (sum / count as f64) as f32
    })
}

/// Naive [`global_avg_pool`](super::global_avg_pool).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor, TensorError> {
    let (data, spatial, out_shape) = plan_global_pool(x)?;
    let planes = data.len() / spatial;
    let out: Vec<f32> = (0..planes)
        .map(|i| {
            let sum: f64 = (0..spatial).map(|j| f64::from(data[i * spatial + j])).sum();
            (sum / spatial as f64) as f32
        })
        .collect();
    Ok(Tensor::from_f32_unchecked(out_shape, out))
}

/// Per-position [`softmax`](super::softmax), gathering each strided row.
pub fn softmax(x: &Tensor, axis: isize) -> Result<Tensor, TensorError> {
    let data = x.f32_for("softmax")?;
    let axis = shape::normalize_axis("softmax", axis, x.rank())?;
    let (outer, len, inner) = shape::split_at_axis(x.shape(), axis);
    let mut out = vec![0f32; data.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let max = (0..len)
                .map(|j| data[at(j)])
                .fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = (0..len).map(|j| f64::from(data[at(j)] - max).exp()).sum();
            for j in 0..len {
                out[at(j)] = (f64::from(data[at(j)] - max).exp() / sum) as f32;
            }
        }
    }
    Ok(Tensor::from_f32_unchecked(x.shape().to_vec(), out))
}

fn binary_naive(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32,
) -> Result<Tensor, TensorError> {
    let (da, db) = (a.f32_for(op)?, b.f32_for(op)?);
    let out_shape = shape::broadcast_shapes(op, a.shape(), b.shape())?;
    let n = shape::num_elements(op, &out_shape)?;
    // Row-major offset of a broadcast operand at output multi-index `idx`.
    let offset = |idx: &[usize], own: &[usize]| {
        let lead = idx.len() - own.len();
        own.iter().enumerate().fold(0, |off, (d, &size)| {
            off * size + if size == 1 { 0 } else { idx[lead + d] }
        })
    };
    let out: Vec<f32> = (0..n)
        .map(|flat| {
            let idx = unravel(flat, &out_shape);
            f(da[offset(&idx, a.shape())], db[offset(&idx, b.shape())])
        })
        .collect();
    Ok(Tensor::from_f32_unchecked(out_shape, out))
}

/// Per-element [`add`](super::add).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary_naive("add", a, b, |x, y| x + y)
}

/// Per-element [`mul`](super::mul).
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary_naive("mul", a, b, |x, y| x * y)
}

/// Per-element [`sub`](super::sub).
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary_naive("sub", a, b, |x, y| x - y)
}

/// Per-element [`div`](super::div).
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary_naive("div", a, b, |x, y| x / y)
}

/// Per-element [`pow`](super::pow), computed in f64.
pub fn pow(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary_naive("pow", a, b, |x, y| f64::from(x).powf(f64::from(y)) as f32)
}

/// Per-element [`maximum`](super::maximum).
pub fn maximum(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary_naive("maximum", a, b, |x, y| {
        if x.is_nan() || y.is_nan() {
            f32::NAN
        } else {
            x.max(y)
        }
    })
}

/// Per-element [`minimum`](super::minimum).
pub fn minimum(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary_naive("minimum", a, b, |x, y| {
        if x.is_nan() || y.is_nan() {
            f32::NAN
        } else {
            x.min(y)
        }
    })
}

/// Formula-as-written [`batch_norm`](super::batch_norm).
pub fn batch_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    epsilon: f32,
) -> Result<Tensor, TensorError> {
    let (data, [scale, bias, mean, var]) =
        validate_batch_norm(x, [scale, bias, mean, var], epsilon)?;
    let c = x.shape()[1];
    let plane: usize = x.shape()[2..].iter().product();
    let out: Vec<f32> = data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / plane) % c;
            let norm = (f64::from(v) - f64::from(mean[ch]))
                / (f64::from(var[ch]) + f64::from(epsilon)).sqrt();
            (norm * f64::from(scale[ch]) + f64::from(bias[ch])) as f32
        })
        .collect();
    Ok(Tensor::from_f32_unchecked(x.shape().to_vec(), out))
}

/// Gathers, for every output element, the input elements of its reduced axes by explicit
/// multi-indices, and lets `f` reduce them.
fn reduce_naive(
    r: Reduction,
    x: &Tensor,
    axes: &[isize],
    keepdims: bool,
    f: impl Fn(&[f32]) -> f32,
) -> Result<Tensor, TensorError> {
    let plan = plan_reduce(r, x, axes, keepdims)?;
    let shape = x.shape();
    let kept: Vec<usize> = (0..shape.len()).filter(|&d| !plan.reduced[d]).collect();
    let gone: Vec<usize> = (0..shape.len()).filter(|&d| plan.reduced[d]).collect();
    let kept_shape: Vec<usize> = kept.iter().map(|&d| shape[d]).collect();
    let gone_shape: Vec<usize> = gone.iter().map(|&d| shape[d]).collect();
    let n_out: usize = kept_shape.iter().product();
    let mut out = Vec::with_capacity(n_out);
    let mut values = Vec::with_capacity(plan.count);
    for o in 0..n_out {
        let ko = unravel(o, &kept_shape);
        values.clear();
        for g in 0..plan.count {
            let go = unravel(g, &gone_shape);
            let mut full = vec![0; shape.len()];
            for (&d, &i) in kept.iter().zip(&ko).chain(gone.iter().zip(&go)) {
                full[d] = i;
            }
            let flat = full.iter().zip(shape).fold(0, |off, (&i, &n)| off * n + i);
            values.push(plan.input[flat]);
        }
        out.push(f(&values));
    }
    Ok(Tensor::from_f32_unchecked(plan.out_shape, out))
}

fn sum_f64(values: &[f32]) -> f64 {
    values.iter().map(|&v| f64::from(v)).sum()
}

/// Gather-per-output [`reduce_sum`](super::reduce_sum).
pub fn reduce_sum(x: &Tensor, axes: &[isize], keepdims: bool) -> Result<Tensor, TensorError> {
    reduce_naive(Reduction::Sum, x, axes, keepdims, |v| sum_f64(v) as f32)
}

/// Gather-per-output [`reduce_mean`](super::reduce_mean).
pub fn reduce_mean(x: &Tensor, axes: &[isize], keepdims: bool) -> Result<Tensor, TensorError> {
    reduce_naive(Reduction::Mean, x, axes, keepdims, |v| {
        (sum_f64(v) / v.len() as f64) as f32
    })
}

/// Gather-per-output [`reduce_max`](super::reduce_max).
pub fn reduce_max(x: &Tensor, axes: &[isize], keepdims: bool) -> Result<Tensor, TensorError> {
    reduce_naive(Reduction::Max, x, axes, keepdims, |v| {
        if v.iter().any(|x| x.is_nan()) {
            f32::NAN
        } else {
            v.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        }
    })
}

/// Gather-per-output [`reduce_min`](super::reduce_min).
pub fn reduce_min(x: &Tensor, axes: &[isize], keepdims: bool) -> Result<Tensor, TensorError> {
    reduce_naive(Reduction::Min, x, axes, keepdims, |v| {
        if v.iter().any(|x| x.is_nan()) {
            f32::NAN
        } else {
            v.iter().copied().fold(f32::INFINITY, f32::min)
        }
    })
}

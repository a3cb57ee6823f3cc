//! Broadcasting binary arithmetic, elementwise math and per-channel batch normalization.
//!
//! Domain errors follow IEEE 754, as NumPy and ONNX do, rather than failing the call:
//! `sqrt` and `log` of a negative number and `pow` of a negative base to a non-integer
//! exponent are NaN, `log(0)` is -inf, `x / 0` is ±inf (NaN for `0 / 0`). Refusing them
//! would cost a scan of every input and fail a whole image for one bad pixel; a NaN stays
//! visible downstream instead (`maximum`, `minimum` and the reductions propagate it).

use std::sync::Arc;

use super::{Tensor, TensorError, shape};

/// Elementwise `a + b` with numpy broadcasting.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary("add", a, b, |x, y| x + y)
}

/// Elementwise `a * b` with numpy broadcasting.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary("mul", a, b, |x, y| x * y)
}

/// Elementwise `a - b` with numpy broadcasting.
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary("sub", a, b, |x, y| x - y)
}

/// Elementwise `a / b` with numpy broadcasting; division by zero is ±inf (NaN for `0 / 0`).
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary("div", a, b, |x, y| x / y)
}

/// Elementwise `a ^ b` with numpy broadcasting (a scalar `b` of shape `[]` is the common
/// case); a negative base to a non-integer exponent is NaN.
pub fn pow(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary("pow", a, b, f32::powf)
}

/// Elementwise maximum with numpy broadcasting; NaN on either side gives NaN (`np.maximum`).
pub fn maximum(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary("maximum", a, b, max_nan)
}

/// Elementwise minimum with numpy broadcasting; NaN on either side gives NaN (`np.minimum`).
pub fn minimum(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    binary("minimum", a, b, min_nan)
}

/// The larger of two values, NaN if either is (`f32::max` would drop the NaN).
#[inline]
pub(crate) fn max_nan(x: f32, y: f32) -> f32 {
    if x > y || x.is_nan() { x } else { y }
}

/// The smaller of two values, NaN if either is.
#[inline]
pub(crate) fn min_nan(x: f32, y: f32) -> f32 {
    if x < y || x.is_nan() { x } else { y }
}

/// Elementwise square root; NaN for a negative input.
pub fn sqrt(x: &Tensor) -> Result<Tensor, TensorError> {
    x.map_f32("sqrt", |v| v.iter_mut().for_each(|v| *v = v.sqrt()))
}

/// Elementwise absolute value.
pub fn abs(x: &Tensor) -> Result<Tensor, TensorError> {
    x.map_f32("abs", |v| v.iter_mut().for_each(|v| *v = v.abs()))
}

/// Elementwise `e^x`; overflows to +inf above ~88.7.
pub fn exp(x: &Tensor) -> Result<Tensor, TensorError> {
    x.map_f32("exp", |v| v.iter_mut().for_each(|v| *v = v.exp()))
}

/// Elementwise natural logarithm; -inf for 0, NaN for a negative input.
pub fn log(x: &Tensor) -> Result<Tensor, TensorError> {
    x.map_f32("log", |v| v.iter_mut().for_each(|v| *v = v.ln()))
}

fn binary(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Copy,
) -> Result<Tensor, TensorError> {
    let (da, db) = (a.f32_for(op)?, b.f32_for(op)?);
    let out_shape = shape::broadcast_shapes(op, a.shape(), b.shape())?;
    let n = shape::num_elements(op, &out_shape)?;
    // The common cases (same shape, one scalar side) skip index bookkeeping.
    let out: Arc<[f32]> = if da.len() == n && db.len() == n {
        da.iter().zip(db).map(|(&x, &y)| f(x, y)).collect()
    } else if db.len() == 1 && da.len() == n {
        da.iter().map(|&x| f(x, db[0])).collect()
    } else if da.len() == 1 && db.len() == n {
        db.iter().map(|&y| f(da[0], y)).collect()
    } else if n == 0 {
        Arc::from([])
    } else {
        broadcast_general(da, a.shape(), db, b.shape(), &out_shape, n, f).into()
    };
    Ok(Tensor::from_f32_unchecked(out_shape, out))
}

/// Walks the output's outer dimensions with an odometer and runs the last
/// dimension as a tight loop, specialized on whether each side broadcasts.
fn broadcast_general(
    da: &[f32],
    sa_shape: &[usize],
    db: &[f32],
    sb_shape: &[usize],
    out_shape: &[usize],
    n: usize,
    f: impl Fn(f32, f32) -> f32 + Copy,
) -> Vec<f32> {
    let sa = shape::broadcast_strides(sa_shape, out_shape);
    let sb = shape::broadcast_strides(sb_shape, out_shape);
    let rank = out_shape.len();
    let last = out_shape[rank - 1];
    let (la, lb) = (sa[rank - 1], sb[rank - 1]);
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank - 1];
    let (mut oa, mut ob) = (0usize, 0usize);
    loop {
        match (la, lb) {
            (0, 0) => out.extend(std::iter::repeat_n(f(da[oa], db[ob]), last)),
            (0, _) => out.extend(db[ob..ob + last].iter().map(|&y| f(da[oa], y))),
            (_, 0) => out.extend(da[oa..oa + last].iter().map(|&x| f(x, db[ob]))),
            _ => out.extend(
                da[oa..oa + last]
                    .iter()
                    .zip(&db[ob..ob + last])
                    .map(|(&x, &y)| f(x, y)),
            ),
        }
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            oa += sa[d];
            ob += sb[d];
            if idx[d] < out_shape[d] {
                break;
            }
            oa -= sa[d] * out_shape[d];
            ob -= sb[d] * out_shape[d];
            idx[d] = 0;
        }
    }
}

/// Inference batch normalization over dimension 1 of `x` (NCHW, or any
/// rank of at least 2): `(x - mean) / sqrt(var + epsilon) * scale + bias`,
/// where the four parameters have shape `[C]`.
pub fn batch_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    epsilon: f32,
) -> Result<Tensor, TensorError> {
    let (_, params) = validate_batch_norm(x, [scale, bias, mean, var], epsilon)?;
    let [scale, bias, mean, var] = params;
    let c = x.shape()[1];
    // Folding into one multiply-add per element is what makes this cheap.
    let (mul, add): (Vec<f32>, Vec<f32>) = (0..c)
        .map(|i| {
            let m = scale[i] / (var[i] + epsilon).sqrt();
            (m, bias[i] - mean[i] * m)
        })
        .unzip();
    let plane: usize = x.shape()[2..].iter().product();
    x.map_f32("batch_norm", |out| {
        if plane > 0 {
            for (i, chunk) in out.chunks_exact_mut(plane).enumerate() {
                let (m, a) = (mul[i % c], add[i % c]);
                chunk.iter_mut().for_each(|v| *v = *v * m + a);
            }
        }
    })
}

/// Checks the batch-norm operands; shared with the reference kernel.
pub(crate) fn validate_batch_norm<'a>(
    x: &'a Tensor,
    params: [&'a Tensor; 4],
    epsilon: f32,
) -> Result<(&'a [f32], [&'a [f32]; 4]), TensorError> {
    const OP: &str = "batch_norm";
    let data = x.f32_for(OP)?;
    if x.rank() < 2 {
        return Err(TensorError::ShapeMismatch(format!(
            "{OP}: input must have rank >= 2 (N, C, ...), got shape {:?}",
            x.shape()
        )));
    }
    if !(epsilon.is_finite() && epsilon >= 0.0) {
        return Err(TensorError::InvalidArgument(format!(
            "{OP}: epsilon must be finite and >= 0, got {epsilon}"
        )));
    }
    let c = x.shape()[1];
    let names = ["scale", "bias", "mean", "var"];
    let mut out = [&[][..]; 4];
    for ((slot, t), name) in out.iter_mut().zip(params).zip(names) {
        if t.shape() != [c] {
            return Err(TensorError::ShapeMismatch(format!(
                "{OP}: {name} must have shape [{c}] for input {:?}, got {:?}",
                x.shape(),
                t.shape()
            )));
        }
        *slot = t.f32_for(OP)?;
    }
    Ok((data, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{reference, testutil};
    use proptest::prelude::*;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec()).unwrap()
    }

    #[test]
    fn add_mul_by_hand() {
        let a = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let row = t(&[3], &[10.0, 20.0, 30.0]);
        let col = t(&[2, 1], &[100.0, 200.0]);
        let s = t(&[], &[2.0]);
        assert_eq!(
            add(&a, &row).unwrap().as_f32().unwrap(),
            &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0]
        );
        assert_eq!(
            add(&row, &col).unwrap().as_f32().unwrap(),
            &[110.0, 120.0, 130.0, 210.0, 220.0, 230.0]
        );
        assert_eq!(
            mul(&a, &s).unwrap().as_f32().unwrap(),
            &[2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
        );
        assert_eq!(mul(&col, &a).unwrap().shape(), &[2, 3]);
        // The reference must agree on the same hand-computed case.
        assert_eq!(
            reference::add(&row, &col).unwrap().as_f32().unwrap(),
            &[110.0, 120.0, 130.0, 210.0, 220.0, 230.0]
        );
        assert_eq!(
            reference::mul(&a, &row).unwrap().as_f32().unwrap(),
            &[10.0, 40.0, 90.0, 40.0, 100.0, 180.0]
        );
    }

    #[test]
    fn add_errors() {
        let a = t(&[2, 3], &[0.0; 6]);
        let b = t(&[2], &[0.0; 2]);
        assert!(matches!(add(&a, &b), Err(TensorError::ShapeMismatch(m)) if m.contains("[2, 3]")));
        let u = Tensor::from_i64(vec![2, 3], vec![0; 6]).unwrap();
        assert!(matches!(
            mul(&a, &u),
            Err(TensorError::UnsupportedType { op: "mul", .. })
        ));
        let empty = t(&[0, 3], &[]);
        assert_eq!(
            add(&empty, &t(&[1, 3], &[0.0; 3])).unwrap().shape(),
            &[0, 3]
        );
    }

    #[test]
    fn new_binary_ops_by_hand() {
        let a = t(&[2, 2], &[1.0, -2.0, 9.0, 0.0]);
        let s = t(&[], &[2.0]);
        let col = t(&[2, 1], &[3.0, 0.0]);
        type Op = fn(&Tensor, &Tensor) -> Result<Tensor, TensorError>;
        let cases: [(Op, Op, &Tensor, &[f32]); 4] = [
            (sub, reference::sub, &s, &[-1.0, -4.0, 7.0, -2.0]),
            (
                div,
                reference::div,
                &col,
                &[1.0 / 3.0, -2.0 / 3.0, f32::INFINITY, f32::NAN],
            ),
            (pow, reference::pow, &s, &[1.0, 4.0, 81.0, 0.0]),
            (maximum, reference::maximum, &col, &[3.0, 3.0, 9.0, 0.0]),
        ];
        for (fast, slow, b, want) in cases {
            for got in [fast(&a, b).unwrap(), slow(&a, b).unwrap()] {
                let got = got.as_f32().unwrap();
                for (g, w) in got.iter().zip(want) {
                    assert!(g == w || (g.is_nan() && w.is_nan()), "{got:?} vs {want:?}");
                }
            }
        }
        // A negative base to a fractional power is NaN, to an integer one is not.
        let neg = t(&[2], &[-8.0, -2.0]);
        let y = pow(&neg, &t(&[2], &[0.5, 3.0])).unwrap();
        assert!(y.as_f32().unwrap()[0].is_nan());
        assert_eq!(y.as_f32().unwrap()[1], -8.0);
        // NaN wins in maximum and minimum, on either side.
        let nan = t(&[2], &[f32::NAN, 1.0]);
        let other = t(&[2], &[5.0, f32::NAN]);
        for f in [maximum, minimum, reference::maximum, reference::minimum] {
            assert!(
                f(&nan, &other)
                    .unwrap()
                    .as_f32()
                    .unwrap()
                    .iter()
                    .all(|v| v.is_nan())
            );
        }
        assert_eq!(
            minimum(&a, &col).unwrap().as_f32().unwrap(),
            &[1.0, -2.0, 0.0, 0.0]
        );
        assert!(matches!(
            pow(&a, &t(&[3], &[1.0; 3])),
            Err(TensorError::ShapeMismatch(m)) if m.starts_with("pow")
        ));
    }

    #[test]
    fn unary_math_by_hand() {
        let x = t(&[5], &[4.0, 0.0, -1.0, 1.0, -0.0]);
        let sq = sqrt(&x).unwrap();
        assert_eq!(&sq.as_f32().unwrap()[..2], &[2.0, 0.0]);
        assert!(sq.as_f32().unwrap()[2].is_nan());
        let lg = log(&x).unwrap();
        let lg = lg.as_f32().unwrap();
        assert_eq!(
            (lg[1], lg[3], lg[4]),
            (f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY)
        );
        assert!(lg[2].is_nan());
        let ab = abs(&x).unwrap();
        assert_eq!(ab.as_f32().unwrap(), &[4.0, 0.0, 1.0, 1.0, 0.0]);
        assert!(ab.as_f32().unwrap()[4].is_sign_positive());
        let ex = exp(&t(&[3], &[0.0, 1.0, 100.0])).unwrap();
        assert_eq!(
            ex.as_f32().unwrap(),
            &[1.0, std::f32::consts::E, f32::INFINITY]
        );
        assert_eq!(sqrt(&t(&[2, 0], &[])).unwrap().shape(), &[2, 0]);
        let u = Tensor::from_u8(vec![1], vec![4]).unwrap();
        assert!(matches!(
            sqrt(&u),
            Err(TensorError::UnsupportedType { op: "sqrt", .. })
        ));
    }

    #[test]
    fn batch_norm_by_hand() {
        // Channel 0: (x - 1) / sqrt(4) * 2 + 3 = x + 2; channel 1: identity.
        let x = t(&[1, 2, 2], &[1.0, 3.0, 5.0, -5.0]);
        let scale = t(&[2], &[2.0, 1.0]);
        let bias = t(&[2], &[3.0, 0.0]);
        let mean = t(&[2], &[1.0, 0.0]);
        let var = t(&[2], &[4.0, 1.0]);
        let y = batch_norm(&x, &scale, &bias, &mean, &var, 0.0).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[3.0, 5.0, 5.0, -5.0]);
        let r = reference::batch_norm(&x, &scale, &bias, &mean, &var, 0.0).unwrap();
        assert_eq!(r.as_f32().unwrap(), &[3.0, 5.0, 5.0, -5.0]);

        let short = t(&[1], &[1.0]);
        assert!(matches!(
            batch_norm(&x, &short, &bias, &mean, &var, 0.0),
            Err(TensorError::ShapeMismatch(m)) if m.contains("scale")
        ));
        assert!(batch_norm(&x, &scale, &bias, &mean, &var, -1.0).is_err());
        assert!(batch_norm(&t(&[2], &[0.0; 2]), &scale, &bias, &mean, &var, 0.0).is_err());
    }

    fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
        prop::collection::vec((1usize..5, 0u8..3), 0..5).prop_flat_map(|dims| {
            // Per dimension: both full, a broadcasts, or b broadcasts; then
            // drop a random number of leading dimensions from one side.
            let a: Vec<usize> = dims
                .iter()
                .map(|&(d, k)| if k == 1 { 1 } else { d })
                .collect();
            let b: Vec<usize> = dims
                .iter()
                .map(|&(d, k)| if k == 2 { 1 } else { d })
                .collect();
            let r = dims.len();
            (Just(a), Just(b), 0..=r, any::<bool>()).prop_map(|(a, b, cut, which)| {
                if which {
                    (a[cut..].to_vec(), b)
                } else {
                    (a, b[cut..].to_vec())
                }
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn add_mul_match_reference((sa, sb) in broadcast_pair(), seed in any::<u64>()) {
            let a = testutil::tensor(seed, &sa, 3.0);
            let b = testutil::tensor(seed ^ 1, &sb, 3.0);
            testutil::assert_close(&add(&a, &b).unwrap(), &reference::add(&a, &b).unwrap())?;
            testutil::assert_close(&mul(&a, &b).unwrap(), &reference::mul(&a, &b).unwrap())?;
            testutil::assert_close(&sub(&a, &b).unwrap(), &reference::sub(&a, &b).unwrap())?;
            testutil::assert_close(&maximum(&a, &b).unwrap(), &reference::maximum(&a, &b).unwrap())?;
            testutil::assert_close(&minimum(&a, &b).unwrap(), &reference::minimum(&a, &b).unwrap())?;
            // Divisors and bases kept away from 0 and negatives, where the answer is
            // inf or NaN (checked by hand above) and closeness means nothing.
            let positive = Tensor::from_f32(
                sb.clone(),
                b.as_f32().unwrap().iter().map(|v| v.abs() + 0.5).collect(),
            )
            .unwrap();
            testutil::assert_close(&div(&a, &positive).unwrap(), &reference::div(&a, &positive).unwrap())?;
            testutil::assert_close(&pow(&positive, &a).unwrap(), &reference::pow(&positive, &a).unwrap())?;
        }

        #[test]
        fn batch_norm_matches_reference(
            shape in prop::collection::vec(1usize..6, 2..5),
            seed in any::<u64>(),
        ) {
            let c = shape[1];
            let x = testutil::tensor(seed, &shape, 3.0);
            let scale = testutil::tensor(seed ^ 1, &[c], 2.0);
            let bias = testutil::tensor(seed ^ 2, &[c], 2.0);
            let mean = testutil::tensor(seed ^ 3, &[c], 2.0);
            let var = Tensor::from_f32(vec![c], testutil::data(seed ^ 4, c, 1.0).iter().map(|v| v + 1.5).collect()).unwrap();
            let fast = batch_norm(&x, &scale, &bias, &mean, &var, 1e-5).unwrap();
            let slow = reference::batch_norm(&x, &scale, &bias, &mean, &var, 1e-5).unwrap();
            testutil::assert_close(&fast, &slow)?;
        }
    }
}

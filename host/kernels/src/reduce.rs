//! Reductions (sum, mean, max, min) over a set of axes, ONNX `Reduce*` / NumPy semantics.
//!
//! The input is read once, in memory order: dimensions of size 1 are dropped, neighbouring
//! dimensions that are both reduced or both kept are merged, and the innermost merged run is
//! a tight loop (a contiguous fold when it is reduced, an elementwise fold into a row of
//! accumulators when it is kept). Sums accumulate in f64, so a mean over a whole image keeps
//! f32 precision.

use super::elementwise::{max_nan, min_nan};
use super::{Tensor, TensorError};

/// What a reduction computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reduction {
    Sum,
    Mean,
    Max,
    Min,
}

impl Reduction {
    pub(crate) fn op(self) -> &'static str {
        match self {
            Reduction::Sum => "reduce_sum",
            Reduction::Mean => "reduce_mean",
            Reduction::Max => "reduce_max",
            Reduction::Min => "reduce_min",
        }
    }
}

/// A validated reduction, shared with the reference kernel.
pub(crate) struct ReducePlan<'a> {
    pub input: &'a [f32],
    /// Per input axis: whether it is reduced.
    pub reduced: Vec<bool>,
    /// The output's shape: kept axes, and reduced ones as 1 with `keepdims`.
    pub out_shape: Vec<usize>,
    /// How many input elements fold into each output element.
    pub count: usize,
}

/// Checks `axes` against `x`: each in `[-rank, rank)` (a shape error otherwise, since the
/// axis does not exist in that shape), none twice; no axes means every axis (ONNX's default,
/// NumPy's `axis=None`). Max, min and mean of no elements are undefined and refused; a sum of
/// none is 0.
pub(crate) fn plan_reduce<'a>(
    r: Reduction,
    x: &'a Tensor,
    axes: &[isize],
    keepdims: bool,
) -> Result<ReducePlan<'a>, TensorError> {
    let op = r.op();
    let input = x.f32_for(op)?;
    let rank = x.rank();
    let mut reduced = vec![axes.is_empty(); rank];
    for &a in axes {
        let d = if a < 0 { a + rank as isize } else { a };
        if d < 0 || d >= rank as isize {
            return Err(TensorError::ShapeMismatch(format!(
                "{op}: axis {a} is out of range for input {:?} of rank {rank}",
                x.shape()
            )));
        }
        if std::mem::replace(&mut reduced[d as usize], true) {
            return Err(TensorError::InvalidArgument(format!(
                "{op}: axis {a} is given twice in {axes:?}"
            )));
        }
    }
    let mut out_shape = Vec::with_capacity(rank);
    let mut count = 1;
    for (&dim, &red) in x.shape().iter().zip(&reduced) {
        if red {
            count *= dim;
            if keepdims {
                out_shape.push(1);
            }
        } else {
            out_shape.push(dim);
        }
    }
    if count == 0 && r != Reduction::Sum {
        return Err(TensorError::InvalidArgument(format!(
            "{op}: the reduced axes of input {:?} hold no elements, so the result is undefined",
            x.shape()
        )));
    }
    Ok(ReducePlan {
        input,
        reduced,
        out_shape,
        count,
    })
}

/// Sum over `axes` (all axes if empty; negative axes count from the end); `keepdims` keeps
/// each reduced axis as size 1. A sum of no elements is 0.
pub fn reduce_sum(x: &Tensor, axes: &[isize], keepdims: bool) -> Result<Tensor, TensorError> {
    reduce(Reduction::Sum, x, axes, keepdims)
}

/// Mean over `axes`, as [`reduce_sum`]; refused when the reduced axes hold no elements.
pub fn reduce_mean(x: &Tensor, axes: &[isize], keepdims: bool) -> Result<Tensor, TensorError> {
    reduce(Reduction::Mean, x, axes, keepdims)
}

/// Maximum over `axes`, as [`reduce_sum`]; NaN if any reduced element is NaN (NumPy's
/// `max`); refused when the reduced axes hold no elements.
pub fn reduce_max(x: &Tensor, axes: &[isize], keepdims: bool) -> Result<Tensor, TensorError> {
    reduce(Reduction::Max, x, axes, keepdims)
}

/// Minimum over `axes`, as [`reduce_max`].
pub fn reduce_min(x: &Tensor, axes: &[isize], keepdims: bool) -> Result<Tensor, TensorError> {
    reduce(Reduction::Min, x, axes, keepdims)
}

fn reduce(r: Reduction, x: &Tensor, axes: &[isize], keepdims: bool) -> Result<Tensor, TensorError> {
    let plan = plan_reduce(r, x, axes, keepdims)?;
    let n_out: usize = plan.out_shape.iter().product();
    let acc = match r {
        Reduction::Sum | Reduction::Mean => fold_all(&plan, x.shape(), n_out, 0.0, |a, v| a + v),
        Reduction::Max => fold_all(&plan, x.shape(), n_out, f64::NEG_INFINITY, |a, v| {
            f64::from(max_nan(a as f32, v as f32))
        }),
        Reduction::Min => fold_all(&plan, x.shape(), n_out, f64::INFINITY, |a, v| {
            f64::from(min_nan(a as f32, v as f32))
        }),
    };
    let out: Vec<f32> = match r {
        Reduction::Mean => acc
            .iter()
            .map(|&s| (s / plan.count as f64) as f32)
            .collect(),
        _ => acc.iter().map(|&v| v as f32).collect(),
    };
    Ok(Tensor::from_f32_unchecked(plan.out_shape, out))
}

/// Folds every input element into its output's accumulator in one pass in memory order.
fn fold_all(
    plan: &ReducePlan<'_>,
    shape: &[usize],
    n_out: usize,
    init: f64,
    fold: impl Fn(f64, f64) -> f64 + Copy,
) -> Vec<f64> {
    let mut acc = vec![init; n_out];
    if plan.input.is_empty() {
        // Only a sum gets here with outputs (planning refused the rest): of nothing, 0.
        return acc;
    }
    // Runs of merged dimensions, outermost first: (length, reduced).
    let mut runs: Vec<(usize, bool)> = Vec::new();
    for (&dim, &red) in shape.iter().zip(&plan.reduced) {
        match runs.last_mut() {
            _ if dim == 1 => {}
            Some((len, r)) if *r == red => *len *= dim,
            _ => runs.push((dim, red)),
        }
    }
    let (last_len, last_reduced) = runs.pop().unwrap_or((1, false));
    // Output strides of the outer runs (0 for reduced ones), in output elements.
    let mut out_strides = vec![0; runs.len()];
    let mut stride = if last_reduced { 1 } else { last_len };
    for (s, &(len, red)) in out_strides.iter_mut().zip(&runs).rev() {
        if !red {
            *s = stride;
            stride *= len;
        }
    }
    let mut idx = vec![0; runs.len()];
    let mut o = 0;
    for chunk in plan.input.chunks_exact(last_len) {
        if last_reduced {
            acc[o] = chunk.iter().fold(acc[o], |a, &v| fold(a, f64::from(v)));
        } else {
            for (a, &v) in acc[o..o + last_len].iter_mut().zip(chunk) {
                *a = fold(*a, f64::from(v));
            }
        }
        for d in (0..runs.len()).rev() {
            idx[d] += 1;
            o += out_strides[d];
            if idx[d] < runs[d].0 {
                break;
            }
            o -= out_strides[d] * runs[d].0;
            idx[d] = 0;
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{reference, testutil};
    use proptest::prelude::*;

    type Reduce = fn(&Tensor, &[isize], bool) -> Result<Tensor, TensorError>;
    const FAST: [Reduce; 4] = [reduce_sum, reduce_mean, reduce_max, reduce_min];
    const SLOW: [Reduce; 4] = [
        reference::reduce_sum,
        reference::reduce_mean,
        reference::reduce_max,
        reference::reduce_min,
    ];

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec()).unwrap()
    }

    #[test]
    fn reductions_by_hand() {
        // [[1, 2, 3], [4, 5, -6]]
        let x = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.0]);
        // (axes, keepdims, [sum, mean, max, min], output shape)
        type Case<'a> = (&'a [isize], bool, [&'a [f32]; 4], &'a [usize]);
        let cases: [Case; 4] = [
            (
                &[0],
                false,
                [
                    &[5.0, 7.0, -3.0],
                    &[2.5, 3.5, -1.5],
                    &[4.0, 5.0, 3.0],
                    &[1.0, 2.0, -6.0],
                ],
                &[3],
            ),
            (
                &[-1],
                true,
                [&[6.0, 3.0], &[2.0, 1.0], &[3.0, 5.0], &[1.0, -6.0]],
                &[2, 1],
            ),
            (&[], false, [&[9.0], &[1.5], &[5.0], &[-6.0]], &[]),
            (&[1, 0], true, [&[9.0], &[1.5], &[5.0], &[-6.0]], &[1, 1]),
        ];
        for (axes, keepdims, wants, shape) in cases {
            for (i, want) in wants.iter().enumerate() {
                for f in [FAST[i], SLOW[i]] {
                    let y = f(&x, axes, keepdims).unwrap();
                    assert_eq!(y.shape(), shape, "{axes:?}");
                    assert_eq!(y.as_f32().unwrap(), *want, "op {i} over {axes:?}");
                }
            }
        }
    }

    #[test]
    fn nan_propagates_and_empty_reductions() {
        let x = t(&[2, 2], &[1.0, f32::NAN, 3.0, 4.0]);
        for f in [
            reduce_max,
            reduce_min,
            reference::reduce_max,
            reference::reduce_min,
        ] {
            let y = f(&x, &[1], false).unwrap();
            assert!(y.as_f32().unwrap()[0].is_nan());
            assert!(!y.as_f32().unwrap()[1].is_nan());
        }
        // A sum of nothing is 0; the others are undefined.
        let empty = t(&[2, 0], &[]);
        assert_eq!(
            reduce_sum(&empty, &[1], false).unwrap().as_f32().unwrap(),
            &[0.0, 0.0]
        );
        assert_eq!(
            reference::reduce_sum(&empty, &[1], false)
                .unwrap()
                .as_f32()
                .unwrap(),
            &[0.0, 0.0]
        );
        for f in [reduce_mean, reduce_max, reduce_min] {
            assert!(
                matches!(f(&empty, &[1], false), Err(TensorError::InvalidArgument(m)) if m.contains("no elements"))
            );
        }
        // Reducing the non-empty axis of an empty tensor is an empty result.
        assert_eq!(reduce_max(&empty, &[0], true).unwrap().shape(), &[1, 0]);
        // A scalar reduces to itself.
        assert_eq!(
            reduce_mean(&t(&[], &[7.0]), &[], false)
                .unwrap()
                .as_f32()
                .unwrap(),
            &[7.0]
        );
    }

    #[test]
    fn reduction_errors() {
        let x = t(&[1, 2, 3], &[0.0; 6]);
        assert!(matches!(
            reduce_sum(&x, &[3], false),
            Err(TensorError::ShapeMismatch(m)) if m.contains("axis 3") && m.contains("[1, 2, 3]")
        ));
        assert!(matches!(
            reduce_max(&x, &[-4], false),
            Err(TensorError::ShapeMismatch(_))
        ));
        assert!(matches!(
            reduce_min(&x, &[1, -2], false),
            Err(TensorError::InvalidArgument(m)) if m.contains("twice")
        ));
        let u = Tensor::from_u8(vec![2], vec![1, 2]).unwrap();
        assert!(matches!(
            reduce_mean(&u, &[], false),
            Err(TensorError::UnsupportedType {
                op: "reduce_mean",
                ..
            })
        ));
    }

    prop_compose! {
        fn reduce_case()(
            shape in prop::collection::vec(0usize..5, 0..6),
            mask in any::<u8>(), negative in any::<u8>(), keepdims in any::<bool>(),
            seed in any::<u64>(),
        ) -> (Tensor, Vec<isize>, bool) {
            let rank = shape.len() as isize;
            let axes = (0..rank)
                .filter(|a| mask & (1 << a) != 0)
                .map(|a| if negative & (1 << a) != 0 { a - rank } else { a })
                .rev()
                .collect();
            (testutil::tensor(seed, &shape, 4.0), axes, keepdims)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn reductions_match_reference((x, axes, keepdims) in reduce_case()) {
            for (fast, slow) in FAST.iter().zip(SLOW) {
                match (fast(&x, &axes, keepdims), slow(&x, &axes, keepdims)) {
                    (Ok(f), Ok(s)) => testutil::assert_close(&f, &s)?,
                    (Err(a), Err(b)) => prop_assert_eq!(a, b),
                    (f, s) => prop_assert!(false, "fast {:?} vs reference {:?}", f.err(), s.err()),
                }
            }
        }
    }
}

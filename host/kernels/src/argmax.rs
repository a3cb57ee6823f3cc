//! ArgMax along one axis (ONNX `ArgMax` with `select_last_index = 0`, NumPy's `argmax`): the
//! index of the first largest element, as int64. A NaN counts as the largest (NumPy's rule:
//! the first NaN's index), so a NaN in a row of scores is never hidden behind a number.

use super::{Tensor, TensorError};

/// Indices of the maximum along `axis` (negative counts from the end); `keepdims` keeps that
/// axis as size 1. An axis of size 0 has no maximum and is refused.
pub fn argmax(x: &Tensor, axis: isize, keepdims: bool) -> Result<Tensor, TensorError> {
    let input = x.f32_for("argmax")?;
    let rank = x.rank();
    let a = if axis < 0 { axis + rank as isize } else { axis };
    if a < 0 || a >= rank as isize {
        return Err(TensorError::ShapeMismatch(format!(
            "argmax: axis {axis} is out of range for input {:?} of rank {rank}",
            x.shape()
        )));
    }
    let a = a as usize;
    let shape = x.shape();
    let (outer, len, inner) = (
        shape[..a].iter().product::<usize>(),
        shape[a],
        shape[a + 1..].iter().product::<usize>(),
    );
    if len == 0 {
        return Err(TensorError::InvalidArgument(format!(
            "argmax: axis {axis} of input {shape:?} is empty, so it has no maximum"
        )));
    }
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        let block = &input[o * len * inner..(o + 1) * len * inner];
        // Row by row along the axis, so each pass reads memory in order; `best` holds, per
        // inner position, the index found so far.
        let mut best = vec![0usize; inner];
        let mut best_value: Vec<f32> = block[..inner].to_vec();
        for k in 1..len {
            let row = &block[k * inner..(k + 1) * inner];
            for (i, &v) in row.iter().enumerate() {
                let b = best_value[i];
                if !b.is_nan() && (v > b || v.is_nan()) {
                    best_value[i] = v;
                    best[i] = k;
                }
            }
        }
        out.extend(best.into_iter().map(|k| k as i64));
    }
    let mut out_shape = shape.to_vec();
    if keepdims {
        out_shape[a] = 1;
    } else {
        out_shape.remove(a);
    }
    Tensor::from_i64(out_shape, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The naive definition: for each output position, scan the axis.
    fn naive(x: &[f32], shape: &[usize], axis: usize) -> Vec<i64> {
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let len = shape[axis];
        let mut out = Vec::new();
        for o in 0..outer {
            for i in 0..inner {
                let at = |k: usize| x[(o * len + k) * inner + i];
                let mut best = 0;
                for k in 1..len {
                    if at(best).is_nan() {
                        break;
                    }
                    if at(k) > at(best) || at(k).is_nan() {
                        best = k;
                    }
                }
                out.push(best as i64);
            }
        }
        out
    }

    #[test]
    fn first_maximum_wins_and_nan_counts_as_largest() {
        let x = Tensor::from_f32(
            vec![2, 4],
            vec![1.0, 3.0, 3.0, 2.0, 0.0, f32::NAN, 9.0, f32::NAN],
        )
        .unwrap();
        let rows = argmax(&x, 1, false).unwrap();
        assert_eq!(rows.shape(), [2]);
        assert_eq!(rows.as_i64().unwrap(), [1, 1]);
        let cols = argmax(&x, 0, true).unwrap();
        assert_eq!(cols.shape(), [1, 4]);
        assert_eq!(cols.as_i64().unwrap(), [0, 1, 1, 1]);
        assert_eq!(argmax(&x, -1, false).unwrap().as_i64().unwrap(), [1, 1]);
    }

    #[test]
    fn bad_axes_and_empty_axes_are_refused() {
        let x = Tensor::from_f32(vec![2, 0], vec![]).unwrap();
        assert!(matches!(
            argmax(&x, 2, false),
            Err(TensorError::ShapeMismatch(_))
        ));
        assert!(matches!(
            argmax(&x, -3, false),
            Err(TensorError::ShapeMismatch(_))
        ));
        assert!(matches!(
            argmax(&x, 1, false),
            Err(TensorError::InvalidArgument(_))
        ));
        // Reducing the non-empty axis of an empty tensor gives an empty answer.
        assert_eq!(argmax(&x, 0, false).unwrap().shape(), [0]);
        let ints = Tensor::from_i64(vec![2], vec![1, 2]).unwrap();
        assert!(argmax(&ints, 0, false).is_err());
    }

    proptest! {
        #[test]
        fn matches_the_naive_scan(
            shape in prop::collection::vec(1usize..5, 1..4),
            axis_pick in 0usize..4,
            seed in any::<u64>(),
            keepdims in any::<bool>(),
        ) {
            let n: usize = shape.iter().product();
            let mut state = seed | 1;
            // Few distinct values, so ties are common; now and then a NaN.
            let values: Vec<f32> = (0..n).map(|_| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                match state % 11 { 0 => f32::NAN, v => (v % 4) as f32 }
            }).collect();
            let axis = axis_pick % shape.len();
            let x = Tensor::from_f32(shape.clone(), values.clone()).unwrap();
            let got = argmax(&x, axis as isize, keepdims).unwrap();
            let expected = naive(&values, &shape, axis);
            prop_assert_eq!(got.as_i64().unwrap(), expected.as_slice());
            let mut expected_shape = shape.clone();
            if keepdims { expected_shape[axis] = 1 } else { expected_shape.remove(axis); }
            prop_assert_eq!(got.shape(), expected_shape.as_slice());
        }
    }
}

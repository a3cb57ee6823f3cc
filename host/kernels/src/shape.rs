//! Shape arithmetic: element counts, strides, axes and numpy broadcasting.

use super::{MAX_ELEMENTS, TensorError};

/// Element count of `shape`, refusing overflow and anything above
/// [`MAX_ELEMENTS`]; `op` names the caller in the error.
pub(crate) fn num_elements(op: &str, shape: &[usize]) -> Result<usize, TensorError> {
    // A zero anywhere makes the tensor empty, whatever the other dimensions,
    // so it must win over an overflow in the dimensions before it.
    if shape.contains(&0) {
        return Ok(0);
    }
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            TensorError::TooLarge(format!("{op}: element count of shape {shape:?} overflows"))
        })?;
    if n > MAX_ELEMENTS {
        return Err(TensorError::TooLarge(format!(
            "{op}: shape {shape:?} has {n} elements, more than the limit of {MAX_ELEMENTS}"
        )));
    }
    Ok(n)
}

/// Row-major strides, in elements.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides that read a tensor of `shape` as if broadcast to `out` (which has
/// at least its rank): 0 along broadcast dimensions.
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let own = strides(shape);
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < lead || shape[i - lead] == 1 {
                0
            } else {
                own[i - lead]
            }
        })
        .collect()
}

/// The numpy broadcast of two shapes: aligned from the right, each pair of
/// dimensions must be equal or one of them 1.
pub(crate) fn broadcast_shapes(
    op: &str,
    a: &[usize],
    b: &[usize],
) -> Result<Vec<usize>, TensorError> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for (i, o) in out.iter_mut().enumerate() {
        // Index from the right; a missing dimension acts as 1.
        let da = (i + a.len()).checked_sub(rank).map_or(1, |j| a[j]);
        let db = (i + b.len()).checked_sub(rank).map_or(1, |j| b[j]);
        *o = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(TensorError::ShapeMismatch(format!(
                    "{op}: shapes {a:?} and {b:?} do not broadcast (dimension {i} of the result: {da} vs {db})"
                )));
            }
        };
    }
    Ok(out)
}

/// Resolves a possibly negative axis (counting from the end) against `rank`.
pub(crate) fn normalize_axis(op: &str, axis: isize, rank: usize) -> Result<usize, TensorError> {
    let r = rank as isize;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(TensorError::InvalidArgument(format!(
            "{op}: axis {axis} is out of range for rank {rank}"
        )));
    }
    Ok(a as usize)
}

/// Splits `shape` around `axis` into (product before, dim, product after).
pub(crate) fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// Fails unless `shape` has rank `expected`, naming the operand.
pub(crate) fn expect_rank(
    op: &str,
    what: &str,
    shape: &[usize],
    expected: usize,
) -> Result<(), TensorError> {
    if shape.len() != expected {
        return Err(rank_error(op, what, shape, expected));
    }
    Ok(())
}

/// The error for an operand of the wrong rank.
pub(crate) fn rank_error(op: &str, what: &str, shape: &[usize], expected: usize) -> TensorError {
    TensorError::ShapeMismatch(format!(
        "{op}: {what} must have rank {expected}, got shape {shape:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_rules() {
        assert_eq!(
            broadcast_shapes("t", &[2, 1, 3], &[4, 1]).unwrap(),
            [2, 4, 3]
        );
        assert_eq!(broadcast_shapes("t", &[], &[5]).unwrap(), [5]);
        assert_eq!(broadcast_shapes("t", &[0, 3], &[1, 3]).unwrap(), [0, 3]);
        let err = broadcast_shapes("add", &[2, 3], &[3, 2]).unwrap_err();
        assert!(
            matches!(&err, TensorError::ShapeMismatch(m) if m.contains("add")),
            "{err}"
        );
    }

    #[test]
    fn strides_and_broadcast_strides() {
        assert_eq!(strides(&[2, 3, 4]), [12, 4, 1]);
        assert_eq!(strides(&[]), [] as [usize; 0]);
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), [0, 1, 0]);
    }

    #[test]
    fn axes() {
        assert_eq!(normalize_axis("t", -1, 3).unwrap(), 2);
        assert_eq!(normalize_axis("t", 0, 3).unwrap(), 0);
        assert!(normalize_axis("t", 3, 3).is_err());
        assert!(normalize_axis("t", -4, 3).is_err());
        assert!(normalize_axis("t", 0, 0).is_err());
        assert_eq!(split_at_axis(&[2, 3, 4, 5], 1), (2, 3, 20));
    }

    #[test]
    fn counts() {
        assert_eq!(num_elements("t", &[]).unwrap(), 1);
        assert_eq!(num_elements("t", &[usize::MAX, 0]).unwrap(), 0);
        assert!(matches!(
            num_elements("t", &[usize::MAX, 2]),
            Err(TensorError::TooLarge(_))
        ));
        assert!(matches!(
            num_elements("t", &[MAX_ELEMENTS + 1]),
            Err(TensorError::TooLarge(_))
        ));
    }
}

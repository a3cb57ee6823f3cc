//! Layout operations: reshape, flatten, transpose, concat, channel shuffle.
//!
//! They move elements without arithmetic, so they accept every element type;
//! reshape and flatten share the storage instead of copying it.

use std::sync::Arc;

use super::{ElementType, Tensor, TensorData, TensorError, shape};

/// Element types as generic parameters, so each layout kernel is written once.
trait Element: Copy {
    fn slice(data: &TensorData) -> Option<&[Self]>;
    fn wrap(v: Vec<Self>) -> TensorData;
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl Element for $t {
            fn slice(data: &TensorData) -> Option<&[Self]> {
                match data {
                    TensorData::$variant(d) => Some(d),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> TensorData {
                TensorData::$variant(Arc::from(v))
            }
        }
    };
}
element!(f32, F32);
element!(u8, U8);
element!(i64, I64);

/// Calls the generic `$f::<T>` for the Rust type of element type `$ty`.
macro_rules! dispatch {
    ($ty:expr, $f:ident ( $($arg:expr),* )) => {
        match $ty {
            ElementType::F32 => $f::<f32>($($arg),*),
            ElementType::U8 => $f::<u8>($($arg),*),
            ElementType::I64 => $f::<i64>($($arg),*),
        }
    };
}

fn typed<T: Element>(x: &Tensor) -> &[T] {
    // Callers dispatch on x's own element type, so this cannot fail.
    T::slice(x.data()).unwrap_or(&[])
}

/// ONNX `Reshape` (allowzero = 0): a `0` copies the input dimension at the
/// same index and one `-1` is inferred. The result shares `x`'s storage.
pub fn reshape(x: &Tensor, new_shape: &[i64]) -> Result<Tensor, TensorError> {
    const OP: &str = "reshape";
    let mut dims = Vec::with_capacity(new_shape.len());
    let mut infer = None;
    for (i, &d) in new_shape.iter().enumerate() {
        let dim = match d {
            -1 if infer.is_some() => {
                return Err(TensorError::InvalidArgument(format!(
                    "{OP}: target shape {new_shape:?} has more than one -1"
                )));
            }
            -1 => {
                infer = Some(i);
                1
            }
            0 => *x.shape().get(i).ok_or_else(|| {
                TensorError::InvalidArgument(format!(
                    "{OP}: target shape {new_shape:?} copies dimension {i} (0), but the input {:?} has rank {}",
                    x.shape(),
                    x.rank()
                ))
            })?,
            d => usize::try_from(d).map_err(|_| {
                TensorError::InvalidArgument(format!(
                    "{OP}: target shape {new_shape:?} has invalid dimension {d}"
                ))
            })?,
        };
        dims.push(dim);
    }
    let known = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| {
            TensorError::TooLarge(format!("{OP}: target shape {new_shape:?} overflows"))
        })?;
    let total = x.len();
    let mismatch = || {
        TensorError::ShapeMismatch(format!(
            "{OP}: cannot reshape {:?} ({total} elements) to {new_shape:?}",
            x.shape()
        ))
    };
    if let Some(i) = infer {
        // With another dimension 0 the -1 could be anything.
        if known == 0 || !total.is_multiple_of(known) {
            return Err(mismatch());
        }
        dims[i] = total / known;
    } else if known != total {
        return Err(mismatch());
    }
    Ok(x.with_shape_unchecked(dims))
}

/// ONNX `Flatten`: dimensions before `axis` become the rows, the rest the
/// columns (`axis` may equal the rank). Shares `x`'s storage.
pub fn flatten(x: &Tensor, axis: usize) -> Result<Tensor, TensorError> {
    if axis > x.rank() {
        return Err(TensorError::InvalidArgument(format!(
            "flatten: axis {axis} exceeds the rank {} of {:?}",
            x.rank(),
            x.shape()
        )));
    }
    let rows = x.shape()[..axis].iter().product();
    let cols = x.shape()[axis..].iter().product();
    Ok(x.with_shape_unchecked(vec![rows, cols]))
}

/// Permutes dimensions: output dimension `i` is input dimension `perm[i]`.
pub fn transpose(x: &Tensor, perm: &[usize]) -> Result<Tensor, TensorError> {
    let rank = x.rank();
    let mut seen = vec![false; rank];
    let valid = perm.len() == rank
        && perm
            .iter()
            .all(|&p| p < rank && !std::mem::replace(&mut seen[p], true));
    if !valid {
        return Err(TensorError::InvalidArgument(format!(
            "transpose: {perm:?} is not a permutation of the {rank} dimensions of {:?}",
            x.shape()
        )));
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return Ok(x.with_shape_unchecked(out_shape));
    }
    let data = dispatch!(x.element_type(), permute(x, perm, &out_shape));
    Tensor::from_data(out_shape, data)
}

fn permute<T: Element>(x: &Tensor, perm: &[usize], out_shape: &[usize]) -> TensorData {
    let src = typed::<T>(x);
    let in_strides = shape::strides(x.shape());
    let s: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let mut out = Vec::with_capacity(src.len());
    let rank = out_shape.len();
    if !src.is_empty() {
        let last = out_shape[rank - 1];
        let step = s[rank - 1];
        let mut idx = vec![0usize; rank - 1];
        let mut base = 0usize;
        'outer: loop {
            out.extend(src[base..].iter().step_by(step).take(last));
            let mut d = rank - 1;
            loop {
                if d == 0 {
                    break 'outer;
                }
                d -= 1;
                idx[d] += 1;
                base += s[d];
                if idx[d] < out_shape[d] {
                    break;
                }
                base -= s[d] * out_shape[d];
                idx[d] = 0;
            }
        }
    }
    T::wrap(out)
}

/// Joins tensors of one element type along `axis`; all other dimensions
/// must agree.
pub fn concat(xs: &[&Tensor], axis: usize) -> Result<Tensor, TensorError> {
    const OP: &str = "concat";
    let Some(first) = xs.first() else {
        return Err(TensorError::InvalidArgument(format!(
            "{OP}: needs at least one input"
        )));
    };
    let rank = first.rank();
    if axis >= rank {
        return Err(TensorError::InvalidArgument(format!(
            "{OP}: axis {axis} is out of range for rank {rank}"
        )));
    }
    let mut out_shape = first.shape().to_vec();
    out_shape[axis] = 0;
    for (i, x) in xs.iter().enumerate() {
        if x.element_type() != first.element_type() {
            return Err(TensorError::ShapeMismatch(format!(
                "{OP}: input {i} is {:?}, input 0 is {:?}",
                x.element_type(),
                first.element_type()
            )));
        }
        let fits =
            x.rank() == rank && (0..rank).all(|d| d == axis || x.shape()[d] == first.shape()[d]);
        if !fits {
            return Err(TensorError::ShapeMismatch(format!(
                "{OP}: input {i} has shape {:?}, which differs from input 0 {:?} outside axis {axis}",
                x.shape(),
                first.shape()
            )));
        }
        out_shape[axis] = out_shape[axis]
            .checked_add(x.shape()[axis])
            .ok_or_else(|| TensorError::TooLarge(format!("{OP}: axis {axis} overflows")))?;
    }
    shape::num_elements(OP, &out_shape)?;
    let data = dispatch!(first.element_type(), concat_typed(xs, axis, &out_shape));
    Tensor::from_data(out_shape, data)
}

fn concat_typed<T: Element>(xs: &[&Tensor], axis: usize, out_shape: &[usize]) -> TensorData {
    let (outer, _, inner) = shape::split_at_axis(out_shape, axis);
    let mut out = Vec::with_capacity(out_shape.iter().product());
    for o in 0..outer {
        for x in xs {
            let chunk = x.shape()[axis] * inner;
            out.extend_from_slice(&typed::<T>(x)[o * chunk..][..chunk]);
        }
    }
    T::wrap(out)
}

/// ShuffleNet's channel shuffle on dimension 1 (`[N, C, ...]`): view the
/// channels as `[groups, C/groups]` and transpose to `[C/groups, groups]`.
pub fn channel_shuffle(x: &Tensor, groups: usize) -> Result<Tensor, TensorError> {
    const OP: &str = "channel_shuffle";
    if x.rank() < 2 {
        return Err(TensorError::ShapeMismatch(format!(
            "{OP}: input must have rank >= 2 (N, C, ...), got {:?}",
            x.shape()
        )));
    }
    let c = x.shape()[1];
    if groups == 0 || !c.is_multiple_of(groups) {
        return Err(TensorError::InvalidArgument(format!(
            "{OP}: groups {groups} must be >= 1 and divide the {c} channels of {:?}",
            x.shape()
        )));
    }
    let data = dispatch!(x.element_type(), shuffle_typed(x, groups));
    Tensor::from_data(x.shape().to_vec(), data)
}

fn shuffle_typed<T: Element>(x: &Tensor, groups: usize) -> TensorData {
    let src = typed::<T>(x);
    let c = x.shape()[1];
    let plane: usize = x.shape()[2..].iter().product();
    let per_group = c / groups;
    let mut out = Vec::with_capacity(src.len());
    if plane > 0 {
        for image in src.chunks_exact(c * plane) {
            for i in 0..per_group {
                for g in 0..groups {
                    out.extend_from_slice(&image[(g * per_group + i) * plane..][..plane]);
                }
            }
        }
    }
    T::wrap(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(shape: &[usize]) -> Tensor {
        let n = shape.iter().product::<usize>() as i64;
        Tensor::from_i64(shape.to_vec(), (0..n).collect()).unwrap()
    }

    fn shares(a: &Tensor, b: &Tensor) -> bool {
        match (a.data(), b.data()) {
            (TensorData::I64(x), TensorData::I64(y)) => Arc::ptr_eq(x, y),
            (TensorData::F32(x), TensorData::F32(y)) => Arc::ptr_eq(x, y),
            _ => false,
        }
    }

    #[test]
    fn reshape_rules() {
        let x = iota(&[2, 3, 4]);
        let y = reshape(&x, &[0, -1]).unwrap();
        assert_eq!(y.shape(), &[2, 12]);
        assert!(shares(&x, &y));
        assert_eq!(reshape(&x, &[4, 0, 2]).unwrap().shape(), &[4, 3, 2]);
        assert_eq!(reshape(&x, &[24]).unwrap().shape(), &[24]);
        let s = Tensor::from_f32(vec![1], vec![5.0]).unwrap();
        assert_eq!(reshape(&s, &[]).unwrap().shape(), &[] as &[usize]);
        for bad in [&[-1, -1][..], &[5, -1], &[25], &[-2, 12], &[0, 0, 0, 0]] {
            assert!(reshape(&x, bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            reshape(&x, &[i64::MAX, i64::MAX]),
            Err(TensorError::TooLarge(_))
        ));
        let empty = iota(&[0, 3]);
        assert!(reshape(&empty, &[0, -1]).is_err());
        // 0 copies the input's dimension 1 (3), it does not mean "zero".
        assert!(reshape(&empty, &[3, 0]).is_err());
        assert_eq!(reshape(&empty, &[0, 1, 3]).unwrap().shape(), &[0, 1, 3]);
    }

    #[test]
    fn flatten_rules() {
        let x = iota(&[2, 3, 4]);
        assert_eq!(flatten(&x, 0).unwrap().shape(), &[1, 24]);
        assert_eq!(flatten(&x, 2).unwrap().shape(), &[6, 4]);
        assert_eq!(flatten(&x, 3).unwrap().shape(), &[24, 1]);
        assert!(shares(&x, &flatten(&x, 1).unwrap()));
        assert!(flatten(&x, 4).is_err());
    }

    #[test]
    fn transpose_by_hand() {
        let x = iota(&[2, 3]);
        let y = transpose(&x, &[1, 0]).unwrap();
        assert_eq!(y.shape(), &[3, 2]);
        assert_eq!(y.as_i64().unwrap(), &[0, 3, 1, 4, 2, 5]);
        let x = iota(&[2, 3, 2]);
        let y = transpose(&x, &[2, 0, 1]).unwrap();
        assert_eq!(y.shape(), &[2, 2, 3]);
        assert_eq!(y.as_i64().unwrap(), &[0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11]);
        let u = Tensor::from_u8(vec![2, 2], vec![1, 2, 3, 4]).unwrap();
        assert_eq!(
            transpose(&u, &[1, 0]).unwrap().as_u8().unwrap(),
            &[1, 3, 2, 4]
        );
        assert!(transpose(&x, &[0, 1]).is_err());
        assert!(transpose(&x, &[0, 1, 1]).is_err());
        assert!(transpose(&x, &[0, 1, 3]).is_err());
        assert!(shares(&x, &transpose(&x, &[0, 1, 2]).unwrap()));
        assert_eq!(transpose(&iota(&[0, 2]), &[1, 0]).unwrap().shape(), &[2, 0]);
    }

    #[test]
    fn concat_by_hand() {
        let a = iota(&[2, 1]);
        let b = Tensor::from_i64(vec![2, 2], vec![10, 11, 12, 13]).unwrap();
        let y = concat(&[&a, &b], 1).unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(y.as_i64().unwrap(), &[0, 10, 11, 1, 12, 13]);
        let y = concat(&[&b, &b], 0).unwrap();
        assert_eq!(y.as_i64().unwrap(), &[10, 11, 12, 13, 10, 11, 12, 13]);
        assert!(concat(&[], 0).is_err());
        assert!(concat(&[&a, &b], 0).is_err());
        assert!(concat(&[&a, &b], 2).is_err());
        let f = Tensor::zeros(vec![2, 1]).unwrap();
        assert!(matches!(
            concat(&[&a, &f], 1),
            Err(TensorError::ShapeMismatch(_))
        ));
    }

    #[test]
    fn channel_shuffle_by_hand() {
        // Channels 0..6 in 2 groups [0 1 2][3 4 5] interleave to 0 3 1 4 2 5.
        let x = iota(&[1, 6, 1, 1]);
        let y = channel_shuffle(&x, 2).unwrap();
        assert_eq!(y.as_i64().unwrap(), &[0, 3, 1, 4, 2, 5]);
        let x = iota(&[1, 4, 1, 2]);
        let y = channel_shuffle(&x, 2).unwrap();
        assert_eq!(y.as_i64().unwrap(), &[0, 1, 4, 5, 2, 3, 6, 7]);
        assert!(channel_shuffle(&x, 3).is_err());
        assert!(channel_shuffle(&x, 0).is_err());
        assert!(channel_shuffle(&iota(&[4]), 2).is_err());
        // Equivalent to reshape + transpose + reshape.
        let x = iota(&[2, 6, 2, 3]);
        let viewed = reshape(&x, &[2, 3, 2, 6]).unwrap();
        let swapped = transpose(&viewed, &[0, 2, 1, 3]).unwrap();
        let expected = reshape(&swapped, &[2, 6, 2, 3]).unwrap();
        assert_eq!(
            channel_shuffle(&x, 3).unwrap().as_i64().unwrap(),
            expected.as_i64().unwrap()
        );
    }
}

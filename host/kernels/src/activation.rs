//! Unary activations, clip and softmax.

use super::{Tensor, TensorError, shape};

/// An activation fused into the output pass of [`conv2d`](super::conv2d) and
/// [`gemm`](super::gemm), saving a separate pass over memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`, MobileNet's activation.
    Relu6,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
}

impl Activation {
    /// Applies the activation to one value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            // Comparisons rather than f32::max keep NaN visible downstream.
            Activation::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Sigmoid => sigmoid_scalar(x),
            Activation::Tanh => x.tanh(),
        }
    }

    /// Applies the activation in place; the match is hoisted out of the loop
    /// so each arm vectorizes on its own.
    pub fn apply_slice(self, xs: &mut [f32]) {
        match self {
            Activation::None => {}
            Activation::Relu => xs.iter_mut().for_each(|x| *x = Activation::Relu.apply(*x)),
            Activation::Relu6 => xs.iter_mut().for_each(|x| *x = x.clamp(0.0, 6.0)),
            Activation::Sigmoid => xs.iter_mut().for_each(|x| *x = sigmoid_scalar(*x)),
            Activation::Tanh => xs.iter_mut().for_each(|x| *x = x.tanh()),
        }
    }
}

#[inline]
fn sigmoid_scalar(x: f32) -> f32 {
    // exp(-x) overflows to inf for x < -88, giving 1/inf = 0: the right limit.
    1.0 / (1.0 + (-x).exp())
}

fn unary(x: &Tensor, op: &'static str, act: Activation) -> Result<Tensor, TensorError> {
    x.map_f32(op, |v| act.apply_slice(v))
}

/// Elementwise `max(x, 0)`.
pub fn relu(x: &Tensor) -> Result<Tensor, TensorError> {
    unary(x, "relu", Activation::Relu)
}

/// Elementwise `min(max(x, 0), 6)`.
pub fn relu6(x: &Tensor) -> Result<Tensor, TensorError> {
    unary(x, "relu6", Activation::Relu6)
}

/// Elementwise logistic sigmoid.
pub fn sigmoid(x: &Tensor) -> Result<Tensor, TensorError> {
    unary(x, "sigmoid", Activation::Sigmoid)
}

/// Elementwise hyperbolic tangent.
pub fn tanh(x: &Tensor) -> Result<Tensor, TensorError> {
    unary(x, "tanh", Activation::Tanh)
}

/// Elementwise clamp to `[min, max]`; the bounds must be ordered and not NaN.
pub fn clip(x: &Tensor, min: f32, max: f32) -> Result<Tensor, TensorError> {
    // f32::clamp panics on these; an error is the right answer for a guest.
    if min.is_nan() || max.is_nan() || min > max {
        return Err(TensorError::InvalidArgument(format!(
            "clip: min {min} must be <= max {max} (and neither NaN)"
        )));
    }
    x.map_f32("clip", |v| {
        v.iter_mut().for_each(|v| *v = v.clamp(min, max))
    })
}

/// Softmax along `axis` (negative counts from the end), ONNX opset-13
/// semantics. Subtracts the maximum first so large logits do not overflow.
pub fn softmax(x: &Tensor, axis: isize) -> Result<Tensor, TensorError> {
    x.f32_for("softmax")?;
    let axis = shape::normalize_axis("softmax", axis, x.rank())?;
    let (outer, n, inner) = shape::split_at_axis(x.shape(), axis);
    x.map_f32("softmax", |out| softmax_in_place(out, outer, n, inner))
}

fn softmax_in_place(out: &mut [f32], outer: usize, n: usize, inner: usize) {
    if out.is_empty() {
        return;
    }
    if inner == 1 {
        for row in out.chunks_exact_mut(n) {
            softmax_row(row);
        }
    } else {
        // Rows along `axis` are strided; work on whole inner-length lines so
        // every loop stays contiguous.
        let mut max = vec![0f32; inner];
        let mut sum = vec![0f32; inner];
        for block in out.chunks_exact_mut(n * inner).take(outer) {
            max.fill(f32::NEG_INFINITY);
            for line in block.chunks_exact(inner) {
                for (m, &v) in max.iter_mut().zip(line) {
                    *m = m.max(v);
                }
            }
            sum.fill(0.0);
            for line in block.chunks_exact_mut(inner) {
                for ((v, &m), s) in line.iter_mut().zip(&max).zip(sum.iter_mut()) {
                    *v = (*v - m).exp();
                    *s += *v;
                }
            }
            for line in block.chunks_exact_mut(inner) {
                for (v, &s) in line.iter_mut().zip(&sum) {
                    *v /= s;
                }
            }
        }
    }
}

fn softmax_row(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    // The loop is scalar either way (the exp), so summing in f64 costs nothing and keeps a
    // 1000-class probability within 1e-7 of the exact softmax instead of ~1e-6.
    let mut sum = 0f64;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v = (f64::from(*v) * inv) as f32;
    }
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
    fn activations_by_hand() {
        let x = t(&[5], &[-2.0, -0.0, 0.5, 6.5, 100.0]);
        assert_eq!(
            relu(&x).unwrap().as_f32().unwrap(),
            &[0.0, -0.0, 0.5, 6.5, 100.0]
        );
        assert_eq!(
            relu6(&x).unwrap().as_f32().unwrap(),
            &[0.0, 0.0, 0.5, 6.0, 6.0]
        );
        let s = sigmoid(&t(&[3], &[0.0, -1000.0, 1000.0])).unwrap();
        assert_eq!(s.as_f32().unwrap(), &[0.5, 0.0, 1.0]);
        let th = tanh(&t(&[2], &[0.0, 1.0])).unwrap();
        assert!((th.as_f32().unwrap()[1] - 0.761_594_2).abs() < 1e-6);
        assert!(relu(&t(&[1], &[f32::NAN])).unwrap().as_f32().unwrap()[0].is_nan());
    }

    #[test]
    fn clip_by_hand_and_errors() {
        let x = t(&[3], &[-2.0, 0.5, 3.0]);
        assert_eq!(
            clip(&x, -1.0, 1.0).unwrap().as_f32().unwrap(),
            &[-1.0, 0.5, 1.0]
        );
        assert!(matches!(
            clip(&x, 1.0, -1.0),
            Err(TensorError::InvalidArgument(_))
        ));
        assert!(clip(&x, f32::NAN, 1.0).is_err());
        let u = Tensor::from_u8(vec![1], vec![1]).unwrap();
        assert!(matches!(
            clip(&u, 0.0, 1.0),
            Err(TensorError::UnsupportedType { op: "clip", .. })
        ));
        assert!(matches!(
            relu(&u),
            Err(TensorError::UnsupportedType { op: "relu", .. })
        ));
    }

    #[test]
    fn softmax_by_hand() {
        // exp(0)/(exp(0)+exp(ln 3)) = 1/4.
        let x = t(&[2, 2], &[0.0, 3f32.ln(), 1000.0, 1000.0]);
        let y = softmax(&x, -1).unwrap();
        let y = y.as_f32().unwrap();
        for (a, b) in y.iter().zip([0.25, 0.75, 0.5, 0.5]) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
        let y = softmax(&x, 0).unwrap();
        let y = y.as_f32().unwrap();
        assert!(
            (y[0] - 0.0).abs() < 1e-6 && (y[2] - 1.0).abs() < 1e-6,
            "{y:?}"
        );
        assert!(softmax(&x, 2).is_err());
        assert!(softmax(&x, -3).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn softmax_matches_reference(
            shape in prop::collection::vec(1usize..6, 1..5),
            axis_seed in any::<isize>(),
            seed in any::<u64>(),
        ) {
            let n: usize = shape.iter().product();
            let data = testutil::data(seed, n, 20.0);
            let x = Tensor::from_f32(shape.clone(), data).unwrap();
            let rank = shape.len() as isize;
            let axis = axis_seed.rem_euclid(2 * rank) - rank;
            let fast = softmax(&x, axis).unwrap();
            let slow = reference::softmax(&x, axis).unwrap();
            prop_assert_eq!(fast.shape(), slow.shape());
            testutil::assert_close(&fast, &slow)?;
        }
    }
}

//! Native tensor kernels that plugins call through the host.
//!
//! The layout follows tract's split: [`Tensor`] is a plain owned (shared)
//! n-dimensional array, the operation modules validate shapes and dispatch,
//! and every fast kernel has a naive twin in [`reference`](mod@reference) that the tests use
//! as an oracle.
//!
//! All inputs are untrusted (they come from WebAssembly guests), so every
//! shape problem is a [`TensorError`] and no output may exceed
//! [`MAX_ELEMENTS`] elements.

mod activation;
mod argmax;
mod conv;
mod elementwise;
mod error;
pub mod fast;
mod gemm;
mod layout;
mod pool;
pub mod quant;
mod reduce;
pub mod reference;
mod shape;
/// Deterministic test data and tolerances shared by the kernel tests and the tests of crates
/// built on the kernels (`test-util` feature).
#[cfg(any(test, feature = "test-util"))]
pub mod testutil;
mod window;

use std::sync::Arc;

pub use activation::{Activation, clip, relu, relu6, sigmoid, softmax, tanh};
pub use argmax::argmax;
pub use conv::{Conv2dParams, conv2d};
pub use elementwise::{abs, add, batch_norm, div, exp, log, maximum, minimum, mul, pow, sqrt, sub};
pub use error::TensorError;
pub use gemm::{GemmParams, gemm, matmul};
pub use layout::{channel_shuffle, concat, flatten, reshape, transpose};
pub use pool::{Pool2dParams, avg_pool2d, global_avg_pool, max_pool2d};
pub use quant::{
    QTensor, QuantParams, QuantType, Requantize, dequantize, qconv2d, qgemm, quantize,
};
pub use reduce::{reduce_max, reduce_mean, reduce_min, reduce_sum};
pub use window::Padding;

/// Largest element count of any tensor this module creates or accepts.
///
/// 2^28 f32 values are 1 GiB: far beyond any edge model's activations, yet
/// small enough that a hostile shape cannot make the host allocate without
/// bound.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// Element type of a [`Tensor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ElementType {
    /// 32-bit IEEE float; the only type the numeric kernels accept.
    F32,
    /// Unsigned byte (images, quantized data).
    U8,
    /// 64-bit signed integer (indices, shapes).
    I64,
}

impl ElementType {
    /// Size of one element in bytes.
    pub fn size_bytes(self) -> usize {
        match self {
            ElementType::F32 => 4,
            ElementType::U8 => 1,
            ElementType::I64 => 8,
        }
    }
}

/// The elements of a tensor, row-major.
///
/// Held in an `Arc` so that weights and reshaped views are shared, not copied.
#[derive(Clone, Debug)]
pub enum TensorData {
    /// f32 elements.
    F32(Arc<[f32]>),
    /// u8 elements.
    U8(Arc<[u8]>),
    /// i64 elements.
    I64(Arc<[i64]>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(d) => d.len(),
            TensorData::U8(d) => d.len(),
            TensorData::I64(d) => d.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        match self {
            TensorData::F32(_) => ElementType::F32,
            TensorData::U8(_) => ElementType::U8,
            TensorData::I64(_) => ElementType::I64,
        }
    }
}

/// A dense row-major n-dimensional array with shared storage.
///
/// Invariant: the product of `shape` equals the data length and is at most
/// [`MAX_ELEMENTS`]; a rank-0 tensor (empty shape) is a scalar with one
/// element.
#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// Builds a tensor from a shape and matching storage.
    pub fn from_data(shape: Vec<usize>, data: TensorData) -> Result<Tensor, TensorError> {
        let expected = shape::num_elements("tensor", &shape)?;
        if expected != data.len() {
            return Err(TensorError::ShapeMismatch(format!(
                "tensor: shape {shape:?} needs {expected} elements, got {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    /// An f32 tensor; fails unless the shape's element count equals `data.len()`.
    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, TensorError> {
        Tensor::from_data(shape, TensorData::F32(data.into()))
    }

    /// A u8 tensor; fails unless the shape's element count equals `data.len()`.
    pub fn from_u8(shape: Vec<usize>, data: Vec<u8>) -> Result<Tensor, TensorError> {
        Tensor::from_data(shape, TensorData::U8(data.into()))
    }

    /// An i64 tensor; fails unless the shape's element count equals `data.len()`.
    pub fn from_i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Tensor, TensorError> {
        Tensor::from_data(shape, TensorData::I64(data.into()))
    }

    /// Decodes little-endian bytes, the wire format of the plugin interface.
    pub fn from_le_bytes(
        shape: Vec<usize>,
        ty: ElementType,
        bytes: &[u8],
    ) -> Result<Tensor, TensorError> {
        let n = shape::num_elements("from_le_bytes", &shape)?;
        // Cannot overflow: n <= MAX_ELEMENTS and elements are at most 8 bytes.
        let expected = n * ty.size_bytes();
        if bytes.len() != expected {
            return Err(TensorError::ShapeMismatch(format!(
                "from_le_bytes: shape {shape:?} of {ty:?} needs {expected} bytes, got {}",
                bytes.len()
            )));
        }
        let data = match ty {
            ElementType::F32 => TensorData::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            ElementType::U8 => TensorData::U8(bytes.into()),
            ElementType::I64 => TensorData::I64(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            ),
        };
        Ok(Tensor { shape, data })
    }

    /// An f32 tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Result<Tensor, TensorError> {
        let n = shape::num_elements("zeros", &shape)?;
        Ok(Tensor {
            shape,
            data: TensorData::F32(vec![0.0; n].into()),
        })
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        self.data.element_type()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements (some dimension is 0).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes held by the elements, for the host's memory accounting.
    pub fn byte_size(&self) -> usize {
        self.len() * self.element_type().size_bytes()
    }

    /// The storage.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The f32 elements, or `UnsupportedType` for other element types.
    pub fn as_f32(&self) -> Result<&[f32], TensorError> {
        match &self.data {
            TensorData::F32(d) => Ok(d),
            other => Err(TensorError::UnsupportedType {
                op: "as_f32",
                ty: other.element_type(),
            }),
        }
    }

    /// The u8 elements, or `UnsupportedType` for other element types.
    pub fn as_u8(&self) -> Result<&[u8], TensorError> {
        match &self.data {
            TensorData::U8(d) => Ok(d),
            other => Err(TensorError::UnsupportedType {
                op: "as_u8",
                ty: other.element_type(),
            }),
        }
    }

    /// The i64 elements, or `UnsupportedType` for other element types.
    pub fn as_i64(&self) -> Result<&[i64], TensorError> {
        match &self.data {
            TensorData::I64(d) => Ok(d),
            other => Err(TensorError::UnsupportedType {
                op: "as_i64",
                ty: other.element_type(),
            }),
        }
    }

    /// Encodes the elements as little-endian bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            TensorData::F32(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TensorData::U8(d) => d.to_vec(),
            TensorData::I64(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The f32 elements for operation `op`, or `UnsupportedType` naming `op`.
    pub(crate) fn f32_for(&self, op: &'static str) -> Result<&[f32], TensorError> {
        match &self.data {
            TensorData::F32(d) => Ok(d),
            other => Err(TensorError::UnsupportedType {
                op,
                ty: other.element_type(),
            }),
        }
    }

    /// Wraps a kernel's output; the caller has already checked the size.
    ///
    /// Takes an `Arc` directly too: turning a `Vec` into an `Arc<[f32]>`
    /// copies it, which for large activations costs as much as a cheap op.
    pub(crate) fn from_f32_unchecked(shape: Vec<usize>, data: impl Into<Arc<[f32]>>) -> Tensor {
        let data = data.into();
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: TensorData::F32(data),
        }
    }

    /// Builds an f32 tensor of `shape` (already size-checked) by letting
    /// `fill` write into zeroed storage allocated once, in place.
    pub(crate) fn f32_output(shape: Vec<usize>, fill: impl FnOnce(&mut [f32])) -> Tensor {
        let n = shape.iter().product();
        // One zeroed allocation (calloc-backed: fresh pages come zeroed from the kernel, no
        // element-by-element fill; the iterator collect this replaced was 1.7% of a digits
        // request's profile).
        let zeroed: Arc<[std::mem::MaybeUninit<f32>]> = Arc::new_zeroed_slice(n);
        // SAFETY: all-zero bits are a valid f32 (0.0), so every element is initialized.
        let mut data: Arc<[f32]> = unsafe { zeroed.assume_init() };
        fill(Arc::get_mut(&mut data).expect("a fresh Arc has no other owner"));
        Tensor {
            shape,
            data: TensorData::F32(data),
        }
    }

    /// A copy of this f32 tensor's elements transformed in place by `f`.
    pub(crate) fn map_f32(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut [f32]),
    ) -> Result<Tensor, TensorError> {
        let mut data: Arc<[f32]> = Arc::from(self.f32_for(op)?);
        f(Arc::get_mut(&mut data).expect("a fresh Arc has no other owner"));
        Ok(Tensor {
            shape: self.shape.clone(),
            data: TensorData::F32(data),
        })
    }

    /// Same storage under a new shape; the caller has checked the count.
    pub(crate) fn with_shape_unchecked(&self, shape: Vec<usize>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), self.len());
        Tensor {
            shape,
            data: self.data.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_check_length() {
        assert!(Tensor::from_f32(vec![2, 3], vec![0.0; 6]).is_ok());
        let err = Tensor::from_f32(vec![2, 3], vec![0.0; 5]).unwrap_err();
        assert!(matches!(err, TensorError::ShapeMismatch(_)), "{err}");
        assert!(Tensor::from_u8(vec![4], vec![1, 2, 3]).is_err());
        assert!(Tensor::from_i64(vec![], vec![7]).is_ok());
        assert!(Tensor::from_i64(vec![0, 5], vec![]).is_ok());
    }

    #[test]
    fn constructors_reject_overflow_and_huge() {
        let err = Tensor::from_f32(vec![usize::MAX, 2], vec![]).unwrap_err();
        assert!(matches!(err, TensorError::TooLarge(_)), "{err}");
        let err = Tensor::zeros(vec![1 << 20, 1 << 20]).unwrap_err();
        assert!(matches!(err, TensorError::TooLarge(_)), "{err}");
        // A zero dimension makes an empty tensor even when others are huge.
        assert!(Tensor::zeros(vec![0, usize::MAX]).is_ok());
    }

    #[test]
    fn le_bytes_round_trip() {
        let t = Tensor::from_f32(vec![2], vec![1.5, -2.0]).unwrap();
        let b = t.to_le_bytes();
        assert_eq!(b, [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat());
        let back = Tensor::from_le_bytes(vec![2], ElementType::F32, &b).unwrap();
        assert_eq!(back.as_f32().unwrap(), &[1.5, -2.0]);

        let t = Tensor::from_i64(vec![1, 2], vec![-1, 1 << 40]).unwrap();
        let back = Tensor::from_le_bytes(vec![1, 2], ElementType::I64, &t.to_le_bytes()).unwrap();
        assert_eq!(back.as_i64().unwrap(), &[-1, 1 << 40]);
        assert_eq!(back.byte_size(), 16);

        let back = Tensor::from_le_bytes(vec![3], ElementType::U8, &[1, 2, 3]).unwrap();
        assert_eq!(back.as_u8().unwrap(), &[1, 2, 3]);
        assert!(Tensor::from_le_bytes(vec![2], ElementType::F32, &[0; 7]).is_err());
    }

    #[test]
    fn accessors() {
        let t = Tensor::from_u8(vec![2, 2], vec![1, 2, 3, 4]).unwrap();
        assert_eq!(t.shape(), &[2, 2]);
        assert_eq!(t.element_type(), ElementType::U8);
        assert_eq!(t.len(), 4);
        assert!(!t.is_empty());
        assert_eq!(t.byte_size(), 4);
        assert_eq!(
            t.as_f32().unwrap_err(),
            TensorError::UnsupportedType {
                op: "as_f32",
                ty: ElementType::U8
            }
        );
        let z = Tensor::zeros(vec![3]).unwrap();
        assert_eq!(z.as_f32().unwrap(), &[0.0; 3]);
        assert_eq!(z.byte_size(), 12);
        assert!(Tensor::zeros(vec![0]).unwrap().is_empty());
    }
}

//! Quantized tensors and the ops on them, with ONNX's semantics: QuantizeLinear,
//! DequantizeLinear, QLinearConv and QGemm.
//!
//! A [`QTensor`] stores 8-bit integers (`u8` or `i8`) with the parameters that map them to
//! real values, `real = (q - zero_point) · scale`, per tensor or per slice along one axis
//! (per output channel of a weight). The convolution and the GEMM ([`qconv2d`], [`qgemm`])
//! run on the int8 engine of [`crate::fast::int8`], the one the native model backend uses:
//! `u8` activations per tensor times `i8` weights, summed exactly in `i32` and requantized to
//! `u8`. Other storage types are mapped onto that engine without changing a real value: an
//! `i8` activation by flipping its sign bit (its zero point moves by 128), a weight by
//! subtracting its zero point, which must leave it in `i8` (it does for the symmetric `i8`
//! weights onnxruntime's quantizer makes; otherwise the op is refused as unsupported).

mod ops;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::fast::Isa;
use crate::fast::int8::quantize_u8;
use crate::{Tensor, TensorData, TensorError, shape};

pub use ops::{Requantize, qconv2d, qgemm};

/// Storage type of a [`QTensor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// Unsigned byte, 0 to 255.
    U8,
    /// Signed byte, -128 to 127, stored as its two's complement byte.
    I8,
}

impl QuantType {
    /// The smallest and largest stored value.
    pub fn range(self) -> (i32, i32) {
        match self {
            QuantType::U8 => (0, 255),
            QuantType::I8 => (-128, 127),
        }
    }

    /// The integer a stored byte holds.
    #[inline(always)]
    pub fn value(self, byte: u8) -> i32 {
        match self {
            QuantType::U8 => i32::from(byte),
            QuantType::I8 => i32::from(byte as i8),
        }
    }
}

/// Scales and zero points: one of each for the whole tensor, or one per slice along `axis`.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantParams {
    /// Finite and positive.
    pub scales: Vec<f32>,
    /// As many as `scales`, each in the storage type's range.
    pub zero_points: Vec<i32>,
    /// The axis the parameters run along; ignored for one scale.
    pub axis: usize,
}

impl QuantParams {
    /// One scale and zero point for the whole tensor.
    pub fn per_tensor(scale: f32, zero_point: i32) -> QuantParams {
        QuantParams {
            scales: vec![scale],
            zero_points: vec![zero_point],
            axis: 0,
        }
    }

    /// Whether there is one scale for the whole tensor.
    pub fn is_per_tensor(&self) -> bool {
        self.scales.len() == 1
    }

    /// Checks the parameters for a tensor of `ty` and `shape`.
    fn check(&self, op: &str, ty: QuantType, shape: &[usize]) -> Result<(), TensorError> {
        let n = self.scales.len();
        if n == 0 || n != self.zero_points.len() {
            return Err(TensorError::InvalidArgument(format!(
                "{op}: {n} scales and {} zero points (one of each, or as many as the axis has)",
                self.zero_points.len()
            )));
        }
        if n > 1 {
            match shape.get(self.axis) {
                Some(&dim) if dim == n => {}
                Some(&dim) => {
                    return Err(TensorError::ShapeMismatch(format!(
                        "{op}: {n} scales along axis {} of shape {shape:?}, which has {dim}",
                        self.axis
                    )));
                }
                None => {
                    return Err(TensorError::ShapeMismatch(format!(
                        "{op}: axis {} out of range for shape {shape:?}",
                        self.axis
                    )));
                }
            }
        }
        if let Some(s) = self.scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(TensorError::InvalidArgument(format!(
                "{op}: scale {s} is not finite and positive"
            )));
        }
        let (lo, hi) = ty.range();
        if let Some(z) = self.zero_points.iter().find(|z| !(lo..=hi).contains(*z)) {
            return Err(TensorError::InvalidArgument(format!(
                "{op}: zero point {z} is outside {ty:?}'s range {lo}..={hi}"
            )));
        }
        Ok(())
    }

    /// For element `i` (row-major) of a tensor of `shape`, the index of its scale.
    fn index_of(&self, shape: &[usize]) -> impl Fn(usize) -> usize + use<> {
        let (dim, inner) = if self.is_per_tensor() {
            (1, 1)
        } else {
            (
                shape[self.axis],
                shape[self.axis + 1..].iter().product::<usize>().max(1),
            )
        };
        move |i| (i / inner) % dim
    }
}

/// A dense row-major tensor of 8-bit integers with its quantization parameters.
///
/// Invariant: the product of `shape` equals the data length, at most
/// [`MAX_ELEMENTS`](crate::MAX_ELEMENTS), and the parameters passed [`QuantParams`]'s checks
/// for this shape and type.
#[derive(Clone, Debug)]
pub struct QTensor {
    shape: Vec<usize>,
    ty: QuantType,
    /// Shared, so that a weight loaded as a `u8` [`Tensor`] is not copied.
    data: Arc<[u8]>,
    params: QuantParams,
}

impl QTensor {
    /// A quantized tensor of the stored bytes `data` (an `i8` as its two's complement).
    pub fn new(
        shape: Vec<usize>,
        ty: QuantType,
        data: impl Into<Arc<[u8]>>,
        params: QuantParams,
    ) -> Result<QTensor, TensorError> {
        let data = data.into();
        let n = shape::num_elements("quantized tensor", &shape)?;
        if n != data.len() {
            return Err(TensorError::ShapeMismatch(format!(
                "quantized tensor: shape {shape:?} needs {n} bytes, got {}",
                data.len()
            )));
        }
        params.check("quantized tensor", ty, &shape)?;
        Ok(QTensor {
            shape,
            ty,
            data,
            params,
        })
    }

    /// The bytes of a `u8` tensor as the stored integers of a quantized tensor of its shape,
    /// shared with it.
    pub fn from_tensor(
        tensor: &Tensor,
        ty: QuantType,
        params: QuantParams,
    ) -> Result<QTensor, TensorError> {
        match tensor.data() {
            TensorData::U8(bytes) => {
                QTensor::new(tensor.shape().to_vec(), ty, bytes.clone(), params)
            }
            other => Err(TensorError::UnsupportedType {
                op: "quantized tensor from a tensor (uint8 only)",
                ty: other.element_type(),
            }),
        }
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The storage type.
    pub fn quant_type(&self) -> QuantType {
        self.ty
    }

    /// The scales and zero points.
    pub fn params(&self) -> &QuantParams {
        &self.params
    }

    /// The stored bytes, row-major.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Bytes held by the elements, for the host's memory accounting.
    pub fn byte_size(&self) -> usize {
        self.data.len()
    }
}

/// ONNX QuantizeLinear of an f32 tensor:
/// `clamp(round_half_even(x / scale) + zero_point)` to `ty`'s range, per tensor or per
/// slice along `params.axis`. A NaN becomes the lowest value.
pub fn quantize(x: &Tensor, ty: QuantType, params: QuantParams) -> Result<QTensor, TensorError> {
    let values = x.f32_for("quantize")?;
    params.check("quantize", ty, x.shape())?;
    let mut out = vec![0u8; values.len()];
    if ty == QuantType::U8 && params.is_per_tensor() {
        // The common case, activations, on the native backend's vectorized kernel; the loop
        // below computes the same bytes.
        let zero = params.zero_points[0] as u8;
        quantize_u8(Isa::detect(), values, params.scales[0], zero, &mut out);
    } else {
        let (lo, hi) = ty.range();
        let index = params.index_of(x.shape());
        for (i, (o, &v)) in out.iter_mut().zip(values).enumerate() {
            let j = index(i);
            let z = params.zero_points[j];
            // Clamped before rounding (the bounds are integers, so it is the same), and
            // `max` first so that a NaN becomes the lower bound.
            let q = (v / params.scales[j])
                .max((lo - z) as f32)
                .min((hi - z) as f32)
                .round_ties_even() as i32;
            *o = (q + z) as u8;
        }
    }
    QTensor::new(x.shape().to_vec(), ty, out, params)
}

/// ONNX DequantizeLinear: `(q - zero_point) · scale` as f32.
pub fn dequantize(q: &QTensor) -> Result<Tensor, TensorError> {
    let index = q.params.index_of(&q.shape);
    let (scales, zeros) = (&q.params.scales, &q.params.zero_points);
    let values: Vec<f32> = q
        .data
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let j = index(i);
            (q.ty.value(b) - zeros[j]) as f32 * scales[j]
        })
        .collect();
    Ok(Tensor::from_f32_unchecked(q.shape.clone(), values))
}

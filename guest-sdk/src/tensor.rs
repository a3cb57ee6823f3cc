//! Tensors in host memory, and the native kernels that run on them.

use crate::Error;
use crate::bindings::edgeplug::plugin::{ops, types};

/// Element type of a tensor. Kernels compute in `Float32`; the others carry data in and out.
#[doc(inline)]
pub use types::ElementType;

/// A tensor that lives in host memory. Cloning is not offered: ops return new tensors and
/// never modify their inputs, so share by reference.
#[derive(Debug)]
pub struct Tensor(pub(crate) types::Tensor);

fn dims(shape: &[usize]) -> Result<Vec<u32>, Error> {
    shape
        .iter()
        .map(|&d| {
            u32::try_from(d)
                .map_err(|_| Error::invalid_argument(format!("dimension {d} is too large")))
        })
        .collect()
}

impl Tensor {
    /// A float32 tensor of `shape` from row-major values.
    pub fn from_slice(shape: &[usize], data: &[f32]) -> Result<Tensor, Error> {
        Ok(Tensor(types::Tensor::from_f32(&dims(shape)?, data)?))
    }

    /// A tensor from little-endian bytes of `element_type`.
    pub fn from_bytes(
        shape: &[usize],
        element_type: ElementType,
        data: &[u8],
    ) -> Result<Tensor, Error> {
        Ok(Tensor(types::Tensor::from_bytes(
            &dims(shape)?,
            element_type,
            data,
        )?))
    }

    /// A named weight tensor from the weights files the manifest grants; the data stays in the
    /// host, shared by every instance.
    pub fn load(name: &str) -> Result<Tensor, Error> {
        Ok(Tensor(types::Tensor::load(name)?))
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> Vec<usize> {
        self.0.shape().into_iter().map(|d| d as usize).collect()
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        self.0.element_type()
    }

    /// Copies a float32 tensor's values into the sandbox.
    pub fn to_vec(&self) -> Result<Vec<f32>, Error> {
        self.0.to_f32()
    }

    /// Copies the values, as little-endian bytes, into the sandbox.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// Copies an int64 tensor's values (what [`Tensor::argmax`] gives) into the sandbox.
    pub fn to_i64(&self) -> Result<Vec<i64>, Error> {
        if self.element_type() != ElementType::Int64 {
            return Err(Error::invalid_argument(format!(
                "to_i64 needs an INT64 tensor, this one is {:?}",
                self.element_type()
            )));
        }
        Ok(self
            .to_bytes()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect())
    }

    /// max(x, 0).
    pub fn relu(&self) -> Result<Tensor, Error> {
        Ok(Tensor(ops::relu(&self.0)?))
    }

    /// min(max(x, 0), 6).
    pub fn relu6(&self) -> Result<Tensor, Error> {
        Ok(Tensor(ops::relu6(&self.0)?))
    }

    /// 1 / (1 + e^-x).
    pub fn sigmoid(&self) -> Result<Tensor, Error> {
        Ok(Tensor(ops::sigmoid(&self.0)?))
    }

    /// tanh(x).
    pub fn tanh(&self) -> Result<Tensor, Error> {
        Ok(Tensor(ops::tanh(&self.0)?))
    }

    /// min(max(x, min), max).
    pub fn clip(&self, min: f32, max: f32) -> Result<Tensor, Error> {
        Ok(Tensor(ops::clip(&self.0, min, max)?))
    }

    /// Softmax along `axis` (negative counts from the end).
    pub fn softmax(&self, axis: i32) -> Result<Tensor, Error> {
        Ok(Tensor(ops::softmax(&self.0, axis)?))
    }

    /// Elementwise sum with NumPy broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor, Error> {
        Ok(Tensor(ops::add(&self.0, &other.0)?))
    }

    /// Elementwise product with NumPy broadcasting.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor, Error> {
        Ok(Tensor(ops::mul(&self.0, &other.0)?))
    }

    /// NumPy matmul.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor, Error> {
        Ok(Tensor(ops::matmul(&self.0, &other.0)?))
    }

    /// [N, C, H, W] to [N, C, 1, 1] by averaging each channel.
    pub fn global_avg_pool(&self) -> Result<Tensor, Error> {
        Ok(Tensor(ops::global_avg_pool(&self.0)?))
    }

    /// Inference batch normalization over the channels of [N, C, H, W].
    pub fn batch_norm(
        &self,
        scale: &Tensor,
        bias: &Tensor,
        mean: &Tensor,
        variance: &Tensor,
        epsilon: f32,
    ) -> Result<Tensor, Error> {
        Ok(Tensor(ops::batch_norm(
            &self.0,
            &scale.0,
            &bias.0,
            &mean.0,
            &variance.0,
            epsilon,
        )?))
    }

    /// ONNX Reshape: one dimension may be -1 (inferred); 0 keeps the input's dimension.
    pub fn reshape(&self, shape: &[i64]) -> Result<Tensor, Error> {
        Ok(Tensor(ops::reshape(&self.0, shape)?))
    }

    /// ONNX Flatten to 2-D at `axis`.
    pub fn flatten(&self, axis: u32) -> Result<Tensor, Error> {
        Ok(Tensor(ops::flatten(&self.0, axis)?))
    }

    /// Permutes the dimensions.
    pub fn transpose(&self, perm: &[u32]) -> Result<Tensor, Error> {
        Ok(Tensor(ops::transpose(&self.0, perm)?))
    }

    /// Concatenates tensors along `axis`.
    pub fn concat(tensors: &[&Tensor], axis: u32) -> Result<Tensor, Error> {
        let handles: Vec<&types::Tensor> = tensors.iter().map(|t| &t.0).collect();
        Ok(Tensor(ops::concat(&handles, axis)?))
    }

    /// ShuffleNet's channel shuffle of [N, C, H, W].
    pub fn channel_shuffle(&self, groups: u32) -> Result<Tensor, Error> {
        Ok(Tensor(ops::channel_shuffle(&self.0, groups)?))
    }

    // Elementwise math and reductions (WIT 0.1.3). Domain errors follow IEEE 754 as NumPy
    // does: the result is NaN (or ±inf), never an error, so one bad value does not fail a
    // whole image.

    /// √x; NaN for a negative x.
    pub fn sqrt(&self) -> Result<Tensor, Error> {
        Ok(Tensor(ops::sqrt(&self.0)?))
    }

    /// |x|.
    pub fn abs(&self) -> Result<Tensor, Error> {
        Ok(Tensor(ops::abs(&self.0)?))
    }

    /// e^x.
    pub fn exp(&self) -> Result<Tensor, Error> {
        Ok(Tensor(ops::exp(&self.0)?))
    }

    /// ln(x); -inf for 0, NaN for a negative x.
    pub fn log(&self) -> Result<Tensor, Error> {
        Ok(Tensor(ops::log(&self.0)?))
    }

    /// Elementwise difference with NumPy broadcasting.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor, Error> {
        Ok(Tensor(ops::sub(&self.0, &other.0)?))
    }

    /// Elementwise quotient with NumPy broadcasting; x / 0 is ±inf, 0 / 0 NaN.
    pub fn div(&self, other: &Tensor) -> Result<Tensor, Error> {
        Ok(Tensor(ops::div(&self.0, &other.0)?))
    }

    /// Elementwise power with NumPy broadcasting: `self ^ exponent`. A negative base to a
    /// non-integer exponent is NaN.
    pub fn pow(&self, exponent: &Tensor) -> Result<Tensor, Error> {
        Ok(Tensor(ops::pow(&self.0, &exponent.0)?))
    }

    /// Every element to the power `exponent` (a shape-`[]` exponent tensor, made here).
    ///
    /// ```ignore
    /// let squared = gradient.powf(2.0)?;
    /// ```
    pub fn powf(&self, exponent: f32) -> Result<Tensor, Error> {
        self.pow(&Tensor::from_slice(&[], &[exponent])?)
    }

    /// Elementwise maximum with NumPy broadcasting; NaN on either side gives NaN.
    pub fn maximum(&self, other: &Tensor) -> Result<Tensor, Error> {
        Ok(Tensor(ops::maximum(&self.0, &other.0)?))
    }

    /// Elementwise minimum with NumPy broadcasting; NaN on either side gives NaN.
    pub fn minimum(&self, other: &Tensor) -> Result<Tensor, Error> {
        Ok(Tensor(ops::minimum(&self.0, &other.0)?))
    }

    /// Sum over `axes` (every axis if empty, negative counts from the end); `keepdims` keeps
    /// each reduced axis as size 1, so the result broadcasts against `self`. An axis out of
    /// range is a `ShapeMismatch` error.
    ///
    /// ```ignore
    /// let per_channel = image.reduce_sum(&[2, 3], true)?; // [N, C, H, W] -> [N, C, 1, 1]
    /// ```
    pub fn reduce_sum(&self, axes: &[i32], keepdims: bool) -> Result<Tensor, Error> {
        Ok(Tensor(ops::reduce_sum(&self.0, axes, keepdims)?))
    }

    /// Mean over `axes`, as [`Tensor::reduce_sum`].
    pub fn reduce_mean(&self, axes: &[i32], keepdims: bool) -> Result<Tensor, Error> {
        Ok(Tensor(ops::reduce_mean(&self.0, axes, keepdims)?))
    }

    /// Maximum over `axes`, as [`Tensor::reduce_sum`]; NaN if a reduced element is NaN.
    ///
    /// ```ignore
    /// // Normalize an edge map to [0, 1] without copying it into the sandbox.
    /// let unit = magnitude.div(&magnitude.reduce_max(&[], false)?)?;
    /// ```
    pub fn reduce_max(&self, axes: &[i32], keepdims: bool) -> Result<Tensor, Error> {
        Ok(Tensor(ops::reduce_max(&self.0, axes, keepdims)?))
    }

    /// Minimum over `axes`, as [`Tensor::reduce_max`].
    pub fn reduce_min(&self, axes: &[i32], keepdims: bool) -> Result<Tensor, Error> {
        Ok(Tensor(ops::reduce_min(&self.0, axes, keepdims)?))
    }

    /// The index of the first maximum along `axis` (negative counts from the end), as an
    /// `INT64` tensor; a NaN counts as the largest (NumPy's `argmax`). `keepdims` keeps the
    /// axis as size 1. Needs WIT 0.1.4 (`world = "edgeplug:plugin/plugin@0.1.4"`).
    ///
    /// ```ignore
    /// // The class of each row of [batch, classes] scores, without copying them into wasm.
    /// let classes = scores.argmax(1, false)?.to_i64()?;
    /// ```
    pub fn argmax(&self, axis: i32, keepdims: bool) -> Result<Tensor, Error> {
        Ok(Tensor(ops::argmax(&self.0, axis, keepdims)?))
    }
}

/// Storage type of a [`QuantizedTensor`]: `Uint8` or `Int8` (WIT 0.1.5).
#[doc(inline)]
pub use types::QuantType;

/// Scales and zero points of a [`QuantizedTensor`], ONNX's: `real = (q - zero_point) · scale`,
/// one pair for the whole tensor or one per slice along `axis` (WIT 0.1.5).
#[doc(inline)]
pub use types::QuantParams;

impl QuantParams {
    /// One scale and zero point for the whole tensor (activations, per-tensor weights).
    pub fn per_tensor(scale: f32, zero_point: i32) -> QuantParams {
        QuantParams {
            scales: vec![scale],
            zero_points: vec![zero_point],
            axis: 0,
        }
    }

    /// One scale and zero point per slice along `axis` (per output channel: axis 0 of OIHW
    /// convolution weights, the `N` axis of a GEMM's `b`).
    pub fn per_axis(scales: Vec<f32>, zero_points: Vec<i32>, axis: u32) -> QuantParams {
        QuantParams {
            scales,
            zero_points,
            axis,
        }
    }
}

/// A tensor of 8-bit integers with its [`QuantParams`], in host memory like [`Tensor`]
/// (WIT 0.1.5: declare `world = "edgeplug:plugin/plugin@0.1.5"`).
///
/// Made by [`Tensor::quantize`] (ONNX QuantizeLinear), from bytes, or from a `U8` weight
/// ([`QuantizedTensor::load`]); run through [`QConv2d`](crate::QConv2d) and
/// [`QGemm`](crate::QGemm); turned back into float32 by [`QuantizedTensor::dequantize`].
/// A quantized layer stack, as onnxruntime's QOperator models are:
///
/// ```ignore
/// let x = input.quantize(QuantType::Uint8, &QuantParams::per_tensor(1.0 / 255.0, 0))?;
/// let w = QuantizedTensor::load("conv0.weight", QuantType::Int8, &QuantParams::per_axis(scales, vec![0; 16], 0))?;
/// let y = QConv2d::new(&w, Requantize { scale: 0.03, zero_point: 120 }).bias(&bias).pad(1).run(&x)?;
/// let y = y.dequantize()?.clip(0.0, 6.0)?;
/// ```
#[derive(Debug)]
pub struct QuantizedTensor(pub(crate) types::QuantizedTensor);

impl QuantizedTensor {
    /// A quantized tensor of `shape` from its stored bytes (an `Int8` as two's complement).
    /// `invalid-argument` for a scale that is not finite and positive or a zero point out of
    /// the type's range; `shape-mismatch` for a length or per-axis count that does not fit.
    pub fn from_bytes(
        shape: &[usize],
        quant_type: QuantType,
        data: &[u8],
        params: &QuantParams,
    ) -> Result<QuantizedTensor, Error> {
        Ok(QuantizedTensor(types::QuantizedTensor::from_bytes(
            &dims(shape)?,
            quant_type,
            data,
            params,
        )?))
    }

    /// The bytes of a `Uint8` tensor as the stored integers of a quantized tensor of its
    /// shape, shared in the host, not copied.
    pub fn from_tensor(
        data: &Tensor,
        quant_type: QuantType,
        params: &QuantParams,
    ) -> Result<QuantizedTensor, Error> {
        Ok(QuantizedTensor(types::QuantizedTensor::from_tensor(
            &data.0, quant_type, params,
        )?))
    }

    /// A quantized weight from the granted weights files: a `U8` safetensors entry holds the
    /// bytes (an int8 weight's two's complement bytes), the parameters come from the plugin.
    pub fn load(
        name: &str,
        quant_type: QuantType,
        params: &QuantParams,
    ) -> Result<QuantizedTensor, Error> {
        QuantizedTensor::from_tensor(&Tensor::load(name)?, quant_type, params)
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> Vec<usize> {
        self.0.shape().into_iter().map(|d| d as usize).collect()
    }

    /// The storage type.
    pub fn quant_type(&self) -> QuantType {
        self.0.quant_type()
    }

    /// The scales and zero points.
    pub fn params(&self) -> QuantParams {
        self.0.params()
    }

    /// Copies the stored bytes into the sandbox.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// ONNX DequantizeLinear: `(q - zero_point) · scale` as a float32 tensor.
    pub fn dequantize(&self) -> Result<Tensor, Error> {
        Ok(Tensor(ops::dequantize(&self.0)?))
    }
}

impl Tensor {
    /// ONNX QuantizeLinear of a float32 tensor: `round_half_even(x / scale) + zero_point`,
    /// saturated to the type's range, per tensor or per slice along `params.axis`
    /// (WIT 0.1.5).
    pub fn quantize(
        &self,
        quant_type: QuantType,
        params: &QuantParams,
    ) -> Result<QuantizedTensor, Error> {
        Ok(QuantizedTensor(ops::quantize(&self.0, quant_type, params)?))
    }
}

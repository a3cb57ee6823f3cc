//! Builders for the kernels with many parameters: convolution, GEMM and pooling.

use crate::bindings::edgeplug::plugin::ops;
use crate::{Error, QuantizedTensor, Tensor};

/// An activation fused into a kernel's output pass.
#[doc(inline)]
pub use ops::Activation;

/// Zero padding on each side of the spatial dimensions.
#[doc(inline)]
pub use ops::Padding;

/// A 2-D convolution of NCHW input with OIHW weights.
///
/// ```ignore
/// let y = Conv2d::new(&weight).bias(&bias).stride(2).pad(1).activation(Activation::Relu6).run(&x)?;
/// ```
#[derive(Debug)]
pub struct Conv2d<'a> {
    weight: &'a Tensor,
    bias: Option<&'a Tensor>,
    params: ops::Conv2dParams,
}

impl<'a> Conv2d<'a> {
    /// A convolution with stride 1, no padding, dilation 1, one group and no activation.
    pub fn new(weight: &'a Tensor) -> Conv2d<'a> {
        Conv2d {
            weight,
            bias: None,
            params: Conv2d::new_params(),
        }
    }

    /// Stride 1, no padding, dilation 1, one group, no activation.
    fn new_params() -> ops::Conv2dParams {
        ops::Conv2dParams {
            stride_h: 1,
            stride_w: 1,
            padding: Padding {
                top: 0,
                left: 0,
                bottom: 0,
                right: 0,
            },
            dilation_h: 1,
            dilation_w: 1,
            groups: 1,
            activation: Activation::None,
        }
    }

    /// Adds a bias of one value per output channel.
    pub fn bias(mut self, bias: &'a Tensor) -> Self {
        self.bias = Some(bias);
        self
    }

    /// The same stride in both directions.
    pub fn stride(mut self, stride: u32) -> Self {
        self.params.stride_h = stride;
        self.params.stride_w = stride;
        self
    }

    /// The same zero padding on all four sides.
    pub fn pad(mut self, pad: u32) -> Self {
        self.params.padding = Padding {
            top: pad,
            left: pad,
            bottom: pad,
            right: pad,
        };
        self
    }

    /// Asymmetric padding (TensorFlow's "SAME" pads more at the bottom and right).
    pub fn padding(mut self, padding: Padding) -> Self {
        self.params.padding = padding;
        self
    }

    /// The same dilation in both directions.
    pub fn dilation(mut self, dilation: u32) -> Self {
        self.params.dilation_h = dilation;
        self.params.dilation_w = dilation;
        self
    }

    /// Grouped convolution; groups = channels is depthwise.
    pub fn groups(mut self, groups: u32) -> Self {
        self.params.groups = groups;
        self
    }

    /// An activation applied in the same pass.
    pub fn activation(mut self, activation: Activation) -> Self {
        self.params.activation = activation;
        self
    }

    /// Runs the convolution on `input`.
    pub fn run(&self, input: &Tensor) -> Result<Tensor, Error> {
        Ok(Tensor(ops::conv2d(
            &input.0,
            &self.weight.0,
            self.bias.map(|b| &b.0),
            self.params,
        )?))
    }
}

/// ONNX Gemm: activation(alpha * op(a) x op(b) + beta * c).
#[derive(Debug)]
pub struct Gemm<'a> {
    b: &'a Tensor,
    c: Option<&'a Tensor>,
    params: ops::GemmParams,
}

impl<'a> Gemm<'a> {
    /// `a x b` (with `b` given here and `a` given to [`Gemm::run`]), alpha = beta = 1.
    pub fn new(b: &'a Tensor) -> Gemm<'a> {
        Gemm {
            b,
            c: None,
            params: ops::GemmParams {
                trans_a: false,
                trans_b: false,
                alpha: 1.0,
                beta: 1.0,
                activation: Activation::None,
            },
        }
    }

    /// Adds `beta * c`, broadcast to the result.
    pub fn bias(mut self, c: &'a Tensor) -> Self {
        self.c = Some(c);
        self
    }

    /// Uses the transpose of `a`.
    pub fn trans_a(mut self, yes: bool) -> Self {
        self.params.trans_a = yes;
        self
    }

    /// Uses the transpose of `b` (ONNX Gemm layers store weights as [out, in]).
    pub fn trans_b(mut self, yes: bool) -> Self {
        self.params.trans_b = yes;
        self
    }

    /// Scales the product.
    pub fn alpha(mut self, alpha: f32) -> Self {
        self.params.alpha = alpha;
        self
    }

    /// Scales the bias.
    pub fn beta(mut self, beta: f32) -> Self {
        self.params.beta = beta;
        self
    }

    /// An activation applied in the same pass.
    pub fn activation(mut self, activation: Activation) -> Self {
        self.params.activation = activation;
        self
    }

    /// Computes the product with `a` on the left.
    pub fn run(&self, a: &Tensor) -> Result<Tensor, Error> {
        Ok(Tensor(ops::gemm(
            &a.0,
            &self.b.0,
            self.c.map(|c| &c.0),
            self.params,
        )?))
    }
}

/// A 2-D pooling window, square ([`Pool2d::new`]) or rectangular ([`Pool2d::rect`]).
///
/// ```ignore
/// // Max over each row of a [N, C, 4, 8] map: [N, C, 4, 1].
/// let rows = Pool2d::rect(1, 8).max(&x)?;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Pool2d {
    params: ops::Pool2dParams,
}

impl Pool2d {
    /// A square `kernel`, stride equal to the kernel, no padding.
    pub fn new(kernel: u32) -> Pool2d {
        Pool2d::rect(kernel, kernel)
    }

    /// A `kernel_h` x `kernel_w` window, stride equal to the kernel in each direction, no
    /// padding.
    pub fn rect(kernel_h: u32, kernel_w: u32) -> Pool2d {
        Pool2d {
            params: ops::Pool2dParams {
                kernel_h,
                kernel_w,
                stride_h: kernel_h,
                stride_w: kernel_w,
                padding: Padding {
                    top: 0,
                    left: 0,
                    bottom: 0,
                    right: 0,
                },
                count_include_pad: false,
                ceil_mode: false,
            },
        }
    }

    /// The same stride in both directions.
    pub fn stride(mut self, stride: u32) -> Self {
        self.params.stride_h = stride;
        self.params.stride_w = stride;
        self
    }

    /// A stride of `stride_h` rows and `stride_w` columns.
    pub fn strides(mut self, stride_h: u32, stride_w: u32) -> Self {
        self.params.stride_h = stride_h;
        self.params.stride_w = stride_w;
        self
    }

    /// The same zero padding on all four sides.
    pub fn pad(mut self, pad: u32) -> Self {
        self.params.padding = Padding {
            top: pad,
            left: pad,
            bottom: pad,
            right: pad,
        };
        self
    }

    /// Asymmetric padding (padded cells never win a max).
    pub fn padding(mut self, padding: Padding) -> Self {
        self.params.padding = padding;
        self
    }

    /// Average pooling only: count padded zeros in the divisor.
    pub fn count_include_pad(mut self, yes: bool) -> Self {
        self.params.count_include_pad = yes;
        self
    }

    /// Round the output size up instead of down.
    pub fn ceil_mode(mut self, yes: bool) -> Self {
        self.params.ceil_mode = yes;
        self
    }

    /// Max pooling of `input`.
    pub fn max(&self, input: &Tensor) -> Result<Tensor, Error> {
        Ok(Tensor(ops::max_pool2d(&input.0, self.params)?))
    }

    /// Average pooling of `input`.
    pub fn avg(&self, input: &Tensor) -> Result<Tensor, Error> {
        Ok(Tensor(ops::avg_pool2d(&input.0, self.params)?))
    }
}

/// The scale and zero point of a quantized op's `uint8` output (WIT 0.1.5).
#[doc(inline)]
pub use ops::Requantize;

/// ONNX QLinearConv (WIT 0.1.5): a convolution of a quantized NCHW input with quantized OIHW
/// weights, an optional `int32` bias in units of input scale × weight scale (as ONNX stores
/// it), requantized to `uint8` with `output`'s scale and zero point. Activations are per
/// tensor; weights `Int8` or `Uint8`, per tensor or per output channel, whose values less
/// their zero point fit in `int8` (onnxruntime's symmetric int8 weights do; else
/// `unsupported`). The activation is a clamp of the output: `None`, `Relu` or `Relu6`.
///
/// ```ignore
/// let y = QConv2d::new(&w, Requantize { scale: 0.05, zero_point: 110 }).bias(&b).groups(32).pad(1).run(&x)?;
/// ```
#[derive(Debug)]
pub struct QConv2d<'a> {
    weight: &'a QuantizedTensor,
    bias: Option<&'a [i32]>,
    params: ops::Conv2dParams,
    output: Requantize,
}

impl<'a> QConv2d<'a> {
    /// A convolution with stride 1, no padding, dilation 1, one group and no activation.
    pub fn new(weight: &'a QuantizedTensor, output: Requantize) -> QConv2d<'a> {
        QConv2d {
            weight,
            bias: None,
            params: Conv2d::new_params(),
            output,
        }
    }

    /// Adds an `int32` bias, one value per output channel.
    pub fn bias(mut self, bias: &'a [i32]) -> Self {
        self.bias = Some(bias);
        self
    }

    /// The same stride in both directions.
    pub fn stride(mut self, stride: u32) -> Self {
        self.params.stride_h = stride;
        self.params.stride_w = stride;
        self
    }

    /// The same zero padding on every side.
    pub fn pad(mut self, pad: u32) -> Self {
        self.params.padding = Padding {
            top: pad,
            left: pad,
            bottom: pad,
            right: pad,
        };
        self
    }

    /// Padding per side.
    pub fn padding(mut self, padding: Padding) -> Self {
        self.params.padding = padding;
        self
    }

    /// The same dilation in both directions.
    pub fn dilation(mut self, dilation: u32) -> Self {
        self.params.dilation_h = dilation;
        self.params.dilation_w = dilation;
        self
    }

    /// Channel groups; input channels = output channels = groups is depthwise.
    pub fn groups(mut self, groups: u32) -> Self {
        self.params.groups = groups;
        self
    }

    /// A clamp of the output: `None`, `Relu` or `Relu6`.
    pub fn activation(mut self, activation: Activation) -> Self {
        self.params.activation = activation;
        self
    }

    /// Runs the convolution on `input`.
    pub fn run(&self, input: &QuantizedTensor) -> Result<QuantizedTensor, Error> {
        Ok(QuantizedTensor(ops::qconv2d(
            &input.0,
            &self.weight.0,
            self.bias,
            self.params,
            self.output,
        )?))
    }
}

/// ONNX QGemm (WIT 0.1.5): quantized `a` `[M, K]` times `b` `[K, N]` (or `[N, K]` with
/// [`QGemm::trans_b`]), plus an optional `int32` bias `[N]`, requantized to `uint8`; operands
/// and activation as for [`QConv2d`], per-channel weight scales per column of the result.
#[derive(Debug)]
pub struct QGemm<'a> {
    b: &'a QuantizedTensor,
    bias: Option<&'a [i32]>,
    trans_b: bool,
    activation: Activation,
    output: Requantize,
}

impl<'a> QGemm<'a> {
    /// `a x b`, with `b` given here and `a` given to [`QGemm::run`].
    pub fn new(b: &'a QuantizedTensor, output: Requantize) -> QGemm<'a> {
        QGemm {
            b,
            bias: None,
            trans_b: false,
            activation: Activation::None,
            output,
        }
    }

    /// Adds an `int32` bias, one value per output column.
    pub fn bias(mut self, bias: &'a [i32]) -> Self {
        self.bias = Some(bias);
        self
    }

    /// `b` is [N, K] (ONNX's `transB`, PyTorch's `Linear` weights).
    pub fn trans_b(mut self, yes: bool) -> Self {
        self.trans_b = yes;
        self
    }

    /// A clamp of the output: `None`, `Relu` or `Relu6`.
    pub fn activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Runs the product on `a`.
    pub fn run(&self, a: &QuantizedTensor) -> Result<QuantizedTensor, Error> {
        Ok(QuantizedTensor(ops::qgemm(
            &a.0,
            &self.b.0,
            self.bias,
            self.trans_b,
            self.activation,
            self.output,
        )?))
    }
}

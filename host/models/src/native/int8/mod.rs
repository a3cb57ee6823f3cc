//! Quantized models on the int8 kernels: ONNX graphs in either form that
//! onnxruntime's static quantizer writes. QDQ: QuantizeLinear/DequantizeLinear
//! around Conv, Gemm, MatMul, Add and GlobalAveragePool. QOperator:
//! QLinearConv, QLinearMatMul, QLinearAdd, QLinearGlobalAveragePool and
//! QGemm (`qoperator.rs`), lowered to the same steps, with what such a graph
//! leaves in float around them (a Clip between DequantizeLinear and
//! QuantizeLinear, a float pool and classifier: `float_tail.rs`). Both: `u8`
//! activations per tensor, `s8` weights per tensor or per output channel,
//! `i32` biases.
//!
//! Activations stay `u8` from the first QuantizeLinear to the last
//! DequantizeLinear: every convolution, GEMM, add and pool reads `u8`, sums
//! exactly in `i32` and requantizes in its store, to the scale the graph's
//! next QuantizeLinear names. Images are kept channels-last, as in the float
//! program. The arithmetic is onnxruntime's (round half to even, saturate),
//! so outputs match its int8 outputs up to the order of float rounding in
//! the requantization.

mod compile;
mod program;
#[cfg(test)]
mod step_tests;
#[cfg(test)]
mod tests;

pub(crate) use compile::{compile, is_quantized};
pub(crate) use program::{QArena, QProgram};

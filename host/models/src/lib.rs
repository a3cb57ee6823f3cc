//! Whole models and the weights plugins load.
//!
//! - [`model`]: ONNX models, on the [`native`] backend when every op is covered, else through
//!   tract; optimized once, `Send + Sync`, shared by every plugin version that grants them.
//! - [`native`]: the native backend: an ONNX graph compiled onto `edgeplug_kernels`' fast
//!   kernels (fused conv blocks, channels-last activations, pooled arenas).
//! - [`quantize`]: static int8 quantization of a float ONNX model into the QDQ form the native
//!   backend runs on its int8 kernels (`edgeplug quantize`).
//! - [`weights`]: named weight tensors from safetensors files, and the ONNX initializer
//!   extractor behind `edgeplug weights`.
//!
//! Nothing here knows wasmtime, WIT or HTTP (`cargo tree -p edgeplug-models` shows it).

pub mod model;
pub mod native;
pub mod quantize;
pub mod split;
pub mod weights;

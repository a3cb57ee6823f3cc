//! edgeplug: a WebAssembly inference-plugin runtime for edge hosts.
//!
//! # Layout
//! - [`tensor`]: tensors and native kernels (plain Rust; no wasmtime).
//! - [`model`]: whole ONNX models through tract (no wasmtime).
//! - [`weights`]: named weight tensors plugins load from safetensors files.
//! - [`manifest`]: the strict `plugin.toml` parser.
//! - [`runtime`]: the wasmtime embedding: engine, WIT glue, per-request stores, limits.
//! - [`cli`]: the `edgeplug` command line.
//!
//! See ARCHITECTURE.md at the repository root for the invariants.

pub mod cli;
pub mod manifest;
pub mod model;
pub mod runtime;
pub mod tensor;
pub mod weights;

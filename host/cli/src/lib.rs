//! edgeplug: a WebAssembly inference-plugin runtime for edge hosts.
//!
//! # Layout
//! - [`tensor`]: tensors and native kernels (plain Rust; no wasmtime).
//! - [`model`]: whole ONNX models: on [`native`] kernels when covered, else through tract.
//! - [`native`]: the native model backend (ONNX graph compiled onto `tensor` kernels).
//! - [`weights`]: named weight tensors plugins load from safetensors files.
//! - [`manifest`]: the strict `plugin.toml` parser.
//! - [`bundle`]: signed bundles, the trust store and the plugin store on disk.
//! - [`runtime`]: the wasmtime embedding: engine, WIT glue, per-request stores, limits.
//! - [`selftest`]: a plugin version's self-test vectors, run before it is activated.
//! - [`gateway`]: `edgeplug serve`: the HTTP gateway, its registry and hot swap.
//! - [`cli`]: the `edgeplug` command line.
//!
//! See ARCHITECTURE.md at the repository root for the invariants.

pub mod bundle;
pub mod cli;
pub mod cli_bench;
pub mod cli_bundle;
pub mod cli_conformance;
pub mod cli_serve;
pub mod conformance;
pub mod gateway;
pub mod manifest;
pub mod model;
pub mod model_store;
pub mod native;
pub mod runtime;
pub mod selftest;
pub mod tensor;
pub mod weights;

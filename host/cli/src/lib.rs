//! The `edgeplug` command: the only crate that knows the command line (clap) and the push
//! client. Everything it runs lives in the library crates:
//!
//! - `edgeplug-kernels`: tensors and native SIMD kernels (no wasmtime, no tract, no I/O).
//! - `edgeplug-models`: whole ONNX models (native backend, tract fallback) and weights.
//! - `edgeplug-bundle`: `plugin.toml`, signed bundles, keys, the trust store, the plugin store.
//! - `edgeplug-runtime`: the wasmtime embedding, the model store, self-tests, conformance.
//! - `edgeplug-gateway`: `edgeplug serve` over HTTP, its registry and hot swap.
//! - `edgeplug-fleet`: `edgeplug publish`, `edgeplug fleet status` and the gateway's fleet
//!   agent (OCI registry, MQTT broker, signed notices).
//! - `edgeplug-mqtt`: the MQTT client side the fleet and the triggers share.
//! - `edgeplug-triggers`: MQTT messages that run plugins, and the bridge to the center.
//!
//! See ARCHITECTURE.md at the repository root for the invariants and how `cargo tree`
//! proves them.

pub mod cli;
pub mod cli_aggregate;
pub mod cli_bench;
pub mod cli_bridge;
pub mod cli_build;
pub mod cli_bundle;
pub mod cli_conformance;
pub mod cli_fleet;
pub mod cli_new;
pub mod cli_publish;
pub mod cli_quantize;
pub mod cli_rollout;
pub mod cli_selftest;
pub mod cli_serve;
pub mod cli_split;
pub mod cli_token;
pub mod client;

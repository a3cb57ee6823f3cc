//! One integration-test binary (one link, many modules).

mod access;
mod architecture;
mod author;
mod canary;
mod classifier;
mod clients;
mod conformance;
mod digits;
mod escalation;
mod federated;
mod fleet;
mod forecaster;
mod gateway;
mod grpc;
mod hardening;
mod host_ops;
mod isolation;
mod learning;
mod lifecycle;
mod models;
mod rollout;
mod runtime;
mod split;
mod train;
mod triggers;
mod wasi_nn;

//! Training a classifier head on the gateway (issue 16's host side), knowing nothing of WIT:
//! a [`Head`] (dense, or dense-ReLU-dense) over feature vectors a plugin computes, softmax
//! cross-entropy, its gradient by two GEMMs per layer on the host kernels, and an
//! [`Optimizer`] (SGD, momentum, Adam, AdamW; optional global-norm gradient clipping).
//!
//! Invariants:
//! - A step whose gradient or result is not finite is refused ([`TrainError::NonFinite`]) and
//!   changes nothing: neither the weights nor the optimizer's state.
//! - The same seed and the same samples give bit-identical weights: initialization uses
//!   [`rng::SplitMix64`] (not a library generator whose stream may change between versions),
//!   and every product runs single-threaded in a fixed order.
//! - A checkpoint ([`checkpoint`]) is written crash-safe and signed with the device key by
//!   the bundle crate's signing code; one that does not verify is never loaded.
//! - Everything a head holds (weights, gradients, optimizer state) is counted by
//!   `byte_size` methods, so the caller can charge it to a plugin's host-memory limit.

pub mod checkpoint;
pub mod fedavg;
pub mod head;
pub mod optim;
pub mod rng;
pub mod samples;

pub use head::{Evaluation, Grads, Head, HeadSpec};
pub use optim::{Optimizer, OptimizerConfig, OptimizerKind, StepReport};

/// Why training refused to do something.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrainError {
    /// Shapes or sizes that do not fit the head (the caller's mistake).
    #[error("{0}")]
    Shape(String),
    /// A label outside the head's classes.
    #[error("label {label} at row {row} is not one of the head's {classes} classes")]
    Label {
        row: usize,
        label: usize,
        classes: usize,
    },
    /// A NaN or infinity in the input, the gradient or the updated weights: the step is
    /// refused and nothing changed.
    #[error("{0} is not finite: refused, the head is unchanged")]
    NonFinite(&'static str),
    /// An optimizer setting out of range (a negative learning rate, a beta outside [0, 1)).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tensor(#[from] edgeplug_kernels::TensorError),
}

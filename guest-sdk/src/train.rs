//! Training a classifier head in the host: a dense (or dense-ReLU-dense) head over feature
//! vectors, trained with softmax cross-entropy. Weights, gradients and optimizer state live
//! in the host and count against the plugin's host tensor memory.
//!
//! ```ignore
//! use edgeplug_sdk::train::{Head, HeadSpec, Optimizer};
//! let mut head = Head::create(HeadSpec::dense(64, 10), Optimizer::adam(1e-2))?;
//! let report = head.step(&features, &labels)?;   // features: [batch, 64] float32
//! ```

use crate::Error;
use crate::Tensor;
use crate::bindings::edgeplug::plugin::train;

pub use train::{Evaluation, HeadSpec, OptimizerKind, StepReport};

/// An optimizer's settings (PyTorch's definitions and defaults).
pub type Optimizer = train::Optimizer;

impl HeadSpec {
    /// One dense layer, `features` in, `classes` out, seed 0.
    pub fn dense(features: u32, classes: u32) -> HeadSpec {
        HeadSpec {
            features,
            classes,
            hidden: None,
            seed: 0,
        }
    }

    /// Dense, ReLU, dense, with a hidden layer of `hidden`.
    pub fn mlp(features: u32, hidden: u32, classes: u32) -> HeadSpec {
        HeadSpec {
            hidden: Some(hidden),
            ..HeadSpec::dense(features, classes)
        }
    }

    /// The same head initialized from another seed.
    pub fn seed(self, seed: u64) -> HeadSpec {
        HeadSpec { seed, ..self }
    }
}

impl Optimizer {
    fn of(kind: OptimizerKind, learning_rate: f32) -> Optimizer {
        Optimizer {
            kind,
            learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
            clip_norm: None,
        }
    }

    /// Plain gradient descent.
    pub fn sgd(learning_rate: f32) -> Optimizer {
        Optimizer::of(OptimizerKind::Sgd, learning_rate)
    }

    /// Momentum 0.9 (set `beta1` to change it).
    pub fn momentum(learning_rate: f32) -> Optimizer {
        Optimizer::of(OptimizerKind::Momentum, learning_rate)
    }

    /// Adam, β1 0.9, β2 0.999, ε 1e-8.
    pub fn adam(learning_rate: f32) -> Optimizer {
        Optimizer::of(OptimizerKind::Adam, learning_rate)
    }

    /// Weight decay 0.01 (set `weight_decay` to change it).
    pub fn adamw(learning_rate: f32) -> Optimizer {
        Optimizer::of(OptimizerKind::Adamw, learning_rate)
    }

    /// Clips the gradients to this global L2 norm.
    pub fn clip_norm(self, norm: f32) -> Optimizer {
        Optimizer {
            clip_norm: Some(norm),
            ..self
        }
    }
}

/// A head being trained in the host.
#[derive(Debug)]
pub struct Head(pub(crate) train::Head);

impl Head {
    /// A new head and its optimizer; `invalid-argument` for settings out of range.
    pub fn create(spec: HeadSpec, optimizer: Optimizer) -> Result<Head, Error> {
        Ok(Head(train::Head::create(spec, optimizer)?))
    }

    /// Logits `[batch, classes]` of features `[batch, features]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor, Error> {
        Ok(Tensor(self.0.forward(&features.0)?))
    }

    /// One optimizer step on a labeled batch; a step that is not finite is refused and
    /// changes nothing.
    pub fn step(&mut self, features: &Tensor, labels: &[u32]) -> Result<StepReport, Error> {
        self.0.step(&features.0, labels)
    }

    /// Loss and correct answers on a labeled batch.
    pub fn evaluate(&self, features: &Tensor, labels: &[u32]) -> Result<Evaluation, Error> {
        self.0.evaluate(&features.0, labels)
    }

    /// The weights, layer by layer: weight `[inputs, outputs]`, then bias `[outputs]`.
    pub fn weights(&self) -> Result<Vec<Tensor>, Error> {
        Ok(self.0.weights()?.into_iter().map(Tensor).collect())
    }

    /// Replaces the weights with `weights`, in the order and shapes [`Head::weights`] gives
    /// them (weight `[inputs, outputs]`, then bias `[outputs]`, layer by layer), and resets the
    /// optimizer's state (WIT 0.1.4). `shape-mismatch` for a list that does not fit the head,
    /// `invalid-argument` for a value that is not finite; either leaves the head as it was.
    ///
    /// A model's own dense layer is usually stored the other way round (ONNX `Gemm` with
    /// `transB`, PyTorch's `Linear`: `[outputs, inputs]`): [`Tensor::transpose`] it first.
    pub fn load(&mut self, weights: &[Tensor]) -> Result<(), Error> {
        let handles: Vec<&crate::bindings::edgeplug::plugin::types::Tensor> =
            weights.iter().map(|w| &w.0).collect();
        self.0.load(&handles)
    }
}

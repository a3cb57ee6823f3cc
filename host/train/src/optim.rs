//! Optimizers, as PyTorch defines them (so a numpy reference is a few lines):
//! - SGD: `p -= lr·g`
//! - momentum: `v = β·v + g; p -= lr·v`
//! - Adam: `m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²;
//!   p -= lr·(m / (1-β1ᵗ)) / (sqrt(v / (1-β2ᵗ)) + ε)`
//! - AdamW: `p -= lr·λ·p`, then Adam's step.
//!
//! With `clip_norm`, the gradients are first scaled by `min(1, clip / (‖g‖ + 1e-6))`, ‖g‖
//! their global L2 norm (PyTorch's `clip_grad_norm_`). A step writes the new weights and
//! state to new buffers in one pass and commits them only if every value is finite.

use edgeplug_kernels::Tensor;

use super::TrainError;
use super::head::{Grads, Head};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    Sgd,
    Momentum {
        beta: f32,
    },
    Adam {
        beta1: f32,
        beta2: f32,
        eps: f32,
    },
    AdamW {
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub lr: f32,
    pub clip_norm: Option<f32>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The gradients' global L2 norm before clipping.
    pub grad_norm: f32,
    /// Whether clipping scaled them down.
    pub clipped: bool,
}

/// An optimizer and its state for one head.
#[derive(Debug, Clone)]
pub struct Optimizer {
    config: OptimizerConfig,
    steps: u32,
    /// Momentum's velocity, or Adam's first moment.
    first: Vec<Vec<f32>>,
    /// Adam's second moment.
    second: Vec<Vec<f32>>,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig) -> Result<Optimizer, TrainError> {
        let bad = |what: &str| Err(TrainError::Config(what.to_string()));
        if !(config.lr.is_finite() && config.lr > 0.0) {
            return bad("the learning rate must be a positive number");
        }
        if config
            .clip_norm
            .is_some_and(|c| !(c.is_finite() && c > 0.0))
        {
            return bad("clip_norm must be a positive number");
        }
        let beta_ok = |b: f32| (0.0..1.0).contains(&b);
        match config.kind {
            OptimizerKind::Sgd => {}
            OptimizerKind::Momentum { beta } if beta_ok(beta) => {}
            OptimizerKind::Adam { beta1, beta2, eps }
                if beta_ok(beta1) && beta_ok(beta2) && eps > 0.0 => {}
            OptimizerKind::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } if beta_ok(beta1) && beta_ok(beta2) && eps > 0.0 && weight_decay >= 0.0 => {}
            _ => return bad("betas must lie in [0, 1), eps and weight decay be positive"),
        }
        Ok(Optimizer {
            config,
            steps: 0,
            first: Vec::new(),
            second: Vec::new(),
        })
    }

    pub fn config(&self) -> OptimizerConfig {
        self.config
    }

    /// Steps taken.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// Copies of the weights its state holds: none for SGD, the velocity for momentum, two
    /// moments for Adam and AdamW.
    pub fn state_copies(&self) -> usize {
        match self.config.kind {
            OptimizerKind::Sgd => 0,
            OptimizerKind::Momentum { .. } => 1,
            OptimizerKind::Adam { .. } | OptimizerKind::AdamW { .. } => 2,
        }
    }

    /// Bytes of the optimizer's state.
    pub fn byte_size(&self) -> usize {
        self.first
            .iter()
            .chain(&self.second)
            .map(|v| v.len() * 4)
            .sum()
    }

    /// Applies `grads` to `head`, or refuses (changing nothing) if anything is not finite.
    pub fn step(&mut self, head: &mut Head, grads: &Grads) -> Result<StepReport, TrainError> {
        let params = head.params();
        if grads.0.len() != params.len()
            || grads.0.iter().zip(params).any(|(g, p)| g.len() != p.len())
        {
            return Err(TrainError::Shape(
                "the gradients do not fit this head's parameters".into(),
            ));
        }
        let norm_sq: f64 = grads
            .0
            .iter()
            .flatten()
            .map(|g| f64::from(*g) * f64::from(*g))
            .sum();
        let grad_norm = norm_sq.sqrt() as f32;
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite("the gradient"));
        }
        let scale = match self.config.clip_norm {
            Some(clip) => (clip / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        let lr = self.config.lr;
        let t = self.steps + 1;
        // The new weights and state are written to new buffers in one pass over the old ones
        // (no copy first), and replace them only once all of it is finite.
        let mut updated = Vec::with_capacity(params.len());
        let mut first = Vec::new();
        let mut second = Vec::new();
        for (i, (param, grad)) in params.iter().zip(&grads.0).enumerate() {
            let old = param.as_f32()?;
            let values: Vec<f32> = match self.config.kind {
                OptimizerKind::Sgd => old
                    .iter()
                    .zip(grad)
                    .map(|(p, g)| p - lr * (g * scale))
                    .collect(),
                OptimizerKind::Momentum { beta } => {
                    let (values, m) = momentum(old, grad, scale, self.first.get(i), beta, lr);
                    first.push(m);
                    values
                }
                OptimizerKind::Adam { beta1, beta2, eps }
                | OptimizerKind::AdamW {
                    beta1, beta2, eps, ..
                } => {
                    let weight_decay = match self.config.kind {
                        OptimizerKind::AdamW { weight_decay, .. } => weight_decay,
                        _ => 0.0,
                    };
                    let (values, m, v) = adam(
                        old,
                        grad,
                        scale,
                        self.first.get(i),
                        self.second.get(i),
                        weight_decay,
                        (lr, beta1, beta2, eps),
                        t,
                    );
                    first.push(m);
                    second.push(v);
                    values
                }
            };
            if values.iter().any(|x| !x.is_finite()) {
                return Err(TrainError::NonFinite("an updated weight"));
            }
            updated.push(Tensor::from_f32(param.shape().to_vec(), values)?);
        }
        head.set_params(updated);
        self.first = first;
        self.second = second;
        self.steps = t;
        Ok(StepReport {
            grad_norm,
            clipped: scale < 1.0,
        })
    }
}

/// One momentum step of one parameter: its new values and velocity.
fn momentum(
    old: &[f32],
    grad: &[f32],
    scale: f32,
    m_old: Option<&Vec<f32>>,
    beta: f32,
    lr: f32,
) -> (Vec<f32>, Vec<f32>) {
    let zeros;
    let m_prev: &[f32] = match m_old {
        Some(m) => m,
        None => {
            zeros = vec![0.0; old.len()];
            &zeros
        }
    };
    let (mut values, mut m) = (vec![0.0; old.len()], vec![0.0; old.len()]);
    for ((((out, p), g), mo), mn) in values
        .iter_mut()
        .zip(old)
        .zip(grad)
        .zip(m_prev)
        .zip(m.iter_mut())
    {
        *mn = beta * mo + g * scale;
        *out = p - lr * *mn;
    }
    (values, m)
}

/// One Adam step of one parameter: its new values, first and second moments. With a
/// `weight_decay`, the decoupled decay of AdamW comes first.
#[allow(clippy::too_many_arguments)]
fn adam(
    old: &[f32],
    grad: &[f32],
    scale: f32,
    m_old: Option<&Vec<f32>>,
    v_old: Option<&Vec<f32>>,
    weight_decay: f32,
    (lr, beta1, beta2, eps): (f32, f32, f32, f32),
    t: u32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let t = t.min(i32::MAX as u32) as i32;
    let correction1 = 1.0 - beta1.powi(t);
    let correction2 = 1.0 - beta2.powi(t);
    let n = old.len();
    let zeros;
    let (m_prev, v_prev): (&[f32], &[f32]) = match (m_old, v_old) {
        (Some(m), Some(v)) => (m, v),
        _ => {
            zeros = vec![0.0; n];
            (&zeros, &zeros)
        }
    };
    let (mut values, mut m, mut v) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    // Zipped slices, no indexing: the loop vectorizes.
    for ((((((out, p), g), mo), vo), mn), vn) in values
        .iter_mut()
        .zip(old)
        .zip(grad)
        .zip(m_prev)
        .zip(v_prev)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        let p = p - lr * weight_decay * p;
        let g = g * scale;
        *mn = beta1 * mo + (1.0 - beta1) * g;
        *vn = beta2 * vo + (1.0 - beta2) * g * g;
        *out = p - lr * (*mn / correction1) / ((*vn / correction2).sqrt() + eps);
    }
    (values, m, v)
}

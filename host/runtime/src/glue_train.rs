//! The `train` interface: thin glue that checks, converts and delegates to
//! [`edgeplug_train`], which knows nothing of WIT. A head's weights, the gradients of a step
//! and the optimizer's state are host memory charged to the request's tensor budget (exceeding
//! it is a trap naming the limit, like any host tensor); a step or setting the guest got wrong
//! is a WIT error.

use std::sync::Arc;

use wasmtime::component::Resource;

use super::glue::train;
use super::glue::{HostError, HostResult, WitErrorCode};
use super::state::StoreState;
use edgeplug_kernels::Tensor;
use edgeplug_train::{Head, HeadSpec, Optimizer, OptimizerConfig, OptimizerKind, TrainError};

/// A head the guest created (or the live head it was handed), with its optimizer and what it
/// is charged.
pub struct TrainHead {
    /// Shared with every request while it is the live head; a step or a load on a shared head
    /// changes a private copy (`Arc::make_mut`).
    head: Arc<Head>,
    optimizer: Optimizer,
    /// Bytes charged to the tensor budget: weights plus the optimizer state it will hold.
    charged: usize,
}

impl TrainHead {
    /// The live head as a guest sees it: its weights shared, charged once more to the
    /// request (a step would copy them), with plain SGD at learning rate 0.01 should the
    /// guest step it (a plugin that trains loads the weights into a head of its own).
    pub(crate) fn shared(head: Arc<Head>) -> TrainHead {
        let optimizer = Optimizer::new(OptimizerConfig {
            kind: OptimizerKind::Sgd,
            lr: 0.01,
            clip_norm: None,
        })
        .expect("SGD at 0.01 is a valid optimizer");
        TrainHead {
            charged: head.byte_size(),
            head,
            optimizer,
        }
    }

    pub(crate) fn charged(&self) -> usize {
        self.charged
    }

    pub(crate) fn into_head(self) -> Arc<Head> {
        self.head
    }
}

impl From<TrainError> for HostError {
    fn from(e: TrainError) -> HostError {
        match e {
            TrainError::Tensor(e) => e.into(),
            TrainError::Shape(_) => HostError::guest(WitErrorCode::ShapeMismatch, e.to_string()),
            TrainError::Label { .. } | TrainError::NonFinite(_) | TrainError::Config(_) => {
                HostError::guest(WitErrorCode::InvalidArgument, e.to_string())
            }
        }
    }
}

fn optimizer_config(o: &train::Optimizer) -> OptimizerConfig {
    let kind = match o.kind {
        train::OptimizerKind::Sgd => OptimizerKind::Sgd,
        train::OptimizerKind::Momentum => OptimizerKind::Momentum { beta: o.beta1 },
        train::OptimizerKind::Adam => OptimizerKind::Adam {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.epsilon,
        },
        train::OptimizerKind::Adamw => OptimizerKind::AdamW {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.epsilon,
            weight_decay: o.weight_decay,
        },
    };
    OptimizerConfig {
        kind,
        lr: o.learning_rate,
        clip_norm: o.clip_norm,
    }
}

fn class_indices(labels: &[u32]) -> Vec<usize> {
    labels.iter().map(|&l| l as usize).collect()
}

impl train::Host for StoreState {}

impl train::HostHead for StoreState {
    fn create(
        &mut self,
        spec: train::HeadSpec,
        optimizer: train::Optimizer,
    ) -> HostResult<Resource<TrainHead>> {
        let seed = spec.seed;
        let spec = HeadSpec {
            features: spec.features as usize,
            classes: spec.classes as usize,
            hidden: spec.hidden.map(|h| h as usize),
        };
        // Charge the head (and the optimizer state it will hold) before allocating it, so a
        // head larger than the budget is refused without being built.
        let weights: usize = spec
            .param_shapes()
            .iter()
            .map(|s| s.iter().product::<usize>().saturating_mul(4))
            .sum();
        let optimizer = Optimizer::new(optimizer_config(&optimizer))?;
        let charged = weights.saturating_mul(1 + optimizer.state_copies());
        self.charge_tensor_bytes(charged)?;
        let (head, optimizer) = match Head::new(spec, seed) {
            Ok(head) => (head, optimizer),
            Err(e) => {
                self.release_tensor_bytes(charged);
                return Err(e.into());
            }
        };
        Ok(self.table.push(TrainHead {
            head: Arc::new(head),
            optimizer,
            charged,
        })?)
    }

    fn forward(
        &mut self,
        head: Resource<TrainHead>,
        features: Resource<Tensor>,
    ) -> HostResult<Resource<Tensor>> {
        let x = self.table.get(&features)?;
        let logits = self.table.get(&head)?.head.forward(x)?;
        self.push_tensor(logits)
    }

    fn step(
        &mut self,
        head: Resource<TrainHead>,
        features: Resource<Tensor>,
        labels: Vec<u32>,
    ) -> HostResult<train::StepReport> {
        let labels = class_indices(&labels);
        let x = self.table.get(&features)?.clone();
        let trained = self.table.get(&head)?;
        let (loss, grads) = trained.head.loss_and_grad(&x, &labels)?;
        // Held for the step only: the gradients, and the new weights and optimizer state,
        // which the step builds beside the old ones and swaps in only once all of it is
        // finite (so a step's peak is about twice what the head holds between steps, as
        // `cargo bench -p edgeplug-train --bench head_step` measures).
        let transient = grads.byte_size() + trained.charged;
        self.charge_tensor_bytes(transient)?;
        if let Some(job) = &mut self.job {
            if job.steps_left == 0 {
                return Err(HostError::guest(
                    WitErrorCode::ResourceExhausted,
                    format!("the job's budget of {} steps is spent", job.max_steps),
                ));
            }
            job.steps_left -= 1;
        }
        let trained = self.table.get_mut(&head)?;
        let result = trained
            .optimizer
            .step(Arc::make_mut(&mut trained.head), &grads);
        self.release_tensor_bytes(transient);
        let report = result?;
        Ok(train::StepReport {
            loss,
            grad_norm: report.grad_norm,
            clipped: report.clipped,
        })
    }

    fn evaluate(
        &mut self,
        head: Resource<TrainHead>,
        features: Resource<Tensor>,
        labels: Vec<u32>,
    ) -> HostResult<train::Evaluation> {
        let labels = class_indices(&labels);
        let x = self.table.get(&features)?;
        let e = self.table.get(&head)?.head.evaluate(x, &labels)?;
        Ok(train::Evaluation {
            loss: e.loss,
            correct: e.correct as u32,
            total: e.total as u32,
        })
    }

    fn load(
        &mut self,
        head: Resource<TrainHead>,
        weights: Vec<Resource<Tensor>>,
    ) -> HostResult<()> {
        let spec = self.table.get(&head)?.head.spec();
        let mut params = Vec::with_capacity(weights.len());
        for (i, w) in weights.iter().enumerate() {
            let t = self.table.get(w)?;
            let expected = spec.param_shapes();
            if expected.get(i).map(Vec::as_slice) != Some(t.shape()) {
                return Err(HostError::guest(
                    WitErrorCode::ShapeMismatch,
                    format!(
                        "weight {i} has shape {:?}; the head's parameters are {expected:?}",
                        t.shape()
                    ),
                ));
            }
            params.push(t.as_f32().map_err(HostError::from)?.to_vec());
        }
        let loaded = Head::from_params(spec, params)?;
        let trained = self.table.get_mut(&head)?;
        trained.head = Arc::new(loaded);
        trained.optimizer = Optimizer::new(trained.optimizer.config())?;
        Ok(())
    }

    fn weights(&mut self, head: Resource<TrainHead>) -> HostResult<Vec<Resource<Tensor>>> {
        let params = self.table.get(&head)?.head.params().to_vec();
        params.into_iter().map(|p| self.push_tensor(p)).collect()
    }

    fn drop(&mut self, head: Resource<TrainHead>) -> wasmtime::Result<()> {
        let head = self.table.delete(head)?;
        self.release_tensor_bytes(head.charged);
        Ok(())
    }
}

//! The `learn` import and the `learner` export (WIT 0.1.4): thin glue between a learning
//! plugin and [`crate::learning`], which holds what a job or a request sees (the live head, a
//! job's start weights and samples) and knows nothing of WIT.
//!
//! The bindings of world `learning-plugin` reuse every interface [`crate::glue`] generated
//! for world `plugin`, so a tensor or a head is the same resource in both.

use std::sync::Arc;

use wasmtime::component::Resource;

use super::glue::{HostError, HostResult};
use super::glue_train::TrainHead;
use super::state::StoreState;
use edgeplug_kernels::Tensor;

wasmtime::component::bindgen!({
    world: "learning-plugin",
    path: "../../wit",
    with: {
        "edgeplug:plugin/types": super::glue::edgeplug::plugin::types,
        "edgeplug:plugin/ops": super::glue::edgeplug::plugin::ops,
        "edgeplug:plugin/model": super::glue::edgeplug::plugin::model,
        "edgeplug:plugin/log": super::glue::edgeplug::plugin::log,
        "edgeplug:plugin/train": super::glue::edgeplug::plugin::train,
        "edgeplug:plugin/upstream": super::glue::edgeplug::plugin::upstream,
    },
    imports: { default: trappable },
    trappable_error_type: {
        "edgeplug:plugin/types.error" => HostError,
    },
});

pub(crate) use edgeplug::plugin::learn;
pub(crate) use exports::edgeplug::plugin::learner;

impl learn::Host for StoreState {
    fn live_head(&mut self) -> wasmtime::Result<Option<Resource<TrainHead>>> {
        match self.live_head.clone() {
            Some(head) => Ok(Some(self.push_head(TrainHead::shared(head)).map_err(trap)?)),
            None => Ok(None),
        }
    }

    fn start_weights(&mut self) -> wasmtime::Result<Option<Vec<Resource<Tensor>>>> {
        let Some(start) = self.job.as_ref().and_then(|job| job.start.clone()) else {
            return Ok(None);
        };
        let weights = start
            .params()
            .iter()
            .map(|p| self.push_tensor(p.clone()).map_err(trap))
            .collect::<wasmtime::Result<Vec<_>>>()?;
        Ok(Some(weights))
    }

    fn sample_count(&mut self) -> wasmtime::Result<u32> {
        Ok(self
            .job
            .as_ref()
            .map_or(0, |job| job.samples.len().min(u32::MAX as usize) as u32))
    }

    fn get_sample(&mut self, index: u32) -> wasmtime::Result<Option<learn::Sample>> {
        let Some(job) = &self.job else {
            return Ok(None);
        };
        let Some(sample) = job.samples.get(index as usize) else {
            return Ok(None);
        };
        // The sample's bytes are copied into the guest; they count against its linear memory,
        // which bounds a job that holds too many at once.
        Ok(Some(learn::Sample {
            label: sample.label,
            content_type: sample.content_type.clone(),
            input: sample.input.clone(),
        }))
    }
}

/// The `learn` functions return no WIT error: whatever fails in them (an exhausted tensor
/// budget) ends the call as a trap.
fn trap(e: HostError) -> wasmtime::Error {
    match e {
        HostError::Trap(e) => e,
        HostError::Guest(e) => wasmtime::Error::msg(e.message),
    }
}

impl StoreState {
    fn push_head(&mut self, head: TrainHead) -> HostResult<Resource<TrainHead>> {
        self.charge_tensor_bytes(head.charged())
            .map_err(HostError::Trap)?;
        Ok(self.table.push(head)?)
    }
}

/// The head a guest returned from `finetune`, taken out of its store.
pub(crate) fn take_head(
    state: &mut StoreState,
    head: Resource<TrainHead>,
) -> wasmtime::Result<edgeplug_train::Head> {
    let trained = state.table.delete(head)?;
    state.release_tensor_bytes(trained.charged());
    Ok(Arc::unwrap_or_clone(trained.into_head()))
}

//! The `upstream` interface (WIT 0.1.2): thin glue that checks the grant and the arguments,
//! converts, and delegates to the embedder's [`Upstreams`](crate::upstream::Upstreams). What
//! the guest got wrong (an ungranted name, a bad model name) and what the center could not do
//! (unavailable, rejected) are the interface's own errors; the answer's tensors are charged to
//! the request's tensor budget like any host tensor (exceeding it is a trap naming the limit).

use std::collections::BTreeSet;
use std::time::Instant;

use wasmtime::component::Resource;

use super::glue::HostError;
use super::glue::edgeplug::plugin::upstream::{
    self, NamedOutput, UpstreamError as WitUpstreamError, UpstreamErrorCode,
};
use super::state::StoreState;
use super::upstream::{UpstreamCall, UpstreamError, answer_reserve, is_model_name};
use edgeplug_kernels::Tensor;

fn refused(code: UpstreamErrorCode, message: impl Into<String>) -> WitUpstreamError {
    WitUpstreamError {
        code,
        message: message.into(),
    }
}

impl upstream::Host for StoreState {
    fn infer(
        &mut self,
        name: String,
        model: String,
        input_names: Vec<String>,
        inputs: Vec<Resource<Tensor>>,
    ) -> wasmtime::Result<Result<Vec<NamedOutput>, WitUpstreamError>> {
        let plugin = self.plugin();
        if !plugin.upstream_granted(&name) {
            return Ok(Err(refused(
                UpstreamErrorCode::NotPermitted,
                format!(
                    "the manifest of {} does not grant upstream {name:?} ([grants] upstream)",
                    plugin.name()
                ),
            )));
        }
        if !is_model_name(&model) {
            return Ok(Err(refused(
                UpstreamErrorCode::InvalidArgument,
                format!("model name {model:?} must be letters, digits, '-', '_' or '.'"),
            )));
        }
        if input_names.len() != inputs.len() {
            return Ok(Err(refused(
                UpstreamErrorCode::InvalidArgument,
                format!(
                    "{} input names for {} tensors",
                    input_names.len(),
                    inputs.len()
                ),
            )));
        }
        let mut seen = BTreeSet::new();
        if let Some(twice) = input_names.iter().find(|n| !seen.insert(n.as_str())) {
            return Ok(Err(refused(
                UpstreamErrorCode::InvalidArgument,
                format!("input {twice:?} is named twice"),
            )));
        }
        let mut tensors = Vec::with_capacity(inputs.len());
        for (input_name, handle) in input_names.into_iter().zip(&inputs) {
            // The data is shared (an `Arc`), not copied.
            tensors.push((input_name, self.table.get(handle)?.clone()));
        }
        let Some(upstreams) = self.upstreams.clone() else {
            self.escalation_failed = true;
            return Ok(Err(refused(
                UpstreamErrorCode::Unavailable,
                format!("this host has no upstream {name:?}"),
            )));
        };
        let Some(deadline) = self.deadline else {
            return Err(wasmtime::Error::msg("an upstream call outside a request"));
        };
        let time_left = deadline
            .at
            .saturating_duration_since(Instant::now())
            .saturating_sub(answer_reserve(deadline.length));
        if time_left.is_zero() {
            self.escalation_failed = true;
            return Ok(Err(refused(
                UpstreamErrorCode::Unavailable,
                "no time left before the request's deadline",
            )));
        }
        let call = UpstreamCall {
            plugin: self.plugin().name().to_string(),
            upstream: name,
            model,
            inputs: tensors,
            time_left,
            max_bytes: self.tensor_bytes_left(),
        };
        // Blocked on the network, the request's core is idle: a model run may borrow it.
        let answer = {
            let _waiting = edgeplug_models::native::parallel::waiting();
            upstreams.infer(call)
        };
        let outputs = match answer {
            Ok(outputs) => outputs,
            Err(e) => {
                // The plugin answers without the center: its answer is degraded.
                self.escalation_failed = true;
                let code = match e {
                    UpstreamError::Unavailable(_) => UpstreamErrorCode::Unavailable,
                    UpstreamError::Rejected(_) => UpstreamErrorCode::Rejected,
                };
                return Ok(Err(refused(code, e.to_string())));
            }
        };
        let mut named = Vec::with_capacity(outputs.len());
        for (name, tensor) in outputs {
            let tensor = match self.push_tensor(tensor) {
                Ok(tensor) => tensor,
                Err(HostError::Trap(e)) => return Err(e),
                Err(HostError::Guest(e)) => return Err(wasmtime::Error::msg(e.message)),
            };
            named.push(NamedOutput { name, tensor });
        }
        Ok(Ok(named))
    }
}

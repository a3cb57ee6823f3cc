//! Learning plugins, the runtime's side (issue 16): which head is live for a plugin, and a
//! session on one instance of a learning plugin in which the gateway computes features and
//! runs `finetune` jobs. The gateway decides when a job runs and whether its head goes live;
//! this module only runs what it is asked to, within the budget it is given.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::Instance;

use super::glue_learn::{learner, take_head};
use super::state::StoreState;
use super::{InferRequest, InferResponse, InvokeError, LoadedPlugin, deadline_ticks};
use edgeplug_kernels::Tensor;
use edgeplug_train::Head;
pub use edgeplug_train::samples::Sample;

/// Each learning plugin's live head by plugin name, shared by every loaded version of it and
/// read at the start of each request, so a new head serves the next request without a reload.
#[derive(Debug, Default)]
pub struct LiveHeads(RwLock<HashMap<String, Arc<Head>>>);

impl LiveHeads {
    /// Makes `head` the live head of `plugin` (`None`: it answers with the head it ships).
    pub fn set(&self, plugin: &str, head: Option<Arc<Head>>) {
        let mut heads = self.0.write().unwrap_or_else(|e| e.into_inner());
        match head {
            Some(head) => heads.insert(plugin.to_string(), head),
            None => heads.remove(plugin),
        };
    }

    pub fn get(&self, plugin: &str) -> Option<Arc<Head>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(plugin)
            .cloned()
    }
}

/// What a running `finetune` job sees.
pub(crate) struct JobState {
    pub(crate) start: Option<Arc<Head>>,
    pub(crate) samples: Arc<[Sample]>,
    pub(crate) max_steps: u32,
    pub(crate) steps_left: u32,
}

/// One `finetune` job.
#[derive(Clone)]
pub struct Job {
    /// The weights to start from; `None`: the head the plugin ships.
    pub start: Option<Arc<Head>>,
    /// The training samples (the gateway keeps its held-out part back).
    pub samples: Arc<[Sample]>,
    /// The most optimizer steps the job may take.
    pub max_steps: u32,
    pub seed: u64,
}

/// What a job gave back.
#[derive(Debug)]
pub struct JobOutcome {
    pub head: Head,
    /// Optimizer steps it took.
    pub steps: u32,
}

/// The budget of a [`LearnSession`]: its wall time (all calls together) and the host tensor
/// memory it may hold at once (the head, its gradients and optimizer state, features).
#[derive(Debug, Clone, Copy)]
pub struct SessionBudget {
    pub wall: Duration,
    pub tensor_bytes: usize,
}

/// One instance of a learning plugin, for a gate's feature extraction or a job. Not kept
/// for requests afterwards.
pub struct LearnSession<'a> {
    plugin: &'a LoadedPlugin,
    store: Store<StoreState>,
    learner: learner::Guest,
}

impl LoadedPlugin {
    /// Whether this version exports `learner`.
    pub fn learns(&self) -> bool {
        self.learner.is_some()
    }

    /// A fresh instance of this learning plugin for features and jobs, within `budget`.
    pub fn learn_session(&self, budget: SessionBudget) -> Result<LearnSession<'_>, InvokeError> {
        let (Some(indices), super::Entry::Handler(pre)) = (&self.learner, &self.entry) else {
            return Err(InvokeError::BrokenContract(format!(
                "plugin {} does not export learner (world learning-plugin)",
                self.info.name
            )));
        };
        let mut state = StoreState::new(self.shared.clone());
        state.set_tensor_budget(budget.tensor_bytes);
        state.live_head = self.live_heads.get(&self.info.name);
        let wall_ms = budget.wall.as_millis().min(u64::MAX as u128) as u64;
        let mut store = self.store_of(state, wall_ms);
        store.set_epoch_deadline(deadline_ticks(wall_ms));
        let instance: Instance = pre
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| self.classify(&store, e))?;
        let learner = indices
            .load(&mut store, &instance)
            .map_err(|e| self.classify(&store, e))?;
        Ok(LearnSession {
            plugin: self,
            store,
            learner,
        })
    }

    /// A request answered with `head` as the live head instead of the plugin's live one (the
    /// gate's self-tests of a candidate), on a fresh instance that is not kept.
    pub fn infer_with_head(
        &self,
        request: InferRequest,
        head: Option<Arc<Head>>,
    ) -> Result<InferResponse, InvokeError> {
        self.run_request_with(request, self.shared.limits().deadline_ms, Some(head))
            .0
    }
}

impl LearnSession<'_> {
    /// The feature vector of one input, as the plugin computes it for its head.
    pub fn features(&mut self, content_type: &str, input: &[u8]) -> Result<Tensor, InvokeError> {
        let answer = self
            .learner
            .call_features(&mut self.store, content_type, input)
            .map_err(|e| self.plugin.classify(&self.store, e))?;
        let handle = answer.map_err(|e| InvokeError::Plugin {
            code: e.code,
            message: e.message,
        })?;
        self.store
            .data_mut()
            .take_tensor(handle)
            .map_err(|e| self.plugin.classify(&self.store, e))
    }

    /// Runs the plugin's `finetune` on `job` and takes the head it returns.
    pub fn finetune(&mut self, job: Job) -> Result<JobOutcome, InvokeError> {
        self.store.data_mut().job = Some(JobState {
            start: job.start,
            samples: job.samples,
            max_steps: job.max_steps,
            steps_left: job.max_steps,
        });
        let wit_job = learner::Job {
            max_steps: job.max_steps,
            seed: job.seed,
        };
        let answer = self
            .learner
            .call_finetune(&mut self.store, wit_job)
            .map_err(|e| self.plugin.classify(&self.store, e));
        let state = self.store.data_mut().job.take();
        let handle = answer?.map_err(|e| InvokeError::Plugin {
            code: e.code,
            message: e.message,
        })?;
        let steps = state.map_or(0, |s| s.max_steps - s.steps_left);
        let head = take_head(self.store.data_mut(), handle)
            .map_err(|e| self.plugin.classify(&self.store, e))?;
        Ok(JobOutcome { head, steps })
    }

    /// The most host tensor memory the session held at once.
    pub fn peak_tensor_bytes(&self) -> usize {
        self.store.data().peak_tensor_bytes
    }
}

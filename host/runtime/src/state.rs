//! Per-request store state: the resource table, the empty WASI context, and the budgets
//! that bound what one request may take from the host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::glue::{HostError, WitErrorCode};
use super::plugin::PluginShared;
use super::stderr::GuestStderr;
use edgeplug_kernels::{QTensor, Tensor};
use edgeplug_models::model::Model;

/// A model a plugin opened: the shared, optimized model of its plugin version.
pub struct OpenModel(pub Arc<Model>);

/// Which limit ended a request, recorded by the host before it traps so the caller can tell a
/// deadline from memory exhaustion from a plugin bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    LinearMemory { limit_bytes: usize },
    TensorMemory { limit_bytes: usize },
}

/// The host-side error that ends a request when a budget is exceeded.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} exceeded")]
pub struct LimitExceeded(pub LimitHit);

pub struct StoreState {
    pub(crate) table: ResourceTable,
    wasi: WasiCtx,
    plugin: Arc<PluginShared>,
    pub(crate) limiter: MemoryLimiter,
    tensor_bytes: usize,
    pub(crate) peak_tensor_bytes: usize,
    tensor_budget: usize,
    pub(crate) limit_hit: Option<LimitHit>,
    pub(crate) stderr: GuestStderr,
    /// Where escalations go; `None`: the embedder offers none, every upstream is unavailable.
    pub(crate) upstreams: Option<Arc<dyn crate::upstream::Upstreams>>,
    /// The running request's deadline, which bounds its escalations.
    pub(crate) deadline: Option<RequestDeadline>,
    /// An escalation of the running request failed (unavailable or rejected): an answer the
    /// plugin gives anyway is degraded.
    pub(crate) escalation_failed: bool,
    /// What `learn.live-head` gives: the plugin's live head (or, in the gate's self-tests, the
    /// candidate), set for each request.
    pub(crate) live_head: Option<Arc<edgeplug_train::Head>>,
    /// The running `finetune` job's start weights, samples and step budget; `None` outside a
    /// job.
    pub(crate) job: Option<crate::learning::JobState>,
}

/// When the running request's deadline passes, and how long it was.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestDeadline {
    pub(crate) at: Instant,
    pub(crate) length: Duration,
}

impl StoreState {
    pub fn new(plugin: Arc<PluginShared>) -> StoreState {
        let limits = plugin.limits();
        let stderr = GuestStderr::default();
        StoreState {
            table: ResourceTable::new(),
            // Grants nothing: no args, env, preopens, sockets, stdin or stdout. Rust's std
            // imports these interfaces, so they must be linked, but every call finds nothing to
            // use. Only stderr is kept, bounded, for the error report of a trap.
            wasi: WasiCtx::builder().stderr(stderr.clone()).build(),
            limiter: MemoryLimiter {
                max_bytes: limits.memory_bytes,
                peak_bytes: 0,
                exhausted: false,
            },
            tensor_bytes: 0,
            peak_tensor_bytes: 0,
            tensor_budget: limits.tensor_bytes,
            limit_hit: None,
            stderr,
            plugin,
            upstreams: None,
            deadline: None,
            escalation_failed: false,
            live_head: None,
            job: None,
        }
    }

    /// The state of one request to a WASI command: the body on stdin, `stdout` collecting the
    /// answer, the content type in the environment as `CONTENT_TYPE` (as CGI does), and the
    /// plugin's name as the program name. Still no files, sockets or other environment.
    pub fn for_command(
        plugin: Arc<PluginShared>,
        body: Vec<u8>,
        content_type: &str,
        stdout: wasmtime_wasi::p2::pipe::MemoryOutputPipe,
    ) -> StoreState {
        let mut state = StoreState::new(plugin);
        state.wasi = WasiCtx::builder()
            .stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(body))
            .stdout(stdout)
            .stderr(state.stderr.clone())
            .env("CONTENT_TYPE", content_type)
            .args(&[state.plugin.name()])
            .build();
        state
    }

    /// Starts another request on a kept instance: what the last one hit or wrote is
    /// forgotten, and its peaks restart from what the instance holds now (tensors the plugin
    /// kept stay charged to its budget).
    pub fn begin_request(&mut self) {
        self.escalation_failed = false;
        self.limit_hit = None;
        self.limiter.exhausted = false;
        self.peak_tensor_bytes = self.tensor_bytes;
        self.stderr.clear();
    }

    pub fn plugin(&self) -> &PluginShared {
        &self.plugin
    }

    /// Stores a new tensor for the guest, charging it to the request's tensor budget.
    pub fn push_tensor(&mut self, tensor: Tensor) -> Result<Resource<Tensor>, HostError> {
        self.charge_tensor_bytes(tensor.byte_size())
            .map_err(HostError::Trap)?;
        Ok(self.table.push(tensor)?)
    }

    /// Charges `size` bytes of host tensor memory to the request; past its budget, the
    /// request ends (the trap names the limit).
    pub(crate) fn charge_tensor_bytes(&mut self, size: usize) -> wasmtime::Result<()> {
        let total = self.tensor_bytes.saturating_add(size);
        if total > self.tensor_budget {
            let hit = LimitHit::TensorMemory {
                limit_bytes: self.tensor_budget,
            };
            self.limit_hit = Some(hit);
            return Err(wasmtime::Error::new(LimitExceeded(hit)));
        }
        self.tensor_bytes = total;
        self.peak_tensor_bytes = self.peak_tensor_bytes.max(total);
        Ok(())
    }

    /// Replaces the store's host tensor budget (a learning session has its own).
    pub(crate) fn set_tensor_budget(&mut self, bytes: usize) {
        self.tensor_budget = bytes;
    }

    /// Host tensor bytes the request may still take.
    pub(crate) fn tensor_bytes_left(&self) -> usize {
        self.tensor_budget.saturating_sub(self.tensor_bytes)
    }

    /// Gives back what [`StoreState::charge_tensor_bytes`] charged.
    pub(crate) fn release_tensor_bytes(&mut self, size: usize) {
        self.tensor_bytes = self.tensor_bytes.saturating_sub(size);
    }

    pub fn drop_tensor(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<()> {
        let tensor = self.table.delete(tensor)?;
        self.release_tensor_bytes(tensor.byte_size());
        Ok(())
    }

    /// Stores a new quantized tensor for the guest, charged to the same budget as a tensor.
    pub fn push_qtensor(&mut self, tensor: QTensor) -> Result<Resource<QTensor>, HostError> {
        self.charge_tensor_bytes(tensor.byte_size())
            .map_err(HostError::Trap)?;
        Ok(self.table.push(tensor)?)
    }

    pub fn drop_qtensor(&mut self, tensor: Resource<QTensor>) -> wasmtime::Result<()> {
        let tensor = self.table.delete(tensor)?;
        self.release_tensor_bytes(tensor.byte_size());
        Ok(())
    }

    /// Takes a tensor the guest handed back (a response tensor) out of the table.
    pub fn take_tensor(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<Tensor> {
        let tensor = self.table.delete(tensor)?;
        self.release_tensor_bytes(tensor.byte_size());
        Ok(tensor)
    }

    pub fn log_message(&self, level: super::glue::edgeplug::plugin::log::Level, message: &str) {
        use super::glue::edgeplug::plugin::log::Level;
        // A plugin must not flood the host's log with one call.
        const MAX: usize = 4096;
        let message = match message.char_indices().nth(MAX) {
            Some((cut, _)) => &message[..cut],
            None => message,
        };
        let (name, version) = (self.plugin.name(), self.plugin.version());
        match level {
            Level::Trace => tracing::trace!(plugin = name, %version, "{message}"),
            Level::Debug => tracing::debug!(plugin = name, %version, "{message}"),
            Level::Info => tracing::info!(plugin = name, %version, "{message}"),
            Level::Warn => tracing::warn!(plugin = name, %version, "{message}"),
            Level::Error => tracing::error!(plugin = name, %version, "{message}"),
        }
    }
}

impl From<edgeplug_models::model::ModelError> for HostError {
    fn from(e: edgeplug_models::model::ModelError) -> HostError {
        use edgeplug_models::model::ModelError;
        let code = match &e {
            ModelError::InputCount { .. } | ModelError::InputMismatch { .. } => {
                WitErrorCode::ShapeMismatch
            }
            ModelError::Load { .. } | ModelError::Run { .. } => WitErrorCode::Internal,
        };
        HostError::guest(code, e.to_string())
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps one instance's linear memory (and tables) and remembers that it did, so a guest's
/// out-of-memory abort is reported as an exhausted limit rather than a plugin bug.
pub struct MemoryLimiter {
    max_bytes: usize,
    /// The largest linear memory granted, for the conformance kit's limits report.
    pub(crate) peak_bytes: usize,
    pub(crate) exhausted: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exhausted = true;
            return Ok(false);
        }
        self.peak_bytes = self.peak_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        const MAX_TABLE_ELEMENTS: usize = 1 << 20;
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

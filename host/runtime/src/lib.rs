//! Runs plugins: one `Engine` and `Linker` per process, an `InstancePre` per loaded plugin
//! version, and a fresh `Store` per request, so no state leaks from one request to the next.

mod cache;
mod command_output;
pub mod conformance;
pub mod content_type;
mod error;
pub mod glue;
mod glue_learn;
mod glue_train;
mod glue_upstream;
pub mod learning;
pub mod model_store;
mod plugin;
pub mod selftest;
mod state;
mod stderr;
pub mod upstream;
pub mod wasi_nn;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

pub use cache::{CacheUsage, ComponentCache};
pub use error::{InvokeError, LoadError, Misconduct, PluginErrorCode};
pub use plugin::{EffectiveLimits, PluginFiles, PluginInfo, PluginShared};
pub use state::LimitHit;

use glue::{Plugin, PluginPre, handler};
use state::{LimitExceeded, StoreState};
use wasmtime_wasi::p2::bindings::sync::CommandPre;

use edgeplug_kernels::Tensor;
use edgeplug_models::model::TensorSpec;

/// How often the epoch advances; deadlines are rounded up to this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Interfaces a plugin may import. Rust's std needs the WASI ones; they are linked with an
/// empty context, so they grant nothing. Anything else is refused at load time.
const ALLOWED_IMPORTS: &[&str] = &[
    "edgeplug:plugin/",
    "wasi:io/",
    "wasi:cli/environment@",
    "wasi:cli/exit@",
    "wasi:cli/stdin@",
    "wasi:cli/stdout@",
    "wasi:cli/stderr@",
    "wasi:cli/terminal-",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:random/",
    "wasi:nn/",
];

/// Host-wide settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Caps every plugin's own limits.
    pub limit_caps: edgeplug_bundle::manifest::Limits,
    /// Instances that may exist at once across all plugins (pooling allocator slots).
    pub max_instances: u32,
    /// Where compiled components are cached; `None` keeps them in memory only.
    pub cache: ComponentCache,
    /// Loaded models shared across versions and plugins, and the operator's model directory.
    pub models: Arc<crate::model_store::ModelStore>,
    /// Compile a component's functions on every core (faster loads) or only on the calling
    /// thread (a gateway swapping versions under load).
    pub parallel_compilation: bool,
    /// Where plugins' escalations go (WIT `upstream`); `None`: every upstream a manifest
    /// grants is `unavailable`, so its plugins answer on their own, degraded.
    pub upstreams: Option<Arc<dyn upstream::Upstreams>>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            limit_caps: edgeplug_bundle::manifest::Limits {
                memory_mib: 512,
                deadline_ms: 30_000,
                concurrency: 64,
                tensor_memory_mib: 1024,
                max_request_mib: 64,
                max_response_mib: 64,
                requests_per_instance: 10_000,
            },
            max_instances: 128,
            cache: ComponentCache::disabled(),
            models: Arc::default(),
            parallel_compilation: true,
            upstreams: None,
        }
    }
}

/// The process-wide wasm runtime.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreState>,
    config: RuntimeConfig,
    ticker_stop: Arc<AtomicBool>,
    live_heads: Arc<learning::LiveHeads>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        tracing::info!(
            isa = edgeplug_kernels::fast::Isa::detect().name(),
            "host kernels ready"
        );
        let engine = match Engine::new(&engine_config(&config, true)) {
            Ok(engine) => engine,
            Err(e) => {
                // Pooling reserves address space up front; a host with a small
                // vm.overcommit or ulimit -v refuses it. On-demand allocation still works.
                tracing::warn!("pooling allocator unavailable ({e}); using on-demand allocation");
                Engine::new(&engine_config(&config, false)).map_err(anyhow_of)?
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow_of)?;
        Plugin::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(anyhow_of)?;
        glue_learn::learn::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(anyhow_of)?;
        wasi_nn::add_to_linker(&mut linker).map_err(anyhow_of)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticker_engine, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("edgeplug-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })?;
        Ok(Runtime {
            engine,
            linker,
            config,
            ticker_stop,
            live_heads: Arc::default(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The live head of every learning plugin, which the gateway sets.
    pub fn live_heads(&self) -> &Arc<learning::LiveHeads> {
        &self.live_heads
    }

    /// The compile cache's key of a component: a plugin store can tell which cache entries
    /// its versions need without compiling them.
    pub fn cache_key(&self, wasm: &[u8]) -> String {
        ComponentCache::key(&self.engine, wasm)
    }

    /// Deletes the compile cache's entries that neither a loaded version nor `wanted` needs,
    /// then keeps it under its size bound (see [`ComponentCache::collect_garbage`]).
    pub fn collect_cache_garbage(&self, wanted: &dyn Fn(&str) -> bool) -> CacheUsage {
        self.config.cache.collect_garbage(wanted)
    }

    /// Compiles (or loads from the cache) and checks a plugin's component, loads its models
    /// and weights, pre-instantiates it and calls `describe()`, which must agree with the
    /// manifest.
    pub fn load(&self, files: &PluginFiles) -> Result<LoadedPlugin, LoadError> {
        let manifest = &files.manifest;
        let plugin = self.load_unchecked(files)?;
        let info = plugin.info();
        if info.name != manifest.name || info.version != manifest.version.to_string() {
            return Err(LoadError::DescribeMismatch {
                described_name: info.name.clone(),
                described_version: info.version.clone(),
                manifest_name: manifest.name.clone(),
                manifest_version: manifest.version.to_string(),
            });
        }
        Ok(plugin)
    }

    /// What a bare component says of itself, for a component that has no manifest yet. It is
    /// checked like any plugin (imports, world) but granted nothing.
    pub fn describe_component(&self, wasm: &[u8]) -> Result<PluginInfo, LoadError> {
        let files = PluginFiles::bare_component("unnamed", "0.0.0", wasm)
            .map_err(|e| LoadError::Host(format!("{e:#}")))?;
        Ok(self.load_unchecked(&files)?.info)
    }

    fn load_unchecked(&self, files: &PluginFiles) -> Result<LoadedPlugin, LoadError> {
        let manifest = &files.manifest;
        let wasm = files
            .get(&manifest.component)
            .map_err(|e| LoadError::MissingFile(format!("{e:#}")))?;
        let component = self
            .config
            .cache
            .component(&self.engine, wasm)
            .map_err(|e| LoadError::Compile {
                plugin: manifest.name.clone(),
                message: format!("{e:#}"),
            })?;
        check_imports(&self.engine, &component)?;
        let world_mismatch = |e: wasmtime::Error| LoadError::WorldMismatch {
            plugin: manifest.name.clone(),
            message: format!("{e:#}"),
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(world_mismatch)?;
        let learner = if manifest.learns() {
            Some(glue_learn::learner::GuestIndices::new(&pre).map_err(world_mismatch)?)
        } else {
            None
        };
        let entry = if manifest.is_command() {
            Entry::Command(CommandPre::new(pre).map_err(world_mismatch)?)
        } else {
            Entry::Handler(PluginPre::new(pre).map_err(world_mismatch)?)
        };
        let shared = Arc::new(
            PluginShared::load(files, &self.config.limit_caps, &self.config.models)
                .map_err(|e| LoadError::Model(format!("{e:#}")))?,
        );
        let mut plugin = LoadedPlugin {
            engine: self.engine.clone(),
            _component: component,
            entry,
            shared,
            upstreams: self.config.upstreams.clone(),
            learner,
            live_heads: self.live_heads.clone(),
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
            },
            warm: std::sync::Mutex::default(),
        };
        plugin.info = match &plugin.entry {
            Entry::Handler(pre) => plugin.call_describe(pre).map_err(LoadError::Describe)?,
            // A command has no describe(): what it is comes from its manifest, and it takes
            // a body, no tensors.
            Entry::Command(_) => PluginInfo {
                name: manifest.name.clone(),
                version: manifest.version.to_string(),
                description: manifest.description.clone(),
                inputs: Vec::new(),
                outputs: Vec::new(),
            },
        };
        Ok(plugin)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn engine_config(config: &RuntimeConfig, pooling: bool) -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    c.parallel_compilation(config.parallel_compilation);
    c.wasm_component_model(true);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        let memory_cap = config.limit_caps.memory_mib as usize * (1 << 20);
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 4)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            // A Rust plugin is a few core instances; a Python one (componentize-py, built with
            // `--stub-wasi` so it imports no WASI at all) is 38: CPython, libc, its runtime
            // and one trapping stub module per WASI interface. The limit only counts; the
            // totals above still bound what all instances together may hold.
            .max_core_instances_per_component(64)
            .max_memories_per_component(4)
            .max_memory_size(memory_cap)
            // Returning a slot with madvise flushes the TLB of every core (an IPI per request,
            // which capped the trivial plugin at ~12k req/s on 2 cores). Resetting the pages a
            // request dirtied with memset, up to a few MiB, keeps the per-request cost in the
            // instance's own pages; only an instance that dirtied more is madvised.
            .linear_memory_keep_resident(4 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto)
            // No batching of those madvise calls: a slot waiting in a decommit batch is in
            // neither the free list nor use, so when its module is dropped wasmtime cannot
            // purge it, and once returned the slot keeps that dead module's memory image (a
            // `memfd:wasm-memory-image` fd and its pages) until another module happens to
            // take it: with batches of 8, 45 pushes left 7 dead images. Unbatched, dropping a
            // plugin version frees its images at once. The cost is one madvise per request
            // only for plugins that dirty more than `linear_memory_keep_resident` anyway.
            .decommit_batch_size(1)
            // A slot, once used, keeps up to `linear_memory_keep_resident` resident while
            // idle. Past this many idle slots a new instance reuses the least recently used
            // one instead of touching a fresh slot, so the slots ever touched stay near the
            // peak of concurrent instances plus 16, whatever the number of versions and
            // plugins served over time (wasmtime's default, 100, lets idle slots hold 400 MiB).
            .max_unused_warm_slots(16);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

/// wasmtime 48 has its own error type; the rest of the host speaks `anyhow`. The message
/// and its causes are kept on one line (`{:#}`): the `Debug` form would append a Rust stack
/// backtrace when one was captured, which no user should see.
pub(crate) fn anyhow_of(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

fn check_imports(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    for (name, _) in component.component_type().imports(engine) {
        if !ALLOWED_IMPORTS
            .iter()
            .any(|allowed| name.starts_with(allowed))
        {
            return Err(LoadError::ForbiddenImport {
                import: name.to_string(),
            });
        }
    }
    Ok(())
}

/// A request to a plugin.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub content_type: String,
    pub body: Vec<u8>,
    pub tensors: Vec<(String, Tensor)>,
}

/// A plugin's answer.
#[derive(Debug, Clone)]
pub struct InferResponse {
    pub content_type: String,
    pub body: Vec<u8>,
    pub tensors: Vec<(String, Tensor)>,
    /// The plugin escalated, the upstream could not help (unavailable or rejected), and the
    /// plugin answered anyway, with its own result.
    pub degraded: bool,
}

/// What one request took from the host, for the conformance kit's limits report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// Largest linear memory the instance was granted.
    pub peak_memory_bytes: usize,
    /// Most host tensor memory the request held at once.
    pub peak_tensor_bytes: usize,
}

/// A plugin version ready to serve.
pub struct LoadedPlugin {
    engine: Engine,
    /// The compiled component, shared through the compile cache with any other version of the
    /// same bytes; while this lives, the cache knows it is in use. Dropping the last
    /// `LoadedPlugin` of a component frees its code and memory images.
    _component: Arc<Component>,
    entry: Entry,
    shared: Arc<PluginShared>,
    upstreams: Option<Arc<dyn upstream::Upstreams>>,
    /// The `learner` export of a plugin of world `learning-plugin`.
    learner: Option<glue_learn::learner::GuestIndices>,
    /// Where requests find the live head (learning plugins only).
    live_heads: Arc<learning::LiveHeads>,
    info: PluginInfo,
    /// Instances kept for the next requests (`requests_per_instance` > 1), at most
    /// [`MAX_KEPT_INSTANCES`] and never more than the requests that can run at once.
    warm: std::sync::Mutex<Vec<WarmInstance>>,
}

/// How a plugin is entered: an edgeplug handler's `infer`, or a WASI command's `run`.
enum Entry {
    Handler(PluginPre<StoreState>),
    Command(CommandPre<StoreState>),
}

/// Instances one plugin version keeps at most: each holds a slot of the pooling allocator,
/// which every plugin shares, and on a 2-core edge box more than a few requests never run at
/// once anyway.
pub const MAX_KEPT_INSTANCES: usize = 4;

/// The most linear memory an instance may hold and still be kept. Wasm memory never shrinks,
/// so an instance that once grew for a large input would keep that memory resident for as long
/// as it is kept; past this it is dropped and its slot reset instead.
pub const MAX_KEPT_MEMORY_BYTES: usize = 32 << 20;

/// An instance that answered and may serve more requests.
struct WarmInstance {
    store: Store<StoreState>,
    instance: glue::Plugin,
    served: u32,
}

impl LoadedPlugin {
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    pub fn shared(&self) -> &PluginShared {
        &self.shared
    }

    fn new_store(&self) -> Store<StoreState> {
        self.new_store_with_deadline(self.shared.limits().deadline_ms)
    }

    fn new_store_with_deadline(&self, deadline_ms: u64) -> Store<StoreState> {
        self.store_of(StoreState::new(self.shared.clone()), deadline_ms)
    }

    fn store_of(&self, mut state: StoreState, deadline_ms: u64) -> Store<StoreState> {
        state.upstreams = self.upstreams.clone();
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(deadline_ticks(deadline_ms));
        store.epoch_deadline_trap();
        store
    }

    fn call_describe(&self, pre: &PluginPre<StoreState>) -> Result<PluginInfo, InvokeError> {
        let mut store = self.new_store();
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(&store, e))?;
        let info = instance
            .edgeplug_plugin_handler()
            .call_describe(&mut store)
            .map_err(|e| self.classify(&store, e))?;
        let spec = |t: glue::edgeplug::plugin::types::TensorInfo| TensorSpec {
            name: t.name,
            element_type: glue::to_element_type(t.element_type),
            shape: t.shape,
        };
        Ok(PluginInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            inputs: info.inputs.into_iter().map(spec).collect(),
            outputs: info.outputs.into_iter().map(spec).collect(),
        })
    }

    /// Runs one request on a fresh instance (or a kept one, when the manifest's
    /// `requests_per_instance` allows). Blocking and CPU-bound: call it off any async reactor.
    pub fn infer(&self, request: InferRequest) -> Result<InferResponse, InvokeError> {
        self.infer_with_stats(request).0
    }

    /// [`LoadedPlugin::infer`] with a deadline shorter than the plugin's own (it is never
    /// longer), rounded up to the epoch tick: for callers that try a fast path first and fall
    /// back to a full run when it expires. An expired short deadline reports the short one.
    pub fn infer_within(
        &self,
        request: InferRequest,
        deadline: Duration,
    ) -> Result<InferResponse, InvokeError> {
        let deadline_ms = (deadline.as_millis() as u64).min(self.shared.limits().deadline_ms);
        self.run_request(request, deadline_ms)
            .0
            .map_err(|e| match e {
                InvokeError::DeadlineExceeded { .. } => {
                    InvokeError::DeadlineExceeded { deadline_ms }
                }
                other => other,
            })
    }

    /// [`LoadedPlugin::infer`], also reporting what the request took from the host.
    pub fn infer_with_stats(
        &self,
        request: InferRequest,
    ) -> (Result<InferResponse, InvokeError>, RequestStats) {
        self.run_request(request, self.shared.limits().deadline_ms)
    }

    fn run_request(
        &self,
        request: InferRequest,
        deadline_ms: u64,
    ) -> (Result<InferResponse, InvokeError>, RequestStats) {
        self.run_request_with(request, deadline_ms, None)
    }

    /// One request within `deadline_ms`, on a kept instance if one is idle, else on a fresh
    /// one; the instance is kept afterwards if it answered and may serve more. With
    /// `head_override` (the gate's self-tests of a candidate head) the request sees that head
    /// as live, on a fresh instance that is not kept.
    fn run_request_with(
        &self,
        request: InferRequest,
        deadline_ms: u64,
        head_override: Option<Option<Arc<edgeplug_train::Head>>>,
    ) -> (Result<InferResponse, InvokeError>, RequestStats) {
        // The request's core counts as busy while it runs, so model runs elsewhere do not
        // borrow it for intra-op threads.
        let _busy = edgeplug_models::native::parallel::busy();
        let limits = self.shared.limits();
        if request.body.len() > limits.request_bytes {
            let e = InvokeError::RequestTooLarge {
                size: request.body.len(),
                limit: limits.request_bytes,
            };
            return (Err(e), RequestStats::default());
        }
        let pre = match &self.entry {
            Entry::Handler(pre) => pre,
            Entry::Command(pre) => return self.run_command(pre, request, deadline_ms),
        };
        let overridden = head_override.is_some();
        let kept = match overridden {
            true => None,
            false => self.warm.lock().unwrap_or_else(|e| e.into_inner()).pop(),
        };
        let (mut store, instance, served) = match kept {
            Some(WarmInstance {
                mut store,
                instance,
                served,
            }) => {
                store.data_mut().begin_request();
                store.set_epoch_deadline(deadline_ticks(deadline_ms));
                (store, instance, served)
            }
            None => {
                let mut store = self.new_store_with_deadline(deadline_ms);
                match pre.instantiate(&mut store) {
                    Ok(instance) => (store, instance, 0),
                    Err(e) => {
                        let e = self.classify(&store, e);
                        return (Err(e), self.stats(&store));
                    }
                }
            }
        };
        // Escalations of this request must leave it time to answer (see `upstream`).
        let length = Duration::from_millis(deadline_ms);
        store.data_mut().deadline = Some(state::RequestDeadline {
            at: std::time::Instant::now() + length,
            length,
        });
        if self.learner.is_some() {
            store.data_mut().live_head =
                head_override.unwrap_or_else(|| self.live_heads.get(&self.info.name));
        }
        let result = self.infer_on(&mut store, &instance, request);
        let stats = self.stats(&store);
        // Only an instance that returned normally is kept: after a trap or an exhausted
        // limit its memory may be anything.
        let answered = matches!(result, Ok(_) | Err(InvokeError::Plugin { .. }));
        if answered
            && !overridden
            && served + 1 < limits.requests_per_instance
            && stats.peak_memory_bytes <= MAX_KEPT_MEMORY_BYTES
        {
            let mut warm = self.warm.lock().unwrap_or_else(|e| e.into_inner());
            if warm.len() < limits.concurrency.min(MAX_KEPT_INSTANCES) {
                warm.push(WarmInstance {
                    store,
                    instance,
                    served: served + 1,
                });
            }
        }
        (result, stats)
    }

    /// One request to a WASI command: a fresh instance whose `run` reads the body on stdin and
    /// writes the answer on stdout (the content type is in `CONTENT_TYPE`, as for CGI; the
    /// answer may start with CGI headers, see [`command_output`]). A command that fails
    /// (exits with an error) is `internal`, with what it wrote on stderr as the message.
    fn run_command(
        &self,
        pre: &CommandPre<StoreState>,
        request: InferRequest,
        deadline_ms: u64,
    ) -> (Result<InferResponse, InvokeError>, RequestStats) {
        if let Some((name, _)) = request.tensors.first() {
            let e = InvokeError::Plugin {
                code: PluginErrorCode::InvalidArgument,
                message: format!(
                    "plugin {} is a WASI command: it takes a body on stdin, not tensors (got {name:?})",
                    self.info.name
                ),
            };
            return (Err(e), RequestStats::default());
        }
        let limit = self.shared.limits().response_bytes;
        // One byte over the limit is enough to know the answer is too large.
        let stdout = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(limit + 1);
        let state = StoreState::for_command(
            self.shared.clone(),
            request.body,
            &request.content_type,
            stdout.clone(),
        );
        let mut store = self.store_of(state, deadline_ms);
        let ran = pre
            .instantiate(&mut store)
            .and_then(|command| command.wasi_cli_run().call_run(&mut store));
        let stats = self.stats(&store);
        // One read of what the command wrote (each `contents()` copies the buffer).
        let output = stdout.contents();
        let too_large = || InvokeError::ResponseTooLarge {
            size: output.len(),
            limit,
        };
        let exit = match ran {
            Ok(Ok(())) => 0,
            Ok(Err(())) => 1,
            Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(exit) => exit.0,
                // Writing past the pipe's capacity traps the guest: the answer was too large.
                None if output.len() > limit => return (Err(too_large()), stats),
                None => return (Err(self.classify(&store, e)), stats),
            },
        };
        let result = if exit != 0 {
            let said = store.data().stderr.text();
            let message = match said.trim() {
                "" => "the command exited with an error".to_string(),
                said => said.to_string(),
            };
            Err(InvokeError::Plugin {
                code: PluginErrorCode::Internal,
                message,
            })
        } else if output.len() > limit {
            Err(too_large())
        } else {
            command_output::parse(Vec::from(output))
        };
        (result, stats)
    }

    /// Drops the instances kept for later requests, returning their allocator slots: for a
    /// version that stops serving (replaced, rolled back or removed).
    pub fn release_kept_instances(&self) {
        self.warm.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn stats(&self, store: &Store<StoreState>) -> RequestStats {
        let state = store.data();
        RequestStats {
            peak_memory_bytes: state.limiter.peak_bytes,
            peak_tensor_bytes: state.peak_tensor_bytes,
        }
    }

    fn infer_on(
        &self,
        store: &mut Store<StoreState>,
        instance: &glue::Plugin,
        request: InferRequest,
    ) -> Result<InferResponse, InvokeError> {
        let limits = self.shared.limits();
        let mut tensors = Vec::with_capacity(request.tensors.len());
        for (name, tensor) in request.tensors {
            let handle = store.data_mut().push_tensor(tensor).map_err(|e| match e {
                glue::HostError::Guest(e) => InvokeError::Plugin {
                    code: e.code,
                    message: e.message,
                },
                glue::HostError::Trap(e) => self.classify(store, e),
            })?;
            tensors.push(handle::NamedTensor {
                name,
                tensor: handle,
            });
        }
        let wit_request = handle::Request {
            content_type: request.content_type,
            body: request.body,
            tensors,
        };
        let result = instance
            .edgeplug_plugin_handler()
            .call_infer(&mut *store, &wit_request)
            .map_err(|e| self.classify(store, e))?;
        let response = result.map_err(|e| InvokeError::Plugin {
            code: e.code,
            message: e.message,
        })?;
        let mut size = response.body.len();
        let mut tensors = Vec::with_capacity(response.tensors.len());
        for named in response.tensors {
            let tensor = store
                .data_mut()
                .take_tensor(named.tensor)
                .map_err(|e| InvokeError::trap(format!("{e:?}")))?;
            self.check_output(&named.name, &tensor)?;
            size = size.saturating_add(tensor.byte_size());
            tensors.push((named.name, tensor));
        }
        if size > limits.response_bytes {
            return Err(InvokeError::ResponseTooLarge {
                size,
                limit: limits.response_bytes,
            });
        }
        Ok(InferResponse {
            content_type: response.content_type,
            body: response.body,
            tensors,
            degraded: store.data().escalation_failed,
        })
    }

    /// A returned tensor under a name `describe()` declared must have the declared element
    /// type and shape (-1 matches any size); undeclared tensors (debug outputs) pass.
    fn check_output(&self, name: &str, tensor: &Tensor) -> Result<(), InvokeError> {
        let Some(spec) = self.info.outputs.iter().find(|spec| spec.name == name) else {
            return Ok(());
        };
        let shape = tensor.shape();
        let shape_ok = spec.shape.len() == shape.len()
            && spec
                .shape
                .iter()
                .zip(shape)
                .all(|(&want, &got)| want < 0 || want as usize == got);
        if spec.element_type != tensor.element_type() || !shape_ok {
            return Err(InvokeError::BrokenContract(format!(
                "output {name:?} is {:?} {shape:?}, but describe() declares {:?} {:?}",
                tensor.element_type(),
                spec.element_type,
                spec.shape
            )));
        }
        Ok(())
    }

    /// Turns a trap into the limit that caused it, if one did.
    fn classify(&self, store: &Store<StoreState>, e: wasmtime::Error) -> InvokeError {
        let state = store.data();
        if let Some(LimitExceeded(hit)) = e.downcast_ref::<LimitExceeded>() {
            return limit_error(*hit);
        }
        if let Some(hit) = state.limit_hit {
            return limit_error(hit);
        }
        if state.limiter.exhausted {
            return InvokeError::MemoryExhausted {
                limit_bytes: self.shared.limits().memory_bytes,
            };
        }
        if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
            return InvokeError::DeadlineExceeded {
                deadline_ms: self.shared.limits().deadline_ms,
            };
        }
        tracing::debug!(plugin = self.info.name, "trap: {e:?}");
        let reason = match e.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{e:#}"),
        };
        InvokeError::Trap {
            reason,
            stderr: state.stderr.text(),
        }
    }
}

/// Epoch ticks from now that cover `deadline_ms`: one more than the deadline's length in
/// ticks, because the first tick may come at once (the ticker does not start with the
/// request), so a plugin is never stopped before its deadline, and at most one tick after.
fn deadline_ticks(deadline_ms: u64) -> u64 {
    deadline_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1
}

fn limit_error(hit: LimitHit) -> InvokeError {
    match hit {
        LimitHit::LinearMemory { limit_bytes } => InvokeError::MemoryExhausted { limit_bytes },
        LimitHit::TensorMemory { limit_bytes } => {
            InvokeError::TensorMemoryExhausted { limit_bytes }
        }
    }
}

use handler as handle;

//! `wasi:nn` for guests written against the WASI-NN proposal: one `bindgen!` of the
//! proposal's WIT (`wit/deps/wasi-nn`), and glue that checks, converts and delegates to the
//! same models the `model` interface runs ([`edgeplug_models::model`], which knows nothing of
//! WIT).
//!
//! - Graphs are loaded by name from the manifest's model grants (`load-by-name`), never from a
//!   guest-supplied path; `load` from bytes is refused (a model is granted, verified and
//!   optimized once per version, not compiled per request from guest memory).
//! - Tensors live in the host, charged to the request's tensor budget like every host tensor;
//!   FP32, U8 and I64 run, the other element types are `unsupported-operation`.
//! - `compute` matches inputs to the graph's inputs by name (a graph with one input takes one
//!   tensor under any name) and names the outputs as the graph does.
//! - Concurrent requests on one graph run in parallel: a graph is an `Arc` of the shared,
//!   immutable model, and an execution context holds nothing else. (wasmtime's and WasmEdge's
//!   wasi-nn backends hold a lock per graph instead; [`serialize_graphs`] does the same, for
//!   the benchmark that measures the difference.)
//!
//! What the guest can cause is a wasi:nn `error`; an exhausted budget is a trap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::component::Resource;

use super::state::StoreState;
use edgeplug_kernels::{ElementType, Tensor};
use edgeplug_models::model::Model;

wasmtime::component::bindgen!({
    world: "wasi:nn/ml",
    path: "../../wit/deps/wasi-nn",
    with: {
        "wasi:nn/tensor.tensor": NnTensor,
        "wasi:nn/graph.graph": NnGraph,
        "wasi:nn/inference.graph-execution-context": NnContext,
        "wasi:nn/errors.error": NnError,
    },
    imports: { default: trappable },
});

use wasi::nn::errors::ErrorCode;
use wasi::nn::graph::{ExecutionTarget, GraphEncoding};
use wasi::nn::tensor::TensorType;

/// A guest's tensor as it built it: checked when it is computed on, since the constructor has
/// no way to report an error.
pub struct NnTensor {
    dimensions: Vec<u32>,
    ty: TensorType,
    data: Vec<u8>,
}

/// A loaded graph: the plugin version's shared model.
pub struct NnGraph(Arc<Model>);

/// An execution context: the graph it runs (and nothing else, so contexts never contend).
pub struct NnContext(Arc<Model>);

/// A wasi:nn error for the guest.
pub struct NnError {
    code: ErrorCode,
    data: String,
}

static SERIALIZE: AtomicBool = AtomicBool::new(false);
static GRAPH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Makes every `compute` in this process hold one lock, as the wasi-nn backends of wasmtime
/// and WasmEdge do per graph: for the benchmark that compares the two, never for serving.
pub fn serialize_graphs(on: bool) {
    SERIALIZE.store(on, Ordering::Relaxed);
}

/// Adds the `wasi:nn` interfaces to a linker.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<StoreState>) -> wasmtime::Result<()> {
    Ml::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(linker, |s| s)
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl StoreState {
    fn nn_error<T>(&mut self, code: ErrorCode, data: impl Into<String>) -> NnResult<T> {
        let error = self.table.push(NnError {
            code,
            data: data.into(),
        })?;
        Ok(Err(error))
    }

    fn push_nn_tensor(&mut self, tensor: NnTensor) -> wasmtime::Result<Resource<NnTensor>> {
        self.charge_tensor_bytes(tensor.data.len())?;
        Ok(self.table.push(tensor)?)
    }

    fn take_nn_tensor(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<NnTensor> {
        let tensor = self.table.delete(tensor)?;
        self.release_tensor_bytes(tensor.data.len());
        Ok(tensor)
    }
}

fn element_type(ty: TensorType) -> Option<ElementType> {
    match ty {
        TensorType::Fp32 => Some(ElementType::F32),
        TensorType::U8 => Some(ElementType::U8),
        TensorType::I64 => Some(ElementType::I64),
        TensorType::Fp16 | TensorType::Fp64 | TensorType::Bf16 | TensorType::I32 => None,
    }
}

fn tensor_type(ty: ElementType) -> TensorType {
    match ty {
        ElementType::F32 => TensorType::Fp32,
        ElementType::U8 => TensorType::U8,
        ElementType::I64 => TensorType::I64,
    }
}

/// A guest tensor as a host tensor, or why not.
fn to_tensor(name: &str, tensor: &NnTensor) -> Result<Tensor, (ErrorCode, String)> {
    let ty = element_type(tensor.ty).ok_or_else(|| {
        (
            ErrorCode::UnsupportedOperation,
            format!(
                "tensor {name:?} is {:?}; edgeplug computes on FP32, U8 and I64",
                tensor.ty
            ),
        )
    })?;
    let shape = tensor.dimensions.iter().map(|&d| d as usize).collect();
    Tensor::from_le_bytes(shape, ty, &tensor.data)
        .map_err(|e| (ErrorCode::InvalidArgument, format!("tensor {name:?}: {e}")))
}

impl wasi::nn::tensor::Host for StoreState {}

impl wasi::nn::tensor::HostTensor for StoreState {
    fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<NnTensor>> {
        self.push_nn_tensor(NnTensor {
            dimensions,
            ty,
            data,
        })
    }

    fn dimensions(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&tensor)?.dimensions.clone())
    }

    fn ty(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<TensorType> {
        Ok(self.table.get(&tensor)?.ty)
    }

    fn data(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&tensor)?.data.clone())
    }

    fn drop(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<()> {
        self.take_nn_tensor(tensor).map(|_| ())
    }
}

impl wasi::nn::graph::Host for StoreState {
    fn load(
        &mut self,
        _builder: Vec<Vec<u8>>,
        _encoding: GraphEncoding,
        _target: ExecutionTarget,
    ) -> NnResult<Resource<NnGraph>> {
        let granted: Vec<&String> = self.plugin().manifest().grants.models.keys().collect();
        self.nn_error(
            ErrorCode::Security,
            format!(
                "edgeplug loads graphs by name only (load-by-name), from the models the plugin's \
                 manifest grants: {granted:?}"
            ),
        )
    }

    fn load_by_name(&mut self, name: String) -> NnResult<Resource<NnGraph>> {
        match self.plugin().model(&name) {
            Ok(model) => Ok(Ok(self.table.push(NnGraph(model))?)),
            Err(super::glue::HostError::Guest(e)) => self.nn_error(ErrorCode::NotFound, e.message),
            Err(super::glue::HostError::Trap(e)) => Err(e),
        }
    }
}

impl wasi::nn::graph::HostGraph for StoreState {
    fn init_execution_context(
        &mut self,
        graph: Resource<NnGraph>,
    ) -> NnResult<Resource<NnContext>> {
        let model = self.table.get(&graph)?.0.clone();
        Ok(Ok(self.table.push(NnContext(model))?))
    }

    fn drop(&mut self, graph: Resource<NnGraph>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

impl wasi::nn::inference::Host for StoreState {}

impl wasi::nn::inference::HostGraphExecutionContext for StoreState {
    fn compute(
        &mut self,
        context: Resource<NnContext>,
        inputs: Vec<(String, Resource<NnTensor>)>,
    ) -> NnResult<Vec<(String, Resource<NnTensor>)>> {
        let model = self.table.get(&context)?.0.clone();
        // The handles are the guest's gift: take them all, whatever happens next.
        let mut given = Vec::with_capacity(inputs.len());
        for (name, handle) in inputs {
            given.push((name, self.take_nn_tensor(handle)?));
        }
        let specs = model.inputs();
        let mut ordered = Vec::with_capacity(specs.len());
        for spec in specs {
            let found = given
                .iter()
                .find(|(name, _)| *name == spec.name)
                .or_else(|| (specs.len() == 1 && given.len() == 1).then(|| &given[0]));
            let Some((name, tensor)) = found else {
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                return self.nn_error(
                    ErrorCode::InvalidArgument,
                    format!(
                        "no tensor for input {:?}; the graph's inputs: {names:?}",
                        spec.name
                    ),
                );
            };
            match to_tensor(name, tensor) {
                Ok(tensor) => ordered.push(tensor),
                Err((code, message)) => return self.nn_error(code, message),
            }
        }
        let refs: Vec<&Tensor> = ordered.iter().collect();
        let result = if SERIALIZE.load(Ordering::Relaxed) {
            let _held = GRAPH_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            model.run(&refs)
        } else {
            model.run(&refs)
        };
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(e) => {
                use edgeplug_models::model::ModelError;
                let code = match e {
                    ModelError::InputCount { .. } | ModelError::InputMismatch { .. } => {
                        ErrorCode::InvalidArgument
                    }
                    ModelError::Load { .. } | ModelError::Run { .. } => ErrorCode::RuntimeError,
                };
                return self.nn_error(code, e.to_string());
            }
        };
        let mut named = Vec::with_capacity(outputs.len());
        for (spec, tensor) in model.outputs().iter().zip(outputs) {
            let handle = self.push_nn_tensor(NnTensor {
                dimensions: tensor.shape().iter().map(|&d| d as u32).collect(),
                ty: tensor_type(tensor.element_type()),
                data: tensor.to_le_bytes(),
            })?;
            named.push((spec.name.clone(), handle));
        }
        Ok(Ok(named))
    }

    fn drop(&mut self, context: Resource<NnContext>) -> wasmtime::Result<()> {
        self.table.delete(context)?;
        Ok(())
    }
}

impl wasi::nn::errors::Host for StoreState {}

impl wasi::nn::errors::HostError for StoreState {
    fn code(&mut self, error: Resource<NnError>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&error)?.code)
    }

    fn data(&mut self, error: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&error)?.data.clone())
    }

    fn drop(&mut self, error: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}

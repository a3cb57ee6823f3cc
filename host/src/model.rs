//! Whole ONNX models, run by tract.
//!
//! A model is parsed, typed and optimized once per plugin version and then shared (it is
//! `Send + Sync`; each run gets its own state), so instances never pay for loading.
//! Knows nothing of WIT or wasmtime.

use std::sync::Arc;

use tract_onnx::prelude::{
    DatumType, Framework, InferenceModelExt, IntoTValue, TValue, TVec, Tensor as TractTensor,
    TypedFact, TypedRunnableModel,
};

use crate::tensor::{ElementType, Tensor, TensorData};

/// Name, element type and shape of a model input or output; -1 marks a dynamic dimension.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub element_type: ElementType,
    pub shape: Vec<i64>,
}

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot load ONNX model {name:?}: {reason}")]
    Load { name: String, reason: String },
    #[error("model {model:?} takes {expected} inputs, got {got}")]
    InputCount {
        model: String,
        expected: usize,
        got: usize,
    },
    #[error("model {model:?} input {index} ({input}) must be {expected}, got {got}")]
    InputMismatch {
        model: String,
        index: usize,
        input: String,
        expected: String,
        got: String,
    },
    #[error("model {model:?} failed: {reason}")]
    Run { model: String, reason: String },
}

/// A loaded, optimized model, ready to run from any thread.
pub struct Model {
    name: String,
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl Model {
    /// Parses, types and optimizes ONNX bytes. `name` is only for messages.
    pub fn load(name: &str, onnx: &[u8]) -> Result<Model, ModelError> {
        let load_err = |e: tract_onnx::prelude::TractError| ModelError::Load {
            name: name.to_string(),
            reason: format!("{e:#}"),
        };
        let typed = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(onnx))
            .map_err(load_err)?
            .into_typed()
            .map_err(load_err)?;
        let specs = |outlets: &[tract_onnx::prelude::OutletId]| -> Result<Vec<TensorSpec>, ModelError> {
            outlets
                .iter()
                .map(|outlet| {
                    let fact = typed.outlet_fact(*outlet).map_err(load_err)?;
                    Ok(TensorSpec {
                        name: typed.node(outlet.node).name.clone(),
                        element_type: element_type_of(fact.datum_type).ok_or_else(|| {
                            ModelError::Load {
                                name: name.to_string(),
                                reason: format!("unsupported element type {:?}", fact.datum_type),
                            }
                        })?,
                        shape: shape_of(fact),
                    })
                })
                .collect()
        };
        let inputs = specs(typed.input_outlets().map_err(load_err)?)?;
        let outputs = specs(typed.output_outlets().map_err(load_err)?)?;
        let plan = typed
            .into_optimized()
            .map_err(load_err)?
            .into_runnable()
            .map_err(load_err)?;
        Ok(Model {
            name: name.to_string(),
            plan,
            inputs,
            outputs,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// The engine that runs this model.
    pub fn backend(&self) -> &'static str {
        "tract"
    }

    /// Runs the model. Inputs are checked against the declared types and shapes first, so a
    /// wrong shape is a clear error rather than a failure deep inside tract.
    pub fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, ModelError> {
        if inputs.len() != self.inputs.len() {
            return Err(ModelError::InputCount {
                model: self.name.clone(),
                expected: self.inputs.len(),
                got: inputs.len(),
            });
        }
        let mut values: TVec<TValue> = TVec::new();
        for (index, (tensor, spec)) in inputs.iter().zip(&self.inputs).enumerate() {
            let shape_ok = tensor.shape().len() == spec.shape.len()
                && tensor
                    .shape()
                    .iter()
                    .zip(&spec.shape)
                    .all(|(&got, &want)| want < 0 || got as i64 == want);
            if !shape_ok || tensor.element_type() != spec.element_type {
                return Err(ModelError::InputMismatch {
                    model: self.name.clone(),
                    index,
                    input: spec.name.clone(),
                    expected: format!("{:?} {:?}", spec.element_type, spec.shape),
                    got: format!("{:?} {:?}", tensor.element_type(), tensor.shape()),
                });
            }
            values.push(to_tract(tensor).map_err(|e| self.run_err(e))?.into_tvalue());
        }
        let outputs = self.plan.run(values).map_err(|e| self.run_err(e))?;
        outputs
            .iter()
            .map(|value| from_tract(value).map_err(|e| self.run_err(e)))
            .collect()
    }

    fn run_err(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Run {
            model: self.name.clone(),
            reason: format!("{e:#}"),
        }
    }
}

fn element_type_of(dt: DatumType) -> Option<ElementType> {
    match dt {
        DatumType::F32 => Some(ElementType::F32),
        DatumType::U8 => Some(ElementType::U8),
        DatumType::I64 => Some(ElementType::I64),
        _ => None,
    }
}

fn shape_of(fact: &TypedFact) -> Vec<i64> {
    fact.shape
        .iter()
        .map(|dim| dim.to_i64().unwrap_or(-1))
        .collect()
}

fn to_tract(tensor: &Tensor) -> tract_onnx::prelude::TractResult<TractTensor> {
    match tensor.data() {
        TensorData::F32(d) => TractTensor::from_shape(tensor.shape(), d),
        TensorData::U8(d) => TractTensor::from_shape(tensor.shape(), d),
        TensorData::I64(d) => TractTensor::from_shape(tensor.shape(), d),
    }
}

fn from_tract(value: &TValue) -> anyhow::Result<Tensor> {
    let shape = value.shape().to_vec();
    let tensor = match value.datum_type() {
        DatumType::F32 => Tensor::from_f32(shape, value.to_plain_array_view::<f32>()?.iter().copied().collect())?,
        DatumType::U8 => Tensor::from_u8(shape, value.to_plain_array_view::<u8>()?.iter().copied().collect())?,
        DatumType::I64 => Tensor::from_i64(shape, value.to_plain_array_view::<i64>()?.iter().copied().collect())?,
        other => anyhow::bail!("model output has unsupported element type {other:?}"),
    };
    Ok(tensor)
}

//! Whole ONNX models, run by tract.
//!
//! A model is parsed, typed and optimized once per plugin version and then shared (it is
//! `Send + Sync`; each run gets its own state), so instances never pay for loading.
//! Knows nothing of WIT or wasmtime.

use std::sync::Arc;

use tract_onnx::prelude::{
    DatumType, Framework, InferenceModelExt, IntoRunnable, IntoTValue, TValue, TVec,
    Tensor as TractTensor, TypedFact, TypedRunnableModel,
};

use edgeplug_kernels::{ElementType, Tensor, TensorData};

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
    engine: Engine,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// Whether the graph is quantized (QDQ or QOperator): its precision is int8 on either engine.
    quantized: bool,
}

/// Which engine runs a model: edgeplug's own kernels when the graph is covered, tract otherwise.
enum Engine {
    Native(Box<crate::native::NativeModel>),
    Tract(Arc<TypedRunnableModel>),
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("backend", &self.backend())
            .finish()
    }
}

impl Model {
    /// Parses, types and optimizes ONNX bytes: on edgeplug's native kernels when every op of
    /// the graph is covered, else on tract. `name` is only for messages.
    pub fn load(name: &str, onnx: &[u8]) -> Result<Model, ModelError> {
        Model::load_with(name, onnx, true)
    }

    /// Like [`Model::load`], but `native: false` forces tract (for comparisons and benchmarks).
    pub fn load_with(name: &str, onnx: &[u8], native: bool) -> Result<Model, ModelError> {
        let load_err = |e: tract_onnx::prelude::TractError| ModelError::Load {
            name: name.to_string(),
            reason: format!("{e:#}"),
        };
        let onnx_framework = tract_onnx::onnx();
        let proto = onnx_framework
            .proto_model_for_read(&mut std::io::Cursor::new(onnx))
            .map_err(load_err)?;
        let quantized = crate::native::is_quantized(&proto);
        check_known_tract_bugs(&proto).map_err(|reason| ModelError::Load {
            name: name.to_string(),
            reason,
        })?;
        let typed = onnx_framework
            .model_for_proto_model(&proto)
            .map_err(load_err)?
            .into_typed()
            .map_err(load_err)?;
        let specs =
            |outlets: &[tract_onnx::prelude::OutletId]| -> Result<Vec<TensorSpec>, ModelError> {
                outlets
                    .iter()
                    .map(|outlet| {
                        let fact = typed.outlet_fact(*outlet).map_err(load_err)?;
                        // The ONNX graph's own input and output names (what clients and
                        // split models know a tensor by), else the node's.
                        let name = typed
                            .outlet_label(*outlet)
                            .unwrap_or(&typed.node(outlet.node).name);
                        Ok(TensorSpec {
                            name: name.to_string(),
                            element_type: element_type_of(fact.datum_type).ok_or_else(|| {
                                ModelError::Load {
                                    name: name.to_string(),
                                    reason: format!(
                                        "unsupported element type {:?}",
                                        fact.datum_type
                                    ),
                                }
                            })?,
                            shape: shape_of(fact),
                        })
                    })
                    .collect()
            };
        let inputs = specs(typed.input_outlets().map_err(load_err)?)?;
        let outputs = specs(typed.output_outlets().map_err(load_err)?)?;
        if native {
            match crate::native::NativeModel::load_proto(
                &proto,
                edgeplug_kernels::fast::Isa::detect(),
                crate::native::default_precision(),
            ) {
                Ok(model) => {
                    return Ok(Model {
                        name: name.to_string(),
                        engine: Engine::Native(Box::new(model)),
                        inputs,
                        outputs,
                        quantized,
                    });
                }
                Err(crate::native::NativeError::Unsupported { op, node }) => {
                    tracing::info!(model = name, %op, %node, "native backend does not cover the graph; using tract");
                }
                Err(e) => {
                    tracing::warn!(
                        model = name,
                        "native backend failed to load the model ({e}); using tract"
                    );
                }
            }
        }
        let plan = typed
            .into_optimized()
            .map_err(load_err)?
            .into_runnable()
            .map_err(load_err)?;
        Ok(Model {
            name: name.to_string(),
            engine: Engine::Tract(plan),
            inputs,
            outputs,
            quantized,
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
        match self.engine {
            Engine::Native(_) => "native",
            Engine::Tract(_) => "tract",
        }
    }

    /// The instruction set the native backend's kernels run with (`None`
    /// on tract, which chooses its own).
    pub fn isa(&self) -> Option<edgeplug_kernels::fast::Isa> {
        match &self.engine {
            Engine::Native(m) => Some(m.isa()),
            Engine::Tract(_) => None,
        }
    }

    /// The precision the model's convolutions and GEMMs run in (on tract:
    /// `int8` for a quantized graph, else `f32`).
    pub fn precision(&self) -> crate::native::Precision {
        match &self.engine {
            Engine::Native(m) => m.precision(),
            Engine::Tract(_) if self.quantized => crate::native::Precision::Int8,
            Engine::Tract(_) => crate::native::Precision::F32,
        }
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
        }
        let plan = match &self.engine {
            Engine::Native(model) => return model.run(inputs).map_err(|e| self.run_err(e)),
            Engine::Tract(plan) => plan,
        };
        let mut values: TVec<TValue> = TVec::new();
        for tensor in inputs {
            values.push(to_tract(tensor).map_err(|e| self.run_err(e))?.into_tvalue());
        }
        let outputs = plan.run(values).map_err(|e| self.run_err(e))?;
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

/// Refuses graphs that tract 0.23.9 is known to compute wrongly without any error, so that a
/// model never silently gives garbage.
///
/// * A QDQ-wrapped Softmax (`DequantizeLinear -> Softmax -> QuantizeLinear`): tract's optimizer
///   turns the chain into its quantized Softmax, which returns 1.0 for every element
///   (`tests/fixtures/models/tract_qdq_softmax_repro.onnx`). Quantize such a model with Softmax
///   excluded (onnxruntime's `quantize_static(..., nodes_to_exclude=[softmax])`): with only the
///   input DQ or only the output Q, tract is correct.
///
/// The unit test `tract_still_has_the_qdq_softmax_bug` fails once a tract upgrade fixes the bug;
/// the check can then go.
pub fn check_known_tract_bugs(proto: &tract_onnx::pb::ModelProto) -> Result<(), String> {
    let Some(graph) = &proto.graph else {
        return Ok(());
    };
    let is_default_domain = |domain: &str| domain.is_empty() || domain == "ai.onnx";
    let producer_of = |value: &str| {
        graph
            .node
            .iter()
            .find(|n| n.output.iter().any(|o| o == value))
    };
    for softmax in graph
        .node
        .iter()
        .filter(|n| n.op_type == "Softmax" && is_default_domain(&n.domain))
    {
        let dequantized_input = softmax
            .input
            .first()
            .and_then(|i| producer_of(i))
            .is_some_and(|p| p.op_type == "DequantizeLinear" && is_default_domain(&p.domain));
        let quantized_output = softmax.output.first().is_some_and(|out| {
            graph.node.iter().any(|n| {
                n.op_type == "QuantizeLinear"
                    && is_default_domain(&n.domain)
                    && n.input.first() == Some(out)
            })
        });
        if dequantized_input && quantized_output {
            return Err(format!(
                "Softmax node {:?} is quantized (DequantizeLinear -> Softmax -> QuantizeLinear), which \
                 tract 0.23.9 computes wrongly (every output is 1.0); quantize the model with Softmax \
                 left in float (onnxruntime quantize_static nodes_to_exclude)",
                softmax.name
            ));
        }
    }
    Ok(())
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
        DatumType::F32 => Tensor::from_f32(
            shape,
            value
                .to_plain_array_view::<f32>()?
                .iter()
                .copied()
                .collect(),
        )?,
        DatumType::U8 => Tensor::from_u8(
            shape,
            value.to_plain_array_view::<u8>()?.iter().copied().collect(),
        )?,
        DatumType::I64 => Tensor::from_i64(
            shape,
            value
                .to_plain_array_view::<i64>()?
                .iter()
                .copied()
                .collect(),
        )?,
        other => anyhow::bail!("model output has unsupported element type {other:?}"),
    };
    Ok(tensor)
}

#[cfg(test)]
mod known_bug_tests {
    use super::*;

    fn repro() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/models/tract_qdq_softmax_repro.onnx"
        );
        std::fs::read(path).expect("tests/fixtures/models/tract_qdq_softmax_repro.onnx")
    }

    #[test]
    fn qdq_softmax_is_refused_at_load_time() {
        let err = Model::load("repro", &repro()).unwrap_err();
        let ModelError::Load { name, reason } = &err else {
            panic!("expected a load error, got {err}")
        };
        assert_eq!(name, "repro");
        assert!(
            reason.contains("DequantizeLinear -> Softmax -> QuantizeLinear"),
            "{reason}"
        );
        assert!(err.to_string().contains("tract 0.23.9"), "{err}");
    }

    /// The repro through plain tract, without the check: all ones instead of onnxruntime's
    /// 0.992 at index 2. When this fails, tract has fixed the bug and `check_known_tract_bugs`
    /// can be dropped.
    #[test]
    fn tract_still_has_the_qdq_softmax_bug() {
        let plan = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(repro()))
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        // tract_qdq_softmax_repro_input.npy: float32 (1, 10).
        let npy = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/models/tract_qdq_softmax_repro_input.npy"
        ))
        .unwrap();
        let data: Vec<f32> = npy[npy.len() - 40..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let input = TractTensor::from_shape(&[1, 10], &data).unwrap();
        let mut inputs: TVec<TValue> = TVec::new();
        inputs.push(input.into_tvalue());
        let out = plan.run(inputs).unwrap();
        let out: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        assert!(
            out.iter().all(|&v| v == 1.0),
            "tract now computes the quantized softmax ({out:?}; onnxruntime: 0.992 at index 2): \
             the bug is fixed, drop check_known_tract_bugs"
        );
    }

    #[test]
    fn softmax_with_only_one_side_quantized_is_accepted() {
        let mut proto = tract_onnx::onnx()
            .proto_model_for_read(&mut std::io::Cursor::new(repro()))
            .unwrap();
        assert!(check_known_tract_bugs(&proto).is_err());
        let graph = proto.graph.as_mut().unwrap();
        // Drop the QuantizeLinear after the Softmax: DQ -> Softmax only.
        let softmax_out = graph
            .node
            .iter()
            .find(|n| n.op_type == "Softmax")
            .unwrap()
            .output[0]
            .clone();
        graph
            .node
            .retain(|n| !(n.op_type == "QuantizeLinear" && n.input.first() == Some(&softmax_out)));
        assert_eq!(check_known_tract_bugs(&proto), Ok(()));
    }
}

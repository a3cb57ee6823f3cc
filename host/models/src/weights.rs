//! Named weight tensors a plugin may load (`tensor.load`), from safetensors files its
//! manifest grants, and the tool that extracts them from an ONNX model.
//!
//! Weights are parsed once per plugin version; every instance shares the same `Arc` data,
//! so loading a weight in a request costs a table insert, not a copy.

use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors};
use tract_onnx::prelude::Framework as _;

use edgeplug_kernels::{ElementType, Tensor};

/// Why a weights file was refused.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("weights file {file:?} is not valid safetensors: {reason}")]
    Format { file: String, reason: String },
    #[error(
        "weights file {file:?}: tensor {name:?} has unsupported dtype {dtype:?} (float32, uint8 and int64 are supported)"
    )]
    Dtype {
        file: String,
        name: String,
        dtype: String,
    },
    #[error("tensor {name:?} is defined in both {first:?} and {second:?}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
}

/// The tensors of every granted weights file, by name.
#[derive(Debug, Default)]
pub struct Weights {
    tensors: BTreeMap<String, (String, Tensor)>,
}

impl Weights {
    /// Adds every tensor of a safetensors file; names must be unique across files.
    pub fn add_file(&mut self, file: &str, bytes: &[u8]) -> Result<(), WeightsError> {
        let parsed = SafeTensors::deserialize(bytes).map_err(|e| WeightsError::Format {
            file: file.to_string(),
            reason: e.to_string(),
        })?;
        for (name, view) in parsed.tensors() {
            let ty = match view.dtype() {
                Dtype::F32 => ElementType::F32,
                Dtype::U8 => ElementType::U8,
                Dtype::I64 => ElementType::I64,
                other => {
                    return Err(WeightsError::Dtype {
                        file: file.to_string(),
                        name,
                        dtype: format!("{other:?}"),
                    });
                }
            };
            let tensor =
                Tensor::from_le_bytes(view.shape().to_vec(), ty, view.data()).map_err(|e| {
                    WeightsError::Format {
                        file: file.to_string(),
                        reason: format!("tensor {name:?}: {e}"),
                    }
                })?;
            if let Some((first, _)) = self.tensors.get(&name) {
                return Err(WeightsError::Duplicate {
                    name,
                    first: first.clone(),
                    second: file.to_string(),
                });
            }
            self.tensors.insert(name, (file.to_string(), tensor));
        }
        Ok(())
    }

    /// The tensor called `name`, sharing its data.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name).map(|(_, tensor)| tensor)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Total bytes held, for the memory report.
    pub fn byte_size(&self) -> usize {
        self.tensors.values().map(|(_, t)| t.byte_size()).sum()
    }
}

/// One node of an ONNX graph, as `edgeplug weights` lists it for a plugin author who ports
/// a model to the `ops` interface.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GraphNode {
    pub name: String,
    pub op: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<String>,
}

/// Extracts every initializer of an ONNX model into safetensors bytes, and lists the graph's
/// nodes so the author can see which weight feeds which op.
pub fn extract_onnx_weights(onnx: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<GraphNode>)> {
    let framework = tract_onnx::onnx();
    let proto = framework.proto_model_for_read(&mut std::io::Cursor::new(onnx))?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("ONNX model has no graph"))?;
    let mut tensors = Vec::new();
    for init in &graph.initializer {
        let t = tract_onnx::tensor::load_tensor(&*framework.provider, init, None)?;
        let tensor = match t.datum_type() {
            tract_onnx::prelude::DatumType::F32 => Tensor::from_f32(
                t.shape().to_vec(),
                t.to_plain_array_view::<f32>()?.iter().copied().collect(),
            )?,
            tract_onnx::prelude::DatumType::I64 => Tensor::from_i64(
                t.shape().to_vec(),
                t.to_plain_array_view::<i64>()?.iter().copied().collect(),
            )?,
            other => anyhow::bail!("initializer {:?} has unsupported type {other:?}", init.name),
        };
        tensors.push((init.name.clone(), tensor));
    }
    let views: Vec<(String, OwnedView)> = tensors
        .into_iter()
        .map(|(name, t)| (name, OwnedView::new(&t)))
        .collect();
    let bytes = safetensors::serialize(views, None)?;
    let nodes = graph
        .node
        .iter()
        .map(|n| GraphNode {
            name: n.name.clone(),
            op: n.op_type.clone(),
            inputs: n.input.clone(),
            outputs: n.output.clone(),
            attributes: n
                .attribute
                .iter()
                .map(|a| {
                    let value = if !a.ints.is_empty() {
                        format!("{:?}", a.ints)
                    } else if !a.floats.is_empty() {
                        format!("{:?}", a.floats)
                    } else if a.r#type == 1 {
                        format!("{}", a.f)
                    } else {
                        format!("{}", a.i)
                    };
                    format!("{}={value}", a.name)
                })
                .collect(),
        })
        .collect();
    Ok((bytes, nodes))
}

struct OwnedView {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl OwnedView {
    fn new(t: &Tensor) -> OwnedView {
        OwnedView {
            dtype: match t.element_type() {
                ElementType::F32 => Dtype::F32,
                ElementType::U8 => Dtype::U8,
                ElementType::I64 => Dtype::I64,
            },
            shape: t.shape().to_vec(),
            bytes: t.to_le_bytes(),
        }
    }
}

impl safetensors::View for OwnedView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

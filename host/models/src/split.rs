//! Cutting an ONNX model in two at a tensor, for split inference: the head (the model's
//! input to the tensor) runs on one device, the tail (the tensor to the model's outputs) on
//! another, and only the tensor crosses the link between them.
//!
//! A cut is possible after node `i` (nodes are in topological order, as ONNX requires) when
//! exactly one tensor produced by nodes `0..=i` is read by a later node or is a graph output:
//! inside a residual block two tensors cross (the block's input and the branch), at the
//! block's end only one. Both halves keep the original opset and the initializers they read;
//! the cut tensor becomes the head's output and the tail's input, typed `float32` with the
//! shape the caller measured (ONNX files rarely carry intermediate shapes).

use std::collections::{HashMap, HashSet};

use anyhow::{Context as _, bail};
use edgeplug_kernels::Tensor;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::type_proto::{self, Value};
use tract_onnx::pb::{GraphProto, ModelProto, TensorShapeProto, TypeProto, ValueInfoProto};

use crate::model::Model;
use tract_onnx::prelude::Framework as _;

/// ONNX's element type code of float32.
const FLOAT: i32 = 1;

/// A place the model can be cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutPoint {
    /// The one tensor that crosses the cut.
    pub tensor: String,
    /// Nodes in the head (the rest are the tail's).
    pub head_nodes: usize,
}

fn read(onnx: &[u8]) -> anyhow::Result<ModelProto> {
    tract_onnx::onnx()
        .proto_model_for_read(&mut std::io::Cursor::new(onnx))
        .context("cannot read the ONNX model")
}

fn graph(model: &ModelProto) -> anyhow::Result<&GraphProto> {
    model.graph.as_ref().context("the model has no graph")
}

/// Every place `onnx` can be cut, in graph order (the cut after the last node, which would
/// leave the tail empty, is not one).
pub fn cut_points(onnx: &[u8]) -> anyhow::Result<Vec<CutPoint>> {
    let model = read(onnx)?;
    let graph = graph(&model)?;
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    // For each tensor, the index of the last node that reads it.
    let mut last_read: HashMap<&str, usize> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for input in node.input.iter().filter(|n| !n.is_empty()) {
            last_read.insert(input.as_str(), i);
        }
    }
    let mut points = Vec::new();
    // Tensors produced so far that something after the current node still needs.
    let mut live: Vec<&str> = Vec::new();
    for (i, node) in graph.node.iter().enumerate().take(graph.node.len() - 1) {
        live.extend(node.output.iter().map(String::as_str));
        live.retain(|t| outputs.contains(t) || last_read.get(t).is_some_and(|&r| r > i));
        // The model's own inputs must not be read past the cut either.
        let input_read_later = graph
            .input
            .iter()
            .any(|v| last_read.get(v.name.as_str()).is_some_and(|&r| r > i));
        if let [tensor] = live[..]
            && !input_read_later
        {
            points.push(CutPoint {
                tensor: tensor.to_string(),
                head_nodes: i + 1,
            });
        }
    }
    Ok(points)
}

/// A float32 tensor's type, with `shape` if known.
fn float_value(name: &str, shape: Option<&[usize]>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(Value::TensorType(type_proto::Tensor {
                elem_type: FLOAT,
                shape: shape.map(|shape| TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d as i64)),
                            ..Dimension::default()
                        })
                        .collect(),
                }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

/// The model restricted to `nodes`, reading `inputs` and giving `outputs`, with the
/// initializers those nodes read.
fn part(
    model: &ModelProto,
    nodes: &[tract_onnx::pb::NodeProto],
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
) -> Vec<u8> {
    let graph = model.graph.as_ref().expect("checked by the caller");
    let read: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let mut out = model.clone();
    out.graph = Some(GraphProto {
        node: nodes.to_vec(),
        initializer: graph
            .initializer
            .iter()
            .filter(|t| read.contains(t.name.as_str()))
            .cloned()
            .collect(),
        input: inputs,
        output: outputs,
        value_info: Vec::new(),
        ..graph.clone()
    });
    prost::Message::encode_to_vec(&out)
}

/// Cuts `onnx` at `tensor` (one of [`cut_points`]), whose shape is `shape`: the head's and
/// the tail's ONNX bytes. Without a shape only the head can be loaded (run it once to learn
/// the shape: [`tensor_shape`]).
pub fn split(
    onnx: &[u8],
    tensor: &str,
    shape: Option<&[usize]>,
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let Some(point) = cut_points(onnx)?.into_iter().find(|p| p.tensor == tensor) else {
        bail!("the model cannot be cut at {tensor:?}: more than one tensor crosses there, or none");
    };
    let model = read(onnx)?;
    let graph = graph(&model)?;
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let model_inputs: Vec<ValueInfoProto> = graph
        .input
        .iter()
        .filter(|v| !initializers.contains(v.name.as_str()))
        .cloned()
        .collect();
    let (head_nodes, tail_nodes) = graph.node.split_at(point.head_nodes);
    let head = part(
        &model,
        head_nodes,
        model_inputs,
        vec![float_value(tensor, shape)],
    );
    let tail = part(
        &model,
        tail_nodes,
        vec![float_value(tensor, shape)],
        graph.output.clone(),
    );
    Ok((head, tail))
}

/// The shape `tensor` has when the model runs on `input`: the head alone, run once.
pub fn tensor_shape(onnx: &[u8], tensor: &str, input: &Tensor) -> anyhow::Result<Vec<usize>> {
    let (head, _) = split(onnx, tensor, None)?;
    let head = Model::load("head", &head)?;
    let out = head.run(&[input])?;
    Ok(out
        .first()
        .context("the head has no output")?
        .shape()
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits() -> Vec<u8> {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::read(repo.join("plugins/digits/digits_cnn.onnx")).unwrap()
    }

    #[test]
    fn a_chain_can_be_cut_after_every_node_and_the_halves_compose() {
        let onnx = digits();
        let points = cut_points(&onnx).unwrap();
        // A plain chain of 22 nodes: a cut after each but the last.
        assert_eq!(points.len(), 21, "{points:?}");
        let whole = Model::load("digits", &onnx).unwrap();
        let input = Tensor::from_f32(
            vec![1, 1, 16, 16],
            (0..256).map(|i| (i % 17) as f32 / 16.0).collect(),
        )
        .unwrap();
        let expected = whole.run(&[&input]).unwrap();
        let expected = expected[0].as_f32().unwrap();
        for point in &points {
            // The head alone first, to learn the cut tensor's shape.
            let shape = tensor_shape(&onnx, &point.tensor, &input).unwrap();
            let (head, tail) = split(&onnx, &point.tensor, Some(&shape)).unwrap();
            let head = Model::load("head", &head).unwrap();
            let tail = Model::load("tail", &tail).unwrap();
            let middle = head.run(&[&input]).unwrap().remove(0);
            let out = tail.run(&[&middle]).unwrap();
            let out = out[0].as_f32().unwrap();
            for (a, b) in out.iter().zip(expected) {
                assert!((a - b).abs() <= 1e-5, "cut at {}: {a} vs {b}", point.tensor);
            }
        }
    }

    #[test]
    fn a_residual_block_is_cut_only_at_its_ends() {
        // x → Relu → a; a → Relu → b; Add(a, b) → c; c → Relu → y
        use tract_onnx::pb::{NodeProto, OperatorSetIdProto};
        let node = |op: &str, inputs: &[&str], output: &str| NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: output.into(),
            ..NodeProto::default()
        };
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(GraphProto {
                node: vec![
                    node("Relu", &["x"], "a"),
                    node("Relu", &["a"], "b"),
                    node("Add", &["a", "b"], "c"),
                    node("Relu", &["c"], "y"),
                ],
                input: vec![float_value("x", Some(&[1, 4]))],
                output: vec![float_value("y", Some(&[1, 4]))],
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        };
        let onnx = prost::Message::encode_to_vec(&model);
        let cuts: Vec<String> = cut_points(&onnx)
            .unwrap()
            .into_iter()
            .map(|p| p.tensor)
            .collect();
        assert_eq!(cuts, ["a", "c"]);
        let e = split(&onnx, "b", Some(&[1, 4])).unwrap_err().to_string();
        assert!(e.contains("cannot be cut"), "{e}");
    }
}

//! Small hand-built ONNX graphs that mix the channels-last convolutions with
//! ops that need NCHW (pooling, concat, broadcasts, model outputs, grouped
//! convolutions), each run on the native backend and on tract with the same
//! random input: the layout conversions must be invisible.

use prost::Message;
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType,
    tensor_shape_proto::{Dimension, dimension::Value as DimValue},
    type_proto::{Tensor as TypeTensor, Value as TypeValue},
};

use super::NativeModel;
use crate::model::Model;
use edgeplug_kernels::{Tensor, testutil};

pub(super) const FLOAT: i32 = 1;

pub(super) fn value_info(name: &str, shape: &[i64]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|&d| Dimension {
            value: Some(DimValue::DimValue(d)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TypeTensor {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub(super) fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

/// Builds graphs node by node, with random weights.
struct Graph {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    seed: u64,
}

impl Graph {
    fn new() -> Graph {
        Graph {
            nodes: Vec::new(),
            inits: Vec::new(),
            seed: 7,
        }
    }

    fn weight(&mut self, name: &str, dims: &[i64], scale: f32) -> String {
        self.seed += 1;
        let n = dims.iter().product::<i64>() as usize;
        self.inits.push(TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: FLOAT,
            float_data: testutil::data(self.seed, n, scale),
            ..Default::default()
        });
        name.into()
    }

    fn node(&mut self, op: &str, inputs: &[&str], out: &str, attrs: Vec<AttributeProto>) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            name: out.into(),
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
        out.into()
    }

    /// A convolution with random weights and bias.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        x: &str,
        out: &str,
        c: i64,
        o: i64,
        k: i64,
        stride: i64,
        pad: i64,
        group: i64,
    ) -> String {
        let w = self.weight(&format!("{out}.w"), &[o, c / group, k, k], 0.3);
        let b = self.weight(&format!("{out}.b"), &[o], 0.1);
        self.node(
            "Conv",
            &[x, &w, &b],
            out,
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[stride, stride]),
                ints("pads", &[pad, pad, pad, pad]),
                int("group", group),
            ],
        )
    }

    fn bytes(self, input: &[i64], outputs: &[(&str, &[i64])]) -> Vec<u8> {
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(GraphProto {
                node: self.nodes,
                name: "g".into(),
                initializer: self.inits,
                input: vec![value_info("x", input)],
                output: outputs.iter().map(|(n, s)| value_info(n, s)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

/// Native and tract agree on a random input, for every output.
fn agrees_with_tract(onnx: &[u8], input: &[usize]) {
    let native = NativeModel::load(onnx).expect("native backend covers the graph");
    let tract = Model::load_with("g", onnx, false).unwrap();
    assert_eq!(tract.backend(), "tract");
    let n: usize = input.iter().product();
    let x = Tensor::from_f32(input.to_vec(), testutil::data(99, n, 1.0)).unwrap();
    let got = native.run(&[&x]).unwrap();
    let want = tract.run(&[&x]).unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.shape(), w.shape());
        testutil::assert_close(g, w).unwrap();
    }
}

#[test]
fn a_convolution_output_is_returned_in_nchw() {
    let mut g = Graph::new();
    let y = g.conv("x", "c1", 3, 8, 3, 1, 1, 1);
    g.node("Relu", &[&y], "y", vec![]);
    agrees_with_tract(
        &g.bytes(&[2, 3, 6, 5], &[("y", &[2, 8, 6, 5])]),
        &[2, 3, 6, 5],
    );
}

#[test]
fn pooling_and_concat_read_convolution_outputs() {
    let mut g = Graph::new();
    let a = g.conv("x", "a", 4, 8, 1, 1, 0, 1);
    let p = g.node(
        "MaxPool",
        &[&a],
        "p",
        vec![
            ints("kernel_shape", &[3, 3]),
            ints("strides", &[1, 1]),
            ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let b = g.conv(&a, "b", 8, 8, 3, 1, 1, 1);
    g.node("Concat", &[&p, &b], "y", vec![int("axis", 1)]);
    agrees_with_tract(
        &g.bytes(&[1, 4, 7, 7], &[("y", &[1, 16, 7, 7])]),
        &[1, 4, 7, 7],
    );
}

#[test]
fn squeeze_and_excitation_broadcasts_over_a_convolution_output() {
    let mut g = Graph::new();
    let a = g.conv("x", "a", 3, 16, 3, 2, 1, 1);
    let m = g.node("GlobalAveragePool", &[&a], "m", vec![]);
    let s = g.conv(&m, "s", 16, 16, 1, 1, 0, 1);
    let s = g.node("Sigmoid", &[&s], "sig", vec![]);
    g.node("Mul", &[&a, &s], "y", vec![]);
    agrees_with_tract(
        &g.bytes(&[1, 3, 9, 9], &[("y", &[1, 16, 5, 5])]),
        &[1, 3, 9, 9],
    );
}

#[test]
fn an_inverted_residual_block_with_a_grouped_convolution_after_it() {
    let mut g = Graph::new();
    let stem = g.conv("x", "stem", 3, 8, 3, 1, 1, 1);
    let e = g.conv(&stem, "expand", 8, 32, 1, 1, 0, 1);
    let e = g.node("Relu", &[&e], "expand.relu", vec![]);
    let d = g.conv(&e, "dw", 32, 32, 3, 1, 1, 32);
    let d = g.node("Relu", &[&d], "dw.relu", vec![]);
    let p = g.conv(&d, "project", 32, 8, 1, 1, 0, 1);
    let r = g.node("Add", &[&p, &stem], "res", vec![]);
    // A residual onto the model input (NCHW) too, and a grouped convolution.
    let r2 = g.conv(&r, "to3", 8, 3, 1, 1, 0, 1);
    let r2 = g.node("Add", &[&r2, "x"], "res2", vec![]);
    g.conv(&r2, "y", 3, 6, 3, 2, 1, 3);
    agrees_with_tract(
        &g.bytes(&[2, 3, 10, 10], &[("y", &[2, 6, 5, 5])]),
        &[2, 3, 10, 10],
    );
}

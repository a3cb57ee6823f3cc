//! The native LSTM and GRU: a naive reference written from the ONNX operator
//! definitions, the packed and fused implementation against it on random
//! layers (property tests), whole ONNX graphs against tract and the
//! reference, and the sunspots forecaster against onnxruntime's outputs.

use std::path::PathBuf;

use proptest::prelude::*;
use prost::Message;
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    ValueInfoProto, attribute_proto::AttributeType,
};

use super::graph_tests::{FLOAT, int as int_attr};
use super::recurrent::{Cell, Direction, Layer, Recurrent};
use super::tests::read_npy_f32;
use super::{NativeError, NativeModel};
use crate::model::Model;
use edgeplug_kernels::fast::Isa;
use edgeplug_kernels::{Tensor, testutil};

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `Y`, `Y_h`, `Y_c` of a layer on `x`, straight from the ONNX definitions
/// (std `exp`/`tanh`, one dot product per gate value, no packing).
pub(super) fn reference(l: &Layer<'_>, x: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (g, h, ni) = (
        match l.cell {
            Cell::Lstm => 4,
            Cell::Gru { .. } => 3,
        },
        l.h,
        l.i,
    );
    let dirs = if l.direction == Direction::Bidirectional {
        2
    } else {
        1
    };
    let (t_len, batch) = (l.t, l.b);
    let mut y = vec![0f32; t_len * dirs * batch * h];
    let mut yh = vec![0f32; dirs * batch * h];
    let mut yc = vec![0f32; dirs * batch * h];
    let state_idx = |d: usize, b: usize| {
        if l.batch_first {
            (b * dirs + d) * h
        } else {
            (d * batch + b) * h
        }
    };
    for d in 0..dirs {
        let reversed = l.direction == Direction::Reverse
            || (l.direction == Direction::Bidirectional && d == 1);
        let w = |gate: usize, j: usize, k: usize| l.w[((d * g + gate) * h + j) * ni + k];
        let r = |gate: usize, j: usize, k: usize| l.r[((d * g + gate) * h + j) * h + k];
        let wb = |gate: usize, j: usize| l.bias.map_or(0.0, |b| b[d * 2 * g * h + gate * h + j]);
        let rb = |gate: usize, j: usize| {
            l.bias
                .map_or(0.0, |b| b[d * 2 * g * h + g * h + gate * h + j])
        };
        let p = |gate: usize, j: usize| l.p.map_or(0.0, |p| p[d * 3 * h + gate * h + j]);
        for b in 0..batch {
            let len = l.seq_lens.as_ref().map_or(t_len, |s| s[b]);
            let s0 = state_idx(d, b);
            let mut hp: Vec<f32> = l.h0.map_or(vec![0.0; h], |v| v[s0..s0 + h].to_vec());
            let mut cp: Vec<f32> = l.c0.map_or(vec![0.0; h], |v| v[s0..s0 + h].to_vec());
            for s in 0..len {
                let t = if reversed { len - 1 - s } else { s };
                let row = if l.batch_first {
                    b * t_len + t
                } else {
                    t * batch + b
                };
                let xt = &x[row * ni..][..ni];
                let xw = |gate: usize, j: usize| {
                    (0..ni).map(|k| xt[k] * w(gate, j, k)).sum::<f32>() + wb(gate, j)
                };
                let hr = |gate: usize, j: usize, hv: &[f32]| {
                    (0..h).map(|k| hv[k] * r(gate, j, k)).sum::<f32>() + rb(gate, j)
                };
                let mut hn = vec![0f32; h];
                match l.cell {
                    Cell::Lstm => {
                        // Gate order i, o, f, c; peepholes i, o, f.
                        let mut cn = vec![0f32; h];
                        for j in 0..h {
                            let i = sigmoid(xw(0, j) + hr(0, j, &hp) + p(0, j) * cp[j]);
                            let f = sigmoid(xw(2, j) + hr(2, j, &hp) + p(2, j) * cp[j]);
                            let c = (xw(3, j) + hr(3, j, &hp)).tanh();
                            cn[j] = f * cp[j] + i * c;
                            let o = sigmoid(xw(1, j) + hr(1, j, &hp) + p(1, j) * cn[j]);
                            hn[j] = o * cn[j].tanh();
                        }
                        cp = cn;
                    }
                    Cell::Gru {
                        linear_before_reset,
                    } => {
                        // Gate order z, r, h.
                        let rg: Vec<f32> =
                            (0..h).map(|j| sigmoid(xw(1, j) + hr(1, j, &hp))).collect();
                        let rh: Vec<f32> = (0..h).map(|k| rg[k] * hp[k]).collect();
                        for j in 0..h {
                            let z = sigmoid(xw(0, j) + hr(0, j, &hp));
                            let n = if linear_before_reset {
                                (xw(2, j) + rg[j] * hr(2, j, &hp)).tanh()
                            } else {
                                (xw(2, j) + hr(2, j, &rh)).tanh()
                            };
                            hn[j] = (1.0 - z) * n + z * hp[j];
                        }
                    }
                }
                hp = hn;
                let yi = if l.batch_first {
                    ((b * t_len + t) * dirs + d) * h
                } else {
                    ((t * dirs + d) * batch + b) * h
                };
                y[yi..yi + h].copy_from_slice(&hp);
            }
            yh[s0..s0 + h].copy_from_slice(&hp);
            yc[s0..s0 + h].copy_from_slice(&cp);
        }
    }
    (y, yh, yc)
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{} length", what);
    for (k, (a, b)) in got.iter().zip(want).enumerate() {
        prop_assert!(
            (a - b).abs() <= tol * b.abs().max(1.0),
            "{what}[{k}]: {a} vs {b}"
        );
    }
    Ok(())
}

fn cells() -> impl Strategy<Value = Cell> {
    prop_oneof![
        Just(Cell::Lstm),
        Just(Cell::Gru {
            linear_before_reset: false
        }),
        Just(Cell::Gru {
            linear_before_reset: true
        }),
    ]
}

fn directions() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::Forward),
        Just(Direction::Reverse),
        Just(Direction::Bidirectional),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    /// The packed, fused layer (every ISA here) equals the naive reference:
    /// every cell, direction and layout, with and without biases,
    /// sequence lengths, initial states and peepholes; hidden sizes across
    /// the 16- and 64-column blocks and their tails. Run twice on the same
    /// slot (first filled with NaN): nothing from a run leaks into the next.
    #[test]
    fn the_fused_layer_matches_the_reference(
        cell in cells(), direction in directions(), batch_first in any::<bool>(),
        t in 1usize..7, b in 1usize..4, i in 1usize..6, h in 1usize..42,
        bias in any::<bool>(), lens in any::<bool>(), h0 in any::<bool>(), c0 in any::<bool>(),
        peep in any::<bool>(), seed in any::<u64>(),
    ) {
        let g = if cell == Cell::Lstm { 4 } else { 3 };
        let dirs = if direction == Direction::Bidirectional { 2 } else { 1 };
        let w = testutil::data(seed, dirs * g * h * i, 0.6);
        let r = testutil::data(seed ^ 1, dirs * g * h * h, 0.6);
        let bv = testutil::data(seed ^ 2, dirs * 2 * g * h, 0.5);
        let h0v = testutil::data(seed ^ 3, dirs * b * h, 0.8);
        let c0v = testutil::data(seed ^ 4, dirs * b * h, 1.5);
        let pv = testutil::data(seed ^ 5, dirs * 3 * h, 0.5);
        let x = testutil::data(seed ^ 6, t * b * i, 1.5);
        let seq_lens = lens.then(|| {
            (0..b).map(|k| 1 + (seed as usize / (k + 1)) % t).collect::<Vec<_>>()
        });
        let lstm = cell == Cell::Lstm;
        let layer = Layer {
            cell, direction, batch_first, t, b, i, h,
            w: &w, r: &r,
            bias: bias.then_some(&bv[..]),
            seq_lens,
            h0: h0.then_some(&h0v[..]),
            c0: (c0 && lstm).then_some(&c0v[..]),
            p: (peep && lstm).then_some(&pv[..]),
        };
        let (y, yh, yc) = reference(&layer, &x);
        let rec = Recurrent::new(&layer, [true; 3]).expect("valid layer");
        let [ry, rh, rc] = rec.outputs();
        for isa in Isa::all_available() {
            let mut slot = vec![f32::NAN; rec.slot_len()];
            for run in 0..2 {
                rec.run(isa, &x, &mut slot);
                let at = |(off, shape): &(usize, Vec<usize>)| {
                    slot[*off..*off + shape.iter().product::<usize>()].to_vec()
                };
                let tag = format!("{isa:?} run {run}");
                close(&format!("Y {tag}"), &at(ry.as_ref().expect("Y")), &y, 2e-5)?;
                close(&format!("Y_h {tag}"), &at(rh.as_ref().expect("Y_h")), &yh, 2e-5)?;
                match &rc {
                    Some(rc) => close(&format!("Y_c {tag}"), &at(rc), &yc, 2e-5)?,
                    None => prop_assert!(!lstm),
                }
            }
        }
    }
}

#[test]
fn layers_that_do_not_fit_are_refused() {
    let w = vec![0f32; 4 * 8 * 3];
    let r = vec![0f32; 4 * 8 * 8];
    let ok = Layer {
        cell: Cell::Lstm,
        direction: Direction::Forward,
        batch_first: false,
        t: 5,
        b: 2,
        i: 3,
        h: 8,
        w: &w,
        r: &r,
        bias: None,
        seq_lens: None,
        h0: None,
        c0: None,
        p: None,
    };
    assert!(Recurrent::new(&ok, [true; 3]).is_ok());
    let long = Layer {
        seq_lens: Some(vec![5, 6]),
        ..ok.clone()
    };
    let err = Recurrent::new(&long, [true; 3]).unwrap_err();
    assert!(err.contains("sequence_lens 6 outside 1..=5"), "{err}");
    let empty = Layer {
        seq_lens: Some(vec![0, 5]),
        ..ok.clone()
    };
    assert!(Recurrent::new(&empty, [true; 3]).is_err());
    let short_r = Layer {
        r: &r[1..],
        ..ok.clone()
    };
    let err = Recurrent::new(&short_r, [true; 3]).unwrap_err();
    assert!(err.contains("LSTM R"), "{err}");
}

// ---- whole ONNX graphs ----

const INT32: i32 = 6;

fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    super::graph_tests::value_info(name, &shape)
}

fn floats(name: &str, dims: &[usize], v: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        float_data: v.to_vec(),
        ..Default::default()
    }
}

fn string_attr(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// One recurrent node with every input given as an initializer, and its
/// three outputs (two for GRU) as the graph's outputs.
struct Node {
    layer_cell: Cell,
    direction: Direction,
    batch_first: bool,
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    seed: u64,
    seq_lens: Option<Vec<usize>>,
    initial: bool,
    extra: Vec<AttributeProto>,
}

struct Built {
    onnx: Vec<u8>,
    w: Vec<f32>,
    r: Vec<f32>,
    bias: Vec<f32>,
    h0: Vec<f32>,
    c0: Vec<f32>,
}

impl Node {
    fn x_shape(&self) -> Vec<usize> {
        if self.batch_first {
            vec![self.b, self.t, self.i]
        } else {
            vec![self.t, self.b, self.i]
        }
    }

    fn build(&self) -> Built {
        let lstm = self.layer_cell == Cell::Lstm;
        let g = if lstm { 4 } else { 3 };
        let dirs = if self.direction == Direction::Bidirectional {
            2
        } else {
            1
        };
        let (h, s) = (self.h, self.seed);
        let w = testutil::data(s, dirs * g * h * self.i, 0.6);
        let r = testutil::data(s ^ 1, dirs * g * h * h, 0.6);
        let bias = testutil::data(s ^ 2, dirs * 2 * g * h, 0.5);
        let h0 = testutil::data(s ^ 3, dirs * self.b * h, 0.8);
        let c0 = testutil::data(s ^ 4, dirs * self.b * h, 1.0);
        let state: Vec<usize> = if self.batch_first {
            vec![self.b, dirs, h]
        } else {
            vec![dirs, self.b, h]
        };
        let mut inits = vec![
            floats("W", &[dirs, g * h, self.i], &w),
            floats("R", &[dirs, g * h, h], &r),
            floats("B", &[dirs, 2 * g * h], &bias),
        ];
        let mut inputs: Vec<String> = ["x", "W", "R", "B"].map(String::from).to_vec();
        match &self.seq_lens {
            Some(l) => {
                inits.push(TensorProto {
                    name: "lens".into(),
                    dims: vec![self.b as i64],
                    data_type: INT32,
                    int32_data: l.iter().map(|&v| v as i32).collect(),
                    ..Default::default()
                });
                inputs.push("lens".into());
            }
            None => inputs.push(String::new()),
        }
        if self.initial {
            inits.push(floats("h0", &state, &h0));
            inputs.push("h0".into());
            if lstm {
                inits.push(floats("c0", &state, &c0));
                inputs.push("c0".into());
            }
        }
        let y_shape: Vec<usize> = if self.batch_first {
            vec![self.b, self.t, dirs, h]
        } else {
            vec![self.t, dirs, self.b, h]
        };
        let mut outputs = vec![value_info("Y", &y_shape), value_info("Y_h", &state)];
        let mut out_names = vec!["Y".to_string(), "Y_h".into()];
        if lstm {
            outputs.push(value_info("Y_c", &state));
            out_names.push("Y_c".into());
        }
        let mut attribute = vec![
            int_attr("hidden_size", h as i64),
            string_attr(
                "direction",
                match self.direction {
                    Direction::Forward => "forward",
                    Direction::Reverse => "reverse",
                    Direction::Bidirectional => "bidirectional",
                },
            ),
            int_attr("layout", self.batch_first as i64),
        ];
        if let Cell::Gru {
            linear_before_reset: true,
        } = self.layer_cell
        {
            attribute.push(int_attr("linear_before_reset", 1));
        }
        attribute.extend(self.extra.iter().cloned());
        let node = NodeProto {
            input: inputs,
            output: out_names,
            name: "rec".into(),
            op_type: (if lstm { "LSTM" } else { "GRU" }).into(),
            attribute,
            ..Default::default()
        };
        let onnx = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 14,
            }],
            graph: Some(GraphProto {
                node: vec![node],
                name: "g".into(),
                initializer: inits,
                input: vec![value_info("x", &self.x_shape())],
                output: outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        Built {
            onnx,
            w,
            r,
            bias,
            h0,
            c0,
        }
    }
}

fn node(cell: Cell, direction: Direction) -> Node {
    Node {
        layer_cell: cell,
        direction,
        batch_first: false,
        t: 6,
        b: 2,
        i: 3,
        h: 20,
        seed: 11,
        seq_lens: None,
        initial: true,
        extra: Vec::new(),
    }
}

const CELLS: [Cell; 3] = [
    Cell::Lstm,
    Cell::Gru {
        linear_before_reset: false,
    },
    Cell::Gru {
        linear_before_reset: true,
    },
];

/// Forward and bidirectional layers, where tract's expansion is exact: the
/// native graph (all outputs) agrees with tract.
#[test]
fn forward_and_bidirectional_graphs_agree_with_tract() {
    for cell in CELLS {
        for direction in [Direction::Forward, Direction::Bidirectional] {
            let n = node(cell, direction);
            let built = n.build();
            let native = NativeModel::load(&built.onnx).expect("native covers the node");
            let tract = Model::load_with("g", &built.onnx, false).unwrap();
            assert_eq!(tract.backend(), "tract");
            let x_shape = n.x_shape();
            let x = Tensor::from_f32(
                x_shape.clone(),
                testutil::data(5, x_shape.iter().product(), 1.5),
            )
            .unwrap();
            let got = native.run(&[&x]).unwrap();
            let want = tract.run(&[&x]).unwrap();
            assert_eq!(got.len(), want.len());
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.shape(), w.shape(), "{cell:?} {direction:?} output {k}");
                let (g, w) = (g.as_f32().unwrap(), w.as_f32().unwrap());
                let diff = g
                    .iter()
                    .zip(w)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(diff <= 2e-5, "{cell:?} {direction:?} output {k}: {diff}");
            }
        }
    }
}

/// What tract does not run (a reverse layer, real sequence lengths, the
/// batch-first layout): the native graph agrees with the reference.
#[test]
fn reverse_batch_first_and_sequence_lengths_agree_with_the_reference() {
    for cell in CELLS {
        for direction in [Direction::Reverse, Direction::Bidirectional] {
            for batch_first in [false, true] {
                let n = Node {
                    batch_first,
                    b: 3,
                    seq_lens: Some(vec![6, 2, 4]),
                    ..node(cell, direction)
                };
                let built = n.build();
                let native = NativeModel::load(&built.onnx).expect("native covers the node");
                let x_shape = n.x_shape();
                let xv = testutil::data(5, x_shape.iter().product(), 1.5);
                let x = Tensor::from_f32(x_shape, xv.clone()).unwrap();
                let got = native.run(&[&x]).unwrap();
                let lstm = cell == Cell::Lstm;
                let layer = Layer {
                    cell,
                    direction,
                    batch_first,
                    t: n.t,
                    b: n.b,
                    i: n.i,
                    h: n.h,
                    w: &built.w,
                    r: &built.r,
                    bias: Some(&built.bias),
                    seq_lens: n.seq_lens.clone(),
                    h0: Some(&built.h0),
                    c0: lstm.then_some(&built.c0[..]),
                    p: None,
                };
                let (y, yh, yc) = reference(&layer, &xv);
                let mut want = vec![(layer.y_shape(), y), (layer.state_shape(), yh)];
                if lstm {
                    want.push((layer.state_shape(), yc));
                }
                assert_eq!(got.len(), want.len());
                for (k, (g, (shape, w))) in got.iter().zip(&want).enumerate() {
                    let what =
                        format!("{cell:?} {direction:?} batch_first {batch_first} output {k}");
                    assert_eq!(g.shape(), shape.as_slice(), "{what}");
                    close(&what, g.as_f32().unwrap(), w, 2e-5).unwrap();
                }
            }
        }
    }
}

/// Attributes the native cell does not implement are refused by name, and
/// the model still loads (on tract).
#[test]
fn unsupported_attributes_fall_back_to_tract() {
    let relu = AttributeProto {
        name: "activations".into(),
        r#type: AttributeType::Strings as i32,
        strings: ["Relu", "Tanh", "Tanh"]
            .map(|s| s.as_bytes().to_vec())
            .to_vec(),
        ..Default::default()
    };
    let clip = AttributeProto {
        name: "clip".into(),
        r#type: AttributeType::Float as i32,
        f: 3.0,
        ..Default::default()
    };
    for (attr, name) in [(relu, "activations"), (clip, "clip")] {
        let n = Node {
            extra: vec![attr],
            ..node(Cell::Lstm, Direction::Forward)
        };
        let built = n.build();
        match NativeModel::load(&built.onnx) {
            Err(NativeError::Unsupported { op, node }) => {
                assert!(op.starts_with("LSTM") && op.contains(name), "{op}");
                assert_eq!(node, "rec");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
        let model = Model::load("g", &built.onnx).unwrap();
        assert_eq!(model.backend(), "tract", "{name}");
    }
    // Default activations spelled out are the defaults.
    let defaults = AttributeProto {
        name: "activations".into(),
        r#type: AttributeType::Strings as i32,
        strings: ["Sigmoid", "Tanh", "Tanh"]
            .map(|s| s.as_bytes().to_vec())
            .to_vec(),
        ..Default::default()
    };
    let n = Node {
        extra: vec![defaults],
        ..node(Cell::Lstm, Direction::Forward)
    };
    assert!(NativeModel::load(&n.build().onnx).is_ok());
}

// ---- the sunspots forecaster ----

fn repo_file(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The forecaster's LSTM on the native backend, on every ISA: the 57
/// held-out forecasts within 1e-4 of onnxruntime's, and RMSE 20.01 against
/// the real sunspot numbers (the figure the fixture README states).
#[test]
fn sunspots_forecasts_match_onnxruntime() {
    let bytes = repo_file("tests/fixtures/models/sunspots_lstm.onnx");
    let (ws, windows) = read_npy_f32(&repo_file(
        "tests/fixtures/models/sunspots_test_windows.npy",
    ));
    let (_, reference) = read_npy_f32(&repo_file(
        "tests/fixtures/models/sunspots_lstm_ref_out.npy",
    ));
    let (_, targets) = read_npy_f32(&repo_file(
        "tests/fixtures/sunspots/sunspots_test_targets.npy",
    ));
    assert_eq!(ws, [57, 24, 1]);
    let model = Model::load("sunspots", &bytes).unwrap();
    assert_eq!(model.backend(), "native");
    for isa in Isa::all_available() {
        let native = NativeModel::load_with_isa(&bytes, isa).unwrap();
        let recurrent = native
            .float_program()
            .steps
            .iter()
            .filter(|s| matches!(s, super::exec::Step::Recurrent { .. }))
            .count();
        assert_eq!(recurrent, 1, "{:#?}", native.float_program().steps);
        let mut max_diff = 0f32;
        let mut sq = 0f64;
        for (k, window) in windows.chunks_exact(24).enumerate() {
            let x = Tensor::from_f32(vec![1, 24, 1], window.to_vec()).unwrap();
            let y = native.run(&[&x]).unwrap();
            assert_eq!(y[0].shape(), [1, 1]);
            let v = y[0].as_f32().unwrap()[0];
            max_diff = max_diff.max((v - reference[k]).abs());
            sq += f64::from(v - targets[k]).powi(2);
        }
        let rmse = (sq / 57.0).sqrt();
        assert!(max_diff <= 1e-4, "{isa:?}: max |Δ| {max_diff}");
        assert!((rmse - 20.01).abs() < 0.005, "{isa:?}: RMSE {rmse}");
    }
}

/// Reverse and bidirectional layers with real sequence lengths and initial
/// states, which tract cannot run: the native graphs against onnxruntime's
/// outputs (`tests/fixtures/recurrent/make_recurrent_fixtures.py`), every
/// output, on every ISA. Also pins the reference's reading of the ONNX
/// definitions (zero `Y` past a row's length, `Y_h` at its last step).
#[test]
fn reverse_and_sequence_length_graphs_match_onnxruntime() {
    for name in [
        "lstm_reverse",
        "lstm_bidirectional",
        "gru_reverse",
        "gru_bidirectional",
        "gru_lbr_bidirectional",
    ] {
        let dir = "tests/fixtures/recurrent";
        let bytes = repo_file(&format!("{dir}/{name}.onnx"));
        let (xs, x) = read_npy_f32(&repo_file(&format!("{dir}/{name}_x.npy")));
        let x = Tensor::from_f32(xs, x).unwrap();
        let outputs = if name.starts_with("lstm") { 3 } else { 2 };
        for isa in Isa::all_available() {
            let native = NativeModel::load_with_isa(&bytes, isa).expect("native covers the node");
            let got = native.run(&[&x]).unwrap();
            assert_eq!(got.len(), outputs, "{name}");
            for (k, g) in got.iter().enumerate() {
                let (ws, w) = read_npy_f32(&repo_file(&format!("{dir}/{name}_out{k}.npy")));
                assert_eq!(g.shape(), ws.as_slice(), "{name} output {k}");
                close(
                    &format!("{name} {isa:?} output {k}"),
                    g.as_f32().unwrap(),
                    &w,
                    1e-5,
                )
                .unwrap();
            }
        }
    }
}

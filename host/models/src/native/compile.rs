//! From ONNX bytes to a [`Program`]: tract parses and types the graph, this
//! module maps each typed node onto a step, folding constants and fusing
//! activations and residual adds into the convolution (or dense) step that
//! produced their input.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::{
    DatumType, Framework, InferenceModelExt, OutletId, TValue, TVec, Tensor as TractTensor,
    TypedModel, TypedNode,
};
use tract_onnx::tract_core::ops::array::{Gather, Pad, PadMode, Slice, TypedConcat};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{
    Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec, SumPool,
};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer, Softmax, SoftmaxKind};
use tract_onnx::tract_core::ops::source::TypedSource;

use super::NativeError;
use super::block;
use super::exec::{BinOp, Ep, Operand, OutputSrc, Program, RedOp, Slot, Step, UnOp};
use crate::model::TensorSpec;
use edgeplug_kernels::fast::{self, DwGeometry, PackedLhs, PackedRhs};
use edgeplug_kernels::{ElementType, Padding, Pool2dParams, Tensor};

pub(super) struct Compiled {
    pub program: Program,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// A value during compilation: a folded constant, or a slot of known shape.
#[derive(Clone, Debug)]
enum Val {
    Const(Arc<TractTensor>),
    Dyn { slot: Slot, shape: Vec<usize> },
}

struct Builder<'m> {
    model: &'m TypedModel,
    vals: HashMap<OutletId, Val>,
    steps: Vec<Step>,
    slot_len: Vec<usize>,
    /// Step that wrote each slot.
    producer: Vec<Option<usize>>,
    /// Outlets the model returns (never fused away or overwritten).
    output_outlets: Vec<OutletId>,
    /// Nodes already compiled.
    done: std::collections::HashSet<usize>,
    /// Whether each slot holds its (logically NCHW) value channels-last,
    /// `[n, h, w, c]`: convolutions read and write that layout.
    channels_last: Vec<bool>,
    /// A channels-last slot's NCHW copy, made once for every reader that
    /// needs it (and the other way round).
    converted: HashMap<Slot, Slot>,
}

fn load_err(e: impl std::fmt::Display) -> NativeError {
    NativeError::Load(format!("{e:#}"))
}

fn unsupported(node: &TypedNode, op: impl Into<String>) -> NativeError {
    NativeError::Unsupported {
        op: op.into(),
        node: node.name.clone(),
    }
}

pub(super) fn compile(proto: &tract_onnx::pb::ModelProto) -> Result<Compiled, NativeError> {
    // LSTM and GRU nodes stay whole (tract would expand them into a Scan).
    let mut framework = tract_onnx::onnx();
    super::recurrent::register(&mut framework.op_register);
    let model = framework
        .model_for_proto_model(proto)
        .map_err(load_err)?
        .into_typed()
        .map_err(load_err)?;
    let output_outlets = model.output_outlets().map_err(load_err)?.to_vec();
    let mut b = Builder {
        model: &model,
        vals: HashMap::new(),
        steps: Vec::new(),
        slot_len: Vec::new(),
        producer: Vec::new(),
        output_outlets,
        done: Default::default(),
        channels_last: Vec::new(),
        converted: HashMap::new(),
    };
    let mut input_slots = Vec::new();
    let mut inputs = Vec::new();
    for &outlet in model.input_outlets().map_err(load_err)? {
        let node = model.node(outlet.node);
        let fact = &node.outputs[outlet.slot].fact;
        let shape = fact
            .shape
            .as_concrete()
            .ok_or_else(|| unsupported(node, "input with a symbolic shape"))?
            .to_vec();
        if fact.datum_type != DatumType::F32 {
            return Err(unsupported(node, format!("{:?} input", fact.datum_type)));
        }
        let slot = b.new_slot(&shape, None);
        input_slots.push(slot);
        inputs.push(TensorSpec {
            name: node.name.clone(),
            element_type: ElementType::F32,
            shape: shape.iter().map(|&d| d as i64).collect(),
        });
        b.vals.insert(outlet, Val::Dyn { slot, shape });
    }
    for id in model.eval_order().map_err(load_err)? {
        let node = model.node(id);
        if node.op_is::<TypedSource>() {
            continue;
        }
        b.node(node)?;
        b.done.insert(id);
    }
    let mut outputs = Vec::new();
    let mut srcs = Vec::new();
    for &outlet in &b.output_outlets.clone() {
        let node = model.node(outlet.node);
        let val = b
            .vals
            .get(&outlet)
            .cloned()
            .ok_or_else(|| unsupported(node, "missing output"))?;
        let (src, shape) = match val {
            Val::Dyn { slot, shape } => {
                let slot = b.nchw(slot, &shape);
                (OutputSrc::Slot(slot, shape.clone()), shape)
            }
            Val::Const(t) => {
                let shape = t.shape().to_vec();
                let data =
                    f32_data(&t).ok_or_else(|| unsupported(node, "non-f32 constant output"))?;
                let t = Tensor::from_f32(shape.clone(), data.to_vec()).map_err(load_err)?;
                (OutputSrc::Const(t), shape)
            }
        };
        srcs.push(src);
        outputs.push(TensorSpec {
            name: node.name.clone(),
            element_type: ElementType::F32,
            shape: shape.iter().map(|&d| d as i64).collect(),
        });
    }
    let steps = block::fuse(b.steps, &srcs);
    let program = Program::new(steps, b.slot_len, input_slots, srcs);
    Ok(Compiled {
        program,
        inputs,
        outputs,
    })
}

/// The f32 values of a constant (cast if it is another numeric type).
fn f32_data(t: &TractTensor) -> Option<Arc<[f32]>> {
    let t = t.cast_to::<f32>().ok()?;
    let view = t.to_plain_array_view::<f32>().ok()?;
    Some(view.iter().copied().collect())
}

/// Whether a 4-D value has one channel or one pixel: then NCHW and
/// channels-last order its values the same way.
fn same_in_both_layouts(shape: &[usize]) -> bool {
    shape.len() == 4 && (shape[1] == 1 || shape[2] * shape[3] == 1)
}

fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Strides of `shape` broadcast to `out` (0 along broadcast axes), after
/// left-padding with ones.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Option<Vec<usize>> {
    if shape.len() > out.len() {
        return None;
    }
    let mut padded = vec![1usize; out.len() - shape.len()];
    padded.extend_from_slice(shape);
    let st = strides_of(&padded);
    padded
        .iter()
        .zip(out)
        .zip(st)
        .map(|((&d, &o), s)| {
            if d == o {
                Some(if d == 1 { 0 } else { s })
            } else if d == 1 {
                Some(0)
            } else {
                None
            }
        })
        .collect()
}

impl Builder<'_> {
    fn new_slot(&mut self, shape: &[usize], producer: Option<usize>) -> Slot {
        self.slot_len.push(shape.iter().product());
        self.producer.push(producer);
        self.channels_last.push(false);
        self.slot_len.len() - 1
    }

    /// `slot` in NCHW: itself, or its converted copy (a layout step emitted
    /// on first use).
    fn nchw(&mut self, slot: Slot, shape: &[usize]) -> Slot {
        if !self.channels_last[slot] || same_in_both_layouts(shape) {
            return slot;
        }
        self.relayout(slot, shape, false)
    }

    /// `slot` (a 4-D value) channels-last: itself, or its converted copy.
    fn nhwc(&mut self, slot: Slot, shape: &[usize]) -> Slot {
        if self.channels_last[slot] || same_in_both_layouts(shape) {
            return slot;
        }
        self.relayout(slot, shape, true)
    }

    fn relayout(&mut self, slot: Slot, shape: &[usize], to_channels_last: bool) -> Slot {
        if let Some(&s) = self.converted.get(&slot) {
            return s;
        }
        let (n, c, hw) = (shape[0], shape[1], shape[2..].iter().product());
        let out = self.new_slot(shape, Some(self.steps.len()));
        self.channels_last[out] = to_channels_last;
        self.steps.push(Step::Layout {
            x: slot,
            out,
            n,
            c,
            hw,
            to_channels_last,
        });
        self.converted.insert(slot, out);
        self.converted.insert(out, slot);
        out
    }

    /// Marks the value the node just bound (a convolution's output) as channels-last.
    fn mark_channels_last(&mut self, node: &TypedNode) {
        if let Some(Val::Dyn { slot, .. }) = self.vals.get(&OutletId::new(node.id, 0)) {
            self.channels_last[*slot] = true;
        }
    }

    /// Marks the value the node just bound as channels-last when `like` is.
    fn keep_layout(&mut self, node: &TypedNode, like: Slot) {
        if let Some(Val::Dyn { slot, .. }) = self.vals.get(&OutletId::new(node.id, 0)) {
            self.channels_last[*slot] = self.channels_last[like];
        }
    }

    /// Appends `step` writing a fresh slot of `shape`; binds it to the node's output 0.
    fn emit(&mut self, node: &TypedNode, shape: Vec<usize>, make: impl FnOnce(Slot) -> Step) {
        let slot = self.new_slot(&shape, Some(self.steps.len()));
        self.steps.push(make(slot));
        self.vals
            .insert(OutletId::new(node.id, 0), Val::Dyn { slot, shape });
    }

    fn alias(&mut self, node: &TypedNode, slot: Slot, shape: Vec<usize>) {
        self.vals
            .insert(OutletId::new(node.id, 0), Val::Dyn { slot, shape });
    }

    fn out_shape(&self, node: &TypedNode) -> Result<Vec<usize>, NativeError> {
        let fact = &node.outputs[0].fact;
        if fact.datum_type != DatumType::F32 {
            return Err(unsupported(
                node,
                format!("{} producing {:?}", node.op.name(), fact.datum_type),
            ));
        }
        fact.shape
            .as_concrete()
            .map(|s| s.to_vec())
            .ok_or_else(|| unsupported(node, "symbolic shape"))
    }

    /// If `slot` was written by the last step and nothing but `node` still
    /// has to read it (through any alias; model outputs are never fused), the
    /// step's index: its epilogue may then absorb `node`.
    fn fusable(&self, node: &TypedNode, slot: Slot) -> Option<usize> {
        let step = self.producer[slot]?;
        if step + 1 != self.steps.len() {
            return None;
        }
        for (outlet, v) in &self.vals {
            if !matches!(v, Val::Dyn { slot: s, .. } if *s == slot) {
                continue;
            }
            if self.output_outlets.contains(outlet) {
                return None;
            }
            let pending = self
                .model
                .outlet_successors(*outlet)
                .iter()
                .any(|inlet| inlet.node != node.id && !self.done.contains(&inlet.node));
            if pending {
                return None;
            }
        }
        Some(step)
    }

    fn node(&mut self, node: &TypedNode) -> Result<(), NativeError> {
        let inputs: Vec<Val> = node
            .inputs
            .iter()
            .map(|o| {
                self.vals
                    .get(o)
                    .cloned()
                    .ok_or_else(|| unsupported(node, "unknown input"))
            })
            .collect::<Result<_, _>>()?;
        if let Some(k) = node.op_as::<Const>() {
            self.vals
                .insert(OutletId::new(node.id, 0), Val::Const(k.val().clone()));
            return Ok(());
        }
        if inputs.iter().all(|v| matches!(v, Val::Const(_))) {
            return self.fold(node, &inputs);
        }
        let name = node.op.name();
        if let Some(conv) = node.op_as::<Conv>() {
            return self.conv(node, conv, &inputs);
        }
        if let Some(op) = node.op_as::<TypedBinOp>() {
            return self.binary(node, op.0.name(), &inputs);
        }
        if let Some(op) = node.op_as::<super::recurrent::RecOp>() {
            return self.recurrent(node, op, &inputs);
        }
        if let Some(op) = node.op_as::<ElementWiseOp>() {
            let un = match op.0.name().as_str() {
                "Sigmoid" => UnOp::Sigmoid,
                "Tanh" => UnOp::Tanh,
                "Exp" => UnOp::Exp,
                "Ln" => UnOp::Ln,
                "Abs" => UnOp::Abs,
                "Neg" => UnOp::Neg,
                "Sqrt" => UnOp::Sqrt,
                "Rsqrt" => UnOp::Rsqrt,
                "Recip" => UnOp::Recip,
                "Square" => UnOp::Square,
                "HardSwish" => UnOp::HardSwish,
                "LeakyRelu" => {
                    let lr =
                        op.0.downcast_ref::<tract_onnx::tract_core::ops::nn::LeakyRelu>()
                            .ok_or_else(|| unsupported(node, "LeakyRelu"))?;
                    UnOp::LeakyRelu(lr.alpha)
                }
                other => return Err(unsupported(node, other.to_string())),
            };
            return self.unary(node, un, &inputs[0]);
        }
        if let Some(op) = node.op_as::<AxisOp>() {
            return self.axis_op(node, op, &inputs[0]);
        }
        if let Some(op) = node.op_as::<Cast>() {
            if op.to != DatumType::F32 {
                return Err(unsupported(node, format!("Cast to {:?}", op.to)));
            }
            let (slot, shape) = self.dyn_input(node, &inputs[0])?;
            self.alias(node, slot, shape);
            return Ok(());
        }
        if let Some(op) = node.op_as::<EinSum>() {
            return self.einsum(node, op, &inputs);
        }
        if let Some(op) = node.op_as::<Reduce>() {
            return self.reduce(node, op, &inputs[0]);
        }
        if let Some(op) = node.op_as::<Softmax>() {
            if op.quant_output_dt.is_some() || op.axes.len() != 1 {
                return Err(unsupported(node, "Softmax (quantized or multi-axis)"));
            }
            let (x, shape) = self.dyn_input(node, &inputs[0])?;
            let axis = op.axes[0];
            let outer = shape[..axis].iter().product();
            let inner = shape[axis + 1..].iter().product();
            let len = shape[axis];
            let log = op.kind == SoftmaxKind::LogSoftmax;
            self.emit(node, shape, |out| Step::Softmax {
                x,
                out,
                outer,
                len,
                inner,
                log,
            });
            return Ok(());
        }
        if let Some(op) = node.op_as::<TypedConcat>() {
            let shape = self.out_shape(node)?;
            let outer: usize = shape[..op.axis].iter().product();
            let mut parts = Vec::new();
            for v in &inputs {
                let (operand, vshape) = self.operand(node, v)?;
                if vshape.len() != shape.len() {
                    return Err(unsupported(node, "Concat of mixed ranks"));
                }
                parts.push((operand, vshape[op.axis..].iter().product()));
            }
            self.emit(node, shape, |out| Step::Concat { parts, out, outer });
            return Ok(());
        }
        if let Some(op) = node.op_as::<Slice>() {
            let (x, in_shape) = self.dyn_input(node, &inputs[0])?;
            let (Ok(start), Ok(end)) = (op.start.to_i64(), op.end.to_i64()) else {
                return Err(unsupported(node, "Slice with symbolic bounds"));
            };
            let shape = self.out_shape(node)?;
            let axis = op.axis;
            let (outer, inner) = (
                in_shape[..axis].iter().product(),
                in_shape[axis + 1..].iter().product(),
            );
            let (start, end) = (start.max(0) as usize, end.max(0) as usize);
            let len = end.saturating_sub(start);
            let axis_len = in_shape[axis];
            self.emit(node, shape, |out| Step::Slice {
                x,
                out,
                outer,
                axis: axis_len,
                inner,
                start,
                len,
            });
            return Ok(());
        }
        if let Some(op) = node.op_as::<Gather>() {
            let (x, in_shape) = self.dyn_input(node, &inputs[0])?;
            let Val::Const(idx) = &inputs[1] else {
                return Err(unsupported(node, "Gather with computed indices"));
            };
            let idx = idx.cast_to::<i64>().map_err(load_err)?;
            let idx: Vec<i64> = idx
                .to_plain_array_view::<i64>()
                .map_err(load_err)?
                .iter()
                .copied()
                .collect();
            if idx.len() != 1 {
                return Err(unsupported(node, "Gather of several indices"));
            }
            let axis_len = in_shape[op.axis];
            let i = if idx[0] < 0 {
                idx[0] + axis_len as i64
            } else {
                idx[0]
            };
            if i < 0 || i as usize >= axis_len {
                return Err(load_err(format!("Gather index {} out of range", idx[0])));
            }
            let shape = self.out_shape(node)?;
            let (outer, inner) = (
                in_shape[..op.axis].iter().product(),
                in_shape[op.axis + 1..].iter().product(),
            );
            self.emit(node, shape, |out| Step::Slice {
                x,
                out,
                outer,
                axis: axis_len,
                inner,
                start: i as usize,
                len: 1,
            });
            return Ok(());
        }
        if let Some(op) = node.op_as::<MaxPool>() {
            if op.with_index_outputs.is_some() {
                return Err(unsupported(node, "MaxPool with indices"));
            }
            return self.pool(node, &op.pool_spec, true, false, &inputs[0]);
        }
        if let Some(op) = node.op_as::<SumPool>() {
            if !op.normalize {
                return Err(unsupported(node, "SumPool (unnormalized)"));
            }
            return self.pool(node, &op.pool_spec, false, op.count_include_pad, &inputs[0]);
        }
        if let Some(op) = node.op_as::<Pad>() {
            let PadMode::Constant(v) = &op.mode else {
                return Err(unsupported(node, format!("Pad mode {:?}", op.mode)));
            };
            let value = f32_data(v).and_then(|d| d.first().copied()).unwrap_or(0.0);
            let (x, in_shape) = self.dyn_input(node, &inputs[0])?;
            let shape = self.out_shape(node)?;
            let pads = op.pads.clone();
            self.emit(node, shape, |out| Step::Pad {
                x,
                out,
                in_shape,
                pads,
                value,
            });
            return Ok(());
        }
        Err(unsupported(node, name.to_string()))
    }

    /// Evaluates a node whose inputs are all constants with tract itself.
    fn fold(&mut self, node: &TypedNode, inputs: &[Val]) -> Result<(), NativeError> {
        let values: TVec<TValue> = inputs
            .iter()
            .map(|v| match v {
                Val::Const(t) => TValue::from_const(t.clone()),
                Val::Dyn { .. } => unreachable!("all inputs are constants"),
            })
            .collect();
        let outs = node
            .op
            .eval_out_of_plan(values)
            .map_err(|e| unsupported(node, format!("constant {} ({e})", node.op.name())))?
            .ok_or_else(|| unsupported(node, format!("constant {}", node.op.name())))?;
        for (i, v) in outs.into_iter().enumerate() {
            self.vals.insert(
                OutletId::new(node.id, i),
                Val::Const(Arc::new((*v).clone())),
            );
        }
        Ok(())
    }

    /// A dynamic input in NCHW (converted if it is channels-last).
    fn dyn_input(&mut self, node: &TypedNode, v: &Val) -> Result<(Slot, Vec<usize>), NativeError> {
        match v {
            Val::Dyn { slot, shape } => Ok((self.nchw(*slot, shape), shape.clone())),
            Val::Const(_) => Err(unsupported(
                node,
                format!("{} with a constant data input", node.op.name()),
            )),
        }
    }

    /// An operand in NCHW (converted if it is channels-last).
    fn operand(&mut self, node: &TypedNode, v: &Val) -> Result<(Operand, Vec<usize>), NativeError> {
        match v {
            Val::Dyn { slot, shape } => Ok((Operand::Slot(self.nchw(*slot, shape)), shape.clone())),
            Val::Const(t) => {
                let data = f32_data(t).ok_or_else(|| unsupported(node, "non-numeric constant"))?;
                Ok((Operand::Const(data), t.shape().to_vec()))
            }
        }
    }

    fn conv(&mut self, node: &TypedNode, conv: &Conv, inputs: &[Val]) -> Result<(), NativeError> {
        let ps = &conv.pool_spec;
        if conv.q_params.is_some() {
            return Err(unsupported(node, "quantized Conv"));
        }
        if ps.data_format != DataFormat::NCHW
            || conv.kernel_fmt != KernelFormat::OIHW
            || ps.kernel_shape.len() != 2
        {
            return Err(unsupported(node, "Conv other than 2-D NCHW/OIHW"));
        }
        // Not `dyn_input`: the layout is chosen below.
        let Some(Val::Dyn {
            slot: x,
            shape: in_shape,
        }) = inputs.first().cloned()
        else {
            return Err(unsupported(node, "Conv with a constant input"));
        };
        let (Some(Val::Const(kernel)), Some(Val::Const(bias_t))) = (inputs.get(1), inputs.get(2))
        else {
            return Err(unsupported(node, "Conv with computed weights"));
        };
        let kernel_data = f32_data(kernel).ok_or_else(|| unsupported(node, "Conv weights"))?;
        let &[n, c, h, w] = in_shape.as_slice() else {
            return Err(unsupported(node, "Conv input of rank != 4"));
        };
        let &[o, cpg, kh, kw] = kernel.shape() else {
            return Err(unsupported(node, "Conv kernel of rank != 4"));
        };
        let groups = conv.group;
        if groups == 0 || cpg * groups != c || o % groups != 0 {
            return Err(load_err(format!("Conv {}: bad groups", node.name)));
        }
        let bias_data = f32_data(bias_t).ok_or_else(|| unsupported(node, "Conv bias"))?;
        let bias: Vec<f32> = match bias_data.len() {
            0 => vec![0.0; o],
            1 => vec![bias_data[0]; o],
            l if l == o => bias_data.to_vec(),
            _ => return Err(unsupported(node, "Conv bias shape")),
        };
        let stride = ps.strides.as_ref().map_or([1, 1], |s| [s[0], s[1]]);
        let dilation = ps.dilations.as_ref().map_or([1, 1], |s| [s[0], s[1]]);
        let pad = conv_padding(&ps.padding, [h, w], [kh, kw], stride, dilation)
            .ok_or_else(|| unsupported(node, "Conv padding"))?;
        let shape = self.out_shape(node)?;
        let geom = DwGeometry::new(cpg, h, w, [kh, kw], stride, dilation, pad)
            .ok_or_else(|| load_err(format!("Conv {}: no output", node.name)))?;
        if shape != [n, o, geom.oh, geom.ow] {
            return Err(unsupported(
                node,
                format!(
                    "Conv output {shape:?} (tract) vs {:?}",
                    [n, o, geom.oh, geom.ow]
                ),
            ));
        }
        let ep = Ep::default();
        let depthwise = groups == c && o == c;
        if groups != 1 && !depthwise {
            let x = self.nchw(x, &in_shape);
            let opg = o / groups;
            let k = cpg * kh * kw;
            let wp = (0..groups)
                .map(|g| PackedLhs::pack(&kernel_data[g * opg * k..][..opg * k], opg, k))
                .collect();
            self.emit(node, shape, |out| Step::Im2col {
                x,
                out,
                batch: n,
                geom,
                w: wp,
                bias,
                ep,
            });
            return Ok(());
        }
        let pointwise =
            kh == 1 && kw == 1 && stride == [1, 1] && pad == Padding::default() && groups == 1;
        if groups == 1 && !pointwise && !self.channels_last[x] {
            // An NCHW input (the model's, typically): read in place.
            let w = PackedRhs::pack_transposed(&kernel_data, o, c * kh * kw);
            self.emit(node, shape, |out| Step::ConvNchw {
                x,
                out,
                batch: n,
                geom,
                w,
                bias,
                ep,
            });
            self.mark_channels_last(node);
            return Ok(());
        }
        let x = self.nhwc(x, &in_shape);
        if pointwise {
            self.emit(node, shape, |out| Step::Pointwise {
                x,
                out,
                pixels: n * h * w,
                w: PackedRhs::pack_transposed(&kernel_data, o, c),
                bias,
                ep,
            });
        } else if depthwise {
            let geom = DwGeometry { c, ..geom };
            let wv = fast::depthwise_nhwc_weights(&kernel_data, c, kh * kw);
            self.emit(node, shape, |out| Step::Depthwise {
                x,
                out,
                batch: n,
                geom,
                w: wv.as_slice().into(),
                bias,
                ep,
            });
        } else {
            // ONNX [o, c, kh, kw] → [(ky, kx, c), o], the patch rows' order.
            let k = c * kh * kw;
            let mut wt = vec![0f32; k * o];
            for oc in 0..o {
                for ic in 0..c {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            wt[((ky * kw + kx) * c + ic) * o + oc] =
                                kernel_data[((oc * c + ic) * kh + ky) * kw + kx];
                        }
                    }
                }
            }
            self.emit(node, shape, |out| Step::ConvRows {
                x,
                out,
                batch: n,
                geom,
                w: PackedRhs::pack(&wt, k, o),
                bias,
                ep,
            });
        }
        self.mark_channels_last(node);
        Ok(())
    }

    fn binary(&mut self, node: &TypedNode, op: &str, inputs: &[Val]) -> Result<(), NativeError> {
        let bop = match op {
            "Add" => BinOp::Add,
            "Sub" => BinOp::Sub,
            "Mul" => BinOp::Mul,
            "Div" => BinOp::Div,
            "Max" => BinOp::Max,
            "Min" => BinOp::Min,
            "Pow" => BinOp::Pow,
            other => return Err(unsupported(node, other.to_string())),
        };
        let shape = self.out_shape(node)?;
        // A constant scalar on one side.
        let scalar = |v: &Val| match v {
            Val::Const(t) if t.len() == 1 => f32_data(t).map(|d| d[0]),
            _ => None,
        };
        // Clamps: fuse into the producing kernel, else a unary step.
        if matches!(bop, BinOp::Max | BinOp::Min) {
            for (di, si) in [(0, 1), (1, 0)] {
                if let (Val::Dyn { slot, shape: s }, Some(cst)) = (&inputs[di], scalar(&inputs[si]))
                {
                    if *s != shape {
                        continue;
                    }
                    let (slot, s) = (*slot, s.clone());
                    if let Some(step) = self.fusable(node, slot) {
                        let ep = self.steps[step].ep_mut();
                        if let Some(ep) = ep {
                            let (lo, hi) = match bop {
                                BinOp::Max => (ep.lo.max(cst), ep.hi),
                                _ => (ep.lo, ep.hi.min(cst)),
                            };
                            if lo <= hi {
                                ep.lo = lo;
                                ep.hi = hi;
                                self.alias(node, slot, s);
                                return Ok(());
                            }
                        }
                    }
                    let un = match bop {
                        BinOp::Max => UnOp::Clamp(cst, f32::INFINITY),
                        _ => UnOp::Clamp(f32::NEG_INFINITY, cst),
                    };
                    let len = s.iter().product();
                    self.emit(node, shape, |out| Step::Unary {
                        op: un,
                        x: slot,
                        out,
                        len,
                    });
                    self.keep_layout(node, slot);
                    return Ok(());
                }
            }
        }
        if bop == BinOp::Add {
            // Residual add onto a kernel output that has no clamp yet.
            if let (Val::Dyn { slot: a, shape: sa }, Val::Dyn { slot: b, shape: sb }) =
                (&inputs[0], &inputs[1])
                && *sa == shape
                && *sb == shape
            {
                for (fused, other) in [(*a, *b), (*b, *a)] {
                    if self.channels_last[fused] != self.channels_last[other] {
                        continue;
                    }
                    if let Some(step) = self.fusable(node, fused)
                        && let Some(ep) = self.steps[step].ep_mut()
                        && ep.residual.is_none()
                        && ep.lo == f32::NEG_INFINITY
                        && ep.hi == f32::INFINITY
                    {
                        ep.residual = Some(other);
                        self.alias(node, fused, shape);
                        return Ok(());
                    }
                }
            }
            // Bias add onto a dense or conv output: a constant along the channel axis.
            for (di, ci) in [(0, 1), (1, 0)] {
                if let (Val::Dyn { slot, shape: s }, Val::Const(t)) = (&inputs[di], &inputs[ci]) {
                    if *s != shape {
                        continue;
                    }
                    let slot = *slot;
                    let Some(step) = self.fusable(node, slot) else {
                        continue;
                    };
                    let Some(cst) = f32_data(t) else { continue };
                    if let Some(bias) = fusable_bias(&mut self.steps[step], t.shape(), &shape, &cst)
                    {
                        bias.iter_mut()
                            .zip(cst.iter().cycle())
                            .for_each(|(b, c)| *b += c);
                        self.alias(node, slot, shape);
                        return Ok(());
                    }
                }
            }
        }
        if matches!(bop, BinOp::Div | BinOp::Mul) {
            // Mean = sum, then divide by the count: fold into the reduction.
            if let (Val::Dyn { slot, .. }, Some(cst)) = (&inputs[0], scalar(&inputs[1])) {
                let slot = *slot;
                if let Some(step) = self.fusable(node, slot)
                    && let Step::Reduce { scale, .. } = &mut self.steps[step]
                {
                    *scale *= if bop == BinOp::Div { 1.0 / cst } else { cst };
                    self.alias(node, slot, shape);
                    return Ok(());
                }
            }
        }
        // Two channels-last values of the output's shape: element-wise in place.
        if let (Val::Dyn { slot: a, shape: sa }, Val::Dyn { slot: b, shape: sb }) =
            (&inputs[0], &inputs[1])
            && *sa == shape
            && *sb == shape
            && self.channels_last[*a]
            && self.channels_last[*b]
        {
            let (a, b) = (*a, *b);
            let strides = strides_of(&shape);
            let sh = shape.clone();
            self.emit(node, shape, |out| Step::Binary {
                op: bop,
                a: Operand::Slot(a),
                b: Operand::Slot(b),
                out,
                shape: sh,
                a_strides: strides.clone(),
                b_strides: strides,
            });
            self.keep_layout(node, a);
            return Ok(());
        }
        let (a, ash) = self.operand(node, &inputs[0])?;
        let (b, bsh) = self.operand(node, &inputs[1])?;
        let (Some(a_strides), Some(b_strides)) = (
            broadcast_strides(&ash, &shape),
            broadcast_strides(&bsh, &shape),
        ) else {
            return Err(unsupported(
                node,
                format!("{op} broadcast {ash:?} {bsh:?} -> {shape:?}"),
            ));
        };
        let sh = shape.clone();
        self.emit(node, shape, |out| Step::Binary {
            op: bop,
            a,
            b,
            out,
            shape: sh,
            a_strides,
            b_strides,
        });
        Ok(())
    }

    /// Element-wise, so in whatever layout the input has.
    fn unary(&mut self, node: &TypedNode, op: UnOp, v: &Val) -> Result<(), NativeError> {
        let Val::Dyn { slot: x, shape } = v else {
            return Err(unsupported(node, "unary op on a constant"));
        };
        let (x, shape) = (*x, shape.clone());
        let len = shape.iter().product();
        self.emit(node, shape, |out| Step::Unary { op, x, out, len });
        self.keep_layout(node, x);
        Ok(())
    }

    fn axis_op(&mut self, node: &TypedNode, op: &AxisOp, v: &Val) -> Result<(), NativeError> {
        let (x, in_shape) = self.dyn_input(node, v)?;
        let shape = self.out_shape(node)?;
        if let AxisOp::Move(from, to) = *op {
            let mut perm: Vec<usize> = (0..in_shape.len()).collect();
            let a = perm.remove(from);
            perm.insert(to, a);
            // Only a real move of data needs a copy: the non-unit axes must keep their order.
            let order: Vec<usize> = perm.iter().copied().filter(|&a| in_shape[a] != 1).collect();
            if !order.windows(2).all(|w| w[0] < w[1]) {
                self.emit(node, shape, |out| Step::Transpose {
                    x,
                    out,
                    in_shape,
                    perm,
                });
                return Ok(());
            }
        }
        self.alias(node, x, shape);
        Ok(())
    }

    fn einsum(&mut self, node: &TypedNode, op: &EinSum, inputs: &[Val]) -> Result<(), NativeError> {
        if op.q_params.is_some() || inputs.len() != 2 {
            return Err(unsupported(node, "quantized EinSum"));
        }
        let expr = format!("{}", op.axes);
        let (lhs, out_axes) = expr
            .split_once("->")
            .ok_or_else(|| unsupported(node, format!("EinSum {expr}")))?;
        let (a_axes, b_axes) = lhs
            .split_once(',')
            .ok_or_else(|| unsupported(node, format!("EinSum {expr}")))?;
        let (a_axes, b_axes, out_axes): (Vec<char>, Vec<char>, Vec<char>) = (
            a_axes.chars().collect(),
            b_axes.chars().collect(),
            out_axes.chars().collect(),
        );
        let (Val::Dyn { slot: x, shape: xs }, Val::Const(wt)) = (&inputs[0], &inputs[1]) else {
            return Err(unsupported(
                node,
                format!("EinSum {expr} with computed weights"),
            ));
        };
        // x: [.., k] (k last), w: 2-D holding k and n, out: x's axes without k, then n.
        let k_axis = *a_axes.last().ok_or_else(|| unsupported(node, "EinSum"))?;
        let ok = b_axes.len() == 2
            && b_axes.contains(&k_axis)
            && !out_axes.contains(&k_axis)
            && a_axes.iter().filter(|&&a| a == k_axis).count() == 1;
        if !ok {
            return Err(unsupported(node, format!("EinSum {expr}")));
        }
        let n_axis = if b_axes[0] == k_axis {
            b_axes[1]
        } else {
            b_axes[0]
        };
        let mut want: Vec<char> = a_axes[..a_axes.len() - 1].to_vec();
        want.push(n_axis);
        if want != out_axes {
            return Err(unsupported(node, format!("EinSum {expr}")));
        }
        let wd = f32_data(wt).ok_or_else(|| unsupported(node, "EinSum weights"))?;
        let (k, n) = (
            *xs.last().unwrap_or(&1),
            if b_axes[0] == k_axis {
                wt.shape()[1]
            } else {
                wt.shape()[0]
            },
        );
        // Weights as row-major [n, k].
        let w: Vec<f32> = if b_axes[0] == k_axis {
            let mut t = vec![0f32; n * k];
            for kk in 0..k {
                for nn in 0..n {
                    t[nn * k + kk] = wd[kk * n + nn];
                }
            }
            t
        } else {
            wd.to_vec()
        };
        let rows = xs[..xs.len() - 1].iter().product();
        let shape = self.out_shape(node)?;
        let x = *x;
        let bias = vec![0f32; n];
        self.emit(node, shape, |out| Step::Dense {
            x,
            out,
            rows,
            k,
            n,
            w,
            w_bf16: None,
            bias,
            ep: Ep::default(),
        });
        Ok(())
    }

    fn reduce(&mut self, node: &TypedNode, op: &Reduce, v: &Val) -> Result<(), NativeError> {
        let red = match op.reducer {
            Reducer::Sum => RedOp::Sum,
            Reducer::Max => RedOp::Max,
            Reducer::Min => RedOp::Min,
            other => return Err(unsupported(node, format!("Reduce {other:?}"))),
        };
        let mut axes: Vec<usize> = op.axes.to_vec();
        axes.sort_unstable();
        // Global pooling of a channels-last image: reduce over the pixels
        // with the channels innermost; the result, one value per channel,
        // is the same in both layouts.
        let (x, outer, len, inner) = match v {
            Val::Dyn {
                slot,
                shape: in_shape,
            } if self.channels_last[*slot] && in_shape.len() == 4 && axes == [2, 3] => {
                (*slot, in_shape[0], in_shape[2] * in_shape[3], in_shape[1])
            }
            _ => {
                let (x, in_shape) = self.dyn_input(node, v)?;
                if axes.is_empty() || axes.windows(2).any(|w| w[1] != w[0] + 1) {
                    return Err(unsupported(node, "Reduce over non-contiguous axes"));
                }
                let (first, last) = (axes[0], axes[axes.len() - 1]);
                (
                    x,
                    in_shape[..first].iter().product(),
                    in_shape[first..=last].iter().product(),
                    in_shape[last + 1..].iter().product(),
                )
            }
        };
        let shape = self.out_shape(node)?;
        self.emit(node, shape, |out| Step::Reduce {
            op: red,
            x,
            out,
            outer,
            len,
            inner,
            scale: 1.0,
        });
        Ok(())
    }

    fn pool(
        &mut self,
        node: &TypedNode,
        ps: &PoolSpec,
        max: bool,
        count_include_pad: bool,
        v: &Val,
    ) -> Result<(), NativeError> {
        if ps.data_format != DataFormat::NCHW || ps.kernel_shape.len() != 2 {
            return Err(unsupported(node, "pool other than 2-D NCHW"));
        }
        let (x, in_shape) = self.dyn_input(node, v)?;
        if in_shape.len() != 4 {
            return Err(unsupported(node, "pool input of rank != 4"));
        }
        let kernel = [ps.kernel_shape[0], ps.kernel_shape[1]];
        let stride = ps.strides.as_ref().map_or([1, 1], |s| [s[0], s[1]]);
        let dilation = ps.dilations.as_ref().map_or([1, 1], |s| [s[0], s[1]]);
        let ceil_mode = matches!(ps.padding, PaddingSpec::ExplicitOnnxPool(_, _, true));
        let padding = conv_padding(
            &ps.padding,
            [in_shape[2], in_shape[3]],
            kernel,
            stride,
            dilation,
        )
        .ok_or_else(|| unsupported(node, "pool padding"))?;
        let params = Pool2dParams {
            kernel,
            stride,
            padding,
            dilation,
            count_include_pad,
            ceil_mode,
        };
        let shape = self.out_shape(node)?;
        // Check the kernel agrees with tract on the output shape.
        let probe = Tensor::zeros(in_shape.clone()).map_err(load_err)?;
        let y = if max {
            edgeplug_kernels::max_pool2d(&probe, &params)
        } else {
            edgeplug_kernels::avg_pool2d(&probe, &params)
        }
        .map_err(|e| unsupported(node, format!("pool ({e})")))?;
        if y.shape() != shape.as_slice() {
            return Err(unsupported(node, "pool output shape"));
        }
        self.emit(node, shape, |out| Step::Pool {
            x,
            out,
            in_shape,
            params,
            max,
        });
        Ok(())
    }
}

/// The step's bias, if a constant of `cshape` added to the step's output of
/// `out_shape` is exactly one value per output channel (dense: the last
/// axis; conv: axis 1).
fn fusable_bias<'s>(
    step: &'s mut Step,
    cshape: &[usize],
    out_shape: &[usize],
    cst: &[f32],
) -> Option<&'s mut Vec<f32>> {
    let rank = out_shape.len();
    let nontrivial: Vec<usize> = {
        let pad = rank.checked_sub(cshape.len())?;
        (0..cshape.len())
            .filter(|&i| cshape[i] != 1)
            .map(|i| i + pad)
            .collect()
    };
    let (bias, channel_axis) = match step {
        Step::Dense { bias, ep, .. }
            if ep.residual.is_none() && ep.lo == f32::NEG_INFINITY && ep.hi == f32::INFINITY =>
        {
            (bias, rank - 1)
        }
        Step::Pointwise { bias, ep, .. }
        | Step::Depthwise { bias, ep, .. }
        | Step::ConvRows { bias, ep, .. }
        | Step::Im2col { bias, ep, .. }
            if ep.residual.is_none()
                && ep.lo == f32::NEG_INFINITY
                && ep.hi == f32::INFINITY
                && rank == 4 =>
        {
            (bias, 1)
        }
        _ => return None,
    };
    let ok = match nontrivial.as_slice() {
        [] => cst.len() == 1,
        [a] => *a == channel_axis && cst.len() == bias.len(),
        _ => false,
    };
    ok.then_some(bias)
}

/// Explicit padding of a conv or pool, from tract's spec.
fn conv_padding(
    spec: &PaddingSpec,
    input: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
) -> Option<Padding> {
    match spec {
        PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, _) => {
            (b.len() == 2 && a.len() == 2).then(|| Padding {
                top: b[0],
                left: b[1],
                bottom: a[0],
                right: a[1],
            })
        }
        PaddingSpec::Valid => Some(Padding::default()),
        PaddingSpec::SameUpper => Padding::same_upper(input, kernel, stride, dilation).ok(),
        PaddingSpec::SameLower => Padding::same_upper(input, kernel, stride, dilation)
            .ok()
            .map(|p| Padding {
                top: p.bottom,
                bottom: p.top,
                left: p.right,
                right: p.left,
            }),
    }
}

impl Builder<'_> {
    /// An LSTM or GRU node: one [`Step::Recurrent`] whose slot holds every
    /// output and its scratch; `Y_h` is at its start (bound in place, the
    /// readers taking the first values of the slot), another output that
    /// something reads, or a model output, is copied out of it.
    fn recurrent(
        &mut self,
        node: &TypedNode,
        op: &super::recurrent::RecOp,
        inputs: &[Val],
    ) -> Result<(), NativeError> {
        let refuse = |e: String| unsupported(node, format!("{} ({e})", op.describe()));
        let Some(Val::Dyn {
            slot: x,
            shape: x_shape,
        }) = inputs.first().cloned()
        else {
            return Err(refuse("constant X".into()));
        };
        let x = self.nchw(x, &x_shape);
        let consts: Vec<Option<Arc<TractTensor>>> = inputs
            .iter()
            .map(|v| match v {
                Val::Const(t) => Some(t.clone()),
                Val::Dyn { .. } => None,
            })
            .collect();
        let w_shape = match inputs.get(1) {
            Some(Val::Const(t)) => t.shape().to_vec(),
            _ => return Err(refuse("computed W".into())),
        };
        let used: Vec<bool> = (0..node.outputs.len())
            .map(|i| {
                let outlet = OutletId::new(node.id, i);
                self.output_outlets.contains(&outlet)
                    || !self.model.outlet_successors(outlet).is_empty()
            })
            .collect();
        let wanted = op.outputs.map(|o| o.is_some_and(|i| used[i]));
        let rec = op
            .compile(&x_shape, &w_shape, &consts, wanted)
            .map_err(refuse)?;
        let regions = rec.outputs();
        let out = self.new_slot(&[rec.slot_len()], Some(self.steps.len()));
        self.steps.push(Step::Recurrent {
            x,
            out,
            rec: Box::new(rec),
        });
        for (region, index) in regions.into_iter().zip(op.outputs) {
            let (Some((offset, shape)), Some(index)) = (region, index) else {
                continue;
            };
            if !used[index] {
                continue;
            }
            let outlet = OutletId::new(node.id, index);
            // A model output is returned whole from its slot: it gets a copy.
            if offset == 0 && !self.output_outlets.contains(&outlet) {
                self.vals.insert(outlet, Val::Dyn { slot: out, shape });
                continue;
            }
            let len: usize = shape.iter().product();
            let copy = self.new_slot(&shape, Some(self.steps.len()));
            self.steps.push(Step::Slice {
                x: out,
                out: copy,
                outer: 1,
                axis: offset + len,
                inner: 1,
                start: offset,
                len,
            });
            self.vals.insert(outlet, Val::Dyn { slot: copy, shape });
        }
        Ok(())
    }
}

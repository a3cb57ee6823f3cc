//! From an ONNX QDQ graph to a [`QProgram`].
//!
//! Reads the ONNX protobuf itself rather than tract's typed graph: tract
//! lowers a per-channel DequantizeLinear into float arithmetic (cast, sub,
//! mul) and folds it into an `f32` weight, and the integers and scales that
//! the int8 kernels need are gone by then.
//!
//! The walk keeps, per ONNX value, what it is: a `u8` tensor in a slot, the
//! DequantizeLinear view of one (`Deq`, no step), a quantized constant, or a
//! float operation waiting for the QuantizeLinear that fixes its output scale
//! (`Pending`): that QuantizeLinear emits the int8 step, with the
//! requantization fused into its store. Anything else is
//! [`NativeError::Unsupported`], and the model runs on tract as before.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::pb::{ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::{DatumType, Tensor as TractTensor};

use super::program::{
    ByteSlot, FloatSlot, OwnedRequant, QOutput, QProgram, QStep, Qp, requantize_table,
};

// Children of this module (they extend its `Builder`), kept in files of
// their own beside it.
#[path = "float_tail.rs"]
mod float_tail;
#[path = "qoperator.rs"]
mod qoperator;
use crate::model::TensorSpec;
use crate::native::NativeError;
use edgeplug_kernels::fast::DwGeometry;
use edgeplug_kernels::fast::int8::{self, AddQuant, PackedI8};
use edgeplug_kernels::{ElementType, Padding};

pub(crate) struct Compiled {
    pub program: QProgram,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// Whether a graph is quantized in the QDQ or QOperator form: it has a
/// QuantizeLinear, and its weights are integers.
pub(crate) fn is_quantized(model: &ModelProto) -> bool {
    model.graph.as_ref().is_some_and(|g| {
        g.node
            .iter()
            .any(|n| n.op_type == "QuantizeLinear" || n.op_type.starts_with("QLinear"))
    })
}

/// A quantized constant: DequantizeLinear of an initializer.
#[derive(Debug)]
struct QConst {
    data: QData,
    shape: Vec<usize>,
    /// One scale, or one per index of `axis`.
    scale: Vec<f32>,
    zero: Vec<i32>,
    axis: usize,
}

#[derive(Debug)]
enum QData {
    I8(Vec<i8>),
    I32(Vec<i32>),
    Other(DatumType),
}

impl QConst {
    fn scale_at(&self, j: usize) -> f32 {
        self.scale[if self.scale.len() == 1 { 0 } else { j }]
    }
}

/// A float operation whose output quantization the next QuantizeLinear gives.
#[derive(Debug, Clone)]
struct Pending {
    op: PendingOp,
    /// Logical (ONNX) output shape.
    shape: Vec<usize>,
    /// Clamp of the real output (from a fused Relu or Clip).
    lo: f32,
    hi: f32,
}

#[derive(Debug, Clone)]
enum PendingOp {
    Conv {
        x: ByteSlot,
        xq: Qp,
        w: Arc<QConst>,
        bias: Option<Val>,
        geom: DwGeometry,
        batch: usize,
        group: usize,
    },
    Gemm {
        x: ByteSlot,
        xq: Qp,
        m: usize,
        w: Arc<QConst>,
        /// Whether `w` is `[n, k]` (Gemm's `transB`) rather than `[k, n]`.
        w_transposed: bool,
        bias: Option<Val>,
    },
    Add {
        a: (ByteSlot, Qp),
        b: (ByteSlot, Qp),
    },
    AvgPool {
        x: ByteSlot,
        xq: Qp,
        batch: usize,
        pixels: usize,
        c: usize,
    },
    /// A Relu or Clip of a dequantized value (QOperator graphs keep them
    /// between a QLinearConv's DequantizeLinear and the next
    /// QuantizeLinear): a requantization whose store clamps.
    Requant { x: ByteSlot, xq: Qp },
}

#[derive(Debug, Clone)]
enum Val {
    /// `f32` values (a model input, or a dequantized value), ONNX layout.
    Float {
        slot: FloatSlot,
        shape: Vec<usize>,
    },
    /// A QuantizeLinear output: `u8`, channels-last when of rank 4 (its
    /// quantization is what the DequantizeLinear reading it says).
    Bytes {
        slot: ByteSlot,
        shape: Vec<usize>,
    },
    /// The DequantizeLinear view of `u8` values (no step of its own).
    Deq {
        slot: ByteSlot,
        shape: Vec<usize>,
        qp: Qp,
    },
    Const(Arc<TractTensor>),
    QConst(Arc<QConst>),
    Pending(Arc<Pending>),
}

struct Builder<'m> {
    framework: &'m tract_onnx::Onnx,
    node: &'m NodeProto,
    vals: HashMap<String, Val>,
    steps: Vec<QStep>,
    byte_len: Vec<usize>,
    float_len: Vec<usize>,
}

fn unsupported(node: &NodeProto, what: impl Into<String>) -> NativeError {
    NativeError::Unsupported {
        op: what.into(),
        node: node.name.clone(),
    }
}

fn load_err(e: impl std::fmt::Display) -> NativeError {
    NativeError::Load(format!("{e:#}"))
}

/// A constant's value, through `framework`'s data resolver (made once per compile: building
/// tract's ONNX op register for every initializer cost MobileNetV2's load its ~300 times).
fn load_tensor(framework: &tract_onnx::Onnx, t: &TensorProto) -> Result<TractTensor, NativeError> {
    tract_onnx::tensor::load_tensor(&*framework.provider, t, None).map_err(load_err)
}

pub(crate) fn compile(model: &ModelProto) -> Result<Compiled, NativeError> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| NativeError::Load("the model has no graph".into()))?;
    let framework = tract_onnx::onnx();
    let mut vals = HashMap::new();
    for init in &graph.initializer {
        vals.insert(
            init.name.clone(),
            Val::Const(Arc::new(load_tensor(&framework, init)?)),
        );
    }
    let placeholder = NodeProto::default();
    let mut b = Builder {
        framework: &framework,
        node: &placeholder,
        vals,
        steps: Vec::new(),
        byte_len: Vec::new(),
        float_len: Vec::new(),
    };
    let mut inputs = Vec::new();
    let mut input_slots = Vec::new();
    for input in &graph.input {
        if b.vals.contains_key(&input.name) {
            continue; // an initializer listed as an input (old exporters)
        }
        let shape = value_shape(input).ok_or_else(|| NativeError::Unsupported {
            op: "an input without a fixed f32 shape".into(),
            node: input.name.clone(),
        })?;
        let slot = b.new_float(&shape);
        input_slots.push(slot);
        inputs.push(TensorSpec {
            name: input.name.clone(),
            element_type: ElementType::F32,
            shape: shape.iter().map(|&d| d as i64).collect(),
        });
        b.vals
            .insert(input.name.clone(), Val::Float { slot, shape });
    }
    // ONNX graphs list their nodes in topological order.
    for node in &graph.node {
        b.node = node;
        b.node(node)?;
    }
    let mut outputs = Vec::new();
    let mut output_srcs = Vec::new();
    for out in &graph.output {
        let v = b.get(&out.name)?;
        let (slot, shape) = b.float(v)?;
        outputs.push(TensorSpec {
            name: out.name.clone(),
            element_type: ElementType::F32,
            shape: shape.iter().map(|&d| d as i64).collect(),
        });
        output_srcs.push(QOutput { slot, shape });
    }
    Ok(Compiled {
        program: QProgram::new(b.steps, b.byte_len, b.float_len, input_slots, output_srcs),
        inputs,
        outputs,
    })
}

/// A graph input's shape, if it is `f32` with fixed dimensions.
fn value_shape(v: &tract_onnx::pb::ValueInfoProto) -> Option<Vec<usize>> {
    use tract_onnx::pb::type_proto::Value;
    let Some(Value::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    if t.elem_type != 1 {
        return None; // not FLOAT
    }
    t.shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match d.value {
            Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(n)) if n > 0 => {
                Some(n as usize)
            }
            _ => None,
        })
        .collect()
}

/// `[n, c, hw]` of a logical shape: rank-4 images keep their channels apart
/// (stored channels-last); anything else is one flat row per batch item,
/// where both layouts coincide.
fn image_dims(shape: &[usize]) -> (usize, usize, usize) {
    match shape {
        [n, c, h, w] => (*n, *c, h * w),
        [n, rest @ ..] => (*n, rest.iter().product(), 1),
        [] => (1, 1, 1),
    }
}

fn as_u8_zero(t: &TractTensor) -> Option<u8> {
    if t.datum_type() != DatumType::U8 || t.len() != 1 {
        return None;
    }
    values::<u8>(t).ok()?.first().copied()
}

/// A constant's values as `T` (cast if stored as another type), in order.
fn values<T: tract_onnx::prelude::Datum + Copy>(t: &TractTensor) -> Result<Vec<T>, NativeError> {
    let t = t.cast_to::<T>().map_err(load_err)?;
    let view = t.to_plain_array_view::<T>().map_err(load_err)?;
    Ok(view.iter().copied().collect())
}

impl Builder<'_> {
    fn new_bytes(&mut self, shape: &[usize]) -> ByteSlot {
        self.byte_len.push(shape.iter().product());
        self.byte_len.len() - 1
    }

    fn new_float(&mut self, shape: &[usize]) -> FloatSlot {
        self.float_len.push(shape.iter().product());
        self.float_len.len() - 1
    }

    fn get(&self, name: &str) -> Result<Val, NativeError> {
        self.vals
            .get(name)
            .cloned()
            .ok_or_else(|| unsupported(self.node, format!("an input {name:?} no node gives")))
    }

    fn input(&self, node: &NodeProto, i: usize) -> Result<Option<Val>, NativeError> {
        match node.input.get(i).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(name) => self.get(name).map(Some),
        }
    }

    fn required(&self, node: &NodeProto, i: usize) -> Result<Val, NativeError> {
        self.input(node, i)?
            .ok_or_else(|| unsupported(node, format!("{} without input {i}", node.op_type)))
    }

    fn set(&mut self, node: &NodeProto, v: Val) {
        if let Some(name) = node.output.first() {
            self.vals.insert(name.clone(), v);
        }
    }

    /// A float view of `v`, dequantizing it into a float slot if needed.
    fn float(&mut self, v: Val) -> Result<(FloatSlot, Vec<usize>), NativeError> {
        match v {
            Val::Float { slot, shape } => Ok((slot, shape)),
            Val::Deq { slot, shape, qp } => {
                let out = self.new_float(&shape);
                let (n, c, hw) = image_dims(&shape);
                self.steps.push(QStep::Dequantize {
                    x: slot,
                    out,
                    n,
                    c,
                    hw,
                    qp,
                    lo: f32::NEG_INFINITY,
                    hi: f32::INFINITY,
                });
                Ok((out, shape))
            }
            Val::Pending(p) => self.pending_float(&p),
            _ => Err(unsupported(
                self.node,
                "a float value that is not a dequantized tensor",
            )),
        }
    }

    /// The scale and `u8` zero point of a Quantize/DequantizeLinear node
    /// with per-tensor parameters.
    fn tensor_qp(&self, node: &NodeProto) -> Result<Qp, NativeError> {
        self.qp_at(node, 1, 2)
    }

    /// Per-tensor `u8` quantization from the scale at input `scale_i` and
    /// the zero point at input `zero_i` (absent: 0).
    fn qp_at(&self, node: &NodeProto, scale_i: usize, zero_i: usize) -> Result<Qp, NativeError> {
        let Some(Val::Const(scale)) = self.input(node, scale_i)? else {
            return Err(unsupported(
                node,
                "a quantization scale that is not constant",
            ));
        };
        let scale = scale
            .cast_to_scalar::<f32>()
            .map_err(|_| unsupported(node, "per-channel activation quantization"))?;
        let zero = match self.input(node, zero_i)? {
            None => 0,
            Some(Val::Const(z)) => as_u8_zero(&z)
                .ok_or_else(|| unsupported(node, "activations quantized other than to uint8"))?,
            Some(_) => return Err(unsupported(node, "a zero point that is not constant")),
        };
        if !(scale.is_finite() && scale > 0.0) {
            return Err(NativeError::Load(format!(
                "node {:?}: quantization scale {scale} is not positive",
                node.name
            )));
        }
        Ok(Qp { scale, zero })
    }

    fn node(&mut self, node: &NodeProto) -> Result<(), NativeError> {
        match node.op_type.as_str() {
            "Constant" => {
                let t = node
                    .attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| unsupported(node, "Constant without a tensor value"))?;
                let t = load_tensor(self.framework, t)?;
                self.set(node, Val::Const(Arc::new(t)));
            }
            "QuantizeLinear" => self.quantize(node)?,
            "DequantizeLinear" => self.dequantize(node)?,
            "Conv" => self.conv(node)?,
            "Gemm" | "MatMul" => self.gemm(node)?,
            "Add" => {
                let (a, b) = (self.required(node, 0)?, self.required(node, 1)?);
                let (
                    Val::Deq {
                        slot: sa,
                        shape: ha,
                        qp: qa,
                    },
                    Val::Deq {
                        slot: sb,
                        shape: hb,
                        qp: qb,
                    },
                ) = (a, b)
                else {
                    return Err(unsupported(
                        node,
                        "Add of values that are not both quantized",
                    ));
                };
                if ha != hb {
                    return Err(unsupported(node, "Add with broadcasting"));
                }
                self.pending(
                    node,
                    PendingOp::Add {
                        a: (sa, qa),
                        b: (sb, qb),
                    },
                    ha,
                );
            }
            "GlobalAveragePool" => {
                let v = self.required(node, 0)?;
                let Val::Deq { slot, shape, qp } = v else {
                    return self.float_avg_pool(node, v);
                };
                let [n, c, h, w] = shape[..] else {
                    return Err(unsupported(node, "GlobalAveragePool of rank other than 4"));
                };
                let op = PendingOp::AvgPool {
                    x: slot,
                    xq: qp,
                    batch: n,
                    pixels: h * w,
                    c,
                };
                self.pending(node, op, vec![n, c, 1, 1]);
            }
            "Flatten" | "Reshape" => self.reshape(node)?,
            "Relu" | "Clip" => self.clamp(node)?,
            "QLinearConv" => self.qlinear_conv(node)?,
            "QLinearMatMul" => self.qlinear_matmul(node)?,
            "QGemm" => self.qgemm(node)?,
            "QLinearAdd" => self.qlinear_add(node)?,
            "QLinearGlobalAveragePool" => self.qlinear_avg_pool(node)?,
            "Softmax" => {
                let v = self.required(node, 0)?;
                let (x, shape) = self.float(v)?;
                let axis = attr_int(node, "axis").unwrap_or(-1);
                let rank = shape.len() as i64;
                if axis != -1 && axis != rank - 1 {
                    return Err(unsupported(node, "Softmax on an axis other than the last"));
                }
                let cols = *shape.last().unwrap_or(&1);
                let rows = shape.iter().product::<usize>() / cols.max(1);
                let out = self.new_float(&shape);
                self.steps.push(QStep::Softmax { x, out, rows, cols });
                self.set(node, Val::Float { slot: out, shape });
            }
            other => return Err(unsupported(node, other)),
        }
        Ok(())
    }

    fn pending(&mut self, node: &NodeProto, op: PendingOp, shape: Vec<usize>) {
        let p = Pending {
            op,
            shape,
            lo: f32::NEG_INFINITY,
            hi: f32::INFINITY,
        };
        self.set(node, Val::Pending(Arc::new(p)));
    }

    fn quantize(&mut self, node: &NodeProto) -> Result<(), NativeError> {
        let qp = self.tensor_qp(node)?;
        let v = match self.required(node, 0)? {
            Val::Float { slot, shape } => {
                let out = self.new_bytes(&shape);
                let (n, c, hw) = image_dims(&shape);
                self.steps.push(QStep::Quantize {
                    x: slot,
                    out,
                    n,
                    c,
                    hw,
                    qp,
                });
                Val::Bytes { slot: out, shape }
            }
            Val::Deq {
                slot,
                shape,
                qp: from,
            } if from == qp => Val::Bytes { slot, shape },
            Val::Deq {
                slot,
                shape,
                qp: from,
            } => {
                let out = self.new_bytes(&shape);
                self.steps.push(QStep::Requantize {
                    x: slot,
                    out,
                    table: requantize_table(from, qp, 0, 255),
                });
                Val::Bytes { slot: out, shape }
            }
            Val::Pending(p) => self.emit(node, &p, qp)?,
            _ => return Err(unsupported(node, "QuantizeLinear of this value")),
        };
        self.set(node, v);
        Ok(())
    }

    fn dequantize(&mut self, node: &NodeProto) -> Result<(), NativeError> {
        let v = match self.required(node, 0)? {
            Val::Bytes { slot, shape, .. } => Val::Deq {
                slot,
                shape,
                qp: self.tensor_qp(node)?,
            },
            Val::Const(t) => {
                let axis = attr_int(node, "axis").unwrap_or(1);
                Val::QConst(Arc::new(self.quantized_const(node, &t, 1, 2, axis)?))
            }
            _ => return Err(unsupported(node, "DequantizeLinear of this value")),
        };
        self.set(node, v);
        Ok(())
    }

    /// Constant `t` with the scales at input `scale_i` and zero points at
    /// input `zero_i` of `node`, per index of `axis` when more than one.
    fn quantized_const(
        &self,
        node: &NodeProto,
        t: &TractTensor,
        scale_i: usize,
        zero_i: usize,
        axis: i64,
    ) -> Result<QConst, NativeError> {
        let consts = |i: usize| -> Result<Option<Arc<TractTensor>>, NativeError> {
            match self.input(node, i)? {
                None => Ok(None),
                Some(Val::Const(c)) => Ok(Some(c)),
                Some(_) => Err(unsupported(
                    node,
                    "quantization parameters that are not constant",
                )),
            }
        };
        let scale = consts(scale_i)?
            .ok_or_else(|| unsupported(node, format!("{} without a scale", node.op_type)))?;
        let scale: Vec<f32> = values(&scale)?;
        let zero: Vec<i32> = match consts(zero_i)? {
            None => vec![0],
            Some(z) => values(&z)?,
        };
        let rank = t.rank() as i64;
        let axis = if axis < 0 { axis + rank } else { axis }.max(0) as usize;
        let along = t.shape().get(axis).copied().unwrap_or(1);
        for len in [scale.len(), zero.len()] {
            if len != 1 && len != along {
                return Err(NativeError::Load(format!(
                    "node {:?}: {len} quantization parameters for an axis of {along}",
                    node.name
                )));
            }
        }
        let data = match t.datum_type() {
            DatumType::I8 => QData::I8(values(t)?),
            DatumType::I32 => QData::I32(values(t)?),
            other => QData::Other(other),
        };
        Ok(QConst {
            data,
            shape: t.shape().to_vec(),
            scale,
            zero,
            axis,
        })
    }

    fn conv(&mut self, node: &NodeProto) -> Result<(), NativeError> {
        let Val::Deq { slot, shape, qp } = self.required(node, 0)? else {
            return Err(unsupported(node, "Conv of a float input"));
        };
        let Val::QConst(w) = self.required(node, 1)? else {
            return Err(unsupported(node, "Conv with float weights"));
        };
        let bias = self.input(node, 2)?;
        let (op, out_shape) = conv_op(node, slot, &shape, qp, w, bias)?;
        self.pending(node, op, out_shape);
        Ok(())
    }

    fn gemm(&mut self, node: &NodeProto) -> Result<(), NativeError> {
        let x = self.required(node, 0)?;
        let w = self.required(node, 1)?;
        let (Val::Deq { slot, shape, qp }, Val::QConst(w)) = (&x, &w) else {
            if let Val::Const(w) = w {
                return self.float_gemm(node, x, &w);
            }
            return Err(unsupported(node, "Gemm of float values and int8 weights"));
        };
        let bias = if node.op_type == "Gemm" {
            self.input(node, 2)?
        } else {
            None
        };
        let (op, out_shape) = gemm_op(node, *slot, shape, *qp, w.clone(), bias)?;
        self.pending(node, op, out_shape);
        Ok(())
    }

    /// Flatten or Reshape of a dequantized value where channels-last and
    /// ONNX order coincide (one pixel per image, or one channel), or of a
    /// float value: no step.
    fn reshape(&mut self, node: &NodeProto) -> Result<(), NativeError> {
        // What the reshaped value is: `u8` (channels-last) as a QOperator
        // graph's Flatten sees it, dequantized `u8`, or `f32` (ONNX layout,
        // where any reshape is free).
        enum Kind {
            Bytes,
            Deq(Qp),
            Float,
        }
        let (slot, shape, kind) = match self.required(node, 0)? {
            Val::Bytes { slot, shape } => (slot, shape, Kind::Bytes),
            Val::Deq { slot, shape, qp } => (slot, shape, Kind::Deq(qp)),
            Val::Float { slot, shape } => (slot, shape, Kind::Float),
            v @ Val::Pending(_) => {
                let (slot, shape) = self.float(v)?;
                (slot, shape, Kind::Float)
            }
            _ => {
                return Err(unsupported(node, format!("{} of this value", node.op_type)));
            }
        };
        let total: usize = shape.iter().product();
        let new_shape = if node.op_type == "Flatten" {
            let axis = attr_int(node, "axis").unwrap_or(1);
            let axis = if axis < 0 {
                axis + shape.len() as i64
            } else {
                axis
            }
            .clamp(0, shape.len() as i64) as usize;
            let outer: usize = shape[..axis].iter().product();
            vec![outer, total / outer.max(1)]
        } else {
            let Some(Val::Const(target)) = self.input(node, 1)? else {
                return Err(unsupported(node, "Reshape to a shape that is not constant"));
            };
            let target: Vec<i64> = values(&target)?;
            let known: usize = target
                .iter()
                .enumerate()
                .map(|(i, &d)| match d {
                    0 => shape.get(i).copied().unwrap_or(1),
                    -1 => 1,
                    d => d.max(1) as usize,
                })
                .product();
            target
                .iter()
                .enumerate()
                .map(|(i, &d)| match d {
                    0 => shape.get(i).copied().unwrap_or(1),
                    -1 => total / known.max(1),
                    d => d.max(0) as usize,
                })
                .collect()
        };
        if new_shape.iter().product::<usize>() != total {
            return Err(NativeError::Load(format!(
                "node {:?}: cannot reshape {shape:?} to {new_shape:?}",
                node.name
            )));
        }
        let (_, c, hw) = image_dims(&shape);
        let reorders = shape.len() == 4 && c > 1 && hw > 1 && new_shape != shape;
        if reorders && !matches!(kind, Kind::Float) {
            return Err(unsupported(
                node,
                "a reshape that reorders a channels-last image",
            ));
        }
        let shape = new_shape;
        let v = match kind {
            Kind::Bytes => Val::Bytes { slot, shape },
            Kind::Deq(qp) => Val::Deq { slot, shape, qp },
            Kind::Float => Val::Float { slot, shape },
        };
        self.set(node, v);
        Ok(())
    }

    /// Relu or Clip on an operation's float output narrows the clamp of its
    /// requantizing store.
    fn clamp(&mut self, node: &NodeProto) -> Result<(), NativeError> {
        let p = match self.required(node, 0)? {
            Val::Pending(p) => p,
            Val::Deq { slot, shape, qp } => Arc::new(Pending {
                op: PendingOp::Requant { x: slot, xq: qp },
                shape,
                lo: f32::NEG_INFINITY,
                hi: f32::INFINITY,
            }),
            _ => {
                return Err(unsupported(
                    node,
                    format!("{} of a float value", node.op_type),
                ));
            }
        };
        let (mut lo, mut hi) = (0.0f32, f32::INFINITY);
        if node.op_type == "Clip" {
            let bound = |i: usize, attr: &str, default: f32| -> Result<f32, NativeError> {
                match self.input(node, i)? {
                    Some(Val::Const(t)) => t.cast_to_scalar::<f32>().map_err(load_err),
                    Some(_) => Err(unsupported(node, "Clip with bounds that are not constant")),
                    None => Ok(attr_float(node, attr).unwrap_or(default)),
                }
            };
            lo = bound(1, "min", f32::NEG_INFINITY)?;
            hi = bound(2, "max", f32::INFINITY)?;
        }
        // A copy: another reader of the unclamped value emits its own step.
        let mut p = (*p).clone();
        p.lo = p.lo.max(lo);
        p.hi = p.hi.min(hi);
        self.set(node, Val::Pending(Arc::new(p)));
        Ok(())
    }

    /// The int8 step for operation `p` with output quantization `out`.
    fn emit(&mut self, node: &NodeProto, p: &Pending, out: Qp) -> Result<Val, NativeError> {
        let slot = self.new_bytes(&p.shape);
        let z = f32::from(out.zero);
        // The real clamp as bytes: what a Relu or Clip left of [0, 255].
        let to_byte = |v: f32| (v / out.scale).round_ties_even() + z;
        let lo = to_byte(p.lo).clamp(0.0, 255.0) as u8;
        let hi = to_byte(p.hi).clamp(0.0, 255.0) as u8;
        let step = match &p.op {
            PendingOp::Conv {
                x,
                xq,
                w,
                bias,
                geom,
                batch,
                group,
            } => {
                let o = w.shape[0];
                let rq = self.requant(node, *xq, w, bias.as_ref(), o, out, lo, hi)?;
                let weights = weights_i8(node, w)?;
                let taps = geom.kh * geom.kw;
                if *group == 1 {
                    let pointwise =
                        taps == 1 && geom.stride == [1, 1] && geom.pad == Padding::default();
                    if pointwise {
                        QStep::Gemm {
                            x: *x,
                            out: slot,
                            m: batch * geom.h * geom.w,
                            a_zero: xq.zero,
                            w: PackedI8::pack_transposed(weights, o, geom.c),
                            rq,
                        }
                    } else {
                        let hwc = int8::dense_weights_hwc(weights, o, geom.c, taps);
                        QStep::Conv {
                            x: *x,
                            out: slot,
                            batch: *batch,
                            geom: *geom,
                            a_zero: xq.zero,
                            w: PackedI8::pack_transposed(&hwc, o, taps * geom.c),
                            rq,
                        }
                    }
                } else if *group == geom.c && o == geom.c {
                    QStep::Depthwise {
                        x: *x,
                        out: slot,
                        batch: *batch,
                        geom: *geom,
                        a_zero: xq.zero,
                        w: int8::depthwise_u8_weights(weights, geom.c, taps),
                        rq,
                    }
                } else {
                    return Err(unsupported(
                        node,
                        "a grouped int8 convolution that is not depthwise",
                    ));
                }
            }
            PendingOp::Gemm {
                x,
                xq,
                m,
                w,
                w_transposed,
                bias,
            } => {
                let (k, n) = if *w_transposed {
                    (w.shape[1], w.shape[0])
                } else {
                    (w.shape[0], w.shape[1])
                };
                let out_axis = usize::from(!*w_transposed);
                if w.scale.len() > 1 && w.axis != out_axis {
                    return Err(unsupported(
                        node,
                        "weights quantized along their input axis",
                    ));
                }
                let rq = self.requant(node, *xq, w, bias.as_ref(), n, out, lo, hi)?;
                let weights = weights_i8(node, w)?;
                let packed = if *w_transposed {
                    PackedI8::pack_transposed(weights, n, k)
                } else {
                    PackedI8::pack(weights, k, n)
                };
                QStep::Gemm {
                    x: *x,
                    out: slot,
                    m: *m,
                    a_zero: xq.zero,
                    w: packed,
                    rq,
                }
            }
            PendingOp::Add { a, b } => QStep::Add {
                a: a.0,
                b: b.0,
                out: slot,
                q: AddQuant {
                    a_scale: a.1.scale / out.scale,
                    a_zero: a.1.zero,
                    b_scale: b.1.scale / out.scale,
                    b_zero: b.1.zero,
                    zero: out.zero,
                    lo,
                    hi,
                },
            },
            PendingOp::AvgPool {
                x,
                xq,
                batch,
                pixels,
                c,
            } => {
                if (lo, hi) != (0, 255) {
                    return Err(unsupported(node, "an activation after an average pool"));
                }
                QStep::AvgPool {
                    x: *x,
                    out: slot,
                    batch: *batch,
                    pixels: *pixels,
                    c: *c,
                    a_zero: xq.zero,
                    scale: xq.scale / (out.scale * *pixels as f32),
                    zero: out.zero,
                }
            }
            PendingOp::Requant { x, xq } => QStep::Requantize {
                x: *x,
                out: slot,
                table: requantize_table(*xq, out, lo, hi),
            },
        };
        self.steps.push(step);
        Ok(Val::Bytes {
            slot,
            shape: p.shape.clone(),
        })
    }

    /// Multipliers and `i32` bias of an int8 GEMM or convolution with `n`
    /// output channels: `acc · s_x · s_w[j] / s_y`, the bias in the
    /// accumulator's units (re-scaled if the quantizer stored it in others).
    #[allow(clippy::too_many_arguments)]
    fn requant(
        &self,
        node: &NodeProto,
        xq: Qp,
        w: &QConst,
        bias: Option<&Val>,
        n: usize,
        out: Qp,
        lo: u8,
        hi: u8,
    ) -> Result<OwnedRequant, NativeError> {
        if w.zero.iter().any(|&z| z != 0) {
            return Err(unsupported(
                node,
                "asymmetric int8 weights (a nonzero weight zero point)",
            ));
        }
        if w.scale.len() != 1 && w.scale.len() != n {
            return Err(unsupported(node, "weights quantized along another axis"));
        }
        let acc_scale: Vec<f32> = (0..n).map(|j| xq.scale * w.scale_at(j)).collect();
        let bias = match bias {
            None => vec![0; n],
            Some(Val::QConst(b)) => {
                let QData::I32(q) = &b.data else {
                    return Err(unsupported(node, "a bias quantized other than to int32"));
                };
                if q.len() != n {
                    return Err(NativeError::Load(format!(
                        "node {:?}: {} biases for {n} outputs",
                        node.name,
                        q.len()
                    )));
                }
                (0..n)
                    .map(|j| {
                        let zero = b.zero[if b.zero.len() == 1 { 0 } else { j }];
                        let real =
                            (i64::from(q[j]) - i64::from(zero)) as f64 * f64::from(b.scale_at(j));
                        let acc = real / f64::from(acc_scale[j]);
                        acc.round().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
                    })
                    .collect()
            }
            Some(Val::Const(t)) => {
                let b: Vec<f32> = values(t)?;
                if b.len() != n {
                    return Err(NativeError::Load(format!(
                        "node {:?}: {} biases for {n} outputs",
                        node.name,
                        b.len()
                    )));
                }
                b.iter()
                    .zip(&acc_scale)
                    .map(|(&v, &s)| (f64::from(v) / f64::from(s)).round() as i32)
                    .collect()
            }
            Some(_) => return Err(unsupported(node, "a bias that is not constant")),
        };
        Ok(OwnedRequant {
            scale: acc_scale.iter().map(|s| s / out.scale).collect(),
            bias,
            zero: out.zero,
            lo,
            hi,
        })
    }
}

/// The int8 convolution of `u8` value `slot` (logical shape `shape`,
/// quantized as `qp`) by weights `w`, from `node`'s attributes, and its
/// output shape: shared by Conv (QDQ) and QLinearConv.
fn conv_op(
    node: &NodeProto,
    slot: ByteSlot,
    shape: &[usize],
    qp: Qp,
    w: Arc<QConst>,
    bias: Option<Val>,
) -> Result<(PendingOp, Vec<usize>), NativeError> {
    let ([n, c, h, wd], [o, cg, kh, kw]) = (shape, &w.shape[..]) else {
        return Err(unsupported(node, "Conv other than 2-D"));
    };
    let group = attr_int(node, "group").unwrap_or(1).max(1) as usize;
    if c / group != *cg || o % group != 0 {
        return Err(NativeError::Load(format!(
            "node {:?}: weights {:?} do not fit input {shape:?} in {group} groups",
            node.name, w.shape
        )));
    }
    let ints = |name: &str, default: Vec<i64>| attr_ints(node, name).unwrap_or(default);
    let stride = ints("strides", vec![1, 1]);
    let dilation = ints("dilations", vec![1, 1]);
    let pads = ints("pads", vec![0, 0, 0, 0]);
    let auto_pad = attr_str(node, "auto_pad").unwrap_or_default();
    if !matches!(auto_pad.as_str(), "" | "NOTSET" | "VALID") {
        return Err(unsupported(node, format!("Conv with auto_pad {auto_pad}")));
    }
    let us = |v: i64| usize::try_from(v).unwrap_or(0);
    let (&[sy, sx], &[dy, dx], &[pt, pl, pb, pr]) = (&stride[..], &dilation[..], &pads[..]) else {
        return Err(unsupported(
            node,
            "Conv with malformed strides, dilations or pads",
        ));
    };
    let pad = Padding {
        top: us(pt),
        left: us(pl),
        bottom: us(pb),
        right: us(pr),
    };
    let geom = DwGeometry::new(
        *c,
        *h,
        *wd,
        [*kh, *kw],
        [us(sy), us(sx)],
        [us(dy), us(dx)],
        pad,
    )
    .ok_or_else(|| NativeError::Load(format!("node {:?}: no window fits", node.name)))?;
    let out_shape = vec![*n, *o, geom.oh, geom.ow];
    let op = PendingOp::Conv {
        x: slot,
        xq: qp,
        w,
        bias,
        geom,
        batch: *n,
        group,
    };
    Ok((op, out_shape))
}

/// The int8 Gemm or MatMul of `u8` value `slot` (`[m, k]`, quantized as
/// `qp`) by weights `w` (`[k, n]`, or `[n, k]` with Gemm's `transB`), and
/// its output shape: shared by Gemm/MatMul (QDQ) and QLinearMatMul.
fn gemm_op(
    node: &NodeProto,
    slot: ByteSlot,
    shape: &[usize],
    qp: Qp,
    w: Arc<QConst>,
    bias: Option<Val>,
) -> Result<(PendingOp, Vec<usize>), NativeError> {
    // onnxruntime's QGemm has Gemm's attributes but `beta`.
    let is_gemm = matches!(node.op_type.as_str(), "Gemm" | "QGemm");
    let float = |name: &str| attr_float(node, name).unwrap_or(1.0);
    if is_gemm
        && (attr_int(node, "transA").unwrap_or(0) != 0
            || float("alpha") != 1.0
            || float("beta") != 1.0)
    {
        return Err(unsupported(node, "Gemm with transA, alpha or beta"));
    }
    let w_transposed = is_gemm && attr_int(node, "transB").unwrap_or(0) != 0;
    let ([m, k], [a, b]) = (shape, &w.shape[..]) else {
        return Err(unsupported(node, "Gemm other than 2-D"));
    };
    let (wk, n) = if w_transposed { (*b, *a) } else { (*a, *b) };
    if wk != *k {
        return Err(NativeError::Load(format!(
            "node {:?}: weights {:?} do not fit input {shape:?}",
            node.name, w.shape
        )));
    }
    let op = PendingOp::Gemm {
        x: slot,
        xq: qp,
        m: *m,
        w,
        w_transposed,
        bias,
    };
    Ok((op, vec![*m, n]))
}

fn weights_i8<'w>(node: &NodeProto, w: &'w QConst) -> Result<&'w [i8], NativeError> {
    match &w.data {
        QData::I8(v) => Ok(v),
        QData::I32(_) => Err(unsupported(node, "int32 weights")),
        QData::Other(dt) => Err(unsupported(node, format!("{dt:?} weights"))),
    }
}

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n tract_onnx::pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).map(|a| a.i)
}

fn attr_float(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).map(|a| a.f)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn attr_str(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

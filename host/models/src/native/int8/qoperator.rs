//! QOperator nodes: QLinearConv and QLinearMatMul (ONNX), QLinearAdd,
//! QLinearGlobalAveragePool and QGemm (onnxruntime's `com.microsoft`
//! domain).
//!
//! Each is the operation its QDQ spelling (DequantizeLinear, the float
//! operation, QuantizeLinear) describes, with the quantization parameters
//! as inputs of the node itself. So each is lowered to the same pending
//! operation the QDQ walk builds and emitted at once with the output
//! quantization the node names: both forms run the same steps and kernels,
//! and what one path refuses (asymmetric or `u8` weights, grouped
//! convolutions that are not depthwise, broadcasting adds) the other does.

use std::sync::Arc;

use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::DatumType;

use super::{
    Builder, Pending, PendingOp, QConst, QData, Val, conv_op, gemm_op, unsupported, values,
};
use crate::native::NativeError;
use crate::native::int8::program::{ByteSlot, Qp};

impl Builder<'_> {
    /// The `u8` value at input `i`: a QuantizeLinear's or another QLinear
    /// node's output.
    fn bytes_input(
        &self,
        node: &NodeProto,
        i: usize,
    ) -> Result<(ByteSlot, Vec<usize>), NativeError> {
        match self.required(node, i)? {
            Val::Bytes { slot, shape } => Ok((slot, shape)),
            _ => Err(unsupported(
                node,
                format!("{} of a value that is not quantized", node.op_type),
            )),
        }
    }

    /// The constant quantized weights at input `i`, with their scales at
    /// `i + 1` and zero points at `i + 2`, per index of `axis` when more than one.
    fn qweights(&self, node: &NodeProto, i: usize, axis: i64) -> Result<Arc<QConst>, NativeError> {
        let Val::Const(t) = self.required(node, i)? else {
            return Err(unsupported(
                node,
                format!("{} with weights that are not constant", node.op_type),
            ));
        };
        Ok(Arc::new(self.quantized_const(
            node,
            &t,
            i + 1,
            i + 2,
            axis,
        )?))
    }

    /// Emits `op` with output quantization `out` as `node`'s output.
    fn emit_now(
        &mut self,
        node: &NodeProto,
        op: PendingOp,
        shape: Vec<usize>,
        out: Qp,
    ) -> Result<(), NativeError> {
        let p = Pending {
            op,
            shape,
            lo: f32::NEG_INFINITY,
            hi: f32::INFINITY,
        };
        let v = self.emit(node, &p, out)?;
        self.set(node, v);
        Ok(())
    }

    /// `QLinearConv(x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero, bias?)`;
    /// `w` per tensor or per output channel (axis 0).
    pub(super) fn qlinear_conv(&mut self, node: &NodeProto) -> Result<(), NativeError> {
        let (slot, shape) = self.bytes_input(node, 0)?;
        let xq = self.qp_at(node, 1, 2)?;
        let w = self.qweights(node, 3, 0)?;
        let yq = self.qp_at(node, 6, 7)?;
        let bias = self.int32_bias(node, 8, xq, &w)?;
        let (op, out_shape) = conv_op(node, slot, &shape, xq, w, bias)?;
        self.emit_now(node, op, out_shape, yq)
    }

    /// The optional bias at input `i` of a QLinearConv or QGemm: `int32` in
    /// the accumulator's units (scale `x_scale · w_scale[j]`, zero point 0).
    fn int32_bias(
        &self,
        node: &NodeProto,
        i: usize,
        xq: Qp,
        w: &QConst,
    ) -> Result<Option<Val>, NativeError> {
        match self.input(node, i)? {
            None => Ok(None),
            Some(Val::Const(b)) if b.datum_type() == DatumType::I32 => {
                Ok(Some(Val::QConst(Arc::new(QConst {
                    data: QData::I32(values(&b)?),
                    shape: b.shape().to_vec(),
                    scale: w.scale.iter().map(|s| xq.scale * s).collect(),
                    zero: vec![0],
                    axis: 0,
                }))))
            }
            Some(_) => Err(unsupported(
                node,
                format!(
                    "a {} bias that is not a constant int32 tensor",
                    node.op_type
                ),
            )),
        }
    }

    /// onnxruntime's `QGemm(a, a_scale, a_zero, b, b_scale, b_zero, c?,
    /// y_scale, y_zero)` with a quantized output; `b` per tensor or per
    /// output column (axis 0 of a `transB` weight).
    pub(super) fn qgemm(&mut self, node: &NodeProto) -> Result<(), NativeError> {
        let (slot, shape) = self.bytes_input(node, 0)?;
        let xq = self.qp_at(node, 1, 2)?;
        let transposed = super::attr_int(node, "transB").unwrap_or(0) != 0;
        let w = self.qweights(node, 3, if transposed { 0 } else { 1 })?;
        let bias = self.int32_bias(node, 6, xq, &w)?;
        if self.input(node, 7)?.is_none() {
            return Err(unsupported(node, "QGemm with a float output"));
        }
        let yq = self.qp_at(node, 7, 8)?;
        let (op, out_shape) = gemm_op(node, slot, &shape, xq, w, bias)?;
        self.emit_now(node, op, out_shape, yq)
    }

    /// `QLinearMatMul(a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero)`
    /// of a 2-D activation by constant weights, per tensor or per column.
    pub(super) fn qlinear_matmul(&mut self, node: &NodeProto) -> Result<(), NativeError> {
        let (slot, shape) = self.bytes_input(node, 0)?;
        let xq = self.qp_at(node, 1, 2)?;
        let w = self.qweights(node, 3, 1)?;
        let yq = self.qp_at(node, 6, 7)?;
        let (op, out_shape) = gemm_op(node, slot, &shape, xq, w, None)?;
        self.emit_now(node, op, out_shape, yq)
    }

    /// `QLinearAdd(a, a_scale, a_zero, b, b_scale, b_zero, c_scale, c_zero)`
    /// of two values of one shape.
    pub(super) fn qlinear_add(&mut self, node: &NodeProto) -> Result<(), NativeError> {
        let (sa, ha) = self.bytes_input(node, 0)?;
        let qa = self.qp_at(node, 1, 2)?;
        let (sb, hb) = self.bytes_input(node, 3)?;
        let qb = self.qp_at(node, 4, 5)?;
        let qc = self.qp_at(node, 6, 7)?;
        if ha != hb {
            return Err(unsupported(node, "QLinearAdd with broadcasting"));
        }
        let op = PendingOp::Add {
            a: (sa, qa),
            b: (sb, qb),
        };
        self.emit_now(node, op, ha, qc)
    }

    /// `QLinearGlobalAveragePool(x, x_scale, x_zero, y_scale, y_zero)` of an
    /// NCHW image (`channels_last` 0).
    pub(super) fn qlinear_avg_pool(&mut self, node: &NodeProto) -> Result<(), NativeError> {
        let (slot, shape) = self.bytes_input(node, 0)?;
        let xq = self.qp_at(node, 1, 2)?;
        let yq = self.qp_at(node, 3, 4)?;
        if super::attr_int(node, "channels_last").unwrap_or(0) != 0 {
            return Err(unsupported(
                node,
                "QLinearGlobalAveragePool with channels_last",
            ));
        }
        let [n, c, h, w] = shape[..] else {
            return Err(unsupported(
                node,
                "QLinearGlobalAveragePool of rank other than 4",
            ));
        };
        let op = PendingOp::AvgPool {
            x: slot,
            xq,
            batch: n,
            pixels: h * w,
            c,
        };
        self.emit_now(node, op, vec![n, c, 1, 1], yq)
    }
}

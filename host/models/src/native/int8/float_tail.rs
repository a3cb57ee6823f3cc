//! Float layers after the last DequantizeLinear: a QOperator graph quantizes
//! only the operators onnxruntime has QLinear kernels for, and may leave a
//! Relu or Clip, the global pool and the classifier in `f32`
//! (onnxruntime's QOperator digits CNN does). They are small next to the
//! convolutions, so they run as plain loops on ONNX-layout `f32` slots.

use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::Tensor as TractTensor;

use super::{
    Builder, Pending, PendingOp, Val, attr_float, attr_int, image_dims, unsupported, values,
};
use crate::native::NativeError;
use crate::native::int8::program::{FloatSlot, QStep};

impl Builder<'_> {
    /// The `f32` value of a pending operation, for a float reader: a clamp
    /// of a dequantized value, or a global pool (its input dequantized
    /// first; the pool's own arithmetic is then float, as onnxruntime's is).
    pub(super) fn pending_float(
        &mut self,
        p: &Pending,
    ) -> Result<(FloatSlot, Vec<usize>), NativeError> {
        match &p.op {
            PendingOp::Requant { x, xq } => {
                let out = self.new_float(&p.shape);
                let (n, c, hw) = image_dims(&p.shape);
                self.steps.push(QStep::Dequantize {
                    x: *x,
                    out,
                    n,
                    c,
                    hw,
                    qp: *xq,
                    lo: p.lo,
                    hi: p.hi,
                });
                Ok((out, p.shape.clone()))
            }
            PendingOp::AvgPool {
                x,
                xq,
                batch,
                pixels,
                c,
            } if p.lo == f32::NEG_INFINITY && p.hi == f32::INFINITY => {
                let planes = self.new_float(&[batch * c * pixels]);
                self.steps.push(QStep::Dequantize {
                    x: *x,
                    out: planes,
                    n: *batch,
                    c: *c,
                    hw: *pixels,
                    qp: *xq,
                    lo: f32::NEG_INFINITY,
                    hi: f32::INFINITY,
                });
                let out = self.new_float(&p.shape);
                self.steps.push(QStep::FloatAvgPool {
                    x: planes,
                    out,
                    planes: batch * c,
                    hw: *pixels,
                });
                Ok((out, p.shape.clone()))
            }
            _ => Err(unsupported(
                self.node,
                "the float output of an int8 operation (no QuantizeLinear after it)",
            )),
        }
    }

    /// GlobalAveragePool of a float value.
    pub(super) fn float_avg_pool(&mut self, node: &NodeProto, v: Val) -> Result<(), NativeError> {
        let (x, shape) = self.float(v)?;
        let [n, c, h, w] = shape[..] else {
            return Err(unsupported(node, "GlobalAveragePool of rank other than 4"));
        };
        let out_shape = vec![n, c, 1, 1];
        let out = self.new_float(&out_shape);
        self.steps.push(QStep::FloatAvgPool {
            x,
            out,
            planes: n * c,
            hw: h * w,
        });
        self.set(
            node,
            Val::Float {
                slot: out,
                shape: out_shape,
            },
        );
        Ok(())
    }

    /// Gemm or MatMul of a float value by float weights `w`; Gemm's
    /// `alpha` and `beta` are folded into the weights and the bias.
    pub(super) fn float_gemm(
        &mut self,
        node: &NodeProto,
        x: Val,
        w: &TractTensor,
    ) -> Result<(), NativeError> {
        let is_gemm = node.op_type == "Gemm";
        if is_gemm && attr_int(node, "transA").unwrap_or(0) != 0 {
            return Err(unsupported(node, "Gemm with transA"));
        }
        let (x, shape) = self.float(x)?;
        let (&[m, k], &[a, b]) = (&shape[..], w.shape()) else {
            return Err(unsupported(node, "Gemm other than 2-D"));
        };
        let transposed = is_gemm && attr_int(node, "transB").unwrap_or(0) != 0;
        let (wk, n) = if transposed { (b, a) } else { (a, b) };
        if wk != k {
            return Err(NativeError::Load(format!(
                "node {:?}: weights {:?} do not fit input {shape:?}",
                node.name,
                w.shape()
            )));
        }
        let alpha = if is_gemm {
            attr_float(node, "alpha").unwrap_or(1.0)
        } else {
            1.0
        };
        let raw: Vec<f32> = values(w)?;
        // `[k, n]`, as the step reads it.
        let w: Vec<f32> = (0..k * n)
            .map(|i| {
                let (p, j) = (i / n, i % n);
                alpha * if transposed { raw[j * k + p] } else { raw[i] }
            })
            .collect();
        let bias = match (is_gemm, self.input(node, 2)?) {
            (_, None) | (false, _) => vec![0.0; n],
            (true, Some(Val::Const(c))) => {
                let beta = attr_float(node, "beta").unwrap_or(1.0);
                let c: Vec<f32> = values(&c)?;
                match c.len() {
                    1 => vec![beta * c[0]; n],
                    len if len == n => c.iter().map(|v| beta * v).collect(),
                    _ => return Err(unsupported(node, "a Gemm bias that is not one row")),
                }
            }
            (true, Some(_)) => return Err(unsupported(node, "a bias that is not constant")),
        };
        let out_shape = vec![m, n];
        let out = self.new_float(&out_shape);
        self.steps.push(QStep::FloatGemm {
            x,
            out,
            m,
            w,
            k,
            n,
            bias,
        });
        self.set(
            node,
            Val::Float {
                slot: out,
                shape: out_shape,
            },
        );
        Ok(())
    }
}

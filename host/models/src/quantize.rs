//! Static post-training quantization: a float ONNX model and calibration inputs in, the same
//! graph in onnxruntime's QDQ form out (what its `quantize_static` writes with `QuantFormat.QDQ`,
//! `per_channel=True`, MinMax calibration), which the native backend runs on its int8 kernels.
//!
//! - Activations: `u8`, asymmetric, per tensor; the range is the calibration inputs' min and max
//!   (widened to hold 0). Quantized are the inputs of Conv, Gemm, MatMul, Add and
//!   GlobalAveragePool, and their outputs, or, where a Relu or Clip is the output's only reader,
//!   that activation's output (so the clamp is part of the quantization, as onnxruntime does).
//!   A Flatten or Reshape passes its input's quantization through.
//! - Weights of Conv, Gemm and MatMul (initializers): `s8`, symmetric, per output channel, scale
//!   `max |w| / 127`. Their biases: `i32` in the accumulator's scale `s_in · s_w`.
//!
//! Each quantized tensor `T` gets `QuantizeLinear → DequantizeLinear` right after its producer;
//! the producer's output is renamed and the DequantizeLinear takes the name `T`, so readers
//! (graph outputs included) stay as they were. Calibration runs the float graph on tract with
//! every tensor to observe as an extra output.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, bail};
use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto};
use tract_onnx::prelude::{
    Framework, InferenceModelExt, IntoRunnable, Tensor as TractTensor, tvec,
};

/// ONNX `TensorProto.DataType` codes used here.
const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;
/// ONNX `AttributeProto.AttributeType.INT`.
const ATTR_INT: i32 = 2;

#[cfg(test)]
#[path = "quantize_tests.rs"]
mod tests;

/// Ops whose inputs and outputs are quantized.
const QUANTIZED_OPS: [&str; 5] = ["Conv", "Gemm", "MatMul", "Add", "GlobalAveragePool"];

/// What [`quantize_static`] made.
#[derive(Debug)]
pub struct Quantized {
    /// The QDQ model's ONNX bytes.
    pub onnx: Vec<u8>,
    /// Activation tensors given a QuantizeLinear/DequantizeLinear pair.
    pub activations: usize,
    /// Weight initializers stored as `s8`.
    pub weights: usize,
}

/// `real = scale · (q - zero)` for a `u8` activation.
#[derive(Clone, Copy, Debug)]
struct Range {
    scale: f32,
    zero: u8,
}

impl Range {
    /// MinMax: the observed range widened to hold 0, over the 255 steps of a byte.
    fn of(min: f32, max: f32) -> Range {
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        let zero = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        Range { scale, zero }
    }
}

/// Quantizes `onnx` (one float input) with `calibration`: inputs shaped like the model's
/// input, each a flat `f32` vector of that many values.
pub fn quantize_static(onnx: &[u8], calibration: &[Vec<f32>]) -> anyhow::Result<Quantized> {
    let framework = tract_onnx::onnx();
    let proto = framework
        .proto_model_for_read(&mut std::io::Cursor::new(onnx))
        .context("cannot read the ONNX model")?;
    let graph = proto.graph.as_ref().context("the model has no graph")?;
    let opset = proto
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
        .unwrap_or(0);
    if opset < 13 {
        bail!("per-channel DequantizeLinear needs opset 13 or later; the model has opset {opset}");
    }
    if crate::native::is_quantized(&proto) {
        bail!("the model is already quantized");
    }
    let initializers: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let inputs: Vec<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !initializers.contains_key(n))
        .collect();
    let [input] = inputs[..] else {
        bail!(
            "quantize takes models with one input; this one has {}",
            inputs.len()
        );
    };
    let plan = Plan::of(graph, &initializers);
    if plan.activations.is_empty() {
        bail!("the model has no Conv, Gemm, MatMul, Add or GlobalAveragePool to quantize");
    }
    let ranges = calibrate(onnx, input, &plan.activations, calibration)?;
    let (graph, weights) = rewrite(graph, &initializers, &plan, &ranges)?;
    let mut out = proto.clone();
    out.graph = Some(graph);
    Ok(Quantized {
        onnx: prost::Message::encode_to_vec(&out),
        activations: ranges.len(),
        weights,
    })
}

/// Which tensors get quantized.
struct Plan {
    /// Activation tensors, in graph order.
    activations: Vec<String>,
    /// Tensors that carry another's quantization unchanged (Flatten/Reshape outputs).
    passes: HashMap<String, String>,
}

impl Plan {
    fn of(graph: &tract_onnx::pb::GraphProto, initializers: &HashMap<&str, &TensorProto>) -> Plan {
        let mut readers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
        for node in &graph.node {
            for i in &node.input {
                readers.entry(i.as_str()).or_default().push(node);
            }
        }
        let mut chosen: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        let mut passes = HashMap::new();
        let mut choose = |t: &str, chosen: &mut Vec<String>| {
            if !t.is_empty() && !initializers.contains_key(t) && seen.insert(t.to_string()) {
                chosen.push(t.to_string());
            }
        };
        for node in &graph.node {
            let op = node.op_type.as_str();
            if matches!(op, "Flatten" | "Reshape") {
                if let (Some(x), Some(y)) = (node.input.first(), node.output.first()) {
                    passes.insert(y.clone(), x.clone());
                }
                continue;
            }
            if !QUANTIZED_OPS.contains(&op) {
                continue;
            }
            let activation_inputs = if op == "Add" { 2 } else { 1 };
            for x in node.input.iter().take(activation_inputs) {
                // Through Flatten/Reshape, the quantized tensor is the one before them.
                let mut x = x.as_str();
                while let Some(from) = passes.get(x) {
                    x = from;
                }
                choose(x, &mut chosen);
            }
            let Some(y) = node.output.first() else {
                continue;
            };
            // A Relu or Clip that is the output's only reader: quantize after it.
            let out = match readers.get(y.as_str()).map(Vec::as_slice) {
                Some([only]) if matches!(only.op_type.as_str(), "Relu" | "Clip") => {
                    only.output.first().unwrap_or(y)
                }
                _ => y,
            };
            choose(out, &mut chosen);
        }
        Plan {
            activations: chosen,
            passes,
        }
    }
}

/// Min and max of every activation over the calibration inputs, on tract.
fn calibrate(
    onnx: &[u8],
    input: &str,
    activations: &[String],
    calibration: &[Vec<f32>],
) -> anyhow::Result<HashMap<String, Range>> {
    if calibration.is_empty() {
        bail!("no calibration inputs");
    }
    let framework = tract_onnx::onnx();
    let mut model = framework
        .model_for_read(&mut std::io::Cursor::new(onnx))
        .context("cannot load the model for calibration")?;
    let input_outlet = model.input_outlets()?[0];
    let shape: Vec<usize> = model
        .outlet_fact(input_outlet)?
        .shape
        .as_concrete_finite()?
        .context("the model's input has no fixed shape")?
        .to_vec();
    let observed: Vec<&String> = activations.iter().filter(|a| a.as_str() != input).collect();
    let outlets = observed
        .iter()
        .map(|name| {
            model
                .find_outlet_label(name)
                .with_context(|| format!("no tensor {name:?} in the graph"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    model.select_output_outlets(&outlets)?;
    let plan = model.into_optimized()?.into_runnable()?;
    let mut bounds: HashMap<String, (f32, f32)> = HashMap::new();
    let mut widen = |name: &str, values: &[f32]| {
        let b = bounds
            .entry(name.to_string())
            .or_insert((f32::INFINITY, f32::NEG_INFINITY));
        for &v in values.iter().filter(|v| v.is_finite()) {
            b.0 = b.0.min(v);
            b.1 = b.1.max(v);
        }
    };
    let len: usize = shape.iter().product();
    for (i, sample) in calibration.iter().enumerate() {
        if sample.len() != len {
            bail!(
                "calibration input {i} has {} values; the model's input {shape:?} needs {len}",
                sample.len()
            );
        }
        widen(input, sample);
        let x = TractTensor::from_shape(&shape, sample)?;
        let outputs = plan.run(tvec!(x.into()))?;
        for (name, value) in observed.iter().zip(outputs.iter()) {
            let value = value.cast_to::<f32>()?;
            let view = value.to_plain_array_view::<f32>()?;
            let values: Vec<f32> = view.iter().copied().collect();
            widen(name, &values);
        }
    }
    Ok(bounds
        .into_iter()
        .map(|(name, (lo, hi))| {
            let range = if lo <= hi {
                Range::of(lo, hi)
            } else {
                Range::of(0.0, 0.0)
            };
            (name, range)
        })
        .collect())
}

/// The graph with QuantizeLinear/DequantizeLinear pairs and `s8` weights; also the number
/// of weights quantized.
fn rewrite(
    graph: &tract_onnx::pb::GraphProto,
    initializers: &HashMap<&str, &TensorProto>,
    plan: &Plan,
    ranges: &HashMap<String, Range>,
) -> anyhow::Result<(tract_onnx::pb::GraphProto, usize)> {
    let range_of = |t: &str| -> Option<Range> {
        let mut t = t;
        while let Some(from) = plan.passes.get(t) {
            t = from;
        }
        ranges.get(t).copied()
    };
    let mut out = graph.clone();
    out.node.clear();
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let mut replaced: HashSet<String> = HashSet::new();
    let mut weights = 0;
    // A quantized graph input: its readers take the DequantizeLinear's output instead.
    let mut renamed_inputs: HashMap<String, String> = HashMap::new();
    for input in &graph.input {
        if let Some(&range) = ranges.get(&input.name) {
            let dq = format!("{}_DequantizeLinear_Output", input.name);
            let (nodes, inits) = qdq_pair(&input.name, &input.name, &dq, range);
            out.node.extend(nodes);
            new_inits.extend(inits);
            renamed_inputs.insert(input.name.clone(), dq);
        }
    }
    for original in &graph.node {
        let mut n = original.clone();
        for i in n.input.iter_mut() {
            if let Some(to) = renamed_inputs.get(i) {
                *i = to.clone();
            }
        }
        let op = n.op_type.as_str();
        if matches!(op, "Conv" | "Gemm" | "MatMul") {
            let x_range = original.input.first().and_then(|x| range_of(x));
            let w_name = n.input.get(1).cloned().unwrap_or_default();
            if let (Some(x_range), Some(w)) = (x_range, initializers.get(w_name.as_str())) {
                let trans_b = op == "Gemm"
                    && original
                        .attribute
                        .iter()
                        .any(|a| a.name == "transB" && a.i != 0);
                // The output channel's axis: 0 for Conv and Gemm with transB, else 1.
                let axis = if op == "Conv" || trans_b { 0 } else { 1 };
                let (q, scales) = quantize_weight(w, axis)?;
                let raw = q.iter().map(|&v| v as u8).collect();
                let (inits, dequantize) =
                    dequantized_constant(&w_name, &w.dims, INT8, raw, &scales, axis as i64);
                n.input[1] = dequantize.output[0].clone();
                if replaced.insert(w_name.clone()) {
                    new_inits.extend(inits);
                    out.node.push(dequantize);
                    weights += 1;
                }
                if let Some(b_name) = n.input.get(2).cloned().filter(|b| !b.is_empty())
                    && let Some(b) = initializers.get(b_name.as_str())
                {
                    let bias = f32_values(b)?;
                    if bias.len() != scales.len() {
                        bail!(
                            "bias {b_name:?} has {} values for {} channels",
                            bias.len(),
                            scales.len()
                        );
                    }
                    let acc: Vec<f32> = scales.iter().map(|s| s * x_range.scale).collect();
                    let bq: Vec<i32> = bias
                        .iter()
                        .zip(&acc)
                        .map(|(&b, &s)| {
                            (f64::from(b) / f64::from(s))
                                .round()
                                .clamp(f64::from(i32::MIN), f64::from(i32::MAX))
                                as i32
                        })
                        .collect();
                    // Per node: the bias's scale depends on this node's input scale.
                    let raw = bq.iter().flat_map(|v| v.to_le_bytes()).collect();
                    let (inits, dequantize) = dequantized_constant(
                        &format!("{b_name}_{}", original.name),
                        &[bq.len() as i64],
                        INT32,
                        raw,
                        &acc,
                        0,
                    );
                    n.input[2] = dequantize.output[0].clone();
                    new_inits.extend(inits);
                    out.node.push(dequantize);
                }
            }
        }
        // The quantized outputs: the producer writes `T_QuantizeLinear_Input`, and the pair
        // after it gives `T` back.
        let mut after = Vec::new();
        for o in n.output.iter_mut() {
            if let Some(range) = ranges.get(o.as_str()) {
                let t = o.clone();
                let source = format!("{t}_QuantizeLinear_Input");
                *o = source.clone();
                after.push((t, source, *range));
            }
        }
        out.node.push(n);
        for (t, source, range) in after {
            let (nodes, inits) = qdq_pair(&t, &source, &t, range);
            out.node.extend(nodes);
            new_inits.extend(inits);
        }
    }
    out.initializer.extend(new_inits);
    // Float weights and biases now read through their quantized copies are dropped.
    let used: HashSet<&str> = out
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(graph.output.iter().map(|o| o.name.as_str()))
        .collect();
    let kept: Vec<TensorProto> = out
        .initializer
        .iter()
        .filter(|t| used.contains(t.name.as_str()))
        .cloned()
        .collect();
    out.initializer = kept;
    out.input
        .retain(|i| used.contains(i.name.as_str()) || !initializers.contains_key(i.name.as_str()));
    Ok((out, weights))
}

/// `source → QuantizeLinear → DequantizeLinear → output`, with the scale and zero point
/// initializers named after `tensor`.
fn qdq_pair(
    tensor: &str,
    source: &str,
    output: &str,
    range: Range,
) -> ([NodeProto; 2], [TensorProto; 2]) {
    let (scale, zero) = (format!("{tensor}_scale"), format!("{tensor}_zero_point"));
    let q = format!("{tensor}_QuantizeLinear_Output");
    let nodes = [
        node(
            "QuantizeLinear",
            &format!("{tensor}_QuantizeLinear"),
            &[source, &scale, &zero],
            &q,
            None,
        ),
        node(
            "DequantizeLinear",
            &format!("{tensor}_DequantizeLinear"),
            &[&q, &scale, &zero],
            output,
            None,
        ),
    ];
    let zero_point = TensorProto {
        name: zero.clone(),
        data_type: UINT8,
        raw_data: vec![range.zero],
        ..Default::default()
    };
    (nodes, [scalar_f32(&scale, range.scale), zero_point])
}

/// An integer constant `{base}_quantized` (`data_type` INT8 or INT32, little-endian `raw`)
/// with one scale per index of `axis` and zero points 0, and the DequantizeLinear that gives
/// its real values as `{base}_DequantizeLinear_Output`.
fn dequantized_constant(
    base: &str,
    dims: &[i64],
    data_type: i32,
    raw: Vec<u8>,
    scales: &[f32],
    axis: i64,
) -> ([TensorProto; 3], NodeProto) {
    let width = if data_type == INT32 { 4 } else { 1 };
    let (data, scale, zero) = (
        format!("{base}_quantized"),
        format!("{base}_scale"),
        format!("{base}_zero_point"),
    );
    let dequantize = node(
        "DequantizeLinear",
        &format!("{base}_DequantizeLinear"),
        &[&data, &scale, &zero],
        &format!("{base}_DequantizeLinear_Output"),
        Some(axis),
    );
    let inits = [
        TensorProto {
            name: data,
            dims: dims.to_vec(),
            data_type,
            raw_data: raw,
            ..Default::default()
        },
        vector_f32(&scale, scales),
        TensorProto {
            name: zero,
            dims: vec![scales.len() as i64],
            data_type,
            raw_data: vec![0; width * scales.len()],
            ..Default::default()
        },
    ];
    (inits, dequantize)
}

/// `s8` per output channel along `axis` (0 or 1 of a rank-2+ tensor), symmetric.
fn quantize_weight(w: &TensorProto, axis: usize) -> anyhow::Result<(Vec<i8>, Vec<f32>)> {
    let values = f32_values(w)?;
    let dims: Vec<usize> = w.dims.iter().map(|&d| d.max(0) as usize).collect();
    let channels = *dims.get(axis).context("weight of too small a rank")?;
    let inner: usize = dims[axis + 1..].iter().product();
    let channel_of = |i: usize| (i / inner) % channels;
    let mut max = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        let c = channel_of(i);
        max[c] = max[c].max(v.abs());
    }
    let scales: Vec<f32> = max
        .iter()
        .map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel_of(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    Ok((q, scales))
}

fn f32_values(t: &TensorProto) -> anyhow::Result<Vec<f32>> {
    if t.data_type != FLOAT {
        bail!("initializer {:?} is not float32", t.name);
    }
    if !t.float_data.is_empty() {
        return Ok(t.float_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(4) {
        bail!(
            "initializer {:?} has {} bytes of raw data",
            t.name,
            t.raw_data.len()
        );
    }
    Ok(t.raw_data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn scalar_f32(name: &str, v: f32) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        data_type: FLOAT,
        raw_data: v.to_le_bytes().to_vec(),
        ..Default::default()
    }
}

fn vector_f32(name: &str, v: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: vec![v.len() as i64],
        data_type: FLOAT,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str, axis: Option<i64>) -> NodeProto {
    NodeProto {
        op_type: op.to_string(),
        name: name.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute: axis
            .map(|a| AttributeProto {
                name: "axis".to_string(),
                r#type: ATTR_INT,
                i: a,
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

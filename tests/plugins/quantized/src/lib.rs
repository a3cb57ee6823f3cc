//! The digits CNN run quantized through WIT 0.1.5's ops: onnxruntime's QOperator model
//! (`tests/fixtures/models/digits_cnn_int8_qop.onnx`) node for node, its weights and
//! quantization parameters from `weights.safetensors` (`make_weights.py`).
//!
//! Each of the nine layers is ONNX's QuantizeLinear → QLinearConv → DequantizeLinear →
//! Clip(0, 6), as the model has them: `quantize`, `qconv2d`, `dequantize` and the float
//! `clip`. Then the float head: GlobalAveragePool, Flatten, Gemm, Softmax. The answer's tensor
//! `probs` [1, 10] is that model's output; `probs_int8` [1, 10] also runs the classifier's
//! Gemm quantized (`qgemm`, int8 weights per output row, `make_weights.py`), an all-int8
//! stack but for the pooling and the softmax. The JSON answer names both classes.
//!
//! The body is a digit as the digits plugin takes it: a JSON array of 8 rows of 8 values
//! 0..16, divided by 16 and upsampled 2x by nearest neighbour to [1, 1, 16, 16]. Or
//! `{"probe": NAME}`: one misuse of the quantized ops (`probe` below), whose WIT error the plugin
//! returns as its own, so that the tests see what a plugin author's mistake gives.

use edgeplug_sdk::{
    Activation, Error, Gemm, Plugin, PluginInfo, QConv2d, QGemm, QuantParams, QuantType,
    QuantizedTensor, Requantize, Request, Response, Tensor, TensorInfo, export,
};

/// (groups, stride, padding) of the nine convolutions: a 3x3 stem, then four
/// depthwise-separable blocks (depthwise 3x3, pointwise 1x1); 0 groups is depthwise.
const LAYERS: [(u32, u32, u32); 9] = [
    (1, 1, 1),
    (0, 1, 1),
    (1, 1, 0),
    (0, 2, 1),
    (1, 1, 0),
    (0, 1, 1),
    (1, 1, 0),
    (0, 2, 1),
    (1, 1, 0),
];

struct Quantized;

/// A scale and zero point stored as F32 [2].
fn scale_zero(name: &str) -> Result<(f32, i32), Error> {
    match Tensor::load(name)?.to_vec()?[..] {
        [scale, zero] => Ok((scale, zero as i32)),
        _ => Err(Error::internal(format!(
            "{name}: expected [scale, zero point]"
        ))),
    }
}

/// An int32 bias stored as I64.
fn bias(name: &str) -> Result<Vec<i32>, Error> {
    Tensor::load(name)?
        .to_i64()?
        .into_iter()
        .map(|b| i32::try_from(b).map_err(|_| Error::internal(format!("{name}: {b} is not int32"))))
        .collect()
}

/// A misuse of the quantized ops, refused by the host with a WIT error that `?` passes on.
fn probe(name: &str) -> Result<Response, Error> {
    let per_tensor = QuantParams::per_tensor(0.1, 0);
    let x =
        QuantizedTensor::from_bytes(&[1, 1, 2, 2], QuantType::Uint8, &[1, 2, 3, 4], &per_tensor)?;
    let out = Requantize {
        scale: 0.1,
        zero_point: 0,
    };
    let int8 = |shape: &[usize], data: &[u8]| {
        QuantizedTensor::from_bytes(shape, QuantType::Int8, data, &per_tensor)
    };
    match name {
        "zero-scale" => {
            let x = Tensor::from_slice(&[2], &[1.0, 2.0])?;
            x.quantize(QuantType::Uint8, &QuantParams::per_tensor(0.0, 0))?;
        }
        "zero-point-range" => {
            let params = QuantParams::per_tensor(1.0, 200);
            QuantizedTensor::from_bytes(&[1], QuantType::Int8, &[0], &params)?;
        }
        "axis-count" => {
            let params = QuantParams::per_axis(vec![1.0; 3], vec![0; 3], 0);
            QuantizedTensor::from_bytes(&[2, 2], QuantType::Int8, &[0; 4], &params)?;
        }
        "float-data" => {
            let f = Tensor::from_slice(&[1], &[1.0])?;
            QuantizedTensor::from_tensor(&f, QuantType::Uint8, &per_tensor)?;
        }
        "uint8-weight" => {
            // 200 less zero point 0 is outside int8, what the engine multiplies by.
            let w =
                QuantizedTensor::from_bytes(&[1, 1, 1, 1], QuantType::Uint8, &[200], &per_tensor)?;
            QConv2d::new(&w, out).run(&x)?;
        }
        "sigmoid" => {
            let w = int8(&[1, 1, 1, 1], &[3])?;
            QConv2d::new(&w, out)
                .activation(Activation::Sigmoid)
                .run(&x)?;
        }
        "conv-channels" => {
            let w = int8(&[1, 2, 1, 1], &[3, 4])?;
            QConv2d::new(&w, out).run(&x)?;
        }
        "gemm-shapes" => {
            let a = int8(&[2, 3], &[0; 6])?;
            let b = int8(&[2, 2], &[0; 4])?;
            QGemm::new(&b, out).run(&a)?;
        }
        _ => return Err(Error::invalid_argument(format!("no probe {name:?}"))),
    }
    Err(Error::internal(format!(
        "probe {name}: the host accepted it"
    )))
}

/// The 8x8 digit of the body, values 0..16, as the model's input [1, 1, 16, 16].
fn input(request: &Request) -> Result<Tensor, Error> {
    let rows: Vec<Vec<f32>> = request.json()?;
    if rows.len() != 8 || rows.iter().any(|r| r.len() != 8) {
        return Err(Error::invalid_argument("expected 8 rows of 8 values 0..16"));
    }
    let mut x = vec![0f32; 256];
    for (i, v) in x.iter_mut().enumerate() {
        let (y, xx) = (i / 16, i % 16);
        *v = rows[y / 2][xx / 2] / 16.0;
    }
    Tensor::from_slice(&[1, 1, 16, 16], &x)
}

/// The nine quantized layers: the features after the last Clip(0, 6), float [1, 128, 2, 2].
fn features(mut x: Tensor) -> Result<Tensor, Error> {
    for (i, &(groups, stride, pad)) in LAYERS.iter().enumerate() {
        let (x_scale, x_zero) = scale_zero(&format!("conv{i}.x_quant"))?;
        let (y_scale, y_zero) = scale_zero(&format!("conv{i}.y_quant"))?;
        let w_scales = Tensor::load(&format!("conv{i}.w_scale"))?.to_vec()?;
        let channels = w_scales.len();
        let weight = QuantizedTensor::load(
            &format!("conv{i}.weight"),
            QuantType::Int8,
            &QuantParams::per_axis(w_scales, vec![0; channels], 0),
        )?;
        let b = bias(&format!("conv{i}.bias"))?;
        let groups = if groups == 0 { channels as u32 } else { groups };
        let xq = x.quantize(QuantType::Uint8, &QuantParams::per_tensor(x_scale, x_zero))?;
        let output = Requantize {
            scale: y_scale,
            zero_point: y_zero as u8,
        };
        let y = QConv2d::new(&weight, output)
            .bias(&b)
            .stride(stride)
            .pad(pad)
            .groups(groups)
            .run(&xq)?;
        x = y.dequantize()?.clip(0.0, 6.0)?;
    }
    Ok(x)
}

/// The float classifier of the QOperator model: Gemm with `transB`, then Softmax.
fn classify_f32(pooled: &Tensor) -> Result<Tensor, Error> {
    let (w, b) = (Tensor::load("fc.weight")?, Tensor::load("fc.bias")?);
    Gemm::new(&w).bias(&b).trans_b(true).run(pooled)?.softmax(1)
}

/// The classifier quantized: QuantizeLinear, QGemm, DequantizeLinear, then Softmax.
fn classify_int8(pooled: &Tensor) -> Result<Tensor, Error> {
    let w_scales = Tensor::load("fc.qw_scale")?.to_vec()?;
    let rows = w_scales.len();
    let w = QuantizedTensor::load(
        "fc.qweight",
        QuantType::Int8,
        &QuantParams::per_axis(w_scales, vec![0; rows], 0),
    )?;
    let (x_scale, x_zero) = scale_zero("fc.x_quant")?;
    let (y_scale, y_zero) = scale_zero("fc.y_quant")?;
    let xq = pooled.quantize(QuantType::Uint8, &QuantParams::per_tensor(x_scale, x_zero))?;
    let b = bias("fc.qbias")?;
    let logits = QGemm::new(
        &w,
        Requantize {
            scale: y_scale,
            zero_point: y_zero as u8,
        },
    )
    .bias(&b)
    .trans_b(true)
    .activation(Activation::None)
    .run(&xq)?;
    logits.dequantize()?.softmax(1)
}

fn class_of(probs: &Tensor) -> Result<i64, Error> {
    Ok(probs.argmax(1, false)?.to_i64()?[0])
}

impl Plugin for Quantized {
    fn describe() -> PluginInfo {
        PluginInfo::new("quantized", env!("CARGO_PKG_VERSION"))
            .description(env!("CARGO_PKG_DESCRIPTION"))
            .output(TensorInfo::f32("probs", &[1, 10]))
            .output(TensorInfo::f32("probs_int8", &[1, 10]))
    }

    fn infer(request: Request) -> Result<Response, Error> {
        if let Ok(serde_json::Value::Object(body)) = request.json::<serde_json::Value>()
            && let Some(name) = body.get("probe").and_then(|p| p.as_str())
        {
            return probe(name);
        }
        let pooled = features(input(&request)?)?.global_avg_pool()?.flatten(1)?;
        let probs = classify_f32(&pooled)?;
        let probs_int8 = classify_int8(&pooled)?;
        let answer = serde_json::json!({
            "class": class_of(&probs)?,
            "class_int8": class_of(&probs_int8)?,
        });
        Ok(Response::json(&answer)?
            .with_tensor("probs", probs)
            .with_tensor("probs_int8", probs_int8))
    }
}

export!(Quantized);

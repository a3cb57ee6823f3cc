//! Recognizes a handwritten digit.
//!
//! Preprocessing runs here in the sandbox (decode, grayscale, polarity, resize to the model's
//! 16×16 input); the network, a MobileNet-style CNN, runs layer by layer on the host's native
//! kernels with weights extracted from `digits_cnn.onnx` into `weights.safetensors`.
//!
//! When the manifest grants a model named [`INT8_MODEL`] (the shipped
//! `digits_cnn_int8_qdq.onnx`), the plugin runs that int8 network through the host's `model`
//! interface instead of the float layers.

use edgeplug_sdk::{
    Activation, Conv2d, Error, ErrorCode, Gemm, Model, Plugin, PluginInfo, Request, Response,
    Tensor, TensorInfo, export,
};

/// The grant name of the int8 network; when granted, it replaces the float layers.
pub const INT8_MODEL: &str = "digits-int8";

pub mod preprocess;

struct Digits;

/// The depthwise-separable blocks: (depthwise weight, pointwise weight, depthwise stride).
const BLOCKS: [(&str, &str, u32); 4] = [
    ("onnx::Conv_110", "onnx::Conv_113", 1),
    ("onnx::Conv_116", "onnx::Conv_119", 2),
    ("onnx::Conv_122", "onnx::Conv_125", 1),
    ("onnx::Conv_128", "onnx::Conv_131", 2),
];

/// The bias of each conv is stored under the weight's number plus one.
fn bias_name(weight: &str) -> String {
    let (prefix, number) = weight.rsplit_once('_').unwrap_or((weight, "0"));
    format!("{prefix}_{}", number.parse::<u32>().unwrap_or(0) + 1)
}

fn conv(x: &Tensor, weight: &str, stride: u32, pad: u32, depthwise: bool) -> Result<Tensor, Error> {
    let w = Tensor::load(weight)?;
    let b = Tensor::load(&bias_name(weight))?;
    let groups = if depthwise { w.shape()[0] as u32 } else { 1 };
    Conv2d::new(&w)
        .bias(&b)
        .stride(stride)
        .pad(pad)
        .groups(groups)
        .activation(Activation::Relu6)
        .run(x)
}

/// [1, 1, 16, 16] pixels in 0..1 to [1, 10] probabilities, on the int8 model if it is
/// granted, else on the float layers.
fn classify(input: &Tensor) -> Result<Tensor, Error> {
    match Model::open(INT8_MODEL) {
        Ok(model) => model
            .run(&[input])?
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("the int8 model gave no output")),
        Err(e) if e.code == ErrorCode::NotPermitted => float_layers(input),
        Err(e) => Err(e),
    }
}

/// The float network, layer by layer on native ops.
fn float_layers(input: &Tensor) -> Result<Tensor, Error> {
    let mut x = conv(input, "onnx::Conv_107", 1, 1, false)?;
    for (depthwise, pointwise, stride) in BLOCKS {
        x = conv(&x, depthwise, stride, 1, true)?;
        x = conv(&x, pointwise, 1, 0, false)?;
    }
    let features = x.global_avg_pool()?.flatten(1)?;
    let fc_weight = Tensor::load("m.fc.weight")?;
    let fc_bias = Tensor::load("m.fc.bias")?;
    let logits = Gemm::new(&fc_weight)
        .bias(&fc_bias)
        .trans_b(true)
        .run(&features)?;
    logits.softmax(1)
}

fn input_tensor(request: &mut Request) -> Result<Tensor, Error> {
    if let Some(tensor) = request.take_tensor("input") {
        if tensor.shape() != [1, 1, 16, 16] {
            return Err(Error::shape_mismatch(format!(
                "input must be [1, 1, 16, 16], got {:?}",
                tensor.shape()
            )));
        }
        return Ok(tensor);
    }
    let pixels = match request.mime().as_str() {
        "image/png" | "image/jpeg" | "image/jpg" => preprocess::from_image(&request.body)?,
        "application/json" => preprocess::from_json(request)?,
        "application/x-npy" | "application/octet-stream"
            if request.body.starts_with(b"\x93NUMPY") =>
        {
            preprocess::from_npy(&request.body)?
        }
        other => {
            return Err(Error::unsupported(format!(
                "content type {other:?} is not supported; send image/png, image/jpeg, \
                 application/json (8x8 values 0..16) or application/x-npy"
            )));
        }
    };
    Tensor::from_slice(&[1, 1, 16, 16], &pixels)
}

impl Plugin for Digits {
    fn describe() -> PluginInfo {
        PluginInfo::new("digits", env!("CARGO_PKG_VERSION"))
            .description(
                "Handwritten digit 0-9 from a PNG/JPEG photo or an 8x8 array (sklearn digits CNN)",
            )
            .input(TensorInfo::f32("input", &[1, 1, 16, 16]))
            .output(TensorInfo::f32("probs", &[1, 10]))
    }

    fn infer(mut request: Request) -> Result<Response, Error> {
        let input = input_tensor(&mut request)?;
        let probs = classify(&input)?;
        let probabilities = probs.to_vec()?;
        let label = probabilities
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .ok_or_else(|| Error::internal("the model gave no probabilities"))?;
        let answer = Answer {
            label,
            probabilities: &probabilities,
        };
        Ok(Response::json(&answer)?.with_tensor("probs", probs))
    }
}

#[derive(serde::Serialize)]
struct Answer<'a> {
    label: usize,
    probabilities: &'a [f32],
}

export!(Digits);

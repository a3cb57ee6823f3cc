//! {{name}}: runs the ONNX model granted as `model` (model.onnx) on the host and answers its
//! first output and that output's argmax. The input is either a float32 tensor in the model's
//! input shape (the Open Inference Protocol v2 input `input`, or a `.npy` body), or a
//! grayscale image of any size as JSON, `{"image": [[row], ...], "max": 255}`, which is
//! scaled to [0, 1] by `max` and resized to the model's 16x16 by area averaging here, in the
//! sandbox.
//!
//! The model shipped is a small handwritten-digit CNN (16x16 grayscale in, 10 probabilities
//! out). To run your own: replace model.onnx, set the input shape below to your model's, put
//! one input of it in selftest/input.npy, then `edgeplug build .`, `edgeplug selftest record .`
//! and review selftest/input.expect.json.

use edgeplug_sdk::{
    Error, Model, Plugin, PluginInfo, Request, Response, Tensor, TensorInfo, export,
};

/// The model's input shape (the digit CNN's: one 16x16 grayscale image, NCHW).
const INPUT_SHAPE: [i64; 4] = [1, 1, 16, 16];
/// The largest JSON image taken, per side: parsing it is the sandbox's work and memory.
const MAX_SIDE: usize = 512;

struct Handler;

impl Plugin for Handler {
    fn describe() -> PluginInfo {
        PluginInfo::new("{{name}}", env!("CARGO_PKG_VERSION"))
            .description("An ONNX model on the host: a float32 tensor or a JSON image in, its first output and argmax out")
            .input(TensorInfo::f32("input", &INPUT_SHAPE))
            .output(TensorInfo::f32("output", &[1, -1]))
    }

    fn infer(mut request: Request) -> Result<Response, Error> {
        let x = if request.mime() == "application/json" {
            image_input(&request.json()?)?
        } else {
            request.f32_input("input")?
        };
        let want: Vec<usize> = INPUT_SHAPE.iter().map(|&d| d as usize).collect();
        if x.shape() != want {
            return Err(Error::shape_mismatch(format!(
                "expected {want:?}, got {:?}",
                x.shape()
            )));
        }
        // The host runs the network (its native backend, or tract for what that does not cover).
        let model = Model::open("model")?;
        let output = model
            .run(&[&x])?
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("the model has no output"))?;
        let values = output.to_vec()?;
        let argmax = (0..values.len()).max_by(|&a, &b| values[a].total_cmp(&values[b]));
        let answer = serde_json::json!({ "output": values, "argmax": argmax });
        Ok(Response::json(&answer)?.with_tensor("output", output))
    }
}

/// `{"image": [[...], ...], "max": M}`: rows of equal length, values in [0, M] (M defaults to
/// 255), as the model's input tensor.
fn image_input(doc: &serde_json::Value) -> Result<Tensor, Error> {
    let invalid = |m: &str| Error::invalid_argument(m.to_string());
    let rows = doc["image"]
        .as_array()
        .ok_or_else(|| invalid(r#"expected {"image": [[row], ...], "max": 255}"#))?;
    let max = match &doc["max"] {
        serde_json::Value::Null => 255.0,
        m => m
            .as_f64()
            .filter(|m| *m > 0.0)
            .ok_or_else(|| invalid("max must be a positive number"))?,
    };
    let width = rows.first().and_then(|r| r.as_array()).map_or(0, Vec::len);
    if rows.is_empty() || width == 0 || rows.len() > MAX_SIDE || width > MAX_SIDE {
        return Err(invalid(&format!(
            "the image must be 1 to {MAX_SIDE} rows of 1 to {MAX_SIDE} values"
        )));
    }
    let mut pixels = Vec::with_capacity(rows.len() * width);
    for (y, row) in rows.iter().enumerate() {
        let row = row.as_array().filter(|r| r.len() == width);
        let row =
            row.ok_or_else(|| invalid(&format!("row {y} is not a list of {width} values")))?;
        for (x, v) in row.iter().enumerate() {
            let v = v.as_f64().filter(|v| (0.0..=max).contains(v));
            pixels.push(
                v.ok_or_else(|| {
                    invalid(&format!("pixel ({x}, {y}) is not a number in [0, {max}]"))
                })? / max,
            );
        }
    }
    let (out_h, out_w) = (INPUT_SHAPE[2] as usize, INPUT_SHAPE[3] as usize);
    let resized = resize_area(&pixels, rows.len(), width, out_h, out_w);
    let values: Vec<f32> = resized.iter().map(|&v| v as f32).collect();
    Tensor::from_slice(&[1, 1, out_h, out_w], &values)
}

/// Area-average resize of a `h` x `w` image to `out_h` x `out_w`: each output pixel is the mean
/// of the source area it covers (fractional pixels weighted), rows first, then columns.
fn resize_area(pixels: &[f64], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f64> {
    let (wx, wy) = (area_weights(w, out_w), area_weights(h, out_h));
    let mut across = vec![0.0; h * out_w];
    for y in 0..h {
        for (o, weights) in wx.iter().enumerate() {
            across[y * out_w + o] = weights.iter().map(|&(i, k)| k * pixels[y * w + i]).sum();
        }
    }
    let mut out = vec![0.0; out_h * out_w];
    for (o, weights) in wy.iter().enumerate() {
        for x in 0..out_w {
            out[o * out_w + x] = weights
                .iter()
                .map(|&(i, k)| k * across[i * out_w + x])
                .sum();
        }
    }
    out
}

/// For each of `n_out` output pixels, the source pixels it covers and their weights (the
/// covered fraction of each, over the area's size; they sum to 1).
fn area_weights(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f64)>> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let (start, end) = (o as f64 * scale, (o + 1) as f64 * scale);
            (start.floor() as usize..(end.ceil() as usize).min(n_in))
                .map(|i| (i, ((i + 1) as f64).min(end) - (i as f64).max(start)))
                .filter(|&(_, overlap)| overlap > 0.0)
                .map(|(i, overlap)| (i, overlap / scale))
                .collect()
        })
        .collect()
}

export!(Handler);

//! {{name}}: runs the ONNX model granted as `model` (model.onnx) on the host and answers its
//! first output and that output's argmax. The input is a float32 tensor in the model's input
//! shape: the Open Inference Protocol v2 input `input`, or a `.npy` body.
//!
//! The model shipped is a small handwritten-digit CNN (16x16 grayscale in, 10 probabilities
//! out). To run your own: replace model.onnx, set the input shape below to your model's, put
//! one input of it in selftest/input.npy, then `edgeplug build .`, `edgeplug selftest record .`
//! and review selftest/input.expect.json.

use edgeplug_sdk::{Error, Model, Plugin, PluginInfo, Request, Response, TensorInfo, export};

/// The model's input shape (the digit CNN's: one 16x16 grayscale image, NCHW).
const INPUT_SHAPE: [i64; 4] = [1, 1, 16, 16];

struct Handler;

impl Plugin for Handler {
    fn describe() -> PluginInfo {
        PluginInfo::new("{{name}}", env!("CARGO_PKG_VERSION"))
            .description("An ONNX model on the host: a float32 tensor in, its first output and argmax out")
            .input(TensorInfo::f32("input", &INPUT_SHAPE))
            .output(TensorInfo::f32("output", &[1, -1]))
    }

    fn infer(mut request: Request) -> Result<Response, Error> {
        let x = request.f32_input("input")?;
        let want: Vec<usize> = INPUT_SHAPE.iter().map(|&d| d as usize).collect();
        if x.shape() != want {
            return Err(Error::shape_mismatch(format!("expected {want:?}, got {:?}", x.shape())));
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

export!(Handler);

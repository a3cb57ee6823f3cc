//! {{name}}: softmax over a [1, N] float32 tensor, sent as the Open Inference Protocol v2 input
//! `input` or as a `.npy` body.

use edgeplug_sdk::{Error, Plugin, PluginInfo, Request, Response, TensorInfo, export};

struct Handler;

impl Plugin for Handler {
    fn describe() -> PluginInfo {
        PluginInfo::new("{{name}}", env!("CARGO_PKG_VERSION"))
            .description("Softmax over a [1, N] float32 tensor")
            .input(TensorInfo::f32("input", &[1, -1]))
            .output(TensorInfo::f32("probabilities", &[1, -1]))
    }

    fn infer(mut request: Request) -> Result<Response, Error> {
        let x = request.f32_input("input")?;
        if x.shape().len() != 2 || x.shape()[0] != 1 {
            return Err(Error::shape_mismatch(format!("expected [1, N], got {:?}", x.shape())));
        }
        let probabilities = x.softmax(-1)?;
        Ok(Response::json(&probabilities.to_vec()?)?.with_tensor("probabilities", probabilities))
    }
}

export!(Handler);

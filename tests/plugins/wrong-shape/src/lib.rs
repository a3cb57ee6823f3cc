//! Declares an output tensor `scores` of shape [1, 10] and returns one of shape [1, 7] for every request but its self-test.
//!
//! Answers its self-test input (`selftest/input.json`) correctly, so it passes activation the
//! way a real plugin with a latent bug would; any other input triggers the misbehaviour.

use edgeplug_sdk::{Error, Plugin, PluginInfo, Request, Response, Tensor, TensorInfo, export};

const SELF_TEST_INPUT: &[u8] = include_bytes!("../selftest/input.json");

struct Misbehaving;

impl Plugin for Misbehaving {
    fn describe() -> PluginInfo {
        PluginInfo::new("wrong-shape", env!("CARGO_PKG_VERSION"))
            .description(env!("CARGO_PKG_DESCRIPTION"))
            .output(TensorInfo::f32("scores", &[1, 10]))
    }

    fn infer(request: Request) -> Result<Response, Error> {
        if request.body == SELF_TEST_INPUT {
            let scores = Tensor::from_slice(&[1, 10], &[0.1; 10])?;
            return Ok(echo(request).with_tensor("scores", scores));
        }
        let scores = Tensor::from_slice(&[1, 7], &[0.0; 7])?;
        Ok(echo(request).with_tensor("scores", scores))
    }
}

fn echo(request: Request) -> Response {
    Response::new(request.content_type, request.body)
}

export!(Misbehaving);

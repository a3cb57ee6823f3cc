//! Doubles a host tensor until its host tensor budget runs out, on every request but its self-test.
//!
//! Answers its self-test input (`selftest/input.json`) correctly, so it passes activation the
//! way a real plugin with a latent bug would; any other input triggers the misbehaviour.

use edgeplug_sdk::{Error, Plugin, PluginInfo, Request, Response, Tensor, export};

const SELF_TEST_INPUT: &[u8] = include_bytes!("../selftest/input.json");

struct Misbehaving;

impl Plugin for Misbehaving {
    fn describe() -> PluginInfo {
        PluginInfo::new("tensor-hog", env!("CARGO_PKG_VERSION"))
            .description(env!("CARGO_PKG_DESCRIPTION"))
    }

    fn infer(request: Request) -> Result<Response, Error> {
        if request.body == SELF_TEST_INPUT {
            return Ok(echo(request));
        }
        // Host memory grows while linear memory stays small: only handles live in the sandbox.
        let mut hoard = vec![Tensor::from_slice(&[1 << 18], &vec![1.0; 1 << 18])?];
        loop {
            let last = hoard.last().expect("not empty");
            let doubled = Tensor::concat(&[last, last], 0)?;
            hoard.push(doubled);
        }
    }
}

fn echo(request: Request) -> Response {
    Response::new(request.content_type, request.body)
}

export!(Misbehaving);

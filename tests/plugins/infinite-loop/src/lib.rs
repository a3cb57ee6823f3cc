//! Never returns from a request but its self-test: a loop with no exit.
//!
//! Answers its self-test input (`selftest/input.json`) correctly, so it passes activation the
//! way a real plugin with a latent bug would; any other input triggers the misbehaviour.

use edgeplug_sdk::{Error, Plugin, PluginInfo, Request, Response, export};

const SELF_TEST_INPUT: &[u8] = include_bytes!("../selftest/input.json");

struct Misbehaving;

impl Plugin for Misbehaving {
    fn describe() -> PluginInfo {
        PluginInfo::new("infinite-loop", env!("CARGO_PKG_VERSION"))
            .description(env!("CARGO_PKG_DESCRIPTION"))
    }

    fn infer(request: Request) -> Result<Response, Error> {
        if request.body == SELF_TEST_INPUT {
            return Ok(echo(request));
        }
        let mut x = request.body.len() as u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

fn echo(request: Request) -> Response {
    Response::new(request.content_type, request.body)
}

export!(Misbehaving);

//! Answers every request but its self-test with an 8 MiB body, over its 1 MiB response limit.
//!
//! Answers its self-test input (`selftest/input.json`) correctly, so it passes activation the
//! way a real plugin with a latent bug would; any other input triggers the misbehaviour.

use edgeplug_sdk::{Error, Plugin, PluginInfo, Request, Response, export};

const SELF_TEST_INPUT: &[u8] = include_bytes!("../selftest/input.json");

struct Misbehaving;

impl Plugin for Misbehaving {
    fn describe() -> PluginInfo {
        PluginInfo::new("huge-output", env!("CARGO_PKG_VERSION"))
            .description(env!("CARGO_PKG_DESCRIPTION"))
    }

    fn infer(request: Request) -> Result<Response, Error> {
        if request.body == SELF_TEST_INPUT {
            return Ok(echo(request));
        }
        Ok(Response::new(
            "application/octet-stream",
            vec![b'x'; 8 << 20],
        ))
    }
}

fn echo(request: Request) -> Response {
    Response::new(request.content_type, request.body)
}

export!(Misbehaving);

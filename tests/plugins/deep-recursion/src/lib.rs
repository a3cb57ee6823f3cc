//! Recurses without bound on every request but its self-test, until the wasm call stack is exhausted.
//!
//! Answers its self-test input (`selftest/input.json`) correctly, so it passes activation the
//! way a real plugin with a latent bug would; any other input triggers the misbehaviour.

use edgeplug_sdk::{Error, Plugin, PluginInfo, Request, Response, export};

const SELF_TEST_INPUT: &[u8] = include_bytes!("../selftest/input.json");

struct Misbehaving;

impl Plugin for Misbehaving {
    fn describe() -> PluginInfo {
        PluginInfo::new("deep-recursion", env!("CARGO_PKG_VERSION"))
            .description(env!("CARGO_PKG_DESCRIPTION"))
    }

    fn infer(request: Request) -> Result<Response, Error> {
        if request.body == SELF_TEST_INPUT {
            return Ok(echo(request));
        }
        Response::json(&depth(request.body.len() as u64))
    }
}

fn echo(request: Request) -> Response {
    Response::new(request.content_type, request.body)
}

export!(Misbehaving);

/// Called through an opaque function pointer so the compiler cannot turn the recursion into a
/// loop.
fn depth(n: u64) -> u64 {
    let next: fn(u64) -> u64 = std::hint::black_box(depth);
    next(n + 1).wrapping_add(n)
}

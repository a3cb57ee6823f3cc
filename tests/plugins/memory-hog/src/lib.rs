//! Allocates linear memory until the allocator fails, on every request but its self-test.
//!
//! Answers its self-test input (`selftest/input.json`) correctly, so it passes activation the
//! way a real plugin with a latent bug would; any other input triggers the misbehaviour.

use edgeplug_sdk::{Error, Plugin, PluginInfo, Request, Response, export};

const SELF_TEST_INPUT: &[u8] = include_bytes!("../selftest/input.json");

struct Misbehaving;

impl Plugin for Misbehaving {
    fn describe() -> PluginInfo {
        PluginInfo::new("memory-hog", env!("CARGO_PKG_VERSION"))
            .description(env!("CARGO_PKG_DESCRIPTION"))
    }

    fn infer(request: Request) -> Result<Response, Error> {
        if request.body == SELF_TEST_INPUT {
            return Ok(echo(request));
        }
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Touch every page so nothing can be optimized away or left unbacked.
            hoard.push(vec![request.body.len() as u8 | 1; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

fn echo(request: Request) -> Response {
    Response::new(request.content_type, request.body)
}

export!(Misbehaving);

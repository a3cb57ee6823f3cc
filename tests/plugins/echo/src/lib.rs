//! The trivial plugin: answers every request with its own body and content type. It measures
//! what the runtime itself costs per request and serves as the well-behaved neighbour in the
//! fault-isolation tests.

use edgeplug_sdk::{Error, Plugin, PluginInfo, Request, Response, export};

struct Echo;

impl Plugin for Echo {
    fn describe() -> PluginInfo {
        PluginInfo::new("echo", env!("CARGO_PKG_VERSION"))
            .description("Answers every request with its own body")
    }

    fn infer(request: Request) -> Result<Response, Error> {
        Ok(Response {
            content_type: request.content_type,
            body: request.body,
            tensors: request.tensors,
        })
    }
}

export!(Echo);

//! {{name}}: doubles a JSON array of numbers with the host's `add` kernel.

use edgeplug_sdk::{Error, Plugin, PluginInfo, Request, Response, Tensor, export};

struct Handler;

impl Plugin for Handler {
    fn describe() -> PluginInfo {
        PluginInfo::new("{{name}}", env!("CARGO_PKG_VERSION"))
            .description("Doubles a JSON array of numbers")
    }

    fn infer(request: Request) -> Result<Response, Error> {
        let values: Vec<f32> = request.json()?;
        let x = Tensor::from_slice(&[values.len()], &values)?;
        Response::json(&x.add(&x)?.to_vec()?)
    }
}

export!(Handler);

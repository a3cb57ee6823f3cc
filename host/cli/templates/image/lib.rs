//! {{name}}: the mean brightness of a PNG or JPEG, decoded and shrunk to 64x64 grayscale in the
//! sandbox, averaged by the host's `global_avg_pool` kernel.

use edgeplug_sdk::preprocess::{DecodeLimits, decode, resize_exact, to_gray8};
use edgeplug_sdk::{Error, Plugin, PluginInfo, Request, Response, Tensor, export};

/// 4 Mpixel at most: within the manifest's memory_mib once decoded.
const LIMITS: DecodeLimits = DecodeLimits {
    max_width: 4096,
    max_height: 4096,
    max_pixels: 4 << 20,
    max_alloc_bytes: 16 << 20,
};

struct Handler;

impl Plugin for Handler {
    fn describe() -> PluginInfo {
        PluginInfo::new("{{name}}", env!("CARGO_PKG_VERSION"))
            .description("Mean brightness (0 to 1) of a PNG or JPEG image")
    }

    fn infer(request: Request) -> Result<Response, Error> {
        let image = to_gray8(&decode(&request.body, &LIMITS)?);
        let small = resize_exact(&image, 64, 64)?;
        let pixels: Vec<f32> = small.as_raw().iter().map(|&p| f32::from(p) / 255.0).collect();
        let mean = Tensor::from_slice(&[1, 1, 64, 64], &pixels)?.global_avg_pool()?;
        let (width, height) = image.dimensions();
        Response::json(&serde_json::json!({
            "width": width, "height": height, "brightness": mean.to_vec()?[0],
        }))
    }
}

export!(Handler);

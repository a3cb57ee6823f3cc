//! Sobel edge magnitude of a PNG or JPEG, normalized to [0, 1]: the example of issue 19's
//! missing host ops (WIT 0.1.3). The sandbox decodes the image and makes it grayscale; the
//! host does the arithmetic: both Sobel gradients in one `conv2d`, their squares (`pow`),
//! summed over the gradient axis (`reduce-sum`), the square root (`sqrt`), the largest
//! magnitude (`reduce-max`) and the division by it (`div`). The image never comes back into
//! the sandbox: only the one number of the largest magnitude does, for the JSON answer; the
//! edge map is the output tensor `edges` [1, 1, H, W].

use edgeplug_sdk::preprocess::{DecodeLimits, decode, to_gray8};
use edgeplug_sdk::{
    Conv2d, Error, Plugin, PluginInfo, Request, Response, Tensor, TensorInfo, export,
};

/// 4 Mpixel at most: within the manifest's memory_mib once decoded.
const LIMITS: DecodeLimits = DecodeLimits {
    max_width: 4096,
    max_height: 4096,
    max_pixels: 4 << 20,
    max_alloc_bytes: 16 << 20,
};

/// The two Sobel kernels as conv2d weights [2, 1, 3, 3]: d/dx (left to right), d/dy (top to
/// bottom).
const SOBEL: [f32; 18] = [
    -1.0, 0.0, 1.0, -2.0, 0.0, 2.0, -1.0, 0.0, 1.0, //
    -1.0, -2.0, -1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 1.0,
];

/// Below this largest magnitude the image is flat: dividing by it would make noise (or, at
/// 0, NaN) of nothing, so the map is divided by this instead and stays ~0.
const FLAT: f32 = 1e-6;

struct Edges;

impl Plugin for Edges {
    fn describe() -> PluginInfo {
        PluginInfo::new("edges", env!("CARGO_PKG_VERSION"))
            .description(env!("CARGO_PKG_DESCRIPTION"))
            .output(TensorInfo::f32("edges", &[1, 1, -1, -1]))
    }

    fn infer(request: Request) -> Result<Response, Error> {
        let gray = to_gray8(&decode(&request.body, &LIMITS)?);
        let (width, height) = gray.dimensions();
        let pixels: Vec<f32> = gray
            .as_raw()
            .iter()
            .map(|&p| f32::from(p) / 255.0)
            .collect();
        let image = Tensor::from_slice(&[1, 1, height as usize, width as usize], &pixels)?;
        // Zero padding of 1 keeps the map the image's size (ONNX Conv, pads 1).
        let gradients = Conv2d::new(&Tensor::from_slice(&[2, 1, 3, 3], &SOBEL)?)
            .pad(1)
            .run(&image)?;
        let magnitude = gradients.powf(2.0)?.reduce_sum(&[1], true)?.sqrt()?;
        let peak = magnitude.reduce_max(&[], false)?;
        let divisor = peak.maximum(&Tensor::from_slice(&[], &[FLAT])?)?;
        let edges = magnitude.div(&divisor)?;
        Ok(Response::json(&serde_json::json!({
            "width": width,
            "height": height,
            "max_magnitude": peak.to_vec()?[0],
        }))?
        .with_tensor("edges", edges))
    }
}

export!(Edges);

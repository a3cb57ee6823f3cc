//! The escalation test plugin: a small edge model (a logistic regression over the 8x8 digit,
//! `digits_edge_lr.onnx`) answers a digit when its top softmax probability reaches the
//! request's `threshold`; below it, the digit goes to the center's `digits` model through the
//! upstream `center` (WIT 0.1.2). When the center cannot help (down, too slow for the
//! request's deadline, failing), the plugin answers with the edge model's label, marked
//! `"degraded": true`.
//!
//! Input: `{"image": [[8 rows of 8 pixels 0..16]], "threshold": 0.9}` (threshold optional).
//! Answer: `{"label", "confidence" (the edge model's top probability), "source" ("edge" or
//! "center"), "degraded", "error" (why the center could not help, when it could not)}`.

use edgeplug_sdk::upstream::{self, UpstreamError};
use edgeplug_sdk::{Error, Model, Plugin, PluginInfo, Request, Response, Tensor, export};
use serde::Deserialize;
use serde_json::json;

/// The top probability under which a digit escalates, unless the request says otherwise.
const DEFAULT_THRESHOLD: f32 = 0.9;

#[derive(Deserialize)]
struct Digit {
    image: Vec<Vec<f32>>,
    threshold: Option<f32>,
}

fn argmax(values: &[f32]) -> (usize, f32) {
    values.iter().copied().enumerate().fold(
        (0, f32::MIN),
        |best, (i, v)| if v > best.1 { (i, v) } else { best },
    )
}

/// The center's input: the pixels / 16, each repeated 2x2 (digits_cnn's 16x16 input).
fn center_input(pixels: &[f32]) -> Result<Tensor, Error> {
    let mut upsampled = vec![0f32; 256];
    for (i, value) in upsampled.iter_mut().enumerate() {
        let (row, col) = (i / 16, i % 16);
        *value = pixels[(row / 2) * 8 + col / 2];
    }
    Tensor::from_slice(&[1, 1, 16, 16], &upsampled)
}

fn escalate(pixels: &[f32]) -> Result<usize, UpstreamError> {
    let input = center_input(pixels).map_err(|e| UpstreamError {
        code: upstream::UpstreamErrorCode::InvalidArgument,
        message: e.message,
    })?;
    let outputs = upstream::infer("center", "digits", &[("input", &input)])?;
    let probs = outputs
        .iter()
        .find(|(name, _)| name == "probs")
        .and_then(|(_, t)| t.to_vec().ok())
        .ok_or_else(|| UpstreamError {
            code: upstream::UpstreamErrorCode::Unavailable,
            message: "the center's answer has no float output \"probs\"".into(),
        })?;
    Ok(argmax(&probs).0)
}

struct Escalate;

impl Plugin for Escalate {
    fn describe() -> PluginInfo {
        PluginInfo::new("escalate", env!("CARGO_PKG_VERSION"))
            .description("Edge digits model escalating unsure digits to the center")
    }

    fn infer(request: Request) -> Result<Response, Error> {
        let digit: Digit = request.json()?;
        let pixels: Vec<f32> = digit.image.iter().flatten().map(|p| p / 16.0).collect();
        if digit.image.len() != 8 || pixels.len() != 64 {
            return Err(Error::invalid_argument("image must be 8 rows of 8 pixels"));
        }
        let x = Tensor::from_slice(&[1, 64], &pixels)?;
        let probs = Model::open("edge")?.run(&[&x])?.remove(0).to_vec()?;
        let (label, confidence) = argmax(&probs);
        let threshold = digit.threshold.unwrap_or(DEFAULT_THRESHOLD);
        if confidence >= threshold {
            return Response::json(&json!({
                "label": label, "confidence": confidence, "source": "edge", "degraded": false,
            }));
        }
        match escalate(&pixels) {
            Ok(center) => Response::json(&json!({
                "label": center, "confidence": confidence, "source": "center", "degraded": false,
            })),
            Err(e) if e.center_could_not_help() => Response::json(&json!({
                "label": label, "confidence": confidence, "source": "edge", "degraded": true,
                "error": e.message,
            })),
            Err(e) => Err(e.into()),
        }
    }
}

export!(Escalate);

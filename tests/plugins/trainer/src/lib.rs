//! Trains a head in the host on the labeled features in its request (the `train` interface
//! added in WIT 0.1.1) and answers what the training did:
//!
//! request: `{"features": [[f32]], "labels": [u32], "steps": n, "optimizer": "sgd" |
//! "momentum" | "adam" | "adamw", "lr": f32, "hidden": null | width, "seed": u64,
//! "clip_norm": null | f32}`
//!
//! answer: `{"before": {loss, correct}, "after": {loss, correct}, "losses": [..],
//! "clipped": n, "weights": [[shape]]}`

use edgeplug_sdk::train::{Head, HeadSpec, Optimizer};
use edgeplug_sdk::{Error, Plugin, PluginInfo, Request, Response, Tensor, export};
use serde::Deserialize;

#[derive(Deserialize)]
struct Job {
    features: Vec<Vec<f32>>,
    labels: Vec<u32>,
    steps: u32,
    optimizer: String,
    lr: f32,
    hidden: Option<u32>,
    seed: u64,
    clip_norm: Option<f32>,
}

struct Trainer;

fn features(rows: &[Vec<f32>]) -> Result<Tensor, Error> {
    let width = rows.first().map_or(0, Vec::len);
    if rows.iter().any(|r| r.len() != width) {
        return Err(Error::invalid_argument(
            "every feature row must have the same width",
        ));
    }
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&[rows.len(), width], &flat)
}

impl Plugin for Trainer {
    fn describe() -> PluginInfo {
        PluginInfo::new("trainer", env!("CARGO_PKG_VERSION"))
            .description("Trains a head in the host on the features it is sent")
    }

    fn infer(request: Request) -> Result<Response, Error> {
        let job: Job = serde_json::from_slice(&request.body)
            .map_err(|e| Error::invalid_argument(format!("not a training job: {e}")))?;
        let x = features(&job.features)?;
        let classes = job.labels.iter().copied().max().unwrap_or(0) + 1;
        let width = job.features.first().map_or(0, Vec::len) as u32;
        let spec = HeadSpec {
            features: width,
            classes: classes.max(2),
            hidden: job.hidden,
            seed: job.seed,
        };
        let mut optimizer = match job.optimizer.as_str() {
            "sgd" => Optimizer::sgd(job.lr),
            "momentum" => Optimizer::momentum(job.lr),
            "adam" => Optimizer::adam(job.lr),
            "adamw" => Optimizer::adamw(job.lr),
            other => return Err(Error::invalid_argument(format!("no optimizer {other:?}"))),
        };
        if let Some(norm) = job.clip_norm {
            optimizer = optimizer.clip_norm(norm);
        }
        let mut head = Head::create(spec, optimizer)?;
        let before = head.evaluate(&x, &job.labels)?;
        let mut losses = Vec::new();
        let mut clipped = 0;
        for _ in 0..job.steps {
            let report = head.step(&x, &job.labels)?;
            losses.push(report.loss);
            clipped += u32::from(report.clipped);
        }
        let after = head.evaluate(&x, &job.labels)?;
        let weights: Vec<Vec<usize>> = head.weights()?.iter().map(Tensor::shape).collect();
        Response::json(&serde_json::json!({
            "before": {"loss": before.loss, "correct": before.correct},
            "after": {"loss": after.loss, "correct": after.correct},
            "losses": losses,
            "clipped": clipped,
            "weights": weights,
        }))
    }
}

export!(Trainer);

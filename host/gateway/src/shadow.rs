//! Shadow runs: a copy of a request to the active version also runs on its shadow canary,
//! after the client's answer has left, and the two answers are compared. The client never
//! waits for the copy and never sees its answer; the copy never queues (a canary with all its
//! permits taken skips it, counted as `skipped`), so a shadow costs CPU, not latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::Value;

use crate::Gateway;
use crate::lanes::DispatchError;
use crate::metrics::Metrics;
use crate::registry::{ActivePlugin, Canary};
use edgeplug_kernels::{Tensor, TensorData};
use edgeplug_runtime::{InferRequest, InferResponse, InvokeError};

/// Numbers in two answers agree within this, relative to the larger magnitude (or absolute
/// below 1): a new build of the same model may round differently, which is not a difference
/// an operator wants to hear about.
const TOLERANCE: f64 = 1e-4;

/// A request's copy for the shadow canary of the version it runs on.
pub struct ShadowCopy {
    canary: Arc<Canary>,
    request: InferRequest,
}

/// One shadow comparison's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Agreed,
    Differed,
    /// The canary failed where the active version answered.
    Failed,
}

impl ShadowCopy {
    /// A copy of `request` if `plugin` has a shadow canary.
    pub fn of(gw: &Gateway, plugin: &ActivePlugin, request: &InferRequest) -> Option<ShadowCopy> {
        let canary = gw.registry.shadow_of(plugin)?;
        Some(ShadowCopy {
            canary,
            request: request.clone(),
        })
    }

    /// Runs the copy in the background and compares its answer with `primary`, the answer
    /// the client got. A primary refused before it ran (saturated) has nothing to compare.
    pub fn run_against(self, gw: &Gateway, primary: &Result<InferResponse, DispatchError>) {
        let primary: Result<InferResponse, &'static str> = match primary {
            Ok(answer) => Ok(answer.clone()),
            Err(DispatchError::Failed(e)) => Err(e.code()),
            Err(DispatchError::Saturated(_)) => return,
        };
        let canary = self.canary;
        let shadow = &canary.shadow;
        let Ok(permit) = canary.plugin.permits.clone().try_acquire_owned() else {
            count(&gw.metrics, &canary, "shadow-skipped", &shadow.skipped);
            return;
        };
        let metrics = gw.metrics.clone();
        let request = self.request;
        tokio::spawn(async move {
            let task_canary = canary.clone();
            let started = Instant::now();
            let answer = tokio::task::spawn_blocking(move || {
                let answer = task_canary.plugin.plugin.infer(request);
                drop(permit);
                answer
            })
            .await
            .unwrap_or_else(|e| Err(InvokeError::trap(format!("the shadow run failed: {e}"))));
            let plugin = &canary.plugin;
            plugin.metrics.observe(
                started.elapsed(),
                answer.as_ref().err().map(InvokeError::code),
            );
            let answer = answer.map_err(|e| e.code());
            let (kind, counter) = match compare(&primary, &answer) {
                Comparison::Agreed => ("shadow-agree", &canary.shadow.agreed),
                Comparison::Differed => ("shadow-differ", &canary.shadow.differed),
                Comparison::Failed => ("shadow-failed", &canary.shadow.failed),
            };
            count(&metrics, &canary, kind, counter);
        });
    }
}

/// One more of `kind` for the canary: its own counter (the listing) and the plugin's metric.
fn count(metrics: &Metrics, canary: &Canary, kind: &'static str, counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
    metrics.count(kind, canary.plugin.name(), "");
}

/// The active version's answer (or error code) against the canary's.
pub fn compare(
    primary: &Result<InferResponse, &str>,
    shadow: &Result<InferResponse, &str>,
) -> Comparison {
    match (primary, shadow) {
        (Ok(a), Ok(b)) if answers_agree(a, b) => Comparison::Agreed,
        (Err(a), Err(b)) if a == b => Comparison::Agreed,
        (Ok(_), Err(_)) => Comparison::Failed,
        _ => Comparison::Differed,
    }
}

fn answers_agree(a: &InferResponse, b: &InferResponse) -> bool {
    let bodies = a.body == b.body
        || match (
            serde_json::from_slice::<Value>(&a.body),
            serde_json::from_slice::<Value>(&b.body),
        ) {
            (Ok(x), Ok(y)) => json_close(&x, &y),
            _ => false,
        };
    a.content_type == b.content_type
        && bodies
        && a.tensors.len() == b.tensors.len()
        && a.tensors
            .iter()
            .zip(&b.tensors)
            .all(|((n, x), (m, y))| n == m && tensors_close(x, y))
}

fn close(x: f64, y: f64) -> bool {
    (x - y).abs() <= TOLERANCE * x.abs().max(y.abs()).max(1.0)
}

fn json_close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => close(x, y),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w)))
        }
        _ => a == b,
    }
}

fn tensors_close(a: &Tensor, b: &Tensor) -> bool {
    a.shape() == b.shape()
        && match (a.data(), b.data()) {
            (TensorData::F32(x), TensorData::F32(y)) => x
                .iter()
                .zip(y.iter())
                .all(|(x, y)| close(f64::from(*x), f64::from(*y))),
            (TensorData::U8(x), TensorData::U8(y)) => x == y,
            (TensorData::I64(x), TensorData::I64(y)) => x == y,
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &str) -> InferResponse {
        InferResponse {
            content_type: "application/json".into(),
            body: body.as_bytes().to_vec(),
            tensors: Vec::new(),
            degraded: false,
        }
    }

    #[test]
    fn answers_are_compared_as_json_with_a_tolerance() {
        let a = Ok(json(r#"{"label":7,"probability":0.91234}"#));
        let same = Ok(json(r#"{"probability": 0.912345, "label": 7}"#));
        let other = Ok(json(r#"{"label":1,"probability":0.91234}"#));
        assert_eq!(compare(&a, &same), Comparison::Agreed);
        assert_eq!(compare(&a, &other), Comparison::Differed);
        assert_eq!(compare(&a, &Err("trap")), Comparison::Failed);
        assert_eq!(
            compare(&Err("invalid-argument"), &Err("invalid-argument")),
            Comparison::Agreed
        );
        assert_eq!(compare(&Err("trap"), &same), Comparison::Differed);
    }

    #[test]
    fn tensors_are_compared_by_shape_and_value() {
        let with = |v: Vec<f32>| InferResponse {
            tensors: vec![("y".into(), Tensor::from_f32(vec![1, v.len()], v).unwrap())],
            ..json("{}")
        };
        let a = Ok(with(vec![1.0, 2.0]));
        assert_eq!(
            compare(&a, &Ok(with(vec![1.0, 2.00001]))),
            Comparison::Agreed
        );
        assert_eq!(compare(&a, &Ok(with(vec![1.0, 2.1]))), Comparison::Differed);
        assert_eq!(
            compare(&a, &Ok(with(vec![1.0, 2.0, 3.0]))),
            Comparison::Differed
        );
    }
}

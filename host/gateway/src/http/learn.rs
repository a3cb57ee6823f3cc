//! Learning's admin endpoints (plugins of world `learning-plugin`):
//! - `POST /v1/admin/plugins/{name}/finetune[?seed=N]` runs a fine-tune job on the training
//!   lane with the `[learning]` budget, then the gate; answers when both are done with the
//!   job's figures and the gate's report (`accepted`, or the `reason` it was refused).
//! - `POST /v1/admin/plugins/{name}/head/rollback` makes the previous trained head live (or
//!   the head the plugin ships, when there is none).
//!
//! `GET /v1/plugins` shows each plugin's live head and its last job.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde_json::json;

use super::{Body, Failure, fail, json_response};
use crate::Gateway;
use crate::auth::AdminOp;
use crate::learning::LearnError;

fn failure(e: &LearnError) -> Failure {
    let status = match e {
        LearnError::NotFound(_) => StatusCode::NOT_FOUND,
        LearnError::NotLearning(_) | LearnError::Refused(_) => StatusCode::CONFLICT,
        LearnError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        LearnError::Job(_) => StatusCode::UNPROCESSABLE_ENTITY,
        LearnError::Samples(_) | LearnError::Store(_) => StatusCode::INSUFFICIENT_STORAGE,
    };
    fail(status, e.code(), e.to_string())
}

fn seed(query: Option<&str>) -> Result<u64, Failure> {
    let Some(query) = query else {
        return Ok(0);
    };
    let mut seed = 0;
    for pair in query.split('&') {
        let Some(("seed", value)) = pair.split_once('=') else {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "invalid-argument",
                format!("unknown parameter {pair:?} (seed=N)"),
            ));
        };
        seed = value.parse().map_err(|_| {
            fail(
                StatusCode::BAD_REQUEST,
                "invalid-argument",
                format!("seed {value:?} is not a whole number"),
            )
        })?;
    }
    Ok(seed)
}

/// Runs `op`; `query` is the request's query string.
pub(super) async fn handle(
    gw: &Arc<Gateway>,
    query: Option<String>,
    op: &AdminOp<'_>,
    name: &str,
) -> Result<Response<Body>, Failure> {
    match op {
        AdminOp::Finetune(_) => {
            let seed = seed(query.as_deref())?;
            let (job, gate) = gw
                .train_and_install(name, seed)
                .await
                .map_err(|e| failure(&e))?;
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "plugin": name,
                    "job": {
                        "samples": job.samples,
                        "steps": job.steps,
                        "took_ms": job.took.as_secs_f64() * 1e3,
                        "peak_tensor_bytes": job.peak_tensor_bytes,
                    },
                    "gate": gate,
                }),
            ))
        }
        _ => {
            let live = gw.rollback_head(name).await.map_err(|e| failure(&e))?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"plugin": name, "live_sequence": live}),
            ))
        }
    }
}

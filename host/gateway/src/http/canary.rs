//! The canary's admin endpoints:
//! - `PUT /v1/admin/plugins/{name}?canary=10` (a bundle as the body) starts the bundle as a
//!   canary serving 10 % of the plugin's requests; `?shadow=true` runs it on a copy of every
//!   request instead. The gate: `max_error_rate=1%` (over the active version's rate),
//!   `max_p99_ms=50`, `max_disagreement=5%` (shadow), `min_requests=20`,
//!   `promote_after=10m` (promote by itself once the gate held that long).
//! - `POST /v1/admin/plugins/{name}/canary/promote` makes it the active version.
//! - `DELETE /v1/admin/plugins/{name}/canary` ends it.
//!
//! `GET /v1/plugins` shows a running canary's figures and how the last one ended.

use std::sync::Arc;

use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::{
    Body, Failure, SMALL_BODY_LIMIT, admin_busy, admin_failure, fail, json_response, read_body,
};
use crate::Gateway;
use crate::audit::AuditRecord;
use crate::auth::TokenEntry;
use crate::body::{self, RequestBody};
use crate::registry::{CanaryOutcome, parse_canary_spec};

/// Whether a push asks for a canary rather than a swap.
pub(super) fn asked<B>(request: &Request<B>) -> bool {
    request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.starts_with("canary=") || pair.starts_with("shadow="))
    })
}

/// Starts, promotes or ends `name`'s canary, as the method and path say.
pub(super) async fn handle(
    gw: &Arc<Gateway>,
    request: Request<RequestBody>,
    method: &Method,
    name: &str,
    who: &TokenEntry,
    record: &mut AuditRecord,
) -> Result<Response<Body>, Failure> {
    let task_gw = gw.clone();
    let task_name = name.to_string();
    match *method {
        Method::PUT => {
            let query = request.uri().query().unwrap_or_default().to_string();
            let (mode, gate) = parse_canary_spec(&query)
                .map_err(|m| fail(StatusCode::BAD_REQUEST, "invalid-argument", m))?;
            let limit = gw.config.bundle_limits().max_bundle_bytes as usize;
            let bundle = read_body(gw, request, limit).await?;
            record.bundle_sha256 = Some(edgeplug_bundle::manifest::Sha256::of(&bundle).to_string());
            let started = gw
                .admin
                .run(move || {
                    task_gw
                        .registry
                        .start_canary(bundle.to_vec(), &task_name, mode, gate)
                })
                .await
                .ok_or_else(admin_busy)?;
            match started {
                Ok((started, canary)) => {
                    record.version = Some(started.canary.clone());
                    record.previous = Some(started.active.clone());
                    tokio::spawn(crate::registry::watch(gw.clone(), name.to_string(), canary));
                    Ok(json_response(StatusCode::OK, &json!(started)))
                }
                Err(e) => {
                    gw.metrics.rejected(name, e.code());
                    tracing::warn!(plugin = %name, token = %who.name, error = %e, "canary refused");
                    Err(admin_failure(&e))
                }
            }
        }
        Method::POST => {
            body::check_declared(&request, SMALL_BODY_LIMIT).map_err(super::body_failure)?;
            let outcome = gw
                .admin
                .run(move || task_gw.registry.promote_canary(&task_name, None))
                .await
                .ok_or_else(admin_busy)?
                .map_err(|e| admin_failure(&e))?;
            record.version = outcome.version.clone();
            record.previous = outcome.previous.clone();
            Ok(json_response(StatusCode::OK, &json!(outcome)))
        }
        _ => {
            body::check_declared(&request, SMALL_BODY_LIMIT).map_err(super::body_failure)?;
            let reason = format!("ended by token {}", who.name);
            let version = gw
                .admin
                .run(move || {
                    task_gw
                        .registry
                        .end_canary(&task_name, None, CanaryOutcome::Aborted, &reason)
                })
                .await
                .ok_or_else(admin_busy)?
                .map_err(|e| admin_failure(&e))?;
            record.version = Some(version.clone());
            Ok(json_response(
                StatusCode::OK,
                &json!({"name": name, "canary": version, "outcome": CanaryOutcome::Aborted}),
            ))
        }
    }
}

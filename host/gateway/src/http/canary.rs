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

use super::{Body, Failure, SMALL_BODY_LIMIT, admin_failure, fail, json_response, read_body};
use crate::Gateway;
use crate::audit::AuditRecord;
use crate::auth::TokenEntry;
use crate::body::{self, RequestBody};
use crate::registry::{CanaryGate, CanaryMode};
use crate::units::{parse_duration, parse_rate};

/// Whether a push asks for a canary rather than a swap.
pub(super) fn asked<B>(request: &Request<B>) -> bool {
    request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.starts_with("canary=") || pair.starts_with("shadow="))
    })
}

/// The canary's mode and gate from a push's query string.
pub(super) fn parse_query(query: &str) -> Result<(CanaryMode, CanaryGate), String> {
    let mut mode = None;
    let mut gate = CanaryGate::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |what: &str| {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{key}={value:?}: {what}"))
        };
        match key {
            "canary" => {
                let percent = value
                    .trim_end_matches('%')
                    .parse::<u8>()
                    .ok()
                    .filter(|p| (1..=99).contains(p))
                    .ok_or_else(|| {
                        format!("canary={value:?}: the canary's share is a percentage from 1 to 99")
                    })?;
                mode = Some(CanaryMode::Split { percent });
            }
            "shadow" => match value {
                "true" | "1" => mode = Some(CanaryMode::Shadow),
                _ => return Err(format!("shadow={value:?}: only shadow=true is meaningful")),
            },
            "max_error_rate" => {
                gate.max_error_rate = parse_rate(value).map_err(|e| format!("{key}: {e:#}"))?
            }
            "max_disagreement" => {
                gate.max_disagreement =
                    Some(parse_rate(value).map_err(|e| format!("{key}: {e:#}"))?)
            }
            "max_p99_ms" => gate.max_p99_ms = Some(number("milliseconds")?),
            "min_requests" => {
                gate.min_requests = value
                    .parse()
                    .map_err(|_| format!("{key}={value:?}: a count of requests"))?
            }
            "promote_after" => {
                gate.promote_after =
                    Some(parse_duration(value).map_err(|e| format!("{key}: {e:#}"))?)
            }
            _ => {
                return Err(format!(
                    "unknown parameter {key:?}: a canary takes canary or shadow, \
                     max_error_rate, max_p99_ms, max_disagreement, min_requests, promote_after"
                ));
            }
        }
    }
    let mode = mode.ok_or("give canary=PERCENT or shadow=true")?;
    if matches!(mode, CanaryMode::Split { .. }) && gate.max_disagreement.is_some() {
        return Err("max_disagreement applies to shadow=true only".into());
    }
    if query.contains("canary=") && query.contains("shadow=") {
        return Err("give either canary=PERCENT or shadow=true, not both".into());
    }
    Ok((mode, gate))
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
    let busy = || Failure {
        retry_after: true,
        ..fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin-busy",
            "too many admin operations are waiting; retry later",
        )
    };
    match *method {
        Method::PUT => {
            let query = request.uri().query().unwrap_or_default().to_string();
            let (mode, gate) = parse_query(&query)
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
                .ok_or_else(busy)?;
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
                .ok_or_else(busy)?
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
                        .end_canary(&task_name, None, "aborted", &reason)
                })
                .await
                .ok_or_else(busy)?
                .map_err(|e| admin_failure(&e))?;
            record.version = Some(version.clone());
            Ok(json_response(
                StatusCode::OK,
                &json!({"name": name, "canary": version, "outcome": "aborted"}),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_canary_query_gives_its_mode_and_gate() {
        let (mode, gate) =
            parse_query("canary=10&max_error_rate=2%&max_p99_ms=40&promote_after=2m").unwrap();
        assert_eq!(mode, CanaryMode::Split { percent: 10 });
        assert_eq!(gate.max_error_rate, 0.02);
        assert_eq!(gate.max_p99_ms, Some(40.0));
        assert_eq!(gate.promote_after, Some(Duration::from_secs(120)));
        assert_eq!(gate.min_requests, CanaryGate::default().min_requests);
        let (mode, gate) = parse_query("shadow=true&max_disagreement=5%").unwrap();
        assert_eq!(mode, CanaryMode::Shadow);
        assert_eq!(gate.max_disagreement, Some(0.05));
    }

    #[test]
    fn a_bad_canary_query_says_what_is_wrong() {
        for (query, says) in [
            ("canary=0", "1 to 99"),
            ("canary=100", "1 to 99"),
            ("canary=ten", "1 to 99"),
            ("shadow=false", "shadow=true"),
            ("canary=10&shadow=true", "not both"),
            ("canary=10&max_disagreement=5%", "shadow=true only"),
            ("canary=10&max_error_rate=2", "percentage"),
            ("canary=10&max_p99_ms=-1", "milliseconds"),
            ("canary=10&promote_after=soon", "duration"),
            ("canary=10&speed=fast", "unknown parameter"),
            ("max_error_rate=1%", "canary=PERCENT or shadow=true"),
        ] {
            let e = parse_query(query).unwrap_err();
            assert!(e.contains(says), "{query}: {e}");
        }
    }
}

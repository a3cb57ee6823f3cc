//! Routes, status codes and JSON bodies: the only place that knows HTTP.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/` | the web page |
//! | GET | `/v1/plugins` | plugins, active and kept versions, signer, load time, stats |
//! | POST | `/v1/plugins/{name}/infer` | body and content type to the plugin, its response back |
//! | POST | `/predict` | multipart form, file field `image`, to `default_plugin`: `{"prediction": label}` |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/v2/health/live`, `/v2/health/ready`, `/v2` | Open Inference Protocol v2 |
//! | GET | `/v2/models/{name}[/versions/{v}]`, `.../ready` | model metadata from `describe()`, readiness |
//! | POST | `/v2/models/{name}[/versions/{v}]/infer` | JSON tensors in and out |
//! | PUT | `/v1/admin/plugins/{name}` | push a bundle (bearer token) |
//! | POST | `/v1/admin/plugins/{name}/rollback` | roll back (bearer token) |
//! | DELETE | `/v1/admin/plugins/{name}` | remove (bearer token) |

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::Gateway;
use super::lanes;
use super::registry::{ActivePlugin, AdminError};
use edgeplug_bundle::{BundleError, StoreError};
#[cfg(test)]
use edgeplug_runtime::LoadError;
use edgeplug_runtime::{InferRequest, InferResponse, InvokeError};

pub type Body = Full<Bytes>;

const PAGE: &str = include_str!("page.html");

/// Room for the multipart framing around `/predict`'s file.
const MULTIPART_OVERHEAD: usize = 64 << 10;
/// A request refused before its body was read has at most this much of it read and
/// discarded, so the client sees the answer instead of a reset connection.
const DRAIN_LIMIT: u64 = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// An answer with a status other than 200, built where the failure is found.
struct Failure {
    status: StatusCode,
    body: Value,
    retry_after: bool,
}

fn fail(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
    Failure {
        status,
        body: json!({"error": {"code": code, "message": message.into()}}),
        retry_after: false,
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn failure_response(f: Failure) -> Response<Body> {
    let mut response = json_response(f.status, &f.body);
    if f.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if f.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"edgeplug-admin\""),
        );
    }
    response
}

/// The gateway's service: every request ends here and gets an answer.
pub async fn handle(gateway: Arc<Gateway>, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let segments: Vec<&str> = if segments == [""] {
        Vec::new()
    } else {
        segments
    };
    let result = route(&gateway, request, &method, &segments, started).await;
    let response = match result {
        Ok(response) => response,
        Err(f) => {
            if !path.starts_with("/v1/admin") {
                gateway.metrics.refused(f.status.as_u16());
            }
            failure_response(f)
        }
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1e3, "request");
    response
}

async fn route(
    gw: &Arc<Gateway>,
    request: Request<Incoming>,
    method: &Method,
    segments: &[&str],
    started: Instant,
) -> Result<Response<Body>, Failure> {
    use Method as M;
    match (method, segments) {
        (&M::GET, []) | (&M::GET, ["index.html"]) => {
            let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            Ok(response)
        }
        (&M::GET, ["v1", "plugins"]) => list(gw).await,
        (&M::POST, ["v1", "plugins", name, "infer"]) => invoke(gw, request, name, started).await,
        (&M::POST, ["predict"]) => predict(gw, request, started).await,
        (&M::GET, ["metrics"]) => {
            let mut response = Response::new(Full::new(Bytes::from(gw.metrics.render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(response)
        }
        (&M::GET, ["v2", "health", "live"]) => {
            Ok(json_response(StatusCode::OK, &json!({"live": true})))
        }
        (&M::GET, ["v2", "health", "ready"]) => {
            Ok(json_response(StatusCode::OK, &json!({"ready": true})))
        }
        (&M::GET, ["v2"]) => Ok(json_response(
            StatusCode::OK,
            &json!({"name": "edgeplug", "version": env!("CARGO_PKG_VERSION"), "extensions": []}),
        )),
        (_, ["v2", "models", name, rest @ ..]) => {
            let (version, rest) = match rest {
                ["versions", v, rest @ ..] => (Some(*v), rest),
                rest => (None, rest),
            };
            match (method, rest) {
                (&M::GET, []) => v2_metadata(gw, name, version),
                (&M::GET, ["ready"]) => v2_ready(gw, name, version),
                (&M::POST, ["infer"]) => v2_infer(gw, request, name, version, started).await,
                _ => Err(v2_fail(StatusCode::NOT_FOUND, "no such v2 endpoint")),
            }
        }
        (_, ["v1", "admin", ..]) => admin(gw, request, method, segments).await,
        (_, ["v1", "plugins"])
        | (_, ["v1", "plugins", _, "infer"])
        | (_, ["predict"])
        | (_, ["metrics"]) => Err(fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("{method} is not allowed here"),
        )),
        _ => Err(fail(StatusCode::NOT_FOUND, "not-found", "no such endpoint")),
    }
}

// ---- bodies ----

/// Reads a whole body of at most `limit` bytes; a larger one is 413 (announced by
/// Content-Length, or found while reading).
async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, Failure> {
    let too_large = |size: Option<u64>| {
        let size = size
            .map(|s| format!("{s} bytes"))
            .unwrap_or_else(|| "more".into());
        fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request-too-large",
            format!("request body of {size} exceeds the limit of {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared
        && size > limit as u64
    {
        drain(request.into_body()).await;
        return Err(too_large(Some(size)));
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(None)),
        Err(e) => Err(fail(
            StatusCode::BAD_REQUEST,
            "bad-body",
            format!("cannot read the body: {e}"),
        )),
    }
}

/// Reads and discards what the client sends (bounded in size and time) so that a refusal
/// reaches it before the connection closes.
async fn drain(mut body: Incoming) {
    let work = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
                if seen > DRAIN_LIMIT {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, work).await;
}

fn content_type(request: &Request<Incoming>) -> String {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string()
}

// ---- invoking plugins ----

fn lookup(gw: &Gateway, name: &str) -> Result<Arc<ActivePlugin>, Failure> {
    gw.registry.get(name).ok_or_else(|| {
        fail(
            StatusCode::NOT_FOUND,
            "plugin-not-found",
            format!("no plugin named {name:?} is active"),
        )
    })
}

/// Runs a request through [`lanes::dispatch`] and turns its refusal or failure into HTTP.
async fn run(
    gw: &Gateway,
    plugin: Arc<ActivePlugin>,
    request: InferRequest,
    started: Instant,
) -> Result<InferResponse, Failure> {
    lanes::dispatch(gw, plugin, request, started)
        .await
        .map_err(|e| match e {
            lanes::DispatchError::Saturated(message) => Failure {
                retry_after: true,
                ..fail(StatusCode::SERVICE_UNAVAILABLE, "saturated", message)
            },
            lanes::DispatchError::Failed(e) => invoke_failure(&e),
        })
}

fn invoke_failure(e: &InvokeError) -> Failure {
    Failure {
        status: StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body: json!({"error": e.to_json()}),
        retry_after: false,
    }
}

fn version_headers(response: &mut Response<Body>, plugin: &ActivePlugin) {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(plugin.name()) {
        headers.insert("x-edgeplug-plugin", v);
    }
    if let Ok(v) = HeaderValue::from_str(&plugin.version.to_string()) {
        headers.insert("x-edgeplug-version", v);
    }
}

async fn invoke(
    gw: &Gateway,
    request: Request<Incoming>,
    name: &str,
    started: Instant,
) -> Result<Response<Body>, Failure> {
    let plugin = lookup(gw, name)?;
    let content_type = content_type(&request);
    let limit = plugin.plugin.shared().limits().request_bytes;
    let body = read_body(request, limit).await?;
    let request = InferRequest {
        content_type,
        body: body.to_vec(),
        tensors: Vec::new(),
    };
    let answer = run(gw, plugin.clone(), request, started).await?;
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    if let Ok(v) = HeaderValue::from_str(&answer.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    version_headers(&mut response, &plugin);
    Ok(response)
}

/// The classic Flask edge service: a form with a file field `image`, answered
/// `{"prediction": <label>}` by the default plugin.
async fn predict(
    gw: &Gateway,
    request: Request<Incoming>,
    started: Instant,
) -> Result<Response<Body>, Failure> {
    let name = gw.config.default_plugin.as_deref().ok_or_else(|| {
        fail(
            StatusCode::NOT_FOUND,
            "no-default-plugin",
            "/predict needs default_plugin in the gateway's configuration",
        )
    })?;
    let plugin = lookup(gw, name)?;
    let form_type = content_type(&request);
    let boundary = super::multipart::boundary(&form_type).ok_or_else(|| {
        fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-multipart",
            "send multipart/form-data with a file field named \"image\"",
        )
    })?;
    let limit = plugin.plugin.shared().limits().request_bytes + MULTIPART_OVERHEAD;
    let body = read_body(request, limit).await?;
    let parts = super::multipart::parse(&body, &boundary)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, "bad-multipart", e))?;
    let image = parts
        .into_iter()
        .find(|p| p.name == "image")
        .ok_or_else(|| {
            fail(
                StatusCode::BAD_REQUEST,
                "missing-image",
                "the form has no file field named \"image\"",
            )
        })?;
    let content_type = sniff_image(image.data)
        .map(String::from)
        .or(image.content_type.clone())
        .unwrap_or_else(|| "application/octet-stream".into());
    let request = InferRequest {
        content_type,
        body: image.data.to_vec(),
        tensors: Vec::new(),
    };
    let answer = run(gw, plugin.clone(), request, started).await?;
    let value: Value = serde_json::from_slice(&answer.body).map_err(|_| {
        fail(
            StatusCode::BAD_GATEWAY,
            "not-json",
            format!(
                "plugin {name} did not answer JSON ({})",
                answer.content_type
            ),
        )
    })?;
    // `{"label": ...}` (digits), `[{"label": ..., "probability": ...}, ...]` (a top-k
    // classifier: its first), `{"prediction": ...}`, or else the whole answer.
    let prediction = value
        .get("label")
        .or_else(|| value.get(0).and_then(|top| top.get("label")))
        .or_else(|| value.get("prediction"))
        .cloned()
        .unwrap_or(value);
    let mut response = json_response(StatusCode::OK, &json!({"prediction": prediction}));
    version_headers(&mut response, &plugin);
    Ok(response)
}

fn sniff_image(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else {
        None
    }
}

// ---- Open Inference Protocol v2 ----

fn v2_fail(status: StatusCode, message: impl Into<String>) -> Failure {
    Failure {
        status,
        body: json!({"error": message.into()}),
        retry_after: false,
    }
}

fn v2_lookup(
    gw: &Gateway,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<ActivePlugin>, Failure> {
    let plugin = gw
        .registry
        .get(name)
        .ok_or_else(|| v2_fail(StatusCode::NOT_FOUND, format!("model {name:?} not found")))?;
    if let Some(v) = version
        && v != plugin.version.to_string()
    {
        return Err(v2_fail(
            StatusCode::NOT_FOUND,
            format!(
                "model {name:?} version {v:?} is not the active version {}",
                plugin.version
            ),
        ));
    }
    Ok(plugin)
}

fn v2_metadata(gw: &Gateway, name: &str, version: Option<&str>) -> Result<Response<Body>, Failure> {
    let plugin = v2_lookup(gw, name, version)?;
    let info = plugin.plugin.info();
    let spec = |s: &edgeplug_models::model::TensorSpec| json!({"name": s.name, "datatype": super::oip::datatype(s.element_type), "shape": s.shape});
    let versions: Vec<String> = gw
        .registry
        .loaded_versions(name)
        .iter()
        .map(|v| v.to_string())
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "name": name,
            "versions": versions,
            "platform": "edgeplug-wasm",
            "inputs": info.inputs.iter().map(spec).collect::<Vec<_>>(),
            "outputs": info.outputs.iter().map(spec).collect::<Vec<_>>(),
            "parameters": {"description": info.description},
        }),
    ))
}

fn v2_ready(gw: &Gateway, name: &str, version: Option<&str>) -> Result<Response<Body>, Failure> {
    v2_lookup(gw, name, version)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"name": name, "ready": true}),
    ))
}

async fn v2_infer(
    gw: &Gateway,
    request: Request<Incoming>,
    name: &str,
    version: Option<&str>,
    started: Instant,
) -> Result<Response<Body>, Failure> {
    let plugin = v2_lookup(gw, name, version)?;
    let limit = plugin.plugin.shared().limits().request_bytes;
    // JSON numbers take several bytes per element: allow the text 8 times the binary limit,
    // then hold the decoded request to the limit itself.
    let body = read_body(request, limit.saturating_mul(8)).await?;
    let decoded = super::oip::decode(&body).map_err(|e| v2_fail(StatusCode::BAD_REQUEST, e.0))?;
    let size = decoded.request.body.len()
        + decoded
            .request
            .tensors
            .iter()
            .map(|(_, t)| t.byte_size())
            .sum::<usize>();
    if size > limit {
        return Err(v2_fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the inputs take {size} bytes, over the limit of {limit} bytes"),
        ));
    }
    let answer = run(gw, plugin.clone(), decoded.request, started)
        .await
        .map_err(|f| Failure {
            body: json!({"error": f.body["error"]["message"].as_str().unwrap_or("failed")}),
            ..f
        })?;
    let out = super::oip::encode(
        name,
        &plugin.version.to_string(),
        decoded.id,
        &answer,
        &decoded.outputs,
    );
    let mut response = json_response(StatusCode::OK, &out);
    version_headers(&mut response, &plugin);
    Ok(response)
}

// ---- listing and admin ----

async fn list(gw: &Arc<Gateway>) -> Result<Response<Body>, Failure> {
    let gw = gw.clone();
    let listing = tokio::task::spawn_blocking(move || gw.registry.list())
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| admin_failure(&e))?;
    Ok(json_response(StatusCode::OK, &json!({"plugins": listing})))
}

fn authorized(gw: &Gateway, request: &Request<Incoming>) -> Result<(), Failure> {
    let Some(expected) = &gw.admin_token_sha256 else {
        return Err(fail(
            StatusCode::FORBIDDEN,
            "admin-disabled",
            "the admin API is disabled: set admin_token in the gateway's configuration",
        ));
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(fail(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin API needs an Authorization: Bearer token",
        ));
    };
    // Compare digests in constant time: neither the token's bytes nor its length leak.
    let digest = edgeplug_bundle::manifest::Sha256::of(presented.as_bytes()).0;
    if bool::from(subtle::ConstantTimeEq::ct_eq(&digest[..], &expected[..])) {
        Ok(())
    } else {
        Err(fail(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong admin token",
        ))
    }
}

async fn admin(
    gw: &Arc<Gateway>,
    request: Request<Incoming>,
    method: &Method,
    segments: &[&str],
) -> Result<Response<Body>, Failure> {
    if let Err(f) = authorized(gw, &request) {
        drain(request.into_body()).await;
        return Err(f);
    }
    let name = match segments {
        ["v1", "admin", "plugins", name] | ["v1", "admin", "plugins", name, "rollback"] => {
            name.to_string()
        }
        _ => {
            return Err(fail(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such admin endpoint",
            ));
        }
    };
    let action = match (method, segments.len()) {
        (&Method::PUT, 4) => {
            let limit = gw.config.bundle_limits().max_bundle_bytes as usize;
            let body = read_body(request, limit).await?;
            AdminAction::Push(body.to_vec())
        }
        (&Method::POST, 5) => AdminAction::Rollback,
        (&Method::DELETE, 4) => AdminAction::Remove,
        _ => {
            return Err(fail(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{method} is not allowed here"),
            ));
        }
    };
    let task_gw = gw.clone();
    let task_name = name.clone();
    let is_push = matches!(action, AdminAction::Push(_));
    let result = gw
        .admin
        .run(move || match action {
            AdminAction::Push(bytes) => task_gw.registry.install(bytes, Some(&task_name)),
            AdminAction::Rollback => task_gw.registry.rollback(&task_name),
            AdminAction::Remove => task_gw.registry.remove(&task_name),
        })
        .await
        .ok_or_else(|| Failure {
            retry_after: true,
            ..fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "admin-busy",
                "too many admin operations are waiting; retry later",
            )
        })?;
    match result {
        Ok(outcome) => Ok(json_response(StatusCode::OK, &json!(outcome))),
        Err(e) => {
            if is_push {
                gw.metrics.rejected(&name, e.code());
            }
            tracing::warn!(plugin = %name, error = %e, "admin operation refused");
            Err(admin_failure(&e))
        }
    }
}

enum AdminAction {
    Push(Vec<u8>),
    Rollback,
    Remove,
}

fn admin_failure(e: &AdminError) -> Failure {
    let status = match e {
        AdminError::Bundle(b) => match b {
            BundleError::Unsigned
            | BundleError::UnknownKey { .. }
            | BundleError::RevokedKey { .. }
            | BundleError::BadSignature { .. } => StatusCode::FORBIDDEN,
            BundleError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BundleError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        },
        AdminError::Store(s) => match s {
            StoreError::NameMismatch { .. } => StatusCode::BAD_REQUEST,
            StoreError::NotNewer { .. } | StoreError::NoPreviousVersion { .. } => {
                StatusCode::CONFLICT
            }
            StoreError::NotInstalled(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
        AdminError::Trust(_) => StatusCode::INTERNAL_SERVER_ERROR,
        AdminError::Load(_) | AdminError::SelfTest(_) => StatusCode::UNPROCESSABLE_ENTITY,
        AdminError::Conflict(_) => StatusCode::CONFLICT,
    };
    fail(status, e.code(), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplug_runtime::PluginErrorCode;

    #[test]
    fn invoke_errors_map_to_statuses() {
        let plugin = |code| InvokeError::Plugin {
            code,
            message: "m".into(),
        };
        let cases = [
            (plugin(PluginErrorCode::InvalidArgument), 400),
            (plugin(PluginErrorCode::ShapeMismatch), 400),
            (plugin(PluginErrorCode::Unsupported), 415),
            (plugin(PluginErrorCode::ResourceExhausted), 507),
            (plugin(PluginErrorCode::Internal), 500),
            (InvokeError::RequestTooLarge { size: 2, limit: 1 }, 413),
            (InvokeError::DeadlineExceeded { deadline_ms: 5 }, 504),
            (InvokeError::MemoryExhausted { limit_bytes: 1 }, 507),
            (InvokeError::TensorMemoryExhausted { limit_bytes: 1 }, 507),
            (InvokeError::ResponseTooLarge { size: 2, limit: 1 }, 500),
            (InvokeError::trap("t"), 500),
            (InvokeError::BrokenContract("c".into()), 500),
        ];
        for (error, status) in cases {
            let failure = invoke_failure(&error);
            assert_eq!(failure.status.as_u16(), status, "{error}");
            assert!(failure.body["error"]["message"].is_string());
        }
        let deadline = invoke_failure(&InvokeError::DeadlineExceeded { deadline_ms: 5 });
        assert_eq!(deadline.body["error"]["code"], "deadline-exceeded");
    }

    #[test]
    fn admin_refusals_map_to_statuses() {
        let cases: [(AdminError, u16); 6] = [
            (BundleError::Unsigned.into(), 403),
            (BundleError::BadMagic.into(), 400),
            (
                StoreError::NotNewer {
                    name: "d".into(),
                    version: semver::Version::new(1, 0, 0),
                    active: semver::Version::new(1, 0, 0),
                }
                .into(),
                409,
            ),
            (StoreError::NotInstalled("d".into()).into(), 404),
            (
                AdminError::Load(LoadError::ForbiddenImport {
                    import: "wasi:sockets/tcp".into(),
                }),
                422,
            ),
            (BundleError::TooLarge { size: 2, limit: 1 }.into(), 413),
        ];
        for (error, status) in cases {
            assert_eq!(admin_failure(&error).status.as_u16(), status, "{error}");
        }
    }
}

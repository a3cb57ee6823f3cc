//! Routes, status codes and JSON bodies: the only place that knows HTTP.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/` | the web page (with its Content-Security-Policy) |
//! | GET | `/v1/plugins` | plugins, active and kept versions, signer, load time, stats |
//! | GET | `/v1/plugins/{name}/activity` | the last ten minutes' requests, latency histogram, version history |
//! | POST | `/v1/plugins/{name}/infer` | body and content type to the plugin, its response back |
//! | POST | `/predict` | multipart form, file field `image`, to `default_plugin`: `{"prediction": label}` |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/v2/health/live`, `/v2/health/ready`, `/v2` | Open Inference Protocol v2 |
//! | GET | `/v2/models/{name}[/versions/{v}]`, `.../ready` | model metadata from `describe()`, readiness |
//! | POST | `/v2/models/{name}[/versions/{v}]/infer` | tensors in and out: JSON, or binary after a JSON header |
//! | GET | `/v2/models[/{name}[/versions/{v}]]/stats` | Triton's statistics extension |
//! | GET | `/v1/admin/plugins` | the listing, for a token with scope `read` |
//! | PUT | `/v1/admin/plugins/{name}` | push a bundle (bearer token) |
//! | POST | `/v1/admin/plugins/{name}/rollback` | roll back (bearer token) |
//! | DELETE | `/v1/admin/plugins/{name}` | remove (bearer token) |
//! | POST | `/v1/plugins/{name}/feedback`, `/v1/admin/plugins/{name}/feedback` | a labeled sample for training, or a recent request's id (scope `feedback:NAME`) |
//! | POST | `/v1/admin/plugins/{name}/finetune`, `.../head/rollback` | a fine-tune job and its gate; the previous head (`http/learn.rs`) |
//!
//! `HEAD` works wherever `GET` does. Every request goes through the body policy of
//! [`super::body`] before anything reads or parses its body: each endpoint knows its size
//! limit, a body declared larger is refused unread, an admin request is authenticated before
//! its body is touched, and a body that stalls answers 408. The router takes any body type,
//! so tests can drive [`handle`] without a socket.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use serde_json::{Value, json};

use super::Gateway;
use super::audit::{self, AuditRecord};
use super::auth::{self, AdminOp};
use super::body::{self, BodyError, BodyPolicy, RequestBody};
use super::lanes;
use super::registry::{ActivePlugin, AdminError};
use edgeplug_bundle::{BundleError, StoreError};
#[cfg(test)]
use edgeplug_runtime::LoadError;
use edgeplug_runtime::{InferRequest, InferResponse, InvokeError};

mod canary;
mod learn;
mod v2;

pub type Body = Full<Bytes>;

const PAGE: &str = include_str!("../page.html");

/// Room for the multipart framing around `/predict`'s file.
const MULTIPART_OVERHEAD: usize = 64 << 10;
/// The largest body of an endpoint that reads none (GET, rollback, removal). Such a body is
/// never read; a larger one is refused so that nothing reads megabytes for nothing.
const SMALL_BODY_LIMIT: usize = 64 << 10;

/// An answer with a status other than 200, built where the failure is found.
struct Failure {
    status: StatusCode,
    body: Value,
    retry_after: bool,
    /// The plugin and version that failed (or refused) the request, when one was chosen: a
    /// client (or a canary's operator) sees which version it was, as on a success.
    answered_by: Option<(String, String)>,
}

fn fail(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
    Failure {
        status,
        body: json!({"error": {"code": code, "message": message.into()}}),
        retry_after: false,
        answered_by: None,
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
    if let Some((name, version)) = &f.answered_by {
        set_version_headers(&mut response, name, version);
    }
    if f.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"edgeplug-admin\""),
        );
    }
    response
}

/// The page's headers: a Content-Security-Policy that allows exactly the page's own inline
/// script and style (by hash, computed from the page itself so an edit cannot leave them
/// stale), fetches to this origin and `blob:` previews of the chosen file; no framing.
fn page_headers() -> &'static [(header::HeaderName, HeaderValue)] {
    static HEADERS: LazyLock<Vec<(header::HeaderName, HeaderValue)>> = LazyLock::new(|| {
        let hashes = |tag: &str| {
            inline_blocks(PAGE, tag)
                .map(|text| {
                    let digest = edgeplug_bundle::manifest::Sha256::of(text.as_bytes()).0;
                    format!(" 'sha256-{}'", base64(&digest))
                })
                .collect::<String>()
        };
        let csp = format!(
            "default-src 'self'; script-src{}; style-src{}; img-src 'self' blob:; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'",
            hashes("script"),
            hashes("style")
        );
        vec![
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_str(&csp).expect("the CSP is ASCII"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ]
    });
    &HEADERS
}

/// The text of every `<tag ...>...</tag>` block of `html`, as a browser hashes it for CSP.
fn inline_blocks<'a>(html: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut rest = html;
    std::iter::from_fn(move || {
        let start = rest.find(&open)?;
        let body = start + rest[start..].find('>')? + 1;
        let end = body + rest[body..].find(&close)?;
        let text = &rest[body..end];
        rest = &rest[end + close.len()..];
        Some(text)
    })
}

/// Standard base64 with padding (what CSP hash sources use).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The gateway's service: every request ends here and gets an answer. Generic over the body
/// so that tests can call it with an in-memory one; `serve` passes hyper's.
pub async fn handle<B>(gateway: Arc<Gateway>, request: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let started = Instant::now();
    let original_method = request.method().clone();
    // HEAD is GET without the body (hyper would drop it too; doing it here keeps the
    // answer right when the router is called directly).
    let head = original_method == Method::HEAD;
    let method = if head {
        Method::GET
    } else {
        original_method.clone()
    };
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let segments: Vec<&str> = if segments == [""] {
        Vec::new()
    } else {
        segments
    };
    let (request, body_done) = body::track(request);
    let result = match check_host(&request) {
        Ok(()) => route(&gateway, request, &method, &segments, started).await,
        Err(f) => Err(f),
    };
    let mut response = match result {
        Ok(response) => response,
        Err(f) => {
            if !path.starts_with("/v1/admin") {
                gateway.metrics.refused(f.status.as_u16());
            }
            failure_response(f)
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !body_done.finished() {
        // The body was refused or left unread: hyper closes the connection after this answer
        // rather than reading the rest, and the client should know.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if head {
        let length = hyper::body::Body::size_hint(response.body()).lower();
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        *response.body_mut() = Full::new(Bytes::new());
    }
    tracing::debug!(method = %original_method, %path, status = response.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1e3, "request");
    response
}

/// HTTP/1.1 requires exactly one `Host` header (RFC 9112 §3.2); hyper does not check it.
fn check_host(request: &Request<RequestBody>) -> Result<(), Failure> {
    let hosts = request.headers().get_all(header::HOST).iter().count();
    if request.version() == Version::HTTP_11 && hosts != 1 || hosts > 1 {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "bad-host",
            "an HTTP/1.1 request needs exactly one Host header",
        ));
    }
    Ok(())
}

/// Where a request goes, decided from its method and path alone.
enum Endpoint<'a> {
    Page,
    List,
    Activity(&'a str),
    Metrics,
    Live,
    Ready,
    Server,
    Invoke(&'a str),
    Predict,
    V2Metadata(&'a str, Option<&'a str>),
    V2Ready(&'a str, Option<&'a str>),
    V2Infer(&'a str, Option<&'a str>),
    V2Stats(Option<&'a str>, Option<&'a str>),
    V2NotFound,
    Admin,
    NotAllowed,
    NotFound,
}

impl<'a> Endpoint<'a> {
    fn resolve(method: &Method, segments: &[&'a str]) -> Endpoint<'a> {
        use Method as M;
        match (method, segments) {
            (&M::GET, []) | (&M::GET, ["index.html"]) => Endpoint::Page,
            (&M::GET, ["v1", "plugins"]) => Endpoint::List,
            (&M::GET, ["v1", "plugins", name, "activity"]) => Endpoint::Activity(name),
            (&M::POST, ["v1", "plugins", name, "infer"]) => Endpoint::Invoke(name),
            (&M::POST, ["predict"]) => Endpoint::Predict,
            (&M::GET, ["metrics"]) => Endpoint::Metrics,
            (&M::GET, ["v2", "health", "live"]) => Endpoint::Live,
            (&M::GET, ["v2", "health", "ready"]) => Endpoint::Ready,
            (&M::GET, ["v2"]) => Endpoint::Server,
            (&M::GET, ["v2", "models", "stats"]) => Endpoint::V2Stats(None, None),
            (_, ["v2", "models", name, rest @ ..]) => {
                let (version, rest) = match rest {
                    ["versions", v, rest @ ..] => (Some(*v), rest),
                    rest => (None, rest),
                };
                match (method, rest) {
                    (&M::GET, []) => Endpoint::V2Metadata(name, version),
                    (&M::GET, ["ready"]) => Endpoint::V2Ready(name, version),
                    (&M::POST, ["infer"]) => Endpoint::V2Infer(name, version),
                    (&M::GET, ["stats"]) => Endpoint::V2Stats(Some(name), version),
                    _ => Endpoint::V2NotFound,
                }
            }
            (_, ["v1", "admin", ..]) => Endpoint::Admin,
            // Feedback is for applications too, under the plugin's own path; it is still an
            // admin operation (a `feedback:NAME` token, audited).
            (&M::POST, ["v1", "plugins", _, "feedback"]) => Endpoint::Admin,
            (_, ["v1", "plugins"])
            | (_, ["v1", "plugins", _, "infer"])
            | (_, ["predict"])
            | (_, ["metrics"]) => Endpoint::NotAllowed,
            _ => Endpoint::NotFound,
        }
    }

    /// Whether the endpoint reads a body: those apply the policy with their own limit (the
    /// admin API after authentication); every other one is held to [`SMALL_BODY_LIMIT`] here.
    fn reads_body(&self) -> bool {
        match self {
            Endpoint::Invoke(_) | Endpoint::Predict | Endpoint::V2Infer(..) | Endpoint::Admin => {
                true
            }
            Endpoint::Page
            | Endpoint::List
            | Endpoint::Activity(_)
            | Endpoint::Metrics
            | Endpoint::Live
            | Endpoint::Ready
            | Endpoint::Server
            | Endpoint::V2Metadata(..)
            | Endpoint::V2Ready(..)
            | Endpoint::V2Stats(..)
            | Endpoint::V2NotFound
            | Endpoint::NotAllowed
            | Endpoint::NotFound => false,
        }
    }
}

async fn route(
    gw: &Arc<Gateway>,
    request: Request<RequestBody>,
    method: &Method,
    segments: &[&str],
    started: Instant,
) -> Result<Response<Body>, Failure> {
    let endpoint = Endpoint::resolve(method, segments);
    if !endpoint.reads_body() {
        body::check_declared(&request, SMALL_BODY_LIMIT).map_err(body_failure)?;
    }
    match endpoint {
        Endpoint::Page => {
            let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
            for (name, value) in page_headers() {
                response.headers_mut().insert(name, value.clone());
            }
            Ok(response)
        }
        Endpoint::List => list(gw).await,
        Endpoint::Activity(name) => activity(gw, name),
        Endpoint::Invoke(name) => invoke(gw, request, name, started).await,
        Endpoint::Predict => predict(gw, request, started).await,
        Endpoint::Metrics => {
            let mut response = Response::new(Full::new(Bytes::from(gw.metrics.render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(response)
        }
        Endpoint::Live => Ok(json_response(StatusCode::OK, &json!({"live": true}))),
        Endpoint::Ready => Ok(json_response(StatusCode::OK, &json!({"ready": true}))),
        Endpoint::Server => Ok(json_response(
            StatusCode::OK,
            &json!({"name": "edgeplug", "version": env!("CARGO_PKG_VERSION"), "extensions": v2::EXTENSIONS}),
        )),
        Endpoint::V2Metadata(name, version) => v2::v2_metadata(gw, name, version),
        Endpoint::V2Ready(name, version) => v2::v2_ready(gw, name, version),
        Endpoint::V2Infer(name, version) => v2::v2_infer(gw, request, name, version, started).await,
        Endpoint::V2Stats(name, version) => v2::v2_stats(gw, name, version),
        Endpoint::V2NotFound => Err(v2::v2_fail(StatusCode::NOT_FOUND, "no such v2 endpoint")),
        Endpoint::Admin => admin(gw, request, method, segments).await,
        Endpoint::NotAllowed => Err(fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("{method} is not allowed here"),
        )),
        Endpoint::NotFound => Err(fail(StatusCode::NOT_FOUND, "not-found", "no such endpoint")),
    }
}

// ---- bodies ----

fn body_failure(e: BodyError) -> Failure {
    let (status, code) = match e {
        BodyError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "request-too-large"),
        BodyError::TimedOut { .. } => (StatusCode::REQUEST_TIMEOUT, "body-timeout"),
        BodyError::Broken(_) => (StatusCode::BAD_REQUEST, "bad-body"),
    };
    fail(status, code, e.to_string())
}

/// The body of a request to an endpoint that takes at most `limit` bytes, under the body
/// policy: refused unread if declared larger, 413 if found larger, 408 if it stalls.
async fn read_body(
    gw: &Gateway,
    request: Request<RequestBody>,
    limit: usize,
) -> Result<Bytes, Failure> {
    body::check_declared(&request, limit).map_err(body_failure)?;
    let policy = BodyPolicy::from_limits(&gw.config.limits);
    body::read(request.into_body(), limit, &policy)
        .await
        .map_err(body_failure)
}

fn content_type<B>(request: &Request<B>) -> String {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string()
}

// ---- invoking plugins ----

/// The version a request for `name` runs on: the active one, or its canary for the canary's
/// share.
fn lookup(gw: &Gateway, name: &str) -> Result<Arc<ActivePlugin>, Failure> {
    gw.registry.route(name).ok_or_else(|| {
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
    run_within(gw, plugin, request, started, None).await
}

/// [`run`] under the client's own timeout, if it gave one.
async fn run_within(
    gw: &Gateway,
    plugin: Arc<ActivePlugin>,
    request: InferRequest,
    started: Instant,
    timeout: Option<std::time::Duration>,
) -> Result<InferResponse, Failure> {
    let answered_by = Some((plugin.name().to_string(), plugin.version.to_string()));
    lanes::dispatch(gw, plugin, request, started, timeout)
        .await
        .map_err(|e| match e {
            lanes::DispatchError::Saturated(message) => Failure {
                retry_after: true,
                answered_by,
                ..fail(StatusCode::SERVICE_UNAVAILABLE, "saturated", message)
            },
            lanes::DispatchError::Failed(e) => Failure {
                answered_by,
                ..invoke_failure(&e)
            },
        })
}

fn invoke_failure(e: &InvokeError) -> Failure {
    Failure {
        status: StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body: json!({"error": e.to_json()}),
        retry_after: false,
        answered_by: None,
    }
}

/// Marks an answer the plugin gave on its own after its escalation failed.
fn degraded_header(response: &mut Response<Body>, degraded: bool) {
    if degraded {
        response
            .headers_mut()
            .insert("x-edgeplug-degraded", HeaderValue::from_static("true"));
    }
}

fn version_headers(response: &mut Response<Body>, plugin: &ActivePlugin) {
    set_version_headers(response, plugin.name(), &plugin.version.to_string());
}

fn set_version_headers(response: &mut Response<Body>, name: &str, version: &str) {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(name) {
        headers.insert("x-edgeplug-plugin", v);
    }
    if let Ok(v) = HeaderValue::from_str(version) {
        headers.insert("x-edgeplug-version", v);
    }
}

async fn invoke(
    gw: &Gateway,
    request: Request<RequestBody>,
    name: &str,
    started: Instant,
) -> Result<Response<Body>, Failure> {
    let plugin = lookup(gw, name)?;
    let content_type = content_type(&request);
    let limit = plugin.plugin.shared().limits().request_bytes;
    let body = read_body(gw, request, limit).await?;
    // A learning plugin's input is kept (shared, not copied) under a request id, which a
    // client's feedback may name instead of sending the input again.
    let request_id = plugin
        .plugin
        .learns()
        .then(|| gw.learning.recent.keep(name, &content_type, body.clone()));
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
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert("x-edgeplug-request-id", id);
    }
    degraded_header(&mut response, answer.degraded);
    version_headers(&mut response, &plugin);
    Ok(response)
}

/// The classic Flask edge service: a form with a file field `image`, answered
/// `{"prediction": <label>}` by the default plugin.
async fn predict(
    gw: &Gateway,
    request: Request<RequestBody>,
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
    let body = read_body(gw, request, limit).await?;
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
    let content_type = crate::media::sniff_image(image.data)
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
    degraded_header(&mut response, answer.degraded);
    version_headers(&mut response, &plugin);
    Ok(response)
}

// ---- listing and admin ----

async fn list(gw: &Arc<Gateway>) -> Result<Response<Body>, Failure> {
    let gw = gw.clone();
    let listing = tokio::task::spawn_blocking(move || {
        let listing = gw.registry.list()?;
        // A learning plugin's live head and last job ride along with its versions.
        Ok::<_, crate::AdminError>(
            listing
                .into_iter()
                .map(|plugin| {
                    let mut value = json!(plugin);
                    if let Some(head) = gw.learning.status(&plugin.name) {
                        value["head"] = head;
                    }
                    value
                })
                .collect::<Vec<_>>(),
        )
    })
    .await
    .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| admin_failure(&e))?;
    Ok(json_response(StatusCode::OK, &json!({"plugins": listing})))
}

/// A plugin's last ten minutes (requests and errors per slot, latency histogram) and its
/// version history, for the web page's charts.
fn activity(gw: &Gateway, name: &str) -> Result<Response<Body>, Failure> {
    if gw.registry.get(name).is_none() {
        return Err(fail(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no plugin {name:?}"),
        ));
    }
    let report = gw.metrics.activities.report(name);
    Ok(json_response(StatusCode::OK, &json!(report)))
}

/// Who is asking, from the request's headers and connection alone (never its body): the
/// token's entry, or the refusal. What it learns goes into the audit record.
fn authorized<B>(
    gw: &Gateway,
    request: &Request<B>,
    record: &mut AuditRecord,
) -> Result<auth::TokenEntry, Failure> {
    let conn = request.extensions().get::<auth::ConnInfo>();
    if let Some(conn) = conn {
        record.peer = Some(conn.peer.to_string());
        record.client_cert = conn.client_cert.as_ref().map(|c| c.sha256.to_string());
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let who = gw
        .access
        .authenticate(authorization, conn)
        .map_err(|d| denied(&d))?;
    record.token = Some(who.name.clone());
    Ok(who)
}

fn denied(d: &auth::Denied) -> Failure {
    let status = StatusCode::from_u16(d.status()).unwrap_or(StatusCode::FORBIDDEN);
    fail(status, d.code(), d.message())
}

/// An admin request: authenticated, routed, allowed by the token's scopes, done; whatever
/// the answer, one audit record is on disk before it leaves.
async fn admin(
    gw: &Arc<Gateway>,
    request: Request<RequestBody>,
    method: &Method,
    segments: &[&str],
) -> Result<Response<Body>, Failure> {
    let mut record = AuditRecord::new(method.as_str(), request.uri().path());
    let result = admin_audited(gw, request, method, segments, &mut record).await;
    match &result {
        Ok(response) => {
            record.outcome = audit::Outcome::Ok;
            record.status = response.status().as_u16();
        }
        Err(f) => {
            record.status = f.status.as_u16();
            record.code = f.body["error"]["code"].as_str().map(String::from);
        }
    }
    let log = gw.clone();
    match tokio::task::spawn_blocking(move || log.audit.append(&record)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "audit record not written"),
        Err(e) => tracing::error!(error = %e, "audit record not written"),
    }
    result
}

async fn admin_audited(
    gw: &Arc<Gateway>,
    request: Request<RequestBody>,
    method: &Method,
    segments: &[&str],
    record: &mut AuditRecord,
) -> Result<Response<Body>, Failure> {
    // Before the body is touched: a refused request's body is dropped unread (no `100
    // Continue`, and the connection closes after the answer). Authentication comes before
    // routing, so an unauthenticated client learns nothing of which paths exist.
    let who = authorized(gw, &request, record)?;
    let op = match (method, segments) {
        (&Method::GET, ["v1", "admin", "plugins"]) => AdminOp::List,
        (&Method::PUT, ["v1", "admin", "plugins", name]) if canary::asked(&request) => {
            AdminOp::Canary(name)
        }
        (&Method::PUT, ["v1", "admin", "plugins", name]) => AdminOp::Push(name),
        (&Method::POST, ["v1", "admin", "plugins", name, "canary", "promote"])
        | (&Method::DELETE, ["v1", "admin", "plugins", name, "canary"]) => AdminOp::Canary(name),
        (&Method::POST, ["v1", "admin", "plugins", name, "rollback"]) => AdminOp::Rollback(name),
        (&Method::DELETE, ["v1", "admin", "plugins", name]) => AdminOp::Remove(name),
        (&Method::POST, ["v1", "admin", "plugins", name, "feedback"])
        | (&Method::POST, ["v1", "plugins", name, "feedback"]) => AdminOp::Feedback(name),
        (&Method::POST, ["v1", "admin", "plugins", name, "finetune"]) => AdminOp::Finetune(name),
        (&Method::POST, ["v1", "admin", "plugins", name, "head", "rollback"]) => {
            AdminOp::HeadRollback(name)
        }
        (_, ["v1", "admin", "plugins"])
        | (_, ["v1", "admin", "plugins", _])
        | (
            _,
            [
                "v1",
                "admin",
                "plugins",
                _,
                "rollback" | "feedback" | "canary" | "finetune",
            ],
        )
        | (_, ["v1", "admin", "plugins", _, "canary", "promote"])
        | (_, ["v1", "admin", "plugins", _, "head", "rollback"]) => {
            record.outcome = audit::Outcome::Failed;
            return Err(fail(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{method} is not allowed here"),
            ));
        }
        _ => {
            record.outcome = audit::Outcome::Failed;
            return Err(fail(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such admin endpoint",
            ));
        }
    };
    record.action = op.action().into();
    if let Some(name) = op.plugin() {
        record.plugin(name);
    }
    if !who.permits(&op) {
        return Err(denied(&auth::Denied::Scope { token: who.name }));
    }
    record.outcome = audit::Outcome::Failed;
    // No admin operation without its record: one that could not be written is refused.
    let log = gw.clone();
    let writable = tokio::task::spawn_blocking(move || log.audit.check()).await;
    if !matches!(writable, Ok(Ok(()))) {
        tracing::error!(path = %gw.audit.path().display(), "the audit log is not writable");
        return Err(fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit-unavailable",
            "the audit log cannot be written; admin operations are refused",
        ));
    }
    let action = match op {
        AdminOp::List => {
            body::check_declared(&request, SMALL_BODY_LIMIT).map_err(body_failure)?;
            return list(gw).await;
        }
        AdminOp::Push(_) => {
            let limit = gw.config.bundle_limits().max_bundle_bytes as usize;
            let body = read_body(gw, request, limit).await?;
            record.bundle_sha256 = Some(edgeplug_bundle::manifest::Sha256::of(&body).to_string());
            AdminAction::Push(body.to_vec())
        }
        AdminOp::Canary(name) => {
            let result = canary::handle(gw, request, method, name, &who, record).await;
            if result.is_ok() {
                record.outcome = audit::Outcome::Ok;
            }
            return result;
        }
        AdminOp::Feedback(name) => {
            let result = feedback(gw, request, name).await;
            if result.is_ok() {
                record.outcome = audit::Outcome::Ok;
            }
            return result;
        }
        AdminOp::Finetune(name) | AdminOp::HeadRollback(name) => {
            body::check_declared(&request, SMALL_BODY_LIMIT).map_err(body_failure)?;
            let query = request.uri().query().map(str::to_string);
            drop(request);
            let result = learn::handle(gw, query, &op, name).await;
            if result.is_ok() {
                record.outcome = audit::Outcome::Ok;
            }
            return result;
        }
        AdminOp::Rollback(_) | AdminOp::Remove(_) => {
            body::check_declared(&request, SMALL_BODY_LIMIT).map_err(body_failure)?;
            if matches!(op, AdminOp::Rollback(_)) {
                AdminAction::Rollback
            } else {
                AdminAction::Remove
            }
        }
    };
    let name = op.plugin().unwrap_or_default().to_string();
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
        .ok_or_else(admin_busy)?;
    match result {
        Ok(outcome) => {
            record.version = outcome.version.clone();
            record.previous = outcome.previous.clone();
            Ok(json_response(StatusCode::OK, &json!(outcome)))
        }
        Err(e) => {
            if is_push {
                gw.metrics.rejected(&name, e.code());
            }
            tracing::warn!(plugin = %name, token = %who.name, error = %e, "admin operation refused");
            Err(admin_failure(&e))
        }
    }
}

/// `POST /v1/admin/plugins/{name}/feedback`: `{"label": n, "input": base64, "content_type":
/// "..."}` keeps a labeled sample of an active plugin on the gateway's disk (bounded:
/// `feedback_max_samples`, `feedback_max_mib`), for its training. The input is held to the
/// plugin's request limit, as if it were sent to it.
async fn feedback(
    gw: &Arc<Gateway>,
    request: Request<RequestBody>,
    name: &str,
) -> Result<Response<Body>, Failure> {
    use base64::Engine as _;
    let plugin = gw.registry.get(name).ok_or_else(|| {
        fail(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no active plugin {name:?}"),
        )
    })?;
    let limit = plugin.plugin.shared().limits().request_bytes;
    // Base64 takes 4 bytes per 3, plus the JSON around it.
    let body = read_body(gw, request, limit / 3 * 4 + 4 + SMALL_BODY_LIMIT).await?;
    let bad = |message: String| fail(StatusCode::BAD_REQUEST, "invalid-argument", message);
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Feedback {
        label: u32,
        #[serde(default)]
        input: Option<String>,
        #[serde(default)]
        content_type: Option<String>,
        #[serde(default)]
        request_id: Option<String>,
    }
    let shape = "feedback must be {\"label\", \"input\" (base64), \"content_type\"} or {\"label\", \"request_id\"}";
    let sent: Feedback = serde_json::from_slice(&body).map_err(|e| bad(format!("{shape}: {e}")))?;
    let (input, content_type) = match (&sent.input, &sent.request_id) {
        (Some(input), None) => (
            base64::engine::general_purpose::STANDARD
                .decode(input.as_bytes())
                .map_err(|e| bad(format!("input is not base64: {e}")))?,
            sent.content_type,
        ),
        (None, Some(id)) if sent.content_type.is_none() => {
            let (content_type, input) = gw.learning.recent.find(name, id).ok_or_else(|| {
                fail(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    format!("no recent {name} request {id:?} (only the last few hundred are kept, in memory)"),
                )
            })?;
            (input.to_vec(), Some(content_type))
        }
        _ => return Err(bad(shape.to_string())),
    };
    if input.len() > limit {
        return Err(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request-too-large",
            format!(
                "the input of {} bytes is over the plugin's limit of {limit} bytes",
                input.len()
            ),
        ));
    }
    let sample = edgeplug_train::samples::Sample {
        label: sent.label,
        content_type: content_type.unwrap_or_else(|| {
            crate::media::sniff_image(&input)
                .unwrap_or("application/octet-stream")
                .into()
        }),
        input,
    };
    let task_gw = gw.clone();
    let task_name = name.to_string();
    let kept = tokio::task::spawn_blocking(move || task_gw.add_sample(&task_name, &sample))
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    match kept {
        Ok((samples, bytes)) => Ok(json_response(
            StatusCode::OK,
            &json!({"plugin": name, "samples": samples, "bytes": bytes}),
        )),
        Err(edgeplug_train::samples::SampleError::TooLarge { size, cap }) => Err(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request-too-large",
            format!("a sample of {size} bytes is over the store's cap of {cap} bytes"),
        )),
        Err(e) => {
            tracing::error!(plugin = %name, error = %e, "feedback not stored");
            Err(fail(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient-storage",
                e.to_string(),
            ))
        }
    }
}

enum AdminAction {
    Push(Vec<u8>),
    Rollback,
    Remove,
}

/// The admin lane's queue is full: the operation was not run.
fn admin_busy() -> Failure {
    Failure {
        retry_after: true,
        ..fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin-busy",
            "too many admin operations are waiting; retry later",
        )
    }
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
        AdminError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
        AdminError::Trust(_) => StatusCode::INTERNAL_SERVER_ERROR,
        AdminError::Load(_) | AdminError::SelfTest(_) | AdminError::Conformance(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        AdminError::Conflict(_) => StatusCode::CONFLICT,
        AdminError::NoCanary(_) => StatusCode::NOT_FOUND,
    };
    fail(status, e.code(), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplug_runtime::PluginErrorCode;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use crate::config::{Config, LimitsConfig};
    use http_body_util::BodyExt as _;
    use hyper::body::{Body as _, Frame};

    const TOKEN: &str = "router-test-token";

    /// A gateway with no plugins, admin token [`TOKEN`] and a 200 ms body deadline.
    fn gateway() -> (Arc<Gateway>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            state_dir: dir.path().join("state"),
            trust_dir: dir.path().join("trust"),
            model_dir: dir.path().join("models"),
            admin_token: Some(TOKEN.into()),
            limits: LimitsConfig {
                body_timeout_ms: 200,
                ..LimitsConfig::default()
            },
            ..Config::default()
        };
        (Gateway::open(config).unwrap(), dir)
    }

    /// A body that records being polled and then never yields: a router that touches it
    /// before answering would hang (caught by [`call`]'s deadline) or say so in `polled`.
    struct Untouched {
        polled: Arc<AtomicBool>,
        first: Option<Bytes>,
    }

    impl hyper::body::Body for Untouched {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.polled.store(true, Ordering::SeqCst);
            match self.first.take() {
                Some(first) => Poll::Ready(Some(Ok(Frame::data(first)))),
                None => Poll::Pending,
            }
        }
    }

    fn untouched(first: &'static [u8]) -> (Untouched, Arc<AtomicBool>) {
        let polled = Arc::new(AtomicBool::new(false));
        let body = Untouched {
            polled: polled.clone(),
            first: (!first.is_empty()).then(|| Bytes::from_static(first)),
        };
        (body, polled)
    }

    fn request(method: &str, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "gateway.test")
    }

    /// Calls the router directly; the deadline only detects a hang.
    async fn call<B>(gw: &Arc<Gateway>, request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<body::BoxError>,
    {
        tokio::time::timeout(Duration::from_secs(30), handle(gw.clone(), request))
            .await
            .expect("the router answered")
    }

    fn text(response: &Response<Body>) -> String {
        let bytes = response
            .body()
            .clone()
            .frame()
            .now_or_never_data()
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    trait NowOrNever {
        fn now_or_never_data(self) -> Option<Bytes>;
    }

    impl<F: std::future::Future<Output = Option<Result<Frame<Bytes>, std::convert::Infallible>>>>
        NowOrNever for F
    {
        fn now_or_never_data(self) -> Option<Bytes> {
            let mut future = std::pin::pin!(self);
            let waker = std::task::Waker::noop();
            match future.as_mut().poll(&mut Context::from_waker(waker)) {
                Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
                _ => None,
            }
        }
    }

    fn code(response: &Response<Body>) -> String {
        let value: Value = serde_json::from_str(&text(response)).unwrap_or(Value::Null);
        value["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn header_of(response: &Response<Body>, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_404_and_405() {
        let (gw, _dir) = gateway();
        let empty = || Full::new(Bytes::new());
        let response = call(&gw, request("GET", "/no/such/path").body(empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(code(&response), "not-found");
        assert_eq!(
            header_of(&response, header::X_CONTENT_TYPE_OPTIONS),
            "nosniff"
        );
        for (method, path) in [
            ("GET", "/v1/plugins/digits/infer"),
            ("PUT", "/metrics"),
            ("DELETE", "/predict"),
            ("HEAD", "/predict"),
        ] {
            let response = call(&gw, request(method, path).body(empty()).unwrap()).await;
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
        }
        let response = call(
            &gw,
            request("POST", "/v1/plugins/nope/infer")
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(code(&response), "plugin-not-found");
        let response = call(
            &gw,
            request("GET", "/v2/models/nope/nothing")
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = call(
            &gw,
            request("GET", "/v2/health/live").body(empty()).unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(&response), r#"{"live":true}"#);
    }

    #[tokio::test]
    async fn a_body_declared_too_large_is_refused_unread() {
        let (gw, _dir) = gateway();
        let bundle_limit = gw.config.bundle_limits().max_bundle_bytes;
        let cases = [
            // An endpoint without a body: the small fixed limit.
            ("GET", "/metrics", SMALL_BODY_LIMIT as u64 + 1, false),
            ("GET", "/", 2 << 30, false),
            // A push: the bundle limit, after the token.
            ("PUT", "/v1/admin/plugins/digits", bundle_limit + 1, true),
            ("POST", "/v1/admin/plugins/digits/rollback", 1 << 20, true),
        ];
        for (method, path, length, with_token) in cases {
            let (body, polled) = untouched(b"0123456789");
            let mut builder = request(method, path).header(header::CONTENT_LENGTH, length);
            if with_token {
                builder = builder.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
            }
            let response = call(&gw, builder.body(body).unwrap()).await;
            assert_eq!(
                response.status(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "{method} {path}"
            );
            assert_eq!(code(&response), "request-too-large");
            assert!(
                text(&response).contains(&length.to_string()),
                "{}",
                text(&response)
            );
            assert!(
                !polled.load(Ordering::SeqCst),
                "{method} {path}: the body was read"
            );
            assert_eq!(header_of(&response, header::CONNECTION), "close");
        }
        // Within the limit, an endpoint without a body answers and leaves it unread.
        let (body, polled) = untouched(b"0123456789");
        let response = call(
            &gw,
            request("GET", "/v2/health/ready")
                .header(header::CONTENT_LENGTH, 10)
                .body(body)
                .unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!polled.load(Ordering::SeqCst));
        assert_eq!(header_of(&response, header::CONNECTION), "close");
    }

    #[tokio::test]
    async fn an_unauthenticated_admin_request_is_refused_before_its_body() {
        let (gw, _dir) = gateway();
        for token in [None, Some("Bearer wrong"), Some("Basic dXNlcjpwdw==")] {
            let (body, polled) = untouched(b"0123456789");
            let mut builder = request("PUT", "/v1/admin/plugins/digits")
                .header(header::CONTENT_LENGTH, 7_340_032);
            if let Some(token) = token {
                builder = builder.header(header::AUTHORIZATION, token);
            }
            let response = call(&gw, builder.body(body).unwrap()).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{token:?}");
            assert!(header_of(&response, header::WWW_AUTHENTICATE).starts_with("Bearer"));
            assert!(
                !polled.load(Ordering::SeqCst),
                "{token:?}: the body was read"
            );
            assert_eq!(header_of(&response, header::CONNECTION), "close");
        }
    }

    #[tokio::test]
    async fn a_stalled_body_answers_408() {
        let (gw, _dir) = gateway();
        // 10 bytes of a declared 7 MiB push, then nothing: the 200 ms deadline ends it.
        let (body, polled) = untouched(b"0123456789");
        let response = call(
            &gw,
            request("PUT", "/v1/admin/plugins/digits")
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .header(header::CONTENT_LENGTH, 7_340_032)
                .body(body)
                .unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(code(&response), "body-timeout");
        assert!(text(&response).contains("10 bytes"), "{}", text(&response));
        assert!(polled.load(Ordering::SeqCst));
        assert_eq!(header_of(&response, header::CONNECTION), "close");
    }

    #[tokio::test]
    async fn http_1_1_needs_one_host_header() {
        let (gw, _dir) = gateway();
        let bare = Request::builder()
            .uri("/v2/health/live")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = call(&gw, bare).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(code(&response), "bad-host");
        let twice = request("GET", "/v2/health/live")
            .header(header::HOST, "other.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(call(&gw, twice).await.status(), StatusCode::BAD_REQUEST);
        // HTTP/1.0 had no Host header.
        let old = Request::builder()
            .uri("/v2/health/live")
            .version(Version::HTTP_10)
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(call(&gw, old).await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn the_page_has_its_security_headers_and_head_answers_like_get() {
        let (gw, _dir) = gateway();
        let get = call(
            &gw,
            request("GET", "/").body(Full::new(Bytes::new())).unwrap(),
        )
        .await;
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(text(&get), PAGE);
        assert_eq!(header_of(&get, header::X_FRAME_OPTIONS), "DENY");
        assert_eq!(header_of(&get, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        let csp = header_of(&get, header::CONTENT_SECURITY_POLICY);
        assert!(csp.starts_with("default-src 'self';"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        // One hash for the page's one script and one for its one style.
        let script = inline_blocks(PAGE, "script").next().unwrap();
        assert!(script.contains("loadPlugins"));
        let digest = edgeplug_bundle::manifest::Sha256::of(script.as_bytes()).0;
        assert!(
            csp.contains(&format!("script-src 'sha256-{}';", base64(&digest))),
            "{csp}"
        );
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        assert_eq!(
            header_of(&get, header::CONNECTION),
            "",
            "keep-alive after a GET"
        );

        for path in ["/", "/metrics", "/v1/plugins", "/v2/health/live"] {
            let get = call(
                &gw,
                request("GET", path).body(Full::new(Bytes::new())).unwrap(),
            )
            .await;
            let head = call(
                &gw,
                request("HEAD", path).body(Full::new(Bytes::new())).unwrap(),
            )
            .await;
            assert_eq!(head.status(), get.status(), "{path}");
            assert_eq!(head.body().size_hint().exact(), Some(0), "{path}");
            let length = get.body().size_hint().exact().unwrap();
            assert_eq!(
                header_of(&head, header::CONTENT_LENGTH),
                length.to_string(),
                "{path}"
            );
            assert_eq!(
                header_of(&head, header::CONTENT_TYPE),
                header_of(&get, header::CONTENT_TYPE),
                "{path}"
            );
        }
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), output);
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

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

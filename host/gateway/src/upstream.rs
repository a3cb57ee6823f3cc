//! Escalation from the gateway's side: the `[upstreams.NAME]` tables of its configuration,
//! the Open Inference Protocol v2 client that runs a plugin's escalation on the named center
//! (`POST {url}/v2/models/{model}/infer`, tensors in the binary tensor data extension that
//! edgeplug, Triton and KServe read, or as JSON for a server without it), and the escalation
//! metrics.
//!
//! The runtime decides whether a plugin may escalate (its manifest's grant) and how long the
//! call may take (the request's deadline less a reserve for the plugin to answer); this module
//! adds the upstream's own `timeout_ms` and turns everything that keeps the center from
//! helping into [`UpstreamError::Unavailable`] (down, refused connection, too slow, 5xx, an
//! answer that is not v2) or [`UpstreamError::Rejected`] (4xx), with a reason the metrics count.
//!
//! A call runs on a runtime of its own (one thread): the plugin's host call is synchronous on
//! a blocking-pool thread and waits for it there, never on the serving reactor. Each call opens
//! its own connection (no pool yet: escalations are the rare, unsure requests).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};

use edgeplug_kernels::{Tensor, TensorData};
use edgeplug_runtime::upstream::{UpstreamCall, UpstreamError};

use crate::metrics::MetricsSource;
use crate::oip;

/// `[upstreams.NAME]`: a center plugins may escalate to, by the name their manifests grant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://HOST[:PORT][/PREFIX]` or `https://...` of an Open Inference Protocol v2 server;
    /// calls go to `{url}/v2/models/{model}/infer`. Required.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`. Default: none.
    #[serde(default)]
    pub token: Option<String>,
    /// A file whose first line is the token (instead of `token`). Default: none.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The longest one call may take, whatever the request's deadline leaves. Default: 1000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// PEM CA certificate(s) an `https` center's certificate must chain to. Default: the
    /// system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Send tensors (and ask for the answer's) in the binary tensor data extension: raw
    /// little-endian bytes after a JSON header, 4 bytes a float instead of up to 12 and no
    /// number parsing, which a split model's intermediate tensors need. `false` for a v2
    /// server without the extension. Default: true.
    #[serde(default = "default_binary")]
    pub binary: bool,
}

fn default_binary() -> bool {
    true
}

fn default_timeout_ms() -> u64 {
    1000
}

impl UpstreamConfig {
    /// Checks what parsing cannot: the name, the URL's scheme, a usable timeout, one token.
    pub fn validate(&self, name: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            edgeplug_bundle::manifest::is_upstream_name(name),
            "upstreams.{name}: the name must be 1-64 letters, digits, '-' or '_'"
        );
        anyhow::ensure!(
            self.url.starts_with("http://") || self.url.starts_with("https://"),
            "upstreams.{name}.url must start with http:// or https://"
        );
        anyhow::ensure!(
            self.timeout_ms > 0,
            "upstreams.{name}.timeout_ms must be at least 1"
        );
        anyhow::ensure!(
            !(self.token.is_some() && self.token_file.is_some()),
            "upstreams.{name}: set token or token_file, not both"
        );
        Endpoint::parse_url(&self.url).with_context(|| format!("upstreams.{name}.url"))?;
        Ok(())
    }
}

/// One configured center, ready to call.
struct Endpoint {
    https: bool,
    /// `host:port`, what the connection dials and the `Host` header names.
    authority: String,
    host: String,
    /// The URL's path without its trailing `/` ("" for none).
    prefix: String,
    token: Option<String>,
    timeout: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
    binary: bool,
}

impl Endpoint {
    fn parse_url(url: &str) -> anyhow::Result<(bool, String, u16, String)> {
        let uri: hyper::Uri = url.parse().context("not a URL")?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => anyhow::bail!("the scheme must be http or https"),
        };
        let host = uri.host().context("no host")?.to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        anyhow::ensure!(uri.query().is_none(), "a query has no place in it");
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok((https, host, port, prefix))
    }

    fn open(config: &UpstreamConfig) -> anyhow::Result<Endpoint> {
        let (https, host, port, prefix) = Endpoint::parse_url(&config.url)?;
        let token = match &config.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the token file {}", path.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            ),
            None => config.token.clone(),
        };
        let tls = if https {
            Some(tls_connector(config.ca.as_ref())?)
        } else {
            None
        };
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Endpoint {
            https,
            authority,
            host,
            prefix,
            token,
            timeout: Duration::from_millis(config.timeout_ms),
            tls,
            binary: config.binary,
        })
    }
}

fn tls_connector(ca: Option<&PathBuf>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
            {
                roots.add(cert.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Why an escalation failed, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureReason {
    /// The plugin granted a name this gateway's configuration does not have.
    NotConfigured,
    /// No connection (refused, reset, TLS failed).
    Connect,
    /// The upstream's own `timeout_ms` passed.
    Timeout,
    /// What the request's deadline left passed first.
    Deadline,
    /// The center answered 5xx.
    ServerError,
    /// The center answered 4xx.
    Rejected,
    /// The answer is not a v2 answer, or holds more than the request may.
    BadAnswer,
}

impl FailureReason {
    pub fn name(self) -> &'static str {
        match self {
            FailureReason::NotConfigured => "not-configured",
            FailureReason::Connect => "connect",
            FailureReason::Timeout => "timeout",
            FailureReason::Deadline => "deadline",
            FailureReason::ServerError => "server-error",
            FailureReason::Rejected => "rejected",
            FailureReason::BadAnswer => "bad-answer",
        }
    }
}

/// The center latency histogram's upper bounds, seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The escalation metrics, rendered into `/metrics`.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    /// Escalations by (plugin, upstream).
    calls: Mutex<BTreeMap<(String, String), u64>>,
    /// Failed escalations by (plugin, upstream, reason).
    failures: Mutex<BTreeMap<(String, String, FailureReason), u64>>,
    /// Time to the center's answer (2xx or 4xx), by upstream.
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// Answers a plugin gave after an escalation of the request failed, by plugin.
    degraded: Mutex<BTreeMap<String, u64>>,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default() += 1;
}

impl UpstreamMetrics {
    /// An answer marked degraded (see `InferResponse::degraded`).
    pub fn degraded_answer(&self, plugin: &str) {
        bump(&self.degraded, plugin.to_string());
    }

    /// Degraded answers of `plugin` so far.
    pub fn degraded_answers(&self, plugin: &str) -> u64 {
        let map = self.degraded.lock().unwrap_or_else(|p| p.into_inner());
        map.get(plugin).copied().unwrap_or(0)
    }

    fn observe_latency(&self, upstream: &str, took: Duration) {
        let mut map = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let h = map.entry(upstream.to_string()).or_default();
        let seconds = took.as_secs_f64();
        for (count, bound) in h.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }
}

use crate::metrics::label;

impl MetricsSource for UpstreamMetrics {
    fn render(&self, out: &mut String) {
        out.push_str("# HELP edgeplug_escalations_total Requests a plugin escalated to an upstream (escalation rate: divide by edgeplug_requests_total).\n# TYPE edgeplug_escalations_total counter\n");
        for ((plugin, upstream), n) in self.calls.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "edgeplug_escalations_total{{plugin=\"{}\",upstream=\"{}\"}} {n}",
                label(plugin),
                label(upstream)
            );
        }
        out.push_str("# HELP edgeplug_escalation_failures_total Escalations the upstream could not answer, by reason (not-configured, connect, timeout, deadline, server-error, rejected, bad-answer).\n# TYPE edgeplug_escalation_failures_total counter\n");
        for ((plugin, upstream, reason), n) in self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "edgeplug_escalation_failures_total{{plugin=\"{}\",upstream=\"{}\",reason=\"{}\"}} {n}",
                label(plugin),
                label(upstream),
                reason.name()
            );
        }
        out.push_str("# HELP edgeplug_upstream_latency_seconds Time from an escalation's start to the upstream's answer (2xx or 4xx).\n# TYPE edgeplug_upstream_latency_seconds histogram\n");
        for (upstream, h) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let upstream = label(upstream);
            for (count, bound) in h.buckets.iter().zip(LATENCY_BUCKETS) {
                let _ = writeln!(
                    out,
                    "edgeplug_upstream_latency_seconds_bucket{{upstream=\"{upstream}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "edgeplug_upstream_latency_seconds_bucket{{upstream=\"{upstream}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "edgeplug_upstream_latency_seconds_sum{{upstream=\"{upstream}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "edgeplug_upstream_latency_seconds_count{{upstream=\"{upstream}\"}} {}",
                h.count
            );
        }
        out.push_str("# HELP edgeplug_degraded_answers_total Answers a plugin gave on its own after its escalation failed.\n# TYPE edgeplug_degraded_answers_total counter\n");
        for (plugin, n) in self
            .degraded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "edgeplug_degraded_answers_total{{plugin=\"{}\"}} {n}",
                label(plugin)
            );
        }
    }
}

/// The gateway's upstreams: what the runtime calls when a plugin escalates.
pub struct GatewayUpstreams {
    endpoints: BTreeMap<String, Arc<Endpoint>>,
    /// Where calls run; shut down without waiting when the gateway goes (a drop may happen on
    /// a reactor thread, where waiting is not allowed).
    runtime: Option<tokio::runtime::Runtime>,
    pub metrics: Arc<UpstreamMetrics>,
}

impl std::fmt::Debug for GatewayUpstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayUpstreams")
            .field("upstreams", &self.endpoints.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Drop for GatewayUpstreams {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What one call ended with, before it is counted.
type Outcome = Result<Vec<(String, Tensor)>, (FailureReason, String)>;

impl GatewayUpstreams {
    /// The configured upstreams, their tokens read and TLS set up.
    pub fn open(configs: &BTreeMap<String, UpstreamConfig>) -> anyhow::Result<GatewayUpstreams> {
        let mut endpoints = BTreeMap::new();
        for (name, config) in configs {
            config.validate(name)?;
            let endpoint = Endpoint::open(config).with_context(|| format!("upstreams.{name}"))?;
            endpoints.insert(name.clone(), Arc::new(endpoint));
        }
        let runtime = if endpoints.is_empty() {
            None
        } else {
            Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("edgeplug-upstream")
                    .enable_all()
                    .build()
                    .context("cannot start the upstream client's thread")?,
            )
        };
        Ok(GatewayUpstreams {
            endpoints,
            runtime,
            metrics: Arc::default(),
        })
    }

    fn call(&self, call: UpstreamCall) -> Outcome {
        let (Some(endpoint), Some(runtime)) = (self.endpoints.get(&call.upstream), &self.runtime)
        else {
            return Err((
                FailureReason::NotConfigured,
                format!(
                    "this gateway has no upstream {:?} ([upstreams] in its configuration)",
                    call.upstream
                ),
            ));
        };
        let (limit, reason) = if call.time_left < endpoint.timeout {
            (call.time_left, FailureReason::Deadline)
        } else {
            (endpoint.timeout, FailureReason::Timeout)
        };
        let body = encode_request(&call.inputs, endpoint.binary);
        // JSON spends up to ~12 bytes per 4-byte value; the tensors are checked exactly after.
        let max_json = call.max_bytes.saturating_mul(4).saturating_add(64 << 10);
        let path = format!("{}/v2/models/{}/infer", endpoint.prefix, call.model);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let task_endpoint = endpoint.clone();
        let started = Instant::now();
        let task = runtime.spawn(async move {
            let answer = tokio::time::timeout(limit, post(&task_endpoint, &path, body, max_json));
            let _ = tx.send(answer.await);
        });
        // The task ends by its own timeout; the margin only covers a stuck runtime thread.
        let answer = match rx.recv_timeout(limit + Duration::from_millis(100)) {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) | Err(_) => {
                task.abort();
                return Err((
                    reason,
                    format!(
                        "upstream {:?} did not answer within {} ms",
                        call.upstream,
                        limit.as_millis()
                    ),
                ));
            }
        };
        let (status, header_length, bytes) = answer.map_err(|(reason, e)| {
            (
                reason,
                format!("upstream {:?} ({}): {e}", call.upstream, endpoint.host),
            )
        })?;
        self.metrics
            .observe_latency(&call.upstream, started.elapsed());
        if status >= 500 || (status < 400 && !(200..300).contains(&status)) {
            return Err((
                FailureReason::ServerError,
                format!(
                    "upstream {:?} answered {status}: {}",
                    call.upstream,
                    short(&bytes)
                ),
            ));
        }
        if status >= 400 {
            return Err((
                FailureReason::Rejected,
                format!(
                    "upstream {:?} refused the request ({status}): {}",
                    call.upstream,
                    short(&bytes)
                ),
            ));
        }
        let outputs = oip::json::decode_outputs(&bytes, header_length).map_err(|e| {
            (
                FailureReason::BadAnswer,
                format!("upstream {:?}: not a v2 answer: {}", call.upstream, e.0),
            )
        })?;
        let size: usize = outputs.iter().map(|(_, t)| t.byte_size()).sum();
        if size > call.max_bytes {
            return Err((
                FailureReason::BadAnswer,
                format!(
                    "upstream {:?} answered {size} bytes of tensors; the request may hold {} more",
                    call.upstream, call.max_bytes
                ),
            ));
        }
        Ok(outputs)
    }
}

impl edgeplug_runtime::upstream::Upstreams for GatewayUpstreams {
    fn infer(&self, call: UpstreamCall) -> Result<Vec<(String, Tensor)>, UpstreamError> {
        let (plugin, upstream) = (call.plugin.clone(), call.upstream.clone());
        bump(&self.metrics.calls, (plugin.clone(), upstream.clone()));
        self.call(call).map_err(|(reason, message)| {
            // Debug, not info: with the center down every escalation fails, and the metrics
            // already count them by reason.
            tracing::debug!(%plugin, %upstream, reason = reason.name(), "escalation failed: {message}");
            bump(&self.metrics.failures, (plugin, upstream, reason));
            match reason {
                FailureReason::Rejected => UpstreamError::Rejected(message),
                _ => UpstreamError::Unavailable(message),
            }
        })
    }
}

/// The start of an error answer, for a message.
fn short(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    text.trim().to_string()
}

/// A v2 infer request body of `inputs`, and the length of its JSON header when the tensors
/// follow it in the binary extension (`Inference-Header-Content-Length`); else all JSON,
/// which every v2 server takes.
fn encode_request(inputs: &[(String, Tensor)], binary: bool) -> RequestBody {
    let mut blobs = Vec::new();
    let inputs: Vec<Value> = inputs
        .iter()
        .map(|(name, tensor)| {
            let mut input = json!({
                "name": name,
                "shape": tensor.shape(),
                "datatype": oip::datatype(tensor.element_type()),
            });
            if binary {
                let raw = oip::raw::encode(&oip::OutputValue::Tensor(tensor));
                input["parameters"] = json!({ "binary_data_size": raw.len() });
                blobs.push(raw);
            } else {
                input["data"] = match tensor.data() {
                    TensorData::F32(v) => json!(v.as_ref()),
                    TensorData::U8(v) => json!(v.as_ref()),
                    TensorData::I64(v) => json!(v.as_ref()),
                };
            }
            input
        })
        .collect();
    let mut header = json!({ "inputs": inputs });
    if binary {
        header["parameters"] = json!({ "binary_data_output": true });
    }
    let mut body = serde_json::to_vec(&header).unwrap_or_default();
    let header_length = binary.then_some(body.len());
    for blob in blobs {
        body.extend_from_slice(&blob);
    }
    RequestBody {
        body,
        header_length,
    }
}

struct RequestBody {
    body: Vec<u8>,
    header_length: Option<usize>,
}

/// The `Inference-Header-Content-Length` header's value, if the answer has a valid one.
fn header_length(response: &hyper::Response<hyper::body::Incoming>) -> Option<usize> {
    response
        .headers()
        .get("inference-header-content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// One POST on a fresh connection: the status, the answer's binary header length if it has
/// one, and at most `max_body` bytes of the answer.
async fn post(
    endpoint: &Endpoint,
    path: &str,
    body: RequestBody,
    max_body: usize,
) -> Result<(u16, Option<usize>, Bytes), (FailureReason, String)> {
    let connect = |e: &dyn std::fmt::Display| (FailureReason::Connect, e.to_string());
    let tcp = tokio::net::TcpStream::connect(&endpoint.authority)
        .await
        .map_err(|e| connect(&e))?;
    let _ = tcp.set_nodelay(true);
    let mut request = hyper::Request::post(path).header(hyper::header::HOST, &endpoint.authority);
    request = match body.header_length {
        Some(n) => request
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .header("inference-header-content-length", n),
        None => request.header(hyper::header::CONTENT_TYPE, "application/json"),
    };
    if let Some(token) = &endpoint.token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.body)))
        .map_err(|e| connect(&e))?;
    let response = match (&endpoint.tls, endpoint.https) {
        (Some(tls), true) => {
            let server = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                .map_err(|e| connect(&e))?;
            let stream = tls.connect(server, tcp).await.map_err(|e| connect(&e))?;
            send(TokioIo::new(stream), request).await?
        }
        _ => send(TokioIo::new(tcp), request).await?,
    };
    let status = response.status().as_u16();
    let header_length = header_length(&response);
    let bytes = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| (FailureReason::BadAnswer, format!("reading the answer: {e}")))?
        .to_bytes();
    Ok((status, header_length, bytes))
}

async fn send<T>(
    io: TokioIo<T>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, (FailureReason, String)>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| (FailureReason::Connect, e.to_string()))?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| (FailureReason::Connect, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_checked() {
        let ok = UpstreamConfig {
            url: "http://127.0.0.1:8080/prefix/".into(),
            token: None,
            token_file: None,
            timeout_ms: 500,
            ca: None,
            binary: true,
        };
        ok.validate("center").unwrap();
        let endpoint = Endpoint::open(&ok).unwrap();
        assert_eq!(endpoint.authority, "127.0.0.1:8080");
        assert_eq!(endpoint.prefix, "/prefix");
        for (name, config) in [
            (
                "center",
                UpstreamConfig {
                    url: "ftp://x".into(),
                    ..ok.clone()
                },
            ),
            (
                "center",
                UpstreamConfig {
                    timeout_ms: 0,
                    ..ok.clone()
                },
            ),
            ("a b", ok.clone()),
            (
                "center",
                UpstreamConfig {
                    token: Some("t".into()),
                    token_file: Some("f".into()),
                    ..ok.clone()
                },
            ),
        ] {
            assert!(config.validate(name).is_err(), "{name} {config:?}");
        }
    }

    #[test]
    fn a_request_is_v2_json_tensors() {
        let input = Tensor::from_f32(vec![1, 3], vec![0.5, -3.5, 0.1]).unwrap();
        let request = encode_request(&[("input".into(), input)], false);
        assert_eq!(request.header_length, None);
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["inputs"][0]["name"], "input");
        assert_eq!(body["inputs"][0]["shape"], json!([1, 3]));
        assert_eq!(body["inputs"][0]["datatype"], "FP32");
        // Every value comes back as the same f32, as a v2 server reads it.
        let data: Vec<f32> = body["inputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(data, [0.5, -3.5, 0.1]);
    }

    #[test]
    fn a_binary_request_is_what_the_gateway_decodes() {
        let a = Tensor::from_f32(vec![1, 3], vec![0.5, -3.5, 0.1]).unwrap();
        let b = Tensor::from_le_bytes(
            vec![2],
            edgeplug_kernels::ElementType::I64,
            &[7, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0],
        )
        .unwrap();
        let request = encode_request(&[("a".into(), a.clone()), ("b".into(), b.clone())], true);
        let n = request.header_length.expect("a binary header");
        assert_eq!(
            request.body.len(),
            n + 12 + 16,
            "raw bytes after the header"
        );
        let decoded = oip::json::decode(&request.body, Some(n)).unwrap();
        assert!(
            decoded.binary_by_default,
            "the answer is asked for in binary"
        );
        let tensors = decoded.request.tensors;
        assert_eq!(tensors[0].0, "a");
        assert_eq!(tensors[0].1.as_f32().unwrap(), a.as_f32().unwrap());
        assert_eq!(tensors[1].1.shape(), b.shape());
    }

    #[test]
    fn an_unknown_upstream_is_unavailable_and_counted() {
        use edgeplug_runtime::upstream::Upstreams as _;
        let upstreams = GatewayUpstreams::open(&BTreeMap::new()).unwrap();
        let error = upstreams
            .infer(UpstreamCall {
                plugin: "p".into(),
                upstream: "center".into(),
                model: "m".into(),
                inputs: Vec::new(),
                time_left: Duration::from_secs(1),
                max_bytes: 1 << 20,
            })
            .unwrap_err();
        assert!(matches!(error, UpstreamError::Unavailable(_)), "{error:?}");
        let mut text = String::new();
        upstreams.metrics.render(&mut text);
        assert!(text.contains("edgeplug_escalations_total{plugin=\"p\",upstream=\"center\"} 1"));
        assert!(text.contains(
            "edgeplug_escalation_failures_total{plugin=\"p\",upstream=\"center\",reason=\"not-configured\"} 1"
        ));
    }
}

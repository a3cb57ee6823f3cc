//! The Open Inference Protocol v2 endpoints: server and model metadata, readiness, infer
//! (JSON, or Triton's binary tensor data after a JSON header) and Triton's statistics. The
//! protocol's meaning lives in [`crate::oip`]; this file only moves it over HTTP.

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::{
    Body, Failure, degraded_header, json_response, read_body, run_within, version_headers,
};
use crate::Gateway;
use crate::body::RequestBody;
use crate::oip;
use crate::registry::ActivePlugin;

/// A v2 body larger than this is decoded on the blocking pool: parsing megabytes of JSON
/// would hold a reactor thread, and every connection waiting on it, for seconds.
const V2_INLINE_DECODE: usize = 64 << 10;

/// The header that says how much of a body (request or answer) is the JSON header, the rest
/// being binary tensor data.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// What `GET /v2` lists.
pub(super) const EXTENSIONS: [&str; 3] = ["binary_tensor_data", "classification", "statistics"];

pub(super) fn v2_fail(status: StatusCode, message: impl Into<String>) -> Failure {
    Failure {
        status,
        body: json!({"error": message.into()}),
        retry_after: false,
        answered_by: None,
    }
}

/// A failure in v2's shape: `{"error": message}`.
fn v2_shape(f: Failure) -> Failure {
    Failure {
        body: json!({"error": f.body["error"]["message"].as_str().unwrap_or("failed")}),
        ..f
    }
}

fn v2_lookup(
    gw: &Gateway,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<ActivePlugin>, Failure> {
    oip::find_model(&gw.registry, name, version)
        .map_err(|message| v2_fail(StatusCode::NOT_FOUND, message))
}

pub(super) fn v2_metadata(
    gw: &Gateway,
    name: &str,
    version: Option<&str>,
) -> Result<Response<Body>, Failure> {
    let plugin = v2_lookup(gw, name, version)?;
    let info = plugin.plugin.info();
    let spec = |s: &edgeplug_models::model::TensorSpec| json!({"name": s.name, "datatype": oip::datatype(s.element_type), "shape": s.shape});
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

pub(super) fn v2_ready(
    gw: &Gateway,
    name: &str,
    version: Option<&str>,
) -> Result<Response<Body>, Failure> {
    v2_lookup(gw, name, version)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"name": name, "ready": true}),
    ))
}

pub(super) async fn v2_infer(
    gw: &Gateway,
    request: Request<RequestBody>,
    name: &str,
    version: Option<&str>,
    started: Instant,
) -> Result<Response<Body>, Failure> {
    let plugin = v2_lookup(gw, name, version)?;
    let header_length = match request.headers().get(HEADER_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    v2_fail(
                        StatusCode::BAD_REQUEST,
                        "Inference-Header-Content-Length must be a byte count",
                    )
                })?,
        ),
    };
    if let Some(encoding) = request.headers().get(header::CONTENT_ENCODING)
        && encoding.as_bytes() != b"identity"
    {
        return Err(v2_fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Encoding {:?} is not supported: send the request uncompressed",
                String::from_utf8_lossy(encoding.as_bytes())
            ),
        ));
    }
    // The plugin's own limit holds for the encoded body, as for every other way in; the
    // decoded inputs are held to it again by `oip::admit`.
    let limit = plugin.plugin.shared().limits().request_bytes;
    let body = read_body(gw, request, limit).await.map_err(v2_shape)?;
    let decoded = if body.len() > V2_INLINE_DECODE {
        tokio::task::spawn_blocking(move || oip::json::decode(&body, header_length))
            .await
            .map_err(|e| v2_fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    } else {
        oip::json::decode(&body, header_length)
    }
    .map_err(|e| v2_fail(StatusCode::BAD_REQUEST, e.0))?;
    oip::admit(&decoded.request, &plugin).map_err(|refusal| match refusal {
        oip::Refusal::Invalid(e) => v2_fail(StatusCode::BAD_REQUEST, e.0),
        oip::Refusal::TooLarge(message) => v2_fail(StatusCode::PAYLOAD_TOO_LARGE, message),
    })?;
    let answer = run_within(
        gw,
        plugin.clone(),
        decoded.request,
        started,
        decoded.timeout,
    )
    .await
    .map_err(v2_shape)?;
    let shared = plugin.plugin.shared();
    let outputs = oip::select_outputs(
        &answer,
        &decoded.outputs,
        decoded.binary_by_default,
        &|output| shared.labels(output),
    )
    .map_err(|e| v2_fail(StatusCode::BAD_REQUEST, e.0))?;
    let encoded = oip::json::encode(
        name,
        &plugin.version.to_string(),
        decoded.id.as_deref(),
        &outputs,
    );
    let mut response = match encoded.binary {
        None => {
            let mut response = Response::new(Body::new(Bytes::from(encoded.json)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Some(binary) => {
            let json_length = encoded.json.len();
            let mut all = encoded.json;
            all.extend_from_slice(&binary);
            let mut response = Response::new(Body::new(Bytes::from(all)));
            let headers = response.headers_mut();
            headers.insert(HEADER_LENGTH, HeaderValue::from(json_length));
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
    };
    degraded_header(&mut response, answer.degraded);
    version_headers(&mut response, &plugin);
    Ok(response)
}

/// Triton's statistics extension: `GET /v2/models/stats` (every plugin) or
/// `/v2/models/{name}[/versions/{v}]/stats`, for the active version of each. `queue` is the
/// time of a request outside the plugin's run (reading and decoding its body, waiting for a
/// lane); `compute_infer` is the plugin's run, which holds its own input and output
/// processing, so `compute_input` and `compute_output` stay zero.
pub(super) fn v2_stats(
    gw: &Gateway,
    name: Option<&str>,
    version: Option<&str>,
) -> Result<Response<Body>, Failure> {
    let plugins = match name {
        Some(name) => vec![v2_lookup(gw, name, version)?],
        None => gw
            .registry
            .names()
            .iter()
            .filter_map(|n| gw.registry.get(n))
            .collect(),
    };
    let stats: Vec<Value> = plugins.iter().map(|p| model_stats(p)).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"model_stats": stats}),
    ))
}

fn model_stats(plugin: &ActivePlugin) -> Value {
    let stats = plugin.metrics.inference_stats();
    let zero = json!({"count": 0, "ns": 0});
    json!({
        "name": plugin.name(),
        "version": plugin.version.to_string(),
        "last_inference": stats.last_unix_ms,
        "inference_count": stats.success.count,
        "execution_count": stats.compute.count,
        "inference_stats": {
            "success": stats.success,
            "fail": stats.fail,
            "queue": stats.queue,
            "compute_input": zero,
            "compute_infer": stats.compute,
            "compute_output": zero,
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": [],
    })
}

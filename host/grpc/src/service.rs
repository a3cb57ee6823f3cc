//! The `inference.GRPCInferenceService` calls: each checks and converts its message and
//! delegates to the gateway (the registry for models, [`lanes::dispatch`] for inference), so
//! a gRPC request meets the same permits, deadlines, demotion and metrics as an HTTP one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Code, Request, Response, Status};

use edgeplug_gateway::registry::ActivePlugin;
use edgeplug_gateway::{Gateway, lanes, oip};
use edgeplug_runtime::InvokeError;

use crate::convert;
use crate::metrics::GrpcMetrics;
use crate::proto::grpc_inference_service_server::GrpcInferenceService;
use crate::proto::model_metadata_response::TensorMetadata;
use crate::proto::*;

/// What `ServerMetadata` lists: the binary tensor data and statistics extensions are REST's.
pub const EXTENSIONS: [&str; 1] = ["classification"];

pub struct InferenceService {
    gateway: Arc<Gateway>,
    metrics: Arc<GrpcMetrics>,
}

impl InferenceService {
    pub fn new(gateway: Arc<Gateway>) -> InferenceService {
        let metrics = Arc::new(GrpcMetrics::default());
        gateway.metrics.add_source(metrics.clone());
        InferenceService { gateway, metrics }
    }

    fn model(&self, name: &str, version: &str) -> Result<Arc<ActivePlugin>, Status> {
        oip::find_model(&self.gateway.registry, name, Some(version)).map_err(Status::not_found)
    }

    /// Counts the call by its outcome.
    fn done<T>(
        &self,
        method: &'static str,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        self.metrics.call(
            method,
            result.as_ref().map_or_else(Status::code, |_| Code::Ok),
        );
        result.map(Response::new)
    }

    async fn infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<ModelInferResponse, Status> {
        let started = Instant::now();
        let deadline = grpc_timeout(request.metadata());
        let message = request.into_inner();
        let plugin = self.model(&message.model_name, &message.model_version)?;
        let id = message.id.clone();
        let decoded = convert::decode(message).map_err(|e| Status::invalid_argument(e.0))?;
        oip::admit(&decoded.request, &plugin).map_err(|refusal| match refusal {
            oip::Refusal::Invalid(e) => Status::invalid_argument(e.0),
            oip::Refusal::TooLarge(message) => Status::resource_exhausted(message),
        })?;
        // The call's own deadline (grpc-timeout) and the protocol's timeout parameter: the
        // sooner one holds.
        let timeout = match (deadline, decoded.timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let answer = lanes::dispatch(
            &self.gateway,
            plugin.clone(),
            decoded.request,
            started,
            timeout,
        )
        .await
        .map_err(dispatch_status)?;
        let shared = plugin.plugin.shared();
        let outputs = oip::select_outputs(&answer, &decoded.outputs, true, &|o| shared.labels(o))
            .map_err(|e| Status::invalid_argument(e.0))?;
        Ok(convert::encode(
            plugin.name(),
            &plugin.version.to_string(),
            id,
            &outputs,
        ))
    }
}

fn dispatch_status(e: lanes::DispatchError) -> Status {
    match e {
        lanes::DispatchError::Saturated(message) => Status::unavailable(message),
        lanes::DispatchError::Failed(e) => invoke_status(&e),
    }
}

/// A failed run as a gRPC status, by the same classification HTTP's status comes from.
fn invoke_status(e: &InvokeError) -> Status {
    let code = match e.http_status() {
        400 | 415 => Code::InvalidArgument,
        413 | 507 => Code::ResourceExhausted,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    Status::new(code, format!("{}: {}", e.code(), e.message()))
}

/// The call's `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn tensor_metadata(spec: &edgeplug_models::model::TensorSpec) -> TensorMetadata {
    TensorMetadata {
        name: spec.name.clone(),
        datatype: oip::datatype(spec.element_type).to_string(),
        shape: spec.shape.clone(),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        self.done("ServerLive", Ok(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        self.done("ServerReady", Ok(ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let result = self
            .model(&request.name, &request.version)
            .map(|_| ModelReadyResponse { ready: true });
        self.done("ModelReady", result)
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.done(
            "ServerMetadata",
            Ok(ServerMetadataResponse {
                name: "edgeplug".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
            }),
        )
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let result = self.model(&request.name, &request.version).map(|plugin| {
            let info = plugin.plugin.info();
            ModelMetadataResponse {
                name: plugin.name().to_string(),
                versions: self
                    .gateway
                    .registry
                    .loaded_versions(plugin.name())
                    .iter()
                    .map(|v| v.to_string())
                    .collect(),
                platform: "edgeplug-wasm".into(),
                inputs: info.inputs.iter().map(tensor_metadata).collect(),
                outputs: info.outputs.iter().map(tensor_metadata).collect(),
            }
        });
        self.done("ModelMetadata", result)
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let result = self.infer(request).await;
        self.done("ModelInfer", result)
    }
}

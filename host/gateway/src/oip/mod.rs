//! The Open Inference Protocol v2 (KServe / Triton): what a v2 request and answer mean,
//! independent of the transport. [`json`] reads and writes the REST form (JSON tensors, and
//! Triton's binary tensor data extension after the JSON header); [`raw`] is the little-endian
//! tensor layout that extension and gRPC's `raw_*_contents` share; [`classification`] is the
//! classification extension.
//!
//! The mapping onto a plugin request: inputs of datatype FP32, INT64 and UINT8 become named
//! tensors (each must be an input the model's `describe()` declares, named once; FP32 values
//! must be finite). One BYTES input of one element (of any name) becomes the request body,
//! with the content type from its `parameters.content_type` (default: `image/png` or
//! `image/jpeg` when its bytes are one, else `application/octet-stream`). Outputs are the answer's tensors and, when it has one, its
//! body as a BYTES output named `body`; asking for an output the answer does not have is an
//! error, not an empty list.

pub mod classification;
pub mod json;
pub mod raw;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use edgeplug_kernels::{ElementType, Tensor};
use edgeplug_models::model::TensorSpec;
use edgeplug_runtime::{InferRequest, InferResponse};

/// Why a v2 request could not be decoded or answered as asked (answered 400).
#[derive(Debug)]
pub struct BadRequest(pub String);

pub(crate) fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

/// The v2 name of an element type.
pub fn datatype(t: ElementType) -> &'static str {
    match t {
        ElementType::F32 => "FP32",
        ElementType::U8 => "UINT8",
        ElementType::I64 => "INT64",
    }
}

/// The element type of a v2 tensor datatype; `None` for BYTES and for what a plugin cannot
/// take.
pub fn element_type(datatype: &str) -> Option<ElementType> {
    match datatype {
        "FP32" => Some(ElementType::F32),
        "UINT8" => Some(ElementType::U8),
        "INT64" => Some(ElementType::I64),
        _ => None,
    }
}

/// The datatypes a request may carry, for error messages.
pub const DATATYPES: &str = "FP32, INT64, UINT8, BYTES";

/// One decoded input's value.
pub enum InputValue {
    Tensor(Tensor),
    /// The elements of a BYTES tensor.
    Bytes(Vec<Vec<u8>>),
}

/// One decoded input.
pub struct Input {
    pub name: String,
    pub value: InputValue,
    /// `parameters.content_type` (for a BYTES input: the body's media type).
    pub content_type: Option<String>,
}

/// How the client wants one output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    /// In the binary tensor data extension (REST only; gRPC answers raw always).
    pub binary: Option<bool>,
    /// The classification extension: the top `k` classes instead of the tensor.
    pub classification: Option<usize>,
}

/// A decoded v2 infer request.
pub struct V2Request {
    /// The client's `id`, echoed in the answer.
    pub id: Option<String>,
    pub request: InferRequest,
    /// Outputs the client asked for (empty: all).
    pub outputs: Vec<RequestedOutput>,
    /// `parameters.binary_data_output`: outputs not named go binary.
    pub binary_by_default: bool,
    /// `parameters.timeout` (Triton's, in microseconds): the request fails rather than
    /// answering later than this after it arrived.
    pub timeout: Option<Duration>,
}

/// Makes the plugin request from decoded inputs: tensors by name (each once), at most one
/// BYTES input of one element as the body.
pub fn assemble(inputs: Vec<Input>) -> Result<InferRequest, BadRequest> {
    let mut request = InferRequest {
        content_type: String::new(),
        body: Vec::new(),
        tensors: Vec::new(),
    };
    let mut names = BTreeSet::new();
    let mut has_body = false;
    for input in inputs {
        if !names.insert(input.name.clone()) {
            return Err(bad(format!(
                "input {:?} is given more than once",
                input.name
            )));
        }
        match input.value {
            InputValue::Tensor(tensor) => request.tensors.push((input.name, tensor)),
            InputValue::Bytes(mut elements) => {
                if has_body || elements.len() != 1 {
                    return Err(bad(
                        "only one BYTES input of one element is supported (it becomes the request body)",
                    ));
                }
                request.body = elements.pop().unwrap_or_default();
                request.content_type = input.content_type.unwrap_or_else(|| {
                    // Triton's clients cannot say what a BYTES input holds: a photo is
                    // recognized by its signature, as `/predict` does.
                    crate::media::sniff_image(&request.body)
                        .unwrap_or("application/octet-stream")
                        .into()
                });
                has_body = true;
            }
        }
    }
    Ok(request)
}

/// The version of model `name` a request runs on (the active one, or its canary for the
/// canary's share), or the loaded version `version` when one is asked for; else why not, for
/// a not-found answer.
pub fn find_model(
    registry: &crate::registry::Registry,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<crate::registry::ActivePlugin>, String> {
    let plugin = registry
        .route(name)
        .ok_or_else(|| format!("model {name:?} not found"))?;
    match version {
        Some(v) if !v.is_empty() && v != plugin.version.to_string() => {
            registry.version_of(name, v).ok_or_else(|| {
                let active = registry
                    .get(name)
                    .map_or_else(String::new, |a| a.version.to_string());
                format!(
                    "model {name:?} version {v:?} is not the active version {active} (nor a \
                     canary of it)"
                )
            })
        }
        _ => Ok(plugin),
    }
}

/// Why a decoded request may not run on its plugin.
pub enum Refusal {
    /// Not what the model takes (answered 400 / INVALID_ARGUMENT).
    Invalid(BadRequest),
    /// Its decoded inputs are over the plugin's request limit (413 / RESOURCE_EXHAUSTED).
    TooLarge(String),
}

/// Checks a decoded request against its plugin, whatever the transport: every tensor input
/// is one `describe()` declares, and the decoded inputs (body and tensors) fit the plugin's
/// request limit (a short number can take more room decoded than as text).
pub fn admit(
    request: &InferRequest,
    plugin: &crate::registry::ActivePlugin,
) -> Result<(), Refusal> {
    check_inputs(request, &plugin.plugin.info().inputs).map_err(Refusal::Invalid)?;
    let limit = plugin.plugin.shared().limits().request_bytes;
    let size = request.body.len()
        + request
            .tensors
            .iter()
            .map(|(_, t)| t.byte_size())
            .sum::<usize>();
    if size > limit {
        return Err(Refusal::TooLarge(format!(
            "the inputs take {size} bytes, over the plugin's limit of {limit} bytes"
        )));
    }
    Ok(())
}

/// Checks that every tensor input is one the model declares (the BYTES body is not a tensor).
pub fn check_inputs(request: &InferRequest, declared: &[TensorSpec]) -> Result<(), BadRequest> {
    for (name, _) in &request.tensors {
        if !declared.iter().any(|d| &d.name == name) {
            let known = if declared.is_empty() {
                "it declares no tensor inputs; send the data as one BYTES input".to_string()
            } else {
                let names: Vec<String> = declared.iter().map(|d| format!("{:?}", d.name)).collect();
                format!("its inputs: {}", names.join(", "))
            };
            return Err(bad(format!(
                "input {name:?} is not an input of this model ({known})"
            )));
        }
    }
    Ok(())
}

/// One output of an answer, as the client asked for it.
pub struct Output<'a> {
    pub name: &'a str,
    pub value: OutputValue<'a>,
    /// Whether the REST form sends it in the binary extension.
    pub binary: bool,
}

impl Output<'_> {
    /// The output's v2 datatype, shape, and for the body its media type: what both transports
    /// put in an output's header.
    pub fn header(&self) -> (&'static str, Vec<usize>, Option<&str>) {
        match &self.value {
            OutputValue::Tensor(t) => (datatype(t.element_type()), t.shape().to_vec(), None),
            OutputValue::Bytes {
                shape,
                content_type,
                ..
            } => ("BYTES", shape.clone(), *content_type),
        }
    }
}

pub enum OutputValue<'a> {
    Tensor(&'a Tensor),
    /// A BYTES tensor: its shape, its elements, and the media type of the body.
    Bytes {
        shape: Vec<usize>,
        elements: Vec<Vec<u8>>,
        content_type: Option<&'a str>,
    },
}

/// The name of the output that carries the plugin's response body.
pub const BODY_OUTPUT: &str = "body";

/// Picks the outputs of `response` the client asked for (all of them when it named none: the
/// tensors and a non-empty body), with classification applied where asked. `labels` gives
/// the class names a plugin declares for an output.
pub fn select_outputs<'a, 'l>(
    response: &'a InferResponse,
    requested: &'a [RequestedOutput],
    binary_by_default: bool,
    labels: &dyn Fn(&str) -> Option<&'l [String]>,
) -> Result<Vec<Output<'a>>, BadRequest> {
    let body = || OutputValue::Bytes {
        shape: vec![1],
        elements: vec![response.body.clone()],
        content_type: Some(response.content_type.as_str()),
    };
    if requested.is_empty() {
        let mut outputs: Vec<Output> = response
            .tensors
            .iter()
            .map(|(name, t)| Output {
                name,
                value: OutputValue::Tensor(t),
                binary: binary_by_default,
            })
            .collect();
        if !response.body.is_empty() {
            outputs.push(Output {
                name: BODY_OUTPUT,
                value: body(),
                binary: binary_by_default,
            });
        }
        return Ok(outputs);
    }
    let mut outputs = Vec::with_capacity(requested.len());
    for want in requested {
        let binary = want.binary.unwrap_or(binary_by_default);
        let tensor = response.tensors.iter().find(|(n, _)| *n == want.name);
        let value = match (tensor, want.classification) {
            (Some((_, t)), None) => OutputValue::Tensor(t),
            (Some((name, t)), Some(k)) => classification::top_k(name, t, k, labels(name))?,
            // Asked for by name, the body is there even when empty.
            (None, None) if want.name == BODY_OUTPUT => body(),
            (None, Some(_)) if want.name == BODY_OUTPUT => {
                return Err(bad("the body output cannot be classified"));
            }
            (None, _) => {
                let mut names: Vec<String> = response
                    .tensors
                    .iter()
                    .map(|(n, _)| format!("{n:?}"))
                    .collect();
                names.push(format!("{BODY_OUTPUT:?}"));
                return Err(bad(format!(
                    "output {:?} is not an output of this answer (its outputs: {})",
                    want.name,
                    names.join(", ")
                )));
            }
        };
        outputs.push(Output {
            name: &want.name,
            value,
            binary,
        });
    }
    Ok(outputs)
}

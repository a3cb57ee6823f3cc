//! The plugin contract: what a plugin implements, and the request and response it sees.

use crate::bindings::edgeplug::plugin::types;
// The `learning-plugin` world's handler: `export!` exports it for both worlds (see `bindings`).
use crate::learning_bindings::exports::edgeplug::plugin::handler;
use crate::npy::NpyError;
use crate::preprocess::PreprocessError;
use crate::{ElementType, Tensor};

// The WIT records and enums are the SDK's types themselves, re-exported inline so that rustdoc
// documents every field and variant here (an alias of a type in the hidden `bindings` module
// showed "private fields" and "some variants omitted").
/// An error a plugin returns to its caller, or receives from the host: a [`ErrorCode`] the
/// gateway maps to a status (`invalid-argument` and `shape-mismatch` 400, `unsupported` 415,
/// `resource-exhausted` 507, the others 500) and a message for humans.
#[doc(inline)]
pub use types::Error;

/// What kind of error: clients and the gateway map it to a status.
#[doc(inline)]
pub use types::ErrorCode;

/// Name, element type and shape of a tensor; -1 marks a dynamic dimension. Build one with
/// [`TensorInfo::f32`], [`TensorInfo::u8`], [`TensorInfo::i64`] or [`TensorInfo::new`].
#[doc(inline)]
pub use types::TensorInfo;

impl Error {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    /// The input was malformed.
    pub fn invalid_argument(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::InvalidArgument, message)
    }

    /// The input has the wrong shape.
    pub fn shape_mismatch(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::ShapeMismatch, message)
    }

    /// The input is of a kind the plugin does not handle (an unsupported content type).
    pub fn unsupported(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Unsupported, message)
    }

    /// Something inside the plugin went wrong.
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Internal, message)
    }
}

/// Every [`PreprocessError`] is about the client's picture (not an image, truncated, too large,
/// an unusable size): [`ErrorCode::InvalidArgument`], with the error's message.
impl From<PreprocessError> for Error {
    fn from(e: PreprocessError) -> Error {
        Error::invalid_argument(e.to_string())
    }
}

/// Every [`NpyError`] is about the client's `.npy` body (not `.npy`, truncated, a dtype or
/// layout the reader refuses): [`ErrorCode::InvalidArgument`], with the error's message.
impl From<NpyError> for Error {
    fn from(e: NpyError) -> Error {
        Error::invalid_argument(e.to_string())
    }
}

impl TensorInfo {
    /// A tensor called `name` of `element_type` and `shape` (-1 for a dynamic dimension).
    pub fn new(name: &str, element_type: ElementType, shape: &[i64]) -> TensorInfo {
        TensorInfo {
            name: name.to_string(),
            element_type,
            shape: shape.to_vec(),
        }
    }

    /// A float32 tensor called `name` of `shape` (-1 for a dynamic dimension): what kernels
    /// compute in.
    pub fn f32(name: &str, shape: &[i64]) -> TensorInfo {
        TensorInfo::new(name, ElementType::Float32, shape)
    }

    /// A uint8 tensor called `name` of `shape` (-1 for a dynamic dimension), such as raw
    /// image bytes. Open Inference Protocol v2 clients send it as datatype `UINT8`; it
    /// arrives in [`Request::tensors`], and kernels need it as float32 first:
    ///
    /// ```ignore
    /// // describe(): PluginInfo::new(..).input(TensorInfo::u8("pixels", &[-1, -1, 3]))
    /// let pixels = request.take_tensor("pixels").ok_or_else(|| Error::invalid_argument("no pixels"))?;
    /// let shape = pixels.shape();
    /// let values: Vec<f32> = pixels.to_bytes().iter().map(|&b| f32::from(b) / 255.0).collect();
    /// let x = Tensor::from_slice(&shape, &values)?;
    /// ```
    pub fn u8(name: &str, shape: &[i64]) -> TensorInfo {
        TensorInfo::new(name, ElementType::Uint8, shape)
    }

    /// An int64 tensor called `name` of `shape` (-1 for a dynamic dimension), such as token
    /// ids or class indices (datatype `INT64` in Open Inference Protocol v2).
    pub fn i64(name: &str, shape: &[i64]) -> TensorInfo {
        TensorInfo::new(name, ElementType::Int64, shape)
    }
}

/// What a plugin is: the answer to `describe()`.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// Must equal the manifest's `name`.
    pub name: String,
    /// Must equal the manifest's `version`.
    pub version: String,
    /// One line for humans.
    pub description: String,
    /// The tensors the plugin takes (for model-metadata endpoints).
    pub inputs: Vec<TensorInfo>,
    /// The tensors the plugin gives.
    pub outputs: Vec<TensorInfo>,
}

impl PluginInfo {
    /// A plugin called `name` at `version`, usually `env!("CARGO_PKG_VERSION")`.
    pub fn new(name: &str, version: &str) -> PluginInfo {
        PluginInfo {
            name: name.to_string(),
            version: version.to_string(),
            description: String::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Sets the description.
    pub fn description(mut self, description: &str) -> Self {
        self.description = description.to_string();
        self
    }

    /// Declares an input tensor.
    pub fn input(mut self, info: TensorInfo) -> Self {
        self.inputs.push(info);
        self
    }

    /// Declares an output tensor.
    pub fn output(mut self, info: TensorInfo) -> Self {
        self.outputs.push(info);
        self
    }
}

/// One request: a body with its MIME type, and named tensors from tensor protocols.
#[derive(Debug)]
pub struct Request {
    /// MIME type of `body`, such as `image/png` or `application/json`.
    pub content_type: String,
    /// The raw body.
    pub body: Vec<u8>,
    /// Named input tensors, already in host memory.
    pub tensors: Vec<(String, Tensor)>,
}

impl Request {
    /// The content type without parameters, lower-cased (`"Image/PNG; q=1"` is `"image/png"`).
    pub fn mime(&self) -> String {
        self.content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::invalid_argument(format!("body is not the expected JSON: {e}")))
    }

    /// Takes the input tensor called `name` out of the request.
    pub fn take_tensor(&mut self, name: &str) -> Option<Tensor> {
        let index = self.tensors.iter().position(|(n, _)| n == name)?;
        Some(self.tensors.remove(index).1)
    }

    /// A float32 input as a tensor protocol sends it (the tensor `name`, taken out of the
    /// request) or as an HTTP client does (a float32 `.npy` body): what a plugin that takes
    /// one tensor reads first. A body that is not float32 `.npy` is `unsupported` or
    /// `invalid-argument`, saying which.
    pub fn f32_input(&mut self, name: &str) -> Result<Tensor, Error> {
        if let Some(tensor) = self.take_tensor(name) {
            return Ok(tensor);
        }
        if self.body.is_empty() {
            return Err(Error::invalid_argument(format!(
                "send the tensor {name:?} or a float32 .npy body"
            )));
        }
        match crate::npy::parse(&self.body)? {
            crate::npy::Npy {
                shape,
                data: crate::npy::NpyData::F32(values),
            } => Tensor::from_slice(&shape, &values),
            other => Err(Error::unsupported(format!(
                "the .npy body is {}, not float32",
                other.data.dtype()
            ))),
        }
    }
}

/// A plugin's answer.
#[derive(Debug)]
pub struct Response {
    /// MIME type of `body`.
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
    /// Named output tensors.
    pub tensors: Vec<(String, Tensor)>,
}

impl Response {
    /// A body of any content type, such as an image the plugin made.
    pub fn new(content_type: impl Into<String>, body: Vec<u8>) -> Response {
        Response {
            content_type: content_type.into(),
            body,
            tensors: Vec::new(),
        }
    }

    /// A JSON body.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Response, Error> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::internal(format!("cannot serialize the response: {e}")))?;
        Ok(Response {
            content_type: "application/json".to_string(),
            body,
            tensors: Vec::new(),
        })
    }

    /// Adds a named output tensor (served by tensor protocols such as Open Inference v2).
    pub fn with_tensor(mut self, name: &str, tensor: Tensor) -> Self {
        self.tensors.push((name.to_string(), tensor));
        self
    }
}

/// What a plugin implements. Each request runs on a fresh instance, so a plugin keeps no
/// state between requests; load weights and open models inside `infer`, which costs a handle,
/// not a copy.
pub trait Plugin {
    /// Name, version and the tensors the plugin takes and gives.
    fn describe() -> PluginInfo;
    /// Answers one request.
    fn infer(request: Request) -> Result<Response, Error>;
}

#[doc(hidden)]
pub fn describe_export<P: Plugin>() -> handler::PluginInfo {
    let info = P::describe();
    handler::PluginInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        inputs: info.inputs,
        outputs: info.outputs,
    }
}

#[doc(hidden)]
pub fn infer_export<P: Plugin>(request: handler::Request) -> Result<handler::Response, Error> {
    let request = Request {
        content_type: request.content_type,
        body: request.body,
        tensors: request
            .tensors
            .into_iter()
            .map(|t| (t.name, Tensor(t.tensor)))
            .collect(),
    };
    let response = P::infer(request)?;
    Ok(handler::Response {
        content_type: response.content_type,
        body: response.body,
        tensors: response
            .tensors
            .into_iter()
            .map(|(name, t)| handler::NamedTensor { name, tensor: t.0 })
            .collect(),
    })
}

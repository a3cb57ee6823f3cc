//! Why a request failed, classified once: its wire code, its HTTP status, whether it
//! exhausted a limit, and what it says about the plugin. The CLI, the gateway, its lanes and
//! the conformance kit all ask these methods instead of matching the variants themselves.

/// What a plugin's error result said: the guest's own verdict on its input.
pub use crate::glue::WitErrorCode as PluginErrorCode;

/// Why a request did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("{}: {message}", plugin_error_code(*.code))]
    Plugin {
        code: PluginErrorCode,
        message: String,
    },
    #[error("request body of {size} bytes exceeds the plugin's limit of {limit} bytes")]
    RequestTooLarge { size: usize, limit: usize },
    #[error("response of {size} bytes exceeds the plugin's limit of {limit} bytes")]
    ResponseTooLarge { size: usize, limit: usize },
    #[error("deadline of {deadline_ms} ms exceeded")]
    DeadlineExceeded { deadline_ms: u64 },
    /// The client's own timeout passed first (shorter than the plugin's deadline): not the
    /// plugin's fault.
    #[error("the request's timeout of {timeout_us} µs passed before it was answered")]
    TimedOut { timeout_us: u64 },
    #[error("plugin exceeded its linear memory limit of {limit_bytes} bytes")]
    MemoryExhausted { limit_bytes: usize },
    #[error("plugin exceeded its host tensor memory limit of {limit_bytes} bytes")]
    TensorMemoryExhausted { limit_bytes: usize },
    #[error("plugin trapped: {reason}{}", stderr_suffix(.stderr))]
    Trap {
        /// What wasmtime says stopped the guest, e.g. "call stack exhausted".
        reason: String,
        /// The start of what the guest wrote to stderr (a Rust panic message goes there).
        stderr: String,
    },
    #[error("plugin broke its declared contract: {0}")]
    BrokenContract(String),
}

/// What a failed request says about its plugin version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misconduct {
    /// It exhausted a CPU or memory limit: demote now.
    ExhaustedLimit,
    /// It trapped, or broke its output contract or response limit: demote on a storm.
    Failed,
}

impl InvokeError {
    /// A trap with no guest output, for host-side failures around a call.
    pub fn trap(reason: impl Into<String>) -> InvokeError {
        InvokeError::Trap {
            reason: reason.into(),
            stderr: String::new(),
        }
    }

    /// The stable code clients see (`{"error": {"code": ...}}`), and metrics count by.
    pub fn code(&self) -> &'static str {
        match self {
            InvokeError::Plugin { code, .. } => plugin_error_code(*code),
            InvokeError::RequestTooLarge { .. } => "request-too-large",
            InvokeError::ResponseTooLarge { .. } => "response-too-large",
            InvokeError::DeadlineExceeded { .. } => "deadline-exceeded",
            InvokeError::TimedOut { .. } => "timeout",
            InvokeError::MemoryExhausted { .. } => "memory-exhausted",
            InvokeError::TensorMemoryExhausted { .. } => "tensor-memory-exhausted",
            InvokeError::Trap { .. } => "trap",
            InvokeError::BrokenContract(_) => "broken-contract",
        }
    }

    /// The message clients see: the plugin's own words for its error result, else the
    /// host's description. Never a backtrace.
    pub fn message(&self) -> String {
        match self {
            InvokeError::Plugin { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// The HTTP status of this failure: 4xx for what the client sent, 5xx for what the
    /// plugin or a limit did.
    pub fn http_status(&self) -> u16 {
        match self {
            InvokeError::Plugin { code, .. } => match code {
                PluginErrorCode::InvalidArgument | PluginErrorCode::ShapeMismatch => 400,
                PluginErrorCode::Unsupported => 415,
                PluginErrorCode::ResourceExhausted => 507,
                PluginErrorCode::NotFound
                | PluginErrorCode::NotPermitted
                | PluginErrorCode::Internal => 500,
            },
            InvokeError::RequestTooLarge { .. } => 413,
            InvokeError::DeadlineExceeded { .. } | InvokeError::TimedOut { .. } => 504,
            InvokeError::MemoryExhausted { .. } | InvokeError::TensorMemoryExhausted { .. } => 507,
            InvokeError::ResponseTooLarge { .. }
            | InvokeError::Trap { .. }
            | InvokeError::BrokenContract(_) => 500,
        }
    }

    /// Whether the plugin ran into one of its declared limits (deadline, linear memory, host
    /// tensor memory, response size): the conformance kit's `limits` finding.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            InvokeError::DeadlineExceeded { .. }
                | InvokeError::MemoryExhausted { .. }
                | InvokeError::TensorMemoryExhausted { .. }
                | InvokeError::ResponseTooLarge { .. }
        )
    }

    /// What this failure says about the plugin version, if anything: the plugin's own error
    /// result and a client's oversized body are not its misconduct.
    pub fn misconduct(&self) -> Option<Misconduct> {
        match self {
            InvokeError::DeadlineExceeded { .. }
            | InvokeError::MemoryExhausted { .. }
            | InvokeError::TensorMemoryExhausted { .. } => Some(Misconduct::ExhaustedLimit),
            InvokeError::Trap { .. }
            | InvokeError::BrokenContract(_)
            | InvokeError::ResponseTooLarge { .. } => Some(Misconduct::Failed),
            InvokeError::Plugin { .. }
            | InvokeError::RequestTooLarge { .. }
            | InvokeError::TimedOut { .. } => None,
        }
    }

    /// The JSON form of a failed request, `{"code": ..., "message": ...}`, shared by the CLI,
    /// the gateway and the conformance kit.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code(), "message": self.message()})
    }
}

/// The WIT name of a plugin error code.
pub fn plugin_error_code(code: PluginErrorCode) -> &'static str {
    match code {
        PluginErrorCode::InvalidArgument => "invalid-argument",
        PluginErrorCode::ShapeMismatch => "shape-mismatch",
        PluginErrorCode::Unsupported => "unsupported",
        PluginErrorCode::NotFound => "not-found",
        PluginErrorCode::NotPermitted => "not-permitted",
        PluginErrorCode::ResourceExhausted => "resource-exhausted",
        PluginErrorCode::Internal => "internal",
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(" (guest stderr: {stderr})")
    }
}

/// Why a plugin version did not load. Each kind is its own code, so the admin API, the
/// conformance kit and the CLI tell an author which of their mistakes it was.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file the manifest names is not among the plugin's files.
    #[error("{0}")]
    MissingFile(String),
    /// The bytes are not a WebAssembly component wasmtime can compile.
    #[error("cannot compile the component of plugin {plugin:?}: {message}")]
    Compile { plugin: String, message: String },
    /// The component imports an interface the gateway does not grant.
    #[error(
        "the component imports {import:?}, which this gateway does not grant \
         (plugins may import edgeplug:plugin interfaces and the WASI interfaces Rust's std needs)"
    )]
    ForbiddenImport { import: String },
    /// The component does not export (or import) what the `plugin` world says.
    #[error("plugin {plugin:?} does not fit the edgeplug world: {message}")]
    WorldMismatch { plugin: String, message: String },
    /// A granted model or weights file does not load.
    #[error("{0}")]
    Model(String),
    /// `describe()` itself failed.
    #[error("describe() failed: {0}")]
    Describe(InvokeError),
    /// `describe()` names another plugin or version than the manifest does.
    #[error(
        "plugin describes itself as {described_name} {described_version}, but its manifest \
         says {manifest_name} {manifest_version} (the version comes from Cargo.toml's \
         `version` through CARGO_PKG_VERSION and from plugin.toml's `version`: keep them equal)"
    )]
    DescribeMismatch {
        described_name: String,
        described_version: String,
        manifest_name: String,
        manifest_version: String,
    },
    /// The host could not set up what every plugin needs (an internal failure).
    #[error("{0}")]
    Host(String),
}

impl LoadError {
    /// A short, stable code for error bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            LoadError::MissingFile(_) => "missing-file",
            LoadError::Compile { .. } => "not-a-component",
            LoadError::ForbiddenImport { .. } => "forbidden-import",
            LoadError::WorldMismatch { .. } => "world-mismatch",
            LoadError::Model(_) => "model-failed",
            LoadError::Describe(_) => "describe-failed",
            LoadError::DescribeMismatch { .. } => "describe-mismatch",
            LoadError::Host(_) => "host",
        }
    }
}

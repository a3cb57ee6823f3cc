//! Escalation (WIT 0.1.2): a request the plugin is unsure of goes to a bigger model on an
//! upstream ("center") its manifest grants (`[grants] upstream = ["center"]`); the gateway's
//! configuration says where that is. The call is bounded by what the request's deadline leaves
//! (less a reserve for the plugin to answer), so when the center is down or slow the plugin
//! gets [`UpstreamErrorCode::Unavailable`] in time to answer with its own result, marked
//! degraded. The gateway counts such answers (`edgeplug_degraded_answers_total`) and marks
//! them with the `x-edgeplug-degraded: true` header.
//!
//! ```ignore
//! use edgeplug_sdk::upstream;
//! match upstream::infer("center", "digits", &[("input", &image)]) {
//!     Ok(outputs) => { /* the center's tensors, by name */ }
//!     Err(e) if e.center_could_not_help() => { /* answer on our own, "degraded": true */ }
//!     Err(e) => return Err(e.into()),
//! }
//! ```

use crate::bindings::edgeplug::plugin::upstream;
use crate::{Error, Tensor};

/// Why an escalation gave no answer.
#[doc(inline)]
pub use upstream::UpstreamError;

/// What kind of escalation failure: the plugin's own mistake (`NotPermitted`,
/// `InvalidArgument`) or the center's (`Unavailable`, `Rejected`).
#[doc(inline)]
pub use upstream::UpstreamErrorCode;

impl UpstreamError {
    /// The center was down, too slow, failing, or refused the request: the plugin should
    /// answer on its own, degraded. The other codes are the plugin's own mistakes.
    pub fn center_could_not_help(&self) -> bool {
        matches!(
            self.code,
            UpstreamErrorCode::Unavailable | UpstreamErrorCode::Rejected
        )
    }
}

/// An escalation failure passed on as the plugin's error: `not-permitted` stays
/// `not-permitted`, a malformed call is `invalid-argument`, the center's failures `internal`.
impl From<UpstreamError> for Error {
    fn from(e: UpstreamError) -> Error {
        let code = match e.code {
            UpstreamErrorCode::NotPermitted => crate::ErrorCode::NotPermitted,
            UpstreamErrorCode::InvalidArgument => crate::ErrorCode::InvalidArgument,
            UpstreamErrorCode::Unavailable | UpstreamErrorCode::Rejected => {
                crate::ErrorCode::Internal
            }
        };
        Error::new(code, format!("escalation: {}", e.message))
    }
}

/// Runs `model` on upstream `name` with named input tensors; the center's output tensors come
/// back by name (in host memory, charged to the request's tensor budget).
pub fn infer(
    name: &str,
    model: &str,
    inputs: &[(&str, &Tensor)],
) -> Result<Vec<(String, Tensor)>, UpstreamError> {
    let names: Vec<String> = inputs.iter().map(|(n, _)| n.to_string()).collect();
    let tensors: Vec<&_> = inputs.iter().map(|(_, t)| &t.0).collect();
    Ok(upstream::infer(name, model, &names, &tensors)?
        .into_iter()
        .map(|o| (o.name, Tensor(o.tensor)))
        .collect())
}

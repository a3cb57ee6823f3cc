//! Escalation: the capability a plugin uses to send a request it is unsure of to a bigger
//! model elsewhere (WIT 0.1.2's `upstream` interface). The runtime knows no network: the
//! embedder (the gateway) supplies an [`Upstreams`] that maps a name to an endpoint. The
//! runtime checks the grant, bounds the call by the request's remaining deadline and charges
//! the answer's tensors to the request's budget (`glue_upstream.rs`).

use std::time::Duration;

use edgeplug_kernels::Tensor;

/// One escalation, as the runtime hands it to the embedder.
#[derive(Debug)]
pub struct UpstreamCall {
    /// The plugin that escalates (for the embedder's metrics and logs).
    pub plugin: String,
    /// The upstream's name, granted by the plugin's manifest.
    pub upstream: String,
    /// The model to run there, checked to be a plain name (it becomes part of a URL path).
    pub model: String,
    pub inputs: Vec<(String, Tensor)>,
    /// The most the call may take: what is left of the request's deadline less
    /// [`answer_reserve`]. The embedder also applies its own per-upstream timeout.
    pub time_left: Duration,
    /// The most tensor bytes the answer may hold: what is left of the request's budget.
    pub max_bytes: usize,
}

/// Why an upstream gave no tensors. Both let the plugin answer on its own, degraded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Not configured on this host, down, too slow, failing, or not answering the protocol.
    #[error("{0}")]
    Unavailable(String),
    /// The upstream answered and refused the request (an unknown model, inputs it does not
    /// take).
    #[error("{0}")]
    Rejected(String),
}

/// The upstreams an embedder offers. Called synchronously from the thread running the
/// plugin (a host call cannot yield to the guest), so it blocks for at most
/// [`UpstreamCall::time_left`]: an implementation that is async inside must wait for its own
/// runtime, never the caller's reactor.
pub trait Upstreams: Send + Sync + std::fmt::Debug {
    fn infer(&self, call: UpstreamCall) -> Result<Vec<(String, Tensor)>, UpstreamError>;
}

/// Time kept back from an escalation for the plugin to answer after it returns: the epoch
/// deadline may fire up to one tick early and the plugin still has to write its degraded
/// answer, so an upstream that takes all the time left must not take the plugin's answer
/// with it. A tenth of the deadline, and at least 20 ms.
pub fn answer_reserve(deadline: Duration) -> Duration {
    (deadline / 10).max(Duration::from_millis(20))
}

/// A model name an upstream call may carry: it becomes a URL path segment, so plain.
pub fn is_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_a_tenth_of_the_deadline_and_never_under_20_ms() {
        assert_eq!(
            answer_reserve(Duration::from_secs(2)),
            Duration::from_millis(200)
        );
        assert_eq!(
            answer_reserve(Duration::from_millis(100)),
            Duration::from_millis(20)
        );
    }

    #[test]
    fn model_names_are_plain() {
        assert!(is_model_name("digits"));
        assert!(is_model_name("digits_cnn-1.0"));
        for bad in ["", "..", "../x", "a/b", "a b", "a?b", ".hidden"] {
            assert!(!is_model_name(bad), "{bad:?}");
        }
    }
}

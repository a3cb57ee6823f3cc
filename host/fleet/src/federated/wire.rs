//! The federated protocol's messages and their signatures.
//!
//! The aggregator's messages (a round notice, an averaged head) travel as a signed envelope:
//! `{"body": "<the message as JSON text>", "key_id": "…", "signature": "…"}`. The signature
//! (Ed25519 through `edgeplug_bundle::sign_detached`, domain [`DOMAIN`]) covers the body's
//! exact bytes, so no canonical form is needed and nothing outside the body is believed. A
//! head inside a message is a checkpoint (`edgeplug_train::checkpoint`), itself signed by the
//! same key in the checkpoint domain: a gateway checks both against its trust store.
//!
//! A gateway's upload is not signed: the broker's ACL lets gateway `ID` write only its own
//! upload topic (as for its status), and the upload names `ID` inside too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use edgeplug_bundle::{KeyId, SIGNATURE_LEN, SecretKey, TrustStore};
use edgeplug_train::fedavg::Delta;
use edgeplug_train::{Head, HeadSpec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The signature domain of the aggregator's messages.
pub const DOMAIN: &str = "edgeplug-fleet-federated";
/// Largest message accepted from the broker (a head of a million weights fits, base64'd).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Why a message was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message is {0} bytes, over the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("signature refused: {0}")]
    Signature(#[from] edgeplug_bundle::SignatureError),
    #[error("the head inside is refused: {0}")]
    Checkpoint(#[from] edgeplug_train::checkpoint::CheckpointError),
}

fn malformed(message: impl std::fmt::Display) -> WireError {
    WireError::Malformed(message.to_string())
}

/// Differential privacy settings of a round: each gateway clips its delta to `clip` (global
/// L2 norm) and adds N(0, (noise_multiplier·clip)²) noise before upload; `delta` is the δ of
/// the (ε, δ) the aggregator records.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpSettings {
    pub clip: f64,
    pub noise_multiplier: f64,
    pub delta: f64,
}

impl DpSettings {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.clip.is_finite() && self.clip > 0.0,
            "the clip norm must be above 0"
        );
        anyhow::ensure!(
            self.noise_multiplier.is_finite() && self.noise_multiplier > 0.0,
            "the noise multiplier must be above 0"
        );
        anyhow::ensure!(
            self.delta > 0.0 && self.delta < 1.0,
            "δ must be between 0 and 1"
        );
        Ok(())
    }
}

/// What one completed round did: the metadata every later message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundRecord {
    pub round: u64,
    /// Gateway ids whose deltas were averaged.
    pub participants: Vec<String>,
    /// Their samples, summed (the average's total weight).
    pub samples: u64,
    /// Uploads left out: late, duplicate, for another round, or refused.
    pub ignored: u64,
    pub dp: Option<DpSettings>,
    /// The (ε, δ) a gateway that took part in every noised round so far has spent.
    pub epsilon: Option<f64>,
}

/// "Round `round` is open: train from `global` and upload by `deadline_unix_ms`", retained on
/// the round topic. `open: false` says the aggregator stopped: nothing to train for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundNotice {
    pub group: String,
    pub plugin: String,
    pub round: u64,
    /// Grows with every message the aggregator signs for this plugin: a gateway refuses one
    /// not above the last it accepted (replays).
    pub sequence: u64,
    pub open: bool,
    pub deadline_unix_ms: u64,
    pub quorum: u32,
    pub dp: Option<DpSettings>,
    /// The global head to train from (a checkpoint, base64); `None` in a bootstrap round, where
    /// each gateway starts from its own head and uploads it with its delta.
    pub global: Option<String>,
    /// [`head_digest`] of the head uploads must be relative to (of `global`), `None` in a
    /// bootstrap round.
    pub base: Option<String>,
    /// The completed rounds' records, oldest first.
    pub history: Vec<RoundRecord>,
}

/// "The averaged head of round `round`", retained on the head topic: what gateways install.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadNotice {
    pub group: String,
    pub plugin: String,
    pub round: u64,
    pub sequence: u64,
    /// The head, a checkpoint (base64).
    pub checkpoint: String,
    pub record: RoundRecord,
}

/// A gateway's contribution to a round: a delta and a sample count, never a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    pub group: String,
    pub plugin: String,
    pub gateway: String,
    pub round: u64,
    /// [`head_digest`] of the head the delta is relative to.
    pub base: String,
    pub samples: u64,
    pub steps: u32,
    pub features: usize,
    pub classes: usize,
    pub hidden: Option<usize>,
    /// The delta's values, f32 little-endian in parameter order, base64.
    pub delta: String,
    /// The delta's L2 norm before clipping.
    pub norm: f64,
    /// The DP settings applied (clip, noise multiplier), `None` if none were.
    pub dp: Option<DpSettings>,
    /// In a bootstrap round only: the gateway's starting head (values as `delta`), which the
    /// aggregator needs to add the average to.
    pub bootstrap_base: Option<String>,
}

/// The signed envelope.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    body: String,
    key_id: String,
    signature: String,
}

/// Signs `message` with `key`: the envelope's bytes.
pub fn sign<T: Serialize>(message: &T, key: &SecretKey) -> Vec<u8> {
    let body = serde_json::to_string(message).expect("messages serialize");
    let signature = edgeplug_bundle::sign_detached(key, DOMAIN, body.as_bytes());
    serde_json::to_vec(&Envelope {
        body,
        key_id: key.key_id().to_string(),
        signature: hex::encode(signature),
    })
    .expect("envelopes serialize")
}

/// Checks an envelope's signature against `trust`, then parses its body.
pub fn verify<T: DeserializeOwned>(bytes: &[u8], trust: &TrustStore) -> Result<T, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(malformed)?;
    let key_id: KeyId = envelope
        .key_id
        .parse()
        .map_err(|_| malformed("key_id is not 32 hex digits"))?;
    let mut signature = [0u8; SIGNATURE_LEN];
    hex::decode_to_slice(&envelope.signature, &mut signature)
        .map_err(|_| malformed("signature is not 128 hex digits"))?;
    trust.verify_detached(&key_id, DOMAIN, envelope.body.as_bytes(), &signature)?;
    serde_json::from_str(&envelope.body).map_err(malformed)
}

/// Parses an upload (unsigned: see the module docs).
pub fn parse_upload(bytes: &[u8]) -> Result<Upload, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(malformed)
}

/// Names a head's weights: SHA-256 over its spec and its values, hex. Two gateways starting
/// from the same head compute the same digest, whatever checkpoint carried it.
pub fn head_digest(head: &Head) -> String {
    let spec = head.spec();
    let mut hash = Sha256::new();
    hash.update(format!("{} {} {:?}\n", spec.features, spec.classes, spec.hidden).as_bytes());
    for param in head.params() {
        hash.update(param.to_le_bytes());
    }
    hex::encode(hash.finalize())
}

/// Values, f32 little-endian, base64.
pub fn encode_values<'a>(params: impl IntoIterator<Item = &'a [f32]>) -> String {
    let bytes: Vec<u8> = params
        .into_iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    B64.encode(bytes)
}

/// The inverse of [`encode_values`], split into `spec`'s parameters.
pub fn decode_values(text: &str, spec: HeadSpec) -> Result<Vec<Vec<f32>>, WireError> {
    let bytes = B64.decode(text).map_err(malformed)?;
    let shapes = spec.param_shapes();
    let sizes: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    if bytes.len() != sizes.iter().sum::<usize>() * 4 {
        return Err(malformed(format!(
            "{} bytes of values do not fit a head of {spec:?}",
            bytes.len()
        )));
    }
    let mut values = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    Ok(sizes
        .into_iter()
        .map(|n| values.by_ref().take(n).collect())
        .collect())
}

impl Upload {
    pub fn spec(&self) -> HeadSpec {
        HeadSpec {
            features: self.features,
            classes: self.classes,
            hidden: self.hidden,
        }
    }

    /// The delta, checked (sizes, finite values).
    pub fn delta(&self) -> Result<Delta, WireError> {
        Delta::from_params(self.spec(), decode_values(&self.delta, self.spec())?).map_err(malformed)
    }

    /// The bootstrap round's starting head, checked.
    pub fn bootstrap_base(&self) -> Result<Option<Head>, WireError> {
        self.bootstrap_base
            .as_deref()
            .map(|text| {
                Head::from_params(self.spec(), decode_values(text, self.spec())?).map_err(malformed)
            })
            .transpose()
    }
}

/// The head inside a message: a checkpoint (base64) whose signature a key of `trust` made.
pub fn decode_head(
    checkpoint: &str,
    trust: &TrustStore,
) -> Result<(Head, edgeplug_train::checkpoint::Metadata), WireError> {
    let bytes = B64.decode(checkpoint).map_err(malformed)?;
    Ok(edgeplug_train::checkpoint::decode(&bytes, trust)?)
}

/// A checkpoint's bytes as a message carries them.
pub fn encode_checkpoint(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;

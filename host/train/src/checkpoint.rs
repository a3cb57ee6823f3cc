//! A trained head on disk: written crash-safe (temp file, fsync, rename: a reader finds the
//! old checkpoint or the new one, never a torn one) and signed with the gateway's own device
//! key by the same code that signs bundles (a detached Ed25519 signature in its own domain),
//! so a head is trusted like a version: nothing unverified is loaded.
//!
//! Layout: `EPHEAD1\n`, the header's length (u32 LE), the header (JSON: the
//! [`Metadata`]), the weights (f32 LE, in [`HeadSpec::param_shapes`] order), then the 64-byte
//! signature over everything before it.

use std::path::Path;

use edgeplug_bundle::{KeyId, SIGNATURE_LEN, SecretKey, TrustStore};
use serde::{Deserialize, Serialize};

use super::head::{Head, HeadSpec};

const MAGIC: &[u8; 8] = b"EPHEAD1\n";
/// The signature domain: a checkpoint's signature verifies as nothing else (no bundle, no
/// fleet notice), and nothing else's as a checkpoint.
pub const DOMAIN: &str = "edgeplug-head-checkpoint";
/// A header larger than this is refused unread.
const MAX_HEADER: usize = 64 << 10;

/// What a checkpoint says of its head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The plugin whose head this is.
    pub plugin: String,
    /// Counts up with every head trained for the plugin.
    pub sequence: u64,
    pub features: usize,
    pub classes: usize,
    pub hidden: Option<usize>,
    /// Labeled samples it was trained on.
    pub samples: u64,
    /// Milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The key that signed it (32 hex digits).
    pub key_id: String,
    /// Where it came from: `"local"` (a fine-tune job on this gateway) or
    /// `"federated round N"`. Absent in checkpoints written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The plugin version whose features it was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_version: Option<String>,
}

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read or write the checkpoint: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a head checkpoint: {0}")]
    Malformed(String),
    #[error("the checkpoint's signature does not verify: {0}")]
    Signature(#[from] edgeplug_bundle::SignatureError),
}

fn malformed(message: impl Into<String>) -> CheckpointError {
    CheckpointError::Malformed(message.into())
}

/// The bytes of a checkpoint of `head`, signed with `key`.
pub fn encode(head: &Head, metadata: &Metadata, key: &SecretKey) -> Vec<u8> {
    let header = serde_json::to_vec(metadata).expect("metadata serializes");
    let mut bytes = Vec::with_capacity(MAGIC.len() + 4 + header.len() + head.byte_size() + 64);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&header);
    for param in head.params() {
        bytes.extend_from_slice(&param.to_le_bytes());
    }
    let signature = edgeplug_bundle::sign_detached(key, DOMAIN, &bytes);
    bytes.extend_from_slice(&signature);
    bytes
}

/// Writes a signed checkpoint of `head` to `path`, crash-safe.
pub fn write(
    path: &Path,
    head: &Head,
    metadata: &Metadata,
    key: &SecretKey,
) -> Result<(), CheckpointError> {
    Ok(edgeplug_bundle::write_file_atomic(
        path,
        &encode(head, metadata, key),
    )?)
}

/// Checks and decodes checkpoint bytes: the signature first (by a key `trust` holds), then
/// the layout.
pub fn decode(bytes: &[u8], trust: &TrustStore) -> Result<(Head, Metadata), CheckpointError> {
    if bytes.len() < MAGIC.len() + 4 + SIGNATURE_LEN || !bytes.starts_with(MAGIC) {
        return Err(malformed("no EPHEAD1 header"));
    }
    let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
    let length = u32::from_le_bytes(signed[8..12].try_into().expect("4 bytes")) as usize;
    if length > MAX_HEADER || 12 + length > signed.len() {
        return Err(malformed(format!(
            "a header of {length} bytes does not fit"
        )));
    }
    let metadata: Metadata = serde_json::from_slice(&signed[12..12 + length])
        .map_err(|e| malformed(format!("header: {e}")))?;
    let key_id: KeyId = metadata
        .key_id
        .parse()
        .map_err(|_| malformed("key_id is not 32 hex digits"))?;
    let signature: &[u8; SIGNATURE_LEN] = signature.try_into().expect("64 bytes");
    trust.verify_detached(&key_id, DOMAIN, signed, signature)?;
    let spec = HeadSpec {
        features: metadata.features,
        classes: metadata.classes,
        hidden: metadata.hidden,
    };
    let mut weights = &signed[12 + length..];
    let mut params = Vec::new();
    for shape in spec.param_shapes() {
        let count = shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
        let size = count.and_then(|c| c.checked_mul(4));
        let Some(size) = size.filter(|s| *s <= weights.len()) else {
            return Err(malformed("the weights are shorter than the header says"));
        };
        let (mine, rest) = weights.split_at(size);
        params.push(
            mine.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
        weights = rest;
    }
    if !weights.is_empty() {
        return Err(malformed("bytes follow the weights"));
    }
    let head = Head::from_params(spec, params).map_err(|e| malformed(e.to_string()))?;
    Ok((head, metadata))
}

/// Reads and checks the checkpoint at `path`.
pub fn read(path: &Path, trust: &TrustStore) -> Result<(Head, Metadata), CheckpointError> {
    decode(&std::fs::read(path)?, trust)
}

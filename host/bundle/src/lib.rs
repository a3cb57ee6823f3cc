//! Signed plugin bundles (`<name>-<version>.epk`), the trust store and the plugin store.
//!
//! # Format (version 1)
//! All integers little-endian. Strict: every length is bounded before use, nothing may
//! follow the last member but one signature block.
//!
//! ```text
//! magic        8 bytes   89 45 50 4B 0D 0A 1A 0A  ("\x89EPK\r\n\x1a\n")
//! version      u32       1
//! count        u32       number of members, 1..=max_members
//! count times:
//!   path_len   u16       1..=255
//!   path       bytes     UTF-8, a plain relative path (manifest::check_member_path), unique
//!   size       u64       <= max_member_bytes (plugin.toml: <= 1 MiB)
//!   data       size bytes
//! signature block (absent = unsigned):
//!   tag        4 bytes   "ESIG"
//!   key id     16 bytes  first 16 bytes of sha-256 of the signer's raw Ed25519 public key
//!   signature  64 bytes  Ed25519 over every preceding byte of the file (tag and key id too)
//! ```
//! The first member is `plugin.toml`; the others are exactly the files the manifest
//! references, each listed with its sha-256 and size in the manifest's `[members]` table
//! (written by `pack`). The signature covers every byte but itself, so any change anywhere
//! (headers, lengths, key id included) fails verification; the per-member digests serve
//! `inspect`, partial reads, and a second check after the signature.
//!
//! Why not tar: tar has several header dialects, padding, links, devices and long-name
//! extensions, all of which a strict reader must refuse; this format has nothing to refuse
//! but wrong lengths, and is a few dozen lines to read and to fuzz.
//!
//! # Verification
//! [`verify`] is the only constructor of [`VerifiedBundle`], the only way to member bytes.
//! Order: bounds and structure → signature (unsigned, revoked key, unknown key, bad
//! signature) → manifest parse → member set → sizes → hashes. The manifest is parsed before
//! the member hashes are checked because it holds them; it is parsed only after its bytes
//! proved to be signed by a trusted key.

mod error;
mod format;
mod fsutil;
pub mod manifest;
mod pack;
mod sign;
mod store;
mod trust;
mod verify;

#[cfg(test)]
mod tests;

pub use error::{BundleError, KeyError, PackError, SignatureError, StoreError, TrustError};
pub use format::{FORMAT_VERSION, MAGIC, MAX_MANIFEST_BYTES, SIG_BLOCK_LEN, sign_bundle};
pub use pack::{Packed, pack_dir, pack_dir_with};
pub use sign::{
    GeneratedKey, KeyId, PublicKey, SIGNATURE_LEN, SecretKey, generate_keypair, load_or_generate,
    sign_detached,
};
pub use store::{
    ActivePlugins, AllowDowngrade, InstallOutcome, KeptVersion, PluginInfo, PluginStore,
    StoreConfig,
};
pub use trust::{REVOKED_FILE, TrustStore};
pub use verify::{
    InspectedMember, Inspection, VerifiedBundle, inspect, read_bundle_file, verify, verify_file,
};

/// Write `bytes` to `path` atomically (temp file, fsync, rename, fsync dir): for `sign` in
/// place and for callers writing bundles.
pub fn write_file_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    fsutil::write_atomic(path, bytes)
}

/// Bounds checked from headers before anything is read whole or allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleLimits {
    /// Largest bundle file, in bytes. Default: 512 MiB.
    pub max_bundle_bytes: u64,
    /// Largest member, in bytes. Default: 256 MiB. (`plugin.toml` is also capped at 1 MiB.)
    pub max_member_bytes: u64,
    /// Most members, `plugin.toml` included. Default: 256.
    pub max_members: u64,
}

impl Default for BundleLimits {
    fn default() -> Self {
        BundleLimits {
            max_bundle_bytes: 512 << 20,
            max_member_bytes: 256 << 20,
            max_members: 256,
        }
    }
}

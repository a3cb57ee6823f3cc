//! Why a bundle, a key, a trust store or a store operation was refused. Every refusal has its
//! own variant and an exact message; callers match on variants, operators read the messages.

use crate::manifest::{ManifestError, Sha256};
use crate::sign::KeyId;

/// Why a bundle was refused by [`verify`](crate::verify) (or could not be read).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("not an edgeplug bundle (bad magic bytes)")]
    BadMagic,
    #[error(
        "unsupported bundle format version {version} (this host reads version {})",
        crate::format::FORMAT_VERSION
    )]
    UnsupportedFormat { version: u32 },
    #[error("bundle is truncated: {what} at byte {offset} runs past the end of the file")]
    Truncated { what: &'static str, offset: u64 },
    #[error("bundle has {count} unexpected trailing bytes after its last member")]
    TrailingBytes { count: u64 },
    #[error("bundle declares {count} members, over the limit of {limit}")]
    TooManyMembers { count: u64, limit: u64 },
    #[error("member {path:?} is {size} bytes, over the limit of {limit} bytes")]
    MemberTooLarge { path: String, size: u64, limit: u64 },
    #[error(
        "member path {path:?} is not a plain relative path (no '..', no absolute path, no backslash)"
    )]
    BadPath { path: String },
    #[error("member {path:?} appears more than once")]
    DuplicateMember { path: String },
    #[error("the first member must be plugin.toml, found {found:?}")]
    ManifestNotFirst { found: String },
    #[error("bundle is not signed")]
    Unsigned,
    #[error("bundle is signed by key {key_id}, which is not in the trust store")]
    UnknownKey { key_id: KeyId },
    #[error("bundle is signed by key {key_id}, which is revoked")]
    RevokedKey { key_id: KeyId },
    #[error("bad signature: the bundle was modified after key {key_id} signed it")]
    BadSignature { key_id: KeyId },
    #[error("plugin.toml in the bundle is invalid: {0}")]
    ManifestInvalid(#[source] ManifestError),
    #[error("the manifest lists {path:?} but the bundle has no such member")]
    MemberMissing { path: String },
    #[error("bundle member {path:?} is {reason}")]
    ExtraMember { path: String, reason: &'static str },
    #[error("member {path:?} is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("member {path:?} has sha-256 {actual}, the manifest says {expected}")]
    HashMismatch {
        path: String,
        expected: Sha256,
        actual: Sha256,
    },
    #[error("cannot read bundle {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a detached signature (see [`sign_detached`](crate::sign_detached)) was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("signed by key {key_id}, which is not in the trust store")]
    UnknownKey { key_id: KeyId },
    #[error("signed by key {key_id}, which is revoked")]
    RevokedKey { key_id: KeyId },
    #[error("bad signature: the bytes are not what key {key_id} signed")]
    BadSignature { key_id: KeyId },
}

/// Why a key file could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a PEM {expected} Ed25519 key")]
    BadFormat {
        path: String,
        expected: &'static str,
    },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: String },
    #[error(
        "key name {0:?} must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.'"
    )]
    BadName(String),
}

/// Why a trust store directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read trust store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("trust store key {path}: {source}")]
    BadKey {
        path: String,
        #[source]
        source: KeyError,
    },
    #[error("{path} line {line}: {text:?} is not a key id (32 hex digits)")]
    BadRevocation {
        path: String,
        line: usize,
        text: String,
    },
}

/// Why a plugin directory could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file (links and special files are not packed)")]
    NotAFile { path: String },
    #[error("{path} is {size} bytes, over the member limit of {limit} bytes")]
    MemberTooLarge { path: String, size: u64, limit: u64 },
    #[error("the bundle would be {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("the plugin has {count} files, over the limit of {limit} members")]
    TooManyMembers { count: u64, limit: u64 },
    #[error("plugin.toml already has a [members] table; pack writes it, remove it from the source")]
    MembersPresent,
    #[error("a source was given for {path:?}, which plugin.toml does not reference")]
    NotReferenced { path: String },
    #[error("the packed manifest does not parse back: {0}")]
    Reparse(#[source] ManifestError),
}

/// Why a plugin store operation was refused or failed. A refusal changes nothing on disk.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("bundle is plugin {found:?}, but it was installed as {expected:?}")]
    NameMismatch { expected: String, found: String },
    #[error(
        "{name} {version} is not newer than the active version {active}; roll back explicitly to go back"
    )]
    NotNewer {
        name: String,
        version: semver::Version,
        active: semver::Version,
    },
    #[error("plugin {0:?} is not installed")]
    NotInstalled(String),
    #[error("plugin {name:?} has no kept version older than the active {active}")]
    NoPreviousVersion {
        name: String,
        active: semver::Version,
    },
    #[error("plugin {name:?} has no kept version {version}")]
    VersionNotKept {
        name: String,
        version: semver::Version,
    },
    #[error(
        "{name} {version} is older than the active version {active}; pass AllowDowngrade::Yes to go back"
    )]
    DowngradeNotAllowed {
        name: String,
        version: semver::Version,
        active: semver::Version,
    },
    #[error("stored file {path} holds {found}, expected {expected}")]
    Mislabeled {
        path: String,
        expected: String,
        found: String,
    },
    #[error("{path} does not name a version: {text:?}")]
    BadActiveFile { path: String, text: String },
    #[error(
        "cache key {0:?} must be 1-128 characters of A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.'"
    )]
    BadCacheKey(String),
    #[error("store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An I/O error with the path it happened on; converts into every error type here.
#[derive(Debug)]
pub(crate) struct IoAt {
    path: String,
    source: std::io::Error,
}

/// `map_err(io_err(&path))`: attaches the path to an I/O error.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> IoAt {
    let path = path.display().to_string();
    move |source| IoAt { path, source }
}

macro_rules! from_io_at {
    ($($t:ident),*) => {$(
        impl From<IoAt> for $t {
            fn from(IoAt { path, source }: IoAt) -> Self {
                $t::Io { path, source }
            }
        }
    )*};
}

from_io_at!(StoreError, BundleError, KeyError, TrustError, PackError);

//! Verification, the only way to get a bundle's bytes: [`verify`] returns a
//! [`VerifiedBundle`], whose fields are private and which nothing else constructs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use crate::BundleLimits;
use crate::error::{BundleError, io_err};
use crate::format::{self, Container, Entry};
use crate::manifest::{MANIFEST_FILE, Manifest, MemberDigest, Sha256};
use crate::sign::KeyId;
use crate::trust::TrustStore;

/// A bundle whose signature, signer, members and manifest were all checked. The only
/// source of member bytes for the runtime and the only thing the store installs.
/// Cheap to clone (the file's bytes are shared).
#[derive(Clone)]
pub struct VerifiedBundle {
    manifest: Manifest,
    raw: Arc<Vec<u8>>,
    /// Every member but `plugin.toml`, as ranges of `raw`.
    members: BTreeMap<String, Range<usize>>,
    signer: KeyId,
    sha256: Sha256,
}

impl std::fmt::Debug for VerifiedBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedBundle")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version.to_string())
            .field("signer", &self.signer)
            .field("members", &self.members.keys().collect::<Vec<_>>())
            .field("size", &self.raw.len())
            .finish()
    }
}

impl VerifiedBundle {
    /// The manifest (with its `[members]` table).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn version(&self) -> &semver::Version {
        &self.manifest.version
    }

    /// A member's bytes by path (not `plugin.toml`: use [`VerifiedBundle::manifest`]).
    pub fn member(&self, path: &str) -> Option<&[u8]> {
        self.members.get(path).map(|range| &self.raw[range.clone()])
    }

    /// The component's bytes (present: verification checks every referenced file).
    pub fn component(&self) -> &[u8] {
        self.member(&self.manifest.component)
            .expect("verify checked that the component is a member")
    }

    /// Paths of the members, `plugin.toml` excluded, sorted.
    pub fn member_paths(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// Id of the trusted key that signed the bundle.
    pub fn signer(&self) -> KeyId {
        self.signer
    }

    /// sha-256 of the whole file.
    pub fn bundle_sha256(&self) -> Sha256 {
        self.sha256
    }

    /// Size of the whole file in bytes.
    pub fn size(&self) -> u64 {
        self.raw.len() as u64
    }

    /// The whole file, as verified (what the store writes).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The conventional file name, `<name>-<version>.epk`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.epk", self.manifest.name, self.manifest.version)
    }
}

/// Verifies a bundle, in this order: size and structure bounds (magic, format version,
/// member count, each path and size from its header, trailing bytes) → signature block
/// present → key not revoked → key trusted → Ed25519 signature over every byte but the
/// signature → manifest parse (strict) → member set equals the manifest's `[members]` and
/// referenced files → each member's size, then sha-256. Only then are bytes handed out.
pub fn verify(
    bytes: Vec<u8>,
    trust: &TrustStore,
    limits: &BundleLimits,
) -> Result<VerifiedBundle, BundleError> {
    let (manifest, members, signer) = {
        let container = format::parse(&bytes, limits)?;
        let block = container.signature.ok_or(BundleError::Unsigned)?;
        let key = trust.key_for(&block.key_id)?;
        if !key.verify(&bytes[..block.signed_len], &block.signature) {
            return Err(BundleError::BadSignature {
                key_id: block.key_id,
            });
        }
        let manifest = parse_manifest(&container)?;
        check_members(&manifest, &container.entries)?;
        let members = container.entries[1..]
            .iter()
            .map(|e| (e.path.to_string(), e.offset..e.offset + e.data.len()))
            .collect();
        (manifest, members, block.key_id)
    };
    let sha256 = Sha256::of(&bytes);
    Ok(VerifiedBundle {
        manifest,
        raw: Arc::new(bytes),
        members,
        signer,
        sha256,
    })
}

/// Reads a bundle file, refusing one over `max_bundle_bytes` before reading it.
pub fn read_bundle_file(path: &Path, limits: &BundleLimits) -> Result<Vec<u8>, BundleError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len > limits.max_bundle_bytes {
        return Err(BundleError::TooLarge {
            size: len,
            limit: limits.max_bundle_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // Bounded even if the file grows while being read.
    file.take(limits.max_bundle_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > limits.max_bundle_bytes {
        return Err(BundleError::TooLarge {
            size: bytes.len() as u64,
            limit: limits.max_bundle_bytes,
        });
    }
    Ok(bytes)
}

/// [`read_bundle_file`] then [`verify`].
pub fn verify_file(
    path: &Path,
    trust: &TrustStore,
    limits: &BundleLimits,
) -> Result<VerifiedBundle, BundleError> {
    verify(read_bundle_file(path, limits)?, trust, limits)
}

fn parse_manifest(container: &Container<'_>) -> Result<Manifest, BundleError> {
    let text = std::str::from_utf8(container.entries[0].data).map_err(|_| {
        BundleError::ManifestInvalid(crate::manifest::ManifestError::Io {
            path: MANIFEST_FILE.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
        })
    })?;
    Manifest::parse(text).map_err(BundleError::ManifestInvalid)
}

/// The bundle's members (after `plugin.toml`) must be exactly the manifest's `[members]`,
/// which must be exactly the files it references; then sizes and hashes must match.
fn check_members(manifest: &Manifest, entries: &[Entry<'_>]) -> Result<(), BundleError> {
    let referenced: BTreeSet<&str> = manifest.referenced_files().collect();
    let present: BTreeMap<&str, &Entry<'_>> = entries[1..].iter().map(|e| (e.path, e)).collect();
    for entry in &entries[1..] {
        if !manifest.members.contains_key(entry.path) {
            return Err(BundleError::ExtraMember {
                path: entry.path.to_string(),
                reason: "not listed in the manifest's [members] table",
            });
        }
        if !referenced.contains(entry.path) {
            return Err(BundleError::ExtraMember {
                path: entry.path.to_string(),
                reason: "not referenced by the manifest",
            });
        }
    }
    for path in manifest
        .members
        .keys()
        .map(String::as_str)
        .chain(referenced.iter().copied())
    {
        if !present.contains_key(path) {
            return Err(BundleError::MemberMissing {
                path: path.to_string(),
            });
        }
    }
    for entry in &entries[1..] {
        let MemberDigest { sha256, size } = &manifest.members[entry.path];
        if entry.data.len() as u64 != *size {
            return Err(BundleError::SizeMismatch {
                path: entry.path.to_string(),
                expected: *size,
                actual: entry.data.len() as u64,
            });
        }
        let actual = Sha256::of(entry.data);
        if actual != *sha256 {
            return Err(BundleError::HashMismatch {
                path: entry.path.to_string(),
                expected: *sha256,
                actual,
            });
        }
    }
    Ok(())
}

/// What `inspect` shows: read without a trust store, nothing verified.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub format_version: u32,
    pub size: u64,
    pub sha256: Sha256,
    /// Key id recorded in the signature block, if any. NOT verified.
    pub signer: Option<KeyId>,
    /// `plugin.toml` as text (lossy if not UTF-8).
    pub manifest_text: String,
    /// The parsed manifest, or why it does not parse.
    pub manifest: Result<Manifest, String>,
    /// Members after `plugin.toml`, in file order.
    pub members: Vec<InspectedMember>,
    /// The first member-table problem (missing, extra, size or hash), if any.
    pub problem: Option<String>,
}

/// One member as found in the file, next to what the manifest records for it.
#[derive(Debug, Clone)]
pub struct InspectedMember {
    pub path: String,
    pub size: u64,
    pub sha256: Sha256,
    pub listed: Option<MemberDigest>,
}

impl InspectedMember {
    /// Whether size and hash match the manifest's `[members]` entry.
    pub fn matches(&self) -> bool {
        self.listed
            .as_ref()
            .is_some_and(|d| d.size == self.size && d.sha256 == self.sha256)
    }
}

/// Reads structure, manifest and member digests without a trust store. Fails only on
/// structural errors; everything else is reported in the [`Inspection`].
pub fn inspect(bytes: &[u8], limits: &BundleLimits) -> Result<Inspection, BundleError> {
    let container = format::parse(bytes, limits)?;
    let manifest = parse_manifest(&container).map_err(|e| e.to_string());
    let members = container.entries[1..]
        .iter()
        .map(|e| InspectedMember {
            path: e.path.to_string(),
            size: e.data.len() as u64,
            sha256: Sha256::of(e.data),
            listed: manifest
                .as_ref()
                .ok()
                .and_then(|m| m.members.get(e.path).cloned()),
        })
        .collect();
    let problem = match &manifest {
        Ok(m) => check_members(m, &container.entries)
            .err()
            .map(|e| e.to_string()),
        Err(_) => None,
    };
    Ok(Inspection {
        format_version: format::FORMAT_VERSION,
        size: bytes.len() as u64,
        sha256: Sha256::of(bytes),
        signer: container.signature.map(|s| s.key_id),
        manifest_text: String::from_utf8_lossy(container.entries[0].data).into_owned(),
        manifest,
        members,
        problem,
    })
}

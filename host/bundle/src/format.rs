//! The `.epk` container: strict, length-prefixed, little-endian. See the module docs of
//! [`crate`] for the layout. This module only checks structure and bounds; it never
//! allocates more than the member table (bounded by `max_members`) and never hands out bytes
//! by itself: [`crate::verify`] decides what leaves.

use std::collections::BTreeSet;

use crate::BundleLimits;
use crate::error::BundleError;
use crate::manifest::{MANIFEST_FILE, check_member_path};
use crate::sign::{KEY_ID_LEN, KeyId, SIGNATURE_LEN, SecretKey};

/// First 8 bytes of every bundle (PNG-style: catches text-mode transfers and truncation).
pub const MAGIC: [u8; 8] = *b"\x89EPK\r\n\x1a\n";
/// The only format version this host reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Tag opening the signature block.
pub const SIG_TAG: [u8; 4] = *b"ESIG";
/// Signature block: tag, key id, Ed25519 signature.
pub const SIG_BLOCK_LEN: usize = SIG_TAG.len() + KEY_ID_LEN + SIGNATURE_LEN;
/// Largest accepted `plugin.toml`, whatever `max_member_bytes` says.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Longest member path (as [`check_member_path`] allows).
const MAX_PATH_LEN: usize = 255;

/// A structurally valid container; nothing in it is verified yet.
#[derive(Debug)]
pub(crate) struct Container<'a> {
    pub entries: Vec<Entry<'a>>,
    pub signature: Option<SignatureBlock>,
    /// Bytes before the signature block (the whole file when unsigned).
    pub unsigned_len: usize,
}

#[derive(Debug)]
pub(crate) struct Entry<'a> {
    pub path: &'a str,
    /// Offset of the member's bytes in the file.
    pub offset: usize,
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SignatureBlock {
    pub key_id: KeyId,
    pub signature: [u8; SIGNATURE_LEN],
    /// Bytes covered by the signature: everything before the 64 signature bytes.
    pub signed_len: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], BundleError> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining {
            return Err(BundleError::Truncated {
                what,
                offset: self.pos as u64,
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, BundleError> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, BundleError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, BundleError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }
}

/// Checks the structure and every bound, in file order, before touching member bytes.
pub(crate) fn parse<'a>(
    bytes: &'a [u8],
    limits: &BundleLimits,
) -> Result<Container<'a>, BundleError> {
    if bytes.len() as u64 > limits.max_bundle_bytes {
        return Err(BundleError::TooLarge {
            size: bytes.len() as u64,
            limit: limits.max_bundle_bytes,
        });
    }
    let prefix = &bytes[..bytes.len().min(MAGIC.len())];
    if prefix != &MAGIC[..prefix.len()] {
        return Err(BundleError::BadMagic);
    }
    let mut r = Reader { bytes, pos: 0 };
    r.take(MAGIC.len() as u64, "magic")?;
    let version = r.u32("format version")?;
    if version != FORMAT_VERSION {
        return Err(BundleError::UnsupportedFormat { version });
    }
    let count = r.u32("member count")?;
    if u64::from(count) > limits.max_members {
        return Err(BundleError::TooManyMembers {
            count: count.into(),
            limit: limits.max_members,
        });
    }
    if count == 0 {
        return Err(BundleError::MemberMissing {
            path: MANIFEST_FILE.to_string(),
        });
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut seen = BTreeSet::new();
    for index in 0..count {
        let path_len = r.u16("member path length")?;
        let raw_path = r.take(path_len.into(), "member path")?;
        let path = match std::str::from_utf8(raw_path) {
            Ok(p) if raw_path.len() <= MAX_PATH_LEN && check_member_path(p).is_ok() => p,
            _ => {
                return Err(BundleError::BadPath {
                    path: String::from_utf8_lossy(raw_path).into_owned(),
                });
            }
        };
        if index == 0 && path != MANIFEST_FILE {
            return Err(BundleError::ManifestNotFirst {
                found: path.to_string(),
            });
        }
        if !seen.insert(path) {
            return Err(BundleError::DuplicateMember {
                path: path.to_string(),
            });
        }
        let size = r.u64("member size")?;
        let limit = if index == 0 {
            limits.max_member_bytes.min(MAX_MANIFEST_BYTES)
        } else {
            limits.max_member_bytes
        };
        if size > limit {
            return Err(BundleError::MemberTooLarge {
                path: path.to_string(),
                size,
                limit,
            });
        }
        let offset = r.pos;
        let data = r.take(size, "member data")?;
        entries.push(Entry { path, offset, data });
    }
    let unsigned_len = r.pos;
    let rest = r.rest();
    let signature = if rest.is_empty() {
        None
    } else {
        let tag_len = rest.len().min(SIG_TAG.len());
        if rest[..tag_len] != SIG_TAG[..tag_len] {
            return Err(BundleError::TrailingBytes {
                count: rest.len() as u64,
            });
        }
        if rest.len() < SIG_BLOCK_LEN {
            return Err(BundleError::Truncated {
                what: "signature block",
                offset: unsigned_len as u64,
            });
        }
        if rest.len() > SIG_BLOCK_LEN {
            return Err(BundleError::TrailingBytes {
                count: (rest.len() - SIG_BLOCK_LEN) as u64,
            });
        }
        let key_id: [u8; KEY_ID_LEN] = rest[SIG_TAG.len()..SIG_TAG.len() + KEY_ID_LEN]
            .try_into()
            .unwrap();
        let signature: [u8; SIGNATURE_LEN] =
            rest[SIG_BLOCK_LEN - SIGNATURE_LEN..].try_into().unwrap();
        Some(SignatureBlock {
            key_id: KeyId(key_id),
            signature,
            signed_len: bytes.len() - SIGNATURE_LEN,
        })
    };
    Ok(Container {
        entries,
        signature,
        unsigned_len,
    })
}

/// Encodes members, in the given order, as an unsigned container. Does not validate:
/// [`crate::pack_dir`] does, and tests use this to build hostile bundles.
pub(crate) fn encode_unsigned(members: &[(&str, &[u8])]) -> Vec<u8> {
    let total: usize = members.iter().map(|(p, d)| 2 + p.len() + 8 + d.len()).sum();
    let mut out = Vec::with_capacity(16 + total + SIG_BLOCK_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(members.len() as u32).to_le_bytes());
    for (path, data) in members {
        out.extend_from_slice(&(path.len() as u16).to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// Appends a signature block to the unsigned prefix of `bytes`: the signature covers every
/// byte of the result except the signature itself (header, members, tag and key id).
pub(crate) fn sign_unsigned_prefix(unsigned: &[u8], key: &SecretKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(unsigned.len() + SIG_BLOCK_LEN);
    out.extend_from_slice(unsigned);
    out.extend_from_slice(&SIG_TAG);
    out.extend_from_slice(key.key_id().as_bytes());
    let signature = key.sign(&out);
    out.extend_from_slice(&signature);
    out
}

/// Signs a bundle (replacing any signature it already has). The structure is checked first,
/// so garbage is never signed.
pub fn sign_bundle(
    bytes: &[u8],
    key: &SecretKey,
    limits: &BundleLimits,
) -> Result<Vec<u8>, BundleError> {
    let container = parse(bytes, limits)?;
    Ok(sign_unsigned_prefix(&bytes[..container.unsigned_len], key))
}

/// The key id of a signature block, given the last [`SIG_BLOCK_LEN`] bytes of a file.
/// Not verified: for listings only.
pub(crate) fn signer_from_tail(tail: &[u8; SIG_BLOCK_LEN]) -> Option<KeyId> {
    if tail[..SIG_TAG.len()] != SIG_TAG {
        return None;
    }
    Some(KeyId(
        tail[SIG_TAG.len()..SIG_TAG.len() + KEY_ID_LEN]
            .try_into()
            .unwrap(),
    ))
}

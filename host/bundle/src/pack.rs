//! Packing a plugin directory into an (unsigned) bundle.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::BundleLimits;
use crate::error::{PackError, io_err};
use crate::format::{self, MAX_MANIFEST_BYTES};
use crate::manifest::{MANIFEST_FILE, Manifest, MemberDigest, Sha256};

/// An unsigned bundle and the manifest it carries.
#[derive(Debug, Clone)]
pub struct Packed {
    pub bytes: Vec<u8>,
    pub manifest: Manifest,
}

/// Reads `DIR/plugin.toml` and every file it references (regular files only: no links, at
/// any depth), appends a `[members."path"]` table with each file's sha-256 and size to the
/// manifest text (the author's text and comments are kept as they are), and encodes the
/// bundle: `plugin.toml` first, then the members sorted by path. Unsigned; see
/// [`sign_bundle`](crate::sign_bundle).
pub fn pack_dir(dir: &Path, limits: &BundleLimits) -> Result<Packed, PackError> {
    pack_dir_with(dir, &BTreeMap::new(), limits)
}

/// [`pack_dir`], taking some members from elsewhere: `sources` maps a path the manifest
/// references (e.g. `plugin.wasm`) to the file to read it from (e.g. the build output).
/// Such a file may be reached through links (the operator named it) but must be a regular
/// file; a source for a path the manifest does not reference is an error.
pub fn pack_dir_with(
    dir: &Path,
    sources: &BTreeMap<String, PathBuf>,
    limits: &BundleLimits,
) -> Result<Packed, PackError> {
    let manifest_bytes = read_plain(
        dir,
        MANIFEST_FILE,
        MAX_MANIFEST_BYTES.min(limits.max_member_bytes),
    )?;
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = String::from_utf8(manifest_bytes).map_err(|_| PackError::Io {
        path: manifest_path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
    })?;
    let source = Manifest::parse(&text)?;
    if !source.members.is_empty() {
        return Err(PackError::MembersPresent);
    }
    let paths: BTreeSet<&str> = source.referenced_files().collect();
    if paths.len() as u64 + 1 > limits.max_members {
        return Err(PackError::TooManyMembers {
            count: paths.len() as u64 + 1,
            limit: limits.max_members,
        });
    }
    if let Some(unknown) = sources.keys().find(|p| !paths.contains(p.as_str())) {
        return Err(PackError::NotReferenced {
            path: unknown.clone(),
        });
    }
    let mut files = Vec::with_capacity(paths.len());
    for path in &paths {
        let data = match sources.get(*path) {
            Some(source) => read_source(source, limits.max_member_bytes)?,
            None => read_plain(dir, path, limits.max_member_bytes)?,
        };
        files.push((*path, data));
    }

    let mut packed_text = text;
    if !packed_text.ends_with('\n') {
        packed_text.push('\n');
    }
    packed_text.push_str("\n# Written by `edgeplug pack`: sha-256 and size of every member.\n");
    for (path, data) in &files {
        // Paths passed check_member_path: no quotes or backslashes to escape.
        let _ = write!(
            packed_text,
            "[members.\"{path}\"]\nsha256 = \"{}\"\nsize = {}\n",
            Sha256::of(data),
            data.len()
        );
    }
    let manifest = Manifest::parse(&packed_text).map_err(PackError::Reparse)?;
    debug_assert!(files.iter().all(|(p, d)| manifest.members.get(*p)
        == Some(&MemberDigest {
            sha256: Sha256::of(d),
            size: d.len() as u64
        })));
    if packed_text.len() as u64 > MAX_MANIFEST_BYTES.min(limits.max_member_bytes) {
        return Err(PackError::MemberTooLarge {
            path: manifest_path.display().to_string(),
            size: packed_text.len() as u64,
            limit: MAX_MANIFEST_BYTES.min(limits.max_member_bytes),
        });
    }

    let mut members: Vec<(&str, &[u8])> = vec![(MANIFEST_FILE, packed_text.as_bytes())];
    members.extend(files.iter().map(|(p, d)| (*p, d.as_slice())));
    let bytes = format::encode_unsigned(&members);
    let signed_size = (bytes.len() + format::SIG_BLOCK_LEN) as u64;
    if signed_size > limits.max_bundle_bytes {
        return Err(PackError::TooLarge {
            size: signed_size,
            limit: limits.max_bundle_bytes,
        });
    }
    Ok(Packed { bytes, manifest })
}

/// Reads `dir/rel` refusing links at every level and files over `limit` (checked first).
fn read_plain(dir: &Path, rel: &str, limit: u64) -> Result<Vec<u8>, PackError> {
    let mut path = dir.to_path_buf();
    let segments: Vec<&str> = rel.split('/').collect();
    for (index, segment) in segments.iter().enumerate() {
        path.push(segment);
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let last = index + 1 == segments.len();
        let ok = if last { meta.is_file() } else { meta.is_dir() };
        if !ok {
            return Err(PackError::NotAFile {
                path: path.display().to_string(),
            });
        }
        if last && meta.len() > limit {
            return Err(PackError::MemberTooLarge {
                path: path.display().to_string(),
                size: meta.len(),
                limit,
            });
        }
    }
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    if bytes.len() as u64 > limit {
        return Err(PackError::MemberTooLarge {
            path: path.display().to_string(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Reads an explicitly named source file: regular (links followed), at most `limit` bytes.
fn read_source(path: &Path, limit: u64) -> Result<Vec<u8>, PackError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(PackError::NotAFile {
            path: path.display().to_string(),
        });
    }
    if meta.len() > limit {
        return Err(PackError::MemberTooLarge {
            path: path.display().to_string(),
            size: meta.len(),
            limit,
        });
    }
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    if bytes.len() as u64 > limit {
        return Err(PackError::MemberTooLarge {
            path: path.display().to_string(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

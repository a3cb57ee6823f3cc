//! The content type a file is sent with, from its extension: shared by `edgeplug run`, the
//! self-tests and the conformance kit, so a vector runs the way a user's file would.

use std::path::Path;

/// The content type for a file: `.png`, `.jpg`/`.jpeg`, `.json`, `.npy`, `.csv`, else
/// `application/octet-stream`.
pub fn content_type_for(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("json") => "application/json",
        Some("npy") => "application/x-npy",
        Some("csv") => "text/csv",
        _ => "application/octet-stream",
    }
}

//! The inputs the robustness check sends: malformed, truncated, mislabelled and oversized
//! bodies, plus, for a plugin that takes images, the adversarial image corpus of
//! `tests/fixtures/images/adversarial/` (compiled in, so the kit needs no files at run time;
//! its README says what each image is).

use std::path::Path;

use crate::InferRequest;

/// One robustness input.
#[derive(Debug, Clone)]
pub struct Case {
    /// Names the input in reports, e.g. `empty body` or `image bomb-30000x30000.png`.
    pub name: String,
    pub request: InferRequest,
}

/// The adversarial images, by file name.
pub const IMAGES: &[(&str, &[u8])] = &[
    (
        "bomb-30000x30000.png",
        include_bytes!("../../../../tests/fixtures/images/adversarial/bomb-30000x30000.png"),
    ),
    (
        "coffee-cmyk.jpg",
        include_bytes!("../../../../tests/fixtures/images/adversarial/coffee-cmyk.jpg"),
    ),
    (
        "coffee-exif-rotated.jpg",
        include_bytes!("../../../../tests/fixtures/images/adversarial/coffee-exif-rotated.jpg"),
    ),
    (
        "coffee-progressive.jpg",
        include_bytes!("../../../../tests/fixtures/images/adversarial/coffee-progressive.jpg"),
    ),
    (
        "coffee-rgba.png",
        include_bytes!("../../../../tests/fixtures/images/adversarial/coffee-rgba.png"),
    ),
    (
        "coffee.bmp",
        include_bytes!("../../../../tests/fixtures/images/adversarial/coffee.bmp"),
    ),
    (
        "coffee.gif",
        include_bytes!("../../../../tests/fixtures/images/adversarial/coffee.gif"),
    ),
    (
        "digit1-gray-alpha.png",
        include_bytes!("../../../../tests/fixtures/images/adversarial/digit1-gray-alpha.png"),
    ),
    (
        "digit1-gray16.png",
        include_bytes!("../../../../tests/fixtures/images/adversarial/digit1-gray16.png"),
    ),
    (
        "digit1-gray8.png",
        include_bytes!("../../../../tests/fixtures/images/adversarial/digit1-gray8.png"),
    ),
    (
        "digit1-palette.png",
        include_bytes!("../../../../tests/fixtures/images/adversarial/digit1-palette.png"),
    ),
    (
        "empty.png",
        include_bytes!("../../../../tests/fixtures/images/adversarial/empty.png"),
    ),
    (
        "header-only-65535.png",
        include_bytes!("../../../../tests/fixtures/images/adversarial/header-only-65535.png"),
    ),
    (
        "not-an-image.png",
        include_bytes!("../../../../tests/fixtures/images/adversarial/not-an-image.png"),
    ),
    (
        "tiny-1x1.png",
        include_bytes!("../../../../tests/fixtures/images/adversarial/tiny-1x1.png"),
    ),
    (
        "truncated.jpg",
        include_bytes!("../../../../tests/fixtures/images/adversarial/truncated.jpg"),
    ),
    (
        "truncated.png",
        include_bytes!("../../../../tests/fixtures/images/adversarial/truncated.png"),
    ),
    (
        "wide-4000x1.png",
        include_bytes!("../../../../tests/fixtures/images/adversarial/wide-4000x1.png"),
    ),
];

/// The cases for a plugin whose self-tests send `primary_content_type` (an `image/*` type
/// adds the image corpus), whose request limit is `request_limit` bytes, and whose self-test
/// inputs are `self_tests`.
pub fn cases(
    primary_content_type: Option<String>,
    request_limit: usize,
    self_tests: &[(String, InferRequest)],
) -> Vec<Case> {
    let content_type = primary_content_type.unwrap_or_else(|| "application/octet-stream".into());
    let request = |content_type: &str, body: Vec<u8>| InferRequest {
        content_type: content_type.to_string(),
        body,
        tensors: Vec::new(),
    };
    let mut cases = vec![
        Case {
            name: "empty body".into(),
            request: request(&content_type, Vec::new()),
        },
        Case {
            name: "random bytes".into(),
            request: request(&content_type, noise(4096, 1)),
        },
    ];
    if content_type.contains("json") {
        cases.push(Case {
            name: "malformed JSON".into(),
            request: request(&content_type, br#"{"values": [1, 2, "#.to_vec()),
        });
        cases.push(Case {
            name: "JSON of another shape".into(),
            request: request(
                &content_type,
                br#"{"unexpected": {"nested": [null, true, -1e308]}}"#.to_vec(),
            ),
        });
    }
    for (name, input) in self_tests {
        if input.body.len() >= 2 {
            cases.push(Case {
                name: format!("truncated {name}"),
                request: request(
                    &input.content_type,
                    input.body[..input.body.len() / 2].to_vec(),
                ),
            });
        }
    }
    if let Some((name, input)) = self_tests.first() {
        cases.push(Case {
            name: format!("wrong content type ({name} as application/x-unknown)"),
            request: request("application/x-unknown", input.body.clone()),
        });
        cases.push(Case {
            name: format!("no content type ({name})"),
            request: request("", input.body.clone()),
        });
    }
    cases.push(Case {
        name: format!(
            "oversized input ({} MiB, the request limit)",
            request_limit >> 20
        ),
        request: request(&content_type, noise(request_limit, 2)),
    });
    cases.push(Case {
        name: "over the request limit".into(),
        request: request(&content_type, vec![0; request_limit + 1]),
    });
    if content_type.starts_with("image/") {
        for (file, bytes) in IMAGES {
            cases.push(Case {
                name: format!("image {file}"),
                request: request(image_content_type(file), bytes.to_vec()),
            });
        }
    }
    cases
}

fn image_content_type(file: &str) -> &'static str {
    match Path::new(file).extension().and_then(|e| e.to_str()) {
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        _ => crate::content_type::content_type_for(Path::new(file)),
    }
}

/// Deterministic pseudo-random bytes (xorshift64*): the same corpus on every run.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_not_constant() {
        assert_eq!(noise(100, 1), noise(100, 1));
        assert_ne!(noise(100, 1), noise(100, 2));
        assert!(
            noise(4096, 1)
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 200
        );
    }
}

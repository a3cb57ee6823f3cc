//! The host ops WIT 0.1.3 added (issue 19): the `edges` test plugin computes a Sobel edge
//! magnitude on them and must agree with a plain Rust computation of the same thing; and a
//! component built against 0.1.2, whose `ops` had fewer functions, still links and calls it.

use std::io::Cursor;

use edgeplug_runtime::{InferRequest, InvokeError, PluginFiles};
use edgeplug_sdk::preprocess::{DecodeLimits, decode, to_gray8};
use edgeplug_tests::{fixture, load_test_plugin, repo, runtime, test_plugin_files};
use serde_json::Value;

/// The plugin works in f32 (nine-tap sums, a square, a square root, a division) and the
/// reference in f64: on values normalized to [0, 1], they agree well within this.
const TOLERANCE: f32 = 1e-5;

fn png(image: image::RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// A 29x19 picture with something to find: a bright disc, a horizontal ramp, a dark bar and
/// some deterministic noise.
fn picture() -> image::RgbImage {
    let mut state = 7u32;
    image::RgbImage::from_fn(29, 19, |x, y| {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let noise = (state >> 16) % 9;
        let (dx, dy) = (x as i32 - 18, y as i32 - 9);
        let base = if dx * dx + dy * dy < 25 {
            230
        } else if (3..6).contains(&x) {
            10
        } else {
            40 + 5 * x
        };
        let v = (base + noise).min(255) as u8;
        image::Rgb([v, v.saturating_sub(30), v / 2])
    })
}

/// Sobel magnitude of the image's grayscale (the SDK's own conversion, so that only the host
/// arithmetic is compared) in f64 with zero padding, normalized by its maximum; and that
/// maximum.
fn sobel_reference(png: &[u8]) -> (Vec<f32>, f64) {
    let gray = to_gray8(&decode(png, &DecodeLimits::default()).unwrap());
    let (w, h) = (gray.width() as i64, gray.height() as i64);
    let at = |x: i64, y: i64| {
        if x < 0 || y < 0 || x >= w || y >= h {
            0.0
        } else {
            f64::from(gray.get_pixel(x as u32, y as u32)[0]) / 255.0
        }
    };
    let mut magnitude = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let gx = (at(x + 1, y - 1) + 2.0 * at(x + 1, y) + at(x + 1, y + 1))
                - (at(x - 1, y - 1) + 2.0 * at(x - 1, y) + at(x - 1, y + 1));
            let gy = (at(x - 1, y + 1) + 2.0 * at(x, y + 1) + at(x + 1, y + 1))
                - (at(x - 1, y - 1) + 2.0 * at(x, y - 1) + at(x + 1, y - 1));
            magnitude.push((gx * gx + gy * gy).sqrt());
        }
    }
    let max = magnitude.iter().copied().fold(0.0, f64::max);
    let normalized = magnitude
        .iter()
        .map(|m| (m / max.max(1e-6)) as f32)
        .collect();
    (normalized, max)
}

fn edges(body: Vec<u8>) -> (Value, Vec<usize>, Vec<f32>) {
    let plugin = load_test_plugin(&runtime(), "edges").unwrap();
    let answer = plugin
        .infer(InferRequest {
            content_type: "image/png".into(),
            body,
            tensors: Vec::new(),
        })
        .unwrap();
    let json: Value = serde_json::from_slice(&answer.body).unwrap();
    let [(name, map)] = &answer.tensors[..] else {
        panic!("one output tensor expected, got {}", answer.tensors.len());
    };
    assert_eq!(name, "edges");
    (json, map.shape().to_vec(), map.as_f32().unwrap().to_vec())
}

#[test]
fn the_edges_plugin_matches_a_plain_sobel_magnitude() {
    let body = png(picture());
    let (want, want_max) = sobel_reference(&body);
    assert!(want_max > 1.0, "the picture has edges to find ({want_max})");
    let (json, shape, got) = edges(body);
    assert_eq!(shape, [1, 1, 19, 29]);
    assert_eq!(
        (json["width"].as_u64(), json["height"].as_u64()),
        (Some(29), Some(19))
    );
    let max = json["max_magnitude"].as_f64().unwrap();
    assert!(
        (max - want_max).abs() <= 1e-5 * want_max,
        "{max} vs {want_max}"
    );
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let diff = (g - w).abs();
        assert!(diff <= TOLERANCE, "pixel {i}: {g} vs {w}");
        worst = worst.max(diff);
    }
    // The map is normalized: its largest value is 1, and most of it is not an edge.
    assert!(got.iter().any(|&v| (v - 1.0).abs() <= TOLERANCE));
    assert!(got.iter().filter(|&&v| v < 0.5).count() > got.len() / 2);
    eprintln!(
        "edges: worst difference {worst:e} over {} pixels",
        got.len()
    );
}

#[test]
fn a_black_image_has_no_edges_and_no_nan() {
    // Its largest magnitude is 0: the plugin divides by a floor (`maximum`), not by 0.
    let (json, _, got) = edges(png(image::RgbImage::new(6, 5)));
    assert_eq!(json["max_magnitude"].as_f64(), Some(0.0));
    assert!(got.iter().all(|&v| v == 0.0), "{got:?}");
}

#[test]
fn the_edges_plugin_passes_its_self_test() {
    let files = test_plugin_files("edges");
    let plugin = runtime().load(&files).unwrap();
    assert_eq!(edgeplug_runtime::selftest::run(&plugin, &files).unwrap(), 1);
}

#[test]
fn a_component_built_against_wit_0_1_2_calls_the_grown_ops() {
    // tensor-hog as built against 0.1.2 imports `ops@0.1.2` (for `concat`), which 0.1.3 grew
    // by thirteen functions: it links, answers its self-test input, and its `concat` calls
    // run until the tensor budget ends the request.
    let files = PluginFiles::from_dir(
        &repo().join("tests/plugins/tensor-hog"),
        Some(&fixture("components/tensor-hog-wit-0.1.2.wasm")),
    )
    .unwrap();
    let plugin = runtime().load(&files).unwrap();
    assert_eq!(edgeplug_runtime::selftest::run(&plugin, &files).unwrap(), 1);
    let outcome = plugin.infer(InferRequest {
        content_type: "application/json".into(),
        body: b"[1]".to_vec(),
        tensors: Vec::new(),
    });
    assert!(
        matches!(outcome, Err(InvokeError::TensorMemoryExhausted { .. })),
        "{:?}",
        outcome.err()
    );
}

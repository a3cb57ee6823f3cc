//! A guest written against the WASI-NN proposal and no edgeplug interface: bindings from the
//! proposal's WIT (`wit/deps/wasi-nn`), a WASI command that reads a PNG or JPEG on stdin,
//! preprocesses it for MobileNetV2 (short side to 256, centre crop 224, ImageNet
//! normalization, NCHW float32; with `edgeplug-preprocess`, a plain Rust library that is
//! bit-exact with Pillow, so the classes are onnxruntime's), runs the graph it loads by name
//! and prints the top 5 as JSON. A body of content type `application/octet-stream` is taken as
//! the already preprocessed tensor instead (602,112 bytes: little-endian float32 [1, 3, 224,
//! 224]), for measuring the graph without the preprocessing. A bad photo is answered with a CGI `Status: 400` header and
//! the reason (WAGI's convention; WASI 0.2's exit carries no status code). Any other failure
//! exits with an error and the reason on stderr.
//!
//! It would run the same way under any wasi:nn host that names the graph `mobilenetv2`.

use std::io::{Read, Write};

use edgeplug_preprocess as preprocess;

wit_bindgen::generate!({
    path: "../../../wit/deps/wasi-nn",
    world: "wasi:nn/ml",
    generate_all,
});

use wasi::nn::graph;
use wasi::nn::tensor::{Tensor, TensorType};

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("{message}");
    std::process::exit(1)
}

/// The client's photo is the problem: a 400 answer, not a failure.
fn refuse(message: impl std::fmt::Display) -> ! {
    print!("Status: 400 Bad Request\nContent-Type: text/plain\n\n{message}\n");
    std::process::exit(0)
}

/// The photo as a [1, 3, 224, 224] float32 tensor's values.
fn preprocess(bytes: &[u8]) -> Result<Vec<f32>, preprocess::PreprocessError> {
    let image = preprocess::decode(bytes, &preprocess::DecodeLimits::default())?;
    let crop = preprocess::resize_center_crop(&preprocess::to_rgb8(&image), 256, 224)?;
    Ok(preprocess::to_chw_f32(
        &crop,
        preprocess::IMAGENET_MEAN,
        preprocess::IMAGENET_STD,
        1.0 / 255.0,
    ))
}

fn main() {
    let mut photo = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut photo) {
        fail(format!("cannot read stdin: {e}"));
    }
    const TENSOR_BYTES: usize = 3 * 224 * 224 * 4;
    let data: Vec<u8> =
        if std::env::var("CONTENT_TYPE").is_ok_and(|c| c == "application/octet-stream") {
            if photo.len() != TENSOR_BYTES {
                refuse(format!(
                    "a raw tensor is {TENSOR_BYTES} bytes (float32 [1, 3, 224, 224]), got {}",
                    photo.len()
                ));
            }
            photo
        } else {
            let input = preprocess(&photo).unwrap_or_else(|e| refuse(format!("not a photo: {e}")));
            input.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
    let tensor = Tensor::new(&[1, 3, 224, 224], TensorType::Fp32, &data);
    let graph = graph::load_by_name("mobilenetv2")
        .unwrap_or_else(|e| fail(format!("load-by-name: {:?}: {}", e.code(), e.data())));
    let context = graph
        .init_execution_context()
        .unwrap_or_else(|e| fail(format!("init-execution-context: {}", e.data())));
    let outputs = context
        .compute(vec![("input".to_string(), tensor)])
        .unwrap_or_else(|e| fail(format!("compute: {:?}: {}", e.code(), e.data())));
    let Some((_, logits)) = outputs.into_iter().next() else {
        fail("the graph gave no output")
    };
    let logits: Vec<f32> = logits
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top: Vec<serde_json::Value> = order[..5]
        .iter()
        .map(|&i| serde_json::json!({"class": i, "probability": exp[i] / sum}))
        .collect();
    let answer = serde_json::json!({"top5": top});
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "{answer}").is_err() {
        fail("cannot write the answer");
    }
}

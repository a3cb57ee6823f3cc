//! The image classifier on the four photos and the reference model inputs, for each of the four
//! models it can be configured with, plus its crops, odd images and errors.

use std::time::Instant;

use edgeplug_kernels::Tensor;
use edgeplug_runtime::{InferRequest, InferResponse, PluginErrorCode};
use edgeplug_sdk::npy::NpyData;
use edgeplug_tests::{IMAGE_CLASSIFIER_WASM, error_of, fixture, load_example, npy, runtime};
use serde_json::Value;

use crate::models::load_with_grants;

/// The photos, in the row order of the reference arrays.
pub const PHOTOS: [&str; 4] = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"];

/// One model the classifier can run.
#[derive(Debug, Clone, Copy)]
pub struct ModelCase {
    /// Name in `[grants.models]`.
    pub grant: &'static str,
    /// File in `plugins/image-classifier/`.
    pub file: &'static str,
    /// The preprocessed photos for this model (float32 (4, 3, 224, 224)).
    pub input: &'static str,
    /// onnxruntime's logits on `input` (float32 (4, 1000)).
    pub reference: &'static str,
    /// Top-1 class of each photo, from the models README (onnxruntime).
    pub top1: [usize; 4],
    /// Float model, or int8 (whose self-test expectations are recorded from this runtime,
    /// see `models::record_int8_self_test_expectations`). Both are compared with
    /// onnxruntime's logits at 1e-3: the native backend's int8 arithmetic is onnxruntime's.
    pub float: bool,
}

pub const MODELS: [ModelCase; 4] = [
    ModelCase {
        grant: "mobilenetv2",
        file: "mobilenetv2.onnx",
        input: "imagenet/mobilenetv2_input.npy",
        reference: "imagenet/mobilenetv2_ref_out.npy",
        top1: [285, 967, 540, 450],
        float: true,
    },
    ModelCase {
        grant: "efficientnet-lite0",
        file: "efficientnet_lite0.onnx",
        input: "imagenet/efficientnet_lite0_input.npy",
        reference: "imagenet/efficientnet_lite0_ref_out.npy",
        top1: [282, 967, 657, 450],
        float: true,
    },
    ModelCase {
        grant: "mobilenetv2-int8",
        file: "mobilenetv2_int8_qdq.onnx",
        input: "imagenet/mobilenetv2_input.npy",
        reference: "imagenet/mobilenetv2_int8_qdq_ref_out.npy",
        top1: [285, 967, 657, 450],
        float: false,
    },
    ModelCase {
        grant: "efficientnet-lite0-int8",
        file: "efficientnet_lite0_int8_qdq.onnx",
        input: "imagenet/efficientnet_lite0_input.npy",
        reference: "imagenet/efficientnet_lite0_int8_qdq_ref_out.npy",
        top1: [282, 967, 657, 560],
        float: false,
    },
];

const N: usize = 3 * 224 * 224;

fn f32s(path: &str) -> Vec<f32> {
    match npy(path).data {
        NpyData::F32(v) => v,
        other => panic!("{path} is {}, expected float32", other.dtype()),
    }
}

fn photo(name: &str) -> InferRequest {
    let content_type = if name.ends_with(".jpg") {
        "image/jpeg"
    } else {
        "image/png"
    };
    InferRequest {
        content_type: content_type.into(),
        body: std::fs::read(fixture(&format!("images/{name}"))).unwrap(),
        tensors: Vec::new(),
    }
}

fn tensor_request(input: &[f32]) -> InferRequest {
    InferRequest {
        content_type: String::new(),
        body: Vec::new(),
        tensors: vec![(
            "input".into(),
            Tensor::from_f32(vec![1, 3, 224, 224], input.to_vec()).unwrap(),
        )],
    }
}

/// Indices of the `k` largest values, largest first.
fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Checks the response's shape (top-5 JSON consistent with its `logits` tensor) and returns
/// the logits.
fn logits_of(response: &InferResponse) -> Vec<f32> {
    assert_eq!(response.content_type, "application/json");
    let (name, logits) = &response.tensors[0];
    assert_eq!(name, "logits");
    assert_eq!(logits.shape(), &[1, 1000]);
    let logits = logits.as_f32().unwrap().to_vec();
    let json: Value = serde_json::from_slice(&response.body).expect("JSON body");
    let top = json.as_array().expect("a JSON array");
    assert_eq!(top.len(), 5);
    let labels: Vec<&str> = include_str!("../../../plugins/image-classifier/imagenet_labels.txt")
        .lines()
        .collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let mut previous = f64::INFINITY;
    for (entry, want_index) in top.iter().zip(top_indices(&logits, 5)) {
        let index = entry["index"].as_u64().expect("index") as usize;
        assert_eq!(index, want_index, "top-5 order");
        assert_eq!(entry["label"], labels[index]);
        let p = entry["probability"].as_f64().expect("probability");
        let softmax = f64::from(logits[index] - max).exp() / sum;
        assert!(
            (p - softmax).abs() < 1e-6,
            "probability {p} is not softmax {softmax}"
        );
        assert!(p <= previous);
        previous = p;
    }
    logits
}

fn check_model(case: &ModelCase) {
    let runtime = runtime();
    let plugin = load_with_grants(
        &runtime,
        "image-classifier",
        IMAGE_CLASSIFIER_WASM,
        &[(case.grant, case.file)],
    );
    let inputs = f32s(case.input);
    let reference = f32s(case.reference);
    assert_eq!((inputs.len(), reference.len()), (4 * N, 4000));

    for (i, name) in PHOTOS.iter().enumerate() {
        let want = &reference[i * 1000..(i + 1) * 1000];
        let want_top5 = top_indices(want, 5);

        // The model's numerics: the reference input, sent as a request tensor.
        let logits = logits_of(
            &plugin
                .infer(tensor_request(&inputs[i * N..(i + 1) * N]))
                .expect("tensor input"),
        );
        let diff = max_abs_diff(&logits, want);
        let top5 = top_indices(&logits, 5);
        let overlap = top5.iter().filter(|c| want_top5.contains(c)).count();
        eprintln!(
            "{} {name} reference input: top-5 {top5:?} (onnxruntime {want_top5:?}), max |dlogit| {diff:.2e}",
            case.grant
        );
        assert_eq!(
            top5[0], case.top1[i],
            "{} {name}: top-1 on the reference input",
            case.grant
        );
        assert!(
            diff <= 1e-3,
            "{} {name}: max |logit - logit_ort| = {diff:e} > 1e-3 (top-5 overlap {overlap})",
            case.grant
        );
        assert_eq!(top5, want_top5, "{} {name}: top-5", case.grant);

        // The whole plugin: the photo, preprocessed in the sandbox.
        let response = plugin.infer(photo(name)).expect("photo classified");
        let logits = logits_of(&response);
        let top5 = top_indices(&logits, 5);
        let diff = max_abs_diff(&logits, want);
        let json: Value = serde_json::from_slice(&response.body).unwrap();
        eprintln!(
            "{} {name} photo: {} {} {:.3}, top-5 {top5:?}, max |dlogit| vs onnxruntime {diff:.2e}",
            case.grant, json[0]["index"], json[0]["label"], json[0]["probability"]
        );
        assert_eq!(
            top5[0], case.top1[i],
            "{} {name}: top-1 of the photo",
            case.grant
        );
        if name.ends_with(".png") {
            // The PNG crops are bit-exact, so the model sees the reference input.
            assert!(
                diff <= 1e-3,
                "{} {name}: max |logit - logit_ort| = {diff:e}",
                case.grant
            );
            assert_eq!(top5, want_top5);
        } else {
            // rocket.jpg: the JPEG decoders differ by up to 2 LSB.
            let overlap = top5.iter().filter(|c| want_top5.contains(c)).count();
            assert!(
                overlap >= 4,
                "{} {name}: top-5 {top5:?} vs onnxruntime {want_top5:?}",
                case.grant
            );
        }
    }
}

#[test]
fn mobilenetv2_gives_the_reference_answers() {
    check_model(&MODELS[0]);
}

#[test]
fn efficientnet_lite0_gives_the_reference_answers() {
    check_model(&MODELS[1]);
}

#[test]
fn mobilenetv2_int8_gives_the_reference_top1() {
    check_model(&MODELS[2]);
}

#[test]
fn efficientnet_lite0_int8_gives_the_reference_top1() {
    check_model(&MODELS[3]);
}

/// The crop made inside the sandbox (returned with `debug=true`) against Pillow's.
#[test]
fn crops_made_in_the_sandbox_match_pillow() {
    let runtime = runtime();
    let plugin = load_example(&runtime, "image-classifier", IMAGE_CLASSIFIER_WASM);
    let crops = npy("images/imagenet_crops_u8_nhwc.npy");
    assert_eq!(crops.shape, [4, 224, 224, 3]);
    let NpyData::U8(crops) = crops.data else {
        panic!("uint8")
    };
    for (i, name) in PHOTOS.iter().enumerate() {
        let mut request = photo(name);
        request.content_type.push_str("; debug=true");
        let response = plugin.infer(request).expect("classified");
        let names: Vec<&str> = response.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["logits", "crop", "timings_us"]);
        let crop = &response.tensors[1].1;
        assert_eq!(crop.shape(), &[1, 224, 224, 3]);
        let want = &crops[i * N..(i + 1) * N];
        let got = crop.as_u8().unwrap();
        let max = got
            .iter()
            .zip(want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        let mean = got
            .iter()
            .zip(want)
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / N as f64;
        eprintln!("{name}: crop max |d| {max} LSB, mean {mean:.4}");
        // PNGs: bit-exact. JPEG: zune-jpeg vs libjpeg-turbo, a few LSB.
        let bound = if name.ends_with(".png") { 0 } else { 3 };
        assert!(max <= bound, "{name}: crop differs by {max} LSB");
        let timings = response.tensors[2].1.as_f32().unwrap();
        assert_eq!(timings.len(), 3);
        assert!(
            timings.iter().all(|t| t.is_finite() && *t >= 0.0),
            "{timings:?}"
        );
    }
    // Without the parameter the response carries the logits only.
    let response = plugin.infer(photo("coffee.png")).unwrap();
    assert_eq!(response.tensors.len(), 1);
}

/// Other encodings of the coffee photo still give espresso; EXIF orientation is honoured.
#[test]
fn other_encodings_of_the_coffee_photo_are_espresso() {
    let runtime = runtime();
    let plugin = load_example(&runtime, "image-classifier", IMAGE_CLASSIFIER_WASM);
    for (file, content_type) in [
        ("coffee-rgba.png", "image/png"),
        ("coffee-cmyk.jpg", "image/jpeg"),
        ("coffee-progressive.jpg", "image/jpeg"),
        ("coffee-exif-rotated.jpg", "image/jpeg"),
    ] {
        let response = plugin
            .infer(InferRequest {
                content_type: content_type.into(),
                body: std::fs::read(fixture(&format!("images/adversarial/{file}"))).unwrap(),
                tensors: Vec::new(),
            })
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let json: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(json[0]["index"], 967, "{file}: {json}");
    }
}

#[test]
fn bad_inputs_get_clear_errors() {
    let runtime = runtime();
    let plugin = load_example(&runtime, "image-classifier", IMAGE_CLASSIFIER_WASM);
    let file = |name: &str| std::fs::read(fixture(&format!("images/adversarial/{name}"))).unwrap();
    let request = |content_type: &str, body: Vec<u8>| InferRequest {
        content_type: content_type.into(),
        body,
        tensors: Vec::new(),
    };
    for (what, req, code, needle) in [
        (
            "empty",
            request("image/png", Vec::new()),
            PluginErrorCode::InvalidArgument,
            "empty input",
        ),
        (
            "text",
            request("image/png", file("not-an-image.png")),
            PluginErrorCode::InvalidArgument,
            "unsupported image format",
        ),
        (
            "truncated png",
            request("image/png", file("truncated.png")),
            PluginErrorCode::InvalidArgument,
            "truncated",
        ),
        (
            "truncated jpg",
            request("image/jpeg", file("truncated.jpg")),
            PluginErrorCode::InvalidArgument,
            "truncated",
        ),
        (
            "bomb",
            request("image/png", file("bomb-30000x30000.png")),
            PluginErrorCode::InvalidArgument,
            "too large",
        ),
        (
            "header only",
            request("image/png", file("header-only-65535.png")),
            PluginErrorCode::InvalidArgument,
            "too large",
        ),
        (
            "gif",
            request("image/png", file("coffee.gif")),
            PluginErrorCode::InvalidArgument,
            "unsupported image format",
        ),
        (
            "json",
            request("application/json", b"[1, 2]".to_vec()),
            PluginErrorCode::Unsupported,
            "not supported",
        ),
    ] {
        let (got, message) = error_of(&plugin, req);
        eprintln!("{what}: {got:?} {message}");
        assert_eq!(got, code, "{what}: {message}");
        assert!(
            message.contains(needle),
            "{what}: {message:?} does not say {needle:?}"
        );
    }
    // A 1x1 image is upscaled to 256x256 and classified: a defined answer, not an error.
    let response = plugin
        .infer(request("image/png", file("tiny-1x1.png")))
        .expect("a 1x1 image gets a defined answer");
    logits_of(&response);
    let wrong = Tensor::from_f32(vec![1, 3, 256, 256], vec![0.0; 3 * 256 * 256]).unwrap();
    let (code, message) = error_of(
        &plugin,
        InferRequest {
            tensors: vec![("input".into(), wrong)],
            ..InferRequest::default()
        },
    );
    assert_eq!(code, PluginErrorCode::ShapeMismatch, "{message}");
    assert!(message.contains("[1, 3, 224, 224]"), "{message}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measurements for the notes, not a check: run alone, in release, with
/// `cargo test --release -p edgeplug-tests --test it -- --ignored --nocapture --test-threads=1 classifier::measure`.
#[test]
#[ignore = "measurement; prints figures"]
fn measure_stage_latency_and_model_memory() {
    let dir = edgeplug_tests::repo().join("plugins/image-classifier");
    // Host memory of one loaded model, each in a fresh process, with the default backend
    // choice and with tract forced.
    for case in MODELS {
        for native in [true, false] {
            let report = crate::models::model_memory_in_fresh_process(&dir.join(case.file), native);
            println!("model {:<24} {report}", case.grant);
        }
    }

    let runtime = runtime();
    for case in MODELS {
        let before = crate::models::rss_bytes();
        let plugin = load_with_grants(
            &runtime,
            "image-classifier",
            IMAGE_CLASSIFIER_WASM,
            &[(case.grant, case.file)],
        );
        // Only the first load is measured: later ones reuse memory the allocator got back.
        if case.grant == MODELS[0].grant {
            println!(
                "plugin image-classifier[{}] load (compile + instantiate-pre + model): RSS +{:.1} MB",
                case.grant,
                crate::models::rss_bytes().saturating_sub(before) as f64 / 1e6
            );
        }
        for name in ["coffee.png", "rocket.jpg"] {
            let mut rows: Vec<[f64; 4]> = Vec::new();
            for i in 0..23 {
                let mut request = photo(name);
                request.content_type.push_str("; debug=true");
                let start = Instant::now();
                let response = plugin.infer(request).unwrap();
                let total = start.elapsed().as_secs_f64() * 1e3;
                let t = response.tensors[2].1.as_f32().unwrap();
                if i >= 3 {
                    rows.push([
                        total,
                        f64::from(t[0]) / 1e3,
                        f64::from(t[1]) / 1e3,
                        f64::from(t[2]) / 1e3,
                    ]);
                }
            }
            let col = |c: usize| median(rows.iter().map(|r| r[c]).collect());
            let (total, decode, pre, model) = (col(0), col(1), col(2), col(3));
            println!(
                "  [{}] {name:<14} end-to-end {total:6.1} ms = decode {decode:5.1} + resize/crop/normalize {pre:5.1} + model {model:5.1} + rest {:4.1} (instantiate, copies, JSON) [median of 20]",
                case.grant,
                total - decode - pre - model
            );
        }
    }
}

/// The float models called through the classifier plugin (a preprocessed tensor in, logits
/// out: instantiate, the `model` interface, the copies) against the same model run directly
/// on the native backend, in alternating blocks in one process so both see the same machine. Writes
/// `target/bench/plugin.json` for `host/models/benches/report.py --plugin-json`. Run alone, in release:
/// `cargo test --release -p edgeplug-tests --test it -- --ignored --nocapture classifier::measure_models_through_the_plugin`.
#[test]
#[ignore = "measurement; prints figures"]
fn measure_models_through_the_plugin() {
    const RUNS: usize = 200;
    let models = std::sync::Arc::new(edgeplug_runtime::model_store::ModelStore::default());
    let runtime = edgeplug_runtime::Runtime::new(edgeplug_runtime::RuntimeConfig {
        models: models.clone(),
        ..Default::default()
    })
    .unwrap();
    let dir = edgeplug_tests::repo().join("plugins/image-classifier");
    let mut rows = Vec::new();
    for case in MODELS.iter().filter(|c| c.float) {
        let plugin = load_with_grants(
            &runtime,
            "image-classifier",
            IMAGE_CLASSIFIER_WASM,
            &[(case.grant, case.file)],
        );
        let onnx = std::fs::read(dir.join(case.file)).unwrap();
        // The very model the plugin runs (the store shares it by content), so both columns
        // read the same weights and differ only by the plugin.
        let direct = models.load_bytes(case.grant, &onnx).unwrap();
        assert_eq!(direct.backend(), "native");
        let batch = npy(case.input);
        let NpyData::F32(all) = batch.data else {
            panic!("float32 input")
        };
        let one = Tensor::from_f32(vec![1, 3, 224, 224], all[..3 * 224 * 224].to_vec()).unwrap();
        let request = || InferRequest {
            tensors: vec![("input".into(), one.clone())],
            ..InferRequest::default()
        };
        let (mut via, mut alone) = (Vec::new(), Vec::new());
        // Blocks of BLOCK runs of each, alternating, so each path runs as a gateway would run
        // it (request after request) while both see the same drift of the machine, and
        // neither always finds the caches as the other left them.
        const BLOCK: usize = 10;
        let (mut via_plugin, mut run_directly) = (Vec::new(), Vec::new());
        for i in 0..(RUNS + 5) * 2 {
            if (i / BLOCK).is_multiple_of(2) {
                // A request arrives owning its tensor: the copy made here for the test is not
                // the plugin's cost.
                let request = request();
                let start = Instant::now();
                let response = plugin.infer(request).unwrap();
                via_plugin.push((start.elapsed().as_secs_f64() * 1e3, response));
            } else {
                // A fresh copy like the plugin's: both runs find the input just written.
                let input = one.clone();
                let start = Instant::now();
                let out = direct.run(&[&input]).unwrap();
                run_directly.push((start.elapsed().as_secs_f64() * 1e3, out));
            }
        }
        for (i, ((t_plugin, response), (t_direct, out))) in
            via_plugin.into_iter().zip(run_directly).enumerate()
        {
            assert_eq!(response.tensors[0].1.as_f32(), out[0].as_f32());
            if i >= 5 {
                via.push(t_plugin);
                alone.push(t_direct);
            }
        }
        let (via, alone) = (median(via), median(alone));
        println!(
            "{:<20} native direct {alone:.3} ms, through the plugin {via:.3} ms: {:.3}x [median of {RUNS}, alternating blocks of {BLOCK}]",
            case.file,
            via / alone
        );
        rows.push(serde_json::json!({
            "model": case.file.trim_end_matches(".onnx"),
            "median_ms": via,
            "native_direct_ms": alone,
            "runs": RUNS,
        }));
    }
    let out = edgeplug_tests::repo().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("plugin.json"),
        serde_json::to_string_pretty(&rows).unwrap(),
    )
    .unwrap();
}

//! Whole models through the host: grants (deny by default, names never paths), the tract
//! QDQ-softmax bug refused at load time, int8 models, and every example plugin's self-tests.

use std::path::Path;
use std::sync::Arc;

use edgeplug_kernels::Tensor;
use edgeplug_models::model::{Model, ModelError};
use edgeplug_runtime::{
    InferRequest, InvokeError, LoadedPlugin, PluginErrorCode, PluginFiles, Runtime,
};
use edgeplug_sdk::npy::NpyData;
use edgeplug_tests::{
    DIGITS_WASM, FORECASTER_WASM, IMAGE_CLASSIFIER_WASM, fixture, npy, repo, runtime,
};
use serde_json::Value;

/// An example plugin's files with `[grants.models]` replaced by `grants` (name, file in the
/// plugin directory), as if its manifest said so.
pub fn with_model_grants(plugin: &str, wasm: &str, grants: &[(&str, &str)]) -> PluginFiles {
    let dir = repo().join("plugins").join(plugin);
    let mut files = PluginFiles::from_dir(&dir, Some(Path::new(wasm))).expect("plugin files read");
    for old in std::mem::take(&mut files.manifest.grants.models).values() {
        files.files.remove(old);
    }
    for (name, file) in grants {
        files
            .manifest
            .grants
            .models
            .insert(name.to_string(), file.to_string());
        let bytes = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        files.files.insert(file.to_string(), Arc::from(bytes));
    }
    files
}

pub fn load_with_grants(
    runtime: &Runtime,
    plugin: &str,
    wasm: &str,
    grants: &[(&str, &str)],
) -> LoadedPlugin {
    runtime
        .load(&with_model_grants(plugin, wasm, grants))
        .expect("plugin loads")
}

fn plugin_error(
    result: Result<edgeplug_runtime::InferResponse, InvokeError>,
) -> (PluginErrorCode, String) {
    match result {
        Err(InvokeError::Plugin { code, message }) => (code, message),
        Err(other) => panic!("expected the plugin's error, got {other}"),
        Ok(response) => panic!(
            "expected an error, got {}",
            String::from_utf8_lossy(&response.body)
        ),
    }
}

fn png_request(content_type: &str) -> InferRequest {
    InferRequest {
        content_type: content_type.into(),
        body: std::fs::read(fixture("images/chelsea.png")).unwrap(),
        tensors: Vec::new(),
    }
}

#[test]
fn a_model_not_granted_is_not_permitted() {
    let runtime = runtime();
    // No model granted at all: the classifier finds none it may open.
    let none = load_with_grants(&runtime, "image-classifier", IMAGE_CLASSIFIER_WASM, &[]);
    let (code, message) = plugin_error(none.infer(png_request("image/png")));
    assert_eq!(code, PluginErrorCode::NotPermitted, "{message}");
    assert!(message.contains("grants none of the models"), "{message}");

    // The forecaster's model granted under another name than the one it opens.
    let renamed = load_with_grants(
        &runtime,
        "forecaster",
        FORECASTER_WASM,
        &[("lstm", "sunspots_lstm.onnx")],
    );
    let (code, message) = plugin_error(renamed.infer(InferRequest {
        content_type: "application/json".into(),
        body: serde_json::to_vec(&[1.0f32; 24]).unwrap(),
        tensors: Vec::new(),
    }));
    assert_eq!(code, PluginErrorCode::NotPermitted, "{message}");
    assert!(
        message.contains("\"sunspots-lstm\" is not granted"),
        "{message}"
    );

    // Names the guest passes are keys into the grants, never paths: neither the granted
    // model's own file name, nor a path to it, nor another model that exists on disk opens.
    let plugin = load_with_grants(
        &runtime,
        "image-classifier",
        IMAGE_CLASSIFIER_WASM,
        &[("mobilenetv2", "mobilenetv2.onnx")],
    );
    let on_disk = repo().join("plugins/image-classifier/efficientnet_lite0.onnx");
    for name in [
        "efficientnet-lite0".to_string(),
        "mobilenetv2.onnx".to_string(),
        "./mobilenetv2.onnx".to_string(),
        "../image-classifier/mobilenetv2.onnx".to_string(),
        on_disk.display().to_string(),
        "MOBILENETV2".to_string(),
        String::new(),
    ] {
        let (code, message) =
            plugin_error(plugin.infer(png_request(&format!("image/png; model=\"{name}\""))));
        assert_eq!(code, PluginErrorCode::NotPermitted, "{name:?}: {message}");
        assert!(message.contains("is not granted"), "{message}");
    }
    // The granted name works.
    let ok = plugin
        .infer(png_request("image/png; model=mobilenetv2"))
        .expect("granted model runs");
    let top: Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(top[0]["index"], 285);
}

#[test]
fn the_grant_selects_the_model_and_a_request_may_pick_among_grants() {
    let runtime = runtime();
    let both = load_with_grants(
        &runtime,
        "image-classifier",
        IMAGE_CLASSIFIER_WASM,
        &[
            ("efficientnet-lite0", "efficientnet_lite0.onnx"),
            ("mobilenetv2", "mobilenetv2.onnx"),
        ],
    );
    let top1 = |content_type: &str| -> u64 {
        let response = both.infer(png_request(content_type)).expect("classified");
        let json: Value = serde_json::from_slice(&response.body).unwrap();
        json[0]["index"].as_u64().unwrap()
    };
    // chelsea: MobileNetV2 says 285 Egyptian cat, EfficientNet-Lite0 282 tiger cat.
    assert_eq!(
        top1("image/png"),
        285,
        "mobilenetv2 comes first in the preference order"
    );
    assert_eq!(top1("image/png; model=efficientnet-lite0"), 282);
    assert_eq!(top1("image/png; model=mobilenetv2"), 285);

    // A name that is granted but unknown to the plugin (no preprocessing for it) is refused
    // by the plugin after the host let it open.
    let odd = load_with_grants(
        &runtime,
        "image-classifier",
        IMAGE_CLASSIFIER_WASM,
        &[("resnet", "mobilenetv2.onnx")],
    );
    let (code, message) = plugin_error(odd.infer(png_request("image/png; model=resnet")));
    assert_eq!(code, PluginErrorCode::InvalidArgument, "{message}");
    assert!(
        message.contains("does not know its preprocessing"),
        "{message}"
    );
}

#[test]
fn qdq_softmax_repro_is_refused_at_load_time() {
    let bytes = std::fs::read(fixture("models/tract_qdq_softmax_repro.onnx")).unwrap();
    let err = Model::load("repro", &bytes).unwrap_err();
    assert!(matches!(err, ModelError::Load { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("DequantizeLinear -> Softmax -> QuantizeLinear"),
        "{message}"
    );

    // A plugin granting it does not load, and says why.
    let mut files = with_model_grants("forecaster", FORECASTER_WASM, &[]);
    files
        .manifest
        .grants
        .models
        .insert("sunspots-lstm".into(), "repro.onnx".into());
    files.files.insert("repro.onnx".into(), Arc::from(bytes));
    let err = runtime().load(&files).err().expect("the plugin is refused");
    let message = format!("{err:#}");
    assert!(
        message.contains("tract 0.23.9 computes wrongly"),
        "{message}"
    );
}

/// Both int8 digits models (QDQ and QOperator) load (the QDQ export avoids the quantized
/// softmax) and keep the float model's accuracy, 534/540.
#[test]
fn digits_int8_models_keep_the_reference_accuracy() {
    let inputs = npy("digits/digits_test.npy");
    assert_eq!(inputs.shape, [540, 1, 16, 16]);
    let NpyData::F32(inputs) = inputs.data else {
        panic!("float32")
    };
    let NpyData::I64(labels) = npy("digits/digits_test_labels.npy").data else {
        panic!("int64")
    };
    for (file, reference) in [
        (
            "models/digits_cnn_int8_qdq.onnx",
            "models/digits_cnn_int8_qdq_ref_out.npy",
        ),
        (
            "models/digits_cnn_int8_qop.onnx",
            "models/digits_cnn_int8_qop_ref_out.npy",
        ),
    ] {
        let model =
            Model::load(file, &std::fs::read(fixture(file)).unwrap()).expect("int8 model loads");
        let NpyData::F32(reference) = npy(reference).data else {
            panic!("float32")
        };
        let (mut correct, mut same_argmax, mut max_diff) = (0, 0, 0f32);
        for (i, x) in inputs.chunks(256).enumerate() {
            let x = Tensor::from_f32(vec![1, 1, 16, 16], x.to_vec()).unwrap();
            let out = model.run(&[&x]).expect("runs");
            let probs = out[0].as_f32().unwrap();
            let want = &reference[i * 10..i * 10 + 10];
            let argmax = |p: &[f32]| (0..10).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
            correct += usize::from(argmax(probs) as i64 == labels[i]);
            same_argmax += usize::from(argmax(probs) == argmax(want));
            for (a, b) in probs.iter().zip(want) {
                max_diff = max_diff.max((a - b).abs());
            }
        }
        eprintln!(
            "{file}: {correct}/540 correct, argmax = onnxruntime on {same_argmax}/540, max |dp| {max_diff:e}"
        );
        assert_eq!(correct, 534, "{file}");
        assert_eq!(same_argmax, 540, "{file}");
        assert!(max_diff <= 2e-2, "{file}: max |p - p_ort| = {max_diff}");
    }
}

/// Compares JSON values: same structure, strings and booleans equal, numbers within `tolerance`.
/// Returns where they first differ.
pub fn json_close(got: &Value, want: &Value, tolerance: f64) -> Result<(), String> {
    fn walk(got: &Value, want: &Value, tolerance: f64, at: &str) -> Result<(), String> {
        match (got, want) {
            (Value::Number(g), Value::Number(w)) => {
                let (g, w) = (
                    g.as_f64().unwrap_or(f64::NAN),
                    w.as_f64().unwrap_or(f64::NAN),
                );
                if (g - w).abs() <= tolerance {
                    Ok(())
                } else {
                    Err(format!(
                        "{at}: {g} differs from {w} by more than {tolerance}"
                    ))
                }
            }
            (Value::Array(g), Value::Array(w)) => {
                if g.len() != w.len() {
                    return Err(format!("{at}: {} elements, expected {}", g.len(), w.len()));
                }
                g.iter()
                    .zip(w)
                    .enumerate()
                    .try_for_each(|(i, (g, w))| walk(g, w, tolerance, &format!("{at}[{i}]")))
            }
            (Value::Object(g), Value::Object(w)) => {
                let (gk, wk): (Vec<_>, Vec<_>) = (g.keys().collect(), w.keys().collect());
                if gk != wk {
                    return Err(format!("{at}: keys {gk:?}, expected {wk:?}"));
                }
                w.iter()
                    .try_for_each(|(k, w)| walk(&g[k], w, tolerance, &format!("{at}.{k}")))
            }
            (g, w) if g == w => Ok(()),
            (g, w) => Err(format!("{at}: {g} is not {w}")),
        }
    }
    walk(got, want, tolerance, "$")
}

#[test]
fn json_close_compares_structure_exactly_and_numbers_within_tolerance() {
    let want = serde_json::json!([{"index": 285, "label": "Egyptian cat", "probability": 0.7166}]);
    let near = serde_json::json!([{"index": 285, "label": "Egyptian cat", "probability": 0.7170}]);
    assert_eq!(json_close(&near, &want, 1e-3), Ok(()));
    assert!(
        json_close(&near, &want, 1e-4)
            .unwrap_err()
            .contains("$[0].probability")
    );
    let label = serde_json::json!([{"index": 285, "label": "tabby", "probability": 0.7166}]);
    assert!(
        json_close(&label, &want, 1e-3)
            .unwrap_err()
            .contains("$[0].label")
    );
    let index = serde_json::json!([{"index": 282, "label": "Egyptian cat", "probability": 0.7166}]);
    assert!(json_close(&index, &want, 1e-3).is_err());
    assert!(json_close(&serde_json::json!([]), &want, 1.0).is_err());
    let extra =
        serde_json::json!([{"index": 285, "label": "Egyptian cat", "probability": 0.7166, "x": 1}]);
    assert!(
        json_close(&extra, &want, 1e-3)
            .unwrap_err()
            .contains("keys")
    );
    assert!(
        json_close(
            &serde_json::json!({"forecast": "1"}),
            &serde_json::json!({"forecast": 1}),
            1.0
        )
        .is_err()
    );
}

/// The MIME type of a self-test input, from its extension when the manifest gives none.
fn content_type_of(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "json" => "application/json",
        "csv" => "text/csv",
        "npy" => "application/x-npy",
        _ => "application/octet-stream",
    }
}

/// Runs every `[[self-test]]` of a loaded plugin through `LoadedPlugin::infer` and compares the
/// JSON answers; returns one line per failure.
pub fn run_self_tests(plugin: &LoadedPlugin, files: &PluginFiles) -> Vec<String> {
    let mut failures = Vec::new();
    for test in &files.manifest.self_tests {
        let content_type = test
            .content_type
            .clone()
            .unwrap_or_else(|| content_type_of(&test.input).to_string());
        let body = files
            .get(&test.input)
            .expect("self-test input is a plugin file")
            .to_vec();
        let want: Value = serde_json::from_slice(
            files
                .get(&test.expect)
                .expect("expected output is a plugin file"),
        )
        .expect("expected output is JSON");
        let outcome = plugin
            .infer(InferRequest {
                content_type,
                body,
                tensors: Vec::new(),
            })
            .map_err(|e| e.to_string())
            .and_then(|r| {
                serde_json::from_slice::<Value>(&r.body)
                    .map_err(|e| format!("answer is not JSON: {e}"))
            })
            .and_then(|got| json_close(&got, &want, test.tolerance));
        if let Err(e) = outcome {
            failures.push(format!("{} / {}: {e}", files.manifest.name, test.name));
        }
    }
    failures
}

#[test]
fn every_example_plugin_passes_its_self_tests() {
    let runtime = runtime();
    let mut failures = Vec::new();
    for (name, wasm, at_least) in [
        ("digits", DIGITS_WASM, 0),
        ("image-classifier", IMAGE_CLASSIFIER_WASM, 1),
        ("forecaster", FORECASTER_WASM, 2),
    ] {
        let files =
            PluginFiles::from_dir(&repo().join("plugins").join(name), Some(Path::new(wasm)))
                .unwrap();
        assert!(
            files.manifest.self_tests.len() >= at_least,
            "{name} ships self-tests"
        );
        let plugin = runtime.load(&files).expect("plugin loads");
        failures.extend(run_self_tests(&plugin, &files));
    }
    assert!(
        failures.is_empty(),
        "self-tests failed:\n{}",
        failures.join("\n")
    );
}

/// Each shipped expectation of the classifier (one per model it can be configured with) holds
/// for that model, so switching the grant and the self-test's `expect` keeps the self-test green.
#[test]
fn classifier_self_test_expectations_hold_for_every_model() {
    let runtime = runtime();
    let mut failures = Vec::new();
    for (grant, file) in crate::classifier::MODELS.map(|m| (m.grant, m.file)) {
        let mut files =
            with_model_grants("image-classifier", IMAGE_CLASSIFIER_WASM, &[(grant, file)]);
        let expect = format!("selftest/chelsea.{grant}.json");
        let bytes = std::fs::read(repo().join("plugins/image-classifier").join(&expect)).unwrap();
        files.files.insert(expect.clone(), Arc::from(bytes));
        for test in &mut files.manifest.self_tests {
            test.expect = expect.clone();
        }
        let plugin = runtime.load(&files).expect("plugin loads");
        failures.extend(
            run_self_tests(&plugin, &files)
                .into_iter()
                .map(|f| format!("{grant}: {f}")),
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Writes `plugins/image-classifier/selftest/chelsea.<int8 model>.json` from this runtime's
/// answers (int8 numerics are runtime-dependent, so these are recorded, not onnxruntime's):
/// `cargo test -p edgeplug-tests --test it -- --ignored record_int8_self_test_expectations`.
#[test]
#[ignore = "regenerates fixtures"]
fn record_int8_self_test_expectations() {
    let runtime = runtime();
    for case in crate::classifier::MODELS.iter().filter(|m| !m.float) {
        let plugin = load_with_grants(
            &runtime,
            "image-classifier",
            IMAGE_CLASSIFIER_WASM,
            &[(case.grant, case.file)],
        );
        let response = plugin.infer(png_request("image/png")).expect("classified");
        let json: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(
            json[0]["index"], case.top1[0],
            "{}: top-1 as in the models README",
            case.grant
        );
        let path = repo().join(format!(
            "plugins/image-classifier/selftest/chelsea.{}.json",
            case.grant
        ));
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap() + "\n").unwrap();
        println!("wrote {}", path.display());
    }
}

/// Resident set size of this process (`/proc/self/statm`).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

const MEASURE_ENV: &str = "EDGEPLUG_MEASURE_MODEL";

/// What one loaded model costs the host, measured in a fresh process (this test binary run
/// again on [`measure_model_memory_child`]), so that no earlier allocation is reused: RSS
/// before and after `Model::load_with(path, native)` and after a first run. Returns the child's
/// report line.
pub fn model_memory_in_fresh_process(path: &Path, native: bool) -> String {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "models::measure_model_memory_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MEASURE_ENV, format!("{}|{native}", path.display()))
        .output()
        .expect("test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.find("MODEL-MEMORY ").map(|at| l[at + 13..].to_string()))
        .unwrap_or_else(|| {
            format!(
                "no report: {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// The child of [`model_memory_in_fresh_process`]; does nothing without its environment variable.
#[test]
#[ignore = "measurement child process"]
fn measure_model_memory_child() {
    let Ok(spec) = std::env::var(MEASURE_ENV) else {
        return;
    };
    let (path, native) = spec.rsplit_once('|').unwrap();
    // tract's one-time process setup (kernel registries, ...) is not the model's: load and run a
    // small other model first, and keep it loaded so that its memory is not reused.
    let warm_up_bytes = std::fs::read(fixture("models/digits_cnn_int8_qop.onnx")).unwrap();
    let start_rss = rss_bytes();
    let warm_up = Model::load_with("warm-up", &warm_up_bytes, false).unwrap();
    let x = Tensor::from_f32(vec![1, 1, 16, 16], vec![0.5; 256]).unwrap();
    warm_up.run(&[&x]).unwrap();
    let process_setup = rss_bytes().saturating_sub(start_rss);
    let bytes = std::fs::read(path).unwrap();
    let before = rss_bytes();
    let start = std::time::Instant::now();
    let model = Model::load_with(path, &bytes, native == "true").unwrap();
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let loaded = rss_bytes();
    let shape: Vec<usize> = model.inputs()[0]
        .shape
        .iter()
        .map(|&d| d.max(1) as usize)
        .collect();
    let input = Tensor::from_f32(shape.clone(), vec![0.5; shape.iter().product()]).unwrap();
    model.run(&[&input]).unwrap();
    let ran = rss_bytes();
    let mut runs: Vec<f64> = (0..10)
        .map(|_| {
            let start = std::time::Instant::now();
            model.run(&[&input]).unwrap();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    println!(
        "MODEL-MEMORY {:<6} file {:>6.2} MB, load {load_ms:>5.0} ms, RSS +{:.1} MB loaded, +{:.1} MB after a first run; run {:.2} ms (median of 10) [process setup before: {:.1} MB]",
        model.backend(),
        bytes.len() as f64 / 1e6,
        loaded.saturating_sub(before) as f64 / 1e6,
        ran.saturating_sub(before) as f64 / 1e6,
        runs[5],
        process_setup as f64 / 1e6,
    );
}

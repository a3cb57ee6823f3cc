//! The LSTM forecaster on the 57 held-out windows (1952-2008), its input forms and its errors.

use std::time::Instant;

use edgeplug_kernels::Tensor;
use edgeplug_runtime::{InferRequest, LoadedPlugin, PluginErrorCode};
use edgeplug_sdk::npy::NpyData;
use edgeplug_tests::{FORECASTER_WASM, error_of, load_example, npy, runtime};
use serde_json::Value;

fn f32s(path: &str) -> Vec<f32> {
    match npy(path).data {
        NpyData::F32(v) => v,
        other => panic!("{path} is {}, expected float32", other.dtype()),
    }
}

/// The 57 windows of 24 values, the onnxruntime forecasts and the real next values.
fn fixtures() -> (Vec<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let windows = npy("sunspots/sunspots_test_windows.npy");
    assert_eq!(windows.shape, [57, 24, 1]);
    let NpyData::F32(windows) = windows.data else {
        panic!("float32")
    };
    let windows = windows.chunks(24).map(<[f32]>::to_vec).collect();
    let reference = f32s("sunspots/sunspots_lstm_ref_out.npy");
    let targets = f32s("sunspots/sunspots_test_targets.npy");
    assert_eq!((reference.len(), targets.len()), (57, 57));
    (windows, reference, targets)
}

fn request(content_type: &str, body: impl Into<Vec<u8>>) -> InferRequest {
    InferRequest {
        content_type: content_type.into(),
        body: body.into(),
        tensors: Vec::new(),
    }
}

fn forecast(plugin: &LoadedPlugin, request: InferRequest) -> f32 {
    let response = plugin.infer(request).expect("forecast");
    assert_eq!(response.content_type, "application/json");
    let json: Value = serde_json::from_slice(&response.body).unwrap();
    let value = json["forecast"].as_f64().expect("{\"forecast\": number}") as f32;
    assert_eq!(json.as_object().unwrap().len(), 1, "{json}");
    let (name, tensor) = &response.tensors[0];
    assert_eq!(name, "next_value");
    assert_eq!(tensor.as_f32().unwrap(), [value]);
    value
}

fn rmse(a: &[f32], b: &[f32]) -> f64 {
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    (sum / a.len() as f64).sqrt()
}

#[test]
fn test_windows_reproduce_onnxruntime_and_the_rmse() {
    let runtime = runtime();
    let plugin = load_example(&runtime, "forecaster", FORECASTER_WASM);
    let (windows, reference, targets) = fixtures();
    let forecasts: Vec<f32> = windows
        .iter()
        .map(|w| {
            forecast(
                &plugin,
                request("application/json", serde_json::to_vec(w).unwrap()),
            )
        })
        .collect();
    let max_diff = forecasts
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let rmse_lstm = rmse(&forecasts, &targets);
    let naive: Vec<f32> = windows.iter().map(|w| w[23]).collect();
    let rmse_naive = rmse(&naive, &targets);
    eprintln!(
        "max |forecast - onnxruntime| {max_diff:.2e}; RMSE {rmse_lstm:.3} (naive last value {rmse_naive:.3})"
    );
    assert!(
        max_diff <= 1e-3,
        "max |forecast - onnxruntime| = {max_diff}"
    );
    assert!(
        (rmse_lstm - 20.01).abs() < 0.01,
        "RMSE {rmse_lstm}, reference 20.01"
    );
    assert!(
        (rmse_naive - 33.02).abs() < 0.01,
        "naive RMSE {rmse_naive}, reference 33.02"
    );
}

#[test]
fn json_csv_and_tensor_inputs_agree() {
    let runtime = runtime();
    let plugin = load_example(&runtime, "forecaster", FORECASTER_WASM);
    let (windows, reference, _) = fixtures();
    for i in [0, 28, 56] {
        let w = &windows[i];
        let json = forecast(
            &plugin,
            request(
                "application/json; charset=utf-8",
                serde_json::to_vec(w).unwrap(),
            ),
        );
        let column: String = w.iter().map(|v| format!("{v}\n")).collect();
        let row = w.iter().map(f32::to_string).collect::<Vec<_>>().join(", ");
        let csv_column = forecast(&plugin, request("text/csv", column));
        let csv_row = forecast(&plugin, request("text/csv", row));
        let tensor = forecast(
            &plugin,
            InferRequest {
                tensors: vec![(
                    "window".into(),
                    Tensor::from_f32(vec![1, 24, 1], w.clone()).unwrap(),
                )],
                ..InferRequest::default()
            },
        );
        assert_eq!([csv_column, csv_row, tensor], [json; 3], "window {i}");
        assert!((json - reference[i]).abs() <= 1e-3);
    }
}

#[test]
fn bad_windows_get_clear_errors() {
    let runtime = runtime();
    let plugin = load_example(&runtime, "forecaster", FORECASTER_WASM);
    let ones = |n: usize| vec!["1"; n];
    let json_with = |i: usize, item: &str| {
        let mut items = ones(24);
        items[i] = item;
        format!("[{}]", items.join(","))
    };
    let csv_with = |i: usize, item: &str| {
        let mut items = ones(24);
        items[i] = item;
        items.join("\n")
    };
    use PluginErrorCode::{InvalidArgument, ShapeMismatch, Unsupported};
    let cases: Vec<(&str, InferRequest, PluginErrorCode, &str)> = vec![
        (
            "23 values",
            request("application/json", format!("[{}]", ones(23).join(","))),
            InvalidArgument,
            "got 23 value",
        ),
        (
            "25 values",
            request("application/json", format!("[{}]", ones(25).join(","))),
            InvalidArgument,
            "got 25 value",
        ),
        (
            "empty array",
            request("application/json", "[]"),
            InvalidArgument,
            "got 0 value",
        ),
        (
            "empty body",
            request("application/json", ""),
            InvalidArgument,
            "not valid JSON",
        ),
        (
            "NaN literal",
            request("application/json", json_with(3, "NaN")),
            InvalidArgument,
            "not valid JSON",
        ),
        (
            "string",
            request("application/json", json_with(3, "\"12\"")),
            InvalidArgument,
            "value 3 is the string \"12\"",
        ),
        (
            "null",
            request("application/json", json_with(7, "null")),
            InvalidArgument,
            "value 7 is null",
        ),
        (
            "nested",
            request("application/json", json_with(0, "[1]")),
            InvalidArgument,
            "value 0 is an array",
        ),
        (
            "object",
            request("application/json", "{\"values\": [1, 2]}"),
            InvalidArgument,
            "got an object",
        ),
        (
            "overflow",
            request("application/json", json_with(2, "1e39")),
            InvalidArgument,
            "not a finite number",
        ),
        (
            "CSV NaN",
            request("text/csv", csv_with(5, "NaN")),
            InvalidArgument,
            "value 5 is NaN",
        ),
        (
            "CSV inf",
            request("text/csv", csv_with(5, "inf")),
            InvalidArgument,
            "value 5 is inf",
        ),
        (
            "CSV word",
            request("text/csv", csv_with(5, "n/a")),
            InvalidArgument,
            "value 5 (\"n/a\") is not a number",
        ),
        (
            "CSV short",
            request("text/csv", ones(12).join(",")),
            InvalidArgument,
            "got 12 value",
        ),
        (
            "binary",
            request("text/csv", vec![0xff, 0xfe, 0x00]),
            InvalidArgument,
            "not UTF-8",
        ),
        (
            "image",
            request("image/png", vec![0x89, b'P']),
            Unsupported,
            "not supported",
        ),
        (
            "wrong tensor",
            InferRequest {
                tensors: vec![(
                    "window".into(),
                    Tensor::from_f32(vec![1, 12, 1], vec![1.0; 12]).unwrap(),
                )],
                ..InferRequest::default()
            },
            ShapeMismatch,
            "[1, 24, 1]",
        ),
        (
            "NaN tensor",
            InferRequest {
                tensors: vec![(
                    "window".into(),
                    Tensor::from_f32(
                        vec![1, 24, 1],
                        (0..24)
                            .map(|i| if i == 9 { f32::NAN } else { 1.0 })
                            .collect(),
                    )
                    .unwrap(),
                )],
                ..InferRequest::default()
            },
            InvalidArgument,
            "value 9",
        ),
    ];
    for (what, req, code, needle) in cases {
        let (got, message) = error_of(&plugin, req);
        eprintln!("{what}: {got:?} {message}");
        assert_eq!(got, code, "{what}: {message}");
        assert!(
            message.contains(needle),
            "{what}: {message:?} does not say {needle:?}"
        );
    }
}

/// Measurements for the notes, not a check: run alone, in release, with
/// `cargo test --release -p edgeplug-tests --test it -- --ignored --nocapture --test-threads=1 forecaster::measure`.
#[test]
#[ignore = "measurement; prints figures"]
fn measure_stage_latency_and_model_memory() {
    let path = edgeplug_tests::repo().join("plugins/forecaster/sunspots_lstm.onnx");
    for native in [true, false] {
        let report = crate::models::model_memory_in_fresh_process(&path, native);
        println!("model sunspots-lstm {report}");
    }

    let runtime = runtime();
    let before = crate::models::rss_bytes();
    let plugin = load_example(&runtime, "forecaster", FORECASTER_WASM);
    println!(
        "plugin forecaster load: RSS +{:.1} MB",
        crate::models::rss_bytes().saturating_sub(before) as f64 / 1e6
    );
    let (windows, _, _) = fixtures();
    let body = serde_json::to_vec(&windows[56]).unwrap();
    let mut rows = Vec::new();
    for i in 0..223 {
        let start = Instant::now();
        let response = plugin
            .infer(request("application/json; debug=true", body.clone()))
            .unwrap();
        let total = start.elapsed().as_secs_f64() * 1e3;
        let t = response.tensors[1].1.as_f32().unwrap();
        if i >= 23 {
            rows.push([total, f64::from(t[0]) / 1e3, f64::from(t[1]) / 1e3]);
        }
    }
    let col = |c: usize| {
        let mut v: Vec<f64> = rows.iter().map(|r| r[c]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (total, parse, model) = (col(0), col(1), col(2));
    println!(
        "  JSON window   end-to-end {total:.3} ms = parse {parse:.3} + model {model:.3} + rest {:.3} (instantiate, copies, JSON) [median of 200]",
        total - parse - model
    );
}

/// The forecaster granted its model from the gateway's model store instead of its bundle:
/// the same forecasts, and one loaded model shared by both versions.
#[test]
fn a_model_granted_from_the_model_store_is_shared_with_the_bundled_one() {
    use std::sync::Arc;

    use edgeplug_runtime::model_store::ModelStore;
    use edgeplug_runtime::{PluginFiles, Runtime, RuntimeConfig};

    let source = edgeplug_tests::repo().join("plugins/forecaster");
    let model_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        source.join("sunspots_lstm.onnx"),
        model_dir.path().join("sunspots.onnx"),
    )
    .unwrap();
    let store = Arc::new(ModelStore::new(Some(model_dir.path().to_path_buf())));
    let runtime = Runtime::new(RuntimeConfig {
        models: store.clone(),
        ..RuntimeConfig::default()
    })
    .unwrap();

    let bundled = edgeplug_tests::load_example(&runtime, "forecaster", FORECASTER_WASM);
    assert_eq!(store.loaded_count(), 1);

    // The same plugin, its model granted from the store: nothing but the manifest changes.
    let mut files =
        PluginFiles::from_dir(&source, Some(std::path::Path::new(FORECASTER_WASM))).unwrap();
    let model_file = files
        .manifest
        .grants
        .models
        .remove("sunspots-lstm")
        .unwrap();
    files.files.remove(&model_file);
    files
        .manifest
        .grants
        .store_models
        .insert("sunspots-lstm".into(), "sunspots".into());
    let from_store = runtime.load(&files).unwrap();
    assert_eq!(store.loaded_count(), 1, "one file, one loaded model");

    let (windows, _, _) = fixtures();
    for window in windows.iter().take(5) {
        let body = serde_json::to_vec(window).unwrap();
        let a = forecast(&bundled, request("application/json", body.clone()));
        let b = forecast(&from_store, request("application/json", body));
        assert_eq!(a, b);
    }
    drop((bundled, from_store));
    assert_eq!(store.loaded_count(), 0, "a model no version uses is freed");

    // A store model that is not there fails the load and says what the store has.
    files
        .manifest
        .grants
        .store_models
        .insert("sunspots-lstm".into(), "sunspots-v2".into());
    let error = match runtime.load(&files) {
        Ok(_) => panic!("a missing store model loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("\"sunspots-v2\"") && error.contains("[\"sunspots\"]"),
        "{error}"
    );
}

//! Shared helpers of the integration tests: where the built plugins and fixtures are, and
//! how to load a plugin into a runtime.

pub mod bench;
pub mod browser;
pub mod camera;
pub mod fleet;
pub mod gateway;
pub mod load;
pub mod mqtt;
pub mod pinned;
pub mod relay;
pub mod servers;
pub mod toolchains;

use std::path::{Path, PathBuf};

use edgeplug_runtime::{
    InferRequest, InvokeError, LoadError, LoadedPlugin, PluginErrorCode, PluginFiles, Runtime,
    RuntimeConfig,
};

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(REPO_ROOT)
}

/// A file under `tests/fixtures/`.
pub fn fixture(path: &str) -> PathBuf {
    repo().join("tests/fixtures").join(path)
}

/// A runtime with the default limits and no disk cache.
pub fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig::default()).expect("runtime starts")
}

/// Loads an example plugin from `plugins/<name>` with its freshly built component.
pub fn load_example(runtime: &Runtime, name: &str, wasm: &str) -> LoadedPlugin {
    let files = PluginFiles::from_dir(&repo().join("plugins").join(name), Some(Path::new(wasm)))
        .expect("plugin files read");
    runtime.load(&files).expect("plugin loads")
}

/// `edgeplug ARGS...`, run in process through the CLI's own argument parser.
pub fn edgeplug_cli(
    args: &[&dyn AsRef<std::ffi::OsStr>],
) -> anyhow::Result<std::process::ExitCode> {
    let args: Vec<std::ffi::OsString> = std::iter::once("edgeplug".into())
        .chain(args.iter().map(|a| a.as_ref().to_os_string()))
        .collect();
    edgeplug::cli::run_args(args)
}

/// The `model` template's self-test digit (an 8x8 JSON image of 0..16) drawn 8 times larger:
/// a 64x64 JSON image of 0..255 that the template's area resize brings back to the same
/// 16x16 input.
pub fn model_template_digit_64x64() -> String {
    let path = repo().join("host/cli/templates/model/selftest/image.json");
    let small: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("the template's image")).unwrap();
    let big: Vec<Vec<f64>> = small["image"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            let row: Vec<f64> = row
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|v| [v.as_f64().unwrap() * 255.0 / 16.0; 8])
                .collect();
            std::iter::repeat_n(row, 8)
        })
        .collect();
    serde_json::json!({ "image": big }).to_string()
}

/// Reads a .npy fixture.
pub fn npy(path: &str) -> edgeplug_sdk::npy::Npy {
    let bytes = std::fs::read(fixture(path)).expect("fixture exists");
    edgeplug_sdk::npy::parse(&bytes).expect("fixture parses")
}

/// The 540 digits of the test split (`tests/fixtures/digits`) as the JSON bodies the digits
/// plugin takes (an 8x8 array of 0..16), with their labels.
pub fn digits_test_bodies() -> Vec<(Vec<u8>, u32)> {
    let raw = match npy("digits/digits_test_raw.npy").data {
        edgeplug_sdk::npy::NpyData::U8(v) => v,
        _ => panic!("digits_test_raw.npy is uint8"),
    };
    let labels = match npy("digits/digits_test_labels.npy").data {
        edgeplug_sdk::npy::NpyData::I64(v) => v,
        _ => panic!("digits_test_labels.npy is int64"),
    };
    raw.chunks(64)
        .zip(labels)
        .map(|(pixels, label)| {
            let rows: Vec<&[u8]> = pixels.chunks(8).collect();
            (serde_json::to_vec(&rows).unwrap(), label as u32)
        })
        .collect()
}

/// The conformance kit's options in the tests: 3 latency runs and 2 determinism runs, enough
/// for every check to run without the kit's full timing.
pub fn conformance_options() -> edgeplug_runtime::conformance::Options {
    edgeplug_runtime::conformance::Options {
        latency_runs: 3,
        determinism_runs: 2,
        ..Default::default()
    }
}

/// The conformance kit on the plugin directory `dir` with the built `component`.
pub fn conformance_of(
    runtime: &Runtime,
    dir: &Path,
    component: &Path,
) -> edgeplug_runtime::conformance::Report {
    let target = edgeplug_runtime::conformance::Target::Dir {
        dir: dir.to_path_buf(),
        component: Some(component.to_path_buf()),
    };
    edgeplug_runtime::conformance::run(runtime, &target, &conformance_options())
}

/// Asserts a conformance report passed with every group of checks run.
pub fn assert_conformance_passes(report: &edgeplug_runtime::conformance::Report) {
    assert!(report.passed(), "{}", report.to_text());
    let groups: Vec<&str> = report.checks.iter().map(|c| c.group).collect();
    for group in [
        "manifest",
        "load",
        "describe",
        "self-test",
        "robustness",
        "determinism",
        "limits",
        "latency",
    ] {
        assert!(
            groups.contains(&group),
            "no {group} check ran:\n{}",
            report.to_text()
        );
    }
}

/// The built component of the test plugin in `tests/plugins/<dir>`.
pub fn test_plugin_wasm(dir: &str) -> &'static str {
    TEST_PLUGINS
        .iter()
        .find(|(name, _)| *name == dir)
        .map(|(_, wasm)| *wasm)
        .unwrap_or_else(|| panic!("no test plugin {dir:?} in tests/build.rs"))
}

/// The files of the test plugin in `tests/plugins/<dir>`, with its freshly built component.
pub fn test_plugin_files(dir: &str) -> PluginFiles {
    let wasm = test_plugin_wasm(dir);
    PluginFiles::from_dir(
        &repo().join("tests/plugins").join(dir),
        Some(Path::new(wasm)),
    )
    .expect("test plugin files read")
}

/// Loads the test plugin in `tests/plugins/<dir>`.
pub fn load_test_plugin(runtime: &Runtime, dir: &str) -> Result<LoadedPlugin, LoadError> {
    runtime.load(&test_plugin_files(dir))
}

/// The plugin's own error result for `request`; panics on an answer or on a trap or limit.
pub fn error_of(plugin: &LoadedPlugin, request: InferRequest) -> (PluginErrorCode, String) {
    match plugin.infer(request) {
        Err(InvokeError::Plugin { code, message }) => (code, message),
        Err(other) => panic!("expected the plugin's own error, got {other}"),
        Ok(r) => panic!(
            "expected an error, got {}",
            String::from_utf8_lossy(&r.body)
        ),
    }
}

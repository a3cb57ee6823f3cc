//! The same plugin in Rust, Python and JavaScript: `edgeplug new --template model` in each
//! language (a tensor or a JSON image in, preprocessing in the sandbox, the digits CNN on the
//! host), built as an author builds it (`edgeplug build`; componentize-py and ComponentizeJS
//! installed by `edgeplug_tests::toolchains`). Per language: component size, cold load
//! (compile and link in a fresh runtime with no cache) and the per-request time of three
//! inputs, once with a fresh instance per request (the templates' default) and once with kept
//! instances (`requests_per_instance = 1000`). The model's own compute is the same host code in
//! every language, so the differences are each language's overhead.
//!
//! `cargo bench -p edgeplug-tests --bench plugin_languages` (`EDGEPLUG_BENCH_ROUNDS` rounds,
//! default 3, the languages alternated within each; each request timing is the median of
//! `EDGEPLUG_BENCH_REQUESTS` requests, default 200; medians of the rounds are printed and
//! written to `target/bench/plugin_languages.json`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgeplug_runtime::{InferRequest, LoadedPlugin, PluginFiles, Runtime, RuntimeConfig};
use edgeplug_tests::bench::{median, write_json};
use edgeplug_tests::repo;
use edgeplug_tests::toolchains::{componentize_js, componentize_py};
use serde_json::json;

const LANGUAGES: [&str; 3] = ["rust", "python", "js"];

fn edgeplug(args: &[&dyn AsRef<std::ffi::OsStr>]) {
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    let code = edgeplug_tests::edgeplug_cli(args).unwrap_or_else(|e| panic!("{shown:?}: {e:#}"));
    assert_eq!(code, std::process::ExitCode::SUCCESS, "{shown:?}");
}

/// `edgeplug new --template model --lang LANG` and `edgeplug build`, under `work`.
fn build(work: &Path, lang: &str) -> PathBuf {
    let dir = work.join(lang);
    let name = format!("{lang}-model");
    edgeplug(&[
        &"new",
        &name,
        &"--template",
        &"model",
        &"--lang",
        &lang,
        &"--dir",
        &dir,
    ]);
    match lang {
        "rust" => {
            let target = repo().join("target/author-plugins");
            edgeplug(&[&"build", &dir, &"--offline", &"--target-dir", &target]);
        }
        "python" => edgeplug(&[&"build", &dir, &"--componentize-py", &componentize_py()]),
        _ => edgeplug(&[&"build", &dir, &"--componentize-js", &componentize_js()]),
    }
    dir
}

fn files(dir: &Path, requests_per_instance: u32) -> PluginFiles {
    let mut files = PluginFiles::from_dir(dir, None).unwrap();
    files.manifest.limits.requests_per_instance = requests_per_instance;
    files
}

/// The three inputs: the self-test's tensor as a .npy body, the same digit as an 8x8 JSON
/// image, and drawn 8 times larger (64x64), which the sandbox resizes.
fn inputs(dir: &Path) -> Vec<(&'static str, InferRequest)> {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let request = |content_type: &str, body: Vec<u8>| InferRequest {
        content_type: content_type.into(),
        body,
        tensors: Vec::new(),
    };
    vec![
        (
            "tensor (.npy 1x1x16x16)",
            request("application/x-npy", read("selftest/input.npy")),
        ),
        (
            "JSON image 8x8",
            request("application/json", read("selftest/image.json")),
        ),
        (
            "JSON image 64x64",
            request(
                "application/json",
                edgeplug_tests::model_template_digit_64x64().into_bytes(),
            ),
        ),
    ]
}

/// The median time of `n` requests, each checked to name the digit 1.
fn per_request(plugin: &LoadedPlugin, request: &InferRequest, n: usize) -> f64 {
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let sent = Instant::now();
            let answer = plugin.infer(request.clone()).expect("the plugin answers");
            let took = sent.elapsed();
            let answer: serde_json::Value =
                serde_json::from_slice(&answer.body).expect("a JSON answer");
            assert_eq!(answer["argmax"], 1, "{answer}");
            took.as_secs_f64() * 1e3
        })
        .collect();
    median(&mut times)
}

fn main() {
    let (_, rounds) = edgeplug_tests::bench::settings();
    let requests: usize = std::env::var("EDGEPLUG_BENCH_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let work = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = LANGUAGES.iter().map(|l| build(work.path(), l)).collect();
    let request_inputs = inputs(&dirs[0]);

    // figures[language][figure] = one value per round
    let mut figures: Vec<std::collections::BTreeMap<String, Vec<f64>>> =
        vec![Default::default(); LANGUAGES.len()];
    for round in 0..rounds {
        for (i, dir) in dirs.iter().enumerate() {
            // Cold: a runtime of its own, no compile cache.
            let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
            let started = Instant::now();
            let fresh = runtime.load(&files(dir, 1)).expect("loads");
            let cold = started.elapsed();
            figures[i]
                .entry("cold load ms".into())
                .or_default()
                .push(cold.as_secs_f64() * 1e3);
            // The same bytes again hit the runtime's compile cache: kept instances.
            let kept = runtime.load(&files(dir, 1000)).expect("loads");
            for (name, request) in &request_inputs {
                for (mode, plugin) in [("fresh instance", &fresh), ("kept instance", &kept)] {
                    figures[i]
                        .entry(format!("{name}, {mode} ms"))
                        .or_default()
                        .push(per_request(plugin, request, requests));
                }
            }
        }
        eprintln!("round {} of {rounds} done", round + 1);
        std::thread::sleep(Duration::from_millis(100));
    }

    let sizes: Vec<u64> = dirs
        .iter()
        .map(|d| std::fs::metadata(d.join("plugin.wasm")).unwrap().len())
        .collect();
    println!(
        "plugin_languages: the model template in each language, medians of {rounds} alternated rounds of {requests} requests"
    );
    println!(
        "{:<44} {:>12} {:>12} {:>12}",
        "", LANGUAGES[0], LANGUAGES[1], LANGUAGES[2]
    );
    println!(
        "{:<44} {:>12.2} {:>12.2} {:>12.2}",
        "component MB",
        sizes[0] as f64 / 1e6,
        sizes[1] as f64 / 1e6,
        sizes[2] as f64 / 1e6
    );
    let mut results = serde_json::Map::new();
    for (i, lang) in LANGUAGES.iter().enumerate() {
        let mut mine = serde_json::Map::new();
        mine.insert("component bytes".into(), json!(sizes[i]));
        for (figure, values) in &mut figures[i] {
            mine.insert(figure.clone(), json!(median(values)));
        }
        results.insert(lang.to_string(), serde_json::Value::Object(mine));
    }
    for figure in figures[0].keys() {
        let value = |i: usize| results[LANGUAGES[i]][figure].as_f64().unwrap();
        println!(
            "{figure:<44} {:>12.3} {:>12.3} {:>12.3}",
            value(0),
            value(1),
            value(2)
        );
    }
    let path = write_json("plugin_languages.json", &results);
    println!("written to {}", path.display());
}

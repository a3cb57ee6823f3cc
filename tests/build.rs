//! Builds every wasm plugin the tests run, with `cargo build --target wasm32-wasip2` into a
//! target directory of its own (so it never waits on the outer cargo's lock), and exposes
//! their paths as constants in `$OUT_DIR/plugins.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (constant name, package name) of each plugin the tests use.
const PLUGINS: &[(&str, &str)] = &[
    ("DIGITS", "edgeplug-plugin-digits"),
    ("IMAGE_CLASSIFIER", "edgeplug-plugin-image-classifier"),
    ("FORECASTER", "edgeplug-plugin-forecaster"),
];

/// The test plugins under `tests/plugins/`, by directory name; each gets a constant
/// `<NAME>_WASM` and is listed in `TEST_PLUGINS`.
const TEST_PLUGINS: &[&str] = &[
    "echo",
    "panic",
    "unreachable",
    "infinite-loop",
    "memory-hog",
    "deep-recursion",
    "huge-output",
    "tensor-hog",
    "wrong-shape",
    "forbidden-import",
    "nondeterministic",
    "counter",
    "wasi-nn-classifier",
    "trainer",
    "escalate",
    "split",
    "edges",
    "quantized",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = root.join("target").join("wasm-plugins");

    for dir in ["wit", "guest-sdk", "plugins", "tests/plugins"] {
        rerun_if_changed(&root.join(dir));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--profile", "plugin", "--target", "wasm32-wasip2"])
        .arg("--target-dir")
        .arg(&target_dir);
    let test_packages: Vec<(String, String)> = TEST_PLUGINS
        .iter()
        .map(|dir| {
            let constant = dir.to_uppercase().replace('-', "_");
            (constant, format!("edgeplug-test-{dir}"))
        })
        .collect();
    let all: Vec<(&str, &str)> = PLUGINS
        .iter()
        .copied()
        .chain(test_packages.iter().map(|(c, p)| (c.as_str(), p.as_str())))
        .collect();
    for (_, package) in &all {
        cmd.args(["-p", package]);
    }
    // The outer build's flags (coverage, sanitizers, host-only RUSTFLAGS) must not leak into
    // the wasm build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        // clippy runs build scripts under its own rustc wrapper; the plugins build plainly
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the wasm plugins");
    assert!(
        status.success(),
        "building the wasm plugins failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)"
    );

    let mut consts = String::new();
    for (name, package) in &all {
        let file = target_dir
            .join("wasm32-wasip2/plugin")
            .join(format!("{}.wasm", package.replace('-', "_")));
        assert!(file.exists(), "{} was not built", file.display());
        consts.push_str(&format!(
            "pub const {name}_WASM: &str = {:?};\n",
            file.display().to_string()
        ));
    }
    consts.push_str("/// (directory under tests/plugins, built component) of every test plugin.\n");
    consts.push_str("pub const TEST_PLUGINS: &[(&str, &str)] = &[\n");
    for (dir, (constant, _)) in TEST_PLUGINS.iter().zip(&test_packages) {
        consts.push_str(&format!("    ({dir:?}, {constant}_WASM),\n"));
    }
    consts.push_str("];\n");
    consts.push_str(&format!(
        "pub const REPO_ROOT: &str = {:?};\n",
        root.display().to_string()
    ));
    std::fs::write(out_dir.join("plugins.rs"), consts).unwrap();
}

fn rerun_if_changed(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "target") {
                    continue;
                }
                rerun_if_changed(&path);
            } else {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}

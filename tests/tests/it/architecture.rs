//! The crate layout's invariants (ARCHITECTURE.md), proved on the dependency graph rather than
//! by reading imports: `cargo tree` over the normal (non-dev) edges of the workspace.

use std::process::Command;

/// `cargo tree` with `args`, one package per line, without the tree drawing.
fn cargo_tree(args: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
        .args(args)
        .current_dir(edgeplug_tests::repo())
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The host crates that depend on `package` directly (this test crate's own harness, which
/// drives the gateway as a client would, is not a host crate).
fn direct_dependents(package: &str) -> Vec<String> {
    let mut dependents: Vec<String> = cargo_tree(&["-i", package, "--depth", "1"])
        .into_iter()
        .filter(|name| name.starts_with("edgeplug") && name != "edgeplug-tests")
        .collect();
    dependents.sort();
    dependents.dedup();
    dependents
}

#[test]
fn the_kernels_crate_knows_neither_wasmtime_nor_tract_nor_http() {
    let deps = cargo_tree(&["-p", "edgeplug-kernels"]);
    assert!(
        deps.iter().any(|d| d == "gemm"),
        "the tree was read: {deps:?}"
    );
    for forbidden in ["wasmtime", "tract-onnx", "tract-core", "hyper", "tokio"] {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "edgeplug-kernels depends on {forbidden}: {deps:?}"
        );
    }
}

#[test]
fn the_models_crate_knows_neither_wasmtime_nor_http() {
    let deps = cargo_tree(&["-p", "edgeplug-models"]);
    assert!(
        deps.iter().any(|d| d == "tract-onnx"),
        "the tree was read: {deps:?}"
    );
    for forbidden in ["wasmtime", "hyper", "ed25519-dalek"] {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "edgeplug-models depends on {forbidden}: {deps:?}"
        );
    }
}

#[test]
fn only_the_bundle_crate_signs_or_verifies() {
    assert_eq!(direct_dependents("ed25519-dalek"), ["edgeplug-bundle"]);
}

#[test]
fn only_the_binary_crate_parses_command_lines() {
    assert_eq!(direct_dependents("clap"), ["edgeplug"]);
}

#[test]
fn only_the_gateway_the_push_client_and_the_camera_sources_speak_http() {
    assert_eq!(
        direct_dependents("hyper"),
        ["edgeplug", "edgeplug-gateway", "edgeplug-triggers"]
    );
}

#[test]
fn only_the_fleet_and_the_triggers_speak_mqtt_and_the_gateway_knows_neither() {
    assert_eq!(
        direct_dependents("rumqttc"),
        ["edgeplug-fleet", "edgeplug-mqtt", "edgeplug-triggers"]
    );
    assert_eq!(direct_dependents("oci-client"), ["edgeplug-fleet"]);
    // The fleet and the triggers drive the gateway; the gateway depends on neither.
    let gateway = cargo_tree(&["-p", "edgeplug-gateway"]);
    assert!(gateway.iter().any(|d| d == "hyper"), "the tree was read");
    for forbidden in [
        "edgeplug-fleet",
        "edgeplug-triggers",
        "edgeplug-mqtt",
        "rumqttc",
        "oci-client",
    ] {
        assert!(
            !gateway.iter().any(|d| d == forbidden),
            "edgeplug-gateway depends on {forbidden}"
        );
    }
}

#[test]
fn only_the_grpc_crate_speaks_grpc_and_the_gateway_does_not_know_it() {
    assert_eq!(direct_dependents("tonic"), ["edgeplug-grpc"]);
    let gateway = cargo_tree(&["-p", "edgeplug-gateway"]);
    assert!(gateway.iter().any(|d| d == "hyper"), "the tree was read");
    // (prost is there, through tract's ONNX reader.)
    for forbidden in ["edgeplug-grpc", "tonic"] {
        assert!(
            !gateway.iter().any(|d| d == forbidden),
            "edgeplug-gateway depends on {forbidden}"
        );
    }
}

#[test]
fn training_needs_only_the_kernels() {
    let deps = cargo_tree(&["-p", "edgeplug-train"]);
    assert!(
        deps.iter().any(|d| d == "edgeplug-kernels"),
        "the tree was read"
    );
    for forbidden in [
        "wasmtime",
        "tract-onnx",
        "hyper",
        "tokio",
        "edgeplug-runtime",
    ] {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "edgeplug-train depends on {forbidden}: {deps:?}"
        );
    }
}

#[test]
fn only_the_models_crate_runs_tract() {
    assert_eq!(direct_dependents("tract-onnx"), ["edgeplug-models"]);
}

#[test]
fn only_the_runtime_embeds_wasmtime() {
    assert_eq!(direct_dependents("wasmtime"), ["edgeplug-runtime"]);
}

#[test]
fn every_test_plugin_is_built_and_used_by_a_test() {
    let root = edgeplug_tests::repo();
    let tests: Vec<String> = std::fs::read_dir(root.join("tests/tests/it"))
        .expect("tests/tests/it is readable")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.file_name().is_some_and(|n| n != "architecture.rs"))
        .map(|path| std::fs::read_to_string(path).expect("a test file is readable"))
        .collect();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("tests/plugins")).expect("tests/plugins is readable") {
        let dir = entry.expect("a directory entry").path();
        if !dir.join("Cargo.toml").is_file() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            edgeplug_tests::TEST_PLUGINS
                .iter()
                .any(|(built, _)| *built == name),
            "tests/plugins/{name} is not built by tests/build.rs"
        );
        // A test names the plugin's directory or its built component's constant.
        let quoted = format!("\"{name}\"");
        let constant = format!("{}_WASM", name.to_uppercase().replace('-', "_"));
        assert!(
            tests
                .iter()
                .any(|source| source.contains(&quoted) || source.contains(&constant)),
            "no integration test uses tests/plugins/{name}"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} test plugins found");
}

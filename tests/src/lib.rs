//! Shared helpers of the integration tests: where the built plugins and fixtures are, and
//! how to load a plugin into a runtime.

use std::path::{Path, PathBuf};

use edgeplug_host::runtime::{LoadedPlugin, PluginFiles, Runtime, RuntimeConfig};

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

/// Reads a .npy fixture.
pub fn npy(path: &str) -> edgeplug_sdk::npy::Npy {
    let bytes = std::fs::read(fixture(path)).expect("fixture exists");
    edgeplug_sdk::npy::parse(&bytes).expect("fixture parses")
}

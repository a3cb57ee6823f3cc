//! The pinned Python and JavaScript componentizers the plugin-author tests and benchmarks
//! build with: `$COMPONENTIZE_PY` / `$COMPONENTIZE_JS` if set, else installed once under the
//! repository's `target/` from PyPI (a venv) and npm (a local `node_modules`), the versions
//! `edgeplug build` is written for. A missing `python3` or `npm` fails the test that needs it,
//! naming the Debian package, instead of skipping it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use edgeplug::cli_build::{COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION};

/// Installs run one at a time: two tests installing into one venv would corrupt it.
static INSTALL: Mutex<()> = Mutex::new(());

fn run(cmd: &mut Command, missing: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install {missing})"));
    assert!(status.success(), "{cmd:?}: {status}");
}

/// componentize-py, the pinned version.
pub fn componentize_py() -> PathBuf {
    if let Some(path) = std::env::var_os("COMPONENTIZE_PY") {
        return path.into();
    }
    let venv = crate::repo().join("target/componentize-py-venv");
    let tool = venv.join("bin/componentize-py");
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !tool.is_file() {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "Debian's python3-venv",
        );
        run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet"])
                .arg(format!("componentize-py=={COMPONENTIZE_PY_VERSION}")),
            "network access to PyPI",
        );
    }
    tool
}

/// componentize-js (ComponentizeJS), the pinned version.
pub fn componentize_js() -> PathBuf {
    if let Some(path) = std::env::var_os("COMPONENTIZE_JS") {
        return path.into();
    }
    let prefix = crate::repo().join("target/componentize-js");
    let tool = prefix.join("node_modules/.bin/componentize-js");
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !tool.is_file() {
        std::fs::create_dir_all(&prefix).unwrap();
        run(
            Command::new("npm")
                .current_dir(&prefix)
                .args(["install", "--silent", "--no-save"])
                .arg(format!(
                    "@bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION}"
                )),
            "Debian's npm",
        );
    }
    tool
}

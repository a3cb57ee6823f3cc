//! `edgeplug build`: the plugin's component, built with the right target and profile and put
//! where `plugin.toml` says; and the check that keeps a stale component from being packed or
//! checked.
//!
//! The version has one home, `plugin.toml`: the bundle, the gateway's anti-downgrade and the
//! describe() check all read it, and plugins in other languages have no Cargo.toml. A Rust
//! plugin's `describe()` reports `CARGO_PKG_VERSION`, so the build refuses a Cargo.toml that
//! says otherwise and names the file to fix.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::SystemTime;

use anyhow::{Context, bail};
use edgeplug_bundle::manifest::Manifest;

/// The target every plugin is built for.
pub const TARGET: &str = "wasm32-wasip2";

/// The componentize-py a Python plugin is built with (`edgeplug new --lang python`'s
/// template and the WIT bindings it imports are this version's).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The ComponentizeJS a JavaScript plugin is built with (`edgeplug new --lang js`'s templates
/// are written for its bindings).
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The plugin directory, holding plugin.toml and the crate's Cargo.toml (or, for a
    /// Python or JavaScript plugin, app.py or app.js and wit/).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The cargo profile (the template's Cargo.toml defines `plugin`: release without DWARF).
    #[arg(long, default_value = "plugin")]
    pub profile: String,
    /// Pass --offline to cargo (build from the local registry cache only).
    #[arg(long)]
    pub offline: bool,
    /// cargo's target directory (default: cargo's, usually DIR/target); plugins built into
    /// one share their compiled dependencies.
    #[arg(long)]
    pub target_dir: Option<PathBuf>,
    /// The componentize-py that builds a Python plugin (default: $COMPONENTIZE_PY, else
    /// componentize-py on PATH).
    #[arg(long, value_name = "PATH")]
    pub componentize_py: Option<PathBuf>,
    /// The componentize-js that builds a JavaScript plugin (default: $COMPONENTIZE_JS, else
    /// componentize-js on PATH).
    #[arg(long, value_name = "PATH")]
    pub componentize_js: Option<PathBuf>,
}

/// What `cargo metadata` says about the plugin's package.
struct Package {
    version: String,
    /// The name of the `cdylib` target, which is the `.wasm` file's stem.
    lib_name: String,
    manifest_path: PathBuf,
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn package(dir: &Path) -> anyhow::Result<Package> {
    let manifest_path = dir.join("Cargo.toml");
    if !manifest_path.is_file() {
        bail!(
            "{} has no Cargo.toml (nor app.py, nor app.js): `edgeplug build` builds Rust, Python and JavaScript plugins (`edgeplug new [--lang python|js]` makes one)",
            dir.display()
        );
    }
    let output = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(&manifest_path)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo (is Rust installed?)")?;
    if !output.status.success() {
        bail!("cargo metadata failed on {}", manifest_path.display());
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata gave no JSON")?;
    let wanted = std::fs::canonicalize(&manifest_path)
        .with_context(|| format!("cannot resolve {}", manifest_path.display()))?;
    let package = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| {
            p["manifest_path"]
                .as_str()
                .and_then(|m| std::fs::canonicalize(m).ok())
                .is_some_and(|m| m == wanted)
        })
        .with_context(|| format!("{} defines no package", manifest_path.display()))?;
    let lib_name = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| {
            t["crate_types"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .and_then(|t| t["name"].as_str())
        .with_context(|| {
            format!(
                "{} has no cdylib library: add `[lib] crate-type = [\"cdylib\"]`",
                manifest_path.display()
            )
        })?;
    Ok(Package {
        version: package["version"].as_str().unwrap_or_default().to_string(),
        lib_name: lib_name.to_string(),
        manifest_path,
    })
}

/// Refuses a Cargo.toml whose version is not plugin.toml's, naming the file to fix.
fn check_version(manifest: &Manifest, package: &Package) -> anyhow::Result<()> {
    let version = manifest.version.to_string();
    if package.version != version {
        bail!(
            "version mismatch: plugin.toml says {version} and {} says {}. plugin.toml is where \
             the version lives (the bundle and the gateway read it); set `version = \"{version}\"` \
             in {} (describe() reports it through CARGO_PKG_VERSION)",
            package.manifest_path.display(),
            package.version,
            package.manifest_path.display(),
        );
    }
    Ok(())
}

/// What a plugin directory is written in, from the files `edgeplug new` puts there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Cargo.toml: a crate.
    Rust,
    /// `app.py` and no Cargo.toml.
    Python,
    /// `app.js` and no Cargo.toml.
    Js,
}

fn source_of(dir: &Path) -> Option<Source> {
    if dir.join("Cargo.toml").exists() {
        Some(Source::Rust)
    } else if dir.join("app.py").is_file() {
        Some(Source::Python)
    } else if dir.join("app.js").is_file() {
        Some(Source::Js)
    } else {
        None
    }
}

/// The tool named by `--flag`, else `$ENV`, else `default` on PATH; and its `--version`
/// output, warned about when it is not the version the templates are written for (another
/// may build them, or generate other bindings than they import).
fn componentizer(
    given: &Option<PathBuf>,
    env: &str,
    default: &str,
    version: &str,
    install: &str,
) -> anyhow::Result<std::ffi::OsString> {
    let tool = match given {
        Some(path) => path.clone().into_os_string(),
        None => std::env::var_os(env).unwrap_or_else(|| default.into()),
    };
    let install = format!("install it with `{install}` (or set {env} to its path)");
    let output = Command::new(&tool)
        .arg("--version")
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}; {install}", tool.to_string_lossy()))?;
    let said = String::from_utf8_lossy(&output.stdout);
    if !said.trim().ends_with(version) {
        eprintln!(
            "warning: {} is {:?}; the template is written for {version}",
            tool.to_string_lossy(),
            said.trim()
        );
    }
    Ok(tool)
}

/// Where a componentizer writes: next to the destination, renamed into place once complete,
/// as the Rust build writes it.
fn component_paths(dir: &Path, manifest: &Manifest) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dest = dir.join(&manifest.component);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if !dir.join("wit").is_dir() {
        bail!(
            "{} has no wit/ directory: the plugin builds against edgeplug's WIT (copy wit/edgeplug.wit from edgeplug)",
            dir.display()
        );
    }
    let temp = dest.with_extension("wasm.building");
    Ok((dest, temp))
}

/// Runs a componentizer and moves its output into place.
fn componentize(mut cmd: Command, temp: &Path, dest: &Path, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        let _ = std::fs::remove_file(temp);
        bail!("{what} failed ({status})");
    }
    std::fs::rename(temp, dest).with_context(|| format!("cannot write {}", dest.display()))
}

/// Builds a Python plugin with componentize-py into the path plugin.toml names.
/// `--stub-wasi`: CPython's libc imports all of WASI, sockets included, which the gateway
/// refuses at load; stubbed, the component imports only edgeplug's interfaces.
fn build_python(args: &BuildArgs, manifest: &Manifest) -> anyhow::Result<PathBuf> {
    let dir = &args.dir;
    let tool = componentizer(
        &args.componentize_py,
        "COMPONENTIZE_PY",
        "componentize-py",
        COMPONENTIZE_PY_VERSION,
        &format!("pip install componentize-py=={COMPONENTIZE_PY_VERSION}"),
    )?;
    let (dest, temp) = component_paths(dir, manifest)?;
    let mut cmd = Command::new(&tool);
    cmd.arg("-d")
        .arg(dir.join("wit"))
        .args(["-w", "plugin", "componentize", "--stub-wasi", "-p"])
        .arg(dir)
        .arg("app")
        .arg("-o")
        .arg(&temp);
    let what = format!("componentize-py on {}", dir.join("app.py").display());
    componentize(cmd, &temp, &dest, &what)?;
    Ok(dest)
}

/// Builds a JavaScript plugin with ComponentizeJS into the path plugin.toml names. The source
/// componentized is app.js after one line that sets `globalThis.EDGEPLUG_PLUGIN` to the
/// manifest's name and version (the version's one home; the module has no file system to
/// read plugin.toml from). `-d ...` disables every WASI feature ComponentizeJS can leave
/// out, so the component imports only edgeplug's interfaces, as the gateway requires.
fn build_js(args: &BuildArgs, manifest: &Manifest) -> anyhow::Result<PathBuf> {
    let dir = &args.dir;
    let tool = componentizer(
        &args.componentize_js,
        "COMPONENTIZE_JS",
        "componentize-js",
        COMPONENTIZE_JS_VERSION,
        &format!("npm install -g @bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION}"),
    )?;
    let (dest, temp) = component_paths(dir, manifest)?;
    let app = dir.join("app.js");
    let source =
        std::fs::read_to_string(&app).with_context(|| format!("cannot read {}", app.display()))?;
    let identity = serde_json::json!({
        "name": manifest.name,
        "version": manifest.version.to_string(),
    });
    // Import declarations are hoisted, so a statement before them changes nothing else; the
    // line numbers of app.js are one off in the component's messages.
    let staged = dir.join(".edgeplug-build");
    std::fs::create_dir_all(&staged)
        .with_context(|| format!("cannot create {}", staged.display()))?;
    let staged_app = staged.join("app.js");
    std::fs::write(
        &staged_app,
        format!("globalThis.EDGEPLUG_PLUGIN = Object.freeze({identity});\n{source}"),
    )
    .with_context(|| format!("cannot write {}", staged_app.display()))?;
    let mut cmd = Command::new(&tool);
    cmd.arg(&staged_app)
        .arg("--wit")
        .arg(dir.join("wit"))
        .args([
            "-n",
            "plugin",
            "-d",
            "stdio",
            "random",
            "clocks",
            "http",
            "fetch-event",
        ])
        .arg("-o")
        .arg(&temp);
    componentize(
        cmd,
        &temp,
        &dest,
        &format!("componentize-js on {}", app.display()),
    )?;
    Ok(dest)
}

/// Builds the plugin in `dir` and copies the component to where plugin.toml says; returns
/// that path.
pub fn build(args: &BuildArgs) -> anyhow::Result<PathBuf> {
    let manifest = Manifest::load(&args.dir)
        .with_context(|| format!("{} is not a plugin directory", args.dir.display()))?;
    match source_of(&args.dir) {
        Some(Source::Python) => return build_python(args, &manifest),
        Some(Source::Js) => return build_js(args, &manifest),
        Some(Source::Rust) | None => {}
    }
    let package = package(&args.dir)?;
    check_version(&manifest, &package)?;
    let mut cmd = cargo();
    cmd.args(["build", "--target", TARGET, "--profile", &args.profile])
        .args(["--message-format", "json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&package.manifest_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if args.offline {
        cmd.arg("--offline");
    }
    if let Some(target_dir) = &args.target_dir {
        cmd.arg("--target-dir").arg(target_dir);
    }
    let output = cmd
        .output()
        .context("cannot run cargo (is Rust installed?)")?;
    if !output.status.success() {
        bail!(
            "cargo build failed ({}); if it says the target is missing: `rustup target add {TARGET}`",
            output.status
        );
    }
    let wasm = built_wasm(&output.stdout, &package)?;
    let dest = args.dir.join(&manifest.component);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    // Written in full, then renamed: a gateway or `edgeplug run` reading the component never
    // sees half of one. A fresh file also gets a fresh mtime, which the staleness check reads.
    edgeplug_bundle::write_file_atomic(&dest, &bytes)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(dest)
}

/// The `.wasm` cargo's JSON messages name for the package's cdylib.
fn built_wasm(stdout: &[u8], package: &Package) -> anyhow::Result<PathBuf> {
    let wanted = std::fs::canonicalize(&package.manifest_path)?;
    let mut found = None;
    for line in stdout.split(|&b| b == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact"
            || message["target"]["name"] != package.lib_name.as_str()
            || message["manifest_path"]
                .as_str()
                .and_then(|m| std::fs::canonicalize(m).ok())
                .is_none_or(|m| m != wanted)
        {
            continue;
        }
        for file in message["filenames"].as_array().into_iter().flatten() {
            if let Some(file) = file.as_str().filter(|f| f.ends_with(".wasm")) {
                found = Some(PathBuf::from(file));
            }
        }
    }
    found.context("cargo built no .wasm for the plugin's library (is it a cdylib?)")
}

/// `edgeplug build`.
pub fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let dest = build(&args)?;
    let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
    println!("built {} ({size} bytes)", dest.display());
    Ok(ExitCode::SUCCESS)
}

/// The newest of a plugin's sources (a Rust plugin's Cargo.toml, build.rs and everything
/// under src/; a Python or JavaScript plugin's top-level `.py` or `.js` files and wit/): the
/// path and its modification time, or `None` when `dir` holds none of them.
fn newest_source(dir: &Path) -> anyhow::Result<Option<(PathBuf, SystemTime)>> {
    let extension = match source_of(dir) {
        None => return Ok(None),
        Some(Source::Rust) => None,
        Some(Source::Python) => Some("py"),
        Some(Source::Js) => Some("js"),
    };
    let mut pending = match extension {
        None => vec![
            dir.join("Cargo.toml"),
            dir.join("build.rs"),
            dir.join("src"),
        ],
        Some(extension) => {
            let mut sources = vec![dir.join("wit")];
            for entry in
                std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?
            {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == extension) {
                    sources.push(path);
                }
            }
            sources
        }
    };
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // build.rs and src/ are optional
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
            {
                pending.push(entry?.path());
            }
        } else {
            let modified = meta.modified()?;
            if newest.as_ref().is_none_or(|(_, t)| modified > *t) {
                newest = Some((path, modified));
            }
        }
    }
    Ok(newest)
}

/// Refuses the component plugin.toml names in `dir` when a source of the plugin's crate
/// changed after it was built, so a stale component is never packed or checked. A directory
/// without a crate (a prebuilt component), or whose manifest does not load (the caller reports
/// that), passes.
pub fn refuse_stale_component(dir: &Path) -> anyhow::Result<()> {
    let Ok(manifest) = Manifest::load(dir) else {
        return Ok(());
    };
    let component = dir.join(&manifest.component);
    let Ok(built) = std::fs::metadata(&component).and_then(|m| m.modified()) else {
        return Ok(()); // missing: the caller says so
    };
    if let Some((source, changed)) = newest_source(dir)?
        && changed > built
    {
        bail!(
            "{} is older than its sources ({} changed after it was built): run `edgeplug build {}` first",
            component.display(),
            source.display(),
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn set_mtime(path: &Path, time: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(time)
            .unwrap();
    }

    #[test]
    fn a_component_older_than_a_source_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(
            dir.join("plugin.toml"),
            "name = \"p\"\nversion = \"0.1.0\"\nworld = \"edgeplug:plugin/plugin@0.1.0\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("Cargo.toml"), "[package]\n").unwrap();
        std::fs::create_dir_all(dir.join("src/nested")).unwrap();
        std::fs::write(dir.join("src/lib.rs"), "").unwrap();
        std::fs::write(dir.join("src/nested/m.rs"), "").unwrap();
        std::fs::write(dir.join("plugin.wasm"), "\0asm").unwrap();
        let now = SystemTime::now();
        for f in ["Cargo.toml", "src/lib.rs", "src/nested/m.rs"] {
            set_mtime(&dir.join(f), now - Duration::from_secs(60));
        }
        set_mtime(&dir.join("plugin.wasm"), now);
        refuse_stale_component(dir).unwrap();

        set_mtime(&dir.join("src/nested/m.rs"), now + Duration::from_secs(5));
        let err = refuse_stale_component(dir).unwrap_err().to_string();
        assert!(err.contains("older than its sources"), "{err}");
        assert!(err.contains("m.rs"), "{err}");
        assert!(err.contains("edgeplug build"), "{err}");

        // No crate: a prebuilt component is whatever it is.
        std::fs::remove_file(dir.join("Cargo.toml")).unwrap();
        refuse_stale_component(dir).unwrap();

        // A Python plugin: its .py files count.
        std::fs::write(dir.join("app.py"), "").unwrap();
        set_mtime(&dir.join("app.py"), now - Duration::from_secs(60));
        refuse_stale_component(dir).unwrap();
        set_mtime(&dir.join("app.py"), now + Duration::from_secs(5));
        let err = refuse_stale_component(dir).unwrap_err().to_string();
        assert!(err.contains("app.py changed"), "{err}");

        // A JavaScript plugin: its .js files count.
        std::fs::remove_file(dir.join("app.py")).unwrap();
        std::fs::write(dir.join("app.js"), "").unwrap();
        set_mtime(&dir.join("app.js"), now - Duration::from_secs(60));
        refuse_stale_component(dir).unwrap();
        set_mtime(&dir.join("app.js"), now + Duration::from_secs(5));
        let err = refuse_stale_component(dir).unwrap_err().to_string();
        assert!(err.contains("app.js changed"), "{err}");
    }

    #[test]
    fn a_cargo_version_other_than_the_manifests_names_the_file_to_fix() {
        let manifest = Manifest::parse(
            "name = \"p\"\nversion = \"0.2.0\"\nworld = \"edgeplug:plugin/plugin@0.1.0\"\n",
        )
        .unwrap();
        let package = Package {
            version: "0.1.0".into(),
            lib_name: "p".into(),
            manifest_path: PathBuf::from("/x/p/Cargo.toml"),
        };
        let err = check_version(&manifest, &package).unwrap_err().to_string();
        assert!(err.contains("plugin.toml says 0.2.0"), "{err}");
        assert!(err.contains("/x/p/Cargo.toml says 0.1.0"), "{err}");
        assert!(
            err.contains("set `version = \"0.2.0\"` in /x/p/Cargo.toml"),
            "{err}"
        );
        let same = Package {
            version: "0.2.0".into(),
            ..package
        };
        check_version(&manifest, &same).unwrap();
    }
}

//! A plugin author's path, from a directory outside the repository, typed as the README says:
//! `edgeplug new` for each template, `build`, `conformance`, `selftest record`, `keygen`,
//! `pack --key` and `verify`, with no hand edits; then the refusals an author meets (a stale
//! component, a version in two places that disagree). Each command runs in process through
//! the CLI's own argument parser.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

use edgeplug_tests::edgeplug_cli as edgeplug;

#[test]
fn the_sdks_wit_is_a_copy_of_the_repositorys() {
    // The SDK carries the WIT so that it packages and builds outside the repository; wit/ is
    // the source of truth, so a change there must be copied (`cp wit/*.wit guest-sdk/wit/`).
    // (wit/deps holds other packages, wasi:nn, which the SDK does not use.)
    let names = |dir: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".wit"))
            .collect();
        names.sort();
        names
    };
    let (source, copy) = (root().join("wit"), root().join("guest-sdk/wit"));
    assert_eq!(names(&source), names(&copy));
    for name in names(&source) {
        assert!(
            std::fs::read(source.join(&name)).unwrap() == std::fs::read(copy.join(&name)).unwrap(),
            "guest-sdk/wit/{} differs from wit/{}: copy it (`cp wit/*.wit guest-sdk/wit/`)",
            name.to_string_lossy(),
            name.to_string_lossy()
        );
    }
}

#[test]
fn every_template_builds_passes_conformance_and_signs_outside_the_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    assert!(
        !work.starts_with(root()),
        "the plugins must be outside the repository"
    );
    // The plugins share one target directory, under the repository's target/ so that a
    // later run reuses the compiled SDK and its dependencies.
    let target_dir = root().join("target/author-plugins");
    let cache = work.join("cache");
    let bundles = work.join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();

    assert_eq!(
        edgeplug(&[&"keygen", &"--out", &work.join("keys")]).unwrap(),
        ExitCode::SUCCESS
    );
    let trust = work.join("trust");
    std::fs::create_dir_all(&trust).unwrap();
    std::fs::copy(work.join("keys/signing.pub"), trust.join("signing.pub")).unwrap();

    let mut moved = Vec::new();
    for template in ["minimal", "image", "tensor", "model"] {
        let name = format!("my-{template}");
        let dir = work.join(&name);
        let ok = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
            let code = edgeplug(args).unwrap_or_else(|e| panic!("{template}: {e:#}"));
            assert_eq!(code, ExitCode::SUCCESS, "{template}: a command failed");
        };
        ok(&[&"new", &name, &"--template", &template, &"--dir", &dir]);
        ok(&[&"build", &dir, &"--offline", &"--target-dir", &target_dir]);
        let wasm = std::fs::read(dir.join("plugin.wasm")).unwrap();
        assert!(wasm.starts_with(b"\0asm"), "{template}: not a component");
        // Recording the expectations the template ships reproduces them: the format is the
        // one the self-tests read, and the shipped answers are the plugin's own. (Checked
        // after every template, so that one run names every template whose answers moved.)
        let expect = dir.join("selftest/input.expect.json");
        let shipped: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&expect).unwrap()).unwrap();
        std::fs::remove_file(&expect).unwrap();
        ok(&[&"selftest", &"record", &dir, &"--cache-dir", &cache]);
        let text = std::fs::read_to_string(&expect).unwrap();
        // Within the self-tests' tolerance: kernels differ in the last bits between CPUs.
        let recorded = serde_json::from_str::<serde_json::Value>(&text).unwrap();
        if edgeplug_runtime::selftest::compare(&recorded, &shipped, 1e-4, "$").is_err() {
            moved.push(format!("{template}: shipped {shipped}, recorded {text}"));
        }
        ok(&[
            &"conformance",
            &dir,
            &"--cache-dir",
            &cache,
            &"--latency-runs",
            &"3",
        ]);

        ok(&[
            &"pack",
            &dir,
            &"--key",
            &work.join("keys/signing.key"),
            &"--out",
            &bundles,
        ]);
        let bundle = bundles.join(format!("{name}-0.1.0.epk"));
        ok(&[&"verify", &"--trust", &trust, &bundle]);
        // The signed bundle passes too, as a gateway would receive it.
        ok(&[
            &"conformance",
            &bundle,
            &"--trust",
            &trust,
            &"--cache-dir",
            &cache,
            &"--latency-runs",
            &"3",
        ]);
    }

    assert!(
        moved.is_empty(),
        "update host/cli/templates/*/selftest/input.expect.json: {moved:#?}"
    );

    // An edited source after the build: pack and conformance refuse the stale component.
    let dir = work.join("my-minimal");
    std::fs::File::options()
        .write(true)
        .open(dir.join("src/lib.rs"))
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    for args in [
        vec!["conformance".to_string()],
        vec!["pack".to_string()],
        vec!["selftest".to_string(), "record".to_string()],
    ] {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|a| a as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        args.push(&dir);
        let err = format!("{:#}", edgeplug(&args).unwrap_err());
        assert!(err.contains("older than its sources"), "{err}");
        assert!(err.contains("src/lib.rs"), "{err}");
        assert!(err.contains("edgeplug build"), "{err}");
    }

    // A version bumped in Cargo.toml only: the build names plugin.toml as the version's home
    // and Cargo.toml as the file to fix, before compiling anything.
    let cargo_toml = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&cargo_toml).unwrap();
    std::fs::write(
        &cargo_toml,
        text.replace("version = \"0.1.0\"", "version = \"0.2.0\""),
    )
    .unwrap();
    let err = format!(
        "{:#}",
        edgeplug(&[&"build", &dir, &"--offline", &"--target-dir", &target_dir]).unwrap_err()
    );
    assert!(
        err.contains("plugin.toml says 0.1.0")
            && err.contains("Cargo.toml says 0.2.0")
            && err.contains("set `version = \"0.1.0\"`"),
        "{err}"
    );
}

/// The Python and JavaScript templates, from a directory outside the repository, as the README
/// says: `new --lang`, `build` (with the pinned componentize-py and ComponentizeJS, installed
/// by `edgeplug_tests::toolchains` from PyPI and npm when missing), `conformance`, `pack`,
/// `verify`, then a push to a gateway. The model templates answer the Rust template's recorded
/// numbers for the same inputs (their self-tests are the Rust template's), and a 64x64 JSON
/// image resized in the sandbox to the same digit; the image templates decode PNGs of every
/// colour type and filter to PIL's gray values (their self-tests, run by conformance).
#[test]
fn python_and_javascript_templates_build_pass_conformance_sign_and_serve() {
    use edgeplug_tests::gateway::{TestGateway, assert_status, dir_bundle, error_code, json_of};
    use edgeplug_tests::toolchains::{componentize_js, componentize_py};

    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let cache = work.join("cache");
    let bundles = work.join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    assert_eq!(
        edgeplug(&[&"keygen", &"--out", &work.join("keys")]).unwrap(),
        ExitCode::SUCCESS
    );
    let trust = work.join("trust");
    std::fs::create_dir_all(&trust).unwrap();
    std::fs::copy(work.join("keys/signing.pub"), trust.join("signing.pub")).unwrap();

    let mut models = Vec::new();
    for (lang, flag, tool, source) in [
        ("python", "--componentize-py", componentize_py(), "app.py"),
        ("js", "--componentize-js", componentize_js(), "app.js"),
    ] {
        for template in ["minimal", "image", "tensor", "model"] {
            let name = format!("{lang}-{template}");
            let dir = work.join(&name);
            let ok = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
                let code = edgeplug(args).unwrap_or_else(|e| panic!("{name}: {e:#}"));
                assert_eq!(code, ExitCode::SUCCESS, "{name}: a command failed");
            };
            ok(&[
                &"new",
                &name,
                &"--lang",
                &lang,
                &"--template",
                &template,
                &"--dir",
                &dir,
            ]);
            // The version has one home, plugin.toml: the build puts it into the component,
            // and conformance's describe check compares the two.
            let manifest = dir.join("plugin.toml");
            let text = std::fs::read_to_string(&manifest).unwrap();
            std::fs::write(
                &manifest,
                text.replace("version = \"0.1.0\"", "version = \"0.3.1\""),
            )
            .unwrap();
            ok(&[&"build", &dir, &flag, &tool]);
            let wasm = std::fs::read(dir.join("plugin.wasm")).unwrap();
            assert!(wasm.starts_with(b"\0asm"), "{name}: not a component");
            ok(&[
                &"conformance",
                &dir,
                &"--cache-dir",
                &cache,
                &"--latency-runs",
                &"3",
            ]);
            ok(&[
                &"pack",
                &dir,
                &"--key",
                &work.join("keys/signing.key"),
                &"--out",
                &bundles,
            ]);
            let bundle = bundles.join(format!("{name}-0.3.1.epk"));
            ok(&[&"verify", &"--trust", &trust, &bundle]);

            // An edited source makes the component stale until it is built again.
            std::fs::File::options()
                .write(true)
                .open(dir.join(source))
                .unwrap()
                .set_modified(SystemTime::now() + Duration::from_secs(60))
                .unwrap();
            let err = format!("{:#}", edgeplug(&[&"conformance", &dir]).unwrap_err());
            assert!(err.contains("older than its sources"), "{name}: {err}");
            assert!(err.contains(source), "{name}: {err}");
            if template == "model" {
                ok(&[&"build", &dir, &flag, &tool]);
                models.push((name, dir));
            }
        }
    }
    // Served by a gateway: the 8x8 digit of the self-test drawn 8 times larger (64x64, 0-255)
    // comes out of the sandbox's area resize as the same 16x16 input.
    let shipped: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("host/cli/templates/model/selftest/input.expect.json")).unwrap(),
    )
    .unwrap();
    let big = edgeplug_tests::model_template_digit_64x64();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let gateway = TestGateway::start("").await;
        for (name, dir) in &models {
            let signed = dir_bundle(&gateway.key, dir, &dir.join("plugin.wasm"));
            assert_status(&gateway.push(name, signed).await, 200);
            let path = format!("/v1/plugins/{name}/infer");
            let answer = gateway.post(&path, "application/json", big.clone()).await;
            assert_status(&answer, 200);
            let answer = json_of(&answer);
            assert_eq!(answer["argmax"], 1, "{name}: {answer}");
            edgeplug_runtime::selftest::compare(&answer, &shipped, 1e-4, "$")
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let ragged = gateway
                .post(&path, "application/json", r#"{"image": [[1, 2], [3]]}"#)
                .await;
            assert_status(&ragged, 400);
            assert_eq!(error_code(&ragged), "invalid-argument");
            assert!(
                json_of(&ragged)["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("row 1 is not a list of 2 values"),
                "{name}: {}",
                json_of(&ragged)
            );
        }
    });
}

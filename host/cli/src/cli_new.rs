//! `edgeplug new`: a plugin directory from a template, ready to build, check and sign.
//!
//! The templates are files under `host/cli/templates/`, compiled into the binary, so the
//! command needs nothing but itself and the SDK it points the new crate at.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

/// Which plugin to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// JSON in, JSON out: doubles an array of numbers on a host kernel.
    Minimal,
    /// A PNG or JPEG decoded in the sandbox, its mean brightness computed on the host.
    Image,
    /// A named float32 tensor (Open Inference Protocol v2) or a `.npy` body in, a softmax out.
    Tensor,
    /// An ONNX model granted in the manifest and run on the host (a small digit CNN to start
    /// from): a float32 tensor in, the model's first output and its argmax out.
    Model,
}

/// What the plugin is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A crate depending on edgeplug-sdk, built by cargo.
    Rust,
    /// A module for componentize-py (PyPI), with the WIT it is built against (the image
    /// template decodes PNG only).
    Python,
    /// An ES module for ComponentizeJS (npm), with the WIT it is built against (the image
    /// template decodes PNG only).
    Js,
}

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The plugin's name (1-64 characters of a-z, 0-9 and '-', starting with a letter); also
    /// the directory created, unless --dir says otherwise.
    pub name: String,
    /// What the plugin starts as.
    #[arg(long, value_enum, default_value = "minimal")]
    pub template: Template,
    /// The language the plugin is written in.
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Lang,
    /// The directory to create (default: ./NAME). It must not exist or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Depend on the SDK at this path (default: this edgeplug checkout's guest-sdk).
    #[arg(long, value_name = "P", conflicts_with = "sdk_git")]
    pub path_to_sdk: Option<PathBuf>,
    /// Depend on the SDK from this git repository (the edgeplug repository) instead of a path.
    #[arg(long, value_name = "URL")]
    pub sdk_git: Option<String>,
}

/// The files every template in a language other than Rust shares: componentize-py and
/// ComponentizeJS build against the WIT, so the plugin carries a copy of the world it targets.
fn foreign_common(lang: Lang) -> Vec<(&'static str, &'static [u8])> {
    let gitignore: &[u8] = match lang {
        Lang::Python => include_bytes!("../templates/python/gitignore"),
        _ => include_bytes!("../templates/js/gitignore"),
    };
    vec![
        (".gitignore", gitignore),
        (
            "wit/edgeplug.wit",
            include_bytes!("../../../wit/edgeplug.wit"),
        ),
    ]
}

/// The version of the WIT package the templates carry (`package edgeplug:plugin@X;`): a
/// JavaScript module's imports and a manifest's world name must say the version of the WIT
/// file they are built against.
fn wit_version() -> &'static str {
    include_str!("../../../wit/edgeplug.wit")
        .lines()
        .find_map(|line| line.trim().strip_prefix("package edgeplug:plugin@"))
        .and_then(|rest| rest.strip_suffix(';'))
        .expect("wit/edgeplug.wit declares package edgeplug:plugin@VERSION")
}

/// The model template's model and self-tests, the same in every language: the three answer
/// the same inputs with the same numbers. The model is the digits CNN of tests/fixtures/models
/// (79 KB), the repository's own.
const MODEL_FILES: [(&str, &[u8]); 5] = [
    (
        "model.onnx",
        include_bytes!("../templates/model/model.onnx"),
    ),
    (
        "selftest/input.npy",
        include_bytes!("../templates/model/selftest/input.npy"),
    ),
    (
        "selftest/input.expect.json",
        include_bytes!("../templates/model/selftest/input.expect.json"),
    ),
    (
        "selftest/image.json",
        include_bytes!("../templates/model/selftest/image.json"),
    ),
    (
        "selftest/image.expect.json",
        include_bytes!("../templates/model/selftest/image.expect.json"),
    ),
];

/// The tensor template's self-test, the same in every language.
const TENSOR_FILES: [(&str, &[u8]); 2] = [
    (
        "selftest/input.npy",
        include_bytes!("../templates/tensor/selftest/input.npy"),
    ),
    (
        "selftest/input.expect.json",
        include_bytes!("../templates/tensor/selftest/input.expect.json"),
    ),
];

/// A Python or JavaScript template's own files; `None` for Rust, whose templates are crates.
fn foreign_files(lang: Lang, template: Template) -> Option<Vec<(&'static str, &'static [u8])>> {
    let minimal_tests: [(&str, &[u8]); 2] = [
        (
            "selftest/input.json",
            include_bytes!("../templates/python/minimal/selftest/input.json"),
        ),
        (
            "selftest/input.expect.json",
            include_bytes!("../templates/python/minimal/selftest/input.expect.json"),
        ),
    ];
    // The image templates decode PNG only (their own decoders, in the language itself), so
    // their self-tests are PNGs of every colour type and filter, checked against PIL.
    let image_tests: [(&str, &[u8]); 8] = [
        (
            "selftest/input.png",
            include_bytes!("../templates/python/image/selftest/input.png"),
        ),
        (
            "selftest/input.expect.json",
            include_bytes!("../templates/python/image/selftest/input.expect.json"),
        ),
        (
            "selftest/rgb.png",
            include_bytes!("../templates/python/image/selftest/rgb.png"),
        ),
        (
            "selftest/rgb.expect.json",
            include_bytes!("../templates/python/image/selftest/rgb.expect.json"),
        ),
        (
            "selftest/palette.png",
            include_bytes!("../templates/python/image/selftest/palette.png"),
        ),
        (
            "selftest/palette.expect.json",
            include_bytes!("../templates/python/image/selftest/palette.expect.json"),
        ),
        (
            "selftest/filters.png",
            include_bytes!("../templates/python/image/selftest/filters.png"),
        ),
        (
            "selftest/filters.expect.json",
            include_bytes!("../templates/python/image/selftest/filters.expect.json"),
        ),
    ];
    // A template's source and manifest, from templates/LANG/TEMPLATE/.
    macro_rules! foreign_template {
        ($dir:literal, $source:literal) => {
            (
                (
                    $source,
                    include_bytes!(concat!("../templates/", $dir, "/", $source)) as &[u8],
                ),
                include_bytes!(concat!("../templates/", $dir, "/plugin.toml")) as &[u8],
            )
        };
    }
    let ((source, manifest), tests) = match (lang, template) {
        (Lang::Rust, _) => return None,
        (Lang::Python, Template::Minimal) => (
            foreign_template!("python/minimal", "app.py"),
            minimal_tests.to_vec(),
        ),
        (Lang::Python, Template::Image) => (
            foreign_template!("python/image", "app.py"),
            image_tests.to_vec(),
        ),
        (Lang::Python, Template::Tensor) => (
            foreign_template!("python/tensor", "app.py"),
            TENSOR_FILES.to_vec(),
        ),
        (Lang::Python, Template::Model) => (
            foreign_template!("python/model", "app.py"),
            MODEL_FILES.to_vec(),
        ),
        (Lang::Js, Template::Minimal) => (
            foreign_template!("js/minimal", "app.js"),
            minimal_tests.to_vec(),
        ),
        (Lang::Js, Template::Image) => (
            foreign_template!("js/image", "app.js"),
            image_tests.to_vec(),
        ),
        (Lang::Js, Template::Tensor) => (
            foreign_template!("js/tensor", "app.js"),
            TENSOR_FILES.to_vec(),
        ),
        (Lang::Js, Template::Model) => (
            foreign_template!("js/model", "app.js"),
            MODEL_FILES.to_vec(),
        ),
    };
    let mut files = foreign_common(lang);
    files.push(source);
    files.push(("plugin.toml", manifest));
    files.extend(tests);
    Some(files)
}

/// A template's files: (path in the new plugin, contents).
fn files(template: Template) -> Vec<(&'static str, &'static [u8])> {
    let common: [(&str, &[u8]); 2] = [
        ("Cargo.toml", include_bytes!("../templates/Cargo.toml.tmpl")),
        (".gitignore", include_bytes!("../templates/gitignore.tmpl")),
    ];
    let own: Vec<(&str, &[u8])> = match template {
        Template::Minimal => vec![
            (
                "src/lib.rs",
                include_str!("../templates/minimal/lib.rs").as_bytes(),
            ),
            (
                "plugin.toml",
                include_str!("../templates/minimal/plugin.toml").as_bytes(),
            ),
            (
                "selftest/input.json",
                include_bytes!("../templates/minimal/selftest/input.json"),
            ),
            (
                "selftest/input.expect.json",
                include_bytes!("../templates/minimal/selftest/input.expect.json"),
            ),
        ],
        Template::Image => vec![
            (
                "src/lib.rs",
                include_str!("../templates/image/lib.rs").as_bytes(),
            ),
            (
                "plugin.toml",
                include_str!("../templates/image/plugin.toml").as_bytes(),
            ),
            // a binary file: bytes, not text
            (
                "selftest/input.png",
                include_bytes!("../templates/image/selftest/input.png"),
            ),
            (
                "selftest/input.expect.json",
                include_bytes!("../templates/image/selftest/input.expect.json"),
            ),
        ],
        Template::Tensor => vec![
            (
                "src/lib.rs",
                include_str!("../templates/tensor/lib.rs").as_bytes(),
            ),
            (
                "plugin.toml",
                include_str!("../templates/tensor/plugin.toml").as_bytes(),
            ),
        ],
        Template::Model => vec![
            (
                "src/lib.rs",
                include_str!("../templates/model/lib.rs").as_bytes(),
            ),
            (
                "plugin.toml",
                include_str!("../templates/model/plugin.toml").as_bytes(),
            ),
        ],
    };
    let shared: &[(&str, &[u8])] = match template {
        Template::Model => &MODEL_FILES,
        Template::Tensor => &TENSOR_FILES,
        Template::Minimal | Template::Image => &[],
    };
    common
        .into_iter()
        .chain(own)
        .chain(shared.iter().copied())
        .collect()
}

/// The SDK dependency line of the new Cargo.toml.
fn sdk_dependency(args: &NewArgs) -> anyhow::Result<String> {
    if let Some(url) = &args.sdk_git {
        return Ok(format!("edgeplug-sdk = {{ git = {url:?} }}"));
    }
    let path = match &args.path_to_sdk {
        Some(path) => path.clone(),
        // The checkout this binary was built from; gone if the binary was copied elsewhere.
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-sdk"),
    };
    let path = std::fs::canonicalize(&path).with_context(|| {
        format!(
            "the SDK is not at {}: pass --path-to-sdk (an edgeplug checkout's guest-sdk) or --sdk-git URL",
            path.display()
        )
    })?;
    if !path.join("Cargo.toml").is_file() || !path.join("wit").is_dir() {
        bail!(
            "{} is not edgeplug's guest-sdk (no Cargo.toml and wit/ there)",
            path.display()
        );
    }
    let path = path
        .to_str()
        .with_context(|| format!("the SDK path {} is not UTF-8", path.display()))?;
    // A registry version would go here too once the SDK is published.
    Ok(format!("edgeplug-sdk = {{ path = {path:?} }}"))
}

/// What a plugin name must be: the manifest's rule (a-z, 0-9, '-', at most 64) and cargo's
/// (a package name starts with a letter).
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        bail!(
            "plugin name {name:?} must be 1-64 characters of a-z, 0-9 and '-', start with a letter and not end with '-'"
        );
    }
    Ok(())
}

/// Writes the plugin directory; returns it.
pub fn create(args: &NewArgs) -> anyhow::Result<PathBuf> {
    check_name(&args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        let empty = dir.is_dir()
            && std::fs::read_dir(&dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .next()
                .is_none();
        if !empty {
            bail!(
                "{} already exists and is not an empty directory",
                dir.display()
            );
        }
    }
    let (files, sdk) = match args.lang {
        Lang::Rust => (files(args.template), sdk_dependency(args)?),
        lang => (
            foreign_files(lang, args.template).expect("every template exists in every language"),
            String::new(),
        ),
    };
    let extra = match args.template {
        Template::Image | Template::Model => "serde_json = \"1\"\n",
        Template::Minimal | Template::Tensor => "",
    };
    for (path, contents) in files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let contents: Vec<u8> = match std::str::from_utf8(contents) {
            // Only the text files have placeholders; the binary inputs go as they are.
            Ok(text) if !path.starts_with("selftest/") && !path.ends_with(".onnx") => text
                .replace("{{name}}", &args.name)
                .replace("{{sdk_dependency}}", &sdk)
                .replace("{{extra_dependencies}}", extra)
                .replace("{{wit_version}}", wit_version())
                .into_bytes(),
            _ => contents.to_vec(),
        };
        std::fs::write(&target, contents)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(dir)
}

/// `edgeplug new`.
pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    let dir = create(&args)?;
    let shown = dir.display();
    println!("created {shown} ({:?} template)", args.template);
    println!("next:");
    match args.lang {
        Lang::Python => println!(
            "  pip install componentize-py=={}   # if not installed",
            crate::cli_build::COMPONENTIZE_PY_VERSION
        ),
        Lang::Js => println!(
            "  npm install -g @bytecodealliance/componentize-js@{}   # if not installed",
            crate::cli_build::COMPONENTIZE_JS_VERSION
        ),
        Lang::Rust => {}
    }
    println!("  edgeplug build {shown}");
    println!("  edgeplug conformance {shown}");
    println!("  edgeplug keygen --out keys && edgeplug pack {shown} --key keys/signing.key");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str, dir: &Path, template: Template) -> NewArgs {
        NewArgs {
            name: name.to_string(),
            template,
            lang: Lang::Rust,
            dir: Some(dir.to_path_buf()),
            path_to_sdk: None,
            sdk_git: None,
        }
    }

    #[test]
    fn every_template_fills_its_placeholders() {
        let tmp = tempfile::tempdir().unwrap();
        for template in [
            Template::Minimal,
            Template::Image,
            Template::Tensor,
            Template::Model,
        ] {
            let dir = tmp.path().join(format!("{template:?}"));
            create(&args("my-plugin", &dir, template)).unwrap();
            for file in ["Cargo.toml", "plugin.toml", "src/lib.rs", ".gitignore"] {
                let text = std::fs::read_to_string(dir.join(file)).unwrap();
                assert!(!text.contains("{{"), "{template:?} {file}: {text}");
            }
            let manifest = edgeplug_bundle::manifest::Manifest::load(&dir).unwrap();
            assert_eq!(manifest.name, "my-plugin");
            for test in &manifest.self_tests {
                assert!(
                    dir.join(&test.input).is_file(),
                    "{template:?}: {}",
                    test.input
                );
                assert!(
                    dir.join(&test.expect).is_file(),
                    "{template:?}: {}",
                    test.expect
                );
            }
            let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            assert!(cargo.contains("name = \"my-plugin\""), "{cargo}");
            assert!(cargo.contains("edgeplug-sdk = { path = \"/"), "{cargo}");
        }
    }

    #[test]
    fn python_and_js_templates_carry_their_wit_and_no_cargo_toml() {
        let tmp = tempfile::tempdir().unwrap();
        let repo_wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit/edgeplug.wit");
        for (lang, source) in [(Lang::Python, "app.py"), (Lang::Js, "app.js")] {
            for template in [
                Template::Minimal,
                Template::Image,
                Template::Tensor,
                Template::Model,
            ] {
                let dir = tmp.path().join(format!("{lang:?}-{template:?}"));
                let mut a = args("my-plugin", &dir, template);
                a.lang = lang;
                // No SDK is needed: a missing one must not matter.
                a.path_to_sdk = Some(tmp.path().join("nowhere"));
                create(&a).unwrap();
                let app = std::fs::read_to_string(dir.join(source)).unwrap();
                assert!(!app.contains("{{"), "{lang:?} {template:?}: {app}");
                let toml = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
                let world = format!("world = \"edgeplug:plugin/plugin@{}\"", wit_version());
                assert!(toml.contains(&world), "{lang:?} {template:?}: {toml}");
                if lang == Lang::Js {
                    let types = format!("'edgeplug:plugin/types@{}'", wit_version());
                    assert!(app.contains(&types), "{template:?}: {app}");
                }
                assert!(!dir.join("Cargo.toml").exists());
                let wit = std::fs::read(dir.join("wit/edgeplug.wit")).unwrap();
                assert_eq!(wit, std::fs::read(&repo_wit).unwrap());
                let manifest = edgeplug_bundle::manifest::Manifest::load(&dir).unwrap();
                assert_eq!(manifest.name, "my-plugin");
                assert!(!manifest.self_tests.is_empty(), "{lang:?} {template:?}");
                for test in &manifest.self_tests {
                    assert!(
                        dir.join(&test.input).is_file() && dir.join(&test.expect).is_file(),
                        "{lang:?} {template:?}: {}",
                        test.input
                    );
                }
                if template == Template::Model {
                    assert!(manifest.grants.models.contains_key("model"));
                    assert!(dir.join("model.onnx").is_file());
                }
            }
        }
        let app = std::fs::read_to_string(tmp.path().join("Python-Minimal/app.py")).unwrap();
        assert!(app.contains("name=\"my-plugin\""), "{app}");
    }

    #[test]
    fn a_git_sdk_is_a_git_dependency() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = args("p", &tmp.path().join("p"), Template::Minimal);
        a.sdk_git = Some("https://example.org/edgeplug.git".into());
        create(&a).unwrap();
        let cargo = std::fs::read_to_string(tmp.path().join("p/Cargo.toml")).unwrap();
        assert!(
            cargo.contains("edgeplug-sdk = { git = \"https://example.org/edgeplug.git\" }"),
            "{cargo}"
        );
    }

    #[test]
    fn bad_names_and_existing_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["", "My", "9lives", "a_b", "trailing-", &"a".repeat(65)] {
            let err = create(&args(name, &tmp.path().join("x"), Template::Minimal)).unwrap_err();
            assert!(err.to_string().contains("plugin name"), "{name}: {err}");
        }
        std::fs::write(tmp.path().join("file"), "x").unwrap();
        let err = create(&args("p", tmp.path(), Template::Minimal)).unwrap_err();
        assert!(err.to_string().contains("not an empty directory"), "{err}");
        let mut a = args("p", &tmp.path().join("q"), Template::Minimal);
        a.path_to_sdk = Some(tmp.path().join("nowhere"));
        let err = create(&a).unwrap_err();
        assert!(err.to_string().contains("--path-to-sdk"), "{err}");
    }
}

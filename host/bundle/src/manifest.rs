//! The plugin manifest, `plugin.toml`: what a plugin is, what it may open and what it may use.
//!
//! Parsing is strict: an unknown key anywhere is an error, so a typo never silently falls
//! back to a default. Every default is stated where the field is defined.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The WIT world this host implements. A manifest names the world it was built against;
/// the host accepts the same package version.
pub const WORLD: &str = "edgeplug:plugin/plugin@0.1.5";

/// The world of a plugin that also learns on the gateway (added in 0.1.4): [`WORLD`] plus the
/// `learn` import and the `learner` export.
pub const LEARNING_WORLD: &str = "edgeplug:plugin/learning-plugin@0.1.5";

/// The learning world as 0.1.4 first named it, which a plugin built then still declares.
const LEARNING_WORLD_0_1_4: &str = "edgeplug:plugin/learning-plugin@0.1.4";

/// Every version of the plugin world this host serves: 0.1.1 added the `train` interface,
/// 0.1.2 the `upstream` interface, 0.1.3 functions to `ops` (elementwise math, reductions),
/// 0.1.4 `head.load` and the learning world, 0.1.5 quantized tensors and ops; a plugin built
/// against an older one (which imports none of what came later) runs unchanged.
pub const PLUGIN_WORLDS: [&str; 8] = [
    "edgeplug:plugin/plugin@0.1.0",
    "edgeplug:plugin/plugin@0.1.1",
    "edgeplug:plugin/plugin@0.1.2",
    "edgeplug:plugin/plugin@0.1.3",
    "edgeplug:plugin/plugin@0.1.4",
    LEARNING_WORLD_0_1_4,
    WORLD,
    LEARNING_WORLD,
];

/// The other world a plugin may target: a WASI command (`wasi:cli/command`, what a `main`
/// compiled for `wasm32-wasip2` is), run once per request with the body on stdin and the
/// answer on stdout; it reaches models through `wasi:nn`.
pub const COMMAND_WORLD: &str = "wasi:cli/command@0.2.0";

/// The manifest's file name, in a plugin directory and in a bundle.
pub const MANIFEST_FILE: &str = "plugin.toml";

/// A parsed, validated `plugin.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Lower-case letters, digits and `-`, 1 to 64 characters. Also the URL path segment.
    pub name: String,
    /// Semantic version; a gateway only activates versions newer than the active one.
    pub version: semver::Version,
    /// One line for humans. Default: empty.
    #[serde(default)]
    pub description: String,
    /// The WIT world the component targets: [`WORLD`], or [`COMMAND_WORLD`] for a WASI
    /// command (a wasi:nn guest, for one).
    pub world: String,
    /// Path of the component inside the plugin. Default: `plugin.wasm`.
    #[serde(default = "default_component")]
    pub component: String,
    /// What the plugin may open. Default: nothing.
    #[serde(default)]
    pub grants: Grants,
    /// Resource limits the plugin asks for; the gateway caps them. Defaults: see [`Limits`].
    #[serde(default)]
    pub limits: Limits,
    /// Class names of an output, by output name: a file of the plugin with one label per
    /// line, the label of class `i` on line `i` (0-based). Clients see them through the Open
    /// Inference Protocol's classification extension. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Inputs with expected outputs, run before a version is activated. Default: none.
    #[serde(default, rename = "self-test")]
    pub self_tests: Vec<SelfTest>,
    /// sha-256 and size of every file the manifest references, keyed by path inside the
    /// plugin. `edgeplug pack` appends this table; a plugin directory's `plugin.toml` leaves
    /// it out. A bundle must list exactly the files of [`Manifest::referenced_files`] here.
    /// Default: empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<String, MemberDigest>,
    /// What the gateway's gate checks a head this plugin trained against (world
    /// [`LEARNING_WORLD`]). Default: nothing beyond the self-tests and the held-out samples.
    #[serde(default, skip_serializing_if = "Learn::is_empty")]
    pub learn: Learn,
}

/// `[learn]`: for a plugin that learns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learn {
    /// A file of the plugin with labeled inputs of the classes the shipped head knows, one
    /// JSON object per line in the shape of a feedback body (`{"label": 3, "content_type":
    /// "...", "input": "<base64>"}`): a trained head's accuracy on them may drop at most the
    /// gateway's `max_original_drop` below the live head's. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// With a trained head live, the self-tests compare only these top-level keys of each
    /// answer (say `["label"]`): a trained head moves the probabilities a self-test recorded
    /// with the shipped head, not what the input is. Default: every key, as for a push.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selftest_keys: Vec<String>,
}

impl Learn {
    fn is_empty(&self) -> bool {
        self.reference.is_none() && self.selftest_keys.is_empty()
    }
}

/// One `[members."path"]` entry: what `pack` measured of a file, checked again on every
/// verification and shown by `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberDigest {
    /// sha-256 of the file, 64 lower-case hex digits. Required.
    pub sha256: Sha256,
    /// Size of the file in bytes. Required.
    pub size: u64,
}

/// A sha-256 digest; written in TOML as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256 {
        use sha2::Digest as _;
        Sha256(sha2::Sha256::digest(bytes).into())
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl std::str::FromStr for Sha256 {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Sha256, &'static str> {
        const ERR: &str = "a sha-256 must be 64 lower-case hex digits";
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ERR);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ERR)?;
        Ok(Sha256(out))
    }
}

impl Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Sha256, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Deny-by-default grants: a plugin can open only what is listed here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// ONNX models by the name the plugin opens them under, mapped to a file of the plugin.
    /// Default: none.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// safetensors files whose tensors the plugin may load by name (`tensor.load`).
    /// Tensor names must be unique across the files. Default: none.
    #[serde(default)]
    pub weights: Vec<String>,
    /// Models from the gateway's model store (`NAME.onnx` in its `model_dir`), by the name the
    /// plugin opens them under, mapped to the store's name. They are not in the bundle.
    /// Default: none.
    #[serde(default)]
    pub store_models: BTreeMap<String, String>,
    /// Upstreams (centers) the plugin may escalate requests to, by the name the gateway's
    /// `[upstreams.NAME]` configuration gives them; the gateway decides where each one is.
    /// Default: none. Left out when empty, so manifests without it serialize as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream: Vec<String>,
}

/// Per-plugin limits. The gateway's configuration caps each of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory of one instance, in MiB. Default: 64.
    pub memory_mib: u32,
    /// Wall-clock deadline of one request, in milliseconds. Default: 2000.
    pub deadline_ms: u32,
    /// Requests served at once. Default: 4.
    pub concurrency: u32,
    /// Host tensor memory one request may hold at once, in MiB. Default: 256.
    pub tensor_memory_mib: u32,
    /// Largest request body, in MiB. Default: 16.
    pub max_request_mib: u32,
    /// Largest response (body plus tensors), in MiB. Default: 16.
    pub max_response_mib: u32,
    /// Requests one instance serves before it is dropped. Default: 1, a fresh instance for
    /// every request, so nothing a request leaves in the plugin's memory reaches the next.
    /// More keeps an instance that answered (with a response or the plugin's own error) for
    /// later requests of this version, saving the instantiation; an instance that trapped or
    /// exhausted a limit is never kept. Only for plugins that keep no per-client state.
    pub requests_per_instance: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            deadline_ms: 2000,
            concurrency: 4,
            tensor_memory_mib: 256,
            max_request_mib: 16,
            max_response_mib: 16,
            requests_per_instance: 1,
        }
    }
}

/// One self-test vector: an input file of the plugin and the JSON it must produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfTest {
    /// Shown in reports.
    pub name: String,
    /// Path of the input file inside the plugin.
    pub input: String,
    /// MIME type of the input. Default: from the file extension.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Path of a JSON file holding the expected response body.
    pub expect: String,
    /// Absolute tolerance for numbers in the response. Default: 1e-4.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
}

fn default_component() -> String {
    "plugin.wasm".to_string()
}

fn default_tolerance() -> f64 {
    1e-4
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("plugin.toml is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("plugin name {0:?} must be 1-64 characters of a-z, 0-9 and '-'")]
    BadName(String),
    #[error(
        "plugin targets WIT world {found:?}, this host implements {WORLD:?} and {COMMAND_WORLD:?}"
    )]
    WrongWorld { found: String },
    #[error(
        "path {0:?} in plugin.toml must be a plain relative path (no '..', no absolute path, no backslash)"
    )]
    BadPath(String),
    #[error("model {name:?} is granted twice, from the bundle and from the model store")]
    DuplicateModelGrant { name: String },
    #[error("model store name {0:?} must be letters, digits, '-', '_' or '.' (a name, not a path)")]
    BadStoreName(String),
    #[error("upstream name {0:?} must be 1-64 letters, digits, '-' or '_' (a name, not a URL)")]
    BadUpstreamName(String),
    #[error("limit {name} must be at least 1")]
    ZeroLimit { name: &'static str },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl Manifest {
    /// Parses and validates manifest text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Whether the plugin is a WASI command rather than an edgeplug handler.
    pub fn is_command(&self) -> bool {
        self.world == COMMAND_WORLD
    }

    /// Reads `plugin.toml` from a plugin directory.
    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Manifest::parse(&text)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(ManifestError::BadName(self.name.clone()));
        }
        if !PLUGIN_WORLDS.contains(&self.world.as_str()) && self.world != COMMAND_WORLD {
            return Err(ManifestError::WrongWorld {
                found: self.world.clone(),
            });
        }
        for path in self
            .referenced_files()
            .chain(self.members.keys().map(String::as_str))
        {
            check_member_path(path)?;
        }
        for (name, store_name) in &self.grants.store_models {
            if self.grants.models.contains_key(name) {
                return Err(ManifestError::DuplicateModelGrant { name: name.clone() });
            }
            if !is_store_name(store_name) {
                return Err(ManifestError::BadStoreName(store_name.clone()));
            }
        }
        for name in &self.grants.upstream {
            if !is_upstream_name(name) {
                return Err(ManifestError::BadUpstreamName(name.clone()));
            }
        }
        let limits = [
            ("memory_mib", self.limits.memory_mib),
            ("deadline_ms", self.limits.deadline_ms),
            ("concurrency", self.limits.concurrency),
            ("tensor_memory_mib", self.limits.tensor_memory_mib),
            ("max_request_mib", self.limits.max_request_mib),
            ("max_response_mib", self.limits.max_response_mib),
            ("requests_per_instance", self.limits.requests_per_instance),
        ];
        for (name, value) in limits {
            if value == 0 {
                return Err(ManifestError::ZeroLimit { name });
            }
        }
        Ok(())
    }

    /// Every file the manifest refers to: component, models, weights, labels, self-test files.
    pub fn referenced_files(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.component.as_str())
            .chain(self.grants.models.values().map(String::as_str))
            .chain(self.grants.weights.iter().map(String::as_str))
            .chain(self.labels.values().map(String::as_str))
            .chain(
                self.self_tests
                    .iter()
                    .flat_map(|t| [t.input.as_str(), t.expect.as_str()]),
            )
            .chain(self.learn.reference.as_deref())
    }

    /// Whether the plugin learns on the gateway (exports `learner`).
    pub fn learns(&self) -> bool {
        self.world == LEARNING_WORLD || self.world == LEARNING_WORLD_0_1_4
    }
}

/// A path inside a plugin must be plain: relative, `/`-separated, without `.`, `..` or empty
/// segments, of printable ASCII. Guest-supplied names never become filesystem paths, but
/// manifest paths do, so they are checked here once.
pub fn check_member_path(path: &str) -> Result<(), ManifestError> {
    let ok = !path.is_empty()
        && path.len() <= 255
        && !path.starts_with('/')
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(ManifestError::BadPath(path.to_string()))
    }
}

/// An upstream name is a key of the gateway's `[upstreams]` table: short, plain, and safe to
/// put in a metric label.
pub fn is_upstream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// A model store name is a file stem, never a path.
pub fn is_store_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "digits"
version = "1.2.3"
world = "edgeplug:plugin/plugin@0.1.0"
"#;

    #[test]
    fn store_model_grants_are_names_and_unique() {
        let ok = Manifest::parse(&format!(
            "{MINIMAL}[grants]\nstore_models = {{ classifier = \"mobilenetv2\" }}\n"
        ))
        .unwrap();
        assert_eq!(ok.grants.store_models["classifier"], "mobilenetv2");
        assert_eq!(
            ok.referenced_files().count(),
            1,
            "a store model is not a bundle file"
        );
        let path = Manifest::parse(&format!(
            "{MINIMAL}[grants]\nstore_models = {{ classifier = \"../models/x\" }}\n"
        ));
        assert!(
            matches!(path, Err(ManifestError::BadStoreName(_))),
            "{path:?}"
        );
        let twice = Manifest::parse(&format!(
            "{MINIMAL}[grants]\nmodels = {{ classifier = \"m.onnx\" }}\nstore_models = {{ classifier = \"m\" }}\n"
        ));
        assert!(
            matches!(twice, Err(ManifestError::DuplicateModelGrant { .. })),
            "{twice:?}"
        );
    }

    #[test]
    fn upstream_grants_are_plain_names_and_default_to_none() {
        assert!(Manifest::parse(MINIMAL).unwrap().grants.upstream.is_empty());
        let ok = Manifest::parse(&format!("{MINIMAL}[grants]\nupstream = [\"center\"]\n")).unwrap();
        assert_eq!(ok.grants.upstream, ["center"]);
        for bad in ["", "http://center", "a b", "../x"] {
            let parsed = Manifest::parse(&format!("{MINIMAL}[grants]\nupstream = [{bad:?}]\n"));
            assert!(
                matches!(parsed, Err(ManifestError::BadUpstreamName(_))),
                "{bad:?}: {parsed:?}"
            );
        }
    }

    #[test]
    fn minimal_manifest_gets_documented_defaults() {
        let m = Manifest::parse(MINIMAL).unwrap();
        assert_eq!(m.component, "plugin.wasm");
        assert_eq!(m.limits, Limits::default());
        assert_eq!(m.limits.memory_mib, 64);
        assert!(m.grants.models.is_empty());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Manifest::parse(&format!("{MINIMAL}\ncolour = 1\n")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = Manifest::parse(&format!("{MINIMAL}\n[limits]\nmemory = 1\n")).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn bad_names_worlds_and_paths_are_refused() {
        let bad_name = MINIMAL.replace("digits", "Digits!");
        assert!(matches!(
            Manifest::parse(&bad_name),
            Err(ManifestError::BadName(_))
        ));
        let bad_world = MINIMAL.replace("0.1.0\"", "9.0.0\"");
        assert!(matches!(
            Manifest::parse(&bad_world),
            Err(ManifestError::WrongWorld { .. })
        ));
        for path in ["../x.onnx", "/etc/passwd", "a//b", "a/./b", "a\\b", ""] {
            let text = format!("{MINIMAL}\n[grants.models]\nm = {path:?}\n");
            assert!(
                matches!(Manifest::parse(&text), Err(ManifestError::BadPath(_))),
                "{path}"
            );
        }
    }

    #[test]
    fn members_table_parses_strictly() {
        let sha = "ab".repeat(32);
        let text = format!("{MINIMAL}\n[members.\"plugin.wasm\"]\nsha256 = \"{sha}\"\nsize = 12\n");
        let m = Manifest::parse(&text).unwrap();
        let member = &m.members["plugin.wasm"];
        assert_eq!(member.size, 12);
        assert_eq!(member.sha256.to_string(), sha);
        assert!(Manifest::parse(MINIMAL).unwrap().members.is_empty());
        // Upper-case or short digests, unknown keys and bad paths are refused.
        let upper = text.replace(&sha, &"AB".repeat(32));
        assert!(Manifest::parse(&upper).is_err());
        let short = text.replace(&sha, "abcd");
        assert!(Manifest::parse(&short).is_err());
        let extra = format!("{text}mode = 1\n");
        assert!(
            Manifest::parse(&extra)
                .unwrap_err()
                .to_string()
                .contains("mode")
        );
        let bad_path = text.replace("plugin.wasm", "../plugin.wasm");
        assert!(matches!(
            Manifest::parse(&bad_path),
            Err(ManifestError::BadPath(_))
        ));
    }

    #[test]
    fn zero_limits_are_refused() {
        let text = format!("{MINIMAL}\n[limits]\ndeadline_ms = 0\n");
        assert!(matches!(
            Manifest::parse(&text),
            Err(ManifestError::ZeroLimit {
                name: "deadline_ms"
            })
        ));
    }
}

//! A loaded plugin version: its manifest, its pre-instantiated component and the models and
//! weights it was granted, all shared by every request that runs on this version.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use super::glue::{HostError, WitErrorCode};
use edgeplug_bundle::manifest::Manifest;
use edgeplug_kernels::Tensor;
use edgeplug_models::model::{Model, TensorSpec};
use edgeplug_models::weights::Weights;

/// A plugin's files by their path inside the plugin, read from a directory or taken from a
/// verified bundle.
#[derive(Debug, Clone)]
pub struct PluginFiles {
    pub manifest: Manifest,
    pub files: BTreeMap<String, Arc<[u8]>>,
}

impl PluginFiles {
    /// Reads a plugin directory: `plugin.toml` and every file it refers to. `component`
    /// overrides where the component is read from (a build output outside the directory).
    pub fn from_dir(dir: &Path, component: Option<&Path>) -> anyhow::Result<PluginFiles> {
        let manifest = Manifest::load(dir)?;
        let mut files = BTreeMap::new();
        for path in manifest.referenced_files() {
            let on_disk = match component {
                Some(c) if path == manifest.component => c.to_path_buf(),
                _ => dir.join(path),
            };
            let bytes = std::fs::read(&on_disk).with_context(|| {
                format!("cannot read {} (named in plugin.toml)", on_disk.display())
            })?;
            files.insert(path.to_string(), Arc::from(bytes));
        }
        Ok(PluginFiles { manifest, files })
    }

    /// A component alone, under a manifest with only `name` and `version` (no grants, default
    /// limits, no self-tests): what a bare `.wasm` is checked as.
    pub fn bare_component(
        name: &str,
        version: &str,
        wasm: &[u8],
    ) -> Result<PluginFiles, edgeplug_bundle::manifest::ManifestError> {
        let manifest = Manifest::parse(&format!(
            "name = {name:?}\nversion = {version:?}\nworld = {:?}\n",
            edgeplug_bundle::manifest::WORLD
        ))?;
        Ok(PluginFiles {
            files: [(manifest.component.clone(), Arc::from(wasm))].into(),
            manifest,
        })
    }

    /// The files of a verified bundle.
    pub fn from_bundle(bundle: &edgeplug_bundle::VerifiedBundle) -> PluginFiles {
        let files = bundle
            .member_paths()
            .filter_map(|path| Some((path.to_string(), Arc::from(bundle.member(path)?))))
            .collect();
        PluginFiles {
            manifest: bundle.manifest().clone(),
            files,
        }
    }

    pub fn get(&self, path: &str) -> anyhow::Result<&Arc<[u8]>> {
        self.files
            .get(path)
            .with_context(|| format!("plugin file {path:?} is missing"))
    }
}

/// Effective limits of a plugin version: its manifest's, capped by the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub memory_bytes: usize,
    pub deadline_ms: u64,
    pub concurrency: usize,
    pub tensor_bytes: usize,
    pub request_bytes: usize,
    pub response_bytes: usize,
    pub requests_per_instance: u32,
}

const MIB: usize = 1 << 20;

impl EffectiveLimits {
    pub fn new(
        manifest: &edgeplug_bundle::manifest::Limits,
        cap: &edgeplug_bundle::manifest::Limits,
    ) -> EffectiveLimits {
        let min = |a: u32, b: u32| a.min(b);
        EffectiveLimits {
            memory_bytes: min(manifest.memory_mib, cap.memory_mib) as usize * MIB,
            deadline_ms: u64::from(min(manifest.deadline_ms, cap.deadline_ms)),
            concurrency: min(manifest.concurrency, cap.concurrency) as usize,
            tensor_bytes: min(manifest.tensor_memory_mib, cap.tensor_memory_mib) as usize * MIB,
            request_bytes: min(manifest.max_request_mib, cap.max_request_mib) as usize * MIB,
            response_bytes: min(manifest.max_response_mib, cap.max_response_mib) as usize * MIB,
            requests_per_instance: min(manifest.requests_per_instance, cap.requests_per_instance),
        }
    }
}

/// What `describe()` returned, checked against the manifest at load time.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// The state shared by every request on one plugin version.
pub struct PluginShared {
    manifest: Manifest,
    limits: EffectiveLimits,
    models: BTreeMap<String, Arc<Model>>,
    weights: Weights,
    labels: BTreeMap<String, Vec<String>>,
    /// A learning plugin's self-test vectors and reference set, which the gate of every head
    /// it trains runs again; `None` for other plugins, which need them only at load.
    gate_files: Option<Arc<PluginFiles>>,
}

impl PluginShared {
    /// Gets every granted model from `store` (loading each distinct file once) and loads the
    /// weights files.
    pub fn load(
        files: &PluginFiles,
        cap: &edgeplug_bundle::manifest::Limits,
        store: &crate::model_store::ModelStore,
    ) -> anyhow::Result<PluginShared> {
        let manifest = files.manifest.clone();
        let mut models = BTreeMap::new();
        for (name, path) in &manifest.grants.models {
            let model = store.load_bytes(name, files.get(path)?)?;
            tracing::info!(plugin = %manifest.name, model = %name, backend = model.backend(), isa = model.isa().map_or("-", |i| i.name()), precision = model.precision().name(), bf16_engine = model.isa().and_then(|i| model.precision().bf16_engine(i)).map_or("-", |e| e.name()), "model ready");
            models.insert(name.clone(), model);
        }
        for (name, store_name) in &manifest.grants.store_models {
            let model = store.load_stored(store_name).with_context(|| {
                format!(
                    "plugin {:?} grants model {name:?} from the model store",
                    manifest.name
                )
            })?;
            tracing::info!(plugin = %manifest.name, model = %name, store = %store_name, backend = model.backend(), isa = model.isa().map_or("-", |i| i.name()), precision = model.precision().name(), bf16_engine = model.isa().and_then(|i| model.precision().bf16_engine(i)).map_or("-", |e| e.name()), "model ready");
            models.insert(name.clone(), model);
        }
        let mut weights = Weights::default();
        for path in &manifest.grants.weights {
            weights.add_file(path, files.get(path)?)?;
        }
        let mut labels = BTreeMap::new();
        for (output, path) in &manifest.labels {
            let text = std::str::from_utf8(files.get(path)?).with_context(|| {
                format!("the labels of output {output:?} ({path}) are not UTF-8 text")
            })?;
            labels.insert(
                output.clone(),
                text.lines().map(|l| l.trim_end().to_string()).collect(),
            );
        }
        let gate_files = manifest.learns().then(|| {
            let keep: Vec<&str> = manifest
                .self_tests
                .iter()
                .flat_map(|t| [t.input.as_str(), t.expect.as_str()])
                .chain(manifest.learn.reference.as_deref())
                .collect();
            Arc::new(PluginFiles {
                manifest: manifest.clone(),
                files: files
                    .files
                    .iter()
                    .filter(|(path, _)| keep.contains(&path.as_str()))
                    .map(|(path, bytes)| (path.clone(), bytes.clone()))
                    .collect(),
            })
        });
        Ok(PluginShared {
            limits: EffectiveLimits::new(&manifest.limits, cap),
            manifest,
            models,
            weights,
            labels,
            gate_files,
        })
    }

    /// A learning plugin's self-test files and `[learn] reference` file (with its manifest),
    /// for the gate of a head it trained.
    pub fn gate_files(&self) -> Option<&Arc<PluginFiles>> {
        self.gate_files.as_ref()
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn version(&self) -> &semver::Version {
        &self.manifest.version
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn limits(&self) -> EffectiveLimits {
        self.limits
    }

    /// The granted models by grant name, as loaded (backend, kernels, precision).
    pub fn models(&self) -> impl Iterator<Item = (&str, &Model)> {
        self.models
            .iter()
            .map(|(name, m)| (name.as_str(), m.as_ref()))
    }

    /// The class names the manifest declares for an output, the label of class `i` at `i`.
    pub fn labels(&self, output: &str) -> Option<&[String]> {
        self.labels.get(output).map(Vec::as_slice)
    }

    /// Bytes held by the shared weights (models are held by tract and not counted here).
    pub fn weights_bytes(&self) -> usize {
        self.weights.byte_size()
    }

    /// Whether the manifest grants escalating to upstream `name` (deny by default).
    pub fn upstream_granted(&self, name: &str) -> bool {
        self.manifest.grants.upstream.iter().any(|g| g == name)
    }

    /// A granted model. The name is a key into the grants, never a path.
    pub(crate) fn model(&self, name: &str) -> Result<Arc<Model>, HostError> {
        self.models.get(name).cloned().ok_or_else(|| {
            HostError::guest(
                WitErrorCode::NotPermitted,
                format!(
                    "model {name:?} is not granted to plugin {:?}; its manifest grants {:?}",
                    self.name(),
                    self.models.keys().collect::<Vec<_>>()
                ),
            )
        })
    }

    pub(crate) fn weight(&self, name: &str) -> Result<Tensor, HostError> {
        self.weights.get(name).cloned().ok_or_else(|| {
            HostError::guest(
                WitErrorCode::NotFound,
                format!(
                    "no weight tensor {name:?} in the weights files granted to plugin {:?}",
                    self.name()
                ),
            )
        })
    }
}

//! Models shared across plugin versions and plugins.
//!
//! A model is loaded and optimized once per distinct file (keyed by its sha-256) and shared by
//! every plugin version that grants it, whether it came in the plugin's bundle or from the
//! gateway's model directory, so a hot swap of a new version with an unchanged model reuses the
//! loaded one. Entries are weak: a model no active version uses is freed.
//!
//! The model directory holds `NAME.onnx` files an operator installs; a manifest grants one with
//! `[grants] store_models = { grant-name = "NAME" }`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use anyhow::Context as _;

use edgeplug_bundle::manifest::{Sha256, is_store_name};
use edgeplug_models::model::Model;

/// The process-wide model cache and the operator's model directory.
#[derive(Debug, Default)]
pub struct ModelStore {
    dir: Option<PathBuf>,
    loaded: Mutex<HashMap<Sha256, Weak<Model>>>,
}

impl ModelStore {
    /// A store serving `NAME.onnx` files from `dir` (none: only bundle-shipped models).
    pub fn new(dir: Option<PathBuf>) -> ModelStore {
        ModelStore {
            dir,
            loaded: Mutex::default(),
        }
    }

    /// The loaded model of these bytes, loading it if no live plugin version holds it.
    /// `name` names it in logs and errors.
    pub fn load_bytes(&self, name: &str, onnx: &[u8]) -> anyhow::Result<Arc<Model>> {
        let key = Sha256::of(onnx);
        if let Some(model) = self.live(&key) {
            tracing::debug!(model = name, "model shared with a loaded version");
            return Ok(model);
        }
        // Loading can take a second; other loads must not wait on the lock meanwhile. Two
        // concurrent loads of one file both load, and the first to finish is kept.
        let model = Arc::new(Model::load(name, onnx)?);
        let mut loaded = self.lock();
        if let Some(existing) = loaded.get(&key).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        loaded.retain(|_, weak| weak.strong_count() > 0);
        loaded.insert(key, Arc::downgrade(&model));
        Ok(model)
    }

    /// The model `NAME.onnx` of the model directory.
    pub fn load_stored(&self, store_name: &str) -> anyhow::Result<Arc<Model>> {
        let dir = self.dir.as_ref().with_context(|| {
            format!("model {store_name:?} is granted from the model store, but this gateway has no model directory")
        })?;
        anyhow::ensure!(
            is_store_name(store_name),
            "model store name {store_name:?} must be letters, digits, '-', '_' or '.', not starting with '.'"
        );
        let path = dir.join(format!("{store_name}.onnx"));
        let onnx = std::fs::read(&path).with_context(|| {
            format!(
                "the model store has no model {store_name:?} ({} is not readable); it has {:?}",
                path.display(),
                self.available()
            )
        })?;
        self.load_bytes(store_name, &onnx)
    }

    /// Names of the models in the model directory.
    pub fn available(&self) -> Vec<String> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.strip_suffix(".onnx").map(str::to_string)
            })
            .filter(|name| is_store_name(name))
            .collect();
        names.sort();
        names
    }

    /// Distinct models currently loaded.
    pub fn loaded_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    fn live(&self, key: &Sha256) -> Option<Arc<Model>> {
        self.lock().get(key).and_then(Weak::upgrade)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Sha256, Weak<Model>>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits_onnx() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../plugins/digits/digits_cnn.onnx"
        );
        std::fs::read(path).unwrap()
    }

    #[test]
    fn one_file_is_loaded_once_while_in_use_and_freed_after() {
        let store = ModelStore::new(None);
        let onnx = digits_onnx();
        let a = store.load_bytes("a", &onnx).unwrap();
        let b = store.load_bytes("b", &onnx).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(store.loaded_count(), 1);
        drop((a, b));
        assert_eq!(store.loaded_count(), 0);
    }

    #[test]
    fn stored_models_are_found_by_name_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("digits.onnx"), digits_onnx()).unwrap();
        let store = ModelStore::new(Some(dir.path().to_path_buf()));
        assert_eq!(store.available(), ["digits"]);
        assert!(store.load_stored("digits").is_ok());
        for bad in ["../digits", "/etc/passwd", "", ".hidden", "sub/digits"] {
            assert!(store.load_stored(bad).is_err(), "{bad:?}");
        }
        let missing = format!("{:#}", store.load_stored("mobilenet").unwrap_err());
        assert!(missing.contains("\"digits\""), "{missing}");
        let none = ModelStore::new(None);
        assert!(
            format!("{:#}", none.load_stored("digits").unwrap_err()).contains("no model directory")
        );
    }
}

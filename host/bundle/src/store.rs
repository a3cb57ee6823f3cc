//! The plugin store: the gateway's state directory.
//!
//! ```text
//! DIR/.lock                         held (flock) during every change, across processes
//! DIR/plugins/<name>/<version>.epk  verified bundles, as received (signature included)
//! DIR/plugins/<name>/active         the active version, one line ("1.2.0\n")
//! DIR/cache/<key>                   precompiled components: bytes + their sha-256 (32 bytes)
//! ```
//!
//! Every write is: temp file in the same directory, fsync, rename, fsync the directory. An
//! install writes the bundle first, then switches `active`, then prunes; a crash anywhere
//! leaves the previous or the new active version, both loadable and verified on start
//! ([`PluginStore::load_active`] re-verifies every signature). Names starting with '.' (temp
//! files, removed plugins) are never read and are cleaned up by [`PluginStore::open`].

use std::cmp::Ordering;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use semver::Version;

use crate::BundleLimits;
use crate::error::{StoreError, io_err};
use crate::format;
use crate::fsutil::{remove_temps, sync_dir, write_atomic};
use crate::sign::KeyId;
use crate::trust::TrustStore;
use crate::verify::{VerifiedBundle, read_bundle_file, verify};

const ACTIVE_FILE: &str = "active";
const REMOVED_PREFIX: &str = ".removed-";
const LOCK_FILE: &str = ".lock";

/// How the store behaves.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Versions kept on disk per plugin, the active one included (at least 1; 0 acts as 1).
    /// Default: 3 (the active one and two to roll back to).
    pub keep_versions: usize,
    /// Bounds for bundles read back from disk. Default: [`BundleLimits::default`].
    pub limits: BundleLimits,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            keep_versions: 3,
            limits: BundleLimits::default(),
        }
    }
}

/// Whether [`PluginStore::activate`] may go to an older version than the active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowDowngrade {
    No,
    Yes,
}

/// What an install did.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallOutcome {
    pub name: String,
    pub version: Version,
    /// The version that was active before, if any.
    pub previous: Option<Version>,
    /// Old versions deleted after the switch (beyond `keep_versions`).
    pub pruned: Vec<Version>,
}

/// One plugin in [`PluginStore::list`].
#[derive(Debug, Clone)]
pub struct PluginInfo {
    pub name: String,
    pub active: Option<Version>,
    /// Kept versions, newest first.
    pub versions: Vec<KeptVersion>,
}

/// One kept version of a plugin.
#[derive(Debug, Clone)]
pub struct KeptVersion {
    pub version: Version,
    /// Key id in the file's signature block, as recorded (verified at install and on load).
    pub signer: Option<KeyId>,
    /// When the file was written (its modification time).
    pub installed: Option<SystemTime>,
    pub size: u64,
}

/// Result of [`PluginStore::load_active`]: one bad plugin does not stop the others.
#[derive(Debug, Default)]
pub struct ActivePlugins {
    pub loaded: Vec<VerifiedBundle>,
    /// Plugins whose active version failed to load or verify, with why.
    pub failed: Vec<(String, StoreError)>,
}

/// Verified bundles by name and version, the active version of each, and the compile cache.
#[derive(Debug)]
pub struct PluginStore {
    root: PathBuf,
    config: StoreConfig,
}

impl PluginStore {
    /// Opens (creating if needed) a store directory and removes what a crash left behind.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<PluginStore, StoreError> {
        let store = PluginStore {
            root: dir.to_path_buf(),
            config,
        };
        for sub in [store.plugins_dir(), store.cache_dir()] {
            std::fs::create_dir_all(&sub).map_err(io_err(&sub))?;
        }
        let _lock = store.lock()?;
        let plugins = store.plugins_dir();
        remove_temps(&plugins).map_err(io_err(&plugins))?;
        remove_temps(&store.cache_dir()).map_err(io_err(&store.cache_dir()))?;
        for entry in std::fs::read_dir(&plugins).map_err(io_err(&plugins))? {
            let path = entry.map_err(io_err(&plugins))?.path();
            let file_name = path.file_name().unwrap_or_default().to_string_lossy();
            if file_name.starts_with(REMOVED_PREFIX) {
                std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
            } else if path.is_dir() {
                remove_temps(&path).map_err(io_err(&path))?;
            }
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Verifies `bytes` against `trust` and installs them: what the admin API does with a
    /// `PUT /v1/admin/plugins/{name}` body (`expected_name` = the URL's name).
    pub fn install_bytes(
        &self,
        bytes: Vec<u8>,
        trust: &TrustStore,
        expected_name: Option<&str>,
    ) -> Result<(VerifiedBundle, InstallOutcome), StoreError> {
        let bundle = verify(bytes, trust, &self.config.limits)?;
        let outcome = self.install(&bundle, expected_name)?;
        Ok((bundle, outcome))
    }

    /// Stores a verified bundle and makes it the active version. Refuses a bundle for another
    /// name than `expected_name`, and a version not newer (by semver precedence) than the
    /// active one: going back is [`PluginStore::rollback`] or [`PluginStore::activate`].
    pub fn install(
        &self,
        bundle: &VerifiedBundle,
        expected_name: Option<&str>,
    ) -> Result<InstallOutcome, StoreError> {
        let name = bundle.name();
        if let Some(expected) = expected_name
            && expected != name
        {
            return Err(StoreError::NameMismatch {
                expected: expected.to_string(),
                found: name.to_string(),
            });
        }
        let version = bundle.version().clone();
        let _lock = self.lock()?;
        let dir = self.plugin_dir(name);
        let previous = self.read_active(name)?;
        if let Some(active) = &previous
            && version.cmp_precedence(active) != Ordering::Greater
        {
            return Err(StoreError::NotNewer {
                name: name.to_string(),
                version,
                active: active.clone(),
            });
        }
        if !dir.is_dir() {
            std::fs::create_dir(&dir).map_err(io_err(&dir))?;
            let plugins = self.plugins_dir();
            sync_dir(&plugins).map_err(io_err(&plugins))?;
        }
        let file = dir.join(format!("{version}.epk"));
        let existed = file.exists();
        write_atomic(&file, bundle.raw()).map_err(io_err(&file))?;
        if let Err(e) = self.write_active(name, &version) {
            // A refused install changes nothing: not even a kept version newer than the
            // active one (on a full disk, the small `active` file can fail after the bundle).
            if !existed {
                let _ = std::fs::remove_file(&file);
                let _ = sync_dir(&dir);
            }
            return Err(e);
        }
        let pruned = self.prune(name, &version)?;
        tracing::info!(plugin = name, %version, signer = %bundle.signer(), "installed plugin version");
        Ok(InstallOutcome {
            name: name.to_string(),
            version,
            previous,
            pruned,
        })
    }

    /// Makes the newest kept version older than the active one active again, after
    /// re-verifying it. Returns it, for the runtime to swap in.
    pub fn rollback(&self, name: &str, trust: &TrustStore) -> Result<VerifiedBundle, StoreError> {
        let _lock = self.lock()?;
        let active = self
            .read_active(name)?
            .ok_or_else(|| StoreError::NotInstalled(name.to_string()))?;
        let target = self
            .kept_versions(name)?
            .into_iter()
            .filter(|v| v.cmp_precedence(&active) == Ordering::Less)
            .max_by(|a, b| a.cmp_precedence(b).then_with(|| a.cmp(b)))
            .ok_or_else(|| StoreError::NoPreviousVersion {
                name: name.to_string(),
                active: active.clone(),
            })?;
        let bundle = self.load_locked(name, &target, trust)?;
        self.write_active(name, &target)?;
        tracing::info!(plugin = name, from = %active, to = %target, "rolled back plugin");
        Ok(bundle)
    }

    /// Makes a kept version active after re-verifying it. Going to an older version than the
    /// active one needs [`AllowDowngrade::Yes`].
    pub fn activate(
        &self,
        name: &str,
        version: &Version,
        allow: AllowDowngrade,
        trust: &TrustStore,
    ) -> Result<VerifiedBundle, StoreError> {
        let _lock = self.lock()?;
        if !self.kept_versions(name)?.contains(version) {
            return Err(StoreError::VersionNotKept {
                name: name.to_string(),
                version: version.clone(),
            });
        }
        if let Some(active) = self.read_active(name)?
            && version.cmp_precedence(&active) == Ordering::Less
            && allow == AllowDowngrade::No
        {
            return Err(StoreError::DowngradeNotAllowed {
                name: name.to_string(),
                version: version.clone(),
                active,
            });
        }
        let bundle = self.load_locked(name, version, trust)?;
        self.write_active(name, version)?;
        Ok(bundle)
    }

    /// Removes a plugin and all its versions (atomically: one rename, then cleanup).
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let dir = self.plugin_dir(name);
        if !is_valid_name(name) || !dir.is_dir() {
            return Err(StoreError::NotInstalled(name.to_string()));
        }
        let plugins = self.plugins_dir();
        let graveyard = plugins.join(format!(
            "{REMOVED_PREFIX}{name}-{:016x}",
            rand::random::<u64>()
        ));
        std::fs::rename(&dir, &graveyard).map_err(io_err(&dir))?;
        sync_dir(&plugins).map_err(io_err(&plugins))?;
        std::fs::remove_dir_all(&graveyard).map_err(io_err(&graveyard))?;
        Ok(())
    }

    /// The active version of a plugin, if it has one.
    pub fn active(&self, name: &str) -> Result<Option<Version>, StoreError> {
        self.read_active(name)
    }

    /// Every plugin with its active and kept versions, sorted by name.
    pub fn list(&self) -> Result<Vec<PluginInfo>, StoreError> {
        let mut out = Vec::new();
        for name in self.plugin_names()? {
            let mut versions = Vec::new();
            for version in self.kept_versions(&name)? {
                let path = self.version_path(&name, &version);
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue; // pruned meanwhile
                };
                versions.push(KeptVersion {
                    signer: read_signer(&path),
                    installed: meta.modified().ok(),
                    size: meta.len(),
                    version,
                });
            }
            let active = self.read_active(&name)?;
            out.push(PluginInfo {
                name,
                active,
                versions,
            });
        }
        Ok(out)
    }

    /// Loads and re-verifies (signature, members, manifest) the active version of every
    /// plugin, for the gateway's start.
    pub fn load_active(&self, trust: &TrustStore) -> Result<ActivePlugins, StoreError> {
        let _lock = self.lock()?;
        let mut result = ActivePlugins::default();
        for name in self.plugin_names()? {
            let loaded = self.read_active(&name).and_then(|active| match active {
                Some(version) => self.load_locked(&name, &version, trust).map(Some),
                None => Ok(None),
            });
            match loaded {
                Ok(Some(bundle)) => result.loaded.push(bundle),
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(plugin = %name, error = %err, "active plugin version does not load");
                    result.failed.push((name, err));
                }
            }
        }
        Ok(result)
    }

    /// Loads and re-verifies one kept version.
    pub fn load(
        &self,
        name: &str,
        version: &Version,
        trust: &TrustStore,
    ) -> Result<VerifiedBundle, StoreError> {
        let _lock = self.lock()?;
        self.load_locked(name, version, trust)
    }

    /// A precompiled component by key (the runtime's: content hash + wasmtime version).
    /// `None` when absent, when the key is not a plain name, or when the stored checksum does
    /// not match (a damaged entry is never returned).
    pub fn cache_get(&self, key: &str) -> Option<Vec<u8>> {
        if !is_valid_cache_key(key) {
            return None;
        }
        let mut bytes = std::fs::read(self.cache_dir().join(key)).ok()?;
        let body_len = bytes.len().checked_sub(32)?;
        let stored: [u8; 32] = bytes[body_len..].try_into().ok()?;
        if crate::manifest::Sha256::of(&bytes[..body_len]).0 != stored {
            tracing::warn!(key, "damaged compile cache entry ignored");
            return None;
        }
        bytes.truncate(body_len);
        Some(bytes)
    }

    /// Stores a precompiled component under `key` (atomically, with a checksum).
    pub fn cache_put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        if !is_valid_cache_key(key) {
            return Err(StoreError::BadCacheKey(key.to_string()));
        }
        let mut data = Vec::with_capacity(bytes.len() + 32);
        data.extend_from_slice(bytes);
        data.extend_from_slice(&crate::manifest::Sha256::of(bytes).0);
        let _lock = self.lock()?;
        let path = self.cache_dir().join(key);
        Ok(write_atomic(&path, &data).map_err(io_err(&path))?)
    }

    // ---- internals ----

    fn plugins_dir(&self) -> PathBuf {
        self.root.join("plugins")
    }

    fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    fn plugin_dir(&self, name: &str) -> PathBuf {
        self.plugins_dir().join(name)
    }

    fn version_path(&self, name: &str, version: &Version) -> PathBuf {
        self.plugin_dir(name).join(format!("{version}.epk"))
    }

    /// Exclusive lock across threads and processes (flock on `DIR/.lock`), released on drop.
    fn lock(&self) -> Result<std::fs::File, StoreError> {
        let path = self.root.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        Ok(file)
    }

    fn plugin_names(&self) -> Result<Vec<String>, StoreError> {
        let plugins = self.plugins_dir();
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&plugins).map_err(io_err(&plugins))? {
            let entry = entry.map_err(io_err(&plugins))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_valid_name(&name) && entry.path().is_dir() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn read_active(&self, name: &str) -> Result<Option<Version>, StoreError> {
        if !is_valid_name(name) {
            return Ok(None);
        }
        let path = self.plugin_dir(name).join(ACTIVE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_err(&path)(err).into()),
        };
        match Version::parse(text.trim()) {
            Ok(version) => Ok(Some(version)),
            Err(_) => Err(StoreError::BadActiveFile {
                path: path.display().to_string(),
                text,
            }),
        }
    }

    fn write_active(&self, name: &str, version: &Version) -> Result<(), StoreError> {
        let path = self.plugin_dir(name).join(ACTIVE_FILE);
        Ok(write_atomic(&path, format!("{version}\n").as_bytes()).map_err(io_err(&path))?)
    }

    /// Versions with a `<version>.epk` file, unsorted.
    fn kept_versions(&self, name: &str) -> Result<Vec<Version>, StoreError> {
        if !is_valid_name(name) {
            return Ok(Vec::new());
        }
        let dir = self.plugin_dir(name);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io_err(&dir)(err).into()),
        };
        let mut versions = Vec::new();
        for entry in entries {
            let file_name = entry.map_err(io_err(&dir))?.file_name();
            let file_name = file_name.to_string_lossy();
            if file_name.starts_with('.') {
                continue;
            }
            if let Some(stem) = file_name.strip_suffix(".epk")
                && let Ok(version) = Version::parse(stem)
                && version.to_string() == stem
            {
                versions.push(version);
            }
        }
        versions.sort_by(|a, b| b.cmp_precedence(a).then_with(|| b.cmp(a)));
        Ok(versions)
    }

    /// Deletes kept versions beyond `keep_versions`, never the active one, keeping the
    /// newest others.
    fn prune(&self, name: &str, active: &Version) -> Result<Vec<Version>, StoreError> {
        let keep_others = self.config.keep_versions.max(1) - 1;
        let others: Vec<Version> = self
            .kept_versions(name)?
            .into_iter()
            .filter(|v| v != active)
            .collect();
        let mut pruned = Vec::new();
        for version in others.into_iter().skip(keep_others) {
            let path = self.version_path(name, &version);
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            pruned.push(version);
        }
        if !pruned.is_empty() {
            let dir = self.plugin_dir(name);
            sync_dir(&dir).map_err(io_err(&dir))?;
        }
        Ok(pruned)
    }

    fn load_locked(
        &self,
        name: &str,
        version: &Version,
        trust: &TrustStore,
    ) -> Result<VerifiedBundle, StoreError> {
        if !is_valid_name(name) {
            return Err(StoreError::NotInstalled(name.to_string()));
        }
        let path = self.version_path(name, version);
        let bytes = read_bundle_file(&path, &self.config.limits)?;
        let bundle = verify(bytes, trust, &self.config.limits)?;
        if bundle.name() != name || bundle.version() != version {
            return Err(StoreError::Mislabeled {
                path: path.display().to_string(),
                expected: format!("{name} {version}"),
                found: format!("{} {}", bundle.name(), bundle.version()),
            });
        }
        Ok(bundle)
    }
}

/// Plugin names as the manifest allows them (so they are safe path segments).
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_valid_cache_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The key id recorded in a stored file's signature block (not verified).
fn read_signer(path: &Path) -> Option<KeyId> {
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(SeekFrom::End(-(format::SIG_BLOCK_LEN as i64)))
        .ok()?;
    let mut tail = [0u8; format::SIG_BLOCK_LEN];
    file.read_exact(&mut tail).ok()?;
    format::signer_from_tail(&tail)
}

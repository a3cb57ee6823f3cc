//! The registry: plugin name → the active version, swapped atomically.
//!
//! A request takes an `Arc` of the active version when it starts and finishes on it, whatever
//! happens meanwhile; it never takes a lock an admin operation holds (one short read lock on
//! the name map, then an `ArcSwap` load). Admin operations (push, rollback, remove) on one
//! name are serialized by that name's admin mutex and run the whole pipeline before the swap:
//!
//! verify (signature, trust, members) → anti-downgrade → compile or load the cached
//! compilation → pre-instantiate and `describe()` → self-test vectors → write to the store →
//! publish with one `ArcSwap::store`.
//!
//! A failing step returns before the store or the registry changed. Previous versions stay
//! loaded in memory (up to `keep_versions - 1`) so a rollback is one swap; versions only on
//! disk (after a restart) are re-verified, loaded and self-tested first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use semver::Version;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::metrics::{Metrics, VersionMetrics};
use crate::config::PushVerify;
use edgeplug_bundle::manifest::Sha256;
use edgeplug_bundle::{
    BundleError, BundleLimits, KeyId, PluginStore, StoreError, TrustError, TrustStore,
    VerifiedBundle,
};
use edgeplug_runtime::conformance;
use edgeplug_runtime::selftest::{self, SelfTestError};
use edgeplug_runtime::{LoadError, LoadedPlugin, PluginFiles, Runtime};

mod canary;
pub use canary::{
    Canary, CanaryEnd, CanaryGate, CanaryListing, CanaryMode, CanaryOutcome, CanaryStarted,
    Verdict, WATCH_TICK, parse_canary_spec, watch,
};

/// One loaded plugin version, shared by every request running on it.
pub struct ActivePlugin {
    pub plugin: LoadedPlugin,
    pub version: Version,
    pub signer: KeyId,
    pub bundle_sha256: Sha256,
    /// When this version was loaded into this process.
    pub loaded_at: SystemTime,
    /// How long verify + compile + pre-instantiate + self-tests took.
    pub load_time: Duration,
    /// Self-test vectors that passed before it was published.
    pub self_tests: usize,
    /// Requests running on this version at once (`limits.concurrency` permits).
    pub permits: Arc<Semaphore>,
    pub metrics: Arc<VersionMetrics>,
    /// Whether its requests run at low CPU priority after exhausting a limit.
    pub demotion: super::lanes::Demotion,
    /// Whether its small requests may run on the reactor thread.
    pub fast_path: super::lanes::FastPath,
}

impl ActivePlugin {
    pub fn name(&self) -> &str {
        self.plugin.shared().name()
    }
}

/// Why an admin operation was refused. Nothing changed, on disk or in memory.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("bundle refused: {0}")]
    Bundle(#[from] BundleError),
    /// Built by `From<StoreError>`, which sends a full disk to `InsufficientStorage`.
    #[error(transparent)]
    Store(StoreError),
    /// The plugin store's disk (or quota) is full: the write was undone and the active
    /// version is unchanged. Freeing space and pushing again works.
    #[error("no space left for the plugin store: {0}")]
    InsufficientStorage(StoreError),
    #[error("the trust store cannot be read: {0}")]
    Trust(#[from] TrustError),
    #[error("the plugin does not load: {0}")]
    Load(#[from] LoadError),
    /// Another process changed the plugin store under this one.
    #[error("the plugin store changed under the gateway: {0}")]
    Conflict(String),
    #[error("self-test failed: {0}")]
    SelfTest(#[from] SelfTestError),
    /// `[admin] verify = "conformance"` and the kit found faults (each named, "; " between).
    #[error("the conformance kit refused the version: {0}")]
    Conformance(String),
    #[error("plugin {0:?} has no canary running")]
    NoCanary(String),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> AdminError {
        match &e {
            StoreError::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                AdminError::InsufficientStorage(e)
            }
            _ => AdminError::Store(e),
        }
    }
}

impl AdminError {
    /// A short, stable code for metrics and error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::Bundle(e) => match e {
                BundleError::Unsigned => "unsigned",
                BundleError::UnknownKey { .. } => "unknown-key",
                BundleError::RevokedKey { .. } => "revoked-key",
                BundleError::BadSignature { .. } => "bad-signature",
                BundleError::TooLarge { .. } | BundleError::MemberTooLarge { .. } => "too-large",
                BundleError::HashMismatch { .. } | BundleError::SizeMismatch { .. } => {
                    "member-mismatch"
                }
                BundleError::ManifestInvalid(_) => "bad-manifest",
                _ => "malformed",
            },
            AdminError::Store(e) => match e {
                StoreError::Bundle(_) => "stored-bundle-invalid",
                StoreError::NameMismatch { .. } => "name-mismatch",
                StoreError::NotNewer { .. } => "not-newer",
                StoreError::NotInstalled(_) => "not-installed",
                StoreError::NoPreviousVersion { .. } => "no-previous-version",
                _ => "store",
            },
            AdminError::InsufficientStorage(_) => "insufficient-storage",
            AdminError::Trust(_) => "trust-store",
            AdminError::Load(e) => e.code(),
            AdminError::Conflict(_) => "store-conflict",
            AdminError::SelfTest(_) => "self-test-failed",
            AdminError::Conformance(_) => "conformance-failed",
            AdminError::NoCanary(_) => "no-canary",
        }
    }
}

/// Runs the conformance kit on a loaded version; its failures, joined by "; ", refuse it.
fn verify_with_kit(plugin: &LoadedPlugin, files: &PluginFiles) -> Result<(), AdminError> {
    let options = conformance::Options {
        latency_runs: 3,
        determinism_runs: 2,
        ..conformance::Options::default()
    };
    let report = conformance::run_loaded(plugin, files, &options);
    if report.passed() {
        return Ok(());
    }
    let faults: Vec<String> = report
        .failures()
        .map(|c| {
            let name = if c.name.is_empty() {
                String::new()
            } else {
                format!(" {}", c.name)
            };
            format!("{}{name}: {}", c.group, c.detail)
        })
        .collect();
    Err(AdminError::Conformance(faults.join("; ")))
}

/// What a push, rollback or removal did.
#[derive(Debug, Clone, Serialize)]
pub struct AdminOutcome {
    pub name: String,
    /// The version now active (`None` after a removal).
    pub version: Option<String>,
    /// The version active before.
    pub previous: Option<String>,
    pub self_tests: usize,
    pub load_ms: f64,
}

struct Slot {
    active: ArcSwapOption<ActivePlugin>,
    /// Previous versions still loaded, newest first.
    kept: Mutex<Vec<Arc<ActivePlugin>>>,
    /// A newer version on trial next to the active one.
    canary: ArcSwapOption<Canary>,
    /// How the last canary ended.
    last_canary: Mutex<Option<CanaryEnd>>,
    /// Serializes admin operations on this name.
    admin: Mutex<()>,
}

/// Loaded plugins by name, and the pipeline that changes them.
pub struct Registry {
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    runtime: Runtime,
    store: PluginStore,
    trust_dir: PathBuf,
    bundle_limits: BundleLimits,
    keep_versions: usize,
    metrics: Arc<Metrics>,
    /// The compile cache key of each stored version's component, learned when it was
    /// prepared or read back: what the cache's garbage collection must keep.
    cache_keys: Mutex<HashMap<(String, Version), String>>,
    /// What a pushed version passes before it is published.
    verify: PushVerify,
}

/// What `serve --install` did with one bundle file.
#[derive(Debug, Clone)]
pub enum StartInstall {
    /// The bundle is now the active version.
    Installed(AdminOutcome),
    /// The active version is this bundle, the same content under another signature, or a
    /// newer version (pushed since): it stays active and nothing was written.
    Satisfied {
        name: String,
        /// The bundle's version.
        version: Version,
        /// The active version, kept.
        active: Version,
    },
}

/// One plugin in the listing.
#[derive(Debug, Clone, Serialize)]
pub struct PluginListing {
    pub name: String,
    pub active: Option<ActiveListing>,
    /// Versions kept on disk, newest first (the active one included).
    pub versions: Vec<KeptListing>,
    /// A newer version on trial next to the active one, and its gate's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryListing>,
    /// How the last canary ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_canary: Option<CanaryEnd>,
}

/// A granted model as loaded: `backend` `native` or `tract`; `isa` the native kernels' path
/// (`-` on tract); `precision` `f32`, `bf16` or `int8` (a quantized model's own).
#[derive(Debug, Clone, Serialize)]
pub struct ModelListing {
    pub name: String,
    pub backend: &'static str,
    pub isa: &'static str,
    pub precision: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActiveListing {
    pub version: String,
    /// Where its requests run: `fast` (on the reactor), `pool`, or `demoted` (low priority
    /// after exhausting a limit or a trap storm).
    pub lane: &'static str,
    pub description: String,
    pub signer: String,
    pub bundle_sha256: String,
    /// Seconds since the Unix epoch.
    pub loaded_at: u64,
    pub load_ms: f64,
    pub self_tests: usize,
    pub inputs: Vec<edgeplug_models::model::TensorSpec>,
    pub outputs: Vec<edgeplug_models::model::TensorSpec>,
    /// The models the version was granted, and what runs each.
    pub models: Vec<ModelListing>,
    pub concurrency: usize,
    pub deadline_ms: u64,
    pub max_request_bytes: usize,
    pub requests: u64,
    pub errors: u64,
    pub mean_latency_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeptListing {
    pub version: String,
    pub signer: Option<String>,
    /// Seconds since the Unix epoch.
    pub installed_at: Option<u64>,
    pub size: u64,
    /// Whether this version is loaded in memory (a rollback to it is immediate).
    pub loaded: bool,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Registry {
    pub fn new(
        runtime: Runtime,
        store: PluginStore,
        trust_dir: PathBuf,
        bundle_limits: BundleLimits,
        keep_versions: usize,
        metrics: Arc<Metrics>,
    ) -> Registry {
        Registry {
            slots: RwLock::new(BTreeMap::new()),
            runtime,
            store,
            trust_dir,
            bundle_limits,
            keep_versions: keep_versions.max(1),
            metrics,
            cache_keys: Mutex::default(),
            verify: PushVerify::SelfTest,
        }
    }

    /// Makes pushes pass `verify` (the self-tests by default) before they are published.
    pub fn verifying(mut self, verify: PushVerify) -> Registry {
        self.verify = verify;
        self
    }

    /// The active version of `name`: the request path (no admin lock is ever taken here).
    /// The runtime every version runs on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn get(&self, name: &str) -> Option<Arc<ActivePlugin>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots.get(name)?.active.load_full()
    }

    /// Names with an active version, sorted.
    pub fn names(&self) -> Vec<String> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .filter(|(_, s)| s.active.load().is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Versions of `name` loaded in memory: the active one first, then kept ones.
    pub fn loaded_versions(&self, name: &str) -> Vec<Version> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = slots.get(name) else {
            return Vec::new();
        };
        let mut out: Vec<Version> = slot
            .active
            .load()
            .iter()
            .map(|a| a.version.clone())
            .collect();
        let kept = slot.kept.lock().unwrap_or_else(|p| p.into_inner());
        out.extend(kept.iter().map(|a| a.version.clone()));
        out
    }

    fn slot(&self, name: &str) -> Arc<Slot> {
        if let Some(slot) = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return slot.clone();
        }
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    active: ArcSwapOption::empty(),
                    kept: Mutex::new(Vec::new()),
                    canary: ArcSwapOption::empty(),
                    last_canary: Mutex::new(None),
                    admin: Mutex::new(()),
                })
            })
            .clone()
    }

    fn trust(&self) -> Result<TrustStore, AdminError> {
        Ok(TrustStore::load(&self.trust_dir)?)
    }

    /// Compile (or cache hit), pre-instantiate, describe, self-test (and, for a pushed version
    /// where `[admin] verify` asks, the conformance kit): a version ready to publish.
    fn prepare(
        &self,
        bundle: &VerifiedBundle,
        started: Instant,
        verify: PushVerify,
    ) -> Result<ActivePlugin, AdminError> {
        let files = PluginFiles::from_bundle(bundle);
        self.cache_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                (bundle.name().to_string(), bundle.version().clone()),
                self.runtime.cache_key(bundle.component()),
            );
        let plugin = self.runtime.load(&files)?;
        let self_tests = selftest::run(&plugin, &files)?;
        if verify == PushVerify::Conformance {
            verify_with_kit(&plugin, &files)?;
        }
        let limits = plugin.shared().limits();
        let version = bundle.version().clone();
        Ok(ActivePlugin {
            metrics: self.metrics.version(bundle.name(), &version.to_string()),
            plugin,
            version,
            signer: bundle.signer(),
            bundle_sha256: bundle.bundle_sha256(),
            loaded_at: SystemTime::now(),
            load_time: started.elapsed(),
            self_tests,
            permits: Arc::new(Semaphore::new(limits.concurrency)),
            demotion: super::lanes::Demotion::default(),
            fast_path: super::lanes::FastPath::default(),
        })
    }

    /// Publishes `new` on `slot`; the version it replaces stays loaded for rollbacks.
    fn publish(&self, slot: &Slot, new: Arc<ActivePlugin>) -> Option<Arc<ActivePlugin>> {
        self.supersede_canary(slot, &format!("version {} was published", new.version));
        let old = slot.active.swap(Some(new.clone()));
        if let Some(old) = &old {
            old.plugin.release_kept_instances();
        }
        let mut kept = slot.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|k| k.version != new.version);
        if let Some(old) = &old
            && old.version != new.version
        {
            kept.insert(0, old.clone());
        }
        kept.sort_by(|a, b| b.version.cmp_precedence(&a.version));
        kept.truncate(self.keep_versions - 1);
        old
    }

    /// A push: installs `bytes` as the new active version of `expected_name` (or of the name
    /// the bundle carries). Blocking: run it off the async reactor.
    pub fn install(
        &self,
        bytes: Vec<u8>,
        expected_name: Option<&str>,
    ) -> Result<AdminOutcome, AdminError> {
        let started = Instant::now();
        let result = self
            .trust()
            .and_then(|trust| Ok(edgeplug_bundle::verify(bytes, &trust, &self.bundle_limits)?))
            .and_then(|bundle| self.install_verified(&bundle, expected_name, started));
        // After a refusal too: a push refused after compiling left a cache entry.
        self.collect_cache_garbage();
        result
    }

    fn install_verified(
        &self,
        bundle: &VerifiedBundle,
        expected_name: Option<&str>,
        started: Instant,
    ) -> Result<AdminOutcome, AdminError> {
        let name = bundle.name().to_string();
        if let Some(expected) = expected_name
            && expected != name
        {
            return Err(StoreError::NameMismatch {
                expected: expected.to_string(),
                found: name,
            }
            .into());
        }
        let slot = self.slot(&name);
        let _admin = slot.admin.lock().unwrap_or_else(|p| p.into_inner());
        // Refuse a version that is not newer before spending time compiling it (the store
        // checks again under its own lock when it writes).
        if let Some(active) = self.store.active(&name)?
            && bundle.version().cmp_precedence(&active) != std::cmp::Ordering::Greater
        {
            return Err(StoreError::NotNewer {
                name,
                version: bundle.version().clone(),
                active,
            }
            .into());
        }
        let ready = Arc::new(self.prepare(bundle, started, self.verify)?);
        let outcome = self.store.install(bundle, Some(&name))?;
        let old = self.publish(&slot, ready.clone());
        self.metrics
            .event("push", &name, &ready.version.to_string());
        tracing::info!(plugin = %name, version = %ready.version, previous = ?outcome.previous.as_ref().map(|v| v.to_string()),
            load_ms = ready.load_time.as_secs_f64() * 1e3, self_tests = ready.self_tests, "published plugin version");
        Ok(AdminOutcome {
            name,
            version: Some(ready.version.to_string()),
            previous: old.map(|o| o.version.to_string()),
            self_tests: ready.self_tests,
            load_ms: ready.load_time.as_secs_f64() * 1e3,
        })
    }

    /// Deletes the compile cache entries no version in the store needs (refused pushes,
    /// pruned and removed versions) and keeps the cache under its size bound. Never fails
    /// an admin operation: a cache that cannot be cleaned is only bigger.
    fn collect_cache_garbage(&self) {
        let wanted = match self.stored_cache_keys() {
            Ok(wanted) => wanted,
            Err(e) => {
                tracing::warn!(error = %e, "compile cache not cleaned: the store cannot be listed");
                return;
            }
        };
        let usage = self
            .runtime
            .collect_cache_garbage(&|key: &str| wanted.contains(key));
        if usage.removed > 0 {
            tracing::info!(
                removed = usage.removed,
                removed_bytes = usage.removed_bytes,
                entries = usage.entries,
                bytes = usage.bytes,
                "compile cache cleaned"
            );
        }
    }

    /// Compile cache keys of every version in the store. A version this process never
    /// prepared (kept from before a restart) is read back and verified once to learn its key;
    /// one that no longer verifies needs no cache entry.
    fn stored_cache_keys(&self) -> Result<HashSet<String>, AdminError> {
        let stored = self.store.list()?;
        let mut trust: Option<TrustStore> = None;
        let mut present = HashSet::new();
        let mut keys = self.cache_keys.lock().unwrap_or_else(|p| p.into_inner());
        for plugin in stored {
            for kept in plugin.versions {
                let id = (plugin.name.clone(), kept.version);
                if !keys.contains_key(&id) {
                    let trust = match &mut trust {
                        Some(trust) => trust,
                        None => trust.insert(self.trust()?),
                    };
                    match self.store.load(&id.0, &id.1, trust) {
                        Ok(bundle) => {
                            keys.insert(id.clone(), self.runtime.cache_key(bundle.component()));
                        }
                        Err(e) => {
                            tracing::debug!(plugin = %id.0, version = %id.1, error = %e, "stored version not verified for the cache");
                            continue;
                        }
                    }
                }
                present.insert(id);
            }
        }
        keys.retain(|id, _| present.contains(id));
        Ok(keys.values().cloned().collect())
    }

    /// Makes the newest kept version older than the active one active again. Blocking.
    pub fn rollback(&self, name: &str) -> Result<AdminOutcome, AdminError> {
        let started = Instant::now();
        let slot = self.slot(name);
        let _admin = slot.admin.lock().unwrap_or_else(|p| p.into_inner());
        let trust = self.trust()?;
        let active = self
            .store
            .active(name)?
            .ok_or_else(|| StoreError::NotInstalled(name.to_string()))?;
        let target = self
            .store
            .list()?
            .into_iter()
            .find(|p| p.name == name)
            .into_iter()
            .flat_map(|p| p.versions)
            .map(|k| k.version)
            .filter(|v| v.cmp_precedence(&active) == std::cmp::Ordering::Less)
            .max_by(|a, b| a.cmp_precedence(b).then_with(|| a.cmp(b)))
            .ok_or_else(|| StoreError::NoPreviousVersion {
                name: name.to_string(),
                active: active.clone(),
            })?;
        let in_memory = slot
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|k| k.version == target)
            .cloned();
        let ready = match in_memory {
            Some(ready) => ready,
            None => {
                let bundle = self.store.load(name, &target, &trust)?;
                // Checked as a push requires when it was pushed.
                Arc::new(self.prepare(&bundle, started, PushVerify::SelfTest)?)
            }
        };
        let bundle = self.store.rollback(name, &trust)?;
        if bundle.version() != &target {
            // Another process changed the store between our reads: put it back.
            return Err(AdminError::Conflict(format!(
                "the store rolled back to {} instead of {target}",
                bundle.version()
            )));
        }
        let old = self.publish(&slot, ready.clone());
        self.metrics.event("rollback", name, &target.to_string());
        tracing::info!(plugin = name, from = %active, to = %target, "rolled back plugin");
        Ok(AdminOutcome {
            name: name.to_string(),
            version: Some(target.to_string()),
            previous: old.map(|o| o.version.to_string()),
            self_tests: ready.self_tests,
            load_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Removes a plugin and every version of it; requests already running finish. Blocking.
    pub fn remove(&self, name: &str) -> Result<AdminOutcome, AdminError> {
        let slot = self.slot(name);
        let _admin = slot.admin.lock().unwrap_or_else(|p| p.into_inner());
        self.store.remove(name)?;
        self.supersede_canary(&slot, "the plugin was removed");
        let old = slot.active.swap(None);
        if let Some(old) = &old {
            old.plugin.release_kept_instances();
        }
        slot.kept.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.metrics.event("remove", name, "");
        tracing::info!(plugin = name, "removed plugin");
        self.collect_cache_garbage();
        Ok(AdminOutcome {
            name: name.to_string(),
            version: None,
            previous: old.map(|o| o.version.to_string()),
            self_tests: 0,
            load_ms: 0.0,
        })
    }

    /// Loads the active version of every plugin in the store (re-verified and self-tested).
    /// A plugin that fails is logged and left out; returns the failures.
    pub fn load_store(&self) -> anyhow::Result<Vec<(String, String)>> {
        let trust = self.trust()?;
        let active = self.store.load_active(&trust)?;
        let mut failed: Vec<(String, String)> = active
            .failed
            .into_iter()
            .map(|(n, e)| (n, e.to_string()))
            .collect();
        for bundle in active.loaded {
            let name = bundle.name().to_string();
            let slot = self.slot(&name);
            let _admin = slot.admin.lock().unwrap_or_else(|p| p.into_inner());
            match self.prepare(&bundle, Instant::now(), PushVerify::SelfTest) {
                Ok(ready) => {
                    tracing::info!(plugin = %name, version = %ready.version, "loaded plugin from the store");
                    self.publish(&slot, Arc::new(ready));
                }
                Err(e) => {
                    tracing::error!(plugin = %name, error = %e, "stored plugin version does not load");
                    failed.push((name, e.to_string()));
                }
            }
        }
        self.collect_cache_garbage();
        Ok(failed)
    }

    /// Installs a bundle file at start (`serve --install`), so that a service restarted with
    /// the same command line comes back whatever was pushed meanwhile. The file is verified
    /// first (signature, trust, members), whatever its version: a tampered or untrusted file
    /// is an error even when nothing would be installed. Then, against the active version of
    /// the same name:
    /// - none, or older: the bundle is installed like a push;
    /// - newer (pushed since), or the same version with the same content (the same
    ///   manifest, so the same member hashes; the signature may differ): already satisfied,
    ///   the active version stays;
    /// - the same version with other content: an error. Two different bundles must not
    ///   share a version, and which one was meant cannot be told; the active one stays.
    ///
    /// A stored active version that did not load at start cannot satisfy anything: a bundle
    /// not newer than it is then an error (the store refuses to go back by itself).
    pub fn install_file(&self, path: &std::path::Path) -> anyhow::Result<StartInstall> {
        use anyhow::Context as _;
        let context = || format!("cannot install {}", path.display());
        let bytes = edgeplug_bundle::read_bundle_file(path, &self.bundle_limits)
            .map_err(AdminError::from)
            .with_context(context)?;
        let trust = self.trust().with_context(context)?;
        let bundle = edgeplug_bundle::verify(bytes, &trust, &self.bundle_limits)
            .map_err(AdminError::from)
            .with_context(context)?;
        let name = bundle.name().to_string();
        let version = bundle.version().clone();
        let active = self.store.active(&name).map_err(AdminError::from)?;
        let Some(active) =
            active.filter(|a| version.cmp_precedence(a) != std::cmp::Ordering::Greater)
        else {
            let result = self.install_verified(&bundle, None, Instant::now());
            self.collect_cache_garbage();
            return Ok(StartInstall::Installed(result.with_context(context)?));
        };
        let Some(served) = self.get(&name).filter(|a| a.version == active) else {
            anyhow::bail!(
                "cannot install {}: {name} {version} is not newer than the stored active version \
                 {active}, which does not load (see the errors above); push a newer version or \
                 remove the plugin",
                path.display()
            );
        };
        if version.cmp_precedence(&active) == std::cmp::Ordering::Equal
            && served.plugin.shared().manifest() != bundle.manifest()
        {
            anyhow::bail!(
                "cannot install {}: it is {name} {version}, but the active {name} {active} is a \
                 different bundle (sha-256 {} here, {} active) with other content; two bundles \
                 must not share a version: give this one a higher version, or remove the plugin \
                 first. The active version stays.",
                path.display(),
                bundle.bundle_sha256(),
                served.bundle_sha256,
            );
        }
        tracing::info!(plugin = %name, %version, %active, file = %path.display(),
            "already satisfied: the active version is this bundle or newer, and stays");
        Ok(StartInstall::Satisfied {
            name,
            version,
            active,
        })
    }

    /// Every plugin: the active version (from memory) and the versions kept on disk.
    pub fn list(&self) -> Result<Vec<PluginListing>, AdminError> {
        let stored = self.store.list()?;
        let mut out = Vec::new();
        let mut names: Vec<String> = stored.iter().map(|p| p.name.clone()).collect();
        for name in self.names() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let loaded = self.loaded_versions(&name);
            let active = self.get(&name).map(|a| {
                let info = a.plugin.info();
                let limits = a.plugin.shared().limits();
                ActiveListing {
                    version: a.version.to_string(),
                    lane: if a.demotion.is_demoted() {
                        "demoted"
                    } else if a.fast_path.allows() {
                        "fast"
                    } else {
                        "pool"
                    },
                    description: info.description.clone(),
                    signer: a.signer.to_string(),
                    bundle_sha256: a.bundle_sha256.to_string(),
                    loaded_at: unix_secs(a.loaded_at),
                    load_ms: a.load_time.as_secs_f64() * 1e3,
                    self_tests: a.self_tests,
                    inputs: info.inputs.clone(),
                    outputs: info.outputs.clone(),
                    models: a
                        .plugin
                        .shared()
                        .models()
                        .map(|(name, m)| ModelListing {
                            name: name.to_string(),
                            backend: m.backend(),
                            isa: m.isa().map_or("-", |i| i.name()),
                            precision: m.precision().name(),
                        })
                        .collect(),
                    concurrency: limits.concurrency,
                    deadline_ms: limits.deadline_ms,
                    max_request_bytes: limits.request_bytes,
                    requests: a.metrics.requests(),
                    errors: a.metrics.errors(),
                    mean_latency_ms: a.metrics.mean_latency_ms(),
                }
            });
            let versions = stored
                .iter()
                .find(|p| p.name == name)
                .map(|p| {
                    p.versions
                        .iter()
                        .map(|k| KeptListing {
                            version: k.version.to_string(),
                            signer: k.signer.map(|s| s.to_string()),
                            installed_at: k.installed.map(unix_secs),
                            size: k.size,
                            loaded: loaded.contains(&k.version),
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(PluginListing {
                canary: self.canary(&name).map(|c| c.listing()),
                last_canary: self.last_canary(&name),
                name,
                active,
                versions,
            });
        }
        Ok(out)
    }
}

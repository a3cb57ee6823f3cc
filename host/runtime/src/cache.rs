//! Compiled components, cached by the hash of their bytes and of the engine's settings.
//!
//! Compiling a small component takes ~30 ms in a release build and ~370 ms in a debug build;
//! loading a cached one takes ~0.6 ms.
//!
//! Two levels, each bounded:
//! - in memory, components alive in this process, held **weakly**: a component (its compiled
//!   code, its memory images, the pooling allocator's slots affine to it) is freed when the
//!   last plugin version using it is dropped, and loading the same bytes while one lives
//!   shares it. A strong map here kept every version ever compiled, refused pushes included,
//!   alive for the life of the process (a `memfd:wasm-memory-image` fd and MiBs each).
//! - on disk, `<key>.cwasm` files, optional: [`ComponentCache::collect_garbage`] deletes the
//!   entries no caller still needs and keeps the directory under a size bound, evicting the
//!   least recently used first (a hit refreshes the file's modification time).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Extension of an entry on disk.
const ENTRY_EXT: &str = "cwasm";
/// Prefix of a file being written; a crash may leave one behind.
const TEMP_PREFIX: &str = ".tmp-";
/// Default bound of the directory, when none is given.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// An in-memory cache of live components, optionally backed by a bounded directory.
#[derive(Debug)]
pub struct ComponentCache {
    dir: Option<PathBuf>,
    /// Largest total size of the directory's entries, bytes.
    max_bytes: u64,
    live: Mutex<HashMap<String, Weak<Component>>>,
    /// Serializes garbage collections (two admin operations may end at once).
    collecting: Mutex<()>,
}

impl Clone for ComponentCache {
    /// The same directory and bound; live components are not shared between clones.
    fn clone(&self) -> Self {
        ComponentCache {
            dir: self.dir.clone(),
            max_bytes: self.max_bytes,
            live: Mutex::default(),
            collecting: Mutex::default(),
        }
    }
}

/// What a garbage collection found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// Entries left on disk and their total size.
    pub entries: usize,
    pub bytes: u64,
    /// Entries deleted, and the bytes they held.
    pub removed: usize,
    pub removed_bytes: u64,
}

impl ComponentCache {
    pub fn disabled() -> ComponentCache {
        ComponentCache {
            dir: None,
            max_bytes: DEFAULT_MAX_BYTES,
            live: Mutex::default(),
            collecting: Mutex::default(),
        }
    }

    /// A cache backed by `dir`, bounded to `DEFAULT_MAX_BYTES` (256 MiB). Removes the temp files a
    /// crashed writer left there (those of processes that no longer run: another process may
    /// share the directory and be writing one now).
    pub fn in_dir(dir: PathBuf) -> ComponentCache {
        remove_stale_temps(&dir);
        ComponentCache {
            dir: Some(dir),
            max_bytes: DEFAULT_MAX_BYTES,
            live: Mutex::default(),
            collecting: Mutex::default(),
        }
    }

    /// Bounds the directory's entries to `max_bytes` in total (enforced by
    /// [`ComponentCache::collect_garbage`], which every write runs).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> ComponentCache {
        self.max_bytes = max_bytes;
        self
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The key `wasm` is cached under for `engine`.
    pub fn key(engine: &Engine, wasm: &[u8]) -> String {
        cache_key(engine, wasm)
    }

    /// Compiles `wasm`, or returns the live or cached compilation of the same bytes for this
    /// engine. The component is freed when the last `Arc` of it is dropped.
    pub fn component(&self, engine: &Engine, wasm: &[u8]) -> anyhow::Result<Arc<Component>> {
        let key = cache_key(engine, wasm);
        if let Some(c) = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .and_then(Weak::upgrade)
        {
            return Ok(c);
        }
        let path = self.entry_path(&key);
        if let Some(path) = &path
            && path.exists()
        {
            // SAFETY: the cache directory is written only by this runtime (below), from
            // components it compiled itself; its key binds the wasm bytes and the engine's
            // settings, so a stale or foreign entry cannot match. A writer with access to the
            // state directory could equally replace the trusted keys.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(c) => {
                    // The modification time is the LRU's clock: a hit makes it recent.
                    if let Err(e) = std::fs::File::options()
                        .write(true)
                        .open(path)
                        .and_then(|f| f.set_modified(SystemTime::now()))
                    {
                        tracing::debug!(path = %path.display(), "cannot refresh a cache entry's time: {e}");
                    }
                    return Ok(self.remember(key, c));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unusable cached component: {e:#}")
                }
            }
        }
        let component = Component::new(engine, wasm).map_err(super::anyhow_of)?;
        let component = self.remember(key.clone(), component);
        if let Some(path) = &path {
            // A cache that cannot be written (a full disk included) only makes the next load
            // slower: the push goes on, and the plugin store's own write reports the disk.
            let written = component
                .serialize()
                .map_err(|e| std::io::Error::other(format!("{e:#}")))
                .and_then(|bytes| write_atomically(path, &bytes));
            match written {
                Ok(()) => {
                    self.collect_garbage(&|_: &str| true);
                }
                Err(e) if e.kind() == ErrorKind::StorageFull => {
                    tracing::warn!(path = %path.display(), "disk full: the compiled component is not cached");
                    // Make room: every entry not in use goes (a later load recompiles).
                    self.collect_garbage(&|_: &str| false);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cannot cache the compiled component: {e}")
                }
            }
        }
        Ok(component)
    }

    /// Records `component` as live under `key`, unless another thread just did: then that one
    /// is returned, so one compilation is shared.
    fn remember(&self, key: String, component: Component) -> Arc<Component> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        // Entries of dropped components go here, so the map never outgrows what lives.
        live.retain(|_, weak| weak.strong_count() > 0);
        if let Some(existing) = live.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let component = Arc::new(component);
        live.insert(key, Arc::downgrade(&component));
        component
    }

    /// Keys of the components alive in this process.
    pub fn live_keys(&self) -> HashSet<String> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, weak)| weak.strong_count() > 0)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Deletes the entries on disk that neither a live component nor `wanted` (the caller's
    /// list, e.g. every version still in the plugin store) needs, then the least recently
    /// used of the rest while the directory is over its bound (never a live one: it may be
    /// needed again at the next restart, and it costs nothing to keep while it lives).
    /// Returns what is left.
    pub fn collect_garbage(&self, wanted: &dyn Fn(&str) -> bool) -> CacheUsage {
        let Some(dir) = &self.dir else {
            return CacheUsage::default();
        };
        let _collecting = self.collecting.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.live_keys();
        let mut usage = CacheUsage::default();
        let mut kept: Vec<(SystemTime, u64, PathBuf, bool)> = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return usage;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            let Some(key) = name.strip_suffix(&format!(".{ENTRY_EXT}")) else {
                continue;
            };
            let is_live = live.contains(key);
            if !is_live && !wanted(key) {
                remove(&path, meta.len(), &mut usage);
                continue;
            }
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            kept.push((used, meta.len(), path, is_live));
        }
        let mut total: u64 = kept.iter().map(|k| k.1).sum();
        // Oldest first.
        kept.sort_by_key(|k| k.0);
        let mut left = Vec::new();
        for (used, size, path, is_live) in kept {
            if total > self.max_bytes && !is_live {
                total -= size;
                remove(&path, size, &mut usage);
            } else {
                left.push((used, size));
            }
        }
        usage.entries = left.len();
        usage.bytes = left.iter().map(|k| k.1).sum();
        usage
    }

    fn entry_path(&self, key: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{key}.{ENTRY_EXT}")))
    }
}

fn remove(path: &Path, size: u64, usage: &mut CacheUsage) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            usage.removed += 1;
            usage.removed_bytes += size;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), "cannot delete a cache entry: {e}"),
    }
}

fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    let mut settings = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut settings);
    let mut h = Sha256::new();
    h.update(wasm);
    h.update(settings.finish().to_le_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    hex::encode(&h.finalize()[..20])
}

/// Writes `bytes` to `path` through a temp file and a rename, so a reader never sees a
/// partial entry; a failed write (a full disk) removes its temp file at once.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = std::fs::File::create_new(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes `.tmp-<pid>-*` files in `dir` whose process no longer runs (a crash mid-write).
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let running = pid.is_some_and(|pid| {
            pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
        });
        if !running && let Err(e) = std::fs::remove_file(entry.path()) {
            tracing::warn!(path = %entry.path().display(), "cannot delete a stray temp file: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty component (magic, version 0x0d, layer 1) with a custom section of `n` bytes:
    /// valid, compiled in milliseconds, and distinct for each `n`.
    fn component_with(n: usize) -> Vec<u8> {
        let mut wasm = b"\0asm\x0d\x00\x01\x00".to_vec();
        let payload_len = 2 + n; // name length (1 byte), name "x", data
        assert!(payload_len < 128, "one-byte LEB128 sizes only");
        wasm.extend_from_slice(&[0, payload_len as u8, 1, b'x']);
        wasm.extend(std::iter::repeat_n(0xab, n));
        wasm
    }

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).unwrap()
    }

    #[test]
    fn a_component_lives_as_long_as_its_users() {
        let engine = engine();
        let cache = ComponentCache::disabled();
        let wasm = component_with(0);
        let a = cache.component(&engine, &wasm).unwrap();
        let b = cache.component(&engine, &wasm).unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "loads of the same bytes share one component"
        );
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(
            weak.upgrade().is_none(),
            "the cache kept a dropped component alive"
        );
        assert!(cache.live_keys().is_empty());
    }

    #[test]
    fn the_directory_keeps_what_is_wanted_within_its_bound() {
        let engine = engine();
        let dir = tempfile::tempdir().unwrap();
        let wasms: Vec<Vec<u8>> = (1..=4).map(|n| component_with(n * 10)).collect();
        let keys: Vec<String> = wasms.iter().map(|w| cache_key(&engine, w)).collect();
        let cache = ComponentCache::in_dir(dir.path().to_path_buf());
        for wasm in &wasms {
            drop(cache.component(&engine, wasm).unwrap());
        }
        let entry = |k: &str| dir.path().join(format!("{k}.{ENTRY_EXT}"));
        let size = |k: &str| std::fs::metadata(entry(k)).unwrap().len();
        assert!(keys.iter().all(|k| entry(k).exists()));

        // Only what is wanted (or alive) stays.
        let alive = cache.component(&engine, &wasms[3]).unwrap();
        let usage = cache.collect_garbage(&|k: &str| k == keys[0] || k == keys[1]);
        assert_eq!(usage.removed, 1);
        assert!(!entry(&keys[2]).exists());
        assert!(entry(&keys[0]).exists() && entry(&keys[1]).exists() && entry(&keys[3]).exists());

        // Over the bound, the least recently used goes first, never a live one.
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(entry(&keys[1]))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let bounded = ComponentCache {
            max_bytes: size(&keys[0]) + size(&keys[3]),
            ..cache.clone()
        };
        // `bounded` has its own (empty) live set: keep keys[3] alive in it.
        let alive_too = bounded.component(&engine, &wasms[3]).unwrap();
        let usage = bounded.collect_garbage(&|_: &str| true);
        assert!(!entry(&keys[1]).exists(), "the oldest entry stayed");
        assert!(entry(&keys[0]).exists() && entry(&keys[3]).exists());
        assert_eq!(usage.entries, 2);
        assert_eq!(usage.bytes, size(&keys[0]) + size(&keys[3]));
        drop((alive, alive_too));

        // A bound smaller than one entry empties the directory of everything not alive.
        let tiny = ComponentCache {
            max_bytes: 1,
            ..cache.clone()
        };
        assert_eq!(tiny.collect_garbage(&|_: &str| true).entries, 0);
    }

    #[test]
    fn stray_temp_files_of_dead_writers_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22 on Linux: this pid never runs.
        let stray = dir.path().join(format!("{TEMP_PREFIX}4294967295-00ff"));
        let ours = dir
            .path()
            .join(format!("{TEMP_PREFIX}{}-00ff", std::process::id()));
        std::fs::write(&stray, b"partial").unwrap();
        std::fs::write(&ours, b"being written").unwrap();
        let _cache = ComponentCache::in_dir(dir.path().to_path_buf());
        assert!(!stray.exists());
        assert!(ours.exists(), "a running writer's temp file was removed");
    }
}

//! The heads a gateway trained, on its disk: `state_dir/heads/NAME/NNNNNNNNNNNN.head`
//! checkpoints (signed with the gateway's device key, written crash-safe by
//! [`edgeplug_train::checkpoint`]) and a `LIVE` file naming the live one's sequence number,
//! replaced crash-safe too. A checkpoint is written before `LIVE` points to it, so a crash
//! leaves the old live head or the new one. Nothing is loaded that the device key did not
//! sign.
//!
//! The device key (`state_dir/device.key`, made on first start) is this gateway's own: it
//! signs only heads, and only this gateway trusts it.

use std::path::{Path, PathBuf};

use edgeplug_bundle::{SecretKey, TrustStore};
use edgeplug_train::Head;
use edgeplug_train::checkpoint::{self, CheckpointError, Metadata};

const LIVE: &str = "LIVE";
const DEVICE_KEY: &str = "device";

/// The checkpoints of every plugin.
pub struct HeadStore {
    dir: PathBuf,
    key: SecretKey,
    trust: TrustStore,
    keep: usize,
}

impl std::fmt::Debug for HeadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadStore")
            .field("dir", &self.dir)
            .field("device_key", &self.key.key_id())
            .finish()
    }
}

impl HeadStore {
    /// Opens the store under `state_dir`, making the device key if it has none.
    pub fn open(state_dir: &Path, keep: usize) -> anyhow::Result<HeadStore> {
        use anyhow::Context as _;
        let key_path = state_dir.join(format!("{DEVICE_KEY}.key"));
        if !key_path.exists() {
            edgeplug_bundle::generate_keypair(state_dir, DEVICE_KEY)
                .with_context(|| format!("cannot make the device key {}", key_path.display()))?;
            tracing::info!(path = %key_path.display(), "made this gateway's device key (it signs the heads it trains)");
        }
        let key = SecretKey::load(&key_path)
            .with_context(|| format!("cannot read the device key {}", key_path.display()))?;
        let mut trust = TrustStore::new();
        trust.add_key(key.public_key());
        let dir = state_dir.join("heads");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(HeadStore {
            dir,
            key,
            trust,
            keep: keep.max(2),
        })
    }

    /// The id of the device key, which checkpoints name.
    pub fn key_id(&self) -> String {
        self.key.key_id().to_string()
    }

    fn plugin_dir(&self, plugin: &str) -> PathBuf {
        self.dir.join(plugin)
    }

    fn path(&self, plugin: &str, sequence: u64) -> PathBuf {
        self.plugin_dir(plugin).join(format!("{sequence:012}.head"))
    }

    /// Sequence numbers of the plugin's checkpoints, oldest first.
    pub fn sequences(&self, plugin: &str) -> Vec<u64> {
        let mut found: Vec<u64> = std::fs::read_dir(self.plugin_dir(plugin))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".head")?.parse().ok()
            })
            .collect();
        found.sort_unstable();
        found
    }

    /// The live head's sequence number, if the plugin has one.
    pub fn live_sequence(&self, plugin: &str) -> Option<u64> {
        std::fs::read_to_string(self.plugin_dir(plugin).join(LIVE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Reads and verifies checkpoint `sequence` of `plugin`.
    pub fn read(&self, plugin: &str, sequence: u64) -> Result<(Head, Metadata), CheckpointError> {
        let (head, metadata) = checkpoint::read(&self.path(plugin, sequence), &self.trust)?;
        if metadata.plugin != plugin || metadata.sequence != sequence {
            return Err(CheckpointError::Malformed(format!(
                "the checkpoint says it is {} #{}, not {plugin} #{sequence}",
                metadata.plugin, metadata.sequence
            )));
        }
        Ok((head, metadata))
    }

    /// The live head of `plugin`, verified; `None` if it has none.
    pub fn live(&self, plugin: &str) -> Result<Option<(Head, Metadata)>, CheckpointError> {
        match self.live_sequence(plugin) {
            Some(sequence) => self.read(plugin, sequence).map(Some),
            None => Ok(None),
        }
    }

    /// Signs `head` with the device key, writes it as the plugin's next checkpoint and makes
    /// it live; older checkpoints beyond `keep` are deleted. Returns its metadata.
    pub fn commit(
        &self,
        plugin: &str,
        head: &Head,
        mut metadata: Metadata,
    ) -> Result<Metadata, CheckpointError> {
        std::fs::create_dir_all(self.plugin_dir(plugin))?;
        metadata.sequence = self.sequences(plugin).last().map_or(1, |s| s + 1);
        metadata.key_id = self.key_id();
        checkpoint::write(
            &self.path(plugin, metadata.sequence),
            head,
            &metadata,
            &self.key,
        )?;
        self.point_live(plugin, Some(metadata.sequence))?;
        self.prune(plugin);
        Ok(metadata)
    }

    /// Makes the checkpoint before the live one live again (or none: the plugin's shipped
    /// head). Returns the head that is now live.
    pub fn rollback(&self, plugin: &str) -> Result<Option<(Head, Metadata)>, CheckpointError> {
        let Some(live) = self.live_sequence(plugin) else {
            return Err(CheckpointError::Malformed(format!(
                "{plugin} has no trained head to roll back"
            )));
        };
        // The newest older checkpoint that verifies; a damaged one is skipped, not trusted.
        let previous = self
            .sequences(plugin)
            .into_iter()
            .rev()
            .filter(|s| *s < live)
            .find_map(|s| self.read(plugin, s).ok());
        self.point_live(plugin, previous.as_ref().map(|(_, m)| m.sequence))?;
        Ok(previous)
    }

    fn point_live(&self, plugin: &str, sequence: Option<u64>) -> std::io::Result<()> {
        let path = self.plugin_dir(plugin).join(LIVE);
        match sequence {
            Some(s) => edgeplug_bundle::write_file_atomic(&path, format!("{s}\n").as_bytes()),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Deletes the oldest checkpoints beyond `keep`, never the live one.
    fn prune(&self, plugin: &str) {
        let live = self.live_sequence(plugin);
        let sequences = self.sequences(plugin);
        let excess = sequences.len().saturating_sub(self.keep);
        for s in sequences.into_iter().take(excess) {
            if Some(s) != live
                && let Err(e) = std::fs::remove_file(self.path(plugin, s))
            {
                tracing::warn!(plugin, sequence = s, error = %e, "cannot delete an old head");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplug_train::HeadSpec;

    fn metadata(plugin: &str) -> Metadata {
        Metadata {
            plugin: plugin.into(),
            sequence: 0,
            features: 4,
            classes: 3,
            hidden: None,
            samples: 10,
            created_unix_ms: 1,
            key_id: String::new(),
            origin: Some("local".into()),
            plugin_version: None,
        }
    }

    fn bytes(head: &Head) -> Vec<Vec<u8>> {
        head.params().iter().map(|p| p.to_le_bytes()).collect()
    }

    fn head(seed: u64) -> Head {
        let spec = HeadSpec {
            features: 4,
            classes: 3,
            hidden: None,
        };
        Head::new(spec, seed).unwrap()
    }

    #[test]
    fn commits_go_live_and_roll_back_in_order_down_to_the_shipped_head() {
        let dir = tempfile::tempdir().unwrap();
        let store = HeadStore::open(dir.path(), 3).unwrap();
        assert!(store.live("digits").unwrap().is_none());
        let first = store
            .commit("digits", &head(1), metadata("digits"))
            .unwrap();
        let second = store
            .commit("digits", &head(2), metadata("digits"))
            .unwrap();
        assert_eq!((first.sequence, second.sequence), (1, 2));
        let (live, meta) = store.live("digits").unwrap().unwrap();
        assert_eq!(meta.sequence, 2);
        assert_eq!(bytes(&live), bytes(&head(2)));
        let back = store.rollback("digits").unwrap().unwrap();
        assert_eq!(back.1.sequence, 1);
        assert_eq!(bytes(&back.0), bytes(&head(1)));
        assert!(
            store.rollback("digits").unwrap().is_none(),
            "back to the shipped head"
        );
        assert!(store.live("digits").unwrap().is_none());
        assert!(
            store.rollback("digits").is_err(),
            "nothing left to roll back"
        );
        // The next commit follows the highest sequence ever written, never reusing one.
        assert_eq!(
            store
                .commit("digits", &head(3), metadata("digits"))
                .unwrap()
                .sequence,
            3
        );
    }

    #[test]
    fn keeps_at_most_keep_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let store = HeadStore::open(dir.path(), 3).unwrap();
        for seed in 0..6 {
            store
                .commit("digits", &head(seed), metadata("digits"))
                .unwrap();
        }
        assert_eq!(store.sequences("digits"), vec![4, 5, 6]);
    }

    #[test]
    fn a_tampered_or_foreign_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = HeadStore::open(dir.path(), 3).unwrap();
        store
            .commit("digits", &head(1), metadata("digits"))
            .unwrap();
        let path = store.path("digits", 1);
        let mut bytes = std::fs::read(&path).unwrap();
        // A weight's byte (the last before the signature): the header, which names the key,
        // still parses, so it is the signature that refuses it. A flip in the header could
        // break its JSON instead, which is refused as malformed.
        let last_weight = bytes.len() - edgeplug_bundle::SIGNATURE_LEN - 1;
        bytes[last_weight] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            store.live("digits"),
            Err(CheckpointError::Signature(_))
        ));
        // Another gateway's store (another device key) does not trust this one's heads.
        let other_dir = tempfile::tempdir().unwrap();
        let other = HeadStore::open(other_dir.path(), 3).unwrap();
        store
            .commit("digits", &head(2), metadata("digits"))
            .unwrap();
        std::fs::create_dir_all(other.plugin_dir("digits")).unwrap();
        std::fs::copy(store.path("digits", 2), other.path("digits", 2)).unwrap();
        assert!(matches!(
            other.read("digits", 2),
            Err(CheckpointError::Signature(_))
        ));
        // The device key survives a restart: the same store reads its own heads again.
        let reopened = HeadStore::open(dir.path(), 3).unwrap();
        assert_eq!(reopened.live("digits").unwrap().unwrap().1.sequence, 2);
    }
}

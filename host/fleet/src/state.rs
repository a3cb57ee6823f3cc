//! What a gateway's agent persists: the last notice it accepted on each topic, in
//! `<state_dir>/fleet/notices.json`, written crash-safe (temp file, fsync, rename, fsync of the
//! directory). It is both the replay guard (a notice must carry a sequence above the last one
//! accepted on its topic) and the desired state the reconcile loop works towards, also after a
//! restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::notice::SignedNotice;
use crate::topics::{self, NoticeTopic};

const FILE_FORMAT: u32 = 1;

/// The accepted notices, by topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accepted {
    format: u32,
    topics: BTreeMap<String, AcceptedNotice>,
}

impl Default for Accepted {
    fn default() -> Self {
        Accepted {
            format: FILE_FORMAT,
            topics: BTreeMap::new(),
        }
    }
}

/// The last notice accepted on one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptedNotice {
    /// Its sequence number: later notices on this topic must be above it.
    pub sequence: u64,
    /// Its wire bytes (JSON text); `None` once a pin was cleared (the sequence stays).
    pub notice: Option<String>,
}

/// What to do with a notice whose signature and target checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Above every sequence seen on its topic: accept it.
    New,
    /// The very notice already accepted (a redelivery or the retained copy after a
    /// resubscription): nothing to do.
    Duplicate,
    /// Not above the last accepted sequence, and not that notice: refuse.
    Replay { last: u64 },
}

impl Accepted {
    /// How `notice` (whose wire bytes are `raw`) relates to what `topic` accepted before.
    pub fn verdict(&self, topic: &str, notice: &SignedNotice, raw: &[u8]) -> Verdict {
        let Some(last) = self.topics.get(topic) else {
            return Verdict::New;
        };
        let sequence = notice.notice.sequence;
        if sequence > last.sequence {
            Verdict::New
        } else if sequence == last.sequence
            && last.notice.as_deref().map(str::as_bytes) == Some(raw)
        {
            Verdict::Duplicate
        } else {
            Verdict::Replay {
                last: last.sequence,
            }
        }
    }

    /// Records `notice` as the last accepted on `topic`.
    pub fn accept(&mut self, topic: &str, notice: &SignedNotice) {
        self.topics.insert(
            topic.to_string(),
            AcceptedNotice {
                sequence: notice.notice.sequence,
                notice: Some(String::from_utf8(notice.to_bytes()).expect("notices are JSON text")),
            },
        );
    }

    /// Forgets the notice on a pin topic (the pin was cleared) but keeps its sequence, so the
    /// old pin cannot be replayed. Returns whether anything changed.
    pub fn clear(&mut self, topic: &str) -> bool {
        match self.topics.get_mut(topic) {
            Some(accepted) if accepted.notice.is_some() => {
                accepted.notice = None;
                true
            }
            _ => false,
        }
    }

    /// The accepted notices (parsed again; a stored notice always parses, as it parsed when
    /// it was accepted) with their topics.
    pub fn notices(&self) -> impl Iterator<Item = (&str, SignedNotice)> + '_ {
        self.topics.iter().filter_map(|(topic, accepted)| {
            let raw = accepted.notice.as_deref()?;
            SignedNotice::parse(raw.as_bytes())
                .ok()
                .map(|n| (topic.as_str(), n))
        })
    }

    /// The desired notice per plugin for gateway `id` of `group`: its pin if there is one,
    /// else the group's notice.
    pub fn desired(&self, group: &str, id: &str) -> BTreeMap<String, SignedNotice> {
        let mut group_notices = BTreeMap::new();
        let mut pins = BTreeMap::new();
        for (topic, notice) in self.notices() {
            match topics::parse_notice_topic(topic) {
                Some(NoticeTopic::Group { group: g, plugin }) if g == group => {
                    group_notices.insert(plugin, notice);
                }
                Some(NoticeTopic::Pin {
                    group: g,
                    id: i,
                    plugin,
                }) if g == group && i == id => {
                    pins.insert(plugin, notice);
                }
                _ => {}
            }
        }
        group_notices.extend(pins);
        group_notices
    }
}

/// The file holding [`Accepted`].
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// `<state_dir>/fleet/notices.json`, read if present. A file that does not parse is an
    /// error rather than a fresh start: forgetting the sequences would let old notices in.
    pub fn open(state_dir: &Path) -> anyhow::Result<(StateFile, Accepted)> {
        let dir = state_dir.join("fleet");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("notices.json");
        let accepted = match std::fs::read(&path) {
            Ok(bytes) => {
                let accepted: Accepted = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is damaged; it holds the fleet's replay guard, so the agent will not \
                         start without it (move it away to start afresh, trusting the broker's \
                         retained notices)",
                        path.display()
                    )
                })?;
                anyhow::ensure!(
                    accepted.format == FILE_FORMAT,
                    "{}: format {} is not supported",
                    path.display(),
                    accepted.format
                );
                accepted
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Accepted::default(),
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot read {}", path.display()))
                );
            }
        };
        Ok((StateFile { path }, accepted))
    }

    /// Writes `accepted` crash-safe: after a crash the file holds the old or the new state,
    /// never a mix.
    pub fn save(&self, accepted: &Accepted) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(accepted).map_err(std::io::Error::other)?;
        edgeplug_bundle::write_file_atomic(&self.path, &bytes)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notice::Notice;
    use edgeplug_bundle::SecretKey;

    fn signed(
        key: &SecretKey,
        version: &str,
        sequence: u64,
        gateway: Option<&str>,
    ) -> SignedNotice {
        Notice {
            kind: crate::notice::NoticeKind::Release,
            plugin: "digits".into(),
            version: version.parse().unwrap(),
            repository: "edgeplug/digits".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: 10,
            sequence,
            group: "g1".into(),
            gateway: gateway.map(String::from),
            issued_at: 0,
            canary: None,
        }
        .sign(key)
        .unwrap()
    }

    #[test]
    fn sequences_guard_each_topic_and_pins_win() {
        let key = SecretKey::generate();
        let mut accepted = Accepted::default();
        let group = topics::group_plugin("g1", "digits");
        let pin = topics::pin_plugin("g1", "gw-1", "digits");
        let first = signed(&key, "0.1.0", 10, None);
        assert_eq!(
            accepted.verdict(&group, &first, &first.to_bytes()),
            Verdict::New
        );
        accepted.accept(&group, &first);
        assert_eq!(
            accepted.verdict(&group, &first, &first.to_bytes()),
            Verdict::Duplicate
        );
        let older = signed(&key, "0.0.9", 9, None);
        assert_eq!(
            accepted.verdict(&group, &older, &older.to_bytes()),
            Verdict::Replay { last: 10 }
        );
        // The same sequence with other contents is a replay too, not a duplicate.
        let same_sequence = signed(&key, "0.3.0", 10, None);
        assert_eq!(
            accepted.verdict(&group, &same_sequence, &same_sequence.to_bytes()),
            Verdict::Replay { last: 10 }
        );
        // Sequences are per topic.
        let pinned = signed(&key, "0.2.0", 5, Some("gw-1"));
        assert_eq!(
            accepted.verdict(&pin, &pinned, &pinned.to_bytes()),
            Verdict::New
        );
        accepted.accept(&pin, &pinned);
        let desired = accepted.desired("g1", "gw-1");
        assert_eq!(desired["digits"].notice.version.to_string(), "0.2.0");
        assert_eq!(
            accepted.desired("g1", "gw-2")["digits"]
                .notice
                .version
                .to_string(),
            "0.1.0"
        );
        // A cleared pin gives the group's notice back, and its old notice stays refused.
        assert!(accepted.clear(&pin));
        assert!(!accepted.clear(&pin));
        assert_eq!(
            accepted.desired("g1", "gw-1")["digits"]
                .notice
                .version
                .to_string(),
            "0.1.0"
        );
        assert_eq!(
            accepted.verdict(&pin, &pinned, &pinned.to_bytes()),
            Verdict::Replay { last: 5 }
        );
    }

    #[test]
    fn the_file_survives_a_reopen_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate();
        let (file, mut accepted) = StateFile::open(dir.path()).unwrap();
        let topic = topics::group_plugin("g1", "digits");
        accepted.accept(&topic, &signed(&key, "0.1.0", 3, None));
        file.save(&accepted).unwrap();
        let (_, reread) = StateFile::open(dir.path()).unwrap();
        assert_eq!(reread, accepted);
        std::fs::write(file.path(), b"{\"format\":1,\"topics\":").unwrap();
        let err = StateFile::open(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("damaged"), "{err:#}");
    }
}

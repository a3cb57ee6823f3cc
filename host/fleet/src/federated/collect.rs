//! One round's uploads on the aggregator: which count, which are left out and why, and their
//! weighted average. No I/O, so every verdict is tested without a broker.

use std::collections::BTreeMap;

use edgeplug_train::Head;
use edgeplug_train::fedavg::{self, Contribution, Delta};

use super::wire::{self, DpSettings, Upload};

/// What became of one upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// For a round that already closed.
    Late,
    /// A second upload from a gateway already counted this round.
    Duplicate,
    /// For a round not open yet, another head, group or plugin.
    WrongRound,
    /// Malformed, of another head shape, or not under the round's DP settings.
    Refused(String),
}

impl Verdict {
    pub fn code(&self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Late => "late",
            Verdict::Duplicate => "duplicate",
            Verdict::WrongRound => "wrong-round",
            Verdict::Refused(_) => "refused",
        }
    }
}

struct Accepted {
    samples: u64,
    delta: Delta,
    /// The bootstrap round's starting head and its digest.
    base: Option<(String, Head)>,
}

/// The uploads of round `round`.
pub struct Collector {
    group: String,
    plugin: String,
    round: u64,
    /// The global head uploads must be relative to (`None`: a bootstrap round).
    global: Option<(String, Head)>,
    dp: Option<DpSettings>,
    accepted: BTreeMap<String, Accepted>,
    /// Uploads left out, by verdict code.
    pub ignored: BTreeMap<&'static str, u64>,
}

/// A closed round's average.
pub struct Averaged {
    pub head: Head,
    pub participants: Vec<String>,
    pub samples: u64,
}

impl Collector {
    pub fn new(
        group: &str,
        plugin: &str,
        round: u64,
        global: Option<&Head>,
        dp: Option<DpSettings>,
    ) -> Collector {
        Collector {
            group: group.to_string(),
            plugin: plugin.to_string(),
            round,
            global: global.map(|h| (wire::head_digest(h), h.clone())),
            dp,
            accepted: BTreeMap::new(),
            ignored: BTreeMap::new(),
        }
    }

    /// Gateways counted so far.
    pub fn arrived(&self) -> usize {
        self.accepted.len()
    }

    /// Uploads left out, all verdicts together.
    pub fn ignored_total(&self) -> u64 {
        self.ignored.values().sum()
    }

    /// Judges `bytes`, which arrived on gateway `sender`'s upload topic.
    pub fn offer(&mut self, sender: &str, bytes: &[u8]) -> Verdict {
        let verdict = self.judge(sender, bytes);
        if verdict != Verdict::Accepted {
            *self.ignored.entry(verdict.code()).or_default() += 1;
        }
        verdict
    }

    fn judge(&mut self, sender: &str, bytes: &[u8]) -> Verdict {
        let upload = match wire::parse_upload(bytes) {
            Ok(upload) => upload,
            Err(e) => return Verdict::Refused(e.to_string()),
        };
        if upload.gateway != sender {
            return Verdict::Refused(format!(
                "an upload naming {:?} arrived on {sender:?}'s topic",
                upload.gateway
            ));
        }
        if upload.group != self.group || upload.plugin != self.plugin {
            return Verdict::WrongRound;
        }
        if upload.round < self.round {
            return Verdict::Late;
        }
        if upload.round > self.round {
            return Verdict::WrongRound;
        }
        if self.accepted.contains_key(sender) {
            return Verdict::Duplicate;
        }
        match self.check(&upload) {
            Ok(accepted) => {
                self.accepted.insert(sender.to_string(), accepted);
                Verdict::Accepted
            }
            Err(verdict) => verdict,
        }
    }

    fn check(&self, upload: &Upload) -> Result<Accepted, Verdict> {
        let refuse = |m: String| Verdict::Refused(m);
        if let Some((digest, head)) = &self.global {
            if upload.base != *digest {
                return Err(Verdict::WrongRound);
            }
            if upload.spec() != head.spec() {
                return Err(refuse(format!(
                    "a head of {:?} does not match the global head's {:?}",
                    upload.spec(),
                    head.spec()
                )));
            }
        }
        if upload.samples == 0 {
            return Err(refuse("an upload of 0 samples".into()));
        }
        if upload.dp != self.dp {
            return Err(refuse(format!(
                "the upload's DP settings {:?} are not the round's {:?}",
                upload.dp, self.dp
            )));
        }
        let delta = upload.delta().map_err(|e| refuse(e.to_string()))?;
        let base = match (&self.global, upload.bootstrap_base()) {
            (Some(_), Ok(None)) => None,
            (None, Ok(Some(head))) => {
                let digest = wire::head_digest(&head);
                if digest != upload.base {
                    return Err(refuse("the starting head is not the one named".into()));
                }
                Some((digest, head))
            }
            (Some(_), Ok(Some(_))) => {
                return Err(refuse("a starting head in a round that has one".into()));
            }
            (None, Ok(None)) => {
                return Err(refuse(
                    "a bootstrap upload without its starting head".into(),
                ));
            }
            (_, Err(e)) => return Err(refuse(e.to_string())),
        };
        Ok(Accepted {
            samples: upload.samples,
            delta,
            base,
        })
    }

    /// FedAvg of the accepted deltas onto the global head, or, in a bootstrap round, onto the
    /// starting head most samples share (the others are left out and counted).
    pub fn average(&mut self) -> anyhow::Result<Averaged> {
        let (digest, base) = match &self.global {
            Some(global) => global.clone(),
            None => {
                let mut weight: BTreeMap<&str, u64> = BTreeMap::new();
                for a in self.accepted.values() {
                    if let Some((d, _)) = &a.base {
                        *weight.entry(d).or_default() += a.samples;
                    }
                }
                let best = weight
                    .iter()
                    .max_by_key(|(_, w)| **w)
                    .map(|(d, _)| d.to_string())
                    .ok_or_else(|| anyhow::anyhow!("no upload to average"))?;
                let head = self
                    .accepted
                    .values()
                    .find_map(|a| a.base.as_ref().filter(|(d, _)| *d == best))
                    .map(|(_, h)| h.clone())
                    .expect("the best digest is an accepted upload's");
                (best, head)
            }
        };
        let mut participants = Vec::new();
        let mut contributions = Vec::new();
        let mut other_base = 0;
        for (id, a) in &self.accepted {
            if a.base.as_ref().is_some_and(|(d, _)| *d != digest) {
                other_base += 1;
                continue;
            }
            participants.push(id.clone());
            contributions.push(Contribution {
                samples: a.samples,
                delta: &a.delta,
            });
        }
        let samples = contributions.iter().map(|c| c.samples).sum();
        let head = fedavg::average(&base, &contributions)?;
        if other_base > 0 {
            *self.ignored.entry("other-base").or_default() += other_base;
        }
        Ok(Averaged {
            head,
            participants,
            samples,
        })
    }
}

#[cfg(test)]
#[path = "collect_tests.rs"]
mod tests;

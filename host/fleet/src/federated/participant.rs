//! The gateway's side of federated averaging, run by the fleet agent for the plugins of
//! `[fleet.federated]`: on an open round, fine-tune from the round's head on the training
//! lane, upload the delta (clipped and noised as the round says); on a new averaged head,
//! install it through the gateway's gate. The local head keeps serving throughout, and a
//! refused head changes nothing.
//!
//! What it accepted is persisted (`state_dir/federated.json`, crash-safe): the last sequence
//! of each topic (a replayed, older message is refused), the round it uploaded for and the
//! round whose head it gated, so a message delivered again after a restart does nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use edgeplug_bundle::TrustStore;
use edgeplug_gateway::Gateway;
use edgeplug_gateway::learning::{HeadOrigin, JobSpec};
use edgeplug_train::fedavg::Delta;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use serde::{Deserialize, Serialize};

use super::wire::{self, HeadNotice, RoundNotice, Upload};
use crate::config::FederatedConfig;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginState {
    round_sequence: u64,
    head_sequence: u64,
    /// `(round, base digest)` of the last upload.
    uploaded: Option<(u64, String)>,
    /// The last round whose head went through the gate (accepted or not).
    gated_round: Option<u64>,
}

/// A participant, shared by the agent's tasks.
pub struct Participant {
    gateway: Arc<Gateway>,
    group: String,
    id: String,
    config: FederatedConfig,
    client: AsyncClient,
    path: PathBuf,
    state: Mutex<BTreeMap<String, PluginState>>,
    /// Plugins with a round's job under way (one at a time each).
    training: Mutex<BTreeSet<String>>,
    /// The newest round notice that arrived during a plugin's job: started when it ends, so a
    /// gateway that came back to a queue of old rounds still joins the current one.
    pending: Mutex<BTreeMap<String, (RoundNotice, TrustStore)>>,
}

/// A problem to report on the gateway's status: `(code, message, plugin)`.
pub type Problem = (&'static str, String, String);

impl Participant {
    pub fn open(
        gateway: Arc<Gateway>,
        group: &str,
        id: &str,
        config: FederatedConfig,
        client: AsyncClient,
    ) -> anyhow::Result<Arc<Participant>> {
        let path = gateway.config.state_dir.join("federated.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a federated state file", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Arc::new(Participant {
            gateway,
            group: group.to_string(),
            id: id.to_string(),
            config,
            client,
            path,
            state: Mutex::new(state),
            training: Mutex::new(BTreeSet::new()),
            pending: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The topics to subscribe to: each plugin's round and head.
    pub fn filters(&self) -> Vec<String> {
        self.config
            .plugins
            .iter()
            .flat_map(|p| {
                [
                    super::round_topic(&self.group, p),
                    super::head_topic(&self.group, p),
                ]
            })
            .collect()
    }

    /// Whether `topic` is one of ours.
    pub fn handles(&self, topic: &str) -> bool {
        matches!(super::parse_topic(&self.group, topic),
            Some((plugin, "round" | "head")) if self.config.plugins.iter().any(|p| p == plugin))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PluginState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(&*self.lock()).expect("the state serializes");
        edgeplug_bundle::write_file_atomic(&self.path, &bytes)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Handles a message on one of [`Participant::filters`]; a refusal is returned for the
    /// status. Long work (a fine-tune, the gate) runs in a task of its own.
    pub fn on_message(self: &Arc<Self>, topic: &str, payload: &[u8]) -> Result<(), Problem> {
        let Some((plugin, kind)) = super::parse_topic(&self.group, topic) else {
            return Ok(());
        };
        let plugin = plugin.to_string();
        if payload.is_empty() {
            return Ok(()); // a cleared retained topic
        }
        let refused = |code, e: String| (code, format!("{topic}: {e}"), plugin.clone());
        let trust = TrustStore::load(&self.gateway.config.trust_dir)
            .map_err(|e| refused("federated-refused", format!("trust store: {e}")))?;
        match kind {
            "round" => {
                let notice: RoundNotice = wire::verify(payload, &trust)
                    .map_err(|e| refused("federated-refused", e.to_string()))?;
                self.check(
                    &notice.group,
                    &notice.plugin,
                    &plugin,
                    notice.sequence,
                    true,
                )
                .map_err(|e| refused("federated-refused", e))?;
                self.start_round(plugin.clone(), notice, trust)
                    .map_err(|e| refused("federated-round", e))?;
            }
            "head" => {
                let notice: HeadNotice = wire::verify(payload, &trust)
                    .map_err(|e| refused("federated-refused", e.to_string()))?;
                self.check(
                    &notice.group,
                    &notice.plugin,
                    &plugin,
                    notice.sequence,
                    false,
                )
                .map_err(|e| refused("federated-refused", e))?;
                self.install(plugin.clone(), notice, trust)
                    .map_err(|e| refused("federated-head", e))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The message is for this group and plugin, and not older than the last accepted on its
    /// topic (an equal sequence is the same message again: allowed, and idempotent).
    fn check(
        &self,
        group: &str,
        named: &str,
        plugin: &str,
        sequence: u64,
        round: bool,
    ) -> Result<(), String> {
        if group != self.group || named != plugin {
            return Err(format!(
                "a message for {named} in group {group} on this topic"
            ));
        }
        let mut state = self.lock();
        let entry = state.entry(plugin.to_string()).or_default();
        let last = if round {
            &mut entry.round_sequence
        } else {
            &mut entry.head_sequence
        };
        if sequence < *last {
            return Err(format!(
                "sequence {sequence} is below the last accepted {last}: a replay"
            ));
        }
        *last = sequence;
        drop(state);
        self.save().map_err(|e| format!("{e:#}"))
    }

    fn start_round(
        self: &Arc<Self>,
        plugin: String,
        notice: RoundNotice,
        trust: TrustStore,
    ) -> Result<(), String> {
        let mut training = self.training.lock().unwrap_or_else(|p| p.into_inner());
        if training.contains(&plugin) {
            // The job under way ends first; the newest notice (open or closed) decides then.
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(plugin, (notice, trust));
            return Ok(());
        }
        if !notice.open {
            return Ok(());
        }
        if let Some(floor) = self.config.dp_noise {
            let ok = notice.dp.is_some_and(|dp| {
                dp.noise_multiplier >= floor && self.config.dp_clip.is_none_or(|c| dp.clip <= c)
            });
            if !ok {
                return Err(format!(
                    "round {} asks for {:?}, below this gateway's floor (noise multiplier {floor}, clip {:?}): not taking part",
                    notice.round, notice.dp, self.config.dp_clip
                ));
            }
        }
        let key = (notice.round, notice.base.clone().unwrap_or_default());
        let uploaded = self.lock().get(&plugin).and_then(|s| s.uploaded.clone());
        if uploaded
            .as_ref()
            .is_some_and(|(r, b)| (*r, b) == (key.0, &key.1))
        {
            return Ok(());
        }
        training.insert(plugin.clone());
        drop(training);
        let me = self.clone();
        tokio::spawn(async move {
            let result = me.take_part(&plugin, &notice, &trust).await;
            me.training
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&plugin);
            let next = me
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&plugin);
            if let Some((next, trust)) = next
                && let Err(e) = me.start_round(plugin.clone(), next, trust)
            {
                tracing::warn!(plugin, "federated round not joined: {e}");
            }
            match result {
                Ok(Some(samples)) => tracing::info!(
                    plugin,
                    round = notice.round,
                    samples,
                    "federated delta uploaded"
                ),
                Ok(None) => tracing::info!(
                    plugin,
                    round = notice.round,
                    "no training samples: not taking part"
                ),
                Err(e) => tracing::warn!(
                    plugin,
                    round = notice.round,
                    "federated round failed: {e:#}"
                ),
            }
        });
        Ok(())
    }

    /// Trains from the round's head and uploads the delta; `None` when there was nothing to
    /// train on.
    async fn take_part(
        &self,
        plugin: &str,
        notice: &RoundNotice,
        trust: &TrustStore,
    ) -> anyhow::Result<Option<u64>> {
        let job = |start, max_steps| JobSpec {
            max_steps,
            max_wall: Duration::from_millis(self.config.max_wall_ms),
            seed: rand::random(),
            start,
        };
        // A bootstrap upload carries the starting head as it is: never under a round that
        // promises differential privacy (a conforming aggregator does not send one).
        anyhow::ensure!(
            notice.dp.is_none() || notice.global.is_some(),
            "a round with differential privacy but no global head: not taking part"
        );
        let (base, bootstrap) = match &notice.global {
            Some(text) => {
                let (head, _) = wire::decode_head(text, trust)?;
                anyhow::ensure!(
                    notice.base.as_deref() == Some(wire::head_digest(&head).as_str()),
                    "the round's head is not the one its notice names"
                );
                (head, false)
            }
            None => (
                self.gateway.finetune(plugin, job(None, 0)).await?.head,
                true,
            ),
        };
        let trained = self
            .gateway
            .finetune(plugin, job(Some(base.clone()), self.config.max_steps))
            .await?;
        if trained.samples == 0 {
            return Ok(None);
        }
        let mut delta = Delta::between(&trained.head, &base)?;
        let norm = delta.norm();
        if let Some(dp) = notice.dp {
            delta.privatize(dp.clip, dp.noise_multiplier, rand::random())?;
        }
        let spec = base.spec();
        let base_values = |h: &edgeplug_train::Head| {
            wire::encode_values(h.params().iter().map(|p| p.as_f32().unwrap_or(&[])))
        };
        let upload = Upload {
            group: self.group.clone(),
            plugin: plugin.to_string(),
            gateway: self.id.clone(),
            round: notice.round,
            base: wire::head_digest(&base),
            samples: trained.samples,
            steps: trained.steps,
            features: spec.features,
            classes: spec.classes,
            hidden: spec.hidden,
            delta: wire::encode_values(delta.params().iter().map(Vec::as_slice)),
            norm,
            dp: notice.dp,
            bootstrap_base: bootstrap.then(|| base_values(&base)),
        };
        self.client
            .publish(
                super::upload_topic(&self.group, plugin, &self.id),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&upload).expect("uploads serialize"),
            )
            .await
            .context("the MQTT client stopped")?;
        let key = (notice.round, notice.base.clone().unwrap_or_default());
        self.lock().entry(plugin.to_string()).or_default().uploaded = Some(key);
        self.save()?;
        Ok(Some(trained.samples))
    }

    fn install(
        self: &Arc<Self>,
        plugin: String,
        notice: HeadNotice,
        trust: TrustStore,
    ) -> Result<(), String> {
        let gated = self.lock().get(&plugin).and_then(|s| s.gated_round);
        if gated.is_some_and(|g| g >= notice.round) {
            return Ok(());
        }
        let (head, _) = wire::decode_head(&notice.checkpoint, &trust).map_err(|e| e.to_string())?;
        let me = self.clone();
        tokio::spawn(async move {
            let origin = HeadOrigin::Federated {
                round: notice.round,
                samples: notice.record.samples,
            };
            match me.gateway.install_head(&plugin, head, origin).await {
                Ok(report) => {
                    tracing::info!(plugin, round = notice.round, accepted = report.accepted,
                        reason = ?report.reason, "federated head gated");
                    me.lock().entry(plugin).or_default().gated_round = Some(notice.round);
                    if let Err(e) = me.save() {
                        tracing::warn!("{e:#}");
                    }
                }
                // Busy or unreadable samples may pass: the next head (or a restart) retries.
                Err(e) => tracing::warn!(
                    plugin,
                    round = notice.round,
                    "federated head not gated: {e}"
                ),
            }
        });
        Ok(())
    }
}

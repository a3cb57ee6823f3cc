//! Learning at the edge, the gateway's side (issue 16): fine-tune jobs of plugins that learn
//! (world `learning-plugin`) run on a low-priority lane of their own with a budget (steps,
//! wall time, host tensor memory); the head a job returns, or one a federated round averaged,
//! goes live only through [`Gateway::install_head`]'s gate (held-out and reference accuracy
//! against the live head, then the self-tests with it live), signed by the device key
//! ([`store`]); one admin call rolls back to the previous head.
//!
//! Invariants: a head that failed the gate is never live; a request sees either the old head
//! or the new one (a head is swapped whole, [`edgeplug_runtime::learning::LiveHeads`]); jobs and
//! gates never run on the request lanes, and one runs at a time.

pub mod gate;
pub mod metrics;
pub mod recent;
pub mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use edgeplug_runtime::learning::{Job, LiveHeads, Sample, SessionBudget};
use edgeplug_runtime::{InvokeError, LoadedPlugin, selftest};
use edgeplug_train::Head;
use edgeplug_train::checkpoint::Metadata;

use super::Gateway;
use super::lanes::LowPriorityPool;
use gate::{LabeledFeatures, Margins, Verdict};

/// `[learning]` in the gateway's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearningConfig {
    /// Percent of each plugin's samples kept out of training for the gate. Default: 20.
    pub holdout_percent: u32,
    /// Held-out accuracy a new head may lose against the live head. Default: 0.02.
    pub max_accuracy_drop: f64,
    /// Accuracy on the plugin's `[learn] reference` set a new head may lose. Default: 0.02.
    pub max_original_drop: f64,
    /// A job's optimizer steps. Default: 500.
    pub max_steps: u32,
    /// A job's (and a gate's) wall time, ms. Default: 60000.
    pub max_wall_ms: u64,
    /// Host tensor memory a job or gate may hold, MiB. Default: 64.
    pub memory_mib: usize,
    /// Fine-tune every learning plugin this often, seconds; 0: only when asked. Default: 0.
    pub schedule_secs: u64,
    /// A scheduled job runs only when this many samples arrived since the last. Default: 10.
    pub min_new_samples: usize,
    /// Checkpoints kept per plugin. Default: 3.
    pub keep_heads: usize,
}

impl Default for LearningConfig {
    fn default() -> Self {
        LearningConfig {
            holdout_percent: 20,
            max_accuracy_drop: 0.02,
            max_original_drop: 0.02,
            max_steps: 500,
            max_wall_ms: 60_000,
            memory_mib: 64,
            schedule_secs: 0,
            min_new_samples: 10,
            keep_heads: 3,
        }
    }
}

/// One fine-tune job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub max_steps: u32,
    pub max_wall: Duration,
    pub seed: u64,
    /// The weights to start from; `None`: the live head, or the head the plugin ships.
    pub start: Option<Head>,
}

/// What a job trained.
#[derive(Debug, Clone)]
pub struct TrainedHead {
    pub head: Head,
    /// Training samples it saw (the held-out part excluded).
    pub samples: u64,
    pub steps: u32,
    pub took: Duration,
    pub peak_tensor_bytes: usize,
}

/// Where a head to install came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadOrigin {
    /// A job on this gateway, on this many samples.
    Local { samples: u64 },
    /// A federated round's average, over this many samples of all its gateways.
    Federated { round: u64, samples: u64 },
}

impl HeadOrigin {
    fn describe(&self) -> String {
        match self {
            HeadOrigin::Local { .. } => "local".into(),
            HeadOrigin::Federated { round, .. } => format!("federated round {round}"),
        }
    }

    fn samples(&self) -> u64 {
        match self {
            HeadOrigin::Local { samples } | HeadOrigin::Federated { samples, .. } => *samples,
        }
    }
}

/// What the gate found, and the checkpoint that went live if it passed.
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    pub accepted: bool,
    /// Why a head was refused.
    pub reason: Option<String>,
    #[serde(flatten)]
    pub verdict: Option<Verdict>,
    pub self_tests: usize,
    /// The live checkpoint's sequence number, when accepted.
    pub sequence: Option<u64>,
}

/// Why learning could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error("no active plugin {0:?}")]
    NotFound(String),
    #[error("plugin {0:?} does not learn (its world is not learning-plugin)")]
    NotLearning(String),
    #[error("the training lane is full; try again later")]
    Busy,
    #[error("the fine-tune job failed: {0}")]
    Job(String),
    #[error("the plugin's samples cannot be read: {0}")]
    Samples(String),
    #[error("the head cannot be stored: {0}")]
    Store(String),
    #[error("{0}")]
    Refused(String),
}

impl LearnError {
    /// The admin API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            LearnError::NotFound(_) => "not-found",
            LearnError::NotLearning(_) => "not-learning",
            LearnError::Busy => "busy",
            LearnError::Job(_) => "job-failed",
            LearnError::Samples(_) | LearnError::Store(_) => "storage",
            LearnError::Refused(_) => "refused",
        }
    }
}

/// The gateway's learning state.
pub struct Learning {
    pub config: LearningConfig,
    store: store::HeadStore,
    live_heads: Arc<LiveHeads>,
    /// Jobs and gates: one thread at the lowest CPU priority, so requests keep their cores.
    lane: LowPriorityPool,
    /// One job or gate at a time (they share the lane anyway; this keeps a gate from judging
    /// against a live head that changes under it).
    running: tokio::sync::Mutex<()>,
    pub metrics: Arc<metrics::LearningMetrics>,
    /// Samples each plugin had when its last job started (for the schedule).
    trained_at: Mutex<BTreeMap<String, usize>>,
    /// The last job or gate of each plugin, for `GET /v1/plugins`.
    last: Mutex<BTreeMap<String, serde_json::Value>>,
    /// Inputs learning plugins answered lately, for feedback by request id.
    pub recent: recent::RecentInputs,
    /// What `GET /v1/plugins` shows of each plugin's live checkpoint, kept as it changes so a
    /// listing reads no checkpoint from disk.
    live: Mutex<BTreeMap<String, serde_json::Value>>,
}

impl std::fmt::Debug for Learning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learning")
            .field("store", &self.store)
            .finish()
    }
}

impl Learning {
    pub fn open(
        config: &crate::Config,
        live_heads: Arc<LiveHeads>,
        metrics: Arc<metrics::LearningMetrics>,
    ) -> anyhow::Result<Learning> {
        Ok(Learning {
            store: store::HeadStore::open(&config.state_dir, config.learning.keep_heads)?,
            config: config.learning.clone(),
            live_heads,
            lane: LowPriorityPool::new("edgeplug-train", 1, 2, 19)?,
            running: tokio::sync::Mutex::new(()),
            metrics,
            trained_at: Mutex::default(),
            last: Mutex::default(),
            recent: recent::RecentInputs::default(),
            live: Mutex::default(),
        })
    }

    /// Makes each stored live head live again after a start; a head that does not verify is
    /// logged and left out (its plugin answers with the head it ships).
    pub fn restore(&self, plugins: &[String]) {
        for plugin in plugins {
            match self.store.live(plugin) {
                Ok(Some((head, metadata))) => {
                    tracing::info!(plugin, sequence = metadata.sequence, "trained head live");
                    self.went_live(plugin, Some(&metadata));
                    self.live_heads.set(plugin, Some(Arc::new(head)));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(plugin, error = %e, "not using the stored head");
                    self.live
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(plugin.clone(), serde_json::json!({"error": e.to_string()}));
                }
            }
        }
    }

    fn budget(&self, wall: Duration) -> SessionBudget {
        SessionBudget {
            wall,
            tensor_bytes: self.config.memory_mib.saturating_mul(1 << 20),
        }
    }

    /// Records which checkpoint is live for `plugin` (`None`: the head it ships), for the
    /// listing and the metrics.
    fn went_live(&self, plugin: &str, metadata: Option<&Metadata>) {
        self.metrics.set_live(plugin, metadata.map(|m| m.sequence));
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match metadata {
            Some(m) => live.insert(
                plugin.to_string(),
                serde_json::json!({
                    "sequence": m.sequence, "origin": m.origin, "samples": m.samples,
                    "created_unix_ms": m.created_unix_ms, "key_id": m.key_id,
                    "plugin_version": m.plugin_version,
                }),
            ),
            None => live.remove(plugin),
        };
    }

    /// The plugin's live head as `GET /v1/plugins` shows it.
    pub fn status(&self, plugin: &str) -> Option<serde_json::Value> {
        let head = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(plugin)
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let last = self.last(plugin);
        (!head.is_null() || last.is_some())
            .then(|| serde_json::json!({"live": head, "last": last, "checkpoints": self.store.sequences(plugin)}))
    }

    fn last(&self, plugin: &str) -> Option<serde_json::Value> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(plugin)
            .cloned()
    }

    fn record(&self, plugin: &str, value: serde_json::Value) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plugin.to_string(), value);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn job_error(e: InvokeError) -> LearnError {
    LearnError::Job(e.to_string())
}

impl Gateway {
    fn learning_plugin(&self, plugin: &str) -> Result<Arc<crate::ActivePlugin>, LearnError> {
        let active = self
            .registry
            .get(plugin)
            .ok_or_else(|| LearnError::NotFound(plugin.to_string()))?;
        if !active.plugin.learns() {
            return Err(LearnError::NotLearning(plugin.to_string()));
        }
        Ok(active)
    }

    /// The plugin's samples, split into training and held-out ones. Blocking (reads the
    /// store): call it on the training lane.
    fn split_samples(&self, plugin: &str) -> Result<(Vec<Sample>, Vec<Sample>), LearnError> {
        let all = self
            .samples_of(plugin)
            .map_err(|e| LearnError::Samples(e.to_string()))?;
        Ok(gate::split(all, self.learning.config.holdout_percent))
    }

    /// Runs the plugin's `finetune` export as a job on the training lane: from `job.start`
    /// (`None`: the live head, or the head the plugin ships) on the plugin's training samples,
    /// within the job's step and wall-time budget and the configured memory. `max_steps: 0`
    /// gives back the starting head untrained. The head is not installed.
    pub async fn finetune(
        self: &Arc<Self>,
        plugin: &str,
        job: JobSpec,
    ) -> Result<TrainedHead, LearnError> {
        let _one = self.learning.running.lock().await;
        self.finetune_locked(plugin, job).await
    }

    async fn finetune_locked(
        self: &Arc<Self>,
        plugin: &str,
        job: JobSpec,
    ) -> Result<TrainedHead, LearnError> {
        let active = self.learning_plugin(plugin)?;
        let start = job
            .start
            .map(Arc::new)
            .or_else(|| self.learning.live_heads.get(plugin));
        let budget = self.learning.budget(job.max_wall);
        let (gw, name) = (self.clone(), plugin.to_string());
        let began = Instant::now();
        // The samples are read on the lane too: a store of many MiB is not read on the reactor.
        let outcome = self
            .learning
            .lane
            .run(move || {
                let (train, _) = gw.split_samples(&name)?;
                let samples = train.len() as u64;
                let run = Job {
                    start,
                    samples: train.into(),
                    max_steps: job.max_steps,
                    seed: job.seed,
                };
                let mut session = active.plugin.learn_session(budget).map_err(job_error)?;
                let outcome = session.finetune(run).map_err(job_error)?;
                Ok::<_, LearnError>((outcome, session.peak_tensor_bytes(), samples))
            })
            .await
            .ok_or(LearnError::Busy)?;
        let (outcome, peak, samples) = match outcome {
            Ok(done) => done,
            Err(e) => {
                self.learning.metrics.job(plugin, "failed");
                return Err(e);
            }
        };
        self.learning.metrics.job(plugin, "done");
        Ok(TrainedHead {
            head: outcome.head,
            samples,
            steps: outcome.steps,
            took: began.elapsed(),
            peak_tensor_bytes: peak,
        })
    }

    /// Gates `head` and, if it passes, signs it with the device key, stores it and makes it
    /// the plugin's live head. The gate: the same shape as the live head (or the shipped one),
    /// held-out accuracy at most `max_accuracy_drop` below the live head's, reference-set
    /// accuracy at most `max_original_drop` below, then every self-test with it live. A
    /// refused head changes nothing (`accepted: false` and the reason).
    pub async fn install_head(
        self: &Arc<Self>,
        plugin: &str,
        head: Head,
        origin: HeadOrigin,
    ) -> Result<GateReport, LearnError> {
        let _one = self.learning.running.lock().await;
        self.install_head_locked(plugin, head, origin).await
    }

    async fn install_head_locked(
        self: &Arc<Self>,
        plugin: &str,
        head: Head,
        origin: HeadOrigin,
    ) -> Result<GateReport, LearnError> {
        let active = self.learning_plugin(plugin)?;
        let live = self.learning.live_heads.get(plugin);
        let budget = self
            .learning
            .budget(Duration::from_millis(self.learning.config.max_wall_ms));
        let margins = Margins {
            max_accuracy_drop: self.learning.config.max_accuracy_drop,
            max_original_drop: self.learning.config.max_original_drop,
        };
        let candidate = Arc::new(head);
        let checked = candidate.clone();
        let (gw, name, gated_plugin) = (self.clone(), plugin.to_string(), active.clone());
        let report = self
            .learning
            .lane
            .run(move || {
                let (_, held_out) = gw.split_samples(&name)?;
                run_gate(
                    &gated_plugin.plugin,
                    checked,
                    live,
                    held_out,
                    budget,
                    margins,
                )
            })
            .await
            .ok_or(LearnError::Busy)??;
        if !report.accepted {
            self.learning.metrics.gate(plugin, "refused");
            tracing::warn!(plugin, reason = ?report.reason, "trained head refused by the gate");
            self.learning.record(
                plugin,
                serde_json::json!({"at_unix_ms": unix_ms(), "origin": origin.describe(), "gate": report}),
            );
            return Ok(report);
        }
        let metadata = Metadata {
            plugin: plugin.to_string(),
            sequence: 0,
            features: candidate.spec().features,
            classes: candidate.spec().classes,
            hidden: candidate.spec().hidden,
            samples: origin.samples(),
            created_unix_ms: unix_ms(),
            key_id: String::new(),
            origin: Some(origin.describe()),
            plugin_version: Some(active.version.to_string()),
        };
        let learning = self.learning.clone();
        let stored = {
            let (name, head) = (plugin.to_string(), candidate.clone());
            tokio::task::spawn_blocking(move || learning.store.commit(&name, &head, metadata))
                .await
                .map_err(|e| LearnError::Store(e.to_string()))?
                .map_err(|e| LearnError::Store(e.to_string()))?
        };
        self.learning.live_heads.set(plugin, Some(candidate));
        self.learning.metrics.gate(plugin, "accepted");
        self.learning.went_live(plugin, Some(&stored));
        tracing::info!(plugin, sequence = stored.sequence, origin = %origin.describe(), "trained head live");
        let report = GateReport {
            sequence: Some(stored.sequence),
            ..report
        };
        self.learning.record(
            plugin,
            serde_json::json!({"at_unix_ms": unix_ms(), "origin": origin.describe(), "gate": report}),
        );
        Ok(report)
    }

    /// A job with the configured budget, then the gate: what the admin API and the schedule
    /// run. Returns the job's figures and the gate's report.
    pub async fn train_and_install(
        self: &Arc<Self>,
        plugin: &str,
        seed: u64,
    ) -> Result<(TrainedHead, GateReport), LearnError> {
        let _one = self.learning.running.lock().await;
        let config = &self.learning.config;
        let before = self.sample_count(plugin).unwrap_or(0);
        self.learning
            .trained_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plugin.to_string(), before);
        let job = JobSpec {
            max_steps: config.max_steps,
            max_wall: Duration::from_millis(config.max_wall_ms),
            seed,
            start: None,
        };
        let trained = self.finetune_locked(plugin, job).await?;
        let origin = HeadOrigin::Local {
            samples: trained.samples,
        };
        let report = self
            .install_head_locked(plugin, trained.head.clone(), origin)
            .await?;
        Ok((trained, report))
    }

    /// Makes the previous head live again (or the shipped one when there is none). Returns
    /// the sequence number now live.
    pub async fn rollback_head(self: &Arc<Self>, plugin: &str) -> Result<Option<u64>, LearnError> {
        let _one = self.learning.running.lock().await;
        self.learning_plugin(plugin)?;
        let learning = self.learning.clone();
        let name = plugin.to_string();
        let back = tokio::task::spawn_blocking(move || learning.store.rollback(&name))
            .await
            .map_err(|e| LearnError::Store(e.to_string()))?
            .map_err(|e| LearnError::Refused(e.to_string()))?;
        let sequence = back.as_ref().map(|(_, m)| m.sequence);
        self.learning
            .went_live(plugin, back.as_ref().map(|(_, m)| m));
        self.learning
            .live_heads
            .set(plugin, back.map(|(head, _)| Arc::new(head)));
        self.learning.metrics.rollback(plugin);
        tracing::info!(plugin, ?sequence, "head rolled back");
        Ok(sequence)
    }

    /// Every `schedule_secs`, a job for each learning plugin that got `min_new_samples`
    /// since its last one. Runs until the gateway is dropped.
    pub fn spawn_learning_schedule(self: &Arc<Self>) {
        let every = self.learning.config.schedule_secs;
        if every == 0 {
            return;
        }
        let gw = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            tick.tick().await;
            let mut seed = 0u64;
            loop {
                tick.tick().await;
                let Some(gw) = gw.upgrade() else { return };
                for plugin in gw.registry.names() {
                    if gw.learning_plugin(&plugin).is_err() {
                        continue;
                    }
                    let have = gw.sample_count(&plugin).unwrap_or(0);
                    let had = gw
                        .learning
                        .trained_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&plugin)
                        .copied()
                        .unwrap_or(0);
                    if have < had + gw.learning.config.min_new_samples {
                        continue;
                    }
                    seed += 1;
                    match gw.train_and_install(&plugin, seed).await {
                        Ok((job, report)) => {
                            tracing::info!(plugin, steps = job.steps, accepted = report.accepted, reason = ?report.reason, "scheduled fine-tune done")
                        }
                        Err(e) => tracing::warn!(plugin, error = %e, "scheduled fine-tune failed"),
                    }
                }
            }
        });
    }
}

/// The gate, blocking: features of the held-out and reference samples on one instance, the
/// accuracy comparison, then the self-tests with the candidate live.
fn run_gate(
    plugin: &LoadedPlugin,
    candidate: Arc<Head>,
    live: Option<Arc<Head>>,
    held_out: Vec<Sample>,
    budget: SessionBudget,
    margins: Margins,
) -> Result<GateReport, LearnError> {
    let refused = |reason: String, verdict: Option<Verdict>| GateReport {
        accepted: false,
        reason: Some(reason),
        verdict,
        self_tests: 0,
        sequence: None,
    };
    let files = plugin
        .shared()
        .gate_files()
        .cloned()
        .ok_or_else(|| LearnError::NotLearning(plugin.info().name.clone()))?;
    let reference = match files.manifest.learn.reference.as_deref() {
        Some(path) => {
            let bytes = files
                .get(path)
                .map_err(|e| LearnError::Job(format!("{e:#}")))?;
            gate::parse_reference(bytes)
                .map_err(|e| LearnError::Job(format!("the reference set {path}: {e}")))?
        }
        None => Vec::new(),
    };
    let mut session = plugin.learn_session(budget).map_err(job_error)?;
    // The head the candidate is judged against: the live one, else the one the plugin ships
    // (what a zero-step job gives back).
    let live = match live {
        Some(live) => live,
        None => Arc::new(
            session
                .finetune(Job {
                    start: None,
                    samples: Vec::new().into(),
                    max_steps: 0,
                    seed: 0,
                })
                .map_err(job_error)?
                .head,
        ),
    };
    let mut features = |samples: &[Sample]| -> Result<LabeledFeatures, LearnError> {
        let rows = samples
            .iter()
            .map(|s| session.features(&s.content_type, &s.input))
            .collect::<Result<Vec<_>, _>>()
            .map_err(job_error)?;
        Ok(LabeledFeatures {
            features: gate::stack(&rows).map_err(LearnError::Job)?,
            labels: samples.iter().map(|s| s.label as usize).collect(),
        })
    };
    let held = features(&held_out)?;
    let reference = features(&reference)?;
    let verdict = gate::judge(&candidate, &live, &held, &reference, margins);
    if let Some(reason) = verdict.refusal.clone() {
        return Ok(refused(reason, Some(verdict)));
    }
    drop(session);
    let keys = &files.manifest.learn.selftest_keys;
    let files = gate::project_expectations(&files, keys).map_err(LearnError::Job)?;
    match selftest::run_via(&files, &|request| {
        let mut response = plugin.infer_with_head(request, Some(candidate.clone()))?;
        response.body = gate::project_answer(&response.body, keys);
        Ok(response)
    }) {
        Ok(passed) => Ok(GateReport {
            accepted: true,
            reason: None,
            verdict: Some(verdict),
            self_tests: passed,
            sequence: None,
        }),
        Err(e) => Ok(refused(
            format!("a self-test fails with this head: {e}"),
            Some(verdict),
        )),
    }
}

//! The gateway's side: follow the fleet's notices and make them true.
//!
//! Three tasks share one state:
//!
//! - the **connection** task polls the MQTT 5 session: clean start off, a session expiry of
//!   days, so the broker keeps the subscriptions and queues every QoS 1 notice while the
//!   gateway is away; a last will publishes `offline` on the status topic if the connection
//!   dies. It reconnects with backoff, forever.
//! - the **notice** task checks each notice (parse, signature against the gateway's trust
//!   store, the topic it arrived on, the replay guard), persists it as the desired state
//!   ([`crate::state`], crash-safe) and only then acknowledges it (manual PUBACK): a notice is
//!   never both acknowledged and lost.
//! - the **reconcile** task installs the desired version of each plugin: anti-downgrade
//!   first (an older version changes nothing and is reported), a random jitter, a pull by
//!   digest ([`crate::oci`]), then the gateway's own push pipeline (`Registry::install`: the
//!   bundle's signature and members, compile, self-tests, store, hot swap) on the gateway's
//!   admin thread, exactly as `PUT /v1/admin/plugins/NAME` runs it. A failure that may pass
//!   (the registry or broker unreachable, other bytes served than the digest names, a busy
//!   admin queue) is retried with exponential backoff; one that cannot (a bundle the gateway
//!   refuses, a failing self-test) waits for the next notice. The loop starts from the
//!   persisted desired state, so a restart resumes where it stopped.
//!
//! A **rollback** notice (format 2, see [`crate::notice`]) is the one exception to
//! anti-downgrade: when it names a version older than the active one, the agent goes back to
//! it through the gateway's own rollback (`Registry::rollback`, one kept version at a time,
//! each re-verified by the store) until the named version is active; a version the gateway no
//! longer keeps is refused and reported (`rollback-not-kept`).
//!
//! With `[fleet.federated]`, the notice task also hands the federated round and head messages
//! of the configured plugins to a [`Participant`], which trains, uploads deltas and installs
//! averaged heads through the gateway's gate (see [`crate::federated`]).
//!
//! After every change the agent publishes its [`GatewayStatus`], retained, and again every
//! `status_interval_ms` (the request, error and p99 figures a staged rollout gates on).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use edgeplug_bundle::{StoreError, TrustStore};
use edgeplug_gateway::{AdminError, Gateway};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::FleetConfig;
use crate::federated::participant::Participant;
use crate::notice::{NoticeKind, SignedNotice};
use crate::oci::{PullError, Registry};
use crate::state::{Accepted, StateFile, Verdict};
use crate::status::{ErrorReport, GatewayStatus, Health, PluginStatus};
use crate::topics::{self, NoticeTopic};

/// A running agent. [`Agent::stop`] says goodbye to the broker; dropping it only stops its
/// tasks (the broker then publishes the last will).
pub struct Agent {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("client_id", &self.shared.config.client_id)
            .field("group", &self.shared.config.group)
            .finish()
    }
}

/// Starts the agent if the gateway's configuration has a `[fleet]` table; `config_dir` is the
/// configuration file's directory (relative paths in the table resolve against it).
pub async fn start_if_configured(
    gateway: Arc<Gateway>,
    config_dir: &Path,
) -> anyhow::Result<Option<Agent>> {
    let Some(table) = gateway.config.fleet.as_ref() else {
        return Ok(None);
    };
    let config = FleetConfig::from_table(table, config_dir)?;
    Ok(Some(Agent::start(gateway, config).await?))
}

struct Shared {
    gateway: Arc<Gateway>,
    config: FleetConfig,
    registry: Registry,
    client: AsyncClient,
    file: StateFile,
    state: Mutex<State>,
    /// Wakes the reconcile task when the desired state changed.
    wake: Notify,
    /// `true` once the agent is stopping.
    stopping: watch::Sender<bool>,
    /// Federated averaging, when configured.
    participant: Option<Arc<Participant>>,
}

struct State {
    accepted: Accepted,
    targets: BTreeMap<String, Target>,
    last_error: Option<ErrorReport>,
}

/// One plugin's desired version and how far the agent got with it.
struct Target {
    notice: SignedNotice,
    phase: Phase,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// To do, not before `next`; `attempts` failed so far.
    Pending { attempts: u32, next: Instant },
    /// Active (or a newer version is).
    Done,
    /// Refused for good (until another notice): the report's code.
    Refused { code: String },
}

/// What one reconcile attempt ended with.
enum Outcome {
    Installed,
    Refused(ErrorReport),
    Retry(ErrorReport),
    Stopped,
}

/// Messages from the connection task to the notice task.
enum FromBroker {
    Connected { session_present: bool },
    SubscribeRefused(String),
    Notice(Publish),
}

impl Agent {
    /// Loads the persisted desired state, connects to the broker (in the background: a broker
    /// that is down is retried, the reconcile loop starts regardless) and starts the tasks.
    pub async fn start(gateway: Arc<Gateway>, config: FleetConfig) -> anyhow::Result<Agent> {
        let state_dir = gateway.config.state_dir.clone();
        let (file, mut accepted) = tokio::task::spawn_blocking(move || StateFile::open(&state_dir))
            .await
            .context("the state loader panicked")??;
        let registry = Registry::new(&config.registry_options()?)?;
        let broker = config.broker_options()?;
        let mut options = broker.mqtt_options(&config.client_id)?;
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(config.session_expiry_secs))
            .set_keep_alive(Duration::from_secs(config.keep_alive_secs))
            // The PUBACK goes out once the notice is persisted (see the module docs).
            .set_manual_acks(true)
            // At most this many unacknowledged notices in flight from the broker.
            .set_receive_maximum(Some(16))
            .set_last_will(LastWill::new(
                topics::status(&config.group, &config.client_id),
                GatewayStatus::offline(&config.group, &config.client_id).to_bytes(),
                QoS::AtLeastOnce,
                true,
                None,
            ));
        if config.federated.is_some() {
            // Round and head messages carry a head: more than rumqttc's default 10 KiB.
            options.set_max_packet_size(Some(crate::federated::wire::MAX_MESSAGE_BYTES as u32));
        }
        let (client, events) = AsyncClient::new(options, 64);
        let participant = config
            .federated
            .clone()
            .map(|f| {
                Participant::open(
                    gateway.clone(),
                    &config.group,
                    &config.client_id,
                    f,
                    client.clone(),
                )
            })
            .transpose()?;

        // Notices persisted under a key that is no longer trusted are not acted upon (their
        // sequences still guard against replays).
        let trust = load_trust(&gateway)?;
        let mut start_errors = Vec::new();
        let stale: Vec<(String, String)> = accepted
            .notices()
            .filter_map(|(topic, n)| {
                n.verify(&trust)
                    .err()
                    .map(|e| (topic.to_string(), e.to_string()))
            })
            .collect();
        for (topic, error) in stale {
            accepted.clear(&topic);
            start_errors.push(report(
                "untrusted-signer",
                format!("persisted notice on {topic}: {error}"),
                None,
            ));
        }

        let (stopping, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            gateway,
            config,
            registry,
            client,
            file,
            state: Mutex::new(State {
                accepted,
                targets: BTreeMap::new(),
                last_error: start_errors.pop(),
            }),
            wake: Notify::new(),
            stopping,
            participant,
        });
        shared.update_targets();
        let (tx, rx) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(connection_loop(events, tx, shared.stopping.subscribe())),
            tokio::spawn(notice_loop(shared.clone(), rx)),
            tokio::spawn(reconcile_loop(shared.clone())),
            tokio::spawn(status_loop(shared.clone())),
        ];
        tracing::info!(client_id = %shared.config.client_id, group = %shared.config.group,
            broker = %shared.config.broker, "fleet agent started");
        Ok(Agent { shared, tasks })
    }

    /// This gateway's status as it would publish it now.
    pub fn status(&self) -> GatewayStatus {
        self.shared.status()
    }

    /// Publishes the `offline` status, disconnects cleanly and stops the tasks.
    pub async fn stop(mut self) {
        let _ = self.shared.stopping.send(true);
        self.shared.wake.notify_one();
        let offline =
            GatewayStatus::offline(&self.shared.config.group, &self.shared.config.client_id);
        let _ = self.shared.client.try_publish(
            topics::status(&self.shared.config.group, &self.shared.config.client_id),
            QoS::AtLeastOnce,
            true,
            offline.to_bytes(),
        );
        let _ = self.shared.client.try_disconnect();
        let mut tasks = std::mem::take(&mut self.tasks);
        // The connection task ends once the DISCONNECT is out; the others on `stopping`.
        let connection = tasks.remove(0);
        if tokio::time::timeout(Duration::from_secs(3), connection)
            .await
            .is_err()
        {
            tracing::warn!("the broker connection did not close within 3 s");
        }
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn report(code: &str, message: String, plugin: Option<&str>) -> ErrorReport {
    ErrorReport {
        at: crate::unix_now(),
        code: code.to_string(),
        message,
        plugin: plugin.map(String::from),
    }
}

fn load_trust(gateway: &Gateway) -> anyhow::Result<TrustStore> {
    TrustStore::load(&gateway.config.trust_dir).with_context(|| {
        format!(
            "cannot load the trust store {}",
            gateway.config.trust_dir.display()
        )
    })
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Recomputes each plugin's target from the accepted notices (a pin wins over the
    /// group's); a changed target starts over, an unchanged one keeps its phase.
    fn update_targets(&self) {
        let mut state = self.lock();
        let desired = state
            .accepted
            .desired(&self.config.group, &self.config.client_id);
        let now = Instant::now();
        let mut targets = BTreeMap::new();
        for (name, notice) in desired {
            let phase = match state.targets.remove(&name) {
                Some(old) if old.notice == notice => old.phase,
                _ => Phase::Pending {
                    attempts: 0,
                    next: now,
                },
            };
            targets.insert(name, Target { notice, phase });
        }
        state.targets = targets;
        drop(state);
        self.wake.notify_one();
    }

    fn set_error(&self, error: ErrorReport) {
        tracing::warn!(code = %error.code, plugin = ?error.plugin, "{}", error.message);
        if let Some(plugin) = &error.plugin {
            self.gateway.metrics.rejected(plugin, &error.code);
        }
        self.lock().last_error = Some(error);
    }

    fn status(&self) -> GatewayStatus {
        let state = self.lock();
        let mut plugins = BTreeMap::new();
        let mut health = Health::Ok;
        let mut names: Vec<String> = self.gateway.registry.names();
        names.extend(state.targets.keys().cloned());
        names.sort();
        names.dedup();
        for name in names {
            let active = self.gateway.registry.get(&name);
            let target = state.targets.get(&name);
            let plugin_state = match target.map(|t| &t.phase) {
                None | Some(Phase::Done) => "installed",
                Some(Phase::Pending { attempts: 0, .. }) => {
                    health = health.worst(Health::Updating);
                    "pending"
                }
                Some(Phase::Pending { .. }) => {
                    health = health.worst(Health::Error);
                    "retrying"
                }
                Some(Phase::Refused { code }) => {
                    // An older version refused leaves the gateway on a newer one: healthy.
                    if code != "older-version" {
                        health = health.worst(Health::Error);
                    }
                    "refused"
                }
            };
            let registry = &self.gateway.registry;
            let canary = registry.canary(&name).map(|c| c.plugin.version.to_string());
            let last_canary = registry
                .last_canary(&name)
                .map(|end| format!("{} {}", end.version, end.outcome.name()));
            plugins.insert(
                name,
                PluginStatus {
                    active: active.as_ref().map(|a| a.version.to_string()),
                    desired: target.map(|t| t.notice.notice.version.to_string()),
                    state: plugin_state.to_string(),
                    requests: active.as_ref().map(|a| a.metrics.requests()).unwrap_or(0),
                    errors: active.as_ref().map(|a| a.metrics.errors()).unwrap_or(0),
                    p99_ms: active
                        .as_ref()
                        .and_then(|a| a.metrics.latency_quantile_ms(0.99)),
                    canary,
                    last_canary,
                },
            );
        }
        GatewayStatus {
            gateway: self.config.client_id.clone(),
            group: self.config.group.clone(),
            health,
            plugins,
            last_error: state.last_error.clone(),
            updated_at: crate::unix_now(),
        }
    }

    /// Publishes the status, retained. Never waits: while the broker is away the request
    /// queues (or is dropped when the queue is full; every reconnection publishes it anew).
    fn publish_status(&self) {
        let status = self.status();
        if let Err(e) = self.client.try_publish(
            topics::status(&self.config.group, &self.config.client_id),
            QoS::AtLeastOnce,
            true,
            status.to_bytes(),
        ) {
            tracing::debug!(error = %e, "status not queued");
        }
    }

    /// Handles one notice; returns whether to acknowledge it (not when it could not be
    /// persisted: the broker will deliver it again).
    async fn on_notice(&self, publish: &Publish) -> bool {
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let ours = match topics::parse_notice_topic(&topic) {
            Some(NoticeTopic::Group { group, .. }) => group == self.config.group,
            Some(NoticeTopic::Pin { group, id, .. }) => {
                group == self.config.group && id == self.config.client_id
            }
            None => false,
        };
        if !ours {
            // A subscription left from another configuration of this client id.
            tracing::debug!(%topic, "ignoring a message outside this gateway's topics");
            return true;
        }
        if publish.payload.is_empty() {
            // A cleared retained message. A cleared pin hands the plugin back to the group's
            // notice; a cleared group notice changes nothing (the installed version stays).
            if matches!(
                topics::parse_notice_topic(&topic),
                Some(NoticeTopic::Pin { .. })
            ) {
                let snapshot = {
                    let mut state = self.lock();
                    state.accepted.clear(&topic).then(|| state.accepted.clone())
                };
                if let Some(snapshot) = snapshot {
                    if !self.persist(snapshot).await {
                        return false;
                    }
                    tracing::info!(%topic, "pin cleared");
                    self.update_targets();
                }
            }
            return true;
        }
        let checked = SignedNotice::parse(&publish.payload).and_then(|notice| {
            notice.check_topic(&topic)?;
            Ok(notice)
        });
        let notice = match checked {
            Ok(notice) => notice,
            Err(e) => {
                self.set_error(report(
                    e.code(),
                    format!("notice on {topic} refused: {e}"),
                    None,
                ));
                self.publish_status();
                return true;
            }
        };
        let plugin = notice.notice.plugin.clone();
        let trust = match load_trust(&self.gateway) {
            Ok(trust) => trust,
            Err(e) => {
                self.set_error(report("trust-store", format!("{e:#}"), Some(&plugin)));
                self.publish_status();
                return true;
            }
        };
        if let Err(e) = notice.verify(&trust) {
            self.set_error(report(
                e.code(),
                format!(
                    "notice for {plugin} {} on {topic} refused: {e}",
                    notice.notice.version
                ),
                Some(&plugin),
            ));
            self.publish_status();
            return true;
        }
        let snapshot = {
            let mut state = self.lock();
            match state.accepted.verdict(&topic, &notice, &publish.payload) {
                Verdict::Duplicate => None,
                Verdict::Replay { last } => {
                    drop(state);
                    self.set_error(report(
                        "replayed-notice",
                        format!(
                            "notice for {plugin} {} on {topic} refused: sequence {} is not above {last}, the last accepted there",
                            notice.notice.version, notice.notice.sequence
                        ),
                        Some(&plugin),
                    ));
                    self.publish_status();
                    return true;
                }
                Verdict::New => {
                    state.accepted.accept(&topic, &notice);
                    Some(state.accepted.clone())
                }
            }
        };
        if let Some(snapshot) = snapshot {
            if !self.persist(snapshot).await {
                return false;
            }
            tracing::info!(%topic, plugin = %plugin, version = %notice.notice.version,
                sequence = notice.notice.sequence, "notice accepted");
            self.update_targets();
            self.publish_status();
        }
        true
    }

    /// Writes the accepted notices; reports and returns `false` on failure.
    async fn persist(&self, snapshot: Accepted) -> bool {
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || file.save(&snapshot)).await;
        match written {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                self.set_error(report(
                    "state-write-failed",
                    format!("cannot write {}: {e}", self.file.path().display()),
                    None,
                ));
                self.publish_status();
                false
            }
            Err(e) => {
                self.set_error(report("state-write-failed", format!("{e}"), None));
                false
            }
        }
    }

    /// The next plugin to work on, or when to look again.
    fn next_work(&self) -> Result<(String, SignedNotice), Option<Instant>> {
        let state = self.lock();
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        for (name, target) in &state.targets {
            if let Phase::Pending { next, .. } = target.phase {
                if next <= now {
                    return Ok((name.clone(), target.notice.clone()));
                }
                earliest = Some(earliest.map_or(next, |e| e.min(next)));
            }
        }
        Err(earliest)
    }

    /// Records the outcome of an attempt on `name`, unless its target changed meanwhile.
    fn finish(&self, name: &str, notice: &SignedNotice, outcome: Outcome) {
        let error = {
            let mut state = self.lock();
            let Some(target) = state.targets.get_mut(name).filter(|t| t.notice == *notice) else {
                return;
            };
            match outcome {
                Outcome::Installed => {
                    target.phase = Phase::Done;
                    None
                }
                Outcome::Refused(error) => {
                    target.phase = Phase::Refused {
                        code: error.code.clone(),
                    };
                    Some(error)
                }
                Outcome::Retry(error) => {
                    let attempts = match target.phase {
                        Phase::Pending { attempts, .. } => attempts + 1,
                        _ => 1,
                    };
                    let backoff = self
                        .config
                        .retry_min_ms
                        .saturating_mul(1u64 << (attempts - 1).min(20))
                        .min(self.config.retry_max_ms);
                    target.phase = Phase::Pending {
                        attempts,
                        next: Instant::now() + Duration::from_millis(backoff),
                    };
                    Some(error)
                }
                Outcome::Stopped => return,
            }
        };
        if let Some(error) = error {
            self.set_error(error);
        }
        self.publish_status();
    }

    /// One attempt to make `notice` true for plugin `name`.
    async fn attempt(
        &self,
        name: &str,
        notice: &SignedNotice,
        stopping: &mut watch::Receiver<bool>,
    ) -> Outcome {
        let wanted = &notice.notice.version;
        if let Some(active) = self.gateway.registry.get(name) {
            match active.version.cmp_precedence(wanted) {
                std::cmp::Ordering::Equal => return Outcome::Installed,
                std::cmp::Ordering::Greater if notice.notice.kind == NoticeKind::Rollback => {
                    return self.roll_back(name, wanted).await;
                }
                std::cmp::Ordering::Greater => {
                    return Outcome::Refused(report(
                        "older-version",
                        format!(
                            "{name} {wanted} refused: {} is active and newer (anti-downgrade)",
                            active.version
                        ),
                        Some(name),
                    ));
                }
                std::cmp::Ordering::Less => {}
            }
        }
        if notice.notice.kind == NoticeKind::Canary {
            let registry = &self.gateway.registry;
            if registry
                .canary(name)
                .is_some_and(|c| &c.plugin.version == wanted)
            {
                return Outcome::Installed;
            }
            if let Some(end) = registry.last_canary(name)
                && end.version == wanted.to_string()
                && end.outcome == edgeplug_gateway::registry::CanaryOutcome::Reverted
            {
                return Outcome::Refused(report(
                    "canary-reverted",
                    format!("{name} {wanted}: the canary was reverted: {}", end.reason),
                    Some(name),
                ));
            }
        }
        // Spread a fleet's pulls over the jitter window instead of all at once.
        let jitter_ms = if self.config.pull_jitter_ms == 0 {
            0
        } else {
            rand::random::<u64>() % (self.config.pull_jitter_ms + 1)
        };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(jitter_ms)) => {}
            _ = stopping.wait_for(|s| *s) => return Outcome::Stopped,
        }
        let limit = self.gateway.config.bundle_limits().max_bundle_bytes;
        let n = &notice.notice;
        let bytes = match self
            .registry
            .pull_bundle(&n.repository, &n.digest, n.size, limit)
            .await
        {
            Ok(bytes) => bytes,
            Err(e) => {
                let message = format!("{name} {wanted}: pull of {} refused: {e}", n.digest);
                return match e {
                    // The registry may come back, or be repaired: try again later.
                    PullError::Registry(_) | PullError::DigestMismatch { .. } => {
                        Outcome::Retry(report(e.code(), message, Some(name)))
                    }
                    _ => Outcome::Refused(report(e.code(), message, Some(name))),
                };
            }
        };
        let gateway = self.gateway.clone();
        let expected_name = name.to_string();
        let expected_version = wanted.clone();
        let limits = self.gateway.config.bundle_limits();
        let canary_spec = notice.notice.canary.clone();
        let installed = self
            .gateway
            .admin
            .run(move || {
                // The bundle must be the one the notice announced (its signature is checked
                // by the install, as for every push).
                let inspection = edgeplug_bundle::inspect(&bytes, &limits)
                    .map_err(|e| InstallFailure::Mismatch(format!("not a bundle: {e}")))?;
                match inspection.manifest {
                    Ok(m) if m.name == expected_name && m.version == expected_version => {}
                    Ok(m) => {
                        return Err(InstallFailure::Mismatch(format!(
                            "the bundle is {} {}, the notice announced {expected_name} {expected_version}",
                            m.name, m.version
                        )));
                    }
                    Err(e) => {
                        return Err(InstallFailure::Mismatch(format!(
                            "its plugin.toml is invalid: {e}"
                        )));
                    }
                }
                let registry = &gateway.registry;
                match canary_spec {
                    // Checked when the notice was parsed.
                    Some(spec) => {
                        let (mode, gate) = edgeplug_gateway::registry::parse_canary_spec(&spec)
                            .map_err(InstallFailure::Mismatch)?;
                        registry
                            .start_canary(bytes, &expected_name, mode, gate)
                            .map(|(_, canary)| Some(canary))
                    }
                    None => registry.install(bytes, Some(&expected_name)).map(|_| None),
                }
                .map_err(InstallFailure::Admin)
            })
            .await;
        match installed {
            None => Outcome::Retry(report(
                "admin-busy",
                format!("{name} {wanted}: the gateway's admin queue is full"),
                Some(name),
            )),
            Some(Ok(None)) => {
                tracing::info!(plugin = %name, version = %wanted, "fleet version installed");
                Outcome::Installed
            }
            Some(Ok(Some(canary))) => {
                tracing::info!(plugin = %name, version = %wanted, "fleet canary started");
                tokio::spawn(edgeplug_gateway::registry::watch(
                    self.gateway.clone(),
                    name.to_string(),
                    canary,
                ));
                Outcome::Installed
            }
            Some(Err(InstallFailure::Mismatch(mismatch))) => Outcome::Refused(report(
                "bundle-mismatch",
                format!("{name} {wanted}: {mismatch}"),
                Some(name),
            )),
            Some(Err(InstallFailure::Admin(error))) => {
                let message = format!("{name} {wanted}: install refused: {error}");
                match &error {
                    // A newer version got there first (another notice, an admin push).
                    AdminError::Store(StoreError::NotNewer { active, .. }) => {
                        if active.cmp_precedence(wanted) == std::cmp::Ordering::Equal {
                            Outcome::Installed
                        } else {
                            Outcome::Refused(report("older-version", message, Some(name)))
                        }
                    }
                    // The bytes match the signed digest: the same bytes fail the same way.
                    AdminError::Bundle(_)
                    | AdminError::Load(_)
                    | AdminError::SelfTest(_)
                    | AdminError::Store(StoreError::NameMismatch { .. }) => {
                        Outcome::Refused(report(error.code(), message, Some(name)))
                    }
                    _ => Outcome::Retry(report(error.code(), message, Some(name))),
                }
            }
        }
    }
}

impl Shared {
    /// A signed rollback to `target`, older than the active version: the gateway's rollback,
    /// repeated (each step goes to the newest kept version below the active one) until
    /// `target` is active. Refused if the store does not keep `target`, before any step.
    async fn roll_back(&self, name: &str, target: &semver::Version) -> Outcome {
        let gateway = self.gateway.clone();
        let plugin = name.to_string();
        let wanted = target.clone();
        let done = self
            .gateway
            .admin
            .run(move || -> Result<(), (String, String)> {
                let kept = gateway
                    .registry
                    .list()
                    .map_err(|e| (e.code().to_string(), e.to_string()))?
                    .into_iter()
                    .find(|p| p.name == plugin)
                    .map(|p| p.versions)
                    .unwrap_or_default();
                if !kept.iter().any(|k| k.version == wanted.to_string()) {
                    return Err((
                        "rollback-not-kept".into(),
                        format!("{plugin} {wanted} is not kept in this gateway's store"),
                    ));
                }
                // Each step lowers the active version, so this ends; the bound is a guard.
                for _ in 0..64 {
                    let active = gateway.registry.get(&plugin).map(|a| a.version.clone());
                    match active {
                        Some(v) if v.cmp_precedence(&wanted) == std::cmp::Ordering::Greater => {
                            gateway
                                .registry
                                .rollback(&plugin)
                                .map_err(|e| (e.code().to_string(), e.to_string()))?;
                        }
                        Some(v) if v == wanted => return Ok(()),
                        other => {
                            return Err((
                                "rollback-failed".into(),
                                format!(
                                    "rolling {plugin} back to {wanted} ended on {}",
                                    other.map_or("nothing".to_string(), |v| v.to_string())
                                ),
                            ));
                        }
                    }
                }
                Err((
                    "rollback-failed".into(),
                    format!("{plugin}: too many rollback steps"),
                ))
            })
            .await;
        match done {
            None => Outcome::Retry(report(
                "admin-busy",
                format!("{name} rollback to {target}: the gateway's admin queue is full"),
                Some(name),
            )),
            Some(Ok(())) => {
                tracing::info!(plugin = %name, version = %target, "fleet rollback done");
                Outcome::Installed
            }
            Some(Err((code, message))) => Outcome::Refused(report(
                &code,
                format!("{name} rollback to {target} refused: {message}"),
                Some(name),
            )),
        }
    }
}

/// Why the fleet's install of a pulled bundle failed.
enum InstallFailure {
    /// The bundle is not the plugin and version the notice announced.
    Mismatch(String),
    /// The gateway's pipeline refused it.
    Admin(AdminError),
}

async fn connection_loop(
    mut events: EventLoop,
    tx: mpsc::UnboundedSender<FromBroker>,
    stopping: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(250);
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                let _ = tx.send(FromBroker::Connected {
                    session_present: ack.session_present,
                });
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let _ = tx.send(FromBroker::Notice(publish));
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Some(code) = ack
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                {
                    let _ = tx.send(FromBroker::SubscribeRefused(format!("{code:?}")));
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                if *stopping.borrow() {
                    return;
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection lost");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn notice_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<FromBroker>) {
    let mut first_connection = true;
    let mut stopping = shared.stopping.subscribe();
    loop {
        let message = tokio::select! {
            message = rx.recv() => match message {
                Some(message) => message,
                None => return,
            },
            _ = stopping.wait_for(|s| *s) => return,
        };
        match message {
            FromBroker::Connected { session_present } => {
                // Subscribe on the first connection of this process whatever the broker kept
                // (the configuration may have changed), and whenever the broker lost the
                // session. Retained notices come again: duplicates change nothing.
                if first_connection || !session_present {
                    let federated = shared.participant.iter().flat_map(|p| p.filters());
                    for filter in [
                        topics::group_filter(&shared.config.group),
                        topics::pin_filter(&shared.config.group, &shared.config.client_id),
                    ]
                    .into_iter()
                    .chain(federated)
                    {
                        if shared
                            .client
                            .subscribe(filter, QoS::AtLeastOnce)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                first_connection = false;
                shared.publish_status();
            }
            FromBroker::SubscribeRefused(code) => {
                shared.set_error(report(
                    "subscribe-refused",
                    format!("the broker refused a subscription ({code}): check its ACL"),
                    None,
                ));
                shared.publish_status();
            }
            FromBroker::Notice(publish) => {
                let topic = String::from_utf8_lossy(&publish.topic).into_owned();
                if let Some(participant) = shared.participant.as_ref().filter(|p| p.handles(&topic))
                {
                    // What a federated message asks is persisted (or refused) before this
                    // returns; the work it starts runs on, and a redelivery does it once.
                    if let Err((code, message, plugin)) =
                        participant.on_message(&topic, &publish.payload)
                    {
                        shared.set_error(report(code, message, Some(&plugin)));
                        shared.publish_status();
                    }
                    if shared.client.ack(&publish).await.is_err() {
                        return;
                    }
                    continue;
                }
                if shared.on_notice(&publish).await && shared.client.ack(&publish).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Publishes the status every `status_interval_ms`, so readers see fresh request figures
/// without a change to wait for.
async fn status_loop(shared: Arc<Shared>) {
    let mut stopping = shared.stopping.subscribe();
    let every = Duration::from_millis(shared.config.status_interval_ms);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => shared.publish_status(),
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

async fn reconcile_loop(shared: Arc<Shared>) {
    let mut stopping = shared.stopping.subscribe();
    loop {
        if *stopping.borrow() {
            return;
        }
        match shared.next_work() {
            Ok((name, notice)) => {
                let outcome = shared.attempt(&name, &notice, &mut stopping).await;
                shared.finish(&name, &notice, outcome);
            }
            Err(next) => {
                let sleep = match next {
                    Some(at) => tokio::time::sleep_until(at),
                    None => tokio::time::sleep(Duration::from_secs(3600)),
                };
                tokio::select! {
                    () = shared.wake.notified() => {}
                    () = sleep => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

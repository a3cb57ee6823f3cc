//! A staged rollout (`edgeplug rollout` and the library call [`run`]): a version reaches the
//! fleet in waves, each gate judged on what the gateways themselves report, and a failed gate
//! sends every gateway already reached back to the version it ran before.
//!
//! 1. **Plan.** The gateways are those with a retained status in the group that is not
//!    `offline`, in id order. `--stages 1,10%,50%,100%` are cumulative: the first wave is one
//!    gateway, the second brings the total to 10% of them (rounded up), and so on; a stage
//!    that adds no gateway is skipped, and the last must reach every gateway. What each
//!    gateway follows now (its pin, else the group's notice) is recorded as the version to
//!    return to.
//! 2. **Push** the bundle once ([`Registry::push_bundle`]).
//! 3. **Each wave**: a signed release notice on each of its gateways' pins (a pin wins over
//!    the group's notice, so no other gateway moves); then, for the gateways of every wave so
//!    far, wait until each reports the version active (a refusal, such as a failing
//!    self-test, or `offline` fails the gate at once; not all installed within the install
//!    timeout fails it too), then **soak**: read their statuses every poll interval for the
//!    soak time. The gate holds while the errors over the requests of the new version, summed
//!    over those gateways, stay at or under `max_error_rate` and the highest p99 at or under
//!    `max_p99_ms` (both judged once there are `min_requests` requests, and at least one).
//! 4. **Done**: the group's notice names the new version (a gateway that joins later gets it)
//!    and the rollout's pins are cleared, so every gateway follows the group again.
//! 5. **A failed gate**: a signed *rollback* notice ([`NoticeKind::Rollback`]) on the pin of
//!    every gateway of the waves published, naming the version it followed before; the
//!    rollout stops there. A gateway with nothing to return to has its pin cleared and is
//!    listed in the report.
//!
//! The gate reads the figures each gateway publishes (requests, errors and p99 of its active
//! version since it was loaded, see [`crate::status`]), so no request has to pass through the
//! publisher; a gateway republishes its status every `status_interval_ms`, so a soak should
//! span several of those.
//!
//! **Crash safety.** With a state file, every step is recorded before the next one starts
//! (write-temp, fsync, rename), and [`run`] started again with the same bundle resumes: a
//! wave whose pins may be out is published again (a pin with the same version changes
//! nothing on a gateway that has it) and soaked again from the start; a rollback that was
//! decided is published again; a finished rollout only reports how it ended. A state file of
//! another bundle or group is refused rather than overwritten.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use edgeplug_bundle::SecretKey;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::time::Instant;

use crate::notice::{Notice, NoticeKind, SignedNotice};
use crate::oci::{Registry, RegistryOptions};
use crate::publish::{Audience, announce, announce_notice, bundle_identity, unpin};
use crate::status::{GatewayStatus, Health};
use crate::topics::{self, NoticeTopic};
use edgeplug_mqtt::{BrokerOptions, Session, ephemeral_client_id};

/// One stage: a cumulative number of gateways, or a cumulative share of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stage {
    Count(usize),
    Percent(f64),
}

/// Parses `1,10%,50%,100%`.
pub fn parse_stages(text: &str) -> anyhow::Result<Vec<Stage>> {
    let stages = text
        .split(',')
        .map(|part| {
            let part = part.trim();
            if let Some(p) = part.strip_suffix('%') {
                let p: f64 = p
                    .trim()
                    .parse()
                    .with_context(|| format!("stage {part:?} is not a percentage"))?;
                anyhow::ensure!(
                    p > 0.0 && p <= 100.0,
                    "stage {part:?}: a share must be above 0% and at most 100%"
                );
                Ok(Stage::Percent(p))
            } else {
                let n: usize = part.parse().with_context(|| {
                    format!("stage {part:?} is neither a number of gateways nor a percentage")
                })?;
                anyhow::ensure!(n >= 1, "stage {part:?}: at least one gateway");
                Ok(Stage::Count(n))
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!stages.is_empty(), "no stages");
    anyhow::ensure!(
        matches!(stages.last(), Some(Stage::Percent(p)) if *p == 100.0),
        "the last stage must be 100% (a rollout ends with every gateway)"
    );
    Ok(stages)
}

/// Splits `gateways` (in order) into waves by the cumulative `stages`; empty waves are
/// dropped, and the last wave ends with the last gateway.
pub fn plan_waves(stages: &[Stage], gateways: &[String]) -> Vec<Vec<String>> {
    let n = gateways.len();
    let mut waves = Vec::new();
    let mut done = 0;
    for stage in stages {
        let upto = match *stage {
            Stage::Count(k) => k.min(n),
            Stage::Percent(p) => ((p * n as f64 / 100.0).ceil() as usize).clamp(1, n),
        };
        if upto > done {
            waves.push(gateways[done..upto].to_vec());
            done = upto;
        }
    }
    if done < n {
        waves.push(gateways[done..].to_vec());
    }
    waves
}

/// The rollout's options read durations and rates as the gateway's canary gate does.
pub use edgeplug_gateway::units::{parse_duration, parse_rate};

/// What a wave must show to let the rollout go on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// Errors over requests, a fraction (0.01 is 1%).
    pub max_error_rate: f64,
    /// The highest p99 latency any gateway of the rollout may report, in milliseconds.
    pub max_p99_ms: Option<f64>,
    /// Requests (summed over the gateways) before the figures are judged; with fewer at the
    /// end of a soak the gate fails (too little traffic to tell).
    pub min_requests: u64,
}

/// How a rollout runs.
#[derive(Debug, Clone)]
pub struct RolloutOptions {
    pub registry: RegistryOptions,
    pub repository: String,
    pub broker: BrokerOptions,
    pub group: String,
    pub stages: Vec<Stage>,
    pub gate: Gate,
    /// How long each wave's gateways are watched once all run the version.
    pub soak: Duration,
    /// How long a wave may take to install before the gate fails.
    pub install_timeout: Duration,
    /// How often statuses are read.
    pub poll: Duration,
    /// Where the rollout records its progress (to resume after a restart).
    pub state_file: Option<PathBuf>,
}

/// The figures of the gateways on the new version at one reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    /// The highest p99 among them, in milliseconds.
    pub p99_ms: Option<f64>,
}

impl Figures {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// One reading of the gate.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Not every gateway runs the version yet: why.
    Installing(String),
    Holds(Figures),
    Fails(String),
}

/// Judges the gate for `gateways` on `plugin` `version` from their `statuses`.
pub fn judge(
    statuses: &[GatewayStatus],
    gateways: &[String],
    plugin: &str,
    version: &str,
    gate: &Gate,
) -> Judgement {
    let mut figures = Figures::default();
    for id in gateways {
        let Some(status) = statuses.iter().find(|s| &s.gateway == id) else {
            return Judgement::Installing(format!("{id} has published no status"));
        };
        if status.health == Health::Offline {
            return Judgement::Fails(format!("{id} is offline"));
        }
        let Some(p) = status.plugins.get(plugin) else {
            return Judgement::Installing(format!("{id} does not report {plugin} yet"));
        };
        if p.desired.as_deref() != Some(version) {
            return Judgement::Installing(format!("{id} has not taken the notice yet"));
        }
        if p.state == "refused" {
            let why = status
                .last_error
                .as_ref()
                .filter(|e| e.plugin.as_deref() == Some(plugin))
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_else(|| "refused".into());
            return Judgement::Fails(format!("{id} refused {plugin} {version}: {why}"));
        }
        if p.active.as_deref() != Some(version) || p.state != "installed" {
            return Judgement::Installing(format!(
                "{id} is {} (active {})",
                p.state,
                p.active.as_deref().unwrap_or("none")
            ));
        }
        figures.requests += p.requests;
        figures.errors += p.errors;
        if let Some(p99) = p.p99_ms {
            figures.p99_ms = Some(figures.p99_ms.map_or(p99, |m: f64| m.max(p99)));
        }
    }
    if figures.requests >= gate.min_requests.max(1) {
        if figures.error_rate() > gate.max_error_rate {
            return Judgement::Fails(format!(
                "error rate {:.2}% ({} of {} requests) is over the gate's {:.2}%",
                figures.error_rate() * 100.0,
                figures.errors,
                figures.requests,
                gate.max_error_rate * 100.0
            ));
        }
        if let (Some(max), Some(p99)) = (gate.max_p99_ms, figures.p99_ms)
            && p99 > max
        {
            return Judgement::Fails(format!(
                "p99 latency {p99:.1} ms is over the gate's {max} ms"
            ));
        }
    }
    Judgement::Holds(figures)
}

const STATE_FORMAT: u32 = 1;

/// Where a rollout is; persisted in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutState {
    format: u32,
    pub plugin: String,
    pub version: String,
    /// `sha256:` of the bundle: a state file resumes only the same bundle.
    pub bundle_digest: String,
    pub group: String,
    pub repository: String,
    /// The manifest digest and size, once pushed.
    pub pushed: Option<(String, u64)>,
    pub waves: Vec<Vec<String>>,
    /// For each planned gateway, the notice (wire JSON) it followed before: what a rollback
    /// returns it to.
    pub previous: BTreeMap<String, Option<String>>,
    /// Waves whose pins may be out.
    pub waves_published: usize,
    /// Waves whose gate held.
    pub waves_passed: usize,
    pub phase: Phase,
    /// The figures of each passed wave's gate at the end of its soak.
    pub figures: Vec<Figures>,
}

/// How far a rollout got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum Phase {
    Running,
    /// A gate failed; the rollbacks are (being) published.
    RollingBack {
        wave: usize,
        reason: String,
    },
    RolledBack {
        wave: usize,
        reason: String,
    },
    Completed,
}

impl RolloutState {
    fn load(path: &Path) -> anyhow::Result<Option<RolloutState>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let state: RolloutState = serde_json::from_slice(&bytes)
                    .with_context(|| format!("the rollout state {} is damaged", path.display()))?;
                anyhow::ensure!(
                    state.format == STATE_FORMAT,
                    "{}: format {} is not supported",
                    path.display(),
                    state.format
                );
                Ok(Some(state))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display()))),
        }
    }

    fn save(&self, path: Option<&Path>) -> anyhow::Result<()> {
        if let Some(path) = path {
            let bytes = serde_json::to_vec_pretty(self).expect("a rollout state serializes");
            edgeplug_bundle::write_file_atomic(path, &bytes)
                .with_context(|| format!("cannot write the rollout state {}", path.display()))?;
        }
        Ok(())
    }
}

/// What happened, as the rollout goes (for the CLI to print).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum Event {
    Planned {
        waves: Vec<Vec<String>>,
    },
    Resumed {
        waves_passed: usize,
    },
    Pushed {
        digest: String,
    },
    WavePublished {
        wave: usize,
        gateways: Vec<String>,
    },
    Installed {
        wave: usize,
    },
    GateHeld {
        wave: usize,
        figures: Figures,
    },
    GateFailed {
        wave: usize,
        reason: String,
    },
    RollbackPublished {
        gateway: String,
        version: Option<String>,
    },
    Completed,
}

/// How a rollout ended.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub plugin: String,
    pub version: String,
    pub digest: Option<String>,
    pub waves: Vec<Vec<String>>,
    pub waves_passed: usize,
    pub figures: Vec<Figures>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Outcome {
    Completed,
    RolledBack {
        /// The wave (0-based) whose gate failed.
        wave: usize,
        reason: String,
        /// Gateway → the version it was sent back to (`None`: nothing to return to, its pin
        /// was cleared).
        returned: BTreeMap<String, Option<String>>,
    },
}

/// Runs (or resumes) a staged rollout of `bundle`, signing notices with `key`; `on_event` is
/// told each step. Returns once every wave passed or the rollbacks are published.
pub async fn run(
    bundle: &[u8],
    options: &RolloutOptions,
    key: &SecretKey,
    on_event: &mut (dyn FnMut(&Event) + Send),
) -> anyhow::Result<Report> {
    let (plugin, version) = bundle_identity(bundle)?;
    crate::check_fleet_name("group", &options.group)?;
    anyhow::ensure!(
        crate::notice::is_repository(&options.repository),
        "repository {:?} must be '/'-separated lower-case components",
        options.repository
    );
    anyhow::ensure!(
        !options.poll.is_zero(),
        "the poll interval must be above zero"
    );
    let bundle_digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bundle)));
    let path = options.state_file.as_deref();
    let mut state = match path.map(RolloutState::load).transpose()?.flatten() {
        Some(state) => {
            anyhow::ensure!(
                state.bundle_digest == bundle_digest
                    && state.group == options.group
                    && state.repository == options.repository,
                "the rollout state {} is of another rollout ({} {} to group {}); use another \
                 state file, or remove it once that rollout is over",
                path.map(|p| p.display().to_string()).unwrap_or_default(),
                state.plugin,
                state.version,
                state.group
            );
            on_event(&Event::Resumed {
                waves_passed: state.waves_passed,
            });
            state
        }
        None => {
            let state = plan(options, &plugin, &version.to_string(), &bundle_digest).await?;
            on_event(&Event::Planned {
                waves: state.waves.clone(),
            });
            state.save(path)?;
            state
        }
    };

    if state.phase == Phase::Running {
        drive(bundle, options, key, &mut state, on_event).await?;
    }
    let returned = match state.phase.clone() {
        Phase::RollingBack { wave, reason } => {
            let returned = roll_back(options, key, &state, on_event).await?;
            state.phase = Phase::RolledBack { wave, reason };
            state.save(path)?;
            Some(returned)
        }
        Phase::RolledBack { .. } => Some(rollback_targets(&state)),
        _ => None,
    };
    let outcome = match (&state.phase, returned) {
        (Phase::RolledBack { wave, reason }, Some(returned)) => Outcome::RolledBack {
            wave: *wave,
            reason: reason.clone(),
            returned,
        },
        _ => Outcome::Completed,
    };
    Ok(Report {
        plugin: state.plugin.clone(),
        version: state.version.clone(),
        digest: state.pushed.as_ref().map(|(d, _)| d.clone()),
        waves: state.waves.clone(),
        waves_passed: state.waves_passed,
        figures: state.figures.clone(),
        outcome,
    })
}

/// The gateways (live statuses) in order, the waves, and what each follows now.
async fn plan(
    options: &RolloutOptions,
    plugin: &str,
    version: &str,
    bundle_digest: &str,
) -> anyhow::Result<RolloutState> {
    let statuses = read_statuses(options).await?;
    let gateways: Vec<String> = statuses
        .iter()
        .filter(|s| s.health != Health::Offline)
        .map(|s| s.gateway.clone())
        .collect();
    anyhow::ensure!(
        !gateways.is_empty(),
        "no gateway of group {} has a live status: nothing to roll out to",
        options.group
    );
    let waves = plan_waves(&options.stages, &gateways);
    // What each gateway follows now: its pin, else the group's notice.
    let mut session =
        Session::connect(&options.broker, &ephemeral_client_id("edgeplug-rollout")).await?;
    let retained = session
        .retained(
            &format!("{}/{}/#", topics::ROOT, options.group),
            Duration::from_millis(500),
        )
        .await;
    session.close().await;
    let mut group_notice = None;
    let mut pins = BTreeMap::new();
    for (topic, payload) in retained? {
        let Some(kind) = topics::parse_notice_topic(&topic) else {
            continue;
        };
        if kind.plugin() != plugin || payload.is_empty() {
            continue;
        }
        // Only well-formed notices for this very topic; gateways check signatures.
        let Ok(notice) = SignedNotice::parse(&payload) else {
            continue;
        };
        if notice.check_topic(&topic).is_err() {
            continue;
        }
        let text = String::from_utf8(payload).expect("a parsed notice is JSON text");
        match kind {
            NoticeTopic::Group { .. } => group_notice = Some(text),
            NoticeTopic::Pin { id, .. } => {
                pins.insert(id, text);
            }
        }
    }
    let previous = gateways
        .iter()
        .map(|id| (id.clone(), pins.remove(id).or_else(|| group_notice.clone())))
        .collect();
    Ok(RolloutState {
        format: STATE_FORMAT,
        plugin: plugin.to_string(),
        version: version.to_string(),
        bundle_digest: bundle_digest.to_string(),
        group: options.group.clone(),
        repository: options.repository.clone(),
        pushed: None,
        waves,
        previous,
        waves_published: 0,
        waves_passed: 0,
        phase: Phase::Running,
        figures: Vec::new(),
    })
}

async fn read_statuses(options: &RolloutOptions) -> anyhow::Result<Vec<GatewayStatus>> {
    Ok(
        crate::status::read_fleet(&options.broker, &options.group, Duration::from_millis(300))
            .await?
            .into_iter()
            .filter_map(Result::ok)
            .collect(),
    )
}

/// Push, then wave after wave until one fails its gate or all passed.
async fn drive(
    bundle: &[u8],
    options: &RolloutOptions,
    key: &SecretKey,
    state: &mut RolloutState,
    on_event: &mut (dyn FnMut(&Event) + Send),
) -> anyhow::Result<()> {
    let path = options.state_file.as_deref();
    let version: semver::Version = state.version.parse()?;
    let pushed = Registry::new(&options.registry)?
        .push_bundle(&state.repository, &state.plugin, &version, bundle)
        .await?;
    on_event(&Event::Pushed {
        digest: pushed.digest.clone(),
    });
    if state
        .pushed
        .as_ref()
        .is_some_and(|(d, _)| *d != pushed.digest)
    {
        anyhow::bail!(
            "the registry now gives the bundle the manifest digest {}, the rollout started with {}",
            pushed.digest,
            state.pushed.as_ref().map(|(d, _)| d.as_str()).unwrap_or("")
        );
    }
    state.pushed = Some((pushed.digest.clone(), pushed.size));
    state.save(path)?;

    for wave in state.waves_passed..state.waves.len() {
        // Recorded before the first pin goes out: a restart publishes them again.
        state.waves_published = state.waves_published.max(wave + 1);
        state.save(path)?;
        for id in &state.waves[wave] {
            announce(
                &pushed,
                &state.plugin,
                &version,
                &options.broker,
                &Audience {
                    group: state.group.clone(),
                    gateway: Some(id.clone()),
                },
                key,
            )
            .await?;
        }
        on_event(&Event::WavePublished {
            wave,
            gateways: state.waves[wave].clone(),
        });
        let reached: Vec<String> = state.waves[..=wave].concat();
        match watch(options, state, &reached, wave, on_event).await? {
            Ok(figures) => {
                on_event(&Event::GateHeld { wave, figures });
                state.waves_passed = wave + 1;
                state.figures.push(figures);
                state.save(path)?;
            }
            Err(reason) => {
                on_event(&Event::GateFailed {
                    wave,
                    reason: reason.clone(),
                });
                state.phase = Phase::RollingBack { wave, reason };
                state.save(path)?;
                return Ok(());
            }
        }
    }
    // Every wave passed: the group's notice names the version, the pins go.
    announce(
        &pushed,
        &state.plugin,
        &version,
        &options.broker,
        &Audience {
            group: state.group.clone(),
            gateway: None,
        },
        key,
    )
    .await?;
    for id in state.waves.concat() {
        unpin(&options.broker, &state.group, &id, &state.plugin).await?;
    }
    state.phase = Phase::Completed;
    state.save(path)?;
    on_event(&Event::Completed);
    Ok(())
}

/// Waits for `gateways` to install, then soaks; `Ok(Err(reason))` is a failed gate.
async fn watch(
    options: &RolloutOptions,
    state: &RolloutState,
    gateways: &[String],
    wave: usize,
    on_event: &mut (dyn FnMut(&Event) + Send),
) -> anyhow::Result<Result<Figures, String>> {
    let install_by = Instant::now() + options.install_timeout;
    loop {
        let statuses = read_statuses(options).await?;
        match judge(
            &statuses,
            gateways,
            &state.plugin,
            &state.version,
            &options.gate,
        ) {
            Judgement::Holds(_) => break,
            Judgement::Fails(reason) => return Ok(Err(reason)),
            Judgement::Installing(why) => {
                if Instant::now() >= install_by {
                    return Ok(Err(format!(
                        "not installed within {:?}: {why}",
                        options.install_timeout
                    )));
                }
            }
        }
        tokio::time::sleep(options.poll).await;
    }
    on_event(&Event::Installed { wave });
    let soak_until = Instant::now() + options.soak;
    loop {
        let statuses = read_statuses(options).await?;
        let figures = match judge(
            &statuses,
            gateways,
            &state.plugin,
            &state.version,
            &options.gate,
        ) {
            Judgement::Holds(figures) => figures,
            Judgement::Fails(reason) => return Ok(Err(reason)),
            // Installed before: a gateway that no longer runs it is a failure.
            Judgement::Installing(why) => return Ok(Err(format!("during the soak: {why}"))),
        };
        if Instant::now() >= soak_until {
            if figures.requests < options.gate.min_requests {
                return Ok(Err(format!(
                    "only {} requests during the soak, the gate asks for {}",
                    figures.requests, options.gate.min_requests
                )));
            }
            return Ok(Ok(figures));
        }
        tokio::time::sleep(options.poll.min(soak_until - Instant::now())).await;
    }
}

/// The version each published gateway goes back to.
fn rollback_targets(state: &RolloutState) -> BTreeMap<String, Option<String>> {
    state.waves[..state.waves_published.min(state.waves.len())]
        .concat()
        .into_iter()
        .map(|id| {
            let version = state
                .previous
                .get(&id)
                .cloned()
                .flatten()
                .and_then(|text| SignedNotice::parse(text.as_bytes()).ok())
                .map(|n| n.notice.version.to_string());
            (id, version)
        })
        .collect()
}

/// Publishes a signed rollback on the pin of every gateway of the waves published.
async fn roll_back(
    options: &RolloutOptions,
    key: &SecretKey,
    state: &RolloutState,
    on_event: &mut (dyn FnMut(&Event) + Send),
) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let mut returned = BTreeMap::new();
    for id in state.waves[..state.waves_published.min(state.waves.len())].concat() {
        let before = state
            .previous
            .get(&id)
            .cloned()
            .flatten()
            .and_then(|text| SignedNotice::parse(text.as_bytes()).ok());
        let version = match before {
            Some(before) => {
                let notice = Notice {
                    kind: NoticeKind::Rollback,
                    canary: None,
                    gateway: Some(id.clone()),
                    group: state.group.clone(),
                    sequence: 0,
                    ..before.notice
                };
                let version = notice.version.to_string();
                announce_notice(notice, &options.broker, key).await?;
                Some(version)
            }
            None => {
                // Nothing it followed before: hand it back to the group's notice.
                unpin(&options.broker, &state.group, &id, &state.plugin).await?;
                None
            }
        };
        on_event(&Event::RollbackPublished {
            gateway: id.clone(),
            version: version.clone(),
        });
        returned.insert(id, version);
    }
    Ok(returned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::PluginStatus;

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("gw-{i:02}")).collect()
    }

    #[test]
    fn stages_split_the_fleet_into_cumulative_waves() {
        let stages = parse_stages("1,10%,50%,100%").unwrap();
        let sizes = |n| {
            plan_waves(&stages, &ids(n))
                .iter()
                .map(Vec::len)
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(4), [1, 1, 2]);
        assert_eq!(sizes(20), [1, 1, 8, 10]);
        assert_eq!(sizes(1000), [1, 99, 400, 500]);
        let waves = plan_waves(&stages, &ids(4));
        assert_eq!(waves.concat(), ids(4), "every gateway once, in order");
        for bad in [
            "",
            "0",
            "10%",
            "1,0%,100%",
            "1,150%",
            "x,100%",
            "1,-5%,100%",
        ] {
            assert!(parse_stages(bad).is_err(), "{bad:?}");
        }
    }

    fn status(
        id: &str,
        active: &str,
        desired: &str,
        state: &str,
        requests: u64,
        errors: u64,
        p99: f64,
    ) -> GatewayStatus {
        let mut s = GatewayStatus::offline("g1", id);
        s.health = Health::Ok;
        s.plugins.insert(
            "digits".into(),
            PluginStatus {
                active: Some(active.into()),
                desired: Some(desired.into()),
                state: state.into(),
                requests,
                errors,
                p99_ms: Some(p99),
                ..PluginStatus::default()
            },
        );
        s
    }

    #[test]
    fn the_gate_judges_the_summed_figures() {
        let gate = Gate {
            max_error_rate: 0.01,
            max_p99_ms: Some(50.0),
            min_requests: 0,
        };
        let gws = ids(2);
        let judge = |statuses: &[GatewayStatus]| judge(statuses, &gws, "digits", "0.2.0", &gate);
        let ok = [
            status("gw-01", "0.2.0", "0.2.0", "installed", 500, 2, 10.0),
            status("gw-02", "0.2.0", "0.2.0", "installed", 500, 8, 20.0),
        ];
        // 10 of 1000: exactly 1%, held.
        assert_eq!(
            judge(&ok),
            Judgement::Holds(Figures {
                requests: 1000,
                errors: 10,
                p99_ms: Some(20.0)
            })
        );
        let mut errors = ok.clone();
        errors[1].plugins.get_mut("digits").unwrap().errors = 9;
        assert!(matches!(judge(&errors), Judgement::Fails(r) if r.contains("error rate")));
        let mut slow = ok.clone();
        slow[0].plugins.get_mut("digits").unwrap().p99_ms = Some(75.0);
        assert!(matches!(judge(&slow), Judgement::Fails(r) if r.contains("p99")));
        let mut installing = ok.clone();
        installing[1] = status("gw-02", "0.1.0", "0.2.0", "pending", 0, 0, 0.0);
        assert!(matches!(judge(&installing), Judgement::Installing(_)));
        let mut refused = ok.clone();
        refused[1] = status("gw-02", "0.1.0", "0.2.0", "refused", 0, 0, 0.0);
        assert!(matches!(judge(&refused), Judgement::Fails(r) if r.contains("refused")));
        let mut offline = ok.clone();
        offline[0] = GatewayStatus::offline("g1", "gw-01");
        assert!(matches!(judge(&offline), Judgement::Fails(r) if r.contains("offline")));
        assert!(matches!(judge(&ok[..1]), Judgement::Installing(_)));
        // No traffic: nothing to judge, the gate holds (min_requests asks for more).
        let idle = [
            status("gw-01", "0.2.0", "0.2.0", "installed", 0, 0, 0.0),
            status("gw-02", "0.2.0", "0.2.0", "installed", 0, 0, 0.0),
        ];
        assert!(matches!(judge(&idle), Judgement::Holds(_)));
    }

    #[test]
    fn a_state_file_round_trips_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollout.json");
        assert_eq!(RolloutState::load(&path).unwrap(), None);
        let state = RolloutState {
            format: STATE_FORMAT,
            plugin: "digits".into(),
            version: "0.2.0".into(),
            bundle_digest: format!("sha256:{}", "ab".repeat(32)),
            group: "g1".into(),
            repository: "edgeplug/digits".into(),
            pushed: Some((format!("sha256:{}", "cd".repeat(32)), 10)),
            waves: vec![ids(1), ids(3)[1..].to_vec()],
            previous: [("gw-01".to_string(), None)].into(),
            waves_published: 1,
            waves_passed: 0,
            phase: Phase::RollingBack {
                wave: 0,
                reason: "error rate".into(),
            },
            figures: Vec::new(),
        };
        state.save(Some(&path)).unwrap();
        assert_eq!(RolloutState::load(&path).unwrap(), Some(state));
        std::fs::write(&path, b"{\"format\":1").unwrap();
        assert!(format!("{:#}", RolloutState::load(&path).unwrap_err()).contains("damaged"));
    }
}

//! Canaries inside one gateway: a newer version loaded next to the active one serves a share
//! of the plugin's requests (`split`), or runs a copy of each request whose answer is compared
//! and thrown away (`shadow`), while a gate watches its error rate and latency against the
//! active version's over the same time. A breach reverts it within a watch tick; a canary
//! that held its gate is promoted by an operator, or by itself after `promote_after`.
//!
//! A canary is verified, compiled and self-tested exactly as a push is, but nothing is written
//! to the plugin store until it is promoted: a gateway restarted mid-canary comes back on its
//! active version, and the canary is gone. Any push, rollback or removal of the plugin ends
//! its canary first, so the gate always compares against the version it started next to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::{ActivePlugin, AdminError, AdminOutcome, Registry, unix_secs};
use crate::metrics::Window;
use crate::units::{parse_duration, parse_rate};
use edgeplug_bundle::{StoreError, VerifiedBundle};

/// How often the gate is checked.
pub const WATCH_TICK: Duration = Duration::from_millis(200);

/// What the canary gets of the plugin's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryMode {
    /// This share of requests (1..=99 %) is served by the canary.
    Split { percent: u8 },
    /// Every request is served by the active version; a copy also runs on the canary.
    Shadow,
}

/// When a canary is reverted, and when it promotes itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CanaryGate {
    /// Reverted when its error rate exceeds the active version's over the same time by more
    /// than this (a fraction: 0.01 is one point). Measured against the active version so that
    /// clients sending bad input do not count against the canary.
    pub max_error_rate: f64,
    /// Reverted when its p99 latency (from the histogram) is over this.
    pub max_p99_ms: Option<f64>,
    /// Shadow only: reverted when more than this fraction of compared answers differ.
    pub max_disagreement: Option<f64>,
    /// No verdict before the canary has answered this many requests.
    pub min_requests: u64,
    /// Promoted by itself once this long has passed with the gate holding.
    #[serde(serialize_with = "seconds")]
    pub promote_after: Option<Duration>,
}

fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl Default for CanaryGate {
    fn default() -> CanaryGate {
        CanaryGate {
            max_error_rate: 0.01,
            max_p99_ms: None,
            max_disagreement: None,
            min_requests: 20,
            promote_after: None,
        }
    }
}

/// Shadow comparisons so far.
#[derive(Debug, Default)]
pub struct ShadowCounts {
    pub agreed: AtomicU64,
    pub differed: AtomicU64,
    /// The shadow run failed where the active version answered.
    pub failed: AtomicU64,
    /// Not run: the canary's concurrency permits were all taken.
    pub skipped: AtomicU64,
}

/// A version on trial next to the active one.
pub struct Canary {
    pub plugin: Arc<ActivePlugin>,
    /// Kept to write to the store on promotion.
    bundle: VerifiedBundle,
    pub mode: CanaryMode,
    pub gate: CanaryGate,
    /// The active version it runs next to, and that version's counters when it started.
    against: Arc<ActivePlugin>,
    active_at_start: Window,
    canary_at_start: Window,
    started: Instant,
    started_at: SystemTime,
    /// The split's pseudo-random sequence: a counter run through a mixing function, so the
    /// share holds over any stretch of requests and no request pattern lines up with it.
    draws: AtomicU64,
    pub shadow: ShadowCounts,
}

/// What the gate says.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Hold,
    Revert(String),
    Promote,
}

/// A canary as `GET /v1/plugins` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryListing {
    pub version: String,
    /// `split` or `shadow`.
    pub mode: &'static str,
    /// The share of requests it serves (`split`), else 0.
    pub percent: u8,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub gate: CanaryGate,
    /// Its requests since it started (shadow copies included) and theirs that failed.
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// The active version's error rate over the same time.
    pub active_error_rate: f64,
    pub p99_ms: Option<f64>,
    pub shadow: Option<ShadowListing>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShadowListing {
    pub agreed: u64,
    pub differed: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// How a canary ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CanaryOutcome {
    /// It became the active version.
    Promoted,
    /// Its gate found it worse than the active version.
    Reverted,
    /// An operator ended it, or a push, rollback, removal or newer canary superseded it.
    Aborted,
}

impl CanaryOutcome {
    pub fn name(self) -> &'static str {
        match self {
            CanaryOutcome::Promoted => "promoted",
            CanaryOutcome::Reverted => "reverted",
            CanaryOutcome::Aborted => "aborted",
        }
    }
}

/// How the last canary of a plugin ended.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryEnd {
    pub version: String,
    pub outcome: CanaryOutcome,
    pub reason: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// What starting a canary did.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryStarted {
    pub name: String,
    pub active: String,
    pub canary: String,
    pub mode: &'static str,
    pub percent: u8,
    pub self_tests: usize,
    pub load_ms: f64,
}

/// A canary's mode and gate from its spec: the query string of `PUT
/// /v1/admin/plugins/{name}?canary=10&max_error_rate=1%...`, and a fleet canary notice's
/// `canary` field (the same text, so one syntax serves both).
pub fn parse_canary_spec(query: &str) -> Result<(CanaryMode, CanaryGate), String> {
    let mut mode = None;
    let mut gate = CanaryGate::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |what: &str| {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{key}={value:?}: {what}"))
        };
        match key {
            "canary" => {
                let percent = value
                    .trim_end_matches('%')
                    .parse::<u8>()
                    .ok()
                    .filter(|p| (1..=99).contains(p))
                    .ok_or_else(|| {
                        format!("canary={value:?}: the canary's share is a percentage from 1 to 99")
                    })?;
                mode = Some(CanaryMode::Split { percent });
            }
            "shadow" => match value {
                "true" | "1" => mode = Some(CanaryMode::Shadow),
                _ => return Err(format!("shadow={value:?}: only shadow=true is meaningful")),
            },
            "max_error_rate" => {
                gate.max_error_rate = parse_rate(value).map_err(|e| format!("{key}: {e:#}"))?
            }
            "max_disagreement" => {
                gate.max_disagreement =
                    Some(parse_rate(value).map_err(|e| format!("{key}: {e:#}"))?)
            }
            "max_p99_ms" => gate.max_p99_ms = Some(number("milliseconds")?),
            "min_requests" => {
                gate.min_requests = value
                    .parse()
                    .map_err(|_| format!("{key}={value:?}: a count of requests"))?
            }
            "promote_after" => {
                gate.promote_after =
                    Some(parse_duration(value).map_err(|e| format!("{key}: {e:#}"))?)
            }
            _ => {
                return Err(format!(
                    "unknown parameter {key:?}: a canary takes canary or shadow, \
                     max_error_rate, max_p99_ms, max_disagreement, min_requests, promote_after"
                ));
            }
        }
    }
    let mode = mode.ok_or("give canary=PERCENT or shadow=true")?;
    if matches!(mode, CanaryMode::Split { .. }) && gate.max_disagreement.is_some() {
        return Err("max_disagreement applies to shadow=true only".into());
    }
    if query.contains("canary=") && query.contains("shadow=") {
        return Err("give either canary=PERCENT or shadow=true, not both".into());
    }
    Ok((mode, gate))
}

/// SplitMix64's finalizer: consecutive counters become well-spread 64-bit values.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Canary {
    fn new(
        plugin: Arc<ActivePlugin>,
        bundle: VerifiedBundle,
        mode: CanaryMode,
        gate: CanaryGate,
        against: Arc<ActivePlugin>,
    ) -> Canary {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Canary {
            canary_at_start: plugin.metrics.window(),
            active_at_start: against.metrics.window(),
            plugin,
            bundle,
            mode,
            gate,
            against,
            started: Instant::now(),
            started_at: SystemTime::now(),
            draws: AtomicU64::new(seed),
            shadow: ShadowCounts::default(),
        }
    }

    /// Whether the next request goes to the canary (split mode only).
    pub fn takes_next(&self) -> bool {
        let CanaryMode::Split { percent } = self.mode else {
            return false;
        };
        let draw = mix(self.draws.fetch_add(1, Ordering::Relaxed)) % 100;
        draw < u64::from(percent)
    }

    /// Its counters and the active version's since it started.
    fn windows(&self) -> (Window, Window) {
        (
            self.plugin.metrics.window().since(&self.canary_at_start),
            self.against.metrics.window().since(&self.active_at_start),
        )
    }

    /// The gate's verdict now.
    pub fn verdict(&self) -> Verdict {
        let (canary, active) = self.windows();
        if canary.requests < self.gate.min_requests {
            return Verdict::Hold;
        }
        let (rate, active_rate) = (canary.error_rate(), active.error_rate());
        if rate - active_rate > self.gate.max_error_rate {
            return Verdict::Revert(format!(
                "error rate {:.1}% over {} requests against {:.1}% for the active version {}; \
                 the gate allows {:.1} points more",
                rate * 100.0,
                canary.requests,
                active_rate * 100.0,
                self.against.version,
                self.gate.max_error_rate * 100.0
            ));
        }
        if let (Some(bound), Some(p99)) = (self.gate.max_p99_ms, canary.latency_quantile_ms(0.99))
            && p99 > bound
        {
            return Verdict::Revert(format!(
                "p99 latency {p99:.1} ms over {} requests; the gate allows {bound} ms",
                canary.requests
            ));
        }
        if let Some(bound) = self.gate.max_disagreement {
            let differed = self.shadow.differed.load(Ordering::Relaxed);
            let compared = differed + self.shadow.agreed.load(Ordering::Relaxed);
            if compared > 0 && differed as f64 / compared as f64 > bound {
                return Verdict::Revert(format!(
                    "{differed} of {compared} shadow answers differ from the active version's; \
                     the gate allows {:.1}%",
                    bound * 100.0
                ));
            }
        }
        match self.gate.promote_after {
            Some(after) if self.started.elapsed() >= after => Verdict::Promote,
            _ => Verdict::Hold,
        }
    }

    pub fn listing(&self) -> CanaryListing {
        let (canary, active) = self.windows();
        let (mode, percent) = match self.mode {
            CanaryMode::Split { percent } => ("split", percent),
            CanaryMode::Shadow => ("shadow", 0),
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CanaryListing {
            version: self.plugin.version.to_string(),
            mode,
            percent,
            started_at: unix_secs(self.started_at),
            gate: self.gate,
            requests: canary.requests,
            errors: canary.errors,
            error_rate: canary.error_rate(),
            active_error_rate: active.error_rate(),
            p99_ms: canary.latency_quantile_ms(0.99),
            shadow: (self.mode == CanaryMode::Shadow).then(|| ShadowListing {
                agreed: load(&self.shadow.agreed),
                differed: load(&self.shadow.differed),
                failed: load(&self.shadow.failed),
                skipped: load(&self.shadow.skipped),
            }),
        }
    }
}

impl CanaryMode {
    fn name(&self) -> &'static str {
        match self {
            CanaryMode::Split { .. } => "split",
            CanaryMode::Shadow => "shadow",
        }
    }
}

impl Registry {
    /// Where a request for `name` runs: the active version, or its canary for the canary's
    /// share. The request path: no admin lock.
    pub fn route(&self, name: &str) -> Option<Arc<ActivePlugin>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let slot = slots.get(name)?;
        let active = slot.active.load_full()?;
        if let Some(canary) = &*slot.canary.load()
            && Arc::ptr_eq(&canary.against, &active)
            && canary.takes_next()
        {
            return Some(canary.plugin.clone());
        }
        Some(active)
    }

    /// `name`'s loaded version `version`: the active one or its canary (a client that asks
    /// for a version by name gets that one).
    pub fn version_of(&self, name: &str, version: &str) -> Option<Arc<ActivePlugin>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let slot = slots.get(name)?;
        let active = slot.active.load_full()?;
        if active.version.to_string() == version {
            return Some(active);
        }
        slot.canary
            .load_full()
            .map(|c| c.plugin.clone())
            .filter(|c| c.version.to_string() == version)
    }

    /// The shadow canary of the version `plugin`, if it has one: what the lanes run a copy of
    /// each of its requests on.
    pub fn shadow_of(&self, plugin: &ActivePlugin) -> Option<Arc<Canary>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let canary = slots.get(plugin.name())?.canary.load_full()?;
        (canary.mode == CanaryMode::Shadow && std::ptr::eq(&*canary.against, plugin))
            .then_some(canary)
    }

    /// The canary of `name`, if one runs.
    pub fn canary(&self, name: &str) -> Option<Arc<Canary>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots.get(name)?.canary.load_full()
    }

    /// How the last canary of `name` ended.
    pub fn last_canary(&self, name: &str) -> Option<CanaryEnd> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let slot = slots.get(name)?;
        slot.last_canary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts `bytes` as a canary of the active version of `name`: verified, newer than the
    /// active version, compiled and self-tested as a push is, then routed to. Replaces a
    /// canary already running. Blocking: run it off the async reactor.
    pub fn start_canary(
        &self,
        bytes: Vec<u8>,
        name: &str,
        mode: CanaryMode,
        gate: CanaryGate,
    ) -> Result<(CanaryStarted, Arc<Canary>), AdminError> {
        let started = Instant::now();
        let result = self
            .trust()
            .and_then(|trust| Ok(edgeplug_bundle::verify(bytes, &trust, &self.bundle_limits)?))
            .and_then(|bundle| self.start_verified_canary(bundle, name, mode, gate, started));
        self.collect_cache_garbage();
        result
    }

    fn start_verified_canary(
        &self,
        bundle: VerifiedBundle,
        name: &str,
        mode: CanaryMode,
        gate: CanaryGate,
        started: Instant,
    ) -> Result<(CanaryStarted, Arc<Canary>), AdminError> {
        if bundle.name() != name {
            return Err(StoreError::NameMismatch {
                expected: name.to_string(),
                found: bundle.name().to_string(),
            }
            .into());
        }
        let slot = self.slot(name);
        let _admin = slot.admin.lock().unwrap_or_else(|p| p.into_inner());
        let active = slot
            .active
            .load_full()
            .ok_or_else(|| StoreError::NotInstalled(name.to_string()))?;
        if bundle.version().cmp_precedence(&active.version) != std::cmp::Ordering::Greater {
            return Err(StoreError::NotNewer {
                name: name.to_string(),
                version: bundle.version().clone(),
                active: active.version.clone(),
            }
            .into());
        }
        let ready = Arc::new(self.prepare(&bundle, started, self.verify)?);
        let canary = Arc::new(Canary::new(
            ready.clone(),
            bundle,
            mode,
            gate,
            active.clone(),
        ));
        if let Some(replaced) = slot.canary.swap(Some(canary.clone())) {
            self.record_canary_end(
                &slot,
                &replaced,
                CanaryOutcome::Aborted,
                "replaced by a newer canary",
            );
        }
        self.metrics
            .canary_event("canary-start", name, &ready.version.to_string());
        tracing::info!(plugin = name, active = %active.version, canary = %ready.version, mode = mode.name(), "canary started");
        let started = CanaryStarted {
            name: name.to_string(),
            active: active.version.to_string(),
            canary: ready.version.to_string(),
            mode: mode.name(),
            percent: match mode {
                CanaryMode::Split { percent } => percent,
                CanaryMode::Shadow => 0,
            },
            self_tests: ready.self_tests,
            load_ms: ready.load_time.as_secs_f64() * 1e3,
        };
        Ok((started, canary))
    }

    /// Makes the canary of `name` the active version: written to the store (as a push
    /// would), then published. `expected`, when given, must be the running canary (the
    /// watchdog's promotion must not promote a canary that replaced the one it judged).
    /// Blocking.
    pub fn promote_canary(
        &self,
        name: &str,
        expected: Option<&Arc<Canary>>,
    ) -> Result<AdminOutcome, AdminError> {
        let slot = self.slot(name);
        let _admin = slot.admin.lock().unwrap_or_else(|p| p.into_inner());
        let canary = slot
            .canary
            .load_full()
            .filter(|c| expected.is_none_or(|e| Arc::ptr_eq(c, e)))
            .ok_or_else(|| AdminError::NoCanary(name.to_string()))?;
        self.store.install(&canary.bundle, Some(name))?;
        slot.canary.store(None);
        let old = self.publish(&slot, canary.plugin.clone());
        let version = canary.plugin.version.to_string();
        self.record_canary_end(&slot, &canary, CanaryOutcome::Promoted, "promoted");
        self.metrics.event("push", name, &version);
        tracing::info!(plugin = name, %version, "canary promoted to active");
        Ok(AdminOutcome {
            name: name.to_string(),
            version: Some(version),
            previous: old.map(|o| o.version.to_string()),
            self_tests: canary.plugin.self_tests,
            load_ms: canary.plugin.load_time.as_secs_f64() * 1e3,
        })
    }

    /// Ends the canary of `name` (reverted or aborted, for `reason`); the
    /// active version keeps serving. `expected` as for [`Registry::promote_canary`].
    /// Returns the canary's version.
    pub fn end_canary(
        &self,
        name: &str,
        expected: Option<&Arc<Canary>>,
        outcome: CanaryOutcome,
        reason: &str,
    ) -> Result<String, AdminError> {
        let slot = self.slot(name);
        let _admin = slot.admin.lock().unwrap_or_else(|p| p.into_inner());
        let canary = slot
            .canary
            .load_full()
            .filter(|c| expected.is_none_or(|e| Arc::ptr_eq(c, e)))
            .ok_or_else(|| AdminError::NoCanary(name.to_string()))?;
        slot.canary.store(None);
        self.record_canary_end(&slot, &canary, outcome, reason);
        Ok(canary.plugin.version.to_string())
    }

    /// Ends a running canary because its plugin's active version is about to change.
    /// Called under the slot's admin lock.
    pub(super) fn supersede_canary(&self, slot: &super::Slot, why: &str) {
        if let Some(canary) = slot.canary.swap(None) {
            self.record_canary_end(slot, &canary, CanaryOutcome::Aborted, why);
        }
    }

    fn record_canary_end(
        &self,
        slot: &super::Slot,
        canary: &Canary,
        outcome: CanaryOutcome,
        reason: &str,
    ) {
        let name = canary.plugin.name();
        let version = canary.plugin.version.to_string();
        let event = match outcome {
            CanaryOutcome::Reverted => {
                tracing::warn!(plugin = name, %version, reason, "canary reverted by its gate");
                "canary-revert"
            }
            CanaryOutcome::Aborted => {
                tracing::info!(plugin = name, %version, reason, "canary ended");
                "canary-abort"
            }
            CanaryOutcome::Promoted => "canary-promote",
        };
        self.metrics.canary_event(event, name, &version);
        // A promoted canary serves on as the active version; the others are done.
        if outcome != CanaryOutcome::Promoted {
            canary.plugin.plugin.release_kept_instances();
        }
        *slot.last_canary.lock().unwrap_or_else(|p| p.into_inner()) = Some(CanaryEnd {
            version,
            outcome,
            reason: reason.to_string(),
            at: unix_secs(SystemTime::now()),
        });
    }
}

/// Checks the canary of `name` every [`WATCH_TICK`] until it ends: reverts it on a breach of
/// its gate, promotes it when its gate says so. One watch per canary, started with it.
pub async fn watch(gw: Arc<crate::Gateway>, name: String, canary: Arc<Canary>) {
    loop {
        tokio::time::sleep(WATCH_TICK).await;
        let running = gw.registry.canary(&name);
        if !running.is_some_and(|r| Arc::ptr_eq(&r, &canary)) {
            return;
        }
        match canary.verdict() {
            Verdict::Hold => continue,
            Verdict::Revert(reason) => {
                // Off the reactor: the admin lock may be held by a push compiling.
                let task_gw = gw.clone();
                let task_canary = canary.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    task_gw.registry.end_canary(
                        &name,
                        Some(&task_canary),
                        CanaryOutcome::Reverted,
                        &reason,
                    )
                })
                .await;
                return;
            }
            Verdict::Promote => {
                let task_gw = gw.clone();
                let task_name = name.clone();
                let task_canary = canary.clone();
                let promoted = gw
                    .admin
                    .run(move || {
                        task_gw
                            .registry
                            .promote_canary(&task_name, Some(&task_canary))
                    })
                    .await;
                match promoted {
                    Some(Ok(_)) | Some(Err(AdminError::NoCanary(_))) => return,
                    // The admin lane is busy or the store refused: the canary keeps running
                    // and the next tick tries again.
                    Some(Err(e)) => {
                        tracing::warn!(plugin = %name, error = %e, "canary not promoted yet")
                    }
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_draws_are_spread_evenly() {
        // Any 2,000 consecutive draws give each percent its share within a few points.
        for start in [0u64, 1 << 40, u64::MAX - 1000] {
            let taken = (0..2000u64)
                .filter(|i| mix(start.wrapping_add(*i)) % 100 < 10)
                .count();
            assert!((160..=240).contains(&taken), "{taken} of 2000 at 10%");
        }
    }

    #[test]
    fn a_canary_query_gives_its_mode_and_gate() {
        let (mode, gate) =
            parse_canary_spec("canary=10&max_error_rate=2%&max_p99_ms=40&promote_after=2m")
                .unwrap();
        assert_eq!(mode, CanaryMode::Split { percent: 10 });
        assert_eq!(gate.max_error_rate, 0.02);
        assert_eq!(gate.max_p99_ms, Some(40.0));
        assert_eq!(gate.promote_after, Some(Duration::from_secs(120)));
        assert_eq!(gate.min_requests, CanaryGate::default().min_requests);
        let (mode, gate) = parse_canary_spec("shadow=true&max_disagreement=5%").unwrap();
        assert_eq!(mode, CanaryMode::Shadow);
        assert_eq!(gate.max_disagreement, Some(0.05));
    }

    #[test]
    fn a_bad_canary_query_says_what_is_wrong() {
        for (query, says) in [
            ("canary=0", "1 to 99"),
            ("canary=100", "1 to 99"),
            ("canary=ten", "1 to 99"),
            ("shadow=false", "shadow=true"),
            ("canary=10&shadow=true", "not both"),
            ("canary=10&max_disagreement=5%", "shadow=true only"),
            ("canary=10&max_error_rate=2", "percentage"),
            ("canary=10&max_p99_ms=-1", "milliseconds"),
            ("canary=10&promote_after=soon", "duration"),
            ("canary=10&speed=fast", "unknown parameter"),
            ("max_error_rate=1%", "canary=PERCENT or shadow=true"),
        ] {
            let e = parse_canary_spec(query).unwrap_err();
            assert!(e.contains(says), "{query}: {e}");
        }
    }
}

//! Prometheus metrics, kept in atomics and rendered in the text exposition format.
//!
//! Requests, errors (by code) and latency histograms per plugin and version; swaps,
//! rollbacks, removals and rejected bundles (by reason).
//!
//! A version's series live as long as the version does: every loaded version (active, or
//! kept in memory for a rollback) holds its [`VersionMetrics`], and once none does (the
//! version was dropped and its last request finished) [`Metrics::forget_dropped`] removes
//! its series, so a gateway that is pushed to for months does not export every version it
//! ever ran.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters of one plugin version.
#[derive(Debug, Default)]
pub struct VersionMetrics {
    requests: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_us_sum: AtomicU64,
    /// The part of `latency_us_sum` spent by failed requests.
    failed_us_sum: AtomicU64,
    /// Runs of the plugin and the time they took (the rest of a request's latency is reading
    /// and decoding its body and waiting for a lane).
    runs: AtomicU64,
    run_us_sum: AtomicU64,
    /// When the last request finished, in milliseconds since the Unix epoch.
    last_unix_ms: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// The plugin's recent activity, shared with its other versions (the web page's charts).
    activity: Arc<crate::activity::PluginActivity>,
}

/// A count and the total time it took, for Triton's statistics extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CountAndTime {
    pub count: u64,
    pub ns: u64,
}

/// A version's request statistics in the shape of Triton's statistics extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InferenceStats {
    pub success: CountAndTime,
    pub fail: CountAndTime,
    /// Time of requests outside the plugin's run: body, decoding, waiting for a lane.
    pub queue: CountAndTime,
    /// The plugin's runs (its preprocessing, model and postprocessing all happen there).
    pub compute: CountAndTime,
    pub last_unix_ms: u64,
}

/// A reading of a version's request counters, or the difference of two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    buckets: [u64; BUCKETS.len()],
}

impl Window {
    /// What happened between `earlier` and this reading.
    pub fn since(&self, earlier: &Window) -> Window {
        Window {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
        }
    }

    /// Failed requests over requests; 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// See [`VersionMetrics::latency_quantile_ms`].
    pub fn latency_quantile_ms(&self, q: f64) -> Option<f64> {
        // Requests over the last bound are counted in `requests` only.
        let total = self.requests.max(self.buckets.iter().sum());
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        let mut lower = 0.0;
        for (count, bound) in self.buckets.iter().zip(BUCKETS) {
            if *count > 0 && (below + count) as f64 >= rank {
                let within = (rank - below as f64) / *count as f64;
                return Some((lower + (bound - lower) * within) * 1e3);
            }
            below += count;
            lower = bound;
        }
        Some(BUCKETS[BUCKETS.len() - 1] * 1e3)
    }
}

impl VersionMetrics {
    /// Records one finished request (successful or not) and its latency.
    pub fn observe(&self, latency: Duration, error: Option<&str>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let us = latency.as_micros() as u64;
        self.latency_us_sum.fetch_add(us, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_unix_ms.fetch_max(now, Ordering::Relaxed);
        self.activity
            .record_at(now / 1000, latency, error.is_some());
        if let Some(code) = error {
            self.failed_us_sum.fetch_add(us, Ordering::Relaxed);
            *self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(code.to_string())
                .or_default() += 1;
        }
    }

    /// Records one run of the plugin (part of a request [`VersionMetrics::observe`] records).
    pub fn observe_run(&self, took: Duration) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.run_us_sum
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The counters in the shape of Triton's statistics extension.
    pub fn inference_stats(&self) -> InferenceStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let requests = self.requests();
        let failed = self.errors();
        let total_ns = load(&self.latency_us_sum) * 1000;
        let failed_ns = load(&self.failed_us_sum) * 1000;
        let run_ns = load(&self.run_us_sum) * 1000;
        InferenceStats {
            success: CountAndTime {
                count: requests.saturating_sub(failed),
                ns: total_ns.saturating_sub(failed_ns),
            },
            fail: CountAndTime {
                count: failed,
                ns: failed_ns,
            },
            queue: CountAndTime {
                count: requests,
                ns: total_ns.saturating_sub(run_ns),
            },
            compute: CountAndTime {
                count: load(&self.runs),
                ns: run_ns,
            },
            last_unix_ms: load(&self.last_unix_ms),
        }
    }

    /// Requests so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Failed requests so far.
    pub fn errors(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// The `q` quantile (0 < q <= 1) of the latency in milliseconds, if there was a request:
    /// interpolated linearly inside the histogram bucket it falls in, as Prometheus's
    /// `histogram_quantile` does (so it is as coarse as the buckets). A quantile beyond the
    /// last bucket reads as that bucket's bound. What the fleet's status reports as p99.
    pub fn latency_quantile_ms(&self, q: f64) -> Option<f64> {
        self.window().latency_quantile_ms(q)
    }

    /// The counters as they are now: subtract an earlier reading ([`Window::since`]) to see
    /// what happened in between (a canary's gate judges only its own time).
    pub fn window(&self) -> Window {
        Window {
            requests: self.requests(),
            errors: self.errors(),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }
    /// Mean latency in milliseconds, if there was a request.
    pub fn mean_latency_ms(&self) -> Option<f64> {
        let n = self.requests();
        (n > 0).then(|| self.latency_us_sum.load(Ordering::Relaxed) as f64 / n as f64 / 1000.0)
    }
}

/// Metrics kept by a crate built on the gateway (the triggers), rendered after the gateway's
/// own, so one scrape of `/metrics` sees everything while the gateway knows nothing of them.
/// A label value: the names here are checked plain (plugin and upstream names), but a
/// rendering must never break on a quote.
pub fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

pub trait MetricsSource: std::fmt::Debug + Send + Sync {
    /// Appends complete families (`# HELP`, `# TYPE`, samples) in the text exposition format.
    fn render(&self, out: &mut String);
}

/// Every metric of the gateway.
#[derive(Debug, Default)]
pub struct Metrics {
    sources: Mutex<Vec<Arc<dyn MetricsSource>>>,
    versions: Mutex<BTreeMap<(String, String), Arc<VersionMetrics>>>,
    events: Mutex<BTreeMap<(&'static str, String, String), u64>>,
    /// Requests refused before reaching a plugin (unknown plugin, saturated, too large...),
    /// by HTTP status.
    refused: Mutex<BTreeMap<u16, u64>>,
    /// Each plugin's recent requests and version history, for the web page.
    pub activities: crate::activity::Activities,
}

impl Metrics {
    /// The counters of `name` `version`, created on first use and kept while anything holds
    /// them (the loaded version does).
    pub fn version(&self, name: &str, version: &str) -> Arc<VersionMetrics> {
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((name.to_string(), version.to_string()))
            .or_insert_with(|| {
                Arc::new(VersionMetrics {
                    activity: self.activities.plugin(name),
                    ..VersionMetrics::default()
                })
            })
            .clone()
    }

    /// Adds `source`'s families to every rendering from now on.
    pub fn add_source(&self, source: Arc<dyn MetricsSource>) {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(source);
    }

    /// A swap (`kind` = "push"), a rollback or a removal.
    pub fn event(&self, kind: &'static str, plugin: &str, version: &str) {
        self.activities.event(plugin, kind, version);
        self.count(kind, plugin, version);
    }

    /// A canary's start or end: in the plugin's history with its version, counted per
    /// plugin (see the rendering).
    pub fn canary_event(&self, kind: &'static str, plugin: &str, version: &str) {
        self.activities.event(plugin, kind, version);
        self.count(kind, plugin, "");
    }

    /// Counts an occurrence that is not a change of versions (a shadow comparison's
    /// outcome): a counter, but no entry in the plugin's history.
    pub fn count(&self, kind: &'static str, plugin: &str, version: &str) {
        *self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((kind, plugin.to_string(), version.to_string()))
            .or_default() += 1;
    }

    /// A bundle refused by a push, by reason (`reason` is a short code).
    pub fn rejected(&self, plugin: &str, reason: &str) {
        self.event("rejected", plugin, reason);
    }

    /// A request refused with `status` before it reached a plugin.
    pub fn refused(&self, status: u16) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status)
            .or_default() += 1;
    }

    /// Forgets the series of every version nothing holds any more: its requests, errors and
    /// latencies, and its swap, rollback and demotion counts. Returns how many versions went.
    pub fn forget_dropped(&self) -> usize {
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        // Under the lock no new holder can appear: `version()` hands out clones only while
        // holding it, so a count of 1 (the map's own) means the version is gone for good.
        let dropped: Vec<(String, String)> = versions
            .iter()
            .filter(|(_, m)| Arc::strong_count(m) == 1)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &dropped {
            versions.remove(key);
        }
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.retain(|(kind, plugin, version), _| {
            let per_version = matches!(*kind, "push" | "rollback" | "demotion");
            !(per_version && dropped.iter().any(|(p, v)| p == plugin && v == version))
        });
        dropped.len()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.forget_dropped();
        let mut out = String::new();
        out.push_str(
            "# HELP edgeplug_kernel_isa The instruction set the native kernels run with (EDGEPLUG_ISA, else the best this CPU has), the configured precision, and what multiplies bf16 (amx, avx512-bf16; - for f32).\n",
        );
        out.push_str("# TYPE edgeplug_kernel_isa gauge\n");
        let isa = edgeplug_kernels::fast::Isa::detect();
        let precision = edgeplug_models::native::default_precision();
        let _ = writeln!(
            out,
            "edgeplug_kernel_isa{{isa=\"{}\",precision=\"{}\",bf16_engine=\"{}\"}} 1",
            isa.name(),
            precision.name(),
            precision.bf16_engine(isa).map_or("-", |e| e.name())
        );
        let versions = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        out.push_str("# HELP edgeplug_requests_total Requests that reached a plugin version.\n");
        out.push_str("# TYPE edgeplug_requests_total counter\n");
        for ((name, version), m) in &versions {
            let _ = writeln!(
                out,
                "edgeplug_requests_total{{plugin=\"{}\",version=\"{}\"}} {}",
                esc(name),
                esc(version),
                m.requests()
            );
        }
        out.push_str(
            "# HELP edgeplug_request_errors_total Requests that ended in an error, by code.\n",
        );
        out.push_str("# TYPE edgeplug_request_errors_total counter\n");
        for ((name, version), m) in &versions {
            let errors = m.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for (code, n) in errors {
                let _ = writeln!(
                    out,
                    "edgeplug_request_errors_total{{plugin=\"{}\",version=\"{}\",code=\"{}\"}} {n}",
                    esc(name),
                    esc(version),
                    esc(&code)
                );
            }
        }
        out.push_str("# HELP edgeplug_request_duration_seconds Time from the request's arrival to its plugin's answer.\n");
        out.push_str("# TYPE edgeplug_request_duration_seconds histogram\n");
        for ((name, version), m) in &versions {
            let labels = format!("plugin=\"{}\",version=\"{}\"", esc(name), esc(version));
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(&m.buckets) {
                cumulative += count.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "edgeplug_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let total = m.requests();
            let _ = writeln!(
                out,
                "edgeplug_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}"
            );
            let sum = m.latency_us_sum.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "edgeplug_request_duration_seconds_sum{{{labels}}} {sum}"
            );
            let _ = writeln!(
                out,
                "edgeplug_request_duration_seconds_count{{{labels}}} {total}"
            );
        }
        let events = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (kind, metric, help) in [
            (
                "push",
                "edgeplug_swaps_total",
                "Versions published by a push (hot swaps).",
            ),
            (
                "rollback",
                "edgeplug_rollbacks_total",
                "Rollbacks, by the version rolled back to.",
            ),
            ("remove", "edgeplug_removals_total", "Plugins removed."),
            (
                "demotion",
                "edgeplug_demotions_total",
                "Times a version was demoted to low CPU priority after exhausting a limit.",
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} counter");
            for ((k, plugin, version), n) in &events {
                if *k == kind {
                    let _ = writeln!(
                        out,
                        "{metric}{{plugin=\"{}\",version=\"{}\"}} {n}",
                        esc(plugin),
                        esc(version)
                    );
                }
            }
        }
        // Per plugin, not per version: the counters outlive the canary version (which is
        // dropped as soon as it ends), so an alert on a revert sees it.
        for (kind, metric, help) in [
            (
                "canary-start",
                "edgeplug_canary_starts_total",
                "Canaries started (a share of requests, or shadow copies), by the canary version.",
            ),
            (
                "canary-promote",
                "edgeplug_canary_promotions_total",
                "Canaries promoted to the active version.",
            ),
            (
                "canary-revert",
                "edgeplug_canary_reverts_total",
                "Canaries reverted by their gate (error rate, p99 or disagreement over the bound).",
            ),
            (
                "canary-abort",
                "edgeplug_canary_aborts_total",
                "Canaries ended by an operator, or superseded by a push, rollback or removal.",
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} counter");
            for ((k, plugin, _), n) in &events {
                if *k == kind {
                    let _ = writeln!(out, "{metric}{{plugin=\"{}\"}} {n}", esc(plugin));
                }
            }
        }
        out.push_str("# HELP edgeplug_shadow_comparisons_total A shadow canary's answers against the active version's for the same request: agree, differ, failed (the shadow run failed where the active one did not) or skipped (the canary was saturated).\n");
        out.push_str("# TYPE edgeplug_shadow_comparisons_total counter\n");
        for ((k, plugin, _), n) in &events {
            if let Some(outcome) = k.strip_prefix("shadow-") {
                let _ = writeln!(
                    out,
                    "edgeplug_shadow_comparisons_total{{plugin=\"{}\",outcome=\"{outcome}\"}} {n}",
                    esc(plugin),
                );
            }
        }
        out.push_str("# HELP edgeplug_bundles_rejected_total Pushed bundles refused, by reason.\n");
        out.push_str("# TYPE edgeplug_bundles_rejected_total counter\n");
        for ((k, plugin, reason), n) in &events {
            if *k == "rejected" {
                let _ = writeln!(
                    out,
                    "edgeplug_bundles_rejected_total{{plugin=\"{}\",reason=\"{}\"}} {n}",
                    esc(plugin),
                    esc(reason)
                );
            }
        }
        out.push_str("# HELP edgeplug_requests_refused_total Requests refused before reaching a plugin, by HTTP status.\n");
        out.push_str("# TYPE edgeplug_requests_refused_total counter\n");
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (status, n) in refused {
            let _ = writeln!(
                out,
                "edgeplug_requests_refused_total{{status=\"{status}\"}} {n}"
            );
        }
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for source in sources {
            source.render(&mut out);
        }
        out
    }
}

/// Escapes a label value.
pub fn esc(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        let metrics = Metrics::default();
        let m = metrics.version("digits", "0.1.0");
        m.observe(Duration::from_micros(300), None);
        m.observe(Duration::from_millis(3), Some("invalid-argument"));
        metrics.event("push", "digits", "0.1.0");
        metrics.rejected("digits", "bad-signature");
        metrics.refused(503);
        let text = metrics.render();
        assert!(text.contains("edgeplug_requests_total{plugin=\"digits\",version=\"0.1.0\"} 2"));
        assert!(text.contains(
            "edgeplug_request_errors_total{plugin=\"digits\",version=\"0.1.0\",code=\"invalid-argument\"} 1"
        ));
        assert!(text.contains(
            "edgeplug_request_duration_seconds_bucket{plugin=\"digits\",version=\"0.1.0\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "edgeplug_request_duration_seconds_bucket{plugin=\"digits\",version=\"0.1.0\",le=\"0.005\"} 2"
        ));
        assert!(text.contains("edgeplug_swaps_total{plugin=\"digits\",version=\"0.1.0\"} 1"));
        assert!(text.contains(
            "edgeplug_bundles_rejected_total{plugin=\"digits\",reason=\"bad-signature\"} 1"
        ));
        assert!(text.contains("edgeplug_requests_refused_total{status=\"503\"} 1"));
        assert_eq!(m.errors(), 1);
    }

    #[test]
    fn latency_quantiles_come_from_the_histogram() {
        let m = VersionMetrics::default();
        assert_eq!(m.latency_quantile_ms(0.99), None);
        // 98 fast requests (0.5 ms bucket), 2 slow ones (50-100 ms bucket).
        for _ in 0..98 {
            m.observe(Duration::from_micros(200), None);
        }
        for _ in 0..2 {
            m.observe(Duration::from_millis(80), Some("deadline-exceeded"));
        }
        let p50 = m.latency_quantile_ms(0.5).unwrap();
        assert!(p50 > 0.0 && p50 <= 0.5, "{p50}");
        let p99 = m.latency_quantile_ms(0.99).unwrap();
        assert!((50.0..=100.0).contains(&p99), "{p99}");
        // Beyond the last bucket: its bound.
        m.observe(Duration::from_secs(60), None);
        assert_eq!(m.latency_quantile_ms(1.0), Some(10_000.0));
    }

    #[test]
    fn a_dropped_versions_series_disappear() {
        let metrics = Metrics::default();
        let old = metrics.version("digits", "0.1.0");
        let new = metrics.version("digits", "0.2.0");
        old.observe(Duration::from_millis(1), Some("invalid-argument"));
        new.observe(Duration::from_millis(1), None);
        metrics.event("push", "digits", "0.1.0");
        metrics.event("demotion", "digits", "0.1.0");
        metrics.event("push", "digits", "0.2.0");
        metrics.rejected("digits", "bad-signature");
        metrics.event("remove", "digits", "");
        // While something holds 0.1.0 (its loaded version, a request on it), it stays.
        assert_eq!(metrics.forget_dropped(), 0);
        assert!(metrics.render().contains("version=\"0.1.0\""));
        drop(old);
        let text = metrics.render();
        assert!(!text.contains("0.1.0"), "{text}");
        assert!(text.contains("edgeplug_requests_total{plugin=\"digits\",version=\"0.2.0\"} 1"));
        assert!(text.contains("edgeplug_swaps_total{plugin=\"digits\",version=\"0.2.0\"} 1"));
        // Events about the plugin rather than a version stay.
        assert!(text.contains("reason=\"bad-signature\"} 1"), "{text}");
        assert!(text.contains("edgeplug_removals_total{plugin=\"digits\",version=\"\"} 1"));
        // A version loaded again (a rollback from disk) starts from zero.
        let again = metrics.version("digits", "0.1.0");
        assert_eq!(again.requests(), 0);
        drop(new);
        assert_eq!(metrics.forget_dropped(), 1);
        assert!(!metrics.render().contains("0.2.0"));
    }
}

//! The triggers' Prometheus families, rendered into the gateway's `/metrics`
//! ([`edgeplug_gateway::metrics::MetricsSource`]). What a message did to its plugin (requests,
//! errors, latency by version) is in the gateway's own families, since triggers run plugins
//! through the same dispatch as HTTP requests.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use edgeplug_gateway::metrics::{MetricsSource, esc};

use crate::camera::CameraCounters;

/// Counters of one trigger.
#[derive(Debug, Default)]
pub struct TriggerCounters {
    /// Messages received.
    pub messages: AtomicU64,
    /// Results published for a plugin's answer.
    pub answered: AtomicU64,
    /// Results published for a failure (the plugin's error, an unknown plugin, too large).
    pub failed: AtomicU64,
    /// QoS 0 messages dropped because every slot was busy.
    pub dropped: AtomicU64,
    /// Times a message waited because its plugin was at its concurrency limit.
    pub saturated_waits: AtomicU64,
}

/// Every trigger's counters, in configuration order, and the connection's state.
#[derive(Debug)]
pub struct TriggerMetrics {
    filters: Vec<(String, String)>,
    pub per_trigger: Vec<TriggerCounters>,
    cameras: Vec<(String, String)>,
    pub per_camera: Vec<CameraCounters>,
    /// Messages being run now.
    pub in_flight: AtomicI64,
    /// Redeliveries of a message still being run, skipped (the running copy acknowledges it).
    pub redeliveries_skipped: AtomicU64,
    /// Messages matching no trigger (a subscription left in the broker's session by an older
    /// configuration), acknowledged and dropped.
    pub unmatched: AtomicU64,
    /// 1 while connected to the broker.
    pub connected: AtomicI64,
    /// Subscriptions the broker granted (one per trigger once they are all in place; they
    /// persist in the session across reconnections).
    pub subscribed: AtomicI64,
    /// Reconnections after the broker went silent (see `config`'s `stall_reconnect_secs`).
    pub stall_reconnects: AtomicU64,
}

impl TriggerMetrics {
    /// `triggers` are (topic filter, plugin) pairs, `cameras` (name, plugin) pairs, in
    /// configuration order.
    pub fn new(triggers: Vec<(String, String)>, cameras: Vec<(String, String)>) -> TriggerMetrics {
        TriggerMetrics {
            per_camera: cameras.iter().map(|_| CameraCounters::default()).collect(),
            cameras,
            per_trigger: triggers
                .iter()
                .map(|_| TriggerCounters::default())
                .collect(),
            filters: triggers,
            in_flight: AtomicI64::new(0),
            redeliveries_skipped: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
            connected: AtomicI64::new(0),
            stall_reconnects: AtomicU64::new(0),
            subscribed: AtomicI64::new(0),
        }
    }
}

/// Picks one counter of a trigger.
type CounterOf = fn(&TriggerCounters) -> &AtomicU64;
/// Picks one counter of a camera.
type CameraCounterOf = fn(&CameraCounters) -> &AtomicU64;

impl MetricsSource for TriggerMetrics {
    fn render(&self, out: &mut String) {
        let families: [(&str, &str, CounterOf); 5] = [
            (
                "edgeplug_trigger_messages_total",
                "MQTT messages received by a trigger.",
                |c| &c.messages,
            ),
            (
                "edgeplug_trigger_answers_total",
                "Results published for a plugin's answer.",
                |c| &c.answered,
            ),
            (
                "edgeplug_trigger_failures_total",
                "Results published for a failed message (plugin error, no such plugin, too large).",
                |c| &c.failed,
            ),
            (
                "edgeplug_trigger_dropped_total",
                "QoS 0 messages dropped because every slot was busy.",
                |c| &c.dropped,
            ),
            (
                "edgeplug_trigger_saturated_waits_total",
                "Times a message waited for its plugin's concurrency limit.",
                |c| &c.saturated_waits,
            ),
        ];
        for (name, help, counter) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((filter, plugin), counters) in self.filters.iter().zip(&self.per_trigger) {
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{}\",plugin=\"{}\"}} {}",
                    esc(filter),
                    esc(plugin),
                    counter(counters).load(Ordering::Relaxed)
                );
            }
        }
        let camera_families: [(&str, &str, CameraCounterOf); 6] = [
            (
                "edgeplug_camera_frames_total",
                "Frames read from a camera's stream.",
                |c| &c.frames,
            ),
            (
                "edgeplug_camera_frames_run_total",
                "Frames run through the camera's plugin.",
                |c| &c.run,
            ),
            (
                "edgeplug_camera_frames_dropped_rate_total",
                "Frames replaced by a newer one before the sampler took them (over the rate).",
                |c| &c.dropped_rate,
            ),
            (
                "edgeplug_camera_frames_dropped_busy_total",
                "Frames dropped because the plugin was still busy with the last one.",
                |c| &c.dropped_busy,
            ),
            (
                "edgeplug_camera_failures_total",
                "Frames whose run failed.",
                |c| &c.failed,
            ),
            (
                "edgeplug_camera_saturated_waits_total",
                "Times a frame waited for its plugin's concurrency limit.",
                |c| &c.saturated_waits,
            ),
        ];
        if !self.cameras.is_empty() {
            for (name, help, counter) in camera_families {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for ((camera, plugin), counters) in self.cameras.iter().zip(&self.per_camera) {
                    let _ = writeln!(
                        out,
                        "{name}{{camera=\"{}\",plugin=\"{}\"}} {}",
                        esc(camera),
                        esc(plugin),
                        counter(counters).load(Ordering::Relaxed)
                    );
                }
            }
            let name = "edgeplug_camera_connected";
            let _ = writeln!(
                out,
                "# HELP {name} 1 while the camera's stream is open.\n# TYPE {name} gauge"
            );
            for ((camera, plugin), counters) in self.cameras.iter().zip(&self.per_camera) {
                let _ = writeln!(
                    out,
                    "{name}{{camera=\"{}\",plugin=\"{}\"}} {}",
                    esc(camera),
                    esc(plugin),
                    counters.connected.load(Ordering::Relaxed)
                );
            }
        }
        for (name, kind, help, value) in [
            (
                "edgeplug_trigger_in_flight",
                "gauge",
                "Messages being run now.",
                self.in_flight.load(Ordering::Relaxed),
            ),
            (
                "edgeplug_trigger_broker_connected",
                "gauge",
                "1 while the triggers are connected to their broker.",
                self.connected.load(Ordering::Relaxed),
            ),
            (
                "edgeplug_trigger_redeliveries_skipped_total",
                "counter",
                "Broker redeliveries of a message still running, left to the running copy.",
                self.redeliveries_skipped.load(Ordering::Relaxed) as i64,
            ),
            (
                "edgeplug_trigger_subscriptions",
                "gauge",
                "Trigger subscriptions the broker granted.",
                self.subscribed.load(Ordering::Relaxed),
            ),
            (
                "edgeplug_trigger_stall_reconnects_total",
                "counter",
                "Reconnections after the broker went silent following traffic.",
                self.stall_reconnects.load(Ordering::Relaxed) as i64,
            ),
            (
                "edgeplug_trigger_unmatched_total",
                "counter",
                "Messages matching no trigger (a stale subscription), acknowledged and dropped.",
                self.unmatched.load(Ordering::Relaxed) as i64,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

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

/// One family of per-item series: name, type, help, and the value it reads from an item's
/// counters.
type Family<C> = (&'static str, &'static str, &'static str, fn(&C) -> i64);

/// Writes `families`, each with one sample per item: `items` are (label value, plugin) pairs
/// in the order of `counters`, labelled `label` and `plugin`.
fn per_item<C>(
    out: &mut String,
    label: &str,
    items: &[(String, String)],
    counters: &[C],
    families: &[Family<C>],
) {
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for ((item, plugin), counters) in items.iter().zip(counters) {
            let _ = writeln!(
                out,
                "{name}{{{label}=\"{}\",plugin=\"{}\"}} {}",
                esc(item),
                esc(plugin),
                value(counters)
            );
        }
    }
}

/// A counter's value as a sample.
fn read(counter: &AtomicU64) -> i64 {
    counter.load(Ordering::Relaxed) as i64
}

impl MetricsSource for TriggerMetrics {
    fn render(&self, out: &mut String) {
        let trigger_families: [Family<TriggerCounters>; 5] = [
            (
                "edgeplug_trigger_messages_total",
                "counter",
                "MQTT messages received by a trigger.",
                |c| read(&c.messages),
            ),
            (
                "edgeplug_trigger_answers_total",
                "counter",
                "Results published for a plugin's answer.",
                |c| read(&c.answered),
            ),
            (
                "edgeplug_trigger_failures_total",
                "counter",
                "Results published for a failed message (plugin error, no such plugin, too large).",
                |c| read(&c.failed),
            ),
            (
                "edgeplug_trigger_dropped_total",
                "counter",
                "QoS 0 messages dropped because every slot was busy.",
                |c| read(&c.dropped),
            ),
            (
                "edgeplug_trigger_saturated_waits_total",
                "counter",
                "Times a message waited for its plugin's concurrency limit.",
                |c| read(&c.saturated_waits),
            ),
        ];
        per_item(
            out,
            "topic",
            &self.filters,
            &self.per_trigger,
            &trigger_families,
        );
        let camera_families: [Family<CameraCounters>; 7] = [
            (
                "edgeplug_camera_frames_total",
                "counter",
                "Frames read from a camera's stream.",
                |c| read(&c.frames),
            ),
            (
                "edgeplug_camera_frames_run_total",
                "counter",
                "Frames run through the camera's plugin.",
                |c| read(&c.run),
            ),
            (
                "edgeplug_camera_frames_dropped_rate_total",
                "counter",
                "Frames replaced by a newer one while the plugin was idle (the camera is faster than fps).",
                |c| read(&c.dropped_rate),
            ),
            (
                "edgeplug_camera_frames_dropped_busy_total",
                "counter",
                "Frames replaced by a newer one while the plugin was busy (it is slower than the camera).",
                |c| read(&c.dropped_busy),
            ),
            (
                "edgeplug_camera_failures_total",
                "counter",
                "Frames whose run failed.",
                |c| read(&c.failed),
            ),
            (
                "edgeplug_camera_saturated_waits_total",
                "counter",
                "Times a frame waited for its plugin's concurrency limit.",
                |c| read(&c.saturated_waits),
            ),
            (
                "edgeplug_camera_connected",
                "gauge",
                "1 while the camera's stream is open.",
                |c| c.connected.load(Ordering::Relaxed),
            ),
        ];
        if !self.cameras.is_empty() {
            per_item(
                out,
                "camera",
                &self.cameras,
                &self.per_camera,
                &camera_families,
            );
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

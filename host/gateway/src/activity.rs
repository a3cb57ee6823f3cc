//! What the web page shows of each plugin's recent life: requests and errors per
//! [`SLOT_SECS`] over the last [`SLOTS`] slots with their latency histogram, and its version
//! history (pushes, rollbacks, removals, demotions, refused bundles), newest last. Kept in
//! memory per plugin name, across its versions; the `/metrics` counters stay the durable,
//! scrapeable form.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Width of one slot of the request rate, seconds.
pub const SLOT_SECS: u64 = 10;
/// Slots kept: ten minutes.
pub const SLOTS: usize = 60;
/// History entries kept per plugin.
pub const HISTORY: usize = 50;
/// Upper bounds of the latency histogram's buckets, milliseconds (the last bucket is open).
pub const LATENCY_BOUNDS_MS: [f64; 12] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// Start of the slot, seconds since the Unix epoch.
    pub start: u64,
    pub requests: u64,
    pub errors: u64,
    #[serde(skip)]
    latency: [u64; LATENCY_BOUNDS_MS.len() + 1],
}

/// One event of a plugin's version history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    /// `push`, `rollback`, `remove`, `demotion` or `rejected`.
    pub event: &'static str,
    /// The version it concerns (a push's new version, the version a rollback returned to), or
    /// for `rejected`, the reason.
    pub detail: String,
}

/// One plugin's recent requests.
#[derive(Debug, Default)]
pub struct PluginActivity {
    slots: Mutex<VecDeque<Slot>>,
}

impl PluginActivity {
    /// Records one request that finished at `now` (seconds since the Unix epoch: the caller
    /// has read the clock already).
    pub fn record_at(&self, now: u64, latency: Duration, failed: bool) {
        let start = now - now % SLOT_SECS;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.back().is_none_or(|s| s.start != start) {
            slots.push_back(Slot {
                start,
                ..Slot::default()
            });
            while slots.len() > SLOTS {
                slots.pop_front();
            }
        }
        let slot = slots.back_mut().expect("pushed above");
        slot.requests += 1;
        slot.errors += u64::from(failed);
        let ms = latency.as_secs_f64() * 1e3;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        slot.latency[bucket] += 1;
    }

    /// The last [`SLOTS`] slots up to `now` (every one, empty ones included, oldest first)
    /// and the latency histogram over them.
    fn window(&self, now: u64) -> (Vec<Slot>, Vec<u64>) {
        let last = now - now % SLOT_SECS;
        let first = last.saturating_sub(SLOT_SECS * (SLOTS as u64 - 1));
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut histogram = vec![0u64; LATENCY_BOUNDS_MS.len() + 1];
        let window = (0..SLOTS as u64)
            .map(|i| first + i * SLOT_SECS)
            .map(|start| {
                let slot = slots
                    .iter()
                    .find(|s| s.start == start)
                    .copied()
                    .unwrap_or(Slot {
                        start,
                        ..Slot::default()
                    });
                for (sum, n) in histogram.iter_mut().zip(slot.latency) {
                    *sum += n;
                }
                slot
            })
            .collect();
        (window, histogram)
    }
}

/// Every plugin's activity and history.
#[derive(Debug, Default)]
pub struct Activities {
    plugins: Mutex<BTreeMap<String, Arc<PluginActivity>>>,
    history: Mutex<BTreeMap<String, VecDeque<HistoryEntry>>>,
}

/// What `GET /v1/plugins/{name}/activity` answers.
#[derive(Debug, Serialize)]
pub struct ActivityReport {
    pub slot_secs: u64,
    pub slots: Vec<Slot>,
    /// Upper bounds of `latency_counts`' buckets (ms); the last count is above the last bound.
    pub latency_bounds_ms: &'static [f64],
    pub latency_counts: Vec<u64>,
    pub history: Vec<HistoryEntry>,
}

impl Activities {
    /// The activity of `plugin`, shared by all its versions.
    pub fn plugin(&self, plugin: &str) -> Arc<PluginActivity> {
        self.plugins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(plugin.to_string())
            .or_default()
            .clone()
    }

    pub fn event(&self, plugin: &str, event: &'static str, detail: &str) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let entries = history.entry(plugin.to_string()).or_default();
        entries.push_back(HistoryEntry {
            at,
            event,
            detail: detail.to_string(),
        });
        while entries.len() > HISTORY {
            entries.pop_front();
        }
    }

    pub fn report(&self, plugin: &str) -> ActivityReport {
        let (slots, latency_counts) = self.plugin(plugin).window(now_secs());
        let history = self
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(plugin)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default();
        ActivityReport {
            slot_secs: SLOT_SECS,
            slots,
            latency_bounds_ms: &LATENCY_BOUNDS_MS,
            latency_counts,
            history,
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fill_roll_over_and_keep_ten_minutes() {
        let activity = PluginActivity::default();
        let t0 = 1_000_000 - 1_000_000 % SLOT_SECS;
        activity.record_at(t0, Duration::from_micros(300), false);
        activity.record_at(t0 + 3, Duration::from_millis(7), true);
        activity.record_at(t0 + SLOT_SECS, Duration::from_secs(9), false);
        let (slots, histogram) = activity.window(t0 + SLOT_SECS + 1);
        assert_eq!(slots.len(), SLOTS);
        let last = slots[SLOTS - 1];
        let before = slots[SLOTS - 2];
        assert_eq!((before.start, before.requests, before.errors), (t0, 2, 1));
        assert_eq!((last.start, last.requests), (t0 + SLOT_SECS, 1));
        assert!(slots[..SLOTS - 2].iter().all(|s| s.requests == 0));
        assert!(
            slots
                .windows(2)
                .all(|w| w[1].start == w[0].start + SLOT_SECS)
        );
        // 0.3 ms in the first bucket, 7 ms in (5, 10], 9 s above the last bound.
        assert_eq!(histogram[0], 1);
        assert_eq!(histogram[4], 1);
        assert_eq!(histogram[LATENCY_BOUNDS_MS.len()], 1);
        assert_eq!(histogram.iter().sum::<u64>(), 3);
        // Eleven minutes later all of it has left the window.
        let (slots, histogram) = activity.window(t0 + 660);
        assert!(slots.iter().all(|s| s.requests == 0));
        assert_eq!(histogram.iter().sum::<u64>(), 0);
        // And the ring never holds more than the window.
        for i in 0..(2 * SLOTS as u64) {
            activity.record_at(t0 + 1000 + i * SLOT_SECS, Duration::ZERO, false);
        }
        assert_eq!(activity.slots.lock().unwrap().len(), SLOTS);
    }

    #[test]
    fn history_is_per_plugin_in_order_and_bounded() {
        let activities = Activities::default();
        activities.event("digits", "push", "1.0.0");
        activities.event("other", "push", "0.1.0");
        activities.event("digits", "push", "2.0.0");
        activities.event("digits", "rollback", "1.0.0");
        let report = activities.report("digits");
        let events: Vec<(&str, &str)> = report
            .history
            .iter()
            .map(|h| (h.event, h.detail.as_str()))
            .collect();
        assert_eq!(
            events,
            [("push", "1.0.0"), ("push", "2.0.0"), ("rollback", "1.0.0")]
        );
        for i in 0..100 {
            activities.event("digits", "push", &format!("3.0.{i}"));
        }
        let history = activities.report("digits").history;
        assert_eq!(history.len(), HISTORY);
        assert_eq!(history.last().unwrap().detail, "3.0.99");
    }
}

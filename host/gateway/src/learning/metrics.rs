//! Learning's series on `/metrics`: jobs by outcome, gate verdicts, head rollbacks, and the
//! live head's checkpoint sequence per plugin.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::metrics::{MetricsSource, label};

#[derive(Debug, Default)]
pub struct LearningMetrics {
    jobs: Mutex<BTreeMap<(String, &'static str), u64>>,
    gates: Mutex<BTreeMap<(String, &'static str), u64>>,
    rollbacks: Mutex<BTreeMap<String, u64>>,
    /// 0: the plugin answers with the head it ships.
    live: Mutex<BTreeMap<String, u64>>,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default() += 1;
}

impl LearningMetrics {
    pub fn job(&self, plugin: &str, outcome: &'static str) {
        bump(&self.jobs, (plugin.to_string(), outcome));
    }

    pub fn gate(&self, plugin: &str, verdict: &'static str) {
        bump(&self.gates, (plugin.to_string(), verdict));
    }

    pub fn rollback(&self, plugin: &str) {
        bump(&self.rollbacks, plugin.to_string());
    }

    pub fn set_live(&self, plugin: &str, sequence: Option<u64>) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plugin.to_string(), sequence.unwrap_or(0));
    }
}

impl MetricsSource for LearningMetrics {
    fn render(&self, out: &mut String) {
        out.push_str("# HELP edgeplug_finetune_jobs_total Fine-tune jobs by outcome (done, failed).\n# TYPE edgeplug_finetune_jobs_total counter\n");
        for ((plugin, outcome), n) in self.jobs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "edgeplug_finetune_jobs_total{{plugin=\"{}\",outcome=\"{outcome}\"}} {n}",
                label(plugin)
            );
        }
        out.push_str("# HELP edgeplug_head_gate_total Trained heads the gate accepted or refused.\n# TYPE edgeplug_head_gate_total counter\n");
        for ((plugin, verdict), n) in self.gates.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "edgeplug_head_gate_total{{plugin=\"{}\",verdict=\"{verdict}\"}} {n}",
                label(plugin)
            );
        }
        out.push_str("# HELP edgeplug_head_rollbacks_total Head rollbacks by the admin API.\n# TYPE edgeplug_head_rollbacks_total counter\n");
        for (plugin, n) in self
            .rollbacks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "edgeplug_head_rollbacks_total{{plugin=\"{}\"}} {n}",
                label(plugin)
            );
        }
        out.push_str("# HELP edgeplug_head_live_sequence The live trained head's checkpoint number (0: the head the plugin ships).\n# TYPE edgeplug_head_live_sequence gauge\n");
        for (plugin, s) in self.live.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "edgeplug_head_live_sequence{{plugin=\"{}\"}} {s}",
                label(plugin)
            );
        }
    }
}

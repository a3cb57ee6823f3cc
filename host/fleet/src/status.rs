//! The status a gateway publishes, retained, on `edgeplug/fleet/<group>/gateways/<id>/status`,
//! and `edgeplug fleet status`: every gateway of a group as a table.
//!
//! The same JSON shape serves the gateway's last will, with `health` `offline`, so a reader
//! handles one format. Unknown keys are ignored on reading, so a newer gateway's status
//! (rollout figures, say) still shows in an older CLI.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::topics;
use edgeplug_mqtt::{BrokerOptions, Session, ephemeral_client_id};

/// What a gateway says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub gateway: String,
    pub group: String,
    pub health: Health,
    /// By plugin name: every plugin the gateway serves or was told to.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginStatus>,
    /// The last refusal or failure (a forged, replayed or older notice, a bad download, a
    /// failed install), kept until a newer one replaces it.
    #[serde(default)]
    pub last_error: Option<ErrorReport>,
    /// Seconds since the Unix epoch, by the gateway's clock.
    #[serde(default)]
    pub updated_at: u64,
}

/// A gateway's state in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Every plugin runs the version it was told (or a newer one).
    Ok,
    /// A version is being downloaded or installed.
    Updating,
    /// A told version failed to install and is being retried or was refused.
    Error,
    /// The last will: the gateway's connection to the broker ended without a goodbye.
    Offline,
}

impl Health {
    /// The worse of two healths (`Offline` over `Error` over `Updating` over `Ok`).
    pub fn worst(self, other: Health) -> Health {
        fn rank(h: Health) -> u8 {
            match h {
                Health::Ok => 0,
                Health::Updating => 1,
                Health::Error => 2,
                Health::Offline => 3,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Updating => "updating",
            Health::Error => "error",
            Health::Offline => "offline",
        }
    }
}

/// One plugin on one gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// The version serving requests.
    #[serde(default)]
    pub active: Option<String>,
    /// The version the fleet asks for (a pin's, else the group's).
    #[serde(default)]
    pub desired: Option<String>,
    /// `installed`, `pending`, `retrying` or `refused`.
    pub state: String,
    /// Requests and errors of the active version since it was loaded.
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub errors: u64,
    /// The 99th percentile of their latency in milliseconds (from the gateway's latency
    /// histogram, so as coarse as its buckets); absent before the first request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// The version running as a canary next to the active one, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// How the last canary ended: its version and `promoted`, `reverted` or `aborted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_canary: Option<String>,
}

/// A refusal or failure, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// A short, stable code: `untrusted-signer`, `replayed-notice`, `older-version`,
    /// `digest-mismatch`, `self-test-failed`, …
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub plugin: Option<String>,
}

impl GatewayStatus {
    /// The last will of gateway `id`.
    pub fn offline(group: &str, id: &str) -> GatewayStatus {
        GatewayStatus {
            gateway: id.to_string(),
            group: group.to_string(),
            health: Health::Offline,
            plugins: BTreeMap::new(),
            last_error: None,
            updated_at: 0,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a status always serializes")
    }
}

/// Reads the retained status of every gateway in `group`, sorted by gateway id. A status that
/// does not parse is shown as such rather than dropped.
pub async fn read_fleet(
    broker: &BrokerOptions,
    group: &str,
    quiet: Duration,
) -> anyhow::Result<Vec<Result<GatewayStatus, (String, String)>>> {
    crate::check_fleet_name("group", group)?;
    let mut session = Session::connect(broker, &ephemeral_client_id("edgeplug-status")).await?;
    let retained = session.retained(&topics::status_filter(group), quiet).await;
    session.close().await;
    let mut out: Vec<_> = retained?
        .into_iter()
        .map(|(topic, payload)| {
            serde_json::from_slice::<GatewayStatus>(&payload)
                .map_err(|e| (topic, format!("unreadable status: {e}")))
        })
        .collect();
    out.sort_by(|a, b| status_key(a).cmp(status_key(b)));
    Ok(out)
}

fn status_key(s: &Result<GatewayStatus, (String, String)>) -> &str {
    match s {
        Ok(status) => &status.gateway,
        Err((topic, _)) => topic,
    }
}

/// The fleet as a plain-text table: one line per gateway and plugin.
pub fn render_table(statuses: &[Result<GatewayStatus, (String, String)>]) -> String {
    let mut rows = vec![[
        "GATEWAY".to_string(),
        "HEALTH".to_string(),
        "PLUGIN".to_string(),
        "ACTIVE".to_string(),
        "DESIRED".to_string(),
        "STATE".to_string(),
        "REQUESTS".to_string(),
        "ERRORS".to_string(),
        "P99 MS".to_string(),
        "LAST ERROR".to_string(),
    ]];
    for status in statuses {
        match status {
            Err((topic, reason)) => rows.push([
                topic.clone(),
                "?".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                reason.clone(),
            ]),
            Ok(s) => {
                let error = s
                    .last_error
                    .as_ref()
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .unwrap_or_else(|| "-".into());
                if s.plugins.is_empty() {
                    rows.push([
                        s.gateway.clone(),
                        s.health.as_str().into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        error.clone(),
                    ]);
                }
                for (i, (name, p)) in s.plugins.iter().enumerate() {
                    rows.push([
                        if i == 0 {
                            s.gateway.clone()
                        } else {
                            String::new()
                        },
                        if i == 0 {
                            s.health.as_str().into()
                        } else {
                            String::new()
                        },
                        name.clone(),
                        p.active.clone().unwrap_or_else(|| "-".into()),
                        p.desired.clone().unwrap_or_else(|| "-".into()),
                        p.state.clone(),
                        p.requests.to_string(),
                        p.errors.to_string(),
                        p.p99_ms
                            .map(|v| format!("{v:.1}"))
                            .unwrap_or_else(|| "-".into()),
                        if i == 0 { error.clone() } else { String::new() },
                    ]);
                }
            }
        }
    }
    let mut widths = [0usize; 10];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i == 9 {
                    cell.clone()
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_render() {
        let mut status = GatewayStatus::offline("g1", "gw-1");
        status.health = Health::Error;
        status.plugins.insert(
            "digits".into(),
            PluginStatus {
                active: Some("0.2.0".into()),
                desired: Some("0.3.0".into()),
                state: "retrying".into(),
                requests: 5,
                errors: 0,
                p99_ms: Some(2.5),
                ..PluginStatus::default()
            },
        );
        status.last_error = Some(ErrorReport {
            at: 1,
            code: "digest-mismatch".into(),
            message: "bad bytes".into(),
            plugin: Some("digits".into()),
        });
        let parsed: GatewayStatus = serde_json::from_slice(&status.to_bytes()).unwrap();
        assert_eq!(parsed, status);
        let will = GatewayStatus::offline("g1", "gw-2");
        let table = render_table(&[
            Ok(parsed),
            Ok(will),
            Err((
                "edgeplug/fleet/g1/gateways/x/status".into(),
                "unreadable".into(),
            )),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("GATEWAY"));
        assert!(
            lines[1].contains("gw-1") && lines[1].contains("error") && lines[1].contains("0.3.0")
        );
        assert!(lines[1].contains("digest-mismatch: bad bytes"));
        assert!(
            lines[0].contains("P99 MS") && lines[1].contains(" 2.5 "),
            "{table}"
        );
        assert!(lines[2].contains("gw-2") && lines[2].contains("offline"));
        assert!(lines[3].contains("unreadable"));
    }
}

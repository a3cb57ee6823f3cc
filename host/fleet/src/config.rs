//! The `[fleet]` table of the gateway configuration file.
//!
//! ```toml
//! [fleet]
//! broker = "mqtts://broker.example:8883"  # mqtt://HOST[:PORT] (1883) or mqtts://HOST[:PORT] (8883)
//! client_id = "gw-0042"                  # this gateway's id: MQTT client id and topic name
//! group = "factory-a"                    # the group whose notices it follows
//! registry = "registry.example"          # OCI registry HOST[:PORT] to pull from
//! # registry_plain_http = false          # true: plain HTTP to the registry (test registries only)
//! # username = "gw-0042"                 # broker credentials
//! # password_file = "/etc/edgeplug/mqtt-password"
//! # registry_username = "puller"         # registry credentials (HTTP basic)
//! # registry_password_file = "/etc/edgeplug/registry-password"
//! # ca_file = "/etc/edgeplug/fleet-ca.pem"  # PEM CA for mqtts and https (default: system roots)
//! # pull_jitter_ms = 10000               # a pull waits a random 0..this first (spreads a fleet)
//! # retry_min_ms = 1000                  # reconcile backoff: first wait, doubled up to
//! # retry_max_ms = 300000                #   this one
//! # session_expiry_secs = 604800         # how long the broker keeps this gateway's session
//! # keep_alive_secs = 30
//! # status_interval_ms = 10000           # status republished this often (rollout gates read it)
//!
//! # [fleet.federated]                    # take part in federated averaging (edgeplug aggregate)
//! # plugins = ["digits"]                 # the plugins whose head deltas this gateway uploads
//! # dp_noise = 1.1                       # refuse rounds with less noise than this multiplier...
//! # dp_clip = 1.0                        # ...or a larger clip norm than this
//! # max_steps = 200                      # a round's fine-tune job: at most this many steps
//! # max_wall_ms = 60000                  # and this long
//! ```
//!
//! Why the table is parsed here and not by `edgeplug_gateway::config`: the gateway crate knows
//! nothing of the fleet (the fleet depends on it, never the reverse). The gateway's `Config`
//! keeps `[fleet]` as an opaque TOML table, so its strict parsing still refuses unknown keys
//! elsewhere, and this module parses the table just as strictly. Relative paths resolve
//! against the configuration file's directory, as the gateway's own paths do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use edgeplug_mqtt::read_secret;

/// The parsed `[fleet]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
    pub broker: String,
    /// This gateway's id: its MQTT client id (hence its persistent session) and its name in
    /// topics.
    pub client_id: String,
    /// The group whose notices it follows.
    pub group: String,
    /// The OCI registry, `HOST[:PORT]`; the repository comes with each notice.
    pub registry: String,
    /// Plain HTTP to the registry instead of HTTPS (a test registry on loopback).
    #[serde(default)]
    pub registry_plain_http: bool,
    /// Broker user name.
    pub username: Option<String>,
    /// A file whose first line is the broker password.
    pub password_file: Option<PathBuf>,
    /// Registry user name (HTTP basic authentication).
    pub registry_username: Option<String>,
    /// A file whose first line is the registry password.
    pub registry_password_file: Option<PathBuf>,
    /// PEM CA certificates trusted for `mqtts://` and HTTPS instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "defaults::pull_jitter_ms")]
    pub pull_jitter_ms: u64,
    #[serde(default = "defaults::retry_min_ms")]
    pub retry_min_ms: u64,
    #[serde(default = "defaults::retry_max_ms")]
    pub retry_max_ms: u64,
    #[serde(default = "defaults::session_expiry_secs")]
    pub session_expiry_secs: u32,
    #[serde(default = "defaults::keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// How often the status is published even when nothing changed (its request, error and
    /// latency figures move), in milliseconds.
    #[serde(default = "defaults::status_interval_ms")]
    pub status_interval_ms: u64,
    /// `[fleet.federated]`: federated averaging of these plugins' heads.
    pub federated: Option<FederatedConfig>,
}

/// `[fleet.federated]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedConfig {
    pub plugins: Vec<String>,
    /// The least noise multiplier a round must ask for before this gateway takes part (its
    /// owner's privacy floor); `None`: any round, with differential privacy or without.
    pub dp_noise: Option<f64>,
    /// With `dp_noise`: the largest clip norm a round may ask for.
    pub dp_clip: Option<f64>,
    #[serde(default = "defaults::federated_max_steps")]
    pub max_steps: u32,
    #[serde(default = "defaults::federated_max_wall_ms")]
    pub max_wall_ms: u64,
}

mod defaults {
    pub fn pull_jitter_ms() -> u64 {
        10_000
    }
    pub fn retry_min_ms() -> u64 {
        1_000
    }
    pub fn retry_max_ms() -> u64 {
        300_000
    }
    pub fn session_expiry_secs() -> u32 {
        7 * 24 * 3600
    }
    pub fn keep_alive_secs() -> u64 {
        30
    }
    pub fn status_interval_ms() -> u64 {
        10_000
    }
    pub fn federated_max_steps() -> u32 {
        200
    }
    pub fn federated_max_wall_ms() -> u64 {
        60_000
    }
}

impl FleetConfig {
    /// Parses the `[fleet]` table; relative paths resolve against `base` (the configuration
    /// file's directory).
    pub fn from_table(table: &toml::Table, base: &Path) -> anyhow::Result<FleetConfig> {
        let mut config: FleetConfig = table
            .clone()
            .try_into()
            .context("invalid [fleet] configuration")?;
        for path in [
            config.password_file.as_mut(),
            config.registry_password_file.as_mut(),
            config.ca_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        config.validate().context("invalid [fleet] configuration")?;
        Ok(config)
    }

    /// Parses `[fleet]` from TOML text (the table's keys, without the header).
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<FleetConfig> {
        let table: toml::Table = toml::from_str(text).context("invalid [fleet] configuration")?;
        FleetConfig::from_table(&table, base)
    }

    fn validate(&self) -> anyhow::Result<()> {
        crate::check_fleet_name("client_id", &self.client_id)?;
        crate::check_fleet_name("group", &self.group)?;
        edgeplug_mqtt::BrokerUrl::parse(&self.broker)?;
        anyhow::ensure!(
            !self.registry.is_empty() && !self.registry.contains(['/', ' ']),
            "registry must be HOST[:PORT], got {:?}",
            self.registry
        );
        anyhow::ensure!(
            self.username.is_some() || self.password_file.is_none(),
            "password_file needs username"
        );
        anyhow::ensure!(
            self.registry_username.is_some() || self.registry_password_file.is_none(),
            "registry_password_file needs registry_username"
        );
        anyhow::ensure!(
            self.retry_min_ms >= 1 && self.retry_min_ms <= self.retry_max_ms,
            "retry_min_ms must be at least 1 and at most retry_max_ms"
        );
        anyhow::ensure!(
            self.session_expiry_secs >= 1,
            "session_expiry_secs must be at least 1 (0 would drop the session, and with it every notice sent while the gateway is offline)"
        );
        anyhow::ensure!(
            (5..=3600).contains(&self.keep_alive_secs),
            "keep_alive_secs must be 5 to 3600"
        );
        anyhow::ensure!(
            (100..=3_600_000).contains(&self.status_interval_ms),
            "status_interval_ms must be 100 to 3600000"
        );
        if let Some(f) = &self.federated {
            for plugin in &f.plugins {
                anyhow::ensure!(
                    !plugin.is_empty() && !plugin.contains(['/', '+', '#']),
                    "federated.plugins: {plugin:?} is not a plugin name"
                );
            }
            let positive = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && v > 0.0);
            anyhow::ensure!(
                positive(f.dp_noise) && positive(f.dp_clip),
                "federated.dp_noise and dp_clip must be above 0"
            );
            anyhow::ensure!(
                f.dp_clip.is_none() || f.dp_noise.is_some(),
                "federated.dp_clip needs dp_noise"
            );
            anyhow::ensure!(
                f.max_wall_ms >= 1,
                "federated.max_wall_ms must be at least 1"
            );
        }
        Ok(())
    }

    /// The broker connection this configuration describes.
    pub fn broker_options(&self) -> anyhow::Result<edgeplug_mqtt::BrokerOptions> {
        Ok(edgeplug_mqtt::BrokerOptions {
            url: edgeplug_mqtt::BrokerUrl::parse(&self.broker)?,
            username: self.username.clone(),
            password: self.password_file.as_deref().map(read_secret).transpose()?,
            ca_file: self.ca_file.clone(),
        })
    }

    /// The registry this configuration describes.
    pub fn registry_options(&self) -> anyhow::Result<crate::oci::RegistryOptions> {
        Ok(crate::oci::RegistryOptions {
            host: self.registry.clone(),
            plain_http: self.registry_plain_http,
            username: self.registry_username.clone(),
            password: self
                .registry_password_file
                .as_deref()
                .map(read_secret)
                .transpose()?,
            ca_file: self.ca_file.clone(),
        })
    }

    pub fn pull_jitter(&self) -> Duration {
        Duration::from_millis(self.pull_jitter_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "broker = \"mqtt://127.0.0.1:1883\"\nclient_id = \"gw-1\"\n\
                           group = \"g1\"\nregistry = \"127.0.0.1:5000\"\n";

    #[test]
    fn defaults_and_relative_paths() {
        let base = Path::new("/etc/edgeplug");
        let config = FleetConfig::parse(MINIMAL, base).unwrap();
        assert_eq!(config.pull_jitter_ms, 10_000);
        assert_eq!(config.session_expiry_secs, 604_800);
        assert!(!config.registry_plain_http);
        let with_ca = format!("{MINIMAL}ca_file = \"ca.pem\"\n");
        let config = FleetConfig::parse(&with_ca, base).unwrap();
        assert_eq!(config.ca_file.unwrap(), base.join("ca.pem"));
        let federated = format!("{MINIMAL}[federated]\nplugins = [\"digits\"]\ndp_noise = 1.1\n");
        let f = FleetConfig::parse(&federated, base)
            .unwrap()
            .federated
            .unwrap();
        assert_eq!(f.plugins, ["digits"]);
        assert_eq!((f.dp_noise, f.dp_clip, f.max_steps), (Some(1.1), None, 200));
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        let base = Path::new(".");
        for (text, needle) in [
            (format!("{MINIMAL}colour = 1\n"), "colour"),
            (MINIMAL.replace("gw-1", "gw/1"), "client_id"),
            (MINIMAL.replace("g1", "g+"), "group"),
            (MINIMAL.replace("mqtt://", "http://"), "mqtt"),
            (MINIMAL.replace("127.0.0.1:5000", "host/repo"), "registry"),
            (
                format!("{MINIMAL}session_expiry_secs = 0\n"),
                "session_expiry_secs",
            ),
            (format!("{MINIMAL}password_file = \"p\"\n"), "username"),
            (
                format!("{MINIMAL}[federated]\nplugins = [\"a/b\"]\n"),
                "federated.plugins",
            ),
            (
                format!("{MINIMAL}[federated]\nplugins = []\ndp_noise = -1.0\n"),
                "dp_noise",
            ),
            (
                format!("{MINIMAL}[federated]\nplugins = []\ndp_clip = 1.0\n"),
                "dp_clip needs",
            ),
            (format!("{MINIMAL}[federated]\nplugin = []\n"), "plugin"),
        ] {
            let err = FleetConfig::parse(&text, base).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{needle}: {err:#}");
        }
    }
}

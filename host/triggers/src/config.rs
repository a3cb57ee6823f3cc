//! The `[mqtt]` table and the `[[triggers]]` array of the gateway configuration file.
//!
//! ```toml
//! [mqtt]                                 # the gateway's local broker
//! broker = "mqtt://127.0.0.1:1883"       # mqtt://HOST[:PORT] (1883) or mqtts://HOST[:PORT] (8883)
//! client_id = "gw-1-triggers"            # this gateway's MQTT client id (its persistent session)
//! # username = "gw-1"                    # broker credentials
//! # password_file = "/etc/edgeplug/mqtt-password"
//! # ca_file = "/etc/edgeplug/broker-ca.pem"  # PEM CA for mqtts (default: system roots)
//! # session_expiry_secs = 86400          # how long the broker keeps messages while we are away
//! # keep_alive_secs = 30
//! # in_flight = 32                       # messages being run at once (MQTT 5 receive maximum)
//! # max_message_kib = 8192               # larger messages are not delivered (MQTT 5 maximum
//! #                                      #   packet size; the broker drops them)
//! # stall_reconnect_secs = 30            # idle this long after traffic, with nothing running:
//! #                                      #   reconnect (0: never); see below
//!
//! [[triggers]]
//! topic = "devices/+/camera"             # the topic filter to subscribe to
//! plugin = "image-classifier"            # the plugin each message runs
//! # content_type = "image/jpeg"          # default: the message's MQTT 5 content type, else
//! #                                      #   application/octet-stream
//! # result_topic = "results/{device}/{plugin}"  # where results go; {device} {plugin}
//! #                                      #   {version} {gateway}; default: none
//! # device_level = 2                     # topic level (from 1) naming the device; default: the
//! #                                      #   filter's first '+'
//! # qos = 1                              # subscription QoS: 1 or 2 run each message at least
//! #                                      #   once; 0 may drop messages when saturated
//! # share = "classifiers"                # MQTT 5 shared subscription: gateways in one group
//! #                                      #   split the stream ($share/classifiers/devices/+/camera)
//! # format = "raw"                       # "edgex": the message is an EdgeX event, the plugin
//! #                                      #   runs on its Binary reading, the answer is an EdgeX
//! #                                      #   event (see `edgex`)
//! ```
//!
//! ```toml
//! [[cameras]]                            # an MJPEG-over-HTTP stream sampled into a plugin
//! name = "dock-3"                        # the device name in results
//! url = "http://10.0.0.7/video.mjpg"     # http:// (a camera on the local network)
//! plugin = "image-classifier"
//! # fps = 2.0                            # frames run per second at most; the others are
//! #                                      #   dropped and counted, never queued
//! # result_topic = "results/{device}/{plugin}"
//! # content_type = "image/jpeg"
//! # max_frame_kib = 4096
//! ```
//!
//! Why `stall_reconnect_secs`: a broker that loses count of the messages in flight to a
//! client stops sending it QoS 1 messages for good while its queue grows. mosquitto before
//! 2.0.13 did (Debian 12 ships 2.0.11): its in-flight bookkeeping assumed acknowledgements in
//! order, and these triggers acknowledged in completion order until they were made to keep
//! arrival order (see `acks`); its changelog lists more quota fixes (#2306). A fresh connection
//! resets the count, so, as a safety net, when nothing has arrived for this long after some
//! traffic and nothing is running, the triggers reconnect (the session persists: nothing is
//! lost). With a correct broker this costs one reconnection per burst of traffic followed by
//! silence.
//!
//! Like `[fleet]`, the gateway's `Config` keeps these tables opaque (the gateway crate knows
//! no MQTT) and this module parses them as strictly: an unknown key is an error. Relative paths
//! resolve against the configuration file's directory.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use crate::topic::{self, Template};

/// The parsed `[mqtt]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub broker: String,
    /// The MQTT client id: the broker keeps this session's undelivered and unacknowledged
    /// messages while the gateway is away. One per gateway (two clients with one id take the
    /// session from each other).
    pub client_id: String,
    pub username: Option<String>,
    /// A file whose first line is the broker password.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates trusted for `mqtts://` instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "defaults::session_expiry_secs")]
    pub session_expiry_secs: u32,
    #[serde(default = "defaults::keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// Messages of QoS 1 and 2 the broker may send before we acknowledge one (MQTT 5 receive
    /// maximum), which is also how many run at once: the back-pressure that keeps the rest
    /// queued at the broker.
    #[serde(default = "defaults::in_flight")]
    pub in_flight: u16,
    #[serde(default = "defaults::max_message_kib")]
    pub max_message_kib: u32,
    #[serde(default = "defaults::stall_reconnect_secs")]
    pub stall_reconnect_secs: u64,
}

/// One parsed `[[triggers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    pub topic: String,
    pub plugin: String,
    pub content_type: Option<String>,
    pub result_topic: Option<String>,
    pub device_level: Option<usize>,
    #[serde(default = "defaults::qos")]
    pub qos: u8,
    pub share: Option<String>,
    #[serde(default)]
    pub format: Format,
}

/// What a trigger's messages are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The plugin's request body, as is.
    #[default]
    Raw,
    /// An EdgeX Foundry event (see [`crate::edgex`]).
    Edgex,
}

mod defaults {
    pub fn session_expiry_secs() -> u32 {
        86_400
    }
    pub fn keep_alive_secs() -> u64 {
        30
    }
    pub fn in_flight() -> u16 {
        32
    }
    pub fn max_message_kib() -> u32 {
        8192
    }
    pub fn stall_reconnect_secs() -> u64 {
        30
    }
    pub fn fps() -> f64 {
        2.0
    }
    pub fn jpeg() -> String {
        "image/jpeg".into()
    }
    pub fn max_frame_kib() -> u32 {
        4096
    }
    pub fn qos() -> u8 {
        1
    }
}

/// One parsed `[[cameras]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub name: String,
    pub url: String,
    pub plugin: String,
    #[serde(default = "defaults::fps")]
    pub fps: f64,
    pub result_topic: Option<String>,
    #[serde(default = "defaults::jpeg")]
    pub content_type: String,
    #[serde(default = "defaults::max_frame_kib")]
    pub max_frame_kib: u32,
}

/// A camera ready to run.
#[derive(Debug, Clone)]
pub struct Camera {
    pub config: CameraConfig,
    pub result_topic: Option<Template>,
}

impl Camera {
    fn new(config: CameraConfig) -> anyhow::Result<Camera> {
        anyhow::ensure!(
            !config.name.is_empty() && !config.name.contains(['/', '+', '#']),
            "name {:?} must be a topic level (no '/', '+' or '#')",
            config.name
        );
        anyhow::ensure!(
            config.url.starts_with("http://"),
            "url {:?}: only http:// streams are read (a camera on the local network)",
            config.url
        );
        config
            .url
            .parse::<hyper::Uri>()
            .with_context(|| format!("url {:?}", config.url))?;
        anyhow::ensure!(!config.plugin.is_empty(), "plugin must not be empty");
        anyhow::ensure!(
            config.fps > 0.0 && config.fps <= 120.0,
            "fps must be above 0 and at most 120"
        );
        anyhow::ensure!(
            (1..=64 * 1024).contains(&config.max_frame_kib),
            "max_frame_kib must be 1 to 65536"
        );
        let result_topic = config
            .result_topic
            .as_deref()
            .map(Template::parse)
            .transpose()
            .context("result_topic")?;
        Ok(Camera {
            config,
            result_topic,
        })
    }
}

/// A trigger ready to run: its configuration, checked, with the derived parts.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub config: TriggerConfig,
    /// What is sent in SUBSCRIBE: the filter, or `$share/GROUP/filter`.
    pub subscription: String,
    /// The topic level (from 0) naming the device, if any.
    pub device_level: Option<usize>,
    pub result_topic: Option<Template>,
}

/// Everything the triggers need from the configuration file.
#[derive(Debug, Clone)]
pub struct TriggersConfig {
    pub mqtt: MqttConfig,
    pub triggers: Vec<Trigger>,
    pub cameras: Vec<Camera>,
}

impl TriggersConfig {
    /// Parses the gateway configuration's opaque `[mqtt]`, `[[triggers]]` and `[[cameras]]`:
    /// `None` when there are neither triggers nor cameras. Those without `[mqtt]` (where
    /// results go), or `[mqtt]` without either, is an error (one of them is surely a mistake).
    pub fn from_gateway(
        mqtt: Option<&toml::Table>,
        triggers: &[toml::Table],
        cameras: &[toml::Table],
        base: &Path,
    ) -> anyhow::Result<Option<TriggersConfig>> {
        let mqtt = match (mqtt, triggers.is_empty() && cameras.is_empty()) {
            (None, true) => return Ok(None),
            (None, false) => {
                anyhow::bail!("[[triggers]] and [[cameras]] need an [mqtt] table naming the broker")
            }
            (Some(_), true) => {
                anyhow::bail!(
                    "[mqtt] is set but there are no [[triggers]] or [[cameras]] to use it"
                )
            }
            (Some(table), false) => table,
        };
        let mut mqtt: MqttConfig = toml::Value::Table(mqtt.clone())
            .try_into()
            .context("invalid [mqtt] configuration")?;
        for path in [mqtt.password_file.as_mut(), mqtt.ca_file.as_mut()]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        mqtt.validate().context("invalid [mqtt] configuration")?;
        let triggers = triggers
            .iter()
            .enumerate()
            .map(|(i, table)| {
                let config: TriggerConfig = toml::Value::Table(table.clone())
                    .try_into()
                    .with_context(|| format!("invalid [[triggers]] entry {}", i + 1))?;
                Trigger::new(config)
                    .with_context(|| format!("invalid [[triggers]] entry {}", i + 1))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Each message runs one trigger, found by its topic: two filters that one topic can
        // match would make that choice depend on their order.
        for (i, a) in triggers.iter().enumerate() {
            for b in &triggers[i + 1..] {
                anyhow::ensure!(
                    !topic::overlap(&a.config.topic, &b.config.topic),
                    "[[triggers]] topics {:?} and {:?} overlap: some topic matches both",
                    a.config.topic,
                    b.config.topic
                );
            }
        }
        let cameras = cameras
            .iter()
            .enumerate()
            .map(|(i, table)| {
                let config: CameraConfig = toml::Value::Table(table.clone())
                    .try_into()
                    .with_context(|| format!("invalid [[cameras]] entry {}", i + 1))?;
                Camera::new(config).with_context(|| format!("invalid [[cameras]] entry {}", i + 1))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some(TriggersConfig {
            mqtt,
            triggers,
            cameras,
        }))
    }
}

impl MqttConfig {
    fn validate(&self) -> anyhow::Result<()> {
        edgeplug_mqtt::BrokerUrl::parse(&self.broker)?;
        anyhow::ensure!(
            !self.client_id.is_empty()
                && self.client_id.len() <= 64
                && !self.client_id.contains(['/', '+', '#']),
            "client_id must be 1-64 characters without '/', '+' or '#'"
        );
        anyhow::ensure!(
            self.username.is_some() || self.password_file.is_none(),
            "password_file needs username"
        );
        anyhow::ensure!(
            self.session_expiry_secs >= 1,
            "session_expiry_secs must be at least 1 (0 would drop the session, and with it every message sent while the gateway is away)"
        );
        anyhow::ensure!(
            (5..=3600).contains(&self.keep_alive_secs),
            "keep_alive_secs must be 5 to 3600"
        );
        anyhow::ensure!(
            (1..=1024).contains(&self.in_flight),
            "in_flight must be 1 to 1024"
        );
        anyhow::ensure!(
            (1..=256 * 1024).contains(&self.max_message_kib),
            "max_message_kib must be 1 to 262144"
        );
        anyhow::ensure!(
            self.stall_reconnect_secs == 0 || self.stall_reconnect_secs >= 5,
            "stall_reconnect_secs must be 0 (never) or at least 5"
        );
        Ok(())
    }

    /// The broker connection this table describes.
    pub fn broker_options(&self) -> anyhow::Result<edgeplug_mqtt::BrokerOptions> {
        Ok(edgeplug_mqtt::BrokerOptions {
            url: edgeplug_mqtt::BrokerUrl::parse(&self.broker)?,
            username: self.username.clone(),
            password: self
                .password_file
                .as_deref()
                .map(edgeplug_mqtt::read_secret)
                .transpose()?,
            ca_file: self.ca_file.clone(),
        })
    }
}

impl Trigger {
    fn new(config: TriggerConfig) -> anyhow::Result<Trigger> {
        topic::check_filter(&config.topic).context("topic")?;
        anyhow::ensure!(
            !config.topic.starts_with('$'),
            "topic {:?}: use `share = \"GROUP\"` for a shared subscription, not a $-topic",
            config.topic
        );
        anyhow::ensure!(!config.plugin.is_empty(), "plugin must not be empty");
        anyhow::ensure!(config.qos <= 2, "qos must be 0, 1 or 2");
        if let Some(content_type) = &config.content_type {
            anyhow::ensure!(
                content_type.contains('/') && !content_type.contains(['\r', '\n']),
                "content_type {content_type:?} is not a media type"
            );
        }
        let levels: Vec<&str> = config.topic.split('/').collect();
        let device_level = match config.device_level {
            Some(0) => anyhow::bail!("device_level counts from 1"),
            Some(level) => {
                anyhow::ensure!(
                    levels.get(level - 1).is_some_and(|l| *l == "+"),
                    "device_level {level} is not a '+' level of {:?}",
                    config.topic
                );
                Some(level - 1)
            }
            None => levels.iter().position(|l| *l == "+"),
        };
        let subscription = match &config.share {
            Some(group) => {
                anyhow::ensure!(
                    !group.is_empty() && !group.contains(['/', '+', '#']),
                    "share {group:?} must be a name without '/', '+' or '#'"
                );
                format!("$share/{group}/{}", config.topic)
            }
            None => config.topic.clone(),
        };
        let result_topic = config
            .result_topic
            .as_deref()
            .map(|text| {
                let template = Template::parse(text).context("result_topic")?;
                anyhow::ensure!(
                    device_level.is_some() || !template.uses_device(),
                    "result_topic uses {{device}} but the topic filter has no '+' level to take it from"
                );
                // A result that matched its own trigger would run the plugin on its own
                // output, for ever.
                let sample = template.render(&topic::Fields {
                    device: "device",
                    plugin: &config.plugin,
                    version: "0.0.0",
                    gateway: "gateway",
                });
                anyhow::ensure!(
                    !topic::matches(&config.topic, &sample),
                    "result_topic {text:?} would match the trigger's own topic {:?}",
                    config.topic
                );
                Ok(template)
            })
            .transpose()?;
        Ok(Trigger {
            config,
            subscription,
            device_level,
            result_topic,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(mqtt: &str, triggers: &[&str]) -> anyhow::Result<Option<TriggersConfig>> {
        let mqtt: Option<toml::Table> = (!mqtt.is_empty()).then(|| mqtt.parse().unwrap());
        let triggers: Vec<toml::Table> = triggers.iter().map(|t| t.parse().unwrap()).collect();
        TriggersConfig::from_gateway(mqtt.as_ref(), &triggers, &[], Path::new("/etc/edgeplug"))
    }

    const MQTT: &str = "broker = \"mqtt://127.0.0.1:1883\"\nclient_id = \"gw-1\"\n";
    const TRIGGER: &str = "topic = \"devices/+/camera\"\nplugin = \"digits\"\n\
                           result_topic = \"results/{device}/{plugin}\"\n";

    #[test]
    fn defaults_derived_parts_and_relative_paths() {
        assert!(parse("", &[]).unwrap().is_none());
        let with_file = format!("{MQTT}username = \"u\"\npassword_file = \"pw\"\n");
        let config = parse(&with_file, &[TRIGGER]).unwrap().unwrap();
        assert_eq!(
            config.mqtt.password_file.as_deref(),
            Some(Path::new("/etc/edgeplug/pw"))
        );
        assert_eq!(config.mqtt.in_flight, 32);
        let trigger = &config.triggers[0];
        assert_eq!(trigger.device_level, Some(1));
        assert_eq!(trigger.subscription, "devices/+/camera");
        assert_eq!(trigger.config.qos, 1);
        let edgex = format!("{TRIGGER}format = \"edgex\"\n");
        assert_eq!(
            parse(MQTT, &[&edgex]).unwrap().unwrap().triggers[0]
                .config
                .format,
            Format::Edgex
        );
        let shared = format!("{TRIGGER}share = \"pool\"\n");
        let config = parse(MQTT, &[&shared]).unwrap().unwrap();
        assert_eq!(
            config.triggers[0].subscription,
            "$share/pool/devices/+/camera"
        );
    }

    #[test]
    fn mistakes_are_refused_with_their_name() {
        for (mqtt, trigger, needle) in [
            ("", TRIGGER.to_string(), "[mqtt]"),
            (MQTT, format!("{TRIGGER}colour = 1\n"), "colour"),
            (
                MQTT,
                TRIGGER.replace("devices/+/camera", "devices/#/x"),
                "'#'",
            ),
            (
                MQTT,
                TRIGGER.replace("devices/+/camera", "$share/g/x"),
                "share",
            ),
            (MQTT, format!("{TRIGGER}qos = 3\n"), "qos"),
            (MQTT, format!("{TRIGGER}device_level = 1\n"), "device_level"),
            (MQTT, TRIGGER.replace("{plugin}", "{colour}"), "colour"),
            (
                MQTT,
                TRIGGER.replace("results/{device}/{plugin}", "devices/{device}/camera"),
                "own topic",
            ),
            (
                MQTT,
                TRIGGER.replace("devices/+/camera", "devices/camera"),
                "{device}",
            ),
            (MQTT, format!("{TRIGGER}share = \"a/b\"\n"), "share"),
            (MQTT, format!("{TRIGGER}format = \"xml\"\n"), "format"),
        ] {
            let err = parse(mqtt, &[&trigger]).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{needle}: {err:#}");
        }
        let err = parse(&format!("{MQTT}in_flight = 0\n"), &[TRIGGER]).unwrap_err();
        assert!(format!("{err:#}").contains("in_flight"), "{err:#}");
        let other = TRIGGER.replace("devices/+/camera", "devices/cam-1/+");
        let err = parse(MQTT, &[TRIGGER, &other]).unwrap_err();
        assert!(format!("{err:#}").contains("overlap"), "{err:#}");
        let apart = TRIGGER.replace("devices/+/camera", "devices/+/sensor");
        assert_eq!(
            parse(MQTT, &[TRIGGER, &apart])
                .unwrap()
                .unwrap()
                .triggers
                .len(),
            2
        );
        let err = parse(MQTT, &[]).unwrap_err();
        assert!(format!("{err:#}").contains("no [[triggers]]"), "{err:#}");
        let camera = |entry: &str| -> anyhow::Result<Option<TriggersConfig>> {
            let table: toml::Table = entry.parse().unwrap();
            let mqtt: toml::Table = MQTT.parse().unwrap();
            TriggersConfig::from_gateway(Some(&mqtt), &[], &[table], Path::new("."))
        };
        const CAMERA: &str =
            "name = \"dock-3\"\nurl = \"http://10.0.0.7/video.mjpg\"\nplugin = \"p\"\n";
        assert_eq!(camera(CAMERA).unwrap().unwrap().cameras[0].config.fps, 2.0);
        for (entry, needle) in [
            (format!("{CAMERA}fps = 0.0\n"), "fps"),
            (format!("{CAMERA}colour = 1\n"), "colour"),
            (CAMERA.replace("http://", "rtsp://"), "http://"),
            (CAMERA.replace("dock-3", "dock/3"), "name"),
        ] {
            let err = camera(&entry).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{needle}: {err:#}");
        }
    }
}

//! MQTT triggers: the gateway subscribes to its local broker and runs a plugin on each
//! message, so devices that speak MQTT (cameras, sensors) reach plugins without HTTP.
//!
//! - [`config`]: the `[mqtt]` table and `[[triggers]]` entries of the gateway configuration.
//! - [`topic`]: topic filters, matching, the device's level, result topic templates.
//! - [`edgex`]: EdgeX Foundry events in and out (`format = "edgex"`).
//! - [`envelope`]: the JSON record published for each message, and its deduplication id.
//! - [`runner`]: the session, acknowledgement after publication, back-pressure; `message`
//!   one message's run and publication.
//! - [`acks`]: packet ids held until acknowledged, so a resent message is neither lost nor
//!   acknowledged twice.
//! - [`bridge`]: the mosquitto bridge that stores results and forwards them to the center.
//! - [`camera`] and [`mjpeg`]: MJPEG camera streams sampled into plugins (`[[cameras]]`).
//! - [`metrics`]: the `edgeplug_trigger_*` families in the gateway's `/metrics`.
//!
//! A trigger runs its plugin through the gateway's own dispatch (`edgeplug_gateway::lanes`),
//! so a message meets the same limits, demotion and per-version metrics as an HTTP request,
//! and a hot swap reaches triggers and HTTP at the same moment. MQTT 5 request/response
//! works too: a message with a response topic gets its record there, with its correlation
//! data.

pub mod acks;
pub mod bridge;
pub mod camera;
pub mod config;
pub mod edgex;
pub mod envelope;
mod message;
pub mod metrics;
pub mod mjpeg;
pub mod runner;
pub mod topic;

use std::path::Path;
use std::sync::Arc;

pub use config::TriggersConfig;
pub use runner::Triggers;

/// Starts the triggers if the gateway's configuration has `[[triggers]]`; relative paths in
/// `[mqtt]` resolve against `config_dir`.
pub fn start_if_configured(
    gateway: Arc<edgeplug_gateway::Gateway>,
    config_dir: &Path,
) -> anyhow::Result<Option<Triggers>> {
    let Some(config) = TriggersConfig::from_gateway(
        gateway.config.mqtt.as_ref(),
        &gateway.config.triggers,
        &gateway.config.cameras,
        config_dir,
    )?
    else {
        return Ok(None);
    };
    for trigger in &config.triggers {
        if gateway.registry.get(&trigger.config.plugin).is_none() {
            // Not an error: the plugin may come with the next push; until then each message
            // gets a `plugin-not-found` result.
            tracing::warn!(plugin = %trigger.config.plugin, topic = %trigger.config.topic, "a trigger's plugin is not active");
        }
    }
    Triggers::start(gateway, config).map(Some)
}

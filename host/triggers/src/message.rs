//! One message's work: run its plugin (waiting its turn for a permit), build its record,
//! publish it to the trigger's result topic and to the device's response topic. Whether it
//! may then be acknowledged is the runner's business.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

use edgeplug_gateway::lanes::{self, DispatchError};
use edgeplug_runtime::InferRequest;

use crate::config::Format;
use crate::edgex;
use crate::envelope::{self, Answered, Output};
use crate::runner::{SATURATED_RETRY_MAX, Shared};
use crate::topic;

impl Shared {
    /// Runs one message and publishes its result(s): whether it may be acknowledged.
    pub(crate) async fn run(&self, index: usize, publish: Publish) -> bool {
        let started = Instant::now();
        let received_unix_ms = envelope::since_epoch().as_millis() as u64;
        let trigger = &self.config.triggers[index];
        let counters = &self.metrics.per_trigger[index];
        let topic_name = String::from_utf8_lossy(&publish.topic).into_owned();
        let properties = publish.properties.clone().unwrap_or_default();
        let message_id = properties
            .user_properties
            .iter()
            .find(|(key, _)| key == "message-id")
            .map(|(_, value)| value.as_str());
        let mut id = envelope::result_id(
            &topic_name,
            &publish.payload,
            properties.correlation_data.as_deref(),
            message_id,
        );
        let mut device = trigger
            .device_level
            .and_then(|level| topic::level(&topic_name, level))
            .map(str::to_string);
        let mut content_type = trigger
            .config
            .content_type
            .clone()
            .or_else(|| properties.content_type.clone())
            .unwrap_or_else(|| "application/octet-stream".to_string());
        let mut body = publish.payload.to_vec();
        // An EdgeX event names its device, its id and the reading to run on.
        let edgex = match trigger.config.format {
            Format::Raw => None,
            Format::Edgex => Some(edgex::decode(&publish.payload)),
        };
        if let Some(Ok(input)) = &edgex {
            if let Some(event_id) = &input.event_id {
                id = event_id.clone();
            }
            device = Some(input.device.clone());
            content_type = input.content_type.clone();
            body = input.body.clone();
        }
        let ran = match &edgex {
            Some(Err(reason)) => Some((
                None,
                Err((
                    "invalid-argument".to_string(),
                    format!("not an EdgeX event with a Binary reading: {reason}"),
                )),
            )),
            _ => {
                let saturated = &self.metrics.per_trigger[index].saturated_waits;
                self.invoke(
                    &trigger.config.plugin,
                    saturated,
                    content_type,
                    body,
                    started,
                )
                .await
            }
        };
        let Some((version, result)) = ran else {
            // Stopping while the plugin was saturated: left unacknowledged for the next start.
            return false;
        };
        let device = device.as_deref();
        let output = match &result {
            Ok(response) => {
                counters.answered.fetch_add(1, Ordering::Relaxed);
                Output::Body {
                    content_type: &response.content_type,
                    body: &response.body,
                }
            }
            Err((code, message)) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                Output::Error { code, message }
            }
        };
        let gateway_id = &self.config.mqtt.client_id;
        let record = envelope::record(
            &Answered {
                id: &id,
                gateway: gateway_id,
                device,
                topic: &topic_name,
                plugin: &trigger.config.plugin,
                version: version.as_deref(),
                received_unix_ms,
                latency_ms: started.elapsed().as_secs_f64() * 1e3,
            },
            &output,
        );
        // Answered in kind: an EdgeX event carrying the record.
        let record = match &edgex {
            Some(Ok(input)) => {
                let now_ns = envelope::since_epoch().as_nanos() as u64;
                edgex::answer(input, &trigger.config.plugin, &id, &record, now_ns)
            }
            _ => record,
        };
        let mut published = true;
        if let Some(template) = &trigger.result_topic {
            let result_topic = template.render(&topic::Fields {
                device: device.unwrap_or_default(),
                plugin: &trigger.config.plugin,
                version: version.as_deref().unwrap_or("none"),
                gateway: gateway_id,
            });
            published &= self.publish(result_topic, record.clone(), &id, None).await;
        }
        if let Some(response_topic) = &properties.response_topic {
            match check_response_topic(response_topic) {
                Ok(()) => {
                    published &= self
                        .publish(
                            response_topic.clone(),
                            record,
                            &id,
                            properties.correlation_data.clone(),
                        )
                        .await;
                }
                Err(e) => tracing::warn!(topic = %topic_name, error = %e, "response topic refused"),
            }
        }
        published
    }

    /// Runs the plugin, waiting while it is saturated. `None` if the gateway began stopping
    /// meanwhile; else the version that ran (if one did) and its answer or the failure's code
    /// and message.
    pub(crate) async fn invoke(
        &self,
        name: &str,
        saturated_waits: &std::sync::atomic::AtomicU64,
        content_type: String,
        body: Vec<u8>,
        started: Instant,
    ) -> Option<(
        Option<String>,
        Result<edgeplug_runtime::InferResponse, (String, String)>,
    )> {
        let mut wait = Duration::from_millis(2);
        loop {
            // Looked up on every try: a hot swap may have happened while this one waited.
            let Some(plugin) = self.gateway.registry.route(name) else {
                return Some((
                    None,
                    Err((
                        "plugin-not-found".into(),
                        format!("no plugin named {name:?} is active"),
                    )),
                ));
            };
            let version = plugin.version.to_string();
            let limit = plugin.plugin.shared().limits().request_bytes;
            if body.len() as u64 > limit as u64 {
                return Some((
                    Some(version),
                    Err((
                        "request-too-large".into(),
                        format!(
                            "the message is {} bytes; {name} takes at most {limit}",
                            body.len()
                        ),
                    )),
                ));
            }
            let request = InferRequest {
                content_type: content_type.clone(),
                body: body.clone(),
                tensors: Vec::new(),
            };
            match lanes::dispatch_queued(&self.gateway, plugin, request, started).await {
                Ok(response) => return Some((Some(version), Ok(response))),
                Err(DispatchError::Failed(e)) => {
                    return Some((Some(version), Err((e.code().to_string(), e.message()))));
                }
                Err(DispatchError::Saturated(_)) => {
                    saturated_waits.fetch_add(1, Ordering::Relaxed);
                    if *self.stopping.borrow() {
                        return None;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(SATURATED_RETRY_MAX);
                }
            }
        }
    }

    /// Publishes a result record, QoS 1. False if the client has stopped.
    pub(crate) async fn publish(
        &self,
        topic: String,
        record: Vec<u8>,
        id: &str,
        correlation: Option<bytes::Bytes>,
    ) -> bool {
        let properties = PublishProperties {
            content_type: Some("application/json".into()),
            correlation_data: correlation,
            user_properties: vec![("id".into(), id.to_string())],
            ..Default::default()
        };
        match self
            .client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, record, properties)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot publish a trigger's result; the message stays with the broker");
                false
            }
        }
    }
}

/// A device's response topic is where the gateway publishes on its behalf: never a
/// `$`-topic, never edgeplug's own fleet topics, never a wildcard.
fn check_response_topic(name: &str) -> anyhow::Result<()> {
    topic::check_name(name)?;
    anyhow::ensure!(
        !name.starts_with('$') && !name.starts_with("edgeplug/"),
        "{name:?}: responses are not published to $-topics or under edgeplug/"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_topics_stay_out_of_reserved_space() {
        assert!(check_response_topic("replies/cam-1/42").is_ok());
        for bad in ["$SYS/x", "edgeplug/fleet/g/plugins/digits", "replies/+", ""] {
            assert!(check_response_topic(bad).is_err(), "{bad:?}");
        }
    }
}

//! What a trigger publishes for each message: one JSON record that says which message it
//! answers (an id the center can drop duplicates by), who answered (gateway, plugin, version)
//! and the plugin's output or error.
//!
//! ```json
//! {"id": "3f0c…", "gateway": "gw-1", "device": "cam-7", "topic": "devices/cam-7/camera",
//!  "plugin": "digits", "version": "1.0.0", "received_unix_ms": 1796400000000,
//!  "latency_ms": 1.9, "content_type": "application/json", "output": {"digit": 7}}
//! ```
//!
//! `output` is the plugin's body when it is JSON; any other body is `output_base64`. A failed
//! request has `error: {code, message}` instead (`version` is absent when no version ran).

use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

/// The id of the result of a message: the device's own `message-id` user property if it sent
/// one, else a hash of the topic, the correlation data and the payload. A broker's redelivery
/// of a message, or a second gateway's run of it, gives the same id; so does a device sending
/// the very same bytes twice on one topic, which is why a device that may do so on purpose
/// sends a `message-id`.
pub fn result_id(
    topic: &str,
    payload: &[u8],
    correlation: Option<&[u8]>,
    message_id: Option<&str>,
) -> String {
    if let Some(id) = message_id.filter(|id| !id.is_empty() && id.len() <= 128) {
        return id.to_string();
    }
    let mut hash = Sha256::new();
    for part in [topic.as_bytes(), correlation.unwrap_or_default(), payload] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hex::encode(&hash.finalize()[..16])
}

/// The time since the Unix epoch, what records carry (zero if the clock is before it).
pub fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Who answered which message.
#[derive(Debug, Clone)]
pub struct Answered<'a> {
    pub id: &'a str,
    pub gateway: &'a str,
    pub device: Option<&'a str>,
    pub topic: &'a str,
    pub plugin: &'a str,
    pub version: Option<&'a str>,
    pub received_unix_ms: u64,
    pub latency_ms: f64,
}

/// What the plugin said.
#[derive(Debug, Clone)]
pub enum Output<'a> {
    Body {
        content_type: &'a str,
        body: &'a [u8],
    },
    Error {
        code: &'a str,
        message: &'a str,
    },
}

/// The record's JSON bytes.
pub fn record(answered: &Answered<'_>, output: &Output<'_>) -> Vec<u8> {
    let mut record = Map::new();
    record.insert("id".into(), json!(answered.id));
    record.insert("gateway".into(), json!(answered.gateway));
    if let Some(device) = answered.device {
        record.insert("device".into(), json!(device));
    }
    record.insert("topic".into(), json!(answered.topic));
    record.insert("plugin".into(), json!(answered.plugin));
    if let Some(version) = answered.version {
        record.insert("version".into(), json!(version));
    }
    record.insert("received_unix_ms".into(), json!(answered.received_unix_ms));
    // Microsecond resolution is plenty and keeps the record short.
    let latency = (answered.latency_ms * 1000.0).round() / 1000.0;
    record.insert("latency_ms".into(), json!(latency));
    match output {
        Output::Body { content_type, body } => {
            record.insert("content_type".into(), json!(content_type));
            match is_json(content_type)
                .then(|| serde_json::from_slice::<Value>(body).ok())
                .flatten()
            {
                Some(value) => record.insert("output".into(), value),
                None => record.insert(
                    "output_base64".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(body)),
                ),
            };
        }
        Output::Error { code, message } => {
            record.insert("error".into(), json!({"code": code, "message": message}));
        }
    }
    serde_json::to_vec(&Value::Object(record)).unwrap_or_default()
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered() -> Answered<'static> {
        Answered {
            id: "abc",
            gateway: "gw-1",
            device: Some("cam-1"),
            topic: "devices/cam-1/camera",
            plugin: "digits",
            version: Some("1.0.0"),
            received_unix_ms: 5,
            latency_ms: 1.23456,
        }
    }

    #[test]
    fn ids_are_stable_and_tell_messages_apart() {
        let a = result_id("t/1", b"x", None, None);
        assert_eq!(a, result_id("t/1", b"x", None, None));
        assert_eq!(a.len(), 32);
        assert_ne!(a, result_id("t/2", b"x", None, None));
        assert_ne!(a, result_id("t/1", b"y", None, None));
        assert_ne!(a, result_id("t/1", b"x", Some(b"c"), None));
        // Length prefixes: moving a byte from one part to the next changes the id.
        assert_ne!(
            result_id("t/1", b"x", Some(b"ab"), None),
            result_id("t/1", b"bx", Some(b"a"), None)
        );
        assert_eq!(result_id("t/1", b"x", None, Some("m-7")), "m-7");
        assert_eq!(result_id("t/1", b"x", None, Some("")), a);
    }

    #[test]
    fn json_outputs_are_embedded_and_others_base64() {
        let json_record: Value = serde_json::from_slice(&record(
            &answered(),
            &Output::Body {
                content_type: "application/json; charset=utf-8",
                body: br#"{"digit":7}"#,
            },
        ))
        .unwrap();
        assert_eq!(json_record["output"]["digit"], 7);
        assert_eq!(json_record["version"], "1.0.0");
        assert_eq!(json_record["latency_ms"], 1.235);
        let binary: Value = serde_json::from_slice(&record(
            &answered(),
            &Output::Body {
                content_type: "application/octet-stream",
                body: &[0xff, 0],
            },
        ))
        .unwrap();
        assert_eq!(binary["output_base64"], "/wA=");
        assert!(binary.get("output").is_none());
        // A body that claims JSON but is not stays intact, as base64.
        let broken: Value = serde_json::from_slice(&record(
            &answered(),
            &Output::Body {
                content_type: "application/json",
                body: b"{nope",
            },
        ))
        .unwrap();
        assert_eq!(broken["output_base64"], "e25vcGU=");
        let failed: Value = serde_json::from_slice(&record(
            &Answered {
                version: None,
                ..answered()
            },
            &Output::Error {
                code: "plugin-not-found",
                message: "no plugin",
            },
        ))
        .unwrap();
        assert_eq!(failed["error"]["code"], "plugin-not-found");
        assert!(failed.get("version").is_none());
    }
}

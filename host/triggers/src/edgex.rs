//! EdgeX Foundry's events in and out, so that an EdgeX deployment feeds plugins over its MQTT
//! message bus (`edgex/events/device/...`) without a custom bridge.
//!
//! In: an EdgeX event (DTO `Event`: `id`, `deviceName`, `profileName`, `sourceName`, `origin`,
//! `readings`), bare, inside an `AddEventRequest` (`{"apiVersion", "requestId", "event"}`), or
//! inside the message bus's `MessageEnvelope` (`{"apiVersion", "correlationID", "requestID",
//! "contentType", "payload"}`, the payload either base64, as EdgeX 3.0 writes it, or plain JSON,
//! as 3.1 does by default). The plugin runs on the first reading of `valueType` `Binary`: its
//! `binaryValue` (base64) with its `mediaType` as the content type. The event's `id` is the
//! result's id (EdgeX ids are unique), its `deviceName` the device.
//!
//! Out, in kind: an event from the same device with one reading of `valueType` `Object` whose
//! `objectValue` is the trigger's record (see `envelope`), `sourceName` and `resourceName` the
//! plugin, wrapped the way the input was (bare, request, or envelope with the same
//! correlation id and payload encoding). Its ids are UUIDs derived from the input's, so a
//! redelivered event gets the same answer ids.

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// How the input was wrapped, to answer the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wrapping {
    Bare,
    AddEventRequest,
    Envelope {
        base64_payload: bool,
        correlation_id: Option<String>,
    },
}

/// What the plugin runs on, from one EdgeX event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgexInput {
    pub event_id: Option<String>,
    pub device: String,
    pub profile: String,
    pub content_type: String,
    pub body: Vec<u8>,
    wrapping: Wrapping,
}

fn base64_decode(what: &str, text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("{what} is not base64: {e}"))
}

/// Reads an EdgeX event; the error says what is wrong with it.
pub fn decode(payload: &[u8]) -> Result<EdgexInput, String> {
    let message: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let (wrapping, inner) = match message.get("payload") {
        Some(Value::String(encoded)) => {
            let bytes = base64_decode("the envelope's payload", encoded)?;
            let inner: Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("the envelope's payload is not JSON: {e}"))?;
            (envelope_wrapping(&message, true), inner)
        }
        Some(inner @ Value::Object(_)) => (envelope_wrapping(&message, false), inner.clone()),
        Some(_) => return Err("the envelope's payload is neither base64 nor an object".into()),
        None => (Wrapping::Bare, message),
    };
    let (wrapping, event) = match inner.get("event") {
        Some(event) if wrapping == Wrapping::Bare => (Wrapping::AddEventRequest, event.clone()),
        Some(event) => (wrapping, event.clone()),
        None => (wrapping, inner),
    };
    let text = |field: &str| event.get(field).and_then(Value::as_str).map(str::to_string);
    let device = text("deviceName").ok_or("the event has no deviceName")?;
    let readings = event
        .get("readings")
        .and_then(Value::as_array)
        .ok_or("the event has no readings")?;
    let reading = readings
        .iter()
        .find(|r| {
            r.get("valueType")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("binary"))
        })
        .ok_or("the event has no Binary reading")?;
    let body = base64_decode(
        "the reading's binaryValue",
        reading
            .get("binaryValue")
            .and_then(Value::as_str)
            .ok_or("the Binary reading has no binaryValue")?,
    )?;
    let content_type = reading
        .get("mediaType")
        .and_then(Value::as_str)
        .filter(|m| m.contains('/'))
        .unwrap_or("application/octet-stream")
        .to_string();
    Ok(EdgexInput {
        event_id: text("id"),
        device,
        profile: text("profileName").unwrap_or_default(),
        content_type,
        body,
        wrapping,
    })
}

fn envelope_wrapping(envelope: &Value, base64_payload: bool) -> Wrapping {
    Wrapping::Envelope {
        base64_payload,
        correlation_id: envelope
            .get("correlationID")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

/// A UUID (version 5 layout) derived from `seed`.
fn derived_uuid(seed: &str) -> String {
    let hash = Sha256::digest(seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&hash[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The answer to `input`: an event carrying `record` (the trigger's JSON record), wrapped as
/// the input was. `result_id` is the record's id; `origin_ns` the answer's time.
pub fn answer(
    input: &EdgexInput,
    plugin: &str,
    result_id: &str,
    record: &[u8],
    origin_ns: u64,
) -> Vec<u8> {
    let record: Value = serde_json::from_slice(record).unwrap_or(Value::Null);
    let event_id = derived_uuid(&format!("{result_id}/{plugin}/event"));
    let event = json!({
        "apiVersion": "v3",
        "id": event_id,
        "deviceName": input.device,
        "profileName": input.profile,
        "sourceName": plugin,
        "origin": origin_ns,
        "readings": [{
            "id": derived_uuid(&format!("{result_id}/{plugin}/reading")),
            "origin": origin_ns,
            "deviceName": input.device,
            "resourceName": plugin,
            "profileName": input.profile,
            "valueType": "Object",
            "objectValue": record,
        }],
    });
    let request = json!({
        "apiVersion": "v3",
        "requestId": derived_uuid(&format!("{result_id}/{plugin}/request")),
        "event": event,
    });
    let out = match &input.wrapping {
        Wrapping::Bare => event,
        Wrapping::AddEventRequest => request,
        Wrapping::Envelope {
            base64_payload,
            correlation_id,
        } => {
            let payload = if *base64_payload {
                json!(base64::engine::general_purpose::STANDARD.encode(request.to_string()))
            } else {
                request
            };
            json!({
                "apiVersion": "v3",
                "correlationID": correlation_id.clone().unwrap_or_else(|| derived_uuid(result_id)),
                "requestID": derived_uuid(&format!("{result_id}/{plugin}/envelope")),
                "errorCode": 0,
                "contentType": "application/json",
                "payload": payload,
            })
        }
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event as EdgeX's device services write it (core-contracts v3 `Event` DTO).
    fn event(image: &[u8]) -> Value {
        json!({
            "apiVersion": "v3",
            "id": "6a3b2b1e-6f37-4b39-9f47-0f0cbe1f8d2a",
            "deviceName": "camera-7",
            "profileName": "onvif-camera",
            "sourceName": "snapshot",
            "origin": 1_796_400_000_000_000_000u64,
            "readings": [
                {"id": "0b0e5a59-3c41-4d7c-8c2e-3e1f7f0d9a11", "origin": 1, "deviceName": "camera-7",
                 "resourceName": "temperature", "profileName": "onvif-camera",
                 "valueType": "Float32", "value": "21.5"},
                {"id": "3c1f1d2e-9a8b-4c7d-8e6f-5a4b3c2d1e0f", "origin": 1, "deviceName": "camera-7",
                 "resourceName": "snapshot", "profileName": "onvif-camera",
                 "valueType": "Binary", "mediaType": "image/jpeg",
                 "binaryValue": base64::engine::general_purpose::STANDARD.encode(image)},
            ],
        })
    }

    #[test]
    fn every_wrapping_gives_the_binary_reading_and_is_answered_in_kind() {
        let image = b"\xff\xd8\xff\xe0 a jpeg";
        let bare = event(image);
        let request = json!({"apiVersion": "v3", "requestId": "r-1", "event": bare});
        let enveloped_json = json!({"apiVersion": "v3", "correlationID": "c-9", "requestID": "q",
            "contentType": "application/json", "payload": request});
        let enveloped_base64 = json!({"apiVersion": "v3", "correlationID": "c-9",
            "contentType": "application/json",
            "payload": base64::engine::general_purpose::STANDARD.encode(request.to_string())});
        for (message, wrapped_as) in [
            (&bare, "bare"),
            (&request, "request"),
            (&enveloped_json, "envelope"),
            (&enveloped_base64, "envelope64"),
        ] {
            let input = decode(message.to_string().as_bytes()).unwrap();
            assert_eq!(input.body, image, "{wrapped_as}");
            assert_eq!(input.content_type, "image/jpeg");
            assert_eq!(input.device, "camera-7");
            assert_eq!(
                input.event_id.as_deref(),
                Some("6a3b2b1e-6f37-4b39-9f47-0f0cbe1f8d2a")
            );
            let answer: Value = serde_json::from_slice(&answer(
                &input,
                "classifier",
                "6a3b2b1e",
                br#"{"output":{"label":"tabby"}}"#,
                5,
            ))
            .unwrap();
            let event = match wrapped_as {
                "bare" => answer.clone(),
                "request" => answer["event"].clone(),
                "envelope" => {
                    assert_eq!(answer["correlationID"], "c-9");
                    answer["payload"]["event"].clone()
                }
                _ => {
                    let payload = base64::engine::general_purpose::STANDARD
                        .decode(answer["payload"].as_str().unwrap())
                        .unwrap();
                    serde_json::from_slice::<Value>(&payload).unwrap()["event"].clone()
                }
            };
            assert_eq!(event["deviceName"], "camera-7", "{wrapped_as}: {answer}");
            assert_eq!(event["sourceName"], "classifier");
            let reading = &event["readings"][0];
            assert_eq!(reading["valueType"], "Object");
            assert_eq!(reading["objectValue"]["output"]["label"], "tabby");
            // Ids are UUIDs, the same for the same input.
            let id = event["id"].as_str().unwrap();
            assert_eq!(id.len(), 36);
            assert_eq!(&id[14..15], "5");
        }
    }

    #[test]
    fn what_is_not_an_event_with_a_binary_reading_is_refused_with_a_reason() {
        let mut no_binary = event(b"x");
        no_binary["readings"].as_array_mut().unwrap().pop();
        let mut bad_base64 = event(b"x");
        bad_base64["readings"][1]["binaryValue"] = json!("***");
        for (message, reason) in [
            (b"{not json".to_vec(), "not JSON"),
            (no_binary.to_string().into_bytes(), "no Binary reading"),
            (bad_base64.to_string().into_bytes(), "not base64"),
            (br#"{"payload": 7}"#.to_vec(), "neither base64"),
            (br#"{"readings": []}"#.to_vec(), "deviceName"),
        ] {
            let err = decode(&message).unwrap_err();
            assert!(err.contains(reason), "{reason}: {err}");
        }
    }
}

//! The REST form of the protocol: a JSON request and answer, optionally followed by binary
//! tensor data (Triton's binary tensor data extension, what `tritonclient.http` sends by
//! default). With the extension, the JSON header is the first `Inference-Header-Content-Length`
//! bytes of the body; an input with `parameters.binary_data_size` takes that many bytes of the
//! rest, in input order, in the [`raw`] layout. An output is answered binary when
//! its `parameters.binary_data` is true, or, when it is not named, when the request's
//! `parameters.binary_data_output` is.
//!
//! BYTES data in JSON is a string per element: its UTF-8 bytes, or base64 when the input's
//! `parameters.content_encoding` is `"base64"` (or its `content_type` is `"base64"`, MLServer's
//! spelling). An answer's BYTES element that is not UTF-8 is sent base64 with
//! `parameters.content_encoding = "base64"`.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::{
    BadRequest, DATATYPES, Input, InputValue, Output, OutputValue, RequestedOutput, V2Request,
    assemble, bad, raw,
};
use edgeplug_kernels::{Tensor, TensorData};

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Decodes a v2 infer request body; `header_length` is the request's
/// `Inference-Header-Content-Length` (absent: the whole body is JSON).
pub fn decode(body: &[u8], header_length: Option<usize>) -> Result<V2Request, BadRequest> {
    let (header, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(bad(format!(
                "Inference-Header-Content-Length is {n}, but the body has only {} bytes",
                body.len()
            )));
        }
    };
    let value: Value =
        serde_json::from_slice(header).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("the body must be a JSON object"))?;
    let inputs = object
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("\"inputs\" must be an array"))?;
    let mut decoded = Vec::with_capacity(inputs.len());
    for input in inputs {
        decoded.push(decode_input(input, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data follow the JSON that no input's binary_data_size claims",
            binary.len()
        )));
    }
    let parameters = object.get("parameters");
    let binary_by_default = match parameters.and_then(|p| p.get("binary_data_output")) {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| bad("parameters.binary_data_output must be a boolean"))?,
    };
    let timeout = match parameters.and_then(|p| p.get("timeout")) {
        None => None,
        Some(v) => Some(Duration::from_micros(v.as_u64().ok_or_else(|| {
            bad("parameters.timeout must be a non-negative integer of microseconds")
        })?)),
    };
    let outputs = match object.get("outputs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(outs)) => outs
            .iter()
            .map(decode_requested_output)
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("\"outputs\" must be an array")),
    };
    let id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    Ok(V2Request {
        id,
        request: assemble(decoded)?,
        outputs,
        binary_by_default,
        timeout,
    })
}

/// The tensors of a v2 infer answer (what an escalation gets back from a center), in JSON or
/// with the binary extension (`header_length`: its `Inference-Header-Content-Length`): its
/// FP32, INT64 and UINT8 outputs by name; BYTES outputs are not tensors and are left out.
/// An output has the layout of a request's input, so it is read the same way.
pub fn decode_outputs(
    body: &[u8],
    header_length: Option<usize>,
) -> Result<Vec<(String, Tensor)>, BadRequest> {
    let (header, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(bad(format!(
                "Inference-Header-Content-Length is {n}, but the answer has only {} bytes",
                body.len()
            )));
        }
    };
    let value: Value =
        serde_json::from_slice(header).map_err(|e| bad(format!("the answer is not JSON: {e}")))?;
    let outputs = value
        .get("outputs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the answer has no \"outputs\" array"))?;
    let mut tensors = Vec::with_capacity(outputs.len());
    for output in outputs {
        match decode_input(output, &mut binary)?.value {
            InputValue::Tensor(tensor) => tensors.push((
                output["name"].as_str().unwrap_or_default().to_string(),
                tensor,
            )),
            InputValue::Bytes(_) => {}
        }
    }
    Ok(tensors)
}

fn decode_input(input: &Value, binary: &mut &[u8]) -> Result<Input, BadRequest> {
    let name = input
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("every input needs a \"name\""))?;
    let shape: Vec<usize> = input
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("input {name:?} needs a \"shape\" array")))?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            bad(format!(
                "input {name:?}: shape must hold non-negative integers"
            ))
        })?;
    let datatype = input
        .get("datatype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("input {name:?} needs a \"datatype\"")))?;
    let parameter = |key: &str| input.pointer(&format!("/parameters/{key}"));
    let content_type = parameter("content_type").and_then(Value::as_str);
    let base64 = parameter("content_encoding").and_then(Value::as_str) == Some("base64")
        || content_type == Some("base64");
    let value = if let Some(size) = parameter("binary_data_size") {
        let size = size
            .as_u64()
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| {
                bad(format!(
                    "input {name:?}: binary_data_size must be a byte count"
                ))
            })?;
        if input.get("data").is_some() {
            return Err(bad(format!(
                "input {name:?} has both \"data\" and binary_data_size"
            )));
        }
        if size > binary.len() {
            return Err(bad(format!(
                "input {name:?}: binary_data_size is {size}, but only {} bytes of binary data are left",
                binary.len()
            )));
        }
        let (mine, rest) = binary.split_at(size);
        *binary = rest;
        raw::decode(name, datatype, shape, mine)?
    } else {
        let mut flat = Vec::new();
        flatten(
            input
                .get("data")
                .ok_or_else(|| bad(format!("input {name:?} needs \"data\"")))?,
            &mut flat,
        );
        let count = raw::element_count(name, &shape)?;
        if flat.len() != count {
            return Err(bad(format!(
                "input {name:?}: shape {shape:?} needs {count} elements, data has {}",
                flat.len()
            )));
        }
        json_value(name, datatype, shape, &flat, base64)?
    };
    Ok(Input {
        name: name.to_string(),
        value,
        // "base64" says how the JSON carries the bytes, not what they are.
        content_type: content_type.filter(|c| *c != "base64").map(String::from),
    })
}

fn json_value(
    name: &str,
    datatype: &str,
    shape: Vec<usize>,
    flat: &[&Value],
    base64: bool,
) -> Result<InputValue, BadRequest> {
    let element = |i: usize| format!("input {name:?}: element {i} is not a valid {datatype}");
    let tensor = match datatype {
        "FP32" => {
            let data = flat
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let wide = v.as_f64().ok_or_else(|| bad(element(i)))?;
                    // `as` rounds a value beyond f32::MAX to infinity: refuse it rather
                    // than hand the plugin an infinity the client never sent.
                    let narrow = wide as f32;
                    if narrow.is_finite() {
                        Ok(narrow)
                    } else {
                        Err(bad(format!(
                            "input {name:?}: element {i} ({wide:e}) is outside the FP32 range"
                        )))
                    }
                })
                .collect::<Result<Vec<f32>, _>>()?;
            Tensor::from_f32(shape, data)
        }
        "INT64" => {
            let data = flat
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_i64().ok_or_else(|| bad(element(i))))
                .collect::<Result<Vec<i64>, _>>()?;
            Tensor::from_i64(shape, data)
        }
        "UINT8" => {
            let data = flat
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64()
                        .and_then(|v| u8::try_from(v).ok())
                        .ok_or_else(|| bad(element(i)))
                })
                .collect::<Result<Vec<u8>, _>>()?;
            Tensor::from_u8(shape, data)
        }
        "BYTES" => {
            let elements = flat
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let text = v.as_str().ok_or_else(|| {
                        bad(format!(
                            "input {name:?}: BYTES element {i} must be a string"
                        ))
                    })?;
                    if base64 {
                        BASE64.decode(text).map_err(|e| {
                            bad(format!(
                                "input {name:?}: BYTES element {i} is not base64: {e}"
                            ))
                        })
                    } else {
                        Ok(text.as_bytes().to_vec())
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(InputValue::Bytes(elements));
        }
        other => {
            return Err(bad(format!(
                "input {name:?}: datatype {other:?} is not supported ({DATATYPES})"
            )));
        }
    }
    .map_err(|e| bad(format!("input {name:?}: {e}")))?;
    Ok(InputValue::Tensor(tensor))
}

fn decode_requested_output(output: &Value) -> Result<RequestedOutput, BadRequest> {
    let name = output
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("every requested output needs a \"name\""))?;
    let binary = match output.pointer("/parameters/binary_data") {
        None => None,
        Some(v) => Some(
            v.as_bool()
                .ok_or_else(|| bad(format!("output {name:?}: binary_data must be a boolean")))?,
        ),
    };
    let classification = match output.pointer("/parameters/classification") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|k| usize::try_from(k).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "output {name:?}: classification must be a count of classes"
                    ))
                })?,
        ),
    };
    Ok(RequestedOutput {
        name: name.to_string(),
        binary,
        classification,
    })
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

/// An encoded answer: the JSON, and the binary data that follows it when any output went
/// binary (then the JSON's length is the answer's `Inference-Header-Content-Length`).
pub struct Encoded {
    pub json: Vec<u8>,
    pub binary: Option<Vec<u8>>,
}

/// Encodes a v2 infer answer.
pub fn encode(model: &str, version: &str, id: Option<&str>, outputs: &[Output]) -> Encoded {
    let mut binary: Option<Vec<u8>> = None;
    let encoded: Vec<Value> = outputs
        .iter()
        .map(|output| {
            let (datatype, shape, content_type) = output.header();
            let mut entry = Map::new();
            entry.insert("name".into(), json!(output.name));
            entry.insert("datatype".into(), json!(datatype));
            entry.insert("shape".into(), json!(shape));
            let mut parameters = Map::new();
            if let Some(content_type) = content_type {
                parameters.insert("content_type".into(), json!(content_type));
            }
            if output.binary {
                let bytes = raw::encode(&output.value);
                parameters.insert("binary_data_size".into(), json!(bytes.len()));
                binary
                    .get_or_insert_with(Vec::new)
                    .extend_from_slice(&bytes);
            } else {
                let data = match &output.value {
                    OutputValue::Tensor(t) => match t.data() {
                        TensorData::F32(v) => json!(v.as_ref()),
                        TensorData::U8(v) => json!(v.as_ref()),
                        TensorData::I64(v) => json!(v.as_ref()),
                    },
                    OutputValue::Bytes { elements, .. } => {
                        let texts: Option<Vec<&str>> = elements
                            .iter()
                            .map(|e| std::str::from_utf8(e).ok())
                            .collect();
                        match texts {
                            Some(texts) => json!(texts),
                            None => {
                                parameters.insert("content_encoding".into(), json!("base64"));
                                json!(
                                    elements
                                        .iter()
                                        .map(|e| BASE64.encode(e))
                                        .collect::<Vec<_>>()
                                )
                            }
                        }
                    }
                };
                entry.insert("data".into(), data);
            }
            if !parameters.is_empty() {
                entry.insert("parameters".into(), Value::Object(parameters));
            }
            Value::Object(entry)
        })
        .collect();
    let mut out = Map::new();
    out.insert("model_name".into(), json!(model));
    out.insert("model_version".into(), json!(version));
    if let Some(id) = id {
        out.insert("id".into(), json!(id));
    }
    out.insert("outputs".into(), Value::Array(encoded));
    Encoded {
        json: serde_json::to_vec(&Value::Object(out)).unwrap_or_default(),
        binary,
    }
}

#[cfg(test)]
mod tests;

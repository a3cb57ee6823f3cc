//! The Open Inference Protocol v2 (KServe / Triton) JSON tensor codec.
//!
//! Request inputs of datatype FP32, INT64 and UINT8 become named tensors of the plugin
//! request (data flat or nested, row-major); each must be an input the model's `describe()`
//! declares, named once, and FP32 values must be finite f32s. One BYTES input of one element
//! (of any name) becomes the request body, with the content type from its
//! `parameters.content_type` (default `application/octet-stream`). Outputs are the
//! response's tensors, and its body as a BYTES output named `body` (when the response has no
//! tensors, or when asked for by name); asking for an output the answer does not have is an
//! error, not an empty list.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use edgeplug_kernels::{Tensor, TensorData};
use edgeplug_models::model::TensorSpec;
use edgeplug_runtime::{InferRequest, InferResponse};

/// Why a v2 request could not be decoded (answered 400).
#[derive(Debug)]
pub struct BadRequest(pub String);

fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

/// A decoded v2 infer request.
pub struct V2Request {
    pub id: Option<Value>,
    pub request: InferRequest,
    /// Output names the client asked for (empty: all).
    pub outputs: Vec<String>,
}

/// The v2 name of an element type.
pub fn datatype(t: edgeplug_kernels::ElementType) -> &'static str {
    match t {
        edgeplug_kernels::ElementType::F32 => "FP32",
        edgeplug_kernels::ElementType::U8 => "UINT8",
        edgeplug_kernels::ElementType::I64 => "INT64",
    }
}

/// Decodes a v2 infer request body.
pub fn decode(body: &[u8]) -> Result<V2Request, BadRequest> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("the body must be a JSON object"))?;
    let inputs = object
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("\"inputs\" must be an array"))?;
    let mut request = InferRequest {
        content_type: String::new(),
        body: Vec::new(),
        tensors: Vec::new(),
    };
    let mut has_body = false;
    let mut names = BTreeSet::new();
    for input in inputs {
        let name = input
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("every input needs a \"name\""))?;
        if !names.insert(name) {
            return Err(bad(format!("input {name:?} is given more than once")));
        }
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
        let mut flat = Vec::new();
        flatten(
            input
                .get("data")
                .ok_or_else(|| bad(format!("input {name:?} needs \"data\"")))?,
            &mut flat,
        );
        let count = shape
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| bad(format!("input {name:?}: shape overflows")))?;
        if flat.len() != count {
            return Err(bad(format!(
                "input {name:?}: shape {shape:?} needs {count} elements, data has {}",
                flat.len()
            )));
        }
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
                if has_body || flat.len() != 1 {
                    return Err(bad(
                        "only one BYTES input of one element is supported (it becomes the request body)",
                    ));
                }
                let text = flat[0]
                    .as_str()
                    .ok_or_else(|| bad(format!("input {name:?}: BYTES data must be a string")))?;
                request.body = text.as_bytes().to_vec();
                request.content_type = input
                    .pointer("/parameters/content_type")
                    .and_then(Value::as_str)
                    .unwrap_or("application/octet-stream")
                    .to_string();
                has_body = true;
                continue;
            }
            other => {
                return Err(bad(format!(
                    "input {name:?}: datatype {other:?} is not supported (FP32, INT64, UINT8, BYTES)"
                )));
            }
        }
        .map_err(|e| bad(format!("input {name:?}: {e}")))?;
        request.tensors.push((name.to_string(), tensor));
    }
    let outputs = match object.get("outputs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(outs)) => outs
            .iter()
            .map(|o| {
                o.get("name")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .ok_or_else(|| bad("every requested output needs a \"name\""))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("\"outputs\" must be an array")),
    };
    Ok(V2Request {
        id: object.get("id").cloned(),
        request,
        outputs,
    })
}

/// Checks that every tensor input is one the model declares (the BYTES body is not a tensor).
pub fn check_inputs(request: &InferRequest, declared: &[TensorSpec]) -> Result<(), BadRequest> {
    for (name, _) in &request.tensors {
        if !declared.iter().any(|d| &d.name == name) {
            let known = if declared.is_empty() {
                "it declares no tensor inputs; send the data as one BYTES input".to_string()
            } else {
                let names: Vec<String> = declared.iter().map(|d| format!("{:?}", d.name)).collect();
                format!("its inputs: {}", names.join(", "))
            };
            return Err(bad(format!(
                "input {name:?} is not an input of this model ({known})"
            )));
        }
    }
    Ok(())
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

fn tensor_json(name: &str, tensor: &Tensor) -> Value {
    let data = match tensor.data() {
        TensorData::F32(v) => json!(v.as_ref()),
        TensorData::U8(v) => json!(v.as_ref()),
        TensorData::I64(v) => json!(v.as_ref()),
    };
    json!({
        "name": name,
        "datatype": datatype(tensor.element_type()),
        "shape": tensor.shape(),
        "data": data,
    })
}

/// Encodes a plugin's response as a v2 infer response; an output in `wanted` that the
/// response does not have is an error naming it.
pub fn encode(
    model: &str,
    version: &str,
    id: Option<Value>,
    response: &InferResponse,
    wanted: &[String],
) -> Result<Value, BadRequest> {
    if let Some(missing) = wanted
        .iter()
        .find(|w| *w != "body" && !response.tensors.iter().any(|(n, _)| n == *w))
    {
        let mut names: Vec<String> = response
            .tensors
            .iter()
            .map(|(n, _)| format!("{n:?}"))
            .collect();
        names.push("\"body\"".into());
        return Err(bad(format!(
            "output {missing:?} is not an output of this answer (its outputs: {})",
            names.join(", ")
        )));
    }
    let want = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let mut outputs: Vec<Value> = response
        .tensors
        .iter()
        .filter(|(name, _)| want(name))
        .map(|(name, t)| tensor_json(name, t))
        .collect();
    // Asked for by name, the body is there even when empty.
    let body_asked = wanted.iter().any(|w| w == "body");
    let body_by_default = wanted.is_empty() && response.tensors.is_empty();
    if body_asked || (body_by_default && !response.body.is_empty()) {
        outputs.push(json!({
            "name": "body",
            "datatype": "BYTES",
            "shape": [1],
            "parameters": {"content_type": response.content_type},
            "data": [String::from_utf8_lossy(&response.body)],
        }));
    }
    let mut out = Map::new();
    out.insert("model_name".into(), json!(model));
    out.insert("model_version".into(), json!(version));
    if let Some(id) = id {
        out.insert("id".into(), id);
    }
    out.insert("outputs".into(), Value::Array(outputs));
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_typed_tensors_nested_or_flat() {
        let body = json!({
            "id": "r1",
            "inputs": [
                {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1.0, 2.5], [3, 4]]},
                {"name": "i", "shape": [3], "datatype": "INT64", "data": [1, -2, 3]},
                {"name": "u", "shape": [1, 2], "datatype": "UINT8", "data": [0, 255]},
                {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["[1,2]"],
                 "parameters": {"content_type": "application/json"}}
            ],
            "outputs": [{"name": "probs"}]
        });
        let v2 = decode(body.to_string().as_bytes())
            .map_err(|e| e.0)
            .unwrap();
        assert_eq!(v2.id, Some(json!("r1")));
        assert_eq!(v2.outputs, ["probs"]);
        let r = &v2.request;
        assert_eq!(r.tensors.len(), 3);
        assert_eq!(r.tensors[0].1.as_f32().unwrap(), &[1.0, 2.5, 3.0, 4.0]);
        assert_eq!(r.tensors[1].1.as_i64().unwrap(), &[1, -2, 3]);
        assert_eq!(r.tensors[2].1.as_u8().unwrap(), &[0, 255]);
        assert_eq!(r.body, b"[1,2]");
        assert_eq!(r.content_type, "application/json");
    }

    #[test]
    fn refuses_bad_inputs_with_reasons() {
        let case = |input: Value| {
            decode(json!({"inputs": [input]}).to_string().as_bytes())
                .err()
                .unwrap()
                .0
        };
        assert!(
            case(json!({"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}))
                .contains("needs 3 elements")
        );
        assert!(
            case(json!({"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}))
                .contains("not supported")
        );
        assert!(
            case(json!({"name": "x", "shape": [1], "datatype": "UINT8", "data": [256]}))
                .contains("not a valid UINT8")
        );
        assert!(
            case(json!({"name": "x", "shape": [1], "datatype": "INT64", "data": [1.5]}))
                .contains("not a valid INT64")
        );
        assert!(case(json!({"shape": [1], "datatype": "INT64", "data": [1]})).contains("name"));
        assert!(decode(b"[]").is_err());
        assert!(decode(b"{").is_err());
    }

    #[test]
    fn encodes_tensors_and_body() {
        let response = InferResponse {
            content_type: "application/json".into(),
            body: b"{\"label\":7}".to_vec(),
            tensors: vec![(
                "probs".into(),
                Tensor::from_f32(vec![1, 2], vec![0.25, 0.75]).unwrap(),
            )],
        };
        let out = encode("digits", "0.1.0", Some(json!(5)), &response, &[])
            .map_err(|e| e.0)
            .unwrap();
        assert_eq!(out["model_name"], "digits");
        assert_eq!(out["id"], 5);
        assert_eq!(out["outputs"].as_array().unwrap().len(), 1);
        assert_eq!(out["outputs"][0]["datatype"], "FP32");
        assert_eq!(out["outputs"][0]["shape"], json!([1, 2]));
        assert_eq!(out["outputs"][0]["data"], json!([0.25, 0.75]));
        let out = encode("digits", "0.1.0", None, &response, &["body".into()])
            .map_err(|e| e.0)
            .unwrap();
        assert_eq!(out["outputs"][0]["name"], "body");
        assert_eq!(out["outputs"][0]["data"][0], "{\"label\":7}");
    }

    #[test]
    fn refuses_an_output_the_answer_does_not_have() {
        let response = InferResponse {
            content_type: "application/json".into(),
            body: Vec::new(),
            tensors: vec![(
                "probs".into(),
                Tensor::from_f32(vec![1], vec![1.0]).unwrap(),
            )],
        };
        let error = encode("m", "1.0.0", None, &response, &["logits".into()])
            .err()
            .unwrap()
            .0;
        assert!(error.contains("\"logits\""), "{error}");
        assert!(error.contains("\"probs\""), "{error}");
        // An empty body asked for by name is an empty BYTES output, not a missing one.
        let out = encode("m", "1.0.0", None, &response, &["body".into()])
            .map_err(|e| e.0)
            .unwrap();
        assert_eq!(out["outputs"][0]["name"], "body");
        assert_eq!(out["outputs"][0]["data"][0], "");
    }

    #[test]
    fn refuses_duplicates_out_of_range_values_and_undeclared_inputs() {
        let twice = json!({"inputs": [
            {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]},
            {"name": "x", "shape": [1], "datatype": "FP32", "data": [2.0]},
        ]});
        let error = decode(twice.to_string().as_bytes()).err().unwrap().0;
        assert!(error.contains("\"x\" is given more than once"), "{error}");
        // f32::MAX is 3.4028235e38: 3.4e38 fits, 3.5e38 would round to infinity.
        let fits = json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [3.4e38, -3.4e38]}]});
        assert!(decode(fits.to_string().as_bytes()).is_ok());
        for value in [3.5e38, -3.5e38, 1e300] {
            let over = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [value]}]});
            let error = decode(over.to_string().as_bytes()).err().unwrap().0;
            assert!(error.contains("outside the FP32 range"), "{error}");
        }
        // JSON has no NaN or infinity: such text is not JSON at all.
        assert!(
            decode(
                br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}"#
            )
            .is_err()
        );
        assert!(decode(br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1e999]}]}"#).is_err());
        let error = decode(br#"{"inputs": [], "outputs": [{"nom": "probs"}]}"#)
            .err()
            .unwrap()
            .0;
        assert!(error.contains("output needs a \"name\""), "{error}");

        let declared = [TensorSpec {
            name: "input".into(),
            element_type: edgeplug_kernels::ElementType::F32,
            shape: vec![1, 4],
        }];
        let request = |name: &str| {
            decode(
                json!({"inputs": [
                    {"name": name, "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                    {"name": "anything", "shape": [1], "datatype": "BYTES", "data": ["{}"]},
                ]})
                .to_string()
                .as_bytes(),
            )
            .map_err(|e| e.0)
            .unwrap()
            .request
        };
        assert!(check_inputs(&request("input"), &declared).is_ok());
        let error = check_inputs(&request("imput"), &declared).err().unwrap().0;
        assert!(error.contains("\"imput\""), "{error}");
        assert!(error.contains("\"input\""), "{error}");
        let error = check_inputs(&request("input"), &[]).err().unwrap().0;
        assert!(error.contains("declares no tensor inputs"), "{error}");
    }
}

use super::*;
use crate::oip::{BODY_OUTPUT, check_inputs, select_outputs};
use edgeplug_models::model::TensorSpec;
use edgeplug_runtime::InferResponse;

fn decode_ok(body: &Value) -> V2Request {
    decode(body.to_string().as_bytes(), None)
        .map_err(|e| e.0)
        .unwrap()
}

fn decode_err(body: &Value) -> String {
    decode(body.to_string().as_bytes(), None).err().unwrap().0
}

/// A JSON header followed by binary data, as `tritonclient.http` sends it.
fn with_binary(header: &Value, binary: &[u8]) -> (Vec<u8>, usize) {
    let mut body = header.to_string().into_bytes();
    let length = body.len();
    body.extend_from_slice(binary);
    (body, length)
}

fn no_labels(_: &str) -> Option<&'static [String]> {
    None
}

fn answer() -> InferResponse {
    InferResponse {
        content_type: "application/json".into(),
        body: b"{\"label\":7}".to_vec(),
        tensors: vec![(
            "probs".into(),
            Tensor::from_f32(vec![1, 3], vec![0.25, 0.7, 0.05]).unwrap(),
        )],
        degraded: false,
    }
}

fn encode_json(response: &InferResponse, requested: &[RequestedOutput]) -> Value {
    let outputs = select_outputs(response, requested, false, &no_labels)
        .map_err(|e| e.0)
        .unwrap();
    let encoded = encode("digits", "0.1.0", Some("5"), &outputs);
    assert!(encoded.binary.is_none());
    serde_json::from_slice(&encoded.json).unwrap()
}

#[test]
fn decodes_typed_tensors_nested_or_flat() {
    let v2 = decode_ok(&json!({
        "id": "r1",
        "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1.0, 2.5], [3, 4]]},
            {"name": "i", "shape": [3], "datatype": "INT64", "data": [1, -2, 3]},
            {"name": "u", "shape": [1, 2], "datatype": "UINT8", "data": [0, 255]},
            {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["[1,2]"],
             "parameters": {"content_type": "application/json"}}
        ],
        "outputs": [{"name": "probs"}],
        "parameters": {"timeout": 2500}
    }));
    assert_eq!(v2.id.as_deref(), Some("r1"));
    assert_eq!(v2.outputs.len(), 1);
    assert_eq!(v2.outputs[0].name, "probs");
    assert_eq!(v2.timeout, Some(Duration::from_micros(2500)));
    assert!(!v2.binary_by_default);
    let r = &v2.request;
    assert_eq!(r.tensors.len(), 3);
    assert_eq!(r.tensors[0].1.as_f32().unwrap(), &[1.0, 2.5, 3.0, 4.0]);
    assert_eq!(r.tensors[1].1.as_i64().unwrap(), &[1, -2, 3]);
    assert_eq!(r.tensors[2].1.as_u8().unwrap(), &[0, 255]);
    assert_eq!(r.body, b"[1,2]");
    assert_eq!(r.content_type, "application/json");
}

#[test]
fn decodes_binary_tensor_data_after_the_json_header() {
    let floats: Vec<u8> = [0.5f32, 1.5, 2.5, 3.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let png = raw::join_bytes(&[b"\x89PNG\r\n\x1a\n...".to_vec()]);
    let header = json!({
        "inputs": [
            {"name": "input", "shape": [1, 4], "datatype": "FP32",
             "parameters": {"binary_data_size": floats.len()}},
            {"name": "image", "shape": [1], "datatype": "BYTES",
             "parameters": {"binary_data_size": png.len(), "content_type": "image/png"}},
        ],
        "parameters": {"binary_data_output": true},
    });
    let mut binary = floats.clone();
    binary.extend_from_slice(&png);
    let (body, length) = with_binary(&header, &binary);
    let v2 = decode(&body, Some(length)).map_err(|e| e.0).unwrap();
    assert!(v2.binary_by_default);
    assert_eq!(
        v2.request.tensors[0].1.as_f32().unwrap(),
        &[0.5, 1.5, 2.5, 3.5]
    );
    assert_eq!(v2.request.body, b"\x89PNG\r\n\x1a\n...");
    assert_eq!(v2.request.content_type, "image/png");

    // Too little, too much, or a header length beyond the body: each refused by name.
    let (short, length) = with_binary(&header, &binary[..binary.len() - 1]);
    let error = decode(&short, Some(length)).err().unwrap().0;
    assert!(error.contains("\"image\""), "{error}");
    let mut long = body.clone();
    long.push(0);
    let error = decode(&long, Some(length)).err().unwrap().0;
    assert!(error.contains("1 bytes of binary data"), "{error}");
    let error = decode(&body, Some(body.len() + 1)).err().unwrap().0;
    assert!(error.contains("Inference-Header-Content-Length"), "{error}");
    // Without the header length, the binary tail makes the body not JSON.
    assert!(decode(&body, None).is_err());
}

#[test]
fn decodes_base64_bytes_in_either_spelling() {
    for parameters in [
        json!({"content_encoding": "base64", "content_type": "image/png"}),
        json!({"content_type": "base64"}),
    ] {
        let v2 = decode_ok(&json!({"inputs": [
            {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["AAH/"], "parameters": parameters}
        ]}));
        assert_eq!(v2.request.body, [0, 1, 255]);
        assert_ne!(v2.request.content_type, "base64");
    }
    let error = decode_err(&json!({"inputs": [
        {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["not base64!"],
         "parameters": {"content_encoding": "base64"}}
    ]}));
    assert!(error.contains("not base64"), "{error}");
}

#[test]
fn refuses_bad_inputs_with_reasons() {
    let case = |input: Value| decode_err(&json!({"inputs": [input]}));
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
    assert!(
        case(json!({"name": "b", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}))
            .contains("one BYTES input of one element")
    );
    assert!(
        case(
            json!({"name": "x", "shape": [1], "datatype": "FP32", "data": [1],
                    "parameters": {"binary_data_size": 4}})
        )
        .contains("both")
    );
    assert!(
        decode_err(&json!({"inputs": [], "parameters": {"timeout": -1}})).contains("microseconds")
    );
    assert!(decode(b"[]", None).is_err());
    assert!(decode(b"{", None).is_err());
}

#[test]
fn encodes_tensors_and_the_body_by_default_or_by_name() {
    let all = encode_json(&answer(), &[]);
    assert_eq!(all["model_name"], "digits");
    assert_eq!(all["id"], "5");
    let outputs = all["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "the tensors and the body: {all}");
    assert_eq!(outputs[0]["datatype"], "FP32");
    assert_eq!(outputs[0]["shape"], json!([1, 3]));
    assert_eq!(outputs[0]["data"], json!([0.25, 0.7f32, 0.05f32]));
    assert_eq!(outputs[1]["name"], BODY_OUTPUT);
    assert_eq!(outputs[1]["data"][0], "{\"label\":7}");
    assert_eq!(outputs[1]["parameters"]["content_type"], "application/json");
    let body_only = encode_json(
        &answer(),
        &[RequestedOutput {
            name: BODY_OUTPUT.into(),
            ..Default::default()
        }],
    );
    assert_eq!(body_only["outputs"].as_array().unwrap().len(), 1);
    // A body that is not UTF-8 goes base64, and says so.
    let png = InferResponse {
        content_type: "image/png".into(),
        body: vec![0x89, b'P', b'N', b'G', 0xff],
        tensors: Vec::new(),
        degraded: false,
    };
    let out = encode_json(&png, &[]);
    assert_eq!(
        out["outputs"][0]["parameters"]["content_encoding"],
        "base64"
    );
    assert_eq!(
        BASE64
            .decode(out["outputs"][0]["data"][0].as_str().unwrap())
            .unwrap(),
        png.body
    );
}

#[test]
fn encodes_binary_outputs_after_the_json() {
    let response = answer();
    let requested = [
        RequestedOutput {
            name: "probs".into(),
            binary: Some(true),
            classification: None,
        },
        RequestedOutput {
            name: BODY_OUTPUT.into(),
            binary: Some(false),
            classification: None,
        },
    ];
    let outputs = select_outputs(&response, &requested, false, &no_labels)
        .map_err(|e| e.0)
        .unwrap();
    let encoded = encode("digits", "0.1.0", None, &outputs);
    let header: Value = serde_json::from_slice(&encoded.json).unwrap();
    assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 12);
    assert!(header["outputs"][0].get("data").is_none());
    assert_eq!(header["outputs"][1]["data"][0], "{\"label\":7}");
    let binary = encoded.binary.unwrap();
    let floats: Vec<f32> = binary
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats, [0.25, 0.7, 0.05]);
    // binary_data_output makes every output binary unless it says otherwise.
    let outputs = select_outputs(&response, &[], true, &no_labels)
        .map_err(|e| e.0)
        .unwrap();
    let encoded = encode("digits", "0.1.0", None, &outputs);
    assert_eq!(encoded.binary.unwrap().len(), 12 + 4 + 11);
}

#[test]
fn classifies_with_the_declared_labels() {
    let labels: Vec<String> = ["zero", "one", "two"].map(String::from).to_vec();
    let requested = [RequestedOutput {
        name: "probs".into(),
        binary: None,
        classification: Some(2),
    }];
    let response = answer();
    let lookup = |name: &str| (name == "probs").then_some(labels.as_slice());
    let outputs = select_outputs(&response, &requested, false, &lookup)
        .map_err(|e| e.0)
        .unwrap();
    let out: Value = serde_json::from_slice(&encode("d", "1", None, &outputs).json).unwrap();
    assert_eq!(out["outputs"][0]["datatype"], "BYTES");
    assert_eq!(out["outputs"][0]["shape"], json!([1, 2]));
    assert_eq!(
        out["outputs"][0]["data"],
        json!(["0.700000:1:one", "0.250000:0:zero"])
    );
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
        degraded: false,
    };
    let want = |name: &str| RequestedOutput {
        name: name.into(),
        ..Default::default()
    };
    let error = select_outputs(&response, &[want("logits")], false, &no_labels)
        .err()
        .unwrap()
        .0;
    assert!(error.contains("\"logits\""), "{error}");
    assert!(error.contains("\"probs\""), "{error}");
    // An empty body asked for by name is an empty BYTES output, not a missing one.
    let out = encode_json(&response, &[want(BODY_OUTPUT)]);
    assert_eq!(out["outputs"][0]["name"], BODY_OUTPUT);
    assert_eq!(out["outputs"][0]["data"][0], "");
    // And not asked for, an empty body is left out.
    let out = encode_json(&response, &[]);
    assert_eq!(out["outputs"].as_array().unwrap().len(), 1);
}

#[test]
fn refuses_duplicates_out_of_range_values_and_undeclared_inputs() {
    let twice = json!({"inputs": [
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]},
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [2.0]},
    ]});
    let error = decode_err(&twice);
    assert!(error.contains("\"x\" is given more than once"), "{error}");
    // f32::MAX is 3.4028235e38: 3.4e38 fits, 3.5e38 would round to infinity.
    decode_ok(
        &json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [3.4e38, -3.4e38]}]}),
    );
    for value in [3.5e38, -3.5e38, 1e300] {
        let error = decode_err(
            &json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [value]}]}),
        );
        assert!(error.contains("outside the FP32 range"), "{error}");
    }
    // JSON has no NaN or infinity: such text is not JSON at all.
    assert!(
        decode(
            br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}"#,
            None
        )
        .is_err()
    );
    let error = decode_err(&json!({"inputs": [], "outputs": [{"nom": "probs"}]}));
    assert!(error.contains("output needs a \"name\""), "{error}");

    let declared = [TensorSpec {
        name: "input".into(),
        element_type: edgeplug_kernels::ElementType::F32,
        shape: vec![1, 4],
    }];
    let request = |name: &str| {
        decode_ok(&json!({"inputs": [
            {"name": name, "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "anything", "shape": [1], "datatype": "BYTES", "data": ["{}"]},
        ]}))
        .request
    };
    assert!(check_inputs(&request("input"), &declared).is_ok());
    let error = check_inputs(&request("imput"), &declared).err().unwrap().0;
    assert!(error.contains("\"imput\""), "{error}");
    assert!(error.contains("\"input\""), "{error}");
    let error = check_inputs(&request("input"), &[]).err().unwrap().0;
    assert!(error.contains("declares no tensor inputs"), "{error}");
}

//! The protocol's gRPC messages to and from [`edgeplug_gateway::oip`]'s transport-free form.
//! Inputs come as `raw_input_contents` (one per input, the layout of [`oip::raw`]) or as typed
//! `contents`; outputs always go back raw, as `tritonclient.grpc` and KServe's clients expect.

use std::collections::HashMap;
use std::time::Duration;

use edgeplug_gateway::oip::{self, BadRequest, Input, InputValue, Output};
use edgeplug_kernels::Tensor;
use edgeplug_runtime::InferRequest;

use crate::proto::infer_parameter::ParameterChoice;
use crate::proto::model_infer_request::InferInputTensor;
use crate::proto::model_infer_response::InferOutputTensor;
use crate::proto::{InferParameter, ModelInferRequest, ModelInferResponse};

fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

/// A decoded `ModelInfer` request.
pub struct Decoded {
    pub request: InferRequest,
    pub outputs: Vec<oip::RequestedOutput>,
    /// `parameters["timeout"]` (µs), as `tritonclient.grpc` sends it.
    pub timeout: Option<Duration>,
}

fn string_param<'a>(parameters: &'a HashMap<String, InferParameter>, key: &str) -> Option<&'a str> {
    match parameters.get(key)?.parameter_choice.as_ref()? {
        ParameterChoice::StringParam(s) => Some(s),
        _ => None,
    }
}

/// A non-negative integer parameter; present but of another kind or negative is an error.
fn count_param(
    parameters: &HashMap<String, InferParameter>,
    key: &str,
    what: &str,
) -> Result<Option<u64>, BadRequest> {
    let Some(parameter) = parameters.get(key) else {
        return Ok(None);
    };
    match parameter.parameter_choice {
        Some(ParameterChoice::Int64Param(v)) if v >= 0 => Ok(Some(v as u64)),
        _ => Err(bad(format!(
            "parameter {key:?} must be a non-negative int64 ({what})"
        ))),
    }
}

pub fn decode(message: ModelInferRequest) -> Result<Decoded, BadRequest> {
    let raw = message.raw_input_contents;
    if !raw.is_empty() && raw.len() != message.inputs.len() {
        return Err(bad(format!(
            "raw_input_contents has {} entries for {} inputs: one per input, in order",
            raw.len(),
            message.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(message.inputs.len());
    for (i, input) in message.inputs.into_iter().enumerate() {
        let shape = input
            .shape
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| {
                bad(format!(
                    "input {:?}: shape must hold non-negative integers",
                    input.name
                ))
            })?;
        let value = match raw.get(i) {
            Some(bytes) => {
                if input.contents.is_some() {
                    return Err(bad(format!(
                        "input {:?} has both contents and raw_input_contents",
                        input.name
                    )));
                }
                oip::raw::decode(&input.name, &input.datatype, shape, bytes)?
            }
            None => typed(&input, shape)?,
        };
        inputs.push(Input {
            content_type: string_param(&input.parameters, "content_type").map(String::from),
            name: input.name,
            value,
        });
    }
    let outputs = message
        .outputs
        .into_iter()
        .map(|o| {
            let classification = count_param(&o.parameters, "classification", "classes")?
                .map(|k| usize::try_from(k).unwrap_or(usize::MAX));
            Ok(oip::RequestedOutput {
                name: o.name,
                binary: None,
                classification,
            })
        })
        .collect::<Result<_, BadRequest>>()?;
    let timeout =
        count_param(&message.parameters, "timeout", "microseconds")?.map(Duration::from_micros);
    Ok(Decoded {
        request: oip::assemble(inputs)?,
        outputs,
        timeout,
    })
}

/// An input given as typed `contents`.
fn typed(input: &InferInputTensor, shape: Vec<usize>) -> Result<InputValue, BadRequest> {
    let name = &input.name;
    let contents = input.contents.as_ref().ok_or_else(|| {
        bad(format!(
            "input {name:?} has no data: give contents or raw_input_contents"
        ))
    })?;
    let count = oip::raw::element_count(name, &shape)?;
    let check = |len: usize| {
        if len == count {
            Ok(())
        } else {
            Err(bad(format!(
                "input {name:?}: shape {shape:?} needs {count} elements, contents has {len}"
            )))
        }
    };
    let tensor = match input.datatype.as_str() {
        "FP32" => {
            check(contents.fp32_contents.len())?;
            Tensor::from_f32(shape.clone(), contents.fp32_contents.clone())
        }
        "INT64" => {
            check(contents.int64_contents.len())?;
            Tensor::from_i64(shape.clone(), contents.int64_contents.clone())
        }
        "UINT8" => {
            check(contents.uint_contents.len())?;
            let bytes = contents
                .uint_contents
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    u8::try_from(v).map_err(|_| {
                        bad(format!("input {name:?}: element {i} is not a valid UINT8"))
                    })
                })
                .collect::<Result<Vec<u8>, _>>()?;
            Tensor::from_u8(shape.clone(), bytes)
        }
        "BYTES" => {
            check(contents.bytes_contents.len())?;
            return Ok(InputValue::Bytes(contents.bytes_contents.clone()));
        }
        other => {
            return Err(bad(format!(
                "input {name:?}: datatype {other:?} is not supported ({})",
                oip::DATATYPES
            )));
        }
    }
    .map_err(|e| bad(format!("input {name:?}: {e}")))?;
    oip::raw::check_finite(name, &tensor)?;
    Ok(InputValue::Tensor(tensor))
}

/// The answer, every output raw.
pub fn encode(model: &str, version: &str, id: String, outputs: &[Output]) -> ModelInferResponse {
    let mut response = ModelInferResponse {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id,
        ..Default::default()
    };
    for output in outputs {
        let (datatype, shape, content_type) = output.header();
        let mut parameters = HashMap::new();
        if let Some(content_type) = content_type {
            parameters.insert(
                "content_type".to_string(),
                InferParameter {
                    parameter_choice: Some(ParameterChoice::StringParam(content_type.into())),
                },
            );
        }
        response.outputs.push(InferOutputTensor {
            name: output.name.to_string(),
            datatype: datatype.to_string(),
            shape: shape.iter().map(|&d| d as i64).collect(),
            parameters,
            contents: None,
        });
        response
            .raw_output_contents
            .push(oip::raw::encode(&output.value));
    }
    response
}

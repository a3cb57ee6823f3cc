//! Next-year forecast of the yearly sunspot number from the last 24 yearly values.
//!
//! The plugin parses and checks the window here, in the sandbox; the model,
//! `sunspots_lstm.onnx` (an ONNX `LSTM`, hidden size 32, with its normalization inside the
//! graph), runs in the host on the native backend's fused LSTM (tract if the host cannot).
//!
//! # Requests
//!
//! * `application/json`: an array of 24 numbers, oldest year first: `[154.6, 214.7, ...]`.
//! * `text/csv`: the same 24 numbers separated by commas and/or line breaks (one column or one
//!   row; no header).
//! * a request tensor `window`, float32 `[1, 24, 1]` (tensor protocols; the body is ignored).
//!
//! Values are raw yearly mean sunspot numbers (the model normalizes them itself). Anything else
//! is `invalid-argument` with a message naming the problem: not 24 values, a value that is not a
//! number, NaN or infinite.
//!
//! The answer is `{"forecast": 123.4}`, with the output tensor `next_value` `[1, 1]`. With the
//! content-type parameter `debug=true` the response also carries `timings_us` (float32 `[2]`:
//! parse, model, measured inside the sandbox).

use std::time::Instant;

use edgeplug_sdk::{
    ElementType, Error, Model, Plugin, PluginInfo, Request, Response, Tensor, TensorInfo, export,
};

/// Number of yearly values the model looks at.
pub const WINDOW: usize = 24;
/// Name of the model in the manifest's `[grants.models]`.
pub const MODEL: &str = "sunspots-lstm";
/// Largest body parsed (24 numbers need a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why a window was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowError(pub String);

impl std::fmt::Display for WindowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn check(values: Vec<f64>) -> Result<Vec<f32>, WindowError> {
    if values.len() != WINDOW {
        return Err(WindowError(format!(
            "expected the last {WINDOW} yearly values, got {} value(s)",
            values.len()
        )));
    }
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let x = v as f32;
            if x.is_finite() {
                Ok(x)
            } else if v.is_finite() {
                Err(WindowError(format!(
                    "value {i} ({v:e}) is out of range, not a finite number"
                )))
            } else {
                Err(WindowError(format!(
                    "value {i} is {v}, not a finite number"
                )))
            }
        })
        .collect()
}

/// A JSON array of 24 finite numbers.
pub fn from_json(body: &[u8]) -> Result<Vec<f32>, WindowError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| WindowError(format!("body is not valid JSON: {e}")))?;
    let serde_json::Value::Array(items) = value else {
        return Err(WindowError(format!(
            "expected a JSON array of {WINDOW} numbers, got {}",
            kind(&value)
        )));
    };
    let values = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_f64()
                .ok_or_else(|| WindowError(format!("value {i} is {}, not a number", kind(item))))
        })
        .collect::<Result<Vec<f64>, _>>()?;
    check(values)
}

fn kind(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => format!("the boolean {b}"),
        serde_json::Value::Number(n) => format!("the number {n}"),
        serde_json::Value::String(s) if s.len() <= 32 => format!("the string {s:?}"),
        serde_json::Value::String(_) => "a string".into(),
        serde_json::Value::Array(_) => "an array".into(),
        serde_json::Value::Object(_) => "an object".into(),
    }
}

/// 24 finite numbers separated by commas and/or line breaks.
pub fn from_csv(body: &[u8]) -> Result<Vec<f32>, WindowError> {
    let text =
        std::str::from_utf8(body).map_err(|_| WindowError("CSV body is not UTF-8 text".into()))?;
    let values = text
        .split([',', '\n', '\r'])
        .map(str::trim)
        .filter(|field| !field.is_empty())
        .enumerate()
        .map(|(i, field)| {
            field.parse::<f64>().map_err(|_| {
                let shown: String = field.chars().take(32).collect();
                WindowError(format!("value {i} ({shown:?}) is not a number"))
            })
        })
        .collect::<Result<Vec<f64>, _>>()?;
    check(values)
}

fn micros(since: Instant) -> f32 {
    since.elapsed().as_secs_f64() as f32 * 1e6
}

fn window_tensor(request: &mut Request) -> Result<Tensor, Error> {
    if let Some(tensor) = request.take_tensor("window") {
        if tensor.shape() != [1, WINDOW, 1] || tensor.element_type() != ElementType::Float32 {
            return Err(Error::shape_mismatch(format!(
                "tensor \"window\" must be float32 [1, {WINDOW}, 1], got {:?} {:?}",
                tensor.element_type(),
                tensor.shape()
            )));
        }
        if let Some(i) = tensor.to_vec()?.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid_argument(format!(
                "value {i} of tensor \"window\" is not a finite number"
            )));
        }
        return Ok(tensor);
    }
    if request.body.len() > MAX_BODY_BYTES {
        return Err(Error::invalid_argument(format!(
            "body of {} bytes is too large for {WINDOW} numbers (limit {MAX_BODY_BYTES})",
            request.body.len()
        )));
    }
    let values = match request.mime().as_str() {
        "application/json" => from_json(&request.body),
        "text/csv" | "text/plain" => from_csv(&request.body),
        other => {
            return Err(Error::unsupported(format!(
                "content type {other:?} is not supported; send application/json (an array of {WINDOW} \
                 numbers, oldest first), text/csv, or a float32 tensor \"window\" [1, {WINDOW}, 1]"
            )));
        }
    }
    .map_err(|e| Error::invalid_argument(e.0))?;
    Tensor::from_slice(&[1, WINDOW, 1], &values)
}

struct Forecaster;

#[derive(serde::Serialize)]
struct Answer {
    forecast: f32,
}

impl Plugin for Forecaster {
    fn describe() -> PluginInfo {
        PluginInfo::new("forecaster", env!("CARGO_PKG_VERSION"))
            .description("Next-year sunspot number from the last 24 yearly values (ONNX LSTM)")
            .input(TensorInfo::f32("window", &[1, WINDOW as i64, 1]))
            .output(TensorInfo::f32("next_value", &[1, 1]))
    }

    fn infer(mut request: Request) -> Result<Response, Error> {
        let debug = request
            .content_type
            .split(';')
            .skip(1)
            .any(|p| matches!(p.trim(), "debug=true" | "debug=1"));
        let start = Instant::now();
        let window = window_tensor(&mut request)?;
        let parse = micros(start);
        let start = Instant::now();
        let model = Model::open(MODEL)?;
        let output = model
            .run(&[&window])?
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("the model gave no output"))?;
        let values = output.to_vec()?;
        let run = micros(start);
        let forecast = match values.as_slice() {
            [v] => *v,
            other => {
                return Err(Error::internal(format!(
                    "the model gave {} values, expected 1",
                    other.len()
                )));
            }
        };
        let mut response = Response::json(&Answer { forecast })?.with_tensor("next_value", output);
        if debug {
            response = response.with_tensor("timings_us", Tensor::from_slice(&[2], &[parse, run])?);
        }
        Ok(response)
    }
}

export!(Forecaster);

#[cfg(test)]
mod tests {
    use super::*;

    fn json(values: &[f64]) -> Vec<u8> {
        serde_json::to_vec(values).unwrap()
    }

    #[test]
    fn accepts_24_numbers_as_json_or_csv() {
        let values: Vec<f64> = (0..24).map(f64::from).collect();
        let want: Vec<f32> = (0..24).map(|v| v as f32).collect();
        assert_eq!(from_json(&json(&values)).unwrap(), want);
        let csv = values
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",\r\n");
        assert_eq!(from_csv(csv.as_bytes()).unwrap(), want);
        let row = values
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(from_csv(format!("{row}\n").as_bytes()).unwrap(), want);
    }

    #[test]
    fn refuses_bad_windows_with_a_reason() {
        let short: Vec<f64> = vec![1.0; 23];
        assert!(
            from_json(&json(&short))
                .unwrap_err()
                .0
                .contains("got 23 value")
        );
        assert!(
            from_json(b"{\"a\": 1}")
                .unwrap_err()
                .0
                .contains("an object")
        );
        let mut items = vec!["1"; 24];
        items[5] = "\"x\"";
        let body = format!("[{}]", items.join(","));
        assert!(
            from_json(body.as_bytes())
                .unwrap_err()
                .0
                .contains("value 5 is the string \"x\"")
        );
        items[5] = "null";
        let body = format!("[{}]", items.join(","));
        assert!(
            from_json(body.as_bytes())
                .unwrap_err()
                .0
                .contains("value 5 is null")
        );
        assert!(
            from_json(b"[NaN]")
                .unwrap_err()
                .0
                .contains("not valid JSON")
        );
        items[5] = "1e39";
        let body = format!("[{}]", items.join(","));
        assert!(
            from_json(body.as_bytes())
                .unwrap_err()
                .0
                .contains("not a finite number")
        );
        let mut fields = vec!["1"; 24];
        fields[3] = "NaN";
        assert!(
            from_csv(fields.join(",").as_bytes())
                .unwrap_err()
                .0
                .contains("value 3 is NaN")
        );
        fields[3] = "abc";
        assert!(
            from_csv(fields.join(",").as_bytes())
                .unwrap_err()
                .0
                .contains("value 3 (\"abc\") is not a number")
        );
    }
}

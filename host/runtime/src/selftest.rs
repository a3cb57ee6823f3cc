//! Self-test vectors: a plugin version's `[[self-test]]` entries, each an input file of the
//! plugin and the JSON its response body must equal (numbers within the vector's tolerance,
//! everything else exactly). The gateway runs them after pre-instantiating a version and
//! before publishing it; a failure names the vector and the first differing JSON path.

use std::path::Path;

use serde_json::Value;

use crate::{InferRequest, LoadedPlugin, PluginFiles};
use edgeplug_bundle::manifest::SelfTest;

/// Why a self-test vector failed.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    #[error("self-test {name:?}: file {path:?} is not in the plugin")]
    MissingFile { name: String, path: String },
    #[error("self-test {name:?}: expected output {path:?} is not JSON: {message}")]
    BadExpectation {
        name: String,
        path: String,
        message: String,
    },
    #[error("self-test {name:?}: the plugin failed: {message}")]
    Failed { name: String, message: String },
    #[error("self-test {name:?}: the response is not JSON ({content_type}): {message}")]
    NotJson {
        name: String,
        content_type: String,
        message: String,
    },
    #[error("self-test {name:?}: at {path}: {mismatch}")]
    Mismatch {
        name: String,
        /// JSON path of the first difference, e.g. `$.probabilities[3]`.
        path: String,
        mismatch: String,
    },
}

/// Runs every self-test vector of `files`' manifest on `plugin` in order and stops at the
/// first failure. Returns how many vectors passed. Blocking (it calls the plugin).
pub fn run(plugin: &LoadedPlugin, files: &PluginFiles) -> Result<usize, SelfTestError> {
    run_via(files, &|request| plugin.infer(request))
}

/// [`run`] with each vector answered by `infer` (the gate's self-tests of a candidate head
/// answer through [`LoadedPlugin::infer_with_head`]).
pub fn run_via(files: &PluginFiles, infer: &Infer<'_>) -> Result<usize, SelfTestError> {
    let tests = &files.manifest.self_tests;
    for test in tests {
        run_one_via(files, test, infer)?;
    }
    Ok(tests.len())
}

/// How a vector is answered.
pub type Infer<'a> = dyn Fn(InferRequest) -> Result<crate::InferResponse, crate::InvokeError> + 'a;

/// The content type a vector's input is sent with: its own, else from the file extension.
pub fn input_content_type(test: &SelfTest) -> String {
    test.content_type.clone().unwrap_or_else(|| {
        crate::content_type::content_type_for(Path::new(&test.input)).to_string()
    })
}

/// Runs one self-test vector on `plugin`.
pub fn run_one(
    plugin: &LoadedPlugin,
    files: &PluginFiles,
    test: &SelfTest,
) -> Result<(), SelfTestError> {
    run_one_via(files, test, &|request| plugin.infer(request))
}

fn run_one_via(
    files: &PluginFiles,
    test: &SelfTest,
    infer: &Infer<'_>,
) -> Result<(), SelfTestError> {
    let file = |path: &str| {
        files
            .files
            .get(path)
            .ok_or_else(|| SelfTestError::MissingFile {
                name: test.name.clone(),
                path: path.to_string(),
            })
    };
    let input = file(&test.input)?;
    let expected: Value =
        serde_json::from_slice(file(&test.expect)?).map_err(|e| SelfTestError::BadExpectation {
            name: test.name.clone(),
            path: test.expect.clone(),
            message: e.to_string(),
        })?;
    let content_type = input_content_type(test);
    let response = infer(InferRequest {
        content_type,
        body: input.to_vec(),
        tensors: Vec::new(),
    })
    .map_err(|e| SelfTestError::Failed {
        name: test.name.clone(),
        message: e.to_string(),
    })?;
    let actual: Value =
        serde_json::from_slice(&response.body).map_err(|e| SelfTestError::NotJson {
            name: test.name.clone(),
            content_type: response.content_type.clone(),
            message: e.to_string(),
        })?;
    compare(&actual, &expected, test.tolerance, "$").map_err(|(path, mismatch)| {
        SelfTestError::Mismatch {
            name: test.name.clone(),
            path,
            mismatch,
        }
    })
}

/// Compares `actual` with `expected`: numbers within `tolerance` (absolute), objects with the
/// same keys, arrays of the same length, everything else equal. Returns the JSON path of the
/// first difference and what differs there.
pub fn compare(
    actual: &Value,
    expected: &Value,
    tolerance: f64,
    path: &str,
) -> Result<(), (String, String)> {
    match (actual, expected) {
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (
                a.as_f64().unwrap_or(f64::NAN),
                e.as_f64().unwrap_or(f64::NAN),
            );
            let close = (a - e).abs() <= tolerance;
            if close {
                Ok(())
            } else {
                Err((
                    path.to_string(),
                    format!("expected {e}, got {a} (tolerance {tolerance})"),
                ))
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            if a.len() != e.len() {
                return Err((
                    path.to_string(),
                    format!("expected {} elements, got {}", e.len(), a.len()),
                ));
            }
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                compare(a, e, tolerance, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Object(a), Value::Object(e)) => {
            if let Some(key) = e.keys().find(|k| !a.contains_key(*k)) {
                return Err((path.to_string(), format!("missing key {key:?}")));
            }
            if let Some(key) = a.keys().find(|k| !e.contains_key(*k)) {
                return Err((path.to_string(), format!("unexpected key {key:?}")));
            }
            for (key, e) in e {
                compare(&a[key], e, tolerance, &format!("{path}.{key}"))?;
            }
            Ok(())
        }
        (a, e) if a == e => Ok(()),
        (a, e) => Err((path.to_string(), format!("expected {e}, got {a}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::compare;
    use serde_json::json;

    #[test]
    fn numbers_within_tolerance_everything_else_exact() {
        let expected = json!({"label": 7, "probabilities": [0.1, 0.9], "name": "seven"});
        let close = json!({"label": 7, "probabilities": [0.10005, 0.89996], "name": "seven"});
        assert!(compare(&close, &expected, 1e-4, "$").is_ok());

        let far = json!({"label": 7, "probabilities": [0.1, 0.8], "name": "seven"});
        let (path, why) = compare(&far, &expected, 1e-4, "$").unwrap_err();
        assert_eq!(path, "$.probabilities[1]");
        assert!(why.contains("expected 0.9"), "{why}");

        let label = json!({"label": 3, "probabilities": [0.1, 0.9], "name": "seven"});
        assert_eq!(
            compare(&label, &expected, 0.5, "$").unwrap_err().0,
            "$.label"
        );

        let short = json!({"label": 7, "probabilities": [0.1], "name": "seven"});
        assert!(
            compare(&short, &expected, 1e-4, "$")
                .unwrap_err()
                .1
                .contains("2 elements")
        );

        let extra = json!({"label": 7, "probabilities": [0.1, 0.9], "name": "seven", "x": 1});
        assert!(
            compare(&extra, &expected, 1e-4, "$")
                .unwrap_err()
                .1
                .contains("unexpected key")
        );

        let missing = json!({"label": 7, "probabilities": [0.1, 0.9]});
        assert!(
            compare(&missing, &expected, 1e-4, "$")
                .unwrap_err()
                .1
                .contains("missing key")
        );

        let text = json!({"label": 7, "probabilities": [0.1, 0.9], "name": "eight"});
        assert_eq!(
            compare(&text, &expected, 1e-4, "$").unwrap_err().0,
            "$.name"
        );

        // A number never equals a string, whatever the tolerance.
        assert!(compare(&json!("1"), &json!(1), 10.0, "$").is_err());
    }
}

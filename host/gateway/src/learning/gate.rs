//! The gate a trained head passes before it goes live, apart from the self-tests: its
//! accuracy on the held-out samples (which no job trains on) may be at most
//! `max_accuracy_drop` below the live head's, and on the plugin's reference set (the classes
//! its shipped head knows) at most `max_original_drop` below. Pure: features in, verdict out.

use edgeplug_kernels::Tensor;
use edgeplug_train::Head;
use edgeplug_train::samples::Sample;
use serde::Serialize;

/// Correct answers out of a total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Accuracy {
    pub correct: usize,
    pub total: usize,
}

impl Accuracy {
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

/// A candidate's and the live head's accuracy on one set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    pub candidate: Accuracy,
    pub live: Accuracy,
}

/// Labeled feature rows, [n, features].
pub struct LabeledFeatures {
    pub features: Tensor,
    pub labels: Vec<usize>,
}

/// How much a new head may lose.
#[derive(Debug, Clone, Copy)]
pub struct Margins {
    pub max_accuracy_drop: f64,
    pub max_original_drop: f64,
}

/// The held-out and reference comparisons, and the first bound the candidate broke.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub held_out: Option<Comparison>,
    pub reference: Option<Comparison>,
    pub refusal: Option<String>,
}

/// Whether a sample is held out of training: decided by a hash of its contents, so a sample
/// stays on its side of the split while older samples rotate out of the store.
pub fn is_held_out(sample: &Sample, percent: u32) -> bool {
    let mut h = crc32fast::Hasher::new();
    h.update(&sample.label.to_le_bytes());
    h.update(sample.content_type.as_bytes());
    h.update(&sample.input);
    h.finalize() % 100 < percent.min(100)
}

/// Training and held-out samples.
pub fn split(samples: Vec<Sample>, percent: u32) -> (Vec<Sample>, Vec<Sample>) {
    samples.into_iter().partition(|s| !is_held_out(s, percent))
}

fn accuracy(head: &Head, set: &LabeledFeatures) -> Result<Accuracy, String> {
    if set.labels.is_empty() {
        return Ok(Accuracy {
            correct: 0,
            total: 0,
        });
    }
    let e = head
        .evaluate(&set.features, &set.labels)
        .map_err(|e| e.to_string())?;
    Ok(Accuracy {
        correct: e.correct,
        total: e.total,
    })
}

/// Compares `candidate` with `live` on the held-out and reference sets (either may be
/// empty: then it is not judged).
pub fn judge(
    candidate: &Head,
    live: &Head,
    held_out: &LabeledFeatures,
    reference: &LabeledFeatures,
    margins: Margins,
) -> Verdict {
    if candidate.spec() != live.spec() {
        return Verdict {
            held_out: None,
            reference: None,
            refusal: Some(format!(
                "the head's shape {:?} is not the live head's {:?}",
                candidate.spec(),
                live.spec()
            )),
        };
    }
    let compare = |set: &LabeledFeatures| -> Result<Option<Comparison>, String> {
        if set.labels.is_empty() {
            return Ok(None);
        }
        Ok(Some(Comparison {
            candidate: accuracy(candidate, set)?,
            live: accuracy(live, set)?,
        }))
    };
    let (held, reference) = match (compare(held_out), compare(reference)) {
        (Ok(h), Ok(r)) => (h, r),
        (Err(e), _) | (_, Err(e)) => {
            return Verdict {
                held_out: None,
                reference: None,
                refusal: Some(format!("the head cannot be evaluated: {e}")),
            };
        }
    };
    let check = |c: Option<Comparison>, margin: f64, what: &str| {
        let c = c?;
        let drop = c.live.rate() - c.candidate.rate();
        (drop > margin).then(|| {
            format!(
                "{what} accuracy {:.4} ({}/{}) is {:.4} below the live head's {:.4}, more than the allowed {margin}",
                c.candidate.rate(),
                c.candidate.correct,
                c.candidate.total,
                drop,
                c.live.rate()
            )
        })
    };
    let refusal = check(held, margins.max_accuracy_drop, "held-out")
        .or_else(|| check(reference, margins.max_original_drop, "reference-set"));
    Verdict {
        held_out: held,
        reference,
        refusal,
    }
}

/// Stacks [1, features] rows into one [n, features] tensor.
pub fn stack(rows: &[Tensor]) -> Result<Tensor, String> {
    let width = rows.first().map_or(0, |r| r.len());
    let mut data = Vec::with_capacity(rows.len() * width);
    for row in rows {
        let values = row.as_f32().map_err(|e| e.to_string())?;
        if values.len() != width {
            return Err(format!(
                "feature rows of different widths: {width} and {}",
                values.len()
            ));
        }
        data.extend_from_slice(values);
    }
    Tensor::from_f32(vec![rows.len(), width], data).map_err(|e| e.to_string())
}

/// The top-level `keys` of a JSON answer (all of it when `keys` is empty, or when it is not a
/// JSON object: the comparison then says what differs).
pub fn project_answer(body: &[u8], keys: &[String]) -> Vec<u8> {
    if keys.is_empty() {
        return body.to_vec();
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => {
            let kept: serde_json::Map<_, _> =
                map.into_iter().filter(|(k, _)| keys.contains(k)).collect();
            serde_json::to_vec(&kept).unwrap_or_else(|_| body.to_vec())
        }
        _ => body.to_vec(),
    }
}

/// `files` with each self-test's expected answer cut to `keys` (see [`project_answer`]).
pub fn project_expectations(
    files: &edgeplug_runtime::PluginFiles,
    keys: &[String],
) -> Result<edgeplug_runtime::PluginFiles, String> {
    let mut projected = files.clone();
    for test in &files.manifest.self_tests {
        let expected = files.get(&test.expect).map_err(|e| format!("{e:#}"))?;
        projected
            .files
            .insert(test.expect.clone(), project_answer(expected, keys).into());
    }
    Ok(projected)
}

/// Parses a `[learn] reference` file: one feedback-shaped JSON object per line.
pub fn parse_reference(text: &[u8]) -> Result<Vec<Sample>, String> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        label: u32,
        content_type: String,
        input: String,
    }
    let text = std::str::from_utf8(text).map_err(|e| format!("not UTF-8: {e}"))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let line: Line = serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1))?;
            let input = base64::engine::general_purpose::STANDARD
                .decode(line.input.as_bytes())
                .map_err(|e| format!("line {}: input is not base64: {e}", i + 1))?;
            Ok(Sample {
                label: line.label,
                content_type: line.content_type,
                input,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplug_train::HeadSpec;

    const SPEC: HeadSpec = HeadSpec {
        features: 2,
        classes: 2,
        hidden: None,
    };

    /// A head that answers class 0 when x0 > x1 (`right`), or always class 1.
    fn head(right: bool) -> Head {
        let weights = if right {
            vec![1.0, 0.0, 0.0, 1.0]
        } else {
            vec![0.0, 1.0, 0.0, 1.0]
        };
        Head::from_params(
            SPEC,
            vec![weights, vec![0.0, if right { 0.0 } else { 1.0 }]],
        )
        .unwrap()
    }

    fn set(n: usize) -> LabeledFeatures {
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let label = i % 2;
            data.extend_from_slice(if label == 0 { &[2.0, 1.0] } else { &[1.0, 2.0] });
            labels.push(label);
        }
        LabeledFeatures {
            features: Tensor::from_f32(vec![n, 2], data).unwrap(),
            labels,
        }
    }

    const MARGINS: Margins = Margins {
        max_accuracy_drop: 0.02,
        max_original_drop: 0.02,
    };

    #[test]
    fn a_better_head_passes_and_a_worse_one_is_refused_naming_the_set() {
        let empty = LabeledFeatures {
            features: Tensor::from_f32(vec![0, 2], vec![]).unwrap(),
            labels: vec![],
        };
        let pass = judge(&head(true), &head(false), &set(10), &set(6), MARGINS);
        assert!(pass.refusal.is_none(), "{pass:?}");
        assert_eq!(pass.held_out.unwrap().candidate.correct, 10);
        assert_eq!(pass.held_out.unwrap().live.correct, 5);
        let refused = judge(&head(false), &head(true), &set(10), &empty, MARGINS);
        let why = refused.refusal.unwrap();
        assert!(why.contains("held-out accuracy 0.5000 (5/10)"), "{why}");
        // The held-out set is fine but the reference set is not.
        let refused = judge(&head(false), &head(true), &empty, &set(4), MARGINS);
        assert!(refused.refusal.unwrap().contains("reference-set"));
        // Nothing to judge on: only the self-tests decide.
        assert!(
            judge(&head(false), &head(true), &empty, &empty, MARGINS)
                .refusal
                .is_none()
        );
    }

    #[test]
    fn a_head_of_another_shape_is_refused() {
        let other = Head::new(
            HeadSpec {
                features: 2,
                classes: 3,
                hidden: None,
            },
            1,
        )
        .unwrap();
        let v = judge(&other, &head(true), &set(2), &set(2), MARGINS);
        assert!(v.refusal.unwrap().contains("shape"));
    }

    #[test]
    fn the_split_is_stable_and_near_the_percentage() {
        let samples: Vec<Sample> = (0..1000u32)
            .map(|i| Sample {
                label: i % 10,
                content_type: "application/json".into(),
                input: format!("[{i}]").into_bytes(),
            })
            .collect();
        let (train, held) = split(samples.clone(), 20);
        assert!((150..250).contains(&held.len()), "{}", held.len());
        assert_eq!(train.len() + held.len(), 1000);
        // The same sample lands on the same side whatever else is in the store.
        let (_, held_again) = split(samples[500..].to_vec(), 20);
        assert!(held_again.iter().all(|s| held.contains(s)));
        assert!(split(samples, 0).1.is_empty());
    }

    #[test]
    fn answers_are_cut_to_the_keys_a_trained_head_must_keep() {
        let body = br#"{"label": 7, "probabilities": [0.1, 0.9]}"#;
        let keys = vec!["label".to_string()];
        assert_eq!(project_answer(body, &keys), br#"{"label":7}"#);
        assert_eq!(project_answer(body, &[]), body.to_vec());
        assert_eq!(project_answer(b"[1, 2]", &keys), b"[1, 2]".to_vec());
    }

    #[test]
    fn reference_lines_parse_and_bad_ones_name_their_line() {
        let ok = parse_reference(
            b"{\"label\": 3, \"content_type\": \"application/json\", \"input\": \"WzFd\"}\n\n",
        )
        .unwrap();
        assert_eq!(ok[0].input, b"[1]");
        let bad = parse_reference(b"{\"label\": 3}\n").unwrap_err();
        assert!(bad.starts_with("line 1"), "{bad}");
    }
}

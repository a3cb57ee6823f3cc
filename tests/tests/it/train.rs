//! The `train` interface of WIT 0.1.1 from a plugin (tests/plugins/trainer): a head trained in
//! the host, its refusals and its memory charge; and a component built against WIT 0.1.0
//! running unchanged on the host that added it.

use edgeplug_runtime::{InferRequest, InvokeError, PluginErrorCode, PluginFiles};
use edgeplug_tests::{TRAINER_WASM, fixture, repo, runtime};
use serde_json::{Value, json};

fn trainer() -> edgeplug_runtime::LoadedPlugin {
    let files = PluginFiles::from_dir(
        &repo().join("tests/plugins/trainer"),
        Some(TRAINER_WASM.as_ref()),
    )
    .unwrap();
    runtime().load(&files).unwrap()
}

fn job(value: Value) -> InferRequest {
    InferRequest {
        content_type: "application/json".into(),
        body: serde_json::to_vec(&value).unwrap(),
        tensors: Vec::new(),
    }
}

/// Two clusters, around (2, 2) (class 0) and (-2, -2) (class 1), 20 points each.
fn clusters() -> (Vec<Vec<f32>>, Vec<u32>) {
    let mut rng = edgeplug_train::rng::SplitMix64::new(4);
    (0..40)
        .map(|i| {
            let (center, label) = if i % 2 == 0 { (2.0, 0) } else { (-2.0, 1) };
            (
                vec![center + rng.next_symmetric(), center + rng.next_symmetric()],
                label,
            )
        })
        .unzip()
}

#[test]
fn a_plugin_trains_a_head_in_the_host() {
    let plugin = trainer();
    let (features, labels) = clusters();
    for (hidden, optimizer, shapes) in [
        (None, "adam", json!([[2, 2], [2]])),
        (Some(8), "momentum", json!([[2, 8], [8], [8, 2], [2]])),
    ] {
        let answer = plugin
            .infer(job(json!({
                "features": features, "labels": labels, "steps": 60, "optimizer": optimizer,
                "lr": 0.05, "hidden": hidden, "seed": 3, "clip_norm": null,
            })))
            .unwrap();
        let answer: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(answer["after"]["correct"], 40, "{answer}");
        let losses: Vec<f64> = answer["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_f64().unwrap())
            .collect();
        assert_eq!(losses.len(), 60);
        assert!(losses[59] < losses[0] / 5.0, "{losses:?}");
        assert_eq!(answer["weights"], shapes);
    }
}

#[test]
fn a_step_that_is_not_finite_is_refused_and_a_head_over_the_budget_is_a_limit() {
    let plugin = trainer();
    let (features, labels) = clusters();
    // A learning rate near f32::MAX overflows the weights: the step is refused.
    let error = plugin
        .infer(job(json!({
            "features": features, "labels": labels, "steps": 2, "optimizer": "sgd",
            "lr": 3.0e38, "hidden": null, "seed": 3, "clip_norm": null,
        })))
        .unwrap_err();
    match &error {
        InvokeError::Plugin { code, message } => {
            assert_eq!(*code, PluginErrorCode::InvalidArgument);
            assert!(message.contains("not finite"), "{message}");
        }
        other => panic!("expected the step's refusal, got {other:?}"),
    }
    let error = plugin
        .infer(job(json!({
            "features": features, "labels": labels, "steps": 1, "optimizer": "adam",
            "lr": -1.0, "hidden": null, "seed": 3, "clip_norm": null,
        })))
        .unwrap_err();
    assert!(error.message().contains("learning rate"), "{error}");
    // 1000 features x 2000 classes is 8 MB of weights, over the plugin's 4 MiB of tensors.
    let error = plugin
        .infer(job(json!({
            "features": [vec![0.5f32; 1000]], "labels": [1999], "steps": 1, "optimizer": "sgd",
            "lr": 0.1, "hidden": null, "seed": 3, "clip_norm": null,
        })))
        .unwrap_err();
    assert!(
        matches!(error, InvokeError::TensorMemoryExhausted { .. }),
        "{error:?}"
    );
    // And the plugin still trains afterwards.
    assert!(
        plugin
            .infer(job(json!({
                "features": features, "labels": labels, "steps": 1, "optimizer": "sgd",
                "lr": 0.1, "hidden": null, "seed": 3, "clip_norm": null,
            })))
            .is_ok()
    );
}

#[test]
fn a_component_built_against_wit_0_1_0_runs_unchanged() {
    // The echo test plugin as built before WIT 0.1.1 added `train` (committed as it was).
    let files = PluginFiles::from_dir(
        &repo().join("tests/plugins/echo"),
        Some(&fixture("components/echo-wit-0.1.0.wasm")),
    )
    .unwrap();
    let plugin = runtime().load(&files).unwrap();
    let answer = plugin
        .infer(InferRequest {
            content_type: "text/plain".into(),
            body: b"still here".to_vec(),
            tensors: Vec::new(),
        })
        .unwrap();
    assert_eq!(answer.body, b"still here");
}

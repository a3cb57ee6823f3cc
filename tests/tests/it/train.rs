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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_kept_on_disk_bounded_and_only_with_its_scope() {
    use base64::Engine as _;
    use edgeplug_gateway::auth::{Scope, TokenEntry};
    use edgeplug_tests::gateway::{TOKEN, TestGateway, assert_status, digits_bundle, req};

    const LABELER: &str = "labeler-secret-0123456789abcdef0123456789abcdef";
    const DEPLOYER: &str = "deployer-secret-0123456789abcdef0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let tokens: String = [
        ("labeler", LABELER, Scope::Feedback("digits".into())),
        ("deployer", DEPLOYER, Scope::Deploy("digits".into())),
    ]
    .into_iter()
    .map(|(name, secret, scope)| {
        TokenEntry::for_secret(name, secret, vec![scope])
            .unwrap()
            .to_toml()
            + "\n"
    })
    .collect();
    std::fs::write(dir.path().join("tokens.toml"), tokens).unwrap();
    let gw = TestGateway::start_in(
        dir,
        "tokens_file = \"tokens.toml\"\nfeedback_max_samples = 3\n",
    )
    .await;
    assert_status(
        &gw.push("digits", digits_bundle(&gw.key, "1.0.0")).await,
        200,
    );
    let seven = std::fs::read(fixture("digits/seven.json")).unwrap();
    let body = |label: u32, input: &str| {
        json!({"label": label, "input": input, "content_type": "application/json"}).to_string()
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(&seven);
    let send = |token: Option<&'static str>, path: &'static str, text: String| {
        let mut request = req("POST", path).header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        gw.send(
            request
                .body(edgeplug::client::ChunkedBody::new(text.into_bytes()))
                .unwrap(),
        )
    };
    const PATH: &str = "/v1/admin/plugins/digits/feedback";
    for (i, want) in [1, 2, 3, 3, 3].into_iter().enumerate() {
        let answer = send(Some(LABELER), PATH, body(7, &encoded)).await;
        assert_status(&answer, 200);
        let answer: Value = serde_json::from_slice(answer.body()).unwrap();
        assert_eq!(answer["samples"], want, "after {} samples", i + 1);
    }
    assert_status(&send(Some(DEPLOYER), PATH, body(7, &encoded)).await, 403);
    assert_status(&send(None, PATH, body(7, &encoded)).await, 401);
    assert_status(
        &send(Some(LABELER), PATH, body(7, "not base64!")).await,
        400,
    );
    assert_status(
        &send(
            Some(LABELER),
            PATH,
            json!({"label": 1, "inputs": ""}).to_string(),
        )
        .await,
        400,
    );
    assert_status(
        &send(
            Some(TOKEN),
            "/v1/admin/plugins/nope/feedback",
            body(1, &encoded),
        )
        .await,
        404,
    );
    // On disk: the newest three, as sent.
    let store = edgeplug_train::samples::SampleStore::open(
        &gw.gateway.config.state_dir.join("samples/digits.samples"),
        edgeplug_train::samples::Retention {
            max_samples: 100,
            max_bytes: 1 << 20,
        },
    )
    .unwrap();
    let samples = store.samples().unwrap();
    assert_eq!(samples.len(), 3);
    assert!(
        samples
            .iter()
            .all(|s| s.label == 7 && s.input == seven && s.content_type == "application/json")
    );
    // Every attempt is audited, the refused ones too.
    let audit = edgeplug_gateway::audit::read(gw.gateway.audit.path()).unwrap();
    let feedback = audit.iter().filter(|r| r.action == "feedback").count();
    assert!(feedback >= 8, "{feedback} feedback records");
}

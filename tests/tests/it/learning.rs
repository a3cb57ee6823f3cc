//! Learning at the edge through a gateway (issue 16): the digits plugin (world
//! `learning-plugin`) fine-tunes its head from the feedback clients sent, the gate lets a good
//! head go live and keeps a bad one out, heads are signed checkpoints that survive a restart,
//! one call rolls back, and the budgets bound a job.

use std::sync::Arc;

use base64::Engine as _;
use edgeplug::client::ChunkedBody;
use edgeplug_gateway::Gateway;
use edgeplug_gateway::learning::HeadOrigin;
use edgeplug_tests::gateway::{
    TOKEN, TestGateway, assert_status, error_code, example_bundle, json_of, req,
};
use edgeplug_tests::{DIGITS_WASM, FORECASTER_WASM, digits_test_bodies};
use edgeplug_train::{Head, HeadSpec};
use serde_json::{Value, json};

async fn admin_post(
    gw: &TestGateway,
    path: &str,
    body: Vec<u8>,
) -> hyper::Response<hyper::body::Bytes> {
    gw.send(
        req("POST", path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(ChunkedBody::new(body))
            .unwrap(),
    )
    .await
}

async fn feedback(gw: &TestGateway, samples: &[(Vec<u8>, u32)]) {
    for (input, label) in samples {
        let body = json!({
            "label": label,
            "content_type": "application/json",
            "input": base64::engine::general_purpose::STANDARD.encode(input),
        });
        let r = admin_post(
            gw,
            "/v1/admin/plugins/digits/feedback",
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_status(&r, 200);
    }
}

async fn head_of(gw: &TestGateway) -> Value {
    let listing = json_of(&gw.get("/v1/plugins").await);
    listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "digits")
        .unwrap()["head"]
        .clone()
}

async fn label_of(gw: &TestGateway, body: &[u8]) -> u64 {
    let r = gw
        .post(
            "/v1/plugins/digits/infer",
            "application/json",
            body.to_vec(),
        )
        .await;
    assert_status(&r, 200);
    json_of(&r)["label"].as_u64().unwrap()
}

async fn learning_gateway(extra: &str) -> TestGateway {
    let gw = TestGateway::start(&format!("[learning]\nholdout_percent = 25\n{extra}")).await;
    let bundle = example_bundle(&gw.key, "digits", DIGITS_WASM);
    assert_status(&gw.push("digits", bundle).await, 200);
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_learned_from_feedback_goes_live_through_the_gate_and_rolls_back() {
    let gw = learning_gateway("max_steps = 150\n").await;
    let data = digits_test_bodies();
    assert!(head_of(&gw).await.is_null(), "no head before any job");
    feedback(&gw, &data[..240]).await;

    let r = admin_post(&gw, "/v1/admin/plugins/digits/finetune?seed=1", Vec::new()).await;
    assert_status(&r, 200);
    let done = json_of(&r);
    let job = &done["job"];
    // About three quarters of the 240 samples train; the rest are held out for the gate.
    let trained = job["samples"].as_u64().unwrap();
    assert!((140..=220).contains(&trained), "{done}");
    assert!(job["steps"].as_u64().unwrap() > 0 && job["steps"].as_u64().unwrap() <= 150);
    let gate = &done["gate"];
    assert_eq!(gate["accepted"], true, "{done}");
    assert_eq!(gate["sequence"], 1);
    let held = &gate["held_out"];
    assert_eq!(
        held["candidate"]["total"].as_u64().unwrap() + trained,
        240,
        "{done}"
    );
    // The plugin's reference set was judged too, and the self-tests passed with the head.
    assert!(gate["reference"]["candidate"]["total"].as_u64().unwrap() > 0);
    assert!(gate["self_tests"].as_u64().unwrap() >= 1);

    let head = head_of(&gw).await;
    assert_eq!(head["live"]["sequence"], 1, "{head}");
    assert_eq!(head["live"]["origin"], "local");
    let metrics = String::from_utf8(gw.get("/metrics").await.into_body().to_vec()).unwrap();
    assert!(metrics.contains("edgeplug_head_live_sequence{plugin=\"digits\"} 1"));
    assert!(metrics.contains("edgeplug_finetune_jobs_total{plugin=\"digits\",outcome=\"done\"} 1"));
    assert!(metrics.contains("edgeplug_head_gate_total{plugin=\"digits\",verdict=\"accepted\"} 1"));

    // Requests now answer with the trained head: still right on digits it never saw.
    let unseen = &data[400..];
    let mut right = 0;
    for (body, label) in unseen {
        right += u64::from(label_of(&gw, body).await == u64::from(*label));
    }
    assert!(
        right as f64 / unseen.len() as f64 > 0.9,
        "{right}/{}",
        unseen.len()
    );

    // A deliberately bad head (random weights) is refused and changes nothing.
    let spec = HeadSpec {
        features: head_features(&gw.gateway),
        classes: 10,
        hidden: None,
    };
    let bad = Head::new(spec, 99).unwrap();
    let report = gw
        .gateway
        .install_head("digits", bad, HeadOrigin::Local { samples: 0 })
        .await
        .unwrap();
    assert!(!report.accepted);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("held-out accuracy"),
        "{report:?}"
    );
    assert_eq!(head_of(&gw).await["live"]["sequence"], 1);
    let metrics = String::from_utf8(gw.get("/metrics").await.into_body().to_vec()).unwrap();
    assert!(metrics.contains("edgeplug_head_gate_total{plugin=\"digits\",verdict=\"refused\"} 1"));

    // A second job makes checkpoint 2; a restart on the same directory serves it again,
    // verified against the device key.
    let r = admin_post(&gw, "/v1/admin/plugins/digits/finetune?seed=2", Vec::new()).await;
    assert_eq!(json_of(&r)["gate"]["sequence"], 2, "{}", json_of(&r));
    let config = gw.gateway.config.clone();
    let reopened = tokio::task::spawn_blocking(move || Gateway::open(config))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reopened.learning.status("digits").unwrap()["live"]["sequence"],
        2
    );
    assert!(
        reopened
            .registry
            .runtime()
            .live_heads()
            .get("digits")
            .is_some()
    );
    drop(reopened);

    // One call goes back to checkpoint 1, another to the head the plugin ships.
    let r = admin_post(&gw, "/v1/admin/plugins/digits/head/rollback", Vec::new()).await;
    assert_status(&r, 200);
    assert_eq!(json_of(&r)["live_sequence"], 1);
    let r = admin_post(&gw, "/v1/admin/plugins/digits/head/rollback", Vec::new()).await;
    assert_eq!(json_of(&r)["live_sequence"], Value::Null);
    assert_eq!(label_of(&gw, &data[0].0).await, u64::from(data[0].1));
    let r = admin_post(&gw, "/v1/admin/plugins/digits/head/rollback", Vec::new()).await;
    assert_status(&r, 409);
}

/// The width of the digits plugin's features, from a zero-step job (the shipped head).
fn head_features(gw: &Arc<Gateway>) -> usize {
    let plugin = gw.registry.get("digits").unwrap();
    let mut session = plugin
        .plugin
        .learn_session(edgeplug_runtime::learning::SessionBudget {
            wall: std::time::Duration::from_secs(10),
            tensor_bytes: 16 << 20,
        })
        .unwrap();
    let outcome = session
        .finetune(edgeplug_runtime::learning::Job {
            start: None,
            samples: Vec::new().into(),
            max_steps: 0,
            seed: 0,
        })
        .unwrap();
    assert_eq!(outcome.steps, 0);
    outcome.head.spec().features
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stays_within_its_step_budget_and_a_plugin_that_does_not_learn_is_refused() {
    let gw = learning_gateway("max_steps = 3\n").await;
    feedback(&gw, &digits_test_bodies()[..40]).await;
    let r = admin_post(&gw, "/v1/admin/plugins/digits/finetune", Vec::new()).await;
    assert_status(&r, 200);
    assert_eq!(json_of(&r)["job"]["steps"], 3, "{}", json_of(&r));

    let r = admin_post(&gw, "/v1/admin/plugins/nope/finetune", Vec::new()).await;
    assert_status(&r, 404);
    let r = admin_post(&gw, "/v1/admin/plugins/digits/finetune?steps=9", Vec::new()).await;
    assert_status(&r, 400);
    // The forecaster example exports no learner.
    let forecaster = example_bundle(&gw.key, "forecaster", FORECASTER_WASM);
    assert_status(&gw.push("forecaster", forecaster).await, 200);
    let r = admin_post(&gw, "/v1/admin/plugins/forecaster/finetune", Vec::new()).await;
    assert_status(&r, 409);
    assert_eq!(error_code(&r), "not-learning");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_may_name_a_request_the_plugin_answered_instead_of_sending_it_again() {
    let gw = learning_gateway("").await;
    let (body, label) = digits_test_bodies()[5].clone();
    let answered = gw
        .post("/v1/plugins/digits/infer", "application/json", body.clone())
        .await;
    assert_status(&answered, 200);
    let id = answered.headers()["x-edgeplug-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let by_id = json!({"label": label, "request_id": id});
    let r = admin_post(
        &gw,
        "/v1/admin/plugins/digits/feedback",
        serde_json::to_vec(&by_id).unwrap(),
    )
    .await;
    assert_status(&r, 200);
    assert_eq!(json_of(&r)["samples"], 1);
    // What was stored is the input the plugin answered, with its content type.
    let stored = gw.gateway.samples_of("digits").unwrap();
    assert_eq!(stored[0].input, body);
    assert_eq!(stored[0].content_type, "application/json");
    assert_eq!(stored[0].label, label);

    let unknown = json!({"label": 1, "request_id": "0123456789abcdef01234567"});
    let r = admin_post(
        &gw,
        "/v1/admin/plugins/digits/feedback",
        serde_json::to_vec(&unknown).unwrap(),
    )
    .await;
    assert_status(&r, 404);
    // The same under the plugin's own path, as applications call it; still with a token.
    let again = json!({"label": label, "request_id": id});
    let r = admin_post(
        &gw,
        "/v1/plugins/digits/feedback",
        serde_json::to_vec(&again).unwrap(),
    )
    .await;
    assert_status(&r, 200);
    assert_eq!(json_of(&r)["samples"], 2);
    let anonymous = gw
        .post(
            "/v1/plugins/digits/feedback",
            "application/json",
            serde_json::to_vec(&again).unwrap(),
        )
        .await;
    assert_status(&anonymous, 401);
    // An input and a request id at once is ambiguous.
    let both = json!({"label": 1, "request_id": id, "input": "WzFd"});
    let r = admin_post(
        &gw,
        "/v1/admin/plugins/digits/feedback",
        serde_json::to_vec(&both).unwrap(),
    )
    .await;
    assert_status(&r, 400);
    // Plugins that do not learn get no request id.
    let forecaster = example_bundle(&gw.key, "forecaster", FORECASTER_WASM);
    assert_status(&gw.push("forecaster", forecaster).await, 200);
    let window = std::fs::read(
        edgeplug_tests::repo().join("plugins/forecaster/selftest/window-1984-2007.json"),
    )
    .unwrap();
    let r = gw
        .post("/v1/plugins/forecaster/infer", "application/json", window)
        .await;
    assert_status(&r, 200);
    assert!(r.headers().get("x-edgeplug-request-id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_fine_tunes_a_plugin_once_it_has_enough_new_samples() {
    let gw = learning_gateway("schedule_secs = 1\nmin_new_samples = 40\n").await;
    gw.gateway.spawn_learning_schedule();
    let data = digits_test_bodies();
    // Fewer than min_new_samples: ticks pass and no job runs.
    feedback(&gw, &data[..20]).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(head_of(&gw).await.is_null(), "{}", head_of(&gw).await);
    // Enough: the next tick runs a job and its head goes live through the gate.
    feedback(&gw, &data[20..80]).await;
    let began = std::time::Instant::now();
    loop {
        let head = head_of(&gw).await;
        if head["live"]["sequence"] == 1 {
            assert_eq!(head["live"]["origin"], "local");
            break;
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(60),
            "no scheduled job: {head}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let metrics = String::from_utf8(gw.get("/metrics").await.into_body().to_vec()).unwrap();
    assert!(metrics.contains("edgeplug_finetune_jobs_total{plugin=\"digits\",outcome=\"done\"} 1"));
}

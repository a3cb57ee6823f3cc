//! The gateway over real sockets on 127.0.0.1: every endpoint's answers and refusals, pushes
//! of signed bundles (and of tampered ones), self-tests, rollback, hot swap under load,
//! back-pressure, body limits, TLS, graceful shutdown, and the web page in a headless browser.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use edgeplug::client::{ChunkedBody, Connection};
use edgeplug_bundle::{self as bundle, BundleLimits, SecretKey};
use edgeplug_gateway::{Config, Gateway};
use edgeplug_tests::browser::{Browser, chromium_for_test};
use edgeplug_tests::fixture;
use edgeplug_tests::gateway::*;
use hyper::Uri;
use hyper::body::Bytes;
use serde_json::{Value, json};

// ---- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_and_refuse_precisely() {
    let mut gw = TestGateway::start("").await;
    assert_status(
        &gw.push("digits", digits_bundle(&gw.key, "1.0.0")).await,
        200,
    );

    // The page and the listing.
    let page = gw.get("/").await;
    assert_status(&page, 200);
    assert!(header(&page, "content-type").starts_with("text/html"));
    assert!(String::from_utf8_lossy(page.body()).contains("edgeplug gateway"));
    let listing = json_of(&gw.get("/v1/plugins").await);
    let digits = &listing["plugins"][0];
    assert_eq!(digits["name"], "digits");
    assert_eq!(digits["active"]["version"], "1.0.0");
    assert_eq!(digits["active"]["signer"], gw.key.key_id().to_string());
    assert_eq!(digits["active"]["self_tests"], 1);
    assert_eq!(digits["versions"][0]["version"], "1.0.0");
    assert_eq!(digits["versions"][0]["loaded"], true);

    // Invoke: JSON and PNG in, the plugin's answer out, with the version that answered.
    let seven = std::fs::read(fixture("digits/seven.json")).unwrap();
    let answer = gw
        .post(
            "/v1/plugins/digits/infer",
            "application/json",
            seven.clone(),
        )
        .await;
    assert_status(&answer, 200);
    assert_eq!(header(&answer, "content-type"), "application/json");
    assert_eq!(header(&answer, "x-edgeplug-version"), "1.0.0");
    assert_eq!(json_of(&answer)["label"], 7);
    let one = std::fs::read(fixture("images/adversarial/digit1-gray8.png")).unwrap();
    let answer = gw
        .post("/v1/plugins/digits/infer", "image/png", one.clone())
        .await;
    assert_status(&answer, 200);
    assert_eq!(json_of(&answer)["label"], 1);

    // Invoke refusals: the plugin's own verdicts, unknown plugin, wrong method, size.
    let truncated = std::fs::read(fixture("images/adversarial/truncated.png")).unwrap();
    let bad = gw
        .post("/v1/plugins/digits/infer", "image/png", truncated)
        .await;
    assert_status(&bad, 400);
    assert_eq!(error_code(&bad), "invalid-argument");
    let unsupported = gw
        .post("/v1/plugins/digits/infer", "text/plain", "hello")
        .await;
    assert_status(&unsupported, 415);
    assert_eq!(error_code(&unsupported), "unsupported");
    let missing = gw
        .post("/v1/plugins/nope/infer", "application/json", seven.clone())
        .await;
    assert_status(&missing, 404);
    assert_eq!(error_code(&missing), "plugin-not-found");
    assert_status(&gw.get("/v1/plugins/digits/infer").await, 405);
    assert_status(&gw.get("/no/such/path").await, 404);
    // The test bundle sets max_request_mib = 1.
    let big = vec![b' '; (1 << 20) + 1];
    let too_large = gw
        .post("/v1/plugins/digits/infer", "application/json", big)
        .await;
    assert_status(&too_large, 413);
    assert_eq!(error_code(&too_large), "request-too-large");
    // The connection that was refused still gets its answer, and the gateway carries on.
    assert_status(
        &gw.post(
            "/v1/plugins/digits/infer",
            "application/json",
            seven.clone(),
        )
        .await,
        200,
    );

    // /predict: the classic multipart form.
    let (form_type, form) = multipart("image", "one.png", "image/png", &one);
    let predicted = gw.post("/predict", &form_type, form).await;
    assert_status(&predicted, 200);
    assert_eq!(json_of(&predicted), json!({"prediction": 1}));
    let (form_type, form) = multipart("photo", "one.png", "image/png", &one);
    let no_image = gw.post("/predict", &form_type, form).await;
    assert_status(&no_image, 400);
    assert_eq!(error_code(&no_image), "missing-image");
    assert_status(&gw.post("/predict", "image/png", one.clone()).await, 415);

    // Open Inference Protocol v2.
    assert_eq!(json_of(&gw.get("/v2/health/live").await)["live"], true);
    assert_eq!(json_of(&gw.get("/v2/health/ready").await)["ready"], true);
    assert_eq!(json_of(&gw.get("/v2").await)["name"], "edgeplug");
    let meta = json_of(&gw.get("/v2/models/digits").await);
    assert_eq!(meta["name"], "digits");
    assert_eq!(meta["versions"][0], "1.0.0");
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [1, 1, 16, 16]})
    );
    assert_eq!(meta["outputs"][0]["name"], "probs");
    assert_status(&gw.get("/v2/models/digits/ready").await, 200);
    assert_status(&gw.get("/v2/models/digits/versions/1.0.0/ready").await, 200);
    assert_status(&gw.get("/v2/models/digits/versions/9.9.9").await, 404);
    let unknown = gw.get("/v2/models/nope").await;
    assert_status(&unknown, 404);
    assert!(
        json_of(&unknown)["error"]
            .as_str()
            .unwrap()
            .contains("nope")
    );

    let (pixels, label) = digits_tensor_input();
    let v2 = json!({
        "id": "req-1",
        "inputs": [{"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32", "data": pixels}],
        "outputs": [{"name": "probs"}],
    });
    let answer = gw
        .post(
            "/v2/models/digits/infer",
            "application/json",
            v2.to_string(),
        )
        .await;
    assert_status(&answer, 200);
    let out = json_of(&answer);
    assert_eq!(out["model_name"], "digits");
    assert_eq!(out["model_version"], "1.0.0");
    assert_eq!(out["id"], "req-1");
    assert_eq!(out["outputs"][0]["name"], "probs");
    assert_eq!(out["outputs"][0]["datatype"], "FP32");
    assert_eq!(out["outputs"][0]["shape"], json!([1, 10]));
    assert_eq!(
        argmax(out["outputs"][0]["data"].as_array().unwrap()) as i64,
        label
    );
    // Nested data and a BYTES input (the request body) work too.
    let nested: Vec<Vec<f32>> = pixels.chunks(16).map(<[f32]>::to_vec).collect();
    let v2 = json!({"inputs": [{"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32", "data": [[nested]]}]});
    let out = json_of(
        &gw.post(
            "/v2/models/digits/versions/1.0.0/infer",
            "application/json",
            v2.to_string(),
        )
        .await,
    );
    assert_eq!(
        argmax(out["outputs"][0]["data"].as_array().unwrap()) as i64,
        label
    );
    let v2 = json!({"inputs": [{"name": "body", "shape": [1], "datatype": "BYTES",
        "data": [String::from_utf8(seven.clone()).unwrap()],
        "parameters": {"content_type": "application/json"}}], "outputs": [{"name": "body"}]});
    let out = json_of(
        &gw.post(
            "/v2/models/digits/infer",
            "application/json",
            v2.to_string(),
        )
        .await,
    );
    let body: Value = serde_json::from_str(out["outputs"][0]["data"][0].as_str().unwrap()).unwrap();
    assert_eq!(body["label"], 7);
    // v2 refusals: datatype, element count, shape the plugin refuses, not JSON.
    for (input, status) in [
        (
            json!({"name": "input", "shape": [1], "datatype": "FP64", "data": [1.0]}),
            400,
        ),
        (
            json!({"name": "input", "shape": [2], "datatype": "FP32", "data": [1.0]}),
            400,
        ),
        (
            json!({"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}),
            400,
        ),
    ] {
        let answer = gw
            .post(
                "/v2/models/digits/infer",
                "application/json",
                json!({"inputs": [input]}).to_string(),
            )
            .await;
        assert_status(&answer, status);
        assert!(json_of(&answer)["error"].is_string());
    }
    assert_status(
        &gw.post("/v2/models/digits/infer", "application/json", "{")
            .await,
        400,
    );

    // Admin without the token, with a wrong one, or on an unknown plugin.
    let no_token = gw
        .send(
            req("PUT", "/v1/admin/plugins/digits")
                .body(ChunkedBody::new(digits_bundle(&gw.key, "2.0.0")))
                .unwrap(),
        )
        .await;
    assert_status(&no_token, 401);
    assert!(header(&no_token, "www-authenticate").starts_with("Bearer"));
    for path in [
        "/v1/admin/plugins/digits/rollback",
        "/v1/admin/plugins/digits",
    ] {
        let method = if path.ends_with("rollback") {
            "POST"
        } else {
            "DELETE"
        };
        let wrong = gw
            .send(
                req(method, path)
                    .header("authorization", "Bearer wrong-token")
                    .body(ChunkedBody::new(Vec::new()))
                    .unwrap(),
            )
            .await;
        assert_status(&wrong, 401);
    }
    assert_eq!(gw.active_version("digits").await.as_deref(), Some("1.0.0"));
    assert_status(&gw.rollback("nope").await, 404);

    // Metrics count what happened.
    let metrics = gw.get("/metrics").await;
    assert_status(&metrics, 200);
    let text = String::from_utf8_lossy(metrics.body()).into_owned();
    assert!(header(&metrics, "content-type").starts_with("text/plain"));
    let requests = text
        .lines()
        .find(|l| l.starts_with("edgeplug_requests_total{plugin=\"digits\",version=\"1.0.0\"}"))
        .unwrap_or_else(|| panic!("{text}"));
    let count: u64 = requests.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 8, "{requests}");
    assert!(text.contains("edgeplug_request_errors_total{plugin=\"digits\",version=\"1.0.0\",code=\"invalid-argument\"} 1"), "{text}");
    assert!(text.contains(
        "edgeplug_request_duration_seconds_bucket{plugin=\"digits\",version=\"1.0.0\",le=\"+Inf\"}"
    ));
    assert!(
        text.contains("edgeplug_swaps_total{plugin=\"digits\",version=\"1.0.0\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("edgeplug_requests_refused_total{status=\"404\"}"),
        "{text}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_verified_self_tested_and_rolled_back() {
    let mut gw = TestGateway::start("").await;
    let key = gw.key.clone();
    let seven = std::fs::read(fixture("digits/seven.json")).unwrap();
    let ask = |gw: &TestGateway| {
        let seven = seven.clone();
        let addr = gw.url();
        async move {
            let mut c = Connection::open(&addr, None).await.unwrap();
            let r = c
                .send(
                    req("POST", "/v1/plugins/digits/infer")
                        .header("content-type", "application/json")
                        .body(ChunkedBody::new(seven))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_status(&r, 200);
            header(&r, "x-edgeplug-version").to_string()
        }
    };

    let pushed = gw.push("digits", digits_bundle(&key, "1.0.0")).await;
    assert_status(&pushed, 200);
    assert_eq!(json_of(&pushed)["version"], "1.0.0");
    assert_eq!(json_of(&pushed)["self_tests"], 1);
    assert_eq!(ask(&gw).await, "1.0.0");

    // Each refusal is a 4xx with the reason, and leaves 1.0.0 answering.
    let good = digits_bundle(&key, "1.1.0");
    let mut tampered = good.clone();
    let wasm_at = tampered.len() / 2;
    tampered[wasm_at] ^= 0x01;
    let other_key = SecretKey::generate();
    let wrong_self_test = bundle_with(&key, "1.2.0", |dir| {
        let path = dir.join("selftest/seven.expected.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"label\":7", "\"label\":3", 1)).unwrap();
    });
    let broken_component = bundle_with(&key, "1.3.0", |dir| {
        std::fs::write(dir.join("plugin.wasm"), b"\0asm not really").unwrap();
    });
    let unsigned_dir = tempfile::tempdir().unwrap();
    write_plugin_dir(unsigned_dir.path(), "1.4.0", "", false);
    let unsigned = bundle::pack_dir(unsigned_dir.path(), &BundleLimits::default())
        .unwrap()
        .bytes;
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("tampered", "digits", tampered, 403, "bad-signature"),
        (
            "unknown key",
            "digits",
            digits_bundle(&other_key, "1.1.0"),
            403,
            "unknown-key",
        ),
        ("unsigned", "digits", unsigned, 403, "unsigned"),
        (
            "garbage",
            "digits",
            b"not a bundle".to_vec(),
            400,
            "malformed",
        ),
        (
            "same version",
            "digits",
            digits_bundle(&key, "1.0.0"),
            409,
            "not-newer",
        ),
        (
            "older version",
            "digits",
            digits_bundle(&key, "0.9.0"),
            409,
            "not-newer",
        ),
        ("wrong name", "other", good.clone(), 400, "name-mismatch"),
        (
            "failing self-test",
            "digits",
            wrong_self_test,
            422,
            "self-test-failed",
        ),
        (
            "broken component",
            "digits",
            broken_component,
            422,
            "not-a-component",
        ),
    ];
    for (what, name, bundle, status, code) in cases {
        let refused = gw.push(name, bundle).await;
        assert_eq!(
            refused.status().as_u16(),
            status,
            "{what}: {}",
            String::from_utf8_lossy(refused.body())
        );
        assert_eq!(error_code(&refused), code, "{what}");
        assert!(
            !json_of(&refused)["error"]["message"]
                .as_str()
                .unwrap()
                .is_empty()
        );
        assert_eq!(ask(&gw).await, "1.0.0", "{what} changed the active version");
        assert_eq!(gw.active_version("digits").await.as_deref(), Some("1.0.0"));
    }
    let refused = gw
        .push(
            "digits",
            bundle_with(&key, "1.2.1", |dir| {
                let path = dir.join("selftest/seven.expected.json");
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(&path, text.replacen("\"label\":7", "\"label\":3", 1)).unwrap();
            }),
        )
        .await;
    let message = json_of(&refused)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("a seven") && message.contains("$.label"),
        "{message}"
    );

    // A good push swaps; then `edgeplug push` (the CLI's code path, with its progress bar).
    assert_status(&gw.push("digits", good).await, 200);
    assert_eq!(ask(&gw).await, "1.1.0");
    let file = gw.dir.path().join("digits-1.5.0.epk");
    std::fs::write(&file, digits_bundle(&key, "1.5.0")).unwrap();
    let to = format!("http://{}", gw.addr);
    let push_args = edgeplug::cli_serve::PushArgs {
        file,
        to: to.clone(),
        token: Some(TOKEN.into()),
        tls: Default::default(),
    };
    let code = tokio::task::spawn_blocking(move || edgeplug::cli_serve::run_push(push_args))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert_eq!(ask(&gw).await, "1.5.0");

    // Rollback: to the previous version, again, then nothing older is kept (keep_versions 3).
    let rolled = gw.rollback("digits").await;
    assert_status(&rolled, 200);
    assert_eq!(json_of(&rolled)["version"], "1.1.0");
    assert_eq!(ask(&gw).await, "1.1.0");
    let rollback_args = edgeplug::cli_serve::RollbackArgs {
        name: "digits".into(),
        to,
        token: Some(TOKEN.into()),
        tls: Default::default(),
    };
    let code =
        tokio::task::spawn_blocking(move || edgeplug::cli_serve::run_rollback(rollback_args))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert_eq!(ask(&gw).await, "1.0.0");
    let none_left = gw.rollback("digits").await;
    assert_status(&none_left, 409);
    assert_eq!(error_code(&none_left), "no-previous-version");
    // A newer push is accepted after a rollback.
    assert_status(&gw.push("digits", digits_bundle(&key, "1.6.0")).await, 200);
    assert_eq!(ask(&gw).await, "1.6.0");

    // The state survives a restart: a new gateway on the same directory serves 1.6.0, and
    // rolls back from disk (re-verified, self-tested).
    let config = gw.gateway.config.clone();
    let reopened = tokio::task::spawn_blocking(move || Gateway::open(config))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reopened.registry.get("digits").unwrap().version.to_string(),
        "1.6.0"
    );
    let r = reopened.clone();
    let outcome = tokio::task::spawn_blocking(move || r.registry.rollback("digits"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.version.as_deref(), Some("1.5.0"));
    drop(reopened);

    // Metrics count the refusals by reason.
    let text = String::from_utf8_lossy(gw.get("/metrics").await.body()).into_owned();
    assert!(
        text.contains(
            "edgeplug_bundles_rejected_total{plugin=\"digits\",reason=\"bad-signature\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "edgeplug_bundles_rejected_total{plugin=\"digits\",reason=\"self-test-failed\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("edgeplug_rollbacks_total{plugin=\"digits\",version=\"1.1.0\"} 1"),
        "{text}"
    );

    // Removal: the plugin is gone, from the registry and the listing.
    let removed = gw
        .send(
            req("DELETE", "/v1/admin/plugins/digits")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(ChunkedBody::new(Vec::new()))
                .unwrap(),
        )
        .await;
    assert_status(&removed, 200);
    assert_status(
        &gw.post(
            "/v1/plugins/digits/infer",
            "application/json",
            seven.clone(),
        )
        .await,
        404,
    );
    assert_eq!(json_of(&gw.get("/v1/plugins").await)["plugins"], json!([]));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_loses_no_request() {
    const PUSHES: usize = 100;
    const CLIENTS: usize = 2;
    // Bounds on the load (it stops when the pushes are done): a count and a time.
    const MAX_REQUESTS: usize = 2_000_000;
    const MAX_TIME: std::time::Duration = std::time::Duration::from_secs(900);
    let mut gw = TestGateway::start("").await;
    let key = gw.key.clone();
    // 1.0.0, then 100 newer versions 1.0.1 ... 2.0.0 (a.b.c, single digits).
    let versions: Vec<String> = (100..=100 + PUSHES)
        .map(|n| format!("{}.{}.{}", n / 100, (n / 10) % 10, n % 10))
        .collect();
    let bundles: Vec<Vec<u8>> = {
        let key = key.clone();
        let versions = versions.clone();
        tokio::task::spawn_blocking(move || {
            versions.iter().map(|v| digits_bundle(&key, v)).collect()
        })
        .await
        .unwrap()
    };
    assert_status(&gw.push("digits", bundles[0].clone()).await, 200);

    let seven = Bytes::from(std::fs::read(fixture("digits/seven.json")).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (url, seven, done, sent) = (gw.url(), seven.clone(), done.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let mut connection = Connection::open(&url, None).await.unwrap();
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            let mut failures = Vec::new();
            let started = std::time::Instant::now();
            while !done.load(Ordering::Relaxed)
                && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                && started.elapsed() < MAX_TIME
            {
                let request = req("POST", "/v1/plugins/digits/infer")
                    .header("content-type", "application/json")
                    .body(ChunkedBody::new(seven.clone()))
                    .unwrap();
                match connection.send(request).await {
                    Ok(r) if r.status() == 200 && json_of(&r)["label"] == 7 => {
                        *seen
                            .entry(header(&r, "x-edgeplug-version").to_string())
                            .or_default() += 1;
                    }
                    Ok(r) => failures.push(format!(
                        "{}: {}",
                        r.status(),
                        String::from_utf8_lossy(r.body())
                    )),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (seen, failures)
        }));
    }

    // 100 pushes, with a rollback after every tenth; after each rollback the previous
    // version answers.
    let mut previous = versions[0].clone();
    let mut rollbacks = 0;
    for (i, bundle) in bundles.into_iter().enumerate().skip(1) {
        let pushed = gw.push("digits", bundle).await;
        assert_status(&pushed, 200);
        if i % 10 == 0 {
            let rolled = gw.rollback("digits").await;
            assert_status(&rolled, 200);
            assert_eq!(json_of(&rolled)["version"], previous.as_str());
            let answer = gw
                .post(
                    "/v1/plugins/digits/infer",
                    "application/json",
                    seven.clone(),
                )
                .await;
            assert_status(&answer, 200);
            assert_eq!(header(&answer, "x-edgeplug-version"), previous);
            rollbacks += 1;
        } else {
            previous = versions[i].clone();
        }
    }
    done.store(true, Ordering::Relaxed);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for client in clients {
        let (s, f) = client.await.unwrap();
        for (v, n) in s {
            *seen.entry(v).or_default() += n;
        }
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        failures.first()
    );
    let known: BTreeSet<&String> = versions.iter().collect();
    assert!(
        seen.keys().all(|v| known.contains(v)),
        "unknown versions answered: {seen:?}"
    );
    let total: usize = seen.values().sum();
    assert!(
        total > 0 && seen.len() > 1,
        "the load saw {total} requests on {} versions",
        seen.len()
    );
    assert_eq!(rollbacks, PUSHES / 10);
    println!(
        "hot swap: {PUSHES} pushes, {rollbacks} rollbacks, {total} requests on {} versions, 0 failed",
        seen.len()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_plugin_answers_503_with_retry_after() {
    let mut gw = TestGateway::start("").await;
    assert_status(
        &gw.push("digits", digits_bundle(&gw.key, "1.0.0")).await,
        200,
    );
    let seven = std::fs::read(fixture("digits/seven.json")).unwrap();
    // Take every permit of the active version, as that many running requests would.
    let active = gw.gateway.registry.get("digits").unwrap();
    let all = active.plugin.shared().limits().concurrency as u32;
    let held = active
        .permits
        .clone()
        .acquire_many_owned(all)
        .await
        .unwrap();
    let busy = gw
        .post(
            "/v1/plugins/digits/infer",
            "application/json",
            seven.clone(),
        )
        .await;
    assert_status(&busy, 503);
    assert_eq!(header(&busy, "retry-after"), "1");
    assert_eq!(error_code(&busy), "saturated");
    let (form_type, form) = multipart(
        "image",
        "one.png",
        "image/png",
        &std::fs::read(fixture("images/adversarial/digit1-gray8.png")).unwrap(),
    );
    assert_status(&gw.post("/predict", &form_type, form).await, 503);
    drop(held);
    assert_status(
        &gw.post("/v1/plugins/digits/infer", "application/json", seven)
            .await,
        200,
    );
    let text = String::from_utf8_lossy(gw.get("/metrics").await.body()).into_owned();
    assert!(
        text.contains("edgeplug_requests_refused_total{status=\"503\"} 2"),
        "{text}"
    );
    gw.stop().await;
}

/// A certificate for `localhost` made now, written with its key to a directory of its own.
pub(crate) struct LocalhostCertificate {
    pub dir: tempfile::TempDir,
    pub cert: std::path::PathBuf,
    pub pem: String,
}

impl LocalhostCertificate {
    pub fn new() -> LocalhostCertificate {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let pem = certified.cert.pem();
        std::fs::write(&cert, &pem).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            certified.signing_key.serialize_pem(),
        )
        .unwrap();
        LocalhostCertificate { dir, cert, pem }
    }

    /// The gateway's `[tls]` table serving it.
    pub fn config(&self) -> String {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            self.cert,
            self.dir.path().join("key.pem")
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_certificate_made_now() {
    let certificate = LocalhostCertificate::new();
    let cert = certificate.cert.clone();
    let mut gw = TestGateway::start(&certificate.config()).await;
    assert!(gw.gateway.is_tls());
    let url: Uri = format!("https://localhost:{}/", gw.addr.port())
        .parse()
        .unwrap();
    let mut connection = Connection::open(&url, Some(&cert)).await.unwrap();
    let live = connection
        .send(
            req("GET", "/v2/health/live")
                .body(ChunkedBody::new(Vec::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_status(&live, 200);
    // Pushing over TLS with the CLI's client.
    let bundle = digits_bundle(&gw.key, "1.0.0");
    let pushed = connection
        .send(
            req("PUT", "/v1/admin/plugins/digits")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(ChunkedBody::new(bundle))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_status(&pushed, 200);
    // Without the certificate trusted, the handshake fails; plain HTTP gets no answer.
    assert!(Connection::open(&url, None).await.is_err());
    let plain: Uri = format!("http://{}/", gw.addr).parse().unwrap();
    let mut plain = Connection::open(&plain, None).await.unwrap();
    assert!(
        plain
            .send(
                req("GET", "/v2/health/live")
                    .body(ChunkedBody::new(Vec::new()))
                    .unwrap()
            )
            .await
            .is_err()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_stops_accepting_and_returns() {
    let mut gw = TestGateway::start("").await;
    let mut idle = gw.connect().await;
    let live = idle
        .send(
            req("GET", "/v2/health/live")
                .body(ChunkedBody::new(Vec::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_status(&live, 200);
    // An idle keep-alive connection does not hold the shutdown up.
    gw.stop().await;
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
    assert!(
        idle.send(
            req("GET", "/v2/health/live")
                .body(ChunkedBody::new(Vec::new()))
                .unwrap()
        )
        .await
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_configuration_disables_admin_and_predict() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        state_dir: dir.path().join("state"),
        trust_dir: dir.path().join("trust"),
        model_dir: dir.path().join("models"),
        ..Config::default()
    };
    let mut gw = TestGateway::serve(config, Arc::new(SecretKey::generate()), dir).await;
    let mut c = gw.connect().await;
    let admin = c
        .send(
            req("POST", "/v1/admin/plugins/digits/rollback")
                .header("authorization", "Bearer x")
                .body(ChunkedBody::new(Vec::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_status(&admin, 403);
    assert_eq!(error_code(&admin), "admin-disabled");
    let predict = c
        .send(
            req("POST", "/predict")
                .header("content-type", "multipart/form-data; boundary=x")
                .body(ChunkedBody::new("--x--"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_status(&predict, 404);
    assert_eq!(error_code(&predict), "no-default-plugin");
    assert_eq!(json_of(&gw.get("/v1/plugins").await)["plugins"], json!([]));
    gw.stop().await;
}

/// A person's path through the page, in Debian's chromium: the plugin list fills in from
/// /v1/plugins, they choose the digits plugin and a photo, send it, and see the label, the top
/// five with probabilities and the latency; a broken image shows the plugin's error. Skipped
/// when chromium is absent, unless `CI` is set (then its absence is a failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_page_classifies_an_uploaded_photo_in_a_headless_browser() {
    let Some(chromium) = chromium_for_test() else {
        return;
    };
    let mut gw = TestGateway::start("").await;
    assert_status(
        &gw.push("digits", digits_bundle(&gw.key, "1.0.0")).await,
        200,
    );
    let url = format!("http://{}/", gw.addr);
    let photo = fixture("images/adversarial/digit1-gray8.png");
    let broken = fixture("images/adversarial/truncated.png");
    let seen = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, String> {
        let mut browser = Browser::launch(&chromium).map_err(|e| e.to_string())?;
        let page = browser.open(&url)?;
        let option = browser.wait_for(
            &page,
            "document.querySelector('#plugin option[value=\"digits\"]')?.textContent",
        )?;
        let row = browser.eval(
            &page,
            "document.querySelector('tr[data-name=\"digits\"]')?.innerText",
        )?;
        browser.eval(&page, "document.querySelector('#plugin').value = 'digits'")?;
        browser.set_file(&page, "#file", &photo)?;
        browser.eval(&page, "document.querySelector('#form').requestSubmit()")?;
        let label = browser.wait_for(&page, "document.querySelector('#label')?.textContent")?;
        let rows = browser.eval(&page, "document.querySelectorAll('#top5 tr').length")?;
        let first_row = browser.eval(&page, "document.querySelector('#top5 tr').innerText")?;
        let latency = browser.eval(&page, "document.querySelector('#latency').textContent")?;
        let preview = browser.eval(
            &page,
            "document.querySelector('#preview').src.startsWith('blob:')",
        )?;
        browser.set_file(&page, "#file", &broken)?;
        browser.eval(&page, "document.querySelector('#form').requestSubmit()")?;
        let error = browser.wait_for(
            &page,
            "document.querySelector('#result .error')?.textContent",
        )?;
        Ok(vec![
            label, rows, first_row, latency, preview, error, option, row,
        ])
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("the browser session failed: {e}"));
    assert_eq!(seen[0], json!("1"), "label");
    assert_eq!(seen[1], json!(5), "top-5 rows");
    let first_row = seen[2].as_str().unwrap();
    assert!(
        first_row.starts_with('1') && first_row.contains("99.9"),
        "{first_row:?}"
    );
    let latency = seen[3].as_str().unwrap();
    assert!(latency.ends_with("ms (1.0.0)"), "{latency:?}");
    assert_eq!(seen[4], json!(true), "the photo is previewed");
    let error = seen[5].as_str().unwrap();
    assert!(
        error.starts_with("400 invalid-argument") && error.contains("truncated"),
        "{error:?}"
    );
    assert_eq!(
        seen[6],
        json!("digits 1.0.0"),
        "the plugin's option in the form"
    );
    let row = seen[7].as_str().unwrap_or_default();
    assert!(
        row.contains("1.0.0") && row.contains("Handwritten digit"),
        "{row:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_each_plugins_activity_and_version_history() {
    let Some(chromium) = chromium_for_test() else {
        return;
    };
    let mut gw = TestGateway::start("").await;
    for version in ["1.0.0", "2.0.0"] {
        assert_status(
            &gw.push("digits", digits_bundle(&gw.key, version)).await,
            200,
        );
    }
    assert_status(&gw.rollback("digits").await, 200);
    // 24 answers and 3 refusals by the plugin: 27 requests it ran.
    let seven = std::fs::read(fixture("digits/seven.json")).unwrap();
    for _ in 0..24 {
        assert_status(
            &gw.post(
                "/v1/plugins/digits/infer",
                "application/json",
                seven.clone(),
            )
            .await,
            200,
        );
    }
    for _ in 0..3 {
        assert_status(
            &gw.post("/v1/plugins/digits/infer", "application/json", "[1, 2]")
                .await,
            400,
        );
    }
    // The same figures from the endpoint the page reads.
    let report = json_of(&gw.get("/v1/plugins/digits/activity").await);
    let slots = report["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 60);
    let sum = |key: &str| slots.iter().map(|s| s[key].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("requests"), sum("errors")), (27, 3));
    assert_status(&gw.get("/v1/plugins/nope/activity").await, 404);

    let url = format!("http://{}/", gw.addr);
    let seen = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, String> {
        let mut browser = Browser::launch(&chromium).map_err(|e| e.to_string())?;
        let page = browser.open(&url)?;
        let total = browser.wait_for(
            &page,
            "document.querySelector('#activity-digits')?.dataset.total",
        )?;
        let bars = browser.eval(
            &page,
            "[...document.querySelectorAll('#activity-digits svg.rate rect.req')].map(r => [+r.dataset.requests, +r.dataset.errors])",
        )?;
        let latencies = browser.eval(
            &page,
            "[...document.querySelectorAll('#activity-digits svg.latency rect')].map(r => +r.dataset.count)",
        )?;
        let history = browser.eval(
            &page,
            "[...document.querySelectorAll('#activity-digits ol.history li')].map(li => li.className + ' ' + li.textContent.split(' ').slice(-1)[0])",
        )?;
        let caption = browser.eval(
            &page,
            "document.querySelector('#activity-digits figcaption').textContent",
        )?;
        Ok(vec![total, bars, latencies, history, caption])
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("the browser session failed: {e}"));
    assert_eq!(seen[0], json!("27"), "requests in the last ten minutes");
    let bars: Vec<(u64, u64)> = serde_json::from_value(seen[1].clone()).unwrap();
    assert_eq!(bars.len(), 60, "one bar per 10 s slot");
    let drawn: (u64, u64) = bars
        .iter()
        .fold((0, 0), |(r, e), (br, be)| (r + br, e + be));
    assert_eq!(drawn, (27, 3), "the bars add up to the requests and errors");
    let latencies: Vec<u64> = serde_json::from_value(seen[2].clone()).unwrap();
    assert_eq!(latencies.len(), 13, "12 bounds and the open bucket");
    assert_eq!(latencies.iter().sum::<u64>(), 27, "{latencies:?}");
    assert_eq!(
        seen[3],
        json!(["push 1.0.0", "push 2.0.0", "rollback 1.0.0"]),
        "the version history, oldest first"
    );
    assert!(
        seen[4].as_str().unwrap().starts_with("27 requests"),
        "{}",
        seen[4]
    );
    gw.stop().await;
}

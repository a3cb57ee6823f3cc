//! Fault isolation in the runtime: each misbehaving test plugin (`tests/plugins/`) is stopped
//! with the error that names its misbehaviour, and the runtime and a well-behaved plugin carry
//! on unharmed.

use std::time::{Duration, Instant};

use edgeplug_runtime::{InferRequest, InvokeError, LoadedPlugin, Runtime};
use edgeplug_tests::{load_test_plugin, runtime};

/// Any input but the plugins' self-test input triggers the misbehaviour.
fn trigger(plugin: &LoadedPlugin) -> (InvokeError, Duration) {
    let started = Instant::now();
    let result = plugin.infer(InferRequest {
        content_type: "application/json".into(),
        body: b"[1, 2, 3]".to_vec(),
        tensors: Vec::new(),
    });
    let elapsed = started.elapsed();
    match result {
        Ok(response) => panic!(
            "{} answered instead of failing: {:?}",
            plugin.info().name,
            String::from_utf8_lossy(&response.body)
        ),
        Err(e) => (e, elapsed),
    }
}

/// The neighbour still answers, exactly.
fn assert_echo_answers(echo: &LoadedPlugin) {
    let body = br#"{"still": "here"}"#.to_vec();
    let response = echo
        .infer(InferRequest {
            content_type: "application/json".into(),
            body: body.clone(),
            tensors: Vec::new(),
        })
        .expect("the well-behaved plugin answers");
    assert_eq!(response.body, body);
}

fn load(runtime: &Runtime, dir: &str) -> LoadedPlugin {
    load_test_plugin(runtime, dir).unwrap_or_else(|e| panic!("{dir} loads: {e:#}"))
}

/// Whether an error is the one a misbehaviour must end in.
type Expectation = fn(&InvokeError) -> bool;

#[test]
fn each_misbehaviour_is_caught_with_the_error_that_names_it() {
    let runtime = runtime();
    let echo = load(&runtime, "echo");
    let cases: &[(&str, Expectation)] = &[
        (
            "panic",
            |e| matches!(e, InvokeError::Trap { stderr, .. } if stderr.contains("cannot handle a body of 9 bytes")),
        ),
        (
            "unreachable",
            |e| matches!(e, InvokeError::Trap { reason, .. } if reason.contains("unreachable")),
        ),
        ("infinite-loop", |e| {
            matches!(e, InvokeError::DeadlineExceeded { deadline_ms: 300 })
        }),
        (
            "memory-hog",
            |e| matches!(e, InvokeError::MemoryExhausted { limit_bytes } if *limit_bytes == 32 << 20),
        ),
        (
            "deep-recursion",
            |e| matches!(e, InvokeError::Trap { reason, .. } if reason.contains("call stack exhausted")),
        ),
        (
            "huge-output",
            |e| matches!(e, InvokeError::ResponseTooLarge { size, limit } if *size == 8 << 20 && *limit == 1 << 20),
        ),
        (
            "tensor-hog",
            |e| matches!(e, InvokeError::TensorMemoryExhausted { limit_bytes } if *limit_bytes == 16 << 20),
        ),
        (
            "wrong-shape",
            |e| matches!(e, InvokeError::BrokenContract(m) if m.contains("\"scores\"") && m.contains("[1, 7]")),
        ),
    ];
    for (dir, expected) in cases {
        let plugin = load(&runtime, dir);
        let (error, elapsed) = trigger(&plugin);
        println!("{dir}: {error} (after {elapsed:?})");
        assert!(expected(&error), "{dir}: unexpected error {error:?}");
        // The instance is gone with its request: the next request on the same version is
        // caught the same way, and the neighbour is untouched.
        let (again, _) = trigger(&plugin);
        assert_eq!(
            std::mem::discriminant(&again),
            std::mem::discriminant(&error),
            "{dir}: second request ended differently: {again}"
        );
        assert_echo_answers(&echo);
    }
}

#[test]
fn an_infinite_loop_ends_with_its_deadline_not_before() {
    let runtime = runtime();
    let plugin = load(&runtime, "infinite-loop");
    let (error, elapsed) = trigger(&plugin);
    assert!(
        matches!(error, InvokeError::DeadlineExceeded { .. }),
        "{error}"
    );
    assert!(
        elapsed >= Duration::from_millis(300),
        "stopped before its deadline: {elapsed:?}"
    );
}

#[test]
fn a_forbidden_import_is_refused_at_load_time_naming_it() {
    let runtime = runtime();
    let error = match load_test_plugin(&runtime, "forbidden-import") {
        Ok(_) => panic!("a component importing wasi:sockets was loaded"),
        Err(e) => {
            assert_eq!(e.code(), "forbidden-import", "{e}");
            format!("{e:#}")
        }
    };
    assert!(error.contains("wasi:sockets/"), "{error}");
    assert!(error.contains("does not grant"), "{error}");
    assert!(!error.contains("backtrace"), "{error}");
}

#[test]
fn misbehaving_plugins_pass_their_own_self_test_input() {
    // They pass activation like a plugin with a latent bug: only other inputs misbehave.
    let runtime = runtime();
    for dir in [
        "panic",
        "infinite-loop",
        "memory-hog",
        "tensor-hog",
        "wrong-shape",
    ] {
        let plugin = load(&runtime, dir);
        let files = edgeplug_tests::test_plugin_files(dir);
        assert_eq!(
            edgeplug_runtime::selftest::run(&plugin, &files).unwrap(),
            1,
            "{dir}"
        );
    }
}

/// (plugin, HTTP status, error code) a client sees when the plugin misbehaves.
const HTTP_FINDINGS: &[(&str, u16, &str)] = &[
    ("panic", 500, "trap"),
    ("unreachable", 500, "trap"),
    ("infinite-loop", 504, "deadline-exceeded"),
    ("memory-hog", 507, "memory-exhausted"),
    ("deep-recursion", 500, "trap"),
    ("huge-output", 500, "response-too-large"),
    ("tensor-hog", 507, "tensor-memory-exhausted"),
    ("wrong-shape", 500, "broken-contract"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_each_misbehaviour_and_the_neighbour_never_fails() {
    use edgeplug_tests::gateway::{
        TestGateway, assert_status, error_code, json_of, test_plugin_bundle,
    };
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let gw = TestGateway::start("").await;
    let key = gw.key.clone();
    let bundles = tokio::task::spawn_blocking(move || {
        let mut names: Vec<&str> = HTTP_FINDINGS.iter().map(|f| f.0).collect();
        names.extend(["echo", "forbidden-import"]);
        names
            .into_iter()
            .map(|name| (name, test_plugin_bundle(&key, name)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (name, bundle) in bundles {
        let response = gw.push(name, bundle).await;
        if name == "forbidden-import" {
            assert_status(&response, 422);
            let body = json_of(&response);
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("wasi:sockets/"), "{body}");
        } else {
            assert_status(&response, 200);
        }
    }

    // The neighbour answers throughout, exactly and only with 200s.
    let running = Arc::new(AtomicBool::new(true));
    let neighbour = {
        let (running, url) = (running.clone(), gw.url());
        tokio::spawn(async move {
            use edgeplug::client::{ChunkedBody, Connection};
            let mut connection = Connection::open(&url, None).await.unwrap();
            let mut answered = 0;
            while running.load(Ordering::Relaxed) {
                let body = format!("{{\"n\": {answered}}}");
                let response = connection
                    .send(
                        edgeplug_tests::gateway::req("POST", "/v1/plugins/echo/infer")
                            .header("content-type", "application/json")
                            .body(ChunkedBody::new(body.clone()))
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                assert_status(&response, 200);
                assert_eq!(response.body().as_ref(), body.as_bytes());
                answered += 1;
            }
            answered
        })
    };

    for &(name, status, code) in HTTP_FINDINGS {
        let started = Instant::now();
        let response = gw
            .post(
                &format!("/v1/plugins/{name}/infer"),
                "application/json",
                "[1, 2, 3]",
            )
            .await;
        println!(
            "{name}: HTTP {} {} after {:?}",
            response.status(),
            error_code(&response),
            started.elapsed()
        );
        assert_status(&response, status);
        assert_eq!(error_code(&response), code, "{name}");
    }
    // The gateway is up and the misbehaving versions still serve their well-formed input.
    let self_test_input =
        std::fs::read(edgeplug_tests::repo().join("tests/plugins/panic/selftest/input.json"))
            .unwrap();
    let response = gw
        .post(
            "/v1/plugins/panic/infer",
            "application/json",
            self_test_input.clone(),
        )
        .await;
    assert_status(&response, 200);
    assert_eq!(response.body().as_ref(), self_test_input.as_slice());

    running.store(false, Ordering::Relaxed);
    let answered = neighbour.await.unwrap();
    assert!(answered > 0, "the neighbour never got a turn");
    let metrics = String::from_utf8(gw.get("/metrics").await.body().to_vec()).unwrap();
    assert!(
        metrics.contains("deadline-exceeded"),
        "errors are counted by code"
    );
    // The plugins that exhausted a CPU or memory limit now run at low priority.
    for name in ["infinite-loop", "memory-hog", "tensor-hog"] {
        assert!(
            metrics.contains(&format!(
                "edgeplug_demotions_total{{plugin=\"{name}\",version=\"0.1.0\"}} 1"
            )),
            "{name} not demoted:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("edgeplug_demotions_total{plugin=\"panic\""),
        "a trap is not a demotion"
    );
    // A demoted plugin is still served (at low priority) and still stopped by its deadline.
    let response = gw
        .post("/v1/plugins/infinite-loop/infer", "application/json", "[4]")
        .await;
    assert_status(&response, 504);
}

/// A plugin that earned the fast path with quick answers and then loops: the fast-path run is
/// cut at its budget, the request runs again on the pool and ends at the plugin's deadline,
/// and the version serves from the pool (then, demoted, at low priority) from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_plugin_that_turns_slow_loses_the_fast_path() {
    use edgeplug_tests::gateway::{
        TestGateway, assert_status, error_code, json_of, test_plugin_bundle,
    };

    // An unoptimized test build runs the plugin in ~50-100 us; grant the fast path up to 5 ms.
    let gw = TestGateway::start("fast_path_us = 5000\n").await;
    let key = gw.key.clone();
    let bundle = tokio::task::spawn_blocking(move || test_plugin_bundle(&key, "infinite-loop"))
        .await
        .unwrap();
    assert_status(&gw.push("infinite-loop", bundle).await, 200);
    let lane = |listing: serde_json::Value| {
        listing["plugins"][0]["active"]["lane"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(lane(json_of(&gw.get("/v1/plugins").await)), "pool");

    let quick = std::fs::read(
        edgeplug_tests::repo().join("tests/plugins/infinite-loop/selftest/input.json"),
    )
    .unwrap();
    let mut connection = gw.connect().await;
    for _ in 0..100 {
        let response = connection
            .send(
                edgeplug_tests::gateway::req("POST", "/v1/plugins/infinite-loop/infer")
                    .header("content-type", "application/json")
                    .body(edgeplug::client::ChunkedBody::new(quick.clone()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_status(&response, 200);
    }
    assert_eq!(
        lane(json_of(&gw.get("/v1/plugins").await)),
        "fast",
        "quick answers earn the fast path"
    );

    let started = Instant::now();
    let response = gw
        .post("/v1/plugins/infinite-loop/infer", "application/json", "[1]")
        .await;
    assert_status(&response, 504);
    assert_eq!(error_code(&response), "deadline-exceeded");
    let message = json_of(&response)["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("300 ms"),
        "the plugin's own deadline, not the fast-path budget: {message}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(lane(json_of(&gw.get("/v1/plugins").await)), "demoted");
    // Its quick inputs are still answered.
    assert_status(
        &gw.post("/v1/plugins/infinite-loop/infer", "application/json", quick)
            .await,
        200,
    );
}

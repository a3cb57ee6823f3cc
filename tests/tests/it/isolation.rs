//! Fault isolation in the runtime: each misbehaving test plugin (`tests/plugins/`) is stopped
//! with the error that names its misbehaviour, and the runtime and a well-behaved plugin carry
//! on unharmed.

use std::time::{Duration, Instant};

use edgeplug_host::runtime::{InferRequest, InvokeError, LoadedPlugin, Runtime};
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

#[test]
fn each_misbehaviour_is_caught_with_the_error_that_names_it() {
    let runtime = runtime();
    let echo = load(&runtime, "echo");
    let cases: &[(&str, fn(&InvokeError) -> bool)] = &[
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
fn the_deadline_stops_an_infinite_loop_promptly() {
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
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("wasi:sockets/"), "{error}");
    assert!(error.contains("does not grant"), "{error}");
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
            edgeplug_host::selftest::run(&plugin, &files).unwrap(),
            1,
            "{dir}"
        );
    }
}

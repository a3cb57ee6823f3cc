//! The conformance kit on real plugins: every example plugin and the echo plugin pass it, and
//! every misbehaving test plugin fails it with the finding that names its misbehaviour.

use std::path::Path;

use edgeplug_bundle::SecretKey;
use edgeplug_runtime::conformance::{self, Options, Outcome, Report, Target};
use edgeplug_tests::{
    DIGITS_WASM, FORECASTER_WASM, IMAGE_CLASSIFIER_WASM, assert_conformance_passes, conformance_of,
    conformance_options, repo, runtime, test_plugin_wasm,
};

fn check_dir(dir: &Path, wasm: &str) -> Report {
    conformance_of(&runtime(), dir, Path::new(wasm))
}

fn check_test_plugin(name: &str) -> Report {
    check_dir(
        &repo().join("tests/plugins").join(name),
        test_plugin_wasm(name),
    )
}

#[test]
fn the_example_plugins_and_echo_pass() {
    for (name, wasm) in [("digits", DIGITS_WASM), ("forecaster", FORECASTER_WASM)] {
        let report = check_dir(&repo().join("plugins").join(name), wasm);
        print!("{}", report.to_text());
        assert_conformance_passes(&report);
    }
    let echo = check_test_plugin("echo");
    assert_conformance_passes(&echo);
}

#[test]
fn the_image_classifier_passes_with_the_adversarial_images() {
    let report = check_dir(
        &repo().join("plugins/image-classifier"),
        IMAGE_CLASSIFIER_WASM,
    );
    print!("{}", report.to_text());
    assert_conformance_passes(&report);
    let images = report
        .checks
        .iter()
        .filter(|c| c.group == "robustness" && c.name.starts_with("image "))
        .count();
    assert_eq!(
        images,
        conformance::corpus::IMAGES.len(),
        "an image plugin gets the image corpus"
    );
}

/// (test plugin, group of the expected failure, text the failure's detail contains)
const EXPECTED_FINDINGS: &[(&str, &str, &str)] = &[
    ("panic", "robustness", "cannot handle a body of"),
    (
        "unreachable",
        "robustness",
        "trap: plugin trapped: wasm trap: wasm `unreachable`",
    ),
    ("infinite-loop", "robustness", "deadline-exceeded"),
    ("infinite-loop", "limits", "deadline of 300 ms exceeded"),
    ("memory-hog", "robustness", "memory-exhausted"),
    ("memory-hog", "limits", "linear memory limit"),
    ("deep-recursion", "robustness", "call stack exhausted"),
    ("huge-output", "robustness", "response-too-large"),
    ("tensor-hog", "robustness", "tensor-memory-exhausted"),
    ("wrong-shape", "robustness", "broken-contract"),
    ("forbidden-import", "load", "wasi:sockets/"),
    (
        "nondeterministic",
        "determinism",
        "answered differently on a fresh instance",
    ),
];

#[test]
fn every_misbehaving_plugin_fails_with_the_expected_finding() {
    for &(name, group, finding) in EXPECTED_FINDINGS {
        let report = check_test_plugin(name);
        assert!(!report.passed(), "{name} passed:\n{}", report.to_text());
        assert!(
            report
                .failures()
                .any(|c| c.group == group && c.detail.contains(finding)),
            "{name}: no {group} failure mentioning {finding:?}:\n{}",
            report.to_text()
        );
        // Its self-test still passes: the kit finds what activation alone would not.
        if name != "forbidden-import" {
            assert!(
                report
                    .checks
                    .iter()
                    .any(|c| c.group == "self-test" && c.outcome == Outcome::Pass),
                "{name}:\n{}",
                report.to_text()
            );
        }
    }
}

#[test]
fn a_bundle_needs_a_trusted_signature() {
    let key = SecretKey::generate();
    let signed = edgeplug_tests::gateway::test_plugin_bundle(&key, "echo");
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("echo.epk");
    std::fs::write(&file, &signed).unwrap();
    let trust = work.path().join("trust");
    std::fs::create_dir(&trust).unwrap();
    std::fs::write(trust.join("author.pub"), key.public_key().to_pem()).unwrap();
    let run = |trust_dir: Option<&Path>| {
        let options = Options {
            trust_dir: trust_dir.map(Path::to_path_buf),
            ..conformance_options()
        };
        conformance::run(&runtime(), &Target::from_path(&file), &options)
    };

    let trusted = run(Some(&trust));
    assert_conformance_passes(&trusted);
    assert!(
        trusted
            .checks
            .iter()
            .any(|c| c.group == "signature" && c.outcome == Outcome::Pass)
    );

    let untrusted = run(None);
    assert!(
        untrusted.failures().any(|c| c.group == "signature"),
        "{}",
        untrusted.to_text()
    );

    let mut tampered = signed.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 1;
    std::fs::write(&file, &tampered).unwrap();
    let report = run(Some(&trust));
    assert!(
        report.failures().any(|c| c.group == "signature"),
        "{}",
        report.to_text()
    );
    assert!(
        !report.checks.iter().any(|c| c.group == "load"),
        "a tampered bundle must not be loaded"
    );
}

#[test]
fn a_bare_component_is_checked_from_its_describe() {
    let report = conformance::run(
        &runtime(),
        &Target::from_path(Path::new(test_plugin_wasm("panic"))),
        &conformance_options(),
    );
    assert_eq!(report.plugin.as_deref(), Some("panic 0.1.0"));
    // Without a manifest there are no self-tests, which is itself a finding.
    assert!(
        report.failures().any(|c| c.group == "self-test"),
        "{}",
        report.to_text()
    );
    assert!(
        report
            .failures()
            .any(|c| c.group == "robustness" && c.detail.contains("trap"))
    );
}

#[test]
fn the_junit_report_lists_every_check() {
    let report = check_test_plugin("deep-recursion");
    let xml = conformance::junit::to_junit(&report);
    assert_eq!(xml.matches("<testcase ").count(), report.checks.len());
    let failures = report.failures().count();
    assert!(failures > 0);
    assert!(xml.contains(&format!("failures=\"{failures}\"")), "{xml}");
    assert_eq!(xml.matches("<failure ").count(), failures);
}

/// `[admin] verify = "conformance"`: the gateway runs the kit on a pushed version before it
/// goes live. A plugin whose self-test passes but which panics on any other body is refused
/// with 422 `conformance-failed` naming the finding, and nothing is activated; a plugin that
/// passes the kit is accepted; without the setting the same panicking plugin is accepted on
/// its self-tests alone (what the kit is there to catch).
#[tokio::test]
async fn a_gateway_verifying_with_the_kit_refuses_what_only_the_kit_finds() {
    use edgeplug_tests::gateway::{
        TestGateway, assert_status, error_code, json_of, test_plugin_bundle,
    };
    let mut strict = TestGateway::start("[admin]\nverify = \"conformance\"\n").await;
    let key = strict.key.clone();
    let (panic, echo) = tokio::task::spawn_blocking(move || {
        (
            test_plugin_bundle(&key, "panic"),
            test_plugin_bundle(&key, "echo"),
        )
    })
    .await
    .unwrap();

    let refused = strict.push("panic", panic.clone()).await;
    assert_status(&refused, 422);
    assert_eq!(error_code(&refused), "conformance-failed");
    let message = json_of(&refused)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("robustness") && message.contains("cannot handle a body of"),
        "{message}"
    );
    assert_eq!(strict.active_version("panic").await, None);
    assert_status(&strict.push("echo", echo).await, 200);
    assert_eq!(
        strict.active_version("echo").await.as_deref(),
        Some("0.1.0")
    );
    strict.stop().await;

    let mut lenient = TestGateway::start("").await;
    let key = lenient.key.clone();
    let panic = tokio::task::spawn_blocking(move || test_plugin_bundle(&key, "panic"))
        .await
        .unwrap();
    assert_status(&lenient.push("panic", panic).await, 200);
    assert_eq!(
        lenient.active_version("panic").await.as_deref(),
        Some("0.1.0")
    );
    lenient.stop().await;
}

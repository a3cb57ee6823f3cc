//! Staged rollouts with real servers (Debian's `docker-registry` and `mosquitto`) and four
//! in-process gateways, each with its fleet agent, while a request loop runs on three of them
//! (gw-2..gw-4: gw-1 has no clients, as a first canary often has few). In order:
//!
//! 1. a good version (0.2.0) rolls out through every wave (stages `1,50%,100%`: gw-1, then
//!    gw-2, then gw-3 and gw-4), ending with the group's notice on it and no pin left; run
//!    again with its state file, the rollout only reports that it completed;
//! 2. a bad version (0.3.0: its self-test on an 8x8 array passes, but its 2 MiB memory limit
//!    fails every photo, half the loop's requests) passes the first wave (gw-1, idle) and
//!    fails the second's gate on its error rate: signed rollbacks send gw-1 and gw-2 back to
//!    0.2.0, gw-3 and gw-4 never see 0.3.0, and the only failed requests of the loop are the
//!    ones 0.3.0 answered;
//! 3. the rollback notice replayed after a newer pin is refused and reported, and the gateway
//!    stays on the newer version.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeplug::client::{ChunkedBody, Connection};
use edgeplug_bundle::SecretKey;
use edgeplug_fleet::notice::{NoticeKind, SignedNotice};
use edgeplug_fleet::oci::RegistryOptions;
use edgeplug_fleet::publish::{self, Audience};
use edgeplug_fleet::rollout::{self, Event, Gate, Outcome, RolloutOptions};
use edgeplug_fleet::status::GatewayStatus;
use edgeplug_fleet::topics;
use edgeplug_mqtt::{BrokerOptions, Session, ephemeral_client_id};
use edgeplug_tests::fixture;
use edgeplug_tests::fleet::{self, DEADLINE, Member, eventually};
use edgeplug_tests::gateway::{bundle_with, digits_bundle, header, json_of, req};
use edgeplug_tests::servers::{TestBroker, TestRegistry};
use hyper::body::Bytes;
use tokio::sync::watch;

const GROUP: &str = "rollout-1";
const REPOSITORY: &str = "edgeplug/digits";

/// A gateway of the group, publishing its status every 250 ms: the rollout's gate reads
/// fresh figures within its 2 s soak.
async fn join(
    id: &str,
    publisher: &SecretKey,
    registry: &TestRegistry,
    broker: &TestBroker,
) -> Member {
    let extra = "status_interval_ms = 250\n";
    Member::join(id, GROUP, publisher, registry, broker, extra).await
}

async fn statuses(broker: &BrokerOptions) -> Vec<GatewayStatus> {
    fleet::statuses(broker, GROUP).await
}

/// The retained payload of `topic` (empty if none).
async fn retained(broker: &BrokerOptions, topic: &str) -> Vec<u8> {
    let mut session = Session::connect(broker, &ephemeral_client_id("test"))
        .await
        .unwrap();
    let found = session
        .retained(topic, Duration::from_millis(300))
        .await
        .unwrap();
    session.close().await;
    found
        .into_iter()
        .find(|(t, _)| t == topic)
        .map(|(_, p)| p)
        .unwrap_or_default()
}

/// One answer of the request loop.
#[derive(Debug)]
struct Answer {
    gateway: String,
    status: u16,
    /// `x-edgeplug-version` of a success; the error code of a failure.
    detail: String,
}

/// Requests on `member` until told to stop: a 7 as an 8x8 array, then a photo, in turn.
fn request_loop(
    member: &Member,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<Answer>> {
    let (url, id) = (member.gateway.url(), member.id.clone());
    let seven = Bytes::from(std::fs::read(fixture("digits/seven.json")).unwrap());
    let photo = Bytes::from(std::fs::read(fixture("images/astronaut.png")).unwrap());
    tokio::spawn(async move {
        let mut connection = Connection::open(&url, None).await.unwrap();
        let mut answers = Vec::new();
        let started = Instant::now();
        let mut i = 0usize;
        while !*stop.borrow() && started.elapsed() < 3 * DEADLINE {
            let (body, content_type) = if i.is_multiple_of(2) {
                (seven.clone(), "application/json")
            } else {
                (photo.clone(), "image/png")
            };
            i += 1;
            let request = req("POST", "/v1/plugins/digits/infer")
                .header("content-type", content_type)
                .body(ChunkedBody::new(body))
                .unwrap();
            let answer = match connection.send(request).await {
                Ok(r) if r.status() == 200 => {
                    if content_type == "application/json" {
                        assert_eq!(json_of(&r)["label"], 7, "a wrong answer");
                    }
                    Answer {
                        gateway: id.clone(),
                        status: 200,
                        detail: header(&r, "x-edgeplug-version").to_string(),
                    }
                }
                Ok(r) => Answer {
                    gateway: id.clone(),
                    status: r.status().as_u16(),
                    detail: json_of(&r)["error"]["code"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string(),
                },
                Err(e) => Answer {
                    gateway: id.clone(),
                    status: 0,
                    detail: e.to_string(),
                },
            };
            answers.push(answer);
        }
        answers
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_rollout_goes_through_its_waves_and_a_bad_version_rolls_back() {
    let registry = TestRegistry::start();
    let broker = TestBroker::start();
    let broker_options = BrokerOptions::from_url(&broker.url()).unwrap();
    let registry_options = RegistryOptions::new(&registry.host(), true);
    let publisher = Arc::new(SecretKey::generate());
    let (v1, v2, bad, v4) = {
        let key = publisher.clone();
        tokio::task::spawn_blocking(move || {
            let bad = bundle_with(&key, "0.3.0", |dir| {
                let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
                assert!(manifest.contains("memory_mib = 64"));
                std::fs::write(
                    dir.join("plugin.toml"),
                    manifest.replace("memory_mib = 64", "memory_mib = 2"),
                )
                .unwrap();
            });
            (
                digits_bundle(&key, "0.1.0"),
                digits_bundle(&key, "0.2.0"),
                bad,
                digits_bundle(&key, "0.4.0"),
            )
        })
        .await
        .unwrap()
    };

    let mut members = Vec::new();
    for i in 1..=4 {
        members.push(join(&format!("gw-{i}"), &publisher, &registry, &broker).await);
    }
    publish::publish(
        &v1,
        &registry_options,
        REPOSITORY,
        &broker_options,
        &Audience {
            group: GROUP.into(),
            gateway: None,
        },
        &publisher,
    )
    .await
    .unwrap();
    eventually("every gateway on 0.1.0", || async {
        members
            .iter()
            .all(|m| m.active().as_deref() == Some("0.1.0"))
    })
    .await;

    let (stop_tx, stop) = watch::channel(false);
    let loops: Vec<_> = members[1..]
        .iter()
        .map(|m| request_loop(m, stop.clone()))
        .collect();

    let state_dir = tempfile::tempdir().unwrap();
    let options = |state: &str| RolloutOptions {
        registry: registry_options.clone(),
        repository: REPOSITORY.into(),
        broker: broker_options.clone(),
        group: GROUP.into(),
        stages: rollout::parse_stages("1,50%,100%").unwrap(),
        gate: Gate {
            max_error_rate: 0.01,
            // Far above a healthy p99 here: exercised, never the reason.
            max_p99_ms: Some(10_000.0),
            min_requests: 0,
        },
        soak: Duration::from_secs(2),
        install_timeout: Duration::from_secs(30),
        poll: Duration::from_millis(250),
        state_file: Some(state_dir.path().join(state)),
    };
    let ids = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // 1. The good version through every wave.
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut record = {
        let events = events.clone();
        move |e: &Event| {
            events
                .lock()
                .unwrap()
                .push(serde_json::to_value(e).unwrap())
        }
    };
    let started = Instant::now();
    let report = rollout::run(&v2, &options("good.json"), &publisher, &mut record)
        .await
        .unwrap();
    println!(
        "good rollout: {} waves in {:.1} s, figures {:?}",
        report.waves.len(),
        started.elapsed().as_secs_f64(),
        report.figures
    );
    assert!(matches!(report.outcome, Outcome::Completed), "{report:?}");
    assert_eq!(
        report.waves,
        vec![ids(&["gw-1"]), ids(&["gw-2"]), ids(&["gw-3", "gw-4"])]
    );
    assert_eq!(report.waves_passed, 3);
    // The loop's traffic was judged: the last wave's gate saw requests on 0.2.0.
    assert!(report.figures[2].requests > 0, "{:?}", report.figures);
    assert_eq!(report.figures[2].errors, 0);
    assert!(report.figures[2].p99_ms.is_some());
    for m in &members {
        assert_eq!(m.active().as_deref(), Some("0.2.0"), "{}", m.id);
    }
    // The group's notice names 0.2.0 and no pin is left.
    let group_notice = retained(&broker_options, &topics::group_plugin(GROUP, "digits")).await;
    let group_notice = SignedNotice::parse(&group_notice).unwrap();
    assert_eq!(group_notice.notice.version.to_string(), "0.2.0");
    for m in &members {
        let pin = retained(&broker_options, &topics::pin_plugin(GROUP, &m.id, "digits")).await;
        assert!(pin.is_empty(), "{} still pinned", m.id);
    }
    // The same command again, with its state file: it reports, and publishes nothing.
    events.lock().unwrap().clear();
    let again = rollout::run(&v2, &options("good.json"), &publisher, &mut record)
        .await
        .unwrap();
    assert!(matches!(again.outcome, Outcome::Completed));
    let seen: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, ["resumed"]);
    // Another bundle with that state file is refused.
    let err = rollout::run(&bad, &options("good.json"), &publisher, &mut record)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("another rollout"), "{err:#}");

    // 2. The bad version: passes the idle gw-1, fails on gw-2's traffic, both go back.
    let started = Instant::now();
    let report = rollout::run(&bad, &options("bad.json"), &publisher, &mut record)
        .await
        .unwrap();
    println!(
        "bad rollout stopped in {:.1} s: {:?}",
        started.elapsed().as_secs_f64(),
        report.outcome
    );
    match &report.outcome {
        Outcome::RolledBack {
            wave,
            reason,
            returned,
        } => {
            assert_eq!(*wave, 1, "the second wave's gate fails");
            assert!(reason.contains("error rate"), "{reason}");
            assert_eq!(
                returned,
                &[
                    ("gw-1".to_string(), Some("0.2.0".to_string())),
                    ("gw-2".to_string(), Some("0.2.0".to_string())),
                ]
                .into()
            );
        }
        other => panic!("the bad version was not rolled back: {other:?}"),
    }
    assert_eq!(report.waves_passed, 1);
    eventually("gw-1 and gw-2 back on 0.2.0", || async {
        members[..2]
            .iter()
            .all(|m| m.active().as_deref() == Some("0.2.0"))
    })
    .await;
    // Their statuses say so, healthy.
    eventually("gw-1 and gw-2 report 0.2.0 installed", || async {
        let statuses = statuses(&broker_options).await;
        ["gw-1", "gw-2"].iter().all(|id| {
            statuses.iter().any(|s| {
                s.gateway == *id
                    && s.plugins.get("digits").is_some_and(|p| {
                        p.active.as_deref() == Some("0.2.0") && p.state == "installed"
                    })
            })
        })
    })
    .await;
    // A little more traffic on 0.2.0, then the loop stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(true).unwrap();
    let mut answers = Vec::new();
    for l in loops {
        answers.extend(l.await.unwrap());
    }
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    // Every failure is the bad version's own answer (its memory limit on a photo), on gw-2,
    // the only loaded gateway that ran it, and there are exactly as many as 0.3.0 counted.
    let bad_errors: u64 = members
        .iter()
        .map(|m| {
            m.gateway
                .gateway
                .metrics
                .version("digits", "0.3.0")
                .errors()
        })
        .sum();
    println!(
        "request loop: {} answers, {} failed (0.3.0 counted {bad_errors} errors)",
        answers.len(),
        failed.len()
    );
    assert!(!failed.is_empty(), "the bad version answered no request");
    for a in &failed {
        assert_eq!(
            (a.gateway.as_str(), a.status, a.detail.as_str()),
            ("gw-2", 507, "memory-exhausted"),
            "{a:?}"
        );
    }
    assert_eq!(failed.len() as u64, bad_errors);
    for m in &members[2..] {
        assert_eq!(m.active().as_deref(), Some("0.2.0"));
        assert_eq!(
            m.gateway
                .gateway
                .metrics
                .version("digits", "0.3.0")
                .requests(),
            0,
            "{} never ran 0.3.0",
            m.id
        );
    }
    let served: std::collections::BTreeSet<&str> = answers
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.detail.as_str())
        .collect();
    assert!(
        served.contains("0.1.0") && served.contains("0.2.0"),
        "{served:?}"
    );

    // 3. The rollback notice on gw-1's pin, replayed after a newer pin: refused.
    let pin_1 = topics::pin_plugin(GROUP, "gw-1", "digits");
    let rollback_bytes = retained(&broker_options, &pin_1).await;
    let rollback_notice = SignedNotice::parse(&rollback_bytes).unwrap();
    assert_eq!(rollback_notice.notice.kind, NoticeKind::Rollback);
    assert_eq!(rollback_notice.notice.version.to_string(), "0.2.0");
    publish::publish(
        &v4,
        &registry_options,
        REPOSITORY,
        &broker_options,
        &Audience {
            group: GROUP.into(),
            gateway: Some("gw-1".into()),
        },
        &publisher,
    )
    .await
    .unwrap();
    eventually("gw-1 on 0.4.0", || async {
        members[0].active().as_deref() == Some("0.4.0")
    })
    .await;
    publish::publish_raw(&broker_options, &pin_1, rollback_bytes)
        .await
        .unwrap();
    eventually("gw-1 reports the replayed rollback", || async {
        statuses(&broker_options).await.iter().any(|s| {
            s.gateway == "gw-1"
                && s.last_error
                    .as_ref()
                    .is_some_and(|e| e.code == "replayed-notice" && e.message.contains("0.2.0"))
        })
    })
    .await;
    assert_eq!(members[0].active().as_deref(), Some("0.4.0"));
}

//! Federated averaging (issue 16) with a real mosquitto, three in-process gateways serving
//! the learning digits plugin with different labeled feedback, and the aggregator run in this
//! process three times on one state file, one round each:
//!
//! round 1 (bootstrap, quorum 3): every gateway trains from the head the plugin ships and
//! uploads; the average is installed by all three through their gate → a round notice signed
//! by an untrusted key and a replayed old one are refused and reported → gw-c goes offline →
//! round 2 (quorum 2) averages gw-a and gw-b; gw-c keeps its head → gw-c comes back → round 3
//! (quorum 3) needs it, and it joins from the retained notice → round 4 with differential
//! privacy: every upload says it was clipped and noised, and the round records its (ε, δ) →
//! everything the broker carried is checked for the samples' bytes: none.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use edgeplug::client::ChunkedBody;
use edgeplug_bundle::{SecretKey, TrustStore};
use edgeplug_fleet::federated::aggregator::{self, AggregatorOptions, Event, Report};
use edgeplug_fleet::federated::{self, DpSettings, RoundNotice, wire};
use edgeplug_fleet::{Agent, status::GatewayStatus};
use edgeplug_mqtt::{BrokerOptions, Session};
use edgeplug_tests::fleet::{eventually, statuses};
use edgeplug_tests::gateway::{TOKEN, TestGateway, assert_status, example_bundle, req};
use edgeplug_tests::mqtt::Collector;
use edgeplug_tests::servers::TestBroker;
use edgeplug_tests::{DIGITS_WASM, digits_test_bodies};
use serde_json::json;

const GROUP: &str = "fed-1";

/// A gateway serving digits with `samples` as its feedback, trusting `center`, and its
/// fleet agent taking part in federated averaging of digits.
async fn gateway(
    id: &str,
    broker: &TestBroker,
    center: &SecretKey,
    samples: &[(Vec<u8>, u32)],
) -> (TestGateway, Agent) {
    let config = format!(
        "[learning]\nholdout_percent = 25\n\n\
         [fleet]\nbroker = \"{}\"\nclient_id = \"{id}\"\ngroup = \"{GROUP}\"\n\
         registry = \"127.0.0.1:9\"\nkeep_alive_secs = 5\nstatus_interval_ms = 500\n\n\
         [fleet.federated]\nplugins = [\"digits\"]\nmax_steps = 60\n",
        broker.url()
    );
    let gw = TestGateway::start(&config).await;
    std::fs::write(
        gw.dir.path().join("trust/center.pub"),
        center.public_key().to_pem(),
    )
    .unwrap();
    assert_status(
        &gw.push("digits", example_bundle(&gw.key, "digits", DIGITS_WASM))
            .await,
        200,
    );
    for (input, label) in samples {
        let body = json!({
            "label": label,
            "content_type": "application/json",
            "input": base64::engine::general_purpose::STANDARD.encode(input),
        });
        let r = gw
            .send(
                req("POST", "/v1/admin/plugins/digits/feedback")
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("content-type", "application/json")
                    .body(ChunkedBody::new(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            )
            .await;
        assert_status(&r, 200);
    }
    let agent = edgeplug_fleet::start_if_configured(gw.gateway.clone(), gw.dir.path())
        .await
        .unwrap()
        .expect("the configuration has [fleet]");
    (gw, agent)
}

/// Where the live head of digits came from on `gw` (`"federated round N"`, ...).
fn origin(gw: &TestGateway) -> Option<String> {
    gw.gateway
        .learning
        .status("digits")
        .and_then(|s| s["live"]["origin"].as_str().map(String::from))
}

async fn aggregate(options: &AggregatorOptions, key: &SecretKey) -> Report {
    let mut on_event = |event: &Event| eprintln!("{}", serde_json::to_string(event).unwrap());
    aggregator::run(options, key, None, &mut on_event)
        .await
        .unwrap()
}

async fn all_installed(gateways: &[&TestGateway], round: u64) {
    let wanted = format!("federated round {round}");
    eventually(&format!("every gateway gated {wanted}"), || async {
        gateways
            .iter()
            .all(|gw| origin(gw).as_deref() == Some(wanted.as_str()))
    })
    .await;
}

/// Waits until every gateway of `ids` reports `code` with `needle` in its message.
async fn all_report(broker: &BrokerOptions, ids: &[&str], code: &str, needle: &str) {
    eventually(&format!("{ids:?} report {code}"), || async {
        let statuses: Vec<GatewayStatus> = statuses(broker, GROUP).await;
        ids.iter().all(|id| {
            statuses.iter().any(|s| {
                s.gateway == *id
                    && s.last_error
                        .as_ref()
                        .is_some_and(|e| e.code == code && e.message.contains(needle))
            })
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_average_their_heads_without_sharing_a_sample() {
    let broker = TestBroker::start();
    let broker_options = BrokerOptions::from_url(&broker.url()).unwrap();
    let spy = Collector::start(broker.port, "spy", &["#"], false).await;
    let center = Arc::new(SecretKey::generate());
    let data = digits_test_bodies();
    let (a, a_agent) = gateway("gw-a", &broker, &center, &data[0..120]).await;
    let (b, b_agent) = gateway("gw-b", &broker, &center, &data[120..240]).await;
    let (c, c_agent) = gateway("gw-c", &broker, &center, &data[240..360]).await;

    let out = tempfile::tempdir().unwrap();
    let options = |rounds, quorum, dp| AggregatorOptions {
        broker: broker_options.clone(),
        client_id: "center".into(),
        group: GROUP.into(),
        plugin: "digits".into(),
        rounds,
        round_time: Duration::from_secs(25),
        quorum,
        max_extensions: 2,
        dp,
        out_dir: Some(out.path().join("heads")),
        state_file: Some(out.path().join("state.json")),
    };

    // 1. A bootstrap round: all three train from the shipped head; the average goes live on
    //    each through its gate.
    let report = aggregate(&options(1, 3, None), &center).await;
    let round1 = &report.history[0];
    assert_eq!(round1.participants, ["gw-a", "gw-b", "gw-c"], "{report:?}");
    // About three quarters of each gateway's 120 samples train (the rest are held out).
    assert!((180..=330).contains(&round1.samples), "{report:?}");
    all_installed(&[&a, &b, &c], 1).await;
    let mut own = TrustStore::new();
    own.add_key(center.public_key());
    let (head, metadata) =
        edgeplug_train::checkpoint::read(&out.path().join("heads/round-1.ckpt"), &own).unwrap();
    assert_eq!(metadata.samples, round1.samples);
    assert_eq!(head.spec().classes, 10);

    // 2. A round notice signed by a key no gateway trusts, then a replay of round 1's notice
    //    (validly signed, an older sequence): both refused by every gateway.
    let round_topic = federated::round_topic(GROUP, "digits");
    let mut session = Session::connect(&broker_options, "forger").await.unwrap();
    let forged = RoundNotice {
        group: GROUP.into(),
        plugin: "digits".into(),
        round: 99,
        sequence: u64::MAX / 2,
        open: true,
        deadline_unix_ms: u64::MAX / 2,
        quorum: 1,
        dp: None,
        global: None,
        base: None,
        history: vec![],
    };
    session
        .publish_retained(&round_topic, wire::sign(&forged, &SecretKey::generate()))
        .await
        .unwrap();
    let ids = ["gw-a", "gw-b", "gw-c"];
    all_report(&broker_options, &ids, "federated-refused", "signature").await;
    let first_notice = spy.on(&round_topic)[0].payload.clone();
    session
        .publish_retained(&round_topic, first_notice)
        .await
        .unwrap();
    all_report(&broker_options, &ids, "federated-refused", "replay").await;
    session.close().await;

    // 3. gw-c goes offline; round 2 needs two gateways and averages gw-a's and gw-b's.
    c_agent.stop().await;
    let report = aggregate(&options(2, 2, None), &center).await;
    assert_eq!(report.history.len(), 2, "resumed from the state file");
    assert_eq!(report.history[1].participants, ["gw-a", "gw-b"]);
    all_installed(&[&a, &b], 2).await;
    assert_eq!(origin(&c).as_deref(), Some("federated round 1"));

    // 4. gw-c comes back and joins round 3, which needs all three.
    let c_agent = edgeplug_fleet::start_if_configured(c.gateway.clone(), c.dir.path())
        .await
        .unwrap()
        .unwrap();
    let report = aggregate(&options(3, 3, None), &center).await;
    assert_eq!(
        report.history[2].participants,
        ["gw-a", "gw-b", "gw-c"],
        "{report:?}"
    );
    all_installed(&[&a, &b, &c], 3).await;

    // 5. A round with differential privacy (noise small enough for the gate to judge the head
    //    on its merits): the uploads are clipped and noised, the record has ε for δ.
    let dp = DpSettings {
        clip: 2.0,
        noise_multiplier: 0.05,
        delta: 1e-5,
    };
    let report = aggregate(&options(4, 3, Some(dp)), &center).await;
    let round4 = &report.history[3];
    assert_eq!(round4.participants, ["gw-a", "gw-b", "gw-c"], "{report:?}");
    assert_eq!(round4.dp, Some(dp));
    let spent = edgeplug_train::fedavg::privacy_spent(0.05, 1, 1e-5).unwrap();
    assert_eq!(round4.epsilon, Some(spent.epsilon));
    let noised: Vec<_> = spy
        .on(&format!("edgeplug/fleet/{GROUP}/federated/digits/uploads/"))
        .into_iter()
        .filter(|u| u.json()["round"] == 4)
        .collect();
    assert_eq!(noised.len(), 3);
    assert!(
        noised
            .iter()
            .all(|u| u.json()["dp"]["noise_multiplier"] == 0.05)
    );

    // No upload for the forged round 99 was ever made.
    let uploads = spy.on(&format!("edgeplug/fleet/{GROUP}/federated/digits/uploads/"));
    assert!(uploads.len() >= 8, "{} uploads", uploads.len());
    assert!(uploads.iter().all(|u| u.json()["round"] != 99));

    // 6. Nothing the broker carried holds a sample: neither its bytes nor their base64.
    let received = spy.received.lock().unwrap().clone();
    assert!(received.len() > 10);
    for (input, _) in &data[0..360] {
        let encoded = base64::engine::general_purpose::STANDARD.encode(input);
        for message in &received {
            let holds = |needle: &[u8]| message.payload.windows(needle.len()).any(|w| w == needle);
            assert!(
                !holds(input) && !holds(encoded.as_bytes()),
                "a sample on {}",
                message.topic
            );
        }
    }

    for agent in [a_agent, b_agent, c_agent] {
        agent.stop().await;
    }
}

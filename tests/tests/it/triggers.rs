//! MQTT triggers with a real broker (Debian's `mosquitto`, started by the test): devices
//! publish, plugins run, results come back with who answered and an id to drop duplicates by.
//!
//! - A trigger runs its plugin on each message and publishes a record naming the gateway,
//!   device, plugin and version; a malformed message gets an error record and the next one
//!   an answer; MQTT 5 request/response gets its answer on the response topic with its
//!   correlation data; a message over the plugin's size limit gets a `request-too-large`
//!   record; a hot swap reaches the next message; `/metrics` counts all of it.
//! - A gateway SIGKILLed in the middle of a load loses no message: started again, it gets the
//!   unacknowledged ones from its persistent session, and every message has its result.
//! - Store-and-forward: 1,000 messages while the center's uplink is down for 30 s and the
//!   gateway's broker restarts once: all 1,000 results reach the center when the link returns
//!   (through the mosquitto bridge `edgeplug bridge-config` writes).
//! - Two gateways share a stream (MQTT 5 shared subscription); one is SIGKILLed mid-load:
//!   nothing is lost, the survivor takes its half, the dead one's share waits for its return.
//! - An EdgeX event (envelope, base64 payload, Binary PNG reading) is answered with an EdgeX
//!   event carrying the record; a message that is no EdgeX event gets an error record.
//! - A camera's MJPEG stream (served by the test, 30 frames/s) is sampled at 5 fps into the
//!   plugin; every other frame is dropped and counted, never queued.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgeplug_sdk::npy::NpyData;
use edgeplug_tests::camera::mjpeg_camera;
use edgeplug_tests::fleet::eventually;
use edgeplug_tests::gateway::{TestGateway, digits_bundle, write_gateway_dir};
use edgeplug_tests::mqtt::{Collector, Device, Received};
use edgeplug_tests::relay::Relay;
use edgeplug_tests::servers::TestBroker;
use edgeplug_tests::{fixture, npy};
use edgeplug_triggers::envelope::result_id;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

use crate::lifecycle::ServedGateway;

/// `[mqtt]` and one digits trigger on `devices/+/digits`, results to
/// `results/{device}/{plugin}`.
fn trigger_config(broker: &TestBroker, client_id: &str) -> String {
    format!(
        "[mqtt]\nbroker = \"{}\"\nclient_id = \"{client_id}\"\nkeep_alive_secs = 5\nstall_reconnect_secs = 10\n\n\
         [[triggers]]\ntopic = \"devices/+/digits\"\nplugin = \"digits\"\n\
         content_type = \"application/json\"\nresult_topic = \"results/{{device}}/{{plugin}}\"\n",
        broker.url()
    )
}

/// The gateway's broker. mosquitto queues at most 1,000 messages per client by default and
/// drops the rest: a gateway's broker must hold the backlog of a gateway that is down or busy.
fn gateway_broker() -> TestBroker {
    TestBroker::start_with("max_queued_messages 100000\n")
}

/// A gateway with `config` serving digits 1.0.0, and its triggers started.
async fn digits_gateway(config: &str) -> (TestGateway, edgeplug_triggers::Triggers) {
    let gateway = TestGateway::start(config).await;
    let pushed = gateway
        .push("digits", digits_bundle(&gateway.key, "1.0.0"))
        .await;
    assert_eq!(pushed.status(), 200, "{:?}", pushed.body());
    let triggers =
        edgeplug_triggers::start_if_configured(gateway.gateway.clone(), gateway.dir.path())
            .unwrap()
            .expect("the configuration has triggers or cameras");
    (gateway, triggers)
}

/// The 540 held-out digits as JSON bodies, with their labels.
fn digits() -> Vec<(Vec<u8>, i64)> {
    let raw = npy("digits/digits_test_raw.npy");
    let NpyData::U8(values) = raw.data else {
        panic!("digits_test_raw.npy is uint8")
    };
    let NpyData::I64(labels) = npy("digits/digits_test_labels.npy").data else {
        panic!("labels are int64")
    };
    values
        .chunks(64)
        .map(|digit| serde_json::to_vec(digit).unwrap())
        .zip(labels)
        .collect()
}

/// Publishes `count` digits as `m-0`, `m-1`... from devices `dev-0`..`dev-9`; returns each id's
/// expected label.
async fn publish_digits(device: &Device, count: usize) -> BTreeMap<String, i64> {
    let digits = digits();
    let mut expected = BTreeMap::new();
    for i in 0..count {
        let (body, label) = &digits[i % digits.len()];
        let id = format!("m-{i}");
        device
            .publish_with_id(&format!("devices/dev-{}/digits", i % 10), body.clone(), &id)
            .await;
        expected.insert(id, *label);
    }
    expected
}

/// Sends a probe (id `probe`) until `gateways` different gateways have answered one: the
/// broker keeps messages only for a subscription that exists, and a gateway subscribes after it
/// starts listening.
async fn await_subscribed(device: &Device, collector: &Collector, gateways: usize) {
    let started = Instant::now();
    loop {
        let answering: BTreeSet<String> = collector
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.json()["gateway"].as_str().unwrap_or_default().to_string())
            .collect();
        if answering.len() >= gateways {
            return;
        }
        assert!(
            started.elapsed() < edgeplug_tests::fleet::DEADLINE,
            "only {answering:?} answered probes"
        );
        device
            .publish_with_id("devices/dev-0/digits", digits()[0].0.clone(), "probe")
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The distinct ids among `records`, and how many records were duplicates.
fn distinct_ids(records: &[Received]) -> (BTreeSet<String>, usize) {
    let ids: Vec<String> = records
        .iter()
        .map(|r| r.json()["id"].as_str().expect("an id").to_string())
        .collect();
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    let duplicates = ids.len() - distinct.len();
    (distinct, duplicates)
}

/// Every expected id has a record, and the records' labels are the model's (534 of 540 right
/// on the held-out digits: at least 97 % here, as each message is one of them).
fn assert_all_answered(records: &[Received], expected: &BTreeMap<String, i64>) {
    let mut labels = BTreeMap::new();
    for record in records {
        let json = record.json();
        let id = json["id"].as_str().unwrap().to_string();
        let label = json["output"]["label"]
            .as_i64()
            .unwrap_or_else(|| panic!("a record without a label: {json}"));
        labels.insert(id, label);
    }
    let missing: Vec<&String> = expected
        .keys()
        .filter(|id| !labels.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} messages lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let right = expected
        .iter()
        .filter(|(id, label)| labels[*id] == **label)
        .count();
    assert!(
        right * 100 >= expected.len() * 97,
        "{right} of {} labels right",
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_run_plugins_and_say_who_answered() {
    let broker = gateway_broker();
    let (gateway, triggers) = digits_gateway(&trigger_config(&broker, "gw-t1")).await;
    let collector =
        Collector::start(broker.port, "center", &["results/#", "replies/#"], false).await;
    let device = Device::connect(broker.port, "cam-fleet").await;
    let seven = std::fs::read(fixture("digits/seven.json")).unwrap();
    eventually("the trigger subscribed", || async {
        triggers.metrics().subscribed.load(Ordering::Relaxed) == 1
    })
    .await;

    device
        .publish(
            "devices/cam-1/digits",
            seven.clone(),
            PublishProperties::default(),
        )
        .await;
    device
        .publish(
            "devices/cam-2/digits",
            b"{not json".to_vec(),
            PublishProperties::default(),
        )
        .await;
    let request = PublishProperties {
        response_topic: Some("replies/cam-3".into()),
        correlation_data: Some(b"req-42".to_vec().into()),
        ..Default::default()
    };
    device
        .publish("devices/cam-3/digits", seven.clone(), request)
        .await;
    eventually("three results and one reply", || async {
        collector.on("results/").len() == 3 && collector.on("replies/").len() == 1
    })
    .await;

    let results = collector.on("results/");
    let by_device = |device: &str| -> serde_json::Value {
        results
            .iter()
            .find(|r| r.topic == format!("results/{device}/digits"))
            .unwrap_or_else(|| panic!("no result for {device}: {results:?}"))
            .json()
    };
    let first = by_device("cam-1");
    assert_eq!(first["output"]["label"], 7, "{first}");
    assert_eq!(first["plugin"], "digits");
    assert_eq!(first["version"], "1.0.0");
    assert_eq!(first["device"], "cam-1");
    assert_eq!(first["gateway"], "gw-t1");
    assert_eq!(first["topic"], "devices/cam-1/digits");
    assert_eq!(
        first["id"],
        result_id("devices/cam-1/digits", &seven, None, None).as_str()
    );
    let malformed = by_device("cam-2");
    assert_eq!(
        malformed["error"]["code"], "invalid-argument",
        "{malformed}"
    );
    assert!(malformed.get("output").is_none(), "{malformed}");
    let reply = &collector.on("replies/")[0];
    assert_eq!(reply.topic, "replies/cam-3");
    assert_eq!(reply.correlation.as_deref(), Some(&b"req-42"[..]));
    assert_eq!(reply.json()["output"]["label"], 7);
    assert_eq!(reply.json()["device"], "cam-3");

    // Over the plugin's request limit (1 MiB here): refused before it runs, with a record.
    device
        .publish(
            "devices/cam-5/digits",
            vec![b' '; 2 << 20],
            PublishProperties::default(),
        )
        .await;
    eventually("the oversized message's record", || async {
        collector.on("results/cam-5/").len() == 1
    })
    .await;
    let oversized = collector.on("results/cam-5/")[0].json();
    assert_eq!(
        oversized["error"]["code"], "request-too-large",
        "{oversized}"
    );

    // A hot swap reaches the next message.
    let pushed = gateway
        .push("digits", digits_bundle(&gateway.key, "2.0.0"))
        .await;
    assert_eq!(pushed.status(), 200, "{:?}", pushed.body());
    device
        .publish(
            "devices/cam-4/digits",
            seven.clone(),
            PublishProperties::default(),
        )
        .await;
    eventually("the result from the new version", || async {
        collector.on("results/cam-4/").len() == 1
    })
    .await;
    assert_eq!(collector.on("results/cam-4/")[0].json()["version"], "2.0.0");

    let metrics = String::from_utf8(gateway.get("/metrics").await.body().to_vec()).unwrap();
    for line in [
        "edgeplug_trigger_messages_total{topic=\"devices/+/digits\",plugin=\"digits\"} 5",
        "edgeplug_trigger_answers_total{topic=\"devices/+/digits\",plugin=\"digits\"} 3",
        "edgeplug_trigger_failures_total{topic=\"devices/+/digits\",plugin=\"digits\"} 2",
        "edgeplug_trigger_broker_connected 1",
        "edgeplug_trigger_subscriptions 1",
        "edgeplug_trigger_in_flight 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} not in:\n{metrics}"
        );
    }
    // The plugin's own series count the messages like HTTP requests.
    assert!(
        metrics.contains("edgeplug_requests_total{plugin=\"digits\",version=\"1.0.0\"} 3"),
        "{metrics}"
    );
    triggers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_load_loses_no_message() {
    const MESSAGES: usize = 2000;
    let broker = gateway_broker();
    let dir = tempfile::tempdir().unwrap();
    let (key, config) = write_gateway_dir(dir.path(), &trigger_config(&broker, "gw-k1"));
    let bundle = dir.path().join("digits.epk");
    std::fs::write(&bundle, digits_bundle(&key, "1.0.0")).unwrap();
    let collector = Collector::start(broker.port, "center", &["results/#"], true).await;
    let served =
        ServedGateway::start(&config, std::slice::from_ref(&bundle)).expect("serve starts");
    let device = Device::connect(broker.port, "dev-fleet").await;
    // The broker keeps messages only for a subscription that exists: wait for the gateway's.
    await_subscribed(&device, &collector, 1).await;
    let mut expected = publish_digits(&device, MESSAGES).await;
    expected.insert("probe".into(), digits()[0].1);
    let total = MESSAGES + 1;
    eventually("the load under way", || async { collector.count() >= 50 }).await;
    served.kill();
    let at_kill = collector.count();
    assert!(
        at_kill < total,
        "every message was answered before the kill ({at_kill}): the test proves nothing"
    );
    // Back with the same client id: the broker sends what the dead process never acknowledged.
    let served =
        ServedGateway::start(&config, std::slice::from_ref(&bundle)).expect("serve restarts");
    let started = Instant::now();
    while distinct_ids(&collector.on("results/")).0.len() < total {
        if started.elapsed() > edgeplug_tests::fleet::DEADLINE {
            let metrics = served
                .send(
                    edgeplug_tests::gateway::req("GET", "/metrics")
                        .body(edgeplug::client::ChunkedBody::new(Vec::new()))
                        .unwrap(),
                )
                .await;
            let metrics = String::from_utf8_lossy(metrics.body()).into_owned();
            let trigger_lines: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("edgeplug_trigger") || l.starts_with("edgeplug_requests_total")
                })
                .collect();
            panic!(
                "{} of {total} answered ({at_kill} before the kill, {} acked by the broker); its metrics: {trigger_lines:#?}; the gateway said: {}",
                distinct_ids(&collector.on("results/")).0.len(),
                device.acked.load(Ordering::SeqCst),
                served.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = collector.on("results/");
    assert_all_answered(&records, &expected);
    let (distinct, duplicates) = distinct_ids(&records);
    assert_eq!(distinct.len(), total, "results for messages nobody sent");
    eprintln!(
        "killed after {at_kill} results; {total} answered, {duplicates} duplicates dropped by id"
    );
    // The probe was sent until answered: at least once.
    assert!(device.acked.load(Ordering::SeqCst) >= total);
    served.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_reach_the_center_after_an_outage_and_a_broker_restart() {
    const MESSAGES: usize = 1000;
    // With the probe sent before the outage.
    const TOTAL: usize = MESSAGES + 1;
    const OUTAGE: Duration = Duration::from_secs(30);
    let center = TestBroker::start();
    let uplink = Relay::start(SocketAddr::from(([127, 0, 0, 1], center.port)));
    let bridge =
        edgeplug_triggers::bridge::mosquitto_conf(&edgeplug_triggers::bridge::BridgeOptions {
            name: "center".into(),
            center: edgeplug_mqtt::BrokerUrl::parse(&format!("mqtt://127.0.0.1:{}", uplink.port))
                .unwrap(),
            client_id: "gw-b1-bridge".into(),
            topics: vec!["results/#".into()],
            username: None,
            password: None,
            ca_file: None,
            max_queued_messages: 100_000,
            max_queued_bytes: 256 << 20,
            retry_max_secs: 3,
        })
        .unwrap();
    let mut local = TestBroker::start_with(&bridge);
    let at_center = Collector::start(center.port, "data-lake", &["results/#"], true).await;
    let (_gateway, triggers) = digits_gateway(&trigger_config(&local, "gw-b1")).await;
    // The gateway subscribed and the bridge is up: a first result crosses.
    let device = Device::connect(local.port, "dev-fleet").await;
    await_subscribed(&device, &at_center, 1).await;
    // Let the last probes settle: only then does a count that moves prove a leak.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probes = at_center.count();
    let probes_sent = device.acked.load(Ordering::SeqCst);

    uplink.cut();
    let down_since = Instant::now();
    let mut expected = publish_digits(&device, MESSAGES).await;
    expected.insert("probe".into(), digits()[0].1);
    let answered = |triggers: &edgeplug_triggers::Triggers| -> u64 {
        triggers.metrics().per_trigger[0]
            .answered
            .load(Ordering::Relaxed)
            .saturating_sub(probes_sent as u64)
    };
    eventually("a third of the messages answered", || async {
        answered(&triggers) >= MESSAGES as u64 / 3
    })
    .await;
    // The gateway's broker restarts mid-load: its queues (the triggers' messages, the
    // bridge's results) are saved on the way down and come back.
    local.restart();
    eventually("every message answered locally", || async {
        device.acked.load(Ordering::SeqCst) >= probes_sent + MESSAGES
            && answered(&triggers) >= MESSAGES as u64
    })
    .await;
    assert_eq!(
        at_center.count(),
        probes,
        "results crossed a link that is down"
    );
    tokio::time::sleep(OUTAGE.saturating_sub(down_since.elapsed())).await;
    uplink.restore();
    eventually("every result at the center", || async {
        distinct_ids(&at_center.received.lock().unwrap()).0.len() >= TOTAL
    })
    .await;
    let records = at_center.on("results/");
    assert_all_answered(&records, &expected);
    let (distinct, duplicates) = distinct_ids(&records);
    assert_eq!(distinct.len(), TOTAL);
    eprintln!(
        "{MESSAGES} results after a {:?} outage and a broker restart; {duplicates} duplicates dropped by id",
        down_since.elapsed()
    );
    triggers.stop().await;
}

/// A member of the share group `pool` on `broker`: `edgeplug serve` in a child process with
/// digits 1.0.0 installed. Its directory, configuration and bundle come with it, for a
/// restart.
struct ShareMember {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    bundle: std::path::PathBuf,
    served: ServedGateway,
}

fn share_member(broker: &TestBroker, id: &str) -> ShareMember {
    let dir = tempfile::tempdir().unwrap();
    let shared = format!("{}share = \"pool\"\n", trigger_config(broker, id));
    let (key, config) = write_gateway_dir(dir.path(), &shared);
    let bundle = dir.path().join("digits.epk");
    std::fs::write(&bundle, digits_bundle(&key, "1.0.0")).unwrap();
    let served =
        ServedGateway::start(&config, std::slice::from_ref(&bundle)).expect("serve starts");
    ShareMember {
        dir,
        config,
        bundle,
        served,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_sharing_a_stream_lose_nothing_when_one_is_killed() {
    const MESSAGES: usize = 2000;
    let broker = gateway_broker();
    let collector = Collector::start(broker.port, "center", &["results/#"], true).await;
    let mut members: Vec<ShareMember> = ["gw-s1", "gw-s2"]
        .iter()
        .map(|id| share_member(&broker, id))
        .collect();
    let device = Device::connect(broker.port, "dev-fleet").await;
    // Both members' subscriptions are in place once each has answered a probe of its own.
    await_subscribed(&device, &collector, 2).await;
    let mut expected = publish_digits(&device, MESSAGES).await;
    expected.insert("probe".into(), digits()[0].1);
    let total = MESSAGES + 1;
    eventually("the load under way", || async {
        distinct_ids(&collector.on("results/")).0.len() >= 100
    })
    .await;
    let ShareMember {
        dir,
        config,
        bundle,
        served: killed,
    } = members.remove(0);
    killed.kill();
    let at_kill = distinct_ids(&collector.on("results/")).0.len();
    assert!(at_kill < total, "everything was answered before the kill");
    // The survivor takes the stream; what the broker had in flight to the dead member waits
    // in its session (mosquitto does not hand a shared message on to another member), until
    // it comes back.
    let mut last = 0;
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_secs(3) {
        let now = distinct_ids(&collector.on("results/")).0.len();
        if now != last {
            last = now;
            still_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waiting = total - last;
    let back =
        ServedGateway::start(&config, std::slice::from_ref(&bundle)).expect("serve restarts");
    eventually("every message answered", || async {
        distinct_ids(&collector.on("results/")).0.len() >= total
    })
    .await;
    let records = collector.on("results/");
    assert_all_answered(&records, &expected);
    let (distinct, duplicates) = distinct_ids(&records);
    assert_eq!(distinct.len(), total);
    let mut by_gateway: BTreeMap<String, usize> = BTreeMap::new();
    for record in &records {
        *by_gateway
            .entry(record.json()["gateway"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        by_gateway.get("gw-s2").copied().unwrap_or(0) > MESSAGES / 4,
        "the survivor did not take the stream: {by_gateway:?}"
    );
    eprintln!(
        "shared stream: killed gw-s1 after {at_kill} results; {waiting} waited for it to come back; {total} answered, {duplicates} duplicates; records by gateway {by_gateway:?}"
    );
    back.stop();
    for ShareMember { served, .. } in members {
        served.stop();
    }
    drop(dir);
}

/// A member that stops cleanly (SIGTERM) leaves its share group first: the others take the
/// whole stream at once, instead of the broker keeping the stopped member's share for its
/// return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_leaves_its_share_to_the_others() {
    const MESSAGES: usize = 200;
    let broker = gateway_broker();
    let collector = Collector::start(broker.port, "center", &["results/#"], true).await;
    let mut members: Vec<ShareMember> = ["gw-l1", "gw-l2"]
        .iter()
        .map(|id| share_member(&broker, id))
        .collect();
    let device = Device::connect(broker.port, "dev-leave").await;
    await_subscribed(&device, &collector, 2).await;
    let leaving = members.remove(0);
    assert!(leaving.served.stop().success(), "a clean stop");
    let before = collector.on("results/").len();
    let expected = publish_digits(&device, MESSAGES).await;
    eventually(
        "every message answered by the member that stayed",
        || async { distinct_ids(&collector.on("results/")[before..]).0.len() >= MESSAGES },
    )
    .await;
    let records = collector.on("results/")[before..].to_vec();
    assert_all_answered(&records, &expected);
    for record in &records {
        assert_eq!(record.json()["gateway"], "gw-l2", "{}", record.json());
    }
    for ShareMember { served, .. } in members {
        served.stop();
    }
}

/// An EdgeX device service's event (core-contracts v3 `Event` in an `AddEventRequest`, in the
/// message bus's `MessageEnvelope` with a base64 payload, as EdgeX 3.0 publishes on
/// `edgex/events/device/<service>/<profile>/<device>/<source>`) carrying a PNG snapshot.
fn edgex_message(device: &str, event_id: &str, png: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let event = serde_json::json!({
        "apiVersion": "v3",
        "id": event_id,
        "deviceName": device,
        "profileName": "camera-profile",
        "sourceName": "snapshot",
        "origin": 1_796_400_000_000_000_000u64,
        "readings": [{
            "id": "3c1f1d2e-9a8b-4c7d-8e6f-5a4b3c2d1e0f",
            "origin": 1_796_400_000_000_000_000u64,
            "deviceName": device,
            "resourceName": "snapshot",
            "profileName": "camera-profile",
            "valueType": "Binary",
            "mediaType": "image/png",
            "binaryValue": b64(png),
        }],
    });
    let request = serde_json::json!({"apiVersion": "v3", "requestId": "5f0e1d2c-0000-4000-8000-000000000001", "event": event});
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v3",
        "receivedTopic": "",
        "correlationID": "9d8c7b6a-0000-4000-8000-000000000002",
        "requestID": "5f0e1d2c-0000-4000-8000-000000000001",
        "errorCode": 0,
        "contentType": "application/json",
        "payload": b64(request.to_string().as_bytes()),
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edgex_events_are_answered_in_kind() {
    use base64::Engine as _;
    let broker = gateway_broker();
    let config = format!(
        "[mqtt]\nbroker = \"{}\"\nclient_id = \"gw-x1\"\n\n[[triggers]]\n\
         topic = \"edgex/events/device/+/+/+/+\"\ndevice_level = 6\nplugin = \"digits\"\n\
         format = \"edgex\"\nresult_topic = \"edgex-results/{{device}}/{{plugin}}\"\n",
        broker.url()
    );
    let (_gateway, triggers) = digits_gateway(&config).await;
    eventually("the trigger subscribed", || async {
        triggers.metrics().subscribed.load(Ordering::Relaxed) == 1
    })
    .await;
    let collector = Collector::start(broker.port, "center", &["edgex-results/#"], false).await;
    let device = Device::connect(broker.port, "edgex-device-onvif").await;
    let png = std::fs::read(fixture("images/adversarial/digit1-gray8.png")).unwrap();
    let event_id = "6a3b2b1e-6f37-4b39-9f47-0f0cbe1f8d2a";
    device
        .publish(
            "edgex/events/device/device-onvif/camera-profile/cam-9/snapshot",
            edgex_message("cam-9", event_id, &png),
            PublishProperties::default(),
        )
        .await;
    device
        .publish(
            "edgex/events/device/device-onvif/camera-profile/cam-8/snapshot",
            br#"{"apiVersion": "v3", "payload": 7}"#.to_vec(),
            PublishProperties::default(),
        )
        .await;
    eventually("two answers", || async { collector.count() == 2 }).await;

    let answer = collector.on("edgex-results/cam-9/digits")[0].json();
    assert_eq!(
        answer["correlationID"],
        "9d8c7b6a-0000-4000-8000-000000000002"
    );
    let payload = base64::engine::general_purpose::STANDARD
        .decode(
            answer["payload"]
                .as_str()
                .expect("a base64 payload, as sent"),
        )
        .unwrap();
    let request: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let event = &request["event"];
    assert_eq!(event["deviceName"], "cam-9");
    assert_eq!(event["sourceName"], "digits");
    let record = &event["readings"][0]["objectValue"];
    assert_eq!(event["readings"][0]["valueType"], "Object");
    assert_eq!(record["output"]["label"], 1, "{record}");
    assert_eq!(
        record["id"], event_id,
        "the EdgeX event's id is the result's id"
    );
    assert_eq!(record["device"], "cam-9");
    // Not an EdgeX event: a plain error record, and the trigger goes on.
    let refused = collector.on("edgex-results/cam-8/digits")[0].json();
    assert_eq!(refused["error"]["code"], "invalid-argument", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("EdgeX"),
        "{refused}"
    );
    triggers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_stream_is_sampled_and_the_rest_dropped_and_counted() {
    const FRAMES: usize = 120;
    let png = std::fs::read(fixture("images/adversarial/digit1-gray8.png")).unwrap();
    let mut jpeg = Vec::new();
    image::load_from_memory(&png)
        .unwrap()
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let (camera, sent) = mjpeg_camera(jpeg, FRAMES, 30).await;
    let broker = gateway_broker();
    let config = format!(
        "[mqtt]\nbroker = \"{}\"\nclient_id = \"gw-c1\"\n\n[[cameras]]\nname = \"dock-3\"\n\
         url = \"http://{camera}/video.mjpg\"\nplugin = \"digits\"\nfps = 5.0\n\
         result_topic = \"results/{{device}}/{{plugin}}\"\n",
        broker.url()
    );
    let collector = Collector::start(broker.port, "center", &["results/#"], false).await;
    let (gateway, triggers) = digits_gateway(&config).await;
    let counters = || {
        let c = &triggers.metrics().per_camera[0];
        [
            c.frames.load(Ordering::SeqCst),
            c.run.load(Ordering::SeqCst),
            c.dropped_rate.load(Ordering::SeqCst),
            c.dropped_busy.load(Ordering::SeqCst),
        ]
    };
    eventually("the whole stream read", || async {
        sent.load(Ordering::SeqCst) == FRAMES && counters()[0] == FRAMES as u64
    })
    .await;
    // Every frame read is run or dropped, once the sampler took the last one.
    eventually("every frame accounted for", || async {
        let [frames, run, rate, busy] = counters();
        frames == run + rate + busy && collector.count() as u64 == run
    })
    .await;
    let [frames, run, rate, busy] = counters();
    // 5 of the 30 frames a second, over the 4 s the stream lasted.
    assert!(
        (10..=30).contains(&run),
        "{run} of {frames} frames run at 5 fps over 4 s"
    );
    assert!(rate + busy >= 80, "{rate} + {busy} dropped of {frames}");
    let records = collector.on("results/dock-3/digits");
    assert_eq!(records.len() as u64, run);
    for record in &records {
        let json = record.json();
        assert_eq!(json["device"], "dock-3");
        assert_eq!(json["topic"], "camera/dock-3");
        assert_eq!(json["output"]["label"], 1, "{json}");
    }
    let metrics = String::from_utf8(gateway.get("/metrics").await.body().to_vec()).unwrap();
    let line =
        format!("edgeplug_camera_frames_run_total{{camera=\"dock-3\",plugin=\"digits\"}} {run}");
    assert!(
        metrics.lines().any(|l| l == line),
        "{line:?} not in:\n{metrics}"
    );
    eprintln!(
        "camera: {frames} frames read, {run} run, {rate} dropped over the rate, {busy} dropped busy"
    );
    triggers.stop().await;
}

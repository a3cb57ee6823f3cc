//! Canaries inside one gateway: a pushed version that serves a share of requests, or a shadow
//! copy of each, next to the active one; promoted by an operator, reverted by its gate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edgeplug::client::{ChunkedBody, Connection};
use edgeplug_bundle::SecretKey;
use edgeplug_tests::fixture;
use edgeplug_tests::gateway::*;
use hyper::Response;
use hyper::body::Bytes;
use serde_json::Value;

/// A digits bundle of `version` whose fully connected layer cannot be loaded: every request
/// fails (`not-found` from `tensor.load`), and it has no self-test to stop it at the push.
fn broken_bundle(key: &SecretKey, version: &str) -> Vec<u8> {
    bundle_with(key, version, |dir| {
        let toml = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
        let cut = toml.find("\n[[self-test]]").expect("a self-test to drop");
        std::fs::write(dir.join("plugin.toml"), &toml[..cut]).unwrap();
        std::fs::remove_dir_all(dir.join("selftest")).unwrap();
        // The same length, so the safetensors header's offsets stay valid.
        let weights = std::fs::read(dir.join("weights.safetensors")).unwrap();
        let renamed = replace_same_length(&weights, b"m.fc.weight", b"m.fc.wXight");
        std::fs::write(dir.join("weights.safetensors"), renamed).unwrap();
    })
}

fn replace_same_length(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the tensor name in the weights");
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

async fn admin(gw: &TestGateway, method: &str, path: &str, body: Vec<u8>) -> Response<Bytes> {
    gw.send(
        req(method, path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(ChunkedBody::new(body))
            .unwrap(),
    )
    .await
}

/// `n` requests for a seven on one connection: the versions that answered, by count, and the
/// statuses.
async fn sevens(gw: &TestGateway, n: usize) -> (BTreeMap<String, usize>, BTreeMap<u16, usize>) {
    let seven = std::fs::read(fixture("digits/seven.json")).unwrap();
    let mut connection = Connection::open(&gw.url(), None).await.unwrap();
    let (mut versions, mut statuses) = (BTreeMap::new(), BTreeMap::new());
    for _ in 0..n {
        let r = connection
            .send(
                req("POST", "/v1/plugins/digits/infer")
                    .header("content-type", "application/json")
                    .body(ChunkedBody::new(seven.clone()))
                    .unwrap(),
            )
            .await
            .unwrap();
        *statuses.entry(r.status().as_u16()).or_default() += 1;
        if r.status() == 200 {
            assert_eq!(
                json_of(&r)["label"],
                7,
                "a right answer from either version"
            );
        }
        *versions
            .entry(header(&r, "x-edgeplug-version").to_string())
            .or_default() += 1;
    }
    (versions, statuses)
}

async fn digits_listing(gw: &TestGateway) -> Value {
    json_of(&gw.get("/v1/plugins").await)["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "digits")
        .cloned()
        .unwrap()
}

/// Polls the listing until `done` holds of the digits entry (the gate runs every 200 ms).
async fn listing_until(gw: &TestGateway, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listing = digits_listing(gw).await;
        if done(&listing) {
            return listing;
        }
        assert!(Instant::now() < deadline, "{what}: {listing:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway serving digits 1.0.0 with `canary` (a bundle made with the gateway's key)
/// started as its canary by `PUT /v1/admin/plugins/digits?{query}`: the gateway and the
/// start's answer.
async fn gateway_with_canary(
    query: &str,
    canary: impl FnOnce(&SecretKey) -> Vec<u8>,
) -> (TestGateway, Value) {
    let gw = TestGateway::start("").await;
    assert_status(
        &gw.push("digits", digits_bundle(&gw.key, "1.0.0")).await,
        200,
    );
    let bundle = canary(&gw.key);
    let started = admin(
        &gw,
        "PUT",
        &format!("/v1/admin/plugins/digits?{query}"),
        bundle,
    )
    .await;
    assert_status(&started, 200);
    let started = json_of(&started);
    (gw, started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_serves_its_share_and_is_promoted() {
    let (gw, started) = gateway_with_canary("canary=10", |key| digits_bundle(key, "1.1.0")).await;
    assert_eq!(started["canary"], "1.1.0");
    assert_eq!(started["active"], "1.0.0");
    assert_eq!(started["self_tests"], 1, "self-tested as a push is");

    let (versions, statuses) = sevens(&gw, 2000).await;
    assert_eq!(statuses, BTreeMap::from([(200, 2000)]));
    let canary = versions.get("1.1.0").copied().unwrap_or(0);
    assert_eq!(versions.get("1.0.0").copied().unwrap_or(0) + canary, 2000);
    let share = canary as f64 / 20.0;
    assert!(
        (7.0..=13.0).contains(&share),
        "canary share {share}% of 10%"
    );
    eprintln!("canary share over 2,000 requests: {share:.2} % (asked 10 %)");

    // Both versions' series, the canary's figures in the listing, nothing in the store yet.
    let metrics = String::from_utf8_lossy(gw.get("/metrics").await.body()).to_string();
    for version in ["1.0.0", "1.1.0"] {
        assert!(
            metrics.contains(&format!(
                "edgeplug_requests_total{{plugin=\"digits\",version=\"{version}\"}}"
            )),
            "{metrics}"
        );
    }
    assert!(metrics.contains("edgeplug_canary_starts_total{plugin=\"digits\"} 1"));
    let listing = digits_listing(&gw).await;
    assert_eq!(listing["active"]["version"], "1.0.0");
    assert_eq!(listing["canary"]["version"], "1.1.0");
    assert_eq!(listing["canary"]["percent"], 10);
    assert_eq!(listing["canary"]["requests"], canary as u64);
    assert_eq!(listing["canary"]["errors"], 0);
    assert_eq!(
        listing["versions"].as_array().unwrap().len(),
        1,
        "{listing:#}"
    );

    // A second canary of an older version than the active is refused; a bad query too.
    let older = admin(
        &gw,
        "PUT",
        "/v1/admin/plugins/digits?canary=10",
        digits_bundle(&gw.key, "0.9.0"),
    )
    .await;
    assert_status(&older, 409);
    let bad = admin(
        &gw,
        "PUT",
        "/v1/admin/plugins/digits?canary=150",
        digits_bundle(&gw.key, "1.2.0"),
    )
    .await;
    assert_status(&bad, 400);
    assert!(
        error_message(&bad).contains("1 to 99"),
        "{}",
        error_message(&bad)
    );
    assert_eq!(digits_listing(&gw).await["canary"]["version"], "1.1.0");

    let promoted = admin(
        &gw,
        "POST",
        "/v1/admin/plugins/digits/canary/promote",
        vec![],
    )
    .await;
    assert_status(&promoted, 200);
    assert_eq!(json_of(&promoted)["version"], "1.1.0");
    assert_eq!(json_of(&promoted)["previous"], "1.0.0");
    let listing = digits_listing(&gw).await;
    assert_eq!(listing["active"]["version"], "1.1.0");
    assert!(listing["canary"].is_null());
    assert_eq!(listing["last_canary"]["outcome"], "promoted");
    assert_eq!(
        listing["versions"][0]["version"], "1.1.0",
        "written to the store"
    );
    let (versions, _) = sevens(&gw, 50).await;
    assert_eq!(versions, BTreeMap::from([("1.1.0".to_string(), 50)]));
    // Nothing left to promote or end.
    assert_status(
        &admin(&gw, "DELETE", "/v1/admin/plugins/digits/canary", vec![]).await,
        404,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_reverted_by_its_gate() {
    let (gw, _) = gateway_with_canary("canary=30&max_error_rate=5%&min_requests=20", |key| {
        broken_bundle(key, "1.1.0")
    })
    .await;

    // Requests until the gate has reverted it: each failure is the canary's.
    let mut failed = 0;
    let mut served = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !digits_listing(&gw).await["canary"].is_null() {
        assert!(
            Instant::now() < deadline,
            "the gate never reverted the canary"
        );
        let (versions, statuses) = sevens(&gw, 20).await;
        let by_canary = versions.get("1.1.0").copied().unwrap_or(0);
        let errors = 20 - statuses.get(&200).copied().unwrap_or(0);
        assert_eq!(
            errors, by_canary,
            "only the canary fails: {statuses:?} {versions:?}"
        );
        failed += errors;
        served += 20;
    }
    assert!(failed >= 20, "judged after min_requests: {failed}");
    let listing = digits_listing(&gw).await;
    assert_eq!(listing["active"]["version"], "1.0.0");
    assert_eq!(listing["last_canary"]["version"], "1.1.0");
    assert_eq!(listing["last_canary"]["outcome"], "reverted");
    let reason = listing["last_canary"]["reason"].as_str().unwrap();
    assert!(reason.contains("error rate 100.0%"), "{reason}");
    assert_eq!(
        listing["versions"].as_array().unwrap().len(),
        1,
        "never stored"
    );
    let metrics = String::from_utf8_lossy(gw.get("/metrics").await.body()).to_string();
    assert!(
        metrics.contains("edgeplug_canary_reverts_total{plugin=\"digits\"} 1"),
        "{metrics}"
    );
    // From now on only the active version answers, and answers right.
    let (versions, statuses) = sevens(&gw, 200).await;
    assert_eq!(versions, BTreeMap::from([("1.0.0".to_string(), 200)]));
    assert_eq!(statuses, BTreeMap::from([(200, 200)]));
    eprintln!("{failed} of {served} requests failed on the canary before its revert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_canary_is_compared_never_seen() {
    // An equal model under a new version: every answer agrees.
    let (gw, _) = gateway_with_canary("shadow=true", |key| digits_bundle(key, "1.1.0")).await;
    let (versions, statuses) = sevens(&gw, 100).await;
    assert_eq!(versions, BTreeMap::from([("1.0.0".to_string(), 100)]));
    assert_eq!(statuses, BTreeMap::from([(200, 100)]));
    let listing = listing_until(&gw, "100 shadow comparisons", |l| {
        let s = &l["canary"]["shadow"];
        ["agreed", "differed", "failed", "skipped"]
            .iter()
            .map(|k| s[k].as_u64().unwrap_or(0))
            .sum::<u64>()
            == 100
    })
    .await;
    let shadow = &listing["canary"]["shadow"];
    assert_eq!(shadow["differed"], 0, "{listing:#}");
    assert_eq!(shadow["failed"], 0, "{listing:#}");
    assert!(shadow["agreed"].as_u64().unwrap() > 0, "{listing:#}");

    // A broken one: clients still get the active version's right answers; the shadow's
    // failures revert it.
    let started = admin(
        &gw,
        "PUT",
        "/v1/admin/plugins/digits?shadow=true&min_requests=10",
        broken_bundle(&gw.key, "1.2.0"),
    )
    .await;
    assert_status(&started, 200);
    let listing = digits_listing(&gw).await;
    assert_eq!(listing["last_canary"]["version"], "1.1.0");
    assert_eq!(listing["last_canary"]["outcome"], "aborted", "replaced");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !digits_listing(&gw).await["canary"].is_null() {
        assert!(Instant::now() < deadline, "the shadow was never reverted");
        let (versions, statuses) = sevens(&gw, 10).await;
        assert_eq!(versions, BTreeMap::from([("1.0.0".to_string(), 10)]));
        assert_eq!(statuses, BTreeMap::from([(200, 10)]));
    }
    let listing = digits_listing(&gw).await;
    assert_eq!(listing["last_canary"]["version"], "1.2.0");
    assert_eq!(listing["last_canary"]["outcome"], "reverted");
    let metrics = String::from_utf8_lossy(gw.get("/metrics").await.body()).to_string();
    assert!(
        metrics.contains("edgeplug_shadow_comparisons_total{plugin=\"digits\",outcome=\"failed\"}"),
        "{metrics}"
    );
}

fn error_message(response: &Response<Bytes>) -> String {
    json_of(response)["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The fleet's form: a signed canary notice runs the version as a canary on every gateway of
/// the group, each under its own gate: one that holds promotes itself, one that fails is
/// reverted and reported in the gateway's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_canary_is_gated_on_each_gateway() {
    use edgeplug_fleet::oci::RegistryOptions;
    use edgeplug_fleet::publish::{self, Audience};
    use edgeplug_mqtt::BrokerOptions;
    use edgeplug_tests::fleet::{Member, eventually, statuses};
    use edgeplug_tests::servers::{TestBroker, TestRegistry};

    const GROUP: &str = "canaries";
    let registry = TestRegistry::start();
    let broker = TestBroker::start();
    let broker_options = BrokerOptions::from_url(&broker.url()).unwrap();
    let registry_options = RegistryOptions::new(&registry.host(), true);
    let publisher = std::sync::Arc::new(SecretKey::generate());
    let everyone = Audience {
        group: GROUP.into(),
        gateway: None,
    };
    let key = publisher.clone();
    let (base, good, broken) = tokio::task::spawn_blocking(move || {
        (
            digits_bundle(&key, "1.0.0"),
            digits_bundle(&key, "1.1.0"),
            broken_bundle(&key, "1.2.0"),
        )
    })
    .await
    .unwrap();
    let a = Member::join("gw-a", GROUP, &publisher, &registry, &broker, "").await;
    let b = Member::join("gw-b", GROUP, &publisher, &registry, &broker, "").await;
    let members = [&a, &b];
    publish::publish(
        &base,
        &registry_options,
        "edgeplug/digits",
        &broker_options,
        &everyone,
        &publisher,
    )
    .await
    .unwrap();
    eventually("both on 1.0.0", || async {
        members
            .iter()
            .all(|m| m.active().as_deref() == Some("1.0.0"))
    })
    .await;

    // A good canary: half the requests, promoted by itself once 2 s passed with its gate held.
    let published = publish::publish_canary(
        &good,
        &registry_options,
        "edgeplug/digits",
        &broker_options,
        &everyone,
        &publisher,
        "canary=50&min_requests=10&promote_after=2s",
    )
    .await
    .unwrap();
    assert_eq!(
        published.notice.notice.canary.as_deref(),
        Some("canary=50&min_requests=10&promote_after=2s")
    );
    let canary_on = |m: &Member, version: &str| {
        m.gateway
            .gateway
            .registry
            .canary("digits")
            .is_some_and(|c| c.plugin.version.to_string() == version)
    };
    eventually("a canary of 1.1.0 on both", || async {
        members.iter().all(|m| canary_on(m, "1.1.0"))
    })
    .await;
    for m in members {
        let (versions, statuses) = sevens(&m.gateway, 40).await;
        assert_eq!(statuses, BTreeMap::from([(200, 40)]));
        assert!(versions.contains_key("1.1.0"), "{versions:?}");
    }
    eventually("1.1.0 promoted on both", || async {
        members
            .iter()
            .all(|m| m.active().as_deref() == Some("1.1.0"))
    })
    .await;

    // A failing canary: reverted on each gateway by its gate, the active version stays, and
    // each gateway says so in its status.
    publish::publish_canary(
        &broken,
        &registry_options,
        "edgeplug/digits",
        &broker_options,
        &everyone,
        &publisher,
        "canary=50&min_requests=10",
    )
    .await
    .unwrap();
    eventually("a canary of 1.2.0 on both", || async {
        members.iter().all(|m| canary_on(m, "1.2.0"))
    })
    .await;
    for m in members {
        while m.gateway.gateway.registry.canary("digits").is_some() {
            let (versions, statuses) = sevens(&m.gateway, 10).await;
            let failed = 10 - statuses.get(&200).copied().unwrap_or(0);
            assert_eq!(failed, versions.get("1.2.0").copied().unwrap_or(0));
        }
        assert_eq!(m.active().as_deref(), Some("1.1.0"));
    }
    eventually("both report the revert", || async {
        let reported = statuses(&broker_options, GROUP).await;
        reported.len() == 2
            && reported.iter().all(|s| {
                let digits = &s.plugins["digits"];
                digits.active.as_deref() == Some("1.1.0")
                    && digits.last_canary.as_deref() == Some("1.2.0 reverted")
            })
    })
    .await;
}

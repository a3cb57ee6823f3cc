//! The fleet with real servers: Debian's `docker-registry` (CNCF distribution 2.8) and
//! `mosquitto`, each started by the test on a free loopback port and stopped at the end, and
//! gateways in this process, each with its fleet agent. One scenario, in order:
//!
//! publish → every gateway installs it (zero failed requests on one under load while it
//! swaps) → a gateway started after the publish gets it from the retained notice → a notice
//! signed by an untrusted key, a replayed notice and a validly signed older version are each
//! refused and reported in every gateway's status → a registry blob with a flipped bit is
//! refused by the gateway pinned to it, which installs the version once the blob is repaired
//! (the reconcile loop's retry) → the pin is cleared → the broker is restarted and a publish
//! made right away reaches every gateway (persistent sessions, retained state on disk) → a
//! stopped agent says `offline`, and a vanished one's last will says it for it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgeplug::client::{ChunkedBody, Connection};
use edgeplug_bundle::SecretKey;
use edgeplug_fleet::notice::Notice;
use edgeplug_fleet::oci::{Registry, RegistryOptions};
use edgeplug_fleet::publish::{self, Audience, Published};
use edgeplug_fleet::status::{GatewayStatus, Health};
use edgeplug_fleet::topics;
use edgeplug_mqtt::{BrokerOptions, Session};
use edgeplug_tests::fixture;
use edgeplug_tests::fleet::{self, DEADLINE, Member, eventually};
use edgeplug_tests::gateway::{digits_bundle, header, json_of, req};
use edgeplug_tests::servers::{TestBroker, TestRegistry};
use hyper::body::Bytes;

const GROUP: &str = "line-1";
const REPOSITORY: &str = "edgeplug/digits";

/// A gateway trusting `publisher`, with a fleet agent following `GROUP`.
async fn join(
    id: &str,
    publisher: &SecretKey,
    registry: &TestRegistry,
    broker: &TestBroker,
) -> Member {
    Member::join(id, GROUP, publisher, registry, broker, "").await
}

async fn all_on(members: &[&Member], version: &str) {
    eventually(&format!("every gateway on {version}"), || async {
        members
            .iter()
            .all(|m| m.active().as_deref() == Some(version))
    })
    .await;
}

/// The fleet's retained statuses, by gateway id.
async fn statuses(broker: &BrokerOptions) -> Vec<GatewayStatus> {
    fleet::statuses(broker, GROUP).await
}

/// Waits until every gateway in `ids` reports `code` as its last error.
async fn all_report(broker: &BrokerOptions, ids: &[&str], code: &str) {
    eventually(&format!("{ids:?} report {code}"), || async {
        let statuses = statuses(broker).await;
        ids.iter().all(|id| {
            statuses
                .iter()
                .any(|s| s.gateway == *id && s.last_error.as_ref().is_some_and(|e| e.code == code))
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_follows_signed_notices_and_refuses_the_rest() {
    let registry = TestRegistry::start();
    let mut broker = TestBroker::start();
    let broker_options = BrokerOptions::from_url(&broker.url()).unwrap();
    let registry_options = RegistryOptions::new(&registry.host(), true);
    let publisher = Arc::new(SecretKey::generate());
    let bundles: Vec<(String, Vec<u8>)> = {
        let publisher = publisher.clone();
        tokio::task::spawn_blocking(move || {
            ["0.1.0", "0.2.0", "0.3.0", "0.4.0"]
                .iter()
                .map(|v| (v.to_string(), digits_bundle(&publisher, v)))
                .collect()
        })
        .await
        .unwrap()
    };
    let bundle = |v: &str| &bundles.iter().find(|(b, _)| b == v).unwrap().1;
    let everyone = Audience {
        group: GROUP.into(),
        gateway: None,
    };
    let publish = |version: &str, audience: &Audience| {
        let bytes = bundle(version).clone();
        let (registry_options, broker_options, publisher, audience) = (
            registry_options.clone(),
            broker_options.clone(),
            publisher.clone(),
            audience.clone(),
        );
        async move {
            publish::publish(
                &bytes,
                &registry_options,
                REPOSITORY,
                &broker_options,
                &audience,
                &publisher,
            )
            .await
            .unwrap()
        }
    };

    // 1. Three gateways follow the group; a publish reaches them all.
    let mut a = join("gw-a", &publisher, &registry, &broker).await;
    let mut b = join("gw-b", &publisher, &registry, &broker).await;
    let mut c = join("gw-c", &publisher, &registry, &broker).await;
    let first: Published = publish("0.1.0", &everyone).await;
    assert!(first.pushed.digest.starts_with("sha256:"));
    assert_eq!(first.topic, topics::group_plugin(GROUP, "digits"));
    all_on(&[&a, &b, &c], "0.1.0").await;
    // The desired state is on disk, crash-safe, under the gateway's state directory.
    let persisted =
        std::fs::read_to_string(a.gateway.dir.path().join("state/fleet/notices.json")).unwrap();
    assert!(persisted.contains(&first.topic), "{persisted}");

    // 2. The next version, while gw-a serves a request loop: no request fails in the swap.
    let seven = Bytes::from(std::fs::read(fixture("digits/seven.json")).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let (url, seven, done) = (a.gateway.url(), seven.clone(), done.clone());
        tokio::spawn(async move {
            let mut connection = Connection::open(&url, None).await.unwrap();
            let mut versions = BTreeSet::new();
            let mut failures = Vec::new();
            let mut answered = 0usize;
            let started = Instant::now();
            // Bounded in count and time; stops when told.
            while !done.load(Ordering::Relaxed)
                && answered < 200_000
                && started.elapsed() < DEADLINE
            {
                let request = req("POST", "/v1/plugins/digits/infer")
                    .header("content-type", "application/json")
                    .body(ChunkedBody::new(seven.clone()))
                    .unwrap();
                match connection.send(request).await {
                    Ok(r) if r.status() == 200 && json_of(&r)["label"] == 7 => {
                        versions.insert(header(&r, "x-edgeplug-version").to_string());
                        answered += 1;
                    }
                    Ok(r) => failures.push(format!("{}: {:?}", r.status(), r.body())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (answered, versions, failures)
        })
    };
    publish("0.2.0", &everyone).await;
    all_on(&[&a, &b, &c], "0.2.0").await;
    // A few more requests on the new version before the loop stops.
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.store(true, Ordering::Relaxed);
    let (answered, versions, failures) = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(
        versions,
        BTreeSet::from(["0.1.0".to_string(), "0.2.0".to_string()]),
        "the load ran across the swap"
    );
    println!("fleet swap under load: {answered} requests, 0 failed");

    // 3. A gateway that joins after the publish gets the retained notice.
    let mut d = join("gw-d", &publisher, &registry, &broker).await;
    all_on(&[&d], "0.2.0").await;
    let all = [&a, &b, &c, &d];
    let ids: Vec<&str> = all.iter().map(|m| m.id.as_str()).collect();
    eventually("every gateway reports ok on 0.2.0", || async {
        let statuses = statuses(&broker_options).await;
        statuses.len() == 4
            && statuses.iter().all(|s| {
                let digits = s.plugins.get("digits");
                s.health == Health::Ok
                    && digits.and_then(|p| p.active.as_deref()) == Some("0.2.0")
                    && digits.and_then(|p| p.desired.as_deref()) == Some("0.2.0")
            })
    })
    .await;

    // 4. A notice signed by a key no gateway trusts changes nothing and is reported.
    let forger = SecretKey::generate();
    let forged = Notice {
        sequence: first.notice.notice.sequence + 1_000_000_000,
        version: "0.9.0".parse().unwrap(),
        ..first.notice.notice.clone()
    }
    .sign(&forger)
    .unwrap();
    publish::publish_raw(&broker_options, &first.topic, forged.to_bytes())
        .await
        .unwrap();
    all_report(&broker_options, &ids, "untrusted-signer").await;

    // 5. The first notice, replayed as it was: refused (its sequence is not above the last).
    publish::publish_raw(&broker_options, &first.topic, first.notice.to_bytes())
        .await
        .unwrap();
    all_report(&broker_options, &ids, "replayed-notice").await;

    // 6. A validly signed, fresh notice for an older version: anti-downgrade refuses it.
    publish("0.1.0", &everyone).await;
    all_report(&broker_options, &ids, "older-version").await;
    for member in all {
        assert_eq!(member.active().as_deref(), Some("0.2.0"), "{}", member.id);
    }

    // 7. A registry serving other bytes than the digest names (one bit flipped in the stored
    //    blob), for a version pinned on gw-b only: refused and reported; once the blob is
    //    repaired, the retry installs it.
    let pin_b = Audience {
        group: GROUP.into(),
        gateway: Some("gw-b".into()),
    };
    let oci = Registry::new(&registry_options).unwrap();
    let (_, v3) = publish::bundle_identity(bundle("0.3.0")).unwrap();
    let pushed = oci
        .push_bundle(REPOSITORY, "digits", &v3, bundle("0.3.0"))
        .await
        .unwrap();
    let blob = registry.blob_path(&pushed.layer_digest);
    let good = std::fs::read(&blob).unwrap();
    assert_eq!(
        &good,
        bundle("0.3.0"),
        "the registry stores the .epk byte for byte"
    );
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    std::fs::write(&blob, &flipped).unwrap();
    publish::announce(&pushed, "digits", &v3, &broker_options, &pin_b, &publisher)
        .await
        .unwrap();
    all_report(&broker_options, &["gw-b"], "digest-mismatch").await;
    let status_b = statuses(&broker_options)
        .await
        .into_iter()
        .find(|s| s.gateway == "gw-b")
        .unwrap();
    assert_eq!(status_b.health, Health::Error);
    assert_eq!(status_b.plugins["digits"].state, "retrying");
    assert_eq!(status_b.plugins["digits"].desired.as_deref(), Some("0.3.0"));
    assert_eq!(b.active().as_deref(), Some("0.2.0"));
    std::fs::write(&blob, &good).unwrap();
    all_on(&[&b], "0.3.0").await;
    for member in [&a, &c, &d] {
        assert_eq!(
            member.active().as_deref(),
            Some("0.2.0"),
            "the pin was for gw-b only"
        );
    }
    // Clearing the pin hands gw-b back to the group, whose notice is older than what it runs.
    publish::unpin(&broker_options, GROUP, "gw-b", "digits")
        .await
        .unwrap();
    eventually("gw-b follows the group again", || async {
        statuses(&broker_options).await.iter().any(|s| {
            s.gateway == "gw-b"
                && s.plugins.get("digits").and_then(|p| p.desired.as_deref()) == Some("0.1.0")
        })
    })
    .await;
    assert_eq!(b.active().as_deref(), Some("0.3.0"));

    // 8. The broker restarts; its retained notices survived on disk, and a publish made right
    //    away reaches every gateway, reconnected or not yet (persistent sessions queue it).
    broker.stop();
    broker.restart();
    let mut session = Session::connect(&broker_options, "edgeplug-test-reader")
        .await
        .unwrap();
    let retained = session
        .retained(&first.topic, Duration::from_millis(300))
        .await
        .unwrap();
    session.close().await;
    assert_eq!(retained.len(), 1, "the group's notice survived the restart");
    publish("0.4.0", &everyone).await;
    all_on(&all, "0.4.0").await;

    // 9. A stopped agent says goodbye with `offline`; one that vanishes (its connection
    //    dropped without a DISCONNECT) gets its last will published by the broker.
    d.agent.take().unwrap().stop().await;
    drop(c.agent.take());
    eventually("gw-c and gw-d are offline", || async {
        let statuses = statuses(&broker_options).await;
        ["gw-c", "gw-d"].iter().all(|id| {
            statuses
                .iter()
                .any(|s| s.gateway == *id && s.health == Health::Offline)
        })
    })
    .await;
    let table = edgeplug_fleet::status::render_table(
        &statuses(&broker_options)
            .await
            .into_iter()
            .map(Ok)
            .collect::<Vec<_>>(),
    );
    assert!(table.contains("gw-a") && table.contains("0.4.0"), "{table}");
    println!("{table}");

    for member in [&mut a, &mut b, &mut c, &mut d] {
        if let Some(agent) = member.agent.take() {
            agent.stop().await;
        }
        member.gateway.stop().await;
    }
}

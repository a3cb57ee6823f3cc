//! Gateways in a fleet, for the fleet and rollout tests: a test gateway trusting a publisher
//! key with its fleet agent following a group, and waiting for what the fleet reports.

use std::time::{Duration, Instant};

use edgeplug_bundle::SecretKey;
use edgeplug_fleet::Agent;
use edgeplug_fleet::status::GatewayStatus;
use edgeplug_mqtt::BrokerOptions;

use crate::gateway::TestGateway;
use crate::servers::{TestBroker, TestRegistry};

/// Generous: only there to turn a hang into a failure.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// One gateway of the fleet under test.
pub struct Member {
    pub id: String,
    pub gateway: TestGateway,
    /// `None` once the test stopped or dropped it.
    pub agent: Option<Agent>,
}

impl Member {
    /// A gateway trusting `publisher`, with a fleet agent following `group` through `broker`
    /// and `registry` (fast retries and short keep-alives for the test); `extra` adds lines to
    /// its `[fleet]` section.
    pub async fn join(
        id: &str,
        group: &str,
        publisher: &SecretKey,
        registry: &TestRegistry,
        broker: &TestBroker,
        extra: &str,
    ) -> Member {
        let fleet = format!(
            "[fleet]\nbroker = \"{}\"\nclient_id = \"{id}\"\ngroup = \"{group}\"\n\
             registry = \"{}\"\nregistry_plain_http = true\npull_jitter_ms = 200\n\
             retry_min_ms = 200\nretry_max_ms = 1000\nkeep_alive_secs = 5\n{extra}",
            broker.url(),
            registry.host()
        );
        let gateway = TestGateway::start(&fleet).await;
        std::fs::write(
            gateway.dir.path().join("trust/publisher.pub"),
            publisher.public_key().to_pem(),
        )
        .unwrap();
        let agent =
            edgeplug_fleet::start_if_configured(gateway.gateway.clone(), gateway.dir.path())
                .await
                .unwrap()
                .expect("the configuration has [fleet]");
        Member {
            id: id.to_string(),
            gateway,
            agent: Some(agent),
        }
    }

    /// The active version of `digits` on this gateway.
    pub fn active(&self) -> Option<String> {
        self.gateway
            .gateway
            .registry
            .get("digits")
            .map(|a| a.version.to_string())
    }
}

/// Waits until `check` holds, failing with `what` after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < DEADLINE, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The retained statuses of `group`'s gateways.
pub async fn statuses(broker: &BrokerOptions, group: &str) -> Vec<GatewayStatus> {
    edgeplug_fleet::status::read_fleet(broker, group, Duration::from_millis(300))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.expect("every status parses"))
        .collect()
}

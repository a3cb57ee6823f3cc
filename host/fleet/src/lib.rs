//! The fleet: a cloud publishes a signed version once; every gateway follows it.
//!
//! The bytes travel through an OCI registry, the news through an MQTT 5 broker; neither is
//! trusted. A bundle is pushed byte for byte as a single-layer OCI artifact ([`oci`]); a
//! **notice** naming its manifest *digest* (never a tag), version, size and a monotonic
//! sequence number, signed by the publisher's key ([`notice`]), is published retained with
//! QoS 1 ([`publish`]). A gateway's [`agent`] keeps a persistent MQTT session, checks each
//! notice against the gateway's trust store, refuses replays and older versions, pulls by
//! digest and installs through the gateway's own push pipeline (verify → compile → self-test →
//! hot swap), then reports on its retained status topic ([`status`]).
//!
//! Topics ([`topics`]), for a group `G` and a gateway `ID`:
//!
//! ```text
//! edgeplug/fleet/G/plugins/NAME                   the group's notice for a plugin (retained)
//! edgeplug/fleet/G/gateways/ID/plugins/NAME       a pin for one gateway; wins over the group's
//! edgeplug/fleet/G/gateways/ID/status             the gateway's status (retained; will: offline)
//! ```
//!
//! Modules:
//! - [`config`]: the `[fleet]` table of the gateway configuration.
//! - [`notice`]: the signed notice, its canonical bytes and its checks.
//! - [`oci`]: push an `.epk` as an OCI artifact; pull one by digest.
//! - MQTT connection options (URL, TLS, credentials) and retained-topic helpers are the
//!   `edgeplug-mqtt` crate's, shared with the gateway's triggers.
//! - [`publish`]: the publisher's side: push, then announce.
//! - [`agent`]: the gateway's side: follow, reconcile, report. [`state`] is what it persists.
//! - [`status`]: the status a gateway publishes, and reading the fleet's as a table.
//! - [`rollout`]: a staged rollout: waves by pins, gated on the gateways' own figures, rolled
//!   back by signed rollback notices when a gate fails.
//! - [`federated`]: federated averaging of a learning plugin's head: the aggregator behind
//!   `edgeplug aggregate`, and the agent's participation (`[fleet.federated]`).

pub mod agent;
pub mod config;
pub mod federated;
pub mod notice;
pub mod oci;
pub mod publish;
pub mod rollout;
pub mod state;
pub mod status;
pub mod topics;

pub use agent::{Agent, start_if_configured};
pub use config::FleetConfig;
pub use notice::{Notice, SignedNotice};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fleet name (group or gateway id) appears inside MQTT topics: 1-64 characters of
/// `A-Z a-z 0-9 . _ -`, so never a `/`, `+` or `#`, and not starting with `.`.
pub fn check_fleet_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    anyhow::ensure!(
        ok,
        "{what} {name:?} must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.'"
    );
    Ok(())
}

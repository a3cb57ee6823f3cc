//! The publisher's side (`edgeplug publish` and the library call): push the bundle to the
//! registry, then announce it with a signed, retained, QoS 1 notice.
//!
//! The two steps are separate functions too ([`Registry::push_bundle`](crate::oci::Registry::push_bundle)
//! and [`announce`]), so a caller (a staged rollout, a test) can push once and announce to
//! several topics, or announce later.
//!
//! The sequence number of a notice is the larger of "the retained notice on the topic, plus
//! one" and the current Unix time in milliseconds: it grows even when the publisher runs on
//! another machine than the last one and reads no retained notice (a cleared topic, a
//! restarted broker without persistence), as long as clocks are not far behind.

use std::time::Duration;

use anyhow::Context as _;
use edgeplug_bundle::{BundleLimits, SecretKey};
use semver::Version;

use crate::notice::{Notice, NoticeKind, SignedNotice};
use crate::oci::{Pushed, Registry, RegistryOptions};
use edgeplug_mqtt::{BrokerOptions, Session, ephemeral_client_id};

/// How long to wait for a topic's retained notice after subscribing.
const RETAINED_QUIET: Duration = Duration::from_millis(500);

/// Where a notice goes.
#[derive(Debug, Clone)]
pub struct Audience {
    pub group: String,
    /// A pin for one gateway; `None`: the whole group.
    pub gateway: Option<String>,
}

/// The result of [`publish`].
#[derive(Debug, Clone)]
pub struct Published {
    pub pushed: Pushed,
    pub notice: SignedNotice,
    pub topic: String,
}

/// The plugin name and version a bundle declares, and a check that it is signed (the bundle's
/// signature is checked for real by every gateway; this only catches publishing an unsigned
/// file by mistake).
pub fn bundle_identity(bundle: &[u8]) -> anyhow::Result<(String, Version)> {
    let inspection = edgeplug_bundle::inspect(bundle, &BundleLimits::default())
        .context("not an edgeplug bundle")?;
    let manifest = inspection
        .manifest
        .map_err(|e| anyhow::anyhow!("the bundle's plugin.toml is invalid: {e}"))?;
    anyhow::ensure!(
        inspection.signer.is_some(),
        "the bundle is not signed (edgeplug sign it first): gateways would refuse it"
    );
    if let Some(problem) = inspection.problem {
        anyhow::bail!("the bundle is damaged: {problem}");
    }
    Ok((manifest.name, manifest.version))
}

/// Pushes `bundle` to `repository` of `registry`, then announces it to `audience`, signed
/// with `key`.
pub async fn publish(
    bundle: &[u8],
    registry: &RegistryOptions,
    repository: &str,
    broker: &BrokerOptions,
    audience: &Audience,
    key: &SecretKey,
) -> anyhow::Result<Published> {
    publish_as(bundle, registry, repository, broker, audience, key, None).await
}

/// [`publish`], announced as a canary next to the gateways' active version, as `spec` says
/// (see [`announce_canary`]).
pub async fn publish_canary(
    bundle: &[u8],
    registry: &RegistryOptions,
    repository: &str,
    broker: &BrokerOptions,
    audience: &Audience,
    key: &SecretKey,
    spec: &str,
) -> anyhow::Result<Published> {
    publish_as(
        bundle,
        registry,
        repository,
        broker,
        audience,
        key,
        Some(spec),
    )
    .await
}

async fn publish_as(
    bundle: &[u8],
    registry: &RegistryOptions,
    repository: &str,
    broker: &BrokerOptions,
    audience: &Audience,
    key: &SecretKey,
    canary: Option<&str>,
) -> anyhow::Result<Published> {
    let (name, version) = bundle_identity(bundle)?;
    crate::check_fleet_name("group", &audience.group)?;
    if let Some(id) = &audience.gateway {
        crate::check_fleet_name("gateway", id)?;
    }
    if let Some(spec) = canary {
        // Before anything is pushed: a spec no gateway would accept publishes nothing.
        edgeplug_gateway::registry::parse_canary_spec(spec)
            .map_err(|e| anyhow::anyhow!("the canary spec {spec:?}: {e}"))?;
    }
    let pushed = Registry::new(registry)?
        .push_bundle(repository, &name, &version, bundle)
        .await?;
    let notice = match canary {
        None => announce(&pushed, &name, &version, broker, audience, key).await?,
        Some(spec) => {
            announce_canary(&pushed, &name, &version, broker, audience, key, spec).await?
        }
    };
    Ok(Published {
        topic: notice.notice.topic(),
        pushed,
        notice,
    })
}

/// Publishes the signed notice for an artifact already pushed.
pub async fn announce(
    pushed: &Pushed,
    name: &str,
    version: &Version,
    broker: &BrokerOptions,
    audience: &Audience,
    key: &SecretKey,
) -> anyhow::Result<SignedNotice> {
    let notice = notice_for(pushed, name, version, audience, NoticeKind::Release, None);
    announce_notice(notice, broker, key).await
}

/// Publishes the signed notice that runs an artifact already pushed as a canary next to the
/// active version of `audience`'s gateways, as `spec` says (`canary=10&max_error_rate=1%`,
/// or `shadow=true`; the syntax of the admin API's canary query).
pub async fn announce_canary(
    pushed: &Pushed,
    name: &str,
    version: &Version,
    broker: &BrokerOptions,
    audience: &Audience,
    key: &SecretKey,
    spec: &str,
) -> anyhow::Result<SignedNotice> {
    let notice = notice_for(
        pushed,
        name,
        version,
        audience,
        NoticeKind::Canary,
        Some(spec.to_string()),
    );
    announce_notice(notice, broker, key).await
}

/// The unsigned notice of `kind` for a pushed artifact; its sequence is chosen when it is
/// announced.
fn notice_for(
    pushed: &Pushed,
    name: &str,
    version: &Version,
    audience: &Audience,
    kind: NoticeKind,
    canary: Option<String>,
) -> Notice {
    Notice {
        kind,
        plugin: name.to_string(),
        version: version.clone(),
        repository: pushed.repository.clone(),
        digest: pushed.digest.clone(),
        size: pushed.size,
        sequence: 0,
        group: audience.group.clone(),
        gateway: audience.gateway.clone(),
        issued_at: crate::unix_now(),
        canary,
    }
}

/// Signs `notice` with `key` and publishes it on its topic, retained; its sequence is chosen
/// here (see the module docs) and its `issued_at` set to now: what [`announce`] does for a
/// release, and a staged rollout for a rollback.
pub async fn announce_notice(
    mut notice: Notice,
    broker: &BrokerOptions,
    key: &SecretKey,
) -> anyhow::Result<SignedNotice> {
    notice.issued_at = crate::unix_now();
    notice.validate()?;
    let topic = notice.topic();
    let mut session = Session::connect(broker, &ephemeral_client_id("edgeplug-publish")).await?;
    let result = async {
        let last = session
            .retained(&topic, RETAINED_QUIET)
            .await?
            .into_iter()
            .filter(|(t, _)| *t == topic)
            .filter_map(|(_, payload)| SignedNotice::parse(&payload).ok())
            .map(|n| n.notice.sequence)
            .max()
            .unwrap_or(0);
        notice.sequence = (last + 1).max(unix_millis());
        let signed = notice.sign(key)?;
        session.publish_retained(&topic, signed.to_bytes()).await?;
        Ok(signed)
    }
    .await;
    session.close().await;
    result
}

/// Clears the pin of gateway `id` for `plugin` (an empty retained message): the gateway
/// follows the group's notice again. The gateway keeps the pin's sequence, so the old pin
/// cannot be replayed.
pub async fn unpin(
    broker: &BrokerOptions,
    group: &str,
    id: &str,
    plugin: &str,
) -> anyhow::Result<()> {
    publish_raw(
        broker,
        &crate::topics::pin_plugin(group, id, plugin),
        Vec::new(),
    )
    .await
}

/// Publishes `payload` as it is, retained, QoS 1, on `topic`: for tools and tests that replay
/// or forge notices to check that gateways refuse them.
pub async fn publish_raw(
    broker: &BrokerOptions,
    topic: &str,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    let mut session = Session::connect(broker, &ephemeral_client_id("edgeplug-publish")).await?;
    let result = session.publish_retained(topic, payload).await;
    session.close().await;
    result
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

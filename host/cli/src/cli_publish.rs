//! `edgeplug publish`: push a signed bundle to an OCI registry and announce it to a fleet
//! group (or one gateway) with a signed, retained MQTT notice. The work is
//! `edgeplug_fleet::publish`; this file only maps arguments to it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use edgeplug_fleet::oci::RegistryOptions;
use edgeplug_fleet::publish::{self, Audience};
use edgeplug_mqtt::BrokerOptions;

/// Broker connection arguments shared by `publish` and `fleet status`.
#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// The MQTT broker: mqtt://HOST:PORT or mqtts://HOST:PORT (default ports 1883 and 8883).
    #[arg(long)]
    pub broker: String,
    /// Broker user name.
    #[arg(long)]
    pub username: Option<String>,
    /// A file whose first line is the broker password.
    #[arg(long, requires = "username")]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates to trust for mqtts:// (and an https registry) instead of the
    /// system's roots.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
}

impl BrokerArgs {
    pub fn options(&self) -> anyhow::Result<BrokerOptions> {
        let mut options = BrokerOptions::from_url(&self.broker)?;
        options.username = self.username.clone();
        options.password = self
            .password_file
            .as_deref()
            .map(edgeplug_mqtt::read_secret)
            .transpose()?;
        options.ca_file = self.cacert.clone();
        Ok(options)
    }
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The signed bundle (.epk) to publish.
    pub bundle: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The group to announce it to.
    #[arg(long)]
    pub group: String,
    /// Announce it to this gateway only (a pin, which wins over the group's notice there).
    #[arg(long, value_name = "GATEWAY_ID")]
    pub pin: Option<String>,
    /// The private key signing the notice (PEM PKCS#8, as `edgeplug keygen` writes it);
    /// gateways must trust its public key.
    #[arg(long)]
    pub key: PathBuf,
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Run it as a canary next to each gateway's active version instead of swapping: a
    /// percentage of requests (`10`), or a spec in the admin API's canary syntax, such as
    /// `canary=10&max_error_rate=1%&max_p99_ms=50&promote_after=10m` or `shadow=true`. Each
    /// gateway's gate reverts it or promotes it.
    #[arg(long, value_name = "PERCENT|SPEC")]
    pub canary: Option<String>,
}

/// Registry arguments shared by `publish` and `rollout`.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Where to push it: HOST/REPOSITORY or HOST:PORT/REPOSITORY, e.g.
    /// registry.example/edgeplug/digits.
    #[arg(long)]
    pub registry: String,
    /// Talk plain HTTP to the registry (a test registry; never across a network).
    #[arg(long)]
    pub plain_http: bool,
    /// Registry user name (HTTP basic authentication).
    #[arg(long)]
    pub registry_username: Option<String>,
    /// A file whose first line is the registry password.
    #[arg(long, requires = "registry_username")]
    pub registry_password_file: Option<PathBuf>,
}

impl RegistryArgs {
    /// The registry's connection options and the repository, trusting `ca_file` (the
    /// broker's --cacert, which also serves an https registry).
    pub fn options(&self, ca_file: Option<PathBuf>) -> anyhow::Result<(RegistryOptions, String)> {
        let (host, repository) = split_registry(&self.registry)?;
        let options = RegistryOptions {
            host,
            plain_http: self.plain_http,
            username: self.registry_username.clone(),
            password: self
                .registry_password_file
                .as_deref()
                .map(edgeplug_mqtt::read_secret)
                .transpose()?,
            ca_file,
        };
        Ok((options, repository))
    }
}

/// `HOST:PORT/REPOSITORY` split at its first `/`.
fn split_registry(reference: &str) -> anyhow::Result<(String, String)> {
    let (host, repository) = reference.split_once('/').with_context(|| {
        format!("--registry {reference:?} must be HOST[:PORT]/REPOSITORY, e.g. registry.example/edgeplug/digits")
    })?;
    anyhow::ensure!(!host.is_empty(), "--registry {reference:?} has no host");
    anyhow::ensure!(
        edgeplug_fleet::notice::is_repository(repository),
        "--registry {reference:?}: the repository must be '/'-separated lower-case components of a-z, 0-9, '.', '_', '-'"
    );
    Ok((host.to_string(), repository.to_string()))
}

pub fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let bundle = std::fs::read(&args.bundle)
        .with_context(|| format!("cannot read {}", args.bundle.display()))?;
    let key = edgeplug_bundle::SecretKey::load(&args.key)?;
    let (registry, repository) = args.registry.options(args.broker.cacert.clone())?;
    let broker = args.broker.options()?;
    let audience = Audience {
        group: args.group.clone(),
        gateway: args.pin.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let published = match args.canary.as_deref() {
        None => runtime.block_on(publish::publish(
            &bundle,
            &registry,
            &repository,
            &broker,
            &audience,
            &key,
        ))?,
        Some(canary) => {
            let spec = if canary.bytes().all(|b| b.is_ascii_digit()) {
                format!("canary={canary}")
            } else {
                canary.to_string()
            };
            runtime.block_on(publish::publish_canary(
                &bundle,
                &registry,
                &repository,
                &broker,
                &audience,
                &key,
                &spec,
            ))?
        }
    };
    let n = &published.notice.notice;
    println!(
        "{}",
        serde_json::json!({
            "plugin": n.plugin,
            "version": n.version.to_string(),
            "registry": published.pushed.registry,
            "repository": n.repository,
            "digest": n.digest,
            "size": n.size,
            "sequence": n.sequence,
            "topic": published.topic,
            "key_id": published.notice.key_id.to_string(),
            "canary": n.canary,
        })
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_references_split_at_the_first_slash() {
        assert_eq!(
            split_registry("127.0.0.1:5000/edgeplug/digits").unwrap(),
            ("127.0.0.1:5000".to_string(), "edgeplug/digits".to_string())
        );
        assert!(split_registry("registry.example").is_err());
        assert!(split_registry("registry.example/Digits").is_err());
        assert!(split_registry("/edgeplug").is_err());
    }
}

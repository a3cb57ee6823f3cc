//! The MQTT client side every MQTT user in edgeplug shares (the fleet's publisher, agent and
//! `fleet status`; the gateway's triggers): broker URLs, TLS and credentials
//! ([`BrokerOptions`]), and a short-lived [`Session`] that reads retained topics and publishes.
//!
//! Only this crate and the crates that hold long-lived connections (`edgeplug-fleet`,
//! `edgeplug-triggers`) depend on `rumqttc`; it knows nothing of plugins or gateways.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};

/// `mqtt://HOST[:PORT]` (plain, port 1883) or `mqtts://HOST[:PORT]` (TLS, port 8883).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> anyhow::Result<BrokerUrl> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            anyhow::bail!("broker URL {url:?} must start with mqtt:// or mqtts://");
        };
        let rest = rest.trim_end_matches('/');
        anyhow::ensure!(
            !rest.is_empty() && !rest.contains(['/', '@', '?', '#', ' ']),
            "broker URL {url:?} must be mqtt[s]://HOST[:PORT] (credentials go in the configuration)"
        );
        // [v6]:port, host:port, or a bare host.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .with_context(|| format!("broker URL {url:?}: unclosed '['"))?;
            (host.to_string(), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), Some(port)),
                None => (rest.to_string(), None),
            }
        };
        anyhow::ensure!(!host.is_empty(), "broker URL {url:?} has no host");
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .with_context(|| format!("broker URL {url:?}: {port:?} is not a port"))?,
            None if tls => 8883,
            None => 1883,
        };
        Ok(BrokerUrl { tls, host, port })
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub url: BrokerUrl,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA certificates to trust for `mqtts://` instead of the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl BrokerOptions {
    /// A broker without credentials, the system's roots for TLS.
    pub fn from_url(url: &str) -> anyhow::Result<BrokerOptions> {
        Ok(BrokerOptions {
            url: BrokerUrl::parse(url)?,
            username: None,
            password: None,
            ca_file: None,
        })
    }

    /// rumqttc options for `client_id`: address, TLS, credentials. The caller sets the
    /// session (clean start, expiry), the will and acks.
    pub fn mqtt_options(&self, client_id: &str) -> anyhow::Result<MqttOptions> {
        let mut options = MqttOptions::new(client_id, self.url.host.clone(), self.url.port);
        options.set_keep_alive(Duration::from_secs(30));
        // Small packets both ways (a result, then an acknowledgement): with Nagle's algorithm
        // and the peer's delayed ACKs each such exchange can wait 40 ms.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        if self.url.tls {
            let config = tls_client_config(self.ca_file.as_deref())?;
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
        }
        if let Some(user) = &self.username {
            options.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        Ok(options)
    }
}

/// A rustls client configuration (ring, like the rest of edgeplug) trusting `ca` if given,
/// else the system's roots.
pub fn tls_client_config(ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("cannot read CA file {}: {e}", path.display()))?;
            anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("{} holds an unusable certificate", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The first line of a secret file (a password), which must not be empty.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim_end().to_string();
    anyhow::ensure!(!secret.is_empty(), "{} holds no secret", path.display());
    Ok(secret)
}

/// A random client id with `prefix`, for short-lived sessions (publisher, status reader).
pub fn ephemeral_client_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// A short-lived, clean MQTT 5 session: connect, read retained messages, publish, close.
pub struct Session {
    client: AsyncClient,
    events: EventLoop,
    url: BrokerUrl,
}

/// Longest wait for the broker's answer to one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

impl Session {
    /// Connects with a fresh clean session (nothing is kept after [`Session::close`]).
    pub async fn connect(broker: &BrokerOptions, client_id: &str) -> anyhow::Result<Session> {
        let mut options = broker.mqtt_options(client_id)?;
        options.set_clean_start(true);
        let (client, events) = AsyncClient::new(options, 64);
        let mut session = Session {
            client,
            events,
            url: broker.url.clone(),
        };
        session
            .until(|packet| matches!(packet, Packet::ConnAck(_)).then_some(()))
            .await
            .with_context(|| format!("cannot connect to the broker {}", broker.url))?;
        Ok(session)
    }

    /// Polls until `wanted` picks an incoming packet, within [`ANSWER_TIMEOUT`].
    async fn until<T>(
        &mut self,
        mut wanted: impl FnMut(&Packet) -> Option<T>,
    ) -> anyhow::Result<T> {
        let wait = async {
            loop {
                match self.events.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if let Some(found) = wanted(&packet) {
                            return Ok(found);
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => return Err(anyhow::anyhow!("{e}")),
                }
            }
        };
        tokio::time::timeout(ANSWER_TIMEOUT, wait)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the broker {} did not answer within {ANSWER_TIMEOUT:?}",
                    self.url
                )
            })?
    }

    /// The retained messages on `filter`: subscribes, then collects until no retained message
    /// came for `quiet` (a broker sends the retained messages right after its SUBACK). Empty
    /// payloads (cleared topics) are left out.
    pub async fn retained(
        &mut self,
        filter: &str,
        quiet: Duration,
    ) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .context("the MQTT client stopped")?;
        let mut found = Vec::new();
        let codes = self
            .until(|packet| match packet {
                Packet::SubAck(ack) => Some(ack.return_codes.clone()),
                Packet::Publish(p) => {
                    found.push((p.topic.clone(), p.payload.clone()));
                    None
                }
                _ => None,
            })
            .await?;
        if let Some(code) = codes
            .iter()
            .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
        {
            anyhow::bail!("the broker refused the subscription to {filter}: {code:?}");
        }
        // Only retained copies (the flag the broker sets on what it sends for a new
        // subscription) extend the wait: live messages on a busy filter (gateways republish
        // their status every few seconds) would otherwise keep it open for ever.
        let mut until = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(until, self.events.poll()).await {
                Err(_) => break,
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    if p.retain {
                        found.push((p.topic.clone(), p.payload.clone()));
                        until = tokio::time::Instant::now() + quiet;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => anyhow::bail!("the connection to {} failed: {e}", self.url),
            }
        }
        self.client
            .unsubscribe(filter)
            .await
            .context("the MQTT client stopped")?;
        Ok(found
            .into_iter()
            .filter(|(_, payload)| !payload.is_empty())
            .map(|(topic, payload)| {
                (
                    String::from_utf8_lossy(&topic).into_owned(),
                    payload.to_vec(),
                )
            })
            .collect())
    }

    /// Publishes `payload` on `topic`, retained, QoS 1, and waits for the broker's PUBACK. An
    /// empty payload clears the topic's retained message.
    pub async fn publish_retained(&mut self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .context("the MQTT client stopped")?;
        // This session publishes one message at a time, so the next PUBACK is this one's.
        let reason = self
            .until(|packet| match packet {
                Packet::PubAck(ack) => Some(ack.reason),
                _ => None,
            })
            .await?;
        match reason {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
            other => anyhow::bail!("the broker refused the publish on {topic}: {other:?}"),
        }
    }

    /// Disconnects cleanly.
    pub async fn close(mut self) {
        if self.client.disconnect().await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    match self.events.poll().await {
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let url = BrokerUrl::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!(
            (url.tls, url.host.as_str(), url.port),
            (false, "127.0.0.1", 1884)
        );
        let url = BrokerUrl::parse("mqtts://broker.example").unwrap();
        assert_eq!((url.tls, url.port), (true, 8883));
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:9").unwrap().host, "::1");
        assert_eq!(url.to_string(), "mqtts://broker.example:8883");
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://u:p@host",
            "mqtt://host:0",
            "mqtt://host:x",
            "mqtt://host/path",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}

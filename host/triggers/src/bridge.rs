//! Store-and-forward to the center on an existing engine: the mosquitto bridge that carries a
//! gateway's results from its local broker to the center's, written by `edgeplug
//! bridge-config`.
//!
//! The bridge is persistent on both sides (`cleansession false`, `local_cleansession false`),
//! QoS 1: a result published while the uplink is down waits in the local broker's queue for
//! the bridge, on disk when the broker saves its persistence (on shutdown and every
//! `autosave_interval`), so it survives a restart of the gateway's broker too; the bridge
//! delivers it when the link returns. The center's broker keeps the bridge's session, so what
//! it received but had not yet passed on is not lost either.
//!
//! Limits (mosquitto's, per client, the bridge included): `max_queued_messages` and
//! `max_queued_bytes` bound the queue; past either, mosquitto drops new QoS 1 messages for
//! that queue and logs it. A full disk makes the persistence save fail (logged) while the
//! queue lives on in memory; what was not saved is lost if the broker then stops. Size both to
//! the longest outage to ride out: at 10 results/s, a day is 864,000 messages.

use std::fmt::Write as _;
use std::path::PathBuf;

use edgeplug_mqtt::BrokerUrl;

/// What the bridge connects and carries.
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// The bridge's name in mosquitto (`connection NAME`).
    pub name: String,
    /// The center's broker.
    pub center: BrokerUrl,
    /// The client id the bridge uses at the center: unique per gateway, as its session there
    /// holds what is in transit.
    pub client_id: String,
    /// Topic filters carried from the gateway to the center.
    pub topics: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA for an `mqtts://` center (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Results queued while the uplink is down, at most.
    pub max_queued_messages: u64,
    /// Bytes queued while the uplink is down, at most.
    pub max_queued_bytes: u64,
    /// Longest wait between two reconnection attempts while the uplink is down (mosquitto
    /// backs off from 2 s to this): also how late, at worst, delivery resumes after the link
    /// returns.
    pub retry_max_secs: u32,
}

/// The mosquitto.conf lines of the bridge, to include in the gateway broker's configuration
/// (which must have `persistence true` for the queue to survive a restart).
pub fn mosquitto_conf(options: &BridgeOptions) -> anyhow::Result<String> {
    let safe = |what: &str, value: &str| -> anyhow::Result<()> {
        // mosquitto.conf is one option per line, its value running to the first whitespace.
        anyhow::ensure!(
            !value.is_empty() && !value.contains(char::is_whitespace),
            "{what} {value:?} must be one word (no spaces or line breaks)"
        );
        Ok(())
    };
    safe("the bridge name", &options.name)?;
    safe("client_id", &options.client_id)?;
    anyhow::ensure!(!options.topics.is_empty(), "the bridge carries no topic");
    for topic in &options.topics {
        crate::topic::check_filter(topic)?;
        safe("topic", topic)?;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by `edgeplug bridge-config`: results from this gateway's broker to the center,\n\
         # stored and forwarded. The broker needs `persistence true` for the queue to survive a\n\
         # restart. Per-client queue limits (the bridge is a client); past them mosquitto drops\n\
         # new messages for the queue and logs it.\n\
         max_queued_messages {}\n\
         max_queued_bytes {}\n",
        options.max_queued_messages, options.max_queued_bytes
    );
    let host = if options.center.host.contains(':') {
        format!("[{}]", options.center.host)
    } else {
        options.center.host.clone()
    };
    let _ = writeln!(out, "connection {}", options.name);
    let _ = writeln!(out, "address {host}:{}", options.center.port);
    let _ = writeln!(out, "bridge_protocol_version mqttv50");
    let _ = writeln!(out, "remote_clientid {}", options.client_id);
    let _ = writeln!(out, "local_clientid {}-local", options.client_id);
    // Both sessions persist: the local one holds the queue, the remote one what is in transit.
    let _ = writeln!(out, "cleansession false\nlocal_cleansession false");
    for topic in &options.topics {
        let _ = writeln!(out, "topic {topic} out 1");
    }
    // Reconnect after 2 s, backing off while the uplink stays down.
    anyhow::ensure!(
        options.retry_max_secs >= 2,
        "the longest reconnection wait must be at least 2 s"
    );
    let _ = writeln!(
        out,
        "restart_timeout 2 {}\nkeepalive_interval 30",
        options.retry_max_secs
    );
    if options.center.tls {
        match &options.ca_file {
            Some(ca) => {
                let ca = ca.display().to_string();
                safe("ca_file", &ca)?;
                let _ = writeln!(out, "bridge_cafile {ca}");
            }
            None => {
                let _ = writeln!(out, "bridge_capath /etc/ssl/certs");
            }
        }
        let _ = writeln!(out, "bridge_insecure false");
    }
    if let Some(user) = &options.username {
        safe("username", user)?;
        let _ = writeln!(out, "remote_username {user}");
        if let Some(password) = &options.password {
            safe("the password", password)?;
            let _ = writeln!(out, "remote_password {password}");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BridgeOptions {
        BridgeOptions {
            name: "center".into(),
            center: BrokerUrl::parse("mqtts://center.example").unwrap(),
            client_id: "gw-1".into(),
            topics: vec!["results/#".into()],
            username: Some("gw-1".into()),
            password: Some("s3cret".into()),
            ca_file: Some("/etc/edgeplug/center-ca.pem".into()),
            max_queued_messages: 1000,
            max_queued_bytes: 1 << 20,
            retry_max_secs: 60,
        }
    }

    #[test]
    fn the_bridge_is_persistent_qos_1_and_verifies_the_center() {
        let conf = mosquitto_conf(&options()).unwrap();
        for line in [
            "connection center",
            "address center.example:8883",
            "cleansession false",
            "local_cleansession false",
            "topic results/# out 1",
            "bridge_cafile /etc/edgeplug/center-ca.pem",
            "bridge_insecure false",
            "remote_password s3cret",
            "max_queued_messages 1000",
            "restart_timeout 2 60",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line:?} missing:\n{conf}");
        }
        let plain = BridgeOptions {
            center: BrokerUrl::parse("mqtt://[::1]:1884").unwrap(),
            ..options()
        };
        let conf = mosquitto_conf(&plain).unwrap();
        assert!(conf.contains("address [::1]:1884\n"), "{conf}");
        assert!(!conf.contains("bridge_cafile"), "{conf}");
    }

    #[test]
    fn values_that_would_break_the_file_are_refused() {
        for bad in [
            BridgeOptions {
                client_id: "gw 1".into(),
                ..options()
            },
            BridgeOptions {
                password: Some("a\nconnection evil".into()),
                ..options()
            },
            BridgeOptions {
                topics: vec!["results/+x".into()],
                ..options()
            },
            BridgeOptions {
                topics: vec![],
                ..options()
            },
        ] {
            assert!(mosquitto_conf(&bad).is_err(), "{bad:?}");
        }
    }
}

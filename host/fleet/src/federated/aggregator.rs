//! The center's side (`edgeplug aggregate`): open a round, collect uploads until its deadline,
//! average them if a quorum arrived (else extend the round), publish the head, open the next.
//!
//! Its state (the round reached, the head, the records, the last sequence) is written after
//! every round, crash-safe, when a state file is given, so the same command resumes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use edgeplug_bundle::{SecretKey, TrustStore};
use edgeplug_mqtt::BrokerOptions;
use edgeplug_train::Head;
use edgeplug_train::checkpoint::{self, Metadata};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event as MqttEvent};
use serde::Serialize;
use tokio::sync::mpsc;

use super::collect::{Collector, Verdict};
use super::ledger::{epsilon, load_state, save_state, unix_millis};
use super::wire::{self, DpSettings, HeadNotice, RoundNotice, RoundRecord};

/// What to run.
#[derive(Debug, Clone)]
pub struct AggregatorOptions {
    pub broker: BrokerOptions,
    pub client_id: String,
    pub group: String,
    pub plugin: String,
    /// The last round to run (a resumed run continues up to it).
    pub rounds: u64,
    pub round_time: Duration,
    pub quorum: u32,
    /// How many times a round without quorum is extended before the run gives up.
    pub max_extensions: u32,
    pub dp: Option<DpSettings>,
    /// Each round's head is written here as `round-N.ckpt`.
    pub out_dir: Option<PathBuf>,
    pub state_file: Option<PathBuf>,
}

/// Progress, one per line on the CLI's stderr.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RoundOpened {
        round: u64,
        attempt: u32,
        deadline_unix_ms: u64,
        bootstrap: bool,
    },
    Upload {
        round: u64,
        gateway: String,
        verdict: String,
        reason: Option<String>,
    },
    RoundExtended {
        round: u64,
        arrived: usize,
        quorum: u32,
    },
    RoundClosed {
        record: RoundRecord,
        checkpoint: Option<PathBuf>,
    },
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    /// Round `round` never reached its quorum.
    NoQuorum {
        round: u64,
        arrived: usize,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub outcome: Outcome,
    pub history: Vec<RoundRecord>,
}

/// Runs rounds until `options.rounds` completed, or one misses its quorum for good. `init` is
/// round 1's global head (`None`: a bootstrap round); a state file's head wins over it.
pub async fn run(
    options: &AggregatorOptions,
    key: &SecretKey,
    init: Option<Head>,
    on_event: &mut dyn FnMut(&Event),
) -> anyhow::Result<Report> {
    anyhow::ensure!(options.quorum >= 1, "the quorum must be at least 1");
    anyhow::ensure!(!options.round_time.is_zero(), "a round must last some time");
    crate::check_fleet_name("group", &options.group)?;
    anyhow::ensure!(
        !options.plugin.is_empty() && !options.plugin.contains(['/', '+', '#']),
        "{:?} is not a plugin name",
        options.plugin
    );
    if let Some(dp) = options.dp {
        dp.check()?;
    }
    let mut own = TrustStore::new();
    own.add_key(key.public_key());
    let mut state = load_state(options)?;
    let mut global = match &state.head {
        Some(text) => Some(
            wire::decode_head(text, &own)
                .context("the state file's head")?
                .0,
        ),
        None => init,
    };
    anyhow::ensure!(
        global.is_some() || options.dp.is_none(),
        "differential privacy needs a global head to start from (--init): a bootstrap round's uploads carry each gateway's starting head unnoised"
    );
    if let Some(dir) = &options.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }

    let mut mqtt = options.broker.mqtt_options(&options.client_id)?;
    mqtt.set_clean_start(true);
    // Uploads carry a head's worth of values: more than rumqttc's default 10 KiB packets.
    mqtt.set_max_packet_size(Some(wire::MAX_MESSAGE_BYTES as u32));
    let (client, events) = AsyncClient::new(mqtt, 256);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (subscribed_tx, mut subscribed) = tokio::sync::watch::channel(false);
    let connection = tokio::spawn(connection_loop(
        events,
        client.clone(),
        wire_filter(options),
        tx,
        subscribed_tx,
    ));
    // Uploads sent before the subscription stands would be lost (the session is clean): no
    // round opens before it does.
    tokio::time::timeout(Duration::from_secs(30), subscribed.wait_for(|s| *s))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the broker {} did not accept the subscription within 30 s",
                options.broker.url
            )
        })?
        .context("the broker connection ended")?;
    let publish = |topic: String, bytes: Vec<u8>| {
        let client = client.clone();
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, true, bytes)
                .await
                .context("the MQTT client stopped")
        }
    };
    let round_topic = super::round_topic(&options.group, &options.plugin);
    let mut outcome = Outcome::Completed;
    while state.next_round <= options.rounds {
        let round = state.next_round;
        let mut collector = Collector::new(
            &options.group,
            &options.plugin,
            round,
            global.as_ref(),
            options.dp,
        );
        let global_text = match &global {
            Some(head) => Some(wire::encode_checkpoint(&checkpoint::encode(
                head,
                &metadata(options, key, head, round - 1, &state.history),
                key,
            ))),
            None => None,
        };
        let mut attempt = 0;
        loop {
            state.sequence = (state.sequence + 1).max(unix_millis());
            let deadline = tokio::time::Instant::now() + options.round_time;
            let deadline_unix_ms = unix_millis() + options.round_time.as_millis() as u64;
            let notice = RoundNotice {
                group: options.group.clone(),
                plugin: options.plugin.clone(),
                round,
                sequence: state.sequence,
                open: true,
                deadline_unix_ms,
                quorum: options.quorum,
                dp: options.dp,
                global: global_text.clone(),
                base: global.as_ref().map(wire::head_digest),
                history: state.history.clone(),
            };
            publish(round_topic.clone(), wire::sign(&notice, key)).await?;
            on_event(&Event::RoundOpened {
                round,
                attempt,
                deadline_unix_ms,
                bootstrap: global.is_none(),
            });
            loop {
                let (sender, bytes) = tokio::select! {
                    message = rx.recv() => message.context("the broker connection ended")?,
                    () = tokio::time::sleep_until(deadline) => break,
                };
                let verdict = collector.offer(&sender, &bytes);
                on_event(&Event::Upload {
                    round,
                    gateway: sender,
                    verdict: verdict.code().to_string(),
                    reason: match verdict {
                        Verdict::Refused(reason) => Some(reason),
                        _ => None,
                    },
                });
            }
            if collector.arrived() >= options.quorum as usize {
                break;
            }
            on_event(&Event::RoundExtended {
                round,
                arrived: collector.arrived(),
                quorum: options.quorum,
            });
            if attempt >= options.max_extensions {
                outcome = Outcome::NoQuorum {
                    round,
                    arrived: collector.arrived(),
                };
                break;
            }
            attempt += 1;
        }
        if matches!(outcome, Outcome::NoQuorum { .. }) {
            break;
        }
        let averaged = collector.average()?;
        let record = RoundRecord {
            round,
            participants: averaged.participants,
            samples: averaged.samples,
            ignored: collector.ignored_total(),
            dp: options.dp,
            epsilon: epsilon(&state.history, options.dp)?,
        };
        state.history.push(record.clone());
        let bytes = checkpoint::encode(
            &averaged.head,
            &metadata(options, key, &averaged.head, round, &state.history),
            key,
        );
        let written = match &options.out_dir {
            Some(dir) => {
                let path = dir.join(format!("round-{round}.ckpt"));
                edgeplug_bundle::write_file_atomic(&path, &bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        state.sequence = (state.sequence + 1).max(unix_millis());
        let head_notice = HeadNotice {
            group: options.group.clone(),
            plugin: options.plugin.clone(),
            round,
            sequence: state.sequence,
            checkpoint: wire::encode_checkpoint(&bytes),
            record: record.clone(),
        };
        publish(
            super::head_topic(&options.group, &options.plugin),
            wire::sign(&head_notice, key),
        )
        .await?;
        state.head = Some(head_notice.checkpoint);
        state.next_round = round + 1;
        save_state(options, &state)?;
        global = Some(averaged.head);
        on_event(&Event::RoundClosed {
            record,
            checkpoint: written,
        });
    }
    // Nothing to train for until an aggregator runs again: a closed notice replaces the open
    // one, so a gateway coming back does not train for a round no one collects.
    state.sequence = (state.sequence + 1).max(unix_millis());
    let closed = RoundNotice {
        group: options.group.clone(),
        plugin: options.plugin.clone(),
        round: state.next_round,
        sequence: state.sequence,
        open: false,
        deadline_unix_ms: 0,
        quorum: options.quorum,
        dp: options.dp,
        global: None,
        base: None,
        history: state.history.clone(),
    };
    publish(round_topic, wire::sign(&closed, key)).await?;
    save_state(options, &state)?;
    let _ = client.disconnect().await;
    // The DISCONNECT follows the queued publishes out; the connection task ends with it.
    if tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .is_err()
    {
        tracing::warn!("the broker connection did not close within 5 s");
    }
    Ok(Report {
        outcome,
        history: state.history,
    })
}

/// Reads round 1's global head from a checkpoint, which a key of `trust_dir` (default: the
/// aggregator's own key) must have signed: the head every gateway is told to train from is
/// never an unverified file.
pub fn load_init(
    path: &std::path::Path,
    key: &SecretKey,
    trust_dir: Option<&std::path::Path>,
) -> anyhow::Result<Head> {
    let trust = match trust_dir {
        Some(dir) => TrustStore::load(dir)
            .with_context(|| format!("cannot load the trust store {}", dir.display()))?,
        None => {
            let mut own = TrustStore::new();
            own.add_key(key.public_key());
            own
        }
    };
    let (head, _) = checkpoint::read(path, &trust)
        .with_context(|| format!("cannot use {} as the initial head", path.display()))?;
    Ok(head)
}

fn wire_filter(options: &AggregatorOptions) -> String {
    super::upload_filter(&options.group, &options.plugin)
}

fn metadata(
    options: &AggregatorOptions,
    key: &SecretKey,
    head: &Head,
    round: u64,
    history: &[RoundRecord],
) -> Metadata {
    let spec = head.spec();
    Metadata {
        plugin: options.plugin.clone(),
        sequence: round,
        features: spec.features,
        classes: spec.classes,
        hidden: spec.hidden,
        samples: history.iter().map(|r| r.samples).sum(),
        created_unix_ms: unix_millis(),
        key_id: key.key_id().to_string(),
        origin: Some(format!("federated round {round}")),
        plugin_version: None,
    }
}

/// Polls the connection; (re)subscribes to the uploads on every connection (the session is
/// clean) and forwards each upload with the gateway id its topic names.
async fn connection_loop(
    mut events: rumqttc::v5::EventLoop,
    client: AsyncClient,
    filter: String,
    tx: mpsc::UnboundedSender<(String, Vec<u8>)>,
    subscribed: tokio::sync::watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match events.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(250);
                if client.subscribe(&filter, QoS::AtLeastOnce).await.is_err() {
                    return;
                }
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
                if ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                {
                    let _ = subscribed.send(true);
                } else {
                    tracing::error!(codes = ?ack.return_codes, "aggregator: the broker refused the upload subscription (check its ACL)");
                }
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                let topic = String::from_utf8_lossy(&p.topic);
                let prefix = filter.trim_end_matches('+');
                if let Some(id) = topic.strip_prefix(prefix)
                    && tx.send((id.to_string(), p.payload.to_vec())).is_err()
                {
                    return;
                }
            }
            Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                if tx.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "aggregator: broker connection lost");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

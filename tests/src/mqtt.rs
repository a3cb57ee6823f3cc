//! MQTT 5 clients for the trigger tests: a device that publishes and counts its broker's
//! acknowledgements, and a collector that keeps every message on its filters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;

/// A message a collector received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When the collector got it.
    pub at: std::time::Instant,
    pub topic: String,
    pub payload: Vec<u8>,
    pub correlation: Option<Vec<u8>>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "{} carried no JSON ({e}): {}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

fn options(port: u16, client_id: &str, persistent: bool) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_start(!persistent)
        .set_max_packet_size(Some(16 << 20));
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    if persistent {
        options.set_session_expiry_interval(Some(3600));
    }
    options
}

/// Subscribes to `filters` (QoS 1) and keeps what arrives. With `persistent`, its session
/// outlives disconnections (what a center's consumer does), and it reconnects by itself.
pub struct Collector {
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Notified on every message.
    pub arrived: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start(
        port: u16,
        client_id: &str,
        filters: &[&str],
        persistent: bool,
    ) -> Collector {
        let (client, mut events) = AsyncClient::new(options(port, client_id, persistent), 1024);
        let received = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let sink = received.clone();
        let arrived = Arc::new(tokio::sync::Notify::new());
        let notify = arrived.clone();
        let task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            let mut pending_subacks = filters.len();
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if subscribed_tx.is_some() {
                            for filter in &filters {
                                let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        pending_subacks = pending_subacks.saturating_sub(1);
                        if pending_subacks == 0
                            && let Some(tx) = subscribed_tx.take()
                        {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push(Received {
                            at: std::time::Instant::now(),
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            correlation: p
                                .properties
                                .and_then(|p| p.correlation_data)
                                .map(|c| c.to_vec()),
                        });
                        notify.notify_one();
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(20), subscribed_rx)
            .await
            .expect("the collector subscribed within 20 s")
            .expect("the collector's task runs");
        Collector {
            received,
            arrived,
            task,
        }
    }

    /// Messages received on topics matching `prefix`.
    pub fn on(&self, prefix: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.topic.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A device: publishes QoS 1 on a persistent session (so what the broker did not acknowledge
/// is sent again after a broker restart) and counts the broker's acknowledgements.
pub struct Device {
    pub client: AsyncClient,
    pub acked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    pub async fn connect(port: u16, client_id: &str) -> Device {
        let (client, mut events) = AsyncClient::new(options(port, client_id, true), 4096);
        let acked = Arc::new(AtomicUsize::new(0));
        let counter = acked.clone();
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(20), connected_rx)
            .await
            .expect("the device connected within 20 s")
            .expect("the device's task runs");
        Device {
            client,
            acked,
            task,
        }
    }

    /// Publishes `payload` on `topic`, QoS 1, with `properties`.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>, properties: PublishProperties) {
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
            .await
            .expect("the device's client runs");
    }

    /// Publishes with a `message-id` user property.
    pub async fn publish_with_id(&self, topic: &str, payload: Vec<u8>, id: &str) {
        let properties = PublishProperties {
            user_properties: vec![("message-id".into(), id.into())],
            ..Default::default()
        };
        self.publish(topic, payload, properties).await;
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! The triggers at work: one persistent MQTT 5 session on the local broker, each message run
//! through its plugin, its result published, then the message acknowledged.
//!
//! Why nothing accepted is lost: acknowledgements are manual, and a message's PUBACK is queued
//! only after its result's PUBLISH, on the same connection. rumqttc writes requests in the
//! order they were queued (it stops reading its queue altogether while its outgoing window is
//! full), TCP keeps that order, and the broker handles one connection's packets in order, so
//! by the time the broker forgets a message it holds the result. A gateway that dies before
//! that point has its message redelivered (the session persists, `clean_start = false`) to
//! itself when it comes back, or to another member of a shared subscription; the result then
//! carries the same id, so the center drops the duplicate.
//!
//! Back-pressure: the MQTT 5 receive maximum (`in_flight`) bounds the QoS 1 and 2 messages the
//! broker sends before one is acknowledged, and as many slots run them; the rest wait at the
//! broker. A plugin at its concurrency limit (HTTP requests share it) makes the message wait
//! its turn for a permit, first come first served, never fail: acknowledgements go out in
//! arrival order (see [`crate::acks`]), so one starved message would hold back every later
//! acknowledgement. QoS 0 messages, which the broker does not count, are dropped and
//! counted when every slot is busy: at-most-once is what QoS 0 promises.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::sync::{Notify, Semaphore, watch};

use edgeplug_gateway::Gateway;

use crate::acks::{AckOrder, Due, Ticket};
use crate::config::TriggersConfig;
use crate::metrics::TriggerMetrics;
use crate::topic;

/// The triggers of a running gateway.
pub struct Triggers {
    shared: Arc<Shared>,
    connection: tokio::task::JoinHandle<()>,
}

pub(crate) struct Shared {
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) config: TriggersConfig,
    pub(crate) client: AsyncClient,
    pub(crate) metrics: Arc<TriggerMetrics>,
    /// One per message being run; `in_flight` of them.
    pub(crate) slots: Arc<Semaphore>,
    /// The QoS 1/2 messages taken and not yet acknowledged on the wire.
    pub(crate) ack_order: Mutex<AckOrder>,
    /// Acknowledgements due, in order, to the task that queues them with rumqttc (unbounded:
    /// never more than the messages taken, and one must never be dropped).
    pub(crate) acks_due: tokio::sync::mpsc::UnboundedSender<Due>,
    pub(crate) stopping: watch::Sender<bool>,
    /// When the last message arrived, in ms since `epoch`; 0 if none since connecting.
    pub(crate) last_message_ms: AtomicU64,
    pub(crate) epoch: Instant,
    /// Set by the stall watchdog before it disconnects, so that the connection loop
    /// reconnects instead of ending.
    pub(crate) reconnect_requested: AtomicBool,
    /// UNSUBACKs received, and a wake-up for each: [`Triggers::stop`] waits for its own.
    unsubscribed: AtomicU64,
    unsubscribed_wake: Notify,
}

/// How long [`Triggers::stop`] waits for the broker to confirm that the gateway left its
/// share groups.
const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// Longest wait between two tries of a message whose plugin is saturated.
pub(crate) const SATURATED_RETRY_MAX: Duration = Duration::from_millis(200);
/// How long [`Triggers::stop`] lets the messages being run finish.
const STOP_GRACE: Duration = Duration::from_secs(30);

impl Triggers {
    /// Connects (in the background: a broker that is down is retried with backoff while the
    /// gateway serves HTTP) and starts running messages.
    pub fn start(gateway: Arc<Gateway>, config: TriggersConfig) -> anyhow::Result<Triggers> {
        let broker = config.mqtt.broker_options()?;
        let mut options = broker.mqtt_options(&config.mqtt.client_id)?;
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(config.mqtt.session_expiry_secs))
            .set_keep_alive(Duration::from_secs(config.mqtt.keep_alive_secs))
            .set_manual_acks(true)
            .set_receive_maximum(Some(config.mqtt.in_flight))
            .set_max_packet_size(Some(config.mqtt.max_message_kib.saturating_mul(1024)));
        let (client, events) = AsyncClient::new(options, usize::from(config.mqtt.in_flight) * 4);
        let metrics = Arc::new(TriggerMetrics::new(
            config
                .triggers
                .iter()
                .map(|t| (t.config.topic.clone(), t.config.plugin.clone()))
                .collect(),
            config
                .cameras
                .iter()
                .map(|c| (c.config.name.clone(), c.config.plugin.clone()))
                .collect(),
        ));
        gateway.metrics.add_source(metrics.clone());
        let (acks_due, due_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(queue_acknowledgements(client.clone(), due_rx));
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(usize::from(config.mqtt.in_flight))),
            gateway,
            config,
            client,
            metrics,
            ack_order: Mutex::new(AckOrder::default()),
            acks_due,
            stopping: watch::channel(false).0,
            last_message_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            reconnect_requested: AtomicBool::new(false),
            unsubscribed: AtomicU64::new(0),
            unsubscribed_wake: Notify::new(),
        });
        tracing::info!(
            broker = %broker.url,
            triggers = shared.config.triggers.len(),
            "MQTT triggers starting"
        );
        let connection = tokio::spawn(connection_loop(shared.clone(), events));
        for index in 0..shared.config.cameras.len() {
            tokio::spawn(crate::camera::run_camera(shared.clone(), index));
        }
        if shared.config.mqtt.stall_reconnect_secs > 0 && !shared.config.triggers.is_empty() {
            tokio::spawn(stall_watchdog(shared.clone()));
        }
        Ok(Triggers { shared, connection })
    }

    /// The triggers' metrics (also rendered into the gateway's `/metrics`).
    pub fn metrics(&self) -> &TriggerMetrics {
        &self.shared.metrics
    }

    /// Leaves its share groups, stops taking messages, lets the ones being run finish and
    /// publish (up to 30 s), then disconnects. Messages not yet acknowledged stay with the
    /// broker for the next start.
    ///
    /// A member of a shared subscription unsubscribes first, and keeps running what arrives
    /// until the broker confirms: otherwise the broker goes on handing the stopped member its
    /// share of new messages, kept in its session until it comes back (mosquitto does, for up
    /// to the session's expiry), while the other members could have answered them. A plain
    /// subscription stays: its messages wait for this gateway's restart, as no one else takes
    /// them.
    pub async fn stop(self) {
        self.shared.leave_share_groups().await;
        self.shared.stopping.send_replace(true);
        let all = u32::from(self.shared.config.mqtt.in_flight);
        let drained = tokio::time::timeout(STOP_GRACE, self.shared.slots.acquire_many(all)).await;
        if drained.is_err() {
            tracing::warn!(
                "stopping the triggers with messages still running; the broker will redeliver them"
            );
        }
        let _ = self.shared.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.connection).await;
    }
}

async fn connection_loop(shared: Arc<Shared>, mut events: EventLoop) {
    let mut backoff = Duration::from_millis(250);
    let mut first_connection = true;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(250);
                shared.last_message_ms.store(0, Ordering::Relaxed);
                shared.metrics.connected.store(1, Ordering::Relaxed);
                tracing::info!(
                    session_present = ack.session_present,
                    "triggers connected to the broker"
                );
                // Subscribe on this process's first connection whatever the broker kept (the
                // configuration may have changed), and whenever it lost the session. Not from
                // this task: a full request queue would wait for this very loop to drain it.
                if first_connection || !ack.session_present {
                    let shared = shared.clone();
                    tokio::spawn(async move { shared.subscribe().await });
                }
                first_connection = false;
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => shared.accept(publish),
            Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                shared.unsubscribed.fetch_add(1, Ordering::SeqCst);
                shared.unsubscribed_wake.notify_waiters();
            }
            // The acknowledgement is on its way to the broker: from now on that packet id may
            // name a new message.
            Ok(Event::Outgoing(
                rumqttc::Outgoing::PubAck(pkid) | rumqttc::Outgoing::PubRec(pkid),
            )) => shared.ack_order().written(pkid),
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                for code in &ack.return_codes {
                    if matches!(code, SubscribeReasonCode::Success(_)) {
                        let granted = shared.metrics.subscribed.load(Ordering::Relaxed);
                        let all = shared.config.triggers.len() as i64;
                        shared
                            .metrics
                            .subscribed
                            .store((granted + 1).min(all), Ordering::Relaxed);
                    } else {
                        tracing::error!(
                            ?code,
                            "the broker refused a trigger's subscription: check its ACL and that it speaks MQTT 5"
                        );
                    }
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                shared.metrics.connected.store(0, Ordering::Relaxed);
                // The broker closes the connection now; the next poll reconnects.
                if !shared.reconnect_requested.swap(false, Ordering::SeqCst) {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                shared.metrics.connected.store(0, Ordering::Relaxed);
                shared.ack_order().connection_lost();
                if *shared.stopping.borrow() {
                    return;
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "triggers lost the broker");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Queues the acknowledgements with rumqttc in the order they fall due, waiting for room in
/// its request queue.
async fn queue_acknowledgements(
    client: AsyncClient,
    mut due: tokio::sync::mpsc::UnboundedReceiver<Due>,
) {
    while let Some(due) = due.recv().await {
        let qos = if due.exactly_once {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        let mut ack = Publish::new("", qos, Vec::new(), None);
        ack.pkid = due.pkid;
        if client.ack(&ack).await.is_err() {
            return;
        }
    }
}

/// Reconnects when the broker has gone silent after traffic with nothing left running: what a
/// broker that lost count of its in-flight quota looks like (see `config`'s
/// `stall_reconnect_secs`). A persistent session loses nothing by it.
async fn stall_watchdog(shared: Arc<Shared>) {
    let stall = Duration::from_secs(shared.config.mqtt.stall_reconnect_secs);
    let mut stopping = shared.stopping.subscribe();
    loop {
        tokio::select! {
            () = tokio::time::sleep(stall / 4) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let last = shared.last_message_ms.load(Ordering::Relaxed);
        let now = shared.epoch.elapsed().as_millis() as u64;
        let idle = last > 0 && now.saturating_sub(last) >= stall.as_millis() as u64;
        if idle
            && shared.metrics.connected.load(Ordering::Relaxed) == 1
            && shared.metrics.in_flight.load(Ordering::Relaxed) == 0
            && shared.ack_order().is_empty()
        {
            tracing::info!(
                idle_secs = stall.as_secs(),
                "the broker went silent after traffic; reconnecting in case it stalled"
            );
            shared
                .metrics
                .stall_reconnects
                .fetch_add(1, Ordering::Relaxed);
            shared.last_message_ms.store(0, Ordering::Relaxed);
            shared.reconnect_requested.store(true, Ordering::SeqCst);
            if shared.client.disconnect().await.is_err() {
                return;
            }
        }
    }
}

impl Shared {
    async fn leave_share_groups(&self) {
        let filters: Vec<String> = self
            .config
            .triggers
            .iter()
            .filter(|t| t.config.share.is_some())
            .map(|t| t.subscription.clone())
            .collect();
        if filters.is_empty() {
            return;
        }
        let target = self.unsubscribed.load(Ordering::SeqCst) + filters.len() as u64;
        for filter in filters {
            if self.client.unsubscribe(filter).await.is_err() {
                return;
            }
        }
        let confirmed = tokio::time::timeout(LEAVE_GRACE, async {
            loop {
                // Registered before the check, so an UNSUBACK between the two is not missed.
                let wake = self.unsubscribed_wake.notified();
                tokio::pin!(wake);
                wake.as_mut().enable();
                if self.unsubscribed.load(Ordering::SeqCst) >= target {
                    return;
                }
                wake.await;
            }
        })
        .await;
        if confirmed.is_err() {
            tracing::warn!("the broker did not confirm that the gateway left its share groups");
        }
    }

    async fn subscribe(&self) {
        for trigger in &self.config.triggers {
            let qos = match trigger.config.qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            };
            let filter = Filter::new(trigger.subscription.clone(), qos);
            if let Err(e) = self.client.subscribe_many([filter]).await {
                tracing::error!(error = %e, "the MQTT client stopped");
                return;
            }
        }
    }

    /// Takes a message from the connection: finds its trigger and runs it in its own task.
    fn accept(self: &Arc<Self>, publish: Publish) {
        self.last_message_ms.store(
            (self.epoch.elapsed().as_millis() as u64).max(1),
            Ordering::Relaxed,
        );
        if *self.stopping.borrow() {
            // Not acknowledged: the broker keeps it for the next start.
            return;
        }
        let ticket = if publish.qos == QoS::AtMostOnce {
            None
        } else {
            let exactly_once = publish.qos == QoS::ExactlyOnce;
            match self
                .ack_order()
                .take(publish.pkid, exactly_once, publish.dup)
            {
                Some(ticket) => Some(ticket),
                None => {
                    // A resent copy of a message still held: its acknowledgement answers for
                    // both.
                    self.metrics
                        .redeliveries_skipped
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        };
        let topic_name = String::from_utf8_lossy(&publish.topic).into_owned();
        let Some(index) = self
            .config
            .triggers
            .iter()
            .position(|t| topic::matches(&t.config.topic, &topic_name))
        else {
            self.metrics.unmatched.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(topic = %topic_name, "message matches no trigger; acknowledged and dropped");
            self.finish(ticket, true);
            return;
        };
        let counters = &self.metrics.per_trigger[index];
        counters.messages.fetch_add(1, Ordering::Relaxed);
        let slot = if ticket.is_some() {
            None
        } else {
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        };
        let shared = self.clone();
        tokio::spawn(async move {
            // The broker sends at most `in_flight` unacknowledged messages, so for them a slot
            // is (nearly always) free at once.
            let slot = match slot {
                Some(slot) => slot,
                None => match shared.slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
            };
            shared.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
            let acknowledge = shared.run(index, publish).await;
            shared.finish(ticket, acknowledge);
            shared.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }

    /// A message is done: its acknowledgement (if `acknowledge`) is due once those of the
    /// messages received before it are (see [`crate::acks`]). Queued after its results, so
    /// the broker holds them before it forgets the message.
    fn finish(&self, ticket: Option<Ticket>, acknowledge: bool) {
        let Some(ticket) = ticket else { return };
        // Under the lock, so that acknowledgements are queued in the order they are due.
        let mut order = self.ack_order();
        for due in order.finish(ticket, acknowledge) {
            if self.acks_due.send(due).is_err() {
                // The MQTT client stopped: the broker resends the message next time.
                order.written(due.pkid);
            }
        }
    }

    fn ack_order(&self) -> std::sync::MutexGuard<'_, AckOrder> {
        self.ack_order.lock().unwrap_or_else(|p| p.into_inner())
    }
}

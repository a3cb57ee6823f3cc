//! When to acknowledge the QoS 1 and 2 messages the triggers take: in the order they arrived,
//! each once, and never for a packet id the broker may have given to another message.
//!
//! **In order.** MQTT requires acknowledgements in the order the messages were received
//! ([MQTT-4.6.0-2]), and brokers rely on it: mosquitto before 2.0.13 (Debian 12 ships 2.0.11)
//! promotes its queued messages by the acknowledged message's position in its in-flight list,
//! so out-of-order acknowledgements make it lose count and stop sending for good. Messages run
//! concurrently and finish in any order, so a finished message's acknowledgement waits for
//! those received before it ([`AckOrder::finish`] hands out the ones that are due).
//!
//! **Once.** A packet id names one message until the broker has our acknowledgement; then it
//! may name the next. When a message still held (running, or finished and waiting for its
//! turn or for rumqttc to write its acknowledgement) is resent after a reconnection (DUP), the
//! copy is skipped: the held one's acknowledgement answers for both, and running the copy too
//! would acknowledge twice, the second time perhaps for the next message to get that id,
//! before it ran.
//!
//! **Never lost.** rumqttc drops the acknowledgements still queued when a connection fails (the
//! broker resends those messages instead), so [`AckOrder::connection_lost`] forgets them too,
//! and their resent copies run again. (One queued in the instant between rumqttc's drop and
//! that call reaches the next connection, and its message's copy is acknowledged again: the
//! hazard above, in a window of microseconds around a reconnection, harmful only if the
//! gateway also dies before the message that reused the id has its result.)
//!
//! A packet id without DUP is always a new message, even while the last one that had it is
//! still held: the broker reused the id as soon as it had our acknowledgement.

use std::collections::{HashMap, VecDeque};

/// A taken message's place in the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// An acknowledgement that is due: PUBACK, or PUBREC for a QoS 2 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub pkid: u16,
    pub exactly_once: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Finished; `ack`: its results are published and it is to be acknowledged (else it is
    /// left to the broker, which resends it on the next connection).
    Finished {
        ack: bool,
    },
}

/// The QoS 1 and 2 messages taken and not yet acknowledged on the wire.
#[derive(Debug, Default)]
pub struct AckOrder {
    /// Taken messages in arrival order, from the oldest not yet released; the front one has
    /// ticket `front`.
    queue: VecDeque<(Due, State)>,
    front: u64,
    /// Acknowledgements handed out and not yet written, by packet id.
    unwritten: HashMap<u16, usize>,
}

impl AckOrder {
    /// A message arrived: its ticket, or `None` for a DUP copy of one still held.
    pub fn take(&mut self, pkid: u16, exactly_once: bool, dup: bool) -> Option<Ticket> {
        let held =
            self.unwritten.contains_key(&pkid) || self.queue.iter().any(|(d, _)| d.pkid == pkid);
        if dup && held {
            return None;
        }
        self.queue
            .push_back((Due { pkid, exactly_once }, State::Running));
        Some(Ticket(self.front + self.queue.len() as u64 - 1))
    }

    /// The message of `ticket` is done (`ack`: acknowledge it). Returns the packet ids to
    /// acknowledge now, in order; the caller queues them before anyone else calls this.
    pub fn finish(&mut self, ticket: Ticket, ack: bool) -> Vec<Due> {
        if let Some(index) = ticket.0.checked_sub(self.front)
            && let Some(entry) = self.queue.get_mut(index as usize)
        {
            entry.1 = State::Finished { ack };
        }
        let mut due = Vec::new();
        while let Some((next, State::Finished { ack })) = self.queue.front().copied() {
            self.queue.pop_front();
            self.front += 1;
            if ack {
                *self.unwritten.entry(next.pkid).or_default() += 1;
                due.push(next);
            }
        }
        due
    }

    /// rumqttc wrote an acknowledgement of `pkid` to the connection.
    pub fn written(&mut self, pkid: u16) {
        if let Some(count) = self.unwritten.get_mut(&pkid) {
            *count -= 1;
            if *count == 0 {
                self.unwritten.remove(&pkid);
            }
        }
    }

    /// The connection failed: rumqttc dropped every queued acknowledgement.
    pub fn connection_lost(&mut self) {
        self.unwritten.clear();
    }

    /// Nothing is held.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.unwritten.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkids(due: Vec<Due>) -> Vec<u16> {
        due.into_iter().map(|d| d.pkid).collect()
    }

    #[test]
    fn acknowledgements_go_out_in_arrival_order() {
        let mut order = AckOrder::default();
        let a = order.take(1, false, false).unwrap();
        let b = order.take(2, false, false).unwrap();
        let c = order.take(3, false, false).unwrap();
        assert_eq!(
            pkids(order.finish(c, true)),
            Vec::<u16>::new(),
            "3 waits for 1 and 2"
        );
        assert_eq!(pkids(order.finish(a, true)), [1]);
        // 2 is left to the broker (the gateway is stopping): 3 goes without it.
        assert_eq!(pkids(order.finish(b, false)), [3]);
        for pkid in [1, 3] {
            order.written(pkid);
        }
        assert!(order.is_empty());
    }

    #[test]
    fn a_resent_copy_of_a_held_message_is_skipped() {
        let mut order = AckOrder::default();
        let a = order.take(7, false, false).unwrap();
        order.connection_lost();
        assert_eq!(order.take(7, false, true), None, "7 still runs");
        assert_eq!(pkids(order.finish(a, true)), [7]);
        assert_eq!(
            order.take(7, false, true),
            None,
            "7's acknowledgement is not written yet"
        );
        order.written(7);
        assert!(order.is_empty());
    }

    #[test]
    fn an_acknowledgement_dropped_with_the_connection_lets_the_copy_run() {
        let mut order = AckOrder::default();
        let a = order.take(7, false, false).unwrap();
        assert_eq!(pkids(order.finish(a, true)), [7]);
        // The connection fails before rumqttc wrote it: rumqttc drops it.
        order.connection_lost();
        assert!(order.is_empty());
        assert!(
            order.take(7, false, true).is_some(),
            "else 7 is never acknowledged"
        );
    }

    #[test]
    fn a_reused_packet_id_is_a_new_message() {
        let mut order = AckOrder::default();
        let a = order.take(7, false, false).unwrap();
        assert_eq!(pkids(order.finish(a, true)), [7]);
        // The broker had the acknowledgement and reused 7 before we saw it written.
        let b = order.take(7, false, false).unwrap();
        order.written(7);
        assert!(!order.is_empty(), "the new message still holds 7");
        assert_eq!(pkids(order.finish(b, true)), [7]);
        order.written(7);
        assert!(order.is_empty());
    }
}

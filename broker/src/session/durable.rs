//! What a session writes to the session store ([`crate::durable`]), and what it holds back from
//! its client until that is on disk.
//!
//! Two things wait for the store before the session writes to its client:
//! * acknowledgements of the client's QoS 1/2 messages ([`Session::ack_publish`]): each PUBACK
//!   or PUBREC waits for its message to be on disk for every persistent session it matched; they
//!   keep their order (a later one waits behind an earlier one). If the store failed, an MQTT 5
//!   client gets 0x80 instead and a 3.1.1 client, whose acknowledgements carry no reason, is
//!   disconnected.
//! * the session's own changes (its *barrier*, [`Session::hold`]): the session record on
//!   connect and (un)subscribe, a QoS 2 message's packet id before its PUBLISH, its release
//!   before PUBREL, the client's QoS 2 packet ids before PUBREC / PUBCOMP.
//!
//! [`Session::settle`] runs before every write to the socket.

use super::state::Outgoing;
use super::{End, Session};
use crate::codec::*;
use crate::durable::record::WillRecord;
use crate::durable::{StoreError, Waiter};
use crate::inbox::Delivery;

/// A PUBACK / PUBREC not sent yet.
pub(super) struct Held {
    pkid: u16,
    qos: QoS,
    waiter: Option<Waiter>,
}

impl Session {
    fn persistent_now(&self) -> bool {
        self.state.inbox.is_persistent()
    }

    /// Holds what goes to the client until store op `op` is on disk.
    pub(super) fn hold(&mut self, op: Option<u64>) {
        if let Some(op) = op {
            self.barrier = self.barrier.max(op);
        }
    }

    /// At CONNACK: the session marked persistent (or not) and its record written (or removed).
    pub(super) fn store_connected(&mut self) {
        let store = self.edge.sessions.clone();
        if self.persistent {
            store.mark(&self.state.inbox, true);
            let will = self.will_record();
            let op = store.put_session(&self.client_id, &self.state, self.expiry(), true, will);
            self.hold(Some(op));
        } else if self.persistent_now() {
            // Resumed, but ending with this connection (MQTT 5 expiry 0).
            store.mark(&self.state.inbox, false);
            let op = store.delete_session(&self.client_id, self.state.key);
            self.hold(Some(op));
        }
    }

    /// The connection's will as stored while it is connected: due its delay after a crash.
    fn will_record(&self) -> Option<WillRecord> {
        let w = self.will.as_ref()?;
        let delay = w
            .properties
            .as_ref()
            .and_then(|p| p.delay_interval)
            .unwrap_or(0)
            .min(self.expiry());
        WillRecord::new(
            &super::end::will_publish((**w).clone()),
            self.src,
            delay,
            None,
        )
    }

    /// The session's expiry interval as stored (`u32::MAX`: never).
    pub(super) fn expiry(&self) -> u32 {
        match self.version {
            Version::V311 => u32::MAX,
            Version::V5 => self.expiry,
        }
    }

    /// After SUBSCRIBE / UNSUBSCRIBE: the record again.
    pub(super) fn store_subscriptions(&mut self) {
        if self.persistent_now() {
            let will = self.will_record();
            let op = self.edge.sessions.put_session(
                &self.client_id,
                &self.state,
                self.expiry(),
                true,
                will,
            );
            self.hold(Some(op));
        }
    }

    /// A QoS 2 delivery about to go out under `pkid`.
    pub(super) fn store_sent(&mut self, d: &Delivery, pkid: u16) {
        if d.qos == QoS::ExactlyOnce && self.persistent_now() {
            let op = self.edge.sessions.sent(self.state.key, d.msg.seq, pkid);
            self.hold(op);
        }
    }

    /// A delivery done with (acknowledged, expired, refused, too large).
    pub(super) fn store_forget(&self, seq: u64) {
        if self.persistent_now() {
            self.edge.sessions.remove(self.state.key, seq);
        }
    }

    /// An entry of the in-flight map done with.
    pub(super) fn store_forget_out(&self, o: &Outgoing) {
        match o {
            Outgoing::Sent(d) => self.store_forget(d.msg.seq),
            Outgoing::Released(seq) => self.store_forget(*seq),
        }
    }

    /// PUBREC for delivery `seq`: only PUBREL is owed now.
    pub(super) fn store_released(&mut self, seq: u64, pkid: u16) {
        if self.persistent_now() {
            let op = self.edge.sessions.released(self.state.key, seq, pkid);
            self.hold(op);
        }
    }

    /// The client's QoS 2 packet id received (`add`) or released.
    pub(super) fn store_inbound(&mut self, pkid: u16, add: bool) {
        if self.persistent_now() {
            let op = self.edge.sessions.inbound(self.state.key, pkid, add);
            self.hold(Some(op));
        }
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) for a message the node accepted: sent once `waiter`
    /// says it is on disk, after every acknowledgement held before it.
    pub(super) fn ack_publish(&mut self, qos: QoS, pkid: u16, waiter: Option<Waiter>) {
        if qos == QoS::AtLeastOnce {
            self.unflushed_acks += 1;
        }
        if waiter.is_none() && self.held.is_empty() && !self.nats_unflushed {
            self.send_ack(qos, pkid);
        } else {
            self.held.push(Held { pkid, qos, waiter });
        }
    }

    fn send_ack(&mut self, qos: QoS, pkid: u16) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_client(Packet::PubAck(PubAck::new(pkid, None))),
            QoS::ExactlyOnce => self.send_client(Packet::PubRec(PubRec::new(pkid, None))),
        }
    }

    /// Is there anything [`Session::settle`] must wait for?
    pub(super) fn must_settle(&self) -> bool {
        !self.held.is_empty()
            || self.nats_unflushed
            || self.barrier > self.edge.sessions.progress().done
    }

    /// Waits (bounded) for what the client's next write promises: the barrier, then each held
    /// acknowledgement, sent or refused in order.
    pub(super) async fn settle(&mut self) -> Result<(), End> {
        // Every QoS 1/2 message read so far is on its way to the other nodes: one flush.
        if std::mem::take(&mut self.nats_unflushed) {
            self.edge.flush_cluster().await;
        }
        let store = self.edge.sessions.clone();
        if self.barrier > store.progress().done {
            let failures = store.progress().failures;
            if let Err(e) = store.wait_done(self.barrier, failures).await {
                tracing::warn!(client_id = self.client_id, error = %e, "session state not stored");
            }
        }
        for h in std::mem::take(&mut self.held) {
            let result = match h.waiter {
                None => Ok(()),
                Some(w) => w.wait(&store).await,
            };
            match result {
                Ok(()) => self.send_ack(h.qos, h.pkid),
                Err(e) => self.refuse_unstored(h.qos, h.pkid, e)?,
            }
        }
        Ok(())
    }

    /// A message the store could not keep: refused (MQTT 5) or the connection closed (3.1.1).
    fn refuse_unstored(&mut self, qos: QoS, pkid: u16, e: StoreError) -> Result<(), End> {
        tracing::warn!(client_id = self.client_id, error = %e, "message not stored: refused");
        if qos == QoS::ExactlyOnce && self.state.qos2_in.remove(&pkid) {
            self.store_inbound(pkid, false);
        }
        if self.version == Version::V311 {
            return Err(End::Violation(
                DisconnectReasonCode::UnspecifiedError,
                format!("message not stored: {e}"),
            ));
        }
        self.refuse_publish(qos, pkid, super::publish::Refuse::Unspecified);
        Ok(())
    }
}

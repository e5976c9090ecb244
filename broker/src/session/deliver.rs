//! What goes to the client: messages from the inbox within the receive window, their packet
//! ids, and the acknowledgements that free them.
//!
//! QoS 0 messages go out as they come. A QoS 1/2 message takes a packet id and a slot in the
//! window (the client's Receive Maximum, capped by `limits.max_inflight`) and is kept in the
//! session's state until PUBACK, or PUBREC then PUBCOMP; while the window is full, messages wait
//! in the inbox (bounded). A resumed session first sends again what was in flight: unacknowledged
//! messages with DUP under their old ids, PUBREL for QoS 2 exchanges half done (MQTT-4.4.0-1).

use std::sync::Arc;

use bytes::Bytes;

use super::state::Outgoing;
use super::{Session, BATCH};
use crate::codec::{self, *};
use crate::inbox::Delivery;
use crate::message::Message;
use crate::topic;

impl Session {
    /// Can the next message in the inbox go out now?
    pub(super) fn can_take(&self) -> bool {
        self.state.out.len() < self.window as usize
            || self.state.inbox.peek_needs_slot() == Some(false)
    }

    /// Sends what the inbox holds, as far as the window allows, at most a batch.
    pub(super) fn drain_inbox(&mut self) {
        for _ in 0..BATCH {
            match self.state.inbox.peek_needs_slot() {
                None => return,
                Some(true) if self.state.out.len() >= self.window as usize => return,
                Some(_) => {}
            }
            let Some(d) = self.state.inbox.pop() else {
                return;
            };
            self.send_delivery(d, false);
            if self.client_out.len() >= 256 * 1024 {
                return;
            }
        }
    }

    /// Messages that go before anything queued (retained messages on subscribe): sent while the
    /// window has room, the rest put at the head of the inbox in order (bounded).
    pub(super) fn send_first(&mut self, batch: Vec<Delivery>) {
        let mut rest = Vec::new();
        for d in batch {
            if !rest.is_empty()
                || (d.qos != QoS::AtMostOnce && self.state.out.len() >= self.window as usize)
            {
                rest.push(d);
            } else {
                self.send_delivery(d, false);
            }
        }
        let max = self.edge.config.limits.max_queued;
        if rest.len() > max {
            let n = rest.len() - max;
            self.tally.dropped += n as u64;
            self.tally.dropped_queue_full += n as u64;
            rest.truncate(max);
        }
        for d in rest.into_iter().rev() {
            self.state.inbox.unshift(d);
        }
    }

    /// Encodes one message for the client (a packet id for QoS 1/2, kept until acknowledged).
    fn send_delivery(&mut self, d: Delivery, dup: bool) {
        let left = d.msg.expiry_left_now();
        if left == Some(0) {
            self.store_forget(d.msg.seq);
            return; // expired while queued (MQTT 5 §3.3.2.3.3)
        }
        let seq = d.msg.seq;
        // (Every node message at QoS 1/2 carries packet id 1, which the encoding wants.)
        if d.qos != QoS::AtMostOnce
            && d.msg.publish.pkid != 0
            && left.is_none()
            && d.ids.is_empty()
            && self.out_aliases.is_none()
        {
            return self.send_shared(d, dup);
        }
        // A QoS 1/2 delivery is kept until acknowledged; a QoS 0 one is not, and when this
        // session is the last holder of its message (nobody else matched it, or the others
        // have sent theirs), the message is taken without a copy.
        let (mut p, kept) = if d.qos == QoS::AtMostOnce {
            let Delivery {
                msg, retain, ids, ..
            } = d;
            let mut p = Arc::try_unwrap(msg).map_or_else(|m| m.publish.clone(), |m| m.publish);
            p.retain = retain;
            p.qos = QoS::AtMostOnce;
            p.pkid = 0;
            (with_ids(p, left, ids), None)
        } else {
            let mut p = d.msg.publish.clone();
            p.retain = d.retain;
            p.qos = d.qos;
            (with_ids(p, left, d.ids.clone()), Some(d))
        };
        p.dup = dup;
        if self.client_max_packet < u32::MAX
            && codec::publish_size(&p, self.version) > self.client_max_packet as usize
        {
            // MQTT 5 §3.1.2.11.4: a message too large for the client is discarded.
            self.tally.dropped += 1;
            self.tally.dropped_too_large += 1;
            self.store_forget(seq);
            return;
        }
        if let Some(d) = kept {
            let id = self.alloc_pkid();
            p.pkid = id;
            self.store_sent(&d, id);
            self.put_out(id, Outgoing::Sent(d));
        }
        self.tally.messages_sent += 1;
        if let Some(a) = self.out_aliases.as_mut() {
            a.apply(&mut p, self.version, self.client_max_packet);
        }
        self.send_client(Packet::Publish(p));
    }

    /// [`Session::send_delivery`] of a QoS 1/2 delivery that adds nothing to its message (no
    /// expiry left to rewrite, no subscription identifier, no topic alias): the message stays
    /// shared, written with this delivery's flags and packet id (a copy of its properties cost
    /// ~13 allocations per MQTT 5 request in an RPC profile).
    fn send_shared(&mut self, d: Delivery, dup: bool) {
        let id = self.alloc_pkid();
        let flags = codec::Flags {
            qos: d.qos,
            dup,
            retain: d.retain,
            pkid: id,
        };
        let start = self.client_out.len();
        match codec::write_publish_as(&d.msg.publish, &flags, self.version, &mut self.client_out) {
            Ok(n) if n <= self.client_max_packet as usize => {}
            Ok(_) => {
                // MQTT 5 §3.1.2.11.4: a message too large for the client is discarded.
                self.client_out.truncate(start);
                self.tally.dropped += 1;
                self.tally.dropped_too_large += 1;
                self.store_forget(d.msg.seq);
                return;
            }
            Err(e) => {
                self.client_out.truncate(start);
                tracing::warn!(error = %e, "cannot encode packet for client");
                self.store_forget(d.msg.seq);
                return;
            }
        }
        self.store_sent(&d, id);
        self.put_out(id, Outgoing::Sent(d));
        self.tally.messages_sent += 1;
    }

    /// Records a message in flight, in sending order.
    fn put_out(&mut self, id: u16, o: Outgoing) {
        self.state.out_seq += 1;
        self.state.out.insert(id, (self.state.out_seq, o));
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.state.next_pkid = self.state.next_pkid.wrapping_add(1).max(1);
            let id = self.state.next_pkid;
            if !self.state.out.contains_key(&id) {
                return id;
            }
        }
    }

    /// PUBACK or PUBCOMP from the client.
    pub(super) fn client_done(&mut self, pkid: u16) {
        if let Some((_, o)) = self.state.out.remove(&pkid) {
            self.store_forget_out(&o);
        }
    }

    pub(super) fn client_pubrec(&mut self, r: PubRec) {
        let failed = !matches!(
            r.reason,
            PubRecReason::Success | PubRecReason::NoMatchingSubscribers
        );
        match self.state.out.get_mut(&r.pkid) {
            // The client refused the message: the exchange ends here.
            Some(_) if failed => {
                if let Some((_, o)) = self.state.out.remove(&r.pkid) {
                    self.store_forget_out(&o);
                }
            }
            Some(e) => {
                let seq = match &e.1 {
                    Outgoing::Sent(d) => d.msg.seq,
                    Outgoing::Released(seq) => *seq,
                };
                e.1 = Outgoing::Released(seq);
                self.store_released(seq, r.pkid);
                self.send_client(Packet::PubRel(PubRel::new(r.pkid, None)));
            }
            // Not ours (any more): PUBREL anyway, or the client waits forever (MQTT-4.3.3).
            None if !failed => self.send_client(Packet::PubRel(PubRel::new(r.pkid, None))),
            None => {}
        }
    }

    /// A resumed session: what was in flight goes again, each message authorized again (the
    /// client may be back with narrower credentials).
    pub(super) fn resend_in_flight(&mut self) {
        // In the order they were sent (packet ids wrap around).
        let mut out: Vec<(u16, (u64, Outgoing))> =
            std::mem::take(&mut self.state.out).into_iter().collect();
        out.sort_by_key(|(_, (seq, _))| *seq);
        for (id, (_, o)) in out {
            match o {
                Outgoing::Released(seq) => {
                    self.put_out(id, Outgoing::Released(seq));
                    self.send_client(Packet::PubRel(PubRel::new(id, None)));
                }
                Outgoing::Sent(d) => {
                    if !self.may_receive(d.msg.topic()) {
                        self.store_forget(d.msg.seq);
                        continue;
                    }
                    let mut p = d.msg.publish.clone();
                    p.qos = d.qos;
                    p.retain = d.retain;
                    p.dup = true;
                    p.pkid = id;
                    if !d.ids.is_empty() {
                        p.properties
                            .get_or_insert_with(Default::default)
                            .subscription_identifiers = d.ids.clone();
                    }
                    self.put_out(id, Outgoing::Sent(d));
                    self.tally.messages_sent += 1;
                    self.send_client(Packet::Publish(p));
                }
            }
        }
        // Queued messages, authorized again too.
        let inbox = self.state.inbox.clone();
        inbox.retain(|d| {
            let ok = self.may_receive(d.msg.topic());
            if !ok {
                self.store_forget(d.msg.seq);
            }
            ok
        });
    }

    fn may_receive(&self, topic: &str) -> bool {
        self.internal
            || self
                .edge
                .authorizer
                .can_subscribe(&self.identity, &self.client_id, topic)
    }

    /// Delivers `$SYS` values to the client's `$SYS` subscriptions (or to `only`).
    pub(super) fn deliver_sys(
        &mut self,
        tree: &[(String, String)],
        only: Option<&str>,
        retain: bool,
    ) {
        let filters: Vec<String> = match only {
            Some(f) => vec![f.to_string()],
            None => self
                .state
                .subs
                .keys()
                .filter(|k| super::state::is_sys(k))
                .cloned()
                .collect(),
        };
        for (t, v) in tree {
            if filters.iter().any(|f| topic::matches(f, t)) {
                let mut p = Publish::new(t.as_str(), QoS::AtMostOnce, Bytes::from(v.clone()), None);
                p.retain = retain;
                let d = Delivery {
                    msg: Arc::new(Message::new(p, 0)),
                    qos: QoS::AtMostOnce,
                    retain,
                    ids: Vec::new(),
                };
                self.send_delivery(d, false);
            }
        }
    }
}

/// A delivery's copy of its message with what belongs to this delivery: the expiry left and
/// the identifiers of the subscriptions it matched.
fn with_ids(mut p: Publish, left: Option<u32>, ids: Vec<usize>) -> Publish {
    if left.is_some() || !ids.is_empty() {
        let props = p.properties.get_or_insert_with(Default::default);
        props.message_expiry_interval = left;
        props.subscription_identifiers = ids;
    }
    p
}

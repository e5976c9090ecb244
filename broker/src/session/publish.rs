//! What the client publishes: checked, authorized, stored if retained, handed to the core.
//!
//! A PUBLISH is resolved (topic alias), validated (topic, payload format), authorized, rate
//! limited, and — if retained — written to the retained store first. It then becomes a
//! [`Message`] and enters the core ([`Edge::route`]); only then does the client get PUBACK (QoS 1)
//! or PUBREC (QoS 2). A QoS 2 message is routed once: its packet id is remembered until PUBREL,
//! and a resent PUBLISH under that id is acknowledged again without being routed again.

use super::{End, Session, STAMP_KEY};
use crate::codec::*;
use crate::message::Message;
use crate::topic;

/// Why the edge refuses a client's PUBLISH without closing the connection.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refuse {
    Unspecified,
    NotAuthorized,
    TopicNameInvalid,
    QuotaExceeded,
    PayloadFormatInvalid,
    ServerBusy,
}

impl Refuse {
    fn puback(self) -> PubAckReason {
        match self {
            Refuse::Unspecified | Refuse::ServerBusy => PubAckReason::UnspecifiedError,
            Refuse::NotAuthorized => PubAckReason::NotAuthorized,
            Refuse::TopicNameInvalid => PubAckReason::TopicNameInvalid,
            Refuse::QuotaExceeded => PubAckReason::QuotaExceeded,
            Refuse::PayloadFormatInvalid => PubAckReason::PayloadFormatInvalid,
        }
    }
    fn pubrec(self) -> PubRecReason {
        match self {
            Refuse::Unspecified | Refuse::ServerBusy => PubRecReason::UnspecifiedError,
            Refuse::NotAuthorized => PubRecReason::NotAuthorized,
            Refuse::TopicNameInvalid => PubRecReason::TopicNameInvalid,
            Refuse::QuotaExceeded => PubRecReason::QuotaExceeded,
            Refuse::PayloadFormatInvalid => PubRecReason::PayloadFormatInvalid,
        }
    }
}

impl Session {
    pub(super) fn refuse_publish(&mut self, qos: QoS, pkid: u16, why: Refuse) {
        tracing::debug!(client_id = self.client_id, reason = ?why, "publish refused");
        self.tally.dropped += 1;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_client(Packet::PubAck(PubAck {
                pkid,
                reason: why.puback(),
                properties: None,
            })),
            QoS::ExactlyOnce => self.send_client(Packet::PubRec(PubRec {
                pkid,
                reason: why.pubrec(),
                properties: None,
            })),
        }
    }

    pub(super) async fn client_publish(&mut self, mut p: Publish) -> Result<(), End> {
        self.tally.messages_received += 1;
        let (qos, pkid) = (p.qos, p.pkid);
        if let Some(alias) = p.properties.as_mut().and_then(|pr| pr.topic_alias.take()) {
            if alias == 0 || alias > self.edge.config.limits.topic_alias_max {
                return Err(End::Violation(
                    DisconnectReasonCode::TopicAliasInvalid,
                    format!("topic alias {alias} out of range"),
                ));
            }
            if p.topic.is_empty() {
                p.topic = self
                    .aliases
                    .as_ref()
                    .and_then(|a| a.get(&alias))
                    .cloned()
                    .ok_or_else(|| {
                        End::Violation(
                            DisconnectReasonCode::ProtocolError,
                            "unknown topic alias".into(),
                        )
                    })?;
            } else {
                self.aliases
                    .get_or_insert_with(Default::default)
                    .insert(alias, p.topic.clone());
            }
        }
        let Ok(topic) = std::str::from_utf8(&p.topic) else {
            return Err(End::Violation(
                DisconnectReasonCode::MalformedPacket,
                "topic is not UTF-8".into(),
            ));
        };
        if let Err(e) = topic::validate_topic(topic) {
            // U+0000 makes any MQTT string malformed (§1.5.4); an empty topic without alias is a
            // protocol error (§3.3.2.1); wildcards and the rest are an invalid topic name.
            let code = match e {
                topic::TopicError::Nul => DisconnectReasonCode::MalformedPacket,
                topic::TopicError::Empty => DisconnectReasonCode::ProtocolError,
                _ => DisconnectReasonCode::TopicNameInvalid,
            };
            return Err(End::Violation(code, e.to_string()));
        }
        if let Some((code, why)) = crate::conformance::publish_error(&p).filter(|_| !self.internal)
        {
            return Err(End::Violation(code, why));
        }
        // A QoS 2 message already received under this id (sent again before our PUBREC came
        // through): acknowledge it again, route it once.
        if qos == QoS::ExactlyOnce && self.state.qos2_in.contains(&pkid) {
            self.ack_publish(qos, pkid, None);
            return Ok(());
        }
        if topic.starts_with('$') {
            self.refuse_publish(qos, pkid, Refuse::TopicNameInvalid);
            return Ok(());
        }
        let utf8_declared = p
            .properties
            .as_ref()
            .is_some_and(|pr| pr.payload_format_indicator == Some(1));
        if utf8_declared && std::str::from_utf8(&p.payload).is_err() {
            self.refuse_publish(qos, pkid, Refuse::PayloadFormatInvalid);
            return Ok(());
        }
        if crate::limits::publish_over_limits(&p, &self.edge.config.limits).is_some() {
            self.refuse_publish(qos, pkid, Refuse::QuotaExceeded);
            return Ok(());
        }
        if !self
            .edge
            .authorizer
            .can_publish(&self.identity, &self.client_id, topic)
        {
            if self.version == Version::V311
                && self.edge.config.deny_action == crate::security::DenyAction::Disconnect
            {
                return Err(End::Violation(
                    DisconnectReasonCode::NotAuthorized,
                    format!("not allowed to publish to {topic}"),
                ));
            }
            self.refuse_publish(qos, pkid, Refuse::NotAuthorized);
            return Ok(());
        }
        if !self.take_publish_token() {
            self.tally.dropped_rate_limit += 1;
            self.refuse_publish(qos, pkid, Refuse::QuotaExceeded);
            return Ok(());
        }
        // In flight: QoS 2 messages until PUBREL, QoS 1 until their PUBACK is written.
        if qos != QoS::AtMostOnce
            && self.state.qos2_in.len() + self.unflushed_acks
                >= self.edge.config.limits.max_inflight as usize
        {
            return Err(End::Violation(
                DisconnectReasonCode::ReceiveMaximumExceeded,
                "more QoS 1/2 messages in flight than Receive Maximum".into(),
            ));
        }
        // Replies are for the bridge alone: kept as retained state they would reach every `#`
        // subscriber (and anyone may publish there).
        if p.retain && topic.starts_with(crate::REPLY_PREFIX) {
            p.retain = false;
        }
        if let Some(props) = p.properties.as_mut() {
            props.user_properties.retain(|(k, _)| k != STAMP_KEY);
        }
        if p.retain {
            if let Err(e) = self.edge.retained.set(&p).await {
                tracing::warn!(error = %e, "retained write failed");
                // A 3.1.1 PUBACK/PUBREC has no reason code: acknowledging would tell the client
                // its state is stored. Closing leaves the message unacknowledged instead.
                if self.version == Version::V311 && qos != QoS::AtMostOnce {
                    return Err(End::Violation(
                        DisconnectReasonCode::UnspecifiedError,
                        format!("retained message not stored: {e}"),
                    ));
                }
                let why = match e {
                    crate::retained::StoreError::Busy => Refuse::QuotaExceeded,
                    crate::retained::StoreError::Failed(_) => Refuse::Unspecified,
                };
                self.refuse_publish(qos, pkid, why);
                return Ok(());
            }
        }
        let msg = Message::new(p, self.src);
        // The client's QoS 2 packet id is known (and stored) before the message can reach
        // anyone: a PUBLISH sent again under it is not routed twice, even across a crash.
        if qos == QoS::ExactlyOnce {
            self.state.qos2_in.insert(pkid);
            self.store_inbound(pkid, true);
        }
        let waiter = match self.edge.route_held(msg).await {
            Ok((w, unflushed)) => {
                self.nats_unflushed |= unflushed;
                w
            }
            Err(e) => {
                tracing::warn!(client_id = self.client_id, error = %e, "message not accepted");
                if qos == QoS::ExactlyOnce && self.state.qos2_in.remove(&pkid) {
                    self.store_inbound(pkid, false);
                }
                if self.version == Version::V311 && qos != QoS::AtMostOnce {
                    return Err(End::CoreLost);
                }
                self.refuse_publish(qos, pkid, Refuse::ServerBusy);
                return Ok(());
            }
        };
        self.ack_publish(qos, pkid, waiter);
        Ok(())
    }

    /// PUBREL: the client's QoS 2 exchange ends.
    pub(super) fn client_pubrel(&mut self, pkid: u16) {
        let known = self.state.qos2_in.remove(&pkid);
        if known {
            self.store_inbound(pkid, false);
        }
        let comp = if known || self.version == Version::V311 {
            PubComp::new(pkid, None)
        } else {
            PubComp {
                pkid,
                reason: PubCompReason::PacketIdentifierNotFound,
                properties: None,
            }
        };
        self.send_client(Packet::PubComp(comp));
    }

    /// One token from the client's publish-rate bucket (`[limits] max_publish_rate`).
    fn take_publish_token(&mut self) -> bool {
        let rate = self.edge.config.limits.max_publish_rate;
        if rate == 0 {
            return true;
        }
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.rate_at).as_secs_f64() * rate as f64;
        self.rate_tokens = (self.rate_tokens + refill).min(rate as f64);
        self.rate_at = now;
        if self.rate_tokens >= 1.0 {
            self.rate_tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

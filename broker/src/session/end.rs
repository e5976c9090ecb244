//! The end of a connection: the reason told to the client, the session kept or ended, the will
//! published or scheduled.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use super::{disconnect_code, End, Session};
use crate::codec::*;
use crate::durable::record::WillRecord;
use crate::message::Message;
use crate::registry::Timer;
use crate::transport::Io;
use crate::Edge;

impl Session {
    /// Tells the client why (MQTT 5), closes, keeps or ends the session, and returns the will
    /// and expiry timers for the registry to hold, and whether the client was sent a DISCONNECT
    /// it should get the time to read (see [`crate::conformance::linger`]; not at shutdown).
    pub(super) async fn finish(
        mut self,
        end: End,
        io: &mut Box<dyn Io>,
    ) -> (Option<JoinHandle<()>>, Option<JoinHandle<()>>, bool) {
        let reason = match &end {
            End::Violation(code, why) => Some((*code, Some(why.clone()))),
            End::KeepAlive => Some((DisconnectReasonCode::KeepAliveTimeout, None)),
            End::Kicked(code) => Some((disconnect_code(*code), None)),
            End::CoreLost => Some((
                DisconnectReasonCode::ServerBusy,
                Some("the broker core is unavailable".to_string()),
            )),
            End::Client { .. } | End::Gone => None,
        };
        // What is written below may promise state that must be on disk first.
        if self.barrier > self.edge.sessions.progress().done {
            let store = self.edge.sessions.clone();
            let wait = store.wait_done(self.barrier, store.progress().failures);
            let _ = Box::pin(wait).await;
        }
        let linger =
            reason.is_some() && self.version == Version::V5 && !matches!(end, End::Kicked(0x8B));
        if let (Some((code, why)), Version::V5) = (reason, self.version) {
            let d = Disconnect {
                reason_code: code,
                properties: why.map(|w| DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: Some(w),
                    user_properties: Vec::new(),
                    server_reference: None,
                }),
            };
            self.send_client(Packet::Disconnect(d));
        }
        if !self.client_out.is_empty() && !matches!(end, End::Gone) {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), io.write_all(&self.client_out)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), io.flush()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
        if let End::Client { will, expiry } = end {
            if !will {
                self.will = None;
            }
            if let Some(e) = expiry {
                // MQTT 5 §3.14.2.2.2: 0 → non-zero is a protocol error; ignore it then.
                if self.expiry != 0 || e == 0 {
                    self.expiry = e.min(self.edge.config.limits.max_session_expiry_secs);
                }
            }
        }
        // A 3.1.1 persistent session (and MQTT 5's 0xFFFFFFFF) never expires.
        let expiry = match (self.version, self.persistent) {
            (_, false) => 0,
            (Version::V311, true) => u32::MAX,
            (Version::V5, true) => self.expiry,
        };
        let edge = self.edge.clone();
        let client_id = self.client_id.clone();
        let will = self.will.take().map(|w| *w);
        let src = self.src;
        let internal = self.internal;
        let mut state = self.state;
        let state_key = state.key;
        if expiry == 0 {
            state.inbox.set_online(false);
            state.discard(&edge, internal);
        } else {
            state.inbox.set_online(false);
            state.expires_at = (expiry != u32::MAX)
                .then(|| SystemTime::now() + Duration::from_secs(expiry as u64));
            edge.sessions.mark(&state.inbox, true);
            // A delayed will waits with the session, on disk too.
            let due = will.as_ref().and_then(|w| {
                let d = will_delay(w, expiry);
                let at = SystemTime::now() + Duration::from_secs(d as u64);
                (d > 0).then(|| WillRecord::new(&will_publish(w.clone()), src, d, Some(at)))?
            });
            edge.sessions
                .put_session(&client_id, &state, expiry, false, due);
            edge.registry.store_offline(&client_id, state);
        }
        let key = state_key;
        let will_timer = will.and_then(|w| {
            let delay = will_delay(&w, expiry);
            let publish = will_publish(w);
            let edge = edge.clone();
            if delay == 0 {
                tokio::spawn(async move { publish_will(&edge, publish, src).await });
                None
            } else {
                let id = client_id.clone();
                Some(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(delay as u64)).await;
                    publish_will(&edge, publish, src).await;
                    edge.sessions.clear_will(&id, key);
                    edge.registry.timer_fired(&id, Timer::Will);
                }))
            }
        });
        let purge_timer = (expiry != 0 && expiry != u32::MAX)
            .then(|| edge.purge_timer(&client_id, Duration::from_secs(expiry as u64)));
        (will_timer, purge_timer, linger)
    }
}

/// The will delay interval, capped by the session expiry (MQTT 5 §3.1.3.2.2).
fn will_delay(w: &LastWill, expiry: u32) -> u32 {
    w.properties
        .as_ref()
        .and_then(|p| p.delay_interval)
        .unwrap_or(0)
        .min(expiry)
}

pub(super) fn will_publish(w: LastWill) -> Publish {
    let props = w.properties.map(|p| PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type,
    });
    Publish {
        dup: false,
        qos: w.qos,
        retain: w.retain,
        topic: w.topic,
        pkid: 0,
        payload: w.message,
        properties: props,
    }
}

pub(crate) async fn publish_will(edge: &Arc<Edge>, p: Publish, src: u64) {
    if p.retain {
        if let Err(e) = edge.retained.set(&p).await {
            tracing::warn!(error = %e, "retained will not stored");
        }
    }
    if let Err(e) = edge.route(Message::new(p, src)).await {
        tracing::warn!(error = %e, "will not published");
    }
}

//! Subscribe and unsubscribe: the session's filters in the edge's index, and the retained
//! messages a new subscription asks for.
//!
//! Each filter is checked (syntax, authorization, the reply namespace, `limits.max_subscriptions`)
//! and answered with its own reason code in SUBACK. A granted filter enters the index before
//! SUBACK goes out, so everything published after SUBACK reaches it; retained messages (from the
//! store, or the `$SYS` tree) follow SUBACK, ahead of anything queued since.

use std::time::SystemTime;

use super::state::{self, SubOpts};
use super::{End, Session};
use crate::codec::*;
use crate::inbox::Delivery;
use crate::message::Message;
use crate::topic;

impl Session {
    pub(super) async fn client_subscribe(&mut self, s: Subscribe) -> Result<(), End> {
        let filters = s.filters.iter().map(|f| f.path.as_str());
        if let Some((code, why)) =
            crate::conformance::filters_error(filters).filter(|_| !self.internal)
        {
            return Err(End::Violation(code, why));
        }
        let id = s.properties.as_ref().and_then(|p| p.id);
        if id == Some(0) {
            return Err(End::Violation(
                DisconnectReasonCode::ProtocolError,
                "subscription identifier 0".into(),
            ));
        }
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut granted: Vec<(Filter, bool)> = Vec::new();
        for f in &s.filters {
            let shared = topic::split_shared(&f.path).is_some();
            if shared && f.nolocal {
                return Err(End::Violation(
                    DisconnectReasonCode::ProtocolError,
                    "no-local on a shared subscription".into(),
                ));
            }
            let code = self.check_filter(f);
            if code == SubscribeReasonCode::Success(f.qos) {
                let opts = SubOpts::from_filter(f, id);
                let existed = self.state.subs.contains_key(&f.path);
                self.state
                    .index_insert(&self.edge, &f.path, &opts, self.src, self.internal);
                self.client.subscribed(&f.path, f.qos as u8);
                if self.state.subs.insert(f.path.clone(), opts).is_none() {
                    self.edge
                        .stats
                        .subscriptions
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                granted.push((f.clone(), existed));
            }
            codes.push(code);
        }
        self.store_subscriptions();
        // In a cluster, the subscriptions are active on every node before the SUBACK.
        self.edge.cluster_sync().await;
        self.send_client(Packet::SubAck(SubAck {
            pkid: s.pkid,
            return_codes: codes,
            properties: None,
        }));
        for (f, existed) in granted {
            self.send_retained(&f, existed, id);
        }
        Ok(())
    }

    /// The reason code for one filter of a SUBSCRIBE.
    fn check_filter(&self, f: &Filter) -> SubscribeReasonCode {
        let shared = topic::split_shared(&f.path).is_some();
        if topic::validate_filter(&f.path).is_err() {
            return SubscribeReasonCode::TopicFilterInvalid;
        }
        let inner = topic::match_filter(&f.path);
        if !self
            .edge
            .authorizer
            .can_subscribe(&self.identity, &self.client_id, inner)
        {
            return SubscribeReasonCode::NotAuthorized;
        }
        if !self.internal && crate::reserved_filter(inner) {
            return SubscribeReasonCode::NotAuthorized;
        }
        if f.path.starts_with('$') && !shared && !state::is_sys(&f.path) {
            return SubscribeReasonCode::TopicFilterInvalid;
        }
        if !self.state.subs.contains_key(&f.path)
            && self.state.subs.len() >= self.edge.config.limits.max_subscriptions
        {
            return SubscribeReasonCode::QuotaExceeded;
        }
        SubscribeReasonCode::Success(f.qos)
    }

    /// The retained messages (or `$SYS` values) a new subscription asks for.
    fn send_retained(&mut self, f: &Filter, existed: bool, id: Option<usize>) {
        if topic::split_shared(&f.path).is_some() {
            return; // MQTT 5 §4.8.2: no retained messages for shared subscriptions.
        }
        let send = match f.retain_forward_rule {
            RetainForwardRule::OnEverySubscribe => true,
            RetainForwardRule::OnNewSubscribe => !existed,
            RetainForwardRule::Never => false,
        };
        if !send {
            return;
        }
        if state::is_sys(&f.path) {
            let tree = self.edge.sys.borrow().clone();
            self.deliver_sys(&tree, Some(&f.path), true);
            return;
        }
        let now = SystemTime::now();
        let mut batch = Vec::new();
        for r in self.edge.retained.matching(&f.path) {
            let Some(m) = r.live(now) else { continue };
            let qos = qmin(m.qos, f.qos);
            let mut msg = Message::new(m, 0);
            msg.publish.retain = true;
            batch.push(Delivery {
                msg: std::sync::Arc::new(msg),
                qos,
                retain: true,
                ids: id.into_iter().collect(),
            });
        }
        self.send_first(batch);
    }

    pub(super) fn client_unsubscribe(&mut self, u: Unsubscribe) {
        let mut reasons = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            match self.state.subs.remove(f) {
                Some(_) => {
                    self.client.unsubscribed(f);
                    self.state.index_remove(&self.edge, f, self.internal);
                    self.edge
                        .stats
                        .subscriptions
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    reasons.push(UnsubAckReason::Success);
                }
                None => reasons.push(UnsubAckReason::NoSubscriptionExisted),
            }
        }
        self.store_subscriptions();
        self.send_client(Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            reasons,
            properties: None,
        }));
    }

    /// A resumed session: its subscriptions as the new credentials allow, back in the index.
    pub(super) fn resume_subscriptions(&mut self) {
        let paths: Vec<String> = self.state.subs.keys().cloned().collect();
        for path in paths {
            let inner = topic::match_filter(&path);
            let allowed = self.internal
                || self
                    .edge
                    .authorizer
                    .can_subscribe(&self.identity, &self.client_id, inner);
            if allowed {
                // Entries carry the session's options; the index keeps them while offline.
                if let Some(opts) = self.state.subs.get(&path).cloned() {
                    self.client.subscribed(&path, opts.qos as u8);
                    self.state
                        .index_insert(&self.edge, &path, &opts, self.src, self.internal);
                }
            } else {
                tracing::debug!(
                    client_id = self.client_id,
                    filter = path,
                    "subscription no longer allowed"
                );
                self.state.subs.remove(&path);
                self.state.index_remove(&self.edge, &path, self.internal);
                self.edge
                    .stats
                    .subscriptions
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

//! The echo's side of the chunk protocol (MQTT 5): a request body sent as chunks (`rtw-chunk`,
//! `rtw-last`) is collected — each chunk acknowledged with `rtw-ack` to the Response Topic — and
//! echoed back as reply chunks of the same sizes, at most [`WINDOW`] ahead of the bridge's
//! acknowledgements, which come on this echo's own topic (`echo-acks/{id}`, named as the
//! Response Topic of each reply chunk). An echo holds what it echoes: bodies over [`MAX`] are
//! answered with 413.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::watch;

const WINDOW: u64 = 4;
const MAX: usize = 64 << 20;

#[derive(Default)]
pub struct Streams {
    /// Request bodies being collected, by correlation data (`None`: over [`MAX`]).
    collecting: HashMap<Bytes, Option<Vec<Bytes>>>,
    /// Replies being sent: the bridge's acknowledgements (highest + 1; `u64::MAX`: abort).
    sending: HashMap<Bytes, watch::Sender<u64>>,
}

pub type Shared = Arc<Mutex<Streams>>;

pub fn prop<'a>(p: &'a PublishProperties, name: &str) -> Option<&'a str> {
    p.user_properties
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// An acknowledgement (or abort) from the bridge for a reply being sent.
pub fn acknowledged(s: &Shared, props: &PublishProperties) {
    let Some(corr) = &props.correlation_data else {
        return;
    };
    if let Some(w) = s.lock().unwrap().sending.get(corr) {
        let n = prop(props, "rtw-ack").and_then(|n| n.parse::<u64>().ok());
        let abort = prop(props, "rtw-abort").is_some();
        w.send_modify(|a| {
            *a = if abort {
                u64::MAX
            } else {
                (*a).max(n.unwrap_or(0) + 1)
            }
        });
    }
}

/// Takes one request chunk; acknowledges it; returns the whole body (`Err`: too big) on the last.
pub async fn take_chunk(
    s: &Shared,
    c: &AsyncClient,
    reply_to: &str,
    props: &PublishProperties,
    payload: Bytes,
) -> Option<Result<Vec<Bytes>, ()>> {
    let corr = props.correlation_data.clone()?;
    let n = prop(props, "rtw-chunk")?;
    let last = prop(props, "rtw-last") == Some("true");
    let done = {
        let mut g = s.lock().unwrap();
        let entry = g.collecting.entry(corr.clone()).or_insert(Some(Vec::new()));
        if let Some(v) = entry {
            if v.iter().map(Bytes::len).sum::<usize>() + payload.len() > MAX {
                *entry = None;
            } else {
                v.push(payload);
            }
        }
        if last || prop(props, "rtw-abort").is_some() {
            g.collecting.remove(&corr)
        } else {
            None
        }
    };
    let ack = PublishProperties {
        correlation_data: Some(corr),
        user_properties: vec![("rtw-ack".into(), n.to_string())],
        ..Default::default()
    };
    let _ = c
        .publish_with_properties(reply_to, QoS::AtLeastOnce, false, Bytes::new(), ack)
        .await;
    if prop(props, "rtw-abort").is_some() {
        return None;
    }
    done.map(|d| d.ok_or(()))
}

/// Sends `chunks` back as a streamed reply with `base` properties, paced by acknowledgements.
pub async fn send_back(
    s: &Shared,
    c: &AsyncClient,
    reply_to: &str,
    ack_topic: &str,
    base: PublishProperties,
    chunks: Vec<Bytes>,
) {
    let Some(corr) = base.correlation_data.clone() else {
        return;
    };
    let (tx, mut acks) = watch::channel(0u64);
    s.lock().unwrap().sending.insert(corr.clone(), tx);
    let count = chunks.len() as u64;
    for (n, data) in (0u64..).zip(chunks) {
        let ok = tokio::time::timeout(
            Duration::from_secs(60),
            acks.wait_for(|a| *a == u64::MAX || n < *a + WINDOW),
        )
        .await
        .map(|r| r.map(|a| *a));
        if !matches!(ok, Ok(Ok(a)) if a != u64::MAX) {
            break;
        }
        let mut props = base.clone();
        props.response_topic = Some(ack_topic.to_string());
        props
            .user_properties
            .push(("rtw-chunk".into(), n.to_string()));
        props
            .user_properties
            .push(("rtw-last".into(), (n + 1 == count).to_string()));
        if c.publish_with_properties(reply_to, QoS::AtLeastOnce, false, data, props)
            .await
            .is_err()
        {
            break;
        }
    }
    s.lock().unwrap().sending.remove(&corr);
}

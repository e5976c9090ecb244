//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, see `bench/fuzz.sh`), kept here so that
//! `tests/fuzz_corpus.rs` replays every corpus file through exactly the code the fuzzer ran.
//!
//! Each function takes arbitrary bytes and must neither panic nor hang; the assertions inside are
//! properties the edge relies on (what it decoded from a client it can encode again for the core
//! and for a client of either protocol).

use std::sync::OnceLock;

use bytes::BytesMut;

use crate::codec::{self, Packet, Version};

/// Largest packet the targets accept (the default `max_packet_size`).
const MAX: u32 = 1 << 20;

/// Target `mqtt_decode`: every packet in `data` as a client's stream in each protocol, with the
/// default size limit and a tiny one, and `peek_hello` on every prefix of the first packet.
pub fn mqtt_decode(data: &[u8]) {
    for version in [Version::V311, Version::V5] {
        for max in [MAX, 64] {
            let mut buf = BytesMut::from(data);
            // At most one packet per input byte: each decoded packet consumes at least two.
            for _ in 0..=data.len() {
                match codec::read(&mut buf, version, max) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
    for end in 0..=data.len().min(64) {
        let _ = codec::peek_hello(&data[..end], MAX);
        let _ = codec::connect_level(&data[..end]);
    }
    let _ = codec::peek_hello(data, MAX);
    let _ = codec::peek_hello(data, 16);
    let mut core = BytesMut::from(data);
    let _ = codec::read_v5(&mut core, MAX);
}

/// Target `mqtt_translate`: what a client sends, decoded in its protocol (3.1.1 packets lifted to
/// MQTT 5), is written again for the core (MQTT 5) and for clients of both protocols. The bytes
/// written for the core must decode again: the session forwards client packets that way.
pub fn mqtt_translate(data: &[u8]) {
    for version in [Version::V311, Version::V5] {
        let mut buf = BytesMut::from(data);
        for _ in 0..=data.len() {
            let p = match codec::read(&mut buf, version, MAX) {
                Ok(Some(p)) => p,
                Ok(None) | Err(_) => break,
            };
            for v in [Version::V311, Version::V5] {
                let mut out = BytesMut::new();
                if codec::write(&p, v, &mut out).is_ok() {
                    let _ = codec::size(&p, v);
                }
            }
            let forwarded = match &p {
                // What the session sends the core for these (the others stay at the edge).
                Packet::Publish(_)
                | Packet::PubAck(_)
                | Packet::PubRec(_)
                | Packet::PubRel(_)
                | Packet::PubComp(_)
                | Packet::Subscribe(_)
                | Packet::Unsubscribe(_) => true,
                _ => false,
            };
            let mut core = BytesMut::new();
            if forwarded && p.write(&mut core, None).is_ok() {
                let again = codec::read_v5(&mut core, u32::MAX);
                assert!(
                    matches!(again, Ok(Some(_))),
                    "{p:?} encoded for the core does not decode: {again:?}"
                );
            }
        }
    }
    // 3.1.1 on its own: decode, encode again, decode again.
    let mut buf = BytesMut::from(data);
    if let Ok(p) = rumqttc::mqttbytes::v4::Packet::read(&mut buf, MAX as usize) {
        let mut out = BytesMut::new();
        if p.write(&mut out, MAX as usize).is_ok() {
            let _ = rumqttc::mqttbytes::v4::Packet::read(&mut out, MAX as usize);
        }
    }
}

const JWT_SECRET: &str = "fuzz-secret";

fn jwt_security() -> &'static crate::security::Security {
    static S: OnceLock<crate::security::Security> = OnceLock::new();
    S.get_or_init(|| {
        let cfg = crate::security::AuthConfig {
            jwt_secret: Some(JWT_SECRET.to_string()),
            rules: vec![crate::security::Rule {
                user: "*".into(),
                publish: vec!["a/#".into()],
                subscribe: vec!["{sub}/#".into()],
                admin: false,
            }],
            ..Default::default()
        };
        crate::security::Security::new(cfg, false).expect("HS security")
    })
}

/// Target `jwt`: `data` as a bearer token, verified with an HS256 secret; and, when `data` is a
/// JSON object, the same object signed as claims (HS256 with the right secret) and verified, so
/// the claims handling after the signature check is reached too.
pub fn jwt(data: &[u8]) {
    let sec = jwt_security();
    let token = String::from_utf8_lossy(data);
    let _ = sec.authenticate_token(token.trim());
    if let Ok(claims @ serde_json::Value::Object(_)) = serde_json::from_slice(data) {
        let signed = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        );
        if let Ok(t) = signed {
            if let Ok(id) = sec.authenticate_token(&t) {
                use crate::auth::Authorizer;
                let _ = sec.can_publish(&id, "fuzz", "a/b");
                let _ = sec.can_subscribe(&id, "fuzz", "a/#");
            }
        }
    }
}

//! The body of the `http_topic` fuzz target in `fuzz/` (see `bench/fuzz.sh`), kept here so that
//! `tests/fuzz_corpus.rs` replays the corpus through exactly the code the fuzzer ran.

use axum::http::Uri;
use broker::codec::QoS;

/// Target `http_topic`: `data` as the path and query of a request to `/topics/…`, `/events` and
/// `/poll`: the path→topic mapping, `?qos=`, and the SSE/long-poll query parser.
///
/// Bytes that do not form a valid request target are also tried percent-encoded, so arbitrary
/// input reaches the percent-decoding and topic validation.
pub fn http_topic(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text.as_ref(), None),
    };
    let encoded: String =
        percent_encoding::percent_encode(path.as_bytes(), percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    for p in [path, encoded.as_str()] {
        let target = match query {
            Some(q) => format!("/topics/{p}?{q}"),
            None => format!("/topics/{p}"),
        };
        if let Ok(uri) = target.parse::<Uri>() {
            if let Ok(t) = crate::topics::topic_of(&uri, "/topics/") {
                assert!(broker::topic::validate_topic(&t).is_ok(), "{t:?}");
                assert!(!t.starts_with('$'), "{t:?}");
            }
        }
    }
    let q = crate::topics::WriteParams::of(query);
    let _ = crate::topics::qos_param(&q, QoS::AtLeastOnce);
    let _ = crate::stream::parse_query(query.map(str::to_string));
    let _ = crate::stream::parse_query(Some(text.into_owned()));
}

//! Cookies a request carries (`Cookie:` headers, `name=value` pairs separated by `;`): where the
//! bridge's token cookie and Mercure's `mercureAuthorization` are read from.

use axum::http::{header, HeaderMap};

/// The value of cookie `name`, if the request carries it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

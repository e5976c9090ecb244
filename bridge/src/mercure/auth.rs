//! Mercure authorization: which JWS a request presents, whether it verifies, what it grants.
//!
//! The token is read, in Mercure's order, from `Authorization: Bearer …`, else the
//! `authorization` query parameter, else the `mercureAuthorization` cookie. Publishers' tokens
//! are verified with `publisher_jwt_key`, subscribers' with `subscriber_jwt_key` (default: the
//! publisher's), both with `jwt_algorithm` (HS256 unless set). `exp` is optional (Mercure's own
//! tokens carry none); when present it is checked, and a subscriber's stream ends when it
//! passes. The grants are the `mercure` claim: `publish` and `subscribe` (topic selectors) and
//! `payload` (any JSON, shown in subscription events).

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::MercureSettings;
use crate::error::ApiError;

/// The cookie browsers present their token in.
pub const COOKIE: &str = "mercureAuthorization";

/// The verification keys.
pub struct Keys {
    alg: Algorithm,
    publisher: DecodingKey,
    subscriber: DecodingKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({:?})", self.alg)
    }
}

/// A key as configured: the HMAC secret itself, or a PEM key given inline or as a file path.
fn decoding_key(alg: Algorithm, key: &str) -> anyhow::Result<DecodingKey> {
    use jsonwebtoken::AlgorithmFamily as F;
    let family = alg.family();
    if family == F::Hmac {
        return Ok(DecodingKey::from_secret(key.as_bytes()));
    }
    let pem = if key.trim_start().starts_with("-----BEGIN") {
        key.as_bytes().to_vec()
    } else {
        std::fs::read(key)
            .map_err(|e| anyhow::anyhow!("cannot read the Mercure JWT key file {key}: {e}"))?
    };
    let k = match family {
        F::Rsa => DecodingKey::from_rsa_pem(&pem),
        F::Ec => DecodingKey::from_ec_pem(&pem),
        F::Ed => DecodingKey::from_ed_pem(&pem),
        F::Hmac => unreachable!("handled above"),
    };
    k.map_err(|e| anyhow::anyhow!("the Mercure JWT key is not a {alg:?} public key in PEM: {e}"))
}

impl Keys {
    /// The keys, or `None` when no publisher key is set (the hub is off).
    pub fn from_settings(s: &MercureSettings) -> anyhow::Result<Option<Keys>> {
        let Some(pubkey) = s.publisher_jwt_key.as_deref().filter(|k| !k.is_empty()) else {
            return Ok(None);
        };
        let alg_name = s.jwt_algorithm.as_deref().unwrap_or("HS256");
        let alg = Algorithm::from_str(alg_name).map_err(|_| {
            anyhow::anyhow!(
                "mercure.jwt_algorithm {alg_name:?} is not a JWS algorithm (HS256, RS256, ES256…)"
            )
        })?;
        let subkey = s
            .subscriber_jwt_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .unwrap_or(pubkey);
        Ok(Some(Keys {
            alg,
            publisher: decoding_key(alg, pubkey)?,
            subscriber: decoding_key(alg, subkey)?,
        }))
    }
}

/// The `mercure` claim.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct MercureClaim {
    #[serde(default)]
    pub publish: Option<Vec<String>>,
    #[serde(default)]
    pub subscribe: Option<Vec<String>>,
    #[serde(default)]
    pub payload: Option<Value>,
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    #[serde(default)]
    mercure: Option<MercureClaim>,
    #[serde(default)]
    exp: Option<u64>,
}

/// A verified token's grants.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub claim: MercureClaim,
    /// When the token expires, if it says.
    pub expires: Option<SystemTime>,
}

/// Where the token came from (a cookie-borne publish is checked against CORS origins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Header,
    Query,
    Cookie,
}

/// The token a request presents, by Mercure's precedence.
pub fn token(headers: &HeaderMap, uri: &Uri) -> Option<(String, Source)> {
    if let Some(a) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let t = a
            .strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("bearer "))
            .unwrap_or("");
        return Some((t.trim().to_string(), Source::Header));
    }
    if let Some(q) = uri.query() {
        if let Some((_, v)) =
            form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "authorization")
        {
            return Some((v.into_owned(), Source::Query));
        }
    }
    crate::cookies::cookie(headers, COOKIE)
        .map(|v| (v.trim_matches('"').to_string(), Source::Cookie))
}

/// 401 with a Bearer challenge.
pub fn unauthorized(why: &str) -> ApiError {
    let e = ApiError::new(StatusCode::UNAUTHORIZED, why);
    let v = format!(
        "Bearer realm=\"mercure\", error=\"invalid_token\", error_description=\"{}\"",
        why.replace(['"', '\r', '\n'], "'")
    );
    match HeaderValue::from_str(&v) {
        Ok(v) => e.with_header(header::WWW_AUTHENTICATE, v),
        Err(_) => e,
    }
}

/// Verifies `token` with the publisher's (`publisher`) or the subscriber's key.
pub fn verify(keys: &Keys, token: &str, publisher: bool) -> Result<Grants, ApiError> {
    let mut v = Validation::new(keys.alg);
    v.required_spec_claims.clear();
    v.validate_aud = false;
    v.validate_nbf = true;
    v.leeway = 5;
    let key = if publisher {
        &keys.publisher
    } else {
        &keys.subscriber
    };
    let d = jsonwebtoken::decode::<Claims>(token, key, &v)
        .map_err(|e| unauthorized(&format!("invalid Mercure token: {e}")))?;
    Ok(Grants {
        claim: d.claims.mercure.unwrap_or_default(),
        expires: d
            .claims
            .exp
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
    })
}

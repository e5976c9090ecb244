//! Authentication and authorization as configured in `[auth]`: JWT (jsonwebtoken), a password
//! file of argon2 hashes, and per-topic grants from token claims or static rules. One
//! [`Security`] value implements both of the edge's traits, and the HTTP bridge asks the same
//! one, so MQTT and HTTP clients get the same decisions.
//!
//! Tokens: HS256/384/512 with `jwt_secret`; RS*/PS*/ES*/EdDSA with `jwt_public_keys` (PEM files,
//! `"path"` or `"kid=path"`), each key accepting only its own algorithm family, so a token signed
//! HS256 with a public key as the secret is refused (and `alg: none` never parses). `exp` is
//! required; `nbf`, `iss` and `aud` are checked, with `leeway_secs`.
//!
//! Grants: the claim `{"rtw": {"pub": [filters], "sub": [filters], "admin": bool}}`, where a
//! filter may contain `{client_id}`, `{sub}` and `{username}` (the user name only when
//! `username_claim` binds it to the token; else it matches nothing); for password-file users and
//! anonymous clients, `[[auth.rules]]` entries (`user = "name" | "*" | "anonymous"`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{AuthFuture, Authenticator, Authorizer, Credentials, Grants, Identity, Refusal};
use crate::password::{Check, Passwords};
use crate::topic;
use crate::transport::Transport;

/// What a 3.1.1 client gets for a refused PUBLISH (it has no reason codes).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DenyAction {
    /// Acknowledge and drop the message (what Mosquitto does).
    #[default]
    Drop,
    /// Close the connection.
    Disconnect,
}

/// One `[[auth.rules]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A password-file user name, `*` for every authenticated client without token grants, or
    /// `anonymous`.
    pub user: String,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
    #[serde(default)]
    pub admin: bool,
}

/// `[auth]`; a key left out takes its value from [`AuthConfig::default`].
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Let clients without credentials in. Unset: only in loopback-only mode.
    pub allow_anonymous: Option<bool>,
    /// Shared secret for HS256/384/512 tokens.
    pub jwt_secret: Option<String>,
    /// Public keys (PEM files) for RS*/PS*/ES*/EdDSA tokens: `"path"` or `"kid=path"`.
    pub jwt_public_keys: Vec<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// When set, an MQTT username must equal this claim of the token (e.g. `sub`).
    pub username_claim: Option<String>,
    /// Mosquitto-style `user:argon2-hash` lines.
    pub password_file: Option<PathBuf>,
    /// Cookie carrying the token for EventSource, which cannot set headers.
    pub cookie_name: String,
    /// Accept `?access_token=` on HTTP (it ends up in access logs: off by default).
    pub allow_query_token: bool,
    /// 3.1.1 PUBLISH refused: `drop` or `disconnect`.
    pub deny_action: DenyAction,
    pub rules: Vec<Rule>,
    /// Threads verifying password-file hashes; the most checks at once, and the memory they
    /// take (this many times the hash's memory cost, 19 MiB for `realtime-web passwd`).
    pub password_workers: usize,
    /// Seconds a successful password check is remembered (0: never).
    pub password_cache_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: None,
            jwt_secret: None,
            jwt_public_keys: Vec::new(),
            issuer: None,
            audience: None,
            leeway_secs: 30,
            username_claim: None,
            password_file: None,
            cookie_name: "rtw_token".into(),
            allow_query_token: false,
            deny_action: DenyAction::Drop,
            rules: Vec::new(),
            password_workers: 2,
            password_cache_secs: 60,
        }
    }
}

// Secrets never reach logs, even through `{:?}`.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("allow_anonymous", &self.allow_anonymous)
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwt_public_keys", &self.jwt_public_keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("password_file", &self.password_file)
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

impl AuthConfig {
    /// Is any authenticator configured?
    pub fn configured(&self) -> bool {
        self.jwt_secret.as_deref().is_some_and(|s| !s.is_empty())
            || !self.jwt_public_keys.is_empty()
            || self.password_file.is_some()
    }
}

struct JwtKey {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The `[auth]` section made live.
pub struct Security {
    cfg: AuthConfig,
    keys: Vec<JwtKey>,
    passwords: RwLock<HashMap<String, String>>,
    /// Verifies password-file hashes: cached, throttled, on a bounded pool.
    checker: Passwords,
    /// Anonymous clients may connect.
    anonymous: bool,
    /// Loopback-only mode: no authenticator, anonymous access not explicitly allowed.
    local_only: bool,
}

/// Latest `exp` kept as an expiry time (9999-12-31T23:59:59Z).
const MAX_EXP: u64 = 253_402_300_799;

/// The claims realtime-web reads.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    rtw: Option<RtwClaim>,
    #[serde(flatten)]
    other: HashMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RtwClaim {
    #[serde(default, rename = "pub")]
    publish: Vec<String>,
    #[serde(default, rename = "sub")]
    subscribe: Vec<String>,
    #[serde(default)]
    admin: bool,
}

impl Security {
    /// Builds the live configuration; `local_only` is loopback-only mode (anonymous allowed).
    pub fn new(cfg: AuthConfig, local_only: bool) -> anyhow::Result<Security> {
        let mut keys = Vec::new();
        if let Some(secret) = cfg.jwt_secret.as_deref().filter(|s| !s.is_empty()) {
            keys.push(JwtKey {
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
                algorithms: AlgorithmFamily::Hmac.algorithms().to_vec(),
            });
        }
        for entry in &cfg.jwt_public_keys {
            let (kid, path) = match entry.split_once('=') {
                Some((k, p)) => (Some(k.trim().to_string()), p.trim()),
                None => (None, entry.trim()),
            };
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read JWT public key {path}"))?;
            let (key, family) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (k, AlgorithmFamily::Rsa)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (k, AlgorithmFamily::Ec)
            } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                (k, AlgorithmFamily::Ed)
            } else {
                anyhow::bail!("{path} is not an RSA, EC or Ed25519 public key in PEM");
            };
            keys.push(JwtKey {
                kid,
                key,
                algorithms: family.algorithms().to_vec(),
            });
        }
        let s = Security {
            anonymous: local_only || cfg.allow_anonymous.unwrap_or(!cfg.configured()),
            local_only,
            keys,
            passwords: RwLock::new(HashMap::new()),
            checker: Passwords::new(
                if cfg.password_file.is_some() {
                    cfg.password_workers.max(1)
                } else {
                    0
                },
                cfg.password_cache_secs,
            ),
            cfg,
        };
        s.reload_passwords()?;
        Ok(s)
    }

    pub fn config(&self) -> &AuthConfig {
        &self.cfg
    }

    /// Do anonymous clients get in?
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous
    }

    /// Loopback-only mode (no authentication configured, anonymous access not explicitly
    /// allowed): every listener is on loopback and anyone who can reach it gets in.
    pub fn local_only(&self) -> bool {
        self.local_only
    }

    /// Re-reads the password file (startup and SIGHUP).
    pub fn reload_passwords(&self) -> anyhow::Result<()> {
        let Some(path) = &self.cfg.password_file else {
            return Ok(());
        };
        let users = read_password_file(path)?;
        *self.passwords.write().unwrap_or_else(|e| e.into_inner()) = users;
        self.checker.clear_cache();
        Ok(())
    }

    /// Verifies a token: its claims, or why it was refused.
    fn verify(&self, token: &str) -> Result<Claims, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let candidates: Vec<&JwtKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&header.alg))
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => true,
                (None, _) => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(format!(
                "no key accepts {:?} tokens{}",
                header.alg,
                header
                    .kid
                    .as_ref()
                    .map(|k| format!(" with kid {k:?}"))
                    .unwrap_or_default()
            ));
        }
        let mut last = String::new();
        for k in candidates {
            let mut v = Validation::new(header.alg);
            v.algorithms = k.algorithms.clone();
            v.leeway = self.cfg.leeway_secs;
            v.validate_nbf = true;
            v.validate_aud = self.cfg.audience.is_some();
            if let Some(a) = &self.cfg.audience {
                v.set_audience(&[a]);
            }
            if let Some(i) = &self.cfg.issuer {
                v.set_issuer(&[i]);
            }
            // Configured `iss`/`aud` are required, not only checked when present.
            let mut required = vec!["exp"];
            required.extend(self.cfg.issuer.as_ref().map(|_| "iss"));
            required.extend(self.cfg.audience.as_ref().map(|_| "aud"));
            v.set_required_spec_claims(&required);
            match jsonwebtoken::decode::<Claims>(token, &k.key, &v) {
                Ok(d) => return Ok(d.claims),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("invalid token: {last}"))
    }

    /// The grants and admin flag the static rules give `user`.
    fn rules_for(&self, user: &str) -> (Grants, bool) {
        let mut g = Grants::default();
        let mut admin = false;
        for r in &self.cfg.rules {
            if r.user == user || (r.user == "*" && user != "anonymous") {
                g.publish.extend(r.publish.iter().cloned());
                g.subscribe.extend(r.subscribe.iter().cloned());
                admin |= r.admin;
            }
        }
        (g, admin)
    }

    fn identity_from_rules(&self, user: &str, subject: Option<String>) -> Identity {
        if self.cfg.rules.is_empty() {
            // No rules at all: authenticated means allowed (as Mosquitto without an ACL file).
            return Identity {
                subject,
                admin: true,
                ..Identity::default()
            };
        }
        let (g, admin) = self.rules_for(user);
        Identity {
            subject,
            admin,
            expires_at: None,
            grants: Some(Arc::new(g)),
        }
    }

    /// Authenticates an HTTP caller by bearer token, or by Basic user:password.
    pub fn authenticate_token(&self, token: &str) -> Result<Identity, Refusal> {
        let claims = self.verify(token).map_err(Refusal::BadCredentials)?;
        Ok(self.identity_from_claims(claims, "", None))
    }

    fn identity_from_claims(
        &self,
        claims: Claims,
        client_id: &str,
        username: Option<&str>,
    ) -> Identity {
        let subject = claims.sub.clone();
        // An `exp` past year 9999 is no practical limit: treated as none, since adding it to a
        // clock can overflow (a panic, found by fuzzing: fuzz/corpus/jwt/claims_exp_huge).
        let expires_at = claims
            .exp
            .filter(|&e| e <= MAX_EXP)
            .map(|e| UNIX_EPOCH + Duration::from_secs(e));
        let subst = |f: &String| {
            f.replace("{client_id}", client_id)
                .replace("{sub}", subject.as_deref().unwrap_or("\u{1}"))
                .replace("{username}", username.unwrap_or("\u{1}"))
        };
        match claims.rtw {
            Some(r) => Identity {
                subject: subject.clone(),
                admin: r.admin,
                expires_at,
                grants: Some(Arc::new(Grants {
                    publish: r.publish.iter().map(subst).collect(),
                    subscribe: r.subscribe.iter().map(subst).collect(),
                })),
            },
            None => {
                let mut id = self.identity_from_rules("*", subject.clone());
                id.expires_at = expires_at;
                id
            }
        }
    }
}

/// Reads `user:hash` lines (blank lines and `#` comments skipped).
pub fn read_password_file(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read password file {}", path.display()))?;
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (u, h) = line
            .split_once(':')
            .with_context(|| format!("{}:{}: expected user:hash", path.display(), n + 1))?;
        PasswordHash::new(h)
            .map_err(|e| anyhow::anyhow!("{}:{}: bad hash: {e}", path.display(), n + 1))?;
        // Every check of this hash takes its memory cost, on each password worker.
        let kib = crate::password::memory_kib(h)
            .with_context(|| format!("{}:{}: not an argon2 hash", path.display(), n + 1))?;
        anyhow::ensure!(
            kib <= crate::password::MAX_HASH_MEMORY_KIB,
            "{}:{}: the hash costs {kib} KiB of memory to check, over the maximum of {} KiB",
            path.display(),
            n + 1,
            crate::password::MAX_HASH_MEMORY_KIB
        );
        users.insert(u.to_string(), h.to_string());
    }
    Ok(users)
}

/// An argon2id hash of `password` in PHC string form.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
}

/// What a development token grants (`realtime-web token`).
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    pub subject: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub admin: bool,
    pub ttl: Duration,
}

/// Signs a development token with the configured HS secret (and issuer/audience, if set).
pub fn make_token(cfg: &AuthConfig, spec: &TokenSpec) -> anyhow::Result<String> {
    let secret = cfg
        .jwt_secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .context("no auth.jwt_secret configured (set RTW_AUTH__JWT_SECRET)")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = json!({
        "sub": spec.subject,
        "iat": now,
        "exp": now + spec.ttl.as_secs(),
        "rtw": { "pub": spec.publish, "sub": spec.subscribe, "admin": spec.admin },
    });
    if let Some(i) = &cfg.issuer {
        claims["iss"] = json!(i);
    }
    if let Some(a) = &cfg.audience {
        claims["aud"] = json!(a);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| anyhow::anyhow!("cannot sign token: {e}"))
}

/// Does grant filter `g` cover every topic filter `f` can match?
pub fn covers(g: &str, f: &str) -> bool {
    if f.starts_with('$') && g.starts_with(['+', '#']) {
        return false;
    }
    let mut fl = f.split('/');
    for gl in g.split('/') {
        match (gl, fl.next()) {
            ("#", _) => return true,
            (_, None) => return false,
            ("+", Some("#")) => return false,
            ("+", Some(_)) => {}
            (lit, Some(x)) => {
                if lit != x {
                    return false;
                }
            }
        }
    }
    fl.next().is_none()
}

impl Authenticator for Security {
    fn authenticate(&self, c: &Credentials<'_>) -> Result<Identity, Refusal> {
        let Some(password) = c.password.filter(|p| !p.is_empty()) else {
            if self.anonymous {
                return Ok(self.identity_from_rules("anonymous", None));
            }
            return Err(Refusal::NotAuthorized("credentials required".into()));
        };
        if let Some((user, hash)) = self.password_user(c) {
            let check = self
                .checker
                .check_blocking(user, &hash, password, c.peer.ip());
            return self.password_outcome(user, check);
        }
        self.authenticate_token_or_anonymous(c, password)
    }

    fn authenticate_async<'a>(&'a self, c: &'a Credentials<'a>) -> AuthFuture<'a> {
        Box::pin(async move {
            let password = c.password.filter(|p| !p.is_empty());
            if let (Some(password), Some((user, hash))) = (password, self.password_user(c)) {
                let check = self.checker.check(user, &hash, password, c.peer.ip()).await;
                return self.password_outcome(user, check);
            }
            self.authenticate(c)
        })
    }

    fn configured(&self) -> bool {
        self.cfg.configured()
    }
}

impl Security {
    /// The password-file user `c` names, with its hash.
    fn password_user<'a>(&self, c: &Credentials<'a>) -> Option<(&'a str, String)> {
        let user = c.username?;
        let hash = self
            .passwords
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .cloned()?;
        Some((user, hash))
    }

    fn password_outcome(&self, user: &str, check: Check) -> Result<Identity, Refusal> {
        match check {
            Check::Ok => Ok(self.identity_from_rules(user, Some(user.to_string()))),
            Check::Wrong => Err(Refusal::BadCredentials("bad user name or password".into())),
            Check::Throttled(d) => Err(Refusal::Throttled(format!(
                "too many failed logins from this address or for this user; retry in {} s",
                d.as_secs().max(1)
            ))),
            Check::Busy => Err(Refusal::Busy(
                "too many password checks at once; retry later".into(),
            )),
        }
    }

    /// Counters of the password checks.
    pub fn password_stats(&self) -> &crate::password::PasswordStats {
        &self.checker.stats
    }

    fn authenticate_token_or_anonymous(
        &self,
        c: &Credentials<'_>,
        password: &str,
    ) -> Result<Identity, Refusal> {
        if self.keys.is_empty() {
            if !self.cfg.configured() && self.anonymous {
                return Ok(self.identity_from_rules("anonymous", None));
            }
            return Err(Refusal::BadCredentials("bad user name or password".into()));
        }
        let claims = self.verify(password).map_err(Refusal::BadCredentials)?;
        // The user name a grant's `{username}` may stand for: only one the token vouches for
        // (`username_claim`), else a client could pick any and reach another user's topics.
        let mut verified = None;
        if let Some(claim) = &self.cfg.username_claim {
            let want = claims
                .other
                .get(claim)
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| (claim == "sub").then(|| claims.sub.clone()).flatten());
            // An HTTP bearer token comes without a user name: nothing to compare.
            let http_bearer = c.transport == Transport::Http && c.username.is_none();
            if !http_bearer && c.username != want.as_deref() {
                return Err(Refusal::NotAuthorized(format!(
                    "user name must equal the token's {claim}"
                )));
            }
            verified = want;
        }
        Ok(self.identity_from_claims(claims, c.client_id, verified.as_deref()))
    }
}

impl Authorizer for Security {
    fn can_publish(&self, who: &Identity, _client_id: &str, t: &str) -> bool {
        if t.starts_with(crate::REPLY_PREFIX) {
            return true; // replies to the bridge: guarded by 128-bit correlation ids
        }
        match &who.grants {
            None => true,
            Some(g) => g.publish.iter().any(|f| topic::matches(f, t)),
        }
    }

    fn can_subscribe(&self, who: &Identity, _client_id: &str, filter: &str) -> bool {
        if filter.starts_with("$SYS") {
            return who.admin;
        }
        match &who.grants {
            None => true,
            Some(g) => g.subscribe.iter().any(|gf| covers(gf, filter)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage() {
        assert!(covers("a/#", "a/b/+"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(covers("#", "x/y"));
        assert!(!covers("#", "$SYS/x"));
        assert!(!covers("a/+", "a/b/c"));
        assert!(covers("a/+/c", "a/+/c"));
    }
}

//! Password checks that an attacker cannot turn into a denial of service.
//!
//! An argon2 verification costs what its hash says (the default `realtime-web passwd` hash:
//! argon2id, 19 MiB, 2 passes, 1 lane: about 20 ms of one core and 19 MiB of memory). Run for
//! every CONNECT on whatever thread happens to be there, a burst of wrong passwords took
//! gigabytes and stalled every client. So a check goes through, in order:
//!
//! 1. **The cache of recent successes** (`auth.password_cache_secs`, at most [`MAX_ENTRIES`]
//!    users): keyed by the user and a keyed BLAKE2b digest of the password, and valid only for
//!    the hash it was verified against, so a wrong password never matches it and a changed
//!    password file invalidates it. A hit skips everything below (a reconnecting client is not
//!    held up by someone else's failures).
//! 2. **Throttling of repeated failures**, per address (IPv6 by /64) and per user, in bounded
//!    maps: past [`IP_FREE`] failures from an address, or [`USER_FREE`] for a user, each new
//!    failure blocks further checks for 1 s, then 2, 4… up to [`MAX_BACKOFF`]; attempts in that
//!    window are refused at once, without hashing ([`Check::Throttled`]). A success clears the
//!    user's count; counts are forgotten after [`FORGET`] without failures.
//! 3. **A bounded number of checks in flight per address** ([`MAX_PENDING_PER_IP`]).
//! 4. **A small pool of dedicated threads** (`auth.password_workers`), each owning one argon2
//!    memory buffer that it reuses: memory for checks is `workers × the largest hash's memory
//!    cost`, whatever the load, and the async workers never hash. Jobs wait in a queue of
//!    [`QUEUE`]; when it is full, or no worker answers within [`WAIT`], the attempt is refused
//!    as busy ([`Check::Busy`]). A job whose caller gave up is skipped, not hashed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{Output, PasswordHash};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use blake2::{Blake2b512, Digest};
use tokio::sync::oneshot;

/// Users in the success cache, and entries in each failure map.
pub const MAX_ENTRIES: usize = 10_000;
/// Failures from one address before it is slowed down.
pub const IP_FREE: u32 = 10;
/// Failures for one user before it is slowed down.
pub const USER_FREE: u32 = 5;
/// The longest a throttled address or user waits.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Failure counts older than this are forgotten.
pub const FORGET: Duration = Duration::from_secs(15 * 60);
/// Checks queued for the pool at once.
pub const QUEUE: usize = 64;
/// Checks queued or running for one address at once.
pub const MAX_PENDING_PER_IP: u32 = 4;
/// How long an attempt waits for a worker.
pub const WAIT: Duration = Duration::from_secs(10);
/// Hashes costing more memory than this are refused when the password file is read (each
/// worker would hold that much).
pub const MAX_HASH_MEMORY_KIB: u32 = 256 * 1024;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Ok,
    Wrong,
    /// Refused without checking; retry after this long.
    Throttled(Duration),
    /// No worker was free in time.
    Busy,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct PasswordStats {
    /// Checks handed to the workers (or run in place by [`Passwords::check_blocking`]).
    pub hashed: AtomicU64,
    pub cache_hits: AtomicU64,
    pub failures: AtomicU64,
    pub throttled: AtomicU64,
    pub busy: AtomicU64,
}

struct Job {
    phc: String,
    password: String,
    reply: oneshot::Sender<bool>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    until: Instant,
}

struct CacheEntry {
    digest: [u8; 64],
    phc: String,
    expires: Instant,
}

#[derive(Default)]
struct State {
    by_ip: HashMap<IpAddr, Failures>,
    by_user: HashMap<String, Failures>,
    pending: HashMap<IpAddr, u32>,
    cache: HashMap<String, CacheEntry>,
}

/// The password checker (one per [`crate::security::Security`]).
pub struct Passwords {
    jobs: Option<SyncSender<Job>>,
    state: Mutex<State>,
    cache_ttl: Duration,
    key: [u8; 32],
    pub stats: PasswordStats,
}

/// The address a failure counts against: IPv4 as is, IPv6 by its /64 (one host's share).
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// Drops what is expired; if still full, the entry `older` ranks oldest.
fn make_room<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    expired: impl Fn(&V) -> bool,
    age: impl Fn(&V) -> Instant,
) {
    if map.len() < MAX_ENTRIES {
        return;
    }
    map.retain(|_, v| !expired(v));
    if map.len() >= MAX_ENTRIES {
        if let Some(k) = map
            .iter()
            .min_by_key(|(_, v)| age(v))
            .map(|(k, _)| k.clone())
        {
            map.remove(&k);
        }
    }
}

fn blocked(f: Option<&Failures>, free: u32, now: Instant) -> Option<Duration> {
    let f = f?;
    (f.count >= free && now < f.until && now.duration_since(f.last) < FORGET).then(|| f.until - now)
}

fn fail(map_entry: Option<&mut Failures>, free: u32, now: Instant) -> Failures {
    let mut f = match map_entry {
        Some(f) if now.duration_since(f.last) < FORGET => *f,
        _ => Failures {
            count: 0,
            last: now,
            until: now,
        },
    };
    f.count = f.count.saturating_add(1);
    f.last = now;
    if f.count >= free {
        let doublings = (f.count - free).min(16);
        let backoff = Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF);
        f.until = now + backoff;
    }
    f
}

impl Passwords {
    /// A checker with `workers` hashing threads (none when 0: for setups without a password
    /// file) and successes cached for `cache_secs` (0: no cache).
    pub fn new(workers: usize, cache_secs: u64) -> Passwords {
        let jobs = (workers > 0).then(|| {
            let (tx, rx) = sync_channel::<Job>(QUEUE);
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..workers {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("rtw-passwd-{i}"))
                    .spawn(move || worker(&rx));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start a password worker");
                }
            }
            tx
        });
        Passwords {
            jobs,
            state: Mutex::new(State::default()),
            cache_ttl: Duration::from_secs(cache_secs),
            key: rand::random(),
            stats: PasswordStats::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets cached successes (the password file was reloaded).
    pub fn clear_cache(&self) {
        self.state().cache.clear();
    }

    fn digest(&self, user: &str, password: &str) -> [u8; 64] {
        let d = Blake2b512::new()
            .chain_update(self.key)
            .chain_update((user.len() as u64).to_be_bytes())
            .chain_update(user.as_bytes())
            .chain_update(password.as_bytes())
            .finalize();
        let mut out = [0u8; 64];
        out.copy_from_slice(&d);
        out
    }

    /// Steps 1–3: a decision without hashing, or a slot for a check by the pool.
    fn before(
        &self,
        user: &str,
        phc: &str,
        digest: &[u8; 64],
        ip: IpAddr,
    ) -> Result<Pending<'_>, Check> {
        let now = Instant::now();
        let ip = ip_key(ip);
        let mut st = self.state();
        if let Some(c) = st.cache.get(user) {
            let same = c
                .digest
                .iter()
                .zip(digest)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            if same && c.phc == phc && now < c.expires {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Err(Check::Ok);
            }
        }
        let wait = blocked(st.by_ip.get(&ip), IP_FREE, now)
            .into_iter()
            .chain(blocked(st.by_user.get(user), USER_FREE, now))
            .max();
        if let Some(w) = wait {
            self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(Check::Throttled(w));
        }
        let pending = st.pending.entry(ip).or_insert(0);
        if *pending >= MAX_PENDING_PER_IP {
            self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(Check::Throttled(Duration::from_secs(1)));
        }
        *pending += 1;
        Ok(Pending { owner: self, ip })
    }

    /// Records the pool's answer.
    fn after(&self, user: &str, phc: &str, digest: [u8; 64], ip: IpAddr, ok: bool) -> Check {
        let now = Instant::now();
        let ip = ip_key(ip);
        let mut st = self.state();
        if ok {
            st.by_user.remove(user);
            if !self.cache_ttl.is_zero() {
                make_room(&mut st.cache, |c| c.expires <= now, |c| c.expires);
                st.cache.insert(
                    user.to_string(),
                    CacheEntry {
                        digest,
                        phc: phc.to_string(),
                        expires: now + self.cache_ttl,
                    },
                );
            }
            return Check::Ok;
        }
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let stale = |f: &Failures| now.duration_since(f.last) >= FORGET;
        make_room(&mut st.by_ip, stale, |f| f.last);
        let f = fail(st.by_ip.get_mut(&ip), IP_FREE, now);
        st.by_ip.insert(ip, f);
        make_room(&mut st.by_user, stale, |f| f.last);
        let f = fail(st.by_user.get_mut(user), USER_FREE, now);
        st.by_user.insert(user.to_string(), f);
        Check::Wrong
    }

    fn submit(&self, phc: &str, password: &str) -> Result<oneshot::Receiver<bool>, Check> {
        let Some(jobs) = &self.jobs else {
            return Err(Check::Busy);
        };
        let (reply, rx) = oneshot::channel();
        let job = Job {
            phc: phc.to_string(),
            password: password.to_string(),
            reply,
        };
        match jobs.try_send(job) {
            Ok(()) => {
                self.stats.hashed.fetch_add(1, Ordering::Relaxed);
                Ok(rx)
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                Err(Check::Busy)
            }
        }
    }

    /// Checks `password` for `user`, whose hash is `phc`, from `ip`, without blocking.
    pub async fn check(&self, user: &str, phc: &str, password: &str, ip: IpAddr) -> Check {
        let digest = self.digest(user, password);
        let _slot = match self.before(user, phc, &digest, ip) {
            Ok(slot) => slot,
            Err(decided) => return decided,
        };
        let rx = match self.submit(phc, password) {
            Ok(rx) => rx,
            Err(c) => return c,
        };
        match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(ok)) => self.after(user, phc, digest, ip, ok),
            _ => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                Check::Busy
            }
        }
    }

    /// The same, blocking the calling thread (never call it on an async worker).
    pub fn check_blocking(&self, user: &str, phc: &str, password: &str, ip: IpAddr) -> Check {
        let digest = self.digest(user, password);
        let _slot = match self.before(user, phc, &digest, ip) {
            Ok(slot) => slot,
            Err(decided) => return decided,
        };
        let mut blocks = Vec::new();
        self.stats.hashed.fetch_add(1, Ordering::Relaxed);
        let ok = verify(&mut blocks, phc, password.as_bytes());
        self.after(user, phc, digest, ip, ok)
    }
}

/// A check in flight for an address; counted down when dropped.
struct Pending<'a> {
    owner: &'a Passwords,
    ip: IpAddr,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut st = self.owner.state();
        if let Some(n) = st.pending.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.pending.remove(&self.ip);
            }
        }
    }
}

fn worker(jobs: &Mutex<Receiver<Job>>) {
    // This worker's argon2 memory, grown to the largest hash it has checked and reused.
    let mut blocks: Vec<Block> = Vec::new();
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        if job.reply.is_closed() {
            continue; // the caller gave up (timed out or went away): nothing to hash for
        }
        let ok = verify(&mut blocks, &job.phc, job.password.as_bytes());
        let _ = job.reply.send(ok);
    }
}

/// The memory an argon2 PHC hash costs to verify, in KiB (`None` if it is not argon2).
pub fn memory_kib(phc: &str) -> Option<u32> {
    let h = PasswordHash::new(phc).ok()?;
    Algorithm::try_from(h.algorithm).ok()?;
    Params::try_from(&h).ok().map(|p| p.m_cost())
}

/// Verifies `password` against an argon2 PHC string, in `blocks` (grown as needed).
pub fn verify(blocks: &mut Vec<Block>, phc: &str, password: &[u8]) -> bool {
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(alg), Ok(params)) = (Algorithm::try_from(h.algorithm), Params::try_from(&h)) else {
        return false;
    };
    let version = match h.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(expected), Some(salt)) = (h.hash, h.salt) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let n = params.block_count();
    if blocks.len() < n {
        blocks.reserve_exact(n - blocks.len());
        blocks.resize(n, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let hashed = Argon2::new(alg, version, params).hash_password_into_with_memory(
        password,
        salt,
        &mut out,
        &mut blocks[..n],
    );
    hashed.is_ok() && Output::new(&out).is_ok_and(|o| o == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};

    fn hash(pw: &str, m: u32) -> String {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let params = Params::new(m, 1, 1, None).unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(pw.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn reused_memory_verifies_like_fresh_memory() {
        let a = hash("alpha", 64);
        let b = hash("beta", 32);
        let mut blocks = Vec::new();
        assert!(verify(&mut blocks, &a, b"alpha"));
        assert!(!verify(&mut blocks, &a, b"beta"));
        assert!(verify(&mut blocks, &b, b"beta"));
        assert!(verify(&mut blocks, &a, b"alpha"));
        assert_eq!(blocks.len(), 64);
        assert_eq!(memory_kib(&a), Some(64));
    }

    #[test]
    fn failures_throttle_and_success_is_cached_for_the_right_password_only() {
        let p = Passwords::new(0, 60);
        let h = hash("right", 8);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(p.check_blocking("u", &h, "right", ip), Check::Ok);
        for _ in 0..USER_FREE {
            assert_eq!(p.check_blocking("u", &h, "wrong", ip), Check::Wrong);
        }
        assert!(matches!(
            p.check_blocking("u", &h, "wrong", ip),
            Check::Throttled(_)
        ));
        // The cached right password still gets in; another user from elsewhere is not held up.
        assert_eq!(p.check_blocking("u", &h, "right", ip), Check::Ok);
        let other: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(p.check_blocking("v", &h, "right", other), Check::Ok);
    }

    #[test]
    fn ipv6_counts_by_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        let m: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(m), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}

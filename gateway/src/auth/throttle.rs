//! Failed authentications, throttled per client address and per access key id from that
//! address.
//!
//! Each address (an IPv6 client by its /64) has a token bucket of `per_minute` tokens that
//! refills at `per_minute` a minute, and so has each access key id tried from it. A failed
//! authentication takes a token from both; while either bucket of a request is empty, its
//! credentials are not even checked and it gets `SlowDown` with the time until the request
//! would pass. A throttled request takes no token, so the lock lifts at most `60 / per_minute`
//! seconds after the failures stop. A key is never locked for every address: access key ids are
//! not secret (presigned URLs show them), and a key-wide lock would let anyone lock its owner
//! out for as long as they keep failing with it. Guessing a 40-character secret at
//! `per_minute` tries a minute per address is hopeless anyway.
//!
//! The buckets live in a bounded cache: a flood of invented key ids or addresses evicts old
//! buckets (which only ever makes the throttle more lenient), never grows memory; key ids
//! longer than [`MAX_KEY_ID`] are refused before they get here.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Failed authentications allowed per minute (`[quotas.failed_auth]`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureLimits {
    /// Per client address, and per access key id.
    pub per_minute: f64,
}

impl Default for FailureLimits {
    fn default() -> Self {
        FailureLimits { per_minute: 20.0 }
    }
}

/// Buckets kept at most (addresses and key ids together).
const MAX_TRACKED: u64 = 100_000;
/// The longest access key id accepted (ours are 20 characters; AWS's at most 128).
pub const MAX_KEY_ID: usize = 128;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A bucket's name: an address block, or a key id (by its hash) from one. Checked on every
/// signed request, so it is built without allocating; the words come only with a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Name {
    block: IpAddr,
    key: Option<u64>,
}

pub struct Failures {
    limits: FailureLimits,
    buckets: moka::sync::Cache<Name, Arc<Mutex<Bucket>>>,
    /// When the last failure was recorded, in seconds since `epoch`: with none in the last
    /// minute every bucket is full again, and `check` needs no lookup (the common case).
    last_failure: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

impl Failures {
    pub fn new(limits: FailureLimits) -> Self {
        // An empty bucket is full again after a minute, so an entry idle that long can go.
        let idle = Duration::from_secs(60);
        Failures {
            limits,
            buckets: moka::sync::Cache::builder().max_capacity(MAX_TRACKED).time_to_idle(idle).build(),
            last_failure: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn names(ip: IpAddr, key: Option<&str>) -> impl Iterator<Item = Name> {
        use std::hash::BuildHasher as _;
        let block = crate::client::accountable(ip);
        // A fixed-key SipHash: the same id gives the same bucket for the life of the process.
        let hasher = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        let hashed = key.map(|k| hasher.hash_one(k));
        std::iter::once(Name { block, key: None }).chain(hashed.map(|k| Name { block, key: Some(k) }))
    }

    /// The words of a bucket's name, for a refusal.
    fn describe(name: Name, key: Option<&str>) -> String {
        match (name.key, key) {
            (Some(_), Some(k)) => format!("access key id {k} from {}", name.block),
            _ => format!("address {}", name.block),
        }
    }

    fn refilled(&self, b: &mut Bucket, now: Instant) {
        let rate = self.limits.per_minute / 60.0;
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(self.limits.per_minute.max(1.0));
        b.last = now;
    }

    /// `Err((what, seconds))` while `ip` (or `key` from it) may not try again: the longest
    /// wait of its empty buckets.
    pub fn check(&self, ip: IpAddr, key: Option<&str>) -> Result<(), (String, u64)> {
        let now = Instant::now();
        let last = self.last_failure.load(std::sync::atomic::Ordering::Relaxed);
        if last == 0 || now.duration_since(self.epoch).as_secs() > last + 61 {
            return Ok(());
        }
        let mut refusal: Option<(String, u64)> = None;
        for name in Self::names(ip, key) {
            let Some(bucket) = self.buckets.get(&name) else { continue };
            let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
            self.refilled(&mut b, now);
            if b.tokens < 1.0 {
                let wait = ((1.0 - b.tokens) / (self.limits.per_minute / 60.0)).ceil().max(1.0) as u64;
                if refusal.as_ref().is_none_or(|(_, w)| wait > *w) {
                    refusal = Some((Self::describe(name, key), wait));
                }
            }
        }
        refusal.map_or(Ok(()), Err)
    }

    /// Counts one failed authentication of `ip` (claiming `key`, if it named one).
    pub fn record(&self, ip: IpAddr, key: Option<&str>) {
        let now = Instant::now();
        // + 1: 0 means "never".
        let at = now.duration_since(self.epoch).as_secs() + 1;
        self.last_failure.store(at, std::sync::atomic::Ordering::Relaxed);
        let full = self.limits.per_minute.max(1.0);
        for name in Self::names(ip, key) {
            let bucket = self.buckets.get_with(name, || Arc::new(Mutex::new(Bucket { tokens: full, last: now })));
            let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
            self.refilled(&mut b, now);
            b.tokens = (b.tokens - 1.0).max(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lock_the_address_and_the_key_then_expire() {
        let f = Failures::new(FailureLimits { per_minute: 3.0 });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(f.check(a, Some("K")).is_ok());
            f.record(a, Some("K"));
        }
        let (what, wait) = f.check(a, None).unwrap_err();
        assert!(what.contains("10.0.0.1") && (1..=20).contains(&wait), "{what} {wait}");
        assert!(f.check(a, Some("other")).is_err(), "the address is locked for every key");
        // Another address is free, with the key that was guessed at too: its owner gets in.
        assert!(f.check(b, None).is_ok());
        assert!(f.check(b, Some("K")).is_ok());
    }

    #[test]
    fn one_address_failing_with_many_keys_and_one_key_from_many_addresses() {
        let f = Failures::new(FailureLimits { per_minute: 2.0 });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        // The key's bucket from this address empties with the address's; from elsewhere the key
        // is free.
        f.record(a, Some("K"));
        f.record(a, Some("K"));
        assert!(f.check(a, Some("K")).is_err());
        assert!(f.check("10.0.0.2".parse().unwrap(), Some("K")).is_ok());
        // Addresses of one IPv6 /64 share a bucket.
        let (v1, v2): (IpAddr, IpAddr) = ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap());
        f.record(v1, None);
        f.record(v1, None);
        assert!(f.check(v2, None).is_err());
    }

    #[test]
    fn tokens_come_back_at_the_configured_rate() {
        let f = Failures::new(FailureLimits { per_minute: 600.0 });
        let ip: IpAddr = "::1".parse().unwrap();
        for _ in 0..600 {
            f.record(ip, None);
        }
        assert!(f.check(ip, None).is_err());
        std::thread::sleep(Duration::from_millis(150));
        assert!(f.check(ip, None).is_ok(), "10 tokens a second");
    }
}

//! Failed authentications, throttled per client address and per access key id.
//!
//! Each address and each key id has a token bucket of `per_minute` tokens that refills at
//! `per_minute` a minute. A failed authentication takes a token; while either bucket of a
//! request is empty, its credentials are not even checked and it gets `SlowDown` with the time
//! until a token is back. A throttled request takes no token, so the lock lifts at most
//! `60 / per_minute` seconds after the failures stop: the owner of a key someone else guesses
//! at is locked out no longer than that.
//!
//! The buckets live in a bounded cache: a flood of invented key ids or addresses evicts old
//! buckets (which only ever makes the throttle more lenient), never grows memory.

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

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct Failures {
    limits: FailureLimits,
    buckets: moka::sync::Cache<String, Arc<Mutex<Bucket>>>,
}

impl Failures {
    pub fn new(limits: FailureLimits) -> Self {
        // An empty bucket is full again after a minute, so an entry idle that long can go.
        let idle = Duration::from_secs(60);
        Failures { limits, buckets: moka::sync::Cache::builder().max_capacity(MAX_TRACKED).time_to_idle(idle).build() }
    }

    fn names(ip: IpAddr, key: Option<&str>) -> impl Iterator<Item = String> {
        std::iter::once(format!("address {ip}")).chain(key.map(|k| format!("access key id {k}")))
    }

    fn refilled(&self, b: &mut Bucket, now: Instant) {
        let rate = self.limits.per_minute / 60.0;
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(self.limits.per_minute.max(1.0));
        b.last = now;
    }

    /// `Err((what, seconds))` while `ip` or `key` may not try again.
    pub fn check(&self, ip: IpAddr, key: Option<&str>) -> Result<(), (String, u64)> {
        let now = Instant::now();
        for name in Self::names(ip, key) {
            let Some(bucket) = self.buckets.get(&name) else { continue };
            let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
            self.refilled(&mut b, now);
            if b.tokens < 1.0 {
                let wait = (1.0 - b.tokens) / (self.limits.per_minute / 60.0);
                return Err((name, wait.ceil().max(1.0) as u64));
            }
        }
        Ok(())
    }

    /// Counts one failed authentication of `ip` (claiming `key`, if it named one).
    pub fn record(&self, ip: IpAddr, key: Option<&str>) {
        let now = Instant::now();
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
        // Another address is free, but not with the key that was guessed at.
        assert!(f.check(b, None).is_ok());
        assert!(f.check(b, Some("K")).unwrap_err().0.contains("access key id K"));
        assert!(f.check(b, Some("other")).is_ok());
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

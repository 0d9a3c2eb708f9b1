//! Quotas: a token bucket for the request rate and a daily byte budget, per anonymous client
//! address, per key, and shared by the members of a group.
//!
//! A request is admitted only if every bucket that applies to it has a token and no daily
//! budget is spent; only then are tokens taken, so a refused request costs nothing. A refusal
//! says how long until the request would pass (`Retry-After`).
//!
//! Daily counters (bytes, compute time) are written to the key database with usage (see
//! [`Quotas::take_pending`]) and read back at start ([`Quotas::restore`]), so a restart never
//! hands out a second daily budget. Rate buckets live in a bounded cache: a flood of client
//! addresses evicts idle buckets (an evicted bucket comes back full), never grows memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::throttle::FailureLimits;
use super::Principal;
use crate::dates::{seconds_to_midnight, unix_now};

/// The limits of one entity. Absent fields are unlimited.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub requests_per_second: Option<f64>,
    /// Requests allowed at once after a pause (default: one second's worth, at least 1).
    pub burst: Option<f64>,
    pub bytes_per_day: Option<u64>,
    /// Enforced by the operations API.
    pub compute_seconds_per_day: Option<f64>,
    /// Enforced by the operations API.
    pub concurrent_jobs: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Each anonymous client address.
    pub anonymous: Option<Limits>,
    /// Each key without an entry of its own in `key`.
    pub default_key: Option<Limits>,
    /// Shared by all keys of a group.
    #[serde(default)]
    pub group: BTreeMap<String, Limits>,
    /// One key, by access key id.
    #[serde(default)]
    pub key: BTreeMap<String, Limits>,
    /// Failed authentications per client address and per access key id.
    #[serde(default)]
    pub failed_auth: FailureLimits,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Which quota ran out, in words for the error message, and the seconds until the request
/// would pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub what: String,
    pub retry_after: u64,
}

/// Rate buckets kept at most.
const MAX_BUCKETS: u64 = 100_000;
/// How long a waiting computation is told to wait for a running one to end.
const JOB_RETRY_SECONDS: u64 = 10;

/// The daily counters of one entity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Daily {
    pub bytes: u64,
    pub compute_ms: u64,
}

#[derive(Default)]
struct Days {
    day: String,
    /// Today's counters per entity.
    today: HashMap<String, Daily>,
    /// What was added since the last [`Quotas::take_pending`], by (entity, day).
    pending: HashMap<(String, String), Daily>,
    /// Computations running per entity.
    running: HashMap<String, u32>,
}

impl Limits {
    /// Why these limits cannot work, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if let Some(r) = self.requests_per_second {
            if !(r.is_finite() && r > 0.0) {
                return Err(format!("requests_per_second must be a positive number, not {r}"));
            }
        }
        if let Some(b) = self.burst {
            if !(b.is_finite() && b >= 1.0) {
                return Err(format!("burst must be at least 1, not {b}"));
            }
        }
        if let Some(c) = self.compute_seconds_per_day {
            if !(c.is_finite() && c >= 0.0) {
                return Err(format!("compute_seconds_per_day must be a number of seconds, not {c}"));
            }
        }
        Ok(())
    }
}

impl QuotaConfig {
    /// Checks every table; the error names the table.
    pub fn check(&self) -> Result<(), String> {
        let tables = self
            .anonymous
            .iter()
            .map(|l| ("[quotas.anonymous]".to_string(), l))
            .chain(self.default_key.iter().map(|l| ("[quotas.default_key]".to_string(), l)))
            .chain(self.group.iter().map(|(g, l)| (format!("[quotas.group.{g}]"), l)))
            .chain(self.key.iter().map(|(k, l)| (format!("[quotas.key.{k}]"), l)));
        for (name, limits) in tables {
            limits.check().map_err(|e| format!("{name}: {e}"))?;
        }
        let p = self.failed_auth.per_minute;
        if !(p.is_finite() && p >= 1.0) {
            return Err(format!("[quotas.failed_auth] per_minute must be at least 1, not {p}"));
        }
        Ok(())
    }
}

impl Days {
    /// Moves on to `day` if it is later (days are `YYYY-MM-DD`, so they sort as text); an
    /// earlier day, from a request that began before midnight, never clears today's counters.
    fn roll(&mut self, day: &str) {
        if day > self.day.as_str() {
            self.day = day.to_string();
            self.today.clear();
        }
    }

    fn add(&mut self, entity: &str, day: &str, delta: Daily) {
        self.roll(day);
        if day == self.day {
            let t = self.today.entry(entity.to_string()).or_default();
            t.bytes += delta.bytes;
            t.compute_ms += delta.compute_ms;
        }
        let p = self.pending.entry((entity.to_string(), day.to_string())).or_default();
        p.bytes += delta.bytes;
        p.compute_ms += delta.compute_ms;
    }
}

pub struct Quotas {
    config: QuotaConfig,
    buckets: moka::sync::Cache<String, Arc<Mutex<Bucket>>>,
    days: Mutex<Days>,
}

impl Quotas {
    pub fn new(config: QuotaConfig) -> Self {
        Quotas {
            config,
            buckets: moka::sync::Cache::builder()
                .max_capacity(MAX_BUCKETS)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
            days: Mutex::new(Days::default()),
        }
    }

    pub fn config(&self) -> &QuotaConfig {
        &self.config
    }

    fn days(&self) -> std::sync::MutexGuard<'_, Days> {
        self.days.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rate buckets held now (for tests of the bound).
    pub fn tracked_buckets(&self) -> u64 {
        self.buckets.run_pending_tasks();
        self.buckets.entry_count()
    }

    /// The entities a principal's requests count against, with their limits, each once and in
    /// the order of their names (which is also the order their buckets are locked in).
    fn entities<'a>(&'a self, who: &Principal) -> Vec<(String, &'a Limits)> {
        let mut out: Vec<(String, &Limits)> = match who {
            Principal::Anonymous { ip } => {
                let block = crate::client::accountable(*ip);
                self.config.anonymous.iter().map(|l| (format!("anonymous client {block}"), l)).collect()
            }
            Principal::Key(k) => {
                let own = self.config.key.get(&k.access_key).or(self.config.default_key.as_ref());
                let mut out: Vec<_> = own.into_iter().map(|l| (format!("key {}", k.access_key), l)).collect();
                for g in &k.groups {
                    if let Some(l) = self.config.group.get(g) {
                        out.push((format!("group {g}"), l));
                    }
                }
                out
            }
        };
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Sets today's counters from what an earlier process recorded (`(entity, counters)`).
    pub fn restore(&self, day: &str, rows: Vec<(String, Daily)>) {
        let mut days = self.days();
        days.roll(day);
        for (entity, d) in rows {
            let t = days.today.entry(entity).or_default();
            t.bytes += d.bytes;
            t.compute_ms += d.compute_ms;
        }
    }

    /// Sets today's counters to what every replica wrote to the shared database (`rows`), plus
    /// what this one has not written yet.
    pub fn replace_today(&self, day: &str, rows: Vec<(String, Daily)>) {
        let mut days = self.days();
        days.roll(day);
        let mut today: HashMap<String, Daily> = rows.into_iter().collect();
        for ((entity, d), n) in &days.pending {
            if d == day {
                let t = today.entry(entity.clone()).or_default();
                t.bytes += n.bytes;
                t.compute_ms += n.compute_ms;
            }
        }
        days.today = today;
    }

    /// The daily counters added since the last call, by (entity, day), for the database.
    pub fn take_pending(&self) -> Vec<(String, String, Daily)> {
        self.days().pending.drain().map(|((e, d), n)| (e, d, n)).collect()
    }

    /// Puts back counters that could not be written.
    pub fn put_back(&self, rows: Vec<(String, String, Daily)>) {
        let mut days = self.days();
        for (e, d, n) in rows {
            let p = days.pending.entry((e, d)).or_default();
            p.bytes += n.bytes;
            p.compute_ms += n.compute_ms;
        }
    }

    /// Refuses a request of `who` on `day` whose daily byte budget is spent.
    pub fn check_daily(&self, who: &Principal, day: &str) -> Result<(), Exceeded> {
        self.check_daily_of(&self.entities(who), day)
    }

    fn check_daily_of(&self, entities: &[(String, &Limits)], day: &str) -> Result<(), Exceeded> {
        let mut days = self.days();
        days.roll(day);
        for (name, limits) in entities {
            if let Some(max) = limits.bytes_per_day {
                if days.today.get(name).map_or(0, |d| d.bytes) >= max {
                    return Err(Exceeded {
                        what: format!("bytes per day of {name} ({max} bytes)"),
                        retry_after: seconds_to_midnight(unix_now()),
                    });
                }
            }
        }
        Ok(())
    }

    /// The rate buckets `who` draws on: `(entity, requests per second, burst)`, sorted by
    /// entity.
    pub fn rated(&self, who: &Principal) -> Vec<(String, f64, f64)> {
        self.entities(who)
            .into_iter()
            .filter_map(|(name, l)| l.requests_per_second.map(|r| (name, r, l.burst.unwrap_or(r.max(1.0)))))
            .collect()
    }

    /// Admits one request on `day` (`YYYY-MM-DD`), or says which quota is spent and for how
    /// long.
    pub fn admit(&self, who: &Principal, day: &str) -> Result<(), Exceeded> {
        let entities = self.entities(who);
        if entities.is_empty() {
            return Ok(());
        }
        self.check_daily_of(&entities, day)?;
        let now = Instant::now();
        let rated: Vec<(&String, f64, f64)> = entities
            .iter()
            .filter_map(|(name, l)| l.requests_per_second.map(|r| (name, r, l.burst.unwrap_or(r.max(1.0)))))
            .collect();
        let buckets: Vec<_> = rated
            .iter()
            .map(|(name, _, burst)| {
                self.buckets.get_with((*name).clone(), || Arc::new(Mutex::new(Bucket { tokens: *burst, last: now })))
            })
            .collect();
        // Locked in the order of their names (`entities` sorts and deduplicates them), the same
        // for every request, so two requests never wait on each other's locks.
        let mut locked: Vec<_> = buckets.iter().map(|b| b.lock().unwrap_or_else(|p| p.into_inner())).collect();
        // The longest wait of every empty bucket: the request passes only when all have a token.
        let mut refusal: Option<Exceeded> = None;
        for (b, (name, rate, burst)) in locked.iter_mut().zip(&rated) {
            b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(*burst);
            b.last = now;
            if b.tokens < 1.0 {
                let wait = ((1.0 - b.tokens) / rate).ceil().clamp(1.0, u32::MAX as f64) as u64;
                if refusal.as_ref().is_none_or(|r| wait > r.retry_after) {
                    refusal = Some(Exceeded {
                        what: format!("requests per second of {name} ({rate}/s, burst {burst})"),
                        retry_after: wait,
                    });
                }
            }
        }
        if let Some(r) = refusal {
            return Err(r);
        }
        for b in locked.iter_mut() {
            b.tokens -= 1.0;
        }
        Ok(())
    }

    /// Starts one computation on `day`, or says which compute quota is spent (compute-seconds
    /// per day, concurrent jobs). Every `Ok` must be paired with [`Quotas::end_compute`].
    pub fn begin_compute(&self, who: &Principal, day: &str) -> Result<(), Exceeded> {
        let entities = self.entities(who);
        let mut days = self.days();
        days.roll(day);
        for (name, l) in &entities {
            if let Some(max) = l.compute_seconds_per_day {
                if days.today.get(name).map_or(0, |d| d.compute_ms) as f64 >= max * 1000.0 {
                    return Err(Exceeded {
                        what: format!("compute-seconds per day of {name} ({max} s)"),
                        retry_after: seconds_to_midnight(unix_now()),
                    });
                }
            }
            if let Some(max) = l.concurrent_jobs {
                if days.running.get(name).copied().unwrap_or(0) >= max {
                    return Err(Exceeded {
                        what: format!("concurrent jobs of {name} ({max})"),
                        retry_after: JOB_RETRY_SECONDS,
                    });
                }
            }
        }
        for (name, _) in entities {
            *days.running.entry(name).or_insert(0) += 1;
        }
        Ok(())
    }

    /// Ends a computation begun with [`Quotas::begin_compute`], charging its time.
    pub fn end_compute(&self, who: &Principal, day: &str, ms: u64) {
        let entities = self.entities(who);
        let mut days = self.days();
        for (name, l) in entities {
            if l.compute_seconds_per_day.is_some() {
                days.add(&name, day, Daily { bytes: 0, compute_ms: ms });
            }
            if let Some(n) = days.running.get_mut(&name) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Counts bytes served toward the daily budgets.
    pub fn add_bytes(&self, who: &Principal, day: &str, n: u64) {
        let entities = self.entities(who);
        if entities.iter().all(|(_, l)| l.bytes_per_day.is_none()) {
            return;
        }
        let mut days = self.days();
        for (name, l) in entities {
            if l.bytes_per_day.is_some() {
                days.add(&name, day, Daily { bytes: n, compute_ms: 0 });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::store::KeyRecord;
    use std::sync::Arc;

    fn key(id: &str, groups: &[&str]) -> Principal {
        Principal::Key(Arc::new(KeyRecord {
            access_key: id.into(),
            secret: "s".into(),
            name: "n".into(),
            owner: "o".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            created: 0,
            expires: None,
            revoked: None,
        }))
    }

    fn limits(rate: f64, burst: f64) -> Limits {
        Limits { requests_per_second: Some(rate), burst: Some(burst), ..Default::default() }
    }

    #[test]
    fn a_burst_admits_exactly_its_size() {
        let q = Quotas::new(QuotaConfig { default_key: Some(limits(0.001, 5.0)), ..Default::default() });
        let k = key("A", &[]);
        let admitted = (0..20).filter(|_| q.admit(&k, "d").is_ok()).count();
        assert_eq!(admitted, 5);
        let err = q.admit(&k, "d").unwrap_err();
        assert!(err.what.contains("requests per second of key A"), "{}", err.what);
        assert!((990..=1000).contains(&err.retry_after), "one token comes back in 1000 s: {}", err.retry_after);
        // Another key has its own bucket.
        assert!(q.admit(&key("B", &[]), "d").is_ok());
    }

    #[test]
    fn groups_share_a_bucket_and_refusals_cost_nothing() {
        let mut config = QuotaConfig { default_key: Some(limits(0.001, 2.0)), ..Default::default() };
        config.group.insert("class".into(), limits(0.001, 3.0));
        let q = Quotas::new(config);
        let (a, b) = (key("A", &["class"]), key("B", &["class"]));
        assert!(q.admit(&a, "d").is_ok() && q.admit(&a, "d").is_ok());
        assert!(q.admit(&a, "d").is_err(), "A's own bucket is empty");
        assert!(q.admit(&b, "d").is_ok(), "the group still had a token, A's refusal took none");
        assert!(q.admit(&b, "d").unwrap_err().what.contains("group class"));
    }

    #[test]
    fn compute_seconds_and_concurrent_jobs() {
        let l = Limits { compute_seconds_per_day: Some(1.0), concurrent_jobs: Some(1), ..Default::default() };
        let q = Quotas::new(QuotaConfig { default_key: Some(l), ..Default::default() });
        let a = key("A", &[]);
        assert!(q.begin_compute(&a, "d").is_ok());
        assert!(q.begin_compute(&a, "d").unwrap_err().what.contains("concurrent jobs of key A"));
        q.end_compute(&a, "d", 400);
        assert!(q.begin_compute(&a, "d").is_ok());
        q.end_compute(&a, "d", 700);
        assert!(q.begin_compute(&a, "d").unwrap_err().what.contains("compute-seconds per day"));
        assert!(q.begin_compute(&a, "d2").is_ok(), "a new day starts a new budget");
    }

    #[test]
    fn daily_bytes_and_anonymous_ips() {
        let anon = Limits { bytes_per_day: Some(100), ..Default::default() };
        let q = Quotas::new(QuotaConfig { anonymous: Some(anon), ..Default::default() });
        let ip1 = Principal::Anonymous { ip: "10.0.0.1".parse().unwrap() };
        let ip2 = Principal::Anonymous { ip: "10.0.0.2".parse().unwrap() };
        assert!(q.admit(&ip1, "d1").is_ok());
        q.add_bytes(&ip1, "d1", 100);
        assert!(q.admit(&ip1, "d1").unwrap_err().what.contains("bytes per day"));
        assert!(q.admit(&ip2, "d1").is_ok());
        assert!(q.admit(&ip1, "d2").is_ok(), "a new day starts a new budget");
    }

    #[test]
    fn daily_counters_are_handed_out_for_storage_and_restored() {
        let anon = Limits { bytes_per_day: Some(100), ..Default::default() };
        let q = Quotas::new(QuotaConfig { anonymous: Some(anon.clone()), ..Default::default() });
        let ip = Principal::Anonymous { ip: "10.0.0.1".parse().unwrap() };
        q.add_bytes(&ip, "d1", 60);
        q.add_bytes(&ip, "d1", 50);
        let pending = q.take_pending();
        assert_eq!(
            pending,
            vec![("anonymous client 10.0.0.1".to_string(), "d1".to_string(), Daily { bytes: 110, compute_ms: 0 })]
        );
        assert!(q.take_pending().is_empty());

        // A new process, told what the old one recorded today, keeps the budget spent.
        let fresh = Quotas::new(QuotaConfig { anonymous: Some(anon), ..Default::default() });
        fresh.restore("d1", vec![(pending[0].0.clone(), pending[0].2)]);
        let e = fresh.admit(&ip, "d1").unwrap_err();
        assert!(e.what.contains("bytes per day") && (1..=86_400).contains(&e.retry_after), "{e:?}");
        assert!(fresh.admit(&ip, "d2").is_ok());
    }

    #[test]
    fn keys_in_the_same_groups_listed_in_other_orders_never_deadlock() {
        let mut config = QuotaConfig::default();
        for g in ["x", "y", "z"] {
            config.group.insert(g.into(), limits(1e9, 1e9));
        }
        let q = std::sync::Arc::new(Quotas::new(config));
        let keys = [key("A", &["x", "y", "z"]), key("B", &["z", "y", "x"]), key("C", &["y", "y", "x"])];
        let threads: Vec<_> = keys
            .into_iter()
            .map(|k| {
                let q = q.clone();
                std::thread::spawn(move || (0..20_000).all(|_| q.admit(&k, "d").is_ok()))
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
    }

    #[test]
    fn the_wait_is_the_longest_of_the_empty_buckets() {
        let mut config = QuotaConfig { default_key: Some(limits(1.0, 1.0)), ..Default::default() };
        config.group.insert("slow".into(), limits(0.1, 1.0));
        let q = Quotas::new(config);
        let k = key("A", &["slow"]);
        assert!(q.admit(&k, "d").is_ok());
        let e = q.admit(&k, "d").unwrap_err();
        assert_eq!(e.retry_after, 10, "{e:?}");
        assert!(e.what.contains("group slow"));
    }

    #[test]
    fn a_late_request_of_yesterday_does_not_reset_today() {
        let anon = Limits { bytes_per_day: Some(100), ..Default::default() };
        let q = Quotas::new(QuotaConfig { anonymous: Some(anon), ..Default::default() });
        let ip = Principal::Anonymous { ip: "10.0.0.1".parse().unwrap() };
        q.add_bytes(&ip, "2026-12-02", 100);
        q.add_bytes(&ip, "2026-12-01", 5);
        assert!(q.admit(&ip, "2026-12-02").is_err(), "today's budget is still spent");
        assert_eq!(q.take_pending().len(), 2, "both days are written");
    }

    #[test]
    fn impossible_limits_are_refused() {
        for bad in [
            Limits { requests_per_second: Some(0.0), ..Default::default() },
            Limits { burst: Some(0.5), ..Default::default() },
            Limits { requests_per_second: Some(f64::NAN), ..Default::default() },
        ] {
            let c = QuotaConfig { anonymous: Some(bad), ..Default::default() };
            assert!(c.check().unwrap_err().contains("[quotas.anonymous]"));
        }
        let mut c = QuotaConfig::default();
        c.failed_auth.per_minute = f64::INFINITY;
        assert!(c.check().is_err());
    }

    #[test]
    fn rate_buckets_are_bounded() {
        let anon = Limits { requests_per_second: Some(1.0), ..Default::default() };
        let q = Quotas::new(QuotaConfig { anonymous: Some(anon), ..Default::default() });
        for i in 0..(MAX_BUCKETS + 5_000) {
            let ip = std::net::Ipv6Addr::from((i as u128) << 64); // one /64 each
            assert!(q.admit(&Principal::Anonymous { ip: ip.into() }, "d").is_ok());
        }
        assert!(q.tracked_buckets() <= MAX_BUCKETS + MAX_BUCKETS / 10, "{}", q.tracked_buckets());
    }
}

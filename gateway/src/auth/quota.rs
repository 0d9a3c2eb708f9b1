//! Quotas: a token bucket for the request rate and a daily byte budget, per anonymous client
//! IP, per key, and shared by the members of a group.
//!
//! A request is admitted only if every bucket that applies to it has a token and no daily
//! budget is spent; only then are tokens taken, so a refused request costs nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;

use super::Principal;

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
    /// Each anonymous client IP.
    pub anonymous: Option<Limits>,
    /// Each key without an entry of its own in `key`.
    pub default_key: Option<Limits>,
    /// Shared by all keys of a group.
    #[serde(default)]
    pub group: BTreeMap<String, Limits>,
    /// One key, by access key id.
    #[serde(default)]
    pub key: BTreeMap<String, Limits>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Which quota ran out, in words for the error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded(pub String);

pub struct Quotas {
    config: QuotaConfig,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// (day, bytes served today per entity).
    bytes: Mutex<(String, HashMap<String, u64>)>,
    /// (day, compute milliseconds used today per entity) and computations running per entity.
    compute: Mutex<(String, HashMap<String, u64>, HashMap<String, u32>)>,
}

impl Quotas {
    pub fn new(config: QuotaConfig) -> Self {
        Quotas {
            config,
            buckets: Mutex::new(HashMap::new()),
            bytes: Mutex::new((String::new(), HashMap::new())),
            compute: Mutex::new((String::new(), HashMap::new(), HashMap::new())),
        }
    }

    /// The entities a principal's requests count against, with their limits.
    fn entities<'a>(&'a self, who: &Principal) -> Vec<(String, &'a Limits)> {
        match who {
            Principal::Anonymous { ip } => {
                self.config.anonymous.iter().map(|l| (format!("anonymous client {ip}"), l)).collect()
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
        }
    }

    /// Admits one request on `day` (`YYYY-MM-DD`), or says which quota is spent.
    pub fn admit(&self, who: &Principal, day: &str) -> Result<(), Exceeded> {
        let entities = self.entities(who);
        if entities.is_empty() {
            return Ok(());
        }
        {
            let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
            if bytes.0 != day {
                *bytes = (day.to_string(), HashMap::new());
            }
            for (name, limits) in &entities {
                if let Some(max) = limits.bytes_per_day {
                    if bytes.1.get(name).copied().unwrap_or(0) >= max {
                        return Err(Exceeded(format!("bytes per day of {name} ({max} bytes)")));
                    }
                }
            }
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let rated: Vec<(&String, f64, f64)> = entities
            .iter()
            .filter_map(|(name, l)| l.requests_per_second.map(|r| (name, r, l.burst.unwrap_or(r.max(1.0)))))
            .collect();
        for (name, rate, burst) in &rated {
            let b = buckets.entry((*name).clone()).or_insert(Bucket { tokens: *burst, last: now });
            b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(*burst);
            b.last = now;
            if b.tokens < 1.0 {
                return Err(Exceeded(format!("requests per second of {name} ({rate}/s, burst {burst})")));
            }
        }
        for (name, _, _) in &rated {
            if let Some(b) = buckets.get_mut(*name) {
                b.tokens -= 1.0;
            }
        }
        Ok(())
    }

    /// Starts one computation on `day`, or says which compute quota is spent (compute-seconds
    /// per day, concurrent jobs). Every `Ok` must be paired with [`Quotas::end_compute`].
    pub fn begin_compute(&self, who: &Principal, day: &str) -> Result<(), Exceeded> {
        let entities = self.entities(who);
        let mut c = self.compute.lock().unwrap_or_else(|p| p.into_inner());
        if c.0 != day {
            c.0 = day.to_string();
            c.1.clear();
        }
        for (name, l) in &entities {
            if let Some(max) = l.compute_seconds_per_day {
                if c.1.get(name).copied().unwrap_or(0) as f64 >= max * 1000.0 {
                    return Err(Exceeded(format!("compute-seconds per day of {name} ({max} s)")));
                }
            }
            if let Some(max) = l.concurrent_jobs {
                if c.2.get(name).copied().unwrap_or(0) >= max {
                    return Err(Exceeded(format!("concurrent jobs of {name} ({max})")));
                }
            }
        }
        for (name, _) in entities {
            *c.2.entry(name).or_insert(0) += 1;
        }
        Ok(())
    }

    /// Ends a computation begun with [`Quotas::begin_compute`], charging its time.
    pub fn end_compute(&self, who: &Principal, day: &str, ms: u64) {
        let mut c = self.compute.lock().unwrap_or_else(|p| p.into_inner());
        if c.0 != day {
            c.0 = day.to_string();
            c.1.clear();
        }
        for (name, _) in self.entities(who) {
            *c.1.entry(name.clone()).or_insert(0) += ms;
            if let Some(n) = c.2.get_mut(&name) {
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
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        if bytes.0 != day {
            *bytes = (day.to_string(), HashMap::new());
        }
        for (name, l) in entities {
            if l.bytes_per_day.is_some() {
                *bytes.1.entry(name).or_insert(0) += n;
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
        assert!(err.0.contains("requests per second of key A"), "{}", err.0);
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
        assert!(q.admit(&b, "d").unwrap_err().0.contains("group class"));
    }

    #[test]
    fn compute_seconds_and_concurrent_jobs() {
        let l = Limits { compute_seconds_per_day: Some(1.0), concurrent_jobs: Some(1), ..Default::default() };
        let q = Quotas::new(QuotaConfig { default_key: Some(l), ..Default::default() });
        let a = key("A", &[]);
        assert!(q.begin_compute(&a, "d").is_ok());
        assert!(q.begin_compute(&a, "d").unwrap_err().0.contains("concurrent jobs of key A"));
        q.end_compute(&a, "d", 400);
        assert!(q.begin_compute(&a, "d").is_ok());
        q.end_compute(&a, "d", 700);
        assert!(q.begin_compute(&a, "d").unwrap_err().0.contains("compute-seconds per day"));
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
        assert!(q.admit(&ip1, "d1").unwrap_err().0.contains("bytes per day"));
        assert!(q.admit(&ip2, "d1").is_ok());
        assert!(q.admit(&ip1, "d2").is_ok(), "a new day starts a new budget");
    }
}

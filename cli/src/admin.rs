//! `zarrgate keys …` and `zarrgate usage`: the key and usage database, also while a gateway
//! runs on it (it re-reads keys every quarter second).

use std::path::Path;

use anyhow::{bail, Context as _};
use zarrgate_gateway::auth::sigv4;
use zarrgate_gateway::auth::store::{KeyRecord, Store};
use zarrgate_gateway::dates::{minute_of, unix_now};

/// `30d`, `12h`, `90m`, `3600s`, or a date `YYYY-MM-DD` (midnight UTC), as Unix seconds.
pub fn parse_expiry(text: &str, now: i64) -> anyhow::Result<i64> {
    let unit = |suffix: char, seconds: i64| -> Option<i64> {
        text.strip_suffix(suffix).and_then(|n| n.parse::<i64>().ok()).map(|n| now + n * seconds)
    };
    if let Some(t) = unit('d', 86_400).or_else(|| unit('h', 3600)).or_else(|| unit('m', 60)).or_else(|| unit('s', 1)) {
        return Ok(t);
    }
    let compact = format!("{}T000000Z", text.replace('-', ""));
    sigv4::parse_amz_date(&compact)
        .with_context(|| format!("--expires {text:?} is not a duration (30d, 12h, 90m, 3600s) or a date (YYYY-MM-DD)"))
}

fn iso(t: Option<i64>) -> String {
    t.map(minute_of).unwrap_or_else(|| "-".into())
}

fn status(k: &KeyRecord, now: i64) -> &'static str {
    k.refusal(now).unwrap_or("active")
}

fn describe(k: &KeyRecord, now: i64) -> serde_json::Value {
    serde_json::json!({
        "access_key": k.access_key, "name": k.name, "owner": k.owner, "groups": k.groups,
        "created": k.created, "expires": k.expires, "revoked": k.revoked, "status": status(k, now),
    })
}

pub fn create(
    db: &Path,
    name: &str,
    owner: &str,
    groups: &[String],
    expires: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    if !owner.contains('@') {
        bail!("--owner must be an email address");
    }
    let now = unix_now();
    let expires = expires.map(|e| parse_expiry(e, now)).transpose()?;
    if expires.is_some_and(|e| e <= now) {
        bail!("--expires is in the past");
    }
    let mut store = Store::open(db)?;
    let k = store.create(name, owner, groups, expires, now)?;
    if json {
        let mut doc = describe(&k, now);
        doc["secret"] = serde_json::Value::from(k.secret.clone());
        println!("{doc}");
    } else {
        println!("access key: {}\nsecret:     {}\n(the secret is shown only now; it works as SigV4 credentials and as `Authorization: Bearer {}:SECRET`)", k.access_key, k.secret, k.access_key);
    }
    Ok(())
}

pub fn list(db: &Path, json: bool) -> anyhow::Result<()> {
    let mut store = Store::open(db)?;
    let now = unix_now();
    let keys = store.list()?;
    if json {
        println!("{}", serde_json::Value::Array(keys.iter().map(|k| describe(k, now)).collect()));
        return Ok(());
    }
    println!(
        "{:<20}  {:<8}  {:<16}  {:<24}  {:<16}  {:<16}  groups",
        "access key", "status", "name", "owner", "created", "expires"
    );
    for k in keys {
        println!(
            "{:<20}  {:<8}  {:<16}  {:<24}  {:<16}  {:<16}  {}",
            k.access_key,
            status(&k, now),
            k.name,
            k.owner,
            iso(Some(k.created)),
            iso(k.expires),
            k.groups.join(",")
        );
    }
    Ok(())
}

pub fn show(db: &Path, id: &str) -> anyhow::Result<()> {
    let mut store = Store::open(db)?;
    let Some(k) = store.get(id)? else { bail!("no key {id}") };
    println!("{}", serde_json::to_string_pretty(&describe(&k, unix_now()))?);
    Ok(())
}

pub fn revoke(db: &Path, id: &str) -> anyhow::Result<()> {
    let mut store = Store::open(db)?;
    if !store.revoke(id, unix_now())? {
        bail!("no key {id}");
    }
    println!("revoked {id} (a running gateway refuses it within a second)");
    Ok(())
}

pub fn usage(db: &Path, key: Option<&str>, since: Option<&str>, format: &str) -> anyhow::Result<()> {
    if let Some(s) = since {
        if sigv4::parse_amz_date(&format!("{}T000000Z", s.replace('-', ""))).is_none() {
            bail!("--since {s:?} is not a date (YYYY-MM-DD)");
        }
    }
    let rows = Store::open(db)?.usage(key, since)?;
    match format {
        "json" => {
            let docs: Vec<_> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({"key": r.key, "day": r.day, "requests": r.counts.requests, "bytes": r.counts.bytes,
                        "compute_seconds": r.counts.compute_ms as f64 / 1000.0, "cache_hits": r.counts.cache_hits, "errors": r.counts.errors})
                })
                .collect();
            println!("{}", serde_json::Value::Array(docs));
        }
        "csv" => {
            println!("day,key,requests,bytes,compute_seconds,cache_hits,errors");
            for r in rows {
                let c = r.counts;
                println!(
                    "{},{},{},{},{},{},{}",
                    r.day,
                    r.key,
                    c.requests,
                    c.bytes,
                    c.compute_ms as f64 / 1000.0,
                    c.cache_hits,
                    c.errors
                );
            }
        }
        "table" => {
            println!(
                "{:<10}  {:<20}  {:>10}  {:>14}  {:>10}  {:>10}  {:>8}",
                "day", "key", "requests", "bytes", "compute s", "cache hits", "errors"
            );
            for r in rows {
                let c = r.counts;
                println!(
                    "{:<10}  {:<20}  {:>10}  {:>14}  {:>10.1}  {:>10}  {:>8}",
                    r.day,
                    r.key,
                    c.requests,
                    c.bytes,
                    c.compute_ms as f64 / 1000.0,
                    c.cache_hits,
                    c.errors
                );
            }
        }
        other => bail!("--format {other:?} is not table, csv or json"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries() {
        assert_eq!(parse_expiry("30d", 100).unwrap(), 100 + 30 * 86_400);
        assert_eq!(parse_expiry("2h", 0).unwrap(), 7200);
        assert_eq!(parse_expiry("2026-11-26", 0).unwrap(), 1_795_651_200);
        assert!(parse_expiry("soon", 0).is_err());
    }
}

//! Objects in object stores (`s3://`, `gs://`, `az://`) and on HTTP servers (`http(s)://`) as
//! byte sources, read by range through `object_store`.
//!
//! - **Which URLs.** Only URLs under a configured prefix (`[[remote]]` in the config file) are
//!   read; each prefix carries object_store's options for it (endpoint, region, credentials,
//!   `allow_http`, …). Any other URL is [`RemoteError::NotConfigured`]: a data tree cannot make
//!   the gateway fetch what its operator did not allow.
//! - **Fingerprints.** [`Remote::stat`] takes an object's size, `Last-Modified` and `ETag`
//!   ([`Fingerprint::remote`]) when it is indexed or imported. Every read compares what the
//!   server says of the object with it; a changed object is [`RemoteError::Stale`], and its
//!   bytes are never returned.
//! - **Reads.** Pooled connections, per-request timeouts and retries with exponential backoff
//!   are object_store's. Ranges are kept in a cache bounded in bytes; concurrent reads of one
//!   range wait for one request. A cached range is served without asking the server while the
//!   object was seen unchanged within `revalidate_seconds`; after that one `HEAD` checks it.
//! - **Failures.** A server that cannot be reached, or that still answers 5xx after the
//!   retries, is [`RemoteError::Unavailable`] (a 503 with `Retry-After` to clients); the next
//!   request tries again.
//!
//! Callers are synchronous (the indexer, and the gateway's blocking pool): requests run on a
//! small runtime of this module's own and the caller waits for the answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, RetryConfig};
use serde::Deserialize;
use zarrgate_core::catalog::Fingerprint;

/// One `[[remote]]` table: the URLs under `prefix` and object_store's options for them.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrefixConfig {
    /// For example `s3://cmip6/`, `https://data.example.org/thredds/fileServer/`.
    pub prefix: String,
    /// object_store's configuration keys (`aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_skip_signature`, `allow_http`,
    /// `google_service_account`, `azure_storage_account_name`, …).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// `[remote_cache]`: how remote reads are cached and retried.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Bytes of ranges kept in memory.
    pub cache_bytes: u64,
    /// How long an object seen unchanged is trusted before a cached range of it is served again
    /// without a `HEAD`.
    pub revalidate_seconds: f64,
    /// Retries of a failed request (5xx, connection errors), with exponential backoff.
    pub retries: usize,
    /// The longest a request and its retries may take.
    pub timeout_seconds: f64,
    /// Reads shorter than this are made as reads of the aligned blocks of this size that hold
    /// them, so that neighbouring small chunks come in one request and from the cache after it.
    /// 0 reads every range as asked; so does a cache of 0 bytes.
    pub block_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            cache_bytes: 256 << 20,
            revalidate_seconds: 1.0,
            retries: 3,
            timeout_seconds: 10.0,
            block_bytes: 1 << 20,
        }
    }
}

/// The remote sources a process may read: every `[[remote]]` table and `[remote_cache]` of a
/// config file (other keys are ignored, so a gateway's config file serves the indexer too).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Settings {
    #[serde(default)]
    pub remote: Vec<PrefixConfig>,
    #[serde(default)]
    pub remote_cache: CacheConfig,
}

impl Settings {
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// Whether `url` names a remote object (a scheme other than `file`).
pub fn is_remote(url: &str) -> bool {
    ["s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://", "abfss://", "http://", "https://"]
        .iter()
        .any(|s| url.len() >= s.len() && url[..s.len()].eq_ignore_ascii_case(s))
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{url}: no [[remote]] prefix of the configuration covers it")]
    NotConfigured { url: String },
    #[error("{url}: {why}")]
    BadConfig { url: String, why: String },
    #[error("{url} does not exist")]
    Missing { url: String },
    #[error("the remote object {url} changed since it was indexed ({why})")]
    Stale { url: String, why: String },
    #[error("{url} cannot be read now: {why}")]
    Unavailable { url: String, why: String },
    /// The range is not in the cache (or the object is not known unchanged), and the read was
    /// not to wait for the network.
    #[error("{url}: not cached")]
    NotCached { url: String },
}

type RangeKey = (Arc<str>, u64, u64);

/// Ranges of [`Remote::read_ranges`] closer than this are fetched in one request: the bytes
/// between them cost less than another round trip. (object_store's own default, 1 MiB, would
/// read a NetCDF-3 record coordinate by reading every record of the file.)
pub const GATHER_GAP: u64 = 64 << 10;

/// Reads remote objects; one per process, shared.
pub struct Remote {
    runtime: Option<tokio::runtime::Runtime>,
    prefixes: Vec<PrefixConfig>,
    cache: CacheConfig,
    stores: Mutex<HashMap<(usize, String), Arc<dyn ObjectStore>>>,
    ranges: moka::sync::Cache<RangeKey, (Fingerprint, Bytes)>,
    /// Objects seen unchanged lately, with the fingerprint they had.
    seen: moka::sync::Cache<Arc<str>, Fingerprint>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("prefixes", &self.prefixes).finish()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which is not allowed inside another runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Remote {
    pub fn new(settings: &Settings) -> Result<Self, String> {
        let mut prefixes = Vec::new();
        for p in &settings.remote {
            let normal = url::Url::parse(&p.prefix).ok().filter(|_| is_remote(&p.prefix)).ok_or_else(|| {
                format!("[[remote]] prefix {:?} is not an s3://, gs://, az:// or http(s):// URL", p.prefix)
            })?;
            // A prefix without its slash would also cover `https://host.evil.example/`.
            if !p.prefix.ends_with('/') || !normal.as_str().ends_with('/') {
                return Err(format!("[[remote]] prefix {:?} must end with '/'", p.prefix));
            }
            prefixes.push(PrefixConfig { prefix: normal.as_str().to_string(), options: p.options.clone() });
        }
        let c = &settings.remote_cache;
        if !(c.revalidate_seconds >= 0.0 && c.timeout_seconds > 0.0) {
            return Err("[remote_cache]: revalidate_seconds must be ≥ 0 and timeout_seconds > 0".into());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("zarrgate-remote")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the remote reader: {e}"))?;
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.prefix.len()));
        Ok(Remote {
            runtime: Some(runtime),
            prefixes,
            cache: c.clone(),
            stores: Mutex::new(HashMap::new()),
            ranges: moka::sync::Cache::builder()
                .max_capacity(c.cache_bytes)
                .weigher(|k: &RangeKey, v: &(Fingerprint, Bytes)| {
                    u32::try_from(v.1.len() + k.0.len() + 64).unwrap_or(u32::MAX)
                })
                .build(),
            seen: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs_f64(c.revalidate_seconds.max(0.001)))
                .build(),
        })
    }

    /// Whether some `[[remote]]` prefix covers `url`.
    pub fn covers(&self, url: &str) -> bool {
        self.prefix_of(url).is_some()
    }

    /// The index of the `[[remote]]` prefix that covers `url`, compared in its normal form
    /// (`s3://b/public/../secret/x` is `s3://b/secret/x`), and the parsed URL.
    fn prefix_of(&self, url: &str) -> Option<(usize, url::Url)> {
        let parsed = url::Url::parse(url).ok()?;
        let index = self.prefixes.iter().position(|p| parsed.as_str().starts_with(&p.prefix))?;
        Some((index, parsed))
    }

    /// The fingerprint of the object `url` now.
    pub fn stat(&self, url: &str) -> Result<Fingerprint, RemoteError> {
        let (store, path) = self.locate(url)?;
        let meta = self.wait(async move { store.head(&path).await }).map_err(|e| failure(url, e))?;
        Ok(fingerprint(&meta))
    }

    /// The URLs of every object under `prefix` (a URL ending in '/'), sorted. Object stores
    /// only: HTTP servers have no listing.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError> {
        use futures::TryStreamExt as _;
        let (store, path) = self.locate(prefix)?;
        let (scheme, rest) = prefix.split_once("://").unwrap_or(("", prefix));
        let root = format!("{scheme}://{}", rest.split('/').next().unwrap_or_default());
        let found = self.wait(async move { store.list(Some(&path)).try_collect::<Vec<_>>().await });
        let mut urls: Vec<String> = found
            .map_err(|e| failure(prefix, e))?
            .into_iter()
            .map(|meta| format!("{root}/{}", meta.location))
            .filter(|url| url.starts_with(prefix))
            .collect();
        urls.sort();
        Ok(urls)
    }

    /// Fails unless the object `url` still has the fingerprint `expected` (asking the server
    /// at most once per `revalidate_seconds`).
    pub fn check(&self, url: &str, expected: Fingerprint) -> Result<(), RemoteError> {
        if self.seen.get(url) == Some(expected) {
            return Ok(());
        }
        let now = match self.stat(url) {
            Err(RemoteError::Missing { .. }) => {
                return Err(RemoteError::Stale { url: url.into(), why: "it was deleted".into() })
            }
            other => other?,
        };
        if let Some(why) = expected.changed(&now) {
            self.forget(url);
            return Err(RemoteError::Stale { url: url.into(), why });
        }
        self.remember(url, expected);
        Ok(())
    }

    /// `length` bytes at `offset` of the object `url`, which must still have the fingerprint
    /// `expected`. With `cached_only`, only what the cache holds of an object seen unchanged
    /// lately; anything else is [`RemoteError::NotCached`].
    ///
    /// A range shorter than `block_bytes` is cut from the aligned blocks that hold it (at most
    /// two), read and cached whole: neighbouring small chunks then cost one request.
    pub fn read(
        &self,
        url: &str,
        expected: Fingerprint,
        offset: u64,
        length: u64,
        cached_only: bool,
    ) -> Result<Bytes, RemoteError> {
        let end = offset.checked_add(length).filter(|end| *end <= expected.size);
        let Some(end) = end else {
            return Err(RemoteError::Stale { url: url.into(), why: "it is shorter than its references".into() });
        };
        let block = self.cache.block_bytes;
        if block == 0 || self.cache.cache_bytes == 0 || length >= block || length == 0 {
            return self.read_range(url, expected, offset, length, cached_only);
        }
        let first = offset / block * block;
        let mut out = Vec::with_capacity(length as usize);
        let mut at = first;
        while at < end {
            let size = block.min(expected.size - at);
            let bytes = self.read_range(url, expected, at, size, cached_only)?;
            let from = offset.max(at) - at;
            let to = end.min(at + size) - at;
            if at == first && to - from == length {
                return Ok(bytes.slice(from as usize..to as usize));
            }
            out.extend_from_slice(&bytes[from as usize..to as usize]);
            at += size;
        }
        Ok(Bytes::from(out))
    }

    /// The ranges `(offset, length)` of the object `url`, which must have the fingerprint
    /// `expected`, as asked (no blocks, no cache: what the indexer reads once). Ranges less
    /// than [`GATHER_GAP`] apart are fetched in one request, the requests ten at a time, and
    /// the object is checked unchanged afterwards.
    pub fn read_ranges(
        &self,
        url: &str,
        expected: Fingerprint,
        ranges: &[(u64, u64)],
    ) -> Result<Vec<Bytes>, RemoteError> {
        if ranges.iter().any(|(o, l)| o.checked_add(*l).is_none_or(|end| end > expected.size)) {
            return Err(RemoteError::Stale { url: url.into(), why: "it is shorter than its references".into() });
        }
        let wanted: Vec<std::ops::Range<u64>> = ranges.iter().filter(|(_, l)| *l > 0).map(|(o, l)| *o..o + l).collect();
        let mut fetched = if wanted.is_empty() {
            Vec::new()
        } else {
            let (store, path) = self.locate(url)?;
            let merged = merge(&wanted);
            let asked = merged.clone();
            let fetched = self.wait(async move {
                use futures::{StreamExt as _, TryStreamExt as _};
                futures::stream::iter(asked)
                    .map(|r| {
                        let (store, path) = (store.clone(), path.clone());
                        async move { store.get_range(&path, r).await }
                    })
                    .buffered(10)
                    .try_collect::<Vec<Bytes>>()
                    .await
            });
            match fetched.map(|pieces| slice(&wanted, &merged, &pieces)) {
                Err(object_store::Error::NotFound { .. }) => {
                    self.forget(url);
                    return Err(RemoteError::Stale { url: url.into(), why: "it was deleted".into() });
                }
                other => other.map_err(|e| failure(url, e))?,
            }
        }
        .into_iter();
        self.check(url, expected)?;
        let mut out = Vec::with_capacity(ranges.len());
        for (_, length) in ranges {
            let bytes = if *length == 0 { Bytes::new() } else { fetched.next().unwrap_or_default() };
            if bytes.len() as u64 != *length {
                return Err(RemoteError::Stale { url: url.into(), why: "it is shorter than its references".into() });
            }
            out.push(bytes);
        }
        Ok(out)
    }

    /// `length` bytes at `offset`, from the cache or by one request.
    fn read_range(
        &self,
        url: &str,
        expected: Fingerprint,
        offset: u64,
        length: u64,
        cached_only: bool,
    ) -> Result<Bytes, RemoteError> {
        let key: RangeKey = (url.into(), offset, length);
        if let Some((fp, bytes)) = self.ranges.get(&key) {
            if fp == expected {
                if cached_only && self.seen.get(url) != Some(expected) {
                    return Err(RemoteError::NotCached { url: url.into() });
                }
                self.check(url, expected)?;
                return Ok(bytes);
            }
        }
        if cached_only {
            return Err(RemoteError::NotCached { url: url.into() });
        }
        // Concurrent reads of one range wait for one request.
        let loaded = self.ranges.try_get_with(key.clone(), || self.fetch(url, expected, offset, length));
        match loaded {
            Ok((fp, bytes)) if fp == expected => Ok(bytes),
            Ok(_) => {
                // A range cached from another version of the object: read it again.
                self.ranges.invalidate(&key);
                let (fp, bytes) = self.fetch(url, expected, offset, length)?;
                self.ranges.insert(key, (fp, bytes.clone()));
                Ok(bytes)
            }
            Err(e) => Err((*e).clone()),
        }
    }

    /// One ranged GET; the object's fingerprint in the answer must be `expected`.
    fn fetch(
        &self,
        url: &str,
        expected: Fingerprint,
        offset: u64,
        length: u64,
    ) -> Result<(Fingerprint, Bytes), RemoteError> {
        if length == 0 {
            self.check(url, expected)?;
            return Ok((expected, Bytes::new()));
        }
        let (store, path) = self.locate(url)?;
        let options = GetOptions { range: Some(GetRange::Bounded(offset..offset + length)), ..Default::default() };
        let got = self.wait(async move {
            let result = store.get_opts(&path, options).await?;
            let meta = result.meta.clone();
            let bytes = result.bytes().await?;
            Ok::<_, object_store::Error>((meta, bytes))
        });
        let (meta, bytes) = match got {
            Err(object_store::Error::NotFound { .. }) => {
                self.forget(url);
                return Err(RemoteError::Stale { url: url.into(), why: "it was deleted".into() });
            }
            other => other.map_err(|e| failure(url, e))?,
        };
        let now = fingerprint(&meta);
        if let Some(why) = expected.changed(&now) {
            self.forget(url);
            return Err(RemoteError::Stale { url: url.into(), why });
        }
        if bytes.len() as u64 != length {
            return Err(RemoteError::Stale { url: url.into(), why: "it is shorter than its references".into() });
        }
        self.remember(url, expected);
        Ok((expected, bytes))
    }

    /// Notes that `url` was seen with fingerprint `fp` (not at all with `revalidate_seconds = 0`,
    /// so that every read asks the server).
    fn remember(&self, url: &str, fp: Fingerprint) {
        if self.cache.revalidate_seconds > 0.0 {
            self.seen.insert(url.into(), fp);
        }
    }

    fn forget(&self, url: &str) {
        self.seen.invalidate(url);
    }

    /// Runs `fut` on this reader's runtime and waits for it (from any thread, also one of
    /// another runtime's blocking pool).
    fn wait<T: Send + 'static>(&self, fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.as_ref().expect("the runtime lives as long as the reader").spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().expect("a remote request task ended without an answer")
    }

    /// The store that holds `url` (made on first use, one per prefix and bucket or host) and
    /// the object's path in it.
    fn locate(&self, url: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath), RemoteError> {
        let bad = |why: String| RemoteError::BadConfig { url: url.into(), why };
        let (index, parsed) = self.prefix_of(url).ok_or_else(|| RemoteError::NotConfigured { url: url.into() })?;
        let prefix = &self.prefixes[index];
        let host = parsed.host_str().unwrap_or_default().to_string();
        let base = match parsed.port() {
            Some(port) => format!("{}://{host}:{port}", parsed.scheme()),
            None => format!("{}://{host}", parsed.scheme()),
        };
        let path = ObjectPath::from_url_path(parsed.path()).map_err(|e| bad(e.to_string()))?;
        let mut stores = self.stores.lock().expect("the store map is never poisoned");
        if let Some(store) = stores.get(&(index, base.clone())) {
            return Ok((store.clone(), path));
        }
        let store = build_store(&base, parsed.scheme(), &prefix.options, &self.cache).map_err(bad)?;
        stores.insert((index, base), store.clone());
        Ok((store, path))
    }
}

/// The ranges to fetch for `wanted`: sorted, with those less than [`GATHER_GAP`] apart merged.
fn merge(wanted: &[std::ops::Range<u64>]) -> Vec<std::ops::Range<u64>> {
    let mut sorted = wanted.to_vec();
    sorted.sort_by_key(|r| r.start);
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(GATHER_GAP) => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Each wanted (non-empty) range cut from the merged piece that holds it (a piece shorter than
/// asked, from an object that shrank, gives a short range).
fn slice(wanted: &[std::ops::Range<u64>], merged: &[std::ops::Range<u64>], pieces: &[Bytes]) -> Vec<Bytes> {
    wanted
        .iter()
        .map(|r| {
            let i = merged.partition_point(|m| m.end <= r.start).min(merged.len() - 1);
            let (m, piece) = (&merged[i], &pieces[i]);
            let from = ((r.start - m.start) as usize).min(piece.len());
            let to = ((r.end - m.start) as usize).min(piece.len());
            piece.slice(from..to)
        })
        .collect()
}

fn build_store(
    base: &str,
    scheme: &str,
    options: &BTreeMap<String, String>,
    cache: &CacheConfig,
) -> Result<Arc<dyn ObjectStore>, String> {
    let timeout = Duration::from_secs_f64(cache.timeout_seconds);
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: cache.retries,
        retry_timeout: timeout,
    };
    let client = ClientOptions::new().with_timeout(timeout).with_connect_timeout(Duration::from_secs(5));
    let key_error = |k: &str, e: object_store::Error| format!("option {k:?}: {e}");
    // The three cloud builders take the same steps: the environment, the URL, our retries and
    // client options, then the prefix's options.
    macro_rules! cloud {
        ($builder:ty) => {{
            let mut b = <$builder>::from_env().with_url(base).with_retry(retry).with_client_options(client);
            for (k, v) in options {
                b = b.with_config(k.parse().map_err(|e| key_error(k, e))?, v);
            }
            Arc::new(b.build().map_err(|e| e.to_string())?)
        }};
    }
    let store: Arc<dyn ObjectStore> = match scheme.to_ascii_lowercase().as_str() {
        "s3" | "s3a" => cloud!(object_store::aws::AmazonS3Builder),
        "gs" | "gcs" => cloud!(object_store::gcp::GoogleCloudStorageBuilder),
        "az" | "abfs" | "abfss" => cloud!(object_store::azure::MicrosoftAzureBuilder),
        "http" | "https" => {
            let mut client = client.with_allow_http(scheme.eq_ignore_ascii_case("http"));
            for (k, v) in options {
                client = client.with_config(k.parse().map_err(|e| key_error(k, e))?, v);
            }
            let b = object_store::http::HttpBuilder::new().with_url(base).with_retry(retry).with_client_options(client);
            Arc::new(b.build().map_err(|e| e.to_string())?)
        }
        other => return Err(format!("the scheme {other}:// is not supported")),
    };
    Ok(store)
}

fn fingerprint(meta: &object_store::ObjectMeta) -> Fingerprint {
    let modified = meta.last_modified.timestamp_nanos_opt().unwrap_or(0);
    Fingerprint::remote(meta.size, modified, meta.e_tag.as_deref())
}

fn failure(url: &str, e: object_store::Error) -> RemoteError {
    match e {
        object_store::Error::NotFound { .. } => RemoteError::Missing { url: url.into() },
        object_store::Error::Precondition { .. } | object_store::Error::NotModified { .. } => {
            RemoteError::Stale { url: url.into(), why: "its ETag changed".into() }
        }
        e => RemoteError::Unavailable { url: url.into(), why: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_a_config_file_that_holds_other_keys_too() {
        let s = Settings::from_toml(
            r#"
listen = "127.0.0.1:9000"
[[collections]]
bucket = "x"
[[remote]]
prefix = "s3://cmip6/"
options = { aws_endpoint = "http://127.0.0.1:9999", aws_allow_http = "true" }
[remote_cache]
retries = 1
"#,
        )
        .unwrap();
        assert_eq!(s.remote.len(), 1);
        assert_eq!(s.remote[0].options["aws_endpoint"], "http://127.0.0.1:9999");
        assert_eq!(s.remote_cache.retries, 1);
        assert_eq!(s.remote_cache.cache_bytes, CacheConfig::default().cache_bytes);
    }

    #[test]
    fn only_configured_prefixes_are_read() {
        let s = Settings {
            remote: vec![PrefixConfig { prefix: "https://data.example.org/files/".into(), options: BTreeMap::new() }],
            ..Default::default()
        };
        let r = Remote::new(&s).unwrap();
        assert!(r.covers("https://data.example.org/files/a.nc"));
        assert!(!r.covers("https://data.example.org/files/../private/a.nc"));
        assert!(!r.covers("https://data.example.org.evil.example/files/a.nc"));
        let err = r.stat("https://other.example.org/a.nc").unwrap_err();
        assert!(matches!(err, RemoteError::NotConfigured { .. }), "{err}");
        assert!(Remote::new(&Settings {
            remote: vec![PrefixConfig { prefix: "/data/".into(), options: BTreeMap::new() }],
            ..Default::default()
        })
        .is_err());
        let no_slash = PrefixConfig { prefix: "https://data.example.org".into(), options: BTreeMap::new() };
        assert!(Remote::new(&Settings { remote: vec![no_slash], ..Default::default() }).is_err());
        assert!(is_remote("S3://b/k") && is_remote("https://h/x") && !is_remote("file:///x") && !is_remote("a/b"));
    }

    #[test]
    fn neighbouring_ranges_are_fetched_together_and_cut_apart() {
        let wanted = vec![100..108, 0..8, (200 << 10)..(200 << 10) + 8, 140..150];
        let merged = merge(&wanted);
        assert_eq!(merged, vec![0..150, (200 << 10)..(200 << 10) + 8]);
        let pieces: Vec<Bytes> =
            merged.iter().map(|m| Bytes::from((m.start..m.end).map(|b| b as u8).collect::<Vec<_>>())).collect();
        let got = slice(&wanted, &merged, &pieces);
        assert_eq!(&got[0][..], &(100..108).map(|b| b as u8).collect::<Vec<_>>()[..]);
        assert_eq!(&got[1][..], &(0..8).map(|b| b as u8).collect::<Vec<_>>()[..]);
        assert_eq!(got[2].len(), 8);
        assert_eq!(&got[3][..], &(140..150).map(|b| b as u8).collect::<Vec<_>>()[..]);
    }

    #[test]
    fn a_range_beyond_the_recorded_size_is_stale_without_a_request() {
        let s = Settings {
            remote: vec![PrefixConfig { prefix: "http://127.0.0.1:9/".into(), options: BTreeMap::new() }],
            ..Default::default()
        };
        let r = Remote::new(&s).unwrap();
        let fp = Fingerprint::remote(10, 0, Some("\"e\""));
        let err = r.read("http://127.0.0.1:9/x", fp, 8, 5, false).unwrap_err();
        assert!(matches!(err, RemoteError::Stale { .. }), "{err}");
        assert!(matches!(r.read("http://127.0.0.1:9/x", fp, 0, 5, true), Err(RemoteError::NotCached { .. })));
    }
}

//! The gateway's state: everything a request can reach, built once by [`AppBuilder`] and never
//! changed after (counters and caches inside it change; its parts do not). What the S3 layer
//! and the operations share is its [`State`], which it dereferences to.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::auth::{Auth, Policy};
use crate::client::TrustedProxies;
use crate::collection::Collection;
use crate::metrics::Metrics;
use crate::source::Sources;
use crate::state::State;

/// Object reads (and decodes) in flight at once.
const MAX_READS: usize = 64;

pub struct App {
    /// Collections, sources, auth and counters.
    pub state: Arc<State>,
    /// Who may read `/metrics`.
    pub metrics_policy: Policy,
    /// Proxies whose `Forwarded`/`X-Forwarded-For` name the client.
    pub proxies: TrustedProxies,
    pub shutting_down: AtomicBool,
    /// Server-side operations, when enabled.
    pub ops: Option<Arc<crate::ops::Ops>>,
    next_request: AtomicU64,
    /// Makes request ids unique across restarts (and replicas): from the start time and pid.
    request_prefix: u32,
    pub access_log: Option<crate::access_log::AccessLog>,
    /// Bounds the reads handed to the blocking pool.
    pub reads: Arc<tokio::sync::Semaphore>,
    /// The URL clients reach the gateway at, for absolute links (`public_url`); by default
    /// `scheme://` and the request's `Host`.
    pub public_url: Option<String>,
    pub scheme: &'static str,
}

impl App {
    /// A new request id (hexadecimal, for `x-amz-request-id` and error documents).
    pub fn request_id(&self) -> String {
        let n = self.next_request.fetch_add(1, Ordering::Relaxed);
        format!("{:08X}{:010X}", self.request_prefix, n & 0xFF_FFFF_FFFF)
    }
}

impl App {
    /// The gateway's absolute URL as a client of this request reaches it (no trailing slash).
    pub fn base_url(&self, headers: &hyper::HeaderMap) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_string();
        }
        let host = headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b)))
            .unwrap_or("localhost");
        format!("{}://{host}", self.scheme)
    }
}

impl std::ops::Deref for App {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

/// Assembles an [`App`].
pub struct AppBuilder {
    access_log: Option<crate::access_log::AccessLog>,
    collections: Vec<Arc<Collection>>,
    auth: Arc<Auth>,
    ops: Option<Arc<crate::ops::Ops>>,
    metrics_policy: Option<Policy>,
    proxies: TrustedProxies,
    public_url: Option<String>,
    scheme: &'static str,
    remote: Option<Arc<zarrgate_remote::Remote>>,
}

impl AppBuilder {
    pub fn new(collections: Vec<Arc<Collection>>, auth: Arc<Auth>) -> Self {
        AppBuilder {
            access_log: None,
            collections,
            auth,
            ops: None,
            metrics_policy: None,
            proxies: TrustedProxies::default(),
            public_url: None,
            scheme: "http",
            remote: None,
        }
    }

    /// Reads the sources that are remote objects (none without it).
    pub fn remote(mut self, remote: Option<Arc<zarrgate_remote::Remote>>) -> Self {
        self.remote = remote;
        self
    }

    /// Writes a line per answered request (health probes aside).
    pub fn access_log(mut self, log: crate::access_log::AccessLog) -> Self {
        self.access_log = Some(log);
        self
    }

    pub fn ops(mut self, ops: crate::ops::Ops) -> Self {
        self.ops = Some(Arc::new(ops));
        self
    }

    /// Who may read `/metrics`. By default everyone while every collection is public, and
    /// holders of a key once one is restricted: the counters name the buckets.
    pub fn metrics_policy(mut self, policy: Option<Policy>) -> Self {
        self.metrics_policy = policy;
        self
    }

    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = proxies;
        self
    }

    /// How links name the gateway: `public_url` if set, else `scheme` and the request's host.
    pub fn public_url(mut self, public_url: Option<String>, scheme: &'static str) -> Self {
        self.public_url = public_url;
        self.scheme = scheme;
        self
    }

    pub fn build(self) -> App {
        let restricted = self.collections.iter().any(|c| !c.read.is_public());
        let default_metrics = if restricted { Policy::Authenticated } else { Policy::Public };
        let state = State {
            collections: self.collections.into_iter().map(|c| (c.bucket.clone(), c)).collect(),
            sources: Sources::new(self.remote),
            auth: self.auth,
            metrics: Metrics::default(),
        };
        App {
            state: Arc::new(state),
            metrics_policy: self.metrics_policy.unwrap_or(default_metrics),
            proxies: self.proxies,
            shutting_down: AtomicBool::new(false),
            ops: self.ops,
            next_request: AtomicU64::new(1),
            request_prefix: request_prefix(),
            access_log: self.access_log,
            reads: Arc::new(tokio::sync::Semaphore::new(MAX_READS)),
            public_url: self.public_url,
            scheme: self.scheme,
        }
    }
}

/// 32 bits that differ between processes: the start time in milliseconds mixed with the pid.
fn request_prefix() -> u32 {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mixed = ms.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id()).rotate_left(32);
    (mixed >> 32) as u32 ^ mixed as u32
}

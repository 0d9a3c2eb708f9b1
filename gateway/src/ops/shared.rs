//! What replicas share of the operations, in an object store (`[ops] store = "s3://…"`):
//! results by content address, and compute leases, so that a result is computed once across
//! replicas and found by all of them.
//!
//! ```text
//! {prefix}/results/{key hex}.zgr   a result, in the cache file format (magic, blake3, payload)
//! {prefix}/leases/{key hex}        "who until": a replica computing that key (create-if-absent)
//! ```
//!
//! A lease is taken with a conditional create; whoever gets it computes, stores the result and
//! deletes the lease. The others wait for the result, and take a lease over (a conditional
//! update on its version) once it has expired, so a replica that died never blocks a result.
//! When the store cannot be reached, results are computed locally and not shared, and the
//! health flag says so (`/readyz`, and jobs are refused).
//!
//! The client runs on a small runtime of its own: the gateway's worker runtimes each drive
//! their own connections, and the store's connection pool must outlive any one request.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::cache::{frame, verify, Key};

/// How long a lease holds without its holder finishing: a computation that takes longer may be
/// done twice (never wrongly: both write the same bytes under the same key).
pub const LEASE: Duration = Duration::from_secs(120);
/// How often a waiting replica looks for the result.
pub const POLL: Duration = Duration::from_millis(100);
/// Every request to the store gives up after this long (the store is then unreachable).
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct SharedStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    reachable: Arc<AtomicBool>,
    /// This replica, in the leases it writes.
    me: String,
}

/// What [`SharedStore::lease`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lease {
    /// This replica holds it: compute, [`SharedStore::put`], then [`SharedStore::release`].
    Mine,
    /// Another replica holds it until then (milliseconds since the epoch).
    Held { until: u64 },
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl SharedStore {
    /// Connects to the store `url` names (`s3://BUCKET/PREFIX`, `file:///DIR`, `memory:///`).
    /// For S3, `options` are object_store's (`aws_endpoint`, `aws_region`, `aws_allow_http`, …)
    /// over the usual `AWS_*` environment variables.
    pub fn open(url: &str, options: &BTreeMap<String, String>) -> Result<SharedStore, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("[ops] store {url:?}: {e}"))?;
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = if parsed.scheme() == "s3" {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
            let mut builder = AmazonS3Builder::from_env().with_url(url);
            for (k, v) in options {
                let key: AmazonS3ConfigKey = k.parse().map_err(|e| format!("[ops.store_options] {k}: {e}"))?;
                builder = builder.with_config(key, v);
            }
            let s3 = builder
                .with_conditional_put(S3ConditionalPut::ETagMatch)
                .build()
                .map_err(|e| format!("[ops] store {url:?}: {e}"))?;
            (Arc::new(s3), Path::from(parsed.path().trim_matches('/')))
        } else {
            let (store, path) = object_store::parse_url_opts(&parsed, options.iter())
                .map_err(|e| format!("[ops] store {url:?}: {e}"))?;
            (Arc::from(store), path)
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ops-store")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the object store's runtime: {e}"))?;
        let me = format!("{}:{}", hostname(), std::process::id());
        let shared =
            SharedStore { store, prefix, runtime: Some(runtime), reachable: Arc::new(AtomicBool::new(true)), me };
        shared.spawn_probe();
        Ok(shared)
    }

    /// True while the last request to the store (or the probe every second) succeeded.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("the runtime lives as long as the store").handle()
    }

    fn path(&self, kind: &str, key: &Key, ext: &str) -> Path {
        self.prefix.child(kind).child(format!("{}{ext}", key.hex()))
    }

    /// Runs `f` on the store's runtime with a timeout; records whether the store answered.
    async fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> object_store::Result<T> {
        let task = self.handle().spawn(async move {
            tokio::time::timeout(TIMEOUT, f).await.unwrap_or_else(|_| {
                Err(object_store::Error::Generic {
                    store: "ops",
                    source: "the object store did not answer in time".into(),
                })
            })
        });
        let out = task.await.unwrap_or_else(|e| Err(object_store::Error::JoinError { source: e }));
        let answered =
            !matches!(&out, Err(object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }));
        self.reachable.store(answered, Ordering::Release);
        out
    }

    /// A shared result, verified; `Ok(None)` if there is none (or it failed its hash check, and
    /// was deleted).
    pub async fn get(&self, key: &Key) -> Result<Option<Bytes>, String> {
        let (store, path) = (self.store.clone(), self.path("results", key, ".zgr"));
        let got = self.run(async move { store.get(&path).await?.bytes().await }).await;
        match got {
            Ok(data) => match verify(data) {
                Some(payload) => Ok(Some(payload)),
                None => {
                    tracing::warn!("shared result {} failed its hash check; deleting it", key.hex());
                    let (store, path) = (self.store.clone(), self.path("results", key, ".zgr"));
                    let _ = self.run(async move { store.delete(&path).await }).await;
                    Ok(None)
                }
            },
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Stores a result for every replica.
    pub async fn put(&self, key: &Key, payload: &Bytes) -> Result<(), String> {
        let (store, path, body) = (self.store.clone(), self.path("results", key, ".zgr"), frame(payload));
        self.run(async move { store.put(&path, PutPayload::from(body)).await })
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Takes the lease on computing `key`, or says who holds it; an expired lease is taken
    /// over (only one replica's update of its version succeeds).
    pub async fn lease(&self, key: &Key) -> Result<Lease, String> {
        let path = self.path("leases", key, "");
        let body = || Bytes::from(format!("{} {}", self.me, now_ms() + LEASE.as_millis() as u64));
        let (store, p, b) = (self.store.clone(), path.clone(), body());
        let created = self
            .run(async move { store.put_opts(&p, PutPayload::from(b), PutOptions::from(PutMode::Create)).await })
            .await;
        match created {
            Ok(_) => return Ok(Lease::Mine),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
        let (store, p) = (self.store.clone(), path.clone());
        let current = self
            .run(async move {
                let got = store.get(&p).await?;
                let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
                Ok((got.bytes().await?, version))
            })
            .await;
        let (text, version) = match current {
            Ok(found) => found,
            // released between the create and the read: try again at the next poll
            Err(object_store::Error::NotFound { .. }) => return Ok(Lease::Held { until: 0 }),
            Err(e) => return Err(e.to_string()),
        };
        let until = String::from_utf8_lossy(&text).rsplit(' ').next().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
        if until > now_ms() {
            return Ok(Lease::Held { until });
        }
        let (store, p, b) = (self.store.clone(), path, body());
        let taken =
            self.run(async move {
                store.put_opts(&p, PutPayload::from(b), PutOptions::from(PutMode::Update(version))).await
            })
            .await;
        match taken {
            Ok(_) => Ok(Lease::Mine),
            Err(object_store::Error::Precondition { .. } | object_store::Error::NotImplemented) => {
                Ok(Lease::Held { until: now_ms() + POLL.as_millis() as u64 })
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Gives a lease back (after the result is stored, or when the computation failed).
    pub async fn release(&self, key: &Key) {
        let (store, path) = (self.store.clone(), self.path("leases", key, ""));
        let _ = self.run(async move { store.delete(&path).await }).await;
    }

    /// Reads the store every second, so that `reachable` recovers (and fails) without traffic.
    fn spawn_probe(&self) {
        let (store, reachable, path) = (self.store.clone(), self.reachable.clone(), self.prefix.child("probe"));
        self.handle().spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let answer = tokio::time::timeout(TIMEOUT, store.head(&path)).await;
                let ok = matches!(answer, Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })));
                reachable.store(ok, Ordering::Release);
            }
        });
    }
}

/// Dropping a runtime inside another panics: the store's is shut down in the background.
impl Drop for SharedStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "replica".into(), |h| h.trim().to_string())
}

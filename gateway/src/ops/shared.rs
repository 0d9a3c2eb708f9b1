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

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::cache::{frame, verify, Key};

/// How long a lease holds unless renewed; its holder renews it every third of that while it
/// computes, so a lease outlives its replica by at most this long. (A holder taken for dead
/// that still computes only makes the work double, never wrong: both write the same bytes
/// under the same key.)
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a waiting replica looks for the result.
pub const POLL: Duration = Duration::from_millis(100);
/// How often a replica shares its jobs and beats for those it runs.
pub const JOB_BEAT: Duration = Duration::from_secs(1);
/// Seconds without a heartbeat after which a job is taken over by another replica.
pub const JOB_STALE: i64 = 10;
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
    /// Job records as last read, by location: (ETag, record, version).
    jobs_seen: Mutex<HashMap<String, JobSeen>>,
}

type JobSeen = (Option<String>, super::jobs::JobRecord, UpdateVersion);

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
        let shared = SharedStore {
            store,
            prefix,
            runtime: Some(runtime),
            reachable: Arc::new(AtomicBool::new(true)),
            me,
            jobs_seen: Mutex::default(),
        };
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
        let current = self.get_versioned(path.clone()).await;
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

    /// Extends a lease this replica holds.
    pub async fn renew(&self, key: &Key) {
        let body = Bytes::from(format!("{} {}", self.me, now_ms() + LEASE.as_millis() as u64));
        let (store, path) = (self.store.clone(), self.path("leases", key, ""));
        let _ = self.run(async move { store.put(&path, PutPayload::from(body)).await }).await;
    }

    /// An object's bytes with the version a conditional update must name.
    async fn get_versioned(&self, path: Path) -> object_store::Result<(Bytes, UpdateVersion)> {
        let store = self.store.clone();
        self.run(async move {
            let got = store.get(&path).await?;
            let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
            Ok((got.bytes().await?, version))
        })
        .await
    }

    /// Gives a lease back (after the result is stored, or when the computation failed).
    pub async fn release(&self, key: &Key) {
        let (store, path) = (self.store.clone(), self.path("leases", key, ""));
        let _ = self.run(async move { store.delete(&path).await }).await;
    }

    /// This replica's name in leases and job records.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Writes a job record for every replica (`jobs/ID.json`).
    pub async fn put_job(&self, job: &super::jobs::JobRecord) -> Result<(), String> {
        let body = serde_json::to_vec(job).map_err(|e| e.to_string())?;
        let (store, path) = (self.store.clone(), self.prefix.child("jobs").child(format!("{}.json", job.id)));
        self.run(async move { store.put(&path, PutPayload::from(body)).await })
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Every shared job record, with its version (for [`SharedStore::take_over_job`]).
    pub async fn list_jobs(&self) -> Result<BTreeMap<String, (super::jobs::JobRecord, UpdateVersion)>, String> {
        use futures::TryStreamExt as _;
        let (store, prefix) = (self.store.clone(), self.prefix.child("jobs"));
        let listed = self.run(async move { store.list(Some(&prefix)).try_collect::<Vec<_>>().await }).await;
        let listed = listed.map_err(|e| e.to_string())?;
        // Records whose ETag the listing shows unchanged are not read again: a replica lists
        // every second, and most records do not change between two looks.
        let mut seen = std::mem::take(&mut *self.jobs_seen.lock().unwrap_or_else(|p| p.into_inner()));
        let mut out = BTreeMap::new();
        let mut kept = HashMap::new();
        for meta in listed {
            let known =
                seen.remove(meta.location.as_ref()).filter(|(etag, ..)| meta.e_tag.is_some() && *etag == meta.e_tag);
            let (etag, job, version) = match known {
                Some(entry) => entry,
                None => {
                    let Ok((bytes, version)) = self.get_versioned(meta.location.clone()).await else { continue };
                    let Ok(job) = serde_json::from_slice::<super::jobs::JobRecord>(&bytes) else { continue };
                    (version.e_tag.clone(), job, version)
                }
            };
            out.insert(job.id.clone(), (job.clone(), version.clone()));
            kept.insert(meta.location.to_string(), (etag, job, version));
        }
        *self.jobs_seen.lock().unwrap_or_else(|p| p.into_inner()) = kept;
        Ok(out)
    }

    /// Replaces a job record only if it is still the version read: true if this replica won.
    pub async fn take_over_job(&self, job: &super::jobs::JobRecord, version: UpdateVersion) -> Result<bool, String> {
        let body = serde_json::to_vec(job).map_err(|e| e.to_string())?;
        let (store, path) = (self.store.clone(), self.prefix.child("jobs").child(format!("{}.json", job.id)));
        let put = self
            .run(async move {
                store.put_opts(&path, PutPayload::from(body), PutOptions::from(PutMode::Update(version))).await
            })
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. } | object_store::Error::NotImplemented) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
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

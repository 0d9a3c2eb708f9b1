//! Server-side operations in the gateway: the cache, single-flight, the compute pool and jobs.
//!
//! # Layout
//! - [`cache`]: the two-tier, hash-verified result cache.
//! - [`jobs`]: job records, persisted before a job is acknowledged.
//! - [`http`]: `/ops/v1`, OGC API – Processes, `/jobs`, `/results`.
//! - [`ogc`]: the OGC API's landing page, conformance and OpenAPI document (`/ogc`).
//!
//! # Flow of a request
//! 1. The canonical request and the source fingerprints give the cache key; a hit answers at once.
//! 2. Planning reads only metadata and coordinates, so bad arguments fail fast and the cost is
//!    known. Above the sync limit (or when asked) the request becomes a job, saved to disk first.
//! 3. Identical requests in flight share one computation. It runs on the bounded compute pool
//!    (blocking threads at lower CPU priority), never on the threads that serve S3.

pub mod cache;
pub mod http;
pub mod jobs;
pub mod ogc;
pub mod shared;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{OnceCell, Semaphore};
use zarrgate_core::ops::{self, ChunkSource, Format, Output, Plan, Problem, Raw, Request, Run, SourceError, StoreView};

use crate::auth::quota::Exceeded;
use crate::auth::Principal;
use crate::collection::{Collection, Entry};
use crate::dataset::Dataset;
use crate::dates::{day_of, unix_now};
use crate::source::{ReadError, Sources};
use crate::state::State;
use crate::store::{self, ReadOutcome};
use cache::{Key, Lookup, ResultCache, Tier};
use jobs::{JobRecord, JobStore, Status};
use shared::{Lease, SharedStore};

/// Settings of the operations service (`[ops]` in the config file).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Results cache (`results/`) and job records (`jobs/`); empty means the binary's default.
    pub dir: PathBuf,
    /// Estimated bytes to decode above which a request runs as a job.
    pub sync_limit_bytes: u64,
    /// Largest result computed.
    pub max_output_bytes: u64,
    /// Computations at once.
    pub workers: usize,
    /// Threads of one computation.
    pub threads: usize,
    pub memory_cache_bytes: u64,
    pub disk_cache_bytes: u64,
    /// How long a synchronous request waits for its computation before it becomes a job (the
    /// binary keeps this under the client timeout, so no answer is lost to it).
    #[serde(skip)]
    pub sync_wait: Duration,
    /// Test hook: every computation waits this long before it starts.
    #[serde(skip)]
    pub test_compute_delay: Duration,
    /// An object store that replicas share results and compute leases through
    /// (`s3://BUCKET/PREFIX`, `file:///DIR`); none by default.
    pub store: Option<String>,
    /// object_store's options for `store` (`aws_endpoint`, `aws_region`, `aws_allow_http`, …).
    pub store_options: std::collections::BTreeMap<String, String>,
}

impl Default for OpsConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        OpsConfig {
            dir: PathBuf::new(),
            sync_limit_bytes: 512 << 20,
            max_output_bytes: 2 << 30,
            workers: 2,
            threads: cores,
            memory_cache_bytes: 256 << 20,
            disk_cache_bytes: 10 << 30,
            sync_wait: Duration::from_secs(20),
            test_compute_delay: Duration::ZERO,
            store: None,
            store_options: Default::default(),
        }
    }
}

/// What a job runs.
enum Work {
    /// A planned request, not started yet.
    Plan(Box<Plan>, Key, Arc<Collection>, Arc<Dataset>),
    /// A computation already running (a synchronous request that took too long).
    Started(tokio::task::JoinHandle<Result<Bytes, Problem>>, Key),
    /// A job of an earlier process: worked out again from its recorded inputs.
    Replay,
}

/// Writes a result as NetCDF-4. The gateway links no netCDF-C, so the binary provides this.
pub trait NetcdfWriter: Send + Sync {
    fn write(&self, out: &Output) -> Result<Vec<u8>, String>;
}

/// What a request led to.
pub enum Answer {
    Result { key: Key, bytes: Bytes, hit: bool, format: Format, compute_ms: u64 },
    Job(Box<JobRecord>),
}

type Shared = Arc<OnceCell<Result<Bytes, Problem>>>;

/// Bumped whenever a change makes a result differ from what an earlier build cached.
const OUTPUT_VERSION: u32 = 1;

/// What a cached result is, stored with it: the collection it came from (whose read policy
/// guards `/results` and the `results` bucket) and its format.
#[derive(Clone, Debug)]
pub struct Stored {
    pub bucket: String,
    pub format: Format,
}

/// A result with its [`Stored`] header: 4 bytes of header length, the header as JSON, the bytes.
fn seal(stored: &Stored, bytes: &Bytes) -> Bytes {
    let header = serde_json::to_vec(&json!({"bucket": stored.bucket, "format": stored.format.ext()}))
        .expect("JSON values serialize");
    let mut out = Vec::with_capacity(4 + header.len() + bytes.len());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(bytes);
    Bytes::from(out)
}

/// The header and the result of a sealed blob.
pub fn unseal(blob: &Bytes) -> Option<(Stored, Bytes)> {
    let n = u32::from_le_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let header: Value = serde_json::from_slice(blob.get(4..4 + n)?).ok()?;
    let stored = Stored {
        bucket: header.get("bucket")?.as_str()?.to_string(),
        format: Format::parse(header.get("format")?.as_str()?)?,
    };
    Some((stored, blob.slice(4 + n..)))
}

/// What a computation about to start works on (see [`Ops::compute_in_time`]).
struct Computing {
    key: Key,
    collection: Arc<Collection>,
    dataset: Arc<Dataset>,
    run: Arc<Run>,
    /// The day its compute time is charged to.
    day: String,
}

pub struct Ops {
    pub config: OpsConfig,
    pub cache: ResultCache,
    pub jobs: JobStore,
    /// Results and compute leases shared with other replicas, if configured.
    shared: Option<SharedStore>,
    writer: Arc<dyn NetcdfWriter>,
    inflight: Mutex<HashMap<Key, Shared>>,
    pool: Arc<Semaphore>,
    running: Mutex<HashMap<String, Arc<Run>>>,
}

/// A served dataset read the way S3 clients read it.
struct DatasetSource<'a> {
    sources: &'a Sources,
    dataset: &'a Dataset,
}

impl ChunkSource for DatasetSource<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SourceError> {
        let Some(object) = self.dataset.object(key) else { return Ok(None) };
        store::object_bytes(self.sources, self.dataset, &object).map(Some).map_err(|outcome| match outcome {
            ReadOutcome::Stale(why) => {
                tracing::warn!("{why}");
                SourceError::Stale(
                    "the source of this dataset changed since it was indexed; it is served again once its catalog is brought up to date"
                        .into(),
                )
            }
            ReadOutcome::Failed(why) => {
                tracing::error!("{key}: {why}");
                SourceError::Failed(format!(
                    "{key}: could not be read or decoded from this dataset's sources; the server log has the details"
                ))
            }
            ReadOutcome::Unavailable(why) => {
                tracing::warn!("{key}: {why}");
                SourceError::Unavailable(format!("{key}: a source of this dataset cannot be reached now; try again later"))
            }
            ReadOutcome::NotCached => unreachable!("object_bytes waits for the disk"),
        })
    }
}

/// Lowers the CPU priority of the calling thread, so computations yield to S3 serving.
fn lower_priority() {
    // SAFETY: setpriority on the calling thread (who = 0 under Linux's per-thread nice) with
    // plain integer arguments; failure only leaves the priority unchanged.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

impl Ops {
    /// Opens the cache and job store under `config.dir`.
    pub fn open(config: OpsConfig, writer: Arc<dyn NetcdfWriter>) -> std::io::Result<Ops> {
        let cache = ResultCache::open(&config.dir.join("results"), config.memory_cache_bytes, config.disk_cache_bytes)?;
        let jobs = JobStore::open(&config.dir.join("jobs"))?;
        let pool = Arc::new(Semaphore::new(config.workers.max(1)));
        let shared = match &config.store {
            Some(url) => Some(SharedStore::open(url, &config.store_options).map_err(std::io::Error::other)?),
            None => None,
        };
        Ok(Ops {
            config,
            cache,
            shared,
            jobs,
            writer,
            inflight: Mutex::new(HashMap::new()),
            pool,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Shows the operation counters from zero, so that a first increase is visible as one.
    pub fn register_metrics(app: &State) {
        for p in ["subset", "average"] {
            app.metrics.add("zarrgate_ops_computations_total", &[("process", p)], 0);
        }
        for t in ["memory", "disk", "store"] {
            app.metrics.add("zarrgate_ops_cache_hits_total", &[("tier", t)], 0);
        }
        app.metrics.add("zarrgate_ops_cache_corrupt_total", &[], 0);
    }

    /// With a shared store: every second, shares this replica's jobs (and a heartbeat for those
    /// it runs), copies the others' records, and takes over jobs whose runner stopped beating
    /// (a conditional update of the record: one replica wins).
    pub fn share_jobs(self: &Arc<Self>, app: &Arc<State>) {
        if self.shared.is_none() {
            return;
        }
        let (ops, app) = (self.clone(), app.clone());
        tokio::spawn(async move {
            let mut shared_versions: HashMap<String, (Status, u8, i64)> = HashMap::new();
            loop {
                tokio::time::sleep(shared::JOB_BEAT).await;
                ops.sync_jobs(&app, &mut shared_versions).await;
            }
        });
    }

    async fn sync_jobs(self: &Arc<Self>, app: &Arc<State>, pushed: &mut HashMap<String, (Status, u8, i64)>) {
        let shared = self.shared.as_ref().expect("called with a shared store");
        let now = unix_now();
        let running: Vec<String> = self.running.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        let remote = match shared.list_jobs().await {
            Ok(remote) => remote,
            Err(e) => {
                tracing::debug!("listing shared jobs: {e}");
                return;
            }
        };
        // Ours: share what changed, and beat for what we run.
        for mut job in self.jobs.list() {
            let mine = running.contains(&job.id);
            let seen = (job.status, job.progress, job.updated);
            if !mine && pushed.get(&job.id) == Some(&seen) {
                continue;
            }
            if let Some((theirs, _)) = remote.get(&job.id) {
                if !mine && theirs.updated >= job.updated {
                    continue;
                }
                if mine && theirs.status == Status::Dismissed && job.status != Status::Dismissed {
                    // dismissed through another replica
                    let _ = self.dismiss(&job.id).await;
                    continue;
                }
            }
            if mine {
                job.runner = Some(shared.me().to_string());
                job.heartbeat = Some(now);
                if let Some(run) = self.running.lock().unwrap_or_else(|p| p.into_inner()).get(&job.id) {
                    job.progress = run.progress().min(99);
                }
            }
            if shared.put_job(&job).await.is_ok() {
                pushed.insert(job.id.clone(), seen);
            }
        }
        // Theirs: keep a copy for status requests here, and take over the abandoned ones.
        for (id, (theirs, version)) in remote {
            if running.contains(&id) {
                continue;
            }
            let local = self.jobs.get(&id);
            let abandoned =
                !theirs.status.is_final() && theirs.heartbeat.unwrap_or(theirs.updated) + shared::JOB_STALE < now;
            if abandoned {
                let mut taken = theirs.clone();
                taken.runner = Some(shared.me().to_string());
                taken.heartbeat = Some(now);
                taken.status = Status::Accepted;
                if shared.take_over_job(&taken, version).await.unwrap_or(false) {
                    tracing::info!("taking over job {} (its replica stopped)", id);
                    if self.save_job(taken.clone()).await {
                        let run = Arc::new(Run::new(self.config.threads));
                        self.spawn_job(app.clone(), taken, Work::Replay, None, run);
                    }
                }
                continue;
            }
            if local.is_none_or(|l| theirs.updated > l.updated || (theirs.status.is_final() && !l.status.is_final())) {
                let seen = (theirs.status, theirs.progress, theirs.updated);
                if self.save_job(theirs).await {
                    pushed.insert(id, seen);
                }
            }
        }
    }

    /// Saves a record as it is, on the blocking pool.
    async fn save_job(self: &Arc<Self>, job: JobRecord) -> bool {
        let ops = self.clone();
        let saved = tokio::task::spawn_blocking(move || ops.jobs.save(&job)).await;
        match saved.map_err(std::io::Error::other).and_then(|r| r) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("cannot save a shared job: {e}");
                false
            }
        }
    }

    /// Runs again the jobs a previous process left accepted or running.
    pub fn resume_jobs(self: &Arc<Self>, app: &Arc<State>) {
        for job in self.jobs.unfinished() {
            tracing::info!("resuming job {} ({})", job.id, job.process);
            let run = Arc::new(Run::new(self.config.threads));
            self.spawn_job(app.clone(), job, Work::Replay, None, run);
        }
    }

    /// The collection and dataset a request names.
    fn resolve(app: &State, req: &Request) -> Result<(Arc<Collection>, Arc<Dataset>), Problem> {
        let collection = app.collections.get(&req.bucket).ok_or_else(|| Problem {
            argument: Some("dataset".into()),
            ..Problem::not_found(format!("there is no collection {:?}", req.bucket))
        })?;
        let not_found = || Problem {
            argument: Some("dataset".into()),
            ..Problem::not_found(format!("collection {} has no dataset {:?}", req.bucket, req.dataset))
        };
        let cached = collection
            .dataset(&req.dataset)
            .map_err(|why| Problem::new(503, "unavailable", "Catalog unavailable", why))?
            .ok_or_else(not_found)?;
        match &cached.entry {
            Entry::Ready { dataset, .. } => Ok((collection.clone(), dataset.clone())),
            Entry::Unavailable(why) => Err(Problem::new(503, "unavailable", "Dataset unavailable", why.clone())),
        }
    }

    /// Refuses a dataset whose source files changed since indexing (and starts the re-index):
    /// its cache key would still name the old result.
    async fn check_fresh(
        app: &Arc<State>,
        collection: &Arc<Collection>,
        dataset: &Arc<Dataset>,
    ) -> Result<(), Problem> {
        let verify = |app: &State, dataset: &Dataset| -> Result<(), ReadError> {
            dataset.sources.iter().try_for_each(|s| app.sources.verify(&s.path, s.fingerprint))
        };
        let checked = if dataset.remote {
            // Asks the network: not on a thread of the runtime.
            let (app, dataset) = (app.clone(), dataset.clone());
            tokio::task::spawn_blocking(move || verify(&app, &dataset))
                .await
                .unwrap_or_else(|e| Err(ReadError::Unavailable(format!("checking the sources failed: {e}"))))
        } else {
            verify(app, dataset)
        };
        match checked {
            Ok(()) => Ok(()),
            Err(e @ ReadError::Stale { .. }) => {
                collection.source_changed();
                tracing::warn!("{e}");
                Err(source_problem(SourceError::Stale(format!(
                    "the source of this dataset changed since it was indexed; {}",
                    collection.stale_note()
                ))))
            }
            Err(e) => {
                tracing::warn!("{e}");
                Err(source_problem(stale_or_failed(&e)))
            }
        }
    }

    /// The cache key: the canonical request and what the dataset was built from.
    fn key(req: &Request, dataset: &Dataset) -> Key {
        let mut h = blake3::Hasher::new();
        // A new release may compute or write results differently: its results are new entries.
        h.update(b"zarrgate-ops\0");
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update(&OUTPUT_VERSION.to_le_bytes());
        h.update(req.canonical().to_string().as_bytes());
        for s in &dataset.sources {
            h.update(s.path.to_string_lossy().as_bytes());
            h.update(&s.fingerprint.to_bytes());
        }
        if let Some(meta) = dataset.objects.get(".zmetadata") {
            h.update(meta.etag.as_bytes());
        }
        Key(*h.finalize().as_bytes())
    }

    /// Looks a key up on the blocking pool (a disk hit reads and hashes the file), counting hits
    /// and corrupt files. Gives the stored result with what it is.
    async fn lookup(self: &Arc<Self>, app: &State, key: &Key) -> Option<(Stored, Bytes)> {
        let (ops, k) = (self.clone(), *key);
        let found = tokio::task::spawn_blocking(move || ops.cache.get(&k)).await.unwrap_or(Lookup::Miss);
        match found {
            Lookup::Hit(blob, tier) => {
                let tier = if tier == Tier::Memory { "memory" } else { "disk" };
                app.metrics.add("zarrgate_ops_cache_hits_total", &[("tier", tier)], 1);
                unseal(&blob)
            }
            Lookup::Corrupt => {
                tracing::warn!("cached result {} failed its hash check; recomputing", key.hex());
                app.metrics.add("zarrgate_ops_cache_corrupt_total", &[], 1);
                None
            }
            Lookup::Miss => self.lookup_shared(app, key).await,
        }
    }

    /// A result another replica stored in the shared store, kept in this one's cache too.
    async fn lookup_shared(self: &Arc<Self>, app: &State, key: &Key) -> Option<(Stored, Bytes)> {
        let shared = self.shared.as_ref()?;
        let blob = match shared.get(key).await {
            Ok(found) => found?,
            Err(e) => {
                tracing::debug!("reading shared result {}: {e}", key.hex());
                return None;
            }
        };
        app.metrics.add("zarrgate_ops_cache_hits_total", &[("tier", "store")], 1);
        let (ops, k, b) = (self.clone(), *key, blob.clone());
        let _ = tokio::task::spawn_blocking(move || ops.cache.put(&k, b)).await;
        unseal(&blob)
    }

    /// Copies a result from the shared store into this replica's cache if it is not there
    /// (a job that another replica finished, a `/results/HASH` link it handed out).
    pub async fn pull_shared(self: &Arc<Self>, key: &Key) {
        let Some(shared) = &self.shared else { return };
        let (ops, k) = (self.clone(), *key);
        let have = tokio::task::spawn_blocking(move || ops.cache.etag(&k).is_some()).await.unwrap_or(false);
        if have {
            return;
        }
        if let Ok(Some(blob)) = shared.get(key).await {
            let (ops, k) = (self.clone(), *key);
            let _ = tokio::task::spawn_blocking(move || ops.cache.put(&k, blob)).await;
        }
    }

    /// [`Ops::pull_shared`] for the result of a finished job.
    pub async fn pull_result_of(self: &Arc<Self>, job: &JobRecord) {
        if let Some(key) = job.result_key.as_deref().and_then(Key::from_hex) {
            self.pull_shared(&key).await;
        }
    }

    /// True unless a shared store is configured and cannot be reached now (for `/readyz`).
    pub fn store_reachable(&self) -> bool {
        self.shared.as_ref().is_none_or(SharedStore::reachable)
    }

    /// Answers a request: from the cache, by computing it now, or as a new job. The pipeline,
    /// top to bottom (the HTTP layer has parsed the request and checked the caller may use the
    /// collection): resolve the dataset and check its sources; look the result up by its
    /// content address; plan (what to read, how large the result); refuse what is too large;
    /// take a compute slot under the caller's quota; then enqueue a job, or compute and answer
    /// in time (else the answer becomes a job that waits for the same computation).
    pub async fn request(
        self: &Arc<Self>,
        app: &Arc<State>,
        who: &Principal,
        req: Request,
        inputs: Value,
        prefer_async: bool,
    ) -> Result<Answer, Problem> {
        let (collection, dataset) = Self::resolve(app, &req)?;
        Self::check_fresh(app, &collection, &dataset).await?;
        let key = Self::key(&req, &dataset);
        let format = req.format;
        if let Some((_, bytes)) = self.lookup(app, &key).await {
            return Ok(Answer::Result { key, bytes, hit: true, format, compute_ms: 0 });
        }
        let plan = self.plan(app, &collection, &dataset, req).await?;
        self.refuse_too_large(&plan)?;
        let day = day_of(unix_now());
        app.auth.quotas.begin_compute(who, &day).map_err(|e| exceeded_problem(&e))?;
        let run = Arc::new(Run::new(self.config.threads));
        if prefer_async || plan.read_bytes > self.config.sync_limit_bytes {
            let job = self.record_job(app, who, &plan.request, inputs, &day).await?;
            let work = Work::Plan(Box::new(plan), key, collection, dataset);
            self.spawn_job(app.clone(), job.clone(), work, Some(who.clone()), run);
            return Ok(Answer::Job(Box::new(job)));
        }
        let computing = Computing { key, collection, dataset, run, day };
        self.compute_in_time(app, who, plan, inputs, computing).await
    }

    /// A result larger than `ops.max_output_bytes`, or a computation that would need more
    /// working memory, is refused (413) before anything is read.
    fn refuse_too_large(&self, plan: &Plan) -> Result<(), Problem> {
        let memory = plan.work_bytes.saturating_mul(self.config.threads as u64);
        let limit = self.config.max_output_bytes;
        if plan.output_bytes <= limit && memory <= limit {
            return Ok(());
        }
        Err(Problem::new(
            413,
            "too-large",
            "Result too large",
            format!(
                "the result would need about {} MB (result {} MB, working memory {} MB), above this server's limit of {} MB (ops.max_output_bytes); select less",
                plan.output_bytes.max(memory) >> 20,
                plan.output_bytes >> 20,
                memory >> 20,
                limit >> 20
            ),
        ))
    }

    /// Computes now and answers with the result, unless that takes longer than
    /// `ops.sync_wait`: then the answer is a job that waits for this same computation.
    async fn compute_in_time(
        self: &Arc<Self>,
        app: &Arc<State>,
        who: &Principal,
        plan: Plan,
        inputs: Value,
        c: Computing,
    ) -> Result<Answer, Problem> {
        let Computing { key, collection, dataset, run, day } = c;
        let started = Instant::now();
        let (request, format) = (plan.request.clone(), plan.request.format);
        let mut task = {
            let (ops, app, run) = (self.clone(), app.clone(), run.clone());
            tokio::spawn(async move { ops.compute(&app, key, plan, &collection, &dataset, run).await })
        };
        if let Ok(joined) = tokio::time::timeout(self.config.sync_wait, &mut task).await {
            let result = joined.unwrap_or_else(|e| Err(Problem::internal(format!("the computation failed: {e}"))));
            let compute_ms = started.elapsed().as_millis() as u64;
            app.auth.quotas.end_compute(who, &day, compute_ms);
            return Ok(Answer::Result { key, bytes: result?, hit: false, format, compute_ms });
        }
        // Still computing: the answer becomes a job that waits for this computation.
        let job = match self.record_job(app, who, &request, inputs, &day).await {
            Ok(job) => job,
            Err(p) => {
                let (app, who) = (app.clone(), who.clone());
                tokio::spawn(async move {
                    let _ = task.await;
                    app.auth.quotas.end_compute(&who, &day, started.elapsed().as_millis() as u64);
                });
                return Err(p);
            }
        };
        self.spawn_job(app.clone(), job.clone(), Work::Started(task, key), Some(who.clone()), run);
        Ok(Answer::Job(Box::new(job)))
    }

    /// Writes a new job record (before its 201/202 goes out). On failure the compute slot taken
    /// for it is given back.
    async fn record_job(
        self: &Arc<Self>,
        app: &State,
        who: &Principal,
        request: &Request,
        inputs: Value,
        day: &str,
    ) -> Result<JobRecord, Problem> {
        if !self.store_reachable() {
            app.auth.quotas.end_compute(who, day, 0);
            return Err(Problem {
                retry_after: Some(5),
                ..Problem::new(
                    503,
                    "store-unavailable",
                    "Jobs cannot be accepted now",
                    "the object store that replicas share results through cannot be reached; \
                     smaller requests are still answered at once",
                )
            });
        }
        let now = unix_now();
        let job = JobRecord {
            id: JobStore::new_id(),
            process: request.process.id().to_string(),
            request: json!({"inputs": inputs, "canonical": request.canonical()}),
            format: request.format.ext().to_string(),
            owner: who.owner_name(),
            status: Status::Accepted,
            progress: 0,
            created: now,
            updated: now,
            result_key: None,
            error: None,
            runner: self.shared.as_ref().map(|s| s.me().to_string()),
            heartbeat: self.shared.is_some().then_some(now),
        };
        let saved = {
            let (ops, job) = (self.clone(), job.clone());
            tokio::task::spawn_blocking(move || ops.jobs.save(&job)).await
        };
        if let Err(e) = saved.map_err(std::io::Error::other).and_then(|r| r) {
            tracing::error!("cannot record job {}: {e}", job.id);
            app.auth.quotas.end_compute(who, day, 0);
            return Err(Problem::internal("the job could not be recorded; the server log has the details"));
        }
        // Shared before it is answered: a replica that dies now leaves it to another.
        if let Some(shared) = &self.shared {
            if let Err(e) = shared.put_job(&job).await {
                tracing::error!("cannot share job {}: {e}", job.id);
                let _ = self
                    .change(&job.id, |j| {
                        j.status = Status::Failed;
                        j.updated = unix_now();
                        true
                    })
                    .await;
                app.auth.quotas.end_compute(who, day, 0);
                return Err(Problem::internal("the job could not be recorded; the server log has the details"));
            }
        }
        app.metrics.add("zarrgate_ops_jobs_total", &[("status", "accepted")], 1);
        Ok(job)
    }

    /// Plans a request on the blocking pool (it reads metadata and coordinates).
    async fn plan(
        &self,
        app: &Arc<State>,
        collection: &Arc<Collection>,
        dataset: &Arc<Dataset>,
        req: Request,
    ) -> Result<Plan, Problem> {
        let (app2, ds) = (app.clone(), dataset.clone());
        let planned = tokio::task::spawn_blocking(move || {
            let source = DatasetSource { sources: &app2.sources, dataset: &ds };
            let view = StoreView::open(&source).map_err(source_problem)?;
            ops::plan(view, &source, req)
        })
        .await
        .map_err(|e| Problem::internal(format!("planning failed: {e}")))?;
        if planned.as_ref().err().is_some_and(|p| p.status == 503) {
            collection.source_changed();
        }
        planned
    }

    /// Computes a planned request once, however many ask for it at the same time.
    async fn compute(
        self: &Arc<Self>,
        app: &Arc<State>,
        key: Key,
        plan: Plan,
        collection: &Arc<Collection>,
        dataset: &Arc<Dataset>,
        run: Arc<Run>,
    ) -> Result<Bytes, Problem> {
        let cell: Shared = self.inflight.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone();
        let stored = Stored { bucket: collection.bucket.clone(), format: plan.request.format };
        let result = cell
            .get_or_init(|| async move {
                if let Some((_, bytes)) = self.lookup(app, &key).await {
                    return Ok(bytes);
                }
                // Across replicas: one computes (it holds the lease), the others wait for its
                // result in the shared store.
                let leased = match self.wait_for_lease(app, &key).await {
                    Ok(leased) => leased,
                    Err(bytes) => return Ok(bytes),
                };
                let renewing = leased.then(|| {
                    let ops = self.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(shared::LEASE / 3).await;
                            ops.shared.as_ref().expect("leased from it").renew(&key).await;
                        }
                    })
                });
                let result = self.compute_now(app, plan, dataset, run).await;
                if let Some(task) = renewing {
                    task.abort();
                }
                if let Ok(bytes) = &result {
                    let (ops, sealed) = (self.clone(), seal(&stored, bytes));
                    let local = sealed.clone();
                    let put = tokio::task::spawn_blocking(move || ops.cache.put(&key, local)).await;
                    if let Err(e) = put.map_err(std::io::Error::other).and_then(|r| r) {
                        tracing::error!("cannot store result {}: {e}", key.hex());
                    }
                    if let Some(shared) = &self.shared {
                        if let Err(e) = shared.put(&key, &sealed).await {
                            tracing::warn!("result {} computed but not shared: {e}", key.hex());
                        }
                    }
                }
                if leased {
                    self.shared.as_ref().expect("leased from it").release(&key).await;
                }
                result
            })
            .await
            .clone();
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&key);
        }
        if result.as_ref().err().is_some_and(|p| p.status == 503) {
            collection.source_changed();
        }
        result
    }

    /// With a shared store: takes the lease on computing `key` (`Ok(true)`), or waits for the
    /// replica that holds it and gives its result (`Err(bytes)`). `Ok(false)` when there is no
    /// shared store, or it cannot be reached: then this replica computes without a lease.
    async fn wait_for_lease(self: &Arc<Self>, app: &State, key: &Key) -> Result<bool, Bytes> {
        let Some(shared) = &self.shared else { return Ok(false) };
        loop {
            match shared.lease(key).await {
                Ok(Lease::Mine) => {
                    // The holder before may have stored the result and released just now.
                    if let Some((_, bytes)) = self.lookup_shared(app, key).await {
                        shared.release(key).await;
                        return Err(bytes);
                    }
                    return Ok(true);
                }
                Ok(Lease::Held { .. }) => {
                    tokio::time::sleep(shared::POLL).await;
                    if let Some((_, bytes)) = self.lookup(app, key).await {
                        return Err(bytes);
                    }
                }
                Err(e) => {
                    tracing::warn!("the shared store cannot be reached ({e}): computing {} here", key.hex());
                    return Ok(false);
                }
            }
        }
    }

    /// Runs the computation on the compute pool and encodes the result.
    async fn compute_now(
        &self,
        app: &Arc<State>,
        plan: Plan,
        dataset: &Arc<Dataset>,
        run: Arc<Run>,
    ) -> Result<Bytes, Problem> {
        let _permit = self.pool.clone().acquire_owned().await.expect("the compute pool is never closed");
        if !self.config.test_compute_delay.is_zero() {
            tokio::time::sleep(self.config.test_compute_delay).await;
        }
        app.metrics.add("zarrgate_ops_computations_total", &[("process", plan.request.process.id())], 1);
        let (app2, ds, writer) = (app.clone(), dataset.clone(), self.writer.clone());
        // A thread of its own, at lower priority, so that the threads serving S3 never inherit
        // the lower priority and always come first.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new().name("zarrgate-ops".into()).spawn(move || {
            lower_priority();
            let source = DatasetSource { sources: &app2.sources, dataset: &ds };
            let result = ops::execute(&plan, &source, &run)
                .and_then(|out| encode(&out, &plan.request, writer.as_ref()).map(Bytes::from));
            let _ = tx.send(result);
        });
        spawned.map_err(|e| Problem::internal(format!("cannot start a compute thread: {e}")))?;
        rx.await
            .map_err(|_| Problem::internal("the computation stopped unexpectedly; the server log has the details"))?
    }

    /// Starts a job's task: `work` is what the request already worked out, or a replay of a
    /// resumed job. `who` is charged for the compute time.
    fn spawn_job(self: &Arc<Self>, app: Arc<State>, job: JobRecord, work: Work, who: Option<Principal>, run: Arc<Run>) {
        let ops = self.clone();
        self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(job.id.clone(), run.clone());
        tokio::spawn(async move {
            let id = job.id.clone();
            let started = ops.change(&id, |j| {
                if j.status != Status::Accepted && j.status != Status::Running {
                    return false;
                }
                j.status = Status::Running;
                j.updated = unix_now();
                true
            });
            if started.await.is_none_or(|j| j.status != Status::Running) {
                ops.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                return;
            }
            let started = Instant::now();
            let outcome = match work {
                Work::Plan(plan, key, collection, dataset) => {
                    ops.compute(&app, key, *plan, &collection, &dataset, run.clone()).await.map(|_| key)
                }
                Work::Started(task, key) => task
                    .await
                    .unwrap_or_else(|e| Err(Problem::internal(format!("the computation failed: {e}"))))
                    .map(|_| key),
                Work::Replay => ops.replay(&app, &job, run.clone()).await,
            };
            if let Some(who) = who {
                app.auth.quotas.end_compute(&who, &day_of(unix_now()), started.elapsed().as_millis() as u64);
            }
            ops.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            let finished = ops.change(&id, move |j| {
                if j.status.is_final() {
                    return false; // dismissed meanwhile
                }
                match outcome {
                    Ok(key) => {
                        j.status = Status::Successful;
                        j.progress = 100;
                        j.result_key = Some(key.hex());
                    }
                    Err(p) => {
                        j.status = Status::Failed;
                        j.error = Some(p.to_json());
                    }
                }
                j.updated = unix_now();
                true
            });
            if let Some(j) = finished.await.filter(|j| j.status != Status::Dismissed) {
                let status = if j.status == Status::Successful { "successful" } else { "failed" };
                app.metrics.add("zarrgate_ops_jobs_total", &[("status", status)], 1);
            }
        });
    }

    /// Changes a job record on the blocking pool (it fsyncs); the record after the change.
    async fn change(
        self: &Arc<Self>,
        id: &str,
        change: impl FnOnce(&mut JobRecord) -> bool + Send + 'static,
    ) -> Option<JobRecord> {
        let (ops, id) = (self.clone(), id.to_string());
        let done = tokio::task::spawn_blocking(move || ops.jobs.update(&id, change)).await;
        match done.map_err(std::io::Error::other).and_then(|r| r) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!("cannot save a job: {e}");
                None
            }
        }
    }

    /// Works out and computes a resumed job from its recorded inputs.
    async fn replay(self: &Arc<Self>, app: &Arc<State>, job: &JobRecord, run: Arc<Run>) -> Result<Key, Problem> {
        let process =
            ops::Process::parse(&job.process).ok_or_else(|| Problem::internal("the job names an unknown process"))?;
        let inputs = job.request.get("inputs").and_then(Value::as_object).cloned().unwrap_or_default();
        let req = Request::parse(process, inputs.iter().map(|(k, v)| (k.as_str(), Raw::Json(v))))?;
        let (collection, dataset) = Self::resolve(app, &req)?;
        let key = Self::key(&req, &dataset);
        if self.lookup(app, &key).await.is_some() {
            return Ok(key);
        }
        let plan = self.plan(app, &collection, &dataset, req).await?;
        self.compute(app, key, plan, &collection, &dataset, run).await.map(|_| key)
    }

    /// A job's record with its live progress.
    pub fn job(&self, id: &str) -> Option<JobRecord> {
        let mut job = self.jobs.get(id)?;
        if let Some(run) = self.running.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            if job.status == Status::Running {
                job.progress = run.progress().min(99);
            }
        }
        Some(job)
    }

    /// Dismisses a job. A computation it started runs on into the cache, because identical
    /// requests may share it; the job itself will not report it.
    pub async fn dismiss(self: &Arc<Self>, id: &str) -> Option<JobRecord> {
        self.change(id, |j| {
            if j.status == Status::Dismissed {
                return false;
            }
            j.status = Status::Dismissed;
            j.updated = unix_now();
            true
        })
        .await
    }
}

/// A read error in words for clients: no server paths (the log has them).
fn stale_or_failed(e: &ReadError) -> SourceError {
    match e {
        ReadError::Stale { .. } => SourceError::Stale(
            "the source of this dataset changed since it was indexed; it is served again once its catalog is brought up to date".into(),
        ),
        ReadError::Unavailable(_) => {
            SourceError::Unavailable("a source of this dataset cannot be reached now; try again later".into())
        }
        ReadError::Io { .. } | ReadError::NotCached { .. } => SourceError::Failed(
            "a source file of this dataset could not be read; the server log has the details".into(),
        ),
    }
}

fn source_problem(e: SourceError) -> Problem {
    match e {
        SourceError::Stale(why) => Problem::new(503, "source-changed", "Source changed", why),
        SourceError::Failed(why) => Problem::internal(why),
        SourceError::Unavailable(why) => Problem::new(503, "source-unavailable", "Source unavailable", why),
    }
}

/// A spent quota, with the time until it would admit the request.
pub fn exceeded_problem(e: &Exceeded) -> Problem {
    let detail = format!("the quota on {} is used up; retry in {} s", e.what, e.retry_after);
    Problem {
        retry_after: Some(u32::try_from(e.retry_after).unwrap_or(u32::MAX)),
        ..Problem::new(429, "quota", "Quota exceeded", detail)
    }
}

/// Encodes a result in the requested format.
fn encode(out: &Output, request: &Request, writer: &dyn NetcdfWriter) -> Result<Vec<u8>, Problem> {
    match request.format {
        Format::Nc => writer.write(out).map_err(|e| {
            tracing::error!("writing a NetCDF result failed: {e}");
            Problem::internal("writing the NetCDF result failed; the server log has the details")
        }),
        Format::Json => ops::output::to_json(out),
        Format::Csv => ops::output::to_csv(out),
        Format::Zarr => Ok(pack(&ops::output::to_zarr(out))),
        Format::Png => {
            let (w, h) = request.size.unwrap_or(ops::picture::DEFAULT_SIZE);
            ops::picture::to_png(out, w, h)
        }
    }
}

/// Several files in one blob: a JSON index of `key → [offset, length]` (its length first, as
/// 8 little-endian bytes), then the files.
pub fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut index = serde_json::Map::new();
    let mut offset = 0u64;
    for (k, b) in files {
        index.insert(k.clone(), json!([offset, b.len()]));
        offset += b.len() as u64;
    }
    let index = serde_json::to_vec(&index).expect("JSON values serialize");
    let mut out = (index.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&index);
    for (_, b) in files {
        out.extend_from_slice(b);
    }
    out
}

/// The files of a [`pack`], by key: `(key, start, end)` into the blob, sorted by key.
pub fn unpack(blob: &[u8]) -> Option<Vec<(String, usize, usize)>> {
    let n = u64::from_le_bytes(blob.get(..8)?.try_into().ok()?) as usize;
    let index: serde_json::Map<String, Value> = serde_json::from_slice(blob.get(8..8 + n)?).ok()?;
    let base = 8 + n;
    let mut out = Vec::new();
    for (k, v) in index {
        let (o, l) = (v.get(0)?.as_u64()? as usize, v.get(1)?.as_u64()? as usize);
        if base + o + l > blob.len() {
            return None;
        }
        out.push((k, base + o, base + o + l));
    }
    out.sort();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_round_trip() {
        let files = vec![("b/0".to_string(), vec![1, 2, 3]), (".zgroup".to_string(), b"{}".to_vec())];
        let blob = pack(&files);
        let index = unpack(&blob).unwrap();
        assert_eq!(index[0].0, ".zgroup");
        assert_eq!(&blob[index[1].1..index[1].2], &[1, 2, 3]);
        assert!(unpack(&blob[..blob.len() - 1]).is_none());
    }
}

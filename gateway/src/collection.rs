//! A collection: one bucket, served from one catalog database.
//!
//! # Lifecycle
//! - Opening reads no reference set: a dataset is loaded from the catalog on its first
//!   request and kept in a cache bounded in bytes (`--cache-memory`); an evicted dataset is
//!   loaded again on its next request. Listings read the catalog's index of dataset prefixes
//!   page by page, and load a dataset only when the listing shows keys inside it.
//! - Every committed write to the catalog increments its generation, which a background
//!   thread polls (every [`POLL`]). A cached dataset is checked against its row once per
//!   generation: unchanged, it is kept; changed, it is loaded again; removed, it becomes a
//!   tombstone. So a running gateway sees new, changed and removed datasets within a second
//!   of the index run that wrote them.
//! - A failed row is kept as [`Entry::Unavailable`], so its keys answer 503 with the indexing
//!   error rather than 404, which Zarr would read as fill values.
//! - When a read finds a source changed ([`crate::source::ReadError::Stale`]), the collection
//!   asks its [`Reindex`] hook (if any) to bring the catalog up to date, in the background and
//!   one run at a time. Until then the dataset answers 503.
//! - A dataset removed from the catalog while this gateway holds it stays as a tombstone (503,
//!   "removed") for as long as it is cached, so a client that opened it does not read fill
//!   values for its chunks; a removed dataset the gateway does not hold answers 404.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use zarrgate_core::catalog::db::published;
use zarrgate_core::catalog::{packed, CatalogDb, CatalogError, EntryStatus, ItemQuery, ItemsExtent, Kind};
use zarrgate_core::error_chain;
use zarrgate_core::join::doc::JoinDoc;

use crate::auth::Policy;
use crate::dataset::{version_of, Body, Dataset, Object, Source};
use crate::store::list::{self, Item, KeySpace, ListPage, ListQuery};
use crate::store::{Bucket, Found, Listed, Lookup};

/// How often the catalog's generation is read.
pub const POLL: Duration = Duration::from_millis(500);
/// Bytes of loaded datasets kept by default.
pub const DEFAULT_CACHE_MEMORY: u64 = 256 << 20;
/// Idle catalog connections kept for reuse.
const POOL: usize = 8;
/// Dataset prefixes read from the catalog per query while listing, at most.
const PAGE: usize = 256;

/// Brings a catalog up to date with its data directory (the CLI runs the indexer).
pub trait Reindex: Send + Sync {
    fn refresh(&self) -> Result<(), String>;
}

#[derive(Debug)]
pub enum Entry {
    Ready {
        /// The source fingerprint (a file) or the inputs digest (a join) it was built from.
        version: String,
        dataset: Arc<Dataset>,
    },
    /// Keys of this dataset answer 503 with this reason; it is not listed.
    Unavailable(String),
}

/// A dataset as loaded, and the catalog generation it was last checked against.
#[derive(Debug)]
pub struct Cached {
    pub entry: Entry,
    kind: Kind,
    /// The row's version: what decides whether the cached dataset is current.
    row: Option<String>,
    checked: AtomicU64,
    weight: u32,
}

/// What the poller keeps up to date.
struct Shared {
    generation: AtomicU64,
    view: RwLock<Arc<View>>,
    /// The database file connections should read: `catalog.db`, or the current snapshot of a
    /// published catalog (`zarrgate publish`), which the poller follows.
    file: RwLock<PathBuf>,
    /// The poller's last look at the catalog succeeded (its directory is there and its
    /// generation could be read), for `/readyz`.
    readable: AtomicBool,
}

/// The catalog's settings and joins at one generation.
struct View {
    root: PathBuf,
    joins: BTreeSet<String>,
}

pub struct Collection {
    pub bucket: String,
    /// Who may read its objects.
    pub read: Policy,
    /// Who may run operations on it.
    pub compute: Policy,
    /// Which web pages may read it from a browser.
    pub cors: crate::cors::Cors,
    pub catalog_dir: PathBuf,
    pub created: SystemTime,
    shared: Arc<Shared>,
    pool: Mutex<Vec<CatalogDb>>,
    cache: moka::sync::Cache<String, Arc<Cached>>,
    reindex: Option<Arc<dyn Reindex>>,
    reindexing: AtomicBool,
    /// Datasets loaded from the catalog (first requests, and again after eviction or change).
    loads: AtomicU64,
    /// Datasets whose changed source was logged (a line each, not one per request).
    stale_logged: moka::sync::Cache<String, ()>,
}

fn new_cache(bytes: u64) -> moka::sync::Cache<String, Arc<Cached>> {
    moka::sync::Cache::builder()
        .max_capacity(bytes)
        .weigher(|k: &String, v: &Arc<Cached>| (k.len() as u32).saturating_add(v.weight))
        .build()
}

fn read_view(db: &CatalogDb) -> Result<View, CatalogError> {
    let settings = db.settings()?.ok_or(CatalogError::Empty)?;
    Ok(View { root: settings.root, joins: db.join_prefixes()?.into_iter().collect() })
}

/// The prefixes of `key` that end with `/`, longest first (with `key` itself if it does).
fn slash_prefixes(key: &str) -> impl Iterator<Item = &str> {
    key.char_indices().rev().filter(|(_, c)| *c == '/').map(move |(i, _)| &key[..=i])
}

impl Collection {
    pub fn open(bucket: String, catalog_dir: PathBuf, reindex: Option<Arc<dyn Reindex>>) -> Result<Self, String> {
        let db = CatalogDb::open_existing(&catalog_dir).map_err(|e| error_chain(&e))?.ok_or_else(|| {
            format!("{} holds no catalog: index a tree into it with `zarrgate index`", catalog_dir.display())
        })?;
        let view = read_view(&db).map_err(|e| error_chain(&e))?;
        let generation = db.generation().map_err(|e| error_chain(&e))?;
        let created = db
            .created()
            .ok()
            .flatten()
            .map_or_else(SystemTime::now, |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s.max(0) as u64));
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(generation),
            view: RwLock::new(Arc::new(view)),
            file: RwLock::new(db.file()),
            readable: AtomicBool::new(true),
        });
        spawn_poller(shared.clone(), &catalog_dir)?;
        Ok(Collection {
            bucket,
            read: Policy::Public,
            compute: Policy::Public,
            cors: crate::cors::Cors::new(vec!["*".into()]),
            catalog_dir,
            created,
            shared,
            pool: Mutex::new(vec![db]),
            cache: new_cache(DEFAULT_CACHE_MEMORY),
            reindex,
            reindexing: AtomicBool::new(false),
            loads: AtomicU64::new(0),
            stale_logged: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        })
    }

    pub fn with_policies(mut self, read: Policy, compute: Policy) -> Self {
        self.read = read;
        self.compute = compute;
        self
    }

    /// The origins whose pages may read this collection (`*` for any).
    pub fn with_cors(mut self, origins: Vec<String>) -> Self {
        self.cors = crate::cors::Cors::new(origins);
        self
    }

    /// Bounds the bytes of loaded datasets kept in memory.
    pub fn with_cache_memory(mut self, bytes: u64) -> Self {
        self.cache = new_cache(bytes);
        self
    }

    /// False while the catalog cannot be read (its directory or database is gone).
    pub fn catalog_readable(&self) -> bool {
        self.shared.readable.load(Ordering::Acquire)
    }

    /// Files and joined datasets in the catalog.
    pub fn counts(&self) -> Result<(u64, u64), String> {
        self.with_db(|db| db.counts())
    }

    /// Discovery records matching `q` (see [`CatalogDb::items`]).
    pub fn items(&self, q: &ItemQuery) -> Result<Vec<(i64, String, zarrgate_core::catalog::Item)>, String> {
        self.with_db(|db| db.items(q))
    }

    /// The box and time range of every record, and how many there are.
    pub fn items_extent(&self) -> Result<ItemsExtent, String> {
        self.with_db(|db| db.items_extent())
    }

    /// Datasets whose ids start with directory `dir` (`""` for the whole bucket).
    pub fn count_under(&self, dir: &str) -> Result<u64, String> {
        self.with_db(|db| db.count_under(dir))
    }

    /// Whether `id` is a dataset of the catalog (a file or a join), and which.
    pub fn kind_of(&self, id: &str) -> Result<Option<Kind>, String> {
        self.with_db(|db| db.kind_of(&format!("{id}/")))
    }

    /// Bytes of loaded datasets held now (an estimate), and how many.
    pub fn cached(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.weighted_size(), self.cache.entry_count())
    }

    fn view(&self) -> Arc<View> {
        self.shared.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `f` on a pooled connection to the catalog.
    fn with_db<T>(&self, f: impl FnOnce(&CatalogDb) -> Result<T, CatalogError>) -> Result<T, String> {
        let current = self.shared.file.read().unwrap_or_else(|p| p.into_inner()).clone();
        // A connection to a snapshot that is no longer current is dropped.
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop().filter(|db| db.file() == current);
        let db = match pooled {
            Some(db) => db,
            None => CatalogDb::reader(&self.catalog_dir).map_err(|e| self.db_failed(&e))?,
        };
        let out = f(&db).map_err(|e| self.db_failed(&e));
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL {
            pool.push(db);
        }
        out
    }

    /// Logs a catalog error in full and returns what a client may read of it.
    fn db_failed(&self, e: &CatalogError) -> String {
        tracing::error!("bucket {}: {}", self.bucket, error_chain(e));
        format!("the catalog of bucket {} cannot be read now", self.bucket)
    }

    /// Reads the catalog's generation now (the poller does so every [`POLL`]).
    pub fn refresh(&self) -> Result<(), String> {
        let (generation, view) = self.with_db(|db| Ok((db.generation()?, read_view(db)?)))?;
        *self.shared.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(view);
        self.shared.generation.fetch_max(generation, Ordering::AcqRel);
        Ok(())
    }

    /// What happens to a dataset whose source changed, in words for clients.
    pub fn stale_note(&self) -> &'static str {
        if self.reindex.is_some() {
            "it is being re-indexed, retry shortly"
        } else {
            "this gateway serves a prebuilt catalog and does not re-index it: the dataset is served \
             again once `zarrgate index` brings the catalog up to date"
        }
    }

    /// Starts a background refresh unless one is running. Returns at once.
    pub fn source_changed(self: &Arc<Self>) {
        let Some(reindex) = self.reindex.clone() else { return };
        if self.reindexing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        std::thread::spawn(move || {
            let result = reindex.refresh().and_then(|()| me.refresh());
            if let Err(e) = result {
                tracing::error!("re-indexing bucket {} failed: {e}", me.bucket);
            }
            me.reindexing.store(false, Ordering::Release);
        });
    }

    /// The dataset `id`, if the catalog has it (loaded, or why it cannot be served).
    pub fn dataset(&self, id: &str) -> Result<Option<Arc<Cached>>, String> {
        let prefix = format!("{id}/");
        if let Some(cached) = self.cache.get(&prefix) {
            return self.current(&prefix, cached);
        }
        match self.with_db(|db| db.kind_of(&prefix))? {
            Some(kind) => self.load(&prefix, kind),
            None => Ok(None),
        }
    }

    /// The prefix and kind of the dataset holding `key`, without loading it. Files never nest,
    /// so a cached file is the only file that can hold the key; only a longer join could (and
    /// then the catalog decides).
    fn holding_prefix(&self, key: &str) -> Result<Option<(String, Kind)>, String> {
        let view = self.view();
        let longest_join = slash_prefixes(key).find(|p| view.joins.contains(*p)).map(str::len).unwrap_or(0);
        for p in slash_prefixes(key) {
            if p.len() < longest_join {
                break;
            }
            if let Some(cached) = self.cache.get(p) {
                if cached.kind == Kind::File {
                    return Ok(Some((p.to_string(), Kind::File)));
                }
                break;
            }
        }
        self.with_db(|db| db.holding(key))
    }

    /// The dataset of `kind` at `prefix`: cached and current, or loaded.
    fn entry(&self, prefix: &str, kind: Kind) -> Result<Option<Arc<Cached>>, String> {
        match self.cache.get(prefix).filter(|c| c.kind == kind) {
            Some(cached) => self.current(prefix, cached),
            None => self.load(prefix, kind),
        }
    }

    /// The dataset holding `key` and its prefix.
    fn holding(&self, key: &str) -> Result<Option<(String, Arc<Cached>)>, String> {
        let Some((prefix, kind)) = self.holding_prefix(key)? else { return Ok(None) };
        Ok(self.entry(&prefix, kind)?.map(|c| (prefix, c)))
    }

    /// `cached` if its row did not change since, else the row as it is now.
    fn current(&self, prefix: &str, cached: Arc<Cached>) -> Result<Option<Arc<Cached>>, String> {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if cached.checked.load(Ordering::Acquire) >= generation {
            return Ok(Some(cached));
        }
        let id = &prefix[..prefix.len() - 1];
        let row = self.with_db(|db| match cached.kind {
            Kind::File => Ok(db.dataset_state(id)?.map(|(fp, status)| row_version(&version_of(fp), status))),
            Kind::Join => Ok(db.join_state(id)?.map(|(inputs, status)| row_version(&join_version(&inputs), status))),
        })?;
        match row {
            Some(row) if Some(&row) == cached.row.as_ref() => {
                cached.checked.fetch_max(generation, Ordering::AcqRel);
                Ok(Some(cached))
            }
            Some(_) => self.load(prefix, cached.kind),
            None if matches!(cached.entry, Entry::Ready { .. }) => {
                let why = "the source file of this dataset was removed".to_string();
                let tomb = Arc::new(Cached {
                    entry: Entry::Unavailable(why),
                    kind: cached.kind,
                    row: None,
                    checked: AtomicU64::new(generation),
                    weight: 64,
                });
                self.cache.insert(prefix.to_string(), tomb.clone());
                Ok(Some(tomb))
            }
            None => {
                cached.checked.fetch_max(generation, Ordering::AcqRel);
                Ok(Some(cached))
            }
        }
    }

    /// Loads a dataset from its row and caches it; `None` if the row is gone.
    fn load(&self, prefix: &str, kind: Kind) -> Result<Option<Arc<Cached>>, String> {
        let generation = self.shared.generation.load(Ordering::Acquire);
        let id = &prefix[..prefix.len() - 1];
        let view = self.view();
        // Messages reach anonymous clients: name datasets, not the server's paths.
        let root = format!("{}/", view.root.display());
        let public = |msg: String| msg.replace(&root, "");
        let loaded = match kind {
            Kind::File => {
                let Some(row) = self.with_db(|db| db.dataset(id))? else { return Ok(None) };
                let version = row_version(&version_of(row.fingerprint), row.status);
                let entry = match (&row.status, &row.refs) {
                    (EntryStatus::Failed, _) | (_, None) => Entry::Unavailable(public(format!(
                        "{id} could not be indexed: {}",
                        row.error.as_deref().unwrap_or("no reason")
                    ))),
                    (_, Some(refs)) => {
                        let primary = Source { path: view.root.join(id), fingerprint: row.fingerprint };
                        let built = packed::unpack(refs)
                            .map_err(|e| e.to_string())
                            .and_then(|set| Dataset::build(&set, &primary));
                        ready(id, built, version_of(row.fingerprint), &public)
                    }
                };
                (entry, version)
            }
            Kind::Join => {
                let Some(row) = self.with_db(|db| db.join(id))? else { return Ok(None) };
                let version = join_version(&row.entry.inputs);
                let entry = match (&row.entry.status, &row.doc) {
                    (EntryStatus::Failed, _) | (_, None) => Entry::Unavailable(public(format!(
                        "{id} cannot be joined: {}",
                        row.entry.error.as_deref().unwrap_or("no reason")
                    ))),
                    (_, Some(doc)) => {
                        let built = packed::inflate(doc)
                            .map_err(|e| e.to_string())
                            .and_then(|b| JoinDoc::from_json(&b).map_err(|e| e.to_string()))
                            .and_then(|doc| Dataset::from_join(doc, &view.root, version.clone()));
                        ready(id, built, version.clone(), &public)
                    }
                };
                (entry, row_version(&version, row.entry.status))
            }
        };
        let (entry, row) = loaded;
        let weight = match &entry {
            Entry::Ready { dataset, .. } => weight(dataset),
            Entry::Unavailable(why) => 64 + why.len() as u32,
        };
        self.loads.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("bucket {}: loaded {id} from the catalog ({weight} bytes cached)", self.bucket);
        let cached = Arc::new(Cached { entry, kind, row: Some(row), checked: AtomicU64::new(generation), weight });
        self.cache.insert(prefix.to_string(), cached.clone());
        Ok(Some(cached))
    }
}

/// The dataset a key that no dataset holds seems to name: the key up to its first component
/// with a data file's extension, else up to its first Zarr document (`.z*`), else its first
/// component.
fn dataset_named(key: &str) -> String {
    const EXTENSIONS: &[&str] = &[".nc", ".nc3", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5", ".he5", ".hdf"];
    let parts: Vec<&str> = key.split('/').collect();
    let end = parts
        .iter()
        .position(|p| EXTENSIONS.iter().any(|e| p.to_ascii_lowercase().ends_with(e)))
        .map(|i| i + 1)
        .or_else(|| parts.iter().position(|p| p.starts_with(".z")).filter(|&i| i > 0))
        .unwrap_or(1);
    parts[..end.min(parts.len())].join("/")
}

/// The dataset cache of each collection, in the Prometheus text format.
pub fn render_metrics<'a>(collections: impl Iterator<Item = &'a Arc<Collection>>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let collections: Vec<&Arc<Collection>> = collections.collect();
    type Series = (&'static str, &'static str, &'static str, fn(&Collection) -> u64);
    let series: [Series; 3] = [
        ("zarrgate_datasets_loaded", "gauge", "Datasets held in memory, by bucket.", |c| c.cached().1),
        (
            "zarrgate_datasets_loaded_bytes",
            "gauge",
            "Estimated bytes of the datasets held in memory, by bucket.",
            |c| c.cached().0,
        ),
        ("zarrgate_dataset_loads_total", "counter", "Datasets loaded from the catalog, by bucket.", |c| {
            c.loads.load(Ordering::Relaxed)
        }),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for c in &collections {
            let _ = writeln!(out, "{name}{{bucket=\"{}\"}} {}", c.bucket, value(c));
        }
    }
    out
}

fn ready(id: &str, built: Result<Dataset, String>, version: String, public: &dyn Fn(String) -> String) -> Entry {
    match built {
        Ok(dataset) => {
            for note in &dataset.notes {
                tracing::warn!("{id}: not served: {note}");
            }
            Entry::Ready { version, dataset: Arc::new(dataset) }
        }
        Err(e) => {
            tracing::warn!("{id} cannot be served: {e}");
            Entry::Unavailable(public(format!("{id} cannot be served: {e}")))
        }
    }
}

fn join_version(inputs: &str) -> String {
    format!("join:{inputs}")
}

fn row_version(version: &str, status: EntryStatus) -> String {
    format!("{version}:{status:?}")
}

/// Bytes a loaded dataset holds, roughly: what the cache is bounded by.
fn weight(dataset: &Dataset) -> u32 {
    let objects: usize = dataset
        .objects
        .iter()
        .map(|(k, o)| {
            let inline = match &o.body {
                Body::Inline(b) => b.len(),
                _ => 0,
            };
            // The map node, the object and its allocations (measured: 2,000 CMIP6 datasets of
            // 27 keys each grew the resident size by 28.6 KB per dataset).
            k.len() + o.etag.len() + inline + 320
        })
        .sum();
    let arrays: usize = dataset.arrays.values().map(|a| a.parts.len() * 96 + a.inline.len() + 512).sum();
    (objects + arrays + 6144).min(u32::MAX as usize) as u32
}

/// Reads the generation of the catalog every [`POLL`], until the collection is dropped.
fn spawn_poller(shared: Arc<Shared>, dir: &Path) -> Result<(), String> {
    let mut db = CatalogDb::reader(dir).map_err(|e| error_chain(&e))?;
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("catalog-poll".into())
        .spawn(move || {
            while Arc::strong_count(&shared) > 1 {
                std::thread::sleep(POLL);
                // A published catalog moves to a new snapshot file: follow it.
                match published(&dir) {
                    Ok(Some(snapshot)) if snapshot != db.file() => match CatalogDb::reader(&dir) {
                        Ok(newer) => {
                            tracing::debug!("catalog {}: now reading {}", dir.display(), snapshot.display());
                            db = newer;
                            *shared.file.write().unwrap_or_else(|p| p.into_inner()) = db.file();
                        }
                        Err(e) => tracing::error!("opening the published catalog: {}", error_chain(&e)),
                    },
                    Ok(_) => {}
                    Err(e) => tracing::error!("reading the published catalog: {}", error_chain(&e)),
                }
                // An unmounted volume or a removed directory: an open connection would go on
                // reading the old file, so the directory itself is looked at.
                let there = std::fs::metadata(&dir).is_ok_and(|m| m.is_dir()) && db.file().exists();
                if shared.readable.swap(there, Ordering::AcqRel) != there {
                    if there {
                        tracing::info!("catalog {} can be read again", dir.display());
                    } else {
                        tracing::error!("catalog {} cannot be read: its directory or database is gone", dir.display());
                    }
                }
                let now = match db.generation() {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!("reading the catalog generation: {}", error_chain(&e));
                        continue;
                    }
                };
                if now == shared.generation.load(Ordering::Acquire) {
                    continue;
                }
                tracing::debug!("catalog {} is at generation {now}", dir.display());
                match read_view(&db) {
                    Ok(view) => *shared.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(view),
                    Err(e) => tracing::error!("reading the catalog: {}", error_chain(&e)),
                }
                shared.generation.fetch_max(now, Ordering::AcqRel);
            }
        })
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A collection is a bucket: its keys are `{dataset id}/{key inside the dataset}`.
impl Bucket for Arc<Collection> {
    fn lookup(&self, key: &str) -> Lookup {
        let (prefix, cached) = match self.holding(key) {
            Ok(Some(found)) => found,
            Ok(None) => return Lookup::NoDataset(dataset_named(key)),
            Err(why) => return Lookup::Unavailable(why),
        };
        match &cached.entry {
            Entry::Unavailable(why) => Lookup::Unavailable(why.clone()),
            Entry::Ready { dataset, .. } => match dataset.object(&key[prefix.len()..]) {
                Some(object) => Lookup::Found(Found::of_dataset(&prefix[..prefix.len() - 1], dataset.clone(), object)),
                None => Lookup::Missing,
            },
        }
    }

    fn list(&self, query: &ListQuery) -> Result<ListPage<Listed>, String> {
        let keys = Keys { collection: self, error: Mutex::new(None) };
        let page = list::list(&keys, query);
        match keys.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(why),
            None => Ok(page),
        }
    }

    fn source_changed(&self, dataset: &str, why: &str) -> String {
        // A changed file is logged once (per dataset, while remembered), not once per request.
        if self.stale_logged.get(dataset).is_none() {
            self.stale_logged.insert(dataset.to_string(), ());
            tracing::warn!("{why}");
        }
        Collection::source_changed(self);
        self.stale_note().to_string()
    }
}

fn listed(object: &Object, dataset: &Dataset) -> Listed {
    Listed { size: object.size, etag: object.etag.clone(), modified: dataset.modified }
}

/// The keys of a collection, read from the catalog as a listing needs them. A catalog error
/// ends the scan and is kept, so the listing fails instead of coming back short.
struct Keys<'c> {
    collection: &'c Collection,
    error: Mutex<Option<String>>,
}

impl Keys<'_> {
    fn fail(&self, why: String) {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(why);
    }

    /// The keys of a loaded dataset in `(from, ∞)` or `[from, ∞)` of its own key space.
    fn dataset_keys(prefix: &str, cached: &Cached, from: Bound<&str>) -> Vec<(String, Listed)> {
        let Entry::Ready { dataset, .. } = &cached.entry else { return Vec::new() };
        let (from, inclusive) = match from {
            Bound::Included(s) => (s, true),
            Bound::Excluded(s) => (s, false),
            Bound::Unbounded => ("", true),
        };
        if !dataset.arrays.is_empty() {
            let keys = dataset.keys_from(from, inclusive);
            return keys.into_iter().map(|(k, o)| (format!("{prefix}{k}"), listed(&o, dataset))).collect();
        }
        let bound = if inclusive { Bound::Included(from) } else { Bound::Excluded(from) };
        dataset
            .objects
            .range::<str, _>((bound, Bound::Unbounded))
            .map(|(k, o)| (format!("{prefix}{k}"), listed(o, dataset)))
            .collect()
    }
}

impl KeySpace for Keys<'_> {
    type Entry = Listed;

    fn scan<'a>(&'a self, from: Bound<&str>) -> Box<dyn Iterator<Item = Item<Listed>> + 'a> {
        let (text, inclusive) = match from {
            Bound::Included(s) => (s.to_string(), true),
            Bound::Excluded(s) => (s.to_string(), false),
            Bound::Unbounded => (String::new(), true),
        };
        // The dataset that may hold `text` lists from inside; later ones come as groups. A
        // listing that skips past a common prefix scans from just after it (U+10FFFF, which no
        // key holds): then the dataset holding that point has no key after it to load.
        let mut first = Vec::new();
        let mut next = (text.clone(), inclusive);
        let skipping = text.ends_with('\u{10FFFF}');
        let holding = match self.collection.holding_prefix(&text) {
            Ok(found) => found,
            Err(why) => {
                self.fail(why);
                return Box::new(std::iter::empty());
            }
        };
        if let Some((prefix, kind)) = holding {
            let inner = &text[prefix.len()..];
            if !(skipping && inner.starts_with('\u{10FFFF}')) {
                match self.collection.entry(&prefix, kind) {
                    Ok(Some(cached)) => {
                        let bound = if inclusive { Bound::Included(inner) } else { Bound::Excluded(inner) };
                        first = Self::dataset_keys(&prefix, &cached, bound);
                    }
                    Ok(None) => {}
                    Err(why) => {
                        self.fail(why);
                        return Box::new(std::iter::empty());
                    }
                }
            }
            next = (prefix, false);
        }
        let mut page: std::collections::VecDeque<String> = Default::default();
        let mut done = false;
        // Most scans of a delimited listing end after one group: read a few rows first.
        let mut size = 4;
        let groups = std::iter::from_fn(move || {
            if page.is_empty() && !done {
                let want = size;
                size = (size * 4).min(PAGE);
                match self.collection.with_db(|db| db.prefixes(&next.0, next.1, want)) {
                    Ok(rows) => {
                        done = rows.len() < want;
                        if let Some((last, _)) = rows.last() {
                            next = (last.clone(), false);
                        }
                        page.extend(rows.into_iter().map(|(p, _)| p));
                    }
                    Err(why) => {
                        self.fail(why);
                        done = true;
                    }
                }
            }
            page.pop_front().map(Item::Group)
        });
        Box::new(first.into_iter().map(|(k, l)| Item::Key(k, l)).chain(groups))
    }

    fn expand<'a>(&'a self, group: &str) -> Box<dyn Iterator<Item = (String, Listed)> + 'a> {
        let id = &group[..group.len() - 1];
        match self.collection.dataset(id) {
            Ok(Some(cached)) => Box::new(Self::dataset_keys(group, &cached, Bound::Unbounded).into_iter()),
            Ok(None) => Box::new(std::iter::empty()),
            Err(why) => {
                self.fail(why);
                Box::new(std::iter::empty())
            }
        }
    }
}

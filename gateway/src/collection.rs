//! A collection: one bucket, served from one catalog directory.
//!
//! # Lifecycle
//! - Datasets are loaded from `catalog.json` at start. A failed entry is kept as
//!   [`Entry::Unavailable`], so its keys answer 503 with the indexing error rather than 404,
//!   which Zarr would read as fill values.
//! - When a read finds a source changed ([`crate::source::ReadError::Stale`]), the collection
//!   asks its [`Reindex`] hook (if any) to bring the catalog up to date, in the background and
//!   one run at a time, then reloads the catalog. Until then the dataset answers 503.
//! - A dataset whose file disappears while serving stays as a tombstone (503), for the same
//!   reason: a client that opened it must not read fill values for its chunks.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use zarrgate_core::catalog::{Catalog, EntryStatus};
use zarrgate_core::refs::ReferenceSet;

use crate::auth::Policy;
use crate::dataset::{version_of, Dataset, Object, Source};
use crate::store::list::{self, KeySpace, ListPage, ListQuery};
use crate::store::{Bucket, Found, Listed, Lookup};
use zarrgate_core::join::doc::JoinDoc;

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

/// Datasets by `id + "/"`: every key of a dataset starts with it, and (ids being file paths)
/// no such prefix is a prefix of another, so the concatenated keys are in sorted order.
pub type Datasets = BTreeMap<String, Arc<Entry>>;

pub struct Collection {
    pub bucket: String,
    /// Who may read its objects.
    pub read: Policy,
    /// Who may run operations on it.
    pub compute: Policy,
    pub catalog_dir: PathBuf,
    pub created: SystemTime,
    datasets: RwLock<Arc<Datasets>>,
    reindex: Option<Arc<dyn Reindex>>,
    reindexing: AtomicBool,
}

impl Collection {
    pub fn open(bucket: String, catalog_dir: PathBuf, reindex: Option<Arc<dyn Reindex>>) -> Result<Self, String> {
        let datasets = load(&catalog_dir, &Datasets::new())?;
        let created = std::fs::metadata(catalog_dir.join(zarrgate_core::catalog::CATALOG_FILE))
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());
        Ok(Collection {
            bucket,
            read: Policy::Public,
            compute: Policy::Public,
            catalog_dir,
            created,
            datasets: RwLock::new(Arc::new(datasets)),
            reindex,
            reindexing: AtomicBool::new(false),
        })
    }

    pub fn with_policies(mut self, read: Policy, compute: Policy) -> Self {
        self.read = read;
        self.compute = compute;
        self
    }

    pub fn snapshot(&self) -> Arc<Datasets> {
        self.datasets.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The dataset holding `key`, and the key inside it.
    pub fn find<'k>(datasets: &Datasets, key: &'k str) -> Option<(Arc<Entry>, &'k str)> {
        let (prefix, entry) = datasets.range::<str, _>((Bound::Unbounded, Bound::Included(key))).next_back()?;
        key.strip_prefix(prefix.as_str()).map(|rest| (entry.clone(), rest))
    }

    /// Starts a background refresh unless one is running. Returns at once.
    pub fn source_changed(self: &Arc<Self>) {
        let Some(reindex) = self.reindex.clone() else { return };
        if self.reindexing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        std::thread::spawn(move || {
            let result = reindex.refresh().and_then(|()| me.reload());
            if let Err(e) = result {
                eprintln!("zarrgate: re-indexing bucket {} failed: {e}", me.bucket);
            }
            me.reindexing.store(false, Ordering::Release);
        });
    }

    /// Reloads the catalog, reusing datasets whose fingerprint did not change.
    pub fn reload(&self) -> Result<(), String> {
        let old = self.snapshot();
        let mut new = load(&self.catalog_dir, &old)?;
        for (prefix, entry) in old.iter() {
            if !new.contains_key(prefix) && matches!(**entry, Entry::Ready { .. }) {
                let why = "the source file of this dataset was removed".to_string();
                new.insert(prefix.clone(), Arc::new(Entry::Unavailable(why)));
            }
        }
        *self.datasets.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        Ok(())
    }
}

fn load(dir: &Path, old: &Datasets) -> Result<Datasets, String> {
    let catalog = Catalog::load(dir)
        .map_err(|e| format!("{e}: {}", e.source().map(|s| s.to_string()).unwrap_or_default()))?
        .ok_or_else(|| format!("{} has no catalog.json", dir.display()))?;
    // Messages reach anonymous clients: name datasets, not the server's paths.
    let root = format!("{}/", catalog.root.display());
    let public = |msg: String| msg.replace(&root, "");
    let mut out = Datasets::new();
    for (id, entry) in &catalog.datasets {
        let prefix = format!("{id}/");
        let version = version_of(entry.fingerprint);
        if let Some(prev) = old.get(&prefix) {
            if let Entry::Ready { version: v, .. } = &**prev {
                if *v == version && entry.status != EntryStatus::Failed {
                    out.insert(prefix, prev.clone());
                    continue;
                }
            }
        }
        let loaded = match (&entry.status, &entry.refs) {
            (EntryStatus::Failed, _) | (_, None) => Entry::Unavailable(format!(
                "{id} could not be indexed: {}",
                entry.error.as_deref().unwrap_or("no reason")
            )),
            (_, Some(refs)) => {
                let primary = Source { path: catalog.root.join(id), fingerprint: entry.fingerprint };
                match load_refs(&dir.join(refs)).and_then(|set| Dataset::build(&set, &primary)) {
                    Ok(dataset) => {
                        for note in &dataset.notes {
                            eprintln!("zarrgate: {id}: not served: {note}");
                        }
                        Entry::Ready { version, dataset: Arc::new(dataset) }
                    }
                    Err(e) => {
                        eprintln!("zarrgate: {id} cannot be served: {e}");
                        Entry::Unavailable(public(format!("{id} cannot be served: {e}")))
                    }
                }
            }
        };
        out.insert(prefix, Arc::new(loaded));
    }
    for (id, entry) in &catalog.joins {
        let prefix = format!("{id}/");
        if out.contains_key(&prefix) {
            eprintln!("zarrgate: joined dataset {id} has the id of a file; the file is served");
            continue;
        }
        let version = format!("join:{}", entry.inputs);
        if let Some(prev) = old.get(&prefix) {
            if matches!(&**prev, Entry::Ready { version: v, .. } if *v == version) {
                out.insert(prefix, prev.clone());
                continue;
            }
        }
        let loaded = match (&entry.status, &entry.refs) {
            (EntryStatus::Failed, _) | (_, None) => Entry::Unavailable(public(format!(
                "{id} cannot be joined: {}",
                entry.error.as_deref().unwrap_or("no reason")
            ))),
            (_, Some(refs)) => {
                let path = dir.join(refs);
                let doc = std::fs::read(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))
                    .and_then(|b| JoinDoc::from_json(&b).map_err(|e| format!("{}: {e}", path.display())));
                match doc.and_then(|doc| Dataset::from_join(doc, &catalog.root, version.clone())) {
                    Ok(dataset) => Entry::Ready { version, dataset: Arc::new(dataset) },
                    Err(e) => {
                        eprintln!("zarrgate: {id} cannot be served: {e}");
                        Entry::Unavailable(public(format!("{id} cannot be served: {e}")))
                    }
                }
            }
        };
        out.insert(prefix, Arc::new(loaded));
    }
    Ok(out)
}

fn load_refs(path: &Path) -> Result<ReferenceSet, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    ReferenceSet::from_json(&doc).map_err(|e| format!("{}: {e}", path.display()))
}

/// A collection is a bucket: its keys are `{dataset id}/{key inside the dataset}`.
impl Bucket for Arc<Collection> {
    fn lookup(&self, key: &str) -> Lookup {
        let snapshot = self.snapshot();
        let Some((entry, inner)) = Collection::find(&snapshot, key) else { return Lookup::Missing };
        match &*entry {
            Entry::Unavailable(why) => Lookup::Unavailable(why.clone()),
            Entry::Ready { dataset, .. } => match dataset.object(inner) {
                Some(object) => {
                    let id = key[..key.len() - inner.len()].trim_end_matches('/');
                    Lookup::Found(Found::of_dataset(id, dataset.clone(), object))
                }
                None => Lookup::Missing,
            },
        }
    }

    fn list(&self, query: &ListQuery) -> ListPage<Listed> {
        list::list(&Keys(self.snapshot()), query)
    }

    fn source_changed(&self) {
        Collection::source_changed(self)
    }
}

fn listed(object: &Object, dataset: &Dataset) -> Listed {
    Listed { size: object.size, etag: object.etag.clone(), modified: dataset.modified }
}

/// The keys of a collection snapshot, for listing.
pub struct Keys(pub Arc<Datasets>);

impl KeySpace for Keys {
    type Entry = Listed;

    fn scan<'a>(&'a self, from: Bound<&str>) -> Box<dyn Iterator<Item = (String, Listed)> + 'a> {
        let (text, inclusive) = match from {
            Bound::Included(s) => (s.to_string(), true),
            Bound::Excluded(s) => (s.to_string(), false),
            Bound::Unbounded => (String::new(), true),
        };
        // The dataset that may hold `text`, then every later one.
        let first = self
            .0
            .range::<str, _>((Bound::Unbounded, Bound::Included(text.as_str())))
            .next_back()
            .filter(|(p, _)| text.starts_with(p.as_str()))
            .map(|(p, _)| p.clone());
        let datasets: Box<dyn Iterator<Item = (&String, &Arc<Entry>)>> = match first {
            Some(p) => Box::new(self.0.range::<String, _>(p..)),
            None => Box::new(self.0.range::<String, _>((Bound::Excluded(text.clone()), Bound::Unbounded))),
        };
        Box::new(datasets.flat_map(move |(prefix, entry)| {
            let Entry::Ready { dataset, .. } = &**entry else {
                return Box::new(std::iter::empty()) as Box<dyn Iterator<Item = (String, Listed)> + 'a>;
            };
            let inner = match text.strip_prefix(prefix.as_str()) {
                Some(rest) if inclusive => Bound::Included(rest.to_string()),
                Some(rest) => Bound::Excluded(rest.to_string()),
                None => Bound::Unbounded,
            };
            let dataset: &'a Dataset = dataset;
            if !dataset.arrays.is_empty() {
                let (from, inclusive) = match &inner {
                    Bound::Included(s) => (s.as_str(), true),
                    Bound::Excluded(s) => (s.as_str(), false),
                    Bound::Unbounded => ("", true),
                };
                let keys = dataset.keys_from(from, inclusive);
                return Box::new(keys.into_iter().map(move |(k, o)| (format!("{prefix}{k}"), listed(&o, dataset))));
            }
            Box::new(
                dataset
                    .objects
                    .range::<String, _>((inner, Bound::Unbounded))
                    .map(move |(k, o)| (format!("{prefix}{k}"), listed(o, dataset))),
            )
        }))
    }
}

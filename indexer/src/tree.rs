//! Indexes a directory tree into a catalog database (`CATALOG/catalog.db`, see
//! [`zarrgate_core::catalog::db`]): one row per file with its fingerprint, status and packed
//! reference set (or why it failed), and one row per joined dataset.
//!
//! - A re-run skips files whose fingerprint is unchanged, writes only the rows that changed
//!   and drops the rows of files that are gone. One bad file never stops the rest.
//! - Results are committed in transactions of at most [`BATCH_ROWS`] rows or one second, so a
//!   run killed at any point leaves a consistent catalog (each row is a file's old or new
//!   state) and the next run completes it. Memory holds the directory walk and one batch.

use std::path::{Path, PathBuf};

use zarrgate_core::catalog::{packed, CatalogDb, CatalogError, DatasetRow, EntryStatus, Fingerprint, Item, Settings};
use zarrgate_core::join::RefSource;
use zarrgate_core::report::VariableStatus;

use zarrgate_core::refs::ReferenceSet;

use crate::hdf::View;
use crate::{index_file, IndexOptions};

/// File extensions taken as data even when their first bytes are wrong (so a broken `.nc` is
/// reported, while a README beside the data is not).
const DATA_EXTENSIONS: &[&str] = &["nc", "nc3", "nc4", "netcdf", "cdf", "h5", "hdf5", "he5", "hdf"];

/// Whether a file name has one of [`DATA_EXTENSIONS`].
pub fn has_data_extension(name: &Path) -> bool {
    let ext = name.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    ext.is_some_and(|e| DATA_EXTENSIONS.contains(&e.as_str()))
}

#[derive(Clone, Debug, Default)]
pub struct TreeOptions {
    /// Chunk URLs become `url_prefix + relative path`; default: absolute local paths.
    pub url_prefix: Option<String>,
    /// Index every file again, even if unchanged.
    pub force: bool,
    /// Files indexed at once (each [`FileIndexer`] call may run in its own process).
    pub jobs: usize,
    /// Do not join the files of ESGF/DRS datasets (spec and NcML files still apply).
    pub no_drs_join: bool,
    /// How many datasets one run may remove.
    pub removals: Removals,
    /// Reads the remote objects that imported references name (`[[remote]]` of the config).
    pub remote: Option<std::sync::Arc<zarrgate_remote::Remote>>,
}

/// A guard against emptying a catalog: a data directory that is not mounted, or a catalog
/// given another tree, looks like every file was deleted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Removals {
    /// Refuse the run when it would remove more than this share (0–1) of the catalog's
    /// datasets; one dataset may always be removed.
    AtMost(f64),
    Allowed,
}

impl Default for Removals {
    fn default() -> Self {
        Removals::AtMost(0.5)
    }
}

/// Indexes one file. The CLI runs each file in a child process, because netCDF-C and HDF5
/// abort the whole process on some malformed files; [`InProcess`] is the plain library call.
pub trait FileIndexer: Sync {
    /// Returns the reference set, or a message saying why the file could not be indexed.
    fn index(&self, path: &Path, url: Option<String>) -> Result<ReferenceSet, String>;
}

/// Indexes in this process; a panic becomes an error for that file.
pub struct InProcess;

impl InProcess {
    /// Indexes with the given view of HDF5 files.
    pub fn index_as(&self, path: &Path, url: Option<String>, view: View) -> Result<ReferenceSet, String> {
        match std::panic::catch_unwind(|| index_file(path, &IndexOptions { url, view })) {
            Ok(Ok(set)) => Ok(set),
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err(format!("{}: internal error (panic) while indexing", path.display())),
        }
    }
}

impl FileIndexer for InProcess {
    fn index(&self, path: &Path, url: Option<String>) -> Result<ReferenceSet, String> {
        self.index_as(path, url, View::Netcdf)
    }
}

/// What happened to one file, for progress reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Skipped,
    Indexed(EntryStatus),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeSummary {
    pub ok: usize,
    pub partial: usize,
    pub failed: usize,
    pub skipped: usize,
    pub removed: usize,
    /// Joined datasets built or kept, and refused.
    pub joins_ok: usize,
    pub joins_failed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot list {path}")]
    Walk {
        path: PathBuf,
        #[source]
        source: walkdir::Error,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(
        "{remove} of the {total} datasets of this catalog would be removed, more than {:.0}% in one run: {why}. \
         Nothing was changed. If the files really are gone, run again with --allow-removals \
         (or --max-removals PERCENT)",
        share * 100.0
    )]
    TooManyRemovals { remove: u64, total: u64, share: f64, why: String },
}

/// Progress callbacks: the number of files, then one call per file.
pub trait Progress {
    fn start(&mut self, total: usize);
    fn file(&mut self, rel: &str, outcome: Outcome);
}

/// Rows written per transaction at most; a transaction also ends after [`COMMIT_EVERY`].
const BATCH_ROWS: usize = 500;
const COMMIT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

pub fn index_tree(
    root: &Path,
    out: &Path,
    options: &TreeOptions,
    indexer: &dyn FileIndexer,
    progress: &mut dyn Progress,
) -> Result<TreeSummary, TreeError> {
    let root = std::path::absolute(root).map_err(|e| CatalogError::Read { path: root.into(), source: e })?;
    let files = data_files(&root)?;
    let definitions = crate::join::find(&root, &files, !options.no_drs_join);
    let mut db = CatalogDb::open(out)?;
    let settings = Settings { root: root.clone(), url_prefix: options.url_prefix.clone() };
    let stored = db.settings()?;
    let same_tree = stored.as_ref() == Some(&settings);
    let (total, _) = db.counts()?;
    let remove = if same_tree { count_missing(&mut db, &files)? } else { total };
    if let Removals::AtMost(share) = options.removals {
        if remove > 1 && remove as f64 > share * total as f64 {
            let why = match &stored {
                Some(s) if !same_tree => format!(
                    "the catalog holds the datasets of {}{}, not of {}{}",
                    s.root.display(),
                    s.url_prefix.as_deref().map(|u| format!(" (URL prefix {u})")).unwrap_or_default(),
                    root.display(),
                    settings.url_prefix.as_deref().map(|u| format!(" (URL prefix {u})")).unwrap_or_default(),
                ),
                _ if files.is_empty() => format!("{} holds no data file (is it mounted?)", root.display()),
                _ => format!("their files are gone from {}", root.display()),
            };
            return Err(TreeError::TooManyRemovals { remove, total, share, why });
        }
    }
    if !same_tree {
        // Rows of another root or URL prefix are not this tree's: start again.
        db.write(|w| {
            w.set_settings(&settings)?;
            w.clear()
        })?;
    }
    let reuse = same_tree && !options.force;
    // A catalog written before discovery records were kept gets them once: its unchanged files
    // are described from their stored references (not indexed again), its joins rebuilt.
    let described = total == 0 || db.described()?;
    let mut describe_only: Vec<u32> = Vec::new();
    let mut summary = TreeSummary { removed: if same_tree { 0 } else { total as usize }, ..Default::default() };
    progress.start(files.len());
    // Indexes into `files`: no second list of paths.
    let mut todo: Vec<u32> = Vec::new();
    for (i, rel) in files.iter().enumerate() {
        let now = Fingerprint::of_path(&root.join(rel)).ok();
        let unchanged = reuse && now.is_some() && db.dataset_state(rel)?.is_some_and(|(old, _)| Some(old) == now);
        if unchanged {
            if !described {
                describe_only.push(i as u32);
            }
            summary.skipped += 1;
            progress.file(rel, Outcome::Skipped);
        } else {
            todo.push(i as u32);
        }
    }
    // Three stages, so that no index worker waits on anything but its file: lanes hand each
    // file to a worker process; finishers pack its references and describe it; this thread
    // commits.
    let (indexed_tx, indexed_rx) = std::sync::mpsc::sync_channel::<Indexed>(BATCH_ROWS);
    let indexed_rx = std::sync::Mutex::new(indexed_rx);
    let (tx, rx) = std::sync::mpsc::sync_channel::<(DatasetRow, Option<Item>)>(BATCH_ROWS);
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| -> Result<(), TreeError> {
        for _ in 0..options.jobs.max(1) {
            let (indexed_tx, next, todo, root, files) = (indexed_tx.clone(), &next, &todo, &root, &files);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&n) = todo.get(i) else { break };
                let rel = &files[n as usize];
                let path = root.join(rel);
                let fingerprint = Fingerprint::of_path(&path).unwrap_or_default();
                let url = options.url_prefix.as_ref().map(|p| format!("{}{rel}", with_slash(p)));
                let result = indexer.index(&path, url);
                if indexed_tx.send(Indexed { rel, path, fingerprint, result }).is_err() {
                    break;
                }
            });
        }
        drop(indexed_tx);
        for _ in 0..options.jobs.max(1) {
            let (tx, indexed_rx) = (tx.clone(), &indexed_rx);
            scope.spawn(move || loop {
                let next = indexed_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(Indexed { rel, path, fingerprint, result }) = next else { break };
                let item = result.as_ref().ok().and_then(|set| describe(rel, &path, set));
                if tx.send((row_of(rel, fingerprint, result), item)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut batch: Vec<(DatasetRow, Option<Item>)> = Vec::with_capacity(BATCH_ROWS);
        let mut since = std::time::Instant::now();
        for (row, item) in rx {
            match row.status {
                EntryStatus::Ok => summary.ok += 1,
                EntryStatus::Partial => summary.partial += 1,
                EntryStatus::Failed => summary.failed += 1,
            }
            progress.file(&row.id, Outcome::Indexed(row.status));
            batch.push((row, item));
            if batch.len() >= BATCH_ROWS || since.elapsed() >= COMMIT_EVERY {
                commit(&mut db, &mut batch)?;
                since = std::time::Instant::now();
            }
        }
        commit(&mut db, &mut batch)
    })?;
    summary.removed += remove_missing(&mut db, &files)?;
    describe_stored(&mut db, &root, &files, &describe_only)?;
    let joins = crate::join::build_all(&root, &files, &db, reuse && described, definitions, options.remote.as_deref())?;
    for built in &joins {
        match built.row.entry.status {
            EntryStatus::Failed => summary.joins_failed += 1,
            _ => summary.joins_ok += 1,
        }
    }
    let ids: std::collections::BTreeSet<String> = joins.iter().map(|b| b.row.id.clone()).collect();
    let stored: std::collections::BTreeSet<String> =
        db.join_prefixes()?.into_iter().map(|p| p.trim_end_matches('/').to_string()).collect();
    // A run that changed nothing writes nothing (readers see the same generation).
    if ids != stored || joins.iter().any(|b| b.changed) {
        db.write(|w| {
            for built in joins.iter().filter(|b| b.changed) {
                w.put_join(&built.row)?;
                w.put_item(&built.row.id, built.item.as_ref())?;
            }
            w.retain_joins(&ids)
        })?;
    }
    if !db.described()? {
        db.write(|w| w.set_described())?;
    }
    Ok(summary)
}

/// Writes the discovery records of files indexed before records were kept, from the references
/// the catalog holds, a batch at a time.
fn describe_stored(db: &mut CatalogDb, root: &Path, files: &[String], which: &[u32]) -> Result<(), TreeError> {
    for batch in which.chunks(BATCH_ROWS) {
        let mut items = Vec::with_capacity(batch.len());
        for &n in batch {
            let rel = &files[n as usize];
            let set = db.dataset(rel)?.and_then(|row| row.refs).and_then(|p| packed::unpack(&p).ok());
            items.push((rel, set.and_then(|set| describe(rel, &root.join(rel), &set))));
        }
        db.write(|w| items.iter().try_for_each(|(rel, item)| w.put_item(rel, item.as_ref())))?;
    }
    Ok(())
}

/// A file as its worker indexed it, on its way to be packed and described.
struct Indexed<'a> {
    rel: &'a str,
    path: PathBuf,
    fingerprint: Fingerprint,
    result: Result<ReferenceSet, String>,
}

fn commit(db: &mut CatalogDb, batch: &mut Vec<(DatasetRow, Option<Item>)>) -> Result<(), TreeError> {
    if batch.is_empty() {
        return Ok(());
    }
    db.write(|w| {
        batch.iter().try_for_each(|(row, item)| {
            w.put_dataset(row)?;
            w.put_item(&row.id, item.as_ref())
        })
    })?;
    batch.clear();
    Ok(())
}

/// Calls `each` with the ids of datasets whose files are not in `files` (sorted), a page of
/// the catalog at a time.
fn each_missing(
    db: &mut CatalogDb,
    files: &[String],
    mut each: impl FnMut(&mut CatalogDb, Vec<String>) -> Result<(), TreeError>,
) -> Result<(), TreeError> {
    let mut after = String::new();
    loop {
        let page = db.dataset_ids_after(&after, 1000)?;
        let Some(last) = page.last().cloned() else { break };
        let gone: Vec<String> = page.into_iter().filter(|id| files.binary_search(id).is_err()).collect();
        if !gone.is_empty() {
            each(db, gone)?;
        }
        after = last;
    }
    Ok(())
}

/// How many datasets of the catalog have no file in `files` any more.
fn count_missing(db: &mut CatalogDb, files: &[String]) -> Result<u64, TreeError> {
    let mut missing = 0;
    each_missing(db, files, |_, gone| {
        missing += gone.len() as u64;
        Ok(())
    })?;
    Ok(missing)
}

/// Drops the rows of files that are gone.
fn remove_missing(db: &mut CatalogDb, files: &[String]) -> Result<usize, TreeError> {
    let mut removed = 0;
    each_missing(db, files, |db, gone| {
        db.write(|w| gone.iter().try_for_each(|id| w.remove_dataset(id)))?;
        removed += gone.len();
        Ok(())
    })?;
    Ok(removed)
}

/// Relative paths of the data files under `root`, sorted.
fn data_files(root: &Path) -> Result<Vec<String>, TreeError> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name() {
        let entry = entry.map_err(|source| TreeError::Walk { path: root.into(), source })?;
        if !entry.file_type().is_file() || !looks_like_data(entry.path()) {
            continue;
        }
        let rel = entry.path().strip_prefix(root).expect("walkdir yields paths under root");
        out.push(rel.to_string_lossy().replace('\\', "/"));
    }
    out.sort_unstable();
    Ok(out)
}

fn looks_like_data(path: &Path) -> bool {
    if has_data_extension(path) {
        return true;
    }
    std::fs::File::open(path)
        .and_then(|f| {
            let size = f.metadata()?.len();
            crate::sniff(&f, size)
        })
        .is_ok_and(|format| format.is_some())
}

/// The catalog row of one file: its packed references, or why it could not be indexed.
fn row_of(rel: &str, fingerprint: Fingerprint, result: Result<ReferenceSet, String>) -> DatasetRow {
    match result {
        Ok(set) => {
            let meta = set.meta.as_ref().expect("indexers always set meta");
            let complete = meta
                .variables
                .values()
                .all(|v| matches!(v.status, VariableStatus::Referenced | VariableStatus::Inlined));
            DatasetRow {
                id: rel.to_string(),
                fingerprint: meta.source.fingerprint,
                status: if complete { EntryStatus::Ok } else { EntryStatus::Partial },
                error: None,
                refs: Some(packed::pack(&set)),
            }
        }
        Err(msg) => {
            DatasetRow { id: rel.to_string(), fingerprint, status: EntryStatus::Failed, error: Some(msg), refs: None }
        }
    }
}

/// The discovery record of an indexed file, read through its references (`None` when its
/// metadata cannot be read: the file is still served, only not found by search).
fn describe(rel: &str, path: &Path, set: &ReferenceSet) -> Option<Item> {
    let reader = crate::join::Files::new(vec![path.to_path_buf()]);
    Item::describe(rel, &RefSource { refs: set, reader: &reader, source: 0 }).ok()
}

fn with_slash(prefix: &str) -> String {
    if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

pub use zarrgate_core::error_chain;

//! Indexes a directory tree into a catalog directory:
//!
//! ```text
//! CATALOG/catalog.json            datasets, fingerprints, status
//! CATALOG/refs/<relpath>.json     one Kerchunk reference set per file
//! CATALOG/reports/<relpath>.json  what happened to every variable, or why the file failed
//! ```
//!
//! A re-run skips files whose fingerprint (size, mtime) is unchanged and drops entries of
//! files that are gone. One bad file never stops the rest.

use std::path::{Path, PathBuf};

use zarrgate_core::catalog::{write_atomic, Catalog, CatalogEntry, CatalogError, EntryStatus, Fingerprint};
use zarrgate_core::report::{FileReport, VariableStatus};

use zarrgate_core::refs::ReferenceSet;

use crate::{index_file, IndexOptions};

/// File extensions taken as data even when their first bytes are wrong (so a broken `.nc` is
/// reported, while a README beside the data is not).
const DATA_EXTENSIONS: &[&str] = &["nc", "nc3", "nc4", "netcdf", "cdf", "h5", "hdf5", "he5", "hdf"];

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
}

/// Indexes one file. The CLI runs each file in a child process, because netCDF-C and HDF5
/// abort the whole process on some malformed files; [`InProcess`] is the plain library call.
pub trait FileIndexer: Sync {
    /// Returns the reference set, or a message saying why the file could not be indexed.
    fn index(&self, path: &Path, url: Option<String>) -> Result<ReferenceSet, String>;
}

/// Indexes in this process; a panic becomes an error for that file.
pub struct InProcess;

impl FileIndexer for InProcess {
    fn index(&self, path: &Path, url: Option<String>) -> Result<ReferenceSet, String> {
        match std::panic::catch_unwind(|| index_file(path, &IndexOptions { url })) {
            Ok(Ok(set)) => Ok(set),
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err(format!("{}: internal error (panic) while indexing", path.display())),
        }
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
}

/// Progress callbacks: the number of files, then one call per file.
pub trait Progress {
    fn start(&mut self, total: usize);
    fn file(&mut self, rel: &str, outcome: Outcome);
}

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
    let previous = Catalog::load(out)?;
    let reuse = previous.filter(|c| c.url_prefix == options.url_prefix && c.root == root && !options.force);
    let mut catalog = Catalog::new(root.clone(), options.url_prefix.clone());
    let mut summary = TreeSummary::default();
    progress.start(files.len());
    let mut todo = Vec::new();
    for rel in files {
        let fingerprint = Fingerprint::of_path(&root.join(&rel)).ok();
        let old = reuse.as_ref().and_then(|c| c.datasets.get(&rel));
        match (old, fingerprint) {
            (Some(old), Some(fp))
                if old.fingerprint == fp && old.refs.as_ref().is_none_or(|r| out.join(r).exists()) =>
            {
                catalog.datasets.insert(rel.clone(), old.clone());
                summary.skipped += 1;
                progress.file(&rel, Outcome::Skipped);
            }
            _ => todo.push((rel, fingerprint.unwrap_or_default())),
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| -> Result<(), TreeError> {
        for _ in 0..options.jobs.max(1) {
            let (tx, next, todo, root) = (tx.clone(), &next, &todo, &root);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((rel, fingerprint)) = todo.get(i) else { break };
                let url = options.url_prefix.as_ref().map(|p| format!("{}{rel}", with_slash(p)));
                let result = indexer.index(&root.join(rel), url);
                if tx.send((rel.clone(), *fingerprint, result)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (rel, fingerprint, result) in rx {
            let entry = record(out, &rel, fingerprint, result)?;
            match entry.status {
                EntryStatus::Ok => summary.ok += 1,
                EntryStatus::Partial => summary.partial += 1,
                EntryStatus::Failed => summary.failed += 1,
            }
            progress.file(&rel, Outcome::Indexed(entry.status));
            catalog.datasets.insert(rel, entry);
        }
        Ok(())
    })?;
    if let Some(old) = &reuse {
        for entry in old.datasets.iter().filter(|(rel, _)| !catalog.datasets.contains_key(*rel)).map(|(_, e)| e) {
            remove_outputs(out, entry);
            summary.removed += 1;
        }
    }
    catalog.joins = crate::join::build_all(&root, out, &catalog, reuse.as_ref(), definitions);
    for entry in catalog.joins.values() {
        match entry.status {
            EntryStatus::Failed => summary.joins_failed += 1,
            _ => summary.joins_ok += 1,
        }
    }
    if let Some(old) = &reuse {
        let kept: std::collections::BTreeSet<&String> =
            catalog.joins.values().filter_map(|e| e.refs.as_ref()).collect();
        for r in old.joins.values().filter_map(|e| e.refs.as_ref()).filter(|r| !kept.contains(r)) {
            let _ = std::fs::remove_file(out.join(r));
        }
    }
    catalog.save(out)?;
    Ok(summary)
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
    Ok(out)
}

fn looks_like_data(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    if ext.is_some_and(|e| DATA_EXTENSIONS.contains(&e.as_str())) {
        return true;
    }
    std::fs::File::open(path)
        .and_then(|f| {
            let size = f.metadata()?.len();
            crate::sniff(&f, size)
        })
        .is_ok_and(|format| format.is_some())
}

/// Writes the reference set (if any) and the report of one file, and returns its entry.
fn record(
    out: &Path,
    rel: &str,
    fingerprint: Fingerprint,
    result: Result<ReferenceSet, String>,
) -> Result<CatalogEntry, TreeError> {
    let refs_rel = format!("refs/{rel}.json");
    let report_rel = format!("reports/{rel}.json");
    let (entry, report) = match result {
        Ok(set) => {
            let meta = set.meta.clone().expect("indexers always set meta");
            let complete = meta
                .variables
                .values()
                .all(|v| matches!(v.status, VariableStatus::Referenced | VariableStatus::Inlined));
            let status = if complete { EntryStatus::Ok } else { EntryStatus::Partial };
            write_atomic(&out.join(&refs_rel), &set.to_json_bytes())?;
            let entry = CatalogEntry {
                fingerprint: meta.source.fingerprint,
                status,
                refs: Some(refs_rel),
                report: report_rel.clone(),
                error: None,
            };
            (entry, FileReport { file: rel.into(), status, error: None, index: Some(meta) })
        }
        Err(msg) => {
            let _ = std::fs::remove_file(out.join(&refs_rel));
            let entry = CatalogEntry {
                fingerprint,
                status: EntryStatus::Failed,
                refs: None,
                report: report_rel.clone(),
                error: Some(msg.clone()),
            };
            (entry, FileReport { file: rel.into(), status: EntryStatus::Failed, error: Some(msg), index: None })
        }
    };
    write_atomic(&out.join(&report_rel), &serde_json::to_vec_pretty(&report).expect("report serializes"))?;
    Ok(entry)
}

fn remove_outputs(out: &Path, entry: &CatalogEntry) {
    if let Some(r) = &entry.refs {
        let _ = std::fs::remove_file(out.join(r));
    }
    let _ = std::fs::remove_file(out.join(&entry.report));
}

fn with_slash(prefix: &str) -> String {
    if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// An error and all its sources, joined by `: `.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

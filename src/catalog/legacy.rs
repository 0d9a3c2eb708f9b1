//! The directory layout catalogs had before the database, which is now the export format:
//!
//! ```text
//! DIR/catalog.json            datasets, fingerprints, status, joins
//! DIR/refs/<id>.json          the Kerchunk v1 JSON of each file
//! DIR/reports/<id>.json       what happened to every variable, or why the file failed
//! DIR/joins/<id>.json         the join document of each joined dataset
//! ```
//!
//! [`export`] writes it from a database; [`convert`] reads it into one, once.

use std::path::Path;

use super::db::{CatalogDb, DatasetRow};
use super::{write_atomic, Catalog, CatalogEntry, CatalogError, EntryStatus, CATALOG_FILE};
use crate::refs::ReferenceSet;
use crate::report::FileReport;

/// Converts the old-layout catalog of `dir` into `db`, then renames its `catalog.json` to
/// `catalog.json.converted` (the per-dataset files are left where they are).
pub(super) fn convert(dir: &Path, db: &mut CatalogDb) -> Result<(), CatalogError> {
    let catalog = Catalog::load_json(dir)?.expect("the caller saw catalog.json");
    super::db::import(db, &catalog, dir)?;
    let from = dir.join(CATALOG_FILE);
    let to = dir.join(format!("{CATALOG_FILE}.converted"));
    std::fs::rename(&from, &to).map_err(|source| CatalogError::Write { path: from, source })?;
    eprintln!(
        "zarrgate: converted the catalog in {} to {} ({} datasets, {} joins); the old files \
         (catalog.json.converted, refs/, reports/, joins/) are no longer read and may be removed",
        dir.display(),
        super::db::DB_FILE,
        catalog.datasets.len(),
        catalog.joins.len()
    );
    Ok(())
}

pub(super) fn read_refs(path: &Path) -> Result<ReferenceSet, CatalogError> {
    let bytes = std::fs::read(path).map_err(|source| CatalogError::Read { path: path.into(), source })?;
    let doc: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| CatalogError::Parse { path: path.into(), source })?;
    ReferenceSet::from_json(&doc).map_err(|e| CatalogError::Refs { path: path.into(), why: e.to_string() })
}

/// What one export wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Exported {
    pub datasets: usize,
    pub joins: usize,
}

/// Writes the old layout of the datasets named (every one when `ids` is empty) into `out`.
/// An id that is neither a file nor a join of the catalog is an error, and nothing is written.
pub fn export(db: &CatalogDb, ids: &[String], out: &Path) -> Result<Exported, CatalogError> {
    let settings = db.settings()?.ok_or(CatalogError::Empty)?;
    let mut catalog = Catalog::new(settings.root, settings.url_prefix);
    let mut datasets: Vec<DatasetRow> = Vec::new();
    let mut joins = Vec::new();
    if ids.is_empty() {
        joins = db.joins()?;
    } else {
        for id in ids {
            match (db.dataset(id)?, db.join(id)?) {
                (None, None) => return Err(CatalogError::NoDataset(id.clone())),
                (file, join) => {
                    datasets.extend(file);
                    joins.extend(join);
                }
            }
        }
    }
    let mut count = Exported::default();
    let mut write_one = |row: &DatasetRow, catalog: &mut Catalog| -> Result<(), CatalogError> {
        catalog.datasets.insert(row.id.clone(), export_dataset(row, out)?);
        count.datasets += 1;
        Ok(())
    };
    if ids.is_empty() {
        let mut after = String::new();
        loop {
            let page = db.dataset_ids_after(&after, 1000)?;
            let Some(last) = page.last().cloned() else { break };
            for id in &page {
                if let Some(row) = db.dataset(id)? {
                    write_one(&row, &mut catalog)?;
                }
            }
            after = last;
        }
    } else {
        for row in &datasets {
            write_one(row, &mut catalog)?;
        }
    }
    for join in joins {
        if let (Some(rel), Some(doc)) = (&join.entry.refs, &join.doc) {
            write_atomic(&out.join(rel), &super::packed::inflate(doc).map_err(CatalogError::Packed)?)?;
        }
        catalog.joins.insert(join.id, join.entry);
        count.joins += 1;
    }
    catalog.save_json(out)?;
    Ok(count)
}

fn export_dataset(row: &DatasetRow, out: &Path) -> Result<CatalogEntry, CatalogError> {
    let set = row.refs.as_deref().map(super::packed::unpack).transpose().map_err(CatalogError::Packed)?;
    let refs_rel = format!("refs/{}.json", row.id);
    let report_rel = format!("reports/{}.json", row.id);
    if let Some(set) = &set {
        write_atomic(&out.join(&refs_rel), &set.to_json_bytes())?;
    }
    let report = FileReport {
        file: row.id.clone(),
        status: row.status,
        error: row.error.clone(),
        index: set.as_ref().and_then(|s| s.meta.clone()),
    };
    write_atomic(&out.join(&report_rel), &serde_json::to_vec_pretty(&report).expect("reports serialize"))?;
    Ok(CatalogEntry {
        fingerprint: row.fingerprint,
        status: if set.is_none() { EntryStatus::Failed } else { row.status },
        refs: set.is_some().then_some(refs_rel),
        report: report_rel,
        error: row.error.clone(),
    })
}

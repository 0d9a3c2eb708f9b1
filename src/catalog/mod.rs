//! The catalog of an indexed tree: which files were indexed, their fingerprints, their
//! reference sets, and the joined datasets.
//!
//! - [`db`]: the catalog database (SQLite), what the indexer writes and the gateway reads.
//! - [`items`]: what discovery (STAC search) knows of each dataset.
//! - [`packed`]: the compact stored form of a reference set.
//! - [`legacy`]: the former directory layout (`catalog.json` and one JSON file per
//!   dataset), which is the export format and is converted into a database on first use.

pub mod db;
pub mod items;
pub mod legacy;
pub mod packed;

pub use db::{CatalogDb, DatasetRow, ItemQuery, ItemsExtent, JoinRow, Kind, Settings};
pub use items::Item;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

/// What identifies one version of a source file. A change in either field means the file must
/// be indexed again and its old references must not be served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch (negative before it).
    pub mtime_ns: i64,
    /// Inode and device: a file replaced by another (`mv`, `rsync`, `cp` to a new name) is a
    /// new inode, whatever size and modification time it was given.
    #[serde(default)]
    pub ino: u64,
    #[serde(default)]
    pub dev: u64,
    /// Status-change time in nanoseconds: no user can set it, so a file rewritten in place
    /// with its size and modification time restored (`cp -p`, `rsync -a`, `touch -r`) still
    /// shows. The last three are 0 in catalogs written before they were recorded.
    #[serde(default)]
    pub ctime_ns: i64,
}

impl Fingerprint {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let mtime_ns = meta
            .modified()
            .ok()
            .map(|t| match t.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_nanos() as i64,
                Err(e) => -(e.duration().as_nanos() as i64),
            })
            .unwrap_or(0);
        Fingerprint {
            size: meta.len(),
            mtime_ns,
            ino: meta.ino(),
            dev: meta.dev(),
            ctime_ns: meta.ctime().saturating_mul(1_000_000_000).saturating_add(meta.ctime_nsec()),
        }
    }

    pub fn of_path(path: &Path) -> std::io::Result<Self> {
        Ok(Self::of(&std::fs::metadata(path)?))
    }

    /// An object of an object store or HTTP server: its size, its `Last-Modified` and a
    /// 64-bit digest of its `ETag` (FNV-1a), marked by a device number no file has.
    pub fn remote(size: u64, modified_ns: i64, etag: Option<&str>) -> Self {
        let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
        for b in etag.unwrap_or("").bytes() {
            digest = (digest ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Fingerprint { size, mtime_ns: modified_ns, ino: digest, dev: Self::REMOTE, ctime_ns: 0 }
    }

    /// The device number of [`Fingerprint::remote`].
    pub const REMOTE: u64 = u64::MAX;

    pub fn is_remote(&self) -> bool {
        self.dev == Self::REMOTE
    }

    /// Whether inode, device and change time were recorded (not a catalog from before them).
    pub fn knows_identity(&self) -> bool {
        self.ino != 0 || self.ctime_ns != 0
    }

    /// Why the file now fingerprinted `now` is not the one this fingerprint was taken of, if
    /// it is not. Inode, device and change time are compared when they were recorded.
    pub fn changed(&self, now: &Fingerprint) -> Option<String> {
        if now.size != self.size {
            return Some(format!("size {} is now {}", self.size, now.size));
        }
        if now.mtime_ns != self.mtime_ns {
            return Some("its modification time changed".into());
        }
        if self.is_remote() && now.is_remote() {
            if now.ino != self.ino {
                return Some("its ETag changed".into());
            }
        } else if self.knows_identity() {
            if (now.ino, now.dev) != (self.ino, self.dev) {
                return Some("it was replaced by another file".into());
            }
            if now.ctime_ns != self.ctime_ns {
                return Some("it was changed (its status-change time moved)".into());
            }
        }
        None
    }

    /// Every field, for cache keys and ETags.
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut b = [0; 40];
        b[..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..16].copy_from_slice(&self.mtime_ns.to_le_bytes());
        b[16..24].copy_from_slice(&self.ino.to_le_bytes());
        b[24..32].copy_from_slice(&self.dev.to_le_bytes());
        b[32..].copy_from_slice(&self.ctime_ns.to_le_bytes());
        b
    }
}

/// Outcome of indexing one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryStatus {
    /// Every variable is referenced or inlined.
    Ok,
    /// Indexed, but some variables need the gateway (transcode) or were refused.
    Partial,
    /// The file could not be indexed; `error` says why.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub fingerprint: Fingerprint,
    pub status: EntryStatus,
    /// Reference JSON, relative to the catalog directory (absent when indexing failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refs: Option<String>,
    /// Per-file report, relative to the catalog directory.
    pub report: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A joined dataset of the catalog (see `docs/joins.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinEntry {
    /// `Ok` or `Failed`.
    pub status: EntryStatus,
    /// Member files, relative to the root.
    pub members: Vec<String>,
    /// The join document, relative to the catalog directory (absent when the join failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the join left out or served differently, one sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// A digest of the definition and its members' fingerprints: the join is rebuilt when it
    /// changes.
    #[serde(default)]
    pub inputs: String,
}

impl JoinEntry {
    pub fn failed(members: Vec<String>, error: String, inputs: String) -> Self {
        JoinEntry { status: EntryStatus::Failed, members, refs: None, error: Some(error), notes: vec![], inputs }
    }
}

/// `catalog.json` of an exported (or old-layout) catalog directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub version: u32,
    /// The indexed tree; dataset ids are paths relative to it.
    pub root: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_prefix: Option<String>,
    pub datasets: BTreeMap<String, CatalogEntry>,
    /// Joined datasets by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub joins: BTreeMap<String, JoinEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("catalog {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("catalog database {path}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("catalog database {path} was written by a newer zarrgate")]
    Newer { path: PathBuf },
    #[error("published catalog {path}: {why}")]
    Published { path: PathBuf, why: String },
    #[error("references {path} are not valid: {why}")]
    Refs { path: PathBuf, why: String },
    #[error(transparent)]
    Packed(#[from] packed::PackError),
    #[error("the catalog is empty: nothing was indexed into it yet")]
    Empty,
    #[error("the catalog has no dataset {0:?}")]
    NoDataset(String),
}

pub const CATALOG_FILE: &str = "catalog.json";

impl Catalog {
    pub fn new(root: PathBuf, url_prefix: Option<String>) -> Self {
        Catalog { version: 1, root, url_prefix, datasets: BTreeMap::new(), joins: BTreeMap::new() }
    }

    /// Loads `dir/catalog.json`, or `None` if there is none.
    pub fn load_json(dir: &Path) -> Result<Option<Self>, CatalogError> {
        let path = dir.join(CATALOG_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CatalogError::Read { path, source }),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|source| CatalogError::Parse { path, source })
    }

    /// Writes `dir/catalog.json` atomically.
    pub fn save_json(&self, dir: &Path) -> Result<(), CatalogError> {
        let bytes = serde_json::to_vec_pretty(self).expect("catalog serializes");
        write_atomic(&dir.join(CATALOG_FILE), &bytes)
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`, so readers
/// never see a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CatalogError> {
    let err = |source| CatalogError::Write { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Catalog::load_json(dir.path()).unwrap().is_none());
        let mut cat = Catalog::new("/data".into(), Some("s3://b/".into()));
        cat.datasets.insert(
            "a/b.nc".into(),
            CatalogEntry {
                fingerprint: Fingerprint { size: 10, mtime_ns: -5, ..Default::default() },
                status: EntryStatus::Partial,
                refs: Some("refs/a/b.nc.json".into()),
                report: "reports/a/b.nc.json".into(),
                error: None,
            },
        );
        cat.save_json(dir.path()).unwrap();
        assert_eq!(Catalog::load_json(dir.path()).unwrap().unwrap(), cat);
    }

    #[test]
    fn corrupt_catalog_is_a_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CATALOG_FILE), b"{not json").unwrap();
        assert!(matches!(Catalog::load_json(dir.path()), Err(CatalogError::Parse { .. })));
    }
}

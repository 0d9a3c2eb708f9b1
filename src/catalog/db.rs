//! The catalog database: one SQLite file per catalog directory.
//!
//! # Tables
//! - `datasets`: one row per indexed file, keyed by `prefix` (its id and a `/`, so rows sort
//!   as the keys of the bucket do). The row holds the fingerprint, status and error; its
//!   reference set lives in `refs`, in the packed form ([`super::packed`]), so scans of the
//!   catalog never read reference sets.
//! - `joins`: one row per joined dataset, with its join document (deflated JSON).
//! - `meta`: the indexed root, the URL prefix, the format version and a generation counter
//!   that every write transaction increments (readers poll it to see changes).
//!
//! # Consistency
//! Writers change rows only inside transactions ([`CatalogDb::write`]); the database runs in
//! WAL mode, so a reader always sees the last committed state, and a writer killed mid-run
//! leaves the state of its last commit.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension as _};

use super::items::Item;
use super::{Catalog, CatalogError, EntryStatus, Fingerprint, JoinEntry, CATALOG_FILE};

pub const DB_FILE: &str = "catalog.db";
const FORMAT: i64 = 1;

/// In a published catalog directory: the name of the current snapshot.
pub const CURRENT_FILE: &str = "CURRENT";
/// Snapshots a published directory keeps (the current one and those just before it, which
/// replicas may still be reading until their next poll).
const SNAPSHOTS_KEPT: usize = 3;

/// What [`CatalogDb::publish`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Published {
    pub snapshot: PathBuf,
    pub generation: u64,
    /// False if the directory already held this generation.
    pub new: bool,
}

/// The current snapshot of a published catalog directory (one `zarrgate publish` writes), if
/// `dir` is one.
pub fn published(dir: &Path) -> Result<Option<PathBuf>, CatalogError> {
    let current = dir.join(CURRENT_FILE);
    let name = match std::fs::read_to_string(&current) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CatalogError::Read { path: current, source }),
    };
    if !is_snapshot_name(&name) {
        return Err(CatalogError::Published { path: current, why: format!("{name:?} is not a catalog snapshot name") });
    }
    Ok(Some(dir.join(name)))
}

fn is_snapshot_name(name: &str) -> bool {
    name.strip_prefix("catalog-")
        .and_then(|n| n.strip_suffix(".db"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A path as an SQLite URI (for `immutable=1`).
fn file_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for b in path.to_string_lossy().bytes() {
        match b {
            b'?' | b'#' | b'%' => uri.push_str(&format!("%{b:02X}")),
            _ => uri.push(b as char),
        }
    }
    uri
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refs (id INTEGER PRIMARY KEY, packed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    prefix TEXT PRIMARY KEY,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ino INTEGER NOT NULL,
    dev INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    status TEXT NOT NULL, error TEXT, refs INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS joins (
    prefix TEXT PRIMARY KEY, status TEXT NOT NULL, members TEXT NOT NULL, doc BLOB,
    error TEXT, notes TEXT NOT NULL, inputs TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stac_items (
    id INTEGER PRIMARY KEY, prefix TEXT NOT NULL UNIQUE,
    west REAL, south REAL, east REAL, north REAL, start TEXT, stop TEXT
);
CREATE INDEX IF NOT EXISTS stac_items_stop ON stac_items (stop);
CREATE TABLE IF NOT EXISTS stac_docs (id INTEGER PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS stac_facets (
    name TEXT NOT NULL, value TEXT NOT NULL, item INTEGER NOT NULL, PRIMARY KEY (name, value, item)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stac_facets_of ON stac_facets (item);
";

/// Row counts kept in `meta` by triggers, so that counting the catalog never scans it. Made
/// with the tables (rows are only ever inserted or deleted once, never replaced: writers
/// upsert, which updates in place).
const COUNTERS: &str = "
INSERT OR IGNORE INTO meta (key, value) VALUES ('datasets', '0'), ('joins', '0');
CREATE TRIGGER IF NOT EXISTS datasets_added AFTER INSERT ON datasets
    BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'datasets'; END;
CREATE TRIGGER IF NOT EXISTS datasets_removed AFTER DELETE ON datasets
    BEGIN UPDATE meta SET value = CAST(value AS INTEGER) - 1 WHERE key = 'datasets'; END;
CREATE TRIGGER IF NOT EXISTS joins_added AFTER INSERT ON joins
    BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'joins'; END;
CREATE TRIGGER IF NOT EXISTS joins_removed AFTER DELETE ON joins
    BEGIN UPDATE meta SET value = CAST(value AS INTEGER) - 1 WHERE key = 'joins'; END;
";

/// A search of the discovery records; every part given must match.
#[derive(Clone, Debug, Default)]
pub struct ItemQuery {
    /// West, south, east, north: records whose box meets it.
    pub bbox: Option<[f64; 4]>,
    /// RFC 3339 bounds: records whose time range meets them.
    pub start: Option<String>,
    pub end: Option<String>,
    pub ids: Vec<String>,
    /// Facet name and the values it may have.
    pub facets: Vec<(String, Vec<String>)>,
    /// Records after this number (a page's last; 0 for the first page).
    pub after: i64,
    pub limit: usize,
}

/// The union of a catalog's discovery records: box, first and last time, and how many.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ItemsExtent {
    pub bbox: Option<[f64; 4]>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub count: u64,
}

fn item_of_row(r: &rusqlite::Row) -> rusqlite::Result<(i64, String, Item)> {
    let b: [Option<f64>; 4] = [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?];
    let bbox = match b {
        [Some(w), Some(s), Some(e), Some(n)] => Some([w, s, e, n]),
        _ => None,
    };
    let doc: Vec<u8> = r.get(8)?;
    let mut item = super::packed::inflate(&doc).ok().map(|json| Item::from_doc_json(&json)).unwrap_or_default();
    item.bbox = bbox;
    item.start = r.get(6)?;
    item.end = r.get(7)?;
    Ok((r.get(0)?, id_of(r.get(1)?), item))
}

/// One indexed file.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetRow {
    pub id: String,
    pub fingerprint: Fingerprint,
    pub status: EntryStatus,
    pub error: Option<String>,
    /// The packed reference set (absent when indexing failed).
    pub refs: Option<Vec<u8>>,
}

/// One joined dataset: its catalog entry, and its join document deflated.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinRow {
    pub id: String,
    pub entry: JoinEntry,
    pub doc: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Join,
}

/// What the catalog was built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub root: PathBuf,
    pub url_prefix: Option<String>,
}

pub struct CatalogDb {
    conn: Connection,
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> CatalogError + '_ {
    move |e| CatalogError::Db { path: path.to_path_buf(), source: e }
}

fn status_text(s: EntryStatus) -> &'static str {
    match s {
        EntryStatus::Ok => "ok",
        EntryStatus::Partial => "partial",
        EntryStatus::Failed => "failed",
    }
}

fn status_of(text: &str) -> EntryStatus {
    match text {
        "ok" => EntryStatus::Ok,
        "partial" => EntryStatus::Partial,
        _ => EntryStatus::Failed,
    }
}

fn prefix_of(id: &str) -> String {
    format!("{id}/")
}

fn id_of(prefix: String) -> String {
    let mut id = prefix;
    id.pop();
    id
}

impl CatalogDb {
    /// Opens (creating it if needed) the catalog of `dir`. A catalog directory of the former
    /// layout (`catalog.json` and one JSON file per dataset) is converted on first use.
    pub fn open(dir: &Path) -> Result<Self, CatalogError> {
        if published(dir)?.is_some() {
            return Err(CatalogError::Published {
                path: dir.into(),
                why: "it is written by `zarrgate publish` only: index into the catalog you publish from".into(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| CatalogError::Write { path: dir.into(), source })?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(db_err(&path))?;
        let mut db = Self::setup(conn, &path)?;
        if dir.join(CATALOG_FILE).exists() && db.settings()?.is_none() {
            super::legacy::convert(dir, &mut db)?;
        }
        Ok(db)
    }

    /// Opens the catalog of `dir` if there is one (a database, a published directory, read
    /// only, or a directory to convert).
    pub fn open_existing(dir: &Path) -> Result<Option<Self>, CatalogError> {
        if published(dir)?.is_some() {
            return Self::reader(dir).map(Some);
        }
        if !dir.join(DB_FILE).exists() && !dir.join(CATALOG_FILE).exists() {
            return Ok(None);
        }
        let db = Self::open(dir)?;
        Ok(db.settings()?.is_some().then_some(db))
    }

    /// Another connection to the same database, for reading beside this one; for a published
    /// directory, its current snapshot, read only.
    pub fn reader(dir: &Path) -> Result<Self, CatalogError> {
        if let Some(snapshot) = published(dir)? {
            return Self::snapshot(&snapshot);
        }
        let path = dir.join(DB_FILE);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&path, flags).map_err(db_err(&path))?;
        Self::setup(conn, &path)
    }

    /// Opens a published snapshot. Snapshots never change once published, so SQLite is told so
    /// (`immutable=1`): no locks, no journal, which is what makes a snapshot on a shared
    /// volume safe to read from many hosts while the next one is written beside it.
    fn snapshot(path: &Path) -> Result<Self, CatalogError> {
        let err = db_err(path);
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(format!("{}?immutable=1", file_uri(path)), flags).map_err(&err)?;
        Self::checked(conn, path)
    }

    /// A connection to a catalog this build can read (not one of a newer format).
    fn checked(conn: Connection, path: &Path) -> Result<Self, CatalogError> {
        let format: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| r.get::<_, String>(0))
            .optional()
            .map_err(db_err(path))?
            .and_then(|v| v.parse().ok());
        if format.is_some_and(|f| f > FORMAT) {
            return Err(CatalogError::Newer { path: path.into() });
        }
        Ok(CatalogDb { conn })
    }

    /// The file this connection reads.
    pub fn file(&self) -> PathBuf {
        self.path()
    }

    /// Publishes a consistent copy of this catalog into `to` for gateways that read it there
    /// (`serve --catalog TO`, typically on a volume shared with replicas): the copy is written
    /// beside the current one as `catalog-GENERATION.db`, made durable, then named in
    /// `CURRENT` by an atomic rename. Older snapshots beyond the last few are deleted.
    pub fn publish(&self, to: &Path) -> Result<Published, CatalogError> {
        let write = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CatalogError::Write { path: path.clone(), source }
        };
        std::fs::create_dir_all(to).map_err(write(to))?;
        let tmp = to.join(".publishing.db.tmp");
        let _ = std::fs::remove_file(&tmp);
        // One read transaction: the copy is the catalog as of one commit.
        self.conn.execute("VACUUM INTO ?1", [tmp.to_string_lossy()]).map_err(self.err())?;
        let generation = {
            let copy = Connection::open(&tmp).map_err(db_err(&tmp))?;
            copy.execute_batch("PRAGMA journal_mode = DELETE;").map_err(db_err(&tmp))?;
            CatalogDb { conn: copy }.generation()?
        };
        let name = format!("catalog-{generation:012}.db");
        let snapshot = to.join(&name);
        if published(to)?.as_deref() == Some(snapshot.as_path()) {
            let _ = std::fs::remove_file(&tmp);
            return Ok(Published { snapshot, generation, new: false });
        }
        // Snapshots hold every dataset's references: readable by the service's user and group
        // (the replicas' `fsGroup`), not by everyone.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640)).map_err(write(&tmp))?;
        }
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(write(&tmp))?;
        std::fs::rename(&tmp, &snapshot).map_err(write(&snapshot))?;
        let current_tmp = to.join(".CURRENT.tmp");
        std::fs::write(&current_tmp, format!("{name}\n")).map_err(write(&current_tmp))?;
        std::fs::File::open(&current_tmp).and_then(|f| f.sync_all()).map_err(write(&current_tmp))?;
        std::fs::rename(&current_tmp, to.join(CURRENT_FILE)).map_err(write(to))?;
        std::fs::File::open(to).and_then(|d| d.sync_all()).map_err(write(to))?;
        let mut old: Vec<String> = std::fs::read_dir(to)
            .map_err(write(to))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| is_snapshot_name(n))
            .collect();
        old.sort();
        for stale in old.iter().rev().skip(SNAPSHOTS_KEPT) {
            let _ = std::fs::remove_file(to.join(stale));
        }
        Ok(Published { snapshot, generation, new: true })
    }

    fn setup(conn: Connection, path: &Path) -> Result<Self, CatalogError> {
        let err = db_err(path);
        conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(&err)?;
        // Large pages keep rows of a few kilobytes from leaving most of a page empty.
        conn.execute_batch("PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(&err)?;
        let fresh: bool = conn
            .query_row("SELECT NOT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'meta')", [], |r| r.get(0))
            .map_err(&err)?;
        if fresh {
            conn.execute_batch(&format!("BEGIN; {SCHEMA} {COUNTERS} COMMIT;")).map_err(&err)?;
        } else {
            conn.execute_batch(SCHEMA).map_err(&err)?;
        }
        Self::checked(conn, path)
    }

    fn path(&self) -> PathBuf {
        self.conn.path().map(PathBuf::from).unwrap_or_default()
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> CatalogError {
        let path = self.path();
        move |e| CatalogError::Db { path: path.clone(), source: e }
    }

    fn meta(&self, key: &str) -> Result<Option<String>, CatalogError> {
        self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional().map_err(self.err())
    }

    /// The root and URL prefix, or `None` for a catalog nothing was written to yet.
    pub fn settings(&self) -> Result<Option<Settings>, CatalogError> {
        let Some(root) = self.meta("root")? else { return Ok(None) };
        Ok(Some(Settings { root: PathBuf::from(root), url_prefix: self.meta("url_prefix")? }))
    }

    /// Incremented by every committed write.
    pub fn generation(&self) -> Result<u64, CatalogError> {
        Ok(self.meta("generation")?.and_then(|g| g.parse().ok()).unwrap_or(0))
    }

    /// When the catalog was first written (seconds since the epoch).
    pub fn created(&self) -> Result<Option<i64>, CatalogError> {
        Ok(self.meta("created")?.and_then(|g| g.parse().ok()))
    }

    pub fn dataset(&self, id: &str) -> Result<Option<DatasetRow>, CatalogError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT d.size, d.mtime_ns, d.ino, d.dev, d.ctime_ns, d.status, d.error, r.packed
                 FROM datasets d LEFT JOIN refs r ON r.id = d.refs WHERE d.prefix = ?1",
            )
            .and_then(|mut s| {
                s.query_row([prefix_of(id)], |r| {
                    Ok(DatasetRow {
                        id: id.to_string(),
                        fingerprint: Fingerprint {
                            size: r.get::<_, i64>(0)? as u64,
                            mtime_ns: r.get(1)?,
                            ino: r.get::<_, i64>(2)? as u64,
                            dev: r.get::<_, i64>(3)? as u64,
                            ctime_ns: r.get(4)?,
                        },
                        status: status_of(&r.get::<_, String>(5)?),
                        error: r.get(6)?,
                        refs: r.get(7)?,
                    })
                })
                .optional()
            })
            .map_err(self.err())?;
        Ok(row)
    }

    /// The fingerprint and status of a dataset, without its references.
    pub fn dataset_state(&self, id: &str) -> Result<Option<(Fingerprint, EntryStatus)>, CatalogError> {
        self.conn
            .prepare_cached("SELECT size, mtime_ns, ino, dev, ctime_ns, status FROM datasets WHERE prefix = ?1")
            .and_then(|mut s| {
                s.query_row([prefix_of(id)], |r| {
                    let fp = Fingerprint {
                        size: r.get::<_, i64>(0)? as u64,
                        mtime_ns: r.get(1)?,
                        ino: r.get::<_, i64>(2)? as u64,
                        dev: r.get::<_, i64>(3)? as u64,
                        ctime_ns: r.get(4)?,
                    };
                    Ok((fp, status_of(&r.get::<_, String>(5)?)))
                })
                .optional()
            })
            .map_err(self.err())
    }

    pub fn join(&self, id: &str) -> Result<Option<JoinRow>, CatalogError> {
        let mut rows = self.joins_where("WHERE prefix = ?1", &prefix_of(id))?;
        Ok(rows.pop())
    }

    /// Every joined dataset (there is one per join definition, not per file).
    pub fn joins(&self) -> Result<Vec<JoinRow>, CatalogError> {
        self.joins_where("WHERE prefix >= ?1", "")
    }

    fn joins_where(&self, clause: &str, arg: &str) -> Result<Vec<JoinRow>, CatalogError> {
        let sql =
            format!("SELECT prefix, status, members, doc, error, notes, inputs FROM joins {clause} ORDER BY prefix");
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.err())?;
        let rows = stmt
            .query_map([arg], |r| {
                let members: String = r.get(2)?;
                let notes: String = r.get(5)?;
                let doc: Option<Vec<u8>> = r.get(3)?;
                let id = id_of(r.get(0)?);
                Ok(JoinRow {
                    entry: JoinEntry {
                        status: status_of(&r.get::<_, String>(1)?),
                        members: serde_json::from_str(&members).unwrap_or_default(),
                        refs: doc.as_ref().map(|_| format!("joins/{id}.json")),
                        error: r.get(4)?,
                        notes: serde_json::from_str(&notes).unwrap_or_default(),
                        inputs: r.get(6)?,
                    },
                    id,
                    doc,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.err())?;
        Ok(rows)
    }

    /// The prefixes of every joined dataset, built or not.
    pub fn join_prefixes(&self) -> Result<Vec<String>, CatalogError> {
        let mut stmt = self.conn.prepare_cached("SELECT prefix FROM joins").map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.err())?;
        Ok(rows)
    }

    /// What decides whether a stored join is current, and its status.
    pub fn join_state(&self, id: &str) -> Result<Option<(String, EntryStatus)>, CatalogError> {
        self.conn
            .prepare_cached("SELECT inputs, status FROM joins WHERE prefix = ?1")
            .and_then(|mut s| {
                s.query_row([prefix_of(id)], |r| Ok((r.get::<_, String>(0)?, status_of(&r.get::<_, String>(1)?))))
                    .optional()
            })
            .map_err(self.err())
    }

    /// The dataset whose keys would hold `key`: the longest prefix of `key` that names a file
    /// or a join (a file, when both have it).
    pub fn holding(&self, key: &str) -> Result<Option<(String, Kind)>, CatalogError> {
        let mut best: Option<(String, Kind)> = None;
        for (table, kind) in [("datasets", Kind::File), ("joins", Kind::Join)] {
            let sql = format!("SELECT prefix FROM {table} WHERE prefix <= ?1 ORDER BY prefix DESC LIMIT 1");
            let floor: Option<String> = self
                .conn
                .prepare_cached(&sql)
                .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
                .map_err(self.err())?;
            if let Some(p) = floor.filter(|p| key.starts_with(p.as_str())) {
                if best.as_ref().is_none_or(|(b, _)| p.len() > b.len()) {
                    best = Some((p, kind));
                }
            }
        }
        Ok(best)
    }

    /// Up to `limit` dataset ids after `after` (all of them, failed ones too), in key order.
    pub fn dataset_ids_after(&self, after: &str, limit: usize) -> Result<Vec<String>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT prefix FROM datasets WHERE prefix > ?1 ORDER BY prefix LIMIT ?2")
            .map_err(self.err())?;
        let after = if after.is_empty() { String::new() } else { prefix_of(after) };
        let rows = stmt
            .query_map(params![after, limit as i64], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.map(|p| p.map(id_of)).collect::<Result<Vec<_>, _>>())
            .map_err(self.err())?;
        Ok(rows)
    }

    /// Whether `prefix` (an id and `/`) names a dataset, and of which kind (a file wins over a
    /// join of the same id).
    pub fn kind_of(&self, prefix: &str) -> Result<Option<Kind>, CatalogError> {
        for (table, kind) in [("datasets", Kind::File), ("joins", Kind::Join)] {
            let sql = format!("SELECT 1 FROM {table} WHERE prefix = ?1");
            let found = self.conn.prepare_cached(&sql).and_then(|mut s| s.exists([prefix])).map_err(self.err())?;
            if found {
                return Ok(Some(kind));
            }
        }
        Ok(None)
    }

    /// Up to `limit` servable datasets (indexed files and built joins) whose prefix is after
    /// `from` (or at it, when `inclusive`), in key order.
    pub fn prefixes(&self, from: &str, inclusive: bool, limit: usize) -> Result<Vec<(String, Kind)>, CatalogError> {
        let op = if inclusive { ">=" } else { ">" };
        let sql = format!(
            "SELECT prefix, kind FROM (
                SELECT prefix, 0 AS kind FROM datasets WHERE prefix {op} ?1 AND refs IS NOT NULL
                UNION ALL
                SELECT prefix, 1 AS kind FROM joins WHERE prefix {op} ?1 AND doc IS NOT NULL
             ) ORDER BY prefix, kind LIMIT ?2"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.err())?;
        let mut rows: Vec<(String, Kind)> = stmt
            .query_map(params![from, limit as i64], |r| {
                let kind = if r.get::<_, i64>(1)? == 0 { Kind::File } else { Kind::Join };
                Ok((r.get::<_, String>(0)?, kind))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.err())?;
        rows.dedup_by(|later, earlier| later.0 == earlier.0);
        Ok(rows)
    }

    /// Datasets and joins in the catalog, from the counters (a scan only for a database made
    /// before them).
    /// Whether discovery records were written for every dataset (false for a catalog written
    /// before they were kept).
    pub fn described(&self) -> Result<bool, CatalogError> {
        Ok(self.meta("described")?.is_some())
    }

    /// Files and joined datasets whose ids start with `dir` (a directory, ending with `/`).
    pub fn count_under(&self, dir: &str) -> Result<u64, CatalogError> {
        let end = format!("{dir}\u{10FFFF}");
        self.conn
            .query_row(
                "SELECT (SELECT count(*) FROM datasets WHERE prefix > ?1 AND prefix < ?2)
                      + (SELECT count(*) FROM joins WHERE prefix > ?1 AND prefix < ?2)",
                [dir, &end],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.err())
    }

    fn has_items(&self) -> Result<bool, CatalogError> {
        self.conn
            .query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'stac_items')", [], |r| r.get(0))
            .map_err(self.err())
    }

    /// The discovery records that match `q`, in the order they were written (a record's
    /// number, which a re-index renews): at most `q.limit`, after number `q.after`. (A catalog
    /// written before records were kept has none.)
    ///
    /// With a facet of one value, the facet's index drives the search (its entries for one value
    /// are in record order, so a page stops as soon as it is full, however rare or common the
    /// value); otherwise the records are read in order and every filter checked.
    pub fn items(&self, q: &ItemQuery) -> Result<Vec<(i64, String, Item)>, CatalogError> {
        if !self.has_items()? {
            return Ok(Vec::new());
        }
        let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
        let mut arg = |sql: &mut String, text: &str, value: Box<dyn rusqlite::ToSql>| {
            args.push(value);
            sql.push_str(&text.replace('?', &format!("?{}", args.len())));
        };
        let driver = q.facets.iter().position(|(_, values)| values.len() == 1);
        let mut sql =
            String::from("SELECT i.id, i.prefix, i.west, i.south, i.east, i.north, i.start, i.stop, d.doc FROM ");
        let order = match driver {
            Some(k) => {
                let (name, values) = &q.facets[k];
                sql.push_str("stac_facets f JOIN stac_items i ON i.id = f.item JOIN stac_docs d ON d.id = i.id");
                arg(&mut sql, " WHERE f.name = ?", Box::new(name.clone()));
                arg(&mut sql, " AND f.value = ?", Box::new(values[0].clone()));
                arg(&mut sql, " AND f.item > ?", Box::new(q.after));
                "f.item"
            }
            None => {
                sql.push_str("stac_items i JOIN stac_docs d ON d.id = i.id");
                arg(&mut sql, " WHERE i.id > ?", Box::new(q.after));
                "i.id"
            }
        };
        if let Some([w, s, e, n]) = q.bbox {
            arg(&mut sql, " AND i.north >= ?", Box::new(s));
            arg(&mut sql, " AND i.south <= ?", Box::new(n));
            // Longitude arcs: a box crossing 180° (west > east) is two.
            let arcs = if w <= e { vec![(w, e)] } else { vec![(w, 180.0), (-180.0, e)] };
            sql.push_str(" AND (");
            for (i, (a, b)) in arcs.into_iter().enumerate() {
                if i > 0 {
                    sql.push_str(" OR ");
                }
                arg(&mut sql, "(i.west <= i.east AND i.east >= ?", Box::new(a));
                arg(&mut sql, " AND i.west <= ?)", Box::new(b));
                arg(&mut sql, " OR (i.west > i.east AND (i.east >= ?", Box::new(a));
                arg(&mut sql, " OR i.west <= ?))", Box::new(b));
            }
            sql.push(')');
        }
        if let Some(a) = &q.start {
            arg(&mut sql, " AND i.stop >= ?", Box::new(a.clone()));
        }
        if let Some(b) = &q.end {
            arg(&mut sql, " AND i.start <= ?", Box::new(b.clone()));
        }
        if !q.ids.is_empty() {
            sql.push_str(" AND i.prefix IN (");
            for (i, id) in q.ids.iter().enumerate() {
                arg(&mut sql, if i == 0 { "?" } else { ", ?" }, Box::new(prefix_of(id)));
            }
            sql.push(')');
        }
        for (k, (name, values)) in q.facets.iter().enumerate() {
            if Some(k) == driver {
                continue;
            }
            arg(&mut sql, " AND EXISTS (SELECT 1 FROM stac_facets g WHERE g.name = ?", Box::new(name.clone()));
            sql.push_str(" AND g.item = i.id AND g.value IN (");
            for (i, v) in values.iter().enumerate() {
                arg(&mut sql, if i == 0 { "?" } else { ", ?" }, Box::new(v.clone()));
            }
            sql.push_str("))");
        }
        arg(&mut sql, &format!(" ORDER BY {order} LIMIT ?"), Box::new(q.limit as i64));
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.err())?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())), item_of_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.err())?;
        Ok(rows)
    }

    /// The union of every record's box and time range, and how many records there are.
    pub fn items_extent(&self) -> Result<ItemsExtent, CatalogError> {
        if !self.has_items()? {
            return Ok(ItemsExtent::default());
        }
        self.conn
            .query_row(
                "SELECT min(west), min(south), max(east), max(north), min(start), max(stop), count(*) FROM stac_items",
                [],
                |r| {
                    let b: [Option<f64>; 4] = [r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?];
                    let bbox = match b {
                        [Some(w), Some(s), Some(e), Some(n)] => Some([w, s, e, n]),
                        _ => None,
                    };
                    Ok(ItemsExtent { bbox, start: r.get(4)?, end: r.get(5)?, count: r.get::<_, i64>(6)? as u64 })
                },
            )
            .map_err(self.err())
    }

    pub fn counts(&self) -> Result<(u64, u64), CatalogError> {
        let count = |table: &str| -> Result<u64, CatalogError> {
            if let Some(n) = self.meta(table)?.and_then(|v| v.parse::<u64>().ok()) {
                return Ok(n);
            }
            self.conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(self.err())
        };
        Ok((count("datasets")?, count("joins")?))
    }

    /// Runs `f` in one transaction and commits it (incrementing the generation) if it
    /// succeeds; on an error nothing of it is written.
    pub fn write<T>(&mut self, f: impl FnOnce(&Writer) -> Result<T, CatalogError>) -> Result<T, CatalogError> {
        let err = self.err();
        let tx = self.conn.transaction().map_err(&err)?;
        let out = f(&Writer { tx: &tx, err: &err })?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('generation', '1')
             ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            [],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(out)
    }
}

/// The changes of one transaction.
pub struct Writer<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    err: &'a dyn Fn(rusqlite::Error) -> CatalogError,
}

impl Writer<'_> {
    fn set_meta(&self, key: &str, value: Option<&str>) -> Result<(), CatalogError> {
        match value {
            Some(v) => self.tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", [key, v]),
            None => self.tx.execute("DELETE FROM meta WHERE key = ?1", [key]),
        }
        .map(drop)
        .map_err(self.err)
    }

    pub fn set_settings(&self, settings: &Settings) -> Result<(), CatalogError> {
        self.set_meta("root", Some(&settings.root.to_string_lossy()))?;
        self.set_meta("url_prefix", settings.url_prefix.as_deref())?;
        self.set_meta("format", Some(&FORMAT.to_string()))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.tx
            .execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?1)", [now.to_string()])
            .map(drop)
            .map_err(self.err)
    }

    /// Records that every dataset has its discovery record.
    pub fn set_described(&self) -> Result<(), CatalogError> {
        self.set_meta("described", Some("1"))
    }

    /// Removes every dataset and join.
    pub fn clear(&self) -> Result<(), CatalogError> {
        self.tx
            .execute_batch(
                "DELETE FROM datasets; DELETE FROM refs; DELETE FROM joins; DELETE FROM stac_items;
                 DELETE FROM stac_docs; DELETE FROM stac_facets;",
            )
            .map_err(self.err)
    }

    pub fn put_dataset(&self, row: &DatasetRow) -> Result<(), CatalogError> {
        let prefix = prefix_of(&row.id);
        let old: Option<Option<i64>> = self
            .tx
            .query_row("SELECT refs FROM datasets WHERE prefix = ?1", [&prefix], |r| r.get(0))
            .optional()
            .map_err(self.err)?;
        let old_refs = old.flatten();
        let refs = match (&row.refs, old_refs) {
            (Some(packed), Some(id)) => {
                self.tx.execute("UPDATE refs SET packed = ?1 WHERE id = ?2", params![packed, id]).map_err(self.err)?;
                Some(id)
            }
            (Some(packed), None) => {
                self.tx.execute("INSERT INTO refs (packed) VALUES (?1)", [packed]).map_err(self.err)?;
                Some(self.tx.last_insert_rowid())
            }
            (None, Some(id)) => {
                self.tx.execute("DELETE FROM refs WHERE id = ?1", [id]).map_err(self.err)?;
                None
            }
            (None, None) => None,
        };
        let fp = &row.fingerprint;
        self.tx
            .execute(
                "INSERT INTO datasets (prefix, size, mtime_ns, ino, dev, ctime_ns, status, error, refs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (prefix) DO UPDATE SET size = ?2, mtime_ns = ?3, ino = ?4, dev = ?5,
                     ctime_ns = ?6, status = ?7, error = ?8, refs = ?9",
                params![
                    prefix,
                    fp.size as i64,
                    fp.mtime_ns,
                    fp.ino as i64,
                    fp.dev as i64,
                    fp.ctime_ns,
                    status_text(row.status),
                    row.error,
                    refs
                ],
            )
            .map(drop)
            .map_err(self.err)
    }

    pub fn remove_dataset(&self, id: &str) -> Result<(), CatalogError> {
        let prefix = prefix_of(id);
        self.remove_item(&prefix)?;
        self.tx
            .execute("DELETE FROM refs WHERE id = (SELECT refs FROM datasets WHERE prefix = ?1)", [&prefix])
            .map_err(self.err)?;
        self.tx.execute("DELETE FROM datasets WHERE prefix = ?1", [&prefix]).map(drop).map_err(self.err)
    }

    pub fn put_join(&self, row: &JoinRow) -> Result<(), CatalogError> {
        let e = &row.entry;
        self.tx
            .execute(
                "INSERT INTO joins (prefix, status, members, doc, error, notes, inputs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (prefix) DO UPDATE SET status = ?2, members = ?3, doc = ?4, error = ?5,
                     notes = ?6, inputs = ?7",
                params![
                    prefix_of(&row.id),
                    status_text(e.status),
                    serde_json::to_string(&e.members).expect("strings serialize"),
                    row.doc,
                    e.error,
                    serde_json::to_string(&e.notes).expect("strings serialize"),
                    e.inputs
                ],
            )
            .map(drop)
            .map_err(self.err)
    }

    /// Sets (or with `None`, removes) the discovery record of dataset or join `id`.
    pub fn put_item(&self, id: &str, item: Option<&Item>) -> Result<(), CatalogError> {
        let prefix = prefix_of(id);
        self.remove_item(&prefix)?;
        let Some(item) = item else { return Ok(()) };
        let [w, s, e, n] = item.bbox.map_or([None; 4], |b| b.map(Some));
        self.tx
            .prepare_cached(
                "INSERT INTO stac_items (prefix, west, south, east, north, start, stop) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut st| st.execute(params![prefix, w, s, e, n, item.start, item.end]))
            .map_err(self.err)?;
        let row = self.tx.last_insert_rowid();
        self.tx
            .prepare_cached("INSERT INTO stac_docs (id, doc) VALUES (?1, ?2)")
            .and_then(|mut st| st.execute(params![row, super::packed::deflate(&item.doc_json())]))
            .map_err(self.err)?;
        let mut st = self
            .tx
            .prepare_cached("INSERT OR IGNORE INTO stac_facets (name, value, item) VALUES (?1, ?2, ?3)")
            .map_err(self.err)?;
        for (name, value) in &item.facets {
            st.execute(params![name, value, row]).map_err(self.err)?;
        }
        Ok(())
    }

    fn remove_item(&self, prefix: &str) -> Result<(), CatalogError> {
        let row: Option<i64> = self
            .tx
            .prepare_cached("SELECT id FROM stac_items WHERE prefix = ?1")
            .and_then(|mut st| st.query_row([prefix], |r| r.get(0)).optional())
            .map_err(self.err)?;
        let Some(row) = row else { return Ok(()) };
        for sql in [
            "DELETE FROM stac_facets WHERE item = ?1",
            "DELETE FROM stac_docs WHERE id = ?1",
            "DELETE FROM stac_items WHERE id = ?1",
        ] {
            self.tx.prepare_cached(sql).and_then(|mut st| st.execute([row])).map_err(self.err)?;
        }
        Ok(())
    }

    /// Removes every join not in `keep`.
    pub fn retain_joins(&self, keep: &std::collections::BTreeSet<String>) -> Result<(), CatalogError> {
        let mut stmt = self.tx.prepare("SELECT prefix FROM joins").map_err(self.err)?;
        let all: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.err)?;
        for prefix in all {
            if !keep.contains(&id_of(prefix.clone())) {
                self.remove_item(&prefix)?;
                self.tx.execute("DELETE FROM joins WHERE prefix = ?1", [&prefix]).map_err(self.err)?;
            }
        }
        Ok(())
    }
}

/// The catalog of an old-layout directory, read into the database.
pub(super) fn import(db: &mut CatalogDb, catalog: &Catalog, dir: &Path) -> Result<(), CatalogError> {
    db.write(|w| {
        w.set_settings(&Settings { root: catalog.root.clone(), url_prefix: catalog.url_prefix.clone() })?;
        for (id, entry) in &catalog.datasets {
            let refs = match &entry.refs {
                Some(rel) => Some(super::legacy::read_refs(&dir.join(rel))?),
                None => None,
            };
            let row = DatasetRow {
                id: id.clone(),
                fingerprint: entry.fingerprint,
                status: if refs.is_none() { EntryStatus::Failed } else { entry.status },
                error: entry.error.clone(),
                refs: refs.map(|set| super::packed::pack(&set)),
            };
            w.put_dataset(&row)?;
        }
        for (id, entry) in &catalog.joins {
            let doc = match &entry.refs {
                Some(rel) => {
                    let path = dir.join(rel);
                    let bytes = std::fs::read(&path).map_err(|source| CatalogError::Read { path, source })?;
                    Some(super::packed::deflate(&bytes))
                }
                None => None,
            };
            w.put_join(&JoinRow { id: id.clone(), entry: entry.clone(), doc })?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, refs: Option<&[u8]>) -> DatasetRow {
        DatasetRow {
            id: id.into(),
            fingerprint: Fingerprint { size: 7, mtime_ns: -3, ino: u64::MAX, dev: 2, ctime_ns: 9 },
            status: if refs.is_some() { EntryStatus::Ok } else { EntryStatus::Failed },
            error: refs.is_none().then(|| "broken".to_string()),
            refs: refs.map(<[u8]>::to_vec),
        }
    }

    fn join(id: &str) -> JoinRow {
        let entry = JoinEntry {
            status: EntryStatus::Ok,
            members: vec!["a".into()],
            refs: Some(format!("joins/{id}.json")),
            error: None,
            notes: vec!["n".into()],
            inputs: "i".into(),
        };
        JoinRow { id: id.into(), entry, doc: Some(vec![1, 2]) }
    }

    #[test]
    fn rows_round_trip_and_rewrites_replace_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = CatalogDb::open(dir.path()).unwrap();
        assert_eq!(db.settings().unwrap(), None);
        let settings = Settings { root: "/data".into(), url_prefix: None };
        db.write(|w| {
            w.set_settings(&settings)?;
            w.put_dataset(&row("a/x.nc", Some(b"one")))?;
            w.put_dataset(&row("bad.nc", None))
        })
        .unwrap();
        assert_eq!(db.settings().unwrap(), Some(settings));
        assert_eq!(db.dataset("a/x.nc").unwrap(), Some(row("a/x.nc", Some(b"one"))));
        assert_eq!(db.dataset("bad.nc").unwrap(), Some(row("bad.nc", None)));
        assert_eq!(db.counts().unwrap(), (2, 0));
        let g = db.generation().unwrap();
        db.write(|w| w.put_dataset(&row("a/x.nc", Some(b"two")))).unwrap();
        assert_eq!(db.counts().unwrap(), (2, 0), "a rewritten row is counted once");
        assert_eq!(db.generation().unwrap(), g + 1);
        assert_eq!(db.dataset("a/x.nc").unwrap().unwrap().refs.unwrap(), b"two");
        db.write(|w| w.remove_dataset("a/x.nc")).unwrap();
        assert_eq!(db.dataset("a/x.nc").unwrap(), None);
        assert_eq!(db.counts().unwrap(), (1, 0));
        let refs: i64 = db.conn.query_row("SELECT count(*) FROM refs", [], |r| r.get(0)).unwrap();
        assert_eq!(refs, 0, "no reference set outlives its row");
        // A failed write leaves nothing behind.
        let err = db.write(|w| {
            w.put_dataset(&row("c.nc", Some(b"x")))?;
            Err::<(), _>(CatalogError::Empty)
        });
        assert!(err.is_err() && db.dataset("c.nc").unwrap().is_none());
    }

    #[test]
    fn a_published_snapshot_is_read_only_and_follows_the_catalog() {
        let (work, shared) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut db = CatalogDb::open(work.path()).unwrap();
        db.write(|w| {
            w.set_settings(&Settings { root: "/data".into(), url_prefix: None })?;
            w.put_dataset(&row("a.nc", Some(b"one")))
        })
        .unwrap();
        let first = db.publish(shared.path()).unwrap();
        assert!(first.new && first.generation == db.generation().unwrap());
        assert_eq!(db.publish(shared.path()).unwrap(), Published { new: false, ..first });
        let reader = CatalogDb::reader(shared.path()).unwrap();
        assert_eq!(reader.file(), shared.path().join(format!("catalog-{:012}.db", db.generation().unwrap())));
        assert_eq!(reader.dataset("a.nc").unwrap(), Some(row("a.nc", Some(b"one"))));
        assert!(reader.conn.execute("DELETE FROM datasets", []).is_err(), "a snapshot is read only");
        for i in 0..4 {
            db.write(|w| w.put_dataset(&row(&format!("n{i}.nc"), Some(b"x")))).unwrap();
            assert!(db.publish(shared.path()).unwrap().new);
        }
        let newest = CatalogDb::reader(shared.path()).unwrap();
        assert_eq!(newest.counts().unwrap(), (5, 0));
        let snapshots = std::fs::read_dir(shared.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("catalog-"));
        assert_eq!(snapshots.count(), SNAPSHOTS_KEPT);
        // the old one, still open, reads as it did
        assert_eq!(reader.counts().unwrap(), (1, 0));
        assert!(matches!(CatalogDb::open(shared.path()), Err(CatalogError::Published { .. })));
    }

    fn item(bbox: [f64; 4], start: &str, end: &str, source: &str) -> Item {
        Item {
            bbox: Some(bbox),
            start: Some(start.into()),
            end: Some(end.into()),
            facets: [("source_id".to_string(), source.to_string())].into(),
            properties: Default::default(),
        }
    }

    #[test]
    fn items_are_searched_by_box_time_facet_and_id_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = CatalogDb::open(dir.path()).unwrap();
        db.write(|w| {
            w.put_item(
                "a.nc",
                Some(&item([0.0, 40.0, 20.0, 60.0], "2000-01-01T00:00:00Z", "2000-12-31T00:00:00Z", "X")),
            )?;
            w.put_item(
                "b.nc",
                Some(&item([170.0, -10.0, -170.0, 10.0], "2001-01-01T00:00:00Z", "2001-12-31T00:00:00Z", "Y")),
            )?;
            w.put_item(
                "c.nc",
                Some(&item([-180.0, -90.0, 180.0, 90.0], "1990-01-01T00:00:00Z", "2010-01-01T00:00:00Z", "X")),
            )
        })
        .unwrap();
        let ids_in = |db: &CatalogDb, q: ItemQuery| -> Vec<String> {
            db.items(&ItemQuery { limit: 10, ..q }).unwrap().into_iter().map(|(_, id, _)| id).collect()
        };
        let ids = |q: ItemQuery| ids_in(&db, q);
        assert_eq!(ids(ItemQuery::default()), ["a.nc", "b.nc", "c.nc"]);
        // A box over the Pacific meets the item crossing 180° and the global one.
        assert_eq!(ids(ItemQuery { bbox: Some([175.0, -5.0, 179.0, 5.0]), ..Default::default() }), ["b.nc", "c.nc"]);
        // A query box crossing 180° too.
        assert_eq!(ids(ItemQuery { bbox: Some([160.0, 45.0, 10.0, 50.0]), ..Default::default() }), ["a.nc", "c.nc"]);
        let during = |a: &str, b: &str| ItemQuery { start: Some(a.into()), end: Some(b.into()), ..Default::default() };
        assert_eq!(ids(during("2001-06-01T00:00:00Z", "2001-06-02T00:00:00Z")), ["b.nc", "c.nc"]);
        assert_eq!(ids(during("2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z")), Vec::<String>::new());
        let facet = |v: &str| ItemQuery { facets: vec![("source_id".into(), vec![v.into()])], ..Default::default() };
        assert_eq!(ids(facet("X")), ["a.nc", "c.nc"]);
        assert_eq!(ids(ItemQuery { ids: vec!["b.nc".into()], ..Default::default() }), ["b.nc"]);
        // Pages continue after a record's number (records are numbered as written).
        let first = db.items(&ItemQuery { limit: 1, ..Default::default() }).unwrap();
        assert_eq!(ids(ItemQuery { after: first[0].0, ..Default::default() }), ["b.nc", "c.nc"]);
        // Two facets: one drives the search, the other is checked.
        let both = ItemQuery {
            facets: vec![("source_id".into(), vec!["X".into(), "Y".into()]), ("source_id".into(), vec!["Y".into()])],
            ..Default::default()
        };
        assert_eq!(ids(both), ["b.nc"]);
        // Removing a dataset removes its record.
        db.write(|w| w.remove_dataset("a.nc")).unwrap();
        assert_eq!(ids_in(&db, facet("X")), ["c.nc"]);
        let extent = db.items_extent().unwrap();
        assert_eq!((extent.bbox, extent.count), (Some([-180.0, -90.0, 180.0, 90.0]), 2));
        assert_eq!(extent.start.as_deref(), Some("1990-01-01T00:00:00Z"));
        assert_eq!(extent.end.as_deref(), Some("2010-01-01T00:00:00Z"));
    }

    #[test]
    fn prefixes_sort_as_keys_and_holding_finds_the_longest() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = CatalogDb::open(dir.path()).unwrap();
        db.write(|w| {
            w.set_settings(&Settings { root: "/d".into(), url_prefix: None })?;
            for id in ["a.nc", "a.nc.x", "d/f.nc", "z.nc"] {
                w.put_dataset(&row(id, Some(b"r")))?;
            }
            w.put_dataset(&row("failed.nc", None))?;
            w.put_join(&join("d"))?;
            w.put_join(&join("z.nc"))
        })
        .unwrap();
        // `a.nc.x/` sorts before `a.nc/` ('.' < '/'), as their keys do; failed files are not
        // listed, and a join with a file's id is listed once.
        let all: Vec<String> = db.prefixes("", true, 100).unwrap().into_iter().map(|(p, _)| p).collect();
        assert_eq!(all, ["a.nc.x/", "a.nc/", "d/", "d/f.nc/", "z.nc/"]);
        assert_eq!(db.prefixes("a.nc/", false, 2).unwrap()[0].0, "d/");
        assert_eq!(db.holding("d/f.nc/t/0").unwrap(), Some(("d/f.nc/".into(), Kind::File)));
        assert_eq!(db.holding("d/tas/0").unwrap(), Some(("d/".into(), Kind::Join)));
        assert_eq!(db.holding("z.nc/.zgroup").unwrap(), Some(("z.nc/".into(), Kind::File)));
        assert_eq!(db.holding("q/1").unwrap(), None);
        assert_eq!(db.kind_of("z.nc/").unwrap(), Some(Kind::File));
        assert_eq!(db.join("d").unwrap(), Some(join("d")));
        assert_eq!(db.dataset_ids_after("a.nc", 10).unwrap(), ["d/f.nc", "failed.nc", "z.nc"]);
        // Counted by the triggers: a rewritten join once, removals and clearing taken off.
        db.write(|w| w.put_join(&join("d"))).unwrap();
        assert_eq!(db.counts().unwrap(), (5, 2));
        db.write(|w| w.retain_joins(&["d".to_string()].into())).unwrap();
        assert_eq!(db.counts().unwrap(), (5, 1));
        db.write(|w| w.clear()).unwrap();
        assert_eq!(db.counts().unwrap(), (0, 0));
    }

    #[test]
    fn a_database_of_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = CatalogDb::open(dir.path()).unwrap();
        db.write(|w| w.set_meta("format", Some("99"))).unwrap();
        drop(db);
        assert!(matches!(CatalogDb::open(dir.path()), Err(CatalogError::Newer { .. })));
    }
}

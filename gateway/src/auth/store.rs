//! The key and usage database, shared by the gateway and the admin commands (`zarrgate keys …`,
//! `zarrgate usage`): one SQLite file (WAL, mode 0600) by default, or PostgreSQL
//! (`postgres://…`, [`super::pg`]) for replicas that must share keys, usage and quotas.
//!
//! Secrets are stored as issued: SigV4 needs the secret itself to recompute a signature. The
//! file is readable by its owner only, like `~/.aws/credentials`.

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension as _};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keys (
    access_key TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    name       TEXT NOT NULL,
    owner      TEXT NOT NULL,
    groups     TEXT NOT NULL,
    created    INTEGER NOT NULL,
    expires    INTEGER,
    revoked    INTEGER
);
CREATE TABLE IF NOT EXISTS usage (
    key        TEXT NOT NULL,
    day        TEXT NOT NULL,
    requests   INTEGER NOT NULL DEFAULT 0,
    bytes      INTEGER NOT NULL DEFAULT 0,
    compute_ms INTEGER NOT NULL DEFAULT 0,
    cache_hits INTEGER NOT NULL DEFAULT 0,
    errors     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key, day)
);
CREATE TABLE IF NOT EXISTS quota_usage (
    entity     TEXT NOT NULL,
    day        TEXT NOT NULL,
    bytes      INTEGER NOT NULL DEFAULT 0,
    compute_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (entity, day)
);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("key database {url}: {source}")]
    Pg {
        url: String,
        #[source]
        source: postgres::Error,
    },
    #[error("key database {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An access key. `secret` never leaves the process except when the key is created.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub access_key: String,
    pub secret: String,
    pub name: String,
    pub owner: String,
    pub groups: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    pub expires: Option<i64>,
    pub revoked: Option<i64>,
}

/// Debug output never shows the secret.
impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("access_key", &self.access_key)
            .field("secret", &"<redacted>")
            .field("name", &self.name)
            .field("owner", &self.owner)
            .field("groups", &self.groups)
            .field("created", &self.created)
            .field("expires", &self.expires)
            .field("revoked", &self.revoked)
            .finish()
    }
}

impl KeyRecord {
    /// Why the key cannot be used at `now`, if it cannot.
    pub fn refusal(&self, now: i64) -> Option<&'static str> {
        if self.revoked.is_some() {
            Some("revoked")
        } else if self.expires.is_some_and(|e| now >= e) {
            Some("expired")
        } else {
            None
        }
    }
}

/// Counts of one key on one day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub bytes: u64,
    pub compute_ms: u64,
    pub cache_hits: u64,
    pub errors: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.compute_ms += other.compute_ms;
        self.cache_hits += other.cache_hits;
        self.errors += other.errors;
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub key: String,
    pub day: String,
    pub counts: Counts,
}

/// The key database: a SQLite file or a PostgreSQL database.
pub enum Store {
    Sqlite(Sqlite),
    Postgres(Box<super::pg::Postgres>),
}

impl Store {
    /// Opens the database `db` names: a `postgres://` URL, else a SQLite file (created with
    /// mode 0600).
    pub fn open(db: &Path) -> Result<Self, StoreError> {
        match db.to_str().filter(|d| super::pg::is_url(d)) {
            Some(url) => Ok(Store::Postgres(Box::new(super::pg::Postgres::open(url)?))),
            None => Ok(Store::Sqlite(Sqlite::open(db)?)),
        }
    }

    /// True when replicas share this database (so rate quotas are taken in it).
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Creates a key with a fresh id and secret.
    pub fn create(
        &mut self,
        name: &str,
        owner: &str,
        groups: &[String],
        expires: Option<i64>,
        now: i64,
    ) -> Result<KeyRecord, StoreError> {
        let io = |source| StoreError::Io { path: PathBuf::from("/dev/urandom"), source };
        let record = KeyRecord {
            access_key: format!("ZG{}", random_chars(18, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567").map_err(io)?),
            secret: random_chars(40, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
                .map_err(io)?,
            name: name.to_string(),
            owner: owner.to_string(),
            groups: groups.to_vec(),
            created: now,
            expires,
            revoked: None,
        };
        match self {
            Store::Sqlite(s) => s.create(&record)?,
            Store::Postgres(p) => p.create(&record)?,
        }
        Ok(record)
    }

    pub fn list(&mut self) -> Result<Vec<KeyRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list(),
            Store::Postgres(p) => p.list(),
        }
    }

    pub fn get(&mut self, access_key: &str) -> Result<Option<KeyRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get(access_key),
            Store::Postgres(p) => p.get(access_key),
        }
    }

    /// Revokes a key; false if there is no such key.
    pub fn revoke(&mut self, access_key: &str, now: i64) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.revoke(access_key, now),
            Store::Postgres(p) => p.revoke(access_key, now),
        }
    }

    /// Adds counts, in one transaction.
    pub fn add_usage(&mut self, rows: &[UsageRow]) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.add_usage(rows),
            Store::Postgres(p) => p.add_usage(rows),
        }
    }

    /// Adds to the daily quota counters (`(entity, day, bytes, compute ms)`), in one
    /// transaction.
    pub fn add_quota_usage(&mut self, rows: &[(String, String, u64, u64)]) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.add_quota_usage(rows),
            Store::Postgres(p) => p.add_quota_usage(rows),
        }
    }

    /// The daily quota counters of `day`: `(entity, bytes, compute ms)`.
    pub fn quota_usage(&mut self, day: &str) -> Result<Vec<(String, u64, u64)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.quota_usage(day),
            Store::Postgres(p) => p.quota_usage(day),
        }
    }

    /// Usage rows, optionally for one key and from a day (`YYYY-MM-DD`) on.
    pub fn usage(&mut self, key: Option<&str>, since: Option<&str>) -> Result<Vec<UsageRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.usage(key, since),
            Store::Postgres(p) => p.usage(key, since),
        }
    }
}

/// The SQLite file.
pub struct Sqlite {
    path: PathBuf,
    conn: Connection,
}

impl Sqlite {
    /// Opens (creating with mode 0600) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let conn = Connection::open(path).map_err(|source| StoreError::Db { path: path.to_path_buf(), source })?;
        let store = Sqlite { path: path.to_path_buf(), conn };
        store.db(|c| {
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "NORMAL")?;
            c.execute_batch(SCHEMA)
        })?;
        Ok(store)
    }

    fn db<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        f(&self.conn).map_err(|source| StoreError::Db { path: self.path.clone(), source })
    }

    fn create(&self, record: &KeyRecord) -> Result<(), StoreError> {
        self.db(|c| {
            c.execute(
                "INSERT INTO keys (access_key, secret, name, owner, groups, created, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![record.access_key, record.secret, record.name, record.owner, record.groups.join(","), record.created, record.expires],
            )
        })
        .map(drop)
    }

    fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.db(|c| {
            let mut stmt = c.prepare(
                "SELECT access_key, secret, name, owner, groups, created, expires, revoked FROM keys ORDER BY created, access_key",
            )?;
            let rows = stmt.query_map([], row_to_key)?;
            rows.collect()
        })
    }

    fn get(&self, access_key: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.db(|c| {
            c.query_row(
                "SELECT access_key, secret, name, owner, groups, created, expires, revoked FROM keys WHERE access_key = ?1",
                [access_key],
                row_to_key,
            )
            .optional()
        })
    }

    fn revoke(&self, access_key: &str, now: i64) -> Result<bool, StoreError> {
        self.db(|c| {
            c.execute("UPDATE keys SET revoked = COALESCE(revoked, ?2) WHERE access_key = ?1", params![access_key, now])
        })
        .map(|n| n > 0)
    }

    fn add_usage(&mut self, rows: &[UsageRow]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let run = |c: &mut Connection| -> rusqlite::Result<()> {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare(
                    "INSERT INTO usage (key, day, requests, bytes, compute_ms, cache_hits, errors)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (key, day) DO UPDATE SET
                       requests = requests + excluded.requests, bytes = bytes + excluded.bytes,
                       compute_ms = compute_ms + excluded.compute_ms,
                       cache_hits = cache_hits + excluded.cache_hits, errors = errors + excluded.errors",
                )?;
                for r in rows {
                    let n = &r.counts;
                    stmt.execute(params![
                        r.key,
                        r.day,
                        n.requests as i64,
                        n.bytes as i64,
                        n.compute_ms as i64,
                        n.cache_hits as i64,
                        n.errors as i64
                    ])?;
                }
            }
            tx.commit()
        };
        run(&mut self.conn).map_err(|source| StoreError::Db { path, source })
    }

    fn add_quota_usage(&mut self, rows: &[(String, String, u64, u64)]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let run = |c: &mut Connection| -> rusqlite::Result<()> {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare(
                    "INSERT INTO quota_usage (entity, day, bytes, compute_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (entity, day) DO UPDATE SET
                       bytes = bytes + excluded.bytes, compute_ms = compute_ms + excluded.compute_ms",
                )?;
                for (entity, day, bytes, ms) in rows {
                    stmt.execute(params![entity, day, *bytes as i64, *ms as i64])?;
                }
            }
            // Older days are of no use to a quota.
            tx.execute("DELETE FROM quota_usage WHERE day < (SELECT MAX(day) FROM quota_usage)", [])?;
            tx.commit()
        };
        run(&mut self.conn).map_err(|source| StoreError::Db { path, source })
    }

    fn quota_usage(&self, day: &str) -> Result<Vec<(String, u64, u64)>, StoreError> {
        self.db(|c| {
            let mut stmt = c.prepare("SELECT entity, bytes, compute_ms FROM quota_usage WHERE day = ?1")?;
            let rows = stmt.query_map([day], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64, r.get::<_, i64>(2)?.max(0) as u64))
            })?;
            rows.collect()
        })
    }

    fn usage(&self, key: Option<&str>, since: Option<&str>) -> Result<Vec<UsageRow>, StoreError> {
        self.db(|c| {
            let mut stmt = c.prepare(
                "SELECT key, day, requests, bytes, compute_ms, cache_hits, errors FROM usage
                 WHERE (?1 IS NULL OR key = ?1) AND (?2 IS NULL OR day >= ?2) ORDER BY day, key",
            )?;
            let rows = stmt.query_map(params![key, since], |r| {
                Ok(UsageRow {
                    key: r.get(0)?,
                    day: r.get(1)?,
                    counts: Counts {
                        requests: r.get::<_, i64>(2)? as u64,
                        bytes: r.get::<_, i64>(3)? as u64,
                        compute_ms: r.get::<_, i64>(4)? as u64,
                        cache_hits: r.get::<_, i64>(5)? as u64,
                        errors: r.get::<_, i64>(6)? as u64,
                    },
                })
            })?;
            rows.collect()
        })
    }
}

fn row_to_key(r: &rusqlite::Row) -> rusqlite::Result<KeyRecord> {
    let groups: String = r.get(4)?;
    Ok(KeyRecord {
        access_key: r.get(0)?,
        secret: r.get(1)?,
        name: r.get(2)?,
        owner: r.get(3)?,
        groups: groups.split(',').filter(|g| !g.is_empty()).map(str::to_string).collect(),
        created: r.get(5)?,
        expires: r.get(6)?,
        revoked: r.get(7)?,
    })
}

/// `n` characters drawn uniformly from `alphabet` (of 32 or 64 symbols) with the kernel's
/// random generator.
/// `n` characters drawn from `alphabet` (whose length is a power of two) with `/dev/urandom`.
pub(crate) fn random_chars(n: usize, alphabet: &[u8]) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    debug_assert!(alphabet.len().is_power_of_two());
    Ok(bytes.iter().map(|b| alphabet[*b as usize % alphabet.len()] as char).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.db");
        let mut store = Store::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let k = store.create("ci", "ops@example.org", &["esgf".into(), "staff".into()], Some(2_000), 1_000).unwrap();
        assert!(k.access_key.starts_with("ZG") && k.access_key.len() == 20 && k.secret.len() == 40);
        assert_eq!(store.get(&k.access_key).unwrap().unwrap(), k);
        assert_eq!(k.refusal(1_500), None);
        assert_eq!(k.refusal(2_000), Some("expired"));
        assert!(store.revoke(&k.access_key, 1_200).unwrap());
        assert!(!store.revoke("nope", 1_200).unwrap());
        assert_eq!(store.get(&k.access_key).unwrap().unwrap().refusal(1_300), Some("revoked"));
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn usage_adds_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("a.db")).unwrap();
        let row = |key: &str, day: &str, requests| UsageRow {
            key: key.into(),
            day: day.into(),
            counts: Counts { requests, bytes: requests * 10, ..Default::default() },
        };
        store.add_usage(&[row("k", "2026-11-25", 2), row("k", "2026-11-26", 3)]).unwrap();
        store.add_usage(&[row("k", "2026-11-26", 4), row("anonymous", "2026-11-26", 1)]).unwrap();
        let all = store.usage(None, Some("2026-11-26")).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all.iter().find(|r| r.key == "k").unwrap().counts.requests, 7);
        assert_eq!(store.usage(Some("k"), None).unwrap().len(), 2);
    }

    #[test]
    fn quota_counters_add_up_and_keep_only_the_newest_day() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("a.db")).unwrap();
        let row = |e: &str, d: &str, b: u64| (e.to_string(), d.to_string(), b, 0);
        store.add_quota_usage(&[row("key A", "2026-11-25", 5)]).unwrap();
        store.add_quota_usage(&[row("key A", "2026-11-26", 7), row("key A", "2026-11-26", 3)]).unwrap();
        assert_eq!(store.quota_usage("2026-11-26").unwrap(), vec![("key A".to_string(), 10, 0)]);
        assert!(store.quota_usage("2026-11-25").unwrap().is_empty());
    }
}

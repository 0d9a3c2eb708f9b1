//! The key and usage database on PostgreSQL (`auth_db = "postgres://…"`), shared by replicas.
//!
//! The same tables as the SQLite file, plus `rate_buckets`: the token buckets of keys and
//! groups, taken in one transaction per request so that a quota holds exactly across replicas
//! (each replica would otherwise hand out a key's whole rate).
//!
//! A connection that fails is dropped; the next call connects again (with a short timeout), so
//! the gateway recovers by itself when the database is back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use postgres::{Client, NoTls};

use super::store::{Counts, KeyRecord, StoreError, UsageRow};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keys (
    access_key TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    name       TEXT NOT NULL,
    owner      TEXT NOT NULL,
    groups     TEXT NOT NULL,
    created    BIGINT NOT NULL,
    expires    BIGINT,
    revoked    BIGINT
);
CREATE TABLE IF NOT EXISTS usage (
    key        TEXT NOT NULL,
    day        TEXT NOT NULL,
    requests   BIGINT NOT NULL DEFAULT 0,
    bytes      BIGINT NOT NULL DEFAULT 0,
    compute_ms BIGINT NOT NULL DEFAULT 0,
    cache_hits BIGINT NOT NULL DEFAULT 0,
    errors     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key, day)
);
CREATE TABLE IF NOT EXISTS quota_usage (
    entity     TEXT NOT NULL,
    day        TEXT NOT NULL,
    bytes      BIGINT NOT NULL DEFAULT 0,
    compute_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (entity, day)
);
CREATE TABLE IF NOT EXISTS rate_buckets (
    entity     TEXT PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    updated    DOUBLE PRECISION NOT NULL
);
";

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Postgres {
    url: String,
    config: postgres::Config,
    client: Option<Client>,
}

impl Postgres {
    /// Connects and creates the tables if they are missing.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let mut config: postgres::Config = url.parse().map_err(|source| StoreError::Pg { url: redact(url), source })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        let mut pg = Postgres { url: redact(url), config, client: None };
        pg.run(|c| c.batch_execute(SCHEMA))?;
        Ok(pg)
    }

    /// Runs `f` on the connection, connecting first if there is none; a failure drops it.
    fn run<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> Result<T, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let client =
                self.config.connect(NoTls).map_err(|source| StoreError::Pg { url: self.url.clone(), source })?;
            self.client = Some(client);
        }
        let client = self.client.as_mut().expect("connected above");
        f(client).map_err(|source| {
            self.client = None;
            StoreError::Pg { url: self.url.clone(), source }
        })
    }

    pub fn create(&mut self, record: &KeyRecord) -> Result<(), StoreError> {
        self.run(|c| {
            c.execute(
                "INSERT INTO keys (access_key, secret, name, owner, groups, created, expires) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&record.access_key, &record.secret, &record.name, &record.owner, &record.groups.join(","), &record.created, &record.expires],
            )
            .map(drop)
        })
    }

    pub fn list(&mut self) -> Result<Vec<KeyRecord>, StoreError> {
        self.run(|c| {
            let rows = c.query(
                "SELECT access_key, secret, name, owner, groups, created, expires, revoked FROM keys ORDER BY created, access_key",
                &[],
            )?;
            Ok(rows.iter().map(row_to_key).collect())
        })
    }

    pub fn get(&mut self, access_key: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.run(|c| {
            let row = c.query_opt(
                "SELECT access_key, secret, name, owner, groups, created, expires, revoked FROM keys WHERE access_key = $1",
                &[&access_key],
            )?;
            Ok(row.as_ref().map(row_to_key))
        })
    }

    pub fn revoke(&mut self, access_key: &str, now: i64) -> Result<bool, StoreError> {
        self.run(|c| {
            c.execute("UPDATE keys SET revoked = COALESCE(revoked, $2) WHERE access_key = $1", &[&access_key, &now])
                .map(|n| n > 0)
        })
    }

    pub fn add_usage(&mut self, rows: &[UsageRow]) -> Result<(), StoreError> {
        self.run(|c| {
            let mut tx = c.transaction()?;
            let stmt = tx.prepare(
                "INSERT INTO usage (key, day, requests, bytes, compute_ms, cache_hits, errors)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (key, day) DO UPDATE SET
                   requests = usage.requests + excluded.requests, bytes = usage.bytes + excluded.bytes,
                   compute_ms = usage.compute_ms + excluded.compute_ms,
                   cache_hits = usage.cache_hits + excluded.cache_hits, errors = usage.errors + excluded.errors",
            )?;
            for r in rows {
                let n = &r.counts;
                let v = [n.requests, n.bytes, n.compute_ms, n.cache_hits, n.errors].map(|x| x as i64);
                tx.execute(&stmt, &[&r.key, &r.day, &v[0], &v[1], &v[2], &v[3], &v[4]])?;
            }
            tx.commit()
        })
    }

    pub fn add_quota_usage(&mut self, rows: &[(String, String, u64, u64)]) -> Result<(), StoreError> {
        self.run(|c| {
            let mut tx = c.transaction()?;
            let stmt = tx.prepare(
                "INSERT INTO quota_usage (entity, day, bytes, compute_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (entity, day) DO UPDATE SET
                   bytes = quota_usage.bytes + excluded.bytes,
                   compute_ms = quota_usage.compute_ms + excluded.compute_ms",
            )?;
            for (entity, day, bytes, ms) in rows {
                tx.execute(&stmt, &[entity, day, &(*bytes as i64), &(*ms as i64)])?;
            }
            tx.execute("DELETE FROM quota_usage WHERE day < (SELECT MAX(day) FROM quota_usage)", &[])?;
            tx.commit()
        })
    }

    pub fn quota_usage(&mut self, day: &str) -> Result<Vec<(String, u64, u64)>, StoreError> {
        self.run(|c| {
            let rows = c.query("SELECT entity, bytes, compute_ms FROM quota_usage WHERE day = $1", &[&day])?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64, r.get::<_, i64>(2).max(0) as u64))
                .collect())
        })
    }

    pub fn usage(&mut self, key: Option<&str>, since: Option<&str>) -> Result<Vec<UsageRow>, StoreError> {
        self.run(|c| {
            let rows = c.query(
                "SELECT key, day, requests, bytes, compute_ms, cache_hits, errors FROM usage
                 WHERE ($1::TEXT IS NULL OR key = $1) AND ($2::TEXT IS NULL OR day >= $2) ORDER BY day, key",
                &[&key, &since],
            )?;
            Ok(rows
                .iter()
                .map(|r| UsageRow {
                    key: r.get(0),
                    day: r.get(1),
                    counts: Counts {
                        requests: r.get::<_, i64>(2) as u64,
                        bytes: r.get::<_, i64>(3) as u64,
                        compute_ms: r.get::<_, i64>(4) as u64,
                        cache_hits: r.get::<_, i64>(5) as u64,
                        errors: r.get::<_, i64>(6) as u64,
                    },
                })
                .collect())
        })
    }

    /// Takes one token from each bucket (`(entity, rate per second, burst)`), all or none.
    /// Returns, for a refusal, the entity whose bucket is empty and the seconds until it has a
    /// token. One bucket (the usual case) is one statement: refill and take happen in the
    /// row's update, which PostgreSQL serializes per row across replicas. Several are taken
    /// in one transaction, rows locked in the order given (sorted by the caller), so two
    /// replicas never deadlock.
    pub fn take_tokens(&mut self, buckets: &[(String, f64, f64)]) -> Result<Option<(String, u64)>, StoreError> {
        const TAKE: &str = "
            INSERT INTO rate_buckets AS b (entity, tokens, updated)
            VALUES ($1, $3::DOUBLE PRECISION - 1, EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION)
            ON CONFLICT (entity) DO UPDATE SET
              tokens = LEAST($3::DOUBLE PRECISION,
                             b.tokens + GREATEST(0, EXCLUDED.updated - b.updated) * $2::DOUBLE PRECISION) - 1,
              updated = EXCLUDED.updated
            WHERE LEAST($3::DOUBLE PRECISION,
                        b.tokens + GREATEST(0, EXCLUDED.updated - b.updated) * $2::DOUBLE PRECISION) >= 1
            RETURNING tokens";
        const LEFT: &str = "
            SELECT LEAST($3::DOUBLE PRECISION, tokens + GREATEST(0,
                         EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION - updated) * $2::DOUBLE PRECISION)
            FROM rate_buckets WHERE entity = $1";
        let wait = |tokens: f64, rate: f64| ((1.0 - tokens) / rate).ceil().clamp(1.0, u32::MAX as f64) as u64;
        self.run(|c| {
            if let [(entity, rate, burst)] = buckets {
                if c.query_opt(TAKE, &[entity, rate, burst])?.is_some() {
                    return Ok(None);
                }
                let left: f64 = c.query_opt(LEFT, &[entity, rate, burst])?.map_or(0.0, |r| r.get(0));
                return Ok(Some((entity.clone(), wait(left, *rate))));
            }
            let mut tx = c.transaction()?;
            for (entity, rate, burst) in buckets {
                if tx.query_opt(TAKE, &[entity, rate, burst])?.is_none() {
                    let left: f64 = tx.query_opt(LEFT, &[entity, rate, burst])?.map_or(0.0, |r| r.get(0));
                    tx.rollback()?;
                    return Ok(Some((entity.clone(), wait(left, *rate))));
                }
            }
            tx.commit()?;
            Ok(None)
        })
    }
}

/// The `postgres` client closes its connection by blocking on a runtime of its own, which
/// panics inside a gateway's: it is dropped on a thread of its own.
impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
    }
}

fn row_to_key(r: &postgres::Row) -> KeyRecord {
    let groups: String = r.get(4);
    KeyRecord {
        access_key: r.get(0),
        secret: r.get(1),
        name: r.get(2),
        owner: r.get(3),
        groups: groups.split(',').filter(|g| !g.is_empty()).map(str::to_string).collect(),
        created: r.get(5),
        expires: r.get(6),
        revoked: r.get(7),
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// True if `db` names a PostgreSQL database rather than a SQLite file.
pub fn is_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// What a request asks of [`Tokens`]: one token from each bucket, and where to answer.
type TokenRequest = (Vec<(String, f64, f64)>, mpsc::SyncSender<Result<Option<(String, u64)>, String>>);

/// Rate tokens taken in the shared database by threads of their own, each owning a connection:
/// the `postgres` client runs a runtime of its own, which cannot be entered from a request's.
/// While the database is unreachable, requests are answered at once (no waiting on a
/// connection attempt); the threads connect again in the background.
pub struct Tokens {
    requests: Mutex<mpsc::Sender<TokenRequest>>,
    /// Threads holding a connection now.
    live: Arc<AtomicUsize>,
}

/// Connections (and threads) per gateway for rate tokens: PostgreSQL answers a statement in
/// a fraction of a millisecond, so a few keep many request threads busy.
const TOKEN_CONNECTIONS: usize = 4;

/// One token thread: answers requests on its connection, reconnecting while it has none.
fn token_loop(url: &str, rx: &Mutex<mpsc::Receiver<TokenRequest>>, live: &AtomicUsize) {
    let mut pg = Postgres::open(url).ok();
    if pg.is_some() {
        live.fetch_add(1, Ordering::AcqRel);
    }
    loop {
        // Waiting for a request under the lock hands requests to idle threads one by one.
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv_timeout(RECONNECT_EVERY);
        match next {
            Ok((buckets, answer)) => {
                let result = match pg.as_mut() {
                    Some(p) => p.take_tokens(&buckets).map_err(|e| e.to_string()),
                    None => Err("not connected".into()),
                };
                if result.is_err() && pg.take().is_some() {
                    live.fetch_sub(1, Ordering::AcqRel);
                }
                let _ = answer.send(result);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if pg.is_none() => {
                pg = Postgres::open(url).ok();
                if pg.is_some() {
                    live.fetch_add(1, Ordering::AcqRel);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Tokens {
    pub fn start(url: &str) -> Tokens {
        let (tx, rx) = mpsc::channel::<TokenRequest>();
        let rx = Arc::new(Mutex::new(rx));
        let live = Arc::new(AtomicUsize::new(0));
        for i in 0..TOKEN_CONNECTIONS {
            let (rx, live, url) = (rx.clone(), live.clone(), url.to_string());
            std::thread::Builder::new()
                .name(format!("rate-tokens-{i}"))
                .spawn(move || token_loop(&url, &rx, &live))
                .expect("a thread can be started");
        }
        Tokens { requests: Mutex::new(tx), live }
    }

    /// True while some thread holds a connection.
    pub fn connected(&self) -> bool {
        self.live.load(Ordering::Acquire) > 0
    }

    /// Takes one token from each bucket, all or none: `Ok(Some((entity, seconds)))` names an
    /// empty bucket; `Err` means the database cannot be reached.
    pub fn take(&self, buckets: Vec<(String, f64, f64)>) -> Result<Option<(String, u64)>, String> {
        if !self.connected() {
            return Err("the key database is unreachable".into());
        }
        let (answer, reply) = mpsc::sync_channel(1);
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((buckets, answer))
            .map_err(|_| "the rate-token thread has stopped".to_string())?;
        reply.recv().map_err(|_| "the rate-token thread has stopped".to_string())?
    }
}

/// How often a lost connection is tried again.
const RECONNECT_EVERY: Duration = Duration::from_millis(250);

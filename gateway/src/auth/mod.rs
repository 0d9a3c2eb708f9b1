//! Who is asking, may they, and how much have they used.
//!
//! # Flow of a request
//! 1. [`Auth::admit`]: [`Auth::authenticate`] (SigV4 in a header or a presigned URL, with an
//!    access key or with temporary credentials from a login ([`session`]),
//!    `Authorization: Bearer ACCESS_KEY:SECRET`, `Authorization: Bearer TOKEN` from an OpenID
//!    issuer ([`oidc`]; [`Auth::prepare`] fetches what checking it needs first), or anonymous),
//!    then the quotas
//!    ([`quota::Quotas::admit`]: rate and daily bytes). Credentials that are present are always
//!    checked, also on public collections, as S3 does. A request whose credentials fail is
//!    admitted as its client address (anonymous quota) and counted by [`throttle::Failures`];
//!    while its address or key id has failed too often, its credentials are not checked at all.
//! 2. [`Policy::allows`]: the collection's read (and compute) policy, decided by the handler.
//! 3. [`Auth::record`]: usage per key and day, and the daily quota counters, flushed to the
//!    database every [`FLUSH_INTERVAL`] (the most a crash can lose).
//!
//! The signature is checked before anything about the key's state is told: a caller who cannot
//! sign for a key learns only that its signature is wrong. Keys are re-read from the database
//! every [`FLUSH_INTERVAL`], so `zarrgate keys revoke` takes effect on a running gateway within
//! a second. No secret appears in a log line or an error message.
//!
//! Errors are this module's own ([`AuthError`], [`Refusal`]); the S3 and operations interfaces
//! each turn them into their error documents in one place.

pub mod oidc;
pub mod pg;
pub mod quota;
pub mod session;
pub mod sigv4;
pub mod store;
pub mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper::header::HeaderMap;
use serde::Deserialize;

use crate::dates::{day_of, unix_now};
use quota::{Daily, Exceeded, QuotaConfig, Quotas};
use store::{Counts, KeyRecord, Store, StoreError, UsageRow};
use throttle::Failures;

/// How often keys are re-read and usage is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// Keys read longer ago than this are not trusted: a revoked key is refused by every replica
/// within this time, and while the database cannot be read no key is accepted.
pub const KEYS_STALE_AFTER: Duration = Duration::from_millis(1000);

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The database's name for messages (a URL without its password).
fn db_name(db: &std::path::Path) -> String {
    pg::redact(&db.to_string_lossy())
}

/// Largest clock difference accepted in a signed request (S3's 15 minutes).
pub const MAX_SKEW_SECONDS: i64 = 15 * 60;
/// SHA-256 of an empty body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Derived signing keys kept at most.
const MAX_SIGNING_KEYS: u64 = 10_000;

#[derive(Clone, Debug)]
pub enum Principal {
    Anonymous { ip: IpAddr },
    Key(Arc<KeyRecord>),
}

impl Principal {
    /// The name usage is recorded under.
    pub fn usage_name(&self) -> &str {
        match self {
            Principal::Anonymous { .. } => "anonymous",
            Principal::Key(k) => &k.access_key,
        }
    }

    /// Who owns what this principal starts (jobs): a key, or an anonymous client's address
    /// block, so that one anonymous client never sees or dismisses another's jobs.
    pub fn owner_name(&self) -> String {
        match self {
            Principal::Anonymous { ip } => format!("anonymous {}", crate::client::accountable(*ip)),
            Principal::Key(k) => k.access_key.clone(),
        }
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self, Principal::Anonymous { .. })
    }
}

/// Who may read (or compute on) a collection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    #[default]
    Public,
    Authenticated,
    /// Members of these groups, and these access keys.
    Allow {
        groups: Vec<String>,
        keys: Vec<String>,
    },
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spec {
            Word(String),
            List(Vec<String>),
        }
        match Spec::deserialize(d)? {
            Spec::Word(w) if w == "public" => Ok(Policy::Public),
            Spec::Word(w) if w == "authenticated" => Ok(Policy::Authenticated),
            Spec::Word(w) => Err(serde::de::Error::custom(format!(
                "policy {w:?} is not \"public\", \"authenticated\" or a list of \"group:NAME\" and \"key:ID\""
            ))),
            Spec::List(items) => {
                let (mut groups, mut keys) = (Vec::new(), Vec::new());
                for item in items {
                    match item.split_once(':') {
                        Some(("group", g)) if !g.is_empty() => groups.push(g.to_string()),
                        Some(("key", k)) if !k.is_empty() => keys.push(k.to_string()),
                        _ => {
                            return Err(serde::de::Error::custom(format!(
                                "policy entry {item:?} is not \"group:NAME\" or \"key:ID\""
                            )))
                        }
                    }
                }
                Ok(Policy::Allow { groups, keys })
            }
        }
    }
}

impl Policy {
    pub fn allows(&self, who: &Principal) -> bool {
        match (self, who) {
            (Policy::Public, _) => true,
            (_, Principal::Anonymous { .. }) => false,
            (Policy::Authenticated, Principal::Key(_)) => true,
            (Policy::Allow { groups, keys }, Principal::Key(k)) => {
                keys.contains(&k.access_key) || k.groups.iter().any(|g| groups.contains(g))
            }
        }
    }

    pub fn is_public(&self) -> bool {
        *self == Policy::Public
    }

    /// The policy in words, as the configuration writes it.
    pub fn describe(&self) -> String {
        match self {
            Policy::Public => "public".into(),
            Policy::Authenticated => "authenticated".into(),
            Policy::Allow { groups, keys } => {
                let items: Vec<String> = groups
                    .iter()
                    .map(|g| format!("group:{g}"))
                    .chain(keys.iter().map(|k| format!("key:{k}")))
                    .collect();
                items.join(", ")
            }
        }
    }
}

/// Why a request's credentials were not accepted. The messages are S3's, where S3 has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The `Authorization` header cannot be read.
    #[error("{0}")]
    MalformedHeader(String),
    /// The signing parameters of a presigned URL cannot be read.
    #[error("{0}")]
    MalformedQuery(String),
    /// Signature version 2, which is refused by name rather than read as anonymous.
    #[error("The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.")]
    Unsupported,
    #[error("The AWS Access Key Id you provided does not exist in our records.")]
    UnknownKey,
    /// A key whose signature is right but that is revoked or expired.
    #[error("The AWS Access Key Id you provided is {0}.")]
    Unusable(&'static str),
    #[error("{0}")]
    BadSignature(&'static str),
    #[error("The difference between the request time and the current time is too large.")]
    Skewed,
    /// A presigned URL that expired or is dated in the future, or an unreadable date.
    #[error("{0}")]
    Denied(&'static str),
    /// Too many failed authentications of this address or key id.
    #[error("Please reduce your request rate: too many failed authentications of {what}.")]
    Throttled { what: String, retry_after: u64 },
    /// The key database cannot be reached, so no key can be checked (nor its quota taken).
    #[error("Keys cannot be checked right now (the key database is unreachable); please retry.")]
    Unavailable { retry_after: u64 },
    /// An OpenID bearer token that does not let its holder in.
    #[error("{0}")]
    InvalidToken(String),
    /// Temporary credentials without their session token, or with one that is not theirs.
    #[error("{0}")]
    SessionToken(&'static str),
    #[error("The provided token has expired.")]
    ExpiredToken,
}

/// Why a request was not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Auth(AuthError),
    Quota(Exceeded),
}

/// What the authenticator needs of a request.
pub struct RequestAuth<'a> {
    pub method: &'a str,
    /// The path exactly as sent.
    pub raw_path: &'a str,
    pub decoded_path: &'a str,
    pub raw_query: &'a str,
    pub query: &'a [(String, String)],
    pub headers: &'a HeaderMap,
    /// The client's address (behind a trusted proxy, the address the proxy names).
    pub ip: IpAddr,
}

/// The credentials a request carries, read but not checked.
enum Credentials<'a> {
    None,
    Bearer {
        id: &'a str,
        secret: &'a str,
    },
    /// An OpenID token (a JWT or an opaque token).
    Token(&'a str),
    Signed {
        signed: sigv4::SignedRequest,
        payload: &'a str,
    },
}

impl Credentials<'_> {
    /// The access key id the credentials name (at most [`throttle::MAX_KEY_ID`] bytes).
    fn access_key(&self) -> Option<&str> {
        match self {
            Credentials::None | Credentials::Token(_) => None,
            Credentials::Bearer { id, .. } => Some(id),
            Credentials::Signed { signed, .. } => Some(&signed.credential.access_key),
        }
    }
}

/// Reads the credentials of a request: SigV4 header, bearer token, presigned URL, or none.
fn credentials<'a>(r: &'a RequestAuth) -> Result<Credentials<'a>, AuthError> {
    let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok());
    if r.headers.contains_key("authorization") && header("authorization").is_none() {
        return Err(AuthError::MalformedHeader("The Authorization header is not valid ASCII.".into()));
    }
    if let Some(auth) = header("authorization") {
        if let Some(token) = auth.strip_prefix("Bearer ") {
            let Some((id, secret)) = token.trim().split_once(':') else {
                if token.trim().is_empty() {
                    return Err(AuthError::MalformedHeader("The bearer token is empty.".into()));
                }
                return Ok(Credentials::Token(token.trim()));
            };
            return short_key_id(Credentials::Bearer { id, secret }, AuthError::MalformedHeader);
        }
        let signed =
            sigv4::parse_authorization(auth, header("x-amz-date")).map_err(|e| AuthError::MalformedHeader(e.0))?;
        if !signed.amz_date.starts_with(&signed.credential.date) {
            return Err(AuthError::MalformedHeader(
                "The date of the credential scope does not match the request date (X-Amz-Date).".into(),
            ));
        }
        // Without x-amz-content-sha256 (curl 7.x) the hash of the empty body was signed;
        // reads have no body.
        let payload = header("x-amz-content-sha256").unwrap_or(EMPTY_SHA256);
        return short_key_id(Credentials::Signed { signed, payload }, AuthError::MalformedHeader);
    }
    if r.query.iter().any(|(k, _)| k == "AWSAccessKeyId") {
        return Err(AuthError::Unsupported);
    }
    const PRESIGN: &[&str] = &["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"];
    if r.query.iter().any(|(k, _)| PRESIGN.contains(&k.as_str())) {
        let signed = sigv4::parse_presigned(r.query).map_err(|e| AuthError::MalformedQuery(e.0))?;
        if !signed.amz_date.starts_with(&signed.credential.date) {
            return Err(AuthError::MalformedQuery(
                "The date of the credential scope does not match the request date (X-Amz-Date).".into(),
            ));
        }
        return short_key_id(Credentials::Signed { signed, payload: "UNSIGNED-PAYLOAD" }, AuthError::MalformedQuery);
    }
    Ok(Credentials::None)
}

/// Refuses an access key id longer than any key has, before it is looked up or counted.
fn short_key_id(c: Credentials<'_>, malformed: fn(String) -> AuthError) -> Result<Credentials<'_>, AuthError> {
    match c.access_key() {
        Some(id) if id.len() > throttle::MAX_KEY_ID => {
            Err(malformed(format!("An access key id is at most {} characters.", throttle::MAX_KEY_ID)))
        }
        _ => Ok(c),
    }
}

pub struct Auth {
    db: PathBuf,
    keys: RwLock<Arc<HashMap<String, Arc<KeyRecord>>>>,
    /// When the keys were last read (milliseconds since the epoch): older than
    /// [`KEYS_STALE_AFTER`], they may include a revoked key, so none is accepted.
    keys_read: AtomicI64,
    /// The last read of the keys failed (for logging an outage once).
    db_down: AtomicBool,
    /// For a shared (PostgreSQL) database: where requests take their keys' rate tokens.
    shared: Option<pg::Tokens>,
    pub quotas: Quotas,
    failures: Failures,
    pending: Mutex<HashMap<(String, String), Counts>>,
    store: Mutex<Store>,
    /// Derived signing keys by (access key id, scope): four HMACs saved per request.
    signing_keys: moka::sync::Cache<(String, String), Arc<Vec<u8>>>,
    /// OpenID issuers and temporary credentials.
    pub logins: Logins,
}

/// What logins need: the OpenID issuers, and the secret of temporary credentials.
pub struct Logins {
    pub oidc: oidc::Oidc,
    pub sessions: session::Sessions,
}

impl Logins {
    pub fn new(issuers: &[oidc::IssuerConfig], sts: &session::SessionConfig) -> Result<Logins, String> {
        Ok(Logins { oidc: oidc::Oidc::new(issuers)?, sessions: session::Sessions::new(sts)? })
    }
}

impl Auth {
    /// Opens the key database, restores today's quota counters from it, and starts the thread
    /// that re-reads keys and writes usage.
    pub fn start(db: PathBuf, quotas: QuotaConfig, logins: Logins) -> Result<Arc<Self>, StoreError> {
        let mut store = Store::open(&db)?;
        let keys = load_keys(&mut store)?;
        let shared = db.to_str().filter(|_| store.is_shared()).map(pg::Tokens::start);
        let failures = Failures::new(quotas.failed_auth.clone());
        let quotas = Quotas::new(quotas);
        let today = day_of(unix_now());
        let spent = store.quota_usage(&today)?;
        quotas.restore(
            &today,
            spent.into_iter().map(|(e, bytes, compute_ms)| (e, Daily { bytes, compute_ms })).collect(),
        );
        let auth = Arc::new(Auth {
            db,
            keys: RwLock::new(Arc::new(keys)),
            keys_read: AtomicI64::new(now_ms()),
            db_down: AtomicBool::new(false),
            shared,
            quotas,
            failures,
            pending: Mutex::new(HashMap::new()),
            store: Mutex::new(store),
            signing_keys: moka::sync::Cache::new(MAX_SIGNING_KEYS),
            logins,
        });
        let weak = Arc::downgrade(&auth);
        std::thread::spawn(move || loop {
            std::thread::sleep(FLUSH_INTERVAL);
            let Some(auth) = weak.upgrade() else { return };
            auth.refresh();
        });
        Ok(auth)
    }

    /// Re-reads keys and writes pending usage; with a shared database, also reads the daily
    /// quota counters every replica wrote.
    pub fn refresh(&self) {
        // Keys first: a slow usage write must not leave them stale (keys read more than
        // KEYS_STALE_AFTER ago are refused).
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        match load_keys(&mut store) {
            Ok(keys) => {
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                self.keys_read.store(now_ms(), Ordering::Release);
                if self.db_down.swap(false, Ordering::AcqRel) {
                    tracing::info!("the key database {} answers again", db_name(&self.db));
                }
            }
            // Logged once per outage, not every 0.25 s.
            Err(e) if !self.db_down.swap(true, Ordering::AcqRel) => tracing::error!(
                "cannot re-read keys from {}: {e}; requests that name a key get 503 until it answers",
                db_name(&self.db)
            ),
            Err(_) => {}
        }
        drop(store);
        self.flush();
        if self.shared.is_some() {
            let store = &mut *self.store.lock().unwrap_or_else(|p| p.into_inner());
            let today = day_of(unix_now());
            if let Ok(rows) = store.quota_usage(&today) {
                self.quotas.replace_today(
                    &today,
                    rows.into_iter().map(|(e, bytes, compute_ms)| (e, Daily { bytes, compute_ms })).collect(),
                );
            }
        }
    }

    /// True while keys can be checked: they were read from the database within
    /// [`KEYS_STALE_AFTER`] (and, with a shared database, the requests' connection is up).
    pub fn ready(&self) -> bool {
        let fresh = now_ms() - self.keys_read.load(Ordering::Acquire) <= KEYS_STALE_AFTER.as_millis() as i64;
        fresh && self.shared.as_ref().is_none_or(pg::Tokens::connected)
    }

    /// Takes one token of each of a key's rate buckets in the shared database, or says which is
    /// empty; a 503 refusal when the database cannot be reached.
    fn take_shared_tokens(&self, shared: &pg::Tokens, rated: Vec<(String, f64, f64)>) -> Result<(), Refusal> {
        if rated.is_empty() {
            return Ok(());
        }
        match shared.take(rated.clone()) {
            Ok(None) => Ok(()),
            Ok(Some((entity, retry_after))) => {
                let (rate, burst) =
                    rated.iter().find(|(e, ..)| *e == entity).map(|(_, r, b)| (*r, *b)).unwrap_or_default();
                Err(Refusal::Quota(Exceeded {
                    what: format!("requests per second of {entity} ({rate}/s, burst {burst})"),
                    retry_after,
                }))
            }
            Err(e) => {
                tracing::debug!("taking a rate token: {e}");
                Err(Refusal::Auth(AuthError::Unavailable { retry_after: 1 }))
            }
        }
    }

    /// Writes pending usage counts and daily quota counters.
    pub fn flush(&self) {
        let batch: Vec<UsageRow> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.drain().map(|((key, day), counts)| UsageRow { key, day, counts }).collect()
        };
        let daily = self.quotas.take_pending();
        if batch.is_empty() && daily.is_empty() {
            return;
        }
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if !batch.is_empty() {
            if let Err(e) = store.add_usage(&batch) {
                tracing::error!("cannot write usage to {}: {e}", db_name(&self.db));
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                for row in batch {
                    pending.entry((row.key, row.day)).or_default().add(&row.counts);
                }
            }
        }
        if !daily.is_empty() {
            let rows: Vec<_> = daily.iter().map(|(e, d, n)| (e.clone(), d.clone(), n.bytes, n.compute_ms)).collect();
            if let Err(e) = store.add_quota_usage(&rows) {
                tracing::error!("cannot write quota counters to {}: {e}", db_name(&self.db));
                self.quotas.put_back(daily);
            }
        }
    }

    /// Records one answered request.
    pub fn record(&self, who: &Principal, bytes: u64, errored: bool) {
        let day = day_of(unix_now());
        self.quotas.add_bytes(who, &day, bytes);
        let counts = Counts { requests: 1, bytes, errors: u64::from(errored), ..Default::default() };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.entry((who.usage_name().to_string(), day)).or_default().add(&counts);
    }

    /// Records the compute time and cache hits of an operation (its request is recorded by
    /// [`Auth::record`]).
    pub fn record_compute(&self, who: &Principal, compute_ms: u64, cache_hit: bool) {
        let counts = Counts { compute_ms, cache_hits: u64::from(cache_hit), ..Default::default() };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.entry((who.usage_name().to_string(), day_of(unix_now()))).or_default().add(&counts);
    }

    /// Authenticates a request and admits it under the quotas. Every request but health
    /// probes passes here. A request whose credentials fail is held to the anonymous quota of
    /// its address, and gets the quota's refusal once that is spent. A refusal comes with the
    /// principal to charge it to: the key whose quota is spent, or the address whose
    /// credentials failed.
    pub fn admit(&self, r: &RequestAuth) -> Result<Principal, (Principal, Refusal)> {
        let day = day_of(unix_now());
        match self.authenticate(r) {
            // Keys' rate buckets live in a shared database when there is one, so that a quota
            // holds across replicas; anonymous addresses are limited by each replica.
            Ok(who @ Principal::Key(_)) if self.shared.is_some() => {
                let shared = self.shared.as_ref().expect("checked");
                if let Err(e) = self.quotas.check_daily(&who, &day) {
                    return Err((who, Refusal::Quota(e)));
                }
                match self.take_shared_tokens(shared, self.quotas.rated(&who)) {
                    Ok(()) => Ok(who),
                    Err(refusal) => Err((who, refusal)),
                }
            }
            Ok(who) => match self.quotas.admit(&who, &day) {
                Ok(()) => Ok(who),
                Err(e) => Err((who, Refusal::Quota(e))),
            },
            Err(e) => {
                let anonymous = Principal::Anonymous { ip: r.ip };
                match self.quotas.admit(&anonymous, &day) {
                    Ok(()) => Err((anonymous, Refusal::Auth(e))),
                    Err(q) => Err((anonymous, Refusal::Quota(q))),
                }
            }
        }
    }

    /// Admits a request that could not be read far enough to authenticate, as its address.
    pub fn admit_anonymous(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.quotas.admit(&Principal::Anonymous { ip }, &day_of(unix_now())).map_err(Refusal::Quota)
    }

    /// Fetches what checking the request's OpenID token needs (the issuer's keys, or the
    /// introspection of an opaque token); called before [`Auth::admit`], which does not wait.
    /// Nothing is fetched for an address whose authentications are being throttled: a flood
    /// of made-up tokens must not become a flood of requests to the issuer.
    pub async fn prepare(&self, headers: &HeaderMap, ip: IpAddr) {
        if !self.logins.oidc.is_empty() && self.failures.check(ip, None).is_ok() {
            self.logins.oidc.prepare(headers).await;
        }
    }

    /// Identifies the sender of a request. Credentials that fail are counted against the
    /// address and the key id they name from it; while either has failed too often,
    /// credentials are refused unchecked. Only failures that could be guesses count: not an
    /// expired presigned URL or a skewed clock.
    pub fn authenticate(&self, r: &RequestAuth) -> Result<Principal, AuthError> {
        let throttled = |(what, retry_after)| AuthError::Throttled { what, retry_after };
        let creds = match credentials(r) {
            Ok(c) => c,
            Err(e) => {
                self.failures.check(r.ip, None).map_err(throttled)?;
                self.failures.record(r.ip, None);
                return Err(e);
            }
        };
        if let Credentials::Token(token) = creds {
            self.failures.check(r.ip, None).map_err(throttled)?;
            if self.logins.oidc.is_empty() {
                return Err(AuthError::MalformedHeader(
                    "A bearer token is ACCESS_KEY:SECRET (this gateway accepts no OpenID tokens).".into(),
                ));
            }
            return match self.logins.oidc.identify(token, unix_now()) {
                // Expiry is the token's, checked with the issuer's leeway.
                Ok(record) => Ok(Principal::Key(record)),
                Err(e) => {
                    self.failures.record(r.ip, None);
                    Err(AuthError::InvalidToken(e.0))
                }
            };
        }
        let Some(id) = creds.access_key() else { return Ok(Principal::Anonymous { ip: r.ip }) };
        let temporary = id.starts_with(session::PREFIX);
        if !temporary && now_ms() - self.keys_read.load(Ordering::Acquire) > KEYS_STALE_AFTER.as_millis() as i64 {
            // A key revoked since the last read must not pass: none does.
            return Err(AuthError::Unavailable { retry_after: 1 });
        }
        self.failures.check(r.ip, Some(id)).map_err(throttled)?;
        let checked = match &creds {
            Credentials::None | Credentials::Token(_) => unreachable!("answered above"),
            Credentials::Bearer { id, secret } => self.check_bearer(id, secret),
            Credentials::Signed { signed, payload } => self.verify(r, signed, payload, unix_now()),
        };
        checked.map(Principal::Key).inspect_err(|e| {
            if !matches!(e, AuthError::Skewed | AuthError::Denied(_) | AuthError::ExpiredToken) {
                self.failures.record(r.ip, Some(id));
            }
        })
    }

    fn key(&self, access_key: &str) -> Result<Arc<KeyRecord>, AuthError> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        keys.get(access_key).cloned().ok_or(AuthError::UnknownKey)
    }

    /// A key whose secret was proven may still be revoked or expired; only now is that told.
    fn usable(key: Arc<KeyRecord>, now: i64) -> Result<Arc<KeyRecord>, AuthError> {
        match key.refusal(now) {
            Some(why) => Err(AuthError::Unusable(why)),
            None => Ok(key),
        }
    }

    fn check_bearer(&self, id: &str, secret: &str) -> Result<Arc<KeyRecord>, AuthError> {
        let key = self.key(id)?;
        if !sigv4::constant_time_eq(key.secret.as_bytes(), secret.as_bytes()) {
            return Err(AuthError::BadSignature("The secret of the bearer token is wrong."));
        }
        Self::usable(key, unix_now())
    }

    fn verify(
        &self,
        r: &RequestAuth,
        signed: &sigv4::SignedRequest,
        payload: &str,
        now: i64,
    ) -> Result<Arc<KeyRecord>, AuthError> {
        let key = if signed.credential.access_key.starts_with(session::PREFIX) {
            let token = r
                .headers
                .get("x-amz-security-token")
                .and_then(|v| v.to_str().ok())
                .or_else(|| r.query.iter().find(|(k, _)| k == "X-Amz-Security-Token").map(|(_, v)| v.as_str()));
            let opened = self.logins.sessions.open(&signed.credential.access_key, token, now);
            Arc::new(opened.map_err(|e| match e {
                session::SessionError::Missing => {
                    AuthError::SessionToken("Temporary credentials need their session token (X-Amz-Security-Token).")
                }
                session::SessionError::Invalid => {
                    AuthError::SessionToken("The security token included in the request is invalid.")
                }
                session::SessionError::Expired => AuthError::ExpiredToken,
            })?)
        } else {
            self.key(&signed.credential.access_key)?
        };
        let when = sigv4::parse_amz_date(&signed.amz_date)
            .ok_or(AuthError::Denied("AWS authentication requires a valid Date or x-amz-date header."))?;
        match signed.expires {
            None if (now - when).abs() > MAX_SKEW_SECONDS => return Err(AuthError::Skewed),
            Some(_) if when - now > MAX_SKEW_SECONDS => {
                return Err(AuthError::Denied("The presigned URL is dated in the future."))
            }
            Some(expires) if now > when + expires as i64 => return Err(AuthError::Denied("Request has expired.")),
            _ => {}
        }
        let mut headers = Vec::with_capacity(signed.signed_headers.len());
        for name in &signed.signed_headers {
            let values: Vec<&str> = r.headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
            if values.is_empty() {
                return Err(AuthError::BadSignature("A signed header is missing from the request."));
            }
            headers.push((name.clone(), sigv4::canonical_header_value(&values)));
        }
        let query = sigv4::canonical_query(r.raw_query);
        let signing_key = self.signing_key(&key, &signed.credential);
        let normalized = sigv4::canonical_uri(r.decoded_path);
        for uri in [r.raw_path, normalized.as_str()] {
            let c = sigv4::Canonical { method: r.method, uri, query: &query, headers: &headers, payload_hash: payload };
            let expected = sigv4::signature_with_key(&signing_key, signed, &c);
            if sigv4::constant_time_eq(expected.as_bytes(), signed.signature.as_bytes()) {
                return Self::usable(key, now);
            }
        }
        Err(AuthError::BadSignature(
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        ))
    }

    fn signing_key(&self, key: &KeyRecord, c: &sigv4::Credential) -> Arc<Vec<u8>> {
        let scope = format!("{}/{}/{}", c.date, c.region, c.service);
        // By the credential's key id: temporary credentials of one login have other secrets.
        self.signing_keys.get_with((c.access_key.clone(), scope), || Arc::new(sigv4::signing_key(&key.secret, c)))
    }
}

impl Drop for Auth {
    fn drop(&mut self) {
        // On a thread of its own: the PostgreSQL client cannot block inside a runtime, and the
        // gateway drops its state inside one.
        std::thread::scope(|s| {
            s.spawn(|| self.flush());
        });
    }
}

fn load_keys(store: &mut Store) -> Result<HashMap<String, Arc<KeyRecord>>, StoreError> {
    Ok(store.list()?.into_iter().map(|k| (k.access_key.clone(), Arc::new(k))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_decide() {
        #[derive(Deserialize)]
        struct C {
            p: Policy,
        }
        let parse = |t: &str| toml::from_str::<C>(t).map(|c| c.p);
        assert_eq!(parse("p = \"public\"").unwrap(), Policy::Public);
        assert_eq!(parse("p = \"authenticated\"").unwrap(), Policy::Authenticated);
        let allow = parse("p = [\"group:esgf\", \"key:ZGA\"]").unwrap();
        assert!(parse("p = \"everyone\"").is_err());
        assert!(parse("p = [\"team:x\"]").is_err());

        let anon = Principal::Anonymous { ip: "127.0.0.1".parse().unwrap() };
        let key = |id: &str, groups: &[&str]| {
            Principal::Key(Arc::new(KeyRecord {
                access_key: id.into(),
                secret: String::new(),
                name: String::new(),
                owner: String::new(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                created: 0,
                expires: None,
                revoked: None,
            }))
        };
        assert!(Policy::Public.allows(&anon));
        assert!(!Policy::Authenticated.allows(&anon) && Policy::Authenticated.allows(&key("X", &[])));
        assert!(allow.allows(&key("ZGA", &[])) && allow.allows(&key("Q", &["esgf"])));
        assert!(!allow.allows(&key("Q", &["other"])) && !allow.allows(&anon));
    }

    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// However many clients come, memory stays bounded: rounds of 100,000 new addresses (half
    /// of them sending an access key id that fails) fill the quota buckets and the failure
    /// throttle once; later rounds evict, and the process does not grow with them.
    #[test]
    fn a_hundred_thousand_identities_at_a_time_leave_memory_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let anonymous = quota::Limits { requests_per_second: Some(10.0), ..Default::default() };
        let auth = Auth::start(
            dir.path().join("keys.db"),
            QuotaConfig { anonymous: Some(anonymous), ..Default::default() },
            Logins::new(&[], &Default::default()).unwrap(),
        )
        .unwrap();
        let round = |k: u32| {
            for i in 0..100_000u32 {
                let n = k * 100_000 + i;
                let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
                let mut headers = HeaderMap::new();
                if i % 2 == 1 {
                    headers.insert("authorization", format!("Bearer ZGA{n:09}:wrong").parse().unwrap());
                }
                let r = RequestAuth {
                    method: "GET",
                    raw_path: "/b/k",
                    decoded_path: "/b/k",
                    raw_query: "",
                    query: &[],
                    headers: &headers,
                    ip,
                };
                let _ = auth.admit(&r);
            }
        };
        let start = rss_bytes();
        round(0);
        let first = rss_bytes();
        for k in 1..4 {
            round(k);
        }
        let last = rss_bytes();
        eprintln!(
            "RSS: {} MB at start, {} MB after 100,000 identities, {} MB after 400,000",
            start >> 20,
            first >> 20,
            last >> 20
        );
        assert!(auth.quotas.tracked_buckets() <= 110_000, "{}", auth.quotas.tracked_buckets());
        // three more rounds, each as large as the first: growth is a fraction of one round's
        assert!(last < first + (first - start).max(8 << 20) / 2, "RSS grew from {first} to {last} bytes");
    }
}

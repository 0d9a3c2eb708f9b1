//! Who is asking, may they, and how much have they used.
//!
//! # Flow of a request
//! 1. [`Auth::authenticate`]: SigV4 (header or presigned URL), `Authorization: Bearer
//!    ACCESS_KEY:SECRET`, or anonymous. Credentials that are present are always checked, also on
//!    public collections, as S3 does.
//! 2. [`Policy::allows`]: the collection's read policy.
//! 3. [`quota::Quotas::admit`]: rate and daily bytes.
//! 4. [`Auth::record`]: usage per key and day, flushed to the database every
//!    [`FLUSH_INTERVAL`] (the most a crash can lose).
//!
//! Keys are re-read from the database every [`FLUSH_INTERVAL`], so `zarrgate keys revoke`
//! takes effect on a running gateway within that time. No secret appears in a log line or an
//! error message.

pub mod quota;
pub mod sigv4;
pub mod store;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::header::HeaderMap;
use hyper::StatusCode;
use serde::Deserialize;

use crate::s3::xml::S3Error;
use quota::{Exceeded, QuotaConfig, Quotas};
use store::{Counts, KeyRecord, Store, StoreError, UsageRow};

/// How often keys are re-read and usage is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// Largest clock difference accepted in a signed request (S3's 15 minutes).
pub const MAX_SKEW_SECONDS: i64 = 15 * 60;
/// SHA-256 of an empty body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

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
    pub ip: IpAddr,
}

pub struct Auth {
    db: PathBuf,
    keys: RwLock<Arc<HashMap<String, Arc<KeyRecord>>>>,
    pub quotas: Quotas,
    pending: Mutex<HashMap<(String, String), Counts>>,
    store: Mutex<Store>,
    /// Derived signing keys by (access key, scope): four HMACs saved per request.
    signing_keys: Mutex<HashMap<(String, String), Arc<Vec<u8>>>>,
}

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn day_of(unix: i64) -> String {
    let (y, m, d) = crate::s3::civil_from_days(unix.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

fn denied(code: &'static str, message: impl Into<String>) -> S3Error {
    S3Error::new(StatusCode::FORBIDDEN, code, message)
}

impl Auth {
    /// Opens the key database and starts the thread that re-reads keys and writes usage.
    pub fn start(db: PathBuf, quotas: QuotaConfig) -> Result<Arc<Self>, StoreError> {
        let store = Store::open(&db)?;
        let keys = load_keys(&store)?;
        let auth = Arc::new(Auth {
            db,
            keys: RwLock::new(Arc::new(keys)),
            quotas: Quotas::new(quotas),
            pending: Mutex::new(HashMap::new()),
            store: Mutex::new(store),
            signing_keys: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&auth);
        std::thread::spawn(move || loop {
            std::thread::sleep(FLUSH_INTERVAL);
            let Some(auth) = weak.upgrade() else { return };
            auth.refresh();
        });
        Ok(auth)
    }

    /// Re-reads keys and writes pending usage.
    pub fn refresh(&self) {
        self.flush();
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        match load_keys(&store) {
            Ok(keys) => *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys),
            Err(e) => eprintln!("zarrgate: cannot re-read keys from {}: {e}", self.db.display()),
        }
    }

    /// Writes pending usage counts.
    pub fn flush(&self) {
        let batch: Vec<UsageRow> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.drain().map(|((key, day), counts)| UsageRow { key, day, counts }).collect()
        };
        if batch.is_empty() {
            return;
        }
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = store.add_usage(&batch) {
            eprintln!("zarrgate: cannot write usage to {}: {e}", self.db.display());
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for row in batch {
                pending.entry((row.key, row.day)).or_default().add(&row.counts);
            }
        }
    }

    /// Records one answered request.
    pub fn record(&self, who: &Principal, bytes: u64, status: StatusCode) {
        let day = day_of(unix_now());
        self.quotas.add_bytes(who, &day, bytes);
        let counts = Counts {
            requests: 1,
            bytes,
            errors: u64::from(status.is_client_error() || status.is_server_error()),
            ..Default::default()
        };
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

    /// Admits a request under the quotas, or answers S3's `SlowDown`.
    pub fn admit(&self, who: &Principal) -> Result<(), S3Error> {
        self.quotas.admit(who, &day_of(unix_now())).map_err(|Exceeded(what)| {
            S3Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                format!("Please reduce your request rate: the quota on {what} is used up."),
            )
            .with_header("retry-after", "1")
        })
    }

    fn key(&self, access_key: &str, now: i64) -> Result<Arc<KeyRecord>, S3Error> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let key = keys.get(access_key).cloned().ok_or_else(|| {
            denied("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        })?;
        if let Some(why) = key.refusal(now) {
            return Err(denied("InvalidAccessKeyId", format!("The AWS Access Key Id you provided is {why}.")));
        }
        Ok(key)
    }

    /// Identifies the sender of a request.
    pub fn authenticate(&self, r: &RequestAuth) -> Result<Principal, S3Error> {
        let now = unix_now();
        let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok());
        if r.headers.contains_key("authorization") && header("authorization").is_none() {
            return Err(S3Error::new(
                StatusCode::BAD_REQUEST,
                "AuthorizationHeaderMalformed",
                "The Authorization header is not valid ASCII.",
            ));
        }
        if let Some(auth) = header("authorization") {
            if let Some(token) = auth.strip_prefix("Bearer ") {
                let (id, secret) = token.trim().split_once(':').ok_or_else(|| {
                    S3Error::new(
                        StatusCode::BAD_REQUEST,
                        "AuthorizationHeaderMalformed",
                        "A bearer token is ACCESS_KEY:SECRET.",
                    )
                })?;
                let key = self.key(id, now)?;
                if !sigv4::constant_time_eq(key.secret.as_bytes(), secret.as_bytes()) {
                    return Err(denied("SignatureDoesNotMatch", "The secret of the bearer token is wrong."));
                }
                return Ok(Principal::Key(key));
            }
            let signed = sigv4::parse_authorization(auth, header("x-amz-date"))
                .map_err(|e| S3Error::new(StatusCode::BAD_REQUEST, "AuthorizationHeaderMalformed", e.0))?;
            // Without x-amz-content-sha256 (curl 7.x) the hash of the empty body was signed;
            // reads have no body.
            let payload = header("x-amz-content-sha256").unwrap_or(EMPTY_SHA256);
            return self.verify(r, &signed, payload, now).map(Principal::Key);
        }
        if r.query.iter().any(|(k, _)| k == "AWSAccessKeyId") {
            return Err(S3Error::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.",
            ));
        }
        const PRESIGN: &[&str] = &["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"];
        if r.query.iter().any(|(k, _)| PRESIGN.contains(&k.as_str())) {
            let signed = sigv4::parse_presigned(r.query)
                .map_err(|e| S3Error::new(StatusCode::BAD_REQUEST, "AuthorizationQueryParametersError", e.0))?;
            return self.verify(r, &signed, "UNSIGNED-PAYLOAD", now).map(Principal::Key);
        }
        Ok(Principal::Anonymous { ip: r.ip })
    }

    fn verify(
        &self,
        r: &RequestAuth,
        signed: &sigv4::SignedRequest,
        payload: &str,
        now: i64,
    ) -> Result<Arc<KeyRecord>, S3Error> {
        if !signed.amz_date.starts_with(&signed.credential.date) {
            return Err(S3Error::new(
                StatusCode::BAD_REQUEST,
                "AuthorizationHeaderMalformed",
                "The date of the credential scope does not match the request date (X-Amz-Date).",
            ));
        }
        let key = self.key(&signed.credential.access_key, now)?;
        let when = sigv4::parse_amz_date(&signed.amz_date)
            .ok_or_else(|| denied("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header."))?;
        match signed.expires {
            None if (now - when).abs() > MAX_SKEW_SECONDS => {
                return Err(denied(
                    "RequestTimeTooSkewed",
                    "The difference between the request time and the current time is too large.",
                ))
            }
            Some(_) if when - now > MAX_SKEW_SECONDS => {
                return Err(denied("AccessDenied", "The presigned URL is dated in the future."))
            }
            Some(expires) if now > when + expires as i64 => return Err(denied("AccessDenied", "Request has expired.")),
            _ => {}
        }
        let mut headers = Vec::with_capacity(signed.signed_headers.len());
        for name in &signed.signed_headers {
            let values: Vec<&str> = r.headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
            if values.is_empty() {
                return Err(denied("SignatureDoesNotMatch", format!("The signed header {name} is missing.")));
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
                return Ok(key);
            }
        }
        Err(denied(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        ))
    }
}

impl Auth {
    fn signing_key(&self, key: &KeyRecord, c: &sigv4::Credential) -> Arc<Vec<u8>> {
        let id = (key.access_key.clone(), format!("{}/{}/{}", c.date, c.region, c.service));
        let mut cache = self.signing_keys.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.entry(id).or_insert_with(|| Arc::new(sigv4::signing_key(&key.secret, c))).clone()
    }
}

impl Drop for Auth {
    fn drop(&mut self) {
        self.flush();
    }
}

fn load_keys(store: &Store) -> Result<HashMap<String, Arc<KeyRecord>>, StoreError> {
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

    #[test]
    fn days() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_795_697_766), "2026-11-26");
    }
}

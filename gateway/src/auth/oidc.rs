//! OpenID Connect logins: bearer tokens from configured issuers, and who they name.
//!
//! - **JWTs** are checked against the issuer's keys: discovery at
//!   `ISSUER/.well-known/openid-configuration`, then its `jwks_uri`, fetched on first use and
//!   again when a token names a key id not seen yet (at most once per `jwks_refresh_seconds`),
//!   so a rotated signing key works without a restart. RS256 (and the other RSA algorithms),
//!   ES256/ES384 and EdDSA; the algorithm must be one the key is for, so `alg: none` and an
//!   HMAC signed with a public key are refused. `iss`, `aud`, `exp` and `nbf` are checked with
//!   `leeway_seconds`.
//! - **Opaque tokens** (Globus issues them) are asked about at the issuer's RFC 7662
//!   introspection endpoint and the answer is kept `introspection_cache_seconds`.
//! - **Claims to groups**: `groups_claim` (a dotted path, such as `realm_access.roles`) holds a
//!   list or a space-separated string; `[oidc.groups]` maps values to the groups collection
//!   policies and quotas use (without a map, values are groups as they are).
//!
//! Network work happens in [`Oidc::prepare`], before a request is admitted; [`Oidc::identify`]
//! then decides from what is known, without waiting on anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hyper::header::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::store::KeyRecord;

/// One issuer (`[[oidc]]` in the configuration).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` of its tokens; discovery is at `ISSUER/.well-known/openid-configuration`.
    pub issuer: String,
    /// Accepted `aud` values (one is enough). Introspected tokens without `aud` are accepted.
    pub audience: OneOrMany,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claim values to zarrgate groups; empty: values are groups as they are.
    #[serde(default)]
    pub groups: BTreeMap<String, String>,
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Least time between two fetches of the keys (a token naming an unknown key id asks
    /// for one).
    #[serde(default = "default_refresh")]
    pub jwks_refresh_seconds: u64,
    /// For opaque tokens: the client the gateway introspects as.
    pub introspection_client_id: Option<String>,
    pub introspection_client_secret: Option<String>,
    #[serde(default = "default_introspection_cache")]
    pub introspection_cache_seconds: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway() -> u64 {
    30
}
fn default_refresh() -> u64 {
    10
}
fn default_introspection_cache() -> u64 {
    30
}

/// A bearer token that does not let its holder in, and why (the text is safe to show).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

impl TokenError {
    pub fn is_expiry(&self) -> bool {
        self.0 == EXPIRED
    }
}

const EXPIRED: &str = "The token has expired.";

fn refuse<T>(why: impl Into<String>) -> Result<T, TokenError> {
    Err(TokenError(why.into()))
}

/// A verification key and the algorithms it may be used with.
struct Key {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct Known {
    jwks_uri: Option<String>,
    introspection_endpoint: Option<String>,
    keys: HashMap<String, Arc<Key>>,
    /// Keys without a `kid` (used when a token names none).
    unnamed: Vec<Arc<Key>>,
}

struct Issuer {
    config: IssuerConfig,
    known: RwLock<Known>,
    /// Bumped whenever the key set is replaced: a verified token is trusted again only while
    /// the keys it was verified with are the current ones.
    generation: std::sync::atomic::AtomicU64,
    last_fetch: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
    /// Introspection answers by token digest.
    introspected: moka::sync::Cache<[u8; 32], Arc<Result<KeyRecord, TokenError>>>,
}

/// The configured issuers.
pub struct Oidc {
    issuers: Vec<Issuer>,
    http: reqwest::Client,
    /// JWTs already verified, by digest: (issuer, its key generation then, who). A signature
    /// check and two JSON parses cost tens of microseconds; a digest and a lookup, one.
    verified: moka::sync::Cache<[u8; 32], (usize, u64, Arc<KeyRecord>)>,
}

impl Oidc {
    pub fn new(configs: &[IssuerConfig]) -> Result<Oidc, String> {
        let mut issuers = Vec::new();
        for c in configs {
            if c.audience.list().is_empty() {
                return Err(format!("oidc issuer {}: audience is empty", c.issuer));
            }
            if c.introspection_client_id.is_some() != c.introspection_client_secret.is_some() {
                return Err(format!(
                    "oidc issuer {}: introspection needs both introspection_client_id and introspection_client_secret",
                    c.issuer
                ));
            }
            let ttl = Duration::from_secs(c.introspection_cache_seconds.max(1));
            issuers.push(Issuer {
                config: c.clone(),
                known: RwLock::default(),
                generation: std::sync::atomic::AtomicU64::new(0),
                last_fetch: Mutex::new(None),
                fetching: tokio::sync::Mutex::new(()),
                introspected: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(ttl).build(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot start the HTTP client for OpenID issuers: {e}"))?;
        let verified =
            moka::sync::Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(300)).build();
        Ok(Oidc { issuers, http, verified })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Fetches what checking the request's bearer token needs and does not know yet: the
    /// issuer's keys when the token names a key id not seen, or the introspection of an
    /// opaque token. Failures here only mean the token will be refused.
    pub async fn prepare(&self, headers: &HeaderMap) {
        let Some(token) = bearer_token(headers) else { return };
        self.prepare_token(token).await;
    }

    pub async fn prepare_token(&self, token: &str) {
        if self.recognized(&digest(token), crate::dates::unix_now()).is_some() {
            return;
        }
        match jwt_parts(token) {
            Some((header, claims)) => {
                let Some((_, issuer)) = self.issuer_of(&claims) else { return };
                if !issuer.knows(header.kid.as_deref()) {
                    issuer.fetch_keys(&self.http).await;
                }
            }
            None => {
                let digest = digest(token);
                for issuer in self.issuers.iter().filter(|i| i.config.introspection_client_id.is_some()) {
                    let answer = match issuer.introspected.get(&digest) {
                        Some(known) => known,
                        None => {
                            let answer = Arc::new(issuer.introspect(&self.http, token).await);
                            issuer.introspected.insert(digest, answer.clone());
                            answer
                        }
                    };
                    if answer.is_ok() {
                        return; // this issuer knows the token; no other is asked
                    }
                }
            }
        }
    }

    fn issuer_of(&self, claims: &Value) -> Option<(usize, &Issuer)> {
        let iss = claims.get("iss")?.as_str()?;
        self.issuers.iter().enumerate().find(|(_, i)| i.config.issuer == iss)
    }

    /// A JWT verified before, under the keys its issuer still has, and not expired.
    fn recognized(&self, digest: &[u8; 32], now: i64) -> Option<Arc<KeyRecord>> {
        let (i, generation, record) = self.verified.get(digest)?;
        let issuer = &self.issuers[i];
        let current = issuer.generation.load(std::sync::atomic::Ordering::Acquire) == generation;
        let fresh = record.expires.is_some_and(|e| now <= e + issuer.config.leeway_seconds as i64);
        (current && fresh).then_some(record)
    }

    /// Who a bearer token (a JWT or an opaque token) names, as a key record: access key
    /// `oidc:SUBJECT` (usage is accounted under it), the groups its claims map to, and the
    /// token's expiry.
    pub fn identify(&self, token: &str, now: i64) -> Result<Arc<KeyRecord>, TokenError> {
        let digest = digest(token);
        if let Some(record) = self.recognized(&digest, now) {
            return Ok(record);
        }
        match jwt_parts(token) {
            Some((_, claims)) => {
                let (i, issuer) = self.issuer_of(&claims).ok_or_else(|| {
                    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("(none)");
                    let iss: String = iss.chars().take(200).collect();
                    TokenError(format!("The token's issuer {iss} is not one this gateway accepts."))
                })?;
                let generation = issuer.generation.load(std::sync::atomic::Ordering::Acquire);
                let record = Arc::new(issuer.verify_signed(token)?);
                self.verified.insert(digest, (i, generation, record.clone()));
                Ok(record)
            }
            None => {
                let mut last = TokenError("The token is not a JWT and no issuer introspects opaque tokens.".into());
                for issuer in self.issuers.iter().filter(|i| i.config.introspection_client_id.is_some()) {
                    match issuer.introspected.get(&digest).as_deref() {
                        Some(Ok(k)) if k.expires.is_none_or(|e| e > now) => return Ok(Arc::new(k.clone())),
                        Some(Ok(_)) => last = TokenError(EXPIRED.into()),
                        Some(Err(e)) => last = e.clone(),
                        None => {}
                    }
                }
                Err(last)
            }
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// The token of an `Authorization: Bearer TOKEN` header that is not an access key pair.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let token = auth.strip_prefix("Bearer ")?.trim();
    (!token.contains(':') && !token.is_empty()).then_some(token)
}

/// The header and (unverified) claims of a JWT, or `None` for an opaque token.
fn jwt_parts(token: &str) -> Option<(jsonwebtoken::Header, Value)> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (h, p, _s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header_json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).ok()?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok()?;
    let claims: Value = serde_json::from_slice(&claims).ok()?;
    // A header jsonwebtoken cannot read (`alg: none`, an unknown algorithm) still makes this a
    // JWT: it is refused when verified.
    let header = serde_json::from_slice(&header_json).unwrap_or(jsonwebtoken::Header {
        alg: Algorithm::HS256,
        kid: Some("\u{0}unreadable".into()),
        ..Default::default()
    });
    Some((header, claims))
}

impl Issuer {
    fn knows(&self, kid: Option<&str>) -> bool {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        match kid {
            Some(k) => known.keys.contains_key(k),
            None => !known.unnamed.is_empty() || known.keys.len() == 1,
        }
    }

    /// Discovery (once) and the key set, unless fetched less than `jwks_refresh_seconds` ago.
    async fn fetch_keys(&self, http: &reqwest::Client) {
        let _one = self.fetching.lock().await;
        {
            let mut last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(self.config.jwks_refresh_seconds)) {
                return;
            }
            *last = Some(Instant::now());
        }
        if let Err(e) = self.try_fetch_keys(http).await {
            tracing::warn!(issuer = %self.config.issuer, "cannot fetch the OpenID keys: {e}");
        }
    }

    async fn discover(&self, http: &reqwest::Client) -> Result<(), String> {
        if self.known.read().unwrap_or_else(|p| p.into_inner()).jwks_uri.is_some() {
            return Ok(());
        }
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let doc = get_json(http, &url).await?;
        if doc.get("issuer").and_then(Value::as_str) != Some(self.config.issuer.as_str()) {
            return Err(format!("{url} names another issuer: {:?}", doc.get("issuer")));
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        known.jwks_uri = doc.get("jwks_uri").and_then(Value::as_str).map(str::to_string);
        known.introspection_endpoint = doc.get("introspection_endpoint").and_then(Value::as_str).map(str::to_string);
        Ok(())
    }

    async fn try_fetch_keys(&self, http: &reqwest::Client) -> Result<(), String> {
        self.discover(http).await?;
        let uri = self.known.read().unwrap_or_else(|p| p.into_inner()).jwks_uri.clone();
        let uri = uri.ok_or("the discovery document has no jwks_uri")?;
        let set: JwkSet =
            serde_json::from_value(get_json(http, &uri).await?).map_err(|e| format!("{uri} is not a JWK set: {e}"))?;
        let mut keys = HashMap::new();
        let mut unnamed = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let (Some(algorithms), Ok(decoding)) = (algorithms_of(jwk), DecodingKey::from_jwk(jwk)) else { continue };
            let key = Arc::new(Key { decoding, algorithms });
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.insert(kid.clone(), key);
                }
                None => unnamed.push(key),
            }
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        known.keys = keys;
        known.unnamed = unnamed;
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    fn verify_signed(&self, token: &str) -> Result<KeyRecord, TokenError> {
        // The header again, strictly: `alg: none` and unknown algorithms end here.
        let strict = jsonwebtoken::decode_header(token).map_err(|_| {
            TokenError("The token's header cannot be read or names an algorithm that is not accepted.".into())
        })?;
        let key = {
            let known = self.known.read().unwrap_or_else(|p| p.into_inner());
            match &strict.kid {
                Some(kid) => known.keys.get(kid).cloned(),
                None => known
                    .unnamed
                    .first()
                    .cloned()
                    .or_else(|| (known.keys.len() == 1).then(|| known.keys.values().next().cloned()).flatten()),
            }
        };
        let Some(key) = key else {
            return refuse("The token is signed with a key the issuer does not publish.");
        };
        if !key.algorithms.contains(&strict.alg) {
            return refuse(format!("The token's algorithm {:?} is not one its key is for.", strict.alg));
        }
        let mut v = Validation::new(strict.alg);
        v.algorithms = key.algorithms.clone();
        v.leeway = self.config.leeway_seconds;
        v.validate_nbf = true;
        v.set_audience(&self.config.audience.list());
        v.set_issuer(&[self.config.issuer.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Value>(token, &key.decoding, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind::*;
            TokenError(
                match e.kind() {
                    ExpiredSignature => EXPIRED,
                    ImmatureSignature => "The token is not valid yet (nbf).",
                    InvalidAudience => "The token is not for this gateway (aud).",
                    InvalidIssuer => "The token's issuer does not match (iss).",
                    InvalidSignature => "The token's signature is not valid.",
                    MissingRequiredClaim(_) => "The token lacks a required claim (exp, iss, aud, sub).",
                    InvalidAlgorithm => "The token's algorithm is not one its key is for.",
                    _ => "The token cannot be verified.",
                }
                .into(),
            )
        })?;
        self.record(&data.claims)
    }

    /// The key record of a verified token's claims.
    fn record(&self, claims: &Value) -> Result<KeyRecord, TokenError> {
        let sub = claims.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty());
        let sub = sub.ok_or_else(|| TokenError("The token has no subject (sub).".into()))?;
        let mut values: Vec<String> = Vec::new();
        let mut at = Some(claims);
        for part in self.config.groups_claim.split('.') {
            at = at.and_then(|v| v.get(part));
        }
        match at {
            Some(Value::Array(items)) => values.extend(items.iter().filter_map(Value::as_str).map(str::to_string)),
            Some(Value::String(s)) => values.extend(s.split_whitespace().map(str::to_string)),
            _ => {}
        }
        let mut groups: Vec<String> = if self.config.groups.is_empty() {
            values
        } else {
            values.iter().filter_map(|v| self.config.groups.get(v).cloned()).collect()
        };
        groups.sort();
        groups.dedup();
        let number = |k: &str| claims.get(k).and_then(Value::as_i64);
        Ok(KeyRecord {
            access_key: format!("oidc:{sub}"),
            secret: String::new(),
            name: claims.get("email").and_then(Value::as_str).unwrap_or(sub).to_string(),
            owner: sub.to_string(),
            groups,
            created: number("iat").unwrap_or(0),
            expires: number("exp"),
            revoked: None,
        })
    }

    /// Asks the issuer about an opaque token (RFC 7662).
    async fn introspect(&self, http: &reqwest::Client, token: &str) -> Result<KeyRecord, TokenError> {
        if let Err(e) = self.discover(http).await {
            tracing::warn!(issuer = %self.config.issuer, "cannot read the OpenID discovery document: {e}");
            return refuse("The token cannot be checked right now (the issuer is unreachable).");
        }
        let endpoint = self.known.read().unwrap_or_else(|p| p.into_inner()).introspection_endpoint.clone();
        let Some(endpoint) = endpoint else { return refuse("The issuer has no introspection endpoint.") };
        let (id, secret) = (
            self.config.introspection_client_id.clone().unwrap_or_default(),
            self.config.introspection_client_secret.clone(),
        );
        let resp = http
            .post(&endpoint)
            .basic_auth(id, secret)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(format!("token={}", percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC)))
            .send()
            .await;
        let answer: Value = match resp {
            Ok(r) if r.status().is_success() => {
                match r.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                    Some(v) => v,
                    None => return refuse("The issuer's introspection answer cannot be read."),
                }
            }
            Ok(r) => {
                tracing::warn!(issuer = %self.config.issuer, status = %r.status(), "introspection refused");
                return refuse("The token cannot be checked right now (introspection failed).");
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, "introspection failed: {e}");
                return refuse("The token cannot be checked right now (the issuer is unreachable).");
            }
        };
        if answer.get("active").and_then(Value::as_bool) != Some(true) {
            return refuse("The token is not active (revoked, expired or unknown to its issuer).");
        }
        if let Some(aud) = answer.get("aud") {
            let auds: Vec<&str> = match aud {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !self.config.audience.list().iter().any(|a| auds.contains(&a.as_str())) {
                return refuse("The token is not for this gateway (aud).");
            }
        }
        self.record(&answer)
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let resp = http.get(url).header("accept", "application/json").send().await.map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{url}: not JSON: {e}"))
}

/// The algorithms a public key may verify: the one it names, else those of its type. Never
/// an HMAC, so a public key can never be used as an HMAC secret.
fn algorithms_of(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    use Algorithm::*;
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => vec![EdDSA],
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(family),
        Some(named) => {
            let named = match named {
                KeyAlgorithm::RS256 => RS256,
                KeyAlgorithm::RS384 => RS384,
                KeyAlgorithm::RS512 => RS512,
                KeyAlgorithm::PS256 => PS256,
                KeyAlgorithm::PS384 => PS384,
                KeyAlgorithm::PS512 => PS512,
                KeyAlgorithm::ES256 => ES256,
                KeyAlgorithm::ES384 => ES384,
                KeyAlgorithm::EdDSA => EdDSA,
                _ => return None,
            };
            family.contains(&named).then(|| vec![named])
        }
    }
}

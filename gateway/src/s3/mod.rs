//! The read-only S3 API: routing, listing, and object reads.
//!
//! Path style only: `/{bucket}/{dataset id}/{zarr key}`. Every failure is an S3 XML error
//! (bodiless for HEAD). See `docs/architecture.md` for the behaviours real clients rely on.

pub mod http_semantics;
pub mod xml;

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::app::App;
use crate::auth::{AuthError, Principal, Refusal};
use crate::body::{HttpResponse, ResponseBody};
use crate::dates::iso8601_millis;
use crate::source::Wait;
use crate::store::{Bucket, Found, ListQuery, Lookup, Part, ReadOutcome};
use http_semantics::{parse_range, Conditions, RangeSpec, Resolved, Verdict};
use xml::{element, url_encode, S3Error, NAMESPACE};

/// The bucket that shows Zarr results of operations (`s3://results/{hash}/`).
pub const RESULTS_BUCKET: &str = "results";

/// Longest key S3 accepts, in bytes.
const MAX_KEY: usize = 1024;
/// Largest header section we read (hyper's own limit is higher and answers without XML).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Query parameters that name S3 features a read-only Zarr store does not have.
const UNSUPPORTED_SUBRESOURCES: &[&str] = &[
    "acl",
    "policy",
    "versioning",
    "cors",
    "lifecycle",
    "tagging",
    "uploads",
    "uploadId",
    "versions",
    "website",
    "logging",
    "notification",
    "replication",
    "encryption",
    "object-lock",
    "ownershipControls",
    "publicAccessBlock",
    "accelerate",
    "requestPayment",
    "attributes",
    "torrent",
    "retention",
    "legal-hold",
    "delete",
    "restore",
    "select",
];

/// S3 codes of authentication and policy refusals.
const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "RequestTimeTooSkewed",
    "AuthorizationHeaderMalformed",
    "AuthorizationQueryParametersError",
    "InvalidRequest",
    "InvalidToken",
    "ExpiredToken",
];

/// A request the router admitted: who sent it, its id, and its decoded path and query.
pub struct S3Call<'a> {
    pub who: &'a Principal,
    pub request_id: &'a str,
    pub path: &'a str,
    pub query: Vec<(String, String)>,
}

/// A parsed request, as the handlers need it.
struct S3Request<'a> {
    method: &'a Method,
    headers: &'a HeaderMap,
    bucket: String,
    key: String,
    query: Vec<(String, String)>,
    request_id: String,
}

impl S3Request<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }

    fn resource(&self) -> String {
        if self.key.is_empty() {
            format!("/{}", self.bucket)
        } else {
            format!("/{}/{}", self.bucket, self.key)
        }
    }
}

/// The S3 error of a URL whose path or query is not UTF-8 once decoded.
pub fn invalid_uri() -> S3Error {
    S3Error::new(StatusCode::BAD_REQUEST, "InvalidURI", "The URI is not valid UTF-8 once decoded.")
}

/// The S3 error of a request the router did not admit.
pub fn refusal_error(refusal: &Refusal) -> S3Error {
    let forbidden = |code| S3Error::new(StatusCode::FORBIDDEN, code, "");
    let mut err = match refusal {
        Refusal::Quota(e) => {
            return S3Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                format!("Please reduce your request rate: the quota on {} is used up.", e.what),
            )
            .with_header("retry-after", e.retry_after.to_string())
        }
        Refusal::Auth(e @ AuthError::Throttled { retry_after, .. }) => {
            return S3Error::new(StatusCode::SERVICE_UNAVAILABLE, "SlowDown", e.to_string())
                .with_header("retry-after", retry_after.to_string())
        }
        Refusal::Auth(e @ AuthError::Unavailable { retry_after }) => {
            return S3Error::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", e.to_string())
                .with_header("retry-after", retry_after.to_string())
        }
        Refusal::Auth(AuthError::MalformedHeader(_)) => {
            S3Error::new(StatusCode::BAD_REQUEST, "AuthorizationHeaderMalformed", "")
        }
        Refusal::Auth(AuthError::MalformedQuery(_)) => {
            S3Error::new(StatusCode::BAD_REQUEST, "AuthorizationQueryParametersError", "")
        }
        Refusal::Auth(AuthError::Unsupported) => S3Error::new(StatusCode::BAD_REQUEST, "InvalidRequest", ""),
        Refusal::Auth(AuthError::UnknownKey | AuthError::Unusable(_)) => forbidden("InvalidAccessKeyId"),
        Refusal::Auth(AuthError::BadSignature(_)) => forbidden("SignatureDoesNotMatch"),
        Refusal::Auth(AuthError::Skewed) => forbidden("RequestTimeTooSkewed"),
        Refusal::Auth(AuthError::Denied(_)) => forbidden("AccessDenied"),
        // RFC 6750: a bearer token that is not accepted is 401 with a challenge.
        Refusal::Auth(AuthError::InvalidToken(why)) => S3Error::new(StatusCode::UNAUTHORIZED, "InvalidToken", "")
            .with_header("www-authenticate", bearer_challenge(why)),
        Refusal::Auth(AuthError::SessionToken(_)) => forbidden("InvalidToken"),
        Refusal::Auth(AuthError::ExpiredToken) => S3Error::new(StatusCode::BAD_REQUEST, "ExpiredToken", ""),
    };
    if let Refusal::Auth(e) = refusal {
        err.message = e.to_string();
    }
    err
}

/// The `WWW-Authenticate` challenge of a refused bearer token (quotes cannot appear in it).
pub fn bearer_challenge(why: &str) -> String {
    format!(r#"Bearer realm="zarrgate", error="invalid_token", error_description="{}""#, why.replace(['"', '\\'], "'"))
}

/// The configured bucket a request addresses, or empty: the label of its metrics.
pub fn bucket_of(app: &App, path: &str, headers: &HeaderMap) -> String {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let bucket = match virtual_host_bucket(app, headers, rest) {
        Some(b) => b,
        None => rest.split('/').next().unwrap_or(""),
    };
    if app.collections.contains_key(bucket) {
        bucket.to_string()
    } else {
        String::new()
    }
}

fn response(status: StatusCode, content_type: &str, body: Bytes, request_id: &str) -> HttpResponse {
    let mut r = Response::new(ResponseBody::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_str(content_type).expect("valid content type"));
    h.insert("x-amz-request-id", HeaderValue::from_str(request_id).expect("hex id"));
    h.insert("server", HeaderValue::from_static("zarrgate"));
    r
}

/// A plain-text answer (health, readiness, metrics), with the request id S3 answers carry.
pub fn text_response(status: StatusCode, content_type: &str, body: Bytes, request_id: &str) -> HttpResponse {
    response(status, content_type, body, request_id)
}

fn xml_response(body: String, request_id: &str) -> HttpResponse {
    let mut text = String::from(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    text.push_str(&body);
    response(StatusCode::OK, "application/xml", Bytes::from(text), request_id)
}

/// An S3 error as a response; HEAD gets the status and headers only. Refusals are counted
/// per bucket and code.
pub fn error_response(
    app: &App,
    err: &S3Error,
    bucket: &str,
    resource: &str,
    request_id: &str,
    head: bool,
) -> HttpResponse {
    if AUTH_CODES.contains(&err.code) {
        app.metrics.add("zarrgate_auth_failures_total", &[("bucket", bucket), ("code", err.code)], 1);
    } else if err.code == "SlowDown" {
        app.metrics.add("zarrgate_quota_rejections_total", &[("bucket", bucket)], 1);
    }
    error_document(err, resource, request_id, head)
}

/// An S3 error as a response, uncounted (what the server answers when a request panicked).
pub fn error_document(err: &S3Error, resource: &str, request_id: &str, head: bool) -> HttpResponse {
    let body = if head { Bytes::new() } else { Bytes::from(err.to_xml(resource, request_id)) };
    let mut r = response(err.status, "application/xml", body, request_id);
    for (name, value) in &err.headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.headers_mut().insert(*name, v);
        }
    }
    r
}

/// Answers one admitted S3 request. Never panics on bad input; a bug that panics is caught by
/// the server.
pub async fn handle(app: &Arc<App>, req: &Request<hyper::body::Incoming>, call: S3Call<'_>) -> HttpResponse {
    let head = req.method() == Method::HEAD;
    match route(app, req, &call).await {
        Ok(r) => r,
        Err(err) => {
            let bucket = bucket_of(app, call.path, req.headers());
            error_response(app, &err, &bucket, req.uri().path(), call.request_id, head)
        }
    }
}

async fn route(
    app: &Arc<App>,
    req: &Request<hyper::body::Incoming>,
    call: &S3Call<'_>,
) -> Result<HttpResponse, S3Error> {
    let header_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "RequestHeaderSectionTooLarge",
            format!("Your request header section exceeds the maximum allowed size ({MAX_HEADER_BYTES} bytes)."),
        ));
    }
    let rest = call.path.strip_prefix('/').unwrap_or(call.path);
    let (bucket, key) = match virtual_host_bucket(app, req.headers(), rest) {
        Some(bucket) => (bucket, rest),
        None => rest.split_once('/').unwrap_or((rest, "")),
    };
    let r = S3Request {
        method: req.method(),
        headers: req.headers(),
        bucket: bucket.to_string(),
        key: key.to_string(),
        query: call.query.clone(),
        request_id: call.request_id.to_string(),
    };
    if r.method != Method::GET && r.method != Method::HEAD {
        return Err(S3Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("zarrgate is a read-only store: {} is not allowed.", r.method),
        ));
    }
    if let Some(sub) = UNSUPPORTED_SUBRESOURCES.iter().find(|s| r.param(s).is_some()) {
        return Err(S3Error::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            format!("The {sub} subresource is not implemented by this read-only store."),
        ));
    }
    let who = call.who;
    if r.bucket.is_empty() {
        return Ok(list_buckets(app, &r, who));
    }
    if r.bucket == RESULTS_BUCKET {
        if let Some(ops) = &app.ops {
            return results(app, ops, &r, who).await;
        }
    }
    let collection = app.collections.get(&r.bucket).ok_or_else(S3Error::no_such_bucket)?;
    if !collection.read.allows(who) {
        return Err(access_denied(who));
    }
    serve(app, collection, &r, who).await
}

/// A request to one bucket, past its access check: the bucket itself (HEAD, location,
/// listing) or one of its objects.
async fn serve(
    app: &Arc<App>,
    bucket: &dyn Bucket,
    r: &S3Request<'_>,
    who: &Principal,
) -> Result<HttpResponse, S3Error> {
    if r.key.is_empty() {
        if r.is_head() {
            return Ok(response(StatusCode::OK, "application/xml", Bytes::new(), &r.request_id));
        }
        if r.param("location").is_some() {
            let body = format!(r#"<LocationConstraint xmlns="{NAMESPACE}"></LocationConstraint>"#);
            return Ok(xml_response(body, &r.request_id));
        }
        return list_objects(bucket, r);
    }
    if r.key.len() > MAX_KEY {
        return Err(S3Error::new(StatusCode::BAD_REQUEST, "KeyTooLongError", "Your key is too long."));
    }
    // A key with `.` or `..` segments is looked up verbatim, as S3 does: keys name catalog
    // entries and result files, never paths on disk, so such a key is simply not found.
    let overrides = response_overrides(r, who)?;
    let mut resp = get_object(app, bucket, r).await?;
    for (name, value) in overrides {
        resp.headers_mut().insert(name, value);
    }
    Ok(resp)
}

/// Query parameters a signed GET may set response headers with, as S3 allows.
const RESPONSE_OVERRIDES: [(&str, &str); 6] = [
    ("response-content-type", "content-type"),
    ("response-content-language", "content-language"),
    ("response-expires", "expires"),
    ("response-cache-control", "cache-control"),
    ("response-content-disposition", "content-disposition"),
    ("response-content-encoding", "content-encoding"),
];

/// The headers a GET's `response-*` parameters ask for. As S3: only for signed requests (an
/// anonymous one gets `InvalidRequest`), and a value that is not a valid header is refused.
fn response_overrides(r: &S3Request, who: &Principal) -> Result<Vec<(&'static str, HeaderValue)>, S3Error> {
    let mut out = Vec::new();
    for (param, header) in RESPONSE_OVERRIDES {
        let Some(value) = r.param(param) else { continue };
        if who.is_anonymous() {
            return Err(S3Error::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "Request specific response headers cannot be used for anonymous GET requests.",
            ));
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| S3Error::invalid_argument(format!("{param} is not a valid header value.")))?;
        out.push((header, value));
    }
    Ok(out)
}

fn access_denied(who: &Principal) -> S3Error {
    let message = match who {
        Principal::Anonymous { .. } => "Access Denied: this collection needs an access key.",
        Principal::Key(_) => "Access Denied: this key may not read this collection.",
    };
    S3Error::new(StatusCode::FORBIDDEN, "AccessDenied", message)
}

/// The bucket of a virtual-hosted request (`Host: cmip6.s3.example.org`): the first label of
/// the host, when it names a collection and more labels follow, and the path does not start
/// with a bucket name itself (a gateway whose own host name starts with a bucket's name still
/// serves path-style requests).
fn virtual_host_bucket<'a>(app: &'a App, headers: &HeaderMap, path: &str) -> Option<&'a str> {
    let first_segment = path.split('/').next().unwrap_or("");
    if app.collections.contains_key(first_segment) {
        return None;
    }
    let host = headers.get("host")?.to_str().ok()?;
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let (first, rest) = name.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    app.collections.get_key_value(first).map(|(k, _)| k.as_str())
}

fn list_buckets(app: &App, r: &S3Request, who: &Principal) -> HttpResponse {
    let mut body = format!(r#"<ListAllMyBucketsResult xmlns="{NAMESPACE}"><Owner>"#);
    element(&mut body, "ID", "zarrgate");
    element(&mut body, "DisplayName", "zarrgate");
    body.push_str("</Owner><Buckets>");
    for c in app.collections.values().filter(|c| c.read.allows(who)) {
        body.push_str("<Bucket>");
        element(&mut body, "Name", &c.bucket);
        element(&mut body, "CreationDate", &iso8601_millis(c.created));
        body.push_str("</Bucket>");
    }
    body.push_str("</Buckets></ListAllMyBucketsResult>");
    xml_response(body, &r.request_id)
}

fn encode_token(last: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("zg1:{last}"))
}

fn decode_token(token: &str) -> Result<String, S3Error> {
    let bad = || S3Error::invalid_argument("The continuation token provided is incorrect.");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    text.strip_prefix("zg1:").map(str::to_string).ok_or_else(bad)
}

/// The listing a ListObjects (V1 or V2) request asks for, and whether keys are URL-encoded.
fn list_query(r: &S3Request) -> Result<(ListQuery, bool), S3Error> {
    let v2 = r.param("list-type") == Some("2");
    let encode = match r.param("encoding-type") {
        None => false,
        Some("url") => true,
        Some(_) => return Err(S3Error::invalid_argument("Invalid Encoding Method specified in Request")),
    };
    let max_keys = match r.param("max-keys") {
        None => 1000,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| S3Error::invalid_argument("Provided max-keys not an integer or within integer range"))?
            .min(1000) as usize,
    };
    let prefix = r.param("prefix").unwrap_or("").to_string();
    let delimiter = r.param("delimiter").filter(|d| !d.is_empty()).map(str::to_string);
    let after = if v2 {
        match r.param("continuation-token") {
            Some(t) => Some(decode_token(t)?),
            None => r.param("start-after").map(str::to_string),
        }
    } else {
        r.param("marker").map(str::to_string)
    };
    Ok((ListQuery { prefix, delimiter, max_keys, after }, encode))
}

fn list_objects(bucket: &dyn Bucket, r: &S3Request) -> Result<HttpResponse, S3Error> {
    let (query, encode) = list_query(r)?;
    let page =
        bucket.list(&query).map_err(|why| S3Error::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", why))?;
    let v2 = r.param("list-type") == Some("2");
    let token = r.param("continuation-token");
    let ListQuery { prefix, delimiter, max_keys, .. } = query;
    let enc = |s: &str| if encode { url_encode(s) } else { s.to_string() };

    let mut body = format!(r#"<ListBucketResult xmlns="{NAMESPACE}">"#);
    element(&mut body, "Name", &r.bucket);
    element(&mut body, "Prefix", &enc(&prefix));
    if let Some(d) = &delimiter {
        element(&mut body, "Delimiter", &enc(d));
    }
    element(&mut body, "MaxKeys", &max_keys.to_string());
    if encode {
        element(&mut body, "EncodingType", "url");
    }
    element(&mut body, "IsTruncated", if page.truncated { "true" } else { "false" });
    if v2 {
        element(&mut body, "KeyCount", &(page.contents.len() + page.common_prefixes.len()).to_string());
        if let Some(t) = token {
            element(&mut body, "ContinuationToken", t);
        }
        if page.truncated {
            if let Some(last) = &page.last {
                element(&mut body, "NextContinuationToken", &encode_token(last));
            }
        }
        if let Some(sa) = r.param("start-after") {
            element(&mut body, "StartAfter", &enc(sa));
        }
    } else {
        element(&mut body, "Marker", &enc(r.param("marker").unwrap_or("")));
        if page.truncated && delimiter.is_some() {
            if let Some(last) = &page.last {
                element(&mut body, "NextMarker", &enc(last));
            }
        }
    }
    for (key, item) in &page.contents {
        body.push_str("<Contents>");
        element(&mut body, "Key", &enc(key));
        element(&mut body, "LastModified", &iso8601_millis(item.modified));
        element(&mut body, "ETag", &item.etag);
        element(&mut body, "Size", &item.size.to_string());
        element(&mut body, "StorageClass", "STANDARD");
        body.push_str("</Contents>");
    }
    for p in &page.common_prefixes {
        body.push_str("<CommonPrefixes>");
        element(&mut body, "Prefix", &enc(p));
        body.push_str("</CommonPrefixes>");
    }
    body.push_str("</ListBucketResult>");
    Ok(xml_response(body, &r.request_id))
}

/// The `results` bucket: each Zarr result of an operation, read-only, immutable, readable by
/// whoever may both read and compute on the collection it was computed from, as the request
/// that made it had to. It is listed one result at a time (`prefix=HASH/...`).
async fn results(
    app: &Arc<App>,
    ops: &crate::ops::Ops,
    r: &S3Request<'_>,
    who: &Principal,
) -> Result<HttpResponse, S3Error> {
    let named = if r.key.is_empty() { r.param("prefix").unwrap_or("") } else { r.key.as_str() };
    let hash = named.split('/').next().unwrap_or("");
    let (results, source) = crate::ops::http::ResultsBucket::open(ops, hash);
    if let Some(bucket) = &source {
        crate::ops::http::may_use(app, bucket, who)
            .map_err(|p| S3Error::new(StatusCode::FORBIDDEN, "AccessDenied", format!("Access Denied: {}", p.detail)))?;
    }
    let mut resp = serve(app, &results, r, who).await?;
    if let (Some(bucket), false) = (source, r.key.is_empty()) {
        // Only results of open collections may sit in shared caches.
        let scope = if crate::ops::http::is_public(app, &bucket) { "public" } else { "private" };
        let value = format!("{scope}, max-age=31536000, immutable");
        resp.headers_mut().insert("cache-control", HeaderValue::from_str(&value).expect("ascii"));
    }
    Ok(resp)
}

/// The byte range a GET asks for of an object of `size` bytes: whether it asked for one, and
/// `start..end`; an unsatisfiable range is S3's `InvalidRange`.
fn requested_range(r: &S3Request, size: u64) -> Result<(bool, u64, u64), S3Error> {
    match r.header("range").and_then(parse_range).map(|spec: RangeSpec| spec.resolve(size)) {
        None => Ok((false, 0, size)),
        Some(Resolved::Part { start, end }) => Ok((true, start, end)),
        Some(Resolved::Unsatisfiable) => Err(S3Error::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidRange",
            "The requested range is not satisfiable",
        )
        .with_header("content-range", format!("bytes */{size}"))),
    }
}

fn content_type(key: &str) -> &'static str {
    let leaf = key.rsplit('/').next().unwrap_or(key);
    if matches!(leaf, ".zarray" | ".zattrs" | ".zgroup" | ".zmetadata") {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

/// RFC 9110 preconditions: `Some(304)` when the client's copy is current, an error when a
/// precondition fails, `None` to go on.
fn preconditions(r: &S3Request, found: &Found, etag: &HeaderValue) -> Result<Option<HttpResponse>, S3Error> {
    let conditions = Conditions {
        if_match: r.header("if-match"),
        if_none_match: r.header("if-none-match"),
        if_modified_since: r.header("if-modified-since"),
        if_unmodified_since: r.header("if-unmodified-since"),
    };
    match conditions.evaluate(&found.meta.etag, found.meta.modified) {
        Verdict::Proceed => Ok(None),
        Verdict::NotModified => {
            let mut resp = response(StatusCode::NOT_MODIFIED, content_type(&r.key), Bytes::new(), &r.request_id);
            resp.headers_mut().insert("etag", etag.clone());
            resp.headers_mut().insert("last-modified", found.last_modified.clone());
            Ok(Some(resp))
        }
        Verdict::PreconditionFailed => Err(S3Error::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "At least one of the preconditions you specified did not hold.",
        )),
    }
}

/// Reads `part` of a found object. Quick reads (metadata, HEAD, byte ranges up to one
/// streaming piece) are done right here, as nginx does: a pread of the page cache costs less
/// than handing it to another thread. A range that is not in the page cache is not waited for
/// here (it would stall every connection of this thread); it goes to the blocking pool, like
/// large ranges (streamed) and transcoded chunks (decoded), a bounded number at a time, so a
/// burst cannot take all memory or starve the runtime. On the gateway's own connections a
/// range is sent zero-copy (see crate::sendfile) and holds no piece in memory, so it starts
/// right here too.
async fn read_found(
    app: &Arc<App>,
    found: &Found,
    part: Part,
    bucket: &str,
) -> Result<Result<ResponseBody, ReadOutcome>, S3Error> {
    let lane = crate::sendfile::current_lane();
    let here =
        found.quick(part, lane.is_some()).then(|| found.read(&app.sources, part, lane.clone(), Wait::CachedOnly));
    match here {
        Some(Err(ReadOutcome::NotCached)) | None => {
            if here.is_some() {
                app.metrics.add("zarrgate_reads_offloaded_total", &[("bucket", bucket)], 1);
            }
            let permit = app.reads.clone().acquire_owned().await.expect("the read semaphore is never closed");
            let (app, found) = (app.clone(), found.clone());
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                found.read(&app.sources, part, lane, Wait::Block)
            })
            .await
            .map_err(|e| S3Error::internal(format!("reading the object failed: {e}")))
        }
        Some(read) => Ok(read),
    }
}

async fn get_object(app: &Arc<App>, bucket: &dyn Bucket, r: &S3Request<'_>) -> Result<HttpResponse, S3Error> {
    let found = match bucket.lookup(&r.key) {
        Lookup::Found(found) => found,
        Lookup::Missing => return Err(S3Error::no_such_key()),
        Lookup::NoDataset(id) => {
            return Err(S3Error::new(
                StatusCode::NOT_FOUND,
                "NoSuchKey",
                format!(
                    "The specified key does not exist: bucket {} has no dataset {id:?} (datasets are named by \
                     the path of their file; list the bucket to see them).",
                    r.bucket
                ),
            ))
        }
        Lookup::Unavailable(why) => return Err(S3Error::unavailable(why)),
    };
    let etag = HeaderValue::from_str(&found.meta.etag).expect("hex etag");
    if let Some(not_modified) = preconditions(r, &found, &etag)? {
        return Ok(not_modified);
    }
    let size = found.meta.size;
    let (range, start, end) = requested_range(r, size)?;
    let part = Part { start, end, head: r.is_head() };
    let read = read_found(app, &found, part, &r.bucket).await?;
    let body = match read {
        Ok(b) => b,
        Err(ReadOutcome::Stale(why)) => {
            app.metrics.add("zarrgate_stale_sources_total", &[("bucket", &r.bucket)], 1);
            let id = found.dataset.as_deref().unwrap_or(&r.key);
            let next = bucket.source_changed(id, &why);
            return Err(S3Error::unavailable(format!(
                "The source file of dataset {id} changed since it was indexed; {next}."
            )));
        }
        Err(ReadOutcome::Unavailable(why)) => {
            tracing::warn!("{}: {why}", r.resource());
            app.metrics.add("zarrgate_unavailable_sources_total", &[("bucket", &r.bucket)], 1);
            return Err(S3Error::unavailable("A source of this object cannot be reached now; try again later."));
        }
        Err(ReadOutcome::Failed(why)) => {
            tracing::error!("{}: {why}", r.resource());
            return Err(S3Error::internal("The object could not be read or decoded; the server log has the details."));
        }
        // Only a read that does not wait gives this, and such a read is retried above.
        Err(ReadOutcome::NotCached) => return Err(S3Error::internal("The object could not be read.")),
    };
    let status = if range { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let mut resp = response(status, content_type(&r.key), Bytes::new(), &r.request_id);
    *resp.body_mut() = body;
    let h = resp.headers_mut();
    h.insert("etag", etag);
    h.insert("last-modified", found.last_modified.clone());
    h.insert("accept-ranges", HeaderValue::from_static("bytes"));
    h.insert("content-length", HeaderValue::from(end - start));
    if range {
        let cr = format!("bytes {}-{}/{}", start, end.saturating_sub(1), size);
        h.insert("content-range", HeaderValue::from_str(&cr).expect("ascii"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_tokens_round_trip_and_reject_garbage() {
        let t = encode_token("a b/ü.nc/t/0.0");
        assert_eq!(decode_token(&t).unwrap(), "a b/ü.nc/t/0.0");
        for bad in ["%%%", "bm90LW91cnM", ""] {
            assert_eq!(decode_token(bad).unwrap_err().code, "InvalidArgument", "{bad}");
        }
    }

    #[test]
    fn refusals_become_s3_errors_with_their_wait() {
        let quota = refusal_error(&Refusal::Quota(crate::auth::quota::Exceeded { what: "x".into(), retry_after: 42 }));
        assert_eq!((quota.status.as_u16(), quota.code), (503, "SlowDown"));
        assert_eq!(quota.headers, vec![("retry-after", "42".to_string())]);
        let revoked = refusal_error(&Refusal::Auth(AuthError::Unusable("revoked")));
        assert_eq!(
            (revoked.code, revoked.message.as_str()),
            ("InvalidAccessKeyId", "The AWS Access Key Id you provided is revoked.")
        );
        let throttled =
            refusal_error(&Refusal::Auth(AuthError::Throttled { what: "address ::1".into(), retry_after: 6 }));
        assert_eq!((throttled.code, throttled.headers[0].1.as_str()), ("SlowDown", "6"));
    }
}

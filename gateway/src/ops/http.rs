//! The HTTP face of operations: `/ops/v1/{process}` GET URLs, OGC API – Processes
//! (`/processes`, `/jobs`), and immutable cached results (`/results/{hash}.{ext}`).
//!
//! Every error is an RFC 9457 problem document; nothing here answers S3 XML.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use zarrgate_core::ops::{Format, Problem, Process, Raw, Request as OpRequest};

use super::cache::{Key, Lookup};
use super::jobs::{JobRecord, Status};
use super::{exceeded_problem, ogc, unpack, unseal, Answer, Ops, Stored};
use crate::app::App;
use crate::auth::{AuthError, Principal, Refusal};
use crate::body::{HttpResponse, ResponseBody};
use crate::dates::iso8601;
use crate::store::{self, Bucket, Found, ListPage, ListQuery, Listed};

/// Largest execution request body.
const MAX_BODY: usize = 64 * 1024;

/// Paths this module answers.
pub fn is_ops_path(path: &str) -> bool {
    // `/results/HASH.EXT` is a result; `/results/HASH/KEY` is the S3 bucket of Zarr results.
    let result_file = path.strip_prefix("/results/").is_some_and(|rest| !rest.contains('/'));
    path == super::ogc::ROOT
        || path.starts_with("/ogc/")
        || path.starts_with("/ops/")
        || path == "/processes"
        || path.starts_with("/processes/")
        || path == "/jobs"
        || path.starts_with("/jobs/")
        || result_file
}

pub fn respond(status: u16, content_type: &str, body: Bytes) -> HttpResponse {
    let mut r = Response::new(ResponseBody::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_str(content_type).expect("valid content type"));
    h.insert("server", HeaderValue::from_static("zarrgate"));
    r
}

pub fn json_response(status: u16, doc: &Value) -> HttpResponse {
    respond(status, "application/json", Bytes::from(serde_json::to_vec_pretty(doc).expect("JSON values serialize")))
}

pub fn problem_response(p: &Problem) -> HttpResponse {
    let mut r = respond(
        p.status,
        "application/problem+json",
        Bytes::from(serde_json::to_vec_pretty(&p.to_json()).expect("JSON values serialize")),
    );
    if let Some(wait) = p.retry_after {
        set(&mut r, "retry-after", &wait.to_string());
    } else if p.status == 429 || p.status == 503 {
        r.headers_mut().insert("retry-after", HeaderValue::from_static("5"));
    }
    if p.status == 401 {
        r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"zarrgate\""));
    }
    r
}

/// The problem document of a request the router did not admit.
pub fn refusal_problem(refusal: &Refusal) -> Problem {
    match refusal {
        Refusal::Quota(e) => exceeded_problem(e),
        Refusal::Auth(e @ AuthError::Throttled { retry_after, .. }) => Problem {
            retry_after: Some(u32::try_from(*retry_after).unwrap_or(u32::MAX)),
            ..Problem::new(429, "throttled", "Too many failed authentications", e.to_string())
        },
        Refusal::Auth(e @ AuthError::Unavailable { retry_after }) => Problem {
            retry_after: Some(u32::try_from(*retry_after).unwrap_or(u32::MAX)),
            ..Problem::new(503, "unavailable", "Keys cannot be checked now", e.to_string())
        },
        Refusal::Auth(e @ (AuthError::MalformedHeader(_) | AuthError::MalformedQuery(_) | AuthError::Unsupported)) => {
            Problem::new(400, "unauthorized", "Not authorized", e.to_string())
        }
        Refusal::Auth(e @ AuthError::InvalidToken(_)) => {
            Problem::new(401, "invalid-token", "The bearer token is not accepted", e.to_string())
        }
        Refusal::Auth(e @ AuthError::ExpiredToken) => {
            Problem::new(400, "expired-token", "The session has expired", e.to_string())
        }
        Refusal::Auth(e) => Problem::new(403, "unauthorized", "Not authorized", e.to_string()),
    }
}

fn set(r: &mut HttpResponse, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// Answers one admitted operations request (the router authenticated it and accounts for it).
pub async fn handle(
    app: Arc<App>,
    req: Request<hyper::body::Incoming>,
    who: Principal,
    query: Vec<(String, String)>,
) -> HttpResponse {
    let started = std::time::Instant::now();
    let mut resp = match route(&app, req, &who, query).await {
        Ok(r) => r,
        Err(p) => problem_response(&p),
    };
    // The server's own time for this answer (a cache hit is a lookup and a copy).
    set(&mut resp, "server-timing", &format!("total;dur={:.3}", started.elapsed().as_secs_f64() * 1000.0));
    resp
}

fn ops_of(app: &App) -> Result<&Arc<Ops>, Problem> {
    app.ops.as_ref().ok_or_else(|| Problem::not_found("operations are not enabled on this gateway"))
}

/// An operations request by path: the menu (`/processes`), execution (`POST
/// /processes/ID/execution`, `GET /ops/v1/ID`), jobs and results. Each handler parses, then
/// runs the pipeline (`execute`), then shapes the answer.
async fn route(
    app: &Arc<App>,
    req: Request<hyper::body::Incoming>,
    who: &Principal,
    query: Vec<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let ops = ops_of(app)?.clone();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let mut parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // The OGC API root: `/ogc/processes` is `/processes`, and so on.
    let under_root = parts.first() == Some(&"ogc");
    if under_root {
        parts.remove(0);
    }
    let prefer_async =
        req.headers().get("prefer").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("respond-async"));
    let get = method == Method::GET || method == Method::HEAD;
    match (&method, parts.as_slice()) {
        (_, [] | [""]) if get && under_root => Ok(json_response(200, &ogc::landing(&app.base_url(req.headers())))),
        (_, ["conformance"]) if get && under_root => Ok(json_response(200, &ogc::conformance())),
        (_, ["api"]) if get && under_root => {
            let doc = ogc::openapi(&app.base_url(req.headers()));
            Ok(respond(200, ogc::OPENAPI_TYPE, Bytes::from(serde_json::to_vec_pretty(&doc).expect("JSON serializes"))))
        }
        (&Method::GET, ["processes"]) => Ok(json_response(200, &process_list())),
        (&Method::GET, ["processes", id]) => Ok(json_response(200, &describe(process(id)?))),
        (&Method::POST, ["processes", id, "execution"]) => {
            let base = app.base_url(req.headers());
            let (request, inputs, document) = parse_post(id, req).await?;
            let resp = execute(app, &ops, who, request, inputs, prefer_async, 201, None).await?;
            Ok(if document { results_document(resp, &base) } else { resp })
        }
        (&Method::GET, ["ops", "v1", id]) => {
            let (wait, query) = take_wait(query)?;
            let (request, inputs) = parse_get(id, query)?;
            execute(app, &ops, who, request, inputs, prefer_async, 202, wait).await
        }
        (&Method::GET, ["jobs"]) => {
            let jobs: Vec<Value> = ops.jobs.list().iter().filter(|j| visible(app, j, who)).map(status_doc).collect();
            Ok(json_response(200, &json!({"jobs": jobs, "links": []})))
        }
        (&Method::GET, ["jobs", id]) => Ok(json_response(200, &status_doc(&own_job(app, &ops, id, who)?))),
        (&Method::DELETE, ["jobs", id]) => {
            own_job(app, &ops, id, who)?;
            let job = ops.dismiss(id).await.ok_or_else(|| Problem::not_found(format!("there is no job {id}")))?;
            Ok(json_response(200, &status_doc(&job)))
        }
        (&Method::GET, ["jobs", id, "results"]) => match take_wait(query)?.0 {
            Some(wait) => wait_for_job(app, &ops, who, id, wait).await,
            None => {
                if let Some(job) = ops.job(id) {
                    ops.pull_result_of(&job).await;
                }
                job_results(app, &ops, id, who)
            }
        },
        (&Method::GET | &Method::HEAD, ["results", name]) => {
            if let Some(key) = name.split_once('.').and_then(|(hash, _)| Key::from_hex(hash)) {
                ops.pull_shared(&key).await;
            }
            let if_none_match = req.headers().get("if-none-match").and_then(|v| v.to_str().ok());
            result_file(app, &ops, name, who, if_none_match, method == Method::HEAD)
        }
        (_, ["processes" | "jobs" | "ops" | "results" | "conformance" | "api", ..] | [] | [""])
            if method != Method::GET =>
        {
            Err(Problem::new(
                405,
                "method-not-allowed",
                "Method not allowed",
                format!("{method} is not allowed on {path}"),
            ))
        }
        _ => Err(Problem::not_found(format!("there is nothing at {path}"))),
    }
}

/// `POST /processes/ID/execution` with `{"inputs": {...}}`: the request, its inputs as sent,
/// and whether a results document (`"response": "document"`) was asked for rather than the
/// raw result.
async fn parse_post(id: &str, req: Request<hyper::body::Incoming>) -> Result<(OpRequest, Value, bool), Problem> {
    let process = process(id)?;
    let body = read_body(req).await?;
    let doc: Value =
        serde_json::from_slice(&body).map_err(|e| Problem::invalid("inputs", format!("the body is not JSON: {e}")))?;
    let inputs = doc
        .get("inputs")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| Problem::invalid("inputs", "the body is {\"inputs\": {...}}"))?;
    let document = match doc.get("response").and_then(Value::as_str) {
        None | Some("raw") => false,
        Some("document") => true,
        Some(other) => return Err(Problem::not_one_of("response", other, &["raw", "document"])),
    };
    let request = OpRequest::parse(process, inputs.iter().map(|(k, v)| (k.as_str(), Raw::Json(v))))?;
    Ok((request, Value::Object(inputs), document))
}

/// A raw synchronous result turned into an OGC results document naming where the result is
/// (`{"result": {"href": …, "type": …}}`); a job's status document passes unchanged.
fn results_document(resp: HttpResponse, base: &str) -> HttpResponse {
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let (Some(location), content_type) = (header("content-location"), header("content-type")) else { return resp };
    let mut r = json_response(
        200,
        &json!({"result": {"href": format!("{base}{location}"), "type": content_type.unwrap_or_default()}}),
    );
    for name in ["x-zarrgate-cache", "x-zarrgate-compute-ms"] {
        if let Some(v) = resp.headers().get(name) {
            r.headers_mut().insert(name, v.clone());
        }
    }
    r
}

/// `GET /ops/v1/ID?...`: the request and its arguments. The signing parameters of a presigned
/// URL are for authentication, not arguments.
fn parse_get(id: &str, query: Vec<(String, String)>) -> Result<(OpRequest, Value), Problem> {
    let process = process(id)?;
    // An empty argument is an absent one, as HTML forms send the fields left blank.
    let query: Vec<(String, String)> =
        query.into_iter().filter(|(k, v)| !k.starts_with("X-Amz-") && !v.trim().is_empty()).collect();
    let request = OpRequest::parse(process, query.iter().map(|(k, v)| (k.as_str(), Raw::Text(v))))?;
    let inputs: Map<String, Value> = query.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    Ok((request, Value::Object(inputs)))
}

/// `GET /jobs/ID/results`: the result of a job of the caller's that succeeded.
fn job_results(app: &App, ops: &Ops, id: &str, who: &Principal) -> Result<HttpResponse, Problem> {
    let job = own_job(app, ops, id, who)?;
    match job.status {
        Status::Successful => {
            let key = job
                .result_key
                .as_deref()
                .and_then(Key::from_hex)
                .ok_or_else(|| Problem::internal("the job has no result key"))?;
            let (stored, bytes) = cached(ops, app, &key, who)?;
            let public = is_public(app, &stored.bucket);
            Ok(revalidated(result_response(ops, &key, bytes, stored.format, true, 0, public), public))
        }
        Status::Failed => Ok(problem_response(&job_error(&job))),
        status => Err(Problem::new(
            404,
            "result-not-ready",
            "Result not ready",
            format!("job {id} is {}", status_word(status)),
        )),
    }
}

/// `GET|HEAD /results/HASH.EXT`: a cached result, immutable, revalidated by its ETag.
fn result_file(
    app: &App,
    ops: &Ops,
    name: &str,
    who: &Principal,
    if_none_match: Option<&str>,
    head: bool,
) -> Result<HttpResponse, Problem> {
    let (hash, ext) = name.split_once('.').ok_or_else(|| Problem::not_found("results are /results/HASH.EXT"))?;
    let key = Key::from_hex(hash).ok_or_else(|| Problem::not_found("no such result"))?;
    let (stored, bytes) = cached(ops, app, &key, who)?;
    if stored.format.ext() != ext {
        return Err(Problem::not_found(format!(
            "no such result (this one is /results/{hash}.{})",
            stored.format.ext()
        )));
    }
    let format = stored.format;
    let etag = format!("\"{}\"", ops.cache.etag(&key).unwrap_or_else(|| key.hex()));
    if if_none_match.is_some_and(|t| t.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        let mut r = respond(304, format.content_type(), Bytes::new());
        set(&mut r, "etag", &etag);
        return Ok(r);
    }
    let mut r = result_response(ops, &key, bytes, format, true, 0, is_public(app, &stored.bucket));
    if head {
        *r.body_mut() = ResponseBody::empty();
    }
    Ok(r)
}

async fn read_body(req: Request<hyper::body::Incoming>) -> Result<Bytes, Problem> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    limited.collect().await.map(|c| c.to_bytes()).map_err(|_| {
        Problem::new(413, "too-large", "Request too large", format!("execution requests are at most {MAX_BODY} bytes"))
    })
}

fn process(id: &str) -> Result<Process, Problem> {
    Process::parse(id).ok_or_else(|| Problem {
        allowed: vec!["subset".into(), "average".into()],
        ..Problem::not_found(format!("there is no process {id:?}"))
    })
}

/// Whether `who` may run operations on, and read what they give of, the collection `bucket`:
/// an operation reads the collection's data, so it needs the collection's read policy as well
/// as its compute policy (which defaults to the read policy). Results, jobs and every other
/// thing derived from the collection are behind the same check. An anonymous caller gets 401
/// (a key would help), a key 403.
pub fn may_use(app: &App, bucket: &str, who: &Principal) -> Result<(), Problem> {
    let collection = app.collections.get(bucket);
    if collection.is_some_and(|c| c.read.allows(who) && c.compute.allows(who)) {
        return Ok(());
    }
    Err(match who {
        Principal::Anonymous { .. } => Problem::new(
            401,
            "unauthorized",
            "Not authorized",
            "operations on this collection need an access key (Authorization: Bearer ACCESS_KEY:SECRET, or a signed request)",
        ),
        Principal::Key(_) => Problem::new(
            403,
            "forbidden",
            "Forbidden",
            "this key may not read or run operations on this collection",
        ),
    })
}

/// Longest `wait` a URL may ask for.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// The `wait=SECONDS` argument (`30`, `90s`, `10m`), taken out of the operation's arguments.
#[allow(clippy::type_complexity)]
fn take_wait(query: Vec<(String, String)>) -> Result<(Option<Duration>, Vec<(String, String)>), Problem> {
    let mut wait = None;
    let mut rest = Vec::with_capacity(query.len());
    for (k, v) in query {
        if k == "wait" {
            let secs = crate::config::parse_seconds(&v)
                .ok_or_else(|| Problem::invalid("wait", format!("{v:?} is not a duration (seconds, or 90s, 10m)")))?;
            wait = Some(Duration::from_secs(secs).min(MAX_WAIT));
        } else {
            rest.push((k, v));
        }
    }
    Ok((wait, rest))
}

/// Waits for a job of the caller's, for at most one answer's time (`ops.sync_wait`, which a
/// connection outlives), and answers with its result once it has one. A job still running
/// when `wait` lasts longer answers 303 to `/jobs/ID/results?wait=REST`, which HTTP clients
/// follow: a URL with `wait` in a notebook yields the data, not a job document.
async fn wait_for_job(
    app: &Arc<App>,
    ops: &Arc<Ops>,
    who: &Principal,
    id: &str,
    wait: Duration,
) -> Result<HttpResponse, Problem> {
    let slice = wait.min(ops.config.sync_wait);
    let deadline = tokio::time::Instant::now() + slice;
    loop {
        let job = own_job(app, ops, id, who)?;
        if !matches!(job.status, Status::Accepted | Status::Running) {
            ops.pull_result_of(&job).await;
            return job_results(app, ops, id, who);
        }
        if tokio::time::Instant::now() >= deadline {
            let rest = wait.saturating_sub(slice).as_secs();
            let mut r = json_response(if rest > 0 { 303 } else { 202 }, &status_doc(&job));
            if rest > 0 {
                set(&mut r, "location", &format!("/jobs/{id}/results?wait={rest}"));
            } else {
                set(&mut r, "location", &format!("/jobs/{id}"));
            }
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a request and shapes the answer: the result, or the status of the job it became (or,
/// with `wait`, the job's result once it is done).
#[allow(clippy::too_many_arguments)]
async fn execute(
    app: &Arc<App>,
    ops: &Arc<Ops>,
    who: &Principal,
    request: OpRequest,
    inputs: Value,
    prefer_async: bool,
    job_status: u16,
    wait: Option<Duration>,
) -> Result<HttpResponse, Problem> {
    let collection = app.collections.get(&request.bucket).ok_or_else(|| Problem {
        argument: Some("dataset".into()),
        ..Problem::not_found(format!("there is no collection {:?}", request.bucket))
    })?;
    may_use(app, &collection.bucket, who)?;
    match ops.request(&app.state, who, request, inputs, prefer_async).await? {
        Answer::Result { key, bytes, hit, format, compute_ms } => {
            app.auth.record_compute(who, compute_ms, hit);
            let public = is_public(app, &collection.bucket);
            Ok(revalidated(result_response(ops, &key, bytes, format, hit, compute_ms, public), public))
        }
        Answer::Job(job) if wait.is_some() => wait_for_job(app, ops, who, &job.id, wait.unwrap_or_default()).await,
        Answer::Job(job) => {
            let mut r = json_response(job_status, &status_doc(&job));
            set(&mut r, "location", &format!("/jobs/{}", job.id));
            set(&mut r, "preference-applied", "respond-async");
            Ok(r)
        }
    }
}

/// Whether anyone may read a collection and compute on it (its results may then sit in
/// shared caches).
pub fn is_public(app: &App, bucket: &str) -> bool {
    app.collections.get(bucket).is_some_and(|c| c.read.is_public() && c.compute.is_public())
}

/// A cached result, if `who` may use the collection it came from; a clear 404 when it was
/// evicted.
fn cached(ops: &Ops, app: &App, key: &Key, who: &Principal) -> Result<(Stored, Bytes), Problem> {
    let blob = match ops.cache.get(key) {
        Lookup::Hit(blob, _) => blob,
        Lookup::Corrupt => {
            app.metrics.add("zarrgate_ops_cache_corrupt_total", &[], 1);
            return Err(Problem::not_found(
                "this result failed its integrity check and was removed; request it again to recompute it",
            ));
        }
        Lookup::Miss => {
            return Err(Problem::not_found(
                "no such result (it may have been evicted; request it again to recompute it)",
            ))
        }
    };
    let (stored, bytes) = unseal(&blob).ok_or_else(|| Problem::internal("a cached result has no valid header"))?;
    may_use(app, &stored.bucket, who)?;
    Ok((stored, bytes))
}

/// An answer at a URL that names a request, not a result (`/ops/v1/...`, `/jobs/ID/results`):
/// the same URL gives another result once a source changes, so caches must ask again each time
/// (the ETag is the result's hash). Only `/results/HASH.EXT` is immutable.
fn revalidated(mut r: HttpResponse, public: bool) -> HttpResponse {
    let scope = if public { "public" } else { "private" };
    set(&mut r, "cache-control", &format!("{scope}, no-cache"));
    r
}

/// A result answer. Zarr results are a document naming their store in the `results` bucket.
fn result_response(
    ops: &Ops,
    key: &Key,
    bytes: Bytes,
    format: Format,
    hit: bool,
    compute_ms: u64,
    public: bool,
) -> HttpResponse {
    let hash = key.hex();
    let (body, content_type) = match format {
        Format::Zarr => {
            let doc = json!({
                "zarr": format!("s3://results/{hash}"),
                "bucket": "results",
                "prefix": format!("{hash}/"),
                "hint": "xr.open_zarr(\"s3://results/HASH\", storage_options={\"anon\": True, \"client_kwargs\": {\"endpoint_url\": GATEWAY}})",
            });
            (Bytes::from(serde_json::to_vec_pretty(&doc).expect("JSON values serialize")), "application/json")
        }
        _ => (bytes, format.content_type()),
    };
    let mut r = respond(200, content_type, body);
    let etag = format!("\"{}\"", ops.cache.etag(key).unwrap_or_else(|| hash.clone()));
    set(&mut r, "etag", &etag);
    set(&mut r, "content-location", &format!("/results/{hash}.{}", format.ext()));
    let scope = if public { "public" } else { "private" };
    set(&mut r, "cache-control", &format!("{scope}, max-age=31536000, immutable"));
    set(&mut r, "x-zarrgate-cache", if hit { "hit" } else { "miss" });
    set(&mut r, "x-zarrgate-compute-ms", &compute_ms.to_string());
    if format == Format::Nc {
        set(&mut r, "content-disposition", &format!("inline; filename=\"{hash}.nc\""));
    }
    r
}

/// A file of a packed Zarr result: its key, and where its bytes start and end in the blob.
type FileSpan = (String, usize, usize);

/// The files of a Zarr result, for the S3 layer's `results` bucket: `(bucket it came from,
/// blob, [(key, start, end)])`.
fn zarr_files(ops: &Ops, hash: &str) -> Option<(String, Bytes, Vec<FileSpan>)> {
    let k = Key::from_hex(hash)?;
    let Lookup::Hit(blob, _) = ops.cache.get(&k) else { return None };
    let (stored, bytes) = unseal(&blob)?;
    if stored.format != Format::Zarr {
        return None;
    }
    let files = unpack(&bytes)?;
    Some((stored.bucket, bytes, files))
}

/// Results carry no time of their own: they are immutable and content-addressed.
const RESULT_TIME: std::time::SystemTime = std::time::SystemTime::UNIX_EPOCH;

fn result_etag(bytes: &[u8]) -> String {
    format!("\"{}\"", &blake3::hash(bytes).to_hex()[..32])
}

/// The `results` bucket as one request sees it: the files of the one Zarr result its key or
/// prefix names (`HASH/...`), read from the cache once. It shows nothing of other results, so
/// nobody learns their hashes.
pub struct ResultsBucket {
    hash: String,
    result: Option<(Bytes, Vec<FileSpan>)>,
}

impl ResultsBucket {
    /// Opens the result `hash` names, with the collection it was computed from (who may read
    /// and compute on that may read the result); `None` when there is no such Zarr result.
    pub fn open(ops: &Ops, hash: &str) -> (Self, Option<String>) {
        let (source, result) = match zarr_files(ops, hash) {
            Some((bucket, blob, files)) => (Some(bucket), Some((blob, files))),
            None => (None, None),
        };
        (ResultsBucket { hash: hash.to_string(), result }, source)
    }

    fn files(&self, hash: &str) -> Option<&(Bytes, Vec<FileSpan>)> {
        self.result.as_ref().filter(|_| hash == self.hash)
    }
}

impl Bucket for ResultsBucket {
    fn lookup(&self, key: &str) -> store::Lookup {
        let (hash, inner) = key.split_once('/').unwrap_or((key, ""));
        let Some((blob, files)) = self.files(hash) else { return store::Lookup::Missing };
        match files.iter().find(|(name, _, _)| name == inner) {
            Some(&(_, start, end)) => {
                let bytes = blob.slice(start..end);
                let etag = result_etag(&bytes);
                store::Lookup::Found(Found::in_memory(bytes, etag, RESULT_TIME))
            }
            None => store::Lookup::Missing,
        }
    }

    fn list(&self, query: &ListQuery) -> Result<ListPage<Listed>, String> {
        let hash = query.prefix.split('/').next().unwrap_or("");
        let files: std::collections::BTreeMap<String, Listed> = match self.files(hash) {
            Some((blob, files)) => files
                .iter()
                .map(|(name, s, e)| {
                    let listed =
                        Listed { size: (e - s) as u64, etag: result_etag(&blob[*s..*e]), modified: RESULT_TIME };
                    (format!("{hash}/{name}"), listed)
                })
                .collect(),
            None => Default::default(),
        };
        Ok(store::list::list(&files, query))
    }
}

/// A key sees its own jobs; an anonymous caller the anonymous jobs of its address. Either only
/// while it may still use the job's collection (policies change with the configuration).
fn visible(app: &App, job: &JobRecord, who: &Principal) -> bool {
    job.owner == who.owner_name() && job.bucket().is_some_and(|b| may_use(app, b, who).is_ok())
}

/// A job, if it exists and `who` may see it (an unknown job and another's look the same).
fn own_job(app: &App, ops: &Ops, id: &str, who: &Principal) -> Result<JobRecord, Problem> {
    ops.job(id).filter(|j| visible(app, j, who)).ok_or_else(|| Problem::not_found(format!("there is no job {id}")))
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Accepted => "accepted",
        Status::Running => "running",
        Status::Successful => "successful",
        Status::Failed => "failed",
        Status::Dismissed => "dismissed",
    }
}

fn job_error(job: &JobRecord) -> Problem {
    let e = job.error.clone().unwrap_or_default();
    Problem::new(
        e.get("status").and_then(Value::as_u64).unwrap_or(500) as u16,
        "job-failed",
        "The job failed",
        e.get("detail").and_then(Value::as_str).unwrap_or("the job failed").to_string(),
    )
}

/// An OGC `statusInfo` document.
fn status_doc(job: &JobRecord) -> Value {
    let mut links = vec![json!({"href": format!("/jobs/{}", job.id), "rel": "self", "type": "application/json"})];
    if job.status == Status::Successful {
        links.push(json!({"href": format!("/jobs/{}/results", job.id), "rel": "http://www.opengis.net/def/rel/ogc/1.0/results"}));
        if let Some(k) = &job.result_key {
            links.push(json!({"href": format!("/results/{k}.{}", job.format), "rel": "alternate"}));
        }
    }
    let mut doc = json!({
        "jobID": job.id,
        "processID": job.process,
        "type": "process",
        "status": status_word(job.status),
        "progress": job.progress,
        "created": iso8601(job.created),
        "updated": iso8601(job.updated),
        "links": links,
    });
    if job.status == Status::Failed {
        doc["message"] = json!(job_error(job).detail);
        doc["error"] = job.error.clone().unwrap_or_default();
    }
    doc
}

/// One argument of the menu.
fn input(title: &str, description: &str, schema: Value, required: bool) -> Value {
    json!({"title": title, "description": description, "schema": schema, "minOccurs": u8::from(required), "maxOccurs": 1})
}

fn inputs(p: Process) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "dataset".into(),
        input("Dataset", "BUCKET/ID of a served dataset, or s3://BUCKET/ID", json!({"type": "string"}), true),
    );
    m.insert(
        "var".into(),
        input("Variables", "data variable name(s), separated by commas", json!({"type": "string"}), true),
    );
    m.insert("time".into(), input("Time range", "START/END or one date, inclusive ISO 8601, either end may be empty; partial dates expand (a single date is the whole period it names); read in the dataset's calendar", json!({"type": "string", "pattern": "^[^/]*(/[^/]*)?$"}), false));
    m.insert(
        "area".into(),
        input(
            "Area",
            "WEST,SOUTH,EAST,NORTH in degrees; longitude west to east modulo 360",
            json!({"type": "string"}),
            false,
        ),
    );
    m.insert(
        "level".into(),
        input("Level", "LOW/HIGH (inclusive) or exact values separated by commas", json!({"type": "string"}), false),
    );
    m.insert(
        "isel".into(),
        input(
            "Index ranges",
            "DIM=START:STOP[,DIM=START:STOP], 0-based, STOP exclusive, negatives from the end",
            json!({"type": "string"}),
            false,
        ),
    );
    if p == Process::Average {
        m.insert("dims".into(), input("Dimensions", "axes to average over, separated by commas", json!({"type": "array", "items": {"type": "string", "enum": ["time", "level", "latitude", "longitude", "realization"]}}), false));
        m.insert(
            "weights".into(),
            input(
                "Weights",
                "none, cos(latitude), or cell areas from cell_measures",
                json!({"type": "string", "enum": ["none", "coslat", "area"], "default": "none"}),
                false,
            ),
        );
        m.insert(
            "freq".into(),
            input(
                "Resampling",
                "average time per calendar period",
                json!({"type": "string", "enum": ["day", "month", "year"]}),
                false,
            ),
        );
    }
    m.insert(
        "format".into(),
        input(
            "Format",
            "output format; json and csv hold at most one dimension",
            json!({"type": "string", "enum": Format::NAMES, "default": "nc"}),
            false,
        ),
    );
    m
}

fn summary(p: Process) -> Value {
    let (title, description) = match p {
        Process::Subset => ("Subset", "Select by time, area, level and index; values, dtypes and encodings are kept."),
        Process::Average => ("Average", "Weighted mean over axes, with calendar-aware time resampling; NaN and fill values skipped, float64 accumulation."),
    };
    json!({
        "id": p.id(),
        "title": title,
        "description": description,
        "version": "1.0.0",
        "jobControlOptions": ["sync-execute", "async-execute", "dismiss"],
        "outputTransmission": ["value", "reference"],
        "links": [{"href": format!("/processes/{}", p.id()), "rel": "self", "type": "application/json"},
                  {"href": format!("/processes/{}/execution", p.id()), "rel": "http://www.opengis.net/def/rel/ogc/1.0/execute"}],
    })
}

fn process_list() -> Value {
    json!({"processes": Process::ALL.iter().map(|p| summary(*p)).collect::<Vec<_>>(), "links": [{"href": "/processes", "rel": "self"}]})
}

fn describe(p: Process) -> Value {
    let mut doc = summary(p);
    doc["inputs"] = Value::Object(inputs(p));
    doc["outputs"] = json!({"result": {"title": "Result", "schema": {"oneOf": [
        {"type": "string", "contentMediaType": "application/x-netcdf"},
        {"type": "string", "contentMediaType": "text/csv"},
        {"type": "object", "contentMediaType": "application/json"}]}}});
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_menu_lists_every_argument_with_allowed_values() {
        let avg = describe(Process::Average);
        for arg in ["dataset", "var", "time", "area", "level", "isel", "dims", "weights", "freq", "format"] {
            assert!(avg["inputs"].get(arg).is_some(), "{arg}");
        }
        assert_eq!(avg["inputs"]["weights"]["schema"]["enum"], json!(["none", "coslat", "area"]));
        assert!(describe(Process::Subset)["inputs"].get("weights").is_none());
    }

    #[test]
    fn ops_paths() {
        assert!(
            is_ops_path("/ops/v1/average")
                && is_ops_path("/processes")
                && is_ops_path("/jobs/x")
                && is_ops_path("/results/a.nc")
        );
        assert!(!is_ops_path("/bucket/processes") && !is_ops_path("/opsbucket/x"));
        assert!(!is_ops_path("/results/abc/.zmetadata") && !is_ops_path("/results"));
    }
}

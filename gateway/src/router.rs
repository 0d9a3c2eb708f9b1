//! One entry for every request: health and readiness, metrics, operations (OGC API and
//! `/ops/v1`), pages and STAC, STS (`POST /` with a form) and S3.
//!
//! In order, for every request but the health probes:
//! 1. the client's address, from the peer or, behind a trusted proxy, the one it names;
//! 2. admission ([`crate::auth::Auth::admit`]): credentials and quotas. Nothing is served, and
//!    nothing about a bucket or key is told, before it;
//! 3. the handler of the interface the path belongs to;
//! 4. accounting, once: usage per principal (and the daily quota counters), and the request
//!    counters per bucket.
//!
//! A refusal is answered in the shape of the interface the path belongs to: an S3 XML error,
//! or an RFC 9457 problem for operations.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Body as _;
use hyper::{Method, Request, StatusCode};

use crate::app::App;
use crate::auth::{Principal, RequestAuth};
use crate::body::HttpResponse;
use crate::ops::http as ops_http;
use crate::s3;
use crate::util::{decode_component, parse_query};

/// The interface a path belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Face {
    S3,
    Ops,
    /// Pages, STAC and Kerchunk downloads ([`crate::web`]).
    Web,
}

/// Answers one request from `peer`.
pub async fn handle(app: Arc<App>, req: Request<hyper::body::Incoming>, peer: IpAddr) -> HttpResponse {
    let request_id = app.request_id();
    let text =
        |status, body: &'static [u8]| s3::text_response(status, "text/plain", Bytes::from_static(body), &request_id);
    // Probes carry no credentials and are never limited (a kubelet must always reach them),
    // and are not logged.
    match req.uri().path() {
        "/healthz" => return text(StatusCode::OK, b"ok\n"),
        "/readyz" if app.shutting_down.load(Ordering::Relaxed) => {
            return text(StatusCode::SERVICE_UNAVAILABLE, b"shutting down\n")
        }
        "/readyz" if !app.auth.ready() => {
            return text(StatusCode::SERVICE_UNAVAILABLE, b"the key database is unreachable\n")
        }
        "/readyz" if !app.ops.as_ref().is_none_or(|o| o.store_reachable()) => {
            return text(StatusCode::SERVICE_UNAVAILABLE, b"the shared object store is unreachable\n")
        }
        "/readyz" if app.collections.values().any(|c| !c.catalog_readable()) => {
            return text(StatusCode::SERVICE_UNAVAILABLE, b"a catalog cannot be read\n")
        }
        "/readyz" => return text(StatusCode::OK, b"ready\n"),
        _ => {}
    }
    let ip = app.proxies.client(peer, req.headers());
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    // What the access log needs of the request, taken only when there is one.
    let logged = app.access_log.as_ref().map(|_| Logged {
        started: std::time::Instant::now(),
        time: std::time::SystemTime::now(),
        method: req.method().to_string(),
        target: req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |p| p.to_string()),
        referer: header("referer"),
        user_agent: header("user-agent"),
    });
    // CORS concerns only requests from pages, which carry an Origin.
    let origin = header("origin");
    let cors = origin.as_ref().and_then(|_| cors_of(&app, &req));
    let preflight = match (&origin, header("access-control-request-method")) {
        (Some(origin), Some(asked)) if req.method() == Method::OPTIONS => {
            Some(preflight(cors, origin, &asked, header("access-control-request-headers"), &request_id))
        }
        _ => None,
    };
    let (mut resp, who) = match preflight {
        // A preflight carries no credentials and reads nothing: it is not admitted or limited.
        Some(resp) => (resp, Principal::Anonymous { ip }),
        None => answer(app.clone(), req, ip, &request_id).await,
    };
    if let (Some(origin), Some(cors)) = (&origin, cors) {
        cors.annotate(origin, resp.headers_mut());
    }
    // Every answer names its request (S3 answers already do; operations' answers too now).
    if !resp.headers().contains_key("x-amz-request-id") {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("x-amz-request-id", v);
        }
    }
    if let (Some(log), Some(l)) = (&app.access_log, &logged) {
        let head = l.method == "HEAD";
        let cache = resp.headers().get("x-zarrgate-cache").and_then(|v| v.to_str().ok()).map(str::to_string);
        log.write(&crate::access_log::Entry {
            time: l.time,
            client: ip,
            principal: match &who {
                Principal::Key(k) => Some(k.access_key.as_str()),
                Principal::Anonymous { .. } => None,
            },
            method: &l.method,
            target: &l.target,
            status: resp.status().as_u16(),
            bytes: if head { 0 } else { resp.body().size_hint().exact().unwrap_or(0) },
            duration: l.started.elapsed(),
            request_id: &request_id,
            cache: cache.as_deref(),
            referer: l.referer.as_deref(),
            user_agent: l.user_agent.as_deref(),
        });
    }
    resp
}

/// The request line and headers of an access log line.
struct Logged {
    started: std::time::Instant,
    time: std::time::SystemTime,
    method: String,
    target: String,
    referer: Option<String>,
    user_agent: Option<String>,
}

/// The CORS rules of the collection a request reads: its bucket's, or for an operation the
/// bucket of its `dataset` argument.
fn cors_of<'a>(app: &'a App, req: &Request<hyper::body::Incoming>) -> Option<&'a crate::cors::Cors> {
    let path = req.uri().path();
    let bucket = if ops_http::is_ops_path(path) {
        parse_query(req.uri().query())?
            .into_iter()
            .find(|(k, _)| k == "dataset")
            .and_then(|(_, v)| v.split('/').next().map(str::to_string))?
    } else {
        s3::bucket_of(app, path, req.headers())
    };
    app.collections.get(&bucket).map(|c| &c.cors)
}

/// The answer to a CORS preflight: 204 with what the page may do, or 403.
fn preflight(
    cors: Option<&crate::cors::Cors>,
    origin: &str,
    method: &str,
    headers: Option<String>,
    request_id: &str,
) -> HttpResponse {
    match cors.and_then(|c| c.preflight(origin, method, headers.as_deref())) {
        Some(allowed) => {
            let mut resp = s3::text_response(StatusCode::NO_CONTENT, "text/plain", Bytes::new(), request_id);
            resp.headers_mut().extend(allowed);
            resp
        }
        None => s3::text_response(
            StatusCode::FORBIDDEN,
            "text/plain",
            Bytes::from_static(b"CORSResponse: This CORS request is not allowed.\n"),
            request_id,
        ),
    }
}

/// The answer to a request, and who it was answered for.
async fn answer(
    app: Arc<App>,
    req: Request<hyper::body::Incoming>,
    ip: IpAddr,
    request_id: &str,
) -> (HttpResponse, Principal) {
    let request_id = request_id.to_string();
    let raw_path = req.uri().path().to_string();
    let face = if ops_http::is_ops_path(&raw_path) {
        Face::Ops
    } else if crate::web::is_web_path(&raw_path) {
        Face::Web
    } else {
        Face::S3
    };
    let head = req.method() == Method::HEAD;
    let label = |path: &str| match face {
        Face::Ops => "ops".to_string(),
        Face::Web => "web".to_string(),
        Face::S3 => s3::bucket_of(&app, path, req.headers()),
    };

    let parsed = decode_component(&raw_path, false).zip(parse_query(req.uri().query()));
    let Some((path, query)) = parsed else {
        // Not even readable, but still a request of its address.
        let who = Principal::Anonymous { ip };
        let resp = match app.auth.admit_anonymous(ip) {
            Err(refusal) => refused(&app, face, &refusal, "", &raw_path, &request_id, head),
            Ok(()) => match face {
                Face::S3 => s3::error_response(&app, &s3::invalid_uri(), "", &raw_path, &request_id, head),
                Face::Ops | Face::Web => ops_http::problem_response(&zarrgate_core::ops::Problem::invalid(
                    "query",
                    "the URL is not valid UTF-8 once decoded",
                )),
            },
        };
        account(&app, &who, &resp, "", head);
        return (resp, who);
    };

    // An OpenID token may need its issuer's keys, or an introspection, before it is checked.
    app.auth.prepare(req.headers(), ip).await;
    let admitted = app.auth.admit(&RequestAuth {
        method: req.method().as_str(),
        raw_path: &raw_path,
        decoded_path: &path,
        raw_query: req.uri().query().unwrap_or(""),
        query: &query,
        headers: req.headers(),
        ip,
    });
    let who = match admitted {
        Ok(who) => who,
        Err((charged, refusal)) => {
            let bucket = label(&path);
            let resp = refused(&app, face, &refusal, &bucket, &raw_path, &request_id, head);
            account(&app, &charged, &resp, &bucket, head);
            return (resp, charged);
        }
    };

    let bucket = label(&path);
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok());
    let resp = if path == "/metrics" {
        metrics(&app, &who, &raw_path, &request_id, head)
    } else if face == Face::S3 && crate::sts::is_sts(req.method(), &path, content_type, &query) {
        crate::sts::handle(app.clone(), req, query, &request_id).await
    } else {
        match face {
            Face::Ops => ops_http::handle(app.clone(), req, who.clone(), query).await,
            Face::Web => crate::web::handle(app.clone(), req, who.clone(), path.clone(), query).await,
            Face::S3 => {
                let call = s3::S3Call { who: &who, request_id: &request_id, path: &path, query };
                s3::handle(&app, &req, call).await
            }
        }
    };
    account(&app, &who, &resp, &bucket, head);
    (resp, who)
}

/// The answer to a request that was not admitted.
fn refused(
    app: &App,
    face: Face,
    refusal: &crate::auth::Refusal,
    bucket: &str,
    resource: &str,
    request_id: &str,
    head: bool,
) -> HttpResponse {
    match face {
        Face::S3 => s3::error_response(app, &s3::refusal_error(refusal), bucket, resource, request_id, head),
        Face::Ops | Face::Web => {
            let code = match refusal {
                crate::auth::Refusal::Quota(_) => None,
                crate::auth::Refusal::Auth(_) => Some(s3::refusal_error(refusal).code),
            };
            match code {
                Some(code) => app.metrics.add("zarrgate_auth_failures_total", &[("bucket", "ops"), ("code", code)], 1),
                None => app.metrics.add("zarrgate_quota_rejections_total", &[("bucket", "ops")], 1),
            }
            ops_http::problem_response(&ops_http::refusal_problem(refusal))
        }
    }
}

/// `/metrics`, for whoever the `metrics` policy admits: the counters name every bucket, so
/// by default only keys see them once a collection is restricted.
fn metrics(app: &App, who: &Principal, resource: &str, request_id: &str, head: bool) -> HttpResponse {
    if !app.metrics_policy.allows(who) {
        let err = s3::xml::S3Error::new(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Access Denied: the metrics of this gateway need an access key (see `metrics` in docs/configuration.md).",
        );
        return s3::error_response(app, &err, "", resource, request_id, head);
    }
    let body = if head {
        Bytes::new()
    } else {
        let mut text = app.metrics.render();
        text.push_str(&crate::collection::render_metrics(app.collections.values()));
        Bytes::from(text)
    };
    s3::text_response(StatusCode::OK, "text/plain; version=0.0.4", body, request_id)
}

/// Records an answered request: usage and quota bytes for `who`, counters for `bucket`.
fn account(app: &App, who: &Principal, resp: &HttpResponse, bucket: &str, head: bool) {
    let bytes = if head { 0 } else { resp.body().size_hint().exact().unwrap_or(0) };
    let status = resp.status();
    app.auth.record(who, bytes, status.is_client_error() || status.is_server_error());
    let class = match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    app.metrics.add("zarrgate_requests_total", &[("bucket", bucket), ("class", class)], 1);
    app.metrics.add("zarrgate_response_bytes_total", &[("bucket", bucket)], bytes);
}

//! Discovery: pages that people browse and a catalogue that machines search.
//!
//! # Layout
//! - [`model`]: a dataset's groups, variables and attributes, read from its consolidated
//!   metadata, as the pages, snippets and the Kerchunk download show them.
//! - [`html`]: server-rendered pages under `/browse/` (no JavaScript, one stylesheet).
//! - [`stac`]: the STAC API under `/stac` (collections are buckets, items are datasets).
//! - This module: the routes, the read policy, and `/kerchunk/BUCKET/ID`, a dataset's Kerchunk
//!   JSON whose chunk references point at this gateway.
//!
//! None of these paths is an S3 path: their first segments are reserved bucket names, so no
//! S3 key or client meets them. Every collection keeps its read policy here: a collection a
//! caller may not read is neither listed nor searched, and its pages answer 401 or 403.

pub mod html;
pub mod model;
pub mod stac;

use std::sync::Arc;

use http_body_util::BodyExt as _;
use hyper::{Method, Request};
use serde_json::{json, Map, Value};
use zarrgate_core::ops::Problem;

use crate::app::App;
use crate::auth::Principal;
use crate::body::HttpResponse;
use crate::collection::{Collection, Entry};
use crate::dataset::{Body, Dataset};
use crate::ops::http::{json_response, problem_response};

/// Largest search body.
const MAX_BODY: usize = 64 * 1024;

/// Paths this module answers.
pub fn is_web_path(path: &str) -> bool {
    ["/browse", "/stac", "/kerchunk"].iter().any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

/// Answers a discovery request (already admitted) for `who`; `path` is decoded.
pub async fn handle(
    app: Arc<App>,
    req: Request<hyper::body::Incoming>,
    who: Principal,
    path: String,
    query: Vec<(String, String)>,
) -> HttpResponse {
    let base = app.base_url(req.headers());
    let method = req.method().clone();
    if path == "/browse" || path.starts_with("/browse/") {
        return match method {
            Method::GET | Method::HEAD => html::page(&app, &who, &base, &path["/browse".len()..], &query),
            _ => html::error_page(405, "Method not allowed", "pages are read with GET"),
        };
    }
    let result = if let Some(rest) = path.strip_prefix("/kerchunk/") {
        match method {
            Method::GET | Method::HEAD => kerchunk(&app, &who, &base, rest),
            _ => Err(not_allowed(&method, &path)),
        }
    } else {
        let rest = path.strip_prefix("/stac").unwrap_or("");
        match method {
            Method::GET | Method::HEAD => stac::get(&app, &who, &base, rest, &query),
            Method::POST if rest.trim_end_matches('/') == "/search" => match read_json(req).await {
                Ok(body) => stac::post_search(&app, &who, &base, &body),
                Err(p) => Err(p),
            },
            _ => Err(not_allowed(&method, &path)),
        }
    };
    result.unwrap_or_else(|p| problem_response(&p))
}

fn not_allowed(method: &Method, path: &str) -> Problem {
    Problem::new(405, "method-not-allowed", "Method not allowed", format!("{method} is not allowed on {path}"))
}

async fn read_json(req: Request<hyper::body::Incoming>) -> Result<Value, Problem> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|_| Problem::invalid("body", format!("the body is larger than {MAX_BODY} bytes or was cut off")))?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| Problem::invalid("body", format!("the body is not JSON: {e}")))
}

/// The collections `who` may read, in bucket order.
pub fn readable(app: &App, who: &Principal) -> Vec<Arc<Collection>> {
    let mut out: Vec<Arc<Collection>> = app.collections.values().filter(|c| c.read.allows(who)).cloned().collect();
    out.sort_by(|a, b| a.bucket.cmp(&b.bucket));
    out
}

/// The collection `bucket`, if `who` may read it: 404 when there is none, 401 or 403 when
/// there is one they may not read.
pub fn collection(app: &App, who: &Principal, bucket: &str) -> Result<Arc<Collection>, Problem> {
    let c =
        app.collections.get(bucket).ok_or_else(|| Problem::not_found(format!("there is no collection {bucket:?}")))?;
    if c.read.allows(who) {
        return Ok(c.clone());
    }
    Err(match who {
        Principal::Anonymous { .. } => {
            Problem::new(401, "unauthorized", "Not authorized", "this collection needs an access key")
        }
        Principal::Key(_) => Problem::new(403, "forbidden", "Forbidden", "this key may not read this collection"),
    })
}

/// Dataset `id` of a collection, loaded: 404 when the catalog has none, 503 when it cannot
/// be served now.
pub fn dataset(c: &Collection, id: &str) -> Result<Arc<Dataset>, Problem> {
    let cached = c
        .dataset(id)
        .map_err(|e| Problem::new(503, "unavailable", "Unavailable", e))?
        .ok_or_else(|| Problem::not_found(format!("bucket {} has no dataset {id:?}", c.bucket)))?;
    match &cached.entry {
        Entry::Ready { dataset, .. } => Ok(dataset.clone()),
        Entry::Unavailable(why) => {
            Err(Problem { retry_after: Some(5), ..Problem::new(503, "unavailable", "Unavailable", why.clone()) })
        }
    }
}

/// Percent-encodes a path (keeping `/`), for links.
pub fn path_url(path: &str) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(path, SET).to_string()
}

/// Percent-encodes a query value.
pub fn query_value(value: &str) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(value, SET).to_string()
}

/// `/kerchunk/BUCKET/ID`: the dataset as Kerchunk references (version 1): metadata inline,
/// every chunk a reference to this gateway's object, so `reference://` reads exactly what the
/// S3 interface serves (with the same checks of the source files).
fn kerchunk(app: &App, who: &Principal, base: &str, rest: &str) -> Result<HttpResponse, Problem> {
    let (bucket, id) = rest.split_once('/').filter(|(_, id)| !id.is_empty()).ok_or_else(|| {
        Problem::not_found("a Kerchunk download is /kerchunk/BUCKET/ID, for a dataset ID of bucket BUCKET")
    })?;
    let id = id.trim_end_matches('/');
    let c = collection(app, who, bucket)?;
    let ds = dataset(&c, id)?;
    let prefix = format!("{base}/{}/{}/", path_url(bucket), path_url(id));
    let mut refs = Map::new();
    for (key, object) in ds.keys_from("", true) {
        let metadata = key.ends_with(".zarray")
            || key.ends_with(".zattrs")
            || key.ends_with(".zgroup")
            || key.ends_with(".zmetadata");
        let value = match &object.body {
            Body::Inline(b) if metadata => json!(String::from_utf8_lossy(b)),
            _ => json!([format!("{prefix}{}", path_url(&key))]),
        };
        refs.insert(key, value);
    }
    let doc = json!({"version": 1, "refs": refs});
    let mut r = json_response(200, &doc);
    let name = id.rsplit('/').next().unwrap_or(id).replace('"', "");
    if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("inline; filename=\"{name}.json\"")) {
        r.headers_mut().insert("content-disposition", v);
    }
    Ok(r)
}

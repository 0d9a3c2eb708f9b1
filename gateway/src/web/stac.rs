//! The STAC API (STAC 1.0, STAC API 1.0: core, collections, features and item search with the
//! query extension). Collections are buckets, items are datasets (files and joins), searched
//! through the discovery records the indexer keeps in each catalog (an index, never a scan
//! of the data).

use serde_json::{json, Map, Value};
use zarrgate_core::catalog::{Item, ItemQuery};
use zarrgate_core::ops::Problem;

use super::{collection, path_url, query_value, readable};
use crate::app::App;
use crate::auth::Principal;
use crate::body::HttpResponse;
use crate::collection::Collection;
use crate::ops::http::{json_response, respond};

pub const STAC_VERSION: &str = "1.0.0";
pub const DATACUBE: &str = "https://stac-extensions.github.io/datacube/v2.2.0/schema.json";
pub const XARRAY_ASSETS: &str = "https://stac-extensions.github.io/xarray-assets/v1.0.0/schema.json";

const CONFORMANCE: &[&str] = &[
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0-rc.1/item-search#query",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
];

/// Most ids one search may name.
const MAX_IDS: usize = 1000;

/// Items per page unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 1000;

fn geojson(doc: &Value) -> HttpResponse {
    respond(200, "application/geo+json", bytes::Bytes::from(serde_json::to_vec(doc).expect("JSON serializes")))
}

/// `GET /stac…`; `rest` is the path after `/stac`.
pub fn get(
    app: &App,
    who: &Principal,
    base: &str,
    rest: &str,
    query: &[(String, String)],
) -> Result<HttpResponse, Problem> {
    let parts: Vec<&str> = rest.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [] => Ok(json_response(200, &landing(app, who, base))),
        ["conformance"] => Ok(json_response(200, &json!({"conformsTo": CONFORMANCE}))),
        ["collections"] => {
            let cs: Vec<Value> =
                readable(app, who).iter().map(|c| collection_doc(c, base)).collect::<Result<_, _>>()?;
            let links = json!([
                link("self", &format!("{base}/stac/collections"), "application/json"),
                link("root", &format!("{base}/stac"), "application/json")
            ]);
            Ok(json_response(200, &json!({"collections": cs, "links": links})))
        }
        ["collections", bucket] => {
            Ok(json_response(200, &collection_doc(collection(app, who, bucket)?.as_ref(), base)?))
        }
        ["collections", bucket, "items"] => {
            let mut search = Search::from_query(query)?;
            search.collections = vec![bucket.to_string()];
            collection(app, who, bucket)?;
            let url = format!("{base}/stac/collections/{}/items", path_url(bucket));
            Ok(geojson(&run(app, who, base, &search, &Paging::Get(url))?))
        }
        ["collections", bucket, "items", ..] => {
            let c = collection(app, who, bucket)?;
            let id = rest.trim_matches('/').splitn(4, '/').nth(3).unwrap_or("");
            let q = ItemQuery { ids: vec![id.to_string()], limit: 1, ..Default::default() };
            let (_, id, item) = c
                .items(&q)
                .map_err(unavailable)?
                .into_iter()
                .next()
                .ok_or_else(|| Problem::not_found(format!("collection {bucket} has no item {id:?}")))?;
            Ok(geojson(&item_doc(&c, &id, &item, base)))
        }
        ["search"] => {
            let search = Search::from_query(query)?;
            Ok(geojson(&run(app, who, base, &search, &Paging::Get(format!("{base}/stac/search")))?))
        }
        _ => Err(Problem::not_found(format!("there is nothing at /stac{rest}"))),
    }
}

/// `POST /stac/search` with a JSON body.
pub fn post_search(app: &App, who: &Principal, base: &str, body: &Value) -> Result<HttpResponse, Problem> {
    let search = Search::from_json(body)?;
    Ok(geojson(&run(app, who, base, &search, &Paging::Post(body.clone()))?))
}

fn unavailable(e: String) -> Problem {
    Problem { retry_after: Some(5), ..Problem::new(503, "unavailable", "Unavailable", e) }
}

fn link(rel: &str, href: &str, kind: &str) -> Value {
    json!({"rel": rel, "href": href, "type": kind})
}

fn landing(app: &App, who: &Principal, base: &str) -> Value {
    let mut links = vec![
        link("self", &format!("{base}/stac"), "application/json"),
        link("root", &format!("{base}/stac"), "application/json"),
        link("conformance", &format!("{base}/stac/conformance"), "application/json"),
        link("data", &format!("{base}/stac/collections"), "application/json"),
        json!({"rel": "search", "href": format!("{base}/stac/search"), "type": "application/geo+json", "method": "GET"}),
        json!({"rel": "search", "href": format!("{base}/stac/search"), "type": "application/geo+json", "method": "POST"}),
        link("service-doc", &format!("{base}/browse/"), "text/html"),
    ];
    for c in readable(app, who) {
        links.push(json!({"rel": "child", "href": format!("{base}/stac/collections/{}", path_url(&c.bucket)),
                          "type": "application/json", "title": c.bucket}));
    }
    json!({
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": "zarrgate",
        "title": "zarrgate",
        "description": "The datasets this gateway serves as Zarr over S3: one collection per bucket, one item per dataset.",
        "conformsTo": CONFORMANCE,
        "links": links,
    })
}

fn collection_doc(c: &Collection, base: &str) -> Result<Value, Problem> {
    let zarrgate_core::catalog::ItemsExtent { bbox, start, end, count } = c.items_extent().map_err(unavailable)?;
    let url = format!("{base}/stac/collections/{}", path_url(&c.bucket));
    Ok(json!({
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": c.bucket,
        "title": c.bucket,
        "description": format!("The datasets of bucket {} ({count} with a discovery record), served as Zarr at s3://{}/ID.", c.bucket, c.bucket),
        "license": "other",
        "extent": {
            "spatial": {"bbox": [bbox.unwrap_or([-180.0, -90.0, 180.0, 90.0])]},
            "temporal": {"interval": [[start, end]]},
        },
        "links": [
            link("self", &url, "application/json"),
            link("root", &format!("{base}/stac"), "application/json"),
            link("parent", &format!("{base}/stac"), "application/json"),
            link("items", &format!("{url}/items"), "application/geo+json"),
            link("alternate", &format!("{base}/browse/{}/", path_url(&c.bucket)), "text/html"),
        ],
    }))
}

/// A STAC item of dataset `id` of collection `c`.
pub fn item_doc(c: &Collection, id: &str, item: &Item, base: &str) -> Value {
    let bucket = &c.bucket;
    let mut properties = Map::new();
    match (&item.start, &item.end) {
        (Some(a), Some(b)) => {
            properties.insert("datetime".into(), Value::Null);
            properties.insert("start_datetime".into(), json!(a));
            properties.insert("end_datetime".into(), json!(b));
        }
        // STAC needs an instant: data without a time axis is dated by when it was indexed.
        _ => {
            properties.insert("datetime".into(), json!(crate::dates::iso8601_millis(c.created)));
        }
    }
    for (k, v) in &item.facets {
        properties.insert(k.clone(), json!(v));
    }
    for (k, v) in &item.properties {
        properties.insert(k.clone(), v.clone());
    }
    let item_url = format!("{base}/stac/collections/{}/items/{}", path_url(bucket), path_url(id));
    let collection_url = format!("{base}/stac/collections/{}", path_url(bucket));
    let public = c.read.is_public();
    let storage = if public {
        json!({"anon": true, "endpoint_url": base})
    } else {
        json!({"endpoint_url": base, "key": "ACCESS_KEY", "secret": "SECRET"})
    };
    let mut doc = json!({
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [DATACUBE, XARRAY_ASSETS],
        "id": id,
        "collection": bucket,
        "geometry": Value::Null,
        "properties": properties,
        "links": [
            link("self", &item_url, "application/geo+json"),
            link("root", &format!("{base}/stac"), "application/json"),
            link("parent", &collection_url, "application/json"),
            link("collection", &collection_url, "application/json"),
            link("alternate", &format!("{base}/browse/{}/{}", path_url(bucket), path_url(id)), "text/html"),
        ],
        "assets": {
            "zarr": {
                "href": format!("s3://{bucket}/{id}"),
                "type": "application/vnd+zarr",
                "title": "Zarr store (S3)",
                "roles": ["data", "zarr"],
                "xarray:open_kwargs": {"engine": "zarr", "consolidated": true},
                "xarray:storage_options": storage,
            },
            "zarr-http": {
                "href": format!("{base}/{}/{}", path_url(bucket), path_url(id)),
                "type": "application/vnd+zarr",
                "title": "Zarr store (HTTP)",
                "roles": ["data", "zarr"],
                "xarray:open_kwargs": {"engine": "zarr", "consolidated": true},
            },
            "references": {
                "href": format!("{base}/kerchunk/{}/{}", path_url(bucket), path_url(id)),
                "type": "application/json",
                "title": "Kerchunk references (chunks read through this gateway)",
                "roles": ["references", "index"],
            },
        },
    });
    if let Some([w, s, e, n]) = item.bbox {
        doc["bbox"] = json!([w, s, e, n]);
        // A box crossing 180° is two polygons.
        let ring = |w: f64, e: f64| json!([[[w, s], [e, s], [e, n], [w, n], [w, s]]]);
        doc["geometry"] = if w <= e {
            json!({"type": "Polygon", "coordinates": ring(w, e)})
        } else {
            json!({"type": "MultiPolygon", "coordinates": [ring(w, 180.0), ring(-180.0, e)]})
        };
    }
    doc
}

/// A parsed search.
#[derive(Clone, Debug, Default)]
struct Search {
    bbox: Option<[f64; 4]>,
    start: Option<String>,
    end: Option<String>,
    ids: Vec<String>,
    collections: Vec<String>,
    facets: Vec<(String, Vec<String>)>,
    limit: usize,
    /// Where the previous page ended: `BUCKET:RECORD`.
    token: Option<(String, i64)>,
}

/// How the next page is asked for: the same GET with a token, or the same POST body with one.
enum Paging {
    Get(String),
    Post(Value),
}

impl Search {
    fn from_query(query: &[(String, String)]) -> Result<Search, Problem> {
        let mut s = Search { limit: DEFAULT_LIMIT, ..Default::default() };
        s.read_query(query)?;
        s.checked()
    }

    fn checked(self) -> Result<Search, Problem> {
        if self.ids.len() > MAX_IDS {
            return Err(Problem::invalid("ids", format!("a search names at most {MAX_IDS} ids")));
        }
        Ok(self)
    }

    fn read_query(&mut self, query: &[(String, String)]) -> Result<(), Problem> {
        let s = self;
        for (k, v) in query {
            match k.as_str() {
                "bbox" => s.bbox = Some(bbox(&v.split(',').map(str::trim).map(number).collect::<Result<Vec<_>, _>>()?)?),
                "datetime" => (s.start, s.end) = interval(v)?,
                "ids" => s.ids = list(v),
                "collections" => s.collections = list(v),
                "limit" => s.limit = limit(v)?,
                "token" => s.token = Some(token(v)?),
                "query" => {
                    let q: Value = serde_json::from_str(v)
                        .map_err(|e| Problem::invalid("query", format!("query is a JSON object: {e}")))?;
                    s.facets = facets(&q)?;
                }
                "filter" | "filter-lang" => return Err(filter_refused()),
                "f" if v == "json" || v == "geojson" => {}
                _ if k.starts_with("X-Amz-") => {}
                _ => return Err(Problem::invalid(k, format!("search has no parameter {k:?}; its parameters are bbox, datetime, ids, collections, limit, query and token"))),
            }
        }
        Ok(())
    }

    fn from_json(body: &Value) -> Result<Search, Problem> {
        let mut s = Search { limit: DEFAULT_LIMIT, ..Default::default() };
        let Some(map) = body.as_object() else { return Err(Problem::invalid("body", "a search is a JSON object")) };
        let strings = |k: &str, v: &Value| -> Result<Vec<String>, Problem> {
            match v {
                Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str().map(str::to_string).ok_or_else(|| Problem::invalid(k, format!("{k} holds strings")))
                    })
                    .collect(),
                Value::String(t) => Ok(list(t)),
                _ => Err(Problem::invalid(k, format!("{k} is a list of strings"))),
            }
        };
        for (k, v) in map {
            match k.as_str() {
                "bbox" => {
                    let nums = v
                        .as_array()
                        .ok_or_else(|| Problem::invalid("bbox", "bbox is [WEST, SOUTH, EAST, NORTH]"))?
                        .iter()
                        .map(|x| x.as_f64().ok_or_else(|| Problem::invalid("bbox", "bbox holds numbers")))
                        .collect::<Result<Vec<_>, _>>()?;
                    s.bbox = Some(bbox(&nums)?);
                }
                "datetime" => {
                    (s.start, s.end) =
                        interval(v.as_str().ok_or_else(|| Problem::invalid("datetime", "datetime is a string"))?)?
                }
                "ids" => s.ids = strings(k, v)?,
                "collections" => s.collections = strings(k, v)?,
                "limit" => s.limit = limit(&v.to_string())?,
                "token" => {
                    s.token = Some(token(v.as_str().ok_or_else(|| Problem::invalid("token", "token is a string"))?)?)
                }
                "query" => s.facets = facets(v)?,
                "filter" | "filter-lang" => return Err(filter_refused()),
                "intersects" => {
                    return Err(Problem::invalid(
                        "intersects",
                        "this API searches by bbox; intersects is not supported",
                    ))
                }
                _ => {}
            }
        }
        s.checked()
    }
}

fn filter_refused() -> Problem {
    Problem::invalid(
        "filter",
        "this API filters facets with the query extension: query={\"source_id\": {\"eq\": \"X\"}} (ops eq and in); CQL2 filter is not supported",
    )
}

fn number(s: &str) -> Result<f64, Problem> {
    s.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| Problem::invalid("bbox", format!("{s:?} is not a number")))
}

fn bbox(v: &[f64]) -> Result<[f64; 4], Problem> {
    let b = match v {
        [w, s, e, n] => [*w, *s, *e, *n],
        // A 3-D box: heights are ignored.
        [w, s, _, e, n, _] => [*w, *s, *e, *n],
        _ => return Err(Problem::invalid("bbox", "bbox is WEST,SOUTH,EAST,NORTH")),
    };
    if b[1] > b[3] || b[1] < -90.0 || b[3] > 90.0 {
        return Err(Problem::invalid("bbox", "SOUTH and NORTH must lie in -90..90 with SOUTH <= NORTH"));
    }
    Ok(b)
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fn limit(v: &str) -> Result<usize, Problem> {
    match v.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n.min(MAX_LIMIT)),
        _ => Err(Problem::invalid("limit", format!("limit is a whole number from 1 to {MAX_LIMIT}"))),
    }
}

fn token(v: &str) -> Result<(String, i64), Problem> {
    let t = v.strip_prefix("next:").unwrap_or(v);
    t.rsplit_once(':')
        .and_then(|(b, n)| Some((b.to_string(), n.parse::<i64>().ok()?)))
        .ok_or_else(|| Problem::invalid("token", "not a token this API gave"))
}

/// A datetime argument: one instant or `START/END`, either end open (`..` or empty).
fn interval(v: &str) -> Result<(Option<String>, Option<String>), Problem> {
    let (a, b) = v.split_once('/').unwrap_or((v, v));
    let bound = |s: &str, end: bool| -> Result<Option<String>, Problem> {
        let s = s.trim();
        if s.is_empty() || s == ".." {
            return Ok(None);
        }
        instant(s, end).map(Some).ok_or_else(|| {
            Problem::invalid("datetime", format!("{s:?} is not an RFC 3339 date-time (2000-01-01T00:00:00Z) or date"))
        })
    };
    let (a, b) = (bound(a, false)?, bound(b, true)?);
    if a.is_none() && b.is_none() && v.trim() != "../.." && !v.contains('/') {
        return Err(Problem::invalid("datetime", "datetime is an instant or START/END"));
    }
    Ok((a, b))
}

/// An RFC 3339 date-time (UTC or with an offset) or a date, as the records store instants
/// (`YYYY-MM-DDTHH:MM:SSZ`, UTC). A date alone is its first second, or as an end its last.
fn instant(s: &str, end: bool) -> Option<String> {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let (date, time) = match s.split_once(['T', 't', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let d: Vec<&str> = date.split('-').collect();
    if d.len() != 3 || d.iter().any(|p| !digits(p)) || d[0].len() != 4 {
        return None;
    }
    let (y, m, day): (i64, u32, u32) = (d[0].parse().ok()?, d[1].parse().ok()?, d[2].parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let Some(time) = time else {
        return Some(format!("{y:04}-{m:02}-{day:02}T{}Z", if end { "23:59:59" } else { "00:00:00" }));
    };
    let (clock, offset_minutes) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (h, mm) = off[1..].split_once(':')?;
        (c, sign * (h.parse::<i64>().ok()? * 60 + mm.parse::<i64>().ok()?))
    } else {
        (time, 0)
    };
    let c: Vec<&str> = clock.split(':').collect();
    if c.len() != 3 {
        return None;
    }
    let (h, mi): (i64, i64) = (c[0].parse().ok()?, c[1].parse().ok()?);
    let sec: f64 = c[2].parse().ok()?;
    let secs = if end { sec.ceil() } else { sec.floor() } as i64;
    // Shift by the offset through a day count (proleptic Gregorian, as RFC 3339 is).
    let days = crate::dates::days_from_civil(y, m, day);
    let total = days * 86400 + h * 3600 + mi * 60 + secs - offset_minutes * 60;
    let (days, rem) = (total.div_euclid(86400), total.rem_euclid(86400));
    let (y, m, d) = crate::dates::civil_from_days(days);
    Some(format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60))
}

/// The query extension's facet filters: `{"NAME": {"eq": V}}` or `{"NAME": {"in": [V, …]}}`.
fn facets(q: &Value) -> Result<Vec<(String, Vec<String>)>, Problem> {
    let map = q.as_object().ok_or_else(|| Problem::invalid("query", "query is a JSON object"))?;
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = Vec::new();
    for (name, ops) in map {
        let ops =
            ops.as_object().ok_or_else(|| Problem::invalid("query", format!("query.{name} is {{\"eq\": VALUE}}")))?;
        for (op, v) in ops {
            let values = match (op.as_str(), v) {
                ("eq", v) => vec![text(v)],
                ("in", Value::Array(a)) => a.iter().map(text).collect(),
                _ => {
                    return Err(Problem::invalid(
                        "query",
                        format!("query.{name}.{op}: the operators are eq and in (a list)"),
                    ))
                }
            };
            out.push((name.clone(), values));
        }
    }
    Ok(out)
}

/// Runs a search over the collections `who` may read and shapes the page.
fn run(app: &App, who: &Principal, base: &str, s: &Search, paging: &Paging) -> Result<Value, Problem> {
    let mut cs = readable(app, who);
    if !s.collections.is_empty() {
        cs.retain(|c| s.collections.contains(&c.bucket));
    }
    if let Some((bucket, _)) = &s.token {
        cs.retain(|c| &c.bucket >= bucket);
    }
    let mut features = Vec::new();
    let mut last: Option<(String, i64)> = None;
    let mut more = false;
    for c in &cs {
        let after = match &s.token {
            Some((b, n)) if *b == c.bucket => *n,
            _ => 0,
        };
        let want = s.limit - features.len();
        let q = ItemQuery {
            bbox: s.bbox,
            start: s.start.clone(),
            end: s.end.clone(),
            ids: s.ids.clone(),
            facets: s.facets.clone(),
            after,
            limit: want + 1,
        };
        let mut rows = c.items(&q).map_err(unavailable)?;
        if rows.len() > want {
            rows.truncate(want);
            more = true;
        }
        for (n, id, item) in &rows {
            features.push(item_doc(c, id, item, base));
            last = Some((c.bucket.clone(), *n));
        }
        if features.len() >= s.limit {
            // The next collection may still hold matches.
            more = more || cs.last().is_some_and(|l| l.bucket != c.bucket);
            break;
        }
    }
    let mut links = vec![link("root", &format!("{base}/stac"), "application/json")];
    if let (true, Some((bucket, n))) = (more, &last) {
        let token = format!("next:{bucket}:{n}");
        links.push(match paging {
            Paging::Get(url) => {
                let mut q = next_query(s);
                q.push(format!("token={}", query_value(&token)));
                json!({"rel": "next", "href": format!("{url}?{}", q.join("&")), "type": "application/geo+json", "method": "GET"})
            }
            Paging::Post(body) => {
                let mut body = body.clone();
                body["token"] = json!(token);
                json!({"rel": "next", "href": format!("{base}/stac/search"), "type": "application/geo+json",
                       "method": "POST", "body": body, "merge": false})
            }
        });
    }
    Ok(json!({
        "type": "FeatureCollection",
        "features": features,
        "numberReturned": features.len(),
        "links": links,
    }))
}

/// The query string of a search (for its next page).
fn next_query(s: &Search) -> Vec<String> {
    let mut q = Vec::new();
    if let Some([w, so, e, n]) = s.bbox {
        q.push(format!("bbox={w},{so},{e},{n}"));
    }
    if s.start.is_some() || s.end.is_some() {
        let a = s.start.clone().unwrap_or_else(|| "..".into());
        let b = s.end.clone().unwrap_or_else(|| "..".into());
        q.push(format!("datetime={}", query_value(&format!("{a}/{b}"))));
    }
    if !s.ids.is_empty() {
        q.push(format!("ids={}", query_value(&s.ids.join(","))));
    }
    if !s.collections.is_empty() {
        q.push(format!("collections={}", query_value(&s.collections.join(","))));
    }
    if !s.facets.is_empty() {
        let doc: Map<String, Value> = s.facets.iter().map(|(k, v)| (k.clone(), json!({"in": v}))).collect();
        q.push(format!("query={}", query_value(&Value::Object(doc).to_string())));
    }
    q.push(format!("limit={}", s.limit));
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_utc_seconds() {
        assert_eq!(instant("2000-01-01", false).unwrap(), "2000-01-01T00:00:00Z");
        assert_eq!(instant("2000-01-01", true).unwrap(), "2000-01-01T23:59:59Z");
        assert_eq!(instant("2000-01-01T01:30:00+02:00", false).unwrap(), "1999-12-31T23:30:00Z");
        assert_eq!(instant("2020-12-31T23:59:59.5Z", true).unwrap(), "2021-01-01T00:00:00Z");
        assert!(instant("2000-13-01", false).is_none());
        assert_eq!(interval("2000-01-01T00:00:00Z/..").unwrap(), (Some("2000-01-01T00:00:00Z".into()), None));
    }

    #[test]
    fn facets_take_eq_and_in() {
        let q = json!({"source_id": {"eq": "CESM2"}, "member_id": {"in": ["r1", "r2"]}});
        let mut f = facets(&q).unwrap();
        f.sort();
        assert_eq!(
            f,
            vec![("member_id".into(), vec!["r1".into(), "r2".into()]), ("source_id".into(), vec!["CESM2".into()])]
        );
        assert!(facets(&json!({"x": {"gt": 1}})).is_err());
    }
}

//! Pages under `/browse/`, rendered on the server, readable without JavaScript:
//! - `/browse/`: the collections the caller may read, with dataset counts;
//! - `/browse/BUCKET/DIR/`: a directory: sub-directories with counts, and datasets;
//! - `/browse/BUCKET/ID`: a dataset: dimensions, coordinates, variables (shape, type, units,
//!   long name, chunks, codecs, what the gateway does with each), attributes, quick-looks,
//!   snippets that work as printed, and forms that build operation URLs;
//! - `/browse/-/style.css`: the one stylesheet.
//!
//! Every value that comes from a file or a path is escaped ([`esc`]).

use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::Value;
use zarrgate_core::catalog::{ItemQuery, Kind};
use zarrgate_core::ops::Problem;
use zarrgate_core::report::VariableStatus;

use super::model::{Group, Model, Var};
use super::{collection, dataset, path_url, query_value, readable};
use crate::app::App;
use crate::auth::Principal;
use crate::body::HttpResponse;
use crate::ops::http::respond;
use crate::store::{Bucket as _, ListQuery};

/// Entries of a directory page.
const PAGE: usize = 200;
/// Quick-looks shown on a dataset page.
const THUMBNAILS: usize = 4;

const STYLE: &str = "
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:0 1rem 3rem;color:#1d2330}
header{border-bottom:1px solid #d5d9e0;margin-bottom:1rem;padding:.6rem 0}
header a{font-weight:600;text-decoration:none;color:#1d2330}
nav.crumbs{color:#5b6476;margin:.4rem 0}
h1{font-size:1.45rem;margin:.6rem 0;word-break:break-all}
h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #e3e6eb}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eceef2;vertical-align:top}
th{background:#f4f6f9;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.88em}
pre{background:#f4f6f9;padding:.6rem .8rem;overflow-x:auto;border-radius:4px}
.status-ok{color:#1f7a3a}.status-decoded{color:#8a5a00}.status-refused{color:#b3261e}
.looks{display:flex;flex-wrap:wrap;gap:1rem}.looks figure{margin:0}.looks img{border:1px solid #d5d9e0;max-width:100%}
form{background:#f8f9fb;border:1px solid #e3e6eb;border-radius:4px;padding:.6rem .8rem;margin:.6rem 0}
form label{display:inline-block;margin:.2rem 1rem .2rem 0}
details{margin:.2rem 0}
.muted{color:#5b6476}
";

/// Escapes text for HTML (element content and quoted attribute values): the XML escaping of
/// S3 documents serves both.
pub use crate::s3::xml::escape as esc;

fn html(status: u16, title: &str, body: &str) -> HttpResponse {
    let doc = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · zarrgate</title><link rel=\"stylesheet\" href=\"/browse/-/style.css\"></head>\
         <body><header><a href=\"/browse/\">zarrgate</a> <span class=\"muted\">· \
         <a href=\"/stac\">STAC</a> · <a href=\"/ogc\">processes</a></span></header>\n{body}\n</body></html>\n",
        esc(title)
    );
    let mut r = respond(status, "text/html; charset=utf-8", Bytes::from(doc));
    r.headers_mut().insert(
        "content-security-policy",
        hyper::header::HeaderValue::from_static(
            "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'none'",
        ),
    );
    r
}

/// An error page with the status of `problem`.
pub fn error_page(status: u16, title: &str, detail: &str) -> HttpResponse {
    html(status, title, &format!("<h1>{}</h1><p>{}</p>", esc(title), esc(detail)))
}

fn problem_page(p: &Problem) -> HttpResponse {
    error_page(p.status, p.title, &p.detail)
}

/// `GET /browse…`; `rest` is the path after `/browse`.
pub fn page(app: &App, who: &Principal, base: &str, rest: &str, query: &[(String, String)]) -> HttpResponse {
    if rest == "/-/style.css" {
        let mut r = respond(200, "text/css; charset=utf-8", Bytes::from_static(STYLE.as_bytes()));
        r.headers_mut().insert("cache-control", hyper::header::HeaderValue::from_static("public, max-age=3600"));
        return r;
    }
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let result = if rest.is_empty() {
        Ok(buckets(app, who))
    } else {
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        let after = query.iter().find(|(k, _)| k == "after").map(|(_, v)| v.as_str());
        collection(app, who, bucket).and_then(|c| {
            if path.is_empty() || path.ends_with('/') {
                directory(&c, path, after)
            } else {
                match c.kind_of(path).map_err(|e| Problem::new(503, "unavailable", "Unavailable", e))? {
                    Some(kind) => dataset_page(app, &c, path, kind, base),
                    None => directory(&c, &format!("{path}/"), after),
                }
            }
        })
    };
    result.unwrap_or_else(|p| problem_page(&p))
}

fn crumbs(bucket: &str, path: &str) -> String {
    let mut out = format!(
        "<nav class=\"crumbs\"><a href=\"/browse/\">collections</a> / <a href=\"/browse/{}/\">{}</a>",
        path_url(bucket),
        esc(bucket)
    );
    let mut at = String::new();
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    for (i, p) in parts.iter().enumerate() {
        at.push_str(p);
        if i + 1 < parts.len() {
            at.push('/');
            let _ = write!(out, " / <a href=\"/browse/{}/{}\">{}</a>", path_url(bucket), path_url(&at), esc(p));
        } else {
            let _ = write!(out, " / {}", esc(p));
        }
    }
    out.push_str("</nav>");
    out
}

fn buckets(app: &App, who: &Principal) -> HttpResponse {
    let mut body = String::from(
        "<h1>Collections</h1><table><tr><th>bucket</th><th>files</th><th>joined datasets</th><th>S3</th></tr>",
    );
    for c in readable(app, who) {
        let (files, joins) = c.counts().unwrap_or((0, 0));
        let _ = write!(
            body,
            "<tr><td><a href=\"/browse/{u}/\">{b}</a></td><td class=\"num\">{files}</td><td class=\"num\">{joins}</td><td><code>s3://{b}/</code></td></tr>",
            u = path_url(&c.bucket),
            b = esc(&c.bucket)
        );
    }
    body.push_str("</table><p class=\"muted\">Machines search the same datasets through the <a href=\"/stac\">STAC API</a>; operations are described at <a href=\"/ogc\">/ogc</a>.</p>");
    html(200, "Collections", &body)
}

fn directory(
    c: &std::sync::Arc<crate::collection::Collection>,
    dir: &str,
    after: Option<&str>,
) -> Result<HttpResponse, Problem> {
    let unavailable = |e: String| Problem::new(503, "unavailable", "Unavailable", e);
    let q = ListQuery {
        prefix: dir.to_string(),
        delimiter: Some("/".into()),
        max_keys: PAGE,
        after: after.map(|a| format!("{dir}{a}")),
    };
    let page = c.list(&q).map_err(unavailable)?;
    if page.common_prefixes.is_empty() && after.is_none() && !dir.is_empty() {
        return Err(Problem::not_found(format!(
            "bucket {} has no directory or dataset {:?}",
            c.bucket,
            dir.trim_end_matches('/')
        )));
    }
    let mut body = crumbs(&c.bucket, dir);
    let _ = write!(body, "<h1>{}</h1>", esc(&format!("{}/{}", c.bucket, dir)));
    body.push_str("<table><tr><th>name</th><th>kind</th><th>datasets</th></tr>");
    for p in &page.common_prefixes {
        let id = p.trim_end_matches('/');
        let name = id.rsplit('/').next().unwrap_or(id);
        let kind = c.kind_of(id).map_err(unavailable)?;
        let under = c.count_under(p).map_err(unavailable)?;
        let href = format!("/browse/{}/{}", path_url(&c.bucket), path_url(id));
        match kind {
            Some(k) => {
                let what = if k == Kind::Join { "joined dataset" } else { "file" };
                let _ = write!(
                    body,
                    "<tr><td><a href=\"{href}\">{}</a></td><td>{what}</td><td class=\"num\">1</td></tr>",
                    esc(name)
                );
            }
            None => {
                let _ = write!(
                    body,
                    "<tr><td><a href=\"{href}/\">{}/</a></td><td>directory</td><td class=\"num\">{under}</td></tr>",
                    esc(name)
                );
            }
        }
    }
    body.push_str("</table>");
    if page.truncated {
        if let Some(last) = &page.last {
            let tail = last.strip_prefix(dir).unwrap_or(last);
            let _ = write!(
                body,
                "<p><a href=\"/browse/{}/{}?after={}\">next page</a></p>",
                path_url(&c.bucket),
                path_url(dir),
                query_value(tail)
            );
        }
    }
    Ok(html(200, &format!("{}/{}", c.bucket, dir), &body))
}

/// What the gateway does with variable `path` of a dataset, in words and a class.
fn status_of(ds: &crate::dataset::Dataset, path: &str, kind: Kind) -> (String, &'static str) {
    if kind == Kind::Join {
        return ("joined from its files".into(), "status-ok");
    }
    match ds.statuses.get(path) {
        Some(r) => match r.status {
            VariableStatus::Referenced => ("referenced (byte ranges of the file)".into(), "status-ok"),
            VariableStatus::Inlined => ("inline (stored with the references)".into(), "status-ok"),
            VariableStatus::Transcode => ("decoded by the gateway (served uncompressed)".into(), "status-decoded"),
            VariableStatus::Refused => {
                (format!("refused: {}", r.reason.as_deref().unwrap_or("not representable")), "status-refused")
            }
        },
        None => ("referenced".into(), "status-ok"),
    }
}

fn shape_text(v: &Var) -> String {
    let dims: Vec<String> = v.dims.iter().zip(&v.shape).map(|(d, n)| format!("{d}: {n}")).collect();
    if dims.is_empty() {
        "scalar".into()
    } else {
        dims.join(", ")
    }
}

fn attr_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn attrs_table(attrs: &serde_json::Map<String, Value>) -> String {
    if attrs.is_empty() {
        return "<p class=\"muted\">none</p>".into();
    }
    let mut out = String::from("<table><tr><th>name</th><th>value</th></tr>");
    for (k, v) in attrs {
        let _ = write!(out, "<tr><td><code>{}</code></td><td>{}</td></tr>", esc(k), esc(&attr_text(v)));
    }
    out.push_str("</table>");
    out
}

/// Whether the operations can draw `v` (numbers, at least one dimension).
fn drawable(v: &Var) -> bool {
    let kind = v.dtype.trim_start_matches(['<', '>', '|', '=']);
    !v.dims.is_empty() && matches!(kind.chars().next(), Some('f' | 'i' | 'u')) && kind != "f2"
}

fn quicklook_url(bucket: &str, id: &str, var: &str, size: Option<&str>) -> String {
    let mut url = format!(
        "/ops/v1/subset?dataset={}&var={}&format=png",
        query_value(&format!("{bucket}/{id}")),
        query_value(var)
    );
    if let Some(s) = size {
        let _ = write!(url, "&size={s}");
    }
    url
}

fn variables_table(
    out: &mut String,
    ds: &crate::dataset::Dataset,
    kind: Kind,
    group_path: &str,
    group: &Group,
    names: &[&String],
    looks: Option<(&str, &str)>,
) {
    out.push_str("<table><tr><th>name</th><th>dimensions</th><th>type</th><th>units</th><th>long name</th><th>chunks</th><th>codecs</th><th>status</th>");
    if looks.is_some() {
        out.push_str("<th>quick-look</th>");
    }
    out.push_str("</tr>");
    for name in names {
        let v = &group.vars[*name];
        let path = if group_path.is_empty() { name.to_string() } else { format!("{group_path}/{name}") };
        let (status, class) = status_of(ds, &path, kind);
        let _ = write!(
            out,
            "<tr id=\"var-{}\"><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td>",
            esc(&path),
            esc(name),
            esc(&shape_text(v)),
            esc(&v.dtype),
            esc(v.attr_str("units").unwrap_or("")),
            esc(v.attr_str("long_name").or_else(|| v.attr_str("standard_name")).unwrap_or("")),
            esc(&v.chunks.iter().map(u64::to_string).collect::<Vec<_>>().join(" × ")),
            esc(&v.codecs.join(", ")),
            esc(&status),
        );
        if let Some((bucket, id)) = looks {
            if group_path.is_empty() && drawable(v) && !class.ends_with("refused") {
                let _ = write!(out, "<td><a href=\"{}\">PNG</a></td>", esc(&quicklook_url(bucket, id, name, None)));
            } else {
                out.push_str("<td></td>");
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

fn dataset_page(
    app: &App,
    c: &crate::collection::Collection,
    id: &str,
    kind: Kind,
    base: &str,
) -> Result<HttpResponse, Problem> {
    let ds = dataset(c, id)?;
    let model = Model::of(&ds).map_err(Problem::internal)?;
    let bucket = c.bucket.as_str();
    let ops = app.ops.is_some();
    let looks = ops.then_some((bucket, id));
    let mut body = crumbs(bucket, id);
    let _ = write!(body, "<h1>{}</h1>", esc(id));
    let what = match kind {
        Kind::Join => format!("a joined dataset of {} files", ds.sources.len()),
        Kind::File => "one file".to_string(),
    };
    let _ = write!(
        body,
        "<p>{} served as Zarr at <code>s3://{}/{}</code> · <a href=\"/stac/collections/{u}/items/{p}\">STAC item</a> · \
         <a href=\"/kerchunk/{u}/{p}\">Kerchunk JSON</a> · <a href=\"/{u}/{p}/.zmetadata\">.zmetadata</a></p>",
        esc(&what),
        esc(bucket),
        esc(id),
        u = path_url(bucket),
        p = path_url(id)
    );
    let root = model.root();
    let coords = root.coordinates();
    body.push_str("<h2>Dimensions</h2><table><tr><th>name</th><th>length</th></tr>");
    for (d, n) in root.dims() {
        let _ = write!(body, "<tr><td><code>{}</code></td><td class=\"num\">{n}</td></tr>", esc(d));
    }
    body.push_str("</table>");
    let coord_names: Vec<&String> = root.vars.keys().filter(|n| coords.contains(*n)).collect();
    let data_names: Vec<&String> = root.vars.keys().filter(|n| !coords.contains(*n)).collect();
    body.push_str("<h2>Coordinates</h2>");
    variables_table(&mut body, &ds, kind, "", root, &coord_names, None);
    body.push_str("<h2>Variables</h2>");
    variables_table(&mut body, &ds, kind, "", root, &data_names, looks);
    let refused: Vec<(&String, &str)> = ds
        .statuses
        .iter()
        .filter(|(_, r)| r.status == VariableStatus::Refused)
        .map(|(p, r)| (p, r.reason.as_deref().unwrap_or("not representable")))
        .collect();
    if !refused.is_empty() || !ds.notes.is_empty() {
        body.push_str("<h2>Not served</h2><table><tr><th>variable</th><th>why</th></tr>");
        for (p, why) in refused {
            let _ =
                write!(body, "<tr><td><code>{}</code></td><td class=\"status-refused\">{}</td></tr>", esc(p), esc(why));
        }
        for note in &ds.notes {
            let _ = write!(body, "<tr><td></td><td class=\"status-refused\">{}</td></tr>", esc(note));
        }
        body.push_str("</table>");
    }
    if ops {
        let drawn: Vec<&&String> = data_names.iter().filter(|n| drawable(&root.vars[**n])).take(THUMBNAILS).collect();
        if !drawn.is_empty() {
            body.push_str("<h2>Quick-looks</h2><p class=\"muted\">The first time and level of each variable; any index with <code>isel</code>, e.g. <code>&amp;isel=time=5:6</code>.</p><div class=\"looks\">");
            for n in drawn {
                let full = quicklook_url(bucket, id, n, None);
                let thumb = quicklook_url(bucket, id, n, Some("480x300"));
                let _ = write!(
                    body,
                    "<figure><a href=\"{}\"><img src=\"{}\" width=\"480\" height=\"300\" alt=\"{}\" loading=\"lazy\"></a><figcaption><code>{}</code></figcaption></figure>",
                    esc(&full),
                    esc(&thumb),
                    esc(&format!("quick-look of {n}")),
                    esc(n)
                );
            }
            body.push_str("</div>");
        }
    }
    body.push_str("<h2>Global attributes</h2>");
    body.push_str(&attrs_table(&root.attrs));
    body.push_str("<h2>Variable attributes</h2>");
    for (name, v) in &root.vars {
        let _ =
            write!(body, "<details><summary><code>{}</code></summary>{}</details>", esc(name), attrs_table(&v.attrs));
    }
    for (path, group) in model.groups.iter().filter(|(p, _)| !p.is_empty()) {
        let _ = write!(body, "<h2>Group <code>{}</code></h2>", esc(path));
        let names: Vec<&String> = group.vars.keys().collect();
        variables_table(&mut body, &ds, kind, path, group, &names, None);
        body.push_str("<h3>Attributes</h3>");
        body.push_str(&attrs_table(&group.attrs));
    }
    if ops {
        forms(&mut body, c, id, root, &data_names, &coords);
    }
    snippets(&mut body, c, id, base);
    Ok(html(200, &format!("{bucket}/{id}"), &body))
}

/// Forms that build `subset` and `average` URLs from the dataset's own variables and axes.
fn forms(
    out: &mut String,
    c: &crate::collection::Collection,
    id: &str,
    root: &Group,
    data: &[&String],
    coords: &std::collections::BTreeSet<String>,
) {
    let dataset = format!("{}/{id}", c.bucket);
    let item = c
        .items(&ItemQuery { ids: vec![id.to_string()], limit: 1, ..Default::default() })
        .ok()
        .and_then(|mut v| v.pop())
        .map(|(_, _, i)| i);
    let time_hint = item
        .as_ref()
        .and_then(|i| Some(format!("{}/{}", i.start.as_deref()?.get(..10)?, i.end.as_deref()?.get(..10)?)))
        .unwrap_or_else(|| "START/END".into());
    let area_hint = item
        .as_ref()
        .and_then(|i| i.bbox)
        .map_or_else(|| "WEST,SOUTH,EAST,NORTH".into(), |[w, s, e, n]| format!("{w},{s},{e},{n}"));
    let var_options: String =
        data.iter().filter(|n| drawable(&root.vars[**n])).map(|n| format!("<option>{}</option>", esc(n))).collect();
    if var_options.is_empty() {
        return;
    }
    let axes: Vec<&str> = coords
        .iter()
        .filter_map(|n| root.vars.get(n).filter(|v| v.is_dimension_coordinate(n)).map(|_| n.as_str()))
        .filter_map(|n| zarrgate_core::ops::request::Axis::parse(n).map(|a| a.name()))
        .collect();
    let formats: String = zarrgate_core::ops::Format::NAMES.iter().map(|f| format!("<option>{f}</option>")).collect();
    out.push_str("<h2>Subset and average</h2><p class=\"muted\">These forms build operation URLs (see <a href=\"/ogc/processes\">the processes</a>); the URL they open can be shared and is computed once.</p>");
    let common = format!(
        "<input type=\"hidden\" name=\"dataset\" value=\"{}\">\
         <label>variable <select name=\"var\">{var_options}</select></label>\
         <label>time <input name=\"time\" placeholder=\"{}\"></label>\
         <label>area <input name=\"area\" placeholder=\"{}\"></label>\
         <label>level <input name=\"level\" placeholder=\"LOW/HIGH\"></label>",
        esc(&dataset),
        esc(&time_hint),
        esc(&area_hint)
    );
    let _ = write!(
        out,
        "<form method=\"get\" action=\"/ops/v1/subset\" id=\"subset-form\"><strong>subset</strong> {common}\
         <label>format <select name=\"format\">{formats}</select></label> <button type=\"submit\">subset</button></form>"
    );
    let dims: String = axes.iter().map(|a| format!("<option>{a}</option>")).collect();
    let _ = write!(
        out,
        "<form method=\"get\" action=\"/ops/v1/average\" id=\"average-form\"><strong>average</strong> {common}\
         <label>over <select name=\"dims\" multiple>{dims}</select></label>\
         <label>weights <select name=\"weights\"><option>none</option><option>coslat</option><option>area</option></select></label>\
         <label>format <select name=\"format\">{formats}</select></label> <button type=\"submit\">average</button></form>"
    );
}

/// Client snippets, each complete and runnable as printed.
fn snippets(out: &mut String, c: &crate::collection::Collection, id: &str, base: &str) {
    let b = &c.bucket;
    let public = c.read.is_public();
    let creds_py = if public {
        "\"anon\": True".to_string()
    } else {
        "\"key\": \"ACCESS_KEY\", \"secret\": \"SECRET\"".to_string()
    };
    // Python string literals, written as JSON strings (a subset of Python's).
    let py = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let s3_url = py(&format!("s3://{b}/{id}"));
    let (pb, pid) = (py(b), py(id));
    let so = format!("{{{creds_py}, \"endpoint_url\": \"{base}\"}}");
    let url = format!("{base}/{}/{}", path_url(b), path_url(id));
    let list: Vec<(&str, &str, String)> = vec![
        ("xarray (s3fs)", "python", format!(
            "import xarray as xr\nds = xr.open_dataset({s3_url}, engine=\"zarr\",\n                     storage_options={so})\nprint(ds)\n")),
        ("zarr", "python", format!(
            "import zarr\ngroup = zarr.open_group({s3_url}, mode=\"r\",\n                        storage_options={so})\nprint(sorted(group.array_keys()))\n")),
        ("boto3", "python", if public { format!(
            "import boto3\nfrom botocore import UNSIGNED\nfrom botocore.config import Config\ns3 = boto3.client(\"s3\", endpoint_url=\"{base}\", config=Config(signature_version=UNSIGNED))\nmeta = s3.get_object(Bucket={pb}, Key={})[\"Body\"].read()\nprint(len(meta), \"bytes of consolidated metadata\")\n", py(&format!("{id}/.zmetadata"))) } else { format!(
            "import boto3\ns3 = boto3.client(\"s3\", endpoint_url=\"{base}\", aws_access_key_id=\"ACCESS_KEY\", aws_secret_access_key=\"SECRET\", region_name=\"us-east-1\")\nmeta = s3.get_object(Bucket={pb}, Key={})[\"Body\"].read()\nprint(len(meta), \"bytes of consolidated metadata\")\n", py(&format!("{id}/.zmetadata"))) }),
        ("curl", "sh", if public { format!("curl -sf {url}/.zmetadata\n") } else { format!("curl -sf -H 'Authorization: Bearer ACCESS_KEY:SECRET' {url}/.zmetadata\n") }),
        ("Kerchunk JSON", "python", format!(
            "import xarray as xr\n# the chunks are read over HTTP, asynchronously as zarr 3 reads\nso = {{\"fo\": \"{base}/kerchunk/{}/{}\", \"remote_protocol\": \"http\",\n      \"remote_options\": {{\"asynchronous\": True}}}}\nds = xr.open_dataset(\"reference://\", engine=\"zarr\",\n                     backend_kwargs={{\"consolidated\": False, \"storage_options\": so}})\nprint(ds)\n",
            path_url(b), path_url(id))),
        ("pystac-client", "python", format!(
            "from pystac_client import Client\nitem = next(Client.open(\"{base}/stac\").search(collections=[{pb}], ids=[{pid}]).items())\nprint(item.id, item.assets[\"zarr\"].href)\n")),
    ];
    out.push_str("<h2>Use it</h2>");
    if !public {
        out.push_str(
            "<p class=\"muted\">This collection needs an access key: put yours for ACCESS_KEY and SECRET.</p>",
        );
    }
    for (title, lang, code) in list {
        let _ = write!(
            out,
            "<h3>{}</h3><pre><code class=\"snippet language-{lang}\" data-lang=\"{lang}\">{}</code></pre>",
            esc(title),
            esc(&code)
        );
    }
}

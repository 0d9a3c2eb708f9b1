//! Operation requests: parsing, validation and the canonical form that cache keys hash.
//!
//! The same arguments arrive as a query string (`/ops/v1/average?dims=lat,lon`) or as OGC
//! execution inputs (`{"inputs": {"dims": ["lat", "lon"]}}`). Both are read into [`Request`],
//! whose canonical JSON collapses argument order, aliases, letter case and number spellings.

use serde_json::{json, Value};

use crate::cftime;

/// The operations on offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Process {
    Subset,
    Average,
}

impl Process {
    pub const ALL: [Process; 2] = [Process::Subset, Process::Average];

    pub fn parse(id: &str) -> Option<Process> {
        match id {
            "subset" => Some(Process::Subset),
            "average" => Some(Process::Average),
            _ => None,
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            Process::Subset => "subset",
            Process::Average => "average",
        }
    }
}

/// Named axes of CF data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Axis {
    Time,
    Level,
    Latitude,
    Longitude,
    Realization,
}

impl Axis {
    pub const NAMES: [&'static str; 5] = ["time", "level", "latitude", "longitude", "realization"];

    pub fn parse(name: &str) -> Option<Axis> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "time" | "t" => Axis::Time,
            "level" | "z" | "lev" | "plev" | "height" | "depth" => Axis::Level,
            "latitude" | "lat" | "y" => Axis::Latitude,
            "longitude" | "lon" | "x" => Axis::Longitude,
            "realization" | "member" | "ensemble" | "e" => Axis::Realization,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Axis::NAMES[self as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Weights {
    None,
    Coslat,
    Area,
}

impl Weights {
    pub const NAMES: [&'static str; 3] = ["none", "coslat", "area"];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Nc,
    Zarr,
    Json,
    Csv,
    /// A quick-look picture (see [`super::picture`]).
    Png,
}

impl Format {
    pub const NAMES: [&'static str; 5] = ["nc", "zarr", "json", "csv", "png"];

    pub fn parse(s: &str) -> Option<Format> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "nc" | "netcdf" | "netcdf4" => Format::Nc,
            "zarr" => Format::Zarr,
            "json" => Format::Json,
            "csv" => Format::Csv,
            "png" => Format::Png,
            _ => return None,
        })
    }

    pub fn ext(self) -> &'static str {
        Format::NAMES[self as usize]
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Nc => "application/x-netcdf",
            Format::Zarr | Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Png => "image/png",
        }
    }
}

/// A vertical selection.
#[derive(Clone, Debug, PartialEq)]
pub enum Level {
    Range(f64, f64),
    Values(Vec<f64>),
}

/// A Python-style index range along one dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexRange {
    pub dim: String,
    pub start: Option<i64>,
    pub stop: Option<i64>,
}

/// A validated request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub process: Process,
    /// `BUCKET/ID`.
    pub bucket: String,
    pub dataset: String,
    pub vars: Vec<String>,
    /// Canonical bound texts; empty for an open end.
    pub time: Option<(String, String)>,
    pub area: Option<[f64; 4]>,
    pub level: Option<Level>,
    pub isel: Vec<IndexRange>,
    pub dims: Vec<Axis>,
    pub weights: Weights,
    pub freq: Option<cftime::Freq>,
    pub format: Format,
    /// Width and height of a picture (`format=png` only).
    pub size: Option<(u32, u32)>,
}

/// An RFC 9457 problem document.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub status: u16,
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub argument: Option<String>,
    pub allowed: Vec<String>,
    /// Seconds after which the request may pass (sent as `Retry-After`).
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(status: u16, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem { status, kind, title, detail: detail.into(), argument: None, allowed: Vec::new(), retry_after: None }
    }

    pub fn invalid(argument: &str, detail: impl Into<String>) -> Problem {
        Problem {
            argument: Some(argument.to_string()),
            ..Problem::new(400, "invalid-argument", "Invalid argument", detail)
        }
    }

    pub fn not_one_of(argument: &str, got: &str, allowed: &[&str]) -> Problem {
        let detail = format!("{argument} must be one of {}, not {got:?}", allowed.join(", "));
        Problem { allowed: allowed.iter().map(|s| s.to_string()).collect(), ..Problem::invalid(argument, detail) }
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(404, "not-found", "Not found", detail)
    }

    pub fn unprocessable(argument: Option<&str>, detail: impl Into<String>) -> Problem {
        Problem {
            argument: argument.map(str::to_string),
            ..Problem::new(422, "unprocessable", "The data cannot answer this request", detail)
        }
    }

    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(500, "internal", "Internal error", detail)
    }

    pub fn to_json(&self) -> Value {
        let mut doc = json!({
            "type": format!("urn:zarrgate:problem:{}", self.kind),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        });
        if let Some(a) = &self.argument {
            doc["argument"] = json!(a);
        }
        if !self.allowed.is_empty() {
            doc["allowed"] = json!(self.allowed);
        }
        doc
    }
}

/// Every argument name, for "unknown argument" errors.
const SUBSET_ARGS: [&str; 8] = ["dataset", "var", "time", "area", "level", "isel", "format", "size"];
const AVERAGE_ARGS: [&str; 3] = ["dims", "weights", "freq"];

/// An argument value as it arrived: text from a query string, or JSON from an execution body.
pub enum Raw<'a> {
    Text(&'a str),
    Json(&'a Value),
}

impl Raw<'_> {
    /// Items of a list argument: `a,b` or `["a", "b"]`.
    fn items(&self) -> Vec<String> {
        match self {
            Raw::Text(t) => t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            Raw::Json(Value::Array(a)) => a.iter().map(json_text).collect(),
            Raw::Json(v) => Raw::Text(&json_text(v)).items(),
        }
    }

    fn text(&self) -> String {
        match self {
            Raw::Text(t) => t.trim().to_string(),
            Raw::Json(Value::Array(a)) => a.iter().map(json_text).collect::<Vec<_>>().join(","),
            Raw::Json(v) => json_text(v),
        }
    }
}

fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_string(),
        other => other.to_string(),
    }
}

impl Request {
    /// Reads and validates the arguments of `process`. Unknown and repeated arguments are errors.
    pub fn parse<'a>(process: Process, args: impl IntoIterator<Item = (&'a str, Raw<'a>)>) -> Result<Request, Problem> {
        let mut req = Request {
            process,
            bucket: String::new(),
            dataset: String::new(),
            vars: Vec::new(),
            time: None,
            area: None,
            level: None,
            isel: Vec::new(),
            dims: Vec::new(),
            weights: Weights::None,
            freq: None,
            format: Format::Nc,
            size: None,
        };
        let mut seen = std::collections::BTreeSet::new();
        for (name, raw) in args {
            let known = SUBSET_ARGS.contains(&name) || (process == Process::Average && AVERAGE_ARGS.contains(&name));
            if !known {
                let mut allowed: Vec<&str> = SUBSET_ARGS.to_vec();
                if process == Process::Average {
                    allowed.extend(AVERAGE_ARGS);
                }
                let detail =
                    format!("{} has no argument {name:?}; its arguments are {}", process.id(), allowed.join(", "));
                return Err(Problem {
                    allowed: allowed.iter().map(|s| s.to_string()).collect(),
                    ..Problem::invalid(name, detail)
                });
            }
            if !seen.insert(name) {
                return Err(Problem::invalid(name, format!("{name} is given twice")));
            }
            req.set(name, &raw)?;
        }
        req.check()?;
        Ok(req)
    }

    fn set(&mut self, name: &str, raw: &Raw) -> Result<(), Problem> {
        match name {
            "dataset" => {
                let text = raw.text();
                let path = text.strip_prefix("s3://").unwrap_or(&text).trim_matches('/');
                let (bucket, id) = path
                    .split_once('/')
                    .filter(|(b, id)| !b.is_empty() && !id.is_empty())
                    .ok_or_else(|| Problem::invalid("dataset", "dataset is BUCKET/ID, e.g. demo/cal_noleap.nc"))?;
                if id.split('/').any(|p| p == "..") {
                    return Err(Problem::invalid("dataset", "dataset ids have no '..' segments"));
                }
                self.bucket = bucket.to_string();
                self.dataset = id.to_string();
            }
            "var" => {
                let mut vars = raw.items();
                vars.sort();
                vars.dedup();
                self.vars = vars;
            }
            "time" => self.time = Some(parse_time(&raw.text())?),
            "area" => self.area = Some(parse_area(&raw.items())?),
            "level" => self.level = Some(parse_level(&raw.text())?),
            "isel" => self.isel = parse_isel(raw)?,
            "dims" => {
                let mut dims = Vec::new();
                for d in raw.items() {
                    dims.push(Axis::parse(&d).ok_or_else(|| Problem::not_one_of("dims", &d, &Axis::NAMES))?);
                }
                dims.sort();
                dims.dedup();
                self.dims = dims;
            }
            "weights" => {
                let w = raw.text().to_ascii_lowercase();
                self.weights = match w.as_str() {
                    "none" | "" => Weights::None,
                    "coslat" => Weights::Coslat,
                    "area" => Weights::Area,
                    _ => return Err(Problem::not_one_of("weights", &w, &Weights::NAMES)),
                };
            }
            "freq" => {
                let f = raw.text().to_ascii_lowercase();
                self.freq = Some(match f.as_str() {
                    "day" | "daily" | "d" => cftime::Freq::Day,
                    "month" | "monthly" | "mon" | "ms" => cftime::Freq::Month,
                    "year" | "yearly" | "annual" | "yr" | "ys" => cftime::Freq::Year,
                    _ => return Err(Problem::not_one_of("freq", &f, &["day", "month", "year"])),
                });
            }
            "format" => {
                let f = raw.text();
                self.format = Format::parse(&f).ok_or_else(|| Problem::not_one_of("format", &f, &Format::NAMES))?;
            }
            "size" => {
                let t = raw.text();
                let bad =
                    || Problem::invalid("size", format!("size is WIDTHxHEIGHT in pixels (e.g. 800x500), not {t:?}"));
                let (w, h) = t
                    .to_ascii_lowercase()
                    .split_once('x')
                    .map(|(w, h)| (w.trim().to_string(), h.trim().to_string()))
                    .ok_or_else(bad)?;
                let (w, h) = (w.parse::<u32>().map_err(|_| bad())?, h.parse::<u32>().map_err(|_| bad())?);
                let (min, max) = (super::picture::MIN_SIZE, super::picture::MAX_SIDE);
                if w < min.0 || h < min.1 || w > max || h > max {
                    return Err(Problem::invalid(
                        "size",
                        format!("a picture is at least {}x{} and at most {max} pixels on a side", min.0, min.1),
                    ));
                }
                self.size = Some((w, h));
            }
            _ => unreachable!("argument names are checked by the caller"),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), Problem> {
        if self.dataset.is_empty() {
            return Err(Problem::invalid("dataset", "dataset is required (BUCKET/ID)"));
        }
        if self.vars.is_empty() {
            return Err(Problem::invalid("var", "var is required: the variable(s) to compute on"));
        }
        if self.size.is_some() && self.format != Format::Png {
            return Err(Problem::invalid("size", "size is for pictures (format=png)"));
        }
        if self.format == Format::Png && self.vars.len() != 1 {
            return Err(Problem::invalid("var", "a picture (format=png) shows one variable"));
        }
        if self.process == Process::Average && self.dims.is_empty() && self.freq.is_none() {
            return Err(Problem {
                allowed: Axis::NAMES.iter().map(|s| s.to_string()).collect(),
                ..Problem::invalid("dims", "average needs dims (the axes to average over) or freq")
            });
        }
        Ok(())
    }

    /// The canonical form: equal for requests that mean the same, whatever their spelling.
    pub fn canonical(&self) -> Value {
        let mut doc = json!({
            "process": self.process.id(),
            "dataset": format!("{}/{}", self.bucket, self.dataset),
            "var": self.vars,
            "format": self.format.ext(),
        });
        if let Some((a, b)) = &self.time {
            doc["time"] = json!([a, b]);
        }
        if let Some(area) = self.area {
            doc["area"] = json!(area.iter().map(|x| canonical_number(*x)).collect::<Vec<_>>());
        }
        match &self.level {
            Some(Level::Range(a, b)) => doc["level"] = json!({"range": [canonical_number(*a), canonical_number(*b)]}),
            Some(Level::Values(v)) => {
                doc["level"] = json!({"values": v.iter().map(|x| canonical_number(*x)).collect::<Vec<_>>()})
            }
            None => {}
        }
        if !self.isel.is_empty() {
            doc["isel"] = json!(self.isel.iter().map(|r| json!([r.dim, r.start, r.stop])).collect::<Vec<_>>());
        }
        if self.format == Format::Png {
            let (w, h) = self.size.unwrap_or(super::picture::DEFAULT_SIZE);
            doc["size"] = json!([w, h]);
        }
        if self.process == Process::Average {
            doc["dims"] = json!(self.dims.iter().map(|d| d.name()).collect::<Vec<_>>());
            doc["weights"] = json!(Weights::NAMES[self.weights as usize]);
            doc["freq"] = json!(self.freq.map(|f| format!("{f:?}").to_ascii_lowercase()));
        }
        doc
    }
}

/// A number's canonical text (`10`, `10.0` and `1e1` agree).
fn canonical_number(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    format!("{x}")
}

fn parse_time(text: &str) -> Result<(String, String), Problem> {
    // A single date is the whole period it names (`2000` is that year).
    let (a, b) = text.split_once('/').unwrap_or((text, text));
    if a.trim().is_empty() && b.trim().is_empty() {
        return Err(Problem::invalid(
            "time",
            format!("time is START/END (either may be empty) or one date, not {text:?}"),
        ));
    }
    let canon = |s: &str| -> Result<String, Problem> {
        if s.trim().is_empty() {
            return Ok(String::new());
        }
        cftime::canonical_bound(s.trim()).map_err(|e| Problem::invalid("time", e))
    };
    Ok((canon(a)?, canon(b)?))
}

fn parse_number(argument: &str, s: &str) -> Result<f64, Problem> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| Problem::invalid(argument, format!("{s:?} is not a number")))
}

fn parse_area(items: &[String]) -> Result<[f64; 4], Problem> {
    if items.len() != 4 {
        return Err(Problem::invalid("area", "area is WEST,SOUTH,EAST,NORTH in degrees"));
    }
    let mut v = [0.0; 4];
    for (slot, s) in v.iter_mut().zip(items) {
        *slot = parse_number("area", s)?;
    }
    let [_, south, _, north] = v;
    if !(-90.0..=90.0).contains(&south) || !(-90.0..=90.0).contains(&north) || south > north {
        return Err(Problem::invalid("area", "SOUTH and NORTH must lie in -90..90 with SOUTH <= NORTH"));
    }
    Ok(v)
}

fn parse_level(text: &str) -> Result<Level, Problem> {
    if let Some((a, b)) = text.split_once('/') {
        let (a, b) = (parse_number("level", a)?, parse_number("level", b)?);
        return Ok(Level::Range(a.min(b), a.max(b)));
    }
    let values = text.split(',').map(|s| parse_number("level", s)).collect::<Result<Vec<_>, _>>()?;
    if values.is_empty() {
        return Err(Problem::invalid("level", "level is LOW/HIGH or a list of values"));
    }
    Ok(Level::Values(values))
}

fn parse_isel(raw: &Raw) -> Result<Vec<IndexRange>, Problem> {
    let bad = |s: &str| Problem::invalid("isel", format!("isel is DIM=START:STOP[,DIM=START:STOP], not {s:?}"));
    let parse_end = |s: &str| -> Result<Option<i64>, Problem> {
        let s = s.trim();
        if s.is_empty() || s == "null" {
            Ok(None)
        } else {
            s.parse::<i64>().map(Some).map_err(|_| bad(s))
        }
    };
    let mut items: Vec<(String, String)> = match raw {
        Raw::Json(Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), json_text(v))).collect(),
        _ => raw
            .items()
            .iter()
            .map(|item| {
                item.split_once('=').map(|(d, r)| (d.trim().to_string(), r.to_string())).ok_or_else(|| bad(item))
            })
            .collect::<Result<_, _>>()?,
    };
    items.sort();
    let mut out: Vec<IndexRange> = Vec::new();
    for (dim, range) in items {
        if out.iter().any(|r| r.dim == dim) {
            return Err(Problem::invalid("isel", format!("isel names {dim} twice")));
        }
        let (a, b) = range.split_once(':').ok_or_else(|| bad(&range))?;
        let (a, b) = (parse_end(a)?, parse_end(b)?);
        out.push(IndexRange { dim, start: a, stop: b });
    }
    Ok(out)
}

impl IndexRange {
    /// The positions `start..stop` of a dimension of length `n`, as Python slices them.
    pub fn positions(&self, n: usize) -> std::ops::Range<usize> {
        let clamp = |v: i64| -> usize {
            let v = if v < 0 { v + n as i64 } else { v };
            v.clamp(0, n as i64) as usize
        };
        let start = self.start.map_or(0, clamp);
        let stop = self.stop.map_or(n, clamp);
        start..stop.max(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(process: Process, q: &[(&'static str, &'static str)]) -> Result<Request, Problem> {
        Request::parse(process, q.iter().map(|(k, v)| (*k, Raw::Text(v))))
    }

    #[test]
    fn spelling_and_order_do_not_change_the_canonical_form() {
        let a = query(
            Process::Average,
            &[
                ("dataset", "demo/x.nc"),
                ("var", "tas"),
                ("dims", "lon,lat"),
                ("weights", "COSLAT"),
                ("area", "10,-5,20,5.0"),
            ],
        )
        .unwrap();
        let b = query(
            Process::Average,
            &[
                ("area", "10.0,-5,20,5"),
                ("weights", "coslat"),
                ("dims", "latitude, longitude"),
                ("var", "tas"),
                ("dataset", "s3://demo/x.nc"),
            ],
        )
        .unwrap();
        assert_eq!(a.canonical(), b.canonical());
        let c = query(Process::Average, &[("dataset", "demo/x.nc"), ("var", "tas"), ("dims", "lat")]).unwrap();
        assert_ne!(a.canonical(), c.canonical());
    }

    #[test]
    fn bad_arguments_name_themselves_and_the_allowed_values() {
        let e = query(Process::Average, &[("dataset", "d/x"), ("var", "v"), ("dims", "lat"), ("weights", "cos")])
            .unwrap_err();
        assert_eq!((e.status, e.argument.as_deref()), (400, Some("weights")));
        assert_eq!(e.allowed, vec!["none", "coslat", "area"]);
        let e = query(Process::Subset, &[("dataset", "d/x"), ("var", "v"), ("dims", "lat")]).unwrap_err();
        assert_eq!(e.argument.as_deref(), Some("dims"));
        for (arg, text) in [
            ("area", "1,2,3"),
            ("area", "0,10,5,-10"),
            ("time", "2000-13"),
            ("time", "/"),
            ("level", "a/b"),
            ("isel", "time"),
            ("isel", "time=5"),
        ] {
            let e = query(Process::Subset, &[("dataset", "d/x"), ("var", "v"), (arg, text)]).unwrap_err();
            assert_eq!(e.argument.as_deref(), Some(arg), "{arg}={text}");
        }
        assert_eq!(
            query(Process::Average, &[("dataset", "d/x"), ("var", "v")]).unwrap_err().argument.as_deref(),
            Some("dims")
        );
        assert_eq!(
            query(Process::Subset, &[("dataset", "x"), ("var", "v")]).unwrap_err().argument.as_deref(),
            Some("dataset")
        );
    }

    #[test]
    fn isel_ranges_follow_python_slices() {
        let r =
            query(Process::Subset, &[("dataset", "d/x"), ("var", "v"), ("isel", "time=2:5,lat=-3:,lon=4:5")]).unwrap();
        let by = |d: &str| r.isel.iter().find(|x| x.dim == d).unwrap().positions(10);
        assert_eq!(by("time"), 2..5);
        assert_eq!(by("lat"), 7..10);
        assert_eq!(by("lon"), 4..5);
        let json = serde_json::json!({"time": "0:3"});
        let r = Request::parse(
            Process::Subset,
            [("dataset", Raw::Text("d/x")), ("var", Raw::Text("v")), ("isel", Raw::Json(&json))],
        )
        .unwrap();
        assert_eq!(r.isel[0].positions(10), 0..3);
    }

    #[test]
    fn time_bounds_are_canonical_text() {
        let r = query(Process::Subset, &[("dataset", "d/x"), ("var", "v"), ("time", "2000-1-5/")]).unwrap();
        assert_eq!(r.time, Some(("2000-01-05".into(), String::new())));
    }
}

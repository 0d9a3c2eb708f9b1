//! What discovery knows of a dataset, worked out once when it is indexed: where it is (a
//! longitude/latitude box), when (the range of its decoded time axis), its facets (from the
//! DRS path and global attributes) and its cube (dimensions and variables, as the STAC
//! datacube extension describes them). The catalog stores it beside the dataset's row, so a
//! search is a query of an index, never a read of the data.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::cftime::{DateTime, TimeUnits};
use crate::ops::select::read_coordinate;
use crate::ops::store::{ChunkSource, StoreView, Variable};

/// Global attributes that are search facets (CMIP6, CMIP5, CORDEX and obs4MIPs spellings).
pub const FACETS: &[&str] = &[
    "mip_era",
    "project",
    "activity_id",
    "institution_id",
    "institute_id",
    "source_id",
    "model_id",
    "experiment_id",
    "experiment",
    "member_id",
    "variant_label",
    "sub_experiment_id",
    "table_id",
    "frequency",
    "realm",
    "modeling_realm",
    "variable_id",
    "grid_label",
    "nominal_resolution",
    "product",
    "domain",
    "driving_model_id",
];

/// Coordinates larger than this are not read to find a box.
const MAX_COORDINATE_VALUES: u64 = 1 << 22;

/// The discovery record of one dataset.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Item {
    /// West, south, east, north in degrees (west > east when the box crosses 180°).
    pub bbox: Option<[f64; 4]>,
    /// RFC 3339 instants (UTC) of the first and last time.
    pub start: Option<String>,
    pub end: Option<String>,
    pub facets: BTreeMap<String, String>,
    /// The STAC properties that are not searched on: title, `cube:dimensions`, `cube:variables`.
    pub properties: Map<String, Value>,
}

impl Item {
    /// The record of dataset `id` (its path in the tree), read from its store.
    pub fn describe(id: &str, source: &dyn ChunkSource) -> Result<Item, String> {
        let view = StoreView::open(source).map_err(|e| e.to_string())?;
        let mut item = Item::default();
        let mut dims: BTreeMap<String, Value> = BTreeMap::new();
        // Every longitude and latitude coordinate counts (1-D axes and 2-D grids alike).
        let mut lons: Vec<f64> = Vec::new();
        let mut lats: Option<(f64, f64)> = None;
        for var in view.variables.values() {
            for (d, n) in var.dims.iter().zip(&var.meta.shape) {
                dims.entry(d.clone()).or_insert_with(|| json!({"type": "other", "extent": [0, n.saturating_sub(1)]}));
            }
        }
        for var in view.variables.values() {
            let kind = kind_of(var);
            if kind == Kind::Other || var.len() > MAX_COORDINATE_VALUES || var.dims.is_empty() {
                continue;
            }
            let Ok(values) = read_coordinate(source, var) else { continue };
            // Values no position can have (an unmasked fill value in a grid's corners) are
            // not positions.
            let valid = |v: &f64| match kind {
                Kind::Lat => v.abs() <= 90.0,
                Kind::Lon => v.abs() <= 720.0,
                _ => v.is_finite(),
            };
            let finite: Vec<f64> = values.into_iter().filter(|v| v.is_finite() && valid(v)).collect();
            let Some((lo, hi)) = min_max(&finite) else { continue };
            let own = var.dims.len() == 1 && var.dims[0] == var.name;
            match kind {
                Kind::Lon => {
                    lons.extend(&finite);
                    if own {
                        dims.insert(
                            var.name.clone(),
                            json!({"type": "spatial", "axis": "x", "extent": [lo, hi], "reference_system": 4326}),
                        );
                    }
                }
                Kind::Lat => {
                    let (a, b) = lats.unwrap_or((f64::INFINITY, f64::NEG_INFINITY));
                    lats = Some((a.min(lo), b.max(hi)));
                    if own {
                        dims.insert(
                            var.name.clone(),
                            json!({"type": "spatial", "axis": "y", "extent": [lo, hi], "reference_system": 4326}),
                        );
                    }
                }
                Kind::Vertical if own => {
                    let mut d = json!({"type": "spatial", "axis": "z", "extent": [lo, hi]});
                    if let Some(u) = var.attr_str("units") {
                        d["unit"] = json!(u);
                    }
                    dims.insert(var.name.clone(), d);
                }
                Kind::Time => {
                    let units =
                        TimeUnits::parse(var.attr_str("units").unwrap_or(""), var.attr_str("calendar").unwrap_or(""));
                    let (Ok(units), true) = (units, own) else { continue };
                    let (Ok(a), Ok(b)) = (units.decode(lo), units.decode(hi)) else { continue };
                    let (a, b) = (rfc3339(&a), rfc3339(&b));
                    dims.insert(var.name.clone(), json!({"type": "temporal", "extent": [a, b]}));
                    if item.start.is_none() {
                        item.start = Some(a);
                        item.end = Some(b);
                    }
                }
                Kind::Vertical | Kind::Other => {}
            }
        }
        if let (false, Some((south, north))) = (lons.is_empty(), lats) {
            let (west, east, _) = longitudes(&lons);
            item.bbox = Some([west, south, east, north]);
        }
        item.facets = facets(id, &view);
        let mut variables = Map::new();
        let coordinates = coordinate_names(&view);
        for var in view.variables.values() {
            let mut v = json!({
                "dimensions": var.dims,
                "type": if coordinates.contains(&var.name) { "auxiliary" } else { "data" },
            });
            if let Some(u) = var.attr_str("units") {
                v["unit"] = json!(u);
            }
            if let Some(d) = var.attr_str("long_name").or_else(|| var.attr_str("standard_name")) {
                v["description"] = json!(d);
            }
            v["shape"] = json!(var.meta.shape);
            variables.insert(var.name.clone(), v);
        }
        let title = view.attrs.get("title").and_then(Value::as_str).unwrap_or(id).to_string();
        item.properties.insert("title".into(), json!(title));
        item.properties.insert("cube:dimensions".into(), Value::Object(dims.into_iter().collect()));
        item.properties.insert("cube:variables".into(), Value::Object(variables));
        Ok(item)
    }

    /// The record of a joined dataset whose own description failed or is partial: the union of
    /// its members' boxes and times is kept where its own is missing.
    pub fn widen(&mut self, other: &Item) {
        self.bbox = match (self.bbox, other.bbox) {
            (Some(a), Some(b)) => Some([a[0].min(b[0]), a[1].min(b[1]), a[2].max(b[2]), a[3].max(b[3])]),
            (a, b) => a.or(b),
        };
        if self.start.is_none() {
            self.start = other.start.clone();
            self.end = other.end.clone();
        }
    }

    /// The stored form of the facets and properties (the box and times are columns).
    pub fn doc_json(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({"facets": self.facets, "properties": self.properties})).expect("JSON serializes")
    }

    /// The facets and properties of [`Item::doc_json`] (nothing of a document that is not one).
    pub fn from_doc_json(bytes: &[u8]) -> Item {
        let doc: Value = serde_json::from_slice(bytes).unwrap_or_default();
        Item {
            facets: serde_json::from_value(doc["facets"].clone()).unwrap_or_default(),
            properties: doc["properties"].as_object().cloned().unwrap_or_default(),
            ..Item::default()
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Lon,
    Lat,
    Time,
    Vertical,
    Other,
}

/// What a variable is a coordinate of, by CF conventions.
fn kind_of(var: &Variable) -> Kind {
    let attr = |n: &str| var.attr_str(n).unwrap_or("").to_ascii_lowercase();
    let (standard, units, axis) = (attr("standard_name"), attr("units"), attr("axis"));
    let name = var.name.to_ascii_lowercase();
    if standard == "longitude" || units.starts_with("degrees_east") || units == "degree_east" {
        Kind::Lon
    } else if standard == "latitude" || units.starts_with("degrees_north") || units == "degree_north" {
        Kind::Lat
    } else if (standard == "time" || axis == "t" || name == "time") && units.contains(" since ") {
        Kind::Time
    } else if axis == "z"
        || (var.dims.len() == 1
            && var.dims[0] == var.name
            && matches!(name.as_str(), "lev" | "plev" | "level" | "depth" | "height"))
    {
        Kind::Vertical
    } else {
        Kind::Other
    }
}

fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo <= hi).then_some((lo, hi))
}

/// West and east bounds of longitudes in -180..180: the whole circle when they cover it (grid
/// spacing aside), else the smallest arc that holds them (west > east when it crosses 180°).
fn longitudes(values: &[f64]) -> (f64, f64, bool) {
    let mut wrapped: Vec<f64> = values.iter().map(|v| (v + 180.0).rem_euclid(360.0) - 180.0).collect();
    wrapped.sort_by(f64::total_cmp);
    wrapped.dedup();
    if wrapped.is_empty() {
        return (-180.0, 180.0, true);
    }
    // The widest gap between neighbours (around the circle) is what the data leaves out.
    let mut gap = (wrapped[0] + 360.0 - wrapped[wrapped.len() - 1], wrapped.len() - 1);
    for i in 1..wrapped.len() {
        let g = wrapped[i] - wrapped[i - 1];
        if g > gap.0 {
            gap = (g, i - 1);
        }
    }
    let spacing = if wrapped.len() > 1 { 360.0 / wrapped.len() as f64 } else { 0.0 };
    if wrapped.len() > 2 && gap.0 <= 2.0 * spacing + 1e-9 && gap.0 < 30.0 {
        return (-180.0, 180.0, true);
    }
    let east = wrapped[gap.1];
    let west = wrapped[(gap.1 + 1) % wrapped.len()];
    (west, east, false)
}

/// An instant as RFC 3339, in UTC. Dates a non-standard calendar has and the proleptic
/// Gregorian one lacks (30 February) are moved to the last day of their month, so the text stays
/// a valid timestamp.
fn rfc3339(t: &DateTime) -> String {
    let year = t.year.clamp(0, 9999);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let month = t.month.clamp(1, 12);
    let day = t.day.clamp(1, days[month as usize - 1]);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", t.hour, t.minute, t.second)
}

/// Names of variables that other variables use as coordinates or bounds.
fn coordinate_names(view: &StoreView) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for var in view.variables.values() {
        if var.dims.len() == 1 && var.dims[0] == var.name {
            out.insert(var.name.clone());
        }
        for n in var.attr_str("coordinates").unwrap_or("").split_whitespace() {
            out.insert(n.to_string());
        }
        for a in ["bounds", "climatology"] {
            if let Some(b) = var.attr_str(a) {
                out.insert(b.to_string());
            }
        }
    }
    out
}

/// Facets of a dataset: its global attributes of [`FACETS`], then (for those it lacks) what
/// its DRS directory path and file name say.
fn facets(id: &str, view: &StoreView) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in FACETS {
        if let Some(v) = view.attrs.get(*name).and_then(Value::as_str).map(str::trim).filter(|v| !v.is_empty()) {
            out.insert(name.to_string(), v.to_string());
        }
    }
    for (k, v) in drs_facets(id, view) {
        out.entry(k).or_insert(v);
    }
    out
}

/// Facets from a CMIP6 directory path (`CMIP6/ACTIVITY/INSTITUTION/SOURCE/EXPERIMENT/MEMBER/
/// TABLE/VARIABLE/GRID/VERSION/…`) and a CMIP file name (`VARIABLE_TABLE_SOURCE_EXPERIMENT_
/// MEMBER[_GRID][_RANGE].nc`, whose variable must be one the dataset holds).
fn drs_facets(id: &str, view: &StoreView) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let parts: Vec<&str> = id.split('/').collect();
    if let Some(at) = parts.iter().position(|p| *p == "CMIP6") {
        let names = [
            "activity_id",
            "institution_id",
            "source_id",
            "experiment_id",
            "member_id",
            "table_id",
            "variable_id",
            "grid_label",
            "version",
        ];
        let rest = &parts[at + 1..parts.len().saturating_sub(1).max(at + 1)];
        if rest.len() >= names.len() {
            out.push(("mip_era".to_string(), "CMIP6".to_string()));
            out.extend(names.iter().zip(rest).map(|(n, v)| (n.to_string(), v.to_string())));
        }
    }
    let file = parts.last().copied().unwrap_or("");
    let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
    let words: Vec<&str> = stem.split('_').collect();
    if words.len() >= 5 && view.variables.contains_key(words[0]) {
        let mut names = vec!["variable_id", "table_id", "source_id", "experiment_id", "member_id"];
        let looks_range = |w: &str| w.chars().all(|c| c.is_ascii_digit() || c == '-') && w.len() >= 4;
        if words.len() >= 6 && !looks_range(words[5]) {
            names.push("grid_label");
        }
        out.extend(names.iter().zip(&words).map(|(n, v)| (n.to_string(), v.to_string())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longitude_boxes() {
        let global: Vec<f64> = (0..144).map(|i| i as f64 * 2.5).collect();
        assert_eq!(longitudes(&global), (-180.0, 180.0, true));
        let (w, e, _) = longitudes(&[10.0, 20.0, 30.0]);
        assert_eq!((w, e), (10.0, 30.0));
        let (w, e, _) = longitudes(&[170.0, 175.0, 185.0, 190.0]);
        assert_eq!((w, e), (170.0, -170.0));
    }

    #[test]
    fn dates_of_other_calendars_stay_valid_timestamps() {
        let t = DateTime::date(2001, 2, 30);
        assert_eq!(rfc3339(&t), "2001-02-28T00:00:00Z");
    }
}

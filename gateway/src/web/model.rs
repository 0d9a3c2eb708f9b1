//! A dataset as its pages show it: groups with their attributes and variables (dimensions,
//! shape, chunks, type, attributes), read from the consolidated `.zmetadata` the gateway
//! serves, so a page shows exactly what a Zarr client sees.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use zarrgate_core::ops::store::parse_json;
use zarrgate_core::zarr::ArrayMetadataV2;

use crate::dataset::{Body, Dataset};

#[derive(Debug, Default)]
pub struct Model {
    /// Groups by path (`""` is the root), in path order.
    pub groups: BTreeMap<String, Group>,
}

#[derive(Debug, Default)]
pub struct Group {
    pub attrs: Map<String, Value>,
    /// Variables by name within the group.
    pub vars: BTreeMap<String, Var>,
}

#[derive(Debug)]
pub struct Var {
    pub dims: Vec<String>,
    pub shape: Vec<u64>,
    pub chunks: Vec<u64>,
    /// NumPy's type string (`<f4`, `|S1`, …).
    pub dtype: String,
    /// The codecs a client applies (`zlib`, `shuffle`, …), in order.
    pub codecs: Vec<String>,
    pub attrs: Map<String, Value>,
}

impl Var {
    pub fn attr_str(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).and_then(Value::as_str)
    }

    /// A coordinate of its own dimension (`time(time)`).
    pub fn is_dimension_coordinate(&self, name: &str) -> bool {
        self.dims.len() == 1 && self.dims[0] == name
    }
}

impl Model {
    /// Reads the root `.zmetadata` of a dataset (every group's, since each group's consolidated
    /// metadata covers its subtree).
    pub fn of(ds: &Dataset) -> Result<Model, String> {
        let object = ds.objects.get(".zmetadata").ok_or("the dataset has no consolidated metadata")?;
        let Body::Inline(bytes) = &object.body else { return Err("the consolidated metadata is not inline".into()) };
        let doc = parse_json(bytes).map_err(|e| format!(".zmetadata is not JSON: {e}"))?;
        let meta = doc.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        let mut model = Model::default();
        for (key, value) in &meta {
            let (path, doc) = key.rsplit_once('/').map_or(("", key.as_str()), |(p, d)| (p, d));
            if doc == ".zgroup" {
                model.groups.entry(path.to_string()).or_default();
            }
            if doc == ".zattrs" && meta.contains_key(&format!("{}.zgroup", slash(path))) {
                model.groups.entry(path.to_string()).or_default().attrs =
                    value.as_object().cloned().unwrap_or_default();
            }
            if doc != ".zarray" {
                continue;
            }
            let Ok(array) = serde_json::from_value::<ArrayMetadataV2>(value.clone()) else { continue };
            let mut attrs =
                meta.get(&format!("{}.zattrs", slash(path))).and_then(Value::as_object).cloned().unwrap_or_default();
            let dims = match attrs.remove("_ARRAY_DIMENSIONS") {
                Some(Value::Array(d)) => d.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                _ => (0..array.shape.len()).map(|i| format!("dim_{i}")).collect(),
            };
            let (group, name) = path.rsplit_once('/').map_or(("", path), |(g, n)| (g, n));
            let codecs = value
                .get("filters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(value.get("compressor").filter(|c| !c.is_null()))
                .filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_string))
                .collect();
            let dtype = value.get("dtype").map_or_else(String::new, |d| match d {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            model.groups.entry(group.to_string()).or_default().vars.insert(
                name.to_string(),
                Var { dims, shape: array.shape.clone(), chunks: array.chunks.clone(), dtype, codecs, attrs },
            );
        }
        model.groups.entry(String::new()).or_default();
        Ok(model)
    }

    pub fn root(&self) -> &Group {
        &self.groups[""]
    }
}

/// `path/` for a group path, `""` for the root.
fn slash(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    }
}

impl Group {
    /// Dimension lengths of the group's variables, by name.
    pub fn dims(&self) -> BTreeMap<&str, u64> {
        let mut out = BTreeMap::new();
        for v in self.vars.values() {
            for (d, n) in v.dims.iter().zip(&v.shape) {
                out.entry(d.as_str()).or_insert(*n);
            }
        }
        out
    }

    /// Names of the variables that are coordinates (of their own dimension, named by a
    /// `coordinates` attribute) or bounds.
    pub fn coordinates(&self) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for (name, v) in &self.vars {
            if v.is_dimension_coordinate(name) {
                out.insert(name.clone());
            }
            for n in v.attr_str("coordinates").unwrap_or("").split_whitespace() {
                out.insert(n.to_string());
            }
            for a in ["bounds", "climatology"] {
                if let Some(b) = v.attr_str(a) {
                    out.insert(b.to_string());
                }
            }
        }
        out.retain(|n| self.vars.contains_key(n));
        out
    }
}

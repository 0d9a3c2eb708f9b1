//! Reference sets and their Kerchunk JSON form.
//!
//! A [`ReferenceSet`] maps every key of a virtual Zarr store to either inline bytes (metadata
//! documents, small coordinates, strings) or a byte range of a source file. URLs are written
//! through templates (`{{u}}`) so a chunk reference costs a few dozen bytes, not a full path.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::report::IndexMeta;

/// Top-level key of our own in the Kerchunk JSON. fsspec ignores unknown top-level keys.
pub const META_KEY: &str = "zarrgate";

/// One entry of a reference set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// Bytes stored in the reference set itself.
    Inline(Vec<u8>),
    /// `length` bytes at `offset` of the source at `url` (which may hold `{{name}}` templates).
    Range { url: String, offset: u64, length: u64 },
    /// A whole source object.
    Whole { url: String },
}

/// Zarr keys mapped to references, plus URL templates and our own index metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReferenceSet {
    pub templates: BTreeMap<String, String>,
    pub refs: BTreeMap<String, Reference>,
    pub meta: Option<IndexMeta>,
}

#[derive(Debug, thiserror::Error)]
pub enum RefsError {
    #[error("reference JSON is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("reference for key {key:?} is malformed: {why}")]
    BadEntry { key: String, why: &'static str },
    #[error("unsupported Kerchunk reference version {0}")]
    Version(u64),
    #[error("inline base64 for key {key:?} does not decode")]
    Base64 {
        key: String,
        #[source]
        source: base64::DecodeError,
    },
}

impl ReferenceSet {
    /// Stores a JSON document (e.g. `.zarray`) inline under `key`.
    pub fn put_json(&mut self, key: impl Into<String>, doc: &impl serde::Serialize) {
        let text = serde_json::to_vec(doc).expect("metadata documents always serialize");
        self.refs.insert(key.into(), Reference::Inline(text));
    }

    /// Total bytes the references point at (ranges only).
    pub fn referenced_bytes(&self) -> u64 {
        self.refs
            .values()
            .map(|r| match r {
                Reference::Range { length, .. } => *length,
                _ => 0,
            })
            .sum()
    }

    /// Replaces the value of URL template `name` (for example to move sources to S3).
    pub fn set_template(&mut self, name: &str, url: impl Into<String>) {
        self.templates.insert(name.to_string(), url.into());
    }

    /// Expands `{{name}}` templates in `url`.
    pub fn render_url(&self, url: &str) -> String {
        let mut out = url.to_string();
        for (name, value) in &self.templates {
            out = out.replace(&format!("{{{{{name}}}}}"), value);
        }
        out
    }

    /// Serializes as Kerchunk v1 JSON.
    pub fn to_json(&self) -> Value {
        let mut refs = Map::new();
        for (key, r) in &self.refs {
            refs.insert(key.clone(), reference_to_json(r));
        }
        let mut top = Map::new();
        top.insert("version".into(), Value::from(1));
        if !self.templates.is_empty() {
            let t = self.templates.iter().map(|(k, v)| (k.clone(), Value::from(v.clone())));
            top.insert("templates".into(), Value::Object(t.collect()));
        }
        top.insert("refs".into(), Value::Object(refs));
        if let Some(meta) = &self.meta {
            top.insert(META_KEY.into(), serde_json::to_value(meta).expect("meta serializes"));
        }
        Value::Object(top)
    }

    /// Writes compact Kerchunk v1 JSON.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_json()).expect("reference JSON serializes")
    }

    /// Parses Kerchunk v0 (a flat map) or v1 JSON. `gen` entries are rejected because we never
    /// write them and silently ignoring them would drop data.
    pub fn from_json(doc: &Value) -> Result<Self, RefsError> {
        let mut set = ReferenceSet::default();
        let Some(obj) = doc.as_object() else {
            return Err(RefsError::BadEntry { key: String::new(), why: "top level is not an object" });
        };
        let refs = match obj.get("version") {
            None => obj,
            Some(v) if v.as_u64() == Some(1) => {
                if obj.contains_key("gen") {
                    return Err(RefsError::BadEntry { key: "gen".into(), why: "gen is not supported" });
                }
                set.templates = parse_templates(obj.get("templates"))?;
                if let Some(meta) = obj.get(META_KEY) {
                    set.meta = Some(serde_json::from_value(meta.clone())?);
                }
                obj.get("refs")
                    .and_then(Value::as_object)
                    .ok_or(RefsError::BadEntry { key: "refs".into(), why: "missing refs object" })?
            }
            Some(v) => return Err(RefsError::Version(v.as_u64().unwrap_or(0))),
        };
        for (key, value) in refs {
            set.refs.insert(key.clone(), reference_from_json(key, value)?);
        }
        Ok(set)
    }
}

fn parse_templates(v: Option<&Value>) -> Result<BTreeMap<String, String>, RefsError> {
    let mut out = BTreeMap::new();
    let Some(v) = v else { return Ok(out) };
    let obj = v.as_object().ok_or(RefsError::BadEntry { key: "templates".into(), why: "not an object" })?;
    for (k, v) in obj {
        let s = v.as_str().ok_or(RefsError::BadEntry { key: k.clone(), why: "template is not a string" })?;
        out.insert(k.clone(), s.to_string());
    }
    Ok(out)
}

fn reference_to_json(r: &Reference) -> Value {
    match r {
        Reference::Inline(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) if !text.starts_with("base64:") => Value::from(text),
            _ => Value::from(format!("base64:{}", base64::engine::general_purpose::STANDARD.encode(bytes))),
        },
        Reference::Range { url, offset, length } => {
            Value::Array(vec![Value::from(url.clone()), Value::from(*offset), Value::from(*length)])
        }
        Reference::Whole { url } => Value::Array(vec![Value::from(url.clone())]),
    }
}

fn reference_from_json(key: &str, value: &Value) -> Result<Reference, RefsError> {
    let bad = |why| RefsError::BadEntry { key: key.to_string(), why };
    match value {
        Value::String(s) => match s.strip_prefix("base64:") {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(Reference::Inline)
                .map_err(|source| RefsError::Base64 { key: key.to_string(), source }),
            None => Ok(Reference::Inline(s.as_bytes().to_vec())),
        },
        // Some writers embed metadata documents as JSON objects rather than strings.
        Value::Object(_) => Ok(Reference::Inline(serde_json::to_vec(value)?)),
        Value::Array(items) => {
            let url = items.first().and_then(Value::as_str).ok_or(bad("url is not a string"))?.to_string();
            match items.len() {
                1 => Ok(Reference::Whole { url }),
                3 => {
                    let offset = items[1].as_u64().ok_or(bad("offset is not an unsigned integer"))?;
                    let length = items[2].as_u64().ok_or(bad("length is not an unsigned integer"))?;
                    Ok(Reference::Range { url, offset, length })
                }
                _ => Err(bad("a reference array has 1 or 3 items")),
            }
        }
        _ => Err(bad("a reference is a string, an object or an array")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ReferenceSet {
        let mut set = ReferenceSet::default();
        set.set_template("u", "/data/a.nc");
        set.put_json(".zgroup", &serde_json::json!({"zarr_format": 2}));
        set.refs.insert("x/0".into(), Reference::Range { url: "{{u}}".into(), offset: 10, length: 20 });
        set.refs.insert("x/1".into(), Reference::Inline(vec![0, 159, 146, 150]));
        set.refs.insert("y/0".into(), Reference::Inline(b"base64:looks-encoded".to_vec()));
        set
    }

    #[test]
    fn v1_round_trip_keeps_every_kind_of_entry() {
        let set = sample();
        let back = ReferenceSet::from_json(&set.to_json()).unwrap();
        assert_eq!(back, set);
    }

    #[test]
    fn binary_and_prefix_colliding_text_are_base64() {
        let json = sample().to_json();
        assert!(json["refs"]["x/1"].as_str().unwrap().starts_with("base64:"));
        assert!(json["refs"]["y/0"].as_str().unwrap().starts_with("base64:"));
        assert_eq!(json["refs"][".zgroup"], "{\"zarr_format\":2}");
    }

    #[test]
    fn templates_render() {
        assert_eq!(sample().render_url("{{u}}"), "/data/a.nc");
    }

    #[test]
    fn v0_flat_map_parses() {
        let doc = serde_json::json!({".zgroup": "{}", "a/0": ["f.nc", 1, 2], "b/0": ["f.nc"]});
        let set = ReferenceSet::from_json(&doc).unwrap();
        assert_eq!(set.refs["a/0"], Reference::Range { url: "f.nc".into(), offset: 1, length: 2 });
        assert_eq!(set.refs["b/0"], Reference::Whole { url: "f.nc".into() });
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        for bad in [
            serde_json::json!({"version": 1, "refs": {"a": [1, 2, 3]}}),
            serde_json::json!({"version": 1, "refs": {"a": ["u", -1, 3]}}),
            serde_json::json!({"version": 1, "refs": {"a": ["u", 1]}}),
            serde_json::json!({"version": 1, "refs": {"a": 5}}),
            serde_json::json!({"version": 1, "refs": {"a": "base64:!!"}}),
            serde_json::json!({"version": 1, "gen": [], "refs": {}}),
            serde_json::json!({"version": 2, "refs": {}}),
            serde_json::json!([1, 2]),
        ] {
            assert!(ReferenceSet::from_json(&bad).is_err(), "{bad}");
        }
    }
}

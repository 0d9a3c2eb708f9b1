//! Builds a reference set key by key, and records what happened to every variable.

use std::collections::BTreeMap;

use zarrgate_core::attrs::Attributes;
use zarrgate_core::refs::{Reference, ReferenceSet};
use zarrgate_core::report::{IndexMeta, SourceFormat, SourceInfo, TranscodeSpec, VariableReport, VariableStatus};
use zarrgate_core::zarr::{consolidated_v2, ArrayMetadataV2, GroupMetadataV2};

/// The URL template every chunk reference uses for the source file.
pub const SOURCE_TEMPLATE: &str = "{{u}}";

/// Attributes that xarray's netCDF4 backend shows as encoding, not as attributes.
const ENCODING_ATTRS: &[&str] = &["least_significant_digit"];

/// Joins a group path and a name into a Zarr path (`""` is the root group).
pub fn join(group: &str, name: &str) -> String {
    if group.is_empty() {
        name.to_string()
    } else {
        format!("{group}/{name}")
    }
}

pub struct StoreBuilder {
    set: ReferenceSet,
    groups: Vec<String>,
    encoding_attrs: BTreeMap<String, String>,
    float32_attrs: std::collections::BTreeSet<String>,
    variables: BTreeMap<String, VariableReport>,
    transcode: BTreeMap<String, TranscodeSpec>,
    attribute_problems: BTreeMap<String, String>,
    view: Option<String>,
}

impl StoreBuilder {
    pub fn new(url: &str) -> Self {
        let mut set = ReferenceSet::default();
        set.set_template("u", url);
        StoreBuilder {
            set,
            groups: Vec::new(),
            encoding_attrs: BTreeMap::new(),
            float32_attrs: Default::default(),
            variables: BTreeMap::new(),
            transcode: BTreeMap::new(),
            attribute_problems: BTreeMap::new(),
            view: None,
        }
    }

    /// Records whose view of the file this is, when not netCDF-C's.
    pub fn view(&mut self, view: Option<&str>) {
        self.view = view.map(str::to_string);
    }

    pub fn group(&mut self, path: &str, attrs: &Attributes) {
        self.groups.push(path.to_string());
        self.set.put_json(join(path, ".zgroup"), &GroupMetadataV2::default());
        self.set.refs.insert(join(path, ".zattrs"), Reference::Inline(attrs.to_zattrs(None).into_bytes()));
    }

    pub fn array(&mut self, path: &str, meta: &ArrayMetadataV2, attrs: &Attributes, dims: &[String]) {
        for name in ["scale_factor", "add_offset"] {
            if let Some(zarrgate_core::attrs::AttrValue::Floats32(_)) = attrs.get(name) {
                self.float32_attrs.insert(format!("{path}@{name}"));
            }
        }
        self.set.put_json(join(path, ".zarray"), meta);
        let zattrs = self.visible_attrs(path, attrs).to_zattrs(Some(dims));
        self.set.refs.insert(join(path, ".zattrs"), Reference::Inline(zattrs.into_bytes()));
    }

    /// The attributes xarray shows for a variable: its netCDF4 backend moves
    /// `least_significant_digit` into the encoding, so it is kept in the report instead.
    pub fn visible_attrs(&mut self, path: &str, attrs: &Attributes) -> Attributes {
        let mut attrs = attrs.clone();
        for name in ENCODING_ATTRS {
            if let Some(v) = attrs.remove(name) {
                let mut one = Attributes::default();
                one.push(*name, v);
                self.encoding_attrs.insert(format!("{path}@{name}"), one.to_zattrs(None));
            }
        }
        attrs
    }

    pub fn chunk_range(&mut self, path: &str, chunk_key: &str, offset: u64, length: u64) {
        let r = Reference::Range { url: SOURCE_TEMPLATE.to_string(), offset, length };
        self.set.refs.insert(join(path, chunk_key), r);
    }

    pub fn chunk_inline(&mut self, path: &str, chunk_key: &str, bytes: Vec<u8>) {
        self.set.refs.insert(join(path, chunk_key), Reference::Inline(bytes));
    }

    pub fn status(&mut self, path: &str, status: VariableStatus, reason: Option<String>) {
        self.variables.insert(path.to_string(), VariableReport { status, reason });
    }

    pub fn transcode(&mut self, path: &str, reason: String, spec: TranscodeSpec) {
        self.status(path, VariableStatus::Transcode, Some(reason));
        self.transcode.insert(path.to_string(), spec);
    }

    pub fn attribute_problem(&mut self, path: &str, name: &str, why: String) {
        self.attribute_problems.insert(format!("{path}@{name}"), why);
    }

    /// Writes a consolidated `.zmetadata` in every group, so that a client opens any group
    /// with one read and never has to list (zarr-python cannot list sub-groups of a
    /// `reference://` store at its root).
    fn consolidate(&mut self) {
        for group in &self.groups {
            let docs = self.set.refs.iter().filter_map(|(k, r)| match r {
                Reference::Inline(b) => Some((k.as_str(), b.as_slice())),
                _ => None,
            });
            let doc = consolidated_v2(group, docs);
            self.set.refs.insert(join(group, ".zmetadata"), Reference::Inline(doc));
        }
    }

    pub fn finish(mut self, source: SourceInfo, format: SourceFormat) -> ReferenceSet {
        self.consolidate();
        self.set.meta = Some(IndexMeta {
            version: 1,
            source,
            format,
            view: self.view,
            variables: self.variables,
            transcode: self.transcode,
            attribute_problems: self.attribute_problems,
            encoding_attrs: self.encoding_attrs,
            float32_attrs: self.float32_attrs,
        });
        self.set
    }
}

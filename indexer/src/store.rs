//! Builds a reference set key by key, and records what happened to every variable.

use std::collections::BTreeMap;

use zarrgate_core::attrs::Attributes;
use zarrgate_core::refs::{Reference, ReferenceSet};
use zarrgate_core::report::{IndexMeta, SourceFormat, SourceInfo, TranscodeSpec, VariableReport, VariableStatus};
use zarrgate_core::zarr::{ArrayMetadataV2, GroupMetadataV2};

/// The URL template every chunk reference uses for the source file.
pub const SOURCE_TEMPLATE: &str = "{{u}}";

/// Joins a group path and a name into a Zarr path (`""` is the root group).
pub fn join(group: &str, name: &str) -> String {
    if group.is_empty() {
        name.to_string()
    } else {
        format!("{group}/{name}")
    }
}

fn key(path: &str, leaf: &str) -> String {
    join(path, leaf)
}

pub struct StoreBuilder {
    set: ReferenceSet,
    variables: BTreeMap<String, VariableReport>,
    transcode: BTreeMap<String, TranscodeSpec>,
    attribute_problems: BTreeMap<String, String>,
}

impl StoreBuilder {
    pub fn new(url: &str) -> Self {
        let mut set = ReferenceSet::default();
        set.set_template("u", url);
        StoreBuilder {
            set,
            variables: BTreeMap::new(),
            transcode: BTreeMap::new(),
            attribute_problems: BTreeMap::new(),
        }
    }

    pub fn group(&mut self, path: &str, attrs: &Attributes) {
        self.set.put_json(key(path, ".zgroup"), &GroupMetadataV2::default());
        self.set.refs.insert(key(path, ".zattrs"), Reference::Inline(attrs.to_zattrs(None).into_bytes()));
    }

    pub fn array(&mut self, path: &str, meta: &ArrayMetadataV2, attrs: &Attributes, dims: &[String]) {
        self.set.put_json(key(path, ".zarray"), meta);
        let zattrs = attrs.to_zattrs(Some(dims));
        self.set.refs.insert(key(path, ".zattrs"), Reference::Inline(zattrs.into_bytes()));
    }

    pub fn chunk_range(&mut self, path: &str, chunk_key: &str, offset: u64, length: u64) {
        let r = Reference::Range { url: SOURCE_TEMPLATE.to_string(), offset, length };
        self.set.refs.insert(key(path, chunk_key), r);
    }

    pub fn chunk_inline(&mut self, path: &str, chunk_key: &str, bytes: Vec<u8>) {
        self.set.refs.insert(key(path, chunk_key), Reference::Inline(bytes));
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

    pub fn finish(mut self, source: SourceInfo, format: SourceFormat) -> ReferenceSet {
        self.set.meta = Some(IndexMeta {
            version: 1,
            source,
            format,
            variables: self.variables,
            transcode: self.transcode,
            attribute_problems: self.attribute_problems,
        });
        self.set
    }
}

//! What the indexer did with every variable of a file.
//!
//! [`IndexMeta`] is written under the top-level key `zarrgate` of each reference JSON (fsspec
//! ignores it) and, on its own, as the per-file report of a tree index. Nothing is dropped
//! silently: every variable of the source appears here with its status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::Fingerprint;
use serde_json::Value;

use crate::zarr::DType;

/// Format of a source file, as sniffed from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    Netcdf3Classic,
    Netcdf3Offset64,
    Netcdf3Cdf5,
    /// NetCDF-4 and NetCDF-4 classic, and plain HDF5 read through netCDF-C.
    Hdf5,
}

/// How a variable's data reaches a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VariableStatus {
    /// Chunks are byte ranges of the source; any Zarr client decodes them.
    Referenced,
    /// Data is stored in the reference set (no byte range exists, or it is a tiny coordinate).
    Inlined,
    /// Present in the source but only the gateway can serve it (a codec or type plain clients
    /// cannot decode). Its description is in [`IndexMeta::transcode`].
    Transcode,
    /// Cannot be represented at all; the reason says why.
    Refused,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VariableReport {
    pub status: VariableStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An HDF5 filter as stored in the dataset creation property list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hdf5Filter {
    pub id: i32,
    pub name: String,
    pub cd_values: Vec<u32>,
}

/// A stored chunk of a variable that needs transcoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChunk {
    pub offset: u64,
    pub length: u64,
    /// HDF5 per-chunk filter mask: bit `i` set means filter `i` was skipped for this chunk.
    pub filter_mask: u32,
}

/// Everything the gateway needs to decode a variable that plain clients cannot read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TranscodeSpec {
    pub shape: Vec<u64>,
    pub chunks: Vec<u64>,
    /// Zarr dtype of the decoded data; `None` for types Zarr v2 cannot name yet (compound,
    /// opaque).
    pub dtype: Option<DType>,
    pub fill_value: Value,
    /// The `.zattrs` document text (it may hold NaN, which `Value` cannot).
    pub zattrs: String,
    /// Filter pipeline in HDF5 write order.
    pub hdf5_filters: Vec<Hdf5Filter>,
    /// Source URL (may use templates).
    pub url: String,
    /// Stored chunks by Zarr chunk key.
    pub stored: BTreeMap<String, StoredChunk>,
    /// The layout of a compound (struct) type, which the gateway serves as a Zarr v2
    /// structured dtype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compound: Option<Compound>,
}

/// A compound type as HDF5 stores it. Served as a Zarr v2 structured dtype whose fields are
/// packed in order: Zarr v2 cannot name padding (zarr-python reads a padding entry as one more
/// field), so the gateway moves each field from its stored offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compound {
    /// Bytes per element as stored, padding included.
    pub size: usize,
    pub fields: Vec<CompoundField>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompoundField {
    pub name: String,
    /// numpy typestring of the field (`<i4`, `>f8`, `|S4`).
    pub typestr: String,
    /// Byte offset in the stored element.
    pub offset: usize,
    pub size: usize,
}

/// Index metadata of one source file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexMeta {
    pub version: u32,
    pub source: SourceInfo,
    pub format: SourceFormat,
    /// Whose view of the file the references reproduce, when not xarray's default engine's:
    /// `h5netcdf` for plain HDF5 that netCDF-C refuses (xarray opens it with
    /// `engine="h5netcdf"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// Variables by path (`var`, `group/sub/var`).
    pub variables: BTreeMap<String, VariableReport>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub transcode: BTreeMap<String, TranscodeSpec>,
    /// Attributes that could not be represented, by `path@name`, with the reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attribute_problems: BTreeMap<String, String>,
    /// Attributes kept out of `.zattrs` because xarray shows them as encoding (by `path@name`,
    /// each as a one-attribute `.zattrs` document).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub encoding_attrs: BTreeMap<String, String>,
    /// `scale_factor` and `add_offset` attributes stored as 32-bit floats, by `path@name`. JSON
    /// has one number type, and xarray decodes packed data to float32 only when these are
    /// float32; joins that serve decoded values use this to pick the same dtype.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub float32_attrs: std::collections::BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub path: String,
    #[serde(flatten)]
    pub fingerprint: Fingerprint,
}

impl IndexMeta {
    pub fn count(&self, status: VariableStatus) -> usize {
        self.variables.values().filter(|v| v.status == status).count()
    }
}

/// The machine-readable report of one file in a tree index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileReport {
    /// Path relative to the indexed root (the dataset id).
    pub file: String,
    pub status: crate::catalog::EntryStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexMeta>,
}

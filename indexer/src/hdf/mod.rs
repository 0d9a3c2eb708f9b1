//! NetCDF-4 / HDF5 to references.
//!
//! netCDF-C gives the logical model (the same one xarray's default engine shows) and HDF5 gives
//! the physical one. The two are read one after the other, never with both libraries holding
//! the file open.
//!
//! Per variable, the decision is:
//! - numeric or `char` data whose filters are zlib/shuffle (with a trailing fletcher32 checksum
//!   cut off each range) becomes byte-range references;
//! - `string` data and compact datasets have no byte range and are inlined;
//! - other codecs, user-defined types and chunks that skip filters are marked for the gateway
//!   to transcode;
//! - unwritten chunks whose fill differs from what Zarr would produce are synthesized.

mod h5attrs;
pub mod h5model;
pub mod model;
mod raw_attr;
pub mod remote_vfd;
pub mod storage;

use std::path::Path;

use serde_json::Value;
use zarrgate_core::attrs::{AttrValue, Attributes};
use zarrgate_core::codec::{encode_chunk, vlen_utf8_encode};
use zarrgate_core::fill::fill_json;
use zarrgate_core::report::{TranscodeSpec, VariableStatus};
use zarrgate_core::zarr::{ArrayMetadataV2, Codec, DType, Endian, Kind};

use crate::error::IndexError;
use crate::store::{StoreBuilder, SOURCE_TEMPLATE};
use model::{ElemType, NcVar};
use storage::{Storage, StorageLayout, StoredChunk};

/// Report reason for data that was never written in a file created without fill values:
/// HDF5 returns whatever memory held, so no reader can reproduce it.
pub const UNDEFINED: &str =
    "never written and fill disabled: values are undefined (missing chunks read as the Zarr fill value)";

/// Synthesized fill chunks beyond this many bytes per variable (all missing chunks together)
/// are left to the gateway.
const MAX_SYNTHESIZED: usize = 4 << 20;

/// Which reader gives the logical model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// netCDF-C's (xarray's default engine), falling back to h5netcdf's when netCDF-C cannot
    /// open the file.
    #[default]
    Netcdf,
    /// h5netcdf's only, from HDF5 alone: for a file netCDF-C crashed on.
    H5netcdf,
}

pub fn translate(path: &Path, url: &str, view: View) -> Result<StoreBuilder, IndexError> {
    let netcdf = match view {
        View::Netcdf => Some(model::read(path)),
        View::H5netcdf => None,
    };
    let file = hdf5::File::open(path).map_err(|source| IndexError::Hdf5 {
        path: path.into(),
        object: "the file".into(),
        source,
    })?;
    let model = match netcdf {
        Some(Ok(mut model)) => {
            h5attrs::extend(&file, &mut model);
            model
        }
        // netCDF-C refuses some plain HDF5 that xarray opens through h5netcdf
        Some(Err(refused @ IndexError::Netcdf { .. })) if opens_not(&refused) => {
            h5model::read(&file).map_err(|why| IndexError::Unsupported {
                path: path.into(),
                object: "the file".into(),
                why: format!(
                    "{}; read as plain HDF5 with h5netcdf's model, it fails too: {why}",
                    zarrgate_core::error_chain(&refused)
                ),
            })?
        }
        Some(Err(other)) => return Err(other),
        None => h5model::read(&file).map_err(|why| IndexError::Unsupported {
            path: path.into(),
            object: "the file, read as plain HDF5 with h5netcdf's model".into(),
            why,
        })?,
    };
    let mut out = StoreBuilder::new(url);
    out.view(model.view);
    for g in &model.groups {
        out.group(&g.path, &g.attrs);
    }
    for (at, why) in &model.attribute_problems {
        let (owner, name) = at.split_once('@').unwrap_or((at, ""));
        out.attribute_problem(owner, name, why.clone());
    }
    for var in &model.vars {
        variable(&mut out, &file, path, var)?;
    }
    if model.view.is_none() {
        for (dataset, why) in storage::hidden_datasets(&file, &model) {
            out.status(&dataset, VariableStatus::Refused, Some(why));
        }
    }
    Ok(out)
}

/// netCDF-C refused to open the file at all (not one object in it).
fn opens_not(e: &IndexError) -> bool {
    matches!(e, IndexError::Netcdf { object, .. } if object == "the file")
}

fn variable(out: &mut StoreBuilder, file: &hdf5::File, path: &Path, var: &NcVar) -> Result<(), IndexError> {
    match &var.elem {
        ElemType::String => {
            inline_strings(out, var);
            return Ok(());
        }
        ElemType::Refused(why) => {
            out.status(&var.path, VariableStatus::Refused, Some(why.clone()));
            return Ok(());
        }
        _ => {}
    }
    let Some(ds) = storage::find(file, &var.group, &var.name) else {
        out.status(&var.path, VariableStatus::Refused, Some("no HDF5 dataset found for this netCDF variable".into()));
        return Ok(());
    };
    let numeric = matches!(var.elem, ElemType::Int { .. } | ElemType::Float { .. } | ElemType::Bool);
    let st = storage::describe(&ds, numeric).map_err(|source| IndexError::Hdf5 {
        path: path.into(),
        object: format!("dataset {}", ds.name()),
        source,
    })?;
    Plan::new(var, &st).write(out);
    Ok(())
}

fn inline_strings(out: &mut StoreBuilder, var: &NcVar) {
    let strings = var.strings.as_deref().unwrap_or_default();
    let meta =
        array_meta(var, DType::new(Kind::VlenString, 0, Endian::NotApplicable), full_chunks(&var.shape), Value::Null);
    let meta = ArrayMetadataV2 { filters: Some(vec![Codec::VlenUtf8 {}]), ..meta };
    let mut attrs = var.attrs.clone();
    attrs.remove("_FillValue");
    out.array(&var.path, &meta, &attrs, &var.dims);
    if !strings.is_empty() {
        out.chunk_inline(&var.path, &zero_key(var.shape.len()), vlen_utf8_encode(strings));
    }
    out.status(&var.path, VariableStatus::Inlined, Some("variable-length strings have no byte range".into()));
}

/// How one numeric or char variable becomes references.
struct Plan<'a> {
    var: &'a NcVar,
    st: &'a Storage,
    dtype: Option<DType>,
    chunks: Vec<u64>,
    fill_value: Value,
    /// Keep `_FillValue` as a plain attribute because the Zarr fill value cannot carry it.
    fill_as_attr: bool,
}

impl<'a> Plan<'a> {
    fn new(var: &'a NcVar, st: &'a Storage) -> Self {
        let dtype = beyond_netcdf(var, st).or_else(|| zarr_dtype(&var.elem, st.byte_order));
        let chunks = match &st.layout {
            StorageLayout::Chunked { chunk, .. } if chunk.len() == var.shape.len() => chunk.clone(),
            _ => full_chunks(&var.shape),
        };
        let fill_value = match (&dtype, &var.fill_attr) {
            (Some(dt), Some(v)) => fill_from_attr(dt, v),
            _ => Value::Null,
        };
        let fill_as_attr = var.fill_attr.is_some() && fill_value.is_null();
        Plan { var, st, dtype, chunks, fill_value, fill_as_attr }
    }

    fn attrs(&self) -> Attributes {
        let mut attrs = self.var.attrs.clone();
        if !self.fill_as_attr {
            attrs.remove("_FillValue");
        }
        attrs
    }

    fn write(self, out: &mut StoreBuilder) {
        if let Some(d) = self.dtype.filter(|d| d.kind != Kind::Bytes && d.size() != self.st.elem_size) {
            let why = format!(
                "HDF5 stores {}-byte elements that netCDF-C presents as {}-byte {} (HDF5 float16, say); \
                 their bytes cannot be referenced as that type",
                self.st.elem_size,
                d.size(),
                d.typestr()
            );
            return out.status(&self.var.path, VariableStatus::Refused, Some(why));
        }
        let Some(dtype) = self.dtype else {
            let why = match &self.var.elem {
                ElemType::UserDefined(d) => d.clone(),
                other => format!("{other:?}"),
            };
            return self.mark_transcode(out, why);
        };
        let (filters, compressor, strip) = match pipeline(&self.st.filters, dtype.size()) {
            Ok(p) => p,
            Err(why) => return self.mark_transcode(out, why),
        };
        let meta = ArrayMetadataV2 {
            compressor: compressor.clone(),
            filters: (!filters.is_empty()).then(|| filters.clone()),
            ..array_meta(self.var, dtype, self.chunks.clone(), self.fill_value.clone())
        };
        match &self.st.layout {
            StorageLayout::Virtual => return self.mark_transcode(out, "virtual dataset layout".into()),
            StorageLayout::Compact { data } => return self.write_compact(out, meta, data),
            _ => {}
        }
        let stored = self.stored();
        if let Some(c) = stored.iter().find(|c| c.filter_mask != 0) {
            let why = format!("chunk {:?} was stored with filters skipped (filter mask {:#x})", c.index, c.filter_mask);
            return self.mark_transcode(out, why);
        }
        if self.st.extent.iter().zip(&self.var.shape).any(|(e, s)| e < s)
            && (self.st.fill_never || self.fills_differ_beyond_extent())
        {
            let why = "the HDF5 extent is shorter than the netCDF shape, and netCDF-C fills the rest with a value the stored chunks do not hold";
            return self.mark_transcode(out, why.into());
        }
        if let Some(c) = stored.iter().find(|c| c.length < strip) {
            return self.mark_transcode(out, format!("chunk {:?} is shorter than its fletcher32 checksum", c.index));
        }
        let grid: u64 = meta.chunk_grid().iter().product();
        let undefined = self.st.fill_never && (stored.len() as u64) < grid;
        let missing = if undefined {
            None
        } else {
            match self.missing_chunk(&meta, &stored, &filters, compressor.as_ref()) {
                Ok(m) => m,
                Err(why) => return self.mark_transcode(out, why),
            }
        };
        out.array(&self.var.path, &meta, &self.attrs(), &self.var.dims);
        for c in &stored {
            let length = c.length - strip;
            out.chunk_range(&self.var.path, &ArrayMetadataV2::chunk_key(&c.index), c.offset, length);
        }
        let synthesized = self.write_missing(out, &meta, &stored, missing);
        let reason = if undefined {
            Some(UNDEFINED.to_string())
        } else {
            (synthesized > 0).then(|| format!("{synthesized} unwritten chunks inlined with the HDF5 fill value"))
        };
        out.status(&self.var.path, VariableStatus::Referenced, reason);
    }

    /// The chunks that hold data (a contiguous dataset is one chunk, if it was ever written).
    fn stored(&self) -> Vec<StoredChunk> {
        match &self.st.layout {
            StorageLayout::Chunked { stored, .. } => stored.clone(),
            StorageLayout::Contiguous { offset: Some(o), length } if *length > 0 => {
                vec![StoredChunk { index: vec![0; self.var.shape.len()], offset: *o, length: *length, filter_mask: 0 }]
            }
            _ => vec![],
        }
    }

    fn write_compact(&self, out: &mut StoreBuilder, meta: ArrayMetadataV2, data: &[u8]) {
        let meta = ArrayMetadataV2 { compressor: None, filters: None, ..meta };
        out.array(&self.var.path, &meta, &self.attrs(), &self.var.dims);
        if !data.is_empty() {
            out.chunk_inline(&self.var.path, &zero_key(self.var.shape.len()), data.to_vec());
        }
        let why = "compact layout: the data lives in the object header, not in a byte range";
        out.status(&self.var.path, VariableStatus::Inlined, Some(why.into()));
    }

    /// The encoded bytes of an unwritten chunk, if Zarr would not read it correctly as missing.
    fn missing_chunk(
        &self,
        meta: &ArrayMetadataV2,
        stored: &[StoredChunk],
        filters: &[Codec],
        compressor: Option<&Codec>,
    ) -> Result<Option<Vec<u8>>, String> {
        let grid: u64 = meta.chunk_grid().iter().product();
        if stored.len() as u64 >= grid {
            return Ok(None);
        }
        let dtype = meta.dtype;
        let hdf5_fill = self.hdf5_fill(&dtype);
        let zarr_fill = zarr_fill_native(&dtype, &meta.fill_value);
        if same_element(&dtype, &hdf5_fill, &zarr_fill) {
            return Ok(None);
        }
        let mut element = hdf5_fill;
        if dtype.endian == Endian::Big {
            element.reverse();
        }
        let too_big = || {
            Err("unwritten chunks hold an HDF5 fill value that Zarr v2 metadata cannot express, and inlining them would be too large".to_string())
        };
        let n = meta.chunks.iter().product::<u64>() as usize;
        if n.saturating_mul(dtype.size()) > MAX_SYNTHESIZED {
            return too_big();
        }
        let raw: Vec<u8> = element.iter().copied().cycle().take(n * dtype.size()).collect();
        let chunk = encode_chunk(&raw, filters, compressor);
        let missing = grid - stored.len() as u64;
        if missing.saturating_mul(chunk.len() as u64) > MAX_SYNTHESIZED as u64 {
            return too_big();
        }
        Ok(Some(chunk))
    }

    /// What HDF5 returns for unwritten elements (zeros when it has no fill value to report).
    fn hdf5_fill(&self, dtype: &DType) -> Vec<u8> {
        self.st.fill.clone().unwrap_or_else(|| vec![0; dtype.size()])
    }

    /// netCDF-C fills reads beyond a variable's HDF5 extent with the netCDF fill value.
    fn fills_differ_beyond_extent(&self) -> bool {
        let Some(dtype) = self.dtype else { return true };
        let nc_fill = match &self.var.fill_attr {
            Some(v) => zarr_fill_native(&dtype, &fill_from_attr(&dtype, v)),
            None => default_nc_fill(&dtype),
        };
        !same_element(&dtype, &self.hdf5_fill(&dtype), &nc_fill)
    }

    fn write_missing(
        &self,
        out: &mut StoreBuilder,
        meta: &ArrayMetadataV2,
        stored: &[StoredChunk],
        chunk: Option<Vec<u8>>,
    ) -> usize {
        let Some(chunk) = chunk else { return 0 };
        let have: std::collections::HashSet<&[u64]> = stored.iter().map(|c| c.index.as_slice()).collect();
        let mut count = 0;
        for idx in grid_positions(&meta.chunk_grid()) {
            if !have.contains(idx.as_slice()) {
                out.chunk_inline(&self.var.path, &ArrayMetadataV2::chunk_key(&idx), chunk.clone());
                count += 1;
            }
        }
        count
    }

    fn mark_transcode(&self, out: &mut StoreBuilder, why: String) {
        let stored = self.stored();
        let spec = TranscodeSpec {
            shape: self.var.shape.clone(),
            chunks: self.chunks.clone(),
            dtype: self.dtype,
            fill_value: self.fill_value.clone(),
            zattrs: out.visible_attrs(&self.var.path, &self.attrs()).to_zattrs(Some(&self.var.dims)),
            hdf5_filters: self.st.filters.clone(),
            url: SOURCE_TEMPLATE.to_string(),
            stored: stored
                .iter()
                .map(|c| {
                    let key = ArrayMetadataV2::chunk_key(&c.index);
                    (
                        key,
                        zarrgate_core::report::StoredChunk {
                            offset: c.offset,
                            length: c.length,
                            filter_mask: c.filter_mask,
                        },
                    )
                })
                .collect(),
            compound: None,
        };
        // A compound is served from its stored chunks only: the gateway would read an unwritten
        // or compact one as zeros, whatever HDF5's fill value for it is.
        let grid: u64 = self.var.shape.iter().zip(&self.chunks).map(|(&n, &c)| n.div_ceil(c.max(1))).product();
        let whole = matches!(self.st.layout, StorageLayout::Chunked { .. } | StorageLayout::Contiguous { .. })
            && stored.len() as u64 == grid;
        let (spec, why) = match &self.st.compound {
            Some(Ok(_)) if self.dtype.is_some() => (spec, why),
            Some(Ok(c)) if whole => (TranscodeSpec { compound: Some(c.clone()), ..spec }, why),
            Some(Ok(_)) => (spec, format!("{why}: compact, or with chunks that were never written")),
            Some(Err(problem)) => (spec, format!("{why}: {problem}")),
            None => (spec, why),
        };
        out.transcode(&self.var.path, why, spec);
    }
}

/// Maps an HDF5 filter pipeline to Zarr v2 filters and compressor, and the number of checksum
/// bytes to cut from each chunk. An error names what plain clients cannot decode.
fn pipeline(
    filters: &[zarrgate_core::report::Hdf5Filter],
    elem_size: usize,
) -> Result<(Vec<Codec>, Option<Codec>, u64), String> {
    let mut rest = filters;
    let mut strip = 0;
    // A checksum over the stored bytes (fletcher32 last) is cut off each byte range.
    if let [head @ .., last] = rest {
        if last.id == FLETCHER32 {
            strip = 4;
            rest = head;
        }
    }
    let mut codecs = Vec::new();
    for (i, f) in rest.iter().enumerate() {
        codecs.push(match f.id {
            1 => Codec::Zlib { level: f.cd_values.first().copied().unwrap_or(4) },
            2 => Codec::Shuffle { elementsize: elem_size },
            // netCDF-C puts fletcher32 first: the checksum of the raw data rides inside the
            // compressed stream, and numcodecs' fletcher32 verifies and removes it. A later
            // shuffle must still see whole elements.
            FLETCHER32 if i == 0 && (4 % elem_size.max(1) == 0 || !rest.iter().any(|f| f.id == 2)) => {
                Codec::Fletcher32 {}
            }
            FLETCHER32 => return Err("fletcher32 checksum does not fit the shuffle element size".into()),
            _ => return Err(format!("HDF5 filter {} (id {}) has no standard Zarr codec", f.name, f.id)),
        });
    }
    let compressor = match codecs.last() {
        Some(Codec::Zlib { .. }) => codecs.pop(),
        _ => None,
    };
    Ok((codecs, compressor, strip))
}

const FLETCHER32: i32 = 3;

/// The types netCDF's model lacks but HDF5 holds and h5netcdf shows (`docs/fidelity.md`):
/// float16 (which netCDF-C presents as float32), complex numbers (h5py's compound `{r, i}`)
/// and opaque data (raw bytes).
fn beyond_netcdf(var: &NcVar, st: &Storage) -> Option<DType> {
    match &var.elem {
        ElemType::Float { .. } if st.float && st.elem_size == 2 => Some(DType::new(Kind::Float, 2, st.byte_order)),
        ElemType::UserDefined(_) => match &st.compound {
            Some(Ok(c)) => complex(c),
            _ => None,
        },
        ElemType::Opaque(_) => Some(DType::new(Kind::Void, st.elem_size, Endian::NotApplicable)),
        _ => None,
    }
}

/// h5py's complex numbers: a compound of exactly two floats of one type named `r` and `i`,
/// packed in that order.
fn complex(c: &zarrgate_core::report::Compound) -> Option<DType> {
    let [r, i] = c.fields.as_slice() else { return None };
    let float = DType::parse(&r.typestr).filter(|t| t.kind == Kind::Float && matches!(t.size, 4 | 8))?;
    let packed = r.name == "r" && i.name == "i" && r.typestr == i.typestr && r.offset == 0 && i.offset == r.size;
    (packed && c.size == 2 * r.size).then(|| DType::new(Kind::Complex, 2 * float.size, float.endian))
}

fn zarr_dtype(elem: &ElemType, order: Endian) -> Option<DType> {
    match elem {
        ElemType::Int { signed, size } => Some(DType::new(if *signed { Kind::Int } else { Kind::UInt }, *size, order)),
        ElemType::Float { size } => Some(DType::new(Kind::Float, *size, order)),
        ElemType::Char => Some(DType::new(Kind::Bytes, 1, Endian::NotApplicable)),
        ElemType::Fixed(n) => Some(DType::new(Kind::Bytes, *n, Endian::NotApplicable)),
        ElemType::Bool => Some(DType::new(Kind::Bool, 1, Endian::NotApplicable)),
        ElemType::String | ElemType::UserDefined(_) | ElemType::Opaque(_) | ElemType::Refused(_) => None,
    }
}

fn array_meta(var: &NcVar, dtype: DType, chunks: Vec<u64>, fill_value: Value) -> ArrayMetadataV2 {
    ArrayMetadataV2::plain(&var.shape, &chunks, dtype, fill_value)
}

fn full_chunks(shape: &[u64]) -> Vec<u64> {
    shape.iter().map(|&n| n.max(1)).collect()
}

fn zero_key(ndim: usize) -> String {
    ArrayMetadataV2::chunk_key(&vec![0; ndim])
}

/// The Zarr fill value for a `_FillValue` attribute, or null when the attribute's value cannot
/// be stored in the variable's dtype exactly (then it stays a plain attribute).
fn fill_from_attr(dtype: &DType, v: &AttrValue) -> Value {
    let one = |xs: &[f64]| (xs.len() == 1).then(|| xs[0]);
    match (dtype.kind, v) {
        (Kind::Float, AttrValue::Floats(x) | AttrValue::Floats32(x)) => {
            one(x).map(zarrgate_core::fill::float_json).unwrap_or(Value::Null)
        }
        (Kind::Float, AttrValue::Ints(x)) if x.len() == 1 => Value::from(x[0] as f64),
        (Kind::Int, AttrValue::Ints(x)) if x.len() == 1 => Value::from(x[0]),
        (Kind::UInt, AttrValue::UInts(x)) if x.len() == 1 => Value::from(x[0]),
        (Kind::Int, AttrValue::UInts(x)) if x.len() == 1 && x[0] <= i64::MAX as u64 => Value::from(x[0] as i64),
        (Kind::UInt, AttrValue::Ints(x)) if x.len() == 1 && x[0] >= 0 => Value::from(x[0] as u64),
        (Kind::Bytes, AttrValue::Str(s)) if s.len() == 1 => fill_json(dtype, s.as_bytes()).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// The native-order element bytes Zarr produces for a missing chunk with this fill value.
fn zarr_fill_native(dtype: &DType, fill: &Value) -> Vec<u8> {
    let n = dtype.size();
    let f = |x: f64| match n {
        2 => half::f16::from_f64(x).to_le_bytes().to_vec(),
        4 => (x as f32).to_le_bytes().to_vec(),
        _ => x.to_le_bytes().to_vec(),
    };
    match (dtype.kind, fill) {
        (_, Value::Null) => vec![0; n],
        (Kind::Float, Value::String(s)) => f(match s.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            _ => f64::NEG_INFINITY,
        }),
        (Kind::Float, v) => f(v.as_f64().unwrap_or(0.0)),
        (Kind::Int, v) => v.as_i64().unwrap_or(0).to_le_bytes()[..n].to_vec(),
        (Kind::UInt, v) => v.as_u64().unwrap_or(0).to_le_bytes()[..n].to_vec(),
        _ => vec![0; n],
    }
}

/// netCDF-C's default fill values (`NC_FILL_*`), native order.
fn default_nc_fill(dtype: &DType) -> Vec<u8> {
    match (dtype.kind, dtype.size()) {
        // netCDF has no float16 (nor complex or opaque types), so no default fill either
        (Kind::Float, 2) | (Kind::Complex | Kind::Void, _) => vec![0; dtype.size()],
        (Kind::Float, 4) => 9.969_21e36_f32.to_le_bytes().to_vec(),
        (Kind::Float, _) => 9.969_209_968_386_869e36_f64.to_le_bytes().to_vec(),
        (Kind::Int, 1) => vec![0x81],
        (Kind::Int, 2) => (-32767i16).to_le_bytes().to_vec(),
        (Kind::Int, 4) => (-2147483647i32).to_le_bytes().to_vec(),
        (Kind::Int, _) => (-9223372036854775806i64).to_le_bytes().to_vec(),
        (Kind::UInt, n) => {
            let mut b = vec![0xff; n];
            b[0] = 0xff - u8::from(n == 8);
            b
        }
        _ => vec![0; dtype.size()],
    }
}

/// Equal element values, with every NaN equal to every other NaN.
fn same_element(dtype: &DType, a: &[u8], b: &[u8]) -> bool {
    let nan = |x: &[u8]| match x.len() {
        2 => half::f16::from_le_bytes([x[0], x[1]]).is_nan(),
        4 => f32::from_le_bytes(x.try_into().expect("4")).is_nan(),
        8 => f64::from_le_bytes(x.try_into().expect("8")).is_nan(),
        _ => false,
    };
    a == b || (dtype.kind == Kind::Float && nan(a) && nan(b))
}

/// Every position of a chunk grid, in C order.
fn grid_positions(grid: &[u64]) -> impl Iterator<Item = Vec<u64>> + '_ {
    let total: u64 = grid.iter().product();
    (0..total).map(move |mut flat| {
        let mut idx = vec![0; grid.len()];
        for (i, &n) in grid.iter().enumerate().rev() {
            idx[i] = flat % n;
            flat /= n;
        }
        idx
    })
}

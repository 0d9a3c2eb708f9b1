//! NetCDF-3 (classic, 64-bit offset, CDF-5) to references, from a header parsed in Rust.
//!
//! Fixed-size variables are contiguous: one chunk each. Record variables interleave, one slab
//! per record at `begin + r * recsize`, so each record is a chunk, except that:
//! - a file with a single record variable stores its records back to back, so several records
//!   make one chunk;
//! - a record variable whose slabs are smaller than a reference entry (a `time` coordinate, say)
//!   is gathered and inlined as one chunk, which is both smaller and one request instead of
//!   `numrecs`.

pub mod header;

use std::os::unix::fs::FileExt;
use std::path::Path;

use zarrgate_core::attrs::{AttrValue, Attributes};
use zarrgate_core::fill::fill_json;
use zarrgate_core::report::{SourceFormat, VariableStatus};
use zarrgate_core::zarr::{ArrayMetadataV2, DType, Endian, Kind, Order, Separator, ZarrFormat2};

use crate::error::IndexError;
use crate::store::StoreBuilder;
use header::{Attr, Header, NcType, Var, Variant};

/// Record variables with slabs up to this many bytes are gathered and inlined...
const SMALL_SLAB: u64 = 32;
/// ...as long as the whole variable stays below this size.
const MAX_GATHERED: u64 = 1 << 20;
/// Target size of a multi-record chunk in a single-record-variable file.
const RECORD_CHUNK_TARGET: u64 = 8 << 20;

pub fn format_of(variant: Variant) -> SourceFormat {
    match variant {
        Variant::Classic => SourceFormat::Netcdf3Classic,
        Variant::Offset64 => SourceFormat::Netcdf3Offset64,
        Variant::Cdf5 => SourceFormat::Netcdf3Cdf5,
    }
}

/// Where a NetCDF-3 file's bytes come from: a local file, or a remote object read by range.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;

    /// Several ranges at once (`(offset, length)`), which a remote reader may fetch in fewer
    /// requests.
    fn read_ranges(&self, ranges: &[(u64, u64)]) -> std::io::Result<Vec<Vec<u8>>> {
        ranges
            .iter()
            .map(|&(offset, length)| {
                let mut buf = vec![0u8; length as usize];
                self.read_exact_at(&mut buf, offset).map(|()| buf)
            })
            .collect()
    }
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

/// Reads and parses the header, reading more of the file until the header fits.
pub fn read_header(file: &dyn ReadAt, path: &Path, size: u64) -> Result<Header, IndexError> {
    let mut want = size.min(1 << 16);
    loop {
        let mut buf = vec![0u8; want as usize];
        file.read_exact_at(&mut buf, 0).map_err(|source| IndexError::Io { path: path.into(), source })?;
        match header::parse_prefix(&buf, size) {
            Err(e) if e.what == header::HeaderProblem::UnexpectedEnd && want < size => {
                want = (want * 4).min(size);
            }
            other => return other.map_err(|source| IndexError::Nc3Header { path: path.into(), source }),
        }
    }
}

/// Translates a parsed NetCDF-3 file into references.
pub fn translate(file: &dyn ReadAt, path: &Path, size: u64, url: &str) -> Result<StoreBuilder, IndexError> {
    let h = read_header(file, path, size)?;
    check_sizes(&h, path, size)?;
    let layout = Layout::new(&h, size);
    let mut out = StoreBuilder::new(url);
    out.group("", &attributes(&h.attrs));
    for var in &h.vars {
        let v = VarLayout::new(&h, &layout, var);
        v.check_fits(path, &var.name, size)?;
        let (meta, mut attrs) = array_meta(var, &v);
        let dims: Vec<String> = var.dim_ids.iter().map(|&d| h.dims[d].name.clone()).collect();
        if meta.fill_value.is_null() {
            // Not expressible as a Zarr fill value: keep it as a plain attribute.
            if let Some(a) = var.attrs.iter().find(|a| a.name == "_FillValue") {
                attrs.push("_FillValue", attr_value(a));
            }
        }
        out.array(&var.name, &meta, &attrs, &dims);
        write_chunks(&mut out, file, path, var, &v, &meta)?;
    }
    Ok(out)
}

/// Rejects variables whose size overflows, before any arithmetic on them (netCDF-C refuses
/// such headers with `NC_EVARSIZE`). Whether the data fits the file is checked per variable.
fn check_sizes(h: &Header, path: &Path, size: u64) -> Result<(), IndexError> {
    for v in &h.vars {
        let slab = v.dim_ids.iter().try_fold(v.nc_type.size() as u64, |acc, &d| acc.checked_mul(h.dims[d].len.max(1)));
        if slab.and_then(|s| s.checked_add(v.begin)).is_none() {
            return Err(IndexError::Truncated {
                path: path.into(),
                variable: v.name.clone(),
                needed: slab.unwrap_or(u64::MAX),
                size,
            });
        }
    }
    Ok(())
}

/// Record geometry of a file.
struct Layout {
    numrecs: u64,
    recsize: u64,
}

impl Layout {
    fn new(h: &Header, file_size: u64) -> Self {
        let rec_vars: Vec<&Var> = h.vars.iter().filter(|v| is_record(h, v)).collect();
        let padded: Vec<u64> = rec_vars.iter().map(|v| slab_bytes(h, v).div_ceil(4) * 4).collect();
        // With exactly one record variable, its records are not padded.
        let recsize = match rec_vars.as_slice() {
            [only] => slab_bytes(h, only),
            _ => padded.iter().fold(0u64, |a, &b| a.saturating_add(b)),
        };
        let numrecs = h.numrecs.unwrap_or_else(|| {
            // Streaming files: the record count follows from the file size.
            let first = rec_vars.iter().map(|v| v.begin).min().unwrap_or(file_size);
            file_size.saturating_sub(first).checked_div(recsize).unwrap_or(0)
        });
        Layout { numrecs, recsize }
    }
}

fn is_record(h: &Header, v: &Var) -> bool {
    v.dim_ids.first().is_some_and(|&d| h.dims[d].len == 0)
}

/// Bytes of one record of `v` (or of the whole variable, if it is fixed-size).
fn slab_bytes(h: &Header, v: &Var) -> u64 {
    let skip = usize::from(is_record(h, v));
    v.dim_ids[skip..].iter().map(|&d| h.dims[d].len).product::<u64>() * v.nc_type.size() as u64
}

/// Where one variable's bytes are.
struct VarLayout {
    shape: Vec<u64>,
    record: bool,
    slab: u64,
    begin: u64,
    numrecs: u64,
    recsize: u64,
}

impl VarLayout {
    fn new(h: &Header, l: &Layout, var: &Var) -> Self {
        let record = is_record(h, var);
        let shape = var.dim_ids.iter().map(|&d| if h.dims[d].len == 0 { l.numrecs } else { h.dims[d].len }).collect();
        VarLayout { shape, record, slab: slab_bytes(h, var), begin: var.begin, numrecs: l.numrecs, recsize: l.recsize }
    }

    fn total_bytes(&self) -> u64 {
        if self.record {
            self.slab * self.numrecs
        } else {
            self.slab
        }
    }

    fn record_offset(&self, r: u64) -> u64 {
        self.begin + r * self.recsize
    }

    fn check_fits(&self, path: &Path, name: &str, size: u64) -> Result<(), IndexError> {
        let end = match (self.record, self.numrecs) {
            (false, _) => self.begin.checked_add(self.slab),
            (true, 0) => Some(0),
            (true, n) => (n - 1)
                .checked_mul(self.recsize)
                .and_then(|x| x.checked_add(self.begin))
                .and_then(|x| x.checked_add(self.slab)),
        };
        match end {
            Some(end) if end <= size => Ok(()),
            end => Err(IndexError::Truncated {
                path: path.into(),
                variable: name.to_string(),
                needed: end.unwrap_or(u64::MAX),
                size,
            }),
        }
    }

    /// Records per chunk: 1 normally; in a file whose only record variable is this one, the
    /// largest divisor of `numrecs` that keeps chunks near the target size (Zarr v2 needs the
    /// last chunk to be full-size on disk).
    fn records_per_chunk(&self) -> u64 {
        if !self.record || self.recsize != self.slab || self.slab == 0 || self.numrecs == 0 {
            return 1;
        }
        let max = (RECORD_CHUNK_TARGET / self.slab).clamp(1, self.numrecs);
        (1..=max).rev().find(|k| self.numrecs.is_multiple_of(*k)).unwrap_or(1)
    }

    fn gathered(&self) -> bool {
        self.record && self.numrecs > 1 && self.slab <= SMALL_SLAB && self.total_bytes() <= MAX_GATHERED
    }
}

fn dtype(t: NcType) -> DType {
    let (kind, size) = match t {
        NcType::Byte => (Kind::Int, 1),
        NcType::Char => (Kind::Bytes, 1),
        NcType::Short => (Kind::Int, 2),
        NcType::Int => (Kind::Int, 4),
        NcType::Float => (Kind::Float, 4),
        NcType::Double => (Kind::Float, 8),
        NcType::UByte => (Kind::UInt, 1),
        NcType::UShort => (Kind::UInt, 2),
        NcType::UInt => (Kind::UInt, 4),
        NcType::Int64 => (Kind::Int, 8),
        NcType::UInt64 => (Kind::UInt, 8),
    };
    DType::new(kind, size, Endian::Big)
}

fn array_meta(var: &Var, v: &VarLayout) -> (ArrayMetadataV2, Attributes) {
    let dtype = dtype(var.nc_type);
    let mut chunks: Vec<u64> = v.shape.iter().map(|&n| n.max(1)).collect();
    if v.record && !v.gathered() {
        chunks[0] = v.records_per_chunk();
    }
    let fill = var
        .attrs
        .iter()
        .find(|a| a.name == "_FillValue" && a.nc_type == var.nc_type && a.nelems == 1)
        .and_then(|a| fill_json(&dtype, &a.data).ok())
        .unwrap_or(serde_json::Value::Null);
    let meta = ArrayMetadataV2 {
        zarr_format: ZarrFormat2,
        shape: v.shape.clone(),
        chunks,
        dtype,
        compressor: None,
        fill_value: fill,
        order: Order::C,
        filters: None,
        dimension_separator: Separator::Dot,
    };
    let attrs = Attributes(
        var.attrs.iter().filter(|a| a.name != "_FillValue").map(|a| (a.name.clone(), attr_value(a))).collect(),
    );
    (meta, attrs)
}

fn write_chunks(
    out: &mut StoreBuilder,
    file: &dyn ReadAt,
    path: &Path,
    var: &Var,
    v: &VarLayout,
    meta: &ArrayMetadataV2,
) -> Result<(), IndexError> {
    if v.total_bytes() == 0 {
        out.status(&var.name, VariableStatus::Referenced, Some("empty: no data".into()));
        return Ok(());
    }
    let zeros =
        |first: u64| ArrayMetadataV2::chunk_key(&[&[first][..], &vec![0; v.shape.len().saturating_sub(1)]].concat());
    if !v.record {
        let key = ArrayMetadataV2::chunk_key(&vec![0; v.shape.len()]);
        out.chunk_range(&var.name, &key, v.begin, v.slab);
        out.status(&var.name, VariableStatus::Referenced, None);
    } else if v.gathered() {
        let ranges: Vec<(u64, u64)> = (0..v.numrecs).map(|r| (v.record_offset(r), v.slab)).collect();
        let slabs = file.read_ranges(&ranges).map_err(|source| IndexError::Io { path: path.into(), source })?;
        out.chunk_inline(&var.name, &zeros(0), slabs.concat());
        let why = format!("{} records of {} bytes gathered into one inline chunk", v.numrecs, v.slab);
        out.status(&var.name, VariableStatus::Inlined, Some(why));
    } else {
        let k = meta.chunks[0];
        for c in 0..v.numrecs / k {
            out.chunk_range(&var.name, &zeros(c), v.record_offset(c * k), v.slab * k);
        }
        out.status(&var.name, VariableStatus::Referenced, None);
    }
    Ok(())
}

fn attributes(attrs: &[Attr]) -> Attributes {
    Attributes(attrs.iter().map(|a| (a.name.clone(), attr_value(a))).collect())
}

/// An attribute as netCDF4-python shows it: text without NUL padding, or numbers.
fn attr_value(a: &Attr) -> AttrValue {
    let d = &a.data;
    let be = |n: usize| d.chunks_exact(n);
    match a.nc_type {
        NcType::Char => AttrValue::Str(String::from_utf8_lossy(d).replace('\0', "")),
        NcType::Byte => AttrValue::Ints(d.iter().map(|&b| b as i8 as i64).collect()),
        NcType::UByte => AttrValue::UInts(d.iter().map(|&b| b as u64).collect()),
        NcType::Short => AttrValue::Ints(be(2).map(|b| i16::from_be_bytes([b[0], b[1]]) as i64).collect()),
        NcType::UShort => AttrValue::UInts(be(2).map(|b| u16::from_be_bytes([b[0], b[1]]) as u64).collect()),
        NcType::Int => AttrValue::Ints(be(4).map(|b| i32::from_be_bytes(b.try_into().unwrap()) as i64).collect()),
        NcType::UInt => AttrValue::UInts(be(4).map(|b| u32::from_be_bytes(b.try_into().unwrap()) as u64).collect()),
        NcType::Int64 => AttrValue::Ints(be(8).map(|b| i64::from_be_bytes(b.try_into().unwrap())).collect()),
        NcType::UInt64 => AttrValue::UInts(be(8).map(|b| u64::from_be_bytes(b.try_into().unwrap())).collect()),
        NcType::Float => AttrValue::Floats32(be(4).map(|b| f32::from_be_bytes(b.try_into().unwrap()) as f64).collect()),
        NcType::Double => AttrValue::Floats(be(8).map(|b| f64::from_be_bytes(b.try_into().unwrap())).collect()),
    }
}

//! Where a variable's bytes are in an HDF5 file: layout, filter pipeline, fill value and the
//! stored chunks (listed with `H5Dchunk_iter`, which is linear in the number of chunks).

use hdf5::dataset::Layout;
use hdf5::datatype::ByteOrder;
use zarrgate_core::report::{Compound, CompoundField, Hdf5Filter};
use zarrgate_core::zarr::Endian;

/// A chunk as stored: its grid position, byte range and per-chunk filter mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredChunk {
    pub index: Vec<u64>,
    pub offset: u64,
    pub length: u64,
    pub filter_mask: u32,
}

#[derive(Clone, Debug)]
pub enum StorageLayout {
    Chunked {
        chunk: Vec<u64>,
        stored: Vec<StoredChunk>,
    },
    /// `offset` is `None` when the data was never written.
    Contiguous {
        offset: Option<u64>,
        length: u64,
    },
    /// Data kept in the object header: the raw bytes, in file byte order.
    Compact {
        data: Vec<u8>,
    },
    Virtual,
}

#[derive(Clone, Debug)]
pub struct Storage {
    /// HDF5 extent, which can be shorter than the netCDF shape along unlimited dimensions.
    pub extent: Vec<u64>,
    pub byte_order: Endian,
    /// Bytes per element as stored (netCDF-C may present another type, e.g. HDF5 float16 as
    /// float).
    pub elem_size: usize,
    pub layout: StorageLayout,
    pub filters: Vec<Hdf5Filter>,
    /// The fill value HDF5 returns for unwritten elements, as raw native-order bytes (`None`
    /// for types where it is not a number).
    pub fill: Option<Vec<u8>>,
    /// The file was written without fill values (`H5D_FILL_TIME_NEVER`): unwritten data is
    /// undefined.
    pub fill_never: bool,
    /// For a compound type: its stored layout, or why it cannot be served.
    pub compound: Option<Result<Compound, String>>,
    /// The stored type is an IEEE float (of `elem_size` bytes: 2 for float16).
    pub float: bool,
}

/// Finds the HDF5 dataset behind a netCDF variable. netCDF-C stores a variable that has the
/// name of a dimension but is not its coordinate as `_nc4_non_coord_{name}`.
pub fn find(file: &hdf5::File, group: &str, name: &str) -> Option<hdf5::Dataset> {
    let base = if group.is_empty() { String::from("/") } else { format!("/{group}/") };
    [format!("{base}_nc4_non_coord_{name}"), format!("{base}{name}")].iter().find_map(|p| file.dataset(p).ok())
}

/// HDF5 datasets that netCDF-C does not show as variables (so neither does xarray), other than
/// the dimension scales behind netCDF dimensions. They are reported, never dropped silently.
pub fn hidden_datasets(file: &hdf5::File, model: &super::model::NcModel) -> Vec<(String, String)> {
    let known: std::collections::HashSet<String> = model
        .vars
        .iter()
        .flat_map(|v| [v.path.clone(), crate::store::join(&v.group, &format!("_nc4_non_coord_{}", v.name))])
        .collect();
    let mut out = Vec::new();
    walk_datasets(file, "", 0, &mut |path, ds| {
        if known.contains(path) || is_dimension_scale(ds) {
            return;
        }
        let what = ds.dtype().and_then(|t| t.to_descriptor()).map_or_else(|e| e.to_string(), |d| format!("{d:?}"));
        out.push((
            path.to_string(),
            format!("netCDF-C does not expose this dataset (type {what}), so xarray does not show it"),
        ));
    });
    out
}

/// Visits every dataset under `group`. Depth is bounded because hard links can form cycles.
fn walk_datasets(group: &hdf5::Group, prefix: &str, depth: usize, visit: &mut dyn FnMut(&str, &hdf5::Dataset)) {
    if depth > 32 {
        return;
    }
    for name in group.member_names().unwrap_or_default() {
        let path = crate::store::join(prefix, &name);
        if let Ok(ds) = group.dataset(&name) {
            visit(&path, &ds);
        } else if let Ok(g) = group.group(&name) {
            walk_datasets(&g, &path, depth + 1, visit);
        }
    }
}

pub(super) fn is_dimension_scale(ds: &hdf5::Dataset) -> bool {
    ds.attr("CLASS")
        .and_then(|a| a.read_scalar::<hdf5::types::FixedAscii<16>>())
        .is_ok_and(|c| c.as_str() == "DIMENSION_SCALE")
}

pub fn describe(ds: &hdf5::Dataset, numeric: bool) -> hdf5::Result<Storage> {
    let dtype = ds.dtype()?;
    let byte_order = match dtype.byte_order() {
        ByteOrder::BigEndian => Endian::Big,
        ByteOrder::LittleEndian => Endian::Little,
        _ => Endian::NotApplicable,
    };
    let extent: Vec<u64> = ds.shape().iter().map(|&n| n as u64).collect();
    let layout = match ds.layout() {
        Layout::Chunked => chunked(ds)?,
        Layout::Contiguous => StorageLayout::Contiguous { offset: ds.offset(), length: ds.storage_size() },
        Layout::Compact => StorageLayout::Compact { data: read_raw(ds, dtype.size())? },
        Layout::Virtual => StorageLayout::Virtual,
    };
    let dcpl = ds.dcpl()?;
    let fill = if numeric { fill_bytes(ds, &dcpl, dtype.size()) } else { None };
    let fill_never = dcpl.fill_time() == hdf5::dataset::FillTime::Never;
    let filters = filters(&dcpl)?;
    let compound = compound_layout(ds);
    let float = is_float(ds);
    Ok(Storage { extent, byte_order, elem_size: dtype.size(), layout, filters, fill, fill_never, compound, float })
}

fn is_float(ds: &hdf5::Dataset) -> bool {
    use hdf5_sys::h5t::{self, H5T_class_t as C};
    let _guard = hdf5_sys::LOCK.lock();
    // SAFETY: the type id is closed after use.
    unsafe {
        let tid = hdf5_sys::h5d::H5Dget_type(ds.id());
        if tid < 0 {
            return false;
        }
        let float = h5t::H5Tget_class(tid) == C::H5T_FLOAT;
        h5t::H5Tclose(tid);
        float
    }
}

fn chunked(ds: &hdf5::Dataset) -> hdf5::Result<StorageLayout> {
    let chunk: Vec<u64> = ds.chunk().unwrap_or_default().iter().map(|&n| n as u64).collect();
    let mut stored = Vec::new();
    ds.chunks_visit(|info| {
        let index = info.offset.iter().zip(&chunk).map(|(&o, &c)| o / c.max(1)).collect();
        stored.push(StoredChunk { index, offset: info.addr, length: info.size, filter_mask: info.filter_mask });
        0
    })?;
    Ok(StorageLayout::Chunked { chunk, stored })
}

/// Reads a (compact) dataset's elements without conversion, in file byte order.
fn read_raw(ds: &hdf5::Dataset, elem_size: usize) -> hdf5::Result<Vec<u8>> {
    let mut buf = vec![0u8; ds.size() * elem_size];
    let _guard = hdf5_sys::LOCK.lock();
    // SAFETY: the buffer holds every element of the dataset in its own file type, and the type
    // id is closed after use.
    let status = unsafe {
        let tid = hdf5_sys::h5d::H5Dget_type(ds.id());
        let s = hdf5_sys::h5d::H5Dread(
            ds.id(),
            tid,
            hdf5_sys::h5s::H5S_ALL,
            hdf5_sys::h5s::H5S_ALL,
            hdf5_sys::h5p::H5P_DEFAULT,
            buf.as_mut_ptr().cast(),
        );
        hdf5_sys::h5t::H5Tclose(tid);
        s
    };
    if status < 0 {
        return Err("H5Dread of compact data failed".into());
    }
    Ok(buf)
}

/// The fill value HDF5 writes into unwritten elements, in native byte order; zeros when the
/// library default applies.
fn fill_bytes(ds: &hdf5::Dataset, dcpl: &hdf5::plist::DatasetCreate, size: usize) -> Option<Vec<u8>> {
    let _guard = hdf5_sys::LOCK.lock();
    // SAFETY: `buf` is as large as the native type the fill value is written in (which can be
    // larger than the file type: float16 without a native half type reads as float); the type
    // ids are checked and closed after use.
    unsafe {
        let file_type = hdf5_sys::h5d::H5Dget_type(ds.id());
        if file_type < 0 {
            return None;
        }
        let native = hdf5_sys::h5t::H5Tget_native_type(file_type, hdf5_sys::h5t::H5T_direction_t::H5T_DIR_DEFAULT);
        hdf5_sys::h5t::H5Tclose(file_type);
        if native < 0 {
            return None;
        }
        let native_size = hdf5_sys::h5t::H5Tget_size(native);
        let mut buf = vec![0u8; native_size.max(size)];
        let status = hdf5_sys::h5p::H5Pget_fill_value(dcpl.id(), native, buf.as_mut_ptr().cast());
        hdf5_sys::h5t::H5Tclose(native);
        // Only a fill of the stored size is comparable with the stored bytes.
        (status >= 0 && native_size == size).then_some(buf)
    }
}

/// The dataset's filter pipeline, in write order, with the client data exactly as stored.
///
/// Not `ds.filters()`, which turns a pipeline it cannot parse into an empty one (so compressed
/// chunks would be referenced as raw data), nor hdf5-metno's `Filter`, which drops the
/// parameters HDF5 computed for the dataset (n-bit and scale-offset types, szip's
/// bits per pixel and pixels per scanline) that the gateway needs to decode them.
fn filters(dcpl: &hdf5::plist::DatasetCreate) -> hdf5::Result<Vec<Hdf5Filter>> {
    let _guard = hdf5_sys::LOCK.lock();
    // SAFETY: `dcpl` is an open property list; every buffer passed is as long as the length
    // passed with it.
    let count = unsafe { hdf5_sys::h5p::H5Pget_nfilters(dcpl.id()) };
    if count < 0 {
        return Err("H5Pget_nfilters failed".into());
    }
    let mut out = Vec::new();
    for index in 0..count as u32 {
        let mut cd_values = vec![0u32; 64];
        let (mut flags, mut config, mut name) = (0u32, 0u32, [0 as std::ffi::c_char; 64]);
        loop {
            let mut n = cd_values.len();
            let id = unsafe {
                hdf5_sys::h5p::H5Pget_filter2(
                    dcpl.id(),
                    index,
                    &mut flags,
                    &mut n,
                    cd_values.as_mut_ptr(),
                    name.len(),
                    name.as_mut_ptr(),
                    &mut config,
                )
            };
            if id < 0 {
                return Err(format!("H5Pget_filter2 failed for filter {index}").into());
            }
            if n > cd_values.len() {
                cd_values.resize(n, 0);
                continue;
            }
            cd_values.truncate(n);
            out.push(Hdf5Filter { id, name: filter_name(id).to_string(), cd_values });
            break;
        }
    }
    Ok(out)
}

/// The stored layout of a compound dataset's elements (`None` for other types). Fields must be
/// numbers, enums or fixed-length strings: zarr-python reads neither nested structured dtypes
/// nor variable-length fields.
fn compound_layout(ds: &hdf5::Dataset) -> Option<Result<Compound, String>> {
    use hdf5_sys::h5t::{self, H5T_class_t as C};
    let _guard = hdf5_sys::LOCK.lock();
    // SAFETY: every type id opened here is closed before returning; member names are freed
    // with HDF5's allocator.
    unsafe {
        let tid = hdf5_sys::h5d::H5Dget_type(ds.id());
        if tid < 0 {
            return None;
        }
        let out = if h5t::H5Tget_class(tid) == C::H5T_COMPOUND {
            let mut fields = Vec::new();
            let mut problem = None;
            for i in 0..h5t::H5Tget_nmembers(tid).max(0) as u32 {
                let ptr = h5t::H5Tget_member_name(tid, i);
                let name = if ptr.is_null() {
                    String::new()
                } else {
                    std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned()
                };
                if !ptr.is_null() {
                    hdf5_sys::h5::H5free_memory(ptr.cast());
                }
                let member = h5t::H5Tget_member_type(tid, i);
                let size = h5t::H5Tget_size(member);
                let order = if h5t::H5Tget_order(member) == h5t::H5T_order_t::H5T_ORDER_BE { '>' } else { '<' };
                let order = if size == 1 { '|' } else { order };
                let integer = |t| if h5t::H5Tget_sign(t) == h5t::H5T_sign_t::H5T_SGN_2 { 'i' } else { 'u' };
                let typestr = match h5t::H5Tget_class(member) {
                    C::H5T_INTEGER => Some(format!("{order}{}{size}", integer(member))),
                    C::H5T_ENUM => {
                        let base = h5t::H5Tget_super(member);
                        let t = format!("{order}{}{size}", integer(base));
                        h5t::H5Tclose(base);
                        Some(t)
                    }
                    C::H5T_FLOAT => Some(format!("{order}f{size}")),
                    C::H5T_STRING if h5t::H5Tis_variable_str(member) == 0 => Some(format!("|S{size}")),
                    other => {
                        problem.get_or_insert_with(|| format!("member {name:?} is of class {other:?}, which zarr-python cannot read inside a structured dtype"));
                        None
                    }
                };
                h5t::H5Tclose(member);
                if let Some(typestr) = typestr {
                    fields.push(CompoundField { name, typestr, offset: h5t::H5Tget_member_offset(tid, i), size });
                }
            }
            Some(match problem {
                Some(p) => Err(p),
                None => Ok(Compound { size: h5t::H5Tget_size(tid), fields }),
            })
        } else {
            None
        };
        h5t::H5Tclose(tid);
        out
    }
}

/// Names of registered HDF5 filter ids (the HDF Group's registry).
pub fn filter_name(id: i32) -> &'static str {
    match id {
        1 => "deflate",
        2 => "shuffle",
        3 => "fletcher32",
        4 => "szip",
        5 => "nbit",
        6 => "scaleoffset",
        307 => "bzip2",
        32000 => "lzf",
        32001 => "blosc",
        32004 => "lz4",
        32008 => "bitshuffle",
        32013 => "zfp",
        32015 => "zstd",
        32017 => "sz",
        32019 => "jpeg",
        32024 => "sz3",
        32026 => "blosc2",
        _ => "unknown",
    }
}

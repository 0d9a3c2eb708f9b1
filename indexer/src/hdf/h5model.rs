//! The model h5netcdf shows of a plain HDF5 file, for the files netCDF-C refuses: what
//! `xr.open_dataset(path, engine="h5netcdf", group=G)` shows, read from HDF5 alone.
//!
//! The rules, and the files they were checked on, are in `docs/research/h5netcdf-model.md`.
//! In short:
//! - Groups are the objects `h5py.visititems` lists: hard links only, each object once, by the
//!   first path in depth-first name order (links can form cycles).
//! - Each group is modelled as h5netcdf models it when opened with `group=G`: the root and
//!   every group on the path to `G` are scanned in turn, and `phony_dim_N` numbers run on
//!   across them. A dataset without dimension scales gets, per length, as many phony dimensions
//!   as the most any dataset of the group needs; equal lengths within one dataset are distinct
//!   dimensions, across datasets they are shared.
//! - Every dataset is a variable, except dimension scales that say they are "not a netCDF
//!   variable"; committed datatypes and subgroups are not.

use hdf5::types::{FloatSize, IntSize, TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{IndexType, IterationOrder, LinkType, LocationToken, LocationType};
use zarrgate_core::attrs::{AttrValue, Attributes};

use super::model::{ElemType, NcGroup, NcModel, NcVar};
use crate::store::join;

/// The name of this model in reports (`zarrgate.model`): xarray's engine that shows it.
pub const NAME: &str = "h5netcdf";

const NOT_A_VARIABLE: &str = "This is a netCDF dimension but not a netCDF variable.";

/// Attributes h5netcdf keeps to itself.
const HIDDEN: [&str; 8] = [
    "REFERENCE_LIST",
    "CLASS",
    "DIMENSION_LIST",
    "NAME",
    "_Netcdf4Dimid",
    "_Netcdf4Coordinates",
    "_nc3_strict",
    "_NCProperties",
];

/// Reads the model of every group. An error is a text naming the object.
pub fn read(file: &hdf5::File) -> Result<NcModel, String> {
    let e = |what: &str, err: hdf5::Error| format!("{what}: {err}");
    let mut model = NcModel { view: Some(NAME), ..NcModel::default() };
    for path in group_paths(file).map_err(|err| e("listing groups", err))? {
        let group = open_group(file, &path).map_err(|err| e(&format!("group /{path}"), err))?;
        let attrs = attributes(&group, &path, &mut model.attribute_problems);
        model.groups.push(NcGroup { path: path.clone(), attrs });
        let scope = Scope::of(file, &path)?;
        for name in &scope.chain.last().expect("the root at least").vars {
            model.vars.push(variable(&group, &path, name, &scope, &mut model.attribute_problems)?);
        }
    }
    Ok(model)
}

fn open_group(file: &hdf5::File, path: &str) -> hdf5::Result<hdf5::Group> {
    file.group(&format!("/{path}"))
}

/// Group paths as `h5py.visititems` finds them: `""` for the root, then depth first in name
/// order, following hard links only and each group once.
fn group_paths(file: &hdf5::File) -> hdf5::Result<Vec<String>> {
    let root = file.group("/")?;
    let mut seen = vec![root.loc_info()?.token];
    let mut out = vec![String::new()];
    visit(&root, "", &mut seen, &mut out, 0)?;
    Ok(out)
}

fn visit(
    g: &hdf5::Group,
    prefix: &str,
    seen: &mut Vec<LocationToken>,
    out: &mut Vec<String>,
    depth: usize,
) -> hdf5::Result<()> {
    if depth > 64 {
        return Err("groups nested over 64 deep".into());
    }
    let mut hard = Vec::new();
    g.iter_visit(IndexType::Name, IterationOrder::Increasing, |name, info| {
        if info.link_type == LinkType::Hard {
            hard.push(name.to_string());
        }
        Ok(())
    })?;
    for name in hard {
        let info = g.loc_info_by_name(&name)?;
        if seen.contains(&info.token) {
            continue;
        }
        seen.push(info.token);
        if info.loc_type == LocationType::Group {
            let path = join(prefix, &name);
            out.push(path.clone());
            visit(&g.group(&name)?, &path, seen, out, depth + 1)?;
        }
    }
    Ok(())
}

/// A group's links in h5py's order: creation order when the group tracks it, else bytewise
/// by name.
fn links(g: &hdf5::Group) -> hdf5::Result<Vec<String>> {
    let mut named = Vec::new();
    g.iter_visit(IndexType::Name, IterationOrder::Increasing, |name, info| {
        named.push((name.to_string(), info.creation_order));
        Ok(())
    })?;
    if named.iter().all(|(_, order)| order.is_some()) {
        named.sort_by_key(|(_, order)| *order);
    } else {
        named.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    }
    Ok(named.into_iter().map(|(name, _)| name).collect())
}

/// A dimension a group defines: a dimension scale, or a phony dimension.
#[derive(Clone, Debug)]
struct Dim {
    name: String,
    size: u64,
    unlimited: bool,
}

/// One scanned group: its dimensions in h5netcdf's order (scales in link order, then phony
/// dimensions) and its variables.
struct Scanned {
    dims: Vec<Dim>,
    vars: Vec<String>,
}

/// The groups an open of `group=G` scans: the root, then each group on the path to `G`.
struct Scope {
    chain: Vec<Scanned>,
}

impl Scope {
    fn of(file: &hdf5::File, path: &str) -> Result<Scope, String> {
        let mut counter = 0usize;
        let mut chain = Vec::new();
        let mut at = String::new();
        chain.push(scan(&file.group("/").map_err(|e| e.to_string())?, "", &mut counter)?);
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at = join(&at, part);
            let g = open_group(file, &at).map_err(|e| format!("group /{at}: {e}"))?;
            chain.push(scan(&g, &at, &mut counter)?);
        }
        Ok(Scope { chain })
    }

    fn here(&self) -> &Scanned {
        self.chain.last().expect("the root at least")
    }

    /// A dimension visible from the group: its own first, then its ancestors', nearest first.
    fn visible(&self, name: &str) -> Option<&Dim> {
        self.chain.iter().rev().find_map(|s| s.dims.iter().find(|d| d.name == name))
    }
}

fn scan(group: &hdf5::Group, path: &str, counter: &mut usize) -> Result<Scanned, String> {
    let fail = |what: String, e: hdf5::Error| format!("/{}: {e}", join(path, &what));
    let mut dims = Vec::new();
    let mut vars = Vec::new();
    // lengths phony dimensions must cover, in first-appearance order, with their multiplicity
    let mut need: Vec<(u64, usize)> = Vec::new();
    for name in links(group).map_err(|e| fail(String::new(), e))? {
        match group.loc_type_by_name(&name).map_err(|e| fail(name.clone(), e))? {
            LocationType::Dataset => {}
            _ => continue,
        }
        let ds = group.dataset(&name).map_err(|e| fail(name.clone(), e))?;
        let shape: Vec<u64> = ds.shape().iter().map(|&n| n as u64).collect();
        if super::storage::is_dimension_scale(&ds) {
            // h5netcdf sizes an unlimited scale by the longest axis attached to it; netCDF
            // writers keep the two equal, and a difference makes xarray refuse the group (two
            // sizes for one dimension), never show other values
            let unlimited = ds.space().is_ok_and(|s| s.maxdims() == [None]);
            let size = shape.first().copied().unwrap_or(0);
            dims.push(Dim { name: name.clone(), size, unlimited });
        } else if !shape.is_empty() {
            let scales = scale_counts(&ds);
            if scales.iter().all(|&n| n == 0) {
                let mut counts: Vec<(u64, usize)> = Vec::new();
                for &s in &shape {
                    match counts.iter_mut().find(|(len, _)| *len == s) {
                        Some((_, k)) => *k += 1,
                        None => counts.push((s, 1)),
                    }
                }
                for (s, k) in counts {
                    match need.iter_mut().find(|(len, _)| *len == s) {
                        Some((_, have)) => *have = (*have).max(k),
                        None => need.push((s, k)),
                    }
                }
            } else if scales.contains(&0) {
                return Err(format!(
                    "/{}: some axes have dimension scales and others not, which h5netcdf refuses too",
                    join(path, &name)
                ));
            }
        }
        if !text_attr(&ds, "NAME").is_some_and(|n| n.contains(NOT_A_VARIABLE)) {
            vars.push(name);
        }
    }
    for (size, k) in need {
        let labeled = dims.iter().filter(|d| !d.unlimited && d.size == size).count();
        for _ in labeled..k {
            dims.push(Dim { name: format!("phony_dim_{counter}"), size, unlimited: false });
            *counter += 1;
        }
    }
    Ok(Scanned { dims, vars })
}

/// The scales attached to each axis (0 for every axis without `DIMENSION_LIST`).
fn scale_counts(ds: &hdf5::Dataset) -> Vec<usize> {
    match dimension_list(ds) {
        Some(axes) => axes.iter().map(Vec::len).collect(),
        None => vec![0; ds.ndim()],
    }
}

/// The names (basenames) of the scales attached to each axis, from `DIMENSION_LIST`.
fn dimension_list(ds: &hdf5::Dataset) -> Option<Vec<Vec<String>>> {
    use hdf5::types::VarLenArray;
    let attr = ds.attr("DIMENSION_LIST").ok()?;
    let axes = attr.read_raw::<VarLenArray<hdf5::ObjectReference1>>().ok()?;
    let file = ds.file().ok()?;
    Some(
        axes.iter()
            .map(|refs| {
                refs.iter()
                    .map(|r| match file.dereference(r) {
                        Ok(hdf5::ReferencedObject::Dataset(d)) => basename(&d.name()),
                        Ok(hdf5::ReferencedObject::Group(g)) => basename(&g.name()),
                        _ => String::new(),
                    })
                    .collect()
            })
            .collect(),
    )
}

fn basename(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// One variable of group `path`, with its dimensions named as h5netcdf names them.
fn variable(
    group: &hdf5::Group,
    path: &str,
    name: &str,
    scope: &Scope,
    problems: &mut Vec<(String, String)>,
) -> Result<NcVar, String> {
    let vpath = join(path, name);
    let fail = |e: hdf5::Error| format!("/{vpath}: {e}");
    let ds = group.dataset(name).map_err(fail)?;
    let extent: Vec<u64> = ds.shape().iter().map(|&n| n as u64).collect();
    let null = ds.space().is_ok_and(|s| s.is_null());
    let dims = if null { Vec::new() } else { dims_of(&ds, name, &extent, scope) };
    let shape = if dims.len() == extent.len() {
        dims.iter().zip(&extent).map(|(d, &e)| scope.visible(d).map_or(e, |dim| dim.size.max(e))).collect()
    } else {
        extent.clone()
    };
    let attrs = attributes(&ds, &vpath, problems);
    let elem = if null {
        ElemType::Refused("a null dataspace holds no value (h5py reads h5py.Empty; xarray cannot load it)".into())
    } else {
        elem_type(&ds)
    };
    let strings = match elem {
        ElemType::String => Some(read_strings(&ds).map_err(fail)?),
        _ => None,
    };
    Ok(NcVar {
        path: vpath,
        group: path.to_string(),
        name: name.to_string(),
        dims,
        shape,
        elem,
        fill_attr: attrs.get("_FillValue").cloned(),
        attrs,
        strings,
    })
}

/// h5netcdf's rules, in order: attached scales (the last one per axis); a dataset named as a
/// visible dimension is that dimension's; a scalar has none; otherwise the group's own
/// dimensions of each axis length, the j-th axis of a length taking the j-th such dimension.
fn dims_of(ds: &hdf5::Dataset, name: &str, extent: &[u64], scope: &Scope) -> Vec<String> {
    if let Some(axes) = dimension_list(ds) {
        if !axes.is_empty() && axes.iter().all(|refs| !refs.is_empty()) {
            return axes.into_iter().map(|mut refs| refs.pop().expect("not empty")).collect();
        }
    }
    if scope.visible(name).is_some() {
        return vec![name.to_string()];
    }
    let own = &scope.here().dims;
    let mut used: Vec<(u64, usize)> = Vec::new();
    extent
        .iter()
        .map(|&s| {
            let j = match used.iter_mut().find(|(len, _)| *len == s) {
                Some((_, j)) => {
                    *j += 1;
                    *j - 1
                }
                None => {
                    used.push((s, 1));
                    0
                }
            };
            own.iter().filter(|d| d.size == s).nth(j).map_or_else(|| format!("phony_dim_len{s}"), |d| d.name.clone())
        })
        .collect()
}

fn elem_type(ds: &hdf5::Dataset) -> ElemType {
    use hdf5_sys::h5t::H5T_class_t as C;
    use TypeDescriptor as T;
    let int = |signed, s: IntSize| ElemType::Int { signed, size: s as usize };
    match ds.dtype().and_then(|t| t.to_descriptor()) {
        Ok(T::Integer(s)) => int(true, s),
        Ok(T::Unsigned(s)) => int(false, s),
        Ok(T::Enum(e)) => ElemType::Int { signed: e.signed, size: e.size as usize },
        Ok(T::Float(FloatSize::U4)) => ElemType::Float { size: 4 },
        Ok(T::Float(FloatSize::U8)) => ElemType::Float { size: 8 },
        Ok(T::Boolean) => ElemType::Bool,
        Ok(T::FixedAscii(1) | T::FixedUnicode(1)) => ElemType::Char,
        Ok(T::FixedAscii(n) | T::FixedUnicode(n)) => ElemType::Fixed(n),
        Ok(T::VarLenAscii | T::VarLenUnicode) => ElemType::String,
        Ok(T::Compound(c)) => ElemType::UserDefined(format!("compound type of {} fields", c.fields.len())),
        Ok(T::Reference(_)) => ElemType::Refused("object or region references have no Zarr counterpart".into()),
        Ok(T::VarLenArray(_)) => {
            ElemType::Refused("variable-length sequences have no Zarr counterpart (h5netcdf refuses most too)".into())
        }
        Ok(T::FixedArray(..)) => ElemType::Refused("HDF5 array types (a sub-array per element)".into()),
        // types the hdf5 crate does not describe: float16 and opaque
        Err(e) => match class_and_size(ds) {
            Some((C::H5T_FLOAT, 2)) => ElemType::Float { size: 2 },
            Some((C::H5T_OPAQUE, n)) => ElemType::Opaque(format!("opaque type of {n} bytes")),
            _ => ElemType::Refused(format!("HDF5 type not understood: {e}")),
        },
    }
}

fn class_and_size(ds: &hdf5::Dataset) -> Option<(hdf5_sys::h5t::H5T_class_t, usize)> {
    use hdf5_sys::h5t;
    let _guard = hdf5_sys::LOCK.lock();
    // SAFETY: the type id is closed after use.
    unsafe {
        let tid = hdf5_sys::h5d::H5Dget_type(ds.id());
        if tid < 0 {
            return None;
        }
        let out = (h5t::H5Tget_class(tid), h5t::H5Tget_size(tid));
        h5t::H5Tclose(tid);
        Some(out)
    }
}

fn read_strings(ds: &hdf5::Dataset) -> hdf5::Result<Vec<String>> {
    match ds.dtype()?.to_descriptor()? {
        TypeDescriptor::VarLenAscii => {
            Ok(ds.read_raw::<VarLenAscii>()?.iter().map(|s| s.as_str().to_string()).collect())
        }
        _ => Ok(ds.read_raw::<VarLenUnicode>()?.iter().map(|s| s.as_str().to_string()).collect()),
    }
}

/// A string attribute's text (fixed or variable length), if it is one.
fn text_attr(loc: &hdf5::Location, name: &str) -> Option<String> {
    let attr = loc.attr(name).ok()?;
    match attr_value(&attr) {
        Ok(AttrValue::Str(s)) => Some(s),
        _ => None,
    }
}

/// The attributes h5netcdf shows; those JSON cannot hold are recorded as problems.
fn attributes(loc: &hdf5::Location, owner: &str, problems: &mut Vec<(String, String)>) -> Attributes {
    let mut out = Attributes::default();
    for name in loc.attr_names().unwrap_or_default() {
        if HIDDEN.contains(&name.as_str()) {
            continue;
        }
        let value = loc.attr(&name).map_err(|e| e.to_string()).and_then(|a| attr_value(&a));
        match value {
            Ok(v) => out.push(name, v),
            Err(why) => problems.push((format!("{owner}@{name}"), why)),
        }
    }
    out
}

/// An attribute's value as h5py reads it and h5netcdf shows it.
fn attr_value(attr: &hdf5::Attribute) -> Result<AttrValue, String> {
    use TypeDescriptor as T;
    let t = attr.dtype().and_then(|t| t.to_descriptor()).map_err(|e| e.to_string())?;
    if attr.space().is_ok_and(|s| s.is_null()) {
        return match t {
            T::FixedAscii(_) | T::FixedUnicode(_) | T::VarLenAscii | T::VarLenUnicode => {
                Ok(AttrValue::Str(String::new()))
            }
            _ => Err("an empty attribute (null dataspace) of a non-string type".into()),
        };
    }
    match &t {
        T::VarLenAscii => {
            Ok(strs(attr.read_raw::<VarLenAscii>().map_err(|e| e.to_string())?.iter().map(|s| s.as_str())))
        }
        T::VarLenUnicode => {
            Ok(strs(attr.read_raw::<VarLenUnicode>().map_err(|e| e.to_string())?.iter().map(|s| s.as_str())))
        }
        T::Compound(_) => {
            Err("a compound value: JSON, and so Zarr attributes, cannot hold one (h5netcdf shows it)".into())
        }
        T::Reference(_) => Err("an object reference, which h5netcdf cannot show either".into()),
        T::VarLenArray(_) | T::FixedArray(..) => Err(format!("HDF5 type {t:?} has no JSON counterpart")),
        _ => {
            let (bytes, size, big) = raw_attr(attr)?;
            decode(&t, &bytes, size, big)
        }
    }
}

fn strs<'a>(items: impl Iterator<Item = &'a str>) -> AttrValue {
    let mut v: Vec<String> = items.map(str::to_string).collect();
    if v.len() == 1 {
        AttrValue::Str(v.pop().expect("one"))
    } else {
        AttrValue::Strs(v)
    }
}

/// Numbers and fixed strings from an attribute's bytes as stored.
fn decode(t: &TypeDescriptor, bytes: &[u8], size: usize, big: bool) -> Result<AttrValue, String> {
    use zarrgate_core::fill::{sign_extend, zero_extend};
    use TypeDescriptor as T;
    let size = size.max(1);
    let words: Vec<Vec<u8>> = bytes
        .chunks_exact(size)
        .map(|w| {
            let mut w = w.to_vec();
            if big {
                w.reverse();
            }
            w
        })
        .collect();
    Ok(match t {
        T::Integer(_) | T::Enum(hdf5::types::EnumType { signed: true, .. }) => {
            AttrValue::Ints(words.iter().map(|w| sign_extend(w)).collect())
        }
        T::Unsigned(_) | T::Enum(_) => AttrValue::UInts(words.iter().map(|w| zero_extend(w)).collect()),
        T::Boolean => AttrValue::Bools(words.iter().map(|w| w.iter().any(|&b| b != 0)).collect()),
        T::Float(_) => {
            let values = words.iter().map(|w| match w.len() {
                2 => half::f16::from_le_bytes([w[0], w[1]]).to_f64(),
                4 => f32::from_le_bytes(w[..4].try_into().expect("4")) as f64,
                _ => f64::from_le_bytes(w[..8].try_into().expect("8")),
            });
            if size == 8 {
                AttrValue::Floats(values.collect())
            } else {
                AttrValue::Floats32(values.collect())
            }
        }
        // numpy drops trailing NULs of fixed-length strings; h5netcdf decodes them as UTF-8
        T::FixedAscii(_) | T::FixedUnicode(_) => {
            let texts: Vec<String> = bytes
                .chunks_exact(size)
                .map(|w| {
                    let end = w.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                    String::from_utf8_lossy(&w[..end]).into_owned()
                })
                .collect();
            strs(texts.iter().map(String::as_str))
        }
        other => return Err(format!("HDF5 type {other:?} has no JSON counterpart")),
    })
}

/// Reads an attribute's elements in its own (file) type: the bytes, the element size and
/// whether they are big-endian.
fn raw_attr(attr: &hdf5::Attribute) -> Result<(Vec<u8>, usize, bool), String> {
    use hdf5_sys::{h5a, h5t};
    let n = attr.size();
    let _guard = hdf5_sys::LOCK.lock();
    // SAFETY: the buffer holds `n` elements of the attribute's own type; the type id is
    // closed after use.
    unsafe {
        let tid = h5a::H5Aget_type(attr.id());
        if tid < 0 {
            return Err("H5Aget_type failed".into());
        }
        let size = h5t::H5Tget_size(tid);
        let big = h5t::H5Tget_order(tid) == h5t::H5T_order_t::H5T_ORDER_BE;
        let mut buf = vec![0u8; n * size];
        let status = h5a::H5Aread(attr.id(), tid, buf.as_mut_ptr().cast());
        h5t::H5Tclose(tid);
        if status < 0 {
            return Err("H5Aread failed".into());
        }
        Ok((buf, size, big))
    }
}

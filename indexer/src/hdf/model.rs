//! The logical model of a NetCDF-4/HDF5 file as netCDF-C (and so xarray's default engine)
//! sees it: groups, dimension names (including `phony_dim_N` for plain HDF5), variables, types
//! and attributes.

use std::path::Path;

use netcdf::types::{FloatType, IntType, NcVariableType};
use netcdf::AttributeValue;
use zarrgate_core::attrs::{AttrValue, Attributes};

use crate::error::IndexError;
use crate::store::join;

/// What a variable's elements are, as far as the indexer cares.
#[derive(Clone, Debug, PartialEq)]
pub enum ElemType {
    Int {
        signed: bool,
        size: usize,
    },
    Float {
        size: usize,
    },
    Char,
    /// Fixed-length byte strings of more than one byte (plain HDF5; netCDF has only `char`).
    Fixed(usize),
    /// HDF5 booleans (h5py's enum `{FALSE, TRUE}`), which h5netcdf shows as `bool`.
    Bool,
    String,
    /// Compound, enum and non-string vlen types, described for the report.
    UserDefined(String),
    /// Opaque blobs: netCDF4-python skips them; h5netcdf shows them as raw bytes (`|V<n>`).
    Opaque(String),
    /// Types that have no Zarr counterpart, with the reason.
    Refused(String),
}

#[derive(Clone, Debug)]
pub struct NcVar {
    /// Zarr path: `name` or `group/sub/name`.
    pub path: String,
    pub group: String,
    pub name: String,
    pub dims: Vec<String>,
    pub shape: Vec<u64>,
    pub elem: ElemType,
    pub attrs: Attributes,
    /// `_FillValue` as netCDF reports it (also in `attrs`).
    pub fill_attr: Option<AttrValue>,
    /// Strings read at scan time, for `String` variables (they have no byte range).
    pub strings: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
pub struct NcGroup {
    pub path: String,
    pub attrs: Attributes,
}

#[derive(Debug, Default)]
pub struct NcModel {
    /// The reader whose view this is, when not netCDF-C's ([`super::h5model::NAME`]).
    pub view: Option<&'static str>,
    pub groups: Vec<NcGroup>,
    pub vars: Vec<NcVar>,
    /// Attributes netCDF-C could not read, by `path@name`.
    pub attribute_problems: Vec<(String, String)>,
}

/// Opens `path` with netCDF-C and reads its model.
pub fn read(path: &Path) -> Result<NcModel, IndexError> {
    let file = netcdf::open(path).map_err(|source| IndexError::Netcdf {
        path: path.into(),
        object: "the file".into(),
        source,
    })?;
    let root = file.root().ok_or_else(|| IndexError::Unsupported {
        path: path.into(),
        object: "/".into(),
        why: "netCDF-C returned no root group".into(),
    })?;
    let mut model = NcModel::default();
    walk(path, &root, "", &mut model)?;
    Ok(model)
}

fn walk(path: &Path, g: &netcdf::Group<'_>, gpath: &str, model: &mut NcModel) -> Result<(), IndexError> {
    let attrs = attributes(g.attributes(), gpath, &mut model.attribute_problems, &|name| {
        super::raw_attr::enum_attr(path, gpath, None, name)
    });
    model.groups.push(NcGroup { path: gpath.to_string(), attrs });
    for v in g.variables() {
        let var = variable(path, &v, gpath, &mut model.attribute_problems)?;
        model.vars.push(var);
    }
    for child in g.groups() {
        walk(path, &child, &join(gpath, &child.name()), model)?;
    }
    Ok(())
}

fn variable(
    path: &Path,
    v: &netcdf::Variable<'_>,
    group: &str,
    problems: &mut Vec<(String, String)>,
) -> Result<NcVar, IndexError> {
    let name = v.name();
    let vpath = join(group, &name);
    let attrs = attributes(v.attributes(), &vpath, problems, &|attr| {
        super::raw_attr::enum_attr(path, group, Some(&name), attr)
    });
    let elem = elem_type(&v.vartype());
    let strings = match elem {
        ElemType::String => Some(read_strings(v).map_err(|source| IndexError::Netcdf {
            path: path.into(),
            object: format!("strings of {vpath}"),
            source,
        })?),
        _ => None,
    };
    Ok(NcVar {
        path: vpath,
        group: group.to_string(),
        dims: v.dimensions().iter().map(|d| d.name()).collect(),
        shape: v.dimensions().iter().map(|d| d.len() as u64).collect(),
        fill_attr: attrs.get("_FillValue").cloned(),
        name,
        elem,
        attrs,
        strings,
    })
}

fn elem_type(t: &NcVariableType) -> ElemType {
    match t {
        NcVariableType::Int(i) => {
            let (signed, size) = match i {
                IntType::I8 => (true, 1),
                IntType::I16 => (true, 2),
                IntType::I32 => (true, 4),
                IntType::I64 => (true, 8),
                IntType::U8 => (false, 1),
                IntType::U16 => (false, 2),
                IntType::U32 => (false, 4),
                IntType::U64 => (false, 8),
            };
            ElemType::Int { signed, size }
        }
        NcVariableType::Float(FloatType::F32) => ElemType::Float { size: 4 },
        NcVariableType::Float(FloatType::F64) => ElemType::Float { size: 8 },
        NcVariableType::Char => ElemType::Char,
        NcVariableType::String => ElemType::String,
        NcVariableType::Compound(c) => ElemType::UserDefined(format!("compound type {:?}", c.name)),
        // xarray shows an enum variable as its base integer type (the names go into the
        // encoding), and HDF5 stores it as that integer: plain references serve it.
        NcVariableType::Enum(e) => {
            use netcdf::types::EnumTypeValues as V;
            let (signed, size) = match e.fieldvalues {
                V::I8(_) => (true, 1),
                V::I16(_) => (true, 2),
                V::I32(_) => (true, 4),
                V::I64(_) => (true, 8),
                V::U8(_) => (false, 1),
                V::U16(_) => (false, 2),
                V::U32(_) => (false, 4),
                V::U64(_) => (false, 8),
            };
            ElemType::Int { signed, size }
        }
        NcVariableType::Opaque(o) => ElemType::Opaque(format!("opaque type {:?} of {} bytes", o.name, o.size)),
        NcVariableType::Vlen(v) => ElemType::UserDefined(format!("vlen type {:?}", v.name)),
    }
}

/// Reads attributes; `fallback` gets a second chance at those the netcdf crate cannot read
/// (enum-typed ones). What neither can read is recorded as a problem, never dropped silently.
fn attributes<'a>(
    iter: impl Iterator<Item = netcdf::Attribute<'a>>,
    owner: &str,
    problems: &mut Vec<(String, String)>,
    fallback: &dyn Fn(&str) -> Option<AttrValue>,
) -> Attributes {
    let mut out = Attributes::default();
    for a in iter {
        match a.value() {
            Ok(v) => out.push(a.name(), attr_value(v)),
            Err(e) => match fallback(a.name()) {
                Some(v) => out.push(a.name(), v),
                None => problems.push((format!("{owner}@{}", a.name()), e.to_string())),
            },
        }
    }
    out
}

/// netCDF4-python returns one value as a scalar and several as an array; `AttrValue` keeps a
/// vector and the writer does the same.
fn attr_value(v: AttributeValue) -> AttrValue {
    use AttributeValue as A;
    let ints = |v: Vec<i64>| AttrValue::Ints(v);
    let uints = |v: Vec<u64>| AttrValue::UInts(v);
    match v {
        A::Uchar(x) => uints(vec![x.into()]),
        A::Uchars(x) => uints(x.into_iter().map(Into::into).collect()),
        A::Schar(x) => ints(vec![x.into()]),
        A::Schars(x) => ints(x.into_iter().map(Into::into).collect()),
        A::Ushort(x) => uints(vec![x.into()]),
        A::Ushorts(x) => uints(x.into_iter().map(Into::into).collect()),
        A::Short(x) => ints(vec![x.into()]),
        A::Shorts(x) => ints(x.into_iter().map(Into::into).collect()),
        A::Uint(x) => uints(vec![x.into()]),
        A::Uints(x) => uints(x.into_iter().map(Into::into).collect()),
        A::Int(x) => ints(vec![x.into()]),
        A::Ints(x) => ints(x.into_iter().map(Into::into).collect()),
        A::Ulonglong(x) => uints(vec![x]),
        A::Ulonglongs(x) => uints(x),
        A::Longlong(x) => ints(vec![x]),
        A::Longlongs(x) => ints(x),
        A::Float(x) => AttrValue::Floats32(vec![x.into()]),
        A::Floats(x) => AttrValue::Floats32(x.into_iter().map(Into::into).collect()),
        A::Double(x) => AttrValue::Floats(vec![x]),
        A::Doubles(x) => AttrValue::Floats(x),
        A::Str(s) => AttrValue::Str(s),
        A::Strs(s) if s.len() == 1 => AttrValue::Str(s.into_iter().next().expect("one")),
        A::Strs(s) => AttrValue::Strs(s),
    }
}

/// Reads every element of a `string` variable. netCDF-C hands back `char*` pointers that the
/// caller must free with `nc_free_string`.
fn read_strings(v: &netcdf::Variable<'_>) -> Result<Vec<String>, netcdf::Error> {
    let raw = v.get_raw_values(..)?;
    let mut ptrs: Vec<*mut std::ffi::c_char> = raw
        .chunks_exact(std::mem::size_of::<usize>())
        .map(|b| usize::from_ne_bytes(b.try_into().expect("pointer-sized")) as *mut std::ffi::c_char)
        .collect();
    let strings = ptrs
        .iter()
        .map(|&p| {
            if p.is_null() {
                String::new()
            } else {
                // SAFETY: netCDF-C returned NUL-terminated strings it allocated; they stay valid
                // until nc_free_string below.
                unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        })
        .collect();
    let _guard = netcdf_sys::libnetcdf_lock.lock();
    // SAFETY: the pointers came from nc_get_vara for this variable and are freed exactly once.
    unsafe { netcdf_sys::nc_free_string(ptrs.len(), ptrs.as_mut_ptr()) };
    Ok(strings)
}

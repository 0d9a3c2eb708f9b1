//! NetCDF-4 output of operation results, through netCDF-C (which the gateway library does not
//! link). Results are written to a temporary file and read back as bytes.
//!
//! Attribute types follow the data: `_FillValue`, `missing_value` and `valid_*` take the
//! variable's type (CF requires it); other numbers are int32/int64 or, for floats, float32 when
//! the value was written from a float32 (its shortest spelling says so), else float64.
//!
//! A fill-like value the variable's type cannot hold (a NaN `_FillValue` on an int16, as some
//! NetCDF-3 writers leave) is never cast, which would turn NaN into 0 and mask every zero.
//! `missing_value` and `valid_*` are then written in their own type, as the source has them;
//! `_FillValue` cannot be (netCDF-C requires the variable's type), so it is left out: xarray
//! ignores such a fill on the source too ("non-conforming _FillValue"), and shows none.

use netcdf::types::{NcTypeDescriptor, NcVariableType};
use netcdf::AttributeValue;
use serde_json::Value;
use zarrgate_core::ops::output::{OutVar, Output};
use zarrgate_core::ops::store::{looks_f32, number, NAN, NEG_INF, POS_INF};
use zarrgate_core::zarr::Kind;
use zarrgate_gateway::ops::NetcdfWriter;

/// A char element (`|S1`), written as NC_CHAR.
#[repr(transparent)]
#[derive(Copy, Clone)]
struct NcChar(u8);

// SAFETY: one byte, the layout of NC_CHAR.
unsafe impl NcTypeDescriptor for NcChar {
    fn type_descriptor() -> NcVariableType {
        NcVariableType::Char
    }
}

pub struct Writer;

impl NetcdfWriter for Writer {
    fn write(&self, out: &Output) -> Result<Vec<u8>, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("result.nc");
        write_file(out, &path).map_err(|e| e.to_string())?;
        std::fs::read(&path).map_err(|e| e.to_string())
    }
}

fn write_file(out: &Output, path: &std::path::Path) -> Result<(), netcdf::Error> {
    let mut file = netcdf::create(path)?;
    for (name, len) in &out.dims {
        file.add_dimension(name, *len)?;
    }
    for (k, v) in &out.attrs {
        if let Some(a) = attribute(v, None) {
            file.add_attribute(k, a)?;
        }
    }
    for v in &out.vars {
        write_var(&mut file, v)?;
    }
    file.close()
}

/// The variable's own type for fill-like attributes.
fn typed(x: f64, v: &OutVar) -> AttributeValue {
    match (v.dtype.kind, v.dtype.size) {
        (Kind::Float, 4) => AttributeValue::Float(x as f32),
        (Kind::Float, _) => AttributeValue::Double(x),
        (Kind::Int, 1) => AttributeValue::Schar(x as i8),
        (Kind::Int, 2) => AttributeValue::Short(x as i16),
        (Kind::Int, 4) => AttributeValue::Int(x as i32),
        (Kind::Int, _) => AttributeValue::Longlong(x as i64),
        (Kind::UInt | Kind::Bool, 1) => AttributeValue::Uchar(x as u8),
        (Kind::UInt, 2) => AttributeValue::Ushort(x as u16),
        (Kind::UInt, 4) => AttributeValue::Uint(x as u32),
        (Kind::UInt, _) => AttributeValue::Ulonglong(x as u64),
        _ => AttributeValue::Double(x),
    }
}

/// Whether `x` is exactly a value of the variable's type.
fn holds(x: f64, v: &OutVar) -> bool {
    let range = match (v.dtype.kind, v.dtype.size) {
        (Kind::Float, _) => return true,
        (Kind::Int, 1) => (i8::MIN as f64, i8::MAX as f64),
        (Kind::Int, 2) => (i16::MIN as f64, i16::MAX as f64),
        (Kind::Int, 4) => (i32::MIN as f64, i32::MAX as f64),
        (Kind::Int, _) => (i64::MIN as f64, i64::MAX as f64),
        (Kind::UInt | Kind::Bool, 1) => (0.0, u8::MAX as f64),
        (Kind::UInt, 2) => (0.0, u16::MAX as f64),
        (Kind::UInt, 4) => (0.0, u32::MAX as f64),
        (Kind::UInt, _) => (0.0, u64::MAX as f64),
        _ => return false,
    };
    x.is_finite() && x.fract() == 0.0 && x >= range.0 && x <= range.1
}

fn numbers(v: &Value) -> Option<Vec<f64>> {
    match v {
        Value::Array(items) => items.iter().map(number).collect(),
        v => number(v).map(|x| vec![x]),
    }
}

/// An attribute value; `var` gives the type of fill-like attributes.
fn attribute(v: &Value, typed_as: Option<&OutVar>) -> Option<AttributeValue> {
    if let Value::String(s) = v {
        if s != NAN && s != POS_INF && s != NEG_INF {
            return Some(AttributeValue::Str(s.clone()));
        }
    }
    if let Value::Array(items) = v {
        if !items.is_empty() && items.iter().all(Value::is_string) && typed_as.is_none() && numbers(v).is_none() {
            return Some(AttributeValue::Strs(items.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()));
        }
    }
    let xs = numbers(v)?;
    // 64-bit integers from their digits, not through f64.
    match typed_as.map(|var| (var.dtype.kind, var.dtype.size)) {
        Some((Kind::Int, 8)) if v.is_i64() => return v.as_i64().map(AttributeValue::Longlong),
        Some((Kind::UInt, 8)) if v.is_u64() => return v.as_u64().map(AttributeValue::Ulonglong),
        _ => {}
    }
    // A value the variable's type cannot hold keeps its own type (below).
    if let Some(var) = typed_as.filter(|var| xs.iter().all(|x| holds(*x, var))) {
        if xs.len() == 1 {
            return Some(typed(xs[0], var));
        }
        return Some(match typed(0.0, var) {
            AttributeValue::Float(_) => AttributeValue::Floats(xs.iter().map(|x| *x as f32).collect()),
            AttributeValue::Short(_) => AttributeValue::Shorts(xs.iter().map(|x| *x as i16).collect()),
            AttributeValue::Int(_) => AttributeValue::Ints(xs.iter().map(|x| *x as i32).collect()),
            AttributeValue::Schar(_) => AttributeValue::Schars(xs.iter().map(|x| *x as i8).collect()),
            _ => AttributeValue::Doubles(xs),
        });
    }
    let ints = v.as_i64().map(|_| true).unwrap_or(false)
        || matches!(v, Value::Array(a) if a.iter().all(|x| x.is_i64() || x.is_u64()));
    if ints {
        let fits = xs.iter().all(|x| *x >= i32::MIN as f64 && *x <= i32::MAX as f64);
        return Some(match (xs.len(), fits) {
            (1, true) => AttributeValue::Int(xs[0] as i32),
            (1, false) => AttributeValue::Longlong(xs[0] as i64),
            (_, true) => AttributeValue::Ints(xs.iter().map(|x| *x as i32).collect()),
            (_, false) => AttributeValue::Longlongs(xs.iter().map(|x| *x as i64).collect()),
        });
    }
    let f32s = xs.iter().all(|x| looks_f32(*x) || !x.is_finite());
    Some(match (xs.len(), f32s) {
        (1, true) => AttributeValue::Float(xs[0] as f32),
        (1, false) => AttributeValue::Double(xs[0]),
        (_, true) => AttributeValue::Floats(xs.iter().map(|x| *x as f32).collect()),
        (_, false) => AttributeValue::Doubles(xs),
    })
}

const FILL_LIKE: [&str; 5] = ["_FillValue", "missing_value", "valid_min", "valid_max", "valid_range"];

fn le<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    data.chunks_exact(N).map(|b| b.try_into().expect("exact chunks"))
}

fn write_var(file: &mut netcdf::FileMut, v: &OutVar) -> Result<(), netcdf::Error> {
    macro_rules! put {
        ($t:ty, $values:expr) => {{
            let values: Vec<$t> = $values;
            let dims: Vec<&str> = v.dims.iter().map(String::as_str).collect();
            let mut var = file.add_variable::<$t>(&v.name, &dims)?;
            if !dims.is_empty() && v.data.len() > 4096 {
                var.set_compression(1, true)?;
            }
            if let Some(x) = v.attrs.get("_FillValue").and_then(fill_of::<$t>) {
                var.set_fill_value::<$t>(x)?;
            }
            for (k, a) in &v.attrs {
                if k == "_FillValue" {
                    continue;
                }
                let typed_as = FILL_LIKE.contains(&k.as_str()).then_some(v);
                if let Some(a) = attribute(a, typed_as) {
                    var.put_attribute(k, a)?;
                }
            }
            if !values.is_empty() {
                var.put_values(&values, ..)?;
            }
        }};
    }
    match (v.dtype.kind, v.dtype.size) {
        (Kind::Float, 4) => put!(f32, le::<4>(&v.data).map(f32::from_le_bytes).collect()),
        (Kind::Float, _) => put!(f64, le::<8>(&v.data).map(f64::from_le_bytes).collect()),
        (Kind::Int, 1) => put!(i8, v.data.iter().map(|b| *b as i8).collect()),
        (Kind::Int, 2) => put!(i16, le::<2>(&v.data).map(i16::from_le_bytes).collect()),
        (Kind::Int, 4) => put!(i32, le::<4>(&v.data).map(i32::from_le_bytes).collect()),
        (Kind::Int, _) => put!(i64, le::<8>(&v.data).map(i64::from_le_bytes).collect()),
        (Kind::UInt | Kind::Bool, 1) => put!(u8, v.data.clone()),
        (Kind::UInt, 2) => put!(u16, le::<2>(&v.data).map(u16::from_le_bytes).collect()),
        (Kind::UInt, 4) => put!(u32, le::<4>(&v.data).map(u32::from_le_bytes).collect()),
        (Kind::UInt, _) => put!(u64, le::<8>(&v.data).map(u64::from_le_bytes).collect()),
        (Kind::Bytes, 1) => put!(NcChar, v.data.iter().map(|b| NcChar(*b)).collect()),
        _ => {}
    }
    Ok(())
}

/// A fill value in the variable's type: integers straight from their JSON digits (an int64
/// fill like -9223372036854775806 does not survive a trip through f64), floats from numbers.
trait FromJson: Sized {
    fn from_json(v: &Value) -> Option<Self>;
}

macro_rules! from_json_int {
    ($($t:ty),*) => { $(impl FromJson for $t {
        /// None unless the value is exactly one of the type (a NaN or 1.5 is not).
        fn from_json(v: &Value) -> Option<Self> {
            v.as_i64().and_then(|i| <$t>::try_from(i).ok())
                .or_else(|| v.as_u64().and_then(|u| <$t>::try_from(u).ok()))
                .or_else(|| number(v).filter(|x| x.is_finite() && x.fract() == 0.0)
                    .and_then(|x| <$t>::try_from(x as i128).ok()))
        }
    })* };
}
from_json_int!(i8, i16, i32, i64, u8, u16, u32, u64);

impl FromJson for f32 {
    fn from_json(v: &Value) -> Option<Self> {
        number(v).map(|x| x as f32)
    }
}

impl FromJson for f64 {
    fn from_json(v: &Value) -> Option<Self> {
        number(v)
    }
}

impl FromJson for NcChar {
    fn from_json(v: &Value) -> Option<Self> {
        u8::from_json(v).map(NcChar)
    }
}

fn fill_of<T: FromJson>(v: &Value) -> Option<T> {
    T::from_json(v)
}

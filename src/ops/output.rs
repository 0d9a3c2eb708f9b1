//! A computed result, format-neutral, and its JSON, CSV and Zarr encodings. (NetCDF is written
//! by the gateway, which links netCDF-C.)

use serde_json::{json, Map, Value};

use super::request::Problem;
use super::store::{number, untag, Attrs, NAN, NEG_INF, POS_INF};
use crate::cftime;
use crate::zarr::{ArrayMetadataV2, Codec, DType, Endian, Kind, Order, Separator, ZarrFormat2};

/// One variable of a result. Data is row-major, little-endian (or single bytes).
#[derive(Clone, Debug)]
pub struct OutVar {
    pub name: String,
    pub dims: Vec<String>,
    pub dtype: DType,
    pub data: Vec<u8>,
    pub attrs: Attrs,
}

impl OutVar {
    /// Raw data as stored by a source in `dtype` (any byte order), made little-endian.
    pub fn from_raw(name: &str, dims: Vec<String>, dtype: DType, mut data: Vec<u8>, attrs: Attrs) -> OutVar {
        if dtype.endian == Endian::Big {
            data.chunks_exact_mut(dtype.size).for_each(<[u8]>::reverse);
        }
        OutVar { name: name.to_string(), dims, dtype: DType::new(dtype.kind, dtype.size, Endian::Little), data, attrs }
    }

    pub fn from_f64(name: &str, dims: Vec<String>, values: &[f64], as_f32: bool, attrs: Attrs) -> OutVar {
        let (dtype, data) = if as_f32 {
            (
                DType::new(Kind::Float, 4, Endian::Little),
                values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect(),
            )
        } else {
            (DType::new(Kind::Float, 8, Endian::Little), values.iter().flat_map(|v| v.to_le_bytes()).collect())
        };
        OutVar { name: name.to_string(), dims, dtype, data, attrs }
    }

    /// Element `i` as a float (for text formats).
    pub fn value(&self, i: usize) -> f64 {
        let b = &self.data[i * self.dtype.size..(i + 1) * self.dtype.size];
        let mut le = [0u8; 8];
        le[..b.len()].copy_from_slice(b);
        match (self.dtype.kind, self.dtype.size) {
            (Kind::Float, 4) => f32::from_le_bytes(le[..4].try_into().expect("4 bytes")) as f64,
            (Kind::Float, _) => f64::from_le_bytes(le),
            (Kind::Int, n) => crate::fill::sign_extend(&le[..n]) as f64,
            _ => crate::fill::zero_extend(b) as f64,
        }
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A result: dimensions with their lengths, variables and global attributes.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub dims: Vec<(String, usize)>,
    pub vars: Vec<OutVar>,
    pub attrs: Attrs,
    /// The names of the variables asked for (the rest are coordinates and bounds).
    pub data_vars: Vec<String>,
}

impl Output {
    pub fn var(&self, name: &str) -> Option<&OutVar> {
        self.vars.iter().find(|v| v.name == name)
    }

    pub fn dim_len(&self, name: &str) -> usize {
        self.dims.iter().find(|(d, _)| d == name).map_or(0, |(_, n)| *n)
    }

    /// Adds a dimension once.
    pub fn add_dim(&mut self, name: &str, len: usize) {
        if !self.dims.iter().any(|(d, _)| d == name) {
            self.dims.push((name.to_string(), len));
        }
    }

    pub fn nbytes(&self) -> usize {
        self.vars.iter().map(|v| v.data.len()).sum()
    }
}

/// The value a reader sees for a variable's element: masked and unpacked (NaN when masked).
fn decoded_values(v: &OutVar) -> Vec<f64> {
    let decoded = super::kernel::Decoded::new(v.dtype, &v.attrs);
    (0..v.len()).map(|i| decoded.apply(v.value(i))).collect()
}

/// Text for a coordinate value: ISO 8601 for times, else the number.
fn coordinate_texts(v: &OutVar) -> Vec<Value> {
    let values = decoded_values(v);
    let units = v.attrs.get("units").and_then(Value::as_str).unwrap_or("");
    let calendar = v.attrs.get("calendar").and_then(Value::as_str).unwrap_or("");
    if let Ok(tu) = cftime::TimeUnits::parse(units, calendar) {
        if units.contains(" since ") {
            return values.iter().map(|x| tu.decode(*x).map_or(Value::Null, |t| Value::from(t.iso()))).collect();
        }
    }
    values.into_iter().map(json_number).collect()
}

fn json_number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Attributes for JSON output: tagged non-finite numbers become null.
fn plain_attrs(attrs: &Attrs) -> Map<String, Value> {
    attrs
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) if s == NAN || s == POS_INF || s == NEG_INF => Value::Null,
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn check_text_shape(out: &Output, format: &str) -> Result<(), Problem> {
    let dims: Vec<&Vec<String>> = out.data_vars.iter().filter_map(|n| out.var(n)).map(|v| &v.dims).collect();
    if dims.windows(2).any(|w| w[0] != w[1]) {
        return Err(Problem::unprocessable(
            Some("format"),
            format!("{format} holds variables on one dimension only; these differ: use nc or zarr"),
        ));
    }
    for name in &out.data_vars {
        let v = out.var(name).expect("data variables are in the output");
        if v.dims.len() > 1 {
            return Err(Problem::unprocessable(
                Some("format"),
                format!(
                    "{format} holds results with at most one dimension; {name} has {} ({}): use nc or zarr",
                    v.dims.len(),
                    v.dims.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The JSON document of a 0-D or 1-D result.
pub fn to_json(out: &Output) -> Result<Vec<u8>, Problem> {
    check_text_shape(out, "json")?;
    let mut coords = Map::new();
    let mut vars = Map::new();
    for v in &out.vars {
        let is_data = out.data_vars.contains(&v.name);
        if !is_data && v.dims.len() > 1 {
            continue; // bounds
        }
        let values: Vec<Value> =
            if is_data { decoded_values(v).into_iter().map(json_number).collect() } else { coordinate_texts(v) };
        let doc = json!({"dims": v.dims, "attrs": plain_attrs(&v.attrs), "values": values});
        if is_data {
            vars.insert(v.name.clone(), doc);
        } else {
            coords.insert(v.name.clone(), doc);
        }
    }
    let doc = json!({"attrs": plain_attrs(&out.attrs), "coords": coords, "variables": vars});
    Ok(serde_json::to_vec_pretty(&doc).expect("JSON values serialize"))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV of a 0-D or 1-D result: a column for the dimension's coordinate, one per variable.
pub fn to_csv(out: &Output) -> Result<Vec<u8>, Problem> {
    check_text_shape(out, "csv")?;
    let data: Vec<&OutVar> = out.data_vars.iter().filter_map(|n| out.var(n)).collect();
    let dim = data.iter().find_map(|v| v.dims.first().cloned());
    let coord = dim.as_ref().and_then(|d| out.var(d));
    let rows = dim.as_ref().map_or(1, |d| out.dim_len(d));
    let mut header: Vec<String> = Vec::new();
    let coord_texts = coord.map(coordinate_texts);
    if let Some(d) = &dim {
        header.push(csv_field(d));
    }
    header.extend(data.iter().map(|v| csv_field(&v.name)));
    let columns: Vec<Vec<f64>> = data.iter().map(|v| decoded_values(v)).collect();
    let mut text = header.join(",") + "\n";
    for r in 0..rows {
        let mut fields = Vec::new();
        if dim.is_some() {
            fields.push(match coord_texts.as_ref().map(|t| &t[r]) {
                Some(Value::String(s)) => csv_field(s),
                Some(Value::Number(n)) => n.to_string(),
                Some(_) => String::new(),
                None => r.to_string(),
            });
        }
        for c in &columns {
            let x = c.get(r).copied().unwrap_or(c.first().copied().unwrap_or(f64::NAN));
            fields.push(if x.is_nan() { String::new() } else { format!("{x}") });
        }
        text.push_str(&fields.join(","));
        text.push('\n');
    }
    Ok(text.into_bytes())
}

/// The attributes as a `.zattrs` document (non-finite numbers as bare tokens, as Zarr writes).
pub fn zattrs(attrs: &Attrs, dims: Option<&[String]>) -> Vec<u8> {
    let mut doc = Map::new();
    if let Some(d) = dims {
        doc.insert("_ARRAY_DIMENSIONS".into(), json!(d));
    }
    doc.extend(attrs.iter().map(|(k, v)| (k.clone(), v.clone())));
    let text = serde_json::to_string(&Value::Object(doc)).expect("JSON values serialize");
    untag(&text).into_bytes()
}

/// A Zarr v2 store (consolidated) of the result: `(key, bytes)` pairs. Each variable is one
/// zlib-compressed chunk, unless larger than 64 MiB, when it is chunked along its first dimension.
pub fn to_zarr(out: &Output) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> =
        vec![(".zgroup".into(), br#"{"zarr_format": 2}"#.to_vec()), (".zattrs".into(), zattrs(&out.attrs, None))];
    for v in &out.vars {
        let shape: Vec<u64> = v.dims.iter().map(|d| out.dim_len(d) as u64).collect();
        let row: u64 = shape.iter().skip(1).product::<u64>() * v.dtype.size as u64;
        let mut chunks: Vec<u64> = shape.iter().map(|n| (*n).max(1)).collect();
        if let Some(first) = chunks.first_mut() {
            *first = (64 * 1024 * 1024 / row.max(1)).clamp(1, (*first).max(1));
        }
        let fill = zarr_fill(v);
        let meta = ArrayMetadataV2 {
            zarr_format: ZarrFormat2,
            shape: shape.clone(),
            chunks: chunks.clone(),
            dtype: v.dtype,
            compressor: Some(Codec::Zlib { level: 1 }),
            fill_value: fill,
            order: Order::C,
            filters: None,
            dimension_separator: Separator::Dot,
        };
        files.push((format!("{}/.zarray", v.name), serde_json::to_vec(&meta).expect("metadata serializes")));
        files.push((format!("{}/.zattrs", v.name), zattrs(&v.attrs, Some(&v.dims))));
        let per_chunk = (chunks.first().copied().unwrap_or(1) * row) as usize;
        let n_chunks = shape.first().map_or(1, |n| n.div_ceil(chunks[0]).max(1)) as usize;
        for c in 0..n_chunks {
            let start = (c * per_chunk).min(v.data.len());
            let mut piece = v.data[start..(start + per_chunk).min(v.data.len())].to_vec();
            piece.resize(if shape.is_empty() { v.dtype.size } else { per_chunk }, 0);
            let key = if shape.is_empty() {
                "0".to_string()
            } else {
                std::iter::once(c.to_string())
                    .chain(std::iter::repeat_n("0".to_string(), shape.len() - 1))
                    .collect::<Vec<_>>()
                    .join(".")
            };
            files.push((format!("{}/{key}", v.name), crate::codec::zlib_encode(&piece, 1)));
        }
    }
    let docs: Vec<(String, Vec<u8>)> = files
        .iter()
        .filter(|(k, _)| k.ends_with(".zarray") || k.ends_with(".zattrs") || k.ends_with(".zgroup"))
        .cloned()
        .collect();
    let consolidated = crate::zarr::consolidated_v2("", docs.iter().map(|(k, b)| (k.as_str(), &b[..])));
    files.push((".zmetadata".into(), consolidated));
    files
}

/// The Zarr fill value of a result variable: its `_FillValue`, so readers mask what CF masks,
/// and none without one (a NaN fill would show as a `_FillValue` the source has not). A fill
/// the type cannot hold (a NaN on an int16) is never cast, which would mask every 0: the array
/// gets none, and the attribute stays in `.zattrs` as the source has it, where xarray reads it
/// as it reads the source's.
fn zarr_fill(v: &OutVar) -> Value {
    let Some(fill) = v.attrs.get("_FillValue") else { return Value::Null };
    match v.dtype.kind {
        Kind::Float => number(fill).map_or(Value::Null, crate::fill::float_json),
        Kind::Int | Kind::UInt | Kind::Bool => {
            let exact = fill
                .as_i64()
                .map(|i| i as i128)
                .or_else(|| fill.as_u64().map(|u| u as i128))
                .or_else(|| number(fill).filter(|x| x.is_finite() && x.fract() == 0.0).map(|x| x as i128));
            let bits = 8 * v.dtype.size as u32;
            let (lo, hi) = match v.dtype.kind {
                Kind::Int => (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1),
                _ => (0, (1i128 << bits) - 1),
            };
            match exact.filter(|x| (lo..=hi).contains(x)) {
                Some(x) if x < 0 => json!(x as i64),
                Some(x) => json!(x as u64),
                None => Value::Null,
            }
        }
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series() -> Output {
        let mut time_attrs = Attrs::new();
        time_attrs.insert("units".into(), json!("days since 2000-01-01"));
        time_attrs.insert("calendar".into(), json!("360_day"));
        let mut tas_attrs = Attrs::new();
        tas_attrs.insert("_FillValue".into(), json!(NAN));
        Output {
            dims: vec![("time".into(), 2)],
            vars: vec![
                OutVar::from_f64("time", vec!["time".into()], &[0.0, 59.0], false, time_attrs),
                OutVar::from_f64("tas", vec!["time".into()], &[280.5, f64::NAN], true, tas_attrs),
            ],
            attrs: Attrs::new(),
            data_vars: vec!["tas".into()],
        }
    }

    #[test]
    fn csv_and_json_write_calendar_dates_and_blank_nan() {
        let out = series();
        let csv = String::from_utf8(to_csv(&out).unwrap()).unwrap();
        assert_eq!(csv, "time,tas\n2000-01-01T00:00:00,280.5\n2000-02-30T00:00:00,\n");
        let doc: Value = serde_json::from_slice(&to_json(&out).unwrap()).unwrap();
        assert_eq!(doc["variables"]["tas"]["values"], json!([280.5, null]));
        assert_eq!(doc["coords"]["time"]["values"][1], "2000-02-30T00:00:00");
    }

    #[test]
    fn zarr_stores_are_consolidated_with_nan_fill() {
        let files = to_zarr(&series());
        let keys: Vec<&str> = files.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"tas/0") && keys.contains(&".zmetadata"), "{keys:?}");
        let zattrs = &files.iter().find(|(k, _)| k == "tas/.zattrs").unwrap().1;
        assert_eq!(std::str::from_utf8(zattrs).unwrap(), r#"{"_ARRAY_DIMENSIONS":["time"],"_FillValue":NaN}"#);
    }

    #[test]
    fn two_dimensional_results_are_refused_as_text() {
        let mut out = series();
        out.vars[1].dims = vec!["time".into(), "x".into()];
        assert_eq!(to_csv(&out).unwrap_err().status, 422);
    }
}

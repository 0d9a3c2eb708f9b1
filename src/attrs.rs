//! Attributes and their `.zattrs` JSON.
//!
//! serde_json cannot write NaN or infinities, but netCDF attributes hold them (`_FillValue`,
//! `valid_max`, `missing_value`). Zarr's own writers emit the bare tokens `NaN`, `Infinity` and
//! `-Infinity`, which Python's `json` module reads, so `.zattrs` is written here by hand.

use std::fmt::Write as _;

/// One attribute value as a reader sees it: a string, or numbers (one number is a scalar).
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Strs(Vec<String>),
    Ints(Vec<i64>),
    UInts(Vec<u64>),
    Floats(Vec<f64>),
    /// Values of a 32-bit float attribute (xarray picks decoded dtypes from this type).
    Floats32(Vec<f64>),
    /// HDF5 booleans (h5py's enum `{FALSE: 0, TRUE: 1}`), shown by h5netcdf as `np.bool_`.
    Bools(Vec<bool>),
}

/// Attributes in source order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes(pub Vec<(String, AttrValue)>);

impl Attributes {
    pub fn push(&mut self, name: impl Into<String>, value: AttrValue) {
        self.0.push((name.into(), value));
    }

    pub fn get(&self, name: &str) -> Option<&AttrValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn remove(&mut self, name: &str) -> Option<AttrValue> {
        let i = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(i).1)
    }

    /// The `.zattrs` document, with `_ARRAY_DIMENSIONS` first when `dims` is given.
    pub fn to_zattrs(&self, dims: Option<&[String]>) -> String {
        let mut out = String::from("{");
        let mut first = true;
        let mut key = |out: &mut String, name: &str| {
            if !std::mem::take(&mut first) {
                out.push_str(", ");
            }
            out.push_str(&serde_json::to_string(name).expect("strings serialize"));
            out.push_str(": ");
        };
        if let Some(dims) = dims {
            key(&mut out, "_ARRAY_DIMENSIONS");
            out.push_str(&serde_json::to_string(dims).expect("strings serialize"));
        }
        for (name, value) in &self.0 {
            key(&mut out, name);
            value.write_json(&mut out);
        }
        out.push('}');
        out
    }
}

impl AttrValue {
    fn write_json(&self, out: &mut String) {
        match self {
            AttrValue::Str(s) => out.push_str(&serde_json::to_string(s).expect("strings serialize")),
            AttrValue::Strs(v) => out.push_str(&serde_json::to_string(v).expect("strings serialize")),
            AttrValue::Ints(v) => write_numbers(out, v, |o, x| write!(o, "{x}")),
            AttrValue::UInts(v) => write_numbers(out, v, |o, x| write!(o, "{x}")),
            AttrValue::Floats(v) | AttrValue::Floats32(v) => write_numbers(out, v, write_float),
            AttrValue::Bools(v) => write_numbers(out, v, |o, x| write!(o, "{x}")),
        }
    }
}

/// One number is written as a scalar, as netCDF readers return it.
fn write_numbers<T>(out: &mut String, v: &[T], one: impl Fn(&mut String, &T) -> std::fmt::Result) {
    if v.len() == 1 {
        one(out, &v[0]).expect("writing to a String cannot fail");
        return;
    }
    out.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        one(out, x).expect("writing to a String cannot fail");
    }
    out.push(']');
}

fn write_float(out: &mut String, x: &f64) -> std::fmt::Result {
    if x.is_nan() {
        out.push_str("NaN");
    } else if x.is_infinite() {
        out.push_str(if *x > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        // serde_json writes the shortest form that reads back to the same f64, and keeps a
        // decimal point so that readers see a float, not an int.
        out.push_str(&serde_json::to_string(x).expect("finite floats serialize"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zattrs_text_is_what_python_json_reads() {
        let mut a = Attributes::default();
        a.push("units", AttrValue::Str("K".into()));
        a.push("valid_range", AttrValue::Floats(vec![f64::NAN, f64::INFINITY, -1.5]));
        a.push("scale", AttrValue::Floats(vec![2.0]));
        a.push("flags", AttrValue::Ints(vec![-1, 2]));
        a.push("big", AttrValue::UInts(vec![u64::MAX]));
        a.push("names", AttrValue::Strs(vec!["a\"b".into(), "ü".into()]));
        let dims = vec!["time".to_string()];
        assert_eq!(
            a.to_zattrs(Some(&dims)),
            r#"{"_ARRAY_DIMENSIONS": ["time"], "units": "K", "valid_range": [NaN, Infinity, -1.5], "scale": 2.0, "flags": [-1, 2], "big": 18446744073709551615, "names": ["a\"b","ü"]}"#
        );
    }

    #[test]
    fn empty_attributes() {
        assert_eq!(Attributes::default().to_zattrs(None), "{}");
        assert_eq!(Attributes::default().to_zattrs(Some(&[])), r#"{"_ARRAY_DIMENSIONS": []}"#);
    }
}

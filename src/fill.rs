//! Fill values: raw element bytes to Zarr v2 JSON.
//!
//! Zarr v2 writes float fill values as `"NaN"`, `"Infinity"`, `"-Infinity"` strings, integers as
//! JSON numbers and fixed-width byte strings as base64.

use base64::Engine as _;
use serde_json::Value;

use crate::zarr::{DType, Endian, Kind};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("fill value of {got} bytes does not fit dtype {dtype}")]
pub struct FillSizeError {
    pub dtype: String,
    pub got: usize,
}

/// Converts one element's bytes, stored in `dtype`'s byte order, to its Zarr v2 JSON form.
pub fn fill_json(dtype: &DType, raw: &[u8]) -> Result<Value, FillSizeError> {
    if raw.len() != dtype.size() || dtype.kind == Kind::VlenString {
        return Err(FillSizeError { dtype: dtype.typestr(), got: raw.len() });
    }
    let mut le = raw.to_vec();
    if dtype.endian == Endian::Big {
        le.reverse();
    }
    Ok(match (dtype.kind, dtype.size) {
        (Kind::Bool, _) => Value::from(le[0] != 0),
        (Kind::Int, _) => Value::from(sign_extend(&le)),
        (Kind::UInt, _) => Value::from(zero_extend(&le)),
        (Kind::Float, _) => float_json(float_le(&le)),
        (Kind::Complex, n) => {
            // each half is one float in the same byte order
            let (re, im) = raw.split_at(n / 2);
            let part = |b: &[u8]| {
                let mut b = b.to_vec();
                if dtype.endian == Endian::Big {
                    b.reverse();
                }
                float_json(float_le(&b))
            };
            Value::Array(vec![part(re), part(im)])
        }
        (Kind::Bytes | Kind::Void, _) => Value::from(base64::engine::general_purpose::STANDARD.encode(raw)),
        (Kind::VlenString, _) => unreachable!("rejected above"),
    })
}

/// A little-endian IEEE float of 2, 4 or 8 bytes, widened exactly to f64.
pub fn float_le(le: &[u8]) -> f64 {
    match le.len() {
        2 => half::f16::from_le_bytes([le[0], le[1]]).to_f64(),
        4 => f32::from_le_bytes(le.try_into().expect("size 4")) as f64,
        8 => f64::from_le_bytes(le.try_into().expect("size 8")),
        n => panic!("no float of {n} bytes"),
    }
}

/// A float as Zarr v2 writes it. f32 values widen exactly to f64, and serde_json's shortest
/// round-trip formatting then reads back to the same f32.
pub fn float_json(x: f64) -> Value {
    if x.is_nan() {
        Value::from("NaN")
    } else if x.is_infinite() {
        Value::from(if x > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        Value::from(x)
    }
}

/// A little-endian signed integer of 1 to 8 bytes.
pub fn sign_extend(le: &[u8]) -> i64 {
    let mut buf = [if le.last().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 }; 8];
    buf[..le.len()].copy_from_slice(le);
    i64::from_le_bytes(buf)
}

/// A little-endian unsigned integer of 1 to 8 bytes.
pub fn zero_extend(le: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf[..le.len()].copy_from_slice(le);
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(kind: Kind, size: usize, endian: Endian) -> DType {
        DType::new(kind, size, endian)
    }

    #[test]
    fn known_answers() {
        let cases: Vec<(DType, Vec<u8>, Value)> = vec![
            (dt(Kind::Float, 4, Endian::Little), f32::NAN.to_le_bytes().to_vec(), "NaN".into()),
            (dt(Kind::Float, 8, Endian::Big), f64::NEG_INFINITY.to_be_bytes().to_vec(), "-Infinity".into()),
            (
                dt(Kind::Float, 4, Endian::Little),
                9.96921e36f32.to_le_bytes().to_vec(),
                Value::from(9.96921e36f32 as f64),
            ),
            (dt(Kind::Int, 2, Endian::Big), (-32767i16).to_be_bytes().to_vec(), Value::from(-32767)),
            (dt(Kind::Int, 1, Endian::Little), vec![0x81], Value::from(-127)),
            (dt(Kind::UInt, 8, Endian::Little), u64::MAX.to_le_bytes().to_vec(), Value::from(u64::MAX)),
            (dt(Kind::Bytes, 1, Endian::Little), vec![0], Value::from("AA==")),
        ];
        for (dtype, raw, want) in cases {
            assert_eq!(fill_json(&dtype, &raw).unwrap(), want, "{}", dtype.typestr());
        }
    }

    #[test]
    fn f32_fill_reads_back_exactly() {
        let v = fill_json(&dt(Kind::Float, 4, Endian::Little), &1e20f32.to_le_bytes()).unwrap();
        assert_eq!(v.as_f64().unwrap() as f32, 1e20f32);
    }

    #[test]
    fn wrong_size_is_an_error() {
        assert!(fill_json(&dt(Kind::Int, 4, Endian::Little), &[1, 2]).is_err());
    }
}

//! Zarr v2 metadata documents, with the spec constants encoded in types so that a document we
//! write is valid by construction.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Zarr v2 `.zgroup`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupMetadataV2 {
    pub zarr_format: ZarrFormat2,
}

/// The literal `2`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZarrFormat2;

impl Serialize for ZarrFormat2 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(2)
    }
}

impl<'de> Deserialize<'de> for ZarrFormat2 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u8::deserialize(d)? {
            2 => Ok(ZarrFormat2),
            n => Err(serde::de::Error::custom(format!("zarr_format is {n}, expected 2"))),
        }
    }
}

/// Zarr v2 `.zarray`. We always write C order and `.` as the dimension separator, because a
/// wrong separator silently reads as all-fill arrays.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArrayMetadataV2 {
    pub zarr_format: ZarrFormat2,
    pub shape: Vec<u64>,
    pub chunks: Vec<u64>,
    pub dtype: DType,
    pub compressor: Option<Codec>,
    pub fill_value: Value,
    pub order: Order,
    pub filters: Option<Vec<Codec>>,
    #[serde(default)]
    pub dimension_separator: Separator,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Order {
    #[default]
    C,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Separator {
    #[default]
    #[serde(rename = ".")]
    Dot,
}

/// The numcodecs codecs we emit. Anything else is transcoded by the gateway instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "id")]
pub enum Codec {
    #[serde(rename = "zlib")]
    Zlib { level: u32 },
    #[serde(rename = "shuffle")]
    Shuffle { elementsize: usize },
    #[serde(rename = "vlen-utf8")]
    VlenUtf8 {},
    /// HDF5's checksum: 4 bytes appended to the data, verified and removed on decode.
    #[serde(rename = "fletcher32")]
    Fletcher32 {},
}

impl ArrayMetadataV2 {
    /// A `.zarray` document, read even when its codecs are ones this crate does not decode
    /// (blosc, zstd, …): then without them, and their ids are returned. For arrays whose chunks
    /// are passed through as stored, where only the shape, chunks and dtype matter.
    pub fn parse_lenient(doc: &[u8]) -> Result<(ArrayMetadataV2, Vec<String>), serde_json::Error> {
        let value: Value = serde_json::from_slice(doc)?;
        if let Ok(meta) = serde_json::from_value::<ArrayMetadataV2>(value.clone()) {
            return Ok((meta, vec![]));
        }
        let mut plain = value.clone();
        if let Some(o) = plain.as_object_mut() {
            o.insert("compressor".into(), Value::Null);
            o.insert("filters".into(), Value::Null);
        }
        let meta = serde_json::from_value::<ArrayMetadataV2>(plain)?;
        let codecs = [value.get("compressor")]
            .into_iter()
            .flatten()
            .chain(value.get("filters").and_then(Value::as_array).into_iter().flatten())
            .filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_string))
            .collect();
        Ok((meta, codecs))
    }

    /// An array without codecs (chunks of length 0 become 1, as Zarr requires).
    pub fn plain(shape: &[u64], chunks: &[u64], dtype: DType, fill_value: Value) -> Self {
        ArrayMetadataV2 {
            zarr_format: ZarrFormat2,
            shape: shape.to_vec(),
            chunks: chunks.iter().map(|c| (*c).max(1)).collect(),
            dtype,
            compressor: None,
            fill_value,
            order: Order::C,
            filters: None,
            dimension_separator: Separator::Dot,
        }
    }

    /// Number of chunks along each dimension (a zero-length dimension has none).
    pub fn chunk_grid(&self) -> Vec<u64> {
        self.shape.iter().zip(&self.chunks).map(|(s, c)| s.div_ceil(*c)).collect()
    }

    /// Every chunk grid position, row-major: one (`[]`) for a scalar, none when a dimension
    /// has no chunks.
    pub fn grid_positions(grid: &[u64]) -> impl Iterator<Item = Vec<u64>> + '_ {
        let total = if grid.is_empty() { 1 } else { grid.iter().product::<u64>() };
        let mut idx = vec![0u64; grid.len()];
        (0..total).map(move |_| {
            let here = idx.clone();
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < grid[d] {
                    break;
                }
                idx[d] = 0;
            }
            here
        })
    }

    /// The Zarr key of the chunk at grid position `idx`, relative to the array (`"0"` for a
    /// scalar).
    pub fn chunk_key(idx: &[u64]) -> String {
        if idx.is_empty() {
            return "0".to_string();
        }
        idx.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
    }

    /// Bytes in one full, decoded chunk.
    pub fn chunk_nbytes(&self) -> u64 {
        self.chunks.iter().product::<u64>() * self.dtype.size() as u64
    }
}

/// Byte order of a numeric element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endian {
    Little,
    Big,
    /// Single bytes and strings.
    NotApplicable,
}

/// Element kinds that Zarr v2 can describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    UInt,
    Float,
    /// Fixed-width byte string (`|S{n}`); netCDF `char` is `|S1`.
    Bytes,
    /// Variable-length UTF-8 strings (`|O` with the vlen-utf8 codec).
    VlenString,
    /// Complex numbers (`<c8`, `<c16`): a real and an imaginary float of half the size each.
    Complex,
    /// Raw bytes of a fixed size (`|V{n}`): HDF5 opaque types.
    Void,
}

/// A Zarr v2 data type (numpy typestring).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DType {
    pub kind: Kind,
    /// Element size in bytes (pointer size is irrelevant for strings: 0).
    pub size: usize,
    pub endian: Endian,
}

impl DType {
    pub fn new(kind: Kind, size: usize, endian: Endian) -> Self {
        let endian = if size <= 1 || matches!(kind, Kind::Bytes | Kind::VlenString | Kind::Void) {
            Endian::NotApplicable
        } else {
            endian
        };
        DType { kind, size, endian }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The numpy typestring, e.g. `<f4`, `>i2`, `|S1`, `|O`.
    pub fn typestr(&self) -> String {
        let e = match self.endian {
            Endian::Little => '<',
            Endian::Big => '>',
            Endian::NotApplicable => '|',
        };
        match self.kind {
            Kind::Bool => "|b1".to_string(),
            Kind::Int => format!("{e}i{}", self.size),
            Kind::UInt => format!("{e}u{}", self.size),
            Kind::Float => format!("{e}f{}", self.size),
            Kind::Bytes => format!("|S{}", self.size),
            Kind::VlenString => "|O".to_string(),
            Kind::Complex => format!("{e}c{}", self.size),
            Kind::Void => format!("|V{}", self.size),
        }
    }

    /// Parses a numpy typestring of the kinds above.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "|O" {
            return Some(DType::new(Kind::VlenString, 0, Endian::NotApplicable));
        }
        let mut chars = s.chars();
        let endian = match chars.next()? {
            '<' => Endian::Little,
            '>' => Endian::Big,
            '|' | '=' => Endian::NotApplicable,
            _ => return None,
        };
        let kind = match chars.next()? {
            'b' => Kind::Bool,
            'i' => Kind::Int,
            'u' => Kind::UInt,
            'f' => Kind::Float,
            'S' => Kind::Bytes,
            'c' => Kind::Complex,
            'V' => Kind::Void,
            _ => return None,
        };
        let size: usize = chars.as_str().parse().ok()?;
        let valid = match kind {
            Kind::Bool => size == 1,
            Kind::Int | Kind::UInt => matches!(size, 1 | 2 | 4 | 8),
            Kind::Float => matches!(size, 2 | 4 | 8),
            Kind::Complex => matches!(size, 8 | 16),
            Kind::Bytes | Kind::Void => size >= 1,
            Kind::VlenString => false,
        };
        valid.then(|| DType::new(kind, size, endian))
    }
}

impl Serialize for DType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.typestr())
    }
}

impl<'de> Deserialize<'de> for DType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DType::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unsupported dtype {s:?}")))
    }
}

/// Builds a Zarr v2 consolidated `.zmetadata` document for the group at `group` from
/// `(key, document)` pairs of the whole store. Documents are embedded as written (they may hold
/// NaN, which only a hand-written JSON writer keeps).
pub fn consolidated_v2<'a>(group: &str, docs: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let prefix = if group.is_empty() { String::new() } else { format!("{group}/") };
    let mut out = br#"{"metadata": {"#.to_vec();
    let mut first = true;
    for (key, doc) in docs {
        let Some(rel) = key.strip_prefix(&prefix) else { continue };
        let leaf = rel.rsplit('/').next().unwrap_or(rel);
        if !matches!(leaf, ".zgroup" | ".zattrs" | ".zarray") {
            continue;
        }
        if !std::mem::take(&mut first) {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(serde_json::to_string(rel).expect("strings serialize").as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(doc);
    }
    out.extend_from_slice(br#"}, "zarr_consolidated_format": 1}"#);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consolidated_metadata_is_relative_to_its_group() {
        let docs: Vec<(&str, &[u8])> = vec![
            (".zgroup", br#"{"zarr_format":2}"#),
            ("g/.zgroup", br#"{"zarr_format":2}"#),
            ("g/v/.zattrs", br#"{"x": NaN}"#),
            ("g/v/0", b"chunk"),
            ("gx/.zgroup", br#"{}"#),
        ];
        let sub = String::from_utf8(consolidated_v2("g", docs.iter().copied())).unwrap();
        assert_eq!(
            sub,
            r#"{"metadata": {".zgroup": {"zarr_format":2}, "v/.zattrs": {"x": NaN}}, "zarr_consolidated_format": 1}"#
        );
        let root = String::from_utf8(consolidated_v2("", docs.iter().copied())).unwrap();
        assert!(root.contains(r#""g/v/.zattrs""#) && root.contains(r#""gx/.zgroup""#) && !root.contains("chunk"));
    }

    #[test]
    fn typestrings_round_trip() {
        for s in ["<f4", ">f8", "<i2", ">i2", "|i1", "|u1", "<u8", "|S1", "|S12", "|O", "|b1", "<c8", ">c16", "|V8"] {
            assert_eq!(DType::parse(s).unwrap().typestr(), s, "{s}");
        }
        for bad in ["", "f4", "<x4", "<f", "<fz", "O", "<f3", "<i3", "<c4", "|V0", "|b2"] {
            assert!(DType::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn zarray_serializes_as_zarr_v2() {
        let meta = ArrayMetadataV2 {
            zarr_format: ZarrFormat2,
            shape: vec![10, 4],
            chunks: vec![5, 4],
            dtype: DType::new(Kind::Int, 2, Endian::Big),
            compressor: Some(Codec::Zlib { level: 4 }),
            fill_value: Value::from(-999),
            order: Order::C,
            filters: Some(vec![Codec::Shuffle { elementsize: 2 }]),
            dimension_separator: Separator::Dot,
        };
        let json = serde_json::to_value(&meta).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"zarr_format": 2, "shape": [10, 4], "chunks": [5, 4], "dtype": ">i2",
                "compressor": {"id": "zlib", "level": 4}, "fill_value": -999, "order": "C",
                "filters": [{"id": "shuffle", "elementsize": 2}], "dimension_separator": "."})
        );
        let back: ArrayMetadataV2 = serde_json::from_value(json).unwrap();
        assert_eq!(back, meta);
        assert_eq!(back.chunk_grid(), vec![2, 1]);
    }

    #[test]
    fn wrong_zarr_format_is_rejected() {
        assert!(serde_json::from_value::<GroupMetadataV2>(serde_json::json!({"zarr_format": 3})).is_err());
    }

    #[test]
    fn chunk_keys() {
        assert_eq!(ArrayMetadataV2::chunk_key(&[]), "0");
        assert_eq!(ArrayMetadataV2::chunk_key(&[1, 0, 12]), "1.0.12");
    }
}

//! The read side of operations: a served Zarr v2 store seen as variables with decoded chunks.
//!
//! Operations read exactly what an S3 client would (the consolidated `.zmetadata` and the
//! served chunk bytes), so a result can only differ from a client's own computation by the
//! arithmetic, never by the data.

use crate::codec;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::zarr::{ArrayMetadataV2, Codec, DType, Endian, Kind};

/// Attributes as JSON; NaN and infinities are the strings [`NAN`], [`POS_INF`], [`NEG_INF`].
pub type Attrs = Map<String, Value>;

/// Bare JSON tokens Zarr writes for non-finite floats, kept as tagged strings after parsing.
pub const NAN: &str = "\u{1}NaN";
pub const POS_INF: &str = "\u{1}Infinity";
pub const NEG_INF: &str = "\u{1}-Infinity";

/// Where chunk bytes come from.
///
/// # Contract
/// `get` returns the bytes of a store key exactly as the S3 layer serves them, `Ok(None)` when
/// the key is absent (a missing chunk is fill), and `Err` when the bytes cannot be read (a
/// changed source, an I/O or decode failure). It is called from several threads at once.
pub trait ChunkSource: Sync {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SourceError>;
}

/// Why a store key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source file changed since indexing; the caller re-indexes and the client retries.
    #[error("{0}")]
    Stale(String),
    #[error("{0}")]
    Failed(String),
    /// A remote source cannot be reached now; the client retries later.
    #[error("{0}")]
    Unavailable(String),
}

/// One array of the store.
#[derive(Clone, Debug)]
pub struct Variable {
    pub name: String,
    pub meta: ArrayMetadataV2,
    pub dims: Vec<String>,
    pub attrs: Attrs,
}

impl Variable {
    pub fn attr_f64(&self, name: &str) -> Option<f64> {
        self.attrs.get(name).and_then(number)
    }

    pub fn attr_str(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).and_then(Value::as_str)
    }

    /// Every number of an attribute (a scalar or a list).
    pub fn attr_numbers(&self, name: &str) -> Vec<f64> {
        numbers(&self.attrs, name)
    }

    pub fn len(&self) -> u64 {
        self.meta.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every number of attribute `name` (a scalar or a list).
pub fn numbers(attrs: &Attrs, name: &str) -> Vec<f64> {
    match attrs.get(name) {
        Some(Value::Array(items)) => items.iter().filter_map(number).collect(),
        Some(v) => number(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Whether a float attribute was stored as float32: exact in f32, and its shortest f64
/// spelling is longer than its f32 one (0.1f32 is written 0.10000000149011612). JSON has one
/// number type, so this is how a float32 `scale_factor` is told from a float64 one.
pub fn looks_f32(x: f64) -> bool {
    let f = x as f32;
    f as f64 == x && format!("{x}").len() > format!("{f}").len()
}

/// A number attribute value, reading the tagged non-finite strings.
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s == NAN => Some(f64::NAN),
        Value::String(s) if s == POS_INF => Some(f64::INFINITY),
        Value::String(s) if s == NEG_INF => Some(f64::NEG_INFINITY),
        Value::Array(items) if items.len() == 1 => number(&items[0]),
        _ => None,
    }
}

/// The root-group variables and attributes of a served dataset.
#[derive(Clone, Debug)]
pub struct StoreView {
    pub variables: BTreeMap<String, Variable>,
    pub attrs: Attrs,
}

impl StoreView {
    /// Reads the consolidated `.zmetadata`. Variables in sub-groups are not offered to
    /// operations.
    pub fn open(source: &dyn ChunkSource) -> Result<StoreView, SourceError> {
        let doc =
            source.get(".zmetadata")?.ok_or_else(|| SourceError::Failed("the dataset has no .zmetadata".into()))?;
        let doc: Value =
            parse_json(&doc).map_err(|e| SourceError::Failed(format!(".zmetadata is not valid JSON: {e}")))?;
        let meta = doc.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        let attrs = meta.get(".zattrs").and_then(Value::as_object).cloned().unwrap_or_default();
        let mut variables = BTreeMap::new();
        for (key, zarray) in &meta {
            let Some(name) = key.strip_suffix("/.zarray") else { continue };
            if name.contains('/') {
                continue;
            }
            let Ok(array) = serde_json::from_value::<ArrayMetadataV2>(zarray.clone()) else { continue };
            let mut vattrs =
                meta.get(&format!("{name}/.zattrs")).and_then(Value::as_object).cloned().unwrap_or_default();
            // xarray's Zarr backend shows the array's fill value as `_FillValue`.
            if let Some(fill) = fill_attr(&array) {
                vattrs.entry("_FillValue").or_insert(fill);
            }
            let dims = match vattrs.remove("_ARRAY_DIMENSIONS") {
                Some(Value::Array(d)) => d.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                _ => (0..array.shape.len()).map(|i| format!("dim_{i}")).collect(),
            };
            variables.insert(name.to_string(), Variable { name: name.to_string(), meta: array, dims, attrs: vattrs });
        }
        Ok(StoreView { variables, attrs })
    }
}

/// The `_FillValue` a Zarr reader derives from `fill_value` (none for `null` and strings).
fn fill_attr(array: &ArrayMetadataV2) -> Option<Value> {
    if matches!(array.dtype.kind, Kind::Bytes | Kind::VlenString) {
        return None;
    }
    match &array.fill_value {
        Value::String(s) if s == "NaN" => Some(Value::from(NAN)),
        Value::String(s) if s == "Infinity" => Some(Value::from(POS_INF)),
        Value::String(s) if s == "-Infinity" => Some(Value::from(NEG_INF)),
        v @ Value::Number(_) => Some(v.clone()),
        _ => None,
    }
}

/// Parses JSON that may hold Zarr's bare `NaN`, `Infinity` and `-Infinity` tokens.
pub fn parse_json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text.as_ref();
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let token = [("-Infinity", NEG_INF), ("Infinity", POS_INF), ("NaN", NAN)]
            .into_iter()
            .find(|(t, _)| rest.starts_with(t));
        if let Some((t, tag)) = token {
            out.push_str(&serde_json::to_string(tag).expect("strings serialize"));
            rest = &rest[t.len()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    serde_json::from_str(&out)
}

/// JSON text with the tagged non-finite strings of [`parse_json`] written back as Zarr's bare
/// tokens.
pub fn untag(text: &str) -> String {
    let quoted = |t: &str| serde_json::to_string(t).expect("strings serialize");
    text.replace(&quoted(NAN), "NaN").replace(&quoted(POS_INF), "Infinity").replace(&quoted(NEG_INF), "-Infinity")
}

/// Why a chunk cannot be read as numbers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("{codec}: {error}")]
    Codec { codec: &'static str, error: codec::DecodeError },
    #[error("variable-length strings cannot be computed on")]
    Strings,
    #[error("a decoded chunk has {got} bytes, expected {expected}")]
    Size { got: usize, expected: usize },
    #[error("cannot compute on values of type {0}")]
    Type(String),
}

/// Decodes a served chunk to the raw elements of a full chunk, in the dtype's byte order.
pub fn decode_chunk(meta: &ArrayMetadataV2, stored: Vec<u8>) -> Result<Vec<u8>, ChunkError> {
    const CHECKSUM: usize = 4;
    let expected = meta.chunk_nbytes() as usize;
    let mut bytes = stored;
    let filters = meta.filters.as_deref().unwrap_or(&[]);
    for codec in meta.compressor.iter().chain(filters.iter().rev()) {
        bytes = match codec {
            // held to the chunk's size (and a checksum): a bomb is an error, not an allocation
            Codec::Zlib { .. } => codec::zlib_decode(&bytes, expected, expected.saturating_add(CHECKSUM))
                .map_err(|error| ChunkError::Codec { codec: "zlib", error })?,
            Codec::Shuffle { elementsize } => codec::unshuffle(&bytes, *elementsize),
            Codec::Fletcher32 {} => {
                codec::strip_fletcher32(bytes).map_err(|error| ChunkError::Codec { codec: "fletcher32", error })?
            }
            Codec::VlenUtf8 {} => return Err(ChunkError::Strings),
        };
    }
    if bytes.len() != expected {
        return Err(ChunkError::Size { got: bytes.len(), expected });
    }
    Ok(bytes)
}

/// One element of the Zarr `fill_value` in the dtype's byte order (zeros for `null`).
pub fn fill_bytes(dtype: &DType, fill: &Value) -> Vec<u8> {
    let x = match fill {
        Value::String(s) if s == "NaN" => f64::NAN,
        Value::String(s) if s == "Infinity" => f64::INFINITY,
        Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        Value::Bool(b) => f64::from(u8::from(*b)),
        v => number(v).unwrap_or(0.0),
    };
    if let (Kind::Int, Some(i)) = (dtype.kind, fill.as_i64()) {
        return int_bytes(i as i128, dtype);
    }
    if let (Kind::UInt, Some(u)) = (dtype.kind, fill.as_u64()) {
        return int_bytes(u as i128, dtype);
    }
    element_bytes(dtype, x)
}

fn int_bytes(v: i128, dtype: &DType) -> Vec<u8> {
    let mut le = v.to_le_bytes()[..dtype.size].to_vec();
    if dtype.endian == Endian::Big {
        le.reverse();
    }
    le
}

/// A value as one element of `dtype` (integers round to nearest).
pub fn element_bytes(dtype: &DType, x: f64) -> Vec<u8> {
    let mut le = match (dtype.kind, dtype.size) {
        (Kind::Float, 4) => (x as f32).to_le_bytes().to_vec(),
        (Kind::Float, _) => x.to_le_bytes().to_vec(),
        (Kind::Int | Kind::UInt | Kind::Bool, _) => (x.round() as i128).to_le_bytes()[..dtype.size].to_vec(),
        _ => vec![0; dtype.size],
    };
    if dtype.endian == Endian::Big {
        le.reverse();
    }
    le
}

/// Raw elements as f64, in bulk (the hot loop of averaging).
pub fn to_f64(dtype: &DType, raw: &[u8], out: &mut Vec<f64>) -> Result<(), ChunkError> {
    out.clear();
    let big = dtype.endian == Endian::Big;
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            out.extend(raw.chunks_exact($n).map(|b| {
                let a: [u8; $n] = b.try_into().expect("exact chunks");
                (if big { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }) as f64
            }))
        };
    }
    match (dtype.kind, dtype.size) {
        (Kind::Float, 4) => conv!(f32, 4),
        (Kind::Float, 8) => conv!(f64, 8),
        (Kind::Int, 1) => conv!(i8, 1),
        (Kind::Int, 2) => conv!(i16, 2),
        (Kind::Int, 4) => conv!(i32, 4),
        (Kind::Int, 8) => conv!(i64, 8),
        (Kind::UInt | Kind::Bool, 1) => conv!(u8, 1),
        (Kind::UInt, 2) => conv!(u16, 2),
        (Kind::UInt, 4) => conv!(u32, 4),
        (Kind::UInt, 8) => conv!(u64, 8),
        _ => return Err(ChunkError::Type(dtype.typestr())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_with_bare_non_finite_tokens() {
        let v = parse_json(br#"{"a": NaN, "b": [-Infinity, 1], "s": "NaN in text \" NaN", "c": Infinity}"#).unwrap();
        assert!(number(&v["a"]).unwrap().is_nan());
        assert_eq!(number(&v["b"][0]), Some(f64::NEG_INFINITY));
        assert_eq!(v["s"], "NaN in text \" NaN");
        assert_eq!(number(&v["c"]), Some(f64::INFINITY));
    }

    #[test]
    fn unshuffle_inverts_shuffle() {
        let data: Vec<u8> = (0..23).collect();
        for size in [1, 2, 3, 4, 8] {
            assert_eq!(codec::unshuffle(&crate::codec::shuffle(&data, size), size), data);
        }
    }

    #[test]
    fn chunks_decode_through_zarr_codecs() {
        let meta: ArrayMetadataV2 = serde_json::from_str(
            r#"{"zarr_format":2,"shape":[3],"chunks":[3],"dtype":">i2","compressor":{"id":"zlib","level":1},
                "fill_value":-1,"order":"C","filters":[{"id":"shuffle","elementsize":2},{"id":"fletcher32"}]}"#,
        )
        .unwrap();
        let raw = vec![0u8, 1, 0, 2, 255, 255];
        let filters = meta.filters.clone().unwrap();
        let stored = crate::codec::encode_chunk(&raw, &filters, meta.compressor.as_ref());
        assert_eq!(decode_chunk(&meta, stored.clone()).unwrap(), raw);
        let mut values = Vec::new();
        to_f64(&meta.dtype, &raw, &mut values).unwrap();
        assert_eq!(values, vec![1.0, 2.0, -1.0]);
        let mut bad = stored;
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(decode_chunk(&meta, bad).is_err());
        assert_eq!(fill_bytes(&meta.dtype, &meta.fill_value), vec![255, 255]);
    }
}

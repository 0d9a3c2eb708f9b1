//! A NetCDF-3 header parser (classic, 64-bit offset and CDF-5), written from the format
//! specification. It reads only the header; data stays in the file and is referenced by range.
//!
//! Sizes and offsets are computed from the dimensions rather than trusted from `vsize`, which
//! is capped at 2^32-1 for large variables and is padded to 4 bytes.

use std::fmt;

/// Which of the three NetCDF-3 variants a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Classic,
    Offset64,
    Cdf5,
}

/// External (big-endian) NetCDF-3 types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NcType {
    Byte,
    Char,
    Short,
    Int,
    Float,
    Double,
    UByte,
    UShort,
    UInt,
    Int64,
    UInt64,
}

impl NcType {
    fn from_code(code: u32, variant: Variant) -> Option<Self> {
        let t = match code {
            1 => NcType::Byte,
            2 => NcType::Char,
            3 => NcType::Short,
            4 => NcType::Int,
            5 => NcType::Float,
            6 => NcType::Double,
            7 => NcType::UByte,
            8 => NcType::UShort,
            9 => NcType::UInt,
            10 => NcType::Int64,
            11 => NcType::UInt64,
            _ => return None,
        };
        (code <= 6 || variant == Variant::Cdf5).then_some(t)
    }

    /// Bytes per element on disk.
    pub fn size(self) -> usize {
        match self {
            NcType::Byte | NcType::Char | NcType::UByte => 1,
            NcType::Short | NcType::UShort => 2,
            NcType::Int | NcType::UInt | NcType::Float => 4,
            NcType::Double | NcType::Int64 | NcType::UInt64 => 8,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Dim {
    pub name: String,
    /// 0 for the record (unlimited) dimension.
    pub len: u64,
}

/// An attribute's raw big-endian values.
#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    pub name: String,
    pub nc_type: NcType,
    pub nelems: usize,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Var {
    pub name: String,
    pub dim_ids: Vec<usize>,
    pub attrs: Vec<Attr>,
    pub nc_type: NcType,
    /// Offset of the first byte of the variable (of its first record, for record variables).
    pub begin: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub variant: Variant,
    /// Number of records; `None` when the header says "streaming" (0xFFFFFFFF).
    pub numrecs: Option<u64>,
    pub dims: Vec<Dim>,
    pub attrs: Vec<Attr>,
    pub vars: Vec<Var>,
}

/// Why a header could not be parsed. `at` is the byte offset where parsing stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct HeaderError {
    pub what: HeaderProblem,
    pub at: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    BadMagic,
    UnexpectedEnd,
    BadTag(u32),
    BadType(u32),
    BadDimId(u64),
    BadName,
    TooLarge,
    RecordDimNotFirst(String),
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderProblem::BadMagic => write!(f, "not a NetCDF-3 magic number"),
            HeaderProblem::UnexpectedEnd => write!(f, "header ends early"),
            HeaderProblem::BadTag(t) => write!(f, "unexpected list tag {t:#x}"),
            HeaderProblem::BadType(t) => write!(f, "unknown nc_type {t}"),
            HeaderProblem::BadDimId(d) => write!(f, "dimension id {d} out of range"),
            HeaderProblem::BadName => write!(f, "name is not UTF-8"),
            HeaderProblem::TooLarge => write!(f, "size overflows"),
            HeaderProblem::RecordDimNotFirst(v) => {
                write!(f, "variable {v:?} uses the record dimension after its first")
            }
        }
    }
}

const TAG_DIMENSION: u32 = 0x0A;
const TAG_VARIABLE: u32 = 0x0B;
const TAG_ATTRIBUTE: u32 = 0x0C;
const STREAMING: u64 = 0xFFFF_FFFF;

/// Returns the variant if `bytes` starts with a NetCDF-3 magic number.
pub fn sniff(bytes: &[u8]) -> Option<Variant> {
    match bytes.get(..4)? {
        b"CDF\x01" => Some(Variant::Classic),
        b"CDF\x02" => Some(Variant::Offset64),
        b"CDF\x05" => Some(Variant::Cdf5),
        _ => None,
    }
}

/// Parses a header from the start of a file. `bytes` may be longer than the header.
pub fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
    parse_prefix(bytes, bytes.len() as u64)
}

/// Parses a header from the first bytes of a file of `file_size` bytes. A header that goes on
/// past `bytes` is `UnexpectedEnd`, so the caller can read more; counts are checked against
/// the whole file.
pub fn parse_prefix(bytes: &[u8], file_size: u64) -> Result<Header, HeaderError> {
    let variant = sniff(bytes).ok_or(HeaderError { what: HeaderProblem::BadMagic, at: 0 })?;
    let mut r = Reader { bytes, pos: 4, variant, file_size };
    let numrecs = r.count()?;
    let dims = r.list(TAG_DIMENSION, Reader::dim)?;
    let attrs = r.list(TAG_ATTRIBUTE, Reader::attr)?;
    let vars = r.list(TAG_VARIABLE, Reader::var)?;
    for v in &vars {
        if let Some(&bad) = v.dim_ids.iter().find(|&&d| d >= dims.len()) {
            return Err(HeaderError { what: HeaderProblem::BadDimId(bad as u64), at: r.pos });
        }
        // Only the first dimension may be the record dimension (netCDF-C: NC_EUNLIMPOS).
        if v.dim_ids.iter().skip(1).any(|&d| dims[d].len == 0) {
            return Err(HeaderError { what: HeaderProblem::RecordDimNotFirst(v.name.clone()), at: r.pos });
        }
    }
    Ok(Header { variant, numrecs: (numrecs != STREAMING).then_some(numrecs), dims, attrs, vars })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    variant: Variant,
    file_size: u64,
}

impl Reader<'_> {
    fn fail<T>(&self, what: HeaderProblem) -> Result<T, HeaderError> {
        Err(HeaderError { what, at: self.pos })
    }

    fn take(&mut self, n: usize) -> Result<&[u8], HeaderError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else { return self.fail(HeaderProblem::UnexpectedEnd) };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, HeaderError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, HeaderError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// NON_NEG counts and lengths: 8 bytes in CDF-5, else 4.
    fn count(&mut self) -> Result<u64, HeaderError> {
        match self.variant {
            Variant::Cdf5 => self.u64(),
            _ => self.u32().map(u64::from),
        }
    }

    /// Variable begin offsets: 4 bytes in classic, else 8.
    fn offset(&mut self) -> Result<u64, HeaderError> {
        match self.variant {
            Variant::Classic => self.u32().map(u64::from),
            _ => self.u64(),
        }
    }

    fn usize_count(&mut self) -> Result<usize, HeaderError> {
        let n = self.count()?;
        // Every element takes at least one byte, so a count beyond the file is corrupt.
        match usize::try_from(n) {
            Ok(n) if n as u64 <= self.file_size => Ok(n),
            _ => self.fail(HeaderProblem::TooLarge),
        }
    }

    fn padded(&mut self, n: usize) -> Result<&[u8], HeaderError> {
        let start = self.pos;
        self.take(n.div_ceil(4) * 4)?;
        Ok(&self.bytes[start..start + n])
    }

    /// A name; like netCDF-C, which hands names out as C strings, it ends at the first NUL.
    fn name(&mut self) -> Result<String, HeaderError> {
        let n = self.usize_count()?;
        let raw = self.padded(n)?;
        let raw = raw.split(|&b| b == 0).next().unwrap_or(raw);
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => self.fail(HeaderProblem::BadName),
        }
    }

    fn nc_type(&mut self) -> Result<NcType, HeaderError> {
        let code = self.u32()?;
        match NcType::from_code(code, self.variant) {
            Some(t) => Ok(t),
            None => self.fail(HeaderProblem::BadType(code)),
        }
    }

    fn list<T>(&mut self, tag: u32, item: fn(&mut Self) -> Result<T, HeaderError>) -> Result<Vec<T>, HeaderError> {
        let found = self.u32()?;
        let n = self.usize_count()?;
        if found == 0 && n == 0 {
            return Ok(Vec::new());
        }
        if found != tag {
            return self.fail(HeaderProblem::BadTag(found));
        }
        (0..n).map(|_| item(self)).collect()
    }

    fn dim(&mut self) -> Result<Dim, HeaderError> {
        Ok(Dim { name: self.name()?, len: self.count()? })
    }

    fn attr(&mut self) -> Result<Attr, HeaderError> {
        let name = self.name()?;
        let nc_type = self.nc_type()?;
        let nelems = self.usize_count()?;
        let Some(nbytes) = nelems.checked_mul(nc_type.size()) else { return self.fail(HeaderProblem::TooLarge) };
        let data = self.padded(nbytes)?.to_vec();
        Ok(Attr { name, nc_type, nelems, data })
    }

    fn var(&mut self) -> Result<Var, HeaderError> {
        let name = self.name()?;
        let ndims = self.usize_count()?;
        let dim_ids = (0..ndims)
            .map(|_| self.count().map(|d| usize::try_from(d).unwrap_or(usize::MAX)))
            .collect::<Result<_, _>>()?;
        let attrs = self.list(TAG_ATTRIBUTE, Reader::attr)?;
        let nc_type = self.nc_type()?;
        let _vsize = self.count()?;
        let begin = self.offset()?;
        Ok(Var { name, dim_ids, attrs, nc_type, begin })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a classic header by hand: dims (time unlimited, x=3), one global attr, a fixed
    /// var and a record var.
    pub(crate) fn classic_sample() -> Vec<u8> {
        let mut h = Vec::new();
        let name = |h: &mut Vec<u8>, s: &str| {
            h.extend((s.len() as u32).to_be_bytes());
            h.extend(s.as_bytes());
            h.resize(h.len().div_ceil(4) * 4, 0);
        };
        h.extend(b"CDF\x01");
        h.extend(2u32.to_be_bytes()); // numrecs
        h.extend(TAG_DIMENSION.to_be_bytes());
        h.extend(2u32.to_be_bytes());
        name(&mut h, "time");
        h.extend(0u32.to_be_bytes());
        name(&mut h, "x");
        h.extend(3u32.to_be_bytes());
        h.extend(TAG_ATTRIBUTE.to_be_bytes());
        h.extend(1u32.to_be_bytes());
        name(&mut h, "title");
        h.extend(2u32.to_be_bytes());
        h.extend(2u32.to_be_bytes());
        h.extend(b"hi\0\0");
        h.extend(TAG_VARIABLE.to_be_bytes());
        h.extend(2u32.to_be_bytes());
        name(&mut h, "x");
        h.extend(1u32.to_be_bytes());
        h.extend(1u32.to_be_bytes()); // dim x
        h.extend(0u64.to_be_bytes()); // ABSENT attrs
        h.extend(3u32.to_be_bytes()); // short
        h.extend(8u32.to_be_bytes()); // vsize (padded)
        h.extend(200u32.to_be_bytes()); // begin
        name(&mut h, "t");
        h.extend(1u32.to_be_bytes());
        h.extend(0u32.to_be_bytes()); // dim time
        h.extend(0u64.to_be_bytes());
        h.extend(6u32.to_be_bytes()); // double
        h.extend(8u32.to_be_bytes());
        h.extend(208u32.to_be_bytes());
        h
    }

    #[test]
    fn parses_a_hand_built_classic_header() {
        let h = parse(&classic_sample()).unwrap();
        assert_eq!(h.variant, Variant::Classic);
        assert_eq!(h.numrecs, Some(2));
        assert_eq!(h.dims, vec![Dim { name: "time".into(), len: 0 }, Dim { name: "x".into(), len: 3 }]);
        assert_eq!(h.attrs[0].data, b"hi");
        assert_eq!(h.vars[0].nc_type, NcType::Short);
        assert_eq!(h.vars[1].begin, 208);
        assert_eq!(h.vars[1].dim_ids, vec![0]);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = classic_sample();
        for n in 0..full.len() {
            assert!(parse(&full[..n]).is_err(), "prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn corrupt_counts_and_tags_are_errors() {
        let mut huge = classic_sample();
        huge[12..16].copy_from_slice(&u32::MAX.to_be_bytes()); // dim count
        assert!(matches!(parse(&huge).unwrap_err().what, HeaderProblem::TooLarge));
        let mut tag = classic_sample();
        tag[8..12].copy_from_slice(&0x0Bu32.to_be_bytes());
        assert!(matches!(parse(&tag).unwrap_err().what, HeaderProblem::BadTag(0x0B)));
        assert!(matches!(parse(b"CDF\x03....").unwrap_err().what, HeaderProblem::BadMagic));
    }

    #[test]
    fn counts_larger_than_the_buffer_but_inside_the_file_ask_for_more() {
        let full = classic_sample();
        let err = parse_prefix(&full[..20], 1 << 20).unwrap_err();
        assert_eq!(err.what, HeaderProblem::UnexpectedEnd);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic fuzz: flip each byte of a valid header in turn.
        let full = classic_sample();
        for i in 0..full.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut b = full.clone();
                b[i] = v;
                let _ = parse(&b);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Random bytes behind a valid magic: an error or a header, never a panic, and nothing
        /// that claims more names, values or dimensions than the bytes could hold.
        #[test]
        fn random_headers_never_panic(
            variant in 1u8..=5,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        ) {
            let mut b = b"CDF".to_vec();
            b.push(variant);
            b.extend(body);
            if let Ok(h) = parse(&b) {
                let held = h.dims.len() + h.attrs.len() + h.vars.len();
                proptest::prop_assert!(held <= b.len(), "{held} entries from {} bytes", b.len());
            }
        }

        /// A valid header with a few words overwritten (counts, lengths, tags, offsets).
        #[test]
        fn mutated_headers_never_panic(
            edits in proptest::collection::vec((0usize..200, proptest::prelude::any::<u32>()), 1..4),
            file_size in proptest::prelude::any::<u64>(),
        ) {
            let mut b = classic_sample();
            for (at, word) in edits {
                let at = (at % (b.len() / 4)) * 4;
                b[at..at + 4].copy_from_slice(&word.to_be_bytes());
            }
            let _ = parse(&b);
            let _ = parse_prefix(&b, file_size);
        }
    }
}

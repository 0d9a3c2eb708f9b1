//! A joined array: the pieces of member files it is made of, and how one of its chunks is
//! served (a byte range of one file, or assembled from several).
//!
//! # Model
//! A [`Part`] is one member file's copy of the variable, placed at `origin` in the joined
//! array. Leading dimensions added by new-dimension joins have length 1 in the part and do not
//! exist in the file (`lead` counts them). Each part keeps the member's own chunk table (12 bytes
//! per stored chunk) and the index of its [`Encoding`] (the member's `.zarray` and the
//! attributes that change decoded values).
//!
//! A chunk of the joined array is [`Mode::Direct`] when it is exactly one stored chunk of one
//! file; otherwise it is assembled: every member chunk it overlaps is read, decoded with the
//! member's codecs, converted element by element (copied, promoted, CF-decoded, or its time
//! re-encoded) and written into a chunk of the served dtype, which is served uncompressed.

use serde_json::Value;

use crate::cftime::TimeUnits;
use crate::ops::kernel::Decoded;
use crate::ops::store::{decode_chunk, fill_bytes, Attrs};
use crate::zarr::{ArrayMetadataV2, DType, Endian, Kind};

/// `ChunkRef::length` of a chunk the file does not store (it reads as the fill value).
pub const MISSING: u32 = u32::MAX;
/// Set in `ChunkRef::offset` when the bytes are in [`JoinedArray::inline`], not in the file.
pub const INLINE: u64 = 1 << 63;

/// Where one stored chunk of a member file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub offset: u64,
    pub length: u32,
}

impl ChunkRef {
    pub const NONE: ChunkRef = ChunkRef { offset: 0, length: MISSING };
}

/// How the values of a member are turned into the served values.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoding {
    /// The member's `.zarray` (in the member's own dimensions; `shape` is set to `chunks`, so
    /// members that differ only in length share one encoding).
    pub meta: ArrayMetadataV2,
    /// The member's attributes that decoding reads: `_FillValue`, `missing_value`,
    /// `scale_factor`, `add_offset`, `_Unsigned`, `units`, `calendar`.
    pub attrs: Attrs,
}

/// How served chunks are made.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Every served chunk is one stored chunk of one file, served as stored.
    Direct,
    /// Assembled from pieces; elements are copied, or converted to the served dtype when the
    /// member's dtype differs (same encoding attributes, so values stay encoded).
    Assemble,
    /// Assembled from pieces, each member decoded with its own CF attributes to floats.
    Decode,
    /// Assembled from pieces, each member's times decoded with its units and re-encoded with
    /// `units` and `calendar` (float64).
    Retime { units: String, calendar: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    /// Index of the member file in the join's source list.
    pub source: u32,
    pub encoding: u16,
    /// Leading dimensions of the joined array that the member does not have.
    pub lead: u8,
    /// First element of the part in the joined array.
    pub origin: Vec<u64>,
    /// Shape in the joined array's dimensions (`lead` ones, then the member's shape).
    pub shape: Vec<u64>,
    /// The member's stored chunks, row-major over its chunk grid.
    pub chunks: Vec<ChunkRef>,
}

/// One variable of a joined dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinedArray {
    /// The served `.zarray`.
    pub meta: ArrayMetadataV2,
    pub mode: Mode,
    pub encodings: Vec<Encoding>,
    pub parts: Vec<Part>,
    /// Bytes of inline member chunks, addressed by `ChunkRef::offset & !INLINE`.
    pub inline: Vec<u8>,
}

/// Reads bytes of the join's member files.
pub trait ByteReader: Sync {
    fn read(&self, source: u32, offset: u64, length: u64) -> Result<Vec<u8>, ReadFailure>;
}

/// A reader's own error (the gateway's names the file and tells a changed source from an I/O
/// error; callers downcast it).
pub type ReadFailure = Box<dyn std::error::Error + Send + Sync>;

/// Why a joined chunk could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// Reading member file `member` (its index in the document) failed.
    #[error("{error}")]
    Read { member: u32, error: ReadFailure },
    /// A member chunk did not decode, or cannot be converted to the joined type.
    #[error("{0}")]
    Decode(String),
}

impl Part {
    /// The stored chunk at member grid position `idx` (no allocation: this is on the path of
    /// every chunk request).
    pub fn chunk(&self, enc: &Encoding, idx: &[u64]) -> ChunkRef {
        let mut flat = 0u64;
        for ((i, s), c) in idx.iter().zip(&self.shape[self.lead as usize..]).zip(&enc.meta.chunks) {
            flat = flat * s.div_ceil(*c) + i;
        }
        self.chunks.get(flat as usize).copied().unwrap_or(ChunkRef::NONE)
    }
}

impl JoinedArray {
    /// Number of served chunks along each dimension.
    pub fn grid(&self) -> Vec<u64> {
        self.meta.chunk_grid()
    }

    /// For [`Mode::Direct`]: the part and stored chunk that a served chunk is.
    pub fn direct(&self, idx: &[u64]) -> Option<(&Part, ChunkRef)> {
        let at: Vec<u64> = idx.iter().zip(&self.meta.chunks).map(|(i, c)| i * c).collect();
        let part = self.part_at(&at)?;
        let enc = &self.encodings[part.encoding as usize];
        let member: Vec<u64> = at[part.lead as usize..]
            .iter()
            .zip(&part.origin[part.lead as usize..])
            .zip(&enc.meta.chunks)
            .map(|((a, o), c)| (a - o) / c)
            .collect();
        Some((part, part.chunk(enc, &member)))
    }

    /// The part holding element `at`. Joins build parts in row-major order of their origins,
    /// so the last part starting at or before `at` is the one, found by bisection; a scan
    /// covers any other order.
    fn part_at(&self, at: &[u64]) -> Option<&Part> {
        let i = self.parts.partition_point(|p| p.origin.as_slice() <= at);
        if let Some(p) = i.checked_sub(1).map(|i| &self.parts[i]) {
            if contains(&p.origin, &p.shape, at) {
                return Some(p);
            }
        }
        self.parts.iter().find(|p| contains(&p.origin, &p.shape, at))
    }

    /// The bytes of an inline member chunk.
    pub fn inline_bytes(&self, r: ChunkRef) -> &[u8] {
        let start = (r.offset & !INLINE) as usize;
        &self.inline[start..start + r.length as usize]
    }

    /// The served (uncompressed) bytes of the chunk at grid position `idx`, assembled from the
    /// member chunks it overlaps.
    pub fn assemble(&self, idx: &[u64], reader: &dyn ByteReader) -> Result<Vec<u8>, AssembleError> {
        let out_dtype = self.meta.dtype;
        let at: Vec<u64> = idx.iter().zip(&self.meta.chunks).map(|(i, c)| i * c).collect();
        let shape = self.meta.chunks.clone();
        let fill = fill_bytes(&out_dtype, &self.meta.fill_value);
        let n: u64 = shape.iter().product();
        let mut out = Vec::with_capacity(n as usize * out_dtype.size);
        for _ in 0..n {
            out.extend_from_slice(&fill);
        }
        let block = Block { at: &at, shape: &shape };
        for part in &self.parts {
            let Some((lo, hi)) = overlap(&block, &part.origin, &part.shape) else { continue };
            let enc = &self.encodings[part.encoding as usize];
            let convert = Convert::new(&self.mode, enc, out_dtype).map_err(AssembleError::Decode)?;
            let lead = part.lead as usize;
            let mchunks = &enc.meta.chunks;
            // Member chunk grid positions overlapping [lo, hi).
            let first: Vec<u64> =
                lo[lead..].iter().zip(&part.origin[lead..]).zip(mchunks).map(|((l, o), c)| (l - o) / c).collect();
            let last: Vec<u64> =
                hi[lead..].iter().zip(&part.origin[lead..]).zip(mchunks).map(|((h, o), c)| (h - o - 1) / c).collect();
            for_each_index(&first, &last, |m| -> Result<(), AssembleError> {
                let stored = self.stored(part, enc, m, reader)?;
                let mut src_at = part.origin[..lead].to_vec();
                let mut src_shape = vec![1; lead];
                for (d, (i, c)) in m.iter().zip(mchunks).enumerate() {
                    src_at.push(part.origin[lead + d] + i * c);
                    src_shape.push(*c);
                }
                // Clip to the part: a member's edge chunk is padded past its own end.
                let (clo, chi) = match overlap(&Block { at: &src_at, shape: &src_shape }, &part.origin, &part.shape) {
                    Some(b) => b,
                    None => return Ok(()),
                };
                let Some((lo2, hi2)) = overlap(&block, &clo, &hi_minus(&chi, &clo)) else { return Ok(()) };
                copy_box(&stored, &src_at, &src_shape, &mut out, &at, &shape, &lo2, &hi2, &convert);
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// The decoded (raw element) bytes of one member chunk; fill when it is not stored.
    fn stored(
        &self,
        part: &Part,
        enc: &Encoding,
        idx: &[u64],
        reader: &dyn ByteReader,
    ) -> Result<Vec<u8>, AssembleError> {
        let r = part.chunk(enc, idx);
        let bytes = if r.length == MISSING {
            let fill = fill_bytes(&enc.meta.dtype, &enc.meta.fill_value);
            return Ok(fill.repeat(enc.meta.chunks.iter().product::<u64>().max(1) as usize));
        } else if r.offset & INLINE != 0 {
            self.inline_bytes(r).to_vec()
        } else {
            reader
                .read(part.source, r.offset, u64::from(r.length))
                .map_err(|error| AssembleError::Read { member: part.source, error })?
        };
        decode_chunk(&enc.meta, bytes).map_err(|e| AssembleError::Decode(e.to_string()))
    }
}

struct Block<'a> {
    at: &'a [u64],
    shape: &'a [u64],
}

fn contains(origin: &[u64], shape: &[u64], at: &[u64]) -> bool {
    origin.iter().zip(shape).zip(at).all(|((o, s), a)| *a >= *o && *a < o + s)
}

fn hi_minus(hi: &[u64], lo: &[u64]) -> Vec<u64> {
    hi.iter().zip(lo).map(|(h, l)| h - l).collect()
}

/// The intersection `[lo, hi)` of a block and the box at `origin` of `shape`.
fn overlap(block: &Block, origin: &[u64], shape: &[u64]) -> Option<(Vec<u64>, Vec<u64>)> {
    let mut lo = Vec::with_capacity(origin.len());
    let mut hi = Vec::with_capacity(origin.len());
    for d in 0..origin.len() {
        let l = block.at[d].max(origin[d]);
        let h = (block.at[d] + block.shape[d]).min(origin[d] + shape[d]);
        if l >= h {
            return None;
        }
        lo.push(l);
        hi.push(h);
    }
    Some((lo, hi))
}

/// Calls `f` for every index between `first` and `last` (inclusive), row-major.
fn for_each_index<E>(first: &[u64], last: &[u64], mut f: impl FnMut(&[u64]) -> Result<(), E>) -> Result<(), E> {
    let mut idx = first.to_vec();
    loop {
        f(&idx)?;
        let mut d = idx.len();
        loop {
            if d == 0 {
                return Ok(());
            }
            d -= 1;
            if idx[d] < last[d] {
                idx[d] += 1;
                break;
            }
            idx[d] = first[d];
        }
    }
}

/// Element conversion from a member's stored dtype to the served dtype.
enum Convert {
    Bytes,
    Values { from: DType, to: DType, map: Box<dyn Fn(f64) -> f64> },
}

impl Convert {
    fn new(mode: &Mode, enc: &Encoding, to: DType) -> Result<Convert, String> {
        let from = enc.meta.dtype;
        Ok(match mode {
            Mode::Direct | Mode::Assemble if from == to => Convert::Bytes,
            Mode::Direct | Mode::Assemble => Convert::Values { from, to, map: Box::new(|x| x) },
            Mode::Decode => {
                let decoded = Decoded::new(from, &enc.attrs);
                Convert::Values { from, to, map: Box::new(move |x| decoded.apply(x)) }
            }
            Mode::Retime { units, calendar } => {
                let str_attr = |k: &str| enc.attrs.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                let src = TimeUnits::parse(&str_attr("units"), &str_attr("calendar"))?;
                let dst = TimeUnits::parse(units, calendar)?;
                let fills = Decoded::new(from, &enc.attrs);
                Convert::Values {
                    from,
                    to,
                    map: Box::new(move |x| {
                        let x = fills.apply(x);
                        if x.is_nan() {
                            return f64::NAN;
                        }
                        src.decode(x).and_then(|t| dst.encode(&t)).unwrap_or(f64::NAN)
                    }),
                }
            }
        })
    }
}

/// Copies the box `[lo, hi)` from the C-order block `src` (at `src_at`, of `src_shape`) into the
/// block `dst` (at `dst_at`, of `dst_shape`), converting elements.
#[allow(clippy::too_many_arguments)]
fn copy_box(
    src: &[u8],
    src_at: &[u64],
    src_shape: &[u64],
    dst: &mut [u8],
    dst_at: &[u64],
    dst_shape: &[u64],
    lo: &[u64],
    hi: &[u64],
    convert: &Convert,
) {
    let (ssize, dsize) = match convert {
        Convert::Bytes => (dst.len() / dst_shape.iter().product::<u64>().max(1) as usize, 0),
        Convert::Values { from, to, .. } => (from.size, to.size),
    };
    let dsize = if dsize == 0 { ssize } else { dsize };
    let nd = lo.len();
    if nd == 0 {
        convert_run(&src[..ssize], &mut dst[..dsize], convert);
        return;
    }
    let run = (hi[nd - 1] - lo[nd - 1]) as usize;
    let offset = |at: &[u64], shape: &[u64], idx: &[u64]| -> usize {
        let mut flat = 0u64;
        for d in 0..nd {
            flat = flat * shape[d] + (idx[d] - at[d]);
        }
        flat as usize
    };
    let mut last = hi.to_vec();
    last.iter_mut().for_each(|h| *h -= 1);
    let mut row_last = last.clone();
    row_last[nd - 1] = lo[nd - 1];
    let _ = for_each_index(lo, &row_last, |idx| -> Result<(), ()> {
        let s = offset(src_at, src_shape, idx) * ssize;
        let d = offset(dst_at, dst_shape, idx) * dsize;
        convert_run(&src[s..s + run * ssize], &mut dst[d..d + run * dsize], convert);
        Ok(())
    });
}

fn convert_run(src: &[u8], dst: &mut [u8], convert: &Convert) {
    match convert {
        Convert::Bytes => dst.copy_from_slice(src),
        Convert::Values { from, to, map } => {
            let mut values = Vec::new();
            if crate::ops::store::to_f64(from, src, &mut values).is_err() {
                return;
            }
            for (x, out) in values.iter().zip(dst.chunks_exact_mut(to.size)) {
                write_element(to, map(*x), out);
            }
        }
    }
}

/// Writes `x` as one element of `dtype` (integers round to nearest).
pub fn write_element(dtype: &DType, x: f64, out: &mut [u8]) {
    let big = dtype.endian == Endian::Big;
    macro_rules! put {
        ($v:expr) => {{
            let b = if big { $v.to_be_bytes() } else { $v.to_le_bytes() };
            out.copy_from_slice(&b);
        }};
    }
    match (dtype.kind, dtype.size) {
        (Kind::Float, 4) => put!(x as f32),
        (Kind::Float, 8) => put!(x),
        (Kind::Int, 1) => put!(x.round() as i8),
        (Kind::Int, 2) => put!(x.round() as i16),
        (Kind::Int, 4) => put!(x.round() as i32),
        (Kind::Int, 8) => put!(x.round() as i64),
        (Kind::UInt | Kind::Bool, 1) => put!(x.round() as u8),
        (Kind::UInt, 2) => put!(x.round() as u16),
        (Kind::UInt, 4) => put!(x.round() as u32),
        (Kind::UInt, 8) => put!(x.round() as u64),
        _ => out.fill(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zarr::{Order, Separator, ZarrFormat2};

    fn meta(shape: &[u64], chunks: &[u64]) -> ArrayMetadataV2 {
        ArrayMetadataV2 {
            zarr_format: ZarrFormat2,
            shape: shape.to_vec(),
            chunks: chunks.to_vec(),
            dtype: DType::parse("<i4").unwrap(),
            compressor: None,
            fill_value: Value::from(-1),
            order: Order::C,
            filters: None,
            dimension_separator: Separator::Dot,
        }
    }

    /// Member chunks kept inline: values 0.. of the member, 4 bytes each.
    fn part(source: u32, origin: u64, len: u64, chunk: u64, inline: &mut Vec<u8>, first: i32) -> (Part, Encoding) {
        let mut chunks = Vec::new();
        let mut v = first;
        for c in 0..len.div_ceil(chunk) {
            let start = inline.len() as u64;
            for i in 0..chunk {
                let x = if c * chunk + i < len { v } else { 999 };
                inline.extend_from_slice(&x.to_le_bytes());
                v += 1;
            }
            chunks.push(ChunkRef { offset: INLINE | start, length: (chunk * 4) as u32 });
        }
        let enc = Encoding { meta: meta(&[chunk], &[chunk]), attrs: Attrs::new() };
        (Part { source, encoding: 0, lead: 0, origin: vec![origin], shape: vec![len], chunks }, enc)
    }

    struct NoFiles;
    impl ByteReader for NoFiles {
        fn read(&self, _: u32, _: u64, _: u64) -> Result<Vec<u8>, ReadFailure> {
            Err("no files".into())
        }
    }

    #[test]
    fn uneven_members_assemble_into_a_regular_grid_without_padding_leaking() {
        // Files of 5 and 4 elements, chunked by 3 (each has a padded edge chunk).
        let mut inline = Vec::new();
        let (a, enc) = part(0, 0, 5, 3, &mut inline, 0);
        let (mut b, _) = part(1, 5, 4, 3, &mut inline, 5);
        b.encoding = 0;
        let array = JoinedArray {
            meta: meta(&[9], &[3]),
            mode: Mode::Assemble,
            encodings: vec![enc],
            parts: vec![a, b],
            inline,
        };
        let mut all = Vec::new();
        for c in 0..3 {
            let bytes = array.assemble(&[c], &NoFiles).unwrap();
            all.extend(bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())));
        }
        assert_eq!(all, (0..9).collect::<Vec<i32>>());
    }

    #[test]
    fn decode_mode_applies_each_members_scale() {
        let mut inline = Vec::new();
        let (a, mut ea) = part(0, 0, 2, 2, &mut inline, 1);
        let (mut b, mut eb) = part(1, 2, 2, 2, &mut inline, 1);
        ea.attrs.insert("scale_factor".into(), Value::from(10.0));
        eb.attrs.insert("scale_factor".into(), Value::from(1.0));
        b.encoding = 1;
        let mut out = meta(&[4], &[4]);
        out.dtype = DType::parse("<f8").unwrap();
        out.fill_value = Value::from("NaN");
        let array = JoinedArray { meta: out, mode: Mode::Decode, encodings: vec![ea, eb], parts: vec![a, b], inline };
        let bytes = array.assemble(&[0], &NoFiles).unwrap();
        let v: Vec<f64> = bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(v, vec![10.0, 20.0, 1.0, 2.0]);
    }

    #[test]
    fn direct_lookup_finds_the_member_chunk() {
        let mut inline = Vec::new();
        let (a, enc) = part(0, 0, 6, 3, &mut inline, 0);
        let (b, _) = part(1, 6, 3, 3, &mut inline, 6);
        let array =
            JoinedArray { meta: meta(&[9], &[3]), mode: Mode::Direct, encodings: vec![enc], parts: vec![a, b], inline };
        let (p, r) = array.direct(&[2]).unwrap();
        assert_eq!(p.source, 1);
        assert_eq!(&array.inline_bytes(r)[..4], &6i32.to_le_bytes());
    }
}

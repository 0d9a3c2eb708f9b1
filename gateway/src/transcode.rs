//! Decoding HDF5 filter pipelines in Rust, for variables plain Zarr clients cannot read.
//!
//! The indexer records each such variable's pipeline and stored chunks (`zarrgate.transcode`).
//! The gateway serves those chunks decoded and uncompressed (`compressor: null`), so every
//! client reads them. Filters run in reverse write order; a filter whose bit is set in the
//! chunk's `filter_mask` was skipped when the chunk was written and is skipped here too.
//!
//! Supported: deflate (1), shuffle (2), fletcher32 (3), lzf (32000), blosc 1 (32001, with
//! blosclz, lz4, zlib or zstd inside), lz4 (32004), bitshuffle (32008, plain, lz4 or zstd),
//! zstd (32015), bzip2 (307), HDF5's own szip (4), n-bit (5) and scale-offset (6) (see
//! [`native`]), and the lossy zfp (32013) and JPEG (32019) (see [`lossy`]). Anything else
//! (mafisc, sz, …) leaves the variable unserved, with the reason.

mod lossy;
mod native;

use zarrgate_core::codec;
use zarrgate_core::report::{Compound, Hdf5Filter};
use zarrgate_core::zarr::DType;

const DEFLATE: i32 = 1;
const SHUFFLE: i32 = 2;
const FLETCHER32: i32 = 3;
const SZIP: i32 = 4;
const NBIT: i32 = 5;
const SCALEOFFSET: i32 = 6;
const BZIP2: i32 = 307;
const LZF: i32 = 32000;
const BLOSC: i32 = 32001;
const LZ4: i32 = 32004;
const BITSHUFFLE: i32 = 32008;
const ZFP: i32 = 32013;
const ZSTD: i32 = 32015;
const JPEG: i32 = 32019;

/// One decoding step.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Deflate,
    Shuffle { elem: usize },
    Fletcher32,
    Bzip2,
    Lzf,
    Blosc,
    Lz4,
    Bitshuffle { elem: usize, block: usize, codec: u32 },
    Zstd,
    Szip(native::Szip),
    Nbit(native::Nbit),
    ScaleOffset(native::ScaleOffset),
    Zfp(lossy::Zfp),
    Jpeg,
}

/// A compound's stored element size and each field's (offset, size, byte swap).
type Repack = (usize, Vec<(usize, usize, bool)>);

/// A variable's decoding pipeline (in HDF5 write order) and its decoded chunk size.
#[derive(Clone, Debug)]
pub struct Pipeline {
    steps: Vec<Step>,
    chunk_bytes: usize,
    /// For a compound type: the stored element size and each field's (offset, size, swap),
    /// packed in this order after decoding.
    repack: Option<Repack>,
}

impl Pipeline {
    /// Builds the pipeline, or says which filter the gateway cannot decode.
    pub fn new(filters: &[Hdf5Filter], dtype: DType, chunk_bytes: usize) -> Result<Self, String> {
        let elem_size = dtype.size();
        let steps = filters
            .iter()
            .map(|f| {
                let cd = |i: usize| f.cd_values.get(i).copied().unwrap_or(0) as usize;
                Ok(match f.id {
                    DEFLATE => Step::Deflate,
                    SHUFFLE => Step::Shuffle { elem: if cd(0) > 0 { cd(0) } else { elem_size } },
                    FLETCHER32 => Step::Fletcher32,
                    BZIP2 => Step::Bzip2,
                    LZF => Step::Lzf,
                    BLOSC => Step::Blosc,
                    LZ4 => Step::Lz4,
                    BITSHUFFLE => {
                        let codec = cd(4) as u32;
                        if !matches!(codec, 0 | 2 | 3) {
                            return Err(format!("bitshuffle with compression {codec} is not supported"));
                        }
                        Step::Bitshuffle { elem: if cd(2) > 0 { cd(2) } else { elem_size }, block: cd(3), codec }
                    }
                    ZSTD => Step::Zstd,
                    SZIP => Step::Szip(native::Szip::new(&f.cd_values)?),
                    NBIT => Step::Nbit(native::Nbit::new(&f.cd_values, dtype)?),
                    SCALEOFFSET => Step::ScaleOffset(native::ScaleOffset::new(&f.cd_values)?),
                    ZFP => Step::Zfp(lossy::Zfp::new(&f.cd_values, dtype)?),
                    JPEG => {
                        lossy::jpeg_accepts(dtype)?;
                        Step::Jpeg
                    }
                    _ => return Err(format!("the gateway cannot decode HDF5 filter {} (id {})", f.name, f.id)),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Pipeline { steps, chunk_bytes, repack: None })
    }

    /// Packs the fields of each decoded compound element together, in order, with big-endian
    /// numbers made little-endian (zarr-python cannot cast structured dtypes with big-endian
    /// fields); [`served_typestr`] names the fields so.
    pub fn repacking(self, compound: &Compound) -> Result<Self, String> {
        let fields: Vec<(usize, usize, bool)> =
            compound.fields.iter().map(|f| (f.offset, f.size, f.typestr.starts_with('>'))).collect();
        let outside =
            |&(offset, size, _): &(usize, usize, bool)| offset.checked_add(size).is_none_or(|end| end > compound.size);
        if compound.size == 0 || fields.iter().any(outside) {
            return Err(format!("compound layout {compound:?} is inconsistent"));
        }
        Ok(Pipeline { repack: Some((compound.size, fields)), ..self })
    }

    /// Size of every served chunk.
    pub fn chunk_bytes(&self) -> usize {
        match &self.repack {
            Some((size, fields)) => self.chunk_bytes / size * fields.iter().map(|f| f.1).sum::<usize>(),
            None => self.chunk_bytes,
        }
    }

    /// Decodes one stored chunk.
    pub fn decode(&self, stored: Vec<u8>, filter_mask: u32) -> Result<Vec<u8>, String> {
        let mut data = stored;
        for (i, step) in self.steps.iter().enumerate().rev() {
            if i < 32 && filter_mask & (1 << i) != 0 {
                continue;
            }
            data = step.decode(data, self.chunk_bytes).map_err(|e| format!("filter {step:?}: {e}"))?;
        }
        if data.len() != self.chunk_bytes {
            return Err(format!("decoded chunk has {} bytes, expected {}", data.len(), self.chunk_bytes));
        }
        Ok(match &self.repack {
            Some((size, fields)) => {
                let mut out = Vec::with_capacity(self.chunk_bytes());
                for element in data.chunks_exact(*size) {
                    for &(offset, len, swap) in fields {
                        let field = &element[offset..offset + len];
                        if swap {
                            out.extend(field.iter().rev());
                        } else {
                            out.extend_from_slice(field);
                        }
                    }
                }
                out
            }
            None => data,
        })
    }
}

/// The typestring a compound field is served with (see [`Pipeline::repacking`]).
pub fn served_typestr(field: &zarrgate_core::report::CompoundField) -> String {
    match field.typestr.strip_prefix('>') {
        Some(rest) => format!("<{rest}"),
        None => field.typestr.clone(),
    }
}

/// What a step may decode to beyond the chunk's declared size: the checksum and headers other
/// filters put on top of it (scale-offset's 21 bytes, Fletcher-32's 4).
const STEP_SLACK: usize = 1024;

impl Step {
    /// Decodes one step. Every decoder is held to the chunk size the metadata declares (plus
    /// [`STEP_SLACK`]): a corrupt or hostile chunk that claims, or inflates to, more is an error
    /// for that chunk, never an allocation that takes the process down.
    fn decode(&self, data: Vec<u8>, chunk_bytes: usize) -> Result<Vec<u8>, String> {
        let limit = chunk_bytes.saturating_add(STEP_SLACK);
        match self {
            Step::Deflate => codec::zlib_decode(&data, chunk_bytes, limit).map_err(|e| e.to_string()),
            Step::Shuffle { elem } => Ok(codec::unshuffle(&data, *elem)),
            Step::Fletcher32 => codec::strip_fletcher32(data).map_err(|e| e.to_string()),
            Step::Bzip2 => read_all(bzip2::read::BzDecoder::new(&data[..]), chunk_bytes, limit),
            Step::Lzf => lzf_decompress(&data, chunk_bytes),
            Step::Blosc => blosc_decompress(&data, limit),
            Step::Lz4 => hdf5_lz4_decompress(&data, limit),
            Step::Bitshuffle { elem, block, codec } => {
                bitshuffle_decode(&data, *elem, *block, *codec, chunk_bytes, limit)
            }
            Step::Zstd => zstd_decompress(&data, chunk_bytes, limit),
            // Another filter's header may ride on top of the chunk (scale-offset's 21 bytes).
            Step::Szip(szip) => szip.decode(&data, chunk_bytes + 64),
            Step::Nbit(nbit) => nbit.decode(data),
            Step::ScaleOffset(so) => so.decode(data),
            Step::Zfp(zfp) => zfp.decode(&data, chunk_bytes),
            Step::Jpeg => lossy::jpeg_decode(&data, chunk_bytes),
        }
    }
}

/// Reads a decoder to its end, but no more than `limit` bytes.
fn read_all(reader: impl std::io::Read, hint: usize, limit: usize) -> Result<Vec<u8>, String> {
    codec::read_capped(reader, hint, limit).map_err(|e| e.to_string())
}

fn zstd_decompress(data: &[u8], hint: usize, limit: usize) -> Result<Vec<u8>, String> {
    let decoder = ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| e.to_string())?;
    read_all(decoder, hint, limit)
}

/// Refuses a size a stream's header declares beyond what the chunk can hold.
fn within(declared: usize, limit: usize, what: &str) -> Result<usize, String> {
    if declared > limit {
        return Err(format!("{what} declares {declared} bytes, more than the chunk's {limit}"));
    }
    Ok(declared)
}

/// LZF (liblzf) decompression.
fn lzf_decompress(input: &[u8], out_len: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(out_len);
    let mut ip = 0;
    let bad = || "corrupt LZF data".to_string();
    while ip < input.len() {
        let ctrl = input[ip] as usize;
        ip += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            let lit = input.get(ip..ip + run).ok_or_else(bad)?;
            out.extend_from_slice(lit);
            ip += run;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                len += *input.get(ip).ok_or_else(bad)? as usize;
                ip += 1;
            }
            let back = ((ctrl & 0x1f) << 8) + *input.get(ip).ok_or_else(bad)? as usize + 1;
            ip += 1;
            let start = out.len().checked_sub(back).ok_or_else(bad)?;
            for k in 0..len + 2 {
                let b = out[start + k];
                out.push(b);
            }
        }
        if out.len() > out_len {
            return Err(bad());
        }
    }
    Ok(out)
}

fn be_u32(data: &[u8], at: usize) -> Result<usize, String> {
    let b: [u8; 4] = data.get(at..at + 4).ok_or("truncated header")?.try_into().expect("four bytes");
    Ok(u32::from_be_bytes(b) as usize)
}

fn be_u64(data: &[u8], at: usize) -> Result<usize, String> {
    let b: [u8; 8] = data.get(at..at + 8).ok_or("truncated header")?.try_into().expect("eight bytes");
    usize::try_from(u64::from_be_bytes(b)).map_err(|_| "size does not fit".to_string())
}

/// The HDF5 LZ4 filter: total size (u64 BE), block size (u32 BE), then blocks, each a u32 BE
/// stored length and LZ4 block data (stored raw when compression did not help).
fn hdf5_lz4_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let total = within(be_u64(data, 0)?, limit, "the LZ4 header")?;
    let block = be_u32(data, 8)?;
    if block == 0 {
        return Err("zero block size".into());
    }
    let mut out = Vec::with_capacity(total);
    let mut at = 12;
    while out.len() < total {
        let want = block.min(total - out.len());
        let len = be_u32(data, at)?;
        at += 4;
        let body = data.get(at..at + len).ok_or("truncated block")?;
        at += len;
        if len == want {
            out.extend_from_slice(body);
        } else {
            let part = lz4_flex::block::decompress(body, want).map_err(|e| e.to_string())?;
            out.extend_from_slice(&part);
        }
    }
    Ok(out)
}

fn le_u32(data: &[u8], at: usize) -> Result<usize, String> {
    let b: [u8; 4] = data.get(at..at + 4).ok_or("truncated header")?.try_into().expect("four bytes");
    Ok(u32::from_le_bytes(b) as usize)
}

/// A Blosc 1 buffer: a 16-byte header (flags, type size, sizes), block offsets, then per block
/// one stream, or one per byte of the type ("splits"), each a u32 LE length and compressed
/// bytes (stored as they are when that length equals the stream size). Blocks are then
/// unshuffled by byte or by bit, as the flags say.
fn blosc_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    const SHUFFLE_FLAG: u8 = 0x1;
    const MEMCPYED: u8 = 0x2;
    const BITSHUFFLE_FLAG: u8 = 0x4;
    const DONT_SPLIT: u8 = 0x10;
    let header = data.get(..16).ok_or("truncated Blosc header")?;
    let flags = header[2];
    let typesize = (header[3] as usize).max(1);
    let nbytes = within(le_u32(data, 4)?, limit, "the Blosc header")?;
    let blocksize = le_u32(data, 8)?;
    if nbytes == 0 {
        return Ok(Vec::new());
    }
    if flags & MEMCPYED != 0 {
        return Ok(data.get(16..16 + nbytes).ok_or("truncated Blosc data")?.to_vec());
    }
    if blocksize == 0 {
        return Err("Blosc block size is zero".into());
    }
    let codec = flags >> 5;
    let nblocks = nbytes.div_ceil(blocksize);
    let mut out = Vec::with_capacity(nbytes);
    for j in 0..nblocks {
        let leftover = j == nblocks - 1 && nbytes % blocksize != 0;
        let bsize = if leftover { nbytes % blocksize } else { blocksize };
        let split = flags & DONT_SPLIT == 0 && typesize <= 16 && bsize / typesize >= 128 && !leftover;
        let streams = if split { typesize } else { 1 };
        let stream_size = bsize / streams;
        let mut at = le_u32(data, 16 + 4 * j)?;
        let mut block = Vec::with_capacity(bsize);
        for _ in 0..streams {
            let len = le_u32(data, at)?;
            at += 4;
            let body = data.get(at..at + len).ok_or("truncated Blosc stream")?;
            at += len;
            let part = if len == stream_size {
                body.to_vec()
            } else {
                match codec {
                    0 => blosclz_decompress(body, stream_size)?,
                    1 => lz4_flex::block::decompress(body, stream_size).map_err(|e| e.to_string())?,
                    3 => read_all(flate2::read::ZlibDecoder::new(body), stream_size, stream_size)?,
                    4 => zstd_decompress(body, stream_size, stream_size)?,
                    other => return Err(format!("Blosc codec {other} (snappy or unknown) is not supported")),
                }
            };
            if part.len() != stream_size {
                return Err("Blosc stream decodes to the wrong size".into());
            }
            block.extend_from_slice(&part);
        }
        if flags & SHUFFLE_FLAG != 0 && typesize > 1 {
            block = codec::unshuffle(&block, typesize);
        } else if flags & BITSHUFFLE_FLAG != 0 && bsize >= typesize {
            let whole = bsize / typesize / 8 * 8;
            let mut unshuffled = bitunshuffle(&block[..whole * typesize], whole, typesize);
            unshuffled.extend_from_slice(&block[whole * typesize..]);
            block = unshuffled;
        }
        out.extend_from_slice(&block);
    }
    Ok(out)
}

/// BloscLZ (a FastLZ variant): a control byte below 32 starts a literal run of `ctrl + 1`
/// bytes; above, `ctrl >> 5` is the match length code (7 means more length bytes follow, each
/// added until one is not 255) and the low five bits the high byte of the distance. A stream
/// never ends on a match.
fn blosclz_decompress(input: &[u8], out_len: usize) -> Result<Vec<u8>, String> {
    const MAX_DISTANCE: usize = 8191;
    let bad = || "corrupt BloscLZ data".to_string();
    let mut out: Vec<u8> = Vec::with_capacity(out_len);
    let mut ip = 0;
    let next = |ip: &mut usize| -> Result<usize, String> {
        let b = *input.get(*ip).ok_or_else(bad)?;
        *ip += 1;
        Ok(b as usize)
    };
    let mut ctrl = next(&mut ip)? & 31;
    loop {
        if ctrl >= 32 {
            let mut len = (ctrl >> 5) - 1;
            let mut ofs = (ctrl & 31) << 8;
            if len == 6 {
                loop {
                    let code = next(&mut ip)?;
                    len += code;
                    if code != 255 {
                        break;
                    }
                }
            }
            let code = next(&mut ip)?;
            len += 3;
            let mut back = ofs + code;
            if code == 255 && ofs == 31 << 8 {
                ofs = next(&mut ip)? << 8;
                ofs += next(&mut ip)?;
                back = ofs + MAX_DISTANCE;
            }
            let start = out.len().checked_sub(back + 1).ok_or_else(bad)?;
            if out.len() + len > out_len || ip >= input.len() {
                return Err(bad());
            }
            ctrl = next(&mut ip)?;
            for k in 0..len {
                let b = out[start + k];
                out.push(b);
            }
        } else {
            let run = ctrl + 1;
            if out.len() + run > out_len {
                return Err(bad());
            }
            out.extend_from_slice(input.get(ip..ip + run).ok_or_else(bad)?);
            ip += run;
            if ip >= input.len() {
                break;
            }
            ctrl = next(&mut ip)?;
        }
    }
    Ok(out)
}

/// bitshuffle's default block size in elements.
fn default_block(elem: usize) -> usize {
    ((8192 / elem.max(1)) / 8 * 8).max(128)
}

/// The bitshuffle HDF5 filter. With compression the data starts with the total size (u64 BE)
/// and the block size in bytes (u32 BE); each block is a u32 BE compressed length and an LZ4 or
/// zstd frame. Elements past the last multiple of 8 are stored as they are.
fn bitshuffle_decode(
    data: &[u8],
    elem: usize,
    block: usize,
    codec: u32,
    chunk_bytes: usize,
    limit: usize,
) -> Result<Vec<u8>, String> {
    if elem == 0 {
        return Err("zero element size".into());
    }
    let (total, block_elems, mut at) = if codec == 0 {
        (chunk_bytes, if block > 0 { block } else { default_block(elem) }, 0)
    } else {
        let total = within(be_u64(data, 0)?, limit, "the bitshuffle header")?;
        let block_bytes = be_u32(data, 8)?;
        (total, if block_bytes > 0 { block_bytes / elem } else { default_block(elem) }, 12)
    };
    let n = total / elem;
    let mut out = Vec::with_capacity(total);
    let mut done = 0;
    while done + 8 <= n {
        let count = block_elems.min(n - done) / 8 * 8;
        if count == 0 {
            break;
        }
        let size = count * elem;
        let raw: Vec<u8> = match codec {
            0 => {
                let b = data.get(at..at + size).ok_or("truncated block")?.to_vec();
                at += size;
                b
            }
            _ => {
                let len = be_u32(data, at)?;
                at += 4;
                let body = data.get(at..at + len).ok_or("truncated block")?;
                at += len;
                if codec == 2 {
                    lz4_flex::block::decompress(body, size).map_err(|e| e.to_string())?
                } else {
                    zstd_decompress(body, size, size)?
                }
            }
        };
        if raw.len() != size {
            return Err("block decodes to the wrong size".into());
        }
        out.extend_from_slice(&bitunshuffle(&raw, count, elem));
        done += count;
    }
    let rest = (n - done) * elem + (total - n * elem);
    out.extend_from_slice(data.get(at..at + rest).ok_or("truncated tail")?);
    Ok(out)
}

/// Inverts bitshuffle's transpose of `n` elements (n a multiple of 8): bit `k` of byte `j` of
/// element `i` is stored at bit `(8 j + k) n + i` (least significant bit first).
fn bitunshuffle(data: &[u8], n: usize, elem: usize) -> Vec<u8> {
    let mut out = vec![0u8; n * elem];
    let row = n / 8;
    for j in 0..elem {
        for k in 0..8 {
            let plane = &data[(j * 8 + k) * row..(j * 8 + k + 1) * row];
            for (byte_i, &bits) in plane.iter().enumerate() {
                if bits == 0 {
                    continue;
                }
                for b in 0..8 {
                    if bits & (1 << b) != 0 {
                        out[(byte_i * 8 + b) * elem + j] |= 1 << k;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32le() -> DType {
        DType::new(zarrgate_core::zarr::Kind::UInt, 4, zarrgate_core::zarr::Endian::Little)
    }

    fn filter(id: i32, cd_values: Vec<u32>) -> Hdf5Filter {
        Hdf5Filter { id, name: String::new(), cd_values }
    }

    #[test]
    fn shuffle_round_trips_with_a_tail() {
        let data: Vec<u8> = (0..23).collect();
        assert_eq!(codec::unshuffle(&codec::shuffle(&data, 4), 4), data);
    }

    #[test]
    fn deflate_shuffle_fletcher_pipeline_decodes_and_skips_masked_filters() {
        let raw: Vec<u8> = (0..64u32).flat_map(|v| (v * 7).to_le_bytes()).collect();
        let shuffled = zarrgate_core::codec::shuffle(&raw, 4);
        let mut stored = zarrgate_core::codec::zlib_encode(&shuffled, 4);
        let sum = zarrgate_core::codec::fletcher32(&stored);
        stored.extend_from_slice(&sum.to_le_bytes());
        let filters = [filter(SHUFFLE, vec![4]), filter(DEFLATE, vec![4]), filter(FLETCHER32, vec![])];
        let p = Pipeline::new(&filters, u32le(), raw.len()).unwrap();
        assert_eq!(p.decode(stored.clone(), 0).unwrap(), raw);
        // Deflate skipped for this chunk: the stored bytes are shuffled only.
        let mut plain = shuffled.clone();
        plain.extend_from_slice(&zarrgate_core::codec::fletcher32(&shuffled).to_le_bytes());
        assert_eq!(p.decode(plain, 0b010).unwrap(), raw);
        // A corrupt chunk is an error, never wrong bytes.
        let mut bad = stored;
        bad[3] ^= 0xff;
        assert!(p.decode(bad, 0).is_err());
    }

    #[test]
    fn compound_fields_are_packed_in_order() {
        use zarrgate_core::report::CompoundField;
        let field = |name: &str, typestr: &str, offset, size| CompoundField {
            name: name.into(),
            typestr: typestr.into(),
            offset,
            size,
        };
        // i1 at 0, big-endian i2 at 2, f8 at 8: 16 bytes stored, 11 served.
        let fields = vec![field("a", "|i1", 0, 1), field("b", ">i2", 2, 2), field("c", "<f8", 8, 8)];
        assert_eq!(served_typestr(&fields[1]), "<i2");
        let compound = Compound { size: 16, fields };
        let bytes = DType::new(zarrgate_core::zarr::Kind::Bytes, 16, zarrgate_core::zarr::Endian::NotApplicable);
        let p = Pipeline::new(&[], bytes, 32).unwrap().repacking(&compound).unwrap();
        assert_eq!(p.chunk_bytes(), 22);
        let stored: Vec<u8> = (0..32).collect();
        let packed = [0, 3, 2, 8, 9, 10, 11, 12, 13, 14, 15];
        let want: Vec<u8> = packed.iter().copied().chain(packed.iter().map(|b| b + 16)).collect();
        assert_eq!(p.decode(stored, 0).unwrap(), want);
        let bad = Compound { size: 4, fields: vec![field("a", "<i4", 2, 4)] };
        assert!(Pipeline::new(&[], bytes, 32).unwrap().repacking(&bad).is_err());
    }

    #[test]
    fn unknown_filters_are_named() {
        let err = Pipeline::new(&[filter(32002, vec![])], u32le(), 16).unwrap_err();
        assert!(err.contains("id 32002"), "{err}");
    }

    #[test]
    fn lzf_literals_and_back_references() {
        // "abcabcabc": literal "abc", then a back reference of length 6 at distance 3.
        let input = [2, b'a', b'b', b'c', (4 << 5), 2];
        assert_eq!(lzf_decompress(&input, 9).unwrap(), b"abcabcabc");
        assert!(lzf_decompress(&[0x20, 5], 9).is_err());
    }

    #[test]
    fn lz4_filter_framing() {
        let raw: Vec<u8> = (0..1000u32).map(|i| (i % 7) as u8).collect();
        let block = lz4_flex::block::compress(&raw);
        let mut stored = (raw.len() as u64).to_be_bytes().to_vec();
        stored.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        stored.extend_from_slice(&(block.len() as u32).to_be_bytes());
        stored.extend_from_slice(&block);
        assert_eq!(hdf5_lz4_decompress(&stored, 1 << 20).unwrap(), raw);
    }

    #[test]
    fn blosclz_runs_and_back_references() {
        // Literal "ab", then a match of length 4 at distance 2 ("abab"), then literal "c".
        let input = [1, b'a', b'b', (2 << 5), 1, 0, b'c'];
        assert_eq!(blosclz_decompress(&input, 7).unwrap(), b"abababc");
    }

    #[test]
    fn blosc_memcpyed_and_split_streams() {
        let raw: Vec<u8> = (0..64u8).collect();
        let mut buf = vec![2, 1, 0x2 | 0x1, 4];
        buf.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        buf.extend_from_slice(&((raw.len() + 16) as u32).to_le_bytes());
        buf.extend_from_slice(&raw);
        assert_eq!(blosc_decompress(&buf, 1 << 20).unwrap(), raw);

        // One block, one lz4 stream, byte-shuffled with type size 4.
        let shuffled = zarrgate_core::codec::shuffle(&raw, 4);
        let stream = lz4_flex::block::compress(&shuffled);
        let mut buf = vec![2, 1, 0x1 | 0x10 | (1 << 5), 4];
        buf.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&20u32.to_le_bytes());
        buf.extend_from_slice(&(stream.len() as u32).to_le_bytes());
        buf.extend_from_slice(&stream);
        assert_eq!(blosc_decompress(&buf, 1 << 20).unwrap(), raw);
    }

    #[test]
    fn bitunshuffle_inverts_the_bit_transpose() {
        let n = 16;
        let elem = 2;
        let raw: Vec<u8> = (0..n * elem).map(|i| (i * 37 + 11) as u8).collect();
        let mut shuffled = vec![0u8; raw.len()];
        for i in 0..n {
            for j in 0..elem {
                for k in 0..8 {
                    if raw[i * elem + j] & (1 << k) != 0 {
                        let bit = (j * 8 + k) * n + i;
                        shuffled[bit / 8] |= 1 << (bit % 8);
                    }
                }
            }
        }
        assert_eq!(bitunshuffle(&shuffled, n, elem), raw);
    }

    /// A small deterministic generator, so failures can be replayed.
    #[test]
    fn headers_claiming_more_than_the_chunk_are_refused_before_allocating() {
        let chunk = 4096usize;
        // Headers that claim terabytes: refused before anything is allocated.
        let mut lz4 = (1u64 << 40).to_be_bytes().to_vec();
        lz4.extend_from_slice(&8192u32.to_be_bytes());
        assert!(Step::Lz4.decode(lz4.clone(), chunk).unwrap_err().contains("declares"));
        let mut bs = lz4.clone();
        bs.extend_from_slice(&[0; 8]);
        assert!(Step::Bitshuffle { elem: 4, block: 0, codec: 2 }.decode(bs, chunk).unwrap_err().contains("declares"));
        let mut blosc = vec![2, 0, 0, 4];
        blosc.extend_from_slice(&u32::MAX.to_le_bytes());
        blosc.extend_from_slice(&[0; 8]);
        assert!(Step::Blosc.decode(blosc, chunk).unwrap_err().contains("declares"));
        // A zlib bomb: 1 MiB of zeros in about a kilobyte.
        let bomb = zarrgate_core::codec::zlib_encode(&vec![0u8; 1 << 20], 9);
        assert!(Step::Deflate.decode(bomb, chunk).unwrap_err().contains("more than"));
    }

    /// Every decoding step, with the chunk size the tests declare.
    fn all_steps() -> Vec<Step> {
        let f8 = DType::new(zarrgate_core::zarr::Kind::Float, 8, zarrgate_core::zarr::Endian::Little);
        // an H5Z-ZFP header: fixed precision, a 2-D double field of 32 x 16 (4096 bytes)
        let meta = zfp_rs::field::ZfpFieldMetadata { scalar_type: zfp_rs::ZfpScalarType::F64, dims: [32, 16, 0, 0] };
        let mut bits = zfp_rs::ZfpBitStream::new(64).unwrap();
        bits.write_header(&zfp_rs::ZfpConfig::fixed_precision(20), &meta, zfp_rs::ZfpHeaderMask::FULL).unwrap();
        bits.flush();
        let cd: Vec<u32> = std::iter::once(0x1010_5111)
            .chain(bits.as_bytes().chunks(4).map(|w| u32::from_le_bytes(w.try_into().unwrap())))
            .collect();
        let mut steps = vec![
            Step::Deflate,
            Step::Bzip2,
            Step::Lzf,
            Step::Blosc,
            Step::Lz4,
            Step::Zstd,
            Step::Bitshuffle { elem: 4, block: 0, codec: 2 },
            Step::Bitshuffle { elem: 4, block: 0, codec: 3 },
            Step::Bitshuffle { elem: 4, block: 0, codec: 0 },
            Step::Fletcher32,
            Step::Shuffle { elem: 4 },
            Step::Jpeg,
        ];
        steps.push(Step::Zfp(lossy::Zfp::new(&cd, f8).unwrap()));
        steps
    }

    /// Frames that decode, for mutation: a zlib stream, an HDF5 LZ4 frame, an LZF literal run.
    fn valid_frames() -> Vec<Vec<u8>> {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut lz4 = 4096u64.to_be_bytes().to_vec();
        lz4.extend_from_slice(&4096u32.to_be_bytes());
        lz4.extend_from_slice(&4096u32.to_be_bytes());
        lz4.extend_from_slice(&data);
        let lzf: Vec<u8> =
            data.chunks(32).flat_map(|c| std::iter::once(c.len() as u8 - 1).chain(c.iter().copied())).collect();
        vec![zarrgate_core::codec::zlib_encode(&data, 1), lz4, lzf]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        /// Random bytes through every decoder: an error or a chunk within the bound, never a
        /// panic or an allocation past the chunk size.
        #[test]
        fn random_chunks_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)) {
            check_steps(&data)?;
        }

        /// Frames that decode, with a few bytes changed.
        #[test]
        fn mutated_frames_never_panic(
            which in 0usize..3,
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..5),
        ) {
            let mut data = valid_frames().swap_remove(which);
            for (at, byte) in edits {
                let n = data.len();
                data[at % n] = byte;
            }
            check_steps(&data)?;
        }
    }

    fn check_steps(data: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
        let chunk = 4096usize;
        let limit = chunk + STEP_SLACK;
        for step in all_steps() {
            let outcome = std::panic::catch_unwind(|| step.decode(data.to_vec(), chunk));
            let decoded =
                outcome.map_err(|_| proptest::test_runner::TestCaseError::fail(format!("{step:?} panicked")))?;
            if let Ok(out) = decoded {
                proptest::prop_assert!(out.len() <= limit.max(data.len()), "{step:?} gave {} bytes", out.len());
            }
        }
        Ok(())
    }
}

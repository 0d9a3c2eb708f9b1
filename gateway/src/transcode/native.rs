//! HDF5's own filters that no Zarr codec knows: szip (4), n-bit (5) and scale-offset (6).
//!
//! Each decoder follows the HDF5 library's (`H5Zszip.c` over libaec's szip layer, `H5Znbit.c`,
//! `H5Zscaleoffset.c`) and reads its parameters from the `cd_values` HDF5 stored with the
//! dataset, as the indexer records them. The output is what `H5Dread` gives for the dataset's
//! own type: n-bit integers are widened (and sign-extended) as HDF5's type conversion does.

use zarrgate_core::zarr::{DType, Kind};

/// The values of an integer type with `bits` significant bits.
fn low_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Reads fields of up to 64 bits, most significant bit first, as HDF5's packing filters write
/// them.
struct BitReader<'a> {
    data: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, bit: 0 }
    }

    fn read(&mut self, bits: u32) -> Result<u64, String> {
        let end = self.bit + bits as usize;
        if end > self.data.len() * 8 {
            return Err("packed data is shorter than the chunk".into());
        }
        let mut value = 0u64;
        while self.bit < end {
            let in_byte = self.bit % 8;
            let take = (8 - in_byte).min(end - self.bit);
            let byte = u64::from(self.data[self.bit / 8]);
            value = (value << take) | ((byte >> (8 - in_byte - take)) & low_mask(take as u32));
            self.bit += take;
        }
        Ok(value)
    }
}

/// Writes the low `size` bytes of `value` in the given byte order.
fn put(out: &mut Vec<u8>, value: u64, size: usize, big_endian: bool) {
    let bytes = value.to_le_bytes();
    if big_endian {
        out.extend(bytes[..size].iter().rev());
    } else {
        out.extend_from_slice(&bytes[..size]);
    }
}

fn param(cd: &[u32], i: usize, filter: &str) -> Result<u32, String> {
    cd.get(i).copied().ok_or_else(|| format!("{filter} parameters are incomplete; re-index the file"))
}

/// szip (CCSDS 121.0 adaptive entropy coding), decoded by `rust-aec`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Szip {
    options: u32,
    pixels_per_block: u32,
    bits_per_pixel: u32,
    pixels_per_scanline: u32,
}

/// szip option bits (szlib.h).
const SZ_MSB: u32 = 16;
const SZ_NN: u32 = 32;

impl Szip {
    /// `cd_values`: option mask, pixels per block, bits per pixel, pixels per scanline.
    pub fn new(cd: &[u32]) -> Result<Self, String> {
        let szip = Szip {
            options: param(cd, 0, "szip")?,
            pixels_per_block: param(cd, 1, "szip")?,
            bits_per_pixel: param(cd, 2, "szip")?,
            pixels_per_scanline: param(cd, 3, "szip")?,
        };
        let bpp_ok = matches!(szip.bits_per_pixel, 1..=24 | 32 | 64);
        if !bpp_ok || szip.pixels_per_block == 0 || szip.pixels_per_scanline == 0 {
            return Err(format!("szip parameters {cd:?} are invalid"));
        }
        // rust-aec tracks reference sample intervals only with preprocessing on, so a run of
        // zero blocks in entropy-coding-only mode would decode out of step.
        if szip.options & SZ_NN == 0 {
            return Err("szip without nearest-neighbour preprocessing is not supported".into());
        }
        Ok(szip)
    }

    /// Decodes a chunk that holds at most `limit` bytes decoded.
    pub fn decode(&self, data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
        // HDF5 writes the decoded size first (u32, little-endian).
        let size: [u8; 4] = data.get(..4).ok_or("szip chunk is shorter than its header")?.try_into().expect("4");
        let size = u32::from_le_bytes(size) as usize;
        if size > limit {
            return Err(format!("szip chunk claims {size} decoded bytes, more than the {limit} it can hold"));
        }
        // Samples of 32 and 64 bits are coded as their byte planes, one byte per sample.
        let interleaved = matches!(self.bits_per_pixel, 32 | 64);
        let bits = if interleaved { 8 } else { self.bits_per_pixel };
        let pixel = match bits {
            17.. => 4,
            9..=16 => 2,
            _ => 1,
        };
        let (ppb, pps) = (self.pixels_per_block as usize, self.pixels_per_scanline as usize);
        let rsi = pps.div_ceil(ppb);
        // A scanline that is not whole blocks was padded to whole blocks when encoded.
        let padded = pps % ppb != 0;
        let scanlines = (size / pixel).div_ceil(pps);
        let samples = if padded { scanlines * rsi * ppb } else { size / pixel };
        let mut flags = rust_aec::AecFlags::empty();
        if self.options & SZ_MSB != 0 {
            flags |= rust_aec::AecFlags::MSB;
        }
        if self.options & SZ_NN != 0 {
            flags |= rust_aec::AecFlags::DATA_PREPROCESS;
        }
        let params = rust_aec::AecParams::new(bits as u8, ppb as u32, rsi as u32, flags);
        let mut out = rust_aec::decode(&data[4..], params, samples).map_err(|e| format!("szip: {e}"))?;
        if padded {
            let (line, padded_line) = (pps * pixel, rsi * ppb * pixel);
            out = out.chunks(padded_line).flat_map(|l| &l[..line.min(l.len())]).copied().collect();
        }
        if out.len() < size {
            return Err(format!("szip decoded {} bytes, expected {size}", out.len()));
        }
        out.truncate(size);
        if interleaved {
            out = deinterleave(&out, self.bits_per_pixel as usize / 8);
        }
        Ok(out)
    }
}

/// Puts byte planes back together: plane `j` holds byte `j` of every sample.
fn deinterleave(planes: &[u8], word: usize) -> Vec<u8> {
    let n = planes.len() / word;
    let mut out = vec![0; planes.len()];
    for (i, sample) in out.chunks_exact_mut(word).enumerate() {
        for (j, byte) in sample.iter_mut().enumerate() {
            *byte = planes[j * n + i];
        }
    }
    out
}

/// n-bit packing of an integer or float type with fewer significant bits than its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nbit {
    /// HDF5 found nothing to pack; chunks are stored as they are.
    stored_plain: bool,
    elements: usize,
    size: usize,
    big_endian: bool,
    precision: u32,
    offset: u32,
    signed: bool,
}

const NBIT_ATOMIC: u32 = 1;

impl Nbit {
    /// `cd_values`: parameter count, "need not compress", elements per chunk, type class, then
    /// for a number: size, byte order, precision, bit offset.
    pub fn new(cd: &[u32], dtype: DType) -> Result<Self, String> {
        let stored_plain = param(cd, 1, "n-bit")? != 0;
        if stored_plain {
            return Ok(Nbit {
                stored_plain,
                elements: 0,
                size: 0,
                big_endian: false,
                precision: 0,
                offset: 0,
                signed: false,
            });
        }
        if param(cd, 3, "n-bit")? != NBIT_ATOMIC {
            return Err("n-bit packing of compound or array types is not supported".into());
        }
        let nbit = Nbit {
            stored_plain,
            elements: param(cd, 2, "n-bit")? as usize,
            size: param(cd, 4, "n-bit")? as usize,
            big_endian: param(cd, 5, "n-bit")? == 1,
            precision: param(cd, 6, "n-bit")?,
            offset: param(cd, 7, "n-bit")?,
            signed: dtype.kind == Kind::Int,
        };
        if !matches!(nbit.size, 1 | 2 | 4 | 8) || nbit.size != dtype.size() || nbit.precision == 0 {
            return Err(format!("n-bit parameters {cd:?} do not fit the type {}", dtype.typestr()));
        }
        if nbit.precision + nbit.offset > 8 * nbit.size as u32 {
            return Err(format!("n-bit parameters {cd:?} are invalid"));
        }
        if !matches!(dtype.kind, Kind::Int | Kind::UInt) && nbit.precision != 8 * nbit.size as u32 {
            return Err(
                "n-bit floats with fewer bits than their size need HDF5's float conversion; not supported".into()
            );
        }
        Ok(nbit)
    }

    pub fn decode(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        if self.stored_plain {
            return Ok(data);
        }
        let mut bits = BitReader::new(&data);
        let mut out = Vec::with_capacity(self.elements * self.size);
        let top = 1u64 << (self.precision - 1);
        for _ in 0..self.elements {
            let mut value = bits.read(self.precision)?;
            // HDF5's conversion to the full-width type moves the significant bits to the
            // bottom (the shift by `offset` cancels) and extends the sign.
            if self.signed && value & top != 0 {
                value |= !low_mask(self.precision);
            }
            put(&mut out, value, self.size, self.big_endian);
        }
        Ok(out)
    }
}

/// Scale-offset: integers stored as `value - min` in the fewest bits, floats as
/// `round((value - min) * 10^D)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleOffset {
    scale_type: u32,
    scale_factor: i32,
    elements: usize,
    float: bool,
    size: usize,
    big_endian: bool,
    /// The dataset's fill value in little-endian bytes, if it has one.
    fill: Option<u64>,
}

const SO_FLOAT_DSCALE: u32 = 0;
const SO_INT: u32 = 2;
/// minbits (u32), size of minval (u8), minval (u64), then padding.
const SO_HEADER: usize = 21;

impl ScaleOffset {
    /// `cd_values`: scale type, scale factor, elements per chunk, class, size, sign, byte order,
    /// whether a fill value is defined, then the fill value's bytes.
    pub fn new(cd: &[u32]) -> Result<Self, String> {
        let get = |i| param(cd, i, "scale-offset");
        let fill_words = [cd.get(8).copied().unwrap_or(0), cd.get(9).copied().unwrap_or(0)];
        let so = ScaleOffset {
            scale_type: get(0)?,
            scale_factor: get(1)? as i32,
            elements: get(2)? as usize,
            float: get(3)? == 1,
            size: get(4)? as usize,
            big_endian: get(6)? == 1,
            fill: (get(7)? == 1).then(|| u64::from(fill_words[0]) | (u64::from(fill_words[1]) << 32)),
        };
        let type_ok = if so.float {
            so.scale_type == SO_FLOAT_DSCALE && matches!(so.size, 4 | 8)
        } else {
            so.scale_type == SO_INT && matches!(so.size, 1 | 2 | 4 | 8)
        };
        if !type_ok {
            return Err(format!("scale-offset parameters {cd:?} are not supported"));
        }
        Ok(so)
    }

    pub fn decode(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        let width = 8 * self.size as u32;
        if !self.float && self.scale_factor == width as i32 {
            // HDF5 stores full-precision integers untouched.
            return Ok(data);
        }
        let header = data.get(..SO_HEADER).ok_or("scale-offset chunk is shorter than its header")?;
        let minbits = u32::from_le_bytes(header[..4].try_into().expect("4"));
        let minval_size = usize::from(header[4]).min(8);
        let minval = header[5..5 + minval_size].iter().rev().fold(0u64, |v, &b| (v << 8) | u64::from(b));
        let payload = &data[SO_HEADER..];
        let out_len = self.elements * self.size;
        if minbits > width {
            return Err(format!("scale-offset chunk claims {minbits} bits in a {width}-bit type"));
        }
        if minbits == width {
            // Stored at full precision, in the machine order of the writer (little-endian).
            let raw = payload.get(..out_len).ok_or("scale-offset chunk is shorter than the chunk")?;
            return Ok(self.reorder(raw.to_vec()));
        }
        let mut bits = BitReader::new(payload);
        let sentinel = low_mask(minbits);
        let mut out = Vec::with_capacity(out_len);
        for _ in 0..self.elements {
            let v = if minbits == 0 { 0 } else { bits.read(minbits)? };
            let fill = self.fill.filter(|_| v == sentinel);
            let value = match (fill, self.float, self.size) {
                (Some(f), _, _) => f,
                (None, false, _) => v.wrapping_add(minval),
                (None, true, 4) => {
                    let min = f32::from_bits(minval as u32);
                    let x = (v as u32 as i32) as f32 / 10f32.powf(self.scale_factor as f32) + min;
                    u64::from(x.to_bits())
                }
                (None, true, _) => {
                    let min = f64::from_bits(minval);
                    let x = (v as i64) as f64 / 10f64.powf(f64::from(self.scale_factor)) + min;
                    x.to_bits()
                }
            };
            put(&mut out, value, self.size, false);
        }
        Ok(self.reorder(out))
    }

    /// The filter works in little-endian order; the dataset's own order may be big-endian.
    fn reorder(&self, mut data: Vec<u8>) -> Vec<u8> {
        if self.big_endian {
            data.chunks_exact_mut(self.size).for_each(|e| e.reverse());
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zarrgate_core::zarr::Endian;

    /// Packs fields most significant bit first, as the HDF5 encoders do.
    fn pack(fields: &[(u64, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut bit = 0usize;
        for &(value, bits) in fields {
            for i in (0..bits).rev() {
                if bit / 8 == out.len() {
                    out.push(0);
                }
                if value >> i & 1 == 1 {
                    out[bit / 8] |= 0x80 >> (bit % 8);
                }
                bit += 1;
            }
        }
        out
    }

    #[test]
    fn bit_reader_crosses_bytes() {
        let data = pack(&[(5, 3), (0x3ff, 10), (1, 1), (0xabcdef, 24)]);
        let mut r = BitReader::new(&data);
        assert_eq!(
            [r.read(3).unwrap(), r.read(10).unwrap(), r.read(1).unwrap(), r.read(24).unwrap()],
            [5, 0x3ff, 1, 0xabcdef]
        );
        assert!(r.read(8).is_err());
    }

    #[test]
    fn nbit_widens_unsigned_and_sign_extends_signed() {
        let cd = |size, order, precision| vec![8, 0, 3, NBIT_ATOMIC, size, order, precision, 0];
        let data = pack(&[(4095, 12), (7, 12), (2048, 12)]);
        let u16le = DType::new(Kind::UInt, 2, Endian::Little);
        let out = Nbit::new(&cd(2, 0, 12), u16le).unwrap().decode(data.clone()).unwrap();
        assert_eq!(out, [0xff, 0x0f, 7, 0, 0, 0x08]);
        let i32be = DType::new(Kind::Int, 4, Endian::Big);
        let out = Nbit::new(&cd(4, 1, 12), i32be).unwrap().decode(data).unwrap();
        let values: Vec<i32> = out.chunks(4).map(|c| i32::from_be_bytes(c.try_into().unwrap())).collect();
        assert_eq!(values, [-1, 7, -2048]);
        let f4 = DType::new(Kind::Float, 4, Endian::Little);
        assert!(Nbit::new(&cd(4, 0, 20), f4).unwrap_err().contains("float"));
    }

    fn so_chunk(minbits: u32, minval: u64, fields: &[u64]) -> Vec<u8> {
        let mut out = minbits.to_le_bytes().to_vec();
        out.push(8);
        out.extend_from_slice(&minval.to_le_bytes());
        out.resize(SO_HEADER, 0);
        out.extend(pack(&fields.iter().map(|&v| (v, minbits)).collect::<Vec<_>>()));
        out
    }

    #[test]
    fn scaleoffset_integers_with_fill_and_negative_minimum() {
        // int16, fill value -999 defined: the all-ones field stands for the fill.
        let fill = (-999i16) as u16 as u32;
        let so = ScaleOffset::new(&[SO_INT, 0, 3, 0, 2, 1, 0, 1, fill, 0]).unwrap();
        let min = (-5i64) as u64;
        let out = so.decode(so_chunk(4, min, &[0, 15, 9])).unwrap();
        let values: Vec<i16> = out.chunks(2).map(|c| i16::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(values, [-5, -999, 4]);
        // All values equal and no fill value: zero bits per value.
        let so = ScaleOffset::new(&[SO_INT, 0, 2, 0, 4, 0, 1, 0]).unwrap();
        let out = so.decode(so_chunk(0, 42, &[])).unwrap();
        assert_eq!(out, [0, 0, 0, 42, 0, 0, 0, 42]);
    }

    #[test]
    fn scaleoffset_floats_use_decimal_scaling_in_the_type_precision() {
        let so = ScaleOffset::new(&[SO_FLOAT_DSCALE, 2, 2, 1, 4, 0, 0, 0]).unwrap();
        let min = 273.15f32;
        let out = so.decode(so_chunk(7, u64::from(min.to_bits()), &[0, 125])).unwrap();
        let values: Vec<f32> = out.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(values, [min, 125f32 / 100f32 + min]);
    }

    #[test]
    fn szip_header_and_parameters_are_checked() {
        assert!(Szip::new(&[141, 32]).unwrap_err().contains("incomplete"));
        assert!(Szip::new(&[169, 32, 33, 10]).is_err());
        assert!(Szip::new(&[4 | 128, 32, 16, 64]).unwrap_err().contains("preprocessing"));
        let szip = Szip::new(&[169, 32, 16, 64]).unwrap();
        assert!(szip.decode(&[1, 2], 100).is_err());
        // A corrupt size prefix is refused before anything is allocated for it.
        assert!(szip.decode(&[0xff, 0xff, 0xff, 0xff, 0], 4096).unwrap_err().contains("claims"));
    }

    #[test]
    fn deinterleave_rebuilds_words_from_byte_planes() {
        assert_eq!(deinterleave(&[1, 2, 3, 10, 20, 30], 2), [1, 10, 2, 20, 3, 30]);
    }
}

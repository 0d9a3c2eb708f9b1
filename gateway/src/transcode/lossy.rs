//! The lossy HDF5 filters: ZFP (H5Z-ZFP, id 32013) and JPEG (id 32019).
//!
//! Both store everything a decoder needs: H5Z-ZFP writes a full zfp header (field type,
//! dimensions, mode) into the dataset's filter parameters and the bare zfp stream into each
//! chunk; the JPEG filter stores each chunk as one complete JPEG image.

use zarrgate_core::zarr::{DType, Endian, Kind};
use zfp_rs::{ZfpBitStream, ZfpFieldMut, ZfpHeaderMask, ZfpScalarType};

/// H5Z-ZFP's parameters: `cd_values[0]` is a version word, `cd_values[1..]` the zfp header
/// bit stream, written in the writer's byte order (the magic `zfp` tells which).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zfp {
    header: Vec<u8>,
    elem: usize,
    big_endian: bool,
}

impl Zfp {
    pub fn new(cd_values: &[u32], dtype: DType) -> Result<Self, String> {
        let words = cd_values.get(1..).filter(|w| !w.is_empty()).ok_or("zfp filter without a header")?;
        let mut header: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        if !header.starts_with(b"zfp") {
            header = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        }
        let zfp = Zfp { header, elem: dtype.size(), big_endian: dtype.endian == Endian::Big };
        let (scalar, _) = zfp.field()?;
        let fits = match scalar {
            ZfpScalarType::F32 => dtype.kind == Kind::Float && dtype.size() == 4,
            ZfpScalarType::F64 => dtype.kind == Kind::Float && dtype.size() == 8,
            ZfpScalarType::I32 => matches!(dtype.kind, Kind::Int | Kind::UInt) && dtype.size() == 4,
            ZfpScalarType::I64 => matches!(dtype.kind, Kind::Int | Kind::UInt) && dtype.size() == 8,
        };
        if !fits {
            return Err(format!("zfp header says {scalar:?}, the dataset holds {}", dtype.typestr()));
        }
        Ok(zfp)
    }

    /// The scalar type and dimensions (`[nx, ny, nz, nw]`, 0 where unused) the header declares.
    fn field(&self) -> Result<(ZfpScalarType, [usize; 4]), String> {
        let meta = self.read_header()?.metadata.ok_or("zfp header without field metadata")?;
        Ok((meta.scalar_type, meta.dims))
    }

    fn read_header(&self) -> Result<zfp_rs::header::ZfpHeader, String> {
        let mut bits = ZfpBitStream::from_bytes(&self.header).map_err(|e| e.to_string())?;
        bits.read_header(ZfpHeaderMask::FULL).map_err(|e| format!("zfp header: {e}"))
    }

    pub fn decode(&self, data: &[u8], chunk_bytes: usize) -> Result<Vec<u8>, String> {
        let header = self.read_header()?;
        let (meta, config) = header.metadata.zip(header.config).ok_or("zfp header without field or mode")?;
        let n = meta.dims.iter().filter(|&&d| d > 0).try_fold(1usize, |n, &d| n.checked_mul(d));
        if n.and_then(|n| n.checked_mul(self.elem)) != Some(chunk_bytes) {
            return Err(format!("zfp field {:?} does not fill the chunk's {chunk_bytes} bytes", meta.dims));
        }
        let n = chunk_bytes / self.elem;
        let mut bits = ZfpBitStream::from_bytes(data).map_err(|e| e.to_string())?;
        macro_rules! run {
            ($t:ty) => {{
                let mut out = vec![<$t>::default(); n];
                let mut field = ZfpFieldMut::new(&mut out, meta.dims).map_err(|e| e.to_string())?;
                bits.decompress(&config, &mut field).map_err(|e| format!("zfp: {e}"))?;
                if self.big_endian {
                    out.iter().flat_map(|x| x.to_be_bytes()).collect()
                } else {
                    out.iter().flat_map(|x| x.to_le_bytes()).collect()
                }
            }};
        }
        Ok(match meta.scalar_type {
            ZfpScalarType::F32 => run!(f32),
            ZfpScalarType::F64 => run!(f64),
            ZfpScalarType::I32 => run!(i32),
            ZfpScalarType::I64 => run!(i64),
        })
    }
}

/// The JPEG filter holds 8-bit samples only.
pub fn jpeg_accepts(dtype: DType) -> Result<(), String> {
    if dtype.size() != 1 || !matches!(dtype.kind, Kind::UInt | Kind::Int) {
        return Err(format!("the JPEG filter holds 8-bit samples, not {}", dtype.typestr()));
    }
    Ok(())
}

/// One chunk as one JPEG image: grey (one byte a pixel) or RGB (three, interleaved).
pub fn jpeg_decode(data: &[u8], chunk_bytes: usize) -> Result<Vec<u8>, String> {
    use jpeg_decoder::PixelFormat;
    let mut decoder = jpeg_decoder::Decoder::new(data);
    decoder.read_info().map_err(|e| format!("JPEG: {e}"))?;
    let info = decoder.info().ok_or("JPEG without a frame header")?;
    let components = match info.pixel_format {
        PixelFormat::L8 => 1,
        PixelFormat::RGB24 => 3,
        other => return Err(format!("JPEG pixel format {other:?} is not one the filter writes")),
    };
    let declared = info.width as usize * info.height as usize * components;
    if declared != chunk_bytes {
        return Err(format!(
            "JPEG image {}x{}x{components} does not fill the chunk's {chunk_bytes} bytes",
            info.width, info.height
        ));
    }
    decoder.set_max_decoding_buffer_size(chunk_bytes);
    decoder.decode().map_err(|e| format!("JPEG: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zfp_rs::field::ZfpFieldMetadata;
    use zfp_rs::{ZfpConfig, ZfpField};

    /// What H5Z-ZFP stores: a version word, then the zfp header as 32-bit words.
    fn cd_values(config: &ZfpConfig, meta: &ZfpFieldMetadata) -> Vec<u32> {
        let mut bits = ZfpBitStream::new(64).unwrap();
        bits.write_header(config, meta, ZfpHeaderMask::FULL).unwrap();
        bits.flush();
        let words = bits.as_bytes().chunks(4).map(|w| u32::from_le_bytes(w.try_into().unwrap()));
        std::iter::once(0x1010_5111).chain(words).collect()
    }

    #[test]
    fn zfp_reversible_round_trip_in_both_byte_orders() {
        let data: Vec<f64> = (0..32).map(|i| (i as f64 / 3.0).sin() * 1e3).collect();
        let dims = [8usize, 4, 0, 0];
        let config = ZfpConfig::reversible();
        let meta = ZfpFieldMetadata { scalar_type: ZfpScalarType::F64, dims };
        let mut bits = ZfpBitStream::new(4096).unwrap();
        bits.compress(&config, &ZfpField::new(&data, [8usize, 4]).unwrap()).unwrap();
        bits.flush();
        let stream = bits.as_bytes().to_vec();
        let cd = cd_values(&config, &meta);
        for endian in [Endian::Little, Endian::Big] {
            let zfp = Zfp::new(&cd, DType::new(Kind::Float, 8, endian)).unwrap();
            let out = zfp.decode(&stream, 256).unwrap();
            let want: Vec<u8> = if endian == Endian::Big {
                data.iter().flat_map(|x| x.to_be_bytes()).collect()
            } else {
                data.iter().flat_map(|x| x.to_le_bytes()).collect()
            };
            assert_eq!(out, want);
        }
        // a big-endian writer's words: the magic read backwards
        let swapped: Vec<u32> = cd.iter().map(|w| w.swap_bytes()).collect();
        assert!(Zfp::new(&swapped, DType::new(Kind::Float, 8, Endian::Little)).is_ok());
        // the dataset's type must be the field's, and the field must fill the chunk
        assert!(Zfp::new(&cd, DType::new(Kind::Float, 4, Endian::Little)).is_err());
        let zfp = Zfp::new(&cd, DType::new(Kind::Float, 8, Endian::Little)).unwrap();
        assert!(zfp.decode(&stream, 512).is_err());
        assert!(Zfp::new(&[0x1010_5111, 0xdead_beef], DType::new(Kind::Float, 8, Endian::Little)).is_err());
        assert!(Zfp::new(&[], DType::new(Kind::Float, 8, Endian::Little)).is_err());
    }

    #[test]
    fn jpeg_refuses_images_that_do_not_fill_the_chunk() {
        assert!(jpeg_accepts(DType::new(Kind::UInt, 1, Endian::NotApplicable)).is_ok());
        assert!(jpeg_accepts(DType::new(Kind::UInt, 2, Endian::Little)).is_err());
        assert!(jpeg_decode(b"not a jpeg", 16).is_err());
        assert!(jpeg_decode(&[], 16).is_err());
    }
}

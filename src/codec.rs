//! The codecs that more than one part needs: the indexer encodes inlined strings and
//! synthesized chunks; the gateway's transcoding and the operations decode what sources store
//! (unshuffle, Fletcher-32, zlib held to the chunk's size). Decoders of filters only the gateway
//! reads (Blosc, LZ4, zfp, ...) live with it.

use std::io::{Read as _, Write as _};

use crate::zarr::Codec;

/// Zarr v2 / numcodecs `vlen-utf8`: item count, then each item as length + UTF-8 bytes, all
/// little-endian u32.
pub fn vlen_utf8_encode<S: AsRef<str>>(items: &[S]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + items.iter().map(|s| 4 + s.as_ref().len()).sum::<usize>());
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for s in items {
        out.extend_from_slice(&(s.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_ref().as_bytes());
    }
    out
}

/// Byte shuffle as HDF5 and numcodecs do it: byte `j` of every element, for each `j`. A
/// trailing partial element is left in place.
pub fn shuffle(data: &[u8], elementsize: usize) -> Vec<u8> {
    if elementsize <= 1 || data.len() < elementsize {
        return data.to_vec();
    }
    let n = data.len() / elementsize;
    let mut out = vec![0u8; data.len()];
    for (i, elem) in data.chunks_exact(elementsize).enumerate() {
        for (j, b) in elem.iter().enumerate() {
            out[j * n + i] = *b;
        }
    }
    out[n * elementsize..].copy_from_slice(&data[n * elementsize..]);
    out
}

/// A chunk that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("{0}")]
    Stream(String),
    #[error("the stream decodes to more than the chunk's {0} bytes")]
    TooLarge(usize),
    #[error("the chunk is shorter than its Fletcher-32 checksum")]
    ShorterThanChecksum,
    #[error("Fletcher-32 checksum does not match: the stored chunk is corrupt")]
    Checksum,
}

/// Reads a decoder to its end, but no more than `limit` bytes: one that would go on is an error
/// (a corrupt stream, or a bomb). `hint` is the size expected.
pub fn read_capped(reader: impl std::io::Read, hint: usize, limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(hint.min(limit));
    reader.take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| DecodeError::Stream(e.to_string()))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    Ok(out)
}

/// Inflates a zlib stream of at most `limit` bytes.
pub fn zlib_decode(data: &[u8], hint: usize, limit: usize) -> Result<Vec<u8>, DecodeError> {
    read_capped(flate2::read::ZlibDecoder::new(data), hint, limit)
}

/// The inverse of [`shuffle`]; a trailing partial element stays in place.
pub fn unshuffle(data: &[u8], elementsize: usize) -> Vec<u8> {
    match elementsize {
        2 => unshuffle_n::<2>(data),
        4 => unshuffle_n::<4>(data),
        8 => unshuffle_n::<8>(data),
        _ => unshuffle_any(data, elementsize),
    }
}

/// Element by element, writing each element whole (sequential writes, `N` sequential reads).
fn unshuffle_n<const N: usize>(data: &[u8]) -> Vec<u8> {
    let n = data.len() / N;
    let mut out = Vec::with_capacity(data.len());
    for i in 0..n {
        let mut e = [0u8; N];
        for (j, b) in e.iter_mut().enumerate() {
            *b = data[j * n + i];
        }
        out.extend_from_slice(&e);
    }
    out.extend_from_slice(&data[n * N..]);
    out
}

fn unshuffle_any(data: &[u8], elementsize: usize) -> Vec<u8> {
    if elementsize <= 1 || data.len() < elementsize {
        return data.to_vec();
    }
    let n = data.len() / elementsize;
    let mut out = vec![0u8; data.len()];
    for j in 0..elementsize {
        for (i, b) in data[j * n..(j + 1) * n].iter().enumerate() {
            out[i * elementsize + j] = *b;
        }
    }
    out[n * elementsize..].copy_from_slice(&data[n * elementsize..]);
    out
}

/// Checks and removes a trailing Fletcher-32 checksum. numcodecs writes it little-endian; HDF5
/// has written it in both byte orders over its history, so either is accepted.
pub fn strip_fletcher32(mut data: Vec<u8>) -> Result<Vec<u8>, DecodeError> {
    let at = data.len().checked_sub(4).ok_or(DecodeError::ShorterThanChecksum)?;
    let stored: [u8; 4] = data[at..].try_into().expect("four bytes");
    let sum = fletcher32(&data[..at]);
    if sum.to_le_bytes() != stored && sum.to_be_bytes() != stored {
        return Err(DecodeError::Checksum);
    }
    data.truncate(at);
    Ok(data)
}

/// zlib (RFC 1950) stream, as numcodecs `zlib` and HDF5 deflate store it.
pub fn zlib_encode(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(level.min(9)));
    enc.write_all(data).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// HDF5's Fletcher-32 checksum over 16-bit big-endian words (a trailing odd byte counts as
/// the high byte of a last word), as its fletcher32 filter computes it.
pub fn fletcher32(data: &[u8]) -> u32 {
    let (mut sum1, mut sum2) = (0u32, 0u32);
    let mut words = data.chunks(2).peekable();
    while words.peek().is_some() {
        for w in words.by_ref().take(360) {
            let v = (u32::from(w[0]) << 8) | u32::from(w.get(1).copied().unwrap_or(0));
            sum1 += v;
            sum2 += sum1;
        }
        sum1 = (sum1 & 0xffff) + (sum1 >> 16);
        sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    }
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    (sum2 << 16) | sum1
}

/// Encodes a decoded chunk through `filters` then `compressor`, as a Zarr v2 writer would.
pub fn encode_chunk(data: &[u8], filters: &[Codec], compressor: Option<&Codec>) -> Vec<u8> {
    let mut bytes = data.to_vec();
    for codec in filters.iter().chain(compressor) {
        bytes = match codec {
            Codec::Zlib { level } => zlib_encode(&bytes, *level),
            Codec::Shuffle { elementsize } => shuffle(&bytes, *elementsize),
            Codec::VlenUtf8 {} => bytes,
            Codec::Fletcher32 {} => {
                let sum = fletcher32(&bytes);
                bytes.extend_from_slice(&sum.to_le_bytes());
                bytes
            }
        };
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlen_utf8_layout() {
        let enc = vlen_utf8_encode(&["a", "", "Zü"]);
        assert_eq!(enc, [3, 0, 0, 0, 1, 0, 0, 0, b'a', 0, 0, 0, 0, 3, 0, 0, 0, b'Z', 0xc3, 0xbc]);
    }

    #[test]
    fn shuffle_groups_bytes_by_position() {
        assert_eq!(shuffle(&[1, 2, 3, 4, 5, 6, 7], 2), vec![1, 3, 5, 2, 4, 6, 7]);
        assert_eq!(shuffle(&[1, 2, 3], 4), vec![1, 2, 3]);
    }

    #[test]
    fn fletcher32_matches_numcodecs() {
        // numcodecs.fletcher32.Fletcher32().encode(bytes(range(10))) ends with these 4 bytes.
        assert_eq!(fletcher32(&(0u8..10).collect::<Vec<_>>()).to_le_bytes(), [25, 20, 55, 40]);
        assert_eq!(fletcher32(&(0u8..11).collect::<Vec<_>>()).to_le_bytes(), [25, 30, 80, 70]);
    }

    #[test]
    fn zlib_round_trips() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let enc = encode_chunk(&data, &[Codec::Shuffle { elementsize: 4 }], Some(&Codec::Zlib { level: 6 }));
        let mut dec = Vec::new();
        flate2::read::ZlibDecoder::new(&enc[..]).read_to_end(&mut dec).unwrap();
        assert_eq!(dec, shuffle(&data, 4));
    }

    #[test]
    fn unshuffle_inverts_shuffle_for_every_element_size_and_tail() {
        for size in 1..=9 {
            for len in [0, 1, size, 3 * size + 1, 64 * size + size / 2] {
                let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                assert_eq!(unshuffle(&shuffle(&data, size), size), data, "size {size}, len {len}");
            }
        }
    }

    #[test]
    fn fletcher32_is_checked_in_either_byte_order() {
        let data = b"fletcher, in both orders".to_vec();
        let sum = fletcher32(&data);
        for tail in [sum.to_le_bytes(), sum.to_be_bytes()] {
            let mut stored = data.clone();
            stored.extend_from_slice(&tail);
            assert_eq!(strip_fletcher32(stored).unwrap(), data);
        }
        let mut bad = data.clone();
        bad.extend_from_slice(&(sum ^ 1).to_le_bytes());
        assert_eq!(strip_fletcher32(bad), Err(DecodeError::Checksum));
        assert_eq!(strip_fletcher32(vec![1, 2]), Err(DecodeError::ShorterThanChecksum));
    }

    #[test]
    fn zlib_is_held_to_the_limit() {
        let zeros = zlib_encode(&vec![0u8; 1 << 20], 9);
        assert_eq!(zlib_decode(&zeros, 4096, 4096), Err(DecodeError::TooLarge(4096)));
        assert_eq!(zlib_decode(&zeros, 1 << 20, 1 << 20).unwrap().len(), 1 << 20);
        assert!(matches!(zlib_decode(b"not zlib", 16, 16), Err(DecodeError::Stream(_))));
    }
}

//! Encoders for the bytes the indexer writes itself: inlined strings and synthesized chunks.
//! Decoding lives with the gateway, which reads what sources store.

use std::io::Write as _;

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
    use std::io::Read as _;

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
}

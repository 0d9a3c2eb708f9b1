//! The stored form of a reference set: compact, and exactly the set it was made from.
//!
//! # Layout
//! `ZGP1`, then a zlib stream of: a JSON header (templates, our index metadata, the URLs and
//! the groups whose `.zmetadata` is derived), then one record per key in key order. A key is
//! written as the length it shares with the previous key and its new tail; a value is inline
//! bytes, a byte range (URL number, offset, length) or a whole object (URL number).
//!
//! # Why it is small
//! - URLs are written once (every chunk of a file names the same `{{u}}`).
//! - Sorted keys share long prefixes (`tas/0.0.0`, `tas/0.0.1`).
//! - A group's `.zmetadata` is left out when it is exactly what [`consolidated_v2`] makes of
//!   the group's `.zgroup`/`.zattrs`/`.zarray` documents (always, for our indexer), and made
//!   again on reading. The metadata is stored once; the documents that hold it stay
//!   byte-identical, because they are the ones stored.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};

use serde::{Deserialize, Serialize};

use crate::refs::{Reference, ReferenceSet};
use crate::report::IndexMeta;
use crate::zarr::consolidated_v2;

const MAGIC: &[u8; 4] = b"ZGP1";
/// No stored set is larger than this once inflated (a guard against a corrupt row).
const MAX_INFLATED: u64 = 1 << 31;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("stored references are not in the packed form")]
    Magic,
    #[error("stored references are truncated or corrupt: {0}")]
    Corrupt(&'static str),
    #[error("stored references do not inflate")]
    Inflate(#[source] std::io::Error),
    #[error("stored reference header is not valid")]
    Header(#[source] serde_json::Error),
}

#[derive(Serialize, Deserialize)]
struct Header {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    templates: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<IndexMeta>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    urls: Vec<String>,
    /// Groups whose `.zmetadata` is made again on reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    derived: Vec<String>,
}

const INLINE: u8 = 0;
const RANGE: u8 = 1;
const WHOLE: u8 = 2;

/// The group a `.zmetadata` key belongs to, if `key` is one.
fn zmetadata_group(key: &str) -> Option<&str> {
    if key == ".zmetadata" {
        Some("")
    } else {
        key.strip_suffix("/.zmetadata")
    }
}

fn metadata_docs(refs: &BTreeMap<String, Reference>) -> impl Iterator<Item = (&str, &[u8])> {
    refs.iter().filter_map(|(k, r)| match r {
        Reference::Inline(b) => Some((k.as_str(), b.as_slice())),
        _ => None,
    })
}

pub fn pack(set: &ReferenceSet) -> Vec<u8> {
    let mut derived = Vec::new();
    for (key, r) in &set.refs {
        if let (Some(group), Reference::Inline(bytes)) = (zmetadata_group(key), r) {
            if consolidated_v2(group, metadata_docs(&set.refs)) == *bytes {
                derived.push(group.to_string());
            }
        }
    }
    let is_derived = |key: &str| zmetadata_group(key).is_some_and(|g| derived.iter().any(|d| d == g));
    let mut urls: Vec<String> = Vec::new();
    let mut url_index = BTreeMap::new();
    let mut body = Vec::new();
    let mut previous = "";
    for (key, r) in &set.refs {
        if is_derived(key) {
            continue;
        }
        let shared = previous.bytes().zip(key.bytes()).take_while(|(a, b)| a == b).count();
        // Never split a UTF-8 character: the tail must be a string of its own.
        let shared = (0..=shared).rev().find(|&i| key.is_char_boundary(i)).unwrap_or(0);
        varint(&mut body, shared as u64);
        varint(&mut body, (key.len() - shared) as u64);
        body.extend_from_slice(&key.as_bytes()[shared..]);
        let mut url_number = |url: &String| {
            *url_index.entry(url.clone()).or_insert_with(|| {
                urls.push(url.clone());
                urls.len() as u64 - 1
            })
        };
        match r {
            Reference::Inline(bytes) => {
                body.push(INLINE);
                varint(&mut body, bytes.len() as u64);
                body.extend_from_slice(bytes);
            }
            Reference::Range { url, offset, length } => {
                body.push(RANGE);
                let n = url_number(url);
                varint(&mut body, n);
                varint(&mut body, *offset);
                varint(&mut body, *length);
            }
            Reference::Whole { url } => {
                body.push(WHOLE);
                let n = url_number(url);
                varint(&mut body, n);
            }
        }
        previous = key;
    }
    let header = Header { templates: set.templates.clone(), meta: set.meta.clone(), urls, derived };
    let header = serde_json::to_vec(&header).expect("headers serialize");
    let mut z = flate2::write::ZlibEncoder::new(MAGIC.to_vec(), flate2::Compression::new(6));
    let mut plain = Vec::with_capacity(header.len() + body.len() + 10);
    varint(&mut plain, header.len() as u64);
    plain.extend_from_slice(&header);
    plain.extend_from_slice(&body);
    z.write_all(&plain).expect("writing to memory");
    z.finish().expect("writing to memory")
}

pub fn unpack(bytes: &[u8]) -> Result<ReferenceSet, PackError> {
    let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or(PackError::Magic)?;
    let mut plain = Vec::new();
    flate2::read::ZlibDecoder::new(rest).take(MAX_INFLATED).read_to_end(&mut plain).map_err(PackError::Inflate)?;
    let mut r = Reader { buf: &plain, pos: 0 };
    let header_len = r.varint()? as usize;
    let header: Header = serde_json::from_slice(r.take(header_len)?).map_err(PackError::Header)?;
    let mut set = ReferenceSet { templates: header.templates, refs: BTreeMap::new(), meta: header.meta };
    let mut previous = String::new();
    while !r.done() {
        let shared = r.varint()? as usize;
        let tail_len = r.varint()? as usize;
        let tail = std::str::from_utf8(r.take(tail_len)?).map_err(|_| PackError::Corrupt("a key is not UTF-8"))?;
        let head = previous.get(..shared).ok_or(PackError::Corrupt("a key shares more than the previous one"))?;
        let key = format!("{head}{tail}");
        let url = |r: &mut Reader| -> Result<String, PackError> {
            let n = r.varint()? as usize;
            header.urls.get(n).cloned().ok_or(PackError::Corrupt("a URL number is out of range"))
        };
        let value = match r.byte()? {
            INLINE => {
                let n = r.varint()? as usize;
                Reference::Inline(r.take(n)?.to_vec())
            }
            RANGE => {
                let url = url(&mut r)?;
                Reference::Range { url, offset: r.varint()?, length: r.varint()? }
            }
            WHOLE => Reference::Whole { url: url(&mut r)? },
            _ => return Err(PackError::Corrupt("unknown reference kind")),
        };
        set.refs.insert(key.clone(), value);
        previous = key;
    }
    for group in &header.derived {
        let doc = consolidated_v2(group, metadata_docs(&set.refs));
        let key = if group.is_empty() { ".zmetadata".to_string() } else { format!("{group}/.zmetadata") };
        set.refs.insert(key, Reference::Inline(doc));
    }
    Ok(set)
}

/// Compresses a document stored whole (a join document).
pub fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    z.write_all(bytes).expect("writing to memory");
    z.finish().expect("writing to memory")
}

pub fn inflate(bytes: &[u8]) -> Result<Vec<u8>, PackError> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(bytes).take(MAX_INFLATED).read_to_end(&mut out).map_err(PackError::Inflate)?;
    Ok(out)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn byte(&mut self) -> Result<u8, PackError> {
        let b = *self.buf.get(self.pos).ok_or(PackError::Corrupt("ends inside a record"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PackError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(PackError::Corrupt("a length runs past the end"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn varint(&mut self) -> Result<u64, PackError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(PackError::Corrupt("a number is too long"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ReferenceSet {
        let mut set = ReferenceSet::default();
        set.set_template("u", "/data/a é.nc");
        set.put_json(".zgroup", &serde_json::json!({"zarr_format": 2}));
        set.refs.insert(".zattrs".into(), Reference::Inline(br#"{"title": NaN}"#.to_vec()));
        set.refs.insert("g/.zgroup".into(), Reference::Inline(br#"{"zarr_format":2}"#.to_vec()));
        set.refs.insert("g/x/.zarray".into(), Reference::Inline(br#"{"shape":[2]}"#.to_vec()));
        set.refs.insert("g/x/0".into(), Reference::Range { url: "{{u}}".into(), offset: 1 << 40, length: 20 });
        set.refs.insert("g/x/1".into(), Reference::Range { url: "{{u}}".into(), offset: 7, length: 0 });
        set.refs.insert("g/y/0".into(), Reference::Whole { url: "s3://b/k".into() });
        set.refs.insert("g/é/0".into(), Reference::Inline(vec![0, 255, 1]));
        let docs = metadata_docs(&set.refs);
        let root = consolidated_v2("", docs);
        let sub = consolidated_v2("g", metadata_docs(&set.refs));
        set.refs.insert(".zmetadata".into(), Reference::Inline(root));
        set.refs.insert("g/.zmetadata".into(), Reference::Inline(sub));
        set
    }

    #[test]
    fn round_trips_and_derives_consolidated_metadata() {
        let set = sample();
        let packed = pack(&set);
        assert_eq!(unpack(&packed).unwrap(), set);
        // Both .zmetadata documents are derived, so the packed form does not hold them.
        let mut plain = Vec::new();
        flate2::read::ZlibDecoder::new(&packed[4..]).read_to_end(&mut plain).unwrap();
        assert!(!plain.windows(11).any(|w| w == b"\"metadata\":"));
    }

    #[test]
    fn a_zmetadata_that_differs_from_its_documents_is_stored_as_it_is() {
        let mut set = sample();
        set.refs.insert(".zmetadata".into(), Reference::Inline(b"{\"metadata\": {}}".to_vec()));
        assert_eq!(unpack(&pack(&set)).unwrap(), set);
    }

    #[test]
    fn corrupt_rows_are_errors() {
        let packed = pack(&sample());
        assert!(matches!(unpack(b"nope"), Err(PackError::Magic)));
        for cut in [5, packed.len() / 2, packed.len() - 1] {
            assert!(unpack(&packed[..cut]).is_err());
        }
    }

    proptest! {
        #[test]
        fn any_set_round_trips(
            keys in proptest::collection::btree_map("[a-zé/._0-9]{1,12}", (0u8..3, any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..20)), 0..40)
        ) {
            let mut set = ReferenceSet::default();
            for (k, (kind, a, b, bytes)) in keys {
                let r = match kind {
                    0 => Reference::Inline(bytes),
                    1 => Reference::Range { url: format!("u{}", a % 3), offset: a, length: b },
                    _ => Reference::Whole { url: format!("w{}", b % 2) },
                };
                set.refs.insert(k, r);
            }
            prop_assert_eq!(unpack(&pack(&set)).unwrap(), set);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut framed = MAGIC.to_vec();
            framed.extend(deflate(&bytes));
            let _ = unpack(&framed);
        }
    }
}

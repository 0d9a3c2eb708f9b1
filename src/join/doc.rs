//! The stored form of a joined dataset (`CATALOG/joins/<id>.json`).
//!
//! Metadata documents are JSON text, as served. Chunk tables are binary, because a dataset of
//! 10,000 files has tens of thousands of chunks: each part is written as
//!
//! ```text
//! u32 source, u16 encoding, u8 lead, u8 ndim, ndim × u64 origin, ndim × u64 shape,
//! u32 chunk count, count × (u64 offset, u32 length)           (little-endian)
//! ```
//!
//! then zlib-compressed and base64-encoded, as are the source list (`u16` name length, name,
//! `u64` size, `i64` mtime) and the inline chunk bytes. A chunk costs 12 bytes before
//! compression; the chunk offsets of similar files compress well.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::array::{ByteReader, ChunkRef, Encoding, JoinedArray, Mode, Part, INLINE, MISSING};
use super::Joined;
use crate::catalog::Fingerprint;
use crate::ops::output::zattrs;
use crate::ops::store::{Attrs, ChunkSource, SourceError};
use crate::zarr::{consolidated_v2, ArrayMetadataV2};

/// Format marker and version.
pub const FORMAT: &str = "zarrgate-join";
const VERSION: u32 = 2;

/// A member file as the join saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the data root.
    pub path: String,
    pub fingerprint: Fingerprint,
}

/// A joined dataset ready to store or serve.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinDoc {
    pub sources: Vec<SourceFile>,
    /// `.zgroup`, `.zattrs`, `.zmetadata`, and each variable's `.zarray` and `.zattrs`.
    pub metadata: BTreeMap<String, Vec<u8>>,
    pub arrays: BTreeMap<String, JoinedArray>,
    pub notes: Vec<String>,
}

/// A joined dataset read as a store (metadata documents and chunks), with its member files
/// read through `reader`: what the indexer describes a join from.
pub struct DocSource<'a> {
    pub doc: &'a JoinDoc,
    pub reader: &'a dyn ByteReader,
}

impl ChunkSource for DocSource<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SourceError> {
        if let Some(bytes) = self.doc.metadata.get(key) {
            return Ok(Some(bytes.clone()));
        }
        let Some((var, chunk)) = key.rsplit_once('/') else { return Ok(None) };
        let Some(array) = self.doc.arrays.get(var) else { return Ok(None) };
        let Ok(idx) = chunk.split('.').map(str::parse::<u64>).collect::<Result<Vec<u64>, _>>() else {
            return Ok(None);
        };
        if idx.len() != array.meta.shape.len() || idx.iter().zip(array.grid()).any(|(i, n)| *i >= n) {
            return Ok(None);
        }
        let failed = |e: String| SourceError::Failed(format!("{key}: {e}"));
        if array.mode != Mode::Direct {
            return array.assemble(&idx, self.reader).map(Some).map_err(|e| failed(e.to_string()));
        }
        let Some((part, r)) = array.direct(&idx) else { return Ok(None) };
        if r.length == MISSING {
            Ok(None)
        } else if r.offset & INLINE != 0 {
            Ok(Some(array.inline_bytes(r).to_vec()))
        } else {
            self.reader.read(part.source, r.offset, u64::from(r.length)).map(Some).map_err(|e| failed(e.to_string()))
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    format: String,
    version: u32,
    sources: String,
    metadata: BTreeMap<String, String>,
    arrays: BTreeMap<String, StoredArray>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredArray {
    mode: StoredMode,
    encodings: Vec<StoredEncoding>,
    parts: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    inline: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoredMode {
    Direct,
    Assemble,
    Decode,
    Retime { units: String, calendar: String },
}

#[derive(Serialize, Deserialize)]
struct StoredEncoding {
    meta: ArrayMetadataV2,
    attrs: Attrs,
}

impl JoinDoc {
    /// The metadata documents of a planned join.
    pub fn new(joined: Joined, sources: Vec<SourceFile>) -> JoinDoc {
        let mut metadata = BTreeMap::new();
        metadata.insert(".zgroup".to_string(), br#"{"zarr_format":2}"#.to_vec());
        metadata.insert(".zattrs".to_string(), zattrs(&joined.attrs, None));
        for (path, attrs) in &joined.groups {
            metadata.insert(format!("{path}/.zgroup"), br#"{"zarr_format":2}"#.to_vec());
            metadata.insert(format!("{path}/.zattrs"), zattrs(attrs, None));
        }
        let mut arrays = BTreeMap::new();
        for (name, v) in joined.variables {
            let zarray = serde_json::to_vec(&v.array.meta).expect("metadata serializes");
            metadata.insert(format!("{name}/.zarray"), zarray);
            metadata.insert(format!("{name}/.zattrs"), zattrs(&v.attrs, Some(&v.dims)));
            arrays.insert(name, v.array);
        }
        let docs: Vec<(String, Vec<u8>)> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        metadata.insert(".zmetadata".to_string(), consolidated_v2("", docs.iter().map(|(k, v)| (k.as_str(), &v[..]))));
        JoinDoc { sources, metadata, arrays, notes: joined.notes }
    }

    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut names = Vec::new();
        for s in &self.sources {
            let name = s.path.as_bytes();
            names.extend_from_slice(&(name.len() as u16).to_le_bytes());
            names.extend_from_slice(name);
            names.extend_from_slice(&s.fingerprint.to_bytes());
        }
        let arrays = self
            .arrays
            .iter()
            .map(|(name, a)| {
                let mode = match &a.mode {
                    Mode::Direct => StoredMode::Direct,
                    Mode::Assemble => StoredMode::Assemble,
                    Mode::Decode => StoredMode::Decode,
                    Mode::Retime { units, calendar } => {
                        StoredMode::Retime { units: units.clone(), calendar: calendar.clone() }
                    }
                };
                let encodings = a
                    .encodings
                    .iter()
                    .map(|e| StoredEncoding { meta: e.meta.clone(), attrs: e.attrs.clone() })
                    .collect();
                let inline = if a.inline.is_empty() { String::new() } else { pack(&a.inline) };
                (name.clone(), StoredArray { mode, encodings, parts: pack(&parts_bytes(&a.parts)), inline })
            })
            .collect();
        let stored = Stored {
            format: FORMAT.to_string(),
            version: VERSION,
            sources: pack(&names),
            metadata: self.metadata.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect(),
            arrays,
            notes: self.notes.clone(),
        };
        serde_json::to_vec(&stored).expect("a join document serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<JoinDoc, DocError> {
        let stored: Stored = serde_json::from_slice(bytes).map_err(DocError::NotJson)?;
        // Version 1 recorded size and modification time of each member; 2 adds inode, device
        // and change time.
        if stored.format != FORMAT || !(1..=VERSION).contains(&stored.version) {
            return Err(DocError::Unsupported { format: stored.format, version: stored.version });
        }
        Self::from_stored(stored).map_err(DocError::Corrupt)
    }

    fn from_stored(stored: Stored) -> Result<JoinDoc, String> {
        let names = unpack(&stored.sources)?;
        let mut r = Reader(&names);
        let mut sources = Vec::new();
        while !r.0.is_empty() {
            let n = r.u16()? as usize;
            let path = String::from_utf8(r.take(n)?.to_vec()).map_err(|_| "a source path is not UTF-8")?;
            let size = r.u64()?;
            let mtime_ns = r.u64()? as i64;
            let (ino, dev, ctime_ns) =
                if stored.version >= 2 { (r.u64()?, r.u64()?, r.u64()? as i64) } else { (0, 0, 0) };
            sources.push(SourceFile { path, fingerprint: Fingerprint { size, mtime_ns, ino, dev, ctime_ns } });
        }
        let mut arrays = BTreeMap::new();
        for (name, a) in stored.arrays {
            let mode = match a.mode {
                StoredMode::Direct => Mode::Direct,
                StoredMode::Assemble => Mode::Assemble,
                StoredMode::Decode => Mode::Decode,
                StoredMode::Retime { units, calendar } => Mode::Retime { units, calendar },
            };
            let encodings: Vec<Encoding> =
                a.encodings.into_iter().map(|e| Encoding { meta: e.meta, attrs: e.attrs }).collect();
            let parts = read_parts(&unpack(&a.parts)?).map_err(|e| format!("{name}: {e}"))?;
            let inline = if a.inline.is_empty() { Vec::new() } else { unpack(&a.inline)? };
            // Imported references may use codecs the gateway passes through without decoding.
            let (meta, _) = ArrayMetadataV2::parse_lenient(
                stored.metadata.get(&format!("{name}/.zarray")).ok_or(format!("{name} has no .zarray"))?.as_bytes(),
            )
            .map_err(|e| format!("{name}/.zarray: {e}"))?;
            for p in &parts {
                let bad = p.source as usize >= sources.len() || p.encoding as usize >= encodings.len();
                if bad || p.origin.len() != meta.shape.len() {
                    return Err(format!("{name}: a part refers to a missing source or encoding"));
                }
            }
            arrays.insert(name, JoinedArray { meta, mode, encodings, parts, inline });
        }
        let metadata = stored.metadata.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        Ok(JoinDoc { sources, metadata, arrays, notes: stored.notes })
    }
}

/// A join document that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("not a join document: {0}")]
    NotJson(serde_json::Error),
    #[error("unsupported join document {format} v{version}")]
    Unsupported { format: String, version: u32 },
    /// The document parses but its tables do not hold together.
    #[error("corrupt join document: {0}")]
    Corrupt(String),
}

fn parts_bytes(parts: &[Part]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&p.source.to_le_bytes());
        out.extend_from_slice(&p.encoding.to_le_bytes());
        out.push(p.lead);
        out.push(p.origin.len() as u8);
        for x in p.origin.iter().chain(&p.shape) {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend_from_slice(&(p.chunks.len() as u32).to_le_bytes());
        for c in &p.chunks {
            out.extend_from_slice(&c.offset.to_le_bytes());
            out.extend_from_slice(&c.length.to_le_bytes());
        }
    }
    out
}

fn read_parts(bytes: &[u8]) -> Result<Vec<Part>, String> {
    let mut r = Reader(bytes);
    let mut parts = Vec::new();
    while !r.0.is_empty() {
        let source = r.u32()?;
        let encoding = r.u16()?;
        let lead = r.take(1)?[0];
        let ndim = r.take(1)?[0] as usize;
        let origin = (0..ndim).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
        let shape = (0..ndim).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
        let n = r.u32()? as usize;
        let mut chunks = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            chunks.push(ChunkRef { offset: r.u64()?, length: r.u32()? });
        }
        parts.push(Part { source, encoding, lead, origin, shape, chunks });
    }
    Ok(parts)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("a join document's table is truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

fn pack(bytes: &[u8]) -> String {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    z.write_all(bytes).expect("writing to memory");
    base64::engine::general_purpose::STANDARD.encode(z.finish().expect("writing to memory"))
}

fn unpack(text: &str) -> Result<Vec<u8>, String> {
    let z = base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("bad base64: {e}"))?;
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(&z[..]).read_to_end(&mut out).map_err(|e| format!("bad zlib: {e}"))?;
    Ok(out)
}

//! One served dataset: the objects of its virtual Zarr v2 store, built from a reference set.
//!
//! # Objects
//! - Inline references (metadata, small data) are served as stored.
//! - Byte-range references point into a source file, read when requested.
//! - Variables the indexer marked for transcoding get a `.zarray` with `compressor: null`, their
//!   `.zattrs`, and one object per stored chunk that is decoded on request (see
//!   [`crate::transcode`]); every consolidated `.zmetadata` above them is rebuilt to list them.
//!   A variable whose pipeline the gateway cannot decode stays out, and [`Dataset::notes`] says
//!   why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use zarrgate_core::catalog::Fingerprint;
use zarrgate_core::join::array::ReadFailure;
use zarrgate_core::join::doc::JoinDoc;
use zarrgate_core::join::{self as join, ByteReader, JoinedArray, Mode, INLINE};

use crate::source::{ReadError, Sources};
use zarrgate_core::refs::{Reference, ReferenceSet};
use zarrgate_core::report::{StoredChunk, TranscodeSpec, VariableReport};
use zarrgate_core::zarr::{consolidated_v2, ArrayMetadataV2, DType, Endian, Kind, Order, Separator, ZarrFormat2};

use crate::transcode::{served_typestr, Pipeline};

/// A source file of a dataset and the fingerprint its references were made from.
#[derive(Clone, Debug)]
pub struct Source {
    pub path: PathBuf,
    pub fingerprint: Fingerprint,
}

#[derive(Clone, Debug)]
pub enum Body {
    Inline(Bytes),
    Range {
        source: usize,
        offset: u64,
        length: u64,
    },
    Transcoded {
        source: usize,
        pipeline: Arc<Pipeline>,
        chunk: StoredChunk,
    },
    /// A chunk of a joined variable assembled from pieces of member files (see
    /// [`zarrgate_core::join::array`]).
    Assembled {
        array: Arc<JoinedArray>,
        idx: Vec<u64>,
    },
}

#[derive(Clone, Debug)]
pub struct Object {
    pub body: Body,
    pub size: u64,
    /// Quoted entity tag, stable for as long as the source is unchanged.
    pub etag: String,
}

/// A dataset ready to serve.
#[derive(Debug)]
pub struct Dataset {
    pub sources: Vec<Source>,
    /// Metadata and, for single files, every chunk.
    pub objects: BTreeMap<String, Object>,
    /// Chunks of joined variables, held as compact tables rather than one object per chunk.
    pub arrays: BTreeMap<String, Arc<JoinedArray>>,
    /// Changes whenever any member changes (the entity tags of assembled chunks use it).
    pub version: String,
    pub modified: SystemTime,
    /// `modified` as an HTTP date, formatted once.
    pub last_modified: hyper::header::HeaderValue,
    /// Variables left out, with the reason.
    pub notes: Vec<String>,
    /// What the indexer did with each variable of a file (empty for joins).
    pub statuses: BTreeMap<String, VariableReport>,
    /// Whether some source is a remote object (every read of it may ask the network).
    pub remote: bool,
}

fn etag(parts: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    format!("\"{}\"", &h.finalize().to_hex()[..32])
}

/// Turns a rendered reference URL into a local path (`file://` or a plain path).
fn local_path(url: &str) -> Result<PathBuf, String> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.contains("://") {
        return Err(format!("remote source {url:?} is not supported yet"));
    }
    Ok(PathBuf::from(path))
}

impl Dataset {
    /// Builds the store of one dataset. `primary` is the indexed file and its fingerprint
    /// from the catalog.
    pub fn build(set: &ReferenceSet, primary: &Source) -> Result<Self, String> {
        let sources = vec![primary.clone()];
        let source_index = |sources: &Vec<Source>, url: &str| -> Result<usize, String> {
            let path = local_path(&set.render_url(url))?;
            // Only the indexed file has a fingerprint from indexing time; a reference to any
            // other file could not be checked for staleness (multi-file datasets will carry
            // their own fingerprints).
            sources.iter().position(|s| s.path == path).ok_or_else(|| {
                format!("a reference points outside the indexed file ({}), which is not supported yet", path.display())
            })
        };
        let mut objects = BTreeMap::new();
        for (key, reference) in &set.refs {
            let (body, size) = match reference {
                Reference::Inline(bytes) => (Body::Inline(Bytes::from(bytes.clone())), bytes.len() as u64),
                Reference::Range { url, offset, length } => {
                    (Body::Range { source: source_index(&sources, url)?, offset: *offset, length: *length }, *length)
                }
                Reference::Whole { url } => {
                    let source = source_index(&sources, url)?;
                    let length = sources[source].fingerprint.size;
                    (Body::Range { source, offset: 0, length }, length)
                }
            };
            objects.insert(key.clone(), Object { body, size, etag: String::new() });
        }
        let mut notes = Vec::new();
        let mut touched_groups = BTreeSet::new();
        if let Some(meta) = &set.meta {
            for (var, spec) in &meta.transcode {
                match transcoded_objects(var, spec) {
                    Ok((pipeline, metadata)) => {
                        let source = source_index(&sources, &spec.url)?;
                        let pipeline = Arc::new(pipeline);
                        for (name, doc) in metadata {
                            let size = doc.len() as u64;
                            objects.insert(
                                format!("{var}/{name}"),
                                Object { body: Body::Inline(doc), size, etag: String::new() },
                            );
                        }
                        for (key, chunk) in &spec.stored {
                            let body = Body::Transcoded { source, pipeline: pipeline.clone(), chunk: chunk.clone() };
                            let size = pipeline.chunk_bytes() as u64;
                            objects.insert(format!("{var}/{key}"), Object { body, size, etag: String::new() });
                        }
                        touched_groups.extend(ancestors(var));
                    }
                    Err(why) => notes.push(format!("{var}: {why}")),
                }
            }
        }
        for group in touched_groups {
            let docs: Vec<(String, Bytes)> = objects
                .iter()
                .filter_map(|(k, o)| match &o.body {
                    Body::Inline(b) if k.ends_with(".zarray") || k.ends_with(".zattrs") || k.ends_with(".zgroup") => {
                        Some((k.clone(), b.clone()))
                    }
                    _ => None,
                })
                .collect();
            let doc = consolidated_v2(&group, docs.iter().map(|(k, b)| (k.as_str(), &b[..])));
            let key = if group.is_empty() { ".zmetadata".to_string() } else { format!("{group}/.zmetadata") };
            let size = doc.len() as u64;
            objects.insert(key, Object { body: Body::Inline(Bytes::from(doc)), size, etag: String::new() });
        }
        for object in objects.values_mut() {
            object.etag = object_etag(&object.body, &sources, "");
        }
        let version = version_of(primary.fingerprint);
        let modified = modified(std::slice::from_ref(primary));
        Ok(Dataset {
            sources,
            objects,
            arrays: BTreeMap::new(),
            version,
            modified,
            last_modified: http_date(modified),
            notes,
            statuses: set.meta.as_ref().map(|m| m.variables.clone()).unwrap_or_default(),
            remote: false,
        })
    }

    /// Builds the store of a joined dataset; member paths are relative to `root`, or URLs of
    /// remote objects.
    pub fn from_join(doc: JoinDoc, root: &Path, version: String) -> Result<Self, String> {
        let path = |p: &str| if zarrgate_remote::is_remote(p) { PathBuf::from(p) } else { root.join(p) };
        let sources: Vec<Source> =
            doc.sources.iter().map(|s| Source { path: path(&s.path), fingerprint: s.fingerprint }).collect();
        let remote = sources.iter().any(|s| s.fingerprint.is_remote());
        if sources.is_empty() {
            return Err("a joined dataset without member files".into());
        }
        let mut objects = BTreeMap::new();
        for (key, bytes) in doc.metadata {
            let body = Body::Inline(Bytes::from(bytes));
            let etag = object_etag(&body, &sources, "");
            let size = match &body {
                Body::Inline(b) => b.len() as u64,
                _ => 0,
            };
            objects.insert(key, Object { body, size, etag });
        }
        let arrays = doc.arrays.into_iter().map(|(k, a)| (k, Arc::new(a))).collect();
        let modified = modified(&sources);
        Ok(Dataset {
            sources,
            objects,
            arrays,
            version,
            modified,
            last_modified: http_date(modified),
            notes: doc.notes,
            statuses: BTreeMap::new(),
            remote,
        })
    }

    /// The object at `key`: a stored object, or a chunk of a joined variable.
    pub fn object(&self, key: &str) -> Option<Object> {
        if let Some(o) = self.objects.get(key) {
            return Some(o.clone());
        }
        let (var, chunk) = key.rsplit_once('/')?;
        let array = self.arrays.get(var)?;
        let idx = parse_chunk_key(chunk, &array.grid())?;
        let body = if array.mode == Mode::Direct {
            let (part, r) = array.direct(&idx)?;
            if r.length == zarrgate_core::join::array::MISSING {
                return None;
            }
            if r.offset & INLINE != 0 {
                Body::Inline(Bytes::copy_from_slice(array.inline_bytes(r)))
            } else {
                Body::Range { source: part.source as usize, offset: r.offset, length: u64::from(r.length) }
            }
        } else {
            Body::Assembled { array: array.clone(), idx }
        };
        let size = match &body {
            Body::Inline(b) => b.len() as u64,
            Body::Range { length, .. } => *length,
            _ => array.meta.chunk_nbytes(),
        };
        let etag = object_etag(&body, &self.sources, &format!("{}/{key}", self.version));
        Some(Object { body, size, etag })
    }

    /// The bytes of an assembled chunk, read from the member files (each checked unchanged).
    pub fn assemble(&self, sources: &Sources, array: &JoinedArray, idx: &[u64]) -> Result<Vec<u8>, AssembleError> {
        let reader = MemberReader { sources, dataset: self };
        array.assemble(idx, &reader).map_err(|e| match e {
            join::array::AssembleError::Read { error, .. } => match error.downcast::<ReadError>() {
                Ok(read) => AssembleError::Read(*read),
                Err(other) => AssembleError::Decode(other.to_string()),
            },
            join::array::AssembleError::Decode(why) => AssembleError::Decode(why),
        })
    }

    /// Every key at or after `from` (excluded when `inclusive` is false), in order, with its
    /// object. Joined chunk keys are generated from their tables.
    pub fn keys_from(&self, from: &str, inclusive: bool) -> Vec<(String, Object)> {
        let after = |k: &str| if inclusive { k >= from } else { k > from };
        let mut keys: Vec<String> = self.objects.keys().filter(|k| after(k)).cloned().collect();
        for (var, array) in &self.arrays {
            let grid = array.grid();
            for idx in ArrayMetadataV2::grid_positions(&grid) {
                let key = format!("{var}/{}", ArrayMetadataV2::chunk_key(&idx));
                if after(&key) {
                    keys.push(key);
                }
            }
        }
        keys.sort_unstable();
        keys.into_iter().filter_map(|k| self.object(&k).map(|o| (k, o))).collect()
    }

    pub fn source(&self, i: usize) -> &Path {
        &self.sources[i].path
    }
}

/// The entity tag of an object: its bytes, or what they are read from. `context` names an
/// assembled chunk (the join's version and the key).
fn object_etag(body: &Body, sources: &[Source], context: &str) -> String {
    match body {
        Body::Inline(b) => etag(&[b"inline", b]),
        Body::Range { source, offset, length } => {
            etag(&[b"range", &sources[*source].fingerprint.to_bytes(), &offset.to_le_bytes(), &length.to_le_bytes()])
        }
        Body::Transcoded { source, chunk, .. } => etag(&[
            b"raw",
            &sources[*source].fingerprint.to_bytes(),
            &chunk.offset.to_le_bytes(),
            &chunk.length.to_le_bytes(),
            &chunk.filter_mask.to_le_bytes(),
        ]),
        Body::Assembled { .. } => etag(&[b"assembled", context.as_bytes()]),
    }
}

/// The version string of a single-file dataset.
pub fn version_of(f: Fingerprint) -> String {
    format!("{}:{}:{}:{}:{}", f.size, f.mtime_ns, f.ino, f.dev, f.ctime_ns)
}

fn http_date(t: SystemTime) -> hyper::header::HeaderValue {
    hyper::header::HeaderValue::from_str(&httpdate::fmt_http_date(t)).expect("an HTTP date is ASCII")
}

/// The latest modification time of the sources.
fn modified(sources: &[Source]) -> SystemTime {
    let mtime = sources.iter().map(|s| s.fingerprint.mtime_ns).max().unwrap_or(0);
    if mtime >= 0 {
        UNIX_EPOCH + Duration::from_nanos(mtime as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(mtime.unsigned_abs())
    }
}

/// A chunk key (`"3.0.1"`, or `"0"` for a scalar) inside `grid`.
fn parse_chunk_key(key: &str, grid: &[u64]) -> Option<Vec<u64>> {
    if grid.is_empty() {
        return (key == "0").then(Vec::new);
    }
    let idx: Vec<u64> = key.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    // Keys are canonical: no leading zeros, no sign.
    let canonical = key.split('.').all(|p| p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0')));
    (canonical && idx.len() == grid.len() && idx.iter().zip(grid).all(|(i, g)| i < g)).then_some(idx)
}

/// Why an assembled chunk could not be made.
#[derive(Debug)]
pub enum AssembleError {
    Read(ReadError),
    Decode(String),
}

/// Reads member files for assembly, keeping the first read error (a stale source must reach
/// the client as such).
struct MemberReader<'a> {
    sources: &'a Sources,
    dataset: &'a Dataset,
}

impl ByteReader for MemberReader<'_> {
    fn read(&self, source: u32, offset: u64, length: u64) -> Result<Vec<u8>, ReadFailure> {
        let s = self.dataset.sources.get(source as usize).ok_or("a part names a missing source")?;
        Ok(self.sources.read(&s.path, s.fingerprint, offset, length)?)
    }
}

/// Groups that hold `var` (`a/b/v` → "", "a", "a/b").
fn ancestors(var: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let parts: Vec<&str> = var.split('/').collect();
    for i in 1..parts.len() {
        out.push(parts[..i].join("/"));
    }
    out
}

/// A metadata document of an array: its key (`.zarray`, `.zattrs`) and bytes.
type Document = (&'static str, Bytes);

/// The decoding pipeline and the `.zarray`/`.zattrs` documents of a transcoded variable.
fn transcoded_objects(var: &str, spec: &TranscodeSpec) -> Result<(Pipeline, Vec<Document>), String> {
    // A compound is decoded as opaque elements of its stored size, then its fields are packed.
    let dtype = match (spec.dtype, &spec.compound) {
        (Some(dtype), _) => dtype,
        (None, Some(c)) => DType::new(Kind::Bytes, c.size, Endian::NotApplicable),
        (None, None) => return Err("its data type has no Zarr v2 equivalent the gateway can serve yet".into()),
    };
    if spec.chunks.len() != spec.shape.len() {
        return Err(format!("{var}: chunk shape does not match the array shape"));
    }
    let too_large = || "chunks are too large".to_string();
    let elements = spec.chunks.iter().try_fold(1u64, |n, &c| n.checked_mul(c)).ok_or_else(too_large)?.max(1);
    let chunk_bytes =
        elements.checked_mul(dtype.size() as u64).and_then(|b| usize::try_from(b).ok()).ok_or_else(too_large)?;
    let mut pipeline = Pipeline::new(&spec.hdf5_filters, dtype, chunk_bytes)?;
    let meta = ArrayMetadataV2 {
        zarr_format: ZarrFormat2,
        shape: spec.shape.clone(),
        chunks: spec.chunks.clone(),
        dtype,
        compressor: None,
        fill_value: spec.fill_value.clone(),
        order: Order::C,
        filters: None,
        dimension_separator: Separator::Dot,
    };
    let mut zarray = serde_json::to_value(&meta).map_err(|e| e.to_string())?;
    if let (None, Some(c)) = (spec.dtype, &spec.compound) {
        pipeline = pipeline.repacking(c)?;
        let fields: Vec<[String; 2]> = c.fields.iter().map(|f| [f.name.clone(), served_typestr(f)]).collect();
        zarray["dtype"] = serde_json::json!(fields);
        zarray["fill_value"] = serde_json::Value::Null;
    }
    let zarray = serde_json::to_vec(&zarray).map_err(|e| e.to_string())?;
    Ok((pipeline, vec![(".zarray", Bytes::from(zarray)), (".zattrs", Bytes::from(spec.zattrs.clone().into_bytes()))]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_must_be_canonical_and_inside_the_grid() {
        assert_eq!(parse_chunk_key("2.0", &[3, 1]), Some(vec![2, 0]));
        assert_eq!(parse_chunk_key("0", &[]), Some(vec![]));
        for bad in ["3.0", "02.0", "1", "1.0.0", "+1.0", "a.0", ""] {
            assert_eq!(parse_chunk_key(bad, &[3, 1]), None, "{bad}");
        }
    }

    #[test]
    fn ancestors_of_nested_variables() {
        assert_eq!(ancestors("v"), vec![""]);
        assert_eq!(ancestors("a/b/v"), vec!["", "a", "a/b"]);
    }

    #[test]
    fn remote_urls_are_refused_and_file_urls_accepted() {
        assert!(local_path("s3://b/k").is_err());
        assert_eq!(local_path("file:///d/x.nc").unwrap(), PathBuf::from("/d/x.nc"));
    }
}

//! Kerchunk references that others made (`NAME.kerchunk.json` in the data tree, for example
//! by kerchunk, VirtualiZarr or padocc): checked against the files they point at, and stored as
//! a dataset (`DIR/NAME`) that the gateway serves as fsspec's `reference://` reads them.
//!
//! - Kerchunk v0 (a flat map) and v1 (`refs`, `templates`, and `gen` with plain `{{name}}`
//!   substitutions); inline text, `base64:` values and JSON objects.
//! - Kerchunk parquet (`NAME.kerchunk.parq/`, a directory as fsspec's `LazyReferenceMapper`
//!   writes it), read by [`crate::refs_parquet`].
//! - URLs are local paths inside the data directory (relative to the reference file, absolute,
//!   or `file://`), or remote objects (`s3://`, `gs://`, `az://`, `http(s)://`) under a
//!   `[[remote]]` prefix of the configuration, read through [`zarrgate_remote`].
//! - Chunks are passed through as stored, whatever their codecs; a codec the gateway does not
//!   know only keeps operations from reading that variable (noted in the catalog).
//! - Every referenced file must exist and every byte range must lie inside it; otherwise the
//!   dataset is refused with the key that is wrong, never served with fill values.
//! - The dataset is stored as a join document: each chunk is a byte range of one source (or
//!   inline), served as it is. The sources' fingerprints are recorded (for an object: its
//!   size, `Last-Modified` and `ETag`), so a replaced file or object answers 503 and is never
//!   served with other bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use zarrgate_core::catalog::Fingerprint;
use zarrgate_core::join::doc::{JoinDoc, SourceFile};
use zarrgate_core::join::{ChunkRef, Encoding, JoinedArray, Mode, Part, INLINE};
use zarrgate_core::ops::store::Attrs;
use zarrgate_core::refs::{Reference, ReferenceSet};
use zarrgate_core::zarr::{consolidated_v2, ArrayMetadataV2};

use crate::paths::{join_path, normalize, split_dir};
use zarrgate_remote::Remote;

/// Suffix of an imported reference file.
pub const SUFFIX: &str = ".kerchunk.json";

/// Suffix of an imported parquet reference directory (see [`crate::refs_parquet`]).
pub const PARQUET_SUFFIX: &str = ".kerchunk.parq";

/// Most `gen` keys a reference file may make.
const MAX_GENERATED: u64 = 10_000_000;

/// The dataset of reference file `rel` (relative to `root`), whose text is `text`, or of the
/// parquet reference directory `rel`.
pub fn build(root: &Path, rel: &str, text: &str, remote: Option<&Remote>) -> Result<JoinDoc, String> {
    let set = if rel.ends_with(PARQUET_SUFFIX) {
        crate::refs_parquet::read(&root.join(rel))?
    } else {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let doc = expand_gen(doc)?;
        ReferenceSet::from_json(&doc).map_err(|e| e.to_string())?
    };
    let (dir, _) = split_dir(rel);
    let mut sources = Sources { root, dir, remote, list: Vec::new() };
    let mut metadata: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (key, r) in &set.refs {
        let name = key.rsplit('/').next().unwrap_or(key);
        if name.starts_with(".z") || name == "zarr.json" {
            match r {
                Reference::Inline(b) => {
                    metadata.insert(key.clone(), b.clone());
                }
                _ => return Err(format!("key {key:?}: a metadata document by reference is not supported")),
            }
        }
    }
    if metadata.keys().any(|k| k.ends_with("zarr.json")) {
        return Err("Zarr v3 references (zarr.json) are not supported".into());
    }
    let mut arrays = BTreeMap::new();
    let mut notes = Vec::new();
    let zarrays: Vec<(String, Vec<u8>)> = metadata
        .iter()
        .filter(|(k, _)| k.ends_with(".zarray"))
        .map(|(k, v)| (k.trim_end_matches(".zarray").trim_end_matches('/').to_string(), v.clone()))
        .collect();
    let mut claimed = 0usize;
    for (var, zarray) in zarrays {
        let meta = array_meta(&var, &zarray, &mut notes)?;
        let mut chunk_shape = meta.chunks.clone();
        for (c, s) in chunk_shape.iter_mut().zip(&meta.shape) {
            *c = (*c).min((*s).max(1));
        }
        let grid = meta.chunk_grid();
        let mut refs: Vec<(Vec<u64>, Option<u32>, ChunkRef)> = Vec::new();
        let mut inline = Vec::new();
        for idx in ArrayMetadataV2::grid_positions(&grid) {
            let key = if var.is_empty() {
                ArrayMetadataV2::chunk_key(&idx)
            } else {
                format!("{var}/{}", ArrayMetadataV2::chunk_key(&idx))
            };
            let entry = match set.refs.get(&key) {
                None => (None, ChunkRef::NONE),
                Some(Reference::Inline(b)) => {
                    let at = inline.len() as u64;
                    inline.extend_from_slice(b);
                    (None, ChunkRef { offset: INLINE | at, length: len32(&key, b.len() as u64)? })
                }
                Some(Reference::Range { url, offset, length }) => {
                    let (source, size) = sources.get(&set, &key, url)?;
                    if offset.checked_add(*length).is_none_or(|end| end > size) {
                        return Err(format!(
                            "key {key:?}: bytes {offset}..{} are beyond the end of {} ({size} bytes)",
                            offset.saturating_add(*length),
                            sources.list[source as usize].0
                        ));
                    }
                    (Some(source), ChunkRef { offset: *offset, length: len32(&key, *length)? })
                }
                Some(Reference::Whole { url }) => {
                    let (source, size) = sources.get(&set, &key, url)?;
                    (Some(source), ChunkRef { offset: 0, length: len32(&key, size)? })
                }
            };
            if set.refs.contains_key(&key) {
                claimed += 1;
            }
            refs.push((idx, entry.0, entry.1));
        }
        let enc_meta = ArrayMetadataV2 { shape: meta.chunks.clone(), ..meta.clone() };
        let encodings = vec![Encoding { meta: enc_meta, attrs: Attrs::new() }];
        let distinct: std::collections::BTreeSet<u32> = refs.iter().filter_map(|(_, s, _)| *s).collect();
        let parts = if distinct.len() <= 1 {
            // One source (or none): one part over the whole array.
            vec![Part {
                source: distinct.first().copied().unwrap_or(0),
                encoding: 0,
                lead: 0,
                origin: vec![0; meta.shape.len()],
                shape: meta.shape.clone(),
                chunks: refs.iter().map(|(_, _, c)| *c).collect(),
            }]
        } else {
            // Chunks of several files (a combined reference set): a part per chunk.
            refs.iter()
                .map(|(idx, s, c)| {
                    let origin: Vec<u64> = idx.iter().zip(&meta.chunks).map(|(i, c)| i * c).collect();
                    let shape =
                        origin.iter().zip(&meta.chunks).zip(&meta.shape).map(|((o, c), s)| (*c).min(s - o)).collect();
                    Part { source: s.unwrap_or(0), encoding: 0, lead: 0, origin, shape, chunks: vec![*c] }
                })
                .collect()
        };
        arrays.insert(var.clone(), JoinedArray { meta, mode: Mode::Direct, encodings, parts, inline });
    }
    let metadata_keys = metadata.len();
    let unused = set.refs.len() - claimed - metadata_keys;
    if unused > 0 {
        notes.push(format!("{unused} keys are not chunks of any array (zarr never asks for them) and are not served"));
    }
    if !metadata.contains_key(".zmetadata") {
        let docs: Vec<(String, Vec<u8>)> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        metadata.insert(".zmetadata".into(), consolidated_v2("", docs.iter().map(|(k, v)| (k.as_str(), &v[..]))));
    }
    made_from(root, set.meta.as_ref().map(|m| &m.source), &sources.list)?;
    let mut list = sources.list;
    if list.is_empty() {
        // Every chunk is inline: the reference file is the source, so that a changed file is
        // noticed like a changed data file.
        let meta = std::fs::metadata(root.join(rel)).map_err(|e| format!("{rel}: {e}"))?;
        list.push((rel.to_string(), meta.len(), Fingerprint::of(&meta)));
    }
    let sources = list.into_iter().map(|(path, _, fingerprint)| SourceFile { path, fingerprint }).collect();
    Ok(JoinDoc { sources, metadata, arrays, notes })
}

/// References that zarrgate made (`zarrgate index FILE_OR_URL -o …`) record the fingerprint
/// their source had then: a source changed since is refused, never served through references
/// made for other bytes. (Other tools' references record none; their sources are fingerprinted
/// here, at import.)
fn made_from(
    root: &Path,
    made: Option<&zarrgate_core::report::SourceInfo>,
    list: &[(String, u64, Fingerprint)],
) -> Result<(), String> {
    let Some(made) = made else { return Ok(()) };
    let made_file = std::fs::canonicalize(&made.path).ok();
    let same_file = |path: &str| {
        let here = root.join(path);
        here.to_string_lossy() == made.path || (made_file.is_some() && std::fs::canonicalize(&here).ok() == made_file)
    };
    for (path, _, now) in list {
        let named = if zarrgate_remote::is_remote(path) { *path == made.path } else { same_file(path) };
        if let Some(why) = named.then(|| made.fingerprint.changed(now)).flatten() {
            return Err(format!(
                "{path} changed since these references were made ({why}); make them again (zarrgate index)"
            ));
        }
    }
    Ok(())
}

/// The files a reference set points at: (path relative to the root, size, fingerprint).
struct Sources<'a> {
    root: &'a Path,
    dir: &'a str,
    remote: Option<&'a Remote>,
    list: Vec<(String, u64, Fingerprint)>,
}

impl Sources<'_> {
    /// The index and size of the file `url` (of key `key`) names, checked once per file.
    fn get(&mut self, set: &ReferenceSet, key: &str, url: &str) -> Result<(u32, u64), String> {
        let url = set.render_url(url);
        if zarrgate_remote::is_remote(&url) {
            if let Some(i) = self.list.iter().position(|(p, _, _)| *p == url) {
                return Ok((i as u32, self.list[i].1));
            }
            let remote = self.remote.filter(|r| r.covers(&url)).ok_or_else(|| {
                format!(
                    "key {key:?}: {url} is a remote object, and no [[remote]] prefix of the configuration covers it"
                )
            })?;
            let fingerprint = remote.stat(&url).map_err(|e| format!("key {key:?}: {e}"))?;
            self.list.push((url, fingerprint.size, fingerprint));
            return Ok(((self.list.len() - 1) as u32, fingerprint.size));
        }
        let path = local_path(self.root, self.dir, &url).map_err(|e| format!("key {key:?}: {e}"))?;
        if let Some(i) = self.list.iter().position(|(p, _, _)| *p == path) {
            return Ok((i as u32, self.list[i].1));
        }
        let meta =
            std::fs::metadata(self.root.join(&path)).map_err(|e| format!("key {key:?}: {path} cannot be read: {e}"))?;
        if !meta.is_file() {
            return Err(format!("key {key:?}: {path} is not a file"));
        }
        self.list.push((path, meta.len(), Fingerprint::of(&meta)));
        Ok(((self.list.len() - 1) as u32, meta.len()))
    }
}

/// A `.zarray` as the gateway plans with it. Codecs it does not know (blosc, zstd, …) do not
/// matter to serving, which passes chunks through as stored: they are noted (operations
/// cannot decode such a variable) and the document is served as written.
fn array_meta(var: &str, zarray: &[u8], notes: &mut Vec<String>) -> Result<ArrayMetadataV2, String> {
    let (meta, unknown) = ArrayMetadataV2::parse_lenient(zarray).map_err(|e| format!("key {var}/.zarray: {e}"))?;
    if !unknown.is_empty() {
        notes.push(format!(
            "{var}: codecs {} are served as stored; the gateway does not decode them, so operations cannot read {var}",
            unknown.join(", ")
        ));
    }
    Ok(meta)
}

fn len32(key: &str, n: u64) -> Result<u32, String> {
    u32::try_from(n).ok().filter(|n| *n != u32::MAX).ok_or_else(|| format!("key {key:?}: a chunk of 4 GiB or more"))
}

/// The path, relative to the data root, of a reference URL in the file of directory `dir`.
fn local_path(root: &Path, dir: &str, url: &str) -> Result<String, String> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.contains("://") {
        return Err(format!("{url}: the scheme is not one of s3, gs, az, http or https"));
    }
    let rel = if path.starts_with('/') {
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        let abs = PathBuf::from(path);
        let abs = abs.canonicalize().unwrap_or(abs);
        let inside = abs.strip_prefix(&root).map_err(|_| format!("{url} is outside the data directory"))?;
        inside.to_string_lossy().replace('\\', "/")
    } else {
        join_path(dir, path)
    };
    normalize(&rel).filter(|r| !r.is_empty()).ok_or_else(|| format!("{url} is outside the data directory"))
}

/// Expands Kerchunk v1 `gen` entries into `refs`. Each entry has `key`, `url`, optional
/// `offset` and `length`, and `dimensions` (`{name: {start, stop, step}}` or `{name: [values]}`);
/// only plain `{{name}}` substitutions are supported (jinja expressions are refused).
fn expand_gen(mut doc: Value) -> Result<Value, String> {
    let Some(gen) = doc.as_object_mut().and_then(|o| o.remove("gen")) else { return Ok(doc) };
    let entries = gen.as_array().ok_or("gen is not a list")?.clone();
    let mut made = serde_json::Map::new();
    for (n, entry) in entries.iter().enumerate() {
        let field = |k: &str| entry.get(k).and_then(Value::as_str).map(str::to_string);
        let key = field("key").ok_or(format!("gen[{n}] has no key"))?;
        let url = field("url").ok_or(format!("gen[{n}] has no url"))?;
        let number = |k: &str| {
            entry.get(k).map(|v| v.as_u64().map(|x| x.to_string()).or_else(|| v.as_str().map(str::to_string)))
        };
        let (offset, length) = (number("offset").flatten(), number("length").flatten());
        let dims = entry.get("dimensions").and_then(Value::as_object).ok_or(format!("gen[{n}] has no dimensions"))?;
        let mut axes: Vec<(String, Vec<String>)> = Vec::new();
        for (name, spec) in dims {
            let values: Vec<String> = match spec {
                Value::Array(v) => {
                    v.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect()
                }
                Value::Object(o) => {
                    let get = |k: &str, d: i64| o.get(k).and_then(Value::as_i64).unwrap_or(d);
                    let (start, stop, step) = (get("start", 0), get("stop", 0), get("step", 1));
                    if step <= 0 || stop < start || (stop - start) as u64 / step as u64 > MAX_GENERATED {
                        return Err(format!("gen[{n}]: dimension {name} is not a bounded range"));
                    }
                    (start..stop).step_by(step as usize).map(|i| i.to_string()).collect()
                }
                _ => return Err(format!("gen[{n}]: dimension {name} is neither a list nor a range")),
            };
            axes.push((name.clone(), values));
        }
        let total = axes.iter().try_fold(1u64, |a, (_, v)| a.checked_mul(v.len() as u64)).unwrap_or(u64::MAX);
        if total > MAX_GENERATED {
            return Err(format!("gen[{n}] makes more than {MAX_GENERATED} keys"));
        }
        let mut idx = vec![0usize; axes.len()];
        for _ in 0..total {
            let render = |t: &str| -> Result<String, String> { substitute(t, &axes, &idx) };
            let k = render(&key)?;
            let u = render(&url)?;
            let item = match (&offset, &length) {
                (Some(o), Some(l)) => {
                    let o: u64 = render(o)?.trim().parse().map_err(|_| format!("gen[{n}]: offset is not a number"))?;
                    let l: u64 = render(l)?.trim().parse().map_err(|_| format!("gen[{n}]: length is not a number"))?;
                    serde_json::json!([u, o, l])
                }
                (None, None) => serde_json::json!([u]),
                _ => return Err(format!("gen[{n}] has one of offset and length")),
            };
            made.insert(k, item);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < axes[d].1.len() {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
    let refs = doc
        .as_object_mut()
        .and_then(|o| o.get_mut("refs"))
        .and_then(Value::as_object_mut)
        .ok_or("a reference file with gen needs refs")?;
    for (k, v) in made {
        refs.entry(k).or_insert(v);
    }
    Ok(doc)
}

/// `{{ name }}` replaced by the current value of dimension `name`; anything else in braces is
/// refused (fsspec evaluates jinja expressions, which are not reproduced here).
fn substitute(template: &str, axes: &[(String, Vec<String>)], idx: &[usize]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").ok_or(format!("unclosed {{{{ in {template:?}"))? + start;
        let name = rest[start + 2..end].trim();
        let (i, (_, values)) = axes
            .iter()
            .enumerate()
            .find(|(_, (n, _))| n == name)
            .ok_or(format!("{{{{{name}}}}} in {template:?}: only plain dimension names are supported"))?;
        out.push_str(&values[idx[i]]);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_expands_plain_substitutions_and_refuses_expressions() {
        let doc = serde_json::json!({"version": 1, "refs": {".zgroup": "{}"}, "gen": [{
            "key": "x/{{i}}", "url": "f{{i}}.nc", "offset": "{{i}}", "length": "10",
            "dimensions": {"i": {"start": 0, "stop": 3}}}]});
        let out = expand_gen(doc).unwrap();
        assert_eq!(out["refs"]["x/2"], serde_json::json!(["f2.nc", 2, 10]));
        let bad = serde_json::json!({"version": 1, "refs": {}, "gen": [{
            "key": "x/{{i*2}}", "url": "f", "dimensions": {"i": [0, 1]}}]});
        assert!(expand_gen(bad).unwrap_err().contains("only plain dimension names"));
    }

    #[test]
    fn urls_stay_inside_the_data_directory() {
        let root = Path::new("/nonexistent-root");
        assert_eq!(local_path(root, "d", "a.nc").unwrap(), "d/a.nc");
        assert_eq!(local_path(root, "d", "file:///nonexistent-root/d/b.nc").unwrap(), "d/b.nc");
        assert!(local_path(root, "d", "../../etc/passwd").is_err());
        assert!(local_path(root, "d", "/etc/passwd").is_err());
        assert!(local_path(root, "d", "ftp://host/a.nc").unwrap_err().contains("scheme"));
    }
}

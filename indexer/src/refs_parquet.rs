//! Kerchunk references stored as parquet, the way fsspec's `LazyReferenceMapper` writes them
//! (kerchunk's `refs_to_dataframe`, `MultiZarrToZarr` with a parquet output, VirtualiZarr):
//!
//! - `DIR/.zmetadata`: JSON `{"metadata": {KEY: document}, "record_size": N}`, holding every
//!   metadata document (`.zgroup`, `.zattrs`, `VAR/.zarray`, ...);
//! - `DIR/VAR/refs.R.parq`: the references of chunks `R*N .. (R+1)*N` of `VAR`, counted in
//!   row-major order over the chunk grid, one row per chunk with columns `path`, `offset`,
//!   `size` and `raw`.
//!
//! A row is read as fsspec reads it: `raw` set is inline data; no `path` is a missing chunk;
//! offset and size both 0 is the whole object; anything else is a byte range. A record file
//! that does not exist holds no chunks (fsspec reads its chunks as missing too).

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::Value;
use zarrgate_core::ops::store::{parse_json, untag};
use zarrgate_core::refs::{Reference, ReferenceSet};
use zarrgate_core::zarr::ArrayMetadataV2;

/// The reference set of the parquet reference directory `dir`. Errors name the file inside
/// `dir` and the key.
pub fn read(dir: &Path) -> Result<ReferenceSet, String> {
    let zmeta = dir.join(".zmetadata");
    let text = std::fs::read(&zmeta).map_err(|e| format!(".zmetadata: {e}"))?;
    let doc = parse_json(&text).map_err(|e| format!(".zmetadata: not valid JSON: {e}"))?;
    let record_size = doc
        .get("record_size")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
        .ok_or(".zmetadata: no positive record_size")?;
    let metadata = doc.get("metadata").and_then(Value::as_object).ok_or(".zmetadata: no metadata object")?;
    let mut set = ReferenceSet::default();
    for (key, value) in metadata {
        // NaN and infinities (bare in fsspec's JSON) are written back as they came.
        let text = serde_json::to_string(value).map_err(|e| format!(".zmetadata: key {key:?}: {e}"))?;
        set.refs.insert(key.clone(), Reference::Inline(untag(&text).into_bytes()));
    }
    for (key, value) in metadata {
        let Some(var) = key.strip_suffix(".zarray").map(|v| v.trim_end_matches('/')) else { continue };
        let zarray = serde_json::to_vec(value).unwrap_or_default();
        let (meta, _) = ArrayMetadataV2::parse_lenient(&zarray).map_err(|e| format!(".zmetadata: key {key:?}: {e}"))?;
        let grid = meta.chunk_grid();
        let total: u64 = grid.iter().product();
        for record in 0..total.div_ceil(record_size) {
            let rel = format!("{var}/refs.{record}.parq");
            let path = dir.join(&rel);
            if !path.exists() {
                continue;
            }
            let rows = rows(&path, &rel)?;
            let first = record * record_size;
            for (n, row) in (first..total).zip(rows) {
                let chunk = format!("{var}/{}", ArrayMetadataV2::chunk_key(&unravel(n, &grid)));
                let key = chunk.trim_start_matches('/').to_string();
                if let Some(r) = row.reference().map_err(|e| format!("{rel}: key {key:?}: {e}"))? {
                    set.refs.insert(key, r);
                }
            }
        }
    }
    Ok(set)
}

/// The grid position of chunk number `n`, counted in row-major order (as fsspec counts).
fn unravel(mut n: u64, grid: &[u64]) -> Vec<u64> {
    let mut idx = vec![0; grid.len()];
    for (i, g) in idx.iter_mut().zip(grid).rev() {
        *i = n % g;
        n /= g;
    }
    idx
}

/// A listing of the directory that changes whenever one of its files does: `.zmetadata`'s
/// text, then each file with its size and modification time.
pub fn listing(dir: &Path) -> Result<String, String> {
    let mut out = std::fs::read_to_string(dir.join(".zmetadata")).map_err(|e| format!(".zmetadata: {e}"))?;
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name().into_iter().flatten() {
        if !entry.file_type().is_file() {
            continue;
        }
        let meta = entry.metadata().map_err(|e| e.to_string())?;
        let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path()).to_string_lossy();
        out.push_str(&format!("\n{rel} {} {}", meta.len(), modified.map_or(0, |d| d.as_nanos())));
    }
    Ok(out)
}

/// One row of a record file.
#[derive(Default)]
struct Row {
    path: Option<String>,
    offset: i64,
    size: i64,
    raw: Option<Vec<u8>>,
}

impl Row {
    fn reference(self) -> Result<Option<Reference>, String> {
        if let Some(raw) = self.raw {
            return Ok(Some(Reference::Inline(raw)));
        }
        let Some(url) = self.path else { return Ok(None) };
        let (Ok(offset), Ok(length)) = (u64::try_from(self.offset), u64::try_from(self.size)) else {
            return Err(format!("negative offset {} or size {}", self.offset, self.size));
        };
        Ok(Some(if offset == 0 && length == 0 {
            Reference::Whole { url }
        } else {
            Reference::Range { url, offset, length }
        }))
    }
}

fn rows(path: &Path, shown: &str) -> Result<Vec<Row>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let reader = SerializedFileReader::new(file).map_err(|e| format!("{shown}: not a parquet file: {e}"))?;
    let columns: Vec<String> =
        reader.metadata().file_metadata().schema_descr().columns().iter().map(|c| c.name().to_string()).collect();
    if !columns.iter().any(|c| c == "path" || c == "raw") {
        return Err(format!("{shown}: neither a path nor a raw column (it has {})", columns.join(", ")));
    }
    let mut out = Vec::new();
    for (n, row) in reader.get_row_iter(None).map_err(|e| format!("{shown}: {e}"))?.enumerate() {
        let row = row.map_err(|e| format!("{shown}: row {n}: {e}"))?;
        let mut r = Row::default();
        for (name, field) in row.get_column_iter() {
            let bad = || format!("{shown}: row {n}: column {name} holds {field}");
            match (name.as_str(), field) {
                (_, Field::Null) => {}
                ("path", Field::Str(s)) => r.path = Some(s.clone()),
                ("path", Field::Bytes(b)) => r.path = Some(String::from_utf8(b.data().to_vec()).map_err(|_| bad())?),
                ("offset" | "size", f) => {
                    let v = integer(f).ok_or_else(bad)?;
                    if name == "offset" {
                        r.offset = v;
                    } else {
                        r.size = v;
                    }
                }
                ("raw", Field::Bytes(b)) => r.raw = Some(b.data().to_vec()),
                ("raw", Field::Str(s)) => r.raw = Some(s.clone().into_bytes()),
                ("path" | "raw", _) => return Err(bad()),
                _ => {}
            }
        }
        out.push(r);
    }
    Ok(out)
}

fn integer(f: &Field) -> Option<i64> {
    match f {
        Field::Byte(v) => Some(i64::from(*v)),
        Field::Short(v) => Some(i64::from(*v)),
        Field::Int(v) => Some(i64::from(*v)),
        Field::Long(v) => Some(*v),
        Field::UByte(v) => Some(i64::from(*v)),
        Field::UShort(v) => Some(i64::from(*v)),
        Field::UInt(v) => Some(i64::from(*v)),
        Field::ULong(v) => i64::try_from(*v).ok(),
        Field::Double(v) if v.fract() == 0.0 => Some(*v as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_counted_in_row_major_order() {
        assert_eq!(unravel(0, &[]), Vec::<u64>::new());
        assert_eq!(unravel(5, &[2, 3]), vec![1, 2]);
        assert_eq!(unravel(3, &[2, 3]), vec![1, 0]);
        assert_eq!(unravel(7, &[2, 2, 2]), vec![1, 1, 1]);
    }

    #[test]
    fn rows_are_read_as_fsspec_reads_them() {
        let range = Row { path: Some("a.nc".into()), offset: 8, size: 4, raw: None };
        assert_eq!(range.reference().unwrap(), Some(Reference::Range { url: "a.nc".into(), offset: 8, length: 4 }));
        let whole = Row { path: Some("a.nc".into()), ..Row::default() };
        assert_eq!(whole.reference().unwrap(), Some(Reference::Whole { url: "a.nc".into() }));
        let raw = Row { path: None, raw: Some(b"xy".to_vec()), ..Row::default() };
        assert_eq!(raw.reference().unwrap(), Some(Reference::Inline(b"xy".to_vec())));
        assert_eq!(Row::default().reference().unwrap(), None);
        assert!(Row { path: Some("a.nc".into()), offset: -1, ..Row::default() }.reference().is_err());
    }
}

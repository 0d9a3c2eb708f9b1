//! Remote NetCDF files indexed by ranged reads (`zarrgate index s3://bucket/prefix/ -o TREE`),
//! written as Kerchunk reference files: one `NAME.kerchunk.json` per object, which a data tree
//! then imports like any other references (each object checked and fingerprinted, a replaced
//! object answering 503). The objects are never downloaded: see [`crate::index_remote`].

use std::path::{Path, PathBuf};

use zarrgate_remote::Remote;

use crate::import::SUFFIX;
use crate::tree::{has_data_extension, FileIndexer};

/// What indexing a prefix did.
#[derive(Debug, Default)]
pub struct Written {
    /// The reference files written.
    pub files: Vec<PathBuf>,
    /// Objects that could not be indexed, and why.
    pub failed: Vec<(String, String)>,
}

/// Indexes every object under `prefix` (a URL ending in '/') whose name has a NetCDF or HDF5
/// extension into `out`: the object `PREFIX/a/b.nc` becomes `out/a/b.nc.kerchunk.json`, so
/// that the tree serves it as `a/b.nc`, the name a local copy would have. `index` indexes one
/// object, given its URL as the path (in a worker process, as local files are).
pub fn index_prefix(prefix: &str, remote: &Remote, index: &dyn FileIndexer, out: &Path) -> Result<Written, String> {
    if !prefix.ends_with('/') {
        return Err(format!("{prefix}: a prefix ends with '/'"));
    }
    let urls = remote.list(prefix).map_err(|e| e.to_string())?;
    let mut written = Written::default();
    for url in urls {
        let rel = &url[prefix.len()..];
        if !has_data_extension(Path::new(rel)) {
            continue;
        }
        match index.index(Path::new(&url), None) {
            Ok(set) => {
                let file = out.join(format!("{rel}{SUFFIX}"));
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                std::fs::write(&file, set.to_json_bytes()).map_err(|e| format!("{}: {e}", file.display()))?;
                written.files.push(file);
            }
            Err(why) => written.failed.push((url.clone(), why)),
        }
    }
    Ok(written)
}

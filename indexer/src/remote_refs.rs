//! Remote NetCDF files indexed by ranged reads (`zarrgate index s3://bucket/prefix/ -o TREE`),
//! written as Kerchunk reference files: one `NAME.kerchunk.json` per object, which a data tree
//! then imports like any other references (each object checked and fingerprinted, a replaced
//! object answering 503). The objects are never downloaded: see [`crate::index_remote`].

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

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
/// object, given its URL as the path (in a worker process, as local files are); `jobs`
/// objects are indexed at once, and each reference file is written as soon as it is made.
pub fn index_prefix(
    prefix: &str,
    remote: &Remote,
    index: &dyn FileIndexer,
    out: &Path,
    jobs: usize,
) -> Result<Written, String> {
    if !prefix.ends_with('/') {
        return Err(format!("{prefix}: a prefix ends with '/'"));
    }
    let urls: Vec<String> = remote
        .list(prefix)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|u| has_data_extension(Path::new(u)))
        .collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let done = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, urls.len().max(1)) {
            scope.spawn(|| {
                while let Some(url) = urls.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let outcome = one(url, &url[prefix.len()..], index, out);
                    stop.fetch_or(matches!(outcome, Outcome::CannotWrite(_)), Ordering::Relaxed);
                    done.lock().unwrap_or_else(|p| p.into_inner()).push((url.clone(), outcome));
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    done.sort_by(|a, b| a.0.cmp(&b.0));
    let mut written = Written::default();
    for (url, outcome) in done {
        match outcome {
            Outcome::Written(file) => written.files.push(file),
            Outcome::Failed(why) => written.failed.push((url, why)),
            Outcome::CannotWrite(why) => return Err(why),
        }
    }
    Ok(written)
}

enum Outcome {
    Written(PathBuf),
    /// The object could not be indexed.
    Failed(String),
    /// Its reference file could not be written: no further object is started, and the run
    /// fails.
    CannotWrite(String),
}

/// Indexes the object `url` into `out/REL.kerchunk.json`.
fn one(url: &str, rel: &str, index: &dyn FileIndexer, out: &Path) -> Outcome {
    if !Path::new(rel).components().all(|c| matches!(c, Component::Normal(_))) {
        return Outcome::Failed(format!("its name {rel:?} cannot be written under {}", out.display()));
    }
    let set = match index.index(Path::new(url), None) {
        Ok(set) => set,
        Err(why) => return Outcome::Failed(why),
    };
    let file = out.join(format!("{rel}{SUFFIX}"));
    let write = || {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(&file, set.to_json_bytes()).map_err(|e| format!("{}: {e}", file.display()))
    };
    match write() {
        Ok(()) => Outcome::Written(file),
        Err(why) => Outcome::CannotWrite(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zarrgate_core::refs::ReferenceSet;

    struct Unreachable;
    impl FileIndexer for Unreachable {
        fn index(&self, path: &Path, _url: Option<String>) -> Result<ReferenceSet, String> {
            panic!("{} must not be indexed", path.display())
        }
    }

    #[test]
    fn an_object_name_that_leaves_the_output_directory_is_refused_before_indexing() {
        let out = Path::new("/srv/tree");
        for rel in ["../escape.nc", "a/../../escape.nc", "/etc/escape.nc", "./a.nc"] {
            match one(&format!("s3://b/p/{rel}"), rel, &Unreachable, out) {
                Outcome::Failed(why) => assert!(why.contains("cannot be written under /srv/tree"), "{why}"),
                _ => panic!("{rel} was not refused"),
            }
        }
    }
}

//! `zarrgate-indexer`: scans NetCDF-3, NetCDF-4 and HDF5 files into Kerchunk references that
//! reproduce what `xarray.open_dataset(original)` shows.
//!
//! # Layout
//! - [`sniff`]: tells the format from the first bytes.
//! - [`nc3`]: NetCDF-3 header parser and translation (pure Rust).
//! - [`hdf`]: NetCDF-4/HDF5 translation: the logical model from netCDF-C, the storage from
//!   HDF5 (`H5Dchunk_iter`).
//! - [`store`]: builds a reference set key by key and records each variable's fate.
//! - [`join`]: joined datasets of a tree (DRS names, `NAME.join.toml`, `NAME.ncml`).
//! - [`ncml`]: what NcML means here, element by element, and its parser.
//! - [`import`]: Kerchunk references made by other tools (`NAME.kerchunk.json`).
//! - [`paths`]: relative paths inside a data tree.
//! - [`tree`]: indexes a directory into a catalog, incrementally, with per-file reports.
//! - [`error`]: [`IndexError`], one variant per way a file can fail, each naming the file.
//!
//! libhdf5 and libnetcdf serialize every call behind one process-wide lock, so indexing is
//! sequential per process; the NetCDF-3 path needs neither library.

pub mod error;
pub mod hdf;
pub mod import;
pub mod join;
pub mod nc3;
pub mod ncml;
pub mod paths;
pub mod refs_parquet;
pub mod remote_refs;
pub mod store;
pub mod tree;

use std::path::Path;

use zarrgate_core::catalog::Fingerprint;
use zarrgate_core::refs::ReferenceSet;
use zarrgate_core::report::{SourceFormat, SourceInfo};

pub use error::IndexError;

const HDF5_MAGIC: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

/// Options for indexing one file.
#[derive(Clone, Debug, Default)]
pub struct IndexOptions {
    /// The URL written for the source (template `u`); `None` means its absolute local path.
    pub url: Option<String>,
    /// Which reader's view of an HDF5 file to reproduce.
    pub view: hdf::View,
}

/// Tells the format from the first bytes of a file.
pub fn sniff(file: &dyn nc3::ReadAt, size: u64) -> std::io::Result<Option<SourceFormat>> {
    Ok(sniff_at(file, size)?.map(|(format, _)| format))
}

/// The format, and where its signature ends: HDF5 files may start with a user block (512,
/// 1024, … bytes), so the HDF5 signature is looked for at 0 and at powers of two from 512.
fn sniff_at(file: &dyn nc3::ReadAt, size: u64) -> std::io::Result<Option<(SourceFormat, u64)>> {
    let mut head = vec![0u8; size.min(8) as usize];
    file.read_exact_at(&mut head, 0)?;
    if let Some(v) = nc3::header::sniff(&head) {
        return Ok(Some((nc3::format_of(v), 4)));
    }
    let mut at = 0u64;
    while at + 8 <= size {
        let mut sig = [0u8; 8];
        if at == 0 {
            sig.copy_from_slice(&head);
        } else {
            file.read_exact_at(&mut sig, at)?;
        }
        if &sig == HDF5_MAGIC {
            return Ok(Some((SourceFormat::Hdf5, at + 8)));
        }
        at = if at == 0 { 512 } else { at * 2 };
    }
    Ok(None)
}

/// Indexes one file into a reference set.
pub fn index_file(path: &Path, options: &IndexOptions) -> Result<ReferenceSet, IndexError> {
    let io = |source| IndexError::Io { path: path.into(), source };
    let abs = std::path::absolute(path).map_err(io)?;
    let file = std::fs::File::open(&abs).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let size = meta.len();
    if size == 0 {
        return Err(IndexError::Empty { path: path.into() });
    }
    let url = options.url.clone().unwrap_or_else(|| abs.to_string_lossy().into_owned());
    let format = sniff(&file, size)
        .map_err(io)?
        .ok_or_else(|| IndexError::NotNetcdf { path: path.into(), magic: describe_magic(&file, size) })?;
    let builder = match format {
        SourceFormat::Hdf5 => hdf::translate(&abs, &url, options.view)?,
        _ => nc3::translate(&file, &abs, size, &url)?,
    };
    let source = SourceInfo { path: abs.to_string_lossy().into_owned(), fingerprint: Fingerprint::of(&meta) };
    Ok(builder.finish(source, format))
}

/// Indexes the remote object `url` (under a `[[remote]]` prefix of `remote`) by ranged reads,
/// without downloading it, into the references a local copy gives (with the object's URL),
/// fingerprinted with its size, `Last-Modified` and `ETag`. NetCDF-3 is read from its header;
/// NetCDF-4/HDF5 through netCDF-C and libhdf5, whose reads a driver of ours serves from the
/// object ([`hdf::remote_vfd`]).
pub fn index_remote(url: &str, remote: &zarrgate_remote::Remote, view: hdf::View) -> Result<ReferenceSet, IndexError> {
    let path = Path::new(url);
    let io = |source: std::io::Error| IndexError::Io { path: path.into(), source };
    let fingerprint = remote.stat(url).map_err(|e| io(std::io::Error::other(e)))?;
    if fingerprint.size == 0 {
        return Err(IndexError::Empty { path: path.into() });
    }
    let object = RemoteObject { remote, url, fingerprint };
    let size = fingerprint.size;
    let (format, signature_end) = sniff_at(&object, size)
        .map_err(io)?
        .ok_or_else(|| IndexError::NotNetcdf { path: path.into(), magic: describe_magic(&object, size) })?;
    let builder = if format == SourceFormat::Hdf5 {
        let mut head = vec![0u8; signature_end as usize];
        nc3::ReadAt::read_exact_at(&object, &mut head, 0).map_err(io)?;
        let translated = hdf::remote_vfd::with_standin(remote, url, fingerprint, &head, |standin| {
            hdf::translate(standin, url, view).map_err(|e| e.naming(path))
        });
        translated.map_err(|e| io(std::io::Error::other(e)))??
    } else {
        nc3::translate(&object, path, size, url)?
    };
    let source = SourceInfo { path: url.into(), fingerprint };
    Ok(builder.finish(source, format))
}

/// A remote object as a NetCDF-3 byte source.
struct RemoteObject<'a> {
    remote: &'a zarrgate_remote::Remote,
    url: &'a str,
    fingerprint: Fingerprint,
}

impl nc3::ReadAt for RemoteObject<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let got = self.read_ranges(&[(offset, buf.len() as u64)])?;
        buf.copy_from_slice(&got[0]);
        Ok(())
    }

    fn read_ranges(&self, ranges: &[(u64, u64)]) -> std::io::Result<Vec<Vec<u8>>> {
        let got = self.remote.read_ranges(self.url, self.fingerprint, ranges).map_err(std::io::Error::other)?;
        Ok(got.into_iter().map(|b| b.to_vec()).collect())
    }
}

fn describe_magic(file: &dyn nc3::ReadAt, size: u64) -> String {
    let mut head = vec![0u8; size.min(8) as usize];
    let head = if file.read_exact_at(&mut head, 0).is_ok() { &head[..] } else { &[] };
    format!("{head:02x?}")
}

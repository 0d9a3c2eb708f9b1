//! Errors of the indexer, each carrying the file (and object) it concerns.

use std::path::PathBuf;

/// Why a file could not be indexed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is empty (0 bytes)")]
    Empty { path: PathBuf },
    #[error("{path} is not a NetCDF or HDF5 file (it starts with {magic})")]
    NotNetcdf { path: PathBuf, magic: String },
    #[error("{path}: malformed NetCDF-3 header")]
    Nc3Header {
        path: PathBuf,
        #[source]
        source: crate::nc3::header::HeaderError,
    },
    #[error("{path} is truncated: variable {variable} needs bytes up to {needed}, the file has {size}")]
    Truncated { path: PathBuf, variable: String, needed: u64, size: u64 },
    #[error("{path}: netCDF-C cannot read {object}")]
    Netcdf {
        path: PathBuf,
        object: String,
        #[source]
        source: netcdf::Error,
    },
    #[error("{path}: HDF5 cannot read {object}")]
    Hdf5 {
        path: PathBuf,
        object: String,
        #[source]
        source: hdf5::Error,
    },
    #[error("{path}: {object}: {why}")]
    Unsupported { path: PathBuf, object: String, why: String },
}

impl IndexError {
    /// The same error, naming `path` as the file: for a remote object read through a local
    /// stand-in.
    pub fn naming(mut self, name: &std::path::Path) -> Self {
        match &mut self {
            Self::Io { path, .. }
            | Self::Empty { path }
            | Self::NotNetcdf { path, .. }
            | Self::Nc3Header { path, .. }
            | Self::Truncated { path, .. }
            | Self::Netcdf { path, .. }
            | Self::Hdf5 { path, .. }
            | Self::Unsupported { path, .. } => *path = name.into(),
        }
        self
    }
}

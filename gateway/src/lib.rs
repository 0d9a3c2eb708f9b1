//! `zarrgate-gateway`: the read-only, S3-compatible Zarr store (arrives with the gateway issue).
//!
//! # Layout
//! - [`store`]: the [`store::VirtualStore`] seam the S3 layer will serve: a key-value view of
//!   reference sets that knows nothing of Kerchunk JSON.
//!
//! The gateway never links libhdf5 or libnetcdf: it reads reference sets written by the
//! indexer and byte ranges of the source files.

pub mod store;

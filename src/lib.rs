//! `zarrgate-core`: the pure data model shared by the indexer and the gateway.
//!
//! # Layout
//! - [`refs`]: a reference set (Zarr key → inline bytes or a byte range of a source file) and
//!   its Kerchunk JSON form (v0 and v1 read, v1 write, URL templates, no `gen`).
//! - [`zarr`]: Zarr v2 metadata documents (`.zarray`, `.zgroup`), typed codecs and dtypes.
//! - [`attrs`]: attribute values and their `.zattrs` JSON (with NaN, as Zarr writes it).
//! - [`fill`]: fill values as Zarr v2 JSON and as raw element bytes.
//! - [`codec`]: the few encoders the indexer needs for bytes it writes itself (vlen-utf8, zlib,
//!   shuffle).
//! - [`report`]: what happened to every variable of a file (referenced, inlined, transcode,
//!   refused), stored beside the references under the top-level key `zarrgate`.
//! - [`catalog`]: the catalog of an indexed tree and source fingerprints.
//! - [`cftime`]: CF calendars and time units (decode, encode, ISO bounds, periods).
//! - [`join`]: multi-file datasets: checks, plans, and the assembly of chunks across files.
//! - [`ops`]: server-side subset and average as pure computations over a served store.
//!
//! Nothing here does I/O beyond reading and writing JSON documents, and nothing depends on an
//! async runtime, HTTP or the HDF5/netCDF C libraries.

pub mod attrs;
pub mod catalog;
pub mod cftime;
pub mod codec;
pub mod fill;
pub mod join;
pub mod ops;
pub mod refs;
pub mod report;
pub mod zarr;

/// An error and all its sources, joined by `: ` (for logs and reports, where a message must
/// say everything on one line).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

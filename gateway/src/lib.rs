//! `zarrgate-gateway`: a read-only, S3-compatible Zarr v2 store over reference sets.
//!
//! # Layout
//! - [`app`]: the gateway's state, built once; [`state`] the part that operations share.
//! - [`router`]: one entry for every request: health, metrics, operations and S3; admission
//!   and accounting happen there, once.
//! - [`client`]: the client's address, also behind trusted proxies.
//! - [`tls`]: TLS on the listener, with certificates reloaded when their files change.
//! - [`dates`]: Unix time, UTC days and ISO 8601 texts.
//! - [`config`]: the TOML file that declares collections (buckets).
//! - [`collection`]: one bucket, its datasets loaded from a catalog, and re-indexing when a
//!   source changes.
//! - [`dataset`]: the objects of one dataset's virtual store.
//! - [`source`]: byte ranges of source files through cached handles, with staleness checks.
//! - [`transcode`]: HDF5 filter pipelines decoded in Rust.
//! - [`s3`]: the S3 API (routing, listing, ranges, conditionals, XML errors).
//! - [`auth`]: SigV4 and bearer keys, policies, quotas, usage (SQLite).
//! - [`ops`]: server-side subset and average: HTTP and OGC API, result cache, jobs.
//! - [`web`]: discovery: HTML pages (`/browse/`), the STAC API (`/stac`), Kerchunk downloads.
//! - [`metrics`]: Prometheus counters.
//! - [`body`]: response bodies, streaming large byte ranges.
//! - [`sendfile`]: zero-copy sending of large byte ranges through the connection's I/O.
//! - [`server`]: the hyper server (limits in all and per address, timeouts, TLS, shutdown).
//! - [`util`]: hex, I/O errors that name their file, quiet deletion.
//!
//! The gateway never links libhdf5 or libnetcdf: it reads reference sets written by the
//! indexer and byte ranges of the source files. NetCDF results are written through the
//! [`ops::NetcdfWriter`] the binary provides.

pub mod access_log;
pub mod app;
pub mod auth;
pub mod body;
pub mod client;
pub mod collection;
pub mod config;
pub mod cors;
pub mod dataset;
pub mod dates;
pub mod metrics;
pub mod ops;
pub mod router;
pub mod s3;
pub mod sendfile;
pub mod server;
pub mod source;
pub mod state;
pub mod store;
pub mod sts;
pub mod tls;
pub mod transcode;
pub mod util;
pub mod web;

pub use app::{App, AppBuilder};
pub use collection::{Collection, Reindex};
pub use server::{serve, shutdown_signal, ServeOptions};

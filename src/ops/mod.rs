//! Server-side operations (`subset`, `average`) as pure computations over a served store.
//!
//! # Layout
//! - [`request`]: arguments, validation, the canonical form cache keys hash, problem documents.
//! - [`store`]: the dataset as the S3 layer serves it ([`ChunkSource`]), read as variables, with
//!   chunk decoding (zlib, shuffle, fletcher32) and CF masking.
//! - [`select`]: CF axes, and the index selection of `time`, `area`, `level` and `isel`.
//! - [`kernel`]: gathering and weighted sums over chunks, on a bounded number of threads.
//! - [`compute`]: planning (cost and size estimates) and running a request.
//! - [`output`]: the format-neutral result and its JSON, CSV and Zarr encodings.
//! - [`picture`]: the PNG encoding: a map or a time series with axes and a colour bar.

pub mod compute;
pub mod kernel;
pub mod output;
pub mod picture;
pub mod request;
pub mod select;
pub mod store;

pub use compute::{execute, plan, Plan};
pub use kernel::Run;
pub use output::Output;
pub use request::{Format, Problem, Process, Raw, Request};
pub use store::{ChunkSource, SourceError, StoreView};

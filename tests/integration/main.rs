//! End-to-end tests of the root package: the only place that uses both the indexer and the
//! gateway (one test binary).

mod gateway;
mod indexer;

use std::path::{Path, PathBuf};

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data").join(rel)
}

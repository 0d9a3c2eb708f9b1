//! Indexer behaviour on our fixtures: every bad input gives its own clear error, a tree keeps
//! going past bad files, and re-runs are incremental.

use super::fixture;

use zarrgate_core::catalog::{Catalog, EntryStatus};
use zarrgate_core::refs::{Reference, ReferenceSet};
use zarrgate_core::report::{FileReport, VariableStatus};
use zarrgate_indexer::tree::{index_tree, InProcess, Outcome, Progress, TreeOptions};
use zarrgate_indexer::{index_file, IndexError, IndexOptions};

fn index(rel: &str) -> Result<ReferenceSet, IndexError> {
    index_file(&fixture(rel), &IndexOptions::default())
}

fn zarray(set: &ReferenceSet, var: &str) -> serde_json::Value {
    match &set.refs[&format!("{var}/.zarray")] {
        Reference::Inline(b) => serde_json::from_slice(b).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn zero_byte_file_is_reported_as_empty() {
    assert!(matches!(index("bad/zero_bytes.nc"), Err(IndexError::Empty { .. })));
}

#[test]
fn text_and_random_bytes_are_not_netcdf() {
    for f in ["bad/not_netcdf.nc", "bad/random_bytes.nc"] {
        let err = index(f).unwrap_err();
        assert!(matches!(err, IndexError::NotNetcdf { .. }), "{f}: {err}");
        assert!(err.to_string().contains("not a NetCDF or HDF5 file"));
    }
}

#[test]
fn truncated_netcdf3_data_is_caught_from_the_header() {
    // netCDF-C itself reads the missing bytes as zeros; the indexer must not reference them.
    let err = index("bad/truncated_nc3.nc").unwrap_err();
    assert!(matches!(err, IndexError::Truncated { .. }), "{err}");
    assert!(matches!(index("bad/truncated_nc3_header.nc"), Err(IndexError::Nc3Header { .. })));
}

#[test]
fn broken_hdf5_files_are_errors_naming_the_file() {
    for f in ["bad/truncated.nc", "bad/corrupt_superblock.nc", "bad/corrupt_btree.nc"] {
        let err = index(f).unwrap_err();
        assert!(matches!(err, IndexError::Netcdf { .. } | IndexError::Hdf5 { .. }), "{f}: {err}");
        assert!(err.to_string().contains(f.trim_start_matches("bad/")), "{err}");
    }
}

#[test]
fn references_use_a_url_template_and_no_gen() {
    let set = index("good/nan_fill.nc").unwrap();
    let json = set.to_json();
    assert!(json.get("gen").is_none());
    assert_eq!(json["templates"]["u"], fixture("good/nan_fill.nc").to_str().unwrap());
    assert!(set.refs.values().any(|r| matches!(r, Reference::Range { url, .. } if url == "{{u}}")));
}

#[test]
fn no_fill_value_attribute_means_no_zarr_fill_value() {
    let set = index("good/no_fill_unwritten.nc").unwrap();
    assert!(zarray(&set, "tas")["fill_value"].is_null());
    // Its unwritten chunks read as netCDF's default fill, so they are synthesized inline.
    let meta = set.meta.unwrap();
    assert!(meta.variables["tas"].reason.as_deref().unwrap_or("").contains("unwritten chunks"));
}

#[test]
fn nan_fill_value_is_written_as_zarr_does() {
    let set = index("good/nan_fill.nc").unwrap();
    assert_eq!(zarray(&set, "tas")["fill_value"], "NaN");
}

#[test]
fn netcdf3_record_variables_follow_the_record_stride() {
    let set = index("good/classic.nc").unwrap();
    let ranges: Vec<(u64, u64)> = (0..6)
        .filter_map(|r| match set.refs.get(&format!("tas/{r}.0.0")) {
            Some(Reference::Range { offset, length, .. }) => Some((*offset, *length)),
            _ => None,
        })
        .collect();
    assert_eq!(ranges.len(), 6, "one reference per record");
    let stride = ranges[1].0 - ranges[0].0;
    assert!(ranges.windows(2).all(|w| w[1].0 - w[0].0 == stride));
    assert!(zarray(&set, "tas")["dtype"].as_str().unwrap().starts_with('>'));
}

#[test]
fn unreadable_codecs_are_marked_for_transcoding_not_dropped() {
    let set = index("good/filters_hdf5_builtin.h5").unwrap();
    let meta = set.meta.unwrap();
    for v in ["szip", "nbit_u12", "scaleoffset_int", "scaleoffset_float"] {
        assert_eq!(meta.variables[v].status, VariableStatus::Transcode, "{v}");
        assert!(meta.transcode.contains_key(v));
        assert!(!set.refs.contains_key(&format!("{v}/.zarray")), "{v} must stay out of plain refs");
    }
    // The gateway decodes these from the parameters HDF5 stored with each dataset: szip's four,
    // n-bit's eight for a number, scale-offset's twenty.
    let cd = |v: &str| meta.transcode[v].hdf5_filters[0].cd_values.clone();
    assert_eq!(cd("szip"), [169, 16, 32, 25]);
    assert_eq!(cd("nbit_u12"), [8, 0, 500, 1, 2, 0, 12, 0]);
    assert_eq!(cd("scaleoffset_float")[..8], [0, 2, 500, 1, 4, 0, 0, 1]);
    assert_eq!(cd("scaleoffset_int").len(), 20);
}

#[test]
fn vlen_strings_and_compact_data_are_inlined() {
    let meta = index("good/vlen_strings.nc").unwrap().meta.unwrap();
    assert!(meta.variables.values().filter(|v| v.status == VariableStatus::Inlined).count() >= 3);
    let meta = index("good/compact.h5").unwrap().meta.unwrap();
    assert!(meta.variables.values().any(|v| v.status == VariableStatus::Inlined));
}

#[derive(Default)]
struct Seen(Vec<(String, Outcome)>);

impl Progress for Seen {
    fn start(&mut self, _total: usize) {}
    fn file(&mut self, rel: &str, outcome: Outcome) {
        self.0.push((rel.to_string(), outcome));
    }
}

#[test]
fn tree_index_reports_bad_files_and_reruns_incrementally() {
    let data = tempfile::tempdir().unwrap();
    for f in [
        "good/classic.nc",
        "good/nan_fill.nc",
        "good/filters_hdf5_builtin.h5",
        "bad/zero_bytes.nc",
        "bad/corrupt_superblock.nc",
    ] {
        let dst = data.path().join(f);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(fixture(f), dst).unwrap();
    }
    std::fs::write(data.path().join("README.txt"), "not data").unwrap();
    let out = tempfile::tempdir().unwrap();
    let options = TreeOptions { url_prefix: Some("s3://bucket/data".into()), jobs: 2, ..Default::default() };

    let mut seen = Seen::default();
    let summary = index_tree(data.path(), out.path(), &options, &InProcess, &mut seen).unwrap();
    assert_eq!((summary.ok, summary.partial, summary.failed), (2, 1, 2));
    assert_eq!(seen.0.len(), 5, "README.txt is not taken as data");

    let (exported, catalog) = export(out.path());
    let bad = &catalog.datasets["bad/zero_bytes.nc"];
    assert_eq!(bad.status, EntryStatus::Failed);
    let report: FileReport =
        serde_json::from_slice(&std::fs::read(exported.path().join(&bad.report)).unwrap()).unwrap();
    assert!(report.error.unwrap().contains("empty"));
    let good = &catalog.datasets["good/classic.nc"];
    let refs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(exported.path().join(good.refs.as_ref().unwrap())).unwrap()).unwrap();
    assert_eq!(refs["templates"]["u"], "s3://bucket/data/good/classic.nc");

    let mut seen = Seen::default();
    let again = index_tree(data.path(), out.path(), &options, &InProcess, &mut seen).unwrap();
    assert_eq!(again.skipped, 5);
    assert!(seen.0.iter().all(|(_, o)| *o == Outcome::Skipped));

    // A changed file is indexed again; a deleted one leaves the catalog.
    let changed = data.path().join("good/nan_fill.nc");
    std::fs::copy(fixture("good/groups.nc"), &changed).unwrap();
    std::fs::remove_file(data.path().join("good/classic.nc")).unwrap();
    let third = index_tree(data.path(), out.path(), &options, &InProcess, &mut Seen::default()).unwrap();
    assert_eq!((third.ok, third.skipped, third.removed), (1, 3, 1));
    let (exported, catalog) = export(out.path());
    assert!(!catalog.datasets.contains_key("good/classic.nc"));
    assert!(!exported.path().join("refs/good/classic.nc.json").exists());
}

/// The catalog in `dir`, exported to the JSON layout.
fn export(dir: &std::path::Path) -> (tempfile::TempDir, Catalog) {
    let out = tempfile::tempdir().unwrap();
    let db = zarrgate_core::catalog::CatalogDb::open(dir).unwrap();
    zarrgate_core::catalog::legacy::export(&db, &[], out.path()).unwrap();
    let catalog = Catalog::load_json(out.path()).unwrap().unwrap();
    (out, catalog)
}

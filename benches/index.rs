//! Indexing speed: a generated HDF5 file with 100,000 chunks (target: under 1 s), a real CMIP6
//! file from the corpus, and a NetCDF-3 header.
//!
//! Run with `cargo bench --bench index`; figures go to docs/benchmarks.md.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use zarrgate_indexer::{index_file, IndexOptions};

const CHUNKS: usize = 100_000;

/// A 1-D float32 dataset of 100,000 chunks of 16 values, every chunk written.
fn many_chunks_file(dir: &Path) -> PathBuf {
    let path = dir.join("many_chunks.h5");
    let file = hdf5::File::create(&path).expect("create HDF5 file");
    let ds = file.new_dataset::<f32>().chunk(16).shape(CHUNKS * 16).create("x").expect("create dataset");
    let data: Vec<f32> = (0..CHUNKS * 16).map(|i| i as f32).collect();
    ds.write_raw(&data).expect("write data");
    path
}

fn corpus() -> PathBuf {
    std::env::var_os("ZARRGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"))
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let many = many_chunks_file(dir.path());
    let opts = IndexOptions::default();
    let refs = index_file(&many, &opts).expect("index many_chunks.h5");
    assert_eq!(refs.refs.keys().filter(|k| k.starts_with("x/") && !k.contains(".z")).count(), CHUNKS);

    let mut g = c.benchmark_group("index");
    g.sample_size(10);
    g.bench_function("hdf5_100k_chunks", |b| b.iter(|| index_file(&many, &opts).expect("index")));
    g.bench_function("hdf5_100k_chunks_to_json", |b| {
        b.iter(|| index_file(&many, &opts).expect("index").to_json_bytes().len())
    });
    let cmip6 = corpus().join(
        "mini-esgf-data/test_data/badc/cmip6/data/CMIP6/CMIP/NCAR/CESM2/amip/r1i1p1f1/Amon/cl/gn/v20190319/cl_Amon_CESM2_amip_r1i1p1f1_gn_195001-201412.nc",
    );
    if cmip6.exists() {
        g.bench_function("netcdf4_cmip6_cl", |b| b.iter(|| index_file(&cmip6, &opts).expect("index")));
    }
    let nc3 = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data/good/classic.nc");
    g.bench_function("netcdf3_classic", |b| b.iter(|| index_file(&nc3, &opts).expect("index")));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

"""Variables the indexer marked for transcoding, read through the gateway.

The oracle here is h5py with hdf5plugin on the original file: most of these files use filters
that netCDF4-python (and so `xr.open_dataset`) cannot read at all. Every variable whose
pipeline the gateway decodes must equal h5py's values exactly; every other one must be absent
(never wrong), with the reason in the gateway's log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the plugin filters with h5py)
import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore

from gateway import REPO, export_catalog, start_gateway

FIXTURES = Path(os.environ.get("ZARRGATE_FIXTURES", REPO / "fixtures" / "data" / "good"))
CORPUS = Path(os.environ.get("ZARRGATE_CORPUS", REPO.parent / "shared" / "corpus"))

# Files with filter pipelines or types plain Zarr cannot read (see docs/fidelity.md).
FILES = [
    FIXTURES / "filters_plugins.h5",
    FIXTURES / "filters_hdf5_builtin.h5",
    FIXTURES / "compound_enum.h5",
    FIXTURES / "filters_zfp.h5",
    FIXTURES / "filters_jpeg.h5",
    *sorted((CORPUS / "hdf5-examples/C/H5FLT/tfiles").glob("*.h5")),
    CORPUS / "kerchunk/tests/hdf5_compression_lz4.h5",
    CORPUS / "kerchunk/tests/hdf5_compression_zstd.h5",
    CORPUS / "kerchunk/tests/hdf5_mini_shuffle_blosc.h5",
    CORPUS / "jhdf/jhdf/src/test/resources/hdf5/bitshuffle_datasets.hdf5",
    CORPUS / "jhdf/jhdf/src/test/resources/hdf5/test_compressed_chunked_datasets_latest.hdf5",
    CORPUS / "netcdf-c/nc_test4/ref_szip.h5",
]
DECODED = {1, 2, 3, 4, 5, 6, 307, 32000, 32001, 32004, 32008, 32013, 32015, 32019}
JPEG = 32019


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("transcode-data")
    for f in FILES:
        assert f.exists(), f"missing test input {f}"
        origin = "fixture" if f.is_relative_to(FIXTURES) else "corpus"
        (data / f"{origin}-{f.name}").symlink_to(f)
    g = start_gateway(data, "tcode", tmp_path_factory.mktemp("transcode-catalog"))
    yield g, data
    g.stop()


def transcode_marks(catalog: Path, name: str) -> dict:
    exported = export_catalog(catalog, name, out=catalog.parent / f"{catalog.name}.export-{name}")
    report = json.loads((exported / "reports" / f"{name}.json").read_text())
    return (report.get("index") or {}).get("transcode", {})


def h5_values(path: Path, var: str):
    """h5py's values, or None when no installed plugin decodes the variable."""
    with h5py.File(path, "r") as h:
        try:
            return h[var][()]
        except (OSError, ValueError):
            return None


def test_decodable_variables_equal_h5py_and_the_rest_are_absent(served):
    gw, data = served
    verified, absent, unverifiable = [], [], []
    for link in sorted(data.iterdir()):
        marks = transcode_marks(gw.catalog_dir, link.name)
        if not marks:
            continue
        store = FsspecStore.from_url(
            f"s3://tcode/{link.name}", storage_options={"anon": True, "endpoint_url": gw.endpoint}, read_only=True
        )
        group = zarr.open_group(store=store, mode="r", zarr_format=2)
        for var, spec in marks.items():
            typed = spec["dtype"] is not None or spec.get("compound") is not None
            decodable = typed and all(f["id"] in DECODED for f in spec["hdf5_filters"])
            member = f"{link.name}/{var}"
            try:
                array = group[var]
            except KeyError:
                array = None
            if not decodable:
                assert array is None, f"{member} is served although the gateway cannot decode it"
                assert f"{var}: " in gw.stderr_text(), f"the log does not say why {member} is not served"
                absent.append(member)
                continue
            assert array is not None, f"{member} should be served decoded"
            expected = h5_values(link, var)
            if expected is None:
                unverifiable.append(member)
                continue
            got = array[...]
            assert got.shape == expected.shape, member
            if expected.dtype.names:
                # A compound is served with its fields packed (Zarr v2 cannot name padding) and
                # little-endian: the same fields and values.
                assert got.dtype.names == expected.dtype.names, member
                for field in expected.dtype.names:
                    assert got[field].dtype == expected[field].dtype.newbyteorder("<"), f"{member}.{field}"
                    np.testing.assert_array_equal(got[field], expected[field], err_msg=f"{member}.{field}")
            else:
                assert got.dtype == expected.dtype, member
                np.testing.assert_array_equal(got, expected, err_msg=member)
            verified.append(member)
    # Every plugin filter family the gateway decodes is exercised on real files.
    assert len(verified) >= 20, verified
    for family in ("bshuf", "blosc", "bzip2", "lz4", "lzf", "zstd", "szip", "nbit", "scaleoffset", "zfp"):
        assert any(family in m for m in verified), f"no verified variable for {family}: {verified}"
    assert any("ref_szip.h5/dset_szip" in m for m in verified), verified
    for mode in ("rate_f8", "precision_f4", "accuracy_f8", "reversible_i4", "expert_i8", "unity_f4"):
        assert f"fixture-filters_zfp.h5/{mode}" in verified, verified
    assert any("mafisc" in m for m in absent), absent
    # no installed plugin reads JPEG: test_jpeg_chunks_decode_like_libjpeg checks those
    assert {m for m in unverifiable if "jpeg" not in m} == set(), unverifiable
    assert any("compound_enum.h5/stations" in m for m in verified), verified
    print(f"verified {len(verified)}, absent {len(absent)}, unverifiable {len(unverifiable)}: {unverifiable}")


def test_jpeg_chunks_decode_like_libjpeg(served):
    """JPEG (filter 32019) is served decoded. No HDF5 plugin in the venv reads it, so the oracle
    is Pillow (libjpeg-turbo) on each stored chunk. JPEG decoders may differ by rounding in the
    inverse DCT and in chroma upsampling (ISO/IEC 10918-1 sets an accuracy bound, not exact
    values), so grey pixels must agree within 1 and colour pixels within 3 (docs/fidelity.md)."""
    import io

    from PIL import Image

    gw, data = served
    checked = []
    for link in sorted(data.iterdir()):
        for var, spec in transcode_marks(gw.catalog_dir, link.name).items():
            if [f["id"] for f in spec["hdf5_filters"]] != [JPEG]:
                continue
            store = FsspecStore.from_url(f"s3://tcode/{link.name}",
                                         storage_options={"anon": True, "endpoint_url": gw.endpoint}, read_only=True)
            got = zarr.open_group(store=store, mode="r", zarr_format=2)[var][...]
            with h5py.File(link, "r") as h:
                ds = h[var]
                want = np.empty(ds.shape, ds.dtype)
                for info in (ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())):
                    raw = ds.id.read_direct_chunk(info.chunk_offset)[1]
                    image = np.asarray(Image.open(io.BytesIO(raw)))
                    at = tuple(slice(o, o + c) for o, c in zip(info.chunk_offset, ds.chunks))
                    want[at] = image.reshape(ds.chunks)
            assert got.dtype == want.dtype and got.shape == want.shape, var
            diff = np.abs(got.astype(int) - want.astype(int))
            colour = want.ndim == 4 and want.shape[-1] == 3
            assert diff.max() <= (3 if colour else 1), f"{link.name}/{var}: max difference {diff.max()}"
            assert diff.mean() < 0.5, f"{link.name}/{var}: mean difference {diff.mean()}"
            checked.append(f"{link.name}/{var}")
            print(f"{link.name}/{var}: max {diff.max()} mean {diff.mean():.4f}")
    assert {"fixture-filters_jpeg.h5/grey", "fixture-filters_jpeg.h5/rgb", "corpus-h5ex_d_jpeg.h5/DS1"} <= set(checked), checked


def test_a_corrupt_chunk_is_an_error_not_data(served, tmp_path):
    """A transcoded chunk whose bytes fail to decode answers 500, never garbage."""
    gw, data = served
    name = "fixture-filters_plugins.h5"
    marks = transcode_marks(gw.catalog_dir, name)
    var, spec = next((v, s) for v, s in marks.items() if s["hdf5_filters"][0]["id"] == 32015)
    key, chunk = next(iter(spec["stored"].items()))
    # Serve a corrupted copy through a second gateway (the original stays untouched).
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = bad_dir / "bad.h5"
    bad.write_bytes(Path(os.path.realpath(data / name)).read_bytes())
    with open(bad, "r+b") as f:
        f.seek(chunk["offset"] + chunk["length"] // 2)
        f.write(b"\xff" * 8)
    g2 = start_gateway(bad_dir, "tcode", tmp_path / "bad-catalog")
    try:
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{g2.endpoint}/tcode/bad.h5/{var}/{key}", timeout=30)
        assert err.value.code == 500
        assert b"<Code>InternalError</Code>" in err.value.read()
        assert urllib.request.urlopen(f"{g2.endpoint}/healthz", timeout=10).status == 200
    finally:
        g2.stop()

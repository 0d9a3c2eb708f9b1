"""`zarrgate index` as users run it: a tree with bad files, re-runs, URL prefixes, and the
references opened with fsspec's reference filesystem."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

from gateway import export_catalog

import fsspec
import xarray as xr

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "data"


def run(cmd, *args):
    return subprocess.run([*cmd, "index", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)


def make_tree(root: Path) -> None:
    for rel in ["good/classic.nc", "good/groups.nc", "good/filters_hdf5_builtin.h5",
                "bad/zero_bytes.nc", "bad/truncated.nc", "bad/random_bytes.nc",
                "bad/not_netcdf.nc", "bad/corrupt_superblock.nc", "bad/corrupt_btree.nc",
                "bad/truncated_nc3.nc"]:
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / rel, dst)


def test_tree_with_bad_files_indexes_the_rest_and_says_some_failed(zarrgate_cmd, tmp_path):
    data, cat = tmp_path / "data", tmp_path / "catalog"
    make_tree(data)
    proc = run(zarrgate_cmd, data, "--out", cat)
    assert proc.returncode == 1, proc.stderr
    assert "some files failed" in proc.stderr
    exported = export_catalog(cat)
    catalog = json.loads((exported / "catalog.json").read_text())
    status = {k: v["status"] for k, v in catalog["datasets"].items()}
    assert status["good/classic.nc"] == "ok" and status["good/groups.nc"] == "ok"
    assert status["good/filters_hdf5_builtin.h5"] == "partial"
    bad = [k for k in status if k.startswith("bad/")]
    assert len(bad) == 7 and all(status[k] == "failed" for k in bad)
    for k in bad:
        report = json.loads((exported / "reports" / f"{k}.json").read_text())
        assert report["status"] == "failed" and Path(k).name in report["error"], report
    # A partial file's report says which variable needs the gateway, and why.
    report = json.loads((exported / "reports/good/filters_hdf5_builtin.h5.json").read_text())
    assert report["index"]["variables"]["szip"] == {"status": "transcode", "reason": report["index"]["variables"]["szip"]["reason"]}
    assert "szip" in report["index"]["variables"]["szip"]["reason"]


def generation(cat: Path) -> int:
    """The catalog's write counter: every committed write adds one."""
    with sqlite3.connect(cat / "catalog.db") as db:
        return int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])


def test_rerun_skips_unchanged_files(zarrgate_cmd, tmp_path):
    data, cat = tmp_path / "data", tmp_path / "catalog"
    make_tree(data)
    run(zarrgate_cmd, data, "--out", cat)
    before = generation(cat)
    proc = run(zarrgate_cmd, data, "--out", cat)
    assert "10 unchanged skipped" in proc.stderr, proc.stderr
    assert generation(cat) == before, "a run that changed nothing writes nothing"
    shutil.copy(FIXTURES / "good/nan_fill.nc", data / "good/classic.nc")
    proc = run(zarrgate_cmd, data, "--out", cat)
    assert "9 unchanged skipped" in proc.stderr, proc.stderr


def test_single_file_references_open_with_fsspec_as_written(zarrgate_cmd, tmp_path):
    src = FIXTURES / "good/nan_fill.nc"
    out = tmp_path / "refs.json"
    assert run(zarrgate_cmd, src, "-o", out).returncode == 0
    doc = json.loads(out.read_text())
    assert "gen" not in doc and doc["templates"]["u"] == str(src)
    ds = xr.open_dataset("reference://", engine="zarr",
                         backend_kwargs={"storage_options": {"fo": str(out)}})
    xr.testing.assert_identical(ds.load(), xr.open_dataset(src).load())


def test_url_prefix_rewrites_chunk_urls(zarrgate_cmd, tmp_path):
    out = tmp_path / "refs.json"
    proc = run(zarrgate_cmd, FIXTURES / "good/classic.nc", "-o", out, "--url-prefix", "s3://bucket/cmip/")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["templates"]["u"] == "s3://bucket/cmip/classic.nc"
    # fsspec resolves the template in every reference.
    fs = fsspec.filesystem("reference", fo=str(out), remote_protocol="s3", remote_options={"anon": True})
    assert any(u == "s3://bucket/cmip/classic.nc" for u, *_ in
               (v for v in fs.references.values() if isinstance(v, list)))


def test_bad_file_alone_is_a_clear_error(zarrgate_cmd, tmp_path):
    proc = run(zarrgate_cmd, FIXTURES / "bad/not_netcdf.nc", "-o", tmp_path / "x.json")
    assert proc.returncode == 1
    assert proc.stderr.startswith("zarrgate: ") and "not a NetCDF or HDF5 file" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_groups_open_with_the_plain_group_argument(zarrgate_cmd, tmp_path):
    # Regression: without consolidated metadata in every group, zarr-python 3 lists
    # "/forecast" on a reference:// store, finds nothing and opens an empty dataset.
    src = FIXTURES / "good/groups.nc"
    out = tmp_path / "refs.json"
    assert run(zarrgate_cmd, src, "-o", out).returncode == 0
    for group in ["forecast", "forecast/member1", "obs"]:
        ds = xr.open_dataset("reference://", engine="zarr", group=group,
                             backend_kwargs={"storage_options": {"fo": str(out)}})
        orig = xr.open_dataset(src, group=group)
        assert set(ds.variables) == set(orig.variables) and len(ds.variables) > 0
        xr.testing.assert_equal(ds.load(), orig.load())

"""Kerchunk references made by other tools (`NAME.kerchunk.json` in the data tree), through a
real gateway, against fsspec's `reference://` over the same references.

kerchunk 0.2.10 (pinned in the venv) writes references for fixture files (NetCDF-4 with
groups, packing and checksums, NetCDF-3) and combines two DRS files along time with
MultiZarrToZarr; the test also writes the same references as Kerchunk v0, with templates,
with relative URLs and with `gen`. Malformed reference files must be refused when the tree is
indexed, with an error naming the file and the key, and answer 503.
"""

from __future__ import annotations

import base64
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests
import xarray as xr

from gateway import REPO, start_gateway

BUCKET = "imported"
FIXTURES = REPO / "fixtures" / "data" / "good"
FILES = ["cal_noleap.nc", "classic.nc", "packed_be_int16.nc", "groups.nc", "fletcher32.nc", "unlimited.nc"]
DRS = sorted((FIXTURES / "drs").rglob("*.nc"))


def kerchunk_refs(path: Path, inline: int = 64) -> dict:
    from kerchunk.hdf import SingleHdf5ToZarr
    from kerchunk.netCDF3 import NetCDF3ToZarr

    with open(path, "rb") as f:
        magic = f.read(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if magic.startswith(b"CDF"):
            return NetCDF3ToZarr(str(path), inline_threshold=inline).translate()
        return SingleHdf5ToZarr(str(path), inline_threshold=inline).translate()


def v1(refs: dict) -> dict:
    return refs if "version" in refs else {"version": 1, "refs": refs}


def build(root: Path) -> dict[str, dict]:
    """Writes the data tree; returns, per dataset id, the references fsspec reads (absolute)."""
    cases: dict[str, dict] = {}
    data = root / "files"
    data.mkdir(parents=True)
    for name in FILES:
        shutil.copy2(FIXTURES / name, data / name)
        refs = v1(kerchunk_refs(data / name))
        stem = name.rsplit(".", 1)[0]
        (data / f"{stem}.kerchunk.json").write_text(json.dumps(refs))
        cases[f"files/{stem}"] = refs
    # The same references in other spellings.
    refs = cases["files/cal_noleap"]
    url = str(data / "cal_noleap.nc")
    as_v0 = refs["refs"]
    (data / "v0.kerchunk.json").write_text(json.dumps(as_v0))
    cases["files/v0"] = refs
    templated = {"version": 1, "templates": {"u": url},
                 "refs": {k: (["{{u}}", *v[1:]] if isinstance(v, list) else v) for k, v in refs["refs"].items()}}
    (data / "templated.kerchunk.json").write_text(json.dumps(templated))
    cases["files/templated"] = refs
    relative = {"version": 1, "refs": {k: (["cal_noleap.nc", *v[1:]] if isinstance(v, list) else v)
                                       for k, v in refs["refs"].items()}}
    (data / "relative.kerchunk.json").write_text(json.dumps(relative))
    cases["files/relative"] = refs
    # Every chunk of one variable written by `gen` (one file, offsets listed per chunk).
    chunks = {k: v for k, v in refs["refs"].items() if k.startswith("tas/") and isinstance(v, list)}
    keys = sorted(chunks)
    gen_refs = {k: v for k, v in refs["refs"].items() if k not in chunks}
    by_index = {k.split("/", 1)[1]: v for k, v in chunks.items()}
    if by_index and all(len(v) == 3 for v in by_index.values()):
        # one gen entry per chunk key, each over a one-value dimension (plain substitutions)
        gen = [{"key": "tas/{{c}}", "url": "{{f}}", "offset": str(v[1]), "length": str(v[2]),
                "dimensions": {"c": [k], "f": [v[0]]}} for k, v in by_index.items()]
        (data / "generated.kerchunk.json").write_text(json.dumps({"version": 1, "refs": gen_refs, "gen": gen}))
        cases["files/generated"] = refs
    assert keys, "cal_noleap.nc has chunks of tas"

    # Two DRS files combined along time: chunks of two sources in one variable.
    from kerchunk.combine import MultiZarrToZarr

    drs = root / "drs"
    drs.mkdir()
    parts = []
    for f in DRS[:2]:
        shutil.copy2(f, drs / f.name)
        parts.append(v1(kerchunk_refs(drs / f.name, inline=0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        combined = MultiZarrToZarr(parts, concat_dims=["time"], identical_dims=["lat", "lon"],
                                   inline_threshold=0).translate()
    (drs / "combined.kerchunk.json").write_text(json.dumps(combined))
    cases["drs/combined"] = combined
    return cases


#: malformed reference files: (text, words the error must hold)
def malformed(data: Path) -> dict[str, tuple[str, str]]:
    good = json.loads((data / "files" / "cal_noleap.kerchunk.json").read_text())
    chunk = next(k for k, v in good["refs"].items() if isinstance(v, list) and len(v) == 3)
    url, offset, length = good["refs"][chunk]
    size = Path(url).stat().st_size

    def with_ref(value) -> str:
        return json.dumps({"version": 1, "refs": {**good["refs"], chunk: value}})

    zarray_key = chunk.split("/")[0] + "/.zarray"
    zarray = json.loads(good["refs"][zarray_key])
    zarray["dtype"] = "<q7"
    return {
        "missing_file": (with_ref([str(data / "files" / "nowhere.nc"), 0, 10]), f'key "{chunk}"'),
        "beyond_the_end": (with_ref([url, size - 5, 100]), "beyond the end"),
        "not_json": ('{"version": 1, "refs": {', "not valid JSON"),
        "remote": (with_ref(["s3://bucket/x.nc", offset, length]), "no [[remote]] prefix"),
        "outside": (with_ref(["/etc/hostname", 0, 1]), "outside the data directory"),
        "expression": (json.dumps({"version": 1, "refs": good["refs"], "gen": [
            {"key": "x/{{i*2}}", "url": "a.nc", "dimensions": {"i": [0, 1]}}]}), "only plain dimension names"),
        "zarray": (json.dumps({"version": 1, "refs": {**good["refs"], zarray_key: json.dumps(zarray)}}), zarray_key),
        "version": (json.dumps({"version": 3, "refs": {}}), "version 3"),
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("import") / "data"
    cases = build(root)
    bad = root / "bad"
    bad.mkdir()
    refused = malformed(root)
    for name, (text, _) in refused.items():
        (bad / f"{name}.kerchunk.json").write_text(text)
    gw = start_gateway(root, BUCKET, tmp_path_factory.mktemp("import-catalog") / "catalog")
    catalog = json.loads((gw.exported() / "catalog.json").read_text())
    yield root, gw, catalog, cases, refused
    gw.stop()


def reference(refs: dict) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_dataset("reference://", engine="zarr",
                               backend_kwargs={"consolidated": False, "storage_options": {"fo": refs}}).load()


def open_served(gw, dataset: str) -> xr.Dataset:
    options = {"anon": True, "endpoint_url": gw.endpoint, "skip_instance_cache": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(f"s3://{gw.bucket}/{dataset}", storage_options=options, consolidated=True).load()


def test_every_kerchunk_file_is_served_as_reference_reads_it(served):
    _, gw, catalog, cases, _ = served
    for dataset, refs in cases.items():
        entry = catalog["joins"].get(dataset)
        assert entry and entry["status"] == "ok", (dataset, entry)
        xr.testing.assert_identical(open_served(gw, dataset), reference(refs))


def test_a_combined_reference_set_reads_both_files(served):
    """MultiZarrToZarr's chunks come from both files; each is served from its own file (the
    data variable equals the files', end to end)."""
    root, gw, catalog, cases, _ = served
    got = open_served(gw, "drs/combined")
    files = [xr.open_dataset(root / "drs" / f.name) for f in DRS[:2]]
    try:
        np.testing.assert_array_equal(got.tas.values, np.concatenate([f.tas.values for f in files]))
    finally:
        for f in files:
            f.close()
    assert sorted(catalog["joins"]["drs/combined"]["members"]) == sorted(f"drs/{f.name}" for f in DRS[:2])


def test_chunks_are_the_files_bytes(served):
    """A chunk by reference is the byte range of the file, as S3 GET returns it."""
    root, gw, _, cases, _ = served
    refs = cases["files/cal_noleap"]["refs"]
    for key, value in list(refs.items())[:50]:
        if isinstance(value, list) and len(value) == 3:
            url, offset, length = value
            with open(url, "rb") as f:
                f.seek(offset)
                want = f.read(length)
            r = requests.get(f"{gw.endpoint}/{BUCKET}/files/cal_noleap/{key}", timeout=30)
            assert r.status_code == 200 and r.content == want, key
        elif isinstance(value, str) and not key.rsplit("/", 1)[-1].startswith(".z"):
            want = base64.b64decode(value[7:]) if value.startswith("base64:") else value.encode()
            r = requests.get(f"{gw.endpoint}/{BUCKET}/files/cal_noleap/{key}", timeout=30)
            assert r.status_code == 200 and r.content == want, key


@pytest.mark.parametrize("name", ["missing_file", "beyond_the_end", "not_json", "remote", "outside", "expression",
                                  "zarray", "version"])
def test_malformed_reference_files_are_refused_naming_the_file_and_key(served, name):
    _, gw, catalog, _, refused = served
    dataset = f"bad/{name}"
    entry = catalog["joins"].get(dataset)
    assert entry and entry["status"] == "failed", entry
    assert f"bad/{name}.kerchunk.json" in entry["error"], entry["error"]
    assert refused[name][1] in entry["error"], entry["error"]
    r = requests.get(f"{gw.endpoint}/{BUCKET}/{dataset}/.zmetadata", timeout=30)
    assert r.status_code == 503, r.text


def test_a_replaced_source_file_is_not_served(served, tmp_path):
    """The referenced file's fingerprint is recorded: a file replaced after indexing answers
    503 (and is indexed again), never with other bytes (on a copy with its own gateway)."""
    root, _, _, cases, _ = served
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy2(FIXTURES / "classic.nc", data / "classic.nc")
    refs = v1(kerchunk_refs(data / "classic.nc"))
    (data / "classic.kerchunk.json").write_text(json.dumps(refs))
    gw = start_gateway(data, BUCKET, tmp_path / "catalog")
    try:
        key = next(k for k, v in refs["refs"].items() if isinstance(v, list) and len(v) == 3)
        url = f"{gw.endpoint}/{BUCKET}/classic/{key}"
        assert requests.get(url, timeout=30).status_code == 200
        blob = (data / "classic.nc").read_bytes()
        (data / "classic.nc").write_bytes(blob[:-1] + bytes([blob[-1] ^ 0xFF]))
        assert requests.get(url, timeout=30).status_code == 503
    finally:
        gw.stop()

"""Kerchunk references made by other tools (`NAME.kerchunk.json` in the data tree), through a
real gateway, against fsspec's `reference://` over the same references.

kerchunk 0.2.10 (pinned in the venv) writes references for fixture files (NetCDF-4 with
groups, packing and checksums, NetCDF-3) and combines two DRS files along time with
MultiZarrToZarr; the test also writes the same references as Kerchunk v0, with templates,
with relative URLs and with `gen`. Malformed reference files must be refused when the tree is
indexed, with an error naming the file and the key, and answer 503.

The same references are also written as Kerchunk parquet (`NAME.kerchunk.parq/`): by kerchunk's
`refs_to_dataframe` (fastparquet) and by fsspec's `LazyReferenceMapper` (pyarrow), in small
records so that a variable spans several record files, for fixture files, the combined DRS
files and a CMIP6 corpus file.
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

from gateway import CORPUS, REPO, corpus_missing, start_gateway

BUCKET = "imported"
FIXTURES = REPO / "fixtures" / "data" / "good"
FILES = ["cal_noleap.nc", "classic.nc", "packed_be_int16.nc", "groups.nc", "fletcher32.nc", "unlimited.nc"]
DRS = sorted((FIXTURES / "drs").rglob("*.nc"))
#: a CMIP6 NetCDF-4 file of the corpus (read there, linked into the data tree)
CORPUS_FILE = ("mini-esgf-data/test_data/badc/cmip6/data/CMIP6/CMIP/NCAR/CESM2-FV2/historical/r1i1p1f1/Omon/tos"
               "/gn/v20191120/tos_Omon_CESM2-FV2_historical_r1i1p1f1_gn_200001.nc")


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
    build_parquet(root, cases)
    return cases


#: the parquet library each writer uses
ENGINES = {"kerchunk": "fastparquet", "fsspec": "pyarrow"}


def write_parquet(refs: dict, out: Path, writer: str, record_size: int) -> None:
    """`refs` as a parquet reference directory, written by kerchunk or by fsspec itself."""
    from fsspec.implementations.local import LocalFileSystem
    from fsspec.implementations.reference import LazyReferenceMapper
    from kerchunk.df import refs_to_dataframe

    refs = refs.get("refs", refs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if writer == "kerchunk":
            # paths stored as categories (dictionary-encoded) whenever a URL repeats
            refs_to_dataframe(refs, str(out), record_size=record_size, categorical_threshold=1)
        else:
            mapper = LazyReferenceMapper.create(str(out), fs=LocalFileSystem(), record_size=record_size,
                                                engine="pyarrow")
            for key in sorted(refs):
                mapper[key] = refs[key]
            mapper.flush()


def build_parquet(root: Path, cases: dict) -> None:
    pq = root / "parquet"
    pq.mkdir()
    for n, name in enumerate(FILES):
        stem = name.rsplit(".", 1)[0]
        writer = "kerchunk" if n % 2 == 0 else "fsspec"
        out = pq / f"{stem}.kerchunk.parq"
        write_parquet(cases[f"files/{stem}"], out, writer, record_size=3)
        cases[f"parquet/{stem}"] = {"parquet": str(out), "engine": ENGINES[writer]}
    # Attributes of non-finite values: fsspec writes them as bare NaN and Infinity tokens.
    refs = json.loads(json.dumps(cases["files/cal_noleap"]))
    attrs = json.loads(refs["refs"]["tas/.zattrs"])
    refs["refs"]["tas/.zattrs"] = json.dumps({**attrs, "valid_max": float("nan"), "valid_min": float("-inf")})
    write_parquet(refs, pq / "nonfinite.kerchunk.parq", "fsspec", record_size=3)
    cases["parquet/nonfinite"] = {"parquet": str(pq / "nonfinite.kerchunk.parq"), "engine": "pyarrow"}
    for writer in ("kerchunk", "fsspec"):
        out = pq / f"combined-{writer}.kerchunk.parq"
        write_parquet(cases["drs/combined"], out, writer, record_size=2)
        cases[f"parquet/combined-{writer}"] = {"parquet": str(out), "engine": ENGINES[writer]}
    corpus = CORPUS / CORPUS_FILE
    if corpus.exists():
        cmip = root / "cmip"
        cmip.mkdir()
        (cmip / corpus.name).symlink_to(corpus)
        refs = v1(kerchunk_refs(cmip / corpus.name))
        # URLs relative to the reference directory: the link stays inside the data tree
        relative = {k: ([corpus.name, *v[1:]] if isinstance(v, list) else v) for k, v in refs["refs"].items()}
        write_parquet(relative, cmip / "tos.kerchunk.parq", "kerchunk", record_size=100)
        cases["cmip/tos"] = refs


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


def malformed_parquet(root: Path) -> dict[str, str]:
    """Malformed parquet reference directories under `root/badpq`: name -> words the error must hold."""
    good = json.loads((root / "files" / "cal_noleap.kerchunk.json").read_text())["refs"]
    chunk = next(k for k, v in good.items() if isinstance(v, list) and len(v) == 3)
    url, _, _ = good[chunk]
    size = Path(url).stat().st_size
    bad = root / "badpq"
    bad.mkdir()
    write_parquet({**good, chunk: [url, size - 5, 100]}, bad / "beyond_the_end.kerchunk.parq", "fsspec", 3)
    write_parquet({**good, chunk: [str(root / "files" / "nowhere.nc"), 0, 10]},
                  bad / "missing_file.kerchunk.parq", "kerchunk", 3)
    write_parquet(good, bad / "garbage_record.kerchunk.parq", "kerchunk", 3)
    var = chunk.split("/")[0]
    (bad / "garbage_record.kerchunk.parq" / var / "refs.0.parq").write_bytes(b"not parquet at all")
    write_parquet(good, bad / "no_record_size.kerchunk.parq", "fsspec", 3)
    meta = bad / "no_record_size.kerchunk.parq" / ".zmetadata"
    meta.write_text(json.dumps({"metadata": json.loads(meta.read_text())["metadata"]}))
    return {
        "beyond_the_end": f'key "{chunk}"',
        "missing_file": f'key "{chunk}"',
        "garbage_record": f"{var}/refs.0.parq",
        "no_record_size": ".zmetadata: no positive record_size",
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
    refused_parquet = malformed_parquet(root)
    gw = start_gateway(root, BUCKET, tmp_path_factory.mktemp("import-catalog") / "catalog")
    catalog = json.loads((gw.exported() / "catalog.json").read_text())
    words = {**{f"bad/{k}": w for k, (_, w) in refused.items()}, **{f"badpq/{k}": w for k, w in refused_parquet.items()}}
    yield root, gw, catalog, cases, words
    gw.stop()


def reference(refs: dict) -> xr.Dataset:
    """fsspec's reading of references: a dict, or `{"parquet": DIR, "engine": ENGINE}` for a
    parquet reference directory, read with the engine that wrote it (fsspec's default reader,
    fastparquet, takes the null-typed columns pyarrow writes for NaN)."""
    fo = refs
    if "parquet" in refs:
        from fsspec.implementations.local import LocalFileSystem
        from fsspec.implementations.reference import LazyReferenceMapper

        fo = LazyReferenceMapper(refs["parquet"], fs=LocalFileSystem(), engine=refs["engine"])
    options = {"fo": fo, "remote_protocol": "file"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_dataset("reference://", engine="zarr",
                               backend_kwargs={"consolidated": False, "storage_options": options}).load()


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


def test_parquet_references_of_a_corpus_file_are_served_as_reference_reads_them(served):
    """The parquet case of the corpus file is among the cases above; this test says so, and
    compares the served data variable with xarray on the original file too."""
    root, gw, catalog, cases, _ = served
    if "cmip/tos" not in cases:
        corpus_missing(f"corpus file {CORPUS_FILE} not found")
    assert catalog["joins"]["cmip/tos"]["status"] == "ok", catalog["joins"]["cmip/tos"]
    got = open_served(gw, "cmip/tos")
    with xr.open_dataset(CORPUS / CORPUS_FILE) as original:
        np.testing.assert_array_equal(got.tos.values, original.tos.values)
        assert got.tos.dims == original.tos.dims


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


@pytest.mark.parametrize("dataset, file", [
    *[(f"bad/{n}", f"bad/{n}.kerchunk.json") for n in ["missing_file", "beyond_the_end", "not_json", "remote",
                                                       "outside", "expression", "zarray", "version"]],
    *[(f"badpq/{n}", f"badpq/{n}.kerchunk.parq") for n in ["beyond_the_end", "missing_file", "garbage_record",
                                                           "no_record_size"]],
])
def test_malformed_reference_files_are_refused_naming_the_file_and_key(served, dataset, file):
    """Kerchunk JSON (`bad/`) and parquet directories (`badpq/`)."""
    _, gw, catalog, _, refused = served
    entry = catalog["joins"].get(dataset)
    assert entry and entry["status"] == "failed", entry
    assert file in entry["error"], entry["error"]
    assert refused[dataset] in entry["error"], entry["error"]
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

"""Kerchunk references whose chunks live in an S3 server and on an HTTP server, through a real
gateway.

moto's S3 server (from the venv) holds fixture and corpus files in a bucket, and nginx serves
the same files over HTTP, both on 127.0.0.1. kerchunk 0.2.10 writes references for them by
reading them from those servers (s3:// and http:// URLs); the gateway imports the references
(`NAME.kerchunk.json`, with `[[remote]]` prefixes in its config) and serves them. The datasets
must equal fsspec's `reference://` over the same references and xarray on the original files;
a replaced object answers 503 and is never served with other bytes; a server that stops, or
answers 500, gives 503 with `Retry-After` until it is back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests
import xarray as xr

from gateway import CORPUS, REPO, Gateway, export_catalog, wait_for, zarrgate_bin
from servers import bytes_sent, free_port, start_file_server, start_moto

BUCKET = "remote"
ARCHIVE = "archive"
FIXTURES = REPO / "fixtures" / "data" / "good"
FILES = [FIXTURES / n for n in ("cal_noleap.nc", "classic.nc", "packed_be_int16.nc", "groups.nc", "nan_fill.nc")]
#: a NetCDF-4 and a NetCDF-3 file of the corpus (few chunks: every chunk is a request of a
#: debug build through s3fs)
CORPUS_FILES = [
    CORPUS / "mini-esgf-data/test_data/badc/cmip6/data/CMIP6/CMIP/NCAR/CESM2-FV2/historical/r1i1p1f1/Omon/tos/gn"
             "/v20191120/tos_Omon_CESM2-FV2_historical_r1i1p1f1_gn_200001.nc",
    CORPUS / "mini-esgf-data/test_data/pool/data/C3SCMIP5/BCC/bcc-csm1-1/rcp85/mon/ocean/Omon/r1i1p1/zos/v20120705"
             "/zos_Omon_bcc-csm1-1_rcp85_r1i1p1_200601.nc",
]
#: a NetCDF-4 file of 13.8 MB, written record by record (made by the test): indexing it by
#: ranged reads must not read it whole
BIG = "big_netcdf4.nc"
#: a file of many small chunks, for the block reads
SMALL = "small_chunks.nc"
S3_OPTIONS = {"key": "test", "secret": "test", "client_kwargs": {"region_name": "us-east-1"}}


def kerchunk_refs(url: str, storage_options: dict) -> dict:
    """kerchunk's references for the file at `url`, read from its server."""
    import fsspec
    from kerchunk.hdf import SingleHdf5ToZarr
    from kerchunk.netCDF3 import NetCDF3ToZarr

    with fsspec.open(url, "rb", **storage_options) as f:
        magic = f.read(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if magic.startswith(b"CDF"):
            refs = NetCDF3ToZarr(url, storage_options=storage_options, inline_threshold=64).translate()
        else:
            refs = SingleHdf5ToZarr(url, storage_options=storage_options, inline_threshold=64).translate()
    return refs if "version" in refs else {"version": 1, "refs": refs}


class Remote:
    """The servers, the data tree of reference files, and a gateway over it."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.files = tmp / "files"  # what nginx serves
        self.files.mkdir()
        self.fail_flag = tmp / "failing"
        self.http = start_file_server(self.files, tmp / "nginx", fail_flag=self.fail_flag)
        self.moto = start_moto()
        self.moto.create_bucket(ARCHIVE)
        self.s3_options = {**S3_OPTIONS, "endpoint_url": self.moto.endpoint}
        # zarr 3 reads through fsspec asynchronously, so the target filesystem must be too.
        self.options = {kind: {"remote_protocol": kind, "remote_options": {**options, "asynchronous": True}}
                        for kind, options in (("s3", self.s3_options), ("http", {}))}
        self.originals: dict[str, Path] = {}
        self.data = tmp / "data"
        self.data.mkdir()
        self.cases: dict[str, tuple[dict, dict]] = {}  # id -> (refs, storage options for reference://)
        for path in [*FILES, *[p for p in CORPUS_FILES if p.exists()]]:
            self.add(path)
        self.add_small_chunks()
        self.add_parquet()
        self.index_remote()

    def remote_tables(self) -> str:
        """The `[[remote]]` tables of the servers (for the gateway and for `zarrgate index`)."""
        return f"""
{self.moto.remote_table(ARCHIVE)}[[remote]]
prefix = "{self.http.endpoint}/"
"""

    def index_remote(self) -> None:
        """zarrgate's own references for the objects, made by ranged reads: every object under
        the S3 prefix, and every file over HTTP one by one; also a local copy's, to compare."""
        self.add_big()
        sources = self.tmp / "sources.toml"
        sources.write_text(self.remote_tables())
        index = [*zarrgate_bin(), "index", "--remote-config", str(sources)]
        run = subprocess.run([*index, f"s3://{ARCHIVE}/data/", "-o", str(self.data / "indexed-s3")],
                             capture_output=True, text=True, timeout=600)
        self.index_run = run
        (self.data / "indexed-http").mkdir()
        self.local_refs: dict[str, dict] = {}
        self.index_bytes: dict[str, int] = {}  # what nginx sent while an object was indexed
        for name in self.originals:
            out = self.data / "indexed-http" / f"{name}.kerchunk.json"
            before = len(self.http.requests())
            run = subprocess.run([*index, f"{self.http.endpoint}/{name}", "-o", str(out)],
                                 capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr
            self.index_bytes[name] = bytes_sent(self.http.requests()[before:])
            local = subprocess.run([*zarrgate_bin(), "index", str(self.files / name), "-o", "-"],
                                   capture_output=True, text=True, timeout=300)
            assert local.returncode == 0, local.stderr
            self.local_refs[name] = json.loads(local.stdout)
            for kind in ("s3", "http"):
                made = self.data / f"indexed-{kind}" / f"{name}.kerchunk.json"
                if made.exists():
                    self.cases[f"indexed-{kind}/{name}"] = (json.loads(made.read_text()), self.options[kind])

    def add_big(self) -> None:
        """A NetCDF-4 file of 64 zlib chunks of 256 KiB, written one record at a time (so
        that the chunk index grows between the chunks), on nginx and in S3."""
        import netCDF4

        path = self.files / BIG
        with netCDF4.Dataset(path, "w") as nc:
            nc.createDimension("time", None)
            nc.createDimension("lat", 256)
            nc.createDimension("lon", 256)
            t = nc.createVariable("time", "f8", ("time",))
            t.units, t.calendar = "days since 2000-01-01", "noleap"
            nc.createVariable("lat", "f4", ("lat",))[:] = np.linspace(-90, 90, 256)
            nc.createVariable("lon", "f4", ("lon",))[:] = np.linspace(0, 360, 256, endpoint=False)
            v = nc.createVariable("ta", "f4", ("time", "lat", "lon"), chunksizes=(1, 256, 256), zlib=True,
                                  complevel=1)
            rng = np.random.default_rng(0)
            for i in range(64):
                t[i] = i * 30.0
                v[i] = rng.random((256, 256), dtype="f4")
        self.originals[BIG] = path
        self.s3().upload_file(str(path), ARCHIVE, f"data/{BIG}")

    def add_small_chunks(self) -> None:
        """A file of 64 chunks of 4 KiB on nginx, its references in `data/blocks/` (read by
        one test only, so that nothing has read it before)."""
        import netCDF4

        path = self.files / SMALL
        with netCDF4.Dataset(path, "w") as nc:
            nc.createDimension("x", 64 * 512)
            v = nc.createVariable("v", "f8", ("x",), chunksizes=(512,), zlib=False)
            v[:] = np.arange(64 * 512, dtype="f8")
        (self.data / "blocks").mkdir()
        refs = kerchunk_refs(f"{self.http.endpoint}/{SMALL}", {})
        (self.data / "blocks" / "small.kerchunk.json").write_text(json.dumps(refs))
        self.small_refs = refs

    def add_parquet(self) -> None:
        """The S3 references of two files as Kerchunk parquet, as kerchunk writes them."""
        from kerchunk.df import refs_to_dataframe

        (self.data / "parquet").mkdir()
        for stem in ("cal_noleap", "groups"):
            refs, options = self.cases[f"s3/{stem}"]
            out = self.data / "parquet" / f"{stem}.kerchunk.parq"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                refs_to_dataframe(refs, str(out), record_size=2)
            self.cases[f"parquet/{stem}"] = (str(out), options)

    def s3(self):
        return self.moto.client()

    def add(self, path: Path) -> None:
        name = path.name
        self.originals[name] = path
        shutil.copy2(path, self.files / name)
        self.s3().upload_file(str(path), ARCHIVE, f"data/{name}")
        stem = name.rsplit(".", 1)[0]
        for kind, url, options in (
            ("s3", f"s3://{ARCHIVE}/data/{name}", self.s3_options),
            ("http", f"{self.http.endpoint}/{name}", {}),
        ):
            refs = kerchunk_refs(url, options)
            (self.data / kind).mkdir(exist_ok=True)
            (self.data / kind / f"{stem}.kerchunk.json").write_text(json.dumps(refs))
            self.cases[f"{kind}/{stem}"] = (refs, self.options[kind])

    def config(self, catalog: Path) -> Path:
        config = self.tmp / "gateway.toml"
        config.write_text(f"""
listen = "127.0.0.1:0"
auth_db = "{self.tmp / 'auth.db'}"
[ops]
dir = "{self.tmp / 'ops'}"
[[collections]]
bucket = "{BUCKET}"
data = "{self.data}"
catalog = "{catalog}"
{self.remote_tables()}
[remote_cache]
retries = 2
timeout_seconds = 3
revalidate_seconds = 0.2
""")
        return config

    def stop(self):
        self.http.stop()
        self.moto.stop()


def serve(config: Path, catalog: Path) -> Gateway:
    proc = subprocess.Popen([*zarrgate_bin(), "serve", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "warn"})
    line = proc.stdout.readline()
    assert line.startswith("listening on "), proc.stderr.read()
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    return Gateway(endpoint=line.split()[-1], bucket=BUCKET, proc=proc, catalog_dir=catalog, log=log)


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    r = Remote(tmp_path_factory.mktemp("remote"))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def gw(remote, tmp_path_factory):
    catalog = tmp_path_factory.mktemp("remote-catalog") / "catalog"
    g = serve(remote.config(catalog), catalog)
    yield g
    g.stop()


def reference(refs: dict | str, options: dict) -> xr.Dataset:
    """fsspec's reading of references: a dict, or the path of a parquet reference directory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_dataset("reference://", engine="zarr", backend_kwargs={
            "consolidated": False, "storage_options": {"fo": refs, **options}}).load()


def open_served(gw: Gateway, dataset: str, **kw) -> xr.Dataset:
    options = {"anon": True, "endpoint_url": gw.endpoint, "skip_instance_cache": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(f"s3://{gw.bucket}/{dataset}", storage_options=options, consolidated=True, **kw).load()


def catalog_entry(gw: Gateway, dataset: str) -> dict:
    return json.loads((export_catalog(gw.catalog_dir) / "catalog.json").read_text())["joins"].get(dataset, {})


def test_remote_datasets_are_served_as_reference_reads_them(remote, gw):
    assert len(remote.cases) >= 2 * len(FILES)
    for dataset, (refs, options) in remote.cases.items():
        entry = catalog_entry(gw, dataset)
        assert entry.get("status") == "ok", (dataset, entry)
        want = reference(refs, options)
        got = open_served(gw, dataset)
        xr.testing.assert_identical(got, want)


def test_values_equal_the_original_files(remote, gw):
    """The oracle: xarray on the original file. Stored values are compared undecoded, exactly
    (kerchunk writes packing attributes as JSON numbers, so decoded packed values are float64
    where the file's decode to float32: a property of the references, the same through
    `reference://`)."""
    raw = {"mask_and_scale": False, "decode_times": False}
    for dataset in remote.cases:
        name = next(n for n in remote.originals if dataset.split("/", 1)[1] in (n, n.rsplit(".", 1)[0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            original = xr.open_dataset(remote.originals[name], **raw).load()
        got = open_served(gw, dataset, **raw)
        assert set(got.variables) == set(original.variables), dataset
        for var in original.variables:
            np.testing.assert_array_equal(got[var].values, original[var].values, err_msg=f"{dataset}: {var}")


def test_s3_and_http_give_the_same_references_up_to_the_urls(remote, gw):
    """An object read from S3 and the same file read over HTTP are the same dataset."""
    for dataset in remote.cases:
        if dataset.startswith("s3/"):
            other = "http/" + dataset.split("/", 1)[1]
            xr.testing.assert_identical(open_served(gw, dataset), open_served(gw, other))


def chunk_key(remote: Remote, dataset: str) -> str:
    refs, _ = remote.cases[dataset]
    return next(k for k, v in sorted(refs["refs"].items()) if isinstance(v, list) and len(v) == 3)


def test_a_server_that_fails_gives_503_with_retry_after_and_the_gateway_recovers(remote, gw):
    dataset = "http/cal_noleap"
    key = chunk_key(remote, dataset)
    url = f"{gw.endpoint}/{BUCKET}/{dataset}/{key}"
    want = requests.get(url, timeout=30)
    assert want.status_code == 200
    # The server answers 500 for a while. (A range read moments ago is served from the cache
    # while its object was seen unchanged within `revalidate_seconds`; after that, it is
    # checked again.)
    remote.fail_flag.touch()
    time.sleep(0.5)
    try:
        r = requests.get(url, timeout=30)
        assert r.status_code == 503 and r.headers.get("Retry-After"), (r.status_code, r.text)
        assert "<Code>ServiceUnavailable</Code>" in r.text
    finally:
        remote.fail_flag.unlink()
    metrics = requests.get(f"{gw.endpoint}/metrics", timeout=30).text
    assert f'zarrgate_unavailable_sources_total{{bucket="{BUCKET}"}}' in metrics
    r = wait_for(lambda: (x := requests.get(url, timeout=30)).status_code == 200 and x, timeout=30)
    assert r.content == want.content
    # The server is stopped, then started again on the same port.
    port = int(remote.http.endpoint.rsplit(":", 1)[1])
    remote.http.stop()
    time.sleep(0.5)
    try:
        r = requests.get(url, timeout=30)
        assert r.status_code == 503 and r.headers.get("Retry-After"), (r.status_code, r.text)
    finally:
        remote.http = start_file_server(remote.files, remote.tmp / "nginx", port=port, fail_flag=remote.fail_flag)
    r = wait_for(lambda: (x := requests.get(url, timeout=30)).status_code == 200 and x, timeout=30)
    assert r.content == want.content


def test_refusals_are_reported_at_import_naming_the_file_and_key(remote, tmp_path):
    """Missing objects, ranges beyond an object's end, and URLs no [[remote]] prefix covers are
    refused when the tree is indexed; the dataset answers 503, never fill values."""
    refs, _ = remote.cases["s3/classic"]
    key = chunk_key(remote, "s3/classic")
    url, offset, length = refs["refs"][key]
    size = (remote.originals["classic.nc"]).stat().st_size
    bad = {
        "missing": ([f"s3://{ARCHIVE}/data/nowhere.nc", 0, 10], "does not exist"),
        "beyond": ([url, size - 4, 100], "beyond the end"),
        "uncovered": (["https://elsewhere.example.org/x.nc", 0, 10], "no [[remote]] prefix"),
    }
    data = tmp_path / "data"
    (data / "bad").mkdir(parents=True)
    for name, (value, _) in bad.items():
        (data / "bad" / f"{name}.kerchunk.json").write_text(json.dumps({**refs, "refs": {**refs["refs"], key: value}}))
    config = remote.config(tmp_path / "catalog").read_text().replace(str(remote.data), str(data))
    (tmp_path / "gw.toml").write_text(config.replace(str(remote.tmp / "auth.db"), str(tmp_path / "auth.db")))
    g = serve(tmp_path / "gw.toml", tmp_path / "catalog")
    try:
        for name, (_, words) in bad.items():
            entry = catalog_entry(g, f"bad/{name}")
            assert entry.get("status") != "ok", entry
            assert "bad/" + name + ".kerchunk.json" in entry["error"] and key in entry["error"], entry["error"]
            assert words in entry["error"], entry["error"]
            r = requests.get(f"{g.endpoint}/{BUCKET}/bad/{name}/{key}", timeout=30)
            assert r.status_code == 503, r.status_code
    finally:
        g.stop()


def test_a_replaced_object_answers_503_and_is_never_served_with_other_bytes(remote, tmp_path):
    """On a gateway of its own: the object is replaced in the bucket after the import."""
    name = "packed_be_int16.nc"
    original = remote.originals[name]
    remote.s3().upload_file(str(original), ARCHIVE, f"replaced/{name}")
    url = f"s3://{ARCHIVE}/replaced/{name}"
    refs = kerchunk_refs(url, remote.s3_options)
    data = tmp_path / "data"
    data.mkdir()
    (data / "p.kerchunk.json").write_text(json.dumps(refs))
    config = remote.config(tmp_path / "catalog").read_text().replace(str(remote.data), str(data))
    (tmp_path / "gw.toml").write_text(config.replace(str(remote.tmp / "auth.db"), str(tmp_path / "auth.db")))
    g = serve(tmp_path / "gw.toml", tmp_path / "catalog")
    try:
        key = next(k for k, v in sorted(refs["refs"].items()) if isinstance(v, list) and len(v) == 3)
        chunk = f"{g.endpoint}/{BUCKET}/p/{key}"
        before = requests.get(chunk, timeout=30)
        assert before.status_code == 200
        # Same size, other bytes: only the ETag tells.
        blob = bytearray(original.read_bytes())
        _, offset, length = refs["refs"][key]
        blob[offset:offset + length] = bytes(b ^ 0xFF for b in blob[offset:offset + length])
        remote.s3().put_object(Bucket=ARCHIVE, Key=f"replaced/{name}", Body=bytes(blob))
        time.sleep(0.5)  # past `revalidate_seconds`
        # Every later read is refused (the one cached range included, once revalidated), and
        # the re-index that the stale read starts refuses the import: the references were made
        # for the old bytes.
        for _ in range(3):
            r = requests.get(chunk, timeout=30)
            assert r.status_code == 503 and r.headers.get("Retry-After"), r.status_code
            assert r.content != before.content
        entry = wait_for(lambda: (e := catalog_entry(g, "p")).get("status") not in (None, "ok") and e, timeout=60)
        assert "changed after its references were imported" in entry["error"], entry["error"]
        assert requests.get(f"{g.endpoint}/{BUCKET}/p/.zmetadata", timeout=30).status_code == 503
        # References made again for the new object are imported (by `zarrgate index`, with the
        # gateway's config for the remote prefixes) and served with its bytes.
        (data / "p.kerchunk.json").write_text(json.dumps(kerchunk_refs(url, remote.s3_options)))
        run = subprocess.run([*zarrgate_bin(), "index", str(data), "--out", str(tmp_path / "catalog"),
                              "--remote-config", str(tmp_path / "gw.toml")], capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        r = wait_for(lambda: (x := requests.get(chunk, timeout=30)).status_code == 200 and x, timeout=60)
        assert r.content == bytes(blob[offset:offset + length])
    finally:
        g.stop()


def test_objects_are_indexed_by_ranged_reads_as_their_local_copies_are(remote, gw):
    """`zarrgate index s3://…/` and `zarrgate index http://…/FILE.nc`, NetCDF-3 and NetCDF-4
    alike: the same references as for the local copy, but for the URL (the tests above serve
    them too), and nothing downloaded whole: while each was indexed, nginx sent less than a
    quarter of the 13.8 MB NetCDF-4 file, and less than any file larger than one 1 MiB block
    (a smaller file is one block read: that is all of it)."""
    assert remote.index_run.returncode == 0, remote.index_run.stderr
    assert "(0 failed)" in remote.index_run.stderr, remote.index_run.stderr
    present = [p.name for p in CORPUS_FILES if p.exists()]
    assert set(remote.local_refs) == {p.name for p in FILES} | set(present) | {BIG}
    assert len(present) == len(CORPUS_FILES) or not os.environ.get("CI"), present
    for name, local in remote.local_refs.items():
        for kind, url in (("s3", f"s3://{ARCHIVE}/data/{name}"), ("http", f"{remote.http.endpoint}/{name}")):
            refs, _ = remote.cases[f"indexed-{kind}/{name}"]
            assert refs["templates"] == {"u": url}
            assert refs["refs"] == local["refs"], (kind, name)
            assert refs["zarrgate"]["variables"] == local["zarrgate"]["variables"]
            assert refs["zarrgate"]["format"] == local["zarrgate"]["format"]
            assert catalog_entry(gw, f"indexed-{kind}/{name}").get("status") == "ok"
    for name, sent in remote.index_bytes.items():
        size = (remote.files / name).stat().st_size
        if size > 1 << 20:
            assert sent < size, (name, sent, size)
    assert remote.index_bytes[BIG] < (remote.files / BIG).stat().st_size / 4


def test_indexed_objects_pass_the_fidelity_suite_through_the_gateway(remote, gw):
    """The references zarrgate made by ranged reads, served by the gateway, compared with
    xarray on the original file by the rules of test_fidelity.py (values, NaN and mask
    positions, dims, coords, attributes, dtypes, decoded time)."""
    from fidelity import GatewayView, compare

    indexed = [d for d in remote.cases if d.startswith("indexed-")]
    assert len(indexed) == 2 * len(remote.originals), sorted(indexed)
    for dataset in indexed:
        kind, name = dataset.split("/", 1)
        view = GatewayView(endpoint=gw.endpoint, bucket=gw.bucket, key=dataset,
                           meta_json=str(remote.data / kind / f"{name}.kerchunk.json"))
        result = compare(remote.originals[name], view)
        assert result.ok, result.summary()


def test_every_fixture_indexed_over_http_gives_its_local_references(remote):
    """All good fixtures (every format, type, filter and layout the generator makes, and the
    plain HDF5 files netCDF-C refuses or crashes on, read with h5netcdf's view), each indexed
    by `zarrgate index http://…`: the local copy's references and report, but for the URL."""
    (remote.files / "good").mkdir(exist_ok=True)
    sources = remote.tmp / "sources.toml"
    fixtures = sorted(p for p in FIXTURES.iterdir() if p.is_file())
    assert len(fixtures) >= 30
    for path in fixtures:
        shutil.copy2(path, remote.files / "good" / path.name)
        url = f"{remote.http.endpoint}/good/{path.name}"
        got = subprocess.run([*zarrgate_bin(), "index", url, "-o", "-", "--remote-config", str(sources)],
                             capture_output=True, text=True, timeout=300)
        local = subprocess.run([*zarrgate_bin(), "index", str(path), "-o", "-"], capture_output=True, text=True,
                               timeout=300)
        assert got.returncode == 0 and local.returncode == 0, (path.name, got.stderr, local.stderr)
        got, local = json.loads(got.stdout), json.loads(local.stdout)
        assert got["templates"] == {"u": url}
        assert got["refs"] == local["refs"], path.name
        for key in ("variables", "format", "view"):
            assert got["zarrgate"].get(key) == local["zarrgate"].get(key), (path.name, key)


def test_an_hdf5_object_with_a_user_block_is_indexed_as_its_local_copy(remote, tmp_path):
    """HDF5 addresses count from the superblock, which a user block (here 1 KiB) moves: the
    references of the object over HTTP equal the local copy's, and their ranges hold the
    dataset's bytes."""
    import h5py

    path = remote.files / "user_block.h5"
    values = np.arange(4096, dtype="<f4").reshape(64, 64)
    with h5py.File(path, "w", userblock_size=1024) as f:
        f.create_dataset("v", data=values, chunks=(16, 64))
    sources = remote.tmp / "sources.toml"
    url = f"{remote.http.endpoint}/user_block.h5"
    got = subprocess.run([*zarrgate_bin(), "index", url, "-o", "-", "--remote-config", str(sources)],
                         capture_output=True, text=True, timeout=300)
    local = subprocess.run([*zarrgate_bin(), "index", str(path), "-o", "-"], capture_output=True, text=True,
                           timeout=300)
    assert got.returncode == 0 and local.returncode == 0, (got.stderr, local.stderr)
    refs = json.loads(got.stdout)["refs"]
    assert refs == json.loads(local.stdout)["refs"]
    blob = path.read_bytes()
    chunks = {k: v for k, v in refs.items() if k.startswith("v/") and isinstance(v, list)}
    assert len(chunks) == 4
    for key, (_, offset, length) in chunks.items():
        row = int(key.split("/")[1].split(".")[0])
        assert blob[offset:offset + length] == values[16 * row:16 * row + 16].tobytes(), key


def test_malformed_or_unreachable_objects_fail_as_their_local_copies_do(remote):
    """Every malformed fixture (corrupt B-tree and superblock, truncated NetCDF-4 and NetCDF-3,
    not NetCDF, empty) indexed over HTTP fails with the local copy's error, naming the URL, and
    exit status 1; a server answering 500 gives an error naming the object, and the same
    command succeeds once it is back."""
    bad = REPO / "fixtures" / "data" / "bad"
    (remote.files / "bad").mkdir(exist_ok=True)
    sources = remote.tmp / "sources.toml"
    index = [*zarrgate_bin(), "index", "--remote-config", str(sources), "-o", "-"]
    for path in sorted(bad.iterdir()):
        shutil.copy2(path, remote.files / "bad" / path.name)
        url = f"{remote.http.endpoint}/bad/{path.name}"
        got = subprocess.run([*index, url], capture_output=True, text=True, timeout=300)
        local = subprocess.run([*index, str(path)], capture_output=True, text=True, timeout=300)
        assert got.returncode == local.returncode == 1, (path.name, got.stderr)
        assert got.stderr.replace(url, str(path)) == local.stderr, (got.stderr, local.stderr)
    url = f"{remote.http.endpoint}/cal_noleap.nc"
    remote.fail_flag.touch()
    try:
        failed = subprocess.run([*index, url], capture_output=True, text=True, timeout=300)
    finally:
        remote.fail_flag.unlink()
    assert failed.returncode == 1 and url in failed.stderr and not failed.stdout, failed.stderr
    again = subprocess.run([*index, url], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["refs"] == remote.cases["indexed-http/cal_noleap.nc"][0]["refs"]


def test_references_zarrgate_made_refuse_an_object_changed_since(remote, tmp_path):
    """`zarrgate index URL` records the object's fingerprint in its references: an object
    replaced between then and the tree's import is refused, never served through references
    made for other bytes (whatever the import sees of the new object)."""
    name = "classic.nc"
    key = f"changed/{name}"
    remote.s3().upload_file(str(remote.originals[name]), ARCHIVE, key)
    data = tmp_path / "data"
    data.mkdir()
    sources = remote.tmp / "sources.toml"
    made = subprocess.run([*zarrgate_bin(), "index", f"s3://{ARCHIVE}/{key}", "-o", str(data / f"{name}.kerchunk.json"),
                           "--remote-config", str(sources)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr

    def imported() -> dict:
        subprocess.run([*zarrgate_bin(), "index", str(data), "--out", str(tmp_path / "catalog"),
                        "--remote-config", str(sources)], capture_output=True, text=True, timeout=300)
        return json.loads((export_catalog(tmp_path / "catalog") / "catalog.json").read_text())["joins"][name]

    assert imported()["status"] == "ok"
    blob = bytearray(remote.originals[name].read_bytes())
    blob[-1] ^= 0xFF
    remote.s3().put_object(Bucket=ARCHIVE, Key=key, Body=bytes(blob))
    entry = imported()
    assert entry["status"] == "failed", entry
    assert "changed since these references were made" in entry["error"], entry["error"]


def test_neighbouring_small_chunks_come_in_one_request(remote, gw):
    """64 chunks of 4 KiB in one 256 KiB file: the gateway reads the aligned 1 MiB block that
    holds the first one, and serves the others from it (`block_bytes`), byte for byte."""
    gets = lambda: sum(1 for line in remote.http.requests() if f"GET /{SMALL} " in line)  # noqa: E731
    before = gets()
    original = (remote.files / SMALL).read_bytes()
    chunks = {k: v for k, v in remote.small_refs["refs"].items() if k.startswith("v/") and isinstance(v, list)}
    assert len(chunks) == 64
    for key, (_, offset, length) in sorted(chunks.items()):
        r = requests.get(f"{gw.endpoint}/{BUCKET}/blocks/small/{key}", timeout=30)
        assert r.status_code == 200 and r.content == original[offset:offset + length], key
    assert gets() - before == 1, remote.http.requests()[-20:]


def test_remote_datasets_are_in_the_stac_catalogue(remote, gw):
    """Imported references over S3 and over HTTP get discovery records like local data: their
    box, time range and variables are read from the remote coordinates at import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with xr.open_dataset(remote.originals["cal_noleap.nc"]) as o:
            first, last = o.time.values[0], o.time.values[-1]
            lat = (float(o.lat.min()), float(o.lat.max()))
    items = {}
    for kind in ("s3", "http"):
        r = requests.get(f"{gw.endpoint}/stac/collections/{BUCKET}/items/{kind}/cal_noleap", timeout=30)
        assert r.status_code == 200, r.text
        items[kind] = r.json()
    s3, http = items["s3"], items["http"]
    assert s3["bbox"] == http["bbox"] and s3["properties"] == http["properties"]
    assert (s3["bbox"][1], s3["bbox"][3]) == pytest.approx(lat)
    assert s3["properties"]["start_datetime"].startswith(first.strftime("%Y-%m-%d"))
    assert s3["properties"]["end_datetime"].startswith(last.strftime("%Y-%m-%d"))
    assert "tas" in s3["properties"]["cube:variables"]
    found = requests.get(f"{gw.endpoint}/stac/search", params={"collections": BUCKET, "ids": "s3/cal_noleap"},
                         timeout=30).json()
    assert [f["id"] for f in found["features"]] == ["s3/cal_noleap"]


def test_operations_read_remote_chunks(remote, gw, tmp_path):
    """An average computed by the gateway from chunks in the S3 server equals xarray's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = xr.open_dataset(remote.originals["cal_noleap.nc"]).load()
    r = requests.get(f"{gw.endpoint}/ops/v1/average",
                     params={"dataset": f"{BUCKET}/s3/cal_noleap", "var": "tas", "dims": "time"}, timeout=60)
    assert r.status_code == 200, r.text
    (tmp_path / "result.nc").write_bytes(r.content)
    got = xr.open_dataset(tmp_path / "result.nc").load()
    np.testing.assert_allclose(got["tas"].values, original["tas"].mean("time").values, rtol=1e-6)

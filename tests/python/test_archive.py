"""Archive scale: the catalog database, lazy loading under a bounded cache, live updates from
index runs, a killed index run, and the conversion of a catalog directory of the old layout.

Every answer is checked against bytes worked out without the gateway: the Kerchunk JSON that
``zarrgate export`` writes (offsets into the original file, inline metadata) and the file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway import REPO, export_catalog, get, start_gateway, wait_for, zarrgate_bin

FIXTURES = REPO / "fixtures" / "data" / "good"
KINDS = ["cal_noleap.nc", "classic.nc", "nan_fill.nc", "groups.nc"]
S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def index(data: Path, catalog: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*zarrgate_bin(), "index", str(data), "--out", str(catalog), "--jobs", "2", *extra],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def generation(catalog: Path) -> int:
    with sqlite3.connect(catalog / "catalog.db", timeout=30) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0


class Expected:
    """What the gateway must answer for a dataset's `.zmetadata` and one chunk, worked out
    from the exported Kerchunk JSON and the file itself."""

    def __init__(self, refs_json: Path, source: Path):
        refs = json.loads(refs_json.read_text())["refs"]
        self.zmetadata = refs[".zmetadata"].encode()
        self.chunk_key, (_, offset, length) = next((k, v) for k, v in sorted(refs.items()) if isinstance(v, list))
        with open(source, "rb") as f:
            f.seek(offset)
            self.chunk = f.read(length)


def expected_for(catalog: Path, data: Path, ids: list[str]) -> dict[str, Expected]:
    out = export_catalog(catalog, *ids)
    return {i: Expected(out / "refs" / f"{i}.json", data / i) for i in ids}


def metric(endpoint: str, name: str, bucket: str) -> float:
    text = get(f"{endpoint}/metrics")[1].decode()
    m = re.search(rf'^{name}{{bucket="{bucket}"}} (\S+)$', text, re.M)
    assert m, f"/metrics has no {name} for {bucket}"
    return float(m.group(1))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def listed_keys(endpoint: str, bucket: str, prefix: str = "", delimiter: str = "") -> tuple[list[str], list[str]]:
    keys, prefixes, token = [], [], None
    while True:
        q = f"list-type=2&prefix={urllib.request.quote(prefix)}&delimiter={delimiter}"
        if token:
            q += f"&continuation-token={urllib.request.quote(token)}"
        status, body = get(f"{endpoint}/{bucket}?{q}")
        assert status == 200, body[:300]
        root = ET.fromstring(body)
        keys += [c.findtext(f"{S3}Key") for c in root.iter(f"{S3}Contents")]
        prefixes += [c.findtext(f"{S3}Prefix") for c in root.iter(f"{S3}CommonPrefixes")]
        if root.findtext(f"{S3}IsTruncated") != "true":
            return keys, prefixes
        token = root.findtext(f"{S3}NextContinuationToken")


@pytest.fixture
def src(tmp_path) -> Path:
    """Copies of the fixtures to hard-link to. (A link changes the status-change time of its
    inode, which is part of a file's fingerprint: links to the fixtures themselves would make
    other gateways serving them see their files changed.)"""
    out = tmp_path / "src"
    out.mkdir()
    for name in KINDS:
        (out / name).write_bytes((FIXTURES / name).read_bytes())
    return out


def link_tree(src: Path, data: Path, count: int, kind_of) -> list[str]:
    """`count` hard links in directories of 100, each to the copy `kind_of(i)` names."""
    ids = []
    for i in range(count):
        rel = f"d{i // 100:03d}/f{i:05d}.nc"
        path = data / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(src / kind_of(i), path)
        ids.append(rel)
    return ids


def test_five_thousand_datasets_under_a_16_mib_cache_serve_the_right_bytes(tmp_path, src):
    data, catalog = tmp_path / "data", tmp_path / "catalog"
    ids = link_tree(src, data, 5000, lambda i: KINDS[i % len(KINDS)])
    index(data, catalog)
    expected = expected_for(catalog, data, ids[: len(KINDS)])
    gw = start_gateway(None, "many", catalog, extra_args=("--cache-memory", "16MiB"))
    try:
        base = f"{gw.endpoint}/many"
        ready_rss = rss_mb(gw.proc.pid)

        def check(i: int) -> str | None:
            want = expected[ids[i % len(KINDS)]]
            for key, body in ((".zmetadata", want.zmetadata), (want.chunk_key, want.chunk)):
                status, got = get(f"{base}/{ids[i]}/{key}")
                if status != 200 or got != body:
                    return f"{ids[i]}/{key}: {status}, {len(got)} bytes, not the {len(body)} expected"
            return None

        for sweep in range(2):
            with ThreadPoolExecutor(8) as pool:
                wrong = [w for w in pool.map(check, range(len(ids))) if w]
            assert not wrong, f"sweep {sweep}: {len(wrong)} wrong answers, e.g. {wrong[:3]}"
        loaded = metric(gw.endpoint, "zarrgate_datasets_loaded", "many")
        loaded_bytes = metric(gw.endpoint, "zarrgate_datasets_loaded_bytes", "many")
        loads = metric(gw.endpoint, "zarrgate_dataset_loads_total", "many")
        assert loaded < len(ids) and loaded_bytes <= 16 << 20, (loaded, loaded_bytes)
        assert loads > len(ids), f"evicted datasets are loaded again ({loads} loads of {len(ids)} datasets)"
        # Bounded: far below what 5,000 loaded datasets take, whatever the build.
        grown = rss_mb(gw.proc.pid) - ready_rss
        assert grown < 80, f"RSS grew by {grown:.0f} MB reading 5,000 datasets under a 16 MiB cache"
        # Listing pages through the catalog's index: every directory, every dataset.
        _, dirs = listed_keys(gw.endpoint, "many", delimiter="/")
        assert dirs == sorted({i.split("/")[0] + "/" for i in ids})
        _, files = listed_keys(gw.endpoint, "many", prefix="d007/", delimiter="/")
        assert files == [f"{i}/" for i in ids if i.startswith("d007/")]
    finally:
        gw.stop()


def test_a_killed_index_run_leaves_a_catalog_that_never_serves_wrong_bytes(tmp_path, src):
    data, catalog = tmp_path / "data", tmp_path / "catalog"
    ids = link_tree(src, data, 2000, lambda i: "classic.nc")
    index(data, catalog)
    gw = start_gateway(None, "killed", catalog)
    try:
        # Every file is replaced by another, then an index run is killed once it committed some rows.
        for rel in ids:
            tmp = data / f"{rel}.new"
            os.link(src / "nan_fill.nc", tmp)
            os.replace(tmp, data / rel)
        before = generation(catalog)
        run = subprocess.Popen([*zarrgate_bin(), "index", str(data), "--out", str(catalog), "--jobs", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: generation(catalog) > before or run.poll() is not None, timeout=300, step=0.05)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        with sqlite3.connect(catalog / "catalog.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            inode = (data / ids[0]).stat().st_ino
            new = db.execute("SELECT count(*) FROM datasets WHERE ino = ?", (inode,)).fetchone()[0]
        assert 0 < new < len(ids), f"the run was to be killed midway: {new} of {len(ids)} rows are new"

        new_bytes = expected_for(catalog, data, [ids[0]])[ids[0]] if new else None
        statuses = {}
        for rel in ids[::20]:
            status, body = get(f"{gw.endpoint}/killed/{rel}/.zmetadata")
            statuses[status] = statuses.get(status, 0) + 1
            # A row of the old file: the file changed under it, so 503; a new row: the new bytes.
            assert status in (200, 503), (rel, status)
            if status == 200:
                assert body == new_bytes.zmetadata, f"{rel}: bytes of the old file were served"
        assert set(statuses) == {200, 503}, statuses

        proc = index(data, catalog)
        assert f"{new} unchanged skipped" in proc.stderr, proc.stderr[-500:]
        want = expected_for(catalog, data, [ids[-1]])[ids[-1]]

        def all_new():
            return all(get(f"{gw.endpoint}/killed/{rel}/.zmetadata") == (200, want.zmetadata) for rel in ids[::20])

        wait_for(all_new, timeout=30)
    finally:
        gw.stop()


def test_a_running_gateway_follows_index_runs_within_seconds(tmp_path, src):
    data, catalog = tmp_path / "data", tmp_path / "catalog"
    data.mkdir()
    for name in ("a.nc", "b.nc", "e.nc"):
        os.link(src / "classic.nc", data / name)
    index(data, catalog)
    gw = start_gateway(None, "live", catalog)
    try:
        url = f"{gw.endpoint}/live"
        assert get(f"{url}/a.nc/.zmetadata")[0] == 200
        assert get(f"{url}/b.nc/.zmetadata")[0] == 200
        # Added: absent until indexed, then listed and served.
        os.link(src / "nan_fill.nc", data / "c.nc")
        assert get(f"{url}/c.nc/.zmetadata")[0] == 404
        # Changed: 503 until indexed (never the old references over the new bytes), then new.
        os.link(src / "groups.nc", data / "a.nc.new")
        os.replace(data / "a.nc.new", data / "a.nc")
        assert get(f"{url}/a.nc/.zmetadata")[0] == 503
        # Removed: one the gateway holds (503, removed) and one it never loaded (404).
        (data / "b.nc").unlink()
        (data / "e.nc").unlink()
        index(data, catalog, "--allow-removals")  # two of three: more than the guard lets go
        started = time.monotonic()
        wanted = expected_for(catalog, data, ["a.nc", "c.nc"])

        def caught_up():
            return (get(f"{url}/c.nc/.zmetadata") == (200, wanted["c.nc"].zmetadata)
                    and get(f"{url}/a.nc/.zmetadata") == (200, wanted["a.nc"].zmetadata))

        wait_for(caught_up, timeout=10, step=0.1)
        assert time.monotonic() - started < 5, "index runs show within seconds"
        assert get(f"{url}/a.nc/{wanted['a.nc'].chunk_key}") == (200, wanted["a.nc"].chunk)
        status, body = get(f"{url}/b.nc/.zmetadata")
        assert status == 503 and b"removed" in body, (status, body[:200])
        assert get(f"{url}/e.nc/.zmetadata")[0] == 404
        _, prefixes = listed_keys(gw.endpoint, "live", delimiter="/")
        assert prefixes == ["a.nc/", "c.nc/"]
    finally:
        gw.stop()


def test_a_catalog_directory_of_the_old_layout_is_converted_on_first_use(tmp_path, src):
    data, catalog = tmp_path / "data", tmp_path / "catalog"
    (data / "sub").mkdir(parents=True)
    for name in KINDS:
        os.link(src / name, data / "sub" / name)
    (data / "broken.nc").write_bytes(b"")
    proc = subprocess.run([*zarrgate_bin(), "index", str(data), "--out", str(catalog)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr  # broken.nc fails
    # The old layout: catalog.json, refs/, reports/ (what `zarrgate export` writes).
    old = export_catalog(catalog, out=tmp_path / "old")
    assert not (old / "catalog.db").exists() and (old / "refs" / "sub" / "classic.nc.json").is_file()
    fresh = start_gateway(None, "fresh", catalog)
    converted = start_gateway(None, "conv", old)
    try:
        assert (old / "catalog.db").is_file() and (old / "catalog.json.converted").is_file()
        assert not (old / "catalog.json").exists()
        assert "converted the catalog" in "".join(converted.log)
        keys, _ = listed_keys(converted.endpoint, "conv")
        assert keys == listed_keys(fresh.endpoint, "fresh")[0] and len(keys) > 40
        for key in keys:
            assert get(f"{converted.endpoint}/conv/{key}") == get(f"{fresh.endpoint}/fresh/{key}"), key
        status, body = get(f"{converted.endpoint}/conv/broken.nc/.zmetadata")
        assert status == 503 and b"could not be indexed" in body
    finally:
        fresh.stop()
        converted.stop()
    # The converted catalog is a catalog like any other: a re-run skips every file.
    again = subprocess.run([*zarrgate_bin(), "index", str(data), "--out", str(old)], capture_output=True, text=True)
    assert "5 unchanged skipped" in again.stderr, again.stderr


def test_export_writes_the_json_the_gateway_serves(tmp_path, src):
    data, catalog = tmp_path / "data", tmp_path / "catalog"
    data.mkdir()
    os.link(src / "nan_fill.nc", data / "x.nc")
    index(data, catalog)
    out = export_catalog(catalog, "x.nc")
    refs = json.loads((out / "refs" / "x.nc.json").read_text())
    gw = start_gateway(None, "exp", catalog)
    try:
        for key, value in refs["refs"].items():
            if isinstance(value, str):
                want = value.encode() if not value.startswith("base64:") else None
                if want is not None:
                    assert get(f"{gw.endpoint}/exp/x.nc/{key}") == (200, want), key
    finally:
        gw.stop()
    bad = subprocess.run([*zarrgate_bin(), "export", str(catalog), "nope.nc", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "no dataset \"nope.nc\"" in bad.stderr, bad.stderr


@pytest.mark.parametrize("bad", ["lots", "-1MiB"])
def test_a_cache_size_that_is_not_a_size_is_refused(tmp_path, bad):
    proc = subprocess.run([*zarrgate_bin(), "serve", "--bucket", "cfg", "--catalog", str(tmp_path),
                           f"--cache-memory={bad}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "cache_memory" in proc.stderr, proc.stderr

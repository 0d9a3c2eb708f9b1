#!/usr/bin/env python3
"""Archive scale: how indexing and serving cost grow with the number of files.

Builds a DRS-like tree of hard links to one CMIP6 file of the corpus (1,000 files per
directory, one directory per ensemble member), then measures in one run:

- `zarrgate index` of the tree: files/s, peak RSS of the indexer, catalog bytes per file;
- `zarrgate serve --catalog`: time until it listens, RSS at ready;
- cold `.zmetadata` GETs of 2,000 random datasets (each the first request of its dataset):
  p50/p99, and RSS after them;
- 1,000-key listings: the bucket root and a directory of member directories with a `/`
  delimiter, a directory of files with a delimiter, and the bucket without one;
- a re-index after one file changed;
- kerchunk's reference JSON for the same file, beside ours.

Usage: benches/archive_scale.py --bin target/release/zarrgate --files 200000 --files 1000000
Figures go to docs/benchmarks.md ("Archive scale").
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("ZARRGATE_CORPUS", REPO.parent / "shared" / "corpus"))
FILE = ("mini-esgf-data/test_data/badc/cmip6/data/CMIP6/CMIP/AWI/AWI-ESM-1-1-LR/1pctCO2/r1i1p1f1/Amon/tas/gn/"
        "v20200212/tas_Amon_AWI-ESM-1-1-LR_1pctCO2_r1i1p1f1_gn_185501.nc")
MODEL = "CMIP6/CMIP/AWI/AWI-ESM-1-1-LR/1pctCO2"
PER_DIR = 1000
# ext4 allows 65,000 links to one inode: each copy of the source takes this many.
LINKS_PER_COPY = 50_000


def member_dir(k: int) -> str:
    return f"{MODEL}/r{k + 1}i1p1f1/Amon/tas/gn/v20200212"


def file_name(k: int, j: int) -> str:
    return f"tas_Amon_AWI-ESM-1-1-LR_1pctCO2_r{k + 1}i1p1f1_gn_{1855 + j // 12:04d}{j % 12 + 1:02d}.nc"


def make_tree(source: Path, data: Path, n: int) -> list[str]:
    """Hard links, but the middle file is a copy of its own: it is the one that changes later
    (removing or adding a link changes the status-change time of every link to an inode)."""
    ids = []
    copies = []
    for c in range((n + LINKS_PER_COPY - 1) // LINKS_PER_COPY):
        copies.append(data.parent / f"source-{c}.nc")
        shutil.copyfile(source, copies[-1])
    for k in range((n + PER_DIR - 1) // PER_DIR):
        d = data / member_dir(k)
        d.mkdir(parents=True, exist_ok=True)
        for j in range(min(PER_DIR, n - k * PER_DIR)):
            name = file_name(k, j)
            if k * PER_DIR + j == n // 2:
                shutil.copyfile(source, d / name)
            else:
                os.link(copies[(k * PER_DIR + j) // LINKS_PER_COPY], d / name)
            ids.append(f"{member_dir(k)}/{name}")
    return ids


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_index(exe: str, data: Path, catalog: Path) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run([exe, "index", str(data), "--out", str(catalog), "--jobs", "2"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"zarrgate index failed: {proc.stderr[-3000:]}")
    return seconds, proc.stderr.strip().splitlines()[-1]


class Client:
    """One keep-alive connection, opened again when the server closed it while idle."""

    def __init__(self, endpoint: str):
        u = urllib.parse.urlparse(endpoint)
        self.host, self.port = u.hostname, u.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def get(self, path: str) -> tuple[int, bytes, float]:
        for attempt in range(2):
            started = time.perf_counter()
            try:
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                body = r.read()
                return r.status, body, time.perf_counter() - started
            except (http.client.RemoteDisconnected, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def listing(client: Client, prefix: str, delimiter: str | None, repeat: int = 5) -> dict:
    q = {"list-type": "2", "max-keys": "1000", "prefix": prefix}
    if delimiter:
        q["delimiter"] = delimiter
    path = "/arch?" + urllib.parse.urlencode(q)
    times, entries = [], 0
    for _ in range(repeat):
        status, body, secs = client.get(path)
        assert status == 200, body[:300]
        times.append(secs)
        entries = body.count(b"<Key>") + body.count(b"<Prefix>") - 1
    return {"first_ms": times[0] * 1e3, "median_ms": statistics.median(times) * 1e3, "entries": entries}


def stac_search(client: Client, ids: list[str], repeat: int = 200) -> dict:
    """STAC searches over the whole archive, each kind `repeat` times: p50 and p99."""
    rng = random.Random(11)
    kinds = {
        "facet_match": lambda: {"query": json.dumps({"source_id": {"eq": "AWI-ESM-1-1-LR"}})},
        "facet_none": lambda: {"query": json.dumps({"variable_id": {"eq": "pr"}})},
        "bbox_datetime": lambda: {"bbox": "-10,35,30,60", "datetime": "1855-01-01T00:00:00Z/1856-01-01T00:00:00Z"},
        "datetime_none": lambda: {"datetime": "3000-01-01T00:00:00Z/.."},
        "ids": lambda: {"ids": rng.choice(ids)},
        "page_after_token": lambda: {"limit": "10", "token": f"next:arch:{rng.randint(1, len(ids))}"},
    }
    out = {}
    for kind, params in kinds.items():
        times, returned = [], 0
        for _ in range(repeat):
            status, body, secs = client.get("/stac/search?" + urllib.parse.urlencode(params()))
            assert status == 200, body[:300]
            times.append(secs)
            returned = len(json.loads(body)["features"])
        out[kind] = {"p50_ms": percentile(times, 50) * 1e3, "p99_ms": percentile(times, 99) * 1e3, "returned": returned}
    return out


def kerchunk_bytes(path: Path) -> int | None:
    try:
        from kerchunk.hdf import SingleHdf5ToZarr
    except ImportError:
        return None
    refs = SingleHdf5ToZarr(str(path)).translate()
    return len(json.dumps(refs).encode())


def measure(exe: str, source: Path, work: Path, n: int, sample: int) -> dict:
    out: dict = {"files": n}
    data, catalog = work / "data", work / "catalog"
    started = time.perf_counter()
    ids = make_tree(source, data, n)
    out["tree_seconds"] = time.perf_counter() - started

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    seconds, summary = run_index(exe, data, catalog)
    out["index_seconds"] = seconds
    out["index_files_per_s"] = n / seconds
    out["index_summary"] = summary
    out["index_peak_rss_mb"] = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    out["catalog_bytes"] = tree_bytes(catalog)
    out["catalog_bytes_per_file"] = out["catalog_bytes"] / n

    args = [exe, "serve", "--bucket", "arch", "--catalog", str(catalog), "--listen", "127.0.0.1:0",
            "--auth-db", str(work / "auth.db"), "--ops-dir", str(work / "ops")]
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        out["ready_seconds"] = time.perf_counter() - started
        if not line.startswith("listening on "):
            raise SystemExit(f"zarrgate serve did not start: {line!r}")
        endpoint = line.split()[-1]
        time.sleep(0.5)
        out["rss_ready_mb"] = rss_mb(proc.pid)
        client = Client(endpoint)
        rng = random.Random(7)
        picked = rng.sample(ids, min(sample, len(ids)))
        cold = []
        for i in picked:
            status, body, secs = client.get(f"/arch/{urllib.parse.quote(i)}/.zmetadata")
            assert status == 200 and body.startswith(b'{"metadata"'), (i, status, body[:200])
            cold.append(secs)
        out["cold_zmetadata_p50_ms"] = percentile(cold, 50) * 1e3
        out["cold_zmetadata_p99_ms"] = percentile(cold, 99) * 1e3
        out["rss_after_opened_mb"] = rss_mb(proc.pid)
        metrics = client.get("/metrics")[1].decode()
        for name in ("zarrgate_datasets_loaded", "zarrgate_datasets_loaded_bytes"):
            line = next(x for x in metrics.splitlines() if x.startswith(name + "{"))
            out[name] = float(line.split()[-1])
        out["opened"] = len(picked)
        out["list_root_delimiter"] = listing(client, "", "/")
        out["list_members_delimiter"] = listing(client, f"{MODEL}/", "/")
        out["list_files_delimiter"] = listing(client, f"{member_dir(0)}/", "/")
        out["list_no_delimiter"] = listing(client, "", None)
        out["stac_search"] = stac_search(client, ids)
        out["rss_end_mb"] = rss_mb(proc.pid)

        # One file changed (written again in place), then the catalog brought up to date.
        changed = data / ids[len(ids) // 2]
        changed.write_bytes(source.read_bytes())
        seconds, summary = run_index(exe, data, catalog)
        out["reindex_one_change_seconds"] = seconds
        out["reindex_summary"] = summary
        path = f"/arch/{urllib.parse.quote(ids[len(ids) // 2])}/.zmetadata"
        deadline = time.monotonic() + 10
        while client.get(path)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        out["served_after_reindex"] = client.get(path)[0] == 200
    finally:
        proc.terminate()
        proc.wait()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "zarrgate"))
    ap.add_argument("--files", type=int, action="append", help="tree sizes (repeatable; default 200000)")
    ap.add_argument("--sample", type=int, default=2000, help="datasets opened cold")
    ap.add_argument("--work", type=Path, default=Path("/tmp/zarrgate-archive-scale"))
    ap.add_argument("--keep", action="store_true", help="keep the trees and catalogs")
    args = ap.parse_args()
    corpus_file = CORPUS / FILE
    if not corpus_file.is_file():
        raise SystemExit(f"missing corpus file {corpus_file}")
    results = {"file": FILE, "file_bytes": corpus_file.stat().st_size, "sizes": []}
    args.work.mkdir(parents=True, exist_ok=True)
    # Links go to a copy: linking changes the status-change time of the linked inode.
    source = args.work / "source.nc"
    shutil.copyfile(corpus_file, source)
    single = args.work / "single.json"
    subprocess.run([args.bin, "index", str(source), "-o", str(single)], check=True)
    results["zarrgate_json_bytes"] = single.stat().st_size
    results["kerchunk_json_bytes"] = kerchunk_bytes(source)
    for n in args.files or [200_000]:
        work = args.work / str(n)
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        print(f"== {n} files", file=sys.stderr)
        results["sizes"].append(measure(args.bin, source, work, n, args.sample))
        print(json.dumps(results["sizes"][-1], indent=1), file=sys.stderr)
        if not args.keep:
            shutil.rmtree(work)
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

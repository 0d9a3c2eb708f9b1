"""Indexing throughput and reference size: zarrgate against kerchunk, side by side.

Both index the same files: every corpus file that ``xr.open_dataset`` can read (the fidelity
oracle's set). kerchunk runs in-process (SingleHdf5ToZarr / NetCDF3ToZarr with
``inline_threshold=0``); zarrgate runs as one ``zarrgate index FILE -o OUT.json`` process per
file, so its times include process start-up. Throughput and sizes are compared on the files
both index; a tree index of all files is timed too.

    .venv/bin/python benches/compare_kerchunk.py [--repeat 3]

Prints a markdown table for docs/benchmarks.md and writes target/bench/kerchunk.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import sys, warnings, netCDF4, xarray as xr
warnings.simplefilter("ignore")
groups = [""]
def walk(g, prefix):
    for name, sub in g.groups.items():
        groups.append(prefix + name)
        walk(sub, prefix + name + "/")
with netCDF4.Dataset(sys.argv[1]) as ds:
    walk(ds, "")
for g in groups:
    xr.open_dataset(sys.argv[1], group=g or None).load()
"""


def readable(path: Path) -> bool:
    """The oracle can read it: every group opens and loads, in a child process (netCDF-C
    aborts on some files)."""
    try:
        r = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def corpus_files(corpus: Path) -> list[Path]:
    """Readable corpus files; the probe results are cached in target/bench/readable.json."""
    cache_path = REPO / "target" / "bench" / "readable.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    out = []
    for p in sorted(corpus.rglob("*")):
        if not p.is_file() or p.name == "MANIFEST.json":
            continue
        key = f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        if key not in cache:
            cache[key] = readable(p)
        if cache[key]:
            out.append(p)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_text(json.dumps(cache, indent=1))
    return out


def kerchunk_refs(path: Path) -> bytes:
    from kerchunk.hdf import SingleHdf5ToZarr
    from kerchunk.netCDF3 import NetCDF3ToZarr

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:3] == b"CDF":
        refs = NetCDF3ToZarr(str(path), inline_threshold=0).translate()
    else:
        refs = SingleHdf5ToZarr(str(path), inline_threshold=0).translate()
    return json.dumps(refs).encode()


class Timeout(BaseException):
    """Not an Exception: kerchunk catches those per dataset and carries on."""


def _alarm(signum, frame):
    raise Timeout()


def time_kerchunk(path: Path, limit: int) -> tuple[float, int | None]:
    """Seconds and JSON size (None if kerchunk failed or ran past `limit` seconds)."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    t0 = time.perf_counter()
    try:
        size = len(kerchunk_refs(path))
    except (Exception, Timeout):  # noqa: BLE001 - a failure is part of the measurement
        size = None
    finally:
        signal.alarm(0)
    return time.perf_counter() - t0, size


def time_zarrgate(exe: str, path: Path, out: Path) -> tuple[float, int | None]:
    t0 = time.perf_counter()
    r = subprocess.run([exe, "index", str(path), "-o", str(out)], capture_output=True, check=False)
    seconds = time.perf_counter() - t0
    return seconds, out.stat().st_size if r.returncode == 0 else None


def time_tree(exe: str, files: list[Path], jobs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        for i, p in enumerate(files):
            link = tree / f"{i:03d}" / p.name
            link.parent.mkdir(parents=True)
            link.symlink_to(p)
        t0 = time.perf_counter()
        subprocess.run([exe, "index", str(tree), "--out", str(Path(tmp) / "catalog"), "--jobs", str(jobs)],
                       check=False, capture_output=True)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--limit", type=int, default=120, help="seconds before kerchunk is given up on a file")
    ap.add_argument("--corpus", default=os.environ.get("ZARRGATE_CORPUS", str(REPO.parent / "shared" / "corpus")))
    ap.add_argument("--bin", default=os.environ.get("ZARRGATE_BIN", str(REPO / "target" / "release" / "zarrgate")))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    files = corpus_files(Path(args.corpus))
    total_bytes = sum(p.stat().st_size for p in files)

    per_file = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in files:
            kt = min(time_kerchunk(p, args.limit) for _ in range(args.repeat))
            zt = min(time_zarrgate(args.bin, p, Path(tmp) / "out.json") for _ in range(args.repeat))
            per_file.append({"file": str(p), "bytes": p.stat().st_size, "kerchunk": kt, "zarrgate": zt})
    both = [f for f in per_file if f["kerchunk"][1] is not None and f["zarrgate"][1] is not None]
    k_sec = sum(f["kerchunk"][0] for f in both)
    z_sec = sum(f["zarrgate"][0] for f in both)
    data = sum(f["bytes"] for f in both)
    kb = sum(f["kerchunk"][1] for f in both)
    zb = sum(f["zarrgate"][1] for f in both)
    tree = {jobs: min(time_tree(args.bin, files, jobs) for _ in range(args.repeat)) for jobs in (1, 2)}
    result = {
        "readable_files": len(files),
        "indexed": {
            "kerchunk": sum(f["kerchunk"][1] is not None for f in per_file),
            "zarrgate": sum(f["zarrgate"][1] is not None for f in per_file),
        },
        "common": {"files": len(both), "source_bytes": data, "kerchunk_seconds": k_sec,
                   "zarrgate_seconds": z_sec, "kerchunk_ref_bytes": kb, "zarrgate_ref_bytes": zb},
        "tree_seconds_all_files": tree,
        "per_file": per_file,
    }
    out = REPO / "target" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "kerchunk.json").write_text(json.dumps(result, indent=2))

    n = len(files)
    print(f"{n} corpus files readable by xr.open_dataset, {total_bytes / 1e6:.1f} MB; best of {args.repeat} runs per file")
    print(f"kerchunk indexed {result['indexed']['kerchunk']} of them, zarrgate {result['indexed']['zarrgate']}\n")
    print(f"On the {len(both)} files both indexed ({data / 1e6:.1f} MB):\n")
    print("| | kerchunk | zarrgate | zarrgate / kerchunk |")
    print("|---|---|---|---|")
    print(f"| indexing time (s), one file per call | {k_sec:.2f} | {z_sec:.2f} | {k_sec / z_sec:.1f}x the throughput |")
    print(f"| reference JSON (bytes) | {kb} | {zb} | {zb / kb:.3f}x the size |")
    print(f"\nzarrgate tree index of all {n} files (`zarrgate index DIR --out CAT`): "
          f"{tree[1]:.2f} s with --jobs 1, {tree[2]:.2f} s with --jobs 2")


if __name__ == "__main__":
    main()

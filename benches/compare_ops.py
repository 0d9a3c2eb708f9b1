"""Server-side averages against xarray on one large file: wall time, peak memory, cache hits.

Side by side, in one run, on the same machine and the same file:

- **Data.** One CMIP-like daily NetCDF-4 file, generated once and kept under target/bench/:
  `tas(time, lat, lon)` float32, 12 noleap years (4380 days) on a 1° grid (180 × 360),
  1.14 GB uncompressed, one time step per chunk (1, 180, 360) = 253 KiB, zlib level 1 with
  shuffle, as CMOR writes CMIP daily output.
- **Tasks.** (i) the time mean over the whole file (`dims=time`), (ii) the coslat-weighted
  global mean of each year (`dims=lat,lon&weights=coslat&freq=year`).
- **Peers.** The gateway (`GET /ops/v1/average?…&format=nc`, release build, a fresh ops
  directory per task so the first request computes, and `--sync-limit` raised so that it
  answers synchronously); xarray + numpy (`xr.open_dataset(path)`, `.load()`, then the same
  reduction); xarray + dask (`chunks={"time": 365}`, threaded scheduler). Each xarray peer
  runs in its own Python process; its peak RSS is that process's `VmHWM` (Python and
  xarray alone take about 100 MB of it, reported apart; not `ru_maxrss`, which Linux carries
  over from the parent across fork and exec). The gateway's is `VmHWM` of a gateway started
  for that task. The file is read once before timing so that every peer
  finds it in the page cache.
- **Cache.** The same request again: its wall time and the server's own time
  (`X-Zarrgate-Server-Ms` or `X-Zarrgate-Compute-Ms`, else `Server-Timing` durations).

Every peer's result is checked against xarray + numpy (rtol 1e-5: numpy sums float32 in
float32, the gateway in float64).

    .venv/bin/python benches/compare_ops.py [--bin target/release/zarrgate] [--repeat 1]
    .venv/bin/python benches/compare_ops.py --small      # a 2 MB file: checks the script

Prints a markdown table and writes target/bench/ops.json (ops-small.json with --small).
The dask peer needs the `dask` package; without it that column says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

from gateway import start_gateway  # noqa: E402

LARGE = {"years": 12, "ny": 180, "nx": 360}
SMALL = {"years": 2, "ny": 18, "nx": 36}
TASKS = {
    "time-mean": {"dims": "time"},
    "annual-coslat": {"dims": "lat,lon", "weights": "coslat", "freq": "year"},
}
PEERS = ("gateway", "numpy", "dask")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def make_data(path: Path, years: int, ny: int, nx: int) -> None:
    """Writes the file a year at a time (95 MB of values at 1°), unless it exists."""
    import cftime
    import netCDF4
    import numpy as np

    import ops_data

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    rng = np.random.default_rng(0)
    dlat, dlon = 180.0 / ny, 360.0 / nx
    lat = np.linspace(-90 + dlat / 2, 90 - dlat / 2, ny)
    lon = np.arange(nx) * dlon
    start = cftime.DatetimeNoLeap(2000, 1, 1)
    days = [start + timedelta(days=i) for i in range(365 * years)]
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
        ops_data.cf_globals(ds, "benchmark: daily near-surface air temperature")
        ds.createDimension("bnds", 2)
        ops_data.time_axis(ds, [d + timedelta(hours=12) for d in days], "noleap", [(d, d + timedelta(days=1)) for d in days])
        ops_data.regular_axis(ds, "lat", lat, ops_data.cell_bounds(lat, dlat))
        ops_data.regular_axis(ds, "lon", lon, ops_data.cell_bounds(lon, dlon))
        v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, complevel=1, shuffle=True, chunksizes=(1, ny, nx))
        v.setncatts({"standard_name": "air_temperature", "units": "K", "cell_methods": "time: mean"})
        climate = 250.0 + 45.0 * np.cos(np.deg2rad(lat))[:, None] + 3.0 * np.sin(np.deg2rad(lon))[None, :]
        for year in range(years):
            season = 10.0 * np.sin(2 * np.pi * np.arange(365) / 365)[:, None, None] * np.sign(lat)[None, :, None]
            values = climate[None] + season + rng.normal(0.0, 2.0, (365, ny, nx))
            v[year * 365 : (year + 1) * 365] = (np.round(values * 64) / 64).astype("f4")
    os.replace(tmp, path)


def warm_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# ---------------------------------------------------------------------------------------------
# xarray peers (each in a child process: `--peer numpy|dask --task … --file … --out …`)
# ---------------------------------------------------------------------------------------------


def reduce(da, task: str):
    import numpy as np

    if task == "time-mean":
        return da.mean("time")
    return da.weighted(np.cos(np.deg2rad(da["lat"]))).mean(("lat", "lon")).resample(time="YS").mean()


def peer_main(peer: str, task: str, path: Path, out: Path) -> None:
    import xarray as xr

    baseline = vm_hwm_mb(os.getpid())
    coder = xr.coders.CFDatetimeCoder(use_cftime=True)
    started = time.perf_counter()
    if peer == "dask":
        import dask

        dask.config.set(scheduler="threads")
        ds = xr.open_dataset(path, decode_times=coder, chunks={"time": 365})
        result = reduce(ds["tas"], task).compute()
    else:
        ds = xr.open_dataset(path, decode_times=coder)
        result = reduce(ds["tas"].load(), task)
    result.to_netcdf(out)
    seconds = time.perf_counter() - started
    peak = vm_hwm_mb(os.getpid())
    print(json.dumps({"seconds": seconds, "rss_mb": peak, "baseline_rss_mb": baseline}))


def run_peer(peer: str, task: str, path: Path, work: Path) -> dict:
    if peer == "dask":
        try:
            import dask  # noqa: F401
        except ImportError:
            return {"skipped": "dask is not installed"}
    out = work / f"{peer}-{task}.nc"
    cmd = [sys.executable, __file__, "--peer", peer, "--task", task, "--file", str(path), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{peer} {task} failed:\n{done.stderr[-4000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "result": str(out)}


# ---------------------------------------------------------------------------------------------
# The gateway
# ---------------------------------------------------------------------------------------------


def vm_hwm_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


def timed_get(url: str) -> tuple[float, "requests.Response"]:
    import requests

    started = time.perf_counter()
    resp = requests.get(url, timeout=3600)
    seconds = time.perf_counter() - started
    if resp.status_code != 200:
        raise SystemExit(f"{url}: {resp.status_code} {resp.text[:2000]}")
    return seconds, resp


def server_ms(resp) -> float | None:
    """The server's own time for an answer: `Server-Timing: total;dur=MS`."""
    durations = re.findall(r"dur=([\d.]+)", resp.headers.get("Server-Timing", ""))
    return sum(map(float, durations)) if durations else None


def run_gateway(task: str, path: Path, work: Path) -> dict:
    """A gateway with a fresh ops directory: the first request computes, the second hits."""
    from urllib.parse import urlencode

    gw = start_gateway(path.parent, "bench", work / "catalog", ops_dir=work / f"ops-{task}", sync_limit=1 << 40)
    try:
        query = urlencode({"dataset": f"bench/{path.name}", "var": "tas", **TASKS[task], "format": "nc"}, safe=",/")
        url = f"{gw.endpoint}/ops/v1/average?{query}"
        cold, first = timed_get(url)
        rss = vm_hwm_mb(gw.proc.pid)
        hit, second = timed_get(url)
        assert second.headers.get("X-Zarrgate-Cache") == "hit", second.headers
        out = work / f"gateway-{task}.nc"
        out.write_bytes(first.content)
        return {
            "seconds": cold,
            "rss_mb": rss,
            "server_ms": server_ms(first),
            "hit_seconds": hit,
            "hit_server_ms": server_ms(second),
            "result": str(out),
        }
    finally:
        gw.stop()


# ---------------------------------------------------------------------------------------------
# Checking and reporting
# ---------------------------------------------------------------------------------------------


def check_against_numpy(results: dict) -> None:
    import numpy as np
    import xarray as xr

    reference = results["numpy"].get("result")
    for peer, r in results.items():
        if peer == "numpy" or "result" not in r or not reference:
            continue
        with xr.open_dataset(r["result"]) as got, xr.open_dataset(reference) as want:
            np.testing.assert_allclose(got["tas"].values, want["tas"].values, rtol=1e-5, err_msg=peer)


def median_runs(runs: list[dict]) -> dict:
    out = dict(runs[-1])
    for key in ("seconds", "rss_mb", "server_ms", "hit_seconds", "hit_server_ms"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    return out


def fmt(value, unit: str = "", digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}{unit}"


def print_table(summary: dict) -> None:
    print(f"File: {summary['file']} ({summary['file_mb']:,.0f} MB on disk, {summary['values_mb']:,.0f} MB of float32 values)\n")
    print("| task | peer | wall time | peak RSS | RSS before reading | gateway speed-up | gateway RSS share |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for task, peers in summary["tasks"].items():
        g = peers.get("gateway", {})
        for peer, r in peers.items():
            if "skipped" in r:
                print(f"| {task} | {peer} | {r['skipped']} | | | | |")
                continue
            faster = f"{r['seconds'] / g['seconds']:.2f}×" if peer != "gateway" and g.get("seconds") else "–"
            share = f"{g['rss_mb'] / r['rss_mb']:.3f}" if peer != "gateway" and g.get("rss_mb") else "–"
            before = fmt(r.get("baseline_rss_mb"), " MB", 0)
            print(f"| {task} | {peer} | {fmt(r['seconds'], ' s')} | {fmt(r['rss_mb'], ' MB', 0)} | {before} | {faster} | {share} |")
    print("\n| cache hit | first request | server time | second request | server time |")
    print("|---|--:|--:|--:|--:|")
    for task, peers in summary["tasks"].items():
        g = peers.get("gateway")
        if g and "skipped" not in g:
            print(
                f"| {task} | {fmt(g['seconds'], ' s')} | {fmt(g.get('server_ms'), ' ms', 1)} | "
                f"{fmt(g['hit_seconds'] * 1000, ' ms', 1)} | {fmt(g.get('hit_server_ms'), ' ms', 1)} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "zarrgate"))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--small", action="store_true", help="a tiny file, to check the script")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of gateway,numpy,dask")
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer:
        return peer_main(args.peer, args.task, Path(args.file), Path(args.out))
    os.environ["ZARRGATE_SERVE_BIN"] = args.bin

    shape = SMALL if args.small else LARGE
    out_dir = REPO / "target" / "bench"
    name = f"tas_day_{shape['years'] * 365}x{shape['ny']}x{shape['nx']}.nc"
    path = out_dir / ("ops-data-small" if args.small else "ops-data") / name
    started = time.perf_counter()
    make_data(path, **shape)
    print(f"data ready in {time.perf_counter() - started:.1f} s: {path}", file=sys.stderr)
    warm_page_cache(path)

    peers = [p for p in args.peers.split(",") if p]
    summary = {
        "file": path.name,
        "file_mb": path.stat().st_size / 1e6,
        "values_mb": shape["years"] * 365 * shape["ny"] * shape["nx"] * 4 / 1e6,
        "chunks": [1, shape["ny"], shape["nx"]],
        "tasks": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for task in TASKS:
            results = {}
            for peer in peers:
                runs = []
                for i in range(args.repeat):
                    run_dir = work / f"{task}-{peer}-{i}"
                    run_dir.mkdir()
                    r = run_gateway(task, path, run_dir) if peer == "gateway" else run_peer(peer, task, path, run_dir)
                    runs.append(r)
                    if "skipped" in r:
                        break
                results[peer] = median_runs(runs)
                print(f"{task} {peer}: {results[peer]}", file=sys.stderr)
            check_against_numpy(results)
            summary["tasks"][task] = {p: {k: v for k, v in r.items() if k != "result"} for p, r in results.items()}
    (out_dir / ("ops-small.json" if args.small else "ops.json")).write_text(json.dumps(summary, indent=2))
    print_table(summary)


if __name__ == "__main__":
    main()

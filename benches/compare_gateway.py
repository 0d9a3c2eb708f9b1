"""Gateway throughput, latency and memory against nginx; xarray reads against `reference://`.

Side by side, in one run, on the same machine:

1. **Chunk GETs.** A generated NetCDF-4 file holds uncompressed chunks of 64 KiB and 4 MiB.
   wrk (64 connections, 2 threads; gateway and nginx alternately, medians of ``--rounds``, 5)
   asks the gateway for chunk keys
   (`/bench/chunks.nc/small/17.0`) and nginx for the same byte ranges of the same file
   (`Range: bytes=a-b`), each key chosen at random per request. Reported: requests/s and p99
   latency for 64 KiB, MB/s for 4 MiB, and the ratio gateway/nginx.
2. **xarray full read** of a corpus dataset: `xr.open_dataset("s3://…", engine="zarr").load()`
   through the gateway (s3fs as configured by default, and with `max_concurrency=1`), and
   `xr.open_dataset("http://…/bucket/ds", engine="zarr")`
   (fsspec HTTP), against the same read through `reference://` on local files.
3. **Gateway RSS**: peak resident memory (VmHWM) of the gateway process after all of it.

    .venv/bin/python benches/compare_gateway.py [--duration 10] [--bin target/release/zarrgate]

Needs `wrk` and `nginx` (Debian packages; `./make.sh bench` installs them). Prints a markdown
table for docs/benchmarks.md and writes target/bench/gateway.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

from gateway import export_catalog, sigv4_headers, start_gateway  # noqa: E402

CORPUS = Path(os.environ.get("ZARRGATE_CORPUS", REPO.parent / "shared" / "corpus"))
READ_DATASET = (
    "mini-esgf-data/test_data/badc/cmip6/data/CMIP6/CMIP/MPI-M/MPI-ESM1-2-LR/historical/r1i1p1f1/Omon/tauuo/gn/"
    "v20200909/tauuo_Omon_MPI-ESM1-2-LR_historical_r1i1p1f1_gn_185001.nc"
)
SMALL = 64 * 1024
LARGE = 4 * 1024 * 1024


def make_data(path: Path) -> None:
    """One file, two uncompressed float32 variables: 256 chunks of 64 KiB, 16 of 4 MiB."""
    import netCDF4
    import numpy as np

    if path.exists():
        return
    rng = np.random.default_rng(0)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("i", 256)
        ds.createDimension("j", SMALL // 4)
        ds.createDimension("k", 16)
        ds.createDimension("l", LARGE // 4)
        small = ds.createVariable("small", "f4", ("i", "j"), chunksizes=(1, SMALL // 4))
        small[:] = rng.random((256, SMALL // 4), dtype="f4")
        large = ds.createVariable("large", "f4", ("k", "l"), chunksizes=(1, LARGE // 4))
        large[:] = rng.random((16, LARGE // 4), dtype="f4")


def chunk_ranges(refs_path: Path, var: str) -> list[tuple[str, int, int]]:
    refs = json.loads(refs_path.read_text())["refs"]
    out = []
    for key, ref in refs.items():
        if key.startswith(f"{var}/") and isinstance(ref, list) and len(ref) == 3:
            out.append((key, ref[1], ref[2]))
    return sorted(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(root: Path, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        f"""worker_processes 2;
error_log {work}/error.log;
pid {work}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(work), "-g", "daemon off;"])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


# Each line: a path, then tab-separated "Name: value" headers.
LUA = """
local requests = {}
for line in io.lines("%s") do
  local path = nil
  local headers = { Host = "127.0.0.1" }
  for field in line:gmatch("[^\t]+") do
    if path == nil then path = field else
      local name, value = field:match("^([^:]+): (.*)$")
      headers[name] = value
    end
  end
  requests[#requests + 1] = wrk.format("GET", path, headers)
end
math.randomseed(7)
request = function() return requests[math.random(#requests)] end
"""


def run_wrk(url: str, lines: list[str], duration: int, work: Path, name: str) -> dict:
    listing = work / f"{name}.txt"
    listing.write_text("\n".join(lines) + "\n")
    script = work / f"{name}.lua"
    script.write_text(LUA % listing)
    out = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    mult = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[transfer.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{name}: {errors.group(1)} error responses:\n{out}")
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale, "mb_s": float(transfer.group(1)) * mult / 1e6}


def median_run(runs: list[dict]) -> dict:
    """The median of each measure over alternating runs (this shared machine varies by ±10%)."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def vm_hwm_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


def xarray_reads(endpoint: str, refs: Path, dataset: str, repeat: int) -> dict:
    """Median seconds of a full `open_dataset(...).load()`: through the gateway with s3fs, with
    fsspec's plain HTTP filesystem, and locally through `reference://`."""
    import xarray as xr

    warnings.simplefilter("ignore")

    # One client session per side, as in a notebook: the s3fs instance (and its botocore
    # client, which takes ~0.3 s to create) is reused; every side is warmed once first.
    def via_s3(**options):
        so = {"anon": True, "endpoint_url": endpoint, **options}
        with xr.open_dataset(f"s3://bench/{dataset}", engine="zarr", storage_options=so) as ds:
            ds.load()

    # s3fs (2025 on) sends a HEAD before every whole-object GET, to decide whether to fetch the
    # object in parallel ranges; `max_concurrency=1` turns that off (a Zarr chunk is far below
    # the 50 MiB block size where it would matter), leaving one GET per chunk.
    def via_s3_one_get():
        via_s3(max_concurrency=1)

    def via_http():
        with xr.open_dataset(f"{endpoint}/bench/{dataset}", engine="zarr") as ds:
            ds.load()

    def via_reference():
        kw = {"storage_options": {"fo": str(refs)}}
        with xr.open_dataset("reference://", engine="zarr", backend_kwargs=kw) as ds:
            ds.load()

    sides = {"gateway_s3": via_s3, "gateway_s3_one_get": via_s3_one_get, "gateway_http": via_http, "reference": via_reference}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for fn in sides.values():
        fn()
    for _ in range(repeat):
        for name, fn in sides.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=5, help="alternating wrk runs per side; medians are reported")
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "zarrgate"))
    args = ap.parse_args()
    os.environ["ZARRGATE_SERVE_BIN"] = args.bin

    out_dir = REPO / "target" / "bench"
    data = out_dir / "gateway-data"
    data.mkdir(parents=True, exist_ok=True)
    make_data(data / "chunks.nc")
    corpus_file = CORPUS / READ_DATASET

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        catalog = work / "catalog"
        gw = start_gateway(data, "bench", catalog)
        # The corpus file is read where it lies: a second gateway serves its directory.
        reader = start_gateway(corpus_file.parent, "bench", work / "corpus-catalog")
        nginx, nginx_url = start_nginx(data, work)
        try:
            results = {}
            refs = export_catalog(catalog, "chunks.nc") / "refs" / "chunks.nc.json"
            for var, size in (("small", SMALL), ("large", LARGE)):
                chunks = chunk_ranges(refs, var)
                assert chunks and all(length == size for _, _, length in chunks), f"{var}: chunks are not {size} bytes"
                gw_lines = [f"/bench/chunks.nc/{key}" for key, _, _ in chunks]
                ng_lines = [f"/chunks.nc\tRange: bytes={off}-{off + length - 1}" for _, off, length in chunks]
                # Warm both (page cache, connections), then measure side by side.
                run_wrk(gw.endpoint, gw_lines, 2, work, f"warm-gw-{var}")
                run_wrk(nginx_url, ng_lines, 2, work, f"warm-ng-{var}")
                runs = {"gateway": [], "nginx": []}
                for _ in range(args.rounds):
                    runs["gateway"].append(run_wrk(gw.endpoint, gw_lines, args.duration, work, f"gw-{var}"))
                    runs["nginx"].append(run_wrk(nginx_url, ng_lines, args.duration, work, f"ng-{var}"))
                results[var] = {side: median_run(r) for side, r in runs.items()}
                results[var]["runs"] = runs
            # Authentication and accounting: the same 64 KiB keys, anonymous and SigV4-signed.
            key, secret = gw.create_key("bench")
            time.sleep(0.6)
            chunks = chunk_ranges(refs, "small")  # signed for Host: 127.0.0.1, as wrk sends it
            anon_lines = [f"/bench/chunks.nc/{k}" for k, _, _ in chunks]
            signed_lines = [
                "\t".join([p, *(f"{n}: {v}" for n, v in sigv4_headers(p, "127.0.0.1", key, secret).items())]) for p in anon_lines
            ]
            run_wrk(gw.endpoint, signed_lines, 2, work, "warm-signed")
            runs = {"anonymous": [], "signed": []}
            for _ in range(args.rounds):
                runs["anonymous"].append(run_wrk(gw.endpoint, anon_lines, args.duration, work, "anon"))
                runs["signed"].append(run_wrk(gw.endpoint, signed_lines, args.duration, work, "signed"))
            results["auth"] = {side: median_run(r) for side, r in runs.items()}
            refs = export_catalog(work / "corpus-catalog", corpus_file.name) / "refs" / f"{corpus_file.name}.json"
            reads = xarray_reads(reader.endpoint, refs, corpus_file.name, args.repeat)
            rss = max(vm_hwm_mb(gw.proc.pid), vm_hwm_mb(reader.proc.pid))
        finally:
            gw.stop()
            reader.stop()
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(timeout=20)

    s, l = results["small"], results["large"]
    summary = {
        "chunks": results,
        "ratio_rps_64k": s["gateway"]["rps"] / s["nginx"]["rps"],
        "ratio_p99_64k": s["gateway"]["p99_ms"] / s["nginx"]["p99_ms"],
        "ratio_mb_s_4m": l["gateway"]["mb_s"] / l["nginx"]["mb_s"],
        "xarray_read_s": reads,
        "xarray_ratio_s3": reads["gateway_s3"] / reads["reference"],
        "xarray_ratio_s3_one_get": reads["gateway_s3_one_get"] / reads["reference"],
        "xarray_ratio_http": reads["gateway_http"] / reads["reference"],
        "gateway_peak_rss_mb": rss,
        "auth_overhead": 1 - results["auth"]["signed"]["rps"] / results["auth"]["anonymous"]["rps"],
    }
    (out_dir / "gateway.json").write_text(json.dumps(summary, indent=2))
    print("| measure | zarrgate | peer | ratio | target |")
    print("|---|--:|--:|--:|---|")
    print(
        f"| 64 KiB chunks, requests/s (nginx) | {s['gateway']['rps']:,.0f} | {s['nginx']['rps']:,.0f} | "
        f"{summary['ratio_rps_64k']:.2f}× | ≥ 0.8× |"
    )
    print(
        f"| 64 KiB chunks, p99 latency (nginx) | {s['gateway']['p99_ms']:.2f} ms | {s['nginx']['p99_ms']:.2f} ms | "
        f"{summary['ratio_p99_64k']:.2f}× | |"
    )
    print(
        f"| 4 MiB chunks, MB/s (nginx) | {l['gateway']['mb_s']:,.0f} | {l['nginx']['mb_s']:,.0f} | "
        f"{summary['ratio_mb_s_4m']:.2f}× | ≥ 0.8× |"
    )
    print(
        f"| xarray full read of tauuo (3.4 MB) with s3fs, s (`reference://`) | {reads['gateway_s3']:.3f} | "
        f"{reads['reference']:.3f} | {summary['xarray_ratio_s3']:.2f}× | ≤ 1.5× |"
    )
    print(
        f"| the same with s3fs `max_concurrency=1` (no HEAD per chunk), s (`reference://`) | "
        f"{reads['gateway_s3_one_get']:.3f} | {reads['reference']:.3f} | {summary['xarray_ratio_s3_one_get']:.2f}× | ≤ 1.5× |"
    )
    print(
        f"| the same read over plain HTTP (fsspec), s (`reference://`) | {reads['gateway_http']:.3f} | "
        f"{reads['reference']:.3f} | {summary['xarray_ratio_http']:.2f}× | ≤ 1.5× |"
    )
    print(f"| gateway peak RSS under this load | {rss:.0f} MB | | | < 200 MB |")
    a = results["auth"]
    print(
        f"| SigV4-signed 64 KiB GETs, requests/s (anonymous) | {a['signed']['rps']:,.0f} | {a['anonymous']['rps']:,.0f} | "
        f"{summary['auth_overhead'] * 100:.1f}% overhead | ≤ 10% |"
    )


if __name__ == "__main__":
    main()

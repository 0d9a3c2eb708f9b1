"""Remote sources: xarray reading a dataset whose chunks live in an S3 server, through the
gateway against s3fs + fsspec's `reference://` directly, side by side.

    .venv/bin/python benches/compare_remote.py --bin target/release/zarrgate [--rounds 5]

moto's S3 server (from the venv) holds one NetCDF-4 file: `compare_gateway.py`'s data, 256
chunks of 64 KiB and 16 of 4 MiB, uncompressed; nginx serves the same file over HTTP (a fast
origin, where the gateway's own cost shows). kerchunk 0.2.10 writes references over s3:// and
over http:// (reading the file by range); the gateway imports both (`[[remote]]` in its
config). Each round, in alternating order, xarray loads both variables, for each origin:
- **direct**: `xr.open_dataset("reference://", engine="zarr")` with s3fs as the target
  filesystem (what a user does without the gateway);
- **gateway, cold**: through a gateway whose range cache is off (`cache_bytes = 0`): every
  chunk is a ranged GET from the gateway to the S3 server;
- **plain HTTP client**: the same gateway read with fsspec's HTTP filesystem instead of s3fs
  (s3fs sends a HEAD before every GET and costs about 2 ms of client time per request);
- **local file**: the same file on the gateway's disk, read through the gateway: what the
  remote reads add to the gateway's own cost;
- **gateway, first read, 1 MiB blocks**: through a gateway with the default cache, started
  afresh before each load: chunks under 1 MiB are read as the aligned 1 MiB blocks that hold
  them (`block_bytes`), so neighbouring small chunks come in one request;
- **gateway, warm**: through a gateway with the default cache, after one load: chunks come
  from its memory once the object is known unchanged (`revalidate_seconds`).
Medians over the rounds; for the HTTP origin, the requests nginx logged per load too. Prints
a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benches"))
sys.path.insert(0, str(REPO / "tests" / "python"))

import compare_gateway as cg  # noqa: E402
import compare_replicas as cr  # noqa: E402
from servers import start_file_server, start_moto  # noqa: E402

ARCHIVE = "archive"
KEY = "data/chunks.nc"


def load(open_fn) -> float:
    import xarray as xr

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds: xr.Dataset = open_fn()
        ds.load()
    return time.perf_counter() - t0


def main() -> None:
    import xarray as xr

    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "zarrgate"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    data = REPO / "target" / "bench" / "gateway-data"
    data.mkdir(parents=True, exist_ok=True)
    cg.make_data(data / "chunks.nc")
    work = Path(tempfile.mkdtemp(prefix="zarrgate-remote-"))
    moto = start_moto()
    nginx = start_file_server(data, work / "nginx")
    procs = []
    try:
        moto.create_bucket(ARCHIVE)
        from kerchunk.hdf import SingleHdf5ToZarr

        moto.client().upload_file(str(data / "chunks.nc"), ARCHIVE, KEY)
        so = {"key": "test", "secret": "test", "endpoint_url": moto.endpoint,
              "client_kwargs": {"region_name": "us-east-1"}}
        refs = {"s3": SingleHdf5ToZarr(f"s3://{ARCHIVE}/{KEY}", storage_options=so, inline_threshold=0).translate(),
                "http": SingleHdf5ToZarr(f"{nginx.endpoint}/chunks.nc", inline_threshold=0).translate()}
        tree = work / "tree"
        tree.mkdir()
        for origin, r in refs.items():
            (tree / f"{origin}.kerchunk.json").write_text(json.dumps(r))
        # The same file on the gateway's disk: what remote reads add to the gateway's own cost.
        shutil.copy2(data / "chunks.nc", tree / "chunks.nc")
        endpoints, configs = {}, {}
        for name, cache in (("cold", 0), ("warm", 256 << 20), ("fresh", 256 << 20)):
            config = work / f"{name}.toml"
            config.write_text(f"""listen = "127.0.0.1:0"
max_connections_per_client = 4096
auth_db = "{work / 'auth.db'}"
[ops]
dir = "{work / 'ops'}"
[[collections]]
bucket = "bench"
data = "{tree}"
catalog = "{work / name}"
{moto.remote_table(ARCHIVE)}[[remote]]
prefix = "{nginx.endpoint}/"
[remote_cache]
cache_bytes = {cache}
""")
            configs[name] = config
            proc, endpoints[name] = cr.serve(binary, config)
            procs.append(proc)

        def restart_fresh():
            """The "fresh" gateway started again: an empty cache, the catalog kept."""
            old = procs.pop()
            old.terminate()
            old.wait()
            proc, endpoints["fresh"] = cr.serve(binary, configs["fresh"])
            procs.append(proc)

        def direct(origin):
            options = {**so, "asynchronous": True} if origin == "s3" else {"asynchronous": True}
            return lambda: xr.open_dataset("reference://", engine="zarr", backend_kwargs={
                "consolidated": False, "storage_options": {"fo": refs[origin], "remote_protocol": origin,
                                                           "remote_options": options}})

        def through(endpoint, origin):
            return lambda: xr.open_zarr(f"s3://bench/{origin}", consolidated=True, storage_options={
                "anon": True, "endpoint_url": endpoint if endpoint != "fresh" else endpoints["fresh"],
                "skip_instance_cache": True})

        def plain_http(endpoint, origin):
            # fsspec's HTTP filesystem on the gateway's URLs: no HEAD before each GET
            return lambda: xr.open_zarr(f"{endpoint}/bench/{origin}", consolidated=True)

        cases = {}
        for origin, label in (("s3", "S3 (moto)"), ("http", "HTTP (nginx)")):
            cases[f"{label}: direct, fsspec + reference://"] = direct(origin)
            cases[f"{label}: gateway, cache off"] = through(endpoints["cold"], origin)
            cases[f"{label}: gateway, first read, 1 MiB blocks"] = through("fresh", origin)
            cases[f"{label}: gateway, warm cache"] = through(endpoints["warm"], origin)
            cases[f"{label}: gateway, cache off, plain HTTP client"] = plain_http(endpoints["cold"], origin)
        cases["local file: gateway"] = through(endpoints["cold"], "chunks.nc")
        cases["local file: gateway, plain HTTP client"] = plain_http(endpoints["cold"], "chunks.nc")
        # Equal data first, and one load of each to warm the clients (and the warm gateway).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = direct("s3")().load()
            for name, fn in cases.items():
                xr.testing.assert_identical(fn().load(), want)
        times: dict[str, list[float]] = {n: [] for n in cases}
        requests: dict[str, list[int]] = {n: [] for n in cases}
        for r in range(args.rounds):
            order = list(cases.items()) if r % 2 == 0 else list(reversed(cases.items()))
            for name, fn in order:
                if "first read" in name:
                    restart_fresh()
                before = len(nginx.requests())
                times[name].append(load(fn))
                requests[name].append(len(nginx.requests()) - before)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        moto.stop()
        nginx.stop()
    size = (data / "chunks.nc").stat().st_size
    print(f"\n{size / 2**20:.1f} MiB, 272 chunks (256 × 64 KiB, 16 × 4 MiB), servers on 127.0.0.1, "
          f"median of {args.rounds} rounds\n")
    print("| origin: read | seconds | MiB/s | vs direct | requests to nginx |")
    print("|---|--:|--:|--:|--:|")
    for name, ts in times.items():
        origin = name.split(":")[0]
        direct = times.get(origin + ": direct, fsspec + reference://")
        m = statistics.median(ts)
        ratio = f"{m / statistics.median(direct):.2f}×" if direct else ""
        n = f"{statistics.median(requests[name]):.0f}" if origin.startswith("HTTP") else ""
        print(f"| {name} | {m:.2f} | {size / 2**20 / m:.0f} | {ratio} | {n} |")


if __name__ == "__main__":
    main()

"""Remote sources: xarray reading a dataset whose chunks live in an S3 server, through the
gateway against s3fs + fsspec's `reference://` directly, side by side.

    .venv/bin/python benches/compare_remote.py --bin target/release/zarrgate [--rounds 5]

moto's S3 server (from the venv) holds one NetCDF-4 file: `compare_gateway.py`'s data, 256
chunks of 64 KiB and 16 of 4 MiB, uncompressed. kerchunk 0.2.10 writes its references over
s3:// (reading the object by range); the gateway imports them (`[[remote]]` in its config).
Each round, in alternating order, xarray loads both variables:
- **direct**: `xr.open_dataset("reference://", engine="zarr")` with s3fs as the target
  filesystem (what a user does without the gateway);
- **gateway, cold**: through a gateway whose range cache is off (`cache_bytes = 0`): every
  chunk is a ranged GET from the gateway to the S3 server;
- **gateway, warm**: through a gateway with the default cache, after one load: chunks come
  from its memory once the object is known unchanged (`revalidate_seconds`).
Medians over the rounds; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
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
from servers import start_moto  # noqa: E402

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
    procs = []
    try:
        moto.create_bucket(ARCHIVE)
        import boto3
        from kerchunk.hdf import SingleHdf5ToZarr

        boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").upload_file(str(data / "chunks.nc"), ARCHIVE, KEY)
        so = {"key": "test", "secret": "test", "endpoint_url": moto.endpoint,
              "client_kwargs": {"region_name": "us-east-1"}}
        refs = SingleHdf5ToZarr(f"s3://{ARCHIVE}/{KEY}", storage_options=so, inline_threshold=0).translate()
        tree = work / "tree"
        tree.mkdir()
        (tree / "chunks.kerchunk.json").write_text(json.dumps(refs))
        endpoints = {}
        for name, cache in (("cold", 0), ("warm", 256 << 20)):
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
[[remote]]
prefix = "s3://{ARCHIVE}/"
options = {{ aws_endpoint = "{moto.endpoint}", aws_allow_http = "true", aws_region = "us-east-1", aws_access_key_id = "test", aws_secret_access_key = "test" }}
[remote_cache]
cache_bytes = {cache}
""")
            proc, endpoints[name] = cr.serve(binary, config)
            procs.append(proc)

        def direct():
            return xr.open_dataset("reference://", engine="zarr", backend_kwargs={
                "consolidated": False,
                "storage_options": {"fo": refs, "remote_protocol": "s3", "remote_options": {**so, "asynchronous": True}}})

        def through(endpoint):
            return lambda: xr.open_zarr("s3://bench/chunks", consolidated=True, storage_options={
                "anon": True, "endpoint_url": endpoint, "skip_instance_cache": True})

        cases = {"direct: s3fs + reference://": direct, "gateway, cache off": through(endpoints["cold"]),
                 "gateway, warm cache": through(endpoints["warm"])}
        # Equal data first, and one load of each to warm the clients (and the warm gateway).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = direct().load()
            for name, fn in cases.items():
                xr.testing.assert_identical(fn().load(), want)
        times: dict[str, list[float]] = {n: [] for n in cases}
        for r in range(args.rounds):
            order = list(cases.items()) if r % 2 == 0 else list(reversed(cases.items()))
            for name, fn in order:
                times[name].append(load(fn))
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        moto.stop()
    base = statistics.median(times["direct: s3fs + reference://"])
    size = (data / "chunks.nc").stat().st_size
    print(f"\n{size / 2**20:.1f} MiB, 272 chunks (256 × 64 KiB, 16 × 4 MiB), moto S3 on 127.0.0.1, "
          f"median of {args.rounds} rounds\n")
    print("| read | seconds | MiB/s | vs direct |")
    print("|---|--:|--:|--:|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.2f} | {size / 2**20 / m:.0f} | {m / base:.2f}× |")


if __name__ == "__main__":
    main()

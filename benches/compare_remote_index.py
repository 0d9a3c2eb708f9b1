"""Indexing a remote NetCDF-3 file by ranged reads, against downloading it and indexing the
local copy, and against kerchunk reading it by range: bytes transferred and time.

    .venv/bin/python benches/compare_remote_index.py --bin target/release/zarrgate [--rounds 5]

One NetCDF-3 file (64-bit offsets) of 4 float32 record variables on a 180 × 360 grid over 120
records, with a `time` record coordinate (about 124 MiB) is served by nginx and held by moto's
S3 server, both on 127.0.0.1. Each round, in alternating order:
- **zarrgate, ranged reads**: `zarrgate index URL -o refs.json` (the header, then the record
  coordinate's values gathered in requests of neighbouring ranges);
- **download, then zarrgate**: the whole object fetched (fsspec's HTTP client or boto3), then
  `zarrgate index FILE -o refs.json`;
- **kerchunk, ranged reads**: `NetCDF3ToZarr(URL).translate()` through fsspec (the peer).
Bytes are what nginx logged as sent for the run; medians over the rounds. Prints a Markdown
table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

from servers import bytes_sent, start_file_server, start_moto  # noqa: E402

ARCHIVE = "archive"


def make_data(path: Path) -> None:
    import netCDF4
    import numpy as np

    if path.exists():
        return
    with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET") as nc:
        nc.createDimension("time", None)
        nc.createDimension("lat", 180)
        nc.createDimension("lon", 360)
        t = nc.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        nc.createVariable("lat", "f8", ("lat",))[:] = np.linspace(-89.5, 89.5, 180)
        nc.createVariable("lon", "f8", ("lon",))[:] = np.linspace(0.5, 359.5, 360)
        rng = np.random.default_rng(0)
        for name in ("tas", "pr", "psl", "huss"):
            nc.createVariable(name, "f4", ("time", "lat", "lon"))
        for r in range(120):
            t[r] = 30.0 * r
            for name in ("tas", "pr", "psl", "huss"):
                nc.variables[name][r] = rng.random((180, 360), dtype="f4")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "zarrgate"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    data = REPO / "target" / "bench" / "remote-index"
    data.mkdir(parents=True, exist_ok=True)
    make_data(data / "records.nc")
    size = (data / "records.nc").stat().st_size
    work = Path(tempfile.mkdtemp(prefix="zarrgate-remote-index-"))
    nginx = start_file_server(data, work / "nginx")
    moto = start_moto()
    try:
        import boto3
        import fsspec

        moto.create_bucket(ARCHIVE)
        s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
        s3.upload_file(str(data / "records.nc"), ARCHIVE, "records.nc")
        sources = work / "sources.toml"
        sources.write_text(f"""
[[remote]]
prefix = "s3://{ARCHIVE}/"
options = {{ aws_endpoint = "{moto.endpoint}", aws_allow_http = "true", aws_region = "us-east-1", aws_access_key_id = "test", aws_secret_access_key = "test" }}
[[remote]]
prefix = "{nginx.endpoint}/"
""")
        http_url = f"{nginx.endpoint}/records.nc"
        local = work / "copy.nc"

        def zarrgate(target: str) -> None:
            extra = ["--remote-config", str(sources)] if "://" in target else []
            subprocess.run([binary, "index", target, "-o", str(work / "refs.json"), *extra], check=True,
                           capture_output=True)

        def download_http() -> None:
            fsspec.filesystem("http").get_file(http_url, str(local))
            zarrgate(str(local))

        def download_s3() -> None:
            s3.download_file(ARCHIVE, "records.nc", str(local))
            zarrgate(str(local))

        def kerchunk_http() -> None:
            from kerchunk.netCDF3 import NetCDF3ToZarr

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                NetCDF3ToZarr(http_url, inline_threshold=100).translate()

        cases = {
            "HTTP (nginx): zarrgate, ranged reads": lambda: zarrgate(http_url),
            "HTTP (nginx): download, then zarrgate": download_http,
            "HTTP (nginx): kerchunk, ranged reads": kerchunk_http,
            "S3 (moto): zarrgate, ranged reads": lambda: zarrgate(f"s3://{ARCHIVE}/records.nc"),
            "S3 (moto): download, then zarrgate": download_s3,
        }
        # What one small ranged GET costs each server (the ranged reads above make about 120).
        def one_get(fn) -> float:
            ts = []
            for _ in range(20):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return statistics.median(ts)

        import requests

        per_get = {
            "HTTP (nginx)": one_get(lambda: requests.get(http_url, headers={"Range": "bytes=1000000-1000007"})),
            "S3 (moto)": one_get(lambda: s3.get_object(Bucket=ARCHIVE, Key="records.nc", Range="bytes=1000000-1000007")),
        }
        times: dict[str, list[float]] = {n: [] for n in cases}
        transferred: dict[str, list[int]] = {n: [] for n in cases}
        for r in range(args.rounds):
            order = list(cases.items()) if r % 2 == 0 else list(reversed(cases.items()))
            for name, fn in order:
                local.unlink(missing_ok=True)
                before = len(nginx.requests())
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                transferred[name].append(bytes_sent(nginx.requests()[before:]))
    finally:
        nginx.stop()
        moto.stop()
    print(f"\n{size / 2**20:.1f} MiB NetCDF-3 (64-bit offsets), 4 record variables × 120 records, servers on "
          f"127.0.0.1, median of {args.rounds} rounds\n")
    print("| origin: how | seconds | bytes from the server |")
    print("|---|--:|--:|")
    for name, ts in times.items():
        n = f"{statistics.median(transferred[name]):,.0f}" if name.startswith("HTTP") else ""
        print(f"| {name} | {statistics.median(ts):.2f} | {n} |")
    print()
    for origin, t in per_get.items():
        print(f"- one 8-byte ranged GET from {origin}: {t * 1000:.1f} ms")


if __name__ == "__main__":
    main()

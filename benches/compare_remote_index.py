"""Indexing a remote file by ranged reads, against downloading it and indexing the local copy,
and against kerchunk reading it by range: bytes transferred and time.

    .venv/bin/python benches/compare_remote_index.py --bin target/release/zarrgate [--rounds 5]

Two files of 4 float32 variables on a 180 × 360 grid over 120 time steps, written one time
step at a time, are served by nginx and held by moto's S3 server, both on 127.0.0.1:
- NetCDF-3 (64-bit offsets, about 124 MiB): record variables and a `time` record coordinate;
- NetCDF-4 (about 92 MiB): one zlib chunk per variable and time step, so each variable's
  chunk index grows between the chunks, as in a CMIP file written step by step.
Each round, in alternating order:
- **zarrgate, ranged reads**: `zarrgate index URL -o refs.json` (NetCDF-3: the header, then
  the record coordinate's values gathered in requests of neighbouring ranges; NetCDF-4:
  netCDF-C and HDF5 reading through zarrgate's driver, in 1 MiB blocks);
- **download, then zarrgate**: the whole object fetched (fsspec's HTTP client or boto3), then
  `zarrgate index FILE -o refs.json`;
- **kerchunk, ranged reads**: `NetCDF3ToZarr(URL)` or `SingleHdf5ToZarr(URL)` through fsspec
  (the peer).
Bytes are what nginx logged as sent for the run; medians over the rounds. Prints Markdown
tables.
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


NAMES = ("tas", "pr", "psl", "huss")


def make_data(path: Path, netcdf4: bool) -> None:
    """The bench file: 4 variables × 120 time steps on a 180 × 360 grid, written step by step."""
    import netCDF4
    import numpy as np

    if path.exists():
        return
    fmt = "NETCDF4" if netcdf4 else "NETCDF3_64BIT_OFFSET"
    with netCDF4.Dataset(path, "w", format=fmt) as nc:
        nc.createDimension("time", None)
        nc.createDimension("lat", 180)
        nc.createDimension("lon", 360)
        t = nc.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        nc.createVariable("lat", "f8", ("lat",))[:] = np.linspace(-89.5, 89.5, 180)
        nc.createVariable("lon", "f8", ("lon",))[:] = np.linspace(0.5, 359.5, 360)
        rng = np.random.default_rng(0)
        for name in NAMES:
            if netcdf4:
                nc.createVariable(name, "f4", ("time", "lat", "lon"), chunksizes=(1, 180, 360), zlib=True,
                                  complevel=1)
            else:
                nc.createVariable(name, "f4", ("time", "lat", "lon"))
        for r in range(120):
            t[r] = 30.0 * r
            for name in NAMES:
                # 3 significant digits: zlib shrinks it a little, as real data
                nc.variables[name][r] = np.round(rng.random((180, 360), dtype="f4"), 3)


FILES = {"NetCDF-3": "records.nc", "NetCDF-4": "records4.nc"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "zarrgate"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    data = REPO / "target" / "bench" / "remote-index"
    data.mkdir(parents=True, exist_ok=True)
    for kind, name in FILES.items():
        make_data(data / name, netcdf4=kind == "NetCDF-4")
    work = Path(tempfile.mkdtemp(prefix="zarrgate-remote-index-"))
    nginx = start_file_server(data, work / "nginx")
    moto = start_moto()
    try:
        import fsspec
        import requests

        moto.create_bucket(ARCHIVE)
        s3 = moto.client()
        for name in FILES.values():
            s3.upload_file(str(data / name), ARCHIVE, name)
        sources = work / "sources.toml"
        sources.write_text(f"""
{moto.remote_table(ARCHIVE)}[[remote]]
prefix = "{nginx.endpoint}/"
""")
        local = work / "copy.nc"

        def zarrgate(target: str) -> None:
            extra = ["--remote-config", str(sources)] if "://" in target else []
            subprocess.run([binary, "index", target, "-o", str(work / "refs.json"), *extra], check=True,
                           capture_output=True)

        def cases_for(name: str) -> dict:
            http_url = f"{nginx.endpoint}/{name}"

            def download_http() -> None:
                fsspec.filesystem("http").get_file(http_url, str(local))
                zarrgate(str(local))

            def download_s3() -> None:
                s3.download_file(ARCHIVE, name, str(local))
                zarrgate(str(local))

            def kerchunk_http() -> None:
                from kerchunk.hdf import SingleHdf5ToZarr
                from kerchunk.netCDF3 import NetCDF3ToZarr

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if name == FILES["NetCDF-3"]:
                        NetCDF3ToZarr(http_url, inline_threshold=100).translate()
                    else:
                        SingleHdf5ToZarr(http_url, inline_threshold=100).translate()

            return {
                "HTTP (nginx): zarrgate, ranged reads": lambda: zarrgate(http_url),
                "HTTP (nginx): download, then zarrgate": download_http,
                "HTTP (nginx): kerchunk, ranged reads": kerchunk_http,
                "S3 (moto): zarrgate, ranged reads": lambda: zarrgate(f"s3://{ARCHIVE}/{name}"),
                "S3 (moto): download, then zarrgate": download_s3,
            }

        # What one small ranged GET costs each server.
        def one_get(fn) -> float:
            ts = []
            for _ in range(20):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return statistics.median(ts)

        name = FILES["NetCDF-3"]
        per_get = {
            "HTTP (nginx)": one_get(lambda: requests.get(f"{nginx.endpoint}/{name}",
                                                         headers={"Range": "bytes=1000000-1000007"})),
            "S3 (moto)": one_get(lambda: s3.get_object(Bucket=ARCHIVE, Key=name, Range="bytes=1000000-1000007")),
        }
        results = {}
        for kind, name in FILES.items():
            cases = cases_for(name)
            times: dict[str, list[float]] = {n: [] for n in cases}
            transferred: dict[str, list[int]] = {n: [] for n in cases}
            requests_made: dict[str, list[int]] = {n: [] for n in cases}
            for r in range(args.rounds):
                order = list(cases.items()) if r % 2 == 0 else list(reversed(cases.items()))
                for case, fn in order:
                    local.unlink(missing_ok=True)
                    before = len(nginx.requests())
                    t0 = time.perf_counter()
                    fn()
                    times[case].append(time.perf_counter() - t0)
                    made = nginx.requests()[before:]
                    transferred[case].append(bytes_sent(made))
                    requests_made[case].append(len(made))
            results[kind] = ((data / name).stat().st_size, times, transferred, requests_made)
    finally:
        nginx.stop()
        moto.stop()
    for kind, (size, times, transferred, requests_made) in results.items():
        print(f"\n{kind}: {size / 2**20:.1f} MiB, 4 variables × 120 time steps, servers on 127.0.0.1, "
              f"median of {args.rounds} rounds\n")
        print("| origin: how | seconds | bytes from the server | requests |")
        print("|---|--:|--:|--:|")
        for case, ts in times.items():
            http = case.startswith("HTTP")
            n = f"{statistics.median(transferred[case]):,.0f}" if http else ""
            k = f"{statistics.median(requests_made[case]):.0f}" if http else ""
            print(f"| {case} | {statistics.median(ts):.2f} | {n} | {k} |")
    print()
    for origin, t in per_get.items():
        print(f"- one 8-byte ranged GET from {origin}: {t * 1000:.1f} ms")


if __name__ == "__main__":
    main()

"""Quick-looks: a PNG of a 1440x720 float32 field rendered by the gateway (uncached and from
the result cache), side by side with xarray + matplotlib drawing the same field.

Usage: .venv/bin/python benches/compare_discovery.py --bin target/release/zarrgate

Server time is the gateway's own `Server-Timing: total;dur=` (parsing, cache lookup, reading,
rendering, encoding); the wall time of the request is reported beside it. Uncached requests
ask for distinct picture sizes, so each is a miss that reads and draws the whole field.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parents[1]


def make_field(path: Path) -> None:
    lat = np.linspace(-89.875, 89.875, 720)
    lon = np.linspace(0.125, 359.875, 1440)
    rng = np.random.default_rng(3)
    field = (288 - 40 * np.abs(np.sin(np.radians(lat)))[:, None] + rng.normal(0, 2, (720, 1440))).astype("float32")
    field[100:140, 300:420] = np.nan
    ds = xr.Dataset(
        {"tas": (("time", "lat", "lon"), field[None], {"units": "K", "long_name": "Near-Surface Air Temperature"})},
        coords={"time": ("time", [0.0], {"units": "days since 2000-01-01", "calendar": "standard"}),
                "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
                "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"})},
    )
    ds.to_netcdf(path, encoding={"tas": {"zlib": True, "chunksizes": (1, 360, 720)}})


def server_ms(resp: http.client.HTTPResponse) -> float:
    timing = resp.getheader("server-timing") or ""
    return float(timing.split("dur=")[1]) if "dur=" in timing else float("nan")


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "zarrgate"))
    ap.add_argument("--uncached", type=int, default=30)
    ap.add_argument("--cached", type=int, default=300)
    args = ap.parse_args()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        nc = tmp / "data" / "field.nc"
        make_field(nc)
        proc = subprocess.Popen([args.bin, "serve", "--bucket", "bench", "--data", str(tmp / "data"), "--catalog",
                                 str(tmp / "catalog"), "--listen", "127.0.0.1:0", "--ops-dir", str(tmp / "ops"),
                                 "--auth-db", str(tmp / "auth.db")], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            line = proc.stdout.readline()
            assert line.startswith("listening on "), line
            host, port = line.split()[-1].removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=120)

            def get(path: str) -> tuple[float, float, bytes, str]:
                started = time.perf_counter()
                conn.request("GET", path)
                r = conn.getresponse()
                body = r.read()
                assert r.status == 200, body[:300]
                return server_ms(r), (time.perf_counter() - started) * 1e3, body, r.getheader("x-zarrgate-cache")

            base = "/ops/v1/subset?dataset=bench/field.nc&var=tas&format=png"
            get(base + "&size=799x500")  # the dataset loaded and the file in the page cache
            miss, miss_wall = [], []
            for i in range(args.uncached):
                s, w, body, cache = get(f"{base}&size={800 + i}x500")
                assert cache == "miss" and body[:8] == b"\x89PNG\r\n\x1a\n"
                miss.append(s)
                miss_wall.append(w)
            hit, hit_wall = [], []
            for _ in range(args.cached):
                s, w, _, cache = get(f"{base}&size=800x500")
                assert cache == "hit"
                hit.append(s)
                hit_wall.append(w)
            out["gateway_uncached_server_ms"] = {"p50": percentile(miss, 50), "p99": percentile(miss, 99)}
            out["gateway_uncached_wall_ms"] = {"p50": percentile(miss_wall, 50), "p99": percentile(miss_wall, 99)}
            out["gateway_cached_server_ms"] = {"p50": percentile(hit, 50), "p99": percentile(hit, 99)}
            out["gateway_cached_wall_ms"] = {"p50": percentile(hit_wall, 50), "p99": percentile(hit_wall, 99)}
        finally:
            proc.terminate()
            proc.wait()

        # The peer: xarray reads the file, matplotlib draws the field with a colour bar.
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        peer = []
        for i in range(5):
            started = time.perf_counter()
            with xr.open_dataset(nc) as ds:
                fig = plt.figure(figsize=(8, 5), dpi=100)
                ds.tas.isel(time=0).plot(ax=fig.gca())
                fig.savefig(tmp / f"peer{i}.png")
                plt.close(fig)
            peer.append((time.perf_counter() - started) * 1e3)
        out["xarray_matplotlib_ms"] = {"median": statistics.median(peer), "min": min(peer)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())

"""A course notebook, as a script: open a dataset through the gateway, subset and average it on
the server through URLs that are computed once and then cached, plot, and check every number
against xarray on the same data.

Run it against the demo (`./make.sh demo`, which serves the bundled data as bucket `demo`):

    .venv/bin/python docs/examples/course.py            # writes course-annual-mean.png

`ZARRGATE_ENDPOINT` points it at another gateway. CI runs it (tests/python/test_examples.py).
"""

from __future__ import annotations

import io
import os
import sys
import urllib.request

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

GATEWAY = os.environ.get("ZARRGATE_ENDPOINT", "http://127.0.0.1:9000")
DATASET = "demo/cal_noleap.nc"


def fetch(url: str) -> tuple[bytes, str]:
    """The bytes at `url`, and whether the server had the result cached (`hit`) or computed it."""
    with urllib.request.urlopen(url, timeout=600) as r:
        return r.read(), r.headers.get("X-Zarrgate-Cache", "-")


# 1. Open the dataset as Zarr over S3: nothing is copied, chunks are read when needed.
so = {"anon": True, "endpoint_url": GATEWAY}
ds = xr.open_dataset(f"s3://{DATASET}", engine="zarr", storage_options=so)
print(ds)

# 2. A subset computed on the server: the first latitude row, first half of the year.
subset_url = (f"{GATEWAY}/ops/v1/subset?dataset={DATASET}&var=tas&isel=lat=0:1&time=1850-01/1850-06"
              "&format=nc&wait=600")
body, cache = fetch(subset_url)
south = xr.open_dataset(io.BytesIO(body), engine="h5netcdf")
print(f"subset: {dict(south.sizes)} (server cache: {cache})")

# 3. The area-weighted annual mean, computed on the server.
mean_url = (f"{GATEWAY}/ops/v1/average?dataset={DATASET}&var=tas&dims=lat,lon&weights=coslat"
            "&freq=year&format=nc&wait=600")
body, cache = fetch(mean_url)
annual = xr.open_dataset(io.BytesIO(body), engine="h5netcdf")
print(f"annual mean: {annual['tas'].values} (server cache: {cache})")

# 4. A plot of the monthly area-weighted mean, with the annual mean from the server on it.
weights = np.cos(np.deg2rad(ds["lat"]))
monthly = ds["tas"].weighted(weights).mean(("lat", "lon"))
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(range(1, monthly.sizes["time"] + 1), monthly.values, marker="o", label="monthly (xarray, via S3)")
ax.axhline(float(annual["tas"].values.ravel()[0]), color="k", ls="--", label="annual (server)")
ax.set_xlabel("month of 1850")
ax.set_ylabel(f"tas ({ds['tas'].attrs.get('units', '')})")
ax.legend()
out = os.environ.get("COURSE_PLOT", "course-annual-mean.png")
fig.savefig(out, dpi=80, bbox_inches="tight")
print(f"plot: {out}")

# 5. The numbers, checked against xarray on the data it read itself.
expected_south = ds["tas"].isel(lat=slice(0, 1), time=slice(0, 6))
np.testing.assert_array_equal(south["tas"].values, expected_south.values)
expected_annual = monthly.groupby("time.year").mean()
np.testing.assert_allclose(annual["tas"].values.ravel(), expected_annual.values, rtol=1e-6)
print("every number matches xarray")
sys.exit(0)

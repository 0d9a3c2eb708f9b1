"""Reference dates that pandas reads and cftime does not ("days since Jan 1, 2000"), through a
real gateway: xarray decodes the standard calendars with `pd.Timestamp`, so the served store
and a time selection must agree with `xr.open_dataset(original)`.
"""

from __future__ import annotations

import warnings

import netCDF4
import numpy as np
import pytest
import xarray as xr

from gateway import start_gateway
from ops_client import Client, ok_result

BUCKET = "timeunits"

# file name → (units, stored values, a time selection as the ops API and `.sel` take it)
FILES = {
    "daily.nc": ("days since Jan 1, 2000", np.arange(10.0), ("2000-01-03", "2000-01-05")),
    "six_hourly.nc": ("hours since 1/15/2000 06:00", np.arange(0.0, 60.0, 6.0), ("2000-01-16", "2000-01-16")),
}


def write(path, units: str, values: np.ndarray) -> None:
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.createDimension("time", len(values))
        nc.createDimension("lat", 3)
        time = nc.createVariable("time", "f8", ("time",))
        time.setncatts({"units": units, "calendar": "standard", "standard_name": "time", "axis": "T"})
        time[:] = values
        lat = nc.createVariable("lat", "f4", ("lat",))
        lat.setncatts({"units": "degrees_north", "standard_name": "latitude"})
        lat[:] = [-10.0, 0.0, 10.0]
        tas = nc.createVariable("tas", "f4", ("time", "lat"))
        tas.units = "K"
        tas[:] = 273.15 + np.arange(len(values) * 3, dtype="f4").reshape(len(values), 3)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("time-units-data")
    for name, (units, values, _) in FILES.items():
        write(root / name, units, values)
    tmp = tmp_path_factory.mktemp("time-units-gw")
    gw = start_gateway(root, BUCKET, tmp / "catalog")
    yield root, gw, Client(gw, tmp)
    gw.stop()


def open_served(gw, name: str) -> xr.Dataset:
    options = {"anon": True, "endpoint_url": gw.endpoint, "skip_instance_cache": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xr.SerializationWarning)
        return xr.open_zarr(f"s3://{gw.bucket}/{name}", storage_options=options, consolidated=True)


@pytest.mark.parametrize("name", sorted(FILES))
def test_served_times_decode_as_the_original(served, name):
    root, gw, _ = served
    with xr.open_dataset(root / name) as original:
        want = original.load()
    assert want.time.dtype.kind == "M", "xarray itself decodes these units with pandas"
    got = open_served(gw, name).load()
    np.testing.assert_array_equal(got.time.values, want.time.values)
    assert got.time.encoding["units"] == FILES[name][0]
    xr.testing.assert_identical(got.tas.reset_coords(drop=True), want.tas.reset_coords(drop=True))


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_time_selection_uses_the_same_instants(served, name):
    root, _, ops = served
    start, end = FILES[name][2]
    resp = ok_result(ops.on(root / name, "subset", {"var": "tas", "time": f"{start}/{end}"}))
    with xr.open_dataset(root / name) as original:
        want = original.tas.sel(time=slice(start, end)).load()
    with open_result(ops, name, resp.content) as got:
        assert want.sizes["time"] > 0
        np.testing.assert_array_equal(got.time.values, want.time.values)
        np.testing.assert_array_equal(got.tas.values, want.values)


def open_result(ops: Client, name: str, body: bytes) -> xr.Dataset:
    """A subset with xarray's default decoding (`Client.open` asks for cftime objects)."""
    path = ops.tmp / f"subset-{name}"
    path.write_bytes(body)
    return xr.open_dataset(path)

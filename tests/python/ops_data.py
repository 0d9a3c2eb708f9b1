"""Small NetCDF-4 datasets for the server-side operation tests (`test_ops.py`).

Written into a test's temporary directory at the start of the module, never committed. Every
file is deterministic (fixed seeds), under 2 MB, and chunked so that the selections of the
tests cross chunk boundaries and the last chunk along every dimension is partial.

| file | what it exercises |
|---|---|
| `tas_day_noleap_0360.nc` | daily `tas(time, lat, lon)` float32 zlib, noleap, 2000–2002, longitudes 0–350, NaNs |
| `tas_day_noleap_180.nc` | the same values on longitudes −180–170 |
| `ta_mon_360day_plev.nc` | monthly 360_day `ta(time, plev, lat, lon)` on uneven latitudes with `area: areacella`, packed int16 `ua` |
| `tos_mon_curvilinear.nc` | `tos(time, y, x)` on a 2-D `lat(y, x)`, `lon(y, x)` grid (standard calendar) |
| `pr_mon_noleap_ens.nc` | `pr(realization, time, lat, lon)` float64 with `missing_value`, June 2001 absent |
| `probe.nc` | a tiny `tas(time, lat, lon)` that the cache tests rewrite |
| `pr_mon_ens_nocoord.nc` | `pr(ensemble, time, lat, lon)` whose `ensemble` dimension has no coordinate variable, only auxiliary coordinates `realization(ensemble)` and `experiment_id(ensemble)` |
| `erai_nc3_nanfill.nc` | NetCDF-3 as ERA-Interim's are written: packed int16 with `_FillValue = NaN` (a fill the type cannot hold, which xarray drops), raw zeros and -32767s, a byte and a float32 variable without `_FillValue` |

NaNs in `tas`: a "land" box (lat 30–50, lon 60–100) in every step, 1 % scattered values, and
every value of 2001-03-01, so a spatial mean there has no valid value.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import cftime
import netCDF4
import numpy as np

R_EARTH = 6_371_000.0
TAS_CHUNKS = (100, 7, 10)  # 1095 days, 18 lat, 36 lon: every last chunk is partial


def generate(out: Path) -> dict[str, Path]:
    """Writes every dataset into `out` and returns their paths by short name."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "noleap0360": out / "tas_day_noleap_0360.nc",
        "noleap180": out / "tas_day_noleap_180.nc",
        "plev360": out / "ta_mon_360day_plev.nc",
        "curvilinear": out / "tos_mon_curvilinear.nc",
        "ensemble": out / "pr_mon_noleap_ens.nc",
        "probe": out / "probe.nc",
        "nc3nan": out / "erai_nc3_nanfill.nc",
        "ensnocoord": out / "pr_mon_ens_nocoord.nc",
        "h5types": out / "complex_half.h5",
    }
    tas = daily_tas()
    write_daily(paths["noleap0360"], tas, np.arange(0.0, 360.0, 10.0))
    # lon −180 + 10k is lon 180 + 10k of the 0–360 grid, i.e. index (k + 18) mod 36.
    write_daily(paths["noleap180"], np.roll(tas, -18, axis=2), np.arange(-180.0, 180.0, 10.0))
    write_plev(paths["plev360"])
    write_curvilinear(paths["curvilinear"])
    write_ensemble(paths["ensemble"])
    write_probe(paths["probe"], offset=0.0)
    write_nc3_nan_fill(paths["nc3nan"])
    write_ensemble_without_coordinate(paths["ensnocoord"])
    write_complex_and_half(paths["h5types"])
    return paths


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def regular_axis(ds: netCDF4.Dataset, name: str, values: np.ndarray, bounds: np.ndarray | None) -> None:
    """A latitude or longitude coordinate (CF attributes), with `NAME_bnds` when given."""
    latitude = name == "lat"
    ds.createDimension(name, len(values))
    v = ds.createVariable(name, "f8", (name,))
    v[:] = values
    v.setncatts(
        {
            "standard_name": "latitude" if latitude else "longitude",
            "long_name": "latitude" if latitude else "longitude",
            "units": "degrees_north" if latitude else "degrees_east",
            "axis": "Y" if latitude else "X",
        }
    )
    if bounds is not None:
        v.bounds = f"{name}_bnds"
        b = ds.createVariable(f"{name}_bnds", "f8", (name, "bnds"))
        b[:] = bounds


def cell_bounds(values: np.ndarray, step: float) -> np.ndarray:
    return np.stack([values - step / 2, values + step / 2], axis=1)


def time_axis(ds: netCDF4.Dataset, dates: list, calendar: str, bounds: list | None) -> None:
    """An unlimited time coordinate in days since 2000-01-01, with `time_bnds` when given."""
    units = "days since 2000-01-01 00:00:00"
    ds.createDimension("time", None)
    t = ds.createVariable("time", "f8", ("time",), chunksizes=(min(len(dates), 512),))
    t.setncatts({"standard_name": "time", "long_name": "time", "axis": "T", "units": units, "calendar": calendar})
    t[:] = cftime.date2num(dates, units, calendar)
    if bounds is not None:
        t.bounds = "time_bnds"
        b = ds.createVariable("time_bnds", "f8", ("time", "bnds"), chunksizes=(min(len(dates), 512), 2))
        b[:] = np.array([cftime.date2num(pair, units, calendar) for pair in bounds])


def field(shape: tuple[int, ...], rng: np.random.Generator, base: float, spread: float) -> np.ndarray:
    """Smooth values plus noise, quantized to 1/64 so that zlib has something to do."""
    smooth = np.zeros(shape)
    for axis, n in enumerate(shape):
        grid = np.linspace(0, 2 * np.pi, n).reshape([-1 if a == axis else 1 for a in range(len(shape))])
        smooth = smooth + np.sin(grid * (axis + 1))
    values = base + spread * smooth + rng.normal(0, spread / 4, shape)
    return (np.round(values * 64) / 64).astype("f4")


def cf_globals(ds: netCDF4.Dataset, title: str) -> None:
    ds.setncatts({"Conventions": "CF-1.8", "title": title, "source": "zarrgate tests/python/ops_data.py"})


# ---------------------------------------------------------------------------------------------
# (a) and (b): daily noleap tas on both longitude frames
# ---------------------------------------------------------------------------------------------


def daily_dates() -> tuple[list, list]:
    days = [cftime.DatetimeNoLeap(2000, 1, 1) + timedelta(days=i) for i in range(3 * 365)]
    mid = [d + timedelta(hours=12) for d in days]
    return mid, [(d, d + timedelta(days=1)) for d in days]


def daily_tas() -> np.ndarray:
    """(1095, 18, 36) float32 on the 0–360 grid, NaN where the module docstring says."""
    rng = np.random.default_rng(1)
    lat = np.arange(-85.0, 90.0, 10.0)
    lon = np.arange(0.0, 360.0, 10.0)
    # Warm tropics, cold poles: a coslat-weighted mean is far from the plain one.
    gradient = 40.0 * np.cos(np.deg2rad(lat))[None, :, None] - 20.0
    tas = (field((1095, 18, 36), rng, 270.0, 8.0) + np.round(gradient * 64) / 64).astype("f4")
    land = (lat[:, None] >= 30) & (lat[:, None] <= 50) & (lon[None, :] >= 60) & (lon[None, :] <= 100)
    tas[:, land] = np.nan
    tas[rng.random(tas.shape) < 0.01] = np.nan
    tas[365 + 31 + 28] = np.nan  # 2001-03-01
    return tas


def write_daily(path: Path, tas: np.ndarray, lon: np.ndarray) -> None:
    mid, bounds = daily_dates()
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        cf_globals(ds, "daily near-surface air temperature, noleap")
        ds.createDimension("bnds", 2)
        time_axis(ds, mid, "noleap", bounds)
        lat = np.arange(-85.0, 90.0, 10.0)
        regular_axis(ds, "lat", lat, cell_bounds(lat, 10.0))
        regular_axis(ds, "lon", lon, cell_bounds(lon, 10.0))
        v = ds.createVariable(
            "tas", "f4", ("time", "lat", "lon"), zlib=True, complevel=4, shuffle=True,
            chunksizes=TAS_CHUNKS, fill_value=np.float32(1e20),
        )  # fmt: skip
        v.setncatts(
            {
                "standard_name": "air_temperature",
                "long_name": "Near-Surface Air Temperature",
                "units": "K",
                "cell_methods": "time: mean",
                "missing_value": np.float32(1e20),
            }
        )
        v[:] = np.ma.masked_invalid(tas)


# ---------------------------------------------------------------------------------------------
# (c) monthly 360_day with pressure levels, cell areas and a packed variable
# ---------------------------------------------------------------------------------------------

PLEV = np.array([100000.0, 85000.0, 70000.0, 50000.0, 25000.0, 10000.0])
# Unevenly spaced, as on a Gaussian grid: cell areas are not proportional to cos(lat), so
# area weights and coslat weights give different means.
GAUSSIAN_LAT = np.array([-80.0, -65, -50, -38, -27, -17, -8, 0, 8, 17, 27, 38, 50, 65, 80])


def monthly_dates(calendar: str, years: range, skip: set[tuple[int, int]] = frozenset()) -> tuple[list, list]:
    cls = cftime.datetime
    starts = [(y, m) for y in years for m in range(1, 13) if (y, m) not in skip]
    mid = [cls(y, m, 15, calendar=calendar) for y, m in starts]
    nxt = [(y + (m == 12), m % 12 + 1) for y, m in starts]
    bounds = [(cls(y, m, 1, calendar=calendar), cls(ny, nm, 1, calendar=calendar)) for (y, m), (ny, nm) in zip(starts, nxt)]
    return mid, bounds


def cell_area(lat_bounds: np.ndarray, nlon: int, dlon: float) -> np.ndarray:
    sines = np.sin(np.deg2rad(lat_bounds))
    band = R_EARTH**2 * np.deg2rad(dlon) * (sines[:, 1] - sines[:, 0])
    return np.repeat(band[:, None], nlon, axis=1)


def write_plev(path: Path) -> None:
    rng = np.random.default_rng(3)
    mid, bounds = monthly_dates("360_day", range(2000, 2004))
    lat, lon = GAUSSIAN_LAT, np.arange(0.0, 360.0, 12.0)
    shape = (len(mid), len(PLEV), len(lat), len(lon))
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        cf_globals(ds, "monthly air temperature on pressure levels, 360_day")
        ds.createDimension("bnds", 2)
        time_axis(ds, mid, "360_day", bounds)
        ds.createDimension("plev", len(PLEV))
        p = ds.createVariable("plev", "f8", ("plev",))
        p.setncatts({"standard_name": "air_pressure", "units": "Pa", "positive": "down", "axis": "Z"})
        p[:] = PLEV
        lat_bounds = np.stack([np.r_[-90.0, (lat[1:] + lat[:-1]) / 2], np.r_[(lat[1:] + lat[:-1]) / 2, 90.0]], axis=1)
        regular_axis(ds, "lat", lat, lat_bounds)
        regular_axis(ds, "lon", lon, cell_bounds(lon, 12.0))
        area = ds.createVariable("areacella", "f8", ("lat", "lon"))
        area.setncatts({"standard_name": "cell_area", "units": "m2"})
        area[:] = cell_area(lat_bounds, len(lon), 12.0)

        ta = field(shape, rng, 235.0, 10.0) + np.float32(30.0) * np.cos(np.deg2rad(lat)).astype("f4")[:, None]
        ta[:, 0, 10:13, 5:9] = np.nan  # below ground: a mountain at 1000 hPa
        ta[rng.random(shape) < 0.02] = np.nan
        v = ds.createVariable(
            "ta", "f4", ("time", "plev", "lat", "lon"), zlib=True, complevel=4, shuffle=True,
            chunksizes=(7, 4, 8, 16), fill_value=np.float32(1e20),
        )  # fmt: skip
        v.setncatts(
            {"standard_name": "air_temperature", "units": "K", "cell_methods": "time: mean", "cell_measures": "area: areacella"}
        )
        v[:] = np.ma.masked_invalid(ta)

        # Packed wind: float64 scale_factor, so the decoded (and averaged) values are float64.
        ua = field(shape, rng, 5.0, 15.0).astype("f8")
        packed = np.round((ua - 5.0) / 0.01).astype("i2")
        packed[rng.random(shape) < 0.03] = -32767
        u = ds.createVariable(
            "ua", "i2", ("time", "plev", "lat", "lon"), zlib=True, chunksizes=(7, 4, 8, 16), fill_value=np.int16(-32767)
        )
        u.set_auto_maskandscale(False)
        u.setncatts(
            {
                "standard_name": "eastward_wind",
                "units": "m s-1",
                "scale_factor": np.float64(0.01),
                "add_offset": np.float64(5.0),
                "cell_measures": "area: areacella",
            }
        )
        u[:] = packed


# ---------------------------------------------------------------------------------------------
# (d) curvilinear grid
# ---------------------------------------------------------------------------------------------


def curvilinear_grid(ny: int = 20, nx: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A distorted grid: longitudes 0–360 that wander with y, latitudes that wave with x."""
    y, x = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    lon = (x * 12.0 + 5.0 + 4.0 * np.sin(y / 3.0)) % 360.0
    lat = -76.0 + y * 8.0 + 3.0 * np.cos(2 * np.pi * x / nx)
    return lat, lon


def write_curvilinear(path: Path) -> None:
    rng = np.random.default_rng(4)
    mid, bounds = monthly_dates("standard", range(2010, 2012))
    lat, lon = curvilinear_grid()
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        cf_globals(ds, "sea surface temperature on a curvilinear grid")
        ds.createDimension("bnds", 2)
        time_axis(ds, mid, "standard", bounds)
        ds.createDimension("y", lat.shape[0])
        ds.createDimension("x", lat.shape[1])
        for name, values, std, units in (("lat", lat, "latitude", "degrees_north"), ("lon", lon, "longitude", "degrees_east")):
            v = ds.createVariable(name, "f8", ("y", "x"))
            v.setncatts({"standard_name": std, "units": units})
            v[:] = values
        tos = field((len(mid), *lat.shape), rng, 290.0, 5.0)
        tos[:, 8:11, 12:17] = np.nan  # land
        v = ds.createVariable(
            "tos", "f4", ("time", "y", "x"), zlib=True, chunksizes=(5, 8, 12), fill_value=np.float32(1e20)
        )
        v.setncatts({"standard_name": "sea_surface_temperature", "units": "K", "coordinates": "lat lon"})
        v[:] = np.ma.masked_invalid(tos)


# ---------------------------------------------------------------------------------------------
# (e) ensemble members
# ---------------------------------------------------------------------------------------------


def write_ensemble(path: Path) -> None:
    rng = np.random.default_rng(5)
    mid, _ = monthly_dates("noleap", range(2000, 2003), skip={(2001, 6)})
    lat, lon = np.arange(-81.0, 90.0, 18.0), np.arange(0.0, 360.0, 18.0)
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        cf_globals(ds, "monthly precipitation, five members, June 2001 missing")
        time_axis(ds, mid, "noleap", None)
        ds.createDimension("realization", 5)
        r = ds.createVariable("realization", "i4", ("realization",))
        r.setncatts({"standard_name": "realization", "long_name": "ensemble member"})
        r[:] = np.arange(1, 6)
        regular_axis(ds, "lat", lat, None)
        regular_axis(ds, "lon", lon, None)
        shape = (5, len(mid), len(lat), len(lon))
        pr = field(shape, rng, 3e-5, 1e-5).astype("f8")
        pr[rng.random(shape) < 0.02] = -999.0
        pr[2, :, 0, :] = -999.0  # member 3 has nothing at the southernmost latitude
        v = ds.createVariable("pr", "f8", ("realization", "time", "lat", "lon"), zlib=True, chunksizes=(2, 12, 4, 8))
        v.set_auto_maskandscale(False)
        v.setncatts({"standard_name": "precipitation_flux", "units": "kg m-2 s-1", "missing_value": -999.0})
        v[:] = pr


# ---------------------------------------------------------------------------------------------
# The file the cache tests rewrite
# ---------------------------------------------------------------------------------------------


def write_probe(path: Path, offset: float) -> None:
    """A tiny daily file; `offset` is added to every value (the rewrite uses another one)."""
    mid, bounds = daily_dates()
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        cf_globals(ds, "cache probe")
        ds.createDimension("bnds", 2)
        time_axis(ds, mid[:40], "noleap", bounds[:40])
        lat, lon = np.array([-45.0, -15.0, 15.0, 45.0]), np.arange(0.0, 360.0, 45.0)
        regular_axis(ds, "lat", lat, cell_bounds(lat, 30.0))
        regular_axis(ds, "lon", lon, cell_bounds(lon, 45.0))
        v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, chunksizes=(16, 4, 8))
        v.units = "K"
        v[:] = field((40, 4, 8), np.random.default_rng(6), 280.0, 5.0) + np.float32(offset)


def write_ensemble_without_coordinate(path: Path) -> None:
    """An ensemble axis as CMIP-derived products often have it: a dimension without a
    coordinate variable, labelled by auxiliary coordinates."""
    rng = np.random.default_rng(17)
    mid, _ = monthly_dates("noleap", range(2000, 2001))
    lat, lon = np.array([-60.0, -20.0, 20.0, 60.0]), np.arange(0.0, 360.0, 60.0)
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        cf_globals(ds, "three members without an ensemble coordinate")
        time_axis(ds, mid, "noleap", None)
        ds.createDimension("ensemble", 3)
        regular_axis(ds, "lat", lat, None)
        regular_axis(ds, "lon", lon, None)
        r = ds.createVariable("realization", "i4", ("ensemble",))
        r.standard_name = "realization"
        r[:] = [1, 4, 7]
        e = ds.createVariable("experiment_id", str, ("ensemble",))
        for i, name in enumerate(("historical", "ssp245", "ssp585")):
            e[i] = name
        pr = field((3, len(mid), len(lat), len(lon)), rng, 3e-5, 1e-5)
        pr[1, 4, 0, :] = np.nan
        v = ds.createVariable("pr", "f4", ("ensemble", "time", "lat", "lon"), fill_value=np.float32(1e20))
        v.setncatts({"units": "kg m-2 s-1", "coordinates": "realization experiment_id"})
        v[:] = pr


# ---------------------------------------------------------------------------------------------
# A fill value the type cannot hold
# ---------------------------------------------------------------------------------------------


def write_nc3_nan_fill(path: Path) -> None:
    """NetCDF-3 with int16 variables whose `_FillValue` is a float NaN. netCDF-C refuses to
    write such a file, so it is written with scipy's own NetCDF-3 writer, as other tools do."""
    from scipy.io import netcdf_file

    rng = np.random.default_rng(13)
    nt, ny, nx = 6, 5, 8
    with netcdf_file(path, "w", version=1) as f:
        f.title = b"int16 packed fields with _FillValue = NaN"
        f.createDimension("time", None)
        f.createDimension("latitude", ny)
        f.createDimension("longitude", nx)
        time = f.createVariable("time", "d", ("time",))
        time.units, time.calendar = b"hours since 1979-01-01 00:00:00", b"gregorian"
        lat = f.createVariable("latitude", "f", ("latitude",))
        lat.units = b"degrees_north"
        lon = f.createVariable("longitude", "f", ("longitude",))
        lon.units = b"degrees_east"
        lat[:] = np.linspace(60.0, -60.0, ny, dtype="f4")
        lon[:] = np.arange(0.0, 360.0, 45.0, dtype="f4")
        t2m = f.createVariable("t2m", "h", ("time", "latitude", "longitude"))
        t2m.scale_factor, t2m.add_offset = np.float64(0.0021), np.float64(258.3)
        t2m._FillValue = np.float32(np.nan)
        t2m.units = b"K"
        sp = f.createVariable("sp", "h", ("time", "latitude", "longitude"))
        sp._FillValue = np.float64(np.nan)
        sp.units = b"hPa"
        lsm = f.createVariable("lsm", "b", ("latitude", "longitude"))  # byte, no _FillValue
        sst = f.createVariable("sst", "f", ("time", "latitude", "longitude"))  # float32, no _FillValue
        sst.units = b"K"
        raw = rng.integers(-32767, 32767, size=(nt, ny, nx), dtype="i2")
        raw[:, 0, :] = 0  # raw zeros: a fill of 0 would mask these
        raw[:, 1, ::2] = -32767  # netCDF's default fill for int16: nothing masks it here
        for step in range(nt):
            time[step] = 24.0 * step
            t2m[step] = raw[step]
            sp[step] = raw[step] // 3
            sst[step] = 270.0 + rng.random((ny, nx), dtype="f4")
        lsm[:] = (rng.random((ny, nx)) > 0.5).astype("i1")


if __name__ == "__main__":
    import sys

    for name, p in generate(Path(sys.argv[1] if len(sys.argv) > 1 else "ops-data")).items():
        print(f"{name:12s} {p.stat().st_size / 1e6:6.2f} MB  {p}")


def write_complex_and_half(path: Path) -> None:
    """complex64 and float16 variables (h5netcdf's types outside netCDF): served through S3, never
    computed on."""
    import h5netcdf

    with h5netcdf.File(path, "w", invalid_netcdf=True) as f:
        f.dimensions = {"x": 4}
        x = f.create_variable("x", ("x",), dtype="f8")
        x[:] = np.arange(4.0)
        f.create_variable("field", ("x",), dtype="c8")[:] = np.arange(4) + 1j
        f.create_variable("half", ("x",), dtype="f2")[:] = np.arange(4, dtype="f2")

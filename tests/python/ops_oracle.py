"""What docs/operations.md promises, computed with xarray on the original file.

Every selection is built from `.sel`/`.isel` (with an index array where the contract orders
longitudes west to east), every average from `DataArray.weighted(...).mean(...)`,
`.mean("time")` and `.resample(time=...)`, so the gateway is checked against xarray rather
than against a second implementation of its own rules.
"""

from __future__ import annotations

import re
from typing import Callable

import cftime
import numpy as np
import xarray as xr

CFTIME = xr.coders.CFDatetimeCoder(use_cftime=True)
FREQ = {"year": "YS", "month": "MS", "day": "D"}
# What a subset must keep of each selected variable's encoding (docs: "What the results contain").
KEPT_ENCODING = ("dtype", "_FillValue", "missing_value", "scale_factor", "add_offset")

Select = Callable[[xr.Dataset], xr.Dataset]


def open_original(path) -> xr.Dataset:
    with xr.open_dataset(path, decode_times=CFTIME) as ds:
        return ds.load()


def pick(ds: xr.Dataset, names: list[str]) -> xr.Dataset:
    """The variables with their coordinates and the bounds those name, as a subset carries them."""
    out = ds[names]
    bounds = [out[c].attrs.get("bounds") or out[c].encoding.get("bounds") for c in out.coords]
    extra = [b for b in bounds if b and b in ds.variables and b not in out.variables]
    return ds[names + extra] if extra else out


def companions(ds: xr.Dataset, names: list[str]) -> set[str]:
    """Variables a result may carry beyond `pick`: grid mappings and cell measures the
    contract does not mention either way."""
    out = set()
    for n in names:
        attrs = ds[n].attrs
        out.add(attrs.get("grid_mapping", ""))
        out.update(re.findall(r"\w+:\s*(\w+)", attrs.get("cell_measures", "")))
    return out & set(ds.variables)


# ---------------------------------------------------------------------------------------------
# Selections
# ---------------------------------------------------------------------------------------------


def chain(*steps: Select) -> Select:
    def run(ds):
        for step in steps:
            ds = step(ds)
        return ds

    return run


def sel(**kw) -> Select:
    return lambda ds: ds.sel(**kw)


def isel(**kw) -> Select:
    return lambda ds: ds.isel(**kw)


def level_range(dim: str, a: float, b: float) -> Select:
    lo, hi = min(a, b), max(a, b)
    return lambda ds: ds.isel({dim: np.flatnonzero((ds[dim].values >= lo) & (ds[dim].values <= hi))})


def east_of(lon: np.ndarray, west: float, east: float) -> np.ndarray:
    """Indices of `lon` in [west, east] read west to east modulo 360, in that order; a box
    360 degrees wide or more keeps the data's own order (docs/operations.md)."""
    if abs(east - west) >= 360:
        return np.arange(len(lon))
    width = (east - west) % 360
    offset = (lon - west) % 360
    idx = np.flatnonzero(offset <= width)
    return idx[np.argsort(offset[idx], kind="stable")]


def axis_name(ds: xr.Dataset, standard_name: str) -> str:
    return next(n for n, v in ds.variables.items() if v.attrs.get("standard_name") == standard_name)


def area(west: float, south: float, east: float, north: float) -> Select:
    """A box on a regular grid: latitudes in their order, longitudes west to east."""

    def run(ds):
        lat, lon = axis_name(ds, "latitude"), axis_name(ds, "longitude")
        lats = ds[lat].values
        return ds.isel({lat: np.flatnonzero((lats >= south) & (lats <= north)), lon: east_of(ds[lon].values, west, east)})

    return run


def curvilinear_area(var: str, west: float, south: float, east: float, north: float) -> Select:
    """The smallest index box holding every point of the area; `var` masked outside it."""

    def run(ds):
        lat, lon = ds[axis_name(ds, "latitude")], ds[axis_name(ds, "longitude")]
        offsets = (lon.values - west) % 360
        width = (east - west) % 360 or 360.0
        inside = (lat.values >= south) & (lat.values <= north) & (offsets <= width)
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        ydim, xdim = lat.dims
        box = {ydim: slice(rows[0], rows[-1] + 1), xdim: slice(cols[0], cols[-1] + 1)}
        out = ds.isel(box)
        masked = out[var].where(xr.DataArray(inside[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], dims=(ydim, xdim)))
        masked.attrs, masked.encoding = out[var].attrs, out[var].encoding
        return out.assign({var: masked})

    return run


# ---------------------------------------------------------------------------------------------
# Averages
# ---------------------------------------------------------------------------------------------


def weights_of(ds: xr.Dataset, var: str, weights: str) -> xr.DataArray:
    if weights == "coslat":
        return np.cos(np.deg2rad(ds[axis_name(ds, "latitude")]))
    return ds[re.search(r"area:\s*(\w+)", ds[var].attrs["cell_measures"]).group(1)]


def average(ds: xr.Dataset, var: str, dims: tuple[str, ...], weights: str, time: str | None) -> xr.DataArray:
    """The contract's average: a weighted mean over `dims` (file dimension names, not time),
    then `time` = "mean" or a resample frequency; float64 throughout, cast at the end."""
    da = ds[var].astype("f8")
    if dims and weights != "none":
        da = da.weighted(weights_of(ds, var, weights)).mean(list(dims))
    elif dims:
        da = da.mean(list(dims))
    if time == "mean":
        da = da.mean("time")
    elif time:
        steps = ds["time"].resample(time=FREQ[time]).count()
        da = da.resample(time=FREQ[time]).mean()
        da = da.sel(time=steps.time[steps > 0])  # empty periods are left out
    return da.astype(ds[var].dtype)


def period_end(start, freq: str):
    if freq == "year":
        return start.replace(year=start.year + 1)
    if freq == "month":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    from datetime import timedelta

    return start + timedelta(days=1)


def cell_methods(source: str, space: tuple[str, ...], var_dims: tuple[str, ...], time: str | None) -> str:
    parts = [source] if source else []
    if space:
        parts.append(" ".join(f"{d}:" for d in var_dims if d in space) + " mean")
    if time:
        parts.append("time: mean")
    return " ".join(parts)


def cell_method_entries(text: str) -> list[tuple[frozenset[str], str]]:
    """`lat: lon: mean time: mean` as [({lat, lon}, "mean"), ({time}, "mean")]: the names of
    one entry are unordered (CF §7.3); qualifiers ("where sea", "(comment)") stay with the method."""
    entries: list[tuple[frozenset[str], str]] = []
    names: list[str] = []
    for token in text.split():
        if token.endswith(":"):
            names.append(token[:-1])
        elif names:
            entries.append((frozenset(names), token))
            names = []
        elif entries:
            entries[-1] = (entries[-1][0], f"{entries[-1][1]} {token}")
    return entries


def covered_range(ds: xr.Dataset, dim: str) -> tuple:
    """(low, high) a reduced dimension covered: its bounds when it has them, else its values."""
    coord = ds[dim]
    name = coord.attrs.get("bounds") or coord.encoding.get("bounds")
    values = ds[name].values if name in ds.variables else coord.values
    return np.min(values), np.max(values)


def as_number(value, units: str, calendar: str) -> float:
    """Times as numbers in the source's units, other values as they are."""
    if isinstance(value, cftime.datetime):
        return float(cftime.date2num(value, units, calendar))
    return float(value)


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------


def same_value(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))
    except TypeError:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def same_attr(name: str, got, want) -> bool:
    """Equal, except that `history` may gain the lines zarrgate appends (its provenance)."""
    if name == "history" and isinstance(got, str) and isinstance(want, str):
        extra = got[len(want):].strip("\n").splitlines() if got.startswith(want) else [got]
        return all(line.startswith("zarrgate ") for line in extra)
    return same_value(got, want)


def assert_attrs(got: dict, want: dict, where: str) -> None:
    missing = [k for k in want if k not in got]
    assert not missing, f"{where}: attributes {missing} missing"
    differ = {k: (got[k], want[k]) for k in want if not same_attr(k, got[k], want[k])}
    assert not differ, f"{where}: attributes differ (got, want): {differ}"


def assert_same(got: xr.Dataset, want: xr.Dataset, *, data_vars: tuple[str, ...] = (), extra_ok: set[str] = frozenset()):
    """`got` equals `want` variable by variable: dims, dtype, values (NaN where NaN), attributes;
    `data_vars` also keep their encoding, and time its units and calendar."""
    extra = set(got.variables) - set(want.variables) - set(extra_ok)
    assert not extra, f"unexpected variables {sorted(extra)}"
    for name, w in want.variables.items():
        assert name in got.variables, f"{name} missing; got {sorted(got.variables)}"
        g = got.variables[name]
        assert g.dims == w.dims, f"{name}: dims {g.dims} != {w.dims}"
        assert g.dtype == w.dtype, f"{name}: dtype {g.dtype} != {w.dtype}"
        np.testing.assert_array_equal(g.values, w.values, err_msg=name, strict=True)
        assert_attrs(g.attrs, w.attrs, name)
        assert (name in got.coords) == (name in want.coords), f"{name}: coordinate in one, not the other"
        keys = KEPT_ENCODING if name in data_vars else ("units", "calendar") if name == "time" else ()
        for key in keys:
            if key in w.encoding:
                assert same_value(g.encoding.get(key), w.encoding[key]), f"{name}: encoding {key} {g.encoding.get(key)!r}"
    assert_attrs(got.attrs, want.attrs, "global")

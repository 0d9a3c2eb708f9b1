"""What docs/joins.md promises a joined dataset holds, computed with xarray from its files.

A join is described by a `Plan`, the same tree the indexer builds (files, along an existing
dimension, along a new one, a union of variables). `expected` turns a plan into the dataset
xarray makes of the files: `xr.open_mfdataset(..., combine="nested", data_vars="minimal",
coords="minimal", compat="override")` along an existing dimension, `xr.concat` with an explicit
coordinate for a new one (only the listed variables get it; the rest come from the first
part), `xr.merge` for a union. `differences` compares a served dataset with it, variable by
variable, and with the encoding the contract gives each kind of variable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union as TypeUnion

import numpy as np
import xarray as xr

from fidelity import compare_attr, dtypes_equivalent, values_equal

#: where a decoded variable may differ from xarray's own decoding (float32 rounding)
DECODED_RTOL = 1e-6
#: encoding a variable served encoded keeps from the first file (values stay encoded)
KEPT_ENCODING = ("dtype", "scale_factor", "add_offset", "_FillValue", "missing_value")
#: what decoding on the server drops (`_FillValue` becomes NaN)
PACKING = ("scale_factor", "add_offset", "missing_value")
#: CF names of one calendar
CALENDAR_ALIASES = {"gregorian": "standard", "365_day": "noleap", "366_day": "all_leap"}


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    """A member file, by its path relative to the data root."""

    rel: str


@dataclass(frozen=True)
class Existing:
    """Files concatenated along an existing dimension, listed in time order. `drop` names the
    variables the join leaves out (`force = ["drop-missing-variables"]`)."""

    dim: str
    parts: tuple[File, ...]
    drop: tuple[str, ...] = ()


@dataclass(frozen=True)
class New:
    """Parts stacked along a new, outermost dimension whose coordinate takes `values`."""

    dim: str
    values: tuple
    variables: tuple[str, ...]
    parts: tuple["Plan", ...]


@dataclass(frozen=True)
class Union:
    """The variables of every part together."""

    parts: tuple["Plan", ...]


Plan = TypeUnion[File, Existing, New, Union]


def files(plan: Plan) -> list[str]:
    """The member files of `plan`, in plan order (the first is the "first file")."""
    if isinstance(plan, File):
        return [plan.rel]
    return [rel for part in plan.parts for rel in files(part)]


def new_dims(plan: Plan) -> set[str]:
    if isinstance(plan, File):
        return set()
    own = {plan.dim} if isinstance(plan, New) else set()
    return own.union(*(new_dims(p) for p in plan.parts))


# ---------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------


def open_file(path: Path) -> xr.Dataset:
    with xr.open_dataset(path) as ds:
        return ds.load()


def expected(plan: Plan, root: Path) -> xr.Dataset:
    """What xarray makes of the files of `plan` under `root`."""
    if isinstance(plan, File):
        return open_file(root / plan.rel)
    if isinstance(plan, Existing):
        paths = [root / p.rel for p in plan.parts]
        with xr.open_mfdataset(paths, combine="nested", concat_dim=plan.dim, data_vars="minimal",
                               coords="minimal", compat="override", drop_variables=list(plan.drop),
                               chunks=-1) as ds:  # one dask chunk per file: the files are small
            return ds.load()
    parts = [expected(p, root) for p in plan.parts]
    if isinstance(plan, Union):
        return xr.merge(parts, compat="override", join="exact", combine_attrs="override")
    return stack(parts, plan)


def stack(parts: list[xr.Dataset], plan: New) -> xr.Dataset:
    coord = xr.DataArray(list(plan.values), dims=plan.dim, name=plan.dim)
    names = list(plan.variables)
    stacked = xr.concat([p[names] for p in parts], dim=coord, data_vars="all", coords="minimal",
                        compat="override", join="exact", combine_attrs="override")
    return parts[0].drop_vars(names).assign({n: stacked[n] for n in names})


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------


@dataclass
class Differences:
    """How a served join differs from its oracle: in what it holds (dimensions, variables,
    dtypes, values, NaN positions) and in how it describes it (attributes, encoding)."""

    values: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.values or self.metadata)

    def __str__(self) -> str:
        return "\n".join(self.values + self.metadata)


def differences(got: xr.Dataset, want: xr.Dataset, *, decoded: tuple[str, ...] = (),
                loose: set[str] = frozenset()) -> Differences:
    """Every way `got` (a served join) differs from `want` (its oracle); falsy when equal.

    `decoded` names the variables the contract serves decoded (values to `DECODED_RTOL`,
    packing dropped, `_FillValue` NaN); the others keep the first file's encoding and equal
    the oracle exactly. `loose` names variables whose attributes and encoding the contract
    leaves open (the coordinate of a new dimension): the oracle's attributes must be there.
    """
    out = Differences()
    if dict(got.sizes) != dict(want.sizes):
        out.values.append(f"dimensions {dict(got.sizes)} != {dict(want.sizes)}")
    if set(got.variables) != set(want.variables):
        extra, lacks = set(got.variables) - set(want.variables), set(want.variables) - set(got.variables)
        out.values.append(f"variables: unexpected {sorted(extra)}, missing {sorted(lacks)}")
    if set(got.coords) != set(want.coords):
        out.metadata.append(f"coordinates {sorted(got.coords)} != {sorted(want.coords)}")
    for name in sorted(set(got.variables) & set(want.variables)):
        g, w = got.variables[name], want.variables[name]
        values, metadata = variable_differences(g, w, name in decoded, name in loose)
        out.values += [f"{name}: {d}" for d in values]
        out.metadata += [f"{name}: {d}" for d in metadata]
    out.metadata += [f"global attribute {d}" for d in attr_differences(got.attrs, want.attrs, loose=False)]
    return out


def variable_differences(g: xr.Variable, w: xr.Variable, decoded: bool, loose: bool) -> tuple[list[str], list[str]]:
    """(differences in values, in attributes and encoding) of one variable."""
    if g.dims != w.dims:
        return [f"dims {g.dims} != {w.dims}"], []
    values = [] if dtypes_equivalent(g.dtype, w.dtype) else [f"dtype {g.dtype} != {w.dtype}"]
    values += value_differences(g.values, w.values, decoded)
    metadata = attr_differences(g.attrs, w.attrs, loose)
    if not loose:
        metadata += (decoded_encoding if decoded else kept_encoding)(g.encoding, w.encoding)
    return values, metadata


def value_differences(g: np.ndarray, w: np.ndarray, decoded: bool) -> list[str]:
    if g.shape != w.shape:
        return [f"shape {g.shape} != {w.shape}"]
    if not decoded:
        ok, detail = values_equal(w, g, "served")
        return [] if ok else [f"values: {detail}"]
    nan_g, nan_w = np.isnan(g), np.isnan(w)
    if not np.array_equal(nan_g, nan_w):
        moved = int((nan_g != nan_w).sum())
        return [f"NaN at {moved} other positions (served {int(nan_g.sum())}, xarray {int(nan_w.sum())})"]
    close = np.isclose(g, w, rtol=DECODED_RTOL, atol=0.0, equal_nan=True)
    if close.all():
        return []
    i = tuple(int(k) for k in np.argwhere(~close)[0])
    far = int((~close).sum())
    return [f"values: {far}/{close.size} beyond rtol {DECODED_RTOL}; e.g. {list(i)}: xarray={w[i]!r} served={g[i]!r}"]


def attr_differences(got: dict, want: dict, loose: bool) -> list[str]:
    """Attributes compare by value: JSON cannot keep their storage type (fidelity.py's `attr_type`)."""
    out = [f"{k!r} missing" for k in want if k not in got]
    if not loose:
        out += [f"{k!r} unexpected ({got[k]!r})" for k in got if k not in want]
    for k in want.keys() & got.keys():
        kind, detail = compare_attr(want[k], got[k])
        if kind == "differ":
            out.append(f"{k!r}: {got[k]!r} != {want[k]!r} ({detail})")
    return out


def kept_encoding(got: dict, want: dict) -> list[str]:
    """A variable served encoded keeps the first file's dtype and packing attributes; a time
    variable keeps the first file's dtype, units and calendar."""
    time = is_time(want)
    out = []
    for key in ("dtype",) if time else KEPT_ENCODING:
        g, w = got.get(key), want.get(key)
        same = same_dtype(g, w) if key == "dtype" else same_number(g, w)
        if not same:
            out.append(f"encoding {key} {g!r}, the first file has {w!r}")
    if time and got.get("units") != want.get("units"):
        out.append(f"units {got.get('units')!r}, the first file has {want.get('units')!r}")
    if time and calendar_name(got.get("calendar")) != calendar_name(want.get("calendar")):
        out.append(f"calendar {got.get('calendar')!r}, the first file has {want.get('calendar')!r}")
    return out + chunk_differences(got, want)


def chunk_differences(got: dict, want: dict) -> list[str]:
    """Chunks passed through or assembled follow the first file's chunk shape (a new
    dimension's chunking is left open, so only variables of the same rank are compared)."""
    chunks, shape = got.get("chunks"), want.get("chunksizes")
    if not shape or chunks is None or len(chunks) != len(shape) or is_time(want):
        return []
    return [] if tuple(chunks) == tuple(shape) else [f"chunks {tuple(chunks)}, the first file has {tuple(shape)}"]


def decoded_encoding(got: dict, want: dict) -> list[str]:
    out = [f"encoding keeps {key} {got[key]!r} though served decoded" for key in PACKING if key in got]
    fill = got.get("_FillValue")
    if not (isinstance(fill, (float, np.floating)) and math.isnan(fill)):
        out.append(f"_FillValue {fill!r}, not NaN, though served decoded")
    return out


def is_time(encoding: dict) -> bool:
    """Decoded CF times (the join coordinate, its bounds): one chunk, re-encoded when needed."""
    return "calendar" in encoding or "since" in str(encoding.get("units", ""))


def same_dtype(got, want) -> bool:
    """Stored dtypes up to byte order. Text is chars in netCDF and strings in Zarr, and a new
    dimension's coordinate has no file to compare with."""
    if want is None or np.dtype(want).kind in "SUO":
        return True
    return got is not None and dtypes_equivalent(np.dtype(got), np.dtype(want))


def same_number(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(np.asarray(a, dtype="f8"), np.asarray(b, dtype="f8"), equal_nan=True))


def calendar_name(name: str | None) -> str:
    name = (name or "standard").lower()
    return CALENDAR_ALIASES.get(name, name)

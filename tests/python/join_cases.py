"""The multi-file datasets of test_joins.py (docs/joins.md), written from real corpus files.

`build(root)` splits five corpus files with xarray (by time, member or variable, each file
with encodings chosen here) into one directory per case under `root`, with the spec or NcML
file that defines the join, and returns the cases. Nothing is copied into the repository:
the corpus is read in place and the splits go to the test's temporary directory.

A case is the dataset id the join must get, the `Plan` of its files (join_oracle.py, which
computes what xarray makes of them), the variables the contract serves decoded, and for a
refusal the message it must give and the files it must name.

| case | source | what it exercises |
|---|---|---|
| drs_aligned | EC-EARTH daily | DRS names; file boundaries on chunk boundaries (pass-through) |
| units | CCSM4 monthly noleap | time units differ per file; `noleap` and `365_day` |
| calendar_names | ERA5 psl | `standard` and `gregorian`, days and hours |
| bounds_units | CCSM4 | time bounds with units and no calendar (noleap inherited) |
| packing_int16 | ERA5 psl | int16, another scale_factor/add_offset/_FillValue per file |
| packing_mixed | CCSM4 | float32 unpacked, then int16 packed with float64 factors |
| uneven | EC-EARTH daily | 365/366-day years, chunks that do not divide them, other chunk shapes |
| levels | MIROC6 ta | plev, int16 packed alike in both files, partial chunks on two axes |
| nc3 | CCSM4 | NETCDF3_CLASSIC record variables |
| members_spec | CCSM4 | new dimension from a path regex (integers), default variables |
| members_ncml | ERA5 psl | NcML joinNew with coordValue (strings) |
| time_member | CanESM5 siconc (curvilinear) | spec: time × member |
| members_units | CCSM4 | spec: members with the same instants in hours, days and minutes since other dates |
| members_ncml_units | ERA5 psl | NcML joinNew whose members' time units differ |
| time_member_units | CanESM5 siconc | spec: time × member, units differing between members and within one |
| union_units | CCSM4 | spec: union of two time joins, one in days and one in hours |
| union_spec | CCSM4 | spec: variable × time (`union = true`) |
| union_ncml | CCSM4 | NcML union of a joinExisting and a file |
| ncml_edit | CCSM4 | NcML rename, remove, attributes over a scanned joinExisting |
| refuse_* | CCSM4 | one refusal each (docs/joins.md, "Refusals"); `force`; members whose equal time numbers are other instants, or in other calendars |
"""

from __future__ import annotations

import os
import textwrap
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Callable

import cftime
import netCDF4
import numpy as np
import xarray as xr

from gateway import CORPUS
from join_oracle import Existing, File, New, Plan, Union, expected, files

SOURCES = {
    "ec_earth": "mini-esgf-data/test_data/gws/nopw/j04/cp4cds1_vol1/data/c3s-cmip5/output1/ICHEC/EC-EARTH/historical/"
    "day/atmos/day/r1i1p1/tas/v20131231/tas_day_EC-EARTH_historical_r1i1p1_18500101-18591231.nc",
    "ccsm4": "mini-esgf-data/test_data/badc/cmip5/data/cmip5/output1/NCAR/CCSM4/historical/mon/atmos/Amon/"
    "r1i1p1/latest/tas/tas_Amon_CCSM4_historical_r1i1p1_185001-200512.nc",
    "era5": "mini-esgf-data/test_data/pool/data/c3s-cica-atlas/ERA5/psl_ERA5_mon_194001-202212.nc",
    "siconc": "mini-esgf-data/test_data/badc/cmip6/data/CMIP6/CMIP/CCCma/CanESM5/historical/r1i1p1f1/SImon/"
    "siconc/gn/latest/siconc_SImon_CanESM5_historical_r1i1p1f1_gn_185001-201412.nc",
    "miroc": "mini-esgf-data/test_data/badc/cmip6/data/CMIP6/ScenarioMIP/MIROC/MIROC6/ssp119/r1i1p1f1/Amon/ta/gn/"
    "files/d20190807/ta_Amon_MIROC6_ssp119_r1i1p1f1_gn_201501-202412.nc",
}
NCML_NS = "http://www.unidata.ucar.edu/namespaces/netcdf/ncml-2.2"
DAYS_1850 = "days since 1850-01-01 00:00:00"
HOURS_1900 = "hours since 1900-01-01 00:00:00"
F4_FILL = np.float32(1e20)
CCSM4 = "tas_Amon_CCSM4_historical_r1i1p1"
EC_EARTH = "tas_day_EC-EARTH_historical_r1i1p1"


@dataclass(frozen=True)
class JoinCase:
    name: str
    #: the dataset id in the bucket
    id: str
    #: how the join is defined: "drs", "spec" or "ncml"
    kind: str
    #: the files and how they join (None for a refusal)
    plan: Plan | None = None
    #: variables served decoded (their encoding differs between files)
    decoded: tuple[str, ...] = ()
    #: NcML changes on top of the join, applied to the oracle
    edit: Callable[[xr.Dataset], xr.Dataset] | None = None
    #: for a refusal: what the message contains, and the files (or spec) it names
    refusal: str | None = None
    offenders: tuple[str, ...] = ()
    #: what the catalog entry's notes must mention
    notes: tuple[str, ...] = ()
    #: the member files, root-relative (for a refusal: every file the definition names)
    members: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.plan is not None and not self.members:
            object.__setattr__(self, "members", tuple(files(self.plan)))

    def oracle(self, root: Path) -> xr.Dataset:
        ds = expected(self.plan, root)
        return self.edit(ds) if self.edit else ds


# ---------------------------------------------------------------------------------------------
# Writing files
# ---------------------------------------------------------------------------------------------


@cache
def source(key: str) -> xr.Dataset:
    """A corpus file, decoded (cftime times for every calendar), in memory."""
    with warnings.catch_warnings():  # ERA5 psl has two fill values; both mean "missing"
        warnings.simplefilter("ignore", xr.SerializationWarning)
        with xr.open_dataset(CORPUS / SOURCES[key], decode_times=xr.coders.CFDatetimeCoder(use_cftime=True)) as ds:
            return ds.load()


def f4(chunks: tuple[int, ...] | None = None, *, cmor: bool = False) -> dict:
    """float32 with _FillValue 1e20 (and the same missing_value, as CMOR writes), zlib when chunked."""
    enc = {"dtype": "f4", "_FillValue": F4_FILL}
    if cmor:
        enc["missing_value"] = F4_FILL
    if chunks:
        enc |= {"chunksizes": chunks, "zlib": True, "complevel": 4, "shuffle": True}
    return enc


def i2(scale, offset, fill: int, chunks: tuple[int, ...]) -> dict:
    """int16 packed as round((value - offset) / scale); NaN becomes `fill`."""
    return {"dtype": "i2", "scale_factor": scale, "add_offset": offset, "_FillValue": np.int16(fill),
            "chunksizes": chunks, "zlib": True, "complevel": 4, "shuffle": True}


def with_gaps(ds: xr.Dataset, name: str, every: int) -> xr.Dataset:
    """`name` with every `every`-th value (in file order) missing, so NaN positions are checked."""
    values = ds[name].values.copy()
    values.reshape(-1)[::every] = np.nan
    return ds.assign({name: ds[name].copy(data=values)})


def drs(prefix: str, ds: xr.Dataset, fmt: str = "%Y%m") -> str:
    t = ds.indexes["time"]
    return f"{prefix}_{t[0].strftime(fmt)}-{t[-1].strftime(fmt)}.nc"


def retimed(ds: xr.Dataset, like: xr.Dataset) -> xr.Dataset:
    """The values of `ds` on the time axis of `like` (members must share their coordinates)."""
    bounds = {"time_bnds": like["time_bnds"]} if "time_bnds" in ds else {}
    return ds.drop_vars(["time", *bounds]).assign_coords(time=like["time"]).assign(bounds)


def with_calendar(ds: xr.Dataset, calendar: str) -> xr.Dataset:
    """The same dates (and bounds) in another calendar: noleap mid-month dates exist in 360_day."""
    def convert(values):
        flat = [cftime.datetime(*d.timetuple()[:6], calendar=calendar) for d in np.ravel(values)]
        return np.array(flat, dtype=object).reshape(np.shape(values))

    time, bounds = (xr.Variable(ds[n].dims, convert(ds[n].values), ds[n].attrs) for n in ("time", "time_bnds"))
    return ds.drop_vars(["time", "time_bnds"]).assign_coords(time=time).assign(time_bnds=bounds)


@dataclass(frozen=True)
class CaseDir:
    """One case's directory, `root/name`; paths it returns are relative to `root`."""

    root: Path
    name: str

    def id(self, name: str) -> str:
        return f"{self.name}/{name}"

    def nc(self, rel: str, ds: xr.Dataset, data: dict[str, dict], *, units: str = DAYS_1850,
           calendar: str | None = None, nc_format: str = "NETCDF4") -> File:
        """Writes `ds` with explicit encodings: `data` for the data variables, the time and its
        bounds as float64 in `units` (spelled as given), no _FillValue on anything else (as
        CMOR writes)."""
        path = self.root / self.name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds = ds.drop_encoding()
        calendar = calendar or ds.indexes["time"].calendar
        times = [n for n in ("time", ds["time"].attrs.get("bounds")) if n in ds.variables]
        encoding = {name: {"_FillValue": None} for name in ds.variables}
        encoding |= {n: {"units": units, "calendar": calendar, "dtype": "f8", "_FillValue": None} for n in times}
        encoding |= {name: enc for name, enc in data.items() if name in ds.variables}
        ds.to_netcdf(path, format=nc_format, encoding=encoding, unlimited_dims=["time"])
        with netCDF4.Dataset(path, "a") as nc:  # xarray writes "days since 1850-1-1" as "…1850-01-01"
            for name in times:
                if "units" in nc[name].ncattrs():  # xarray leaves them off the bounds
                    nc[name].units = units
        return File(f"{self.name}/{rel}")

    def text(self, rel: str, content: str) -> str:
        path = self.root / self.name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(content).lstrip())
        return f"{self.name}/{rel}"


def ncml(body: str) -> str:
    body = textwrap.dedent(body).strip()
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<netcdf xmlns="{NCML_NS}">\n{body}\n</netcdf>\n'


def pieces(ds: xr.Dataset, cuts: list[int]) -> list[xr.Dataset]:
    """`ds` cut at the time indices `cuts`."""
    return [ds.isel(time=slice(a, b)) for a, b in zip(cuts, cuts[1:])]


def split(d: CaseDir, ds: xr.Dataset, cuts: list[int], prefix: str, data: dict[str, dict],
          dates: str = "%Y%m", **kw) -> tuple[File, ...]:
    """`ds` cut at the time indices `cuts` into DRS-named files, all encoded alike."""
    return tuple(d.nc(drs(prefix, p, dates), p, data, **kw) for p in pieces(ds, cuts))


# ---------------------------------------------------------------------------------------------
# Joins that must succeed
# ---------------------------------------------------------------------------------------------


def drs_aligned(d: CaseDir) -> JoinCase:
    ds = with_gaps(source("ec_earth").isel(time=slice(0, 3650)), "tas", 97)
    parts = split(d, ds, [0, 1460, 2555, 3650], EC_EARTH, {"tas": f4((73, 2, 4))}, "%Y%m%d")  # 73 divides each
    return JoinCase(d.name, d.id(EC_EARTH), "drs", Existing("time", parts))


def units(d: CaseDir) -> JoinCase:
    ds = with_gaps(source("ccsm4").isel(time=slice(0, 360)), "tas", 41)
    data = {"tas": f4((12, 2, 3), cmor=True)}
    times = [(DAYS_1850, "noleap"), (HOURS_1900, "noleap"), ("days since 1870-1-1", "365_day")]
    parts = tuple(d.nc(drs(CCSM4, p), p, data, units=u, calendar=c)
                  for p, (u, c) in zip(pieces(ds, [0, 120, 240, 360]), times))
    return JoinCase(d.name, d.id(CCSM4), "drs", Existing("time", parts))


def calendar_names(d: CaseDir) -> JoinCase:
    ds = with_gaps(source("era5").isel(time=slice(0, 240)), "psl", 53)
    data = {"psl": f4((12, 8, 15))}
    a, b = pieces(ds, [0, 120, 240])
    parts = (
        d.nc(drs("psl_ERA5_mon", a), a, data, units=DAYS_1850, calendar="standard"),
        d.nc(drs("psl_ERA5_mon", b), b, data, units=HOURS_1900, calendar="gregorian"),
    )
    return JoinCase(d.name, d.id("psl_ERA5_mon"), "drs", Existing("time", parts))


def packing_int16(d: CaseDir) -> JoinCase:
    ds = with_gaps(source("era5").isel(time=slice(240, 480)), "psl", 29)
    packings = [  # float32 factors: each file decodes to float32
        i2(np.float32(0.5), np.float32(100000.0), -32767, (12, 8, 15)),
        i2(np.float32(0.4), np.float32(100500.0), 32767, (12, 8, 15)),
        i2(np.float32(1.0), np.float32(99000.0), -32768, (12, 8, 15)),
    ]
    parts = tuple(d.nc(drs("psl_ERA5_mon", p), p, {"psl": enc})
                  for p, enc in zip(pieces(ds, [0, 84, 156, 240]), packings))
    return JoinCase(d.name, d.id("psl_ERA5_mon"), "drs", Existing("time", parts), decoded=("psl",))


def packing_mixed(d: CaseDir) -> JoinCase:
    ds = with_gaps(source("ccsm4").isel(time=slice(360, 600)), "tas", 37)
    a, b = pieces(ds, [0, 120, 240])
    parts = (
        d.nc(drs(CCSM4, a), a, {"tas": f4((12, 2, 3), cmor=True)}),
        # float64 factors: this file decodes to float64, so the join is float64
        d.nc(drs(CCSM4, b), b, {"tas": i2(0.01, 250.0, -32767, (12, 2, 3))}),
    )
    return JoinCase(d.name, d.id(CCSM4), "drs", Existing("time", parts), decoded=("tas",))


def uneven(d: CaseDir) -> JoinCase:
    ds = with_gaps(source("ec_earth"), "tas", 89)
    # 1850-1851 (730 days), 1852 (leap, 366), 1853-1855 (1095): no chunk size divides them all
    years = [ds.sel(time=slice(a, b)) for a, b in (("1850", "1851"), ("1852", "1852"), ("1853", "1855"))]
    chunks = [(100, 2, 4), (64, 2, 2), (100, 1, 4)]
    parts = tuple(d.nc(drs(EC_EARTH, y, "%Y%m%d"), y, {"tas": f4(c)}) for y, c in zip(years, chunks))
    return JoinCase(d.name, d.id(EC_EARTH), "drs", Existing("time", parts))


def levels(d: CaseDir) -> JoinCase:
    prefix = "ta_Amon_MIROC6_ssp119_r1i1p1f1_gn"
    data = {"ta": i2(0.01, 250.0, -32767, (5, 10, 3, 6))}  # the same in both files: stays encoded
    parts = split(d, source("miroc"), [0, 48, 120], prefix, data, units="days since 1850-1-1", calendar="gregorian")
    return JoinCase(d.name, d.id(prefix), "drs", Existing("time", parts))


def nc3(d: CaseDir) -> JoinCase:
    ds = with_gaps(source("ccsm4"), "tas", 43)
    parts = split(d, ds, [0, 600, 1200, 1872], CCSM4, {"tas": f4(cmor=True)}, nc_format="NETCDF3_CLASSIC")
    return JoinCase(d.name, d.id(CCSM4), "drs", Existing("time", parts))


def bounds_units(d: CaseDir) -> JoinCase:
    """Bounds with units but no calendar (as EC-Earth3 writes them): CF and xarray take the
    calendar of the time coordinate, here noleap."""
    ds = with_gaps(source("ccsm4").isel(time=slice(600, 840)), "tas", 13)
    parts = split(d, ds, [0, 120, 240], CCSM4, {"tas": f4((12, 2, 3), cmor=True)})
    for part in parts:
        with netCDF4.Dataset(d.root / part.rel, "a") as nc:
            nc["time_bnds"].units = nc["time"].units
    return JoinCase(d.name, d.id(CCSM4), "drs", Existing("time", parts))


def members_spec(d: CaseDir) -> JoinCase:
    # Without bounds, `tas` is the only data variable: the default `variables`.
    ds = source("ccsm4").drop_vars(["time_bnds", "lat_bnds", "lon_bnds"])
    first = ds.isel(time=slice(0, 120))
    parts = []
    for k, window in enumerate(pieces(ds, [0, 120, 240, 360]), start=1):
        rel = f"r{k}i1p1f1/tas_Amon_CCSM4_historical_r{k}i1p1f1_185001-185912.nc"
        parts.append(d.nc(rel, with_gaps(retimed(window, first), "tas", 31 + k), {"tas": f4((12, 2, 3))}))
    d.text("tas.join.toml", r"""
        files = "r*i1p1f1/tas_*.nc"

        [new_dim]
        name = "member"
        from_path = 'r(\d+)i1p1f1'
        """)
    return JoinCase(d.name, d.id("tas"), "spec", New("member", (1, 2, 3), ("tas",), tuple(parts)))


def members_ncml(d: CaseDir, units: tuple[str, str, str] = (DAYS_1850,) * 3) -> JoinCase:
    """An NcML joinNew of three ERA5 windows on one time axis, each file in `units`."""
    ds = source("era5")
    first = ds.isel(time=slice(0, 120))
    labels = ("r1i1p1f1", "r2i1p1f1", "r3i1p1f1")
    parts = tuple(d.nc(f"psl_{label}.nc", retimed(window, first), {"psl": f4((12, 8, 15))}, units=u)
                  for label, window, u in zip(labels, pieces(ds, [0, 120, 240, 360]), units))
    netcdfs = "\n".join(f'    <netcdf location="{Path(p.rel).name}" coordValue="{v}"/>' for p, v in zip(parts, labels))
    d.text("ensemble.ncml", ncml(f"""
        <aggregation type="joinNew" dimName="member">
            <variableAgg name="psl"/>
        {netcdfs}
        </aggregation>
        """))
    return JoinCase(d.name, d.id("ensemble"), "ncml", New("member", labels, ("psl",), parts))


CANESM_DAYS = "days since 1850-01-01 0:0:0.0"  # as CanESM5 writes it


def time_member(d: CaseDir, units: tuple[tuple[str, str], ...] = ((CANESM_DAYS,) * 2,) * 3) -> JoinCase:
    """A spec joining time, then members: three CanESM5 windows on one time axis, each cut into
    two files, the two halves of each member in `units`."""
    ds = source("siconc")
    first = ds.isel(time=slice(0, 120))
    labels = ("r1i1p1f1", "r2i1p1f1", "r3i1p1f1")
    members = []
    for label, window, (u1, u2) in zip(labels, pieces(ds, [0, 120, 240, 360]), units):
        prefix = f"{label}/siconc_SImon_CanESM5_historical_{label}_gn"
        a, b = pieces(retimed(window, first), [0, 60, 120])
        data = {"siconc": f4((12, 3, 4), cmor=True)}
        members.append(Existing("time", (d.nc(drs(prefix, a), a, data, units=u1), d.nc(drs(prefix, b), b, data, units=u2))))
    d.text("siconc.join.toml", r"""
        files = ["r*i1p1f1/siconc_*.nc"]
        join = "time"

        [new_dim]
        name = "member"
        from_path = '(r\d+i1p1f1)'
        variables = ["siconc"]
        """)
    return JoinCase(d.name, d.id("siconc"), "spec", New("member", labels, ("siconc",), tuple(members)))


MEMBER_SPEC = r"""
    files = "r*i1p1f1/tas_*.nc"

    [new_dim]
    name = "member"
    from_path = 'r(\d+)i1p1f1'
    """


def members_units(d: CaseDir) -> JoinCase:
    """Members that hold the same instants in other units: xr.concat aligns them, so must we."""
    ds = source("ccsm4").drop_vars(["time_bnds", "lat_bnds", "lon_bnds"])
    first = ds.isel(time=slice(0, 120))
    units = ("hours since 1800-01-01 00:00:00", DAYS_1850, "minutes since 1849-12-01 00:00:00")
    parts = []
    for k, (window, u) in enumerate(zip(pieces(ds, [0, 120, 240, 360]), units), start=1):
        rel = f"r{k}i1p1f1/tas_Amon_CCSM4_historical_r{k}i1p1f1_185001-185912.nc"
        parts.append(d.nc(rel, with_gaps(retimed(window, first), "tas", 17 + k), {"tas": f4((12, 2, 3))}, units=u))
    d.text("tas.join.toml", MEMBER_SPEC)
    return JoinCase(d.name, d.id("tas"), "spec", New("member", (1, 2, 3), ("tas",), tuple(parts)))


def members_ncml_units(d: CaseDir) -> JoinCase:
    return members_ncml(d, (DAYS_1850, HOURS_1900, "minutes since 1940-01-01 00:00:00"))


def time_member_units(d: CaseDir) -> JoinCase:
    """Units that differ between members, and within one."""
    return time_member(d, ((CANESM_DAYS,) * 2, (HOURS_1900,) * 2, (DAYS_1850, "hours since 1855-01-01 00:00:00")))


def tas_and(ds: xr.Dataset, name: str, offset: float, long_name: str) -> xr.Dataset:
    """A second variable from the same values, as CMIP writes one variable per file."""
    var = (ds["tas"] + np.float32(offset)).astype("f4").assign_attrs(ds["tas"].attrs, long_name=long_name)
    return ds.drop_vars("tas").assign({name: var})


def union_spec(d: CaseDir) -> JoinCase:
    ds = with_gaps(source("ccsm4").isel(time=slice(0, 480)), "tas", 23)
    tasmax = tas_and(ds, "tasmax", 4.25, "Daily Maximum Near-Surface Air Temperature")
    data = {"tas": f4((12, 2, 3), cmor=True), "tasmax": f4((12, 2, 3), cmor=True)}
    tas_parts = split(d, ds, [0, 240, 480], CCSM4, data)
    max_parts = split(d, tasmax, [0, 240, 480], "tasmax_Amon_CCSM4_historical_r1i1p1", data)
    d.text("atmos.join.toml", """
        files = "*_Amon_CCSM4_*.nc"
        join = "time"
        union = true
        """)
    plan = Union((Existing("time", tas_parts), Existing("time", max_parts)))
    return JoinCase(d.name, d.id("atmos"), "spec", plan)


def union_units(d: CaseDir) -> JoinCase:
    """A union whose parts hold the same times in other units: xr.merge aligns them."""
    ds = with_gaps(source("ccsm4").isel(time=slice(960, 1200)), "tas", 29)
    tasmax = tas_and(ds, "tasmax", 4.25, "Daily Maximum Near-Surface Air Temperature")
    data = {"tas": f4((12, 2, 3), cmor=True), "tasmax": f4((12, 2, 3), cmor=True)}
    tas_parts = split(d, ds, [0, 120, 240], CCSM4, data)
    max_parts = split(d, tasmax, [0, 120, 240], "tasmax_Amon_CCSM4_historical_r1i1p1", data, units=HOURS_1900)
    d.text("atmos.join.toml", """
        files = "*_Amon_CCSM4_*.nc"
        join = "time"
        union = true
        """)
    return JoinCase(d.name, d.id("atmos"), "spec", Union((Existing("time", tas_parts), Existing("time", max_parts))))


def union_ncml(d: CaseDir) -> JoinCase:
    ds = with_gaps(source("ccsm4").isel(time=slice(480, 720)), "tas", 19)
    data = {"tas": f4((12, 2, 3), cmor=True), "tasmin": f4((24, 2, 3), cmor=True)}
    a, b = pieces(ds, [0, 96, 240])
    tas_parts = (d.nc("tas_part1.nc", a, data), d.nc("tas_part2.nc", b, data))
    tasmin = d.nc("tasmin.nc", tas_and(ds, "tasmin", -3.5, "Daily Minimum Near-Surface Air Temperature"), data)
    d.text("atmos.ncml", ncml("""
        <aggregation type="union">
            <netcdf>
                <aggregation type="joinExisting" dimName="time">
                    <netcdf location="tas_part1.nc"/>
                    <netcdf location="tas_part2.nc"/>
                </aggregation>
            </netcdf>
            <netcdf location="tasmin.nc"/>
        </aggregation>
        """))
    return JoinCase(d.name, d.id("atmos"), "ncml", Union((Existing("time", tas_parts), tasmin)))


def ncml_edited(ds: xr.Dataset) -> xr.Dataset:
    """What the NcML of `ncml_edit` asks for, done with xarray."""
    out = ds.rename({"tas": "air_temperature"}).drop_vars("height")
    out.attrs = {k: v for k, v in out.attrs.items() if k != "history"}
    out.attrs |= {"title": "CCSM4 tas, renamed by NcML", "zarrgate_case": np.int32(7)}
    out["lat"].attrs["comment"] = "latitude of the cell centre"
    return out


def ncml_edit(d: CaseDir) -> JoinCase:
    ds = with_gaps(source("ccsm4").isel(time=slice(720, 1080)), "tas", 47)
    parts = split(d, ds, [0, 120, 240, 360], f"parts/{CCSM4}", {"tas": f4((12, 2, 3), cmor=True)})
    d.text("tas_edited.ncml", ncml("""
        <attribute name="title" value="CCSM4 tas, renamed by NcML"/>
        <attribute name="zarrgate_case" type="int" value="7"/>
        <remove name="history" type="attribute"/>
        <remove name="height" type="variable"/>
        <variable name="air_temperature" orgName="tas"/>
        <variable name="lat">
            <attribute name="comment" value="latitude of the cell centre"/>
        </variable>
        <aggregation type="joinExisting" dimName="time">
            <scan location="parts/" suffix=".nc" subdirs="false"/>
        </aggregation>
        """))
    return JoinCase(d.name, d.id("tas_edited"), "ncml", Existing("time", parts), edit=ncml_edited)


# ---------------------------------------------------------------------------------------------
# Refusals: two monthly CCSM4 files (1850-1859, 1860-1869) and one difference
# ---------------------------------------------------------------------------------------------


def decade(k: int) -> xr.Dataset:
    return source("ccsm4").isel(time=slice(120 * k, 120 * (k + 1)))


TAS = {"tas": f4((12, 2, 3), cmor=True)}


def refused(d: CaseDir, first: xr.Dataset, second: xr.Dataset, message: str, *, blame: str = "both",
            encodings: tuple[dict, dict] = (TAS, TAS)) -> JoinCase:
    """A DRS pair that must be refused with `message`, naming both files (or only the second)."""
    a, b = (d.nc(drs(CCSM4, x), x, enc).rel for x, enc in zip((first, second), encodings))
    offenders = (a, b) if blame == "both" else (b,)
    return JoinCase(d.name, d.id(CCSM4), "drs", refusal=message, offenders=offenders, members=(a, b))


def refuse_grid(d: CaseDir) -> JoinCase:
    b = decade(1)
    return refused(d, decade(0), b.assign_coords(lat=b["lat"] + 0.5), "different grids")


def refuse_dimension_length(d: CaseDir) -> JoinCase:
    narrow = {"tas": f4((12, 2, 2), cmor=True)}
    return refused(d, decade(0), decade(1).isel(lon=slice(0, 2)), "different grids", encodings=(TAS, narrow))


def refuse_dtype(d: CaseDir) -> JoinCase:
    a, b = decade(0), decade(1)
    qc_a = xr.DataArray(np.ones(a.sizes["time"], "f4"), dims="time", attrs={"long_name": "quality"})
    qc_b = xr.DataArray(np.array(["good"] * b.sizes["time"], dtype=object), dims="time", attrs={"long_name": "quality"})
    encodings = (TAS | {"qc": {"dtype": "f4", "_FillValue": None}}, TAS)
    return refused(d, a.assign(qc=qc_a), b.assign(qc=qc_b), "cannot be promoted", encodings=encodings)


def refuse_missing(d: CaseDir) -> JoinCase:
    a = decade(0).assign(tasmax=tas_and(decade(0), "tasmax", 4.25, "maximum")["tasmax"])
    case = refused(d, a, decade(1), "is missing from", encodings=(TAS | {"tasmax": f4((12, 2, 3))}, TAS))
    d.text("forced.join.toml", """
        files = "tas_*.nc"
        join = "time"
        force = ["drop-missing-variables"]
        """)
    return case


def forced(d: CaseDir) -> JoinCase:
    """The pair of `refuse_missing` through its spec that drops what is missing."""
    d = CaseDir(d.root, "refuse_missing")
    members = tuple(File(f"{d.name}/{drs(CCSM4, decade(k))}") for k in (0, 1))
    return JoinCase("forced", d.id("forced"), "spec", Existing("time", members, drop=("tasmax",)), notes=("tasmax",))


def refuse_overlap(d: CaseDir) -> JoinCase:
    return refused(d, decade(0), source("ccsm4").isel(time=slice(60, 180)), "overlapping or unsorted")


def refuse_unsorted(d: CaseDir) -> JoinCase:
    b = decade(1)
    order = np.r_[0:2, 3, 2, 4:b.sizes["time"]]  # March before February
    return refused(d, decade(0), b.isel(time=order), "overlapping or unsorted", blame="second")


def refuse_calendar(d: CaseDir) -> JoinCase:
    return refused(d, decade(0), with_calendar(decade(1), "360_day"), "different calendars")


def refuse_shapes(d: CaseDir) -> JoinCase:
    first = decade(0)
    second = retimed(decade(1).isel(time=slice(0, 108)), first.isel(time=slice(0, 108)))  # 9 years, not 10
    a = d.nc("r1i1p1f1/tas_Amon_CCSM4_historical_r1i1p1f1_185001-185912.nc", first, {"tas": f4()})
    b = d.nc("r2i1p1f1/tas_Amon_CCSM4_historical_r2i1p1f1_185001-185812.nc", second, {"tas": f4()})
    d.text("tas.join.toml", r"""
        files = "r*i1p1f1/tas_*.nc"

        [new_dim]
        name = "member"
        from_path = '(r\d+i1p1f1)'
        """)
    return JoinCase(d.name, d.id("tas"), "spec", refusal="different shapes", offenders=(a.rel, b.rel),
                    members=(a.rel, b.rel))


def member_pair(d: CaseDir, first: xr.Dataset, second: xr.Dataset, units: tuple[str, str],
                calendars: tuple[str, str], message: str) -> JoinCase:
    """Two members (a spec with a new dimension) that must be refused with `message`."""
    rels = [f"r{k}i1p1f1/tas_Amon_CCSM4_historical_r{k}i1p1f1_185001-185912.nc" for k in (1, 2)]
    a, b = (d.nc(rel, x, {"tas": f4()}, units=u, calendar=c) for rel, x, u, c in zip(rels, (first, second), units, calendars))
    d.text("tas.join.toml", MEMBER_SPEC)
    return JoinCase(d.name, d.id("tas"), "spec", refusal=message, offenders=(a.rel, b.rel), members=(a.rel, b.rel))


def refuse_member_instants(d: CaseDir) -> JoinCase:
    """The same time numbers in units a day apart are other instants: xr.concat(join="exact")
    cannot align them, and serving the first member's times would put the second a day early."""
    first = decade(0).drop_vars(["time_bnds", "lat_bnds", "lon_bnds"])
    later = first.assign_coords(time=first.indexes["time"].shift(1, "D"))
    units = (DAYS_1850, "days since 1850-01-02 00:00:00")
    return member_pair(d, first, later, units, ("noleap", "noleap"), "different grids")


def refuse_member_calendar(d: CaseDir) -> JoinCase:
    """Equal time numbers in noleap and in 360_day: other dates, refused as other calendars."""
    first = decade(0).drop_vars(["time_bnds", "lat_bnds", "lon_bnds"])
    numbers = cftime.date2num(first["time"].values, DAYS_1850, "noleap")
    other = first.assign_coords(time=xr.DataArray(cftime.num2date(numbers, DAYS_1850, "360_day"), dims="time",
                                                  attrs=first["time"].attrs))
    return member_pair(d, first, other, (DAYS_1850, DAYS_1850), ("noleap", "360_day"), "different calendars")


def refuse_no_files(d: CaseDir) -> JoinCase:
    spec = d.text("empty.join.toml", """
        files = "nomatch_*.nc"
        join = "time"
        """)
    return JoinCase(d.name, d.id("empty"), "spec", refusal="no files", offenders=(spec,))


# ---------------------------------------------------------------------------------------------
# The whole tree
# ---------------------------------------------------------------------------------------------

#: the joins that must succeed, and those that must be refused, by builder (= case name)
JOINS = [
    drs_aligned, units, calendar_names, bounds_units, packing_int16, packing_mixed, uneven, levels, nc3,
    members_spec, members_ncml, time_member, union_spec, union_ncml, ncml_edit, forced,
    members_units, members_ncml_units, time_member_units, union_units,
]
REFUSALS = [
    refuse_grid, refuse_dimension_length, refuse_dtype, refuse_missing, refuse_overlap,
    refuse_unsorted, refuse_calendar, refuse_shapes, refuse_no_files, refuse_member_instants,
    refuse_member_calendar,
]


def build(root: Path) -> dict[str, JoinCase]:
    """Writes every case under `root`, one directory each, and returns them by name."""
    # refusals first: `forced` joins the files of `refuse_missing`
    return {b.__name__: b(CaseDir(root, b.__name__)) for b in REFUSALS + JOINS}


def missing_corpus() -> list[str]:
    return [rel for rel in SOURCES.values() if not (CORPUS / rel).is_file()]


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "join-cases")
    for c in build(out).values():
        what = f"refused: {c.refusal}" if c.refusal else f"{len(c.members)} files"
        print(f"{c.name:24s} {c.kind:5s} {c.id:55s} {what}")

"""The requests of test_ops.py and, for each, its oracle: what xarray says the answer is.

An `Op` is one request on one dataset. For a subset, the oracle is `select` applied to the
picked variables of the original file; for an average, it is `ops_oracle.average` over that
selection with the weights and time stage the request names. The generated datasets are
those of `ops_data.py`; the corpus files are read in place from `$ZARRGATE_CORPUS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import xarray as xr

from gateway import CORPUS
from ops_oracle import Select, area, chain, companions, curvilinear_area, isel, level_range, pick, sel

CORPUS_FILES = {
    "hadgem": "mini-esgf-data/test_data/badc/cmip5/data/cmip5/output1/MOHC/HadGEM2-ES/historical/mon/atmos/Amon/"
    "r1i1p1/latest/tas/tas_Amon_HadGEM2-ES_historical_r1i1p1_185912-188411.nc",
    "ccsm4": "mini-esgf-data/test_data/badc/cmip5/data/cmip5/output1/NCAR/CCSM4/historical/mon/atmos/Amon/"
    "r1i1p1/latest/tas/tas_Amon_CCSM4_historical_r1i1p1_185001-200512.nc",
    "era5": "mini-esgf-data/test_data/pool/data/c3s-cica-atlas/ERA5/psl_ERA5_mon_194001-202212.nc",
    "tsice": "mini-esgf-data/test_data/gws/nopw/j04/cp4cds1_vol1/data/c3s-cmip5/output1/NCC/NorESM1-ME/rcp60/"
    "mon/seaIce/OImon/r1i1p1/tsice/v20120614/tsice_OImon_NorESM1-ME_rcp60_r1i1p1_200601-205012.nc",
    "siconc": "mini-esgf-data/test_data/badc/cmip6/data/CMIP6/CMIP/CCCma/CanESM5/historical/r1i1p1f1/SImon/"
    "siconc/gn/latest/siconc_SImon_CanESM5_historical_r1i1p1f1_gn_185001-201412.nc",
}
TIME_ALIASES = {"time", "t"}


def identity(ds: xr.Dataset) -> xr.Dataset:
    return ds


@dataclass(frozen=True)
class Op:
    """One request (`args` without `dataset`) on `source`, and what xarray says it gives.

    `select` is the selection on the picked variables. For averages, `space` names the file
    dimensions of the weighted stage (the request may spell them with aliases); the weights,
    the time stage and the process come from `args`. `coords=False` skips the check of the
    scalar coordinates left by averaged dimensions where the contract leaves their value open
    (a range across the dateline, a 2-D latitude)."""

    id: str
    source: str
    args: dict
    select: Select = identity
    space: tuple[str, ...] = ()
    coords: bool = True

    @property
    def process(self) -> str:
        return "average" if {"dims", "freq"} & set(self.args) else "subset"

    @property
    def names(self) -> list[str]:
        return self.args["var"].split(",")

    @property
    def weights(self) -> str:
        return self.args.get("weights", "none").lower()

    @property
    def time(self) -> str | None:
        if TIME_ALIASES & set(self.args.get("dims", "").split(",")):
            return "mean"
        return self.args.get("freq")


def months(a: str | None, b: str | None = None) -> Select:
    """`.sel(time=slice(a, b))`: xarray expands partial dates in the file's calendar."""
    return sel(time=slice(a, b))


N0, N180, P360, CURV, ENS = "noleap0360", "noleap180", "plev360", "curvilinear", "ensemble"
LATLON = ("lat", "lon")
DATELINE = "170,-10,-170,10"
AROUND_DATELINE = area(170, -10, -170, 10)
YEAR_2001 = months("2001", "2001")
PLEV_RANGE = level_range("plev", 85000, 25000)

SUBSETS = [
    Op("noleap-months", N0, {"var": "tas", "time": "2001-02/2001-03"}, months("2001-02", "2001-03")),
    Op("noleap-open-start", N0, {"var": "tas", "time": "/2000-01-10"}, months(None, "2000-01-10")),
    Op("noleap-open-end", N0, {"var": "tas", "time": "2002-12-25/"}, months("2002-12-25")),
    # The single-value form of the doc's curl example ("time": "2000"); elsewhere START/END.
    Op("noleap-one-year", N0, {"var": "tas", "time": "2001"}, YEAR_2001),
    Op(
        "noleap-no-feb-29",
        N0,
        {"var": "tas", "time": "2000-02-27/2000-03-02", "area": "100,-50,200,-20"},
        chain(months("2000-02-27", "2000-03-02"), area(100, -50, 200, -20)),
    ),
    Op(
        "dateline-0360",
        N0,
        {"var": "tas", "area": DATELINE, "time": "2000-12/2001-01"},
        chain(AROUND_DATELINE, months("2000-12", "2001-01")),
    ),
    Op(
        "dateline-180",
        N180,
        {"var": "tas", "area": DATELINE, "time": "2000-12/2001-01"},
        chain(AROUND_DATELINE, months("2000-12", "2001-01")),
    ),
    Op("meridian-0360", N0, {"var": "tas", "area": "-30,20,40,60"}, area(-30, 20, 40, 60)),
    Op("meridian-180", N180, {"var": "tas", "area": "-30,20,40,60"}, area(-30, 20, 40, 60)),
    Op(
        "globe-from-180-on-0360",
        N0,
        {"var": "tas", "area": "-180,-90,180,90", "time": "/2000-01-05"},
        chain(area(-180, -90, 180, 90), months(None, "2000-01-05")),
    ),
    Op("isel-negative", N0, {"var": "tas", "isel": "time=-40:,lon=:5"}, isel(time=slice(-40, None), lon=slice(None, 5))),
    Op("isel-ranges", N0, {"var": "tas", "isel": "lat=3:9,time=95:105"}, isel(lat=slice(3, 9), time=slice(95, 105))),
    Op("level-range", P360, {"var": "ta", "level": "85000/25000", "time": "2001/2001"}, chain(PLEV_RANGE, YEAR_2001)),
    Op(
        "level-range-reversed",
        P360,
        {"var": "ta", "level": "25000/85000", "time": "2001/2001"},
        chain(PLEV_RANGE, YEAR_2001),
    ),
    Op(
        "level-values-feb-30",
        P360,
        {"var": "ta,ua", "level": "100000,50000", "time": "2001-02-30/2001-04-15"},
        chain(sel(plev=[100000.0, 50000.0]), months("2001-02-30", "2001-04-15")),
    ),
    Op(
        "packed-int16",
        P360,
        {"var": "ua", "time": "/2000-06", "area": "0,0,60,30"},
        chain(months(None, "2000-06"), area(0, 0, 60, 30)),
    ),
    Op("360day-open-end", P360, {"var": "ta", "time": "2003-11/"}, months("2003-11")),
    Op("curvilinear-box", CURV, {"var": "tos", "area": "100,-40,200,10"}, curvilinear_area("tos", 100, -40, 200, 10)),
    Op(
        "curvilinear-meridian",
        CURV,
        {"var": "tos", "area": "340,-20,20,20", "time": "2011/2011"},
        chain(months("2011", "2011"), curvilinear_area("tos", 340, -20, 20, 20)),
    ),
    Op(
        "members-missing-month",
        ENS,
        {"var": "pr", "isel": "realization=1:3", "time": "2001-05/2001-07"},
        chain(isel(realization=slice(1, 3)), months("2001-05", "2001-07")),
    ),
    Op("members-missing-value", ENS, {"var": "pr", "area": "-40,-50,40,0"}, area(-40, -50, 40, 0)),
]

COSLAT = {"dims": "lat,lon", "weights": "coslat"}
AVERAGES = [
    Op("time-mean", N0, {"var": "tas", "dims": "time"}),
    Op(
        "coslat-daily",
        N0,
        {"var": "tas", **COSLAT, "time": "2001-02-20/2001-03-10"},
        months("2001-02-20", "2001-03-10"),
        LATLON,
    ),
    Op("coslat-yearly", N0, {"var": "tas", "dims": "latitude,longitude", "weights": "coslat", "freq": "year"}, space=LATLON),
    Op(
        "coslat-monthly-partial",
        N0,
        {"var": "tas", "dims": "y,x", "weights": "coslat", "freq": "month", "time": "2000-11-10/2001-02"},
        months("2000-11-10", "2001-02"),
        LATLON,
    ),
    Op(
        "daily-with-an-empty-day",
        N0,
        {"var": "tas", "dims": "lat,lon", "freq": "day", "time": "2001-02-27/2001-03-02"},
        months("2001-02-27", "2001-03-02"),
        LATLON,
    ),
    Op("monthly-per-cell", N0, {"var": "tas", "freq": "month", "time": "2002-10/"}, months("2002-10")),
    Op(
        "dateline-yearly-0360",
        N0,
        {"var": "tas", "area": DATELINE, **COSLAT, "freq": "year"},
        AROUND_DATELINE,
        LATLON,
        coords=False,
    ),
    Op(
        "dateline-yearly-180",
        N180,
        {"var": "tas", "area": DATELINE, **COSLAT, "freq": "year"},
        AROUND_DATELINE,
        LATLON,
        coords=False,
    ),
    Op("area-weighted-yearly", P360, {"var": "ta", "dims": "lat,lon", "weights": "area", "freq": "year"}, space=LATLON),
    Op("over-level", P360, {"var": "ta", "dims": "plev", "time": "2002/2002"}, months("2002", "2002"), ("plev",)),
    Op(
        "packed-area-weighted-time-mean",
        P360,
        {"var": "ua", "dims": "lat,lon,time", "weights": "area", "level": "85000/50000"},
        level_range("plev", 85000, 50000),
        LATLON,
    ),
    Op(
        "360day-monthly",
        P360,
        {"var": "ta", **COSLAT, "freq": "month", "time": "2001-02/2001-05", "level": "50000"},
        chain(sel(plev=[50000.0]), months("2001-02", "2001-05")),
        LATLON,
    ),
    Op("members", ENS, {"var": "pr", "dims": "realization"}, space=("realization",)),
    Op(
        "members-monthly-missing-month",
        ENS,
        {"var": "pr", "dims": "member,lat,lon", "weights": "coslat", "freq": "month", "time": "2001/2001"},
        YEAR_2001,
        ("realization", "lat", "lon"),
    ),
    Op("members-yearly", ENS, {"var": "pr", "dims": "ensemble", "freq": "year"}, space=("realization",)),
    Op("curvilinear-coslat", CURV, {"var": "tos", **COSLAT}, space=("y", "x"), coords=False),
]

CORPUS_OPS = [
    Op(
        "hadgem-360day",
        "hadgem",
        {"var": "tas", "time": "1860-02-30/1861", "area": "170,-90,-170,40"},
        chain(months("1860-02-30", "1861"), area(170, -90, -170, 40)),
    ),
    Op(
        "ccsm4-west-to-east",
        "ccsm4",
        {"var": "tas", "time": "1850-03/1851-02", "area": "240,-90,130,10"},
        chain(months("1850-03", "1851-02"), area(240, -90, 130, 10)),
    ),
    Op(
        "era5-dateline",
        "era5",
        {"var": "psl", "time": "1990-06/1991", "area": DATELINE},
        chain(months("1990-06", "1991"), AROUND_DATELINE),
    ),
    Op(
        "tsice-curvilinear",
        "tsice",
        {"var": "tsice", "time": "2040/", "area": "0,40,120,90"},
        chain(months("2040"), curvilinear_area("tsice", 0, 40, 120, 90)),
    ),
    Op(
        "siconc-curvilinear",
        "siconc",
        {"var": "siconc", "time": "/1850-06", "area": "10,-80,180,0"},
        chain(months(None, "1850-06"), curvilinear_area("siconc", 10, -80, 180, 0)),
    ),
    Op(
        "hadgem-coslat-yearly",
        "hadgem",
        {"var": "tas", **COSLAT, "freq": "year", "time": "1860/1869"},
        months("1860", "1869"),
        LATLON,
    ),
    Op("ccsm4-time-mean", "ccsm4", {"var": "tas", "dims": "time", "time": "1990/"}, months("1990")),
    Op(
        "era5-coslat-yearly",
        "era5",
        {"var": "psl", **COSLAT, "freq": "year", "time": "2000/2004"},
        months("2000", "2004"),
        LATLON,
    ),
    Op("era5-dateline-time-mean", "era5", {"var": "psl", "dims": "time", "area": DATELINE}, AROUND_DATELINE, coords=False),
    Op(
        "tsice-masked-time-mean",
        "tsice",
        {"var": "tsice", "dims": "time", "area": "0,40,120,90"},
        curvilinear_area("tsice", 0, 40, 120, 90),
    ),
]


def find(op_id: str) -> Op:
    return next(op for op in SUBSETS + AVERAGES + CORPUS_OPS if op.id == op_id)


def expected_selection(src: xr.Dataset, op: Op) -> xr.Dataset:
    measures = companions(src, op.names) - {src[n].attrs.get("grid_mapping") for n in op.names}
    extra = sorted(measures) if op.weights == "area" else []
    return op.select(pick(src, op.names + extra))


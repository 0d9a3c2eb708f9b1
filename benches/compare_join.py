"""Joining 10,000 files into one dataset: zarrgate's DRS join against kerchunk, side by side.

Side by side, in one run, on the same machine and the same files:

- **Data.** One ESGF/DRS directory of N (default 10,000) daily NetCDF-4 files,
  `tas_day_BENCH_historical_r1i1p1f1_gn_YYYYMMDD-YYYYMMDD.nc`, one day per file from
  1850-01-01 (noleap): an unlimited `time` (float64, days since 1850-01-01, chunks of 1) with
  `time_bnds`, `lat` (18) and `lon` (36) with bounds, a scalar `height`, and
  `tas(time, lat, lon)` float32 in one chunk (1, 18, 36), zlib level 1 with shuffle, with
  CMIP6-like attributes (a `tracking_id` per file). Generated once by 2 processes and kept
  under `--work` (default /tmp/zarrgate-join-bench/files-N/).
- **zarrgate.** `zarrgate index DIR --out CATALOG --jobs 2` into an empty catalog: it indexes
  every file and joins them (docs/joins.md). Reference bytes are the joined dataset's document
  (`catalog/joins/ID.json`: metadata, member list and chunk tables); the whole catalog, per-file
  references included, is reported too.
- **kerchunk.** `SingleHdf5ToZarr(path).translate()` on every file (default
  `inline_threshold`, a `multiprocessing.Pool` of 2), then
  `MultiZarrToZarr(refs, concat_dims=["time"], identical_dims=[lat, lon, their bounds,
  height]).translate(filename)`, which writes the JSON with ujson as kerchunk does. Both phases
  are timed; the per-file references are kept in memory and their JSON size reported apart.
- **Reading.** A gateway serves the catalog; the joined dataset is opened with
  `xr.open_zarr("s3://bench/ID")` (s3fs) and kerchunk's JSON with
  `xr.open_dataset("reference://")`. Open times (median after one warm-up) and a one-year read
  of `tas` are timed. Both must equal the original files (netCDF4) on `time` everywhere and
  on `tas` at a few time indices.

The page cache holds every file before each side runs.

    .venv/bin/python benches/compare_join.py [--files 10000] [--work DIR] [--skip-kerchunk]

Targets (issue 6): zarrgate indexes ≥ 10× faster than kerchunk and in
under 60 s, with ≤ 1/5 of kerchunk's reference bytes. Prints a markdown table for
docs/benchmarks.md and writes target/bench/join.json (join-N.json for another N).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

from compare_ops import fmt, warm_page_cache  # noqa: E402
from gateway import export_catalog, start_gateway  # noqa: E402

PREFIX = "tas_day_BENCH_historical_r1i1p1f1_gn"
UNITS = "days since 1850-01-01"
CALENDAR = "noleap"
NY, NX = 18, 36
JOBS = 2
IDENTICAL = ["lat", "lon", "lat_bnds", "lon_bnds", "height"]
TARGET_SPEEDUP, TARGET_SECONDS, TARGET_BYTES = 10.0, 60.0, 0.2
READ_STEPS = 365


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def day_stamp(day: int) -> str:
    import cftime

    return cftime.num2date(day, UNITS, CALENDAR).strftime("%Y%m%d")


def file_name(day: int) -> str:
    stamp = day_stamp(day)
    return f"{PREFIX}_{stamp}-{stamp}.nc"


def global_attributes(day: int) -> dict:
    import uuid

    return {
        "Conventions": "CF-1.7 CMIP-6.2",
        "activity_id": "CMIP",
        "branch_method": "standard",
        "branch_time_in_child": 0.0,
        "branch_time_in_parent": 0.0,
        "creation_date": "2026-11-26T00:00:00Z",
        "data_specs_version": "01.00.29",
        "experiment": "all-forcing simulation of the recent past",
        "experiment_id": "historical",
        "forcing_index": 1,
        "frequency": "day",
        "further_info_url": "https://furtherinfo.es-doc.org/CMIP6.BENCH.BENCH.historical.none.r1i1p1f1",
        "grid": "regular 10 x 10 degree grid",
        "grid_label": "gn",
        "initialization_index": 1,
        "institution": "zarrgate benchmark (benches/compare_join.py)",
        "institution_id": "BENCH",
        "license": "CC BY 4.0",
        "mip_era": "CMIP6",
        "nominal_resolution": "1000 km",
        "parent_experiment_id": "piControl",
        "physics_index": 1,
        "product": "model-output",
        "realization_index": 1,
        "realm": "atmos",
        "source": "BENCH: generated values",
        "source_id": "BENCH",
        "source_type": "AOGCM",
        "sub_experiment_id": "none",
        "table_id": "day",
        "title": "BENCH output prepared for the zarrgate join benchmark",
        "tracking_id": f"hdl:21.14100/{uuid.UUID(int=random.Random(day).getrandbits(128))}",
        "variable_id": "tas",
        "variant_label": "r1i1p1f1",
    }


def axis(ds, name: str, values, step: float) -> None:
    import numpy as np

    latitude = name == "lat"
    ds.createDimension(name, len(values))
    v = ds.createVariable(name, "f8", (name,))
    v.setncatts(
        {
            "bounds": f"{name}_bnds",
            "units": "degrees_north" if latitude else "degrees_east",
            "axis": "Y" if latitude else "X",
            "long_name": "Latitude" if latitude else "Longitude",
            "standard_name": "latitude" if latitude else "longitude",
        }
    )
    v[:] = values
    ds.createVariable(f"{name}_bnds", "f8", (name, "bnds"))[:] = np.stack([values - step / 2, values + step / 2], 1)


def tas_values(day: int):
    """Smooth climate, a seasonal cycle and noise, quantized to 1/64 as in compare_ops."""
    import numpy as np

    lat = np.linspace(-85.0, 85.0, NY)
    lon = np.arange(NX) * 10.0
    climate = 250.0 + 45.0 * np.cos(np.deg2rad(lat))[:, None] + 3.0 * np.sin(np.deg2rad(lon))[None, :]
    season = 10.0 * np.sin(2 * np.pi * day / 365) * np.sign(lat)[:, None]
    noise = np.random.default_rng(day).normal(0.0, 2.0, (NY, NX))
    return (np.round((climate + season + noise) * 64) / 64).astype("f4")[None]


def write_day(out: Path, day: int) -> None:
    import netCDF4
    import numpy as np

    with netCDF4.Dataset(out / file_name(day), "w", format="NETCDF4") as ds:
        ds.setncatts(global_attributes(day))
        ds.createDimension("time", None)
        ds.createDimension("bnds", 2)
        t = ds.createVariable("time", "f8", ("time",), chunksizes=(1,))
        t.setncatts({"bounds": "time_bnds", "units": UNITS, "calendar": CALENDAR, "axis": "T",
                     "long_name": "time", "standard_name": "time"})
        t[:] = [day + 0.5]
        ds.createVariable("time_bnds", "f8", ("time", "bnds"), chunksizes=(1, 2))[:] = [[day, day + 1.0]]
        axis(ds, "lat", np.linspace(-85.0, 85.0, NY), 10.0)
        axis(ds, "lon", np.arange(NX) * 10.0, 10.0)
        h = ds.createVariable("height", "f8", ())
        h.setncatts({"units": "m", "axis": "Z", "positive": "up", "long_name": "height", "standard_name": "height"})
        h[...] = 2.0
        v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, complevel=1, shuffle=True,
                              chunksizes=(1, NY, NX), fill_value=np.float32(1e20))
        v.setncatts({"standard_name": "air_temperature", "long_name": "Near-Surface Air Temperature",
                     "comment": "near-surface (usually, 2 meter) air temperature", "units": "K",
                     "cell_methods": "area: time: mean", "cell_measures": "area: areacella",
                     "history": "generated", "missing_value": np.float32(1e20), "coordinates": "height"})
        v[:] = tas_values(day)


def write_days(job: tuple[str, list[int]]) -> int:
    out, days = job
    for day in days:
        write_day(Path(out), day)
    return len(days)


def make_files(work: Path, n: int) -> tuple[Path, float | None]:
    """The N files under work/files-N (seconds to generate, None when they were cached). A
    directory that is complete has been renamed from files-N.partial."""
    data = work / f"files-{n}"
    if data.is_dir():
        return data, None
    partial = work / f"files-{n}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.perf_counter()
    jobs = [(str(partial), list(range(i, min(i + 100, n)))) for i in range(0, n, 100)]
    with multiprocessing.Pool(JOBS) as pool:
        assert sum(pool.imap_unordered(write_days, jobs)) == n
    seconds = time.perf_counter() - started
    partial.rename(data)
    return data, seconds


# ---------------------------------------------------------------------------------------------
# zarrgate
# ---------------------------------------------------------------------------------------------


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def index_zarrgate(exe: str, data: Path, catalog: Path) -> dict:
    """`zarrgate index` into an empty catalog: wall time, the join's entry and sizes."""
    shutil.rmtree(catalog, ignore_errors=True)
    cmd = [exe, "index", str(data), "--out", str(catalog), "--jobs", str(JOBS)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stderr[-4000:]}")
    exported = export_catalog(catalog)
    joins = json.loads((exported / "catalog.json").read_text()).get("joins") or {}
    if len(joins) != 1:
        raise SystemExit(f"expected one joined dataset in {catalog}/catalog.json, found {sorted(joins)} "
                         f"(does {exe} join DRS directories? docs/joins.md)")
    (dataset, entry), = joins.items()
    if entry.get("error") or not entry.get("refs"):
        raise SystemExit(f"join {dataset} failed: status {entry.get('status')!r}, error {entry.get('error')!r}")
    refs = exported / entry["refs"]
    # The join document holds the member list and the chunk tables (src/join/doc.rs); anything
    # stored beside it under the same name would count too.
    files = sorted(p for p in refs.parent.iterdir() if p == refs or p.name.startswith(refs.stem + "."))
    return {
        "seconds": seconds,
        "command": " ".join(cmd),
        "dataset": dataset,
        "status": entry.get("status"),
        "members": len(entry.get("members") or []),
        "notes": entry.get("notes"),
        "ref_files": {p.name: p.stat().st_size for p in files},
        "ref_bytes": sum(p.stat().st_size for p in files),
        "entry_bytes": len(json.dumps({dataset: entry}, separators=(",", ":")).encode()),
        "catalog_bytes": tree_bytes(catalog),
    }


# ---------------------------------------------------------------------------------------------
# kerchunk
# ---------------------------------------------------------------------------------------------


def kerchunk_single(path: str) -> dict:
    from kerchunk.hdf import SingleHdf5ToZarr

    return SingleHdf5ToZarr(path).translate()


def index_kerchunk(files: list[Path], out: Path) -> dict:
    """SingleHdf5ToZarr on every file (2 processes), then MultiZarrToZarr into `out`."""
    import ujson
    from kerchunk.combine import MultiZarrToZarr

    started = time.perf_counter()
    with multiprocessing.Pool(JOBS) as pool:
        singles = pool.map(kerchunk_single, [str(p) for p in files], chunksize=32)
    single_seconds = time.perf_counter() - started
    started = time.perf_counter()
    MultiZarrToZarr(singles, concat_dims=["time"], identical_dims=IDENTICAL).translate(filename=str(out))
    combine_seconds = time.perf_counter() - started
    return {
        "seconds": single_seconds + combine_seconds,
        "single_seconds": single_seconds,
        "combine_seconds": combine_seconds,
        "ref_bytes": out.stat().st_size,
        "single_ref_bytes": sum(len(ujson.dumps(r)) for r in singles),
    }


# ---------------------------------------------------------------------------------------------
# Reading and checking
# ---------------------------------------------------------------------------------------------


def time_coder():
    import xarray as xr

    return xr.coders.CFDatetimeCoder(use_cftime=True)


def open_gateway(endpoint: str, dataset: str):
    import xarray as xr

    so = {"anon": True, "endpoint_url": endpoint}
    return xr.open_zarr(f"s3://bench/{dataset}", storage_options=so, decode_times=time_coder())


def open_kerchunk(refs: Path):
    import xarray as xr

    kw = {"storage_options": {"fo": str(refs)}, "consolidated": False}
    return xr.open_dataset("reference://", engine="zarr", backend_kwargs=kw, decode_times=time_coder())


def timed_opens(open_fn, repeat: int) -> dict:
    """Median seconds to open (metadata and the decoded time axis) after one warm-up, and
    seconds to load the first READ_STEPS steps of tas."""
    open_fn().close()
    opens = []
    for _ in range(repeat):
        started = time.perf_counter()
        ds = open_fn()
        opens.append(time.perf_counter() - started)
        ds.close()
    with open_fn() as ds:
        started = time.perf_counter()
        ds["tas"].isel(time=slice(0, READ_STEPS)).load()
        read = time.perf_counter() - started
    return {"open_seconds": statistics.median(opens), "read_seconds": read}


def check_against_files(open_fn, files: list[Path], name: str) -> list[int]:
    """The decoded time axis everywhere and tas at a few indices equal the files' values."""
    import cftime
    import netCDF4
    import numpy as np

    n = len(files)
    picks = sorted({0, min(1, n - 1), n // 2, n - 1, *random.Random(6).sample(range(n), min(4, n))})
    with open_fn() as ds:
        assert ds.sizes["time"] == n, f"{name}: {ds.sizes['time']} time steps, not {n}"
        want = np.array([day + 0.5 for day in range(n)])
        got = cftime.date2num(list(ds["time"].values), UNITS, CALENDAR)
        np.testing.assert_array_equal(got, want, err_msg=f"{name}: time")
        for i in picks:
            with netCDF4.Dataset(files[i]) as f:
                assert f["time"][0] == want[i], f"{files[i]}: not day {i}"
                np.testing.assert_array_equal(ds["tas"].isel(time=i).values, f["tas"][0].filled(np.nan), err_msg=f"{name}: tas[{i}]")
    return picks


def read_side(open_fn, files: list[Path], name: str, repeat: int) -> dict:
    picks = check_against_files(open_fn, files, name)
    return {**timed_opens(open_fn, repeat), "checked_time_indices": picks}


def agree(zarrgate_fn, kerchunk_fn, picks: list[int]) -> None:
    import numpy as np

    with zarrgate_fn() as z, kerchunk_fn() as k:
        assert list(z["time"].values) == list(k["time"].values), "time differs between zarrgate and kerchunk"
        for i in picks:
            np.testing.assert_array_equal(z["tas"].isel(time=i).values, k["tas"].isel(time=i).values, err_msg=f"tas[{i}]")


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def size(n: int) -> str:
    return f"{n / 1e6:,.2f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"


def print_table(summary: dict) -> None:
    z, k, n = summary.get("zarrgate"), summary.get("kerchunk"), summary["files"]
    print(f"{n:,} daily files ({summary['data_mb']:,.1f} MB) in one DRS directory, `{PREFIX}_*.nc`\n")
    print("| tool | index time | reference bytes | ratio |")
    print("|---|--:|--:|---|")
    if k:
        print(f"| kerchunk {summary['kerchunk_version']}: `SingleHdf5ToZarr` × {n:,} (Pool of {JOBS}) + "
              f"`MultiZarrToZarr` | {k['seconds']:,.1f} s ({k['single_seconds']:,.1f} + {k['combine_seconds']:,.1f}) | "
              f"{size(k['ref_bytes'])} | |")
    if z:
        ratio = "–"
        if k:
            ratio = (f"**{k['seconds'] / z['seconds']:.1f}× faster**, "
                     f"**{z['ref_bytes'] / k['ref_bytes']:.3f}× the bytes**")
        print(f"| zarrgate: `index --jobs {JOBS}`, cold catalog | {z['seconds']:,.1f} s | {size(z['ref_bytes'])} | {ratio} |")
    print(f"| target | zarrgate ≥ {TARGET_SPEEDUP:.0f}× faster, < {TARGET_SECONDS:.0f} s | "
          f"≤ {TARGET_BYTES:g}× kerchunk's | |")
    print("\n| all references written | bytes |")
    print("|---|--:|")
    if k:
        print(f"| kerchunk: the per-file references (ujson, kept in memory) + the combined JSON | "
              f"{size(k['single_ref_bytes'])} + {size(k['ref_bytes'])} |")
    if z:
        print(f"| zarrgate: the whole catalog (per-file references, catalog.json, the join) | {size(z['catalog_bytes'])} |")
    reads = summary.get("reads") or {}
    if reads:
        print(f"\n| xarray | open (median of {summary['repeat']}) | load tas[:{READ_STEPS}] |")
        print("|---|--:|--:|")
        for side, label in (("zarrgate", "`xr.open_zarr(\"s3://bench/ID\")` via the gateway (s3fs)"),
                            ("kerchunk", "`xr.open_dataset(\"reference://\")` on kerchunk's JSON")):
            if side in reads:
                r = reads[side]
                print(f"| {label} | {fmt(r['open_seconds'], ' s', 3)} | {fmt(r['read_seconds'], ' s', 3)} |")
        checked = next(iter(reads.values()))["checked_time_indices"]
        print(f"\nChecked against the files (netCDF4): every time value, tas at time indices {checked}"
              + ("; zarrgate and kerchunk agree on both." if len(reads) == 2 else "."))
    if z:
        print(f"\nzarrgate: `{z['command']}` → dataset `{z['dataset']}` ({z['members']} members, "
              f"status {z['status']!r}); reference bytes: {z['ref_files']}; its catalog.json entry: "
              f"{z['entry_bytes']:,} bytes")
    print(f"\nCommand: `{summary['command']}`")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000, help="number of daily files")
    ap.add_argument("--work", default="/tmp/zarrgate-join-bench", help="cache of generated files and outputs")
    ap.add_argument("--bin", default=os.environ.get("ZARRGATE_BIN", str(REPO / "target" / "release" / "zarrgate")))
    ap.add_argument("--repeat", type=int, default=3, help="opens timed per reader")
    ap.add_argument("--skip-kerchunk", action="store_true")
    ap.add_argument("--skip-zarrgate", action="store_true", help="kerchunk only (no release binary needed)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import kerchunk

    work = Path(args.work).resolve()
    data, generated = make_files(work, args.files)
    if generated is not None:
        print(f"generated {args.files} files in {generated:.1f} s: {data}", file=sys.stderr)
    files = sorted(data.glob("*.nc"))
    assert len(files) == args.files, f"{data} holds {len(files)} files, not {args.files}"
    summary = {
        "files": args.files,
        "data_mb": sum(p.stat().st_size for p in files) / 1e6,
        "generate_seconds": generated,
        "kerchunk_version": kerchunk.__version__,
        "repeat": args.repeat,
        "command": " ".join([".venv/bin/python", "benches/compare_join.py", *sys.argv[1:]]),
    }
    openers = {}
    if not args.skip_zarrgate:
        for p in files:
            warm_page_cache(p)
        summary["zarrgate"] = index_zarrgate(args.bin, data, work / f"catalog-{args.files}")
        print(f"zarrgate: {summary['zarrgate']}", file=sys.stderr)
    if not args.skip_kerchunk:
        for p in files:
            warm_page_cache(p)
        refs = work / f"kerchunk-{args.files}.json"
        summary["kerchunk"] = index_kerchunk(files, refs)
        print(f"kerchunk: {summary['kerchunk']}", file=sys.stderr)
        openers["kerchunk"] = lambda: open_kerchunk(refs)

    reads = {}
    if "kerchunk" in openers:
        reads["kerchunk"] = read_side(openers["kerchunk"], files, "kerchunk", args.repeat)
    if "zarrgate" in summary:
        z = summary["zarrgate"]
        os.environ["ZARRGATE_SERVE_BIN"] = args.bin
        gw = start_gateway(None, "bench", work / f"catalog-{args.files}")
        try:
            openers["zarrgate"] = lambda: open_gateway(gw.endpoint, z["dataset"])
            reads["zarrgate"] = read_side(openers["zarrgate"], files, "zarrgate", args.repeat)
            if "kerchunk" in openers:
                agree(openers["zarrgate"], openers["kerchunk"], reads["zarrgate"]["checked_time_indices"])
        finally:
            gw.stop()
    summary["reads"] = reads

    out_dir = REPO / "target" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "join.json" if args.files == 10_000 else f"join-{args.files}.json"
    (out_dir / name).write_text(json.dumps(summary, indent=2))
    print_table(summary)


if __name__ == "__main__":
    main()

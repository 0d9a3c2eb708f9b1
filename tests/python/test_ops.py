"""Server-side subset and average (docs/operations.md) through a real gateway, against xarray.

Every result is fetched over plain HTTP from a `zarrgate serve` process and compared with
xarray on the original file: subsets exactly (values and NaN positions, dims, coordinates,
attributes, dtype and encoding, decoded times), averages to rtol 1e-6 (`ops_client.check`).
The requests and their oracles are in `ops_cases.py`; the generated datasets in
`ops_data.py`. The corpus files are served in place through a directory of symbolic links
(the indexer follows them). Then the formats, and the problem documents of bad requests.

The cache, the OGC API – Processes and jobs are in `test_ops_service.py`.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
import requests
import xarray as xr

from gateway import corpus_missing, start_gateway
from ops_cases import AVERAGES, CORPUS, CORPUS_FILES, CORPUS_OPS, DATELINE, N0, N180, P360, SUBSETS, Op, find
from ops_cases import expected_selection
from ops_client import PROBLEM, Client, check, data, ok_result, ops, original, problem  # noqa: F401 (fixtures)
from ops_oracle import CFTIME, assert_same, average


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if not CORPUS.is_dir():
        corpus_missing(f"no corpus at {CORPUS} (set ZARRGATE_CORPUS)")
    tmp = tmp_path_factory.mktemp("ops-corpus")
    links = tmp / "links"
    links.mkdir()
    paths = {}
    for key, rel in CORPUS_FILES.items():
        assert (CORPUS / rel).is_file(), f"corpus file missing: {rel}"
        paths[key] = links / Path(rel).name
        paths[key].symlink_to(CORPUS / rel)
    gw = start_gateway(links, "cmip", tmp / "catalog")
    yield Client(gw, tmp), paths
    gw.stop()


@pytest.mark.parametrize("op", SUBSETS + AVERAGES, ids=lambda op: op.id)
def test_generated_data(ops, data, op):
    check(ops, data[op.source], op)


@pytest.mark.parametrize("op", CORPUS_OPS, ids=lambda op: op.id)
def test_corpus(corpus, op):
    client, paths = corpus
    check(client, paths[op.source], op)


def test_dateline_gives_the_same_values_on_both_longitude_frames(ops, data):
    args = {"var": "tas", "area": DATELINE, "time": "2001-03/2001-03"}
    a, b = (ops.open(ok_result(ops.on(data[k], "subset", args)).content) for k in (N0, N180))
    np.testing.assert_array_equal(a["tas"].values, b["tas"].values)
    np.testing.assert_array_equal(a["lon"].values % 360, b["lon"].values % 360)
    assert list(a["lon"].values) == [170.0, 180.0, 190.0]


def test_a_fill_value_the_type_cannot_hold_masks_nothing_in_any_format(ops, data):
    """int16 with `_FillValue = NaN`: xarray masks nothing (it drops the fill), so a result
    must not mask raw zeros (a NaN cast to an integer is 0) nor add a fill where there is none."""
    src = original(data["nc3nan"])
    names = ["t2m", "sp", "lsm", "sst"]
    for fmt in ("nc", "zarr"):
        resp = ops.on(data["nc3nan"], "subset", {"var": ",".join(names), "format": fmt})
        if fmt == "nc":
            got = ops.open(ok_result(resp).content)
        else:
            got = open_zarr_result(ops, ok_result(resp, "application/json").json())
        for name in names:
            # NaN positions included: the source has none.
            np.testing.assert_array_equal(got[name].values, src[name].values, err_msg=f"{fmt} {name}", strict=True)
            assert "_FillValue" not in got[name].encoding, (
                f"{fmt} {name}: a _FillValue {got[name].encoding['_FillValue']!r} that the source has not")
            assert got[name].encoding.get("dtype") == src[name].encoding["dtype"], f"{fmt} {name}: stored type"


def open_zarr_result(client: Client, doc: dict) -> xr.Dataset:
    """A Zarr result, read from the `results` bucket with s3fs as a client would."""
    import warnings

    so = {"anon": True, "endpoint_url": client.gw.endpoint, "skip_instance_cache": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xr.SerializationWarning)  # xarray's own "dropping _FillValue"
        return xr.open_zarr(doc["zarr"], storage_options=so).load()


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------

DAILY = find("daily-with-an-empty-day")
ISO = re.compile(r"(-?\d+)-(\d\d)-(\d\d)(?:[T ](\d\d):(\d\d)(?::(\d\d))?)?")


def calendar_fields(text: str) -> tuple[int, ...]:
    m = ISO.match(text)
    assert m, f"not an ISO 8601 time: {text!r}"
    return tuple(int(g or 0) for g in m.groups())


def expected_series(data, op: Op) -> xr.DataArray:
    src = original(data[op.source])
    return average(expected_selection(src, op), op.names[0], op.space, op.weights, op.time)


def test_json_for_a_one_dimensional_result(ops, data):
    want = expected_series(data, DAILY)
    assert np.isnan(want.values).sum() == 1, "the series should hold the day without a value"
    resp = ok_result(ops.on(data[N0], "average", {**DAILY.args, "format": "json"}), "application/json")
    doc = resp.json()
    var = doc["variables"]["tas"]
    assert var["dims"] == ["time"]
    assert var["attrs"]["units"] == "K"
    values = np.array([np.nan if v is None else v for v in var["values"]], dtype="f8")
    np.testing.assert_allclose(values, want.values, rtol=1e-6, equal_nan=True)
    times = doc["coords"]["time"]
    times = times["values"] if isinstance(times, dict) else times
    expected = [(t.year, t.month, t.day, t.hour, t.minute, t.second) for t in want.time.values]
    assert [calendar_fields(t) for t in times] == expected


def test_csv_for_a_one_dimensional_result(ops, data):
    want = expected_series(data, DAILY)
    resp = ok_result(ops.on(data[N0], "average", {**DAILY.args, "format": "csv"}), "text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert len(rows) == want.size
    values = [np.nan if r["tas"].strip().lower() in ("", "nan", "null") else float(r["tas"]) for r in rows]
    np.testing.assert_allclose(values, want.values, rtol=1e-6, equal_nan=True)
    assert [calendar_fields(r["time"])[:3] for r in rows] == [(t.year, t.month, t.day) for t in want.time.values]


@pytest.mark.parametrize("op_id", ["dateline-180", "members-monthly-missing-month"])
def test_zarr_output_equals_the_netcdf_result(ops, data, op_id):
    op = find(op_id)
    nc = check(ops, data[op.source], op)
    resp = ok_result(ops.on(data[op.source], op.process, {**op.args, "format": "zarr"}), "application/json")
    m = re.search(r"s3://results/([0-9a-f]+)/?", resp.text)
    assert m, f"no s3://results/HASH/ in {resp.text[:500]}"
    so = {"anon": True, "endpoint_url": ops.gw.endpoint, "skip_instance_cache": True}
    with xr.open_dataset(f"s3://results/{m[1]}/", engine="zarr", storage_options=so, decode_times=CFTIME) as z:
        assert_same(z.load(), nc)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

TAS = {"var": "tas"}
ERRORS = [
    ("unknown-variable", "average", {"var": "nosuch", "dims": "time"}, 404, None),
    ("unknown-dataset", "subset", {**TAS, "dataset": "ops/nosuch.nc"}, 404, None),
    ("bad-weights", "average", {**TAS, "dims": "lat,lon", "weights": "cosine"}, 400, "weights"),
    ("bad-time", "subset", {**TAS, "time": "yesterday/tomorrow"}, 400, "time"),
    ("bad-area", "subset", {**TAS, "area": "10,20,30"}, 400, "area"),
    ("bad-isel", "subset", {**TAS, "isel": "time=5"}, 400, "isel"),
    ("bad-dims", "average", {**TAS, "dims": "weekday"}, 400, "dims"),
    ("bad-freq", "average", {**TAS, "freq": "week"}, 400, "freq"),
    ("bad-format", "subset", {**TAS, "format": "xlsx"}, 400, "format"),
    ("no-dims-and-no-freq", "average", {**TAS}, 400, "dims"),
    ("unknown-argument", "subset", {**TAS, "colour": "red"}, 400, "colour"),
    ("empty-time", "subset", {**TAS, "time": "1990/1991"}, 422, None),
    ("empty-area", "subset", {**TAS, "area": "10,86,20,89"}, 422, None),
    ("area-weights-without-cell-measures", "average", {**TAS, "dims": "lat,lon", "weights": "area"}, 422, None),
    # Refused whatever is averaged: the result would claim weights it could not apply.
    ("area-weights-for-a-time-mean", "average", {**TAS, "dims": "time", "weights": "area"}, 422, None),
]
ALLOWED = {
    "weights": {"none", "coslat", "area"},
    "freq": {"day", "month", "year"},
    "format": {"nc", "zarr", "json", "csv", "png"},
}


def assert_problem(resp: requests.Response, status: int | tuple[int, ...], argument: str | None = None) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in statuses, problem(resp)
    assert resp.headers["Content-Type"].startswith(PROBLEM), problem(resp)
    doc = resp.json()
    assert doc["status"] == resp.status_code and doc["type"] and doc["title"], doc
    if argument:
        assert doc.get("argument") == argument, doc
        if argument in ALLOWED:
            assert set(doc["allowed"]) == ALLOWED[argument], doc
    return doc


@pytest.mark.parametrize("error", ERRORS, ids=[e[0] for e in ERRORS])
@pytest.mark.parametrize("via", ["GET", "POST"])
def test_errors_are_problem_documents(ops, data, error, via):
    _, process, args, status, argument = error
    args = {"dataset": ops.dataset(data[N0].name), **args}
    resp = ops.get(process, args) if via == "GET" else ops.post(process, args)
    assert_problem(resp, status, argument)


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_tabular_formats_refuse_a_three_dimensional_result(ops, data, fmt):
    resp = ops.get("subset", {"dataset": ops.dataset(data[N0].name), "var": "tas", "time": "2000-01/2000-01", "format": fmt})
    doc = assert_problem(resp, (400, 422))
    assert doc.get("argument", "format") == "format"


def test_a_level_value_that_does_not_exist_is_refused(ops, data):
    resp = ops.get("subset", {"dataset": ops.dataset(data[P360].name), "var": "ta", "level": "85000,12345"})
    assert_problem(resp, (400, 422))


@pytest.mark.parametrize("process", ["subset", "average"])
def test_the_menu_accepts_what_the_processes_accept(ops, data, process):
    """The `time` schema of /processes admits the single-date form that GET and POST take."""
    import jsonschema

    schema = ops.fetch(f"/processes/{process}").json()["inputs"]["time"]["schema"]
    for ok in ("2000-01", "2000-01/2000-03", "/1900", "1850/", "2000-02-28T12:00"):
        jsonschema.validate(ok, schema)
        args = {"var": "tas", "time": ok, **({"dims": "lat"} if process == "average" else {})}
        assert ops.on(data[N0], process, args).status_code in (200, 202, 422), ok  # 422: outside the data
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("2000/2001/2002", schema)


def test_weights_that_take_no_part_are_not_claimed(ops, data):
    """coslat weights with latitude kept cancel out cell by cell: the mean is the unweighted
    one, and the result says `zarrgate_weights = "none"`."""
    args = {"var": "ta", "dims": "plev", "time": "2003-01/2003-01"}
    plain = ops.open(ok_result(ops.on(data[P360], "average", args)).content)
    weighted = ops.open(ok_result(ops.on(data[P360], "average", {**args, "weights": "coslat"})).content)
    assert weighted["ta"].attrs["zarrgate_weights"] == "none"
    np.testing.assert_allclose(weighted["ta"].values, plain["ta"].values, rtol=1e-6)
    over_lat = ops.open(ok_result(ops.on(data[P360], "average", {**args, "dims": "lat", "weights": "coslat"})).content)
    assert over_lat["ta"].attrs["zarrgate_weights"] == "coslat"


def test_an_averaged_dimension_without_a_coordinate_leaves_none(ops, data):
    """As xarray's mean: no scalar coordinate for a dimension that has no coordinate variable,
    and the auxiliary coordinates along it (realization, experiment_id) are dropped."""
    src = original(data["ensnocoord"])
    got = ops.open(ok_result(ops.on(data["ensnocoord"], "average", {"var": "pr", "dims": "ensemble"})).content)
    want = src["pr"].mean("ensemble")
    assert got["pr"].dims == want.dims and set(got.coords) == set(want.coords), (got.coords, want.coords)
    assert not {"ensemble", "realization", "experiment_id"} & set(got.variables)
    np.testing.assert_allclose(got["pr"].values, want.values, rtol=1e-6, equal_nan=True)
    assert "ensemble: mean" in got["pr"].attrs["cell_methods"]


@pytest.mark.parametrize("var", ["field", "half"])
@pytest.mark.parametrize("process", ["subset", "average"])
def test_complex_and_float16_variables_are_refused(ops, data, process, var):
    """The gateway serves complex and float16 variables through S3, but the operations compute
    on integers, float32 and float64 only: 422, naming the variable's type."""
    args = {"var": var, **({"dims": "x"} if process == "average" else {})}
    doc = assert_problem(ops.on(data["h5types"], process, args), 422)
    assert doc.get("argument") == "var" and ("<c8" in doc["detail"] or "<f2" in doc["detail"]), doc


def test_area_weights_need_the_cell_measure_variable(corpus):
    client, paths = corpus  # HadGEM names areacella in cell_measures but the file does not hold it
    resp = client.on(paths["hadgem"], "average", {"var": "tas", "dims": "lat,lon", "weights": "area"})
    assert_problem(resp, 422)


@pytest.mark.parametrize(
    "path, method",
    [
        ("/ops/v1/median?dataset=ops/tas_day_noleap_0360.nc&var=tas", "GET"),
        ("/processes/median", "GET"),
        ("/processes/median/execution", "POST"),
        ("/jobs/no-such-job", "GET"),
        ("/jobs/no-such-job/results", "GET"),
    ],
)
def test_unknown_processes_and_jobs_are_404(ops, path, method):
    kw = {"json": {"inputs": {}}} if method == "POST" else {}
    resp = ops.http.request(method, ops.gw.endpoint + path, timeout=60, **kw)
    assert_problem(resp, 404)


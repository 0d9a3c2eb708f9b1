"""The client side of the operation tests: HTTP to a gateway, fixtures, and the checks of a
result against its oracle (`ops_cases.py`, `ops_oracle.py`).

`test_ops.py` and `test_ops_service.py` import the fixtures `data` (the generated datasets)
and `ops` (a gateway serving them, one per test module).
"""

from __future__ import annotations

import itertools
import re
import time
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlencode, urljoin

import numpy as np
import pytest
import requests
import xarray as xr

import ops_data
from gateway import Gateway, start_gateway
from ops_cases import Op, expected_selection
from ops_oracle import (
    FREQ,
    as_number,
    assert_same,
    average,
    cell_method_entries,
    cell_methods,
    companions,
    covered_range,
    open_original,
    period_end,
    pick,
)

PROBLEM = "application/problem+json"
RESULT_LOCATION = re.compile(r"/results/([0-9a-f]{16,})\.(\w+)$")


# ---------------------------------------------------------------------------------------------
# Talking to a gateway
# ---------------------------------------------------------------------------------------------


class Client:
    """Plain HTTP to one gateway; results are opened from temporary files."""

    def __init__(self, gw: Gateway, tmp: Path):
        self.gw, self.tmp, self.http = gw, tmp, requests.Session()
        self._files = itertools.count()

    def dataset(self, name: str) -> str:
        return f"{self.gw.bucket}/{name}"

    def on(self, source: Path, process: str, args: dict, headers: dict | None = None) -> requests.Response:
        """GET `process` on `source`, a file of the served directory."""
        return self.get(process, {"dataset": self.dataset(source.name), **args}, headers)

    def url(self, process: str, args: dict) -> str:
        return f"{self.gw.endpoint}/ops/v1/{process}?" + urlencode(args, safe=",/:")

    def get(self, process: str, args: dict, headers: dict | None = None) -> requests.Response:
        return self.http.get(self.url(process, args), headers=headers, allow_redirects=False, timeout=300)

    def post(self, process: str, inputs: dict, headers: dict | None = None) -> requests.Response:
        url = f"{self.gw.endpoint}/processes/{process}/execution"
        return self.http.post(url, json={"inputs": inputs}, headers=headers, allow_redirects=False, timeout=300)

    def fetch(self, path: str, method: str = "GET", headers: dict | None = None) -> requests.Response:
        url = urljoin(self.gw.endpoint + "/", path)
        return self.http.request(method, url, headers=headers, allow_redirects=False, timeout=300)

    def open(self, body: bytes) -> xr.Dataset:
        path = self.tmp / f"result-{next(self._files)}.nc"
        path.write_bytes(body)
        return open_original(path)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the Prometheus samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.fetch("/metrics").text.splitlines():
            m = re.match(r"^(\w+)(?:\{(.*)\})?\s+(\S+)", line)
            if m and m[1] == name:
                got = dict(re.findall(r'(\w+)="([^"]*)"', m[2] or ""))
                total += float(m[3]) if all(got.get(k) == v for k, v in labels.items()) else 0.0
        return total

    def wait_job(self, location: str, until: tuple[str, ...] = ("successful",), timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            doc = self.fetch(location).json()
            if doc["status"] in until:
                return doc
            assert doc["status"] != "failed", doc
            assert time.monotonic() < deadline, f"job {location} still {doc['status']} after {timeout} s"
            time.sleep(0.2)


def problem(resp: requests.Response) -> str:
    return f"{resp.status_code} {resp.headers.get('Content-Type')}: {resp.text[:2000]}"


def result_key(resp: requests.Response) -> str:
    m = RESULT_LOCATION.search(resp.headers.get("Content-Location", ""))
    assert m, f"Content-Location {resp.headers.get('Content-Location')!r} does not name a result"
    return m[1]


def ok_result(resp: requests.Response, content_type: str = "application/x-netcdf") -> requests.Response:
    assert resp.status_code == 200, problem(resp)
    assert resp.headers["Content-Type"].startswith(content_type)
    assert resp.headers.get("X-Zarrgate-Cache") in ("hit", "miss")
    result_key(resp)
    return resp


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return ops_data.generate(tmp_path_factory.mktemp("ops-data"))


@pytest.fixture(scope="module")
def ops(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ops-gw")
    gw = start_gateway(data["probe"].parent, "opsdata", tmp / "catalog")
    yield Client(gw, tmp)
    gw.stop()


@lru_cache(maxsize=None)
def original(path: Path) -> xr.Dataset:
    """The original file, read once: the generated and corpus files never change (the test
    that rewrites a file reads it with `open_original`)."""
    return open_original(path)


def one_file_dir(tmp: Path) -> Path:
    d = tmp / "data"
    d.mkdir()
    ops_data.write_probe(d / "probe.nc", offset=0.0)
    return d


def check(client: Client, path: Path, op: Op) -> xr.Dataset:
    """Runs `op` (format left to its default, nc) and compares the result with its oracle."""
    resp = ok_result(client.on(path, op.process, op.args))
    got = client.open(resp.content)
    src = original(path)
    if op.process == "subset":
        want = op.select(pick(src, op.names))
        assert_same(got, want, data_vars=tuple(op.names), extra_ok=companions(src, op.names))
    else:
        check_average(got, op, src)
    return got


def check_average(got: xr.Dataset, op: Op, src: xr.Dataset) -> None:
    (name,) = op.names
    picked = expected_selection(src, op)
    want = average(picked, name, op.space, op.weights, op.time)
    g = got[name]
    assert g.dims == want.dims and g.dtype == want.dtype, (g.dims, g.dtype, want.dims, want.dtype)
    np.testing.assert_allclose(g.values, want.values, rtol=1e-6, equal_nan=True, err_msg=name)
    for dim in want.dims:
        np.testing.assert_array_equal(got[dim].values, want[dim].values, err_msg=dim)
    assert np.isnan(g.encoding.get("_FillValue", 0.0)), "averages have _FillValue = NaN"
    assert g.attrs.get("zarrgate_weights") == op.weights
    assert g.attrs.get("units") == src[name].attrs.get("units")
    if op.coords:
        expect = cell_methods(src[name].attrs.get("cell_methods", ""), op.space, src[name].dims, op.time)
        methods = g.attrs.get("cell_methods", "")
        assert cell_method_entries(methods) == cell_method_entries(expect), f"cell_methods {methods!r}, not {expect!r}"
        for dim in op.space + (("time",) if op.time == "mean" else ()):
            check_reduced_coordinate(got, picked, dim)
    if op.time in FREQ:
        labels = want["time"].values
        np.testing.assert_array_equal(got["time_bnds"].values[:, 0], labels)
        np.testing.assert_array_equal(got["time_bnds"].values[:, 1], [period_end(t, op.time) for t in labels])


def check_reduced_coordinate(got: xr.Dataset, picked: xr.Dataset, dim: str) -> None:
    """CF §7.3.1: a scalar coordinate at the middle of the range, its bounds the range."""
    units = picked["time"].encoding.get("units")
    calendar = picked["time"].encoding.get("calendar", "standard")
    lo, hi = (as_number(v, units, calendar) for v in covered_range(picked, dim))
    assert dim in got.coords and got[dim].ndim == 0, f"{dim} should stay as a scalar coordinate"
    assert as_number(got[dim].values.item(), units, calendar) == pytest.approx((lo + hi) / 2)
    bounds = sorted(as_number(v, units, calendar) for v in got[f"{dim}_bnds"].values.ravel())
    assert bounds == pytest.approx([lo, hi]), f"{dim}_bnds"
    assert (got[dim].attrs.get("bounds") or got[dim].encoding.get("bounds")) == f"{dim}_bnds"


def job_location(resp: requests.Response, status: int) -> str:
    """The job an operation answered `status` with: `Location: /jobs/ID` and the job status."""
    assert resp.status_code == status, problem(resp)
    location = resp.headers["Location"]
    assert re.search(r"/jobs/[^/]+$", location), location
    assert resp.json()["status"] in ("accepted", "running", "successful")
    return location


def dismissed(resp: requests.Response) -> bool:
    """A dismissed job is gone (404) or says so."""
    return resp.status_code == 404 or (resp.status_code == 200 and resp.json()["status"] == "dismissed")


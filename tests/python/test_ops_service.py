"""The service around the operations (docs/operations.md): the result cache, the OGC API –
Processes, and jobs, through real gateway processes.

The module's gateway (`ops`) serves the generated datasets; `limited` serves them with
`--sync-limit 1`, so that every operation becomes a job. The tests that restart or kill a
gateway, or rewrite a source file, start their own on a one-file directory.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

import ops_data
from gateway import start_gateway, wait_for
from ops_cases import DATELINE, ENS, N0, N180, P360, find
from ops_client import (  # noqa: F401 (fixtures)
    Client,
    check_average,
    data,
    dismissed,
    job_location,
    ok_result,
    one_file_dir,
    ops,
    original,
    problem,
    result_key,
)
from ops_oracle import assert_same, open_original, pick


@pytest.fixture(scope="module")
def limited(data, tmp_path_factory):
    """A gateway where every operation costs more than the sync limit."""
    tmp = tmp_path_factory.mktemp("ops-limited")
    gw = start_gateway(data["probe"].parent, "opsdata", tmp / "catalog", sync_limit=1)
    yield Client(gw, tmp)
    gw.stop()


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def computations(client: Client) -> float:
    return client.metric("zarrgate_ops_computations_total")


def test_a_second_identical_request_is_a_cache_hit(ops, data):
    args = {"dataset": ops.dataset(data[N0].name), "var": "tas", "dims": "time", "time": "2002-02/2002-02"}
    first = ok_result(ops.get("average", args))
    assert first.headers["X-Zarrgate-Cache"] == "miss"
    before, hits = computations(ops), ops.metric("zarrgate_ops_cache_hits_total", tier="memory")
    second = ok_result(ops.get("average", args))
    assert second.headers["X-Zarrgate-Cache"] == "hit"
    assert second.content == first.content
    assert second.headers["Content-Location"] == first.headers["Content-Location"]
    assert computations(ops) == before
    assert ops.metric("zarrgate_ops_cache_hits_total", tier="memory") == hits + 1


@pytest.mark.parametrize(
    "source, process, first, second",
    [
        (
            N0,
            "average",
            {"var": "tas", "dims": "lon,lat", "weights": "coslat", "area": DATELINE, "time": "2000-06/2000-06"},
            {"time": "2000-06/2000-06", "area": "170.0,-10,-170,1e1", "weights": "CosLat", "dims": "latitude,longitude"}
            | {"var": "tas", "format": "NC"},
        ),
        (
            P360,
            "subset",
            {"var": "ta", "level": "85000/25000", "isel": "lat=0:5,lon=2:7"},
            {"isel": "lon=2:7,lat=0:5", "level": "8.5e4/25000.0", "var": "ta"},
        ),
    ],
    ids=["average", "subset"],
)
def test_order_aliases_case_and_number_spelling_share_one_entry(ops, data, source, process, first, second):
    source = data[source].name
    a = ok_result(ops.get(process, {"dataset": ops.dataset(source), **first}))
    before = computations(ops)
    b = ok_result(ops.get(process, {**second, "dataset": f"s3://{ops.dataset(source)}"}))
    assert b.headers["X-Zarrgate-Cache"] == "hit"
    assert result_key(b) == result_key(a)
    assert computations(ops) == before


def test_post_and_get_share_one_cache(ops, data):
    args = {"dataset": ops.dataset(data[P360].name), "var": "ta", "dims": "plev", "time": "2003-01/2003-01"}
    got = ok_result(ops.get("average", args))
    posted = ok_result(ops.post("average", args))
    assert posted.headers["X-Zarrgate-Cache"] == "hit"
    assert result_key(posted) == result_key(got) and posted.content == got.content


def test_concurrent_identical_requests_compute_once(ops, data):
    args = {"var": "tas", "dims": "lat,lon", "weights": "coslat", "freq": "month"}
    url = ops.url("average", {"dataset": ops.dataset(data[N180].name), **args})
    before = computations(ops)
    start = threading.Barrier(8)

    def one(_):
        start.wait()
        return requests.get(url, timeout=300)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    assert all(a.status_code == 200 for a in answers), [problem(a) for a in answers if a.status_code != 200]
    assert len({a.content for a in answers}) == 1
    assert computations(ops) == before + 1


def test_results_are_immutable_and_revalidate(ops, data):
    resp = ok_result(ops.get("subset", {"dataset": ops.dataset(data[ENS].name), "var": "pr", "time": "2002-12/2002-12"}))
    # The operation's URL gives another result once its source changes: caches ask again.
    assert "no-cache" in resp.headers["Cache-Control"] and "immutable" not in resp.headers["Cache-Control"]
    location = resp.headers["Content-Location"]
    cached = ops.fetch(location)
    assert cached.status_code == 200 and cached.content == resp.content
    assert "immutable" in cached.headers["Cache-Control"] and "max-age=31536000" in cached.headers["Cache-Control"]
    etag = cached.headers["ETag"]
    again = ops.fetch(location, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""


def test_a_changed_source_file_gives_new_values(tmp_path):
    data_dir = one_file_dir(tmp_path)
    gw = start_gateway(data_dir, "probe", tmp_path / "catalog")
    try:
        client = Client(gw, tmp_path)
        args = {"dataset": "probe/probe.nc", "var": "tas", "dims": "time"}
        before = ok_result(client.get("average", args))
        replacement = tmp_path / "probe.new"
        ops_data.write_probe(replacement, offset=100.0)
        os.replace(replacement, data_dir / "probe.nc")

        def answered():
            resp = client.get("average", args)
            assert resp.status_code in (200, 503), problem(resp)
            return resp if resp.status_code == 200 else None

        after = wait_for(answered)
        assert result_key(after) != result_key(before)
        assert after.headers["X-Zarrgate-Cache"] == "miss"
        want = open_original(data_dir / "probe.nc")["tas"].astype("f8").mean("time").astype("f4")
        np.testing.assert_allclose(client.open(after.content)["tas"].values, want.values, rtol=1e-6)
    finally:
        gw.stop()


def test_a_corrupt_cache_file_is_detected_and_recomputed(tmp_path):
    data_dir, catalog, ops_dir = one_file_dir(tmp_path), tmp_path / "catalog", tmp_path / "ops"
    damaged = {"dataset": "probe/probe.nc", "var": "tas", "dims": "time"}
    intact = {"dataset": "probe/probe.nc", "var": "tas", "time": "2000-01-05/2000-01-20"}
    gw = start_gateway(data_dir, "probe", catalog, ops_dir=ops_dir)
    try:
        client = Client(gw, tmp_path)
        keys = {"damaged": result_key(ok_result(client.get("average", damaged)))}
        keys["intact"] = result_key(ok_result(client.get("subset", intact)))
        files = {name: ops_dir / "results" / f"{key}.zgr" for name, key in keys.items()}
        wait_for(lambda: all(f.is_file() for f in files.values()), timeout=10)
    finally:
        gw.stop()
    corrupt = bytearray(files["damaged"].read_bytes())
    assert len(corrupt) > 40, "8-byte magic, 32-byte blake3, then the payload"
    corrupt[-1] ^= 0xFF
    files["damaged"].write_bytes(bytes(corrupt))

    # A new process on the same ops directory: the memory tier is empty, the disk tier is not.
    gw = start_gateway(data_dir, "probe", catalog, ops_dir=ops_dir)
    try:
        client = Client(gw, tmp_path)
        hit = ok_result(client.get("subset", intact))
        assert hit.headers["X-Zarrgate-Cache"] == "hit"
        assert client.metric("zarrgate_ops_cache_hits_total", tier="disk") == 1
        assert computations(client) == 0
        again = ok_result(client.get("average", damaged))
        assert again.headers["X-Zarrgate-Cache"] == "miss"
        assert client.metric("zarrgate_ops_cache_corrupt_total") == 1
        assert client.metric("zarrgate_ops_computations_total", process="average") == 1
        want = open_original(data_dir / "probe.nc")["tas"].astype("f8").mean("time").astype("f4")
        np.testing.assert_allclose(client.open(again.content)["tas"].values, want.values, rtol=1e-6)
        assert ok_result(client.get("average", damaged)).headers["X-Zarrgate-Cache"] == "hit"
        wait_for(lambda: files["damaged"].is_file() and files["damaged"].read_bytes() != corrupt, timeout=10)
    finally:
        gw.stop()


# ---------------------------------------------------------------------------------------------
# OGC API – Processes and jobs
# ---------------------------------------------------------------------------------------------

SUBSET_ARGS = {"dataset", "var", "time", "area", "level", "isel", "format"}
AVERAGE_ARGS = SUBSET_ARGS | {"dims", "weights", "freq"}


def collect(doc, key: str) -> list:
    """Every value stored under `key` anywhere in a JSON document."""
    if isinstance(doc, dict):
        return [v for k, v in doc.items() if k == key] + [x for v in doc.values() for x in collect(v, key)]
    if isinstance(doc, list):
        return [x for v in doc for x in collect(v, key)]
    return []


def inputs_of(client: Client, process: str) -> dict:
    resp = client.fetch(f"/processes/{process}")
    assert resp.status_code == 200, problem(resp)
    doc = resp.json()
    assert doc["id"] == process
    inputs = doc["inputs"]
    return {i["id"]: i for i in inputs} if isinstance(inputs, list) else inputs


def test_processes_are_listed(ops):
    resp = ops.fetch("/processes")
    assert resp.status_code == 200, problem(resp)
    assert {p["id"] for p in resp.json()["processes"]} == {"subset", "average"}


@pytest.mark.parametrize("process, names", [("subset", SUBSET_ARGS), ("average", AVERAGE_ARGS)])
def test_each_process_describes_every_argument(ops, process, names):
    assert set(inputs_of(ops, process)) == names


def test_average_describes_allowed_values_and_defaults(ops):
    inputs = inputs_of(ops, "average")

    def allowed(name):
        return {v for values in collect(inputs[name], "enum") for v in values}

    assert allowed("weights") == {"none", "coslat", "area"}
    assert collect(inputs["weights"], "default")[:1] == ["none"]
    assert allowed("freq") == {"day", "month", "year"}
    assert allowed("format") == {"nc", "zarr", "json", "csv", "png"}
    assert collect(inputs["format"], "default")[:1] == ["nc"]
    assert {"time", "level", "latitude", "longitude", "realization"} <= allowed("dims")


def test_sync_execution_returns_the_result(ops, data):
    op = find("area-weighted-yearly")
    resp = ok_result(ops.post("average", {"dataset": ops.dataset(data[op.source].name), **op.args}))
    check_average(ops.open(resp.content), op, original(data[op.source]))


def test_async_job_lifecycle(ops, data):
    op = find("level-values-feb-30")
    inputs = {"dataset": ops.dataset(data[op.source].name), **op.args}
    location = job_location(ops.post("subset", inputs, headers={"Prefer": "respond-async"}), 201)
    status = ops.wait_job(location)
    assert status["progress"] == 100
    assert location.rsplit("/", 1)[1] in ops.fetch("/jobs").text
    results = ops.fetch(f"{location}/results")
    assert results.status_code == 200, problem(results)
    src = original(data[op.source])
    assert_same(ops.open(results.content), op.select(pick(src, op.names)), data_vars=tuple(op.names))
    assert ops.fetch(location, method="DELETE").status_code == 200
    assert dismissed(ops.fetch(location))


def test_get_with_prefer_async_answers_202(ops, data):
    args = {"dataset": ops.dataset(data[ENS].name), "var": "pr", "dims": "time", "time": "2000/2000"}
    location = job_location(ops.get("average", args, headers={"Prefer": "respond-async"}), 202)
    ops.wait_job(location)
    want = original(data[ENS])["pr"].sel(time=slice("2000", "2000")).mean("time")
    np.testing.assert_allclose(ops.open(ops.fetch(f"{location}/results").content)["pr"].values, want.values, rtol=1e-6)


@pytest.mark.parametrize("method, status", [("GET", 202), ("POST", 201)])
def test_above_the_sync_limit_a_request_becomes_a_job(limited, data, method, status):
    op = find("over-level")
    args = {"dataset": limited.dataset(data[op.source].name), **op.args}
    resp = limited.get(op.process, args) if method == "GET" else limited.post(op.process, args)
    if resp.status_code == 200:
        # The other method computed this request already: a cached result is answered at once,
        # however costly it was (the point of the cache). A new request still becomes a job.
        assert resp.headers["X-Zarrgate-Cache"] == "hit"
        check_average(limited.open(resp.content), op, original(data[op.source]))
        args = {**args, "weights": "coslat" if args.get("weights", "none") == "none" else "none"}
        resp = limited.get(op.process, args) if method == "GET" else limited.post(op.process, args)
        location = job_location(resp, status)
        limited.wait_job(location)
        assert limited.fetch(f"{location}/results").status_code == 200
        return
    location = job_location(resp, status)
    limited.wait_job(location)
    results = limited.fetch(f"{location}/results")
    assert results.status_code == 200, problem(results)
    check_average(limited.open(results.content), op, original(data[op.source]))


def test_a_job_survives_a_killed_gateway(tmp_path):
    data_dir, catalog, ops_dir = one_file_dir(tmp_path), tmp_path / "catalog", tmp_path / "ops"
    inputs = {"dataset": "probe/probe.nc", "var": "tas", "dims": "lat,lon", "weights": "coslat"}
    slow = {"ZARRGATE_TEST_COMPUTE_DELAY_MS": "60000"}
    gw = start_gateway(data_dir, "probe", catalog, ops_dir=ops_dir, env=slow)
    try:
        client = Client(gw, tmp_path)
        later = {"Prefer": "respond-async"}
        kept = job_location(client.post("average", inputs, headers=later), 201)
        subset = {"dataset": "probe/probe.nc", "var": "tas", "time": "2000-01/2000-01"}
        dropped = job_location(client.post("subset", subset, headers=later), 201)
        status = client.wait_job(kept, until=("running", "successful"), timeout=30)
        assert status["status"] == "running", "ZARRGATE_TEST_COMPUTE_DELAY_MS should hold the job in running"
        assert client.fetch(dropped, method="DELETE").status_code == 200
        wait_for(lambda: dismissed(client.fetch(dropped)), timeout=30)
    finally:
        gw.proc.kill()
        gw.proc.wait()
    gw = start_gateway(data_dir, "probe", catalog, ops_dir=ops_dir)
    try:
        client = Client(gw, tmp_path)
        client.wait_job(kept)
        results = client.fetch(f"{kept}/results")
        assert results.status_code == 200, problem(results)
        src = open_original(data_dir / "probe.nc")
        want = src["tas"].astype("f8").weighted(np.cos(np.deg2rad(src["lat"]))).mean(["lat", "lon"]).astype("f4")
        np.testing.assert_allclose(client.open(results.content)["tas"].values, want.values, rtol=1e-6)
        assert dismissed(client.fetch(dropped)), "a dismissed job is not run again"
    finally:
        gw.stop()


def test_a_slow_synchronous_request_becomes_a_job_before_the_client_timeout(tmp_path):
    """A computation that outlasts two thirds of the client timeout is answered with 202 and a
    job that waits for the same computation, instead of a connection the timeout drops."""
    data_dir, catalog = one_file_dir(tmp_path), tmp_path / "catalog"
    slow = {"ZARRGATE_TEST_COMPUTE_DELAY_MS": "4000"}
    gw = start_gateway(data_dir, "probe", catalog, env=slow, extra_args=("--client-timeout", "3"))
    try:
        client = Client(gw, tmp_path)
        inputs = {"dataset": "probe/probe.nc", "var": "tas", "dims": "time"}
        started = time.monotonic()
        location = job_location(client.get("average", inputs), 202)
        assert time.monotonic() - started < 3, "the answer must beat the client timeout"
        client.wait_job(location)
        results = client.fetch(f"{location}/results")
        assert results.status_code == 200, problem(results)
        src = open_original(data_dir / "probe.nc")
        want = src["tas"].mean("time")
        np.testing.assert_allclose(client.open(results.content)["tas"].values, want.values, rtol=1e-6)
        again = client.get("average", inputs)
        assert again.status_code == 200 and again.headers["X-Zarrgate-Cache"] == "hit"
    finally:
        gw.stop()


def test_a_url_with_wait_yields_the_data_when_the_request_becomes_a_job(data, tmp_path):
    """A URL pasted in a notebook: the request becomes a job (it is over the sync limit and slow),
    and `wait=SECONDS` makes the gateway answer with the result, through 303s to the job's
    results that any HTTP client follows, instead of a job document."""
    gw = start_gateway(data["probe"].parent, "opsdata", tmp_path / "catalog", sync_limit=1,
                       extra_args=("--client-timeout", "3"), env={"ZARRGATE_TEST_COMPUTE_DELAY_MS": "4500"})
    try:
        client = Client(gw, tmp_path)
        op = find("over-level")
        args = {"dataset": client.dataset(data[op.source].name), **op.args}
        resp = requests.get(client.url(op.process, {**args, "wait": "60"}), timeout=120)
        assert resp.status_code == 200, problem(resp)
        assert [r.status_code for r in resp.history] and all(r.status_code == 303 for r in resp.history)
        assert all("/results?wait=" in r.headers["Location"] for r in resp.history)
        check_average(client.open(resp.content), op, original(data[op.source]))
        # A wait that runs out answers with the job, as without it.
        other = {**args, "weights": "coslat" if args.get("weights", "none") == "none" else "none"}
        short = requests.get(client.url(op.process, {**other, "wait": "1"}), timeout=120, allow_redirects=False)
        assert short.status_code == 202 and short.json()["status"] in ("accepted", "running")
        bad = requests.get(client.url(op.process, {**other, "wait": "soon"}), timeout=60)
        assert bad.status_code == 400 and "wait" in bad.text
    finally:
        gw.stop()

"""Multi-file datasets (docs/joins.md) through a real gateway, against xarray on the files.

Every case of join_cases.py is written into one data directory, served by one `zarrgate serve`
for the module, opened with `xr.open_zarr` over s3fs and compared with its oracle
(join_oracle.py): values and NaN positions, dims, coordinates, attributes, dtypes, decoded
times, and the encoding the contract gives each variable. Refused joins must say why in the
catalog and answer 503; the member files stay served under their own ids either way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings

import pytest
import requests
import xarray as xr

from gateway import Gateway, corpus_missing, start_gateway, zarrgate_bin
from join_cases import CORPUS, JOINS, REFUSALS, JoinCase, build, missing_corpus
from join_oracle import differences, new_dims

BUCKET = "joins"
#: the metadata documents a Zarr client may ask for
METADATA = {".zmetadata", ".zgroup", ".zattrs", ".zarray", "zarr.json"}
JOIN_NAMES = [b.__name__ for b in JOINS]
REFUSAL_NAMES = [b.__name__ for b in REFUSALS]
#: one join of each definition (DRS, nested spec, NcML union): a client opens each alike
OPENED_ONCE = ["drs_aligned", "time_member", "union_ncml"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    if missing_corpus():
        corpus_missing(f"corpus files missing under {CORPUS} (set ZARRGATE_CORPUS): {missing_corpus()}")
    root = tmp_path_factory.mktemp("joins") / "data"
    return root, build(root)


@pytest.fixture(scope="module")
def served(tree, tmp_path_factory):
    root, cases = tree
    gw = start_gateway(root, BUCKET, tmp_path_factory.mktemp("joins-catalog") / "catalog")
    catalog = json.loads((gw.exported() / "catalog.json").read_text())
    yield gw, catalog, cases
    gw.stop()


# ---------------------------------------------------------------------------------------------
# Reading through the gateway
# ---------------------------------------------------------------------------------------------


class KeyLog:
    """The S3 keys a client asks for. The gateway counts requests per bucket only
    (`zarrgate_requests_total`), so the keys are taken from botocore's events."""

    def __init__(self):
        self.keys: list[str] = []

    def session(self):
        from aiobotocore.session import AioSession

        session = AioSession()
        for op in ("GetObject", "HeadObject"):
            session.register(f"before-parameter-build.s3.{op}", lambda params, **_: self.keys.append(params["Key"]))
        return session

    def metadata(self, dataset: str) -> list[str]:
        """The metadata keys asked for under `dataset`, relative to it."""
        below = [k[len(dataset) + 1:] for k in self.keys if k.startswith(dataset + "/")]
        return sorted(k for k in below if k.rsplit("/", 1)[-1] in METADATA)


def open_served(gw: Gateway, dataset: str, log: KeyLog | None = None) -> xr.Dataset:
    options = {"anon": True, "endpoint_url": gw.endpoint, "skip_instance_cache": True,
               # s3fs sends a HEAD before each GET otherwise (see fidelity.GatewayView)
               "max_concurrency": 1}
    if log is not None:
        options["session"] = log.session()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xr.SerializationWarning)
        return xr.open_zarr(f"s3://{gw.bucket}/{dataset}", storage_options=options, consolidated=True)


def get(gw: Gateway, key: str) -> requests.Response:
    return requests.get(f"{gw.endpoint}/{gw.bucket}/{key}", timeout=60)


def join_entry(catalog: dict, case: JoinCase) -> dict:
    entry = catalog.get("joins", {}).get(case.id)
    assert entry is not None, f"catalog.json has no joins[{case.id!r}]; joins: {sorted(catalog.get('joins', {}))}"
    return entry


# ---------------------------------------------------------------------------------------------
# Joins that succeed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", JOIN_NAMES)
def test_join_equals_xarray_on_the_files(served, tree, name):
    gw, _, cases = served
    jcase = cases[name]
    want = jcase.oracle(tree[0])
    got = open_served(gw, jcase.id).load()
    diffs = differences(got, want, decoded=jcase.decoded, loose=new_dims(jcase.plan))
    assert not diffs, f"{jcase.id}:\n{diffs}"


@pytest.mark.parametrize("name", JOIN_NAMES)
def test_catalog_lists_the_join_and_its_members(served, name):
    gw, catalog, cases = served
    jcase = cases[name]
    entry = join_entry(catalog, jcase)
    assert entry["status"] == "ok", entry.get("error")
    assert sorted(entry["members"]) == sorted(jcase.members)
    assert entry["refs"] == f"joins/{jcase.id}.json" and (gw.catalog_dir.parent / f"{gw.catalog_dir.name}.export" / entry["refs"]).is_file(), entry
    for word in jcase.notes:
        assert any(word in note for note in entry.get("notes", [])), f"no note names {word}: {entry.get('notes')}"


@pytest.mark.parametrize("name", OPENED_ONCE)
def test_opening_a_join_reads_its_metadata_once(served, name):
    gw, _, cases = served
    jcase = cases[name]
    joined, single = KeyLog(), KeyLog()
    open_served(gw, jcase.id, joined).close()
    open_served(gw, jcase.members[0], single).close()
    keys = joined.metadata(jcase.id)
    assert keys.count(".zmetadata") == 1, keys
    assert all("/" not in k for k in keys), f"per-variable metadata requests: {keys}"
    # zarr-python also probes zarr.json, .zgroup and .zattrs of the root: no more than for a file
    assert keys == single.metadata(jcase.members[0])


def zarray(gw: Gateway, dataset: str, var: str) -> dict:
    resp = get(gw, f"{dataset}/.zmetadata")
    assert resp.status_code == 200, f"{dataset}: {resp.status_code} {resp.text[:300]}"
    return resp.json()["metadata"][f"{var}/.zarray"]


@pytest.mark.parametrize("name, var, how", [
    ("drs_aligned", "tas", "passed through"), ("time_member", "siconc", "passed through"),
    ("uneven", "tas", "assembled"), ("levels", "ta", "assembled"),
])
def test_chunks_are_passed_through_or_assembled_in_the_first_files_shape(served, name, var, how):
    gw, _, cases = served
    jcase = cases[name]
    joined, first = zarray(gw, jcase.id, var), zarray(gw, jcase.members[0], var)
    assert joined["dtype"] == first["dtype"], "values stay encoded"
    assert joined["chunks"][-len(first["chunks"]):] == first["chunks"]
    if how == "passed through":
        assert (joined["compressor"], joined["filters"]) == (first["compressor"], first["filters"])
    else:
        assert joined["compressor"] is None and not joined["filters"], "assembled chunks are served uncompressed"


@pytest.mark.parametrize("name", JOIN_NAMES + REFUSAL_NAMES)
def test_member_files_stay_served_under_their_own_ids(served, name):
    gw, _, cases = served
    for member in cases[name].members:
        resp = get(gw, f"{member}/.zmetadata")
        assert resp.status_code == 200, f"{member}: {resp.status_code} {resp.text[:300]}"


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REFUSAL_NAMES)
def test_refusal_names_the_files_in_the_catalog(served, name):
    _, catalog, cases = served
    jcase = cases[name]
    entry = join_entry(catalog, jcase)
    assert entry["status"] == "failed", entry
    error = entry.get("error") or ""
    assert jcase.refusal in error, f"{error!r} should contain {jcase.refusal!r}"
    for path in jcase.offenders:
        assert path in error, f"{error!r} should name {path}"


@pytest.mark.parametrize("name", REFUSAL_NAMES)
@pytest.mark.parametrize("key", [".zmetadata", ".zgroup", "tas/.zarray"])
def test_every_key_of_a_refused_join_is_503(served, name, key):
    gw, _, cases = served
    jcase = cases[name]
    resp = get(gw, f"{jcase.id}/{key}")
    assert resp.status_code == 503, f"{resp.status_code} {resp.text[:300]}"
    assert "ServiceUnavailable" in resp.text and jcase.refusal in resp.text, resp.text[:500]


def test_index_prints_the_refusal(tree, tmp_path):
    root, cases = tree
    jcase = cases["refuse_grid"]
    data = tmp_path / "data"
    shutil.copytree(root / "refuse_grid", data / "refuse_grid")
    proc = subprocess.run([*zarrgate_bin(), "index", str(data), "--out", str(tmp_path / "catalog")],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert jcase.refusal in proc.stderr, proc.stderr
    assert all(path in proc.stderr for path in jcase.offenders), proc.stderr


# ---------------------------------------------------------------------------------------------
# --no-drs-join
# ---------------------------------------------------------------------------------------------


def test_no_drs_join_leaves_out_drs_joins_but_honours_specs(tree, tmp_path):
    root, cases = tree
    drs, spec = cases["drs_aligned"], cases["members_spec"]
    data = tmp_path / "data"
    for jcase in (drs, spec):
        shutil.copytree(root / jcase.name, data / jcase.name)
    gw = start_gateway(data, BUCKET, tmp_path / "catalog", extra_args=("--no-drs-join",))
    try:
        resp = get(gw, f"{drs.id}/.zmetadata")
        assert resp.status_code == 404 and "NoSuchKey" in resp.text, f"{resp.status_code} {resp.text[:300]}"
        assert all(get(gw, f"{m}/.zmetadata").status_code == 200 for m in drs.members)
        assert get(gw, f"{spec.id}/.zmetadata").status_code == 200
    finally:
        gw.stop()

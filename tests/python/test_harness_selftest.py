"""Self-tests of the fidelity oracle itself (no zarrgate binary needed).

A harness that passes everything is worse than none: these tests build a
small NetCDF-4 file, reference it with kerchunk (which is faithful on this
particular file, apart from the two allowed type exceptions), then tamper with
the reference JSON in ways a buggy indexer could and check that every one is
caught, and that the three allowed exceptions are classified and counted.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import fidelity

netCDF4 = pytest.importorskip("netCDF4")
cftime = pytest.importorskip("cftime")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """(nc_path, kerchunk refs dict) for a file kerchunk handles faithfully."""
    d = tmp_path_factory.mktemp("selftest")
    path = d / "sample.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.title = "selftest"
        ds.version = 2.5  # float64: JSON keeps it exactly
        ds.createDimension("time", 4)
        ds.createDimension("x", 3)
        t = ds.createVariable("time", "f8", ("time",), fill_value=-1.0)
        t.units = "days since 2000-01-01"
        t.calendar = "noleap"  # decoded to cftime objects
        t[:] = [0, 1, 2, 3.5]
        x = ds.createVariable("x", "f8", ("x",), fill_value=np.nan)
        x[:] = [10.0, 20.0, 30.0]
        v = ds.createVariable("tas", "f8", ("time", "x"), fill_value=1e20)
        v.units = "K"
        v.valid_range = np.array([100.0, 400.0])
        data = np.arange(12, dtype="f8").reshape(4, 3) + 250
        data[1, 1] = 1e20  # masked when decoded
        v[:] = data
        p = ds.createVariable("pr", "i2", ("time", "x"), fill_value=np.int16(-999))
        p.scale_factor = np.float32(0.5)  # float32 attrs -> attr_type via JSON
        p.add_offset = np.float32(10)
        p.set_auto_maskandscale(False)
        p[:] = np.array([[1, 2, 3], [4, -999, 6], [7, 8, 9], [10, 11, 12]], dtype="i2")
        n = ds.createVariable("count", "i8", ("x",), fill_value=np.int64(-1))
        n[:] = [1, 2, 3]
        q = ds.createVariable("q", "f8", ("x",), fill_value=-9.0, least_significant_digit=1)
        q[:] = [0.123, 4.56, 7.891]  # xarray's netCDF4 backend hides the attribute in encoding
        f = ds.createVariable("flag", "i4", ("x",), fill_value=False)  # no _FillValue
        f[:] = [0, 1, 0]
        g = ds.createGroup("sub")
        g.note = "inner"
        w = g.createVariable("w", "f8", ("x",), fill_value=-5.0)
        w.long_name = "wind"
        w[:] = [1.0, 2.0, 3.0]
    from kerchunk.hdf import SingleHdf5ToZarr

    refs = json.loads(json.dumps(SingleHdf5ToZarr(str(path), inline_threshold=0).translate()))
    # kerchunk invents a fill_value for variables without _FillValue; undo that
    # here so the baseline is what a faithful indexer writes
    z = json.loads(refs["refs"]["flag/.zarray"])
    z["fill_value"] = None
    refs["refs"]["flag/.zarray"] = json.dumps(z)
    # xarray's netCDF4 backend hides least_significant_digit in .encoding, so
    # the oracle has no such attribute and a faithful indexer writes none
    za = json.loads(refs["refs"]["q/.zattrs"])
    za.pop("least_significant_digit")
    refs["refs"]["q/.zattrs"] = json.dumps(za)
    return str(path), refs


def run(sample, tmp_path, mutate=None):
    path, refs = sample
    doc = copy.deepcopy(refs)
    if mutate:
        mutate(doc)
    out = tmp_path / "refs.json"
    out.write_text(json.dumps(doc))
    return fidelity.compare(path, out)


def zattrs(doc, key):
    return json.loads(doc["refs"][key])


def set_json(doc, key, value):
    doc["refs"][key] = json.dumps(value)


def setting(key, changes):
    """A mutation that sets entries of the JSON document stored at `key`."""

    def mutate(doc):
        value = zattrs(doc, key)
        value.update(changes)
        set_json(doc, key, value)

    return mutate


def removing(key, name):
    """A mutation that deletes entry `name` of the JSON document stored at `key`."""

    def mutate(doc):
        value = zattrs(doc, key)
        del value[name]
        set_json(doc, key, value)

    return mutate


def drop_var(doc, name):
    for k in [k for k in doc["refs"] if k == name or k.startswith(name + "/")]:
        del doc["refs"][k]


def failed_with(res, *needles):
    assert not res.ok, "expected a failure, got a pass"
    text = "\n".join(res.failures)
    for n in needles:
        assert n in text, f"{n!r} not in failures:\n{text}"


# --------------------------------------------------------------------------
# the unmodified refs: clean apart from the two type exceptions
# --------------------------------------------------------------------------


def test_baseline_is_clean_with_expected_exceptions(sample, tmp_path):
    res = run(sample, tmp_path)
    assert res.ok, res.summary()
    assert res.exceptions["packed_float64"] == 1, res.exception_details
    # scale_factor and add_offset of pr (float32 -> JSON float64)
    assert res.exceptions["attr_type"] == 2, res.exception_details
    assert res.exceptions["transcode"] == 0


# --------------------------------------------------------------------------
# tampering that must be caught
# --------------------------------------------------------------------------


def test_missing_variable(sample, tmp_path):
    failed_with(run(sample, tmp_path, lambda d: drop_var(d, "count")), "'count': missing from refs")


def test_missing_variable_in_subgroup(sample, tmp_path):
    failed_with(run(sample, tmp_path, lambda d: drop_var(d, "sub/w")), "group /sub", "'w': missing from refs")


def test_missing_group(sample, tmp_path):
    res = run(sample, tmp_path, lambda d: d["refs"].pop("sub/.zgroup"))
    failed_with(res, "group /sub: missing from refs")


def test_extra_variable(sample, tmp_path):
    def m(d):
        for k in [k for k in d["refs"] if k.startswith("count/")]:
            d["refs"]["bonus/" + k.split("/", 1)[1]] = d["refs"][k]

    failed_with(run(sample, tmp_path, m), "'bonus': in refs but not in original")


def test_invented_fill_value(sample, tmp_path):
    def m(d):
        setting("sub/w/.zarray", {"fill_value": 0.0})(d)  # original _FillValue is -5.0
        setting("x/.zarray", {"fill_value": None})(d)  # original _FillValue is NaN

    res = run(sample, tmp_path, m)
    failed_with(res, "attribute '_FillValue' differs", "'x' attrs: attribute '_FillValue' missing from refs")


def test_fill_value_where_original_has_none(sample, tmp_path):
    # What kerchunk writes: it masks the real zeros.
    m = setting("flag/.zarray", {"fill_value": 0})

    res = run(sample, tmp_path, m)
    failed_with(res, "'flag' attrs: attribute '_FillValue' in refs but not in original (invented fill value)",
                "[decode_cf=True] var 'flag': dtype int32 in original, float64 in refs")


def test_extra_attribute(sample, tmp_path):
    m = setting("tas/.zattrs", {"extra": 1})

    failed_with(run(sample, tmp_path, m), "'extra' in refs but not in original")


def test_least_significant_digit_follows_the_oracle(sample, tmp_path):
    m = setting("q/.zattrs", {"least_significant_digit": 1})

    failed_with(run(sample, tmp_path, m), "'q' attrs: attribute 'least_significant_digit' in refs but not in original")


def test_changed_attribute_value(sample, tmp_path):
    m = setting("tas/.zattrs", {"valid_range": [100.0, 400.5]})

    failed_with(run(sample, tmp_path, m), "attribute 'valid_range' differs")


def test_stringified_attribute(sample, tmp_path):
    m = setting(".zattrs", {"version": "2.5"})

    failed_with(run(sample, tmp_path, m), "dataset attrs: attribute 'version' differs (type differs)")


def test_missing_dataset_attribute(sample, tmp_path):
    m = removing("sub/.zattrs", "note")

    failed_with(run(sample, tmp_path, m), "group /sub", "attribute 'note' missing from refs")


def test_wrong_chunk_offset(sample, tmp_path):
    def m(d):
        ref = d["refs"]["count/0"]
        ref[1] += 8  # shift by one int64 element

    failed_with(run(sample, tmp_path, m), "'count': values differ")


def test_wrong_dtype(sample, tmp_path):
    m = setting("count/.zarray", {"dtype": "<u8", "fill_value": None})

    failed_with(run(sample, tmp_path, m), "'count': dtype int64 in original, uint64 in refs")


def test_wrong_dimension_name(sample, tmp_path):
    m = setting("count/.zattrs", {"_ARRAY_DIMENSIONS": ["y"]})

    failed_with(run(sample, tmp_path, m), "dims ('x',) in original, ('y',) in refs")


def test_time_units_change_caught_when_decoded(sample, tmp_path):
    m = setting("time/.zattrs", {"calendar": "360_day"})

    res = run(sample, tmp_path, m)
    failed_with(res, "attribute 'calendar' differs", "[decode_cf=True] var 'time': values differ")


def test_relative_url_and_out_of_range(sample, tmp_path):
    def m(d):
        d["refs"]["x/0"] = ["relative/path.nc", 0, 24]
        d["refs"]["count/0"][1] = 10**9

    failed_with(run(sample, tmp_path, m), "not an absolute local path", "past end of")


def test_not_version_1(sample, tmp_path):
    failed_with(run(sample, tmp_path, lambda d: d.pop("version")), "expected {'version': 1")


# --------------------------------------------------------------------------
# zarrgate.variables: transcode and refused
# --------------------------------------------------------------------------


def meta(d, **variables):
    d["zarrgate"] = {"version": 1, "source": {}, "variables": variables}


def test_transcode_is_an_allowed_exception(sample, tmp_path):
    def m(d):
        drop_var(d, "count")
        drop_var(d, "sub/w")
        meta(d, count={"status": "transcode", "reason": "blosc filter"},
             **{"sub/w": {"status": "transcode", "reason": "szip"}, "tas": {"status": "referenced"}})

    res = run(sample, tmp_path, m)
    assert res.ok, res.summary()
    assert res.exceptions["transcode"] == 2, res.exception_details


def test_transcode_but_present(sample, tmp_path):
    res = run(sample, tmp_path, lambda d: meta(d, count={"status": "transcode"}))
    failed_with(res, "listed as 'transcode' but present in refs")


def test_transcode_of_variable_xarray_does_not_show(sample, tmp_path):
    # e.g. a compound dataset netCDF4 skips: absent on both sides, so no difference
    res = run(sample, tmp_path, lambda d: meta(d, nope={"status": "transcode"}))
    assert res.ok, res.summary()
    assert res.exceptions["transcode"] == 0
    assert any("'nope'" in n or "nope:" in n for n in res.notes), res.notes


def test_nondeterministic_original_is_a_note_not_a_failure(sample, tmp_path, monkeypatch):
    def m(d):
        d["refs"]["count/0"][1] += 8

    rng = np.random.default_rng()
    real = fidelity._open_original_uncached

    def fake(path, g, decode_cf):
        ds = real(path, g, decode_cf)
        if "count" in ds.variables:  # a variable whose stored values are garbage
            ds["count"] = ds["count"].copy(data=ds["count"].values + rng.integers(1, 1000, size=3))
        return ds

    monkeypatch.setattr(fidelity, "_open_original_uncached", fake)
    res = run(sample, tmp_path, m)
    assert res.ok, res.summary()
    assert any("change from one read to the next" in n for n in res.notes), res.notes


def test_refused_readable_variable_is_a_failure(sample, tmp_path):
    def m(d):
        drop_var(d, "count")
        meta(d, count={"status": "refused", "reason": "unsupported"})

    failed_with(run(sample, tmp_path, m), "refused by indexer (unsupported) but the original reads it")


def test_unknown_status(sample, tmp_path):
    failed_with(run(sample, tmp_path, lambda d: meta(d, tas={"status": "maybe"})), "unknown status 'maybe'")


def test_transcoded_dimension_coordinate(sample, tmp_path):
    def m(d):
        drop_var(d, "x")
        meta(d, x={"status": "transcode", "reason": "test"})

    res = run(sample, tmp_path, m)
    assert res.ok, res.summary()
    assert res.exceptions["transcode"] == 1


# --------------------------------------------------------------------------
# attribute and value classification
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "orig, refs, verdict",
    [
        ("K", "K", "equal"),
        ("K", "k", "differ"),
        ("1", 1, "differ"),
        (b"K", "K", "differ"),
        (np.bytes_(b" "), b" ", "equal"),
        (np.str_("K"), "K", "equal"),
        (np.float64(1.5), 1.5, "equal"),
        (np.int64(3), 3, "equal"),
        (np.float32(0.5), 0.5, "attr_type"),
        (np.float32(0.1), float(np.float32(0.1)), "attr_type"),
        (np.float32(0.1), 0.1, "differ"),  # the float32 value must be written exactly
        (np.int16(3), 3, "attr_type"),
        (np.int16(3), 3.0, "attr_type"),
        (np.array([1.0, 2.0], "f4"), [1.0, 2.0], "attr_type"),
        (np.array([1.0, 2.0]), [1.0, 2.0], "equal"),
        (np.array([1.0, 2.0]), [1.0, 2.5], "differ"),
        (np.array([1.0, 2.0]), [1.0], "differ"),
        (np.array([7], "i4"), 7, "attr_type"),
        (np.float64("nan"), float("nan"), "equal"),
        (np.float32("nan"), float("nan"), "attr_type"),
        (np.float64("nan"), 0.0, "differ"),
        (np.array([1.0, 2.0]), "[1. 2.]", "differ"),
        (["a", "b"], ["a", "b"], "equal"),
        (["a", "b"], ["a", "c"], "differ"),
        (np.array([], "f8"), "", "differ"),
    ],
)
def test_compare_attr(orig, refs, verdict):
    assert fidelity.compare_attr(orig, refs)[0] == verdict


def test_values_equal_nan_and_mask_positions():
    a = np.array([1.0, np.nan, 3.0])
    assert fidelity.values_equal(a, a.copy())[0]
    ok, detail = fidelity.values_equal(a, np.array([1.0, 2.0, 3.0]))
    assert not ok and "NaN/mask positions differ" in detail
    assert not fidelity.values_equal(np.array([0.0]), np.array([-1e-300]))[0]


def test_values_equal_strings():
    obj = np.array(["a", "bb", ""], dtype=object)
    sdt = np.array(["a", "bb", ""], dtype=np.dtypes.StringDType())
    uni = np.array(["a", "bb", ""])
    assert fidelity.values_equal(obj, sdt)[0]
    assert fidelity.values_equal(uni, sdt)[0]
    assert fidelity.dtypes_equivalent(obj.dtype, sdt.dtype)
    assert not fidelity.values_equal(obj, np.array(["a", "b", ""], dtype=object))[0]
    assert not fidelity.values_equal(np.array([b"a"], dtype=object), np.array(["a"], dtype=object))[0]
    assert not fidelity.dtypes_equivalent(np.dtype("S3"), np.dtype("S4"))


def test_values_equal_times():
    a = np.array(["2000-01-01", "NaT"], dtype="M8[ns]")
    assert fidelity.values_equal(a, a.copy())[0]
    assert not fidelity.values_equal(a, np.array(["2000-01-02", "NaT"], dtype="M8[ns]"))[0]
    c1 = np.array([cftime.DatetimeNoLeap(2000, 1, 1), cftime.DatetimeNoLeap(2000, 3, 1)])
    c2 = np.array([cftime.DatetimeNoLeap(2000, 1, 1), cftime.DatetimeNoLeap(2000, 3, 1)])
    c3 = np.array([cftime.Datetime360Day(2000, 1, 1), cftime.Datetime360Day(2000, 3, 1)])
    assert fidelity.values_equal(c1, c2)[0]
    assert not fidelity.values_equal(c1, c3)[0]


def test_values_equal_structured_and_vlen():
    dt = np.dtype([("a", "i4"), ("b", "f8")])
    s1 = np.array([(1, 2.0), (3, np.nan)], dtype=dt)
    s2 = s1.copy()
    assert fidelity.values_equal(s1, s2)[0]
    s2["a"][1] = 4
    assert not fidelity.values_equal(s1, s2)[0]
    v1 = np.empty(2, dtype=object)
    v1[0], v1[1] = np.array([1, 2]), np.array([3])
    v2 = np.empty(2, dtype=object)
    v2[0], v2[1] = np.array([1, 2]), np.array([3, 4])
    assert fidelity.values_equal(v1, v1.copy())[0]
    assert not fidelity.values_equal(v1, v2)[0]


def test_byte_order_is_not_a_difference():
    assert fidelity.dtypes_equivalent(np.dtype(">f4"), np.dtype("<f4"))
    assert fidelity.values_equal(np.array([1.5], ">f4"), np.array([1.5], "<f4"))[0]


def test_isolation_survives_a_crash():
    import os

    with pytest.raises(fidelity.IsolationError):
        fidelity.run_isolated(os.abort, timeout=30)
    assert fidelity.run_isolated(sum, [1, 2, 3], timeout=30) == 6


def test_candidate_filter(tmp_path):
    (tmp_path / "a.nc").write_bytes(b"")
    (tmp_path / "b.bin").write_bytes(b"CDF\x01rest")
    (tmp_path / "c.bin").write_bytes(b"\x89HDF\r\n\x1a\n")
    (tmp_path / "MANIFEST.json").write_text("{}")
    (tmp_path / "README.md").write_text("x")
    names = [p.rsplit("/", 1)[1] for p in fidelity.find_candidates(tmp_path)]
    assert names == ["a.nc", "b.bin", "c.bin"]



def test_compare_crash_on_original_side_is_an_oracle_crash(sample, tmp_path, monkeypatch):
    import os

    path, refs = sample
    out = tmp_path / "refs.json"
    out.write_text(json.dumps(refs))
    # the forked child sees the patched function: compare "crashes", the refs load fine
    monkeypatch.setattr(fidelity, "compare", lambda *a: os.abort())
    res = fidelity.compare_isolated(path, out, timeout=60)
    assert not res.ok and res.oracle_crash and "SIGABRT" in res.oracle_crash


def test_compare_crash_with_broken_refs_is_a_failure(sample, tmp_path, monkeypatch):
    import os

    path, refs = sample
    out = tmp_path / "refs.json"
    out.write_text(json.dumps(refs))
    monkeypatch.setattr(fidelity, "compare", lambda *a: os.abort())
    monkeypatch.setattr(fidelity, "load_refs_everything", lambda *a: os.abort())
    res = fidelity.compare_isolated(path, out, timeout=60)
    assert not res.ok and res.oracle_crash is None
    assert "loading the refs alone fails too" in res.failures[0]


def test_probe_retries_and_any_crash_is_unreadable(sample, monkeypatch):
    import os

    path, _ = sample
    assert fidelity.probe_isolated(path, attempts=2)["readable"]

    def flaky(p):
        if os.environ.get("SELFTEST_CRASH_NOW") == "1":
            os.abort()
        return {"readable": True, "groups": [""], "reason": None}

    monkeypatch.setattr(fidelity, "probe", flaky)
    assert fidelity.probe_isolated(path, attempts=3)["readable"]
    monkeypatch.setenv("SELFTEST_CRASH_NOW", "1")
    info = fidelity.probe_isolated(path, attempts=3)
    assert not info["readable"] and "probe crashed (attempt 1 of 3)" in info["reason"]

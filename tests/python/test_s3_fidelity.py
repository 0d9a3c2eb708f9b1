"""Fidelity through S3: what ``zarrgate serve`` serves vs ``xr.open_dataset(original)``.

One gateway per source directory (``served`` in conftest.py) indexes it at start;
every candidate file is then opened as ``s3://SOURCE/<path>/<group>`` with
xarray's zarr engine over s3fs and compared by the rules of ``test_fidelity.py``
(see fidelity.py).  The gateway decodes the variables the plain references leave
out (``transcode``), so those must be present and equal, except the ones whose
filters it cannot decode.  Results go to ``summary-s3.json``.
"""

from __future__ import annotations

import time

import pytest

import fidelity


# ``case`` is parametrized by conftest.pytest_generate_tests (one per file).
def test_s3_fidelity(case, fidelity_settings, s3_recorder, readability, served) -> None:
    s = fidelity_settings
    src = served(case.source)
    if isinstance(src, str):
        _fail(s3_recorder, case, src)
    info = {"readable": True} if case.engine else readability(case)
    if not info["readable"]:
        _check_served_alone(src, case, s3_recorder, info["reason"], s)
        return

    entry = src.entry(case)
    if entry is None or entry.get("status") == "failed":
        _fail(s3_recorder, case,
              "not in the gateway's catalog" if entry is None else f"indexing failed: {entry.get('error')}")

    t0 = time.monotonic()
    result = s.compare(case.path, src.view(case), case.engine or info.get("engine"))
    _gateway_survived(src, result)
    s3_recorder.finish(case, result, compare_seconds=time.monotonic() - t0)


def _fail(recorder, case, why: str, reason: str | None = None) -> None:
    result = fidelity.FileResult(path=str(case.path), ok=False, failures=[why])
    recorder.record(case, "failed", result=result, reason=reason)
    pytest.fail(f"{case.id}: {why}", pytrace=False)


def _gateway_survived(src, result: fidelity.FileResult) -> None:
    gone = src.exited()
    if gone:
        result.failures.append(gone)
        result.ok = False


def _check_served_alone(src, case, recorder, reason: str, s) -> None:
    """The oracle cannot read this file, so there is nothing to compare with. What users still
    depend on: either the gateway lists the dataset, its metadata is valid and every value it
    serves loads, or indexing failed cleanly (the catalog says why) and the dataset is absent."""
    entry = src.entry(case)
    listed = _listed(src, case)
    if entry is not None and entry.get("status") == "failed":
        failures = [] if entry.get("error") else ["the catalog says indexing failed but gives no error"]
        if listed:
            failures.append("indexing failed, but the gateway lists the dataset")
        result = fidelity.FileResult(path=str(case.path), ok=not failures, failures=failures,
                                     notes=[f"indexing failed: {entry.get('error')}"])
    elif entry is None or not listed:
        why = "not in the gateway's catalog" if entry is None else "in the catalog, but the gateway does not list it"
        result = fidelity.FileResult(path=str(case.path), ok=False, failures=[why])
    else:
        result = _check_alone(src.view(case), str(case.path), s)
        _gateway_survived(src, result)
    if result.ok:
        recorder.record(case, "unreadable", result=result, reason=reason)
        return
    recorder.record(case, "failed", result=result, reason=f"original unreadable ({reason})")
    pytest.fail(f"{case.id} (original unreadable: {reason}):\n" + result.summary(), pytrace=False)


def _listed(src, case) -> bool:
    """Whether the gateway lists ``<rel>/`` under its parent prefix (ListObjectsV2 with a delimiter)."""
    key = f"{src.gateway.bucket}/{case.rel}"
    parent = key.rsplit("/", 1)[0]
    try:
        names = src.gateway.s3fs().ls(parent, detail=False, refresh=True)
    except FileNotFoundError:
        return False
    return key in {n.rstrip("/") for n in names}


def _check_alone(view, original: str, s) -> fidelity.FileResult:
    if s.in_process:
        return fidelity.check_alone(view, original)
    try:
        return fidelity.run_isolated(fidelity.check_alone, view, original, timeout=s.compare_timeout)
    except fidelity.IsolationError as e:
        return fidelity.FileResult(path=view.location, ok=False, failures=[f"loading the gateway alone: {e}"])

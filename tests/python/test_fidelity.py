"""End-to-end fidelity: ``zarrgate index`` output vs ``xr.open_dataset(original)``.

One test per candidate file under ``$ZARRGATE_FIXTURES`` (all must pass) and
per candidate under ``$ZARRGATE_CORPUS``. Where the oracle itself cannot read a file
("unreadable"), the test checks that the indexer still indexes it or fails cleanly.  See conftest.py for
the environment variables and fidelity.py for what is compared.
"""

from __future__ import annotations

import subprocess
import time

import pytest

import fidelity


def _index(cmd: tuple[str, ...], case, out, timeout: float, cwd) -> tuple[str | None, float]:
    """Run the indexer; returns (error message or None, seconds)."""
    argv = [*cmd, "index", str(case.path), "-o", str(out)]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"indexer timed out after {timeout:.0f}s: {' '.join(argv)}", time.monotonic() - t0
    dt = time.monotonic() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-8:])
        return f"indexer exited with {proc.returncode}: {tail}", dt
    if not out.is_file():
        return f"indexer exited 0 but wrote no {out.name}", dt
    return None, dt


def _assert_indexes_or_fails_cleanly(cmd, case, out, s) -> None:
    """The oracle cannot read this file, so there is nothing to compare. What users still
    depend on: the indexer either writes valid references or exits 1 with one clear message
    naming the file; it is never killed by a signal and never hangs."""
    argv = [*cmd, "index", str(case.path), "-o", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=s.index_timeout,
                          stdin=subprocess.DEVNULL, cwd=s.repo)
    if proc.returncode == 0:
        doc = fidelity.load_refs_json(out)
        assert doc.get("version") == 1 and "refs" in doc and "zarrgate" in doc
    else:
        assert proc.returncode == 1, f"exit {proc.returncode}: {proc.stderr[-500:]}"
        assert proc.stderr.startswith("zarrgate: ") and case.path.name in proc.stderr, proc.stderr
        assert "panicked" not in proc.stderr


def _h5netcdf_view(out, info: dict) -> str | None:
    """A file netCDF-C refuses must be indexed with h5netcdf's view, which xarray's oracle
    (``engine="h5netcdf"``) shows."""
    view = fidelity.load_refs_json(out)["zarrgate"].get("view")
    if view != "h5netcdf":
        return (f"netCDF-C refuses the file ({info['netcdf_reason']}) and h5netcdf opens it, "
                f"but the indexer reports view {view!r}, not 'h5netcdf'")
    return None


# ``case`` is parametrized by conftest.pytest_generate_tests (one per file).
def test_fidelity(case, zarrgate_cmd, fidelity_settings, recorder, readability, tmp_path) -> None:
    s = fidelity_settings
    # a fixture the default engine crashes on is compared against engine="h5netcdf"
    info = {"readable": True} if case.engine else readability(case)
    if not info["readable"]:
        recorder.record(case, "unreadable", reason=info["reason"])
        _assert_indexes_or_fails_cleanly(zarrgate_cmd, case, tmp_path / "refs.json", s)
        return

    engine = case.engine or info.get("engine")
    out = tmp_path / "refs.json"
    err, seconds = _index(zarrgate_cmd, case, out, s.index_timeout, s.repo)
    if not err and info.get("engine") == "h5netcdf":
        err = _h5netcdf_view(out, info)
    if err:
        result = fidelity.FileResult(path=str(case.path), ok=False, failures=[err])
        recorder.record(case, "failed", result=result, index_seconds=seconds)
        pytest.fail(f"{case.id}: {err}", pytrace=False)

    t0 = time.monotonic()
    result = s.compare(case.path, out, engine)
    recorder.finish(case, result, index_seconds=seconds, compare_seconds=time.monotonic() - t0)

"""End-to-end fidelity: ``zarrgate index`` output vs ``xr.open_dataset(original)``.

One test per candidate file under ``$ZARRGATE_FIXTURES`` (all must pass) and
per candidate under ``$ZARRGATE_CORPUS`` (unreadable ones, where the oracle
itself fails, are skipped and reported as "unreadable").  See conftest.py for
the environment variables and fidelity.py for what is compared.
"""

from __future__ import annotations

import subprocess
import time

import pytest

import fidelity


def _status(result: fidelity.FileResult) -> str:
    if not result.ok:
        return "failed"
    return "clean_with_exceptions" if sum(result.exceptions.values()) else "clean"


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


# ``case`` is parametrized by conftest.pytest_generate_tests (one per file).
def test_fidelity(case, zarrgate_cmd, fidelity_settings, recorder, tmp_path) -> None:
    s = fidelity_settings
    if case.source == "corpus":
        info = (fidelity.probe(case.path) if s.in_process
                else fidelity.probe_isolated(case.path, timeout=s.compare_timeout))
        if not info["readable"]:
            recorder.record(case, "unreadable", reason=info["reason"])
            pytest.skip(f"unreadable by xr.open_dataset: {info['reason']}")

    out = tmp_path / "refs.json"
    err, seconds = _index(zarrgate_cmd, case, out, s.index_timeout, s.repo)
    if err:
        result = fidelity.FileResult(path=str(case.path), ok=False, failures=[err])
        recorder.record(case, "failed", result=result, index_seconds=seconds)
        pytest.fail(f"{case.id}: {err}", pytrace=False)

    result = (fidelity.compare(case.path, out) if s.in_process
              else fidelity.compare_isolated(case.path, out, timeout=s.compare_timeout))
    recorder.record(case, _status(result), result=result, index_seconds=seconds)
    if not result.ok:
        pytest.fail(result.summary(), pytrace=False)

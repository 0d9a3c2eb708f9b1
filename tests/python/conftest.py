"""Fixtures, settings and the session summary for the fidelity suite.

Environment:

``ZARRGATE_BIN``
    indexer command, split with shlex (default ``<repo>/target/debug/zarrgate``);
    e.g. ``"/work/main/.venv/bin/python tests/python/kerchunk_index.py"``.
    Relative paths are resolved against the repository root.
``ZARRGATE_FIXTURES``
    fixture directory, every candidate file is compared (default
    ``<repo>/fixtures/data/good``).
``ZARRGATE_CORPUS``
    corpus directory, every *readable* candidate is compared (default
    ``<repo>/../shared/corpus``).
``ZARRGATE_REPORT_DIR``
    where ``summary.json`` is written (default ``<repo>/target/fidelity``).
``ZARRGATE_INDEX_TIMEOUT`` / ``ZARRGATE_COMPARE_TIMEOUT``
    seconds per file (defaults 120 / 600).
``ZARRGATE_PROBE_ATTEMPTS`` (default 3)
    fresh probes that must all succeed for a corpus file to count as readable
    (netCDF-C crashes nondeterministically on some HDF5 files); verdicts are
    cached in ``<report dir>/probe-cache.json`` unless ``ZARRGATE_PROBE_CACHE=0``.
``ZARRGATE_FIDELITY_INPROCESS=1``
    run probe/compare in the pytest process (for pdb); a netCDF-C crash then
    kills the session.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import fidelity  # noqa: E402

STATUSES = ("clean", "clean_with_exceptions", "failed", "unreadable")


@dataclass(frozen=True)
class Settings:
    repo: Path
    fixtures_dir: Path
    corpus_dir: Path
    report_dir: Path
    bin_cmd: tuple[str, ...]
    index_timeout: float
    compare_timeout: float
    in_process: bool
    probe_attempts: int
    probe_cache: bool


def _resolve_cmd(raw: str) -> tuple[str, ...]:
    parts = shlex.split(raw)
    out = []
    for p in parts:
        # make relative paths independent of the cwd pytest was started in
        if not os.path.isabs(p) and not p.startswith("-") and (REPO / p).exists() and not Path(p).exists():
            p = str(REPO / p)
        out.append(p)
    return tuple(out)


def settings() -> Settings:
    env = os.environ
    return Settings(
        repo=REPO,
        fixtures_dir=Path(env.get("ZARRGATE_FIXTURES", REPO / "fixtures" / "data" / "good")).resolve(),
        corpus_dir=Path(env.get("ZARRGATE_CORPUS", REPO.parent / "shared" / "corpus")).resolve(),
        report_dir=Path(env.get("ZARRGATE_REPORT_DIR", REPO / "target" / "fidelity")).resolve(),
        bin_cmd=_resolve_cmd(env.get("ZARRGATE_BIN", str(REPO / "target" / "debug" / "zarrgate"))),
        index_timeout=float(env.get("ZARRGATE_INDEX_TIMEOUT", "120")),
        compare_timeout=float(env.get("ZARRGATE_COMPARE_TIMEOUT", "600")),
        in_process=env.get("ZARRGATE_FIDELITY_INPROCESS", "") not in ("", "0"),
        probe_attempts=int(env.get("ZARRGATE_PROBE_ATTEMPTS", "3")),
        probe_cache=env.get("ZARRGATE_PROBE_CACHE", "1") not in ("", "0"),
    )


@dataclass(frozen=True)
class Case:
    source: str  # "fixtures" | "corpus"
    root: Path
    path: Path

    @property
    def rel(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    @property
    def id(self) -> str:
        return f"{self.source}:{self.rel}"


def collect_cases(s: Settings | None = None) -> list[Case]:
    s = s or settings()
    cases = []
    for source, root in (("fixtures", s.fixtures_dir), ("corpus", s.corpus_dir)):
        for p in fidelity.find_candidates(root):
            cases.append(Case(source, root, Path(p)))
    return cases


# --------------------------------------------------------------------------
# Recording and the session summary
# --------------------------------------------------------------------------

_RECORDS: dict[str, dict] = {}


class Recorder:
    def record(self, case: Case, status: str, *, result: fidelity.FileResult | None = None,
               reason: str | None = None, index_seconds: float | None = None,
               compare_seconds: float | None = None) -> None:
        assert status in STATUSES, status
        entry = {
            "id": case.id,
            "source": case.source,
            "path": str(case.path),
            "rel": case.rel,
            "status": status,
            "exceptions": {k: 0 for k in fidelity.EXCEPTION_KINDS},
            "failures": [],
            "exception_details": [],
            "reason": reason,
            "notes": [],
            "index_seconds": None if index_seconds is None else round(index_seconds, 3),
            "compare_seconds": None if compare_seconds is None else round(compare_seconds, 3),
        }
        if result is not None:
            entry["exceptions"] = {k: int(result.exceptions.get(k, 0)) for k in fidelity.EXCEPTION_KINDS}
            entry["failures"] = list(result.failures)
            entry["exception_details"] = list(result.exception_details)
            entry["notes"] = list(result.notes)
        _RECORDS[case.id] = entry


class ProbeCache:
    """Readability verdicts kept in ``<report dir>/probe-cache.json``.

    A verdict is reused only for the same file (path, size, mtime), the same
    netCDF-C / netCDF4 / HDF5 / xarray versions and the same attempt count.
    """

    def __init__(self, s: Settings) -> None:
        import h5py
        import netCDF4
        import xarray

        self.enabled = s.probe_cache and not s.in_process
        self.file = s.report_dir / "probe-cache.json"
        self.env = (f"netCDF4 {netCDF4.__version__} libnetcdf {netCDF4.__netcdf4libversion__}"
                    f" hdf5 {h5py.version.hdf5_version} xarray {xarray.__version__}"
                    f" attempts {s.probe_attempts}")
        self.data: dict = {}
        if self.enabled and self.file.is_file():
            try:
                doc = json.loads(self.file.read_text())
                if doc.get("env") == self.env:
                    self.data = doc.get("entries", {})
            except (OSError, ValueError):
                self.data = {}

    def get(self, path: Path, compute) -> dict:
        st = path.stat()
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
        if self.enabled and key in self.data:
            return self.data[key]
        info = compute(path)
        if self.enabled:
            self.data[key] = info
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"env": self.env, "entries": self.data}, indent=0))
            tmp.replace(self.file)
        return info


@pytest.fixture(scope="session")
def probe_cache(fidelity_settings: Settings) -> ProbeCache:
    return ProbeCache(fidelity_settings)


@pytest.fixture(scope="session")
def fidelity_settings() -> Settings:
    return settings()


@pytest.fixture(scope="session")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="session")
def zarrgate_cmd(fidelity_settings: Settings) -> tuple[str, ...]:
    cmd = fidelity_settings.bin_cmd
    exe = cmd[0] if cmd else ""
    if not cmd or not (shutil.which(exe) or (os.path.isfile(exe) and os.access(exe, os.X_OK))):
        pytest.fail(
            f"indexer not found: {' '.join(cmd) or '(empty)'}; build it with `cargo build -p zarrgate`"
            " or set ZARRGATE_BIN (e.g. to '.venv/bin/python tests/python/kerchunk_index.py')",
            pytrace=False,
        )
    return cmd


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every test that takes ``case`` over the candidate files."""
    if "case" in metafunc.fixturenames:
        params = [pytest.param(c, id=c.id, marks=getattr(pytest.mark, c.source)) for c in collect_cases()]
        metafunc.parametrize("case", params)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fixtures: a file from $ZARRGATE_FIXTURES (select with -m fixtures)")
    config.addinivalue_line("markers", "corpus: a file from $ZARRGATE_CORPUS (select with -m corpus)")


def _totals(records: list[dict]) -> dict:
    counts = {s: 0 for s in STATUSES}
    exc_files = {k: 0 for k in fidelity.EXCEPTION_KINDS}
    exc_total = {k: 0 for k in fidelity.EXCEPTION_KINDS}
    for r in records:
        counts[r["status"]] += 1
        if r["status"] in ("clean", "clean_with_exceptions"):
            for k, n in r["exceptions"].items():
                if n:
                    exc_files[k] += 1
                    exc_total[k] += n
    return {
        "files": len(records),
        **counts,
        "compared": counts["clean"] + counts["clean_with_exceptions"] + counts["failed"],
        "with_notes": sum(1 for r in records if r.get("notes")),
        "exception_files": exc_files,
        "exception_instances": exc_total,
    }


def summary_doc(records: list[dict] | None = None) -> dict:
    records = sorted((records if records is not None else _RECORDS.values()), key=lambda r: r["id"])
    s = settings()
    return {
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "indexer": list(s.bin_cmd),
        "fixtures_dir": str(s.fixtures_dir),
        "corpus_dir": str(s.corpus_dir),
        "totals": {
            src or "all": _totals([r for r in records if not src or r["source"] == src])
            for src in ("", "fixtures", "corpus")
        },
        "files": records,
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _RECORDS or hasattr(session.config, "workerinput"):
        return
    s = settings()
    s.report_dir.mkdir(parents=True, exist_ok=True)
    out = s.report_dir / "summary.json"
    doc = summary_doc()
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(out)
    session.config.stash[_SUMMARY_PATH] = str(out)


_SUMMARY_PATH = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if not _RECORDS:
        return
    tr = terminalreporter
    doc = summary_doc()
    tr.section("zarrgate fidelity summary")
    tr.write_line(f"indexer: {' '.join(doc['indexer'])}")
    kinds = fidelity.EXCEPTION_KINDS
    header = f"{'source':<9} {'files':>5} {'clean':>5} {'w/exc':>5} {'failed':>6} {'unread':>6}   " + "  ".join(
        f"{k}" for k in kinds
    )
    tr.write_line(header)
    for src in ("fixtures", "corpus", "all"):
        t = doc["totals"][src]
        if not t["files"]:
            continue
        exc = "  ".join(
            f"{t['exception_files'][k]:>{len(k)}}" for k in kinds
        )
        tr.write_line(
            f"{src:<9} {t['files']:>5} {t['clean']:>5} {t['clean_with_exceptions']:>5} {t['failed']:>6}"
            f" {t['unreadable']:>6}   {exc}"
        )
    tr.write_line("(exception columns: files clean except for that kind; see summary.json for instances)")
    noted = [r for r in doc["files"] if r.get("notes")]
    if noted:
        tr.write_line(f"notes (parts the oracle cannot verify; not failures) in {len(noted)} file(s):")
        for r in noted:
            for n in r["notes"][:3]:
                tr.write_line(f"  {r['id']}: {n[:200]}")
    failed = [r for r in doc["files"] if r["status"] == "failed"]
    if failed:
        tr.write_line(f"failed ({len(failed)}):")
        for r in failed:
            first = (r["failures"] or [r.get("reason") or ""])[0].splitlines()[0]
            tr.write_line(f"  {r['id']}: {len(r['failures'])} failure(s); first: {first[:160]}")
    path = config.stash.get(_SUMMARY_PATH, None)
    if path:
        tr.write_line(f"summary written to {path}")

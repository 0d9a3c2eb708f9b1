"""Fixtures, settings and the session summaries for the fidelity suites.

``test_fidelity.py`` compares the references of ``zarrgate index`` (summary
``summary.json``), ``test_s3_fidelity.py`` the datasets ``zarrgate serve``
serves (``summary-s3.json``), by the same rules and on the same files.

Environment:

``ZARRGATE_BIN``
    indexer command, split with shlex (default the debug build, under
    ``$CARGO_TARGET_DIR`` when set, else ``<repo>/target``);
    e.g. ``"/work/main/.venv/bin/python tests/python/kerchunk_index.py"``.
    Relative paths are resolved against the repository root.
``ZARRGATE_FIXTURES``
    fixture directory, every candidate file is compared (default
    ``<repo>/fixtures/data/good``).
``ZARRGATE_CORPUS``
    corpus directory, every *readable* candidate is compared (default
    ``<repo>/../shared/corpus``).
``ZARRGATE_REPORT_DIR``
    where ``summary.json`` and ``summary-s3.json`` are written (default
    ``<repo>/target/fidelity``).
``ZARRGATE_SERVE_BIN``
    the gateway command for the S3 suite (see gateway.py; default the debug
    build).  It indexes each source directory into a fresh catalog at start.
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
import gateway  # noqa: E402

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

    def compare(self, path: Path, other: "fidelity.ZarrView | Path", engine: str | None = None) -> fidelity.FileResult:
        """:func:`fidelity.compare` of *other* against *path*, in a child process unless in_process."""
        if self.in_process:
            return fidelity.compare(path, other, engine)
        return fidelity.compare_isolated(path, other, timeout=self.compare_timeout, engine=engine)


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
        bin_cmd=_resolve_cmd(env.get("ZARRGATE_BIN", str(gateway.debug_build()))),
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
    #: xarray's engine for the oracle: None for the default engine; "h5netcdf" for fixtures the
    #: default engine crashes on (``expect="h5netcdf"`` in fixtures/generate.py)
    engine: str | None = None

    @property
    def rel(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    @property
    def id(self) -> str:
        return f"{self.source}:{self.rel}"


def collect_cases(s: Settings | None = None) -> list[Case]:
    s = s or settings()
    if os.environ.get("CI") and not s.corpus_dir.is_dir():
        # Without it the fidelity suites would pass on the fixtures alone.
        raise pytest.UsageError(f"the corpus is missing at {s.corpus_dir} (ZARRGATE_CORPUS); CI must run every suite")
    cases = []
    engines = _fixture_engines(s.fixtures_dir)
    for source, root in (("fixtures", s.fixtures_dir), ("corpus", s.corpus_dir)):
        for p in fidelity.find_candidates(root):
            engine = engines.get(Path(p).resolve()) if source == "fixtures" else None
            cases.append(Case(source, root, Path(p), engine))
    return cases


def _fixture_engines(fixtures_dir: Path) -> dict[Path, str]:
    """The fixtures whose oracle is ``engine="h5netcdf"``, from the generator's manifest."""
    manifest = fixtures_dir.parent / "manifest.json"
    if not manifest.is_file():
        return {}
    entries = json.loads(manifest.read_text())
    return {(fixtures_dir.parent / e["path"]).resolve(): "h5netcdf" for e in entries if e.get("expect") == "h5netcdf"}


# --------------------------------------------------------------------------
# Recording and the session summaries
# --------------------------------------------------------------------------

#: every recorder of the session, by summary name
_RECORDERS: dict[str, "Recorder"] = {}


class Recorder:
    """The outcome of each case for one summary, ``<report dir>/<name>.json``.

    *via* says how the Zarr side was read (``reference://``, ``s3``).
    """

    def __init__(self, name: str, via: str) -> None:
        self.name, self.via = name, via
        self.records: dict[str, dict] = {}
        _RECORDERS[name] = self

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
            "transcoded": [],
            "reason": reason,
            "notes": [],
            "index_seconds": None if index_seconds is None else round(index_seconds, 3),
            "compare_seconds": None if compare_seconds is None else round(compare_seconds, 3),
        }
        if result is not None:
            entry["exceptions"] = {k: int(result.exceptions.get(k, 0)) for k in fidelity.EXCEPTION_KINDS}
            entry["failures"] = list(result.failures)
            entry["exception_details"] = list(result.exception_details)
            entry["transcoded"] = list(result.transcoded)
            entry["notes"] = list(result.notes)
        self.records[case.id] = entry

    def finish(self, case: Case, result: fidelity.FileResult, *, index_seconds: float | None = None,
               compare_seconds: float | None = None) -> None:
        """Records a comparison and fails the test if it failed.

        A crash of netCDF-C on a corpus original while the Zarr side loads
        fine on its own makes the file unreadable, not failed.
        """
        if result.oracle_crash and case.source == "corpus":
            self.record(case, "unreadable", reason=result.oracle_crash)
            return
        self.record(case, result.status, result=result, index_seconds=index_seconds,
                    compare_seconds=compare_seconds)
        if not result.ok:
            pytest.fail(result.summary(), pytrace=False)


class ProbeCache:
    """Readability verdicts kept in ``<report dir>/probe-cache.json``.

    A verdict is reused only for the same file (path, size, mtime), the same
    netCDF-C / netCDF4 / HDF5 / xarray versions and the same attempt count.
    """

    def __init__(self, s: Settings) -> None:
        import h5netcdf
        import h5py
        import netCDF4
        import xarray

        self.enabled = s.probe_cache and not s.in_process
        self.file = s.report_dir / "probe-cache.json"
        self.env = (f"netCDF4 {netCDF4.__version__} libnetcdf {netCDF4.__netcdf4libversion__}"
                    f" hdf5 {h5py.version.hdf5_version} h5netcdf {h5netcdf.__version__} xarray {xarray.__version__}"
                    f" attempts {s.probe_attempts}")
        self.data: dict = {}
        if self.enabled and self.file.is_file():
            try:
                doc = json.loads(self.file.read_text())
                if doc.get("env") == self.env:
                    self.data = doc.get("entries", {})
            except (OSError, ValueError):
                self.data = {}

    def get(self, path: Path, compute, kind: str = "") -> dict:
        st = path.stat()
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}" + (f"|{kind}" if kind else "")
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
def readability(fidelity_settings: Settings, probe_cache: ProbeCache):
    """``readability(case)``: the probe verdict ``{"readable", "groups", "reason"}``.

    Fixtures are always compared; a corpus file only when every group opens
    and loads, in *probe_attempts* fresh processes (cached across sessions).
    """
    s = fidelity_settings

    def probe(path: Path) -> dict:
        if s.in_process:
            return fidelity.probe(path)
        return fidelity.probe_isolated(path, timeout=s.compare_timeout, attempts=s.probe_attempts)

    def probe_h5netcdf(path: Path) -> dict:
        return fidelity.run_isolated(fidelity.probe_h5netcdf, path, timeout=s.compare_timeout)

    def check(case: Case) -> dict:
        if case.source != "corpus":
            return {"readable": True, "groups": [], "reason": None}
        info = probe_cache.get(case.path, probe)
        if fidelity.netcdf_refused(info):
            # netCDF-C refuses the file: the oracle is xarray with engine="h5netcdf", which
            # must open every group
            h5 = probe_cache.get(case.path, probe_h5netcdf, kind="h5netcdf")
            if h5["readable"]:
                return {**h5, "engine": "h5netcdf", "netcdf_reason": info["reason"]}
        return info

    return check


@pytest.fixture(scope="session")
def fidelity_settings() -> Settings:
    return settings()


@pytest.fixture(scope="session")
def recorder() -> Recorder:
    return Recorder("summary", "reference://")


@pytest.fixture(scope="session")
def s3_recorder() -> Recorder:
    return Recorder("summary-s3", "s3")


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


# --------------------------------------------------------------------------
# The gateways of the S3 suite
# --------------------------------------------------------------------------


@dataclass
class ServedSource:
    """One source directory behind its own ``zarrgate serve`` process (bucket = source name)."""

    source: str
    gateway: gateway.Gateway
    #: the catalog the gateway wrote while indexing at start, as ``zarrgate export`` writes it
    catalog: dict
    #: where it was exported
    exported: Path
    #: whether a case has already failed because the gateway exited
    exit_reported: bool = False

    def entry(self, case: Case) -> dict | None:
        return self.catalog.get("datasets", {}).get(case.rel)

    def view(self, case: Case) -> fidelity.GatewayView:
        entry = self.entry(case) or {}
        meta = self.exported / entry["refs"] if entry.get("refs") else None
        return fidelity.GatewayView(self.gateway.endpoint, self.gateway.bucket, case.rel,
                                    None if meta is None else str(meta))

    def exited(self) -> str | None:
        """Why the gateway is gone (exit status and its last log lines), or None while it runs.

        The case that calls this first reports the exit; the next case gets a new gateway.
        """
        code = self.gateway.proc.poll()
        if code is None:
            return None
        self.exit_reported = True
        tail = "".join(self.gateway.log[-20:])
        return f"the {self.source} gateway exited with {code}:\n{tail}"


@pytest.fixture(scope="session")
def served(fidelity_settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    """``served(source)``: that source's gateway, started on first use and kept for the session.

    Starting indexes the whole directory (about a minute for the corpus).  It
    returns a message instead when the gateway cannot start (then for every
    case of that source).  A gateway that exited is started again on the same
    catalog; the first case to see the exit fails with it.
    """
    roots = {"fixtures": fidelity_settings.fixtures_dir, "corpus": fidelity_settings.corpus_dir}
    started: dict[str, ServedSource | str] = {}

    def get(source: str) -> ServedSource | str:
        if source not in started:
            started[source] = _start(source, roots[source], tmp_path_factory.mktemp(f"catalog-{source}"))
        got = started[source]
        if isinstance(got, str) or got.gateway.proc.poll() is None:
            return got
        gone = None if got.exit_reported else got.exited()
        started[source] = _start(source, roots[source], got.gateway.catalog_dir)
        return started[source] if gone is None else f"{gone}\n(started again for the next cases)"

    yield get
    for got in started.values():
        if isinstance(got, ServedSource):
            got.gateway.stop()


def _start(source: str, root: Path, catalog_dir: Path) -> ServedSource | str:
    """The running gateway, or why it did not start."""
    try:
        gw = gateway.start_gateway(root, source, catalog_dir)
    except (OSError, RuntimeError) as e:
        return f"zarrgate serve for {source} ({' '.join(gateway.zarrgate_bin())}, --data {root}): {e}"
    try:
        exported = gw.exported()
        catalog = json.loads((exported / "catalog.json").read_text())
    except (OSError, ValueError, RuntimeError) as e:
        gw.stop()
        return f"zarrgate serve for {source} listens but its catalog does not export: {e}"
    return ServedSource(source, gw, catalog, exported)


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
    transcoded = [r for r in records if r.get("transcoded")]
    return {
        "files": len(records),
        **counts,
        "compared": counts["clean"] + counts["clean_with_exceptions"] + counts["failed"],
        "with_notes": sum(1 for r in records if r.get("notes")),
        "exception_files": exc_files,
        "exception_instances": exc_total,
        # variables marked transcode that the Zarr side serves decoded (the gateway)
        "transcoded_files": len(transcoded),
        "transcoded_variables": sum(len(r["transcoded"]) for r in transcoded),
    }


def summary_doc(rec: Recorder) -> dict:
    records = sorted(rec.records.values(), key=lambda r: r["id"])
    s = settings()
    return {
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # through S3, the gateway indexes its data directory itself
        "indexer": gateway.zarrgate_bin() if rec.via == "s3" else list(s.bin_cmd),
        "via": rec.via,
        "fixtures_dir": str(s.fixtures_dir),
        "corpus_dir": str(s.corpus_dir),
        "totals": {
            src or "all": _totals([r for r in records if not src or r["source"] == src])
            for src in ("", "fixtures", "corpus")
        },
        "files": records,
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return
    s = settings()
    written = {}
    for rec in _RECORDERS.values():
        if not rec.records:
            continue
        s.report_dir.mkdir(parents=True, exist_ok=True)
        out = s.report_dir / f"{rec.name}.json"
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary_doc(rec), indent=1, default=str))
        tmp.replace(out)
        written[rec.name] = str(out)
    session.config.stash[_SUMMARY_PATHS] = written


_SUMMARY_PATHS = pytest.StashKey[dict]()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    paths = config.stash.get(_SUMMARY_PATHS, {})
    for rec in _RECORDERS.values():
        if rec.records:
            _write_summary(terminalreporter, rec, paths.get(rec.name))


def _write_summary(tr, rec: Recorder, path: str | None) -> None:  # noqa: ANN001
    doc = summary_doc(rec)
    tr.section(f"zarrgate fidelity summary via {rec.via}")
    tr.write_line(f"{'gateway' if rec.via == 's3' else 'indexer'}: {' '.join(doc['indexer'])}")
    kinds = fidelity.EXCEPTION_KINDS
    header = f"{'source':<9} {'files':>5} {'clean':>5} {'w/exc':>5} {'failed':>6} {'unread':>6}   " + "  ".join(
        f"{k}" for k in kinds
    )
    if rec.via == "s3":
        header += "  served-transcoded"
    tr.write_line(header)
    for src in ("fixtures", "corpus", "all"):
        t = doc["totals"][src]
        if not t["files"]:
            continue
        exc = "  ".join(
            f"{t['exception_files'][k]:>{len(k)}}" for k in kinds
        )
        if rec.via == "s3":
            exc += f"  {t['transcoded_files']:>4} / {t['transcoded_variables']:<4}"
        tr.write_line(
            f"{src:<9} {t['files']:>5} {t['clean']:>5} {t['clean_with_exceptions']:>5} {t['failed']:>6}"
            f" {t['unreadable']:>6}   {exc}"
        )
    tr.write_line("(exception columns: files clean except for that kind; see the summary JSON for instances)")
    if rec.via == "s3":
        tr.write_line("(served-transcoded: files / variables the indexer marked transcode that the gateway"
                      " serves decoded)")
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
    if path:
        tr.write_line(f"summary written to {path}")

"""What operators trip over first: a run that would empty a catalog, a prebuilt catalog whose
file changed, a dataset that does not exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from gateway import REPO, export_catalog, get, start_gateway, zarrgate_bin

FIXTURES = REPO / "fixtures" / "data" / "good"
NAMES = ["cal_noleap.nc", "classic.nc", "nan_fill.nc", "groups.nc"]


def index(data: Path, catalog: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*zarrgate_bin(), "index", str(data), "--out", str(catalog), *extra],
                          capture_output=True, text=True)


def datasets(catalog: Path) -> set[str]:
    import json

    return set(json.loads((export_catalog(catalog) / "catalog.json").read_text())["datasets"])


@pytest.fixture
def tree(tmp_path) -> tuple[Path, Path]:
    data, catalog = tmp_path / "data", tmp_path / "catalog"
    data.mkdir()
    for name in NAMES:
        shutil.copy(FIXTURES / name, data / name)
    proc = index(data, catalog)
    assert proc.returncode == 0, proc.stderr
    return data, catalog


def test_an_empty_data_directory_does_not_empty_the_catalog(tree, tmp_path):
    data, catalog = tree
    # The mount point without its file system: an empty directory.
    data.rename(tmp_path / "data.unmounted")
    data.mkdir()
    proc = index(data, catalog)
    assert proc.returncode != 0
    assert "4 of the 4 datasets of this catalog would be removed" in proc.stderr, proc.stderr
    assert "holds no data file (is it mounted?)" in proc.stderr and "--allow-removals" in proc.stderr
    assert datasets(catalog) == set(NAMES), "nothing was changed"
    # `serve --data` refuses to start on it too, rather than serving an empty bucket.
    serve = subprocess.run([*zarrgate_bin(), "serve", "--bucket", "empty", "--data", str(data), "--catalog",
                            str(catalog), "--listen", "127.0.0.1:0", "--auth-db", str(tmp_path / "a.db")],
                           capture_output=True, text=True, timeout=120)
    assert serve.returncode != 0 and "would be removed" in serve.stderr, serve.stderr
    # Removing half is allowed; removing more needs the flag (or a higher --max-removals).
    for name in NAMES[:2]:
        shutil.copy(FIXTURES / name, data / name)
    proc = index(data, catalog)
    assert proc.returncode == 0 and "2 removed" in proc.stderr, proc.stderr
    (data / NAMES[0]).unlink()
    (data / NAMES[1]).unlink()
    assert index(data, catalog).returncode != 0
    proc = index(data, catalog, "--max-removals", "100%")
    assert proc.returncode == 0 and "2 removed" in proc.stderr
    assert "no NetCDF or HDF5 file was found under" in proc.stderr
    assert datasets(catalog) == set()


def test_a_catalog_given_another_tree_is_not_replaced_silently(tree, tmp_path):
    data, catalog = tree
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(FIXTURES / "scalar.nc", other / "scalar.nc")
    proc = index(other, catalog)
    assert proc.returncode != 0
    assert f"the catalog holds the datasets of {data}, not of {other}" in proc.stderr, proc.stderr
    assert datasets(catalog) == set(NAMES)
    proc = index(other, catalog, "--allow-removals")
    assert proc.returncode == 0 and "4 removed" in proc.stderr, proc.stderr
    assert datasets(catalog) == {"scalar.nc"}


def test_a_prebuilt_catalog_says_how_a_changed_file_is_served_again(tree):
    data, catalog = tree
    gw = start_gateway(None, "prebuilt", catalog)
    try:
        url = f"{gw.endpoint}/prebuilt/classic.nc/.zmetadata"
        assert get(url)[0] == 200
        shutil.copy(FIXTURES / "scalar.nc", data / "classic.nc.new")
        os.replace(data / "classic.nc.new", data / "classic.nc")
        for _ in range(5):
            status, body = get(url)
            assert status == 503, body[:300]
            text = body.decode()
            assert "does not re-index" in text and "zarrgate index" in text, text
            assert "being re-indexed" not in text
        time.sleep(0.3)
        stale_lines = [line for line in gw.log if "classic.nc" in line and "changed" in line]
        assert len(stale_lines) == 1, f"logged once, not per request: {stale_lines}"
        # The operator runs the command the message names: the dataset is served again.
        assert index(data, catalog).returncode == 0
        deadline = time.monotonic() + 10
        while get(url)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(url)[0] == 200
    finally:
        gw.stop()


def test_a_key_of_no_dataset_names_the_dataset(tree):
    _, catalog = tree
    gw = start_gateway(None, "named", catalog)
    try:
        for key, dataset in (("nosuch.nc/.zmetadata", "nosuch.nc"), ("a/b/nosuch.h5/tas/0.0", "a/b/nosuch.h5"),
                             ("nosuch/.zgroup", "nosuch")):
            status, body = get(f"{gw.endpoint}/named/{key}")
            assert status == 404 and b"<Code>NoSuchKey</Code>" in body
            import xml.etree.ElementTree as ET

            message = ET.fromstring(body).findtext("Message")
            assert f'bucket named has no dataset "{dataset}"' in message, message
        # A dataset that exists, without that key: the usual answer.
        status, body = get(f"{gw.endpoint}/named/classic.nc/nosuch/.zarray")
        assert status == 404 and b"The specified key does not exist.<" in body
    finally:
        gw.stop()
    # It said what it serves when it started, and that it stopped.
    deadline = time.monotonic() + 5
    while f"{gw.endpoint} stopped" not in "".join(gw.log) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = "".join(gw.log)
    assert f"bucket named: 4 files and 0 joined datasets from {catalog}; read: public" in log, log[-2000:]
    assert f"{gw.endpoint} stopped" in log, log[-2000:]


def test_the_configuration_example_in_the_docs_loads(tmp_path):
    text = (REPO / "docs" / "configuration.md").read_text()
    example = re.search(r"## Several collections from a file\n\n```toml\n(.*?)```", text, re.S).group(1)
    import tomllib

    tomllib.loads(example)
    path = tmp_path / "zarrgate.toml"
    path.write_text(example)
    proc = subprocess.run([*zarrgate_bin(), "serve", "--config", str(path)], capture_output=True, text=True, timeout=60)
    # It parses and validates: what stops it is a file the example names (its certificate or
    # data directory) that this machine does not have, not the configuration.
    assert proc.returncode != 0 and "not a valid configuration" not in proc.stderr, proc.stderr
    assert "/etc/zarrgate/tls" in proc.stderr or "/data/cmip6" in proc.stderr, proc.stderr


def serve_once(*args: str, timeout: float = 60) -> tuple[int | None, str]:
    """Starts `zarrgate serve`; returns (exit code or None if it listened, its output)."""
    proc = subprocess.Popen([*zarrgate_bin(), "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        lines = []
        deadline = time.monotonic() + timeout
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("listening on ") or time.monotonic() > deadline:
                return None, "".join(lines)
        return proc.wait(), "".join(lines)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()


def test_flags_take_units_and_host_names(tree, tmp_path):
    data, catalog = tree
    common = ("--catalog", str(catalog), "--auth-db", str(tmp_path / "auth.db"), "--ops-dir", str(tmp_path / "ops"))
    for listen in ("localhost:0", ":0", "127.0.0.1:0"):
        code, out = serve_once("--bucket", "units", "--listen", listen, "--client-timeout", "30s",
                               "--header-timeout", "1m", "--sync-limit", "512MiB", "--file-timeout", "10m", *common)
        assert code is None, out
        assert re.search(r"listening on http://(127\.0\.0\.1|0\.0\.0\.0|\[::1\]):\d+", out), out
    refusals = [
        (("--bucket", "units", "--sync-limit", "lots", *common), "is not a size"),
        (("--bucket", "units", "--client-timeout", "1.5s", *common), "is not a duration"),
        (("--bucket", "units", "--listen", "no-such-host.invalid:9000", *common), "e.g. 127.0.0.1:9000"),
        (("--bucket", "results", *common), "the gateway answers /results itself"),
        (("--bucket", "units", "--data", str(data / "classic.nc"), "--catalog", str(tmp_path / "c2")), "is a file"),
    ]
    for args, words in refusals:
        code, out = serve_once(*args)
        assert code not in (None, 0) and words in out, (args, out)


def test_the_port_is_taken_first_and_health_answers_while_indexing(tmp_path):
    import socket

    data, catalog = tmp_path / "data", tmp_path / "catalog"
    data.mkdir()
    src = tmp_path / "src.nc"
    shutil.copy(FIXTURES / "classic.nc", src)
    for i in range(3000):
        os.link(src, data / f"f{i:04d}.nc")
    common = ("--bucket", "boot", "--data", str(data), "--catalog", str(catalog), "--auth-db",
              str(tmp_path / "auth.db"), "--ops-dir", str(tmp_path / "ops"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    started = time.monotonic()
    code, out = serve_once(*common, "--listen", f"127.0.0.1:{taken.getsockname()[1]}")
    taken.close()
    assert code not in (None, 0) and "cannot listen on" in out, out
    assert time.monotonic() - started < 10 and not catalog.exists(), "it fails before indexing anything"

    proc = subprocess.Popen([*zarrgate_bin(), "serve", *common, "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        endpoint = None
        for line in proc.stdout:
            m = re.search(r"(http://127\.0\.0\.1:\d+) answers /healthz", line)
            if m:
                endpoint = m.group(1)
                break
        assert endpoint, "it says where it answers while it indexes"
        health, ready = get(f"{endpoint}/healthz"), get(f"{endpoint}/readyz")
        assert health[0] == 200 and ready[0] == 503, (health, ready)
        assert b"<Code>ServiceUnavailable</Code>" in get(f"{endpoint}/boot/f0000.nc/.zmetadata")[1]
        for line in proc.stdout:
            if line.startswith("listening on "):
                break
        assert get(f"{endpoint}/readyz")[0] == 200
        assert get(f"{endpoint}/boot/f0000.nc/.zmetadata")[0] == 200
    finally:
        proc.terminate()
        proc.wait()


def test_keys_use_the_configured_database_and_refuse_a_mistyped_one(tmp_path):
    import json

    db = tmp_path / "auth.db"
    config = tmp_path / "zarrgate.toml"
    config.write_text(f'auth_db = "{db}"\n\n[[collections]]\nbucket = "cfgkeys"\ncatalog = "{tmp_path / "cat"}"\n')

    def keys(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*zarrgate_bin(), "keys", *args], capture_output=True, text=True)

    typo = tmp_path / "auht.db"
    listed = keys("list", "--db", str(typo))
    assert listed.returncode != 0 and "there is no key database at" in listed.stderr, listed.stderr
    created = keys("create", "--db", str(typo), "--name", "a", "--owner", "a@example.org")
    assert created.returncode != 0 and "--create-db" in created.stderr, created.stderr
    assert not typo.exists() and not typo.parent.joinpath("auht.db").exists()
    # The gateway's database, from its configuration file.
    made = keys("create", "--config", str(config), "--name", "course", "--owner", "t@example.org", "--json")
    assert made.returncode == 0, made.stderr
    assert db.is_file()
    access = json.loads(made.stdout)["access_key"]
    assert access in keys("list", "--config", str(config), "--json").stdout
    usage = subprocess.run([*zarrgate_bin(), "usage", "--config", str(config)], capture_output=True, text=True)
    assert usage.returncode == 0, usage.stderr


def test_the_readme_operations_example_gives_the_data(tmp_path):
    """The README's notebook snippet, as printed, against a gateway of the demo data."""
    text = (REPO / "README.md").read_text()
    snippet = re.search(r"## Operations\n\n```python\n(.*?)```", text, re.S).group(1)
    gw = start_gateway(FIXTURES, "demo", tmp_path / "catalog")
    try:
        scope: dict = {}
        exec(snippet.replace("http://127.0.0.1:9000", gw.endpoint), scope)  # noqa: S102 - our own README
        ds = scope["ds"]
        import xarray as xr

        with xr.open_dataset(FIXTURES / "cal_noleap.nc") as original:
            years = original["tas"].groupby("time.year").mean()
        assert ds["tas"].sizes["time"] == years.sizes["year"]
    finally:
        gw.stop()


@pytest.mark.parametrize("command", ["index", "serve", "demo", "export", "keys create", "keys list", "keys show",
                                     "keys revoke", "usage"])
def test_every_flag_says_what_it_does(command):
    out = subprocess.run([*zarrgate_bin(), *command.split(), "--help"], capture_output=True, text=True).stdout
    lines = out.splitlines()
    silent = []
    for i, line in enumerate(lines):
        m = re.match(r"^\s+(?:-\w, )?(--[\w-]+)(?: <\w+>)?(.*)$", line)
        if not m or m.group(1) == "--help":
            continue
        described = m.group(2).strip() or (i + 1 < len(lines) and lines[i + 1].strip()
                                              and not lines[i + 1].strip().startswith("-"))
        if not described:
            silent.append(m.group(1))
    assert not silent, f"zarrgate {command}: flags without a help text: {silent}"


def test_the_access_log_has_a_line_per_request(tree, tmp_path):
    import json

    import requests

    from gateway import sigv4_headers

    data, catalog = tree
    log = tmp_path / "access.jsonl"
    gw = start_gateway(data, "logged", catalog, extra_args=("--access-log", str(log)))
    try:
        key, secret = gw.create_key("logger")
        time.sleep(0.6)  # the gateway re-reads keys every 0.25 s
        base, host = gw.endpoint, gw.endpoint.split("//")[1]
        sent = []

        def send(method: str, path: str, headers: dict | None = None, principal: str | None = None):
            r = requests.request(method, base + path, headers=headers or {}, timeout=60)
            sent.append((r, method, path, principal))

        send("GET", "/logged/classic.nc/.zmetadata")
        send("HEAD", "/logged/classic.nc/.zmetadata")
        send("GET", "/logged/nosuch.nc/.zmetadata")
        send("GET", "/logged?list-type=2&delimiter=/")
        path = "/logged/classic.nc/.zattrs"
        send("GET", path, sigv4_headers(path, host, key, secret), principal=key)
        send("GET", path, sigv4_headers(path, host, key, "wrong" + secret), principal=None)
        ops = "/ops/v1/average?dataset=logged/classic.nc&var=tas&dims=lat,lon&format=json"
        send("GET", ops)
        send("GET", ops)
        assert sent[-1][0].headers.get("X-Zarrgate-Cache") == "hit", sent[-1][0].text[:300]

        def lines():
            return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

        deadline = time.monotonic() + 10
        while len(lines()) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
        by_id = {line["request_id"]: line for line in lines()}
        ids = [r.headers["x-amz-request-id"] for r, *_ in sent]
        assert len(set(ids)) == len(ids), "every answer, operations' too, names its request"
        for (r, method, path, principal), rid in zip(sent, ids):
            line = by_id[rid]
            assert (line["method"], line["path"], line["status"]) == (method, path, r.status_code), line
            assert line["bytes"] == (0 if method == "HEAD" else len(r.content)), line
            assert line["principal"] == principal and line["client"] == "127.0.0.1", line
            assert line["duration_ms"] >= 0 and line["time"].endswith("Z") and "python-requests" in line["user_agent"]
        assert [by_id[i]["cache"] for i in ids[-2:]] == ["miss", "hit"]
        assert by_id[ids[5]]["status"] == 403
    finally:
        gw.stop()
    # Request ids differ from one run to the next (a log spanning restarts stays unambiguous).
    again = start_gateway(None, "logged", catalog, extra_args=("--access-log-format", "combined", "--access-log", "-"))
    try:
        r = requests.get(f"{again.endpoint}/logged/classic.nc/.zgroup", timeout=60)
        assert r.headers["x-amz-request-id"] not in ids
        deadline = time.monotonic() + 10
        while not any(r.headers["x-amz-request-id"] in x for x in again.out) and time.monotonic() < deadline:
            time.sleep(0.1)
        line = next(x for x in again.out if r.headers["x-amz-request-id"] in x)
        assert re.match(r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /logged/classic\.nc/\.zgroup '
                        r'HTTP/1\.1" 200 \d+ "-" "python-requests/[^"]+" [0-9A-F]{18} \d+\.\d{3} -$', line.strip()), line
    finally:
        again.stop()


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z +(ERROR|WARN|INFO|DEBUG|TRACE) (.*)$")


def _log_lines(gw) -> list[tuple[str, str]]:
    """The gateway's log as (level, message); every line must carry a timestamp and a level."""
    out = []
    for line in "".join(gw.log).splitlines():
        m = LOG_LINE.match(line)
        assert m, f"a log line without a timestamp and level: {line!r}"
        out.append((m.group(1), m.group(2)))
    return out


def _stopped(gw) -> None:
    gw.stop()
    deadline = time.monotonic() + 5
    while "stopped" not in "".join(gw.log) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["flag", "RUST_LOG"])
def test_the_log_has_levels_and_timestamps(tree, how):
    _, catalog = tree
    # debug: each dataset loaded from the catalog is logged, with the bucket
    args, env = (("--log-level", "debug"), None) if how == "flag" else ((), {"RUST_LOG": "debug"})
    gw = start_gateway(None, "levels", catalog, extra_args=args, env=env)
    try:
        status, _ = get(f"{gw.endpoint}/levels/classic.nc/.zmetadata")
        assert status == 200
    finally:
        _stopped(gw)
    lines = _log_lines(gw)
    assert ("INFO", f"{gw.endpoint} stopped (connections drained)") in lines, lines
    assert any(level == "DEBUG" and "bucket levels: loaded classic.nc from the catalog" in msg
               for level, msg in lines), lines

    # warn: start-up, loads and the shutdown line are left out; a warning still shows
    gw = start_gateway(None, "quiet", catalog, extra_args=("--log-level", "warn"))
    try:
        (tree[0] / "classic.nc").write_bytes((tree[0] / "classic.nc").read_bytes()[:-1] + b"\x00")
        os.utime(tree[0] / "classic.nc", (1, 1))
        status, _ = get(f"{gw.endpoint}/quiet/classic.nc/.zmetadata")
        status, _ = get(f"{gw.endpoint}/quiet/classic.nc/time/0")
        assert status == 503
    finally:
        _stopped(gw)
    lines = _log_lines(gw)
    assert lines and all(level in ("WARN", "ERROR") for level, _ in lines), lines
    assert any("classic.nc" in msg and "changed" in msg for _, msg in lines), lines


def test_an_unknown_log_level_is_refused_with_the_choices():
    proc = subprocess.run([*zarrgate_bin(), "--log-level", "loud", "keys", "list"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "possible values: error, warn, info, debug, trace" in proc.stderr


def test_readiness_fails_while_the_catalog_cannot_be_read(tree):
    _, catalog = tree
    gw = start_gateway(None, "ready", catalog)
    away = catalog.with_name("catalog.away")
    try:
        assert get(f"{gw.endpoint}/readyz")[0] == 200
        catalog.rename(away)  # an unmounted volume, say
        deadline = time.monotonic() + 5
        while get(f"{gw.endpoint}/readyz")[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        status, body = get(f"{gw.endpoint}/readyz")
        assert status == 503 and body == b"a catalog cannot be read\n"
        assert get(f"{gw.endpoint}/healthz")[0] == 200
        away.rename(catalog)
        deadline = time.monotonic() + 5
        while get(f"{gw.endpoint}/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(f"{gw.endpoint}/readyz")[0] == 200
    finally:
        if away.exists():
            away.rename(catalog)
        gw.stop()
    assert "cannot be read: its directory or database is gone" in "".join(gw.log)
    assert "can be read again" in "".join(gw.log)

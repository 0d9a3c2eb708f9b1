"""Start a real `zarrgate serve` process for client tests.

`zarrgate serve --listen 127.0.0.1:0` prints one line, ``listening on http://HOST:PORT``,
on standard output once it accepts connections (after indexing its data directory).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The real-data corpus, read in place (never copied into the repository).
CORPUS = Path(os.environ.get("ZARRGATE_CORPUS", REPO.parent / "shared" / "corpus"))


def corpus_missing(why: str) -> None:
    """Skips a test that needs the corpus, or fails it under CI (`CI` set), where a missing
    corpus must never pass as a run of fewer tests."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI must run every suite", pytrace=False)
    pytest.skip(why)


def wait_for(predicate, timeout: float = 120, step: float = 0.3):
    """The first truthy value of `predicate()`, polled every `step` seconds for `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not reached in time")


def chromium() -> str:
    """Debian's headless Chromium: CI fails without it (./make.sh test installs it), a local
    run skips."""
    import pytest

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (./make.sh test installs it)")
        pytest.skip("chromium is not installed (./make.sh test installs it)")
    return exe


def debug_build() -> Path:
    """The debug binary cargo builds, in ``$CARGO_TARGET_DIR`` when that is set."""
    return Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target").resolve() / "debug" / "zarrgate"


def zarrgate_bin() -> list[str]:
    """The gateway binary (``ZARRGATE_SERVE_BIN``, else the debug build)."""
    cmd = os.environ.get("ZARRGATE_SERVE_BIN") or str(debug_build())
    return shlex.split(cmd)


def get(url: str) -> tuple[int, bytes]:
    """The status and body of a GET of `url` (an error status is an answer, not an exception)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def export_catalog(catalog_dir: Path, *datasets: str, out: Path | None = None) -> Path:
    """What a catalog holds, as files (``zarrgate export``): ``catalog.json``, ``refs/<id>.json``
    (Kerchunk JSON), ``reports/<id>.json`` and ``joins/<id>.json``. Written afresh each call."""
    out = out or Path(f"{catalog_dir}.export")
    if out.exists():
        shutil.rmtree(out)
    proc = subprocess.run([*zarrgate_bin(), "export", str(catalog_dir), *datasets, "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"zarrgate export {catalog_dir} failed: {proc.stderr[-2000:]}")
    return out


@dataclass
class Gateway:
    endpoint: str
    bucket: str
    proc: subprocess.Popen
    catalog_dir: Path
    log: list[str] = field(default_factory=list)
    auth_db: Path | None = None
    #: what it printed on standard output
    out: list[str] = field(default_factory=list)
    ops_dir: Path | None = None
    _key: tuple[str, str] | None = None

    def exported(self) -> Path:
        """This gateway's catalog, exported now (see :func:`export_catalog`)."""
        return export_catalog(self.catalog_dir)

    def create_key(self, name: str = "test", groups: tuple[str, ...] = (), expires: str | None = None) -> tuple[str, str]:
        """A new access key in this gateway's database: (access key id, secret)."""
        args = [*zarrgate_bin(), "keys", "create", "--db", str(self.auth_db), "--name", name]
        args += ["--owner", "tests@example.org", "--json", *[a for g in groups for a in ("--group", g)]]
        if expires:
            args += ["--expires", expires]
        doc = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
        return doc["access_key"], doc["secret"]

    def key(self) -> tuple[str, str]:
        """One key shared by a test module, created on first use."""
        if self._key is None:
            self._key = self.create_key()
            time.sleep(0.6)  # the gateway re-reads keys every 0.25 s
        return self._key

    def s3fs(self, **kw):
        import s3fs

        return s3fs.S3FileSystem(anon=True, endpoint_url=self.endpoint, skip_instance_cache=True, **kw)

    def boto3(self, signed: bool = False, credentials: tuple[str, str] | None = None):
        """A boto3 client: anonymous, or signing with `credentials` (default: [`key`])."""
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            signature_version="s3v4" if signed or credentials else UNSIGNED,
        )
        key, secret = credentials or (self.key() if signed else ("unused", "unused"))
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=config,
        )

    def stderr_text(self) -> str:
        return "".join(self.log)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_gateway(
    data_dir: Path | None,
    bucket: str,
    catalog_dir: Path,
    *,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    ready_timeout: float = 600,
    ops_dir: Path | None = None,
    sync_limit: int | None = None,
) -> Gateway:
    """Runs ``zarrgate serve`` on a free port and waits until it listens.

    With ``data_dir`` it indexes that tree into ``catalog_dir`` first; without, it serves the
    prebuilt ``catalog_dir``. Results and job records go to ``ops_dir``, by default
    ``{catalog_dir}.ops`` so that gateways of different tests never share a cache; a gateway
    started again on the same ``catalog_dir`` finds them again. ``sync_limit`` is the
    estimated cost in bytes above which an operation becomes a job.
    """
    args = [*zarrgate_bin(), "serve", "--bucket", bucket, "--listen", "127.0.0.1:0", "--catalog", str(catalog_dir)]
    if data_dir is not None:
        args += ["--data", str(data_dir)]
    args += ["--ops-dir", str(ops_dir or Path(f"{catalog_dir}.ops"))]
    if sync_limit is not None:
        args += ["--sync-limit", str(sync_limit)]
    args += list(extra_args)
    # Each gateway gets its own key database unless the test shares one.
    env = {"ZARRGATE_AUTH_DB": f"{catalog_dir}.auth.db", **(env or {})}
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    deadline = time.monotonic() + ready_timeout
    endpoint = None
    lines: list[str] = []

    def read_stdout():
        nonlocal endpoint
        for line in iter(proc.stdout.readline, ""):
            lines.append(line)
            if endpoint is None and line.startswith("listening on "):
                endpoint = line.split()[-1].strip()

    threading.Thread(target=read_stdout, daemon=True).start()
    while endpoint is None:
        if proc.poll() is not None:
            time.sleep(0.2)
            raise RuntimeError(f"zarrgate serve exited with {proc.returncode}: {''.join(log)[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"zarrgate serve did not listen within {ready_timeout} s: {''.join(log)[-4000:]}")
        time.sleep(0.05)
    return Gateway(
        endpoint=endpoint,
        bucket=bucket,
        proc=proc,
        catalog_dir=catalog_dir,
        log=log,
        auth_db=Path(env["ZARRGATE_AUTH_DB"]),
        ops_dir=ops_dir,
        out=lines,
    )


def sigv4_headers(path: str, host: str, key: str, secret: str, when=None, session_token: str | None = None) -> dict:
    """SigV4 headers for a GET of `path` sent with `Host: host`, signed at `when` (default: now),
    with `X-Amz-Security-Token` for temporary credentials.

    An implementation independent of the gateway's (which is checked against the AWS
    documentation's examples in Rust), for the auth tests and the benchmark.
    """
    import datetime as dt
    import hashlib
    import hmac
    import urllib.parse

    amz_date = (when or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    if session_token:
        headers["x-amz-security-token"] = session_token
    names = ";".join(sorted(headers))
    canonical = "\n".join(
        ["GET", urllib.parse.quote(path, safe="/~"), "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", names, payload]
    )
    scope = f"{day}/us-east-1/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = f"AWS4{secret}".encode()
    for part in (day, "us-east-1", "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {
        "x-amz-content-sha256": payload,
        "x-amz-date": amz_date,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={names}, Signature={signature}",
    }
    if session_token:
        out["x-amz-security-token"] = session_token
    return out

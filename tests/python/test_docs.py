"""Every command and snippet the README and ``docs/`` print, run against the demo data.

Each fenced ``sh`` and ``python`` block is one test, run as written after these substitutions
(the only ones; a block that needs another is a block to fix):

- the gateway at ``http://127.0.0.1:9000`` or ``http://gateway:9000`` is this module's gateway,
  which serves three buckets: ``demo`` (the fixtures, as ``zarrgate demo`` does), ``cmip6`` (the
  README's ``/data/cmip6``: fixture files laid out under the CMIP6 paths the docs print, and
  ``obs.nc``) and ``obs`` (``x.nc``, readable by keys of group ``esgf``, as in
  ``docs/configuration.md``);
- ``zarrgate serve`` listens on a free port instead of 9000: the test waits until it listens,
  then stops it and requires a clean exit;
- ``/data/cmip6``, ``/var/lib/zarrgate/cmip6``, ``/srv/catalogs/cmip6``, ``/tmp/refs``,
  ``tas.nc`` and the TLS files
  are paths under a temporary directory; ``ZG…`` / ``SECRET`` / ``"…"`` are a key of group
  ``esgf`` (the one a block creates, after its ``keys create``);
- ``curl`` fails on an HTTP error (``--fail-with-body``), so an example that answers 4xx fails.

A block that cannot run here is listed in :data:`NOT_RUN` with the reason; a listed block
that no longer exists fails the test too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import REPO, zarrgate_bin
from servers import make_pki

FIXTURES = REPO / "fixtures" / "data" / "good"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CMIP6_DIR = "CMIP6/CMIP/NCAR/CESM2/historical/r1i1p1f1/Amon/tas/gn/v20190308"

#: blocks not run, by (file, first line), with the reason
NOT_RUN = {
    ("README.md", "./make.sh demo    # build, index the bundled fixtures, serve them on 127.0.0.1:9000, print snippets"):
        "./make.sh test is this test suite, and ./make.sh demo builds a release binary and serves until "
        "stopped; the demo's buckets and snippets are what this module serves and runs",
    ("docs/benchmarks.md", "./make.sh bench      # or: .venv/bin/python benches/compare_ops.py --bin target/release/zarrgate"):
        "the benchmarks take far longer than a test; they run in make bench",
    # docs/identity.md's client recipes need an OpenID Provider, a token and a gateway with an
    # [[oidc]] issuer; test_identity.py makes the same calls against a real provider.
    ("docs/identity.md", 'curl -H "Authorization: Bearer $TOKEN" https://data.example.org/cmip6/CMIP6/…/tas_Amon_….nc/.zmetadata'):
        "needs an OpenID token (test_identity.py::test_curl_and_fsspec_read_a_restricted_collection_with_a_token)",
    ("docs/identity.md", "import fsspec"):
        "needs an OpenID token (test_identity.py::test_curl_and_fsspec_read_a_restricted_collection_with_a_token)",
    ("docs/identity.md", "export AWS_WEB_IDENTITY_TOKEN_FILE=$HOME/.config/zarrgate/token"):
        "needs an OpenID token (test_identity.py::test_boto3_web_identity_reads_the_restricted_collection)",
    ("docs/identity.md", "import boto3"):
        "needs an OpenID token (test_identity.py::test_s3fs_with_temporary_credentials_equals_the_original)",
    # docs/remote.md's recipe needs an S3 server holding the files and a config with [[remote]];
    # test_remote.py makes the same calls against moto and nginx.
    ("docs/remote.md", "from kerchunk.hdf import SingleHdf5ToZarr"):
        "needs a bucket (test_remote.py::kerchunk_refs, against moto's S3 server)",
    ("docs/remote.md", "zarrgate serve --config zarrgate.toml     # with [[collections]] data = \"/data/tree\" and [[remote]]"):
        "needs the config with [[remote]] prefixes (test_remote.py::serve)",
    ("docs/remote.md", "import xarray as xr"):
        "needs a remote dataset (test_remote.py::test_remote_datasets_are_served_as_reference_reads_them)",
}


@dataclass(frozen=True)
class Block:
    file: str
    line: int
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def first(self) -> str:
        return self.text.splitlines()[0] if self.text else ""


def blocks() -> list[Block]:
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if m.group(1) in ("sh", "python"):
                line = text[: m.start()].count("\n") + 1
                out.append(Block(path.relative_to(REPO).as_posix(), line, m.group(1), m.group(2)))
    return out


BLOCKS = blocks()
RUN = [b for b in BLOCKS if (b.file, b.first) not in NOT_RUN]


# --------------------------------------------------------------------------------------------
# The environment: data trees, a key, and one gateway serving demo, cmip6 and obs
# --------------------------------------------------------------------------------------------


@dataclass
class Env:
    root: Path
    work: Path
    endpoint: str
    key: tuple[str, str]
    env: dict[str, str]
    subs: list[tuple[str, str]]
    ca: Path


def _wait_listening(proc: subprocess.Popen, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    for line in iter(proc.stdout.readline, ""):
        if line.startswith("listening on "):
            return line.split()[-1].strip()
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"the gateway did not start: {proc.stderr.read()[-2000:]}")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("docs")
    cmip6 = root / "data" / "cmip6"
    (cmip6 / CMIP6_DIR).mkdir(parents=True)
    for year, src in (("1850", "185001-185012"), ("1851", "185101-185112")):
        shutil.copy(FIXTURES / "drs" / f"tas_Amon_FIXTURE_historical_r1i1p1_{src}.nc",
                    cmip6 / CMIP6_DIR / f"tas_Amon_CESM2_historical_r1i1p1f1_gn_{src}.nc")
    shutil.copy(FIXTURES / "groups.nc", cmip6 / "obs.nc")
    obs = root / "data" / "obs"
    obs.mkdir(parents=True)
    shutil.copy(FIXTURES / "cal_noleap.nc", obs / "x.nc")
    work, home, bin_dir = root / "work", root / "home", root / "bin"
    for d in (work, home / ".aws", bin_dir):
        d.mkdir(parents=True)
    shutil.copy(FIXTURES / "cal_noleap.nc", work / "tas.nc")
    (bin_dir / "zarrgate").write_text("#!/bin/sh\nexec " + " ".join(zarrgate_bin()) + ' "$@"\n')
    (bin_dir / "zarrgate").chmod(0o755)
    auth_db = root / "auth.db"
    environ = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "ZARRGATE_AUTH_DB": str(auth_db),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    config = root / "docs.toml"
    config.write_text(f"""
listen = "127.0.0.1:0"
auth_db = "{auth_db}"
[ops]
dir = "{root / 'ops'}"
[[collections]]
bucket = "demo"
data = "{FIXTURES}"
catalog = "{root / 'catalogs' / 'demo'}"
[[collections]]
bucket = "cmip6"
data = "{cmip6}"
catalog = "{root / 'catalogs' / 'cmip6'}"
[[collections]]
bucket = "obs"
data = "{obs}"
catalog = "{root / 'catalogs' / 'obs'}"
read = ["group:esgf"]
""")
    proc = subprocess.Popen([*zarrgate_bin(), "serve", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environ)
    try:
        endpoint = _wait_listening(proc)
        made = subprocess.run([*zarrgate_bin(), "keys", "create", "--name", "docs", "--owner", "docs@example.org",
                               "--group", "esgf"], capture_output=True, text=True, env=environ, check=True)
        key = _parse_key(made.stdout)
        (home / ".aws" / "credentials").write_text(
            f"[default]\naws_access_key_id = {key[0]}\naws_secret_access_key = {key[1]}\n")
        subprocess.run([*zarrgate_bin(), "index", "tas.nc", "-o", "tas.json"], cwd=work, env=environ, check=True,
                       capture_output=True)
        pki = make_pki(root / "pki", "docs")
        tls_config = root / "tls.toml"
        tls_config.write_text(f'listen = "127.0.0.1:0"\nauth_db = "{auth_db}"\n[ops]\ndir = "{root / "ops-tls"}"\n'
                              f'[[collections]]\nbucket = "demo"\ncatalog = "{root / "catalogs" / "demo"}"\n')
        subs = [
            ("http://127.0.0.1:9000", endpoint),
            ("http://gateway:9000", endpoint),
            ("--listen 127.0.0.1:9000", "--listen 127.0.0.1:0"),
            ("--listen 0.0.0.0:9000", "--listen 127.0.0.1:0"),
            ("/var/lib/zarrgate/cmip6", str(root / "catalogs" / "cmip6-cli")),
            ("/data/cmip6", str(cmip6)),
            ("/tmp/refs", str(root / "refs")),
            ("/srv/catalogs/cmip6", str(root / "published")),
            ("/etc/zarrgate/tls/fullchain.pem", str(pki.cert)),
            ("/etc/zarrgate/tls/privkey.pem", str(pki.key)),
            ("zarrgate.toml", str(tls_config)),
        ]
        time.sleep(0.6)  # the gateway re-reads keys every 0.25 s
        yield Env(root, work, endpoint, key, environ, subs, pki.ca)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _parse_key(text: str) -> tuple[str, str]:
    access = re.search(r"access key: (\S+)", text)
    secret = re.search(r"secret:\s+(\S+)", text)
    assert access and secret, text
    return access.group(1), secret.group(1)


def _substitute(text: str, env: Env, key: tuple[str, str]) -> str:
    for old, new in env.subs:
        text = text.replace(old, new)
    text = text.replace("ZG…", key[0]).replace("SECRET", key[1]).replace('"…"', f'"{key[1]}"')
    return re.sub(r"(?<![\w/.-])tas\.nc\b", str(env.work / "tas.nc"), text)


# --------------------------------------------------------------------------------------------
# Running blocks
# --------------------------------------------------------------------------------------------


def _commands(text: str) -> list[str]:
    """The block's commands: continuation lines joined, comment-only and blank lines dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    return out


def _run_serve(command: str, env: Env) -> None:
    proc = subprocess.Popen(["bash", "-c", "exec " + command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env.env, cwd=env.work)
    try:
        endpoint = _wait_listening(proc)
        assert endpoint.startswith(("http://127.0.0.1:", "https://127.0.0.1:")), endpoint
        _wait_ready(endpoint, env)
        proc.send_signal(15)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_ready(endpoint: str, env: Env, timeout: float = 120) -> None:
    """Until ``/readyz`` answers 200 (the port is bound before the data is indexed)."""
    ca = ["--cacert", str(env.ca)] if endpoint.startswith("https") else []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *ca, f"{endpoint}/readyz"],
                               capture_output=True, text=True)
        if probe.stdout == "200":
            return
        time.sleep(0.1)
    raise AssertionError(f"{endpoint} never became ready")


def _run_sh(block: Block, env: Env) -> None:
    key = env.key
    for raw in _commands(block.text):
        command = _substitute(raw, env, key)
        if re.match(r"\s*zarrgate serve\b", command):
            _run_serve(command, env)
            continue
        command = re.sub(r"^(\s*)curl ", r"\1curl --fail-with-body -sS ", command)
        proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, errors="replace",
                              env=env.env, cwd=env.work, timeout=600)
        assert proc.returncode == 0, f"{raw}\n→ exit {proc.returncode}\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
        if re.match(r"\s*zarrgate keys create\b", command):
            key = _parse_key(proc.stdout)  # the block's own key, for its next lines
            time.sleep(0.6)


def _run_python(block: Block, env: Env) -> None:
    code = _substitute(block.text, env, env.key)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env.env,
                          cwd=env.work, timeout=600)
    assert proc.returncode == 0, f"{block.id}\n{code}\n→ {proc.stderr[-3000:]}"


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_the_example_runs(block: Block, env: Env) -> None:
    if block.lang == "sh":
        _run_sh(block, env)
    else:
        _run_python(block, env)


def test_every_block_not_run_still_exists_and_says_why() -> None:
    present = {(b.file, b.first) for b in BLOCKS}
    for where, why in NOT_RUN.items():
        assert where in present, f"{where} is listed as not run but is no longer in the docs"
        assert len(why) > 20
    assert len(BLOCKS) >= 15, [b.id for b in BLOCKS]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_link_between_the_docs_resolves() -> None:
    """Links to files of the repository and to their headings (``docs/x.md#heading``) lead
    somewhere: a README link to a heading that a code fence swallowed once went nowhere."""
    broken = []
    for path in DOCS:
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.name}: {target} (no such file)")
                continue
            if anchor and dest.suffix == ".md":
                body = re.sub(r"^```.*?^```", "", dest.read_text(), flags=re.S | re.M)
                anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", body, re.M)}
                if anchor not in anchors:
                    broken.append(f"{path.name}: {target} (no heading #{anchor})")
    assert not broken, broken

"""Real servers and raw clients for the service tests: nginx in front of a gateway, TLS
certificates made on the spot, and HTTP from a chosen loopback address.

Every server listens on 127.0.0.1 and is started by the test that needs it. Loopback holds all of
127.0.0.0/8 on Linux, so a client can bind 127.0.0.2, 127.0.0.3, ... to be another address.
"""

from __future__ import annotations

import datetime as dt
import http.client
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def request(url: str, headers: dict | None = None, *, source: str | None = None, method: str = "GET",
            context: ssl.SSLContext | None = None, timeout: float = 30) -> Reply:
    """One request on a new connection, from loopback address `source` if given."""
    parts = urlsplit(url)
    address = (source, 0) if source else None
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, source_address=address,
                                           context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout, source_address=address)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, headers=headers or {})
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------------------------


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found:
        raise AssertionError("nginx is not installed: `./make.sh test` installs it (Debian package nginx)")
    return found


@dataclass
class Nginx:
    proc: subprocess.Popen
    endpoint: str
    work: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def requests(self) -> list[str]:
        """The requests a file server (`start_file_server`) logged so far, a line each."""
        log = self.work / "access.log"
        return log.read_text().splitlines() if log.exists() else []


def bytes_sent(requests: list[str]) -> int:
    """The body bytes nginx sent for logged requests (combined format:
    `... "GET /NAME HTTP/1.1" STATUS BYTES ...`)."""
    return sum(int(line.split('" ')[1].split()[1]) for line in requests)


def start_proxy(upstream: str | list[str], work: Path) -> Nginx:
    """nginx on a free port of 127.0.0.1, proxying everything to `upstream` (http://HOST:PORT),
    or round-robin to each of a list of them (a load balancer in front of replicas), and
    appending the client's address to `X-Forwarded-For`, as a TLS-terminating proxy does."""
    work.mkdir(parents=True, exist_ok=True)
    if isinstance(upstream, list):
        servers = "".join(f"server {urlsplit(u).netloc} max_fails=0;\n" for u in upstream)
        pool = f"upstream replicas {{\n{servers}keepalive 32;\n}}\n"
        upstream = "http://replicas"
    else:
        pool = ""
    port = free_port()
    return _run_nginx(work, port, pool, f"""
        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
        }}""")


def start_file_server(root: Path, work: Path, port: int | None = None, fail_flag: Path | None = None) -> Nginx:
    """nginx serving the files under `root` on 127.0.0.1 (ranges, ETag and Last-Modified, as
    a THREDDS `fileServer` or any web server does); while `fail_flag` exists, every request
    gets 500. `port` keeps the address of a server started again. Requests are logged, one
    line each, in `work/access.log`."""
    work.mkdir(parents=True, exist_ok=True)
    failing = f"if (-f {fail_flag}) {{ return 500; }}" if fail_flag else ""
    return _run_nginx(work, port or free_port(), "",
                      f"root {root};\n        access_log {work}/access.log;\n        location / {{ {failing} }}")


def _run_nginx(work: Path, port: int, http_extra: str, server: str) -> Nginx:
    """nginx in the foreground as this user, its files under `work`, listening on 127.0.0.1:`port`
    with `server` as the body of its one server block; returns once it accepts connections."""
    temp = "".join(f"{kind}_temp_path {work}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = work / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    {temp}
    {http_extra}
    server {{
        listen 127.0.0.1:{port};
        {server}
    }}
}}
""")
    proc = subprocess.Popen([nginx_binary(), "-c", str(conf), "-p", str(work)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return Nginx(proc, f"http://127.0.0.1:{port}", work)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"nginx did not start: {proc.stderr.read().decode(errors='replace')}")
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if versions and (versions[0] / name).exists():
        return str(versions[0] / name)
    raise AssertionError("PostgreSQL is not installed: `./make.sh test` installs it (Debian package postgresql)")


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1, owned by an unprivileged user."""

    data: Path
    port: int
    user: list[str]  # the command prefix that runs as the cluster's owner

    @property
    def url(self) -> str:
        return f"postgres://zarrgate@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.user, _pg_bin("pg_ctl"), "-D", str(self.data), *args], check=True,
                       capture_output=True, timeout=60)

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data} -c fsync=off"
        self._ctl("start", "-w", "-l", str(self.data / "server.log"), "-o", opts)

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast", "-w")

    def remove(self) -> None:
        """Stops the cluster if it runs, and deletes it."""
        subprocess.run([*self.user, _pg_bin("pg_ctl"), "-D", str(self.data), "stop", "-m", "immediate"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.data.parent, ignore_errors=True)


def start_postgres() -> Postgres:
    """initdb and pg_ctl as an unprivileged user (PostgreSQL refuses to run as root): the
    Debian package's `postgres` user when the tests run as root. The cluster lives in a
    directory of its own under /tmp, which that user can reach (pytest's are root's only)."""
    import os
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="zarrgate-pg-"))
    data = work / "pgdata"
    user: list[str] = []
    if os.geteuid() == 0:
        user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(work, "postgres")
    subprocess.run([*user, _pg_bin("initdb"), "-D", str(data), "-U", "zarrgate", "-A", "trust", "--no-sync"],
                   check=True, capture_output=True, timeout=120)
    pg = Postgres(data, free_port(), user)
    pg.start()
    return pg


# ---------------------------------------------------------------------------------------------
# An S3 server (moto, from the venv)
# ---------------------------------------------------------------------------------------------


@dataclass
class Moto:
    """moto's S3 server on a port of 127.0.0.1; `stop` and `start` keep the port (its objects
    are in memory: a restart begins empty)."""

    port: int
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import sys

        server = Path(sys.executable).parent / "moto_server"
        self.proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def client(self):
        """A boto3 S3 client of the server (moto takes any credentials)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="test",
                            aws_secret_access_key="test")

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def remote_table(self, bucket: str) -> str:
        """The `[[remote]]` table (zarrgate's config) that lets zarrgate read `s3://BUCKET/`."""
        return f"""[[remote]]
prefix = "s3://{bucket}/"
options = {{ aws_endpoint = "{self.endpoint}", aws_allow_http = "true", aws_region = "us-east-1", aws_access_key_id = "test", aws_secret_access_key = "test" }}
"""


def start_moto() -> Moto:
    moto = Moto(free_port())
    moto.start()
    return moto


# ---------------------------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------------------------


@dataclass
class Pki:
    """A certificate authority of the test's own and a server certificate for 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path
    serial: int


def make_pki(directory: Path, name: str) -> Pki:
    """A new CA (`{name}-ca.pem`) and a certificate for 127.0.0.1 and localhost signed by it."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"zarrgate test CA {name}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    out = Pki(directory / f"{name}-ca.pem", directory / f"{name}-cert.pem", directory / f"{name}-key.pem", serial)
    out.ca.write_bytes(ca.public_bytes(pem))
    out.cert.write_bytes(cert.public_bytes(pem))
    out.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return out


def served_serial(host: str, port: int, ca: Path) -> int | None:
    """The serial number of the certificate the server shows, if it verifies against `ca`."""
    from cryptography import x509

    context = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection((host, port), timeout=5) as raw, context.wrap_socket(raw, server_hostname=host) as s:
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number
    except (ssl.SSLError, OSError):
        return None

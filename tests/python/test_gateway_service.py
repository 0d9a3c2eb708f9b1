"""The gateway as a service: staleness, bad input, limits, shutdown, config, demo.

Each test runs a real `zarrgate serve` (or `zarrgate demo`) process on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from gateway import REPO, start_gateway, wait_for, zarrgate_bin

FIXTURES = Path(os.environ.get("ZARRGATE_FIXTURES", REPO / "fixtures" / "data" / "good"))


def http(url: str, *, method: str = "GET", headers: dict | None = None, timeout: float = 30):
    """(status, headers, body) of one request; error statuses are returned, not raised."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def raw(endpoint: str, request: bytes, timeout: float = 10) -> bytes:
    """Sends bytes as they are and returns everything the server answers."""
    host, port = endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def error_code(body: bytes) -> str:
    return ET.fromstring(body).findtext("Code")


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for name in ("cal_noleap.nc", "classic.nc", "scalar.nc", "unlimited.nc"):
        shutil.copy2(FIXTURES / name, d / name)
    return d


@pytest.fixture
def gw(data_dir, tmp_path):
    g = start_gateway(data_dir, "svc", tmp_path / "catalog", extra_args=("--client-timeout", "2", "--jobs", "2"))
    yield g
    g.stop()


def test_health_and_readiness(gw):
    assert http(f"{gw.endpoint}/healthz")[0] == 200
    assert http(f"{gw.endpoint}/readyz")[0] == 200


def chunk_keys(gw, dataset: str) -> list[str]:
    s3 = gw.boto3()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=gw.bucket, Prefix=f"{dataset}/")["Contents"]]
    return [k for k in keys if not k.rsplit("/", 1)[-1].startswith(".")]


def test_modified_file_is_never_served_stale_and_is_reindexed(gw, data_dir):
    url = f"{gw.endpoint}/svc/cal_noleap.nc/tas/0.0.0"
    status, headers, before = http(url)
    assert status == 200
    etag = headers["ETag"]
    # Rewrite the file with other values (same structure): the old bytes must never come back.
    ds = xr.open_dataset(data_dir / "cal_noleap.nc").load()
    ds["tas"] = ds["tas"] + 100
    tmp = data_dir / "new.tmp"
    ds.to_netcdf(tmp, encoding={"tas": {"zlib": False}})
    ds.close()
    os.replace(tmp, data_dir / "cal_noleap.nc")
    status, _, body = http(url)
    assert status == 503 and error_code(body) == "ServiceUnavailable"
    assert b"/tmp" not in body, "server paths must not leak to clients"

    def fresh():
        s, h, _ = http(url)
        return s == 200 and h["ETag"] != etag

    wait_for(fresh)
    via_s3 = xr.open_dataset(f"s3://svc/cal_noleap.nc", engine="zarr", storage_options=gw_options(gw))
    with xr.open_dataset(data_dir / "cal_noleap.nc") as original:
        np.testing.assert_array_equal(via_s3["tas"].values, original["tas"].values)


def gw_options(gw):
    return {"anon": True, "endpoint_url": gw.endpoint, "skip_instance_cache": True}


def test_truncated_file_answers_503_not_fill_values(gw, data_dir):
    keys = chunk_keys(gw, "classic.nc")
    assert keys
    with open(data_dir / "classic.nc", "r+b") as f:
        f.truncate(200)
    for key in keys + ["classic.nc/.zmetadata"]:
        status, _, body = http(f"{gw.endpoint}/svc/{key}")
        assert status == 503, key
        assert error_code(body) == "ServiceUnavailable"

    # After re-indexing the file is refused by the indexer; its keys keep answering 503
    # (a 404 would read as fill values) and say why.
    def refused():
        s, _, b = http(f"{gw.endpoint}/svc/{keys[0]}")
        return s == 503 and b"could not be indexed" in b

    wait_for(refused)


def test_deleted_file_answers_503_and_leaves_the_listing(gw, data_dir):
    key = chunk_keys(gw, "scalar.nc")[0]
    (data_dir / "scalar.nc").unlink()
    assert http(f"{gw.endpoint}/svc/{key}")[0] == 503

    def gone():
        listed = gw.boto3().list_objects_v2(Bucket="svc", Prefix="scalar.nc/")
        return listed["KeyCount"] == 0

    wait_for(gone)
    status, _, body = http(f"{gw.endpoint}/svc/{key}")
    assert status == 503 and b"removed" in body


def test_replaced_file_serves_the_new_file(gw, data_dir):
    url = f"{gw.endpoint}/svc/unlimited.nc/.zmetadata"
    assert http(url)[0] == 200
    shutil.copy(FIXTURES / "cal_360_day.nc", data_dir / "unlimited.nc.new")
    os.replace(data_dir / "unlimited.nc.new", data_dir / "unlimited.nc")
    assert http(url)[0] == 503

    wait_for(lambda: http(url)[0] == 200)
    via_s3 = xr.open_dataset("s3://svc/unlimited.nc", engine="zarr", storage_options=gw_options(gw))
    with xr.open_dataset(FIXTURES / "cal_360_day.nc") as original:
        assert set(via_s3.variables) == set(original.variables)
        xr.testing.assert_identical(via_s3["time"], original["time"])


def restore_times(path: Path, st: os.stat_result) -> None:
    """Gives `path` the modification time of `st` back, as `cp -p`, `rsync -a` and Globus do,
    and checks its size is the old one: only inode, device and change time can tell."""
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = path.stat()
    assert (now.st_size, now.st_mtime_ns) == (st.st_size, st.st_mtime_ns), "the test must keep size and mtime"


def with_one_letter_changed(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) == 1, old
    return data.replace(old, new)


@pytest.mark.parametrize("how", ["moved into place", "rewritten in place"])
def test_a_file_replaced_with_its_old_size_and_mtime_is_never_served_stale(gw, data_dir, how):
    """A corrected file given the old size and mtime: 503, re-indexed, then the new content.
    (NetCDF-3: its header has no checksum, so one letter can be changed in place.)"""
    path = data_dir / "classic.nc"
    url = f"{gw.endpoint}/svc/classic.nc/.zmetadata"
    key = chunk_keys(gw, "classic.nc")[0]
    status, headers, _ = http(url)
    assert status == 200
    etag, st = headers["ETag"], path.stat()
    with xr.open_dataset(path) as ds:
        old_name = ds["tas"].attrs["long_name"].encode()
    new_name = old_name[:-1] + (b"X" if old_name[-1:] != b"X" else b"Y")
    patched = with_one_letter_changed(path.read_bytes(), old_name, new_name)
    if how == "moved into place":
        tmp = data_dir / "classic.nc.part"
        tmp.write_bytes(patched)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, path)
    else:
        with open(path, "r+b") as f:
            f.write(patched)
    restore_times(path, st)
    status, _, body = http(url)
    assert status == 503 and error_code(body) == "ServiceUnavailable", body[:300]
    chunk = http(f"{gw.endpoint}/svc/{key}")
    assert chunk[0] == 503, "no byte of the new file is served against the old references"

    wait_for(lambda: http(url)[0] == 200 and http(url)[1]["ETag"] != etag)
    via_s3 = xr.open_dataset("s3://svc/classic.nc", engine="zarr", storage_options=gw_options(gw))
    with xr.open_dataset(path) as original:
        assert via_s3["tas"].attrs["long_name"] == new_name.decode()
        xr.testing.assert_identical(via_s3.load(), original.load())


def test_a_joined_member_replaced_with_its_old_size_and_mtime_is_never_served_stale(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "drs", data / "drs")
    g = start_gateway(data, "svc", tmp_path / "catalog")
    try:
        members = sorted((data / "drs").glob("*.nc"))
        dataset = "drs/tas_Amon_FIXTURE_historical_r1i1p1"
        url = f"{g.endpoint}/svc/{dataset}/tas/12.0.0"  # a chunk of the second member
        assert http(url)[0] == 200
        second, st = members[1], members[1].stat()
        import netCDF4

        with netCDF4.Dataset(second, "a") as nc:
            nc["tas"][0, 0, 0] = np.float32(-1000.0)  # an uncompressed chunk: written in place
        restore_times(second, st)
        assert http(url)[0] == 503

        def new_values():
            return http(url)[0] == 200

        wait_for(new_values)
        so = gw_options(g)
        got = xr.open_zarr(f"s3://svc/{dataset}", storage_options=so).load()
        with xr.open_mfdataset(members, combine="nested", concat_dim="time", data_vars="minimal",
                               coords="minimal", compat="override") as want:
            np.testing.assert_array_equal(got["tas"].values, want["tas"].values)
        assert -1000.0 in got["tas"].values
    finally:
        g.stop()


@pytest.mark.parametrize(
    "path, status, code",
    [
        # dot segments are key characters, as on S3: looked up verbatim, never normalised
        ("/svc/cal_noleap.nc/../classic.nc/.zgroup", 404, "NoSuchKey"),
        ("/svc/cal_noleap.nc/%2e%2e/classic.nc/.zgroup", 404, "NoSuchKey"),
        ("/svc/cal_noleap.nc/%2E%2E/%2E%2E/etc/passwd", 404, "NoSuchKey"),
        ("/svc/./cal_noleap.nc/.zgroup", 404, "NoSuchKey"),
        ("/svc/" + "k" * 1100, 400, "KeyTooLongError"),
        ("/svc/cal_noleap.nc/%FF%FE", 400, "InvalidURI"),
        ("/svc?list-type=2&max-keys=-1", 400, "InvalidArgument"),
        ("/svc?list-type=2&max-keys=ten", 400, "InvalidArgument"),
        ("/svc?list-type=2&continuation-token=garbage", 400, "InvalidArgument"),
        ("/svc?list-type=2&encoding-type=base64", 400, "InvalidArgument"),
        ("/svc?acl", 501, "NotImplemented"),
        ("/svc/cal_noleap.nc/time", 404, "NoSuchKey"),
        ("/nosuchbucket/x", 404, "NoSuchBucket"),
    ],
)
def test_bad_requests_get_xml_errors(gw, path, status, code):
    got, headers, body = http(gw.endpoint + path)
    assert got == status
    assert headers["Content-Type"] == "application/xml"
    assert error_code(body) == code


def test_writes_are_refused_and_change_nothing(gw):
    before = gw.boto3().list_objects_v2(Bucket="svc")["KeyCount"]
    for method in ("PUT", "POST", "DELETE"):
        status, _, body = http(f"{gw.endpoint}/svc/cal_noleap.nc/new", method=method)
        assert status == 405 and error_code(body) == "MethodNotAllowed"
    assert gw.boto3().list_objects_v2(Bucket="svc")["KeyCount"] == before


def test_oversized_headers_get_an_xml_error(gw):
    status, _, body = http(f"{gw.endpoint}/svc/cal_noleap.nc/.zgroup", headers={"X-Big": "a" * 20_000})
    assert status == 400 and error_code(body) == "RequestHeaderSectionTooLarge"
    assert http(f"{gw.endpoint}/healthz")[0] == 200


def test_malformed_http_is_answered_and_the_server_keeps_serving(gw):
    answer = raw(gw.endpoint, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    answer = raw(gw.endpoint, b"GET /svc/cal_noleap.nc/.zgroup HTTP/1.1\r\nHost: x\r\nRange: bytes=9-1\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), "an invalid range is ignored"
    assert http(f"{gw.endpoint}/healthz")[0] == 200


def test_slow_clients_are_disconnected(gw):
    host, port = gw.endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as s:
        s.sendall(b"GET /svc/cal_noleap.nc/.zgroup HTTP/1.1\r\nHost: x\r\n")  # never finishes
        started = time.monotonic()
        data = s.recv(1024)
        waited = time.monotonic() - started
    # hyper answers a header timeout by closing (possibly after a 408).
    assert data == b"" or data.startswith(b"HTTP/1.1 408")
    assert waited < 10
    assert http(f"{gw.endpoint}/healthz")[0] == 200


def test_connections_are_bounded(data_dir, tmp_path):
    g = start_gateway(data_dir, "svc", tmp_path / "cat2", extra_args=("--max-connections", "2", "--client-timeout", "3"))
    try:
        host, port = g.endpoint.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(2)]
        time.sleep(0.3)
        # A third client is accepted by the kernel but not served while both slots are held.
        with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
            urllib.request.urlopen(f"{g.endpoint}/healthz", timeout=1)
        for s in idle:
            s.close()
        assert wait_for(lambda: http(f"{g.endpoint}/healthz", timeout=5)[0] == 200, timeout=20)
    finally:
        g.stop()


def test_sigterm_shuts_down_gracefully(data_dir, tmp_path):
    g = start_gateway(data_dir, "svc", tmp_path / "cat3")
    assert http(f"{g.endpoint}/healthz")[0] == 200
    g.proc.send_signal(signal.SIGTERM)
    assert g.proc.wait(timeout=20) == 0


def test_config_file_serves_several_collections(data_dir, tmp_path):
    prebuilt = tmp_path / "prebuilt"
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy2(FIXTURES / "groups.nc", other / "groups.nc")
    subprocess.run([*zarrgate_bin(), "index", str(other), "--out", str(prebuilt)], check=True, capture_output=True)
    config = tmp_path / "zarrgate.toml"
    config.write_text(
        f'listen = "127.0.0.1:0"\nworkers = 1\nauth_db = "{tmp_path / "auth.db"}"\n'
        f'[[collections]]\nbucket = "alpha"\ndata = "{data_dir}"\ncatalog = "{tmp_path / "cat-alpha"}"\n'
        f'[[collections]]\nbucket = "beta"\ncatalog = "{prebuilt}"\nread = "public"\n'
    )
    args = [*zarrgate_bin(), "serve", "--config", str(config)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on "), proc.stderr.read()
        endpoint = line.split()[-1]
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(signature_version=UNSIGNED))
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["alpha", "beta"]
        ds = xr.open_dataset(
            "s3://beta/groups.nc", engine="zarr", group="obs", storage_options={"anon": True, "endpoint_url": endpoint}
        )
        with xr.open_dataset(other / "groups.nc", group="obs") as original:
            xr.testing.assert_identical(ds.load(), original.load())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_bad_config_is_a_clear_error(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[[collections]]\nbucket = "Bad_Name"\ndata = "/nonexistent"\n')
    out = subprocess.run([*zarrgate_bin(), "serve", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "not a valid bucket name" in out.stderr
    config.write_text('workers = 0\n[[collections]]\nbucket = "good"\ndata = "/nonexistent"\n')
    out = subprocess.run([*zarrgate_bin(), "serve", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "workers" in out.stderr and "nonzero" in out.stderr


def test_demo_prints_snippets_that_work(tmp_path):
    args = [*zarrgate_bin(), "demo", "--listen", "127.0.0.1:0", "--catalog", str(tmp_path / "demo-cat")]
    args += ["--ops-dir", str(tmp_path / "demo-ops")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        endpoint = proc.stdout.readline().split()[-1]
        lines = []
        while not any("/ops/v1/" in line for line in lines[-1:]):
            lines.append(proc.stdout.readline())
        text = "".join(lines)
        ops_url = lines[-1].split('"')[1]
        status, headers, body = http(ops_url)
        assert status == 200 and body.decode().startswith("time,tas\n"), body[:200]
        assert f'"endpoint_url": "{endpoint}"' in text
        snippet = text.split("xarray (s3fs):")[1].split("boto3:")[0]
        scope: dict = {}
        exec("\n".join(line[4:] for line in snippet.splitlines() if line.startswith("    ")).replace("print(ds)", ""), scope)
        with xr.open_dataset(FIXTURES / "cal_noleap.nc") as original:
            xr.testing.assert_identical(scope["ds"].load(), original.load())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_virtual_hosted_style_requests(gw):
    """`Host: svc.localhost` names the bucket, as boto3's virtual addressing sends it."""
    port = gw.endpoint.rsplit(":", 1)[1]
    status, _, body = http(f"{gw.endpoint}/cal_noleap.nc/.zgroup", headers={"Host": f"svc.localhost:{port}"})
    assert status == 200 and body == http(f"{gw.endpoint}/svc/cal_noleap.nc/.zgroup")[2]
    status, _, body = http(f"{gw.endpoint}/?list-type=2&prefix=classic.nc/", headers={"Host": f"svc.localhost:{port}"})
    assert status == 200 and b"<Key>classic.nc/.zgroup</Key>" in body


def _rows_file(path, rows: int, width: int) -> np.ndarray:
    """Writes ``path``: one float32 variable ``v`` of ``rows`` uncompressed row chunks; gives its values."""
    import netCDF4

    path.parent.mkdir(exist_ok=True)
    values = np.arange(rows * width, dtype="f4").reshape(rows, width)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("t", rows)
        nc.createDimension("x", width)
        nc.createVariable("v", "f4", ("t", "x"), chunksizes=(1, width))[:] = values
    return values


def test_large_chunks_stream_whole_and_in_ranges(tmp_path):
    """Chunks larger than one streaming piece (1 MiB) arrive complete and exact."""
    data = tmp_path / "big"
    values = _rows_file(data / "big.nc", 3, 300_000)
    g = start_gateway(data, "big", tmp_path / "big-cat")
    try:
        url = f"{g.endpoint}/big/big.nc/v/1.0"
        status, headers, body = http(url)
        assert status == 200 and int(headers["Content-Length"]) == 1_200_000 == len(body)
        np.testing.assert_array_equal(np.frombuffer(body, "<f4"), values[1])
        status, headers, part = http(url, headers={"Range": "bytes=300000-900003"})
        assert status == 206 and headers["Content-Range"] == "bytes 300000-900003/1200000"
        assert part == body[300_000:900_004]
        via_s3 = xr.open_dataset("s3://big/big.nc", engine="zarr", storage_options=gw_options(g))
        np.testing.assert_array_equal(via_s3["v"].values, values)
    finally:
        g.stop()


def _big_chunk_gateway(tmp_path, mib: int):
    """A gateway serving one uncompressed chunk (``v/0.0``) of ``mib`` MiB, sent with sendfile."""
    data = tmp_path / "huge"
    values = _rows_file(data / "huge.nc", 1, mib * 1024 * 1024 // 4)[0]
    g = start_gateway(data, "huge", tmp_path / "huge-cat", extra_args=("--client-timeout", "2"))
    return g, data / "huge.nc", values


def _small_window_get(g, key: str) -> socket.socket:
    """A raw connection with a 64 KiB receive window that has asked for ``key`` of /huge."""
    host, port = g.endpoint.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.sendall(f"GET /huge/huge.nc/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def _receive(s: socket.socket, after_head=lambda: None, pause: float = 0.0) -> tuple[int, bytes, float]:
    """Reads one response until its Content-Length is in or the server stops, calling
    ``after_head()`` once the headers are in and pausing ``pause`` seconds after each read of
    the body. Gives the announced Content-Length, the body bytes received and the seconds taken."""
    started = time.monotonic()
    got = b""
    while b"\r\n\r\n" not in got:
        part = s.recv(65536)
        assert part, "the server closed the connection before the headers"
        got += part
    head, first = got.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    after_head()
    parts, received = [first], len(first)
    while received < length:
        part = s.recv(1 << 20)
        if not part:
            break
        parts.append(part)
        received += len(part)
        time.sleep(pause)
    return length, b"".join(parts), time.monotonic() - started


def _read_slowly(g, key: str, change) -> tuple[int, bytes]:
    """Requests ``key``, reads a little, calls ``change()``, then reads until the server stops.
    Gives the announced Content-Length and the body bytes received."""

    def mid_body():
        time.sleep(0.3)  # the server is now blocked on a full socket, mid-body
        change()

    with _small_window_get(g, key) as s:
        length, body, _ = _receive(s, after_head=mid_body)
    return length, body


def test_zero_copy_bodies_are_exact_and_never_complete_when_the_file_changes(tmp_path):
    """Large ranges go out with sendfile. They must be byte-exact, and a file that changes
    while it is being sent must end the response early, never complete it with mixed bytes."""
    g, path, values = _big_chunk_gateway(tmp_path, 24)
    try:
        status, headers, body = http(f"{g.endpoint}/huge/huge.nc/v/0.0")
        assert status == 200 and len(body) == values.nbytes
        np.testing.assert_array_equal(np.frombuffer(body, "<f4"), values)
        status, _, part = http(f"{g.endpoint}/huge/huge.nc/v/0.0", headers={"Range": "bytes=1000001-9000000"})
        assert status == 206 and part == body[1_000_001:9_000_001]

        # Touched while sent: same bytes, new mtime. The tail's check fails: a short body.
        length, got = _read_slowly(g, "v/0.0", lambda: os.utime(path))
        assert length == values.nbytes and len(got) < length
        assert got == body[: len(got)]
        wait_for(lambda: http(f"{g.endpoint}/huge/huge.nc/v/0.0")[0] == 200, timeout=60)

        # Truncated while sent: sendfile finds the end of the file early.
        def truncate():
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)

        length, got = _read_slowly(g, "v/0.0", truncate)
        assert len(got) < length
        assert http(f"{g.endpoint}/healthz")[0] == 200
    finally:
        g.stop()


def test_a_stalled_reader_of_a_zero_copy_body_is_disconnected(tmp_path):
    g, _, _ = _big_chunk_gateway(tmp_path, 24)
    try:
        with _small_window_get(g, "v/0.0") as s:
            time.sleep(5)  # read nothing: the server's writes stall past --client-timeout 2
            received = 0
            while part := s.recv(1 << 20):
                received += len(part)
        assert received < 24 * 1024 * 1024, "the server kept the stalled connection open"
        assert http(f"{g.endpoint}/healthz")[0] == 200
    finally:
        g.stop()


def test_a_slow_but_steady_download_outlasts_the_client_timeout(tmp_path):
    """A client that keeps receiving is not idle, however long the body takes (here 5 s against
    --client-timeout 2)."""
    g, _, values = _big_chunk_gateway(tmp_path, 24)
    try:
        with _small_window_get(g, "v/0.0") as s:
            _, body, elapsed = _receive(s, pause=0.02)
        assert elapsed > 3, f"the download took only {elapsed:.1f} s; the test needs it slower than the timeout"
        assert len(body) == values.nbytes
        np.testing.assert_array_equal(np.frombuffer(body, "<f4"), values)
    finally:
        g.stop()


def test_shutdown_lets_a_download_in_flight_finish(tmp_path):
    """SIGTERM stops accepting at once, but a response already under way is sent whole (within
    the grace period), and then the server exits cleanly."""
    g, _, values = _big_chunk_gateway(tmp_path, 24)
    try:
        with _small_window_get(g, "v/0.0") as s:
            _, body, _ = _receive(s, after_head=lambda: g.proc.send_signal(signal.SIGTERM), pause=0.02)
            with pytest.raises(OSError):
                socket.create_connection(g.endpoint.removeprefix("http://").split(":"), timeout=2).close()
        assert len(body) == values.nbytes
        np.testing.assert_array_equal(np.frombuffer(body, "<f4"), values)
        assert g.proc.wait(timeout=20) == 0
    finally:
        g.stop()


def test_a_range_not_in_the_page_cache_is_read_off_the_server_thread(tmp_path):
    """A server thread reads only what the page cache holds, so a cold disk cannot stall the
    other connections of that thread. A range that must come from the disk is read on the
    blocking pool instead (counted in /metrics), with the same bytes."""
    data = tmp_path / "cold"
    values = _rows_file(data / "cold.nc", 8, 16384)
    g = start_gateway(data, "cold", tmp_path / "cold-cat")

    def offloaded() -> float:
        text = http(f"{g.endpoint}/metrics")[2].decode()
        m = re.search(r'^zarrgate_reads_offloaded_total\{bucket="cold"\} (\S+)$', text, re.M)
        return float(m[1]) if m else 0.0

    try:
        os.sync()
        fd = os.open(data / "cold.nc", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the disk must supply every byte
        finally:
            os.close(fd)
        status, _, body = http(f"{g.endpoint}/cold/cold.nc/v/3.0")
        assert status == 200
        np.testing.assert_array_equal(np.frombuffer(body, "<f4"), values[3])
        assert offloaded() == 1
        # Now cached: read right on the server thread.
        assert http(f"{g.endpoint}/cold/cold.nc/v/3.0")[2] == body
        assert offloaded() == 1
    finally:
        g.stop()


def test_xarray_reads_over_plain_http(gw):
    """Without s3fs: fsspec's HTTP filesystem and consolidated metadata need only GETs by key."""
    ds = xr.open_dataset(f"{gw.endpoint}/svc/cal_noleap.nc", engine="zarr")
    with xr.open_dataset(FIXTURES / "cal_noleap.nc") as original:
        xr.testing.assert_identical(ds.load(), original.load())

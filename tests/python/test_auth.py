"""Access keys, policies, quotas and usage, end to end with real clients.

One gateway serves two collections from the same fixtures: `open-data` (public) and
`restricted` (members of group `esgf` only). Keys are managed with `zarrgate keys` on the
running gateway's database.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from botocore.exceptions import ClientError

from gateway import REPO, Gateway, sigv4_headers, zarrgate_bin

FIXTURES = Path(os.environ.get("ZARRGATE_FIXTURES", REPO / "fixtures" / "data" / "good"))
DATASET = "cal_noleap.nc"
CHUNK = f"{DATASET}/tas/0.0.0"


def run_gateway(tmp: Path, config_extra: str = "", name: str = "gw", env: dict | None = None) -> Gateway:
    data = tmp / "data"
    if not data.exists():
        data.mkdir()
        for f in (DATASET, "classic.nc"):
            shutil.copy2(FIXTURES / f, data / f)
    db = tmp / "auth.db"
    config = tmp / f"{name}.toml"
    if "[quotas.failed_auth]" not in config_extra:
        # These tests provoke many refusals from one address on purpose; the throttle of failed
        # authentications has tests of its own (test_security.py).
        config_extra += "\n[quotas.failed_auth]\nper_minute = 10000\n"
    config.write_text(
        f'listen = "127.0.0.1:0"\nauth_db = "{db}"\n[ops]\ndir = "{tmp / "ops"}"\n'
        f'[[collections]]\nbucket = "open-data"\ndata = "{data}"\ncatalog = "{tmp / "cat"}"\n'
        f'[[collections]]\nbucket = "restricted"\ncatalog = "{tmp / "cat"}"\nread = ["group:esgf"]\n' + config_extra
    )
    proc = subprocess.Popen(
        [*zarrgate_bin(), "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    line = proc.stdout.readline()
    assert line.startswith("listening on "), proc.stderr.read()
    log: list[str] = []
    import threading

    threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    return Gateway(endpoint=line.split()[-1], bucket="open-data", proc=proc, catalog_dir=tmp / "cat", log=log, auth_db=db)


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = run_gateway(tmp_path_factory.mktemp("auth"))
    yield g
    g.stop()


@pytest.fixture(scope="module")
def member(gw):
    key = gw.create_key("member", groups=("esgf",))
    time.sleep(0.6)
    return key


def code_of(err: ClientError) -> str:
    return err.response["Error"]["Code"]


def http(url: str, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def xml_code(body: bytes) -> str:
    return ET.fromstring(body).findtext("Code")


def sign(gw, path: str, key: str, secret: str, when: dt.datetime) -> dict:
    return sigv4_headers(path, gw.endpoint.removeprefix("http://"), key, secret, when)


def test_members_read_a_restricted_collection_with_xarray_and_boto3(gw, member):
    key, secret = member
    so = {"key": key, "secret": secret, "endpoint_url": gw.endpoint, "skip_instance_cache": True}
    ds = xr.open_dataset(f"s3://restricted/{DATASET}", engine="zarr", storage_options=so)
    with xr.open_dataset(FIXTURES / DATASET) as original:
        xr.testing.assert_identical(ds.load(), original.load())
    s3 = gw.boto3(credentials=member)
    assert s3.get_object(Bucket="restricted", Key=CHUNK)["Body"].read()
    assert "restricted" in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_anonymous_is_denied_on_restricted_but_gets_404_on_public(gw):
    anon = gw.boto3()
    with pytest.raises(ClientError) as e:
        anon.get_object(Bucket="restricted", Key=CHUNK)
    assert code_of(e.value) == "AccessDenied"
    with pytest.raises(ClientError) as e:
        anon.get_object(Bucket="open-data", Key=f"{DATASET}/tas/9.9.9")
    assert code_of(e.value) == "NoSuchKey"
    assert [b["Name"] for b in anon.list_buckets()["Buckets"]] == ["open-data"]


def test_a_key_outside_the_group_is_denied(gw):
    outsider = gw.create_key("outsider", groups=("other",))
    time.sleep(0.6)
    with pytest.raises(ClientError) as e:
        gw.boto3(credentials=outsider).get_object(Bucket="restricted", Key=CHUNK)
    assert code_of(e.value) == "AccessDenied"
    # Public data stays readable with any valid key.
    assert gw.boto3(credentials=outsider).get_object(Bucket="open-data", Key=CHUNK)["Body"].read()


def test_wrong_secret_unknown_key_and_clock_skew_get_s3_codes(gw, member):
    key, secret = member
    for creds, expected in (((key, secret + "x"), "SignatureDoesNotMatch"), (("ZGNOSUCHKEY000000000", secret), "InvalidAccessKeyId")):
        with pytest.raises(ClientError) as e:
            gw.boto3(credentials=creds).get_object(Bucket="open-data", Key=CHUNK)
        assert code_of(e.value) == expected
    now = dt.datetime.now(dt.timezone.utc)
    path = f"/open-data/{CHUNK}"
    assert http(gw.endpoint + path, sign(gw, path, key, secret, now))[0] == 200
    status, body = http(gw.endpoint + path, sign(gw, path, key, secret, now - dt.timedelta(minutes=20)))
    assert (status, xml_code(body)) == (403, "RequestTimeTooSkewed")
    status, body = http(gw.endpoint + path, sign(gw, path, key, secret, now + dt.timedelta(minutes=20)))
    assert (status, xml_code(body)) == (403, "RequestTimeTooSkewed")


def test_presigned_urls_work_until_they_expire(gw, member):
    s3 = gw.boto3(credentials=member)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "restricted", "Key": CHUNK}, ExpiresIn=2)
    status, body = http(url)
    assert status == 200 and body == s3.get_object(Bucket="restricted", Key=CHUNK)["Body"].read()
    time.sleep(3.2)
    status, body = http(url)
    assert (status, xml_code(body)) == (403, "AccessDenied") and b"expired" in body
    week_plus = s3.generate_presigned_url("get_object", Params={"Bucket": "restricted", "Key": CHUNK}, ExpiresIn=604801)
    status, body = http(week_plus)
    assert (status, xml_code(body)) == (400, "AuthorizationQueryParametersError")
    # Signature version 2 is refused by name, never read as anonymous.
    v2 = week_plus.split("?")[0] + "?AWSAccessKeyId=ZG&Signature=x&Expires=9999999999"
    assert xml_code(http(v2)[1]) == "InvalidRequest"


def test_signed_gets_set_response_headers_as_s3_does(gw, member):
    s3 = gw.boto3(credentials=member)
    params = {"Bucket": "restricted", "Key": CHUNK, "ResponseContentDisposition": 'attachment; filename="tas.bin"',
              "ResponseContentType": "application/x-zarr-chunk", "ResponseCacheControl": "no-store"}
    url = s3.generate_presigned_url("get_object", Params=params, ExpiresIn=60)
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.headers["Content-Disposition"] == 'attachment; filename="tas.bin"'
        assert r.headers["Content-Type"] == "application/x-zarr-chunk"
        assert r.headers["Cache-Control"] == "no-store"
        assert r.read() == s3.get_object(Bucket="restricted", Key=CHUNK)["Body"].read()
    got = s3.get_object(Bucket="restricted", Key=CHUNK, ResponseContentLanguage="en", ResponseExpires=dt.datetime(2030, 1, 1))
    assert got["ContentLanguage"] == "en" and got["Expires"].year == 2030
    # Anonymous requests may not, as on S3.
    status, body = http(f"{gw.endpoint}/open-data/{CHUNK}?response-content-type=text/plain")
    assert (status, xml_code(body)) == (400, "InvalidRequest")


@pytest.mark.parametrize("key", ["{d}/../{c}", "{d}/./{c}", "./{d}/{c}", "{d}/{c}/.."])
def test_keys_with_dot_segments_are_signed_and_looked_up_verbatim(gw, member, key):
    """As S3: `.` and `..` are ordinary key characters. A signed GET of such a key is checked
    against the path as sent and answers NoSuchKey, never SignatureDoesNotMatch, and never the
    object the normalised path would name."""
    dataset, chunk = CHUNK.split("/", 1)
    key = key.format(d=dataset, c=chunk)
    s3 = gw.boto3(credentials=member)
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="restricted", Key=key)
    assert code_of(err.value) == "NoSuchKey", err.value.response
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "restricted", "Key": key}, ExpiresIn=60)
    status, body = raw_get(url)
    assert (status, xml_code(body)) == (404, "NoSuchKey")


def raw_get(url: str) -> tuple[int, bytes]:
    """GET with the path exactly as given (urllib and requests would remove dot segments)."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", u.path + (f"?{u.query}" if u.query else ""))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_bearer_tokens(gw, member):
    key, secret = member
    assert http(f"{gw.endpoint}/restricted/{CHUNK}", {"Authorization": f"Bearer {key}:{secret}"})[0] == 200
    status, body = http(f"{gw.endpoint}/restricted/{CHUNK}", {"Authorization": f"Bearer {key}:nope"})
    assert (status, xml_code(body)) == (403, "SignatureDoesNotMatch")


def test_revoking_and_creating_keys_on_a_running_gateway(gw):
    key = gw.create_key("short-lived", groups=("esgf",))
    deadline = time.monotonic() + 1.0
    s3 = gw.boto3(credentials=key)
    while True:  # usable within a second of its creation
        try:
            s3.head_object(Bucket="restricted", Key=CHUNK)
            break
        except ClientError:
            assert time.monotonic() < deadline, "a new key was not usable within 1 s"
            time.sleep(0.05)
    subprocess.run([*zarrgate_bin(), "keys", "revoke", key[0], "--db", str(gw.auth_db)], check=True, capture_output=True)
    deadline = time.monotonic() + 1.0
    while True:
        try:
            s3.get_object(Bucket="restricted", Key=CHUNK)
            assert time.monotonic() < deadline, "a revoked key still worked after 1 s"
            time.sleep(0.05)
        except ClientError as e:
            assert code_of(e) == "InvalidAccessKeyId"
            break


def test_an_expired_key_is_refused(gw):
    key = gw.create_key("expiring", expires="2s")
    time.sleep(0.6)
    s3 = gw.boto3(credentials=key)
    assert s3.get_object(Bucket="open-data", Key=CHUNK)["Body"].read()
    time.sleep(2.2)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="open-data", Key=CHUNK)
    assert code_of(e.value) == "InvalidAccessKeyId"


def test_keys_admin_never_shows_secrets(gw, member):
    out = subprocess.run([*zarrgate_bin(), "keys", "list", "--json", "--db", str(gw.auth_db)], check=True, capture_output=True, text=True).stdout
    keys = json.loads(out)
    assert any(k["access_key"] == member[0] for k in keys)
    assert member[1] not in out and all("secret" not in k for k in keys)
    shown = subprocess.run([*zarrgate_bin(), "keys", "show", member[0], "--db", str(gw.auth_db)], check=True, capture_output=True, text=True).stdout
    assert member[1] not in shown and json.loads(shown)["groups"] == ["esgf"]
    assert (os.stat(gw.auth_db).st_mode & 0o777) == 0o600
    assert member[1] not in gw.stderr_text()


def test_metrics_count_per_collection_without_secrets(gw, member):
    # A collection is restricted, so the metrics (which name it) need a key by default.
    status, body = http(f"{gw.endpoint}/metrics", {"Authorization": f"Bearer {member[0]}:{member[1]}"})
    assert status == 200
    text = body.decode()
    assert 'zarrgate_requests_total{bucket="restricted",class="2xx"}' in text
    assert 'zarrgate_auth_failures_total{bucket="restricted",code="AccessDenied"}' in text
    assert member[0] not in text and member[1] not in text


def create_key_offline(db: Path, name: str) -> tuple[str, str]:
    out = subprocess.run(
        [*zarrgate_bin(), "keys", "create", "--db", str(db), "--create-db", "--name", name, "--owner", "t@example.org",
         "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    doc = json.loads(out)
    return doc["access_key"], doc["secret"]


def test_quota_admits_exactly_n_of_32_parallel_clients(tmp_path):
    n = 10
    key = create_key_offline(tmp_path / "auth.db", "limited")
    g = run_gateway(tmp_path, f"[quotas.key.{key[0]}]\nrequests_per_second = 0.001\nburst = {n}\n")
    try:
        def one(_):
            s3 = g.boto3(credentials=key)
            try:
                s3.get_object(Bucket="open-data", Key=CHUNK)["Body"].read()
                return "ok"
            except ClientError as e:
                return code_of(e)

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(one, range(96)))
        assert abs(results.count("ok") - n) <= 1, results
        assert results.count("SlowDown") == 96 - results.count("ok")
        status, body = http(f"{g.endpoint}/open-data/{CHUNK}", {"Authorization": f"Bearer {key[0]}:{key[1]}"})
        assert status == 503 and xml_code(body) == "SlowDown" and f"key {key[0]}".encode() in body
        # Other keys and anonymous readers are not affected.
        assert g.boto3().get_object(Bucket="open-data", Key=CHUNK)["Body"].read()
    finally:
        g.stop()


def test_anonymous_quota_is_per_client_ip(tmp_path):
    g = run_gateway(tmp_path, "[quotas.anonymous]\nrequests_per_second = 0.001\nburst = 3\n")
    try:
        statuses = [http(f"{g.endpoint}/open-data/{CHUNK}")[0] for _ in range(5)]
        assert statuses == [200, 200, 200, 503, 503]
        # A key is not held to the anonymous quota.
        key = g.create_key("k")
        time.sleep(0.6)
        assert g.boto3(credentials=key).get_object(Bucket="open-data", Key=CHUNK)["Body"].read()
    finally:
        g.stop()


def test_usage_survives_kill_9_within_one_second(tmp_path):
    g = run_gateway(tmp_path)
    key = g.create_key("counted")
    time.sleep(0.6)
    s3 = g.boto3(credentials=key)
    done = []
    start = time.monotonic()
    while time.monotonic() - start < 3:
        s3.get_object(Bucket="open-data", Key=CHUNK)["Body"].read()
        done.append(time.monotonic())
    g.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    g.proc.wait()
    with sqlite3.connect(g.auth_db) as db:
        recorded = db.execute("SELECT COALESCE(SUM(requests), 0) FROM usage WHERE key = ?", (key[0],)).fetchone()[0]
    older_than_a_second = sum(1 for t in done if killed - t > 1.0)
    assert older_than_a_second <= recorded <= len(done), (older_than_a_second, recorded, len(done))
    out = subprocess.run(
        [*zarrgate_bin(), "usage", "--key", key[0], "--format", "csv", "--db", str(g.auth_db)],
        check=True, capture_output=True, text=True,
    ).stdout.splitlines()
    assert out[0] == "day,key,requests,bytes,compute_seconds,cache_hits,errors"
    assert int(out[1].split(",")[2]) == recorded


def test_aws_cli_with_a_key_lists_and_copies_a_restricted_collection(gw, member, tmp_path):
    import sys

    env = {**os.environ, "AWS_ACCESS_KEY_ID": member[0], "AWS_SECRET_ACCESS_KEY": member[1], "AWS_DEFAULT_REGION": "us-east-1"}
    aws = [str(Path(sys.executable).parent / "aws"), "--endpoint-url", gw.endpoint]
    listing = subprocess.run([*aws, "s3", "ls", "--recursive", "s3://restricted/"], env=env, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert CHUNK in listing.stdout
    subprocess.run([*aws, "s3", "cp", f"s3://restricted/{CHUNK}", str(tmp_path / "c")], env=env, check=True, capture_output=True, timeout=120)
    assert (tmp_path / "c").read_bytes() == gw.boto3(credentials=member).get_object(Bucket="restricted", Key=CHUNK)["Body"].read()
    denied = subprocess.run([*aws, "--no-sign-request", "s3", "ls", "s3://restricted/"], capture_output=True, text=True, timeout=120)
    assert denied.returncode != 0 and "AccessDenied" in denied.stderr


def test_credentials_that_cannot_be_read_are_refused_not_taken_as_anonymous(gw, member):
    path = f"/open-data/{CHUNK}"
    status, body = http(gw.endpoint + path + "?X-Amz-Credential=x&X-Amz-Signature=y")
    assert (status, xml_code(body)) == (400, "AuthorizationQueryParametersError")
    now = dt.datetime.now(dt.timezone.utc)
    headers = sign(gw, path, *member, now)
    headers["x-amz-date"] = (now - dt.timedelta(days=1)).strftime("%Y%m%dT%H%M%SZ")
    status, body = http(gw.endpoint + path, headers)
    assert (status, xml_code(body)) == (400, "AuthorizationHeaderMalformed"), "the scope date must be the request's date"


def problem_of(status_body) -> dict:
    status, body = status_body
    return {"status": status, **json.loads(body)}


def test_operations_follow_the_compute_policy_and_the_compute_quotas(tmp_path):
    """Issue 5 with operations: `compute = "authenticated"`, compute-seconds per day and
    concurrent jobs per group answer 401 / 429 problem documents, and usage counts compute
    time and cache hits."""
    extra = (
        f'[[collections]]\nbucket = "compute-only"\ncatalog = "{tmp_path / "cat"}"\ncompute = "authenticated"\n'
        "[quotas.group.thrifty]\ncompute_seconds_per_day = 0.001\n"
        "[quotas.group.serial]\nconcurrent_jobs = 1\n"
    )
    gw = run_gateway(tmp_path, extra, env={"ZARRGATE_TEST_COMPUTE_DELAY_MS": "3000"})
    try:
        url = f"{gw.endpoint}/ops/v1/average?dataset=compute-only/{DATASET}&var=tas"
        status, body = http(f"{url}&dims=time")
        assert status == 401 and json.loads(body)["status"] == 401, body

        thrifty_key, thrifty_secret = gw.create_key("thrifty", groups=("thrifty",))
        serial_key, serial_secret = gw.create_key("serial", groups=("serial",))
        time.sleep(0.6)  # keys reach a running gateway within a second
        thrifty = {"Authorization": f"Bearer {thrifty_key}:{thrifty_secret}"}
        assert http(f"{url}&dims=time", thrifty)[0] == 200
        refused = problem_of(http(f"{url}&dims=lat", thrifty))
        assert refused["status"] == 429 and "compute-seconds per day" in refused["detail"], refused
        # A cached result costs no compute: it is still served.
        assert http(f"{url}&dims=time", thrifty)[0] == 200

        serial = {"Authorization": f"Bearer {serial_key}:{serial_secret}", "Prefer": "respond-async"}
        first, _ = http(f"{url}&dims=lon", serial)
        assert first == 202
        second = problem_of(http(f"{url}&dims=lat,lon", serial))
        assert second["status"] == 429 and "concurrent jobs" in second["detail"], second

        time.sleep(1.0)  # usage is written every 0.25 s
        usage = subprocess.run(
            [*zarrgate_bin(), "usage", "--db", str(gw.auth_db), "--key", thrifty_key, "--format", "json"],
            check=True,
            capture_output=True,
            text=True,
        )
        rows = json.loads(usage.stdout)
        assert sum(r["cache_hits"] for r in rows) == 1 and sum(r["compute_seconds"] for r in rows) > 0, rows
    finally:
        gw.stop()

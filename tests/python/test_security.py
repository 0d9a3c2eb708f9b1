"""Security of the service, end to end with real clients against real gateway processes
(issue 13): the operations follow the read policy; quotas hold on every path and across
restarts; failed authentications are throttled; a key's state is told only to its owner;
`Retry-After` says the real wait; `/metrics` is private when a collection is; TLS with
certificates reloaded from disk; client addresses behind a trusted proxy (nginx); one client
cannot hold every connection; private file modes.

The module's gateway (`pol`) serves one data tree (two fixtures and a DRS join of three files)
as four collections: `open-data` (public), `restricted` (group `esgf`; `compute` left to
default to `read`), `restricted-auth` (group `esgf`, `compute = "authenticated"`) and
`compute-only` (readable by anyone, operations for group `esgf`). Its principals: anonymous, an
`outsider` key (group `other`) and a `member` key (group `esgf`).
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
import xarray as xr

from gateway import REPO, Gateway, zarrgate_bin
from servers import make_pki, request, served_serial, start_proxy

FIXTURES = Path(os.environ.get("ZARRGATE_FIXTURES", REPO / "fixtures" / "data" / "good"))
DATASET = "cal_noleap.nc"
CHUNK = f"{DATASET}/tas/0.0.0"
JOIN = "drs/tas_Amon_FIXTURE_historical_r1i1p1"
RESTRICTED = ("restricted", "restricted-auth", "compute-only")


# ---------------------------------------------------------------------------------------------
# Gateways and principals
# ---------------------------------------------------------------------------------------------


def data_tree(tmp: Path) -> Path:
    data = tmp / "data"
    if not data.exists():
        (data / "drs").mkdir(parents=True)
        for f in (DATASET, "classic.nc"):
            shutil.copy2(FIXTURES / f, data / f)
        for f in (FIXTURES / "drs").glob("*.nc"):
            shutil.copy2(f, data / "drs" / f.name)
    return data


def collections(tmp: Path) -> str:
    """The four collections over one data tree (one catalog)."""
    data, cat = data_tree(tmp), tmp / "cat"
    return (
        f'[[collections]]\nbucket = "open-data"\ndata = "{data}"\ncatalog = "{cat}"\n'
        f'[[collections]]\nbucket = "restricted"\ncatalog = "{cat}"\nread = ["group:esgf"]\n'
        f'[[collections]]\nbucket = "restricted-auth"\ncatalog = "{cat}"\nread = ["group:esgf"]\ncompute = "authenticated"\n'
        f'[[collections]]\nbucket = "compute-only"\ncatalog = "{cat}"\ncompute = ["group:esgf"]\n'
    )


def launch(tmp: Path, settings: str = "", quotas: str = "", *, args: tuple[str, ...] = (), name: str = "gw",
           failed_auth: int = 10_000) -> Gateway:
    """`zarrgate serve --config` with the four collections, top-level `settings` and `quotas`
    tables. Its key database and results live in `tmp`. Most tests here provoke refusals from
    one address on purpose, so failed authentications are throttled only at `failed_auth` a
    minute."""
    db = tmp / "auth.db"
    text = f'listen = "127.0.0.1:0"\nauth_db = "{db}"\n{settings}\n[ops]\ndir = "{tmp / "ops"}"\n'
    text += collections(tmp) + quotas + f"\n[quotas.failed_auth]\nper_minute = {failed_auth}\n"
    config = tmp / f"{name}.toml"
    config.write_text(text)
    proc = subprocess.Popen([*zarrgate_bin(), "serve", "--config", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.wait(timeout=10)
        raise AssertionError(f"zarrgate serve did not start: {''.join(log)[-3000:]}")
    return Gateway(endpoint=line.split()[-1], bucket="open-data", proc=proc, catalog_dir=tmp / "cat", log=log,
                   auth_db=db, ops_dir=tmp / "ops")


def bearer(key: tuple[str, str]) -> dict:
    return {"Authorization": f"Bearer {key[0]}:{key[1]}"}


def json_of(reply) -> dict:
    return json.loads(reply.body)


def xml_code(body: bytes) -> str:
    import xml.etree.ElementTree as ET

    return ET.fromstring(body).findtext("Code")


@dataclass
class Principals:
    gw: Gateway
    outsider: tuple[str, str]
    member: tuple[str, str]

    def headers(self, who: str) -> dict:
        return {"anonymous": {}, "outsider": bearer(self.outsider), "member": bearer(self.member)}[who]


@pytest.fixture(scope="module")
def pol(tmp_path_factory):
    gw = launch(tmp_path_factory.mktemp("policy"))
    outsider = gw.create_key("outsider", groups=("other",))
    member = gw.create_key("member", groups=("esgf",))
    time.sleep(0.6)  # keys reach a running gateway within a second
    yield Principals(gw, outsider, member)
    gw.stop()


def original_tas() -> np.ndarray:
    with xr.open_dataset(FIXTURES / DATASET) as ds:
        return ds["tas"].values


def result_tas(body: bytes) -> np.ndarray:
    with xr.open_dataset(io.BytesIO(body), engine="h5netcdf") as ds:
        return ds["tas"].values


def subset_url(gw: Gateway, bucket: str, dataset: str = DATASET, **args) -> str:
    query = urlencode({"dataset": f"{bucket}/{dataset}", "var": "tas", "format": "nc", **args}, safe="/,")
    return f"{gw.endpoint}/ops/v1/subset?{query}"


def execute(gw: Gateway, process: str, inputs: dict, headers: dict, asynchronous: bool = False):
    h = {"Content-Type": "application/json", **headers}
    if asynchronous:
        h["Prefer"] = "respond-async"
    import requests

    r = requests.post(f"{gw.endpoint}/processes/{process}/execution", data=json.dumps({"inputs": inputs}),
                      headers=h, timeout=120)
    return r


# ---------------------------------------------------------------------------------------------
# 1. Operations need the read policy and the compute policy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bucket", RESTRICTED)
def test_ops_urls_refuse_anonymous_and_outsiders_and_serve_members(pol, bucket):
    gw = pol.gw
    for who, status in (("anonymous", 401), ("outsider", 403)):
        r = request(subset_url(gw, bucket), pol.headers(who))
        assert r.status == status, (who, r.status, r.body[:300])
        assert r.headers["content-type"] == "application/problem+json"
        assert json_of(r)["status"] == status
    r = request(subset_url(gw, bucket), pol.headers("member"))
    assert r.status == 200, r.body[:500]
    np.testing.assert_array_equal(result_tas(r.body), original_tas())
    # The public collection stays open to everyone.
    assert request(subset_url(gw, "open-data")).status == 200


@pytest.mark.parametrize("bucket", RESTRICTED)
def test_ogc_execute_sync_follows_the_read_policy(pol, bucket):
    inputs = {"dataset": f"{bucket}/{DATASET}", "var": "tas", "dims": "time"}
    for who, status in (("anonymous", 401), ("outsider", 403)):
        r = execute(pol.gw, "average", inputs, pol.headers(who))
        assert r.status_code == status, (who, r.text[:300])
    r = execute(pol.gw, "average", inputs, pol.headers("member"))
    assert r.status_code == 200, r.text[:500]
    with xr.open_dataset(io.BytesIO(r.content), engine="h5netcdf") as got, xr.open_dataset(FIXTURES / DATASET) as src:
        np.testing.assert_allclose(got["tas"].values, src["tas"].mean("time").values, rtol=1e-6)


@pytest.mark.parametrize("bucket", ("restricted", "compute-only"))
def test_async_jobs_and_their_results_stay_behind_the_policy(pol, bucket):
    gw = pol.gw
    inputs = {"dataset": f"{bucket}/{DATASET}", "var": "tas", "dims": "lat", "format": "nc"}
    for who, status in (("anonymous", 401), ("outsider", 403)):
        assert execute(gw, "average", inputs, pol.headers(who), asynchronous=True).status_code == status, who
    r = execute(gw, "average", inputs, pol.headers("member"), asynchronous=True)
    assert r.status_code == 201, r.text
    location = r.headers["Location"]
    # Status: an unknown job and another's look the same.
    for who in ("anonymous", "outsider"):
        assert request(gw.endpoint + location, pol.headers(who)).status == 404, who
        listing = json_of(request(f"{gw.endpoint}/jobs", pol.headers(who)))
        assert all(j["jobID"] not in location for j in listing["jobs"]), who
    deadline = time.monotonic() + 60
    while (doc := json_of(request(gw.endpoint + location, pol.headers("member"))))["status"] != "successful":
        assert doc["status"] in ("accepted", "running") and time.monotonic() < deadline, doc
        time.sleep(0.2)
    assert any(j["jobID"] in location for j in json_of(request(f"{gw.endpoint}/jobs", pol.headers("member")))["jobs"])
    for who in ("anonymous", "outsider"):
        assert request(f"{gw.endpoint}{location}/results", pol.headers(who)).status == 404, who
    ok = request(f"{gw.endpoint}{location}/results", pol.headers("member"))
    assert ok.status == 200
    assert "private" in ok.headers["cache-control"], "a restricted result is never for shared caches"
    # The content-addressed result: 401 for anonymous (a key would help), 403 for an outsider.
    result = ok.headers["content-location"]
    for who, status in (("anonymous", 401), ("outsider", 403), ("member", 200)):
        for method in ("GET", "HEAD"):
            got = request(gw.endpoint + result, pol.headers(who), method=method)
            assert got.status == status, (who, method, got.status)
    with xr.open_dataset(io.BytesIO(ok.body), engine="h5netcdf") as got, xr.open_dataset(FIXTURES / DATASET) as src:
        np.testing.assert_allclose(got["tas"].values, src["tas"].mean("lat").values, rtol=1e-6)


@pytest.mark.parametrize("bucket", ("restricted", "compute-only"))
def test_the_results_bucket_needs_the_policy_too(pol, bucket):
    gw = pol.gw
    r = request(subset_url(gw, bucket, format="zarr"), pol.headers("member"))
    assert r.status == 200, r.body[:300]
    prefix = json_of(r)["prefix"]
    from botocore.exceptions import ClientError

    for creds in (None, pol.outsider):
        s3 = gw.boto3(credentials=creds) if creds else gw.boto3()
        with pytest.raises(ClientError) as e:
            s3.get_object(Bucket="results", Key=f"{prefix}.zmetadata")
        assert e.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(ClientError) as e:
            s3.list_objects_v2(Bucket="results", Prefix=prefix)
        assert e.value.response["Error"]["Code"] == "AccessDenied"
    so = {"key": pol.member[0], "secret": pol.member[1], "endpoint_url": gw.endpoint, "skip_instance_cache": True}
    ds = xr.open_zarr(f"s3://results/{prefix.rstrip('/')}", storage_options=so)
    np.testing.assert_array_equal(ds["tas"].values, original_tas())
    member = request(f"{gw.endpoint}/results/{prefix}.zmetadata", pol.headers("member"))
    assert member.status == 200 and member.headers["cache-control"].startswith("private"), member.headers


def test_compute_only_collections_stay_readable_by_everyone(pol):
    """`compute` restricts the operations, not the data: S3 reads of `compute-only` are open."""
    s3 = pol.gw.boto3()
    assert s3.get_object(Bucket="compute-only", Key=CHUNK)["Body"].read()
    assert "compute-only" in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def presign(gw: Gateway, url: str, key: tuple[str, str], expires: int = 300) -> str:
    """A presigned URL for any GET, signed by botocore as for S3."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method="GET", url=url)
    S3SigV4QueryAuth(Credentials(*key), "s3", "us-east-1", expires=expires).add_auth(req)
    return req.url


def test_presigned_ops_urls_carry_their_signers_rights(pol):
    gw = pol.gw
    url = subset_url(gw, "restricted")
    assert request(presign(gw, url, pol.outsider)).status == 403
    ok = request(presign(gw, url, pol.member))
    assert ok.status == 200
    np.testing.assert_array_equal(result_tas(ok.body), original_tas())
    tampered = presign(gw, url, pol.member).replace("var=tas", "var=time_bnds")
    r = request(tampered)
    assert r.status == 403 and "signature" in json_of(r)["detail"].lower()


def test_a_joined_dataset_follows_its_collections_policy(pol):
    url = subset_url(pol.gw, "restricted", JOIN)
    for who, status in (("anonymous", 401), ("outsider", 403), ("member", 200)):
        assert request(url, pol.headers(who)).status == status, who
    member = request(url, pol.headers("member"))
    files = sorted((FIXTURES / "drs").glob("*.nc"))
    with xr.open_mfdataset(files, combine="nested", concat_dim="time", use_cftime=True) as want:
        np.testing.assert_array_equal(result_tas(member.body), want["tas"].values)


def test_restricted_results_and_catalogs_are_private_files(pol):
    assert request(subset_url(pol.gw, "restricted", time="1850-06/1850-07"), pol.headers("member")).status == 200
    results = pol.gw.ops_dir / "results"
    assert results.stat().st_mode & 0o777 == 0o700
    files = [p for p in results.iterdir() if p.is_file()]
    assert files and all(p.stat().st_mode & 0o077 == 0 for p in files), [oct(p.stat().st_mode) for p in files]
    assert (pol.gw.ops_dir / "jobs").stat().st_mode & 0o777 == 0o700
    assert pol.gw.catalog_dir.stat().st_mode & 0o777 == 0o700


# ---------------------------------------------------------------------------------------------
# 2, 3. Quotas on every path, and across restarts
# ---------------------------------------------------------------------------------------------


def seconds_to_midnight() -> float:
    now = time.time()
    return 86_400 - now % 86_400


def test_a_restart_keeps_the_daily_byte_budget_spent(tmp_path):
    key = None
    quota = "[quotas.anonymous]\nbytes_per_day = 1\n[quotas.default_key]\nbytes_per_day = 1\n"
    gw = launch(tmp_path, quotas=quota)
    try:
        key = gw.create_key("daily")
        time.sleep(0.6)
        for headers in ({}, bearer(key)):
            assert request(f"{gw.endpoint}/open-data/{CHUNK}", headers).status == 200
            assert request(f"{gw.endpoint}/open-data/{CHUNK}", headers).status == 503
        time.sleep(0.6)  # the counters are written every 0.25 s
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait()
    finally:
        gw.stop()
    again = launch(tmp_path, quotas=quota, name="again")
    try:
        for headers, who in (({}, "anonymous client 127.0.0.1"), (bearer(key), f"key {key[0]}")):
            r = request(f"{again.endpoint}/open-data/{CHUNK}", headers)
            assert (r.status, xml_code(r.body)) == (503, "SlowDown"), r.body
            assert who.encode() in r.body and b"bytes per day" in r.body
            assert abs(int(r.headers["retry-after"]) - seconds_to_midnight()) <= 2, r.headers
    finally:
        again.stop()


def test_a_spent_quota_holds_on_every_path(tmp_path):
    gw = launch(tmp_path, 'metrics = "public"', "[quotas.anonymous]\nrequests_per_second = 0.001\nburst = 2\n")
    try:
        key = gw.create_key("k")
        time.sleep(0.6)
        e = gw.endpoint
        assert [request(f"{e}/open-data/{CHUNK}").status for _ in range(2)] == [200, 200]
        paths = [
            ("/", {}),  # ListBuckets
            ("/no-such-bucket/x", {}),  # unknown bucket
            (f"/restricted/{CHUNK}", {}),  # a policy refusal
            (f"/open-data/{CHUNK}", {"Authorization": f"Bearer {key[0]}:wrong"}),  # failed authentication
            ("/results/" + "0" * 64 + "/.zmetadata", {}),  # the results bucket
            ("/metrics", {}),
        ]
        for path, headers in paths:
            r = request(e + path, headers)
            assert (r.status, xml_code(r.body)) == (503, "SlowDown"), (path, r.status, r.body[:200])
            assert int(r.headers["retry-after"]) > 1, path
        for path in (f"/ops/v1/subset?dataset=open-data/{DATASET}&var=tas", "/processes", "/jobs", "/results/" + "0" * 64 + ".nc"):
            r = request(e + path)
            assert r.status == 429 and json_of(r)["type"].endswith(":quota"), (path, r.status, r.body[:200])
        # Health probes are never limited; a key has a quota of its own.
        assert request(f"{e}/healthz").status == 200 and request(f"{e}/readyz").status == 200
        assert request(f"{e}/open-data/{CHUNK}", bearer(key)).status == 200
    finally:
        gw.stop()


# ---------------------------------------------------------------------------------------------
# 4, 5. Failed authentication is throttled; a key's state needs its secret
# ---------------------------------------------------------------------------------------------


def test_failed_authentications_are_throttled_then_the_owner_gets_in(tmp_path):
    gw = launch(tmp_path, failed_auth=20)
    try:
        key, other = gw.create_key("guessed"), gw.create_key("other")
        time.sleep(0.6)
        url = f"{gw.endpoint}/open-data/{CHUNK}"
        s3_wrong = gw.boto3(credentials=(key[0], "x" * 40))
        codes = []
        from botocore.exceptions import ClientError

        started = time.monotonic()
        for _ in range(60):
            try:
                s3_wrong.get_object(Bucket="open-data", Key=CHUNK)
                codes.append("ok")
            except ClientError as err:
                codes.append(err.response["Error"]["Code"])
        # 20 at once, then one more every 3 s while the guessing goes on.
        refilled = (time.monotonic() - started) / 3
        assert 20 <= codes.count("SignatureDoesNotMatch") <= 20 + refilled + 1, (codes, refilled)
        assert codes.count("SlowDown") == 60 - codes.count("SignatureDoesNotMatch"), codes
        # Locked now: the key from this address (its right secret unchecked) and any key from this
        # address. The owner of the guessed key keeps working from another address, and
        # anonymous reads are not affected.
        r = request(url, bearer(key))
        assert (r.status, xml_code(r.body)) == (503, "SlowDown") and 1 <= int(r.headers["retry-after"]) <= 4
        # The operations API answers the same lock with a 429 problem.
        ops = request(f"{gw.endpoint}/ops/v1/subset?dataset=open-data/{DATASET}&var=tas", bearer(key))
        assert ops.status == 429 and "retry-after" in ops.headers
        assert request(url, bearer(other)).status == 503
        assert request(url, bearer(key), source="127.0.0.2").status == 200
        assert request(url, bearer(other), source="127.0.0.2").status == 200
        assert request(url).status == 200
        # An expired presigned URL or a skewed clock is not a guess, and is never throttled.
        expired = gw.boto3(credentials=other).generate_presigned_url(
            "get_object", Params={"Bucket": "open-data", "Key": CHUNK}, ExpiresIn=1)
        time.sleep(2.5)  # X-Amz-Date has whole seconds: past its second and the one after
        statuses = [request(expired, source="127.0.0.3") for _ in range(40)]
        assert all(r.status == 403 for r in statuses), [(r.status, r.body[:200]) for r in statuses if r.status != 403][:3]
        assert request(url, bearer(other), source="127.0.0.3").status == 200
        # A token comes back every 3 s (20 a minute): the owner is in again after that.
        time.sleep(int(r.headers["retry-after"]) + 0.2)
        assert request(url, bearer(key)).status == 200
    finally:
        gw.stop()


def test_a_revoked_or_expired_key_is_told_only_to_whoever_can_sign_for_it(pol):
    gw = pol.gw
    revoked = gw.create_key("to-revoke", groups=("esgf",))
    expired = gw.create_key("to-expire", groups=("esgf",), expires="1s")
    subprocess.run([*zarrgate_bin(), "keys", "revoke", revoked[0], "--db", str(gw.auth_db)], check=True, capture_output=True)
    time.sleep(1.6)
    from botocore.exceptions import ClientError

    for k, why in ((revoked, b"revoked"), (expired, b"expired")):
        with pytest.raises(ClientError) as e:
            gw.boto3(credentials=(k[0], "y" * 40)).get_object(Bucket="open-data", Key=CHUNK)
        assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
        wrong = request(f"{gw.endpoint}/open-data/{CHUNK}", {"Authorization": f"Bearer {k[0]}:nope"})
        assert xml_code(wrong.body) == "SignatureDoesNotMatch" and why not in wrong.body
        right = request(f"{gw.endpoint}/open-data/{CHUNK}", bearer(k))
        assert (right.status, xml_code(right.body)) == (403, "InvalidAccessKeyId") and why in right.body


# ---------------------------------------------------------------------------------------------
# 6. Retry-After is the real wait
# ---------------------------------------------------------------------------------------------


def test_retry_after_is_the_time_until_a_token_is_back(tmp_path):
    gw = launch(tmp_path, quotas="[quotas.default_key]\nrequests_per_second = 0.25\nburst = 1\n")
    try:
        key = gw.create_key("slow")
        time.sleep(0.6)
        url = f"{gw.endpoint}/open-data/{CHUNK}"
        assert request(url, bearer(key)).status == 200
        t0 = time.monotonic()
        refused = request(url, bearer(key))
        wait = int(refused.headers["retry-after"])
        assert refused.status == 503 and abs(wait - 4) <= 1, refused.headers
        ops = request(f"{gw.endpoint}/ops/v1/subset?dataset=open-data/{DATASET}&var=tas", bearer(key))
        assert ops.status == 429 and abs(int(ops.headers["retry-after"]) - (4 - (time.monotonic() - t0))) <= 1
        time.sleep(max(0.0, wait - (time.monotonic() - t0)) + 0.1)
        assert request(url, bearer(key)).status == 200, "the request passes once the wait is over"
    finally:
        gw.stop()


# ---------------------------------------------------------------------------------------------
# 7. /metrics
# ---------------------------------------------------------------------------------------------


def test_metrics_need_a_key_once_a_collection_is_restricted(pol, tmp_path):
    assert request(f"{pol.gw.endpoint}/restricted/{CHUNK}", pol.headers("member")).status == 200
    anon = request(f"{pol.gw.endpoint}/metrics")
    assert (anon.status, xml_code(anon.body)) == (403, "AccessDenied")
    keyed = request(f"{pol.gw.endpoint}/metrics", pol.headers("outsider"))
    assert keyed.status == 200 and b'bucket="restricted"' in keyed.body, "what the anonymous caller was not shown"
    opened = launch(tmp_path, 'metrics = "public"\n')
    try:
        assert request(f"{opened.endpoint}/metrics").status == 200
    finally:
        opened.stop()


# ---------------------------------------------------------------------------------------------
# 8. TLS, and client addresses behind a trusted proxy
# ---------------------------------------------------------------------------------------------


def test_tls_with_boto3_s3fs_xarray_and_curl_and_a_certificate_swapped_on_disk(tmp_path):
    pki = make_pki(tmp_path / "pki", "first")
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    cert.parent.mkdir()
    shutil.copy(pki.cert, cert)
    shutil.copy(pki.key, key)
    gw = launch(tmp_path, args=("--tls-cert", str(cert), "--tls-key", str(key)))
    try:
        assert gw.endpoint.startswith("https://127.0.0.1:"), gw.endpoint
        member = gw.create_key("tls", groups=("esgf",))
        time.sleep(0.6)
        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", endpoint_url=gw.endpoint, region_name="us-east-1", verify=str(pki.ca),
                          aws_access_key_id=member[0], aws_secret_access_key=member[1],
                          config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
        assert CHUNK in [o["Key"] for o in s3.list_objects_v2(Bucket="restricted", Prefix=DATASET)["Contents"]]
        so = {"key": member[0], "secret": member[1], "endpoint_url": gw.endpoint, "skip_instance_cache": True,
              "client_kwargs": {"verify": str(pki.ca)}}
        ds = xr.open_dataset(f"s3://restricted/{DATASET}", engine="zarr", storage_options=so)
        with xr.open_dataset(FIXTURES / DATASET) as want:
            xr.testing.assert_identical(ds.load(), want.load())
        curl = subprocess.run(["curl", "-sS", "--fail", "-H", f"Authorization: Bearer {member[0]}:{member[1]}",
                               f"{gw.endpoint}/restricted/{DATASET}/.zmetadata"],
                              env={**os.environ, "CURL_CA_BUNDLE": str(pki.ca)}, capture_output=True, timeout=60)
        assert curl.returncode == 0 and b'"zarr_consolidated_format"' in curl.stdout, curl.stderr
        # Plain HTTP on the TLS port gets no data.
        port = int(gw.endpoint.rsplit(":", 1)[1])
        plain = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/open-data/{CHUNK}"], capture_output=True, timeout=30)
        assert plain.returncode != 0
        # A new certificate (another CA) written over the files is served without a restart.
        assert served_serial("127.0.0.1", port, pki.ca) == pki.serial
        renewed = make_pki(tmp_path / "pki", "second")
        for src, dst in ((renewed.key, key), (renewed.cert, cert)):
            tmp = dst.with_suffix(".new")
            shutil.copy(src, tmp)
            os.replace(tmp, dst)
        deadline = time.monotonic() + 10
        while served_serial("127.0.0.1", port, renewed.ca) != renewed.serial:
            assert time.monotonic() < deadline, "the renewed certificate was not picked up"
            time.sleep(0.2)
        assert served_serial("127.0.0.1", port, pki.ca) is None
        assert gw.proc.poll() is None
        s3 = boto3.client("s3", endpoint_url=gw.endpoint, region_name="us-east-1", verify=str(renewed.ca),
                          aws_access_key_id=member[0], aws_secret_access_key=member[1],
                          config=Config(s3={"addressing_style": "path"}))
        assert s3.get_object(Bucket="restricted", Key=CHUNK)["Body"].read()
    finally:
        gw.stop()


def test_behind_a_trusted_proxy_each_client_address_has_its_own_quota(tmp_path):
    gw = launch(tmp_path, 'trusted_proxies = ["127.0.0.1"]', "[quotas.anonymous]\nrequests_per_second = 0.001\nburst = 2\n")
    proxy = start_proxy(gw.endpoint, tmp_path / "nginx")
    try:
        via = f"{proxy.endpoint}/open-data/{CHUNK}"
        for client in ("127.0.0.2", "127.0.0.3"):
            assert [request(via, source=client).status for _ in range(3)] == [200, 200, 503], client
        # The same header sent straight to the gateway by an untrusted peer is ignored: the peer
        # is counted as itself, whatever address it names.
        direct = f"{gw.endpoint}/open-data/{CHUNK}"
        forged = [request(direct, {"X-Forwarded-For": f"198.51.100.{i}"}, source="127.0.0.4").status for i in range(3)]
        assert forged == [200, 200, 503]
        # Through nginx, which writes X-Forwarded-For, a client's own Forwarded header (passed on
        # unchanged) is ignored: the client is still counted as itself.
        spoofed = [request(via, {"Forwarded": f"for=203.0.113.{i}"}, source="127.0.0.5").status for i in range(3)]
        assert spoofed == [200, 200, 503]
    finally:
        proxy.stop()
        gw.stop()


# ---------------------------------------------------------------------------------------------
# 10. One client cannot lock everyone out
# ---------------------------------------------------------------------------------------------


def test_two_thousand_stalled_connections_from_one_address_lock_no_one_out(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    # The connection cap of the gateway that was locked out (1024), below the 2,000 stalled ones:
    # the address's own limit (64) is what keeps the others served.
    gw = launch(tmp_path, args=("--header-timeout", "3", "--max-connections", "1024"))
    stalled: list[socket.socket] = []
    try:
        port = int(gw.endpoint.rsplit(":", 1)[1])
        for _ in range(2000):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
            s.send(b"GET /open-data/cal_noleap.nc/.zmeta")  # half a request line, then nothing
            stalled.append(s)
        # The same address asking properly now is over its limit, and told so.
        over = request(f"{gw.endpoint}/open-data/{DATASET}/.zmetadata", source="127.0.0.2", timeout=5)
        assert (over.status, xml_code(over.body)) == (503, "SlowDown") and over.headers["retry-after"] == "1"
        times = []
        for _ in range(20):
            t0 = time.monotonic()
            r = request(f"{gw.endpoint}/open-data/{DATASET}/.zmetadata", timeout=5)
            times.append(time.monotonic() - t0)
            assert r.status == 200
        times.sort()
        assert times[10] < 0.1 and times[-1] < 1.0, times
        # The stalled connections are closed: those over the address's limit at once, the rest
        # when their request head is overdue.
        time.sleep(4)
        open_ones = 0
        for s in stalled:
            s.setblocking(False)
            try:
                while chunk := s.recv(65536):
                    pass
            except BlockingIOError:
                open_ones += 1
            except OSError:
                pass
        assert open_ones == 0, f"{open_ones} stalled connections are still open"
        assert gw.proc.poll() is None
    finally:
        for s in stalled:
            s.close()
        gw.stop()

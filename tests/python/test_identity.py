"""Logins (docs/identity.md): OpenID bearer tokens, introspection, and S3 credentials from a
login (STS AssumeRoleWithWebIdentity), with a real OpenID Provider.

The provider is npm's certified `oidc-provider` (tests/oidc/provider.js, pinned by its lock
file), started on 127.0.0.1 for the module. Its test clients get tokens by the
client_credentials grant: `cmip6-user` (JWT, RS256, group `cmip6-restricted`), `public-user`
(no group), `es256-user`, `eddsa-user`, and `opaque-user` (opaque, introspected). One gateway
serves the fixtures as `open-data` (public) and `restricted` (`group:esgf`, to which the
configuration maps the provider's `cmip6-restricted`).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests
import xarray as xr

from gateway import REPO, zarrgate_bin
from test_auth import DATASET, FIXTURES, run_gateway

OP_DIR = REPO / "tests" / "oidc"
CHUNK = f"{DATASET}/tas/0.0.0"


class Provider:
    """The OpenID Provider process."""

    def __init__(self, tmp: Path):
        if shutil.which("node") is None or not (OP_DIR / "node_modules").is_dir():
            pytest.fail("the OpenID Provider is not installed: run `make oidc-provider` (needs node and npm)")
        self.keys = tmp / "op-keys.json"
        self.proc = subprocess.Popen(
            ["node", str(OP_DIR / "provider.js")], cwd=OP_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "OP_PORT": "0", "OP_KEYS_FILE": str(self.keys)},
        )
        line = self.proc.stdout.readline()
        assert line.startswith("READY "), line + self.proc.stderr.read()
        self.issuer = line.split()[1]

    def token(self, client: str = "cmip6-user", **extra) -> str:
        r = requests.post(f"{self.issuer}/token", auth=(client, f"{client}-secret"),
                          data={"grant_type": "client_credentials", **extra}, timeout=10)
        r.raise_for_status()
        return r.json()["access_token"]

    def rotate(self) -> dict:
        return requests.post(f"{self.issuer}/__admin/rotate", timeout=10).json()

    def revoke(self, token: str) -> None:
        r = requests.post(f"{self.issuer}/token/revocation", auth=("zarrgate", "zarrgate-secret"),
                          data={"token": token}, timeout=10)
        assert r.status_code == 200, r.text

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def op(tmp_path_factory):
    p = Provider(tmp_path_factory.mktemp("op"))
    yield p
    p.stop()


@pytest.fixture(scope="module")
def gw(op, tmp_path_factory):
    extra = f"""
[[oidc]]
issuer = "{op.issuer}"
audience = "zarrgate"
groups_claim = "groups"
leeway_seconds = 1
jwks_refresh_seconds = 1
introspection_client_id = "zarrgate"
introspection_client_secret = "zarrgate-secret"
introspection_cache_seconds = 1
[oidc.groups]
"cmip6-restricted" = "esgf"
"""
    g = run_gateway(tmp_path_factory.mktemp("identity"), extra)
    yield g
    g.stop()


def get(gw, path: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.get(f"{gw.endpoint}/{path}", headers=headers, timeout=30)
    return r.status_code, r.content, r.headers


def original() -> xr.Dataset:
    with xr.open_dataset(FIXTURES / DATASET) as ds:
        return ds.load()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parts(token: str) -> tuple[dict, dict, str]:
    h, p, s = token.split(".")
    pad = lambda x: x + "=" * (-len(x) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(h))), json.loads(base64.urlsafe_b64decode(pad(p))), s


# ---------------------------------------------------------------------------------------------
# Bearer tokens
# ---------------------------------------------------------------------------------------------


def test_curl_and_fsspec_read_a_restricted_collection_with_a_token(gw, op):
    import fsspec

    token = op.token()
    out = subprocess.run(["curl", "-sf", "-H", f"Authorization: Bearer {token}", "-o", "/dev/null", "-w", "%{http_code}",
                          f"{gw.endpoint}/restricted/{CHUNK}"], capture_output=True, text=True, timeout=60)
    assert out.stdout == "200", out
    mapper = fsspec.get_mapper(f"{gw.endpoint}/restricted/{DATASET}", headers={"Authorization": f"Bearer {token}"})
    ds = xr.open_zarr(mapper, consolidated=True)
    xr.testing.assert_identical(ds.load(), original())
    # Anonymous: refused.
    assert get(gw, f"restricted/{CHUNK}")[0] == 403


@pytest.mark.parametrize("client", ["es256-user", "eddsa-user"])
def test_es256_and_eddsa_tokens(gw, op, client):
    token = op.token(client)
    assert parts(token)[0]["alg"] in ("ES256", "EdDSA")
    assert get(gw, f"restricted/{CHUNK}", token)[0] == 200


def test_a_token_outside_the_group_is_forbidden(gw, op):
    token = op.token("public-user")
    assert get(gw, f"open-data/{CHUNK}", token)[0] == 200
    status, body, _ = get(gw, f"restricted/{CHUNK}", token)
    assert status == 403 and b"AccessDenied" in body


def hs256(header: dict, claims: dict, secret: bytes) -> str:
    """A JWT signed with HMAC-SHA256, written by hand (JOSE libraries refuse a public key as
    an HMAC secret, which is the attack)."""
    import hashlib
    import hmac

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def forged_tokens(op) -> dict[str, str]:
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    good = op.token()
    header, claims, sig = parts(good)
    now = int(time.time())
    other = RSAKey.generate_key(2048)
    tampered = dict(claims, groups=["cmip6-restricted", "admin"], sub="mallory")
    jwks = requests.get(f"{op.issuer}/jwks", timeout=10).json()["keys"]
    rsa_public = next(k for k in jwks if k["kid"] == header["kid"])
    public_pem = RSAKey.import_key(rsa_public).as_pem(private=False)
    return {
        "expired": op.token(expires_in="1"),
        "another key": jwt.encode({"alg": "RS256", "kid": header["kid"]}, dict(claims, iat=now, exp=now + 600), other),
        "wrong audience": op.token(audience="someone-else"),
        "alg none": f"{b64(json.dumps({'alg': 'none', 'kid': header['kid']}).encode())}."
                    f"{b64(json.dumps(claims).encode())}.",
        "tampered payload": f"{good.split('.')[0]}.{b64(json.dumps(tampered).encode())}.{sig}",
        "hmac with the public key": hs256({"alg": "HS256", "kid": header["kid"]}, claims, public_pem),
        "unknown issuer": jwt.encode({"alg": "RS256", "kid": "x"}, dict(claims, iss="http://127.0.0.1:1"), other),
    }


def test_bad_tokens_are_refused_with_401(gw, op):
    tokens = forged_tokens(op)
    time.sleep(3)  # the 1-second token expires, past the 1-second leeway
    for what, token in tokens.items():
        status, body, headers = get(gw, f"restricted/{CHUNK}", token)
        assert status == 401, (what, status, body)
        assert ET.fromstring(body).findtext("Code") == "InvalidToken", (what, body)
        assert headers.get("WWW-Authenticate", "").startswith('Bearer realm="zarrgate", error="invalid_token"'), what
        # also on a public collection: credentials that are present are always checked
        assert get(gw, f"open-data/{CHUNK}", token)[0] == 401, what
    # the operations API answers with a problem document
    r = requests.get(f"{gw.endpoint}/ops/v1/processes", headers={"Authorization": f"Bearer {tokens['expired']}"},
                     timeout=30)
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json", r.text


def test_usage_is_accounted_by_subject(gw, op):
    token = op.token()
    for _ in range(3):
        assert get(gw, f"restricted/{CHUNK}", token)[0] == 200
    time.sleep(0.6)
    out = subprocess.run([*zarrgate_bin(), "usage", "--db", str(gw.auth_db), "--key", "oidc:cmip6-user",
                          "--format", "json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "oidc:cmip6-user" in out.stdout, out.stdout


def test_a_rotated_signing_key_works_without_a_restart(gw, op):
    before = op.token()
    assert get(gw, f"restricted/{CHUNK}", before)[0] == 200
    rotated = op.rotate()
    after = op.token()
    assert parts(after)[0]["kid"] in rotated["signing_kids"] and parts(after)[0]["kid"] != parts(before)[0]["kid"]
    time.sleep(1.1)  # the gateway fetches keys at most once a second here
    assert get(gw, f"restricted/{CHUNK}", after)[0] == 200
    # the old key is no longer published: tokens it signed are refused
    assert get(gw, f"restricted/{CHUNK}", before)[0] == 401


def test_opaque_tokens_are_introspected_and_revocation_holds(gw, op):
    token = op.token("opaque-user")
    assert token.count(".") != 2, "an opaque token is expected"
    assert get(gw, f"restricted/{CHUNK}", token)[0] == 200
    op.revoke(token)
    time.sleep(1.5)  # introspection answers are kept one second here
    assert get(gw, f"restricted/{CHUNK}", token)[0] == 401
    assert get(gw, f"restricted/{CHUNK}", "not-a-token-anyone-issued")[0] == 401


# ---------------------------------------------------------------------------------------------
# S3 credentials from a login
# ---------------------------------------------------------------------------------------------


def assume(gw, token: str, duration: int | None = None):
    import boto3

    sts = boto3.client("sts", endpoint_url=gw.endpoint, region_name="us-east-1",
                       aws_access_key_id="unused", aws_secret_access_key="unused")
    args = {"RoleArn": "arn:aws:iam::000000000000:role/reader", "RoleSessionName": "test", "WebIdentityToken": token}
    if duration:
        args["DurationSeconds"] = duration
    return sts.assume_role_with_web_identity(**args)["Credentials"]


def test_boto3_web_identity_reads_the_restricted_collection(gw, op, tmp_path):
    """boto3's own web-identity provider: a token file and a role ARN, nothing else."""
    token_file = tmp_path / "token"
    token_file.write_text(op.token())
    script = f"""
import boto3, hashlib
s3 = boto3.client("s3", endpoint_url="{gw.endpoint}")
body = s3.get_object(Bucket="restricted", Key="{CHUNK}")["Body"].read()
print(len(body), hashlib.sha256(body).hexdigest())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file), "AWS_ROLE_ARN": "arn:aws:iam::000000000000:role/reader",
            "AWS_ROLE_SESSION_NAME": "ci", "AWS_ENDPOINT_URL_STS": gw.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    import hashlib

    want = requests.get(f"{gw.endpoint}/restricted/{CHUNK}", headers={"Authorization": f"Bearer {op.token()}"},
                        timeout=30).content
    assert out.stdout.split() == [str(len(want)), hashlib.sha256(want).hexdigest()]


def test_s3fs_with_temporary_credentials_equals_the_original(gw, op):
    creds = assume(gw, op.token())
    so = {"key": creds["AccessKeyId"], "secret": creds["SecretAccessKey"], "token": creds["SessionToken"],
          "endpoint_url": gw.endpoint, "skip_instance_cache": True}
    ds = xr.open_zarr(f"s3://restricted/{DATASET}", storage_options=so)
    xr.testing.assert_identical(ds.load(), original())


def test_temporary_credentials_carry_the_groups_and_expire_with_the_token(gw, op):
    import boto3
    from botocore.exceptions import ClientError

    outsider = assume(gw, op.token("public-user"))
    s3 = boto3.client("s3", endpoint_url=gw.endpoint, region_name="us-east-1",
                      aws_access_key_id=outsider["AccessKeyId"], aws_secret_access_key=outsider["SecretAccessKey"],
                      aws_session_token=outsider["SessionToken"])
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="restricted", Key=CHUNK)
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    assert s3.get_object(Bucket="open-data", Key=CHUNK)["Body"].read()
    # A session never outlives its token (here 3 seconds).
    short = assume(gw, op.token(expires_in="3"), duration=3600)
    assert (short["Expiration"].timestamp() - time.time()) <= 4
    s3 = boto3.client("s3", endpoint_url=gw.endpoint, region_name="us-east-1",
                      aws_access_key_id=short["AccessKeyId"], aws_secret_access_key=short["SecretAccessKey"],
                      aws_session_token=short["SessionToken"])
    assert s3.get_object(Bucket="restricted", Key=CHUNK)["Body"].read()
    time.sleep(max(0.0, short["Expiration"].timestamp() - time.time()) + 0.5)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="restricted", Key=CHUNK)
    assert e.value.response["Error"]["Code"] == "ExpiredToken"


def test_forged_or_missing_session_tokens_are_refused(gw, op):
    import boto3
    from botocore.exceptions import ClientError

    creds = assume(gw, op.token("public-user"))
    other = assume(gw, op.token())
    cases = {
        "missing": None,
        "another session's": other["SessionToken"],
        "altered": creds["SessionToken"].replace(creds["SessionToken"][5], "A" if creds["SessionToken"][5] != "A" else "B", 1),
    }
    for what, token in cases.items():
        s3 = boto3.client("s3", endpoint_url=gw.endpoint, region_name="us-east-1",
                          aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                          aws_session_token=token)
        with pytest.raises(ClientError) as e:
            s3.get_object(Bucket="open-data", Key=CHUNK)
        assert e.value.response["Error"]["Code"] == "InvalidToken", what


def test_sts_refuses_bad_tokens_with_sts_errors(gw, op):
    from botocore.exceptions import ClientError

    for token, code in [("garbage", "InvalidIdentityToken"), (forged_tokens(op)["another key"], "InvalidIdentityToken")]:
        with pytest.raises(ClientError) as e:
            assume(gw, token)
        assert e.value.response["Error"]["Code"] == code
    # botocore checks DurationSeconds itself; curl does not
    form = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": "arn:aws:iam::0:role/r",
            "RoleSessionName": "s", "WebIdentityToken": op.token(), "DurationSeconds": "10"}
    r = requests.post(gw.endpoint + "/", data=form, timeout=30)
    assert r.status_code == 400 and ET.fromstring(r.content).find(".//{*}Code").text == "ValidationError", r.text
    r = requests.post(gw.endpoint + "/", data=dict(form, Action="AssumeRole"), timeout=30)
    assert r.status_code == 400 and ET.fromstring(r.content).find(".//{*}Code").text == "InvalidAction", r.text
    # a token in a URL would be logged: refused
    r = requests.get(gw.endpoint + "/", params=dict(form, DurationSeconds="3600"), timeout=30)
    assert r.status_code == 400 and ET.fromstring(r.content).find(".//{*}Code").text == "InvalidRequest", r.text

"""Differential S3 tests: the gateway and moto answer the same raw requests alike.

`moto_server` runs beside the gateway with a bucket of the same name holding a copy of every
object the gateway lists. Both get the same battery of raw HTTP requests (stdlib `http.client`,
so the headers are exactly ours), and their answers are compared: status, S3 error code, listing
semantics, Content-Range, Content-Length and body. ETags are compared only within each server.

moto 5.2.5 departs from AWS S3 or RFC 9110 in the cases below. There the gateway is held to the
AWS / RFC 9110 behaviour, written into the test, instead of to moto's:

- ListObjects (V1) with a delimiter ignores `marker` and `max-keys`: every CommonPrefix comes back
  in one untruncated page. AWS pages them and skips those not after the marker.
- ListObjects (V1) sends NextMarker as an opaque hash, also without a delimiter. AWS sends it only
  with a delimiter, as the page's last Key or CommonPrefix.
- ListObjects (V1) with `encoding-type=url` leaves CommonPrefixes and the echoed Prefix unencoded
  while echoing EncodingType=url; ListObjectsV2 leaves StartAfter unencoded. botocore decodes
  them with unquote_plus, so `a+b.nc/` reads back as `a b.nc/`.
- A continuation-token that is not one of its own, or a max-keys that is not an integer, is a
  500 HTML page, and a negative max-keys is taken. AWS answers 400 InvalidArgument.
- A 416 InvalidRange has no `Content-Range: bytes */N` (RFC 9110 §15.5.17).
- A Range with a unit other than bytes (`items=0-3`) is served as bytes. RFC 9110 §14.2: ignore it.
- `If-Match: *` fails and `If-None-Match: *` passes on an existing object, and ETag lists are not
  searched (RFC 9110 §13.1.1, §13.1.2).
- An invalid If-Modified-Since or If-Unmodified-Since date is a 500. RFC 9110 §13.1.3 and
  §13.1.4: ignore it.
- If-Unmodified-Since is evaluated although If-Match is present (AWS and RFC 9110 §13.2.2: 200),
  and If-Modified-Since although If-None-Match is present (RFC 9110 §13.2.2: 200).
- Objects are private to anonymous readers unless uploaded with ACL public-read, which is how
  this test uploads them.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import http.client
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from gateway import start_gateway
from test_s3_clients import BUCKET, CHUNK_KEY, make_data_tree

REPO = Path(__file__).resolve().parents[2]
MOTO_SERVER = Path(sys.executable).parent / "moto_server"
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MISSING_BUCKET = "no-such-bucket"
META_KEY = "x.nc/tas/.zarray"
WEIRD_KEYS = ["with space.nc/.zgroup", "pct%41.nc/.zattrs", "a+b.nc/.zgroup", "données/café.nc/.zgroup"]


# --------------------------------------------------------------------------
# Raw HTTP
# --------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str | None:
        """The S3 error code of an XML error body (None for any other body)."""
        try:
            root = ET.fromstring(self.body)
        except ET.ParseError:
            return None
        codes = [e.text for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Code"]
        return codes[0] if root.tag.rsplit("}", 1)[-1] == "Error" and codes else None


@dataclass
class Server:
    name: str
    endpoint: str

    def request(self, method: str, bucket: str, key: str | None = None, query: dict | None = None,
                headers: dict | None = None) -> Reply:
        path = "/" + urllib.parse.quote(bucket)
        if key is not None:
            path += "/" + urllib.parse.quote(key, safe="/~")
        if query:
            path += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
        return self.request_path(method, path, headers)

    def request_path(self, method: str, path: str, headers: dict | None = None) -> Reply:
        host, port = urllib.parse.urlsplit(self.endpoint).netloc.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def get(self, key: str, **headers) -> Reply:
        return self.request("GET", BUCKET, key, headers=headers)


# --------------------------------------------------------------------------
# Listings
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One ListObjects(V2) answer, decoded when EncodingType is url."""

    status: int
    code: str | None = None
    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    truncated: bool = False
    key_count: int | None = None
    has_token: bool = False
    # Compared by the tests that concern them, not by page equality:
    token: str | None = field(default=None, compare=False, repr=False)
    next_marker: str | None = field(default=None, compare=False)
    encoding: str | None = field(default=None, compare=False, repr=False)
    raw: tuple[str, ...] = field(default=(), compare=False, repr=False)
    echoes: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def entries(self) -> list[str]:
        return sorted(self.keys + self.prefixes)


def parse_page(reply: Reply) -> Page:
    if reply.status != 200:
        return Page(reply.status, reply.error_code())
    root = ET.fromstring(reply.body)

    def text(name: str) -> str | None:
        node = root.find(f"{NS}{name}")
        return None if node is None else node.text or ""

    encoding = text("EncodingType")
    decode = urllib.parse.unquote_plus if encoding == "url" else (lambda s: s)
    raw_keys = [e.text or "" for e in root.findall(f"{NS}Contents/{NS}Key")]
    raw_prefixes = [e.text or "" for e in root.findall(f"{NS}CommonPrefixes/{NS}Prefix")]
    count = text("KeyCount")
    echoes = {k: decode(v) for k in ("Prefix", "StartAfter", "Marker", "Delimiter")
              if (v := text(k)) not in (None, "")}
    next_marker = text("NextMarker")
    return Page(
        status=200,
        keys=tuple(map(decode, raw_keys)),
        prefixes=tuple(map(decode, raw_prefixes)),
        truncated=text("IsTruncated") == "true",
        key_count=None if count is None else int(count),
        has_token=text("NextContinuationToken") is not None,
        token=text("NextContinuationToken"),
        next_marker=None if next_marker is None else decode(next_marker),
        encoding=encoding,
        raw=tuple(raw_keys + raw_prefixes),
        echoes=echoes,
    )


def list_page(server: Server, version: int, bucket: str = BUCKET, **params) -> Page:
    query = {k.replace("_", "-"): v for k, v in params.items() if v is not None}
    if version == 2:
        query["list-type"] = "2"
    return parse_page(server.request("GET", bucket, query=query))


def walk(server: Server, version: int, max_keys: int, **params) -> list[Page]:
    """Every page of a listing, following this server's own tokens. V1 continues from the
    page's last entry, as botocore's paginator does when there is no usable NextMarker."""
    pages: list[Page] = []
    resume: dict = {}
    while len(pages) < 1000:
        page = list_page(server, version, max_keys=max_keys, **params, **resume)
        pages.append(page)
        if page.status != 200 or not page.truncated or max_keys == 0:
            return pages
        resume = {"continuation_token": page.token} if version == 2 else {"marker": page.entries[-1]}
    raise AssertionError(f"{server.name}: listing {params} did not end")


def aws_v1_pages(keys: list[str], max_keys: int, prefix: str = "", delimiter: str | None = None,
                 marker: str = "") -> list[Page]:
    """What AWS answers to a paginated ListObjects (V1), where moto does not page (see the top)."""
    entries: list[tuple[str, bool]] = []
    for key in sorted(keys):
        if not key.startswith(prefix) or key <= marker:
            continue
        rest = key[len(prefix):]
        if delimiter and delimiter in rest:
            common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
            if common > marker and (not entries or entries[-1] != (common, True)):
                entries.append((common, True))
        else:
            entries.append((key, False))
    if max_keys == 0:
        return [Page(200)]
    pages = []
    for start in range(0, max(len(entries), 1), max_keys):
        chunk = entries[start:start + max_keys]
        truncated = start + max_keys < len(entries)
        pages.append(Page(200, keys=tuple(n for n, p in chunk if not p), prefixes=tuple(n for n, p in chunk if p),
                          truncated=truncated, next_marker=chunk[-1][0] if truncated and delimiter else None))
    return pages


def dir_prefixes(keys: list[str]) -> list[str]:
    """Every level of the key tree: "" and each key's ancestors ending in "/"."""
    found = {""}
    for key in keys:
        found |= {key[: i + 1] for i, c in enumerate(key) if c == "/"}
    return sorted(found)


# --------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3diff")
    gw = start_gateway(make_data_tree(root / "data"), BUCKET, root / "catalog")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def moto_proc():
    port = free_port()
    proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server("moto", f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while True:
        try:
            server.request("GET", "")
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
    yield server
    proc.terminate()
    proc.wait(timeout=20)


@dataclass
class Objects:
    """What the gateway serves, as its listing and GETs gave it."""

    keys: list[str]
    bodies: dict[str, bytes]
    list_etags: dict[str, str]
    get_etags: dict[str, str]


@pytest.fixture(scope="module")
def objects(gateway) -> Objects:
    s3 = gateway.boto3()
    listed = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
              for o in page.get("Contents", [])]
    bodies, get_etags = {}, {}
    for o in listed:
        resp = s3.get_object(Bucket=BUCKET, Key=o["Key"])
        bodies[o["Key"]], get_etags[o["Key"]] = resp["Body"].read(), resp["ETag"]
    return Objects([o["Key"] for o in listed], bodies, {o["Key"]: o["ETag"] for o in listed}, get_etags)


@pytest.fixture(scope="module")
def servers(gateway, moto_proc, objects) -> tuple[Server, Server]:
    s3 = boto3.client("s3", endpoint_url=moto_proc.endpoint, region_name="us-east-1", aws_access_key_id="test",
                      aws_secret_access_key="test", config=Config(s3={"addressing_style": "path"}))
    s3.create_bucket(Bucket=BUCKET)
    for key, body in objects.bodies.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body, ACL="public-read")
    return Server("gateway", gateway.endpoint), moto_proc


def short(value) -> str:
    """A repr that keeps mismatch reports readable: long bodies are cut."""
    if isinstance(value, bytes) and len(value) > 60:
        return f"<{len(value)} bytes {value[:40]!r}...>"
    if isinstance(value, tuple):
        return "(" + ", ".join(map(short, value)) + ")"
    return repr(value)


class Mismatches(list):
    def check(self, what, got, want) -> None:
        if got != want:
            self.append(f"{what}:\n    gateway:  {short(got)}\n    expected: {short(want)}")

    def assert_none(self) -> None:
        assert not self, f"{len(self)} mismatch(es):\n" + "\n".join(self[:25])


# --------------------------------------------------------------------------
# Listings
# --------------------------------------------------------------------------


def test_the_copy_holds_what_the_gateway_serves(servers, objects):
    gw, moto = servers
    assert len(objects.keys) > 60 and objects.keys == sorted(objects.keys)
    assert list(list_page(moto, 2).keys) == list(list_page(gw, 2).keys) == objects.keys


def test_etags_are_quoted_and_agree_between_list_head_and_get(servers, objects):
    gw, _ = servers
    bad = Mismatches()
    for key in objects.keys:
        head = gw.request("HEAD", BUCKET, key)
        etag = objects.list_etags[key]
        bad.check(f"quoted ETag of {key!r}", etag[:1] + etag[-1:], '""')
        bad.check(f"GET ETag of {key!r}", objects.get_etags[key], etag)
        bad.check(f"HEAD of {key!r}", (head.status, head.headers.get("etag")), (200, etag))
        bad.check(f"HEAD length of {key!r}", head.headers.get("content-length"), str(len(objects.bodies[key])))
    bad.assert_none()


@pytest.mark.parametrize("version", [1, 2])
def test_delimiter_at_every_level_lists_alike(servers, objects, version):
    gw, moto = servers
    partial = ["x", "x.nc", "sub/d", "donn", "données/caf", "pct%", "a+", "with ", "nope", "x.nc/tas/1",
               "sub/dir/classic.nc/t"]
    bad = Mismatches()
    for prefix in dir_prefixes(objects.keys) + partial:
        # Zarr clients use "/", but S3 allows any delimiter.
        for delimiter in ("/", None, ".", "nc/"):
            params = {"prefix": prefix or None, "delimiter": delimiter}
            bad.check(f"V{version} {params}", list_page(gw, version, **params), list_page(moto, version, **params))
    # An empty delimiter means none.
    bad.check(f"V{version} delimiter=''", list_page(gw, version, delimiter=""), list_page(moto, version))
    bad.assert_none()


PAGED = [{}, {"delimiter": "/"}, {"prefix": "x.nc/"}, {"prefix": "sub/dir/classic.nc/", "delimiter": "/"},
         {"prefix": "données/", "delimiter": "/"}]


@pytest.mark.parametrize("max_keys", [0, 1, 2, 3])
def test_v2_pages_follow_tokens_alike(servers, objects, max_keys):
    gw, moto = servers
    bad = Mismatches()
    for params in PAGED + [{"start_after": objects.keys[20]}, {"start_after": "sub/", "delimiter": "/"}]:
        got, want = walk(gw, 2, max_keys, **params), walk(moto, 2, max_keys, **params)
        bad.check(f"V2 max-keys={max_keys} {params} pages", got, want)
        if max_keys:
            bad.check(f"V2 max-keys={max_keys} {params} concatenated",
                      [e for p in got for e in p.entries], list_page(moto, 2, **params).entries)
    bad.assert_none()


@pytest.mark.parametrize("max_keys", [0, 1, 2, 3])
def test_v1_pages_follow_markers_like_aws(servers, objects, max_keys):
    gw, moto = servers
    bad = Mismatches()
    for params in PAGED:
        got = walk(gw, 1, max_keys, **params)
        if "delimiter" in params:
            bad.check(f"V1 max-keys={max_keys} {params} pages", got, aws_v1_pages(objects.keys, max_keys, **params))
        else:
            bad.check(f"V1 max-keys={max_keys} {params} pages", got, walk(moto, 1, max_keys, **params))
        for i, page in enumerate(got):
            next_marker = page.entries[-1] if page.truncated and "delimiter" in params else None
            # Without a delimiter AWS sends no NextMarker; one naming the last key is harmless.
            if page.next_marker is not None or next_marker is not None:
                bad.check(f"V1 max-keys={max_keys} {params} page {i} NextMarker", page.next_marker,
                          next_marker or (page.entries[-1] if page.truncated else None))
        if max_keys:
            bad.check(f"V1 max-keys={max_keys} {params} concatenated",
                      [e for p in got for e in p.entries], list_page(moto, 1, **params).entries)
    bad.assert_none()


@pytest.mark.parametrize("max_keys", [1, 2, 3])
def test_aws_v1_model_pages_like_moto_v2(servers, objects, max_keys):
    """The oracle for V1 with a delimiter pages as moto's V2 does, where moto is right."""
    _, moto = servers
    strip = lambda pages: [(p.keys, p.prefixes, p.truncated) for p in pages]  # noqa: E731
    for params in PAGED + [{"delimiter": "/", "start_after": a} for a in ("b", "sub/", "x.nc/")]:
        model = {k.replace("start_after", "marker"): v for k, v in params.items()}
        assert strip(aws_v1_pages(objects.keys, max_keys, **model)) == strip(walk(moto, 2, max_keys, **params)), params


def test_start_after_and_marker_list_alike(servers, objects):
    gw, moto = servers
    keys = objects.keys
    bad = Mismatches()
    for after in ["", "a", keys[7], keys[7] + "0", "x.nc/tas/1", keys[-1], "~"]:
        bad.check(f"V2 start-after={after!r}", list_page(gw, 2, start_after=after), list_page(moto, 2, start_after=after))
        bad.check(f"V1 marker={after!r}", list_page(gw, 1, marker=after), list_page(moto, 1, marker=after))
    # With a delimiter, only after a key or a whole common prefix: where AWS resumes inside a
    # rolled-up prefix is not documented.
    for after, prefix in [("b", ""), ("sub/", ""), ("données/", ""), ("x.nc/", ""), ("x.nc/tas/", "x.nc/"),
                          ("x.nc/.zmetadata", "x.nc/")]:
        params = {"prefix": prefix or None, "delimiter": "/"}
        bad.check(f"V2 start-after={after!r} {params}", list_page(gw, 2, start_after=after, **params),
                  list_page(moto, 2, start_after=after, **params))
        want = aws_v1_pages(keys, 1000, prefix, "/", after)[0]
        bad.check(f"V1 marker={after!r} {params}", list_page(gw, 1, marker=after, **params), want)
    bad.assert_none()


ENCODED = [{}, {"delimiter": "/"}, {"prefix": "with space.nc/", "delimiter": "/"}, {"prefix": "pct%41.nc/"},
           {"prefix": "données/", "delimiter": "/"}, {"prefix": "a+b.nc/", "delimiter": "/"}, {"prefix": "a+"}]


ECHOED = {"prefix": "Prefix", "start_after": "StartAfter", "marker": "Marker", "delimiter": "Delimiter"}


def expected_page(moto: Server, objects: Objects, version: int, **params) -> Page:
    """moto's answer, or AWS's where moto ignores a V1 marker beside a delimiter (see the top)."""
    if version == 1 and params.get("delimiter") and params.get("marker"):
        return aws_v1_pages(objects.keys, 1000, params.get("prefix", ""), params["delimiter"], params["marker"])[0]
    return list_page(moto, version, **params)


@pytest.mark.parametrize("version", [1, 2])
def test_encoding_type_url_really_encodes(servers, objects, version):
    gw, moto = servers
    after = "start_after" if version == 2 else "marker"
    bad = Mismatches()
    for params in ENCODED + [{after: "a+b.nc/.zattrs"}, {after: "pct%41.nc/", "delimiter": "/"}]:
        page = list_page(gw, version, encoding_type="url", **params)
        what = f"V{version} encoding-type=url {params}"
        bad.check(f"{what}: decoded listing", page, expected_page(moto, objects, version, **params))
        bad.check(f"{what}: EncodingType", page.encoding, "url")
        for raw in page.raw:
            if not raw.isascii() or " " in raw or urllib.parse.unquote_plus(raw).count("/") != raw.count("/"):
                bad.append(f"{what}: {raw!r} is not URL-encoded with '/' left alone")
        # An echoed parameter is decoded by botocore too; AWS echoes them all, moto some.
        bad.check(f"{what}: echoed parameters", page.echoes,
                  {ECHOED[k]: v for k, v in params.items() if ECHOED[k] in page.echoes})
    bad.assert_none()


@pytest.mark.parametrize("version", [1, 2])
def test_bad_list_arguments_are_invalid_argument(servers, version):
    gw, _ = servers
    bad = Mismatches()
    # AWS: "Argument max-keys must be an integer between 0 and 2147483647".
    cases = [{"max_keys": v} for v in ("abc", "1.5", "-1", "99999999999999999999")]
    if version == 2:
        cases += [{"continuation_token": t} for t in ("garbage", "AAAA", "!!", "eyJrIjoiYSJ9")]
    for params in cases:
        page = list_page(gw, version, **params)
        bad.check(f"V{version} {params}", (page.status, page.code), (400, "InvalidArgument"))
    bad.assert_none()


# --------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------


def range_headers(n: int) -> list[str]:
    return ["bytes=0-0", "bytes=0-9", "bytes=3-7", "bytes=1-", f"bytes={n - 1}-", f"bytes={n - 1}-{n - 1}",
            "bytes=-1", "bytes=-10", f"bytes=-{n}", f"bytes=-{n + 100}", f"bytes=0-{n + 100}", f"bytes={n}-",
            f"bytes={n + 10}-{n + 20}", "bytes=-0", "bytes=abc", "bytes=0-1,3-4", "bytes=5-2", "bytes=-", "",
            "bytes=00003-00007"]


def object_view(reply: Reply, method: str) -> tuple:
    ok = reply.status < 300
    return (reply.status, reply.error_code() if method == "GET" else None,
            reply.headers.get("content-range") if reply.status != 416 else None,
            reply.headers.get("content-length") if ok else None, reply.body if ok else None)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_ranges_answer_alike(servers, objects, method):
    gw, moto = servers
    bad = Mismatches()
    for key in [CHUNK_KEY, META_KEY, "données/café.nc/quality/.zarray"]:
        n = len(objects.bodies[key])
        assert n > 20, key
        for header in range_headers(n):
            got = gw.request(method, BUCKET, key, headers={"Range": header})
            want = moto.request(method, BUCKET, key, headers={"Range": header})
            bad.check(f"{method} {key} Range: {header!r}", object_view(got, method), object_view(want, method))
            if want.status == 416:  # moto sends no Content-Range here (see the top)
                bad.check(f"{method} {key} Range: {header!r} Content-Range", got.headers.get("content-range"),
                          f"bytes */{n}")
        # A unit other than bytes is ignored (moto serves it as bytes; see the top).
        got = gw.request(method, BUCKET, key, headers={"Range": "items=0-3"})
        bad.check(f"{method} {key} Range: items=0-3", object_view(got, method),
                  (200, None, None, str(n), objects.bodies[key] if method == "GET" else b""))
    bad.assert_none()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_range_positions_past_u64_are_still_ranges(servers, objects, method):
    """RFC 9110 §14.1.1 puts no bound on the digits: a huge last-pos or suffix still covers the
    whole object (206) and a huge first-pos is unsatisfiable (416)."""
    gw, moto = servers
    n, huge = len(objects.bodies[CHUNK_KEY]), 10**30
    bad = Mismatches()
    for header in (f"bytes=0-{huge}", f"bytes=-{huge}", f"bytes={huge}-"):
        got = gw.request(method, BUCKET, CHUNK_KEY, headers={"Range": header})
        want = moto.request(method, BUCKET, CHUNK_KEY, headers={"Range": header})
        bad.check(f"{method} {CHUNK_KEY} Range: {header!r}", object_view(got, method), object_view(want, method))
        if want.status == 416:
            bad.check(f"{method} {CHUNK_KEY} Range: {header!r} Content-Range", got.headers.get("content-range"),
                      f"bytes */{n}")
    bad.assert_none()


def http_date(when: dt.datetime) -> str:
    return email.utils.format_datetime(when.astimezone(dt.timezone.utc), usegmt=True)


def conditional_cases(etag: str, modified: str, size: int) -> list[tuple[dict, int | None]]:
    """(headers, RFC 9110 status where moto departs from it, else None: compare with moto)."""
    when = email.utils.parsedate_to_datetime(modified)
    earlier, later = http_date(when - dt.timedelta(days=1)), http_date(when + dt.timedelta(days=1))
    return [
        ({"If-Match": etag}, None),
        ({"If-Match": '"not-the-etag"'}, None),
        ({"If-Match": "*"}, 200),
        ({"If-Match": f'"not-the-etag", {etag}'}, 200),
        ({"If-None-Match": etag}, None),
        ({"If-None-Match": '"not-the-etag"'}, None),
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": f'"not-the-etag", {etag}'}, 304),
        ({"If-Modified-Since": modified}, None),
        ({"If-Modified-Since": earlier}, None),
        ({"If-Modified-Since": later}, None),
        ({"If-Modified-Since": "not a date"}, 200),
        ({"If-Unmodified-Since": modified}, None),
        ({"If-Unmodified-Since": earlier}, None),
        ({"If-Unmodified-Since": later}, None),
        ({"If-Unmodified-Since": "not a date"}, 200),
        ({"If-Match": etag, "If-Unmodified-Since": earlier}, 200),
        ({"If-Match": '"not-the-etag"', "If-Unmodified-Since": modified}, None),
        ({"If-None-Match": etag, "If-Modified-Since": earlier}, None),
        ({"If-None-Match": '"not-the-etag"', "If-Modified-Since": modified}, 200),
        ({"If-Match": '"not-the-etag"', "Range": f"bytes={size}-"}, None),
        ({"If-None-Match": etag, "Range": "bytes=0-1"}, None),
        ({"If-Match": etag, "Range": "bytes=0-1"}, None),
    ]


def conditional_view(reply: Reply, method: str) -> tuple:
    return (reply.status, reply.error_code() if method == "GET" and reply.status >= 400 else None,
            reply.headers.get("content-range"), reply.body if reply.status < 300 else None)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("key", [CHUNK_KEY, WEIRD_KEYS[1]])
def test_conditionals_follow_rfc_9110(servers, objects, method, key):
    gw, moto = servers
    body = objects.bodies[key] if method == "GET" else b""
    cases = {}
    for server in servers:
        head = server.request("HEAD", BUCKET, key)
        cases[server.name] = conditional_cases(head.headers["etag"], head.headers["last-modified"], len(objects.bodies[key]))
    etag = objects.list_etags[key]
    bad = Mismatches()
    for (headers, rfc), (moto_headers, _) in zip(cases["gateway"], cases["moto"]):
        got = gw.request(method, BUCKET, key, headers=headers)
        what = f"{method} {key} {headers}"
        if rfc is None:
            want = moto.request(method, BUCKET, key, headers=moto_headers)
            bad.check(what, conditional_view(got, method), conditional_view(want, method))
        else:
            bad.check(what, (got.status, got.body), (rfc, body if rfc == 200 else b""))
        if got.status == 304:
            bad.check(f"{what}: 304 ETag and body", (got.headers.get("etag"), got.body), (etag, b""))
    bad.assert_none()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_missing_keys_and_buckets_answer_alike(servers, method):
    gw, moto = servers
    bad = Mismatches()
    targets = [(BUCKET, k) for k in ["x.nc/nope", "nope.nc/.zgroup", "x.nc/tas", "x.nc/tas/", "x.nc", "x.nc/",
                                     "sub/dir", "sub/dir/classic.nc", "x.nc/tas/99.0.0", "X.NC/.zgroup"]]
    targets += [(MISSING_BUCKET, CHUNK_KEY), (MISSING_BUCKET, None), (BUCKET, None)]
    for bucket, key in targets:
        got, want = gw.request(method, bucket, key), moto.request(method, bucket, key)
        view = lambda r: (r.status, r.error_code() if method == "GET" else None)  # noqa: E731
        bad.check(f"{method} /{bucket}/{key or ''}", view(got), view(want))
    for version in (1, 2):
        bad.check(f"V{version} list of a missing bucket", list_page(gw, version, bucket=MISSING_BUCKET),
                  list_page(moto, version, bucket=MISSING_BUCKET))
    bad.assert_none()


@pytest.mark.parametrize("key", WEIRD_KEYS)
def test_keys_needing_encoding_read_alike(servers, objects, key):
    gw, moto = servers
    got, want = gw.get(key), moto.get(key)
    assert (got.status, got.body) == (want.status, want.body) == (200, objects.bodies[key])


@pytest.mark.parametrize("key", WEIRD_KEYS + [CHUNK_KEY])
def test_other_spellings_of_a_key_read_alike(servers, objects, key):
    """Every byte escaped (`/` as %2F too) or in lowercase hex names the same key."""
    gw, moto = servers
    bad = Mismatches()
    lower_hex = re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), urllib.parse.quote(key, safe="/"))
    for path in (urllib.parse.quote(key, safe=""), lower_hex):
        got, want = gw.request_path("GET", f"/{BUCKET}/{path}"), moto.request_path("GET", f"/{BUCKET}/{path}")
        bad.check(f"GET /{BUCKET}/{path}", (got.status, got.body), (want.status, want.body))
    bad.assert_none()


def test_headers_current_clients_send_are_tolerated(servers, objects):
    gw, moto = servers
    headers = {"x-amz-checksum-mode": "ENABLED", "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
               "x-amz-date": "20260101T000000Z", "amz-sdk-invocation-id": "0", "amz-sdk-request": "attempt=1"}
    got, want = gw.get(CHUNK_KEY, **headers), moto.get(CHUNK_KEY, **headers)
    assert (got.status, got.body) == (want.status, want.body) == (200, objects.bodies[CHUNK_KEY])


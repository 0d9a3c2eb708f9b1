"""Real S3 clients against a real `zarrgate serve`: boto3, the aws cli, curl and zarr-python.

Each client is used as its users use it, over a data tree whose names need encoding (a space,
`%`, `+`, non-ASCII) and nest (`sub/dir/`). What the clients read is checked against boto3's
own reads and, for zarr, against `xr.open_dataset(original)`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from botocore.exceptions import ClientError

from gateway import start_gateway

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "data" / "good"
# The venv running the tests (CI keeps it outside the checkout).
VENV_BIN = Path(sys.executable).parent
CURL = shutil.which("curl") or "/usr/bin/curl"
BUCKET = "zgtest"

# dataset id (path under the data directory) -> fixture file it is a copy of
DATA_TREE = {
    "x.nc": "nc4_classic.nc",
    "with space.nc": "single_recvar_short.nc",
    "pct%41.nc": "single_recvar_byte.nc",
    "a+b.nc": "single_recvar_short.nc",
    "données/café.nc": "single_recvar_byte.nc",
    "sub/dir/classic.nc": "classic.nc",
}
CHUNK_KEY = "x.nc/tas/1.0.0"  # nc4_classic.nc: tas (5, 6, 12) in chunks of (1, 6, 12)
WRITE_REFUSALS = {"MethodNotAllowed", "AccessDenied"}
# Source files are dated well in the past, so "a day after Last-Modified" is not in the future.
SOURCE_MTIME = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc).timestamp()


def make_data_tree(root: Path) -> Path:
    for dataset, fixture in DATA_TREE.items():
        dst = root / dataset
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / fixture, dst)
        os.utime(dst, (SOURCE_MTIME, SOURCE_MTIME))
    return root


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3clients")
    gateway = start_gateway(make_data_tree(root / "data"), BUCKET, root / "catalog")
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def s3(gw):
    return gw.boto3()


@pytest.fixture(scope="module")
def listing(s3) -> dict[str, dict]:
    """Every object, by key, as one unpaginated ListObjectsV2 gives it."""
    page = s3.list_objects_v2(Bucket=BUCKET, MaxKeys=1000)
    assert not page["IsTruncated"], "the test tree must fit one page"
    return {o["Key"]: o for o in page["Contents"]}


def get_bytes(s3, key: str, **kw) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key, **kw)["Body"].read()


def client_error(call, *args, **kw) -> ClientError:
    with pytest.raises(ClientError) as info:
        call(*args, **kw)
    return info.value


def error_code_status(err: ClientError) -> tuple[str, int]:
    return err.response["Error"]["Code"], err.response["ResponseMetadata"]["HTTPStatusCode"]


def dataset_vars(dataset: str) -> dict[str, xr.Variable]:
    with xr.open_dataset(FIXTURES / DATA_TREE[dataset], decode_cf=False) as ds:
        return {k: v.load() for k, v in ds.variables.items()}


# --------------------------------------------------------------------------
# boto3: buckets and listings
# --------------------------------------------------------------------------


def test_list_buckets_names_the_served_bucket(s3):
    assert BUCKET in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_head_bucket_and_location(s3):
    assert s3.head_bucket(Bucket=BUCKET)["ResponseMetadata"]["HTTPStatusCode"] == 200
    # AWS answers an empty LocationConstraint for us-east-1; naming the region is also accepted.
    assert s3.get_bucket_location(Bucket=BUCKET).get("LocationConstraint") in (None, "", "us-east-1")


def test_root_delimiter_lists_top_level_names(s3):
    page = s3.list_objects_v2(Bucket=BUCKET, Delimiter="/")
    prefixes = {p["Prefix"] for p in page["CommonPrefixes"]}
    assert prefixes == {d.split("/")[0] + "/" for d in DATA_TREE}
    assert "Contents" not in page and page["KeyCount"] == len(prefixes)


@pytest.mark.parametrize("dataset", sorted(DATA_TREE))
def test_each_dataset_lists_its_groups_and_variables(s3, dataset):
    page = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{dataset}/", Delimiter="/")
    keys = {o["Key"] for o in page.get("Contents", [])}
    assert {f"{dataset}/.zmetadata", f"{dataset}/.zgroup"} <= keys
    prefixes = {p["Prefix"] for p in page.get("CommonPrefixes", [])}
    assert prefixes == {f"{dataset}/{v}/" for v in dataset_vars(dataset)}


def test_nested_prefixes_roll_up_one_level_at_a_time(s3):
    sub = s3.list_objects_v2(Bucket=BUCKET, Prefix="sub/", Delimiter="/")
    assert [p["Prefix"] for p in sub["CommonPrefixes"]] == ["sub/dir/"] and "Contents" not in sub
    deeper = s3.list_objects_v2(Bucket=BUCKET, Prefix="sub/dir/", Delimiter="/")
    assert [p["Prefix"] for p in deeper["CommonPrefixes"]] == ["sub/dir/classic.nc/"]


def test_prefix_without_delimiter_lists_whole_subtree(s3, listing):
    page = s3.list_objects_v2(Bucket=BUCKET, Prefix="données/")
    assert [o["Key"] for o in page["Contents"]] == sorted(k for k in listing if k.startswith("données/"))
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="nope/")["KeyCount"] == 0


def test_paginator_pages_concatenate_to_the_full_listing(s3, listing):
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, PaginationConfig={"PageSize": 7})
    sizes, keys = [], []
    for page in pages:
        sizes.append(page["KeyCount"])
        keys += [o["Key"] for o in page.get("Contents", [])]
    assert keys == list(listing) and max(sizes) == 7 and len(sizes) == -(-len(listing) // 7)


def test_manual_continuation_tokens_walk_every_key_once(s3, listing):
    keys, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=BUCKET, MaxKeys=5, **kw)
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            assert "NextContinuationToken" not in page
            break
        token = page["NextContinuationToken"]
    assert keys == list(listing)


def test_v1_paginator_with_delimiter_pages_common_prefixes(s3):
    pages = s3.get_paginator("list_objects").paginate(
        Bucket=BUCKET, Delimiter="/", PaginationConfig={"PageSize": 2})
    prefixes = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
    assert prefixes == sorted({d.split("/")[0] + "/" for d in DATA_TREE})


def test_start_after_skips_keys_up_to_it(s3, listing):
    keys = list(listing)
    page = s3.list_objects_v2(Bucket=BUCKET, StartAfter=keys[10])
    assert [o["Key"] for o in page["Contents"]] == keys[11:]


# --------------------------------------------------------------------------
# boto3: objects
# --------------------------------------------------------------------------

SAMPLE_KEYS = ["x.nc/.zmetadata", CHUNK_KEY, "with space.nc/.zgroup", "pct%41.nc/.zattrs",
               "a+b.nc/quality/.zarray", "données/café.nc/.zgroup", "sub/dir/classic.nc/tas/.zarray"]


@pytest.mark.parametrize("key", SAMPLE_KEYS)
def test_etag_and_size_agree_across_list_head_and_get(s3, listing, key):
    head = s3.head_object(Bucket=BUCKET, Key=key)
    get = s3.get_object(Bucket=BUCKET, Key=key)
    body = get["Body"].read()
    etag = listing[key]["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2
    assert head["ETag"] == get["ETag"] == etag
    assert head["ContentLength"] == get["ContentLength"] == listing[key]["Size"] == len(body)


def test_consolidated_metadata_is_json_naming_every_array(s3):
    doc = json.loads(get_bytes(s3, "x.nc/.zmetadata"))
    arrays = {k.rsplit("/", 1)[0] for k in doc["metadata"] if k.endswith("/.zarray")}
    assert arrays == set(dataset_vars("x.nc"))


def range_cases(n: int) -> list[tuple[str, slice, str]]:
    """(Range header, slice of the body, expected Content-Range) for an n-byte object."""
    return [
        ("bytes=0-9", slice(0, 10), f"bytes 0-9/{n}"),
        ("bytes=3-3", slice(3, 4), f"bytes 3-3/{n}"),
        ("bytes=5-", slice(5, None), f"bytes 5-{n - 1}/{n}"),
        (f"bytes={n - 1}-", slice(n - 1, None), f"bytes {n - 1}-{n - 1}/{n}"),
        ("bytes=-7", slice(n - 7, None), f"bytes {n - 7}-{n - 1}/{n}"),
        (f"bytes=-{n + 50}", slice(0, None), f"bytes 0-{n - 1}/{n}"),
        (f"bytes=0-{n + 50}", slice(0, None), f"bytes 0-{n - 1}/{n}"),
    ]


def test_get_object_honours_every_range_form(s3):
    whole = get_bytes(s3, CHUNK_KEY)
    assert len(whole) > 20
    for header, part, content_range in range_cases(len(whole)):
        resp = s3.get_object(Bucket=BUCKET, Key=CHUNK_KEY, Range=header)
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 206, header
        assert resp["ContentRange"] == content_range, header
        assert resp["Body"].read() == whole[part], header


def test_head_object_with_range_reports_the_range_length(s3):
    resp = s3.head_object(Bucket=BUCKET, Key=CHUNK_KEY, Range="bytes=2-11")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 206 and resp["ContentLength"] == 10


def test_unsatisfiable_range_is_invalid_range(s3, listing):
    n = listing[CHUNK_KEY]["Size"]
    for header in (f"bytes={n}-", f"bytes={n + 10}-{n + 20}"):
        err = client_error(s3.get_object, Bucket=BUCKET, Key=CHUNK_KEY, Range=header)
        assert error_code_status(err) == ("InvalidRange", 416), header
        assert err.response["ResponseMetadata"]["HTTPHeaders"]["content-range"] == f"bytes */{n}"


@pytest.mark.parametrize("header", ["bytes=abc", "bytes=0-1,3-4", "bytes=5-2"])
def test_malformed_or_multi_range_is_ignored(s3, header):
    resp = s3.get_object(Bucket=BUCKET, Key=CHUNK_KEY, Range=header)
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200 and "ContentRange" not in resp
    assert resp["Body"].read() == get_bytes(s3, CHUNK_KEY)


def test_conditional_gets_follow_rfc_9110(s3):
    head = s3.head_object(Bucket=BUCKET, Key=CHUNK_KEY)
    etag, modified = head["ETag"], head["LastModified"]
    earlier, later = modified - dt.timedelta(days=1), modified + dt.timedelta(days=1)
    get = lambda **kw: s3.get_object(Bucket=BUCKET, Key=CHUNK_KEY, **kw)  # noqa: E731
    assert get(IfMatch=etag)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert get(IfMatch="*")["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert get(IfNoneMatch='"not-the-etag"')["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert get(IfModifiedSince=earlier)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert get(IfUnmodifiedSince=modified)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert get(IfUnmodifiedSince=later)["ResponseMetadata"]["HTTPStatusCode"] == 200
    for kw in ({"IfNoneMatch": etag}, {"IfNoneMatch": "*"}, {"IfModifiedSince": modified},
               {"IfModifiedSince": later}):
        err = client_error(get, **kw)
        assert error_code_status(err) == ("304", 304), kw
        assert err.response["ResponseMetadata"]["HTTPHeaders"]["etag"] == etag, kw
    for kw in ({"IfMatch": '"not-the-etag"'}, {"IfUnmodifiedSince": earlier}):
        assert error_code_status(client_error(get, **kw)) == ("PreconditionFailed", 412), kw


@pytest.mark.parametrize("key", ["x.nc/tas", "x.nc/nope", "nope.nc/.zgroup", "x.nc", "x.nc/", "sub/dir"])
def test_missing_and_prefix_only_keys_are_no_such_key(s3, key):
    assert error_code_status(client_error(s3.get_object, Bucket=BUCKET, Key=key)) == ("NoSuchKey", 404)
    assert error_code_status(client_error(s3.head_object, Bucket=BUCKET, Key=key))[1] == 404


def test_unknown_bucket_is_no_such_bucket(s3):
    for call, kw in ((s3.get_object, {"Key": CHUNK_KEY}), (s3.list_objects_v2, {}), (s3.list_objects, {})):
        err = client_error(call, Bucket="no-such-bucket", **kw)
        assert error_code_status(err) == ("NoSuchBucket", 404), call
    assert error_code_status(client_error(s3.head_bucket, Bucket="no-such-bucket"))[1] == 404


def test_writes_are_refused_and_change_nothing(s3, listing):
    before = get_bytes(s3, CHUNK_KEY)
    for call, kw in ((s3.put_object, {"Key": "x.nc/new", "Body": b"new"}),
                     (s3.put_object, {"Key": CHUNK_KEY, "Body": b"overwritten"}),
                     (s3.delete_object, {"Key": CHUNK_KEY})):
        code, status = error_code_status(client_error(call, Bucket=BUCKET, **kw))
        assert code in WRITE_REFUSALS and 400 <= status < 500, (call, kw, code, status)
    assert get_bytes(s3, CHUNK_KEY) == before
    assert error_code_status(client_error(s3.head_object, Bucket=BUCKET, Key="x.nc/new"))[1] == 404
    assert {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, MaxKeys=1000)["Contents"]} == set(listing)


def test_signed_client_reads_what_anonymous_reads(gw, s3):
    signed = gw.boto3(signed=True)
    assert get_bytes(signed, CHUNK_KEY) == get_bytes(s3, CHUNK_KEY)
    assert [b["Name"] for b in signed.list_buckets()["Buckets"]] == [b["Name"] for b in s3.list_buckets()["Buckets"]]


# --------------------------------------------------------------------------
# aws cli
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aws(gw, tmp_path_factory):
    home = tmp_path_factory.mktemp("awscli")
    config = home / "config"
    config.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "AWS_CONFIG_FILE": str(config),
           "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"), "PYTHONIOENCODING": "utf-8",
           "LC_ALL": "C.UTF-8"}

    def run(*args: str) -> str:
        cmd = [str(VENV_BIN / "aws"), "--endpoint-url", gw.endpoint, "--no-sign-request", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                              stdin=subprocess.DEVNULL, encoding="utf-8")
        assert proc.returncode == 0, (cmd, proc.stderr)
        return proc.stdout

    return run


def test_aws_cli_recursive_ls_lists_every_key(aws, listing):
    out = aws("s3", "ls", "--recursive", f"s3://{BUCKET}/")
    rows = [line.split(maxsplit=3) for line in out.splitlines() if line.strip()]
    assert {key: int(size) for _, _, size, key in rows} == {k: o["Size"] for k, o in listing.items()}


def test_aws_cli_ls_of_a_prefix_shows_its_subfolders(aws):
    out = aws("s3", "ls", f"s3://{BUCKET}/sub/dir/")
    assert out.split() == ["PRE", "classic.nc/"]


@pytest.mark.parametrize("key", [CHUNK_KEY, "with space.nc/.zgroup", "pct%41.nc/.zattrs",
                                 "a+b.nc/quality/.zarray", "données/café.nc/.zmetadata"])
def test_aws_cli_cp_copies_the_bytes_boto3_reads(aws, s3, tmp_path, key):
    dst = tmp_path / "copy"
    aws("s3", "cp", f"s3://{BUCKET}/{key}", str(dst))
    assert dst.read_bytes() == get_bytes(s3, key)


# --------------------------------------------------------------------------
# curl
# --------------------------------------------------------------------------


def curl(gw, key: str, *args: str) -> tuple[int, bytes]:
    url = f"{gw.endpoint}/{BUCKET}/{urllib.parse.quote(key, safe='/')}"
    proc = subprocess.run([CURL, "-sS", "-o", "-", "-w", "\n%{http_code}", *args, url],
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    body, _, status = proc.stdout.rpartition(b"\n")
    return int(status), body


@pytest.mark.parametrize("key", [CHUNK_KEY, "données/café.nc/.zgroup", "pct%41.nc/.zattrs"])
def test_curl_anonymous_get(gw, s3, key):
    assert curl(gw, key) == (200, get_bytes(s3, key))


def test_curl_sigv4_get(gw, s3):
    key, secret = gw.key()
    status, body = curl(gw, CHUNK_KEY, "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{key}:{secret}")
    assert (status, body) == (200, get_bytes(s3, CHUNK_KEY))


def test_curl_range_and_missing_key(gw, s3):
    assert curl(gw, CHUNK_KEY, "-r", "4-13") == (206, get_bytes(s3, CHUNK_KEY)[4:14])
    status, body = curl(gw, "x.nc/tas/99.0.0")
    assert status == 404 and b"<Code>NoSuchKey</Code>" in body


# --------------------------------------------------------------------------
# zarr-python 3
# --------------------------------------------------------------------------


def open_zarr_group(gw, dataset: str):
    import zarr
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url(f"s3://{BUCKET}/{dataset}", read_only=True,
                                 storage_options={"anon": True, "endpoint_url": gw.endpoint})
    return zarr.open_group(store=store, mode="r", zarr_format=2)


@pytest.mark.parametrize("dataset", ["x.nc", "sub/dir/classic.nc", "with space.nc", "données/café.nc"])
def test_zarr_reads_what_netcdf_holds(gw, dataset):
    group = open_zarr_group(gw, dataset)
    expected = dataset_vars(dataset)
    assert sorted(group.array_keys()) == sorted(expected)
    numeric = [name for name, var in expected.items() if var.dtype.kind in "iuf"]
    assert numeric
    for name in numeric:
        got = group[name][...]
        assert got.shape == expected[name].shape, name
        np.testing.assert_array_equal(got, expected[name].values, err_msg=name)

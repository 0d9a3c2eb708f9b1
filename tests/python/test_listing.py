"""ListObjects conformance, one suite for every kind of bucket the gateway serves.

Every bucket lists through one seam (``gateway/src/store``): a collection of files, and the
``results`` bucket of the operations. Each is listed with boto3 (which asks for URL-encoded
keys and decodes them) in every combination of prefix (unicode, ``%``, ``+``, a space, none,
one that matches nothing), delimiter, ``max-keys`` (0, 1, 7, 1000, 1001) and ``start-after``,
paging with V2 continuation tokens and with V1 markers. The oracle is S3's rules applied in
Python to the bucket's full key list; that list itself must be the same however it is paged,
and every key must answer HEAD with the size the listing gave.
"""

from __future__ import annotations

import re

import netCDF4
import numpy as np
import pytest
import requests

from gateway import start_gateway

# Names S3 clients must round-trip: a space, a plus, a percent sign, non-ASCII, a subdirectory.
FILES = ["plain.nc", "a b.nc", "plus+sign.nc", "100%.nc", "ü/é.nc", "ü/z.nc"]
BIG = "big.nc"  # 1,200 chunks: listings past 1,000 keys


def write(path, n: int, chunk: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("x", n)
        x = ds.createVariable("x", "f8", ("x",))
        x[:] = np.arange(n)
        v = ds.createVariable("v", "f4", ("x",), chunksizes=(chunk,))
        v[:] = np.arange(n, dtype="f4")


@pytest.fixture(scope="module")
def buckets(tmp_path_factory):
    data = tmp_path_factory.mktemp("listing-data")
    for name in FILES:
        write(data / name, 12, 4)
    write(data / BIG, 1200, 1)
    tmp = tmp_path_factory.mktemp("listing-gw")
    gw = start_gateway(data, "lists", tmp / "catalog")
    resp = requests.get(f"{gw.endpoint}/ops/v1/subset", timeout=120,
                        params={"dataset": "lists/plain.nc", "var": "v", "format": "zarr"})
    assert resp.status_code == 200, resp.text[:500]
    result = re.search(r"s3://results/([0-9a-f]+)/?", resp.text)[1]
    yield gw, {"lists": ["", "ü/", "ü/é", "a b", "100%", "plus+", "big.nc/v/1", "nosuch/"],
               "results": [f"{result}/", f"{result}/v", f"{result}/.z"]}
    gw.stop()


def page_v2(s3, bucket, **kw):
    return s3.list_objects_v2(Bucket=bucket, **{k: v for k, v in kw.items() if v is not None})


def entries(resp) -> list[tuple[str, str]]:
    """A page's keys and common prefixes, merged in key order, as S3 counts them."""
    out = [("K", c["Key"]) for c in resp.get("Contents", [])] + [("P", p["Prefix"]) for p in resp.get("CommonPrefixes", [])]
    return sorted(out, key=lambda e: e[1])


def full_keys(s3, bucket: str, prefix: str) -> list[str]:
    keys, token = [], None
    while True:
        resp = page_v2(s3, bucket, Prefix=prefix, ContinuationToken=token)
        keys += [c["Key"] for c in resp.get("Contents", [])]
        if not resp["IsTruncated"]:
            return keys
        token = resp["NextContinuationToken"]


def model(keys: list[str], prefix: str, delimiter: str | None, after: str | None) -> list[tuple[str, str]]:
    """S3's answer, all pages together: keys under the prefix after `after`, with those that
    hold the delimiter past the prefix rolled up into common prefixes (never one at or before
    `after`)."""
    out, seen = [], set()
    for k in sorted(keys):
        if not k.startswith(prefix) or (after is not None and k <= after):
            continue
        rest = k[len(prefix):]
        if delimiter and delimiter in rest:
            cp = prefix + rest[: rest.index(delimiter) + len(delimiter)]
            if cp not in seen and not (after is not None and cp <= after):
                seen.add(cp)
                out.append(("P", cp))
            continue
        out.append(("K", k))
    return out


def walk_v2(s3, bucket, prefix, delimiter, max_keys, after) -> list[tuple[str, str]]:
    got, token, pages = [], None, 0
    while True:
        resp = page_v2(s3, bucket, Prefix=prefix, Delimiter=delimiter, MaxKeys=max_keys,
                       StartAfter=after if token is None else None, ContinuationToken=token)
        page = entries(resp)
        assert resp["KeyCount"] == len(page) <= min(max_keys, 1000), resp
        got += page
        pages += 1
        if not resp["IsTruncated"]:
            return got
        assert page, "a truncated page must hold something"
        token = resp["NextContinuationToken"]
        assert pages < 2000


def walk_v1(s3, bucket, prefix, delimiter, max_keys, after) -> list[tuple[str, str]]:
    got, marker = [], after
    while True:
        kw = {"Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:
            kw["Delimiter"] = delimiter
        if marker is not None:
            kw["Marker"] = marker
        resp = s3.list_objects(Bucket=bucket, **kw)
        page = entries(resp)
        got += page
        if not resp["IsTruncated"]:
            return got
        # S3 gives NextMarker only with a delimiter; otherwise the last key is the marker
        marker = resp.get("NextMarker") or page[-1][1]


@pytest.mark.parametrize("bucket", ["lists", "results"])
def test_listings_follow_s3_rules_in_every_combination(buckets, bucket):
    gw, prefixes = buckets
    s3 = gw.boto3()
    everything = full_keys(s3, bucket, prefixes[bucket][0] if bucket == "results" else "")
    assert everything == sorted(everything) and len(set(everything)) == len(everything)
    if bucket == "lists":
        assert len(everything) > 1200 and {"ü/é.nc/.zgroup", "100%.nc/v/0", "a b.nc/.zattrs", "plus+sign.nc/x/0"} <= set(everything)
    else:
        assert any(k.endswith("/.zmetadata") for k in everything) and any("/v/" in k for k in everything)
    checked = 0
    for prefix in prefixes[bucket]:
        under = [k for k in everything if k.startswith(prefix)]
        for delimiter in (None, "/", ".z"):
            for max_keys in (1, 7, 1000, 1001):
                if max_keys < 1000 and len(model(under, prefix, delimiter, None)) > 60:
                    continue  # page-by-page walks over thousands of keys add nothing but time
                afters = [None] + ([under[len(under) // 2]] if under else []) + [prefix + "~"]
                for after in afters:
                    want = model(under, prefix, delimiter, after)
                    assert walk_v2(s3, bucket, prefix, delimiter, max_keys, after) == want, (prefix, delimiter, max_keys, after)
                    assert walk_v1(s3, bucket, prefix, delimiter, max_keys, after) == want, (prefix, delimiter, max_keys, after)
                    checked += 1
    print("combinations checked:", checked, "keys:", len(everything))
    assert checked > 20


@pytest.mark.parametrize("bucket", ["lists", "results"])
def test_max_keys_zero_empty_and_capped_pages(buckets, bucket):
    gw, prefixes = buckets
    s3 = gw.boto3()
    prefix = prefixes[bucket][0]
    zero = page_v2(s3, bucket, Prefix=prefix, MaxKeys=0)
    assert zero["KeyCount"] == 0 and not zero["IsTruncated"] and "Contents" not in zero
    empty = page_v2(s3, bucket, Prefix=prefix + "no-such-key-", Delimiter="/")
    assert empty["KeyCount"] == 0 and not empty["IsTruncated"]
    assert "Contents" not in empty and "CommonPrefixes" not in empty
    if bucket == "lists":
        capped = page_v2(s3, bucket, MaxKeys=1001)
        assert capped["KeyCount"] == 1000 and capped["IsTruncated"]


@pytest.mark.parametrize("bucket", ["lists", "results"])
def test_every_listed_key_answers_head_with_its_listed_size(buckets, bucket):
    gw, prefixes = buckets
    s3 = gw.boto3()
    prefix = prefixes[bucket][0] if bucket == "results" else ""
    listed = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        listed.update({c["Key"]: (c["Size"], c["ETag"]) for c in page.get("Contents", [])})
    sample = [k for i, k in enumerate(sorted(listed)) if i % 25 == 0 or not k.startswith(BIG)]
    for key in sample:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert (head["ContentLength"], head["ETag"]) == listed[key], key

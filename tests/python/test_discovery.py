"""Discovery: the pages people browse (headless Chromium), the STAC API machines search
(pystac-client, pystac), and the OGC API root that OWSLib's processes client starts from.

One gateway serves three collections: fixtures (with a joined DRS dataset and a fixture whose
metadata holds markup), the CMIP6 files of the corpus (real facets, grids and calendars), and a
restricted collection. The oracle is xarray on the original files.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import xarray as xr

from gateway import REPO, Gateway, chromium, corpus_missing, zarrgate_bin

FIXTURES = Path(os.environ.get("ZARRGATE_FIXTURES", REPO / "fixtures" / "data" / "good"))
CORPUS = Path(os.environ.get("ZARRGATE_CORPUS", REPO.parent / "shared" / "corpus"))
CMIP6 = CORPUS / "mini-esgf-data" / "test_data" / "badc" / "cmip6" / "data"
ARTIFACTS = REPO / "target" / "artifacts" / "discovery"
PUBLIC_FILES = ("cal_noleap.nc", "nan_fill.nc", "curvilinear.nc", "groups.nc", "filters_plugins.h5", "classic.nc")
XSS = "<script>window.__pwned = 1</script>"


def write_markup_fixture(path: Path) -> None:
    """A file whose names and attributes hold markup: pages must show it as text."""
    ds = xr.Dataset(
        {
            "tas": (("lat", "lon"), np.arange(12, dtype="float32").reshape(3, 4),
                    {"long_name": '<img src=x onerror="window.__pwned = 2">', "units": "K & <b>"}),
        },
        coords={"lat": ("lat", [-10.0, 0.0, 10.0], {"units": "degrees_north"}),
                "lon": ("lon", [0.0, 90.0, 180.0, 270.0], {"units": "degrees_east"})},
        attrs={"title": XSS, "comment": "</td></tr></table><h1>injected</h1>"},
    )
    ds.to_netcdf(path)


def start(config: Path) -> Gateway:
    proc = subprocess.Popen([*zarrgate_bin(), "serve", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    line = proc.stdout.readline()
    threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    assert line.startswith("listening on "), line + "".join(log)
    return Gateway(endpoint=line.split()[-1], bucket="pub", proc=proc, catalog_dir=config.parent, log=log,
                   auth_db=config.parent / "auth.db")


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    if not CMIP6.is_dir():
        corpus_missing(f"{CMIP6} is missing")
    tmp = tmp_path_factory.mktemp("discovery")
    pub = tmp / "pub"
    (pub / "drs").mkdir(parents=True)
    for f in PUBLIC_FILES:
        shutil.copy2(FIXTURES / f, pub / f)
    for f in (FIXTURES / "drs").iterdir():
        shutil.copy2(f, pub / "drs" / f.name)
    write_markup_fixture(pub / "markup.nc")
    secret = tmp / "secret"
    secret.mkdir()
    shutil.copy2(FIXTURES / "classic.nc", secret / "classic.nc")
    config = tmp / "zarrgate.toml"
    config.write_text(
        f'listen = "127.0.0.1:0"\nauth_db = "{tmp / "auth.db"}"\n[ops]\ndir = "{tmp / "ops"}"\n'
        f'[[collections]]\nbucket = "pub"\ndata = "{pub}"\ncatalog = "{tmp / "c-pub"}"\n'
        f'[[collections]]\nbucket = "cmip6"\ndata = "{CMIP6}"\ncatalog = "{tmp / "c-cmip6"}"\n'
        f'[[collections]]\nbucket = "secret"\ndata = "{secret}"\ncatalog = "{tmp / "c-secret"}"\n'
        f'read = "authenticated"\n'
    )
    g = start(config)
    yield g
    g.stop()


def cmip6_files() -> list[Path]:
    return sorted(CMIP6.rglob("*.nc"))


# --- pages -----------------------------------------------------------------------------------


def browse(url: str, tmp: Path, shot: str | None = None) -> tuple[str, list[str]]:
    """Opens `url` in headless Chromium: the rendered DOM and the console errors (saving a
    screenshot as an artifact when `shot` is given)."""
    exe = chromium()
    common = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
              "--virtual-time-budget=10000", "--window-size=1280,2000"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    if shot:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        out = ARTIFACTS / f"{shot}.png"
        s = subprocess.run([*common, f"--screenshot={out}", url], capture_output=True, text=True, timeout=120)
        assert s.returncode == 0 and out.stat().st_size > 0, s.stderr[-2000:]
    errors = [line for line in dom.stderr.splitlines()
              if "CONSOLE" in line and ("error" in line.lower() or "failed" in line.lower() or "refused" in line.lower())]
    return dom.stdout, errors


def text_of(dom: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


def test_browse_pages_list_collections_and_directories_with_counts(gw, tmp_path):
    dom, errors = browse(f"{gw.endpoint}/browse/", tmp_path, "collections")
    assert errors == []
    text = text_of(dom)
    assert "pub" in text and "cmip6" in text
    # A restricted collection is not shown to an anonymous visitor.
    assert "secret" not in text
    dom, errors = browse(f"{gw.endpoint}/browse/cmip6/", tmp_path, "cmip6-root")
    assert errors == [] and "CMIP6/" in text_of(dom)
    # The directory's count is the number of files below it.
    row = re.search(r'CMIP6/</a></td><td>directory</td><td class="num">(\d+)</td>', dom)
    assert row and int(row.group(1)) == len(cmip6_files()), dom[:3000]
    r = requests.get(f"{gw.endpoint}/browse/secret/", timeout=30)
    assert r.status_code == 401 and "text/html" in r.headers["content-type"]


def dataset_cases():
    cases = [("pub", f, FIXTURES / f) for f in ("cal_noleap.nc", "curvilinear.nc", "groups.nc", "filters_plugins.h5")]
    files = cmip6_files()
    cases += [("cmip6", str(p.relative_to(CMIP6)), p) for p in files[:3]]
    return cases


@pytest.mark.parametrize("bucket,dataset,original", dataset_cases(), ids=lambda v: str(v)[-40:])
def test_dataset_pages_show_every_variable_without_console_errors(gw, tmp_path, bucket, dataset, original):
    shot = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{bucket}_{dataset}")[-80:]
    dom, errors = browse(f"{gw.endpoint}/browse/{bucket}/{dataset}", tmp_path, shot)
    assert errors == [], errors
    text = text_of(dom)
    with xr.open_dataset(original) as ds:
        names = list(ds.variables)
        dims = dict(ds.sizes)
    for name in names:
        assert re.search(rf"\b{re.escape(name)}\b", text), f"{name} is not on the page of {dataset}"
    for d, n in dims.items():
        assert re.search(rf"{re.escape(d)}\s+{n}\b", text), f"dimension {d}={n} is not on the page"
    if dataset == "groups.nc":
        assert "Group" in text
    if dataset == "filters_plugins.h5":
        assert "decoded by the gateway" in text


def test_a_joined_dataset_has_a_page(gw, tmp_path):
    page = requests.get(f"{gw.endpoint}/browse/pub/drs/", timeout=30).text
    joined = re.findall(r'href="/browse/pub/(drs/[^"/]+)"><[^>]*>?[^<]*</a></td><td>joined dataset', page) or \
        re.findall(r'href="/browse/pub/(drs/[^"/]+)">[^<]*</a></td><td>joined dataset', page)
    assert joined, page[:3000]
    dom, errors = browse(f"{gw.endpoint}/browse/pub/{joined[0]}", tmp_path, "joined")
    assert errors == [] and "a joined dataset of 3 files" in text_of(dom)
    assert "tas" in text_of(dom)


def test_markup_in_a_file_renders_as_text(gw, tmp_path):
    dom, errors = browse(f"{gw.endpoint}/browse/pub/markup.nc", tmp_path, "markup")
    # No element came from the file: its markup is text.
    assert "<script>window.__pwned" not in dom and "<img src=\"x\"" not in dom and "<h1>injected" not in dom
    text = text_of(dom)
    assert XSS in text and '<img src=x onerror="window.__pwned = 2">' in text and "K & <b>" in text
    assert not any("__pwned" in e for e in errors)


def png_of(body: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(body))


def test_quicklooks_are_pngs_of_the_requested_size(gw, tmp_path):
    url = f"{gw.endpoint}/ops/v1/subset?dataset=pub/nan_fill.nc&var=tos&format=png&size=640x400"
    r = requests.get(url, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:500]
    img = png_of(r.content)
    assert img.size == (640, 400) and img.mode == "RGBA"
    pixels = np.asarray(img)
    assert len(np.unique(pixels.reshape(-1, 4), axis=0)) > 20  # a field, a colour bar and text
    # tos is NaN in places: those cells are transparent.
    with xr.open_dataset(FIXTURES / "nan_fill.nc") as ds:
        assert bool(ds.tos.isnull().any())
    assert (pixels[..., 3] == 0).any() and (pixels[..., 3] == 255).any()
    # The same request again is a cache hit.
    again = requests.get(url, timeout=60)
    assert again.headers["x-zarrgate-cache"] == "hit" and again.content == r.content
    # The first time step by default; any other with isel.
    tas = f"{gw.endpoint}/ops/v1/subset?dataset=pub/nan_fill.nc&var=tas&format=png"
    first, explicit, other = (requests.get(tas + q, timeout=60) for q in ("", "&isel=time=0:1", "&isel=time=2:3"))
    assert first.status_code == explicit.status_code == other.status_code == 200
    assert first.content == explicit.content and other.content != first.content
    # A time series of an area mean.
    series = requests.get(f"{gw.endpoint}/ops/v1/average?dataset=pub/cal_noleap.nc&var=tas&dims=lat,lon"
                          f"&format=png&size=500x300", timeout=60)
    assert series.status_code == 200 and png_of(series.content).size == (500, 300)
    # Chromium opens the picture.
    dom, errors = browse(url, tmp_path, "quicklook-tos")
    assert errors == []
    assert (ARTIFACTS / "quicklook-tos.png").stat().st_size > 1000


def test_quicklook_errors_are_problems(gw):
    r = requests.get(f"{gw.endpoint}/ops/v1/subset?dataset=pub/nan_fill.nc&var=tos,tas&format=png", timeout=30)
    assert r.status_code == 400 and r.json()["argument"] == "var"
    r = requests.get(f"{gw.endpoint}/ops/v1/subset?dataset=pub/nan_fill.nc&var=tos&format=png&size=10x10", timeout=30)
    assert r.status_code == 400 and r.json()["argument"] == "size"
    r = requests.get(f"{gw.endpoint}/ops/v1/subset?dataset=pub/nan_fill.nc&var=tos&size=800x500", timeout=30)
    assert r.status_code == 400 and r.json()["argument"] == "size"


def snippets(page: str) -> list[tuple[str, str]]:
    blocks = re.findall(r'<code class="snippet language-(\w+)" data-lang="\w+">(.*?)</code>', page, re.S)
    return [(lang, html.unescape(code)) for lang, code in blocks]


@pytest.mark.parametrize("bucket,dataset", [("pub", "cal_noleap.nc"), ("pub", "groups.nc")])
def test_snippets_run_as_printed(gw, tmp_path, bucket, dataset):
    page = requests.get(f"{gw.endpoint}/browse/{bucket}/{dataset}", timeout=30).text
    blocks = snippets(page)
    assert {lang for lang, _ in blocks} == {"python", "sh"} and len(blocks) >= 6
    for i, (lang, code) in enumerate(blocks):
        if lang == "python":
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        else:
            run = subprocess.run(["bash", "-euo", "pipefail", "-c", code], capture_output=True, text=True,
                                 timeout=120, cwd=tmp_path)
        assert run.returncode == 0, f"snippet {i} ({lang}) failed:\n{code}\n{run.stderr[-3000:]}"


def test_the_subset_form_builds_a_working_url(gw):
    page = requests.get(f"{gw.endpoint}/browse/pub/nan_fill.nc", timeout=30).text
    form = re.search(r'<form method="get" action="(/ops/v1/subset)" id="subset-form">(.*?)</form>', page, re.S)
    assert form
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form.group(2)))
    assert fields == {"dataset": "pub/nan_fill.nc"}
    assert re.findall(r"<option>(\w+)</option>", form.group(2))[:2] == ["tas", "tos"]
    r = requests.get(gw.endpoint + form.group(1), params={**fields, "var": "tos", "area": "0,-10,30,10",
                                                        "time": "", "level": "", "format": "nc"}, timeout=60)
    assert r.status_code == 200, r.text
    out = xr.open_dataset(io.BytesIO(r.content), engine="h5netcdf")
    with xr.open_dataset(FIXTURES / "nan_fill.nc") as ds:
        expected = ds.tos.sel(lat=slice(-10, 10), lon=slice(0, 30))
        np.testing.assert_array_equal(out.tos.values, expected.values)


# --- STAC --------------------------------------------------------------------------------------


def offline_validator():
    """pystac's validator with its bundled core schemas and, for the extensions the items
    declare, schemas written here from the extensions' specifications (the machines that run the
    tests have no internet)."""
    from pystac.validation import JsonSchemaSTACValidator

    from stac_schemas import DATACUBE, DATACUBE_SCHEMA, XARRAY_ASSETS, XARRAY_ASSETS_SCHEMA

    v = JsonSchemaSTACValidator()
    v.schema_cache[DATACUBE] = DATACUBE_SCHEMA
    v.schema_cache[XARRAY_ASSETS] = XARRAY_ASSETS_SCHEMA
    return v


def expected_record(path: Path) -> dict:
    """What an item should say of a file, read with xarray."""
    with xr.open_dataset(path, use_cftime=True) as ds:
        def coord(kind: str):
            """Every value of the file's coordinates of this kind (1-D axes and 2-D grids)."""
            units = "degrees_north" if kind == "latitude" else "degrees_east"
            values = [np.asarray(v.values, dtype=float).ravel() for v in ds.variables.values()
                      if v.attrs.get("standard_name") == kind or str(v.attrs.get("units", "")).startswith(units)]
            if not values:
                return None
            # Values no position can have (a grid's unmasked fill values) are not positions.
            v = np.concatenate(values)
            return v[np.abs(v) <= (90 if kind == "latitude" else 720)]
        lat, lon = coord("latitude"), coord("longitude")
        times = ds["time"].values if "time" in ds.variables and ds["time"].ndim == 1 else None
        facets = {k: str(v) for k, v in ds.attrs.items() if k in ("source_id", "experiment_id", "variable_id", "frequency",
                                                                     "table_id", "member_id", "institution_id")}
        rec = {"facets": facets}
        if lat is not None and lon is not None:
            w = ((lon + 180) % 360) - 180
            rec["south"], rec["north"] = float(np.nanmin(lat)), float(np.nanmax(lat))
            rec["lon"] = w[np.isfinite(w)]
        if times is not None and len(times):
            rec["start"] = min(times).strftime("%Y-%m-%dT%H:%M:%S")
            rec["end"] = max(times).strftime("%Y-%m-%dT%H:%M:%S")
        return rec


@pytest.fixture(scope="module")
def records():
    return {str(p.relative_to(CMIP6)): expected_record(p) for p in cmip6_files()}


def client(gw):
    from pystac_client import Client

    return Client.open(f"{gw.endpoint}/stac")


def test_every_cmip6_file_is_an_item_with_its_facets_box_and_times(gw, records):
    items = {i.id: i for i in client(gw).search(collections=["cmip6"], limit=7).items()}
    assert set(items) == set(records)
    for id, rec in records.items():
        props = items[id].properties
        for k, v in rec["facets"].items():
            assert props.get(k) == v, (id, k)
        if "south" in rec:
            w, s, e, n = items[id].bbox
            assert (s, n) == pytest.approx((rec["south"], rec["north"]), abs=1e-4), id
            assert all((w - 1e-4 <= x <= e + 1e-4) if w <= e else (x >= w - 1e-4 or x <= e + 1e-4) for x in rec["lon"]), id
        if "start" in rec:
            start, end = props["start_datetime"], props["end_datetime"]
            # Non-standard calendars keep their date text, moved to a real date if needed.
            assert start[:7] == rec["start"][:7] and end[:7] == rec["end"][:7], (id, start, end, rec)


def test_search_by_facet_bbox_and_datetime_finds_exactly_the_matching_items(gw, records):
    c = client(gw)
    source = next(r["facets"]["source_id"] for r in records.values() if "source_id" in r["facets"])
    want = {i for i, r in records.items() if r["facets"].get("source_id") == source}
    got = {i.id for i in c.search(collections=["cmip6"], query={"source_id": {"eq": source}}).items()}
    assert got == want and want
    # A box over Europe: items whose box meets it.
    box = (-10.0, 35.0, 30.0, 60.0)
    def meets(r):
        if "south" not in r:
            return False
        lon = r["lon"]
        return r["south"] <= box[3] and r["north"] >= box[1] and ((lon >= box[0] - 360) & True).any() and (
            ((lon >= box[0]) & (lon <= box[2])).any() or (lon.min() <= box[0] and lon.max() >= box[2]))
    got = {i.id for i in c.search(collections=["cmip6"], bbox=box).items()}
    assert got == {i for i, r in records.items() if meets(r)}
    # A period: items whose time range meets it.
    got = {i.id for i in c.search(collections=["cmip6"], datetime="2015-01-01/2015-12-31").items()}
    want = {i for i, r in records.items() if "start" in r and r["start"][:10] <= "2015-12-31" and r["end"][:10] >= "2015-01-01"}
    assert got == want and want
    # All three together, through POST as well as GET.
    both = set()
    for method in ("GET", "POST"):
        got = {i.id for i in c.search(method=method, collections=["cmip6"], bbox=(-180, -90, 180, 90),
                                      datetime="1850-01-01/2100-12-31",
                                      query={"source_id": {"in": [source]}}).items()}
        both.add(frozenset(got))
    assert len(both) == 1 and set(next(iter(both))) <= {i for i, r in records.items() if r["facets"].get("source_id") == source}


def test_pages_of_results_follow_next_links(gw, records):
    r = requests.get(f"{gw.endpoint}/stac/search", params={"collections": "cmip6", "limit": 4}, timeout=30).json()
    seen = [f["id"] for f in r["features"]]
    while any(l["rel"] == "next" for l in r["links"]):
        nxt = next(l for l in r["links"] if l["rel"] == "next")
        r = requests.get(nxt["href"], timeout=30).json()
        seen += [f["id"] for f in r["features"]]
    assert sorted(seen) == sorted(records) and len(seen) == len(set(seen))


def test_items_validate_and_their_zarr_asset_opens_equal_to_the_original(gw, records):
    import pystac

    validator = offline_validator()
    ids = sorted(records)[:4] + ["cal_noleap.nc", "curvilinear.nc"]
    for id in ids:
        bucket = "pub" if id.endswith(("cal_noleap.nc", "curvilinear.nc")) else "cmip6"
        doc = requests.get(f"{gw.endpoint}/stac/collections/{bucket}/items/{id}", timeout=30).json()
        item = pystac.Item.from_dict(doc)
        assert item.validate(validator=validator)
        from pystac.extensions.datacube import DatacubeExtension

        cube = DatacubeExtension.ext(item)
        assert set(cube.variables) >= {"tas"} if bucket == "pub" else cube.variables
        asset = item.assets["zarr"]
        ds = xr.open_dataset(asset.href, **asset.extra_fields["xarray:open_kwargs"],
                             storage_options=asset.extra_fields["xarray:storage_options"])
        original = FIXTURES / id if bucket == "pub" else CMIP6 / id
        with xr.open_dataset(original) as o:
            xr.testing.assert_identical(ds.load(), o.load())


def test_collections_and_joins_are_catalogued(gw):
    import pystac

    validator = offline_validator()
    cs = requests.get(f"{gw.endpoint}/stac/collections", timeout=30).json()["collections"]
    assert sorted(c["id"] for c in cs) == ["cmip6", "pub"]
    for c in cs:
        assert pystac.Collection.from_dict(c).validate(validator=validator)
    joined = [i for i in client(gw).search(collections=["pub"]).items()
              if i.id.startswith("drs/") and not i.id.endswith(".nc")]
    assert len(joined) == 1
    with xr.open_mfdataset(sorted((FIXTURES / "drs").glob("*.nc")), combine="by_coords", use_cftime=True) as ds:
        times = ds.time.values
    assert joined[0].properties["start_datetime"][:10] == times[0].strftime("%Y-%m-%d")
    assert joined[0].properties["end_datetime"][:10] == times[-1].strftime("%Y-%m-%d")


def test_restricted_collections_are_searched_only_with_a_key(gw):
    anon = requests.get(f"{gw.endpoint}/stac/search", params={"collections": "secret"}, timeout=30).json()
    assert anon["features"] == []
    assert requests.get(f"{gw.endpoint}/stac/collections/secret", timeout=30).status_code == 401
    assert requests.get(f"{gw.endpoint}/kerchunk/secret/classic.nc", timeout=30).status_code == 401
    key, secret = gw.create_key("reader")
    import time

    time.sleep(0.6)
    auth = {"Authorization": f"Bearer {key}:{secret}"}
    found = requests.get(f"{gw.endpoint}/stac/search", params={"collections": "secret"}, headers=auth, timeout=30).json()
    assert [f["id"] for f in found["features"]] == ["classic.nc"]


def test_bad_searches_are_problems(gw):
    for params, arg in [({"bbox": "1,2,3"}, "bbox"), ({"datetime": "yesterday"}, "datetime"),
                        ({"limit": "0"}, "limit"), ({"query": "{"}, "query"), ({"filter": "x=1"}, "filter"),
                        ({"colour": "red"}, "colour")]:
        r = requests.get(f"{gw.endpoint}/stac/search", params=params, timeout=30)
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", (params, r.text)
        assert r.json()["argument"] == arg


def test_the_kerchunk_download_reads_like_the_s3_store(gw):
    refs = requests.get(f"{gw.endpoint}/kerchunk/pub/cal_noleap.nc", timeout=30).json()
    assert refs["version"] == 1 and ".zmetadata" in refs["refs"]
    so = {"fo": refs, "remote_protocol": "http", "remote_options": {"asynchronous": True}}
    ds = xr.open_dataset("reference://", engine="zarr", backend_kwargs={"consolidated": False, "storage_options": so})
    with xr.open_dataset(FIXTURES / "cal_noleap.nc") as o:
        xr.testing.assert_identical(ds.load(), o.load())


# --- OGC API -----------------------------------------------------------------------------------


def test_owslib_lists_describes_and_executes_the_processes(gw):
    from owslib.ogcapi.processes import Processes

    p = Processes(f"{gw.endpoint}/ogc")
    ids = sorted(x["id"] for x in p.processes())
    assert ids == ["average", "subset"]
    assert "dims" in p.process("average")["inputs"]
    assert p.conformance()["conformsTo"]
    assert p.api()["openapi"].startswith("3.0")
    inputs = {"dataset": "pub/cal_noleap.nc", "var": "tas", "dims": ["lat", "lon"], "format": "nc"}
    out = p.execute("average", inputs=inputs)
    result = requests.get(out["result"]["href"], timeout=60)
    assert result.status_code == 200
    got = xr.open_dataset(io.BytesIO(result.content), engine="h5netcdf")
    with xr.open_dataset(FIXTURES / "cal_noleap.nc") as o:
        np.testing.assert_allclose(got.tas.values, o.tas.mean(["lat", "lon"]).values, rtol=1e-6)
    # Asynchronously: a job, polled at /jobs/{id}, its result fetched.
    job = p.execute("subset", inputs={"dataset": "pub/nan_fill.nc", "var": "tos", "format": "nc",
                                      "isel": "lat=3:4"}, async_=True)
    assert job["status"] in ("accepted", "running", "successful")
    import time

    for _ in range(200):
        status = requests.get(f"{gw.endpoint}/ogc/jobs/{job['jobID']}", timeout=30).json()
        if status["status"] in ("successful", "failed"):
            break
        time.sleep(0.1)
    assert status["status"] == "successful", status.get("message")
    nc = requests.get(f"{gw.endpoint}/jobs/{job['jobID']}/results", timeout=30)
    assert nc.status_code == 200 and nc.headers["content-type"] == "application/x-netcdf"
    got = xr.open_dataset(io.BytesIO(nc.content), engine="h5netcdf")
    with xr.open_dataset(FIXTURES / "nan_fill.nc") as o:
        np.testing.assert_array_equal(got.tos.values, o.tos.isel(lat=slice(3, 4)).values)


def test_the_ogc_landing_page_links_what_clients_need(gw):
    doc = requests.get(f"{gw.endpoint}/ogc/", timeout=30).json()
    rels = {l["rel"]: l for l in doc["links"]}
    assert rels["service-desc"]["type"] == "application/vnd.oai.openapi+json;version=3.0"
    assert rels["service-desc"]["href"].startswith("http://")
    for rel in ("http://www.opengis.net/def/rel/ogc/1.0/processes", "http://www.opengis.net/def/rel/ogc/1.0/conformance",
                "http://www.opengis.net/def/rel/ogc/1.0/job-list"):
        assert requests.get(rels[rel]["href"], timeout=30).status_code == 200
    # The API definition is a valid OpenAPI 3.0 document.
    from openapi_spec_validator import validate

    api = requests.get(rels["service-desc"]["href"], timeout=30)
    assert api.headers["content-type"] == rels["service-desc"]["type"]
    validate(api.json())


# --- S3 is untouched ---------------------------------------------------------------------------


def test_s3_requests_never_get_html(gw):
    r = requests.get(f"{gw.endpoint}/", headers={"Accept": "text/html"}, timeout=30)
    assert r.status_code == 200 and "ListAllMyBucketsResult" in r.text
    r = requests.get(f"{gw.endpoint}/pub/cal_noleap.nc/.zgroup", headers={"Accept": "text/html"}, timeout=30)
    assert r.json() == {"zarr_format": 2}


def test_discovery_names_cannot_be_buckets(tmp_path):
    config = tmp_path / "z.toml"
    config.write_text(f'[[collections]]\nbucket = "stac"\ncatalog = "{tmp_path}"\n')
    run = subprocess.run([*zarrgate_bin(), "serve", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "reserved" in run.stderr

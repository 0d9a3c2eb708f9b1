"""Browsers on another origin (zarr.js, JupyterLite, Vizarr): a page served from one origin
reads the gateway with headless Chromium, through a preflight, as a real browser enforces CORS."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from gateway import REPO, chromium, zarrgate_bin

FIXTURES = REPO / "fixtures" / "data" / "good"

PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
const GW = "%(gw)s";
async function read(path) {
  try {
    // x-amz-content-sha256 is not CORS-safelisted: the browser sends a preflight first.
    const r = await fetch(GW + path, {headers: {"Range": "bytes=0-9", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}});
    const body = await r.text();
    return {status: r.status, length: body.length, etag: r.headers.get("ETag") !== null,
            id: r.headers.get("x-amz-request-id")};
  } catch (e) {
    return {blocked: String(e)};
  }
}
(async () => {
  const out = {pub: await read("/pub/classic.nc/.zmetadata"), listed: await read("/listed/classic.nc/.zmetadata")};
  document.getElementById("out").textContent = JSON.stringify(out);
})();
</script></body></html>
"""


@pytest.fixture
def page_server(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_page_of_another_origin_reads_an_admitted_collection_only(tmp_path, page_server):
    exe = chromium()
    site, origin = page_server
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(FIXTURES / "classic.nc", data / "classic.nc")
    config = tmp_path / "zarrgate.toml"
    config.write_text(
        f'listen = "127.0.0.1:0"\nauth_db = "{tmp_path / "auth.db"}"\n[ops]\ndir = "{tmp_path / "ops"}"\n'
        f'[[collections]]\nbucket = "pub"\ndata = "{data}"\ncatalog = "{tmp_path / "c1"}"\n'
        f'[[collections]]\nbucket = "listed"\ndata = "{data}"\ncatalog = "{tmp_path / "c2"}"\n'
        f'cors_origins = ["https://lab.example.org"]\n'
    )
    proc = subprocess.Popen([*zarrgate_bin(), "serve", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        endpoint = line.split()[-1]
        (site / "page.html").write_text(PAGE % {"gw": endpoint})
        browser = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom",
             f"{origin}/page.html"],
            capture_output=True, text=True, timeout=120,
        )
        m = re.search(r'<pre id="out">(.*?)</pre>', browser.stdout, re.S)
        assert m and m.group(1) != "pending", browser.stdout[-2000:] + browser.stderr[-2000:]
        out = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
        # The public collection: the preflight passes and the page reads the bytes and headers.
        assert out["pub"]["status"] == 206 and out["pub"]["length"] == 10 and out["pub"]["etag"], out
        # A collection that admits another origin: the browser refuses the page the answer.
        assert "blocked" in out["listed"], out
        # The same, as a client sees the preflights.
        ok = requests.options(f"{endpoint}/pub/classic.nc/.zmetadata", timeout=30, headers={
            "Origin": origin, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range, x-amz-content-sha256"})
        assert ok.status_code == 204 and ok.headers["Access-Control-Allow-Origin"] == "*"
        assert "x-amz-content-sha256" in ok.headers["Access-Control-Allow-Headers"]
        refused = requests.options(f"{endpoint}/listed/classic.nc/.zmetadata", timeout=30, headers={
            "Origin": origin, "Access-Control-Request-Method": "GET"})
        assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers
        listed = requests.get(f"{endpoint}/listed/classic.nc/.zgroup", timeout=30,
                              headers={"Origin": "https://lab.example.org"})
        assert listed.headers["Access-Control-Allow-Origin"] == "https://lab.example.org"
        assert listed.headers["Vary"] == "Origin" and "ETag" in listed.headers["Access-Control-Expose-Headers"]
    finally:
        proc.terminate()
        proc.wait()

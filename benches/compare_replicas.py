"""Replicas: what sharing state costs, side by side.

    .venv/bin/python benches/compare_replicas.py --bin target/release/zarrgate [--duration 5] [--rounds 3]

1. Auth and accounting with PostgreSQL against SQLite: 64 KiB chunk GETs with a bearer key whose
   quota has a rate limit (so PostgreSQL takes a token in a transaction per request, the
   costliest case), and with a key without one, on one gateway each; anonymous GETs as the
   baseline. wrk, 64 connections, 2 threads.
2. Chunk GETs through a round-robin nginx in front of one and of three replicas (anonymous).
   On a 2-core machine the replicas share the cores with nginx and wrk, so this shows the
   balancer's cost, not scaling.
3. A cached result served from the shared object store (moto's S3 server on 127.0.0.1)
   against one from local disk: 66 small averages computed by one gateway, then asked of a
   second one twice, memory tiers off (first: from the store; second: from its disk).

The data is `compare_gateway.py`'s (`target/bench/gateway-data/chunks.nc`, made there first).
Prints Markdown tables of medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benches"))
sys.path.insert(0, str(REPO / "tests" / "python"))

import compare_gateway as cg  # noqa: E402
from gateway import export_catalog  # noqa: E402
from servers import request, start_moto, start_postgres, start_proxy  # noqa: E402


def serve(binary: str, config: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([binary, "serve", "--config", str(config), "--log-level", "warn"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in iter(proc.stdout.readline, ""):
        if line.startswith("listening on "):
            endpoint = line.split()[-1].strip()
            deadline = time.monotonic() + 60
            while request(f"{endpoint}/readyz").status != 200:
                assert time.monotonic() < deadline, "not ready"
                time.sleep(0.1)
            return proc, endpoint
    raise SystemExit(f"the gateway did not start: {proc.stderr.read()[-2000:]}")


def config(path: Path, auth_db: str, catalog: Path, ops: Path, limited: str | None) -> Path:
    quota = (f"[quotas.key.{limited}]\nrequests_per_second = 1000000.0\nburst = 1000000.0\n"
             if limited else "")
    # wrk's 64 connections all come from 127.0.0.1: lift the per-address connection limit
    path.write_text(f"""listen = "127.0.0.1:0"
max_connections_per_client = 4096
auth_db = "{auth_db}"
[ops]
dir = "{ops}"
[[collections]]
bucket = "open"
catalog = "{catalog}"
[[collections]]
bucket = "bench"
catalog = "{catalog}"
read = "authenticated"
{quota}""")
    return path


def result_tiers(binary: str, catalog: Path, work: Path) -> None:
    """Part 3: median milliseconds of a cache hit from the object store and from local disk."""
    moto = start_moto()
    moto.create_bucket("ops")
    procs = []
    try:
        for name in ("a", "b"):
            path = work / f"tiers-{name}.toml"
            path.write_text(f"""listen = "127.0.0.1:0"
auth_db = "{work / 'tiers-auth.db'}"
[ops]
dir = "{work / f'tiers-ops-{name}'}"
memory_cache_bytes = 0
store = "s3://ops/bench"
[ops.store_options]
aws_endpoint = "{moto.endpoint}"
aws_region = "us-east-1"
aws_allow_http = "true"
aws_access_key_id = "test"
aws_secret_access_key = "test"
[[collections]]
bucket = "demo"
catalog = "{catalog}"
""")
            procs.append(serve(binary, path))
        months = [(a, b) for a in range(1, 13) for b in range(a, 13)][:66]
        urls = [f"/ops/v1/average?dataset=demo/cal_noleap.nc&var=tas&dims=time&time=1850-{a:02d}/1850-{b:02d}&format=nc"
                for a, b in months]
        for u in urls:
            assert request(f"{procs[0][1]}{u}").status == 200
        timings = {}
        for tier in ("store", "disk"):
            ms = []
            for u in urls:
                t0 = time.perf_counter()
                r = request(f"{procs[1][1]}{u}")
                ms.append((time.perf_counter() - t0) * 1000)
                assert r.status == 200 and r.headers["x-zarrgate-cache"] == "hit", (r.status, r.body[:200])
            timings[tier] = statistics.median(ms)
        print("\n### A cached result: from the shared object store against local disk (66 results of ~1 KB, sequential)\n")
        print("| tier | median ms per request |\n|---|--:|")
        print(f"| object store (moto S3 on 127.0.0.1) | {timings['store']:.2f} |")
        print(f"| local disk | {timings['disk']:.2f} |")
        print(f"\nratio: {timings['store'] / timings['disk']:.1f}×", flush=True)
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait()
        moto.stop()


def create_key(binary: str, db: str, name: str) -> tuple[str, str]:
    out = subprocess.run([binary, "keys", "create", "--db", db, "--create-db", "--name", name,
                          "--owner", f"{name}@example.org"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines()[:2])
    return fields["access key"].strip(), fields["secret"].strip()


def rps(endpoint: str, lines: list[str], duration: int, rounds: int, work: Path, name: str) -> dict:
    cg.run_wrk(endpoint, lines, 2, work, "warm")
    runs = [cg.run_wrk(endpoint, lines, duration, work, name) for _ in range(rounds)]
    return {"rps": statistics.median(r["rps"] for r in runs), "p99_ms": statistics.median(r["p99_ms"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "zarrgate"))
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only-tiers", action="store_true", help="run part 3 only")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    data = REPO / "target" / "bench" / "gateway-data"
    data.mkdir(parents=True, exist_ok=True)
    cg.make_data(data / "chunks.nc")
    pg = start_postgres()
    work = Path(tempfile.mkdtemp(prefix="zarrgate-replicas-"))
    try:
        catalog = work / "catalog"
        subprocess.run([binary, "index", str(data), "--out", str(catalog)], check=True, capture_output=True)
        refs = export_catalog(catalog, "chunks.nc") / "refs" / "chunks.nc.json"
        paths = [f"chunks.nc/{k}" for k, _, _ in cg.chunk_ranges(refs, "small")]
        anon = [f"/open/{p}" for p in paths]

        if not args.only_tiers:
            print("### Auth and accounting: PostgreSQL against SQLite (64 KiB chunk GETs, wrk -t2 -c64)\n")
            print("| key database | anonymous req/s | key, no rate limit: req/s | key with a rate limit: req/s | p99 with a rate limit, ms |")
            print("|---|--:|--:|--:|--:|")
            for label, db in (("SQLite (file)", str(work / "auth.db")), ("PostgreSQL (127.0.0.1)", pg.url)):
                plain = create_key(binary, db, "plain")
                limited = create_key(binary, db, "limited")
                proc, endpoint = serve(binary, config(work / f"{label[:6]}.toml", db, catalog, work / "ops", limited[0]))
                try:
                    time.sleep(0.6)
                    bearer = lambda k: [f"/bench/{p}\tAuthorization: Bearer {k[0]}:{k[1]}" for p in paths]  # noqa: E731
                    a = rps(endpoint, anon, args.duration, args.rounds, work, "anon")
                    p = rps(endpoint, bearer(plain), args.duration, args.rounds, work, "plain")
                    q = rps(endpoint, bearer(limited), args.duration, args.rounds, work, "limited")
                    print(f"| {label} | {a['rps']:,.0f} | {p['rps']:,.0f} | {q['rps']:,.0f} | {q['p99_ms']:.2f} |", flush=True)
                finally:
                    proc.terminate()
                    proc.wait()

            print("\n### Chunk GETs through a round-robin nginx (anonymous, wrk -t2 -c64; 2 cores shared by all)\n")
            print("| path | req/s | p99, ms |\n|---|--:|--:|")
            procs = []
            try:
                for i in range(3):
                    procs.append(serve(binary, config(work / f"r{i}.toml", pg.url, catalog, work / f"ops{i}", None)))
                direct = rps(procs[0][1], anon, args.duration, args.rounds, work, "direct")
                print(f"| one gateway, no balancer | {direct['rps']:,.0f} | {direct['p99_ms']:.2f} |", flush=True)
                for n in (1, 3):
                    lb = start_proxy([e for _, e in procs[:n]], work / f"nginx{n}")
                    try:
                        r = rps(lb.endpoint, anon, args.duration, args.rounds, work, f"lb{n}")
                        print(f"| nginx → {n} replica{'s' if n > 1 else ''} | {r['rps']:,.0f} | {r['p99_ms']:.2f} |", flush=True)
                    finally:
                        lb.stop()
            finally:
                for proc, _ in procs:
                    proc.terminate()
                    proc.wait()
        fixtures = work / "fixtures"
        fixtures.mkdir()
        shutil.copy(REPO / "fixtures" / "data" / "good" / "cal_noleap.nc", fixtures)
        subprocess.run([binary, "index", str(fixtures), "--out", str(work / "fixtures-catalog")], check=True,
                       capture_output=True)
        result_tiers(binary, work / "fixtures-catalog", work)
    finally:
        pg.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The cost of authentication, A/B: anonymous against SigV4-signed 64 KiB chunk GETs, for one or
more gateway binaries run alternately (for example the binary before a change and after it).

    .venv/bin/python benches/compare_auth.py BIN [BIN ...] [--duration 5] [--rounds 3] [--passes 2]

Each pass starts each binary on the generated data of `compare_gateway.py`
(`target/bench/gateway-data/chunks.nc`, made there first), creates a key, and runs wrk with
the same 64 KiB keys anonymous and signed, `--rounds` times each; it prints the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benches"))
sys.path.insert(0, str(REPO / "tests" / "python"))

import compare_gateway as cg  # noqa: E402
from gateway import export_catalog, sigv4_headers, start_gateway  # noqa: E402


def measure(binary: str, duration: int, rounds: int) -> tuple[float, float]:
    os.environ["ZARRGATE_SERVE_BIN"] = binary
    data = REPO / "target" / "bench" / "gateway-data"
    data.mkdir(parents=True, exist_ok=True)
    cg.make_data(data / "chunks.nc")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gw = start_gateway(data, "bench", work / "catalog")
        try:
            key, secret = gw.create_key("bench")
            time.sleep(0.6)
            refs = export_catalog(work / "catalog", "chunks.nc") / "refs" / "chunks.nc.json"
            chunks = cg.chunk_ranges(refs, "small")
            anon = [f"/bench/chunks.nc/{k}" for k, _, _ in chunks]
            signed = ["\t".join([p, *(f"{n}: {v}" for n, v in sigv4_headers(p, "127.0.0.1", key, secret).items())])
                      for p in anon]
            cg.run_wrk(gw.endpoint, signed, 2, work, "warm")
            a, s = [], []
            for _ in range(rounds):
                a.append(cg.run_wrk(gw.endpoint, anon, duration, work, "anon")["rps"])
                s.append(cg.run_wrk(gw.endpoint, signed, duration, work, "signed")["rps"])
            return statistics.median(a), statistics.median(s)
        finally:
            gw.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=2)
    args = ap.parse_args()
    print("| binary | anonymous req/s | signed req/s | overhead |\n|---|--:|--:|--:|")
    for _ in range(args.passes):
        for b in args.binaries:
            anon, signed = measure(b, args.duration, args.rounds)
            print(f"| {b} | {anon:,.0f} | {signed:,.0f} | {1 - signed / anon:.1%} |", flush=True)


if __name__ == "__main__":
    main()

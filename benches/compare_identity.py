"""Logins: what checking an OpenID token costs on chunk GETs, side by side.

    .venv/bin/python benches/compare_identity.py --bin target/release/zarrgate [--duration 5] [--rounds 5]

64 KiB chunk GETs (`compare_gateway.py`'s data), wrk -t2 -c64, one gateway, in alternating
rounds (medians reported):
- anonymous, on a public collection;
- an access key (`Authorization: Bearer ACCESS_KEY:SECRET`), on an `authenticated` collection;
- a JWT from a real OpenID Provider (tests/oidc: npm's oidc-provider, RS256), on the same
  collection. The gateway verifies a token once per key generation and then recognizes it by
  its digest (the "cached JWT" case);
- temporary S3 credentials from that JWT (STS), SigV4-signed, against SigV4 with an access key.

Needs wrk, node and `make oidc-provider`. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
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
import compare_replicas as cr  # noqa: E402
from gateway import export_catalog, sigv4_headers  # noqa: E402


def start_provider(work: Path) -> tuple[subprocess.Popen, str]:
    op_dir = REPO / "tests" / "oidc"
    proc = subprocess.Popen(["node", str(op_dir / "provider.js")], cwd=op_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OP_PORT": "0", "OP_KEYS_FILE": str(work / "op-keys.json"),
                                 "OP_TTL": "3600"})
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        raise SystemExit("the OpenID Provider did not start (run `make oidc-provider`)")
    return proc, line.split()[1]


def token(issuer: str) -> str:
    import requests

    r = requests.post(f"{issuer}/token", auth=("cmip6-user", "cmip6-user-secret"),
                      data={"grant_type": "client_credentials"}, timeout=10)
    r.raise_for_status()
    return r.json()["access_token"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "zarrgate"))
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    data = REPO / "target" / "bench" / "gateway-data"
    data.mkdir(parents=True, exist_ok=True)
    cg.make_data(data / "chunks.nc")
    work = Path(tempfile.mkdtemp(prefix="zarrgate-identity-"))
    op, issuer = start_provider(work)
    try:
        catalog = work / "catalog"
        subprocess.run([binary, "index", str(data), "--out", str(catalog)], check=True, capture_output=True)
        refs = export_catalog(catalog, "chunks.nc") / "refs" / "chunks.nc.json"
        paths = [f"chunks.nc/{k}" for k, _, _ in cg.chunk_ranges(refs, "small")]
        db = str(work / "auth.db")
        key = cr.create_key(binary, db, "bench")
        config = cr.config(work / "gw.toml", db, catalog, work / "ops", None)
        with open(config, "a") as f:
            f.write(f'\n[[oidc]]\nissuer = "{issuer}"\naudience = "zarrgate"\n')
        proc, endpoint = cr.serve(binary, config)
        try:
            time.sleep(0.6)
            jwt = token(issuer)
            import boto3

            sts = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1",
                               aws_access_key_id="x", aws_secret_access_key="x")
            session = sts.assume_role_with_web_identity(RoleArn="arn:aws:iam::0:role/bench", RoleSessionName="bench",
                                                        WebIdentityToken=jwt)["Credentials"]

            def signed(access: str, secret: str, session_token: str | None = None) -> list[str]:
                out = []
                for p in paths:
                    h = sigv4_headers(f"/bench/{p}", "127.0.0.1", access, secret, session_token=session_token)
                    out.append("\t".join([f"/bench/{p}", *(f"{k}: {v}" for k, v in h.items())]))
                return out

            cases = {
                "anonymous (public collection)": [f"/open/{p}" for p in paths],
                "access key, bearer": [f"/bench/{p}\tAuthorization: Bearer {key[0]}:{key[1]}" for p in paths],
                "OpenID JWT (RS256), bearer": [f"/bench/{p}\tAuthorization: Bearer {jwt}" for p in paths],
                "access key, SigV4": signed(*key),
                "STS session, SigV4": signed(session["AccessKeyId"], session["SecretAccessKey"],
                                             session["SessionToken"]),
            }
            for name, lines in cases.items():
                cg.run_wrk(endpoint, lines, 2, work, "warm")
            runs: dict[str, list[dict]] = {name: [] for name in cases}
            for _ in range(args.rounds):
                for name, lines in cases.items():
                    runs[name].append(cg.run_wrk(endpoint, lines, args.duration, work, "run"))
            med = {n: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p99_ms")} for n, rs in runs.items()}
        finally:
            proc.terminate()
            proc.wait()
    finally:
        op.terminate()
        op.wait()
    base = med["anonymous (public collection)"]["rps"]
    key_rps = med["access key, bearer"]["rps"]
    print("### Logins: 64 KiB chunk GETs (wrk -t2 -c64, medians of alternating rounds)\n")
    print("| credentials | req/s | p99, ms | vs anonymous | vs access key |")
    print("|---|--:|--:|--:|--:|")
    for name, m in med.items():
        ref = med["access key, SigV4"]["rps"] if "SigV4" in name else key_rps
        print(f"| {name} | {m['rps']:,.0f} | {m['p99_ms']:.2f} | {m['rps'] / base - 1:+.1%} | {m['rps'] / ref - 1:+.1%} |")


if __name__ == "__main__":
    main()

"""Three gateway replicas sharing a PostgreSQL key database, a published catalog and an object
store of results and jobs (moto's S3 server), behind a round-robin nginx.

Real servers, started here on 127.0.0.1: a throwaway PostgreSQL cluster (Debian's initdb and
pg_ctl, run as an unprivileged user), three ``zarrgate serve`` processes with
``auth_db = "postgres://…"`` serving the catalog ``zarrgate publish`` writes to a shared
directory, and nginx balancing requests over them. What must hold across replicas: a key's quota
(exact, whichever replica answers), a revocation (every replica within a second), a database
outage (public reads go on, keys get 503 with Retry-After, and everything recovers without a
restart), a newly published catalog (served by every replica within a second or two), a
result asked of every replica at once (computed once, the same bytes everywhere), an object
store outage (operations still answer, jobs are refused), and an async job whose replica is
killed (another replica finishes it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway import REPO, zarrgate_bin
from servers import request, start_moto, start_postgres, start_proxy

FIXTURES = REPO / "fixtures" / "data" / "good"
DATASET = "cal_noleap.nc"
BURST = 40


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.replicas: list[tuple[subprocess.Popen, str]] = []
        self.lb = None
        self.pg = start_postgres()
        self.moto = start_moto()
        self.moto.create_bucket("zarrgate-ops")
        self.quota_key = self.create_key("quota")
        self.reader = self.create_key("reader")

    def create_key(self, name: str) -> tuple[str, str]:
        out = subprocess.run([*zarrgate_bin(), "keys", "create", "--db", self.pg.url, "--name", name,
                              "--owner", f"{name}@example.org", "--group", "esgf"],
                             capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines()[:2])
        return fields["access key"].strip(), fields["secret"].strip()

    def start(self) -> None:
        data = self.root / "data"
        data.mkdir()
        shutil.copy(FIXTURES / DATASET, data / DATASET)
        self.data, self.work_catalog, self.shared = data, self.root / "catalog", self.root / "shared"
        self.publish()
        catalog = self.shared
        for i in range(3):
            config = self.root / f"replica{i}.toml"
            config.write_text(f"""
listen = "127.0.0.1:0"
auth_db = "{self.pg.url}"
[ops]
dir = "{self.root / f'ops{i}'}"
store = "s3://zarrgate-ops/shared"
[ops.store_options]
aws_endpoint = "{self.moto.endpoint}"
aws_region = "us-east-1"
aws_allow_http = "true"
aws_access_key_id = "test"
aws_secret_access_key = "test"
[[collections]]
bucket = "open"
catalog = "{catalog}"
[[collections]]
bucket = "closed"
catalog = "{catalog}"
read = ["group:esgf"]
[quotas.key.{self.quota_key[0]}]
requests_per_second = 0.001
burst = {BURST}.0
""")
            # every computation takes 3 s more: long enough to kill a replica in the middle
            # the log goes to a file (a pipe nobody reads would fill up and stop the replica)
            proc = subprocess.Popen([*zarrgate_bin(), "serve", "--config", str(config)], stdout=subprocess.PIPE,
                                    stderr=open(self.root / f"replica{i}.log", "w"), text=True,
                                    env={**os.environ, "ZARRGATE_TEST_COMPUTE_DELAY_MS": "3000"})
            for line in iter(proc.stdout.readline, ""):
                if line.startswith("listening on "):
                    self.replicas.append((proc, line.split()[-1].strip()))
                    break
            else:
                raise AssertionError(f"replica {i} did not start: {(self.root / f'replica{i}.log').read_text()[-2000:]}")
        self.lb = start_proxy([e for _, e in self.replicas], self.root / "nginx")
        assert self.wait_ready(200, 30), "the replicas never became ready"

    def wait_ready(self, status: int, seconds: float) -> bool:
        """Waits until every replica's /readyz answers `status`; false if that took too long."""
        deadline = time.monotonic() + seconds
        while not all(request(f"{e}/readyz").status == status for _, e in self.replicas):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def publish(self) -> str:
        """Indexes the data and publishes the catalog to the replicas' shared directory."""
        subprocess.run([*zarrgate_bin(), "index", str(self.data), "--out", str(self.work_catalog)], check=True,
                       capture_output=True)
        return subprocess.run([*zarrgate_bin(), "publish", str(self.work_catalog), "--to", str(self.shared)],
                              check=True, capture_output=True, text=True).stdout

    def stop(self) -> None:
        if self.lb:
            self.lb.stop()
        for proc, _ in self.replicas:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.pg.remove()
        self.moto.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("replicas"))
    try:
        c.start()
        yield c
    finally:
        c.stop()  # also when start failed half-way: nothing outlives the tests


def bearer(key: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key[0]}:{key[1]}"}


def test_a_key_quota_holds_exactly_across_replicas(cluster):
    url = f"{cluster.lb.endpoint}/closed/{DATASET}/.zmetadata"
    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(lambda _: request(url, bearer(cluster.quota_key)), range(3 * BURST)))
    statuses = [r.status for r in replies]
    assert statuses.count(200) == BURST, statuses
    refused = [r for r in replies if r.status != 200]
    assert all(r.status == 503 and b"<Code>SlowDown</Code>" in r.body and int(r.headers["retry-after"]) >= 1
               for r in refused), refused[:2]
    # every replica answered some of them: the quota was not one replica's
    served = {e: 0 for _, e in cluster.replicas}
    for _, endpoint in cluster.replicas:
        served[endpoint] = request(f"{endpoint}/closed/{DATASET}/.zmetadata", bearer(cluster.quota_key)).status
    assert set(served.values()) == {503}, served


def test_a_revoked_key_is_refused_by_every_replica_within_a_second(cluster):
    key = cluster.create_key("revoked")
    time.sleep(0.6)
    for _, endpoint in cluster.replicas:
        assert request(f"{endpoint}/closed/{DATASET}/.zmetadata", bearer(key)).status == 200
    subprocess.run([*zarrgate_bin(), "keys", "revoke", "--db", cluster.pg.url, key[0]], check=True,
                   capture_output=True)
    t0 = time.monotonic()
    pending = {e for _, e in cluster.replicas}
    took = {}
    while pending and time.monotonic() - t0 < 3:
        for endpoint in sorted(pending):
            r = request(f"{endpoint}/closed/{DATASET}/.zmetadata", bearer(key))
            if r.status == 403:
                assert b"revoked" in r.body, r.body
                took[endpoint] = time.monotonic() - t0
                pending.discard(endpoint)
        time.sleep(0.02)
    assert not pending, f"still accepted after 3 s by {pending}"
    assert max(took.values()) <= 1.0, took


def test_with_the_database_down_public_reads_go_on_and_keys_wait(cluster):
    public = f"{cluster.lb.endpoint}/open/{DATASET}/.zmetadata"
    closed = f"{cluster.lb.endpoint}/closed/{DATASET}/.zmetadata"
    assert request(closed, bearer(cluster.reader)).status == 200
    cluster.pg.stop()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            replies = [request(closed, bearer(cluster.reader)) for _ in range(3)]
            if all(r.status == 503 for r in replies):
                break
            time.sleep(0.1)
        for r in replies:
            assert r.status == 503 and b"<Code>ServiceUnavailable</Code>" in r.body, (r.status, r.body)
            assert r.headers["retry-after"] == "1"
        # no key passes, not even a known one, and public data is served as before
        for _ in range(6):
            assert request(public).status == 200
        ops = request(f"{cluster.lb.endpoint}/ops/v1/average?dataset=closed/{DATASET}&var=tas&dims=time",
                      bearer(cluster.reader))
        assert ops.status == 503 and ops.headers["content-type"] == "application/problem+json", ops
        for _, endpoint in cluster.replicas:
            assert request(f"{endpoint}/readyz").status == 503
            assert request(f"{endpoint}/healthz").status == 200
    finally:
        cluster.pg.start()
    # back by itself, on every replica
    cluster.wait_ready(200, 10)
    for _, endpoint in cluster.replicas:
        assert request(f"{endpoint}/readyz").status == 200
        assert request(f"{endpoint}/closed/{DATASET}/.zmetadata", bearer(cluster.reader)).status == 200


def test_a_published_catalog_reaches_every_replica(cluster):
    shutil.copy(FIXTURES / "classic.nc", cluster.data / "classic.nc")
    said = cluster.publish()
    assert said.startswith("published generation "), said
    t0 = time.monotonic()
    pending = {e for _, e in cluster.replicas}
    while pending and time.monotonic() - t0 < 5:
        for endpoint in sorted(pending):
            if request(f"{endpoint}/open/classic.nc/.zmetadata").status == 200:
                pending.discard(endpoint)
        time.sleep(0.05)
    assert not pending, f"not served after 5 s by {pending}"
    assert time.monotonic() - t0 < 2.5
    # publishing again without a change writes nothing
    assert "is already at generation" in cluster.publish()
    # the replicas only read: no journal, WAL or lock files beside the snapshots, which are kept
    # to the last few
    names = sorted(p.name for p in cluster.shared.iterdir())
    assert names[0] == "CURRENT" and all(n.startswith("catalog-") and n.endswith(".db") for n in names[1:]), names
    assert 1 <= len(names) - 1 <= 3, names
    # a dataset removed from the tree and published away answers 404 everywhere
    (cluster.data / "classic.nc").unlink()
    cluster.publish()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if all(request(f"{e}/open/classic.nc/.zmetadata").status in (404, 503) for _, e in cluster.replicas):
            break
        time.sleep(0.05)
    for _, endpoint in cluster.replicas:
        assert request(f"{endpoint}/open/classic.nc/.zmetadata").status in (404, 503)


def computations(cluster) -> int:
    """Averages computed by all replicas together (their Prometheus counters)."""
    total = 0
    for _, endpoint in cluster.replicas:
        text = request(f"{endpoint}/metrics", bearer(cluster.reader)).body.decode()
        found = re.search(r'^zarrgate_ops_computations_total\{process="average"\} (\d+)', text, re.M)
        total += int(found.group(1)) if found else 0
    return total


def test_the_same_average_through_every_replica_is_computed_once(cluster):
    query = f"/ops/v1/average?dataset=open/{DATASET}&var=tas&dims=lat,lon&format=nc"
    before = computations(cluster)
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda e: request(f"{e}{query}"), [e for _, e in cluster.replicas] * 2))
    assert all(r.status == 200 for r in replies), [(r.status, r.body[:200]) for r in replies]
    assert len({r.body for r in replies}) == 1, "every replica answers the same bytes"
    assert computations(cluster) - before == 1
    # and later requests anywhere are hits
    for _, endpoint in cluster.replicas:
        again = request(f"{endpoint}{query}")
        assert again.status == 200 and again.headers["x-zarrgate-cache"] == "hit" and again.body == replies[0].body
    assert computations(cluster) - before == 1


def test_with_the_object_store_down_operations_answer_and_jobs_wait(cluster):
    cluster.moto.stop()
    try:
        cluster.wait_ready(503, 10)
        for _, endpoint in cluster.replicas:
            assert request(f"{endpoint}/readyz").body == b"the shared object store is unreachable\n"
        # computed here, not shared
        fresh = request(f"{cluster.lb.endpoint}/ops/v1/average?dataset=open/{DATASET}&var=tas&dims=time&format=nc")
        assert fresh.status == 200 and fresh.headers["x-zarrgate-cache"] == "miss", fresh
        # a job needs the shared store: refused, clearly
        job = request(f"{cluster.lb.endpoint}/ops/v1/average?dataset=open/{DATASET}&var=tas&dims=lon&format=nc",
                      {"Prefer": "respond-async"})
        assert job.status == 503 and b"store-unavailable" in job.body and job.headers["retry-after"] == "5", job
        # chunk reads are not affected
        assert request(f"{cluster.lb.endpoint}/open/{DATASET}/.zmetadata").status == 200
    finally:
        cluster.moto.start()
        cluster.moto.create_bucket("zarrgate-ops")
    assert cluster.wait_ready(200, 10), "the replicas did not recover"


def test_an_async_job_outlives_its_replica(cluster):
    """Last in this file: it kills replica 0."""
    query = f"/ops/v1/average?dataset=open/{DATASET}&var=tas&dims=lat&format=nc"
    proc0, ep0 = cluster.replicas[0]
    accepted = request(f"{ep0}{query}", {"Prefer": "respond-async"})
    assert accepted.status == 202, accepted
    location = accepted.headers["location"]
    time.sleep(1.0)  # the job is shared before its 202, and now runs (for 3 s)
    proc0.kill()
    proc0.wait()
    others = [e for _, e in cluster.replicas[1:]]
    t0 = time.monotonic()
    status = None
    while time.monotonic() - t0 < 60:
        reply = request(f"{others[0]}{location}")
        if reply.status == 200:
            status = json.loads(reply.body)["status"]
            if status == "successful":
                break
        time.sleep(0.5)
    assert status == "successful", (status, reply.status, reply.body[:300])
    took = time.monotonic() - t0
    # its result, from any replica and through the balancer (each learns of the job's end within
    # a beat, a second), equals the same request answered now
    def result(endpoint: str):
        deadline = time.monotonic() + 5
        while True:
            r = request(f"{endpoint}{location}/results")
            if r.status == 200 or time.monotonic() > deadline:
                return r
            time.sleep(0.2)

    results = [result(e) for e in [*others, cluster.lb.endpoint]]
    assert all(r.status == 200 for r in results), [(r.status, r.body[:300] if r.status != 200 else b"") for r in results]
    direct = request(f"{others[1]}{query}")
    assert direct.status == 200 and all(r.body == direct.body for r in results)
    assert took < 30, took

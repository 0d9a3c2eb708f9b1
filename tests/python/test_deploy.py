"""The deployment files: the Kubernetes manifests validate offline against the API schemas, and
what they run works.

- ``deploy/kubernetes`` is rendered as kustomize renders it (its resources, with the common
  labels) and every object is validated with ``kubernetes-validate`` in strict mode against the
  oldest and the newest Kubernetes versions we support.
- The index Job's script runs as written on the fixtures (paths moved under a temporary
  directory), and a gateway started with the ConfigMap's ``zarrgate.toml`` serves what it
  published; the probes, ports and grace period agree with the gateway and the Dockerfile.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from gateway import REPO, zarrgate_bin
from servers import request

BASE = REPO / "deploy" / "kubernetes"
FIXTURES = REPO / "fixtures" / "data" / "good"
VERSIONS = ("1.30.0", "1.37.0")
#: the gateway's drain after SIGTERM (gateway/src/server.rs, shutdown_grace)
SHUTDOWN_GRACE = 10


def render() -> list[dict]:
    """The objects `kubectl apply -k deploy/kubernetes` creates."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    labels: dict = {}
    for entry in kustomization.get("labels", []):
        labels.update(entry["pairs"])
    assert set(kustomization) <= {"apiVersion", "kind", "labels", "resources"}, \
        "the base uses only resources and labels, which render() applies"
    objects = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((BASE / name).read_text()):
            if doc:
                doc["metadata"].setdefault("labels", {}).update(labels)
                objects.append(doc)
    return objects


def by_kind(kind: str) -> list[dict]:
    return [o for o in render() if o["kind"] == kind]


def test_every_manifest_is_listed_and_validates_against_the_api_schemas():
    import kubernetes_validate

    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    objects = render()
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == ["ConfigMap", "CronJob", "Deployment", "HorizontalPodAutoscaler", "Job",
                     "PersistentVolumeClaim", "PodDisruptionBudget", "Secret", "Service"], kinds
    for version in VERSIONS:
        for o in objects:
            kubernetes_validate.validate(o, version, strict=True)


def test_the_deployment_matches_the_gateway_and_the_image():
    (deployment,) = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] >= 2
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + SHUTDOWN_GRACE
    dockerfile = (REPO / "Dockerfile").read_text()
    uid = re.search(r"^USER (\d+)", dockerfile, re.M).group(1)
    assert pod["securityContext"]["runAsUser"] == int(uid) and pod["securityContext"]["runAsNonRoot"]
    assert "EXPOSE 9000" in dockerfile and container["ports"][0]["containerPort"] == 9000
    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    (service,) = by_kind("Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (secret,) = by_kind("Secret")
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert {"ZARRGATE_AUTH_DB", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])


def test_the_index_job_publishes_what_the_configured_gateway_serves(tmp_path):
    (job,) = by_kind("Job")
    (cron,) = by_kind("CronJob")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0] == script
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    moved = {"/data": str(data), "/var/lib/zarrgate/index": str(tmp_path / "index"),
             "/srv/catalogs": str(tmp_path / "catalogs")}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "zarrgate").write_text("#!/bin/sh\nexec " + " ".join(zarrgate_bin()) + ' "$@"\n')
    (bin_dir / "zarrgate").chmod(0o755)
    for old, new in moved.items():
        script = re.sub(rf"(?<![\w/]){re.escape(old)}(?=/|\s|$)", new, script)
    import os

    proc = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "published generation" in proc.stdout, proc.stdout

    (config_map,) = by_kind("ConfigMap")
    toml = config_map["data"]["zarrgate.toml"]
    toml = toml.replace('listen = "0.0.0.0:9000"', 'listen = "127.0.0.1:0"')
    toml = toml.replace('"/var/cache/zarrgate/ops"', f'"{tmp_path / "ops"}"')
    toml = toml.replace('"/srv/catalogs/', f'"{tmp_path / "catalogs"}/')
    # the object store of shared results is exercised by test_replicas.py (moto); here its line
    # must parse, then is left out
    assert re.search(r'^store = "s3://[^"]+"$', toml, re.M)
    toml = re.sub(r'^store = .*$', "", toml, flags=re.M)
    config = tmp_path / "zarrgate.toml"
    config.write_text(toml)
    gw = subprocess.Popen([*zarrgate_bin(), "serve", "--config", str(config)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "ZARRGATE_AUTH_DB": str(tmp_path / "auth.db")})
    try:
        endpoint = None
        for line in iter(gw.stdout.readline, ""):
            if line.startswith("listening on "):
                endpoint = line.split()[-1].strip()
                break
        assert endpoint, gw.stderr.read()[-2000:]
        deadline = time.monotonic() + 30
        while request(f"{endpoint}/readyz").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        bucket = re.search(r'bucket = "(\w+)"', toml).group(1)
        assert request(f"{endpoint}/{bucket}/cal_noleap.nc/.zmetadata").status == 200
    finally:
        gw.terminate()
        gw.wait(timeout=30)


@pytest.mark.parametrize("path", ["Dockerfile", ".dockerignore"])
def test_the_image_builds_the_one_binary_as_a_user_of_its_own(path):
    text = (REPO / path).read_text()
    if path == "Dockerfile":
        stages = re.findall(r"^FROM (\S+)", text, re.M)
        assert len(stages) == 2 and stages[1].endswith("-slim"), stages
        assert "cargo build --release --locked -p zarrgate" in text
        assert re.search(r"^USER 10001", text, re.M) and 'ENTRYPOINT ["/usr/local/bin/zarrgate"]' in text
    else:
        assert {"target", ".venv", ".git"} <= set(text.split())

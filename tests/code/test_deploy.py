"""deploy/kubernetes, validated offline: every manifest against Kubernetes' own schemas (strict:
an unknown or misspelt field fails), and the parts that must agree with each other and with the
code (labels, ports, probes, the environment the service reads, the Secret's keys) checked."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mmfuse.inference.log import CAPTURE_ENV, LOG_ENV
from mmfuse.serving.auth import TOKEN_ENV

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
VERSION = kubernetes_validate.latest_version()


def manifests() -> dict[str, dict[str, Any]]:
    """{kind: manifest} of the files the kustomization applies."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = [yaml.safe_load((DEPLOY / name).read_text()) for name in kustomization["resources"]]
    return {doc["kind"]: doc for doc in docs}


def test_the_kustomization_applies_every_manifest_in_the_folder() -> None:
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert set(manifests()) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"}


@pytest.mark.parametrize("kind", ["Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"])
def test_each_manifest_is_valid_kubernetes(kind: str) -> None:
    kubernetes_validate.validate(manifests()[kind], VERSION, strict=True)


def test_the_validator_refuses_a_misspelt_field() -> None:
    broken = copy.deepcopy(manifests()["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_service_autoscaler_and_volume_point_at_the_deployment() -> None:
    found = manifests()
    deployment, service, hpa, claim = (
        found[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim")
    )
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in _container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2  # a rolling update or a lost node never leaves no replica
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["captured"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica writes captures


def test_probes_resources_and_the_environment_the_service_reads() -> None:
    container = _container(manifests()["Deployment"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    env = {e["name"]: e for e in container["env"]}
    secret_keys = {name: env[name]["valueFrom"]["secretKeyRef"] for name in (LOG_ENV, TOKEN_ENV)}
    assert {ref["name"] for ref in secret_keys.values()} == {"mmfuse"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env[CAPTURE_ENV]["value"] in mounts
    # The README's one command that creates the Secret names the keys the Deployment reads.
    readme = (ROOT / "README.md").read_text()
    [command] = re.findall(r"kubectl create secret generic mmfuse[^\n]*(?:\\\n[^\n]*)*", readme)
    assert sorted(re.findall(r"--from-literal=([\w-]+)=", command)) == sorted(r["key"] for r in secret_keys.values())

"""The Kubernetes manifests validate against the API schemas that kubernetes-validate ships (no cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37"
MANIFESTS = sorted(str(p.relative_to(K8S)) for p in K8S.rglob("*.yaml"))


def resources(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def by_kind() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for name in MANIFESTS for doc in resources(name)}


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_strictly(name: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for resource in resources(name):
        # strict: unknown fields are errors; a kind with no schema raises SchemaNotFoundError.
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_validation_rejects_a_misspelt_field() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    statefulset = by_kind()["StatefulSet"]
    statefulset["spec"]["template"]["spec"]["terminationGracePeriod"] = 300
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


def test_headless_service_publishes_srv_records_for_peer_before_ready() -> None:
    service = by_kind()["Service"]["spec"]
    assert service["clusterIP"] == "None"
    assert service["publishNotReadyAddresses"] is True
    assert {"name": "peer", "port": 7000, "targetPort": "peer", "protocol": "TCP"} in service["ports"]


def test_statefulset_discovers_through_that_service() -> None:
    kinds = by_kind()
    statefulset = kinds["StatefulSet"]["spec"]
    service_name = kinds["Service"]["metadata"]["name"]
    assert statefulset["serviceName"] == service_name
    [container] = statefulset["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert (
        env["MOESWARM_DISCOVERY"]["value"]
        == f"srv:_peer._tcp.{service_name}.$(POD_NAMESPACE).svc.cluster.local"
    )
    assert list(env).index("POD_NAMESPACE") < list(env).index("MOESWARM_DISCOVERY")  # $(VAR) needs it first


def test_gpu_pod_with_its_own_volume_secrets_and_probes() -> None:
    kinds = by_kind()
    statefulset = kinds["StatefulSet"]["spec"]
    pod = statefulset["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    [claim] = statefulset["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    assert (
        pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == 10001
    )  # Dockerfile.gpu USER
    env = {e["name"]: e for e in container["env"]}
    secret = kinds["Secret"]["metadata"]["name"]
    for name, key in (("MOESWARM_CLUSTER_KEY", "cluster-key"), ("MOESWARM_ADMIN_TOKEN", "admin-token")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}
        assert key in kinds["Secret"]["stringData"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}


def test_the_example_secret_is_not_applied_with_the_directory() -> None:
    """`kubectl apply -f deploy/k8s/` does not recurse: the placeholder Secret stays out of a cluster."""
    applied = [doc["kind"] for p in K8S.glob("*.yaml") for doc in resources(p.name)]
    assert "StatefulSet" in applied
    assert "Secret" not in applied
    assert (K8S / "example" / "secret.yaml").exists()

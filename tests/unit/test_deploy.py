"""Every manifest under deploy/ is valid: Kubernetes schemas, our config contract, Envoy itself."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ext_authz.config import parse_settings
from ext_authz.dev.stack import envoy_binary

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.33.0"
# Custom resources have no schema in kubernetes-validate: their shape is checked here instead.
CUSTOM = {
    ("monitoring.coreos.com/v1", "PodMonitor"): ("selector", "podMetricsEndpoints"),
    ("security.istio.io/v1", "AuthorizationPolicy"): ("selector", "action", "provider"),
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted([*DEPLOY.glob("kubernetes/*.yaml"), *DEPLOY.glob("istio/*.yaml")]):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((f"{path.relative_to(REPO)}#{i}", doc))
    return out


DOCS = documents()


def test_there_are_manifests() -> None:
    kinds = {d["kind"] for _, d in DOCS}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "StatefulSet"} <= kinds
    assert {"PodMonitor", "AuthorizationPolicy"} <= kinds


@pytest.mark.parametrize(("where", "doc"), DOCS, ids=[w for w, _ in DOCS])
def test_manifest_is_valid(where: str, doc: dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM:
        assert doc["metadata"]["name"]
        for field in CUSTOM[key]:
            assert field in doc["spec"], f"{where}: spec.{field} is missing"
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [(w, d["spec"]["template"]["spec"]) for w, d in DOCS if d["kind"] in ("Deployment", "StatefulSet")]


@pytest.mark.parametrize(("where", "pod"), _pod_specs(), ids=[w for w, _ in _pod_specs()])
def test_pods_run_as_non_root_with_read_only_root_filesystems(where: str, pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, (
            where,
            c["name"],
        )


def test_the_ext_authz_configs_in_configmaps_follow_the_contract() -> None:
    found = 0
    for _, doc in DOCS:
        if doc["kind"] == "ConfigMap" and "config.yaml" in doc.get("data", {}):
            parse_settings(doc["data"]["config.yaml"], Path("/etc/ext-authz/config.yaml"))
            found += 1
    assert found == 2


def test_the_istio_provider_matches_the_shared_service() -> None:
    mesh = yaml.safe_load(
        next(d for _, d in DOCS if d["kind"] == "ConfigMap" and "mesh" in d["data"])["data"]["mesh"]
    )
    provider = mesh["extensionProviders"][0]
    assert (
        provider["envoyExtAuthzGrpc"]["port"] == 9191 and provider["envoyExtAuthzGrpc"]["failOpen"] is False
    )
    policy = next(d for _, d in DOCS if d["kind"] == "AuthorizationPolicy")
    assert policy["spec"]["action"] == "CUSTOM" and policy["spec"]["provider"]["name"] == provider["name"]


@pytest.mark.parametrize("config", sorted(DEPLOY.glob("envoy/*.yaml")), ids=lambda p: p.name)
def test_envoy_configs_validate(config: Path) -> None:
    res = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_dockerfile_runs_as_non_root_with_a_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "\nUSER 10001" in text and "HEALTHCHECK" in text and 'ENTRYPOINT ["ext-authz"]' in text

"""The Helm chart (deploy/helm/ext-authz) rendered for tests: `helm template` with chosen values, read
back with a YAML loader that refuses duplicate keys (the Kubernetes API refuses them too).

The value combinations the tests cover are ``CASES``; each names the Secrets and ConfigMaps its values
say exist already (an ``existing…`` value, or istiod's root certificate ConfigMap) — everything else a
pod refers to must be rendered by the chart.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ext_authz.dev import pki, tools
from tests.conftest import REPO

__all__ = [
    "CASES",
    "CHART",
    "K8S_VERSION",
    "NAMESPACE",
    "RELEASE",
    "Case",
    "HelmError",
    "Rendered",
    "helm",
    "istioctl",
    "load_all",
    "notes",
    "render",
    "render_values",
]

CHART = REPO / "deploy/helm/ext-authz"
K8S_VERSION = "1.33.0"
RELEASE, NAMESPACE = "ext-authz", "authz"
ENVOY_IDS = ["spiffe://example.org/ns/edge/sa/gateway", "spiffe://example.org/ns/backend/sa/api"]
ISTIO_CA = ("ConfigMap", "istio-ca-root-cert")  # istiod writes it into every namespace


class HelmError(Exception):
    """helm refused the values: the message is its stderr."""


def helm() -> Path:
    return tools.executable("helm", "helm")


def istioctl() -> Path:
    return tools.executable("istioctl", "istioctl")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML where a key given twice in one mapping is an error, not a silent overwrite."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_all(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(text, Loader=_UniqueKeyLoader) if d]


@functools.cache
def _template(values_json: str, release: str, namespace: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        f.write(values_json)
        f.flush()
        argv = [str(helm()), "template", release, str(CHART), "-n", namespace]
        argv += ["--kube-version", K8S_VERSION, "-f", f.name]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise HelmError(res.stderr.strip())
    return res.stdout


@dataclass(frozen=True)
class Rendered:
    docs: tuple[dict[str, Any], ...]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    def names(self, kind: str) -> set[str]:
        return {d["metadata"]["name"] for d in self.of(kind)}

    def workloads(self) -> Iterator[dict[str, Any]]:
        yield from (d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet"))

    def ext_authz_config(self) -> str:
        text: str = self.get("ConfigMap", f"{RELEASE}-config")["data"]["config.yaml"]
        return text

    def envoy_config(self) -> str | None:
        cms = [d for d in self.of("ConfigMap") if "envoy.yaml" in d.get("data", {})]
        return str(cms[0]["data"]["envoy.yaml"]) if cms else None

    def deployment(self) -> dict[str, Any]:
        return self.get("Deployment", RELEASE)

    def container(self, name: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [
            c for w in self.workloads() for c in w["spec"]["template"]["spec"]["containers"]
        ]
        matching = [c for c in found if c["name"] == name]
        assert len(matching) == 1, name
        return matching[0]


def render_values(values: Mapping[str, Any], release: str = RELEASE, namespace: str = NAMESPACE) -> Rendered:
    text = _template(json.dumps(values, sort_keys=True), release, namespace)
    return Rendered(tuple(load_all(text)))


_NOTES_PROBE = """apiVersion: v1
kind: ConfigMap
metadata: {name: notes}
data:
  notes: {{ include "ext-authz.notes" . | toJson }}
"""


@functools.cache
def _notes(values_json: str) -> str:
    """What NOTES.txt prints for these values. `helm install --dry-run` wants a cluster here, so a copy of
    the chart gets one more template that renders the same named template ("ext-authz.notes")."""
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "ext-authz"
        shutil.copytree(CHART, chart)
        assert (chart / "templates/NOTES.txt").read_text().strip() == '{{- include "ext-authz.notes" . }}'
        (chart / "templates/notes-probe.yaml").write_text(_NOTES_PROBE)
        values = Path(tmp) / "values.json"
        values.write_text(values_json)
        argv = [str(helm()), "template", RELEASE, str(chart), "-n", NAMESPACE, "--kube-version", K8S_VERSION]
        argv += ["-f", str(values), "--show-only", "templates/notes-probe.yaml"]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise HelmError(res.stderr.strip())
    return str(load_all(res.stdout)[0]["data"]["notes"])


def notes(values: Mapping[str, Any]) -> str:
    return _notes(json.dumps(values, sort_keys=True))


@dataclass(frozen=True)
class Case:
    name: str
    values: Mapping[str, Any] = field(default_factory=dict)
    # (kind, name) of objects the values say are provided outside the chart
    provided: frozenset[tuple[str, str]] = frozenset()

    @property
    def mode(self) -> str:
        return str(self.values.get("mode", "sidecar"))

    @property
    def terminator(self) -> bool:
        """Shared mode, the pod's Envoy terminating the callers' mTLS (check.terminator, default envoy)."""
        return (
            self.mode == "shared"
            and not self.values.get("istio", {}).get("enabled")
            and self.values.get("check", {}).get("terminator", "envoy") == "envoy"
        )

    @property
    def envoy(self) -> bool:
        """An Envoy container in the pod (the sidecar's or the terminator)."""
        return self.mode == "sidecar" or self.terminator


def render(case: Case) -> Rendered:
    return render_values(case.values)


@functools.cache
def _ca_pem() -> str:
    return pki.make_ca("chart test root", spiffe_td="example.org").pem


def _inline_bundles() -> dict[str, Any]:
    return {"example.org": {"x509": _ca_pem(), "jwt": json.dumps({"keys": []})}}


SHARED: dict[str, Any] = {"mode": "shared", "check": {"allowedSpiffeIds": ENVOY_IDS}}
EXISTING_BUNDLES = {
    "existingConfigMap": "example-org-bundles",
    "trustDomains": {"example.org": {"x509Key": "example.org.pem", "jwtKey": "example.org.jwks.json"}},
}

CASES: tuple[Case, ...] = (
    Case("sidecar"),
    Case(
        "sidecar-bundle-files",
        {"spiffe": {"workloadApi": False, "bundles": {"trustDomains": _inline_bundles()}}},
    ),
    Case(
        "sidecar-existing-bundles",
        {"spiffe": {"workloadApi": False, "bundles": EXISTING_BUNDLES}},
        frozenset({("ConfigMap", "example-org-bundles")}),
    ),
    Case(
        "sidecar-federated-and-files",
        {
            "spiffe": {
                "federatedTrustDomains": ["partner.org"],
                "bundles": {"trustDomains": {"legacy.example": {"x509": _ca_pem()}}},
            }
        },
    ),
    Case(
        "sidecar-redis-prometheus",
        {
            "state": {"backend": "redis"},
            "metrics": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        },
    ),
    Case("shared", SHARED),
    Case(
        "shared-bundle-files",
        {
            **SHARED,
            "spiffe": {"workloadApi": False, "bundles": {"trustDomains": _inline_bundles()}},
            "check": {**SHARED["check"], "tls": {"existingSecret": "ext-authz-check-tls"}},
        },
        frozenset({("Secret", "ext-authz-check-tls")}),
    ),
    Case(
        "shared-existing-secrets",
        {
            **SHARED,
            "state": {"hmacKey": {"existingSecret": "authz-hmac", "key": "key"}},
            "redis": {
                "auth": {"existingSecret": "authz-redis", "key": "pw"},
                "tls": {"existingSecret": "authz-redis-tls"},
            },
        },
        frozenset({("Secret", "authz-hmac"), ("Secret", "authz-redis"), ("Secret", "authz-redis-tls")}),
    ),
    Case(
        "shared-external-redis",
        {
            **SHARED,
            "redis": {
                "deploy": False,
                "db": 2,
                "auth": {"existingSecret": "redis-credentials", "username": "ext-authz"},
                "external": {
                    "host": "redis.example.net",
                    "port": 6380,
                    "tls": {"caSecret": "redis-ca", "caKey": "ca.pem"},
                },
            },
        },
        frozenset({("Secret", "redis-credentials"), ("Secret", "redis-ca")}),
    ),
    Case(
        "shared-external-redis-configmap-ca",
        {
            **SHARED,
            "redis": {
                "deploy": False,
                "auth": {"existingSecret": "redis-credentials"},
                "external": {"host": "redis.example.net", "tls": {"caConfigMap": "redis-ca"}},
            },
            "metrics": {
                "podMonitor": {"enabled": True, "namespace": "monitoring", "labels": {"release": "prom"}},
                "prometheusRule": {"enabled": True, "namespace": "monitoring", "labels": {"release": "prom"}},
            },
        },
        frozenset({("Secret", "redis-credentials"), ("ConfigMap", "redis-ca")}),
    ),
    Case(
        "shared-external-redis-system-cas",
        {
            **SHARED,
            "redis": {
                "deploy": False,
                "auth": {"existingSecret": "redis-credentials"},
                "external": {"host": "r.example"},
            },
        },
        frozenset({("Secret", "redis-credentials")}),
    ),
    Case(
        "shared-external-redis-plaintext",
        {
            **SHARED,
            "redis": {
                "deploy": False,
                "auth": {"existingSecret": "redis-credentials"},
                "external": {"host": "r.example", "tls": {"enabled": False}},
            },
        },
        frozenset({("Secret", "redis-credentials")}),
    ),
    Case(
        "shared-external-redis-sentinel",
        {
            **SHARED,
            "state": {"waitReplicas": 1, "waitTimeout": "500ms"},
            "redis": {
                "deploy": False,
                "auth": {"existingSecret": "redis-credentials"},
                "external": {
                    "sentinels": ["redis-sentinel.redis.svc:26379"],
                    "masterName": "MyMaster",
                    "sentinelAuth": {"existingSecret": "sentinel-credentials"},
                },
            },
        },
        frozenset({("Secret", "redis-credentials"), ("Secret", "sentinel-credentials")}),
    ),
    Case(
        "shared-grpcio-terminates",
        {**SHARED, "check": {**SHARED["check"], "terminator": "ext-authz"}},
    ),
    Case(
        "shared-grpcio-terminates-bundle-files",
        {
            **SHARED,
            "spiffe": {"workloadApi": False, "bundles": {"trustDomains": _inline_bundles()}},
            "check": {
                **SHARED["check"],
                "terminator": "ext-authz",
                "tls": {"existingSecret": "ext-authz-check-tls"},
            },
        },
        frozenset({("Secret", "ext-authz-check-tls")}),
    ),
    Case(
        "shared-istio",
        {
            "mode": "shared",
            "istio": {"enabled": True, "allowedPrincipals": ["cluster.local/ns/backend/sa/backend"]},
        },
        frozenset({ISTIO_CA}),
    ),
    Case("sidecar-no-networkpolicy", {"networkPolicy": {"enabled": False}, "replicas": 1}),
)

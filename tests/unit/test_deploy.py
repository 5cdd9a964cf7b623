"""What deploy/ ships besides the Helm chart (tests/unit/test_helm.py): the Docker image's recipe, the
licence, and no raw Kubernetes manifests that could drift from the chart again."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
# sha256 of the Apache License 2.0 as published (https://www.apache.org/licenses/LICENSE-2.0.txt).
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_dockerfile_runs_as_non_root_with_a_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "\nUSER 10001" in text and "HEALTHCHECK" in text and 'ENTRYPOINT ["ext-authz"]' in text


def test_dockerfile_base_images_are_pinned() -> None:
    """Every stage starts from a Python patch release on a named Debian release, never a floating tag."""
    froms = re.findall(r"^FROM\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert len(froms) == 2
    for image in froms:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", image), image
    assert len(set(froms)) == 1  # build and runtime on the same Python


def test_license_is_the_apache_license_verbatim() -> None:
    data = (REPO / "LICENSE").read_bytes()
    lines = [line.strip() for line in data.decode().splitlines() if line.strip()]
    assert lines[:2] == ["Apache License", "Version 2.0, January 2004"]
    assert hashlib.sha256(data).hexdigest() == APACHE_2_0_SHA256
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"


def test_no_raw_manifests_beside_the_chart() -> None:
    """Kubernetes objects come from the chart (tested); the only other YAML is istiod's values and the
    Prometheus rule file with its promtool tests (the chart renders the same rules; test_alerts.py)."""
    outside = sorted(
        str(p.relative_to(DEPLOY))
        for p in DEPLOY.rglob("*.y*ml")
        if not p.is_relative_to(DEPLOY / "helm/ext-authz")
    )
    assert outside == [
        "istio/istiod-values.yaml",
        "prometheus/ext-authz.rules.test.yaml",
        "prometheus/ext-authz.rules.yaml",
    ]
    assert (DEPLOY / "prometheus/ext-authz.rules.yaml").resolve() == (
        DEPLOY / "helm/ext-authz/files/prometheus-rules.yaml"
    ).resolve()  # one file: a link to the chart's


def test_the_grafana_dashboard_is_a_dashboard() -> None:
    dash = json.loads((DEPLOY / "grafana/ext-authz.json").read_text())
    queried = [json.dumps(p["targets"]) for p in dash["panels"] if p.get("targets")]
    assert queried and all("ext_authz_" in q or "process_" in q for q in queried)

"""What deploy/ ships besides the Helm chart (tests/tools/test_helm.py): the Docker image's recipe and its
build context, the licence, and no raw Kubernetes manifests that could drift from the chart again.

No Docker daemon runs here, so the image is not built: the recipe is checked to install only what
uv.lock and tools/uv/requirements.txt pin, and .dockerignore is evaluated with Docker's own matching
rules against the paths a build context must never hold."""

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


def test_dockerfile_installs_only_what_the_lock_pins() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    runs = " ".join(re.findall(r"^RUN (.*?)(?<!\\)$", text.replace("\\\n", " "), re.M | re.S))
    installs = re.findall(r"pip install ([^&]*)", runs)
    assert len(installs) == 3
    uv, deps, wheel = installs
    assert "--require-hashes -r tools/uv/requirements.txt" in uv
    assert "--require-hashes -r /tmp/requirements.txt" in deps and "--no-deps" in deps
    assert "--no-deps /tmp/dist/*.whl" in wheel  # the project itself, nothing resolved
    assert "uv export --frozen --no-default-groups --extra native --extra tracing" in runs
    assert "COPY pyproject.toml uv.lock" in text


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """One .dockerignore line as Docker reads it (moby's patternmatcher): relative to the context root,
    `*` and `?` within a path element, `**` across any number of them."""
    pattern = pattern.strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def _ignored(path: str, lines: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the context: the last matching line decides, and a path
    inside an excluded directory is excluded."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for line in lines:
        negate = line.startswith("!")
        regex = _docker_pattern(line[1:] if negate else line)
        if any(regex.match(p) for p in prefixes):
            verdict = not negate
    return verdict


def test_the_docker_context_holds_no_environment_demo_results_or_keys() -> None:
    lines = [
        s for s in ((REPO / ".dockerignore").read_text().splitlines()) if s.strip() and not s.startswith("#")
    ]
    kept_out = [
        ".venv/lib/python3.11/site-packages/grpc/__init__.py",
        ".venv-latest/bin/python",
        "demo/config.yaml",
        "demo/svid/frontend.key",
        "demo/bundle/root.pem",
        "demo/.run/decisions.log",
        "bench/results/envoy.md",
        "dist/ext_authz-0.1.0-py3-none-any.whl",
        "site/index.html",
        ".git/config",
        "tests/data/k8s/some.key",
        "anywhere/deep/server.key",
        "keys/issuer.pem",
        "state-hmac-key",
        "secrets/redis-password",
        "ext_authz/__pycache__/cli.cpython-311.pyc",
    ]
    for path in kept_out:
        assert _ignored(path, lines), f"{path} would be sent to the Docker daemon"
    # what the Dockerfile copies must stay in
    text = (DEPLOY / "Dockerfile").read_text()
    copied = [w for line in re.findall(r"^COPY (?!--from)(.*)$", text, re.M) for w in line.split()[:-1]]
    assert set(copied) == {
        "tools/uv/requirements.txt",
        "pyproject.toml",
        "uv.lock",
        "README.md",
        "LICENSE",
        "ext_authz",
    }
    for path in [*copied, "ext_authz/cli.py", "ext_authz/_proto/envoy/external_auth_pb2.py"]:
        assert not _ignored(path, lines), f"{path} is needed by the build and ignored"
        assert (REPO / path).exists()


def test_license_is_the_apache_license_verbatim() -> None:
    data = (REPO / "LICENSE").read_bytes()
    lines = [line.strip() for line in data.decode().splitlines() if line.strip()]
    assert lines[:2] == ["Apache License", "Version 2.0, January 2004"]
    assert hashlib.sha256(data).hexdigest() == APACHE_2_0_SHA256
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"


def test_no_raw_manifests_beside_the_chart() -> None:
    """Kubernetes objects come from the chart (tested); the only other YAML is istiod's values and the
    Prometheus rule file with its promtool tests (the chart renders the same rules;
    tests/tools/test_alerts.py)."""
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


def test_the_dashboard_narrows_to_a_namespace_pod_and_rule() -> None:
    dash = json.loads((DEPLOY / "grafana/ext-authz.json").read_text())
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "job", "namespace", "pod", "rule"]
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            assert 'namespace=~"$namespace"' in expr and 'pod=~"$pod"' in expr, expr
            if "rule" in expr.split("by (")[-1] or "shadow_decisions" in expr:
                assert 'rule=~"$rule"' in expr, expr

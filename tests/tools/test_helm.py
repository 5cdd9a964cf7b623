"""The Helm chart (deploy/helm/ext-authz), rendered with `helm template` for each value combination in
tests/helm.py: every object valid for Kubernetes 1.33 (custom resources by their own schemas, Istio's by
istioctl), every Envoy and ext-authz config accepted by Envoy and by ext-authz's own settings, every
ConfigMap and Secret a pod names rendered or explicitly provided, every probe aimed at a port its
container binds beyond loopback, NetworkPolicies that admit only Envoys to Check and only ext-authz to
Redis, and every image pinned."""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ext_authz.config import parse_settings
from ext_authz.dev import pki
from ext_authz.dev.stack import envoy_binary
from ext_authz.settings import Limits, Settings, is_loopback
from tests.conftest import REPO
from tests.helm import (
    CASES,
    CHART,
    ENVOY_IDS,
    K8S_VERSION,
    NAMESPACE,
    RELEASE,
    SHARED,
    Case,
    HelmError,
    Rendered,
    helm,
    istioctl,
    load_all,
    notes,
    render,
    render_values,
)

IDS = [c.name for c in CASES]
ENVOY_CASES = [c for c in CASES if c.envoy]  # a pod with an Envoy: the sidecar's, or the terminator
CONFIG_PATH = Path("/etc/ext-authz/config/config.yaml")
DATA = REPO / "tests/data/k8s"
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def settings_of(r: Rendered) -> Settings:
    return parse_settings(r.ext_authz_config(), CONFIG_PATH)


# ---- the chart itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_helm_lint_passes_strictly(case: Case, tmp_path: Path) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps(case.values))
    res = subprocess.run(
        [str(helm()), "lint", "--strict", str(CHART), "-f", str(values), "--kube-version", K8S_VERSION],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_chart_is_pinned_to_this_release() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert CHART_META["appVersion"] == pyproject["project"]["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", CHART_META["version"])
    assert CHART_META["apiVersion"] == "v2"


def test_every_top_level_value_is_documented() -> None:
    """values.yaml says what each value does: a comment right above every top-level key."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Za-z]\w*):", line)
        if m:
            above = lines[i - 1] if i else ""
            assert above.startswith("#") or above.startswith("  #"), (
                f"values.yaml: {m.group(1)} has no comment"
            )
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(VALUES) <= set(schema["properties"]), "values.schema.json lacks a top-level value"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"listen": "0.0.0.0:1"}}, "config.listen is set by the chart"),
        ({"config": {"state": "memory://"}}, "config.state is set by the chart"),
        ({"image": {"tag": "latest"}}, "pin a version tag"),
        ({"envoy": {"image": {"tag": ""}}}, "pin a version tag"),
        ({"mode": "shared"}, "check.allowedSpiffeIds is required"),
        ({"mode": "sidecar", "istio": {"enabled": True}}, "istio.enabled needs mode: shared"),
        ({"mode": "shared", "istio": {"enabled": True}}, "istio.allowedPrincipals"),
        (
            {
                "mode": "shared",
                "check": {"allowedSpiffeIds": ["spiffe://example.org/e"]},
                "state": {"backend": "sqlite"},
            },
            "state.backend sqlite with several shared replicas",
        ),
        (
            {
                "mode": "shared",
                "check": {"allowedSpiffeIds": ["spiffe://example.org/e"]},
                "redis": {"deploy": False, "external": {"host": "r.example"}},
            },
            "redis.auth.existingSecret is required with an external Redis",
        ),
        (
            {
                "mode": "shared",
                "check": {"allowedSpiffeIds": ["spiffe://example.org/e"]},
                "spiffe": {"workloadApi": False},
            },
            "no trust domain",
        ),
        (
            {
                "mode": "shared",
                "check": {"allowedSpiffeIds": ["spiffe://example.org/e"]},
                "spiffe": {
                    "workloadApi": False,
                    "bundles": {"trustDomains": {"example.org": {"x509": "-----BEGIN CERTIFICATE-----"}}},
                },
            },
            "check.tls.existingSecret is required",
        ),
        (
            {"spiffe": {"bundles": {"trustDomains": {"example.org": {"x509": "PEM"}}}}},
            "already come from the Workload API",
        ),
        ({"replicsa": 3}, "additional properties 'replicsa' not allowed"),
        ({"mode": "both"}, "value must be one of"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_the_chart_refuses_values_that_cannot_work(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmError) as err:
        render_values(values)
    assert message in str(err.value)


# ---- every object valid ---------------------------------------------------------------------------

CRD_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
ISTIO_KINDS = {
    ("security.istio.io/v1", "AuthorizationPolicy"),
    ("security.istio.io/v1", "PeerAuthentication"),
}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_rendered_object_is_valid_for_kubernetes(case: Case) -> None:
    r = render(case)
    assert r.docs
    for doc in r.docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_KINDS or key in ISTIO_KINDS:
            continue  # their own tests below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == NAMESPACE


def test_the_validation_is_strict() -> None:
    """A misspelt field fails kubernetes-validate, and a key given twice fails our YAML loading."""
    bad = copy.deepcopy(render(CASES[0]).deployment())
    bad["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    with pytest.raises(yaml.YAMLError, match="duplicate key"):
        load_all("metadata:\n  labels: {a: '1'}\n  labels: {b: '2'}\n")


def _strict(schema: Any) -> Any:
    """An openAPIV3Schema as the API server applies it with strict field validation: unknown fields in
    an object with declared properties are errors."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def podmonitor_validator(
    crd_file: str = "monitoring.coreos.com_podmonitors.yaml",
) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((DATA / crd_file).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def test_podmonitors_follow_the_prometheus_operator_crd() -> None:
    validator = podmonitor_validator()
    checked = 0
    for case in CASES:
        for doc in render(case).of("PodMonitor"):
            errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)]
            assert errors == [], case.name
            selector = doc["spec"]["selector"]["matchLabels"]
            labels = render(case).deployment()["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items()
            assert doc["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
            pod = render(case).deployment()["spec"]["template"]["spec"]
            ports = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
            assert {e["port"] for e in doc["spec"]["podMetricsEndpoints"]} <= ports
            checked += 1
    assert checked >= 2
    # the schema is strict: a misspelt field is refused
    bad = copy.deepcopy(render(CASES[4]).of("PodMonitor")[0])
    bad["spec"]["podMetricEndpoints"] = bad["spec"].pop("podMetricsEndpoints")
    assert list(validator.iter_errors(bad))


def test_prometheus_rules_follow_the_crd_and_carry_the_tested_rules() -> None:
    validator = podmonitor_validator("monitoring.coreos.com_prometheusrules.yaml")
    tested = yaml.safe_load((REPO / "deploy/prometheus/ext-authz.rules.yaml").read_text())
    rendered = [(c, d) for c in CASES for d in render(c).of("PrometheusRule")]
    assert len(rendered) >= 2
    for case, doc in rendered:
        assert [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)] == [], case.name
        assert doc["spec"] == {"groups": tested["groups"]}  # exactly what promtool tests
    _, monitoring = next((c, d) for c, d in rendered if d["metadata"]["namespace"] == "monitoring")
    assert monitoring["metadata"]["labels"]["release"] == "prom"
    bad = copy.deepcopy(rendered[0][1])
    bad["spec"]["groups"][0]["rules"][0]["alrt"] = "x"
    assert list(validator.iter_errors(bad))


def _istio_docs() -> list[dict[str, Any]]:
    docs = [d for c in CASES for d in render(c).docs if (d["apiVersion"], d["kind"]) in ISTIO_KINDS]
    assert {d["kind"] for d in docs} == {"AuthorizationPolicy", "PeerAuthentication"}
    return docs


def _istioctl_validate(docs: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "istio.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    return subprocess.run(
        [str(istioctl()), "validate", "-f", str(f)], capture_output=True, text=True, timeout=60, check=False
    )


def test_istio_objects_pass_istioctl_validate(tmp_path: Path) -> None:
    docs = _istio_docs()
    res = _istioctl_validate(docs, tmp_path)
    assert res.returncode == 0 and "is valid" in res.stdout + res.stderr, res.stdout + res.stderr
    # istioctl is strict about these kinds: a field AuthorizationPolicy does not have is refused
    bad = copy.deepcopy(next(d for d in docs if d["spec"].get("action") == "CUSTOM"))
    bad["spec"]["provider"]["includeRequestHeadersInCheck"] = ["authorization"]
    res = _istioctl_validate([bad], tmp_path)
    assert res.returncode != 0 and "unknown field" in res.stderr


# ---- configs the chart writes ------------------------------------------------------------------------


@pytest.mark.parametrize("case", ENVOY_CASES, ids=[c.name for c in ENVOY_CASES])
def test_the_envoy_config_passes_envoy_validate(case: Case, tmp_path: Path) -> None:
    """`envoy --mode validate` needs no SDS server and no socket to exist: the config is checked as is.
    Files it names (a terminator's certificate and bundles without the Workload API) are read: here they
    are written where the pod mounts them, moved under tmp_path."""
    r = render(case)
    text = r.envoy_config()
    assert text is not None
    (files,) = [d["data"] for d in r.of("ConfigMap") if "envoy.yaml" in d["data"]]
    for name, content in files.items():  # the rest of Envoy's ConfigMap, where the config points
        if name != "envoy.yaml":
            (tmp_path / "envoy-config").mkdir(exist_ok=True)
            (tmp_path / "envoy-config" / name).write_text(content.replace("/etc/ext-authz/", f"{tmp_path}/"))
            text = text.replace(f"/etc/envoy/{name}", str(tmp_path / "envoy-config" / name))
    if "/etc/ext-authz/" in text:
        ca = pki.make_ca("chart test root", spiffe_td="example.org")
        leaf = pki.make_leaf(ca, ["spiffe://example.org/ns/authz/sa/ext-authz"])
        for path, content in (
            ("check-tls/tls.crt", leaf.pem),
            ("check-tls/tls.key", leaf.key_pem),
            ("bundles/example.org.x509.pem", ca.pem),
        ):
            (tmp_path / path).parent.mkdir(exist_ok=True)
            (tmp_path / path).write_text(content)
        text = text.replace("/etc/ext-authz/", f"{tmp_path}/")
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    res = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_envoy_validate_refuses_a_broken_config(tmp_path: Path) -> None:
    text = render(CASES[0]).envoy_config()
    assert text is not None
    config = tmp_path / "envoy.yaml"
    config.write_text(
        text.replace("forward_client_cert_details: SANITIZE_SET", "forward_client_cert_details: SANE")
    )
    res = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert res.returncode != 0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_ext_authz_config_follows_the_contract(case: Case) -> None:
    text = render(case).ext_authz_config()
    settings = parse_settings(text, CONFIG_PATH)
    schema = json.loads((REPO / "deploy/ext-authz.schema.json").read_text())
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(text))]
    assert errors == []
    assert settings.admin_listen.startswith("unix://")
    assert settings.http_listen is not None and not is_loopback(settings.http_listen)
    if case.envoy:  # the pod's Envoy calls Check on the socket: the sidecar's, or the terminator
        assert settings.listen == "unix:///run/ext-authz/check.sock"
        assert settings.check.socket_mode == 0o660 and settings.check.tls is None
        assert settings.mtls.source == "certificate"
    elif case.values.get("istio", {}).get("enabled"):
        assert settings.listen == "0.0.0.0:9191" and settings.check.plaintext and settings.check.tls is None
        assert settings.mtls.source == "principal"
        mesh = settings.trust_domains["cluster.local"]
        assert mesh.x509_bundle == Path("/etc/ext-authz/istio-ca/root-cert.pem")
    else:
        assert settings.check.tls is not None and not settings.check.plaintext
        assert settings.check.allowed_spiffe_ids
        assert settings.state.scheme in ("redis", "rediss") and settings.state.hmac_key_file is not None
        assert settings.state.scheme == "rediss" or case.name.endswith("-plaintext")


def _mounts(pod: dict[str, Any], container: dict[str, Any]) -> list[tuple[PurePosixPath, dict[str, Any]]]:
    volumes = {v["name"]: v for v in pod["volumes"]}
    return [(PurePosixPath(m["mountPath"]), volumes[m["name"]]) for m in container.get("volumeMounts", [])]


def _provides(mount: PurePosixPath, volume: dict[str, Any], path: PurePosixPath) -> bool:
    """Does this volume, mounted at `mount`, hold `path` (a file, or a directory for a socket)?"""
    if path != mount and mount not in path.parents:
        return False
    source = volume.get("secret") or volume.get("configMap")
    if source is not None and "items" in source and path != mount:
        return str(path.relative_to(mount)) in {i["path"] for i in source["items"]}
    return True


def config_files(s: Settings) -> Iterator[tuple[str, PurePosixPath]]:
    """Every file or socket directory the config names, with its key."""
    for td, t in s.trust_domains.items():
        for kind, p in (("x509_bundle", t.x509_bundle), ("jwt_bundle", t.jwt_bundle)):
            if p is not None:
                yield f"trust_domains.{td}.{kind}", PurePosixPath(p)
        if t.workload_api:
            yield f"trust_domains.{td}.workload_api", PurePosixPath(t.workload_api[len("unix://") :])
    tls = s.check.tls
    if tls is not None:
        for kind, p in (("cert", tls.cert), ("key", tls.key)):
            if p is not None:
                yield f"check.tls.{kind}", PurePosixPath(p)
        if tls.workload_api:
            yield "check.tls.workload_api", PurePosixPath(tls.workload_api[len("unix://") :])
    st = s.state
    for kind, p in (("password_file", st.password_file), ("hmac_key_file", st.hmac_key_file)):
        if p is not None:
            yield f"state.{kind}", PurePosixPath(p)
    if st.tls is not None and st.tls.ca is not None:
        yield "state.tls.ca", PurePosixPath(st.tls.ca)
    if st.scheme == "sqlite":
        yield "state", PurePosixPath(st.url[len("sqlite://") :])
    for key, addr in (("listen", s.listen), ("admin_listen", s.admin_listen)):
        if addr.startswith("unix://"):
            yield key, PurePosixPath(addr[len("unix://") :])
    yield "(the config itself)", PurePosixPath(CONFIG_PATH)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_file_the_config_names_is_mounted(case: Case) -> None:
    r = render(case)
    pod = r.deployment()["spec"]["template"]["spec"]
    container = r.container("ext-authz")
    mounts = _mounts(pod, container)
    for key, path in config_files(settings_of(r)):
        assert any(_provides(m, v, path) for m, v in mounts), f"{case.name}: {key} = {path} is not mounted"
    writable = {m: v for m, v in mounts if "emptyDir" in v}
    for key, path in config_files(settings_of(r)):
        if key in ("listen", "admin_listen", "state"):  # created at run time: a writable emptyDir
            assert path.parent in writable, f"{key}: {path.parent} is not a writable emptyDir"


# ---- references ---------------------------------------------------------------------------------------


def references(pod: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key or None) of every ConfigMap and Secret a pod spec refers to."""
    for v in pod.get("volumes", []):
        if "configMap" in v:
            items = v["configMap"].get("items") or [None]
            for i in items:
                yield "ConfigMap", v["configMap"]["name"], i and i["key"]
        if "secret" in v:
            items = v["secret"].get("items") or [None]
            for i in items:
                yield "Secret", v["secret"]["secretName"], i and i["key"]
        for src in v.get("projected", {}).get("sources", []):
            for kind, field in (("ConfigMap", "configMap"), ("Secret", "secret")):
                if field in src:
                    for i in src[field].get("items") or [None]:
                        yield kind, src[field]["name"], i and i["key"]
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                yield "ConfigMap", ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]
            if "secretKeyRef" in ref:
                yield "Secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
        for e in c.get("envFrom", []):
            if "configMapRef" in e:
                yield "ConfigMap", e["configMapRef"]["name"], None
            if "secretRef" in e:
                yield "Secret", e["secretRef"]["name"], None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_configmap_and_secret_a_pod_names_is_rendered_or_provided(case: Case) -> None:
    r = render(case)
    used: set[tuple[str, str]] = set()
    for workload in r.workloads():
        for kind, name, key in references(workload["spec"]["template"]["spec"]):
            used.add((kind, name))
            if (kind, name) in case.provided:
                continue
            assert name in r.names(kind), f"{case.name}: {kind} {name} is referenced but not rendered"
            obj = r.get(kind, name)
            if key is not None:
                assert key in obj.get("data", {}), f"{case.name}: {kind} {name} has no key {key!r}"
    assert case.provided <= used, f"{case.name}: provided but never used: {case.provided - used}"


def test_the_references_test_sees_a_missing_configmap() -> None:
    pod = copy.deepcopy(render(CASES[0]).deployment()["spec"]["template"]["spec"])
    pod["volumes"].append({"name": "x", "configMap": {"name": "nowhere"}})
    assert ("ConfigMap", "nowhere", None) in set(references(pod))


# ---- probes ---------------------------------------------------------------------------------------------


def envoy_listens(config: dict[str, Any]) -> set[tuple[str, int]]:
    out = set()
    for li in config["static_resources"]["listeners"]:
        sa = li["address"]["socket_address"]
        out.add((sa["address"], int(sa["port_value"])))
    return out


def redis_listens(args: list[str]) -> set[tuple[str, int]]:
    opts = dict(zip(args[::2], args[1::2], strict=True))
    host = opts.get("--bind", "0.0.0.0")
    return {(host, int(opts[o])) for o in ("--port", "--tls-port") if o in opts and int(opts[o]) != 0}


def listens(r: Rendered, container: dict[str, Any]) -> set[tuple[str, int]]:
    """(host, port) of every TCP socket the container's process binds, from its own config."""
    if container["name"] == "ext-authz":
        s = settings_of(r)
        return {
            (a.rpartition(":")[0], int(a.rpartition(":")[2]))
            for a in (s.listen, s.http_listen, s.admin_listen)
            if a and not a.startswith("unix://")
        }
    if container["name"] == "envoy":
        text = r.envoy_config()
        assert text is not None
        return envoy_listens(yaml.safe_load(text))
    if container["name"] == "redis":
        return redis_listens(container["args"])
    if container["name"] == "app":
        return set()  # bound to 127.0.0.1 by default: nothing kubelet could probe
    raise AssertionError(f"unknown container {container['name']}")


def _probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int | None:
    for kind in ("httpGet", "tcpSocket", "grpc"):
        if kind in probe:
            port = probe[kind]["port"]
            if isinstance(port, str):
                return int(next(p["containerPort"] for p in container["ports"] if p["name"] == port))
            return int(port)
    return None


def _beyond_loopback(host: str) -> bool:
    return not ipaddress.ip_address(host.strip("[]")).is_loopback


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_probe_targets_a_port_its_container_binds_beyond_loopback(case: Case) -> None:
    r = render(case)
    probed = 0
    for workload in r.workloads():
        for c in workload["spec"]["template"]["spec"]["containers"]:
            bound = {port for host, port in listens(r, c) if _beyond_loopback(host)}
            for p in c.get("ports", []):
                assert p["containerPort"] in bound, (
                    f"{c['name']} declares {p['containerPort']} but binds {bound}"
                )
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if kind not in c:
                    continue
                port = _probe_port(c, c[kind])
                if port is None:
                    assert "exec" in c[kind], (c["name"], kind)
                    continue
                assert port in bound, (
                    f"{case.name}: {c['name']} {kind} on {port}, bound beyond loopback: {bound}"
                )
                probed += 1
    assert probed >= 3


def test_the_probe_check_sees_a_loopback_only_port() -> None:
    config = yaml.safe_load(render(CASES[0]).envoy_config() or "")
    ready = next(li for li in config["static_resources"]["listeners"] if li["name"] == "ready")
    ready["address"]["socket_address"]["address"] = "127.0.0.1"
    assert 9902 not in {p for h, p in envoy_listens(config) if _beyond_loopback(h)}


@pytest.mark.parametrize("case", ENVOY_CASES, ids=[c.name for c in ENVOY_CASES])
def test_envoys_readiness_port_serves_its_admin_ready_from_a_private_socket(case: Case) -> None:
    r = render(case)
    config = yaml.safe_load(r.envoy_config() or "")
    admin = config["admin"]["address"]
    assert "pipe" in admin and "socket_address" not in admin  # never on the network
    envoy = r.container("envoy")
    assert envoy["readinessProbe"]["httpGet"]["path"] == "/ready"
    port = _probe_port(envoy, envoy["readinessProbe"])
    listener = next(
        li
        for li in config["static_resources"]["listeners"]
        if li["address"]["socket_address"]["port_value"] == port
    )
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    to_admin = [rt for rt in routes if rt.get("route", {}).get("cluster") == "envoy_admin"]
    # the terminator's also serves its stats (the callers it refused) for Prometheus
    assert [rt["match"]["path"] for rt in to_admin] == ["/ready", "/stats/prometheus"][
        : 2 if case.terminator else 1
    ]
    assert all("direct_response" in rt for rt in routes if rt not in to_admin)
    assert "transport_socket" not in listener["filter_chains"][0]
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "envoy_admin")
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert endpoint == {"pipe": {"path": admin["pipe"]["path"]}}
    # the admin socket's directory is Envoy's alone
    pod = r.deployment()["spec"]["template"]["spec"]
    admin_dir = PurePosixPath(admin["pipe"]["path"]).parent
    holders = [c["name"] for c in pod["containers"] for m, _ in _mounts(pod, c) if m == admin_dir]
    assert holders == ["envoy"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ext_authz_probes_ask_its_health_endpoints(case: Case) -> None:
    c = render(case).container("ext-authz")
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


# ---- who can reach what --------------------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return dict(selector.get("matchLabels", {})).items() <= labels.items()


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def _policy_for(r: Rendered, labels: dict[str, str]) -> dict[str, Any]:
    found = [np for np in r.of("NetworkPolicy") if _selects(np["spec"]["podSelector"], labels)]
    assert len(found) == 1, f"{len(found)} NetworkPolicies select {labels}"
    assert found[0]["spec"]["policyTypes"] == ["Ingress"]
    return found[0]


def _rules_by_port(policy: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("ports"), "a rule without ports opens every port"
        for p in rule["ports"]:
            out.setdefault(int(p["port"]), []).append(rule)
    return out


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.values.get("networkPolicy", {}).get("enabled", True)], ids=lambda c: c.name
)
def test_network_policies_admit_only_envoys_to_check_and_only_ext_authz_to_redis(case: Case) -> None:
    r = render(case)
    authz_labels = _pod_labels(r.deployment())
    policy = _policy_for(r, authz_labels)
    rules = _rules_by_port(policy)
    defaults = VALUES["networkPolicy"]
    http = VALUES["ports"]["http"]
    assert [rule["from"] for rule in rules[http]] == [defaults["metricsFrom"]]
    if case.terminator:  # its Envoy's stats (the callers it refused) for whoever scrapes /metrics
        ready = VALUES["envoy"]["ports"]["ready"]
        assert [rule["from"] for rule in rules.pop(ready)] == [defaults["metricsFrom"]]
    if case.mode == "shared":
        check = VALUES["ports"]["check"]
        assert set(rules) == {check, http}
        assert [rule["from"] for rule in rules[check]] == [defaults["checkClients"]]
        assert all(rule["from"] for rule in rules[check])
    else:
        # Check is a unix socket: no port of it is open; what is open is Envoy's mTLS listener.
        assert settings_of(r).listen.startswith("unix://")
        assert set(rules) == {VALUES["envoy"]["ports"]["mtls"], http}
    redis = [w for w in r.workloads() if w["kind"] == "StatefulSet"]
    if redis:
        redis_labels = _pod_labels(redis[0])
        rp = _policy_for(r, redis_labels)
        rrules = _rules_by_port(rp)
        assert set(rrules) == {6379}
        (peers,) = [rule["from"] for rule in rrules[6379]]
        assert len(peers) == 1 and set(peers[0]) == {"podSelector"}  # this namespace only
        assert _selects(peers[0]["podSelector"], authz_labels)
        assert not _selects(peers[0]["podSelector"], redis_labels)
        assert not _selects(policy["spec"]["podSelector"], redis_labels)


def test_network_policies_can_be_turned_off() -> None:
    case = next(c for c in CASES if c.name == "sidecar-no-networkpolicy")
    assert render(case).of("NetworkPolicy") == []
    assert render(case).of("PodDisruptionBudget") == []  # one replica: nothing to budget


@pytest.mark.parametrize("case", ENVOY_CASES, ids=[c.name for c in ENVOY_CASES])
def test_the_check_socket_is_shared_by_envoy_and_ext_authz_only(case: Case) -> None:
    r = render(case)
    pod = r.deployment()["spec"]["template"]["spec"]
    socket_dir = PurePosixPath(settings_of(r).listen[len("unix://") :]).parent
    holders = sorted(c["name"] for c in pod["containers"] for m, _ in _mounts(pod, c) if m == socket_dir)
    assert holders == ["envoy", "ext-authz"]
    volume = next(v for m, v in _mounts(pod, r.container("envoy")) if m == socket_dir)
    assert "emptyDir" in volume
    assert pod["securityContext"]["fsGroup"]  # the socket's group, 0660
    users = {c["name"]: c["securityContext"]["runAsUser"] for c in pod["containers"]}
    assert len(set(users.values())) == len(users), users  # each its own user: the group is the link
    config = yaml.safe_load(r.envoy_config() or "")
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "ext_authz")
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert endpoint == {"pipe": {"path": str(socket_dir / "check.sock")}}
    assert "check" not in {p["name"] for p in r.container("ext-authz").get("ports", [])}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pods_are_locked_down(case: Case) -> None:
    r = render(case)
    for w in r.workloads():
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsUser"] > 0, c["name"]
            assert "resources" in c and c["resources"]["limits"]["memory"], c["name"]


# ---- images ---------------------------------------------------------------------------------------------


def _tag(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    assert ":" in last, f"{image}: no tag"
    return last.split(":", 1)[1]


def envoy_wheel_version() -> tuple[int, int]:
    out = subprocess.run(
        [envoy_binary(), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    m = re.search(r"/(\d+)\.(\d+)\.\d+/", out.stdout)
    assert m, out.stdout
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_images_are_pinned(case: Case) -> None:
    for w in render(case).workloads():
        for c in w["spec"]["template"]["spec"]["containers"]:
            tag = _tag(c["image"])
            assert tag and tag != "latest" and not tag.endswith("-latest"), c["image"]
            assert re.search(r"\d+\.\d+", tag), f"{c['image']}: not a version"


def test_the_deployed_envoy_is_the_validated_envoy() -> None:
    image = render(CASES[0]).container("envoy")["image"]
    m = re.fullmatch(r"envoyproxy/envoy:v(\d+)\.(\d+)\.\d+", image)
    assert m, image
    assert (int(m.group(1)), int(m.group(2))) == envoy_wheel_version()


def test_ext_authz_and_redis_images() -> None:
    r = render(next(c for c in CASES if c.name == "shared"))
    assert _tag(r.container("ext-authz")["image"]) == CHART_META["appVersion"]
    assert re.fullmatch(r"7\.\d+\.\d+", _tag(r.container("redis")["image"]))


# ---- Secrets ------------------------------------------------------------------------------------------


def _secret(r: Rendered, name: str) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in r.get("Secret", name)["data"].items()}


def test_generated_secrets() -> None:
    r = render(next(c for c in CASES if c.name == "shared"))
    hmac = r.get("Secret", f"{RELEASE}-state-hmac")
    assert len(_secret(r, f"{RELEASE}-state-hmac")["hmac-key"]) >= 32
    assert len(_secret(r, f"{RELEASE}-redis-auth")["password"]) >= 32
    assert hmac["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    tls = _secret(r, f"{RELEASE}-redis-tls")
    assert r.get("Secret", f"{RELEASE}-redis-tls")["type"] == "kubernetes.io/tls"
    ca = x509.load_pem_x509_certificate(tls["ca.crt"])
    cert = x509.load_pem_x509_certificate(tls["tls.crt"])
    key = ca.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert cert.signature_hash_algorithm is not None
    key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    host = settings_of(r).state.url.split("://", 1)[1].split(":", 1)[0]
    assert host in names.get_values_for_type(x509.DNSName)


def test_existing_secrets_are_not_generated() -> None:
    r = render(next(c for c in CASES if c.name == "shared-existing-secrets"))
    assert r.of("Secret") == []
    r = render(next(c for c in CASES if c.name == "shared-external-redis"))
    assert r.names("Secret") == {f"{RELEASE}-state-hmac"}  # the HMAC key is ext-authz's own
    assert r.of("StatefulSet") == []
    s = settings_of(r).state
    assert s.url == "rediss://redis.example.net:6380/2" and s.username == "ext-authz"
    s = settings_of(render(next(c for c in CASES if c.name == "shared-external-redis-system-cas"))).state
    assert s.url == "rediss://r.example:6379/0" and s.tls is None  # rediss:// verifies with the system CAs
    plain = next(c for c in CASES if c.name == "shared-external-redis-plaintext")
    assert settings_of(render(plain)).state.url == "redis://r.example:6379/0"
    assert "WARNING: redis.external.tls.enabled is false" in notes(plain.values)
    s = settings_of(render(next(c for c in CASES if c.name == "shared-external-redis-sentinel"))).state
    assert s.url == "rediss://MyMaster/0" and s.sentinels == ("redis-sentinel.redis.svc:26379",)
    assert s.wait_replicas == 1 and s.wait_timeout == 0.5


# ---- Istio -----------------------------------------------------------------------------------------------

ISTIOD_VALUES = REPO / "deploy/istio/istiod-values.yaml"


def proto_fields(proto: str, message: str) -> set[str]:
    """The JSON names of a message's fields in a .proto file (nested messages and enums excluded)."""
    start = proto.index(f"message {message} {{")
    depth, i = 0, proto.index("{", start)
    body_start = i + 1
    while True:
        if proto[i] == "{":
            depth += 1
        elif proto[i] == "}":
            depth -= 1
            if depth == 0:
                break
        i += 1
    body, depth, own = proto[body_start:i], 0, []
    for line in body.splitlines():
        code = line.split("//", 1)[0]
        if depth == 0:
            own.append(code)
        depth += code.count("{") - code.count("}")
    fields = re.findall(
        r"^\s*(?:repeated\s+|optional\s+)?[\w.<>, ]+?\s+(\w+)\s*=\s*\d+", "\n".join(own), re.M
    )
    return {re.sub(r"_(\w)", lambda m: m.group(1).upper(), f) for f in fields}


def test_the_istiod_values_use_only_fields_of_the_grpc_provider() -> None:
    proto = (DATA / "istio-mesh-config.proto").read_text()
    grpc = proto_fields(proto, "EnvoyExternalAuthorizationGrpcProvider")
    http = proto_fields(proto, "EnvoyExternalAuthorizationHttpProvider")
    assert {"service", "port", "timeout", "failOpen", "statusOnError"} <= grpc
    assert "includeRequestHeadersInCheck" in http and "includeRequestHeadersInCheck" not in grpc
    providers = yaml.safe_load(ISTIOD_VALUES.read_text())["meshConfig"]["extensionProviders"]
    assert providers
    for p in providers:
        assert set(p) == {"name", "envoyExtAuthzGrpc"}
        assert set(p["envoyExtAuthzGrpc"]) <= grpc, set(p["envoyExtAuthzGrpc"]) - grpc


def test_the_istiod_values_point_at_the_chart_and_fail_closed() -> None:
    (provider,) = yaml.safe_load(ISTIOD_VALUES.read_text())["meshConfig"]["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    r = render(next(c for c in CASES if c.name == "shared-istio"))
    service = next(s for s in r.of("Service") if s["metadata"]["name"] == RELEASE)
    assert grpc["service"] == f"{RELEASE}.{NAMESPACE}.svc.cluster.local"
    assert grpc["port"] == service["spec"]["ports"][0]["port"] == VALUES["ports"]["check"]
    assert grpc["failOpen"] is False and grpc["statusOnError"] == "503"
    custom = [p for p in r.of("AuthorizationPolicy") if p["spec"]["action"] == "CUSTOM"]
    assert custom and all(p["spec"]["provider"]["name"] == provider["name"] for p in custom)
    assert provider["name"] == VALUES["istio"]["provider"]


def test_istioctl_installs_the_istiod_values(tmp_path: Path) -> None:
    """istioctl renders istiod with this mesh config (types checked: a port or duration of the wrong
    kind is refused), and the provider reaches the mesh config istiod reads."""
    mesh = yaml.safe_load(ISTIOD_VALUES.read_text())["meshConfig"]

    def generate(mesh_config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        iop = tmp_path / "iop.yaml"
        iop.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "install.istio.io/v1alpha1",
                    "kind": "IstioOperator",
                    "spec": {"profile": "minimal", "meshConfig": mesh_config},
                }
            )
        )
        return subprocess.run(
            [str(istioctl()), "manifest", "generate", "-f", str(iop)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    res = generate(mesh)
    assert res.returncode == 0, res.stderr
    configmaps = [d for d in load_all(res.stdout) if d["kind"] == "ConfigMap" and "mesh" in d.get("data", {})]
    generated = [yaml.safe_load(cm["data"]["mesh"]) for cm in configmaps]
    assert any(m.get("extensionProviders") == mesh["extensionProviders"] for m in generated)
    broken = copy.deepcopy(mesh)
    broken["extensionProviders"][0]["envoyExtAuthzGrpc"]["timeout"] = "half a second"
    assert generate(broken).returncode != 0


def test_istio_mode_guards_its_plaintext_check_port() -> None:
    r = render(next(c for c in CASES if c.name == "shared-istio"))
    labels = _pod_labels(r.deployment())
    assert labels["sidecar.istio.io/inject"] == "true"
    (peer,) = r.of("PeerAuthentication")
    assert peer["spec"]["mtls"]["mode"] == "STRICT" and _selects(peer["spec"]["selector"], labels)
    check = str(VALUES["ports"]["check"])
    assert check not in peer["spec"].get("portLevelMtls", {})
    (allow,) = [p for p in r.of("AuthorizationPolicy") if p["spec"]["action"] == "ALLOW"]
    assert allow["metadata"]["namespace"] == NAMESPACE and _selects(allow["spec"]["selector"], labels)
    to_check = [
        rule for rule in allow["spec"]["rules"] if check in rule["to"][0]["operation"].get("ports", [])
    ]
    assert [rule["from"][0]["source"]["principals"] for rule in to_check] == [
        ["cluster.local/ns/backend/sa/backend"]
    ]
    assert settings_of(r).check.plaintext


# ---- what the chart tells its user ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_services_select_the_pods_and_name_their_ports(case: Case) -> None:
    r = render(case)
    for svc in r.of("Service"):
        pods = [
            w for w in r.workloads() if _selects({"matchLabels": svc["spec"]["selector"]}, _pod_labels(w))
        ]
        assert len(pods) == 1, svc["metadata"]["name"]
        names = {
            p["name"] for c in pods[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, (svc["metadata"]["name"], port)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_notes_say_what_the_release_still_needs(case: Case) -> None:
    text = notes(case.values)
    istio = case.values.get("istio", {}).get("enabled")
    if istio:
        block = text[text.index("    meshConfig:") :].split("\n\n", 1)[0].split("\next-authz trusts")[0]
        mesh = yaml.safe_load(block)["meshConfig"]
        assert mesh == yaml.safe_load(ISTIOD_VALUES.read_text())["meshConfig"]
    else:
        assert "registration entry" in text and f"spiffe://example.org/ns/{NAMESPACE}/sa/{RELEASE}" in text
    if case.mode == "shared" and not istio:
        assert all(sid in text for sid in case.values["check"]["allowedSpiffeIds"])


def _value_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    free_form = {"config", "podSecurityContext", "securityContext", "spiffe.bundles.trustDomains"}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in free_form and not key.endswith("resources"):
            yield from _value_paths(value, f"{path}.")
        else:
            yield path


def test_the_charts_readme_names_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    missing = [p for p in _value_paths(VALUES) if f"`{p}`" not in readme]
    assert missing == []


def test_the_readmes_envoy_cluster_for_shared_mode_validates(tmp_path: Path) -> None:
    readme = (CHART / "README.md").read_text()
    after = readme.split("<!-- envoy-shared-cluster", 1)[1]
    block = after.split("```yaml\n", 1)[1].split("```", 1)[0]
    (cluster,) = yaml.safe_load(block)
    r = render(next(c for c in CASES if c.name == "shared"))
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    headless = r.get("Service", f"{RELEASE}-replicas")
    assert headless["spec"]["clusterIP"] == "None"
    assert address["socket_address"] == {
        "address": f"{RELEASE}-replicas.{NAMESPACE}.svc.cluster.local",
        "port_value": VALUES["ports"]["check"],
    }
    sans = cluster["transport_socket"]["typed_config"]["common_tls_context"]["combined_validation_context"]
    matcher = sans["default_validation_context"]["match_typed_subject_alt_names"][0]["matcher"]
    assert matcher == {"exact": f"spiffe://example.org/ns/{NAMESPACE}/sa/{RELEASE}"}
    # A gateway Envoy: the sidecar config's filters (ext_authz, router) on a plain listener, the agent's
    # SDS cluster, and the README's cluster in place of the unix socket.
    bootstrap = yaml.safe_load(render(CASES[0]).envoy_config() or "")
    resources = bootstrap["static_resources"]
    listener = next(li for li in resources["listeners"] if li["name"] == "mesh")
    del listener["filter_chains"][0]["transport_socket"]
    resources["listeners"] = [listener]
    resources["clusters"] = [c for c in resources["clusters"] if c["name"] in ("spire_agent", "app")]
    resources["clusters"].append(cluster)
    bootstrap["node"] = {"id": "gateway", "cluster": "gateway"}
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(bootstrap))
    res = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_a_misspelled_config_key_fails_helm_install() -> None:
    res = subprocess.run(
        [str(helm()), "template", "t", str(CHART), "--kube-version", K8S_VERSION, "--set", "config.rulez=1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode != 0 and "rulez" in res.stderr


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_config_change_rolls_the_pods_and_is_validated_first(case: Case) -> None:
    pod = render(case).deployment()["spec"]["template"]
    assert pod["metadata"]["annotations"]["checksum/config"]
    (init,) = pod["spec"]["initContainers"]
    main = next(c for c in pod["spec"]["containers"] if c["name"] == "ext-authz")
    assert init["args"][0] == "validate" and init["args"][1] == main["args"][2]
    assert init["image"] == main["image"] and init["volumeMounts"] == main["volumeMounts"]


def test_extra_env_args_volumes_and_mounts_are_rendered() -> None:
    values = {
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "extraArgs": ["--log-format", "json"],
        "extraVolumes": [{"name": "extra", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}],
    }
    base = next(c for c in CASES if c.mode == "shared")
    pod = render_values({**base.values, **values}).deployment()["spec"]["template"]["spec"]
    main = next(c for c in pod["containers"] if c["name"] == "ext-authz")
    assert main["env"] == [{"name": "TZ", "value": "UTC"}]
    assert main["args"][-2:] == ["--log-format", "json"]
    assert {"name": "extra", "emptyDir": {}} in pod["volumes"]
    assert {"name": "extra", "mountPath": "/extra"} in main["volumeMounts"]
    assert {"name": "extra", "mountPath": "/extra"} in pod["initContainers"][0]["volumeMounts"]


def test_istio_admits_ssf_pushes() -> None:
    r = render(next(c for c in CASES if c.name == "shared-istio"))
    (policy,) = [p for p in r.of("AuthorizationPolicy") if p["spec"]["action"] == "ALLOW"]
    ssf = [r for r in policy["spec"]["rules"] if "/ssf/*" in r["to"][0]["operation"].get("paths", [])]
    assert ssf and "POST" in ssf[0]["to"][0]["operation"]["methods"]


def test_shared_mode_can_autoscale() -> None:
    base = next(c for c in CASES if c.mode == "shared")
    r = render_values({**base.values, "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9}})
    (hpa,) = r.of("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == r.deployment()["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    assert "replicas" not in r.deployment()["spec"]  # the HPA owns the count
    assert render_values(base.values).of("HorizontalPodAutoscaler") == []


@pytest.mark.parametrize("mode", ["shared", "sidecar"])
def test_a_servicemonitor_follows_the_crd_and_reaches_the_pods_http_port(mode: str) -> None:
    base = next(c for c in CASES if c.mode == mode)
    values = {**base.values, "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kp"}}}}
    r = render_values(values)
    (monitor,) = r.of("ServiceMonitor")
    validator = podmonitor_validator("monitoring.coreos.com_servicemonitors.yaml")
    assert [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(monitor)] == []
    (service,) = [s for s in r.of("Service") if s["metadata"]["name"].endswith("-metrics")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    pod_labels = r.deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"] for p in r.container("ext-authz")["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    assert monitor["metadata"]["labels"]["release"] == "kp"
    assert render_values(base.values).of("ServiceMonitor") == []


def test_native_sidecars_start_before_the_app_and_validate() -> None:
    base = next(c for c in CASES if c.mode == "sidecar")
    r = render_values({**base.values, "nativeSidecars": True})
    spec = r.deployment()["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["validate-config", "ext-authz", "envoy"]
    assert [c.get("restartPolicy") for c in spec["initContainers"]] == [None, "Always", "Always"]
    assert [c["name"] for c in spec["containers"]] == ["app"]
    kubernetes_validate.validate(r.deployment(), K8S_VERSION, strict=True)
    # the same containers as without: only where they run changes
    plain = render_values(base.values).deployment()["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in plain["containers"]}
    for c in spec["initContainers"][1:]:
        assert {k: v for k, v in c.items() if k != "restartPolicy"} == by_name[c["name"]]


# ---- shared mode's terminator -----------------------------------------------------------------------


def _terminator(values: dict[str, Any]) -> dict[str, Any]:
    config = yaml.safe_load(render_values(values).envoy_config() or "")
    return next(li for li in config["static_resources"]["listeners"] if li["name"] == "check")


@pytest.mark.parametrize("limits", [{}, {"max_header_bytes": 200_000, "max_body_bytes": 0}])
def test_the_terminator_forwards_no_check_larger_than_ext_authz_accepts(limits: dict[str, int]) -> None:
    """The bound grpcio's transport applies (serve/app.py check_server), from the same limits."""
    values = {**SHARED, "config": {**VALUES["config"], "limits": limits}} if limits else SHARED
    filters = _terminator(values)["filter_chains"][0]["filters"][1]["typed_config"]["http_filters"]
    (buffer,) = [f for f in filters if f["name"] == "envoy.filters.http.buffer"]
    defaults = Limits()
    expected = (
        limits.get("max_header_bytes", defaults.max_header_bytes)
        + limits.get("max_body_bytes", defaults.max_body_bytes)
        + 64 * 1024
    )
    assert buffer["typed_config"]["max_request_bytes"] == expected


def test_the_terminator_admits_exactly_one_uri_san_from_the_allow_list() -> None:
    chain = _terminator(SHARED)["filter_chains"][0]
    rbac = chain["filters"][0]["typed_config"]
    assert chain["filters"][0]["name"] == "envoy.filters.network.rbac"
    tree = rbac["matcher"]["matcher_tree"]
    assert tree["input"]["typed_config"]["@type"].endswith("ssl.v3.UriSanInput")  # every URI SAN, joined
    assert set(tree["exact_match_map"]["map"]) == set(ENVOY_IDS)
    assert rbac["matcher"]["on_no_match"]["action"]["typed_config"]["action"] == "DENY"
    assert chain["transport_socket_connect_timeout"] == "5s"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {**SHARED, "check": {"allowedSpiffeIds": ["spiffe://other.org/ns/edge/sa/gw"]}},
            "whose bundle the pod's Envoy does not get from SPIRE",
        ),
        (
            {
                **SHARED,
                "check": {**SHARED["check"], "tls": {"existingSecret": "t"}},
                "spiffe": {
                    "workloadApi": False,
                    "bundles": {"trustDomains": {"example.org": {"x509": '{"keys": []}'}}},
                },
            },
            "the X.509 bundle is PEM",
        ),
        (
            {
                **SHARED,
                "redis": {
                    "deploy": False,
                    "auth": {"existingSecret": "r"},
                    "external": {"host": "r.example", "sentinelAuth": {"existingSecret": "s"}},
                },
            },
            "it needs redis.external.sentinels",
        ),
        (
            {
                **SHARED,
                "check": {"allowedSpiffeIds": ["spiffe://example.org/a,spiffe://example.org/ns/edge/sa/gw"]},
            },
            "allowedSpiffeIds",
        ),
    ],
)
def test_a_terminator_that_would_refuse_its_callers_is_not_rendered(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(HelmError, match=message):
        render_values(values)


def test_a_pem_bundle_with_text_before_it_is_rendered() -> None:
    """openssl writes a subject line before each certificate; both Envoy and ext-authz read past it."""
    pem = "subject=CN = example.org root\n" + _ca_pem_text()
    render_values(
        {
            **SHARED,
            "check": {**SHARED["check"], "tls": {"existingSecret": "t"}},
            "spiffe": {"workloadApi": False, "bundles": {"trustDomains": {"example.org": {"x509": pem}}}},
        }
    )


def _ca_pem_text() -> str:
    return pki.make_ca("chart test root", spiffe_td="example.org").pem


def test_the_terminator_sheds_load_before_its_memory_limit_kills_it() -> None:
    r = render_values(SHARED)
    config = yaml.safe_load(r.envoy_config() or "")
    overload = config["overload_manager"]
    (heap,) = [m for m in overload["resource_monitors"] if m["name"] == "envoy.resource_monitors.fixed_heap"]
    limit = r.container("envoy")["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    assert heap["typed_config"]["max_heap_size_bytes"] < int(limit[:-2]) * 1024 * 1024
    actions = {a["name"]: a["triggers"][0]["threshold"]["value"] for a in overload["actions"]}
    assert actions == {
        "envoy.overload_actions.shrink_heap": 0.9,
        "envoy.overload_actions.stop_accepting_requests": 0.95,
    }

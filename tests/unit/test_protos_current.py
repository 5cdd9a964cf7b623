"""The committed generated code is exactly what `make protos` writes, and installs can run it."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "ext_authz" / "_proto"


def test_generated_code_is_current(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    written = gen.generate(tmp_path)
    names = {str(p.relative_to(tmp_path)) for p in written}
    assert {"admin_pb2.py", "admin_pb2.pyi", "admin_pb2_grpc.py"} <= names
    assert {"envoy/external_auth_pb2.py", "envoy/external_auth_pb2_grpc.py", "envoy/base_pb2.py"} <= names
    committed = {str(p.relative_to(PROTO)) for p in PROTO.rglob("*.py*") if "__pycache__" not in p.parts}
    assert committed - names == {"__init__.py"}, "generated files that `make protos` no longer writes"
    for fresh in written:
        path = PROTO / fresh.relative_to(tmp_path)
        assert path.read_text() == fresh.read_text(), f"{path} is stale: run `make protos`"


def _floor(requirement: str) -> Version:
    spec = next(s for s in Requirement(requirement).specifier if s.operator == ">=")
    return Version(spec.version)


def test_runtime_floors_admit_no_runtime_the_generated_code_refuses() -> None:
    """Generated modules refuse a grpcio or protobuf older than the generator's at import."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {Requirement(d).name: d for d in project["dependencies"]}
    grpc_versions = set()
    protobuf_versions = set()
    for path in PROTO.rglob("*.py"):
        text = path.read_text()
        grpc_versions.update(re.findall(r"^GRPC_GENERATED_VERSION = '([\d.]+)'", text, flags=re.M))
        found = re.search(r"^# Protobuf Python Version: ([\d.]+)$", text, flags=re.M)
        if found:
            protobuf_versions.add(found.group(1))
    assert grpc_versions and protobuf_versions
    assert _floor(deps["grpcio"]) >= max(map(Version, grpc_versions)), "raise grpcio's floor in pyproject"
    assert _floor(deps["protobuf"]) >= max(map(Version, protobuf_versions)), "raise protobuf's floor"
    # protobuf's gencode runs only on the same major version of the runtime
    majors = {Version(v).major for v in protobuf_versions}
    assert Requirement(deps["protobuf"]).specifier.contains(f"{max(majors) + 1}.0") is False


def test_no_envoy_stubs_from_xds_protos() -> None:
    """xds-protos installs old copies of OpenTelemetry's proto modules under their import paths."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    everything = project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]
    assert "xds-protos" not in {Requirement(d).name for d in everything}


def test_version_is_the_distributions() -> None:
    import ext_authz

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert ext_authz.__version__ == project["version"]

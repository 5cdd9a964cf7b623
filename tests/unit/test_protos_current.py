"""The committed admin API code is exactly what `make protos` generates from protos/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    written = gen.generate(tmp_path)
    assert {p.name for p in written} == {"admin_pb2.py", "admin_pb2.pyi", "admin_pb2_grpc.py"}
    for fresh in written:
        committed = REPO / "ext_authz" / "_proto" / fresh.name
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `make protos`"

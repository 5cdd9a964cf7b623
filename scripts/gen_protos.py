"""Compile protos/ into ext_authz/_proto/ with grpcio-tools (`make protos`).

The generated modules are committed, so installing ext-authz needs no code generation; a test
regenerates them into a temporary directory and fails if anything differs.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
SOURCES = ["ext_authz/admin/v1/admin.proto"]


def generate(out: Path) -> list[Path]:
    """Write the generated modules flat into ``out`` with package-relative imports."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTOS}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}"]
        if protoc.main([*args, *SOURCES]) != 0:
            raise SystemExit("protoc failed")
        written = []
        for src in sorted(Path(tmp).rglob("*.py*")):
            text = src.read_text()
            # `from ext_authz.admin.v1 import admin_pb2` → a sibling import inside ext_authz._proto
            text = re.sub(r"^from ext_authz\.admin\.v1 import (\w+)", r"from . import \1", text, flags=re.M)
            dest = out / src.name
            dest.write_text(text)
            written.append(dest)
        return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "ext_authz" / "_proto"
    target.mkdir(parents=True, exist_ok=True)
    for path in generate(target):
        print(path.relative_to(target.parent) if target.parent in path.parents else path)

"""The import graph of ext_authz (module level): no cycles, and no import from a lower layer up to a
higher one (ARCHITECTURE.md). Imports inside functions are lazy on purpose and not counted."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ext_authz"

# Lower number = lower layer. A module may import from its own layer or below.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (
        0,
        (
            "ext_authz.clock",
            "ext_authz.collect",
            "ext_authz.errors",
            "ext_authz.identity.spiffe_id",
            "ext_authz._proto",
            "ext_authz.httpclient",
            "ext_authz.secrets",
            "ext_authz.values",
        ),
    ),
    (1, ("ext_authz.principal", "ext_authz.match")),
    (2, ("ext_authz.settings", "ext_authz.model")),
    (
        3,
        (
            "ext_authz.identity",
            "ext_authz.trust",
            "ext_authz.policy",
            "ext_authz.envoy",
            "ext_authz.state",
            "ext_authz.ssf",  # SETs, subjects, events (pure) and the receiver/transmitter edges
        ),
    ),
    (4, ("ext_authz.pipeline", "ext_authz.config", "ext_authz.loader")),
    (5, ("ext_authz.observe",)),
    (6, ("ext_authz.serve", "ext_authz.admin", "ext_authz.ssf.service")),
    (7, ("ext_authz.cli", "ext_authz.dev", "ext_authz.policytest")),
]


def layer(module: str) -> int:
    if module == "ext_authz":  # the package itself: only __version__, imported from anywhere
        return 0
    best, found = -1, -1
    for level, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), level
    assert found >= 0, f"{module} is in no layer: add it to LAYERS"
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """ext_authz modules imported at module level (not inside functions, not under TYPE_CHECKING)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()

    def scan(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("ext_authz"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                if target.startswith("ext_authz"):
                    out.add(target)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                scan(node.body)
                scan(node.orelse)
            elif isinstance(node, ast.Try):
                scan(node.body)

    scan(ast.parse(path.read_text()).body)
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if "_proto" not in p.parts}
    return {name: {t for t in imports(path) if t != name} for name, path in modules.items()}


def test_no_import_cycles() -> None:
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            nxt = nxt if nxt in g else next((m for m in g if nxt.startswith(m + ".")), nxt)
            if nxt not in g:
                continue
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)


def test_no_import_from_a_lower_layer_up() -> None:
    upward = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in graph().items()
        for target in targets
        if layer(target) > layer(name)
    ]
    assert upward == []


def test_the_graph_is_read() -> None:
    g = graph()
    assert {"ext_authz.settings", "ext_authz.state.snapshot", "ext_authz.envoy.xfcc"} <= g[
        "ext_authz.pipeline"
    ]
    assert "ext_authz.serve.runtime" in g["ext_authz.serve.app"]
    assert layer("ext_authz.serve.app") > layer("ext_authz.pipeline") > layer("ext_authz.settings")


def test_the_admin_cli_does_not_load_the_servicer() -> None:
    """Validation and record building live in state/commands.py, shared by the servicer and the CLI; the
    CLI is a client and never imports the server side."""
    import subprocess
    import sys

    code = (
        "import sys, ext_authz.admin.cli; print(sorted(m for m in sys.modules if m.startswith('ext_authz.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ext_authz.state.commands" in out
    assert "ext_authz.admin.servicer" not in out and "ext_authz.serve" not in out

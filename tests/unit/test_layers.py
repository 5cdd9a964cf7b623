"""The import graph of ext_authz: no cycles, and no import from a lower layer up to a higher one.

Every import counts: at module level, inside functions (lazy) and under TYPE_CHECKING. An import that
must go up is allowed only by a line of ALLOWED_UP with its reason. The layer table is ARCHITECTURE.md's
("Layers"): a test reads it there and compares."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ext_authz"

# Lower number = lower layer. A module may import from its own layer or below.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (
        0,
        (
            "ext_authz.clock",
            "ext_authz.collect",
            "ext_authz.errors",
            "ext_authz.spiffe_id",
            "ext_authz.stores",
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
            "ext_authz.state",
            "ext_authz.ssf",  # SETs, subjects, events (pure) and the receiver/transmitter edges
        ),
    ),
    (
        4,
        (
            "ext_authz.pipeline",
            "ext_authz.envoy",
            "ext_authz.config",
            "ext_authz.loader",
            "ext_authz.offline",
        ),
    ),
    (5, ("ext_authz.observe",)),
    (6, ("ext_authz.serve", "ext_authz.admin")),
    (7, ("ext_authz.cli", "ext_authz.dev", "ext_authz.policytest")),
]

# Imports that go up a layer on purpose, each with why. Empty is the goal: every entry is a debt.
ALLOWED_UP: dict[tuple[str, str], str] = {}


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


def imports_in(text: str, name: str, is_package: bool = False) -> set[str]:
    """Every ext_authz module the source ``text`` of module ``name`` imports, wherever the import
    statement is: at module level, in a function, under TYPE_CHECKING."""
    package = name if is_package else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(text)):
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
    return out


def imports(path: Path) -> set[str]:
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


@functools.cache
def graph() -> dict[str, frozenset[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if "_proto" not in p.parts}
    return {name: frozenset(t for t in imports(path) if t != name) for name, path in modules.items()}


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
        if layer(target) > layer(name) and (name, target) not in ALLOWED_UP
    ]
    assert upward == []
    assert all(reason.strip() for reason in ALLOWED_UP.values()), "every allowed entry says why"


def test_lazy_and_type_checking_imports_are_counted() -> None:
    """The two cycles this test once missed were a TYPE_CHECKING import and a lazy one."""
    probe = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..serve.runtime import Runtime\n"
        "def f():\n    from .backends import BACKENDS\n"
    )
    assert imports_in(probe, "ext_authz.state.probe") == {
        "ext_authz.serve.runtime",
        "ext_authz.state.backends",
    }


def test_the_graph_is_read() -> None:
    g = graph()
    assert {"ext_authz.settings", "ext_authz.state.snapshot", "ext_authz.identity.xfcc"} <= g[
        "ext_authz.pipeline"
    ]
    assert "ext_authz.serve.runtime" in g["ext_authz.serve.app"]
    assert layer("ext_authz.serve.app") > layer("ext_authz.pipeline") > layer("ext_authz.settings")


def test_architecture_md_draws_the_same_layers() -> None:
    """ARCHITECTURE.md's "Layers" table lists, per layer, exactly the modules of LAYERS."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    drawn: dict[int, set[str]] = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]+)\|", line)
        if m:
            drawn[int(m.group(1))] = {f"ext_authz.{x}" for x in re.findall(r"`([\w.]+)`", m.group(2))}
    assert drawn == {level: set(prefixes) for level, prefixes in LAYERS}


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


def test_every_exception_class_derives_from_the_one_root() -> None:
    """errors.Error is the root of every exception ext_authz defines (a private one aside)."""
    import importlib
    import inspect

    from ext_authz.errors import Error

    strays = []
    for name in sorted(graph()):
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            ours = cls.__module__ == name and not cls_name.startswith("_")
            if ours and issubclass(cls, BaseException) and not issubclass(cls, Error):
                strays.append(f"{name}.{cls_name}")
    assert strays == []

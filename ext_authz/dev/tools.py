"""Test tools built from the Go module proxy (SPIRE, helm, istioctl), cached outside the repository.

Each tool family is one Go module under ``tools/NAME/`` (its own go.mod and go.sum, so the families'
dependency graphs stay apart; the binaries are ``tool`` directives there). A build goes into
``$EXT_AUTHZ_TOOLS_DIR`` (default ``${XDG_CACHE_HOME:-~/.cache}/ext-authz/tools``) under
``NAME-HASH/bin/``, where HASH covers go.mod, go.sum and the build recipe: the same inputs are built
once, a changed pin gets a directory of its own. A finished build is renamed into place whole, under a
lock, so a second call (or a concurrent one) finds it and returns at once.

    python -m ext_authz.dev.tools spire        # prints the bin directory; builds it first if needed

Only the standard library is used, so this runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import Error

__all__ = [
    "TOOLS",
    "Binary",
    "Tool",
    "ToolError",
    "bin_dir",
    "build",
    "cache_root",
    "executable",
    "uv_executable",
]

REPO = Path(__file__).resolve().parents[2]
TOOLS_SRC = REPO / "tools"


class ToolError(Error):
    """A tool cannot be had: the message is one line saying why."""


@dataclass(frozen=True)
class Binary:
    name: str
    package: str
    # spire-server's SQLite datastore is mattn/go-sqlite3, which needs cgo (without it SPIRE refuses the
    # sqlite3 dialect at start). Everything else builds with CGO_ENABLED=0.
    cgo: bool = False


@dataclass(frozen=True)
class Tool:
    name: str
    binaries: tuple[Binary, ...]
    first_build: str = ""  # what a first build takes on 2 cores (bench/results/first-run.md), to say so

    @property
    def module_dir(self) -> Path:
        return TOOLS_SRC / self.name

    def recipe(self) -> str:
        """Everything besides go.mod/go.sum that decides the binaries: part of the cache key."""
        parts = [f"{b.name}={b.package} cgo={int(b.cgo)}" for b in self.binaries]
        return "\n".join([*parts, "flags=" + " ".join(BUILD_FLAGS)])


BUILD_FLAGS = ("-trimpath", "-buildvcs=false", "-mod=readonly", "-ldflags=-s -w")

TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "spire",
            (
                Binary("spire-server", "github.com/spiffe/spire/cmd/spire-server", cgo=True),
                Binary("spire-agent", "github.com/spiffe/spire/cmd/spire-agent"),
            ),
            "~11 min",
        ),
        # Measured on a fresh 2-core machine, the three built at once by `make prepare` (11 min in all,
        # bench/results/first-run.md): spire 672 s, istioctl 521 s, helm 241 s.
        Tool("helm", (Binary("helm", "helm.sh/helm/v3/cmd/helm"),), "~4 min"),
        Tool("istioctl", (Binary("istioctl", "istio.io/istio/istioctl/cmd/istioctl"),), "~9 min"),
    )
}


def cache_root() -> Path:
    explicit = os.environ.get("EXT_AUTHZ_TOOLS_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "ext-authz" / "tools"


def _tool(name: str) -> Tool:
    tool = TOOLS.get(name)
    if tool is None:
        raise ToolError(f"unknown tool {name!r}: expected one of {', '.join(sorted(TOOLS))}")
    return tool


def cache_key(name: str) -> str:
    tool = _tool(name)
    h = hashlib.sha256()
    for f in ("go.mod", "go.sum"):
        path = tool.module_dir / f
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ToolError(f"cannot read {path}: {exc.strerror}") from exc
        h.update(f"{f}\0{len(data)}\0".encode())
        h.update(data)
    h.update(tool.recipe().encode())
    return h.hexdigest()[:16]


def bin_dir(name: str) -> Path:
    """Where the tool's binaries are (or will be) for the current go.mod/go.sum."""
    return cache_root() / f"{name}-{cache_key(name)}" / "bin"


def _complete(bindir: Path, tool: Tool) -> bool:
    return all(os.access(bindir / b.name, os.X_OK) for b in tool.binaries)


def build(name: str, *, log: bool = True) -> Path:
    """The tool's bin directory, built first if it is not in the cache."""
    tool = _tool(name)
    bindir = bin_dir(name)
    if _complete(bindir, tool):
        return bindir
    go = shutil.which("go")
    if go is None:
        raise ToolError(
            f"go not found on PATH: building {name} needs Go {_go_version(tool)} or newer; install it from"
            " https://go.dev/dl/ and run make again"
        )
    final = bindir.parent
    final.parent.mkdir(parents=True, exist_ok=True)
    with (final.parent / f"{final.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of the same key waits, then finds it done
        if _complete(bindir, tool):
            return bindir
        for stale in final.parent.glob(f".{final.name}.*"):  # left by an interrupted build of this key
            shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        if log:
            names = ", ".join(b.name for b in tool.binaries)
            took = f", {tool.first_build} on 2 cores" if tool.first_build else ""
            print(
                f"building {name} from source ({names}) the first time{took}; cached after in {final}",
                file=sys.stderr,
                flush=True,
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            (tmp / "bin").mkdir()
            for b in tool.binaries:
                _go_build(go, tool, b, tmp / "bin" / b.name, log=log)
            if final.exists():  # an incomplete leftover from an interrupted older layout
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if log:
            print(
                f"built {name} in {time.monotonic() - started:.0f} s: {bindir}", file=sys.stderr, flush=True
            )
    return bindir


def _go_version(tool: Tool) -> str:
    for line in (tool.module_dir / "go.mod").read_text().splitlines():
        if line.startswith("go "):
            return line.split()[1]
    return "(see go.mod)"


def _go_build(go: str, tool: Tool, b: Binary, out: Path, *, log: bool) -> None:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "1" if b.cgo else "0"
    env["GOTOOLCHAIN"] = "local"  # never fetch another toolchain: an old Go fails with its own clear line
    env["GOFLAGS"] = ""  # only the flags below decide the build
    argv = [go, "build", *BUILD_FLAGS, "-o", str(out), b.package]
    proc = subprocess.run(
        argv, cwd=tool.module_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False
    )
    if proc.returncode != 0:
        tail = proc.stdout.decode(errors="replace").strip().splitlines()[-15:]
        if log and tail:
            print("\n".join(tail), file=sys.stderr)
        last = tail[-1] if tail else f"exit status {proc.returncode}"
        raise ToolError(f"building {b.name} failed: {last}")


def executable(tool: str, binary: str) -> Path:
    """The path of one binary of a tool, built if needed."""
    return build(tool) / binary


def uv_executable() -> Path:
    """The pinned uv that `make` installs into the tools cache (tools/uv/requirements.txt)."""
    pinned = (TOOLS_SRC / "uv" / "requirements.txt").read_text()
    version = next(
        (line.split("==")[1].split()[0] for line in pinned.splitlines() if line.startswith("uv==")), None
    )
    if version is None:
        raise ToolError("tools/uv/requirements.txt pins no uv version")
    uv = cache_root() / f"uv-{version}" / "bin" / "uv"
    if not os.access(uv, os.X_OK):
        raise ToolError(f"uv {version} is not installed at {uv}: run `make venv`")
    return uv


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ext_authz.dev.tools", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="+", metavar="NAME", help=f"one of {', '.join(sorted(TOOLS))}")
    p.add_argument("--path-only", action="store_true", help="print where it would be, build nothing")
    args = p.parse_args(argv)
    try:
        for name in args.names:
            print(bin_dir(name) if args.path_only else build(name), flush=True)
    except ToolError as exc:
        print(f"ext-authz tools: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

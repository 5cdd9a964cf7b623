"""ext_authz.dev.tools: the cache key, the cache hit that needs no Go, the one-line failure without Go.
(The builds themselves run in `make tools`, and SPIRE's in the SPIRE e2e tests.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ext_authz.dev import tools


@pytest.fixture
def module_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of tools/spire's go.mod and go.sum to change, and an empty cache."""
    src = tmp_path / "tools"
    (src / "spire").mkdir(parents=True)
    for f in ("go.mod", "go.sum"):
        shutil.copyfile(tools.REPO / "tools/spire" / f, src / "spire" / f)
    monkeypatch.setattr(tools, "TOOLS_SRC", src)
    monkeypatch.setenv("EXT_AUTHZ_TOOLS_DIR", str(tmp_path / "cache"))
    return src / "spire"


def test_every_tool_has_its_own_module_with_a_tool_directive_per_binary() -> None:
    for tool in tools.TOOLS.values():
        gomod = (tool.module_dir / "go.mod").read_text()
        assert (tool.module_dir / "go.sum").stat().st_size > 0
        for b in tool.binaries:
            assert b.package in gomod, (tool.name, b.package)
    assert "github.com/spiffe/spire v1.13.3" in (tools.TOOLS_SRC / "spire/go.mod").read_text()


def test_cache_dir_is_keyed_by_go_mod_and_go_sum(module_copy: Path, tmp_path: Path) -> None:
    first = tools.bin_dir("spire")
    assert first.parent.parent == tmp_path / "cache"
    assert first.parent.name.startswith("spire-")
    assert tools.bin_dir("spire") == first  # stable
    with (module_copy / "go.sum").open("a") as f:
        f.write("example.com/changed v1.0.0 h1:AAAA=\n")
    assert tools.bin_dir("spire") != first


def test_default_cache_root_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EXT_AUTHZ_TOOLS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tools.cache_root() == tmp_path / "ext-authz" / "tools"


def test_a_cached_build_is_returned_without_go(module_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tools.bin_dir("spire")
    bindir.mkdir(parents=True)
    for name in ("spire-server", "spire-agent"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", "")
    assert tools.build("spire") == bindir
    assert tools.executable("spire", "spire-agent") == bindir / "spire-agent"


def test_without_go_the_failure_is_one_clear_line(
    module_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(tools.ToolError, match="go not found on PATH"):
        tools.build("spire")
    assert tools.main(["spire"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ext-authz tools: go not found")


def test_unknown_tool_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert tools.main(["kubectl"]) == 2
    assert "unknown tool 'kubectl'" in capsys.readouterr().err


def test_make_run_serves_the_demos_own_config(tmp_path: Path) -> None:
    """On the default ports the demo's config.yaml is the config in force (editing it reloads); only
    where the stack must change it (free ports in tests, your --config) is a copy served."""
    from ext_authz.dev.demo import init_demo
    from ext_authz.dev.stack import Ports, Stack

    demo = tmp_path / "demo"
    init_demo(demo)
    repo = Path(__file__).resolve().parents[2]
    stack = Stack(demo.resolve(), repo / "envoy.yaml", demo.resolve() / ".run", Ports())
    stack.write_configs()
    assert stack.config_path == demo.resolve() / "config.yaml"
    assert not (demo / ".run/ext-authz.yaml").exists()
    free = Stack(demo.resolve(), repo / "envoy.yaml", demo.resolve() / ".run", Ports(ext_authz_http=0))
    free.write_configs()
    assert free.config_path == demo.resolve() / ".run/ext-authz.yaml" and free.config_path.exists()


def test_the_demo_lock_never_follows_a_link(tmp_path: Path) -> None:
    from ext_authz.dev.stack import DemoBusy, demo_session

    demo = tmp_path / "demo"
    (demo / ".run").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data")
    (demo / ".run/demo.lock").symlink_to(victim)
    with pytest.raises(OSError, match=r"(?i)symbolic link|too many levels"), demo_session(demo):
        pass
    assert victim.read_text() == "precious data"
    (demo / ".run/demo.lock").unlink()
    with demo_session(demo), pytest.raises(DemoBusy, match="already running"), demo_session(demo):
        pass

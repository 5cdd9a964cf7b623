"""The documentation's shell examples that run offline, run as printed (from the repository root, with
the demo written where the docs say): policy tests and the cookbook (docs/policy-tests.md), the config
error example (docs/configuration.md), promtool (docs/observing.md). The demo walkthrough (make run's
printed commands) is tested in tests/e2e/test_demo_walkthrough.py."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ext_authz.dev.demo import init_demo
from tests.conftest import REPO

BIN = Path(sys.executable).parent  # ext-authz is installed beside the interpreter


def page(name: str) -> str:
    """A page of the documentation site: docs/NAME.md."""
    return (REPO / "docs" / f"{name}.md").read_text()


def section(name: str, title: str) -> str:
    """The `## title` section of docs/NAME.md, up to the next `## ` heading."""
    text = page(name)
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def commands(block: str) -> list[str]:
    """Each command of a block, without its trailing comment."""
    out = []
    for line in block.splitlines():
        line = line.split("  #")[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def run(line: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run(
        shlex.split(line), capture_output=True, text=True, timeout=120, check=False, cwd=cwd, env=env
    )


@pytest.fixture
def repo_with_demo(tmp_path: Path) -> Path:
    """The repository's docs and deploy folders with a demo/ beside them, as after `make run`."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("docs", "deploy"):
        shutil.copytree(REPO / name, work / name, symlinks=True)
    init_demo(work / "demo")
    return work


def test_the_policy_test_commands_run_as_printed(repo_with_demo: Path) -> None:
    cmds = [c for b in sh_blocks(page("policy-tests")) for c in commands(b)]
    assert len(cmds) == 3 and all(c.startswith("ext-authz test ") for c in cmds)
    for line in cmds:
        res = run(line, repo_with_demo)
        assert res.returncode == 0, f"{line}\n{res.stdout}{res.stderr}"
        assert re.search(r"^\d+ passed, 0 failed$", res.stdout, re.M), res.stdout
    assert (repo_with_demo / "policy-tests.xml").read_text().startswith("<?xml")


def test_the_test_file_example_runs_against_the_demo(repo_with_demo: Path) -> None:
    example = re.search(r"```yaml\n(.*?)```", section("policy-tests", "A test file"), re.S)
    assert example
    path = repo_with_demo / "demo" / "readme-test.yaml"
    path.write_text(example.group(1))
    res = run(f"ext-authz test -v {path}", repo_with_demo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("PASS ") == 2


def test_the_cookbook_has_eleven_policies_each_tested() -> None:
    book = REPO / "docs/cookbook"
    numbers = sorted(set(re.findall(r"^  # (\d\d) ", (book / "policies.yaml").read_text(), re.M)))
    assert numbers == [f"{i:02d}" for i in range(1, 12)]
    for n in numbers:
        (test_file,) = book.glob(f"{n}-*.test.yaml")
        assert "expect:" in test_file.read_text()


def test_the_config_error_example_is_what_validate_prints(tmp_path: Path) -> None:
    block = re.search(r"```\n\$ (ext-authz validate bad\.yaml)\n(.*?)\n```", page("configuration"))
    assert block
    (tmp_path / "bad.yaml").write_text("rules:\n  - name: r\n    effect: maybe\n")
    res = run(block.group(1), tmp_path)
    assert res.returncode == 3
    assert res.stderr.strip() == block.group(2)


def test_the_promtool_command_runs_as_printed() -> None:
    (line,) = re.findall(r"`(promtool test rules [^`]+)`", page("observing"))
    res = run(line, REPO)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_the_suggest_commands_run_as_printed(repo_with_demo: Path) -> None:
    """The observing page's `report --suggest` lines, on a decision log of the demo."""
    from ext_authz.loader import load_engine
    from ext_authz.observe.decision_log import record
    from ext_authz.offline import decide_offline
    from tests.component.checkreq import check_request

    demo = repo_with_demo / "demo"
    engine = load_engine(demo / "config.yaml")
    now = datetime.now(UTC)
    lines = []
    for workload, path in (
        ("frontend", "/api/orders/7"),
        ("frontend", "/api/orders/8"),
        ("billing", "/api/x"),
    ):
        decision, _ = decide_offline(check_request(demo, workload=workload, path=path), engine, now)
        rec = record(
            decision.decision_id,
            now,
            ("", "GET", "backend.internal", path, "", None),
            decision,
            0.001,
            engine.revision,
            "",
            0,
        )
        lines.append(json.dumps(rec, default=str))
    (demo / ".run").mkdir(exist_ok=True)
    (demo / ".run/decisions.log").write_text("\n".join(lines) + "\n")
    block = sh_blocks(
        section("observing", "Least-privilege report").split("### A policy written from use")[1]
    )[0]
    for line in commands(block):
        target = None
        if " > " in line:
            line, target = line.split(" > ")
        res = run(line, repo_with_demo)
        assert res.returncode == 0, f"{line}\n{res.stdout}{res.stderr}"
        if target:
            (repo_with_demo / target.strip()).write_text(res.stdout)
    assert "suggested-web" in (demo / "suggested.yaml").read_text()

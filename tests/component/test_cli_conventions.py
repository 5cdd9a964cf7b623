"""`ext-authz test` and the CLI's conventions, run as a user runs them: real processes, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.component.test_sqlite_processes import FRONTEND, Proc, procs, sqlite_config  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "ext_authz.cli"]


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


# --- ext-authz test -----------------------------------------------------------------------------------


def test_the_demo_policy_tests_pass(demo_dir: Path) -> None:
    res = run("test", str(demo_dir / "policy-tests.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1] == "11 passed, 0 failed"
    verbose = run("test", "-v", str(demo_dir))  # a folder: every *test*.yaml in it
    assert verbose.returncode == 0 and verbose.stdout.count("PASS ") == 11


def _failing_copy(demo_dir: Path, dest: Path) -> Path:
    work = dest / "demo"
    shutil.copytree(demo_dir, work)
    doc = yaml.safe_load((work / "policy-tests.yaml").read_text())
    doc["tests"][1]["expect"] = {"decision": "allow"}  # the frontend may not POST: this case must fail
    path = work / "broken-test.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_failing_case_is_one_line_and_exit_1(demo_dir: Path, tmp_path: Path) -> None:
    res = run("test", str(_failing_copy(demo_dir, tmp_path)))
    assert res.returncode == 1
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == "10 passed, 1 failed"
    (fail,) = lines[:-1]
    assert fail.startswith("FAIL ") and "but may not write it" in fail
    assert "expected decision allow" in fail and "got decision deny" in fail and "reason no_rule" in fail


def test_json_and_junit_output(demo_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    res = run("test", "--json", "--junit", str(report), str(_failing_copy(demo_dir, tmp_path)))
    assert res.returncode == 1
    cases = json.loads(res.stdout)
    assert len(cases) == 11 and sum(not c["passed"] for c in cases) == 1
    failed = next(c for c in cases if not c["passed"])
    assert failed["got"]["decision"] == "deny" and failed["expected"] == {"decision": "allow"}
    suite = ET.fromstring(report.read_text())  # noqa: S314 (our own output)
    assert suite.tag == "testsuite" and suite.get("tests") == "11" and suite.get("failures") == "1"
    assert len(suite.findall("testcase/failure")) == 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("tests: [{name: x, expect: {decision: maybe}}]", "allow or deny"),
        ("tests: [{name: x, expct: {decision: allow}}]", "unknown keys"),
        ("tests: [{name: x, identity: {workload: frontend}, expect: {decision: allow}}]", "a SPIFFE ID"),
        ("tests: [{name: x, now: yesterday, expect: {decision: allow}}]", "RFC 3339"),
        ("[1, 2", "cannot read"),
    ],
)
def test_an_invalid_test_file_is_exit_3_with_one_line(
    demo_dir: Path, tmp_path: Path, body: str, needle: str
) -> None:
    path = tmp_path / "t-test.yaml"
    path.write_text(body)
    res = run("test", "--config", str(demo_dir / "config.yaml"), str(path))
    assert res.returncode == 3, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and str(path) in lines[0] and "Traceback" not in res.stderr


def test_the_cookbook_passes() -> None:
    res = run("test", str(REPO / "docs/cookbook"))
    assert res.returncode == 0, res.stdout + res.stderr
    passed = int(res.stdout.split()[-4])
    assert passed >= 30 and res.stdout.strip().endswith(f"{passed} passed, 0 failed")


def test_a_case_catches_a_policy_change(demo_dir: Path, tmp_path: Path) -> None:
    """The point of policy tests in CI: an edit that opens /admin fails the suite."""
    work = tmp_path / "demo"
    shutil.copytree(demo_dir, work)
    cfg = work / "config.yaml"
    cfg.write_text(cfg.read_text().replace("no-admin-through-proxy", "renamed-rule"))
    res = run("test", str(work / "policy-tests.yaml"))
    assert res.returncode == 1 and "/admin is closed to everyone" in res.stdout


# --- conventions --------------------------------------------------------------------------------------


def test_version() -> None:
    from importlib.metadata import version

    res = run("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"ext-authz {version('ext-authz')}"


def test_usage_errors_are_exit_2() -> None:
    assert run("no-such-command").returncode == 2
    assert run("check").returncode == 2  # required options missing
    assert run("--log-level", "loud", "validate", "x").returncode == 2


def test_bad_input_is_exit_3_one_line(demo_dir: Path, tmp_path: Path) -> None:
    req = tmp_path / "req.json"
    req.write_text("{}")
    res = run("check", "-c", str(demo_dir / "config.yaml"), "-r", str(req), "--now", "yesterday")
    assert res.returncode == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--now" in lines[0] and "Traceback" not in res.stderr


def test_global_flags_after_the_subcommand(demo_dir: Path) -> None:
    cfg = str(demo_dir / "config.yaml")
    before = run("--log-level", "debug", "validate", cfg)
    after = run("validate", cfg, "--log-level", "debug", "--log-format", "json")
    assert before.returncode == after.returncode == 0
    assert run("validate", cfg, "--log-level", "loud").returncode == 2


def test_a_subcommand_option_that_starts_like_a_global_flag(tmp_path: Path) -> None:
    """`report --log FILE` is report's own option, not an abbreviation of --log-level/--log-format."""
    log = tmp_path / "decisions.log"
    log.write_text("")
    for args in (["report", "--log", str(log)], ["report", "--log", str(log), "--log-level", "debug"]):
        res = run(*args)
        assert res.returncode == 0, res.stderr
    assert run("--log-le", "debug", "validate", "x").returncode == 2  # no abbreviations of global flags


def test_json_logs(demo_dir: Path, tmp_path: Path) -> None:
    """--log-format json (after the subcommand): every log line is one JSON object with an RFC 3339 time."""
    config = sqlite_config(demo_dir, tmp_path / "a", tmp_path / "state.db")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "serve", "-c", str(config), "--log-format", "json"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while "ready:" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    assert any("ready:" in ln for ln in lines), lines
    for line in lines:
        rec = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(rec)
        assert rec["time"].endswith("Z") and "T" in rec["time"]


def test_admin_address_from_the_environment_and_output_formats(
    demo_dir: Path,
    tmp_path: Path,
    procs: list[Proc],  # noqa: F811
) -> None:
    config = sqlite_config(demo_dir, tmp_path / "a", tmp_path / "state.db")
    procs.append(Proc(config))
    env = {"EXT_AUTHZ_ADMIN": yaml.safe_load(config.read_text())["admin_listen"]}
    made = run("revoke", FRONTEND, "--reason", "drill", "-o", "json", env=env)
    assert made.returncode == 0, made.stderr
    rev = json.loads(made.stdout)["revocation"]
    assert rev["value"] == FRONTEND and rev["created_at"].endswith("Z")
    as_yaml = yaml.safe_load(run("revocations", "-o", "yaml", env=env).stdout)
    assert [r["value"] for r in as_yaml["revocations"]] == [FRONTEND]
    table = run("revocations", env=env)
    assert table.returncode == 0 and FRONTEND in table.stdout and "drill" in table.stdout
    # the environment names a dead address: unreachable is exit 4; --admin and --config, said on the
    # command line, win over it
    dead = {"EXT_AUTHZ_ADMIN": f"unix://{tmp_path}/none.sock"}
    assert run("revocations", env=dead).returncode == 4
    assert run("revocations", "--admin", env["EXT_AUTHZ_ADMIN"], env=dead).returncode == 0
    assert run("revocations", "--config", str(config), env=dead).returncode == 0


def test_check_exit_codes_tell_allow_from_deny(demo_dir: Path, tmp_path: Path) -> None:
    from google.protobuf import json_format

    from tests.component.checkreq import check_request

    cfg = str(demo_dir / "config.yaml")
    allowed, denied = tmp_path / "a.json", tmp_path / "d.json"
    allowed.write_text(json_format.MessageToJson(check_request(demo_dir, workload="frontend")))
    denied.write_text(json_format.MessageToJson(check_request(demo_dir, workload="billing")))
    assert run("check", "-c", cfg, "-r", str(allowed)).returncode == 0
    assert run("check", "-c", cfg, "-r", str(denied)).returncode == 1


def test_a_closed_pipe_is_not_a_traceback(demo_dir: Path) -> None:
    """`ext-authz config schema | true`: the reader is gone before we write; we exit without a traceback."""
    res = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m ext_authz.cli config schema | true; echo ${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    # 141 as for a program SIGPIPE ended: never 0, so a failing suite piped to head cannot pass
    assert res.stdout.strip() == "141" and "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr


def test_bash_completion(tmp_path: Path) -> None:
    res = run("completion", "bash")
    assert res.returncode == 0
    script = tmp_path / "c.sh"
    script.write_text(res.stdout)
    probe = (
        f"source {script}\n"
        't() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _ext_authz; '
        'echo "${COMPREPLY[*]}"; }\n'
        "t ext-authz gr\n"
        't ext-authz grant ""\n'
        "t ext-authz check --config x.yaml --n\n"
    )
    out = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "grant grants"
    assert {"approve", "create", "end", "list"} <= set(out[1].split())
    assert out[2] == "--now"


def test_json_log_lines_survive_a_lone_surrogate() -> None:
    """Text from a JSON \\ud800 escape cannot be UTF-8: the line is still one JSON object."""
    import logging

    from ext_authz.cli import _JsonFormatter

    record = logging.LogRecord("ext_authz", logging.WARNING, "x", 1, "bad value %s", ("a\ud800b",), None)
    line = _JsonFormatter().format(record)
    assert json.loads(line)["message"] == "bad value a\\ud800b"


def _every_command() -> list[list[str]]:
    from ext_authz.cli import _commands, build_parser

    return [path.split() for path in sorted(_commands(build_parser())) if path]


def test_every_commands_help_says_its_exit_codes() -> None:
    """The same five meanings everywhere; the docs table lists the same ones."""
    from ext_authz.cli import EXIT_CODES

    for words in _every_command():
        res = run(*words, "--help")
        assert res.returncode == 0, words
        assert " ".join(res.stdout.split()).endswith(" ".join(EXIT_CODES.split())), words
    table = (REPO / "docs/command-line.md").read_text()
    for code, meaning in (
        ("0", "ok"),
        ("1", "denied"),
        ("2", "usage"),
        ("3", "invalid input"),
        ("4", "unreachable"),
    ):
        assert f"| {code} | {meaning}" in table, code


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (
            ["revoke", "spiffe://example.org/x", "--reason", "r", "--bogus"],
            2,
            "ext-authz revoke: error: unrecognized",
        ),
        (
            ["signal", "set", "device:x", "k=v", "--ttl", "1m", "--reason", "r", "--bogus"],
            2,
            "ext-authz signal set:",
        ),
        (["revoke", "spiffe://example.org/x", "--reason", "r", "--for", "-5m"], 3, "--for"),
        (["grant", "create", FRONTEND, "--path", "/x", "--for", "-1h", "--reason", "r"], 3, "--for"),
        (
            ["revoke", "spiffe://example.org/x", "--reason", "r", "--admin", "unix:///nonexistent.sock"],
            4,
            "reach",
        ),
    ],
)
def test_each_kind_of_bad_input_exits_as_documented(args: list[str], code: int, says: str) -> None:
    res = run(*args)
    assert res.returncode == code, res.stderr
    assert says in res.stderr and "Traceback" not in res.stderr
    if code == 2:  # the subcommand's usage, not the top level's
        assert res.stderr.startswith(f"usage: ext-authz {args[0]}")


def test_validate_exits_3_on_a_bad_config_as_its_help_says(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{name: r, effect: maybe}]\n")
    assert run("validate", str(bad)).returncode == 3
    assert "exit 0 valid, 3 invalid" in " ".join(run("--help").stdout.split())


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_loads_in_zsh(tmp_path: Path) -> None:
    script = tmp_path / "c.zsh"
    script.write_text(run("completion", "zsh").stdout)
    out = subprocess.run(
        ["zsh", "-f", "-c", f"source {script} && complete -p ext-authz"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "_ext_authz" in out.stdout, out.stderr

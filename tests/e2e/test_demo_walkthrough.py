"""`make run`: every command it prints works exactly as printed and does what its comment says —
requests to try, then continuous trust live: revoke and unrevoke, a just-in-time grant, a break-glass
exception, `tail` in a second terminal, and `report` at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e import walkthrough
from tests.e2e.demo_process import demo_up
from tests.waiting import until_sync

pytestmark = pytest.mark.e2e


def test_parse_pairs_each_command_with_its_expectation() -> None:
    text = (
        "# 1. a thing → 200\ncurl -si a \\\n   -H b c\n"
        "#    another → 403 revoked\ncurl -si d\n"
        "prose that is not a command\n"
        "  /x/bin/ext-authz tail --config c\n"
        "# 2. revoke → exit 0\n/x/bin/ext-authz revoke v --config c\n"
    )
    steps, tail = walkthrough.parse(text)
    assert [(s.command, s.status, s.reason, s.exit) for s in steps] == [
        ("curl -si a \\\n   -H b c", 200, "", 0),
        ("curl -si d", 403, "revoked", 0),
        ("/x/bin/ext-authz revoke v --config c", None, "", 0),
    ]
    assert tail == "/x/bin/ext-authz tail --config c"


def test_the_printed_walkthrough_works_as_printed(tmp_path: Path) -> None:
    with demo_up(tmp_path / "demo") as printed:
        steps, tail_command = walkthrough.parse(printed)
        assert len(steps) == walkthrough.STEPS, printed
        assert tail_command, printed
        tail = subprocess.Popen(
            ["bash", "-c", tail_command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            outputs = [walkthrough.run(step) for step in steps]
        finally:
            tail.terminate()
            seen, _ = tail.communicate(timeout=30)
        by_comment = dict(zip((s.comment for s in steps), outputs, strict=True))
        # The forged headers never reached the upstream.
        forged = next(o for c, o in by_comment.items() if "forged identity headers" in c)
        assert '"x-spiffe-id": "spiffe://example.org/ns/frontend/sa/web"' in forged
        assert "x-ext-authz-subject" not in forged
        # tail, in the second terminal, saw the revocation and the exception as they happened.
        assert "revoked" in seen and "exception" in seen, seen
        # The exception is listed, marked in the log, and the report counts what it allowed.
        listed = next(o for c, o in by_comment.items() if "always visible: listed" in c)
        assert "INC-1234" in listed and "local:oncall" in listed and "local:lead" in listed
        # The audit log holds every change, with who made it and why.
        audit = next(o for c, o in by_comment.items() if "the audit log" in c)
        for line in ("revoke", "unrevoke", "grant", "approve", "open"):
            assert f" {line} " in audit, audit
        assert "local:bob" in audit and "FIN-88 checked" in audit and "key rotated" in audit
        report = next(o for c, o in by_comment.items() if "what each identity used" in c)
        assert "allowed by exceptions:" in report and "spiffe://example.org/ns/billing/sa/worker" in report
        assert "made by local:oncall, approved by local:lead" in report, report


def test_a_second_run_starts_clean_and_a_concurrent_one_is_refused(tmp_path: Path) -> None:
    """make run twice: the second starts from empty state (a leftover exception would turn step 2's
    403 into 200), keeps the first run's log as .1; while one runs, another is refused at once."""
    demo = tmp_path / "demo"
    with demo_up(demo) as printed:
        steps, _ = walkthrough.parse(printed)
        assert "Config in force: " in printed and "State starts empty" in printed
        walkthrough.run(steps[0])
        log = demo / ".run/decisions.log"
        until_sync(lambda: '"decision_id"' in log.read_text(), "the first decision logged")
        first = log.read_text()
        # Leave state behind: an approved exception that would allow billing (step 2 says 403).
        cli = [sys.executable, "-m", "ext_authz.cli"]
        cfg = ["--config", f"{demo.resolve()}/config.yaml"]
        billing = "spiffe://example.org/ns/billing/sa/worker"
        opened = subprocess.run(
            [
                *cli,
                "exception",
                "open",
                billing,
                "--path",
                "/api/*",
                "--for",
                "10m",
                "--reason",
                "x",
                "-q",
                *cfg,
            ],
            env={**os.environ, "EXT_AUTHZ_ACTOR": "oncall"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        subprocess.run(
            [*cli, "exception", "approve", opened, "--reason", "ok", *cfg],
            env={**os.environ, "EXT_AUTHZ_ACTOR": "lead"},
            capture_output=True,
            text=True,
            check=True,
        )
        second = subprocess.run(
            [sys.executable, "-m", "ext_authz.cli", "dev", "up", str(demo), "--envoy-config", "envoy.yaml"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "EXT_AUTHZ_DEMO_PORTS": "free"},
        )
        assert second.returncode == 3, second.stdout + second.stderr
        assert f"a demo is already running from {demo.resolve()} (pid " in second.stderr
        assert "demo is up" not in second.stdout
    with demo_up(demo) as printed:
        steps, _ = walkthrough.parse(printed)
        outputs = [walkthrough.run(step) for step in steps[:2]]  # step 2: billing → 403 no_rule
        assert "403" in outputs[1] and "no_rule" in outputs[1]
        assert (demo / ".run/decisions.log.1").read_text().startswith(first)
        assert first not in log.read_text()  # this run's log starts empty


def test_dev_up_takes_your_config_and_its_printed_commands_run(tmp_path: Path) -> None:
    """`dev up --config`: your rules on the demo's Envoy and identities. Here the config is the demo's
    own, with the frontend's allow rule removed: the printed request is refused by *your* policy."""
    import yaml

    from ext_authz.dev.demo import init_demo

    demo = tmp_path / "demo"
    init_demo(demo)
    cfg = yaml.safe_load((demo / "config.yaml").read_text())
    cfg["rules"] = [r for r in cfg["rules"] if r["name"] != "frontend-reads"]
    mine = tmp_path / "mine" / "policy.yaml"
    mine.parent.mkdir()
    for td in cfg["trust_domains"].values():  # relative to my file now, as a user's would be
        for k in ("x509_bundle", "jwt_bundle"):
            if k in td:
                td[k] = f"../demo/{td[k]}"
    for iss in cfg["issuers"].values():
        iss["jwks"] = f"../demo/{iss['jwks']}"
    mine.write_text(yaml.safe_dump(cfg))
    with demo_up(demo, "--config", str(mine)) as printed:
        assert str(mine) in printed
        lines = [
            line for line in printed.splitlines() if line.startswith(("curl ", "/")) and "tail" not in line
        ]
        assert len(lines) == 3, printed
        outputs = [
            subprocess.run(
                ["bash", "-c", line], capture_output=True, text=True, timeout=60, check=True
            ).stdout
            for line in lines
        ]
        assert "HTTP/1.1 403" in outputs[0] and "x-ext-authz-reason: no_rule" in outputs[0]  # my policy
        assert "HTTP/1.1 200" in outputs[1]
        assert "https://idp.example.com#alice" in outputs[2]


def test_dev_up_refuses_a_config_it_cannot_load(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{name: r, effect: maybe}]\n")
    res = subprocess.run(
        [sys.executable, "-m", "ext_authz.cli", "dev", "up", str(tmp_path / "demo"), "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert res.returncode == 3 and "rules[0].effect" in res.stderr and "Traceback" not in res.stderr

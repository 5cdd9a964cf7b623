"""`make run`: every command it prints works exactly as printed and does what its comment says —
requests to try, then continuous trust live: revoke and unrevoke, a just-in-time grant, a break-glass
exception, `tail` in a second terminal, and `report` at the end."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

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
        assert len(steps) == 23, printed  # every printed command was found
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
        assert "INC-1234" in listed
        report = outputs[-1]
        assert "allowed by exceptions:" in report and "spiffe://example.org/ns/billing/sa/worker" in report


def test_a_restarted_demo_keeps_its_logs(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    with demo_up(demo) as printed:
        steps, _ = walkthrough.parse(printed)
        walkthrough.run(steps[0])
        log = demo / ".run/ext-authz.log"
        until_sync(lambda: '"decision_id"' in log.read_text(), "the first decision logged")
        first = log.read_text()
    with demo_up(demo):
        assert log.read_text().startswith(first)  # appended to, not truncated

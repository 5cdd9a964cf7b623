"""Running what `make run` prints, exactly as printed.

The demo prints numbered examples: comment lines, each ending in "→ EXPECTED" for the command that
follows it (`\\` continues a command over lines). EXPECTED is an HTTP status and an optional reason
(curl commands, run with `-si`: the status line and `x-ext-authz-reason` are in the output), or
`exit N` (anything else). One indented line starts with the ext-authz binary and `tail`: it runs
until interrupted, so it is started in the background and stopped at the end.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

__all__ = ["STEPS", "Step", "parse", "run"]

STEPS = 33  # commands the walkthrough prints (with or without SPIRE): a test fails if one is not found

_EXPECT = re.compile(r"→\s*(exit\s+(\d+)|(\d{3})(?:\s+(\w+))?)\s*$")
_STATUS_LINE = re.compile(r"^HTTP/[\d.]+\s+(\d{3})", re.M)


@dataclass
class Step:
    comment: str
    command: str
    status: int | None = None  # a curl's expected HTTP status
    reason: str = ""  # ... and reason (x-ext-authz-reason on a denial; the allowing reason in the echo)
    exit: int = 0  # any other command's expected exit status


def parse(text: str) -> tuple[list[Step], str]:
    """(the steps in order, the background `tail` command)."""
    steps: list[Step] = []
    tail = ""
    comment = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        i += 1
        if stripped.startswith("#"):
            comment = stripped
            continue
        if not stripped or "→" in stripped:
            continue
        command = stripped
        while command.endswith("\\") and i < len(lines):
            command += "\n" + lines[i]
            i += 1
        if line.startswith("  ") and " tail " in command:
            tail = command
            continue
        if not (command.startswith(("curl ", "grep ")) or "/ext-authz " in command.split("\n")[0]):
            continue  # prose
        m = _EXPECT.search(comment)
        assert m is not None, f"no expectation for {command!r} in {comment!r}"
        if m.group(2) is not None:
            steps.append(Step(comment, command, exit=int(m.group(2))))
        else:
            steps.append(Step(comment, command, status=int(m.group(3)), reason=m.group(4) or ""))
    return steps, tail


def run(step: Step) -> str:
    """Run one step as printed; assert what its comment promised; return its output."""
    res = subprocess.run(
        ["bash", "-c", step.command], capture_output=True, text=True, timeout=60, check=False
    )
    if step.status is None:
        assert res.returncode == step.exit, (step.comment, step.command, res.stdout, res.stderr)
        return res.stdout
    assert res.returncode == 0, (step.command, res.stderr)
    statuses = _STATUS_LINE.findall(res.stdout)
    assert statuses and int(statuses[-1]) == step.status, (step.comment, step.command, res.stdout)
    if step.reason and step.status >= 400:
        assert f"x-ext-authz-reason: {step.reason}" in res.stdout, (step.comment, res.stdout)
    elif step.reason:  # an allow for a reason of its own: the upstream echo names it
        assert f"x-ext-authz-{step.reason}" in res.stdout, (step.comment, res.stdout)
    return res.stdout

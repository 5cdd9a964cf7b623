"""A short coverage-guided run of every fuzz target (atheris/libFuzzer) in its own process.

Bounded by runs, not time, so a slow machine runs the same amount of fuzzing. `make fuzz` runs each
target far longer. A finding fails the test with libFuzzer's report, and its input is kept as crash-*.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fuzz.targets import TARGETS

RUNS = {"config": 1500, "certificate": 3000, "jwt": 3000}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_survives_a_short_run(target: str, tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.run",
            target,
            f"-runs={RUNS.get(target, 6000)}",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = res.stderr[-4000:]
    assert res.returncode == 0, report
    assert "Done " in res.stderr and "stat::number_of_executed_units" in res.stderr, report
    assert not list(tmp_path.glob("crash-*")), report

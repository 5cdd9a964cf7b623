"""The soak (ext_authz/dev/soak.py) as a test: two minutes through the real Envoy with revocations,
exceptions and grants churning. Marked `soak` as well as `e2e`; `make test` runs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ext_authz.dev.demo import init_demo
from ext_authz.dev.soak import run_soak
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.soak]

SECONDS = float(os.environ.get("EXT_AUTHZ_SOAK_SECONDS", "120"))


def test_soak_with_churn_has_no_error_no_wrong_answer_and_flat_memory(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    init_demo(demo)

    report = run_soak(demo, REPO / "envoy.yaml", tmp_path / "run", seconds=SECONDS, rate=120, seed=7)

    summary = {k: v for k, v in report.as_dict().items() if k != "violations"}
    assert report.errors == 0, summary
    assert report.envoy_ext_authz_errors == 0, summary
    assert report.violations == [], report.violations[:10]
    assert report.requests >= SECONDS * 120 * 0.8, summary  # the load really ran at about its rate
    assert report.settled_checked >= report.requests * 0.5, summary
    assert report.revocations >= SECONDS * 0.8 and report.exceptions_opened >= 2, summary
    assert {"200", "403"} <= set(report.by_status), summary
    # Flat memory: after the first 20 s of warm-up, RSS grows by less than 15 MB to the end.
    warm = [mb for t, mb in report.rss_mb if t >= 20]
    assert warm and max(warm) - warm[0] < 15, report.rss_mb

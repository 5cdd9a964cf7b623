"""The soak (ext_authz/dev/soak.py) as a test through the real Envoy with revocations, exceptions and
grants churning. Marked `soak` as well as `e2e`.

`make test` runs it for 30 s: long enough for what it is there to find — a wrong answer while state
churns (a revoked token allowed, an exception or grant applied when closed, or not applied when open:
~24 revocations and lifts, ~4 exceptions opened and closed, grants coming and going), an error between
Envoy and ext-authz, and a request that fails. Flat memory needs minutes: `make soak` (bench/soak.py,
two minutes at 150/s) and EXT_AUTHZ_SOAK_SECONDS=120 here check it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ext_authz.dev.demo import init_demo
from ext_authz.dev.soak import run_soak
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.soak]

SECONDS = float(os.environ.get("EXT_AUTHZ_SOAK_SECONDS", "30"))


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
    if SECONDS >= 90:  # flat memory: after 20 s of warm-up, RSS grows by less than 15 MB to the end
        warm = [mb for t, mb in report.rss_mb if t >= 20]
        assert warm and max(warm) - warm[0] < 15, report.rss_mb

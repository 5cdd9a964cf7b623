"""The alerting rules (deploy/prometheus/ext-authz.rules.yaml): valid for `promtool check rules`, their
unit tests pass under `promtool test rules` (each alert fires on what should raise it and stays quiet on a
healthy fleet), a changed threshold fails those tests, and every metric they read is one we export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from ext_authz.observe.metrics import Metrics
from tests.conftest import REPO

RULES = REPO / "deploy/prometheus/ext-authz.rules.yaml"
TESTS = REPO / "deploy/prometheus/ext-authz.rules.test.yaml"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: `make system-deps` installs Debian's prometheus package"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


def test_promtool_checks_the_rules() -> None:
    res = promtool("check", "rules", str(RULES), cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 13 rules found" in res.stdout


def test_promtool_unit_tests_pass() -> None:
    res = promtool("test", "rules", TESTS.name, cwd=TESTS.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_the_unit_tests_catch_a_changed_rule(tmp_path: Path) -> None:
    """The tests can fail: a disconnected store that alerts only after 10 minutes is caught."""
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("for: 1m", "for: 10m", 1))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    res = promtool("test", "rules", TESTS.name, cwd=tmp_path)
    assert res.returncode != 0 and "ExtAuthzStateStoreDisconnected" in res.stdout + res.stderr


def test_every_metric_the_alerts_read_is_exported() -> None:
    m = Metrics()
    m.add_state_collector(lambda: {})
    exported = set()
    for family in m.registry.collect():
        exported.add(family.name)
        exported |= {f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_count", "_sum")}
    doc = yaml.safe_load(RULES.read_text())
    used = {
        name
        for group in doc["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\bext_authz_[a-z_]+", rule["expr"])
    }
    assert len(used) >= 9
    assert used <= exported, sorted(used - exported)
    assert {r["alert"] for g in doc["groups"] for r in g["rules"]} >= {
        "ExtAuthzStateStoreDisconnected",
        "ExtAuthzConfigReloadFailing",
        "ExtAuthzTrustBundleNearExpiry",
        "ExtAuthzCheckErrors",
        "ExtAuthzDenialSpike",
        "ExtAuthzDecisionLogDropping",
    }


def test_every_alert_has_a_runbook_whose_anchor_exists() -> None:
    doc = yaml.safe_load(RULES.read_text())
    page = (REPO / "docs/runbooks.md").read_text()
    anchors = {line[3:].strip().lower() for line in page.splitlines() if line.startswith("## ")}
    for group in doc["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"]["runbook_url"]
            path, _, anchor = url.partition("#")
            assert path == "docs/runbooks.md" and anchor == rule["alert"].lower(), url
            assert anchor in anchors, f"{rule['alert']}: no section in docs/runbooks.md"


def test_the_chart_points_runbooks_at_your_docs() -> None:
    from tests.helm import render_values

    r = render_values(
        {
            "metrics": {
                "prometheusRule": {"enabled": True, "runbookBaseURL": "https://docs.example.com/runbooks/"}
            }
        }
    )
    (rule,) = r.of("PrometheusRule")
    urls = [x["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for x in g["rules"]]
    assert urls and all(u.startswith("https://docs.example.com/runbooks/#extauthz") for u in urls)

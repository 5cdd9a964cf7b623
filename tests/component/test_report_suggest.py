"""`ext-authz report --suggest`: a least-privilege policy written from a recorded decision log of the
demo, that allows everything the log allowed and less than the demo policy."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml

from ext_authz.loader import load_engine
from ext_authz.observe.suggest import path_pattern
from ext_authz.offline import decide_offline
from tests.component.checkreq import check_request
from tests.component.test_server import start, write_config

CLI = [sys.executable, "-m", "ext_authz.cli"]


def test_path_patterns_never_keep_an_id() -> None:
    assert path_pattern("/api/orders/12345") == "/api/orders/*"
    assert path_pattern("/api/orders/0b956be1-c462-4ea6-99a9-cda0387b07d0/items") == "/api/orders/*/items"
    assert path_pattern("/blobs/e26225cdad398d42f664b75a") == "/blobs/*"
    assert path_pattern("/reset/[REDACTED]") == "/reset/*"
    assert path_pattern("/api/customer-settings") == "/api/customer-settings"


async def test_the_suggested_policy_allows_what_was_used_and_no_more(demo_dir: Path, tmp_path: Path) -> None:
    cfg_path = write_config(demo_dir, tmp_path)
    log = tmp_path / "decisions.log"
    cfg = yaml.safe_load(cfg_path.read_text())
    alice = (demo_dir / "tokens/alice.jwt").read_text().strip()
    used = [
        check_request(demo_dir, workload="frontend", path="/api/orders/1001"),
        check_request(demo_dir, workload="frontend", path="/api/orders/1002"),
        check_request(demo_dir, workload="frontend", path="/api/orders/0b956be1-c462-4ea6-99a9-cda0387b07d0"),
        check_request(demo_dir, token=alice, path="/user/profile", listener="edge"),
        check_request(demo_dir, workload="billing", path="/api/orders"),  # denied: not suggested
    ]
    running = await start(cfg_path)
    try:
        for req in used:
            await running.stub.Check(req)
        log.write_text(running.log.getvalue())  # the decision log as the server wrote it
    finally:
        await running.channel.close()
        await running.server.stop(0)
    assert log.read_text().count("\n") == len(used)

    res = subprocess.run(
        [*CLI, "report", "--suggest", "--config", str(cfg_path), "--log", str(log)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "1001" not in res.stdout and "0b956be1" not in res.stdout  # ids are never literals
    assert "never used" in res.stdout and "frontend-reads" not in yaml.safe_load(res.stdout)["rules"]
    suggested = tmp_path / "suggested.yaml"
    suggested.write_text(res.stdout)
    assert subprocess.run([*CLI, "validate", str(suggested)], capture_output=True).returncode == 0
    engine = load_engine(suggested)
    demo = load_engine(cfg_path)
    now = datetime.now(UTC)
    for req in used[:4]:  # everything the log allowed, still allowed
        assert decide_offline(req, engine, now)[0].allowed, req.attributes.request.http.path
    billing = decide_offline(used[4], engine, now)[0]
    assert not billing.allowed
    # Less than the demo policy: what the demo allows the frontend, and it never used, is not allowed.
    unused = check_request(demo_dir, workload="frontend", path="/api/inventory", method="HEAD")
    assert decide_offline(unused, demo, now)[0].allowed
    assert not decide_offline(unused, engine, now)[0].allowed
    # --shadow: the enforced policy unchanged, the suggestion beside it in shadow.
    shadow = subprocess.run(
        [*CLI, "report", "--suggest", "--shadow", "--config", str(cfg_path), "--log", str(log)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rules = yaml.safe_load(shadow)["rules"]
    assert [r["name"] for r in rules if r.get("mode") != "shadow"] == [
        r["name"] for r in cfg["rules"] if r.get("mode") != "shadow"
    ]
    assert any(r["name"].startswith("suggested-") and r["mode"] == "shadow" for r in rules)


def _record(principal: str, rule: str, method: str, path: str) -> dict[str, object]:
    return {
        "decision_id": "d",
        "time": "2026-12-07T10:00:00+00:00",
        "decision": "allow",
        "reason": "allowed",
        "rule": rule,
        "method": method,
        "host": "backend.internal",
        "path": path,
        "identity": {"principals": [principal]},
    }


def _suggest(tmp_path: Path, cfg_path: Path, records: list[dict[str, object]]) -> str:
    import json

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    res = subprocess.run(
        [*CLI, "report", "--suggest", "--config", str(cfg_path), "--log", str(log)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_an_identity_from_the_log_cannot_write_config(demo_dir: Path, tmp_path: Path) -> None:
    """A subject holding U+2028 (a line break to YAML) once ended the comment it was listed in and wrote
    `grants: {require_approval: false}` into the suggested config."""
    cfg_path = write_config(demo_dir, tmp_path)
    evil = "https://idp.example.com#mallory\u2028grants: {require_approval: false}\u2028#"
    out = _suggest(tmp_path, cfg_path, [_record(evil, "people-read-profile", "GET", "/user/profile")])
    doc = yaml.safe_load(out)
    assert set(doc) == set(yaml.safe_load(cfg_path.read_text())), sorted(doc)
    assert "grants" not in doc or doc["grants"] == yaml.safe_load(cfg_path.read_text()).get("grants")


def test_a_suggestion_is_never_broader_than_the_rule_it_replaces(demo_dir: Path, tmp_path: Path) -> None:
    cfg_path = write_config(demo_dir, tmp_path)
    frontend = "spiffe://example.org/ns/frontend/sa/web"
    out = _suggest(
        tmp_path,
        cfg_path,
        [
            _record(frontend, "frontend-reads", "GET", f"/api/{name}")
            for name in ("orders", "customers", "items", "invoices", "12345")
        ]
        + [_record("https://idp.example.com#alice", "people-read-profile", "GET", "/12345")],
    )
    rules = {r["name"]: r for r in yaml.safe_load(out)["rules"]}
    (mine,) = [r for n, r in rules.items() if n.startswith("suggested-web-frontend-reads")]
    assert mine["match"]["methods"] == ["GET"]  # used: GET only (the rule allows HEAD too)
    assert mine["match"]["context_extensions"] == {"listener": "mesh"}  # kept: mesh only
    assert mine["when"].startswith('(identity.spiffe_id.startsWith("spiffe://example.org/ns/frontend/"))')
    assert mine["match"]["paths"] == ["/api/*"]  # five siblings, within the rule's /api/*
    # An id at the root would be every path: not written, and said.
    assert not any(n.startswith("suggested-alice") for n in rules)
    assert "every path" in out


def test_report_counts_where_shadow_rules_would_have_decided_otherwise() -> None:
    from ext_authz.observe.report import build_report, render_report

    def rec(decision: str, shadow: str | None) -> dict[str, object]:
        r: dict[str, object] = {
            "decision_id": "d",
            "decision": decision,
            "reason": "x",
            "rule": "r",
            "identity": {"principals": ["spiffe://example.org/a"]},
        }
        if shadow is not None:
            r["shadow_decision"] = shadow
        return r

    (u,) = build_report(
        [rec("deny", "allow"), rec("deny", "allow"), rec("allow", "allow"), rec("deny", None)],
        None,
        datetime.now(UTC),
    )
    assert dict(u.shadow_differs) == {"deny → shadow allow": 2}
    assert "shadow rules differ:   deny → shadow allow (2)" in render_report([u], with_policy=False)

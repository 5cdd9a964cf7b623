"""`ext-authz test`: expectations on responses, and unknown keys are errors, never ignored."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ext_authz.policytest import TestFileError, run_file

COOKBOOK = Path(__file__).resolve().parents[2] / "docs/cookbook"


def cookbook_case(tmp_path: Path, case: dict[str, object]) -> Path:
    shutil.copy(COOKBOOK / "policies.yaml", tmp_path / "policies.yaml")
    path = tmp_path / "t.test.yaml"
    path.write_text(yaml.safe_dump({"config": "policies.yaml", "tests": [case]}))
    return path


PORTAL = {
    "name": "portal",
    "request": {"method": "GET", "path": "/portal/home", "host": "app.example.com"},
    "identity": {
        "user": {"issuer": "https://idp.example.com", "subject": "alice", "claims": {"tenant": "acme"}}
    },
}


@pytest.mark.parametrize(
    ("expect", "passes"),
    [
        ({"upstream_headers": {"x-tenant": "acme"}}, True),
        ({"upstream_headers": {"x-tenant": "other"}}, False),
        ({"upstream_headers": {"x-user-email": ""}}, True),
        ({"upstream_headers": {"x-absent": None}}, True),
        ({"upstream_headers": {"x-tenant": None}}, False),
        ({"metadata": {"tenant": "acme", "plan": "free"}}, True),
        ({"metadata": {"plan": "gold"}}, False),
        ({"client_headers": {"cache-control": "private"}}, True),
        ({"client_headers": {"cache-control": "no-store"}}, False),
        ({"status": 200, "decision": "allow"}, True),
    ],
)
def test_response_expectations_pass_and_fail(tmp_path: Path, expect: dict[str, object], passes: bool) -> None:
    (result,) = run_file(cookbook_case(tmp_path, {**PORTAL, "expect": expect}))
    assert result.passed is passes, result.line()
    if not passes:
        assert "FAIL" in result.line() and next(iter(expect)) in result.line()


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ({"request": {"method": "GET", "pathh": "/admin"}}, "request: unknown keys ['pathh']"),
        ({"credentials": {"tokne": "x"}}, "credentials: unknown keys ['tokne']"),
        ({"state": {"revocation": []}}, "state: unknown keys ['revocation']"),
        ({"expects": {"decision": "deny"}}, "unknown keys ['expects']"),
        ({"expect": {"decison": "deny"}}, "expect names some of"),
    ],
)
def test_a_typo_anywhere_in_a_case_is_an_error(tmp_path: Path, case: dict[str, object], named: str) -> None:
    """A typo must never test something else and pass (`pathh: /admin` tested `/`)."""
    full: dict[str, object] = {"name": "typo", "expect": {"decision": "deny"}, **case}
    with pytest.raises(TestFileError) as err:
        run_file(cookbook_case(tmp_path, full))
    assert named in str(err.value)

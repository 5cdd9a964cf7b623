"""The configuration's JSON Schema (`ext-authz config schema`): derived from the settings types, committed
as deploy/ext-authz.schema.json for editors, and in step with what the loader accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ext_authz.settings import json_schema
from tests.conftest import REPO
from tests.helm import CASES, render

COMMITTED = REPO / "deploy/ext-authz.schema.json"


def test_the_committed_schema_is_the_generated_one() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ext_authz.cli", "config", "schema"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == json.loads(COMMITTED.read_text()) == json_schema(), "regenerate: make schema"


def configs(demo_dir: Path) -> list[tuple[str, Any]]:
    """The demo's config and the one the Helm chart renders for each value combination it is tested with."""
    found = [("demo", yaml.safe_load((demo_dir / "config.yaml").read_text()))]
    for case in CASES:
        found.append((f"helm chart, {case.name}", yaml.safe_load(render(case).ext_authz_config())))
    return found


def test_every_shipped_config_validates_against_the_schema(demo_dir: Path) -> None:
    schema = json.loads(COMMITTED.read_text())
    checked = configs(demo_dir)
    assert len(checked) >= 2
    for where, cfg in checked:
        errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(cfg)]
        assert errors == [], where


@pytest.mark.parametrize(
    "cfg",
    [{"listne": "127.0.0.1:1"}, {"rules": [{"name": "a", "effect": "permit"}]}, {"cache": {"size": -1}}],
    ids=["unknown-key", "bad-enum", "negative"],
)
def test_the_schema_refuses_what_the_loader_refuses(cfg: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, json.loads(COMMITTED.read_text()))


def test_the_chart_embeds_the_config_schema() -> None:
    """`helm install --set config.rulez=1` fails as `ext-authz validate` would (make schema writes it)."""
    import importlib.util

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("embed", repo / "scripts/embed_config_schema.py")
    assert spec is not None and spec.loader is not None
    embed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(embed)
    values = json.loads(embed.VALUES.read_text())
    assert values == embed.embedded(values, json.loads(embed.CONFIG.read_text())), "regenerate: make schema"
    assert values["properties"]["config"]["additionalProperties"] is False

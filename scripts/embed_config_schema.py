"""Embed the config's JSON Schema (deploy/ext-authz.schema.json) into the Helm chart's values.schema.json
as the schema of `config`, so `helm install --set config.rulez=1` fails as `ext-authz validate` would.

Run by `make schema` after `ext-authz config schema > deploy/ext-authz.schema.json`; a test checks the
chart holds what this writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "deploy/ext-authz.schema.json"
VALUES = REPO / "deploy/helm/ext-authz/values.schema.json"
DESCRIPTION = (
    "ext-authz settings (deploy/ext-authz.schema.json, embedded: a misspelled key fails helm install);"
    " the chart owns listen, check, http_listen, admin_listen, state, trust_domains, mtls"
)


def embedded(values: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    out["$defs"] = config["$defs"]
    props = dict(values["properties"])
    props["config"] = {
        "type": "object",
        "description": DESCRIPTION,
        "properties": config["properties"],
        "additionalProperties": False,
    }
    out["properties"] = props
    return out


def main() -> int:
    values = json.loads(VALUES.read_text())
    config = json.loads(CONFIG.read_text())
    VALUES.write_text(json.dumps(embedded(values, config), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

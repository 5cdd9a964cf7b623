"""Shared fixtures: a real demo trust domain (CA, SVIDs, keys, tokens, config) per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ext_authz.dev.demo import init_demo

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("demo")
    init_demo(d)
    return d

"""Load one Engine generation: the settings file, the trust files it names, and the compiled policy."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .config import parse_settings, read_config
from .identity.jwt import TokenSettings
from .pipeline import Engine
from .policy import compile_policy
from .settings import Settings
from .trust.files import load_trust

__all__ = ["build_engine", "load_engine"]


def build_engine(cfg: Settings, config_bytes: bytes) -> Engine:
    """Trust files and compiled policy for these settings, or a TrustError/ConfigError naming the file."""
    trust = load_trust(cfg)
    policy = compile_policy(cfg.rules, str(cfg.source), cfg.limits)
    return Engine(
        config=cfg,
        trust=trust,
        policy=policy,
        tokens=TokenSettings(cfg.jwt_svid, cfg.issuers),
        config_revision=hashlib.sha256(config_bytes).hexdigest()[:12],
    )


def load_engine(path: str | Path) -> Engine:
    """Settings, trust material and compiled policy, or a ConfigError/TrustError naming the file."""
    data = read_config(path)  # read once: the revision is the digest of exactly what was parsed
    return build_engine(parse_settings(data, Path(path)), data)

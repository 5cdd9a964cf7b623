"""Load one Engine generation: the settings file, the trust files it names, and the compiled policy."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .collect import paused_collection
from .config import parse_settings, read_config
from .errors import ConfigError
from .identity.jwt import TokenSettings
from .pipeline import Engine
from .policy import compile_policy
from .secrets import read_secret
from .settings import Settings
from .trust.files import load_trust

__all__ = ["build_engine", "load_engine"]


def build_engine(cfg: Settings, config_bytes: bytes) -> Engine:
    """Trust files and compiled policy for these settings, or a TrustError/ConfigError naming the file."""
    trust = load_trust(cfg)
    policy = compile_policy(cfg.rules, str(cfg.source), cfg.limits)
    _check_signing_key(cfg)
    _check_ssf_secrets(cfg)
    return Engine(
        config=cfg,
        trust=trust,
        policy=policy,
        tokens=TokenSettings(cfg.jwt_svid, cfg.issuers),
        config_revision=hashlib.sha256(config_bytes).hexdigest()[:12],
    )


def _check_signing_key(cfg: Settings) -> None:
    tx = cfg.shared_signals.transmitter
    if tx is not None:
        from .ssf.transmitter import load_signing_key

        load_signing_key(tx.key, tx.algorithm)  # a ConfigError naming the file: a reload keeps the last good


def _check_ssf_secrets(cfg: Settings) -> None:
    ss = cfg.shared_signals
    for i, r in enumerate(ss.receivers):
        if r.authorization_file is not None:
            read_secret(r.authorization_file, f"shared_signals.receivers[{i}].authorization_file")
    if ss.transmitter is not None:
        seen: dict[str, int] = {}
        for i, st in enumerate(ss.transmitter.streams):
            secret = read_secret(
                st.authorization_file, f"shared_signals.transmitter.streams[{i}].authorization_file"
            )
            if secret in seen:  # the secret is how a poll or management call names its stream
                raise ConfigError(
                    str(st.authorization_file),
                    f"shared_signals.transmitter.streams[{i}].authorization_file",
                    f"the same secret as streams[{seen[secret]}]: each stream needs its own",
                )
            seen[secret] = i


def load_engine(path: str | Path, *, isolated: bool = False) -> Engine:
    """Settings, trust material and compiled policy, or a ConfigError/TrustError naming the file.
    ``isolated``: while Checks are being answered (a reload), parse a large YAML file in a child process.
    The cyclic collector is paused throughout (two thirds of the time for ten thousand rules, were it not)
    and what was built is frozen out of its way after (``collect.py``)."""
    data = read_config(path)  # read once: the revision is the digest of exactly what was parsed
    with paused_collection():
        return build_engine(parse_settings(data, Path(path), isolated=isolated), data)

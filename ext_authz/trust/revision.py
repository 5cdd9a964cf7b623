"""Revisions: what a decision was made with, typed, built in one place and never parsed apart.

A trust revision is the digest of the trust files' material plus, per live source (remote JWKS, the
Workload API, …), the digest of what that source supplied. The engine's revision adds the config
file's digest. Caches key on ``key`` (a string computed once); the decision log records the parts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = ["Revision", "TrustRevision"]


@dataclass(frozen=True, slots=True)
class TrustRevision:
    files: str = ""
    sources: tuple[tuple[str, str], ...] = ()  # (live source, digest of what it supplied), sorted
    key: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        key = self.files
        if self.sources:
            mixed = "|".join(f"{name}={digest}" for name, digest in self.sources)
            key = f"{self.files}+{hashlib.sha256(mixed.encode()).hexdigest()[:8]}"
        object.__setattr__(self, "key", key)

    def __str__(self) -> str:
        return self.key

    def with_source(self, name: str, digest: str) -> TrustRevision:
        sources = dict(self.sources)
        sources[name] = digest
        return TrustRevision(self.files, tuple(sorted(sources.items())))


@dataclass(frozen=True, slots=True)
class Revision:
    """The config file's digest and the trust revision: together they fix a decision's inputs."""

    config: str
    trust: TrustRevision
    key: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.config}.{self.trust.key}")

    def __str__(self) -> str:
        return self.key

"""Live trust sources behind one seam: each supplies part of the trust material and says when it changed.

The files named in the settings are the base (``files.py``, reloaded by the reloader). Every live
source — remote JWKS (``remote.RemoteTrust``), the SPIFFE Workload API (``workload_api.py``), and
shared-signal transmitters' keys (``remote.TransmitterKeys``) — implements :class:`TrustSource`: it is
configured from the settings, runs at the edge (``start``/``stop``), and ``contribute`` lays its latest
material over a snapshot, naming itself in the typed trust revision. A source calls the ``on_change``
it was given when its material changed; the runtime then re-merges every source over the current base.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ..settings import Settings
from .bundles import TrustSnapshot

__all__ = ["OnChange", "TrustSource", "TrustSources"]

OnChange = Callable[[], None]


class TrustSource(Protocol):
    name: str

    def configure(self, settings: Settings) -> None:
        """Which trust domains or issuers this source supplies, per the current settings."""

    def contribute(self, trust: TrustSnapshot) -> TrustSnapshot:
        """``trust`` with this source's latest material laid over it (pure; called on every merge)."""

    async def start(self) -> None:
        """First material (bounded wait), then keep it current until ``stop``."""

    async def stop(self) -> None: ...


class TrustSources:
    """The live sources, merged in a fixed order."""

    def __init__(self, sources: Sequence[TrustSource]) -> None:
        self.sources = tuple(sources)

    def configure(self, settings: Settings) -> None:
        for source in self.sources:
            source.configure(settings)

    def contribute(self, trust: TrustSnapshot) -> TrustSnapshot:
        for source in self.sources:
            trust = source.contribute(trust)
        return trust

    async def start(self) -> None:
        for source in self.sources:
            await source.start()

    async def stop(self) -> None:
        for source in reversed(self.sources):
            await source.stop()

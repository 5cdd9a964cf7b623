"""Hot reload: poll the config and every trust file it names; a broken file keeps the last good state."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import AuthzError
from ..loader import load_engine
from ..settings import Settings
from .runtime import Runtime, RuntimeView

__all__ = ["Reloader", "changes"]

log = logging.getLogger("ext_authz")
Fingerprint = tuple[tuple[str, int, int, int], ...]


def _fingerprint(paths: tuple[Path, ...]) -> Fingerprint:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(p), -1, -1, -1))
    return tuple(out)


def _delta(what: str, before: dict[str, object], after: dict[str, object]) -> list[str]:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    out = []
    for verb, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            out.append(f"{what} {verb}: {', '.join(names)}")
    return out


def changes(before: Settings, after: Settings) -> list[str]:
    """What a reload changed, for the log: rules, trust domains and issuers added, removed, changed."""
    out = _delta("rules", {r.name: r for r in before.rules}, {r.name: r for r in after.rules})
    out += _delta("trust domains", dict(before.trust_domains), dict(after.trust_domains))
    out += _delta("issuers", dict(before.issuers), dict(after.issuers))
    if [r.name for r in before.rules] != [r.name for r in after.rules] and not out:
        out.append("rules reordered")
    return out


@contextlib.contextmanager
def _short_turns() -> Iterator[None]:
    """While a large config compiles in a thread, the GIL changes hands every 0.5 ms instead of 5: the
    loop answering Checks waits for it a tenth as long each time (Check p99 during a reload of ten
    thousand rules: bench/scale.py's reload section)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, 0.0005))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class Reloader:
    def __init__(self, config_path: Path, runtime: Runtime) -> None:
        self.config_path = config_path
        self.runtime = runtime
        self._seen = _fingerprint(runtime.engine.config.watched_files())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.runtime.engine.config.reload_interval)
            try:
                await self.check()
            except Exception as exc:  # the reloader never dies: a dead one would stop every later reload
                rt = self.runtime
                rt.metrics.reloads.get("failure").inc()
                rt.metrics.reload_failed.set(1)
                rt.reloads_failed += 1
                rt.last_reload_error = f"unexpected {type(exc).__name__}"
                log.error("reload failed unexpectedly (%s); trying again", type(exc).__name__, exc_info=True)

    async def check(self) -> bool:
        """Load again if any watched file changed. True when a new generation was installed."""
        seen = _fingerprint(self.runtime.engine.config.watched_files())
        if seen == self._seen:
            return False
        self._seen = seen
        rt = self.runtime
        try:
            # (the collector is paused while it loads, and the engine frozen out of its way after)
            with _short_turns():
                engine = await asyncio.to_thread(
                    functools.partial(load_engine, self.config_path, isolated=True)
                )
        except AuthzError as exc:
            rt.metrics.reloads.get("failure").inc()
            rt.metrics.reload_failed.set(1)
            rt.reloads_failed += 1
            rt.last_reload_error = exc.detail
            log.error("reload failed, keeping the last good configuration and trust: %s", exc.detail)
            return False
        after = _fingerprint(engine.config.watched_files())
        before = {entry[0]: entry for entry in seen}
        if any(entry[0] in before and before[entry[0]] != entry for entry in after):
            # A file changed while we were reading it: what we loaded may be a mix. Load again on the
            # next tick instead of recording the new state as seen.
            self._seen = ()
        else:
            self._seen = after
        old, old_config = rt.engine.revision, rt.engine.config
        rt.metrics.reloads.get("success").inc()
        rt.install(engine)
        rt.metrics.reload_failed.set(0)
        rt.last_reload_error = ""
        ss = rt.engine.config.shared_signals
        try:
            if rt.ssf is not None:
                await rt.ssf.reconfigure()
            elif (ss.receivers or ss.transmitter is not None) and rt.worker in (None, 0):
                from .signals import SharedSignals

                rt.ssf = SharedSignals(RuntimeView(rt))
                await rt.ssf.start()
        except AuthzError as exc:  # a secret changed under us between load and use: say so, keep serving
            rt.metrics.reload_failed.set(1)
            rt.last_reload_error = f"shared signals: {exc.detail}"
            log.error("reload: shared signals not reconfigured: %s", exc.detail)
        if old != rt.engine.revision:
            what = "; ".join(changes(old_config, engine.config)) or "settings or trust files"
            log.info("reloaded: revision %s -> %s: %s", old, rt.engine.revision, what)
        return True

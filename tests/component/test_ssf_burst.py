"""SETs pushed together are decided one by one and stored together (issue 27): a SET is decided against
the state held and against what SETs decided before it have not stored yet. Each case holds the store's
write open, so the second SET is decided while the first is in flight, and checks that nothing is
applied twice, nothing late undoes something newer, and a failed write leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ext_authz.errors import StateError
from ext_authz.state.records import Revocation
from tests.component.ssfstack import SECRET, SsfStack, now, start_stack
from tests.component.test_ssf_semantics import IDP, TX, a_set, user
from tests.component.test_streams import sample
from tests.ssfkit import CAEP, RISC, mint_set
from tests.waiting import until


class Gate:
    """The store's append, held until the test opens it (or made to fail)."""

    def __init__(self, stack: SsfStack) -> None:
        self.backend = stack.running.runtime.replica.backend
        self.real = self.backend.append
        self.entered = asyncio.Event()
        self.open = asyncio.Event()
        self.fail = False
        self.fail_once = False
        self.calls = 0

    async def append(self, changes: Sequence[Any], audit: Sequence[Any] = ()) -> None:
        self.calls += 1
        self.entered.set()
        await self.open.wait()
        if self.fail or self.fail_once:
            self.fail_once = False
            raise StateError("the store is down (test)")
        await self.real(changes, audit)


@pytest.fixture
async def stack(demo_dir: Path, tmp_path: Path) -> AsyncIterator[SsfStack]:
    s = await start_stack(demo_dir, tmp_path, transmitters=[TX], issuers=[IDP])
    yield s
    await s.close()


@pytest.fixture
def gate(stack: SsfStack, monkeypatch: pytest.MonkeyPatch) -> Gate:
    g = Gate(stack)
    monkeypatch.setattr(g.backend, "append", g.append)
    return g


async def push(stack: SsfStack, body: dict[str, Any]) -> tuple[int, str]:
    return await asyncio.wait_for(stack.push(body), 10)  # a SET held behind another fails, not hangs


def account(event: str, at: int) -> dict[str, Any]:
    """A RISC account event about jane, dated ``at``."""
    return a_set(RISC + f"account-{event}", user("jane"), {"event_timestamp": at})


async def one_behind_another(
    stack: SsfStack, gate: Gate, first: dict[str, Any], second: dict[str, Any]
) -> tuple[asyncio.Task[tuple[int, str]], asyncio.Task[tuple[int, str]]]:
    """``first`` pushed and held in the store's write; ``second`` pushed, decided, and queued behind it."""
    held = asyncio.create_task(push(stack, first))
    await asyncio.wait_for(gate.entered.wait(), 10)
    behind = asyncio.create_task(push(stack, second))
    await until(lambda: queued(stack) == 1, "the second decided and queued behind the first")
    return held, behind


def queued(stack: SsfStack) -> int:
    return len(stack.running.runtime.replica._writes)


def spy_on_waits(stack: SsfStack, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The times a SET found the same SET's write in flight (and so waits for its outcome)."""
    signals = stack.running.runtime.ssf
    assert signals is not None
    in_flight = signals.receivers._in_flight
    real = in_flight.pending
    waits: list[object] = []

    def pending(cls: Any, rid: str) -> Any:
        found = real(cls, rid)
        if found is not None:
            waits.append(found)
        return found

    monkeypatch.setattr(in_flight, "pending", pending)
    return waits


async def test_the_same_set_pushed_again_while_the_first_is_stored_waits_then_is_a_duplicate(
    stack: SsfStack, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits = spy_on_waits(stack, monkeypatch)
    t = now()
    body = a_set(CAEP + "session-revoked", user("jane"), {"event_timestamp": t})
    first = asyncio.create_task(push(stack, body))
    await asyncio.wait_for(gate.entered.wait(), 10)
    retry = asyncio.create_task(push(stack, body))
    await until(lambda: bool(waits), "the retry found the first in flight")
    assert not retry.done()  # no 202 for it before the first is stored: it could still fail
    gate.open.set()
    assert (await first)[0] == 202
    assert (await retry)[0] == 202
    m = await stack.metrics()
    assert sample(m, "ext_authz_ssf_events_total", event="session-revoked", result="applied") == 1
    assert sample(m, "ext_authz_ssf_events_total", event="session-revoked", result="duplicate") == 1
    assert len(stack.running.runtime.replica.all(Revocation)) == 1
    entries = await stack.running.runtime.replica.audit()
    assert [e.action for e in entries] == ["revoke"]


async def test_a_retry_waiting_on_a_write_that_fails_applies_the_set(
    stack: SsfStack, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transmitter's first try times out on its side and fails on ours: its retry must not be a
    202 'duplicate' of nothing (the transmitter would never send the event again)."""
    waits = spy_on_waits(stack, monkeypatch)
    t = now()
    token = stack.token(IDP, "jane", t - 100)
    body = a_set(CAEP + "session-revoked", user("jane"), {"event_timestamp": t})
    first = asyncio.create_task(push(stack, body))
    await asyncio.wait_for(gate.entered.wait(), 10)
    retry = asyncio.create_task(push(stack, body))
    await until(lambda: bool(waits), "the retry found the first in flight")
    gate.fail_once = True
    gate.open.set()
    assert (await first)[0] == 503
    assert (await retry)[0] == 202
    assert await stack.reason(token) == "revoked"
    m = await stack.metrics()
    assert sample(m, "ext_authz_ssf_events_total", event="session-revoked", result="applied") == 1


async def test_what_was_decided_on_a_failed_write_fails_with_it(stack: SsfStack, gate: Gate) -> None:
    """An enable decided while its disable is in flight lifts the disable's revocation: if the disable's
    write fails, the enable fails too (each is retried), and nothing half-applied is left."""
    t = now()
    token = stack.token(IDP, "jane", t - 100)
    disable, enable = await one_behind_another(
        stack, gate, account("disabled", t - 20), account("enabled", t - 5)
    )
    gate.fail_once = True
    gate.open.set()
    assert (await disable)[0] == 503
    assert (await enable)[0] == 503
    assert stack.running.runtime.replica.all(Revocation) == []
    assert await stack.reason(token) == "allowed"


async def test_an_enable_decided_while_its_disable_is_stored_lifts_it(stack: SsfStack, gate: Gate) -> None:
    t = now()
    token = stack.token(IDP, "jane", t - 100)
    disable, enable = await one_behind_another(
        stack, gate, account("disabled", t - 20), account("enabled", t - 5)
    )
    gate.open.set()
    assert (await disable)[0] == 202
    assert (await enable)[0] == 202
    assert not [r for r in stack.running.runtime.replica.all(Revocation) if r.active(t)]
    assert await stack.reason(token) == "allowed"


async def test_a_late_disable_decided_while_a_newer_enable_is_stored_is_not_applied(
    stack: SsfStack, gate: Gate
) -> None:
    t = now()
    token = stack.token(IDP, "jane", t - 100)
    enable, late = await one_behind_another(
        stack, gate, account("enabled", t - 5), account("disabled", t - 20)
    )
    gate.open.set()
    assert (await enable)[0] == 202
    assert (await late)[0] == 202
    assert await stack.reason(token) == "allowed"
    m = await stack.metrics()
    assert sample(m, "ext_authz_ssf_events_total", event="account-disabled", result="ignored") == 1


async def test_a_set_whose_write_failed_is_applied_when_pushed_again(stack: SsfStack, gate: Gate) -> None:
    t = now()
    token = stack.token(IDP, "jane", t - 100)
    body = a_set(CAEP + "session-revoked", user("jane"), {"event_timestamp": t})
    gate.fail = True
    first = asyncio.create_task(push(stack, body))
    await asyncio.wait_for(gate.entered.wait(), 10)
    gate.open.set()
    assert (await first)[0] == 503  # not stored: the transmitter retries
    assert await stack.reason(token) == "allowed"
    gate.fail = False
    assert (await push(stack, body))[0] == 202  # nothing of the failed try was left to make it a duplicate
    assert await stack.reason(token) == "revoked"


async def test_sets_pushed_together_are_stored_together(stack: SsfStack, gate: Gate) -> None:
    t = now()
    first = asyncio.create_task(
        push(stack, a_set(CAEP + "session-revoked", user("user-0"), {"event_timestamp": t}))
    )
    await asyncio.wait_for(gate.entered.wait(), 10)
    rest = [
        asyncio.create_task(
            push(stack, a_set(CAEP + "session-revoked", user(f"user-{i}"), {"event_timestamp": t}))
        )
        for i in range(1, 40)
    ]
    await until(lambda: queued(stack) == 39, "the other 39 decided while the first is stored")
    gate.open.set()
    assert {status for status, _ in await asyncio.gather(first, *rest)} == {202}
    assert gate.calls == 2  # the first alone; the 39 decided meanwhile in one transaction
    assert len(stack.running.runtime.replica.all(Revocation)) == 40


async def test_a_push_cancelled_while_its_write_is_queued_never_undoes_a_newer_event(
    stack: SsfStack, gate: Gate
) -> None:
    """A reload or a stop cancels a push whose write is queued: the write goes on, and what is in flight
    stays known until it lands, so a newer enable decided meanwhile still lifts the disable (from the
    second review's reproduction)."""
    signals = stack.running.runtime.ssf
    assert signals is not None
    t = now()
    token = stack.token(IDP, "jane", t - 100)

    def raw_push(claims: dict[str, Any]) -> asyncio.Task[Any]:
        headers = {"content-type": "application/secevent+jwt", "authorization": f"Bearer {SECRET}"}
        return asyncio.create_task(signals.receivers.push(mint_set(stack.set_key, claims).encode(), headers))

    disable = raw_push(a_set(RISC + "account-disabled", user("jane"), {"event_timestamp": t - 20}))
    await asyncio.wait_for(gate.entered.wait(), 10)
    disable.cancel()
    with pytest.raises(asyncio.CancelledError):
        await disable
    enable = raw_push(a_set(RISC + "account-enabled", user("jane"), {"event_timestamp": t - 5}))
    await until(lambda: queued(stack) == 1, "the enable decided and queued behind the disable")
    gate.open.set()
    assert (await enable)[0] == 202
    await until(lambda: not queued(stack), "both written")
    assert await stack.reason(token) == "allowed"


@pytest.fixture
async def qstack(demo_dir: Path, tmp_path: Path) -> AsyncIterator[SsfStack]:
    s = await start_stack(
        demo_dir,
        tmp_path,
        transmitters=[TX],
        issuers=[IDP],
        quarantine={"denials": 2, "window": "60s", "duration": "1m"},
    )
    yield s
    await s.close()


async def test_a_failed_set_write_does_not_take_an_unrelated_write_with_it(
    qstack: SsfStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only what was decided on the failed write fails with it: a quarantine queued behind it (which
    nobody retries) is still written (from the second review's reproduction)."""
    from ext_authz.state import commands

    gate = Gate(qstack)
    monkeypatch.setattr(gate.backend, "append", gate.append)
    rt = qstack.running.runtime
    assert rt.engine.config.quarantine is not None
    t = now()
    first = asyncio.create_task(
        push(qstack, a_set(CAEP + "session-revoked", user("jane"), {"event_timestamp": t}))
    )
    await asyncio.wait_for(gate.entered.wait(), 10)
    rev = commands.quarantine("spiffe://example.org/ns/x/sa/attacker", rt.engine.config.quarantine, t)
    rt.spawn(rt._write_quarantine(rev))
    await until(lambda: queued(qstack) == 1, "the quarantine queued behind the SET's write")
    gate.fail_once = True
    gate.open.set()
    assert (await first)[0] == 503
    await until(lambda: rt.replica.get(Revocation, rev.id) is not None, "the quarantine written")
